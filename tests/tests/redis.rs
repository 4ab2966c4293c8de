//! Several `switchboard` processes sharing channels through a real `redis-server` (DESIGN.md
//! §3), on real sockets: fan-out across instances with positions, per-user delivery, subscribing
//! only where members are, starting while Redis is down, Redis killed and restarted empty,
//! Redis paused, subscribers cut by Redis, and a deaf subscriber found by the probe. (The same
//! model in the simulator: `bus.rs`.)
//!
//! The oracle throughout: every member gets each message at most once, in its channel's order
//! (at least per publishing instance), and a message it did not get is covered by a
//! `system.channel.reset` it did get. No test asserts a duration: they poll with generous
//! limits.

use serde_json::{Value, json};
use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};
use switchboard_core::protocol::{ChannelReset, Envelope, SystemMessage, types};
use switchboard_tests::balancer::Balancer;
use switchboard_tests::redis::{RedisProcess, eventually};
use switchboard_tests::server::{Keys, Seen, ServerProcess, TestClient, claims, jwk, sign};

const EXE: &str = env!("CARGO_BIN_EXE_switchboard-under-test");
const KEY: &str = "k3y";
const TYPE: &str = "data.test.message";

/// A `switchboard` on a free port, sharing `redis`, with the publish API, relaying `data.*`,
/// the test hooks, and a short linger; one hub (these tests count what one instance does on
/// the bus).
fn instance(redis: &RedisProcess) -> ServerProcess {
    instance_at(&[&redis.url()])
}

/// [`instance`], with Redis at `urls` (the shards, in order).
fn instance_at(urls: &[&str]) -> ServerProcess {
    let keys = Keys::load();
    let mut args = vec![
        "--api-key",
        KEY,
        "--bus-linger",
        "1s",
        "--relay",
        "data.*",
        "--test-hooks",
        "--threads",
        "1",
    ];
    for url in urls {
        args.extend(["--redis-url", url]);
    }
    ServerProcess::start(EXE, &[jwk(&keys.primary, "sig")], &args)
}

fn health(server: &ServerProcess) -> String {
    server.try_http("GET", "/healthz").map(|(_, body)| body.trim().to_owned()).unwrap_or_default()
}

/// Polls until the instance says its bus is healthy (link up, every subscription confirmed).
fn wait_healthy(servers: &[&ServerProcess]) {
    for server in servers {
        assert!(
            eventually(60, || health(server) == "ok"),
            "the instance on {} did not become healthy: {:?}",
            server.addr,
            health(server)
        );
    }
}

fn metrics(server: &ServerProcess) -> String {
    server.try_http("GET", "/metrics").map(|(_, body)| body).unwrap_or_default()
}

/// The value of a metric line (`name{labels} value`), 0 when absent.
fn metric(server: &ServerProcess, line_start: &str) -> f64 {
    metrics(server)
        .lines()
        .find_map(|l| l.strip_prefix(line_start).map(str::trim))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn publish(server: &ServerProcess, body: Value) -> (u16, Value) {
    let (status, body) = server.http(
        "POST",
        "/api/publish",
        &[("Authorization", &format!("Bearer {KEY}")), ("Content-Type", "application/json")],
        &body.to_string(),
    );
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Publishes message `n` to `conversation` through `server`'s API.
fn say(server: &ServerProcess, conversation: &str, n: u64, via: &str) {
    let body = json!({"conversationId": conversation,
        "message": {"type": TYPE, "payload": {"n": n, "via": via}}});
    let (status, answer) = publish(server, body);
    assert_eq!(status, 200, "publish {n} through {via}: {answer}");
}

/// Publishes message `n` to every session of `user` through `server`'s API.
fn tell(server: &ServerProcess, user: &str, n: u64, via: &str) {
    let body = json!({"userId": user, "message": {"type": TYPE, "payload": {"n": n, "via": via}}});
    let (status, answer) = publish(server, body);
    assert_eq!(status, 200, "publish {n} to {user} through {via}: {answer}");
}

/// One member's socket and what it got: the test messages in order, and the resets.
struct Member {
    name: String,
    client: TestClient,
    got: Vec<Envelope>,
    resets: Vec<ChannelReset>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.name)
            .field("got", &self.numbers())
            .field("resets", &self.resets)
            .finish()
    }
}

fn join(server: &ServerProcess, user: &str, conversation: &str) -> Member {
    let token = sign(&Keys::load().primary, &claims(user));
    let mut client =
        TestClient::connect(server.addr, &format!("token={token}&conversation_id={conversation}"));
    let established = client.message();
    assert_eq!(established.message_type, types::CONNECTION_ESTABLISHED, "{established:?}");
    Member { name: format!("{user}@{}", server.addr), client, got: Vec::new(), resets: Vec::new() }
}

fn payload(envelope: &Envelope) -> Value {
    serde_json::from_str(envelope.payload.as_str()).expect("a JSON payload")
}

