//! Where a message sits in its channel (ours, DESIGN.md §3).
//!
//! Every message sent through a channel (`conversation:{id}`, `user:{id}`, `broadcast`) gets a
//! position `(epoch, offset)` in it: offsets count from 1 without holes within an epoch, and a
//! new epoch means that what came before is gone (the history was lost or could not be
//! trusted). Instances deliver a channel in offset order and repair gaps from history; a
//! client keeps the last position it got per channel and resumes from it, on any instance.
//!
//! On the wire: `"position":{"channel":"conversation:c-1","epoch":"lq2x7k","offset":42}`,
//! just before `sequence`, encoded once with the message (it is the same for every recipient).

use super::json::{self, ObjectWriter};
use serde::{Deserialize, Serialize};

/// A message's place in its channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// The channel, without any bus prefix: `conversation:c-1`, `user:alice`, `broadcast`.
    pub channel: String,
    /// The channel's epoch: offsets of different epochs are not comparable.
    pub epoch: String,
    /// From 1, without holes within the epoch.
    pub offset: u64,
}

impl Position {
    /// Reads `{"channel":…,"epoch":…,"offset":…}` (other fields ignored); `None` if it is not
    /// such an object.
    pub fn read(raw: &str) -> Option<Position> {
        let fields = json::object_fields(raw).ok()??;
        let get = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
        let string = |key: &str| get(key).and_then(json::string).map(|s| s.into_owned());
        let channel = string("channel").filter(|c| !c.is_empty())?;
        let epoch = string("epoch").filter(|e| !e.is_empty())?;
        let offset = get("offset").and_then(json::unsigned)?;
        Some(Position { channel, epoch, offset })
    }

    /// The JSON object.
    pub fn to_json(&self) -> String {
        let mut out = ObjectWriter::default();
        out.str("channel", &self.channel).str("epoch", &self.epoch).u64("offset", self.offset);
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_agree_with_serde() {
        let position = Position {
            channel: "conversation:c-\"1\"".to_owned(),
            epoch: "lq2x7k".to_owned(),
            offset: 42,
        };
        let text = position.to_json();
        assert_eq!(Position::read(&text), Some(position.clone()));
        assert_eq!(serde_json::from_str::<Position>(&text).unwrap(), position);
        for bad in [
            "{}",
            r#"{"channel":"c","epoch":"e"}"#,
            r#"{"channel":"","epoch":"e","offset":1}"#,
            r#"{"channel":"c","epoch":"e","offset":-1}"#,
            "[1]",
            "nope",
        ] {
            assert_eq!(Position::read(bad), None, "{bad}");
        }
    }
}
