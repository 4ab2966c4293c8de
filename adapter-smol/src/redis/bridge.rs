//! The tokio side of the bridge: one OS thread, one current-thread runtime, two fred clients
//! (commands, subscriber), and a loop that carries out the hub's commands and reports the link.
//!
//! # fred's settings, and why
//!
//! fred's defaults are unsafe for this use; each one is set:
//!
//! - **Reconnect forever**, backing off exponentially from 100 ms to 5 s (fred's default is no
//!   reconnection at all), and the first connection is retried the same way (`fail_fast` off):
//!   Redis may be down when the server starts, and the server must start anyway.
//! - **One attempt per command** (fred's default is 3): a publish is retried by the hub with its
//!   idempotency key, in order with the others; fred re-sending it after a reconnect would race
//!   the hub's own retry.
//! - **A 2 s command timeout** (fred's default is none: a paused Redis would hang every call
//!   forever), and 2 s to connect and for the connection's own commands.
//! - **A bounded command buffer** (fred's default is unbounded): beyond it fred answers with a
//!   backpressure error, which the hub treats like any failure. The loop below also stops taking
//!   commands while [`MAX_IN_FLIGHT`] are unanswered, so the queue in front of it fills, and the
//!   driver answers what does not fit (see [`super::refused`]).
//! - **Unresponsive connections are dropped** after 4 s without an answer (fred's default is to
//!   wait forever), so a paused or unreachable Redis turns into a reconnection and a
//!   [`BusEvent::LinkDown`].
//! - **A receive queue of 65 536 messages** (fred's default is 32: a burst would be dropped).
//!   Should it still overflow, the hub is told ([`BusEvent::Lagged`]) and sweeps every channel.
//! - **No managed subscriptions**: the hub owns the set of channels and subscribes them again
//!   itself after every [`BusEvent::LinkUp`].
//!
//! # The order of what the hub hears
//!
//! Commands go out in the order the hub gave them, on one command connection (so Redis runs
//! them in that order), several at a time. The hub reads a `Subscribe`'s tops as the place its
//! cursors start from, or as what they must have reached: it must not hear of anything that
//! happened on Redis after those tops were read before it hears the tops. Otherwise a top read
//! before a publish, heard after that publish's answer or message, looks like a channel that
//! went backwards, and the hub resets it and delivers again what it had delivered. So while a
//! `Subscribe` is unanswered, what comes after it (answers to later commands, messages received
//! since) is held back, and told, in its order, right after the `Subscribed`.

use super::{FUNCTIONS, Status};
use crate::config::RedisSettings;
use crate::metrics::Metrics;
use async_channel::{Receiver, Sender};
use fred::prelude::*;
use fred::types::config::UnresponsiveConfig;
use futures_util::future::LocalBoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt};
use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use switchboard_core::server::{BusCommand, BusError, BusEvent, History, SessionRecord, Top};
use tokio::sync::broadcast::error::RecvError;

/// Longest wait for one Redis command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a connection (TCP and its setup commands).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection with an answer outstanding this long is dropped and reconnected.
const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(4);
/// Reconnection backoff, in milliseconds.
const RECONNECT_MIN_MS: u32 = 100;
const RECONNECT_MAX_MS: u32 = 5_000;
/// Pub/sub messages (and connection events) fred keeps for the bridge to take.
const RECEIVE_CAPACITY: usize = 65_536;
/// Commands in fred's queue at most.
const COMMAND_BUFFER: usize = 65_536;
/// Commands unanswered at once at most: beyond it the bridge takes no more.
const MAX_IN_FLIGHT: usize = 16_384;
/// A failed load of the functions is tried again after this.
const RELOAD_AFTER: Duration = Duration::from_secs(1);

/// How to reach Redis, and the history's bounds.
pub(crate) struct Config {
    builder: Builder,
    history_len: String,
    history_ttl: String,
}

