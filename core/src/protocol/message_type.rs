//! Message types (`{plane}.{category}.{action}`) and identifiers.

use bytestring::ByteString;
use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};

/// The plane a message type belongs to: its first segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Plane {
    /// Connection management: heartbeat, resume, auth, errors. Handled by switchboard itself.
    System,
    /// Control of the agent host (flow, widgets' lifecycle).
    Control,
    /// Application data (messages, tool results, widget payloads).
    Data,
}

impl Plane {
    /// The plane's name as it appears in a type.
    pub fn as_str(self) -> &'static str {
        match self {
            Plane::System => "system",
            Plane::Control => "control",
            Plane::Data => "data",
        }
    }
}

/// Why a string is not a valid message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageTypeError {
    #[error("must have at least three dot-separated segments ({{plane}}.{{category}}.{{action}})")]
    TooFewSegments,
    #[error("segments must be non-empty and use only ASCII letters, digits, '_' and '-'")]
    BadSegment,
    #[error("unknown plane (expected system, control or data)")]
    UnknownPlane,
    #[error("longer than {} bytes", MessageType::MAX_LEN)]
    TooLong,
}

/// A validated message type such as `system.connection.resume` or `data.widget.submit`.
///
/// At least three segments (two dots), the first a known [`Plane`] (the protocol's own
/// `system.ping`, `system.pong` and `system.error` are the only two-segment types); each segment non-empty and
/// made of ASCII letters, digits, `_` and `-`; at most [`MessageType::MAX_LEN`] bytes. Cheap
/// to clone.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MessageType(ByteString);

impl MessageType {
    /// The longest type accepted, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Validates `text` as a message type.
    pub fn new(text: &str) -> Result<Self, MessageTypeError> {
        Self::check(text)?;
        Ok(MessageType(ByteString::from(text)))
    }

    fn check(text: &str) -> Result<Plane, MessageTypeError> {
        if text.len() > Self::MAX_LEN {
            return Err(MessageTypeError::TooLong);
        }
        let mut segments = 0;
        for segment in text.split('.') {
            segments += 1;
            let ok = !segment.is_empty()
                && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(MessageTypeError::BadSegment);
            }
        }
        if segments < 3 && !TWO_SEGMENT_SYSTEM_TYPES.contains(&text) {
            return Err(MessageTypeError::TooFewSegments);
        }
        plane_of(text).ok_or(MessageTypeError::UnknownPlane)
    }

    /// Validates a type parsed out of `frame`, sharing the frame's bytes instead of copying.
    /// On failure, the text comes back with the error, for the message.
    pub(crate) fn from_frame(
        frame: &ByteString,
        text: Cow<'_, str>,
    ) -> Result<Self, (MessageTypeError, String)> {
        match Self::check(&text) {
            Ok(_) => Ok(MessageType(share(frame, text))),
            Err(error) => Err((error, text.into_owned())),
        }
    }

    /// The type as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The plane, from the first segment.
    pub fn plane(&self) -> Plane {
        // Validated at construction.
        plane_of(&self.0).unwrap_or(Plane::Data)
    }

    /// Whether this is a `system.*` type.
    pub fn is_system(&self) -> bool {
        self.plane() == Plane::System
    }
}

/// The protocol's own exceptions to the three-segment rule.
const TWO_SEGMENT_SYSTEM_TYPES: [&str; 3] = ["system.ping", "system.pong", "system.error"];

