//! One connection's session and its outbound window: what the hub keeps per client.
//!
//! The window is what the hub handed to the socket and the adapter has not reported written
//! ([`crate::server::Input::Flushed`]). The hub remembers, per frame in flight, the application
//! sequence it carries, so it knows which messages are *acknowledged* (written): everything
//! after that is still in the replay buffer, which is what makes cutting a slow socket off
//! lossless for a client that resumes.

use super::transmit::Transmit;
use crate::protocol::{ConnectionResume, Id};
use crate::server::config::HubConfig;
use crate::server::io::{Output, Principal, SocketId};
use crate::server::rate_limit::RateLimiter;
use crate::server::replay::ReplayBuffer;
use crate::server::state::{ConnectionState, StateMachine};
use crate::server::timers::TimerKind;
use crate::time::Instant;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;

/// Internal handle of a session; increasing, never reused.
pub(super) type Key = u64;

/// One connection's session: it outlives its socket for the resume window.
///
/// Laid out by hand (`repr(C)`), with what fan-out reads and writes for every recipient first
/// and together, from a cache line's start: a broadcast to a thousand sessions touches each of
/// them once, cold, and each line of a session it touches is a miss. Left to the compiler, the
/// fields a delivery needs were spread over eight cache lines; here they take the first four.
#[derive(Debug)]
#[repr(C, align(64))]
pub(super) struct Session {
    // What a delivery reads and writes.
    pub(super) machine: StateMachine,
    pub(super) socket: Option<SocketId>,
    /// The sequence the next application message gets (from 1).
    pub(super) next_sequence: u64,
    /// The highest sequence handed to the current socket.
    pub(super) sent_through: u64,
    /// The highest sequence the adapter reported written to a socket of this session. Every
    /// message after it is still in the replay buffer while the socket lives.
    pub(super) acked_through: u64,
    /// The bytes (in the replay buffer's count) of the messages after `acked_through`.
    pub(super) unacked_bytes: usize,
    pub(super) outbound_bytes: usize,
    /// The highest sequence the adapter took ([`super::Hub::poll_transmit`]): the ones after
    /// it, through `sent_through`, are handed to the socket and wait there.
    pub(super) taken_through: u64,
    /// A resume of a session another instance held, under way (see `handover`).
    pub(super) handover: Option<Box<super::handover::Handover>>,
    /// After a resume on this instance: per channel, the offset through which the client has
    /// the channel already (its own position, or what the resume replayed). Deliveries at or
    /// below it are skipped; the first one past it removes it.
    pub(super) floors: Vec<(super::super::bus::Channel, u64)>,
    /// The sequence of each frame in the window, oldest first (0: a system frame).
    pub(super) in_flight: VecDeque<u64>,
    pub(super) replay: ReplayBuffer,
    /// Whether the session is in the hub's queue of sockets with frames to take.
    pub(super) queued: bool,

    // The rest.
    /// System frames handed to the socket and not taken yet, each with the `sent_through` it
    /// was handed at: it goes after that application message.
    pub(super) system_frames: Vec<(u64, Bytes)>,
    pub(super) connection_id: Id,
    pub(super) principal: Option<Arc<Principal>>,
    pub(super) conversation_id: Option<Id>,
    pub(super) definition_id: Option<String>,
    pub(super) created_at: Instant,
    pub(super) last_heard: Instant,
    pub(super) last_ping_at: Option<Instant>,
    pub(super) rate_limiter: RateLimiter,
    /// By [`TimerKind`]; [`Instant::FAR_FUTURE`] for none (an `Option` would double each).
    pub(super) deadlines: [Instant; 4],
    /// The verification or join decision this session waits for (at most one of each).
    pub(super) pending_verify: Option<u64>,
    pub(super) pending_join: Option<u64>,
    /// A resume into another conversation, waiting for its join verdict.
    pub(super) pending_resume: Option<Box<ConnectionResume>>,
    /// Whether the join verdict let this member write into its conversation.
    pub(super) can_write: bool,
    /// Opened and not yet active (credentials or join pending): counted against
    /// `max_pending_auths`.
    pub(super) pending: bool,
}

impl Session {
    pub(super) fn state(&self) -> ConnectionState {
        self.machine.state()
    }

    pub(super) fn deadline(&self, kind: TimerKind) -> Option<Instant> {
        Some(self.deadlines[kind as usize]).filter(|at| *at != Instant::FAR_FUTURE)
    }

    pub(super) fn set_deadline(&mut self, kind: TimerKind, at: Option<Instant>) {
        self.deadlines[kind as usize] = at.unwrap_or(Instant::FAR_FUTURE);
    }

    /// No deadlines.
    pub(super) const NO_DEADLINES: [Instant; 4] = [Instant::FAR_FUTURE; 4];

    pub(super) fn user_id(&self) -> Option<&str> {
        self.principal.as_ref().map(|p| p.user_id.as_str())
    }

