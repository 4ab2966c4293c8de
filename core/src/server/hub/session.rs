//! One connection's session and its outbound window: what the hub keeps per client.
//!
//! The window is what the hub handed to the socket and the adapter has not reported written
//! ([`crate::server::Input::Flushed`]). The hub remembers, per frame in flight, the application
//! sequence it carries, so it knows which messages are *acknowledged* (written): everything
//! after that is still in the replay buffer, which is what makes cutting a slow socket off
//! lossless for a client that resumes.

use crate::protocol::{ConnectionResume, Id};
use crate::server::config::HubConfig;
use crate::server::io::{Frame, Output, Principal, SocketId};
use crate::server::rate_limit::RateLimiter;
use crate::server::replay::ReplayBuffer;
use crate::server::state::{ConnectionState, StateMachine};
use crate::server::timers::TimerKind;
use crate::time::Instant;
use std::collections::VecDeque;
use std::sync::Arc;

/// Internal handle of a session; increasing, never reused.
pub(super) type Key = u64;

/// One connection's session: it outlives its socket for the resume window.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) connection_id: Id,
    pub(super) socket: Option<SocketId>,
    pub(super) machine: StateMachine,
    pub(super) principal: Option<Arc<Principal>>,
    pub(super) conversation_id: Option<Id>,
    pub(super) definition_id: Option<String>,
    /// Whether the join verdict let this member write into its conversation.
    pub(super) can_write: bool,
    pub(super) created_at: Instant,
    pub(super) last_heard: Instant,
    pub(super) last_ping_at: Option<Instant>,
    /// The sequence the next application message gets (from 1).
    pub(super) next_sequence: u64,
    /// The highest sequence handed to the current socket.
    pub(super) sent_through: u64,
    /// The highest sequence the adapter reported written to a socket of this session. Every
    /// message after it is still in the replay buffer while the socket lives.
    pub(super) acked_through: u64,
    /// The sequence of each frame in the window, oldest first (0: a system frame).
    pub(super) in_flight: VecDeque<u64>,
    /// The bytes (in the replay buffer's count) of the messages after `acked_through`.
    pub(super) unacked_bytes: usize,
    pub(super) outbound_bytes: usize,
    pub(super) replay: ReplayBuffer,
    pub(super) rate_limiter: RateLimiter,
    /// By [`TimerKind`]; [`Instant::FAR_FUTURE`] for none (an `Option` would double each).
    pub(super) deadlines: [Instant; 4],
    /// The verification or join decision this session waits for (at most one of each).
    pub(super) pending_verify: Option<u64>,
    pub(super) pending_join: Option<u64>,
    /// A resume into another conversation, waiting for its join verdict.
    pub(super) pending_resume: Option<Box<ConnectionResume>>,
    /// A resume of a session another instance held, under way (see `handover`).
    pub(super) handover: Option<Box<super::handover::Handover>>,
    /// After a resume on this instance: per channel, the offset through which the client has
    /// the channel already (its own position, or what the resume replayed). Deliveries at or
    /// below it are skipped; the first one past it removes it.
    pub(super) floors: Vec<(super::super::bus::Channel, u64)>,
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
    /// rest is unacknowledged again, to be written to its new socket.
    pub(super) fn acknowledge_through(&mut self, last: u64) {
        self.acked_through = last;
        self.sent_through = last;
        self.unacked_bytes = (last + 1..self.next_sequence)
            .map(|sequence| self.replay.get(sequence).map_or(0, |f| f.len()))
            .sum();
    }
}

/// Whether a frame of `bytes` fits in the session's socket's outbound window.
pub(super) fn window_has_room(config: &HubConfig, session: &Session, bytes: usize) -> bool {
    session.outbound_frames() < config.max_outbound_frames
        && session.outbound_bytes + bytes <= config.max_outbound_bytes
}

/// Hands `frame` (carrying application `sequence`, or 0 for a system frame) to `socket`,
/// counting it in the session's outbound window (which the caller has checked has room) until
/// the adapter reports it flushed.
pub(super) fn send_on(
    session: &mut Session,
    socket: SocketId,
    frame: Frame,
    sequence: u64,
    outputs: &mut VecDeque<Output>,
) {
    session.in_flight.push_back(sequence);
    session.outbound_bytes += frame.len();
    outputs.push_back(Output::Send { socket, frame });
}
