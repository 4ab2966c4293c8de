//! The `switchboard` process on real sockets: the Phase 1 plan's integration cases, the whole
//! negative token table signed as Keycloak signs, key rotation, frames the hub refuses, the
//! publish API, resume, metrics, and shutdown by SIGTERM.

use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::{Role, WebSocket};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use switchboard_core::protocol::{
    CloseCode, Envelope, MessageType, Payload, Source, SystemMessage, Timestamp, types,
};
use switchboard_tests::server::{
    AUDIENCE, ISSUER, Keys, Seen, ServerProcess, TestClient, base64url, claims, jwk, kid, sign,
    sign_hmac, sign_input, sign_with_header,
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

/// Connects with `token` and returns the error code and close code it was refused with.
fn refused(server: &ServerProcess, token: &str) -> (String, Option<CloseCode>) {
    let mut client = TestClient::connect(server.addr, &format!("token={token}"));
    let (code, seen) = client.until_closed();
    let error = seen
        .iter()
        .find(|e| e.message_type == types::ERROR)
        .expect("a system.error before the close");
    let SystemMessage::Error(error) = SystemMessage::from_envelope(error).unwrap() else {
        panic!()
    };
    (error.code, code)
}

fn publish(server: &ServerProcess, key: &str, body: Value) -> (u16, Value) {
    let (status, body) = server.http(
        "POST",
        "/api/publish",
        &[("Authorization", &format!("Bearer {key}")), ("Content-Type", "application/json")],
        &body.to_string(),
    );
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[test]
fn test_full_connection_lifecycle() {
    let (server, keys) = server(&[]);
    let mut client = TestClient::connect(
        server.addr,
        &format!("token={}", sign(&keys.primary, &claims("alice"))),
    );
    let e = established(&mut client);
    let SystemMessage::ConnectionEstablished(e) = SystemMessage::from_envelope(&e).unwrap() else {
        panic!()
    };
    assert_eq!(e.user_id, "alice");
    assert_eq!(e.heartbeat_interval_ms, Some(30_000));
    let ping =
        client.send("system.ping", &format!(r#"{{"timestamp":"{}"}}"#, Timestamp::UNIX_EPOCH));
    let pong = client.message();
    assert_eq!(pong.message_type, types::PONG);
    assert_eq!(pong.correlation_id, Some(ping.id));
    client.send(types::CONNECTION_CLOSE, r#"{"reason":"user_logout","code":1000}"#);
    assert_eq!(client.until_closed().0, Some(CloseCode::NORMAL));
}

#[test]
fn websocket_pings_and_closes_are_answered() {
    let (server, keys) = server(&[]);
    let token = sign(&keys.primary, &claims("alice"));
    let mut client = TestClient::connect(server.addr, &format!("token={token}"));
    established(&mut client);
    assert_eq!(client.ping(b"are you there"), b"are you there");
    assert_eq!(client.ping(b""), b"");
    // The session goes on after the pings.
    client.send("data.x.y", "{}");
    assert_eq!(client.close_with(4100), Some(CloseCode(4100)), "the close code is echoed");

    let mut client = TestClient::connect(server.addr, &format!("token={token}"));
    established(&mut client);
    assert_eq!(client.close_with(1000), Some(CloseCode::NORMAL));
}

/// A client's (masked) frame: FIN, `opcode`, `payload`, encoded by tungstenite.
fn masked_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    use async_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
    let mask = Some([0x37, 0xfa, 0x21, 0x3d]);
    let header =
        FrameHeader { is_final: fin, opcode: opcode.into(), mask, ..FrameHeader::default() };
    let mut bytes = Vec::new();
    Frame::from_payload(header, payload.to_vec().into()).format(&mut bytes).expect("a frame");
    bytes
}

/// A plain socket that has sent an upgrade request for `token` in `version` ("1.1"), followed
/// by `after` in the same write.
fn raw_upgrade(server: &ServerProcess, token: &str, version: &str, after: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let request = format!(
        "GET /ws?token={token} HTTP/{version}\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(after);
    stream.write_all(&bytes).unwrap();
    stream
}

/// The HTTP answer's head, a byte at a time (nothing of the frames after it is taken).
fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// The server lets go of its frame parser while a socket has nothing part-read (an idle
/// connection keeps none of its state): a frame cut inside its header, a message in fragments
/// with a ping between them, each part after a pause (so that the socket has gone quiet in
/// between), must all still be read whole.
#[test]
fn a_message_that_arrives_in_pieces_is_read_whole() {
    let (server, keys) = server(&[]);
    let token = sign(&keys.primary, &claims("alice"));
    let mut client = TestClient::connect(server.addr, &format!("token={token}"));
    established(&mut client);
    let pause = || std::thread::sleep(std::time::Duration::from_millis(100));

    // A ping envelope (the hub answers it with a pong that names it), in two fragments with a
    // WebSocket ping between, each frame cut in two: inside the header, inside the payload.
    let ping = Envelope::create(
        Source::Client,
        MessageType::new("system.ping").unwrap(),
        Payload::from_json(&format!(r#"{{"timestamp":"{}"}}"#, Timestamp::UNIX_EPOCH)).unwrap(),
        Timestamp::UNIX_EPOCH,
        7,
    );
    let text = ping.encode();
    let (first, rest) = text.split_at(text.len() / 2);
    let stream = [
        masked_frame(false, 0x1, first),
        masked_frame(true, 0x9, b"between"),
        masked_frame(true, 0x0, rest),
    ];
    for frame in &stream {
        for piece in [&frame[..1], &frame[1..frame.len() / 2], &frame[frame.len() / 2..]] {
            client.send_raw(piece);
            pause();
        }
    }
    let pong = client.message();
    assert_eq!(pong.message_type, types::PONG, "{}", pong.payload.as_str());
    assert_eq!(pong.correlation_id, Some(ping.id));
    // And the connection goes on: a ping sent whole is answered too.
    assert_eq!(client.ping(b"still there"), b"still there");
}

/// What a client sends right behind its upgrade request, in the same packet, is read by the
/// server's HTTP side first and handed to the WebSocket's reader: it is not lost.
#[test]
fn a_frame_sent_with_the_upgrade_request_is_read() {
    let (server, keys) = server(&[]);
    let token = sign(&keys.primary, &claims("alice"));
    let mut stream = raw_upgrade(&server, &token, "1.1", &masked_frame(true, 0x9, b"early"));
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut ws = WebSocket::from_raw_socket(stream, Role::Client, None);
    let mut pong = None;
    let mut established = false;
    while pong.is_none() || !established {
        match ws.read().unwrap() {
            Message::Pong(payload) => pong = Some(payload.to_vec()),
            Message::Text(text) => {
                let envelope = Envelope::parse(text.as_bytes(), usize::MAX).unwrap();
                established |= envelope.message_type == types::CONNECTION_ESTABLISHED;
            }
            _ => {}
        }
    }
    assert_eq!(pong.as_deref(), Some(&b"early"[..]));
}

/// The upgrade's `101` is held back and leaves in the same write as the `established` frame:
/// one packet for both, where it took two (a packet costs both ends' kernels a trip through
/// the network stack on every connect). Counted by the kernel: `ss` (iproute2) reads the
/// client socket's `data_segs_in`.
#[test]
fn the_upgrade_answer_and_the_first_frame_arrive_in_one_packet() {
    let (server, keys) = server(&[]);
    let token = sign(&keys.primary, &claims("alice"));
    let mut stream = raw_upgrade(&server, &token, "1.1", &[]);
    let port = stream.local_addr().unwrap().port();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut ws = WebSocket::from_raw_socket(stream, Role::Client, None);
    let Message::Text(text) = ws.read().unwrap() else { panic!("a text frame first") };
    let envelope = Envelope::parse(text.as_bytes(), usize::MAX).unwrap();
    assert_eq!(envelope.message_type, types::CONNECTION_ESTABLISHED);

    let ss = std::process::Command::new("ss")
        .args(["-tinH", "state", "established", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) runs");
    let info = String::from_utf8_lossy(&ss.stdout);
    let packets = info
        .split_whitespace()
        .find_map(|field| field.strip_prefix("data_segs_in:"))
        .unwrap_or_else(|| panic!("no data_segs_in in ss's answer: {info}"));
    assert_eq!(packets, "1", "the 101 and the established frame came in {packets} packets");
}

/// An upgrade asked in HTTP/1.0 is refused with 400: hyper upgrades HTTP/1.1 only, and the
/// server holds a 101 back until the socket's first frame, which would never come.
#[test]
fn an_upgrade_asked_in_http_1_0_is_refused_with_400() {
    let (server, keys) = server(&[]);
    let token = sign(&keys.primary, &claims("alice"));
    let mut stream = raw_upgrade(&server, &token, "1.0", &[]);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(answer.split_whitespace().nth(1), Some("400"), "{answer}");
}

#[test]
fn test_connection_with_conversation_id() {
    let (server, keys) = server(&["--api-key", "k3y"]);
    let token = sign(&keys.primary, &claims("alice"));
    let mut a = TestClient::connect(server.addr, &format!("token={token}&conversation_id=conv-1"));
    let mut b = TestClient::connect(
        server.addr,
        &format!("token={}&conversationId=conv-1", sign(&keys.primary, &claims("bob"))),
    );
    for client in [&mut a, &mut b] {
        let SystemMessage::ConnectionEstablished(e) =
            SystemMessage::from_envelope(&established(client)).unwrap()
        else {
            panic!()
        };
        assert_eq!(e.conversation_id, "conv-1");
    }
    let (status, body) = publish(
        &server,
        "k3y",
        json!({"conversationId": "conv-1", "message": {"type": "data.message.created", "payload": {"text": "hi"}}}),
    );
    assert_eq!((status, body["delivered"].as_u64()), (200, Some(2)));
    for client in [&mut a, &mut b] {
        let m = client.message();
        assert_eq!(m.message_type, "data.message.created");
        assert_eq!(m.sequence, Some(1));
        assert_eq!(m.payload.as_str(), r#"{"text":"hi"}"#);
    }
}

#[test]
fn test_authentication_required() {
    let (server, _) = server(&[]);
    let mut client = TestClient::connect(server.addr, "conversation_id=c");
    let (code, seen) = client.until_closed();
    assert_eq!(code, Some(CloseCode::AUTH_FAILED));
    let SystemMessage::Error(error) = SystemMessage::from_envelope(&seen[0]).unwrap() else {
        panic!()
    };
    assert_eq!(error.code, "AUTH_REQUIRED");
}

#[test]
fn test_invalid_token_rejected() {
    let (server, keys) = server(&[]);
    let mut token = sign(&keys.primary, &claims("alice"));
    token.push('x'); // a broken signature
    assert_eq!(refused(&server, &token), ("AUTH_FAILED".into(), Some(CloseCode::AUTH_FAILED)));
}

#[test]
fn test_multiple_connections_same_user() {
    let (server, keys) = server(&["--api-key", "k3y"]);
    let mut first = TestClient::connect(
        server.addr,
        &format!("token={}&conversation_id=a", sign(&keys.primary, &claims("alice"))),
    );
    let mut second = TestClient::connect(
        server.addr,
        &format!("token={}&conversation_id=b", sign(&keys.primary, &claims("alice"))),
    );
    let (one, two) =
        (connection_id(&established(&mut first)), connection_id(&established(&mut second)));
    assert_ne!(one, two);
    let (status, body) = publish(
        &server,
        "k3y",
        json!({"userId": "alice", "message": {"type": "data.notice.posted"}}),
    );
    assert_eq!((status, body["delivered"].as_u64()), (200, Some(2)));
    assert_eq!(first.message().message_type, "data.notice.posted");
    assert_eq!(second.message().message_type, "data.notice.posted");
}

#[test]
fn the_negative_token_table() {
    let (server, keys) = server(&[]);
    let primary = &keys.primary;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims("alice");
        f(&mut c);
        c
    };
    let header = |alg: &str, typ: &str| {
        format!(r#"{{"alg":"{alg}","typ" : "{typ}","kid" : "{}"}}"#, kid(primary))
    };
    let public_pem = {
        use rsa::pkcs8::{EncodePublicKey, LineEnding};
        rsa::RsaPublicKey::from(primary).to_public_key_pem(LineEnding::LF).unwrap()
    };
    let unknown_kid = sign_with_header(
        primary,
        r#"{"alg":"RS256","typ" : "JWT","kid" : "no-such-key"}"#,
        &claims("alice"),
    );
    let cases: Vec<(&str, String, &str, CloseCode)> = vec![
        (
            "expired by 2 minutes",
            sign(primary, &with(&|c| c["exp"] = json!(now - 120))),
            "TOKEN_EXPIRED",
            CloseCode::TOKEN_EXPIRED,
        ),
        (
            "no exp",
            sign(
                primary,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
            ),
            "AUTH_FAILED",
            CloseCode::AUTH_FAILED,
        ),
        (
            "wrong issuer",
            sign(primary, &with(&|c| c["iss"] = json!("https://evil.test/realms/agents"))),
            "AUTH_FAILED",
            CloseCode::AUTH_FAILED,
        ),
        (
            "issuer with a trailing slash",
            sign(primary, &with(&|c| c["iss"] = json!(format!("{ISSUER}/")))),
            "AUTH_FAILED",
            CloseCode::AUTH_FAILED,
        ),
        (
            "wrong audience",
            sign(
                primary,
                &with(&|c| {
                    c["aud"] = json!("account");
                    c["azp"] = json!("someone-else");
                }),
            ),
            "AUTH_FAILED",
            CloseCode::AUTH_FAILED,
        ),
        (
            "an ID token",
            sign(primary, &with(&|c| c["typ"] = json!("ID"))),
            "AUTH_FAILED",
            CloseCode::AUTH_FAILED,
        ),
        (
            "an HS512 refresh token",
            sign_hmac(
                "HS512",
                b"realm-secret",
                &header("HS512", "JWT"),
                &with(&|c| c["typ"] = json!("Refresh")),
            ),
            "AUTH_FAILED",
            CloseCode::AUTH_FAILED,
        ),
        (
            "alg none",
            format!(
                "{}.",
                sign_with_header(primary, r#"{"alg":"none","typ" : "JWT"}"#, &claims("alice"))
                    .rsplit_once('.')
                    .unwrap()
                    .0
            ),
            "AUTH_FAILED",
            CloseCode::AUTH_FAILED,
        ),
        (
            "HS256 signed with the public key",
            sign_hmac("HS256", public_pem.as_bytes(), &header("HS256", "JWT"), &claims("alice")),
            "AUTH_FAILED",
            CloseCode::AUTH_FAILED,
        ),
        ("an unknown kid", unknown_kid, "AUTH_FAILED", CloseCode::AUTH_FAILED),
        (
            "a key not in the JWKS",
            sign(&keys.stranger, &claims("alice")),
            "AUTH_FAILED",
            CloseCode::AUTH_FAILED,
        ),
        (
            "the encryption key",
            sign(&keys.encryption, &claims("alice")),
            "AUTH_FAILED",
            CloseCode::AUTH_FAILED,
        ),
        (
            "nbf an hour ahead",
            sign(primary, &with(&|c| c["nbf"] = json!(now + 3600))),
            "AUTH_FAILED",
            CloseCode::AUTH_FAILED,
        ),
        (
            "no typ",
            sign(
                primary,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("typ");
                }),
            ),
            "AUTH_FAILED",
            CloseCode::AUTH_FAILED,
        ),
        (
            "no sub",
            sign(
                primary,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("sub");
                }),
            ),
            "AUTH_FAILED",
            CloseCode::AUTH_FAILED,
        ),
        (
            "a crit header",
            sign_with_header(
                primary,
                &format!(
                    r#"{{"alg":"RS256","typ":"JWT","kid":"{}","crit":["exp"]}}"#,
                    kid(primary)
                ),
                &claims("alice"),
            ),
            "AUTH_FAILED",
            CloseCode::AUTH_FAILED,
        ),
        (
            "a duplicated claim",
            {
                let mut text = claims("alice").to_string();
                text.insert_str(1, r#""sub":"root","#);
                let input = format!(
                    "{}.{}",
                    base64url(&format!(
                        r#"{{"alg":"RS256","typ":"JWT","kid":"{}"}}"#,
                        kid(primary)
                    )),
                    base64url(&text)
                );
                sign_input(primary, &input)
            },
            "AUTH_FAILED",
            CloseCode::AUTH_FAILED,
        ),
        (
            "oversized",
            sign(primary, &with(&|c| c["padding"] = json!("x".repeat(9000)))),
            "AUTH_FAILED",
            CloseCode::AUTH_FAILED,
        ),
    ];
    for (name, token, error, close) in cases {
        assert_eq!(refused(&server, &token), (error.to_owned(), Some(close)), "{name}");
    }
    // Keycloak's newer header type is accepted, and the audience may be carried by azp alone.
    let at_jwt = sign_with_header(primary, &header("RS256", "at+jwt"), &claims("alice"));
    established(&mut TestClient::connect(server.addr, &format!("token={at_jwt}")));
    let _ = AUDIENCE;
}

#[test]
fn azp_alone_is_accepted_when_allowed() {
    let (server, keys) = server(&["--azp", "agent-host"]);
    let mut c = claims("alice");
    c.as_object_mut().unwrap().remove("aud");
    established(&mut TestClient::connect(
        server.addr,
        &format!("token={}", sign(&keys.primary, &c)),
    ));
}

#[test]
fn a_rotated_key_is_accepted_after_one_reload() {
    let (server, keys) = server(&[]);
    server.write_jwks(&[
        jwk(&keys.primary, "sig"),
        jwk(&keys.rotated, "sig"),
        jwk(&keys.encryption, "enc"),
    ]);
    let token = sign(&keys.rotated, &claims("alice"));
    established(&mut TestClient::connect(server.addr, &format!("token={token}")));
    // The old key keeps working.
    established(&mut TestClient::connect(
        server.addr,
        &format!("token={}", sign(&keys.primary, &claims("bob"))),
    ));
}

#[test]
fn refused_frames_over_real_sockets() {
    let (server, keys) = server(&[
        "--max-message-size",
        "1024",
        "--rate-limit",
        "data.chat.say=2/60s",
        "--relay",
        "data.chat.*",
    ]);
    let connect = || {
        let mut c = TestClient::connect(
            server.addr,
            &format!("token={}&conversation_id=c", sign(&keys.primary, &claims("alice"))),
        );
        established(&mut c);
        c
    };
    let mut malformed = connect();
    malformed.send_text("{not json");
    let SystemMessage::Error(e) = SystemMessage::from_envelope(&malformed.message()).unwrap()
    else {
        panic!()
    };
    assert_eq!(e.code, "INVALID_MESSAGE");

    let mut limited = connect();
    for _ in 0..3 {
        limited.send("data.chat.say", r#"{"text":"hi"}"#);
    }
    let seen: Vec<Envelope> = (0..3).map(|_| limited.message()).collect();
    let relayed = seen.iter().filter(|e| e.message_type == "data.chat.say").count();
    assert_eq!(relayed, 2, "relayed back to the sender as confirmation");
    assert!(
        seen.iter().filter(|e| e.message_type == "data.chat.say").all(|e| e
            .sender_id
            .as_ref()
            .map(|s| s.as_str())
            == Some("alice")
            && e.payload.as_str() == r#"{"text":"hi"}"#)
    );
    let error = seen.iter().find(|e| e.message_type == types::ERROR).expect("an error");
    let SystemMessage::Error(e) = SystemMessage::from_envelope(error).unwrap() else { panic!() };
    assert_eq!(e.code, "RATE_LIMITED");
    assert!(e.retry_after_ms.is_some());

    let mut big = connect();
    big.send("data.chat.post", &format!(r#"{{"text":"{}"}}"#, "x".repeat(2000)));
    assert_eq!(big.until_closed().0, Some(CloseCode::MESSAGE_TOO_BIG));

    let mut binary = connect();
    binary.send_binary(b"\x00\x01");
    assert_eq!(binary.until_closed().0, Some(CloseCode::UNSUPPORTED_DATA));
}

/// Polls `/metrics` until it contains `line`; whether it did within `seconds`.
fn metrics_show(server: &ServerProcess, line: &str, seconds: u64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if server.http("GET", "/metrics", &[], "").1.lines().any(|l| l == line) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_its_socket_let_go() {
    let (server, keys) = server(&["--api-key", "k3y"]);
    let token = sign(&keys.primary, &claims("sloth"));
    let mut client =
        TestClient::connect(server.addr, &format!("token={token}&conversation_id=slow"));
    established(&mut client);
    assert!(metrics_show(&server, "switchboard_open_sockets 1", 10));
    // From here on the client reads nothing: the kernel's buffers fill, then the hub's window,
    // then its replay buffer, and the hub cuts the connection off (4013).
    let text = "x".repeat(32 * 1024);
    let body = json!({"conversationId": "slow", "message": {"type": "data.load.blob", "payload": {"text": text}}});
    let mut cut_off = false;
    for _ in 0..4000 {
        assert_eq!(publish(&server, "k3y", body.clone()).0, 200);
        if server.http("GET", "/metrics", &[], "").1.contains("switchboard_slow_consumers_total 1")
        {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "a client that reads nothing is cut off");
    // Its writer is stuck on a full socket and the close frame cannot go out; after the grace
    // period the server lets the socket go anyway, and the session waits for a resume.
    assert!(
        metrics_show(&server, "switchboard_open_sockets 0", 30),
        "the socket of a client that stopped reading is released"
    );
    assert!(metrics_show(&server, "switchboard_connections{state=\"reconnecting\"} 1", 10));
    drop(client);
}

#[test]
fn resume_over_real_sockets_replays_exactly_the_missed_messages() {
    let (server, keys) = server(&["--api-key", "k3y"]);
    let query =
        || format!("token={}&conversation_id=conv-r", sign(&keys.primary, &claims("alice")));
    let mut client = TestClient::connect(server.addr, &query());
    let id = connection_id(&established(&mut client));
    publish(
        &server,
        "k3y",
        json!({"conversationId": "conv-r", "message": {"type": "data.n.x", "payload": {"n": 1}}}),
    );
    assert_eq!(client.message().sequence, Some(1));
    client.cut();
    // Wait until the server has noticed, so the messages land in the parked session.
    for _ in 0..100 {
        let (_, metrics) = server.http("GET", "/metrics", &[], "");
        if metrics.contains("switchboard_connections{state=\"reconnecting\"} 1") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for n in 2..=4 {
        let (status, body) = publish(
            &server,
            "k3y",
            json!({"conversationId": "conv-r", "message": {"type": "data.n.x", "payload": {"n": n}}}),
        );
        assert_eq!(
            (status, body["delivered"].as_u64()),
            (200, Some(1)),
            "the parked session takes it"
        );
    }
    let mut again = TestClient::connect(server.addr, &query());
    established(&mut again);
    again.send(types::CONNECTION_RESUME, &format!(r#"{{"conversationId":"conv-r","lastMessageId":null,"lastItemIndex":0,"clientState":{{"pendingWidgetIds":[]}},"connectionId":"{id}","lastSequence":1}}"#));
    let SystemMessage::ConnectionResumed(resumed) =
        SystemMessage::from_envelope(&again.message()).unwrap()
    else {
        panic!()
    };
    assert!(resumed.state_valid);
    assert_eq!(resumed.missed_messages, 3);
    let replayed: Vec<(Option<u64>, String)> = (0..3)
        .map(|_| again.message())
        .map(|e| (e.sequence, e.payload.as_str().to_owned()))
        .collect();
    assert_eq!(
        replayed,
        [
            (Some(2), r#"{"n":2}"#.into()),
            (Some(3), r#"{"n":3}"#.into()),
            (Some(4), r#"{"n":4}"#.into())
        ]
    );
}

#[test]
fn health_metrics_and_the_publish_api_answer() {
    let (server, _) = server(&["--api-key", "k3y"]);
    assert_eq!(server.http("GET", "/healthz", &[], ""), (200, "ok\n".into()));
    assert_eq!(server.http("GET", "/readyz", &[], "").0, 200);
    let (status, metrics) = server.http("GET", "/metrics", &[], "");
    assert_eq!(status, 200);
    assert!(metrics.contains("switchboard_connections"), "{metrics}");
    assert!(metrics.contains("# EOF"));
    assert_eq!(
        publish(&server, "wrong", json!({"broadcast": true, "message": {"type": "data.a.b"}})).0,
        401
    );
    assert_eq!(publish(&server, "k3y", json!({"message": {"type": "data.a.b"}})).0, 400);
    assert_eq!(
        publish(&server, "k3y", json!({"broadcast": true, "message": {"type": "data.a.b"}})),
        (200, json!({"delivered": 0}))
    );
    assert_eq!(server.http("GET", "/nope", &[], "").0, 404);
}

#[test]
fn sigterm_tells_every_client_and_exits_zero() {
    let (mut server, keys) = server(&["--shutdown-spread", "2s"]);
    let mut clients: Vec<TestClient> = (0..20)
        .map(|i| {
            let mut c = TestClient::connect(
                server.addr,
                &format!(
                    "token={}&conversation_id=c{}",
                    sign(&keys.primary, &claims(&format!("u{i}"))),
                    i % 3
                ),
            );
            established(&mut c);
            c
        })
        .collect();
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    for client in &mut clients {
        let (code, seen) = client.until_closed();
        assert_eq!(code, Some(CloseCode::SERVICE_RESTART));
        let close = seen
            .iter()
            .find(|e| e.message_type == types::CONNECTION_CLOSE)
            .expect("told before the close");
        let SystemMessage::ConnectionClose(close) = SystemMessage::from_envelope(close).unwrap()
        else {
            panic!()
        };
        assert_eq!(close.code, 1012);
        assert!(close.retry_after_ms.is_some_and(|ms| ms <= 2000));
    }
    let _ = Seen::Closed(None);
}

#[test]
fn keys_from_a_url_are_fetched_again_once_for_a_new_kid() {
    let keys = Keys::load();
    let endpoint = switchboard_tests::server::JwksEndpoint::start(&[
        jwk(&keys.primary, "sig"),
        jwk(&keys.encryption, "enc"),
    ]);
    let server = ServerProcess::start_bare(EXE, &["--jwks-url", &endpoint.url]);
    established(&mut TestClient::connect(
        server.addr,
        &format!("token={}", sign(&keys.primary, &claims("alice"))),
    ));
    assert_eq!(endpoint.requests(), 1, "fetched once at start");
    // Rotation: a new key appears; the first token signed with it makes one fetch.
    endpoint.serve(&[
        jwk(&keys.primary, "sig"),
        jwk(&keys.rotated, "sig"),
        jwk(&keys.encryption, "enc"),
    ]);
    established(&mut TestClient::connect(
        server.addr,
        &format!("token={}", sign(&keys.rotated, &claims("bob"))),
    ));
    assert_eq!(endpoint.requests(), 2);
    // An unknown kid right after: refused without another fetch (at most one per 10 s).
    assert_eq!(
        refused(&server, &sign(&keys.stranger, &claims("eve"))).1,
        Some(CloseCode::AUTH_FAILED)
    );
    assert_eq!(endpoint.requests(), 2);
    // The identity provider goes down: the cached keys keep serving.
    endpoint.fail();
    established(&mut TestClient::connect(
        server.addr,
        &format!("token={}", sign(&keys.primary, &claims("carol"))),
    ));
}

#[test]
fn cookie_sessions_need_an_allowed_origin() {
    use switchboard_core::server::Principal;
    use switchboard_smol::auth::MemorySessions;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let args = switchboard_smol::Args {
        listen: Some(format!("127.0.0.1:{port}")),
        allowed_origins: vec!["https://app.test".into()],
        issuers: vec![ISSUER.into()],
        any_audience: true,
        authorize: Some("allow-all".into()),
        ..Default::default()
    };
    let settings = switchboard_smol::Settings::resolve(args).unwrap();
    let sessions = MemorySessions::default();
    sessions.insert("s3ssion", Principal::user("alice"));
    std::thread::spawn(move || {
        switchboard_smol::Server::new(settings).with_sessions(sessions).run()
    });
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut ok = TestClient::connect_with(
        addr,
        "conversation_id=c",
        &[("Cookie", "theme=dark; session=s3ssion"), ("Origin", "https://app.test")],
    );
    let SystemMessage::ConnectionEstablished(e) =
        SystemMessage::from_envelope(&established(&mut ok)).unwrap()
    else {
        panic!()
    };
    assert_eq!(e.user_id, "alice");
    for origin in [Some("https://evil.test"), None] {
        let mut headers = vec![("Cookie", "session=s3ssion")];
        headers.extend(origin.map(|o| ("Origin", o)));
        let mut refused = TestClient::connect_with(addr, "", &headers);
        assert_eq!(refused.until_closed().0, Some(CloseCode::AUTH_FAILED), "origin {origin:?}");
    }
    let mut unknown = TestClient::connect_with(
        addr,
        "",
        &[("Cookie", "session=nope"), ("Origin", "https://app.test")],
    );
    assert_eq!(unknown.until_closed().0, Some(CloseCode::AUTH_FAILED));
}
