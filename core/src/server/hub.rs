//! The hub: every connection of one server instance, as one deterministic state machine.

use super::config::HubConfig;
use super::io::{
    AuthFailure, Credentials, HubEvent, Input, OpenRequest, Output, Principal, SocketId, VerifyId,
};
use super::members::Members;
use super::pubsub::{Channel, RemoteMessage};
use super::rate_limit::RateLimiter;
use super::replay::{Gap, ReplayBuffer};
use super::router::{
    Command, MiddlewareContext, Outgoing, Rejection, Routed, Router, Sender, Target,
};
use super::state::{ConnectionState, StateMachine, Transition};
use super::timers::{TimerKind, Timers};
use crate::protocol::{
    AuthRefreshed, CloseCode, CloseReason, ConnectionClose, ConnectionEstablished,
    ConnectionResume, ConnectionResumed, Envelope, ErrorCategory, Heartbeat, Id, MessageType,
    Payload, ProtocolError, ReconnectAdvice, SharedFrame, Source, SystemMessage, Timestamp, codes,
};
use crate::rng::Rng;
use crate::time::{Instant, WallClock};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Internal handle of a session; increasing, never reused.
type Key = u64;

/// What a verification was for.
#[derive(Debug, Clone, Copy)]
enum Purpose {
    Open,
    Refresh,
}

/// One connection's session: it outlives its socket for the resume window.
#[derive(Debug)]
struct Session {
    connection_id: Id,
    socket: Option<SocketId>,
    machine: StateMachine,
    principal: Option<Principal>,
    conversation_id: Option<Id>,
    definition_id: Option<String>,
    created_at: Instant,
    last_heard: Instant,
    last_ping_at: Option<Instant>,
    /// The sequence the next application message gets (from 1).
    next_sequence: u64,
    /// The highest sequence written to the current socket.
    sent_through: u64,
    replay: ReplayBuffer,
    outbound_frames: usize,
    outbound_bytes: usize,
    rate_limiter: RateLimiter,
    invalid_streak: u32,
    deadlines: [Option<Instant>; 4],
    pending_verify: Option<VerifyId>,
    /// Opened and not yet authenticated: counted against `max_pending_auths`.
    unverified: bool,
}

impl Session {
    fn state(&self) -> ConnectionState {
        self.machine.state()
    }

    fn deadline(&self, kind: TimerKind) -> Option<Instant> {
        self.deadlines[kind as usize]
    }

    fn user_id(&self) -> Option<&str> {
        self.principal.as_ref().map(|p| p.user_id.as_str())
    }

    /// Whether the session takes part in fan-out: authenticated and not gone.
    fn is_member(&self) -> bool {
        matches!(
            self.state(),
            ConnectionState::Active | ConnectionState::Paused | ConnectionState::Reconnecting
        )
    }
}

/// Whether a frame of `bytes` fits in the session's socket's outbound window.
fn window_has_room(config: &HubConfig, session: &Session, bytes: usize) -> bool {
    session.outbound_frames < config.max_outbound_frames
        && session.outbound_bytes + bytes <= config.max_outbound_bytes
}

/// What writing a session's backlog came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pump {
    /// Everything that fits the window was written (or the session has no active socket).
    Done,
    /// The window is full while half the replay buffer waits: the client is not reading.
    Stuck,
    /// A message was evicted from the replay buffer before it could be written: the client
    /// fell too far behind.
    FellBehind,
}

/// Writes `session`'s unsent application messages, in order, as far as its socket's window
/// allows; the rest wait in the replay buffer for [`Input::Flushed`].
fn pump_session(config: &HubConfig, session: &mut Session, outputs: &mut VecDeque<Output>) -> Pump {
    if session.state() != ConnectionState::Active {
        return Pump::Done;
    }
    let Some(socket) = session.socket else { return Pump::Done };
    while session.sent_through + 1 < session.next_sequence {
        let sequence = session.sent_through + 1;
        let Some(frame) = session.replay.get(sequence) else { return Pump::FellBehind };
        let frame = frame.with_sequence(sequence);
        if !window_has_room(config, session, frame.len()) {
            break;
        }
        session.sent_through = sequence;
        send_on(session, socket, frame, outputs);
    }
    Pump::Done
}

