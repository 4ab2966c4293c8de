//! The `switchboard` process tried as an attacker and as an operator would (the hardening
//! issue), over real sockets: who may join what, sockets that never authenticate, a slow
//! consumer that loses nothing with the default limits, the publish API's refusals, the auth
//! edges and the smaller defects. Each test failed on the server before its fix.

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use switchboard_core::protocol::{CloseCode, Envelope, SystemMessage, types};
use switchboard_tests::server::{
    AUDIENCE, HttpStub, ISSUER, JwksEndpoint, Keys, ServerProcess, TestClient, claims,
    connect_from, jwk, sign, sign_with_header,
};

const EXE: &str = env!("CARGO_BIN_EXE_switchboard-under-test");

fn server(args: &[&str]) -> (ServerProcess, Keys) {
    let keys = Keys::load();
    let jwks = [jwk(&keys.primary, "sig"), jwk(&keys.encryption, "enc")];
    (ServerProcess::start(EXE, &jwks, args), keys)
}

fn established(client: &mut TestClient) -> Envelope {
    let envelope = client.message();
    assert_eq!(envelope.message_type, types::CONNECTION_ESTABLISHED, "{envelope:?}");
    envelope
}

fn connection_id(envelope: &Envelope) -> String {
    match SystemMessage::from_envelope(envelope).unwrap() {
        SystemMessage::ConnectionEstablished(e) => e.connection_id.to_string(),
        other => panic!("{other:?}"),
    }
}

/// The `system.error` and the close code a connection ended with.
fn refusal(client: &mut TestClient) -> (Option<String>, Option<CloseCode>) {
    let (code, seen) = client.until_closed();
    let error = seen.iter().find(|e| e.message_type == types::ERROR).map(|e| {
        let SystemMessage::Error(error) = SystemMessage::from_envelope(e).unwrap() else {
            panic!()
        };
        error.code
    });
    (error, code)
}

fn error_message(client: &mut TestClient) -> String {
    let (_, seen) = client.until_closed();
    let error = seen.iter().find(|e| e.message_type == types::ERROR).expect("a system.error");
    let SystemMessage::Error(error) = SystemMessage::from_envelope(error).unwrap() else {
        panic!()
    };
    error.message
}

fn publish(server: &ServerProcess, key: &str, body: Value) -> (u16, Value) {
    publish_at(server, server.addr, key, body)
}

