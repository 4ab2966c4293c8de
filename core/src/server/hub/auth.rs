//! Credentials and verdicts: the hub asks the adapter to verify, and acts on the answer.

use super::Hub;
use super::session::Key;
use crate::protocol::{
    AuthRefreshed, CloseCode, ConnectionEstablished, ErrorCategory, SystemMessage, Timestamp, codes,
};
use crate::server::io::{
    AuthFailure, Credentials, HubEvent, Output, Principal, SocketId, VerifyId,
};
use crate::server::pubsub::Channel;
use crate::server::router::Rejection;
use crate::server::state::ConnectionState;
use crate::server::timers::TimerKind;
use crate::time::Instant;

/// What a verification was for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Purpose {
    Open,
    Refresh,
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
        let request = VerifyId(self.next_verify);
        self.next_verify += 1;
        self.verifies.insert(request, (key, purpose));
        if let Some(session) = self.sessions.get_mut(&key) {
            if let Some(old) = session.pending_verify.replace(request) {
                self.verifies.remove(&old);
            }
        }
        self.outputs.push_back(Output::Verify { request, socket, credentials, origin });
    }

    pub(super) fn handle_verdict(
        &mut self,
        now: Instant,
        request: VerifyId,
        verdict: Result<Principal, AuthFailure>,
    ) {
        let Some((key, purpose)) = self.verifies.remove(&request) else { return };
        let Some(session) = self.sessions.get_mut(&key) else { return };
        session.pending_verify = None;
        let expired =
            |p: &Principal| p.expires_at_unix_ms.is_some_and(|ms| self.wall.instant_at(ms) <= now);
        let verdict = match verdict {
            Ok(p) if expired(&p) => Err(AuthFailure::Expired),
            other => other,
        };
        match (purpose, verdict) {
            (Purpose::Open, Ok(principal)) => self.authenticate(now, key, principal),
            (Purpose::Open, Err(failure)) => {
                let (code, error_code, message) = match &failure {
                    AuthFailure::Expired => (
                        CloseCode::TOKEN_EXPIRED,
                        codes::TOKEN_EXPIRED,
                        "the token has expired".to_owned(),
                    ),
                    AuthFailure::Invalid(reason) => (
                        CloseCode::AUTH_FAILED,
                        codes::AUTH_FAILED,
                        format!("authentication failed: {reason}"),
                    ),
                };
                let reason = match failure {
                    AuthFailure::Expired => "expired".to_owned(),
                    AuthFailure::Invalid(reason) => reason,
                };
                let mut rejection =
                    Rejection::new(ErrorCategory::Authentication, error_code, message)
                        .and_close(code);
                rejection.error.is_retryable = code == CloseCode::TOKEN_EXPIRED;
                self.fail_auth(now, key, reason, rejection);
            }
            (Purpose::Refresh, Ok(principal))
                if Some(principal.user_id.as_str()) == session.user_id() =>
            {
                let expires_at = principal.expires_at_unix_ms;
                session.principal = Some(principal);
                let deadline = expires_at.map(|ms| self.wall.instant_at(ms));
                self.set_deadline(key, TimerKind::TokenExpiry, deadline);
                let expires_at =
                    expires_at.and_then(Timestamp::from_unix_ms).unwrap_or(Timestamp::MAX);
                self.send_system(
                    now,
                    key,
                    SystemMessage::AuthRefreshed(AuthRefreshed { expires_at }),
                );
            }
            (Purpose::Refresh, _) => {
                self.close(now, key, CloseCode::TOKEN_EXPIRED, "refresh_rejected")
            }
        }
    }

    pub(super) fn authenticate(&mut self, now: Instant, key: Key, principal: Principal) {
        let Some(session) = self.sessions.get_mut(&key) else { return };
        if session.state() != ConnectionState::Connected {
            return;
        }
        session.unverified = false;
        self.pending_auths -= 1;
        let expiry = principal.expires_at_unix_ms.map(|ms| self.wall.instant_at(ms));
        let user_id = principal.user_id.clone();
        session.principal = Some(principal);
        let conversation_id = session.conversation_id.clone();
        self.set_deadline(key, TimerKind::AuthTimeout, None);
        self.transition(now, key, ConnectionState::Authenticated, "verified");

        // Channels this session needs that are not subscribed yet.
        let mut needed = vec![Channel::User(user_id.clone())];
        needed.extend(conversation_id.iter().cloned().map(Channel::Conversation));
        let new = needed.iter().filter(|c| !self.subscriptions.contains(*c)).count();
        if self.subscriptions.len() + new > self.config.max_subscriptions {
            let channel = needed.pop().unwrap_or(Channel::Broadcast);
            self.outputs.push_back(Output::Event(HubEvent::SubscriptionLimit { channel }));
            self.close(now, key, CloseCode::SERVER_BUSY, "max_subscriptions");
            return;
        }
        if self.by_user.entry(user_id.clone()).or_default().insert(key) {
            self.subscribe(Channel::User(user_id.clone()));
        }
        if let Some(conversation) = &conversation_id {
            self.by_conversation.entry(conversation.clone()).or_default().insert(key);
            self.subscribe(Channel::Conversation(conversation.clone()));
        }
        self.transition(now, key, ConnectionState::Active, "established");
        self.set_deadline(key, TimerKind::TokenExpiry, expiry);
        self.set_deadline(key, TimerKind::Heartbeat, Some(now + self.config.heartbeat_interval));

        let Some(session) = self.sessions.get(&key) else { return };
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
        reason: String,
        rejection: Rejection,
    ) {
        self.outputs.push_back(Output::Event(HubEvent::AuthFailed { reason }));
        self.reject(now, key, rejection);
    }
}
