//! The conformance cases: each runs against every backend.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use shoal_protocol::{ErrorCode, Failure, Headers, ReplyFrame, Snowflake};
use shoal_storage::{
    ClaimedMessage, Fence, MessageEvent, MessageStorage, PersistedEnvelope, PersistedRequest,
    SaveResult, StorageError, StoredReply, StoredReplyKind,
};

use crate::fixtures::*;
use crate::harness::Env;

async fn claim_all(s: &dyn MessageStorage, shards: &[u32], port: u16) -> Vec<ClaimedMessage> {
    let shards: Vec<_> = shards.iter().map(|i| shard(*i)).collect();
    s.claim_unprocessed(&shards, 1000, &claim(port, LONG))
        .await
        .unwrap()
}

async fn claim_ids(s: &dyn MessageStorage, shards: &[u32], port: u16) -> Vec<Snowflake> {
    claimed_ids(&claim_all(s, shards, port).await)
}

async fn saved(s: &dyn MessageStorage, request: &PersistedRequest) {
    assert_eq!(
        s.save_request(request, None).await.unwrap(),
        SaveResult::Saved,
        "{request:?} was not saved"
    );
}

pub async fn save_then_claim_round_trips(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    let a = address(1, "a");
    let mut headers = Headers::new();
    headers.push("traceparent", "00-abc-def-01");
    headers.push("x-caller", "tests");
    let full = PersistedRequest {
        payload: Bytes::from_static(b"\x00\x01binary\xff"),
        headers,
        key: Some("counter/a/increment/k1".to_owned()),
        deliver_at: Some(wall_ago(Duration::from_secs(5))),
        streaming: true,
        uninterruptible: true,
        ..request(id(), &a)
    };
    let plain = request(id(), &a);
    saved(s, &full).await;
    saved(s, &plain).await;
    let claimed = claim_all(s, &[1], 1).await;
    assert_eq!(claimed.len(), 2);
    match &claimed[0] {
        ClaimedMessage::Request {
            request,
            last_acked_chunk,
        } => {
            assert_eq!(**request, full);
            assert_eq!(*last_acked_chunk, None);
        }
        other => panic!("expected a request, got {other:?}"),
    }
    match &claimed[1] {
        ClaimedMessage::Request { request, .. } => assert_eq!(**request, plain),
        other => panic!("expected a request, got {other:?}"),
    }
    assert_eq!(claimed[0].address(), &a);
    // Claimed: nobody gets them again while the claim holds.
    assert!(claim_all(s, &[1], 2).await.is_empty());
}

pub async fn duplicate_key_returns_original_and_latest_reply(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    let a = address(1, "a");
    let original = keyed(id(), &a, "counter/a/increment/order-1");
    saved(s, &original).await;

    // Pending: no reply yet.
    let again = keyed(id(), &a, "counter/a/increment/order-1");
    assert_eq!(
        s.save_request(&again, None).await.unwrap(),
        SaveResult::Duplicate {
            original_id: original.id,
            last_reply: None
        }
    );

    // Streaming: the last chunk.
    let c0 = chunk(id(), original.id, 0);
    let c1 = chunk(id(), original.id, 1);
    s.save_reply(&c0, &unfenced(1)).await.unwrap();
    s.save_reply(&c1, &unfenced(1)).await.unwrap();
    assert_eq!(
        s.save_request(&keyed(id(), &a, "counter/a/increment/order-1"), None)
            .await
            .unwrap(),
        SaveResult::Duplicate {
            original_id: original.id,
            last_reply: Some(c1.clone())
        }
    );

    // Done: the final reply.
    let done = final_value(id(), original.id, b"42");
    s.save_reply(&done, &unfenced(1)).await.unwrap();
    assert_eq!(
        s.save_request(&keyed(id(), &a, "counter/a/increment/order-1"), None)
            .await
            .unwrap(),
        SaveResult::Duplicate {
            original_id: original.id,
            last_reply: Some(done)
        }
    );

    // Only the original was ever stored.
    s.reset_shards(&[shard(1)]).await.unwrap();
    assert!(claim_ids(s, &[1], 1).await.is_empty());
    // Another key is another request.
    let other = keyed(id(), &a, "counter/a/increment/order-2");
    saved(s, &other).await;
    assert_eq!(claim_ids(s, &[1], 1).await, vec![other.id]);
}

