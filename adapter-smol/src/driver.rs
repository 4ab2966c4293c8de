//! The one owner of the hub: a loop that feeds it inputs and carries out its outputs, with no
//! decisions of its own.

use crate::auth::Verifier;
use crate::metrics::Metrics;
use crate::outbox::OutboxSender;
use async_channel::{Receiver, Sender};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use switchboard_core::protocol::CloseCode;
use switchboard_core::server::{
    AuthFailure, Hub, HubEvent, HubStats, Input, OpenRequest, Outgoing, Output, SocketId, Target,
};
use switchboard_core::time::Instant;

/// What a socket's writer is told.
#[derive(Debug)]
pub enum Write {
    Frame(Bytes),
    Close(CloseCode, &'static str),
}

/// What reaches the driver.
#[derive(Debug)]
pub enum Command {
    /// A socket was upgraded: here is its writer, and the request it came with.
    Open { socket: SocketId, writer: OutboxSender<Write>, request: OpenRequest },
    /// An input for the hub.
    Input(Input),
    /// Send a message (the publish API); the reply is the number of local sessions reached.
    Send { target: Target, outgoing: Outgoing, reply: Sender<usize> },
    /// The hub's counts, for `/metrics`.
    Stats { reply: Sender<HubStats> },
    /// Begin graceful shutdown.
    Shutdown,
}

/// The adapter's monotonic clock, as the core counts time.
#[derive(Debug, Clone, Copy)]
pub struct Clock(std::time::Instant);

impl Clock {
    pub fn start() -> Self {
        Clock(std::time::Instant::now())
    }

    pub fn now(&self) -> Instant {
        Instant::from_millis(self.0.elapsed().as_millis() as u64)
    }

    pub fn std_instant(self, at: Instant) -> std::time::Instant {
        self.0 + std::time::Duration::from_millis(at.as_millis())
    }

    /// What a driver loop waits for: the next message from `inbox`, or `None` once `deadline`
    /// passes. The clock is read before sleeping, so a deadline already past is served at once.
    pub async fn next<T>(
        self,
        deadline: Option<Instant>,
        inbox: &Receiver<T>,
    ) -> Option<Result<T, async_channel::RecvError>> {
        match deadline {
            Some(at) if at <= self.now() => None,
            Some(at) => {
                let wake = self.std_instant(at);
                smol::future::or(async { Some(inbox.recv().await) }, async {
                    smol::Timer::at(wake).await;
                    None
                })
                .await
            }
            None => Some(inbox.recv().await),
        }
    }
}

/// The driver's state.
pub struct Driver {
    pub hub: Hub,
    pub clock: Clock,
    pub commands: Receiver<Command>,
    /// For verdicts coming back from verification tasks.
    pub loopback: Sender<Command>,
    pub verifier: Arc<Verifier>,
    pub metrics: Arc<Metrics>,
    writers: HashMap<SocketId, OutboxSender<Write>>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("sockets", &self.writers.len()).finish_non_exhaustive()
    }
}

impl Driver {
    pub fn new(
        hub: Hub,
        clock: Clock,
        commands: Receiver<Command>,
        loopback: Sender<Command>,
        verifier: Arc<Verifier>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Driver { hub, clock, commands, loopback, verifier, metrics, writers: HashMap::new() }
    }

    /// Runs until the hub has drained after a shutdown (or every sender is gone).
    pub async fn run(mut self) {
        self.drain();
        loop {
            let deadline = self.hub.poll_timeout().map(|(at, _)| at);
            let command = self.clock.next(deadline, &self.commands).await;
            let drained = match command {
                None => {
                    self.hub.handle_input(self.clock.now(), Input::Timeout);
                    self.drain()
                }
                Some(Ok(command)) => self.handle(command),
                Some(Err(_)) => return,
            };
            if drained {
                return;
            }
        }
    }

    /// Feeds one command; returns whether the hub reported itself drained.
    fn handle(&mut self, command: Command) -> bool {
        let now = self.clock.now();
        match command {
            Command::Open { socket, writer, request } => {
                self.writers.insert(socket, writer);
                self.hub.handle_input(now, Input::Opened { socket, request });
            }
            Command::Input(input) => {
                if let Input::Closed { socket, .. } = &input {
                    self.writers.remove(socket);
                }
                self.hub.handle_input(now, input);
            }
            Command::Send { target, outgoing, reply } => {
                let delivered = self.hub.send(now, target, outgoing);
                let _ = reply.try_send(delivered);
            }
            Command::Stats { reply } => {
                let _ = reply.try_send(self.hub.stats());
            }
            Command::Shutdown => self.hub.handle_input(now, Input::Shutdown),
        }
        self.drain()
    }

    /// Carries out every output; returns whether the hub reported itself drained.
    fn drain(&mut self) -> bool {
        let mut drained = false;
        while let Some(output) = self.hub.poll_output() {
            match output {
                Output::Send { socket, frame } => {
                    self.metrics.sent(frame.len());
                    if let Some(writer) = self.writers.get(&socket) {
                        writer.push(Write::Frame(frame));
                    }
                }
                Output::Close { socket, code, reason } => {
                    if let Some(writer) = self.writers.remove(&socket) {
                        writer.push(Write::Close(code, reason));
                    }
                }
                Output::Verify { request, socket: _, credentials, origin } => {
                    let verifier = self.verifier.clone();
                    let loopback = self.loopback.clone();
                    smol::spawn(async move {
                        let verdict = smol::unblock(move || {
                            // A verifier bug must cost one connection, not the verdict (and
                            // with it ten seconds of the client's time).
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                verifier.verify(&credentials, origin.as_deref())
                            }))
                            .unwrap_or_else(|_| Err(AuthFailure::Invalid("verifier failed".into())))
                        })
                        .await;
                        let _ = loopback
                            .send(Command::Input(Input::AuthVerdict { request, verdict }))
                            .await;
                    })
                    .detach();
                }
                // One instance: the in-process hub is the whole fan-out. (Redis comes later.)
                Output::Publish { .. } | Output::Subscribe { .. } | Output::Unsubscribe { .. } => {}
                Output::Event(event) => {
                    self.metrics.event(&event);
                    drained |= event == HubEvent::Drained;
                    log_event(&event);
                }
            }
        }
        drained
    }
}

fn log_event(event: &HubEvent) {
    match event {
        HubEvent::ConnectionOpened { connection_id, user_id, conversation_id } => tracing::info!(
            connection = %connection_id,
            user = %user_id,
            conversation = conversation_id.as_ref().map_or("", |c| c.as_str()),
            "connection opened"
        ),
        HubEvent::ConnectionClosed { connection_id, user_id, code, reason } => tracing::info!(
            connection = %connection_id,
            user = user_id.as_deref().unwrap_or(""),
            code = code.0,
            reason,
            "connection closed"
        ),
        HubEvent::Disconnected { connection_id, code } => tracing::info!(
            connection = %connection_id,
            code = code.map_or(1006, |c| c.0),
            "socket lost; session kept for resume"
        ),
        HubEvent::AuthFailed { reason } => {
            tracing::info!(reason = %reason, "authentication failed")
        }
        HubEvent::Message { connection_id, envelope, .. } => tracing::debug!(
            connection = %connection_id,
            message_type = %envelope.message_type,
            "message for the application (no backend forwarding configured)"
        ),
        HubEvent::IllegalTransition { connection_id, from, to } => {
            tracing::error!(connection = %connection_id, ?from, ?to, "illegal state transition")
        }
        HubEvent::Drained => tracing::info!("all connections closed"),
        _ => {}
    }
}
