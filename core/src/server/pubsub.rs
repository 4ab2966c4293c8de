//! How hubs on several instances share messages: channel names and the message format.
//!
//! Each instance subscribes to `conversation:{id}` for conversations it has local members of,
//! `user:{id}` for its local users, and `broadcast`. A message is published once per send,
//! carrying the sending instance's id so that it can drop its own echo, and the message's
//! encoding without sequence, so each receiving instance splices in its own sessions' sequences.

use crate::protocol::{Id, SharedFrame};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// A pub/sub channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Conversation(Id),
    User(String),
    Broadcast,
}

impl Channel {
    /// The channel's name on the bus, after `prefix`.
    pub fn name(&self, prefix: &str) -> String {
        match self {
            Channel::Conversation(id) => format!("{prefix}conversation:{id}"),
            Channel::User(id) => format!("{prefix}user:{id}"),
            Channel::Broadcast => format!("{prefix}broadcast"),
        }
    }

    /// The channel a name (after `prefix`) stands for.
    pub fn parse(name: &str, prefix: &str) -> Option<Channel> {
        let name = name.strip_prefix(prefix)?;
        if name == "broadcast" {
            return Some(Channel::Broadcast);
        }
        if let Some(id) = name.strip_prefix("conversation:") {
            return Id::new(id).ok().map(Channel::Conversation);
        }
        name.strip_prefix("user:").filter(|u| !u.is_empty()).map(|u| Channel::User(u.to_owned()))
    }
}

/// A message between instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMessage {
    /// The publishing instance.
    pub origin: Id,
    /// A connection not to deliver to (the sender of a relayed message).
    pub except: Option<Id>,
    /// The message, encoded without sequence.
    pub frame: SharedFrame,
}

#[derive(Deserialize)]
struct WireRemote<'a> {
    #[serde(borrow)]
    origin: Cow<'a, str>,
    #[serde(default, borrow)]
    except: Option<Cow<'a, str>>,
    #[serde(borrow)]
    frame: &'a RawValue,
}

impl RemoteMessage {
    /// `{"origin":"…","except":"…"|null,"frame":{…}}`: the frame is embedded as is, not
    /// re-encoded.
    pub fn encode(&self) -> Bytes {
        let frame = self.frame.unsequenced();
        let mut out = BytesMut::with_capacity(frame.len() + 96);
        out.put_slice(b"{\"origin\":");
        out.put_slice(&json_string(self.origin.as_str()));
        out.put_slice(b",\"except\":");
        match &self.except {
            Some(id) => out.put_slice(&json_string(id.as_str())),
            None => out.put_slice(b"null"),
        }
        out.put_slice(b",\"frame\":");
        out.put_slice(&frame);
        out.put_u8(b'}');
        out.freeze()
    }

    /// Parses a message from the bus; `None` for anything malformed (which is dropped: the bus
    /// is trusted, but a bug elsewhere must not take an instance down).
    pub fn decode(bytes: &[u8]) -> Option<RemoteMessage> {
        let wire: WireRemote<'_> = serde_json::from_slice(bytes).ok()?;
        let frame = wire.frame.get();
        if !frame.starts_with('{') {
            return None;
        }
        Some(RemoteMessage {
            origin: Id::new(&wire.origin).ok()?,
            except: wire.except.and_then(|e| Id::new(&e).ok()),
            frame: SharedFrame::from_encoded(Bytes::copy_from_slice(frame.as_bytes()))?,
        })
    }
}

fn json_string(s: &str) -> Vec<u8> {
    serde_json::to_vec(s).unwrap_or_else(|_| b"\"\"".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_round_trip() {
        for channel in [
            Channel::Conversation(Id::new("c-1").unwrap()),
            Channel::User("u:42".to_owned()),
            Channel::Broadcast,
        ] {
            assert_eq!(Channel::parse(&channel.name("sb:"), "sb:"), Some(channel.clone()));
        }
        assert_eq!(Channel::parse("other:broadcast", "sb:"), None);
        assert_eq!(Channel::parse("sb:conversation:", "sb:"), None);
    }

    #[test]
    fn remote_messages_round_trip() {
        let message = RemoteMessage {
            origin: Id::new("instance-\"1\"").unwrap(),
            except: Some(Id::new("c").unwrap()),
            frame: SharedFrame::from_encoded(Bytes::from_static(br#"{"a":[1,2]}"#)).unwrap(),
        };
        assert_eq!(RemoteMessage::decode(&message.encode()), Some(message));
        assert_eq!(RemoteMessage::decode(b"{\"origin\":\"x\",\"frame\":[1]}"), None);
        assert_eq!(RemoteMessage::decode(b"garbage"), None);
    }
}
