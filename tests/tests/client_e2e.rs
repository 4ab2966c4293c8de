//! The real client core against the real hub in the simulator: chaos, the herd, and
//! reconnection after outages.

use std::collections::BTreeMap;
use std::time::Duration;
use switchboard_core::client::{BackoffConfig, ClientConfig, ClientInput, ClientState};
use switchboard_core::rng::Rng;
use switchboard_core::server::HubConfig;
use switchboard_core::time::Instant;
use switchboard_tests::sim::{SeedGuard, World, seed_or};

fn config(conversation: &str) -> ClientConfig {
    let mut config = ClientConfig::new("ws://sim/ws");
    config.conversation_id = Some(conversation.to_owned());
    config
}

/// Connects `n` core clients spread over `conversations`, and waits until all are active.
fn connect_all(
    w: &mut World,
    n: usize,
    conversations: usize,
    backoff: BackoffConfig,
) -> Vec<usize> {
    let clients: Vec<usize> = (0..n)
        .map(|i| {
            let mut config = config(&format!("conv-{}", i % conversations));
            config.backoff = backoff;
            w.add_core_client(&format!("user-{i}"), config, 0)
        })
        .collect();
    for &c in &clients {
        w.core_input(c, ClientInput::Connect);
    }
    w.run_for(Duration::from_secs(2));
    assert!(clients.iter().all(|&c| w.core[c].state == ClientState::Active));
    clients
}

/// Each client's messages, split at its gaps, must be unbroken runs of what its conversation
/// got, with nothing twice.
fn check_epochs(w: &World, client: usize, published: &[u64]) {
    let position: BTreeMap<u64, usize> =
        published.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let timeline = &w.core[client].timeline;
    let mut seen = std::collections::BTreeSet::new();
    for epoch in timeline.split(Option::is_none) {
        let indices: Vec<usize> = epoch.iter().map(|n| position[&n.unwrap()]).collect();
        for pair in indices.windows(2) {
            assert_eq!(pair[1], pair[0] + 1, "client {client}: a message lost without a gap event");
        }
        for n in epoch.iter().flatten() {
            assert!(seen.insert(*n), "client {client}: message {n} delivered twice");
        }
    }
}

