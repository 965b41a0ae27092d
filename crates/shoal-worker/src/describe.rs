//! What a worker implements, checked: its `Describe` answer turned into entity type declarations.

use std::collections::HashSet;

use shoal_protocol::proto::worker::v1 as pb;
use shoal_protocol::{EntityType, Tag};
use shoal_sharding::TagKind;

use crate::PROTOCOL_VERSION;

/// One entity type a worker implements, as the runner registers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerEntityType {
    /// The type's name.
    pub name: EntityType,
    /// Its tags.
    pub tags: Vec<WorkerTag>,
    /// Calls one instance may handle at once, as the worker declared it (`None`: the host's
    /// default).
    pub concurrency: Option<usize>,
}

/// One tag of a worker entity type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerTag {
    /// The tag.
    pub name: Tag,
    /// Unary or streaming.
    pub kind: TagKind,
    /// Requests are persisted and redelivered until they have a final reply.
    pub persisted: bool,
}

/// A description that cannot be hosted, or a protocol mismatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DescribeProblem {
    Version(u32),
    Invalid(String),
}

/// Checks a `Describe` answer: the protocol version, at least one type, valid and unique names,
/// at least one tag per type.
pub(crate) fn check(
    response: &pb::DescribeResponse,
) -> Result<Vec<WorkerEntityType>, DescribeProblem> {
    if response.protocol_version != PROTOCOL_VERSION {
        return Err(DescribeProblem::Version(response.protocol_version));
    }
    if response.entity_types.is_empty() {
        return Err(DescribeProblem::Invalid(
            "it declares no entity type".to_owned(),
        ));
    }
    let mut names = HashSet::new();
    let mut types = Vec::with_capacity(response.entity_types.len());
    for spec in &response.entity_types {
        let name = EntityType::new(&spec.name)
            .map_err(|e| DescribeProblem::Invalid(format!("entity type {:?}: {e}", spec.name)))?;
        if !names.insert(name.clone()) {
            return Err(DescribeProblem::Invalid(format!(
                "entity type {name} is declared twice"
            )));
        }
        if spec.tags.is_empty() {
            return Err(DescribeProblem::Invalid(format!(
                "entity type {name} declares no tag"
            )));
        }
        let mut tag_names = HashSet::new();
        let mut tags = Vec::with_capacity(spec.tags.len());
        for tag in &spec.tags {
            let tag_name = Tag::new(&tag.name).map_err(|e| {
                DescribeProblem::Invalid(format!("entity type {name}, tag {:?}: {e}", tag.name))
            })?;
            if !tag_names.insert(tag_name.clone()) {
                return Err(DescribeProblem::Invalid(format!(
                    "entity type {name} declares tag {tag_name} twice"
                )));
            }
            let kind = match pb::TagKind::try_from(tag.kind) {
                Ok(pb::TagKind::Stream) => TagKind::Stream,
                Ok(pb::TagKind::Unary | pb::TagKind::Unspecified) => TagKind::Unary,
                Err(_) => {
                    return Err(DescribeProblem::Invalid(format!(
                        "entity type {name}, tag {tag_name}: unknown tag kind {}",
                        tag.kind
                    )));
                }
            };
            tags.push(WorkerTag {
                name: tag_name,
                kind,
                persisted: tag.persisted,
            });
        }
        types.push(WorkerEntityType {
            name,
            tags,
            concurrency: (spec.concurrency > 0).then_some(spec.concurrency as usize),
        });
    }
    Ok(types)
}

/// How two descriptions differ (`None`: they declare the same types, tags and options).
pub(crate) fn difference(
    before: &[WorkerEntityType],
    after: &[WorkerEntityType],
) -> Option<String> {
    let sorted = |types: &[WorkerEntityType]| {
        let mut types = types.to_vec();
        types.sort_by(|a, b| a.name.cmp(&b.name));
        for t in &mut types {
            t.tags.sort_by(|a, b| a.name.cmp(&b.name));
        }
        types
    };
    let (before, after) = (sorted(before), sorted(after));
    if before == after {
        return None;
    }
    let names = |types: &[WorkerEntityType]| {
        types
            .iter()
            .map(|t| t.name.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (old, new) in before.iter().zip(&after) {
        if old != new {
            return Some(format!("entity type {} was {old:?}, now {new:?}", old.name));
        }
    }
    Some(format!(
        "entity types were [{}], now [{}]",
        names(&before),
        names(&after)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(types: Vec<pb::EntityTypeSpec>) -> pb::DescribeResponse {
        pb::DescribeResponse {
            protocol_version: PROTOCOL_VERSION,
            entity_types: types,
            worker_name: String::new(),
            pid: 0,
        }
    }

    fn counter(tags: &[&str]) -> pb::EntityTypeSpec {
        pb::EntityTypeSpec {
            name: "counter".to_owned(),
            tags: tags
                .iter()
                .map(|t| pb::TagSpec {
                    name: (*t).to_owned(),
                    kind: pb::TagKind::Unary as i32,
                    persisted: false,
                })
                .collect(),
            concurrency: 0,
        }
    }

    #[test]
    fn accepts_a_plain_description() {
        let types = check(&response(vec![counter(&["increment", "get"])])).unwrap();
        assert_eq!(types.len(), 1);
        assert_eq!(types[0].tags.len(), 2);
        assert_eq!(types[0].concurrency, None);
    }

    #[test]
    fn refuses_bad_descriptions() {
        let mut wrong_version = response(vec![counter(&["get"])]);
        wrong_version.protocol_version = 7;
        assert_eq!(check(&wrong_version), Err(DescribeProblem::Version(7)));
        assert!(check(&response(vec![])).is_err());
        assert!(check(&response(vec![counter(&[])])).is_err());
        assert!(check(&response(vec![counter(&["get", "get"])])).is_err());
        assert!(check(&response(vec![counter(&["get"]), counter(&["get"])])).is_err());
        assert!(check(&response(vec![counter(&[""])])).is_err());
        let mut bad_kind = counter(&["get"]);
        bad_kind.tags[0].kind = 42;
        assert!(check(&response(vec![bad_kind])).is_err());
    }

    #[test]
    fn differences() {
        let a = check(&response(vec![counter(&["get", "increment"])])).unwrap();
        let b = check(&response(vec![counter(&["increment", "get"])])).unwrap();
        let c = check(&response(vec![counter(&["get"])])).unwrap();
        assert_eq!(difference(&a, &b), None);
        assert!(difference(&a, &c).is_some());
    }
}
