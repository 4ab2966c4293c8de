//! Typed payloads of the `system.*` messages (DESIGN.md §2).
//!
//! Unknown payload fields are ignored, so a peer of a later minor version can add fields.

use super::json::{self, ObjectWriter};
use super::{
    Envelope, ErrorCategory, Id, MessageType, Payload, Position, ProtocolError, Timestamp,
};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
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
    pub const CHANNEL_RESET: &str = "system.channel.reset";

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
    /// Ours: the last position the client got in each channel, so that any instance can
    /// replay the rest from the channel's history (DESIGN.md §3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub positions: Vec<Position>,
}

/// `system.channel.reset` (ours, server → client, unsequenced): messages on `channel` may be
/// missing — its history could not fill a gap, the bus lost them, a failover rolled the channel
/// back — so the client refetches what it shows of that channel. `epoch` is the channel's new
/// one, when known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelReset {
    pub channel: String,
    pub epoch: Option<String>,
    /// `history_gap`, `epoch_changed`, `rolled_back`, `publish_lost`, …
    pub reason: String,
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
    /// More about the error, a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Payload>,
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
    ChannelReset(ChannelReset),
}

impl SystemMessage {
    /// Parses the payload of a `system.*` envelope by its type.
    ///
    /// An unknown `system.*` type is [`ProtocolError::UnknownMessageType`]; a payload that does
    /// not fit its type is [`ProtocolError::InvalidPayload`] naming the field. Read with the
    /// protocol's own scanner ([`super::json`]): the same on the server and in the browser.
    pub fn from_envelope(envelope: &Envelope) -> Result<Self, ProtocolError> {
        let ty = envelope.message_type.as_str();
        let invalid =
            |detail: String| ProtocolError::InvalidPayload { message_type: ty.to_owned(), detail };
        let fields = Fields::of(&envelope.payload).map_err(invalid)?;
        let message = match ty {
            types::CONNECTION_ESTABLISHED => {
                ConnectionEstablished::read(&fields).map(Self::ConnectionEstablished)
            }
            types::PING => Heartbeat::read(&fields).map(Self::Ping),
            types::PONG => Heartbeat::read(&fields).map(Self::Pong),
            types::CONNECTION_RESUME => ConnectionResume::read(&fields).map(Self::ConnectionResume),
            types::CONNECTION_RESUMED => {
                ConnectionResumed::read(&fields).map(Self::ConnectionResumed)
            }
            types::CONNECTION_CLOSE => ConnectionClose::read(&fields).map(Self::ConnectionClose),
            types::AUTH_REFRESH => AuthRefresh::read(&fields).map(Self::AuthRefresh),
            types::AUTH_REFRESHED => AuthRefreshed::read(&fields).map(Self::AuthRefreshed),
            types::ERROR => ErrorPayload::read(&fields).map(Self::Error),
            types::CHANNEL_RESET => ChannelReset::read(&fields).map(Self::ChannelReset),
            _ => return Err(ProtocolError::UnknownMessageType(ty.to_owned())),
        };
        message.map_err(invalid)
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
            Self::ChannelReset(_) => types::CHANNEL_RESET,
        }
    }

    /// The message's `type`, validated.
    pub fn message_type(&self) -> MessageType {
        MessageType::new(self.type_str()).expect("system types are valid")
    }

    /// The payload, encoded (by hand, field by field: see [`super::json`]).
    pub fn to_payload(&self) -> Payload {
        let mut out = ObjectWriter::default();
        match self {
            Self::ConnectionEstablished(p) => p.write(&mut out),
            Self::Ping(p) | Self::Pong(p) => p.write(&mut out),
            Self::ConnectionResume(p) => p.write(&mut out),
            Self::ConnectionResumed(p) => p.write(&mut out),
            Self::ConnectionClose(p) => p.write(&mut out),
            Self::AuthRefresh(p) => p.write(&mut out),
            Self::AuthRefreshed(p) => p.write(&mut out),
            Self::Error(p) => p.write(&mut out),
            Self::ChannelReset(p) => p.write(&mut out),
        }
        Payload::from_object_text(out.finish())
    }
}

