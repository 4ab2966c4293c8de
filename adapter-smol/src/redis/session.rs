//! A session's record as Redis keeps it (resume anywhere): the hash written by
//! `switchboard_save_session` and answered by `switchboard_claim_session` (`functions.lua`).
//!
//! `owner` and `generation` are hash fields of their own, because the functions compare and
//! change them; the rest of the record is one JSON field `r`, which only the instances read.

use serde::{Deserialize, Serialize};
use switchboard_core::protocol::{Id, Position};
use switchboard_core::server::{BusError, SessionRecord};

/// The JSON field `r`.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    conversation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    definition: Option<String>,
    write: bool,
    joined: Vec<Position>,
}

/// The record's JSON field.
pub(crate) fn encode(record: &SessionRecord) -> String {
    let stored = Stored {
        user: record.user_id.clone(),
        conversation: record.conversation_id.as_ref().map(|id| id.as_str().to_owned()),
        definition: record.definition_id.clone(),
        write: record.can_write,
        joined: record.joined.clone(),
    };
    // A struct of strings, booleans and numbers always serializes.
    serde_json::to_string(&stored).unwrap_or_default()
}

/// The record from its JSON field and the hash's `owner` and `generation`.
pub(crate) fn decode(raw: &str, owner: &str, generation: u64) -> Result<SessionRecord, BusError> {
    let bad = |what: &str| BusError(format!("redis: a session record with {what}"));
    let stored: Stored = serde_json::from_str(raw).map_err(|_| bad("unreadable JSON"))?;
    let conversation_id = match stored.conversation {
        Some(id) => Some(Id::name(&id).map_err(|_| bad("a bad conversation id"))?),
        None => None,
    };
    Ok(SessionRecord {
        user_id: stored.user,
        conversation_id,
        definition_id: stored.definition,
        can_write: stored.write,
        owner: Id::new(owner).map_err(|_| bad("a bad owner"))?,
        generation,
        joined: stored.joined,
    })
}

/// The connection id and the key prefix in a session key (`{prefix}{session:<id>}`).
pub(crate) fn parts(session: &str) -> Option<(&str, &str)> {
    let (prefix, rest) = session.rsplit_once("{session:")?;
    Some((prefix, rest.strip_suffix('}')?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_the_round_trip() {
        let record = SessionRecord {
            user_id: "alice \"the\" user".into(),
            conversation_id: Some(Id::name("c-1").unwrap()),
            definition_id: Some("d-1".into()),
            can_write: true,
            owner: Id::new("i-2").unwrap(),
            generation: 3,
            joined: vec![Position {
                channel: "conversation:c-1".into(),
                epoch: "e1".into(),
                offset: 9,
            }],
        };
        let raw = encode(&record);
        assert!(!raw.contains("i-2"), "owner and generation are fields of their own");
        assert_eq!(decode(&raw, "i-2", 3), Ok(record));
        assert!(decode("{", "i-2", 3).is_err());
        assert!(decode(r#"{"user":"a","write":false,"joined":[]}"#, "", 1).is_err());
    }

    #[test]
    fn session_keys_name_their_connection() {
        assert_eq!(parts("sb:{session:01HX}"), Some(("sb:", "01HX")));
        assert_eq!(parts("sb:{conversation:1}"), None);
    }
}