impl Member {
    /// Reads until `done` holds; whether it did within `seconds`.
    fn read_until(&mut self, seconds: u64, done: impl Fn(&Member) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.client.next_within(left.min(Duration::from_secs(1))) {
                Some(Seen::Message(envelope)) => self.take(*envelope),
                Some(Seen::Closed(code)) => panic!("{} was closed ({code:?})", self.name),
                None => {}
            }
        }
        true
    }

    /// Reads until it got every message in `numbers` (asserted, within 30 s).
    fn expect(&mut self, numbers: impl IntoIterator<Item = u64>) {
        let wanted: BTreeSet<u64> = numbers.into_iter().collect();
        let got = self.read_until(30, |m| wanted.iter().all(|n| m.numbers().contains(n)));
        assert!(got, "{} is missing some of {wanted:?}: {self:?}", self.name);
    }

    fn take(&mut self, envelope: Envelope) {
        if envelope.message_type == TYPE {
            self.got.push(envelope);
        } else if envelope.message_type == types::CHANNEL_RESET {
            match SystemMessage::from_envelope(&envelope) {
                Ok(SystemMessage::ChannelReset(reset)) => self.resets.push(reset),
                other => panic!("a malformed reset: {other:?}"),
            }
        }
    }

    /// The `n` of every test message got, in order.
    fn numbers(&self) -> Vec<u64> {
        self.got.iter().map(|e| payload(e)["n"].as_u64().expect("n")).collect()
    }

    /// The instance each message came through, in order, with its number.
    fn by_origin(&self) -> Vec<(String, u64)> {
        self.got
            .iter()
            .map(|e| {
                let p = payload(e);
                (p["via"].as_str().unwrap_or_default().to_owned(), p["n"].as_u64().unwrap())
            })
            .collect()
    }

    /// The oracle: nothing twice; each publishing instance's messages in the order it
    /// published them; and if any of `published` is missing, a reset was received.
    fn check(&self, published: impl IntoIterator<Item = u64>) {
        let numbers = self.numbers();
        let unique: HashSet<u64> = numbers.iter().copied().collect();
        assert_eq!(unique.len(), numbers.len(), "{} got a message twice: {self:?}", self.name);
        let origins: BTreeSet<String> = self.by_origin().into_iter().map(|(o, _)| o).collect();
        for origin in origins {
            let theirs: Vec<u64> = self
                .by_origin()
                .into_iter()
                .filter(|(o, _)| *o == origin)
                .map(|(_, n)| n)
                .collect();
            assert!(
                theirs.windows(2).all(|w| w[0] < w[1]),
                "{} got {origin}'s messages out of order: {theirs:?}",
                self.name
            );
        }
        let missing: Vec<u64> = published.into_iter().filter(|n| !unique.contains(n)).collect();
        assert!(
            missing.is_empty() || !self.resets.is_empty(),
            "{} is missing {missing:?} without being told (no system.channel.reset): {self:?}",
            self.name
        );
    }

    /// Resets whose reason is not one of `allowed`.
    fn resets_other_than(&self, allowed: &[&str]) -> Vec<ChannelReset> {
        self.resets.iter().filter(|r| !allowed.contains(&r.reason.as_str())).cloned().collect()
    }
}

/// Two instances sharing `redis`, with alice on the first and bob on the second in
/// `conversation`, both subscribed and healthy.
fn two_members(
    redis: &RedisProcess,
    conversation: &str,
) -> (ServerProcess, ServerProcess, Member, Member) {
    let (a, b) = (instance(redis), instance(redis));
    let alice = join(&a, "alice", conversation);
    let bob = join(&b, "bob", conversation);
    wait_subscribers(redis, &format!("sb:{{conversation:{conversation}}}"), 2);
    wait_healthy(&[&a, &b]);
    (a, b, alice, bob)
}

/// Waits until `channel` has `count` subscribers on Redis.
fn wait_subscribers(redis: &RedisProcess, channel: &str, count: u64) {
    assert!(
        eventually(30, || redis.numsub(channel) == count),
        "{channel} has {} subscribers, not {count}",
        redis.numsub(channel)
    );
}

#[test]
fn a_conversation_across_two_instances_gets_every_message_once_in_one_order() {
    let redis = RedisProcess::start();
    let (a, b) = (instance(&redis), instance(&redis));
    let mut members = vec![join(&a, "alice", "c1"), join(&a, "amy", "c1"), join(&b, "bob", "c1")];
    wait_subscribers(&redis, "sb:{conversation:c1}", 2);
    wait_healthy(&[&a, &b]);

    for n in 1..=12 {
        match n % 2 {
            1 => say(&a, "c1", n, "A"),
            _ => say(&b, "c1", n, "B"),
        }
    }
    // Relayed by clients on either instance.
    members[0].client.send(TYPE, r#"{"n":13,"via":"alice"}"#);
    members[2].client.send(TYPE, r#"{"n":14,"via":"bob"}"#);
    for member in &mut members {
        member.expect(1..=14);
    }
    // A last one: whatever would have come twice would have come before it.
    say(&b, "c1", 15, "B");
    for member in &mut members {
        member.expect([15]);
        member.check(1..=15);
        assert_eq!(member.numbers().len(), 15, "{member:?}");
        assert!(member.resets.is_empty(), "nothing was lost: {member:?}");
    }
    let order = members[0].numbers();
    for member in &members {
        assert_eq!(member.numbers(), order, "one order for every member: {member:?}");
        let positions: Vec<_> = member.got.iter().map(|e| e.position.clone().unwrap()).collect();
        assert!(positions.iter().all(|p| p.channel == "conversation:c1"), "{positions:?}");
        assert!(positions.iter().all(|p| p.epoch == positions[0].epoch), "{positions:?}");
        let offsets: Vec<u64> = positions.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, (1..=15).collect::<Vec<_>>(), "offsets without holes");
    }
    assert_eq!(redis.cli(&["HGET", "sb:{conversation:c1}:m", "top"]), "15");
    assert_eq!(redis.cli(&["XLEN", "sb:{conversation:c1}:s"]), "15");
}

#[test]
fn a_user_with_sockets_on_two_instances_gets_their_messages_on_both_once() {
    let redis = RedisProcess::start();
    let (a, b) = (instance(&redis), instance(&redis));
    let mut sockets = vec![join(&a, "carol", "c2"), join(&b, "carol", "c3")];
    wait_subscribers(&redis, "sb:{user:carol}", 2);
    wait_healthy(&[&a, &b]);
    tell(&a, "carol", 1, "A");
    tell(&b, "carol", 2, "B");
    tell(&a, "carol", 3, "A");
    for socket in &mut sockets {
        socket.expect(1..=3);
        socket.check(1..=3);
        assert_eq!(socket.numbers().len(), 3, "once each: {socket:?}");
        let positions: Vec<_> = socket.got.iter().map(|e| e.position.clone().unwrap()).collect();
        assert!(positions.iter().all(|p| p.channel == "user:carol"), "{positions:?}");
        let offsets: Vec<u64> = positions.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, [1, 2, 3]);
    }
    assert_eq!(sockets[0].numbers(), sockets[1].numbers(), "one order");
}

