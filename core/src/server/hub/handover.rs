//! Resume anywhere (DESIGN.md §3): a client whose session lived on another instance (one that
//! crashed, drained or lost the client to the load balancer) resumes it here.
//!
//! With a shared bus, every session's record (user, conversation, where it joined its
//! channels, owner, generation) is on the bus while it may be resumed. A resume naming a
//! session this instance does not hold:
//!
//! 1. **claims** the record: this instance becomes the owner, and the previous owner (if it is
//!    alive) is told to let its copy go;
//! 2. takes over the session on the new socket: its connection id, and its sequence continued
//!    from the client's `lastSequence`;
//! 3. **reads each channel's history** from the client's last position there (or where the
//!    session joined, if the client got nothing on it), up to where this instance is; what
//!    arrives live meanwhile waits and is merged after it by position, so nothing is given
//!    twice;
//! 4. answers `resumed {stateValid: true}` and replays. A channel whose epoch changed or whose
//!    history no longer reaches back to the client's position cannot be replayed: the client
//!    hears `system.channel.reset` for that channel (and the `channels` of `resumed` say which).
//!
//! An unknown session, another user's, or one of another conversation is `stateValid: false`
//! as before. Messages sent to the one connection (not through a channel) have no history and
//! are not replayed on another instance.

use super::Hub;
use super::session::Key;
use crate::protocol::{ChannelReset, ConnectionResume, Id, Position, SharedFrame, SystemMessage};
use crate::server::ConnectionState;
use crate::server::bus::{BusError, Channel, History, RemoteMessage, SessionRecord, Top};
use crate::server::io::{HubEvent, JoinGrant, Output};
use crate::time::Instant;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long a session's record lives on the bus while its socket is open: long, since the
/// instance may die without a word; once the socket is gone it is cut to the resume window.
const RECORD_TTL_WHILE_OPEN: Duration = Duration::from_secs(24 * 3600);

/// How long a resume waits for its channels' subscriptions (Redis just came back, say) before
/// it resets the channels still unsubscribed instead of replaying them.
const SUBSCRIPTION_WAIT: Duration = Duration::from_secs(10);

/// A resume of a session another instance held, under way.
#[derive(Debug)]
pub(super) struct Handover {
    resume: ConnectionResume,
    grant: JoinGrant,
    /// When the claim was answered, and the record it brought.
    claimed: Option<(Instant, SessionRecord)>,
    /// Channels whose replay waits until this instance is subscribed to them and knows where
    /// they are: replaying up to an unknown point would skip what lies between it and where
    /// the subscription starts.
    waiting: Vec<Channel>,
    /// Per channel being read: where the replay starts, where it must reach, what was read.
    channels: BTreeMap<Channel, Replay>,
    /// Channels that cannot be replayed (epoch changed, history gone).
    invalid: Vec<Channel>,
    /// Live messages that arrived while the history was read, in order, with their place.
    held: Vec<(Option<(Channel, u64)>, SharedFrame)>,
}

#[derive(Debug)]
struct Replay {
    epoch: String,
    /// The client's position: the bus's top must not be behind it.
    from: u64,
    /// The last offset read so far (the client's position at first).
    after: u64,
    /// Where this instance was when the resume came: the replay reaches at least this far.
    until: u64,
    /// The read under way, if any.
    request: Option<u64>,
    frames: Vec<(u64, SharedFrame)>,
    /// The ids of `frames`' messages: a held message delivered before the bus placed it (an
    /// own publish past its budget) is one of these when the history holds it too.
    ids: BTreeSet<Id>,
}

impl Handover {
    /// A live message for the session while its history is read.
    pub(super) fn hold(&mut self, at: Option<(Channel, u64)>, frame: SharedFrame) {
        self.held.push((at, frame));
    }
}

