//! A deterministic world for the core: hubs, clients, a network and a pub/sub bus, all driven by
//! one virtual clock and one master seed.
//!
//! Nothing here reads a clock or the OS RNG. The master seed (from `SWITCHBOARD_SEED` when set)
//! is split per component; a failing test prints it (see [`SeedGuard`]) so the run can be
//! repeated exactly. The network is itself sans-IO: a heap of timed deliveries with latency and
//! jitter, cut sockets (with or without the server noticing: half-open), and clients that stop
//! reading (slow consumers). Every hub output is checked against the invariants as it is
//! drained: no output for a closed socket, per-socket sequence order, legal state transitions
//! only, outbound bounds, deadlines that advance; and every output is folded into a trace hash
//! so that two runs with the same seed can be compared.

use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;
use switchboard_core::client::{
    AttemptId, Client, ClientConfig, ClientEvent, ClientInput, ClientOutput, ClientState,
    TokenSource,
};
use switchboard_core::protocol::{
    CloseCode, ConnectionResumed, DEFAULT_MAX_FRAME_BYTES, Envelope, ErrorPayload, Heartbeat, Id,
    MessageType, Payload, Position, Source, SystemMessage, Timestamp, types,
};
use switchboard_core::rng::Rng;
use switchboard_core::server::{
    AuthFailure, BusCommand, BusError, BusEvent, Credentials, Hub, HubConfig, HubEvent, Input,
    JoinGrant, JoinId, JoinRefusal, LocalBus, OpenRequest, Outgoing, Output, Principal, SocketId,
    VerifyId,
};
use switchboard_core::time::Instant;

/// The seed for a test: `SWITCHBOARD_SEED` if set, else `default`.
pub fn seed_or(default: u64) -> u64 {
    std::env::var("SWITCHBOARD_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Prints the seed if the test panics while this is alive.
#[derive(Debug)]
pub struct SeedGuard(pub u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("simulation failed with seed {0}; rerun with SWITCHBOARD_SEED={0}", self.0);
        }
    }
}

/// How the simulated identity provider answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Tokens `user:<id>` are accepted after the given delay; anything else is refused.
    Allow { delay_ms: u64 },
    /// Every verification is refused.
    Deny,
    /// No verdict ever comes.
    Hang,
}

/// How the simulated application answers join requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinMode {
    /// Every join is allowed, writing or not.
    Allow { write: bool },
    /// Every join is refused so.
    Refuse(JoinRefusal),
    /// No verdict ever comes.
    Hang,
}

/// One simulated browser: just enough client to check the server (the real client core is
/// tested against the hub separately).
#[derive(Debug, Clone)]
pub struct SimClient {
    pub user: String,
    pub conversation: Option<String>,
    pub node: usize,
    pub socket: Option<SocketId>,
    /// Whether the client reads its socket; one that does not is a slow consumer.
    pub reading: bool,
    pub auto_pong: bool,
    /// Reconnect this long after losing the socket, and resume.
    pub reconnect_after: Option<Duration>,
    /// The session to resume.
    pub session: Option<Id>,
    pub last_sequence: u64,
    /// Connection id from `established` while a resume is pending, and what arrived meanwhile.
    pending_resume: Option<(Id, Vec<Envelope>)>,
    /// Application payloads delivered, in order, duplicates dropped.
    pub received: Vec<serde_json::Value>,
    /// Their positions in their channels, in the same order.
    pub positions: Vec<Option<Position>>,
    pub duplicates: u64,
    pub gaps: u64,
    /// Every system message received.
    pub system: Vec<Envelope>,
    /// Close codes seen (`None`: the socket dropped without one).
    pub closes: Vec<Option<CloseCode>>,
    pub established: u64,
}

impl SimClient {
    fn new(user: &str, conversation: Option<&str>, node: usize) -> Self {
        SimClient {
            user: user.to_owned(),
            conversation: conversation.map(str::to_owned),
            node,
            socket: None,
            reading: true,
            auto_pong: true,
            reconnect_after: None,
            session: None,
            last_sequence: 0,
            pending_resume: None,
            received: Vec::new(),
            positions: Vec::new(),
            duplicates: 0,
            gaps: 0,
            system: Vec::new(),
            closes: Vec::new(),
            established: 0,
        }
    }

    /// The system messages of a type received so far.
    pub fn system_of(&self, message_type: &str) -> Vec<&Envelope> {
        self.system.iter().filter(|e| e.message_type == message_type).collect()
    }

