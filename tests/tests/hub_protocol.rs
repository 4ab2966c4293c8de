//! The hub's answers to what clients send: bad frames, limits, system messages, flow control,
//! token lifetime.

use std::time::Duration;
use switchboard_core::protocol::{
    CloseCode, Id, MessageType, Payload, SystemMessage, TypePattern, types,
};
use switchboard_core::server::{
    BusEvent, ConnectionState, HubConfig, HubEvent, Input, Outgoing, Principal, RateLimit, Route,
};
use switchboard_tests::sim::{SeedGuard, World, seed_or};

fn world(config: HubConfig) -> (World, SeedGuard) {
    let seed = seed_or(0xfeed);
    (World::new(seed, 1, config), SeedGuard(seed))
}

fn error_codes(w: &World, client: usize) -> Vec<String> {
    w.clients[client].errors().into_iter().map(|e| e.code).collect()
}

fn active(w: &World, client: usize) -> bool {
    let id = w.clients[client].session.clone().unwrap();
    w.nodes[0].hub.connection(&id).is_some_and(|i| i.state == ConnectionState::Active)
}

fn connected(config: HubConfig) -> (World, SeedGuard, usize) {
    let (mut w, guard) = world(config);
    let c = w.connect_new("alice", Some("conv-1"), 0);
    w.settle();
    (w, guard, c)
}

#[test]
fn malformed_json_gets_invalid_message_and_the_connection_stays() {
    let (mut w, _g, c) = connected(HubConfig::default());
    w.client_send(c, b"{not json".to_vec());
    w.settle();
    assert_eq!(error_codes(&w, c), ["INVALID_MESSAGE"]);
    assert!(active(&w, c));
}

