//! Values the cases build messages from.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use shoal_protocol::{
    EntityAddress, Headers, Incarnation, MachineId, ReplyFrame, RunnerAddress, RunnerId, ShardId,
    Snowflake, SnowflakeGenerator,
};
use shoal_storage::{
    Claim, ClaimedMessage, EnvelopeKind, Epoch, Fence, PersistedEnvelope, PersistedRequest,
    StoredReply, StoredReplyKind,
};

/// A claim that outlives any step of a test that is not waiting for it to lapse.
pub const LONG: Duration = Duration::from_secs(60);
/// A claim tests wait out.
pub const SHORT: Duration = Duration::from_millis(300);

/// Sleeps until a claim of [`SHORT`] made now has surely lapsed (waiting for time to pass, not
/// for an event).
pub async fn outlive_short() {
    tokio::time::sleep(SHORT + Duration::from_millis(200)).await;
}

/// Real Snowflake ids (large numbers: they exercise the 64-bit mapping of every backend).
pub fn ids() -> impl FnMut() -> Snowflake {
    static MACHINE: AtomicI64 = AtomicI64::new(1);
    let generator = SnowflakeGenerator::new(MachineId(MACHINE.fetch_add(1, Ordering::Relaxed)));
    move || generator.next_id().expect("an unbounded generator")
}

pub fn shard(id: u32) -> ShardId {
    format!("default:{id}").parse().unwrap()
}

pub fn address(shard_id: u32, entity: &str) -> EntityAddress {
    EntityAddress::new(
        shard(shard_id),
        "counter".parse().unwrap(),
        entity.parse().unwrap(),
    )
}

pub fn runner(port: u16) -> RunnerAddress {
    RunnerAddress::tcp("127.0.0.1", port).unwrap()
}

/// The runner at `port` in a fixed incarnation (for leases).
pub fn holder(port: u16) -> RunnerId {
    RunnerId::new(runner(port), Incarnation::from_raw(u64::from(port) + 1))
}

pub fn claim(port: u16, duration: Duration) -> Claim {
    Claim {
        by: runner(port),
        duration,
    }
}

pub fn request(id: Snowflake, address: &EntityAddress) -> PersistedRequest {
    PersistedRequest {
        id,
        address: address.clone(),
        tag: "increment".parse().unwrap(),
        payload: Bytes::from(format!("payload of {id}")),
        headers: Headers::new(),
        key: None,
        deliver_at: None,
        streaming: false,
        uninterruptible: false,
    }
}

pub fn keyed(id: Snowflake, address: &EntityAddress, key: &str) -> PersistedRequest {
    PersistedRequest {
        key: Some(key.to_owned()),
        ..request(id, address)
    }
}

pub fn final_value(id: Snowflake, request_id: Snowflake, value: &'static [u8]) -> StoredReply {
    StoredReply {
        id,
        request_id,
        kind: StoredReplyKind::Final(ReplyFrame::Value(Bytes::from_static(value))),
    }
}

pub fn chunk(id: Snowflake, request_id: Snowflake, sequence: u32) -> StoredReply {
    StoredReply {
        id,
        request_id,
        kind: StoredReplyKind::Chunk {
            sequence,
            values: vec![
                Bytes::from(format!("value {sequence}.a")),
                Bytes::from(format!("value {sequence}.b")),
            ],
            acked: false,
        },
    }
}

pub fn acked(mut reply: StoredReply) -> StoredReply {
    if let StoredReplyKind::Chunk { acked, .. } = &mut reply.kind {
        *acked = true;
    }
    reply
}

pub fn interrupt(id: Snowflake, request: &PersistedRequest) -> PersistedEnvelope {
    PersistedEnvelope {
        id,
        request_id: request.id,
        address: request.address.clone(),
        kind: EnvelopeKind::Interrupt,
    }
}

pub fn ack(id: Snowflake, chunk: &StoredReply, address: &EntityAddress) -> PersistedEnvelope {
    PersistedEnvelope {
        id,
        request_id: chunk.request_id,
        address: address.clone(),
        kind: EnvelopeKind::AckChunk { reply_id: chunk.id },
    }
}

/// A fence no lease can be newer than: for tests that are not about fencing.
pub fn unfenced(shard_id: u32) -> Fence {
    Fence {
        shard: shard(shard_id),
        epoch: Epoch(u64::MAX >> 1),
    }
}

/// The wall-clock time `ahead` from now, whole milliseconds (SQL backends store milliseconds).
pub fn wall_in(ahead: Duration) -> SystemTime {
    let millis = (SystemTime::now() + ahead)
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    UNIX_EPOCH + Duration::from_millis(millis as u64)
}

/// The wall-clock time `ago` before now, whole milliseconds.
pub fn wall_ago(ago: Duration) -> SystemTime {
    let millis = (SystemTime::now() - ago)
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    UNIX_EPOCH + Duration::from_millis(millis as u64)
}

/// The ids of claimed messages (requests and envelopes alike), in the order returned.
pub fn claimed_ids(claimed: &[ClaimedMessage]) -> Vec<Snowflake> {
    claimed
        .iter()
        .map(|m| match m {
            ClaimedMessage::Request { request, .. } => request.id,
            ClaimedMessage::Envelope(envelope) => envelope.id,
        })
        .collect()
}
