//! The client: one logical connection to switchboard that survives socket losses.

use super::backoff::Backoff;
use super::bus::MessageBus;
use super::config::{ClientConfig, TokenSource};
use super::io::{
    AttemptId, ClientEvent, ClientInput, ClientOutput, OutgoingMessage, ResumeState, SendError,
    StateChange,
};
use super::state::ClientState;
use crate::protocol::{
    CloseCode, ConnectionResume, Envelope, Heartbeat, Id, MessageType, Payload, ReconnectAdvice,
    Source, SystemMessage, types,
};
use crate::rng::Rng;
use crate::time::{Instant, WallClock};
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::Duration;

/// Why the client wants to be woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTimer {
    /// The next reconnection attempt.
    Retry,
    /// A socket that has not opened, or not said `established`, in time.
    SocketDeadline,
    /// Silence for twice the heartbeat interval.
    Liveness,
    /// A probe ping went unanswered.
    Probe,
    /// Time to ask for a fresh token.
    TokenRefresh,
    /// The oldest queued message expires.
    QueueExpiry,
}

/// A timer that fires this much later than asked was probably throttled (a background tab):
/// its silence is checked with a probe before the socket is declared dead.
const LATE_TIMER: Duration = Duration::from_secs(1);

/// The shortest time between two token requests made for expiry.
const MIN_TOKEN_REQUEST_INTERVAL: Duration = Duration::from_secs(5);

/// A credential: kept, sent, never shown.
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug)]
struct Socket {
    attempt: AttemptId,
    opened: bool,
    /// When a socket that has not opened (or not established) is given up.
    deadline: Instant,
    last_heard: Instant,
}

#[derive(Debug)]
struct PendingResume {
    /// The session the server opened for this socket, kept if the resume is refused.
    fresh: Id,
    /// Application messages of that session that arrived meanwhile.
    held: VecDeque<Envelope>,
    overflowed: bool,
}

#[derive(Debug)]
struct Queued {
    id: Id,
    frame: Bytes,
    expires_at: Instant,
}

/// The client state machine. See the [module docs](super) for the contract.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    rng: Rng,
    wall: WallClock,
    state: ClientState,
    backoff: Backoff,
    bus: MessageBus,
    outputs: VecDeque<ClientOutput>,
    next_attempt: u64,
    socket: Option<Socket>,
    connection_id: Option<Id>,
    last_sequence: u64,
    last_message_id: Option<Id>,
    pending_resume: Option<PendingResume>,
    /// The server said (by a refused flow resume) that the next sequence jumps.
    expect_jump: bool,
    heartbeat_interval: Duration,
    retry_at: Option<Instant>,
    probe_deadline: Option<Instant>,
    token: Option<Secret>,
    token_expires_at: Option<Instant>,
    token_refresh_at: Option<Instant>,
    token_requested: bool,
    waiting_for_token: bool,
    /// A 4001 was answered with one refresh; a second 4001 closes.
    refreshed_after_expiry: bool,
    retry_hint: Option<Duration>,
    online: bool,
    stopped_by_user: bool,
    queue: VecDeque<Queued>,
    queue_bytes: usize,
}

impl Client {
    /// A client with `config`, drawing its randomness (ids, jitter) from `seed`. `now` is the
    /// adapter's monotonic time and `unix_ms` the wall clock read at the same moment.
    pub fn new(config: ClientConfig, seed: u64, now: Instant, unix_ms: i64) -> Self {
        let heartbeat_interval = config.heartbeat_interval;
        let backoff = Backoff::new(config.backoff);
        let token = match &config.token {
            TokenSource::Static(token) => Some(Secret(token.clone())),
            _ => None,
        };
        Client {
            config,
            rng: Rng::new(seed),
            wall: WallClock::new(now, unix_ms),
            state: ClientState::Disconnected,
            backoff,
            bus: MessageBus::default(),
            outputs: VecDeque::new(),
            next_attempt: 1,
            socket: None,
            connection_id: None,
            last_sequence: 0,
            last_message_id: None,
            pending_resume: None,
            expect_jump: false,
            heartbeat_interval,
            retry_at: None,
            probe_deadline: None,
            token,
            token_expires_at: None,
            token_refresh_at: None,
            token_requested: false,
            waiting_for_token: false,
            refreshed_after_expiry: false,
            retry_hint: None,
            online: true,
            stopped_by_user: false,
            queue: VecDeque::new(),
            queue_bytes: 0,
        }
    }