    /// The payloads of the `system.error`s received so far.
    pub fn errors(&self) -> Vec<ErrorPayload> {
        self.system_of(types::ERROR)
            .into_iter()
            .filter_map(|e| match SystemMessage::from_envelope(e) {
                Ok(SystemMessage::Error(p)) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// The payloads of the `system.connection.resumed`s received so far.
    pub fn resumed(&self) -> Vec<ConnectionResumed> {
        self.system_of(types::CONNECTION_RESUMED)
            .into_iter()
            .filter_map(|e| match SystemMessage::from_envelope(e) {
                Ok(SystemMessage::ConnectionResumed(p)) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// The `n` of every application message received, in order.
    pub fn numbers(&self) -> Vec<u64> {
        self.received.iter().filter_map(|v| v["n"].as_u64()).collect()
    }
}

/// Who is at the client end of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A [`SimClient`].
    Sim(usize),
    /// A [`CoreClient`]: the real client state machine.
    Core(usize),
}

/// The real client core, wired into the world.
#[derive(Debug)]
pub struct CoreClient {
    pub client: Client,
    pub node: usize,
    sockets: BTreeMap<AttemptId, SocketId>,
    attempts: BTreeMap<SocketId, AttemptId>,
    /// Attempts opened and not yet closed: never more than one.
    live: BTreeSet<AttemptId>,
    pub events: Vec<ClientEvent>,
    /// Application payloads' `n`, in delivery order, with a `None` where a gap was reported.
    pub timeline: Vec<Option<u64>>,
    pub gaps: u64,
    /// When each socket attempt was made.
    pub attempts_at: Vec<Instant>,
    /// When the client became active.
    pub active_at: Vec<Instant>,
    pub state: ClientState,
}

impl CoreClient {
    /// The `n` of every application message received, in order.
    pub fn received(&self) -> Vec<u64> {
        self.timeline.iter().flatten().copied().collect()
    }
}

#[derive(Debug)]
enum Event {
    ServerOpen { node: usize, socket: SocketId, request: OpenRequest },
    ServerText { node: usize, socket: SocketId, frame: Bytes },
    ServerClosed { node: usize, socket: SocketId, code: Option<CloseCode> },
    Verdict { node: usize, request: VerifyId, verdict: Result<Principal, AuthFailure> },
    Join { node: usize, request: JoinId, verdict: Result<JoinGrant, JoinRefusal> },
    Bus { node: usize, event: BusEvent },
    BusCommand { node: usize, command: BusCommand },
    ClientFrame { peer: Peer, socket: SocketId, frame: Bytes },
    ClientClosed { peer: Peer, socket: SocketId, code: Option<CloseCode> },
    CoreOpened { client: usize, attempt: AttemptId },
    CoreRefused { client: usize, attempt: AttemptId },
    CoreToken { client: usize },
    Reconnect { client: usize },
}

impl Node {
    /// Verifications asked for and not answered by the simulated identity provider (with
    /// [`AuthMode::Hang`]), oldest first; the test answers them by hand.
    pub fn hub_verifies(&mut self) -> Vec<VerifyId> {
        std::mem::take(&mut self.unanswered)
    }
}

/// One server instance: a hub and its adapter's view of the sockets.
#[derive(Debug)]
pub struct Node {
    pub hub: Hub,
    pub events: Vec<HubEvent>,
    /// Open sockets and their clients.
    open: BTreeMap<SocketId, Peer>,
    /// The instance is down: sockets are refused.
    pub down: bool,
    /// Sockets the hub closed or was told are closed.
    closed: BTreeSet<SocketId>,
    /// Frames the hub sent that the adapter has not written (the client is not reading).
    unwritten: BTreeMap<SocketId, VecDeque<Bytes>>,
    /// The last application sequence written per socket.
    last_sent: BTreeMap<SocketId, u64>,
    pending_inputs: VecDeque<Input>,
    unanswered: Vec<VerifyId>,
}

/// The simulated world.
#[derive(Debug)]
pub struct World {
    pub now: Instant,
    pub seed: u64,
    net_rng: Rng,
    pub nodes: Vec<Node>,
    pub clients: Vec<SimClient>,
    pub core: Vec<CoreClient>,
    /// Deadlines of core clients (stale entries are skipped).
    core_timers: BinaryHeap<Reverse<(Instant, usize)>>,
    config: HubConfig,
    master: Rng,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    scheduled: BTreeMap<usize, Event>,
    next_event: usize,
    /// The bus between the hubs (with several), with history.
    pub bus: LocalBus,
    /// Pub/sub messages of the bus lost on the way to a hub, one in this many (0: none).
    pub bus_loss_one_in: u64,
    /// The bus is unreachable: every command fails (see [`World::bus_outage`]).
    pub bus_down: bool,
    /// Hubs whose subscriber connection is deaf: connected, but nothing arrives, until the
    /// hub renews it.
    pub deaf: BTreeSet<usize>,
    /// A load balancer in front of the hubs: a core client whose instance is down opens its
    /// next socket on the next one that is up.
    pub load_balancer: bool,
    pub auth: AuthMode,
    pub join: JoinMode,
    /// Conversations every join to is refused (forbidden), whatever `join` says.
    pub forbidden: BTreeSet<String>,
    /// One-way network latency range, milliseconds.
    pub latency_ms: (u64, u64),
    pub bus_latency_ms: u64,
    /// How long the commands of a hub take to reach the bus, by hub (none: they are carried
    /// out as they are sent). A hub whose way to the bus is slower than another's: its
    /// subscription can reach the bus after a publish another hub sent later.
    pub bus_command_latency_ms: BTreeMap<usize, u64>,
    core_users: Vec<String>,
    trace: u64,
    last_arrival: BTreeMap<(SocketId, bool), Instant>,
    next_socket: u64,
    next_message: u64,
    pub steps: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The start of simulated wall-clock time: 2025-12-18T10:30:00Z.
pub const WALL_START_MS: i64 = 1_766_053_800_000;

impl World {
    /// A world of `nodes` hubs with `config`, from `seed`. With more than one hub, they share
    /// the world's bus (`config.bus.shared`; one hub uses it only if the config says so).
    pub fn new(seed: u64, nodes: usize, mut config: HubConfig) -> Self {
        config.bus.shared |= nodes > 1;
        let mut master = Rng::new(seed);
        let net_rng = master.split();
        let nodes = (0..nodes)
            .map(|_| Node {
                hub: Hub::new(config.clone(), master.next_u64(), Instant::ZERO, WALL_START_MS)
                    .expect("a valid configuration"),
                events: Vec::new(),
                open: BTreeMap::new(),
                down: false,
                closed: BTreeSet::new(),
                unwritten: BTreeMap::new(),
                last_sent: BTreeMap::new(),
                pending_inputs: VecDeque::new(),
                unanswered: Vec::new(),
            })
            .collect();
        let mut world = World {
            now: Instant::ZERO,
            seed,
            net_rng,
            nodes,
            clients: Vec::new(),
            core: Vec::new(),
            core_timers: BinaryHeap::new(),
            config,
            master,
            queue: BinaryHeap::new(),
            scheduled: BTreeMap::new(),
            next_event: 0,
            bus: LocalBus::new(seed ^ 0x6275_7321, 1000),
            bus_loss_one_in: 0,
            bus_down: false,
            deaf: BTreeSet::new(),
            load_balancer: false,
            auth: AuthMode::Allow { delay_ms: 0 },
            join: JoinMode::Allow { write: true },
            forbidden: BTreeSet::new(),
            latency_ms: (0, 0),
            bus_latency_ms: 0,
            bus_command_latency_ms: BTreeMap::new(),
            core_users: Vec::new(),
            trace: FNV_OFFSET,
            last_arrival: BTreeMap::new(),
            next_socket: 1,
            next_message: 1,
            steps: 0,
        };
        for node in 0..world.nodes.len() {
            world.drain(node);
            if world.config.bus.shared {
                world.input(node, Input::Bus(0, BusEvent::LinkUp));
            }
        }
        world
    }

    /// The hash of everything every hub has output so far.
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }

    /// Adds a client (not yet connected) and returns its index.
    pub fn add_client(&mut self, user: &str, conversation: Option<&str>, node: usize) -> usize {
        self.clients.push(SimClient::new(user, conversation, node));
        self.clients.len() - 1
    }

    /// Adds a client and connects it; returns its index.
    pub fn connect_new(&mut self, user: &str, conversation: Option<&str>, node: usize) -> usize {
        let client = self.add_client(user, conversation, node);
        self.connect(client);
        client
    }

    /// Opens a new socket for `client` (with its token `user:<id>`).
    pub fn connect(&mut self, client: usize) {
        let token = format!("user:{}", self.clients[client].user);
        self.connect_with(client, vec![("token".to_owned(), token)]);
    }

    /// Opens a new socket for `client` with these query parameters (plus its conversation).
    pub fn connect_with(&mut self, client: usize, mut query: Vec<(String, String)>) {
        let socket = SocketId(self.next_socket);
        self.next_socket += 1;
        let c = &mut self.clients[client];
        c.socket = Some(socket);
        if let Some(conversation) = &c.conversation {
            query.push(("conversation_id".to_owned(), conversation.clone()));
        }
        let node = c.node;
        self.open_at_server(node, socket, Peer::Sim(client), query);
    }

    /// Starts the upgrade of `socket` from `peer` at hub `node`; returns when it arrives.
    fn open_at_server(
        &mut self,
        node: usize,
        socket: SocketId,
        peer: Peer,
        query: Vec<(String, String)>,
    ) -> Instant {
        self.nodes[node].open.insert(socket, peer);
        let at = self.arrival(socket, true);
        let request = OpenRequest { query, ..OpenRequest::default() };
        self.schedule(at, Event::ServerOpen { node, socket, request });
        at
    }

    /// Sends a text frame from `client` (if it has a socket).
    pub fn client_send(&mut self, client: usize, frame: Vec<u8>) {
        let c = &self.clients[client];
        let Some(socket) = c.socket else { return };
        let node = c.node;
        let at = self.arrival(socket, true);
        self.schedule(at, Event::ServerText { node, socket, frame: Bytes::from(frame) });
    }

    /// Sends a message of `message_type` from `client`; returns its id.
    pub fn client_send_message(&mut self, client: usize, message_type: &str, payload: &str) -> Id {
        let envelope = Envelope::create(
            Source::Client,
            MessageType::new(message_type).expect("a valid type"),
            Payload::from_json(payload).expect("an object"),
            self.wall(),
            self.net_rng.next_u128(),
        );
        self.client_send(client, envelope.encode());
        envelope.id
    }

    /// Cuts `client`'s socket: the client sees 1006 at once; the server notices after
    /// `server_notices` (or never: a half-open socket only the heartbeat finds).
    pub fn cut(&mut self, client: usize, server_notices: Option<Duration>) {
        let c = &mut self.clients[client];
        let Some(socket) = c.socket.take() else { return };
        let node = c.node;
        c.closes.push(None);
        if let Some(after) = server_notices {
            let at = self.now + after;
            self.schedule(at, Event::ServerClosed { node, socket, code: None });
        }
        if let Some(delay) = self.clients[client].reconnect_after {
            let at = self.now + delay;
            self.schedule(at, Event::Reconnect { client });
        }
    }

    /// Makes a client stop or start reading its socket.
    pub fn set_reading(&mut self, client: usize, reading: bool) {
        self.clients[client].reading = reading;
        if reading {
            let c = &self.clients[client];
            if let Some(socket) = c.socket {
                let node = c.node;
                self.flush_socket(node, socket);
                self.drain(node);
            }
        }
    }

    /// Publishes an application message numbered from a world-wide counter to a conversation
    /// through hub `node`; returns its number.
    pub fn publish(&mut self, node: usize, conversation: &str, except: Option<&Id>) -> u64 {
        let n = self.next_message;
        self.next_message += 1;
        let outgoing = Outgoing::new(
            MessageType::new("data.message.created").expect("valid"),
            Payload::from_json(&format!("{{\"n\":{n}}}")).expect("an object"),
        )
        .in_conversation(Id::new(conversation).expect("valid"));
        let now = self.now;
        let conversation = Id::new(conversation).expect("valid");
        self.nodes[node]
            .hub
            .broadcast_to_conversation(now, &conversation, outgoing, except)
            .expect("the hub takes application messages");
        self.drain(node);
        n
    }

    /// Runs an application call on hub `node`, then drains.
    pub fn with_hub<T>(&mut self, node: usize, f: impl FnOnce(&mut Hub, Instant) -> T) -> T {
        let now = self.now;
        let result = f(&mut self.nodes[node].hub, now);
        self.drain(node);
        result
    }

    /// Feeds an input to hub `node`, then drains.
    pub fn input(&mut self, node: usize, input: Input) {
        let now = self.now;
        self.nodes[node].hub.handle_input(now, input);
        self.drain(node);
    }

    /// The wall-clock time now.
    pub fn wall(&self) -> Timestamp {
        Timestamp::from_unix_ms(WALL_START_MS + self.now.as_millis() as i64).expect("in range")
    }

    /// Runs every event and deadline up to `until`, then sets the clock to it.
    pub fn run_until(&mut self, until: Instant) {
        while let Some(at) = self.next_time() {
            if at > until {
                break;
            }
            self.step();
        }
        self.now = self.now.max(until);
    }

    /// Runs for `duration` of simulated time.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        self.run_until(until);
    }

    /// Runs until nothing is scheduled but hub deadlines later than `limit` from now.
    pub fn settle(&mut self) {
        self.run_for(Duration::from_millis(self.latency_ms.1 * 4 + self.bus_latency_ms * 2 + 1));
    }

    fn next_time(&mut self) -> Option<Instant> {
        let net = self.queue.peek().map(|Reverse((at, _, _))| *at);
        let timers =
            self.nodes.iter_mut().filter_map(|n| n.hub.poll_timeout().map(|(at, _)| at)).min();
        let core = self.next_core_timer().map(|(at, _)| at);
        [net, timers, core].into_iter().flatten().min()
    }

    /// The earliest core-client deadline that is still wanted.
    fn next_core_timer(&mut self) -> Option<(Instant, usize)> {
        while let Some(&Reverse((at, client))) = self.core_timers.peek() {
            if self.core[client].client.poll_timeout().map(|(t, _)| t) == Some(at) {
                return Some((at, client));
            }
            self.core_timers.pop();
        }
        None
    }

    /// Processes the earliest event or deadline.
    pub fn step(&mut self) {
        let Some(at) = self.next_time() else { return };
        self.now = self.now.max(at);
        self.steps += 1;
        for node in 0..self.nodes.len() {
            if self.nodes[node].hub.poll_timeout().is_some_and(|(t, _)| t <= self.now) {
                self.input(node, Input::Timeout);
                let next = self.nodes[node].hub.poll_timeout();
                assert!(
                    next.is_none_or(|(t, _)| t > self.now),
                    "deadline {next:?} did not advance past {:?}",
                    self.now
                );
            }
        }
        while let Some((at, client)) = self.next_core_timer() {
            if at > self.now {
                break;
            }
            self.core_timers.pop();
            self.core_input(client, ClientInput::Timeout);
            let next = self.core[client].client.poll_timeout();
            assert!(
                next.is_none_or(|(t, _)| t > self.now),
                "client deadline {next:?} did not advance"
            );
        }
        while let Some(Reverse((t, _, id))) = self.queue.peek().copied() {
            if t > self.now {
                break;
            }
            self.queue.pop();
            if let Some(event) = self.scheduled.remove(&id) {
                self.run_event(event);
            }
        }
    }

    fn run_event(&mut self, event: Event) {
        match event {
            Event::ServerOpen { node, socket, request } => {
                if !self.nodes[node].closed.contains(&socket) {
                    self.input(node, Input::Opened { socket, request });
                }
            }
            Event::ServerText { node, socket, frame } => {
                self.input(node, Input::Text { socket, frame })
            }
            Event::ServerClosed { node, socket, code } => {
                if self.nodes[node].open.remove(&socket).is_some() {
                    self.nodes[node].closed.insert(socket);
                    self.nodes[node].unwritten.remove(&socket);
                    self.input(node, Input::Closed { socket, code });
                }
            }
            Event::Verdict { node, request, verdict } => {
                let verdict = verdict.map(std::sync::Arc::new);
                self.input(node, Input::AuthVerdict { request, verdict })
            }
            Event::Join { node, request, verdict } => {
                self.input(node, Input::JoinVerdict { request, verdict })
            }
            Event::BusCommand { node, command } => self.execute_bus_command(node, command),
            Event::Bus { node, event } => {
                if !self.nodes[node].down {
                    self.input(node, Input::Bus(0, event))
                }
            }
            Event::ClientFrame { peer: Peer::Sim(client), socket, frame } => {
                self.client_frame(client, socket, &frame)
            }
            Event::ClientFrame { peer: Peer::Core(client), socket, frame } => {
                let attempt = self.core.get(client).and_then(|c| c.attempts.get(&socket)).copied();
                if let Some(attempt) = attempt {
                    self.core_input(client, ClientInput::Frame { attempt, text: frame });
                }
            }
            Event::ClientClosed { peer: Peer::Core(client), socket, code } => {
                let attempt = self.core.get_mut(client).and_then(|c| c.attempts.remove(&socket));
                if let Some(attempt) = attempt {
                    self.core[client].sockets.remove(&attempt);
                    self.core[client].live.remove(&attempt);
                    self.core_input(
                        client,
                        ClientInput::SocketClosed { attempt, code, reason: String::new() },
                    );
                }
            }
            Event::CoreOpened { client, attempt } => {
                if self.core[client].sockets.contains_key(&attempt) {
                    self.core_input(client, ClientInput::SocketOpened { attempt });
                }
            }
            Event::CoreRefused { client, attempt } => {
                if self.core[client].live.remove(&attempt) {
                    self.core_input(
                        client,
                        ClientInput::SocketClosed { attempt, code: None, reason: "refused".into() },
                    );
                }
            }
            Event::CoreToken { client } => {
                let user = self.core_user(client);
                self.core_input(
                    client,
                    ClientInput::Token { token: format!("user:{user}"), expires_at_unix_ms: None },
                );
            }
            Event::ClientClosed { peer: Peer::Sim(client), socket, code } => {
                let c = &mut self.clients[client];
                if c.socket == Some(socket) {
                    c.socket = None;
                    c.closes.push(code);
                    let resumable = code.is_none_or(|c| {
                        c.reconnect_advice()
                            != switchboard_core::protocol::ReconnectAdvice::DoNotReconnect
                    });
                    if let (Some(delay), true) = (c.reconnect_after, resumable) {
                        let at = self.now + delay;
                        self.schedule(at, Event::Reconnect { client });
                    }
                }
            }
            Event::Reconnect { client } => {
                if self.clients[client].socket.is_none() {
                    self.connect(client);
                }
            }
        }
    }

    fn client_frame(&mut self, client: usize, socket: SocketId, frame: &[u8]) {
        if self.clients[client].socket != Some(socket) {
            return;
        }
        let envelope =
            Envelope::parse(frame, usize::MAX).expect("the server sends valid envelopes");
        assert_eq!(envelope.source, Source::Server);
        let c = &mut self.clients[client];
        if let Some((_, held)) = &mut c.pending_resume {
            if !envelope.message_type.is_system() {
                held.push(envelope);
                return;
            }
        }
        if !envelope.message_type.is_system() {
            self.accept_application(client, envelope);
            return;
        }
        let message = SystemMessage::from_envelope(&envelope).expect("system payloads are valid");
        let c = &mut self.clients[client];
        c.system.push(envelope.clone());
        match message {
            SystemMessage::Ping(_) if c.auto_pong => {
                let pong = Envelope::create(
                    Source::Client,
                    MessageType::new(types::PONG).expect("valid"),
                    SystemMessage::Pong(Heartbeat { timestamp: Timestamp::UNIX_EPOCH })
                        .to_payload(),
                    Timestamp::UNIX_EPOCH,
                    0,
                );
                self.client_send(client, pong.encode());
            }
            SystemMessage::ConnectionEstablished(established) => {
                c.established += 1;
                match c.session.clone() {
                    Some(session) => {
                        c.pending_resume = Some((established.connection_id, Vec::new()));
                        let resume = format!(
                            r#"{{"conversationId":"{}","lastMessageId":null,"lastItemIndex":0,"clientState":{{"pendingWidgetIds":[]}},"connectionId":"{}","lastSequence":{}}}"#,
                            c.conversation.clone().unwrap_or_default(),
                            session,
                            c.last_sequence
                        );
                        self.client_send_message(client, types::CONNECTION_RESUME, &resume);
                    }
                    None => {
                        c.session = Some(established.connection_id);
                        c.last_sequence = 0;
                    }
                }
            }
            SystemMessage::ConnectionResumed(resumed) => {
                let Some((fresh, held)) = c.pending_resume.take() else { return };
                if resumed.state_valid {
                    c.session = resumed.connection_id;
                } else {
                    c.gaps += 1;
                    c.session = Some(fresh);
                    c.last_sequence = 0;
                    for envelope in held {
                        self.accept_application(client, envelope);
                    }
                }
            }
            _ => {}
        }
    }

    fn accept_application(&mut self, client: usize, envelope: Envelope) {
        let c = &mut self.clients[client];
        let sequence = envelope.sequence.expect("application messages carry a sequence");
        if sequence <= c.last_sequence {
            c.duplicates += 1;
            return;
        }
        if sequence != c.last_sequence + 1 {
            c.gaps += 1;
        }
        c.last_sequence = sequence;
        c.received.push(envelope.payload.parse().expect("payloads are JSON"));
        c.positions.push(envelope.position);
    }

    fn latency(&mut self) -> Instant {
        let (lo, hi) = self.latency_ms;
        self.now + Duration::from_millis(lo + self.net_rng.up_to(hi - lo))
    }

    /// When something sent now on `socket` towards the server (or the client) arrives: with
    /// latency and jitter, but never before what was sent earlier the same way (TCP keeps order).
    fn arrival(&mut self, socket: SocketId, to_server: bool) -> Instant {
        let at = self.latency();
        let last = self.last_arrival.entry((socket, to_server)).or_insert(Instant::ZERO);
        *last = (*last).max(at);
        *last
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.scheduled.insert(id, event);
        self.queue.push(Reverse((at, id as u64, id)));
    }

    /// Carries out hub `node`'s outputs, checking the invariants on each, then writes the
    /// frames its sockets were handed.
    pub fn drain(&mut self, node: usize) {
        let mut frames = Vec::new();
        loop {
            while let Some(output) = self.nodes[node].hub.poll_output() {
                self.carry_out(node, output);
            }
            while let Some(transmit) = self.nodes[node].hub.poll_transmit() {
                let socket = transmit.socket();
                transmit.to_frames(&mut frames);
                for frame in std::mem::take(&mut frames) {
                    self.carry_out(node, Output::Send { socket, frame });
                }
            }
            let Some(input) = self.nodes[node].pending_inputs.pop_front() else { break };
            let now = self.now;
            self.nodes[node].hub.handle_input(now, input);
        }
    }

    fn carry_out(&mut self, node: usize, output: Output) {
        self.trace = fnv(self.trace, &self.now.as_millis().to_le_bytes());
        self.trace = fnv(self.trace, &[node as u8]);
        let config = self.nodes[node].hub.config().clone();
        match output {
            Output::Send { socket, frame } => {
                let frame = frame.to_bytes();
                self.trace = fnv(self.trace, &socket.0.to_le_bytes());
                self.trace = fnv(self.trace, &frame);
                let n = &mut self.nodes[node];
                assert!(!n.closed.contains(&socket), "output for closed socket {socket:?}");
                assert!(frame.len() <= DEFAULT_MAX_FRAME_BYTES * 4, "absurd frame");
                let envelope = Envelope::parse(&frame, usize::MAX).expect("valid frame");
                if envelope.message_type == types::CONNECTION_RESUMED {
                    // The socket now carries the resumed session's sequence.
                    n.last_sent.remove(&socket);
                }
                if let Some(sequence) = envelope.sequence {
                    let last = n.last_sent.entry(socket).or_insert(0);
                    assert!(sequence > *last, "sequence {sequence} after {last} on {socket:?}");
                    *last = sequence;
                }
                let queue = n.unwritten.entry(socket).or_default();
                queue.push_back(frame);
                let bytes: usize = queue.iter().map(Bytes::len).sum();
                assert!(queue.len() <= config.max_outbound_frames, "outbound frame bound exceeded");
                assert!(bytes <= config.max_outbound_bytes, "outbound byte bound exceeded");
                self.flush_socket(node, socket);
            }
            Output::Close { socket, code, reason } => {
                self.trace = fnv(self.trace, &code.0.to_le_bytes());
                self.trace = fnv(self.trace, reason.as_bytes());
                let n = &mut self.nodes[node];
                assert!(n.closed.insert(socket), "second close of {socket:?}");
                n.unwritten.remove(&socket);
                if let Some(peer) = n.open.remove(&socket) {
                    let at = self.arrival(socket, false);
                    self.schedule(at, Event::ClientClosed { peer, socket, code: Some(code) });
                }
                self.nodes[node]
                    .pending_inputs
                    .push_back(Input::Closed { socket, code: Some(code) });
            }
            Output::Verify { request, socket: _, credentials, origin: _ } => {
                self.trace = fnv(self.trace, &request.0.to_le_bytes());
                let verdict = match (&credentials, self.auth) {
                    (_, AuthMode::Hang) => {
                        self.nodes[node].unanswered.push(request);
                        return;
                    }
                    (_, AuthMode::Deny) => Err(AuthFailure::Signature),
                    (Credentials::Token(t), AuthMode::Allow { .. }) => {
                        match t.strip_prefix("user:") {
                            Some(user) => Ok(Principal::user(user)),
                            None => match t.strip_prefix("expired:") {
                                Some(_) => Err(AuthFailure::Expired),
                                None => Err(AuthFailure::Malformed),
                            },
                        }
                    }
                    (Credentials::Cookie(_), AuthMode::Allow { .. }) => {
                        Err(AuthFailure::UnknownSession)
                    }
                };
                let delay = match self.auth {
                    AuthMode::Allow { delay_ms } => delay_ms,
                    _ => 0,
                };
                let at = self.now + Duration::from_millis(delay);
                self.schedule(at, Event::Verdict { node, request, verdict });
            }
            Output::Authorize(join) => {
                self.trace = fnv(self.trace, &join.request.0.to_le_bytes());
                let verdict = match self.join {
                    _ if self.forbidden.contains(join.conversation_id.as_str()) => {
                        Err(JoinRefusal::Forbidden)
                    }
                    JoinMode::Allow { write } => Ok(JoinGrant { write }),
                    JoinMode::Refuse(refusal) => Err(refusal),
                    JoinMode::Hang => return,
                };
                let at = self.now;
                self.schedule(at, Event::Join { node, request: join.request, verdict });
            }
            Output::Bus(_, command) => {
                self.trace = fnv(self.trace, format!("{command:?}").as_bytes());
                match self.bus_command_latency_ms.get(&node) {
                    Some(&ms) => {
                        let at = self.now + Duration::from_millis(ms);
                        self.schedule(at, Event::BusCommand { node, command });
                    }
                    None => self.execute_bus_command(node, command),
                }
            }
            Output::Event(event) => {
                self.trace = fnv(self.trace, format!("{event:?}").as_bytes());
                assert!(!matches!(event, HubEvent::IllegalTransition { .. }), "{event:?}");
                self.nodes[node].events.push(event);
            }
        }
    }

    /// Carries out a hub's command on the bus; its events reach the hubs after the bus latency.
    fn execute_bus_command(&mut self, node: usize, command: BusCommand) {
        let at = self.now + Duration::from_millis(self.bus_latency_ms);
        let events = if self.bus_down {
            let down = || BusError("the bus is down".into());
            let answer = match command {
                BusCommand::Publish { key, .. } => BusEvent::Published { key, result: Err(down()) },
                BusCommand::Subscribe { batch, .. } => {
                    BusEvent::Subscribed { batch, result: Err(down()) }
                }
                BusCommand::Read { request, .. } => {
                    BusEvent::History { request, result: Err(down()) }
                }
                _ => return,
            };
            vec![(node, answer)]
        } else {
            if command == BusCommand::RenewSubscriber {
                self.deaf.remove(&node);
            }
            self.bus.execute(node, command)
        };
        for (target, event) in events {
            let message = matches!(event, BusEvent::Message { .. });
            let lost = message
                && (self.deaf.contains(&target)
                    || (self.bus_loss_one_in > 0
                        && self.net_rng.up_to(self.bus_loss_one_in - 1) == 0));
            if lost {
                continue;
            }
            self.schedule(at, Event::Bus { node: target, event });
        }
    }

    /// Adds a real client core for `user` on hub `node`; returns its index. Its URL carries
    /// `user:<user>` as token unless the config says tokens come from the application (then
    /// the world answers each request at once).
    pub fn add_core_client(&mut self, user: &str, mut config: ClientConfig, node: usize) -> usize {
        if config.token == TokenSource::None {
            config.token = TokenSource::Static(format!("user:{user}"));
        }
        let seed = self.master.next_u64();
        let wall = WALL_START_MS + self.now.as_millis() as i64;
        self.core.push(CoreClient {
            client: Client::new(config, seed, self.now, wall),
            node,
            sockets: BTreeMap::new(),
            attempts: BTreeMap::new(),
            live: BTreeSet::new(),
            events: Vec::new(),
            timeline: Vec::new(),
            gaps: 0,
            attempts_at: Vec::new(),
            active_at: Vec::new(),
            state: ClientState::Disconnected,
        });
        self.core_users.push(user.to_owned());
        self.core.len() - 1
    }

    fn core_user(&self, client: usize) -> String {
        self.core_users[client].clone()
    }

    /// Feeds an input to core client `client` and carries out its outputs.
    pub fn core_input(&mut self, client: usize, input: ClientInput) {
        let now = self.now;
        self.core[client].client.handle_input(now, input);
        while let Some(output) = self.core[client].client.poll_output() {
            self.core_output(client, output);
        }
        assert!(
            self.core[client].live.len() <= 1,
            "client {client} has two sockets: {:?}",
            self.core[client].live
        );
        if let Some((at, _)) = self.core[client].client.poll_timeout() {
            self.core_timers.push(Reverse((at, client)));
        }
    }

    fn core_output(&mut self, client: usize, output: ClientOutput) {
        let mut node = self.core[client].node;
        if self.load_balancer && self.nodes[node].down {
            let count = self.nodes.len();
            if let Some(up) = (1..count).map(|i| (node + i) % count).find(|&n| !self.nodes[n].down)
            {
                node = up;
                self.core[client].node = up;
            }
        }
        match output {
            ClientOutput::OpenSocket { attempt, url } => {
                self.core[client].attempts_at.push(self.now);
                self.core[client].live.insert(attempt);
                if self.nodes[node].down {
                    let at = self.now + Duration::from_millis(self.latency_ms.1.max(1));
                    self.schedule(at, Event::CoreRefused { client, attempt });
                    return;
                }
                let socket = SocketId(self.next_socket);
                self.next_socket += 1;
                self.core[client].sockets.insert(attempt, socket);
                self.core[client].attempts.insert(socket, attempt);
                let at = self.open_at_server(node, socket, Peer::Core(client), parse_query(&url));
                self.schedule(at, Event::CoreOpened { client, attempt });
            }
            ClientOutput::SendFrame { attempt, frame } => {
                if let Some(&socket) = self.core[client].sockets.get(&attempt) {
                    if self.nodes[node].open.contains_key(&socket) {
                        let at = self.arrival(socket, true);
                        self.schedule(at, Event::ServerText { node, socket, frame });
                    }
                }
            }
            ClientOutput::CloseSocket { attempt, code, .. } => {
                self.core[client].live.remove(&attempt);
                if let Some(socket) = self.core[client].sockets.remove(&attempt) {
                    self.core[client].attempts.remove(&socket);
                    let at = self.arrival(socket, true);
                    self.schedule(at, Event::ServerClosed { node, socket, code: Some(code) });
                }
            }
            ClientOutput::RequestToken => {
                let at = self.now;
                self.schedule(at, Event::CoreToken { client });
            }
            ClientOutput::Persist(_) => {}
            ClientOutput::Event(event) => {
                let c = &mut self.core[client];
                match &event {
                    ClientEvent::Message { message, .. } => {
                        let envelope = message.envelope().expect("a valid envelope");
                        let value: serde_json::Value = envelope.payload.parse().expect("JSON");
                        c.timeline.push(value["n"].as_u64());
                    }
                    ClientEvent::Gap { .. } => {
                        c.gaps += 1;
                        c.timeline.push(None);
                    }
                    ClientEvent::StateChange(change) => {
                        c.state = change.new_state;
                        if change.new_state == ClientState::Active {
                            c.active_at.push(self.now);
                        }
                    }
                    _ => {}
                }
                c.events.push(event);
            }
        }
    }

    /// The bus becomes unreachable: every hub hears that its link is down, and every command
    /// fails until [`World::bus_restored`].
    pub fn bus_outage(&mut self) {
        self.bus_down = true;
        for node in 0..self.nodes.len() {
            if !self.nodes[node].down {
                self.input(node, Input::Bus(0, BusEvent::LinkDown));
            }
        }
    }

    /// The bus is reachable again; `lost_data`: it restarted without persistence (every
    /// channel's history and epoch are gone).
    pub fn bus_restored(&mut self, lost_data: bool) {
        self.bus_down = false;
        if lost_data {
            self.bus.lose_everything();
        }
        for node in 0..self.nodes.len() {
            if !self.nodes[node].down {
                self.input(node, Input::Bus(0, BusEvent::LinkUp));
            }
        }
    }

    /// Takes instance `node` down: every socket drops (clients see no close frame) and new ones
    /// are refused. Its hub, and every session in it, is gone.
    pub fn crash(&mut self, node: usize) {
        let sockets: Vec<(SocketId, Peer)> =
            std::mem::take(&mut self.nodes[node].open).into_iter().collect();
        for (socket, peer) in sockets {
            self.nodes[node].closed.insert(socket);
            let at = self.now;
            self.schedule(at, Event::ClientClosed { peer, socket, code: None });
        }
        self.nodes[node].unwritten.clear();
        self.nodes[node].last_sent.clear();
        self.nodes[node].pending_inputs.clear();
        self.nodes[node].down = true;
        self.bus.drop_subscriber(node);
        // The process is gone, and every session with it; a fresh hub waits for the restart.
        let seed = self.master.next_u64();
        let wall = WALL_START_MS + self.now.as_millis() as i64;
        self.nodes[node].hub =
            Hub::new(self.config.clone(), seed, self.now, wall).expect("a valid configuration");
        self.drain(node);
    }

    /// Brings instance `node` back up after [`World::crash`].
    pub fn restart(&mut self, node: usize) {
        self.nodes[node].down = false;
        if self.config.bus.shared && !self.bus_down {
            self.input(node, Input::Bus(0, BusEvent::LinkUp));
        }
    }

    /// Cuts core client `client`'s socket: the client sees it drop; the server notices after
    /// `server_notices` (or never: half-open).
    pub fn cut_core(&mut self, client: usize, server_notices: Option<Duration>) {
        let Some((&socket, &attempt)) = self.core[client].attempts.iter().next() else { return };
        let node = self.core[client].node;
        self.core[client].attempts.remove(&socket);
        self.core[client].sockets.remove(&attempt);
        self.core[client].live.remove(&attempt);
        if let Some(after) = server_notices {
            let at = self.now + after;
            self.schedule(at, Event::ServerClosed { node, socket, code: None });
        } else {
            // The server keeps writing into the void.
            if let Some(peer) = self.nodes[node].open.get_mut(&socket) {
                *peer = Peer::Core(usize::MAX);
            }
        }
        self.core_input(
            client,
            ClientInput::SocketClosed { attempt, code: None, reason: "cut".into() },
        );
    }

    /// Writes what a reading client's socket has queued, and tells the hub.
    fn flush_socket(&mut self, node: usize, socket: SocketId) {
        let Some(&peer) = self.nodes[node].open.get(&socket) else { return };
        if let Peer::Sim(client) = peer {
            if !self.clients[client].reading || self.clients[client].socket != Some(socket) {
                return;
            }
        }
        let frames: Vec<Bytes> = self.nodes[node]
            .unwritten
            .get_mut(&socket)
            .map(|q| q.drain(..).collect())
            .unwrap_or_default();
        if frames.is_empty() {
            return;
        }
        let bytes = frames.iter().map(Bytes::len).sum();
        let count = frames.len();
        for frame in frames {
            let at = self.arrival(socket, false);
            self.schedule(at, Event::ClientFrame { peer, socket, frame });
        }
        self.nodes[node].pending_inputs.push_back(Input::Flushed { socket, frames: count, bytes });
    }
}

/// The query parameters of a URL, percent-decoded.
pub fn parse_query(url: &str) -> Vec<(String, String)> {
    let Some((_, query)) = url.split_once('?') else { return Vec::new() };
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => {
                let value =
                    std::str::from_utf8(hex).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match value {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            (b'+', _) => out.push(b' '),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
