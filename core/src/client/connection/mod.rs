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
    AttemptId, ClientEvent, ClientInput, ClientOutput, ClientStatus, ResumeState, StateChange,
};
use crate::client::state::ClientState;
use crate::protocol::{
    CloseCode, CloseReason, Envelope, Id, MessageType, Payload, Position, Source, SystemMessage,
    types,
};

/// Channels whose position a client keeps (it hears a conversation, its user and broadcast;
/// the rest is room to spare, and a bound).
const MAX_POSITIONS: usize = 8;
/// Ids of the last application messages delivered, at most: a message among them is not
/// delivered again (a resume on another instance replays from the last *position*, and
/// messages delivered before the bus placed them have none).
const RECENT_IDS: usize = 256;
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
    /// A deferred store of the resume point is due.
    Persist,
    /// Time to ping the server for the round trip.
    Ping,
}

#[derive(Debug)]
pub(super) struct Socket {
    pub(super) attempt: AttemptId,
    pub(super) opened: bool,
    /// The server said `established` on it (once per socket: a second one is ignored).
    pub(super) established: bool,
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
    /// The last position delivered per channel (a handful: the conversation, the user,
    /// broadcast), sent with a resume so that any instance can replay from them.
    positions: Vec<Position>,
    /// The ids of the last [`RECENT_IDS`] application messages delivered, oldest first.
    recent_ids: VecDeque<Id>,
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
    /// The page is hidden away (`pagehide`): no attempts until it is shown again.
    page_hidden: bool,
    stopped_by_user: bool,
    queue: VecDeque<Queued>,
    queue_bytes: usize,
    /// When the resume point was last stored, and when a store held back since is due.
    persisted_at: Option<Instant>,
    persist_due: Option<Instant>,
    /// The ping out for a round trip (its id and when it went), the next one, and the last
    /// round trip measured.
    ping_out: Option<(Id, Instant)>,
    next_ping_at: Option<Instant>,
    round_trip: Option<Duration>,
    /// How the last socket ended, and whether the session now in use was resumed.
    last_close: Option<(Option<CloseCode>, String)>,
    resumed: bool,
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
            positions: Vec::new(),
            recent_ids: VecDeque::new(),
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
            page_hidden: false,
            stopped_by_user: false,
            queue: VecDeque::new(),
            queue_bytes: 0,
            persisted_at: None,
            persist_due: None,
            ping_out: None,
            next_ping_at: None,
            round_trip: None,
            last_close: None,
            resumed: false,
        }
    }

    /// Starts from a state persisted earlier (a reloaded page resumes its session).
    pub fn restore(&mut self, state: ResumeState) {
        self.connection_id = state.connection_id;
        self.last_sequence = state.last_sequence;
        self.last_message_id = state.last_message_id;
        self.positions = state.positions;
        self.positions.truncate(MAX_POSITIONS);
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
            positions: self.positions.clone(),
        }
    }

    /// Remembers the position of a message delivered (replacing the channel's previous one).
    pub(super) fn remember(&mut self, position: &Position) {
        if let Some(known) = self.positions.iter_mut().find(|p| p.channel == position.channel) {
            *known = position.clone();
        } else if self.positions.len() < MAX_POSITIONS {
            self.positions.push(position.clone());
        }
    }

    /// Where the client is, for a status display.
    pub fn status(&self) -> ClientStatus {
        ClientStatus {
            state: self.state,
            attempt: self.backoff.attempt(),
            next_retry_at: self.retry_at,
            last_close_code: self.last_close.as_ref().and_then(|(code, _)| *code),
            last_close_reason: self.last_close.as_ref().map(|(_, reason)| reason.clone()),
            resumed: self.resumed,
            connection_id: self.connection_id.clone(),
            last_sequence: self.last_sequence,
            queued: self.queue.len(),
            round_trip_ms: self.round_trip.map(|rtt| rtt.as_millis() as u64),
            online: self.online,
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
            (self.persist_due, ClientTimer::Persist),
            (self.next_ping_at.filter(|_| self.state == ClientState::Active), ClientTimer::Ping),
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
            #[cfg(feature = "text-frames")]
            ClientInput::Frame { attempt, text } => {
                if self.heard(now, attempt) {
                    match crate::client::io::ServerFrame::decode(text) {
                        Ok(frame) => self.handle_server(now, frame),
                        Err(error) => self.emit(ClientEvent::LocalError(local_error(&error))),
                    }
                }
            }
            ClientInput::Decoded { attempt, frame } => {
                if self.heard(now, attempt) {
                    self.handle_server(now, frame);
                }
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
            ClientInput::TokenFailed => self.token_failed(now),
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
            ClientInput::PageHide => self.page_hide(now),
            ClientInput::PageShow => {
                if std::mem::take(&mut self.page_hidden) {
                    self.wake(now, "page_shown");
                }
            }
            ClientInput::Freeze => self.persist_now(),
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

    /// Notes that `attempt`'s socket was heard from; false if it is not the current one.
    fn heard(&mut self, now: Instant, attempt: AttemptId) -> bool {
        let Some(socket) = self.current(attempt) else { return false };
        socket.last_heard = now;
        self.probe_deadline = None;
        true
    }

    pub(super) fn current(&mut self, attempt: AttemptId) -> Option<&mut Socket> {
        self.socket.as_mut().filter(|s| s.attempt == attempt)
    }

    pub(super) fn emit(&mut self, event: ClientEvent) {
        self.outputs.push_back(ClientOutput::Event(event));
    }

    /// The resume point changed: stored now, or (if it was stored less than
    /// `persist_interval` ago) when the interval is over. A page that receives a message a
    /// millisecond writes storage once a second, not a thousand times.
    pub(super) fn persist(&mut self, now: Instant) {
        match self.persisted_at.map(|at| at + self.config.persist_interval) {
            Some(next) if next > now => {
                self.persist_due.get_or_insert(next);
            }
            _ => {
                self.persisted_at = Some(now);
                self.persist_due = None;
                let state = self.resume_state();
                self.outputs.push_back(ClientOutput::Persist(state));
            }
        }
    }

    /// Stores a resume point held back, at once (the page is going away or freezing).
    pub(super) fn persist_now(&mut self) {
        if self.persist_due.take().is_some() {
            let state = self.resume_state();
            self.outputs.push_back(ClientOutput::Persist(state));
        }
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

    /// Sends one of the protocol's own messages on the current socket; returns its id (none
    /// without a socket).
    pub(super) fn send_system(
        &mut self,
        now: Instant,
        message: SystemMessage,
        correlation: Option<Id>,
    ) -> Option<Id> {
        let attempt = self.socket.as_ref().map(|s| s.attempt)?;
        let mut envelope = self.envelope(now, message.message_type(), message.to_payload());
        envelope.correlation_id = correlation;
        if message.type_str() == types::CONNECTION_RESUME {
            envelope.conversation_id =
                self.config.conversation_id.as_deref().and_then(|c| Id::new(c).ok());
        }
        let frame = Bytes::from(envelope.encode());
        self.outputs.push_back(ClientOutput::SendFrame { attempt, frame });
        Some(envelope.id)
    }
}

/// "unreadable frame from the server (CODE)": the error's `system.error` code, without
/// formatting machinery.
#[cfg(feature = "text-frames")]
fn local_error(error: &crate::protocol::ProtocolError) -> String {
    let mut text = String::from("unreadable frame from the server (");
    text.push_str(error.code());
    text.push(')');
    text
}
