//! The messages a session keeps so that a client that lost its socket can be given what it
//! missed.

use crate::protocol::SharedFrame;
use std::collections::VecDeque;

/// The last sequenced frames of one session, bounded by count and by bytes. When full, the
/// oldest frame is dropped and remembered as a gap, so a later replay that would need it says so
/// instead of leaving a silent hole.
///
/// Sequences are consecutive, so only the first is stored. The oldest frame is dropped before
/// the new one is added: once the ring is full, the new frame goes into the slot just freed,
/// which fan-out to thousands of sessions (each buffer cold in the cache) notices.
#[derive(Debug, Clone, Default)]
pub struct ReplayBuffer {
    frames: VecDeque<SharedFrame>,
    /// The sequence of `frames[0]`.
    first: u64,
    bytes: usize,
    /// The highest sequence dropped to make room (0: none).
    evicted_through: u64,
}

/// A replay that cannot be served without a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap;

impl ReplayBuffer {
    /// Keeps `frame` as sequence `sequence` (one more than the last one kept), dropping the
    /// oldest frames beyond the bounds. A frame larger than `max_bytes` on its own is not kept.
    pub fn push(
        &mut self,
        sequence: u64,
        frame: SharedFrame,
        max_messages: usize,
        max_bytes: usize,
    ) {
        debug_assert!(self.frames.is_empty() || sequence == self.first + self.frames.len() as u64);
        while !self.frames.is_empty()
            && (self.frames.len() >= max_messages || self.bytes + frame.len() > max_bytes)
        {
            self.pop_front();
        }
        if self.frames.is_empty() {
            self.first = sequence;
        }
        if max_messages == 0 || frame.len() > max_bytes {
            self.evicted_through = sequence;
            self.first = sequence + 1;
            return;
        }
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    fn pop_front(&mut self) {
        if let Some(old) = self.frames.pop_front() {
            self.bytes -= old.len();
            self.evicted_through = self.first;
            self.first += 1;
        }
    }

    /// How many frames follow `last_sequence`, or [`Gap`] if some of them were dropped or
    /// `last_sequence` is beyond what was ever sent (`next_sequence` is the next to be given).
    pub fn count_after(&self, last_sequence: u64, next_sequence: u64) -> Result<u64, Gap> {
        if last_sequence < self.evicted_through || last_sequence >= next_sequence {
            return Err(Gap);
        }
        Ok(next_sequence - 1 - last_sequence)
    }

    /// The kept frame with this sequence.
    pub fn get(&self, sequence: u64) -> Option<&SharedFrame> {
        let index = usize::try_from(sequence.checked_sub(self.first)?).ok()?;
        self.frames.get(index)
    }

    /// Frames kept.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(n: usize) -> SharedFrame {
        SharedFrame::from_encoded(Bytes::from(format!("{{\"x\":\"{}\"}}", "a".repeat(n)))).unwrap()
    }

    #[test]
    fn replays_in_order_after_the_last_seen() {
        let mut buffer = ReplayBuffer::default();
        for seq in 1..=5 {
            buffer.push(seq, frame(1), 10, 1000);
        }
        assert_eq!(buffer.count_after(2, 6), Ok(3));
        assert_eq!(buffer.count_after(5, 6), Ok(0));
        assert!(buffer.count_after(6, 6).is_err(), "the client claims more than was sent");
        assert_eq!(buffer.get(3), Some(&frame(1)));
        assert!(buffer.get(3).is_some());
        assert!(buffer.get(0).is_none() && buffer.get(6).is_none());
    }

    #[test]
    fn eviction_by_count_and_bytes_becomes_a_gap() {
        let mut buffer = ReplayBuffer::default();
        for seq in 1..=5 {
            buffer.push(seq, frame(1), 3, 1000);
        }
        assert_eq!(buffer.len(), 3);
        assert!(buffer.count_after(1, 6).is_err(), "2 was evicted");
        assert_eq!(buffer.count_after(2, 6), Ok(3));
        assert!(buffer.get(2).is_none() && buffer.get(3).is_some() && buffer.get(5).is_some());

        let mut small = ReplayBuffer::default();
        small.push(1, frame(10), 100, 30);
        small.push(2, frame(10), 100, 30);
        assert_eq!(small.len(), 1);
        assert!(small.bytes() <= 30);
        assert!(small.count_after(0, 3).is_err());

        let mut tiny = ReplayBuffer::default();
        tiny.push(1, frame(40), 100, 30);
        assert!(tiny.is_empty(), "a frame larger than the whole buffer is not kept");
        assert!(tiny.count_after(0, 2).is_err() && tiny.count_after(1, 2) == Ok(0));
        tiny.push(2, frame(1), 100, 30);
        assert_eq!(tiny.get(2), Some(&frame(1)));
    }
}