impl Hub {
    /// The record of session `key` as the bus keeps it (with where it is in its channels).
    pub(super) fn save_record(&mut self, key: Key, ttl: Duration) {
        if !self.config.bus.shared {
            return;
        }
        let Some(session) = self.sessions.get(&key) else { return };
        let Some(user_id) = session.user_id().map(str::to_owned) else { return };
        // A subscribed channel without a position has had no message yet: the record says so
        // with an empty epoch at offset 0, and a resume elsewhere replays it from its start.
        let channels = self.channels_of(key);
        let mut all_subscribed = true;
        // Exactly as long as it needs to be: the bus keeps the record as long as the session.
        let mut joined = Vec::with_capacity(channels.len());
        for channel in channels {
            let subscribed = self.links.is_subscribed(&channel);
            all_subscribed &= subscribed;
            let top = match self.links.position(&channel) {
                Some(top) => top,
                None if subscribed => Top::before_the_first(),
                None => continue,
            };
            joined.push(Position { channel: channel.wire(), epoch: top.epoch, offset: top.offset });
        }
        let record = SessionRecord {
            user_id,
            conversation_id: session.conversation_id.clone(),
            definition_id: session.definition_id.clone(),
            can_write: session.can_write,
            owner: self.instance_id.clone(),
            generation: 0,
            joined,
        };
        let connection_id = session.connection_id.clone();
        if all_subscribed {
            self.unrecorded.remove(&key);
        } else {
            self.unrecorded.insert(key);
        }
        self.links.save_session(&connection_id, record, ttl);
        // Out now: until the record is on the bus, the client cannot resume elsewhere.
        self.flush_bus_commands();
    }

    /// How long a session's record lives on the bus: the resume window once its socket is
    /// gone, long while it is open (the instance may die without a word).
    fn record_ttl(&self, session: &super::session::Session) -> Duration {
        match session.state() {
            ConnectionState::Reconnecting => self.config.resume_window,
            _ => RECORD_TTL_WHILE_OPEN,
        }
    }

    /// Writes again the records of sessions written before all their channels were
    /// subscribed, now that they are.
    pub(super) fn record_again(&mut self) {
        let ready: Vec<(Key, Duration)> = self
            .unrecorded
            .iter()
            .filter_map(|&key| self.sessions.get(&key).map(|session| (key, session)))
            // A session being taken over is recorded when its replay is planned.
            .filter(|(_, session)| session.is_member() && session.handover.is_none())
            .filter(|(key, _)| self.channels_of(*key).iter().all(|c| self.links.is_subscribed(c)))
            .map(|(key, session)| (key, self.record_ttl(session)))
            .collect();
        let sessions = &self.sessions;
        self.unrecorded.retain(|key| sessions.contains_key(key));
        for (key, ttl) in ready {
            self.save_record(key, ttl);
        }
    }

