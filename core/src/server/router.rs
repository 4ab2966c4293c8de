//! Routing of client messages by type, through a chain of middleware, to handlers.
//!
//! Handlers are synchronous and never touch the hub directly: they get a [`Context`] that
//! records what they want done (reply, send, broadcast, close), and the hub carries it out after
//! they return. Messages an application wants to answer asynchronously are routed to
//! [`Route::Forward`] and come out of the hub as [`super::HubEvent::Message`]; the application
//! calls back into the hub later.

use super::config::HubConfig;
use super::rate_limit::{RateLimiter, RateVerdict};
use crate::protocol::{
    CloseCode, Envelope, ErrorCategory, ErrorPayload, Id, MessageType, Payload, ProtocolError,
    Specificity, TypePattern, codes,
};
use crate::time::Instant;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt;

/// Why a message was turned down: the `system.error` the client gets, and whether the
/// connection is closed after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub error: ErrorPayload,
    pub close: Option<CloseCode>,
}

impl Rejection {
    /// A rejection with this category, code and message; the connection stays.
    pub fn new(category: ErrorCategory, code: &str, message: impl Into<String>) -> Self {
        Rejection {
            error: ErrorPayload {
                category,
                code: code.to_owned(),
                message: message.into(),
                details: None,
                is_retryable: false,
                retry_after_ms: None,
            },
            close: None,
        }
    }

    /// Closes the connection with `code` after the error.
    pub fn and_close(mut self, code: CloseCode) -> Self {
        self.close = Some(code);
        self
    }
}

impl From<ProtocolError> for Rejection {
    fn from(e: ProtocolError) -> Self {
        Rejection { error: e.to_error_payload(), close: e.close_code() }
    }
}

/// Who sent a message, as handlers and middleware see it.
#[derive(Debug, Clone)]
pub struct Sender<'a> {
    pub connection_id: &'a Id,
    /// `None` before the connection authenticated.
    pub user_id: Option<&'a str>,
    pub roles: &'a [String],
    pub conversation_id: Option<&'a Id>,
    /// Whether the join verdict lets the sender write into its conversation (relay, and
    /// handlers that write on its behalf).
    pub can_write: bool,
}

/// A message a handler wants sent; the hub gives it an id, a timestamp and a sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub message_type: MessageType,
    pub payload: Payload,
    pub conversation_id: Option<Id>,
    pub correlation_id: Option<Id>,
    /// The user on whose behalf it is sent (the envelope's `senderId`), if any.
    pub sender_id: Option<Id>,
}

impl Outgoing {
    /// A message of `message_type` with `payload`, in no conversation, answering nothing.
    pub fn new(message_type: MessageType, payload: Payload) -> Self {
        Outgoing {
            message_type,
            payload,
            conversation_id: None,
            correlation_id: None,
            sender_id: None,
        }
    }

    /// In `conversation_id`.
    pub fn in_conversation(mut self, conversation_id: Id) -> Self {
        self.conversation_id = Some(conversation_id);
        self
    }

    /// The answer to message `request_id`.
    pub fn replying_to(mut self, request_id: Id) -> Self {
        self.correlation_id = Some(request_id);
        self
    }
}

/// Where an [`Outgoing`] message goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// One session, by connection id.
    Connection(Id),
    /// Every session of a user, on every instance.
    User(String),
    /// Every session in a conversation, on every instance, except possibly one.
    Conversation { conversation_id: Id, except: Option<Id> },
    /// Every session everywhere.
    All,
}

/// What a handler asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Send(Target, Outgoing),
    Close { connection_id: Id, code: CloseCode, reason: &'static str },
}

/// What handlers get: who sent the message, the attributes middleware added, and the means to
/// send, broadcast and close.
pub struct Context<'a> {
    pub sender: Sender<'a>,
    /// What middleware learned about the message (for example a tenant, a trace id).
    pub attributes: &'a BTreeMap<String, String>,
    pub now: Instant,
    request_id: &'a Id,
    actions: &'a mut Vec<Action>,
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context").field("sender", &self.sender).finish_non_exhaustive()
    }
}