    /// Whether the session takes part in fan-out: authenticated and not gone.
    pub(super) fn is_member(&self) -> bool {
        matches!(
            self.state(),
            ConnectionState::Active | ConnectionState::Paused | ConnectionState::Reconnecting
        )
    }

    /// Frames handed to the socket and not yet reported written.
    pub(super) fn outbound_frames(&self) -> usize {
        self.in_flight.len()
    }

    /// Messages given a sequence and not yet reported written (in the window or waiting).
    pub(super) fn unacked(&self) -> u64 {
        self.next_sequence - 1 - self.acked_through
    }

    /// The adapter wrote `frames` of the window's frames, `bytes` in all.
    pub(super) fn flushed(&mut self, frames: usize, bytes: usize) {
        let before = self.acked_through;
        for _ in 0..frames {
            match self.in_flight.pop_front() {
                Some(0) | None => {}
                Some(sequence) => self.acked_through = self.acked_through.max(sequence),
            }
        }
        for sequence in before + 1..=self.acked_through {
            let len = self.replay.get(sequence).map_or(0, |f| f.len());
            self.unacked_bytes = self.unacked_bytes.saturating_sub(len);
        }
        self.outbound_bytes = self.outbound_bytes.saturating_sub(bytes);
        // A burst's room is given back rather than kept for the session's life.
        if self.in_flight.is_empty() && self.in_flight.capacity() > 64 {
            self.in_flight = VecDeque::new();
        }
    }

    /// The session's client has everything through `last` (it said so when resuming): the
    /// rest is unacknowledged again, to be written to its new socket. What was handed to the
    /// socket before goes out first (see [`Session::spill`]).
    pub(super) fn acknowledge_through(&mut self, last: u64, outputs: &mut VecDeque<Output>) {
        self.spill(outputs);
        self.acked_through = last;
        self.sent_through = last;
        self.taken_through = last;
        self.unacked_bytes = (last + 1..self.next_sequence)
            .map(|sequence| self.replay.get(sequence).map_or(0, |f| f.len()))
            .sum();
    }

    /// Whether the socket was handed frames that were not taken yet.
    pub(super) fn has_handed(&self) -> bool {
        self.taken_through < self.sent_through || !self.system_frames.is_empty()
    }

    /// Lends the frames handed to `socket` and not taken yet, which are taken with it.
    pub(super) fn take_handed(&mut self, socket: SocketId) -> Transmit<'_> {
        let first = self.taken_through + 1;
        self.taken_through = self.sent_through;
        let system = std::mem::take(&mut self.system_frames);
        Transmit::new(socket, &self.replay, first, self.sent_through, system)
    }

    /// Gives what was handed to the socket and not taken yet to the adapter now, as
    /// [`Output::Send`]s ahead of the outputs that follow (a close, or the socket carrying
    /// another sequence on). Without a socket it is dropped: nothing will write it.
    pub(super) fn spill(&mut self, outputs: &mut VecDeque<Output>) {
        if !self.has_handed() {
            return;
        }
        let Some(socket) = self.socket else {
            self.taken_through = self.sent_through;
            self.system_frames = Vec::new();
            return;
        };
        let transmit = self.take_handed(socket);
        outputs.extend(
            transmit.frames().map(|frame| Output::Send { socket, frame: frame.to_owned() }),
        );
    }
}

/// Whether a frame of `bytes` fits in the session's socket's outbound window.
pub(super) fn window_has_room(config: &HubConfig, session: &Session, bytes: usize) -> bool {
    session.outbound_frames() < config.max_outbound_frames
        && session.outbound_bytes + bytes <= config.max_outbound_bytes
}

/// Hands the application message `sequence` (the next after `sent_through`) to the session's
/// socket, counting it in the outbound window (which the caller has checked has room) until
/// the adapter reports it written. The frame itself is not made here: the replay buffer holds
/// it, and the adapter takes it with the socket's other frames ([`super::Hub::poll_transmit`]).
pub(super) fn hand_message(
    session: &mut Session,
    key: Key,
    sequence: u64,
    len: usize,
    transmit: &mut VecDeque<Key>,
) {
    session.sent_through = sequence;
    session.in_flight.push_back(sequence);
    session.outbound_bytes += len;
    queue(session, key, transmit);
}

/// Hands a system frame to the session's socket, as [`hand_message`] does a message.
pub(super) fn hand_system(
    session: &mut Session,
    key: Key,
    frame: Bytes,
    transmit: &mut VecDeque<Key>,
) {
    session.in_flight.push_back(0);
    session.outbound_bytes += frame.len();
    session.system_frames.push((session.sent_through, frame));
    queue(session, key, transmit);
}

/// Puts the session in the queue of sockets with frames to take, once.
fn queue(session: &mut Session, key: Key, transmit: &mut VecDeque<Key>) {
    if !session.queued {
        session.queued = true;
        transmit.push_back(key);
    }
}
