//! One connection's session and its outbound window: what the hub keeps per client.

use crate::protocol::Id;
use crate::server::config::HubConfig;
use crate::server::io::{Output, Principal, SocketId, VerifyId};
use crate::server::rate_limit::RateLimiter;
use crate::server::replay::ReplayBuffer;
use crate::server::state::{ConnectionState, StateMachine};
use crate::server::timers::TimerKind;
use crate::time::Instant;
use bytes::Bytes;
use std::collections::VecDeque;

/// Internal handle of a session; increasing, never reused.
pub(super) type Key = u64;

/// One connection's session: it outlives its socket for the resume window.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) connection_id: Id,
    pub(super) socket: Option<SocketId>,
    pub(super) machine: StateMachine,
    pub(super) principal: Option<Principal>,
    pub(super) conversation_id: Option<Id>,
    pub(super) definition_id: Option<String>,
    pub(super) created_at: Instant,
    pub(super) last_heard: Instant,
    pub(super) last_ping_at: Option<Instant>,
    /// The sequence the next application message gets (from 1).
    pub(super) next_sequence: u64,
    /// The highest sequence written to the current socket.
    pub(super) sent_through: u64,
    pub(super) replay: ReplayBuffer,
    pub(super) outbound_frames: usize,
    pub(super) outbound_bytes: usize,
    pub(super) rate_limiter: RateLimiter,
    pub(super) invalid_streak: u32,
    pub(super) deadlines: [Option<Instant>; 4],
    pub(super) pending_verify: Option<VerifyId>,
    /// Opened and not yet authenticated: counted against `max_pending_auths`.
    pub(super) unverified: bool,
}

impl Session {
    pub(super) fn state(&self) -> ConnectionState {
        self.machine.state()
    }

    pub(super) fn deadline(&self, kind: TimerKind) -> Option<Instant> {
        self.deadlines[kind as usize]
    }

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
}

/// Whether a frame of `bytes` fits in the session's socket's outbound window.
pub(super) fn window_has_room(config: &HubConfig, session: &Session, bytes: usize) -> bool {
    session.outbound_frames < config.max_outbound_frames
        && session.outbound_bytes + bytes <= config.max_outbound_bytes
}

/// Hands `frame` to `socket`, counting it in the session's outbound window (which the caller
/// has checked has room) until the adapter reports it flushed.
pub(super) fn send_on(
    session: &mut Session,
    socket: SocketId,
    frame: Bytes,
    outputs: &mut VecDeque<Output>,
) {
    session.outbound_frames += 1;
    session.outbound_bytes += frame.len();
    outputs.push_back(Output::Send { socket, frame });
}
