//! A frame from a client: parsed, counted, passed through the middleware, then to the hub's
//! own system handlers or to the router's route.

use super::Hub;
use super::auth::Purpose;
use super::session::Key;
use crate::protocol::{CloseCode, Envelope, Heartbeat, ProtocolError, SystemMessage, codes, types};
use crate::server::io::{Credentials, HubEvent, Output};
use crate::server::router::{Action, MiddlewareContext, Rejection, Routed, Sender, rate_rejection};
use crate::server::state::ConnectionState;
use crate::time::Instant;
use bytes::Bytes;
use std::collections::BTreeMap;

impl Hub {
    pub(super) fn handle_text(&mut self, now: Instant, key: Key, frame: Bytes) {
        self.touch(now, key);
        let len = frame.len();
        let envelope = match Envelope::parse_shared(frame, self.config.max_frame_bytes) {
            Ok(envelope) => envelope,
            Err(error) => {
                self.outputs
                    .push_back(Output::Event(HubEvent::Received { plane: None, bytes: len }));
                let counts = error.counts_as_invalid_frame();
                self.reject(now, key, error.into());
                if counts {
                    self.count_invalid(now, key);
                }
                return;
            }
        };
        self.outputs.push_back(Output::Event(HubEvent::Received {
            plane: Some(envelope.message_type.plane()),
            bytes: len,
        }));
        let Some(session) = self.sessions.get_mut(&key) else { return };
        if envelope.message_type.is_system() {
            // The system plane has its own budget, whatever the middleware does.
            let verdict = session.rate_limiter.check_system(&self.config, now);
            if let Some(rejection) = rate_rejection(verdict, "system") {
                self.rate_limited(now, key, &envelope, rejection);
                return;
            }
        }

        let mut attributes = BTreeMap::new();
        let cx = MiddlewareContext {
            sender: Sender {
                connection_id: &session.connection_id,
                user_id: session.principal.as_ref().map(|p| p.user_id.as_str()),
                roles: session.principal.as_ref().map_or(&[][..], |p| &p.roles[..]),
                conversation_id: session.conversation_id.as_ref(),
                can_write: session.can_write,
            },
            attributes: &mut attributes,
            now,
            config: &self.config,
            rate_limiter: &mut session.rate_limiter,
        };

        if envelope.message_type.is_system() {
            let mut cx = cx;
            if let Err(rejection) = self.router.run_middleware(&mut cx, &envelope) {
                self.reject(now, key, rejection);
                return;
            }
            // Unknown system types, and server-to-client ones from a client, are invalid: they
            // count towards the close as unparseable frames do.
            if !types::is_client_to_server(envelope.message_type.as_str()) {
                let error = ProtocolError::UnknownMessageType(envelope.message_type.to_string());
                self.reject(now, key, error.into());
                self.count_invalid(now, key);
                return;
            }
            match SystemMessage::from_envelope(&envelope) {
                Ok(message) => self.handle_system(now, key, &envelope, message),
                Err(error) => self.reject(now, key, error.into()),
            }
            return;
        }
        if matches!(envelope.message_type.as_str(), "control.flow.pause" | "control.flow.resume") {
            let mut cx = cx;
            match self.router.run_middleware(&mut cx, &envelope) {
                Ok(()) => self.handle_flow(
                    now,
                    key,
                    envelope.message_type.as_str() == "control.flow.pause",
                ),
                Err(rejection) => self.reject(now, key, rejection),
            }
            return;
        }

        let mut actions = std::mem::take(&mut self.actions);
        match self.router.dispatch(cx, &envelope, &mut actions) {
            Routed::Handled => {
                for action in actions.drain(..) {
                    self.run_action(now, action);
                }
            }
            Routed::Forward => {
                let session = &self.sessions[&key];
                self.outputs.push_back(Output::Event(HubEvent::Message {
                    connection_id: session.connection_id.clone(),
                    user_id: session.user_id().unwrap_or_default().to_owned(),
                    conversation_id: session.conversation_id.clone(),
                    envelope: Box::new(envelope),
                }));
            }
            Routed::Rejected(rejection) => {
                actions.clear();
                if rejection.error.code == codes::RATE_LIMITED {
                    self.rate_limited(now, key, &envelope, rejection);
                } else {
                    self.reject(now, key, rejection);
                }
            }
        }
        self.actions = actions;
    }