impl Config {
    /// The bridge to the Redis at `url` (one shard).
    pub fn new(url: &str, settings: &RedisSettings) -> Result<Self, String> {
        let mut config = fred::types::config::Config::from_url(url)
            .map_err(|e| format!("--redis-url: {}", e.details()))?;
        config.fail_fast = false;
        let mut builder = Builder::from_config(config);
        builder
            .set_policy(ReconnectPolicy::new_exponential(0, RECONNECT_MIN_MS, RECONNECT_MAX_MS, 2))
            .with_connection_config(|c| {
                c.connection_timeout = CONNECT_TIMEOUT;
                c.internal_command_timeout = CONNECT_TIMEOUT;
                c.max_command_attempts = 1;
                c.max_command_buffer_len = COMMAND_BUFFER;
                c.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(UNRESPONSIVE_AFTER),
                    interval: Duration::from_millis(500),
                };
                c.tcp = TcpConfig { nodelay: Some(true), ..TcpConfig::default() };
            })
            .with_performance_config(|p| {
                p.default_command_timeout = COMMAND_TIMEOUT;
                p.broadcast_channel_capacity = RECEIVE_CAPACITY;
            });
        Ok(Config {
            builder,
            history_len: settings.history_len.to_string(),
            history_ttl: settings.history_ttl.as_secs().max(1).to_string(),
        })
    }
}

/// The thread's body: the runtime, then the bridge until the driver is gone.
pub(crate) fn run(
    config: Config,
    inbox: Receiver<BusCommand>,
    outbox: Sender<BusEvent>,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            return tracing::error!(target: "switchboard::bus", %error, "cannot start the Redis bridge's runtime");
        }
    };
    runtime.block_on(async move {
        match Bridge::new(config, inbox, outbox, status, metrics) {
            Ok(bridge) => bridge.run().await,
            Err(error) => {
                tracing::error!(target: "switchboard::bus", %error, "cannot create the Redis clients")
            }
        }
    });
}

/// One of the two connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Commands,
    /// The subscriber connection with this number (a renewal makes the next one).
    Subscriber(u64),
}

/// What fred said about a connection.
#[derive(Debug)]
enum Notice {
    Connected(Role),
    Down(Role, String),
}

/// What an unanswered command came to, with its place in the order commands were sent.
type Tagged = (u64, Done);

/// What an unanswered command came to.
enum Done {
    Event(BusEvent),
    /// The functions were loaded on the command connection with this number (or not).
    Loaded {
        connection: u64,
        result: Result<(), String>,
    },
    Nothing,
}

enum Next {
    Notice(Notice),
    /// A message (or a lag) from the subscriber connection.
    Received(BusEvent),
    Done(Tagged),
    Command(BusCommand),
    /// The driver is gone.
    Closed,
}

struct Bridge {
    config: Config,
    inbox: Pin<Box<Receiver<BusCommand>>>,
    outbox: Sender<BusEvent>,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    /// Publishes, reads, tops, probes.
    client: Client,
    subscriber: Client,
    /// The subscriber connection's number.
    generation: u64,
    notify: Sender<Notice>,
    notices: Pin<Box<Receiver<Notice>>>,
    /// What the subscriber connections receive, on its way to the hub.
    receive: Sender<BusEvent>,
    received: Pin<Box<Receiver<BusEvent>>>,
    in_flight: FuturesUnordered<LocalBoxFuture<'static, Tagged>>,
    /// Commands sent so far: the next one's place in the order.
    sent: u64,
    /// The places of the `Subscribe`s whose answer the hub has not been told yet.
    subscribing: BTreeSet<u64>,
    /// Events held back behind an unanswered `Subscribe`, with their places, in order.
    held: VecDeque<(u64, BusEvent)>,
    /// Connections of the command client so far (a load of the functions answers for one).
    connection: u64,
    /// The command connection is up with the functions loaded.
    commands_ready: bool,
    subscriber_up: bool,
    /// A new subscriber connection is being made in place of a working one (the hub asked,
    /// and subscribes everything again itself): the link is not down meanwhile.
    renewing: bool,
    /// What the hub was last told.
    reported_up: bool,
    problem: String,
}

