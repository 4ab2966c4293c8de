//! `switchboard-load`: a load generator and benchmark for the server. It starts `switchboard
//! --dev` (pinned to core 0 with `taskset` when there is one), opens authenticated connections,
//! drives fan-out through the publish API, and prints a table of what it measured: connect
//! latency and rate, idle memory per connection (the server's RSS slope), and fan-out
//! deliveries per second, per server CPU-second, and their end-to-end latency. Numbers, not
//! tests: run it on a quiet machine, itself on another core:
//!
//! ```text
//! cargo build --release && taskset -c 1 target/release/switchboard-load --connections 8000
//! ```
//!
//! With `--redis` it then also starts a `redis-server` and two instances sharing it, and
//! measures the same fan-out across the two, the latency the Redis hop adds, and the publish
//! function on its own.

mod compare;
mod redis;

use async_net::TcpStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use clap::Parser;
use futures_util::StreamExt;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switchboard_core::protocol::CloseCode;
use switchboard_smol::auth::DevIssuer;

#[derive(Parser, Debug)]
#[command(name = "switchboard-load", about = "Load and measure a switchboard server.")]
struct Args {
    /// Connections to hold open at the end.
    #[arg(long, default_value_t = 8000)]
    connections: usize,
    /// Processes holding the connections (this one and workers it starts). Default: one per
    /// 18 000 connections, since a process here may have at most 20 000 open files. (The
    /// server is one process too: on such a machine it cannot hold more than that either.)
    #[arg(long)]
    processes: Option<usize>,
    /// Where the RSS is read first, for the memory slope.
    #[arg(long, default_value_t = 1000)]
    baseline: usize,
    /// Connection attempts in flight at once, per process.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Messages published to the 1 000-member conversation.
    #[arg(long, default_value_t = 400)]
    big_messages: usize,
    /// Broadcasts per second to the 1 000 in the fixed-rate (open-loop) phase.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// How long the fixed-rate phase publishes, in seconds.
    #[arg(long, default_value_t = 10)]
    rate_seconds: u64,
    /// Messages published over the 100 conversations of 10.
    #[arg(long, default_value_t = 40_000)]
    small_messages: usize,
    /// Publish requests in flight at once (each on its own keep-alive HTTP connection, one
    /// request at a time). The more messages are in flight, the more frames the server can put
    /// in one write per socket: 1 measures the worst case, one frame per write().
    #[arg(long, default_value_t = 32)]
    publishers: usize,
    /// Give every connection its own user and token, signed here with a key the server is
    /// told to trust (`--jwks-file`), so that every connect pays an RS256 verification. By
    /// default all connections share the dev token, which the server verifies once and then
    /// remembers (as it does for a client that reconnects).
    #[arg(long)]
    distinct_tokens: bool,
    /// The server binary (default: `switchboard` next to this one).
    #[arg(long)]
    server: Option<std::path::PathBuf>,
    /// Then also measure two instances sharing one Redis (`redis-server` must be on the PATH):
    /// one conversation of 1 000 split across them, and the publish function alone.
    #[arg(long)]
    redis: bool,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Measure this server binary too, alternating with `--server` (or the default) over
    /// `--rounds` rounds, and print each figure's median for both and their ratio.
    #[arg(long)]
    compare: Option<std::path::PathBuf>,
    /// Rounds of `--compare`.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Hubs the server runs (its `--threads`), pinned to as many cores from core 0.
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
    /// With `--compare`: the hubs of the compared server [default: `--server-threads`].
    #[arg(long)]
    compare_threads: Option<usize>,
    /// Internal: run as a worker that holds connections to this server address for another
    /// `switchboard-load` (tokens on stdin, one per line, then an empty line; it prints
    /// `latency <µs>` per connection, then `done`, and holds them until stdin closes).
    #[arg(long, hide = true)]
    worker: Option<String>,
    /// Internal: the index of a worker's first connection (it names their conversations).
    #[arg(long, hide = true, default_value_t = 0)]
    first: usize,
}

fn micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The server process and what /proc says about it.
struct Server {
    child: Child,
    addr: String,
    token: String,
}

