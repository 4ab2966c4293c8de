//! The client: one logical connection to switchboard that survives socket losses.
//!
//! One struct, its behaviour split by concern: [`reconnect`] (sockets, liveness and backoff),
//! [`server_messages`] (what the server says: established, resumed, pings, application
//! messages), [`tokens`] (asking the application and refreshing in band) and [`send_queue`].

mod reconnect;
mod send_queue;
mod server_messages;
mod tokens;

use send_queue::Queued;
use server_messages::PendingResume;
use tokens::Secret;

use crate::client::backoff::Backoff;
use crate::client::bus::MessageBus;
use crate::client::config::{ClientConfig, TokenSource};
use crate::client::io::{
    AttemptId, ClientEvent, ClientInput, ClientOutput, ResumeState, StateChange,
};
use crate::client::state::ClientState;
use crate::protocol::{
    CloseCode, CloseReason, Envelope, Id, MessageType, Payload, Source, SystemMessage, types,
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

#[derive(Debug)]
pub(super) struct Socket {
    pub(super) attempt: AttemptId,
    pub(super) opened: bool,
    /// When a socket that has not opened (or not established) is given up.
    pub(super) deadline: Instant,
    pub(super) last_heard: Instant,
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
    /// Why the server said it is closing the socket (`system.connection.close`), so that the
    /// state change says so rather than "connection lost".
    server_close: Option<CloseReason>,
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
            server_close: None,
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
}

impl Client {
    pub(super) fn set_state(
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

    pub(super) fn current(&mut self, attempt: AttemptId) -> Option<&mut Socket> {
        self.socket.as_mut().filter(|s| s.attempt == attempt)
    }

    pub(super) fn emit(&mut self, event: ClientEvent) {
        self.outputs.push_back(ClientOutput::Event(event));
    }

    pub(super) fn persist(&mut self) {
        let state = self.resume_state();
        self.outputs.push_back(ClientOutput::Persist(state));
    }

    pub(super) fn envelope(
        &mut self,
        now: Instant,
        message_type: MessageType,
        payload: Payload,
    ) -> Envelope {
        Envelope::create(
            Source::Client,
            message_type,
            payload,
            self.wall.timestamp(now),
            self.rng.next_u128(),
        )
    }

    pub(super) fn send_system(
        &mut self,
        now: Instant,
        message: SystemMessage,
        correlation: Option<Id>,
    ) {
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
}
