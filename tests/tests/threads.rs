//! One `switchboard` process with a hub per thread (`--threads 2`), on real sockets: the kernel
//! spreads the connections over the hubs' listeners (`SO_REUSEPORT`), and the bus in the
//! process joins them with the channel semantics of the Redis one. A conversation whose
//! members sit on both hubs gets every message once, in one order, with positions without
//! holes; a session resumes on whichever hub its new socket reaches, with nothing lost.
//!
//! Which hub a socket reaches is the kernel's choice (a hash of its addresses): with 16
//! members, all on one hub would happen once in 32 768 runs; the resume test goes round until
//! a session has crossed to the other hub (and fails if none has in 64 resumes). The same
//! model in the simulator: `bus.rs` and the chaos runs (several hubs on one `LocalBus`).

use serde_json::{Value, json};
use switchboard_core::protocol::{Envelope, Position, SystemMessage, types};
use switchboard_tests::server::{Keys, ServerProcess, TestClient, claims, jwk, sign};

const EXE: &str = env!("CARGO_BIN_EXE_switchboard-under-test");
const KEY: &str = "k3y";
const TYPE: &str = "data.test.message";

fn server() -> ServerProcess {
    let keys = Keys::load();
    let args = ["--threads", "2", "--api-key", KEY, "--relay", "data.*"];
    ServerProcess::start(EXE, &[jwk(&keys.primary, "sig")], &args)
}

fn join(server: &ServerProcess, user: &str, conversation: &str) -> (TestClient, String) {
    let token = sign(&Keys::load().primary, &claims(user));
    let query = format!("token={token}&conversation_id={conversation}");
    let mut client = TestClient::connect(server.addr, &query);
    let established = client.message();
    let Ok(SystemMessage::ConnectionEstablished(e)) = SystemMessage::from_envelope(&established)
    else {
        panic!("{established:?}")
    };
    (client, e.connection_id.to_string())
}

fn say(server: &ServerProcess, conversation: &str, n: u64) {
    let body = json!({"conversationId": conversation,
        "message": {"type": TYPE, "payload": {"n": n}}});
    let auth = format!("Bearer {KEY}");
    let (status, answer) =
        server.http("POST", "/api/publish", &[("Authorization", &auth)], &body.to_string());
    assert_eq!(status, 200, "publish {n}: {answer}");
}

fn number(envelope: &Envelope) -> u64 {
    let payload: Value = serde_json::from_str(envelope.payload.as_str()).unwrap();
    payload["n"].as_u64().unwrap()
}

/// The next `count` test messages (system messages other than the test's are skipped).
fn messages(client: &mut TestClient, count: usize) -> Vec<Envelope> {
    let mut got = Vec::new();
    while got.len() < count {
        let envelope = client.message();
        if envelope.message_type == TYPE {
            got.push(envelope);
        }
    }
    got
}

