//! What can be wrong with a frame, and how the server answers each fault.

use super::{CloseCode, IdError, MessageTypeError, TimestampError};
use serde::{Deserialize, Serialize};

/// `system.error` codes switchboard itself sends.
pub mod codes {
    /// The frame is not a valid envelope.
    pub const INVALID_MESSAGE: &str = "INVALID_MESSAGE";
    /// The envelope is valid but its payload does not fit its type.
    pub const INVALID_PAYLOAD: &str = "INVALID_PAYLOAD";
    /// No handler for the message's type.
    pub const UNKNOWN_MESSAGE_TYPE: &str = "UNKNOWN_MESSAGE_TYPE";
    /// The envelope's `version` is not `"1.0"`.
    pub const VERSION_MISMATCH: &str = "VERSION_MISMATCH";
    /// The frame is larger than the server accepts.
    pub const MESSAGE_TOO_LARGE: &str = "MESSAGE_TOO_LARGE";
    /// The frame was binary; switchboard speaks JSON text frames only.
    pub const UNSUPPORTED_FRAME: &str = "UNSUPPORTED_FRAME";
    /// A rate limit was hit; `retryAfterMs` says when to try again.
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    /// No credentials were presented.
    pub const AUTH_REQUIRED: &str = "AUTH_REQUIRED";
    /// The credentials failed verification.
    pub const AUTH_FAILED: &str = "AUTH_FAILED";
    /// The token has expired.
    pub const TOKEN_EXPIRED: &str = "TOKEN_EXPIRED";
    /// Authenticated, but not allowed to join (or write into) the conversation.
    pub const FORBIDDEN: &str = "FORBIDDEN";
    /// The conversation does not exist.
    pub const CONVERSATION_NOT_FOUND: &str = "CONVERSATION_NOT_FOUND";
    /// Whether the conversation may be joined could not be decided now (retry later).
    pub const JOIN_UNAVAILABLE: &str = "JOIN_UNAVAILABLE";
    /// A message that needs a conversation came on a connection without one.
    pub const NO_CONVERSATION: &str = "NO_CONVERSATION";
    /// The user holds as many sessions as the server allows.
    pub const TOO_MANY_SESSIONS: &str = "TOO_MANY_SESSIONS";
}

/// The six categories of `system.error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCategory {
    Transport,
    Authentication,
    Validation,
    Business,
    Server,
    RateLimit,
}

impl ErrorCategory {
    /// The category as the wire spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCategory::Transport => "transport",
            ErrorCategory::Authentication => "authentication",
            ErrorCategory::Validation => "validation",
            ErrorCategory::Business => "business",
            ErrorCategory::Server => "server",
            ErrorCategory::RateLimit => "rate_limit",
        }
    }

    /// The category a wire name stands for.
    pub fn read(text: &str) -> Option<Self> {
        Some(match text {
            "transport" => ErrorCategory::Transport,
            "authentication" => ErrorCategory::Authentication,
            "validation" => ErrorCategory::Validation,
            "business" => ErrorCategory::Business,
            "server" => ErrorCategory::Server,
            "rate_limit" => ErrorCategory::RateLimit,
            _ => return None,
        })
    }
}

/// An envelope field, named as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Id,
    Type,
    Version,
    Timestamp,
    Source,
    ConversationId,
    CorrelationId,
    SenderId,
    Payload,
    Position,
    Sequence,
}

impl Field {
    /// The field's JSON key.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Id => "id",
            Field::Type => "type",
            Field::Version => "version",
            Field::Timestamp => "timestamp",
            Field::Source => "source",
            Field::ConversationId => "conversationId",
            Field::CorrelationId => "correlationId",
            Field::SenderId => "senderId",
            Field::Payload => "payload",
            Field::Position => "position",
            Field::Sequence => "sequence",
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can be wrong with an incoming frame, precisely enough to tell the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame of {len} bytes is over the limit of {limit} bytes")]
    FrameTooLarge { len: usize, limit: usize },
    #[error("binary frames are not supported; send JSON text frames")]
    BinaryFrame,
    #[error("not valid JSON: {0}")]
    NotJson(String),
    #[error("the frame must be a JSON object")]
    NotAnObject,
    #[error("missing field `{0}`")]
    MissingField(Field),
    #[error("field `{0}` appears more than once")]
    DuplicateField(Field),
    #[error("field `{field}` must be {expected}")]
    WrongFieldType { field: Field, expected: &'static str },
    #[error("field `{field}` {error}")]
    InvalidId { field: Field, error: IdError },
    #[error("invalid `type` {message_type:?}: {error}")]
    InvalidMessageType { message_type: String, error: MessageTypeError },
    #[error("unsupported protocol version {0:?} (this server speaks \"1.0\")")]
    UnsupportedVersion(String),
    #[error("invalid `timestamp`: {0}")]
    InvalidTimestamp(TimestampError),
    #[error("invalid `source` {0:?} (expected \"client\" or \"server\")")]
    InvalidSource(String),
    #[error("`payload` must be a JSON object")]
    PayloadNotObject,
    #[error("unknown message type {0:?}")]
    UnknownMessageType(String),
    #[error("invalid payload for {message_type}: {detail}")]
    InvalidPayload { message_type: String, detail: String },
}

impl ProtocolError {
    /// The `system.error` code the server sends for this fault.
    pub fn code(&self) -> &'static str {
        match self {
            ProtocolError::FrameTooLarge { .. } => codes::MESSAGE_TOO_LARGE,
            ProtocolError::BinaryFrame => codes::UNSUPPORTED_FRAME,
            ProtocolError::UnsupportedVersion(_) => codes::VERSION_MISMATCH,
            ProtocolError::UnknownMessageType(_) => codes::UNKNOWN_MESSAGE_TYPE,
            ProtocolError::InvalidPayload { .. } => codes::INVALID_PAYLOAD,
            _ => codes::INVALID_MESSAGE,
        }
    }

    /// The `system.error` category: every protocol fault is the sender's, so `validation`.
    pub fn category(&self) -> ErrorCategory {
        ErrorCategory::Validation
    }

    /// The close code that ends the connection at once, or `None` when the connection stays
    /// (an `INVALID_MESSAGE` is counted instead, and only a run of them closes with
    /// [`CloseCode::TOO_MANY_INVALID_MESSAGES`]).
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            ProtocolError::FrameTooLarge { .. } => Some(CloseCode::MESSAGE_TOO_BIG),
            ProtocolError::BinaryFrame => Some(CloseCode::UNSUPPORTED_DATA),
            ProtocolError::UnsupportedVersion(_) => Some(CloseCode::VERSION_MISMATCH),
            _ => None,
        }
    }

    /// Whether this fault counts towards the run of invalid frames that closes the connection.
    pub fn counts_as_invalid_frame(&self) -> bool {
        self.code() == codes::INVALID_MESSAGE
    }

    /// The `system.error` payload that tells the sender what was wrong.
    pub fn to_error_payload(&self) -> super::ErrorPayload {
        super::ErrorPayload {
            category: self.category(),
            code: self.code().to_owned(),
            message: self.to_string(),
            details: None,
            is_retryable: false,
            retry_after_ms: None,
        }
    }
}
