//! The hub: every connection of one server instance, as one deterministic state machine.
//!
//! The contract (inputs, draining outputs, deadlines) is in the [server module docs](super).
//! The hub is one struct; its behaviour is split by concern, one `impl Hub` block a file:
//!
//! - [`session`]: what one session holds, and its outbound window.
//! - [`lifecycle`]: a socket opens, a session closes, parks for resume or ends.
//! - [`auth`]: credentials and their verdicts, then the session becomes active.
//! - [`routing`]: a frame from a client, through the middleware, to a handler or the hub's own
//!   system handlers.
//! - [`fanout`]: the application's sends, one encoding per message, sequences, the replay buffer
//!   and writing as far as each socket's window allows; messages from other instances.
//! - [`resume`]: a client's new socket takes its old session back and gets what it missed.
//! - [`liveness`]: deadlines: heartbeat, auth timeout, token expiry, the resume window.
//! - [`shutdown`]: every client told, every socket closed, then drained.

mod auth;
mod fanout;
mod handover;
mod lifecycle;
mod liveness;
mod resume;
mod routing;
mod session;
mod shutdown;
mod transmit;

use super::bus::{BusEvent, Channel, Links};
use super::config::{HubConfig, InvalidConfig};
use super::io::{HubEvent, Input, Output, SocketId};
use super::members::Members;
use super::router::{Action, Router};
use super::state::{ConnectionState, Transition};
use super::timers::{TimerKind, Timers};
use crate::protocol::{Envelope, Id, MessageType, Payload, ProtocolError, Source};
use crate::rng::Rng;
use crate::time::{Instant, WallClock};
use auth::Purpose;
use session::{Key, Session};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
pub use transmit::{Frames, Transmit};

/// The hasher of the hub's maps: keyed from the hub's seed, so that iteration order (should
/// anything ever iterate them) is as deterministic as the rest of the hub, and so that keys an
/// attacker chooses (user and conversation ids) cannot be aimed at one bucket.
type SeededState = foldhash::quality::SeedableRandomState;
type Map<K, V> = HashMap<K, V, SeededState>;

fn map<K, V>(rng: &mut Rng) -> Map<K, V> {
    let state = SeededState::with_seed(rng.next_u64(), foldhash::SharedSeed::global_fixed());
    HashMap::with_hasher(state)
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

impl HubStats {
    /// Adds another hub's counts (a server with one hub per thread reports their sum; a user or
    /// conversation with members on two hubs counts on each).
    pub fn add(&mut self, other: &HubStats) {
        for (state, count) in &other.by_state {
            *self.by_state.entry(state).or_insert(0) += count;
        }
        self.sessions += other.sessions;
        self.users += other.users;
        self.conversations += other.conversations;
        self.subscriptions += other.subscriptions;
        self.outbound_bytes += other.outbound_bytes;
        self.timers += other.timers;
    }
}

/// The server hub. See the [module docs](super) for the contract.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    router: Router,
    rng: Rng,
    wall: WallClock,
    instance_id: Id,
    /// Boxed: a session is ~700 bytes, and a B-tree's nodes keep a third of their slots free
    /// on average, which inline would cost every connection a few hundred bytes more.
    sessions: BTreeMap<Key, Box<Session>>,
    sockets: Map<SocketId, Key>,
    by_connection_id: Map<Id, Key>,
    by_user: Map<String, Members>,
    by_conversation: Map<Id, Members>,
    /// The channels between instances: subscriptions, cursors, own publishes.
    links: Links,
    /// Session claims asked of the bus, by request: the session that resumes.
    claims: Map<u64, Key>,
    /// History reads for resuming sessions, by request: who waits on each (one read serves
    /// every session resuming from the same place).
    history_waiters: Map<u64, Vec<(Key, Channel)>>,
    /// Resuming sessions waiting for a channel's subscription before planning its replay.
    waiting_replays: BTreeSet<Key>,
    /// Sessions whose record was written while one of their channels was not subscribed yet
    /// (so where the session is in it was not known): written again once all are, looked at
    /// when a subscription is confirmed (the count last seen).
    unrecorded: BTreeSet<Key>,
    unrecorded_checked_at: u64,
    /// Sessions let in and not told yet: they wait for the bus to confirm the subscriptions
    /// of their channels (see [`Hub::activate`]).
    unplaced: BTreeSet<Key>,
    /// Verifications and join decisions asked for and not answered yet, by request number.
    requests: Map<u64, (Key, Purpose)>,
    /// Sockets told to close whose end has not been reported yet.
    closing: BTreeSet<SocketId>,
    pending_auths: usize,
    timers: Timers<Key>,
    outputs: VecDeque<Output>,
    /// Sessions whose sockets have frames handed and not taken ([`Hub::poll_transmit`]), each
    /// once (its `queued` flag): at most one entry per session.
    transmit: VecDeque<Key>,
    next_key: Key,
    next_request: u64,
    shutting_down: bool,
    drained: bool,
    actions: Vec<Action>,
}

