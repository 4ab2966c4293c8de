//! The channels between instances (DESIGN.md §3): positions, the bus the hub talks to, and
//! what crosses it.
//!
//! Every message sent to a conversation, a user or everyone goes through that channel and
//! gets a [`Position`](crate::protocol::Position) `(epoch, offset)` in it, assigned by the bus
//! atomically with appending the message to the channel's bounded history and publishing it.
//! Each instance delivers a channel to its local members in offset order, drops duplicates,
//! repairs a gap from the history, and turns what cannot be repaired (a new epoch, history
//! that no longer holds the range, a channel that went backwards) into a **reset**: its members
//! hear `system.channel.reset` and refetch. Pub/sub is lossy; the history and the positions are
//! what make delivery exact.
//!
//! The hub speaks to the bus in [`BusCommand`]s (outputs) and hears [`BusEvent`]s (inputs).
//! With Redis, the adapter carries them out (a function does the atomic publish); without, the
//! hub answers them itself from a [`LocalBus`], which has the same semantics, so clients see one
//! protocol either way. The simulation joins several hubs with one [`LocalBus`].
//!
//! # What crosses the bus
//!
//! A publish carries `{"id":…,"origin":…,"except":…|null,"frame":{…}}`: the message's id (the
//! idempotency key of the publish), the publishing instance, a connection not to deliver to,
//! and the message encoded without position and sequence. The bus stores exactly that as the
//! history entry (at the offset), and publishes it with the position in front:
//! `{"epoch":"…","offset":N,"id":…}`. Keys are named after the channel, with the channel as
//! Redis Cluster hash tag: channel `sb:{conversation:c-1}`, meta `sb:{conversation:c-1}:m`.

mod cursor;
mod link;
mod local;
mod shards;

pub(crate) use link::Delivery;
pub use local::LocalBus;
pub(crate) use shards::Links;
pub use shards::shard_of;

use crate::protocol::json;
use crate::protocol::{Id, SharedFrame};
use bytes::Bytes;
use std::fmt;

/// The 64-bit FNV-1a hash of `bytes`: stable across processes, runs and languages (the shard
/// of a channel is computed from it, by backends too).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Conversation(Id),
    User(String),
    Broadcast,
}

impl Channel {
    /// The channel as positions name it: `conversation:c-1`, `user:alice`, `broadcast`.
    pub fn wire(&self) -> String {
        match self {
            Channel::Conversation(id) => format!("conversation:{id}"),
            Channel::User(id) => format!("user:{id}"),
            Channel::Broadcast => "broadcast".to_owned(),
        }
    }

    /// The channel's name on the bus: `{prefix}{conversation:c-1}` (braces: the Redis Cluster
    /// hash tag, so a channel's keys live on one node).
    pub fn name(&self, prefix: &str) -> String {
        format!("{prefix}{{{}}}", self.wire())
    }

    /// The channel a bus name (after `prefix`) stands for: the inverse of [`Channel::name`].
    pub fn parse(name: &str, prefix: &str) -> Option<Channel> {
        let wire = name.strip_prefix(prefix)?.strip_prefix('{')?.strip_suffix('}')?;
        match wire.strip_prefix("user:") {
            // Whatever user id the credentials gave: the bus name was made from it.
            Some(user) => Some(Channel::User(user.to_owned())),
            None => Channel::from_wire(wire),
        }
    }

    /// The channel a position names.
    pub fn from_wire(wire: &str) -> Option<Channel> {
        if wire == "broadcast" {
            return Some(Channel::Broadcast);
        }
        if let Some(id) = wire.strip_prefix("conversation:") {
            return Id::new(id).ok().map(Channel::Conversation);
        }
        wire.strip_prefix("user:").filter(|u| !u.is_empty()).map(|u| Channel::User(u.to_owned()))
    }
}

/// The top of a channel: its epoch and the offset of its last message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Top {
    pub epoch: String,
    pub offset: u64,
}

impl Top {
    /// Where a channel that has had no message yet is (no epoch, offset 0): a session record's
    /// way of saying that everything on the channel came after it.
    pub fn before_the_first() -> Top {
        Top { epoch: String::new(), offset: 0 }
    }

    /// Whether this is [`Top::before_the_first`].
    pub fn is_before_the_first(&self) -> bool {
        self.epoch.is_empty() && self.offset == 0
    }
}

/// A message between instances (see the module docs for its encoding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMessage {
    /// The message's id: the idempotency key of its publish.
    pub id: Id,
    /// The publishing instance.
    pub origin: Id,
    /// A connection not to deliver to (the sender of a relayed message).
    pub except: Option<Id>,
    /// Not a message but a marker: the origin could not publish this many messages on the
    /// channel (its queue overflowed while the bus was unreachable). Members who reach the
    /// marker's place are told to refetch.
    pub lost: u64,
    /// The message, encoded without position and sequence.
    pub frame: SharedFrame,
}

