//! What goes into the client and what comes out.

use super::state::ClientState;
use crate::protocol::{
    CloseCode, CloseReason, Envelope, ErrorPayload, Id, MessageType, Payload, Position,
    ProtocolError, SystemMessage,
};
use crate::time::Instant;
use bytes::Bytes;
use std::fmt;

/// One socket attempt. Socket events name it; events of an old attempt are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptId(pub u64);

/// What the application wants sent.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    pub message_type: MessageType,
    pub payload: Payload,
    /// Defaults to the client's conversation.
    pub conversation_id: Option<Id>,
    pub correlation_id: Option<Id>,
}

/// Why a send was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the client is closed")]
    Closed,
    #[error("the send queue is full ({0})")]
    QueueFull(&'static str),
    #[error("the message waited longer than the queue's time-to-live")]
    Expired,
}

impl SendError {
    /// A short name of the refusal: `closed`, `queue_full` or `expired`.
    pub fn as_str(&self) -> &'static str {
        match self {
            SendError::Closed => "closed",
            SendError::QueueFull(_) => "queue_full",
            SendError::Expired => "expired",
        }
    }
}

/// An application message from the server, as the client delivers it: what the client core
/// decides with (id, type, sequence) and the frame's text for the application.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub id: Id,
    pub message_type: MessageType,
    pub sequence: Option<u64>,
    /// Where it sits in its channel (none for a message to this connection only).
    pub position: Option<Position>,
    /// The frame as it arrived (JSON text).
    pub frame: Bytes,
    /// The envelope, when the core decoded the frame itself (`ClientInput::Frame`).
    pub envelope: Option<Box<Envelope>>,
}

impl Received {
    /// The message's envelope (decoded from the frame if the adapter decoded it itself).
    pub fn envelope(&self) -> Result<Envelope, ProtocolError> {
        match &self.envelope {
            Some(envelope) => Ok(Envelope::clone(envelope)),
            None => Envelope::parse_shared(self.frame.clone(), usize::MAX),
        }
    }
}

/// A frame from the server, decoded: what the client acts on.
///
/// A native adapter hands the core the frame's bytes (`ClientInput::Frame`) and the core
/// decodes it with [`ServerFrame::decode`]; the browser shell decodes it itself with
/// `JSON.parse` — the fastest and smallest JSON reader a browser has — and hands over this
/// ([`ClientInput::Decoded`]), which keeps the protocol's parsers out of the wasm.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    /// `system.connection.established`.
    Established { connection_id: Id, heartbeat_interval_ms: Option<u64> },
    /// `system.ping`: answered with a pong naming `id`.
    Ping { id: Id },
    /// `system.pong`, answering the ping `correlation_id`.
    Pong { correlation_id: Option<Id> },
    /// `system.connection.resumed`.
    Resumed { connection_id: Option<Id>, missed_messages: u64, state_valid: bool },
    /// `system.connection.close`: the server is about to close the socket.
    Closing { reason: CloseReason, retry_after_ms: Option<u64> },
    /// `system.error`.
    Error(Box<ErrorPayload>),
    /// `system.channel.reset`: messages on this channel may be missing.
    ChannelReset { channel: String },
    /// A system message the client takes no action on (`system.auth.refreshed`).
    Other,
    /// A `control.*` or `data.*` message.
    Application(Box<Received>),
}

impl ServerFrame {
    /// Decodes a text frame from the server.
    pub fn decode(frame: Bytes) -> Result<ServerFrame, ProtocolError> {
        let envelope = Envelope::parse_shared(frame.clone(), usize::MAX)?;
        if !envelope.message_type.is_system() {
            return Ok(ServerFrame::Application(Box::new(Received {
                id: envelope.id.clone(),
                message_type: envelope.message_type.clone(),
                sequence: envelope.sequence,
                position: envelope.position.clone(),
                frame,
                envelope: Some(Box::new(envelope)),
            })));
        }
        Ok(match SystemMessage::from_envelope(&envelope)? {
            SystemMessage::ConnectionEstablished(e) => ServerFrame::Established {
                connection_id: e.connection_id,
                heartbeat_interval_ms: e.heartbeat_interval_ms,
            },
            SystemMessage::Ping(_) => ServerFrame::Ping { id: envelope.id },
            SystemMessage::Pong(_) => ServerFrame::Pong { correlation_id: envelope.correlation_id },
            SystemMessage::ConnectionResumed(r) => ServerFrame::Resumed {
                connection_id: r.connection_id,
                missed_messages: r.missed_messages,
                state_valid: r.state_valid,
            },
            SystemMessage::ConnectionClose(c) => {
                ServerFrame::Closing { reason: c.reason, retry_after_ms: c.retry_after_ms }
            }
            SystemMessage::Error(error) => ServerFrame::Error(Box::new(error)),
            SystemMessage::ChannelReset(reset) => {
                ServerFrame::ChannelReset { channel: reset.channel }
            }
            SystemMessage::AuthRefreshed(_)
            | SystemMessage::AuthRefresh(_)
            | SystemMessage::ConnectionResume(_) => ServerFrame::Other,
        })
    }
}

