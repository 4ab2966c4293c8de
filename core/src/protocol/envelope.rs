//! The envelope every message travels in, parsed from and encoded to a text frame's bytes.

use super::json;
use super::message_type::share;
use super::{Field, Id, MessageType, Position, ProtocolError, Timestamp};
use bytes::Bytes;
use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::{borrow::Cow, fmt};

/// The only protocol version spoken.
pub const PROTOCOL_VERSION: &str = "1.0";

/// The default limit on a frame's size, in bytes.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

/// Which side sent a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Client,
    Server,
}

impl Source {
    fn parse(text: &str) -> Option<Source> {
        match text {
            "client" => Some(Source::Client),
            "server" => Some(Source::Server),
            _ => None,
        }
    }
}

/// A message's payload: a JSON object, kept as its raw text.
///
/// Payloads are routed far more often than they are read, so they are not turned into a tree
/// on parse; a handler that wants the contents parses them into its own type with
/// [`Payload::parse`]. A payload parsed from a frame shares the frame's bytes (no copy). Two
/// payloads are equal when their text is.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload(ByteString);

impl Payload {
    /// `{}`.
    pub fn empty() -> Self {
        Payload(ByteString::from_static("{}"))
    }

    /// Encodes `value`, which must serialise to a JSON object.
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<Self, ProtocolError> {
        let text =
            serde_json::to_string(value).map_err(|e| ProtocolError::NotJson(e.to_string()))?;
        Self::checked(ByteString::from(text))
    }

    /// Takes JSON text, which must be an object (surrounding whitespace is dropped).
    pub fn from_json(text: &str) -> Result<Self, ProtocolError> {
        if !json::is_valid(text) {
            return Err(ProtocolError::NotJson("the payload is not valid JSON".into()));
        }
        Self::checked(ByteString::from(text.trim_matches([' ', '\t', '\n', '\r'])))
    }

    /// Text that is known to be one JSON object (what [`super::json::ObjectWriter`] wrote).
    pub(crate) fn from_object_text(text: String) -> Self {
        debug_assert!(text.starts_with('{') && super::json::is_valid(&text));
        Payload(ByteString::from(text))
    }

    fn checked(text: ByteString) -> Result<Self, ProtocolError> {
        if text.starts_with('{') { Ok(Payload(text)) } else { Err(ProtocolError::PayloadNotObject) }
    }

    /// Parses the payload into `T`.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// The payload's JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Payload {
    /// From any JSON object, kept as its text.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <&RawValue>::deserialize(deserializer)?;
        Payload::checked(ByteString::from(raw.get())).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Payload {
    /// As the JSON it is, not as a string.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue = serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// One protocol message.
///
/// Parsed with [`Envelope::parse`], which checks every rule of the wire protocol, and encoded
/// with [`Envelope::encode`]. Unknown fields are ignored on parse; `version` is always
/// [`PROTOCOL_VERSION`] and so is not stored. `sequence` is encoded last, so the encoding of a
/// broadcast can be shared by all its recipients and each given its own sequence by appending.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique id of this message.
    pub id: Id,
    /// `{plane}.{category}.{action}`.
    pub message_type: MessageType,
    /// When the message was created (wall clock).
    pub timestamp: Timestamp,
    /// Who sent it.
    pub source: Source,
    /// The conversation it belongs to, if any. `null` and `""` on the wire both mean none.
    pub conversation_id: Option<Id>,
    /// For a reply: the id of the message it answers.
    pub correlation_id: Option<Id>,
    /// Ours, server to client: the user whose client message this is (the relay sets it; a
    /// value a client sends is not trusted and is replaced).
    pub sender_id: Option<Id>,
    /// The type's payload.
    pub payload: Payload,
    /// Ours, server to client: where the message sits in the channel it went through (none
    /// for a message to one connection). The same for every recipient, so it is part of the
    /// shared encoding.
    pub position: Option<Position>,
    /// Server to client only: the per-session sequence number, from 1 and strictly increasing.
    pub sequence: Option<u64>,
}

impl Envelope {
    /// Builds a new message (the Phase 1 plan's `createMessage`): a fresh ULID id from
    /// `timestamp` and `random` (80 bits are used), with no conversation, correlation or
    /// sequence. The caller supplies the time and the random bits; the core has neither.
    pub fn create(
        source: Source,
        message_type: MessageType,
        payload: Payload,
        timestamp: Timestamp,
        random: u128,
    ) -> Self {
        let ulid_ms = u64::try_from(timestamp.unix_ms()).unwrap_or(0);
        Envelope {
            id: Id::ulid(ulid_ms, random),
            message_type,
            timestamp,
            source,
            conversation_id: None,
            correlation_id: None,
            sender_id: None,
            payload,
            position: None,
            sequence: None,
        }
    }

