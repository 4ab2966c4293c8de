//! Sockets and their loss: opening attempts, liveness, backoff and what a close code means.

use crate::client::config::TokenSource;
use crate::client::io::{AttemptId, ClientEvent, ClientOutput, SendError};
use crate::client::state::ClientState;
use crate::protocol::{CloseCode, CloseReason, Heartbeat, ReconnectAdvice, SystemMessage};
use crate::time::Instant;
use std::time::Duration;

use super::{Client, Socket};

/// A timer that fires this much later than asked was probably throttled (a background tab):
/// its silence is checked with a probe before the socket is declared dead.
pub(super) const LATE_TIMER: Duration = Duration::from_secs(1);

impl Client {
    pub(super) fn connect(&mut self, now: Instant) {
        if matches!(self.state, ClientState::Disconnected | ClientState::Closed) {
            self.stopped_by_user = false;
            self.restart(now);
        }
    }

    /// A fresh series of attempts, starting now.
    pub(super) fn restart(&mut self, now: Instant) {
        self.backoff.reset();
        self.backoff.start();
        self.retry_at = None;
        self.open_attempt(now);
    }

    pub(super) fn disconnect(&mut self, now: Instant, code: CloseCode, reason: String) {
        if let Some(socket) = self.socket.take() {
            self.outputs.push_back(ClientOutput::CloseSocket {
                attempt: socket.attempt,
                code,
                reason: reason.clone(),
            });
            if socket.opened {
                self.emit(ClientEvent::Disconnected { code: Some(code), reason });
            }
        }
        self.stopped_by_user = true;
        self.retry_at = None;
        self.probe_deadline = None;
        self.pending_resume = None;
        self.waiting_for_token = false;
        self.token_requested = false;
        self.backoff.stop();
        // A deliberate close ends the session: nothing to resume (stored at once).
        self.connection_id = None;
        self.last_sequence = 0;
        self.last_message_id = None;
        self.positions.clear();
        self.persist_due = Some(now);
        self.persist_now();
        self.persisted_at = Some(now);
        for queued in std::mem::take(&mut self.queue) {
            self.emit(ClientEvent::SendFailed { id: queued.id, error: SendError::Closed });
        }
        self.queue_bytes = 0;
        self.set_state(now, ClientState::Closed, "disconnect", Some(code), false);
    }

    /// `pagehide`: the resume point is stored and the socket closed with 1001, so the server
    /// parks the session; nothing is tried until the page is shown again.
    pub(super) fn page_hide(&mut self, now: Instant) {
        self.persist_now();
        if self.stopped_by_user || self.page_hidden {
            return;
        }
        self.page_hidden = true;
        self.retry_at = None;
        let Some(socket) = self.socket.take() else {
            if self.state == ClientState::Reconnecting {
                self.set_state(now, ClientState::Reconnecting, "page_hidden", None, true);
            }
            return;
        };
        let code = CloseCode::GOING_AWAY;
        self.outputs.push_back(ClientOutput::CloseSocket {
            attempt: socket.attempt,
            code,
            reason: "page_hidden".to_owned(),
        });
        self.probe_deadline = None;
        self.pending_resume = None;
        self.ping_out = None;
        self.last_close = Some((Some(code), "page_hidden".to_owned()));
        if socket.opened {
            self.emit(ClientEvent::Disconnected { code: Some(code), reason: "page_hidden".into() });
        }
        self.set_state(now, ClientState::Reconnecting, "page_hidden", Some(code), true);
    }

    pub(super) fn wake(&mut self, now: Instant, reason: &'static str) {
        match self.state {
            ClientState::Active => self.probe(now),
            ClientState::Reconnecting => self.restart(now),
            ClientState::Closed if !self.stopped_by_user => self.restart(now),
            _ => {
                let _ = reason;
            }
        }
    }

