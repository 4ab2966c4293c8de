//! A socket's reading side: tungstenite parses what the peer sends, and exists only while the
//! peer is sending.
//!
//! Most sockets are idle most of the time, and tungstenite's state (its read buffer, its
//! context) is most of what an idle socket would hold. So the bytes tungstenite reads pass
//! through a [`Feed`] that follows the frame boundaries in them (with tungstenite's own header
//! parser), and whenever the socket has nothing more to read and tungstenite holds nothing (no
//! part of a frame, no unfinished fragmented message), tungstenite is dropped, to be made anew
//! when the socket is readable again.

use crate::driver::Stream;
use async_tungstenite::tungstenite::protocol::frame::FrameHeader;
use async_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use async_tungstenite::tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use async_tungstenite::tungstenite::{Error, Message};
use bytes::Bytes;
use std::io::{self, Cursor, Read, Write};
use std::rc::Rc;
use std::task::{Context, Poll, ready};

/// Reads a socket's messages.
pub struct Reader {
    state: State,
    config: Rc<WebSocketConfig>,
    /// The peer's close was read: tungstenite is kept to the end, so that it refuses what a
    /// peer sends after its close.
    closing: bool,
}

enum State {
    /// Nothing is part-read.
    Resting(Feed),
    /// tungstenite is reading (boxed: it is there only while the peer is sending).
    Reading(Box<WebSocket<Feed>>),
    /// Only while one state becomes the other.
    Moving,
}

impl Reader {
    /// A reader of `stream`, after `prefix` (what the HTTP server read past the upgrade
    /// request, usually nothing).
    pub fn new(stream: Stream, prefix: Bytes, config: Rc<WebSocketConfig>) -> Self {
        let mut feed = Feed { stream, boundary: Boundary::default() };
        let state = if prefix.is_empty() {
            State::Resting(feed)
        } else {
            feed.boundary.pass(&prefix);
            let (role, config) = (Role::Server, Some(*config));
            State::Reading(Box::new(WebSocket::from_partially_read(
                feed,
                prefix.into(),
                role,
                config,
            )))
        };
        Reader { state, config, closing: false }
    }

    /// The next message; `None` once the connection is closed. (A poll function, not an async
    /// one: waiting for it takes no room beyond the reader's own.)
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        loop {
            let ws = match &mut self.state {
                State::Reading(ws) => ws,
                State::Resting(feed) => {
                    if let Err(error) = ready!(feed.stream.poll_readable(cx)) {
                        return Poll::Ready(Some(Err(Error::Io(error))));
                    }
                    let State::Resting(feed) = std::mem::replace(&mut self.state, State::Moving)
                    else {
                        unreachable!("the state was resting")
                    };
                    let ws = WebSocket::from_raw_socket(feed, Role::Server, Some(*self.config));
                    self.state = State::Reading(Box::new(ws));
                    continue;
                }
                State::Moving => unreachable!("a reader's state is never left moving"),
            };
            match ws.read() {
                Ok(message) => {
                    self.closing |= matches!(message, Message::Close(_));
                    return Poll::Ready(Some(Ok(message)));
                }
                Err(Error::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                    if !self.closing && ws.get_ref().boundary.at_rest() {
                        let State::Reading(ws) = std::mem::replace(&mut self.state, State::Moving)
                        else {
                            unreachable!("the state was reading")
                        };
                        self.state = State::Resting(ws.into_inner());
                    } else if let Err(error) = ready!(ws.get_ref().stream.poll_readable(cx)) {
                        return Poll::Ready(Some(Err(Error::Io(error))));
                    }
                }
                Err(Error::ConnectionClosed | Error::AlreadyClosed) => return Poll::Ready(None),
                Err(error) => return Poll::Ready(Some(Err(error))),
            }
        }
    }
}

/// The socket as tungstenite reads it: without blocking, each byte read watched by the
/// [`Boundary`]. What tungstenite would write (its automatic answers to a ping or a close) is
/// dropped: the socket's writer writes every frame itself (see [`crate::socket`]).
struct Feed {
    stream: Stream,
    boundary: Boundary,
}

impl Read for Feed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.get_ref().read(buf)?;
        self.boundary.pass(&buf[..n]);
        Ok(n)
    }
}

