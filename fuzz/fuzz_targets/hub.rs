//! The server hub driven by arbitrary sequences of adapter inputs and application calls. After
//! every input the outputs are drained and checked:
//!
//! - no `Send` or `Close` for a socket the hub already closed or the adapter reported closed;
//! - never a `HubEvent::IllegalTransition`;
//! - after `Input::Timeout` at `now`, `poll_timeout()` is `None` or later than `now`;
//! - every frame the hub sends parses as a server envelope.
//!
//! The hub uses a shared bus: its bus commands are answered by the ops (published at some
//! position or failed, subscribed with some tops or failed, history entries or failure, probes
//! echoed), messages arrive on channels at arbitrary positions, and the link goes down, up
//! and lags in any order.
//!
//! The input is decoded into at most [`MAX_OPS`] [`Op`]s (`cargo fuzz fmt hub <file>` prints
//! them); the hub never panics, whatever they are.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;
use switchboard_core::protocol::{
    CloseCode, Envelope, Id, MessageType, Payload, SharedFrame, Source, Timestamp, TypePattern,
};
use switchboard_core::server::{
    AuthFailure, BusCommand, BusConfig, BusError, BusEvent, Channel, History, Hub, HubConfig,
    HubEvent, Input, JoinGrant, JoinId, JoinRefusal, OpenRequest, Outgoing, Output, Principal,
    RateLimit, Rejection, RemoteMessage, Route, SocketId, Top, VerifyId, shard_of,
};
use switchboard_core::time::Instant;

const MAX_OPS: usize = 256;
const SEED: u64 = 0x0f0f_1234_5678_9abc;
/// 2025-12-18T10:30:00.000Z, read at `START`.
const UNIX_MS: i64 = 1_766_053_800_000;
const START: Instant = Instant::from_millis(1_000);

const EPOCHS: [&str; 3] = ["e0", "e1", "e2"];
const CONVERSATIONS: [&str; 3] = ["conv-a", "conv-b", "conv-c"];
const USERS: [&str; 3] = ["u0", "u1", "u2"];
const TYPES: [&str; 14] = [
    "system.ping",
    "system.pong",
    "system.connection.resume",
    "control.flow.pause",
    "control.flow.resume",
    "data.x.y",
    "system.auth.refresh",
    "system.connection.close",
    "system.error",
    "data.x.close",
    "data.x.reject",
    "data.fwd.z",
    "data.nope.z",
    "control.other.thing",
];
const CLOSE_CODES: [Option<u16>; 8] =
    [None, Some(1000), Some(1001), Some(1006), Some(4000), Some(4001), Some(4011), Some(4013)];

/// An answer to a pending verification.
#[derive(Debug, Clone, Copy)]
enum Verdict {
    /// `USERS[user]`, expiring `expires_in_s` seconds from now (in the past when negative).
    Allow {
        user: usize,
        expires_in_s: Option<i8>,
    },
    Deny,
    Expired,
}

/// A text frame's contents.
#[derive(Debug, Clone)]
enum Frame {
    /// A well-formed client envelope of `TYPES[kind]`.
    Envelope {
        message_type: &'static str,
        conversation: Option<usize>,
        /// For `system.connection.resume`: an index into the connection ids seen (`None`: an
        /// unknown id), and the last sequence.
        resume_connection: Option<u8>,
        last_sequence: Option<u8>,
    },
    Raw(Vec<u8>),
}

/// A message from another instance.
#[derive(Debug, Clone)]
enum RemoteBody {
    /// A well-formed message, from this instance itself or another one, except a connection
    /// (an index into the connection ids seen), at a position (epoch 0..=2, offset).
    Valid {
        from_self: bool,
        except: Option<u8>,
        in_conversation: Option<usize>,
        epoch: u8,
        offset: u8,
    },
    Raw(Vec<u8>),
}

/// How the bus answers one of the hub's outstanding commands (an index into them).
#[derive(Debug, Clone, Copy)]
struct BusAnswer {
    which: u8,
    ok: bool,
    epoch: u8,
    offset: u8,
}

