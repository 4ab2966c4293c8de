//! The hub alone, no I/O: one client message routed to a handler, and one broadcast to a
//! conversation of 1 000 and of 10 000 members; and the bus in memory, what the server's bus
//! thread does per message between its hubs.
//!
//! Run: `cargo bench -p switchboard-core --bench hub`. For `routed_message`, messages per second
//! per core is 1 / the median time printed; for `broadcast`, divan prints deliveries (one frame
//! per member) per second.

use bytes::Bytes;
use divan::{Bencher, black_box, counter::ItemsCount};
use std::time::Duration;
use switchboard_core::protocol::{Id, MessageType, Payload, TypePattern};
use switchboard_core::server::{
    BusCommand, Hub, HubConfig, Input, JoinGrant, LocalBus, OpenRequest, Outgoing, Output,
    Principal, RateLimit, SocketId,
};
use switchboard_core::time::Instant;

fn main() {
    divan::main();
}

const SEED: u64 = 0x5b0a_2d00_cafe_f00d;
/// 2025-12-18T10:30:00.000Z.
const UNIX_MS: i64 = 1_766_053_800_000;
const NOW: Instant = Instant::from_millis(1_000);

/// Connections sending in the routing benchmark (round robin).
const SENDERS: u64 = 1_000;

/// A config under which the rate limiter never fires (the benchmark reports every socket's
/// writes, as an adapter does, so no one is cut off). The replay buffers keep what a server
/// keeps by default: how much memory fan-out walks is part of what it costs.
fn config() -> HubConfig {
    HubConfig {
        connection_rate: RateLimit::new(u32::MAX / 2, Duration::from_secs(1)),
        type_rates: vec![],
        max_outbound_frames: 32,
        ..HubConfig::default()
    }
}

/// Reports every socket's frames as written (what an adapter's writers do after each batch):
/// `written[s]` is what socket `s` was given since the last report, frames and bytes.
fn flush_all(hub: &mut Hub, written: &mut [(usize, usize)]) {
    for (s, written) in written.iter_mut().enumerate() {
        let (frames, bytes) = std::mem::take(written);
        hub.handle_input(NOW, Input::Flushed { socket: SocketId(s as u64), frames, bytes });
        drain(hub);
    }
}

/// Takes every socket's frames (what an adapter does before it writes), adding each to its
/// socket's count in `written`; returns how many there were.
fn transmit(hub: &mut Hub, written: &mut [(usize, usize)]) -> usize {
    let mut taken = 0;
    while let Some(transmit) = hub.poll_transmit() {
        let count = &mut written[transmit.socket().0 as usize];
        for frame in transmit.frames() {
            count.0 += 1;
            count.1 += frame.len();
            taken += 1;
            black_box(frame);
        }
    }
    taken
}

/// Drains every output, and takes every frame handed to a socket; returns how many frames
/// there were.
fn drain(hub: &mut Hub) -> usize {
    let mut sends = 0;
    while let Some(output) = hub.poll_output() {
        if matches!(output, Output::Send { .. }) {
            sends += 1;
        }
        black_box(output);
    }
    while let Some(transmit) = hub.poll_transmit() {
        sends += transmit.frames().map(black_box).count();
    }
    sends
}

/// Drains every output (the frames wait for [`transmit`]).
fn drain_outputs(hub: &mut Hub) {
    while let Some(output) = hub.poll_output() {
        black_box(output);
    }
}

/// A hub with `n` authenticated, Active connections on sockets `0..n`, each its own user, all in
/// `conversation` if given.
fn hub_with(n: u64, conversation: Option<&str>) -> Hub {
    let mut hub = Hub::new(config(), SEED, NOW, UNIX_MS).expect("a valid configuration");
    drain(&mut hub);
    for i in 0..n {
        let socket = SocketId(i);
        let mut query = vec![("token".to_owned(), format!("token-{i}"))];
        if let Some(conversation) = conversation {
            query.push(("conversation_id".to_owned(), conversation.to_owned()));
        }
        let request = OpenRequest { query, ..OpenRequest::default() };
        hub.handle_input(NOW, Input::Opened { socket, request });
        let mut verify = None;
        while let Some(output) = hub.poll_output() {
            match output {
                Output::Verify { request, .. } => verify = Some(request),
                Output::Close { .. } => panic!("connection {i} refused: {output:?}"),
                _ => {}
            }
        }
        let request = verify.expect("a token is verified");
        let verdict = Ok(Principal::user(format!("user-{i}")).into());
        hub.handle_input(NOW, Input::AuthVerdict { request, verdict });
        let mut established = false;
        // A join is decided by the authorizer: granted here, as the adapter's would.
        let mut joins = Vec::new();
        loop {
            while let Some(output) = hub.poll_output() {
                match output {
                    Output::Authorize(join) => joins.push(join.request),
                    Output::Close { .. } => panic!("connection {i} refused: {output:?}"),
                    _ => {}
                }
            }
            while let Some(transmit) = hub.poll_transmit() {
                established |= transmit.socket() == socket;
            }
            let Some(request) = joins.pop() else { break };
            let verdict = Ok(JoinGrant { write: true });
            hub.handle_input(NOW, Input::JoinVerdict { request, verdict });
        }
        assert!(established, "connection {i} was not established");
        // `established` was written.
        hub.handle_input(NOW, Input::Flushed { socket, frames: 1, bytes: 0 });
        drain(&mut hub);
    }
    assert_eq!(hub.stats().by_state.get("active"), Some(&(n as usize)));
    hub
}

