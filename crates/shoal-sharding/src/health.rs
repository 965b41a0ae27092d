//! Runner health checks.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use shoal_protocol::RunnerAddress;

use crate::transport::Transport;

/// Decides whether another runner is alive. The runtime's health singleton asks it about every
/// registered runner and marks the ones that fail unhealthy in storage (unhealthy runners get no
/// shards). The last healthy runner is never marked unhealthy.
#[async_trait]
pub trait RunnerHealth: Send + Sync + 'static {
    /// Whether `runner` is alive.
    async fn is_alive(&self, runner: &RunnerAddress) -> bool;
}

/// Considers every runner alive (leases and heartbeats still catch dead ones).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopHealth;

#[async_trait]
impl RunnerHealth for NoopHealth {
    async fn is_alive(&self, _runner: &RunnerAddress) -> bool {
        true
    }
}

/// Pings runners through the transport: alive if any of `attempts` pings, `interval` apart, each
/// within `timeout`, answers.
#[derive(Clone)]
pub struct PingHealth {
    runners: Arc<dyn Transport>,
    timeout: Duration,
    attempts: u32,
    interval: Duration,
}

impl std::fmt::Debug for PingHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PingHealth")
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl PingHealth {
    /// Pings through `runners` (defaults: 3 attempts of 1 s, 250 ms apart).
    pub fn new(runners: Arc<dyn Transport>) -> Self {
        Self {
            runners,
            timeout: Duration::from_secs(1),
            attempts: 3,
            interval: Duration::from_millis(250),
        }
    }

    /// Per-ping deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Pings before declaring a runner dead (at least 1).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }
}

#[async_trait]
impl RunnerHealth for PingHealth {
    async fn is_alive(&self, runner: &RunnerAddress) -> bool {
        for attempt in 0..self.attempts {
            if attempt > 0 {
                tokio::time::sleep(self.interval).await;
            }
            if let Ok(Ok(())) = tokio::time::timeout(self.timeout, self.runners.ping(runner)).await
            {
                return true;
            }
        }
        false
    }
}
