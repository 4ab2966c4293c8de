//! What an idle, authenticated connection costs the server, counted by the allocator (not RSS,
//! which the allocator's own pages and the kernel blur): live bytes and live allocations per
//! connection, between a warmed-up server and the same server with `CONNECTIONS` more. The
//! server runs in this process, on its own thread; the clients are plain sockets here that
//! keep nothing on the heap. Shared by `idle_memory.rs` (two hubs, the default on two cores)
//! and `idle_memory_one_hub.rs`: each is a process of its own, so that nothing else allocates
//! while it counts.

use clap::Parser;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;
use switchboard_smol::auth::DevIssuer;
use switchboard_smol::{Args, DEV_ISSUER, Server, Settings};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const WARM_UP: usize = 200;
const CONNECTIONS: usize = 1000;

/// Checks that an idle connection to a server with `threads` hubs holds at most `bytes` live
/// heap bytes in at most `allocations` allocations.
pub fn check_budget(threads: &str, bytes_budget: i64, allocations_budget: i64) {
    let dir = std::env::temp_dir().join(format!("switchboard-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dev_key = dir.join("dev-key.pem");
    let issuer = DevIssuer::load_or_create(&dev_key, DEV_ISSUER.to_owned()).unwrap();
    let addr = free_address();
    let args = Args::parse_from([
        "switchboard",
        "--dev",
        "--listen",
        &addr.to_string(),
        "--dev-key",
        dev_key.to_str().unwrap(),
        // All the connections come from 127.0.0.1.
        "--max-sockets-per-ip",
        "0",
        "--threads",
        threads,
    ]);
    let settings = Settings::resolve(args).unwrap();
    std::thread::spawn(move || Server::new(settings).run());

    // Every connection its own user and token, signed before anything is counted.
    let tokens: Vec<String> = (0..WARM_UP + CONNECTIONS)
        .map(|i| issuer.token(&format!("user-{i}"), 1).unwrap())
        .collect();
    let mut sockets = Vec::with_capacity(tokens.len());
    for token in &tokens[..WARM_UP] {
        sockets.push(connect(addr, token));
    }
    settle();
    let region = Region::new(GLOBAL);
    for token in &tokens[WARM_UP..] {
        sockets.push(connect(addr, token));
    }
    settle();
    let change = region.change();
    // A reallocation's growth is already in `bytes_allocated` (and a shrink in
    // `bytes_deallocated`); `bytes_reallocated` is the same change again.
    let bytes = change.bytes_allocated as i64 - change.bytes_deallocated as i64;
    let allocations = change.allocations as i64 - change.deallocations as i64;
    let (per_bytes, per_allocations) =
        (bytes / CONNECTIONS as i64, allocations / CONNECTIONS as i64);
    println!(
        "{threads} hub(s), {CONNECTIONS} idle connections: {bytes} live bytes in {allocations} \
         allocations; {per_bytes} bytes in {per_allocations} allocations each"
    );
    assert!(
        per_bytes <= bytes_budget,
        "an idle connection holds {per_bytes} bytes (budget {bytes_budget})"
    );
    assert!(
        per_allocations <= allocations_budget,
        "an idle connection holds {per_allocations} allocations (budget {allocations_budget})"
    );
    drop(sockets);
    let _ = std::fs::remove_dir_all(dir);
}

fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Lets the server finish what the last connects started (no assertion on time: this only
/// waits for work that is already done in far less).
fn settle() {
    std::thread::sleep(Duration::from_millis(500));
}

/// Opens a WebSocket with `token` and reads until the `established` frame has arrived; keeps
/// nothing on the heap but what it returns.
fn connect(addr: SocketAddr, token: &str) -> TcpStream {
    let mut stream = loop {
        match TcpStream::connect(addr) {
            Ok(stream) => break stream,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let request = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut seen = [0u8; 4096];
    let mut len = 0;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while !contains(&seen[..len], b"system.connection.established") {
        let n = stream.read(&mut seen[len..]).expect("the established frame within 10 s");
        assert!(n > 0, "closed before established: {}", String::from_utf8_lossy(&seen[..len]));
        len += n;
    }
    stream
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
