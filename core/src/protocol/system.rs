//! Typed payloads of the `system.*` messages (DESIGN.md §2).
//!
//! Unknown payload fields are ignored, so a peer of a later minor version can add fields.

use super::{Envelope, ErrorCategory, Id, MessageType, Payload, ProtocolError, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The `type` of each system message.
pub mod types {
    pub const CONNECTION_ESTABLISHED: &str = "system.connection.established";
    pub const PING: &str = "system.ping";
    pub const PONG: &str = "system.pong";
    pub const CONNECTION_RESUME: &str = "system.connection.resume";
    pub const CONNECTION_RESUMED: &str = "system.connection.resumed";
    pub const CONNECTION_CLOSE: &str = "system.connection.close";
    pub const AUTH_REFRESH: &str = "system.auth.refresh";
    pub const AUTH_REFRESHED: &str = "system.auth.refreshed";
    pub const ERROR: &str = "system.error";

    /// Whether a client may send a message of this type (the rest are the server's).
    pub fn is_client_to_server(message_type: &str) -> bool {
        matches!(message_type, PING | PONG | CONNECTION_RESUME | CONNECTION_CLOSE | AUTH_REFRESH)
    }
}

/// `system.connection.established` (server → client): the connection is authenticated and live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionEstablished {
    /// The session's id; the client presents it to resume.
    pub connection_id: Id,
    /// `""` when the connection has no conversation.
    pub conversation_id: String,
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition_id: Option<String>,
    /// Whether this connection resumes an earlier session.
    pub resuming: bool,
    pub server_time: Timestamp,
    /// Ours: how often the server pings; the client treats twice this much silence as death.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Ours: how long the session outlives a lost socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_window_ms: Option<u64>,
}

/// `system.ping` and `system.pong` (both directions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// When the sender sent it.
    pub timestamp: Timestamp,
}

/// What the client had on screen when its socket dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientScreenState {
    #[serde(default)]
    pub pending_widget_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_content: Option<String>,
}

/// `system.connection.resume` (client → server): the first message on a new socket of a client
/// that wants its old session back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionResume {
    pub conversation_id: String,
    /// The id of the last message the client received, if any.
    #[serde(default)]
    pub last_message_id: Option<String>,
    #[serde(default)]
    pub last_item_index: Option<i64>,
    #[serde(default)]
    pub client_state: ClientScreenState,
    /// Ours: the session to resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<Id>,
    /// Ours: the highest `sequence` the client has received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sequence: Option<u64>,
}

/// `system.connection.resumed` (server → client): the outcome of a resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionResumed {
    pub conversation_id: String,
    #[serde(default)]
    pub resumed_from_message_id: Option<String>,
    #[serde(default)]
    pub current_item_index: Option<i64>,
    /// How many messages were replayed after this one.
    pub missed_messages: u64,
    /// `false`: the session could not be resumed without a gap; the application must resync.
    pub state_valid: bool,
    /// Ours: the session now in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<Id>,
}

/// Why a connection is being closed, as `system.connection.close` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    UserLogout,
    SessionExpired,
    ServerShutdown,
    ConversationComplete,
    IdleTimeout,
    /// A reason this version does not know.
    #[serde(other)]
    Unknown,
}

impl CloseReason {
    /// The reason as the wire spells it; `None` for one this version does not know.
    pub fn as_str(self) -> Option<&'static str> {
        Some(match self {
            CloseReason::UserLogout => "user_logout",
            CloseReason::SessionExpired => "session_expired",
            CloseReason::ServerShutdown => "server_shutdown",
            CloseReason::ConversationComplete => "conversation_complete",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Unknown => return None,
        })
    }
}

/// `system.connection.close` (both directions): the sender is about to close the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionClose {
    pub reason: CloseReason,
    /// The WebSocket close code that follows.
    pub code: u16,
    /// Ours: how long to wait before reconnecting (spreads a fleet's reconnects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// `system.auth.refresh` (client → server, ours): a fresh access token for the same user.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthRefresh {
    pub token: String,
}

impl fmt::Debug for AuthRefresh {
    /// Tokens are credentials: never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthRefresh").field("token", &"<redacted>").finish()
    }
}

