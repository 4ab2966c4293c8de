//! A session's life: a socket opens, a session is closed, parked for resume or ended.

use super::Hub;
use super::auth::Purpose;
use super::session::{Key, Session};
use crate::protocol::{CloseCode, ErrorCategory, Id, ReconnectAdvice, codes};
use crate::server::bus::Channel;
use crate::server::io::{AuthFailure, Credentials, HubEvent, OpenRequest, Output, SocketId};
use crate::server::rate_limit::RateLimiter;
use crate::server::replay::ReplayBuffer;
use crate::server::router::Rejection;
use crate::server::state::{ConnectionState, StateMachine};
use crate::server::timers::TimerKind;
use crate::time::Instant;
use std::collections::VecDeque;

impl Hub {
    pub(super) fn handle_open(&mut self, now: Instant, socket: SocketId, request: OpenRequest) {
        if self.sockets.contains_key(&socket) || self.closing.contains(&socket) {
            return;
        }
        let refuse = if self.shutting_down {
            Some((CloseCode::SERVICE_RESTART, "shutting_down"))
        } else if self.sessions.len() >= self.config.max_connections {
            Some((CloseCode::SERVER_BUSY, "max_connections"))
        } else if self.pending_auths >= self.config.max_pending_auths {
            Some((CloseCode::TRY_AGAIN_LATER, "max_pending_auths"))
        } else {
            None
        };
        if let Some((code, reason)) = refuse {
            self.closing.insert(socket);
            self.outputs.push_back(Output::Close { socket, code, reason });
            return;
        }

        let param = |names: &[&str]| {
            request.query.iter().find(|(k, _)| names.contains(&k.as_str())).map(|(_, v)| v.clone())
        };
        let token = param(&[self.config.token_param.as_str()]).filter(|t| !t.is_empty());
        let cookie = request
            .cookies
            .iter()
            .find(|(k, _)| *k == self.config.session_cookie)
            .map(|(_, v)| v.clone())
            .filter(|c| !c.is_empty());
        let conversation = param(&["conversation_id", "conversationId"]).filter(|c| !c.is_empty());
        let definition = param(&["definition_id", "definitionId"]).filter(|d| !d.is_empty());

        let key = self.next_key;
        self.next_key += 1;
        let connection_id = Id::ulid(self.wall_ms(now), self.rng.next_u128());
        let mut machine = StateMachine::new(self.config.history_len);
        let _ = machine.transition(ConnectionState::Connected, now, "upgraded");
        self.sessions.insert(
            key,
            Box::new(Session {
                connection_id: connection_id.clone(),
                socket: Some(socket),
                machine,
                principal: None,
                conversation_id: None,
                definition_id: None,
                can_write: false,
                created_at: now,
                last_heard: now,
                last_ping_at: None,
                next_sequence: 1,
                sent_through: 0,
                taken_through: 0,
                queued: false,
                system_frames: Vec::new(),
                acked_through: 0,
                in_flight: VecDeque::new(),
                unacked_bytes: 0,
                outbound_bytes: 0,
                replay: ReplayBuffer::default(),
                rate_limiter: RateLimiter::new(&self.config, now),
                deadlines: Session::NO_DEADLINES,
                pending_verify: None,
                pending_join: None,
                pending_resume: None,
                handover: None,
                floors: Vec::new(),
                pending: true,
            }),
        );
        self.sockets.insert(socket, key);
        self.by_connection_id.insert(connection_id, key);
        self.pending_auths += 1;

        // Names the server keys channels and storage by: checked before anything else.
        let named = |field: &str, value: Option<String>| match value.map(|v| Id::name(&v)) {
            None => Ok(None),
            Some(Ok(id)) => Ok(Some(id)),
            Some(Err(e)) => Err(Rejection::new(
                ErrorCategory::Validation,
                codes::INVALID_MESSAGE,
                format!("{field} {e}"),
            )
            .and_close(CloseCode::POLICY_VIOLATION)),
        };
        let names = named("conversation_id", conversation)
            .and_then(|c| named("definition_id", definition).map(|d| (c, d)));
        let (conversation_id, definition_id) = match names {
            Ok(names) => names,
            Err(rejection) => {
                self.reject(now, key, rejection);
                return;
            }
        };
        if let Some(session) = self.sessions.get_mut(&key) {
            session.conversation_id = conversation_id;
            session.definition_id = definition_id.map(|d| d.as_str().to_owned());
        }
        let credentials = match (token, cookie) {
            (Some(token), _) => Credentials::Token(token),
            (None, Some(cookie)) => Credentials::Cookie(cookie),
            (None, None) => {
                let message = "no credentials: pass a token or a session cookie";
                let rejection =
                    Rejection::new(ErrorCategory::Authentication, codes::AUTH_REQUIRED, message)
                        .and_close(CloseCode::AUTH_FAILED);
                self.fail_auth(now, key, AuthFailure::NoCredentials, rejection);
                return;
            }
        };
        self.request_verify(key, socket, credentials, request.origin, Purpose::Open);
        self.set_deadline(key, TimerKind::AuthTimeout, Some(now + self.config.auth_timeout));
    }

