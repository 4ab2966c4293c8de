//! The one owner of the hub: a loop that feeds it inputs and carries out its outputs, with no
//! decisions of its own.

use crate::answer::Answer;
use crate::auth::Verifier;
use crate::authorize::Authorizer;
use crate::frames::{self, Part};
use crate::metrics::{BusStats, Metrics};
use crate::outbox::OutboxSender;
use async_channel::{Receiver, Sender};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use switchboard_core::protocol::CloseCode;
use switchboard_core::server::{
    AuthFailure, BusCommand, Frame, Frames, Hub, HubEvent, HubStats, Input, OpenRequest, Outgoing,
    Output, RefusedSend, SocketId, Target,
};
use switchboard_core::time::Instant;

/// Commands handled in a row before the driver lets the sockets' writers run: a burst of
/// messages must not fill every window before a single frame is written. (Not every command:
/// a writer that runs after every publish writes one frame per syscall; 256 keeps the batches
/// while staying well under the hub's cut-off at half the replay buffer, 512 messages.)
const COMMANDS_BETWEEN_YIELDS: u32 = 256;

/// Rounds of writing and reporting in one [`Driver::flush`] before the rest is left to the
/// sockets' writers.
const FLUSH_ROUNDS: usize = 4;

/// The most room for encoding kept between writes ([`Driver::buffer`]): a socket's backlog of
/// many frames may need more for a moment, and gives it back.
const KEEP_BUFFER_AT_MOST: usize = 256 * 1024;

/// What wakes the driver.
enum Wake {
    Command(Command),
    /// A writer's report of what it wrote ([`Input::Flushed`]): on a channel of its own, taken
    /// before any command, so that a socket's progress is known before more is given to it.
    Written(Input),
    Timeout,
    /// Every sender is gone.
    Ended,
}

