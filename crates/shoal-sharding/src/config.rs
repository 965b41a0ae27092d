//! Sharding configuration.

use std::num::NonZeroU32;
use std::time::Duration;

use shoal_protocol::ShardGroup;

/// A sharding setting that was refused by [`ShardingConfigBuilder::build`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShardingConfigError {
    /// A value is out of range or contradicts another.
    #[error("invalid sharding setting `{setting}`: {reason}")]
    Invalid {
        /// The setting (as named in the builder and, upper-cased, in the environment).
        setting: &'static str,
        /// What is wrong and what would be accepted.
        reason: String,
    },
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ShardingConfigError {
    ShardingConfigError::Invalid {
        setting,
        reason: reason.into(),
    }
}

/// Validated sharding settings. Build with [`ShardingConfig::builder`]; [`Default`] gives the
/// defaults listed on each builder method. (The `shoal` binary reads them from its configuration
/// file, `SHOAL_*` variables and flags.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardingConfig {
    shards_per_group: NonZeroU32,
    available_groups: Vec<ShardGroup>,
    assigned_groups: Vec<ShardGroup>,
    runner_weight: NonZeroU32,
    lease_ttl: Duration,
    lease_refresh_interval: Duration,
    assignment_refresh_interval: Duration,
    entity_mailbox_capacity: usize,
    entity_max_idle_time: Duration,
    entity_termination_timeout: Duration,
    max_resident_entities: usize,
    send_retry_interval: Duration,
    storage_timeout: Duration,
    default_call_timeout: Duration,
    health_check_interval: Duration,
    defect_max_retries: u32,
    defect_backoff: Duration,
    simulate_remote_serialization: bool,
}

impl Default for ShardingConfig {
    fn default() -> Self {
        Self {
            shards_per_group: NonZeroU32::new(300).unwrap_or(NonZeroU32::MIN),
            available_groups: vec![ShardGroup::default_group()],
            assigned_groups: vec![ShardGroup::default_group()],
            runner_weight: NonZeroU32::MIN,
            lease_ttl: Duration::from_secs(2),
            lease_refresh_interval: Duration::from_millis(500),
            assignment_refresh_interval: Duration::from_millis(250),
            entity_mailbox_capacity: 4096,
            entity_max_idle_time: Duration::from_secs(60),
            entity_termination_timeout: Duration::from_secs(15),
            max_resident_entities: 100_000,
            send_retry_interval: Duration::from_millis(50),
            storage_timeout: Duration::from_millis(750),
            default_call_timeout: Duration::from_secs(30),
            health_check_interval: Duration::from_millis(500),
            defect_max_retries: 3,
            defect_backoff: Duration::from_millis(200),
            simulate_remote_serialization: false,
        }
    }
}