    /// Shard `shard`'s link came (back) up: the records it keeps of the sessions held here are
    /// written again. Some were written while it was down (and lost), or it restarted empty.
    pub(super) fn save_records_on(&mut self, shard: usize) {
        let records: Vec<(Key, Duration)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.is_member() && s.handover.is_none())
            .filter(|(_, s)| self.links.shard_of_session(&s.connection_id) == shard)
            .map(|(&key, s)| (key, self.record_ttl(s)))
            .collect();
        for (key, ttl) in records {
            self.save_record(key, ttl);
        }
    }

    /// A session became active: its record goes on the bus.
    pub(super) fn record_active(&mut self, key: Key) {
        self.save_record(key, RECORD_TTL_WHILE_OPEN);
    }

    /// The channels a session hears: its conversation, its user, everyone.
    pub(super) fn channels_of(&self, key: Key) -> Vec<Channel> {
        let Some(session) = self.sessions.get(&key) else { return Vec::new() };
        let mut channels = Vec::new();
        if let Some(conversation) = &session.conversation_id {
            channels.push(Channel::Conversation(conversation.clone()));
        }
        if let Some(user) = session.user_id() {
            channels.push(Channel::User(user.to_owned()));
        }
        channels.push(Channel::Broadcast);
        channels
    }

    /// Whether `resume` may be for a session another instance held: there is a shared bus,
    /// and the client says which session and where it was.
    pub(super) fn may_hand_over(&self, resume: &ConnectionResume) -> bool {
        self.config.bus.shared && resume.connection_id.is_some() && resume.last_sequence.is_some()
    }

    /// Step 1: claims the session `resume` names for the new session `key`.
    pub(super) fn begin_handover(
        &mut self,
        now: Instant,
        key: Key,
        resume: ConnectionResume,
        grant: JoinGrant,
    ) {
        let Some(connection_id) = resume.connection_id.clone() else { return };
        let Some(request) = self.links.claim_session(now, &connection_id) else { return };
        self.claims.insert(request, key);
        if let Some(session) = self.sessions.get_mut(&key) {
            session.handover = Some(Box::new(Handover {
                resume,
                grant,
                claimed: None,
                waiting: Vec::new(),
                channels: BTreeMap::new(),
                invalid: Vec::new(),
                held: Vec::new(),
            }));
        }
        self.drain_link(now);
    }

    /// Step 2: the claim's answer.
    pub(super) fn handle_claimed(
        &mut self,
        now: Instant,
        request: u64,
        result: Result<Option<SessionRecord>, BusError>,
    ) {
        let Some(key) = self.claims.remove(&request) else { return };
        let Some(session) = self.sessions.get(&key) else { return };
        let user = session.user_id().map(str::to_owned);
        let conversation = session.conversation_id.clone();
        let record = match result {
            Ok(Some(record))
                if Some(&record.user_id) == user.as_ref()
                    && record.conversation_id == conversation =>
            {
                record
            }
            Ok(_) => return self.fail_handover(now, key),
            Err(error) => {
                tracing::warn!(target: "switchboard::hub", %error, "session claim failed");
                return self.fail_handover(now, key);
            }
        };
        let Some(handover) = self.sessions.get_mut(&key).and_then(|s| s.handover.take()) else {
            return;
        };
        let Some(old_id) = handover.resume.connection_id.clone() else { return };
        let last = handover.resume.last_sequence.unwrap_or(0);
        // The new socket carries the old session on: its id, and its sequence from where the
        // client is (what this session sent before is what the client holds back, and the
        // replay brings it again with its place).
        self.rename(key, old_id);
        if let Some(session) = self.sessions.get_mut(&key) {
            // What the socket was handed goes out before the sequence starts again.
            session.spill(&mut self.outputs);
            session.next_sequence = last + 1;
            session.sent_through = last;
            session.replay = Default::default();
            session.unacked_bytes = 0;
            session.acknowledge_through(last, &mut self.outputs);
            for sequence in &mut session.in_flight {
                *sequence = 0;
            }
            session.can_write = handover.grant.write && session.conversation_id.is_some();
            session.floors.clear();
            session.handover = Some(handover);
        }
        for channel in self.channels_of(key) {
            self.plan_replay(now, key, &channel, &record);
        }
        if let Some(handover) = self.sessions.get_mut(&key).and_then(|s| s.handover.as_mut()) {
            handover.claimed = Some((now, record));
        }
        self.save_record(key, RECORD_TTL_WHILE_OPEN);
        self.drain_link(now);
        self.finish_handover_if_read(now, key);
    }

    /// Where the replay of `channel` starts and ends for session `key`, and the first read.
    fn plan_replay(&mut self, now: Instant, key: Key, channel: &Channel, record: &SessionRecord) {
        let wire = channel.wire();
        let here = self.links.position(channel);
        let subscribed = self.links.is_subscribed(channel);
        let Some(handover) = self.sessions.get_mut(&key).and_then(|s| s.handover.as_mut()) else {
            return;
        };
        if !subscribed {
            handover.waiting.push(channel.clone());
            self.waiting_replays.insert(key);
            return;
        }
        // "Before the first message" is the record's to say: from a client it is ignored
        // (it would replay what was said before the session joined).
        let from = handover
            .resume
            .positions
            .iter()
            .filter(|p| !p.epoch.is_empty())
            .chain(&record.joined)
            .find(|p| p.channel == wire)
            .map(|p| Top { epoch: p.epoch.clone(), offset: p.offset });
        let (from, here) = match (from, here) {
            // Nothing has happened on the channel, before or since.
            (None, None) => return,
            (Some(from), None) if from.is_before_the_first() => return,
            // Nothing had happened on it when the session was recorded: all of it is new.
            (Some(from), Some(here)) if from.is_before_the_first() => {
                (Top { epoch: here.epoch.clone(), offset: 0 }, here)
            }
            // The client was somewhere in a channel the bus no longer has (its Redis
            // restarted empty): what came after is gone.
            (Some(_), None) => {
                handover.invalid.push(channel.clone());
                return;
            }
            // The client may be further on than this instance (whose copy of the last messages
            // is still on its way): the read then only checks that the bus is not behind the
            // client (rolled back by a failover), and brings what came after the client.
            (Some(from), Some(here)) if from.epoch == here.epoch => {
                let offset = here.offset.max(from.offset);
                (from, Top { offset, ..here })
            }
            // Another epoch, or no idea where the client was: it must refetch.
            _ => {
                handover.invalid.push(channel.clone());
                return;
            }
        };
        let replay = Replay {
            epoch: here.epoch,
            from: from.offset,
            after: from.offset,
            until: here.offset,
            request: None,
            frames: Vec::new(),
            ids: BTreeSet::new(),
        };
        handover.channels.insert(channel.clone(), replay);
        self.read_more(now, key, channel);
    }

    fn read_more(&mut self, now: Instant, key: Key, channel: &Channel) {
        let after = match self.sessions.get(&key).and_then(|s| s.handover.as_ref()) {
            Some(handover) => match handover.channels.get(channel) {
                Some(replay) => replay.after,
                None => return,
            },
            None => return,
        };
        let Some(request) = self.links.read_history(now, channel, after) else { return };
        self.history_waiters.entry(request).or_default().push((key, channel.clone()));
        if let Some(replay) = self
            .sessions
            .get_mut(&key)
            .and_then(|s| s.handover.as_mut())
            .and_then(|h| h.channels.get_mut(channel))
        {
            replay.request = Some(request);
        }
    }

    /// Step 3: a history read came back (for every session that waited on it).
    pub(super) fn handle_session_history(
        &mut self,
        now: Instant,
        request: u64,
        result: Result<History, BusError>,
    ) {
        let limit = self.links.read_limit();
        for (key, channel) in self.history_waiters.remove(&request).unwrap_or_default() {
            let more = {
                let Some(session) = self.sessions.get_mut(&key) else { continue };
                let me = session.connection_id.clone();
                let Some(handover) = session.handover.as_mut() else { continue };
                let Some(replay) = handover.channels.get_mut(&channel) else { continue };
                if replay.request != Some(request) {
                    continue;
                }
                replay.request = None;
                match take_history(replay, &channel, &result, limit, &me) {
                    Ok(more) => more,
                    Err(()) => {
                        handover.channels.remove(&channel);
                        handover.invalid.push(channel.clone());
                        false
                    }
                }
            };
            if more {
                self.read_more(now, key, &channel);
            }
            self.finish_handover_if_read(now, key);
        }
        self.drain_link(now);
    }

    /// Step 4, once every read is in: `resumed`, the resets, the replay, what came meanwhile.
    fn finish_handover_if_read(&mut self, now: Instant, key: Key) {
        let done = self.sessions.get(&key).and_then(|s| s.handover.as_ref()).is_some_and(|h| {
            h.waiting.is_empty() && h.channels.values().all(|r| r.request.is_none())
        });
        if !done {
            return;
        }
        let Some(handover) = self.sessions.get_mut(&key).and_then(|s| s.handover.take()) else {
            return;
        };
        let mut frames = Vec::new();
        let mut reached = BTreeMap::new();
        let mut replayed_ids = BTreeSet::new();
        for (channel, replay) in handover.channels {
            reached.insert(channel, replay.frames.last().map_or(replay.after, |(o, _)| *o));
            frames.extend(replay.frames.into_iter().map(|(_, frame)| frame));
            replayed_ids.extend(replay.ids);
        }
        if let Some(session) = self.sessions.get_mut(&key) {
            session.floors = reached.iter().map(|(c, o)| (c.clone(), *o)).collect();
        }
        for (at, frame) in handover.held {
            let replayed = match &at {
                Some((channel, offset)) => {
                    reached.get(channel).is_some_and(|reached| offset <= reached)
                }
                None => {
                    !replayed_ids.is_empty()
                        && frame_id(&frame).is_some_and(|id| replayed_ids.contains(&id))
                }
            };
            if !replayed {
                frames.push(frame);
            }
        }
        let replayed = frames.len() as u64;
        self.answer_resume(now, key, Some(&handover.resume), replayed, true);
        for channel in &handover.invalid {
            let reset =
                ChannelReset { channel: channel.wire(), epoch: None, reason: "resume_gap".into() };
            self.send_system(now, key, SystemMessage::ChannelReset(reset));
            let event = HubEvent::ChannelReset { channel: channel.clone(), reason: "resume_gap" };
            self.outputs.push_back(Output::Event(event));
        }
        for frame in frames {
            self.deliver_to(now, &[key], &frame);
        }
        let Some(session) = self.sessions.get(&key) else { return };
        let connection_id = session.connection_id.clone();
        self.outputs.push_back(Output::Event(HubEvent::Resumed {
            connection_id,
            replayed,
            state_valid: true,
        }));
    }

    /// Plans the replays that waited for their channel's subscription, now that it may be
    /// there; past [`SUBSCRIPTION_WAIT`] the channel is reset for the client instead.
    pub(super) fn plan_waiting_replays(&mut self, now: Instant) {
        for key in std::mem::take(&mut self.waiting_replays) {
            let Some(handover) = self.sessions.get_mut(&key).and_then(|s| s.handover.as_mut())
            else {
                continue;
            };
            let Some((since, record)) = handover.claimed.clone() else { continue };
            let waiting = std::mem::take(&mut handover.waiting);
            let expired = now.saturating_since(since) >= SUBSCRIPTION_WAIT;
            let mut unsubscribed = Vec::new();
            for channel in waiting {
                if self.links.is_subscribed(&channel) {
                    self.plan_replay(now, key, &channel, &record);
                } else {
                    unsubscribed.push(channel);
                }
            }
            let Some(handover) = self.sessions.get_mut(&key).and_then(|s| s.handover.as_mut())
            else {
                continue;
            };
            if expired {
                handover.invalid.extend(unsubscribed);
            } else if !unsubscribed.is_empty() {
                handover.waiting.extend(unsubscribed);
                self.waiting_replays.insert(key);
            }
            self.finish_handover_if_read(now, key);
        }
    }

    /// The session could not be taken over: the client starts over on the new session.
    fn fail_handover(&mut self, now: Instant, key: Key) {
        let Some(handover) = self.sessions.get_mut(&key).and_then(|s| s.handover.take()) else {
            return;
        };
        let held = handover.held;
        self.answer_resume(now, key, Some(&handover.resume), 0, false);
        for (_, frame) in held {
            self.deliver_to(now, &[key], &frame);
        }
        let Some(session) = self.sessions.get(&key) else { return };
        let connection_id = session.connection_id.clone();
        self.outputs.push_back(Output::Event(HubEvent::Resumed {
            connection_id,
            replayed: 0,
            state_valid: false,
        }));
    }

    /// Another instance claimed a session this one holds: its copy here goes (without a word
    /// to the bus: the record is the new owner's now).
    pub(super) fn handle_takeover(&mut self, now: Instant, connection_id: &Id) {
        let Some(&key) = self.by_connection_id.get(connection_id) else { return };
        self.close(now, key, crate::protocol::CloseCode::SESSION_REPLACED, "resumed_elsewhere");
    }

    /// Gives session `key` the connection id `id`; the record of the id it had (written when
    /// it became active) goes, as nobody will resume that one.
    fn rename(&mut self, key: Key, id: Id) {
        let Some(session) = self.sessions.get_mut(&key) else { return };
        let fresh = std::mem::replace(&mut session.connection_id, id.clone());
        self.by_connection_id.remove(&fresh);
        self.by_connection_id.insert(id, key);
        self.links.drop_session(&fresh);
        self.flush_bus_commands();
    }
}

