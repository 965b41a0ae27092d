//! **Not part of the public API** (hidden from the docs, may change in any release): the checks
//! the runner applies to what a worker process sends, for the fuzz targets in `fuzz/`.

use shoal_protocol::proto::worker::v1 as pb;
use shoal_storage::KvQuery;

use crate::WorkerEntityType;
use crate::describe::{self, DescribeProblem};

/// Checks a worker's `Describe` answer as the host does before it registers the worker's types.
/// The error is the problem as the host reports it.
pub fn check_describe(response: &pb::DescribeResponse) -> Result<Vec<WorkerEntityType>, String> {
    describe::check(response).map_err(|problem| match problem {
        DescribeProblem::Version(version) => format!("protocol version {version}"),
        DescribeProblem::Invalid(reason) => reason,
    })
}

/// How two checked descriptions differ, as the host compares a restarted worker's answer with
/// the first one (`None`: the same types, tags and options).
pub fn describe_difference(
    before: &[WorkerEntityType],
    after: &[WorkerEntityType],
) -> Option<String> {
    describe::difference(before, after)
}

/// The storage query of a worker's KV `list` request.
pub fn kv_query(list: pb::KvList) -> KvQuery {
    KvQuery::from(list)
}