/// The inputs, each fed with the current time to [`super::Client::handle_input`].
#[derive(Clone)]
pub enum ClientInput {
    /// Start connecting.
    Connect,
    /// Close for good (no reconnect) with this code and reason.
    Disconnect {
        code: CloseCode,
        reason: String,
    },
    /// Send a message (queued while not active).
    Send(OutgoingMessage),
    /// The socket of `attempt` opened.
    SocketOpened {
        attempt: AttemptId,
    },
    /// A text frame arrived on `attempt`'s socket (the core decodes it).
    #[cfg(feature = "text-frames")]
    Frame {
        attempt: AttemptId,
        text: Bytes,
    },
    /// A frame arrived on `attempt`'s socket, already decoded by the adapter.
    Decoded {
        attempt: AttemptId,
        frame: ServerFrame,
    },
    /// `attempt`'s socket closed (or failed to open), with the close code if there was one.
    SocketClosed {
        attempt: AttemptId,
        code: Option<CloseCode>,
        reason: String,
    },
    /// A token from the application (answering [`ClientOutput::RequestToken`]).
    Token {
        token: String,
        expires_at_unix_ms: Option<i64>,
    },
    /// The application could not supply a token (its callback failed): the attempt backs
    /// off as if the socket had been lost, and asks again when it is due.
    TokenFailed,
    Online,
    Offline,
    Visible,
    Hidden,
    /// The page is going away or into the back/forward cache (`pagehide`): the resume point is
    /// stored at once and the socket closed with 1001, so the server keeps the session for a
    /// resume; no attempt is made until the page is shown again.
    PageHide,
    /// The page is shown again (`pageshow`, from the back/forward cache): reconnect and resume
    /// at once.
    PageShow,
    /// The page is about to be frozen (`freeze`): the resume point is stored at once.
    Freeze,
    /// Try now, with a fresh attempt count.
    ReconnectNow,
    /// A deadline from [`super::Client::poll_timeout`] passed (or may have).
    Timeout,
}

impl fmt::Debug for ClientInput {
    /// Tokens are never shown; frames show their length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientInput::Connect => f.write_str("Connect"),
            ClientInput::Disconnect { code, reason } => {
                f.debug_struct("Disconnect").field("code", code).field("reason", reason).finish()
            }
            ClientInput::Send(message) => {
                f.debug_tuple("Send").field(&message.message_type).finish()
            }
            ClientInput::SocketOpened { attempt } => {
                f.debug_struct("SocketOpened").field("attempt", attempt).finish()
            }
            #[cfg(feature = "text-frames")]
            ClientInput::Frame { attempt, text } => f
                .debug_struct("Frame")
                .field("attempt", attempt)
                .field("bytes", &text.len())
                .finish(),
            ClientInput::Decoded { attempt, .. } => {
                f.debug_struct("Decoded").field("attempt", attempt).finish_non_exhaustive()
            }
            ClientInput::SocketClosed { attempt, code, reason } => f
                .debug_struct("SocketClosed")
                .field("attempt", attempt)
                .field("code", code)
                .field("reason", reason)
                .finish(),
            ClientInput::Token { expires_at_unix_ms, .. } => f
                .debug_struct("Token")
                .field("token", &"<redacted>")
                .field("expires_at_unix_ms", expires_at_unix_ms)
                .finish(),
            ClientInput::TokenFailed => f.write_str("TokenFailed"),
            ClientInput::Online => f.write_str("Online"),
            ClientInput::Offline => f.write_str("Offline"),
            ClientInput::Visible => f.write_str("Visible"),
            ClientInput::Hidden => f.write_str("Hidden"),
            ClientInput::PageHide => f.write_str("PageHide"),
            ClientInput::PageShow => f.write_str("PageShow"),
            ClientInput::Freeze => f.write_str("Freeze"),
            ClientInput::ReconnectNow => f.write_str("ReconnectNow"),
            ClientInput::Timeout => f.write_str("Timeout"),
        }
    }
}

