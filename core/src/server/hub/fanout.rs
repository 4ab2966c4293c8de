//! Fan-out: the application's sends, encoded once and given each recipient's sequence, kept
//! for replay, and written as far as each socket's outbound window allows.

use super::Hub;
use super::session::{Key, Session, hand_message, hand_system, window_has_room};
use crate::protocol::ChannelReset;
use crate::protocol::{CloseCode, Id, SharedFrame, SystemMessage};
use crate::server::bus::{Channel, Delivery, RemoteMessage};
use crate::server::config::HubConfig;
use crate::server::io::{HubEvent, Output, RefusedSend};
use crate::server::router::{Outgoing, Target};
use crate::server::state::ConnectionState;
use crate::time::Instant;
use bytes::Bytes;
use std::collections::VecDeque;

/// What writing a session's backlog came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pump {
    /// Everything that fits the window was written (or the session has no active socket).
    Done,
    /// Half the replay buffer waits to be written: the client is not reading. Cut off now,
    /// everything it was not sent is still kept, and the other half of the buffer is the room
    /// for what arrives while it comes back.
    Stuck,
    /// A message was evicted from the replay buffer before it could be written (cannot happen
    /// while the limits pass [`HubConfig::validate`]; kept as a guard).
    FellBehind,
}

/// Hands `session`'s unsent application messages to its socket, in order, as far as the
/// socket's window allows; the rest wait in the replay buffer for
/// [`crate::server::Input::Flushed`].
fn pump_session(
    config: &HubConfig,
    key: Key,
    session: &mut Session,
    transmit: &mut VecDeque<Key>,
) -> Pump {
    if session.state() != ConnectionState::Active || session.socket.is_none() {
        return Pump::Done;
    }
    while session.sent_through + 1 < session.next_sequence {
        let sequence = session.sent_through + 1;
        let Some(frame) = session.replay.get(sequence) else { return Pump::FellBehind };
        let len = frame.len_with_sequence(sequence);
        if !window_has_room(config, session, len) {
            break;
        }
        hand_message(session, key, sequence, len, transmit);
    }
    Pump::Done
}

/// Whether the session's unwritten messages take more than half the replay buffer.
fn is_stuck(config: &HubConfig, session: &Session) -> bool {
    session.socket.is_some()
        && session.state() == ConnectionState::Active
        && (session.unacked() > (config.replay_max_messages / 2) as u64
            || session.unacked_bytes > config.replay_max_bytes / 2)
}

impl Hub {
    /// Sends to wherever `target` says; returns the number of local sessions it is for (other
    /// instances get it through one publish). A message to a channel (a conversation, a user,
    /// everyone) reaches local members once the bus has given it its position in the channel:
    /// at once without a shared bus, after the bus answered with one.
    ///
    /// Refused, with nothing sent: `system.*` types (the connection layer's own; clients do not
    /// count them in the sequence, and a backend must not forge a close or a resume), and
    /// messages whose encoding is larger than `max_message_bytes` (they would not fit a
    /// socket's window or the replay buffer).
    pub fn send(
        &mut self,
        now: Instant,
        target: Target,
        outgoing: Outgoing,
    ) -> Result<usize, RefusedSend> {
        if outgoing.message_type.is_system() {
            return Err(RefusedSend::SystemType(outgoing.message_type.to_string()));
        }
        let mut envelope = self
            .envelope(now, outgoing.message_type, outgoing.payload)
            .in_conversation(outgoing.conversation_id);
        envelope.correlation_id = outgoing.correlation_id;
        envelope.sender_id = outgoing.sender_id;
        let frame = SharedFrame::encode(&envelope);
        if frame.len() > self.config.max_message_bytes {
            let limit = self.config.max_message_bytes;
            return Err(RefusedSend::TooLarge { len: frame.len(), limit });
        }
        let (channel, except) = match channel_of(&target) {
            Some((channel, except)) => (channel, except.cloned()),
            None => {
                let recipients = self.local_recipients_of(&target);
                return Ok(self.deliver_to(now, &recipients, &frame));
            }
        };
        let recipients = self.recipients(&channel, except.as_ref()).len();
        let message = RemoteMessage {
            id: envelope.id,
            origin: self.instance_id.clone(),
            except,
            lost: 0,
            frame,
        };
        self.links.publish(now, channel, message);
        self.drain_link(now);
        Ok(recipients)
    }

    /// How many of this hub's sessions a message to `target` reaches: what [`Hub::send`] counts
    /// (a server with several hubs sends through one and asks the others this).
    pub fn local_recipients(&self, target: &Target) -> usize {
        self.local_recipients_of(target).len()
    }

    /// This hub's sessions a message to `target` is for.
    fn local_recipients_of(&self, target: &Target) -> Vec<Key> {
        match (target, channel_of(target)) {
            (Target::Connection(id), _) => {
                self.by_connection_id.get(id).copied().into_iter().collect()
            }
            (_, channel) => channel
                .map(|(channel, except)| self.recipients(&channel, except))
                .unwrap_or_default(),
        }
    }

