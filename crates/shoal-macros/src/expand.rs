//! The expansion of `#[handlers]`: checks the marked methods, strips their markers and generates
//! the `Handler`/`StreamHandler` impls and the `Handlers` impl that registers them all.

use std::collections::HashMap;

use proc_macro2::{Ident, Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    Attribute, Error, FnArg, GenericParam, ImplItem, ImplItemFn, ItemImpl, Meta, PatType,
    ReceiverKind, ReturnType, Safety, Type,
};

/// What a marked method handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `#[handle]`: one reply.
    Unary,
    /// `#[stream]`: a stream of replies.
    Stream,
}

impl Kind {
    fn marker(self) -> &'static str {
        match self {
            Kind::Unary => "#[handle]",
            Kind::Stream => "#[stream]",
        }
    }

    /// The arguments after `&mut self`.
    fn arguments(self) -> usize {
        match self {
            Kind::Unary => 2,
            Kind::Stream => 3,
        }
    }

    /// The signature a marked method must have.
    fn shape(self) -> &'static str {
        match self {
            Kind::Unary => {
                "`async fn name(&mut self, msg: M, ctx: &EntityContext) \
                 -> Result<M::Reply, HandlerError>`"
            }
            Kind::Stream => {
                "`async fn name(&mut self, msg: M, ctx: &EntityContext, \
                 out: &mut ChunkSink<M::Reply>) -> Result<(), HandlerError>`"
            }
        }
    }
}

/// The errors found so far, reported together.
#[derive(Default)]
struct Errors {
    combined: Option<Error>,
    count: usize,
}

impl Errors {
    fn push(&mut self, error: Error) {
        self.count += 1;
        match &mut self.combined {
            Some(errors) => errors.combine(error),
            None => self.combined = Some(error),
        }
    }

    fn to_compile_errors(&self) -> TokenStream {
        self.combined
            .as_ref()
            .map(Error::to_compile_error)
            .unwrap_or_default()
    }
}

/// A checked handler method.
struct Declared<'a> {
    kind: Kind,
    method: &'a Ident,
    message: &'a Type,
    /// The method's `#[cfg]` attributes: its impl and its registration exist when it does.
    cfgs: Vec<&'a Attribute>,
    /// Where the user wrote `self`, and each argument: the generated call points there.
    receiver: Span,
    arguments: Vec<Span>,
    output: Span,
}

