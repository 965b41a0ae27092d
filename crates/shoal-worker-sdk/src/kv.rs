//! Entity KV from inside a worker handler: requests over the session, answered by the runner.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use shoal_protocol::proto::worker::v1 as pb;

use crate::session::SessionState;
use shoal_protocol::kv::{KvEntry, KvQuery};

/// What went wrong with a KV request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvErrorKind {
    /// A limit was broken or the request is malformed; nothing was read or written.
    InvalidArgument,
    /// The entity's shard moved to another runner: nothing was written.
    Fenced,
    /// The entity is not active on the runner (it was deactivated).
    NotActive,
    /// Storage is unreachable or timed out; a write may or may not have happened.
    Unavailable,
    /// Stored data is malformed, or another storage failure.
    Internal,
    /// The session with the runner closed before the answer.
    SessionClosed,
}

/// A KV request that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvError {
    kind: KvErrorKind,
    message: String,
}

impl KvError {
    pub(crate) fn new(kind: KvErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    fn from_wire(error: pb::KvError) -> Self {
        let kind = match pb::KvErrorCode::try_from(error.code) {
            Ok(pb::KvErrorCode::InvalidArgument) => KvErrorKind::InvalidArgument,
            Ok(pb::KvErrorCode::Fenced) => KvErrorKind::Fenced,
            Ok(pb::KvErrorCode::NotActive) => KvErrorKind::NotActive,
            Ok(pb::KvErrorCode::Unavailable) => KvErrorKind::Unavailable,
            _ => KvErrorKind::Internal,
        };
        Self::new(kind, error.message)
    }

    /// What went wrong.
    pub fn kind(&self) -> KvErrorKind {
        self.kind
    }

    /// The runner's description.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "entity KV {:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for KvError {}

/// The KV storage of the entity a call is for. Requests are answered by the runner, from its
/// entity KV storage (limits, ordering and fencing as `docs/workers.md` describes them); requests
/// of one entity are applied in the order they are made.
#[derive(Clone)]
pub struct Kv {
    session: Arc<SessionState>,
    activation: u64,
}

impl fmt::Debug for Kv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kv")
            .field("activation", &self.activation)
            .finish_non_exhaustive()
    }
}

fn unexpected(what: &str) -> KvError {
    KvError::new(
        KvErrorKind::Internal,
        format!("the runner answered a {what} request with another kind of result"),
    )
}

impl Kv {
    pub(crate) fn new(session: Arc<SessionState>, activation: u64) -> Self {
        Self {
            session,
            activation,
        }
    }

    async fn request(&self, op: pb::kv_request::Op) -> Result<pb::kv_response::Result, KvError> {
        match self.session.kv_request(self.activation, op).await? {
            pb::kv_response::Result::Error(error) => Err(KvError::from_wire(error)),
            other => Ok(other),
        }
    }

    async fn done(&self, op: pb::kv_request::Op, what: &str) -> Result<(), KvError> {
        match self.request(op).await? {
            pb::kv_response::Result::Done(_) => Ok(()),
            _ => Err(unexpected(what)),
        }
    }

    /// The values of `keys`, in order (`None` for keys that are not set).
    pub async fn get<K: Into<Bytes>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<Option<Bytes>>, KvError> {
        let keys = keys.into_iter().map(Into::into).collect();
        match self
            .request(pb::kv_request::Op::Get(pb::KvGet { keys }))
            .await?
        {
            pb::kv_response::Result::Values(values) => Ok(values
                .values
                .into_iter()
                .map(|v| v.found.then_some(v.value))
                .collect()),
            _ => Err(unexpected("get")),
        }
    }

    /// The value of one key.
    pub async fn get_one(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, KvError> {
        Ok(self.get([key.into()]).await?.into_iter().next().flatten())
    }

    /// The entries `query` selects.
    pub async fn list(&self, query: KvQuery) -> Result<Vec<KvEntry>, KvError> {
        match self.request(pb::kv_request::Op::List(query.into())).await? {
            pb::kv_response::Result::Entries(entries) => {
                Ok(entries.entries.into_iter().map(KvEntry::from).collect())
            }
            _ => Err(unexpected("list")),
        }
    }

    /// Sets every entry, all or nothing.
    pub async fn put(&self, entries: impl IntoIterator<Item = KvEntry>) -> Result<(), KvError> {
        let entries = entries.into_iter().map(pb::KvEntry::from).collect();
        self.done(pb::kv_request::Op::Put(pb::KvPut { entries }), "put")
            .await
    }

    /// Sets one key.
    pub async fn put_one(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<(), KvError> {
        self.put([KvEntry::new(key, value)]).await
    }

    /// Removes `keys`.
    pub async fn delete<K: Into<Bytes>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<(), KvError> {
        let keys = keys.into_iter().map(Into::into).collect();
        self.done(pb::kv_request::Op::Delete(pb::KvDelete { keys }), "delete")
            .await
    }

    /// Removes the keys from `start` (included) to `end` (excluded).
    pub async fn delete_range(
        &self,
        start: impl Into<Bytes>,
        end: impl Into<Bytes>,
    ) -> Result<(), KvError> {
        let range = pb::KvDeleteRange {
            start: start.into(),
            end: end.into(),
        };
        self.done(pb::kv_request::Op::DeleteRange(range), "delete_range")
            .await
    }

    /// Removes every key of the entity.
    pub async fn drop_all(&self) -> Result<(), KvError> {
        self.done(pb::kv_request::Op::Drop(pb::KvDrop {}), "drop")
            .await
    }
}
