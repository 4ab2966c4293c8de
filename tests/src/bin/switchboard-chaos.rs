//! The chaos run: three `switchboard` processes sharing one real `redis-server` (or channels
//! sharded over several, `--shards N`), a few hundred native clients behind a small TCP load
//! balancer, a publisher at a steady rate, and a seeded schedule of faults (socket cuts,
//! instance SIGKILL and restart, SIGTERM drains, a Redis paused, its subscriber connections
//! killed, or killed and restarted empty). At the end it prints what was published and what
//! every client got, and exits non-zero if any client lost a message without being told (a
//! gap) or got one twice.
//!
//! ```sh
//! cargo run --release -p switchboard-tests --bin switchboard-chaos -- --seconds 60
//! cargo run --release -p switchboard-tests --bin switchboard-chaos -- --seed 7 --seconds 300 --clients 300
//! cargo run --release -p switchboard-tests --bin switchboard-chaos -- --shards 2
//! ```
//!
//! The oracle, per client: every message published (acknowledged by the publish API) to its
//! conversation after the client's first connection is expected once. A missing one is
//! *signalled* if the client was told of a gap (a channel reset, a refused resume, a sequence
//! jump) after the message was published; otherwise it was *lost silently*. A publish that was
//! not acknowledged (its instance died under it) is not expected, and getting it is no fault.
//! The same seed gives the same schedule of faults (the processes' timing still varies).

use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard_core::client::{ClientConfig, ClientEvent, TokenSource};
use switchboard_smol::client::NativeClient;
use switchboard_tests::balancer::Balancer;
use switchboard_tests::redis::RedisProcess;
use switchboard_tests::server::{Keys, ServerProcess, claims, jwk, sign};

const KEY: &str = "chaos-key";
const TYPE: &str = "data.chaos.message";
const INSTANCES: usize = 3;

/// The command line.
#[derive(Debug, Clone)]
struct Args {
    seed: u64,
    seconds: u64,
    clients: usize,
    conversations: usize,
    /// Publishes per second, over all conversations.
    rate: u64,
    /// Redis processes the channels are sharded over.
    shards: usize,
}

fn args() -> Args {
    let mut args = Args {
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000),
        seconds: 60,
        clients: 240,
        conversations: 24,
        rate: 40,
        shards: 1,
    };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let value = words.next().and_then(|v| v.parse::<u64>().ok());
        let Some(value) = value else { usage(&flag) };
        match flag.as_str() {
            "--seed" => args.seed = value,
            "--seconds" => args.seconds = value,
            "--clients" => args.clients = value as usize,
            "--conversations" => args.conversations = value.max(1) as usize,
            "--rate" => args.rate = value.max(1),
            "--shards" => args.shards = value.clamp(1, 8) as usize,
            _ => usage(&flag),
        }
    }
    args
}

fn usage(flag: &str) -> ! {
    eprintln!(
        "switchboard-chaos: bad argument {flag:?}\nusage: switchboard-chaos [--seed N] [--seconds N] [--clients N] [--conversations N] [--rate N] [--shards N]"
    );
    std::process::exit(2)
}

/// splitmix64: the schedule's randomness, from the seed alone.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Cut this many client sockets at random (no close frame).
    CutSockets(usize),
    /// SIGKILL an instance; it is started again after a while.
    Kill(usize),
    /// SIGTERM an instance (a graceful drain); it is started again after a while.
    Drain(usize),
    /// SIGSTOP a Redis shard for this many ms, then SIGCONT.
    PauseRedis(usize, u64),
    /// `CLIENT KILL TYPE pubsub` on a shard: every instance's subscriber connection is cut.
    KillSubscribers(usize),
    /// SIGKILL a Redis shard and start it again empty.
    RestartRedis(usize),
}

