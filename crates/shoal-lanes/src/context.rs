//! Call context: string key/value pairs that may travel with a task call or an event.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// String key/value pairs that accompany a task call or an event (a tenant, a request id, a
/// locale...). Nothing is forwarded across a lane unless the lane's binding allows the key: the
/// producer drops every other key before signing, and the consumer drops them again on receipt.
///
/// ```
/// use shoal_lanes::CallContext;
///
/// let cx = CallContext::new().with("tenant", "acme").with("secret", "x");
/// let forwarded = cx.only(&["tenant".to_owned()]);
/// assert_eq!(forwarded.get("tenant"), Some("acme"));
/// assert_eq!(forwarded.get("secret"), None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CallContext(BTreeMap<String, String>);

impl CallContext {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the context with `key` set to `value`.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(key, value);
        self
    }

    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.insert(key.into(), value.into());
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Whether the context holds no pair.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The number of pairs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The pairs, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// A copy holding only the keys in `allowed`.
    pub fn only(&self, allowed: &[String]) -> CallContext {
        CallContext(
            self.0
                .iter()
                .filter(|(k, _)| allowed.iter().any(|a| a == *k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    /// The canonical JSON form (keys sorted), which is what lane tokens hash.
    pub fn to_json(&self) -> String {
        // A map of strings always serializes.
        serde_json::to_string(&self.0).unwrap_or_else(|_| "{}".to_owned())
    }

    /// Parses the JSON form; `None` when it is not an object of strings.
    pub fn from_json(text: &str) -> Option<CallContext> {
        serde_json::from_str(text).ok().map(CallContext)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for CallContext {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        CallContext(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}
