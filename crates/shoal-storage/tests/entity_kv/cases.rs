//! The cases every entity-KV backend must pass.

use std::num::NonZeroU32;
use std::time::Duration;

use bytes::Bytes;
use shoal_protocol::{EntityAddress, Incarnation, Runner, RunnerId, ShardGroup, ShardId};
use shoal_storage::kv::{
    DEFAULT_LIST_LIMIT, KvEntry, KvQuery, MAX_KEY_SIZE, MAX_KEYS, MAX_PUT_PAYLOAD, MAX_VALUE_SIZE,
};
use shoal_storage::{Epoch, Fence, RunnerStorage, StorageError};

use crate::harness::{Env, Kind};

pub const LONG: Duration = Duration::from_secs(60);

pub fn runner(n: u16) -> Runner {
    Runner::new(
        format!("10.0.0.{n}:34431").parse().unwrap(),
        [ShardGroup::default_group()],
        NonZeroU32::MIN,
    )
}

/// Runner `n` in a fixed incarnation.
pub fn holder(n: u16) -> RunnerId {
    RunnerId::new(runner(n).address, Incarnation::from_raw(u64::from(n) + 1))
}

pub fn shard(n: u32) -> ShardId {
    format!("default:{n}").parse().unwrap()
}

pub fn entity(ty: &str, id: &str, shard_no: u32) -> EntityAddress {
    EntityAddress::new(shard(shard_no), ty.parse().unwrap(), id.parse().unwrap())
}

/// Acquires `shard` for runner `n` and returns the fence to write under.
pub async fn lease(runners: &dyn RunnerStorage, n: u16, shard_no: u32) -> Fence {
    let me = runner(n);
    let id = holder(n);
    runners
        .register(&me, id.incarnation, true, LONG)
        .await
        .unwrap();
    let held = runners
        .acquire(&id, &[shard(shard_no)], LONG)
        .await
        .unwrap();
    assert_eq!(
        held.len(),
        1,
        "runner {n} could not acquire shard {shard_no}"
    );
    Fence {
        shard: held[0].shard.clone(),
        epoch: held[0].epoch,
    }
}

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

fn e(key: &str, value: &str) -> KvEntry {
    KvEntry::new(b(key), b(value))
}

fn keys(entries: &[KvEntry]) -> Vec<Bytes> {
    entries.iter().map(|e| e.key.clone()).collect()
}

fn invalid<T: std::fmt::Debug>(result: Result<T, StorageError>, needle: &str) {
    match result {
        Err(StorageError::InvalidArgument { detail, .. }) => {
            assert!(
                detail.contains(needle),
                "expected an invalid-argument error mentioning {needle:?}, got {detail:?}"
            );
        }
        other => panic!("expected an invalid-argument error ({needle}), got {other:?}"),
    }
}

fn fenced<T: std::fmt::Debug>(result: Result<T, StorageError>, epoch: Epoch, current: Epoch) {
    match result {
        Err(StorageError::Fenced {
            epoch: e,
            current: c,
            ..
        }) => {
            assert_eq!((e, c), (epoch.0, current.0));
        }
        other => panic!("expected a fenced write, got {other:?}"),
    }
}

/// A counter entity in shard 1, with a fence on shard 1.
async fn setup(env: &Env) -> (EntityAddress, Fence) {
    let fence = lease(&*env.runners, 1, 1).await;
    (entity("counter", "a", 1), fence)
}

pub async fn get_put_delete(env: &Env) {
    let kv = &*env.kv;
    let (a, fence) = setup(env).await;
    assert_eq!(kv.get(&a, &[b("x")]).await.unwrap(), [None]);
    kv.put(&a, &[e("x", "1"), e("y", "2")], &fence)
        .await
        .unwrap();
    assert_eq!(
        kv.get(&a, &[b("y"), b("x"), b("z")]).await.unwrap(),
        [Some(b("2")), Some(b("1")), None]
    );
    // Overwrite replaces the whole value.
    kv.put(&a, &[e("x", "100")], &fence).await.unwrap();
    assert_eq!(kv.get(&a, &[b("x")]).await.unwrap(), [Some(b("100"))]);
    kv.delete(&a, &[b("x"), b("missing")], &fence)
        .await
        .unwrap();
    assert_eq!(
        kv.get(&a, &[b("x"), b("y")]).await.unwrap(),
        [None, Some(b("2"))]
    );
    // Deleting what is not there is fine.
    kv.delete(&a, &[b("x")], &fence).await.unwrap();
    kv.delete(&a, &[], &fence).await.unwrap();
}

