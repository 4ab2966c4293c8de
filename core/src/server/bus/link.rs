//! The hub's side of the bus: which channels it needs, their cursors, its publishes until the
//! bus has given them a place, and the checks that the link still works.
//!
//! - **Subscriptions** follow local membership: a channel is subscribed when its first local
//!   member arrives and let go `linger` after the last one left. The subscribe asks for each
//!   channel's top first, which is where its cursor starts.
//! - **Own publishes** are delivered locally once the bus says where they sit (the answer to
//!   the publish or its echo, whichever comes first), so every instance delivers a channel in
//!   the same order. If the bus does not answer within `publish_budget`, local members get the
//!   message anyway (never a stall), and once the bus is back they are told that the channel's
//!   order may have differed (`bus_degraded`). Unanswered publishes are retried in order with
//!   their idempotency keys; past the queue's bound a message is not published at all, and once
//!   the bus is back a marker takes the lost messages' place in the channel: every member who
//!   reaches it is told (`publish_lost`).
//! - **The link is checked**: after it comes back, after the receive queue lagged, and when a
//!   probe this instance publishes to itself does not come back, every subscription is renewed
//!   (in batches) and every cursor swept against its channel's top.
//!
//! Without a shared bus (`BusConfig::shared` false), a [`LocalBus`] answers at once, so the
//! same code gives positions to a single instance.

use super::cursor::{Cursor, Step};
use super::local::LocalBus;
use super::{BusCommand, BusError, BusEvent, Channel, History, RemoteMessage, SessionRecord, Top};
use crate::protocol::{Id, Position, SharedFrame};
use crate::server::config::BusConfig;
use crate::time::Instant;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

/// What the hub must deliver to a channel's local members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// A message, with its position if it has one (not when delivered before the bus answered;
    /// `offset` is the position's, for those who merge by it).
    Message { channel: Channel, frame: SharedFrame, except: Option<Id>, offset: Option<u64> },
    /// Messages on the channel may be missing or out of order: the members refetch.
    Reset { channel: Channel, epoch: Option<String>, reason: &'static str },
    /// The answer to [`Link::claim_session`].
    Claimed { request: u64, result: Result<Option<SessionRecord>, BusError> },
    /// The answer to [`Link::read_history`].
    SessionHistory { request: u64, result: Result<History, BusError> },
    /// Another instance claimed this session: let it go.
    Takeover { connection_id: Id },
}

/// What the link keeps per channel. Not its bus name: that is made when a command needs it, and
/// read back from a message's channel ([`Channel::parse`]); kept, with a map from it, every
/// channel (one per user at least) would carry it twice, about 150 bytes.
#[derive(Debug)]
struct ChannelState {
    cursor: Cursor,
    /// The last local member left: let go at this time unless one comes back.
    linger_until: Option<Instant>,
    /// Local members got messages before the bus placed them: reset once it has.
    degraded: bool,
    /// Own publishes on this channel waiting for the bus.
    pending: usize,
    /// The channel's deadline in `Link::timers` (a gap read, the end of lingering).
    deadline: Option<Instant>,
    /// Where its subscription is: asked whenever a member joins, so kept here rather than
    /// found by looking through every batch on its way (a connect storm has many).
    subscription: Subscription,
}

/// Where a channel's subscription to the bus is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subscription {
    /// Waiting to be asked for (in `Link::unconfirmed`).
    Waiting,
    /// Asked for in the subscribe batch with this id.
    Asked(u64),
    /// Confirmed by the batch that asked last (or in process: always).
    Confirmed,
}

#[derive(Debug)]
struct Pending {
    channel: Channel,
    message: RemoteMessage,
    encoded: Bytes,
    /// A publish command is out for it.
    sent: bool,
    delivered_early: bool,
}

/// The probe: a message this instance publishes to itself now and then, on its own channel
/// (`{prefix}{instance:<id>}`, where other instances also send it takeover notices).
#[derive(Debug)]
struct Probe {
    channel: String,
    next_at: Option<Instant>,
    waiting: Option<(u64, Instant)>,
    confirmed: bool,
}

/// The link between one hub and the bus.
#[derive(Debug)]
pub(crate) struct Link {
    config: BusConfig,
    prefix: String,
    origin: Id,
    /// In-process bus (no shared one): answers at once.
    local: Option<LocalBus>,
    up: bool,
    /// Boxed, as the hub's sessions are: a B-tree's free slots would cost every channel (one
    /// per user at least) a few hundred bytes more.
    channels: BTreeMap<Channel, Box<ChannelState>>,
    /// Channels to (re)subscribe.
    unconfirmed: BTreeSet<Channel>,
    batches: BTreeMap<u64, (Vec<Channel>, bool, Instant)>,
    /// Subscribe batches confirmed so far: what waits on a subscription is looked at again
    /// when it changes.
    confirmed_batches: u64,
    subscribe_retry_at: Option<Instant>,
    pending: BTreeMap<Id, Pending>,
    /// Per channel, the last of `pending`: a publish sent while it waits must follow it.
    tails: HashMap<Channel, Id>,
    /// Publish order of `pending` (answered ids are skipped, and compacted away now and then).
    order: VecDeque<Id>,
    /// Own messages with local members, in publish order, with when they are due to them
    /// even without an answer from the bus.
    budget: VecDeque<(Instant, Id)>,
    /// Channels' deadlines, earliest first.
    timers: BTreeSet<(Instant, Channel)>,
    pending_bytes: usize,
    retry_at: Option<Instant>,
    retry_delay: Duration,
    /// Messages not published, by channel: a marker goes in their place once the bus is back.
    lost: BTreeMap<Channel, u64>,
    reads: BTreeMap<u64, (Channel, Instant)>,
    /// History reads for resuming sessions: by request, and by what they read (one read
    /// serves every session resuming from the same place: a reconnect storm reads once).
    session_reads: BTreeMap<u64, ((Channel, u64), Instant)>,
    by_range: BTreeMap<(Channel, u64), u64>,
    /// Session claims waiting for an answer, and until when.
    claims: BTreeMap<u64, Instant>,
    probe: Probe,
    /// Loss markers published so far (for their ids).
    markers: u64,
    next_id: u64,
    /// This link's request numbers are `next_id * step + shard`: `(shard, step)`.
    id_step: (u64, u64),
    commands: VecDeque<BusCommand>,
    deliveries: VecDeque<Delivery>,
    steps: Vec<Step>,
}