impl Hub {
    /// A hub with `config`, drawing all its randomness from `seed`. `now` is the adapter's
    /// monotonic time and `unix_ms` the wall clock read at the same moment; wire timestamps
    /// are derived from the two. A configuration whose limits contradict each other is refused
    /// (see [`HubConfig::validate`]).
    pub fn new(
        config: HubConfig,
        seed: u64,
        now: Instant,
        unix_ms: i64,
    ) -> Result<Self, InvalidConfig> {
        config.validate()?;
        let mut rng = Rng::new(seed);
        let instance_id = Id::ulid(u64::try_from(unix_ms).unwrap_or(0), rng.next_u128());
        let links = Links::new(&config.bus, &config.channel_prefix, &instance_id, rng.next_u64());
        let mut hub = Hub {
            config,
            router: Router::default(),
            wall: WallClock::new(now, unix_ms),
            instance_id,
            sessions: BTreeMap::new(),
            sockets: map(&mut rng),
            by_connection_id: map(&mut rng),
            by_user: map(&mut rng),
            by_conversation: map(&mut rng),
            links,
            claims: map(&mut rng),
            history_waiters: map(&mut rng),
            waiting_replays: BTreeSet::new(),
            unrecorded: BTreeSet::new(),
            unrecorded_checked_at: 0,
            unplaced: BTreeSet::new(),
            requests: map(&mut rng),
            closing: BTreeSet::new(),
            pending_auths: 0,
            timers: Timers::default(),
            outputs: VecDeque::new(),
            transmit: VecDeque::new(),
            next_key: 1,
            next_request: 1,
            shutting_down: false,
            drained: false,
            actions: Vec::new(),
            rng,
        };
        hub.subscribe(now, Channel::Broadcast);
        Ok(hub)
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
                    session.flushed(frames, bytes);
                }
                self.pump(now, key);
            }
            Input::Closed { socket, code } => self.handle_transport_closed(now, socket, code),
            Input::AuthVerdict { request, verdict } => self.handle_verdict(now, request, verdict),
            Input::JoinVerdict { request, verdict } => {
                self.handle_join_verdict(now, request, verdict)
            }
            Input::Bus(shard, event) => {
                let link_up = event == BusEvent::LinkUp;
                self.links.handle_event(now, shard, event);
                if link_up && self.config.bus.shared {
                    self.save_records_on(shard);
                }
                self.drain_link(now);
                self.check_drained();
            }
            Input::Timeout => self.handle_timeout(now),
            Input::Shutdown => self.handle_shutdown(now),
        }
    }

    /// The next output, or `None` when there is nothing more to do now.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next socket with frames to write, and its frames (in order, after any
    /// [`Output::Send`] already given for it), lent until the next call; `None` when no
    /// socket has any. Call it when about to write to the sockets, as late as suits the
    /// adapter: frames handed to a socket wait here, so that everything one socket got from
    /// many inputs is taken at once, one socket at a time, and written in one go. They are
    /// taken whether the adapter writes them or not: what it cannot write at once it keeps
    /// ([`FrameRef::to_owned`](crate::server::FrameRef::to_owned)).
    pub fn poll_transmit(&mut self) -> Option<Transmit<'_>> {
        let (key, socket) = loop {
            let key = self.transmit.pop_front()?;
            let Some(session) = self.sessions.get_mut(&key) else { continue };
            session.queued = false;
            match session.socket {
                Some(socket) if session.has_handed() => break (key, socket),
                _ => {}
            }
        };
        // Looked up again: a loan returned from inside the loop would hold the map for the
        // loop's every turn.
        self.sessions.get_mut(&key).map(|session| session.take_handed(socket))
    }

    /// Whether [`Hub::poll_transmit`] may have a socket to give.
    pub fn has_transmit(&self) -> bool {
        !self.transmit.is_empty()
    }

    /// When the hub next wants [`Input::Timeout`], and why. Ask after draining the outputs.
    pub fn poll_timeout(&mut self) -> Option<(Instant, TimerKind)> {
        let sessions = &self.sessions;
        let session = self
            .timers
            .next(|at, key, kind| sessions.get(&key).is_some_and(|s| s.deadline(kind) == Some(at)));
        match (session, self.links.poll_timeout()) {
            (Some((at, kind)), Some(bus)) if at <= bus => Some((at, kind)),
            (_, Some(bus)) => Some((bus, TimerKind::Bus)),
            (session, None) => session,
        }
    }

    /// Whether the bus between instances works (always, without a shared bus): every
    /// subscription confirmed and the link up. When it does not, local delivery goes on and
    /// the instance reports itself degraded.
    pub fn bus_healthy(&self) -> bool {
        self.links.is_healthy()
    }

    /// Own publishes the bus has not answered yet.
    pub fn bus_pending(&self) -> usize {
        self.links.pending_publishes()
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
            outbound_frames: session.outbound_frames(),
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
            subscriptions: self.links.subscriptions(),
            outbound_bytes: self.sessions.values().map(|s| s.outbound_bytes).sum(),
            timers: self.timers.len(),
        }
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }
}

impl Hub {
    pub(super) fn wall_ms(&self, now: Instant) -> u64 {
        u64::try_from(self.wall.timestamp(now).unix_ms()).unwrap_or(0)
    }

    pub(super) fn envelope(
        &mut self,
        now: Instant,
        message_type: MessageType,
        payload: Payload,
    ) -> Envelope {
        Envelope::create(
            Source::Server,
            message_type,
            payload,
            self.wall.timestamp(now),
            self.rng.next_u128(),
        )
    }

    pub(super) fn touch(&mut self, now: Instant, key: Key) {
        if let Some(session) = self.sessions.get_mut(&key) {
            session.last_heard = now;
        }
    }

    pub(super) fn transition(
        &mut self,
        now: Instant,
        key: Key,
        to: ConnectionState,
        reason: &'static str,
    ) {
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
}