fn plane_of(text: &str) -> Option<Plane> {
    match text.split('.').next()? {
        "system" => Some(Plane::System),
        "control" => Some(Plane::Control),
        "data" => Some(Plane::Data),
        _ => None,
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl AsRef<str> for MessageType {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for MessageType {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for MessageType {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("longer than {} bytes", Id::MAX_LEN)]
    TooLong,
    #[error("may hold only ASCII letters, digits and - _ . : @ ~ + = /")]
    BadCharacter,
}

/// An identifier on the wire: a message id, a conversation id, a correlation id. Any non-empty
/// string of at most [`Id::MAX_LEN`] bytes (we generate ULIDs, browsers send UUIDs). Cheap to
/// clone, so the hub can key its maps with it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Id(ByteString);

impl Id {
    /// The longest identifier accepted, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Validates `text` as an identifier.
    pub fn new(text: &str) -> Result<Self, IdError> {
        match text.len() {
            0 => Err(IdError::Empty),
            n if n > Self::MAX_LEN => Err(IdError::TooLong),
            _ => Ok(Id(ByteString::from(text))),
        }
    }

    /// Validates `text` as the name of something the server keys by it: a conversation, a
    /// definition. Stricter than [`Id::new`]: the name ends up in channel names and storage keys
    /// (`sb:{conversation:ID}:…`), so only ASCII letters, digits and `-_.:@~+=/` are allowed
    /// (UUIDs, ULIDs and `org:42`-style names pass; braces, spaces and controls do not).
    pub fn name(text: &str) -> Result<Self, IdError> {
        let ok = |b: u8| b.is_ascii_alphanumeric() || b"-_.:@~+=/".contains(&b);
        if !text.bytes().all(ok) {
            return Err(IdError::BadCharacter);
        }
        Self::new(text)
    }

    /// A ULID from its 48-bit millisecond time and 80 random bits (higher bits are ignored).
    /// The caller supplies both: the core has no clock and no OS randomness.
    pub fn ulid(unix_ms: u64, random: u128) -> Self {
        let ulid = ulid::Ulid::from_parts(unix_ms, random);
        let mut buf = [0u8; ulid::ULID_LEN];
        // `to_str` only fails for a buffer shorter than ULID_LEN.
        let text = ulid.array_to_str(&mut buf);
        Id(ByteString::from(&*text))
    }

    /// Validates an identifier parsed out of `frame`, sharing the frame's bytes.
    pub(crate) fn from_frame(frame: &ByteString, text: Cow<'_, str>) -> Result<Self, IdError> {
        match text.len() {
            0 => Err(IdError::Empty),
            n if n > Self::MAX_LEN => Err(IdError::TooLong),
            _ => Ok(Id(share(frame, text))),
        }
    }

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `text`, taken from `frame` without a copy when it is a slice of it (an unescaped JSON
/// string), else copied.
pub(crate) fn share(frame: &ByteString, text: Cow<'_, str>) -> ByteString {
    match text {
        Cow::Borrowed(s) if is_within(frame, s) => frame.slice_ref(s),
        other => ByteString::from(other.into_owned()),
    }
}

fn is_within(frame: &str, s: &str) -> bool {
    let start = frame.as_ptr() as usize;
    let at = s.as_ptr() as usize;
    at >= start && at + s.len() <= start + frame.len()
}

// Hashed as `str`, so that `Borrow<str>` lookups in maps agree.
impl Hash for Id {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Hash for MessageType {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl AsRef<str> for Id {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Id {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Id {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Id {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Id::new(&text).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for MessageType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for MessageType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        MessageType::new(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_types_and_their_planes() {
        assert_eq!(MessageType::new("system.ping").unwrap().plane(), Plane::System);
        assert_eq!(MessageType::new("control.flow.pause").unwrap().plane(), Plane::Control);
        assert_eq!(MessageType::new("data.widget.form-submit.v2").unwrap().plane(), Plane::Data);
        assert!(MessageType::new("system.connection.resume").unwrap().is_system());
    }

    #[test]
    fn invalid_types() {
        use MessageTypeError::*;
        assert_eq!(MessageType::new("system.hello"), Err(TooFewSegments));
        assert_eq!(MessageType::new("data.message"), Err(TooFewSegments));
        assert!(MessageType::new("system.ping").is_ok());
        assert!(MessageType::new("system.error").is_ok());
        assert_eq!(MessageType::new("data"), Err(TooFewSegments));
        assert_eq!(MessageType::new("chat.message.send"), Err(UnknownPlane));
        assert_eq!(MessageType::new("data..send"), Err(BadSegment));
        assert_eq!(MessageType::new("data.message.send "), Err(BadSegment));
        assert_eq!(MessageType::new("data.message.*"), Err(BadSegment));
        assert_eq!(MessageType::new(""), Err(BadSegment));
        assert_eq!(MessageType::new(&format!("data.x.{}", "a".repeat(200))), Err(TooLong));
    }

    #[test]
    fn ids() {
        assert_eq!(Id::new(""), Err(IdError::Empty));
        assert_eq!(Id::new(&"x".repeat(129)), Err(IdError::TooLong));
        assert!(Id::new(&"x".repeat(128)).is_ok());
        let ulid = Id::ulid(1_766_053_800_000, 0x1234_5678_9abc_def0_1234);
        assert_eq!(ulid.as_str().len(), 26);
        assert_eq!(ulid, Id::ulid(1_766_053_800_000, 0x1234_5678_9abc_def0_1234));
        assert!(Id::ulid(1, 0) < Id::ulid(2, 0), "ULIDs sort by time");
    }

    #[test]
    fn names_are_ids_of_a_safe_alphabet() {
        for good in ["conv-1", "6f1c2d3e-aaaa-4bbb-8ccc-000011112222", "org:42/c_1.x@y~z+w=v"] {
            assert_eq!(Id::name(good).map(|id| id.as_str().to_owned()), Ok(good.to_owned()));
        }
        for bad in ["a}b", "a{b", "a b", "a\nb", "é", "a\"b"] {
            assert_eq!(Id::name(bad), Err(IdError::BadCharacter), "{bad:?}");
        }
        assert_eq!(Id::name(""), Err(IdError::Empty));
        assert_eq!(Id::name(&"x".repeat(129)), Err(IdError::TooLong));
    }
}
