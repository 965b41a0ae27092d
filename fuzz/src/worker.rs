//! The worker protocol (`shoal.worker.v1`): what a worker process sends the runner. Its
//! `Describe` answer is decoded with prost and checked as the host checks it before it registers
//! the worker's entity types; session messages (`WorkerMessage`) are decoded with prost, and KV
//! list requests become storage queries.

use prost::Message as _;
use shoal_protocol::proto::worker::v1 as pb;
use shoal_sharding::TagKind;
use shoal_storage::kv::KvSelection;
use shoal_worker::WorkerEntityType;
use shoal_worker::fuzzing::{check_describe, describe_difference, kv_query};

/// The `Describe` answer a worker would send for `types`.
fn describe_response(types: &[WorkerEntityType]) -> pb::DescribeResponse {
    pb::DescribeResponse {
        protocol_version: shoal_worker::PROTOCOL_VERSION,
        entity_types: types
            .iter()
            .map(|t| pb::EntityTypeSpec {
                name: t.name.to_string(),
                tags: t
                    .tags
                    .iter()
                    .map(|tag| pb::TagSpec {
                        name: tag.name.to_string(),
                        kind: match tag.kind {
                            TagKind::Unary => pb::TagKind::Unary,
                            TagKind::Stream => pb::TagKind::Stream,
                        }
                        .into(),
                        persisted: tag.persisted,
                    })
                    .collect(),
                concurrency: t
                    .concurrency
                    .map_or(0, |c| u32::try_from(c).unwrap_or(u32::MAX)),
            })
            .collect(),
        worker_name: String::new(),
        pid: 0,
    }
}

fn check_description(bytes: &[u8]) {
    let Ok(response) = pb::DescribeResponse::decode(bytes) else {
        return;
    };
    let Ok(types) = check_describe(&response) else {
        return;
    };
    assert_eq!(response.protocol_version, shoal_worker::PROTOCOL_VERSION);
    assert!(
        !types.is_empty(),
        "a description without types was accepted"
    );
    assert_eq!(types.len(), response.entity_types.len());
    let mut names: Vec<_> = types.iter().map(|t| &t.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(
        names.len(),
        types.len(),
        "duplicate entity types were accepted"
    );
    for (ty, spec) in types.iter().zip(&response.entity_types) {
        assert_eq!(ty.name.as_str(), spec.name);
        assert!(!ty.tags.is_empty(), "a type without tags was accepted");
        let mut tags: Vec<_> = ty.tags.iter().map(|t| &t.name).collect();
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), ty.tags.len(), "duplicate tags were accepted");
        assert_eq!(
            ty.concurrency,
            (spec.concurrency > 0).then_some(spec.concurrency as usize)
        );
    }
    // What the host compares on a restart: no difference with itself, in any order.
    assert_eq!(describe_difference(&types, &types), None);
    let mut reordered = types.clone();
    reordered.reverse();
    for ty in &mut reordered {
        ty.tags.reverse();
    }
    assert_eq!(describe_difference(&types, &reordered), None);
    // The description a worker would send for the checked types reads back the same.
    let again = describe_response(&types).encode_to_vec();
    let again = pb::DescribeResponse::decode(&again[..]).expect("our own encoding decodes");
    assert_eq!(check_describe(&again).as_ref(), Ok(&types));
}

fn check_session_message(bytes: &[u8]) {
    let Ok(message) = pb::WorkerMessage::decode(bytes) else {
        return;
    };
    let again = pb::WorkerMessage::decode(&message.encode_to_vec()[..]);
    assert_eq!(
        again.as_ref(),
        Ok(&message),
        "a worker message changed on a round trip"
    );
    let Some(pb::worker_message::Kind::Kv(request)) = message.kind else {
        return;
    };
    let Some(pb::kv_request::Op::List(list)) = request.op else {
        return;
    };
    let query = kv_query(list.clone());
    assert_eq!(query.reverse, list.reverse);
    assert_eq!(query.limit, list.limit.map(|l| l as usize));
    use pb::kv_list::Selection;
    match (list.selection, query.selection) {
        (None | Some(Selection::All(_)), KvSelection::All) => {}
        (Some(Selection::Prefix(p)), KvSelection::Prefix(q)) => assert_eq!(p, q),
        (Some(Selection::Range(r)), KvSelection::Range { start, end }) => {
            assert_eq!((r.start, r.end), (start, end));
        }
        (wire, query) => panic!("{wire:?} became {query:?}"),
    }
}

/// The first byte picks the message; the rest is its encoding.
pub fn check(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 2 {
        0 => check_description(bytes),
        _ => check_session_message(bytes),
    }
}
