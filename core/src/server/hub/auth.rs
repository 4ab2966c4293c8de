//! Credentials and joins: the hub asks the adapter to verify the credentials, then (when the
//! socket names a conversation) whether this user may join it, and acts on each answer.
//!
//! `Connected` → credentials accepted → `Authenticated` → join allowed (or no conversation) →
//! `Active`. Both questions are outputs the adapter answers with an input
//! ([`Output::Verify`]/[`Input::AuthVerdict`], [`Output::Authorize`]/[`Input::JoinVerdict`]);
//! the auth timeout covers the two together, so an authorizer that never answers costs a
//! socket ten seconds, not forever.
//!
//! [`Input::AuthVerdict`]: crate::server::Input::AuthVerdict
//! [`Input::JoinVerdict`]: crate::server::Input::JoinVerdict

use super::Hub;
use super::session::Key;
use crate::protocol::{
    AuthRefreshed, CloseCode, ConnectionEstablished, ErrorCategory, Id, SystemMessage, Timestamp,
    codes,
};
use crate::server::bus::Channel;
use crate::server::io::{
    AuthFailure, Credentials, HubEvent, JoinGrant, JoinId, JoinRefusal, JoinRequest, Output,
    Principal, SocketId, VerifyId,
};
use crate::server::router::Rejection;
use crate::server::state::ConnectionState;
use crate::server::timers::TimerKind;
use crate::time::Instant;
use std::sync::Arc;

/// What a request to the adapter was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// Verify the credentials a socket opened with.
    Open,
    /// Verify a token sent in band (`system.auth.refresh`).
    Refresh,
    /// May the user join the conversation its socket named?
    Join,
    /// May the user join the conversation of the session it resumes?
    ResumeJoin,
}

impl Hub {
    pub(super) fn request_verify(
        &mut self,
        key: Key,
        socket: SocketId,
        credentials: Credentials,
        origin: Option<String>,
        purpose: Purpose,
    ) {
        let request = self.next_request;
        self.next_request += 1;
        self.requests.insert(request, (key, purpose));
        if let Some(session) = self.sessions.get_mut(&key) {
            if let Some(old) = session.pending_verify.replace(request) {
                self.requests.remove(&old);
            }
        }
        let request = VerifyId(request);
        self.outputs.push_back(Output::Verify { request, socket, credentials, origin });
    }

    /// Asks whether the session's user may join `conversation_id`.
    pub(super) fn request_join(&mut self, key: Key, conversation_id: Id, purpose: Purpose) {
        let Some(session) = self.sessions.get_mut(&key) else { return };
        let (Some(socket), Some(principal)) = (session.socket, session.principal.clone()) else {
            return;
        };
        let request = self.next_request;
        self.next_request += 1;
        if let Some(old) = session.pending_join.replace(request) {
            self.requests.remove(&old);
        }
        self.requests.insert(request, (key, purpose));
        self.outputs.push_back(Output::Authorize(Box::new(JoinRequest {
            request: JoinId(request),
            socket,
            principal,
            conversation_id,
            definition_id: session.definition_id.clone(),
        })));
    }

    /// When a principal's credentials stop counting: their expiry plus the clock leeway the
    /// verifier allows too (one setting for both, so a token the verifier takes is not refused
    /// here as expired).
    pub(super) fn expiry_of(&self, principal: &Principal) -> Option<Instant> {
        let leeway = i64::try_from(self.config.clock_leeway.as_millis()).unwrap_or(i64::MAX);
        principal.expires_at_unix_ms.map(|ms| self.wall.instant_at(ms.saturating_add(leeway)))
    }

