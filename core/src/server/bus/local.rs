//! The bus in memory: what the Redis function does, for one process.
//!
//! A single instance uses it for its positions (no history kept: nobody else could read it);
//! a server with one hub per thread joins them with one (its own thread carries the commands);
//! the simulation joins several hubs with one, with history, latency and faults of its own.
//!
//! Like Redis, it forgets what outlived its time to live, when told the time ([`LocalBus::
//! set_time`], [`LocalBus::expire`]): a channel nobody published to or subscribed for the
//! history's time to live, a session record past its own. A bus never told the time keeps
//! everything (the simulation's runs are short).

use super::{BusCommand, BusError, BusEvent, History, SessionRecord, Top};
use crate::protocol::Id;
use crate::rng::Rng;
use crate::time::Instant;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

/// One channel: its epoch, top, history and recent publish keys.
#[derive(Debug)]
struct Log {
    epoch: String,
    top: u64,
    entries: VecDeque<(u64, Bytes)>,
    keys: HashMap<Id, u64>,
    key_order: VecDeque<Id>,
    /// When it was last published to (its history's time to live counts from there).
    touched: Instant,
}

/// The bus in memory. Subscribers are numbered by the caller.
#[derive(Debug)]
pub struct LocalBus {
    rng: Rng,
    history_len: usize,
    logs: HashMap<String, Log>,
    /// Per channel, the subscribers, in order: a handful at most (one per hub), so a sorted
    /// vector (8 bytes each) rather than a set (a 100-byte node for the first).
    subscribers: BTreeMap<String, Vec<usize>>,
    /// Session records by key, with when they expire.
    sessions: HashMap<String, (SessionRecord, Instant)>,
    /// The channel prefix instance channels are named with (`sb:`).
    prefix: String,
    /// The time commands are stamped with (see [`LocalBus::set_time`]).
    now: Instant,
    /// How long a channel's history outlives its last publish (`None`: for ever).
    history_ttl: Option<Duration>,
}

impl LocalBus {
    /// A bus keeping `history_len` entries per channel, drawing epochs from `seed`.
    pub fn new(seed: u64, history_len: usize) -> Self {
        LocalBus {
            rng: Rng::new(seed),
            history_len,
            logs: HashMap::new(),
            subscribers: BTreeMap::new(),
            sessions: HashMap::new(),
            prefix: "sb:".to_owned(),
            now: Instant::ZERO,
            history_ttl: None,
        }
    }

    /// Forgets a channel's history `ttl` after its last publish (once nobody subscribes to it),
    /// as Redis does with the history keys' time to live.
    pub fn with_history_ttl(mut self, ttl: Duration) -> Self {
        self.history_ttl = Some(ttl);
        self
    }

    /// The time the commands that follow are stamped with.
    pub fn set_time(&mut self, now: Instant) {
        self.now = now;
    }

    /// Forgets what outlived its time to live at the current time: channels without
    /// subscribers not published to within the history's time to live (a later publish starts
    /// a new epoch, and a client behind it is told to refetch), and session records past
    /// theirs.
    pub fn expire(&mut self) {
        let now = self.now;
        if let Some(ttl) = self.history_ttl {
            let subscribers = &self.subscribers;
            self.logs.retain(|channel, log| {
                subscribers.contains_key(channel) || now.saturating_since(log.touched) < ttl
            });
        }
        self.sessions.retain(|_, (_, expires)| *expires > now);
    }

