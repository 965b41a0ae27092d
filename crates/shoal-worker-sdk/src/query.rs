//! What a KV list asks the runner for, and the entries KV reads and writes: a worker's own types,
//! sent on the wire as `shoal.worker.v1` messages (the runner turns them into storage queries).

use bytes::Bytes;
use shoal_protocol::proto::worker::v1 as pb;

/// One key and its value.
///
/// ```
/// use shoal_worker_sdk::KvEntry;
///
/// let entry = KvEntry::new("value", "41");
/// assert_eq!(&entry.key[..], b"value");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KvEntry {
    /// The key.
    pub key: Bytes,
    /// The value (never empty: the runner refuses an empty value).
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

    pub(crate) fn into_wire(self) -> pb::KvEntry {
        pb::KvEntry {
            key: self.key,
            value: self.value,
        }
    }

    pub(crate) fn from_wire(entry: pb::KvEntry) -> Self {
        Self {
            key: entry.key,
            value: entry.value,
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
/// use shoal_worker_sdk::{KvQuery, KvSelection};
///
/// let latest = KvQuery::prefix("event/").reverse().limit(10);
/// assert_eq!(latest.selection, KvSelection::Prefix("event/".into()));
/// assert!(latest.reverse);
/// assert_eq!(latest.limit, Some(10));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KvQuery {
    /// Which keys.
    pub selection: KvSelection,
    /// Largest key first.
    pub reverse: bool,
    /// At most this many entries (`None`: the runner's default, 16,384; `Some(0)`: none).
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

    /// The list request on the wire (a limit past `u32::MAX` is sent as `u32::MAX`).
    pub(crate) fn into_wire(self) -> pb::KvList {
        use pb::kv_list::Selection;
        let selection = match self.selection {
            KvSelection::All => Selection::All(pb::KvAll {}),
            KvSelection::Prefix(prefix) => Selection::Prefix(prefix),
            KvSelection::Range { start, end } => Selection::Range(pb::KvRange { start, end }),
        };
        pb::KvList {
            selection: Some(selection),
            reverse: self.reverse,
            limit: self.limit.map(|l| u32::try_from(l).unwrap_or(u32::MAX)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_on_the_wire() {
        use pb::kv_list::Selection;
        let list = KvQuery::range("a", "b").reverse().limit(7).into_wire();
        assert_eq!(
            list.selection,
            Some(Selection::Range(pb::KvRange {
                start: Bytes::from_static(b"a"),
                end: Bytes::from_static(b"b"),
            }))
        );
        assert!(list.reverse);
        assert_eq!(list.limit, Some(7));

        let list = KvQuery::prefix("p").into_wire();
        assert_eq!(
            list.selection,
            Some(Selection::Prefix(Bytes::from_static(b"p")))
        );
        assert_eq!(list.limit, None);
        assert_eq!(
            KvQuery::all().limit(usize::MAX).into_wire().limit,
            Some(u32::MAX)
        );
    }
}
