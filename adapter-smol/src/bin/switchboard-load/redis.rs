//! The Redis side of `switchboard-load --redis`: a `redis-server` of its own on a free port,
//! and the publish function measured on its own, pipelined over one connection.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child on 127.0.0.1 without persistence; killed when dropped.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("redis-server {} on 127.0.0.1:{port}", child.id());
        RedisServer { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One command in RESP.
fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Reads one reply, whole (nested arrays included); its first line.
fn reply(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("a reply from Redis");
    let first = line.trim_end().to_owned();
    match first.as_bytes().first() {
        Some(b'*') => {
            for _ in 0..first[1..].parse::<i64>().unwrap_or(0).max(0) {
                reply(reader);
            }
        }
        Some(b'$') if first != "$-1" => {
            let mut body = String::new();
            reader.read_line(&mut body).expect("a bulk string");
        }
        Some(b'-') => panic!("Redis answered {first}"),
        _ => {}
    }
    first
}

/// What the publish function did on its own.
pub struct FunctionBench {
    pub publishes: usize,
    pub seconds: f64,
    /// Bytes a channel's history holds per message (`MEMORY USAGE` of a full stream).
    pub history_bytes_per_message: f64,
}

/// `publishes` calls of `switchboard_publish` with `message_bytes`-byte messages over 100
/// channels, `in_flight` at a time on one connection, each with a fresh idempotency key
/// (the instances loaded the function already).
pub fn bench_function(
    port: u16,
    publishes: usize,
    in_flight: usize,
    message_bytes: usize,
) -> FunctionBench {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("Redis answers");
    stream.set_nodelay(true).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let padding = "x".repeat(message_bytes.saturating_sub(120));
    let started = Instant::now();
    let (mut sent, mut answered) = (0, 0);
    while answered < publishes {
        let mut batch = Vec::new();
        while sent < publishes && sent - answered < in_flight {
            let channel = format!("sb:{{conversation:bench-{}}}", sent % 100);
            let id = format!("bench-{sent}");
            let message = format!(
                r#"{{"id":"{id}","origin":"load","except":null,"frame":{{"id":"{id}","p":"{padding}"}}}}"#
            );
            let keys =
                [format!("{channel}:m"), format!("{channel}:s"), format!("{channel}:k:{id}")];
            command(
                &mut batch,
                &[
                    b"FCALL",
                    b"switchboard_publish",
                    b"3",
                    keys[0].as_bytes(),
                    keys[1].as_bytes(),
                    keys[2].as_bytes(),
                    channel.as_bytes(),
                    message.as_bytes(),
                    b"1000",
                    b"3600",
                ],
            );
            sent += 1;
        }
        writer.write_all(&batch).unwrap();
        // Take half the window back before sending more, so the pipe never runs dry.
        let target = (answered + in_flight / 2).max(answered + 1).min(sent);
        while answered < target {
            reply(&mut reader);
            answered += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut probe = Vec::new();
    command(&mut probe, &[b"MEMORY", b"USAGE", b"sb:{conversation:bench-0}:s", b"SAMPLES", b"0"]);
    command(&mut probe, &[b"XLEN", b"sb:{conversation:bench-0}:s"]);
    writer.write_all(&probe).unwrap();
    let bytes: f64 = reply(&mut reader)[1..].parse().unwrap_or(0.0);
    let entries: f64 = reply(&mut reader)[1..].parse().unwrap_or(1.0);
    FunctionBench { publishes, seconds, history_bytes_per_message: bytes / entries.max(1.0) }
}
