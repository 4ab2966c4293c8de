//! The native client (the client core on smol) against the real server process: the Phase 1
//! plan's reconnection cases, on real sockets. Time is asserted on the client's own schedule
//! (its `next_retry_at` against its clock), never on wall-clock durations.

use serde_json::{Value, json};
use std::time::Duration;
use switchboard_core::client::{
    BackoffConfig, ClientConfig, ClientEvent, ClientInput, ClientState, Jitter, StateChange,
    TokenSource,
};
use switchboard_core::time::Instant;
use switchboard_smol::client::NativeClient;
use switchboard_tests::server::{Keys, ServerProcess, claims, jwk, sign};

const EXE: &str = env!("CARGO_BIN_EXE_switchboard-under-test");

fn jwks(keys: &Keys) -> Vec<Value> {
    vec![jwk(&keys.primary, "sig"), jwk(&keys.encryption, "enc")]
}

fn client(
    addr: std::net::SocketAddr,
    keys: &Keys,
    user: &str,
    backoff: BackoffConfig,
) -> NativeClient {
    let mut config = ClientConfig::new(format!("ws://{addr}/ws"));
    config.token = TokenSource::Static(sign(&keys.primary, &claims(user)));
    config.conversation_id = Some("conv-n".into());
    config.backoff = backoff;
    NativeClient::start(config)
}

/// Events until `done` says so, within 30 s.
fn until(
    client: &NativeClient,
    mut done: impl FnMut(&ClientEvent) -> bool,
) -> Vec<(Instant, ClientEvent)> {
    smol::block_on(async {
        let collect = async {
            let mut seen = Vec::new();
            while let Ok((at, event)) = client.events().recv().await {
                let stop = done(&event);
                seen.push((at, event));
                if stop {
                    return seen;
                }
            }
            seen
        };
        let guard = async {
            smol::Timer::after(Duration::from_secs(30)).await;
            panic!("the expected event did not come within 30 s");
        };
        smol::future::or(collect, guard).await
    })
}

fn active(event: &ClientEvent) -> bool {
    matches!(event, ClientEvent::Connected { .. })
}

fn changes(events: &[(Instant, ClientEvent)]) -> Vec<(Instant, StateChange)> {
    events
        .iter()
        .filter_map(|(at, e)| match e {
            ClientEvent::StateChange(c) => Some((*at, c.clone())),
            _ => None,
        })
        .collect()
}

fn fast(jitter: Jitter, max_attempts: u32) -> BackoffConfig {
    BackoffConfig {
        base: Duration::from_millis(100),
        max: Duration::from_millis(1600),
        max_attempts,
        jitter,
    }
}

#[test]
fn test_reconnection_after_disconnect() {
    let keys = Keys::load();
    let mut server = ServerProcess::start(EXE, &jwks(&keys), &[]);
    let addr = server.addr;
    // Retries no sooner than 125, 250, 500, 1000 and 800 ms apart: five attempts span at least
    // 2.6 s, ample for a restart even on a busy machine.
    let backoff = BackoffConfig { base: Duration::from_millis(250), ..fast(Jitter::Equal, 10) };
    let c = client(addr, &keys, "alice", backoff);
    until(&c, active);
    server.kill();
    std::thread::sleep(Duration::from_millis(300));
    let _again = ServerProcess::start(EXE, &jwks(&keys), &["--listen", &addr.to_string()]);
    let events = until(&c, active);
    let attempts = changes(&events).iter().map(|(_, c)| c.attempt).max().unwrap_or(0);
    assert!((1..=5).contains(&attempts), "active again after {attempts} attempts");
}

