//! switchboard in the browser: the client core compiled to wasm, behind a narrow boundary.
//!
//! The TypeScript shell (`ts/`) owns what only a browser has — the `WebSocket`, one timer,
//! the clocks, the seed, page lifecycle events, storage, the application's token callback —
//! and feeds each of them to [`Core`] as an input; after every input it drains
//! [`Core::poll`] and carries out each output, then re-arms its timer at [`Core::deadline`].
//! Every decision (reconnect or not, when, resume, liveness, tokens, the send queue) is the
//! core's.
//!
//! The boundary is primitive-typed on purpose: numbers and strings in, one JSON string per
//! output out. Rust keeps no JavaScript closure alive, so nothing leaks across reconnects, and
//! the weight stays in the core rather than in generated bindings. Times are milliseconds:
//! `now` from `performance.now()` (monotonic), wall-clock ones from `Date.now()`.

use bytes::Bytes;
use std::time::Duration;
use switchboard_core::client::{
    AttemptId, BackoffConfig, Client, ClientConfig, ClientEvent, ClientInput, ClientOutput,
    ClientState, ClientStatus, Jitter, OutgoingMessage, Received, ResumeState, ServerFrame,
    StateChange, SubscriptionId, TokenSource,
};
use switchboard_core::protocol::json::{self, ObjectWriter};
use switchboard_core::protocol::{CloseCode, CloseReason, Id, MessageType, Payload, Position};
use switchboard_core::time::Instant;
use wasm_bindgen::prelude::*;

pub use switchboard_core as core;

/// The browser client's allocator (smaller than the default dlmalloc; single-threaded wasm).
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

/// The numeric options, in the order of the constructor's `numbers` (NaN or negative: the
/// core's default). The boundary stays primitive, and the wasm carries no JSON reader.
#[derive(Clone, Copy)]
enum Number {
    HeartbeatIntervalMs,
    ConnectTimeoutMs,
    ProbeTimeoutMs,
    TokenRefreshLeadMs,
    QueueMaxMessages,
    QueueMaxBytes,
    QueueTtlMs,
    /// 0: no pings of the client's own.
    PingIntervalMs,
    ReconnectBaseMs,
    ReconnectMaxMs,
    ReconnectMaxAttempts,
    /// 1 `full`, 2 `none`, 3 `proportional` (± `JitterRatio`); anything else `equal`.
    Jitter,
    JitterRatio,
}

/// The client's configuration from the constructor's arguments (see [`Core::new`]).
fn config(strings: [String; 4], cookie_auth: bool, resume: bool, numbers: &[f64]) -> ClientConfig {
    let [url, conversation_id, definition_id, token] = strings;
    let number = |n: Number| numbers.get(n as usize).copied().and_then(count);
    let ms = |n: Number, default: Duration| number(n).map_or(default, Duration::from_millis);
    let mut config = ClientConfig::new(url);
    config.conversation_id = Some(conversation_id).filter(|c| !c.is_empty());
    config.definition_id = Some(definition_id).filter(|d| !d.is_empty());
    config.token = match (token.is_empty(), cookie_auth) {
        (false, _) => TokenSource::Static(token),
        (true, true) => TokenSource::None,
        (true, false) => TokenSource::Application,
    };
    config.resume = resume;
    config.heartbeat_interval = ms(Number::HeartbeatIntervalMs, config.heartbeat_interval);
    config.connect_timeout = ms(Number::ConnectTimeoutMs, config.connect_timeout);
    config.establish_timeout = ms(Number::ConnectTimeoutMs, config.establish_timeout);
    config.probe_timeout = ms(Number::ProbeTimeoutMs, config.probe_timeout);
    config.token_refresh_lead = ms(Number::TokenRefreshLeadMs, config.token_refresh_lead);
    config.queue_ttl = ms(Number::QueueTtlMs, config.queue_ttl);
    let size = |n: Number, default: usize| number(n).map_or(default, |n| n as usize);
    config.queue_max_messages = size(Number::QueueMaxMessages, config.queue_max_messages);
    config.queue_max_bytes = size(Number::QueueMaxBytes, config.queue_max_bytes);
    if let Some(interval) = number(Number::PingIntervalMs) {
        config.ping_interval = (interval > 0).then(|| Duration::from_millis(interval));
    }
    let defaults = config.backoff;
    config.backoff = BackoffConfig {
        base: ms(Number::ReconnectBaseMs, defaults.base),
        max: ms(Number::ReconnectMaxMs, defaults.max),
        max_attempts: number(Number::ReconnectMaxAttempts)
            .map_or(defaults.max_attempts, |n| n.min(u64::from(u32::MAX)) as u32),
        jitter: match number(Number::Jitter) {
            Some(1) => Jitter::Full,
            Some(2) => Jitter::None,
            Some(3) => Jitter::Proportional(
                numbers
                    .get(Number::JitterRatio as usize)
                    .copied()
                    .filter(|r| r.is_finite() && *r >= 0.0)
                    .unwrap_or(0.1),
            ),
            _ => defaults.jitter,
        },
    };
    config
}