/// A client message of ~200 bytes as a browser sends it.
fn ping_frame() -> Bytes {
    let frame = br#"{"id":"5f0e9c1a-2b3d-4e5f-8a9b-0c1d2e3f4a5b","type":"data.bench.ping","version":"1.0","timestamp":"2025-12-18T10:30:00.000Z","source":"client","payload":{"content":"Hi there, ping!"}}"#;
    assert!((180..240).contains(&frame.len()), "{}", frame.len());
    Bytes::from_static(frame)
}

/// One client message in, through the middleware chain (logging, authorization, rate
/// limiting) to a handler that does nothing, and the outputs drained.
#[divan::bench]
fn routed_message(bencher: Bencher) {
    let mut hub = hub_with(SENDERS, None);
    hub.router_mut().on(TypePattern::new("data.bench.ping").unwrap(), |_cx, _env| Ok(()));
    let frame = ping_frame();

    // Outside the timed loop: the message is accepted and routed, nothing is sent back.
    for s in 0..SENDERS {
        hub.handle_input(NOW, Input::Text { socket: SocketId(s), frame: frame.clone() });
        let mut outputs = Vec::new();
        while let Some(output) = hub.poll_output() {
            outputs.push(output);
        }
        assert!(
            outputs.iter().all(|o| matches!(o, Output::Event(_))),
            "routing answered something: {outputs:?}"
        );
    }

    let mut next = 0;
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let socket = SocketId(next);
        next = (next + 1) % SENDERS;
        hub.handle_input(NOW, Input::Text { socket, frame: black_box(frame.clone()) });
        drain(&mut hub)
    });
}

/// An application message of ~200 bytes of payload.
fn created(conversation: &Id) -> Outgoing {
    let payload = Payload::from_json(
        r#"{"messageId":"msg-01JFB8Z3K4M5N6P7Q8R9S0T1V2","authorId":"user-42","content":"The quick brown fox jumps over the lazy dog, twice: the quick brown fox jumps over the lazy dog.","createdAt":"2025-12-18T10:30:00.000Z"}"#,
    )
    .unwrap();
    assert!((180..240).contains(&payload.as_str().len()), "{}", payload.as_str().len());
    Outgoing::new(MessageType::new("data.message.created").unwrap(), payload)
        .in_conversation(conversation.clone())
}

/// `broadcast_to_conversation` to 1 000 and 10 000 local members: sequencing, replay buffers
/// and one frame per member, taken. (1 000 is the load generator's fan-out, whose sessions
/// fit in cache; 10 000 do not.)
#[divan::bench(sample_count = 50, sample_size = 16, args = [1_000, 10_000])]
fn broadcast(bencher: Bencher, members: u64) {
    let conversation = Id::new("conv-1").unwrap();
    let mut hub = hub_with(members, Some(conversation.as_str()));
    let outgoing = created(&conversation);
    let mut written = vec![(0, 0); members as usize];

    // Outside the timed loop: every member gets it (and keeps getting it: fill the replay
    // buffers past their bound so eviction is part of the steady state measured).
    for n in 1..=hub.config().replay_max_messages + 64 {
        let reached = hub.broadcast_to_conversation(NOW, &conversation, outgoing.clone(), None);
        assert_eq!(reached, Ok(members as usize));
        drain_outputs(&mut hub);
        if n % 16 == 0 {
            assert_eq!(transmit(&mut hub, &mut written), 16 * members as usize);
            flush_all(&mut hub, &mut written);
        }
    }

    // The sockets' frames are taken, written and reported once per 16 messages, as an adapter
    // that batches does (a sample is 16 messages, so each sample has one such round).
    let mut sent = 0;
    bencher.counter(ItemsCount::new(members)).bench_local(|| {
        let _ =
            hub.broadcast_to_conversation(NOW, &conversation, black_box(outgoing.clone()), None);
        drain_outputs(&mut hub);
        sent += 1;
        if sent % 16 == 0 {
            assert_eq!(transmit(&mut hub, &mut written), 16 * members as usize);
            flush_all(&mut hub, &mut written);
        }
    });
    assert_eq!(hub.stats().by_state.get("active"), Some(&(members as usize)), "no one was cut off");
}

/// One publish on the bus in memory (the bus thread's work per message with `--threads`): the
/// position, the history append (1 000 kept), the idempotency key, and the message handed to
/// each of 16 subscribing hubs.
#[divan::bench]
fn local_bus_publish_to_16_hubs(bencher: Bencher) {
    let mut bus = LocalBus::new(SEED, 1000);
    let channel = "sb:{conversation:c-1}".to_owned();
    for hub in 0..16 {
        bus.execute(hub, BusCommand::Subscribe { batch: 1, channels: vec![channel.clone()] });
    }
    let entry = Bytes::from(format!(
        r#"{{"id":"m","origin":"i","except":null,"frame":{{"payload":"{}"}}}}"#,
        "x".repeat(240)
    ));
    let mut n = 0u64;
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        n += 1;
        let key = Id::new(&format!("m-{n}")).unwrap();
        let command = BusCommand::Publish {
            channel: channel.clone(),
            key,
            message: entry.clone(),
            after: None,
        };
        let events = bus.execute(0, command);
        assert_eq!(events.len(), 17);
        events
    });
}
