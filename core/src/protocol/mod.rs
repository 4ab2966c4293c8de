//! Protocol v1 on the wire: everything about bytes, nothing about behaviour.
//!
//! A frame is a JSON text frame holding one [`Envelope`]:
//!
//! ```
//! use switchboard_core::protocol::{Envelope, DEFAULT_MAX_FRAME_BYTES, Source};
//!
//! let frame = br#"{"id":"6f1c","type":"data.message.send","version":"1.0",
//!     "timestamp":"2025-12-18T10:30:00.000Z","source":"client","payload":{"text":"hi"}}"#;
//! let envelope = Envelope::parse(frame, DEFAULT_MAX_FRAME_BYTES).unwrap();
//! assert_eq!(envelope.message_type, "data.message.send");
//! assert_eq!(envelope.source, Source::Client);
//! assert_eq!(Envelope::parse(&envelope.encode(), DEFAULT_MAX_FRAME_BYTES).unwrap(), envelope);
//! ```
//!
//! Every way a frame can be wrong is a [`ProtocolError`], which knows the `system.error` code
//! and the close code the server answers with. [`SystemMessage`] types the payloads of the
//! `system.*` messages; `control.*` and `data.*` payloads stay raw JSON ([`Payload`]) for the
//! application to type. [`CloseCode`] names every close code and tells a client whether to
//! reconnect. [`type_matches`] is the one definition of type patterns (`data.*`).

mod close_code;
mod envelope;
mod error;
pub mod json;
mod message_type;
mod pattern;
mod position;
mod shared_frame;
mod system;
mod timestamp;

pub use close_code::{CloseCode, ReconnectAdvice};
pub use envelope::{DEFAULT_MAX_FRAME_BYTES, Envelope, PROTOCOL_VERSION, Payload, Source};
pub use error::{ErrorCategory, Field, ProtocolError, codes};
pub use message_type::{Id, IdError, MessageType, MessageTypeError, Plane};
pub use pattern::{PatternError, Specificity, TypePattern, type_matches};
pub use position::Position;
pub use shared_frame::SharedFrame;
pub use system::{
    AuthRefresh, AuthRefreshed, ChannelReset, ClientScreenState, CloseReason, ConnectionClose,
    ConnectionEstablished, ConnectionResume, ConnectionResumed, ErrorPayload, Heartbeat,
    SystemMessage, types,
};
pub use timestamp::{Timestamp, TimestampError};
