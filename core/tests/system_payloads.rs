//! The `system.*` payloads are read and written by hand (no serde: see `protocol::json`); the
//! serde derives on the same types are the reference. Both directions must agree with them for
//! any value.

use proptest::prelude::*;
use switchboard_core::protocol::{
    AuthRefresh, AuthRefreshed, ChannelReset, ClientScreenState, CloseReason, ConnectionClose,
    ConnectionEstablished, ConnectionResume, ConnectionResumed, Envelope, ErrorCategory,
    ErrorPayload, Heartbeat, Id, Payload, Position, Source, SystemMessage, Timestamp,
};

fn id() -> impl Strategy<Value = Id> {
    "[a-zA-Z0-9\\-]{1,40}".prop_map(|s| Id::new(&s).unwrap())
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,16}"
}

fn position() -> impl Strategy<Value = Position> {
    ("[a-z]{1,8}:\\PC{1,12}", "[a-z0-9]{1,10}", any::<u64>())
        .prop_map(|(channel, epoch, offset)| Position { channel, epoch, offset })
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    (0i64..253_402_300_799_000).prop_map(|ms| Timestamp::from_unix_ms(ms).unwrap())
}

fn message() -> impl Strategy<Value = SystemMessage> {
    let established = (
        id(),
        text(),
        text(),
        proptest::option::of(text()),
        any::<bool>(),
        timestamp(),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(c, conv, user, def, resuming, t, hb, rw)| {
            SystemMessage::ConnectionEstablished(ConnectionEstablished {
                connection_id: c,
                conversation_id: conv,
                user_id: user,
                definition_id: def,
                resuming,
                server_time: t,
                heartbeat_interval_ms: hb,
                resume_window_ms: rw,
            })
        });
    let resume = (
        text(),
        proptest::option::of(text()),
        proptest::option::of(any::<i64>()),
        proptest::collection::vec(text(), 0..3),
        proptest::option::of(text()),
        proptest::option::of(id()),
        proptest::option::of(any::<u64>()),
        proptest::collection::vec(position(), 0..3),
    )
        .prop_map(|(conv, last_id, index, widgets, input, connection, seq, positions)| {
            SystemMessage::ConnectionResume(ConnectionResume {
                conversation_id: conv,
                last_message_id: last_id,
                last_item_index: index,
                client_state: ClientScreenState {
                    pending_widget_ids: widgets,
                    input_content: input,
                },
                connection_id: connection,
                last_sequence: seq,
                positions,
            })
        });
    let resumed = (
        text(),
        proptest::option::of(text()),
        proptest::option::of(any::<i64>()),
        any::<u64>(),
        any::<bool>(),
        proptest::option::of(id()),
    )
        .prop_map(|(conv, from, index, missed, valid, connection)| {
            SystemMessage::ConnectionResumed(ConnectionResumed {
                conversation_id: conv,
                resumed_from_message_id: from,
                current_item_index: index,
                missed_messages: missed,
                state_valid: valid,
                connection_id: connection,
            })
        });
    let reason = prop::sample::select(vec![
        CloseReason::UserLogout,
        CloseReason::SessionExpired,
        CloseReason::ServerShutdown,
        CloseReason::ConversationComplete,
        CloseReason::IdleTimeout,
    ]);
    let close = (reason, any::<u16>(), proptest::option::of(any::<u64>())).prop_map(
        |(reason, code, retry)| {
            SystemMessage::ConnectionClose(ConnectionClose { reason, code, retry_after_ms: retry })
        },
    );
    let category = prop::sample::select(vec![
        ErrorCategory::Transport,
        ErrorCategory::Authentication,
        ErrorCategory::Validation,
        ErrorCategory::Business,
        ErrorCategory::Server,
        ErrorCategory::RateLimit,
    ]);
    let error = (
        category,
        text(),
        text(),
        proptest::option::of(text().prop_map(|t| {
            Payload::from_json(&serde_json::json!({ "why": t, "n": [1, 2] }).to_string()).unwrap()
        })),
        any::<bool>(),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(category, code, message, details, retryable, retry)| {
            SystemMessage::Error(ErrorPayload {
                category,
                code,
                message,
                details,
                is_retryable: retryable,
                retry_after_ms: retry,
            })
        });
    let reset =
        (text(), proptest::option::of(text()), text()).prop_map(|(channel, epoch, reason)| {
            SystemMessage::ChannelReset(ChannelReset { channel, epoch, reason })
        });
    prop_oneof![
        established,
        reset,
        timestamp().prop_map(|t| SystemMessage::Ping(Heartbeat { timestamp: t })),
        timestamp().prop_map(|t| SystemMessage::Pong(Heartbeat { timestamp: t })),
        resume,
        resumed,
        close,
        text().prop_map(|token| SystemMessage::AuthRefresh(AuthRefresh { token })),
        timestamp().prop_map(|t| SystemMessage::AuthRefreshed(AuthRefreshed { expires_at: t })),
        error,
    ]
}