/// What a socket's writer writes.
#[derive(Debug, Clone)]
pub enum Write {
    /// A text frame, from the hub.
    Frame(Frame),
    /// A close frame, from the hub; the writer writes nothing after it.
    Close(CloseCode, &'static str),
    /// The answer to a ping the socket's reader got (never from the driver).
    Pong(Bytes),
    /// The rest of a frame of `frame_len` bytes (the hub's count) that the driver began to
    /// write itself and the socket did not take whole.
    Rest { bytes: Bytes, frame_len: usize },
    /// Bytes that go before any frame: the HTTP `101` answer that opened the socket (or what
    /// is left of it), held back to leave in the same write as the first frame.
    Head(Bytes),
}

/// A socket's connection, which the driver writes to itself when it can (see [`Driver::flush`]).
pub type Stream = Arc<smol::Async<std::net::TcpStream>>;

/// A socket as the driver holds it.
#[derive(Debug)]
struct Socket {
    /// The socket's writer, for what the driver cannot write at once.
    writer: OutboxSender<Write>,
    stream: Stream,
    /// Frames the hub gave as outputs ([`Output::Send`]: ahead of a close, or of another
    /// session's sequence) since the last flush, in order. They go before any frame the hub
    /// hands the socket later.
    pending: Vec<Write>,
}

/// What reaches the driver.
#[derive(Debug)]
pub enum Command {
    /// A socket was upgraded: here is its writer, and the request it came with.
    Open { socket: SocketId, writer: OutboxSender<Write>, stream: Stream, request: OpenRequest },
    /// An input for the hub.
    Input(Input),
    /// Send a message (the publish API); the reply is the number of local sessions reached,
    /// or why the hub refused it.
    Send { target: Target, outgoing: Outgoing, reply: Sender<Result<usize, RefusedSend>> },
    /// How many of the hub's sessions a message to `target` would reach.
    Count { target: Target, reply: Sender<usize> },
    /// The hub's counts and its view of the bus, for `/metrics` and `/healthz`.
    Stats { reply: Sender<(HubStats, BusStats)> },
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
    /// The writers' reports of what they wrote.
    pub written: Receiver<Input>,
    /// For answers that come back later (a key fetch, the backend's join verdict).
    pub loopback: Sender<Command>,
    pub verifier: Arc<Verifier>,
    pub authorizer: Rc<dyn Authorizer>,
    pub metrics: Arc<Metrics>,
    /// The event loop, to run the answers that come later.
    pub executor: Rc<smol::LocalExecutor<'static>>,
    /// The Redis bridges' inboxes, one per shard, when the instances share a bus (their
    /// answers come back through `loopback` as [`Input::Bus`]).
    buses: Vec<Sender<BusCommand>>,
    /// Keyed by ids the server gives out, so a fixed, fast hash is safe.
    sockets: HashMap<SocketId, Socket, foldhash::fast::FixedState>,
    /// Sockets with pending frames.
    dirty: Vec<SocketId>,
    /// Where one socket's frames are encoded for a write: kept between writes (at most
    /// [`KEEP_BUFFER_AT_MOST`] of it), one for the hub, not one per socket.
    buffer: Vec<u8>,
    /// Answers decided on the spot, fed to the hub once the outputs at hand are carried out.
    ready: VecDeque<Input>,
    /// Frames and bytes handed to writers since the metrics were last told (once per drain,
    /// not once per frame of a fan-out).
    sent: (u64, u64),
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("sockets", &self.sockets.len()).finish_non_exhaustive()
    }
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        hub: Hub,
        clock: Clock,
        commands: Receiver<Command>,
        written: Receiver<Input>,
        loopback: Sender<Command>,
        verifier: Arc<Verifier>,
        authorizer: Rc<dyn Authorizer>,
        metrics: Arc<Metrics>,
        executor: Rc<smol::LocalExecutor<'static>>,
    ) -> Self {
        Driver {
            hub,
            clock,
            commands,
            written,
            loopback,
            verifier,
            authorizer,
            metrics,
            executor,
            buses: Vec::new(),
            sockets: HashMap::default(),
            dirty: Vec::new(),
            buffer: Vec::new(),
            ready: VecDeque::new(),
            sent: (0, 0),
        }
    }

    /// Hands the hub's bus commands to the Redis bridges, one per shard (see [`crate::redis`]).
    pub fn with_buses(mut self, buses: Vec<Sender<BusCommand>>) -> Self {
        self.buses = buses;
        self
    }

    /// Runs until the hub has drained after a shutdown (or every sender is gone).
    pub async fn run(mut self) {
        self.drain();
        let mut handled = 0u32;
        // Whether the other tasks ran since the driver last had something to do.
        let mut yielded = false;
        loop {
            if self.has_frames() && self.commands.is_empty() && self.written.is_empty() {
                // Nothing else to do: the sockets' frames are written, once the other tasks
                // ran (a publisher may be handing over more), so that a write carries all
                // there is.
                if !yielded {
                    yielded = true;
                    smol::future::yield_now().await;
                    continue;
                }
                if self.flush() {
                    return self.hand_over();
                }
            }
            let deadline = self.hub.poll_timeout().map(|(at, _)| at);
            let drained = match self.wake(deadline).await {
                Wake::Timeout => {
                    self.hub.handle_input(self.clock.now(), Input::Timeout);
                    self.drain()
                }
                Wake::Written(input) => {
                    self.hub.handle_input(self.clock.now(), input);
                    self.drain()
                }
                Wake::Command(command) => self.handle(command),
                Wake::Ended => return self.hand_over(),
            };
            yielded = false;
            if drained {
                return self.hand_over();
            }
            handled += 1;
            if handled % COMMANDS_BETWEEN_YIELDS == 0 {
                if self.flush() {
                    return self.hand_over();
                }
                smol::future::yield_now().await;
            }
        }
    }

    /// Writes the sockets' frames itself, where a socket's writer has nothing to write and the
    /// socket takes them at once: no task woken, no report to wait for (the hub is told they
    /// were written right away). The rest goes to the sockets' writers: what a socket did not
    /// take (its writer waits until it can), and what came after a writer began a batch
    /// (order). Each socket's frames are taken from the hub, written and dropped in one go, in
    /// room kept for that. Returns whether the hub reported itself drained.
    fn flush(&mut self) -> bool {
        // Each round's reports may let the hub write more (a window that had filled up).
        for _ in 0..FLUSH_ROUNDS {
            if !self.has_frames() {
                return false;
            }
            // What the hub gave as outputs goes before what it hands now (see `Socket::pending`).
            for socket in std::mem::take(&mut self.dirty) {
                let Some(held) = self.sockets.get_mut(&socket) else { continue };
                let pending = std::mem::take(&mut held.pending);
                let parts = pending.iter().map(Write::part);
                write(held, socket, parts, &mut self.ready, &mut self.buffer);
            }
            while let Some(transmit) = self.hub.poll_transmit() {
                let socket = transmit.socket();
                let Some(held) = self.sockets.get_mut(&socket) else { continue };
                count(&mut self.sent, transmit.frames());
                let parts = transmit.frames().map(Part::Frame);
                write(held, socket, parts, &mut self.ready, &mut self.buffer);
            }
            if self.buffer.capacity() > KEEP_BUFFER_AT_MOST {
                self.buffer = Vec::new();
            }
            if self.drain() {
                return true;
            }
        }
        self.hand_over();
        false
    }

    /// Gives every socket's frames to its writer.
    fn hand_over(&mut self) {
        for socket in std::mem::take(&mut self.dirty) {
            if let Some(held) = self.sockets.get_mut(&socket) {
                held.writer.push_all(std::mem::take(&mut held.pending));
            }
        }
        while let Some(transmit) = self.hub.poll_transmit() {
            if let Some(held) = self.sockets.get_mut(&transmit.socket()) {
                count(&mut self.sent, transmit.frames());
                held.writer.push_all(transmit.frames().map(|frame| Write::Frame(frame.to_owned())));
            }
        }
        self.report_sent();
    }

    /// Whether some socket has frames to write.
    fn has_frames(&self) -> bool {
        !self.dirty.is_empty() || self.hub.has_transmit()
    }

    /// Tells the metrics what was handed to writers since they were last told.
    fn report_sent(&mut self) {
        if self.sent.0 > 0 {
            let (frames, bytes) = std::mem::take(&mut self.sent);
            self.metrics.sent(frames, bytes);
        }
    }

    /// Waits for the next thing to do: a writer's report first, then a command, or the hub's
    /// deadline (the clock is read before sleeping, so a deadline already past is served at
    /// once).
    async fn wake(&self, deadline: Option<Instant>) -> Wake {
        if let Ok(input) = self.written.try_recv() {
            return Wake::Written(input);
        }
        if deadline.is_some_and(|at| at <= self.clock.now()) {
            return Wake::Timeout;
        }
        let written = async {
            match self.written.recv().await {
                Ok(input) => Wake::Written(input),
                Err(_) => std::future::pending().await,
            }
        };
        let commands = async {
            match self.commands.recv().await {
                Ok(command) => Wake::Command(command),
                Err(_) => Wake::Ended,
            }
        };
        let timer = async {
            match deadline {
                Some(at) => {
                    smol::Timer::at(self.clock.std_instant(at)).await;
                    Wake::Timeout
                }
                None => std::future::pending().await,
            }
        };
        smol::future::or(written, smol::future::or(commands, timer)).await
    }

    /// Feeds one command; returns whether the hub reported itself drained.
    fn handle(&mut self, command: Command) -> bool {
        let now = self.clock.now();
        match command {
            Command::Open { socket, writer, stream, request } => {
                self.sockets.insert(socket, Socket { writer, stream, pending: Vec::new() });
                self.hub.handle_input(now, Input::Opened { socket, request });
            }
            Command::Input(input) => {
                if let Input::Closed { socket, .. } = &input {
                    self.sockets.remove(socket);
                }
                self.hub.handle_input(now, input);
            }
            Command::Send { target, outgoing, reply } => {
                let delivered = self.hub.send(now, target, outgoing);
                let _ = reply.try_send(delivered);
            }
            Command::Count { target, reply } => {
                let _ = reply.try_send(self.hub.local_recipients(&target));
            }
            Command::Stats { reply } => {
                let bus = BusStats {
                    pending_publishes: self.hub.bus_pending(),
                    healthy: self.hub.bus_healthy(),
                };
                let _ = reply.try_send((self.hub.stats(), bus));
            }
            Command::Shutdown => self.hub.handle_input(now, Input::Shutdown),
        }
        self.drain()
    }

    /// Carries out every output, then feeds the answers decided on the spot (each followed by
    /// its own outputs); returns whether the hub reported itself drained.
    fn drain(&mut self) -> bool {
        let mut drained = false;
        loop {
            while let Some(output) = self.hub.poll_output() {
                drained |= self.carry_out(output);
            }
            let Some(input) = self.ready.pop_front() else { break };
            self.hub.handle_input(self.clock.now(), input);
        }
        self.report_sent();
        drained
    }

    /// Carries out one output; returns whether it was the hub's report that it drained.
    fn carry_out(&mut self, output: Output) -> bool {
        match output {
            Output::Send { socket, frame } => {
                self.sent.0 += 1;
                self.sent.1 += frame.len() as u64;
                if let Some(held) = self.sockets.get_mut(&socket) {
                    if held.pending.is_empty() {
                        self.dirty.push(socket);
                    }
                    held.pending.push(Write::Frame(frame));
                }
            }
            Output::Close { socket, code, reason } => {
                if let Some(held) = self.sockets.remove(&socket) {
                    let close = Write::Close(code, reason);
                    held.writer.push_all(held.pending.into_iter().chain([close]));
                }
            }
            Output::Verify { request, socket: _, credentials, origin } => {
                // A verifier bug must cost one connection, not the server.
                let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.verifier.verify(credentials, origin)
                }))
                .unwrap_or(Answer::Now(Err(AuthFailure::Internal)));
                self.answer(answer, move |verdict| Input::AuthVerdict { request, verdict });
            }
            Output::Authorize(join) => {
                let request = join.request;
                let answer = self.authorizer.authorize(&join);
                self.answer(answer, move |verdict| Input::JoinVerdict { request, verdict });
            }
            // Without a shared bus the hub answers itself and says nothing here. With one, the
            // bridge's queue is bounded and the driver never waits for it: a command that does
            // not fit is answered at once as failed, and the hub's retries stay in charge.
            Output::Bus(shard, command) => {
                let Some(bus) = self.buses.get(shard) else { return false };
                if let Err(full) = bus.try_send(command) {
                    let command = full.into_inner();
                    self.metrics.bus_failure(crate::redis::kind(&command));
                    if let Some(event) = crate::redis::refused(command) {
                        self.ready.push_back(Input::Bus(shard, event));
                    }
                }
            }
            Output::Event(event) => {
                self.metrics.event(&event);
                log_event(&event);
                return event == HubEvent::Drained;
            }
        }
        false
    }

    /// Feeds an answer back to the hub: now (after the outputs at hand), or when it comes.
    fn answer<T: 'static>(&mut self, answer: Answer<T>, input: impl FnOnce(T) -> Input + 'static) {
        match answer {
            Answer::Now(value) => self.ready.push_back(input(value)),
            Answer::Later(future) => {
                let loopback = self.loopback.clone();
                self.executor
                    .spawn(async move {
                        let value = future.await;
                        let _ = loopback.send(Command::Input(input(value))).await;
                    })
                    .detach();
            }
        }
    }
}

