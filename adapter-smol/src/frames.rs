//! Server frames, written by hand: a batch of frames goes out in as few `writev` calls as the
//! kernel takes, and a long message shared by many sockets is never copied for any of them.
//!
//! A server's frames are not masked, so a text frame is a header of 2, 4 or 10 bytes followed
//! by the text. For a fan-out the text is the shared encoding's body (the hub's one copy) and
//! the recipient's `,"sequence":N}`. A batch writes its headers, suffixes and short bodies
//! into one buffer made for the write, and gives a long body its own slice, read in place (see
//! [`Encoded`] for where the line is and why). The hub encoded the text, so it is valid UTF-8
//! and is not checked again here. Reading stays with tungstenite (see [`crate::socket`]).

use crate::driver::Write;
use bytes::Bytes;
use futures_util::AsyncWrite;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice, Write as _};
use std::pin::Pin;
use switchboard_core::protocol::{CloseCode, SharedFrame};
use switchboard_core::server::FrameRef;

const FIN: u8 = 0x80;
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PONG: u8 = 0xA;

/// Control frames carry at most 125 bytes (RFC 6455, 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// One thing to write, lent: a [`Write`] ([`Write::part`]) or a frame the hub lends
/// ([`switchboard_core::server::Transmit`]). Only what a socket does not take at once is made
/// into a [`Write`] of its own ([`Part::to_write`]).
#[derive(Debug, Clone, Copy)]
pub enum Part<'a> {
    Frame(FrameRef<'a>),
    Close(CloseCode, &'static str),
    Pong(&'a Bytes),
    Rest { bytes: &'a Bytes, frame_len: usize },
    Head(&'a Bytes),
}

impl Part<'_> {
    /// The part, to keep.
    pub fn to_write(self) -> Write {
        match self {
            Part::Frame(frame) => Write::Frame(frame.to_owned()),
            Part::Close(code, reason) => Write::Close(code, reason),
            Part::Pong(payload) => Write::Pong(payload.clone()),
            Part::Rest { bytes, frame_len } => Write::Rest { bytes: bytes.clone(), frame_len },
            Part::Head(head) => Write::Head(head.clone()),
        }
    }
}

impl Write {
    /// The write, lent.
    pub fn part(&self) -> Part<'_> {
        match self {
            Write::Frame(frame) => Part::Frame(frame.as_ref()),
            Write::Close(code, reason) => Part::Close(*code, reason),
            Write::Pong(payload) => Part::Pong(payload),
            Write::Rest { bytes, frame_len } => Part::Rest { bytes, frame_len: *frame_len },
            Write::Head(head) => Part::Head(head),
        }
    }
}

/// Writes `writes` in order, up to and including the first close (nothing follows a close).
pub async fn write_all<W>(io: &mut W, writes: &[Write]) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let writes = match writes.iter().position(|w| matches!(w, Write::Close(..))) {
        Some(close) => &writes[..=close],
        None => writes,
    };
    let batch = Encoded::new(writes.iter().map(Write::part), Vec::new());
    let mut slices = batch.slices();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let written = poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, slices)).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

/// Writes as much of `parts` (frames, no close) as the socket takes now, without waiting;
/// returns how many bytes went out ([`after_written`] says what is left). The batch is
/// encoded in `buffer`, which the caller keeps between writes.
pub fn write_now<'a>(
    socket: &std::net::TcpStream,
    parts: impl Iterator<Item = Part<'a>> + Clone,
    buffer: &mut Vec<u8>,
) -> io::Result<usize> {
    let batch = Encoded::new(parts, std::mem::take(buffer));
    let written = if batch.cuts.is_empty() {
        // A batch of small frames, the usual case: one slice, and no list of slices to make.
        write_slices(socket, &mut [IoSlice::new(&batch.own)])
    } else {
        write_slices(socket, &mut batch.slices())
    };
    *buffer = batch.own;
    written
}

