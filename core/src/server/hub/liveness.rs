//! Deadlines: the heartbeat, the auth timeout, token expiry and the resume window.

use super::Hub;
use super::session::Key;
use crate::protocol::{
    CloseCode, CloseReason, ConnectionClose, ErrorCategory, Heartbeat, SystemMessage, codes,
};
use crate::server::io::AuthFailure;
use crate::server::router::Rejection;
use crate::server::state::ConnectionState;
use crate::server::timers::TimerKind;
use crate::time::Instant;

impl Hub {
    pub(super) fn handle_timeout(&mut self, now: Instant) {
        self.links.handle_timeout(now);
        self.drain_link(now);
        while let Some((at, key, kind)) = self.timers.pop_due(now) {
            let Some(session) = self.sessions.get_mut(&key) else { continue };
            if session.deadline(kind) != Some(at) {
                continue;
            }
            session.set_deadline(kind, None);
            match kind {
                // Let in, still waiting for the bus: it goes on without (as with the bus down).
                TimerKind::AuthTimeout if self.unplaced.contains(&key) => self.establish(now, key),
                TimerKind::AuthTimeout => {
                    let message = "authentication timed out";
                    let rejection =
                        Rejection::new(ErrorCategory::Authentication, codes::AUTH_FAILED, message)
                            .and_close(CloseCode::AUTH_TIMEOUT);
                    self.fail_auth(now, key, AuthFailure::Timeout, rejection);
                }
                TimerKind::Heartbeat => self.heartbeat(now, key),
                TimerKind::Bus => {}
                TimerKind::TokenExpiry => {
                    let close = ConnectionClose {
                        reason: CloseReason::SessionExpired,
                        code: CloseCode::TOKEN_EXPIRED.0,
                        retry_after_ms: None,
                    };
                    self.send_system(now, key, SystemMessage::ConnectionClose(close));
                    self.close(now, key, CloseCode::TOKEN_EXPIRED, "token_expired");
                }
                TimerKind::ResumeWindow => {
                    self.end_session(
                        now,
                        key,
                        CloseCode::GOING_AWAY,
                        "resume_window_expired",
                        false,
                    );
                }
            }
        }
    }

    pub(super) fn heartbeat(&mut self, now: Instant, key: Key) {
        let Some(session) = self.sessions.get_mut(&key) else { return };
        if !matches!(session.state(), ConnectionState::Active | ConnectionState::Paused) {
            return;
        }
        let limit = self.config.heartbeat_interval * self.config.max_missed_pongs;
        if now.saturating_since(session.last_heard) >= limit {
            self.close(now, key, CloseCode::HEARTBEAT_TIMEOUT, "heartbeat_timeout");
            return;
        }
        session.last_ping_at = Some(now);
        let ping = SystemMessage::Ping(Heartbeat { timestamp: self.wall.timestamp(now) });
        self.send_system(now, key, ping);
        self.set_deadline(key, TimerKind::Heartbeat, Some(now + self.config.heartbeat_interval));
    }

    pub(super) fn set_deadline(&mut self, key: Key, kind: TimerKind, at: Option<Instant>) {
        let Some(session) = self.sessions.get_mut(&key) else { return };
        if session.deadline(kind) == at {
            return;
        }
        session.set_deadline(kind, at);
        if let Some(at) = at {
            self.timers.schedule(at, key, kind);
        }
        // Replaced deadlines stay in the heap until they come due; rebuild it before they
        // can outnumber the live ones by much.
        if self.timers.len() > 4 * self.sessions.len() + 1024 {
            let live = self.sessions.iter().flat_map(|(&key, s)| {
                TimerKind::ALL
                    .into_iter()
                    .filter_map(move |kind| s.deadline(kind).map(|at| (at, key, kind)))
            });
            self.timers.rebuild(live);
        }
    }
}
