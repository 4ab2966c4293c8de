//! One WebSocket: a reader that feeds the driver and a writer that writes what the driver
//! sends, a batch at a time. No decisions: the hub makes them.
//!
//! tungstenite reads the frames (see [`crate::reader`]; its writes go nowhere); the writer writes
//! every frame itself ([`crate::frames`]), the answers to the peer's pings and close included,
//! so that a fan-out's shared message is never copied into a per-socket buffer.

use crate::driver::{Command, Stream, Write};
use crate::frames;
use crate::outbox::OutboxReceiver;
use crate::reader::Reader;
use async_channel::Sender;
use async_tungstenite::tungstenite::Message;
use bytes::Bytes;
use futures_util::AsyncWrite;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;
use switchboard_core::protocol::CloseCode;
use switchboard_core::server::{Input, SocketId};

/// How long a socket the driver has let go of may take to finish.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What the reader asks the writer to answer. Only the latest ping is answered (RFC 6455
/// allows it), so a peer that pings without reading cannot grow this.
#[derive(Debug, Default)]
struct Replies {
    pong: Option<Bytes>,
    /// The peer closed: echo its code (1000 if it gave none).
    close: Option<CloseCode>,
}

/// What the reader made of what it read.
enum Read {
    /// For the driver.
    Input(Input),
    /// A reply for the writer to send (in `replies`).
    Reply,
    /// Nothing to do (a pong).
    Nothing,
    /// The socket is done reading.
    End,
}

/// Turns what tungstenite read into an input for the driver, or a reply (a ping's pong, the
/// peer's close echoed), or the end; a close's code is kept in `code` for the end.
fn read(
    message: Option<Result<Message, async_tungstenite::tungstenite::Error>>,
    socket: SocketId,
    replies: &RefCell<Replies>,
    code: &mut Option<CloseCode>,
) -> Read {
    match message {
        Some(Ok(Message::Text(text))) => {
            Read::Input(Input::Text { socket, frame: Bytes::from(text) })
        }
        Some(Ok(Message::Binary(_))) => Read::Input(Input::Binary { socket }),
        Some(Ok(Message::Ping(payload))) => {
            replies.borrow_mut().pong = Some(payload);
            Read::Reply
        }
        Some(Ok(Message::Close(frame))) => {
            // Reading goes on until the stream ends, so that the close reply goes out.
            *code = frame.map(|f| CloseCode(u16::from(f.code)));
            replies.borrow_mut().close = Some(code.unwrap_or(CloseCode::NORMAL));
            Read::Reply
        }
        Some(Ok(_)) => Read::Nothing,
        Some(Err(error)) => {
            tracing::debug!(socket = socket.0, %error, "socket read failed");
            Read::End
        }
        None => Read::End,
    }
}

/// One write's worth: everything the driver handed over, the replies first.
struct Batch {
    writes: VecDeque<Write>,
    /// The frames and bytes of the hub's frames in it (for [`Input::Flushed`]).
    frames: usize,
    bytes: usize,
    /// Whether it ends with a close (the writer's last batch).
    closes: bool,
}

impl Batch {
    fn take(outbox: &OutboxReceiver<Write>, replies: &RefCell<Replies>) -> Batch {
        let mut writes = outbox.take_all();
        let Replies { pong, close } = std::mem::take(&mut *replies.borrow_mut());
        // The replies go first (the peer's close is answered before anything else: it reads
        // nothing more), but after the socket's head, or after the rest of a frame the driver
        // began: a frame is never cut.
        let at = usize::from(matches!(writes.front(), Some(Write::Rest { .. } | Write::Head(_))));
        if let Some(code) = close {
            writes.insert(at, Write::Close(code, ""));
        }
        if let Some(payload) = pong {
            writes.insert(at, Write::Pong(payload));
        }
        let (mut frames, mut bytes, mut closes) = (0, 0, false);
        for write in &writes {
            match write {
                Write::Frame(frame) => (frames, bytes) = (frames + 1, bytes + frame.len()),
                Write::Rest { frame_len, .. } => (frames, bytes) = (frames + 1, bytes + frame_len),
                Write::Close(..) => {
                    closes = true;
                    break;
                }
                Write::Pong(_) | Write::Head(_) => {}
            }
        }
        Batch { writes, frames, bytes, closes }
    }
}

