//! One encoding of a message shared by every recipient.

use super::{Envelope, Position};
use bytes::Bytes;
use std::sync::Arc;

const SEQUENCE_KEY: &[u8] = b",\"sequence\":";

/// An envelope encoded once, without `sequence`, to be sent to many sessions.
///
/// Each recipient's frame differs only in its `sequence`, which the encoding puts last, so a
/// recipient's frame is this encoding with its closing `}` replaced by `,"sequence":N}`: a short
/// copy, never a per-recipient JSON encoding. Cloning is a reference-count increment.
///
/// One pointer wide, not a `Bytes` (four): every session's replay buffer holds a clone of each
/// message it got, so fan-out writes one slot per recipient into memory no other recipient
/// touches, and a slot a quarter the size costs a quarter of the cache misses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFrame(Arc<Bytes>);

impl SharedFrame {
    /// Encodes `envelope` without its sequence.
    pub fn encode(envelope: &Envelope) -> Self {
        if envelope.sequence.is_none() {
            return SharedFrame(Arc::new(Bytes::from(envelope.encode())));
        }
        let mut unsequenced = envelope.clone();
        unsequenced.sequence = None;
        SharedFrame(Arc::new(Bytes::from(unsequenced.encode())))
    }

    /// Wraps bytes that are already such an encoding (from another instance). Returns `None`
    /// if they do not end in `}`.
    pub fn from_encoded(bytes: Bytes) -> Option<Self> {
        bytes.ends_with(b"}").then(|| SharedFrame(Arc::new(bytes)))
    }

    /// This frame with `position` added (it must have none): done once per message and
    /// instance, when the channel gives the message its place, not per recipient.
    pub fn with_position(&self, position: &Position) -> SharedFrame {
        const KEY: &[u8] = b",\"position\":";
        let body = &self.0[..self.0.len().saturating_sub(1)];
        let position = position.to_json();
        let mut frame = Vec::with_capacity(body.len() + KEY.len() + position.len() + 1);
        frame.extend_from_slice(body);
        frame.extend_from_slice(KEY);
        frame.extend_from_slice(position.as_bytes());
        frame.push(b'}');
        SharedFrame(Arc::new(Bytes::from(frame)))
    }

    /// The frame without a sequence.
    pub fn unsequenced(&self) -> Bytes {
        Bytes::clone(&self.0)
    }

    /// The frame for a recipient whose sequence for it is `sequence`, as one buffer (an
    /// adapter that can write several slices at once writes [`Self::body`] and
    /// [`Self::write_sequence_suffix`] instead, and never copies the body).
    pub fn with_sequence(&self, sequence: u64) -> Bytes {
        let body = self.body();
        // Exactly the length: a `Vec` whose capacity equals its length becomes a `Bytes`
        // without a second allocation (and drops without an atomic reference count).
        let mut frame = Vec::with_capacity(body.len() + Self::sequence_suffix_len(sequence));
        frame.extend_from_slice(body);
        Self::write_sequence_suffix(sequence, &mut frame);
        debug_assert_eq!(frame.len(), frame.capacity());
        Bytes::from(frame)
    }

    /// What every recipient's frame starts with: the encoding without its closing `}`.
    pub fn body(&self) -> &[u8] {
        &self.0[..self.0.len().saturating_sub(1)]
    }

    /// Appends what a recipient's frame ends with after [`Self::body`]: `,"sequence":N}`.
    pub fn write_sequence_suffix(sequence: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(SEQUENCE_KEY);
        super::envelope::write_u64(out, sequence);
        out.push(b'}');
    }

    /// The length of the frame for a recipient whose sequence for it is `sequence`.
    pub fn len_with_sequence(&self, sequence: u64) -> usize {
        self.body().len() + Self::sequence_suffix_len(sequence)
    }

    /// The length of [`Self::write_sequence_suffix`]'s bytes.
    pub fn sequence_suffix_len(sequence: u64) -> usize {
        SEQUENCE_KEY.len() + sequence.checked_ilog10().unwrap_or(0) as usize + 2
    }

    /// The encoded length without a sequence.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true for a real encoding; here for completeness.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MessageType, Payload, Source, Timestamp};

    #[test]
    fn splicing_equals_encoding_with_the_sequence() {
        let envelope = Envelope::create(
            Source::Server,
            MessageType::new("data.message.created").unwrap(),
            Payload::from_json(r#"{"text":"hi","n":[1,{"sequence":2}]}"#).unwrap(),
            Timestamp::UNIX_EPOCH,
            9,
        );
        let shared = SharedFrame::encode(&envelope.clone().with_sequence(5));
        for seq in [0, 1, 9, 10, 12345, u64::MAX] {
            assert_eq!(
                &shared.with_sequence(seq)[..],
                &envelope.clone().with_sequence(seq).encode()[..]
            );
        }
        assert_eq!(&shared.unsequenced()[..], &envelope.encode()[..]);
    }

    #[test]
    fn a_spliced_position_equals_encoding_with_it() {
        let envelope = Envelope::create(
            Source::Server,
            MessageType::new("data.message.created").unwrap(),
            Payload::from_json(r#"{"position":1}"#).unwrap(),
            Timestamp::UNIX_EPOCH,
            9,
        );
        let position =
            Position { channel: "conversation:c-1".into(), epoch: "e1".into(), offset: 7 };
        let spliced = SharedFrame::encode(&envelope).with_position(&position).with_sequence(3);
        let mut positioned = envelope.clone().with_sequence(3);
        positioned.position = Some(position);
        assert_eq!(&spliced[..], &positioned.encode()[..]);
        assert_eq!(Envelope::parse(&spliced, usize::MAX).unwrap(), positioned);
    }
}