#[test]
fn an_instance_subscribes_a_conversation_only_while_it_has_members_of_it() {
    let redis = RedisProcess::start();
    let (a, b) = (instance(&redis), instance(&redis));
    wait_healthy(&[&a, &b]);
    let channel = "sb:{conversation:c4}";
    assert_eq!(redis.numsub(channel), 0, "no member, no subscription");
    let on_a = join(&a, "alice", "c4");
    wait_subscribers(&redis, channel, 1);
    let on_b = join(&b, "bob", "c4");
    wait_subscribers(&redis, channel, 2);
    let second_on_a = join(&a, "amy", "c4");
    // Refcounted: one subscription per instance however many members it has.
    assert!(!eventually(2, || redis.numsub(channel) != 2), "still one subscription each");
    on_a.client.close_with(1000);
    second_on_a.client.close_with(1000);
    wait_subscribers(&redis, channel, 1);
    on_b.client.close_with(1000);
    wait_subscribers(&redis, channel, 0);
    // The instances' own channels stay.
    assert_eq!(redis.numsub("sb:{broadcast}"), 2);
}

#[test]
fn an_instance_starts_while_redis_is_down_serves_locally_and_links_up_later() {
    let mut redis = RedisProcess::not_started();
    let a = instance(&redis);
    assert!(health(&a).starts_with("degraded (bus:"), "{:?}", health(&a));
    assert_eq!(metric(&a, "switchboard_bus_up "), 0.0);
    let mut alice = join(&a, "alice", "c5");
    say(&a, "c5", 1, "A");
    alice.expect([1]);

    redis.restart();
    wait_healthy(&[&a]);
    assert_eq!(metric(&a, "switchboard_bus_up "), 1.0);
    let b = instance(&redis);
    let mut bob = join(&b, "bob", "c5");
    wait_subscribers(&redis, "sb:{conversation:c5}", 2);
    wait_healthy(&[&a, &b]);
    say(&a, "c5", 2, "A");
    say(&b, "c5", 3, "B");
    alice.expect([2, 3]);
    bob.expect([2, 3]);
    alice.check(1..=3);
    bob.check(2..=3);
    assert_eq!(bob.numbers().len(), 2, "{bob:?}");
    assert!(bob.resets.is_empty(), "{bob:?}");
    // Alice got message 1 before Redis placed it: she may be told the order may have differed.
    assert!(alice.resets_other_than(&["bus_degraded"]).is_empty(), "{alice:?}");
}

#[test]
fn redis_killed_and_restarted_empty_loses_nothing_silently() {
    let mut redis = RedisProcess::start();
    let (a, b) = (instance(&redis), instance(&redis));
    let mut alice = join(&a, "alice", "c6");
    let mut bob = join(&b, "bob", "c6");
    wait_subscribers(&redis, "sb:{conversation:c6}", 2);
    wait_healthy(&[&a, &b]);
    let through = |n: u64| if n % 2 == 1 { (&a, "A") } else { (&b, "B") };
    for n in 1..=10 {
        let (server, via) = through(n);
        say(server, "c6", n, via);
    }

    redis.kill();
    for n in 11..=20 {
        let (server, via) = through(n);
        say(server, "c6", n, via);
    }
    // Local delivery goes on while Redis is down.
    alice.expect((11..=20).filter(|n| n % 2 == 1));
    bob.expect((11..=20).filter(|n| n % 2 == 0));

    redis.restart();
    wait_subscribers(&redis, "sb:{conversation:c6}", 2);
    wait_healthy(&[&a, &b]);
    for n in 21..=30 {
        let (server, via) = through(n);
        say(server, "c6", n, via);
    }
    for member in [&mut alice, &mut bob] {
        member.expect(21..=30);
        member.check(1..=30);
    }
    // Redis came back empty: the channel starts a new epoch, which members are told of.
    assert!(!bob.resets.is_empty() || bob.numbers().len() == 30, "{bob:?}");
}

#[test]
fn a_paused_redis_blocks_nothing_and_everything_converges() {
    let redis = RedisProcess::start();
    let (a, b, mut alice, mut bob) = two_members(&redis, "c7");
    say(&a, "c7", 1, "A");
    say(&b, "c7", 2, "B");
    alice.expect([1, 2]);
    bob.expect([1, 2]);

    redis.pause();
    // The publish API answers and local members get their messages within the pause.
    say(&a, "c7", 3, "A");
    alice.expect([3]);
    say(&b, "c7", 4, "B");
    bob.expect([4]);
    // Paused until the instances noticed (their link went down).
    assert!(eventually(60, || health(&a).starts_with("degraded")), "{:?}", health(&a));
    say(&a, "c7", 5, "A");
    alice.expect([5]);
    redis.resume();

    wait_healthy(&[&a, &b]);
    say(&a, "c7", 6, "A");
    say(&b, "c7", 7, "B");
    for member in [&mut alice, &mut bob] {
        member.expect(1..=7);
        member.check(1..=7);
        assert_eq!(member.numbers().len(), 7, "all once: {member:?}");
        // Nothing was lost; a member may be told that the order it got some messages in (those
        // delivered before Redis placed them) may differ from the channel's.
        assert!(member.resets_other_than(&["bus_degraded"]).is_empty(), "{member:?}");
    }
}

