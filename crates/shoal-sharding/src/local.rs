//! The seam between delivering a request and running it: what the router, the inbound side and
//! persisted processing need of the entities hosted on this runner. The entity host implements
//! it; everything below the host reaches entities only through it, so no part that routes or
//! stores requests depends on how instances are run.

use futures::future::BoxFuture;
use shoal_protocol::{EntityAddress, EntityType, Failure, Snowflake, Tag};
use shoal_storage::Epoch;
use tokio::time::Instant;

use crate::entity::{ChunkSender, GroupSelector, TagInfo};
use crate::reply::{Delivered, ReplyTo};
use crate::router::outgoing::Outgoing;

/// The entities hosted on this runner, as the parts that deliver requests see them.
pub(crate) trait LocalEntities: Send + Sync + 'static {
    /// Puts the request in the mailbox of the entity at `out.address`, activating it if needed,
    /// and returns the lease epoch of the instance that will run it. On refusal (the shard is not
    /// served here, the mailbox is full, the type is unknown) a typed payload is left in `out`,
    /// so the caller can send it elsewhere.
    #[expect(
        clippy::result_large_err,
        reason = "a refusal is the wire `Failure` answered to the caller"
    )]
    fn deliver(
        &self,
        out: &mut Outgoing,
        id: Snowflake,
        chunks: Option<ChunkSender>,
        reply: ReplyTo,
    ) -> Result<Epoch, Failure>;

    /// Delivers a stored request, waiting out a full mailbox until `deadline` (the request is
    /// stored: it need not fail and be claimed again). `resume`: for a stream, the items an
    /// earlier run already stored.
    fn deliver_stored<'a>(
        &'a self,
        out: &'a mut Outgoing,
        id: Snowflake,
        resume: Option<u64>,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Delivered, Failure>>;

    /// Interrupts a request (queued or running) of the entity at `address`.
    fn interrupt(&self, address: &EntityAddress, request: Snowflake);

    /// What the registration of `entity_type` says of `tag` (`None`: not registered here).
    fn tag_info(&self, entity_type: &EntityType, tag: &Tag) -> Option<TagInfo>;

    /// How the registration of `entity_type` maps ids to shard groups.
    fn group_selector(&self, entity_type: &EntityType) -> Option<GroupSelector>;
}
