//! Accounts as entities on two runners in one process, with a shared ledger injected as state.
//!
//! Every `Account` instance is given the same `Ledger` handle when it activates (the entity
//! type's [`Entity::State`]); it records each posting there. Its balance lives in the entity's
//! key-value storage, so it survives the account moving to another runner (as shards do while
//! the second runner joins). Its handlers are the methods of its `#[handlers]` block, so the
//! definition that registers them cannot forget one. A transfer withdraws from one account and
//! deposits into the other; the two accounts may live on different runners, and the caller does
//! not need to know which.
//! Run it with `cargo run -p shoal-sharding --example bank`.

// An example prints what it did.
#![allow(clippy::print_stdout)]

use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use shoal_sharding::{
    Entity, EntityContext, EntityDefinition, EntityKvHandle, HandlerError, InProcessNetwork,
    Message, Sharding, ShardingConfig, handlers,
};
use shoal_storage::{MemoryEntityKv, MemoryRunnerStorage};

/// The application's shared state: every posting of every account, in order.
#[derive(Debug, Default)]
struct Ledger {
    postings: Mutex<Vec<Posting>>,
}

#[derive(Debug, Clone, PartialEq)]
struct Posting {
    account: String,
    amount: i64,
    runner: String,
}

impl Ledger {
    fn post(&self, ctx: &EntityContext, amount: i64) {
        self.postings.lock().push(Posting {
            account: ctx.address().entity_id.to_string(),
            amount,
            runner: ctx
                .runner_address()
                .map(ToString::to_string)
                .unwrap_or_default(),
        });
    }
}

/// One account: its balance (kept in its storage), and the ledger it posts to.
struct Account {
    balance: i64,
    storage: EntityKvHandle,
    ledger: Arc<Ledger>,
}

const BALANCE: &str = "balance";

impl Entity for Account {
    const TYPE: &'static str = "account";
    type State = Ledger;

    async fn activate(ctx: &EntityContext, ledger: &Arc<Ledger>) -> Result<Self, HandlerError> {
        let storage = ctx
            .kv()
            .ok_or_else(|| HandlerError::fatal("accounts need entity storage"))?;
        let balance = match storage
            .get(BALANCE)
            .await
            .map_err(HandlerError::unavailable)?
        {
            Some(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| HandlerError::fatal("stored balance is not a number"))?,
            None => 0,
        };
        Ok(Account {
            balance,
            storage,
            ledger: ledger.clone(),
        })
    }
}

impl Account {
    /// Stores the new balance, then posts the change.
    async fn post(&mut self, ctx: &EntityContext, amount: i64) -> Result<i64, HandlerError> {
        let balance = self.balance + amount;
        self.storage
            .put(BALANCE, balance.to_string())
            .await
            .map_err(HandlerError::unavailable)?;
        self.balance = balance;
        self.ledger.post(ctx, amount);
        Ok(balance)
    }
}

/// Puts money in; replies with the new balance.
#[derive(Clone, Serialize, Deserialize)]
struct Deposit {
    amount: i64,
}

impl Message for Deposit {
    const TAG: &'static str = "deposit";
    type Reply = i64;
}

/// Takes money out if the balance allows it; replies with the new balance.
#[derive(Clone, Serialize, Deserialize)]
struct Withdraw {
    amount: i64,
}

impl Message for Withdraw {
    const TAG: &'static str = "withdraw";
    type Reply = i64;
}

/// The account's message handlers: each method marked `#[handle]` handles the message type of
/// its `msg` argument. This block is the list of them: `EntityDefinition::declared_with_state`
/// (in `main`) registers them all, so none can be left out.
#[handlers]
impl Account {
    #[handle]
    async fn deposit(&mut self, msg: Deposit, ctx: &EntityContext) -> Result<i64, HandlerError> {
        if msg.amount <= 0 {
            return Err(HandlerError::failed("a deposit must be positive"));
        }
        self.post(ctx, msg.amount).await
    }

    #[handle]
    async fn withdraw(&mut self, msg: Withdraw, ctx: &EntityContext) -> Result<i64, HandlerError> {
        if msg.amount <= 0 || msg.amount > self.balance {
            return Err(HandlerError::failed(format!(
                "cannot withdraw {} from a balance of {}",
                msg.amount, self.balance
            )));
        }
        self.post(ctx, -msg.amount).await
    }
}

/// Moves `amount` from one account to another: the withdrawal fails (and nothing moves) when
/// the balance is short.
async fn transfer(
    sharding: &Sharding,
    from: &str,
    to: &str,
    amount: i64,
) -> Result<(), shoal_sharding::CallError> {
    let accounts = sharding.client::<Account>();
    accounts.call(from, Withdraw { amount }).await?;
    accounts.call(to, Deposit { amount }).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Two runners in this process share storage and an in-process network; each registers the
    // account type with the same ledger.
    let ledger = Arc::new(Ledger::default());
    let storage = Arc::new(MemoryRunnerStorage::new());
    let balances = Arc::new(MemoryEntityKv::new(storage.clone()));
    let network = InProcessNetwork::new();
    let mut runners = Vec::new();
    for address in ["127.0.0.1:47001", "127.0.0.1:47002"] {
        let runner = Sharding::builder(ShardingConfig::default())
            .storage(storage.clone())
            .entity_kv(balances.clone())
            .network(network.endpoint(address.parse()?))
            .entity(EntityDefinition::<Account>::declared_with_state(
                ledger.clone(),
            ))
            .start()
            .await?;
        runners.push(runner);
    }
    let bank = &runners[0];

    let accounts = bank.client::<Account>();
    accounts.call("alice", Deposit { amount: 100 }).await?;
    transfer(bank, "alice", "bob", 30).await?;
    // Alice cannot send more than she has: the withdrawal fails and nothing moves.
    let refused = transfer(bank, "alice", "bob", 500).await;
    assert!(refused.is_err());

    // Calls through the other runner reach the same accounts.
    let elsewhere = runners[1].client::<Account>();
    let alice = elsewhere.call("alice", Deposit { amount: 1 }).await? - 1;
    let bob = elsewhere.call("bob", Withdraw { amount: 0 }).await;
    assert!(bob.is_err(), "a zero withdrawal is refused");
    assert_eq!(alice, 70);

    let postings = ledger.postings.lock().clone();
    for posting in &postings {
        println!(
            "{:>6} {:>5} (on runner {})",
            posting.account, posting.amount, posting.runner
        );
    }
    let amounts: Vec<(&str, i64)> = postings
        .iter()
        .map(|p| (p.account.as_str(), p.amount))
        .collect();
    assert_eq!(
        amounts,
        [("alice", 100), ("alice", -30), ("bob", 30), ("alice", 1)]
    );
    for runner in runners {
        runner.shutdown().await;
    }
    Ok(())
}
