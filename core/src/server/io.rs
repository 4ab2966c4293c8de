//! What goes into the hub and what comes out.

use super::bus::{BusCommand, BusEvent, Channel};
use crate::protocol::{CloseCode, Envelope, Id, Plane, SharedFrame};
use crate::server::state::ConnectionState;
use bytes::Bytes;
use std::fmt;
use std::sync::Arc;

/// A socket, named by the adapter: unique for the adapter's lifetime and never reused, so an
/// event that arrives after its socket was closed cannot reach another connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(pub u64);

/// One verification the hub asked for; the verdict names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VerifyId(pub u64);

/// One join decision the hub asked for; the verdict names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JoinId(pub u64);

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
    /// Conversations the credentials themselves grant (the claim an authorizer's claim rule
    /// names), for authorizers that read them.
    pub grants: Vec<String>,
    /// When the credentials stop being valid (wall clock); the hub closes with 4001 then (after
    /// the configured clock leeway).
    pub expires_at_unix_ms: Option<i64>,
}

impl Principal {
    /// A principal with just a user id.
    pub fn user(user_id: impl Into<String>) -> Self {
        Principal {
            user_id: user_id.into(),
            display_name: None,
            roles: Vec::new(),
            grants: Vec::new(),
            expires_at_unix_ms: None,
        }
    }
}

/// Why credentials were refused: for logs and metrics (a fixed set of labels). The client hears
/// only that authentication failed (or that its token expired): the detail would help an
/// attacker more than it helps a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// Neither a token nor a session cookie (close 4000).
    NoCredentials,
    /// The token expired: the client should refresh it and reconnect (close 4001).
    Expired,
    /// Not a JWT, too large, or its parts do not decode.
    Malformed,
    /// An algorithm or header type that is not accepted (only RS256 JWTs).
    Algorithm,
    /// A key id the key set does not hold (after at most one reload).
    UnknownKey,
    /// The signature does not verify.
    Signature,
    /// An issuer that is not accepted.
    Issuer,
    /// Neither an accepted audience nor an accepted authorized party.
    Audience,
    /// `nbf` is in the future.
    NotYetValid,
    /// Not an access token (`typ` is not `Bearer`), or a required claim (`exp`, `sub`) is
    /// missing.
    NotAccessToken,
    /// A session cookie from an Origin not allowed to use one.
    Origin,
    /// A session cookie the session store does not know.
    UnknownSession,
    /// A refresh whose token belongs to another user.
    OtherUser,
    /// No verdict in time.
    Timeout,
    /// The verifier failed (a bug or an outage on our side).
    Internal,
}

impl AuthFailure {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::NoCredentials => "no_credentials",
            AuthFailure::Expired => "expired",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Algorithm => "algorithm",
            AuthFailure::UnknownKey => "unknown_key",
            AuthFailure::Signature => "signature",
            AuthFailure::Issuer => "issuer",
            AuthFailure::Audience => "audience",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::NotAccessToken => "not_access_token",
            AuthFailure::Origin => "origin",
            AuthFailure::UnknownSession => "unknown_session",
            AuthFailure::OtherUser => "other_user",
            AuthFailure::Timeout => "timeout",
            AuthFailure::Internal => "internal",
        }
    }

    /// Every reason, for metrics.
    pub const ALL: [AuthFailure; 15] = [
        AuthFailure::NoCredentials,
        AuthFailure::Expired,
        AuthFailure::Malformed,
        AuthFailure::Algorithm,
        AuthFailure::UnknownKey,
        AuthFailure::Signature,
        AuthFailure::Issuer,
        AuthFailure::Audience,
        AuthFailure::NotYetValid,
        AuthFailure::NotAccessToken,
        AuthFailure::Origin,
        AuthFailure::UnknownSession,
        AuthFailure::OtherUser,
        AuthFailure::Timeout,
        AuthFailure::Internal,
    ];
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a user may join a conversation: what the hub asks with [`Output::Authorize`] after
/// the credentials were accepted, before the session becomes active (and again when a resume
/// would move a socket into another conversation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    pub request: JoinId,
    pub socket: SocketId,
    pub principal: Arc<Principal>,
    pub conversation_id: Id,
    pub definition_id: Option<String>,
}

