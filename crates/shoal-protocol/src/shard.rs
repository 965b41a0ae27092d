//! Shard identifiers.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::name::{InvalidName, ShardGroup};

/// One shard: a group and a 1-based id within it. Its text form is `group:id`.
///
/// ```
/// use shoal_protocol::ShardId;
///
/// let shard: ShardId = "default:17".parse()?;
/// assert_eq!(shard.group().as_str(), "default");
/// assert_eq!(shard.id(), 17);
/// assert_eq!(shard.to_string(), "default:17");
/// // Group names may contain ':'; the id follows the last one.
/// assert_eq!("a:b:3".parse::<ShardId>()?.group().as_str(), "a:b");
/// # Ok::<(), shoal_protocol::ParseShardIdError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId {
    group: ShardGroup,
    id: NonZeroU32,
}

impl ShardId {
    /// A shard of `group` with the 1-based `id`.
    pub fn new(group: ShardGroup, id: NonZeroU32) -> Self {
        Self { group, id }
    }

    /// A shard of `group` with the 1-based `id`; `None` when `id` is 0.
    pub fn try_new(group: ShardGroup, id: u32) -> Option<Self> {
        NonZeroU32::new(id).map(|id| Self { group, id })
    }

    /// The shard's group.
    pub fn group(&self) -> &ShardGroup {
        &self.group
    }

    /// The shard's 1-based id within its group.
    pub fn id(&self) -> u32 {
        self.id.get()
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.group, self.id)
    }
}

impl fmt::Debug for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShardId({self})")
    }
}

/// Why a shard's text form could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseShardIdError {
    /// There is no `:` separating group and id.
    #[error("shard id {0:?} has no ':' between group and id (expected `group:id`)")]
    MissingSeparator(String),
    /// The part after the last `:` is not a positive integer.
    #[error("shard id {text:?} has an invalid id {id:?} (expected an integer from 1)")]
    InvalidId {
        /// The whole text.
        text: String,
        /// The part after the last `:`.
        id: String,
    },
    /// The group name is not valid.
    #[error("shard id {text:?} has an invalid group: {source}")]
    InvalidGroup {
        /// The whole text.
        text: String,
        /// Why the group was refused.
        source: InvalidName,
    },
}

impl FromStr for ShardId {
    type Err = ParseShardIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (group, id) = text
            .rsplit_once(':')
            .ok_or_else(|| ParseShardIdError::MissingSeparator(text.to_owned()))?;
        let invalid_id = || ParseShardIdError::InvalidId {
            text: text.to_owned(),
            id: id.to_owned(),
        };
        // `u32::from_str` accepts a leading '+'; the text form never has one.
        if !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid_id());
        }
        let id = id
            .parse::<u32>()
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(invalid_id)?;
        let group = ShardGroup::new(group).map_err(|source| ParseShardIdError::InvalidGroup {
            text: text.to_owned(),
            source,
        })?;
        Ok(Self { group, id })
    }
}

impl Serialize for ShardId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ShardId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_on_last_colon() {
        let s: ShardId = "eu:west:300".parse().unwrap();
        assert_eq!(s.group().as_str(), "eu:west");
        assert_eq!(s.id(), 300);
        assert_eq!(s.to_string(), "eu:west:300");
    }

    #[test]
    fn refuses_bad_text() {
        assert!(matches!(
            "default".parse::<ShardId>(),
            Err(ParseShardIdError::MissingSeparator(_))
        ));
        for bad in [
            "default:0",
            "default:",
            "default:x",
            "default:+1",
            "default:-1",
        ] {
            assert!(
                matches!(
                    bad.parse::<ShardId>(),
                    Err(ParseShardIdError::InvalidId { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            ":1".parse::<ShardId>(),
            Err(ParseShardIdError::InvalidGroup { .. })
        ));
        assert!(matches!(
            "default:99999999999".parse::<ShardId>(),
            Err(ParseShardIdError::InvalidId { .. })
        ));
    }

    #[test]
    fn orders_by_group_then_id() {
        let mut v: Vec<ShardId> = ["b:1", "a:10", "a:2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        v.sort();
        let text: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["a:2", "a:10", "b:1"]);
    }

    proptest::proptest! {
        #[test]
        fn text_round_trips(group in "[a-z:/._-]{0,20}[a-z]", id in 1u32..) {
            let shard = ShardId::try_new(ShardGroup::new(&group).unwrap(), id).unwrap();
            let back: ShardId = shard.to_string().parse().unwrap();
            proptest::prop_assert_eq!(back, shard);
        }
    }
}
