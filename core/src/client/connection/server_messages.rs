//! What the server says: `established`, `resumed`, pings, errors and application messages.

use crate::client::io::{ClientEvent, ClientOutput, Received, SendError, ServerFrame};
use crate::client::state::ClientState;
use crate::protocol::{ConnectionResume, Heartbeat, Id, SystemMessage};
use crate::time::Instant;
use std::collections::VecDeque;
use std::time::Duration;

use super::Client;

#[derive(Debug)]
pub(super) struct PendingResume {
    /// The session the server opened for this socket, kept if the resume is refused.
    pub(super) fresh: Id,
    /// Application messages of that session that arrived meanwhile.
    pub(super) held: VecDeque<Received>,
    pub(super) overflowed: bool,
}

impl Client {
    pub(super) fn handle_server(&mut self, now: Instant, frame: ServerFrame) {
        match frame {
            ServerFrame::Application(message) => self.handle_application(now, *message),
            ServerFrame::Ping { id } => {
                let pong = SystemMessage::Pong(Heartbeat { timestamp: self.wall.timestamp(now) });
                let _ = self.send_system(now, pong, Some(id));
            }
            ServerFrame::Established { connection_id, heartbeat_interval_ms } => {
                // One session per socket: a second `established` would restart the resume.
                match &mut self.socket {
                    Some(socket) if !socket.established => socket.established = true,
                    _ => return,
                }
                if let Some(ms) = heartbeat_interval_ms.filter(|ms| *ms > 0) {
                    self.heartbeat_interval = Duration::from_millis(ms);
                }
                match self.connection_id.clone().filter(|_| self.config.resume) {
                    Some(previous) => {
                        self.pending_resume = Some(PendingResume {
                            fresh: connection_id,
                            held: VecDeque::new(),
                            overflowed: false,
                        });
                        let resume = ConnectionResume {
                            conversation_id: self
                                .config
                                .conversation_id
                                .clone()
                                .unwrap_or_default(),
                            last_message_id: self
                                .last_message_id
                                .as_ref()
                                .map(|id| id.as_str().to_owned()),
                            last_item_index: None,
                            client_state: Default::default(),
                            connection_id: Some(previous),
                            last_sequence: Some(self.last_sequence),
                            positions: self.positions.clone(),
                        };
                        let _ =
                            self.send_system(now, SystemMessage::ConnectionResume(resume), None);
                    }
                    None => {
                        self.adopt_session(now, connection_id.clone());
                        self.become_active(now, connection_id, false, 0);
                    }
                }
            }
            ServerFrame::Resumed { connection_id, missed_messages, state_valid } => {
                let Some(pending) = self.pending_resume.take() else {
                    // A refused flow resume: what was held is gone, and sequences jump.
                    if !state_valid {
                        self.expect_jump = true;
                        self.emit(ClientEvent::Gap {
                            reason: "held_messages_evicted",
                            channel: None,
                        });
                    }
                    return;
                };
                if state_valid {
                    let id = connection_id.or(self.connection_id.clone()).unwrap_or(pending.fresh);
                    self.connection_id = Some(id.clone());
                    self.become_active(now, id, true, missed_messages);
                } else {
                    self.emit(ClientEvent::Gap { reason: "resume_refused", channel: None });
                    self.adopt_session(now, pending.fresh.clone());
                    self.become_active(now, pending.fresh, false, 0);
                    for message in pending.held {
                        self.handle_application(now, message);
                    }
                    if pending.overflowed {
                        self.emit(ClientEvent::Gap {
                            reason: "held_messages_overflowed",
                            channel: None,
                        });
                        self.expect_jump = true;
                    }
                }
            }
            ServerFrame::Closing { reason, retry_after_ms } => {
                self.retry_hint = retry_after_ms.map(Duration::from_millis);
                self.server_close = Some(reason);
            }
            ServerFrame::Error(error) => self.emit(ClientEvent::ServerError(error)),
            ServerFrame::Pong { correlation_id } => {
                if let Some((id, sent)) = self.ping_out.take() {
                    if correlation_id.as_ref() == Some(&id) {
                        self.round_trip = Some(now.saturating_since(sent));
                    } else {
                        self.ping_out = Some((id, sent));
                    }
                }
            }
            // The position is kept: it is still the last message the client has. A resume
            // elsewhere replays what came after it, or (another epoch, history gone) resets
            // the channel again; without it, the replay would start where the session joined
            // and bring again everything the client had.
            ServerFrame::ChannelReset { channel } => {
                self.emit(ClientEvent::Gap { reason: "channel_reset", channel: Some(channel) })
            }
            ServerFrame::Other => {}
        }
    }

    pub(super) fn handle_application(&mut self, now: Instant, message: Received) {
        if let Some(pending) = &mut self.pending_resume {
            if pending.held.len() < self.config.held_max_messages {
                pending.held.push_back(message);
            } else {
                pending.overflowed = true;
            }
            return;
        }
        if let Some(sequence) = message.sequence {
            if sequence <= self.last_sequence {
                tracing::debug!(target: "protocol:client", sequence, "dropping a message already received");
                return;
            }
            if sequence != self.last_sequence + 1 && !std::mem::take(&mut self.expect_jump) {
                self.emit(ClientEvent::Gap { reason: "sequence_jump", channel: None });
            }
            self.expect_jump = false;
            self.last_sequence = sequence;
            self.last_message_id = Some(message.id.clone());
            if let Some(position) = &message.position {
                self.remember(position);
            }
            self.persist(now);
        }
        if self.recent_ids.contains(&message.id) {
            tracing::debug!(target: "protocol:client", id = %message.id, "dropping a message delivered before");
            return;
        }
        if self.recent_ids.len() == super::RECENT_IDS {
            self.recent_ids.pop_front();
        }
        self.recent_ids.push_back(message.id.clone());
        let subscribers = self.bus.publish(message.message_type.as_str());
        tracing::trace!(target: "protocol:bus", message_type = %message.message_type, subscribers = subscribers.len(), "delivering");
        self.emit(ClientEvent::Message { message, subscribers });
    }

    pub(super) fn adopt_session(&mut self, now: Instant, id: Id) {
        self.connection_id = Some(id);
        self.last_sequence = 0;
        self.last_message_id = None;
        self.expect_jump = false;
        self.persist(now);
    }

    pub(super) fn become_active(
        &mut self,
        now: Instant,
        connection_id: Id,
        resumed: bool,
        replayed: u64,
    ) {
        self.backoff.stop();
        self.backoff.reset();
        self.refreshed_after_expiry = false;
        self.retry_hint = None;
        self.server_close = None;
        self.resumed = resumed;
        self.set_state(
            now,
            ClientState::Active,
            if resumed { "resumed" } else { "established" },
            None,
            true,
        );
        self.emit(ClientEvent::Connected { connection_id, resumed, replayed });
        // Queued messages go out in order, after the resume's replay.
        while let Some(queued) = self.queue.pop_front() {
            self.queue_bytes -= queued.frame.len();
            if queued.expires_at <= now {
                self.emit(ClientEvent::SendFailed { id: queued.id, error: SendError::Expired });
                continue;
            }
            if let Some(socket) = &self.socket {
                self.outputs.push_back(ClientOutput::SendFrame {
                    attempt: socket.attempt,
                    frame: queued.frame,
                });
            }
        }
        // The round trip is measured at once, then every `ping_interval`.
        if self.config.ping_interval.is_some() {
            self.ping(now);
        }
    }
}