/// Redis stops answering without a signal: `CLIENT PAUSE` (every client's commands wait) and
/// `DEBUG SLEEP` (the server itself blocks). Nothing on the instances waits for it, and once it
/// answers again everything converges, nothing lost.
#[test]
fn client_pause_and_debug_sleep_block_nothing_and_everything_converges() {
    let redis = RedisProcess::start();
    let (a, b, mut alice, mut bob) = two_members(&redis, "c17");
    let mut n = 0;
    let stalls: [&[&str]; 2] = [&["CLIENT", "PAUSE", "3000", "ALL"], &["DEBUG", "SLEEP", "3"]];
    for stall in stalls {
        std::thread::scope(|scope| {
            let stalled = scope.spawn(|| redis.cli(stall));
            std::thread::sleep(Duration::from_millis(200));
            // Meanwhile the publish API answers and local members get their messages.
            for (server, member, via) in [(&a, &mut alice, "A"), (&b, &mut bob, "B")] {
                n += 1;
                say(server, "c17", n, via);
                member.expect([n]);
            }
            assert_eq!(stalled.join().unwrap(), "OK", "{stall:?}");
        });
        wait_healthy(&[&a, &b]);
        n += 1;
        say(&a, "c17", n, "A");
    }
    for member in [&mut alice, &mut bob] {
        member.expect(1..=n);
        member.check(1..=n);
        assert_eq!(member.numbers().len(), n as usize, "all once: {member:?}");
        assert!(member.resets_other_than(&["bus_degraded"]).is_empty(), "{member:?}");
    }
}

#[test]
fn subscribers_cut_by_redis_are_resubscribed_and_lose_nothing() {
    let redis = RedisProcess::start();
    let (a, b, mut alice, mut bob) = two_members(&redis, "c8");
    say(&a, "c8", 1, "A");
    say(&b, "c8", 2, "B");
    alice.expect([1, 2]);
    bob.expect([1, 2]);

    let killed: u64 = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).parse().unwrap();
    assert!(killed >= 2, "both instances' subscribers were cut ({killed})");
    for n in 3..=8 {
        match n % 2 {
            1 => say(&a, "c8", n, "A"),
            _ => say(&b, "c8", n, "B"),
        }
    }
    wait_subscribers(&redis, "sb:{conversation:c8}", 2);
    wait_healthy(&[&a, &b]);
    say(&a, "c8", 9, "A");
    say(&b, "c8", 10, "B");
    for member in [&mut alice, &mut bob] {
        member.expect(1..=10);
        member.check(1..=10);
        assert_eq!(member.numbers().len(), 10, "all once: {member:?}");
        assert!(member.resets_other_than(&["bus_degraded"]).is_empty(), "{member:?}");
    }
}

#[test]
fn a_deaf_subscriber_is_found_by_the_probe_and_renewed_and_loses_nothing() {
    let redis = RedisProcess::start();
    let (a, b, mut alice, mut bob) = two_members(&redis, "c9");
    say(&b, "c9", 1, "B");
    alice.expect([1]);
    bob.expect([1]);
    assert_eq!(metric(&a, "switchboard_bus_subscriber_renewals_total "), 0.0);

    let (status, _) =
        a.http("POST", "/debug/bus/deaf", &[("Authorization", &format!("Bearer {KEY}"))], "");
    assert_eq!(status, 200);
    for n in 2..=4 {
        say(&b, "c9", n, "B");
    }
    bob.expect(2..=4);
    // Alice's instance hears nothing until its probe finds the subscriber deaf and renews it;
    // the sweep that follows reads what it missed from the history.
    alice.expect(2..=4);
    assert!(metric(&a, "switchboard_bus_subscriber_renewals_total ") >= 1.0, "{}", metrics(&a));
    say(&b, "c9", 5, "B");
    for member in [&mut alice, &mut bob] {
        member.expect([5]);
        member.check(1..=5);
        assert_eq!(member.numbers(), [1, 2, 3, 4, 5], "{member:?}");
        assert!(member.resets.is_empty(), "history covered the gap: {member:?}");
    }
}

#[test]
fn the_deaf_hook_needs_the_flag_and_the_key() {
    let redis = RedisProcess::start();
    let keys = Keys::load();
    let url = redis.url();
    let plain = ServerProcess::start(
        EXE,
        &[jwk(&keys.primary, "sig")],
        &["--api-key", KEY, "--redis-url", &url],
    );
    let auth = format!("Bearer {KEY}");
    let (status, _) = plain.http("POST", "/debug/bus/deaf", &[("Authorization", &auth)], "");
    assert_eq!(status, 404, "no hook without --test-hooks");
    let hooked = instance(&redis);
    let (status, _) = hooked.http("POST", "/debug/bus/deaf", &[], "");
    assert_eq!(status, 401, "the hook wants the API key");
}

