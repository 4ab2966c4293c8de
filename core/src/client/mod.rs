//! The client: the logic of the Phase 1 plan's browser client (WebSocketClient,
//! ReconnectionManager, client state machine, MessageBus, createMessage, client system
//! handlers) as one pure state machine, so the browser adapter and the native client are thin.
//!
//! # The contract
//!
//! Like the hub: [`Client::new`]`(config, seed, now, unix_ms)`; feed one [`ClientInput`] with
//! the current time to [`Client::handle_input`]; **drain [`Client::poll_output`] until `None`
//! after every input**, carrying out each [`ClientOutput`] in order; then sleep until
//! [`Client::poll_timeout`] and feed [`ClientInput::Timeout`]. Every socket is named by an
//! [`AttemptId`]: socket events of an older attempt are ignored, and the client never has more
//! than one socket opening or open (it closes the old one before opening another).
//!
//! # Behaviour
//!
//! - **Reconnection** by close code ([`crate::protocol::ReconnectAdvice`]): do not reconnect;
//!   refresh the token then make one attempt; or back off ([`Backoff`]). The count resets only
//!   once the connection is active again; after the limit the client is closed until `online`,
//!   `visible` or reconnect-now starts a fresh series. A server's `retryAfterMs` (shutdown)
//!   overrides the first delay.
//! - **Resume**: after `established` on a new socket, the client sends
//!   `system.connection.resume` with its previous connection id and last sequence, and holds
//!   the new session's messages until the answer. `resumed {stateValid: true}`: the replay
//!   follows and the held messages (which the old session also got) are dropped.
//!   `stateValid: false`: a [`ClientEvent::Gap`], the new session is adopted and the held
//!   messages are delivered. Messages whose sequence was already seen are dropped; a jump emits
//!   a gap.
//! - **Liveness**: silence for twice the server's heartbeat interval closes the socket and
//!   reconnects; `online`/`visible` send a probe ping that must be answered within the probe
//!   timeout. A liveness timer that fires late (a throttled background tab) probes instead of
//!   killing, so a late timer never causes a false disconnect.
//! - **Sending while not active** queues, bounded by count, bytes and time-to-live, flushed in
//!   order once active (after the resume). A refusal or an expiry is reported, never silent.
//! - **Tokens** from the application: asked for before each connect and before expiry, one
//!   request at a time; a token arriving after `disconnect` is ignored. While active, a fresh
//!   token is sent in-band (`system.auth.refresh`).
//! - The token appears only in the URL of [`ClientOutput::OpenSocket`], whose `Debug` hides it;
//!   it is never logged or put in an event.

mod backoff;
mod bus;
mod config;
mod connection;
mod io;
mod log_filter;
mod state;

pub use backoff::{Backoff, BackoffConfig, Jitter};
pub use bus::{MessageBus, SubscriptionId};
pub use config::{ClientConfig, TokenSource};
pub use connection::{Client, ClientTimer};
pub use io::{
    AttemptId, ClientEvent, ClientInput, ClientOutput, ClientStatus, OutgoingMessage, Received,
    ResumeState, SendError, ServerFrame, StateChange,
};
pub use log_filter::{NAMESPACES, namespace_enabled};
pub use state::ClientState;