#[test]
fn test_exponential_backoff() {
    let keys = Keys::load();
    let mut server = ServerProcess::start(EXE, &jwks(&keys), &[]);
    let c = client(server.addr, &keys, "alice", fast(Jitter::None, 6));
    until(&c, active);
    server.kill();
    let events = until(
        &c,
        |e| matches!(e, ClientEvent::StateChange(c) if c.new_state == ClientState::Closed),
    );
    let delays: Vec<u64> = changes(&events)
        .iter()
        .filter(|(_, c)| c.new_state == ClientState::Reconnecting)
        .map(|(at, c)| c.next_retry_at.expect("a retry time").as_millis() - at.as_millis())
        .collect();
    assert_eq!(delays, [100, 200, 400, 800, 1600, 1600], "min(base · 2^attempt, max), no jitter");
}

#[test]
fn test_max_attempts_exceeded() {
    let keys = Keys::load();
    // Nothing listens here.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let c = client(port, &keys, "alice", fast(Jitter::None, 3));
    let events = until(
        &c,
        |e| matches!(e, ClientEvent::StateChange(c) if c.new_state == ClientState::Closed),
    );
    let changes = changes(&events);
    let connecting = changes.iter().filter(|(_, c)| c.new_state == ClientState::Connecting).count();
    assert_eq!(connecting, 4, "the first try and three retries");
    let last = &changes.last().unwrap().1;
    assert!(!last.will_reconnect);
    assert_eq!(last.reason, "max_attempts");
}

#[test]
fn test_resume_with_previous_connection_id() {
    let keys = Keys::load();
    let server = ServerProcess::start(EXE, &jwks(&keys), &[]);
    let c = client(server.addr, &keys, "alice", fast(Jitter::Equal, 10));
    let first = until(&c, active);
    let Some(ClientEvent::Connected { connection_id: id, .. }) =
        first.last().map(|(_, e)| e.clone())
    else {
        panic!()
    };
    c.drop_connection();
    let again = until(&c, active);
    match &again.last().unwrap().1 {
        ClientEvent::Connected { connection_id, resumed, .. } => {
            assert!(resumed, "resumed, not a fresh session");
            assert_eq!(*connection_id, id, "the same session");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn test_message_replay_after_resume() {
    let keys = Keys::load();
    let server = ServerProcess::start(EXE, &jwks(&keys), &["--api-key", "k3y"]);
    let publish = |n: u64| {
        let body = json!({"conversationId": "conv-n", "message": {"type": "data.n.x", "payload": {"n": n}}}).to_string();
        server.http("POST", "/api/publish", &[("Authorization", "Bearer k3y")], &body).0
    };
    let c = client(server.addr, &keys, "alice", fast(Jitter::Equal, 10));
    until(&c, active);
    assert_eq!(publish(1), 200);
    let first = until(&c, |e| matches!(e, ClientEvent::Message { .. }));
    // Offline first, so the client does not come back until told: the messages below are
    // certainly published while it is away.
    c.input(ClientInput::Offline);
    c.drop_connection();
    // Wait until the server has parked the session.
    for _ in 0..250 {
        if server
            .http("GET", "/metrics", &[], "")
            .1
            .contains("switchboard_connections{state=\"reconnecting\"} 1")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for n in 2..=4 {
        assert_eq!(publish(n), 200);
    }
    c.input(ClientInput::Online);
    let events = until(
        &c,
        |e| matches!(e, ClientEvent::Message { message, .. } if std::str::from_utf8(&message.frame).unwrap().contains("\"n\":4")),
    );
    // Message 1 was received before the drop; the rest after the resume.
    let all: Vec<(Instant, ClientEvent)> = first.into_iter().chain(events).collect();
    let numbers: Vec<u64> = all
        .iter()
        .filter_map(|(_, e)| match e {
            ClientEvent::Message { message, .. } => {
                message.envelope().ok()?.payload.parse::<Value>().ok()?["n"].as_u64()
            }
            _ => None,
        })
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4], "each once, in order");
    assert!(
        all.iter()
            .any(|(_, e)| matches!(e, ClientEvent::Connected { resumed: true, replayed: 3, .. }))
    );
    assert!(!all.iter().any(|(_, e)| matches!(e, ClientEvent::Gap { .. })));
}