    /// Carries out `command` from `subscriber`: the answer for it, and any messages published
    /// to subscribers (itself included), as `(subscriber, event)` in order.
    pub fn execute(&mut self, subscriber: usize, command: BusCommand) -> Vec<(usize, BusEvent)> {
        let mut events = Vec::new();
        match command {
            BusCommand::Publish { channel, key, message, after } => {
                if let Some(refused) = self.out_of_order(&channel, &key, after.as_deref()) {
                    events.push((subscriber, BusEvent::Published { key, result: Err(refused) }));
                    return events;
                }
                let (top, fresh) = self.append(&channel, key.clone(), &message);
                events.push((subscriber, BusEvent::Published { key, result: Ok(top.clone()) }));
                if fresh {
                    let published = positioned(&top, &message);
                    self.fan_out(&channel, &published, &mut events);
                }
            }
            BusCommand::Subscribe { batch, channels } => {
                let tops = channels
                    .into_iter()
                    .map(|channel| {
                        let top = self.top(&channel);
                        let set = self.subscribers.entry(channel).or_default();
                        if let Err(at) = set.binary_search(&subscriber) {
                            set.reserve_exact(1);
                            set.insert(at, subscriber);
                        }
                        top
                    })
                    .collect();
                events.push((subscriber, BusEvent::Subscribed { batch, result: Ok(tops) }));
            }
            BusCommand::Unsubscribe { channels } => {
                for channel in channels {
                    if let Some(set) = self.subscribers.get_mut(&channel) {
                        set.retain(|&s| s != subscriber);
                        if set.is_empty() {
                            self.subscribers.remove(&channel);
                        }
                    }
                }
            }
            BusCommand::Read { request, channel, after, limit } => {
                let history = self.read(&channel, after, limit);
                events.push((subscriber, BusEvent::History { request, result: Ok(history) }));
            }
            BusCommand::Probe { channel, token } => {
                self.fan_out(&channel, &Bytes::from(token.to_string()), &mut events)
            }
            BusCommand::RenewSubscriber => {}
            BusCommand::SaveSession { session, record, ttl_ms } => {
                let expires = self.now + Duration::from_millis(ttl_ms);
                self.sessions.insert(session, (*record, expires));
            }
            BusCommand::DropSession { session } => {
                self.sessions.remove(&session);
            }
            BusCommand::ClaimSession { request, session, claimant } => {
                let record = self.sessions.get_mut(&session).map(|(record, _)| {
                    let previous = std::mem::replace(&mut record.owner, claimant.clone());
                    record.generation += 1;
                    (previous, record.clone())
                });
                let result = Ok(record.as_ref().map(|(_, record)| record.clone()));
                events.push((subscriber, BusEvent::Claimed { request, result }));
                if let Some((previous, record)) =
                    record.filter(|(previous, _)| *previous != claimant)
                {
                    let id = session.rsplit_once("session:").map_or("", |(_, id)| id);
                    let notice = format!(
                        r#"{{"takeover":"{}","generation":{}}}"#,
                        id.trim_end_matches('}'),
                        record.generation
                    );
                    let channel = format!("{}{{instance:{previous}}}", self.prefix);
                    self.fan_out(&channel, &Bytes::from(notice), &mut events);
                }
            }
        }
        events
    }

    /// The next position in `channel`, with nothing kept but the count: what a single
    /// instance needs (nobody else reads its history, and it never retries).
    pub fn next_position(&mut self, channel: &str) -> Top {
        let log = self.log(channel);
        log.top += 1;
        Top { epoch: log.epoch.clone(), offset: log.top }
    }

    /// The channel's top, if it has one.
    pub fn top(&self, channel: &str) -> Option<Top> {
        self.logs.get(channel).map(|log| Top { epoch: log.epoch.clone(), offset: log.top })
    }

    /// Entries after `after` (at most `limit`) and the top.
    pub fn read(&self, channel: &str, after: u64, limit: usize) -> History {
        let Some(log) = self.logs.get(channel) else {
            return History { top: None, entries: Vec::new() };
        };
        let entries =
            log.entries.iter().filter(|(offset, _)| *offset > after).take(limit).cloned().collect();
        History { top: Some(Top { epoch: log.epoch.clone(), offset: log.top }), entries }
    }

    /// Forgets a channel's epoch, history and keys (its next publish starts a new epoch).
    pub fn forget(&mut self, channel: &str) {
        self.logs.remove(channel);
    }

    /// Keeps only what `channel` had up to `offset`, epoch unchanged: a failover to a replica
    /// that had not received the last writes. The offsets after it will be given again.
    pub fn roll_back(&mut self, channel: &str, offset: u64) {
        let Some(log) = self.logs.get_mut(channel) else { return };
        log.top = log.top.min(offset);
        log.entries.retain(|(at, _)| *at <= offset);
        log.keys.retain(|_, at| *at <= offset);
        log.key_order.retain(|key| log.keys.contains_key(key));
    }

