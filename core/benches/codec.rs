//! Parse and encode of a typical small envelope (~200 bytes) and a 4 KiB one.
//!
//! Run: `cargo bench -p switchboard-core --bench codec`. Messages per second per core is
//! 1 / the median time printed.

use divan::{Bencher, black_box, counter::BytesCount};
use switchboard_core::protocol::{DEFAULT_MAX_FRAME_BYTES, Envelope};

fn main() {
    divan::main();
}

/// A chat message as a browser sends it: ~200 bytes.
fn small() -> Vec<u8> {
    br#"{"id":"5f0e9c1a-2b3d-4e5f-8a9b-0c1d2e3f4a5b","type":"data.message.send","version":"1.0","timestamp":"2025-12-18T10:30:00.000Z","source":"client","conversationId":"c-7d0c8a52","payload":{"content":"Hi there"}}"#.to_vec()
}

/// A 4 KiB frame: a tool result with a long text and some structure.
fn large() -> Vec<u8> {
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(80);
    let frame = format!(
        r#"{{"id":"01JFB8Z3K4M5N6P7Q8R9S0T1V2","type":"data.tool.result","version":"1.0","timestamp":"2025-12-18T10:30:00.000Z","source":"server","conversationId":"conv-7d0c8a52-3c1e-4f7e-9a51-0e2b6f1d9c44","correlationId":"01JFB8Z3K4M5N6P7Q8R9S0T1AB","payload":{{"toolCallId":"call_42","status":"ok","output":{{"text":"{text}","rows":[[1,2,3],[4,5,6]],"truncated":false}}}},"sequence":1234}}"#
    );
    assert!((3_900..4_300).contains(&frame.len()), "{}", frame.len());
    frame.into_bytes()
}

#[divan::bench(args = ["small", "4KiB"])]
fn parse(bencher: Bencher, size: &str) {
    let frame = if size == "small" { small() } else { large() };
    bencher
        .counter(BytesCount::of_slice(&frame))
        .bench(|| Envelope::parse(black_box(&frame), DEFAULT_MAX_FRAME_BYTES).unwrap());
}

/// What the hub does: the frame arrives as `Bytes` and the envelope shares them.
#[divan::bench(args = ["small", "4KiB"])]
fn parse_shared(bencher: Bencher, size: &str) {
    let frame = bytes::Bytes::from(if size == "small" { small() } else { large() });
    bencher.counter(BytesCount::of_slice(&frame)).bench(|| {
        Envelope::parse_shared(black_box(frame.clone()), DEFAULT_MAX_FRAME_BYTES).unwrap()
    });
}

#[divan::bench(args = ["small", "4KiB"])]
fn encode(bencher: Bencher, size: &str) {
    let frame = if size == "small" { small() } else { large() };
    let envelope = Envelope::parse(&frame, DEFAULT_MAX_FRAME_BYTES).unwrap();
    let mut out = Vec::with_capacity(8 * 1024);
    bencher.counter(BytesCount::of_slice(&frame)).bench_local(|| {
        out.clear();
        black_box(&envelope).encode_into(&mut out);
        black_box(out.len())
    });
}