#[test]
fn a_backend_publishes_by_calling_the_function_directly() {
    let redis = RedisProcess::start();
    let a = instance(&redis);
    let mut alice = join(&a, "alice", "c10");
    let channel = "sb:{conversation:c10}";
    wait_subscribers(&redis, channel, 1);
    wait_healthy(&[&a]);
    say(&a, "c10", 1, "A");
    alice.expect([1]);

    let (fcall, message) = backend_call(channel, "c10", 2);
    let (meta, stream, key) = (&fcall[3], &fcall[4], &fcall[5]);
    let fcall: Vec<&str> = fcall.iter().map(String::as_str).collect();
    let answer = redis.cli(&fcall);
    assert_eq!(answer.lines().nth(1), Some("2"), "offset 2: {answer}");
    assert_eq!(
        redis.cli(&fcall),
        answer,
        "a retry is answered as the first call, not placed again"
    );
    let key_ttl: i64 = redis.cli(&["TTL", key]).parse().unwrap();
    assert!((1..=300).contains(&key_ttl), "an idempotency key lives 5 minutes: {key_ttl}");
    say(&a, "c10", 3, "A");
    alice.expect([2, 3]);
    alice.check(1..=3);
    assert_eq!(alice.numbers(), [1, 2, 3], "{alice:?}");
    assert!(alice.resets.is_empty(), "{alice:?}");
    let offsets: Vec<u64> = alice.got.iter().map(|e| e.position.as_ref().unwrap().offset).collect();
    assert_eq!(offsets, [1, 2, 3]);
    assert_eq!(alice.got[1].id.as_str(), "backend-2");
    let read = redis.cli(&["FCALL_RO", "switchboard_read", "2", meta, stream, "1", "10"]);
    let lines: Vec<&str> = read.lines().collect();
    assert_eq!((lines[1], lines[2]), ("3", "2"), "top 3, then the entry at offset 2: {read}");
    assert_eq!(lines[3], message);
}

/// An instance's publish names the one before it that still waits for an answer (a fourth
/// key): the function refuses it, and does nothing, until that one is placed. A retry of a
/// placed publish is answered whatever it names.
#[test]
fn the_publish_function_refuses_a_publish_whose_predecessor_is_not_placed() {
    let redis = RedisProcess::start();
    let a = instance(&redis); // Loads the functions.
    wait_healthy(&[&a]);
    let channel = "sb:{conversation:c21}";
    let with_after = |n: u64, after: &str| {
        let (mut fcall, _) = backend_call(channel, "c21", n);
        fcall[2] = "4".into();
        fcall.insert(6, format!("{channel}:k:{after}"));
        fcall
    };
    let call = |fcall: &[String]| {
        let fcall: Vec<&str> = fcall.iter().map(String::as_str).collect();
        redis.try_cli(&fcall).unwrap_or_default()
    };
    let refused = call(&with_after(2, "backend-1"));
    assert!(refused.contains("ORDER"), "{refused}");
    assert_eq!(redis.cli(&["EXISTS", &format!("{channel}:m")]), "0", "nothing done");
    let (first, _) = backend_call(channel, "c21", 1);
    assert_eq!(call(&first).lines().nth(1), Some("1"));
    let second = call(&with_after(2, "backend-1"));
    assert_eq!(second.lines().nth(1), Some("2"), "{second}");
    assert_eq!(call(&with_after(2, "backend-7")), second, "a retry is answered as before");
}

/// What README.md's "Several instances" tells a backend to send to publish message `n` to
/// `conversation` on `channel` itself: the `FCALL` (id `backend-<n>`), and the message.
fn backend_call(channel: &str, conversation: &str, n: u64) -> (Vec<String>, String) {
    let id = format!("backend-{n}");
    let frame = json!({"id": id, "version": "1.0", "type": TYPE,
        "timestamp": "2026-11-29T10:00:00.000Z", "source": "server", "conversationId": conversation,
        "payload": {"n": n, "via": "backend"}});
    let message =
        json!({"id": id, "origin": "backend", "except": null, "frame": frame}).to_string();
    let fcall = [
        "FCALL",
        "switchboard_publish",
        "3",
        &format!("{channel}:m"),
        &format!("{channel}:s"),
        &format!("{channel}:k:{id}"),
        channel,
        &message,
        "1000",
        "3600",
    ];
    (fcall.iter().map(|s| s.to_string()).collect(), message)
}

/// A Redis failover that lost the last writes: the replica stops replicating before messages 4
/// and 5 (a replica paused with `SIGSTOP` would not do: the kernel keeps what the master sent,
/// and the replica reads it when it resumes), the master is killed, the replica becomes the
/// master, and the address the instances use moves to it (what Sentinel or a virtual IP
/// does). A backend publishes twice on the promoted replica before the instances are back:
/// offsets 4 and 5 are given again, the channel's top is where the instances left it, and the
/// epoch is the same. Each instance must see that the message at its cursor is another one and
/// reset the channel, never drop the new messages as copies of the old.
#[test]
fn a_failover_that_lost_the_last_writes_is_a_reset_never_reused_offsets() {
    let mut master = RedisProcess::start();
    let replica = RedisProcess::start();
    replica.cli(&["REPLICAOF", "127.0.0.1", &master.port.to_string()]);
    let linked = || replica.cli(&["INFO", "replication"]).contains("master_link_status:up");
    assert!(eventually(30, linked), "the replica did not link up");
    let at = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let vip = Balancer::start(vec![at(master.port)]);
    let url = format!("redis://{}", vip.addr);
    let (a, b) = (instance_at(&[&url]), instance_at(&[&url]));
    let mut alice = join(&a, "alice", "c20");
    let mut bob = join(&b, "bob", "c20");
    let channel = "sb:{conversation:c20}";
    wait_subscribers(&master, channel, 2);
    wait_healthy(&[&a, &b]);
    for n in 1..=3 {
        say(&a, "c20", n, "A");
    }
    alice.expect(1..=3);
    bob.expect(1..=3);
    assert_eq!(master.cli(&["WAIT", "1", "10000"]), "1", "the replica has 1 to 3");

    replica.cli(&["REPLICAOF", "NO", "ONE"]);
    for n in 4..=5 {
        say(&a, "c20", n, "A");
    }
    alice.expect(4..=5);
    bob.expect(4..=5);
    master.kill();
    for n in 6..=7 {
        let (fcall, _) = backend_call(channel, "c20", n);
        let fcall: Vec<&str> = fcall.iter().map(String::as_str).collect();
        let answer = replica.cli(&fcall);
        assert_eq!(answer.lines().nth(1), Some(&*(n - 2).to_string()), "{answer}");
    }
    vip.send_to(vec![at(replica.port)]);
    wait_healthy(&[&a, &b]);
    say(&a, "c20", 8, "A");
    for member in [&mut alice, &mut bob] {
        member.expect([8]);
        member.check(1..=8);
        let reasons: Vec<&str> = member.resets.iter().map(|r| r.reason.as_str()).collect();
        assert!(reasons.contains(&"rolled_back"), "{member:?}");
    }
}