pub async fn long_keys_deduplicate(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    let a = address(1, "a");
    let long = format!("counter/a/increment/{}", "x".repeat(300));
    let longer = format!("{long}y");
    let huge = "z".repeat(100_000);
    let first = keyed(id(), &a, &long);
    saved(s, &first).await;
    saved(s, &keyed(id(), &a, &longer)).await;
    saved(s, &keyed(id(), &a, &huge)).await;
    for key in [&long, &longer, &huge] {
        match s.save_request(&keyed(id(), &a, key), None).await.unwrap() {
            SaveResult::Duplicate { last_reply, .. } => assert_eq!(last_reply, None),
            other => panic!(
                "a key of {} bytes did not deduplicate: {other:?}",
                key.len()
            ),
        }
    }
    assert!(matches!(
        s.save_request(&keyed(id(), &a, &long), None).await.unwrap(),
        SaveResult::Duplicate { original_id, .. } if original_id == first.id
    ));
    // Stored keys fit an index: long ones come back as their digest.
    let claimed = claim_all(s, &[1], 1).await;
    assert_eq!(claimed.len(), 3);
    for message in claimed {
        let ClaimedMessage::Request { request, .. } = message else {
            panic!("expected requests");
        };
        let key = request.key.unwrap();
        assert!(key.len() <= 255, "key of {} bytes stored", key.len());
        assert!(key.starts_with("sha256:"), "{key}");
    }
}

pub async fn same_id_saved_twice_is_a_duplicate(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    let a = address(1, "a");
    let r = request(id(), &a);
    saved(s, &r).await;
    assert_eq!(
        s.save_request(&r, None).await.unwrap(),
        SaveResult::Duplicate {
            original_id: r.id,
            last_reply: None
        }
    );
    assert_eq!(claim_ids(s, &[1], 1).await, vec![r.id]);
}