    /// Sets the conversation.
    pub fn in_conversation(mut self, conversation_id: Option<Id>) -> Self {
        self.conversation_id = conversation_id;
        self
    }

    /// Marks the message as the reply to message `request_id`.
    pub fn replying_to(mut self, request_id: Id) -> Self {
        self.correlation_id = Some(request_id);
        self
    }

    /// Sets the sequence number.
    pub fn with_sequence(mut self, sequence: u64) -> Self {
        self.sequence = Some(sequence);
        self
    }

    /// Parses and validates one text frame.
    ///
    /// Checks, in order: the size limit; JSON; an object; `version` (so that a newer client
    /// hears `VERSION_MISMATCH` rather than complaints about fields it may have renamed); then
    /// each field in wire order. Never panics, whatever the bytes.
    pub fn parse(frame: &[u8], max_frame_bytes: usize) -> Result<Envelope, ProtocolError> {
        if frame.len() > max_frame_bytes {
            return Err(ProtocolError::FrameTooLarge { len: frame.len(), limit: max_frame_bytes });
        }
        Self::parse_shared(Bytes::copy_from_slice(frame), max_frame_bytes)
    }

    /// [`Envelope::parse`] for a frame already in a [`Bytes`]: the envelope's strings and
    /// payload are slices of it, not copies (so keeping the envelope keeps the frame).
    pub fn parse_shared(frame: Bytes, max_frame_bytes: usize) -> Result<Envelope, ProtocolError> {
        if frame.len() > max_frame_bytes {
            return Err(ProtocolError::FrameTooLarge { len: frame.len(), limit: max_frame_bytes });
        }
        let frame = ByteString::try_from(frame)
            .map_err(|_| ProtocolError::NotJson("the frame is not valid UTF-8".to_owned()))?;
        let fields = json::object_fields(&frame)
            .map_err(|_| ProtocolError::NotJson("the frame is not valid JSON".to_owned()))?;
        let raw = match fields {
            Some(fields) => RawEnvelope::from_fields(fields),
            None => RawEnvelope::not_an_object(),
        };
        raw.validate(&frame)
    }

    /// Appends the JSON encoding to `out`, fields in wire order, `sequence` last.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"id\":");
        json_string(out, self.id.as_str());
        out.extend_from_slice(b",\"type\":");
        json_string(out, self.message_type.as_str());
        out.extend_from_slice(b",\"version\":\"1.0\",\"timestamp\":\"");
        out.extend_from_slice(self.timestamp.format(&mut [0; Timestamp::CANONICAL_LEN]).as_bytes());
        out.extend_from_slice(match self.source {
            Source::Client => b"\",\"source\":\"client\"",
            Source::Server => b"\",\"source\":\"server\"",
        });
        if let Some(id) = &self.conversation_id {
            out.extend_from_slice(b",\"conversationId\":");
            json_string(out, id.as_str());
        }
        if let Some(id) = &self.correlation_id {
            out.extend_from_slice(b",\"correlationId\":");
            json_string(out, id.as_str());
        }
        if let Some(id) = &self.sender_id {
            out.extend_from_slice(b",\"senderId\":");
            json_string(out, id.as_str());
        }
        out.extend_from_slice(b",\"payload\":");
        out.extend_from_slice(self.payload.as_str().as_bytes());
        if let Some(position) = &self.position {
            out.extend_from_slice(b",\"position\":");
            out.extend_from_slice(position.to_json().as_bytes());
        }
        if let Some(sequence) = self.sequence {
            out.extend_from_slice(b",\"sequence\":");
            write_u64(out, sequence);
        }
        out.push(b'}');
    }