impl ShardingConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> ShardingConfigBuilder {
        let config = Self::default();
        ShardingConfigBuilder {
            shards_per_group: config.shards_per_group.get(),
            runner_weight: config.runner_weight.get(),
            config,
        }
    }

    /// Shards in each group.
    pub fn shards_per_group(&self) -> NonZeroU32 {
        self.shards_per_group
    }
    /// Every shard group of the cluster.
    pub fn available_groups(&self) -> &[ShardGroup] {
        &self.available_groups
    }
    /// The groups this runner serves.
    pub fn assigned_groups(&self) -> &[ShardGroup] {
        &self.assigned_groups
    }
    /// This runner's weight.
    pub fn runner_weight(&self) -> NonZeroU32 {
        self.runner_weight
    }
    /// How long a shard lease lasts without refresh.
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }
    /// The configured refresh interval (see [`ShardingConfig::effective_refresh_interval`]).
    pub fn lease_refresh_interval(&self) -> Duration {
        self.lease_refresh_interval
    }
    /// The interval leases are actually refreshed at: `min(refresh interval, lease TTL / 3)`, so
    /// that two refreshes can fail before a lease could expire.
    pub fn effective_refresh_interval(&self) -> Duration {
        self.lease_refresh_interval.min(self.lease_ttl / 3)
    }
    /// How often runners and leases are read from storage to recompute assignments and routes.
    pub fn assignment_refresh_interval(&self) -> Duration {
        self.assignment_refresh_interval
    }
    /// Requests an entity may have queued or running before sends fail with `MailboxFull`.
    pub fn entity_mailbox_capacity(&self) -> usize {
        self.entity_mailbox_capacity
    }
    /// Idle time after which an entity is passivated.
    pub fn entity_max_idle_time(&self) -> Duration {
        self.entity_max_idle_time
    }
    /// How long a stopping entity may take to finish in-flight requests before it is aborted.
    pub fn entity_termination_timeout(&self) -> Duration {
        self.entity_termination_timeout
    }
    /// Runner-wide cap on live entities.
    pub fn max_resident_entities(&self) -> usize {
        self.max_resident_entities
    }
    /// Delay before retrying a send that found no owner or an unreachable runner.
    pub fn send_retry_interval(&self) -> Duration {
        self.send_retry_interval
    }
    /// Deadline of each storage call.
    pub fn storage_timeout(&self) -> Duration {
        self.storage_timeout
    }
    /// How long a call waits for its reply, retries included, unless the caller says otherwise.
    pub fn default_call_timeout(&self) -> Duration {
        self.default_call_timeout
    }
    /// How often each runner probes the others (each probe must answer within this interval);
    /// a runner that fails two probes in a row is reported unreachable, and one a majority of
    /// the others report is cut off: it gets no shards.
    pub fn health_check_interval(&self) -> Duration {
        self.health_check_interval
    }
    /// How many times a request is replayed after its entity failed with a defect.
    pub fn defect_max_retries(&self) -> u32 {
        self.defect_max_retries
    }
    /// Delay before restarting an entity after a defect (doubled on each further defect).
    pub fn defect_backoff(&self) -> Duration {
        self.defect_backoff
    }
    /// Whether local calls encode and decode messages as remote ones do (catches types that do
    /// not survive serialization; costs throughput).
    pub fn simulate_remote_serialization(&self) -> bool {
        self.simulate_remote_serialization
    }
    /// How long before a lease's conservative expiry the runner stops the shard's entities.
    pub(crate) fn lease_safety_margin(&self) -> Duration {
        // A tenth of the TTL (at least 50 ms) for stopping entities and scheduling delays, plus
        // one refresh interval: entities stop no later than `TTL - refresh interval` after the
        // last refresh that could have succeeded before storage failed.
        (self.lease_ttl / 10).max(Duration::from_millis(50)) + self.effective_refresh_interval()
    }
}

/// Builds a [`ShardingConfig`]; [`ShardingConfigBuilder::build`] validates it.
#[derive(Debug, Clone)]
pub struct ShardingConfigBuilder {
    config: ShardingConfig,
    shards_per_group: u32,
    runner_weight: u32,
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.config.$name = value;
            self
        }
    };
}

impl ShardingConfigBuilder {
    /// Shards in each group (default 300). Must be the same on every runner of a cluster.
    pub fn shards_per_group(mut self, value: u32) -> Self {
        self.shards_per_group = value;
        self
    }
    /// Every shard group of the cluster (default `["default"]`).
    pub fn available_groups(mut self, value: impl IntoIterator<Item = ShardGroup>) -> Self {
        self.config.available_groups = value.into_iter().collect();
        self
    }
    /// The groups this runner serves (default `["default"]`); must be a subset of the available
    /// groups. Empty means the runner holds no shards.
    pub fn assigned_groups(mut self, value: impl IntoIterator<Item = ShardGroup>) -> Self {
        self.config.assigned_groups = value.into_iter().collect();
        self
    }
    /// This runner's weight (default 1; weight 2 gets about twice the shards).
    pub fn runner_weight(mut self, value: u32) -> Self {
        self.runner_weight = value;
        self
    }
    setter!(
        /// Lease duration (default 2 s). After a crash, a runner's shards move after at most this
        /// long.
        lease_ttl: Duration
    );
    setter!(
        /// Lease refresh interval (default 500 ms; effective `min(this, lease_ttl / 3)`).
        lease_refresh_interval: Duration
    );
    setter!(
        /// How often runners and leases are read to recompute assignments (default 250 ms).
        assignment_refresh_interval: Duration
    );
    setter!(
        /// Per-entity mailbox capacity (default 4096).
        entity_mailbox_capacity: usize
    );
    setter!(
        /// Idle time before passivation (default 60 s).
        entity_max_idle_time: Duration
    );
    setter!(
        /// Graceful stop time for an entity (default 15 s).
        entity_termination_timeout: Duration
    );
    setter!(
        /// Runner-wide cap on live entities (default 100,000).
        max_resident_entities: usize
    );
    setter!(
        /// Retry delay after "not assigned" or "runner unavailable" (default 50 ms).
        send_retry_interval: Duration
    );
    setter!(
        /// Deadline of each storage call (default 750 ms; at most half the lease TTL).
        storage_timeout: Duration
    );
    setter!(
        /// Default call deadline, retries included (default 30 s).
        default_call_timeout: Duration
    );
    setter!(
        /// How often runners probe each other (default 500 ms).
        health_check_interval: Duration
    );
    setter!(
        /// Replays of a request after defects before it fails (default 3).
        defect_max_retries: u32
    );
    setter!(
        /// Restart delay after a defect, doubled each time (default 200 ms).
        defect_backoff: Duration
    );
    setter!(
        /// Encode and decode local calls as remote ones (default false).
        simulate_remote_serialization: bool
    );

