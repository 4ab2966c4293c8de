//! What goes into the hub and what comes out.

use super::pubsub::Channel;
use crate::protocol::{CloseCode, Envelope, Id, Plane};
use crate::server::state::ConnectionState;
use bytes::Bytes;
use std::fmt;

/// A socket, named by the adapter: unique for the adapter's lifetime and never reused, so an
/// event that arrives after its socket was closed cannot reach another connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(pub u64);

/// One verification the hub asked for; the verdict names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VerifyId(pub u64);

/// What the adapter knows about an upgrade request.
#[derive(Clone, Default)]
pub struct OpenRequest {
    /// Query parameters, decoded.
    pub query: Vec<(String, String)>,
    /// Cookies, decoded.
    pub cookies: Vec<(String, String)>,
    /// The `Origin` header.
    pub origin: Option<String>,
    /// The peer's address, for logs.
    pub peer: Option<core::net::SocketAddr>,
}

impl fmt::Debug for OpenRequest {
    /// Shows parameter and cookie names only: their values include credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenRequest")
            .field("query", &self.query.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("cookies", &self.cookies.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("origin", &self.origin)
            .field("peer", &self.peer)
            .finish()
    }
}

/// Credentials to verify.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// An access token (from the query, or an in-band refresh).
    Token(String),
    /// A session cookie's value; the verifier must also check the request's Origin.
    Cookie(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Credentials::Token(_) => "Token(<redacted>)",
            Credentials::Cookie(_) => "Cookie(<redacted>)",
        })
    }
}

/// Who a connection belongs to, as the verifier found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub display_name: Option<String>,
    pub roles: Vec<String>,
    /// When the credentials stop being valid (wall clock); the hub closes with 4001 then.
    pub expires_at_unix_ms: Option<i64>,
}

impl Principal {
    /// A principal with just a user id.
    pub fn user(user_id: impl Into<String>) -> Self {
        Principal {
            user_id: user_id.into(),
            display_name: None,
            roles: Vec::new(),
            expires_at_unix_ms: None,
        }
    }
}

/// Why credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// Expired: the client should refresh its token and reconnect (close 4001).
    Expired,
    /// Anything else (close 4000). The reason is for logs and metrics and never holds the token.
    Invalid(String),
}

/// The inputs, each fed with the current time to [`super::Hub::handle_input`].
#[derive(Clone)]
pub enum Input {
    /// A WebSocket upgrade completed.
    Opened { socket: SocketId, request: OpenRequest },
    /// A text frame arrived.
    Text { socket: SocketId, frame: Bytes },
    /// A binary frame arrived (refused with 1003).
    Binary { socket: SocketId },
    /// The adapter wrote this much of what it was told to send to the socket. The hub bounds
    /// what is sent but not yet written, per socket.
    Flushed { socket: SocketId, frames: usize, bytes: usize },
    /// The socket ended (with the peer's close code, if it sent one).
    Closed { socket: SocketId, code: Option<CloseCode> },
    /// The answer to an [`Output::Verify`].
    AuthVerdict { request: VerifyId, verdict: Result<Principal, AuthFailure> },
    /// A message from another instance, from a channel the hub subscribed to.
    Remote { channel: String, message: Bytes },
    /// A deadline from [`super::Hub::poll_timeout`] passed (or may have).
    Timeout,
    /// Begin graceful shutdown.
    Shutdown,
}

impl fmt::Debug for Input {
    /// Frames show their length only: they may carry tokens (`system.auth.refresh`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Opened { socket, request } => {
                f.debug_struct("Opened").field("socket", socket).field("request", request).finish()
            }
            Input::Text { socket, frame } => {
                f.debug_struct("Text").field("socket", socket).field("bytes", &frame.len()).finish()
            }
            Input::Binary { socket } => f.debug_struct("Binary").field("socket", socket).finish(),
            Input::Flushed { socket, frames, bytes } => f
                .debug_struct("Flushed")
                .field("socket", socket)
                .field("frames", frames)
                .field("bytes", bytes)
                .finish(),
            Input::Closed { socket, code } => {
                f.debug_struct("Closed").field("socket", socket).field("code", code).finish()
            }
            Input::AuthVerdict { request, verdict } => f
                .debug_struct("AuthVerdict")
                .field("request", request)
                .field("verdict", verdict)
                .finish(),
            Input::Remote { channel, message } => f
                .debug_struct("Remote")
                .field("channel", channel)
                .field("bytes", &message.len())
                .finish(),
            Input::Timeout => f.write_str("Timeout"),
            Input::Shutdown => f.write_str("Shutdown"),
        }
    }
}

/// The outputs, drained with [`super::Hub::poll_output`].
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send this text frame.
    Send { socket: SocketId, frame: Bytes },
    /// Close the socket with this code; the hub sends nothing more to it.
    Close { socket: SocketId, code: CloseCode, reason: &'static str },
    /// Verify these credentials and answer with [`Input::AuthVerdict`].
    Verify { request: VerifyId, socket: SocketId, credentials: Credentials, origin: Option<String> },
    /// Publish to the other instances.
    Publish { channel: String, message: Bytes },
    /// Start receiving a channel.
    Subscribe { channel: String },
    /// Stop receiving a channel.
    Unsubscribe { channel: String },
    /// Something for the application or for metrics.
    Event(HubEvent),
}

/// What happened, for the application and for metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum HubEvent {
    /// A connection became active.
    ConnectionOpened { connection_id: Id, user_id: String, conversation_id: Option<Id> },
    /// A connection's socket is gone but its session waits for a resume.
    Disconnected { connection_id: Id, code: Option<CloseCode> },
    /// A session ended for good.
    ConnectionClosed {
        connection_id: Id,
        user_id: Option<String>,
        code: CloseCode,
        reason: &'static str,
    },
    /// Credentials were refused.
    AuthFailed { reason: String },
    /// An application message routed to [`super::Route::Forward`].
    Message {
        connection_id: Id,
        user_id: String,
        conversation_id: Option<Id>,
        envelope: Box<Envelope>,
    },
    /// A frame arrived (`plane` is `None` for a frame that did not parse).
    Received { plane: Option<Plane>, bytes: usize },
    /// A client message was refused by the rate limiter.
    RateLimited { connection_id: Id, message_type: String },
    /// A resume was asked for.
    Resumed { connection_id: Id, replayed: u64, state_valid: bool },
    /// A pong arrived this long after the ping.
    PingRoundTrip { connection_id: Id, millis: u64 },
    /// A connection was cut off because it did not read what it was sent.
    SlowConsumer { connection_id: Id },
    /// A state change outside DESIGN.md's table was attempted and refused (a bug).
    IllegalTransition { connection_id: Id, from: ConnectionState, to: ConnectionState },
    /// A subscription was refused for the configured limit.
    SubscriptionLimit { channel: Channel },
    /// Shutdown finished: every socket was told and closed.
    Drained,
}

#[cfg(test)]
mod tests {
    /// Outputs are queued by the thousand in a broadcast: keep them small.
    #[test]
    fn outputs_stay_small() {
        assert!(
            std::mem::size_of::<super::Output>() <= 96,
            "{}",
            std::mem::size_of::<super::Output>()
        );
    }
}