/// A payload's fields, for the readers below; a field that appears twice is an error.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a str)>);

/// Why a payload's field does not fit.
fn missing(key: &str) -> String {
    let mut detail = String::from("missing field `");
    detail.push_str(key);
    detail.push('`');
    detail
}

fn wrong(key: &str, expected: &str) -> String {
    let mut detail = String::from("field `");
    detail.push_str(key);
    detail.push_str("` must be ");
    detail.push_str(expected);
    detail
}

impl<'a> Fields<'a> {
    fn of(payload: &'a Payload) -> Result<Self, String> {
        let fields = json::object_fields(payload.as_str())
            .ok()
            .flatten()
            .ok_or_else(|| String::from("the payload is not a JSON object"))?;
        for (i, (key, _)) in fields.iter().enumerate() {
            if fields[..i].iter().any(|(k, _)| k == key) {
                let mut detail = String::from("duplicate field `");
                detail.push_str(key);
                detail.push('`');
                return Err(detail);
            }
        }
        Ok(Fields(fields))
    }

    /// The raw value of `key`; `None` when absent or `null`.
    fn raw(&self, key: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v).filter(|v| *v != "null")
    }

    fn opt_string(&self, key: &str) -> Result<Option<String>, String> {
        self.raw(key)
            .map(|raw| json::string(raw).map(Cow::into_owned).ok_or_else(|| wrong(key, "a string")))
            .transpose()
    }

    fn string(&self, key: &str) -> Result<String, String> {
        self.opt_string(key)?.ok_or_else(|| missing(key))
    }

    fn opt_id(&self, key: &str) -> Result<Option<Id>, String> {
        self.opt_string(key)?
            .map(|text| Id::new(&text).map_err(|_| wrong(key, "an identifier")))
            .transpose()
    }

    fn id(&self, key: &str) -> Result<Id, String> {
        self.opt_id(key)?.ok_or_else(|| missing(key))
    }

    fn opt_u64(&self, key: &str) -> Result<Option<u64>, String> {
        self.raw(key)
            .map(|raw| json::unsigned(raw).ok_or_else(|| wrong(key, "a non-negative integer")))
            .transpose()
    }

    fn u64(&self, key: &str) -> Result<u64, String> {
        self.opt_u64(key)?.ok_or_else(|| missing(key))
    }

    fn opt_i64(&self, key: &str) -> Result<Option<i64>, String> {
        self.raw(key)
            .map(|raw| json::integer(raw).ok_or_else(|| wrong(key, "an integer")))
            .transpose()
    }

    fn bool(&self, key: &str) -> Result<bool, String> {
        let raw = self.raw(key).ok_or_else(|| missing(key))?;
        json::boolean(raw).ok_or_else(|| wrong(key, "true or false"))
    }

    fn timestamp(&self, key: &str) -> Result<Timestamp, String> {
        Timestamp::parse(&self.string(key)?).map_err(|_| wrong(key, "an RFC 3339 timestamp"))
    }

    /// A nested object's fields.
    fn object(&self, key: &str) -> Result<Option<Fields<'a>>, String> {
        let Some(raw) = self.raw(key) else { return Ok(None) };
        let fields =
            json::object_fields(raw).ok().flatten().ok_or_else(|| wrong(key, "an object"))?;
        Ok(Some(Fields(fields)))
    }
}

fn timestamp_text(t: Timestamp) -> String {
    t.format(&mut [0; Timestamp::CANONICAL_LEN]).to_owned()
}

impl ConnectionEstablished {
    fn read(f: &Fields<'_>) -> Result<Self, String> {
        Ok(ConnectionEstablished {
            connection_id: f.id("connectionId")?,
            conversation_id: f.string("conversationId")?,
            user_id: f.string("userId")?,
            definition_id: f.opt_string("definitionId")?,
            resuming: f.bool("resuming")?,
            server_time: f.timestamp("serverTime")?,
            heartbeat_interval_ms: f.opt_u64("heartbeatIntervalMs")?,
            resume_window_ms: f.opt_u64("resumeWindowMs")?,
        })
    }

