//! Validated, cheaply clonable names: entity types, entity ids, shard groups and message tags.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    /// The name is empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// What kind of name it was (for example "entity type").
        kind: &'static str,
    },
    /// The name is longer than allowed.
    #[error("{kind} is {len} bytes long; the limit is {max} bytes")]
    TooLong {
        /// What kind of name it was.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The name contains a control character (which would corrupt logs and text encodings).
    #[error("{kind} {name:?} contains a control character")]
    ControlCharacter {
        /// What kind of name it was.
        kind: &'static str,
        /// The refused name.
        name: String,
    },
}

fn validate(kind: &'static str, name: &str, max: usize) -> Result<(), InvalidName> {
    if name.is_empty() {
        return Err(InvalidName::Empty { kind });
    }
    if name.len() > max {
        return Err(InvalidName::TooLong {
            kind,
            len: name.len(),
            max,
        });
    }
    if name.chars().any(char::is_control) {
        return Err(InvalidName::ControlCharacter {
            kind,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// A name's storage: borrowed for names known at compile time (no allocation), shared otherwise.
#[derive(Clone)]
enum Repr {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Repr {
    fn as_str(&self) -> &str {
        match self {
            Self::Static(s) => s,
            Self::Shared(s) => s,
        }
    }
}

impl PartialEq for Repr {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Repr {}

impl std::hash::Hash for Repr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for Repr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Repr {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::ops::Deref for Repr {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

macro_rules! name_type {
    ($(#[$meta:meta])* $name:ident, $kind:literal, $max:expr) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Repr);

        impl $name {
            /// The longest accepted name, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates and wraps a name: non-empty, at most [`Self::MAX_LEN`] bytes, no control
            /// characters.
            pub fn new(name: impl AsRef<str>) -> Result<Self, InvalidName> {
                let name = name.as_ref();
                validate($kind, name, $max)?;
                Ok(Self(Repr::Shared(Arc::from(name))))
            }

            /// Like [`Self::new`] for a name known at compile time; cloning it never allocates.
            pub fn from_static(name: &'static str) -> Result<Self, InvalidName> {
                validate($kind, name, $max)?;
                Ok(Self(Repr::Static(name)))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidName;

            fn try_from(s: String) -> Result<Self, Self::Error> {
                validate($kind, &s, $max)?;
                Ok(Self(Repr::Shared(Arc::from(s))))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidName;

            fn try_from(s: &str) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::new(&*s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// The type of an entity (for example `counter`). Every runner hosting the type registers it
    /// under this name.
    EntityType,
    "entity type",
    150
);

name_type!(
    /// The id of one entity within its type (for example a user id).
    EntityId,
    "entity id",
    512
);

name_type!(
    /// A shard group. Entity types map their ids to a group; runners serve a set of groups.
    ShardGroup,
    "shard group",
    64
);

name_type!(
    /// A message tag: which message of an entity type a request carries (for example `increment`).
    Tag,
    "message tag",
    128
);

impl ShardGroup {
    /// The name of the group used when none is configured.
    pub const DEFAULT_NAME: &'static str = "default";

    /// The `default` group.
    pub fn default_group() -> Self {
        Self(Repr::Static(Self::DEFAULT_NAME))
    }
}

impl Default for ShardGroup {
    fn default() -> Self {
        Self::default_group()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        assert_eq!(EntityType::new("counter").unwrap().as_str(), "counter");
        assert_eq!(EntityId::new("user/42:ä").unwrap().as_str(), "user/42:ä");
    }

    #[test]
    fn refuses_empty_long_and_control() {
        assert_eq!(
            EntityType::new(""),
            Err(InvalidName::Empty {
                kind: "entity type"
            })
        );
        let long = "x".repeat(EntityId::MAX_LEN + 1);
        assert!(matches!(
            EntityId::new(&long),
            Err(InvalidName::TooLong { len, .. }) if len == EntityId::MAX_LEN + 1
        ));
        assert!(matches!(
            Tag::new("a\nb"),
            Err(InvalidName::ControlCharacter { .. })
        ));
    }

    #[test]
    fn serde_validates() {
        let t: EntityType = serde_json::from_str("\"counter\"").unwrap();
        assert_eq!(t.as_str(), "counter");
        assert!(serde_json::from_str::<EntityType>("\"\"").is_err());
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"counter\"");
    }
}