pub async fn claims_respect_limit_and_fifo(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    // Ids out of insertion order: FIFO follows insertion, not ids.
    let mut requests: Vec<PersistedRequest> = (0..10)
        .map(|i| request(id(), &address(1 + i % 3, &format!("e{i}"))))
        .collect();
    requests.reverse();
    for r in &requests {
        saved(s, r).await;
    }
    let shards = [shard(1), shard(2), shard(3)];
    let mut got = Vec::new();
    for expect in [3, 3, 3, 1, 0] {
        let batch = s
            .claim_unprocessed(&shards, 3, &claim(1, LONG))
            .await
            .unwrap();
        assert_eq!(batch.len(), expect);
        got.extend(claimed_ids(&batch));
    }
    let want: Vec<_> = requests.iter().map(|r| r.id).collect();
    assert_eq!(got, want);
    assert!(
        s.claim_unprocessed(&shards, 0, &claim(2, LONG))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.claim_unprocessed(&[], 10, &claim(2, LONG))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn concurrent_claimers_never_share_a_message(env: &Env) {
    let mut id = ids();
    let handles = [env.messages.clone(), env.other_process().await];
    for i in 0..200u32 {
        saved(
            &*env.messages,
            &request(id(), &address(1 + i % 4, &format!("e{i}"))),
        )
        .await;
    }
    let shards: Vec<_> = (1..=4).map(shard).collect();
    let mut tasks = Vec::new();
    for claimer in 0..6u16 {
        let storage = handles[usize::from(claimer) % 2].clone();
        let shards = shards.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = storage
                    .claim_unprocessed(&shards, 7, &claim(100 + claimer, LONG))
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return mine;
                }
                mine.extend(claimed_ids(&batch));
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let distinct: BTreeSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "a message was claimed twice");
    assert_eq!(all.len(), 200);
}

pub async fn lapsed_claims_are_claimable_again(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    let r = request(id(), &address(1, "a"));
    saved(s, &r).await;
    let first = s
        .claim_unprocessed(&[shard(1)], 10, &claim(1, SHORT))
        .await
        .unwrap();
    assert_eq!(claimed_ids(&first), vec![r.id]);
    assert!(claim_ids(s, &[1], 2).await.is_empty());
    outlive_short().await;
    assert_eq!(claim_ids(s, &[1], 2).await, vec![r.id]);
}

pub async fn pre_claimed_request_is_not_claimable_by_others(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    let r = request(id(), &address(1, "a"));
    assert_eq!(
        s.save_request(&r, Some(&claim(1, LONG))).await.unwrap(),
        SaveResult::Saved
    );
    assert!(claim_ids(s, &[1], 2).await.is_empty());
    assert!(
        claim_ids(s, &[1], 1).await.is_empty(),
        "claims are not re-entrant"
    );
    // A short pre-claim lapses like any claim.
    let short = request(id(), &address(1, "b"));
    s.save_request(&short, Some(&claim(1, SHORT)))
        .await
        .unwrap();
    outlive_short().await;
    assert_eq!(claim_ids(s, &[1], 2).await, vec![short.id]);
}

pub async fn resets_make_messages_claimable_again(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    let (a, b, c) = (address(1, "a"), address(1, "b"), address(2, "c"));
    let ra = request(id(), &a);
    let rb = request(id(), &b);
    let rc = request(id(), &c);
    for r in [&ra, &rb, &rc] {
        saved(s, r).await;
    }
    // Runner 1 claims a and b, runner 2 claims c.
    assert_eq!(claim_ids(s, &[1], 1).await, vec![ra.id, rb.id]);
    assert_eq!(claim_ids(s, &[2], 2).await, vec![rc.id]);
    assert!(claim_ids(s, &[1, 2], 3).await.is_empty());

    s.reset_request(ra.id).await.unwrap();
    assert_eq!(claim_ids(s, &[1, 2], 3).await, vec![ra.id]);

    s.reset_address(&b).await.unwrap();
    assert_eq!(claim_ids(s, &[1, 2], 3).await, vec![rb.id]);

    // Runner 3 now holds a and b; resetting runner 3 frees those, not runner 2's c.
    s.reset_runner(&runner(3)).await.unwrap();
    assert_eq!(claim_ids(s, &[1, 2], 4).await, vec![ra.id, rb.id]);

    s.reset_shards(&[shard(2)]).await.unwrap();
    assert_eq!(claim_ids(s, &[1, 2], 5).await, vec![rc.id]);

    s.reset_shards(&[shard(1), shard(2)]).await.unwrap();
    assert_eq!(claim_ids(s, &[1, 2], 6).await, vec![ra.id, rb.id, rc.id]);

    // Resetting what does not exist is not an error.
    s.reset_request(id()).await.unwrap();
    s.reset_address(&address(9, "nobody")).await.unwrap();
    s.reset_runner(&runner(99)).await.unwrap();
    s.reset_shards(&[]).await.unwrap();
}

pub async fn claims_filter_by_shard(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    let r1 = request(id(), &address(1, "a"));
    let r2 = request(id(), &address(2, "b"));
    let r3 = request(id(), &address(3, "c"));
    for r in [&r1, &r2, &r3] {
        saved(s, r).await;
    }
    assert_eq!(claim_ids(s, &[2], 1).await, vec![r2.id]);
    assert!(claim_ids(s, &[4, 5], 1).await.is_empty());
    let other_group = "other:1".parse().unwrap();
    assert!(
        s.claim_unprocessed(&[other_group], 10, &claim(1, LONG))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(claim_ids(s, &[3, 1], 1).await, vec![r1.id, r3.id]);
}

pub async fn scheduled_messages_wait_for_deliver_at(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    let a = address(1, "a");
    let later = wall_in(Duration::from_secs(3600));
    let soon = wall_in(Duration::from_millis(600));
    let scheduled = PersistedRequest {
        deliver_at: Some(later),
        ..request(id(), &a)
    };
    let near = PersistedRequest {
        deliver_at: Some(soon),
        ..request(id(), &a)
    };
    let now = request(id(), &a);
    for r in [&scheduled, &near, &now] {
        saved(s, r).await;
    }
    assert_eq!(s.next_deliver_at(&[shard(1)]).await.unwrap(), Some(soon));
    assert_eq!(s.next_deliver_at(&[shard(2)]).await.unwrap(), None);
    assert_eq!(claim_ids(s, &[1], 1).await, vec![now.id]);

    // Waiting for time to pass (the point of the test), not for an event.
    let wait = soon
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(100)).await;
    assert_eq!(s.next_deliver_at(&[shard(1)]).await.unwrap(), Some(later));
    assert_eq!(claim_ids(s, &[1], 1).await, vec![near.id]);

    // Processed requests are not waited for.
    s.save_reply(&final_value(id(), scheduled.id, b"cancelled"), &unfenced(1))
        .await
        .unwrap();
    assert_eq!(s.next_deliver_at(&[shard(1)]).await.unwrap(), None);
}

pub async fn final_reply_marks_processed(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    let a = address(1, "a");
    let r = request(id(), &a);
    let other = request(id(), &a);
    saved(s, &r).await;
    saved(s, &other).await;
    assert_eq!(claim_ids(s, &[1], 1).await, vec![r.id, other.id]);
    let first = final_value(id(), r.id, b"first");
    s.save_reply(&first, &unfenced(1)).await.unwrap();
    // A second final reply (another id) is ignored; so is the same reply again.
    let second = StoredReply {
        id: id(),
        request_id: r.id,
        kind: StoredReplyKind::Final(ReplyFrame::Failure(Failure::new(
            ErrorCode::Handler,
            "second",
        ))),
    };
    s.save_reply(&second, &unfenced(1)).await.unwrap();
    s.save_reply(&first, &unfenced(1)).await.unwrap();
    assert_eq!(
        s.replies_for(&[r.id, other.id]).await.unwrap(),
        vec![first.clone()]
    );
    // Processed: never claimable again, also after a reset; the other one is.
    s.reset_shards(&[shard(1)]).await.unwrap();
    assert_eq!(claim_ids(s, &[1], 2).await, vec![other.id]);
    // Every final frame round-trips.
    let failure = Failure::new(ErrorCode::Handler, "no such order")
        .with_detail(Bytes::from_static(b"\x01\x02"))
        .with_address(a.clone());
    for frame in [ReplyFrame::Failure(failure), ReplyFrame::End] {
        let r = request(id(), &a);
        saved(s, &r).await;
        let reply = StoredReply {
            id: id(),
            request_id: r.id,
            kind: StoredReplyKind::Final(frame),
        };
        s.save_reply(&reply, &unfenced(1)).await.unwrap();
        assert_eq!(s.replies_for(&[r.id]).await.unwrap(), vec![reply]);
    }
}

pub async fn final_reply_with_a_chunk_frame_is_refused(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    let r = request(id(), &address(1, "a"));
    saved(s, &r).await;
    let bad = StoredReply {
        id: id(),
        request_id: r.id,
        kind: StoredReplyKind::Final(ReplyFrame::Chunk(shoal_protocol::Chunk {
            reply_id: id(),
            sequence: 0,
            values: vec![],
        })),
    };
    assert!(matches!(
        s.save_reply(&bad, &unfenced(1)).await,
        Err(StorageError::InvalidArgument { .. })
    ));
    assert_eq!(claim_ids(s, &[1], 1).await, vec![r.id]);
}

pub async fn replies_for_unknown_requests_are_dropped(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    let ghost = id();
    s.save_reply(&final_value(id(), ghost, b"x"), &unfenced(1))
        .await
        .unwrap();
    s.save_reply(&chunk(id(), ghost, 0), &unfenced(1))
        .await
        .unwrap();
    assert!(s.replies_for(&[ghost]).await.unwrap().is_empty());
    assert!(s.replies_for(&[]).await.unwrap().is_empty());
}

pub async fn chunks_acks_and_resumption(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    let a = address(1, "a");
    let r = PersistedRequest {
        streaming: true,
        ..request(id(), &a)
    };
    saved(s, &r).await;
    assert_eq!(claim_ids(s, &[1], 1).await, vec![r.id]);
    let c: Vec<StoredReply> = (0..3).map(|i| chunk(id(), r.id, i)).collect();
    // Saved out of order; a repeated sequence is ignored.
    for reply in [&c[1], &c[0], &c[2]] {
        s.save_reply(reply, &unfenced(1)).await.unwrap();
    }
    s.save_reply(&chunk(id(), r.id, 1), &unfenced(1))
        .await
        .unwrap();
    assert_eq!(s.replies_for(&[r.id]).await.unwrap(), c);

    // The caller acknowledges chunk 0: it is no longer returned, and a redelivery resumes
    // after it.
    s.save_envelope(&ack(id(), &c[0], &a)).await.unwrap();
    assert_eq!(s.replies_for(&[r.id]).await.unwrap(), c[1..].to_vec());
    s.reset_request(r.id).await.unwrap();
    match claim_all(s, &[1], 2).await.as_slice() {
        [
            ClaimedMessage::Request {
                request,
                last_acked_chunk,
            },
        ] => {
            assert_eq!(request.id, r.id);
            assert_eq!(*last_acked_chunk, Some(acked(c[0].clone())));
        }
        other => panic!("expected the request, got {other:?}"),
    }
    s.save_envelope(&ack(id(), &c[1], &a)).await.unwrap();
    s.reset_request(r.id).await.unwrap();
    match claim_all(s, &[1], 2).await.as_slice() {
        [
            ClaimedMessage::Request {
                last_acked_chunk, ..
            },
        ] => assert_eq!(*last_acked_chunk, Some(acked(c[1].clone()))),
        other => panic!("expected the request, got {other:?}"),
    }

    // The stream ends: unacked chunks, then the final reply, in that order.
    let end = StoredReply {
        id: id(),
        request_id: r.id,
        kind: StoredReplyKind::Final(ReplyFrame::End),
    };
    s.save_reply(&end, &unfenced(1)).await.unwrap();
    assert_eq!(
        s.replies_for(&[r.id]).await.unwrap(),
        vec![c[2].clone(), end.clone()]
    );
    // Several requests: grouped per request, in the order asked.
    let r2 = request(id(), &a);
    saved(s, &r2).await;
    let done2 = final_value(id(), r2.id, b"2");
    s.save_reply(&done2, &unfenced(1)).await.unwrap();
    assert_eq!(
        s.replies_for(&[r2.id, r.id, r2.id]).await.unwrap(),
        vec![done2, c[2].clone(), end]
    );
}

pub async fn interrupts_are_claimable_while_the_request_is_unprocessed(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    let a = address(1, "a");
    let r = request(id(), &a);
    saved(s, &r).await;
    assert_eq!(claim_ids(s, &[1], 1).await, vec![r.id]);
    let stop = interrupt(id(), &r);
    s.save_envelope(&stop).await.unwrap();
    // The same envelope again is stored once.
    s.save_envelope(&stop).await.unwrap();
    match claim_all(s, &[1], 1).await.as_slice() {
        [ClaimedMessage::Envelope(envelope)] => assert_eq!(*envelope, stop),
        other => panic!("expected the interrupt, got {other:?}"),
    }
    // The request finishes: its interrupts are done too.
    s.save_reply(&final_value(id(), r.id, b"stopped"), &unfenced(1))
        .await
        .unwrap();
    s.reset_shards(&[shard(1)]).await.unwrap();
    assert!(claim_ids(s, &[1], 1).await.is_empty());
    // An interrupt of a processed (or unknown) request is never delivered.
    s.save_envelope(&interrupt(id(), &r)).await.unwrap();
    s.save_envelope(&interrupt(id(), &request(id(), &a)))
        .await
        .unwrap();
    assert!(claim_ids(s, &[1], 1).await.is_empty());
}

pub async fn stale_epoch_replies_are_fenced(env: &Env) {
    let s = &*env.messages;
    let leases = &*env.runners;
    let mut id = ids();
    let a = address(1, "a");
    let (one, two) = (holder(1), holder(2));
    let held = leases.acquire(&one, &[shard(1)], LONG).await.unwrap();
    let old = Fence {
        shard: shard(1),
        epoch: held[0].epoch,
    };
    let r = PersistedRequest {
        streaming: true,
        ..request(id(), &a)
    };
    saved(s, &r).await;
    // The owner writes under its epoch.
    let c0 = chunk(id(), r.id, 0);
    s.save_reply(&c0, &old).await.unwrap();

    // The shard moves to runner 2.
    leases.release_all(&one).await.unwrap();
    let taken = leases.acquire(&two, &[shard(1)], LONG).await.unwrap();
    let new = Fence {
        shard: shard(1),
        epoch: taken[0].epoch,
    };
    assert!(new.epoch > old.epoch);

    for reply in [chunk(id(), r.id, 1), final_value(id(), r.id, b"stale")] {
        match s.save_reply(&reply, &old).await {
            Err(StorageError::Fenced {
                shard: fenced,
                epoch,
                current,
            }) => {
                assert_eq!(fenced, shard(1));
                assert_eq!(epoch, old.epoch.0);
                assert_eq!(current, new.epoch.0);
            }
            other => panic!("expected Fenced, got {other:?}"),
        }
    }
    // Nothing of the stale writes is stored: still unprocessed, only the first chunk.
    assert_eq!(s.replies_for(&[r.id]).await.unwrap(), vec![c0.clone()]);
    assert_eq!(claim_ids(s, &[1], 2).await, vec![r.id]);
    // The new owner's writes go through.
    let done = final_value(id(), r.id, b"fresh");
    s.save_reply(&done, &new).await.unwrap();
    assert_eq!(s.replies_for(&[r.id]).await.unwrap(), vec![c0, done]);
    // A shard never leased fences nothing.
    let r9 = request(id(), &address(9, "z"));
    saved(s, &r9).await;
    let fence9 = Fence {
        shard: shard(9),
        epoch: shoal_storage::Epoch(1),
    };
    s.save_reply(&final_value(id(), r9.id, b"ok"), &fence9)
        .await
        .unwrap();
}

pub async fn clear_address_deletes_one_entity(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    let (a, b) = (address(1, "a"), address(1, "b"));
    let ra = keyed(id(), &a, "counter/a/increment/k");
    let ra2 = request(id(), &a);
    let rb = request(id(), &b);
    for r in [&ra, &ra2, &rb] {
        saved(s, r).await;
    }
    s.save_reply(&final_value(id(), ra.id, b"a"), &unfenced(1))
        .await
        .unwrap();
    s.save_envelope(&interrupt(id(), &ra2)).await.unwrap();
    let rb_reply = chunk(id(), rb.id, 0);
    s.save_reply(&rb_reply, &unfenced(1)).await.unwrap();

    s.clear_address(&a).await.unwrap();
    assert!(s.replies_for(&[ra.id, ra2.id]).await.unwrap().is_empty());
    assert_eq!(s.replies_for(&[rb.id]).await.unwrap(), vec![rb_reply]);
    assert_eq!(claim_ids(s, &[1], 1).await, vec![rb.id]);
    // The key is free again.
    let again = keyed(id(), &a, "counter/a/increment/k");
    saved(s, &again).await;
    assert_eq!(claim_ids(s, &[1], 1).await, vec![again.id]);
}

pub async fn sweep_deletes_old_processed_messages_only(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    let a = address(1, "a");
    // Three old processed requests (one keyed, one with an interrupt and chunks).
    let old: Vec<PersistedRequest> = (0..3)
        .map(|i| keyed(id(), &a, &format!("counter/a/increment/old-{i}")))
        .collect();
    for r in &old {
        saved(s, r).await;
        s.save_reply(&chunk(id(), r.id, 0), &unfenced(1))
            .await
            .unwrap();
        s.save_envelope(&interrupt(id(), r)).await.unwrap();
        s.save_reply(&final_value(id(), r.id, b"old"), &unfenced(1))
            .await
            .unwrap();
    }
    // Waiting for time to pass (the point of the test), not for an event.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let young = keyed(id(), &a, "counter/a/increment/young");
    saved(s, &young).await;
    let young_done = final_value(id(), young.id, b"young");
    s.save_reply(&young_done, &unfenced(1)).await.unwrap();
    let pending = request(id(), &a);
    saved(s, &pending).await;

    assert_eq!(s.sweep(Duration::from_secs(3600), 100).await.unwrap(), 0);
    // At most `limit` per call.
    let age = Duration::from_millis(700);
    assert_eq!(s.sweep(age, 2).await.unwrap(), 2);
    assert_eq!(s.sweep(age, 2).await.unwrap(), 1);
    assert_eq!(s.sweep(age, 2).await.unwrap(), 0);
    for r in &old {
        assert!(s.replies_for(&[r.id]).await.unwrap().is_empty());
        // Its key is free again: a new request is stored.
        saved(s, &keyed(id(), &a, r.key.as_deref().unwrap())).await;
    }
    // The young one keeps its reply and its key; the pending one is untouched.
    assert_eq!(s.replies_for(&[young.id]).await.unwrap(), vec![young_done]);
    assert!(matches!(
        s.save_request(&keyed(id(), &a, "counter/a/increment/young"), None).await.unwrap(),
        SaveResult::Duplicate { original_id, .. } if original_id == young.id
    ));
    let claimed = claim_ids(s, &[1], 1).await;
    assert_eq!(claimed.len(), 4);
    assert_eq!(claimed[0], pending.id);
    // Unprocessed messages are never swept.
    assert_eq!(s.sweep(Duration::ZERO, 100).await.unwrap(), 1);
    assert_eq!(claim_ids(s, &[1], 2).await, Vec::<Snowflake>::new());
    s.reset_shards(&[shard(1)]).await.unwrap();
    assert_eq!(claim_ids(s, &[1], 2).await.len(), 4);
}

/// Waits (bounded) until `rx` delivers `want`, skipping other events.
pub async fn expect_event(
    rx: &mut tokio::sync::broadcast::Receiver<MessageEvent>,
    want: MessageEvent,
) {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(event) if event == want => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event channel closed: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("no {want:?} within 10 s"));
}