/// The client core, for the TypeScript shell.
#[wasm_bindgen]
#[derive(Debug)]
pub struct Core {
    client: Client,
    /// `now` and `Date.now()` read together at construction: wall-clock times of the core's
    /// instants (a retry's countdown) are derived from them.
    origin: u64,
    origin_unix_ms: f64,
    /// Positions of a resume point being restored (see [`Core::restore_position`]).
    restored: Vec<Position>,
}

/// A count or a duration in ms from JavaScript: `None` for NaN or a negative number.
fn count(value: f64) -> Option<u64> {
    (value.is_finite() && value >= 0.0).then_some(value as u64)
}

fn instant(now: f64) -> Instant {
    Instant::from_millis(if now.is_finite() && now > 0.0 { now as u64 } else { 0 })
}

#[wasm_bindgen]
impl Core {
    /// A client of `url` (`conversation_id`, `definition_id`, `token`: empty when absent; without
    /// a token and without `cookie_auth` the application is asked for tokens), with the
    /// numeric options in the order of `Number` (NaN: the default), drawing its randomness from
    /// the 64-bit seed `seed_hi:seed_lo`, at monotonic time `now` and wall clock `unix_ms`.
    #[wasm_bindgen(constructor)]
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        url: String,
        conversation_id: String,
        definition_id: String,
        token: String,
        cookie_auth: bool,
        resume: bool,
        numbers: &[f64],
        seed_hi: u32,
        seed_lo: u32,
        now: f64,
        unix_ms: f64,
    ) -> Result<Core, JsError> {
        if url.is_empty() {
            return Err(JsError::new("options: a url is needed"));
        }
        let strings = [url, conversation_id, definition_id, token];
        let config = config(strings, cookie_auth, resume, numbers);
        let seed = (u64::from(seed_hi) << 32) | u64::from(seed_lo);
        let client = Client::new(config, seed, instant(now), unix_ms as i64);
        Ok(Core {
            client,
            origin: instant(now).as_millis(),
            origin_unix_ms: unix_ms,
            restored: Vec::new(),
        })
    }

    /// One channel position of a stored resume point, given before [`Core::restore`] (the
    /// shell reads the stored JSON: the boundary stays primitive, and the wasm carries no JSON
    /// reader for it). An empty channel or epoch is ignored.
    pub fn restore_position(&mut self, channel: String, epoch: String, offset: f64) {
        if let (false, false, Some(offset)) = (channel.is_empty(), epoch.is_empty(), count(offset))
        {
            self.restored.push(Position { channel, epoch, offset });
        }
    }

    /// Starts from a stored resume point (as the `persist` output gave it), with the positions
    /// given before by [`Core::restore_position`]; an empty or invalid connection id is no
    /// resume point.
    pub fn restore(&mut self, connection_id: &str, last_sequence: f64, last_message_id: &str) {
        let positions = std::mem::take(&mut self.restored);
        let Ok(connection_id) = Id::new(connection_id) else { return };
        self.client.restore(ResumeState {
            connection_id: Some(connection_id),
            last_sequence: count(last_sequence).unwrap_or(0),
            last_message_id: Id::new(last_message_id).ok(),
            positions,
        });
    }

    fn input(&mut self, now: f64, input: ClientInput) {
        self.client.handle_input(instant(now), input);
    }

    fn decoded(&mut self, now: f64, attempt: u32, frame: ServerFrame) {
        let attempt = AttemptId(u64::from(attempt));
        self.input(now, ClientInput::Decoded { attempt, frame });
    }

    pub fn connect(&mut self, now: f64) {
        self.input(now, ClientInput::Connect);
    }

    pub fn disconnect(&mut self, now: f64, code: u16, reason: String) {
        self.input(now, ClientInput::Disconnect { code: CloseCode(code), reason });
    }

    pub fn reconnect_now(&mut self, now: f64) {
        self.input(now, ClientInput::ReconnectNow);
    }

    pub fn socket_opened(&mut self, now: f64, attempt: u32) {
        self.input(now, ClientInput::SocketOpened { attempt: AttemptId(u64::from(attempt)) });
    }

    // ----- a frame from the server, decoded by the shell (JSON.parse) -----
    //
    // The shell parses each frame and calls the one of these its `type` names; the protocol's
    // parsers stay out of the wasm. Numbers that may be absent are NaN then.

    /// `system.connection.established`.
    pub fn established(&mut self, now: f64, attempt: u32, connection_id: &str, heartbeat_ms: f64) {
        let Ok(connection_id) = Id::new(connection_id) else { return };
        let frame =
            ServerFrame::Established { connection_id, heartbeat_interval_ms: count(heartbeat_ms) };
        self.decoded(now, attempt, frame);
    }

    /// `system.ping` with id `id`.
    pub fn ping(&mut self, now: f64, attempt: u32, id: &str) {
        let Ok(id) = Id::new(id) else { return };
        self.decoded(now, attempt, ServerFrame::Ping { id });
    }

    /// `system.pong` answering `correlation_id`.
    pub fn pong(&mut self, now: f64, attempt: u32, correlation_id: Option<String>) {
        let correlation_id = correlation_id.and_then(|id| Id::new(&id).ok());
        self.decoded(now, attempt, ServerFrame::Pong { correlation_id });
    }

    /// `system.connection.resumed`.
    pub fn resumed(
        &mut self,
        now: f64,
        attempt: u32,
        connection_id: Option<String>,
        missed_messages: f64,
        state_valid: bool,
    ) {
        let frame = ServerFrame::Resumed {
            connection_id: connection_id.and_then(|id| Id::new(&id).ok()),
            missed_messages: count(missed_messages).unwrap_or(0),
            state_valid,
        };
        self.decoded(now, attempt, frame);
    }

    /// `system.connection.close` (the socket closes next).
    pub fn closing(&mut self, now: f64, attempt: u32, reason: &str, retry_after_ms: f64) {
        let reason = CloseReason::from_name(reason);
        let frame = ServerFrame::Closing { reason, retry_after_ms: count(retry_after_ms) };
        self.decoded(now, attempt, frame);
    }

    /// `system.channel.reset`: messages on `channel` may be missing (a `gap` output follows).
    pub fn channel_reset(&mut self, now: f64, attempt: u32, channel: String) {
        self.decoded(now, attempt, ServerFrame::ChannelReset { channel });
    }

    /// Any other system message (`system.error` and `system.auth.refreshed`: the shell hands
    /// errors to the application itself); it still counts as life on the socket.
    pub fn other(&mut self, now: f64, attempt: u32) {
        self.decoded(now, attempt, ServerFrame::Other);
    }

    /// An application message: its id, type and sequence (NaN when it has none), its position
    /// (`channel`, `epoch`, `offset`; absent when it has none), and the frame as it arrived,
    /// which the `message` output hands back for delivery. Returns false for a type or id that
    /// is not valid (the frame is then dropped).
    #[allow(clippy::too_many_arguments)]
    pub fn application(
        &mut self,
        now: f64,
        attempt: u32,
        id: &str,
        message_type: &str,
        sequence: f64,
        frame: String,
        channel: Option<String>,
        epoch: Option<String>,
        offset: f64,
    ) -> bool {
        let (Ok(id), Ok(message_type)) = (Id::new(id), MessageType::new(message_type)) else {
            return false;
        };
        let message = Received {
            id,
            message_type,
            sequence: count(sequence),
            position: match (channel, epoch, count(offset)) {
                (Some(channel), Some(epoch), Some(offset)) => {
                    Some(Position { channel, epoch, offset })
                }
                _ => None,
            },
            frame: Bytes::from(frame),
            envelope: None,
        };
        self.decoded(now, attempt, ServerFrame::Application(Box::new(message)));
        true
    }

    /// The socket of `attempt` closed; `code` 0 when it closed without one (1005/1006 as the
    /// browser reports them are passed as is).
    pub fn socket_closed(&mut self, now: f64, attempt: u32, code: u16, reason: String) {
        let attempt = AttemptId(u64::from(attempt));
        let code = (code != 0).then_some(CloseCode(code));
        self.input(now, ClientInput::SocketClosed { attempt, code, reason });
    }

    /// A token from the application; `expires_at_unix_ms` NaN when unknown.
    pub fn token(&mut self, now: f64, token: String, expires_at_unix_ms: f64) {
        let expires_at_unix_ms =
            expires_at_unix_ms.is_finite().then_some(expires_at_unix_ms as i64);
        self.input(now, ClientInput::Token { token, expires_at_unix_ms });
    }

    /// The application's token callback failed: the attempt backs off (and gives up after the
    /// attempt limit) rather than wait for a token that is not coming.
    pub fn token_failed(&mut self, now: f64) {
        self.input(now, ClientInput::TokenFailed);
    }

    /// A page event: `online`, `offline`, `visible`, `hidden`, `pagehide`, `pageshow`, `freeze`
    /// (anything else is ignored).
    pub fn page(&mut self, now: f64, event: &str) {
        let input = match event {
            "online" => ClientInput::Online,
            "offline" => ClientInput::Offline,
            "visible" => ClientInput::Visible,
            "hidden" => ClientInput::Hidden,
            "pagehide" => ClientInput::PageHide,
            "pageshow" => ClientInput::PageShow,
            "freeze" => ClientInput::Freeze,
            _ => return,
        };
        self.input(now, input);
    }

    /// The timer went off (it may be late: deadlines are absolute).
    pub fn timeout(&mut self, now: f64) {
        self.input(now, ClientInput::Timeout);
    }

    /// Sends (or queues) a message: `{"id": "…"}` when sent, `{"id": "…", "queued": true}`
    /// when it waits for the connection, `{"error": "…"}` when refused.
    pub fn send(
        &mut self,
        now: f64,
        message_type: &str,
        payload: &str,
        conversation_id: Option<String>,
        correlation_id: Option<String>,
    ) -> String {
        // What the core does with a message: sent at once only while active.
        let queued = self.client.state() != ClientState::Active;
        let mut out = ObjectWriter::default();
        match self.try_send(now, message_type, payload, conversation_id, correlation_id) {
            Ok(id) => out.str("id", id.as_str()).bool("queued", queued),
            Err(error) => out.str("error", error),
        };
        out.finish()
    }

    /// Subscribes to types matching `pattern` (`control.*`, `data.widget.*`, `*`, an exact
    /// type): the subscription's number, or -1 for a bad pattern.
    pub fn subscribe(&mut self, pattern: &str, once: bool) -> f64 {
        let bus = self.client.bus_mut();
        let id = if once { bus.subscribe_once(pattern) } else { bus.subscribe(pattern) };
        id.map_or(-1.0, |SubscriptionId(n)| n as f64)
    }

    pub fn unsubscribe(&mut self, id: f64) -> bool {
        self.client.bus_mut().unsubscribe(SubscriptionId(id as u64))
    }

    /// The subscribers of one of the application's own messages of `message_type`, in the order
    /// their handlers run (once-subscriptions are removed): the bus's local publish.
    pub fn publish(&mut self, message_type: &str) -> Vec<u32> {
        let subscribers = self.client.bus_mut().publish(message_type);
        subscribers.into_iter().map(|SubscriptionId(n)| n as u32).collect()
    }

    /// When the core next wants [`Core::timeout`] (monotonic ms), or NaN for never.
    pub fn deadline(&self) -> f64 {
        self.client.poll_timeout().map_or(f64::NAN, |(at, _)| at.as_millis() as f64)
    }

    /// The next output as JSON (`{"t": kind, …}`), or `undefined` when there is none.
    pub fn poll(&mut self) -> Option<String> {
        let output = self.client.poll_output()?;
        Some(self.encode(output))
    }

    /// A snapshot for a status display, as JSON.
    pub fn status(&self) -> String {
        let ClientStatus {
            state,
            attempt,
            next_retry_at,
            last_close_code,
            last_close_reason,
            resumed,
            connection_id,
            last_sequence,
            queued,
            round_trip_ms,
            online,
        } = self.client.status();
        let mut out = ObjectWriter::default();
        out.str("state", state.as_str()).u64("attempt", u64::from(attempt));
        opt_u64(&mut out, "nextRetryAt", next_retry_at.map(|at| self.wall(at)));
        opt_u64(&mut out, "lastCloseCode", last_close_code.map(|c| u64::from(c.0)));
        out.str_or_null("lastCloseReason", last_close_reason.as_deref())
            .bool("resumed", resumed)
            .str_or_null("connectionId", connection_id.as_ref().map(Id::as_str))
            .u64("lastSequence", last_sequence)
            .u64("queued", queued as u64);
        opt_u64(&mut out, "roundTripMs", round_trip_ms);
        out.bool("online", online);
        out.finish()
    }
}