/// The schedule: a fault every 2 to 5 s, from the seed.
fn schedule(seed: u64, seconds: u64, shards: usize) -> Vec<(Duration, Fault)> {
    let mut rng = Rng(seed);
    let mut at = Duration::from_secs(3);
    let mut faults = Vec::new();
    while at + Duration::from_secs(8) < Duration::from_secs(seconds) {
        let fault = match rng.below(100) {
            0..=34 => Fault::CutSockets(1 + rng.below(20) as usize),
            35..=49 => Fault::Kill(rng.below(INSTANCES as u64) as usize),
            50..=64 => Fault::Drain(rng.below(INSTANCES as u64) as usize),
            65..=79 => {
                let shard = rng.below(shards as u64) as usize;
                Fault::PauseRedis(shard, 200 + rng.below(1_500))
            }
            80..=92 => Fault::KillSubscribers(rng.below(shards as u64) as usize),
            _ => Fault::RestartRedis(rng.below(shards as u64) as usize),
        };
        faults.push((at, fault));
        at += Duration::from_millis(2_000 + rng.below(3_000));
    }
    faults
}

/// What one client saw.
#[derive(Debug, Default)]
struct Log {
    conversation: usize,
    /// When it first became active (messages published before are not expected).
    first_active: Option<Instant>,
    /// The `n` of every test message, in order.
    got: Vec<u64>,
    /// When it was told of gaps.
    gaps: Vec<Instant>,
    /// Everything it saw, as text, for the report of a failure.
    trace: Vec<String>,
}

