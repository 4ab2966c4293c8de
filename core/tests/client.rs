//! The client state machine driven by hand: the Phase 1 plan's WebSocketClient and
//! ReconnectionManager cases by name, and the behaviour around them. (End-to-end runs against
//! the real hub are in the tests crate.)

use bytes::Bytes;
use std::time::Duration;
use switchboard_core::client::{
    AttemptId, BackoffConfig, Client, ClientConfig, ClientEvent, ClientInput, ClientOutput,
    ClientState, Jitter, OutgoingMessage, ResumeState, SendError, StateChange, TokenSource,
};
use switchboard_core::protocol::{
    ChannelReset, CloseCode, ConnectionEstablished, ConnectionResumed, Envelope, Heartbeat, Id,
    MessageType, Payload, Position, Source, SystemMessage, Timestamp, types,
};
use switchboard_core::time::Instant;

const WALL: i64 = 1_766_053_800_000;

struct Harness {
    client: Client,
    now: Instant,
    outputs: Vec<ClientOutput>,
    attempt: Option<AttemptId>,
}

impl Harness {
    fn new(config: ClientConfig) -> Self {
        Harness {
            client: Client::new(config, 42, Instant::ZERO, WALL),
            now: Instant::ZERO,
            outputs: Vec::new(),
            attempt: None,
        }
    }

    fn default() -> Self {
        let mut config = ClientConfig::new("ws://127.0.0.1:8080/ws");
        config.token = TokenSource::Static("tok en/+".to_owned());
        config.conversation_id = Some("conv-1".to_owned());
        Harness::new(config)
    }

    fn input(&mut self, input: ClientInput) {
        self.client.handle_input(self.now, input);
        while let Some(output) = self.client.poll_output() {
            if let ClientOutput::OpenSocket { attempt, .. } = &output {
                self.attempt = Some(*attempt);
            }
            self.outputs.push(output);
        }
    }

    /// Advances the clock, firing every deadline on the way.
    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        while let Some((at, _)) = self.client.poll_timeout() {
            if at > until {
                break;
            }
            self.now = self.now.max(at);
            self.input(ClientInput::Timeout);
            let next = self.client.poll_timeout();
            assert!(
                next.is_none_or(|(t, _)| t > self.now),
                "deadline {next:?} did not advance past {:?}",
                self.now
            );
        }
        self.now = until;
    }

    fn take(&mut self) -> Vec<ClientOutput> {
        std::mem::take(&mut self.outputs)
    }

    fn opened(&self) -> Vec<(AttemptId, String)> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                ClientOutput::OpenSocket { attempt, url } => Some((*attempt, url.clone())),
                _ => None,
            })
            .collect()
    }

    fn last_attempt(&self) -> AttemptId {
        self.attempt.expect("a socket was opened")
    }

    fn sent(&self) -> Vec<Envelope> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                ClientOutput::SendFrame { frame, .. } => {
                    Some(Envelope::parse(frame, usize::MAX).unwrap())
                }
                _ => None,
            })
            .collect()
    }

    fn events(&self) -> Vec<ClientEvent> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                ClientOutput::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    fn server(&mut self, message: SystemMessage) {
        let envelope = Envelope::create(
            Source::Server,
            message.message_type(),
            message.to_payload(),
            Timestamp::UNIX_EPOCH,
            1,
        );
        let attempt = self.last_attempt();
        self.input(ClientInput::Frame { attempt, text: Bytes::from(envelope.encode()) });
    }

    fn server_data(&mut self, n: u64, sequence: u64) {
        let envelope = Envelope::create(
            Source::Server,
            MessageType::new("data.message.created").unwrap(),
            Payload::from_json(&format!(r#"{{"n":{n}}}"#)).unwrap(),
            Timestamp::UNIX_EPOCH,
            u128::from(n),
        )
        .with_sequence(sequence);
        let attempt = self.last_attempt();
        self.input(ClientInput::Frame { attempt, text: Bytes::from(envelope.encode()) });
    }

    fn establish(&mut self, connection_id: &str) {
        let attempt = self.last_attempt();
        self.input(ClientInput::SocketOpened { attempt });
        self.server(SystemMessage::ConnectionEstablished(ConnectionEstablished {
            connection_id: Id::new(connection_id).unwrap(),
            conversation_id: "conv-1".into(),
            user_id: "alice".into(),
            definition_id: None,
            resuming: false,
            server_time: Timestamp::UNIX_EPOCH,
            heartbeat_interval_ms: Some(30_000),
            resume_window_ms: Some(120_000),
        }));
    }

    fn drop_socket(&mut self, code: Option<CloseCode>) {
        let attempt = self.last_attempt();
        self.input(ClientInput::SocketClosed { attempt, code, reason: String::new() });
    }

    /// The most recent state change.
    fn last_change(&self) -> Option<StateChange> {
        self.events().into_iter().rev().find_map(|e| match e {
            ClientEvent::StateChange(c) => Some(c),
            _ => None,
        })
    }

    fn received(&self) -> Vec<u64> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                ClientEvent::Message { message, .. } => {
                    let envelope = message.envelope().ok()?;
                    envelope.payload.parse::<serde_json::Value>().ok()?["n"].as_u64()
                }
                _ => None,
            })
            .collect()
    }

    fn gaps(&self) -> usize {
        self.events().iter().filter(|e| matches!(e, ClientEvent::Gap { .. })).count()
    }
}

fn message(ty: &str, payload: &str) -> OutgoingMessage {
    OutgoingMessage {
        message_type: MessageType::new(ty).unwrap(),
        payload: Payload::from_json(payload).unwrap(),
        conversation_id: None,
        correlation_id: None,
    }
}

