//! Retention: deletes processed messages and their replies once they are old enough.

use std::sync::Arc;

use super::Persistence;

/// Runs until aborted: every `sweep_interval`, deletes processed messages older than
/// `retention`, `sweep_batch` rows per call, repeating while full batches come back (bounded per
/// round so one runner never monopolizes storage).
pub(crate) async fn run(persistence: Arc<Persistence>, storage_timeout: std::time::Duration) {
    const MAX_CALLS_PER_ROUND: usize = 20;
    let settings = persistence.settings.clone();
    let mut tick = tokio::time::interval(settings.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let mut deleted = 0usize;
        for _ in 0..MAX_CALLS_PER_ROUND {
            let call = persistence
                .storage
                .sweep(settings.retention, settings.sweep_batch);
            match tokio::time::timeout(storage_timeout, call).await {
                Ok(Ok(n)) => {
                    deleted += n;
                    if n < settings.sweep_batch {
                        break;
                    }
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "message retention sweep failed");
                    break;
                }
                Err(_) => {
                    tracing::warn!("message retention sweep timed out");
                    break;
                }
            }
        }
        if deleted > 0 {
            tracing::debug!(deleted, "message retention sweep");
            metrics::counter!("shoal_persisted_swept_total").increment(deleted as u64);
        }
    }
}
