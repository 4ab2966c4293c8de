//! Properties of the envelope codec over generated inputs.

use proptest::prelude::*;
use serde_json::{Map, Value};
use switchboard_core::protocol::{
    DEFAULT_MAX_FRAME_BYTES, Envelope, Id, MessageType, Payload, Source, Timestamp,
};

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e15f64..1e15).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn payload() -> impl Strategy<Value = Payload> {
    prop::collection::btree_map("\\PC{0,8}", json_value(), 0..6).prop_map(|m| {
        Payload::from_serialize(&m.into_iter().collect::<Map<_, _>>()).expect("an object")
    })
}

/// Identifiers of 1 to 128 bytes, in any script.
fn id() -> impl Strategy<Value = Id> {
    "\\PC{1,40}".prop_filter_map("at most 128 bytes", |s| Id::new(&s).ok())
}

fn message_type() -> impl Strategy<Value = MessageType> {
    prop_oneof![
        "(system|control|data)(\\.[A-Za-z0-9_-]{1,10}){2,4}",
        Just("system.ping".to_owned()),
        Just("system.error".to_owned()),
    ]
    .prop_map(|s| MessageType::new(&s).expect("generated types are valid"))
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    (-62_167_219_200_000i64..=253_402_300_799_999)
        .prop_map(|ms| Timestamp::from_unix_ms(ms).unwrap())
}

prop_compose! {
    fn envelope()(
        source in prop_oneof![Just(Source::Client), Just(Source::Server)],
        message_type in message_type(),
        payload in payload(),
        timestamp in timestamp(),
        random in any::<u128>(),
        id in prop::option::of(id()),
        conversation_id in prop::option::of(id()),
        correlation_id in prop::option::of(id()),
        sender_id in prop::option::of(id()),
        sequence in prop::option::of(any::<u64>()),
    ) -> Envelope {
        let mut envelope = Envelope::create(source, message_type, payload, timestamp, random)
            .in_conversation(conversation_id);
        if let Some(id) = id {
            envelope.id = id;
        }
        envelope.correlation_id = correlation_id;
        envelope.sender_id = sender_id;
        envelope.sequence = sequence;
        envelope
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// For any envelope the core can build, encoding then parsing gives it back.
    #[test]
    fn encode_then_parse_round_trips(envelope in envelope()) {
        let encoded = envelope.encode();
        let parsed = Envelope::parse(&encoded, usize::MAX);
        prop_assert_eq!(parsed.as_ref(), Ok(&envelope));
        // The encoding is canonical: a second round gives the same bytes.
        prop_assert_eq!(parsed.unwrap().encode(), encoded);
    }

    /// `sequence` is always the last field, so a broadcast's encoding can be shared.
    #[test]
    fn sequence_is_encoded_last(envelope in envelope(), sequence in any::<u64>()) {
        let mut without = envelope;
        without.sequence = None;
        let encoded = without.encode();
        prop_assert_eq!(encoded.last(), Some(&b'}'));
        let mut spliced = encoded[..encoded.len() - 1].to_vec();
        spliced.extend_from_slice(format!(",\"sequence\":{sequence}}}").as_bytes());
        let mut with = without;
        with.sequence = Some(sequence);
        prop_assert_eq!(&spliced, &with.encode());
        prop_assert_eq!(Envelope::parse(&spliced, usize::MAX).unwrap(), with);
    }

    /// Any bytes at all: parsing returns, never panics.
    #[test]
    fn parsing_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::parse(&bytes, DEFAULT_MAX_FRAME_BYTES);
    }

    /// Any JSON object with envelope-like keys and arbitrary values: parsing returns a result,
    /// and whatever parses re-encodes to something that parses the same.
    #[test]
    fn parsing_arbitrary_objects_never_panics(
        fields in prop::collection::btree_map(
            prop_oneof![
                Just("id".to_owned()), Just("type".to_owned()), Just("version".to_owned()),
                Just("timestamp".to_owned()), Just("source".to_owned()),
                Just("conversationId".to_owned()), Just("correlationId".to_owned()),
                Just("senderId".to_owned()),
                Just("payload".to_owned()), Just("sequence".to_owned()), "\\PC{0,6}",
            ],
            json_value(),
            0..10,
        )
    ) {
        let frame = serde_json::to_vec(&fields).unwrap();
        if let Ok(envelope) = Envelope::parse(&frame, usize::MAX) {
            prop_assert_eq!(Envelope::parse(&envelope.encode(), usize::MAX), Ok(envelope));
        }
    }
}

#[test]
fn create_builds_a_ulid_and_canonical_timestamp() {
    let at = Timestamp::parse("2025-12-18T10:30:00.000Z").unwrap();
    let ty = MessageType::new("data.message.send").unwrap();
    let a = Envelope::create(Source::Client, ty.clone(), Payload::empty(), at, 7);
    let b = Envelope::create(Source::Client, ty, Payload::empty(), at, 7);
    assert_eq!(a, b, "same inputs, same message");
    assert_eq!(a.id.as_str().len(), 26);
    let text = String::from_utf8(a.encode()).unwrap();
    assert!(text.contains(r#""timestamp":"2025-12-18T10:30:00.000Z""#), "{text}");
    assert!(!text.contains("conversationId"), "absent conversation is omitted: {text}");
    let reply = a.clone().replying_to(a.id.clone());
    assert_eq!(reply.correlation_id.as_ref(), Some(&a.id));
}

/// Pieces of JSON and of almost-JSON.
fn token() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"a\"",
        "\"\\u00e9\"",
        "\"\\ud83d\\ude00\"",
        "\"\\ud800\"",
        "\"\\udc00\"",
        "\"\\x\"",
        "\"\\n\"",
        "\"x",
        "1",
        "-0",
        "0.5",
        "01",
        "1.",
        "-",
        "2e3",
        "true",
        "null",
        "fals",
        " ",
        "\t",
        "\"\u{1}\"",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5_000))]

    /// The protocol's own JSON scanner and serde_json agree on what is JSON.
    #[test]
    fn the_scanner_agrees_with_serde_json(tokens in prop::collection::vec(token(), 0..14)) {
        let text: String = tokens.concat();
        // serde_json also refuses numbers an f64 cannot hold (`2e3101`), which the grammar
        // (and JSON.parse) allows, and stops there: such texts say nothing about agreement.
        let serde = serde_json::from_str::<Value>(&text);
        prop_assume!(!serde.as_ref().is_err_and(|e| e.to_string().starts_with("number out of range")));
        let serde = serde.is_ok();
        prop_assert_eq!(switchboard_core::protocol::json::is_valid(&text), serde, "{:?}", text);
    }

    /// Any JSON value serde_json writes, the scanner reads, and an object's fields come back
    /// as serde_json sees them.
    #[test]
    fn the_scanner_reads_what_serde_json_writes(value in json_value()) {
        let text = value.to_string();
        prop_assert!(switchboard_core::protocol::json::is_valid(&text));
        if let Value::Object(map) = &value {
            let fields = switchboard_core::protocol::json::object_fields(&text).unwrap().unwrap();
            prop_assert_eq!(fields.len(), map.len());
            for (key, raw) in fields {
                prop_assert_eq!(raw, serde_json::to_string(&map[key.as_ref()]).unwrap());
            }
        }
    }
}