    /// The JSON encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + self.payload.as_str().len());
        self.encode_into(&mut out);
        out
    }
}

impl fmt::Debug for Envelope {
    /// The payload of `system.auth.refresh` holds a token: never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Envelope");
        s.field("id", &self.id)
            .field("type", &self.message_type)
            .field("timestamp", &self.timestamp)
            .field("source", &self.source)
            .field("conversation_id", &self.conversation_id)
            .field("correlation_id", &self.correlation_id)
            .field("sender_id", &self.sender_id);
        if self.message_type == super::types::AUTH_REFRESH {
            s.field("payload", &"<redacted>");
        } else {
            s.field("payload", &self.payload);
        }
        s.field("position", &self.position).field("sequence", &self.sequence).finish()
    }
}

/// Appends the decimal digits of `n`.
pub(crate) fn write_u64(out: &mut Vec<u8>, n: u64) {
    json::write_u64(out, n);
}

/// Appends `s` as a JSON string literal.
fn json_string(out: &mut Vec<u8>, s: &str) {
    json::write_string(out, s);
}

/// A field's value before validation: what the wire had, so that a wrong type can be reported
/// for the field it is in.
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Unsigned(u64),
    Null,
    Other,
}

impl<'a> Scalar<'a> {
    fn read(raw: &'a str) -> Self {
        if raw == "null" {
            return Scalar::Null;
        }
        if let Some(s) = json::string(raw) {
            return Scalar::Str(s);
        }
        json::unsigned(raw).map_or(Scalar::Other, Scalar::Unsigned)
    }
}

/// The fields of a frame as found, before validation.
#[derive(Default)]
struct RawEnvelope<'a> {
    not_an_object: bool,
    duplicate: Option<Field>,
    id: Option<Scalar<'a>>,
    message_type: Option<Scalar<'a>>,
    version: Option<Scalar<'a>>,
    timestamp: Option<Scalar<'a>>,
    source: Option<Scalar<'a>>,
    conversation_id: Option<Scalar<'a>>,
    correlation_id: Option<Scalar<'a>>,
    sender_id: Option<Scalar<'a>>,
    payload: Option<&'a str>,
    position: Option<&'a str>,
    sequence: Option<Scalar<'a>>,
}

/// The envelope field a key names, if any.
fn field(key: &str) -> Option<Field> {
    Some(match key {
        "id" => Field::Id,
        "type" => Field::Type,
        "version" => Field::Version,
        "timestamp" => Field::Timestamp,
        "source" => Field::Source,
        "conversationId" => Field::ConversationId,
        "correlationId" => Field::CorrelationId,
        "senderId" => Field::SenderId,
        "payload" => Field::Payload,
        "position" => Field::Position,
        "sequence" => Field::Sequence,
        _ => return None,
    })
}

impl<'a> RawEnvelope<'a> {
    fn not_an_object() -> Self {
        RawEnvelope { not_an_object: true, ..RawEnvelope::default() }
    }

    /// The envelope fields among an object's `(key, raw value)` pairs; others are ignored.
    fn from_fields(fields: Vec<(Cow<'a, str>, &'a str)>) -> Self {
        let mut raw = RawEnvelope::default();
        for (key, value) in fields {
            let Some(field) = field(&key) else { continue };
            let seen = match field {
                Field::Payload => raw.payload.replace(value).is_some(),
                Field::Position => raw.position.replace(value).is_some(),
                Field::Id => raw.id.replace(Scalar::read(value)).is_some(),
                Field::Type => raw.message_type.replace(Scalar::read(value)).is_some(),
                Field::Version => raw.version.replace(Scalar::read(value)).is_some(),
                Field::Timestamp => raw.timestamp.replace(Scalar::read(value)).is_some(),
                Field::Source => raw.source.replace(Scalar::read(value)).is_some(),
                Field::ConversationId => raw.conversation_id.replace(Scalar::read(value)).is_some(),
                Field::CorrelationId => raw.correlation_id.replace(Scalar::read(value)).is_some(),
                Field::SenderId => raw.sender_id.replace(Scalar::read(value)).is_some(),
                Field::Sequence => raw.sequence.replace(Scalar::read(value)).is_some(),
            };
            if seen && raw.duplicate.is_none() {
                raw.duplicate = Some(field);
            }
        }
        raw
    }