    pub(super) fn handle_timeout(&mut self, now: Instant) {
        if let Some(socket) = &self.socket {
            let established = self.state == ClientState::Active;
            let liveness = socket.last_heard + self.heartbeat_interval * 2;
            if !established && socket.deadline <= now {
                let reason = if socket.opened { "establish_timeout" } else { "connect_timeout" };
                self.abort_socket(now, reason);
            } else if socket.opened && liveness <= now {
                if now.saturating_since(liveness) > LATE_TIMER && self.probe_deadline.is_none() {
                    // The timer fired late: the page was probably throttled, and frames may be
                    // waiting behind it. Ask before declaring the socket dead.
                    self.probe(now);
                } else if self.probe_deadline.is_none() {
                    self.abort_socket(now, "heartbeat_timeout");
                }
            }
        }
        if self.probe_deadline.is_some_and(|at| at <= now) {
            self.probe_deadline = None;
            self.abort_socket(now, "probe_timeout");
        }
        // After the socket's deadlines: a loss just above may have scheduled a retry that is
        // already due (a retry hint of 0, a full-jitter delay of 0).
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            self.open_attempt(now);
        }
        if self.token_refresh_at.is_some_and(|at| at <= now)
            && !self.token_requested
            && !self.stopped_by_user
        {
            self.token_refresh_at = None;
            self.request_token();
        }
        if self.persist_due.is_some_and(|at| at <= now) {
            self.persisted_at = Some(now);
            self.persist_now();
        }
        if self.state == ClientState::Active && self.next_ping_at.is_some_and(|at| at <= now) {
            self.ping(now);
        }
        while self.queue.front().is_some_and(|q| q.expires_at <= now) {
            if let Some(expired) = self.queue.pop_front() {
                self.queue_bytes -= expired.frame.len();
                self.emit(ClientEvent::SendFailed { id: expired.id, error: SendError::Expired });
            }
        }
    }

    pub(super) fn open_attempt(&mut self, now: Instant) {
        if let Some(old) = self.socket.take() {
            // Never two sockets: close the old one first.
            self.outputs.push_back(ClientOutput::CloseSocket {
                attempt: old.attempt,
                code: CloseCode::GOING_AWAY,
                reason: "replaced".to_owned(),
            });
        }
        self.pending_resume = None;
        if self.config.token == TokenSource::Application && !self.has_fresh_token(now) {
            self.waiting_for_token = true;
            self.request_token();
            self.set_state(now, ClientState::Connecting, "awaiting_token", None, true);
            return;
        }
        let attempt = AttemptId(self.next_attempt);
        self.next_attempt += 1;
        self.socket = Some(Socket {
            attempt,
            opened: false,
            established: false,
            deadline: now + self.config.connect_timeout,
            last_heard: now,
        });
        tracing::debug!(target: "protocol:client", attempt = attempt.0, "opening a socket");
        self.outputs.push_back(ClientOutput::OpenSocket { attempt, url: self.url() });
        self.set_state(now, ClientState::Connecting, "connecting", None, true);
    }

    /// Closes the current socket from this side (it is dead or too slow) and reconnects.
    pub(super) fn abort_socket(&mut self, now: Instant, reason: &'static str) {
        if let Some(socket) = &self.socket {
            self.outputs.push_back(ClientOutput::CloseSocket {
                attempt: socket.attempt,
                code: CloseCode::GOING_AWAY,
                reason: reason.to_owned(),
            });
        }
        self.socket_lost(now, None, reason.to_owned(), true);
    }

    /// The socket is gone; decide what next from its close code.
    pub(super) fn socket_lost(
        &mut self,
        now: Instant,
        code: Option<CloseCode>,
        reason: String,
        by_us: bool,
    ) {
        let Some(socket) = self.socket.take() else { return };
        self.probe_deadline = None;
        self.pending_resume = None;
        self.ping_out = None;
        if socket.opened {
            self.emit(ClientEvent::Disconnected { code, reason: reason.clone() });
        }
        tracing::debug!(target: "protocol:reconnect", ?code, reason, by_us, "socket lost");
        let told = self.server_close.take().and_then(CloseReason::as_str);
        let said =
            told.map(str::to_owned).or_else(|| Some(reason.clone()).filter(|r| !r.is_empty()));
        self.last_close = Some((code, said.unwrap_or_else(|| "connection_lost".to_owned())));
        let advice =
            code.map_or(ReconnectAdvice::ReconnectWithBackoff, CloseCode::reconnect_advice);
        match advice {
            ReconnectAdvice::DoNotReconnect => {
                self.backoff.stop();
                let reason = told.unwrap_or("do_not_reconnect");
                self.set_state(now, ClientState::Closed, reason, code, false);
            }
            ReconnectAdvice::RefreshTokenThenReconnect => {
                if self.config.token == TokenSource::Application && !self.refreshed_after_expiry {
                    self.refreshed_after_expiry = true;
                    self.token = None;
                    self.token_expires_at = None;
                    self.open_attempt(now);
                } else {
                    self.backoff.stop();
                    self.set_state(now, ClientState::Closed, "token_rejected", code, false);
                }
            }
            ReconnectAdvice::ReconnectWithBackoff => {
                self.schedule_retry(now, code, told.unwrap_or("connection_lost"))
            }
        }
    }

    /// Schedules the next attempt after a loss for `reason` (what the server said, or
    /// `connection_lost`).
    pub(super) fn schedule_retry(
        &mut self,
        now: Instant,
        code: Option<CloseCode>,
        reason: &'static str,
    ) {
        if self.backoff.exhausted() {
            self.backoff.stop();
            self.set_state(now, ClientState::Closed, "max_attempts", code, false);
            return;
        }
        self.backoff.start();
        let delay = self.backoff.next_delay(&mut self.rng);
        // A server's hint (graceful shutdown spreads its clients) overrides the first delay.
        let delay = self.retry_hint.take().unwrap_or(delay);
        self.retry_at = (self.online && !self.page_hidden).then(|| now + delay);
        // Why the client waits: an attempt is pointless while offline or hidden.
        let reason = if !self.online {
            "offline"
        } else if self.page_hidden {
            "page_hidden"
        } else {
            reason
        };
        tracing::debug!(target: "protocol:reconnect", attempt = self.backoff.attempt(), delay_ms = delay.as_millis() as u64, "reconnecting");
        self.set_state(now, ClientState::Reconnecting, reason, code, true);
    }

    pub(super) fn probe(&mut self, now: Instant) {
        if self.probe_deadline.is_none() {
            self.probe_deadline = Some(now + self.config.probe_timeout);
            self.ping(now);
        }
    }

    /// Pings the server; its pong gives the round trip.
    pub(super) fn ping(&mut self, now: Instant) {
        let ping = SystemMessage::Ping(Heartbeat { timestamp: self.wall.timestamp(now) });
        if let Some(id) = self.send_system(now, ping, None) {
            self.ping_out = Some((id, now));
        }
        self.next_ping_at = self.config.ping_interval.map(|interval| now + interval);
    }

    /// The endpoint with the query: token, conversation and definition, percent-encoded.
    pub(super) fn url(&self) -> String {
        let mut url = self.config.url.clone();
        let mut separator = if url.contains('?') { '&' } else { '?' };
        let params = [
            ("token", self.token.as_ref().map(|t| t.0.as_str())),
            ("conversation_id", self.config.conversation_id.as_deref()),
            ("definition_id", self.config.definition_id.as_deref()),
        ];
        for (name, value) in params {
            if let Some(value) = value {
                url.push(separator);
                url.push_str(name);
                url.push('=');
                percent_encode(value, &mut url);
                separator = '&';
            }
        }
        url
    }
}

/// RFC 3986 unreserved characters stay; every other byte becomes `%XX`.
fn percent_encode(value: &str, out: &mut String) {
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 15)]));
        }
    }
}