/// A join that was allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinGrant {
    /// Whether the member may write into the conversation (relay, and handlers that write on
    /// its behalf).
    pub write: bool,
}

/// A join that was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JoinRefusal {
    /// Not allowed (close 4002, `FORBIDDEN`).
    Forbidden,
    /// No such conversation (close 4003, `CONVERSATION_NOT_FOUND`).
    NotFound,
    /// The authorizer could not decide (it is down or too slow): refused, but the client may
    /// come back later (close 1013).
    Unavailable,
}

impl JoinRefusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            JoinRefusal::Forbidden => "forbidden",
            JoinRefusal::NotFound => "not_found",
            JoinRefusal::Unavailable => "unavailable",
        }
    }
}

/// Why [`super::Hub::send`] refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusedSend {
    /// `system.*` messages are the connection layer's own: an application that could send them
    /// could forge a close or a resume, and clients do not count them in the sequence.
    #[error("{0} is a system type; the application sends control.* and data.* types only")]
    SystemType(String),
    /// Larger than `max_message_bytes`: it would not fit a socket's outbound window or the
    /// replay buffer.
    #[error("the message is {len} bytes encoded, over the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
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
    ///
    /// The principal is shared: the session keeps it, and so may the adapter (a cache of
    /// verified tokens), without a copy each (a principal is about 112 bytes and a few strings,
    /// and every connection has one).
    AuthVerdict { request: VerifyId, verdict: Result<Arc<Principal>, AuthFailure> },
    /// The answer to an [`Output::Authorize`].
    JoinVerdict { request: JoinId, verdict: Result<JoinGrant, JoinRefusal> },
    /// What the bus between instances said: shard (an index into the buses, 0 with one) and
    /// event (see `server::bus`).
    Bus(usize, BusEvent),
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
            Input::JoinVerdict { request, verdict } => f
                .debug_struct("JoinVerdict")
                .field("request", request)
                .field("verdict", verdict)
                .finish(),
            Input::Bus(shard, event) => f.debug_tuple("Bus").field(shard).field(event).finish(),
            Input::Timeout => f.write_str("Timeout"),
            Input::Shutdown => f.write_str("Shutdown"),
        }
    }
}

/// A text frame for one socket.
///
/// A message for many recipients stays one shared encoding plus each recipient's sequence: an
/// adapter that writes several slices at once writes [`SharedFrame::body`] from the shared
/// bytes and only the short suffix from its own, so a fan-out copies no message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A frame of its own (a system message, an answer).
    Whole(Bytes),
    /// A shared message with this recipient's `sequence` spliced in last.
    Sequenced(Sequenced),
}

/// A shared message for one recipient: the one encoding, the recipient's sequence, and the
/// frame's length, counted once (an adapter asks for it several times per frame: to size the
/// write, for the header, to count what was written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequenced {
    shared: SharedFrame,
    sequence: u64,
    len: usize,
}

impl Sequenced {
    /// The encoding every recipient shares.
    pub fn shared(&self) -> &SharedFrame {
        &self.shared
    }

    /// This recipient's sequence for it.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
}