#[test]
fn chaos_loses_nothing_inside_the_window_and_reports_every_gap() {
    let seed = seed_or(0xc4a05);
    let _guard = SeedGuard(seed);
    let mut w = World::new(seed, 1, HubConfig::default());
    w.latency_ms = (1, 40);
    let conversations = 5;
    let clients = connect_all(&mut w, 40, conversations, BackoffConfig::default());
    let mut rng = Rng::new(seed ^ 0x1234);
    let mut next_cut: Vec<Instant> =
        clients.iter().map(|_| w.now + Duration::from_millis(1_000 + rng.up_to(9_000))).collect();
    let mut published: Vec<Vec<u64>> = vec![Vec::new(); conversations];
    // 10^5 by default; SWITCHBOARD_CHAOS_MESSAGES runs longer or shorter.
    let total: usize = std::env::var("SWITCHBOARD_CHAOS_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let restart_every = 20_000;
    let mut restarts = 0;
    for i in 0..total {
        let conversation = i % conversations;
        published[conversation].push(w.publish(0, &format!("conv-{conversation}"), None));
        if i % restart_every == restart_every / 2 {
            // The server process dies and comes back 3 s later: every session is lost.
            w.crash(0);
            w.run_for(Duration::from_secs(3));
            w.restart(0);
            restarts += 1;
        }
        w.run_for(Duration::from_millis(10));
        for (k, &c) in clients.iter().enumerate() {
            if next_cut[k] <= w.now {
                next_cut[k] = w.now + Duration::from_millis(1_000 + rng.up_to(9_000));
                let notice = match rng.up_to(2) {
                    0 => None,
                    1 => Some(Duration::ZERO),
                    _ => Some(Duration::from_millis(rng.up_to(5_000))),
                };
                w.cut_core(c, notice);
            }
        }
    }
    w.run_for(Duration::from_secs(60));
    let mut delivered = 0;
    for &c in &clients {
        assert_eq!(w.core[c].state, ClientState::Active, "client {c} ends active");
        let conversation = c % conversations;
        check_epochs(&w, c, &published[conversation]);
        assert_eq!(w.core[c].gaps, restarts, "client {c}: one gap per restart, none otherwise");
        let last = *published[conversation].last().unwrap();
        assert_eq!(w.core[c].received().last(), Some(&last), "client {c} caught up");
        delivered += w.core[c].received().len();
    }
    println!(
        "chaos: {} messages published, {} delivered to {} clients, {} restarts, {} simulated seconds, {} steps",
        published.iter().map(Vec::len).sum::<usize>(),
        delivered,
        clients.len(),
        restarts,
        w.now.as_millis() / 1000,
        w.steps
    );
}

/// Connection attempts per 100 ms after the server returns, and how long clients took to be
/// active again.
struct Herd {
    peak_per_100ms: usize,
    p99_ms: u64,
    max_attempts: usize,
}

fn herd(clients: usize, outage: Duration, backoff: BackoffConfig, seed: u64) -> Herd {
    let mut w = World::new(
        seed,
        1,
        HubConfig { max_connections: 200_000, max_pending_auths: 200_000, ..HubConfig::default() },
    );
    w.latency_ms = (1, 5);
    let ids = connect_all(&mut w, clients, 100, backoff);
    let before: Vec<usize> = ids.iter().map(|&c| w.core[c].attempts_at.len()).collect();
    w.crash(0);
    w.run_for(outage);
    w.restart(0);
    let back = w.now;
    w.run_for(Duration::from_secs(120));
    let mut buckets: BTreeMap<u64, usize> = BTreeMap::new();
    let mut reconnect_ms = Vec::new();
    let mut max_attempts = 0;
    for (&c, &b) in ids.iter().zip(&before) {
        let attempts = &w.core[c].attempts_at[b..];
        max_attempts = max_attempts.max(attempts.len());
        for at in attempts.iter().filter(|at| **at >= back) {
            *buckets.entry((at.as_millis() - back.as_millis()) / 100).or_default() += 1;
        }
        let active = w.core[c].active_at.last().copied().expect("active again");
        assert!(active >= back);
        reconnect_ms.push(active.as_millis() - back.as_millis());
    }
    reconnect_ms.sort_unstable();
    Herd {
        peak_per_100ms: buckets.values().copied().max().unwrap_or(0),
        p99_ms: reconnect_ms[reconnect_ms.len() * 99 / 100],
        max_attempts,
    }
}

#[test]
fn the_herd_comes_back_spread_out() {
    let seed = seed_or(0x4e4d);
    let _guard = SeedGuard(seed);
    let n = 10_000;
    let default_30 = herd(n, Duration::from_secs(30), BackoffConfig::default(), seed);
    let default_5 = herd(n, Duration::from_secs(5), BackoffConfig::default(), seed);
    let phase1_30 = herd(n, Duration::from_secs(30), BackoffConfig::phase1(), seed);
    let phase1_5 = herd(n, Duration::from_secs(5), BackoffConfig::phase1(), seed);
    for (name, h) in [
        ("default, 30 s", &default_30),
        ("default, 5 s", &default_5),
        ("phase 1, 30 s", &phase1_30),
        ("phase 1, 5 s", &phase1_5),
    ] {
        println!(
            "herd of {n}, {name} outage: peak {} attempts/100 ms, p99 reconnect {} ms, at most {} attempts",
            h.peak_per_100ms, h.p99_ms, h.max_attempts
        );
    }
    assert!(
        default_30.peak_per_100ms <= 150,
        "default jitter peaks at {} per 100 ms",
        default_30.peak_per_100ms
    );
    assert!(phase1_30.peak_per_100ms > default_30.peak_per_100ms, "the comparison means something");
    assert!(default_5.max_attempts <= 5, "a 5 s outage is survived within 5 attempts");
}

#[test]
fn reconnection_succeeds_within_five_attempts_after_a_five_second_outage() {
    let seed = seed_or(5);
    let _guard = SeedGuard(seed);
    let mut w = World::new(seed, 1, HubConfig::default());
    w.latency_ms = (1, 20);
    let clients = connect_all(&mut w, 500, 10, BackoffConfig::default());
    let before: Vec<usize> = clients.iter().map(|&c| w.core[c].attempts_at.len()).collect();
    w.crash(0);
    w.run_for(Duration::from_secs(5));
    w.restart(0);
    w.run_for(Duration::from_secs(60));
    for (&c, &b) in clients.iter().zip(&before) {
        assert_eq!(w.core[c].state, ClientState::Active);
        let attempts = w.core[c].attempts_at.len() - b;
        assert!(attempts <= 5, "client {c} needed {attempts} attempts");
    }
}

#[test]
fn random_interleavings_keep_one_socket_per_client() {
    let seed = seed_or(0x51);
    let _guard = SeedGuard(seed);
    let mut w = World::new(seed, 1, HubConfig::default());
    w.latency_ms = (0, 80);
    let clients = connect_all(&mut w, 20, 2, BackoffConfig::default());
    let mut rng = Rng::new(seed);
    for _ in 0..5_000 {
        let c = clients[rng.up_to(clients.len() as u64 - 1) as usize];
        match rng.up_to(9) {
            0 => w.core_input(c, ClientInput::Online),
            1 => w.core_input(c, ClientInput::Offline),
            2 => w.core_input(c, ClientInput::Visible),
            3 => w.core_input(c, ClientInput::Hidden),
            4 => w.core_input(c, ClientInput::ReconnectNow),
            5 => w.cut_core(c, Some(Duration::from_millis(rng.up_to(100)))),
            6 => w.cut_core(c, None),
            7 => {
                w.publish(0, "conv-0", None);
            }
            8 if rng.up_to(200) == 0 => {
                w.crash(0);
                w.run_for(Duration::from_millis(rng.up_to(3_000)));
                w.restart(0);
            }
            _ => {}
        }
        w.run_for(Duration::from_millis(rng.up_to(300)));
    }
    // The assertion that matters runs after every client input inside the world: never two
    // sockets. At the end, everyone who is online gets back.
    for &c in &clients {
        w.core_input(c, ClientInput::Online);
    }
    w.run_for(Duration::from_secs(120));
    for &c in &clients {
        assert_eq!(w.core[c].state, ClientState::Active, "client {c}");
    }
}