#[test]
fn test_connect_establishes_connection() {
    let mut h = Harness::default();
    assert_eq!(h.client.state(), ClientState::Disconnected);
    h.input(ClientInput::Connect);
    assert_eq!(h.client.state(), ClientState::Connecting);
    assert_eq!(h.opened().len(), 1);
    h.establish("01ABC");
    assert_eq!(h.client.state(), ClientState::Active);
    assert_eq!(h.client.connection_id().map(Id::as_str), Some("01ABC"));
    assert!(h.events().iter().any(|e| matches!(e, ClientEvent::Connected { resumed: false, .. })));
}

#[test]
fn test_connect_includes_auth_token() {
    let mut h = Harness::default();
    h.input(ClientInput::Connect);
    let (_, url) = &h.opened()[0];
    assert_eq!(url, "ws://127.0.0.1:8080/ws?token=tok%20en%2F%2B&conversation_id=conv-1");
    // The token never shows in debug output or events.
    let shown = format!("{:?}", h.outputs);
    assert!(!shown.contains("tok"), "{shown}");
}

#[test]
fn test_send_serializes_message() {
    let mut h = Harness::default();
    h.input(ClientInput::Connect);
    h.establish("01ABC");
    h.take();
    let id = h.client.send(h.now, message("data.message.send", r#"{"text":"hi"}"#)).unwrap();
    while let Some(o) = h.client.poll_output() {
        h.outputs.push(o);
    }
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].id, id);
    assert_eq!(sent[0].message_type, "data.message.send");
    assert_eq!(sent[0].source, Source::Client);
    assert_eq!(sent[0].conversation_id.as_ref().map(Id::as_str), Some("conv-1"));
    assert_eq!(sent[0].payload.as_str(), r#"{"text":"hi"}"#);
    assert_eq!(sent[0].timestamp, Timestamp::from_unix_ms(WALL).unwrap());
}

#[test]
fn test_auto_responds_to_ping() {
    let mut h = Harness::default();
    h.input(ClientInput::Connect);
    h.establish("01ABC");
    h.take();
    let ping = Envelope::create(
        Source::Server,
        MessageType::new(types::PING).unwrap(),
        SystemMessage::Ping(Heartbeat { timestamp: Timestamp::UNIX_EPOCH }).to_payload(),
        Timestamp::UNIX_EPOCH,
        0x5eed,
    );
    let attempt = h.last_attempt();
    h.input(ClientInput::Frame { attempt, text: Bytes::from(ping.encode()) });
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].message_type, types::PONG);
    assert_eq!(sent[0].correlation_id, Some(ping.id), "the pong names the ping it answers");
}

#[test]
fn test_disconnect_closes_socket() {
    let mut h = Harness::default();
    h.input(ClientInput::Connect);
    h.establish("01ABC");
    h.client.send(h.now, message("data.x.y", "{}")).unwrap();
    h.input(ClientInput::Disconnect { code: CloseCode::NORMAL, reason: "bye".into() });
    assert!(
        h.outputs
            .iter()
            .any(|o| matches!(o, ClientOutput::CloseSocket { code: CloseCode::NORMAL, .. }))
    );
    assert_eq!(h.client.state(), ClientState::Closed);
    assert_eq!(h.client.connection_id(), None, "a deliberate close ends the session");
    assert_eq!(h.client.send(h.now, message("data.x.y", "{}")), Err(SendError::Closed));
    h.advance(Duration::from_secs(600));
    assert_eq!(h.opened().len(), 1, "no reconnect after disconnect");
    // A token or a socket event arriving afterwards changes nothing.
    let attempt = h.last_attempt();
    h.input(ClientInput::SocketClosed { attempt, code: None, reason: String::new() });
    h.input(ClientInput::Online);
    assert_eq!(h.client.state(), ClientState::Closed);
}

#[test]
fn test_emits_connection_events() {
    let mut h = Harness::default();
    h.input(ClientInput::Connect);
    h.establish("01ABC");
    h.drop_socket(Some(CloseCode::GOING_AWAY));
    let states: Vec<(ClientState, ClientState)> = h
        .events()
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::StateChange(c) => Some((c.previous_state, c.new_state)),
            _ => None,
        })
        .collect();
    use ClientState::*;
    assert_eq!(
        states,
        [
            (Disconnected, Connecting),
            (Connecting, Connected),
            (Connected, Active),
            (Active, Reconnecting)
        ]
    );
    let last = h.last_change();
    let last = last.expect("a state change");
    assert!(last.will_reconnect);
    assert_eq!(last.code, Some(CloseCode::GOING_AWAY));
    assert_eq!(last.attempt, 1);
    let retry = last.next_retry_at.expect("a countdown target");
    assert!(retry <= h.now + Duration::from_secs(1));
    assert!(
        h.events().iter().any(|e| matches!(
            e,
            ClientEvent::Disconnected { code: Some(CloseCode::GOING_AWAY), .. }
        ))
    );
}

fn no_jitter() -> Harness {
    let mut config = ClientConfig::new("ws://h/ws");
    config.backoff.jitter = Jitter::None;
    Harness::new(config)
}

#[test]
fn test_reconnection_after_disconnect() {
    let mut h = no_jitter();
    h.input(ClientInput::Connect);
    h.establish("01ABC");
    h.drop_socket(None);
    assert_eq!(h.client.state(), ClientState::Reconnecting);
    h.advance(Duration::from_millis(999));
    assert_eq!(h.opened().len(), 1);
    h.advance(Duration::from_millis(1));
    assert_eq!(h.opened().len(), 2);
    assert_eq!(h.client.state(), ClientState::Connecting);
}