    /// Counts an invalid frame; too many within the window close the connection (4012).
    fn count_invalid(&mut self, now: Instant, key: Key) {
        let Some(session) = self.sessions.get_mut(&key) else { return };
        if session.rate_limiter.count_invalid(&self.config, now) {
            self.close(now, key, CloseCode::TOO_MANY_INVALID_MESSAGES, "invalid_frames");
        }
    }

    /// Reports a message the rate limiter refused, and tells the client.
    fn rate_limited(&mut self, now: Instant, key: Key, envelope: &Envelope, rejection: Rejection) {
        let Some(session) = self.sessions.get(&key) else { return };
        let connection_id = session.connection_id.clone();
        let message_type = envelope.message_type.to_string();
        self.outputs
            .push_back(Output::Event(HubEvent::RateLimited { connection_id, message_type }));
        self.reject(now, key, rejection);
    }

    pub(super) fn run_action(&mut self, now: Instant, action: Action) {
        match action {
            Action::Send(target, outgoing) => {
                let message_type = outgoing.message_type.to_string();
                if let Err(error) = self.send(now, target, outgoing) {
                    tracing::warn!(target: "switchboard::hub", %message_type, %error, "a handler's send was refused");
                    self.outputs
                        .push_back(Output::Event(HubEvent::SendRefused { message_type, error }));
                }
            }
            Action::Close { connection_id, code, reason } => {
                self.close_connection(now, &connection_id, code, reason)
            }
        }
    }

    pub(super) fn handle_system(
        &mut self,
        now: Instant,
        key: Key,
        envelope: &Envelope,
        message: SystemMessage,
    ) {
        match message {
            SystemMessage::Ping(_) => {
                let pong = SystemMessage::Pong(Heartbeat { timestamp: self.wall.timestamp(now) });
                self.send_system_reply(now, key, pong, Some(envelope.id.clone()));
            }
            SystemMessage::Pong(_) => {
                let Some(session) = self.sessions.get_mut(&key) else { return };
                if let Some(sent) = session.last_ping_at.take() {
                    let millis = now.saturating_since(sent).as_millis() as u64;
                    let connection_id = session.connection_id.clone();
                    self.outputs.push_back(Output::Event(HubEvent::PingRoundTrip {
                        connection_id,
                        millis,
                    }));
                }
            }
            SystemMessage::ConnectionResume(resume) => self.handle_resume(now, key, resume),
            SystemMessage::AuthRefresh(refresh) => {
                let Some(session) = self.sessions.get(&key) else { return };
                // One verification at a time: refreshes sent while one is pending are dropped.
                let idle = session.pending_verify.is_none() && session.principal.is_some();
                if let (Some(socket), true) = (session.socket, idle) {
                    self.request_verify(
                        key,
                        socket,
                        Credentials::Token(refresh.token),
                        None,
                        Purpose::Refresh,
                    );
                }
            }
            SystemMessage::ConnectionClose(_) => {
                self.close(now, key, CloseCode::NORMAL, "client_close")
            }
            // Refused by the caller: server-to-client messages have no business here.
            SystemMessage::ConnectionEstablished(_)
            | SystemMessage::ChannelReset(_)
            | SystemMessage::ConnectionResumed(_)
            | SystemMessage::AuthRefreshed(_)
            | SystemMessage::Error(_) => {}
        }
    }

    /// `control.flow.pause` / `control.flow.resume`.
    pub(super) fn handle_flow(&mut self, now: Instant, key: Key, pause: bool) {
        let Some(session) = self.sessions.get(&key) else { return };
        match (pause, session.state()) {
            (true, ConnectionState::Active) => {
                self.transition(now, key, ConnectionState::Paused, "flow_pause")
            }
            (false, ConnectionState::Paused) => {
                self.transition(now, key, ConnectionState::Active, "flow_resume");
                self.flush_held(now, key);
            }
            _ => {}
        }
    }

    /// Sends a `system.error` for `rejection`, and closes if it says so.
    pub(super) fn reject(&mut self, now: Instant, key: Key, rejection: Rejection) {
        self.send_system(now, key, SystemMessage::Error(rejection.error));
        if let Some(code) = rejection.close {
            self.close(now, key, code, "rejected");
        }
    }
}