impl Server {
    /// Starts the server with `threads` hubs: in dev mode, or trusting `issuer`'s keys from
    /// `jwks_file`, with `extra` arguments; `pin`: on cores 0 to `threads - 1` (when `taskset`
    /// is there).
    fn start(
        binary: &std::path::Path,
        trust: Option<(&std::path::Path, &str)>,
        extra: &[&str],
        threads: usize,
        pin: bool,
    ) -> Server {
        let pinned = pin && Command::new("taskset").arg("-V").output().is_ok();
        let mut command = if pinned {
            let mut c = Command::new("taskset");
            c.args(["-c", &format!("0-{}", threads.max(1) - 1)]).arg(binary);
            c
        } else {
            Command::new(binary)
        };
        command.args(["--listen", "127.0.0.1:0", "--api-key", "load"]);
        // In the environment, not a flag: a server from before `--threads` ignores it.
        command.env("SWITCHBOARD_THREADS", threads.to_string());
        // Every connection comes from 127.0.0.1, every publish from the generator, and (unless
        // `--distinct-tokens`) every connection is the dev user: the per-address, per-user and
        // publish caps are not what is measured.
        command.args(["--max-sockets-per-ip", "0", "--api-rate", "100000000/1s"]);
        command.args(["--max-sessions-per-user", "100000000"]);
        command.args(extra);
        match trust {
            Some((jwks_file, issuer)) => {
                command.arg("--jwks-file").arg(jwks_file);
                command.args(["--issuer", issuer, "--azp", "switchboard-dev"]);
                command.args(["--authorize", "allow-all"]);
            }
            None => {
                command.arg("--dev");
            }
        }
        let mut child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the server starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok);
        let mut addr = String::new();
        let mut token = String::new();
        for line in lines.by_ref() {
            if let Some(a) = line.split("listening on ").nth(1) {
                addr = a.trim().to_owned();
                if trust.is_some() {
                    break;
                }
            }
            if let Some(t) = line.split("dev-user): ").nth(1) {
                token = t.trim().to_owned();
                break;
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        eprintln!("server {} on {addr}{}", child.id(), if pinned { " (core 0)" } else { "" });
        Server { child, addr, token }
    }

    fn proc_field(&self, file: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id())).unwrap_or_default()
    }

    fn rss_kib(&self) -> u64 {
        self.proc_field("status")
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }

    /// Whether `/healthz` says `ok` (with Redis: linked, every subscription confirmed).
    fn healthy(&self) -> bool {
        let Ok(mut stream) = std::net::TcpStream::connect(&self.addr) else { return false };
        let request = "GET /healthz HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n";
        let mut response = String::new();
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_to_string(&mut response).is_ok()
            && response.ends_with("\r\n\r\nok\n")
    }
}

/// User + system CPU seconds of process `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / clock_ticks()
}

/// The kernel's clock ticks per second (`/proc/<pid>/stat` counts CPU time in them).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        text.ok().and_then(|t| t.parse().ok()).filter(|&t: &f64| t > 0.0).unwrap_or(100.0)
    })
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The measurement under way: a message of another phase arriving (late) counts in none.
static PHASE: AtomicU64 = AtomicU64::new(0);
/// Messages that arrived after their phase ended.
static LATE: AtomicU64 = AtomicU64::new(0);
/// Sockets of this process the server closed, and of them those it cut off as slow consumers
/// (4013): a generator that cannot keep up shows here, not only as missing deliveries.
static CLOSED_BY_SERVER: AtomicU64 = AtomicU64::new(0);
static CUT_AS_SLOW: AtomicU64 = AtomicU64::new(0);

/// A connection's receive side in the current phase: the latency of each message, which ones
/// it got (by number), and how many it got twice.
#[derive(Default)]
struct Receiver {
    latencies: std::sync::Mutex<Vec<u64>>,
    seen: std::sync::Mutex<std::collections::HashSet<u64>>,
    duplicates: AtomicU64,
}

impl Receiver {
    /// A new phase: forget the last one.
    fn clear(&self) {
        self.latencies.lock().unwrap().clear();
        self.seen.lock().unwrap().clear();
        self.duplicates.store(0, Ordering::Relaxed);
    }

    /// A test message (`{"p":phase,"n":number,"t":µs}`) arrived; whether it is a new one of
    /// this phase.
    fn take(&self, text: &str) -> bool {
        let field = |key: &str| {
            let rest = text.split(key).nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok()
        };
        let (Some(phase), Some(n), Some(sent)) =
            (field("\"p\":"), field("\"n\":"), field("\"t\":"))
        else {
            return false;
        };
        if phase != PHASE.load(Ordering::Relaxed) {
            LATE.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if !self.seen.lock().unwrap().insert(n) {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.latencies.lock().unwrap().push(micros().saturating_sub(sent));
        true
    }
}

/// TCP, the upgrade, and the server's `established`.
async fn open_socket(
    addr: &str,
    query: &str,
) -> Result<async_tungstenite::WebSocketStream<TcpStream>, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let url = format!("ws://{addr}/ws?{query}");
    let (mut ws, _) = async_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| e.to_string())?;
    match ws.next().await {
        Some(Ok(Message::Text(text))) if text.contains("system.connection.established") => Ok(ws),
        other => Err(format!("no established: {other:?}")),
    }
}