#[test]
fn test_exponential_backoff() {
    let mut h = no_jitter();
    h.input(ClientInput::Connect);
    h.establish("01ABC");
    h.drop_socket(None);
    let mut opened_at = Vec::new();
    for _ in 0..7 {
        let before = h.opened().len();
        while h.opened().len() == before {
            h.advance(Duration::from_millis(100));
        }
        opened_at.push(h.now.as_millis());
        // The attempt fails at once (connection refused).
        h.drop_socket(None);
    }
    let gaps: Vec<u64> = opened_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(opened_at[0], 1000);
    assert_eq!(gaps, [2000, 4000, 8000, 16000, 30000, 30000]);
}

#[test]
fn test_max_attempts_exceeded() {
    let mut config = ClientConfig::new("ws://h/ws");
    config.backoff =
        BackoffConfig { max_attempts: 3, jitter: Jitter::None, ..BackoffConfig::default() };
    let mut h = Harness::new(config);
    h.input(ClientInput::Connect);
    h.establish("01ABC");
    for _ in 0..4 {
        h.drop_socket(None);
        h.advance(Duration::from_secs(60));
    }
    assert_eq!(h.opened().len(), 4, "the first socket and three attempts");
    assert_eq!(h.client.state(), ClientState::Closed);
    let last = h.last_change();
    assert!(!last.expect("a state change").will_reconnect);
    // `online` starts a fresh series.
    h.input(ClientInput::Online);
    assert_eq!(h.opened().len(), 5);
    assert_eq!(h.client.attempt(), 0);
}

#[test]
fn test_resume_with_previous_connection_id() {
    let mut h = Harness::default();
    h.input(ClientInput::Connect);
    h.establish("01OLD");
    h.server_data(1, 1);
    h.server_data(2, 2);
    h.drop_socket(None);
    h.advance(Duration::from_secs(2));
    h.take();
    h.establish("01NEW");
    let sent = h.sent();
    assert_eq!(sent.len(), 1, "the resume is the first message");
    assert_eq!(sent[0].message_type, types::CONNECTION_RESUME);
    let SystemMessage::ConnectionResume(resume) = SystemMessage::from_envelope(&sent[0]).unwrap()
    else {
        panic!()
    };
    assert_eq!(resume.connection_id.as_ref().map(Id::as_str), Some("01OLD"));
    assert_eq!(resume.last_sequence, Some(2));
    assert_eq!(resume.conversation_id, "conv-1");
    assert!(resume.last_message_id.is_some());
    assert_eq!(h.client.state(), ClientState::Connected, "active only after the answer");
}

