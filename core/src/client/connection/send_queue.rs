//! Sending: at once when active, else into a queue bounded by count, bytes and time.

use crate::client::io::{ClientEvent, ClientOutput, OutgoingMessage, SendError};
use crate::client::state::ClientState;
use crate::protocol::{Envelope, Id};
use crate::time::Instant;
use bytes::Bytes;

use super::Client;

#[derive(Debug)]
pub(super) struct Queued {
    pub(super) id: Id,
    pub(super) frame: Bytes,
    pub(super) expires_at: Instant,
}

impl Client {
    /// Sends a message now if active, or queues it; returns its id. Refused when the client
    /// was closed by [`crate::client::ClientInput::Disconnect`] or the queue is full; nothing is dropped
    /// silently (a queued message that expires comes back as [`ClientEvent::SendFailed`]).
    pub fn send(&mut self, now: Instant, message: OutgoingMessage) -> Result<Id, SendError> {
        let conversation = message
            .conversation_id
            .or_else(|| self.config.conversation_id.as_deref().and_then(|c| Id::new(c).ok()));
        let mut envelope =
            self.envelope(now, message.message_type, message.payload).in_conversation(conversation);
        envelope.correlation_id = message.correlation_id;
        let id = envelope.id.clone();
        let result = self.send_envelope(now, envelope);
        if let Err(error) = &result {
            self.emit(ClientEvent::SendFailed { id: id.clone(), error: error.clone() });
        }
        result.map(|()| id)
    }

    fn send_envelope(&mut self, now: Instant, envelope: Envelope) -> Result<(), SendError> {
        if self.stopped_by_user {
            return Err(SendError::Closed);
        }
        let frame = Bytes::from(envelope.encode());
        if self.state == ClientState::Active {
            if let Some(socket) = &self.socket {
                self.outputs.push_back(ClientOutput::SendFrame { attempt: socket.attempt, frame });
                return Ok(());
            }
        }
        if self.queue.len() >= self.config.queue_max_messages {
            return Err(SendError::QueueFull("messages"));
        }
        if self.queue_bytes + frame.len() > self.config.queue_max_bytes {
            return Err(SendError::QueueFull("bytes"));
        }
        self.queue_bytes += frame.len();
        self.queue.push_back(Queued {
            id: envelope.id,
            frame,
            expires_at: now + self.config.queue_ttl,
        });
        Ok(())
    }
}
