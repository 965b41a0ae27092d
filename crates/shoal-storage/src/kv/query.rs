//! What a KV list reads (the shared types of `shoal_protocol::kv`) and the key interval a
//! backend scans for it.

use bytes::Bytes;

pub use shoal_protocol::kv::{KvEntry, KvQuery, KvSelection};

/// The half-open key interval `query` selects; `None` when it selects nothing.
pub(crate) fn bounds(query: &KvQuery) -> Option<Bounds> {
    let bounds = match &query.selection {
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
        assert!(bounds(&KvQuery::range("b", "a")).is_none());
        assert!(bounds(&KvQuery::range("a", "a")).is_none());
        assert!(bounds(&KvQuery::range("a", "b")).is_some());
        assert_eq!(
            bounds(&KvQuery::prefix("")),
            Some(Bounds {
                start: Bytes::new(),
                end: None
            })
        );
    }
}