/// Where an application send goes.
#[derive(Debug, Clone, Copy)]
enum AppTarget {
    Conversation { conversation: usize, except: Option<u8> },
    User(usize),
    Connection(u8),
    All,
}

/// One step. Socket, verification and connection numbers index, modulo their length, into the
/// sockets the adapter has open, the pending verifications and the connection ids seen.
#[derive(Debug, Clone)]
enum Op {
    Open {
        token: bool,
        cookie: bool,
        conversation: Option<usize>,
        bad_conversation: bool,
    },
    Verdict {
        pending: u8,
        verdict: Verdict,
    },
    /// An answer to a pending join: allowed (writing or not) or refused.
    Join {
        pending: u8,
        verdict: Result<bool, JoinRefusal>,
    },
    Text {
        socket: u8,
        frame: Frame,
    },
    Binary {
        socket: u8,
    },
    /// The adapter wrote this many of the frames waiting on the socket.
    Flushed {
        socket: u8,
        frames: u8,
    },
    Closed {
        socket: u8,
        code: Option<u16>,
    },
    /// Time passes; `Input::Timeout` follows if a deadline is due.
    Advance {
        ms: u64,
    },
    Remote {
        channel: String,
        body: RemoteBody,
    },
    Answer(BusAnswer),
    /// On shard `kind / 3`: 0 the link went down, 1 up, 2 the receive queue lagged (`kind % 3`).
    Link(u8),
    Send {
        target: AppTarget,
    },
    CloseConnection {
        connection: u8,
        code: u16,
    },
    Shutdown,
}

#[derive(Debug)]
struct Ops(Vec<Op>);

fn pick<T: Copy>(u: &mut Unstructured<'_>, from: &[T]) -> arbitrary::Result<T> {
    Ok(*u.choose(from)?)
}

fn maybe<'a, T>(
    u: &mut Unstructured<'a>,
    f: impl FnOnce(&mut Unstructured<'a>) -> arbitrary::Result<T>,
) -> arbitrary::Result<Option<T>> {
    Ok(if u.arbitrary::<bool>()? { Some(f(u)?) } else { None })
}