pub async fn get_edge_cases(env: &Env) {
    let kv = &*env.kv;
    let (a, fence) = setup(env).await;
    // Nothing asked, nothing answered; an unknown entity has no keys.
    assert!(kv.get(&a, &[]).await.unwrap().is_empty());
    assert_eq!(
        kv.get(&entity("counter", "nobody", 1), &[b("x")])
            .await
            .unwrap(),
        [None]
    );
    kv.put(&a, &[e("x", "1")], &fence).await.unwrap();
    // Duplicate keys are answered at each position; the empty key is a key like any other.
    assert_eq!(
        kv.get(&a, &[b("x"), b(""), b("x")]).await.unwrap(),
        [Some(b("1")), None, Some(b("1"))]
    );
    kv.put(&a, &[e("", "empty key")], &fence).await.unwrap();
    assert_eq!(kv.get(&a, &[b("")]).await.unwrap(), [Some(b("empty key"))]);
    // A key given twice in one put takes its last value.
    kv.put(&a, &[e("d", "first"), e("d", "last")], &fence)
        .await
        .unwrap();
    assert_eq!(kv.get(&a, &[b("d")]).await.unwrap(), [Some(b("last"))]);
}

pub async fn binary_keys_order_as_unsigned_bytes(env: &Env) {
    let kv = &*env.kv;
    let (a, fence) = setup(env).await;
    let raw: Vec<&[u8]> = vec![
        b"\xff",
        b"\x00",
        b"a",
        b"\x80\x00",
        b"\x00\x00",
        b"ab",
        b"\x7f",
        b"A",
        b"\xff\xff\x00",
        b"",
    ];
    let entries: Vec<KvEntry> = raw
        .iter()
        .map(|k| KvEntry::new(k.to_vec(), vec![0u8, 1, 2, 255]))
        .collect();
    kv.put(&a, &entries, &fence).await.unwrap();
    let mut expected: Vec<Vec<u8>> = raw.iter().map(|k| k.to_vec()).collect();
    expected.sort();
    let listed = kv.list(&a, &KvQuery::all()).await.unwrap();
    let listed_keys: Vec<Vec<u8>> = listed.iter().map(|e| e.key.to_vec()).collect();
    assert_eq!(listed_keys, expected);
    assert!(listed.iter().all(|e| e.value.as_ref() == [0u8, 1, 2, 255]));
    let reversed = kv.list(&a, &KvQuery::all().reverse()).await.unwrap();
    let mut expected_rev = expected.clone();
    expected_rev.reverse();
    assert_eq!(
        reversed.iter().map(|e| e.key.to_vec()).collect::<Vec<_>>(),
        expected_rev
    );
}

async fn alphabet(env: &Env) -> (EntityAddress, Fence) {
    let (a, fence) = setup(env).await;
    let entries: Vec<KvEntry> = ["a", "b", "ba", "bb", "bc", "c", "d"]
        .iter()
        .map(|k| e(k, &format!("v-{k}")))
        .collect();
    env.kv.put(&a, &entries, &fence).await.unwrap();
    (a, fence)
}

fn texts(entries: &[KvEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8(e.key.to_vec()).unwrap())
        .collect()
}

