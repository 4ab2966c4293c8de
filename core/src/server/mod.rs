//! The server hub: every connection of one server instance as one pure, deterministic state
//! machine (the Phase 1 plan's ConnectionManager, MessageRouter, system handlers, connection
//! state machine and graceful shutdown).
//!
//! # The contract
//!
//! The adapter owns the sockets, the clock and the verifier; the [`Hub`] owns every decision.
//!
//! - Create it with [`Hub::new`]`(config, seed, now, unix_ms)`. All randomness (ids, shutdown
//!   spread) comes from `seed`; all time from the `now` passed with each input.
//! - Feed one [`Input`] at a time with [`Hub::handle_input`]`(now, input)`. Application calls
//!   ([`Hub::send`], [`Hub::broadcast_to_conversation`], …) are inputs too.
//! - **After every input, drain [`Hub::poll_output`] until it returns `None`**, carrying out
//!   each [`Output`] in order (send, close, verify, publish, subscribe, events). Then ask
//!   [`Hub::poll_timeout`] for the next deadline and feed [`Input::Timeout`] when it passes (a
//!   late timeout is fine: deadlines compare with the `now` passed in). Asking for the deadline
//!   before draining, or feeding two inputs without draining, is the classic sans-IO bug.
//! - Sockets are named by the adapter with [`SocketId`]s it never reuses, so an event that
//!   arrives for a socket the hub already closed is a harmless no-op.
//!
//! # Decisions
//!
//! - **Sequences** are carried by application messages only (everything sent through
//!   [`Hub::send`] and handlers): per session, from 1, strictly increasing, kept in a bounded
//!   replay buffer. switchboard's own `system.*` messages are about the socket, not the
//!   conversation: they carry no sequence and are never replayed. A client therefore sees
//!   application sequences without holes, paused or resumed.
//! - **Backpressure**: the hub counts what it told the adapter to send to each socket and the
//!   adapter reports what it wrote with [`Input::Flushed`]. A socket whose unwritten frames or
//!   bytes would exceed the bounds is closed with 4013; its session stays resumable, so a client
//!   that comes back within the window loses nothing.
//! - **Closing**: a session whose socket ends with a code that tells a client to reconnect (see
//!   [`crate::protocol::ReconnectAdvice`]) waits in `Reconnecting` for the resume window; any
//!   other close ends it.
//! - **Resume**: the client's first message on its new socket (after `established`) names the
//!   old session and its last sequence. The server answers `system.connection.resumed`, then
//!   replays every kept message after that sequence, in order, on the old session's sequence.
//!   Unknown session, another user's, or a gap → `stateValid: false`, nothing replayed.
//! - **Pause**: while `Paused`, application messages are kept (in the replay buffer) and sent
//!   on `control.flow.resume`; if some were evicted meanwhile, the client hears
//!   `system.connection.resumed {stateValid: false}` rather than nothing.

mod config;
mod hub;
mod io;
mod members;
mod pubsub;
mod rate_limit;
mod replay;
mod router;
mod state;
mod timers;

pub use config::{HubConfig, RateLimit};
pub use hub::{ConnectionInfo, Hub, HubStats};
pub use io::{
    AuthFailure, Credentials, HubEvent, Input, OpenRequest, Output, Principal, SocketId, VerifyId,
};
pub use pubsub::{Channel, RemoteMessage};
pub use rate_limit::{RateLimiter, RateVerdict};
pub use replay::{Gap, ReplayBuffer};
pub use router::{
    Action, Authorization, Context, Flow, Handler, Logging, Middleware, MiddlewareContext,
    Outgoing, RateLimiting, Rejection, Route, Router, Sender, Target,
};
pub use state::{ConnectionState, IllegalTransition, StateMachine, Transition};
pub use timers::TimerKind;