    /// Closes a connection, telling the client why.
    pub fn close_connection(
        &mut self,
        now: Instant,
        connection_id: &Id,
        code: CloseCode,
        reason: &'static str,
    ) {
        if let Some(&key) = self.by_connection_id.get(connection_id) {
            self.close(now, key, code, reason);
        }
    }

    /// Closes the session's socket with `code` (telling the adapter), then ends or parks the
    /// session by what the code advises a client.
    pub(super) fn close(&mut self, now: Instant, key: Key, code: CloseCode, reason: &'static str) {
        let Some(session) = self.sessions.get_mut(&key) else { return };
        // What the socket was handed goes before its close (an error, a shutdown notice).
        session.spill(&mut self.outputs);
        if let Some(socket) = session.socket.take() {
            self.sockets.remove(&socket);
            self.closing.insert(socket);
            self.outputs.push_back(Output::Close { socket, code, reason });
        }
        let resumable = code.reconnect_advice() != ReconnectAdvice::DoNotReconnect;
        self.end_session(now, key, code, reason, resumable);
    }

    /// The socket is gone: park an established session for resume if `resumable`, or end it.
    pub(super) fn end_session(
        &mut self,
        now: Instant,
        key: Key,
        code: CloseCode,
        reason: &'static str,
        resumable: bool,
    ) {
        let Some(session) = self.sessions.get(&key) else { return };
        let state = session.state();
        let established = matches!(state, ConnectionState::Active | ConnectionState::Paused);
        let member = session.is_member();
        if resumable && established && !self.shutting_down {
            let connection_id = session.connection_id.clone();
            self.transition(now, key, ConnectionState::Reconnecting, reason);
            self.set_deadline(key, TimerKind::Heartbeat, None);
            self.set_deadline(key, TimerKind::TokenExpiry, None);
            self.set_deadline(key, TimerKind::ResumeWindow, Some(now + self.config.resume_window));
            self.save_record(key, self.config.resume_window);
            self.outputs.push_back(Output::Event(HubEvent::Disconnected {
                connection_id,
                code: Some(code),
            }));
            return;
        }
        if established {
            self.transition(now, key, ConnectionState::Closing, reason);
        }
        self.transition(now, key, ConnectionState::Closed, reason);
        let Some(session) = self.sessions.get(&key) else { return };
        // Gone for good: not resumable elsewhere either. (A shutdown's sessions are: their
        // clients come back through another instance; one claimed elsewhere is not ours.)
        if member && !self.shutting_down && reason != "resumed_elsewhere" {
            let connection_id = session.connection_id.clone();
            self.links.drop_session(&connection_id);
        }
        let Some(session) = self.sessions.get(&key) else { return };
        let event = HubEvent::ConnectionClosed {
            connection_id: session.connection_id.clone(),
            user_id: session.user_id().map(str::to_owned),
            code,
            reason,
        };
        self.remove_session(now, key);
        self.outputs.push_back(Output::Event(event));
    }

    /// Forgets a session and everything that points at it.
    pub(super) fn remove_session(&mut self, now: Instant, key: Key) {
        let Some(session) = self.sessions.remove(&key) else { return };
        if let Some(socket) = session.socket {
            self.sockets.remove(&socket);
        }
        for request in session.pending_verify.into_iter().chain(session.pending_join) {
            self.requests.remove(&request);
        }
        if session.pending {
            self.pending_auths -= 1;
        }
        self.by_connection_id.remove(&session.connection_id);
        if let Some(user) = session.principal.as_ref().map(|p| &p.user_id) {
            if let Some(keys) = self.by_user.get_mut(user) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_user.remove(user);
                    self.unsubscribe(now, Channel::User(user.clone()));
                }
            }
        }
        if let Some(conversation) = &session.conversation_id {
            if let Some(keys) = self.by_conversation.get_mut(conversation) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_conversation.remove(conversation);
                    self.unsubscribe(now, Channel::Conversation(conversation.clone()));
                }
            }
        }
    }

    pub(super) fn handle_transport_closed(
        &mut self,
        now: Instant,
        socket: SocketId,
        code: Option<CloseCode>,
    ) {
        if self.closing.remove(&socket) {
            self.check_drained();
            return;
        }
        let Some(key) = self.sockets.remove(&socket) else { return };
        if let Some(session) = self.sessions.get_mut(&key) {
            session.socket = None;
            session.spill(&mut self.outputs); // Nothing writes it now: dropped.
        }
        let deliberate = code == Some(CloseCode::NORMAL);
        self.end_session(
            now,
            key,
            code.unwrap_or(CloseCode::ABNORMAL),
            if deliberate { "client_closed" } else { "transport_closed" },
            !deliberate,
        );
        self.check_drained();
    }
}