impl Context<'_> {
    /// Answers the sender; the reply's `correlationId` is the request's id.
    pub fn reply(&mut self, message_type: MessageType, payload: Payload) {
        let outgoing = Outgoing {
            conversation_id: self.sender.conversation_id.cloned(),
            correlation_id: Some(self.request_id.clone()),
            ..Outgoing::new(message_type, payload)
        };
        self.actions
            .push(Action::Send(Target::Connection(self.sender.connection_id.clone()), outgoing));
    }

    /// Sends a message to `target`.
    pub fn send(&mut self, target: Target, outgoing: Outgoing) {
        self.actions.push(Action::Send(target, outgoing));
    }

    /// Sends to every member of the sender's conversation, optionally not to the sender
    /// itself, on the sender's behalf: the envelope's `senderId` is the sender's user and its
    /// `correlationId` the message being handled. Refused (`FORBIDDEN`) when the join verdict
    /// did not let the sender write into the conversation, and (`NO_CONVERSATION`) when it has
    /// none.
    pub fn broadcast_to_conversation(
        &mut self,
        message_type: MessageType,
        payload: Payload,
        include_sender: bool,
    ) -> Result<(), Rejection> {
        let Some(conversation_id) = self.sender.conversation_id.cloned() else {
            return Err(Rejection::new(
                ErrorCategory::Validation,
                codes::NO_CONVERSATION,
                "this connection has no conversation to write into",
            ));
        };
        if !self.sender.can_write {
            return Err(Rejection::new(
                ErrorCategory::Authentication,
                codes::FORBIDDEN,
                "not allowed to write into this conversation",
            ));
        }
        let except = (!include_sender).then(|| self.sender.connection_id.clone());
        let outgoing = Outgoing {
            conversation_id: Some(conversation_id.clone()),
            correlation_id: Some(self.request_id.clone()),
            sender_id: self.sender.user_id.and_then(|u| Id::new(u).ok()),
            ..Outgoing::new(message_type, payload)
        };
        self.actions.push(Action::Send(Target::Conversation { conversation_id, except }, outgoing));
        Ok(())
    }

    /// Closes the sender's connection after the handler returns.
    pub fn close(&mut self, code: CloseCode, reason: &'static str) {
        let connection_id = self.sender.connection_id.clone();
        self.actions.push(Action::Close { connection_id, code, reason });
    }
}

/// A handler: gets the message, may act through the context, may reject.
pub type Handler = Box<dyn FnMut(&mut Context<'_>, &Envelope) -> Result<(), Rejection>>;

/// What happens to a message whose type matches.
pub enum Route {
    /// Handled here, synchronously.
    Handler(Handler),
    /// Handed to the application as an event.
    Forward,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Handler(_) => f.write_str("Handler"),
            Route::Forward => f.write_str("Forward"),
        }
    }
}

/// What middleware sees and may change.
#[derive(Debug)]
pub struct MiddlewareContext<'a> {
    pub sender: Sender<'a>,
    pub attributes: &'a mut BTreeMap<String, String>,
    pub now: Instant,
    pub config: &'a HubConfig,
    /// The connection's buckets, kept by the hub for the built-in rate limiter.
    pub rate_limiter: &'a mut RateLimiter,
}

/// A middleware's decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Flow {
    /// Go on to the next middleware, then the handler.
    Continue,
    /// Stop here: the client gets the rejection.
    Abort(Rejection),
}