/// Resumes `user`'s session (`connection_id`, with the last sequence and position of what it
/// `got`) on a new socket to `server`: the `system.connection.resumed` it gets, and the member.
fn resume_on(
    server: &ServerProcess,
    user: &str,
    got: &[Envelope],
    connection_id: &str,
) -> (Value, Member) {
    let last = got.last().expect("something to resume after");
    let conversation = last.conversation_id.as_ref().unwrap().as_str().to_owned();
    let position = last.position.clone().expect("a position");
    let mut again = join(server, user, &conversation);
    let resume = json!({"conversationId": conversation, "lastMessageId": null,
        "lastItemIndex": 0, "clientState": {"pendingWidgetIds": []},
        "connectionId": connection_id, "lastSequence": last.sequence.unwrap(),
        "positions": [position]});
    again.client.send(types::CONNECTION_RESUME, &resume.to_string());
    let resumed = loop {
        let envelope = again.client.message();
        if envelope.message_type == types::CONNECTION_RESUMED {
            break serde_json::from_str(envelope.payload.as_str()).unwrap();
        }
        again.take(envelope);
    };
    (resumed, again)
}

/// A member joined to `conversation` on `server`, with its connection id.
fn connection_id_of(server: &ServerProcess, user: &str, conversation: &str) -> (String, Member) {
    let token = sign(&Keys::load().primary, &claims(user));
    let mut client =
        TestClient::connect(server.addr, &format!("token={token}&conversation_id={conversation}"));
    let established = client.message();
    let payload: Value = serde_json::from_str(established.payload.as_str()).unwrap();
    let id = payload["connectionId"].as_str().expect("a connection id").to_owned();
    let name = format!("{user}@{}", server.addr);
    (id, Member { name, client, got: Vec::new(), resets: Vec::new() })
}

/// Checks a resumed member: the replay continues the session's sequence from where it was,
/// holds exactly `missed`, and nothing is reset.
fn check_resumed(resumed: &Value, after: &mut Member, last_sequence: u64, missed: &[u64]) {
    assert_eq!(resumed["stateValid"], true, "{resumed}");
    assert_eq!(resumed["missedMessages"].as_u64(), Some(missed.len() as u64), "{resumed}");
    after.expect(missed.iter().copied());
    assert_eq!(after.numbers(), missed, "{after:?}");
    let sequences: Vec<u64> = after.got.iter().map(|e| e.sequence.unwrap()).collect();
    let expected: Vec<u64> = (last_sequence + 1..=last_sequence + missed.len() as u64).collect();
    assert_eq!(sequences, expected, "the session's sequence continues");
    assert!(after.resets.is_empty(), "{after:?}");
}

#[test]
fn a_session_resumes_on_another_instance_with_exactly_what_it_missed() {
    let redis = RedisProcess::start();
    let (a, b) = (instance(&redis), instance(&redis));
    let (id, mut alice) = connection_id_of(&a, "alice", "c11");
    let mut bob = join(&b, "bob", "c11");
    wait_subscribers(&redis, "sb:{conversation:c11}", 2);
    wait_healthy(&[&a, &b]);
    for n in 1..=3 {
        say(&a, "c11", n, "A");
    }
    alice.expect(1..=3);
    bob.expect(1..=3);
    let Member { client, got, .. } = alice;
    client.cut();
    for n in 4..=6 {
        say(&b, "c11", n, "B");
    }
    bob.expect(4..=6);
    // Alice's last message was 3, through A; she comes back through B.
    let last_sequence = got.last().unwrap().sequence.unwrap();
    let (resumed, mut after) = resume_on(&b, "alice", &got, &id);
    check_resumed(&resumed, &mut after, last_sequence, &[4, 5, 6]);
    // The session now lives on B (A let its copy go): a message through A reaches it once.
    say(&a, "c11", 7, "A");
    bob.expect([7]);
    say(&b, "c11", 8, "B");
    after.expect([7, 8]);
    assert_eq!(after.numbers(), [4, 5, 6, 7, 8], "{after:?}");
    assert_eq!(after.got.last().unwrap().sequence, Some(last_sequence + 5));
    let generation = redis.cli(&["HGET", &format!("sb:{{session:{id}}}"), "generation"]);
    assert!(generation.parse::<u64>().unwrap() >= 1, "B claimed it: {generation}");
}