/// Writes `parts` to the socket now, as far as it takes them, when its writer is idle (encoded
/// in `buffer`); what is left, or everything when the writer is busy, goes to the writer. What
/// was written whole is reported to the hub through `ready`.
fn write<'a>(
    held: &mut Socket,
    socket: SocketId,
    parts: impl Iterator<Item = Part<'a>> + Clone,
    ready: &mut VecDeque<Input>,
    buffer: &mut Vec<u8>,
) {
    if !held.writer.is_idle() {
        held.writer.push_all(parts.map(Part::to_write));
        return;
    }
    let head = held.writer.take_held();
    #[expect(clippy::map_identity, reason = "the map shortens each part's loan to `head`'s")]
    let parts = head.iter().map(Write::part).chain(parts.map(|part| part));
    let written = frames::write_now(held.stream.get_ref(), parts.clone(), buffer).unwrap_or(0);
    let left = frames::after_written(parts, written);
    held.writer.push_all(left.rest);
    if left.frames > 0 {
        let (frames, bytes) = (left.frames, left.bytes);
        ready.push_back(Input::Flushed { socket, frames, bytes });
    }
}

/// Adds `frames` to the count of frames and bytes handed to writers.
fn count(sent: &mut (u64, u64), frames: Frames<'_>) {
    for frame in frames {
        sent.0 += 1;
        sent.1 += frame.len() as u64;
    }
}

