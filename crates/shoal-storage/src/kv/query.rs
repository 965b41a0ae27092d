//! What a KV list reads, and the entries it returns.

use bytes::Bytes;

use super::limits::DEFAULT_LIST_LIMIT;

/// One key and its value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KvEntry {
    /// The key.
    pub key: Bytes,
    /// The value (never empty).
    pub value: Bytes,
}

impl KvEntry {
    /// An entry from anything that converts into bytes.
    pub fn new(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// Which keys a list visits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KvSelection {
    /// Every key of the entity.
    All,
    /// Keys starting with these bytes (an empty prefix selects every key).
    Prefix(Bytes),
    /// Keys `k` with `start <= k < end` (empty when `end <= start`).
    Range {
        /// First key included.
        start: Bytes,
        /// First key excluded.
        end: Bytes,
    },
}

/// A list query: a selection, a direction and a limit. Keys are compared as unsigned bytes
/// (lexicographically, a shorter key before its extensions).
///
/// ```
/// use shoal_storage::kv::{KvQuery, KvSelection};
///
/// let latest = KvQuery::prefix("event/").reverse().limit(10);
/// assert_eq!(latest.selection, KvSelection::Prefix("event/".into()));
/// assert!(latest.reverse);
/// assert_eq!(latest.effective_limit(), 10);
/// assert_eq!(KvQuery::all().effective_limit(), 16_384);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KvQuery {
    /// Which keys.
    pub selection: KvSelection,
    /// Largest key first.
    pub reverse: bool,
    /// At most this many entries (`None`: [`DEFAULT_LIST_LIMIT`]; `Some(0)`: none).
    pub limit: Option<usize>,
}

impl KvQuery {
    /// Every key, in ascending order, up to the default limit.
    pub fn all() -> Self {
        Self::of(KvSelection::All)
    }

    /// Keys starting with `prefix`.
    pub fn prefix(prefix: impl Into<Bytes>) -> Self {
        Self::of(KvSelection::Prefix(prefix.into()))
    }

    /// Keys from `start` (included) to `end` (excluded).
    pub fn range(start: impl Into<Bytes>, end: impl Into<Bytes>) -> Self {
        Self::of(KvSelection::Range {
            start: start.into(),
            end: end.into(),
        })
    }

    /// A query of `selection`, ascending, default limit.
    pub fn of(selection: KvSelection) -> Self {
        Self {
            selection,
            reverse: false,
            limit: None,
        }
    }

    /// Largest key first.
    pub fn reverse(mut self) -> Self {
        self.reverse = true;
        self
    }

    /// At most `limit` entries.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The number of entries the query returns at most.
    pub fn effective_limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIST_LIMIT)
    }

    /// The half-open key interval the query selects; `None` when it selects nothing.
    pub(crate) fn bounds(&self) -> Option<Bounds> {
        let bounds = match &self.selection {
            KvSelection::All => Bounds {
                start: Bytes::new(),
                end: None,
            },
            KvSelection::Prefix(prefix) => Bounds {
                start: prefix.clone(),
                end: prefix_end(prefix).map(Bytes::from),
            },
            KvSelection::Range { start, end } => Bounds {
                start: start.clone(),
                end: Some(end.clone()),
            },
        };
        match &bounds.end {
            Some(end) if end <= &bounds.start => None,
            _ => Some(bounds),
        }
    }
}

/// Keys `k` with `start <= k` and, when `end` is set, `k < end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub(crate) start: Bytes,
    pub(crate) end: Option<Bytes>,
}

/// The smallest key greater than every key starting with `prefix`: the prefix without its
/// trailing `0xff` bytes, last byte incremented. `None` when there is none (the prefix is empty or
/// all `0xff`): every key from the prefix on matches.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"abc"), Some(b"abd".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(b"\x00"), Some(b"\x01".to_vec()));
    }

    #[test]
    fn empty_ranges_select_nothing() {
        assert!(KvQuery::range("b", "a").bounds().is_none());
        assert!(KvQuery::range("a", "a").bounds().is_none());
        assert!(KvQuery::range("a", "b").bounds().is_some());
        assert_eq!(
            KvQuery::prefix("").bounds(),
            Some(Bounds {
                start: Bytes::new(),
                end: None
            })
        );
    }
}
