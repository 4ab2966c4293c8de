//! The client core driven by arbitrary sequences of what a browser can do to it: server frames
//! (decoded by the adapter, or as text for the core to decode, or garbage), socket events for
//! the current, an older or a future attempt, timer ticks, page events, token answers and
//! application calls. After every input the outputs are drained and checked:
//!
//! - never two sockets: an `OpenSocket` only when every earlier socket was closed (by a
//!   `CloseSocket` or a reported close);
//! - a `SendFrame` or `CloseSocket` only for the socket that is open;
//! - the send queue within its bounds, and a bounded number of outputs per input;
//! - after `Timeout` at `now`, `poll_timeout()` is `None` or later than `now`;
//! - messages delivered to the application within one session (connection id) never repeat
//!   or go backwards;
//! - the token never appears in an event, a frame or the `Debug` of an output.
//!
//! The input is decoded into at most [`MAX_OPS`] [`Op`]s; the client never panics, whatever
//! they are.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use switchboard_core::client::{
    AttemptId, BackoffConfig, Client, ClientConfig, ClientEvent, ClientInput, ClientOutput, Jitter,
    OutgoingMessage, Received, ServerFrame, TokenSource,
};
use switchboard_core::protocol::{
    CloseCode, CloseReason, ConnectionEstablished, Envelope, ErrorCategory, ErrorPayload, Id,
    MessageType, Payload, Position, Source, SystemMessage, Timestamp,
};
use switchboard_core::time::Instant;

/// The channels positions name (more than the client keeps would take many inputs).
const CHANNELS: [&str; 2] = ["conversation:conv-1", "user:alice"];

const MAX_OPS: usize = 256;
const SEED: u64 = 0x5eed_c11e_7000_0001;
/// 2025-12-18T10:30:00.000Z, read at `START`.
const UNIX_MS: i64 = 1_766_053_800_000;
const START: Instant = Instant::from_millis(1_000);
/// Every token the client is given starts with this, so a leak is easy to spot.
const SECRET: &str = "SECRET-token";
const QUEUE_MAX_MESSAGES: usize = 4;

const CONNECTIONS: [&str; 3] = ["conn-a", "conn-b", "conn-c"];
const APP_TYPES: [&str; 3] = ["data.message.created", "control.flow.pause", "data.widget.x"];
const CLOSE_CODES: [Option<u16>; 12] = [
    None,
    Some(1000),
    Some(1001),
    Some(1006),
    Some(1011),
    Some(4000),
    Some(4001),
    Some(4002),
    Some(4005),
    Some(4011),
    Some(4013),
    Some(4999),
];
const REASONS: [CloseReason; 6] = [
    CloseReason::UserLogout,
    CloseReason::SessionExpired,
    CloseReason::ServerShutdown,
    CloseReason::ConversationComplete,
    CloseReason::IdleTimeout,
    CloseReason::Unknown,
];

/// Which attempt a socket event names, relative to the latest the client opened.
#[derive(Debug, Clone, Copy)]
enum Which {
    Latest,
    Older,
    Future,
}

#[derive(Debug, Clone)]
enum Frame {
    Established {
        connection: usize,
        heartbeat_ms: Option<u16>,
    },
    Ping,
    /// A pong answering the latest ping the client sent, or naming nothing it sent.
    Pong {
        answers_latest: bool,
    },
    Resumed {
        connection: Option<usize>,
        missed: u8,
        state_valid: bool,
    },
    Closing {
        reason: usize,
        retry_after_ms: Option<u16>,
    },
    Error {
        retryable: bool,
    },
    Other,
    Application {
        message_type: usize,
        sequence: Option<u8>,
        /// A place in one of two channels, of one of two epochs.
        position: Option<(bool, bool, u8)>,
    },
    /// `system.channel.reset` for one of the two channels.
    ChannelReset {
        second: bool,
    },
}

