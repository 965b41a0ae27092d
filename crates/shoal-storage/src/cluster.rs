//! The parameters every process of a cluster must agree on.

use std::collections::BTreeMap;
use std::fmt;

/// Settings that decide where an entity lives, fixed for the life of a cluster: two processes
/// that disagree on them map the same entity to different shards, and both would accept writes
/// for it. The first process to start stores them
/// ([`RunnerStorage::cluster_parameters`](crate::RunnerStorage::cluster_parameters)); every later
/// one compares its own and refuses to start on a difference.
///
/// ```
/// use shoal_storage::ClusterParameters;
///
/// let ours = ClusterParameters::new()
///     .with("shards_per_group", "300")
///     .with("shard_hash", "xxh3-64");
/// let stored = ClusterParameters::new().with("shards_per_group", "128");
/// let differences = ours.differences(&stored);
/// assert_eq!(differences.len(), 1);
/// assert_eq!(differences[0].name, "shards_per_group");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterParameters {
    values: BTreeMap<String, String>,
}

/// A parameter whose value differs between a process and the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterDifference {
    /// The parameter's name (for example `shards_per_group`).
    pub name: String,
    /// This process's value.
    pub ours: String,
    /// The value the cluster stored.
    pub cluster: String,
}

impl fmt::Display for ParameterDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is {} here but {} in the cluster",
            self.name, self.ours, self.cluster
        )
    }
}

impl ClusterParameters {
    /// No parameters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a parameter.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.values.insert(name.into(), value.into());
        self
    }

    /// A parameter's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Every parameter, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The parameters of `self` that `cluster` holds with another value (parameters only one of
    /// them has are not differences: a newer process may add parameters).
    pub fn differences(&self, cluster: &ClusterParameters) -> Vec<ParameterDifference> {
        self.iter()
            .filter_map(|(name, ours)| {
                let theirs = cluster.get(name)?;
                (theirs != ours).then(|| ParameterDifference {
                    name: name.to_owned(),
                    ours: ours.to_owned(),
                    cluster: theirs.to_owned(),
                })
            })
            .collect()
    }
}

impl FromIterator<(String, String)> for ClusterParameters {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Self {
            values: iter.into_iter().collect(),
        }
    }
}
