//! Persisted (durable) messages: saved before delivery, redelivered until their final reply is
//! saved, deduplicated by primary key.
//!
//! - [`send`](self::send): the caller's side — save, then push to the owner (or run here), then
//!   wait for the reply by push, falling back to storage.
//! - [`process`](self::process): the owner's side — run a stored request once at a time on this
//!   runner and save its final reply under the shard's lease epoch.
//! - [`poller`](self::poller): the owner's safety net — claim unprocessed messages of held shards
//!   when woken (saves, acquisitions), on a timer for the next scheduled message, and
//!   periodically.
//! - [`stream`](self::stream): the caller's side of a persisted stream (follow the run, fall back
//!   to storage, acknowledge chunks).
//! - [`waiter`](self::waiter): waiting for a stored reply.
//! - [`sweeper`](self::sweeper): retention.

mod poller;
mod process;
mod send;
mod settings;
mod stream;
mod sweeper;
mod waiter;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use shoal_protocol::{ReplyFrame, Snowflake};
use shoal_storage::MessageStorage;
use tokio::sync::{Notify, oneshot};

use crate::config::ShardingConfig;
use crate::identity::Identity;
use crate::lease::shards::ShardStates;
use crate::local::LocalEntities;

pub use settings::MessageSettings;

pub(crate) use process::StreamRun;

pub(crate) use poller::{incoming, on_shards_acquired, start as start_tasks};

/// Waiters for a request being processed on this runner: they get its settled reply (`None`
/// when it was not settled here).
type Waiters = Vec<oneshot::Sender<Option<ReplyFrame>>>;

/// What persisted processing uses of the rest of the runtime.
pub(crate) struct PersistenceParts {
    pub(crate) storage: Arc<dyn MessageStorage>,
    pub(crate) settings: MessageSettings,
    pub(crate) config: Arc<ShardingConfig>,
    /// Makes reply and chunk ids.
    pub(crate) identity: Arc<Identity>,
    /// The shards this runner serves, with their lease epochs (replies are fenced by them).
    pub(crate) shards: Arc<ShardStates>,
    /// Where stored requests run.
    pub(crate) local: Arc<dyn LocalEntities>,
}

/// Persisted messages on this runner: the owner's side (claim, run once, save the reply under
/// the shard's lease) and what the caller's side shares with it.
pub(crate) struct Persistence {
    pub(crate) storage: Arc<dyn MessageStorage>,
    pub(crate) settings: MessageSettings,
    config: Arc<ShardingConfig>,
    identity: Arc<Identity>,
    shards: Arc<ShardStates>,
    local: Arc<dyn LocalEntities>,
    /// Requests being processed on this runner (each runs once at a time here).
    in_flight: Mutex<HashMap<Snowflake, Waiters>>,
    /// In-flight requests whose caller interrupted them (their `interrupted` outcome is final).
    interrupted: Mutex<HashSet<Snowflake>>,
    /// Requests recently settled here, with their replies: a push and a poll of one request
    /// that do not overlap in time must not run it twice.
    settled: Mutex<Settled>,
    /// Attempts of requests that did not settle here, for the delay before their claim is
    /// lifted.
    retries: Mutex<Retries>,
    /// Wakes the poller.
    pub(crate) wake: Notify,
}

/// A bounded memory of how often recent requests failed to settle here.
#[derive(Default)]
struct Retries {
    attempts: HashMap<Snowflake, u32>,
    order: VecDeque<Snowflake>,
}

/// How many requests' attempts a runner remembers.
const REMEMBERED_RETRIES: usize = 4096;
/// The first delay before a request that did not settle is claimable again; it doubles with
/// every attempt, up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// A bounded memory of settled requests.
#[derive(Default)]
struct Settled {
    replies: HashMap<Snowflake, ReplyFrame>,
    order: VecDeque<Snowflake>,
}

/// How many settled requests a runner remembers.
const REMEMBERED_SETTLED: usize = 4096;

impl Persistence {
    pub(crate) fn new(parts: PersistenceParts) -> Self {
        Self {
            storage: parts.storage,
            settings: parts.settings,
            config: parts.config,
            identity: parts.identity,
            shards: parts.shards,
            local: parts.local,
            in_flight: Mutex::new(HashMap::new()),
            interrupted: Mutex::new(HashSet::new()),
            settled: Mutex::new(Settled::default()),
            retries: Mutex::new(Retries::default()),
            wake: Notify::new(),
        }
    }

    pub(crate) fn storage_timeout(&self) -> Duration {
        self.config.storage_timeout()
    }

    pub(crate) fn shards(&self) -> &ShardStates {
        &self.shards
    }

    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }

    pub(crate) fn local(&self) -> &dyn LocalEntities {
        &*self.local
    }

    pub(crate) fn is_in_flight(&self, id: Snowflake) -> bool {
        self.in_flight.lock().contains_key(&id)
    }

    /// The reply of `id` if it was settled here recently.
    pub(crate) fn settled_reply(&self, id: Snowflake) -> Option<ReplyFrame> {
        self.settled.lock().replies.get(&id).cloned()
    }

    /// Remembers the reply of a request settled here.
    pub(crate) fn remember_settled(&self, id: Snowflake, frame: &ReplyFrame) {
        let mut settled = self.settled.lock();
        if settled.replies.insert(id, frame.clone()).is_none() {
            settled.order.push_back(id);
        }
        while settled.order.len() > REMEMBERED_SETTLED {
            if let Some(old) = settled.order.pop_front() {
                settled.replies.remove(&old);
            }
        }
    }

    /// How long to keep the claim on `id`, which did not settle here, before lifting it: doubles
    /// with each attempt.
    pub(crate) fn retry_delay(&self, id: Snowflake) -> Duration {
        let mut retries = self.retries.lock();
        let attempts = match retries.attempts.get_mut(&id) {
            Some(attempts) => {
                *attempts += 1;
                *attempts
            }
            None => {
                retries.attempts.insert(id, 1);
                retries.order.push_back(id);
                while retries.order.len() > REMEMBERED_RETRIES {
                    if let Some(old) = retries.order.pop_front() {
                        retries.attempts.remove(&old);
                    }
                }
                1
            }
        };
        shoal_protocol::Backoff::new(FIRST_RETRY_DELAY, MAX_RETRY_DELAY).delay(attempts - 1)
    }

    /// `id` settled: its attempts are forgotten.
    pub(crate) fn forget_retries(&self, id: Snowflake) {
        // Left in `order` until it reaches the front; the map is what counts.
        self.retries.lock().attempts.remove(&id);
    }

    /// Records that the caller interrupted `id` (running here).
    pub(crate) fn interrupt(&self, id: Snowflake) {
        self.interrupted.lock().insert(id);
    }

    /// Whether `id` was interrupted by its caller (and forgets it).
    pub(crate) fn take_interrupted(&self, id: Snowflake) -> bool {
        self.interrupted.lock().remove(&id)
    }
}
