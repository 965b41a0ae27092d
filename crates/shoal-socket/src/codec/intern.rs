//! Names that repeat in every request of a batch stream (shard groups, entity types, tags) are
//! validated and allocated once per stream, then shared.

use std::collections::HashMap;

use shoal_protocol::{EntityType, InvalidName, ShardGroup, Tag, WireError};

/// Distinct names kept per kind; past this the cache starts over (a peer sending endless
/// distinct names costs allocations, not memory).
const MAX_NAMES: usize = 256;

/// One kind of name.
#[derive(Debug)]
struct Names<T> {
    field: &'static str,
    /// The last name returned (usually the next one asked for).
    last: Option<T>,
    known: HashMap<Box<str>, T>,
}

impl<T> Names<T>
where
    T: Clone + AsRef<str> + for<'a> TryFrom<&'a str, Error = InvalidName>,
{
    fn new(field: &'static str) -> Self {
        Self {
            field,
            last: None,
            known: HashMap::new(),
        }
    }

    fn get(&mut self, text: &str) -> Result<T, WireError> {
        if let Some(name) = &self.last
            && name.as_ref() == text
        {
            return Ok(name.clone());
        }
        if let Some(name) = self.known.get(text) {
            let name = name.clone();
            self.last = Some(name.clone());
            return Ok(name);
        }
        let name = T::try_from(text).map_err(|source| WireError::InvalidName {
            field: self.field,
            source,
        })?;
        if self.known.len() >= MAX_NAMES {
            self.known.clear();
        }
        self.known.insert(text.into(), name.clone());
        self.last = Some(name.clone());
        Ok(name)
    }
}

/// The names seen on one batch stream.
#[derive(Debug)]
pub(crate) struct Interner {
    groups: Names<ShardGroup>,
    types: Names<EntityType>,
    tags: Names<Tag>,
}

impl Default for Interner {
    fn default() -> Self {
        Self {
            groups: Names::new("shard.group"),
            types: Names::new("address.entity_type"),
            tags: Names::new("tag"),
        }
    }
}

impl Interner {
    pub(crate) fn group(&mut self, text: &str) -> Result<ShardGroup, WireError> {
        self.groups.get(text)
    }

    pub(crate) fn entity_type(&mut self, text: &str) -> Result<EntityType, WireError> {
        self.types.get(text)
    }

    pub(crate) fn tag(&mut self, text: &str) -> Result<Tag, WireError> {
        self.tags.get(text)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn names_are_validated_and_reused() {
        let mut interner = Interner::default();
        let a = interner.tag("increment").unwrap();
        let b = interner.tag("increment").unwrap();
        assert_eq!(a, b);
        assert!(matches!(
            interner.entity_type(""),
            Err(WireError::InvalidName {
                field: "address.entity_type",
                ..
            })
        ));
        for i in 0..(MAX_NAMES * 2) {
            assert_eq!(
                interner.group(&format!("g{i}")).unwrap().as_str(),
                format!("g{i}")
            );
        }
        assert!(interner.groups.known.len() <= MAX_NAMES);
    }
}