/// Writes `slices` as far as the socket takes them now; returns how many bytes went out.
fn write_slices(socket: &std::net::TcpStream, mut slices: &mut [IoSlice<'_>]) -> io::Result<usize> {
    let mut total = 0;
    while !slices.is_empty() {
        // One slice (a batch of small frames) is a plain `write`: the kernel's `writev` first
        // copies in and checks the slice array.
        let wrote = match slices {
            [one] => (&mut &*socket).write(one),
            _ => (&mut &*socket).write_vectored(slices),
        };
        match wrote {
            // What went out did go out: the writer goes on from there (and meets a socket
            // that takes nothing, or an error, itself).
            Ok(0) => break,
            Ok(written) => {
                total += written;
                IoSlice::advance_slices(&mut slices, written);
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) if total > 0 => break,
            Err(error) => return Err(error),
        }
    }
    Ok(total)
}

/// What is left of a batch (frames, and maybe the socket's head first) once its first
/// `written` bytes went out.
#[derive(Debug, Default)]
pub struct Left {
    /// The hub's frames written whole, and their bytes (as the hub counts them).
    pub frames: usize,
    pub bytes: usize,
    /// The rest, in order: what is left of the head, or the frame begun as [`Write::Rest`],
    /// then the others.
    pub rest: VecDeque<Write>,
}

/// Splits `parts` (frames, and maybe the socket's head first) after their first `written`
/// bytes; what is left is made into [`Write`]s to keep.
pub fn after_written<'a>(parts: impl IntoIterator<Item = Part<'a>>, mut written: usize) -> Left {
    let mut left = Left::default();
    for part in parts {
        if let Part::Head(head) = part {
            // Not a frame of the hub's: nothing to count, only what is left to write.
            let taken = written.min(head.len());
            written -= taken;
            if taken < head.len() {
                left.rest.push_back(Write::Head(head.slice(taken..)));
            }
            continue;
        }
        let Part::Frame(frame) = part else {
            left.rest.push_back(part.to_write());
            continue;
        };
        let len = header_len(frame.len()) + frame.len();
        if written >= len && left.rest.is_empty() {
            written -= len;
            left.frames += 1;
            left.bytes += frame.len();
        } else if written > 0 {
            let one = Encoded::new(std::iter::once(part), Vec::new());
            let whole: Vec<u8> =
                one.slices().iter().flat_map(|slice| slice.iter().copied()).collect();
            let bytes = Bytes::copy_from_slice(&whole[written..]);
            left.rest.push_back(Write::Rest { bytes, frame_len: frame.len() });
            written = 0;
        } else {
            left.rest.push_back(part.to_write());
        }
    }
    left
}

/// A batch's own bytes (headers, suffixes, control frames, and the bodies short enough to
/// copy) in one buffer, and where the longer shared bodies go between them.
///
/// Each slice of a `writev` costs the kernel a setup of its own, more than copying a few
/// hundred bytes here does: with a body of at most [`COPY_AT_MOST`] bytes copied into the
/// batch's buffer, a batch of small frames goes out as one slice, and a fan-out of 300-byte
/// frames to 1 000 went from 2.67 M to 3.15 M deliveries per CPU-second (`switchboard-load
/// --compare`, median of 3). A longer body is read in place.
struct Encoded<'a> {
    own: Vec<u8>,
    /// Each body read in place, in order, with how much of `own` comes before it.
    cuts: Vec<(usize, &'a [u8])>,
}

/// The longest shared body copied into a batch's buffer rather than given its own slice.
const COPY_AT_MOST: usize = 1024;

impl<'a> Encoded<'a> {
    /// Encodes `parts` into `own` (emptied first; the driver keeps one between writes, an
    /// idle socket none).
    fn new(parts: impl Iterator<Item = Part<'a>> + Clone, mut own: Vec<u8>) -> Self {
        // Room for all of it first: a buffer that grows at its last frame copies the whole
        // batch again.
        own.clear();
        own.reserve_exact(parts.clone().map(own_len).sum());
        let mut batch = Encoded { own, cuts: Vec::new() };
        for part in parts {
            batch.push(part);
        }
        batch
    }