/// A frame the hub holds, lent to the adapter while it writes ([`super::Transmit`]): nothing
/// is made per recipient and no reference count is touched, which fan-out to a thousand
/// sockets notices. [`FrameRef::to_owned`] makes a [`Frame`] of what must outlive the loan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameRef<'a> {
    /// A frame of its own (a system message, an answer).
    Whole(&'a Bytes),
    /// A shared message with this recipient's `sequence` spliced in last, and the frame's
    /// length, counted once (see [`Sequenced`]).
    Sequenced { shared: &'a SharedFrame, sequence: u64, len: usize },
}

impl<'a> FrameRef<'a> {
    /// The shared message `shared` with the recipient's `sequence`.
    pub fn sequenced(shared: &'a SharedFrame, sequence: u64) -> Self {
        FrameRef::Sequenced { shared, sequence, len: shared.len_with_sequence(sequence) }
    }

    /// The frame's length in bytes.
    pub fn len(&self) -> usize {
        match self {
            FrameRef::Whole(bytes) => bytes.len(),
            FrameRef::Sequenced { len, .. } => *len,
        }
    }

    /// Never true for a frame the hub sends; here for completeness.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame, to keep.
    pub fn to_owned(self) -> Frame {
        match self {
            FrameRef::Whole(bytes) => Frame::Whole(bytes.clone()),
            FrameRef::Sequenced { shared, sequence, len } => {
                Frame::Sequenced(Sequenced { shared: shared.clone(), sequence, len })
            }
        }
    }
}

impl Frame {
    /// The shared message `shared` with the recipient's `sequence`.
    pub fn sequenced(shared: SharedFrame, sequence: u64) -> Self {
        let len = shared.len_with_sequence(sequence);
        Frame::Sequenced(Sequenced { shared, sequence, len })
    }

    /// The frame's length in bytes.
    pub fn len(&self) -> usize {
        self.as_ref().len()
    }

    /// Never true for a frame the hub sends; here for completeness.
    pub fn is_empty(&self) -> bool {
        self.as_ref().is_empty()
    }

    /// The frame, lent.
    pub fn as_ref(&self) -> FrameRef<'_> {
        match self {
            Frame::Whole(bytes) => FrameRef::Whole(bytes),
            Frame::Sequenced(sequenced) => {
                let Sequenced { shared, sequence, len } = sequenced;
                FrameRef::Sequenced { shared, sequence: *sequence, len: *len }
            }
        }
    }

    /// The frame as one buffer (a copy for a sequenced frame).
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Frame::Whole(bytes) => bytes.clone(),
            Frame::Sequenced(sequenced) => sequenced.shared.with_sequence(sequenced.sequence),
        }
    }
}

/// The outputs, drained with [`super::Hub::poll_output`].
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Write this text frame, before what the outputs that follow ask of the socket. The hub
    /// gives frames this way when they must go ahead of a close (an error, a shutdown notice)
    /// or of the socket carrying another session's sequence on; every other frame waits for
    /// [`super::Hub::poll_transmit`], which hands over a socket's frames together.
    Send { socket: SocketId, frame: Frame },
    /// Close the socket with this code; the hub sends nothing more to it.
    Close { socket: SocketId, code: CloseCode, reason: &'static str },
    /// Verify these credentials and answer with [`Input::AuthVerdict`].
    Verify { request: VerifyId, socket: SocketId, credentials: Credentials, origin: Option<String> },
    /// Decide whether this user may join this conversation, and answer with
    /// [`Input::JoinVerdict`].
    Authorize(Box<JoinRequest>),
    /// Ask this of shard `.0`'s bus between instances, and feed its answer as [`Input::Bus`]
    /// with the same shard.
    Bus(usize, BusCommand),
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
    AuthFailed { reason: AuthFailure },
    /// A join was refused.
    JoinRefused { connection_id: Id, conversation_id: Id, refusal: JoinRefusal },
    /// A user at its session cap: the oldest of its sessions waiting for a resume was let go,
    /// or (none waiting) the new connection was refused.
    SessionCap { user_id: String, evicted: bool },
    /// The application asked the hub to send something it refused (a `system.*` type, or a
    /// message over the size limit); [`super::Hub::send`] returned the error. Reported here
    /// for sends made by handlers, which have no caller to return it to.
    SendRefused { message_type: String, error: RefusedSend },
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
    /// A channel's local members were told that messages may be missing
    /// (`system.channel.reset`), and why.
    ChannelReset { channel: Channel, reason: &'static str },
    /// Shutdown finished: every socket was told and closed.
    Drained,
}

#[cfg(test)]
mod tests {
    /// Outputs are queued by the hundred (the largest is a bus publish with its shard).
    #[test]
    fn outputs_stay_small() {
        assert!(
            std::mem::size_of::<super::Output>() <= 104,
            "{}",
            std::mem::size_of::<super::Output>()
        );
    }

    /// Frames are taken by the thousand in a fan-out, each a socket's next write: a sequenced
    /// frame's length rides in the room a whole frame's `Bytes` takes anyway.
    #[test]
    fn frames_stay_four_words() {
        assert_eq!(std::mem::size_of::<super::Frame>(), 32);
    }
}