impl Bridge {
    fn new(
        config: Config,
        inbox: Receiver<BusCommand>,
        outbox: Sender<BusEvent>,
        status: Arc<Status>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let (notify, notices) = async_channel::bounded(1024);
        let (receive, received) = async_channel::bounded(4096);
        let client = config.builder.build().map_err(|e| e.to_string())?;
        watch(&client, Role::Commands, notify.clone());
        // The connection task runs on its own; its handle is not needed.
        drop(client.connect());
        let mut bridge = Bridge {
            subscriber: client.clone(),
            client,
            config,
            inbox: Box::pin(inbox),
            outbox,
            status,
            metrics,
            generation: 0,
            notify,
            notices: Box::pin(notices),
            receive,
            received: Box::pin(received),
            in_flight: FuturesUnordered::new(),
            sent: 0,
            subscribing: BTreeSet::new(),
            held: VecDeque::new(),
            connection: 0,
            commands_ready: false,
            subscriber_up: false,
            renewing: false,
            reported_up: false,
            problem: "connecting".to_owned(),
        };
        bridge.subscriber = bridge.new_subscriber()?;
        bridge.status.set_up(false, &bridge.problem);
        Ok(bridge)
    }

    async fn run(mut self) {
        loop {
            match std::future::poll_fn(|cx| self.poll_next(cx)).await {
                Next::Notice(notice) => self.notice(notice).await,
                Next::Received(event) => self.tell(self.sent, event).await,
                Next::Done((place, done)) => self.done(place, done).await,
                Next::Command(command) => self.command(command).await,
                Next::Closed => break,
            }
        }
        let _ = tokio::time::timeout(COMMAND_TIMEOUT, self.subscriber.quit()).await;
        let _ = tokio::time::timeout(COMMAND_TIMEOUT, self.client.quit()).await;
    }