#[derive(Debug, Clone)]
enum Op {
    Connect,
    Disconnect {
        code: u16,
    },
    Send {
        message_type: usize,
        bytes: u16,
    },
    Opened {
        which: Which,
    },
    /// A frame, handed over decoded (as the browser does) or as text (as the native client does).
    Frame {
        which: Which,
        frame: Frame,
        as_text: bool,
    },
    /// Text that may be anything.
    Raw {
        which: Which,
        text: Vec<u8>,
    },
    Closed {
        which: Which,
        code: Option<u16>,
    },
    Token {
        expires_in_s: Option<u16>,
    },
    Online,
    Offline,
    Visible,
    Hidden,
    PageHide,
    PageShow,
    Freeze,
    ReconnectNow,
    /// Time passes; `Timeout` follows for every deadline on the way (late, by `late_ms`).
    Advance {
        ms: u64,
        late_ms: u16,
    },
}

#[derive(Debug)]
struct Ops(Vec<Op>);

fn maybe<'a, T>(
    u: &mut Unstructured<'a>,
    f: impl FnOnce(&mut Unstructured<'a>) -> arbitrary::Result<T>,
) -> arbitrary::Result<Option<T>> {
    Ok(if u.arbitrary::<bool>()? { Some(f(u)?) } else { None })
}

impl<'a> Arbitrary<'a> for Which {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0..=9)? {
            0..=7 => Which::Latest,
            8 => Which::Older,
            _ => Which::Future,
        })
    }
}