impl Core {
    fn try_send(
        &mut self,
        now: f64,
        message_type: &str,
        payload: &str,
        conversation_id: Option<String>,
        correlation_id: Option<String>,
    ) -> Result<Id, &'static str> {
        let id = |text: Option<String>| match text {
            Some(text) => Id::new(&text).map(Some).map_err(|_| "an id is 1 to 128 bytes"),
            None => Ok(None),
        };
        let message = OutgoingMessage {
            message_type: MessageType::new(message_type)
                .map_err(|_| "not a message type ({plane}.{category}.{action})")?,
            payload: Payload::from_json(payload)
                .map_err(|_| "the payload must be a JSON object")?,
            conversation_id: id(conversation_id)?,
            correlation_id: id(correlation_id)?,
        };
        self.client.send(instant(now), message).map_err(|e| e.as_str())
    }

    /// The wall-clock time (ms since the epoch) of the core's instant `at`.
    fn wall(&self, at: Instant) -> u64 {
        let elapsed = at.as_millis().saturating_sub(self.origin);
        (self.origin_unix_ms.max(0.0) as u64).saturating_add(elapsed)
    }

    fn encode(&self, output: ClientOutput) -> String {
        let mut out = ObjectWriter::default();
        match output {
            ClientOutput::OpenSocket { attempt, url } => {
                out.str("t", "open").u64("attempt", attempt.0).str("url", &url);
            }
            ClientOutput::SendFrame { attempt, frame } => {
                let frame = std::str::from_utf8(&frame).unwrap_or_default();
                out.str("t", "send").u64("attempt", attempt.0).str("frame", frame);
            }
            ClientOutput::CloseSocket { attempt, code, reason } => {
                out.str("t", "close")
                    .u64("attempt", attempt.0)
                    .u64("code", u64::from(code.0))
                    .str("reason", &reason);
            }
            ClientOutput::RequestToken => {
                out.str("t", "token");
            }
            ClientOutput::Persist(state) => {
                out.str("t", "persist")
                    .str_or_null("connectionId", state.connection_id.as_ref().map(Id::as_str))
                    .u64("lastSequence", state.last_sequence)
                    .str_or_null("lastMessageId", state.last_message_id.as_ref().map(Id::as_str));
                let mut positions = String::from("[");
                for (i, position) in state.positions.iter().enumerate() {
                    if i > 0 {
                        positions.push(',');
                    }
                    positions.push_str(&position.to_json());
                }
                positions.push(']');
                out.raw("positions", &positions);
            }
            ClientOutput::Event(event) => self.event(&mut out, event),
        }
        out.finish()
    }

    fn event(&self, out: &mut ObjectWriter, event: ClientEvent) {
        match event {
            ClientEvent::Connected { connection_id, resumed, replayed } => {
                out.str("t", "connected")
                    .str("connectionId", connection_id.as_str())
                    .bool("resumed", resumed)
                    .u64("replayed", replayed);
            }
            ClientEvent::Disconnected { code, reason } => {
                out.str("t", "disconnected");
                opt_u64(out, "code", code.map(|c| u64::from(c.0)));
                out.str("reason", &reason);
            }
            ClientEvent::ServerError(error) => {
                out.str("t", "error").raw("error", &error.to_json());
            }
            ClientEvent::LocalError(message) => {
                out.str("t", "error").str("message", &message);
            }
            ClientEvent::Message { message, subscribers } => {
                let mut ids = Vec::from(*b"[");
                for (i, id) in subscribers.iter().enumerate() {
                    if i > 0 {
                        ids.push(b',');
                    }
                    json::write_u64(&mut ids, id.0);
                }
                ids.push(b']');
                out.str("t", "message")
                    .str("frame", std::str::from_utf8(&message.frame).unwrap_or_default())
                    .raw("subscribers", std::str::from_utf8(&ids).unwrap_or("[]"));
            }
            ClientEvent::StateChange(change) => self.state_change(out, change),
            ClientEvent::Gap { reason, channel } => {
                out.str("t", "gap").str("reason", reason).opt_str("channel", channel.as_deref());
            }
            ClientEvent::SendFailed { id, error } => {
                out.str("t", "sendFailed").str("id", id.as_str()).str("error", error.as_str());
            }
        }
    }

    fn state_change(&self, out: &mut ObjectWriter, change: StateChange) {
        out.str("t", "statechange")
            .str("previousState", change.previous_state.as_str())
            .str("newState", change.new_state.as_str())
            .str("reason", change.reason);
        opt_u64(out, "code", change.code.map(|c| u64::from(c.0)));
        out.u64("attempt", u64::from(change.attempt));
        opt_u64(out, "nextRetryAt", change.next_retry_at.map(|at| self.wall(at)));
        out.bool("willReconnect", change.will_reconnect);
    }
}

/// A number field, `null` when `None`.
fn opt_u64(out: &mut ObjectWriter, key: &str, value: Option<u64>) {
    match value {
        Some(value) => out.u64(key, value),
        None => out.raw(key, "null"),
    };
}