pub async fn list_all_reverse_limit(env: &Env) {
    let kv = &*env.kv;
    let (a, _) = alphabet(env).await;
    let all = kv.list(&a, &KvQuery::all()).await.unwrap();
    assert_eq!(texts(&all), ["a", "b", "ba", "bb", "bc", "c", "d"]);
    assert_eq!(all[2].value, b("v-ba"));
    assert_eq!(
        texts(&kv.list(&a, &KvQuery::all().limit(3)).await.unwrap()),
        ["a", "b", "ba"]
    );
    assert_eq!(
        texts(
            &kv.list(&a, &KvQuery::all().reverse().limit(2))
                .await
                .unwrap()
        ),
        ["d", "c"]
    );
    assert!(
        kv.list(&a, &KvQuery::all().limit(0))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        kv.list(&a, &KvQuery::all().limit(100)).await.unwrap().len(),
        7
    );
    assert!(
        kv.list(&entity("counter", "nobody", 1), &KvQuery::all())
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn list_prefix(env: &Env) {
    let kv = &*env.kv;
    let (a, fence) = alphabet(env).await;
    assert_eq!(
        texts(&kv.list(&a, &KvQuery::prefix("b")).await.unwrap()),
        ["b", "ba", "bb", "bc"]
    );
    assert_eq!(
        texts(
            &kv.list(&a, &KvQuery::prefix("b").reverse().limit(2))
                .await
                .unwrap()
        ),
        ["bc", "bb"]
    );
    assert_eq!(
        texts(&kv.list(&a, &KvQuery::prefix("ba")).await.unwrap()),
        ["ba"]
    );
    assert!(kv.list(&a, &KvQuery::prefix("x")).await.unwrap().is_empty());
    assert_eq!(kv.list(&a, &KvQuery::prefix("")).await.unwrap().len(), 7);
    // Prefixes ending in 0xff have no simple upper bound.
    kv.put(
        &a,
        &[
            KvEntry::new(&b"\xff"[..], &b"1"[..]),
            KvEntry::new(&b"\xff\xff"[..], &b"2"[..]),
            KvEntry::new(&b"\xff\xff\x01"[..], &b"3"[..]),
            KvEntry::new(&b"\xfe\xff"[..], &b"4"[..]),
        ],
        &fence,
    )
    .await
    .unwrap();
    let ff = kv
        .list(&a, &KvQuery::prefix(&b"\xff\xff"[..]))
        .await
        .unwrap();
    assert_eq!(
        keys(&ff),
        [
            Bytes::from_static(b"\xff\xff"),
            Bytes::from_static(b"\xff\xff\x01")
        ]
    );
    let fe = kv.list(&a, &KvQuery::prefix(&b"\xfe"[..])).await.unwrap();
    assert_eq!(keys(&fe), [Bytes::from_static(b"\xfe\xff")]);
}

pub async fn list_range(env: &Env) {
    let kv = &*env.kv;
    let (a, _) = alphabet(env).await;
    // Start included, end excluded.
    assert_eq!(
        texts(&kv.list(&a, &KvQuery::range("b", "bc")).await.unwrap()),
        ["b", "ba", "bb"]
    );
    assert_eq!(
        texts(
            &kv.list(&a, &KvQuery::range("b", "bc").reverse())
                .await
                .unwrap()
        ),
        ["bb", "ba", "b"]
    );
    assert_eq!(
        texts(
            &kv.list(&a, &KvQuery::range("az", "c").limit(2))
                .await
                .unwrap()
        ),
        ["b", "ba"]
    );
    assert_eq!(
        texts(&kv.list(&a, &KvQuery::range("", "b")).await.unwrap()),
        ["a"]
    );
    assert_eq!(
        texts(&kv.list(&a, &KvQuery::range("c", "zzz")).await.unwrap()),
        ["c", "d"]
    );
    // Empty and inverted ranges select nothing.
    assert!(
        kv.list(&a, &KvQuery::range("b", "b"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        kv.list(&a, &KvQuery::range("c", "a"))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn list_default_limit(env: &Env) {
    let kv = &*env.kv;
    let (a, fence) = setup(env).await;
    let total = DEFAULT_LIST_LIMIT + 5;
    let all: Vec<KvEntry> = (0..total)
        .map(|i| KvEntry::new(format!("k{i:06}"), "v"))
        .collect();
    for chunk in all.chunks(MAX_KEYS) {
        kv.put(&a, chunk, &fence).await.unwrap();
    }
    let listed = kv.list(&a, &KvQuery::all()).await.unwrap();
    assert_eq!(listed.len(), DEFAULT_LIST_LIMIT);
    assert_eq!(listed[0].key, b("k000000"));
    assert_eq!(
        kv.list(&a, &KvQuery::all().limit(total + 10))
            .await
            .unwrap()
            .len(),
        total
    );
    let last = kv.list(&a, &KvQuery::all().reverse()).await.unwrap();
    assert_eq!(last.len(), DEFAULT_LIST_LIMIT);
    assert_eq!(last[0].key, b(&format!("k{:06}", total - 1)));
}

pub async fn delete_range(env: &Env) {
    let kv = &*env.kv;
    let (a, fence) = alphabet(env).await;
    kv.delete_range(&a, b"b", b"bc", &fence).await.unwrap();
    assert_eq!(
        texts(&kv.list(&a, &KvQuery::all()).await.unwrap()),
        ["a", "bc", "c", "d"]
    );
    // Empty and inverted ranges delete nothing.
    kv.delete_range(&a, b"c", b"c", &fence).await.unwrap();
    kv.delete_range(&a, b"d", b"a", &fence).await.unwrap();
    assert_eq!(kv.list(&a, &KvQuery::all()).await.unwrap().len(), 4);
    kv.delete_range(&a, b"", b"\xff", &fence).await.unwrap();
    assert!(kv.list(&a, &KvQuery::all()).await.unwrap().is_empty());
}

pub async fn drop_all(env: &Env) {
    let kv = &*env.kv;
    let (a, fence) = alphabet(env).await;
    let other = entity("counter", "b", 1);
    kv.put(&other, &[e("keep", "me")], &fence).await.unwrap();
    kv.drop_all(&a, &fence).await.unwrap();
    assert!(kv.list(&a, &KvQuery::all()).await.unwrap().is_empty());
    assert_eq!(kv.get(&other, &[b("keep")]).await.unwrap(), [Some(b("me"))]);
    // Dropping nothing is fine; the entity can be written again.
    kv.drop_all(&a, &fence).await.unwrap();
    kv.put(&a, &[e("x", "1")], &fence).await.unwrap();
    assert_eq!(kv.list(&a, &KvQuery::all()).await.unwrap().len(), 1);
}

pub async fn entities_are_isolated(env: &Env) {
    let kv = &*env.kv;
    let fence = lease(&*env.runners, 1, 1).await;
    // Same id, other type; same type, other id; ids that are prefixes of each other.
    let owners = [
        entity("counter", "a", 1),
        entity("counter2", "a", 1),
        entity("counter", "ab", 1),
        entity("counte", "ra", 1),
    ];
    for (i, owner) in owners.iter().enumerate() {
        kv.put(
            owner,
            &[e("k", &format!("{i}")), e(&format!("only{i}"), "x")],
            &fence,
        )
        .await
        .unwrap();
    }
    for (i, owner) in owners.iter().enumerate() {
        assert_eq!(
            kv.get(owner, &[b("k")]).await.unwrap(),
            [Some(b(&format!("{i}")))]
        );
        let listed = kv.list(owner, &KvQuery::all()).await.unwrap();
        assert_eq!(texts(&listed), ["k".to_owned(), format!("only{i}")]);
    }
    kv.delete_range(&owners[0], b"", b"\xff", &fence)
        .await
        .unwrap();
    assert!(
        kv.list(&owners[0], &KvQuery::all())
            .await
            .unwrap()
            .is_empty()
    );
    for owner in &owners[1..] {
        assert_eq!(kv.list(owner, &KvQuery::all()).await.unwrap().len(), 2);
    }
}

pub async fn limits_are_enforced(env: &Env) {
    let kv = &*env.kv;
    let (a, fence) = setup(env).await;
    let key_ok = Bytes::from(vec![b'k'; MAX_KEY_SIZE]);
    let key_long = Bytes::from(vec![b'k'; MAX_KEY_SIZE + 1]);

    // Keys: at the limit accepted everywhere, one byte over refused everywhere.
    kv.put(&a, &[KvEntry::new(key_ok.clone(), "v")], &fence)
        .await
        .unwrap();
    assert_eq!(
        kv.get(&a, std::slice::from_ref(&key_ok)).await.unwrap(),
        [Some(b("v"))]
    );
    invalid(
        kv.get(&a, std::slice::from_ref(&key_long)).await,
        "2048 bytes",
    );
    invalid(
        kv.put(&a, &[KvEntry::new(key_long.clone(), "v")], &fence)
            .await,
        "2048 bytes",
    );
    invalid(
        kv.delete(&a, std::slice::from_ref(&key_long), &fence).await,
        "2048 bytes",
    );
    invalid(
        kv.delete_range(&a, &key_long, b"z", &fence).await,
        "range start",
    );
    invalid(
        kv.delete_range(&a, b"a", &key_long, &fence).await,
        "range end",
    );
    invalid(
        kv.list(&a, &KvQuery::prefix(key_long.clone())).await,
        "prefix",
    );
    invalid(
        kv.list(&a, &KvQuery::range(key_long.clone(), "z")).await,
        "range start",
    );

    // Values: 1 byte to 128 KiB.
    let value_ok = Bytes::from(vec![7u8; MAX_VALUE_SIZE]);
    kv.put(&a, &[KvEntry::new("big", value_ok.clone())], &fence)
        .await
        .unwrap();
    assert_eq!(kv.get(&a, &[b("big")]).await.unwrap(), [Some(value_ok)]);
    invalid(
        kv.put(
            &a,
            &[KvEntry::new("big", vec![7u8; MAX_VALUE_SIZE + 1])],
            &fence,
        )
        .await,
        "131072 bytes",
    );
    invalid(
        kv.put(&a, &[KvEntry::new("empty", Bytes::new())], &fence)
            .await,
        "empty",
    );

    // Keys per request: 128.
    let many: Vec<Bytes> = (0..=MAX_KEYS).map(|i| b(&format!("m{i}"))).collect();
    assert_eq!(kv.get(&a, &many[..MAX_KEYS]).await.unwrap().len(), MAX_KEYS);
    invalid(kv.get(&a, &many).await, "at most 128");
    invalid(kv.delete(&a, &many, &fence).await, "at most 128");
    let entries: Vec<KvEntry> = many.iter().map(|k| KvEntry::new(k.clone(), "v")).collect();
    kv.put(&a, &entries[..MAX_KEYS], &fence).await.unwrap();
    invalid(kv.put(&a, &entries, &fence).await, "at most 128");

    // Bytes per put: 976 KiB of keys plus values, exactly accepted, one more refused.
    let mut payload: Vec<KvEntry> = (0..7u8)
        .map(|i| KvEntry::new(vec![b'0' + i], vec![i; MAX_VALUE_SIZE]))
        .collect();
    let used: usize = payload.iter().map(|e| e.key.len() + e.value.len()).sum();
    let rest = MAX_PUT_PAYLOAD - used - 1;
    payload.push(KvEntry::new("7", vec![9u8; rest]));
    kv.put(&a, &payload, &fence).await.unwrap();
    payload[7] = KvEntry::new("7", vec![9u8; rest + 1]);
    invalid(kv.put(&a, &payload, &fence).await, "976 KiB");
    assert_eq!(
        kv.get(&a, &[b("7")]).await.unwrap()[0]
            .as_ref()
            .map(Bytes::len),
        Some(rest)
    );
}

pub async fn put_is_all_or_nothing(env: &Env) {
    let kv = &*env.kv;
    let (a, fence) = setup(env).await;
    kv.put(&a, &[e("x", "old")], &fence).await.unwrap();
    // One bad entry (empty value, oversized value, oversized key) spoils the whole put.
    for bad in [
        KvEntry::new("bad", Bytes::new()),
        KvEntry::new("bad", vec![1u8; MAX_VALUE_SIZE + 1]),
        KvEntry::new(vec![1u8; MAX_KEY_SIZE + 1], "v"),
    ] {
        let result = kv
            .put(
                &a,
                &[e("x", "new"), e("y", "new"), bad, e("z", "new")],
                &fence,
            )
            .await;
        assert!(matches!(result, Err(StorageError::InvalidArgument { .. })));
        assert_eq!(
            kv.get(&a, &[b("x"), b("y"), b("z")]).await.unwrap(),
            [Some(b("old")), None, None]
        );
    }
}

pub async fn stale_epoch_writes_are_fenced(env: &Env) {
    let kv = &*env.kv;
    let runners = &*env.runners;
    let a = entity("counter", "a", 4);
    let old = lease(runners, 1, 4).await;
    kv.put(&a, &[e("x", "1"), e("y", "1")], &old).await.unwrap();

    // Runner 1 hands the shard off; runner 2 takes it under a newer epoch.
    runners.release(&holder(1), &[shard(4)]).await.unwrap();
    let new = lease(runners, 2, 4).await;
    assert!(new.epoch > old.epoch);

    fenced(
        kv.put(&a, &[e("x", "stale")], &old).await,
        old.epoch,
        new.epoch,
    );
    fenced(kv.delete(&a, &[b("y")], &old).await, old.epoch, new.epoch);
    fenced(
        kv.delete_range(&a, b"", b"\xff", &old).await,
        old.epoch,
        new.epoch,
    );
    fenced(kv.drop_all(&a, &old).await, old.epoch, new.epoch);
    // Nothing the stale writer tried took effect; reads are not fenced.
    assert_eq!(
        kv.get(&a, &[b("x"), b("y")]).await.unwrap(),
        [Some(b("1")), Some(b("1"))]
    );
    // The new owner writes.
    kv.put(&a, &[e("x", "2")], &new).await.unwrap();
    assert_eq!(kv.get(&a, &[b("x")]).await.unwrap(), [Some(b("2"))]);

    // The old runner getting the shard back gets another, newer epoch; its old fence stays stale.
    runners.release(&holder(2), &[shard(4)]).await.unwrap();
    let again = lease(runners, 1, 4).await;
    assert!(again.epoch > new.epoch);
    fenced(
        kv.put(&a, &[e("x", "3")], &new).await,
        new.epoch,
        again.epoch,
    );
    kv.put(&a, &[e("x", "3")], &again).await.unwrap();
    // Other shards are not affected by shard 4's epoch.
    let b_entity = entity("counter", "b", 5);
    let fence5 = lease(runners, 2, 5).await;
    kv.put(&b_entity, &[e("x", "1")], &fence5).await.unwrap();
}

pub async fn unleased_shards_fence_nothing(env: &Env) {
    let kv = &*env.kv;
    let a = entity("counter", "a", 9);
    let fence = Fence {
        shard: shard(9),
        epoch: Epoch(1),
    };
    kv.put(&a, &[e("x", "1")], &fence).await.unwrap();
    assert_eq!(kv.get(&a, &[b("x")]).await.unwrap(), [Some(b("1"))]);
}

pub async fn fence_must_name_the_entity_shard(env: &Env) {
    let kv = &*env.kv;
    let fence = lease(&*env.runners, 1, 1).await;
    let elsewhere = entity("counter", "a", 2);
    invalid(kv.put(&elsewhere, &[e("x", "1")], &fence).await, "shard");
    invalid(kv.delete(&elsewhere, &[b("x")], &fence).await, "shard");
    invalid(
        kv.delete_range(&elsewhere, b"a", b"b", &fence).await,
        "shard",
    );
    invalid(kv.drop_all(&elsewhere, &fence).await, "shard");
}

pub async fn concurrent_writers_keep_every_key(env: &Env) {
    let (a, fence) = setup(env).await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let kv = env.kv.clone();
        let (a, fence) = (a.clone(), fence.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                kv.put(&a, &[KvEntry::new(format!("t{t}-{i:02}"), "v")], &fence)
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let listed = env.kv.list(&a, &KvQuery::all()).await.unwrap();
    assert_eq!(listed.len(), 80);
}

/// Puts of many entities at once (which a backend may write together): each is fenced on its
/// own shard's lease, and a stale fence costs only its own put.
pub async fn concurrent_puts_are_fenced_one_by_one(env: &Env) {
    let runners = &*env.runners;
    let current = lease(runners, 1, 6).await;
    let old = lease(runners, 1, 7).await;
    runners.release(&holder(1), &[shard(7)]).await.unwrap();
    let new = lease(runners, 2, 7).await;
    let mut tasks = Vec::new();
    for i in 0..100u32 {
        let kv = env.kv.clone();
        let (shard_no, fence) = if i % 2 == 0 {
            (6, current.clone())
        } else {
            (7, old.clone())
        };
        let address = entity("counter", &format!("e{i}"), shard_no);
        tasks.push(tokio::spawn(async move {
            let result = kv
                .put(&address, &[e("x", &i.to_string()), e("y", "1")], &fence)
                .await;
            (i, address, result)
        }));
    }
    for task in tasks {
        let (i, address, result) = task.await.unwrap();
        let stored = env.kv.get(&address, &[b("x"), b("y")]).await.unwrap();
        if i % 2 == 0 {
            result.unwrap();
            assert_eq!(stored, [Some(b(&i.to_string())), Some(b("1"))]);
        } else {
            fenced(result, old.epoch, new.epoch);
            assert_eq!(stored, [None, None], "a fenced put wrote nothing");
        }
    }
}

// ---- SQL backends only ----

pub async fn prefixes_are_isolated(env: &Env) {
    let (a, fence) = setup(env).await;
    env.kv.put(&a, &[e("x", "mine")], &fence).await.unwrap();
    let (other_kv, other_runners) = env.other_prefix().await;
    assert_eq!(other_kv.get(&a, &[b("x")]).await.unwrap(), [None]);
    // The other prefix's leases fence its own KV only: runner 2 takes shard 1 there.
    let other_fence = lease(&*other_runners, 2, 1).await;
    other_kv
        .put(&a, &[e("x", "theirs")], &other_fence)
        .await
        .unwrap();
    assert_eq!(env.kv.get(&a, &[b("x")]).await.unwrap(), [Some(b("mine"))]);
    env.kv
        .put(&a, &[e("x", "mine again")], &fence)
        .await
        .unwrap();
    assert_eq!(
        other_kv.get(&a, &[b("x")]).await.unwrap(),
        [Some(b("theirs"))]
    );
}

pub async fn malformed_rows_are_reported(env: &Env) {
    let (a, fence) = setup(env).await;
    let bad = entity("counter", "bad", 1);
    env.kv.put(&a, &[e("x", "fine")], &fence).await.unwrap();
    // An empty value (the defect Rivet's engine let in), written behind the storage's back.
    let empty = match env.kind {
        Kind::Postgres => {
            "INSERT INTO {prefix}_entity_kv (entity_type, entity_id, key, value) \
             VALUES ('counter', 'bad', '\\x01'::bytea, ''::bytea)"
        }
        _ => {
            "INSERT INTO {prefix}_entity_kv (entity_type, entity_id, key, value, updated_at) \
             VALUES ('counter', 'bad', X'01', X'', 0)"
        }
    };
    env.exec(empty).await;
    let malformed = |result: Result<_, StorageError>, owner: &str| match result {
        Err(StorageError::Malformed { what, detail }) => {
            assert!(what.contains(owner), "{what}");
            assert!(!detail.is_empty());
        }
        other => panic!("expected a malformed-data error, got {other:?}"),
    };
    malformed(
        env.kv
            .get(&bad, &[Bytes::from_static(b"\x01")])
            .await
            .map(drop),
        "counter/bad",
    );
    malformed(
        env.kv.list(&bad, &KvQuery::all()).await.map(drop),
        "counter/bad",
    );
    if env.kind != Kind::Postgres {
        // SQLite columns take any type: an integer where a value belongs.
        env.exec(
            "INSERT INTO {prefix}_entity_kv (entity_type, entity_id, key, value, updated_at) \
             VALUES ('counter', 'worse', X'02', 42, 0)",
        )
        .await;
        let worse = entity("counter", "worse", 1);
        malformed(
            env.kv
                .get(&worse, &[Bytes::from_static(b"\x02")])
                .await
                .map(drop),
            "counter/worse",
        );
        malformed(
            env.kv.list(&worse, &KvQuery::all()).await.map(drop),
            "counter/worse",
        );
    }
    // The other entities are unaffected, and the bad row can be fixed through the API.
    assert_eq!(env.kv.get(&a, &[b("x")]).await.unwrap(), [Some(b("fine"))]);
    env.kv.drop_all(&bad, &fence).await.unwrap();
    assert!(env.kv.list(&bad, &KvQuery::all()).await.unwrap().is_empty());
}

pub async fn hung_call_hits_deadline(env: &Env) {
    const DEADLINE: Duration = Duration::from_millis(500);
    let (a, fence) = setup(env).await;
    env.kv.put(&a, &[e("x", "1")], &fence).await.unwrap();
    let kv = env
        .kv_with(|o| o.with_call_timeout(DEADLINE).with_max_connections(1))
        .await;
    let timeout = |result: Result<(), StorageError>, op: &str| match result {
        Err(StorageError::Timeout { operation, timeout }) => {
            assert_eq!((operation, timeout), (op, DEADLINE));
        }
        other => panic!("expected a time-out of {op}, got {other:?}"),
    };
    match env.kind {
        Kind::Postgres => {
            use sqlx::{Connection, Executor};
            // Another session locks shard 1's lease row: the fenced write waits for it.
            let mut blocker = sqlx::PgConnection::connect(&crate::harness::database_url())
                .await
                .unwrap();
            blocker.execute("BEGIN").await.unwrap();
            blocker
                .execute(sqlx::AssertSqlSafe(env.prefix().substitute(
                    "SELECT * FROM {prefix}_leases WHERE shard_id = 'default:1' FOR UPDATE",
                )))
                .await
                .unwrap();
            timeout(kv.put(&a, &[e("x", "2")], &fence).await, "kv_put");
            // The connection stuck on the lock was closed: the next call, for another shard,
            // gets a fresh one (the pool holds one connection) and is not held up.
            let fence2 = lease(&*env.runners, 1, 2).await;
            let other = entity("counter", "other", 2);
            kv.put(&other, &[e("y", "1")], &fence2).await.unwrap();
            assert_eq!(kv.get(&other, &[b("y")]).await.unwrap(), [Some(b("1"))]);
            blocker.execute("ROLLBACK").await.unwrap();
            blocker.close().await.unwrap();
        }
        Kind::SqliteFile => {
            use sqlx::{ConnectOptions, Connection, Executor};
            // Another connection holds the write lock: BEGIN IMMEDIATE waits for it.
            let path = env.sqlite_path().unwrap();
            let mut blocker = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(path)
                .connect()
                .await
                .unwrap();
            blocker.execute("BEGIN EXCLUSIVE").await.unwrap();
            timeout(kv.put(&a, &[e("x", "2")], &fence).await, "kv_put");
            blocker.execute("ROLLBACK").await.unwrap();
            blocker.close().await.unwrap();
        }
        other => panic!("no hung-call scenario for {other:?}"),
    }
    // The storage recovers. (A timed-out write's outcome is unknown: it may still have been
    // applied once the lock went away, so `x` is 1 or 2.)
    kv.put(&a, &[e("z", "3")], &fence).await.unwrap();
    assert_eq!(env.kv.get(&a, &[b("z")]).await.unwrap(), [Some(b("3"))]);
    let x = env.kv.get(&a, &[b("x")]).await.unwrap();
    assert!(x == [Some(b("1"))] || x == [Some(b("2"))], "{x:?}");
}