impl RemoteMessage {
    /// The publish's body; the frame is embedded as is, not re-encoded.
    pub fn encode(&self) -> Bytes {
        let frame = self.frame.unsequenced();
        let mut out = Vec::with_capacity(frame.len() + 128);
        out.extend_from_slice(b"{\"id\":");
        json::write_string(&mut out, self.id.as_str());
        out.extend_from_slice(b",\"origin\":");
        json::write_string(&mut out, self.origin.as_str());
        out.extend_from_slice(b",\"except\":");
        match &self.except {
            Some(id) => json::write_string(&mut out, id.as_str()),
            None => out.extend_from_slice(b"null"),
        }
        if self.lost > 0 {
            out.extend_from_slice(b",\"lost\":");
            json::write_u64(&mut out, self.lost);
        }
        out.extend_from_slice(b",\"frame\":");
        out.extend_from_slice(&frame);
        out.push(b'}');
        Bytes::from(out)
    }

    /// The marker of `lost` messages `origin` could not publish (see [`RemoteMessage::lost`]).
    pub fn loss_marker(id: Id, origin: Id, lost: u64) -> Self {
        let frame = SharedFrame::from_encoded(Bytes::from_static(b"{}")).expect("an object");
        RemoteMessage { id, origin, except: None, lost, frame }
    }

    /// A history entry or a published message, with the position in front when it has one.
    /// `None` for anything malformed (dropped: the bus is trusted, but a bug elsewhere must not
    /// take an instance down).
    pub fn decode(bytes: &[u8]) -> Option<(Option<Top>, RemoteMessage)> {
        let text = std::str::from_utf8(bytes).ok()?;
        let fields = json::object_fields(text).ok()??;
        let get = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
        let id = |key: &str| get(key).and_then(json::string).and_then(|s| Id::new(&s).ok());
        let frame = get("frame").filter(|f| f.starts_with('{'))?;
        let top = match (get("epoch").and_then(json::string), get("offset")) {
            (Some(epoch), Some(offset)) => {
                Some(Top { epoch: epoch.into_owned(), offset: json::unsigned(offset)? })
            }
            _ => None,
        };
        let message = RemoteMessage {
            id: id("id")?,
            origin: id("origin")?,
            except: id("except"),
            lost: match get("lost") {
                Some(raw) => json::unsigned(raw)?,
                None => 0,
            },
            frame: SharedFrame::from_encoded(Bytes::copy_from_slice(frame.as_bytes()))?,
        };
        Some((top, message))
    }
}

/// A session as the bus keeps it while it may be resumed (resume anywhere, DESIGN.md §3):
/// written when it becomes active and when it loses its socket, never per message. An instance
/// that did not hold the session claims it, which makes it the owner and tells the previous
/// owner (on that instance's channel) to let its copy go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub user_id: String,
    pub conversation_id: Option<Id>,
    pub definition_id: Option<String>,
    /// The member may write into its conversation.
    pub can_write: bool,
    /// The instance holding the session.
    pub owner: Id,
    /// Counts claims: the owner of the highest generation holds the session.
    pub generation: u64,
    /// Where the session started in each of its channels (its replay starts there when the
    /// client has no later position).
    pub joined: Vec<crate::protocol::Position>,
}

/// Why a bus command failed (the bus is down, timed out, refused the command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusError(pub String);

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a channel's history holds after an offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The channel's top when read; `None`: the channel has no history at all.
    pub top: Option<Top>,
    /// Entries after the offset asked for, in order, as `(offset, entry)`; the first is later
    /// than asked for when the ones between were evicted.
    pub entries: Vec<(u64, Bytes)>,
}

