//! The envelope parser on arbitrary bytes: it must return (never panic, hang or blow up), and
//! whatever it accepts must survive encode → parse unchanged, system payloads included.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_core::protocol::{DEFAULT_MAX_FRAME_BYTES, Envelope, SystemMessage, Timestamp};

fuzz_target!(|frame: &[u8]| {
    if let Ok(text) = std::str::from_utf8(frame) {
        if let Ok(ts) = Timestamp::parse(text) {
            assert_eq!(Timestamp::parse(&ts.to_string()), Ok(ts));
        }
    }
    let Ok(envelope) = Envelope::parse(frame, DEFAULT_MAX_FRAME_BYTES) else { return };
    let encoded = envelope.encode();
    let again = Envelope::parse(&encoded, usize::MAX).expect("our own encoding parses");
    assert_eq!(again, envelope, "encode → parse changed the envelope");
    assert_eq!(again.encode(), encoded, "the encoding is not canonical");
    if envelope.message_type.is_system() {
        if let Ok(message) = SystemMessage::from_envelope(&envelope) {
            let payload = message.to_payload();
            let mut retyped = envelope.clone();
            retyped.payload = payload;
            assert_eq!(SystemMessage::from_envelope(&retyped).as_ref(), Ok(&message));
        }
    }
});