    fn write(&self, out: &mut ObjectWriter) {
        out.str("connectionId", self.connection_id.as_str())
            .str("conversationId", &self.conversation_id)
            .str("userId", &self.user_id)
            .opt_str("definitionId", self.definition_id.as_deref())
            .bool("resuming", self.resuming)
            .str("serverTime", &timestamp_text(self.server_time))
            .opt_u64("heartbeatIntervalMs", self.heartbeat_interval_ms)
            .opt_u64("resumeWindowMs", self.resume_window_ms);
    }
}

impl Heartbeat {
    fn read(f: &Fields<'_>) -> Result<Self, String> {
        Ok(Heartbeat { timestamp: f.timestamp("timestamp")? })
    }

    fn write(&self, out: &mut ObjectWriter) {
        out.str("timestamp", &timestamp_text(self.timestamp));
    }
}

impl ConnectionResume {
    fn read(f: &Fields<'_>) -> Result<Self, String> {
        let client_state = match f.object("clientState")? {
            None => ClientScreenState::default(),
            Some(state) => ClientScreenState {
                pending_widget_ids: match state.raw("pendingWidgetIds") {
                    None => Vec::new(),
                    Some(raw) => strings(raw)
                        .ok_or_else(|| wrong("pendingWidgetIds", "an array of strings"))?,
                },
                input_content: state.opt_string("inputContent")?,
            },
        };
        Ok(ConnectionResume {
            conversation_id: f.string("conversationId")?,
            last_message_id: f.opt_string("lastMessageId")?,
            last_item_index: f.opt_i64("lastItemIndex")?,
            client_state,
            connection_id: f.opt_id("connectionId")?,
            last_sequence: f.opt_u64("lastSequence")?,
            positions: match f.raw("positions") {
                None => Vec::new(),
                Some(raw) => json::array_items(raw)
                    .ok()
                    .flatten()
                    .and_then(|items| items.into_iter().map(Position::read).collect())
                    .ok_or_else(|| wrong("positions", "an array of positions"))?,
            },
        })
    }

    fn write(&self, out: &mut ObjectWriter) {
        let mut state = ObjectWriter::default();
        let mut ids = Vec::from(*b"[");
        for (i, id) in self.client_state.pending_widget_ids.iter().enumerate() {
            if i > 0 {
                ids.push(b',');
            }
            json::write_string(&mut ids, id);
        }
        ids.push(b']');
        state
            .raw("pendingWidgetIds", &String::from_utf8(ids).unwrap_or_default())
            .opt_str("inputContent", self.client_state.input_content.as_deref());
        out.str("conversationId", &self.conversation_id)
            .str_or_null("lastMessageId", self.last_message_id.as_deref());
        match self.last_item_index {
            Some(index) => out.i64("lastItemIndex", index),
            None => out.raw("lastItemIndex", "null"),
        };
        out.raw("clientState", &state.finish())
            .opt_str("connectionId", self.connection_id.as_ref().map(Id::as_str))
            .opt_u64("lastSequence", self.last_sequence);
        if !self.positions.is_empty() {
            let mut items = String::from("[");
            for (i, position) in self.positions.iter().enumerate() {
                if i > 0 {
                    items.push(',');
                }
                items.push_str(&position.to_json());
            }
            items.push(']');
            out.raw("positions", &items);
        }
    }
}

impl ChannelReset {
    fn read(f: &Fields<'_>) -> Result<Self, String> {
        Ok(ChannelReset {
            channel: f.string("channel")?,
            epoch: f.opt_string("epoch")?,
            reason: f.string("reason")?,
        })
    }

    fn write(&self, out: &mut ObjectWriter) {
        out.str("channel", &self.channel)
            .str_or_null("epoch", self.epoch.as_deref())
            .str("reason", &self.reason);
    }
}

/// A JSON array of strings.
fn strings(raw: &str) -> Option<Vec<String>> {
    json::array_items(raw)
        .ok()??
        .into_iter()
        .map(|item| json::string(item).map(Cow::into_owned))
        .collect()
}

