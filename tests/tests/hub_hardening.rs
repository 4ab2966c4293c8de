//! The hub tried as an attacker and as an operator would (the hardening issue): the system
//! plane's own budget, invalid frames by rate, a cap on one user's sessions, and a slow consumer
//! that loses nothing with the default limits. Each of these failed on the hub before the fix.

use std::time::Duration;
use switchboard_core::protocol::{CloseCode, types};
use switchboard_core::server::{ConnectionState, HubConfig, HubEvent, Input, Principal};
use switchboard_tests::sim::{SeedGuard, World, seed_or};

fn world(config: HubConfig) -> (World, SeedGuard) {
    let seed = seed_or(0x4a2d);
    (World::new(seed, 1, config), SeedGuard(seed))
}

fn state(w: &World, client: usize) -> Option<ConnectionState> {
    let id = w.clients[client].session.clone()?;
    w.nodes[0].hub.connection(&id).map(|i| i.state)
}

fn ping(w: &mut World, client: usize) {
    let payload = format!(r#"{{"timestamp":"{}"}}"#, w.wall());
    w.client_send_message(client, types::PING, &payload);
}

#[test]
fn nine_bad_frames_and_a_ping_over_and_over_still_close_4012() {
    let (mut w, _g) = world(HubConfig::default());
    let c = w.connect_new("mallory", Some("conv-1"), 0);
    w.settle();
    for _ in 0..5 {
        for _ in 0..9 {
            w.client_send(c, b"nope".to_vec());
        }
        ping(&mut w, c);
        w.settle();
    }
    assert_eq!(
        w.clients[c].closes,
        [Some(CloseCode::TOO_MANY_INVALID_MESSAGES)],
        "a valid frame now and then does not buy unlimited invalid ones"
    );
}

#[test]
fn unknown_system_types_count_as_invalid_frames() {
    let (mut w, _g) = world(HubConfig::default());
    let c = w.connect_new("mallory", Some("conv-1"), 0);
    w.settle();
    for _ in 0..10 {
        w.client_send_message(c, "system.made.up", "{}");
    }
    w.settle();
    assert_eq!(w.clients[c].closes, [Some(CloseCode::TOO_MANY_INVALID_MESSAGES)]);
    // Server-to-client types from a client are no better.
    let d = w.connect_new("mallory", Some("conv-1"), 0);
    w.settle();
    for _ in 0..10 {
        w.client_send_message(d, types::CONNECTION_ESTABLISHED, "{}");
    }
    w.settle();
    assert_eq!(w.clients[d].closes, [Some(CloseCode::TOO_MANY_INVALID_MESSAGES)]);
}

#[test]
fn the_system_plane_has_a_budget_of_its_own() {
    let (mut w, _g) = world(HubConfig::default());
    let c = w.connect_new("mallory", Some("conv-1"), 0);
    w.settle();
    for _ in 0..500 {
        ping(&mut w, c);
    }
    w.settle();
    let errors = w.clients[c].errors();
    assert!(errors.iter().any(|e| e.code == "RATE_LIMITED" && e.retry_after_ms.is_some()));
    assert_eq!(w.clients[c].closes, [Some(CloseCode::RATE_LIMITED)], "sustained abuse closes");
    assert!(w.clients[c].system_of(types::PONG).len() < 500);
}

#[test]
fn one_user_cannot_hold_every_session_slot() {
    let config = HubConfig::default();
    let cap = 100;
    let (mut w, _g) = world(config);
    let held: Vec<usize> = (0..cap).map(|_| w.connect_new("hog", None, 0)).collect();
    w.settle();
    assert!(held.iter().all(|&c| state(&w, c) == Some(ConnectionState::Active)));
    let one_more = w.connect_new("hog", None, 0);
    w.settle();
    assert_eq!(w.clients[one_more].closes, [Some(CloseCode::SERVER_BUSY)]);
    assert!(
        held.iter().all(|&c| state(&w, c) == Some(ConnectionState::Active)),
        "the new one is refused"
    );
    // Someone else is not affected.
    let other = w.connect_new("alice", None, 0);
    w.settle();
    assert_eq!(state(&w, other), Some(ConnectionState::Active));
    // A parked session of the user makes room: the oldest parked one is let go.
    w.cut(held[3], Some(Duration::from_millis(10)));
    w.run_for(Duration::from_millis(20));
    assert_eq!(state(&w, held[3]), Some(ConnectionState::Reconnecting));
    let again = w.connect_new("hog", None, 0);
    w.settle();
    assert_eq!(state(&w, again), Some(ConnectionState::Active));
    assert_eq!(state(&w, held[3]), None, "the parked session made room");
}

#[test]
fn a_slow_consumer_cut_off_with_the_default_limits_resumes_without_loss() {
    let (mut w, _g) = world(HubConfig::default());
    let slow = w.connect_new("sloth", Some("conv-1"), 0);
    let fast = w.connect_new("hare", Some("conv-1"), 0);
    w.settle();
    w.clients[slow].reconnect_after = Some(Duration::from_millis(800));
    let mut published = vec![w.publish(0, "conv-1", None)];
    w.settle();
    w.set_reading(slow, false);
    // A fast publisher: one message a millisecond until the hub cuts the sloth off.
    for _ in 0..20_000 {
        published.push(w.publish(0, "conv-1", None));
        w.run_for(Duration::from_millis(1));
        if w.nodes[0].events.iter().any(|e| matches!(e, HubEvent::SlowConsumer { .. })) {
            break;
        }
    }
    assert!(
        w.nodes[0].events.iter().any(|e| matches!(e, HubEvent::SlowConsumer { .. })),
        "a client that reads nothing is cut off"
    );
    // The publisher goes on a little while the sloth is away.
    for _ in 0..100 {
        published.push(w.publish(0, "conv-1", None));
        w.run_for(Duration::from_millis(1));
    }
    w.set_reading(slow, true);
    w.run_for(Duration::from_secs(5));
    assert_eq!(w.clients[slow].closes, [Some(CloseCode::SLOW_CONSUMER)]);
    assert!(w.clients[slow].resumed().iter().all(|r| r.state_valid), "resumed without a gap");
    assert_eq!(w.clients[slow].gaps, 0);
    assert_eq!(w.clients[slow].duplicates, 0);
    assert_eq!(w.clients[slow].numbers(), published, "every message once, in order");
    assert_eq!(w.clients[fast].numbers(), published);
}

#[test]
fn the_clock_leeway_is_the_verifiers_and_the_hubs_alike() {
    let (mut w, _g) = world(HubConfig::default());
    w.auth = switchboard_tests::sim::AuthMode::Hang;
    let c = w.connect_new("alice", None, 0);
    w.settle();
    // The verifier accepted a token that expired 10 s ago (within its 30 s of leeway): the hub
    // does not call it expired either, and closes 4001 when the leeway is over.
    let request = w.nodes[0].hub_verifies().pop().expect("a verification");
    let mut principal = Principal::user("alice");
    let wall = switchboard_tests::sim::WALL_START_MS + w.now.as_millis() as i64;
    principal.expires_at_unix_ms = Some(wall - 10_000);
    w.input(0, Input::AuthVerdict { request, verdict: Ok(principal.into()) });
    w.settle();
    assert_eq!(state(&w, c), Some(ConnectionState::Active));
    w.run_for(Duration::from_millis(19_900));
    assert!(w.clients[c].closes.is_empty());
    w.run_for(Duration::from_millis(200));
    assert_eq!(w.clients[c].closes, [Some(CloseCode::TOKEN_EXPIRED)]);
}

#[test]
fn a_resume_into_another_conversation_is_a_join_and_is_asked_for() {
    let (mut w, _g) = world(HubConfig::default());
    for refuse in [false, true] {
        let user = if refuse { "bob" } else { "alice" };
        let c = w.connect_new(user, Some("conv-a"), 0);
        w.settle();
        let old = w.clients[c].session.clone().unwrap();
        w.cut(c, Some(Duration::ZERO));
        w.run_for(Duration::from_millis(10));
        let n = w.publish(0, "conv-a", None);
        if refuse {
            w.forbidden.insert("conv-a".to_owned());
        }
        // Back on a socket opened for another conversation, asking for the old session.
        w.clients[c].conversation = Some("conv-b".to_owned());
        w.connect(c);
        w.settle();
        let resumed = w.clients[c].resumed();
        assert_eq!(resumed.len(), 1);
        assert_eq!(resumed[0].state_valid, !refuse, "refused: {refuse}");
        let refused = w.nodes[0].events.iter().any(|e| {
            matches!(e, HubEvent::JoinRefused { conversation_id, .. } if conversation_id.as_str() == "conv-a")
        });
        assert_eq!(refused, refuse);
        if refuse {
            assert_eq!(w.nodes[0].hub.connection(&old), None, "the old session is let go");
            assert!(!w.clients[c].numbers().contains(&n), "nothing of conv-a was given");
        } else {
            assert_eq!(w.clients[c].numbers(), [n], "replayed after the join was allowed");
        }
    }
}