impl<'a> Arbitrary<'a> for Frame {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0..=15)? {
            0..=2 => Frame::Established {
                connection: u.choose_index(CONNECTIONS.len())?,
                heartbeat_ms: maybe(u, |u| u.arbitrary())?,
            },
            3 => Frame::Ping,
            4 => Frame::Pong { answers_latest: u.ratio(3, 4)? },
            5 | 6 => Frame::Resumed {
                connection: maybe(u, |u| u.choose_index(CONNECTIONS.len()))?,
                missed: u.arbitrary()?,
                state_valid: u.arbitrary()?,
            },
            7 => Frame::Closing {
                reason: u.choose_index(REASONS.len())?,
                retry_after_ms: maybe(u, |u| u.arbitrary())?,
            },
            8 => Frame::Error { retryable: u.arbitrary()? },
            9 => Frame::Other,
            10 => Frame::ChannelReset { second: u.arbitrary()? },
            _ => Frame::Application {
                message_type: u.choose_index(APP_TYPES.len())?,
                sequence: maybe(u, |u| u.int_in_range(0..=24))?,
                position: maybe(u, |u| Ok((u.arbitrary()?, u.ratio(1, 8)?, u.arbitrary()?)))?,
            },
        })
    }
}

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.arbitrary::<u8>()? {
            0..=9 => Op::Connect,
            10..=12 => Op::Disconnect { code: *u.choose(&[1000, 1001, 4000])? },
            13..=34 => Op::Send {
                message_type: u.choose_index(APP_TYPES.len())?,
                bytes: u.int_in_range(0..=300)?,
            },
            35..=59 => Op::Opened { which: u.arbitrary()? },
            60..=139 => {
                Op::Frame { which: u.arbitrary()?, frame: u.arbitrary()?, as_text: u.arbitrary()? }
            }
            140..=147 => {
                let len = u.int_in_range(0..=200)?.min(u.len());
                Op::Raw { which: u.arbitrary()?, text: u.bytes(len)?.to_vec() }
            }
            148..=167 => Op::Closed { which: u.arbitrary()?, code: *u.choose(&CLOSE_CODES)? },
            168..=177 => Op::Token { expires_in_s: maybe(u, |u| u.arbitrary())? },
            178..=181 => Op::Online,
            182..=185 => Op::Offline,
            186..=188 => Op::Visible,
            189..=191 => Op::Hidden,
            192..=194 => Op::PageHide,
            195..=197 => Op::PageShow,
            198..=199 => Op::Freeze,
            200..=204 => Op::ReconnectNow,
            _ => Op::Advance {
                ms: match u.int_in_range(0..=2)? {
                    0 => u64::from(u.arbitrary::<u8>()?),
                    1 => u64::from(u.arbitrary::<u16>()?),
                    _ => u64::from(u.arbitrary::<u8>()?) * 1000,
                },
                late_ms: if u.ratio(1, 4)? { u.arbitrary()? } else { 0 },
            },
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

/// Small limits and short timers, so that every cut-off is within reach of a few hundred
/// operations; tokens come from the application, so token answers matter.
fn config() -> ClientConfig {
    let mut config = ClientConfig::new("ws://127.0.0.1:1/ws");
    config.conversation_id = Some("conv-1".to_owned());
    config.token = TokenSource::Application;
    config.backoff = BackoffConfig {
        base: Duration::from_millis(100),
        max: Duration::from_secs(5),
        max_attempts: 6,
        jitter: Jitter::Full,
    };
    config.connect_timeout = Duration::from_secs(2);
    config.establish_timeout = Duration::from_secs(2);
    config.heartbeat_interval = Duration::from_secs(3);
    config.probe_timeout = Duration::from_secs(1);
    config.token_refresh_lead = Duration::from_secs(5);
    config.queue_max_messages = QUEUE_MAX_MESSAGES;
    config.queue_max_bytes = 1024;
    config.queue_ttl = Duration::from_secs(10);
    config.held_max_messages = 4;
    config.ping_interval = Some(Duration::from_secs(4));
    config
}

/// The client, the clock, and what the adapter knows about the sockets.
struct World {
    client: Client,
    now: Instant,
    /// The socket the client opened and has not closed (nor seen closed).
    open: Option<AttemptId>,
    /// The latest socket the client opened.
    latest: Option<AttemptId>,
    /// The id of the last ping the client sent.
    last_ping: Option<Id>,
    /// The session (connection id) messages are delivered in, and the last sequence delivered
    /// in it.
    session: Option<Id>,
    delivered: Option<u64>,
    tokens: u32,
    ids: u128,
}

impl World {
    fn input(&mut self, input: ClientInput) {
        self.client.handle_input(self.now, input);
        self.drain();
    }

    fn drain(&mut self) {
        // A new session (or none, after a disconnect) numbers its messages afresh.
        if self.client.connection_id() != self.session.as_ref() {
            self.session = self.client.connection_id().cloned();
            self.delivered = None;
        }
        let mut outputs = 0;
        while let Some(output) = self.client.poll_output() {
            outputs += 1;
            assert!(outputs < 10_000, "an input produced more than 10 000 outputs");
            self.check(output);
        }
        let status = self.client.status();
        assert!(status.queued <= QUEUE_MAX_MESSAGES, "queue over its bound: {}", status.queued);
    }

    fn check(&mut self, output: ClientOutput) {
        let shown = format!("{output:?}");
        match &output {
            ClientOutput::OpenSocket { attempt, url } => {
                assert_eq!(self.open, None, "a second socket while {:?} is open", self.open);
                assert!(self.latest < Some(*attempt), "attempt {attempt:?} reused");
                assert!(!shown.contains(SECRET), "the token leaked: {shown}");
                self.open = Some(*attempt);
                self.latest = Some(*attempt);
                let _ = url; // the URL carries the token, by design; its Debug must not
                return;
            }
            ClientOutput::SendFrame { attempt, frame } => {
                assert_eq!(self.open, Some(*attempt), "a frame for a socket that is not open");
                let envelope = Envelope::parse(frame, usize::MAX).expect("the client sends JSON");
                if envelope.message_type.as_str() == "system.ping" {
                    self.last_ping = Some(envelope.id.clone());
                }
                if envelope.message_type.as_str() != "system.auth.refresh" {
                    assert!(!frame.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));
                }
            }
            ClientOutput::CloseSocket { attempt, .. } => {
                assert_eq!(self.open, Some(*attempt), "a close for a socket that is not open");
                self.open = None;
            }
            // After a gap the application refetches: what follows is not checked against
            // what came before.
            ClientOutput::Event(ClientEvent::Gap { .. }) => self.delivered = None,
            ClientOutput::Event(ClientEvent::Message { message, .. }) => {
                if let Some(sequence) = message.sequence {
                    assert!(
                        self.delivered.is_none_or(|last| sequence > last),
                        "sequence {sequence} delivered after {:?}",
                        self.delivered
                    );
                    self.delivered = Some(sequence);
                }
            }
            _ => {}
        }
        assert!(!shown.contains(SECRET), "the token leaked: {shown}");
    }

    fn attempt(&self, which: Which) -> AttemptId {
        let latest = self.latest.unwrap_or(AttemptId(0));
        match which {
            Which::Latest => latest,
            Which::Older => AttemptId(latest.0.saturating_sub(1)),
            Which::Future => AttemptId(latest.0 + 1),
        }
    }

    fn next_id(&mut self) -> Id {
        self.ids += 1;
        Id::new(&format!("m-{}", self.ids)).expect("a valid id")
    }

    fn decoded(&mut self, frame: &Frame) -> ServerFrame {
        match *frame {
            Frame::Established { connection, heartbeat_ms } => ServerFrame::Established {
                connection_id: Id::new(CONNECTIONS[connection]).expect("a valid id"),
                heartbeat_interval_ms: heartbeat_ms.map(u64::from),
            },
            Frame::Ping => ServerFrame::Ping { id: self.next_id() },
            Frame::Pong { answers_latest } => ServerFrame::Pong {
                correlation_id: if answers_latest { self.last_ping.clone() } else { None },
            },
            Frame::Resumed { connection, missed, state_valid } => ServerFrame::Resumed {
                connection_id: connection.map(|c| Id::new(CONNECTIONS[c]).expect("a valid id")),
                missed_messages: u64::from(missed),
                state_valid,
            },
            Frame::Closing { reason, retry_after_ms } => ServerFrame::Closing {
                reason: REASONS[reason],
                retry_after_ms: retry_after_ms.map(u64::from),
            },
            Frame::Error { retryable } => ServerFrame::Error(Box::new(ErrorPayload {
                category: ErrorCategory::Server,
                code: "INTERNAL".to_owned(),
                message: "fuzz".to_owned(),
                details: None,
                is_retryable: retryable,
                retry_after_ms: None,
            })),
            Frame::Other => ServerFrame::Other,
            Frame::ChannelReset { second } => {
                ServerFrame::ChannelReset { channel: CHANNELS[usize::from(second)].to_owned() }
            }
            Frame::Application { message_type, sequence, position } => {
                let mut envelope = self.application(message_type, sequence);
                envelope.position = position.map(|(second, new_epoch, offset)| Position {
                    channel: CHANNELS[usize::from(second)].to_owned(),
                    epoch: if new_epoch { "e2" } else { "e1" }.to_owned(),
                    offset: u64::from(offset),
                });
                ServerFrame::Application(Box::new(Received {
                    id: envelope.id.clone(),
                    message_type: envelope.message_type.clone(),
                    sequence: envelope.sequence,
                    position: envelope.position.clone(),
                    frame: envelope.encode().into(),
                    envelope: None,
                }))
            }
        }
    }

    fn application(&mut self, message_type: usize, sequence: Option<u8>) -> Envelope {
        self.ids += 1;
        let envelope = Envelope::create(
            Source::Server,
            MessageType::new(APP_TYPES[message_type]).expect("a valid type"),
            Payload::empty(),
            Timestamp::UNIX_EPOCH,
            self.ids,
        );
        match sequence {
            Some(sequence) => envelope.with_sequence(u64::from(sequence)),
            None => envelope,
        }
    }

    /// The frame as the server would have written it.
    fn text(&mut self, frame: &Frame) -> Vec<u8> {
        let system = |message: SystemMessage, id: u128| {
            Envelope::create(
                Source::Server,
                message.message_type(),
                message.to_payload(),
                Timestamp::UNIX_EPOCH,
                id,
            )
        };
        self.ids += 1;
        let envelope = match self.decoded(frame) {
            ServerFrame::Established { connection_id, heartbeat_interval_ms } => system(
                SystemMessage::ConnectionEstablished(ConnectionEstablished {
                    connection_id,
                    conversation_id: "conv-1".into(),
                    user_id: "alice".into(),
                    definition_id: None,
                    resuming: false,
                    server_time: Timestamp::UNIX_EPOCH,
                    heartbeat_interval_ms,
                    resume_window_ms: Some(120_000),
                }),
                self.ids,
            ),
            ServerFrame::Application(received) => return received.frame.to_vec(),
            // The rest are decoded only as the browser does; their text form is the hub's
            // business and is fuzzed there.
            _ => return b"{}".to_vec(),
        };
        envelope.encode()
    }
}

