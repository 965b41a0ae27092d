//! # shoal-macros
//!
//! Procedural macros for `shoal-sharding`. Use them through that crate
//! (`shoal_sharding::handlers`); the generated code refers to `::shoal_sharding` paths.
//!
//! [`macro@handlers`] goes on the impl block of an entity type. Its methods marked `#[handle]`
//! (one reply) or `#[stream]` (a stream of replies) are the type's message handlers, and that
//! block is the only list of them: the macro implements `Handler<M>` / `StreamHandler<M>` for
//! each, and `shoal_sharding::Handlers`, which registers them all. A definition built with
//! `EntityDefinition::declared()` (or `declared_with_state(state)` for an entity with shared
//! state) therefore has every handler the type has, and no message can be left out of it.
//!
//! ```
//! use std::sync::Arc;
//!
//! use serde::{Deserialize, Serialize};
//! use shoal_sharding::{
//!     ChunkSink, Entity, EntityContext, EntityDefinition, HandlerError, Message, handlers,
//! };
//!
//! #[derive(Default)]
//! struct Counter {
//!     value: i64,
//! }
//!
//! impl Entity for Counter {
//!     const TYPE: &'static str = "counter";
//!     type State = ();
//!
//!     async fn activate(_ctx: &EntityContext, _: &Arc<()>) -> Result<Self, HandlerError> {
//!         Ok(Counter::default())
//!     }
//! }
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Increment {
//!     by: i64,
//! }
//!
//! impl Message for Increment {
//!     const TAG: &'static str = "increment";
//!     type Reply = i64;
//! }
//!
//! /// Streams the next `count` values the counter would reach, one at a time.
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Countdown {
//!     count: i64,
//! }
//!
//! impl Message for Countdown {
//!     const TAG: &'static str = "countdown";
//!     type Reply = i64;
//! }
//!
//! #[handlers]
//! impl Counter {
//!     #[handle]
//!     async fn increment(
//!         &mut self,
//!         msg: Increment,
//!         _ctx: &EntityContext,
//!     ) -> Result<i64, HandlerError> {
//!         self.value += msg.by;
//!         Ok(self.value)
//!     }
//!
//!     #[stream]
//!     async fn countdown(
//!         &mut self,
//!         msg: Countdown,
//!         _ctx: &EntityContext,
//!         out: &mut ChunkSink<i64>,
//!     ) -> Result<(), HandlerError> {
//!         for step in (0..msg.count).rev() {
//!             out.send(self.value + step).await?;
//!         }
//!         Ok(())
//!     }
//!
//!     /// Not a handler: methods without a marker stay plain methods.
//!     fn is_zero(&self) -> bool {
//!         self.value == 0
//!     }
//! }
//!
//! // Both handlers, and nothing to forget.
//! let definition = EntityDefinition::<Counter>::declared();
//! # let _ = (definition, Counter::default().is_zero());
//! ```

mod expand;

use proc_macro::TokenStream;

/// Declares an entity type's message handlers: the methods of this impl block marked
/// `#[handle]` or `#[stream]`.
///
/// ```text
/// #[handle]  async fn name(&mut self, msg: M, ctx: &EntityContext) -> Result<M::Reply, HandlerError>
/// #[stream]  async fn name(&mut self, msg: M, ctx: &EntityContext, out: &mut ChunkSink<M::Reply>)
///                -> Result<(), HandlerError>
/// ```
///
/// For each marked method it generates `impl Handler<M>` (or `impl StreamHandler<M>`) that calls
/// the method, which stays an ordinary inherent method; and one `impl Handlers` whose
/// `register_handlers` adds every one of them to an `EntityDefinition`. Build the definition
/// with `EntityDefinition::declared()` (an entity whose `State` is `()`) or
/// `EntityDefinition::declared_with_state(state)`: it has every handler of the type. Unmarked
/// items of the block stay as they are. A type has one `#[handlers]` block (a second one would
/// implement `Handlers` twice). A marked method's `#[cfg(...)]` applies to its handler and its
/// registration too.
///
/// The block must be an inherent impl (`impl Counter { ... }`, generics allowed), and a marked
/// method must be an `async fn` taking `&mut self`, the message by value, the context, and for
/// a stream the sink; anything else is a compile error on the offending tokens. Each of these
/// fails to compile:
///
/// Not `async`:
/// ```compile_fail
/// # use shoal_sharding::{EntityContext, HandlerError, Message, handlers};
/// # #[derive(Clone, serde::Serialize, serde::Deserialize)] struct Get;
/// # impl Message for Get { const TAG: &'static str = "get"; type Reply = i64; }
/// # struct Counter { value: i64 }
/// # impl shoal_sharding::Entity for Counter {
/// #     const TYPE: &'static str = "counter";
/// #     type State = ();
/// #     async fn activate(_: &EntityContext, _: &std::sync::Arc<()>) -> Result<Self, HandlerError> {
/// #         Ok(Counter { value: 0 })
/// #     }
/// # }
/// #[handlers]
/// impl Counter {
///     #[handle]
///     fn get(&mut self, _msg: Get, _ctx: &EntityContext) -> Result<i64, HandlerError> {
///         Ok(self.value) // error: `#[handle]` method `get` must be an `async fn`
///     }
/// }
/// ```
///
/// Not `&mut self` (handlers have their instance to themselves):
/// ```compile_fail
/// # use shoal_sharding::{EntityContext, HandlerError, Message, handlers};
/// # #[derive(Clone, serde::Serialize, serde::Deserialize)] struct Get;
/// # impl Message for Get { const TAG: &'static str = "get"; type Reply = i64; }
/// # struct Counter { value: i64 }
/// # impl shoal_sharding::Entity for Counter {
/// #     const TYPE: &'static str = "counter";
/// #     type State = ();
/// #     async fn activate(_: &EntityContext, _: &std::sync::Arc<()>) -> Result<Self, HandlerError> {
/// #         Ok(Counter { value: 0 })
/// #     }
/// # }
/// #[handlers]
/// impl Counter {
///     #[handle]
///     async fn get(&self, _msg: Get, _ctx: &EntityContext) -> Result<i64, HandlerError> {
///         Ok(self.value) // error: `#[handle]` method `get` must take `&mut self`
///     }
/// }
/// ```
///
/// The wrong arguments (a stream also takes its sink):
/// ```compile_fail
/// # use shoal_sharding::{EntityContext, HandlerError, Message, handlers};
/// # #[derive(Clone, serde::Serialize, serde::Deserialize)] struct Watch;
/// # impl Message for Watch { const TAG: &'static str = "watch"; type Reply = i64; }
/// # struct Counter { value: i64 }
/// # impl shoal_sharding::Entity for Counter {
/// #     const TYPE: &'static str = "counter";
/// #     type State = ();
/// #     async fn activate(_: &EntityContext, _: &std::sync::Arc<()>) -> Result<Self, HandlerError> {
/// #         Ok(Counter { value: 0 })
/// #     }
/// # }
/// #[handlers]
/// impl Counter {
///     #[stream]
///     async fn watch(&mut self, _msg: Watch, _ctx: &EntityContext) -> Result<(), HandlerError> {
///         Ok(()) // error: `#[stream]` method `watch` takes 3 arguments after `&mut self`, not 2
///     }
/// }
/// ```
///
/// A marker on something that is not a method:
/// ```compile_fail
/// # use shoal_sharding::{EntityContext, HandlerError, Message, handlers};
/// # #[derive(Clone, serde::Serialize, serde::Deserialize)] struct Get;
/// # impl Message for Get { const TAG: &'static str = "get"; type Reply = i64; }
/// # struct Counter { value: i64 }
/// # impl shoal_sharding::Entity for Counter {
/// #     const TYPE: &'static str = "counter";
/// #     type State = ();
/// #     async fn activate(_: &EntityContext, _: &std::sync::Arc<()>) -> Result<Self, HandlerError> {
/// #         Ok(Counter { value: 0 })
/// #     }
/// # }
/// #[handlers]
/// impl Counter {
///     #[handle] // error: `#[handle]` goes on a handler method (...), not on an associated constant
///     const LIMIT: i64 = 10;
///
///     #[handle]
///     async fn get(&mut self, _msg: Get, _ctx: &EntityContext) -> Result<i64, HandlerError> {
///         Ok(self.value)
///     }
/// }
/// ```
///
/// On a trait impl (write the method in the inherent block instead):
/// ```compile_fail
/// # use shoal_sharding::{EntityContext, Handler, HandlerError, Message, handlers};
/// # #[derive(Clone, serde::Serialize, serde::Deserialize)] struct Get;
/// # impl Message for Get { const TAG: &'static str = "get"; type Reply = i64; }
/// # struct Counter { value: i64 }
/// # impl shoal_sharding::Entity for Counter {
/// #     const TYPE: &'static str = "counter";
/// #     type State = ();
/// #     async fn activate(_: &EntityContext, _: &std::sync::Arc<()>) -> Result<Self, HandlerError> {
/// #         Ok(Counter { value: 0 })
/// #     }
/// # }
/// #[handlers] // error: `#[handlers]` goes on an inherent impl block (`impl MyEntity { ... }`)
/// impl Handler<Get> for Counter {
///     async fn handle(&mut self, _msg: Get, _ctx: &EntityContext) -> Result<i64, HandlerError> {
///         Ok(self.value)
///     }
/// }
/// ```
///
/// The same block with a correct method compiles:
/// ```
/// # use shoal_sharding::{EntityContext, EntityDefinition, HandlerError, Message, handlers};
/// # #[derive(Clone, serde::Serialize, serde::Deserialize)] struct Get;
/// # impl Message for Get { const TAG: &'static str = "get"; type Reply = i64; }
/// # struct Counter { value: i64 }
/// # impl shoal_sharding::Entity for Counter {
/// #     const TYPE: &'static str = "counter";
/// #     type State = ();
/// #     async fn activate(_: &EntityContext, _: &std::sync::Arc<()>) -> Result<Self, HandlerError> {
/// #         Ok(Counter { value: 0 })
/// #     }
/// # }
/// #[handlers]
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
#[proc_macro_attribute]
pub fn handlers(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::handlers(attr.into(), item.into()).into()
}