    /// Forgets everything but the subscriptions: a bus restarted without persistence.
    pub fn lose_everything(&mut self) {
        self.logs.clear();
    }

    /// Forgets a subscriber's subscriptions (its process is gone).
    pub fn drop_subscriber(&mut self, subscriber: usize) {
        self.subscribers.retain(|_, set| {
            set.retain(|&s| s != subscriber);
            !set.is_empty()
        });
    }

    /// How many session records it keeps.
    pub fn session_records(&self) -> usize {
        self.sessions.len()
    }

    /// How many subscribers a channel has.
    pub fn subscribers(&self, channel: &str) -> usize {
        self.subscribers.get(channel).map_or(0, Vec::len)
    }

    /// `channel`'s log, started (with a fresh epoch and nothing in it) if it has none.
    fn log(&mut self, channel: &str) -> &mut Log {
        let (rng, now) = (&mut self.rng, self.now);
        let log = self.logs.entry(channel.to_owned()).or_insert_with(|| Log {
            epoch: epoch(rng),
            top: 0,
            entries: VecDeque::new(),
            keys: HashMap::new(),
            key_order: VecDeque::new(),
            touched: now,
        });
        log.touched = now;
        log
    }

    /// Why a publish of `key` that must follow `after` is refused, if it is: `after` has no
    /// place in the channel (and `key` none either: a retry of a placed one is answered).
    fn out_of_order(&self, channel: &str, key: &Id, after: Option<&Id>) -> Option<BusError> {
        let after = after?;
        let log = self.logs.get(channel);
        let placed = |id: &Id| log.is_some_and(|log| log.keys.contains_key(id));
        (!placed(key) && !placed(after))
            .then(|| BusError(format!("out of order: {after} is not placed yet")))
    }

    /// Appends a message; returns its position and whether it is new (not a retried key).
    fn append(&mut self, channel: &str, key: Id, message: &Bytes) -> (Top, bool) {
        let history_len = self.history_len;
        let log = self.log(channel);
        if let Some(&offset) = log.keys.get(&key) {
            return (Top { epoch: log.epoch.clone(), offset }, false);
        }
        log.top += 1;
        if history_len > 0 {
            log.entries.push_back((log.top, message.clone()));
            while log.entries.len() > history_len {
                log.entries.pop_front();
            }
        }
        log.keys.insert(key.clone(), log.top);
        log.key_order.push_back(key);
        // As many keys as entries: a retry comes within seconds, long before its entry would
        // be evicted.
        while log.key_order.len() > history_len {
            if let Some(old) = log.key_order.pop_front() {
                log.keys.remove(&old);
            }
        }
        (Top { epoch: log.epoch.clone(), offset: log.top }, true)
    }

    fn fan_out(&self, channel: &str, message: &Bytes, events: &mut Vec<(usize, BusEvent)>) {
        for &subscriber in self.subscribers.get(channel).into_iter().flatten() {
            let event = BusEvent::Message { channel: channel.to_owned(), message: message.clone() };
            events.push((subscriber, event));
        }
    }
}

/// `{"epoch":"…","offset":N,` followed by the entry without its `{`: what subscribers get.
pub(super) fn positioned(top: &Top, entry: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(entry.len() + 48);
    out.extend_from_slice(b"{\"epoch\":");
    crate::protocol::json::write_string(&mut out, &top.epoch);
    out.extend_from_slice(b",\"offset\":");
    crate::protocol::json::write_u64(&mut out, top.offset);
    out.push(b',');
    out.extend_from_slice(entry.get(1..).unwrap_or_default());
    Bytes::from(out)
}