fn raw(u: &mut Unstructured<'_>, max: usize) -> arbitrary::Result<Vec<u8>> {
    let len = u.int_in_range(0..=max)?.min(u.len());
    Ok(u.bytes(len)?.to_vec())
}

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let conversation = |u: &mut Unstructured<'a>| u.choose_index(CONVERSATIONS.len());
        Ok(match u.arbitrary::<u8>()? {
            0..=29 => Op::Open {
                token: u.ratio(7, 8)?,
                cookie: u.ratio(1, 8)?,
                conversation: maybe(u, conversation)?,
                bad_conversation: u.ratio(1, 32)?,
            },
            30..=59 => Op::Verdict {
                pending: u.arbitrary()?,
                verdict: match u.int_in_range(0..=7)? {
                    0..=4 => Verdict::Allow {
                        user: u.choose_index(USERS.len())?,
                        expires_in_s: maybe(u, |u| u.arbitrary())?,
                    },
                    5 | 6 => Verdict::Deny,
                    _ => Verdict::Expired,
                },
            },
            60..=69 => Op::Join {
                pending: u.arbitrary()?,
                verdict: match u.int_in_range(0..=5)? {
                    0..=2 => Ok(true),
                    3 => Ok(false),
                    4 => Err(pick(u, &[JoinRefusal::Forbidden, JoinRefusal::NotFound])?),
                    _ => Err(JoinRefusal::Unavailable),
                },
            },
            70..=139 => Op::Text {
                socket: u.arbitrary()?,
                frame: if u.ratio(7, 8)? {
                    Frame::Envelope {
                        message_type: pick(u, &TYPES)?,
                        conversation: maybe(u, conversation)?,
                        resume_connection: maybe(u, |u| u.arbitrary())?,
                        last_sequence: maybe(u, |u| u.arbitrary())?,
                    }
                } else {
                    Frame::Raw(raw(u, 600)?)
                },
            },
            140..=147 => Op::Binary { socket: u.arbitrary()? },
            148..=167 => Op::Flushed { socket: u.arbitrary()?, frames: u.arbitrary()? },
            168..=182 => Op::Closed { socket: u.arbitrary()?, code: pick(u, &CLOSE_CODES)? },
            183..=207 => Op::Advance {
                ms: match u.int_in_range(0..=2)? {
                    0 => u64::from(u.arbitrary::<u8>()?),
                    1 => u64::from(u.arbitrary::<u16>()?),
                    _ => u64::from(u.arbitrary::<u8>()?) * 1000,
                },
            },
            208..=213 => {
                let channel = match u.int_in_range(0..=7)? {
                    0..=2 => format!("sb:{{conversation:{}}}", pick(u, &CONVERSATIONS)?),
                    3..=5 => format!("sb:{{user:{}}}", pick(u, &USERS)?),
                    6 => "sb:{broadcast}".to_owned(),
                    _ => String::from_utf8_lossy(&raw(u, 24)?).into_owned(),
                };
                let body = if u.ratio(7, 8)? {
                    RemoteBody::Valid {
                        from_self: u.ratio(1, 8)?,
                        except: maybe(u, |u| u.arbitrary())?,
                        in_conversation: maybe(u, conversation)?,
                        epoch: u.int_in_range(0..=2)?,
                        offset: u.int_in_range(0..=12)?,
                    }
                } else {
                    RemoteBody::Raw(raw(u, 300)?)
                };
                Op::Remote { channel, body }
            }
            214..=217 => Op::Answer(BusAnswer {
                which: u.arbitrary()?,
                ok: u.ratio(5, 6)?,
                epoch: u.int_in_range(0..=2)?,
                offset: u.int_in_range(0..=12)?,
            }),
            218..=219 => Op::Link(u.int_in_range(0..=5)?),
            220..=241 => Op::Send {
                target: match u.int_in_range(0..=5)? {
                    0..=2 => AppTarget::Conversation {
                        conversation: conversation(u)?,
                        except: maybe(u, |u| u.arbitrary())?,
                    },
                    3 => AppTarget::User(u.choose_index(USERS.len())?),
                    4 => AppTarget::Connection(u.arbitrary()?),
                    _ => AppTarget::All,
                },
            },
            242..=253 => Op::CloseConnection {
                connection: u.arbitrary()?,
                code: pick(u, &[1000, 1001, 4001, 4005, 4006, 4013])?,
            },
            _ => Op::Shutdown,
        })
    }
}

impl<'a> Arbitrary<'a> for Ops {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < MAX_OPS {
            match Op::arbitrary(u) {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        Ok(Ops(ops))
    }

