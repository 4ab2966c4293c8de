//! A socket's frames, lent to the adapter to write: what [`super::Hub::poll_transmit`] gives.
//!
//! The frames are not made for the loan. A message is read where it already is, in the
//! session's replay buffer, with the socket's sequence beside it; only what must outlive the
//! write (a frame the socket did not take whole) is made into a [`Frame`] of its own.

use crate::server::io::{Frame, FrameRef, SocketId};
use crate::server::replay::ReplayBuffer;
use bytes::Bytes;

/// The frames one socket was handed since they were last taken, in order: each system frame
/// after the application message it followed.
#[derive(Debug)]
pub struct Transmit<'a> {
    socket: SocketId,
    replay: &'a ReplayBuffer,
    /// The application messages handed: `first..=last` (none when `first > last`).
    first: u64,
    last: u64,
    /// System frames, each with the last message handed before it. Taken from the session
    /// with their room: they are few (`established`, a pong, an error), and an idle session
    /// keeps no room for them.
    system: Vec<(u64, Bytes)>,
}

impl<'a> Transmit<'a> {
    pub(super) fn new(
        socket: SocketId,
        replay: &'a ReplayBuffer,
        first: u64,
        last: u64,
        system: Vec<(u64, Bytes)>,
    ) -> Self {
        Transmit { socket, replay, first, last, system }
    }

    /// The socket to write them to.
    pub fn socket(&self) -> SocketId {
        self.socket
    }

    /// The frames, in the order they go out.
    pub fn frames(&self) -> Frames<'_> {
        Frames { replay: self.replay, next: self.first, last: self.last, system: &self.system }
    }

    /// The frames, to keep (after any already in `frames`).
    pub fn to_frames(&self, frames: &mut Vec<Frame>) {
        frames.extend(self.frames().map(FrameRef::to_owned));
    }
}

/// The iterator of [`Transmit::frames`].
#[derive(Debug, Clone)]
pub struct Frames<'t> {
    replay: &'t ReplayBuffer,
    next: u64,
    last: u64,
    system: &'t [(u64, Bytes)],
}

impl<'t> Iterator for Frames<'t> {
    type Item = FrameRef<'t>;

    fn next(&mut self) -> Option<FrameRef<'t>> {
        loop {
            if let Some(((after, frame), rest)) = self.system.split_first()
                && (*after < self.next || self.next > self.last)
            {
                self.system = rest;
                return Some(FrameRef::Whole(frame));
            }
            if self.next > self.last {
                return None;
            }
            let sequence = self.next;
            self.next += 1;
            // Always kept: a handed message is unacknowledged, and a socket is cut off long
            // before the replay buffer would evict one (see `pump_session`).
            if let Some(shared) = self.replay.get(sequence) {
                return Some(FrameRef::sequenced(shared, sequence));
            }
        }
    }
}