    pub(super) fn handle_verdict(
        &mut self,
        now: Instant,
        request: VerifyId,
        verdict: Result<Arc<Principal>, AuthFailure>,
    ) {
        let Some(&(key, purpose)) = self.requests.get(&request.0) else { return };
        if !matches!(purpose, Purpose::Open | Purpose::Refresh) {
            return;
        }
        self.requests.remove(&request.0);
        let verdict = match verdict {
            Ok(p) if self.expiry_of(&p).is_some_and(|at| at <= now) => Err(AuthFailure::Expired),
            other => other,
        };
        let Some(session) = self.sessions.get_mut(&key) else { return };
        session.pending_verify = None;
        match (purpose, verdict) {
            (Purpose::Open, Ok(principal)) => self.authenticate(now, key, principal),
            (Purpose::Open, Err(failure)) => {
                let rejection = match failure {
                    AuthFailure::Expired => {
                        let mut r = Rejection::new(
                            ErrorCategory::Authentication,
                            codes::TOKEN_EXPIRED,
                            "the token has expired",
                        )
                        .and_close(CloseCode::TOKEN_EXPIRED);
                        r.error.is_retryable = true;
                        r
                    }
                    // The reason goes to the log and metrics; the client learns nothing that
                    // would help it probe the verifier.
                    _ => Rejection::new(
                        ErrorCategory::Authentication,
                        codes::AUTH_FAILED,
                        "authentication failed",
                    )
                    .and_close(CloseCode::AUTH_FAILED),
                };
                self.fail_auth(now, key, failure, rejection);
            }
            (Purpose::Refresh, Ok(principal))
                if Some(principal.user_id.as_str()) == session.user_id() =>
            {
                let expires_at = principal.expires_at_unix_ms;
                let deadline = self.expiry_of(&principal);
                if let Some(session) = self.sessions.get_mut(&key) {
                    // The grants that decided the join stay those of the join.
                    let grants = session.principal.take().map(|p| p.grants.clone());
                    let principal = Principal {
                        grants: grants.unwrap_or_default(),
                        ..Arc::unwrap_or_clone(principal)
                    };
                    session.principal = Some(Arc::new(principal));
                }
                self.set_deadline(key, TimerKind::TokenExpiry, deadline);
                let expires_at =
                    expires_at.and_then(Timestamp::from_unix_ms).unwrap_or(Timestamp::MAX);
                self.send_system(
                    now,
                    key,
                    SystemMessage::AuthRefreshed(AuthRefreshed { expires_at }),
                );
            }
            (Purpose::Refresh, verdict) => {
                let reason = verdict.err().unwrap_or(AuthFailure::OtherUser);
                self.outputs.push_back(Output::Event(HubEvent::AuthFailed { reason }));
                self.close(now, key, CloseCode::TOKEN_EXPIRED, "refresh_rejected")
            }
            (Purpose::Join | Purpose::ResumeJoin, _) => {}
        }
    }

    /// The credentials were accepted: the user is known. Its sessions are capped; then the
    /// session joins its conversation (asking first) or, without one, becomes active.
    pub(super) fn authenticate(&mut self, now: Instant, key: Key, principal: Arc<Principal>) {
        let Some(session) = self.sessions.get_mut(&key) else { return };
        if session.state() != ConnectionState::Connected {
            return;
        }
        let user_id = principal.user_id.clone();
        session.principal = Some(principal);
        let conversation_id = session.conversation_id.clone();
        self.transition(now, key, ConnectionState::Authenticated, "verified");

        // Channels this session needs that are not subscribed yet.
        let mut needed = vec![Channel::User(user_id.clone())];
        needed.extend(conversation_id.iter().cloned().map(Channel::Conversation));
        let new = needed.iter().filter(|c| !self.links.has(c)).count();
        if self.links.subscriptions() + new > self.config.max_subscriptions {
            let channel = needed.pop().unwrap_or(Channel::Broadcast);
            self.outputs.push_back(Output::Event(HubEvent::SubscriptionLimit { channel }));
            self.close(now, key, CloseCode::SERVER_BUSY, "max_subscriptions");
            return;
        }
        if !self.make_room_for(now, key, &user_id) {
            return;
        }
        if self.by_user.entry(user_id.clone()).or_default().insert(key) {
            self.subscribe(now, Channel::User(user_id));
        }
        match conversation_id {
            Some(conversation) => self.request_join(key, conversation, Purpose::Join),
            None => self.activate(now, key, JoinGrant { write: false }),
        }
    }