    fn validate(self, frame: &ByteString) -> Result<Envelope, ProtocolError> {
        if self.not_an_object {
            return Err(ProtocolError::NotAnObject);
        }
        if let Some(field) = self.duplicate {
            return Err(ProtocolError::DuplicateField(field));
        }
        // Version first: a client of another version deserves to hear that, not a complaint
        // about a field it may have renamed.
        match self.version {
            Some(Scalar::Str(v)) if v == PROTOCOL_VERSION => {}
            Some(Scalar::Str(v)) => return Err(ProtocolError::UnsupportedVersion(v.into_owned())),
            Some(_) => return Err(wrong_type(Field::Version, "a string")),
            None => return Err(ProtocolError::MissingField(Field::Version)),
        }
        let id = required_str(Field::Id, self.id)?;
        let id = Id::from_frame(frame, id)
            .map_err(|error| ProtocolError::InvalidId { field: Field::Id, error })?;
        let message_type = required_str(Field::Type, self.message_type)?;
        let message_type =
            MessageType::from_frame(frame, message_type).map_err(|(error, message_type)| {
                ProtocolError::InvalidMessageType { message_type, error }
            })?;
        let timestamp = required_str(Field::Timestamp, self.timestamp)?;
        let timestamp = Timestamp::parse(&timestamp).map_err(ProtocolError::InvalidTimestamp)?;
        let source = required_str(Field::Source, self.source)?;
        let source = Source::parse(&source)
            .ok_or_else(|| ProtocolError::InvalidSource(source.into_owned()))?;
        let conversation_id = optional_id(frame, Field::ConversationId, self.conversation_id)?;
        let correlation_id = optional_id(frame, Field::CorrelationId, self.correlation_id)?;
        let sender_id = optional_id(frame, Field::SenderId, self.sender_id)?;
        let payload = self.payload.ok_or(ProtocolError::MissingField(Field::Payload))?;
        if !payload.starts_with('{') {
            return Err(ProtocolError::PayloadNotObject);
        }
        let position = match self.position {
            None | Some("null") => None,
            Some(raw) => Some(Position::read(raw).ok_or_else(|| {
                wrong_type(Field::Position, "an object {channel, epoch, offset}")
            })?),
        };
        let sequence = match self.sequence {
            None | Some(Scalar::Null) => None,
            Some(Scalar::Unsigned(n)) => Some(n),
            Some(_) => return Err(wrong_type(Field::Sequence, "a non-negative integer")),
        };
        Ok(Envelope {
            id,
            message_type,
            timestamp,
            source,
            conversation_id,
            correlation_id,
            sender_id,
            payload: Payload(share(frame, Cow::Borrowed(payload))),
            position,
            sequence,
        })
    }
}

fn wrong_type(field: Field, expected: &'static str) -> ProtocolError {
    ProtocolError::WrongFieldType { field, expected }
}

fn required_str(field: Field, value: Option<Scalar<'_>>) -> Result<Cow<'_, str>, ProtocolError> {
    match value {
        Some(Scalar::Str(s)) => Ok(s),
        Some(_) => Err(wrong_type(field, "a string")),
        None => Err(ProtocolError::MissingField(field)),
    }
}

/// An optional id: absent, `null` and `""` all mean none.
fn optional_id(
    frame: &ByteString,
    field: Field,
    value: Option<Scalar<'_>>,
) -> Result<Option<Id>, ProtocolError> {
    match value {
        None | Some(Scalar::Null) => Ok(None),
        Some(Scalar::Str(s)) if s.is_empty() => Ok(None),
        Some(Scalar::Str(s)) => Id::from_frame(frame, s)
            .map(Some)
            .map_err(|error| ProtocolError::InvalidId { field, error }),
        Some(_) => Err(wrong_type(field, "a string or null")),
    }
}