fuzz_target!(|ops: Ops| {
    let mut world = World {
        client: Client::new(config(), SEED, START, UNIX_MS),
        now: START,
        open: None,
        latest: None,
        last_ping: None,
        session: None,
        delivered: None,
        tokens: 0,
        ids: 0,
    };
    for op in ops.0 {
        match op {
            Op::Connect => world.input(ClientInput::Connect),
            Op::Disconnect { code } => {
                // A deliberate close ends the session, numbered or not.
                world.delivered = None;
                world.input(ClientInput::Disconnect { code: CloseCode(code), reason: "bye".into() })
            }
            Op::Send { message_type, bytes } => {
                let payload = format!(r#"{{"text":"{}"}}"#, "x".repeat(usize::from(bytes)));
                world.input(ClientInput::Send(OutgoingMessage {
                    message_type: MessageType::new(APP_TYPES[message_type]).expect("a valid type"),
                    payload: Payload::from_json(&payload).expect("a valid payload"),
                    conversation_id: None,
                    correlation_id: None,
                }));
            }
            Op::Opened { which } => {
                let attempt = world.attempt(which);
                world.input(ClientInput::SocketOpened { attempt });
            }
            Op::Frame { which, frame, as_text } => {
                let attempt = world.attempt(which);
                if as_text {
                    let text = world.text(&frame).into();
                    world.input(ClientInput::Frame { attempt, text });
                } else {
                    let frame = world.decoded(&frame);
                    world.input(ClientInput::Decoded { attempt, frame });
                }
            }
            Op::Raw { which, text } => {
                let attempt = world.attempt(which);
                world.input(ClientInput::Frame { attempt, text: text.into() });
            }
            Op::Closed { which, code } => {
                let attempt = world.attempt(which);
                if world.open == Some(attempt) {
                    world.open = None;
                }
                world.input(ClientInput::SocketClosed {
                    attempt,
                    code: code.map(CloseCode),
                    reason: String::new(),
                });
            }
            Op::Token { expires_in_s } => {
                world.tokens += 1;
                let token = format!("{SECRET}-{}", world.tokens);
                let elapsed_ms = world.now.saturating_since(START).as_millis() as i64;
                let expires_at_unix_ms =
                    expires_in_s.map(|s| UNIX_MS + elapsed_ms + i64::from(s) * 1000);
                world.input(ClientInput::Token { token, expires_at_unix_ms });
            }
            Op::Online => world.input(ClientInput::Online),
            Op::Offline => world.input(ClientInput::Offline),
            Op::Visible => world.input(ClientInput::Visible),
            Op::Hidden => world.input(ClientInput::Hidden),
            Op::PageHide => world.input(ClientInput::PageHide),
            Op::PageShow => world.input(ClientInput::PageShow),
            Op::Freeze => world.input(ClientInput::Freeze),
            Op::ReconnectNow => world.input(ClientInput::ReconnectNow),
            Op::Advance { ms, late_ms } => {
                let until = world.now + Duration::from_millis(ms);
                while let Some((at, _)) = world.client.poll_timeout() {
                    if at > until {
                        break;
                    }
                    world.now = world.now.max(at + Duration::from_millis(u64::from(late_ms)));
                    world.input(ClientInput::Timeout);
                    let next = world.client.poll_timeout();
                    assert!(
                        next.is_none_or(|(at, _)| at > world.now),
                        "deadline {next:?} did not move past {:?}",
                        world.now
                    );
                }
                world.now = world.now.max(until);
            }
        }
    }
});