/// Expands `#[handlers]` with arguments `attr` on `item`.
pub(crate) fn handlers(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    if !attr.is_empty() {
        errors.push(Error::new_spanned(
            &attr,
            "`#[handlers]` takes no arguments",
        ));
    }
    let mut block: ItemImpl = match syn::parse2(item.clone()) {
        Ok(block) => block,
        Err(_) => {
            errors.push(Error::new(
                Span::call_site(),
                "`#[handlers]` goes on the inherent impl block of an entity type: \
                 `#[handlers] impl MyEntity { ... }`",
            ));
            let errors = errors.to_compile_errors();
            return quote!(#item #errors);
        }
    };
    if let Some((path, for_token)) = &block.trait_ {
        errors.push(Error::new_spanned(
            quote!(#path #for_token),
            "`#[handlers]` goes on an inherent impl block (`impl MyEntity { ... }`), not on a \
             trait impl: it generates the `Handler` impls itself",
        ));
    }

    // Take the markers off first (the block is emitted without them), then check the methods.
    let marked: Vec<Option<Kind>> = block
        .items
        .iter_mut()
        .map(|item| take_marker(item, &mut errors))
        .collect();
    let mut declared = Vec::new();
    let mut messages: HashMap<String, &Ident> = HashMap::new();
    for (item, kind) in block.items.iter().zip(marked) {
        let (ImplItem::Fn(method), Some(kind)) = (item, kind) else {
            continue;
        };
        let Some(handler) = check(kind, method, &mut errors) else {
            continue;
        };
        let key = handler.message.to_token_stream().to_string();
        if let Some(first) = messages.get(&key) {
            errors.push(Error::new_spanned(
                handler.message,
                format!(
                    "message type `{key}` already has a handler in this block (`{first}`): a \
                     message type has one handler"
                ),
            ));
            continue;
        }
        messages.insert(key, handler.method);
        declared.push(handler);
    }
    if declared.is_empty() && errors.count == 0 {
        errors.push(Error::new(
            Span::call_site(),
            "`#[handlers]` found no handler in this impl block: mark each message handler \
             method with `#[handle]` (one reply) or `#[stream]` (a stream of replies)",
        ));
    }

    let generated = if block.trait_.is_some() {
        TokenStream::new()
    } else {
        generate(&block, &declared)
    };
    let errors = errors.to_compile_errors();
    quote! {
        #block
        #generated
        #errors
    }
}

/// Removes the `#[handle]`/`#[stream]` markers of `item` and says which one it had. A marker on
/// anything but a method is an error.
fn take_marker(item: &mut ImplItem, errors: &mut Errors) -> Option<Kind> {
    let (attrs, what) = match item {
        ImplItem::Fn(method) => (&mut method.attrs, None),
        ImplItem::Const(constant) => (&mut constant.attrs, Some("an associated constant")),
        ImplItem::Type(ty) => (&mut ty.attrs, Some("an associated type")),
        ImplItem::Macro(mac) => (&mut mac.attrs, Some("a macro invocation")),
        _ => return None,
    };
    let mut found: Option<Kind> = None;
    attrs.retain(|attr| {
        let kind = if attr.path().is_ident("handle") {
            Kind::Unary
        } else if attr.path().is_ident("stream") {
            Kind::Stream
        } else {
            return true;
        };
        if let Some(what) = what {
            errors.push(Error::new_spanned(
                attr,
                format!(
                    "`{}` goes on a handler method ({}), not on {what}",
                    kind.marker(),
                    kind.shape()
                ),
            ));
            return false;
        }
        if !matches!(attr.meta, Meta::Path(_)) {
            errors.push(Error::new_spanned(
                &attr.meta,
                format!("`{}` takes no arguments", kind.marker()),
            ));
        }
        match found {
            Some(first) => errors.push(Error::new_spanned(
                attr,
                format!(
                    "this method is already marked `{}`: a handler is marked once, with \
                     `#[handle]` (one reply) or `#[stream]` (a stream of replies)",
                    first.marker()
                ),
            )),
            None => found = Some(kind),
        }
        false
    });
    found
}

/// Checks that `method`, marked `kind`, has a handler's signature.
fn check<'a>(kind: Kind, method: &'a ImplItemFn, errors: &mut Errors) -> Option<Declared<'a>> {
    let sig = &method.sig;
    let name = &sig.ident;
    let marker = kind.marker();
    let shape = kind.shape();
    let before = errors.count;
    let mut fail = |tokens: &dyn ToTokens, problem: String| {
        errors.push(Error::new_spanned(
            tokens.to_token_stream(),
            format!("`{marker}` method `{name}` {problem}; a handler is {shape}"),
        ));
    };

    if let Some(constness) = &sig.constness {
        fail(constness, "cannot be `const`".to_owned());
    }
    if sig.asyncness.is_none() {
        let fn_token = &sig.fn_token;
        fail(&quote!(#fn_token #name), "must be an `async fn`".to_owned());
    }
    if let Safety::Unsafe(unsafety) = &sig.safety {
        fail(unsafety, "cannot be `unsafe`".to_owned());
    }
    if let Some(abi) = &sig.abi {
        fail(abi, "cannot have an ABI".to_owned());
    }
    let own_generics = sig
        .generics
        .params
        .iter()
        .any(|param| !matches!(param, GenericParam::Lifetime(_)));
    if own_generics {
        fail(
            &sig.generics,
            "cannot have type or const parameters (its message type must be concrete)".to_owned(),
        );
    }
    if let Some(variadic) = &sig.variadic {
        fail(variadic, "cannot be variadic".to_owned());
    }

    // The parentheses of the arguments, for what is missing there.
    let parens = quote_spanned!(sig.paren_token.span.join()=> ());
    let receiver = match sig.inputs.first() {
        Some(FnArg::Receiver(receiver)) => {
            let exclusive = match &receiver.kind {
                ReceiverKind::Reference(_, _, mutability) => mutability.is_some(),
                ReceiverKind::Typed(_, ty) => is_mut_self(ty),
                _ => false,
            };
            if !exclusive {
                fail(
                    receiver,
                    "must take `&mut self` (an instance handles one message at a time, with \
                     its state to itself)"
                        .to_owned(),
                );
            }
            Some(receiver.self_token.span)
        }
        Some(FnArg::Typed(first)) => {
            fail(
                first,
                "must take `&mut self` first: handlers are methods of the entity".to_owned(),
            );
            None
        }
        None => {
            fail(
                &parens,
                "must take `&mut self` first: handlers are methods of the entity".to_owned(),
            );
            None
        }
    };

    let arguments: Vec<&PatType> = sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(typed) => Some(typed),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let mut message = None;
    if receiver.is_some() {
        let expected = kind.arguments();
        let found = arguments.len();
        if found > expected {
            let extra = &arguments[expected..];
            fail(
                &quote!(#(#extra),*),
                format!("takes {expected} arguments after `&mut self`, not {found}"),
            );
        } else if found < expected {
            fail(
                &parens,
                format!("takes {expected} arguments after `&mut self`, not {found}"),
            );
        } else if let Some(first) = arguments.first() {
            match &*first.ty {
                Type::Reference(_) => fail(
                    &first.ty,
                    "takes its message by value (`msg: M`, not a reference)".to_owned(),
                ),
                Type::ImplTrait(_) | Type::Infer(_) => fail(
                    &first.ty,
                    "must name its message type (`msg: M`)".to_owned(),
                ),
                ty => message = Some(ty),
            }
        }
    }
    let output = match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => {
            let returns = match kind {
                Kind::Unary => "`Result<M::Reply, HandlerError>`",
                Kind::Stream => "`Result<(), HandlerError>`",
            };
            fail(
                &quote!(#name),
                format!("must return {returns} (it returns nothing)"),
            );
            Span::call_site()
        }
    };

    if errors.count != before {
        return None;
    }
    Some(Declared {
        kind,
        method: name,
        message: message?,
        cfgs: method
            .attrs
            .iter()
            .filter(|attr| attr.path().is_ident("cfg"))
            .collect(),
        receiver: receiver?,
        arguments: arguments.iter().map(|arg| arg.span()).collect(),
        output,
    })
}

/// Whether `ty` is `&mut Self` (as in `self: &mut Self`).
fn is_mut_self(ty: &Type) -> bool {
    match ty {
        Type::Reference(reference) => {
            reference.mutability.is_some()
                && matches!(&*reference.elem, Type::Path(path)
                    if path.qself.is_none() && path.path.is_ident("Self"))
        }
        _ => false,
    }
}

/// The `Handler`/`StreamHandler` impl of each declared method, and the `Handlers` impl that
/// registers them all.
fn generate(block: &ItemImpl, declared: &[Declared<'_>]) -> TokenStream {
    let (impl_generics, _, where_clause) = block.generics.split_for_impl();
    let self_ty = &block.self_ty;
    let mut impls = TokenStream::new();
    let mut registrations = TokenStream::new();
    for handler in declared {
        let Declared {
            kind,
            method,
            message,
            cfgs,
            receiver,
            arguments,
            output,
        } = handler;
        let this = quote_spanned!(*receiver=> self);
        // The parameters are named where the user wrote them, so that a wrong type of context
        // or sink is reported on the user's argument.
        let names: Vec<Ident> = ["msg", "ctx", "out"]
            .iter()
            .zip(arguments)
            .map(|(name, span)| Ident::new(name, *span))
            .collect();
        let call = quote_spanned!(method.span()=> Self::#method(#this, #(#names),*));
        let reply = quote!(<#message as ::shoal_sharding::Message>::Reply);
        let (msg, ctx) = (&names[0], &names[1]);
        let context = quote!(&::shoal_sharding::EntityContext);
        match kind {
            Kind::Unary => {
                let returns = quote_spanned! {*output=>
                    impl ::core::future::Future<
                        Output = ::core::result::Result<#reply, ::shoal_sharding::HandlerError>,
                    > + ::core::marker::Send
                };
                impls.extend(quote! {
                    #(#cfgs)*
                    #[automatically_derived]
                    impl #impl_generics ::shoal_sharding::Handler<#message> for #self_ty
                    #where_clause
                    {
                        fn handle(&mut #this, #msg: #message, #ctx: #context) -> #returns {
                            #call
                        }
                    }
                });
                registrations.extend(quote! {
                    #(#cfgs)*
                    let definition = definition.handle::<#message>();
                });
            }
            Kind::Stream => {
                let out = &names[2];
                let returns = quote_spanned! {*output=>
                    impl ::core::future::Future<
                        Output = ::core::result::Result<(), ::shoal_sharding::HandlerError>,
                    > + ::core::marker::Send
                };
                impls.extend(quote! {
                    #(#cfgs)*
                    #[automatically_derived]
                    impl #impl_generics ::shoal_sharding::StreamHandler<#message> for #self_ty
                    #where_clause
                    {
                        fn handle_stream(
                            &mut #this,
                            #msg: #message,
                            #ctx: #context,
                            #out: &mut ::shoal_sharding::ChunkSink<#reply>,
                        ) -> #returns {
                            #call
                        }
                    }
                });
                registrations.extend(quote! {
                    #(#cfgs)*
                    let definition = definition.stream::<#message>();
                });
            }
        }
    }
    quote! {
        #impls

        #[automatically_derived]
        impl #impl_generics ::shoal_sharding::Handlers for #self_ty #where_clause {
            fn register_handlers(
                definition: ::shoal_sharding::EntityDefinition<Self>,
            ) -> ::shoal_sharding::EntityDefinition<Self> {
                #registrations
                definition
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// The error messages of expanding `item`, in order.
    fn errors(item: TokenStream) -> Vec<String> {
        errors_with(TokenStream::new(), item)
    }

    fn errors_with(attr: TokenStream, item: TokenStream) -> Vec<String> {
        let output = handlers(attr, item);
        let file: syn::File = syn::parse2(output).expect("the expansion parses");
        file.items
            .iter()
            .filter_map(|item| match item {
                syn::Item::Macro(mac)
                    if mac
                        .mac
                        .path
                        .segments
                        .last()
                        .is_some_and(|s| s.ident == "compile_error") =>
                {
                    let text: syn::LitStr = mac.mac.parse_body().expect("a message");
                    Some(text.value())
                }
                _ => None,
            })
            .collect()
    }

    /// The traits implemented by the expansion of `item`, as `Trait<Message>`.
    fn implemented(item: TokenStream) -> Vec<String> {
        let file: syn::File = syn::parse2(handlers(TokenStream::new(), item)).unwrap();
        file.items
            .iter()
            .filter_map(|item| match item {
                syn::Item::Impl(block) => block.trait_.as_ref().map(|(path, _)| {
                    let last = path.segments.last().unwrap();
                    last.to_token_stream().to_string().replace(' ', "")
                }),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn declared_methods_become_handlers_and_the_rest_stays() {
        let item = quote! {
            impl Counter {
                #[handle]
                async fn increment(&mut self, msg: Increment, ctx: &EntityContext)
                    -> Result<i64, HandlerError> { todo!() }
                #[stream]
                async fn watch(&mut self, msg: Watch, _: &EntityContext, out: &mut ChunkSink<i64>)
                    -> Result<(), HandlerError> { todo!() }
                #[handle]
                async fn get(self: &mut Self, _msg: crate::Get, _ctx: &EntityContext)
                    -> Result<i64, HandlerError> { todo!() }
                fn helper(&self) {}
            }
        };
        assert_eq!(errors(item.clone()), Vec::<String>::new());
        assert_eq!(
            implemented(item.clone()),
            [
                "Handler<Increment>",
                "StreamHandler<Watch>",
                "Handler<crate::Get>",
                "Handlers"
            ]
        );
        // The block keeps its methods, without their markers.
        let file: syn::File = syn::parse2(handlers(TokenStream::new(), item)).unwrap();
        let syn::Item::Impl(block) = &file.items[0] else {
            panic!("the block comes first");
        };
        assert!(block.trait_.is_none());
        assert_eq!(block.items.len(), 4);
        for item in &block.items {
            let ImplItem::Fn(method) = item else {
                panic!("only methods")
            };
            assert!(method.attrs.is_empty(), "{}", method.sig.ident);
        }
    }

    #[test]
    fn a_handler_must_be_async() {
        let found = errors(quote! {
            impl Counter {
                #[handle]
                fn get(&mut self, msg: Get, ctx: &EntityContext) -> Result<i64, HandlerError> {
                    todo!()
                }
            }
        });
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("`#[handle]` method `get` must be an `async fn`; a handler is"),
            "{found:?}"
        );
    }

    #[test]
    fn a_handler_takes_mut_self() {
        for receiver in [
            quote!(&self),
            quote!(self),
            quote!(mut self),
            quote!(self: Box<Self>),
        ] {
            let found = errors(quote! {
                impl Counter {
                    #[handle]
                    async fn get(#receiver, msg: Get, ctx: &EntityContext)
                        -> Result<i64, HandlerError> { todo!() }
                }
            });
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(
                found[0].starts_with("`#[handle]` method `get` must take `&mut self`"),
                "{found:?}"
            );
        }
        let found = errors(quote! {
            impl Counter {
                #[stream]
                async fn watch(msg: Watch, ctx: &EntityContext, out: &mut ChunkSink<i64>)
                    -> Result<(), HandlerError> { todo!() }
            }
        });
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("`#[stream]` method `watch` must take `&mut self` first"),
            "{found:?}"
        );
    }

    #[test]
    fn a_handler_takes_a_message_and_the_context() {
        let found = errors(quote! {
            impl Counter {
                #[handle]
                async fn get(&mut self, msg: Get) -> Result<i64, HandlerError> { todo!() }
                #[handle]
                async fn set(&mut self, msg: Set, ctx: &EntityContext, extra: u8)
                    -> Result<i64, HandlerError> { todo!() }
                #[stream]
                async fn watch(&mut self, msg: Watch, ctx: &EntityContext)
                    -> Result<(), HandlerError> { todo!() }
                #[handle]
                async fn by_ref(&mut self, msg: &Get, ctx: &EntityContext)
                    -> Result<i64, HandlerError> { todo!() }
                #[handle]
                async fn nothing(&mut self, msg: Nothing, ctx: &EntityContext) { }
            }
        });
        assert_eq!(found.len(), 5, "{found:?}");
        assert!(
            found[0]
                .starts_with("`#[handle]` method `get` takes 2 arguments after `&mut self`, not 1")
        );
        assert!(
            found[1]
                .starts_with("`#[handle]` method `set` takes 2 arguments after `&mut self`, not 3")
        );
        assert!(
            found[2].starts_with(
                "`#[stream]` method `watch` takes 3 arguments after `&mut self`, not 2"
            )
        );
        assert!(found[3].starts_with("`#[handle]` method `by_ref` takes its message by value"));
        assert!(found[4].starts_with(
            "`#[handle]` method `nothing` must return `Result<M::Reply, HandlerError>`"
        ));
    }

    #[test]
    fn markers_go_on_methods_only() {
        let found = errors(quote! {
            impl Counter {
                #[handle]
                const LIMIT: u32 = 3;
                #[stream]
                type Item = i64;
                #[handle]
                async fn get(&mut self, msg: Get, ctx: &EntityContext)
                    -> Result<i64, HandlerError> { todo!() }
            }
        });
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("`#[handle]` goes on a handler method"));
        assert!(found[0].ends_with("not on an associated constant"));
        assert!(found[1].ends_with("not on an associated type"));
    }

    #[test]
    fn a_method_is_marked_once_and_a_message_has_one_handler() {
        let found = errors(quote! {
            impl Counter {
                #[handle]
                #[stream]
                async fn get(&mut self, msg: Get, ctx: &EntityContext)
                    -> Result<i64, HandlerError> { todo!() }
                #[handle(persisted)]
                async fn set(&mut self, msg: Set, ctx: &EntityContext)
                    -> Result<i64, HandlerError> { todo!() }
                #[handle]
                async fn set_again(&mut self, msg: Set, ctx: &EntityContext)
                    -> Result<i64, HandlerError> { todo!() }
            }
        });
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("this method is already marked `#[handle]`"));
        assert_eq!(found[1], "`#[handle]` takes no arguments");
        assert!(
            found[2].starts_with("message type `Set` already has a handler in this block (`set`)")
        );
    }

    #[test]
    fn the_attribute_goes_on_an_inherent_impl_with_handlers() {
        let found = errors(quote! {
            impl Handler<Get> for Counter {
                #[handle]
                async fn get(&mut self, msg: Get, ctx: &EntityContext)
                    -> Result<i64, HandlerError> { todo!() }
            }
        });
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("`#[handlers]` goes on an inherent impl block"));

        let found = errors(quote!(
            struct Counter;
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("`#[handlers]` goes on the inherent impl block"));

        let found = errors(quote! {
            impl Counter {
                async fn get(&mut self, msg: Get, ctx: &EntityContext)
                    -> Result<i64, HandlerError> { todo!() }
            }
        });
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("`#[handlers]` found no handler in this impl block"));

        let found = errors_with(
            quote!(persisted),
            quote! {
                impl Counter {
                    #[handle]
                    async fn get(&mut self, msg: Get, ctx: &EntityContext)
                        -> Result<i64, HandlerError> { todo!() }
                }
            },
        );
        assert_eq!(found, ["`#[handlers]` takes no arguments"]);
    }

    #[test]
    fn generics_and_cfg_carry_over() {
        let item = quote! {
            impl<T: Send + 'static> Cell<T> where T: Clone {
                #[handle]
                async fn get(&mut self, msg: Get, ctx: &EntityContext)
                    -> Result<i64, HandlerError> { todo!() }
                #[cfg(feature = "extra")]
                #[handle]
                async fn extra(&mut self, msg: Extra, ctx: &EntityContext)
                    -> Result<i64, HandlerError> { todo!() }
            }
        };
        assert_eq!(errors(item.clone()), Vec::<String>::new());
        let file: syn::File = syn::parse2(handlers(TokenStream::new(), item)).unwrap();
        let impls: Vec<&ItemImpl> = file
            .items
            .iter()
            .filter_map(|item| match item {
                syn::Item::Impl(block) if block.trait_.is_some() => Some(block),
                _ => None,
            })
            .collect();
        assert_eq!(impls.len(), 3);
        for block in &impls {
            assert_eq!(block.generics.params.len(), 1);
            assert!(block.generics.where_clause.is_some());
        }
        assert!(impls[0].attrs.iter().all(|a| !a.path().is_ident("cfg")));
        assert!(impls[1].attrs.iter().any(|a| a.path().is_ident("cfg")));
        let register = impls[2].to_token_stream().to_string();
        assert!(
            register.contains("# [cfg (feature = \"extra\")] let definition"),
            "{register}"
        );
    }

    #[test]
    fn a_handler_cannot_be_generic() {
        let found = errors(quote! {
            impl Counter {
                #[handle]
                async fn get<M: Message>(&mut self, msg: M, ctx: &EntityContext)
                    -> Result<i64, HandlerError> { todo!() }
                #[handle]
                async fn lifetimes<'a>(&mut self, msg: Get, ctx: &'a EntityContext)
                    -> Result<i64, HandlerError> { todo!() }
            }
        });
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("`#[handle]` method `get` cannot have type or const parameters")
        );
    }
}