/// The cluster under test: the Redis, the instances, and where the load balancer sends new
/// connections.
struct Cluster {
    exe: PathBuf,
    jwks: Vec<Value>,
    /// The shards, in order.
    redis: Vec<RedisProcess>,
    instances: Vec<Option<ServerProcess>>,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Cluster {
    fn start_instance(&mut self, i: usize) {
        let urls: Vec<String> = self.redis.iter().map(RedisProcess::url).collect();
        let mut args = vec!["--api-key", KEY, "--bus-linger", "2s"];
        for url in &urls {
            args.extend(["--redis-url", url]);
        }
        let exe = self.exe.to_str().expect("a UTF-8 path");
        self.instances[i] = Some(ServerProcess::start(exe, &self.jwks, &args));
        self.publish_backends();
    }

    fn publish_backends(&self) {
        let live = self.instances.iter().flatten().map(|s| s.addr).collect();
        *self.backends.lock().unwrap() = live;
    }

    fn live(&self) -> Vec<SocketAddr> {
        self.backends.lock().unwrap().clone()
    }
}

/// Cuts `count` of the balancer's open connections, chosen by `rng`.
fn cut(balancer: &Balancer, rng: &mut Rng, count: usize) {
    for _ in 0..count {
        let open = balancer.open();
        if open.is_empty() {
            return;
        }
        balancer.cut(open[rng.below(open.len() as u64) as usize]);
    }
}

/// A token that outlives the run.
fn token(keys: &Keys, user: &str, seconds: u64) -> String {
    let mut claims = claims(user);
    claims["exp"] = json!(claims["iat"].as_u64().unwrap_or(0) + seconds + 600);
    sign(&keys.primary, &claims)
}

/// Publishes message `n` to `conversation` through a live instance; whether it was
/// acknowledged.
fn publish(cluster: &Cluster, rng: &mut Rng, conversation: usize, n: u64) -> bool {
    let live = cluster.live();
    if live.is_empty() {
        return false;
    }
    let at = live[rng.below(live.len() as u64) as usize];
    let body = json!({"conversationId": format!("chaos-{conversation}"),
        "message": {"type": TYPE, "payload": {"n": n}}})
    .to_string();
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&at, Duration::from_secs(2)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

fn main() {
    let args = args();
    println!("switchboard-chaos: seed {} ({args:?})", args.seed);
    let exe = std::env::current_exe().expect("own path").with_file_name("switchboard-under-test");
    assert!(
        exe.exists(),
        "{} is built beside switchboard-chaos (cargo build -p switchboard-tests)",
        exe.display()
    );
    let keys = Keys::load();
    let balancer = Balancer::start(Vec::new());
    let mut cluster = Cluster {
        exe,
        jwks: vec![jwk(&keys.primary, "sig")],
        redis: (0..args.shards).map(|_| RedisProcess::start()).collect(),
        instances: (0..INSTANCES).map(|_| None).collect(),
        backends: balancer.backends.clone(),
    };
    for i in 0..INSTANCES {
        cluster.start_instance(i);
    }

    // The clients, each logging what it gets.
    let logs: Vec<Arc<Mutex<Log>>> = (0..args.clients)
        .map(|i| {
            Arc::new(Mutex::new(Log { conversation: i % args.conversations, ..Log::default() }))
        })
        .collect();
    let mut clients = Vec::new();
    let origin = Instant::now();
    for (i, log) in logs.iter().enumerate() {
        let conversation = i % args.conversations;
        let mut config = ClientConfig::new(format!("ws://{}/ws", balancer.addr));
        config.token = TokenSource::Static(token(&keys, &format!("u{i}"), args.seconds));
        config.conversation_id = Some(format!("chaos-{conversation}"));
        let client = NativeClient::start(config);
        let (events, log) = (client.events().clone(), log.clone());
        smol::spawn(async move {
            while let Ok((_, event)) = events.recv().await {
                let mut log = log.lock().unwrap();
                match &event {
                    ClientEvent::Connected { .. } => {
                        log.first_active.get_or_insert_with(Instant::now);
                    }
                    ClientEvent::Message { message, .. }
                        if message.message_type.as_str() == TYPE =>
                    {
                        let frame: Value =
                            serde_json::from_slice(&message.frame).unwrap_or_default();
                        if let Some(n) = frame["payload"]["n"].as_u64() {
                            log.got.push(n);
                        }
                        let (p, s) = (&message.position, message.sequence);
                        let n = &frame["payload"]["n"];
                        let t = origin.elapsed().as_secs_f64();
                        log.trace.push(format!("{t:8.3}s message {n} at {p:?} sequence {s:?}"));
                        continue;
                    }
                    ClientEvent::Gap { .. } => log.gaps.push(Instant::now()),
                    _ => {}
                }
                if !matches!(event, ClientEvent::StateChange(_)) {
                    log.trace.push(format!("{:8.3}s {event:?}", origin.elapsed().as_secs_f64()));
                }
            }
        })
        .detach();
        clients.push(client);
    }
    let settled = Instant::now() + Duration::from_secs(30);
    while logs.iter().any(|l| l.lock().unwrap().first_active.is_none()) {
        assert!(Instant::now() < settled, "not every client connected within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("{} clients connected across {} conversations", args.clients, args.conversations);

    // The publisher and the faults, on this thread.
    let faults = schedule(args.seed, args.seconds, args.shards);
    let mut rng = Rng(args.seed ^ 0x5eed);
    let mut published: Vec<(u64, usize, Instant)> = Vec::new();
    let mut unacknowledged = 0u64;
    let mut restarts: Vec<(Instant, usize)> = Vec::new();
    let mut paused: Option<(usize, Instant)> = None;
    let start = Instant::now();
    println!("(faults are timed from {:.3}s of the clients' logs)", (start - origin).as_secs_f64());
    let interval = Duration::from_micros(1_000_000 / args.rate);
    let mut next_fault = 0;
    let mut n = 0u64;
    let stop_publishing = start + Duration::from_secs(args.seconds);
    while Instant::now() < stop_publishing {
        let now = Instant::now();
        while next_fault < faults.len() && start + faults[next_fault].0 <= now {
            let fault = faults[next_fault].1;
            println!("{:>6.1}s  {fault:?}", (now - start).as_secs_f64());
            match fault {
                Fault::CutSockets(count) => cut(&balancer, &mut rng, count),
                Fault::Kill(i) | Fault::Drain(i) => {
                    if let Some(mut server) = cluster.instances[i].take() {
                        cluster.publish_backends();
                        match fault {
                            Fault::Kill(_) => server.kill(),
                            _ => drop(server.terminate()),
                        }
                        restarts.push((now + Duration::from_secs(3), i));
                    }
                }
                Fault::PauseRedis(shard, ms) if paused.is_none() => {
                    cluster.redis[shard].pause();
                    paused = Some((shard, now + Duration::from_millis(ms)));
                }
                Fault::PauseRedis(..) => {}
                Fault::KillSubscribers(shard) if paused.is_none_or(|(p, _)| p != shard) => {
                    let _ = cluster.redis[shard].try_cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
                }
                Fault::KillSubscribers(_) => {}
                Fault::RestartRedis(shard) => {
                    if paused.is_some_and(|(p, _)| p == shard) {
                        paused = None;
                    }
                    cluster.redis[shard].restart();
                }
            }
            next_fault += 1;
        }
        if let Some((shard, until)) = paused
            && until <= now
        {
            cluster.redis[shard].resume();
            paused = None;
        }
        restarts.retain(|&(at, i)| {
            if at <= now {
                cluster.start_instance(i);
                false
            } else {
                true
            }
        });
        n += 1;
        let conversation = rng.below(args.conversations as u64) as usize;
        if publish(&cluster, &mut rng, conversation, n) {
            published.push((n, conversation, Instant::now()));
        } else {
            unacknowledged += 1;
        }
        let due = start + interval * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    if let Some((shard, _)) = paused {
        cluster.redis[shard].resume();
    }
    for (_, i) in restarts {
        cluster.start_instance(i);
    }

    // Quiet: let every client converge (reconnect, resume, repair gaps), then stop when no
    // client has got anything for 3 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = usize::MAX;
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let total: usize = logs
            .iter()
            .map(|l| {
                let log = l.lock().unwrap();
                log.got.len() + log.gaps.len()
            })
            .sum();
        if total != last {
            last = total;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_secs(3) {
            break;
        }
    }

    // The verdict.
    let mut by_conversation: HashMap<usize, Vec<(u64, Instant)>> = HashMap::new();
    for &(n, conversation, at) in &published {
        by_conversation.entry(conversation).or_default().push((n, at));
    }
    let (mut expected, mut once, mut duplicated, mut signalled, mut silent) = (0, 0, 0, 0, 0);
    let mut gaps = 0;
    let mut examples = Vec::new();
    let mut failing = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let log = log.lock().unwrap();
        let faults_before = (silent, duplicated);
        gaps += log.gaps.len();
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for &n in &log.got {
            *counts.entry(n).or_default() += 1;
        }
        let twice: Vec<u64> = counts.iter().filter(|(_, c)| **c > 1).map(|(n, _)| *n).collect();
        duplicated += counts.values().filter(|&&c| c > 1).map(|c| c - 1).sum::<usize>();
        if !twice.is_empty() && examples.len() < 10 {
            examples.push(format!("client u{i} (chaos-{}) got {twice:?} twice:", log.conversation));
        }
        let Some(joined) = log.first_active else { continue };
        for &(n, at) in by_conversation.get(&log.conversation).into_iter().flatten() {
            if at < joined {
                continue;
            }
            expected += 1;
            match counts.get(&n) {
                Some(_) => once += 1,
                None if log.gaps.iter().any(|&gap| gap >= at) => signalled += 1,
                None => {
                    silent += 1;
                    if examples.len() < 10 {
                        examples.push(format!(
                            "client u{i} (chaos-{}) never got {n}",
                            log.conversation
                        ));
                    }
                }
            }
        }
        if (silent, duplicated) != faults_before {
            let path = std::env::temp_dir().join(format!("switchboard-chaos-u{i}.log"));
            let _ = std::fs::write(&path, log.trace.join("\n"));
            failing.push(path.display().to_string());
        }
    }
    println!();
    println!(
        "| seed | seconds | clients | conversations | faults | published | not acknowledged | deliveries expected | delivered | duplicated | missing, gap signalled | lost silently | gaps signalled |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} | {} | {unacknowledged} | {expected} | {once} | {duplicated} | {signalled} | {silent} | {gaps} |",
        args.seed,
        args.seconds,
        args.clients,
        args.conversations,
        faults.len(),
        published.len(),
    );
    for example in &examples {
        println!("  {example}");
    }
    drop(clients);
    if !failing.is_empty() {
        println!("what the failing clients saw: {}", failing.join(" "));
    }
    if silent > 0 || duplicated > 0 {
        println!("FAILED: {silent} lost silently, {duplicated} duplicated (seed {})", args.seed);
        std::process::exit(1);
    }
    println!("ok: nothing lost silently, nothing duplicated (seed {})", args.seed);
}