#[test]
fn a_killed_instances_sessions_resume_on_another_without_losing_a_message() {
    let redis = RedisProcess::start();
    let (mut a, b) = (instance(&redis), instance(&redis));
    let (id, mut alice) = connection_id_of(&a, "alice", "c12");
    let mut bob = join(&b, "bob", "c12");
    wait_subscribers(&redis, "sb:{conversation:c12}", 2);
    wait_healthy(&[&a, &b]);
    for n in 1..=3 {
        say(&b, "c12", n, "B");
    }
    alice.expect(1..=3);
    a.kill(); // SIGKILL: nothing is written at the end.
    for n in 4..=6 {
        say(&b, "c12", n, "B");
    }
    bob.expect(4..=6);
    let last_sequence = alice.got.last().unwrap().sequence.unwrap();
    let (resumed, mut after) = resume_on(&b, "alice", &alice.got, &id);
    check_resumed(&resumed, &mut after, last_sequence, &[4, 5, 6]);
    say(&b, "c12", 7, "B");
    after.expect([7]);
    assert_eq!(after.numbers(), [4, 5, 6, 7], "{after:?}");
}

/// Two shards: each conversation's keys and pub/sub live on the shard the jump hash names (and
/// only there), fan-out and resume-anywhere work across them, and a shard that dies degrades
/// its own channels only: the other shard's members hear of nothing.
#[test]
fn channels_are_sharded_over_two_redis_and_one_shard_failing_touches_only_its_own() {
    use switchboard_core::server::shard_of;
    let mut shards = [RedisProcess::start(), RedisProcess::start()];
    let urls = [shards[0].url(), shards[1].url()];
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let (a, b) = (instance_at(&urls), instance_at(&urls));
    // Two conversations on each shard.
    let mut on: [Vec<String>; 2] = Default::default();
    for i in 0.. {
        let conversation = format!("s{i}");
        let shard = shard_of(&format!("conversation:{conversation}"), 2);
        if on[shard].len() < 2 {
            on[shard].push(conversation);
        }
        if on.iter().all(|c| c.len() == 2) {
            break;
        }
    }
    let conversations: Vec<(usize, String)> =
        on.iter().enumerate().flat_map(|(s, cs)| cs.iter().map(move |c| (s, c.clone()))).collect();
    let mut members: Vec<(usize, Member, Member)> = conversations
        .iter()
        .map(|(shard, c)| {
            (*shard, join(&a, &format!("alice-{c}"), c), join(&b, &format!("bob-{c}"), c))
        })
        .collect();
    for (shard, c) in &conversations {
        let channel = format!("sb:{{conversation:{c}}}");
        wait_subscribers(&shards[*shard], &channel, 2);
        assert_eq!(shards[1 - shard].numsub(&channel), 0, "{channel} only on shard {shard}");
    }
    wait_healthy(&[&a, &b]);
    for (_, c) in &conversations {
        say(&a, c, 1, "A");
        say(&b, c, 2, "B");
    }
    for (_, alice, bob) in &mut members {
        alice.expect(1..=2);
        bob.expect(1..=2);
    }
    // The publish API answers before the bus has the message: its history is looked at once
    // each instance's members got the other's (which came through Redis).
    for (shard, c) in &conversations {
        let channel = format!("sb:{{conversation:{c}}}");
        let (shard, other) = (&shards[*shard], &shards[1 - shard]);
        assert_eq!(shard.cli(&["HGET", &format!("{channel}:m"), "top"]), "2", "{c}'s history");
        assert_eq!(other.cli(&["EXISTS", &format!("{channel}:m")]), "0", "{c} is not on the other");
    }

    // A session resumes on the other instance: its record is on the shard of its key.
    let (_, c) = &conversations[0];
    let (id, mut carol) = connection_id_of(&a, "carol", c);
    say(&a, c, 3, "A");
    carol.expect([3]);
    for (_, alice, bob) in &mut members[..1] {
        alice.expect([3]);
        bob.expect([3]);
    }
    let sequence = carol.got.last().unwrap().sequence.unwrap();
    carol.client.cut();
    say(&b, c, 4, "B");
    let (resumed, mut again) = resume_on(&b, "carol", &carol.got, &id);
    check_resumed(&resumed, &mut again, sequence, &[4]);
    let session_shard = shard_of(&format!("session:{id}"), 2);
    let key = format!("sb:{{session:{id}}}");
    assert_eq!(shards[session_shard].cli(&["EXISTS", &key]), "1", "the record on its shard");
    assert_eq!(shards[1 - session_shard].cli(&["EXISTS", &key]), "0");

    // Shard 1 dies: its channels degrade, shard 0's go on without a word.
    shards[1].kill();
    assert!(eventually(30, || health(&a).contains("shard 1")), "{}", health(&a));
    for (shard, c) in &conversations {
        if *shard == 0 {
            say(&a, c, 10, "A");
        }
    }
    for (shard, alice, bob) in &mut members {
        if *shard == 0 {
            alice.expect([10]);
            bob.expect([10]);
        }
    }
    shards[1].restart();
    wait_healthy(&[&a, &b]);
    for (_, c) in &conversations {
        say(&b, c, 11, "B");
    }
    for (shard, alice, bob) in &mut members {
        for member in [alice, bob] {
            member.expect([11]);
            if *shard == 0 {
                assert!(member.resets.is_empty(), "shard 0 was never touched: {member:?}");
            }
        }
    }
}

/// What one native client saw: the test messages' `n` in order, gaps, and whether it resumed.
#[derive(Debug, Default)]
struct NativeLog {
    got: Vec<u64>,
    gaps: usize,
    resumed: usize,
    connected: usize,
    /// Everything else it was told (closes, gaps, errors), for the report of a failure.
    said: Vec<String>,
}