#[test]
fn test_message_replay_after_resume() {
    let mut h = Harness::default();
    h.input(ClientInput::Connect);
    h.establish("01OLD");
    h.server_data(1, 1);
    h.drop_socket(None);
    h.advance(Duration::from_secs(2));
    // Queued while away: sent after the replay.
    h.client.send(h.now, message("data.message.send", r#"{"text":"queued"}"#)).unwrap();
    h.establish("01NEW");
    // A message of the temporary session arrives before the answer: held.
    h.server_data(2, 1);
    h.take();
    h.server(SystemMessage::ConnectionResumed(ConnectionResumed {
        conversation_id: "conv-1".into(),
        resumed_from_message_id: None,
        current_item_index: None,
        missed_messages: 2,
        state_valid: true,
        connection_id: Some(Id::new("01OLD").unwrap()),
    }));
    let queued: Vec<_> = h.sent().into_iter().filter(|e| !e.message_type.is_system()).collect();
    assert_eq!(queued.len(), 1, "the queue is flushed once active");
    h.server_data(2, 2);
    h.server_data(3, 3);
    h.server_data(3, 3);
    assert_eq!(h.received(), [2, 3], "replayed once each; the held copy and the duplicate dropped");
    assert_eq!(h.gaps(), 0);
    assert!(
        h.events()
            .iter()
            .any(|e| matches!(e, ClientEvent::Connected { resumed: true, replayed: 2, .. }))
    );
    assert_eq!(h.client.resume_state().last_sequence, 3);
}

#[test]
fn a_refused_resume_is_a_gap_and_the_new_session_is_adopted() {
    let mut h = Harness::default();
    h.input(ClientInput::Connect);
    h.establish("01OLD");
    h.server_data(1, 1);
    h.drop_socket(None);
    h.advance(Duration::from_secs(2));
    h.establish("01NEW");
    h.server_data(7, 1);
    h.take();
    h.server(SystemMessage::ConnectionResumed(ConnectionResumed {
        conversation_id: "conv-1".into(),
        resumed_from_message_id: None,
        current_item_index: None,
        missed_messages: 0,
        state_valid: false,
        connection_id: Some(Id::new("01NEW").unwrap()),
    }));
    assert_eq!(h.gaps(), 1);
    assert_eq!(h.received(), [7], "the held message of the new session is delivered");
    assert_eq!(h.client.connection_id().map(Id::as_str), Some("01NEW"));
    h.server_data(8, 3);
    assert_eq!(h.gaps(), 2, "a sequence jump is a gap too");
}

#[test]
fn restored_state_resumes_after_a_reload() {
    let mut h = Harness::default();
    h.client.restore(ResumeState {
        connection_id: Some(Id::new("01PAGE").unwrap()),
        last_sequence: 41,
        last_message_id: None,
        positions: Vec::new(),
    });
    h.input(ClientInput::Connect);
    h.establish("01NEW");
    let SystemMessage::ConnectionResume(resume) =
        SystemMessage::from_envelope(&h.sent()[0]).unwrap()
    else {
        panic!()
    };
    assert_eq!(resume.last_sequence, Some(41));
}

#[test]
fn close_codes_decide_the_next_step() {
    for (code, state) in [
        (CloseCode::AUTH_FAILED, ClientState::Closed),
        (CloseCode::VERSION_MISMATCH, ClientState::Closed),
        (CloseCode::NORMAL, ClientState::Closed),
        (CloseCode::SERVICE_RESTART, ClientState::Reconnecting),
        (CloseCode::HEARTBEAT_TIMEOUT, ClientState::Reconnecting),
        (CloseCode::TOKEN_EXPIRED, ClientState::Closed),
    ] {
        let mut h = Harness::default();
        h.input(ClientInput::Connect);
        h.establish("01A");
        h.drop_socket(Some(code));
        assert_eq!(h.client.state(), state, "{code}");
    }
}

#[test]
fn a_shutdown_hint_sets_the_first_delay() {
    let mut h = no_jitter();
    h.input(ClientInput::Connect);
    h.establish("01A");
    h.server(SystemMessage::ConnectionClose(switchboard_core::protocol::ConnectionClose {
        reason: switchboard_core::protocol::CloseReason::ServerShutdown,
        code: 1012,
        retry_after_ms: Some(4321),
    }));
    h.drop_socket(Some(CloseCode::SERVICE_RESTART));
    h.advance(Duration::from_millis(4320));
    assert_eq!(h.opened().len(), 1);
    h.advance(Duration::from_millis(1));
    assert_eq!(h.opened().len(), 2);
}

/// Found by the client fuzz target: a retry due at once (a hint of 0 ms), scheduled by a
/// timeout (the socket never said `established`), is made in that same timeout, not left as a
/// deadline that is already past.
#[test]
fn a_retry_due_at_once_is_made_in_the_timeout_that_scheduled_it() {
    let mut h = no_jitter();
    h.input(ClientInput::Connect);
    let attempt = h.last_attempt();
    h.input(ClientInput::SocketOpened { attempt });
    h.server(SystemMessage::ConnectionClose(switchboard_core::protocol::ConnectionClose {
        reason: switchboard_core::protocol::CloseReason::ServerShutdown,
        code: 1012,
        retry_after_ms: Some(0),
    }));
    // The establish timeout (10 s) fires; `advance` checks every deadline moves past now.
    h.advance(Duration::from_secs(10));
    assert_eq!(h.opened().len(), 2, "the retry was made in the same timeout");
}

/// Found by the client fuzz target: a second `established` on one socket (a server bug) is
/// ignored, rather than starting a resume of the session the socket already has.
#[test]
fn a_second_established_on_a_socket_is_ignored() {
    let mut h = Harness::default();
    h.input(ClientInput::Connect);
    h.establish("01A");
    h.server_data(1, 1);
    let before = h.sent().len();
    h.server(SystemMessage::ConnectionEstablished(ConnectionEstablished {
        connection_id: Id::new("01B").unwrap(),
        conversation_id: "conv-1".into(),
        user_id: "alice".into(),
        definition_id: None,
        resuming: false,
        server_time: Timestamp::UNIX_EPOCH,
        heartbeat_interval_ms: Some(30_000),
        resume_window_ms: Some(120_000),
    }));
    assert_eq!(h.sent().len(), before, "no resume asked for");
    h.server_data(2, 2);
    assert_eq!(h.received(), vec![1, 2], "messages still delivered at once");
    assert_eq!(h.client.connection_id().map(Id::as_str), Some("01A"));
}

#[test]
fn application_tokens_are_requested_once_and_refreshed_in_band() {
    let mut config = ClientConfig::new("ws://h/ws");
    config.token = TokenSource::Application;
    let mut h = Harness::new(config);
    h.input(ClientInput::Connect);
    h.input(ClientInput::Connect);
    let requests =
        |h: &Harness| h.outputs.iter().filter(|o| matches!(o, ClientOutput::RequestToken)).count();
    assert_eq!(requests(&h), 1);
    assert!(h.opened().is_empty(), "no socket before the token");
    h.input(ClientInput::Token { token: "t1".into(), expires_at_unix_ms: Some(WALL + 300_000) });
    assert!(h.opened()[0].1.contains("token=t1"));
    h.establish("01A");
    for _ in 0..9 {
        h.advance(Duration::from_secs(29));
        h.server(SystemMessage::Ping(Heartbeat { timestamp: Timestamp::UNIX_EPOCH }));
    }
    h.advance(Duration::from_secs(8));
    assert_eq!(requests(&h), 1);
    h.advance(Duration::from_secs(1));
    assert_eq!(requests(&h), 2, "asked 30 s before expiry");
    h.take();
    h.input(ClientInput::Token { token: "t2".into(), expires_at_unix_ms: Some(WALL + 600_000) });
    let sent = h.sent();
    assert_eq!(sent[0].message_type, types::AUTH_REFRESH);
}

#[test]
fn an_expired_token_close_refreshes_once_then_gives_up() {
    let mut config = ClientConfig::new("ws://h/ws");
    config.token = TokenSource::Application;
    let mut h = Harness::new(config);
    h.input(ClientInput::Connect);
    h.input(ClientInput::Token { token: "t1".into(), expires_at_unix_ms: None });
    h.establish("01A");
    h.drop_socket(Some(CloseCode::TOKEN_EXPIRED));
    assert!(matches!(
        h.outputs.last(),
        Some(ClientOutput::RequestToken) | Some(ClientOutput::Event(_))
    ));
    h.input(ClientInput::Token { token: "t2".into(), expires_at_unix_ms: None });
    assert_eq!(h.opened().len(), 2);
    h.drop_socket(Some(CloseCode::TOKEN_EXPIRED));
    assert_eq!(h.client.state(), ClientState::Closed, "a fresh token rejected again closes");
}

#[test]
fn silence_kills_the_socket_but_a_late_timer_only_probes() {
    let mut h = Harness::default();
    h.input(ClientInput::Connect);
    h.establish("01A");
    // On time: 60 s of silence (2 × 30 s) closes.
    h.advance(Duration::from_secs(60));
    assert_eq!(h.client.state(), ClientState::Reconnecting);

    let mut h = Harness::default();
    h.input(ClientInput::Connect);
    h.establish("01A");
    h.take();
    // The tab was frozen: the timer fires 5 minutes late. A probe, not a kill.
    h.now = h.now + Duration::from_secs(300);
    h.input(ClientInput::Timeout);
    assert_eq!(h.client.state(), ClientState::Active);
    assert_eq!(h.sent()[0].message_type, types::PING);
    // The frames that were waiting arrive: alive.
    h.server(SystemMessage::Pong(Heartbeat { timestamp: Timestamp::UNIX_EPOCH }));
    h.advance(Duration::from_secs(10));
    assert_eq!(h.client.state(), ClientState::Active);
    // Really dead: the probe goes unanswered.
    h.now = h.now + Duration::from_secs(300);
    h.input(ClientInput::Timeout);
    h.advance(Duration::from_secs(3));
    assert_eq!(h.client.state(), ClientState::Reconnecting);
}

#[test]
fn online_and_visible_probe_an_active_socket() {
    let mut h = Harness::default();
    h.input(ClientInput::Connect);
    h.establish("01A");
    h.take();
    h.input(ClientInput::Visible);
    assert_eq!(h.sent()[0].message_type, types::PING);
    h.advance(Duration::from_secs(3));
    assert_eq!(
        h.client.state(),
        ClientState::Reconnecting,
        "a half-open socket found within seconds"
    );
}

#[test]
fn offline_pauses_retries_until_online() {
    let mut h = no_jitter();
    h.input(ClientInput::Connect);
    h.establish("01A");
    h.input(ClientInput::Offline);
    h.drop_socket(None);
    assert_eq!(h.last_change().map(|c| c.reason), Some("offline"), "why it waits");
    assert_eq!(h.client.status().next_retry_at, None);
    h.advance(Duration::from_secs(600));
    assert_eq!(h.opened().len(), 1);
    h.input(ClientInput::Online);
    assert_eq!(h.opened().len(), 2);
}

/// The application's token callback failing is a failed attempt: backed off, asked again when
/// due, given up after the attempt limit. Never a client stuck in `connecting`.
#[test]
fn a_failing_token_callback_backs_off_and_gives_up() {
    let mut config = ClientConfig::new("ws://h/ws");
    config.token = TokenSource::Application;
    config.backoff =
        BackoffConfig { jitter: Jitter::None, max_attempts: 3, ..BackoffConfig::default() };
    let mut h = Harness::new(config);
    h.input(ClientInput::Connect);
    let requests =
        |h: &Harness| h.outputs.iter().filter(|o| matches!(o, ClientOutput::RequestToken)).count();
    assert_eq!(requests(&h), 1);
    h.input(ClientInput::TokenFailed);
    let change = h.last_change().unwrap();
    assert_eq!((change.new_state, change.reason), (ClientState::Reconnecting, "token_unavailable"));
    assert!(change.next_retry_at.is_some());
    h.advance(Duration::from_secs(60));
    assert_eq!(requests(&h), 2, "asked again once the backoff passed");
    // The first attempt and three retries (max_attempts) fail; then the client gives up.
    for _ in 0..2 {
        h.input(ClientInput::TokenFailed);
        h.advance(Duration::from_secs(60));
    }
    assert_eq!(requests(&h), 4);
    h.input(ClientInput::TokenFailed);
    h.advance(Duration::from_secs(600));
    assert_eq!(requests(&h), 4);
    assert_eq!(h.client.state(), ClientState::Closed);
    assert_eq!(h.last_change().unwrap().reason, "max_attempts");
    assert_eq!(h.opened().len(), 0);
    // A later token does not open anything by itself; reconnect-now starts again.
    h.input(ClientInput::ReconnectNow);
    h.input(ClientInput::Token { token: "t".into(), expires_at_unix_ms: None });
    assert_eq!(h.opened().len(), 1);
}

#[test]
fn the_send_queue_is_bounded_and_expires() {
    let mut config = ClientConfig::new("ws://h/ws");
    config.queue_max_messages = 2;
    config.queue_ttl = Duration::from_secs(5);
    let mut h = Harness::new(config);
    h.input(ClientInput::Connect);
    let a = h.client.send(h.now, message("data.x.y", r#"{"n":1}"#)).unwrap();
    h.client.send(h.now, message("data.x.y", r#"{"n":2}"#)).unwrap();
    assert_eq!(
        h.client.send(h.now, message("data.x.y", r#"{"n":3}"#)),
        Err(SendError::QueueFull("messages"))
    );
    h.advance(Duration::from_secs(6));
    assert!(h.events().iter().any(
        |e| matches!(e, ClientEvent::SendFailed { id, error: SendError::Expired } if *id == a)
    ));
}

#[test]
fn events_of_an_old_socket_are_ignored_and_there_is_one_socket() {
    let mut h = no_jitter();
    h.input(ClientInput::Connect);
    let first = h.last_attempt();
    h.advance(Duration::from_secs(10)); // connect timeout: the first attempt is abandoned
    h.advance(Duration::from_secs(1));
    let second = h.last_attempt();
    assert_ne!(first, second);
    assert!(
        h.outputs
            .iter()
            .any(|o| matches!(o, ClientOutput::CloseSocket { attempt, .. } if *attempt == first))
    );
    h.input(ClientInput::SocketOpened { attempt: first });
    assert_eq!(h.client.state(), ClientState::Connecting, "the old socket's open is ignored");
    h.input(ClientInput::ReconnectNow);
    assert_eq!(h.last_attempt(), second, "no second socket while one is opening");
}

#[test]
fn the_bus_names_subscribers_in_order() {
    let mut h = Harness::default();
    let all = h.client.bus_mut().subscribe("*").unwrap();
    let exact = h.client.bus_mut().subscribe("data.message.created").unwrap();
    h.input(ClientInput::Connect);
    h.establish("01A");
    h.server_data(1, 1);
    let subscribers = h.events().into_iter().find_map(|e| match e {
        ClientEvent::Message { subscribers, .. } => Some(subscribers),
        _ => None,
    });
    assert_eq!(subscribers, Some(vec![exact, all]));
}

#[test]
fn a_token_that_is_already_close_to_expiry_is_not_asked_for_in_a_loop() {
    let mut config = ClientConfig::new("ws://h/ws");
    config.token = TokenSource::Application;
    let mut h = Harness::new(config);
    h.input(ClientInput::Connect);
    // The application hands out a token with 10 s left, inside the 30 s lead.
    h.input(ClientInput::Token { token: "t1".into(), expires_at_unix_ms: Some(WALL + 10_000) });
    h.establish("01A");
    let requests =
        |h: &Harness| h.outputs.iter().filter(|o| matches!(o, ClientOutput::RequestToken)).count();
    assert_eq!(requests(&h), 1);
    h.advance(Duration::from_millis(4_999));
    assert_eq!(requests(&h), 1, "not before 5 s");
    h.advance(Duration::from_millis(1));
    assert_eq!(requests(&h), 2);
    // The same token again: no in-band refresh is sent for it, and no new request at once.
    h.take();
    h.input(ClientInput::Token { token: "t1".into(), expires_at_unix_ms: Some(WALL + 10_000) });
    assert!(h.sent().is_empty());
    assert_eq!(requests(&h), 0);
    assert!(h.client.poll_timeout().is_some_and(|(at, _)| at > h.now));
}

#[test]
fn debug_output_of_inputs_and_outputs_is_complete_and_hides_tokens() {
    let message = message("data.x.y", "{}");
    let inputs = [
        ClientInput::Connect,
        ClientInput::Disconnect { code: CloseCode::NORMAL, reason: "bye".into() },
        ClientInput::Send(message),
        ClientInput::SocketOpened { attempt: AttemptId(1) },
        ClientInput::Frame {
            attempt: AttemptId(1),
            text: Bytes::from_static(b"{\"token\":\"secret\"}"),
        },
        ClientInput::SocketClosed { attempt: AttemptId(1), code: None, reason: String::new() },
        ClientInput::Token { token: "secret".into(), expires_at_unix_ms: None },
        ClientInput::Online,
        ClientInput::Offline,
        ClientInput::Visible,
        ClientInput::Hidden,
        ClientInput::ReconnectNow,
        ClientInput::Timeout,
    ];
    let mut names = std::collections::BTreeSet::new();
    for input in &inputs {
        let shown = format!("{input:?}");
        assert!(!shown.contains("secret"), "{shown}");
        names.insert(shown.split([' ', '(', '{']).next().unwrap().to_owned());
    }
    assert_eq!(names.len(), inputs.len(), "every variant names itself");
    let outputs = [
        ClientOutput::OpenSocket { attempt: AttemptId(1), url: "ws://h/ws?token=secret".into() },
        ClientOutput::SendFrame { attempt: AttemptId(1), frame: Bytes::from_static(b"secret") },
        ClientOutput::CloseSocket {
            attempt: AttemptId(1),
            code: CloseCode::NORMAL,
            reason: "r".into(),
        },
        ClientOutput::RequestToken,
        ClientOutput::Persist(ResumeState {
            connection_id: None,
            last_sequence: 0,
            last_message_id: None,
            positions: Vec::new(),
        }),
        ClientOutput::Event(ClientEvent::LocalError("x".into())),
    ];
    for output in &outputs {
        assert!(!format!("{output:?}").contains("secret"));
    }
    assert!(!format!("{:?}", TokenSource::Static("secret".into())).contains("secret"));
    assert_eq!(format!("{:?}", TokenSource::Application), "Application");
    for state in [
        ClientState::Disconnected,
        ClientState::Connecting,
        ClientState::Connected,
        ClientState::Active,
        ClientState::Reconnecting,
        ClientState::Closed,
    ] {
        assert!(!state.as_str().is_empty());
    }
    assert_eq!(SendError::QueueFull("bytes").to_string(), "the send queue is full (bytes)");
}

#[test]
fn inputs_that_change_nothing_change_nothing() {
    let mut h = Harness::default();
    h.input(ClientInput::Hidden);
    h.input(ClientInput::Visible);
    h.input(ClientInput::Online);
    assert_eq!(h.client.state(), ClientState::Disconnected);
    assert!(h.opened().is_empty());
    h.input(ClientInput::Connect);
    h.establish("01A");
    // Sending through the input enum queues or sends like `send`.
    h.take();
    h.input(ClientInput::Send(message("data.x.y", r#"{"n":1}"#)));
    assert_eq!(h.sent().len(), 1);
    // A token from the application is ignored when tokens are static.
    h.input(ClientInput::Token { token: "t".into(), expires_at_unix_ms: None });
    assert_eq!(h.sent().len(), 1);
    // A frame that is not an envelope is a local error, not a crash.
    let attempt = h.last_attempt();
    h.input(ClientInput::Frame { attempt, text: Bytes::from_static(b"garbage") });
    h.input(ClientInput::Frame { attempt, text: Bytes::from_static(br#"{"id":"1","type":"system.ping","version":"1.0","timestamp":"2025-12-18T10:30:00.000Z","source":"server","payload":{}}"#) });
    let local = h.events().iter().filter(|e| matches!(e, ClientEvent::LocalError(_))).count();
    assert_eq!(local, 2);
    // Server errors are surfaced.
    h.server(SystemMessage::Error(switchboard_core::protocol::ErrorPayload {
        category: switchboard_core::protocol::ErrorCategory::RateLimit,
        code: "RATE_LIMITED".into(),
        message: "slow down".into(),
        details: None,
        is_retryable: true,
        retry_after_ms: Some(100),
    }));
    assert!(h.events().iter().any(|e| matches!(e, ClientEvent::ServerError(_))));
    // Offline while reconnecting cancels the pending retry; the state change says so.
    h.drop_socket(None);
    h.input(ClientInput::Offline);
    let last = h.last_change();
    assert_eq!(last.expect("a state change").next_retry_at, None);
    // Reconnect-now starts again at once.
    h.input(ClientInput::ReconnectNow);
    assert_eq!(h.client.state(), ClientState::Connecting);
}

#[test]
fn a_refused_flow_resume_is_a_gap_and_the_jump_after_it_is_not() {
    let mut h = Harness::default();
    h.input(ClientInput::Connect);
    h.establish("01A");
    h.server_data(1, 1);
    h.server(SystemMessage::ConnectionResumed(ConnectionResumed {
        conversation_id: "conv-1".into(),
        resumed_from_message_id: None,
        current_item_index: None,
        missed_messages: 0,
        state_valid: false,
        connection_id: Some(Id::new("01A").unwrap()),
    }));
    assert_eq!(h.gaps(), 1);
    h.server_data(9, 9);
    assert_eq!(h.gaps(), 1, "the announced jump is not a second gap");
    assert_eq!(h.received(), [1, 9]);
}

#[test]
fn a_graceful_shutdown_is_reported_as_such_with_the_servers_delay() {
    let mut h = no_jitter();
    h.input(ClientInput::Connect);
    h.establish("01A");
    h.server(SystemMessage::ConnectionClose(switchboard_core::protocol::ConnectionClose {
        reason: switchboard_core::protocol::CloseReason::ServerShutdown,
        code: 1012,
        retry_after_ms: Some(2500),
    }));
    h.drop_socket(Some(CloseCode::SERVICE_RESTART));
    let change = h.last_change().unwrap();
    assert_eq!(change.new_state, ClientState::Reconnecting);
    assert_eq!(change.reason, "server_shutdown", "not a lost connection: the server said so");
    assert_eq!(change.code, Some(CloseCode::SERVICE_RESTART));
    assert_eq!(change.next_retry_at, Some(h.now + Duration::from_millis(2500)));
    assert!(change.will_reconnect);
}

fn persisted(h: &Harness) -> Vec<ResumeState> {
    h.outputs
        .iter()
        .filter_map(|o| match o {
            ClientOutput::Persist(state) => Some(state.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_resume_point_is_stored_at_most_once_a_second_and_at_once_when_the_page_goes() {
    let mut h = no_jitter();
    h.input(ClientInput::Connect);
    h.establish("01A");
    h.advance(Duration::from_millis(1100));
    h.take();
    // A message a millisecond for half a second: one store now, one when the second is up.
    for n in 1..=500 {
        h.server_data(n, n);
        h.advance(Duration::from_millis(1));
    }
    assert_eq!(persisted(&h).len(), 1, "not once per message");
    h.advance(Duration::from_millis(600));
    let stored = persisted(&h);
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1].last_sequence, 500, "the held-back store has the latest point");
    h.take();
    // A message, then the page freezes or goes: stored at once, without waiting.
    h.server_data(501, 501);
    h.server_data(502, 502);
    assert!(persisted(&h).is_empty());
    h.input(ClientInput::Freeze);
    assert_eq!(persisted(&h).iter().map(|s| s.last_sequence).collect::<Vec<_>>(), [502]);
    h.input(ClientInput::Freeze);
    assert_eq!(persisted(&h).len(), 1, "nothing new, nothing stored");
}

#[test]
fn pagehide_parks_the_session_and_pageshow_resumes_at_once() {
    let mut h = no_jitter();
    h.input(ClientInput::Connect);
    h.establish("01A");
    h.server_data(1, 1);
    h.take();
    h.input(ClientInput::PageHide);
    let attempt = h.last_attempt();
    assert!(h.outputs.iter().any(|o| matches!(
        o,
        ClientOutput::CloseSocket { attempt: a, code: CloseCode::GOING_AWAY, .. } if *a == attempt
    )));
    let change = h.last_change().unwrap();
    assert_eq!((change.new_state, change.reason), (ClientState::Reconnecting, "page_hidden"));
    assert_eq!(change.next_retry_at, None, "no attempt while the page is away");
    h.advance(Duration::from_secs(120));
    assert_eq!(h.opened().len(), 0);
    // The dead socket's late events change nothing.
    h.input(ClientInput::SocketClosed {
        attempt,
        code: Some(CloseCode::ABNORMAL),
        reason: String::new(),
    });
    assert_eq!(h.client.state(), ClientState::Reconnecting);
    h.input(ClientInput::PageShow);
    assert_eq!(h.opened().len(), 1, "back from the cache: at once");
    h.establish("01B");
    let sent = h.sent();
    let SystemMessage::ConnectionResume(resume) = SystemMessage::from_envelope(&sent[0]).unwrap()
    else {
        panic!("{sent:?}")
    };
    assert_eq!((resume.connection_id.unwrap().as_str(), resume.last_sequence), ("01A", Some(1)));
}

#[test]
fn the_status_tells_the_state_the_last_close_and_the_round_trip() {
    let mut h = no_jitter();
    h.input(ClientInput::Connect);
    h.establish("01A");
    let status = h.client.status();
    assert_eq!(
        (status.state, status.resumed, status.round_trip_ms),
        (ClientState::Active, false, None)
    );
    // The client pings once active; the answer gives the round trip.
    let ping = h.sent().into_iter().find(|e| e.message_type == types::PING).expect("a ping");
    h.advance(Duration::from_millis(42));
    let pong = Envelope::create(
        Source::Server,
        MessageType::new(types::PONG).unwrap(),
        SystemMessage::Pong(Heartbeat { timestamp: Timestamp::UNIX_EPOCH }).to_payload(),
        Timestamp::UNIX_EPOCH,
        7,
    )
    .replying_to(ping.id);
    let attempt = h.last_attempt();
    h.input(ClientInput::Frame { attempt, text: Bytes::from(pong.encode()) });
    assert_eq!(h.client.status().round_trip_ms, Some(42));
    h.client.send(h.now, message("data.x.y", "{}")).unwrap();
    h.drop_socket(Some(CloseCode::SLOW_CONSUMER));
    h.client.send(h.now, message("data.x.y", "{}")).unwrap();
    let status = h.client.status();
    assert_eq!(status.state, ClientState::Reconnecting);
    assert_eq!(status.last_close_code, Some(CloseCode::SLOW_CONSUMER));
    assert_eq!(status.attempt, 1);
    assert!(status.next_retry_at.is_some());
    assert_eq!(status.queued, 1);
    assert_eq!(status.connection_id.as_ref().map(Id::as_str), Some("01A"));
}

/// A message the client was given already (a resume on another instance replays from the last
/// position, and a message delivered before the bus placed it has none) is not delivered
/// again; its sequence still counts, so no gap is reported.
#[test]
fn a_message_delivered_already_is_not_delivered_again_under_a_new_sequence() {
    let mut h = Harness::default();
    h.input(ClientInput::Connect);
    h.establish("01A");
    let message = |sequence: u64| {
        let envelope = Envelope::create(
            Source::Server,
            MessageType::new("data.message.created").unwrap(),
            Payload::from_json(r#"{"n":1}"#).unwrap(),
            Timestamp::UNIX_EPOCH,
            7,
        )
        .with_sequence(sequence);
        Bytes::from(envelope.encode())
    };
    for sequence in [1, 2] {
        let attempt = h.last_attempt();
        h.input(ClientInput::Frame { attempt, text: message(sequence) });
    }
    let events = h.events();
    let messages = events.iter().filter(|e| matches!(e, ClientEvent::Message { .. })).count();
    assert_eq!(messages, 1, "{events:?}");
    assert!(!events.iter().any(|e| matches!(e, ClientEvent::Gap { .. })), "{events:?}");
    assert_eq!(h.client.resume_state().last_sequence, 2);
}

/// The client keeps the last position it got per channel, sends them when it resumes (any
/// instance can replay from them), stores them for a reload, and keeps a channel's position
/// when the server resets that channel (telling the application which channel): it is still
/// the last message the client has, and forgetting it made a resume elsewhere replay from
/// where the session joined (everything again; found by the chaos run).
#[test]
fn positions_are_kept_per_channel_sent_on_resume_and_across_a_reset() {
    let mut h = Harness::default();
    h.input(ClientInput::Connect);
    h.establish("01A");
    let positioned = |n: u64, channel: &str, offset: u64| {
        let mut envelope = Envelope::create(
            Source::Server,
            MessageType::new("data.message.created").unwrap(),
            Payload::from_json(&format!(r#"{{"n":{n}}}"#)).unwrap(),
            Timestamp::UNIX_EPOCH,
            u128::from(n),
        )
        .with_sequence(n);
        envelope.position = Some(Position { channel: channel.into(), epoch: "e".into(), offset });
        Bytes::from(envelope.encode())
    };
    for (n, channel, offset) in
        [(1, "conversation:conv-1", 5), (2, "user:alice", 9), (3, "conversation:conv-1", 6)]
    {
        let attempt = h.last_attempt();
        h.input(ClientInput::Frame { attempt, text: positioned(n, channel, offset) });
    }
    let stored = h.client.resume_state().positions;
    let offsets: Vec<(&str, u64)> = stored.iter().map(|p| (p.channel.as_str(), p.offset)).collect();
    assert_eq!(offsets, [("conversation:conv-1", 6), ("user:alice", 9)]);
    h.drop_socket(None);
    h.advance(Duration::from_secs(5));
    h.take();
    h.establish("01B");
    let resume = h.sent().into_iter().find(|e| e.message_type == types::CONNECTION_RESUME).unwrap();
    let Ok(SystemMessage::ConnectionResume(resume)) = SystemMessage::from_envelope(&resume) else {
        panic!()
    };
    assert_eq!(resume.positions, stored);
    h.server(SystemMessage::ChannelReset(ChannelReset {
        channel: "user:alice".into(),
        epoch: None,
        reason: "history_gap".into(),
    }));
    assert!(h.events().iter().any(|e| matches!(
        e,
        ClientEvent::Gap { reason: "channel_reset", channel: Some(c) } if c == "user:alice"
    )));
    assert_eq!(h.client.resume_state().positions, stored);
}