/// Runs a socket until it ends, then reports the end to the driver (once). `ws` reads
/// `stream`, which the writer writes; `counted` (what counts the socket as open) is dropped at
/// the end.
///
/// Not an async function: an async function keeps its arguments and its own copies of them
/// (a few hundred bytes, every socket, for its whole life); an async block uses what it took
/// in place.
#[expect(clippy::manual_async_fn, reason = "an async fn would hold its arguments twice")]
pub fn run(
    mut ws: Reader,
    stream: Stream,
    socket: SocketId,
    commands: Sender<Command>,
    written: Sender<Input>,
    writes: OutboxReceiver<Write>,
    counted: impl Sized,
) -> impl Future<Output = ()> {
    async move {
        let mut out = &*stream;
        let reported = Cell::new(false);
        let replies = RefCell::new(Replies::default());

        // Neither loop keeps what it read or took across an await (only the small future that
        // sends it on): whatever an async block holds across an await, every socket carries.
        let reader = async {
            let mut code = None;
            loop {
                let sending =
                    match read(poll_fn(|cx| ws.poll_next(cx)).await, socket, &replies, &mut code) {
                        Read::Input(input) => send(&commands, Command::Input(input)),
                        Read::Reply => {
                            writes.wake();
                            continue;
                        }
                        Read::Nothing => continue,
                        Read::End => break,
                    };
                if !sending.await {
                    break;
                }
            }
            send(&commands, Command::Input(Input::Closed { socket, code })).await;
            reported.set(true);
        };

        let writer = async {
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
                // Boxed: a batch and its write are held only while the socket is slow to take
                // them, and an idle socket should not keep room for them.
                let batch = Box::pin(write_batch(&mut out, &writes, &replies, socket, &written));
                if !batch.await {
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
            // Boxed: every socket would carry a timer's room for its whole life.
            Box::pin(smol::Timer::after(CLOSE_GRACE)).await;
            ((), ())
        };
        smol::future::or(ended, abandoned).await;
        if !reported.get() {
            send(&commands, Command::Input(Input::Closed { socket, code: None })).await;
        }
        drop(counted);
    }
}

/// Writes what the driver handed over and the replies, as one batch, and tells the driver what
/// was written; returns whether the writer goes on (not after a close or a broken connection).
async fn write_batch<W: AsyncWrite + Unpin>(
    out: &mut W,
    writes: &OutboxReceiver<Write>,
    replies: &RefCell<Replies>,
    socket: SocketId,
    written: &Sender<Input>,
) -> bool {
    let mut batch = Batch::take(writes, replies);
    let result = frames::write_all(out, batch.writes.make_contiguous()).await;
    // After a close (or on a broken connection) nothing more may be written: not by this
    // writer, nor by the driver on its behalf.
    writes.written(batch.closes || result.is_err());
    if result.is_err() {
        return false;
    }
    let Batch { writes, frames, bytes, closes } = batch;
    drop(writes);
    if frames > 0 && !send(written, Input::Flushed { socket, frames, bytes }).await {
        return false;
    }
    !closes
}

/// Sends `item` to the driver; the future says whether the driver is still there.
///
/// The queue is bounded, so a full one is waited on, in a box: a sending future holds the
/// item until it is taken, and every socket would otherwise carry room for a few items for
/// its whole life (its reader's, its writer's, its last). The common case, room in the queue,
/// is decided here, before the future is awaited.
pub fn send<T>(to: &Sender<T>, item: T) -> impl Future<Output = bool> + '_ {
    let waiting = match to.try_send(item) {
        Ok(()) => Ok(true),
        Err(async_channel::TrySendError::Full(item)) => Err(Box::pin(to.send(item))),
        Err(async_channel::TrySendError::Closed(_)) => Ok(false),
    };
    async move {
        match waiting {
            Ok(sent) => sent,
            Err(sending) => sending.await.is_ok(),
        }
    }
}