    /// Connection news first, then what was received, then answers, then new commands (none
    /// while too many are out).
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        if let Poll::Ready(Some(notice)) = self.notices.as_mut().poll_next(cx) {
            return Poll::Ready(Next::Notice(notice));
        }
        if let Poll::Ready(Some(event)) = self.received.as_mut().poll_next(cx) {
            return Poll::Ready(Next::Received(event));
        }
        if let Poll::Ready(Some(done)) = self.in_flight.poll_next_unpin(cx) {
            return Poll::Ready(Next::Done(done));
        }
        if self.in_flight.len() < MAX_IN_FLIGHT {
            match self.inbox.as_mut().poll_next(cx) {
                Poll::Ready(Some(command)) => return Poll::Ready(Next::Command(command)),
                Poll::Ready(None) => return Poll::Ready(Next::Closed),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    /// A fresh subscriber connection, with the next number.
    fn new_subscriber(&mut self) -> Result<Client, String> {
        let subscriber = self.config.builder.build().map_err(|e| e.to_string())?;
        self.generation += 1;
        self.status.subscriber.store(self.generation, std::sync::atomic::Ordering::Relaxed);
        watch(&subscriber, Role::Subscriber(self.generation), self.notify.clone());
        forward(
            &subscriber,
            self.generation,
            self.receive.clone(),
            self.status.clone(),
            self.metrics.clone(),
        );
        drop(subscriber.connect());
        Ok(subscriber)
    }

    async fn command(&mut self, command: BusCommand) {
        let metrics = self.metrics.clone();
        let failed = move |kind: &'static str, error: &BusError| {
            metrics.bus_failure(kind);
            tracing::debug!(target: "switchboard::bus", kind, %error, "Redis command failed");
        };
        let subscribe = matches!(command, BusCommand::Subscribe { .. });
        let future: LocalBoxFuture<'static, Done> = match command {
            BusCommand::Publish { channel, key, message, after } => {
                let client = self.client.clone();
                let args: Vec<Value> = vec![
                    channel.clone().into(),
                    message.into(),
                    self.config.history_len.clone().into(),
                    self.config.history_ttl.clone().into(),
                ];
                let mut keys = vec![
                    format!("{channel}:m"),
                    format!("{channel}:s"),
                    format!("{channel}:k:{key}"),
                ];
                keys.extend(after.map(|after| format!("{channel}:k:{after}")));
                Box::pin(async move {
                    let result = client
                        .fcall::<Value, _, _, _>("switchboard_publish", keys, args)
                        .await
                        .map_err(bus_error)
                        .and_then(position);
                    if let Err(error) = &result {
                        failed("publish", error);
                    }
                    Done::Event(BusEvent::Published { key, result })
                })
            }
            BusCommand::Subscribe { batch, channels } => {
                let (client, subscriber) = (self.client.clone(), self.subscriber.clone());
                Box::pin(async move {
                    // The tops first: a message published between the two is then a gap the
                    // hub repairs from the history, never one it silently skips.
                    let result = match tops(&client, &channels).await {
                        Ok(tops) if channels.is_empty() => Ok(tops),
                        Ok(tops) => {
                            subscriber.subscribe(channels).await.map(|()| tops).map_err(bus_error)
                        }
                        Err(error) => Err(error),
                    };
                    if let Err(error) = &result {
                        failed("subscribe", error);
                    }
                    Done::Event(BusEvent::Subscribed { batch, result })
                })
            }
            BusCommand::Unsubscribe { channels } => {
                let subscriber = self.subscriber.clone();
                Box::pin(async move {
                    if let Err(error) = subscriber.unsubscribe(channels).await {
                        failed("unsubscribe", &bus_error(error));
                    }
                    Done::Nothing
                })
            }
            BusCommand::Read { request, channel, after, limit } => {
                let client = self.client.clone();
                let keys = vec![format!("{channel}:m"), format!("{channel}:s")];
                let args = vec![after.to_string(), limit.to_string()];
                Box::pin(async move {
                    let result = client
                        .fcall::<Value, _, _, _>("switchboard_read", keys, args)
                        .await
                        .map_err(bus_error)
                        .and_then(history);
                    if let Err(error) = &result {
                        failed("read", error);
                    }
                    Done::Event(BusEvent::History { request, result })
                })
            }
            BusCommand::Probe { channel, token } => {
                let client = self.client.clone();
                Box::pin(async move {
                    if let Err(error) =
                        client.publish::<Value, _, _>(channel, token.to_string()).await
                    {
                        failed("probe", &bus_error(error));
                    }
                    Done::Nothing
                })
            }
            BusCommand::RenewSubscriber => return self.renew(),
            BusCommand::SaveSession { session, record, ttl_ms } => {
                let client = self.client.clone();
                let args: Vec<Value> = vec![
                    super::session::encode(&record).into(),
                    record.owner.as_str().into(),
                    record.generation.to_string().into(),
                    ttl_ms.max(1).to_string().into(),
                ];
                Box::pin(async move {
                    let saved = client
                        .fcall::<Value, _, _, _>("switchboard_save_session", vec![session], args)
                        .await;
                    if let Err(error) = saved {
                        failed("save_session", &bus_error(error));
                    }
                    Done::Nothing
                })
            }
            BusCommand::DropSession { session } => {
                let client = self.client.clone();
                Box::pin(async move {
                    if let Err(error) = client.del::<Value, _>(session).await {
                        failed("drop_session", &bus_error(error));
                    }
                    Done::Nothing
                })
            }
            BusCommand::ClaimSession { request, session, claimant } => {
                let client = self.client.clone();
                Box::pin(async move {
                    let result = match super::session::parts(&session) {
                        Some((prefix, id)) => {
                            let args = vec![claimant.as_str(), prefix, id];
                            client
                                .fcall::<Value, _, _, _>(
                                    "switchboard_claim_session",
                                    vec![session.as_str()],
                                    args,
                                )
                                .await
                                .map_err(bus_error)
                                .and_then(claimed)
                        }
                        None => Err(BusError(format!("not a session key: {session}"))),
                    };
                    if let Err(error) = &result {
                        failed("claim_session", error);
                    }
                    Done::Event(BusEvent::Claimed { request, result })
                })
            }
        };
        let place = self.sent;
        self.sent += 1;
        if subscribe {
            self.subscribing.insert(place);
        }
        self.launch(place, future).await;
    }

    /// Polls a command's future once, which hands the command to fred (and so to the
    /// connection) before the next one: publishes reach Redis in the order the hub gave them,
    /// and still several are on the wire at once.
    async fn launch(&mut self, place: u64, future: LocalBoxFuture<'static, Done>) {
        let mut future = Box::pin(async move { (place, future.await) });
        match std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await {
            Poll::Ready((place, done)) => self.done(place, done).await,
            Poll::Pending => self.in_flight.push(future),
        }
    }

