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
//!   each [`Output`] in order (send, close, verify, authorize, publish, subscribe, events). An
//!   answer the adapter has at once (a remembered token, a claim rule) is fed as the next input
//!   after the drain, never in the middle of it. Then ask
//!   [`Hub::poll_timeout`] for the next deadline and feed [`Input::Timeout`] when it passes (a
//!   late timeout is fine: deadlines compare with the `now` passed in). Asking for the deadline
//!   before draining, or feeding two inputs without draining, is the classic sans-IO bug.
//! - **Before writing to the sockets, take their frames with [`Hub::poll_transmit`]** until it
//!   returns `None`: each call names one socket and lends all it was handed since the last
//!   call, in order, after any [`Output::Send`] already given for it ([`Transmit`]: read in
//!   place, nothing made per recipient; what the adapter cannot write at once it makes its
//!   own with [`FrameRef::to_owned`]). How often is the adapter's choice: the later, the more
//!   frames one write carries (the smol driver takes them when it has no input waiting).
//!   Frames wait in the hub, inside each socket's window.
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
//! - **Joining**: credentials say who the user is, not where it may go. A socket that names a
//!   conversation is `Authenticated` until the adapter answers [`Output::Authorize`]; refused,
//!   it is closed with 4002 (forbidden), 4003 (no such conversation) or 1013 (the authorizer
//!   could not decide). The verdict also says whether the member may write into the
//!   conversation (relay, and handlers writing on its behalf). A resume that would move a
//!   socket into another conversation asks again.
//! - **Backpressure**: the hub hands each socket at most a window of frames and bytes and the
//!   adapter reports what it wrote with [`Input::Flushed`]; the rest waits in the session's
//!   replay buffer. The window is at most half the replay buffer ([`HubConfig::validate`]), and
//!   a socket whose unwritten messages pass half the replay buffer is cut off with 4013: at that
//!   moment everything it was not written is still kept, and the other half is the room for what
//!   arrives while its client comes back and resumes. Nothing is lost in between.
//! - **Limits**: the system plane has its own rate budget; invalid frames (and unknown or
//!   server-only `system.*` types) close with 4012 when `max_invalid_frames` come within
//!   `invalid_window`, valid frames in between notwithstanding; one user holds at most
//!   `max_sessions_per_user` sessions (its oldest waiting session is let go first, else the new
//!   one is refused with 4014). The application side ([`Hub::send`]) never sends `system.*` and
//!   refuses messages larger than `max_message_bytes`.
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

mod bus;
mod config;
mod hub;
mod io;
mod members;
mod rate_limit;
mod replay;
mod router;
mod state;
mod timers;

pub use bus::{
    BusCommand, BusError, BusEvent, Channel, History, LocalBus, RemoteMessage, SessionRecord, Top,
    shard_of,
};
pub use config::{BusConfig, HubConfig, InvalidConfig, RateLimit};
pub use hub::{ConnectionInfo, Frames, Hub, HubStats, Transmit};
pub use io::{
    AuthFailure, Credentials, Frame, FrameRef, HubEvent, Input, JoinGrant, JoinId, JoinRefusal,
    JoinRequest, OpenRequest, Output, Principal, RefusedSend, Sequenced, SocketId, VerifyId,
};
pub use rate_limit::{RateLimiter, RateVerdict};
pub use replay::{Gap, ReplayBuffer};
pub use router::{
    Action, Authorization, Context, Flow, Handler, Logging, Middleware, MiddlewareContext,
    Outgoing, RateLimiting, Rejection, Route, Router, Sender, Target,
};
pub use state::{ConnectionState, IllegalTransition, StateMachine, Transition};
pub use timers::TimerKind;
