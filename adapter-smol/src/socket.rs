//! One WebSocket: a reader that feeds the driver and a writer that batches what the driver
//! sends, flushing once per batch. No decisions: the hub makes them.

use crate::driver::{Command, Write};
use crate::outbox::OutboxReceiver;
use async_channel::Sender;
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::cell::Cell;
use std::collections::VecDeque;
use std::time::Duration;
use switchboard_core::protocol::CloseCode;
use switchboard_core::server::{Input, SocketId};

/// How long a socket the driver has let go of may take to finish.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Frames a writer's batch queue may keep room for between batches.
const MAX_IDLE_BATCH: usize = 64;

/// Runs a socket until it ends, then reports the end to the driver (once).
pub async fn run<S>(
    ws: WebSocketStream<S>,
    socket: SocketId,
    commands: Sender<Command>,
    written: Sender<Input>,
    writes: OutboxReceiver<Write>,
) where
    S: futures_util::AsyncRead + futures_util::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let reported = Cell::new(false);

    let reader = async {
        let mut code = None;
        while let Some(message) = stream.next().await {
            let input = match message {
                Ok(Message::Text(text)) => Input::Text { socket, frame: Bytes::from(text) },
                Ok(Message::Binary(_)) => Input::Binary { socket },
                Ok(Message::Close(frame)) => {
                    // Keep reading until the stream ends, so the close reply goes out.
                    code = frame.map(|f| CloseCode(u16::from(f.code)));
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
        while writes.ready().await {
            // Let the other ready tasks run first (the driver may be handing out more frames),
            // so that one write carries as many frames as are ready.
            smol::future::yield_now().await;
            writes.take_all(&mut batch);
            let (mut frames, mut bytes, mut close) = (0, 0, None);
            for write in batch.drain(..) {
                match write {
                    Write::Frame(frame) if close.is_none() => {
                        frames += 1;
                        bytes += frame.len();
                        let Ok(text) = frame.try_into() else { continue };
                        if sink.feed(Message::Text(text)).await.is_err() {
                            return;
                        }
                    }
                    Write::Frame(_) => {}
                    Write::Close(code, reason) => close = Some((code, reason)),
                }
            }
            // After a burst, give the memory back rather than keep it for the socket's life.
            if batch.capacity() > MAX_IDLE_BATCH {
                batch = VecDeque::new();
            }
            if sink.flush().await.is_err() {
                return;
            }
            if frames > 0 {
                let flushed = Input::Flushed { socket, frames, bytes };
                let _ = written.send(flushed).await;
            }
            if let Some((code, reason)) = close {
                let frame = CloseFrame { code: WsCloseCode::from(code.0), reason: reason.into() };
                let _ = sink.send(Message::Close(Some(frame))).await;
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
