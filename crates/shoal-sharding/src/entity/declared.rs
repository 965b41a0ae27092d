//! Handlers declared with `#[handlers]`, and the definitions built from them.

use std::sync::Arc;

use super::definition::EntityDefinition;
use super::handler::Entity;

/// The message handlers an entity type declares: every method of its
/// [`#[handlers]`](crate::handlers) block marked `#[handle]` or `#[stream]`.
///
/// Implemented by [`#[handlers]`](crate::handlers), from the same list as the type's
/// [`Handler`](crate::Handler) and [`StreamHandler`](crate::StreamHandler) impls, so that
/// [`EntityDefinition::declared`] and [`EntityDefinition::declared_with_state`] register every
/// handler the type has. (A `Handler` written by hand, outside the block, is not declared.)
///
/// A type without a `#[handlers]` block has no declared handlers, and a declared definition of
/// it does not compile:
///
/// ```compile_fail,E0277
/// use std::sync::Arc;
/// use serde::{Deserialize, Serialize};
/// use shoal_sharding::{Entity, EntityContext, EntityDefinition, Handler, HandlerError, Message};
///
/// struct Counter {
///     value: i64,
/// }
///
/// impl Entity for Counter {
///     const TYPE: &'static str = "counter";
///     type State = ();
///
///     async fn activate(_ctx: &EntityContext, _: &Arc<()>) -> Result<Self, HandlerError> {
///         Ok(Counter { value: 0 })
///     }
/// }
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct Get;
///
/// impl Message for Get {
///     const TAG: &'static str = "get";
///     type Reply = i64;
/// }
///
/// // A handler written by hand is only registered by `.handle::<Get>()`, which may be forgotten.
/// impl Handler<Get> for Counter {
///     async fn handle(&mut self, _msg: Get, _ctx: &EntityContext) -> Result<i64, HandlerError> {
///         Ok(self.value)
///     }
/// }
///
/// // error[E0277]: `Counter` declares no handlers
/// let definition = EntityDefinition::<Counter>::declared();
/// ```
///
/// The same type with its handler in a `#[handlers]` block:
///
/// ```
/// # use std::sync::Arc;
/// # use serde::{Deserialize, Serialize};
/// # use shoal_sharding::{Entity, EntityContext, EntityDefinition, HandlerError, Message};
/// # struct Counter {
/// #     value: i64,
/// # }
/// # impl Entity for Counter {
/// #     const TYPE: &'static str = "counter";
/// #     type State = ();
/// #     async fn activate(_ctx: &EntityContext, _: &Arc<()>) -> Result<Self, HandlerError> {
/// #         Ok(Counter { value: 0 })
/// #     }
/// # }
/// # #[derive(Clone, Serialize, Deserialize)]
/// # struct Get;
/// # impl Message for Get {
/// #     const TAG: &'static str = "get";
/// #     type Reply = i64;
/// # }
/// #[shoal_sharding::handlers]
/// impl Counter {
///     #[handle]
///     async fn get(&mut self, _msg: Get, _ctx: &EntityContext) -> Result<i64, HandlerError> {
///         Ok(self.value)
///     }
/// }
///
/// let definition = EntityDefinition::<Counter>::declared();
/// # let _ = definition;
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` declares no handlers",
    label = "`{Self}` has no `#[shoal_sharding::handlers]` block",
    note = "put `#[shoal_sharding::handlers]` on the impl block of `{Self}` whose handler methods \
            are marked `#[handle]` or `#[stream]`"
)]
pub trait Handlers: Entity {
    /// Adds every declared handler to `definition`.
    fn register_handlers(definition: EntityDefinition<Self>) -> EntityDefinition<Self>;
}

impl<E: Entity> EntityDefinition<E> {
    /// A definition with every handler `E` declares in its [`#[handlers]`](crate::handlers)
    /// block, of an entity without shared state: none can be missing. (An entity with shared
    /// state is defined with [`EntityDefinition::declared_with_state`].)
    ///
    /// ```ignore
    /// sharding.register(EntityDefinition::<Counter>::declared().max_idle_time(idle))?;
    /// ```
    pub fn declared() -> Self
    where
        E: Handlers + Entity<State = ()>,
    {
        E::register_handlers(Self::new())
    }

    /// A definition with every handler `E` declares in its [`#[handlers]`](crate::handlers)
    /// block, whose instances all get `state` when they activate (as with
    /// [`EntityDefinition::with_state`]): none can be missing.
    ///
    /// ```ignore
    /// sharding.register(EntityDefinition::<Account>::declared_with_state(ledger))?;
    /// ```
    pub fn declared_with_state(state: impl Into<Arc<E::State>>) -> Self
    where
        E: Handlers,
    {
        E::register_handlers(Self::with_state(state))
    }
}