    /// The hub found the subscriber deaf: a new connection replaces it. The old one is let go
    /// (whatever it still delivers is harmless: the hub drops duplicates).
    fn renew(&mut self) {
        tracing::info!(target: "switchboard::bus", "renewing the Redis subscriber connection");
        self.metrics.bus_renewal();
        match self.new_subscriber() {
            Ok(subscriber) => {
                let old = std::mem::replace(&mut self.subscriber, subscriber);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(COMMAND_TIMEOUT, old.quit()).await;
                });
                self.renewing = self.subscriber_up;
                self.subscriber_up = false;
            }
            Err(error) => {
                tracing::warn!(target: "switchboard::bus", %error, "cannot create a Redis subscriber")
            }
        }
    }

    async fn done(&mut self, place: u64, done: Done) {
        match done {
            Done::Event(event) => self.tell(place, event).await,
            Done::Loaded { connection, result } if connection == self.connection => match result {
                Ok(()) => {
                    self.commands_ready = true;
                    self.report().await;
                }
                Err(error) => {
                    tracing::warn!(target: "switchboard::bus", %error, "cannot load the functions on Redis; retrying");
                    self.set_problem(format!("cannot load the functions: {error}"));
                    self.load(RELOAD_AFTER);
                }
            },
            Done::Loaded { .. } | Done::Nothing => {}
        }
    }

    async fn notice(&mut self, notice: Notice) {
        match notice {
            Notice::Connected(Role::Commands) => {
                // Maybe a Redis that restarted without its functions: down until loaded.
                self.connection += 1;
                self.commands_ready = false;
                self.set_problem("loading the functions".into());
                self.report().await;
                self.load(Duration::ZERO);
            }
            Notice::Down(Role::Commands, error) => {
                self.commands_ready = false;
                self.set_problem(format!("command connection: {error}"));
                self.report().await;
            }
            Notice::Connected(Role::Subscriber(n)) if n == self.generation => {
                if self.renewing {
                    self.renewing = false;
                } else if self.reported_up {
                    // A new connection has none of the old one's subscriptions: the hub is told
                    // the link went down and came back, and subscribes everything again.
                    self.subscriber_up = false;
                    self.set_problem("subscriber reconnected".into());
                    self.report().await;
                }
                self.subscriber_up = true;
                self.report().await;
            }
            Notice::Down(Role::Subscriber(n), error) if n == self.generation => {
                self.subscriber_up = false;
                self.renewing = false;
                self.set_problem(format!("subscriber connection: {error}"));
                self.report().await;
            }
            // About a subscriber connection already replaced.
            Notice::Connected(Role::Subscriber(_)) | Notice::Down(Role::Subscriber(_), _) => {}
        }
    }

    fn set_problem(&mut self, problem: String) {
        tracing::debug!(target: "switchboard::bus", %problem, "Redis link");
        if !self.reported_up {
            self.status.set_up(false, &problem);
        }
        self.problem = problem;
    }

    /// Loads the functions on the command connection (after `delay`).
    fn load(&mut self, delay: Duration) {
        let client = self.client.clone();
        let connection = self.connection;
        let place = self.sent;
        self.in_flight.push(Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let result = client
                .function_load::<Value, _>(true, FUNCTIONS)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            (place, Done::Loaded { connection, result })
        }));
    }

    /// Tells the hub when the link changed: up once commands (with the functions) and the
    /// subscriber both are.
    async fn report(&mut self) {
        let up = self.commands_ready && (self.subscriber_up || self.renewing);
        if up == self.reported_up {
            return;
        }
        self.reported_up = up;
        self.status.set_up(up, if up { "" } else { &self.problem });
        self.metrics.bus_shard_up(up);
        if up {
            tracing::info!(target: "switchboard::bus", "Redis link up");
            self.tell(self.sent, BusEvent::LinkUp).await;
        } else {
            tracing::warn!(target: "switchboard::bus", problem = %self.problem, "Redis link down");
            self.tell(self.sent, BusEvent::LinkDown).await;
        }
    }

    /// Tells the hub `event`, which happened after the commands before `place` were sent:
    /// now, or (behind an unanswered `Subscribe` sent before it) right after that one's answer.
    async fn tell(&mut self, place: u64, event: BusEvent) {
        if self.held_back(place) {
            self.held.push_back((place, event));
            return;
        }
        self.hand_over(place, event).await;
        // Its answer may have been what others waited for: those now free go, in order.
        while let Some(at) = self.held.iter().position(|(place, _)| !self.held_back(*place)) {
            if let Some((place, event)) = self.held.remove(at) {
                self.hand_over(place, event).await;
            }
        }
    }

    /// Whether what happened after the commands before `place` must wait: a `Subscribe` sent
    /// before it is unanswered.
    fn held_back(&self, place: u64) -> bool {
        self.subscribing.first().is_some_and(|&subscribe| subscribe < place)
    }

    /// Hands an event to the driver, waiting while its queue is full.
    async fn hand_over(&mut self, place: u64, event: BusEvent) {
        if matches!(event, BusEvent::Subscribed { .. }) {
            self.subscribing.remove(&place);
        }
        let _ = self.outbox.send(event).await;
    }
}