    /// Starts from a state persisted earlier (a reloaded page resumes its session).
    pub fn restore(&mut self, state: ResumeState) {
        self.connection_id = state.connection_id;
        self.last_sequence = state.last_sequence;
        self.last_message_id = state.last_message_id;
    }

    /// The current state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// The session's connection id, once established.
    pub fn connection_id(&self) -> Option<&Id> {
        self.connection_id.as_ref()
    }

    /// What would be persisted now.
    pub fn resume_state(&self) -> ResumeState {
        ResumeState {
            connection_id: self.connection_id.clone(),
            last_sequence: self.last_sequence,
            last_message_id: self.last_message_id.clone(),
        }
    }

    /// The message bus: subscribe patterns here; [`ClientEvent::Message`] names the
    /// subscribers of each message.
    pub fn bus_mut(&mut self) -> &mut MessageBus {
        &mut self.bus
    }

    /// Reconnection attempts made since the connection was last active.
    pub fn attempt(&self) -> u32 {
        self.backoff.attempt()
    }

    /// The next output, or `None`.
    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.outputs.pop_front()
    }

    /// When the client next wants [`ClientInput::Timeout`], and why.
    pub fn poll_timeout(&self) -> Option<(Instant, ClientTimer)> {
        // While a probe is out, its deadline stands in for the liveness one.
        let liveness = self
            .socket
            .as_ref()
            .filter(|s| s.opened && self.probe_deadline.is_none())
            .map(|s| s.last_heard + self.heartbeat_interval * 2);
        let socket_deadline = self
            .socket
            .as_ref()
            .filter(|_| !matches!(self.state, ClientState::Active))
            .map(|s| s.deadline);
        let token_refresh =
            self.token_refresh_at.filter(|_| !self.token_requested && !self.stopped_by_user);
        [
            (self.retry_at, ClientTimer::Retry),
            (socket_deadline, ClientTimer::SocketDeadline),
            (liveness, ClientTimer::Liveness),
            (self.probe_deadline, ClientTimer::Probe),
            (token_refresh, ClientTimer::TokenRefresh),
            (self.queue.front().map(|q| q.expires_at), ClientTimer::QueueExpiry),
        ]
        .into_iter()
        .filter_map(|(at, timer)| at.map(|at| (at, timer)))
        .min_by_key(|(at, _)| *at)
    }

    /// Feeds one input. Drain [`Client::poll_output`] before the next.
    pub fn handle_input(&mut self, now: Instant, input: ClientInput) {
        match input {
            ClientInput::Connect => self.connect(now),
            ClientInput::Disconnect { code, reason } => self.disconnect(now, code, reason),
            ClientInput::Send(message) => {
                let _ = self.send(now, message);
            }
            ClientInput::SocketOpened { attempt } => {
                let establish = now + self.config.establish_timeout;
                let Some(socket) = self.current(attempt) else { return };
                socket.opened = true;
                socket.last_heard = now;
                socket.deadline = establish;
                self.set_state(now, ClientState::Connected, "socket_opened", None, true);
            }
            ClientInput::Frame { attempt, text } => {
                let Some(socket) = self.current(attempt) else { return };
                socket.last_heard = now;
                self.probe_deadline = None;
                self.handle_frame(now, &text);
            }
            ClientInput::SocketClosed { attempt, code, reason } => {
                if self.current(attempt).is_none() {
                    return;
                }
                self.socket_lost(now, code, reason, false);
            }
            ClientInput::Token { token, expires_at_unix_ms } => {
                self.handle_token(now, token, expires_at_unix_ms)
            }
            ClientInput::Online => {
                self.online = true;
                self.wake(now, "online");
            }
            ClientInput::Offline => {
                self.online = false;
                if self.state == ClientState::Reconnecting && self.retry_at.take().is_some() {
                    self.set_state(now, ClientState::Reconnecting, "offline", None, true);
                }
            }
            ClientInput::Visible => self.wake(now, "visible"),
            ClientInput::Hidden => {}
            ClientInput::ReconnectNow => {
                if !matches!(
                    self.state,
                    ClientState::Active | ClientState::Connected | ClientState::Connecting
                ) {
                    self.stopped_by_user = false;
                    self.restart(now);
                }
            }
            ClientInput::Timeout => self.handle_timeout(now),
        }
    }

    /// Sends a message now if active, or queues it; returns its id. Refused when the client
    /// was closed by [`ClientInput::Disconnect`] or the queue is full; nothing is dropped
    /// silently (a queued message that expires comes back as [`ClientEvent::SendFailed`]).
    pub fn send(&mut self, now: Instant, message: OutgoingMessage) -> Result<Id, SendError> {
        let conversation = message
            .conversation_id
            .or_else(|| self.config.conversation_id.as_deref().and_then(|c| Id::new(c).ok()));
        let mut envelope =
            self.envelope(now, message.message_type, message.payload).in_conversation(conversation);
        envelope.correlation_id = message.correlation_id;
        let id = envelope.id.clone();
        let result = self.send_envelope(now, envelope);
        if let Err(error) = &result {
            self.emit(ClientEvent::SendFailed { id: id.clone(), error: error.clone() });
        }
        result.map(|()| id)
    }

    fn send_envelope(&mut self, now: Instant, envelope: Envelope) -> Result<(), SendError> {
        if self.stopped_by_user {
            return Err(SendError::Closed);
        }
        let frame = Bytes::from(envelope.encode());
        if self.state == ClientState::Active {
            if let Some(socket) = &self.socket {
                self.outputs.push_back(ClientOutput::SendFrame { attempt: socket.attempt, frame });
                return Ok(());
            }
        }
        if self.queue.len() >= self.config.queue_max_messages {
            return Err(SendError::QueueFull("messages"));
        }
        if self.queue_bytes + frame.len() > self.config.queue_max_bytes {
            return Err(SendError::QueueFull("bytes"));
        }
        self.queue_bytes += frame.len();
        self.queue.push_back(Queued {
            id: envelope.id,
            frame,
            expires_at: now + self.config.queue_ttl,
        });
        Ok(())
    }

    // ----- inputs -----

    fn connect(&mut self, now: Instant) {
        if matches!(self.state, ClientState::Disconnected | ClientState::Closed) {
            self.stopped_by_user = false;
            self.restart(now);
        }
    }

    /// A fresh series of attempts, starting now.
    fn restart(&mut self, now: Instant) {
        self.backoff.reset();
        self.backoff.start();
        self.retry_at = None;
        self.open_attempt(now);
    }

    fn disconnect(&mut self, now: Instant, code: CloseCode, reason: String) {
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
        // A deliberate close ends the session: nothing to resume.
        self.connection_id = None;
        self.last_sequence = 0;
        self.last_message_id = None;
        self.persist();
        for queued in std::mem::take(&mut self.queue) {
            self.emit(ClientEvent::SendFailed { id: queued.id, error: SendError::Closed });
        }
        self.queue_bytes = 0;
        self.set_state(now, ClientState::Closed, "disconnect", Some(code), false);
    }

    fn wake(&mut self, now: Instant, reason: &'static str) {
        match self.state {
            ClientState::Active => self.probe(now),
            ClientState::Reconnecting => self.restart(now),
            ClientState::Closed if !self.stopped_by_user => self.restart(now),
            _ => {
                let _ = reason;
            }
        }
    }

    fn handle_token(&mut self, now: Instant, token: String, expires_at_unix_ms: Option<i64>) {
        if self.stopped_by_user || self.config.token != TokenSource::Application {
            return;
        }
        self.token_requested = false;
        let unchanged = self.token.as_ref().map(|t| t.0.as_str()) == Some(token.as_str());
        self.token = Some(Secret(token.clone()));
        self.token_expires_at = expires_at_unix_ms.map(|ms| self.wall.instant_at(ms));
        // Ask again `token_refresh_lead` before expiry; a token that is already that close
        // (an identity library that renews late) is asked for again halfway to its expiry, and
        // never sooner than MIN_TOKEN_REQUEST_INTERVAL, so nothing loops.
        self.token_refresh_at = self.token_expires_at.map(|expires| {
            let lead = expires - self.config.token_refresh_lead;
            if lead > now {
                lead
            } else {
                now + (expires.saturating_since(now) / 2).max(MIN_TOKEN_REQUEST_INTERVAL)
            }
        });
        if unchanged && !self.waiting_for_token {
            return;
        }
        if self.waiting_for_token {
            self.waiting_for_token = false;
            self.open_attempt(now);
        } else if self.state == ClientState::Active {
            let refresh = SystemMessage::AuthRefresh(crate::protocol::AuthRefresh { token });
            self.send_system(now, refresh, None);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            self.open_attempt(now);
        }
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
        if self.token_refresh_at.is_some_and(|at| at <= now)
            && !self.token_requested
            && !self.stopped_by_user
        {
            self.token_refresh_at = None;
            self.request_token();
        }
        while self.queue.front().is_some_and(|q| q.expires_at <= now) {
            if let Some(expired) = self.queue.pop_front() {
                self.queue_bytes -= expired.frame.len();
                self.emit(ClientEvent::SendFailed { id: expired.id, error: SendError::Expired });
            }
        }
    }

    fn handle_frame(&mut self, now: Instant, text: &[u8]) {
        let envelope = match Envelope::parse(text, usize::MAX) {
            Ok(envelope) => envelope,
            Err(error) => {
                self.emit(ClientEvent::LocalError(format!(
                    "unreadable frame from the server: {error}"
                )));
                return;
            }
        };
        if !envelope.message_type.is_system() {
            self.handle_application(envelope);
            return;
        }
        let message = match SystemMessage::from_envelope(&envelope) {
            Ok(message) => message,
            Err(error) => {
                self.emit(ClientEvent::LocalError(format!("unreadable system message: {error}")));
                return;
            }
        };
        match message {
            SystemMessage::Ping(_) => {
                let pong = SystemMessage::Pong(Heartbeat { timestamp: self.wall.timestamp(now) });
                self.send_system(now, pong, Some(envelope.id));
            }
            SystemMessage::ConnectionEstablished(established) => {
                if let Some(ms) = established.heartbeat_interval_ms.filter(|ms| *ms > 0) {
                    self.heartbeat_interval = Duration::from_millis(ms);
                }
                match self.connection_id.clone().filter(|_| self.config.resume) {
                    Some(previous) => {
                        self.pending_resume = Some(PendingResume {
                            fresh: established.connection_id,
                            held: VecDeque::new(),
                            overflowed: false,
                        });
                        let resume = ConnectionResume {
                            conversation_id: self
                                .config
                                .conversation_id
                                .clone()
                                .unwrap_or_default(),
                            last_message_id: self.last_message_id.as_ref().map(|id| id.to_string()),
                            last_item_index: None,
                            client_state: Default::default(),
                            connection_id: Some(previous),
                            last_sequence: Some(self.last_sequence),
                        };
                        self.send_system(now, SystemMessage::ConnectionResume(resume), None);
                    }
                    None => {
                        self.adopt_session(established.connection_id.clone());
                        self.become_active(now, established.connection_id, false, 0);
                    }
                }
            }
            SystemMessage::ConnectionResumed(resumed) => {
                let Some(pending) = self.pending_resume.take() else {
                    // A refused flow resume: what was held is gone, and sequences jump.
                    if !resumed.state_valid {
                        self.expect_jump = true;
                        self.emit(ClientEvent::Gap { reason: "held_messages_evicted" });
                    }
                    return;
                };
                if resumed.state_valid {
                    let id = resumed
                        .connection_id
                        .or(self.connection_id.clone())
                        .unwrap_or(pending.fresh);
                    self.connection_id = Some(id.clone());
                    self.become_active(now, id, true, resumed.missed_messages);
                } else {
                    self.emit(ClientEvent::Gap { reason: "resume_refused" });
                    self.adopt_session(pending.fresh.clone());
                    self.become_active(now, pending.fresh, false, 0);
                    for envelope in pending.held {
                        self.handle_application(envelope);
                    }
                    if pending.overflowed {
                        self.emit(ClientEvent::Gap { reason: "held_messages_overflowed" });
                        self.expect_jump = true;
                    }
                }
            }
            SystemMessage::ConnectionClose(close) => {
                self.retry_hint = close.retry_after_ms.map(Duration::from_millis);
            }
            SystemMessage::Error(error) => self.emit(ClientEvent::ServerError(error)),
            SystemMessage::Pong(_)
            | SystemMessage::AuthRefreshed(_)
            | SystemMessage::AuthRefresh(_)
            | SystemMessage::ConnectionResume(_) => {}
        }
    }

    fn handle_application(&mut self, envelope: Envelope) {
        if let Some(pending) = &mut self.pending_resume {
            if pending.held.len() < self.config.held_max_messages {
                pending.held.push_back(envelope);
            } else {
                pending.overflowed = true;
            }
            return;
        }
        if let Some(sequence) = envelope.sequence {
            if sequence <= self.last_sequence {
                tracing::debug!(target: "protocol:client", sequence, "dropping a message already received");
                return;
            }
            if sequence != self.last_sequence + 1 && !std::mem::take(&mut self.expect_jump) {
                self.emit(ClientEvent::Gap { reason: "sequence_jump" });
            }
            self.expect_jump = false;
            self.last_sequence = sequence;
            self.last_message_id = Some(envelope.id.clone());
            self.persist();
        }
        let subscribers = self.bus.publish(envelope.message_type.as_str());
        tracing::trace!(target: "protocol:bus", message_type = %envelope.message_type, subscribers = subscribers.len(), "delivering");
        self.emit(ClientEvent::Message { envelope, subscribers });
    }

    // ----- transitions -----

    fn adopt_session(&mut self, id: Id) {
        self.connection_id = Some(id);
        self.last_sequence = 0;
        self.last_message_id = None;
        self.expect_jump = false;
        self.persist();
    }

    fn become_active(&mut self, now: Instant, connection_id: Id, resumed: bool, replayed: u64) {
        self.backoff.stop();
        self.backoff.reset();
        self.refreshed_after_expiry = false;
        self.retry_hint = None;
        self.set_state(
            now,
            ClientState::Active,
            if resumed { "resumed" } else { "established" },
            None,
            true,
        );
        self.emit(ClientEvent::Connected { connection_id, resumed, replayed });
        // Queued messages go out in order, after the resume's replay.
        while let Some(queued) = self.queue.pop_front() {
            self.queue_bytes -= queued.frame.len();
            if queued.expires_at <= now {
                self.emit(ClientEvent::SendFailed { id: queued.id, error: SendError::Expired });
                continue;
            }
            if let Some(socket) = &self.socket {
                self.outputs.push_back(ClientOutput::SendFrame {
                    attempt: socket.attempt,
                    frame: queued.frame,
                });
            }
        }
    }

    fn open_attempt(&mut self, now: Instant) {
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
            deadline: now + self.config.connect_timeout,
            last_heard: now,
        });
        tracing::debug!(target: "protocol:client", attempt = attempt.0, "opening a socket");
        self.outputs.push_back(ClientOutput::OpenSocket { attempt, url: self.url() });
        self.set_state(now, ClientState::Connecting, "connecting", None, true);
    }

    fn has_fresh_token(&self, now: Instant) -> bool {
        self.token.is_some() && self.token_expires_at.is_none_or(|at| at > now)
    }

    fn request_token(&mut self) {
        if !self.token_requested {
            self.token_requested = true;
            self.outputs.push_back(ClientOutput::RequestToken);
        }
    }

    /// Closes the current socket from this side (it is dead or too slow) and reconnects.
    fn abort_socket(&mut self, now: Instant, reason: &'static str) {
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
    fn socket_lost(&mut self, now: Instant, code: Option<CloseCode>, reason: String, by_us: bool) {
        let Some(socket) = self.socket.take() else { return };
        self.probe_deadline = None;
        self.pending_resume = None;
        if socket.opened {
            self.emit(ClientEvent::Disconnected { code, reason: reason.clone() });
        }
        tracing::debug!(target: "protocol:reconnect", ?code, reason, by_us, "socket lost");
        let advice =
            code.map_or(ReconnectAdvice::ReconnectWithBackoff, CloseCode::reconnect_advice);
        match advice {
            ReconnectAdvice::DoNotReconnect => {
                self.backoff.stop();
                self.set_state(now, ClientState::Closed, "do_not_reconnect", code, false);
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
            ReconnectAdvice::ReconnectWithBackoff => self.schedule_retry(now, code),
        }
    }

    fn schedule_retry(&mut self, now: Instant, code: Option<CloseCode>) {
        if self.backoff.exhausted() {
            self.backoff.stop();
            self.set_state(now, ClientState::Closed, "max_attempts", code, false);
            return;
        }
        self.backoff.start();
        let delay = self.backoff.next_delay(&mut self.rng);
        // A server's hint (graceful shutdown spreads its clients) overrides the first delay.
        let delay = self.retry_hint.take().unwrap_or(delay);
        self.retry_at = self.online.then(|| now + delay);
        tracing::debug!(target: "protocol:reconnect", attempt = self.backoff.attempt(), delay_ms = delay.as_millis() as u64, "reconnecting");
        self.set_state(now, ClientState::Reconnecting, "connection_lost", code, true);
    }

    fn probe(&mut self, now: Instant) {
        if self.probe_deadline.is_none() {
            self.probe_deadline = Some(now + self.config.probe_timeout);
            let ping = SystemMessage::Ping(Heartbeat { timestamp: self.wall.timestamp(now) });
            self.send_system(now, ping, None);
        }
    }

    fn set_state(
        &mut self,
        _now: Instant,
        new: ClientState,
        reason: &'static str,
        code: Option<CloseCode>,
        will_reconnect: bool,
    ) {
        let previous = self.state;
        if previous == new && new != ClientState::Reconnecting {
            return;
        }
        self.state = new;
        let change = StateChange {
            previous_state: previous,
            new_state: new,
            reason,
            code,
            attempt: self.backoff.attempt(),
            next_retry_at: self.retry_at,
            will_reconnect,
        };
        self.emit(ClientEvent::StateChange(change));
    }

    // ----- helpers -----

    fn current(&mut self, attempt: AttemptId) -> Option<&mut Socket> {
        self.socket.as_mut().filter(|s| s.attempt == attempt)
    }

    fn emit(&mut self, event: ClientEvent) {
        self.outputs.push_back(ClientOutput::Event(event));
    }

    fn persist(&mut self) {
        let state = self.resume_state();
        self.outputs.push_back(ClientOutput::Persist(state));
    }

    fn envelope(&mut self, now: Instant, message_type: MessageType, payload: Payload) -> Envelope {
        Envelope::create(
            Source::Client,
            message_type,
            payload,
            self.wall.timestamp(now),
            self.rng.next_u128(),
        )
    }

    fn send_system(&mut self, now: Instant, message: SystemMessage, correlation: Option<Id>) {
        let Some(attempt) = self.socket.as_ref().map(|s| s.attempt) else { return };
        let mut envelope = self.envelope(now, message.message_type(), message.to_payload());
        envelope.correlation_id = correlation;
        if message.type_str() == types::CONNECTION_RESUME {
            envelope.conversation_id =
                self.config.conversation_id.as_deref().and_then(|c| Id::new(c).ok());
        }
        self.outputs
            .push_back(ClientOutput::SendFrame { attempt, frame: Bytes::from(envelope.encode()) });
    }

    /// The endpoint with the query: token, conversation and definition, percent-encoded.
    fn url(&self) -> String {
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
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}
