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
use futures_util::future::Either;
use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::time::Duration;
use switchboard_core::protocol::CloseCode;
use switchboard_core::server::{Input, SocketId};

/// How long a socket we closed may take to finish the close handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Runs a socket until it ends, then reports the end to the driver.
pub async fn run<S>(
    ws: WebSocketStream<S>,
    socket: SocketId,
    commands: Sender<Command>,
    writes: OutboxReceiver<Write>,
) where
    S: futures_util::AsyncRead + futures_util::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();

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
    };

    // Ends with whether it sent our close frame.
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
                            return false;
                        }
                    }
                    Write::Frame(_) => {}
                    Write::Close(code, reason) => close = Some((code, reason)),
                }
            }
            if sink.flush().await.is_err() {
                return false;
            }
            if frames > 0 {
                let flushed = Input::Flushed { socket, frames, bytes };
                let _ = commands.send(Command::Input(flushed)).await;
            }
            if let Some((code, reason)) = close {
                let frame = CloseFrame { code: WsCloseCode::from(code.0), reason: reason.into() };
                let _ = sink.send(Message::Close(Some(frame))).await;
                return true;
            }
        }
        false
    };

    let (reader, writer) = (std::pin::pin!(reader), std::pin::pin!(writer));
    match futures_util::future::select(reader, writer).await {
        Either::Left(((), writer)) => {
            // The peer is gone; the writer ends once the driver lets go of the socket.
            writer.await;
        }
        Either::Right((false, reader)) => reader.await,
        Either::Right((true, reader)) => {
            // We closed: the peer has a grace period to finish the handshake.
            let finished = async {
                reader.await;
                true
            };
            let gave_up = async {
                smol::Timer::after(CLOSE_GRACE).await;
                false
            };
            let finished = smol::future::or(finished, gave_up).await;
            if !finished {
                // The driver still hears of the end.
                let _ = commands.send(Command::Input(Input::Closed { socket, code: None })).await;
            }
        }
    }
}
