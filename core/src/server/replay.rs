//! The messages a session keeps so that a client that lost its socket can be given what it
//! missed.

use crate::protocol::SharedFrame;
use std::collections::VecDeque;

/// The last sequenced frames of one session, bounded by count and by bytes. When full, the
/// oldest frame is dropped and remembered as a gap, so a later replay that would need it says so
/// instead of leaving a silent hole.
#[derive(Debug, Clone, Default)]
pub struct ReplayBuffer {
    frames: VecDeque<(u64, SharedFrame)>,
    bytes: usize,
    /// The highest sequence dropped to make room (0: none).
    evicted_through: u64,
}

/// A replay that cannot be served without a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap;

impl ReplayBuffer {
    /// Keeps `frame` as sequence `sequence`, dropping the oldest frames beyond the bounds.
    pub fn push(
        &mut self,
        sequence: u64,
        frame: SharedFrame,
        max_messages: usize,
        max_bytes: usize,
    ) {
        self.bytes += frame.len();
        self.frames.push_back((sequence, frame));
        while self.frames.len() > max_messages || self.bytes > max_bytes {
            let Some((seq, old)) = self.frames.pop_front() else { break };
            self.bytes -= old.len();
            self.evicted_through = seq;
        }
    }

    /// The frames after `last_sequence`, in order, or [`Gap`] if some of them were dropped or
    /// `last_sequence` is beyond what was ever sent (`next_sequence` is the next to be given).
    pub fn after(
        &self,
        last_sequence: u64,
        next_sequence: u64,
    ) -> Result<impl Iterator<Item = &(u64, SharedFrame)>, Gap> {
        if last_sequence < self.evicted_through || last_sequence >= next_sequence {
            return Err(Gap);
        }
        let start = self.frames.partition_point(|(seq, _)| *seq <= last_sequence);
        Ok(self.frames.range(start..))
    }

    /// The kept frame with this sequence.
    pub fn get(&self, sequence: u64) -> Option<&SharedFrame> {
        let first = self.frames.front()?.0;
        let index = usize::try_from(sequence.checked_sub(first)?).ok()?;
        self.frames.get(index).map(|(_, frame)| frame)
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
        let seqs: Vec<u64> = buffer.after(2, 6).unwrap().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [3, 4, 5]);
        assert_eq!(buffer.after(5, 6).unwrap().count(), 0);
        assert!(buffer.after(6, 6).is_err(), "the client claims more than was sent");
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
        assert!(buffer.after(1, 6).is_err(), "2 was evicted");
        assert_eq!(buffer.after(2, 6).unwrap().count(), 3);

        let mut small = ReplayBuffer::default();
        small.push(1, frame(10), 100, 30);
        small.push(2, frame(10), 100, 30);
        assert_eq!(small.len(), 1);
        assert!(small.bytes() <= 30);
        assert!(small.after(0, 3).is_err());
    }
}