#[test]
fn ten_invalid_frames_within_a_minute_close_4012_and_spread_out_they_do_not() {
    let (mut w, _g, c) = connected(HubConfig::default());
    // One invalid frame every seven seconds: never ten within a minute.
    for _ in 0..20 {
        w.client_send(c, b"nope".to_vec());
        w.run_for(Duration::from_secs(7));
        w.client_send_message(c, "system.ping", &format!(r#"{{"timestamp":"{}"}}"#, w.wall()));
    }
    w.settle();
    assert!(active(&w, c), "a client that errs now and then is not cut off");
    assert_eq!(error_codes(&w, c).len(), 20);
    for _ in 0..9 {
        w.client_send(c, b"[]".to_vec());
    }
    w.settle();
    assert!(active(&w, c));
    w.client_send(c, b"nope".to_vec());
    w.settle();
    assert_eq!(w.clients[c].closes, [Some(CloseCode::TOO_MANY_INVALID_MESSAGES)]);
}

#[test]
fn oversized_binary_and_wrong_version_frames_close_at_once() {
    let config = HubConfig { max_frame_bytes: 512, ..HubConfig::default() };
    let (mut w, _g, big) = connected(config.clone());
    w.client_send_message(big, "data.x.y", &format!(r#"{{"blob":"{}"}}"#, "x".repeat(600)));
    w.settle();
    assert_eq!(error_codes(&w, big), ["MESSAGE_TOO_LARGE"]);
    assert_eq!(w.clients[big].closes, [Some(CloseCode::MESSAGE_TOO_BIG)]);
    let id = w.clients[big].session.clone().unwrap();
    assert_eq!(w.nodes[0].hub.connection(&id), None, "a do-not-reconnect close ends the session");

    let binary = w.connect_new("bob", None, 0);
    w.settle();
    let socket = w.clients[binary].socket.unwrap();
    w.input(0, Input::Binary { socket });
    w.settle();
    assert_eq!(error_codes(&w, binary), ["UNSUPPORTED_FRAME"]);
    assert_eq!(w.clients[binary].closes, [Some(CloseCode::UNSUPPORTED_DATA)]);

    let old = w.connect_new("carol", None, 0);
    w.settle();
    let frame = br#"{"id":"1","type":"data.x.y","version":"2.0","timestamp":"2025-12-18T10:30:00.000Z","source":"client","payload":{}}"#;
    w.client_send(old, frame.to_vec());
    w.settle();
    assert_eq!(error_codes(&w, old), ["VERSION_MISMATCH"]);
    assert_eq!(w.clients[old].closes, [Some(CloseCode::VERSION_MISMATCH)]);
}

#[test]
fn rate_limits_answer_rate_limited_then_close_4006_on_abuse() {
    let (mut w, _g, c) = connected(HubConfig { abuse_threshold: 5, ..HubConfig::default() });
    w.with_hub(0, |hub, _| {
        hub.router_mut().on(TypePattern::new("data.message.send").unwrap(), |_, _| Ok(()));
    });
    for _ in 0..11 {
        w.client_send_message(c, "data.message.send", r#"{"text":"hi"}"#);
    }
    w.settle();
    let errors = w.clients[c].errors();
    assert_eq!(errors.len(), 1, "the 11th within a minute is refused");
    assert_eq!(errors[0].code, "RATE_LIMITED");
    assert!(errors[0].is_retryable);
    let retry = errors[0].retry_after_ms.expect("a retry hint");
    assert!((1..=6_000).contains(&retry), "{retry}");
    assert!(w.nodes[0].events.iter().any(|e| matches!(e, HubEvent::RateLimited { .. })));
    for _ in 0..4 {
        w.client_send_message(c, "data.message.send", r#"{"text":"hi"}"#);
    }
    w.settle();
    assert_eq!(w.clients[c].closes, [Some(CloseCode::RATE_LIMITED)]);
}

#[test]
fn system_messages_are_not_rate_limited() {
    let config = HubConfig {
        connection_rate: RateLimit::new(1, Duration::from_secs(60)),
        ..HubConfig::default()
    };
    let (mut w, _g, c) = connected(config);
    for _ in 0..50 {
        w.client_send_message(c, "system.ping", &format!(r#"{{"timestamp":"{}"}}"#, w.wall()));
    }
    w.settle();
    assert_eq!(w.clients[c].system_of(types::PONG).len(), 50);
    assert!(w.clients[c].errors().is_empty());
}

#[test]
fn a_client_ping_gets_a_pong_with_its_id_as_correlation() {
    let (mut w, _g, c) = connected(HubConfig::default());
    let ping =
        w.client_send_message(c, "system.ping", &format!(r#"{{"timestamp":"{}"}}"#, w.wall()));
    w.settle();
    let pongs = w.clients[c].system_of(types::PONG);
    assert_eq!(pongs.len(), 1);
    assert_eq!(pongs[0].correlation_id, Some(ping), "the pong names the ping it answers");
    assert_eq!(pongs[0].sequence, None, "system messages carry no sequence");
}

#[test]
fn typed_handlers_answer_invalid_payload() {
    #[derive(serde::Deserialize)]
    struct Submit {
        #[allow(dead_code)]
        widget_id: String,
    }
    let (mut w, _g, c) = connected(HubConfig::default());
    w.with_hub(0, |hub, _| {
        hub.router_mut().on_typed::<Submit>(
            TypePattern::new("data.widget.submit").unwrap(),
            |cx, _, _submit| {
                cx.reply(
                    MessageType::new("data.widget.accepted").unwrap(),
                    Payload::from_json(r#"{"n":1}"#).unwrap(),
                );
                Ok(())
            },
        );
    });
    w.client_send_message(c, "data.widget.submit", r#"{"widgetId":5}"#);
    w.client_send_message(c, "data.widget.submit", r#"{"widget_id":"w-1"}"#);
    w.settle();
    let errors = w.clients[c].errors();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].code, "INVALID_PAYLOAD");
    assert!(errors[0].message.contains("widget_id"), "{}", errors[0].message);
    assert_eq!(w.clients[c].received.len(), 1);
}

#[test]
fn forwarded_messages_become_events_and_the_application_answers_later() {
    let (mut w, _g, c) = connected(HubConfig::default());
    w.with_hub(0, |hub, _| {
        hub.router_mut().forward(TypePattern::new("data.*").unwrap());
    });
    w.client_send_message(c, "data.message.send", r#"{"text":"hi"}"#);
    w.settle();
    let (connection_id, request) = w.nodes[0]
        .events
        .iter()
        .find_map(|e| match e {
            HubEvent::Message { connection_id, envelope, user_id, .. } => {
                assert_eq!(user_id, "alice");
                Some((connection_id.clone(), envelope.id.clone()))
            }
            _ => None,
        })
        .expect("a message event");
    w.run_for(Duration::from_millis(250));
    w.with_hub(0, |hub, now| {
        hub.send_to_connection(
            now,
            &connection_id,
            Outgoing::new(
                MessageType::new("data.message.created").unwrap(),
                Payload::from_json(r#"{"n":5}"#).unwrap(),
            )
            .replying_to(request),
        )
        .unwrap()
    });
    w.settle();
    assert_eq!(w.clients[c].received, [serde_json::json!({"n": 5})]);
}

#[test]
fn a_fallback_route_takes_what_nothing_else_does() {
    let (mut w, _g, c) = connected(HubConfig::default());
    w.with_hub(0, |hub, _| {
        hub.router_mut().fallback(Route::Forward).routes([(
            TypePattern::new("data.known.x").unwrap(),
            Route::Handler(Box::new(|_, _| Ok(()))),
        )]);
        assert!(hub.router_mut().knows("data.anything.else"));
    });
    w.client_send_message(c, "data.unknown.y", "{}");
    w.settle();
    assert!(w.clients[c].errors().is_empty());
    assert!(w.nodes[0].events.iter().any(|e| matches!(e, HubEvent::Message { .. })));
}

#[test]
fn server_only_system_messages_from_a_client_are_unknown() {
    let (mut w, _g, c) = connected(HubConfig::default());
    w.client_send_message(c, types::AUTH_REFRESHED, r#"{"expiresAt":"2025-12-18T10:35:00.000Z"}"#);
    w.client_send_message(c, "system.made.up", "{}");
    w.client_send_message(c, types::PING, "{}");
    w.settle();
    assert_eq!(
        error_codes(&w, c),
        ["UNKNOWN_MESSAGE_TYPE", "UNKNOWN_MESSAGE_TYPE", "INVALID_PAYLOAD"]
    );
    assert!(active(&w, c));
}

#[test]
fn application_messages_before_authentication_are_refused() {
    let (mut w, _g) = world(HubConfig::default());
    w.auth = switchboard_tests::sim::AuthMode::Allow { delay_ms: 500 };
    let c = w.connect_new("alice", None, 0);
    w.run_for(Duration::from_millis(100));
    w.client_send_message(c, "data.message.send", r#"{"text":"too early"}"#);
    w.client_send_message(c, "system.ping", &format!(r#"{{"timestamp":"{}"}}"#, w.wall()));
    w.run_for(Duration::from_millis(100));
    assert_eq!(error_codes(&w, c), ["AUTH_REQUIRED"]);
    assert_eq!(w.clients[c].system_of(types::PONG).len(), 1, "system messages pass");
    w.run_for(Duration::from_secs(1));
    assert!(active(&w, c));
}

#[test]
fn pause_holds_application_messages_and_resume_delivers_them_in_order() {
    let (mut w, _g, c) = connected(HubConfig::default());
    w.client_send_message(c, "control.flow.pause", "{}");
    w.settle();
    let id = w.clients[c].session.clone().unwrap();
    assert_eq!(w.nodes[0].hub.connection(&id).unwrap().state, ConnectionState::Paused);
    let sent: Vec<u64> = (0..5).map(|_| w.publish(0, "conv-1", None)).collect();
    w.run_for(Duration::from_secs(31));
    assert!(w.clients[c].received.is_empty(), "held");
    assert!(!w.clients[c].system_of(types::PING).is_empty(), "system messages still flow");
    w.client_send_message(c, "control.flow.resume", "{}");
    w.settle();
    let got: Vec<u64> = w.clients[c].received.iter().map(|v| v["n"].as_u64().unwrap()).collect();
    assert_eq!(got, sent);
    assert_eq!(w.clients[c].gaps, 0);
}

#[test]
fn pause_longer_than_the_buffer_reports_the_gap() {
    let config =
        HubConfig { replay_max_messages: 3, max_outbound_frames: 1, ..HubConfig::default() };
    let (mut w, _g, c) = connected(config);
    w.client_send_message(c, "control.flow.pause", "{}");
    w.settle();
    for _ in 0..5 {
        w.publish(0, "conv-1", None);
    }
    w.client_send_message(c, "control.flow.resume", "{}");
    w.settle();
    let resumed = w.clients[c].system_of(types::CONNECTION_RESUMED);
    assert_eq!(resumed.len(), 1);
    let SystemMessage::ConnectionResumed(r) = SystemMessage::from_envelope(resumed[0]).unwrap()
    else {
        panic!()
    };
    assert!(!r.state_valid);
    // What comes next flows again.
    let n = w.publish(0, "conv-1", None);
    w.settle();
    assert_eq!(w.clients[c].received.last().unwrap()["n"].as_u64(), Some(n));
}

#[test]
fn an_expiring_token_closes_4001_unless_refreshed_in_band() {
    // Without clock leeway, so the expiry is exact (the leeway has a test of its own).
    let (mut w, _g) = world(HubConfig { clock_leeway: Duration::ZERO, ..HubConfig::default() });
    let wall0 = switchboard_tests::sim::WALL_START_MS;
    // The verifier in this test answers by hand, so a token's expiry can be chosen.
    w.auth = switchboard_tests::sim::AuthMode::Hang;
    let c = w.connect_new("alice", None, 0);
    w.settle();
    let verify = |w: &mut World, expires_in_s: i64, user: &str| {
        let request = w.nodes[0].hub_verifies().pop().expect("a verification was asked for");
        let mut principal = Principal::user(user);
        principal.expires_at_unix_ms = Some(wall0 + w.now.as_millis() as i64 + expires_in_s * 1000);
        w.input(0, Input::AuthVerdict { request, verdict: Ok(principal.into()) });
        w.settle();
    };
    verify(&mut w, 300, "alice");
    assert!(active(&w, c));
    w.run_for(Duration::from_secs(200));
    w.client_send_message(c, types::AUTH_REFRESH, r#"{"token":"fresh"}"#);
    w.settle();
    verify(&mut w, 300, "alice");
    assert_eq!(w.clients[c].system_of(types::AUTH_REFRESHED).len(), 1);
    w.run_for(Duration::from_secs(299));
    assert!(w.clients[c].closes.is_empty(), "the refresh moved the expiry");
    w.run_for(Duration::from_secs(2));
    assert_eq!(w.clients[c].closes, [Some(CloseCode::TOKEN_EXPIRED)]);
    let close = w.clients[c].system_of(types::CONNECTION_CLOSE);
    assert_eq!(close.len(), 1, "told why before the close");
}

#[test]
fn a_refresh_for_another_user_closes_4001() {
    let (mut w, _g) = world(HubConfig::default());
    w.auth = switchboard_tests::sim::AuthMode::Hang;
    let c = w.connect_new("alice", None, 0);
    w.settle();
    let request = w.nodes[0].hub_verifies().pop().unwrap();
    w.input(0, Input::AuthVerdict { request, verdict: Ok(Principal::user("alice").into()) });
    w.settle();
    w.client_send_message(c, types::AUTH_REFRESH, r#"{"token":"someone else's"}"#);
    w.settle();
    let request = w.nodes[0].hub_verifies().pop().unwrap();
    w.input(0, Input::AuthVerdict { request, verdict: Ok(Principal::user("mallory").into()) });
    w.settle();
    assert_eq!(w.clients[c].closes, [Some(CloseCode::TOKEN_EXPIRED)]);
}

#[test]
fn a_late_verdict_for_a_closed_socket_is_a_no_op() {
    let (mut w, _g) = world(HubConfig::default());
    w.auth = switchboard_tests::sim::AuthMode::Hang;
    let c = w.connect_new("alice", None, 0);
    w.settle();
    let request = w.nodes[0].hub_verifies().pop().unwrap();
    w.cut(c, Some(Duration::ZERO));
    w.settle();
    w.input(0, Input::AuthVerdict { request, verdict: Ok(Principal::user("alice").into()) });
    w.settle();
    assert_eq!(w.nodes[0].hub.stats().sessions, 0);
}

#[test]
fn resuming_a_half_open_session_replaces_its_old_socket() {
    let (mut w, _g, c) = connected(HubConfig::default());
    let old_socket = w.clients[c].socket.unwrap();
    let id = w.clients[c].session.clone().unwrap();
    let n = w.publish(0, "conv-1", None);
    w.settle();
    // The client loses its socket; the server does not notice (half-open), and messages keep
    // going to the dead socket.
    w.cut(c, None);
    let m = w.publish(0, "conv-1", None);
    w.settle();
    w.connect(c);
    w.settle();
    let info = w.nodes[0].hub.connection(&id).unwrap();
    assert_eq!(info.state, ConnectionState::Active);
    assert_ne!(info.socket, Some(old_socket));
    let got: Vec<u64> = w.clients[c].received.iter().map(|v| v["n"].as_u64().unwrap()).collect();
    assert_eq!(got, [n, m]);
    assert_eq!(w.nodes[0].hub.stats().sessions, 1, "the temporary session is gone");
}

#[test]
fn a_client_close_frame_with_1000_ends_the_session() {
    let (mut w, _g, c) = connected(HubConfig::default());
    let socket = w.clients[c].socket.unwrap();
    let id = w.clients[c].session.clone().unwrap();
    w.input(0, Input::Closed { socket, code: Some(CloseCode::NORMAL) });
    assert_eq!(w.nodes[0].hub.connection(&id), None);
    assert!(w.nodes[0].events.iter().any(|e| matches!(
        e,
        HubEvent::ConnectionClosed { code: CloseCode::NORMAL, reason: "client_closed", .. }
    )));
    // Events for the socket after that are no-ops: not one output (the trace folds in every
    // output), and nothing left behind.
    let (trace, stats) = (w.trace_hash(), w.nodes[0].hub.stats());
    w.input(0, Input::Text { socket, frame: bytes::Bytes::from_static(b"{}") });
    w.input(0, Input::Flushed { socket, frames: 1, bytes: 10 });
    w.input(0, Input::Closed { socket, code: None });
    assert_eq!(w.trace_hash(), trace);
    assert_eq!(w.nodes[0].hub.stats(), stats);
    assert_eq!(stats.sessions, 0);
}

#[test]
fn conversation_ids_are_validated_at_the_upgrade() {
    let (mut w, _g) = world(HubConfig::default());
    let c = w.add_client("alice", None, 0);
    w.connect_with(
        c,
        vec![("token".into(), "user:alice".into()), ("conversationId".into(), "c".repeat(200))],
    );
    w.settle();
    assert_eq!(w.clients[c].closes, [Some(CloseCode::POLICY_VIOLATION)]);
    let camel = w.add_client("bob", None, 0);
    w.connect_with(
        camel,
        vec![
            ("token".into(), "user:bob".into()),
            ("conversationId".into(), "conv-9".into()),
            ("definitionId".into(), "def-1".into()),
        ],
    );
    w.settle();
    let id = w.clients[camel].session.clone().unwrap();
    let info = w.nodes[0].hub.connection(&id).unwrap();
    assert_eq!(info.conversation_id, Some(Id::new("conv-9").unwrap()));
    assert_eq!(info.definition_id.as_deref(), Some("def-1"));
}

#[test]
fn subscriptions_follow_local_membership() {
    let (mut w, _g) = world(HubConfig::default());
    let a = w.connect_new("alice", Some("conv-1"), 0);
    let b = w.connect_new("bob", Some("conv-1"), 0);
    w.settle();
    assert_eq!(w.nodes[0].hub.stats().subscriptions, 4, "broadcast, two users, one conversation");
    for c in [a, b] {
        w.client_send_message(
            c,
            types::CONNECTION_CLOSE,
            r#"{"reason":"user_logout","code":1000}"#,
        );
    }
    w.settle();
    assert_eq!(w.nodes[0].hub.stats().subscriptions, 4, "channels linger a while");
    w.run_for(HubConfig::default().bus.linger + Duration::from_millis(1));
    assert_eq!(w.nodes[0].hub.stats().subscriptions, 1, "only broadcast is left");
    let limit = HubConfig { max_subscriptions: 2, ..HubConfig::default() };
    let (mut w, _g) = world(limit);
    let ok = w.connect_new("alice", None, 0);
    let refused = w.connect_new("bob", None, 0);
    w.settle();
    assert!(w.clients[ok].closes.is_empty());
    assert_eq!(w.clients[refused].closes, [Some(CloseCode::SERVER_BUSY)]);
}

#[test]
fn handlers_can_relay_to_the_conversation_and_close_the_sender() {
    use switchboard_core::server::Target;
    let (mut w, _g) = world(HubConfig::default());
    w.with_hub(0, |hub, _| {
        hub.router_mut()
            .on(TypePattern::new("data.chat.say").unwrap(), |cx, envelope| {
                cx.broadcast_to_conversation(
                    MessageType::new("data.chat.said").unwrap(),
                    envelope.payload.clone(),
                    false,
                )
            })
            .on(TypePattern::new("data.chat.shout").unwrap(), |cx, envelope| {
                // A connection without a conversation writes into none, but its handler may
                // still send elsewhere.
                let _ = cx.broadcast_to_conversation(
                    MessageType::new("data.chat.said").unwrap(),
                    envelope.payload.clone(),
                    true,
                );
                cx.send(
                    Target::All,
                    Outgoing::new(
                        MessageType::new("data.chat.everyone").unwrap(),
                        Payload::from_json(r#"{"n":0}"#).unwrap(),
                    ),
                );
                Ok(())
            })
            .on(TypePattern::new("data.chat.quit").unwrap(), |cx, _| {
                cx.close(CloseCode::NORMAL, "bye");
                Ok(())
            })
            .on(TypePattern::new("data.chat.fail").unwrap(), |cx, _| {
                cx.broadcast_to_conversation(
                    MessageType::new("data.chat.said").unwrap(),
                    Payload::empty(),
                    true,
                )?;
                Err(switchboard_core::server::Rejection::new(
                    switchboard_core::protocol::ErrorCategory::Business,
                    "NOPE",
                    "refused",
                ))
            });
    });
    let a = w.connect_new("alice", Some("conv-1"), 0);
    let b = w.connect_new("bob", Some("conv-1"), 0);
    let lone = w.connect_new("carol", None, 0);
    w.settle();
    w.client_send_message(a, "data.chat.say", r#"{"n":1}"#);
    w.client_send_message(a, "data.chat.shout", r#"{"n":2}"#);
    w.client_send_message(a, "data.chat.fail", r#"{"n":3}"#);
    w.client_send_message(lone, "data.chat.say", r#"{"n":4}"#);
    w.settle();
    let ns = |c: usize| -> Vec<u64> {
        w.clients[c].received.iter().map(|v| v["n"].as_u64().unwrap()).collect()
    };
    assert_eq!(ns(a), [2, 0], "the sender is excluded from `say`, included in `shout`");
    assert_eq!(ns(b), [1, 2, 0]);
    assert_eq!(ns(lone), [0], "no conversation, nothing relayed");
    assert_eq!(error_codes(&w, lone), ["NO_CONVERSATION"]);
    assert_eq!(error_codes(&w, a), ["NOPE"], "a rejecting handler's sends are dropped");
    w.client_send_message(b, "data.chat.quit", "{}");
    w.settle();
    assert_eq!(w.clients[b].closes, [Some(CloseCode::NORMAL)]);
}

#[test]
fn an_empty_router_has_no_middleware_and_no_routes() {
    let mut router = switchboard_core::server::Router::empty();
    assert!(!router.knows("data.x.y"));
    router.forward(TypePattern::new("data.*").unwrap());
    router.forward(TypePattern::new("data.*").unwrap());
    assert!(router.knows("data.x.y"));
    assert!(!router.knows("control.x.y"));
    let debug = format!("{router:?}");
    assert!(debug.contains("data.*") && debug.contains("middleware: 0"), "{debug}");
}

#[test]
fn credentials_never_show_in_debug_output() {
    use switchboard_core::server::{Credentials, OpenRequest};
    let request = OpenRequest {
        query: vec![("token".into(), "eyJsecret".into())],
        cookies: vec![("session".into(), "cookiesecret".into())],
        origin: Some("https://app.example".into()),
        peer: None,
    };
    let shown = format!(
        "{request:?} {:?} {:?}",
        Credentials::Token("eyJsecret".into()),
        Credentials::Cookie("cookiesecret".into())
    );
    assert!(!shown.contains("secret"), "{shown}");
    assert!(shown.contains("token") && shown.contains("session"));
    let refresh = switchboard_core::protocol::AuthRefresh { token: "eyJsecret".into() };
    assert!(!format!("{refresh:?}").contains("secret"));
}

#[test]
fn remote_messages_from_the_bus_are_checked() {
    let mut config = HubConfig::default();
    config.bus.shared = true;
    let (mut w, _g, c) = connected(config);
    let bus = |channel: &str, message: &'static [u8]| {
        Input::Bus(
            0,
            BusEvent::Message {
                channel: channel.into(),
                message: bytes::Bytes::from_static(message),
            },
        )
    };
    w.input(0, bus("sb:{conversation:conv-1}", b"garbage"));
    w.input(
        0,
        bus("nonsense", br#"{"epoch":"e","offset":1,"id":"m","origin":"x","frame":{"a":1}}"#),
    );
    // Without a position: not a channel message.
    w.input(0, bus("sb:{broadcast}", br#"{"id":"m","origin":"x","except":null,"frame":{"a":1}}"#));
    w.settle();
    assert!(w.clients[c].received.is_empty());
    let frame = br#"{"epoch":"e1","offset":1,"id":"m1","origin":"other-instance","except":null,"frame":{"id":"1","type":"data.x.y","version":"1.0","timestamp":"2025-12-18T10:30:00.000Z","source":"server","payload":{"n":8}}}"#;
    w.input(0, bus("sb:{broadcast}", frame));
    w.input(0, bus("sb:{user:alice}", frame));
    w.settle();
    assert_eq!(w.clients[c].received.len(), 2);
    let positions: Vec<_> =
        w.clients[c].positions.iter().map(|p| p.as_ref().unwrap().channel.as_str()).collect();
    assert_eq!(positions, ["broadcast", "user:alice"]);
    let info = w.nodes[0].hub.connection(w.clients[c].session.as_ref().unwrap()).unwrap();
    assert_eq!(info.next_sequence, 3);
    assert!(info.replay_len == 2 && info.outbound_frames <= 2);
    assert_eq!(w.nodes[0].hub.conversation_members(&Id::new("conv-1").unwrap()).len(), 1);
    assert!(w.nodes[0].hub.connection_of(w.clients[c].socket.unwrap()).is_some());
    assert!(!w.nodes[0].hub.instance_id().as_str().is_empty());
}

#[test]
fn shutdown_refuses_new_sockets_and_reports_drained_once_all_closed() {
    let (mut w, _g, c) = connected(HubConfig::default());
    w.input(0, Input::Shutdown);
    assert!(w.nodes[0].hub.is_shutting_down());
    w.input(0, Input::Shutdown);
    let late = w.connect_new("late", None, 0);
    w.settle();
    assert_eq!(w.clients[late].closes, [Some(CloseCode::SERVICE_RESTART)]);
    assert_eq!(w.clients[c].closes, [Some(CloseCode::SERVICE_RESTART)]);
    assert_eq!(w.nodes[0].events.iter().filter(|e| **e == HubEvent::Drained).count(), 1);
}

#[test]
fn a_resumed_session_takes_the_new_credentials_and_their_expiry() {
    let (mut w, _g) = world(HubConfig { clock_leeway: Duration::ZERO, ..HubConfig::default() });
    w.auth = switchboard_tests::sim::AuthMode::Hang;
    let wall0 = switchboard_tests::sim::WALL_START_MS;
    let c = w.connect_new("alice", Some("conv-1"), 0);
    w.settle();
    let answer = |w: &mut World, expires_in_s: i64| {
        let request = w.nodes[0].hub_verifies().pop().expect("a verification");
        let mut principal = Principal::user("alice");
        principal.expires_at_unix_ms = Some(wall0 + w.now.as_millis() as i64 + expires_in_s * 1000);
        w.input(0, Input::AuthVerdict { request, verdict: Ok(principal.into()) });
        w.settle();
    };
    answer(&mut w, 100);
    let id = w.clients[c].session.clone().unwrap();
    w.run_for(Duration::from_secs(50));
    w.cut(c, Some(Duration::ZERO));
    w.settle();
    w.connect(c);
    w.settle();
    answer(&mut w, 300);
    assert!(w.clients[c].resumed()[0].state_valid);
    assert_eq!(w.nodes[0].hub.connection(&id).unwrap().state, ConnectionState::Active);
    // The old token would have expired at 100 s; the new one governs.
    w.run_for(Duration::from_secs(200));
    assert_eq!(w.clients[c].closes, [None], "only the cut so far");
    w.run_for(Duration::from_secs(101));
    assert_eq!(w.clients[c].closes, [None, Some(CloseCode::TOKEN_EXPIRED)]);
    // The temporary session was reported closed.
    let merged = w.nodes[0]
        .events
        .iter()
        .filter(|e| matches!(e, HubEvent::ConnectionClosed { reason: "resumed_other_session", .. }))
        .count();
    assert_eq!(merged, 1);
}

#[test]
fn debug_output_never_shows_a_refresh_token() {
    let (mut w, _g, c) = connected(HubConfig::default());
    w.client_send_message(c, types::AUTH_REFRESH, r#"{"token":"eyJsecret"}"#);
    let frame = w.clients[c].socket.map(|socket| Input::Text {
        socket,
        frame: bytes::Bytes::from_static(b"{\"token\":\"eyJsecret\"}"),
    });
    assert!(!format!("{frame:?}").contains("secret"));
    let envelope = switchboard_core::protocol::Envelope::create(
        switchboard_core::protocol::Source::Client,
        MessageType::new(types::AUTH_REFRESH).unwrap(),
        Payload::from_json(r#"{"token":"eyJsecret"}"#).unwrap(),
        switchboard_core::protocol::Timestamp::UNIX_EPOCH,
        1,
    );
    assert!(!format!("{envelope:?}").contains("secret"));
    let input = switchboard_core::client::ClientInput::Token {
        token: "eyJsecret".into(),
        expires_at_unix_ms: None,
    };
    assert!(!format!("{input:?}").contains("secret"));
}