impl Write for Feed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where a byte stream of WebSocket frames stands: in a frame's header, in its payload, or
/// between frames; and whether a fragmented message is unfinished.
#[derive(Debug, Default)]
struct Boundary {
    /// The header read so far (at most 14 bytes).
    header: [u8; 14],
    header_len: u8,
    /// The bytes of the current frame's payload still to come.
    payload_left: u64,
    /// A data frame without FIN was read, and no final continuation yet.
    message_open: bool,
    /// A header tungstenite will refuse: the connection ends, and this never rests again.
    broken: bool,
}

impl Boundary {
    /// Whether every byte so far was of whole frames that end a message: then tungstenite,
    /// which reads until the stream would block, has used them all and holds nothing.
    fn at_rest(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0 && !self.message_open && !self.broken
    }

    /// Follows `bytes`, the next bytes of the stream.
    fn pass(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.broken {
            if self.payload_left > 0 {
                let n = bytes.len().min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                self.payload_left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let had = usize::from(self.header_len);
            let n = bytes.len().min(self.header.len() - had);
            self.header[had..had + n].copy_from_slice(&bytes[..n]);
            let mut cursor = Cursor::new(&self.header[..had + n]);
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((header, len))) => {
                    // The header's end is in what was copied: the rest of it is payload.
                    let used = usize::try_from(cursor.position()).unwrap_or(usize::MAX) - had;
                    bytes = &bytes[used..];
                    self.header_len = 0;
                    self.payload_left = len;
                    match header.opcode {
                        OpCode::Data(Data::Continue) if header.is_final => {
                            self.message_open = false;
                        }
                        OpCode::Data(Data::Text | Data::Binary) => {
                            self.message_open = !header.is_final;
                        }
                        _ => {}
                    }
                }
                Ok(None) => {
                    self.header_len = (had + n) as u8;
                    bytes = &bytes[n..];
                }
                Err(_) => self.broken = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_tungstenite::tungstenite::protocol::frame::Frame;

    /// A client's (masked) frame, as bytes.
    fn frame(opcode: OpCode, is_final: bool, payload: &[u8]) -> Vec<u8> {
        let header = FrameHeader { is_final, opcode, mask: Some([1, 2, 3, 4]), ..<_>::default() };
        let frame = Frame::from_payload(header, payload.to_vec().into());
        let mut bytes = Vec::new();
        frame.format(&mut bytes).unwrap();
        bytes
    }

    /// Passes `stream` in pieces cut at every `step` bytes; returns whether it rested after
    /// each byte offset that ended a piece.
    fn rests(stream: &[u8], step: usize) -> Vec<(usize, bool)> {
        let mut boundary = Boundary::default();
        let mut at = 0;
        let mut seen = Vec::new();
        for piece in stream.chunks(step) {
            boundary.pass(piece);
            at += piece.len();
            seen.push((at, boundary.at_rest()));
        }
        seen
    }

    #[test]
    fn it_rests_only_after_whole_messages_however_the_bytes_arrive() {
        let text = OpCode::Data(Data::Text);
        let more = OpCode::Data(Data::Continue);
        let ping =
            OpCode::Control(async_tungstenite::tungstenite::protocol::frame::coding::Control::Ping);
        let long = vec![b'x'; 70_000]; // a 64-bit length
        let medium = vec![b'y'; 300]; // a 16-bit length
        let parts = [
            frame(text, true, b"{\"type\":\"data.a\"}"),
            frame(text, false, b"fir"),
            frame(ping, true, b"p"),
            frame(more, false, &medium),
            frame(more, true, b"st"),
            frame(text, true, &long),
            frame(text, true, b""),
        ];
        // Where a message ends (the stream rests), as byte offsets.
        let mut ends = Vec::new();
        let mut at = 0;
        for (i, part) in parts.iter().enumerate() {
            at += part.len();
            if matches!(i, 0 | 4 | 5 | 6) {
                ends.push(at);
            }
        }
        let stream = parts.concat();
        for step in [1, 2, 3, 5, 13, 14, 100, 4096, stream.len()] {
            for (offset, rested) in rests(&stream, step) {
                assert_eq!(rested, ends.contains(&offset), "step {step}, offset {offset}");
            }
        }
    }

    #[test]
    fn a_header_tungstenite_refuses_never_rests() {
        let mut boundary = Boundary::default();
        boundary.pass(&[0x83, 0x80, 0, 0, 0, 0]); // opcode 3 is reserved
        assert!(!boundary.at_rest());
        boundary.pass(&frame(OpCode::Data(Data::Text), true, b"x"));
        assert!(!boundary.at_rest());
    }
}