pub async fn events_are_published(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    let mut rx = s.subscribe();
    let r = request(id(), &address(7, "a"));
    saved(s, &r).await;
    expect_event(&mut rx, MessageEvent::Saved { shard: shard(7) }).await;
    s.save_reply(&final_value(id(), r.id, b"x"), &unfenced(7))
        .await
        .unwrap();
    expect_event(&mut rx, MessageEvent::Replied { request_id: r.id }).await;
    // A lifted claim wakes the shard's owner too.
    let r2 = request(id(), &address(8, "b"));
    saved(s, &r2).await;
    expect_event(&mut rx, MessageEvent::Saved { shard: shard(8) }).await;
    claim_ids(s, &[8], 1).await;
    s.reset_request(r2.id).await.unwrap();
    expect_event(&mut rx, MessageEvent::Saved { shard: shard(8) }).await;
    // A request saved claimed (pushed to its runner) wakes nobody: the next event is the
    // unclaimed save that follows it.
    let pushed = request(id(), &address(9, "c"));
    s.save_request(&pushed, Some(&claim(1, LONG)))
        .await
        .unwrap();
    saved(s, &request(id(), &address(10, "d"))).await;
    next_event(&mut rx, MessageEvent::Saved { shard: shard(10) }).await;
}

/// Asserts that the next event of `rx` is `want`.
pub async fn next_event(
    rx: &mut tokio::sync::broadcast::Receiver<MessageEvent>,
    want: MessageEvent,
) {
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no {want:?} within 10 s"))
        .unwrap();
    assert_eq!(got, want);
}