/// Adds what a history read brought to `replay`; `Ok(true)` when more must be read, `Err` when
/// the channel cannot be replayed (another epoch, the range no longer kept, the read failed).
/// The id of the message in `frame` (read only for the rare held frame without a place).
fn frame_id(frame: &SharedFrame) -> Option<Id> {
    let bytes = frame.unsequenced();
    let text = std::str::from_utf8(&bytes).ok()?;
    let fields = crate::protocol::json::object_fields(text).ok()??;
    let (_, raw) = fields.into_iter().find(|(key, _)| *key == "id")?;
    Id::new(&crate::protocol::json::string(raw)?).ok()
}

fn take_history(
    replay: &mut Replay,
    channel: &Channel,
    result: &Result<History, BusError>,
    limit: usize,
    me: &Id,
) -> Result<bool, ()> {
    let history = result.as_ref().map_err(|_| ())?;
    let top = history.top.as_ref().ok_or(())?;
    if top.epoch != replay.epoch || top.offset < replay.from {
        return Err(()); // Another epoch, or the bus lost what the client had (a rollback).
    }
    for (offset, entry) in &history.entries {
        if *offset <= replay.after {
            continue;
        }
        if *offset != replay.after + 1 {
            return Err(()); // Evicted: the range is not whole.
        }
        let Some((_, message)) = RemoteMessage::decode(entry) else { return Err(()) };
        replay.after = *offset;
        if message.lost > 0 {
            return Err(()); // A loss marker: messages are missing there.
        }
        if message.except.as_ref() == Some(me) {
            continue; // Its own message, relayed to the others.
        }
        let position =
            Position { channel: channel.wire(), epoch: top.epoch.clone(), offset: *offset };
        replay.frames.push((*offset, message.frame.with_position(&position)));
        replay.ids.insert(message.id);
    }
    if replay.after < replay.until {
        if history.entries.len() < limit {
            return Err(()); // History ends before where this instance is.
        }
        return Ok(true);
    }
    Ok(false)
}