async fn open(
    addr: String,
    query: String,
    received: Arc<Receiver>,
    delivered: Arc<AtomicU64>,
) -> Result<Duration, String> {
    // A server out of file descriptors leaves connections in its accept queue: after eight
    // connections waited 10 s in vain, the rest are not tried.
    static TIMEOUTS: AtomicU64 = AtomicU64::new(0);
    if TIMEOUTS.load(Ordering::Relaxed) >= 8 {
        return Err("not tried: the server stopped answering".to_owned());
    }
    let started = Instant::now();
    let opening = async { open_socket(&addr, &query).await };
    let gave_up = async {
        smol::Timer::after(Duration::from_secs(10)).await;
        TIMEOUTS.fetch_add(1, Ordering::Relaxed);
        Err("no answer within 10 s".to_owned())
    };
    let mut ws = smol::future::or(opening, gave_up).await?;
    let latency = started.elapsed();
    smol::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Close(frame) = &message {
                CLOSED_BY_SERVER.fetch_add(1, Ordering::Relaxed);
                if frame.as_ref().is_some_and(|f| u16::from(f.code) == CloseCode::SLOW_CONSUMER.0) {
                    CUT_AS_SLOW.fetch_add(1, Ordering::Relaxed);
                }
            }
            let Message::Text(text) = message else { continue };
            if text.contains("\"system.ping\"") {
                let pong = format!(
                    r#"{{"id":"p{}","type":"system.pong","version":"1.0","timestamp":"2025-12-18T10:30:00.000Z","source":"client","payload":{{"timestamp":"2025-12-18T10:30:00.000Z"}}}}"#,
                    micros()
                );
                let _ = ws.send(Message::Text(pong.into())).await;
                continue;
            }
            if received.take(&text) {
                delivered.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
    .detach();
    Ok(latency)
}

/// Publishes over one keep-alive HTTP connection.
struct Publisher {
    addr: String,
    stream: std::net::TcpStream,
}

impl Publisher {
    fn connect(addr: &str) -> Publisher {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        Publisher { addr: addr.to_owned(), stream }
    }

    /// A fresh connection: the server closes a keep-alive connection that stays idle long
    /// enough (a phase that waited for lost deliveries), which must not fail the next phase.
    fn reconnect(&mut self) {
        *self = Publisher::connect(&self.addr);
    }

    /// Publishes message `n` of `phase`, stamped `t` (µs: when it is sent, or when it was
    /// scheduled to be).
    fn publish(&mut self, conversation: &str, phase: u64, n: usize, t: u64) {
        let body = format!(
            r#"{{"conversationId":"{conversation}","message":{{"type":"data.load.tick","payload":{{"p":{phase},"n":{n},"t":{t}}}}}}}"#
        );
        let request = format!(
            "POST /api/publish HTTP/1.1\r\nHost: load\r\nAuthorization: Bearer load\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(request.as_bytes()).unwrap();
        // Read the response: headers, then Content-Length bytes.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            self.stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).unwrap();
    }
}

/// What one phase measured.
struct FanOut {
    /// Deliveries there should have been, deliveries made (each message once per member),
    /// and the difference both ways.
    expected: u64,
    deliveries: u64,
    missing: u64,
    duplicated: u64,
    seconds: f64,
    cpu_seconds: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
}

impl FanOut {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({"expected": self.expected, "deliveries": self.deliveries,
            "missing": self.missing, "duplicated": self.duplicated, "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds, "p50_us": self.p50_us, "p99_us": self.p99_us,
            "p999_us": self.p999_us})
    }

    fn lossless(&self) -> bool {
        self.missing == 0 && self.duplicated == 0
    }

    /// The table's rows for this phase (`cpu_note` follows the CPU seconds).
    fn print(&self, name: &str, cpu_note: &str) {
        println!(
            "| {name}: delivered of expected (missing, duplicated) | {} of {} ({}, {}) |",
            self.deliveries, self.expected, self.missing, self.duplicated
        );
        println!(
            "| {name}: deliveries | {} in {:.2} s = {:.0}/s |",
            self.deliveries,
            self.seconds,
            self.deliveries as f64 / self.seconds
        );
        println!(
            "| {name}: per server CPU-second | {:.0} ({:.2} CPU-s{cpu_note}) |",
            self.deliveries as f64 / self.cpu_seconds.max(0.01),
            self.cpu_seconds
        );
        let ms = |us: u64| us as f64 / 1000.0;
        println!(
            "| {name}: end-to-end p50 / p99 / p999 | {:.2} ms / {:.2} ms / {:.2} ms |",
            ms(self.p50_us),
            ms(self.p99_us),
            ms(self.p999_us)
        );
    }
}

/// How a phase publishes: as fast as the publishers go (`Closed`: each waits for its answer
/// before the next), or on a fixed schedule of so many per second (`Open`: latency is measured
/// from each message's scheduled time, so a stall shows instead of being skipped).
#[derive(Clone, Copy)]
enum Pace {
    Closed,
    Open { per_second: u64 },
}

/// One phase: publishes `messages` to `conversations` through `publishers` and waits for the
/// deliveries (`expected_each` per message); CPU is that of `servers` (the instances)
/// together. Messages of an earlier phase arriving now count in neither.
#[allow(clippy::too_many_arguments)]
fn fan_out(
    servers: &[&Server],
    receivers: &[Arc<Receiver>],
    delivered: &AtomicU64,
    conversations: &[String],
    messages: usize,
    publishers: &mut [Publisher],
    expected_each: u64,
    pace: Pace,
) -> FanOut {
    // Before the phase's clock and CPU are read: the connects are not the phase's work.
    publishers.iter_mut().for_each(Publisher::reconnect);
    let phase = PHASE.fetch_add(1, Ordering::Relaxed) + 1;
    for r in receivers {
        r.clear();
    }
    delivered.store(0, Ordering::Relaxed);
    let expected = messages as u64 * expected_each;
    let cpu = || servers.iter().map(|s| s.cpu_seconds()).sum::<f64>();
    let cpu0 = cpu();
    let started = Instant::now();
    let origin = micros() + 100_000;
    let published = AtomicU64::new(0);
    let count = publishers.len();
    std::thread::scope(|scope| {
        for (p, publisher) in publishers.iter_mut().enumerate() {
            let published = &published;
            scope.spawn(move || {
                for i in (p..messages).step_by(count) {
                    let at = match pace {
                        Pace::Closed => micros(),
                        Pace::Open { per_second } => {
                            let at = origin + i as u64 * 1_000_000 / per_second.max(1);
                            if let Some(wait) = at.checked_sub(micros()) {
                                std::thread::sleep(Duration::from_micros(wait));
                            }
                            at
                        }
                    };
                    publisher.publish(&conversations[i % conversations.len()], phase, i, at);
                    let done = published.fetch_add(1, Ordering::Relaxed) + 1;
                    if done % 1000 == 0 {
                        let so_far = delivered.load(Ordering::Relaxed);
                        eprint!("\r  published {done}/{messages}, delivered {so_far}    ");
                    }
                }
            });
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = cpu() - cpu0;
    // A copy would come right behind the first.
    std::thread::sleep(Duration::from_millis(200));
    let deliveries = delivered.load(Ordering::Relaxed);
    let duplicated = receivers.iter().map(|r| r.duplicates.load(Ordering::Relaxed)).sum();
    eprintln!("\r  published {messages}, delivered {deliveries} of {expected}          ");
    let mut all: Vec<u64> =
        receivers.iter().flat_map(|r| r.latencies.lock().unwrap().clone()).collect();
    all.sort_unstable();
    FanOut {
        expected,
        deliveries,
        missing: expected.saturating_sub(deliveries),
        duplicated,
        seconds,
        cpu_seconds,
        p50_us: percentile(&all, 0.5),
        p99_us: percentile(&all, 0.99),
        p999_us: percentile(&all, 0.999),
    }
}

/// Another process of this program holding a share of the connections (a process may have at
/// most 20 000 open files here).
struct Worker {
    child: Child,
    latencies: std::thread::JoinHandle<Vec<u64>>,
}

impl Worker {
    fn start(args: &Args, addr: &str, range: std::ops::Range<usize>, tokens: &[String]) -> Worker {
        let mut child = Command::new(std::env::current_exe().expect("this program's path"))
            .args(["--worker", addr, "--first", &range.start.to_string()])
            .args(["--concurrency", &args.concurrency.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("a worker starts");
        let mut stdin = child.stdin.take().expect("piped");
        for i in range {
            writeln!(stdin, "{}", tokens[i % tokens.len()]).expect("the worker reads its tokens");
        }
        writeln!(stdin).expect("the worker reads its tokens");
        child.stdin = Some(stdin);
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let latencies = std::thread::spawn(move || {
            let mut latencies = Vec::new();
            for line in stdout.lines().map_while(Result::ok) {
                match line.split_once(' ') {
                    Some(("latency", us)) => latencies.extend(us.parse::<u64>().ok()),
                    Some(("failed", error)) => eprintln!("connect failed (worker): {error}"),
                    _ if line == "done" => break,
                    _ => {}
                }
            }
            latencies
        });
        Worker { child, latencies }
    }

    /// The latencies of the connections it opened, once all are open.
    fn join(self) -> (Child, Vec<u64>) {
        (self.child, self.latencies.join().unwrap_or_default())
    }
}

/// The worker side of [`Worker`]: opens one connection per token read from stdin, reports,
/// then holds them until stdin closes.
fn worker(args: &Args, addr: &str) {
    let tokens: Vec<String> = std::io::stdin()
        .lines()
        .map_while(Result::ok)
        .take_while(|line| !line.is_empty())
        .collect();
    let received = Arc::new(Receiver::default());
    let delivered = Arc::new(AtomicU64::new(0));
    let semaphore = Arc::new(smol::lock::Semaphore::new(args.concurrency));
    let tasks: Vec<_> = tokens
        .iter()
        .enumerate()
        .map(|(k, token)| {
            let query = format!("token={token}&conversation_id=idle-{}", args.first + k);
            let (addr, received, delivered, semaphore) =
                (addr.to_owned(), received.clone(), delivered.clone(), semaphore.clone());
            smol::spawn(async move {
                let _permit = semaphore.acquire().await;
                open(addr, query, received, delivered).await
            })
        })
        .collect();
    let mut out = std::io::stdout().lock();
    smol::block_on(async {
        for task in tasks {
            let _ = match task.await {
                Ok(latency) => writeln!(out, "latency {}", latency.as_micros()),
                Err(error) => writeln!(out, "failed {error}"),
            };
        }
    });
    let _ = writeln!(out, "done");
    let _ = out.flush();
    drop(out);
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

fn main() {
    let args = Args::parse();
    if let Some(addr) = &args.worker {
        return worker(&args, addr);
    }
    let binary = args
        .server
        .clone()
        .unwrap_or_else(|| std::env::current_exe().unwrap().with_file_name("switchboard"));
    if let Some(other) = &args.compare {
        let threads = [args.server_threads, args.compare_threads.unwrap_or(args.server_threads)];
        return compare::compare([&binary, other], threads, args.rounds);
    }
    // With distinct tokens, this process is the identity provider: its key, its JWKS file.
    let issuer = args.distinct_tokens.then(|| {
        let issuer = DevIssuer::generate("https://load.switchboard.invalid/realms/load".into())
            .expect("an RSA key");
        let path =
            std::env::temp_dir().join(format!("switchboard-load-{}.json", std::process::id()));
        std::fs::write(&path, issuer.jwks().to_string()).expect("the JWKS file is written");
        (issuer, path)
    });
    let trust = issuer.as_ref().map(|(i, path)| (path.as_path(), i.issuer.as_str()));
    let server = Server::start(&binary, trust, &[], args.server_threads, true);
    let tokens: Vec<String> = match &issuer {
        Some((issuer, _)) => (0..args.connections)
            .map(|i| {
                if i % 1000 == 999 {
                    eprint!("\r  signed {} tokens", i + 1);
                }
                issuer.token(&format!("load-{i}"), 1).expect("a token")
            })
            .collect(),
        None => vec![server.token.clone()],
    };
    if issuer.is_some() {
        eprintln!();
    }
    // Connected first: a server at its open-file limit accepts nothing more, not even these.
    let mut publishers: Vec<Publisher> =
        (0..args.publishers.max(1)).map(|_| Publisher::connect(&server.addr)).collect();
    let delivered = Arc::new(AtomicU64::new(0));
    let receivers: Vec<Arc<Receiver>> =
        (0..args.connections).map(|_| Arc::new(Receiver::default())).collect();
    // Connections 0..1000: one conversation of 1 000; 1000..2000: 100 conversations of 10;
    // the rest: a conversation each (idle).
    let conversation_of = |i: usize| match i {
        0..1000 => "big".to_owned(),
        1000..2000 => format!("small-{}", i % 100),
        _ => format!("idle-{i}"),
    };
    let semaphore = Arc::new(smol::lock::Semaphore::new(args.concurrency));
    let connect = |range: std::ops::Range<usize>| -> (Vec<u64>, f64) {
        let started = Instant::now();
        let tasks: Vec<_> = range
            .map(|i| {
                let (addr, token, received, delivered, semaphore) = (
                    server.addr.clone(),
                    tokens[i % tokens.len()].clone(),
                    receivers[i].clone(),
                    delivered.clone(),
                    semaphore.clone(),
                );
                let query = format!("token={token}&conversation_id={}", conversation_of(i));
                smol::spawn(async move {
                    let _permit = semaphore.acquire().await;
                    open(addr, query, received, delivered).await
                })
            })
            .collect();
        let count = tasks.len();
        let latencies: Vec<u64> = smol::block_on(async {
            let mut out = Vec::with_capacity(count);
            for task in tasks {
                match task.await {
                    Ok(latency) => out.push(latency.as_micros() as u64),
                    Err(error) => eprintln!("connect failed: {error}"),
                }
            }
            out
        });
        (latencies, started.elapsed().as_secs_f64())
    };

    let rss_empty = server.rss_kib();
    eprintln!("connecting {} ...", args.baseline);
    let (mut latencies, seconds_a) = connect(0..args.baseline);
    std::thread::sleep(Duration::from_millis(500));
    let rss_baseline = server.rss_kib();
    // The rest: this process takes the first share (and everything below 2 000, whose
    // conversations the fan-out measures), workers the others.
    let planned = args.processes.unwrap_or(args.connections.div_ceil(18_000)).max(1);
    let share = (args.connections - args.baseline).div_ceil(planned);
    let own_end = (args.baseline + share).max(2000).min(args.connections);
    let worker_share = (args.connections - own_end).div_ceil((planned - 1).max(1));
    eprintln!("connecting {} more in {planned} process(es) ...", args.connections - args.baseline);
    let started = Instant::now();
    let cpu_before = server.cpu_seconds();
    let workers: Vec<Worker> = (own_end..args.connections)
        .step_by(worker_share.max(1))
        .map(|first| {
            let range = first..(first + worker_share).min(args.connections);
            Worker::start(&args, &server.addr, range, &tokens)
        })
        .collect();
    let (more, _) = connect(args.baseline..own_end);
    let mut opened = more.len();
    latencies.extend(more);
    let processes = 1 + workers.len();
    let mut children = Vec::new();
    for worker in workers {
        let (child, more) = worker.join();
        opened += more.len();
        latencies.extend(more);
        children.push(child);
    }
    let connects_per_second = opened as f64 / started.elapsed().as_secs_f64();
    // Per core: what the server spent on them. The load generator has one core too, and may
    // be what bounds the rate.
    let connect_cpu_seconds = server.cpu_seconds() - cpu_before;
    let connects_per_cpu_second = opened as f64 / connect_cpu_seconds.max(0.01);
    std::thread::sleep(Duration::from_millis(500));
    let rss_full = server.rss_kib();
    latencies.sort_unstable();
    // Per connection actually opened after the baseline.
    let per_connection_kib = rss_full.saturating_sub(rss_baseline) as f64 / opened.max(1) as f64;
    let _ = seconds_a;

    eprintln!("fan-out to one conversation of 1 000 ...");
    let big = fan_out(
        &[&server],
        &receivers[..1000.min(args.connections)],
        &delivered,
        &["big".to_owned()],
        args.big_messages,
        &mut publishers,
        1000,
        Pace::Closed,
    );
    eprintln!(
        "a fixed {} broadcasts/s to the 1 000 for {} s (open loop) ...",
        args.rate, args.rate_seconds
    );
    let fixed = fan_out(
        &[&server],
        &receivers[..1000.min(args.connections)],
        &delivered,
        &["big".to_owned()],
        (args.rate * args.rate_seconds) as usize,
        &mut publishers,
        1000,
        Pace::Open { per_second: args.rate },
    );
    eprintln!("fan-out to 100 conversations of 10 ...");
    let small_names: Vec<String> = (0..100).map(|i| format!("small-{i}")).collect();
    let small = fan_out(
        &[&server],
        &receivers[1000.min(args.connections)..2000.min(args.connections)],
        &delivered,
        &small_names,
        args.small_messages,
        &mut publishers,
        10,
        Pace::Closed,
    );

    std::thread::sleep(Duration::from_millis(500));
    let rss_after = server.rss_kib();

    let shared = args.redis.then(|| {
        measure_redis(
            &args,
            &binary,
            trust,
            &tokens,
            &server,
            &receivers,
            &delivered,
            &mut publishers,
        )
    });

    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| authenticated connects (failed) | {} ({}) |",
        latencies.len(),
        args.connections - latencies.len()
    );
    println!(
        "| connect latency p50 / p99 | {:.2} ms / {:.2} ms |",
        percentile(&latencies, 0.5) as f64 / 1000.0,
        percentile(&latencies, 0.99) as f64 / 1000.0
    );
    println!(
        "| connects per second ({} in flight per process) | {:.0} |",
        args.concurrency, connects_per_second
    );
    println!(
        "| connects per server CPU-second | {connects_per_cpu_second:.0} ({connect_cpu_seconds:.2} CPU-s) |"
    );
    println!(
        "| server RSS: empty / {} / {} connections | {} / {} / {} KiB |",
        args.baseline, args.connections, rss_empty, rss_baseline, rss_full
    );
    println!("| idle memory per connection (RSS slope) | {:.2} KiB |", per_connection_kib);
    println!("| server RSS after the fan-outs | {rss_after} KiB |");
    let fixed_name = format!("fixed {}/s × 1 000 (open loop)", args.rate);
    let phases = [
        ("1 conversation × 1 000", &big),
        (fixed_name.as_str(), &fixed),
        ("100 conversations × 10", &small),
    ];
    for (name, f) in phases {
        f.print(&format!("fan-out {name}"), "");
    }
    println!(
        "| late deliveries (of an earlier phase, counted in none) | {} |",
        LATE.load(Ordering::Relaxed)
    );
    println!(
        "| sockets the server closed (as slow consumers, 4013) | {} ({}) |",
        CLOSED_BY_SERVER.load(Ordering::Relaxed),
        CUT_AS_SLOW.load(Ordering::Relaxed)
    );
    println!("| processes holding connections | {processes} |");
    println!("| publish requests in flight | {} |", args.publishers);
    println!(
        "| tokens | {} |",
        if args.distinct_tokens {
            "one per connection (each verified with RS256)"
        } else {
            "one dev token for all (verified once, then remembered)"
        }
    );
    match &shared {
        Some(shared) => shared.print(),
        None => println!("| with Redis | not measured (`--redis`) |"),
    }
    if let Some(path) = &args.json {
        let fan = FanOut::json;
        let report = serde_json::json!({
            "connections": latencies.len(),
            "connect_p50_us": percentile(&latencies, 0.5),
            "connect_p99_us": percentile(&latencies, 0.99),
            "connects_per_second": connects_per_second,
            "connects_per_cpu_second": connects_per_cpu_second,
            "rss_kib": {"empty": rss_empty, "baseline": rss_baseline, "full": rss_full,
                "after_fan_out": rss_after},
            "idle_kib_per_connection": per_connection_kib,
            "fan_out_1x1000": fan(&big),
            "fan_out_100x10": fan(&small),
            "fixed_rate_1x1000": fan(&fixed),
            "fixed_rate_per_second": args.rate,
            "late_deliveries": LATE.load(Ordering::Relaxed),
            "closed_by_server": CLOSED_BY_SERVER.load(Ordering::Relaxed),
            "cut_as_slow_consumers": CUT_AS_SLOW.load(Ordering::Relaxed),
            "publishers": args.publishers,
            "processes": processes,
            "distinct_tokens": args.distinct_tokens,
            "redis": shared.as_ref().map(|r| serde_json::json!({
                "fan_out_1x1000_split": fan(&r.split),
                "redis_cpu_seconds": r.redis_cpu_seconds,
                "one_in_flight_1x1000": [fan(&r.hop_1000.0), fan(&r.hop_1000.1)],
                "one_in_flight_1x10": [fan(&r.hop_10.0), fan(&r.hop_10.1)],
                "function_publishes_per_second": r.function.publishes as f64 / r.function.seconds,
                "history_bytes_per_message": r.function.history_bytes_per_message,
            })),
        });
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    }
    if let Some((_, path)) = &issuer {
        let _ = std::fs::remove_file(path);
    }
    for mut child in children {
        // Closing its stdin lets the worker go.
        drop(child.stdin.take());
        let _ = child.wait();
    }
    let mut all = vec![&big, &fixed, &small];
    if let Some(r) = &shared {
        all.extend([&r.split, &r.hop_1000.0, &r.hop_1000.1, &r.hop_10.0, &r.hop_10.1]);
    }
    if !all.iter().all(|f| f.lossless()) {
        eprintln!("FAILED: a phase lost or duplicated deliveries (see the table)");
        std::process::exit(1);
    }
}

/// Messages published one at a time to measure latency rather than throughput.
const LATENCY_MESSAGES: usize = 200;

/// What `--redis` measured.
struct Shared {
    /// One conversation of 1 000, 500 members on each of two instances, published through one.
    split: FanOut,
    redis_cpu_seconds: f64,
    /// One publish in flight, to the 1 000 and to a conversation of 10 (where delivery costs
    /// little and the hop shows): `(alone, through Redis)`.
    hop_1000: (FanOut, FanOut),
    hop_10: (FanOut, FanOut),
    function: redis::FunctionBench,
}

impl Shared {
    fn print(&self) {
        let phases =
            [&self.split, &self.hop_1000.0, &self.hop_1000.1, &self.hop_10.0, &self.hop_10.1];
        let (missing, duplicated) =
            phases.iter().fold((0, 0), |(m, d), f| (m + f.missing, d + f.duplicated));
        println!(
            "| with Redis, every phase: missing / duplicated deliveries | {missing} / {duplicated} |"
        );
        let redis_cpu = format!("; Redis {:.2} CPU-s", self.redis_cpu_seconds);
        self.split.print("with Redis, 1 × 1 000 split over two instances", &redis_cpu);
        let ms = |us: u64| us as f64 / 1000.0;
        let delta = |a: u64, b: u64| (b as f64 - a as f64) / 1000.0;
        for (name, (alone, hop)) in [("1 × 10", &self.hop_10), ("1 × 1 000", &self.hop_1000)] {
            println!(
                "| one publish in flight, {name}: p50 / p99 alone; through Redis; the hop adds | {:.2} / {:.2} ms; {:.2} / {:.2} ms; {:+.2} / {:+.2} ms |",
                ms(alone.p50_us),
                ms(alone.p99_us),
                ms(hop.p50_us),
                ms(hop.p99_us),
                delta(alone.p50_us, hop.p50_us),
                delta(alone.p99_us, hop.p99_us)
            );
        }
        let b = &self.function;
        println!(
            "| publish function alone (64 in flight, 300-byte messages, fresh keys) | {} in {:.2} s = {:.0}/s |",
            b.publishes,
            b.seconds,
            b.publishes as f64 / b.seconds
        );
        println!(
            "| history per message (a full stream of 1 000) | {:.0} bytes |",
            b.history_bytes_per_message
        );
    }
}

/// The `--redis` figures: a `redis-server`, two instances sharing it, and the same fan-out
/// (see [`Shared`]); the single instance's latency is measured first, the same way.
#[allow(clippy::too_many_arguments)]
fn measure_redis(
    args: &Args,
    binary: &std::path::Path,
    trust: Option<(&std::path::Path, &str)>,
    tokens: &[String],
    server: &Server,
    receivers: &[Arc<Receiver>],
    delivered: &AtomicU64,
    publishers: &mut [Publisher],
) -> Shared {
    let members = 1000.min(args.connections);
    eprintln!("one publish in flight, one instance ...");
    let big = ["big".to_owned()];
    let alone_1000 = fan_out(
        &[server],
        &receivers[..members],
        delivered,
        &big,
        LATENCY_MESSAGES,
        &mut publishers[..1],
        1000,
        Pace::Closed,
    );
    // The members of `small-0` (connections 1 000, 1 100, ...).
    let small: Vec<Arc<Receiver>> =
        receivers.iter().skip(1000).step_by(100).take(10).cloned().collect();
    let small_0 = ["small-0".to_owned()];
    let alone_10 = fan_out(
        &[server],
        &small,
        delivered,
        &small_0,
        LATENCY_MESSAGES,
        &mut publishers[..1],
        10,
        Pace::Closed,
    );

    let redis = redis::RedisServer::start();
    let url = redis.url();
    let pair = [
        Server::start(binary, trust, &["--redis-url", &url], 1, false),
        Server::start(binary, trust, &["--redis-url", &url], 1, false),
    ];
    let shared_delivered = Arc::new(AtomicU64::new(0));
    // 1 000 members of `big` and 10 of `small-0`, alternately on each instance.
    let shared_receivers: Vec<Arc<Receiver>> =
        (0..1010).map(|_| Arc::new(Receiver::default())).collect();
    eprintln!("connecting 1 010 across the two instances ...");
    let semaphore = Arc::new(smol::lock::Semaphore::new(args.concurrency));
    let tasks: Vec<_> = (0..1010)
        .map(|i| {
            let addr = pair[i % 2].addr.clone();
            let conversation = if i < 1000 { "big" } else { "small-0" };
            let query =
                format!("token={}&conversation_id={conversation}", tokens[i % tokens.len()]);
            let (received, delivered, semaphore) =
                (shared_receivers[i].clone(), shared_delivered.clone(), semaphore.clone());
            smol::spawn(async move {
                let _permit = semaphore.acquire().await;
                open(addr, query, received, delivered).await
            })
        })
        .collect();
    smol::block_on(async {
        for task in tasks {
            if let Err(error) = task.await {
                eprintln!("connect failed: {error}");
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pair.iter().all(Server::healthy) {
        assert!(Instant::now() < deadline, "the instances did not link up with Redis");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut shared_publishers: Vec<Publisher> =
        (0..args.publishers.max(1)).map(|_| Publisher::connect(&pair[0].addr)).collect();
    let both = [&pair[0], &pair[1]];
    eprintln!("fan-out to one conversation of 1 000 over two instances and Redis ...");
    let redis_cpu = cpu_seconds(redis.pid());
    let split = fan_out(
        &both,
        &shared_receivers[..1000],
        &shared_delivered,
        &big,
        args.big_messages,
        &mut shared_publishers,
        1000,
        Pace::Closed,
    );
    let redis_cpu_seconds = cpu_seconds(redis.pid()) - redis_cpu;
    eprintln!("one publish in flight, through Redis ...");
    let hop_1000 = fan_out(
        &both,
        &shared_receivers[..1000],
        &shared_delivered,
        &big,
        LATENCY_MESSAGES,
        &mut shared_publishers[..1],
        1000,
        Pace::Closed,
    );
    let hop_10 = fan_out(
        &both,
        &shared_receivers[1000..],
        &shared_delivered,
        &small_0,
        LATENCY_MESSAGES,
        &mut shared_publishers[..1],
        10,
        Pace::Closed,
    );
    eprintln!("the publish function alone ...");
    let function = redis::bench_function(redis.port, 100_000, 64, 300);
    let (hop_1000, hop_10) = ((alone_1000, hop_1000), (alone_10, hop_10));
    Shared { split, redis_cpu_seconds, hop_1000, hop_10, function }
}