    /// Keeps a user within `max_sessions_per_user`: at the cap, the user's oldest session that
    /// waits for a resume is let go (its client has most likely moved on, and if not, it hears
    /// `stateValid: false` rather than nothing); if none waits, the new session `key` is
    /// refused with 4014. Returns whether `key` may go on.
    fn make_room_for(&mut self, now: Instant, key: Key, user_id: &str) -> bool {
        let Some(members) = self.by_user.get(user_id) else { return true };
        let held: Vec<Key> = members.iter().filter(|k| *k != key).collect();
        if held.len() < self.config.max_sessions_per_user {
            return true;
        }
        let parked = held.iter().copied().find(|k| {
            self.sessions.get(k).is_some_and(|s| s.state() == ConnectionState::Reconnecting)
        });
        let user_id = user_id.to_owned();
        match parked {
            Some(oldest) => {
                self.outputs
                    .push_back(Output::Event(HubEvent::SessionCap { user_id, evicted: true }));
                self.end_session(now, oldest, CloseCode::SERVER_BUSY, "session_cap", false);
                true
            }
            None => {
                self.outputs
                    .push_back(Output::Event(HubEvent::SessionCap { user_id, evicted: false }));
                let mut rejection = Rejection::new(
                    ErrorCategory::RateLimit,
                    codes::TOO_MANY_SESSIONS,
                    "this user has as many sessions open as the server allows",
                )
                .and_close(CloseCode::SERVER_BUSY);
                rejection.error.is_retryable = true;
                self.reject(now, key, rejection);
                false
            }
        }
    }

    pub(super) fn handle_join_verdict(
        &mut self,
        now: Instant,
        request: JoinId,
        verdict: Result<JoinGrant, JoinRefusal>,
    ) {
        let Some(&(key, purpose)) = self.requests.get(&request.0) else { return };
        if !matches!(purpose, Purpose::Join | Purpose::ResumeJoin) {
            return;
        }
        self.requests.remove(&request.0);
        let Some(session) = self.sessions.get_mut(&key) else { return };
        session.pending_join = None;
        match (purpose, verdict) {
            (Purpose::Join, Ok(grant)) => {
                if session.state() == ConnectionState::Authenticated {
                    self.activate(now, key, grant);
                }
            }
            (Purpose::Join, Err(refusal)) => {
                let conversation_id = session.conversation_id.clone();
                self.join_refused(key, conversation_id, refusal);
                self.reject(now, key, join_rejection(refusal));
            }
            (Purpose::ResumeJoin, verdict) => {
                let Some(resume) = session.pending_resume.take() else { return };
                if let Err(refusal) = verdict {
                    let old =
                        resume.connection_id.as_ref().and_then(|id| self.by_connection_id.get(id));
                    let conversation_id = old
                        .and_then(|k| self.sessions.get(k))
                        .and_then(|s| s.conversation_id.clone());
                    self.join_refused(key, conversation_id, refusal);
                }
                self.finish_resume(now, key, *resume, verdict.ok());
            }
            (Purpose::Open | Purpose::Refresh, _) => {}
        }
    }

    fn join_refused(&mut self, key: Key, conversation_id: Option<Id>, refusal: JoinRefusal) {
        let Some(session) = self.sessions.get(&key) else { return };
        let Some(conversation_id) = conversation_id else { return };
        let connection_id = session.connection_id.clone();
        self.outputs.push_back(Output::Event(HubEvent::JoinRefused {
            connection_id,
            conversation_id,
            refusal,
        }));
    }

    /// The session is in: it joins its conversation; once the bus has placed its channels, it
    /// is told so ([`Hub::establish`]). Told at once, a client could miss what another
    /// instance publishes before this one's subscription reaches the bus, though it was
    /// published after the client heard it was in.
    pub(super) fn activate(&mut self, now: Instant, key: Key, grant: JoinGrant) {
        let Some(session) = self.sessions.get_mut(&key) else { return };
        session.can_write = grant.write && session.conversation_id.is_some();
        if let Some(conversation) = session.conversation_id.clone() {
            self.by_conversation.entry(conversation.clone()).or_default().insert(key);
            self.subscribe(now, Channel::Conversation(conversation));
        }
        if self.waits_for_bus(key) {
            // The authentication deadline still runs: at it, the session goes on unplaced.
            self.unplaced.insert(key);
        } else {
            self.establish(now, key);
        }
    }