pub async fn concurrent_saves_get_their_own_results(env: &Env) {
    let storage = env.messages.clone();
    let mut id = ids();
    // 200 concurrent saves: 100 without a key, 50 keys used twice each.
    let mut requests = Vec::new();
    for i in 0..200u32 {
        let a = address(1 + i % 5, &format!("e{}", i % 50));
        requests.push(if i % 2 == 0 {
            request(id(), &a)
        } else {
            keyed(id(), &a, &format!("key-{}", (i / 2) % 50))
        });
    }
    let tasks: Vec<_> = requests
        .iter()
        .cloned()
        .map(|r| {
            let storage = storage.clone();
            tokio::spawn(async move {
                let result = storage.save_request(&r, None).await.unwrap();
                (r, result)
            })
        })
        .collect();
    let mut by_key: HashMap<String, Vec<(Snowflake, SaveResult)>> = HashMap::new();
    let mut saved_ids = BTreeSet::new();
    for task in tasks {
        let (r, result) = task.await.unwrap();
        match &r.key {
            None => {
                assert_eq!(result, SaveResult::Saved);
                saved_ids.insert(r.id);
            }
            Some(key) => by_key.entry(key.clone()).or_default().push((r.id, result)),
        }
    }
    assert_eq!(by_key.len(), 50);
    for (key, results) in by_key {
        assert_eq!(results.len(), 2);
        let winners: Vec<_> = results
            .iter()
            .filter(|(_, r)| *r == SaveResult::Saved)
            .collect();
        assert_eq!(winners.len(), 1, "key {key}: {results:?}");
        let winner = winners[0].0;
        saved_ids.insert(winner);
        for (rid, result) in &results {
            if *rid != winner {
                assert_eq!(
                    *result,
                    SaveResult::Duplicate {
                        original_id: winner,
                        last_reply: None
                    },
                    "key {key}"
                );
            }
        }
    }
    let claimed: BTreeSet<_> = claim_ids(&*storage, &[1, 2, 3, 4, 5], 1)
        .await
        .into_iter()
        .collect();
    assert_eq!(claimed, saved_ids);
    assert_eq!(claimed.len(), 150);

    // Concurrent replies too: each caller's reply lands, one final per request.
    let replies: Vec<_> = claimed
        .iter()
        .map(|rid| {
            let storage = storage.clone();
            let reply = final_value(id(), *rid, b"done");
            tokio::spawn(async move {
                storage.save_reply(&reply, &unfenced(1)).await.unwrap();
                reply
            })
        })
        .collect();
    let mut want = Vec::new();
    for task in replies {
        want.push(task.await.unwrap());
    }
    let asked: Vec<_> = want.iter().map(|r| r.request_id).collect();
    assert_eq!(storage.replies_for(&asked).await.unwrap(), want);
    storage
        .reset_shards(&(1..=5).map(shard).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(claim_ids(&*storage, &[1, 2, 3, 4, 5], 1).await.is_empty());
}

pub async fn a_reused_id_is_refused_not_answered_with_another_requests_reply(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    let first = request(id(), &address(1, "a"));
    saved(s, &first).await;
    s.save_reply(&final_value(id(), first.id, b"a's reply"), &unfenced(1))
        .await
        .unwrap();
    // Another process minted the same id for another entity, or for the same entity with another
    // message: storage refuses it rather than answering it with the first request's reply.
    let others = [
        PersistedRequest {
            id: first.id,
            ..request(id(), &address(2, "b"))
        },
        PersistedRequest {
            payload: Bytes::from_static(b"another payload"),
            ..first.clone()
        },
        PersistedRequest {
            tag: "get".parse().unwrap(),
            ..first.clone()
        },
    ];
    for other in others {
        let result = s.save_request(&other, None).await;
        assert!(
            matches!(result, Err(StorageError::Conflict { .. })),
            "a different request under a stored id must be refused, got {result:?}"
        );
    }
    // The same request saved again (a retry) is still a duplicate.
    assert!(matches!(
        s.save_request(&first, None).await.unwrap(),
        SaveResult::Duplicate { original_id, .. } if original_id == first.id
    ));
}

pub async fn interrupts_must_match_their_request(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    let r = request(id(), &address(1, "a"));
    saved(s, &r).await;
    assert_eq!(claim_ids(s, &[1, 2], 1).await, vec![r.id]);
    // An interrupt naming another entity (or the same id under another shard) is refused and
    // stored nowhere.
    for wrong in [address(2, "b"), address(2, "a"), address(1, "b")] {
        let envelope = PersistedEnvelope {
            address: wrong,
            ..interrupt(id(), &r)
        };
        let result = s.save_envelope(&envelope).await;
        assert!(
            matches!(result, Err(StorageError::Refused { .. })),
            "{result:?}"
        );
    }
    assert!(claim_ids(s, &[1, 2], 1).await.is_empty());
    // An uninterruptible request refuses interrupts, whatever the caller believes.
    let u = PersistedRequest {
        uninterruptible: true,
        ..request(id(), &address(1, "u"))
    };
    saved(s, &u).await;
    assert_eq!(claim_ids(s, &[1], 1).await, vec![u.id]);
    let result = s.save_envelope(&interrupt(id(), &u)).await;
    assert!(
        matches!(result, Err(StorageError::Refused { .. })),
        "{result:?}"
    );
    assert!(claim_ids(s, &[1], 1).await.is_empty());
    // A matching interrupt of an interruptible request is stored under the request's shard.
    let stop = interrupt(id(), &r);
    s.save_envelope(&stop).await.unwrap();
    assert_eq!(claim_ids(s, &[1], 1).await, vec![stop.id]);
}

pub async fn keys_that_differ_only_in_where_the_separator_falls_do_not_collide(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    let tag = "increment".parse().unwrap();
    let one = address(1, "a/increment");
    let two = address(1, "a");
    let first = keyed(id(), &one, &shoal_storage::message_key(&one, &tag, "k"));
    let second = keyed(
        id(),
        &two,
        &shoal_storage::message_key(&two, &tag, "increment/k"),
    );
    saved(s, &first).await;
    saved(s, &second).await;
}

pub async fn replies_of_two_requests_may_share_an_id(env: &Env) {
    let s = &*env.messages;
    let mut id = ids();
    let (a, b) = (
        request(id(), &address(1, "a")),
        request(id(), &address(2, "b")),
    );
    saved(s, &a).await;
    saved(s, &b).await;
    // Two processes made the same reply id for replies of different requests: both are kept.
    let reply_id = id();
    s.save_reply(&final_value(reply_id, a.id, b"a's"), &unfenced(1))
        .await
        .unwrap();
    s.save_reply(&final_value(reply_id, b.id, b"b's"), &unfenced(2))
        .await
        .unwrap();
    let replies = s.replies_for(&[a.id, b.id]).await.unwrap();
    let value_of = |request: Snowflake| {
        replies.iter().find_map(|r| match &r.kind {
            StoredReplyKind::Final(ReplyFrame::Value(v)) if r.request_id == request => {
                Some(v.clone())
            }
            _ => None,
        })
    };
    assert_eq!(value_of(a.id).as_deref(), Some(&b"a's"[..]));
    assert_eq!(value_of(b.id).as_deref(), Some(&b"b's"[..]));
    // Both requests are processed: nothing is delivered again.
    assert!(claim_ids(s, &[1, 2], 1).await.is_empty());
}