/// `system.auth.refreshed` (server → client, ours): the connection now expires at `expiresAt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthRefreshed {
    pub expires_at: Timestamp,
}

/// `system.error` (server → client).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorPayload {
    pub category: ErrorCategory,
    /// `INVALID_MESSAGE`, `RATE_LIMITED`, … (see [`super::codes`]).
    pub code: String,
    /// For people, not programs.
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
    pub is_retryable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// A `system.*` message with its payload parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum SystemMessage {
    ConnectionEstablished(ConnectionEstablished),
    Ping(Heartbeat),
    Pong(Heartbeat),
    ConnectionResume(ConnectionResume),
    ConnectionResumed(ConnectionResumed),
    ConnectionClose(ConnectionClose),
    AuthRefresh(AuthRefresh),
    AuthRefreshed(AuthRefreshed),
    Error(ErrorPayload),
}

impl SystemMessage {
    /// Parses the payload of a `system.*` envelope by its type.
    ///
    /// An unknown `system.*` type is [`ProtocolError::UnknownMessageType`]; a payload that does
    /// not fit its type is [`ProtocolError::InvalidPayload`] with serde's explanation.
    pub fn from_envelope(envelope: &Envelope) -> Result<Self, ProtocolError> {
        let ty = envelope.message_type.as_str();
        let payload = &envelope.payload;
        fn parse<'a, T: Deserialize<'a>>(
            ty: &str,
            payload: &'a Payload,
        ) -> Result<T, ProtocolError> {
            payload.parse().map_err(|e| ProtocolError::InvalidPayload {
                message_type: ty.to_owned(),
                detail: e.to_string(),
            })
        }
        Ok(match ty {
            types::CONNECTION_ESTABLISHED => Self::ConnectionEstablished(parse(ty, payload)?),
            types::PING => Self::Ping(parse(ty, payload)?),
            types::PONG => Self::Pong(parse(ty, payload)?),
            types::CONNECTION_RESUME => Self::ConnectionResume(parse(ty, payload)?),
            types::CONNECTION_RESUMED => Self::ConnectionResumed(parse(ty, payload)?),
            types::CONNECTION_CLOSE => Self::ConnectionClose(parse(ty, payload)?),
            types::AUTH_REFRESH => Self::AuthRefresh(parse(ty, payload)?),
            types::AUTH_REFRESHED => Self::AuthRefreshed(parse(ty, payload)?),
            types::ERROR => Self::Error(parse(ty, payload)?),
            _ => return Err(ProtocolError::UnknownMessageType(ty.to_owned())),
        })
    }

    /// The message's `type`.
    pub fn type_str(&self) -> &'static str {
        match self {
            Self::ConnectionEstablished(_) => types::CONNECTION_ESTABLISHED,
            Self::Ping(_) => types::PING,
            Self::Pong(_) => types::PONG,
            Self::ConnectionResume(_) => types::CONNECTION_RESUME,
            Self::ConnectionResumed(_) => types::CONNECTION_RESUMED,
            Self::ConnectionClose(_) => types::CONNECTION_CLOSE,
            Self::AuthRefresh(_) => types::AUTH_REFRESH,
            Self::AuthRefreshed(_) => types::AUTH_REFRESHED,
            Self::Error(_) => types::ERROR,
        }
    }

    /// The message's `type`, validated.
    pub fn message_type(&self) -> MessageType {
        MessageType::new(self.type_str()).expect("system types are valid")
    }

    /// The payload, encoded.
    pub fn to_payload(&self) -> Payload {
        let encoded = match self {
            Self::ConnectionEstablished(p) => Payload::from_serialize(p),
            Self::Ping(p) | Self::Pong(p) => Payload::from_serialize(p),
            Self::ConnectionResume(p) => Payload::from_serialize(p),
            Self::ConnectionResumed(p) => Payload::from_serialize(p),
            Self::ConnectionClose(p) => Payload::from_serialize(p),
            Self::AuthRefresh(p) => Payload::from_serialize(p),
            Self::AuthRefreshed(p) => Payload::from_serialize(p),
            Self::Error(p) => Payload::from_serialize(p),
        };
        // Every system payload is a struct of JSON-encodable fields: an object.
        encoded.expect("system payloads encode to objects")
    }
}