    /// The local sessions a message on `channel` is for.
    fn recipients(&self, channel: &Channel, except: Option<&Id>) -> Vec<Key> {
        match channel {
            Channel::Conversation(id) => self.members_of(id, except),
            Channel::User(user) => {
                let mut keys = Vec::new();
                if let Some(members) = self.by_user.get(user) {
                    members.append_to(&mut keys);
                }
                keys
            }
            Channel::Broadcast => self.all_members(),
        }
    }

    /// The bus links' commands go out now (not at the next round of deliveries).
    pub(super) fn flush_bus_commands(&mut self) {
        while let Some((shard, command)) = self.links.poll_command() {
            self.outputs.push_back(Output::Bus(shard, command));
        }
    }

    /// Carries out what the bus link decided: its commands go out, its deliveries to the
    /// channels' local members.
    pub(super) fn drain_link(&mut self, now: Instant) {
        self.flush_bus_commands();
        if !self.unplaced.is_empty() {
            self.establish_placed(now);
        }
        while let Some(delivery) = self.links.poll_delivery() {
            match delivery {
                Delivery::Message { channel, frame, except, offset } => {
                    let recipients = self.recipients(&channel, except.as_ref());
                    let at = offset.map(|offset| (channel, offset));
                    self.deliver_at(now, &recipients, &frame, at);
                }
                Delivery::Claimed { request, result } => self.handle_claimed(now, request, result),
                Delivery::SessionHistory { request, result } => {
                    self.handle_session_history(now, request, result)
                }
                Delivery::Takeover { connection_id } => self.handle_takeover(now, &connection_id),
                Delivery::Reset { channel, epoch, reason } => {
                    let reset =
                        ChannelReset { channel: channel.wire(), epoch, reason: reason.to_owned() };
                    for key in self.recipients(&channel, None) {
                        // Offsets start again: a floor of the old epoch means nothing now.
                        if let Some(session) = self.sessions.get_mut(&key) {
                            session.floors.retain(|(c, _)| *c != channel);
                        }
                        self.send_system(now, key, SystemMessage::ChannelReset(reset.clone()));
                    }
                    self.outputs
                        .push_back(Output::Event(HubEvent::ChannelReset { channel, reason }));
                }
            }
        }
        if !self.waiting_replays.is_empty() {
            self.plan_waiting_replays(now);
            self.flush_bus_commands();
        }
        let confirmed = self.links.confirmed_batches();
        if !self.unrecorded.is_empty() && confirmed != self.unrecorded_checked_at {
            self.unrecorded_checked_at = confirmed;
            self.record_again();
        }
    }

    /// Sends to one connection of this instance.
    pub fn send_to_connection(
        &mut self,
        now: Instant,
        connection_id: &Id,
        outgoing: Outgoing,
    ) -> Result<usize, RefusedSend> {
        self.send(now, Target::Connection(connection_id.clone()), outgoing)
    }

    /// Sends to every session of a user, here and on other instances.
    pub fn send_to_user(
        &mut self,
        now: Instant,
        user_id: &str,
        outgoing: Outgoing,
    ) -> Result<usize, RefusedSend> {
        self.send(now, Target::User(user_id.to_owned()), outgoing)
    }

    /// Sends to every session in a conversation, here and elsewhere, except `except`.
    pub fn broadcast_to_conversation(
        &mut self,
        now: Instant,
        conversation_id: &Id,
        outgoing: Outgoing,
        except: Option<&Id>,
    ) -> Result<usize, RefusedSend> {
        let target = Target::Conversation {
            conversation_id: conversation_id.clone(),
            except: except.cloned(),
        };
        self.send(now, target, outgoing)
    }

    /// Sends to every session everywhere.
    pub fn broadcast_all(
        &mut self,
        now: Instant,
        outgoing: Outgoing,
    ) -> Result<usize, RefusedSend> {
        self.send(now, Target::All, outgoing)
    }

    /// Gives an application message its sequence in each recipient session, keeps it for
    /// replay, and writes it to the sockets of those that are active. Returns how many
    /// sessions got it. One session lookup per recipient: this is fan-out's inner loop.
    pub(super) fn deliver_to(
        &mut self,
        now: Instant,
        recipients: &[Key],
        frame: &SharedFrame,
    ) -> usize {
        self.deliver_at(now, recipients, frame, None)
    }