/// A graceful drain (SIGTERM) behind a load balancer: the drained instance tells its clients
/// it is going away, they come back through the balancer to the other instance, resume their
/// sessions there (taken over from Redis), and get every message published meanwhile exactly
/// once, in order, without a gap.
#[test]
fn a_drained_instances_clients_resume_on_the_other_with_nothing_lost() {
    use switchboard_core::client::{ClientConfig, ClientEvent, TokenSource};
    use switchboard_smol::client::NativeClient;
    let redis = RedisProcess::start();
    let (mut a, b) = (instance(&redis), instance(&redis));
    let balancer = Balancer::start(vec![a.addr, b.addr]);
    let keys = Keys::load();
    let clients: Vec<(NativeClient, std::sync::Arc<std::sync::Mutex<NativeLog>>)> = (0..16)
        .map(|i| {
            let mut config = ClientConfig::new(format!("ws://{}/ws", balancer.addr));
            config.token = TokenSource::Static(sign(&keys.primary, &claims(&format!("d{i}"))));
            config.conversation_id = Some("drain".to_owned());
            let client = NativeClient::start(config);
            let seen = std::sync::Arc::new(std::sync::Mutex::new(NativeLog::default()));
            let (events, log) = (client.events().clone(), seen.clone());
            smol::spawn(async move {
                while let Ok((_, event)) = events.recv().await {
                    let mut log = log.lock().unwrap();
                    match event {
                        ClientEvent::Connected { resumed, .. } => {
                            log.connected += 1;
                            log.resumed += usize::from(resumed);
                            log.said.push(format!("{event:?}"));
                        }
                        ClientEvent::Message { message, .. } => {
                            let frame: Value = serde_json::from_slice(&message.frame).unwrap();
                            log.got.extend(frame["payload"]["n"].as_u64());
                        }
                        ClientEvent::Gap { .. } => {
                            log.gaps += 1;
                            log.said.push(format!("{event:?}"));
                        }
                        ClientEvent::StateChange(_) => {}
                        _ => log.said.push(format!("{event:?}")),
                    }
                }
            })
            .detach();
            (client, seen)
        })
        .collect();
    let all_connected = || clients.iter().all(|(_, s)| s.lock().unwrap().connected == 1);
    assert!(eventually(30, all_connected), "every client connects");
    wait_subscribers(&redis, "sb:{conversation:drain}", 2);
    wait_healthy(&[&a, &b]);

    let mut n = 0;
    for _ in 0..20 {
        n += 1;
        say(&b, "drain", n, "B");
    }
    // The balancer stops sending new connections to A (its readiness went), and A drains
    // while messages keep coming.
    balancer.send_to(vec![b.addr]);
    let published: Vec<u64> = std::thread::scope(|scope| {
        let publisher = scope.spawn(|| {
            for n in 21..=120 {
                say(&b, "drain", n, "B");
                std::thread::sleep(Duration::from_millis(10));
            }
            (21..=120).collect()
        });
        std::thread::sleep(Duration::from_millis(100));
        let status = a.terminate();
        assert!(status.success(), "a drained instance exits cleanly: {status:?}");
        publisher.join().unwrap()
    });
    let every: Vec<u64> = (1..=20).chain(published).collect();
    let all_got = || clients.iter().all(|(_, s)| s.lock().unwrap().got.len() >= every.len());
    eventually(30, all_got);
    let mut moved = 0;
    for (i, (_, seen)) in clients.iter().enumerate() {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.got, every, "client {i}: every message once, in order: {seen:?}");
        assert_eq!(seen.gaps, 0, "client {i}: no gap: {seen:?}");
        if seen.connected > 1 {
            assert_eq!(seen.resumed, seen.connected - 1, "client {i} resumed: {seen:?}");
            moved += 1;
        }
    }
    assert!(moved > 0, "some clients were on the drained instance");
}

/// A subscriber too slow for Redis's `client-output-buffer-limit pubsub` (set tiny here) is cut
/// by Redis: instance A is stopped (`SIGSTOP`) while a flood is published to a conversation it
/// subscribes, until Redis drops A's subscriber connection. Messages of another conversation
/// published meanwhile were on that connection; once A runs again it must notice, subscribe
/// everything again and sweep, and its member of the quiet conversation gets them all, once.
#[test]
fn a_subscriber_cut_for_its_output_buffer_is_resubscribed_and_loses_nothing() {
    let redis = RedisProcess::start();
    redis.cli(&["CONFIG", "SET", "client-output-buffer-limit", "pubsub 256kb 0 0"]);
    let (a, b) = (instance(&redis), instance(&redis));
    let mut alice = join(&a, "alice", "calm");
    let mut bob = join(&b, "bob", "calm");
    let fiona = join(&a, "fiona", "flood"); // never reads: she only keeps A subscribed
    let flood = "sb:{conversation:flood}";
    wait_subscribers(&redis, "sb:{conversation:calm}", 2);
    wait_subscribers(&redis, flood, 1);
    wait_healthy(&[&a, &b]);
    say(&b, "calm", 1, "B");
    alice.expect([1]);

    a.pause();
    let big = "x".repeat(64 << 10);
    let mut flooded = 0;
    while redis.numsub(flood) > 0 {
        assert!(flooded < 2_000, "Redis never cut the stopped subscriber");
        let body = json!({"conversationId": "flood",
            "message": {"type": TYPE, "payload": {"n": flooded, "pad": big}}});
        let (status, answer) = publish(&b, body);
        assert_eq!(status, 200, "{answer}");
        flooded += 1;
    }
    for n in 2..=4 {
        say(&b, "calm", n, "B");
    }
    a.resume();

    alice.expect(2..=4);
    bob.expect(1..=4);
    alice.check(1..=4);
    assert_eq!(alice.numbers(), [1, 2, 3, 4], "{alice:?}");
    assert!(alice.resets.is_empty(), "the history covered it all: {alice:?}");
    wait_subscribers(&redis, flood, 1);
    wait_healthy(&[&a]);
    drop(fiona);
}