impl ConnectionResumed {
    fn read(f: &Fields<'_>) -> Result<Self, String> {
        Ok(ConnectionResumed {
            conversation_id: f.string("conversationId")?,
            resumed_from_message_id: f.opt_string("resumedFromMessageId")?,
            current_item_index: f.opt_i64("currentItemIndex")?,
            missed_messages: f.u64("missedMessages")?,
            state_valid: f.bool("stateValid")?,
            connection_id: f.opt_id("connectionId")?,
        })
    }

    fn write(&self, out: &mut ObjectWriter) {
        out.str("conversationId", &self.conversation_id)
            .str_or_null("resumedFromMessageId", self.resumed_from_message_id.as_deref());
        match self.current_item_index {
            Some(index) => out.i64("currentItemIndex", index),
            None => out.raw("currentItemIndex", "null"),
        };
        out.u64("missedMessages", self.missed_messages)
            .bool("stateValid", self.state_valid)
            .opt_str("connectionId", self.connection_id.as_ref().map(Id::as_str));
    }
}

impl CloseReason {
    /// The reason a wire name stands for (`Unknown` for one this version does not know).
    pub fn from_name(text: &str) -> Self {
        match text {
            "user_logout" => CloseReason::UserLogout,
            "session_expired" => CloseReason::SessionExpired,
            "server_shutdown" => CloseReason::ServerShutdown,
            "conversation_complete" => CloseReason::ConversationComplete,
            "idle_timeout" => CloseReason::IdleTimeout,
            _ => CloseReason::Unknown,
        }
    }
}

impl ConnectionClose {
    fn read(f: &Fields<'_>) -> Result<Self, String> {
        let code = u16::try_from(f.u64("code")?).map_err(|_| wrong("code", "a close code"))?;
        Ok(ConnectionClose {
            reason: CloseReason::from_name(&f.string("reason")?),
            code,
            retry_after_ms: f.opt_u64("retryAfterMs")?,
        })
    }

    fn write(&self, out: &mut ObjectWriter) {
        out.str("reason", self.reason.as_str().unwrap_or("unknown"))
            .u64("code", u64::from(self.code))
            .opt_u64("retryAfterMs", self.retry_after_ms);
    }
}

impl AuthRefresh {
    fn read(f: &Fields<'_>) -> Result<Self, String> {
        Ok(AuthRefresh { token: f.string("token")? })
    }

    fn write(&self, out: &mut ObjectWriter) {
        out.str("token", &self.token);
    }
}

impl AuthRefreshed {
    fn read(f: &Fields<'_>) -> Result<Self, String> {
        Ok(AuthRefreshed { expires_at: f.timestamp("expiresAt")? })
    }

    fn write(&self, out: &mut ObjectWriter) {
        out.str("expiresAt", &timestamp_text(self.expires_at));
    }
}

impl ErrorPayload {
    fn read(f: &Fields<'_>) -> Result<Self, String> {
        let category = ErrorCategory::read(&f.string("category")?)
            .ok_or_else(|| wrong("category", "an error category"))?;
        let details = match f.raw("details") {
            None => None,
            Some(raw) => Some(Payload::from_json(raw).map_err(|_| wrong("details", "an object"))?),
        };
        Ok(ErrorPayload {
            category,
            code: f.string("code")?,
            message: f.string("message")?,
            details,
            is_retryable: f.bool("isRetryable")?,
            retry_after_ms: f.opt_u64("retryAfterMs")?,
        })
    }

    fn write(&self, out: &mut ObjectWriter) {
        out.str("category", self.category.as_str())
            .str("code", &self.code)
            .str("message", &self.message);
        if let Some(details) = &self.details {
            out.raw("details", details.as_str());
        }
        out.bool("isRetryable", self.is_retryable).opt_u64("retryAfterMs", self.retry_after_ms);
    }

    /// The payload as JSON text (for a client that hands it to JavaScript).
    pub fn to_json(&self) -> String {
        let mut out = ObjectWriter::default();
        self.write(&mut out);
        out.finish()
    }
}