impl Link {
    /// The link to shard `shard` of `shards` (request numbers are unique across the shards'
    /// links: the hub matches answers by them).
    pub fn new(
        config: BusConfig,
        prefix: &str,
        origin: Id,
        seed: u64,
        shard: usize,
        shards: usize,
    ) -> Self {
        let local = (!config.shared).then(|| LocalBus::new(seed, 0));
        let probe = Probe {
            channel: format!("{prefix}{{instance:{origin}}}"),
            next_at: None,
            waiting: None,
            confirmed: false,
        };
        Link {
            confirmed_batches: 0,
            retry_delay: config.retry_min,
            // A shared bus is down until the adapter says it is up.
            up: local.is_some(),
            config,
            prefix: prefix.to_owned(),
            origin,
            local,
            channels: BTreeMap::new(),
            unconfirmed: BTreeSet::new(),
            batches: BTreeMap::new(),
            subscribe_retry_at: None,
            pending: BTreeMap::new(),
            tails: HashMap::new(),
            order: VecDeque::new(),
            budget: VecDeque::new(),
            timers: BTreeSet::new(),
            pending_bytes: 0,
            retry_at: None,
            lost: BTreeMap::new(),
            reads: BTreeMap::new(),
            session_reads: BTreeMap::new(),
            by_range: BTreeMap::new(),
            claims: BTreeMap::new(),
            probe,
            markers: 0,
            next_id: 1,
            id_step: (shard as u64, shards.max(1) as u64),
            commands: VecDeque::new(),
            deliveries: VecDeque::new(),
            steps: Vec::new(),
        }
    }

    /// Whether the link is up and every subscription confirmed.
    pub fn is_healthy(&self) -> bool {
        self.up && self.unconfirmed.is_empty() && self.batches.is_empty()
    }

    /// Whether `channel` is subscribed (or being subscribed, or lingering).
    pub fn has(&self, channel: &Channel) -> bool {
        self.channels.contains_key(channel)
    }

    /// Channels subscribed (or being subscribed).
    pub fn subscriptions(&self) -> usize {
        self.channels.len()
    }

    /// Own publishes the bus has not answered yet.
    pub fn pending_publishes(&self) -> usize {
        self.pending.len()
    }

    pub fn poll_command(&mut self) -> Option<BusCommand> {
        self.commands.pop_front()
    }

    pub fn poll_delivery(&mut self) -> Option<Delivery> {
        self.deliveries.pop_front()
    }

    /// A local member needs `channel`.
    pub fn want(&mut self, now: Instant, channel: Channel) {
        if let Some(state) = self.channels.get_mut(&channel) {
            state.linger_until = None;
            self.reschedule(&channel);
            return;
        }
        let mut state = ChannelState {
            cursor: Cursor::default(),
            linger_until: None,
            degraded: false,
            pending: 0,
            deadline: None,
            subscription: Subscription::Waiting,
        };
        if let Some(local) = &self.local {
            state.subscription = Subscription::Confirmed;
            let top = local.top(&channel.name(&self.prefix));
            state.cursor.start_at(now, top.as_ref(), &mut self.steps);
        } else {
            self.unconfirmed.insert(channel.clone());
        }
        self.channels.insert(channel.clone(), Box::new(state));
        self.flush_steps(&channel);
        self.flush_subscriptions(now);
    }

    /// The last local member of `channel` left.
    pub fn release(&mut self, now: Instant, channel: &Channel) {
        if let Some(state) = self.channels.get_mut(channel) {
            state.linger_until = Some(now + self.config.linger);
            self.reschedule(channel);
        }
    }

    /// Subscribe batches confirmed so far.
    pub fn confirmed_batches(&self) -> u64 {
        self.confirmed_batches
    }

    /// Whether this instance is subscribed to `channel` and knows where the channel is (its
    /// top was read with the subscription). In process, always.
    pub fn is_subscribed(&self, channel: &Channel) -> bool {
        self.local.is_some()
            || (self.up
                && self
                    .channels
                    .get(channel)
                    .is_some_and(|state| state.subscription == Subscription::Confirmed))
    }

    /// Whether a member of `channel` is to wait before it is told it is in: the bus is up and
    /// has not confirmed this instance's subscription yet, so what is published before the
    /// subscription gets there would not reach the member. With the bus down nothing waits:
    /// members get what is published here, and are told of gaps once the bus is back.
    pub fn subscription_pending(&self, channel: &Channel) -> bool {
        self.local.is_none() && self.up && !self.is_subscribed(channel)
    }

    /// Where this instance is in `channel` (the session record's starting points).
    pub fn position(&self, channel: &Channel) -> Option<Top> {
        self.channels.get(channel)?.cursor.position()
    }

    /// Stores a session's record on the bus (nothing in process: a session lives where it is).
    pub fn save_session(&mut self, connection_id: &Id, record: SessionRecord, ttl: Duration) {
        if self.local.is_none() {
            let session = self.session_key(connection_id);
            let ttl_ms = ttl.as_millis() as u64;
            let record = Box::new(record);
            self.commands.push_back(BusCommand::SaveSession { session, record, ttl_ms });
        }
    }

    /// Forgets a session's record (it ended for good).
    pub fn drop_session(&mut self, connection_id: &Id) {
        if self.local.is_none() {
            let session = self.session_key(connection_id);
            self.commands.push_back(BusCommand::DropSession { session });
        }
    }