/// Forwards what fred says about `client`'s connection to the bridge's loop.
fn watch(client: &Client, role: Role, notify: Sender<Notice>) {
    let mut errors = client.error_rx();
    let mut unresponsive = client.unresponsive_rx();
    let mut connects = client.reconnect_rx();
    tokio::spawn(async move {
        loop {
            let mut error = pin!(errors.recv());
            let mut stuck = pin!(unresponsive.recv());
            let mut connected = pin!(connects.recv());
            // Failures first: a failure and the reconnection after it, both waiting, are told
            // in the order they happened.
            let notice = std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = error.as_mut().poll(cx) {
                    return Poll::Ready(match result {
                        Ok((error, _)) => Some(Notice::Down(role, error.details().to_owned())),
                        Err(RecvError::Lagged(_)) => Some(Notice::Down(role, "errors".into())),
                        Err(RecvError::Closed) => None,
                    });
                }
                if let Poll::Ready(result) = stuck.as_mut().poll(cx) {
                    return Poll::Ready(match result {
                        Ok(_) | Err(RecvError::Lagged(_)) => {
                            Some(Notice::Down(role, "Redis stopped answering".into()))
                        }
                        Err(RecvError::Closed) => None,
                    });
                }
                if let Poll::Ready(result) = connected.as_mut().poll(cx) {
                    return Poll::Ready(match result {
                        Ok(_) | Err(RecvError::Lagged(_)) => Some(Notice::Connected(role)),
                        Err(RecvError::Closed) => None,
                    });
                }
                Poll::Pending
            })
            .await;
            // `None`: the client was let go.
            let Some(notice) = notice else { return };
            if notify.send(notice).await.is_err() {
                return;
            }
        }
    });
}

/// Forwards the subscriber connection number `generation`'s messages to the bridge's loop (and
/// so to the hub), in order; an overflow of fred's receive queue becomes [`BusEvent::Lagged`].
fn forward(
    client: &Client,
    generation: u64,
    bridge: Sender<BusEvent>,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
) {
    let mut messages = client.message_rx();
    tokio::spawn(async move {
        loop {
            let event = match messages.recv().await {
                Ok(message) => {
                    if status.is_deaf(generation) {
                        continue; // The test hook.
                    }
                    let Some(bytes) = message.value.into_bytes() else { continue };
                    BusEvent::Message { channel: message.channel.to_string(), message: bytes }
                }
                Err(RecvError::Lagged(missed)) => {
                    metrics.bus_lagged();
                    tracing::warn!(target: "switchboard::bus", missed, "the Redis receive queue overflowed");
                    BusEvent::Lagged
                }
                Err(RecvError::Closed) => return,
            };
            if bridge.send(event).await.is_err() {
                return;
            }
        }
    });
}