/// One link of the chain. Middleware runs in the order added, before the handler.
pub trait Middleware {
    /// Looks at (and may annotate) a message before its handler.
    fn handle(&mut self, cx: &mut MiddlewareContext<'_>, envelope: &Envelope) -> Flow;
}

/// Logs each routed message's type and connection through `tracing`, never its payload (auth
/// messages carry tokens).
#[derive(Debug, Default)]
pub struct Logging;

impl Middleware for Logging {
    fn handle(&mut self, cx: &mut MiddlewareContext<'_>, envelope: &Envelope) -> Flow {
        tracing::debug!(
            target: "switchboard::router",
            connection = %cx.sender.connection_id,
            message_type = %envelope.message_type,
            id = %envelope.id,
            "routing"
        );
        Flow::Continue
    }
}

/// System messages pass; everything else needs an authenticated connection.
#[derive(Debug, Default)]
pub struct Authorization;

impl Middleware for Authorization {
    fn handle(&mut self, cx: &mut MiddlewareContext<'_>, envelope: &Envelope) -> Flow {
        if envelope.message_type.is_system() || cx.sender.user_id.is_some() {
            Flow::Continue
        } else {
            Flow::Abort(Rejection::new(
                ErrorCategory::Authentication,
                codes::AUTH_REQUIRED,
                "authenticate before sending application messages",
            ))
        }
    }
}

/// Token buckets per connection and per type over non-system messages: `RATE_LIMITED` with
/// `retryAfterMs`, and close 4006 on sustained abuse.
#[derive(Debug, Default)]
pub struct RateLimiting;

impl Middleware for RateLimiting {
    fn handle(&mut self, cx: &mut MiddlewareContext<'_>, envelope: &Envelope) -> Flow {
        if envelope.message_type.is_system() {
            return Flow::Continue;
        }
        let verdict = cx.rate_limiter.check(cx.config, envelope.message_type.as_str(), cx.now);
        match rate_rejection(verdict, envelope.message_type.as_str()) {
            None => Flow::Continue,
            Some(rejection) => Flow::Abort(rejection),
        }
    }
}

/// The rejection for a rate limiter's verdict on a message of `what` (none: allowed).
pub(crate) fn rate_rejection(verdict: RateVerdict, what: &str) -> Option<Rejection> {
    match verdict {
        RateVerdict::Allow => None,
        RateVerdict::Limited { retry_after } => {
            let mut rejection = Rejection::new(
                ErrorCategory::RateLimit,
                codes::RATE_LIMITED,
                format!("too many {what} messages"),
            );
            rejection.error.is_retryable = true;
            rejection.error.retry_after_ms = Some(retry_after.as_millis() as u64);
            Some(rejection)
        }
        RateVerdict::Abusive => Some(
            Rejection::new(
                ErrorCategory::RateLimit,
                codes::RATE_LIMITED,
                "rate limits exceeded repeatedly",
            )
            .and_close(CloseCode::RATE_LIMITED),
        ),
    }
}

/// The routes, the fallback and the middleware chain.
pub struct Router {
    exact: BTreeMap<String, Route>,
    /// Most specific first.
    patterns: Vec<(TypePattern, Route)>,
    fallback: Option<Route>,
    middleware: Vec<Box<dyn Middleware>>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("patterns", &self.patterns.iter().map(|(p, _)| p).collect::<Vec<_>>())
            .field("fallback", &self.fallback.is_some())
            .field("middleware", &self.middleware.len())
            .finish()
    }
}

impl Default for Router {
    /// The built-in chain (logging, authorization, rate limiting) and no routes.
    fn default() -> Self {
        Router {
            exact: BTreeMap::new(),
            patterns: Vec::new(),
            fallback: None,
            middleware: vec![Box::new(Logging), Box::new(Authorization), Box::new(RateLimiting)],
        }
    }
}

/// The outcome of routing one message.
#[derive(Debug)]
pub(crate) enum Routed {
    /// A handler ran (its actions are in the list passed in).
    Handled,
    /// The application should get the message.
    Forward,
    /// Turned down by middleware, the handler, or for want of a route.
    Rejected(Rejection),
}

impl Router {
    /// A router with no middleware at all (not even the built-ins) and no routes.
    pub fn empty() -> Self {
        Router {
            exact: BTreeMap::new(),
            patterns: Vec::new(),
            fallback: None,
            middleware: Vec::new(),
        }
    }

    /// Routes messages matching `pattern` (an exact type, `prefix.*` or `*`) to `route`,
    /// replacing an earlier route for the same pattern.
    pub fn route(&mut self, pattern: TypePattern, route: Route) -> &mut Self {
        if pattern.specificity() == Specificity::Exact {
            self.exact.insert(pattern.as_str().to_owned(), route);
        } else {
            self.patterns.retain(|(p, _)| *p != pattern);
            self.patterns.push((pattern, route));
            self.patterns.sort_by_key(|(p, _)| std::cmp::Reverse(p.specificity()));
        }
        self
    }

