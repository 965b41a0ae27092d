//! Entity key-value data as every side sees it: an entry, and what a list reads. The storage
//! backends (`shoal-storage`), the runner and worker processes (`shoal-worker-sdk`) share these
//! types; the `shoal.worker.v1` messages convert to and from them.

use bytes::Bytes;

use crate::proto::worker::v1 as pb;

/// Entries a list returns when its query sets no limit.
pub const DEFAULT_LIST_LIMIT: usize = 16_384;

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
/// use shoal_protocol::kv::{KvQuery, KvSelection};
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
}

impl From<KvEntry> for pb::KvEntry {
    fn from(entry: KvEntry) -> Self {
        Self {
            key: entry.key,
            value: entry.value,
        }
    }
}

impl From<pb::KvEntry> for KvEntry {
    fn from(entry: pb::KvEntry) -> Self {
        Self {
            key: entry.key,
            value: entry.value,
        }
    }
}

impl From<KvQuery> for pb::KvList {
    /// The list request on the wire (a limit past `u32::MAX` is sent as `u32::MAX`).
    fn from(query: KvQuery) -> Self {
        use pb::kv_list::Selection;
        let selection = match query.selection {
            KvSelection::All => Selection::All(pb::KvAll {}),
            KvSelection::Prefix(prefix) => Selection::Prefix(prefix),
            KvSelection::Range { start, end } => Selection::Range(pb::KvRange { start, end }),
        };
        Self {
            selection: Some(selection),
            reverse: query.reverse,
            limit: query.limit.map(|l| u32::try_from(l).unwrap_or(u32::MAX)),
        }
    }
}

impl From<pb::KvList> for KvQuery {
    /// The query a list request asks for (no selection: every key).
    fn from(list: pb::KvList) -> Self {
        use pb::kv_list::Selection;
        let selection = match list.selection {
            None | Some(Selection::All(_)) => KvSelection::All,
            Some(Selection::Prefix(prefix)) => KvSelection::Prefix(prefix),
            Some(Selection::Range(range)) => KvSelection::Range {
                start: range.start,
                end: range.end,
            },
        };
        Self {
            selection,
            reverse: list.reverse,
            limit: list.limit.and_then(|l| usize::try_from(l).ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_round_trip_on_the_wire() {
        use pb::kv_list::Selection;
        let list = pb::KvList::from(KvQuery::range("a", "b").reverse().limit(7));
        assert_eq!(
            list.selection,
            Some(Selection::Range(pb::KvRange {
                start: Bytes::from_static(b"a"),
                end: Bytes::from_static(b"b"),
            }))
        );
        assert!(list.reverse);
        assert_eq!(list.limit, Some(7));
        assert_eq!(
            KvQuery::from(list),
            KvQuery::range("a", "b").reverse().limit(7)
        );
        let list = pb::KvList::from(KvQuery::prefix("p"));
        assert_eq!(
            list.selection,
            Some(Selection::Prefix(Bytes::from_static(b"p")))
        );
        assert_eq!(list.limit, None);
        assert_eq!(
            pb::KvList::from(KvQuery::all().limit(usize::MAX)).limit,
            Some(u32::MAX)
        );
        assert_eq!(KvQuery::from(pb::KvList::default()), KvQuery::all());
    }

    #[test]
    fn entries_round_trip_on_the_wire() {
        let entry = KvEntry::new("k", "v");
        assert_eq!(KvEntry::from(pb::KvEntry::from(entry.clone())), entry);
    }
}