    /// [`Hub::deliver_to`] for a message at `at` (its channel and offset), which a session
    /// being handed over holds until its replay is done (see `handover`).
    pub(super) fn deliver_at(
        &mut self,
        now: Instant,
        recipients: &[Key],
        frame: &SharedFrame,
        at: Option<(Channel, u64)>,
    ) -> usize {
        let mut delivered = 0;
        for &key in recipients {
            let Some(session) = self.sessions.get_mut(&key) else { continue };
            if !session.is_member() {
                continue;
            }
            if let Some(handover) = &mut session.handover {
                handover.hold(at.clone(), frame.clone());
                delivered += 1;
                continue;
            }
            if let (Some((channel, offset)), false) = (&at, session.floors.is_empty()) {
                if let Some(i) = session.floors.iter().position(|(c, _)| c == channel) {
                    if *offset <= session.floors[i].1 {
                        continue; // The client has it (a resume brought it, or it was ahead).
                    }
                    session.floors.swap_remove(i);
                }
            }
            let sequence = session.next_sequence;
            session.next_sequence += 1;
            session.replay.push(
                sequence,
                frame.clone(),
                self.config.replay_max_messages,
                self.config.replay_max_bytes,
            );
            session.unacked_bytes += frame.len();
            delivered += 1;
            let outcome = if is_stuck(&self.config, session) {
                Pump::Stuck
            } else {
                pump_session(&self.config, key, session, &mut self.transmit)
            };
            self.after_pump(now, key, outcome);
        }
        delivered
    }

    /// Writes the session's unsent application messages, in order, as far as its socket's
    /// window allows; the rest wait in the replay buffer for [`crate::server::Input::Flushed`].
    pub(super) fn pump(&mut self, now: Instant, key: Key) {
        let Some(session) = self.sessions.get_mut(&key) else { return };
        let outcome = pump_session(&self.config, key, session, &mut self.transmit);
        self.after_pump(now, key, outcome);
    }

    /// Cuts off (4013) a session that [`pump_session`] found too far behind.
    fn after_pump(&mut self, now: Instant, key: Key, outcome: Pump) {
        let reason = match outcome {
            Pump::Done => return,
            Pump::Stuck => "slow_consumer",
            Pump::FellBehind => "fell_behind",
        };
        let Some(session) = self.sessions.get(&key) else { return };
        let connection_id = session.connection_id.clone();
        self.outputs.push_back(Output::Event(HubEvent::SlowConsumer { connection_id }));
        self.close(now, key, CloseCode::SLOW_CONSUMER, reason);
    }

    /// Sends one of switchboard's own messages. These are about the socket, not the
    /// conversation: they carry no sequence and are not kept for replay.
    pub(super) fn send_system(&mut self, now: Instant, key: Key, message: SystemMessage) {
        self.send_system_reply(now, key, message, None);
    }

    pub(super) fn send_system_reply(
        &mut self,
        now: Instant,
        key: Key,
        message: SystemMessage,
        correlation: Option<Id>,
    ) {
        let Some(session) = self.sessions.get(&key) else { return };
        if session.socket.is_none() {
            return;
        }
        let conversation = session.conversation_id.clone();
        let mut envelope = self
            .envelope(now, message.message_type(), message.to_payload())
            .in_conversation(conversation);
        envelope.correlation_id = correlation;
        self.write(now, key, Bytes::from(envelope.encode()));
    }

    /// Writes a frame to the session's socket, within the outbound bounds. A socket that would
    /// go over them is cut off with 4013 (its session stays resumable). Returns whether the
    /// frame was written.
    pub(super) fn write(&mut self, now: Instant, key: Key, frame: Bytes) -> bool {
        let Some(session) = self.sessions.get_mut(&key) else { return false };
        if session.socket.is_none() {
            return false;
        }
        if !window_has_room(&self.config, session, frame.len()) {
            let connection_id = session.connection_id.clone();
            self.outputs.push_back(Output::Event(HubEvent::SlowConsumer { connection_id }));
            self.close(now, key, CloseCode::SLOW_CONSUMER, "slow_consumer");
            return false;
        }
        hand_system(session, key, frame, &mut self.transmit);
        true
    }

    pub(super) fn members_of(&self, conversation_id: &Id, except: Option<&Id>) -> Vec<Key> {
        let Some(members) = self.by_conversation.get(conversation_id) else { return Vec::new() };
        let mut keys = Vec::new();
        members.append_to(&mut keys);
        // The one connection skipped (the sender of a relayed message) is found once, not
        // compared with every member's id.
        if let Some(skipped) = except.and_then(|e| self.by_connection_id.get(e)) {
            keys.retain(|k| k != skipped);
        }
        keys
    }

    pub(super) fn all_members(&self) -> Vec<Key> {
        self.sessions.iter().filter(|(_, s)| s.is_member()).map(|(k, _)| *k).collect()
    }

    /// A local member needs `channel` (its first one arrived).
    pub(super) fn subscribe(&mut self, now: Instant, channel: Channel) {
        self.links.want(now, channel);
        self.drain_link(now);
    }

    /// The last local member of `channel` left.
    pub(super) fn unsubscribe(&mut self, now: Instant, channel: Channel) {
        self.links.release(now, &channel);
    }
}

/// The channel a message to `target` goes through, and the connection it skips; `None` for a
/// message to one connection, which goes through no channel.
fn channel_of(target: &Target) -> Option<(Channel, Option<&Id>)> {
    match target {
        Target::Connection(_) => None,
        Target::User(user) => Some((Channel::User(user.clone()), None)),
        Target::Conversation { conversation_id, except } => {
            Some((Channel::Conversation(conversation_id.clone()), except.as_ref()))
        }
        Target::All => Some((Channel::Broadcast, None)),
    }
}