/// A fresh epoch: eight base-36 characters.
fn epoch(rng: &mut Rng) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut n = rng.next_u64();
    (0..8)
        .map(|_| {
            let digit = DIGITS[(n % 36) as usize];
            n /= 36;
            char::from(digit)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::bus::RemoteMessage;

    fn publish(bus: &mut LocalBus, from: usize, key: &str) -> Vec<(usize, BusEvent)> {
        let entry = Bytes::from(format!(
            r#"{{"id":"{key}","origin":"i","except":null,"frame":{{"n":1}}}}"#
        ));
        bus.execute(
            from,
            BusCommand::Publish {
                channel: "c".into(),
                key: Id::new(key).unwrap(),
                message: entry,
                after: None,
            },
        )
    }

    #[test]
    fn offsets_count_from_one_retries_are_idempotent_and_subscribers_get_positions() {
        let mut bus = LocalBus::new(1, 2);
        let subscribed =
            bus.execute(1, BusCommand::Subscribe { batch: 9, channels: vec!["c".into()] });
        assert_eq!(subscribed, [(1, BusEvent::Subscribed { batch: 9, result: Ok(vec![None]) })]);
        let first = publish(&mut bus, 0, "a");
        let BusEvent::Published { result: Ok(top), .. } = &first[0].1 else { panic!("{first:?}") };
        assert_eq!(top.offset, 1);
        let BusEvent::Message { message, .. } = &first[1].1 else { panic!("{first:?}") };
        let (position, decoded) = RemoteMessage::decode(message).unwrap();
        assert_eq!((position.as_ref(), decoded.id.as_str()), (Some(top), "a"));
        assert_eq!(publish(&mut bus, 0, "a").len(), 1, "a retried key is answered, not published");
        publish(&mut bus, 0, "b");
        publish(&mut bus, 0, "c");
        let history = bus.read("c", 0, 10);
        assert_eq!(history.top.as_ref().map(|t| t.offset), Some(3));
        let offsets: Vec<u64> = history.entries.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, [2, 3], "bounded history: the oldest was evicted");
        bus.lose_everything();
        let again = publish(&mut bus, 0, "d");
        let BusEvent::Published { result: Ok(new), .. } = &again[0].1 else { panic!() };
        assert_eq!(new.offset, 1);
        assert_ne!(new.epoch, top.epoch, "a new epoch after the history was lost");
    }

    #[test]
    fn idle_channels_and_old_session_records_expire_and_subscribed_channels_stay() {
        let mut bus = LocalBus::new(1, 10).with_history_ttl(Duration::from_secs(60));
        publish(&mut bus, 0, "a");
        let subscribe =
            |channel: &str| BusCommand::Subscribe { batch: 1, channels: vec![channel.into()] };
        bus.execute(
            0,
            BusCommand::Publish {
                channel: "watched".into(),
                key: Id::new("w").unwrap(),
                message: Bytes::from_static(br#"{"n":1}"#),
                after: None,
            },
        );
        bus.execute(1, subscribe("watched"));
        let record = SessionRecord {
            user_id: "u".into(),
            conversation_id: None,
            definition_id: None,
            can_write: true,
            owner: Id::new("i-1").unwrap(),
            generation: 0,
            joined: Vec::new(),
        };
        let save = |session: &str, ttl_ms| BusCommand::SaveSession {
            session: session.into(),
            record: Box::new(record.clone()),
            ttl_ms,
        };
        bus.execute(0, save("short", 30_000));
        bus.execute(0, save("long", 90_000));

        bus.set_time(Instant::from_millis(59_999));
        bus.expire();
        assert!(bus.top("c").is_some(), "not idle for the whole time to live yet");
        assert_eq!(bus.session_records(), 1, "the 30 s record is gone, the 90 s one is kept");

        bus.set_time(Instant::from_millis(60_000));
        bus.expire();
        assert_eq!(bus.top("c"), None, "an idle channel without subscribers is forgotten");
        assert!(bus.top("watched").is_some(), "a subscribed channel is kept");
        publish(&mut bus, 0, "b");
        bus.set_time(Instant::from_millis(100_000));
        bus.expire();
        assert!(bus.top("c").is_some(), "a publish counts the time to live from there");
        assert_eq!(bus.session_records(), 0);
    }
}
