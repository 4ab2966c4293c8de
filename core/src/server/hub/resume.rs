//! Resume: a client's new socket takes its old session back and is given what it missed.

use super::Hub;
use super::session::Key;
use crate::protocol::{
    CloseCode, ConnectionResume, ConnectionResumed, ErrorCategory, SystemMessage, codes,
};
use crate::server::io::{HubEvent, Output};
use crate::server::replay::Gap;
use crate::server::router::Rejection;
use crate::server::state::ConnectionState;
use crate::server::timers::TimerKind;
use crate::time::Instant;

impl Hub {
    /// `system.connection.resume` on session `key` (new) for the session it names (old).
    pub(super) fn handle_resume(&mut self, now: Instant, key: Key, resume: ConnectionResume) {
        let Some(session) = self.sessions.get(&key) else { return };
        if !matches!(session.state(), ConnectionState::Active | ConnectionState::Paused) {
            let rejection = Rejection::new(
                ErrorCategory::Authentication,
                codes::AUTH_REQUIRED,
                "authenticate before resuming",
            );
            self.reject(now, key, rejection);
            return;
        }
        let user = session.user_id().map(str::to_owned);
        let old =
            resume.connection_id.as_ref().and_then(|id| self.by_connection_id.get(id).copied());
        let old = old.filter(|&old| {
            old != key
                && self
                    .sessions
                    .get(&old)
                    .is_some_and(|s| s.is_member() && s.user_id().map(str::to_owned) == user)
        });
        let replay = old.zip(resume.last_sequence).and_then(|(old, last)| {
            let s = &self.sessions[&old];
            s.replay.count_after(last, s.next_sequence).ok().map(|count| (old, last, count))
        });
        let Some((old, last, replayed)) = replay else {
            // Unknown session, someone else's, or a gap: the application must resync. A
            // session of this user that could not be resumed is let go: its client moved on.
            // A session still attached to a live socket is some other tab's: left alone.
            if let Some(old) =
                old.filter(|o| self.sessions[o].state() == ConnectionState::Reconnecting)
            {
                self.close(now, old, CloseCode::SESSION_REPLACED, "resume_gap");
            }
            let connection_id = self.sessions[&key].connection_id.clone();
            self.answer_resume(now, key, Some(&resume), 0, false);
            self.outputs.push_back(Output::Event(HubEvent::Resumed {
                connection_id,
                replayed: 0,
                state_valid: false,
            }));
            return;
        };

        // Move the new socket, its credentials and its unflushed count onto the old session;
        // the new session ends (the application hears so: it was told it opened).
        let Some(fresh) = self.sessions.get_mut(&key) else { return };
        let Some(socket) = fresh.socket.take() else { return };
        let principal = fresh.principal.clone();
        let (outbound_frames, outbound_bytes) = (fresh.outbound_frames, fresh.outbound_bytes);
        let fresh_id = fresh.connection_id.clone();
        self.sockets.remove(&socket);
        self.transition(now, key, ConnectionState::Closing, "resumed_other_session");
        self.transition(now, key, ConnectionState::Closed, "resumed_other_session");
        self.remove_session(now, key);
        self.outputs.push_back(Output::Event(HubEvent::ConnectionClosed {
            connection_id: fresh_id,
            user_id: principal.as_ref().map(|p| p.user_id.clone()),
            code: CloseCode::NORMAL,
            reason: "resumed_other_session",
        }));
        if let Some(stale) = self.sessions.get_mut(&old).and_then(|s| s.socket.take()) {
            self.sockets.remove(&stale);
            self.closing.insert(stale);
            self.outputs.push_back(Output::Close {
                socket: stale,
                code: CloseCode::SESSION_REPLACED,
                reason: "resumed_elsewhere",
            });
        }
        self.sockets.insert(socket, old);
        let Some(session) = self.sessions.get_mut(&old) else { return };
        session.socket = Some(socket);
        session.outbound_bytes = outbound_bytes;
        session.outbound_frames = outbound_frames;
        session.last_heard = now;
        session.invalid_streak = 0;
        // The credentials just verified replace the old ones: their expiry governs now.
        let expiry = principal
            .as_ref()
            .and_then(|p| p.expires_at_unix_ms)
            .map(|ms| self.wall.instant_at(ms));
        if principal.is_some() {
            session.principal = principal;
        }
        let was = session.state();
        if was != ConnectionState::Active {
            self.transition(now, old, ConnectionState::Active, "resumed");
        }
        self.set_deadline(old, TimerKind::TokenExpiry, expiry);
        self.set_deadline(old, TimerKind::ResumeWindow, None);
        self.set_deadline(old, TimerKind::Heartbeat, Some(now + self.config.heartbeat_interval));

        self.answer_resume(now, old, Some(&resume), replayed, true);
        let _ = self.replay(now, old, last);
        let Some(session) = self.sessions.get(&old) else { return };
        let connection_id = session.connection_id.clone();
        self.outputs.push_back(Output::Event(HubEvent::Resumed {
            connection_id,
            replayed,
            state_valid: true,
        }));
    }

    pub(super) fn answer_resume(
        &mut self,
        now: Instant,
        key: Key,
        resume: Option<&ConnectionResume>,
        missed: u64,
        state_valid: bool,
    ) {
        let Some(session) = self.sessions.get(&key) else { return };
        let resumed = ConnectionResumed {
            conversation_id: session
                .conversation_id
                .as_ref()
                .map(|c| c.to_string())
                .or_else(|| resume.map(|r| r.conversation_id.clone()))
                .unwrap_or_default(),
            resumed_from_message_id: resume.and_then(|r| r.last_message_id.clone()),
            current_item_index: resume.and_then(|r| r.last_item_index),
            missed_messages: missed,
            state_valid,
            connection_id: Some(session.connection_id.clone()),
        };
        self.send_system(now, key, SystemMessage::ConnectionResumed(resumed));
    }

    /// Sends what was held while paused; if some of it was evicted meanwhile, says so.
    pub(super) fn flush_held(&mut self, now: Instant, key: Key) {
        let Some(session) = self.sessions.get(&key) else { return };
        if self.replay(now, key, session.sent_through).is_ok() {
            return;
        }
        let Some(session) = self.sessions.get_mut(&key) else { return };
        session.sent_through = session.next_sequence - 1;
        self.answer_resume(now, key, None, 0, false);
    }

    /// Starts writing the kept messages after sequence `last` to the session's socket, in
    /// order, and returns how many there are; [`Gap`] (and nothing written) if some of them are
    /// no longer kept.
    pub(super) fn replay(&mut self, now: Instant, key: Key, last: u64) -> Result<u64, Gap> {
        let Some(session) = self.sessions.get_mut(&key) else { return Ok(0) };
        let count = session.replay.count_after(last, session.next_sequence)?;
        session.sent_through = last;
        self.pump(now, key);
        Ok(count)
    }
}