    fn arbitrary_take_rest(mut u: Unstructured<'a>) -> arbitrary::Result<Self> {
        Self::arbitrary(&mut u)
    }
}

/// Small limits, so that every cut-off is within reach of a few hundred operations.
fn config() -> HubConfig {
    let ten_s = Duration::from_secs(10);
    HubConfig {
        heartbeat_interval: Duration::from_secs(5),
        max_missed_pongs: 2,
        auth_timeout: Duration::from_secs(2),
        resume_window: ten_s,
        max_frame_bytes: 512,
        max_invalid_frames: 3,
        max_connections: 8,
        max_pending_auths: 3,
        max_subscriptions: 6,
        max_outbound_bytes: 1024,
        max_outbound_frames: 2,
        replay_max_messages: 4,
        replay_max_bytes: 2048,
        max_message_bytes: 1024,
        max_sessions_per_user: 3,
        system_rate: RateLimit::new(8, ten_s),
        history_len: 8,
        connection_rate: RateLimit::new(6, ten_s),
        type_rates: vec![("data.x.y".to_owned(), RateLimit::new(3, ten_s))],
        abuse_threshold: 4,
        abuse_window: ten_s,
        shutdown_spread: Duration::from_secs(1),
        bus: BusConfig {
            shared: true,
            // Two shards answered by one fake bus (their channels are apart anyway): the
            // hub's routing of commands and events by shard is under test too.
            shards: 2,
            gap_wait: Duration::from_millis(50),
            publish_budget: Duration::from_millis(100),
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_millis(400),
            subscribe_batch: 2,
            subscribe_timeout: Duration::from_secs(1),
            probe_interval: Duration::from_secs(2),
            probe_timeout: Duration::from_secs(1),
            linger: Duration::from_secs(1),
            max_pending_publishes: 4,
            max_pending_bytes: 4096,
            read_limit: 3,
        },
        ..HubConfig::default()
    }
}

/// A message as the bus publishes it: its position in front.
fn positioned(epoch: u8, offset: u8, entry: &[u8]) -> Vec<u8> {
    let head = format!(r#"{{"epoch":"{}","offset":{offset},"#, EPOCHS[usize::from(epoch)]);
    [head.as_bytes(), &entry[1..]].concat()
}

fn data(message_type: &str) -> MessageType {
    MessageType::new(message_type).expect("a valid type")
}

fn hub() -> Hub {
    let mut hub = Hub::new(config(), SEED, START, UNIX_MS).expect("a valid configuration");
    let router = hub.router_mut();
    router.on(TypePattern::new("data.x.y").unwrap(), |cx, _| {
        cx.reply(data("data.x.reply"), Payload::empty());
        cx.broadcast_to_conversation(data("data.x.said"), Payload::empty(), true)
    });
    router.on(TypePattern::new("data.x.close").unwrap(), |cx, _| {
        cx.close(CloseCode::CONVERSATION_COMPLETE, "handler_close");
        Ok(())
    });
    router.on(TypePattern::new("data.x.reject").unwrap(), |_, _| {
        Err(Rejection::new(
            switchboard_core::protocol::ErrorCategory::Validation,
            "NOPE",
            "refused by the handler",
        )
        .and_close(CloseCode::POLICY_VIOLATION))
    });
    router.route(TypePattern::new("data.fwd.*").unwrap(), Route::Forward);
    hub
}

/// The adapter around the hub, and what it has seen.
struct World {
    hub: Hub,
    now: Instant,
    next_socket: u64,
    next_message: u64,
    /// Sockets opened and not yet reported closed, in order of opening.
    open: Vec<SocketId>,
    /// Sockets the hub closed or the adapter reported closed: nothing more may go to them.
    dead: BTreeSet<SocketId>,
    /// Verifications asked for and not answered.
    pending: Vec<VerifyId>,
    /// Joins asked for and not answered.
    joins: Vec<JoinId>,
    /// Per socket, the sizes of the frames sent and not yet reported written.
    unwritten: HashMap<SocketId, VecDeque<usize>>,
    /// Connection ids the hub announced.
    connections: Vec<Id>,
    /// Bus commands that want an answer, oldest first, with their shard.
    bus: Vec<(usize, BusCommand)>,
}

impl World {
    fn new() -> Self {
        let mut world = World {
            hub: hub(),
            now: START,
            next_socket: 1,
            next_message: 1,
            open: Vec::new(),
            dead: BTreeSet::new(),
            pending: Vec::new(),
            joins: Vec::new(),
            unwritten: HashMap::new(),
            connections: Vec::new(),
            bus: Vec::new(),
        };
        world.drain();
        world.input(Input::Bus(0, BusEvent::LinkUp));
        world.input(Input::Bus(1, BusEvent::LinkUp));
        world
    }

    /// A history entry: a message from another instance to everyone.
    fn entry(&mut self, offset: u64) -> Vec<u8> {
        let envelope = Envelope::create(
            Source::Server,
            data("data.history.event"),
            Payload::empty(),
            Timestamp::from_unix_ms(self.wall_ms()).unwrap(),
            u128::from(offset),
        );
        let origin = Id::new("other-instance").unwrap();
        let frame = SharedFrame::encode(&envelope);
        RemoteMessage { id: envelope.id, origin, except: None, lost: offset % 5 / 4, frame }
            .encode()
            .to_vec()
    }

    fn wall_ms(&self) -> i64 {
        UNIX_MS + (self.now.as_millis() - START.as_millis()) as i64
    }

    fn socket(&self, n: u8) -> Option<SocketId> {
        (!self.open.is_empty()).then(|| self.open[usize::from(n) % self.open.len()])
    }

    fn connection(&self, n: u8) -> Option<Id> {
        (!self.connections.is_empty())
            .then(|| self.connections[usize::from(n) % self.connections.len()].clone())
    }

    fn input(&mut self, input: Input) {
        self.hub.handle_input(self.now, input);
        self.drain();
    }

    /// Carries out the outputs, then takes the frames the sockets were handed.
    fn drain(&mut self) {
        while let Some(output) = self.hub.poll_output() {
            match output {
                Output::Send { socket, frame } => self.sent(socket, frame),
                Output::Close { socket, code, reason } => {
                    assert!(
                        self.dead.insert(socket),
                        "Close ({code}, {reason}) of already closed {socket:?}"
                    );
                }
                Output::Verify { request, .. } => self.pending.push(request),
                Output::Bus(
                    shard,
                    command @ (BusCommand::Publish { .. }
                    | BusCommand::Subscribe { .. }
                    | BusCommand::Read { .. }
                    | BusCommand::Probe { .. }),
                ) => self.bus.push((shard, command)),
                Output::Authorize(join) => self.joins.push(join.request),
                Output::Event(HubEvent::IllegalTransition { connection_id, from, to }) => {
                    panic!("illegal transition {from:?} → {to:?} of {connection_id:?}")
                }
                Output::Event(HubEvent::ConnectionOpened { connection_id, .. }) => {
                    self.connections.push(connection_id)
                }
                _ => {}
            }
        }
        let mut frames = Vec::new();
        while let Some(transmit) = self.hub.poll_transmit() {
            let socket = transmit.socket();
            transmit.to_frames(&mut frames);
            for frame in std::mem::take(&mut frames) {
                self.sent(socket, frame);
            }
        }
    }

    /// A frame for `socket`: a valid server envelope, for a socket not closed.
    fn sent(&mut self, socket: SocketId, frame: switchboard_core::server::Frame) {
        let frame = frame.to_bytes();
        assert!(!self.dead.contains(&socket), "Send to closed {socket:?}: {frame:?}");
        let envelope = Envelope::parse(&frame, usize::MAX)
            .unwrap_or_else(|e| panic!("the hub sent an invalid frame ({e}): {frame:?}"));
        assert_eq!(envelope.source, Source::Server);
        self.unwritten.entry(socket).or_default().push_back(frame.len());
    }

    fn frame(&mut self, frame: &Frame) -> Vec<u8> {
        let (message_type, conversation, resume_connection, last_sequence) = match frame {
            Frame::Raw(bytes) => return bytes.clone(),
            Frame::Envelope { message_type, conversation, resume_connection, last_sequence } => {
                (*message_type, *conversation, *resume_connection, *last_sequence)
            }
        };
        let timestamp = r#""2025-12-18T10:30:00.000Z""#;
        let payload = match message_type {
            "system.ping" | "system.pong" => format!(r#"{{"timestamp":{timestamp}}}"#),
            "system.connection.resume" => {
                let mut p = format!(
                    r#"{{"conversationId":"{}","lastMessageId":null"#,
                    CONVERSATIONS[conversation.unwrap_or(0)]
                );
                if let Some(n) = resume_connection {
                    let id = self
                        .connection(n)
                        .map_or("no-such-connection".to_owned(), |id| id.as_str().to_owned());
                    p.push_str(&format!(r#","connectionId":"{id}""#));
                }
                if let Some(last) = last_sequence {
                    p.push_str(&format!(r#","lastSequence":{last}"#));
                }
                p.push('}');
                p
            }
            "system.auth.refresh" => r#"{"token":"tok-refresh"}"#.to_owned(),
            "system.connection.close" => r#"{"reason":"user_logout","code":1000}"#.to_owned(),
            "system.error" => {
                r#"{"category":"validation","code":"X","message":"m","isRetryable":false}"#
                    .to_owned()
            }
            _ => r#"{"n":1}"#.to_owned(),
        };
        let conversation = conversation
            .map(|c| format!(r#","conversationId":"{}""#, CONVERSATIONS[c]))
            .unwrap_or_default();
        let id = self.next_message;
        self.next_message += 1;
        format!(
            r#"{{"id":"m-{id}","type":"{message_type}","version":"1.0","timestamp":{timestamp},"source":"client"{conversation},"payload":{payload}}}"#
        )
        .into_bytes()
    }

    fn outgoing(&mut self, conversation: Option<&Id>) -> Outgoing {
        let n = self.next_message;
        self.next_message += 1;
        let outgoing = Outgoing::new(
            data("data.app.event"),
            Payload::from_json(&format!(r#"{{"n":{n}}}"#)).unwrap(),
        );
        match conversation {
            Some(conversation) => outgoing.in_conversation(conversation.clone()),
            None => outgoing,
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Open { token, cookie, conversation, bad_conversation } => {
                let socket = SocketId(self.next_socket);
                self.next_socket += 1;
                let mut request = OpenRequest {
                    origin: Some("https://app.example".to_owned()),
                    ..OpenRequest::default()
                };
                if token {
                    request.query.push(("token".to_owned(), format!("tok-{}", socket.0)));
                }
                if cookie {
                    request.cookies.push(("session".to_owned(), format!("cookie-{}", socket.0)));
                }
                if bad_conversation {
                    request.query.push(("conversation_id".to_owned(), "c".repeat(200)));
                } else if let Some(c) = conversation {
                    request.query.push(("conversation_id".to_owned(), CONVERSATIONS[c].to_owned()));
                }
                self.open.push(socket);
                self.input(Input::Opened { socket, request });
            }
            Op::Verdict { pending, verdict } => {
                if self.pending.is_empty() {
                    return;
                }
                let request = self.pending.remove(usize::from(pending) % self.pending.len());
                let verdict = match verdict {
                    Verdict::Allow { user, expires_in_s } => Ok(Principal {
                        expires_at_unix_ms: expires_in_s
                            .map(|s| self.wall_ms() + i64::from(s) * 1000),
                        ..Principal::user(USERS[user])
                    }
                    .into()),
                    Verdict::Deny => Err(AuthFailure::Signature),
                    Verdict::Expired => Err(AuthFailure::Expired),
                };
                self.input(Input::AuthVerdict { request, verdict });
            }
            Op::Join { pending, verdict } => {
                if self.joins.is_empty() {
                    return;
                }
                let request = self.joins.remove(usize::from(pending) % self.joins.len());
                let verdict = verdict.map(|write| JoinGrant { write });
                self.input(Input::JoinVerdict { request, verdict });
            }
            Op::Text { socket, ref frame } => {
                let Some(socket) = self.socket(socket) else { return };
                let frame = self.frame(frame);
                self.input(Input::Text { socket, frame: frame.into() });
            }
            Op::Binary { socket } => {
                let Some(socket) = self.socket(socket) else { return };
                self.input(Input::Binary { socket });
            }
            Op::Flushed { socket, frames } => {
                let Some(socket) = self.socket(socket) else { return };
                let queue = self.unwritten.entry(socket).or_default();
                let n = usize::from(frames).min(queue.len());
                let bytes = queue.drain(..n).sum();
                self.input(Input::Flushed { socket, frames: n, bytes });
            }
            Op::Closed { socket, code } => {
                let Some(socket) = self.socket(socket) else { return };
                self.open.retain(|&s| s != socket);
                self.dead.insert(socket);
                self.unwritten.remove(&socket);
                self.input(Input::Closed { socket, code: code.map(CloseCode) });
            }
            Op::Advance { ms } => {
                self.now = self.now + Duration::from_millis(ms);
                if self.hub.poll_timeout().is_some_and(|(at, _)| at <= self.now) {
                    self.input(Input::Timeout);
                    if let Some((at, kind)) = self.hub.poll_timeout() {
                        assert!(
                            at > self.now,
                            "after a timeout at {:?}, the next deadline ({kind:?}) is {at:?}",
                            self.now
                        );
                    }
                }
            }
            Op::Remote { ref channel, ref body } => {
                let message = match *body {
                    RemoteBody::Raw(ref bytes) => bytes.clone().into(),
                    RemoteBody::Valid { from_self, except, in_conversation, epoch, offset } => {
                        let origin = if from_self {
                            self.hub.instance_id().clone()
                        } else {
                            Id::new("other-instance").unwrap()
                        };
                        let n = self.next_message;
                        self.next_message += 1;
                        let envelope = Envelope::create(
                            Source::Server,
                            data("data.remote.event"),
                            Payload::empty(),
                            Timestamp::from_unix_ms(self.wall_ms()).unwrap(),
                            u128::from(n),
                        )
                        .in_conversation(
                            in_conversation.map(|c| Id::new(CONVERSATIONS[c]).unwrap()),
                        );
                        let except = except.and_then(|n| self.connection(n));
                        let frame = SharedFrame::encode(&envelope);
                        let message =
                            RemoteMessage { id: envelope.id, origin, except, lost: 0, frame };
                        positioned(epoch, offset, &message.encode()).into()
                    }
                };
                let channel = channel.clone();
                let shard = Channel::parse(&channel, "sb:").map_or(0, |c| shard_of(&c.wire(), 2));
                self.input(Input::Bus(shard, BusEvent::Message { channel, message }));
            }
            Op::Answer(ref answer) => {
                if self.bus.is_empty() {
                    return;
                }
                let (shard, command) = self.bus.remove(usize::from(answer.which) % self.bus.len());
                let fail = || BusError("down".into());
                let top = Top {
                    epoch: EPOCHS[usize::from(answer.epoch)].into(),
                    offset: u64::from(answer.offset),
                };
                let event = match command {
                    BusCommand::Publish { key, .. } => BusEvent::Published {
                        key,
                        result: if answer.ok { Ok(top) } else { Err(fail()) },
                    },
                    BusCommand::Subscribe { batch, channels } => BusEvent::Subscribed {
                        batch,
                        result: if answer.ok {
                            Ok(channels
                                .iter()
                                .map(|_| (answer.offset > 0).then(|| top.clone()))
                                .collect())
                        } else {
                            Err(fail())
                        },
                    },
                    BusCommand::Read { request, after, limit, .. } => BusEvent::History {
                        request,
                        result: if answer.ok {
                            let entries = (after + 1..=u64::from(answer.offset))
                                .take(limit)
                                .map(|offset| (offset, self.entry(offset).into()))
                                .collect();
                            Ok(History { top: (answer.offset > 0).then_some(top), entries })
                        } else {
                            Err(fail())
                        },
                    },
                    BusCommand::Probe { channel, token } => {
                        BusEvent::Message { channel, message: token.to_string().into() }
                    }
                    _ => return,
                };
                self.input(Input::Bus(shard, event));
            }
            Op::Link(ref kind) => {
                let event = match *kind % 3 {
                    0 => BusEvent::LinkDown,
                    1 => BusEvent::LinkUp,
                    _ => BusEvent::Lagged,
                };
                self.input(Input::Bus(usize::from(*kind) / 3 % 2, event));
            }
            Op::Send { target } => {
                match target {
                    AppTarget::Conversation { conversation, except } => {
                        let conversation = Id::new(CONVERSATIONS[conversation]).unwrap();
                        let except = except.and_then(|n| self.connection(n));
                        let outgoing = self.outgoing(Some(&conversation));
                        let _ = self.hub.broadcast_to_conversation(
                            self.now,
                            &conversation,
                            outgoing,
                            except.as_ref(),
                        );
                    }
                    AppTarget::User(user) => {
                        let outgoing = self.outgoing(None);
                        let _ = self.hub.send_to_user(self.now, USERS[user], outgoing);
                    }
                    AppTarget::Connection(n) => {
                        let Some(id) = self.connection(n) else { return };
                        let outgoing = self.outgoing(None);
                        let _ = self.hub.send_to_connection(self.now, &id, outgoing);
                    }
                    AppTarget::All => {
                        let outgoing = self.outgoing(None);
                        let _ = self.hub.broadcast_all(self.now, outgoing);
                    }
                }
                self.drain();
            }
            Op::CloseConnection { connection, code } => {
                let Some(id) = self.connection(connection) else { return };
                self.hub.close_connection(self.now, &id, CloseCode(code), "application");
                self.drain();
            }
            Op::Shutdown => self.input(Input::Shutdown),
        }
    }
}

fuzz_target!(|ops: Ops| {
    let mut world = World::new();
    for op in &ops.0 {
        world.apply(op);
    }
});