/// Hands `frame` to `socket`, counting it in the session's outbound window (which the caller
/// has checked has room) until the adapter reports it flushed.
fn send_on(session: &mut Session, socket: SocketId, frame: Bytes, outputs: &mut VecDeque<Output>) {
    session.outbound_frames += 1;
    session.outbound_bytes += frame.len();
    outputs.push_back(Output::Send { socket, frame });
}

/// A snapshot of one connection, for diagnosis and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionInfo {
    pub connection_id: Id,
    pub state: ConnectionState,
    pub user_id: Option<String>,
    pub conversation_id: Option<Id>,
    pub definition_id: Option<String>,
    pub socket: Option<SocketId>,
    pub created_at: Instant,
    pub last_activity: Instant,
    /// The sequence the next application message will get.
    pub next_sequence: u64,
    pub history: Vec<Transition>,
    pub replay_len: usize,
    pub outbound_frames: usize,
    pub outbound_bytes: usize,
}

/// Counts for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubStats {
    pub by_state: BTreeMap<&'static str, usize>,
    pub sessions: usize,
    pub users: usize,
    pub conversations: usize,
    pub subscriptions: usize,
    pub outbound_bytes: usize,
    pub timers: usize,
}

/// The server hub. See the [module docs](super) for the contract.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    router: Router,
    rng: Rng,
    wall: WallClock,
    instance_id: Id,
    sessions: BTreeMap<Key, Session>,
    sockets: HashMap<SocketId, Key>,
    by_connection_id: HashMap<Id, Key>,
    by_user: HashMap<String, Members>,
    by_conversation: HashMap<Id, Members>,
    subscriptions: BTreeSet<Channel>,
    verifies: HashMap<VerifyId, (Key, Purpose)>,
    /// Sockets told to close whose end has not been reported yet.
    closing: BTreeSet<SocketId>,
    pending_auths: usize,
    timers: Timers<Key>,
    outputs: VecDeque<Output>,
    next_key: Key,
    next_verify: u64,
    shutting_down: bool,
    drained: bool,
    commands: Vec<Command>,
}

impl Hub {
    /// A hub with `config`, drawing all its randomness from `seed`. `now` is the adapter's
    /// monotonic time and `unix_ms` the wall clock read at the same moment; wire timestamps
    /// are derived from the two.
    pub fn new(config: HubConfig, seed: u64, now: Instant, unix_ms: i64) -> Self {
        let mut rng = Rng::new(seed);
        let instance_id = Id::ulid(u64::try_from(unix_ms).unwrap_or(0), rng.next_u128());
        let mut hub = Hub {
            config,
            router: Router::default(),
            rng,
            wall: WallClock::new(now, unix_ms),
            instance_id,
            sessions: BTreeMap::new(),
            sockets: HashMap::new(),
            by_connection_id: HashMap::new(),
            by_user: HashMap::new(),
            by_conversation: HashMap::new(),
            subscriptions: BTreeSet::new(),
            verifies: HashMap::new(),
            closing: BTreeSet::new(),
            pending_auths: 0,
            timers: Timers::default(),
            outputs: VecDeque::new(),
            next_key: 1,
            next_verify: 1,
            shutting_down: false,
            drained: false,
            commands: Vec::new(),
        };
        hub.subscribe(Channel::Broadcast);
        hub
    }

    /// The router, to register handlers and middleware.
    pub fn router_mut(&mut self) -> &mut Router {
        &mut self.router
    }

    /// The configuration.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// This instance's id (on messages it publishes).
    pub fn instance_id(&self) -> &Id {
        &self.instance_id
    }

