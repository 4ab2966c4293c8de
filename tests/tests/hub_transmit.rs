//! How the hub gives the adapter its sockets' frames, through its own API (no simulator):
//! frames wait in the hub until [`Hub::poll_transmit`] takes them, one socket at a time and in
//! the order they were handed; frames not taken when a socket is closed come out as
//! [`Output::Send`]s ahead of the close.

use bytes::Bytes;
use std::collections::BTreeMap;
use switchboard_core::protocol::{
    CloseCode, Envelope, Id, MessageType, Payload, Source, Timestamp, types,
};
use switchboard_core::server::{
    Frame, Hub, HubConfig, Input, JoinGrant, OpenRequest, Outgoing, Output, Principal, SocketId,
};
use switchboard_core::time::Instant;

const NOW: Instant = Instant::from_millis(1_000);
/// 2025-12-18T10:30:00.000Z.
const UNIX_MS: i64 = 1_766_053_800_000;

/// What a frame is, to compare: its type and its sequence (none for a system frame).
fn what(frame: &Frame) -> (String, Option<u64>) {
    let envelope = Envelope::parse(&frame.to_bytes(), usize::MAX).expect("a valid frame");
    (envelope.message_type.to_string(), envelope.sequence)
}

fn outputs(hub: &mut Hub) -> Vec<Output> {
    std::iter::from_fn(|| hub.poll_output()).collect()
}

/// Every socket's frames, taken as an adapter takes them, in the order it got them.
fn transmit(hub: &mut Hub) -> BTreeMap<u64, Vec<(String, Option<u64>)>> {
    let mut taken = BTreeMap::new();
    while let Some(transmit) = hub.poll_transmit() {
        let socket = transmit.socket();
        let list: &mut Vec<_> = taken.entry(socket.0).or_default();
        assert!(list.is_empty(), "{socket:?} was given twice in one round");
        list.extend(transmit.frames().map(|f| what(&f.to_owned())));
    }
    taken
}

/// A hub with one Active member of `conv-1` per socket `0..n`, everything it sent them taken
/// and reported written.
fn hub_with(n: u64) -> Hub {
    let mut hub = Hub::new(HubConfig::default(), 7, NOW, UNIX_MS).expect("a valid configuration");
    outputs(&mut hub);
    for i in 0..n {
        let socket = SocketId(i);
        let query = vec![
            ("token".to_owned(), format!("token-{i}")),
            ("conversation_id".to_owned(), "conv-1".to_owned()),
        ];
        hub.handle_input(
            NOW,
            Input::Opened { socket, request: OpenRequest { query, ..Default::default() } },
        );
        let request = outputs(&mut hub)
            .into_iter()
            .find_map(|o| match o {
                Output::Verify { request, .. } => Some(request),
                _ => None,
            })
            .expect("a token is verified");
        let verdict = Ok(Principal::user(format!("user-{i}")).into());
        hub.handle_input(NOW, Input::AuthVerdict { request, verdict });
        while let Some(request) = outputs(&mut hub).into_iter().find_map(|o| match o {
            Output::Authorize(join) => Some(join.request),
            _ => None,
        }) {
            hub.handle_input(
                NOW,
                Input::JoinVerdict { request, verdict: Ok(JoinGrant { write: true }) },
            );
        }
        let taken = transmit(&mut hub);
        assert_eq!(taken[&i], [(types::CONNECTION_ESTABLISHED.to_owned(), None)]);
        hub.handle_input(NOW, Input::Flushed { socket, frames: 1, bytes: 0 });
        assert!(outputs(&mut hub).iter().all(|o| !matches!(o, Output::Send { .. })));
    }
    hub
}

fn broadcast(hub: &mut Hub, n: u64) {
    let outgoing = Outgoing::new(
        MessageType::new("data.note.added").unwrap(),
        Payload::from_json(&format!(r#"{{"n":{n}}}"#)).unwrap(),
    );
    let conversation = Id::new("conv-1").unwrap();
    assert_eq!(hub.broadcast_to_conversation(NOW, &conversation, outgoing, None), Ok(2));
}

fn ping() -> Bytes {
    let payload = Payload::from_json(r#"{"timestamp":"2025-12-18T10:30:00.000Z"}"#).unwrap();
    let ping = Envelope::create(
        Source::Client,
        MessageType::new(types::PING).unwrap(),
        payload,
        Timestamp::parse("2025-12-18T10:30:00.000Z").unwrap(),
        1,
    );
    Bytes::from(ping.encode())
}

fn note(sequence: u64) -> (String, Option<u64>) {
    ("data.note.added".to_owned(), Some(sequence))
}

#[test]
fn frames_wait_in_the_hub_until_taken_and_keep_their_order() {
    let mut hub = hub_with(2);
    broadcast(&mut hub, 1);
    hub.handle_input(NOW, Input::Text { socket: SocketId(0), frame: ping() });
    broadcast(&mut hub, 2);
    let sends = outputs(&mut hub).into_iter().filter(|o| matches!(o, Output::Send { .. })).count();
    assert_eq!(sends, 0, "nothing is given before the adapter takes it");
    assert!(hub.has_transmit());

    let taken = transmit(&mut hub);
    let pong = (types::PONG.to_owned(), None);
    assert_eq!(taken[&0], [note(1), pong, note(2)], "the pong between the messages it followed");
    assert_eq!(taken[&1], [note(1), note(2)]);
    assert!(transmit(&mut hub).is_empty(), "taken once");
    assert!(!hub.has_transmit());
}

#[test]
fn frames_not_taken_go_out_ahead_of_their_close() {
    let mut hub = hub_with(2);
    broadcast(&mut hub, 1);
    let connection = hub.connection_of(SocketId(0)).expect("socket 0's connection").clone();
    hub.close_connection(NOW, &connection, CloseCode::GOING_AWAY, "test");

    let socket_0: Vec<_> = outputs(&mut hub)
        .into_iter()
        .filter_map(|o| match o {
            Output::Send { socket: SocketId(0), frame } => Some(Ok(what(&frame))),
            Output::Close { socket: SocketId(0), code, .. } => Some(Err(code)),
            _ => None,
        })
        .collect();
    assert_eq!(socket_0, [Ok(note(1)), Err(CloseCode::GOING_AWAY)]);
    let taken = transmit(&mut hub);
    assert_eq!(taken.keys().collect::<Vec<_>>(), [&1], "the closed socket has nothing left");
    assert_eq!(taken[&1], [note(1)]);
}