    /// The batch as slices, in order, for one write.
    fn slices(&self) -> Vec<IoSlice<'_>> {
        let mut slices = Vec::with_capacity(2 * self.cuts.len() + 1);
        let mut from = 0;
        for &(cut, shared) in &self.cuts {
            if cut > from {
                slices.push(IoSlice::new(&self.own[from..cut]));
            }
            slices.push(IoSlice::new(shared));
            from = cut;
        }
        if self.own.len() > from {
            slices.push(IoSlice::new(&self.own[from..]));
        }
        slices
    }

    /// Appends `part`: its header, its shared body (copied, or a cut where it goes), then the
    /// suffix of a sequenced frame or the payload of a control frame.
    fn push(&mut self, part: Part<'a>) {
        let own = &mut self.own;
        match part {
            Part::Frame(frame) => header(TEXT, frame.len(), own),
            Part::Pong(payload) => {
                let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
                header(PONG, payload.len(), own);
                own.extend_from_slice(payload);
            }
            Part::Close(code, reason) => {
                let reason = truncated(reason, MAX_CONTROL_PAYLOAD - 2);
                header(CLOSE, 2 + reason.len(), own);
                own.extend_from_slice(&code.0.to_be_bytes());
                own.extend_from_slice(reason.as_bytes());
            }
            Part::Head(head) => own.extend_from_slice(head),
            Part::Rest { .. } => {}
        }
        if let Some(shared) = shared_part(part) {
            if copy_in(shared) {
                own.extend_from_slice(shared);
            } else {
                self.cuts.push((own.len(), shared));
            }
        }
        if let Part::Frame(FrameRef::Sequenced { sequence, .. }) = part {
            SharedFrame::write_sequence_suffix(sequence, own);
        }
    }
}

/// The bytes `part` puts in a batch's own buffer (see [`Encoded::push`]).
fn own_len(part: Part<'_>) -> usize {
    let read_in_place = shared_part(part).filter(|body| !copy_in(body)).map_or(0, <[u8]>::len);
    match part {
        Part::Frame(frame) => header_len(frame.len()) + frame.len() - read_in_place,
        Part::Pong(payload) => 2 + payload.len().min(MAX_CONTROL_PAYLOAD),
        Part::Close(_, reason) => 4 + truncated(reason, MAX_CONTROL_PAYLOAD - 2).len(),
        Part::Head(head) => head.len(),
        Part::Rest { bytes, .. } => bytes.len() - read_in_place,
    }
}

/// Whether a shared body is copied into the batch's buffer (or read in place).
fn copy_in(shared: &[u8]) -> bool {
    shared.len() <= COPY_AT_MOST
}

/// The part of `part` read in place from bytes the hub shares.
fn shared_part(part: Part<'_>) -> Option<&[u8]> {
    match part {
        Part::Frame(FrameRef::Whole(bytes)) => Some(bytes),
        Part::Frame(FrameRef::Sequenced { shared, .. }) => Some(shared.body()),
        Part::Rest { bytes, .. } => Some(bytes),
        Part::Pong(_) | Part::Close(..) | Part::Head(_) => None,
    }
}