    /// Registers `handler` for `pattern`.
    pub fn on(
        &mut self,
        pattern: TypePattern,
        handler: impl FnMut(&mut Context<'_>, &Envelope) -> Result<(), Rejection> + 'static,
    ) -> &mut Self {
        self.route(pattern, Route::Handler(Box::new(handler)))
    }

    /// Registers a handler that gets the payload parsed as `T`; a payload that does not parse
    /// is answered with `INVALID_PAYLOAD` and serde's explanation, and the handler is not called.
    pub fn on_typed<T: DeserializeOwned + 'static>(
        &mut self,
        pattern: TypePattern,
        mut handler: impl FnMut(&mut Context<'_>, &Envelope, T) -> Result<(), Rejection> + 'static,
    ) -> &mut Self {
        self.on(pattern, move |cx, envelope| {
            let payload = envelope.payload.parse::<T>().map_err(|e| {
                Rejection::from(ProtocolError::InvalidPayload {
                    message_type: envelope.message_type.to_string(),
                    detail: e.to_string(),
                })
            })?;
            handler(cx, envelope, payload)
        })
    }

    /// Registers several routes at once.
    pub fn routes(&mut self, routes: impl IntoIterator<Item = (TypePattern, Route)>) -> &mut Self {
        for (pattern, route) in routes {
            self.route(pattern, route);
        }
        self
    }

    /// Hands messages matching `pattern` to the application as events.
    pub fn forward(&mut self, pattern: TypePattern) -> &mut Self {
        self.route(pattern, Route::Forward)
    }

    /// What happens to messages no route matches (default: `UNKNOWN_MESSAGE_TYPE`).
    pub fn fallback(&mut self, route: Route) -> &mut Self {
        self.fallback = Some(route);
        self
    }

    /// Appends a middleware to the chain.
    pub fn with_middleware(&mut self, middleware: impl Middleware + 'static) -> &mut Self {
        self.middleware.push(Box::new(middleware));
        self
    }

    /// Whether a route (or the fallback) would take `message_type`.
    pub fn knows(&self, message_type: &str) -> bool {
        self.fallback.is_some()
            || self.exact.contains_key(message_type)
            || self.patterns.iter().any(|(p, _)| p.matches(message_type))
    }

    /// Runs the middleware chain only (system messages, which the hub handles itself).
    pub(crate) fn run_middleware(
        &mut self,
        cx: &mut MiddlewareContext<'_>,
        envelope: &Envelope,
    ) -> Result<(), Rejection> {
        for middleware in &mut self.middleware {
            if let Flow::Abort(rejection) = middleware.handle(cx, envelope) {
                return Err(rejection);
            }
        }
        Ok(())
    }

    /// Routes an application message: middleware, then the most specific route.
    pub(crate) fn dispatch(
        &mut self,
        mut cx: MiddlewareContext<'_>,
        envelope: &Envelope,
        actions: &mut Vec<Action>,
    ) -> Routed {
        if let Err(rejection) = self.run_middleware(&mut cx, envelope) {
            return Routed::Rejected(rejection);
        }
        let ty = envelope.message_type.as_str();
        let route = match self.exact.get_mut(ty) {
            Some(route) => Some(route),
            None => self
                .patterns
                .iter_mut()
                .find(|(p, _)| p.matches(ty))
                .map(|(_, r)| r)
                .or(self.fallback.as_mut()),
        };
        match route {
            None => Routed::Rejected(ProtocolError::UnknownMessageType(ty.to_owned()).into()),
            Some(Route::Forward) => Routed::Forward,
            Some(Route::Handler(handler)) => {
                let mut context = Context {
                    sender: cx.sender,
                    attributes: cx.attributes,
                    now: cx.now,
                    request_id: &envelope.id,
                    actions,
                };
                match handler(&mut context, envelope) {
                    Ok(()) => Routed::Handled,
                    Err(rejection) => Routed::Rejected(rejection),
                }
            }
        }
    }
}