/// Each channel's top (`HMGET <channel>:m epoch top`, pipelined: one round trip).
async fn tops(client: &Client, channels: &[String]) -> Result<Vec<Option<Top>>, BusError> {
    if channels.is_empty() {
        return Ok(Vec::new());
    }
    let pipeline = client.pipeline();
    for channel in channels {
        let () = pipeline
            .hmget(format!("{channel}:m"), vec!["epoch", "top"])
            .await
            .map_err(bus_error)?;
    }
    let answers = tokio::time::timeout(COMMAND_TIMEOUT, pipeline.try_all::<Value>())
        .await
        .map_err(|_| BusError("redis: reading the channels' tops timed out".into()))?;
    answers
        .into_iter()
        .map(|answer| {
            let mut fields = answer.map_err(bus_error)?.into_array().into_iter();
            let epoch = fields.next().and_then(|v| v.as_string());
            let offset = fields.next().and_then(|v| v.as_u64()).unwrap_or(0);
            Ok(epoch.map(|epoch| Top { epoch, offset }))
        })
        .collect()
}

/// `switchboard_publish`'s answer: `[epoch, offset]`.
fn position(value: Value) -> Result<Top, BusError> {
    let mut fields = value.into_array().into_iter();
    match (fields.next().and_then(|v| v.as_string()), fields.next().and_then(|v| v.as_u64())) {
        (Some(epoch), Some(offset)) => Ok(Top { epoch, offset }),
        _ => Err(BusError("redis: switchboard_publish answered something else".into())),
    }
}

/// `switchboard_claim_session`'s answer: `[record, owner, generation]`, or nil.
fn claimed(value: Value) -> Result<Option<SessionRecord>, BusError> {
    if value.is_null() {
        return Ok(None);
    }
    let mut fields = value.into_array().into_iter();
    let raw = fields.next().and_then(|v| v.as_string());
    let owner = fields.next().and_then(|v| v.as_string());
    let generation = fields.next().and_then(|v| v.as_u64());
    match (raw, owner, generation) {
        (Some(raw), Some(owner), Some(generation)) => {
            super::session::decode(&raw, &owner, generation).map(Some)
        }
        _ => Err(BusError("redis: switchboard_claim_session answered something else".into())),
    }
}

/// `switchboard_read`'s answer: `[epoch, top, [offset, entry, offset, entry, ...]]`, the epoch
/// nil for a channel without history.
fn history(value: Value) -> Result<History, BusError> {
    let mut fields = value.into_array().into_iter();
    let epoch = fields.next().and_then(|v| v.as_string());
    let top = fields.next().and_then(|v| v.as_u64()).unwrap_or(0);
    let Some(epoch) = epoch else {
        return Ok(History { top: None, entries: Vec::new() });
    };
    let mut entries = Vec::new();
    let mut flat = fields.next().map(Value::into_array).unwrap_or_default().into_iter();
    while let (Some(offset), Some(entry)) = (flat.next(), flat.next()) {
        let (Some(offset), Some(entry)) = (offset.as_u64(), entry.into_bytes()) else {
            return Err(BusError("redis: switchboard_read answered something else".into()));
        };
        entries.push((offset, entry));
    }
    Ok(History { top: Some(Top { epoch, offset: top }), entries })
}

fn bus_error(error: fred::error::Error) -> BusError {
    BusError(format!("redis: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::String(s.into())
    }

    #[test]
    fn the_functions_answers_are_read() {
        let answer = Value::Array(vec![text("e1"), Value::Integer(7)]);
        assert_eq!(position(answer), Ok(Top { epoch: "e1".into(), offset: 7 }));
        assert!(position(Value::Null).is_err());
        let read = Value::Array(vec![
            text("e1"),
            Value::Integer(9),
            Value::Array(vec![Value::Integer(8), text("{\"a\":1}"), Value::Integer(9), text("{}")]),
        ]);
        let read = history(read).unwrap();
        assert_eq!(read.top, Some(Top { epoch: "e1".into(), offset: 9 }));
        let offsets: Vec<u64> = read.entries.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, [8, 9]);
        assert_eq!(&read.entries[0].1[..], b"{\"a\":1}");
        let none = Value::Array(vec![Value::Null, Value::Integer(0), Value::Array(vec![])]);
        assert_eq!(history(none), Ok(History { top: None, entries: vec![] }));
        assert_eq!(claimed(Value::Null), Ok(None));
        assert!(claimed(Value::Array(vec![text("{"), text("i-1"), Value::Integer(2)])).is_err());
    }
}