/// Logs what the hub reports. A connection's opening and closing are at debug: at the default
/// level (info) a server taking thousands of connections a second would write as many lines,
/// and the metrics count them anyway.
fn log_event(event: &HubEvent) {
    match event {
        HubEvent::ConnectionOpened { connection_id, user_id, conversation_id } => tracing::debug!(
            connection = %connection_id,
            user = %user_id,
            conversation = conversation_id.as_ref().map_or("", |c| c.as_str()),
            "connection opened"
        ),
        HubEvent::ConnectionClosed { connection_id, user_id, code, reason } => tracing::debug!(
            connection = %connection_id,
            user = user_id.as_deref().unwrap_or(""),
            code = code.0,
            reason,
            "connection closed"
        ),
        HubEvent::Disconnected { connection_id, code } => tracing::debug!(
            connection = %connection_id,
            code = code.map_or(1006, |c| c.0),
            "socket lost; session kept for resume"
        ),
        HubEvent::AuthFailed { reason } => {
            tracing::info!(%reason, "authentication failed")
        }
        HubEvent::JoinRefused { connection_id, conversation_id, refusal } => tracing::info!(
            connection = %connection_id,
            conversation = %conversation_id,
            refusal = refusal.as_str(),
            "join refused"
        ),
        HubEvent::SessionCap { user_id, evicted } => tracing::warn!(
            user = %user_id,
            evicted,
            "a user reached its session cap"
        ),
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