    /// Validates the settings.
    pub fn build(self) -> Result<ShardingConfig, ShardingConfigError> {
        let mut c = self.config;
        c.shards_per_group = NonZeroU32::new(self.shards_per_group)
            .ok_or_else(|| invalid("shards_per_group", "must be at least 1"))?;
        c.runner_weight = NonZeroU32::new(self.runner_weight)
            .ok_or_else(|| invalid("runner_weight", "must be at least 1"))?;
        if c.available_groups.is_empty() {
            return Err(invalid("available_groups", "must name at least one group"));
        }
        if let Some(g) = c
            .assigned_groups
            .iter()
            .find(|g| !c.available_groups.contains(g))
        {
            return Err(invalid(
                "assigned_groups",
                format!(
                    "group {g:?} is not among the available groups {:?}",
                    c.available_groups
                ),
            ));
        }
        let positive = [
            ("lease_ttl", c.lease_ttl),
            ("lease_refresh_interval", c.lease_refresh_interval),
            ("assignment_refresh_interval", c.assignment_refresh_interval),
            ("entity_max_idle_time", c.entity_max_idle_time),
            ("send_retry_interval", c.send_retry_interval),
            ("storage_timeout", c.storage_timeout),
            ("default_call_timeout", c.default_call_timeout),
            ("health_check_interval", c.health_check_interval),
        ];
        for (setting, value) in positive {
            if value.is_zero() {
                return Err(invalid(setting, "must be greater than zero"));
            }
        }
        if c.lease_ttl < Duration::from_millis(300) {
            return Err(invalid("lease_ttl", "must be at least 300ms"));
        }
        if c.storage_timeout > c.lease_ttl / 2 {
            return Err(invalid(
                "storage_timeout",
                format!(
                    "{:?} is more than half the lease TTL ({:?}): a hung storage call could outlive \
                     the lease",
                    c.storage_timeout, c.lease_ttl
                ),
            ));
        }
        if c.entity_mailbox_capacity == 0 {
            return Err(invalid("entity_mailbox_capacity", "must be at least 1"));
        }
        if c.max_resident_entities == 0 {
            return Err(invalid("max_resident_entities", "must be at least 1"));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = ShardingConfig::builder().build().unwrap();
        assert_eq!(c, ShardingConfig::default());
        assert_eq!(c.shards_per_group().get(), 300);
        assert_eq!(c.effective_refresh_interval(), Duration::from_millis(500));
    }

    #[test]
    fn effective_refresh_is_capped_by_a_third_of_the_ttl() {
        let c = ShardingConfig::builder()
            .lease_ttl(Duration::from_secs(3))
            .lease_refresh_interval(Duration::from_secs(10))
            .build()
            .unwrap();
        assert_eq!(c.effective_refresh_interval(), Duration::from_secs(1));
    }

    #[test]
    fn refuses_bad_values() {
        let err = |b: ShardingConfigBuilder| match b.build() {
            Err(ShardingConfigError::Invalid { setting, .. }) => setting,
            other => panic!("expected an error, got {other:?}"),
        };
        assert_eq!(
            err(ShardingConfig::builder().shards_per_group(0)),
            "shards_per_group"
        );
        assert_eq!(
            err(ShardingConfig::builder().runner_weight(0)),
            "runner_weight"
        );
        assert_eq!(
            err(ShardingConfig::builder().lease_ttl(Duration::ZERO)),
            "lease_ttl"
        );
        assert_eq!(
            err(ShardingConfig::builder().storage_timeout(Duration::from_secs(5))),
            "storage_timeout"
        );
        assert_eq!(
            err(ShardingConfig::builder().assigned_groups([ShardGroup::new("eu").unwrap()])),
            "assigned_groups"
        );
        assert_eq!(
            err(ShardingConfig::builder().available_groups([])),
            "available_groups"
        );
        assert_eq!(
            err(ShardingConfig::builder().entity_mailbox_capacity(0)),
            "entity_mailbox_capacity"
        );
    }
}
