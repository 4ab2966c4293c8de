//! Resume: a client's new socket takes its old session back and is given what it missed.

use super::Hub;
use super::auth::Purpose;
use super::session::Key;
use crate::protocol::{
    CloseCode, ConnectionResume, ConnectionResumed, ErrorCategory, SystemMessage, codes,
};
use crate::server::io::{HubEvent, JoinGrant, Output};
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
        let grant = JoinGrant { write: session.can_write };
        let fresh_conversation = session.conversation_id.clone();
        let old_conversation = resume
            .connection_id
            .as_ref()
            .and_then(|id| self.by_connection_id.get(id))
            .filter(|&&old| old != key)
            .and_then(|old| self.sessions.get(old))
            .and_then(|s| s.conversation_id.clone());
        match old_conversation {
            // Taking a session of another conversation is joining that conversation: the same
            // question is asked first.
            Some(conversation) if Some(&conversation) != fresh_conversation.as_ref() => {
                if let Some(session) = self.sessions.get_mut(&key) {
                    session.pending_resume = Some(Box::new(resume));
                }
                self.request_join(key, conversation, Purpose::ResumeJoin);
            }
            _ => self.finish_resume(now, key, resume, Some(grant)),
        }
    }

    /// Resumes the session `resume` names onto session `key`'s socket, with the join `grant`
    /// for its conversation (`None`: refused, so nothing is resumed).
    pub(super) fn finish_resume(
        &mut self,
        now: Instant,
        key: Key,
        resume: ConnectionResume,
        grant: Option<JoinGrant>,
    ) {
        let Some(session) = self.sessions.get(&key) else { return };
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
        let replay = old.zip(resume.last_sequence).zip(grant).and_then(|((old, last), grant)| {
            let s = &self.sessions[&old];
            s.replay.count_after(last, s.next_sequence).ok().map(|count| (old, last, count, grant))
        });
        if old.is_none() && grant.is_some() && self.may_hand_over(&resume) {
            // Not here: perhaps another instance held it.
            if let Some(grant) = grant {
                self.begin_handover(now, key, resume, grant);
            }
            return;
        }
        let Some((old, last, replayed, grant)) = replay else {
            // Unknown session, someone else's, a gap, or a conversation it may no longer join:
            // the application must resync. A session of this user that could not be resumed is
            // let go: its client moved on. A session still attached to a live socket is some
            // other tab's: left alone.
            if let Some(old) =
                old.filter(|o| self.sessions[o].state() == ConnectionState::Reconnecting)
            {
                let reason = if grant.is_some() { "resume_gap" } else { "join_refused" };
                self.close(now, old, CloseCode::SESSION_REPLACED, reason);
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

        // Move the new socket, its credentials and what is in flight on it onto the old
        // session; the new session ends (the application hears so: it was told it opened).
        let Some(fresh) = self.sessions.get_mut(&key) else { return };
        // What the new session handed its socket goes out before the old one's frames.
        fresh.spill(&mut self.outputs);
        let Some(socket) = fresh.socket.take() else { return };
        let principal = fresh.principal.clone();
        // Frames in flight on the new socket are the new session's: they acknowledge nothing
        // of the old one.
        let in_flight = fresh.in_flight.iter().map(|_| 0).collect();
        let outbound_bytes = fresh.outbound_bytes;
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
        // What the old socket was handed goes ahead of its close.
        let stale = self.sessions.get_mut(&old).and_then(|s| {
            s.spill(&mut self.outputs);
            s.socket.take()
        });
        if let Some(stale) = stale {
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
        session.in_flight = in_flight;
        session.outbound_bytes = outbound_bytes;
        session.last_heard = now;
        session.can_write = grant.write && session.conversation_id.is_some();
        session.acknowledge_through(last, &mut self.outputs);
        // The credentials just verified replace the old ones: their expiry governs now.
        if let Some(principal) = principal {
            session.principal = Some(principal);
        }
        let was = session.state();
        let principal = session.principal.clone();
        let expiry = principal.as_ref().and_then(|p| self.expiry_of(p));
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
        // What was evicted is gone; the client is told, and starts over from here.
        session.acknowledge_through(session.next_sequence - 1, &mut self.outputs);
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
