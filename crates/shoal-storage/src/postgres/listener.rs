//! Wake-ups across processes: message events published with `NOTIFY` and received with
//! `LISTEN`, one channel per table prefix.
//!
//! A notification's payload is lines of text: `o:<origin>` first (the storage instance that sent
//! it, so an instance skips its own notifications — it already published them in process), then
//! `s:<shard>` for [`MessageEvent::Saved`] and `r:<request id>` for [`MessageEvent::Replied`].
//! Payloads stay under Postgres' 8000-byte limit by splitting into several notifications. The
//! events of one statement go out with its commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use shoal_protocol::{Backoff, ShardId, Snowflake};
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::{broadcast, watch};

use crate::messages::MessageEvent;

/// Largest payload written into one notification (Postgres refuses 8000 bytes and more).
const MAX_PAYLOAD: usize = 7900;
/// Waits before reconnecting a broken listener: from 100 ms, doubling up to 5 s.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// One line of a notification payload.
pub(super) fn saved_line(shard: &ShardId) -> String {
    format!("s:{shard}")
}

/// One line of a notification payload.
pub(super) fn replied_line(request_id: Snowflake) -> String {
    format!("r:{request_id}")
}

/// The payloads carrying `lines` (each payload starts with the origin line).
pub(super) fn payloads(origin: &str, lines: impl IntoIterator<Item = String>) -> Vec<String> {
    let head = format!("o:{origin}");
    let mut out = Vec::new();
    let mut current = head.clone();
    for line in lines {
        // A line that cannot fit any payload (an absurdly long shard group name) is dropped:
        // events are hints, polling finds the message.
        if head.len() + 1 + line.len() > MAX_PAYLOAD {
            continue;
        }
        if current.len() + 1 + line.len() > MAX_PAYLOAD {
            out.push(std::mem::replace(&mut current, head.clone()));
        }
        current.push('\n');
        current.push_str(&line);
    }
    if current.len() > head.len() {
        out.push(current);
    }
    out
}

/// The origin and events of a payload; lines that do not parse are skipped.
pub(super) fn parse(payload: &str) -> (Option<&str>, Vec<MessageEvent>) {
    let mut origin = None;
    let mut events = Vec::new();
    for line in payload.lines() {
        if let Some(o) = line.strip_prefix("o:") {
            origin = Some(o);
        } else if let Some(shard) = line.strip_prefix("s:") {
            if let Ok(shard) = shard.parse() {
                events.push(MessageEvent::Saved { shard });
            }
        } else if let Some(id) = line.strip_prefix("r:")
            && let Ok(request_id) = id.parse()
        {
            events.push(MessageEvent::Replied { request_id });
        }
    }
    (origin, events)
}

/// A name for this storage instance, unique among the processes sharing a database.
fn new_origin() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{}-{}-{:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos & 0xffff_ffff_ffff
    )
}

/// In-process events plus the cross-process listener, started on first subscription.
#[derive(Debug)]
pub(super) struct Wakeups {
    pub(super) origin: Arc<str>,
    pub(super) channel: Arc<str>,
    pub(super) events: broadcast::Sender<MessageEvent>,
    pool: PgPool,
    runtime: tokio::runtime::Handle,
    started: AtomicBool,
    listening: Arc<watch::Sender<bool>>,
    /// Dropped with the storage: the listener task ends.
    _stop: watch::Sender<()>,
    stop: watch::Receiver<()>,
}

impl Wakeups {
    pub(super) fn new(
        pool: PgPool,
        channel: String,
        runtime: tokio::runtime::Handle,
        capacity: usize,
    ) -> Self {
        let (stop_tx, stop) = watch::channel(());
        Self {
            origin: Arc::from(new_origin()),
            channel: Arc::from(channel),
            events: broadcast::channel(capacity).0,
            pool,
            runtime,
            started: AtomicBool::new(false),
            listening: Arc::new(watch::channel(false).0),
            _stop: stop_tx,
            stop,
        }
    }

    /// Publishes events in this process.
    pub(super) fn publish(&self, events: impl IntoIterator<Item = MessageEvent>) {
        for event in events {
            let _ = self.events.send(event);
        }
    }

    /// Starts the listener task unless it runs.
    pub(super) fn start(&self) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        self.runtime.spawn(listen(
            self.pool.clone(),
            self.channel.clone(),
            self.origin.clone(),
            self.events.clone(),
            self.listening.clone(),
            self.stop.clone(),
        ));
    }

    /// Waits until the listener listens (the caller bounds the wait).
    pub(super) async fn listening(&self) {
        self.start();
        let mut listening = self.listening.subscribe();
        // The sender lives as long as `self`: an error cannot happen while we borrow it.
        let _ = listening.wait_for(|on| *on).await;
    }
}

/// Forwards notifications on `channel` from other storage instances to `events` until `stop`;
/// reconnects with backoff after failures (missed notifications are covered by polling).
async fn listen(
    pool: PgPool,
    channel: Arc<str>,
    origin: Arc<str>,
    events: broadcast::Sender<MessageEvent>,
    listening: Arc<watch::Sender<bool>>,
    mut stop: watch::Receiver<()>,
) {
    let mut backoff = BACKOFF.attempts();
    loop {
        let connect = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let connected = tokio::select! {
            _ = stop.changed() => return,
            connected = connect => connected,
        };
        match connected {
            Ok(mut listener) => {
                tracing::debug!(%channel, "listening for message events");
                listening.send_replace(true);
                backoff.reset();
                loop {
                    let received = tokio::select! {
                        _ = stop.changed() => return,
                        received = listener.try_recv() => received,
                    };
                    match received {
                        Ok(Some(notification)) => {
                            let (from, parsed) = parse(notification.payload());
                            if from == Some(&*origin) {
                                continue;
                            }
                            for event in parsed {
                                let _ = events.send(event);
                            }
                        }
                        // The connection broke; sqlx reconnected and listens again. What was
                        // sent meanwhile is lost (polling finds it).
                        Ok(None) => {
                            tracing::warn!(%channel, "message event listener reconnected");
                            metrics::counter!("shoal_storage_listener_reconnects_total")
                                .increment(1);
                        }
                        Err(error) => {
                            tracing::warn!(%channel, %error, "message event listener failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%channel, %error, "message event listener could not listen; retrying");
            }
        }
        listening.send_replace(false);
        metrics::counter!("shoal_storage_listener_reconnects_total").increment(1);
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn payloads_round_trip_and_stay_small() {
        let shards: Vec<ShardId> = (1..=2000)
            .map(|i| format!("a-rather-long-group-name:{i}").parse().unwrap())
            .collect();
        let lines = shards
            .iter()
            .map(saved_line)
            .chain([replied_line(Snowflake::from_raw(u64::MAX))]);
        let payloads = payloads("me", lines);
        assert!(payloads.len() > 1);
        let mut events = Vec::new();
        for payload in &payloads {
            assert!(payload.len() <= MAX_PAYLOAD);
            let (origin, parsed) = parse(payload);
            assert_eq!(origin, Some("me"));
            events.extend(parsed);
        }
        assert_eq!(events.len(), 2001);
        assert_eq!(
            events.last(),
            Some(&MessageEvent::Replied {
                request_id: Snowflake::from_raw(u64::MAX)
            })
        );
        assert!(super::payloads("me", []).is_empty());
        assert_eq!(parse("garbage\ns:nope\nr:x").1, vec![]);
    }
}