    /// Whether one of the session's channels is still being subscribed on a reachable bus.
    fn waits_for_bus(&self, key: Key) -> bool {
        self.channels_of(key).iter().any(|c| self.links.subscription_pending(c))
    }

    /// Tells the sessions that waited for their channels' subscriptions that they are in, once
    /// the bus has confirmed them (or is down). Called before the bus's deliveries are handed
    /// out, so that what comes after a subscription reaches them.
    pub(super) fn establish_placed(&mut self, now: Instant) {
        let placed: Vec<Key> = self
            .unplaced
            .iter()
            .copied()
            .filter(|&key| !self.sessions.contains_key(&key) || !self.waits_for_bus(key))
            .collect();
        for key in placed {
            self.unplaced.remove(&key);
            self.establish(now, key);
        }
    }

    /// The session becomes active: its deadlines start, and the client is told `established`.
    /// (A session that ended while it waited is not there any more.)
    pub(super) fn establish(&mut self, now: Instant, key: Key) {
        self.unplaced.remove(&key);
        let Some(session) = self.sessions.get_mut(&key) else { return };
        if session.state() != ConnectionState::Authenticated {
            return;
        }
        if std::mem::take(&mut session.pending) {
            self.pending_auths -= 1;
        }
        let conversation_id = session.conversation_id.clone();
        let Some(principal) = session.principal.clone() else { return };
        self.set_deadline(key, TimerKind::AuthTimeout, None);
        self.transition(now, key, ConnectionState::Active, "established");
        self.set_deadline(key, TimerKind::TokenExpiry, self.expiry_of(&principal));
        self.set_deadline(key, TimerKind::Heartbeat, Some(now + self.config.heartbeat_interval));

        let Some(session) = self.sessions.get(&key) else { return };
        let user_id = principal.user_id.clone();
        let established = ConnectionEstablished {
            connection_id: session.connection_id.clone(),
            conversation_id: conversation_id.as_ref().map(|c| c.to_string()).unwrap_or_default(),
            user_id: user_id.clone(),
            definition_id: session.definition_id.clone(),
            resuming: false,
            server_time: self.wall.timestamp(now),
            heartbeat_interval_ms: Some(self.config.heartbeat_interval.as_millis() as u64),
            resume_window_ms: Some(self.config.resume_window.as_millis() as u64),
        };
        let connection_id = session.connection_id.clone();
        self.send_system(now, key, SystemMessage::ConnectionEstablished(established));
        self.record_active(key);
        self.outputs.push_back(Output::Event(HubEvent::ConnectionOpened {
            connection_id,
            user_id,
            conversation_id,
        }));
    }

    /// Refuses a connection's credentials: reported for metrics (`reason` never holds them),
    /// then the client is told and closed.
    pub(super) fn fail_auth(
        &mut self,
        now: Instant,
        key: Key,
        reason: AuthFailure,
        rejection: Rejection,
    ) {
        self.outputs.push_back(Output::Event(HubEvent::AuthFailed { reason }));
        self.reject(now, key, rejection);
    }
}

/// What a client hears when its join is refused, and the close that follows.
fn join_rejection(refusal: JoinRefusal) -> Rejection {
    match refusal {
        JoinRefusal::Forbidden => Rejection::new(
            ErrorCategory::Authentication,
            codes::FORBIDDEN,
            "not allowed in this conversation",
        )
        .and_close(CloseCode::FORBIDDEN),
        JoinRefusal::NotFound => Rejection::new(
            ErrorCategory::Business,
            codes::CONVERSATION_NOT_FOUND,
            "no such conversation",
        )
        .and_close(CloseCode::CONVERSATION_NOT_FOUND),
        JoinRefusal::Unavailable => {
            let mut r = Rejection::new(
                ErrorCategory::Server,
                codes::JOIN_UNAVAILABLE,
                "the conversation cannot be joined right now",
            )
            .and_close(CloseCode::TRY_AGAIN_LATER);
            r.error.is_retryable = true;
            r
        }
    }
}