/// The payload as serde writes it.
fn serde_payload(message: &SystemMessage) -> String {
    match message {
        SystemMessage::ConnectionEstablished(p) => serde_json::to_string(p),
        SystemMessage::Ping(p) | SystemMessage::Pong(p) => serde_json::to_string(p),
        SystemMessage::ConnectionResume(p) => serde_json::to_string(p),
        SystemMessage::ConnectionResumed(p) => serde_json::to_string(p),
        SystemMessage::ConnectionClose(p) => serde_json::to_string(p),
        SystemMessage::AuthRefresh(p) => serde_json::to_string(p),
        SystemMessage::AuthRefreshed(p) => serde_json::to_string(p),
        SystemMessage::Error(p) => serde_json::to_string(p),
        SystemMessage::ChannelReset(p) => serde_json::to_string(p),
    }
    .unwrap()
}

/// The payload read back by serde, as the same variant.
fn serde_read(like: &SystemMessage, payload: &str) -> SystemMessage {
    match like {
        SystemMessage::ConnectionEstablished(_) => {
            SystemMessage::ConnectionEstablished(serde_json::from_str(payload).unwrap())
        }
        SystemMessage::Ping(_) => SystemMessage::Ping(serde_json::from_str(payload).unwrap()),
        SystemMessage::Pong(_) => SystemMessage::Pong(serde_json::from_str(payload).unwrap()),
        SystemMessage::ConnectionResume(_) => {
            SystemMessage::ConnectionResume(serde_json::from_str(payload).unwrap())
        }
        SystemMessage::ConnectionResumed(_) => {
            SystemMessage::ConnectionResumed(serde_json::from_str(payload).unwrap())
        }
        SystemMessage::ConnectionClose(_) => {
            SystemMessage::ConnectionClose(serde_json::from_str(payload).unwrap())
        }
        SystemMessage::AuthRefresh(_) => {
            SystemMessage::AuthRefresh(serde_json::from_str(payload).unwrap())
        }
        SystemMessage::AuthRefreshed(_) => {
            SystemMessage::AuthRefreshed(serde_json::from_str(payload).unwrap())
        }
        SystemMessage::Error(_) => SystemMessage::Error(serde_json::from_str(payload).unwrap()),
        SystemMessage::ChannelReset(_) => {
            SystemMessage::ChannelReset(serde_json::from_str(payload).unwrap())
        }
    }
}

fn envelope(message: &SystemMessage, payload: Payload) -> Envelope {
    Envelope::create(Source::Server, message.message_type(), payload, Timestamp::UNIX_EPOCH, 1)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3_000))]

    #[test]
    fn written_by_hand_read_by_serde(message in message()) {
        let payload = message.to_payload();
        prop_assert_eq!(serde_read(&message, payload.as_str()), message);
    }

    #[test]
    fn written_by_serde_read_by_hand(message in message()) {
        let payload = Payload::from_json(&serde_payload(&message)).unwrap();
        prop_assert_eq!(SystemMessage::from_envelope(&envelope(&message, payload)).unwrap(), message);
    }
}

#[test]
fn payloads_that_do_not_fit_name_the_field() {
    let read = |ty: &str, payload: &str| {
        let message = SystemMessage::Ping(Heartbeat { timestamp: Timestamp::UNIX_EPOCH });
        let mut e = envelope(&message, Payload::from_json(payload).unwrap());
        e.message_type = switchboard_core::protocol::MessageType::new(ty).unwrap();
        SystemMessage::from_envelope(&e).map_err(|e| e.to_string())
    };
    let error = read("system.ping", "{}").unwrap_err();
    assert!(error.contains("missing field `timestamp`"), "{error}");
    let error =
        read("system.connection.close", r#"{"reason":"user_logout","code":"x"}"#).unwrap_err();
    assert!(error.contains("`code`"), "{error}");
    let error = read("system.ping", r#"{"timestamp":"2025-12-18T10:30:00.000Z","timestamp":"x"}"#)
        .unwrap_err();
    assert!(error.contains("duplicate field `timestamp`"), "{error}");
    // Unknown fields and nulls for optional ones are fine; an unknown close reason is kept so.
    let close = read(
        "system.connection.close",
        r#"{"reason":"moon_phase","code":4000,"retryAfterMs":null,"x":[1]}"#,
    );
    assert_eq!(
        close.unwrap(),
        SystemMessage::ConnectionClose(ConnectionClose {
            reason: CloseReason::Unknown,
            code: 4000,
            retry_after_ms: None
        })
    );
}
