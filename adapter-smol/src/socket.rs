//! One WebSocket: a reader that feeds the driver and a writer that writes what the driver
//! sends, a batch at a time. No decisions: the hub makes them.
//!
//! tungstenite reads the frames (its writes go nowhere, see [`crate::http`]); the writer writes
//! every frame itself ([`crate::frames`]), the answers to the peer's pings and close included,
//! so that a fan-out's shared message is never copied into a per-socket buffer.

use crate::driver::{Command, Write};
use crate::frames::{self, Scratch};
use crate::outbox::OutboxReceiver;
use async_channel::Sender;
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use bytes::Bytes;
use futures_util::{AsyncRead, AsyncWrite, StreamExt};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;
use switchboard_core::protocol::CloseCode;
use switchboard_core::server::{Input, SocketId};

/// How long a socket the driver has let go of may take to finish.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Frames a writer's batch queue may keep room for between batches.
const MAX_IDLE_BATCH: usize = 64;

/// Bytes of headers and suffixes a writer may keep room for between batches.
const MAX_IDLE_SCRATCH: usize = 1024;

/// What the reader asks the writer to answer. Only the latest ping is answered (RFC 6455
/// allows it), so a peer that pings without reading cannot grow this.
#[derive(Debug, Default)]
struct Replies {
    pong: Option<Bytes>,
    /// The peer closed: echo its code (1000 if it gave none).
    close: Option<CloseCode>,
}

/// Runs a socket until it ends, then reports the end to the driver (once). `ws` reads, `out`
/// is the same connection's write half.
pub async fn run<R, W>(
    mut ws: WebSocketStream<R>,
    mut out: W,
    socket: SocketId,
    commands: Sender<Command>,
    written: Sender<Input>,
    writes: OutboxReceiver<Write>,
) where
    R: AsyncRead + AsyncWrite + Unpin,
    W: AsyncWrite + Unpin,
{
    let reported = Cell::new(false);
    let replies = RefCell::new(Replies::default());

    let reader = async {
        let mut code = None;
        while let Some(message) = ws.next().await {
            let input = match message {
                Ok(Message::Text(text)) => Input::Text { socket, frame: Bytes::from(text) },
                Ok(Message::Binary(_)) => Input::Binary { socket },
                Ok(Message::Ping(payload)) => {
                    replies.borrow_mut().pong = Some(payload);
                    writes.wake();
                    continue;
                }
                Ok(Message::Close(frame)) => {
                    // Keep reading until the stream ends, so the close reply goes out.
                    code = frame.map(|f| CloseCode(u16::from(f.code)));
                    replies.borrow_mut().close = Some(code.unwrap_or(CloseCode::NORMAL));
                    writes.wake();
                    continue;
                }
                Ok(_) => continue,
                Err(error) => {
                    tracing::debug!(socket = socket.0, %error, "socket read failed");
                    break;
                }
            };
            if commands.send(Command::Input(input)).await.is_err() {
                break;
            }
        }
        let _ = commands.send(Command::Input(Input::Closed { socket, code })).await;
        reported.set(true);
    };

    let writer = async {
        let mut batch = VecDeque::new();
        let mut scratch = Scratch::default();
        loop {
            let more = poll_fn(|cx| {
                let replies = replies.borrow();
                if replies.pong.is_some() || replies.close.is_some() {
                    Poll::Ready(true)
                } else {
                    writes.poll_ready(cx)
                }
            });
            if !more.await {
                return;
            }
            // Let the other ready tasks run first (the driver may be handing out more frames),
            // so that one write carries as many frames as are ready.
            smol::future::yield_now().await;
            writes.take_all(&mut batch);
            let Replies { pong, close } = std::mem::take(&mut *replies.borrow_mut());
            // The peer's close is answered before anything else: it reads nothing more.
            if let Some(code) = close {
                batch.push_front(Write::Close(code, ""));
            }
            if let Some(payload) = pong {
                batch.push_front(Write::Pong(payload));
            }
            let batch_slice = batch.make_contiguous();
            let end = batch_slice.iter().position(|w| matches!(w, Write::Close(..)));
            let (frames, bytes) = batch_slice[..end.unwrap_or(batch_slice.len())]
                .iter()
                .filter_map(|w| match w {
                    Write::Frame(frame) => Some(frame.len()),
                    _ => None,
                })
                .fold((0, 0), |(frames, bytes), len| (frames + 1, bytes + len));
            let result = frames::write_all(&mut out, batch_slice, &mut scratch).await;
            batch.clear();
            // After a burst, give the memory back rather than keep it for the socket's life.
            if batch.capacity() > MAX_IDLE_BATCH {
                batch = VecDeque::new();
            }
            scratch.trim(MAX_IDLE_SCRATCH);
            if result.is_err() {
                return;
            }
            if frames > 0 {
                let _ = written.send(Input::Flushed { socket, frames, bytes }).await;
            }
            if end.is_some() {
                return;
            }
        }
    };

    // A combinator, not an async block around it: an async block would keep its own copy of
    // the two futures it moved in (a few hundred bytes per socket).
    let ended = futures_util::future::join(reader, writer);
    // Once the driver lets go of the socket (we closed it, or it heard of the end), the socket
    // has a grace period to finish: the peer to complete the close handshake, or a writer stuck
    // on a peer that stopped reading (a slow consumer cut off with 4013) to give up.
    let abandoned = async {
        writes.closed().await;
        smol::Timer::after(CLOSE_GRACE).await;
        ((), ())
    };
    smol::future::or(ended, abandoned).await;
    if !reported.get() {
        let _ = commands.send(Command::Input(Input::Closed { socket, code: None })).await;
    }
}