fn publish_at(
    server: &ServerProcess,
    addr: std::net::SocketAddr,
    key: &str,
    body: Value,
) -> (u16, Value) {
    let body = body.to_string();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: test\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    let _ = server;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Polls `/metrics` until a line satisfies `want`; whether one did within `seconds`.
fn metrics_show(server: &ServerProcess, want: impl Fn(&str) -> bool, seconds: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        if server.try_http("GET", "/metrics").is_some_and(|(_, body)| body.lines().any(&want)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn token_with(keys: &Keys, user: &str, f: impl Fn(&mut Value)) -> String {
    let mut c = claims(user);
    f(&mut c);
    sign(&keys.primary, &c)
}

// ----- 1. Joining a conversation is authorized -----

#[test]
fn joining_by_the_claim_rule_needs_the_conversation_in_the_token() {
    let (server, keys) = server(&[
        "--authorize-claim",
        "conversations",
        "--authorize-role",
        "agent-admin",
        "--relay",
        "data.chat.*",
    ]);
    let alice = token_with(&keys, "alice", |c| c["conversations"] = json!(["c-mine", "c-2"]));
    let mut mine =
        TestClient::connect(server.addr, &format!("token={alice}&conversation_id=c-mine"));
    established(&mut mine);
    let mut theirs =
        TestClient::connect(server.addr, &format!("token={alice}&conversation_id=c-theirs"));
    assert_eq!(refusal(&mut theirs), (Some("FORBIDDEN".into()), Some(CloseCode::FORBIDDEN)));
    // No conversation asked for: nothing to join.
    established(&mut TestClient::connect(server.addr, &format!("token={alice}")));
    // A token without the claim joins nothing.
    let bob = token_with(&keys, "bob", |_| {});
    let mut nothing =
        TestClient::connect(server.addr, &format!("token={bob}&conversation_id=c-mine"));
    assert_eq!(refusal(&mut nothing).1, Some(CloseCode::FORBIDDEN));
    // The role opens every conversation.
    let admin = token_with(&keys, "root", |c| {
        c["realm_access"]["roles"] = json!(["agent-admin"]);
    });
    let mut any =
        TestClient::connect(server.addr, &format!("token={admin}&conversation_id=c-theirs"));
    established(&mut any);
    // The claim's member writes (relay) into its conversation.
    mine.send("data.chat.say", r#"{"text":"hi"}"#);
    assert_eq!(mine.message().message_type, "data.chat.say");
}

#[test]
fn joining_through_the_backends_callback_with_a_cache_and_fail_closed() {
    let stub = HttpStub::start(|method, path, body| {
        assert_eq!((method, path), ("POST", "/authorize"));
        let request: Value = serde_json::from_str(body).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        match request["conversationId"].as_str().unwrap() {
            "open" => (200, json!({"allow": true, "write": true}).to_string()),
            "readonly" => (200, json!({"allow": true, "write": false}).to_string()),
            "gone" => {
                (200, json!({"allow": false, "reason": "conversation_not_found"}).to_string())
            }
            "broken" => (500, "oops".into()),
            _ => (200, json!({"allow": false, "reason": "forbidden"}).to_string()),
        }
    });
    let url = format!("http://{}/authorize", stub.addr);
    // One hub: each hub keeps its own verdict cache and batches its own requests.
    let (server, keys) =
        server(&["--authorize-url", &url, "--relay", "data.chat.*", "--threads", "1"]);
    let alice = token_with(&keys, "alice", |_| {});
    let open = |conversation: &str| {
        TestClient::connect(server.addr, &format!("token={alice}&conversation_id={conversation}"))
    };
    // Ten connects at once for one user and conversation: one request (single flight).
    let mut clients: Vec<TestClient> = (0..10).map(|_| open("open")).collect();
    for client in &mut clients {
        established(client);
    }
    let asked = |stub: &HttpStub, conversation: &str| {
        stub.requests()
            .iter()
            .filter(|(_, _, b)| b.contains(&format!("\"{conversation}\"")))
            .count()
    };
    assert_eq!(asked(&stub, "open"), 1, "one request for ten joins");
    let body: Value = serde_json::from_str(&stub.requests()[0].2).unwrap();
    assert_eq!(body["userId"], "alice");
    // Within the cache's lifetime, another join asks nothing.
    established(&mut open("open"));
    assert_eq!(asked(&stub, "open"), 1);
    assert_eq!(
        refusal(&mut open("gone")),
        (Some("CONVERSATION_NOT_FOUND".into()), Some(CloseCode::CONVERSATION_NOT_FOUND))
    );
    assert_eq!(
        refusal(&mut open("secret")),
        (Some("FORBIDDEN".into()), Some(CloseCode::FORBIDDEN))
    );
    // The backend fails: closed, but told to come back later (not a final refusal).
    assert_eq!(refusal(&mut open("broken")).1, Some(CloseCode::TRY_AGAIN_LATER));
    // Read-only members may not write into the conversation.
    let mut reader = open("readonly");
    established(&mut reader);
    reader.send("data.chat.say", r#"{"text":"hi"}"#);
    let SystemMessage::Error(e) = SystemMessage::from_envelope(&reader.message()).unwrap() else {
        panic!()
    };
    assert_eq!(e.code, "FORBIDDEN");
}

#[test]
fn the_server_refuses_to_start_without_issuer_audience_or_authorizer() {
    let (code, stderr) = ServerProcess::run_to_end(
        EXE,
        &[
            "--listen",
            "127.0.0.1:0",
            "--jwks-file",
            "/nonexistent",
            "--audience",
            "x",
            "--authorize",
            "allow-all",
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--issuer"), "{stderr}");
    let (code, stderr) = ServerProcess::run_to_end(
        EXE,
        &["--listen", "127.0.0.1:0", "--issuer", ISSUER, "--authorize", "allow-all"],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--audience") && stderr.contains("--any-audience"), "{stderr}");
    let (code, stderr) = ServerProcess::run_to_end(
        EXE,
        &["--listen", "127.0.0.1:0", "--issuer", ISSUER, "--audience", AUDIENCE],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--authorize-url") && stderr.contains("--authorize-claim"), "{stderr}");
}

#[test]
fn definition_ids_are_validated_like_conversation_ids() {
    let (server, keys) = server(&[]);
    let alice = sign(&keys.primary, &claims("alice"));
    for bad in ["x".repeat(200), "a%7Db".to_owned(), "a%20b".to_owned()] {
        let mut client =
            TestClient::connect(server.addr, &format!("token={alice}&definition_id={bad}"));
        assert_eq!(refusal(&mut client).1, Some(CloseCode::POLICY_VIOLATION), "{bad}");
        let mut client =
            TestClient::connect(server.addr, &format!("token={alice}&conversation_id={bad}"));
        assert_eq!(refusal(&mut client).1, Some(CloseCode::POLICY_VIOLATION), "{bad}");
    }
    established(&mut TestClient::connect(
        server.addr,
        &format!("token={alice}&conversation_id=conv-1&definition_id=def:2.a_b"),
    ));
}

// ----- 2. Sockets that never authenticate cannot hold the server -----

/// Whether the server closed `stream` (EOF or reset) within `seconds`.
fn closed_within(stream: &mut std::net::TcpStream, seconds: u64) -> bool {
    stream.set_read_timeout(Some(Duration::from_secs(seconds))).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn silent_and_trickling_sockets_are_closed_and_others_still_connect() {
    let (server, keys) = server(&[]);
    let silent: Vec<std::net::TcpStream> =
        (0..200).map(|_| std::net::TcpStream::connect(server.addr).unwrap()).collect();
    let mut trickle = std::net::TcpStream::connect(server.addr).unwrap();
    trickle.write_all(b"GET /ws HTTP/1.1\r\n").unwrap();
    let dripping = {
        let mut t = trickle.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..60 {
                if t.write_all(b"X").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    // Meanwhile, legitimate clients connect as usual.
    for i in 0..5 {
        established(&mut TestClient::connect(
            server.addr,
            &format!("token={}", sign(&keys.primary, &claims(&format!("u{i}")))),
        ));
    }
    let started = Instant::now();
    assert!(closed_within(&mut trickle, 25), "a request that never ends is cut off");
    for mut s in silent {
        let left = 25u64.saturating_sub(started.elapsed().as_secs()).max(1);
        assert!(closed_within(&mut s, left), "a silent connection is closed");
    }
    let _ = dripping.join();
    assert!(metrics_show(
        &server,
        |l| l.starts_with("switchboard_refused_sockets_total{reason=\"header_timeout\"}"),
        5
    ));
}

#[test]
fn caps_on_sockets_per_ip_and_on_unfinished_upgrades() {
    // One hub: with several, each accepts from its own queue, and the socket refused at the
    // cap is whichever was accepted last, not necessarily the 21st connected.
    let args = ["--max-sockets-per-ip", "20", "--max-pending-upgrades", "30", "--threads", "1"];
    let (server, keys) = server(&args);
    let attacker = Ipv4Addr::new(127, 0, 0, 2);
    let mut held: Vec<std::net::TcpStream> =
        (0..20).map(|_| connect_from(attacker, server.addr)).collect();
    let mut over = connect_from(attacker, server.addr);
    assert!(closed_within(&mut over, 5), "the 21st socket of one address is refused at once");
    // Another address still connects.
    let token = sign(&keys.primary, &claims("alice"));
    let stream = connect_from(Ipv4Addr::new(127, 0, 0, 3), server.addr);
    let mut legit = TestClient::over(stream, server.addr, &format!("token={token}"));
    established(&mut legit);
    // Ten more silent sockets from a third address fill the unfinished upgrades (30 in all).
    held.extend((0..10).map(|_| connect_from(Ipv4Addr::new(127, 0, 0, 4), server.addr)));
    std::thread::sleep(Duration::from_millis(300));
    let mut one_more = connect_from(Ipv4Addr::new(127, 0, 0, 5), server.addr);
    assert!(closed_within(&mut one_more, 5), "beyond the cap, new sockets are refused at once");
    drop(held);
    // (A metrics request made while the cap is still full is refused too: hence "at least".)
    let counted = |reason: &str| {
        let prefix = format!("switchboard_refused_sockets_total{{reason=\"{reason}\"}} ");
        move |l: &str| {
            l.strip_prefix(&prefix).and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n >= 1)
        }
    };
    assert!(metrics_show(&server, counted("per_ip"), 10));
    assert!(metrics_show(&server, counted("pending_upgrades"), 10));
}

// ----- 3. A slow consumer cut with 4013 loses nothing, with the default limits -----

#[test]
fn a_slow_consumer_cut_off_with_the_defaults_resumes_and_loses_nothing() {
    let (server, keys) = server(&["--api-key", "k3y"]);
    let query = || format!("token={}&conversation_id=slow", sign(&keys.primary, &claims("sloth")));
    let mut client = TestClient::connect(server.addr, &query());
    let id = connection_id(&established(&mut client));
    // The client reads nothing from here on; the publisher sends 4 KB messages until the hub
    // cuts the client off, then a few more while it is away.
    let text = "x".repeat(4000);
    let mut published = 0u64;
    let body = |n: u64| json!({"conversationId": "slow", "message": {"type": "data.load.blob", "payload": {"n": n, "text": text}}});
    for _ in 0..20_000 {
        published += 1;
        assert_eq!(publish(&server, "k3y", body(published)).0, 200);
        if published % 50 == 0
            && server
                .http("GET", "/metrics", &[], "")
                .1
                .contains("switchboard_slow_consumers_total 1")
        {
            break;
        }
    }
    assert!(
        server.http("GET", "/metrics", &[], "").1.contains("switchboard_slow_consumers_total 1")
    );
    for _ in 0..20 {
        published += 1;
        publish(&server, "k3y", body(published));
    }
    // It reads what reached it, then the close.
    let (code, seen) = client.until_closed();
    assert!(matches!(code, Some(CloseCode::SLOW_CONSUMER) | None), "{code:?}");
    let numbers: Vec<u64> = seen
        .iter()
        .filter(|e| e.message_type == "data.load.blob")
        .map(|e| e.payload.parse::<Value>().unwrap()["n"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>());
    let last = seen.iter().filter_map(|e| e.sequence).max().unwrap_or(0);
    // As this project's clients do, it names the last position it got in the channel: the
    // resume may reach another hub (or instance), which replays from the channel's history.
    let position = seen.iter().rev().find_map(|e| e.position.as_ref()).expect("a position");
    let positions = serde_json::to_string(&[position]).unwrap();
    let mut again = TestClient::connect(server.addr, &query());
    established(&mut again);
    again.send(types::CONNECTION_RESUME, &format!(r#"{{"conversationId":"slow","lastMessageId":null,"lastItemIndex":0,"clientState":{{"pendingWidgetIds":[]}},"connectionId":"{id}","lastSequence":{last},"positions":{positions}}}"#));
    let SystemMessage::ConnectionResumed(resumed) =
        SystemMessage::from_envelope(&again.message()).unwrap()
    else {
        panic!()
    };
    assert!(resumed.state_valid, "nothing it missed was let go");
    assert_eq!(resumed.missed_messages, published - last);
    let rest: Vec<u64> = (0..resumed.missed_messages)
        .map(|_| again.message())
        .map(|e| e.payload.parse::<Value>().unwrap()["n"].as_u64().unwrap())
        .collect();
    assert_eq!(rest, ((last + 1)..=published).collect::<Vec<_>>(), "every message once, in order");
}

// ----- 4. The send side refuses what would break clients -----

#[test]
fn the_publish_api_refuses_system_types_and_oversized_messages() {
    let (server, keys) = server(&["--api-key", "k3y"]);
    let mut member = TestClient::connect(
        server.addr,
        &format!("token={}&conversation_id=c", sign(&keys.primary, &claims("alice"))),
    );
    established(&mut member);
    let (status, body) = publish(
        &server,
        "k3y",
        json!({"conversationId": "c", "message": {"type": "system.connection.close", "payload": {"reason": "user_logout", "code": 1000}}}),
    );
    assert_eq!(status, 400, "{body}");
    let big = "x".repeat(600 * 1024);
    let (status, body) = publish(
        &server,
        "k3y",
        json!({"conversationId": "c", "message": {"type": "data.big.blob", "payload": {"text": big}}}),
    );
    assert_eq!(status, 413, "{body}");
    // The member was neither cut off nor sent anything.
    let (status, body) = publish(
        &server,
        "k3y",
        json!({"conversationId": "c", "message": {"type": "data.small.note", "payload": {}}}),
    );
    assert_eq!((status, body["delivered"].as_u64()), (200, Some(1)));
    let next = member.message();
    assert_eq!((next.message_type.as_str(), next.sequence), ("data.small.note", Some(1)));
}

#[test]
fn the_publish_api_has_its_own_listener_and_rate_limit() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let api = format!("127.0.0.1:{port}");
    let (server, _) = server(&["--api-key", "k3y", "--api-listen", &api, "--api-rate", "5/60s"]);
    let api: std::net::SocketAddr = api.parse().unwrap();
    let note = json!({"broadcast": true, "message": {"type": "data.a.b"}});
    assert_eq!(publish(&server, "k3y", note.clone()).0, 404, "not on the public port");
    for _ in 0..5 {
        assert_eq!(publish_at(&server, api, "k3y", note.clone()).0, 200);
    }
    assert_eq!(publish_at(&server, api, "k3y", note).0, 429);
}

// ----- 6. Auth edges -----

#[test]
fn a_token_expired_within_the_leeway_is_accepted_and_one_beyond_it_is_not() {
    let (server, keys) = server(&[]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let recent = token_with(&keys, "alice", |c| c["exp"] = json!(now - 10));
    established(&mut TestClient::connect(server.addr, &format!("token={recent}")));
    let old = token_with(&keys, "alice", |c| c["exp"] = json!(now - 60));
    let mut client = TestClient::connect(server.addr, &format!("token={old}"));
    assert_eq!(
        refusal(&mut client),
        (Some("TOKEN_EXPIRED".into()), Some(CloseCode::TOKEN_EXPIRED))
    );
}

#[test]
fn refusals_tell_the_client_nothing_of_the_verifiers_internals() {
    let (server, keys) = server(&[]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut bad_signature = sign(&keys.primary, &claims("alice"));
    bad_signature.push('x');
    let tokens = [
        bad_signature,
        token_with(&keys, "alice", |c| c["iss"] = json!("https://evil.test/realms/x")),
        token_with(&keys, "alice", |c| c["nbf"] = json!(now + 3600)),
        token_with(&keys, "alice", |c| {
            c.as_object_mut().unwrap().remove("typ");
        }),
        token_with(&keys, "alice", |c| {
            c.as_object_mut().unwrap().remove("sub");
        }),
        sign(&keys.stranger, &claims("alice")),
    ];
    for token in tokens {
        let mut client = TestClient::connect(server.addr, &format!("token={token}"));
        assert_eq!(error_message(&mut client), "authentication failed");
    }
}

#[test]
fn invented_key_ids_hold_up_no_one() {
    let keys = Keys::load();
    let endpoint = JwksEndpoint::start(&[jwk(&keys.primary, "sig")]);
    let server = ServerProcess::start_bare(EXE, &["--jwks-url", &endpoint.url]);
    // The identity provider hangs; hundreds of tokens name key ids that do not exist.
    endpoint.stub.hold();
    let forged: Vec<TestClient> = (0..600)
        .map(|i| {
            let token = sign_with_header(
                &keys.primary,
                &format!(r#"{{"alg":"RS256","typ":"JWT","kid":"invented-{i}"}}"#),
                &claims("mallory"),
            );
            TestClient::connect(server.addr, &format!("token={token}"))
        })
        .collect();
    // They wait for the one fetch under way without holding a thread each.
    std::thread::sleep(Duration::from_secs(1));
    let threads = server.threads();
    assert!(threads < 64, "{threads} threads while 600 verifications wait for the keys");
    // A legitimate client is let in while they wait, and the provider was asked once more
    // than at start.
    let mut legit = TestClient::connect(
        server.addr,
        &format!("token={}", sign(&keys.primary, &claims("alice"))),
    );
    established(&mut legit);
    assert!(endpoint.requests() <= 2, "one fetch at a time: {}", endpoint.requests());
    endpoint.stub.release();
    for mut client in forged {
        assert_eq!(refusal(&mut client).1, Some(CloseCode::AUTH_FAILED));
    }
}

// ----- 7. Smaller defects -----

/// A dev token keeps working after a restart, and on another dev instance on the same machine
/// (README's two instances sharing a Redis: a client resumes on either with the token it has).
#[test]
fn the_dev_key_survives_a_restart_and_is_shared_by_dev_instances() {
    let dir = std::env::temp_dir().join(format!("switchboard-dev-key-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("dev-key.pem");
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let listen = free().to_string();
    let start = |listen: &str| {
        let mut command = std::process::Command::new(EXE);
        command.args(["--dev", "--listen", listen]).env("SWITCHBOARD_DEV_KEY", &key);
        ServerProcess::start_command(command)
    };
    let mut first = start(&listen);
    let deadline = Instant::now() + Duration::from_secs(10);
    let token = loop {
        let token = first
            .stdout()
            .iter()
            .find_map(|l| l.split("token (12 h, user dev-user): ").nth(1).map(str::to_owned));
        match token {
            Some(token) => break token,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            None => panic!("no dev token printed"),
        }
    };
    let query = format!("token={token}&conversation_id=demo");
    established(&mut TestClient::connect(first.addr, &query));
    first.terminate();
    let second = start(&listen);
    established(&mut TestClient::connect(second.addr, &query));
    let other = start(&free().to_string());
    established(&mut TestClient::connect(other.addr, &query));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn client_chosen_close_codes_do_not_make_metric_series() {
    let (server, keys) = server(&[]);
    for code in [4999u16, 4321, 3333] {
        let mut client = TestClient::connect(
            server.addr,
            &format!("token={}", sign(&keys.primary, &claims("alice"))),
        );
        established(&mut client);
        client.close_with(code);
    }
    assert!(metrics_show(
        &server,
        |l| l.starts_with("switchboard_closes_total{code=\"other\"} 3"),
        10
    ));
    let metrics = server.http("GET", "/metrics", &[], "").1;
    assert!(!metrics.contains("4999") && !metrics.contains("4321"), "{metrics}");
}

#[test]
fn the_relay_names_the_sender_in_the_envelope_and_leaves_the_payload_alone() {
    let (server, keys) = server(&["--relay", "data.chat.*"]);
    let open = |user: &str| {
        let mut c = TestClient::connect(
            server.addr,
            &format!("token={}&conversation_id=room", sign(&keys.primary, &claims(user))),
        );
        established(&mut c);
        c
    };
    let (mut alice, mut bob) = (open("alice"), open("bob"));
    let payload = r#"{"text":"hi","senderId":"not-me","nested":{"a":[1,2]}}"#;
    let sent = alice.send("data.chat.say", payload);
    for client in [&mut alice, &mut bob] {
        let raw = client.message_text();
        let value: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(value["senderId"], "alice", "{raw}");
        assert_eq!(value["correlationId"], sent.id.as_str());
        assert_eq!(value["payload"], serde_json::from_str::<Value>(payload).unwrap(), "untouched");
    }
}