/// What the hub asks of the bus (carried out by the adapter, or by the hub's own
/// [`LocalBus`]). Channels are bus names (`{prefix}{conversation:c-1}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusCommand {
    /// Atomically: unless `key` was published on `channel` before (then answer as then), give
    /// the message the channel's next offset (starting an epoch if the channel has none), append
    /// it to the history and publish it with its position. Answer [`BusEvent::Published`].
    ///
    /// `after` is the key of this instance's previous publish on the channel that had no answer
    /// when this one was sent: unless that one was placed, refuse (an error, nothing done).
    /// One instance's messages then keep their order on the channel however their publishes
    /// fail and are retried (a later one may otherwise land while an earlier one waits for its
    /// retry). It is boxed: commands travel in the hub's outputs, which a broadcast queues by
    /// the thousand, and it is there only while another publish waits.
    Publish { channel: String, key: Id, message: Bytes, after: Option<Box<Id>> },
    /// Read each channel's top, then subscribe to them all. Answer [`BusEvent::Subscribed`]
    /// with the tops in the order of `channels`.
    Subscribe { batch: u64, channels: Vec<String> },
    /// Stop receiving these channels.
    Unsubscribe { channels: Vec<String> },
    /// Read up to `limit` history entries of `channel` after offset `after`, and its top.
    /// Answer [`BusEvent::History`].
    Read { request: u64, channel: String, after: u64, limit: usize },
    /// Publish `token` (plainly, no history) on `channel`, which this instance subscribed to:
    /// if it does not come back, the subscription is deaf.
    Probe { channel: String, token: u64 },
    /// The subscriber connection looks deaf: replace it (the subscriptions follow).
    RenewSubscriber,
    /// Store `record` under `session` (a key name, `{prefix}{session:<connection id>}`) for
    /// `ttl_ms`.
    SaveSession { session: String, record: Box<SessionRecord>, ttl_ms: u64 },
    /// Atomically: read the record of `session`; if there is one, make `claimant` its owner,
    /// count the generation up, tell the previous owner on its instance channel (`{prefix}
    /// {instance:<id>}`, message `{"takeover":"<connection id>","generation":N}`), and answer
    /// [`BusEvent::Claimed`] with the updated record (`None`: no such session).
    ClaimSession { request: u64, session: String, claimant: Id },
    /// The session ended for good: forget its record.
    DropSession { session: String },
}

/// What the bus tells the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// The answer to [`BusCommand::Publish`]: the message's position, or why not.
    Published { key: Id, result: Result<Top, BusError> },
    /// The answer to [`BusCommand::Subscribe`].
    Subscribed { batch: u64, result: Result<Vec<Option<Top>>, BusError> },
    /// A message on a subscribed channel.
    Message { channel: String, message: Bytes },
    /// The answer to [`BusCommand::Read`].
    History { request: u64, result: Result<History, BusError> },
    /// The answer to [`BusCommand::ClaimSession`].
    Claimed { request: u64, result: Result<Option<SessionRecord>, BusError> },
    /// The link to the bus went down: messages may be lost until it is back.
    LinkDown,
    /// The link is (back) up.
    LinkUp,
    /// The receive queue overflowed: messages were dropped on the way in.
    Lagged,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_round_trip() {
        for channel in [
            Channel::Conversation(Id::new("c-1").unwrap()),
            Channel::User("u:42".to_owned()),
            Channel::User("a}b{c".to_owned()),
            Channel::Broadcast,
        ] {
            assert_eq!(Channel::parse(&channel.name("sb:"), "sb:"), Some(channel.clone()));
            assert_eq!(Channel::from_wire(&channel.wire()), Some(channel.clone()));
        }
        assert_eq!(Channel::Broadcast.name("sb:"), "sb:{broadcast}");
        assert_eq!(Channel::parse("other:{broadcast}", "sb:"), None);
        assert_eq!(Channel::parse("sb:{conversation:}", "sb:"), None);
        let nobody = Channel::User(String::new());
        assert_eq!(Channel::parse(&nobody.name("sb:"), "sb:"), Some(nobody));
    }

    #[test]
    fn remote_messages_round_trip_with_and_without_a_position() {
        let message = RemoteMessage {
            id: Id::new("m-1").unwrap(),
            origin: Id::new("instance-\"1\"").unwrap(),
            except: Some(Id::new("c").unwrap()),
            lost: 0,
            frame: SharedFrame::from_encoded(Bytes::from_static(br#"{"a":[1,2]}"#)).unwrap(),
        };
        let marker = RemoteMessage::loss_marker(Id::new("l").unwrap(), Id::new("o").unwrap(), 3);
        assert_eq!(RemoteMessage::decode(&marker.encode()), Some((None, marker)));
        let encoded = message.encode();
        assert_eq!(RemoteMessage::decode(&encoded), Some((None, message.clone())));
        let published = [br#"{"epoch":"e1","offset":7,"#.as_slice(), &encoded[1..]].concat();
        let top = Top { epoch: "e1".into(), offset: 7 };
        assert_eq!(RemoteMessage::decode(&published), Some((Some(top), message)));
        assert_eq!(RemoteMessage::decode(b"{\"id\":\"m\",\"origin\":\"x\",\"frame\":[1]}"), None);
        assert_eq!(RemoteMessage::decode(b"garbage"), None);
    }
}