#[test]
fn a_conversation_with_members_on_every_hub_gets_every_message_once_in_one_order() {
    let server = server();
    let mut members: Vec<TestClient> =
        (0..16).map(|i| join(&server, &format!("u{i}"), "t").0).collect();
    // Every member relays one message (through its own hub) and the API publishes eight.
    for (i, member) in members.iter_mut().enumerate() {
        member.send(TYPE, &format!(r#"{{"n":{}}}"#, i + 1));
    }
    for n in 17..=24 {
        say(&server, "t", n);
    }
    let mut orders = Vec::new();
    for member in &mut members {
        let got = messages(member, 24);
        let mut numbers: Vec<u64> = got.iter().map(number).collect();
        orders.push(numbers.clone());
        numbers.sort_unstable();
        assert_eq!(numbers, (1..=24).collect::<Vec<_>>(), "every message once");
        let positions: Vec<_> = got.iter().map(|e| e.position.clone().unwrap()).collect();
        assert!(positions.iter().all(|p| p.channel == "conversation:t"), "{positions:?}");
        assert!(positions.iter().all(|p| p.epoch == positions[0].epoch), "{positions:?}");
        let offsets: Vec<u64> = positions.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, (1..=24).collect::<Vec<_>>(), "offsets without holes");
    }
    assert!(orders.iter().all(|order| *order == orders[0]), "one order for all: {orders:?}");
    // Sequential API calls are delivered in the order they were made, whichever hub took them.
    let api: Vec<u64> = orders[0].iter().copied().filter(|n| *n > 16).collect();
    assert_eq!(api, (17..=24).collect::<Vec<_>>());
    // The counts are every hub's.
    let (_, metrics) = server.http("GET", "/metrics", &[], "");
    assert!(metrics.contains("switchboard_connections{state=\"active\"} 16\n"), "{metrics}");
}

#[test]
fn a_session_resumes_on_whichever_hub_its_new_socket_reaches_with_nothing_lost() {
    let server = server();
    let mut sessions: Vec<Session> = (0..8)
        .map(|i| {
            let user = format!("r{i}");
            let (client, id) = join(&server, &user, "r");
            Session { user, id, client, last: None }
        })
        .collect();
    let mut published = 0;
    // Rounds until some session has crossed to the other hub (its old copy is closed with
    // 4011, `resumed_elsewhere`); each round, every session loses its socket while three
    // messages are published, and resumes on a new one.
    let crossed = || {
        let (_, metrics) = server.http("GET", "/metrics", &[], "");
        metrics.contains("switchboard_closes_total{code=\"4011\"}")
    };
    for _round in 0..8 {
        published += 1;
        say(&server, "r", published);
        for session in &mut sessions {
            let got = messages(&mut session.client, 1);
            session.last = Some((got[0].sequence.unwrap(), got[0].position.clone().unwrap()));
        }
        let away: Vec<(String, String, (u64, Position))> = sessions
            .drain(..)
            .map(|s| {
                s.client.cut();
                (s.user, s.id, s.last.unwrap())
            })
            .collect();
        for _ in 0..3 {
            published += 1;
            say(&server, "r", published);
        }
        for (user, id, (sequence, position)) in away {
            let (mut client, _) = join(&server, &user, "r");
            let positions = serde_json::to_string(&[&position]).unwrap();
            client.send(types::CONNECTION_RESUME, &format!(r#"{{"conversationId":"r","lastMessageId":null,"lastItemIndex":0,"clientState":{{"pendingWidgetIds":[]}},"connectionId":"{id}","lastSequence":{sequence},"positions":{positions}}}"#));
            let resumed = client.message();
            let Ok(SystemMessage::ConnectionResumed(resumed)) =
                SystemMessage::from_envelope(&resumed)
            else {
                panic!("{resumed:?}")
            };
            assert!(resumed.state_valid, "{user}: {resumed:?}");
            assert_eq!(resumed.missed_messages, 3, "{user}");
            let numbers: Vec<u64> = messages(&mut client, 3).iter().map(number).collect();
            let missed: Vec<u64> = (published - 2..=published).collect();
            assert_eq!(numbers, missed, "{user}: the missed messages once, in order");
            sessions.push(Session { user, id, client, last: None });
        }
        if crossed() {
            return;
        }
    }
    panic!("in 64 resumes, none reached the other hub");
}

/// A session of the resume test: its user, its connection id, its socket, and the sequence and
/// position of the last message it got.
struct Session {
    user: String,
    id: String,
    client: TestClient,
    last: Option<(u64, Position)>,
}

#[test]
fn an_address_in_use_is_refused_even_by_a_server_with_several_hubs() {
    let first = server();
    // `SO_REUSEPORT` alone would let a second server share the port and take half its
    // connections unnoticed: the address is bound alone first.
    let addr = first.addr.to_string();
    let args = ["--dev", "--threads", "2", "--listen", &addr, "--dev-key", "/nonexistent/key"];
    let (code, stderr) = ServerProcess::run_to_end(EXE, &args);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains(&addr) && stderr.contains("in use"), "{stderr}");
}