    /// Feeds one input. Drain [`Hub::poll_output`] before the next.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Opened { socket, request } => self.handle_open(now, socket, request),
            Input::Text { socket, frame } => {
                if let Some(&key) = self.sockets.get(&socket) {
                    self.handle_text(now, key, frame);
                }
            }
            Input::Binary { socket } => {
                if let Some(&key) = self.sockets.get(&socket) {
                    self.touch(now, key);
                    self.reject(now, key, ProtocolError::BinaryFrame.into());
                }
            }
            Input::Flushed { socket, frames, bytes } => {
                let Some(&key) = self.sockets.get(&socket) else { return };
                if let Some(session) = self.sessions.get_mut(&key) {
                    session.outbound_frames = session.outbound_frames.saturating_sub(frames);
                    session.outbound_bytes = session.outbound_bytes.saturating_sub(bytes);
                }
                self.pump(now, key);
            }
            Input::Closed { socket, code } => self.handle_transport_closed(now, socket, code),
            Input::AuthVerdict { request, verdict } => self.handle_verdict(now, request, verdict),
            Input::Remote { channel, message } => self.handle_remote(now, &channel, &message),
            Input::Timeout => self.handle_timeout(now),
            Input::Shutdown => self.handle_shutdown(now),
        }
    }

    /// The next output, or `None` when there is nothing more to do now.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the hub next wants [`Input::Timeout`], and why. Ask after draining the outputs.
    pub fn poll_timeout(&mut self) -> Option<(Instant, TimerKind)> {
        let sessions = &self.sessions;
        self.timers
            .next(|at, key, kind| sessions.get(&key).is_some_and(|s| s.deadline(kind) == Some(at)))
    }

    // ----- application API -----

    /// Sends to wherever `target` says; returns the number of local sessions it reached (other
    /// instances get it through one publish).
    pub fn send(&mut self, now: Instant, target: Target, outgoing: Outgoing) -> usize {
        let envelope = self
            .envelope(now, outgoing.message_type, outgoing.payload)
            .in_conversation(outgoing.conversation_id);
        let envelope = match outgoing.correlation_id {
            Some(id) => envelope.replying_to(id),
            None => envelope,
        };
        let frame = SharedFrame::encode(&envelope);
        let (recipients, channel, except) = match &target {
            Target::Connection(id) => {
                (self.by_connection_id.get(id).copied().into_iter().collect(), None, None)
            }
            Target::User(user) => (
                self.by_user.get(user).map(|s| s.iter().collect()).unwrap_or_default(),
                Some(Channel::User(user.clone())),
                None,
            ),
            Target::Conversation { conversation_id, except } => (
                self.members_of(conversation_id, except.as_ref()),
                Some(Channel::Conversation(conversation_id.clone())),
                except.clone(),
            ),
            Target::All => (self.all_members(), Some(Channel::Broadcast), None),
        };
        if let Some(channel) = channel {
            let message =
                RemoteMessage { origin: self.instance_id.clone(), except, frame: frame.clone() };
            let channel = channel.name(&self.config.channel_prefix);
            self.outputs.push_back(Output::Publish { channel, message: message.encode() });
        }
        self.deliver_to(now, &recipients, &frame)
    }

    /// Sends to one connection of this instance.
    pub fn send_to_connection(
        &mut self,
        now: Instant,
        connection_id: &Id,
        outgoing: Outgoing,
    ) -> usize {
        self.send(now, Target::Connection(connection_id.clone()), outgoing)
    }

    /// Sends to every session of a user, here and on other instances.
    pub fn send_to_user(&mut self, now: Instant, user_id: &str, outgoing: Outgoing) -> usize {
        self.send(now, Target::User(user_id.to_owned()), outgoing)
    }

    /// Sends to every session in a conversation, here and elsewhere, except `except`.
    pub fn broadcast_to_conversation(
        &mut self,
        now: Instant,
        conversation_id: &Id,
        outgoing: Outgoing,
        except: Option<&Id>,
    ) -> usize {
        let target = Target::Conversation {
            conversation_id: conversation_id.clone(),
            except: except.cloned(),
        };
        self.send(now, target, outgoing)
    }

    /// Sends to every session everywhere.
    pub fn broadcast_all(&mut self, now: Instant, outgoing: Outgoing) -> usize {
        self.send(now, Target::All, outgoing)
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

    /// A snapshot of one connection.
    pub fn connection(&self, connection_id: &Id) -> Option<ConnectionInfo> {
        let session = self.sessions.get(self.by_connection_id.get(connection_id)?)?;
        Some(ConnectionInfo {
            connection_id: session.connection_id.clone(),
            state: session.state(),
            user_id: session.user_id().map(str::to_owned),
            conversation_id: session.conversation_id.clone(),
            definition_id: session.definition_id.clone(),
            socket: session.socket,
            created_at: session.created_at,
            last_activity: session.last_heard,
            next_sequence: session.next_sequence,
            history: session.machine.history().cloned().collect(),
            replay_len: session.replay.len(),
            outbound_frames: session.outbound_frames,
            outbound_bytes: session.outbound_bytes,
        })
    }

    /// The connection a socket belongs to.
    pub fn connection_of(&self, socket: SocketId) -> Option<&Id> {
        self.sessions.get(self.sockets.get(&socket)?).map(|s| &s.connection_id)
    }

    /// Connection ids of a conversation's local members.
    pub fn conversation_members(&self, conversation_id: &Id) -> Vec<Id> {
        self.members_of(conversation_id, None)
            .iter()
            .map(|k| self.sessions[k].connection_id.clone())
            .collect()
    }

    /// Counts for metrics.
    pub fn stats(&self) -> HubStats {
        let mut by_state = BTreeMap::new();
        for session in self.sessions.values() {
            *by_state.entry(session.state().as_str()).or_insert(0) += 1;
        }
        HubStats {
            by_state,
            sessions: self.sessions.len(),
            users: self.by_user.len(),
            conversations: self.by_conversation.len(),
            subscriptions: self.subscriptions.len(),
            outbound_bytes: self.sessions.values().map(|s| s.outbound_bytes).sum(),
            timers: self.timers.len(),
        }
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    // ----- inputs -----

    fn handle_open(&mut self, now: Instant, socket: SocketId, request: OpenRequest) {
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
        let definition_id = param(&["definition_id", "definitionId"]).filter(|d| !d.is_empty());

        let key = self.next_key;
        self.next_key += 1;
        let connection_id = Id::ulid(self.wall_ms(now), self.rng.next_u128());
        let mut machine = StateMachine::new(self.config.history_len);
        let _ = machine.transition(ConnectionState::Connected, now, "upgraded");
        self.sessions.insert(
            key,
            Session {
                connection_id: connection_id.clone(),
                socket: Some(socket),
                machine,
                principal: None,
                conversation_id: None,
                definition_id,
                created_at: now,
                last_heard: now,
                last_ping_at: None,
                next_sequence: 1,
                sent_through: 0,
                replay: ReplayBuffer::default(),
                outbound_frames: 0,
                outbound_bytes: 0,
                rate_limiter: RateLimiter::new(&self.config, now),
                invalid_streak: 0,
                deadlines: [None; 4],
                pending_verify: None,
                unverified: true,
            },
        );
        self.sockets.insert(socket, key);
        self.by_connection_id.insert(connection_id, key);
        self.pending_auths += 1;

        let conversation_id = match conversation.map(|c| Id::new(&c)) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(e)) => {
                let rejection = Rejection::new(
                    ErrorCategory::Validation,
                    codes::INVALID_MESSAGE,
                    format!("conversation_id {e}"),
                )
                .and_close(CloseCode::POLICY_VIOLATION);
                self.reject(now, key, rejection);
                return;
            }
        };
        if let Some(session) = self.sessions.get_mut(&key) {
            session.conversation_id = conversation_id;
        }
        let credentials = match (token, cookie) {
            (Some(token), _) => Credentials::Token(token),
            (None, Some(cookie)) => Credentials::Cookie(cookie),
            (None, None) => {
                let message = "no credentials: pass a token or a session cookie";
                let rejection =
                    Rejection::new(ErrorCategory::Authentication, codes::AUTH_REQUIRED, message)
                        .and_close(CloseCode::AUTH_FAILED);
                self.fail_auth(now, key, "no credentials".to_owned(), rejection);
                return;
            }
        };
        self.request_verify(key, socket, credentials, request.origin, Purpose::Open);
        self.set_deadline(key, TimerKind::AuthTimeout, Some(now + self.config.auth_timeout));
    }

    fn request_verify(
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

    fn handle_verdict(
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

    fn authenticate(&mut self, now: Instant, key: Key, principal: Principal) {
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

    fn handle_text(&mut self, now: Instant, key: Key, frame: Bytes) {
        self.touch(now, key);
        let len = frame.len();
        let envelope = match Envelope::parse_shared(frame, self.config.max_frame_bytes) {
            Ok(envelope) => envelope,
            Err(error) => {
                self.outputs
                    .push_back(Output::Event(HubEvent::Received { plane: None, bytes: len }));
                let counts = error.counts_as_invalid_frame();
                self.reject(now, key, error.into());
                let Some(session) = self.sessions.get_mut(&key) else { return };
                if counts {
                    session.invalid_streak += 1;
                    if session.invalid_streak >= self.config.max_invalid_frames {
                        self.close(
                            now,
                            key,
                            CloseCode::TOO_MANY_INVALID_MESSAGES,
                            "invalid_frames",
                        );
                    }
                }
                return;
            }
        };
        self.outputs.push_back(Output::Event(HubEvent::Received {
            plane: Some(envelope.message_type.plane()),
            bytes: len,
        }));
        let Some(session) = self.sessions.get_mut(&key) else { return };
        session.invalid_streak = 0;

        let mut attributes = BTreeMap::new();
        let cx = MiddlewareContext {
            sender: Sender {
                connection_id: &session.connection_id,
                user_id: session.principal.as_ref().map(|p| p.user_id.as_str()),
                roles: session.principal.as_ref().map_or(&[][..], |p| &p.roles[..]),
                conversation_id: session.conversation_id.as_ref(),
            },
            attributes: &mut attributes,
            now,
            config: &self.config,
            rate_limiter: &mut session.rate_limiter,
        };

        if envelope.message_type.is_system() {
            let mut cx = cx;
            let checked = self.router.run_middleware(&mut cx, &envelope);
            match checked
                .and_then(|()| SystemMessage::from_envelope(&envelope).map_err(Rejection::from))
            {
                Ok(message) => self.handle_system(now, key, &envelope, message),
                Err(rejection) => self.reject(now, key, rejection),
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

        let mut commands = std::mem::take(&mut self.commands);
        match self.router.dispatch(cx, &envelope, &mut commands) {
            Routed::Handled => {
                for command in commands.drain(..) {
                    self.run_command(now, command);
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
                commands.clear();
                if rejection.error.code == codes::RATE_LIMITED {
                    let connection_id = self.sessions[&key].connection_id.clone();
                    let message_type = envelope.message_type.to_string();
                    self.outputs.push_back(Output::Event(HubEvent::RateLimited {
                        connection_id,
                        message_type,
                    }));
                }
                self.reject(now, key, rejection);
            }
        }
        self.commands = commands;
    }

    fn run_command(&mut self, now: Instant, command: Command) {
        match command {
            Command::Send(target, outgoing) => {
                self.send(now, target, outgoing);
            }
            Command::Close { connection_id, code, reason } => {
                self.close_connection(now, &connection_id, code, reason)
            }
        }
    }

    fn handle_system(
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
            // Server-to-client messages have no business arriving here.
            SystemMessage::ConnectionEstablished(_)
            | SystemMessage::ConnectionResumed(_)
            | SystemMessage::AuthRefreshed(_)
            | SystemMessage::Error(_) => {
                let error = ProtocolError::UnknownMessageType(envelope.message_type.to_string());
                self.reject(now, key, error.into());
            }
        }
    }

    /// `system.connection.resume` on session `key` (new) for the session it names (old).
    fn handle_resume(&mut self, now: Instant, key: Key, resume: ConnectionResume) {
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

    fn answer_resume(
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

    /// `control.flow.pause` / `control.flow.resume`.
    fn handle_flow(&mut self, now: Instant, key: Key, pause: bool) {
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

    /// Sends what was held while paused; if some of it was evicted meanwhile, says so.
    fn flush_held(&mut self, now: Instant, key: Key) {
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
    fn replay(&mut self, now: Instant, key: Key, last: u64) -> Result<u64, Gap> {
        let Some(session) = self.sessions.get_mut(&key) else { return Ok(0) };
        let count = session.replay.count_after(last, session.next_sequence)?;
        session.sent_through = last;
        self.pump(now, key);
        Ok(count)
    }

    fn handle_transport_closed(&mut self, now: Instant, socket: SocketId, code: Option<CloseCode>) {
        if self.closing.remove(&socket) {
            self.check_drained();
            return;
        }
        let Some(key) = self.sockets.remove(&socket) else { return };
        if let Some(session) = self.sessions.get_mut(&key) {
            session.socket = None;
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

    fn handle_remote(&mut self, now: Instant, channel: &str, message: &[u8]) {
        let Some(message) = RemoteMessage::decode(message) else {
            tracing::warn!(target: "switchboard::hub", channel, "dropping a malformed message from the bus");
            return;
        };
        if message.origin == self.instance_id {
            return;
        }
        let recipients = match Channel::parse(channel, &self.config.channel_prefix) {
            Some(Channel::Conversation(id)) => self.members_of(&id, message.except.as_ref()),
            Some(Channel::User(user)) => {
                self.by_user.get(&user).map(|s| s.iter().collect()).unwrap_or_default()
            }
            Some(Channel::Broadcast) => self.all_members(),
            None => return,
        };
        self.deliver_to(now, &recipients, &message.frame);
    }

    fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, key, kind)) = self.timers.pop_due(now) {
            let Some(session) = self.sessions.get_mut(&key) else { continue };
            if session.deadline(kind) != Some(at) {
                continue;
            }
            session.deadlines[kind as usize] = None;
            match kind {
                TimerKind::AuthTimeout => {
                    let message = "authentication timed out";
                    let rejection =
                        Rejection::new(ErrorCategory::Authentication, codes::AUTH_FAILED, message)
                            .and_close(CloseCode::AUTH_TIMEOUT);
                    self.fail_auth(now, key, "timeout".to_owned(), rejection);
                }
                TimerKind::Heartbeat => self.heartbeat(now, key),
                TimerKind::TokenExpiry => {
                    let close = ConnectionClose {
                        reason: CloseReason::SessionExpired,
                        code: CloseCode::TOKEN_EXPIRED.0,
                        retry_after_ms: None,
                    };
                    self.send_system(now, key, SystemMessage::ConnectionClose(close));
                    self.close(now, key, CloseCode::TOKEN_EXPIRED, "token_expired");
                }
                TimerKind::ResumeWindow => {
                    self.end_session(
                        now,
                        key,
                        CloseCode::GOING_AWAY,
                        "resume_window_expired",
                        false,
                    );
                }
            }
        }
    }

    fn heartbeat(&mut self, now: Instant, key: Key) {
        let Some(session) = self.sessions.get_mut(&key) else { return };
        if !matches!(session.state(), ConnectionState::Active | ConnectionState::Paused) {
            return;
        }
        let limit = self.config.heartbeat_interval * self.config.max_missed_pongs;
        if now.saturating_since(session.last_heard) >= limit {
            self.close(now, key, CloseCode::HEARTBEAT_TIMEOUT, "heartbeat_timeout");
            return;
        }
        session.last_ping_at = Some(now);
        let ping = SystemMessage::Ping(Heartbeat { timestamp: self.wall.timestamp(now) });
        self.send_system(now, key, ping);
        self.set_deadline(key, TimerKind::Heartbeat, Some(now + self.config.heartbeat_interval));
    }

    fn handle_shutdown(&mut self, now: Instant) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        let keys: Vec<Key> = self.sessions.keys().copied().collect();
        let spread = self.config.shutdown_spread.as_millis() as u64;
        for key in keys {
            let has_socket = self.sessions.get(&key).is_some_and(|s| s.socket.is_some());
            if has_socket && self.sessions[&key].state() != ConnectionState::Connected {
                let retry_after_ms = Some(self.rng.up_to(spread));
                let close = ConnectionClose {
                    reason: CloseReason::ServerShutdown,
                    code: CloseCode::SERVICE_RESTART.0,
                    retry_after_ms,
                };
                self.send_system(now, key, SystemMessage::ConnectionClose(close));
            }
            self.close(now, key, CloseCode::SERVICE_RESTART, "server_shutdown");
            // Nothing survives a shutdown: resumable sessions go too.
            if self.sessions.contains_key(&key) {
                self.end_session(now, key, CloseCode::SERVICE_RESTART, "server_shutdown", false);
            }
        }
        self.timers.clear();
        self.check_drained();
    }

    // ----- helpers -----

    fn wall_ms(&self, now: Instant) -> u64 {
        u64::try_from(self.wall.timestamp(now).unix_ms()).unwrap_or(0)
    }

    fn envelope(&mut self, now: Instant, message_type: MessageType, payload: Payload) -> Envelope {
        Envelope::create(
            Source::Server,
            message_type,
            payload,
            self.wall.timestamp(now),
            self.rng.next_u128(),
        )
    }

    fn touch(&mut self, now: Instant, key: Key) {
        if let Some(session) = self.sessions.get_mut(&key) {
            session.last_heard = now;
        }
    }

    fn set_deadline(&mut self, key: Key, kind: TimerKind, at: Option<Instant>) {
        let Some(session) = self.sessions.get_mut(&key) else { return };
        if session.deadlines[kind as usize] == at {
            return;
        }
        session.deadlines[kind as usize] = at;
        if let Some(at) = at {
            self.timers.schedule(at, key, kind);
        }
        // Replaced deadlines stay in the heap until they come due; rebuild it before they
        // can outnumber the live ones by much.
        if self.timers.len() > 4 * self.sessions.len() + 1024 {
            let live = self.sessions.iter().flat_map(|(&key, s)| {
                TimerKind::ALL
                    .into_iter()
                    .filter_map(move |kind| s.deadline(kind).map(|at| (at, key, kind)))
            });
            self.timers.rebuild(live);
        }
    }

    fn transition(&mut self, now: Instant, key: Key, to: ConnectionState, reason: &'static str) {
        let Some(session) = self.sessions.get_mut(&key) else { return };
        if let Err(illegal) = session.machine.transition(to, now, reason) {
            tracing::error!(target: "switchboard::hub", connection = %session.connection_id, %illegal, "refused state change");
            let connection_id = session.connection_id.clone();
            self.outputs.push_back(Output::Event(HubEvent::IllegalTransition {
                connection_id,
                from: illegal.from,
                to: illegal.to,
            }));
        }
    }

    fn subscribe(&mut self, channel: Channel) {
        let name = channel.name(&self.config.channel_prefix);
        if self.subscriptions.insert(channel) {
            self.outputs.push_back(Output::Subscribe { channel: name });
        }
    }

    fn unsubscribe(&mut self, channel: Channel) {
        let name = channel.name(&self.config.channel_prefix);
        if self.subscriptions.remove(&channel) {
            self.outputs.push_back(Output::Unsubscribe { channel: name });
        }
    }

    fn members_of(&self, conversation_id: &Id, except: Option<&Id>) -> Vec<Key> {
        let Some(members) = self.by_conversation.get(conversation_id) else { return Vec::new() };
        members
            .iter()
            .filter(|k| {
                except.is_none_or(|e| self.sessions.get(k).is_none_or(|s| s.connection_id != *e))
            })
            .collect()
    }

    fn all_members(&self) -> Vec<Key> {
        self.sessions.iter().filter(|(_, s)| s.is_member()).map(|(k, _)| *k).collect()
    }

    /// Gives an application message its sequence in each recipient session, keeps it for
    /// replay, and writes it to the sockets of those that are active. Returns how many
    /// sessions got it. One session lookup per recipient: this is fan-out's inner loop.
    fn deliver_to(&mut self, now: Instant, recipients: &[Key], frame: &SharedFrame) -> usize {
        let mut delivered = 0;
        let backlog_limit = (self.config.replay_max_messages / 2).max(1) as u64;
        for &key in recipients {
            let Some(session) = self.sessions.get_mut(&key) else { continue };
            if !session.is_member() {
                continue;
            }
            let sequence = session.next_sequence;
            session.next_sequence += 1;
            session.replay.push(
                sequence,
                frame.clone(),
                self.config.replay_max_messages,
                self.config.replay_max_bytes,
            );
            delivered += 1;
            // A socket whose window is full while half the replay buffer waits unsent is not
            // reading: cut it off while what it missed is still kept, so it can resume.
            let backlog = session.next_sequence - 1 - session.sent_through;
            let stuck = session.socket.is_some()
                && session.state() == ConnectionState::Active
                && !window_has_room(&self.config, session, frame.len() + 32)
                && backlog >= backlog_limit;
            let outcome = if stuck {
                Pump::Stuck
            } else {
                pump_session(&self.config, session, &mut self.outputs)
            };
            self.after_pump(now, key, outcome);
        }
        delivered
    }

    /// Writes the session's unsent application messages, in order, as far as its socket's
    /// window allows; the rest wait in the replay buffer for [`Input::Flushed`].
    fn pump(&mut self, now: Instant, key: Key) {
        let Some(session) = self.sessions.get_mut(&key) else { return };
        let outcome = pump_session(&self.config, session, &mut self.outputs);
        self.after_pump(now, key, outcome);
    }

    /// Cuts off (4013) a session that [`pump_session`] found too far behind.
    fn after_pump(&mut self, now: Instant, key: Key, outcome: Pump) {
        let reason = match outcome {
            Pump::Done => return,
            Pump::Stuck => "slow_consumer",
            Pump::FellBehind => "fell_behind",
        };
        let Some(session) = self.sessions.get(&key) else { return };
        let connection_id = session.connection_id.clone();
        self.outputs.push_back(Output::Event(HubEvent::SlowConsumer { connection_id }));
        self.close(now, key, CloseCode::SLOW_CONSUMER, reason);
    }

    /// Sends one of switchboard's own messages. These are about the socket, not the
    /// conversation: they carry no sequence and are not kept for replay.
    fn send_system(&mut self, now: Instant, key: Key, message: SystemMessage) {
        self.send_system_reply(now, key, message, None);
    }

    fn send_system_reply(
        &mut self,
        now: Instant,
        key: Key,
        message: SystemMessage,
        correlation: Option<Id>,
    ) {
        let Some(session) = self.sessions.get(&key) else { return };
        if session.socket.is_none() {
            return;
        }
        let conversation = session.conversation_id.clone();
        let mut envelope = self
            .envelope(now, message.message_type(), message.to_payload())
            .in_conversation(conversation);
        envelope.correlation_id = correlation;
        self.write(now, key, Bytes::from(envelope.encode()));
    }

    /// Writes a frame to the session's socket, within the outbound bounds. A socket that would
    /// go over them is cut off with 4013 (its session stays resumable). Returns whether the
    /// frame was written.
    fn write(&mut self, now: Instant, key: Key, frame: Bytes) -> bool {
        let Some(session) = self.sessions.get_mut(&key) else { return false };
        let Some(socket) = session.socket else { return false };
        if !window_has_room(&self.config, session, frame.len()) {
            let connection_id = session.connection_id.clone();
            self.outputs.push_back(Output::Event(HubEvent::SlowConsumer { connection_id }));
            self.close(now, key, CloseCode::SLOW_CONSUMER, "slow_consumer");
            return false;
        }
        send_on(session, socket, frame, &mut self.outputs);
        true
    }

    /// Refuses a connection's credentials: reported for metrics (`reason` never holds them),
    /// then the client is told and closed.
    fn fail_auth(&mut self, now: Instant, key: Key, reason: String, rejection: Rejection) {
        self.outputs.push_back(Output::Event(HubEvent::AuthFailed { reason }));
        self.reject(now, key, rejection);
    }

    /// Sends a `system.error` for `rejection`, and closes if it says so.
    fn reject(&mut self, now: Instant, key: Key, rejection: Rejection) {
        self.send_system(now, key, SystemMessage::Error(rejection.error));
        if let Some(code) = rejection.close {
            self.close(now, key, code, "rejected");
        }
    }

    /// Closes the session's socket with `code` (telling the adapter), then ends or parks the
    /// session by what the code advises a client.
    fn close(&mut self, now: Instant, key: Key, code: CloseCode, reason: &'static str) {
        let Some(session) = self.sessions.get_mut(&key) else { return };
        if let Some(socket) = session.socket.take() {
            self.sockets.remove(&socket);
            self.closing.insert(socket);
            self.outputs.push_back(Output::Close { socket, code, reason });
        }
        let resumable = code.reconnect_advice() != ReconnectAdvice::DoNotReconnect;
        self.end_session(now, key, code, reason, resumable);
    }

    /// The socket is gone: park an established session for resume if `resumable`, or end it.
    fn end_session(
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
        if resumable && established && !self.shutting_down {
            let connection_id = session.connection_id.clone();
            self.transition(now, key, ConnectionState::Reconnecting, reason);
            self.set_deadline(key, TimerKind::Heartbeat, None);
            self.set_deadline(key, TimerKind::TokenExpiry, None);
            self.set_deadline(key, TimerKind::ResumeWindow, Some(now + self.config.resume_window));
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
    fn remove_session(&mut self, _now: Instant, key: Key) {
        let Some(session) = self.sessions.remove(&key) else { return };
        if let Some(socket) = session.socket {
            self.sockets.remove(&socket);
        }
        if let Some(request) = session.pending_verify {
            self.verifies.remove(&request);
        }
        if session.unverified {
            self.pending_auths -= 1;
        }
        self.by_connection_id.remove(&session.connection_id);
        if let Some(user) = session.principal.as_ref().map(|p| &p.user_id) {
            if let Some(keys) = self.by_user.get_mut(user) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_user.remove(user);
                    self.unsubscribe(Channel::User(user.clone()));
                }
            }
        }
        if let Some(conversation) = &session.conversation_id {
            if let Some(keys) = self.by_conversation.get_mut(conversation) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_conversation.remove(conversation);
                    self.unsubscribe(Channel::Conversation(conversation.clone()));
                }
            }
        }
    }

    fn check_drained(&mut self) {
        if self.shutting_down && !self.drained && self.sockets.is_empty() && self.closing.is_empty()
        {
            self.drained = true;
            self.outputs.push_back(Output::Event(HubEvent::Drained));
        }
    }
}