    /// Claims a session another instance held; the answer comes as [`Delivery::Claimed`] with
    /// the request number returned. `None` without a shared bus (there is nothing to claim).
    pub fn claim_session(&mut self, now: Instant, connection_id: &Id) -> Option<u64> {
        if self.local.is_some() {
            return None;
        }
        let request = self.next_id();
        let session = self.session_key(connection_id);
        self.claims.insert(request, now + self.config.subscribe_timeout);
        let claimant = self.origin.clone();
        self.commands.push_back(BusCommand::ClaimSession { request, session, claimant });
        Some(request)
    }

    /// Reads `channel`'s history after `after` for a resuming session; the answer comes as
    /// [`Delivery::SessionHistory`] with the request number returned, which is the same for
    /// every caller asking for the same range while a read is out.
    pub fn read_history(&mut self, now: Instant, channel: &Channel, after: u64) -> Option<u64> {
        if self.local.is_some() {
            return None;
        }
        let range = (channel.clone(), after);
        if let Some(&request) = self.by_range.get(&range) {
            return Some(request);
        }
        let request = self.next_id();
        self.commands.push_back(BusCommand::Read {
            request,
            channel: channel.name(&self.prefix),
            after,
            limit: self.config.read_limit,
        });
        self.by_range.insert(range.clone(), request);
        self.session_reads.insert(request, (range, now + self.config.subscribe_timeout));
        Some(request)
    }

    /// The history entries a read may bring at most.
    pub fn read_limit(&self) -> usize {
        self.config.read_limit
    }

    fn session_key(&self, connection_id: &Id) -> String {
        format!("{}{{session:{connection_id}}}", self.prefix)
    }

    /// The instance is shutting down: every channel is let go now (no lingering), and the
    /// probe stops. Publishes still waiting for the bus are still sent.
    pub fn shut_down(&mut self, now: Instant) {
        self.probe.next_at = None;
        self.probe.waiting = None;
        self.probe.confirmed = true;
        let channels: Vec<Channel> = self.channels.keys().cloned().collect();
        for channel in channels {
            if let Some(state) = self.channels.get_mut(&channel) {
                state.linger_until = Some(now);
            }
            self.reschedule(&channel);
        }
    }