/// What the client kept for resuming (the Phase 1 plan's sessionStorage state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeState {
    pub connection_id: Option<Id>,
    pub last_sequence: u64,
    pub last_message_id: Option<Id>,
    /// The last position delivered in each channel: any instance can replay from them.
    pub positions: Vec<Position>,
}

/// The outputs, drained with [`super::Client::poll_output`].
#[derive(Clone, PartialEq)]
pub enum ClientOutput {
    /// Open a socket to `url` for `attempt` (closing none: the client closed any earlier one).
    OpenSocket { attempt: AttemptId, url: String },
    /// Send this text frame on `attempt`'s socket.
    SendFrame { attempt: AttemptId, frame: Bytes },
    /// Close `attempt`'s socket.
    CloseSocket { attempt: AttemptId, code: CloseCode, reason: String },
    /// Ask the application for a fresh token (answer with [`ClientInput::Token`]).
    RequestToken,
    /// Store this, so a reloaded page can resume (sessionStorage in a browser).
    Persist(ResumeState),
    /// Something for the application.
    Event(ClientEvent),
}

impl fmt::Debug for ClientOutput {
    /// The URL carries the token: shown without its query.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientOutput::OpenSocket { attempt, url } => f
                .debug_struct("OpenSocket")
                .field("attempt", attempt)
                .field("url", &url.split('?').next().unwrap_or_default())
                .finish_non_exhaustive(),
            ClientOutput::SendFrame { attempt, frame } => f
                .debug_struct("SendFrame")
                .field("attempt", attempt)
                .field("bytes", &frame.len())
                .finish(),
            ClientOutput::CloseSocket { attempt, code, reason } => f
                .debug_struct("CloseSocket")
                .field("attempt", attempt)
                .field("code", code)
                .field("reason", reason)
                .finish(),
            ClientOutput::RequestToken => f.write_str("RequestToken"),
            ClientOutput::Persist(state) => f.debug_tuple("Persist").field(state).finish(),
            ClientOutput::Event(event) => f.debug_tuple("Event").field(event).finish(),
        }
    }
}

/// Where the client is, for a status display (the browser client's `status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientStatus {
    pub state: ClientState,
    /// Attempts made since the connection was last active.
    pub attempt: u32,
    pub next_retry_at: Option<Instant>,
    /// How the last socket ended: its close code (if it had one) and the reason.
    pub last_close_code: Option<CloseCode>,
    pub last_close_reason: Option<String>,
    /// Whether the current session was resumed (rather than new).
    pub resumed: bool,
    pub connection_id: Option<Id>,
    pub last_sequence: u64,
    /// Messages waiting to be sent.
    pub queued: usize,
    /// The last measured ping round trip, in milliseconds.
    pub round_trip_ms: Option<u64>,
    pub online: bool,
}

/// A state change, with what a UI needs to show it (a countdown needs `next_retry_at`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub previous_state: ClientState,
    pub new_state: ClientState,
    pub reason: &'static str,
    pub code: Option<CloseCode>,
    pub attempt: u32,
    pub next_retry_at: Option<Instant>,
    pub will_reconnect: bool,
}

/// What the application hears.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The connection is active (again).
    Connected {
        connection_id: Id,
        resumed: bool,
        replayed: u64,
    },
    /// The socket is gone.
    Disconnected {
        code: Option<CloseCode>,
        reason: String,
    },
    /// A `system.error` from the server.
    ServerError(Box<ErrorPayload>),
    /// A local failure (a frame that did not parse, a send that expired, ...).
    LocalError(String),
    /// An application message, with the bus subscriptions it matches, in delivery order.
    Message {
        message: Received,
        subscribers: Vec<super::SubscriptionId>,
    },
    StateChange(StateChange),
    /// Messages were lost (resume refused, or a sequence jump): the application must resync.
    Gap {
        reason: &'static str,
        /// The channel (`conversation:c-1`) when the server said which one was reset; `None`
        /// when the whole session's messages are concerned.
        channel: Option<String>,
    },
    /// A queued message could not be sent.
    SendFailed {
        id: Id,
        error: SendError,
    },
}
