//! Every file under `fixtures/protocol/` is a test case of the wire protocol: adding a file adds
//! a test. A fixture holds a frame (`frame`, a JSON value sent compactly, or `frameText`, the
//! frame's exact text), an optional `maxFrameBytes`, and what must happen:
//!
//! - `{"ok": true}`: the frame parses; a `system.*` payload parses into its type; encoding and
//!   parsing again gives the same envelope; unless `"canonical": false`, the encoding is the
//!   frame itself (same fields, same values). `timestamp` and `conversationId` may state the
//!   values the parse must produce.
//! - `{"error": kind, "field"?: name, "code": code, "close": closeCode|null}`: parsing (or
//!   typing the system payload) fails with that kind of error, for that field, and the server
//!   answers with that `system.error` code and close code.

use serde_json::{Map, Value};
use switchboard_core::protocol::{
    DEFAULT_MAX_FRAME_BYTES, Envelope, ProtocolError, Source, SystemMessage,
};

fn check_fixture(path: &std::path::Path) -> datatest_stable::Result<()> {
    let fixture: Map<String, Value> = serde_json::from_slice(&std::fs::read(path)?)?;
    let frame: Vec<u8> = match (fixture.get("frame"), fixture.get("frameText")) {
        (Some(value), None) => serde_json::to_vec(value)?,
        (None, Some(Value::String(text))) => text.as_bytes().to_vec(),
        _ => return Err("a fixture has exactly one of `frame` and `frameText`".into()),
    };
    let limit = match fixture.get("maxFrameBytes") {
        Some(n) => n.as_u64().ok_or("maxFrameBytes must be a number")? as usize,
        None => DEFAULT_MAX_FRAME_BYTES,
    };
    let expect = fixture.get("expect").and_then(Value::as_object).ok_or("`expect` missing")?;
    assert!(fixture.get("description").and_then(Value::as_str).is_some_and(|d| !d.is_empty()));

    let outcome = Envelope::parse(&frame, limit).and_then(|envelope| {
        if envelope.message_type.is_system() {
            SystemMessage::from_envelope(&envelope)?;
        }
        Ok(envelope)
    });

    if expect.get("ok") == Some(&Value::Bool(true)) {
        let envelope = outcome.map_err(|e| format!("expected success, got {e:?}"))?;
        let encoded = envelope.encode();
        assert_eq!(Envelope::parse(&encoded, usize::MAX)?, envelope, "encode → parse round trip");
        if expect.get("canonical") != Some(&Value::Bool(false)) {
            let original: Value = serde_json::from_slice(&frame)?;
            let ours: Value = serde_json::from_slice(&encoded)?;
            assert_eq!(ours, original, "our encoding differs from the fixture's frame");
        }
        if let Some(ts) = expect.get("timestamp") {
            assert_eq!(Some(envelope.timestamp.to_string().as_str()), ts.as_str());
        }
        if let Some(conversation) = expect.get("conversationId") {
            assert_eq!(
                envelope.conversation_id.as_ref().map(|c| c.as_str()),
                conversation.as_str()
            );
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let source = if name.starts_with("c2s-") { Source::Client } else { Source::Server };
        assert_eq!(envelope.source, source, "c2s-/s2c- file name prefix and source disagree");
        return Ok(());
    }

    let error = match outcome {
        Ok(envelope) => return Err(format!("expected an error, parsed {envelope:?}").into()),
        Err(error) => error,
    };
    let want = |key: &str| expect.get(key).cloned().unwrap_or(Value::Null);
    assert_eq!(Value::from(kind(&error)), want("error"), "kind of {error:?}");
    assert_eq!(Value::from(error.code()), want("code"), "system.error code of {error:?}");
    assert_eq!(
        error.close_code().map_or(Value::Null, |c| Value::from(c.0)),
        want("close"),
        "close code of {error:?}"
    );
    if let Some(field) = expect.get("field") {
        assert_eq!(Value::from(field_of(&error).ok_or("error names no field")?), *field);
    }
    // Every error explains itself to the sender.
    let payload = error.to_error_payload();
    assert!(!payload.message.is_empty());
    assert_eq!(payload.code, error.code());
    Ok(())
}

fn kind(error: &ProtocolError) -> &'static str {
    match error {
        ProtocolError::FrameTooLarge { .. } => "frame_too_large",
        ProtocolError::BinaryFrame => "binary_frame",
        ProtocolError::NotJson(_) => "not_json",
        ProtocolError::NotAnObject => "not_an_object",
        ProtocolError::MissingField(_) => "missing_field",
        ProtocolError::DuplicateField(_) => "duplicate_field",
        ProtocolError::WrongFieldType { .. } => "wrong_field_type",
        ProtocolError::InvalidId { .. } => "invalid_id",
        ProtocolError::InvalidMessageType { .. } => "invalid_message_type",
        ProtocolError::UnsupportedVersion(_) => "unsupported_version",
        ProtocolError::InvalidTimestamp(_) => "invalid_timestamp",
        ProtocolError::InvalidSource(_) => "invalid_source",
        ProtocolError::PayloadNotObject => "payload_not_object",
        ProtocolError::UnknownMessageType(_) => "unknown_message_type",
        ProtocolError::InvalidPayload { .. } => "invalid_payload",
    }
}

fn field_of(error: &ProtocolError) -> Option<&'static str> {
    match error {
        ProtocolError::MissingField(f)
        | ProtocolError::DuplicateField(f)
        | ProtocolError::WrongFieldType { field: f, .. }
        | ProtocolError::InvalidId { field: f, .. } => Some(f.as_str()),
        _ => None,
    }
}

datatest_stable::harness! {
    { test = check_fixture, root = "../fixtures/protocol", pattern = r"\.json$" },
}