    /// Keeps `timers` in step with the channel's deadline.
    fn reschedule(&mut self, channel: &Channel) {
        let Some(state) = self.channels.get_mut(channel) else { return };
        let due = state.cursor.read_due(self.config.gap_wait);
        let deadline = match (due, state.linger_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if deadline == state.deadline {
            return;
        }
        if let Some(old) = state.deadline.take() {
            self.timers.remove(&(old, channel.clone()));
        }
        if let Some(at) = deadline {
            self.timers.insert((at, channel.clone()));
        }
        state.deadline = deadline;
    }

    /// Publishes one of this instance's messages on `channel`; local members get it when the
    /// bus has placed it (see the module docs).
    pub fn publish(&mut self, now: Instant, channel: Channel, message: RemoteMessage) {
        if let Some(local) = &mut self.local {
            if !self.channels.contains_key(&channel) {
                return; // No local member, and nobody else: nothing to place.
            }
            let top = local.next_position(&channel.name(&self.prefix));
            self.place(now, &channel, &top, message);
            self.flush_steps(&channel);
            return;
        }
        let encoded = message.encode();
        // (A loss marker always goes: it is small, and it is how the loss gets told.)
        let full = self.pending.len() >= self.config.max_pending_publishes
            || self.pending_bytes + encoded.len() > self.config.max_pending_bytes;
        if full && message.lost == 0 {
            // The bus has been unreachable too long to queue more: members here get it now,
            // everyone is told once the bus is back.
            tracing::warn!(target: "switchboard::bus", channel = %channel.wire(), "publish queue full: message not published");
            *self.lost.entry(channel.clone()).or_default() += 1;
            // In order: what waits for the bus on this channel goes first.
            let waiting: Vec<Id> = self
                .budget
                .iter()
                .map(|(_, id)| id)
                .filter(|id| {
                    self.pending
                        .get(*id)
                        .is_some_and(|p| p.channel == channel && !p.delivered_early)
                })
                .cloned()
                .collect();
            for id in waiting {
                if let Some(pending) = self.pending.get_mut(&id) {
                    pending.delivered_early = true;
                    let message = pending.message.clone();
                    self.deliver_early(&channel, &message);
                }
            }
            self.deliver_early(&channel, &message);
            return;
        }
        let id = message.id.clone();
        self.pending_bytes += encoded.len();
        if let Some(state) = self.channels.get_mut(&channel) {
            state.pending += 1;
            if message.lost == 0 {
                self.budget.push_back((now + self.config.publish_budget, id.clone()));
            }
        }
        let sent = self.up && self.retry_at.is_none();
        let after = self.tails.insert(channel.clone(), id.clone());
        if sent {
            self.commands.push_back(BusCommand::Publish {
                channel: channel.name(&self.prefix),
                key: id.clone(),
                message: encoded.clone(),
                after: after.map(Box::new),
            });
        }
        self.pending.insert(
            id.clone(),
            Pending { channel, message, encoded, sent, delivered_early: false },
        );
        self.order.push_back(id);
    }

    pub fn handle_event(&mut self, now: Instant, event: BusEvent) {
        match event {
            BusEvent::Published { key, result } => self.published(now, key, result),
            BusEvent::Subscribed { batch, result } => self.subscribed(now, batch, result),
            BusEvent::Message { channel, message } => self.message(now, &channel, &message),
            BusEvent::Claimed { request, result } => {
                if self.claims.remove(&request).is_some() {
                    self.deliveries.push_back(Delivery::Claimed { request, result });
                }
            }
            BusEvent::History { request, result } if self.session_reads.contains_key(&request) => {
                if let Some((range, _)) = self.session_reads.remove(&request) {
                    self.by_range.remove(&range);
                    let (channel, _) = range;
                    if let Ok(history) = &result {
                        self.settle_own(now, &channel, history);
                        self.flush_steps(&channel);
                    }
                }
                self.deliveries.push_back(Delivery::SessionHistory { request, result });
            }
            BusEvent::History { request, result } => {
                let Some((channel, _)) = self.reads.remove(&request) else { return };
                if let Ok(history) = &result {
                    self.settle_own(now, &channel, history);
                }
                let limit = self.config.read_limit;
                let Some(state) = self.channels.get_mut(&channel) else { return };
                let more = match result {
                    Ok(history) => state.cursor.history(now, history, limit, &mut self.steps),
                    Err(error) => {
                        tracing::warn!(target: "switchboard::bus", channel = %channel.wire(), %error, "history read failed");
                        state.cursor.read_failed(now);
                        false
                    }
                };
                self.flush_steps(&channel);
                if more {
                    self.read(now, &channel);
                }
            }
            BusEvent::LinkDown => {
                tracing::warn!(target: "switchboard::bus", "bus link down");
                self.up = false;
                self.probe.waiting = None;
            }
            BusEvent::LinkUp => {
                tracing::info!(target: "switchboard::bus", "bus link up");
                self.up = true;
                self.resync(now);
            }
            BusEvent::Lagged => {
                tracing::warn!(target: "switchboard::bus", "bus receive queue lagged: sweeping every channel");
                self.resync(now);
            }
        }
    }

    /// When the link next wants [`Link::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.retry_at,
            self.subscribe_retry_at,
            self.probe.next_at,
            self.probe.waiting.map(|(_, at)| at),
            self.batches.values().map(|(_, _, at)| *at).min(),
            self.reads.values().map(|(_, at)| *at).min(),
            self.session_reads.values().map(|(_, at)| *at).min(),
            self.claims.values().copied().min(),
            self.budget.front().map(|(at, _)| *at),
            self.timers.first().map(|(at, _)| *at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            self.resend(now);
        }
        let expired: Vec<u64> =
            self.batches.iter().filter(|(_, (_, _, at))| *at <= now).map(|(b, _)| *b).collect();
        for batch in expired {
            self.subscribed(now, batch, Err(BusError("subscribe timed out".into())));
        }
        let expired: Vec<u64> =
            self.reads.iter().filter(|(_, (_, at))| *at <= now).map(|(r, _)| *r).collect();
        for request in expired {
            let result = Err(BusError("read timed out".into()));
            self.handle_event(now, BusEvent::History { request, result });
        }
        let expired: Vec<u64> =
            self.session_reads.iter().filter(|(_, (_, at))| *at <= now).map(|(r, _)| *r).collect();
        for request in expired {
            let result = Err(BusError("read timed out".into()));
            self.handle_event(now, BusEvent::History { request, result });
        }
        let expired: Vec<u64> =
            self.claims.iter().filter(|(_, at)| **at <= now).map(|(r, _)| *r).collect();
        for request in expired {
            let result = Err(BusError("claim timed out".into()));
            self.handle_event(now, BusEvent::Claimed { request, result });
        }
        if self.subscribe_retry_at.is_some_and(|at| at <= now) {
            self.subscribe_retry_at = None;
            self.flush_subscriptions(now);
        }
        if self.probe.waiting.is_some_and(|(_, at)| at <= now) {
            tracing::warn!(target: "switchboard::bus", "probe not echoed: the subscriber looks deaf; renewing it");
            self.probe.waiting = None;
            self.commands.push_back(BusCommand::RenewSubscriber);
            self.resync(now);
        }
        if self.probe.next_at.is_some_and(|at| at <= now) {
            self.send_probe(now);
        }
        self.deliver_overdue(now);
        let mut gone = Vec::new();
        let mut due = Vec::new();
        while let Some((at, channel)) = self.timers.first().cloned() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, channel.clone()));
            due.push(channel);
        }
        for channel in due {
            let Some(state) = self.channels.get_mut(&channel) else { continue };
            state.deadline = None;
            if state.linger_until.is_some_and(|at| at <= now) {
                gone.push(channel);
                continue;
            }
            if state.cursor.read_due(self.config.gap_wait).is_some_and(|at| at <= now) {
                self.read(now, &channel);
            }
            self.reschedule(&channel);
        }
        if !gone.is_empty() {
            let mut names = Vec::new();
            for channel in gone {
                if let Some(state) = self.channels.remove(&channel) {
                    if let Some(at) = state.deadline {
                        self.timers.remove(&(at, channel.clone()));
                    }
                    self.unconfirmed.remove(&channel);
                    let name = channel.name(&self.prefix);
                    if let Some(local) = &mut self.local {
                        local.forget(&name);
                    }
                    names.push(name);
                }
            }
            if self.local.is_none() {
                self.commands.push_back(BusCommand::Unsubscribe { channels: names });
            }
        }
    }

    /// Renews every subscription (and the probe's) and sweeps every cursor when the answers
    /// come; re-sends what waits to be published; resets channels that lost publishes.
    fn resync(&mut self, now: Instant) {
        if self.local.is_some() || !self.up {
            return;
        }
        self.unconfirmed = self.channels.keys().cloned().collect();
        for state in self.channels.values_mut() {
            state.subscription = Subscription::Waiting;
        }
        self.probe.confirmed = false;
        self.batches.clear();
        self.subscribe_retry_at = None;
        self.flush_subscriptions(now);
        self.retry_at = None;
        self.resend(now);
        // After what was queued: the marker of what could not be.
        for (channel, lost) in std::mem::take(&mut self.lost) {
            self.markers += 1;
            let id = format!("lost.{}.{}", self.origin, self.markers);
            let Ok(id) = Id::new(&id) else { continue };
            let marker = RemoteMessage::loss_marker(id, self.origin.clone(), lost);
            self.publish(now, channel, marker);
        }
    }

    fn flush_subscriptions(&mut self, now: Instant) {
        if self.local.is_some() || !self.up || self.subscribe_retry_at.is_some() {
            return;
        }
        let mut with_probe =
            !self.probe.confirmed && !self.batches.values().any(|(_, probe, _)| *probe);
        while !self.unconfirmed.is_empty() || with_probe {
            let mut channels = Vec::new();
            while channels.len() < self.config.subscribe_batch {
                let Some(channel) = self.unconfirmed.pop_first() else { break };
                channels.push(channel);
            }
            let mut names: Vec<String> = channels
                .iter()
                .filter(|c| self.channels.contains_key(*c))
                .map(|c| c.name(&self.prefix))
                .collect();
            if with_probe {
                names.push(self.probe.channel.clone());
            }
            let batch = self.next_id();
            for channel in &channels {
                if let Some(state) = self.channels.get_mut(channel) {
                    state.subscription = Subscription::Asked(batch);
                }
            }
            let deadline = now + self.config.subscribe_timeout;
            self.batches.insert(batch, (channels, with_probe, deadline));
            self.commands.push_back(BusCommand::Subscribe { batch, channels: names });
            with_probe = false;
        }
    }

    fn subscribed(&mut self, now: Instant, batch: u64, result: Result<Vec<Option<Top>>, BusError>) {
        let Some((channels, with_probe, _)) = self.batches.remove(&batch) else { return };
        let tops = match result {
            Ok(tops) => tops,
            Err(error) => {
                tracing::warn!(target: "switchboard::bus", %error, channels = channels.len(), "subscribe failed; retrying");
                for channel in channels {
                    if let Some(state) = self.channels.get_mut(&channel) {
                        state.subscription = Subscription::Waiting;
                        self.unconfirmed.insert(channel);
                    }
                }
                self.subscribe_retry_at = Some(now + self.config.retry_max);
                return;
            }
        };
        self.confirmed_batches += 1;
        let mut gone = Vec::new();
        let mut reads = Vec::new();
        for (channel, top) in channels.into_iter().zip(tops) {
            let Some(state) = self.channels.get_mut(&channel) else {
                // Let go while the subscribe was on its way.
                gone.push(channel.name(&self.prefix));
                continue;
            };
            // Not if it was asked for again since (let go and wanted again, or resynced).
            if state.subscription == Subscription::Asked(batch) {
                state.subscription = Subscription::Confirmed;
            }
            if state.cursor.sweep(now, top.as_ref(), &mut self.steps) {
                reads.push(channel.clone());
            }
            self.flush_steps(&channel);
        }
        if !gone.is_empty() {
            self.commands.push_back(BusCommand::Unsubscribe { channels: gone });
        }
        for channel in reads {
            self.read(now, &channel);
        }
        if with_probe {
            self.probe.confirmed = true;
            self.probe.next_at.get_or_insert(now);
            if self.probe.next_at.is_some_and(|at| at <= now) {
                self.send_probe(now);
            }
        }
    }

    fn send_probe(&mut self, now: Instant) {
        if !self.up || !self.probe.confirmed || self.probe.waiting.is_some() {
            self.probe.next_at = Some(now + self.config.probe_interval);
            return;
        }
        let token = self.next_id();
        self.probe.waiting = Some((token, now + self.config.probe_timeout));
        self.probe.next_at = Some(now + self.config.probe_interval);
        self.commands.push_back(BusCommand::Probe { channel: self.probe.channel.clone(), token });
    }

    fn message(&mut self, now: Instant, name: &str, bytes: &[u8]) {
        if name == self.probe.channel {
            let text = std::str::from_utf8(bytes).unwrap_or_default();
            if let Ok(token) = text.parse::<u64>() {
                if self.probe.waiting.is_some_and(|(waiting, _)| waiting == token) {
                    self.probe.waiting = None;
                }
                return;
            }
            let takeover =
                crate::protocol::json::object_fields(text).ok().flatten().and_then(|f| {
                    let (_, raw) = f.into_iter().find(|(k, _)| k == "takeover")?;
                    Id::new(&crate::protocol::json::string(raw)?).ok()
                });
            if let Some(connection_id) = takeover {
                self.deliveries.push_back(Delivery::Takeover { connection_id });
            }
            return;
        }
        let Some(channel) =
            Channel::parse(name, &self.prefix).filter(|c| self.channels.contains_key(c))
        else {
            return;
        };
        let Some((Some(top), message)) = RemoteMessage::decode(bytes) else {
            tracing::warn!(target: "switchboard::bus", channel = name, "dropping a malformed message from the bus");
            return;
        };
        if message.origin == self.origin {
            // Our own echo: the publish's answer may not have come yet.
            if let Some(pending) = self.pending.remove(&message.id) {
                self.forget_pending(&pending);
                self.place_own(now, &channel, &top, pending);
                self.flush_steps(&channel);
                return;
            }
        }
        self.place(now, &channel, &top, message);
        self.flush_steps(&channel);
    }

    fn published(&mut self, now: Instant, key: Id, result: Result<Top, BusError>) {
        match result {
            Ok(top) => {
                self.retry_delay = self.config.retry_min;
                let Some(pending) = self.pending.remove(&key) else { return };
                self.forget_pending(&pending);
                let channel = pending.channel.clone();
                self.place_own(now, &channel, &top, pending);
                self.flush_steps(&channel);
            }
            Err(error) => {
                let Some(pending) = self.pending.get_mut(&key) else { return };
                tracing::warn!(target: "switchboard::bus", %error, "publish failed; will retry");
                pending.sent = false;
                if self.retry_at.is_none() {
                    self.retry_at = Some(now + self.retry_delay);
                    self.retry_delay = (self.retry_delay * 2).min(self.config.retry_max);
                }
            }
        }
    }

    fn forget_pending(&mut self, pending: &Pending) {
        self.pending_bytes -= pending.encoded.len();
        if self.tails.get(&pending.channel) == Some(&pending.message.id) {
            self.tails.remove(&pending.channel);
        }
        // Answered ids stay in `order` and `budget` until they reach the front (or the
        // occasional compaction): removing each from the middle would cost a scan.
        while self.order.front().is_some_and(|id| !self.pending.contains_key(id)) {
            self.order.pop_front();
        }
        if self.order.len() > 2 * self.pending.len() + 64 {
            let pending = &self.pending;
            self.order.retain(|id| pending.contains_key(id));
        }
    }

    /// One of our publishes has its place.
    fn place_own(&mut self, now: Instant, channel: &Channel, top: &Top, pending: Pending) {
        let Some(state) = self.channels.get_mut(channel) else { return };
        state.pending = state.pending.saturating_sub(1);
        if pending.delivered_early {
            state.cursor.delivered_early(pending.message.id.clone());
        }
        self.place(now, channel, top, pending.message);
        let Some(state) = self.channels.get_mut(channel) else { return };
        if state.degraded && state.pending == 0 {
            state.degraded = false;
            self.steps.push(Step::Reset { epoch: Some(top.epoch.clone()), reason: "bus_degraded" });
        }
    }

    /// Own publishes still waiting for their answer that `history` shows placed take their
    /// place now, exactly as if the answer had come: a history read (a gap's repair, a resuming
    /// session's replay) must not deliver one that is then delivered again when its budget runs
    /// out, and the cursor must know of one already delivered early.
    fn settle_own(&mut self, now: Instant, channel: &Channel, history: &History) {
        let (Some(top), false) = (&history.top, self.pending.is_empty()) else { return };
        for (offset, entry) in &history.entries {
            let Some((_, message)) = RemoteMessage::decode(entry) else { continue };
            if message.origin != self.origin {
                continue;
            }
            let Some(pending) = self.pending.remove(&message.id) else { continue };
            self.forget_pending(&pending);
            let place = Top { epoch: top.epoch.clone(), offset: *offset };
            self.place_own(now, channel, &place, pending);
        }
    }

    fn place(&mut self, now: Instant, channel: &Channel, top: &Top, message: RemoteMessage) {
        let Some(state) = self.channels.get_mut(channel) else { return };
        state.cursor.offer(now, &top.epoch, top.offset, message, &mut self.steps);
    }

    /// Re-sends, in order, the publishes that have no command out, each following the one
    /// before it on its channel that still waits.
    fn resend(&mut self, _now: Instant) {
        if !self.up {
            return;
        }
        let mut before: HashMap<Channel, Id> = HashMap::new();
        for id in &self.order {
            let Some(pending) = self.pending.get_mut(id) else { continue };
            let after = before.insert(pending.channel.clone(), id.clone());
            if !pending.sent {
                pending.sent = true;
                self.commands.push_back(BusCommand::Publish {
                    channel: pending.channel.name(&self.prefix),
                    key: id.clone(),
                    message: pending.encoded.clone(),
                    after: after.map(Box::new),
                });
            }
        }
    }

    /// Own messages that waited too long for the bus go to local members now.
    fn deliver_overdue(&mut self, now: Instant) {
        while let Some((at, id)) = self.budget.front().cloned() {
            let waiting = self.pending.get(&id).is_some_and(|p| !p.delivered_early);
            if waiting && at > now {
                return;
            }
            self.budget.pop_front();
            if !waiting {
                continue;
            }
            let Some(pending) = self.pending.get_mut(&id) else { continue };
            pending.delivered_early = true;
            let (channel, message) = (pending.channel.clone(), pending.message.clone());
            self.deliver_early(&channel, &message);
        }
    }

    fn deliver_early(&mut self, channel: &Channel, message: &RemoteMessage) {
        let Some(state) = self.channels.get_mut(channel) else { return };
        state.degraded = true;
        if state.pending == 0 {
            // Nothing will come back from the bus for it (not published): the cursor must not
            // wait for it, and the reset comes when the bus is reset.
            state.cursor.delivered_early(message.id.clone());
        }
        self.deliveries.push_back(Delivery::Message {
            channel: channel.clone(),
            frame: message.frame.clone(),
            except: message.except.clone(),
            offset: None,
        });
    }

    fn read(&mut self, now: Instant, channel: &Channel) {
        let Some(state) = self.channels.get_mut(channel) else { return };
        if self.local.is_some() || !state.cursor.is_ready() {
            return;
        }
        if !self.up {
            // Not now; the sweep after the link is back reads what is missing anyway.
            state.cursor.read_failed(now);
            self.reschedule(channel);
            return;
        }
        if state.cursor.read_due(Duration::ZERO).is_none() {
            return;
        }
        let after = state.cursor.start_read();
        let name = channel.name(&self.prefix);
        let request = self.next_id();
        let deadline = now + self.config.subscribe_timeout;
        self.reads.insert(request, (channel.clone(), deadline));
        self.commands.push_back(BusCommand::Read {
            request,
            channel: name,
            after,
            limit: self.config.read_limit,
        });
        self.reschedule(channel);
    }

    /// Turns the cursor's steps for `channel` into deliveries (and keeps its deadline).
    fn flush_steps(&mut self, channel: &Channel) {
        self.reschedule(channel);
        if !self.channels.contains_key(channel) {
            self.steps.clear();
            return;
        }
        for step in self.steps.drain(..) {
            self.deliveries.push_back(match step {
                Step::Deliver { epoch, message, .. } if message.lost > 0 => {
                    if message.origin == self.origin {
                        continue; // Members here got every message (early).
                    }
                    Delivery::Reset { channel: channel.clone(), epoch: Some(epoch), reason: "publish_lost" }
                }
                Step::Deliver { epoch, offset, message } => {
                    // The channel's name on the wire is made when needed: kept, every channel (one per
                    // user at least) would carry it.
                    let position = Position { channel: channel.wire(), epoch, offset };
                    Delivery::Message {
                        channel: channel.clone(),
                        frame: message.frame.with_position(&position),
                        except: message.except,
                        offset: Some(offset),
                    }
                }
                Step::Reset { epoch, reason } => {
                    tracing::warn!(target: "switchboard::bus", channel = %channel.wire(), reason, "channel reset");
                    Delivery::Reset { channel: channel.clone(), epoch, reason }
                }
            });
        }
    }

    fn next_id(&mut self) -> u64 {
        let (shard, step) = self.id_step;
        let id = self.next_id * step + shard;
        self.next_id += 1;
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Instant = Instant::from_millis(1_000);

    fn link() -> Link {
        let config = BusConfig { shared: true, ..BusConfig::default() };
        Link::new(config, "sb:", Id::new("me").unwrap(), 7, 0, 1)
    }

    fn conversation() -> Channel {
        Channel::Conversation(Id::new("c").unwrap())
    }

    fn remote_message(n: u64) -> RemoteMessage {
        RemoteMessage {
            id: Id::new(&format!("m{n}")).unwrap(),
            origin: Id::new("other").unwrap(),
            except: None,
            lost: 0,
            frame: SharedFrame::from_encoded(Bytes::from(format!("{{\"n\":{n}}}"))).unwrap(),
        }
    }

    fn remote(n: u64) -> Bytes {
        let message = RemoteMessage {
            id: Id::new(&format!("m{n}")).unwrap(),
            origin: Id::new("other").unwrap(),
            except: None,
            lost: 0,
            frame: SharedFrame::from_encoded(Bytes::from(format!("{{\"n\":{n}}}"))).unwrap(),
        };
        super::super::local::positioned(&Top { epoch: "e".into(), offset: n }, &message.encode())
    }

    /// A link that is up with `conversation()` subscribed at top `e:0`.
    fn subscribed() -> Link {
        let mut link = link();
        link.handle_event(T0, BusEvent::LinkUp);
        link.want(T0, conversation());
        let mut batches = Vec::new();
        while let Some(command) = link.poll_command() {
            if let BusCommand::Subscribe { batch, channels } = command {
                batches.push((batch, channels));
            }
        }
        for (batch, channels) in batches {
            let tops = channels
                .iter()
                .map(|c| c.contains("conversation").then(|| Top { epoch: "e".into(), offset: 0 }))
                .collect();
            link.handle_event(T0, BusEvent::Subscribed { batch, result: Ok(tops) });
        }
        while link.poll_command().is_some() {}
        link
    }

    /// The subscribe batches the link sent since it was last asked.
    fn subscribes(link: &mut Link) -> Vec<(u64, usize)> {
        std::iter::from_fn(|| link.poll_command())
            .filter_map(|command| match command {
                BusCommand::Subscribe { batch, channels } => Some((batch, channels.len())),
                _ => None,
            })
            .collect()
    }

    fn confirm(link: &mut Link, now: Instant, (batch, channels): (u64, usize)) {
        let result = Ok(vec![None; channels]);
        link.handle_event(now, BusEvent::Subscribed { batch, result });
    }

    /// A channel is subscribed once the batch that asked for it last is confirmed: not by an
    /// earlier batch (it was let go and wanted again meanwhile), not after a resync asked for
    /// it again, and again once that is confirmed.
    #[test]
    fn a_channel_is_subscribed_by_the_batch_that_asked_for_it_last() {
        let mut link = link();
        // Let go well before the first batch would time out.
        link.config.linger = Duration::from_millis(100);
        link.handle_event(T0, BusEvent::LinkUp);
        while link.poll_command().is_some() {}
        link.want(T0, conversation());
        let [first] = subscribes(&mut link)[..] else { panic!("one batch") };
        assert!(!link.is_subscribed(&conversation()), "asked, not confirmed");

        // Let go (the last member left, and the linger ran out), then wanted again.
        link.release(T0, &conversation());
        let later = T0 + link.config.linger;
        link.handle_timeout(later);
        while link.poll_command().is_some() {}
        link.want(later, conversation());
        let [second] = subscribes(&mut link)[..] else { panic!("asked again") };
        confirm(&mut link, later, first);
        assert!(!link.is_subscribed(&conversation()), "the first batch asked for the old one");
        confirm(&mut link, later, second);
        assert!(link.is_subscribed(&conversation()));

        // A lagged receive queue renews every subscription: not subscribed until confirmed.
        link.handle_event(later, BusEvent::Lagged);
        let batches = subscribes(&mut link);
        assert!(!link.is_subscribed(&conversation()));
        for batch in batches {
            confirm(&mut link, later, batch);
        }
        assert!(link.is_subscribed(&conversation()));

        // A batch that fails puts it back to wait.
        link.handle_event(later, BusEvent::Lagged);
        let batches = subscribes(&mut link);
        for (batch, _) in batches {
            let result = Err(BusError("no".into()));
            link.handle_event(later, BusEvent::Subscribed { batch, result });
        }
        assert!(!link.is_subscribed(&conversation()));
    }

    /// Found by the hub fuzz target: a gap whose history read cannot be asked for (the link is
    /// down) must not leave a deadline in the past (the driver would spin on it).
    #[test]
    fn a_gap_while_the_link_is_down_moves_its_deadline_on() {
        let mut link = subscribed();
        let channel = "sb:{conversation:c}".to_owned();
        link.handle_event(T0, BusEvent::Message { channel: channel.clone(), message: remote(1) });
        link.handle_event(T0, BusEvent::Message { channel, message: remote(3) });
        link.handle_event(T0, BusEvent::LinkDown);
        let mut now = T0;
        for _ in 0..10 {
            let at = link.poll_timeout().expect("the gap read is due sometime");
            now = now.max(at);
            link.handle_timeout(now);
            assert!(link.poll_timeout().is_none_or(|next| next > now), "stuck at {now:?}");
        }
        assert!(!link.commands.iter().any(|c| matches!(c, BusCommand::Read { .. })));
        link.handle_event(now, BusEvent::LinkUp);
        assert!(link.commands.iter().any(|c| matches!(c, BusCommand::Subscribe { .. })));
    }

    #[test]
    fn own_publishes_reach_local_members_in_the_order_the_bus_gave_them() {
        let mut link = subscribed();
        let message = |n: u64| RemoteMessage {
            id: Id::new(&format!("own{n}")).unwrap(),
            origin: Id::new("me").unwrap(),
            except: None,
            lost: 0,
            frame: SharedFrame::from_encoded(Bytes::from(format!("{{\"own\":{n}}}"))).unwrap(),
        };
        link.publish(T0, conversation(), message(1));
        link.publish(T0, conversation(), message(2));
        assert_eq!(link.pending_publishes(), 2);
        assert!(link.poll_delivery().is_none(), "not before the bus has placed them");
        // The bus placed the second before the first answer came (another instance's message
        // took offset 1 and its copy is still on the way).
        let top = |offset| Ok(Top { epoch: "e".into(), offset });
        link.handle_event(T0, BusEvent::Published { key: message(2).id, result: top(3) });
        link.handle_event(T0, BusEvent::Published { key: message(1).id, result: top(2) });
        assert!(link.poll_delivery().is_none(), "offset 1 is missing");
        let channel = "sb:{conversation:c}".to_owned();
        link.handle_event(T0, BusEvent::Message { channel, message: remote(1) });
        let delivered: Vec<String> = std::iter::from_fn(|| link.poll_delivery())
            .map(|d| match d {
                Delivery::Message { frame, .. } => {
                    String::from_utf8(frame.unsequenced().to_vec()).unwrap()
                }
                Delivery::Reset { reason, .. } => reason.to_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(delivered.len(), 3);
        assert!(delivered[0].starts_with(r#"{"n":1,"position""#), "{delivered:?}");
        assert!(delivered[1].starts_with(r#"{"own":1,"position""#), "{delivered:?}");
        assert!(delivered[2].starts_with(r#"{"own":2,"position""#), "{delivered:?}");
        assert_eq!(link.pending_publishes(), 0);
    }

    fn own(n: u64) -> RemoteMessage {
        RemoteMessage {
            id: Id::new(&format!("own{n}")).unwrap(),
            origin: Id::new("me").unwrap(),
            except: None,
            lost: 0,
            frame: SharedFrame::from_encoded(Bytes::from(format!("{{\"own\":{n}}}"))).unwrap(),
        }
    }

    fn delivered(link: &mut Link) -> Vec<String> {
        std::iter::from_fn(|| link.poll_delivery())
            .map(|d| match d {
                Delivery::Message { frame, offset, .. } => {
                    let text = String::from_utf8(frame.unsequenced().to_vec()).unwrap();
                    format!("{} at {offset:?}", text.split(',').next().unwrap_or_default())
                }
                Delivery::Reset { reason, .. } => reason.to_owned(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// Found by the chaos run: an own publish whose answer and echo were slow, placed at offset
    /// 1 and read from the history to repair a gap, went to local members there and then once
    /// more when its budget ran out.
    #[test]
    fn an_own_publish_found_in_the_history_is_delivered_once_at_its_place() {
        let mut link = subscribed();
        link.publish(T0, conversation(), own(1));
        let channel = "sb:{conversation:c}".to_owned();
        link.handle_event(T0, BusEvent::Message { channel, message: remote(2) });
        let later = T0 + Duration::from_millis(150);
        link.handle_timeout(later);
        let request = std::iter::from_fn(|| link.poll_command())
            .find_map(|c| match c {
                BusCommand::Read { request, after: 0, .. } => Some(request),
                _ => None,
            })
            .expect("the gap at offset 1 is read");
        let entry = |m: &RemoteMessage| m.encode();
        let history = History {
            top: Some(Top { epoch: "e".into(), offset: 2 }),
            entries: vec![(1, entry(&own(1))), (2, entry(&remote_message(2)))],
        };
        link.handle_event(later, BusEvent::History { request, result: Ok(history) });
        assert_eq!(delivered(&mut link), [r#"{"own":1 at Some(1)"#, r#"{"n":2 at Some(2)"#]);
        // Its budget runs out, then its answer comes: nothing more.
        let much_later = T0 + Duration::from_secs(5);
        link.handle_timeout(much_later);
        let top = Ok(Top { epoch: "e".into(), offset: 1 });
        link.handle_event(much_later, BusEvent::Published { key: own(1).id, result: top });
        assert_eq!(delivered(&mut link), Vec::<String>::new());
        assert_eq!(link.pending_publishes(), 0);
    }

    /// The same for a resuming session's history read: the publish takes its place in the
    /// channel (for every local member, in order), not a second, early delivery.
    #[test]
    fn an_own_publish_found_in_a_sessions_history_takes_its_place() {
        let mut link = subscribed();
        link.publish(T0, conversation(), own(1));
        let request = link.read_history(T0, &conversation(), 0).expect("a read");
        let history = History {
            top: Some(Top { epoch: "e".into(), offset: 1 }),
            entries: vec![(1, own(1).encode())],
        };
        link.handle_event(T0, BusEvent::History { request, result: Ok(history) });
        let got = delivered(&mut link);
        assert_eq!(got[0], r#"{"own":1 at Some(1)"#, "{got:?}");
        assert!(got[1].starts_with("SessionHistory"), "{got:?}");
        link.handle_timeout(T0 + Duration::from_secs(5));
        assert_eq!(delivered(&mut link), Vec::<String>::new());
        assert_eq!(link.pending_publishes(), 0);
    }
}