/// The length of a frame header for a payload of `len` bytes.
fn header_len(len: usize) -> usize {
    match len {
        0..126 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// A frame header: FIN, the opcode, no mask, the payload length in the shortest form.
fn header(opcode: u8, len: usize, out: &mut Vec<u8>) {
    out.push(FIN | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_tungstenite::tungstenite::protocol::{Role, WebSocket};
    use async_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode as WsCode};
    use bytes::Bytes;
    use std::task::{Context, Poll};
    use switchboard_core::server::Frame;

    /// A peer that takes at most `max` bytes per call, and says "not now" every other call.
    struct Trickle {
        bytes: Vec<u8>,
        max: usize,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            slices: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.calls += 1;
            if self.calls % 2 == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let mut room = self.max;
            for slice in slices {
                let n = slice.len().min(room);
                self.bytes.extend_from_slice(&slice[..n]);
                room -= n;
            }
            Poll::Ready(Ok(self.max - room))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn encoded(writes: &[Write]) -> Encoded<'_> {
        Encoded::new(writes.iter().map(Write::part), Vec::new())
    }

    fn shared(text: &str) -> SharedFrame {
        SharedFrame::from_encoded(Bytes::from(text.to_owned())).unwrap()
    }

    /// What a client reads from `bytes`, every message until the stream ends or closes.
    fn read_as_client(bytes: Vec<u8>) -> Vec<Message> {
        let mut ws = WebSocket::from_raw_socket(io::Cursor::new(bytes), Role::Client, None);
        let mut messages = Vec::new();
        while let Ok(message) = ws.read() {
            let closed = message.is_close();
            messages.push(message);
            if closed {
                break;
            }
        }
        messages
    }

    #[test]
    fn a_batch_reads_back_as_the_same_frames_however_the_kernel_takes_it() {
        let long = |n: usize| format!(r#"{{"x":"{}"}}"#, "é".repeat(n));
        let writes = vec![
            Write::Frame(Frame::sequenced(shared(r#"{"a":1}"#), 7)),
            Write::Pong(Bytes::from_static(b"ping-payload")),
            Write::Frame(Frame::Whole(Bytes::from(long(100)))),
            Write::Frame(Frame::sequenced(shared(&long(40_000)), u64::MAX)),
            Write::Frame(Frame::sequenced(shared(r#"{"b":2}"#), 0)),
            Write::Frame(Frame::Whole(Bytes::from(long(30)))),
            Write::Close(CloseCode(4013), "slow_consumer"),
            Write::Frame(Frame::Whole(Bytes::from_static(b"{\"after\":\"close\"}"))),
        ];
        let expected = vec![
            Message::text(r#"{"a":1,"sequence":7}"#),
            Message::Pong(Bytes::from_static(b"ping-payload")),
            Message::text(long(100)),
            Message::text(format!(r#"{{"x":"{}","sequence":{}}}"#, "é".repeat(40_000), u64::MAX)),
            Message::text(r#"{"b":2,"sequence":0}"#),
            Message::text(long(30)),
            Message::Close(Some(async_tungstenite::tungstenite::protocol::CloseFrame {
                code: WsCode::from(4013),
                reason: "slow_consumer".into(),
            })),
        ];
        for max in [1, 7, 4096, usize::MAX] {
            let mut peer = Trickle { bytes: Vec::new(), max, calls: 0 };
            smol::block_on(write_all(&mut peer, &writes)).unwrap();
            assert_eq!(read_as_client(peer.bytes), expected, "at most {max} bytes per write");
        }
    }

    #[test]
    fn small_frames_go_out_as_one_slice_and_a_long_body_is_read_in_place() {
        let long = shared(&format!(r#"{{"x":"{}"}}"#, "y".repeat(COPY_AT_MOST)));
        let writes = vec![
            Write::Frame(Frame::sequenced(shared(r#"{"a":1}"#), 7)),
            Write::Pong(Bytes::from_static(b"p")),
            Write::Frame(Frame::Whole(Bytes::from_static(b"{}"))),
        ];
        assert_eq!(encoded(&writes).slices().len(), 1);
        let writes = [writes, vec![Write::Frame(Frame::sequenced(long.clone(), 8))]].concat();
        let batch = encoded(&writes);
        let slices = batch.slices();
        // The small frames and the long one's header, its body in place, its suffix.
        assert_eq!(slices.len(), 3);
        assert!(std::ptr::eq(slices[1].as_ptr(), long.body().as_ptr()));
    }

    #[test]
    fn a_batch_buffer_is_made_the_size_it_ends() {
        let long = shared(&format!(r#"{{"x":"{}"}}"#, "y".repeat(COPY_AT_MOST)));
        let writes = [
            Write::Head(Bytes::from_static(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")),
            Write::Frame(Frame::sequenced(shared(&format!(r#"{{"y":"{}"}}"#, "z".repeat(200))), 7)),
            Write::Frame(Frame::sequenced(shared(r#"{"a":1}"#), u64::MAX)),
            Write::Frame(Frame::sequenced(long.clone(), 12_345)),
            Write::Frame(Frame::Whole(Bytes::from(format!(r#"{{"w":"{}"}}"#, "w".repeat(70_000))))),
            Write::Pong(Bytes::from(vec![b'p'; 200])),
            Write::Rest { bytes: Bytes::from_static(b"st of a frame"), frame_len: 20 },
            Write::Close(CloseCode(4013), "slow_consumer"),
            // A reason cut to fit a control frame, on a character's boundary.
            Write::Close(CloseCode(4000), "é".repeat(80).leak()),
        ];
        for n in 1..=writes.len() {
            let batch = encoded(&writes[..n]);
            assert_eq!(batch.own.capacity(), batch.own.len(), "the first {n} writes");
        }
    }

    #[test]
    fn a_kept_buffer_is_emptied_before_the_next_batch_and_kept_after_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sender = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut receiver, _) = listener.accept().unwrap();
        let writes = vec![
            Write::Frame(Frame::sequenced(shared(r#"{"a":1}"#), 7)),
            Write::Frame(Frame::Whole(Bytes::from_static(b"{}"))),
        ];
        let whole: Vec<u8> = encoded(&writes).slices().iter().flat_map(|s| s.to_vec()).collect();
        let mut buffer = b"what the last batch left".repeat(10);
        let room = buffer.capacity();
        let written = write_now(&sender, writes.iter().map(Write::part), &mut buffer).unwrap();
        assert_eq!(written, whole.len());
        assert_eq!(buffer.capacity(), room, "the room is kept for the next write");
        let mut read = vec![0; whole.len()];
        io::Read::read_exact(&mut receiver, &mut read).unwrap();
        assert_eq!(read, whole);
    }

    #[test]
    fn a_batch_cut_anywhere_goes_on_from_where_it_was_cut() {
        let head = Bytes::from_static(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        let writes = vec![
            Write::Head(head.clone()),
            Write::Frame(Frame::sequenced(shared(r#"{"a":1}"#), 7)),
            Write::Frame(Frame::Whole(Bytes::from(format!(r#"{{"x":"{}"}}"#, "y".repeat(300))))),
            Write::Frame(Frame::sequenced(shared(r#"{"b":2}"#), 12)),
        ];
        let whole: Vec<u8> = encoded(&writes).slices().iter().flat_map(|s| s.to_vec()).collect();
        let lens: Vec<usize> = writes
            .iter()
            .filter_map(|w| match w {
                Write::Frame(frame) => Some(frame.len()),
                _ => None,
            })
            .collect();
        for cut in 0..=whole.len() {
            let mut left = after_written(writes.iter().map(Write::part), cut);
            let mut rest = Trickle { bytes: Vec::new(), max: usize::MAX, calls: 0 };
            smol::block_on(write_all(&mut rest, left.rest.make_contiguous())).unwrap();
            let mut again = whole[..cut].to_vec();
            again.extend_from_slice(&rest.bytes);
            assert_eq!(again, whole, "cut at {cut}");
            let begun: usize = left
                .rest
                .iter()
                .map(|w| match w {
                    Write::Frame(_) | Write::Head(_) => 0,
                    Write::Rest { frame_len, .. } => *frame_len,
                    _ => unreachable!(),
                })
                .sum();
            let whole_frames = lens.iter().take(left.frames).sum::<usize>();
            assert_eq!(left.bytes, whole_frames, "cut at {cut}");
            let head_left = matches!(left.rest.front(), Some(Write::Head(_)));
            assert_eq!(head_left, cut < head.len(), "cut at {cut}");
            assert_eq!(left.frames + left.rest.len() - usize::from(head_left), 3, "cut at {cut}");
            assert!(begun == 0 || matches!(left.rest.front(), Some(Write::Rest { .. })));
        }
    }
}
