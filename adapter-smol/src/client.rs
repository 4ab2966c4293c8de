//! The native client: the client core driven by smol, async-net and async-tungstenite.
//!
//! A driver task owns the [`Client`] state machine; each socket attempt is a task that reports
//! its events back as inputs. The application talks to it through [`NativeClient`]: send,
//! subscribe to events, disconnect. Reconnection, resume and the send queue are the core's.

use async_channel::{Receiver, Sender};
use async_net::TcpStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};
use switchboard_core::client::{
    AttemptId, Client, ClientConfig, ClientEvent, ClientInput, ClientOutput,
};
use switchboard_core::protocol::CloseCode;
use switchboard_core::time::Instant;

use crate::driver::Clock;

/// What a socket task is told.
enum SocketWrite {
    Frame(Bytes),
    Close(CloseCode, String),
    /// Drop the TCP connection without a close frame (a simulated network loss).
    Abort,
}

enum Msg {
    Input(ClientInput),
    Abort,
}

/// A running client. Dropping it does not stop the driver; send it
/// [`ClientInput::Disconnect`] with [`NativeClient::input`].
#[derive(Debug, Clone)]
pub struct NativeClient {
    inputs: Sender<Msg>,
    events: Receiver<(Instant, ClientEvent)>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Input(input) => input.fmt(f),
            Msg::Abort => f.write_str("Abort"),
        }
    }
}

impl NativeClient {
    /// Starts a client with `config` and connects it. Events (with the client's clock reading
    /// when they happened) come out of [`NativeClient::events`].
    pub fn start(config: ClientConfig) -> NativeClient {
        let (inputs, inbox) = async_channel::unbounded();
        let (events_tx, events) = async_channel::unbounded();
        let clock = Clock::start();
        let unix_ms =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new().build_hasher().finish()
        };
        let client = Client::new(config, seed, clock.now(), unix_ms);
        let driver = ClientDriver {
            client,
            clock,
            inbox,
            loopback: inputs.clone(),
            events: events_tx,
            sockets: HashMap::new(),
        };
        smol::spawn(driver.run()).detach();
        let native = NativeClient { inputs, events };
        native.input(ClientInput::Connect);
        native
    }

    /// Feeds an input (send, disconnect, online, reconnect-now, ...).
    pub fn input(&self, input: ClientInput) {
        let _ = self.inputs.try_send(Msg::Input(input));
    }

    /// Drops the current socket without a close frame, as a lost network would.
    pub fn drop_connection(&self) {
        let _ = self.inputs.try_send(Msg::Abort);
    }

    /// The events, in order.
    pub fn events(&self) -> &Receiver<(Instant, ClientEvent)> {
        &self.events
    }
}

struct ClientDriver {
    client: Client,
    clock: Clock,
    inbox: Receiver<Msg>,
    loopback: Sender<Msg>,
    events: Sender<(Instant, ClientEvent)>,
    sockets: HashMap<AttemptId, Sender<SocketWrite>>,
}

impl ClientDriver {
    async fn run(mut self) {
        loop {
            let deadline = self.client.poll_timeout().map(|(at, _)| at);
            let next = self.clock.next(deadline, &self.inbox).await;
            let input = match next {
                None => ClientInput::Timeout,
                Some(Ok(Msg::Input(input))) => input,
                Some(Ok(Msg::Abort)) => {
                    for writer in self.sockets.values() {
                        let _ = writer.try_send(SocketWrite::Abort);
                    }
                    continue;
                }
                Some(Err(_)) => return,
            };
            let now = self.clock.now();
            self.client.handle_input(now, input);
            while let Some(output) = self.client.poll_output() {
                self.carry_out(now, output);
            }
        }
    }

    /// Events are stamped with `now`, the time the input was handled at, so that
    /// `next_retry_at - now` is exactly the delay the client chose.
    fn carry_out(&mut self, now: Instant, output: ClientOutput) {
        match output {
            ClientOutput::OpenSocket { attempt, url } => {
                let (writer, writes) = async_channel::unbounded();
                self.sockets.insert(attempt, writer);
                smol::spawn(socket(attempt, url, writes, self.loopback.clone())).detach();
            }
            ClientOutput::SendFrame { attempt, frame } => {
                if let Some(writer) = self.sockets.get(&attempt) {
                    let _ = writer.try_send(SocketWrite::Frame(frame));
                }
            }
            ClientOutput::CloseSocket { attempt, code, reason } => {
                if let Some(writer) = self.sockets.remove(&attempt) {
                    let _ = writer.try_send(SocketWrite::Close(code, reason));
                }
            }
            // This client's tokens are static; an application with expiring tokens answers
            // through `ClientInput::Token`.
            ClientOutput::RequestToken => {
                let _ = self
                    .events
                    .try_send((now, ClientEvent::LocalError("a fresh token is needed".into())));
            }
            ClientOutput::Persist(_) => {}
            ClientOutput::Event(event) => {
                if let ClientEvent::Disconnected { .. } = &event {
                    self.sockets.retain(|_, w| !w.is_closed());
                }
                let _ = self.events.try_send((now, event));
            }
        }
    }
}

/// One socket attempt: connect, then pump frames both ways until it ends.
async fn socket(
    attempt: AttemptId,
    url: String,
    writes: Receiver<SocketWrite>,
    inputs: Sender<Msg>,
) {
    let report = |input| {
        let inputs = inputs.clone();
        async move {
            let _ = inputs.send(Msg::Input(input)).await;
        }
    };
    let Some(authority) = url.strip_prefix("ws://").and_then(|rest| rest.split(['/', '?']).next())
    else {
        report(ClientInput::SocketClosed {
            attempt,
            code: None,
            reason: "only ws:// URLs are supported".into(),
        })
        .await;
        return;
    };
    let connected = async {
        let stream = TcpStream::connect(authority).await.map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        async_tungstenite::client_async(url.as_str(), stream).await.map_err(|e| e.to_string())
    };
    let ws = match connected.await {
        Ok((ws, _)) => ws,
        Err(reason) => {
            report(ClientInput::SocketClosed { attempt, code: None, reason }).await;
            return;
        }
    };
    report(ClientInput::SocketOpened { attempt }).await;
    let (mut sink, mut stream) = ws.split();
    let reader = async {
        let mut code = None;
        while let Some(message) = stream.next().await {
            match message {
                Ok(Message::Text(text)) => {
                    report(ClientInput::Frame { attempt, text: Bytes::from(text) }).await
                }
                Ok(Message::Close(frame)) => code = frame.map(|f| CloseCode(u16::from(f.code))),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        code
    };
    let writer = async {
        while let Ok(write) = writes.recv().await {
            match write {
                SocketWrite::Frame(frame) => {
                    let Ok(text) = frame.try_into() else { continue };
                    if sink.send(Message::Text(text)).await.is_err() {
                        return false;
                    }
                }
                SocketWrite::Close(code, reason) => {
                    let frame =
                        CloseFrame { code: WsCloseCode::from(code.0), reason: reason.into() };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    std::future::pending::<()>().await;
                }
                SocketWrite::Abort => return true,
            }
        }
        std::future::pending::<bool>().await
    };
    let outcome = smol::future::or(async { Err(reader.await) }, async { Ok(writer.await) }).await;
    let code = match outcome {
        Err(code) => code,
        // Aborted or failed: the connection is simply gone.
        Ok(_) => None,
    };
    report(ClientInput::SocketClosed { attempt, code, reason: String::new() }).await;
}
