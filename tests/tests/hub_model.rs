//! Random operation sequences against a reference model of the hub (proptest-state-machine).
//!
//! The model knows only what a user of the hub can see: which clients are connected, which
//! sessions wait for a resume, and which messages each client must have received, in order.
//! The system under test is the real hub in the simulator, with a zero-latency network so that
//! the model's timing is exact.

use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use std::time::Duration;
use switchboard_core::server::{ConnectionState, HubConfig};
use switchboard_tests::sim::World;

const CLIENTS: usize = 4;
const CONVERSATIONS: [&str; 2] = ["conv-a", "conv-b"];
const WINDOW_MS: u64 = 120_000;

#[derive(Debug, Clone)]
enum Op {
    Connect(usize),
    Publish(usize),
    Drop(usize),
    Reconnect(usize),
    Logout(usize),
    Advance(u64),
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// No socket and no session.
    Idle,
    Active,
    /// Socket lost at this time (ms); the session waits for the window.
    Dropped(u64),
}

#[derive(Debug, Clone)]
struct ModelClient {
    conversation: usize,
    phase: Phase,
    expected: Vec<u64>,
    missed: Vec<u64>,
    gaps: u64,
}

#[derive(Debug, Clone)]
struct Model {
    now: u64,
    next_message: u64,
    clients: Vec<ModelClient>,
}

impl Model {
    fn session_alive(&self, c: &ModelClient) -> bool {
        match c.phase {
            Phase::Idle => false,
            Phase::Active => true,
            Phase::Dropped(since) => self.now - since < WINDOW_MS,
        }
    }
}

struct HubModel;

impl ReferenceStateMachine for HubModel {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        let clients = (0..CLIENTS)
            .map(|i| ModelClient {
                conversation: i % 2,
                phase: Phase::Idle,
                expected: Vec::new(),
                missed: Vec::new(),
                gaps: 0,
            })
            .collect();
        Just(Model { now: 0, next_message: 1, clients }).boxed()
    }

    fn transitions(_: &Model) -> BoxedStrategy<Op> {
        let client = 0..CLIENTS;
        prop_oneof![
            3 => client.clone().prop_map(Op::Connect),
            4 => (0..CONVERSATIONS.len()).prop_map(Op::Publish),
            2 => client.clone().prop_map(Op::Drop),
            2 => client.clone().prop_map(Op::Reconnect),
            1 => client.prop_map(Op::Logout),
            2 => prop_oneof![1u64..2_000, 100_000u64..130_000].prop_map(Op::Advance),
        ]
        .boxed()
    }

    fn preconditions(state: &Model, op: &Op) -> bool {
        match op {
            Op::Connect(i) => state.clients[*i].phase == Phase::Idle,
            Op::Drop(i) | Op::Logout(i) => state.clients[*i].phase == Phase::Active,
            Op::Reconnect(i) => matches!(state.clients[*i].phase, Phase::Dropped(_)),
            Op::Publish(_) | Op::Advance(_) => true,
        }
    }

    fn apply(mut state: Model, op: &Op) -> Model {
        match *op {
            Op::Connect(i) => state.clients[i].phase = Phase::Active,
            Op::Publish(conversation) => {
                let n = state.next_message;
                state.next_message += 1;
                let model = state.clone();
                for c in state.clients.iter_mut().filter(|c| c.conversation == conversation) {
                    match c.phase {
                        Phase::Active => c.expected.push(n),
                        Phase::Dropped(_) if model.session_alive(c) => c.missed.push(n),
                        _ => {}
                    }
                }
            }
            Op::Drop(i) => state.clients[i].phase = Phase::Dropped(state.now),
            Op::Reconnect(i) => {
                let alive = state.session_alive(&state.clients[i]);
                let c = &mut state.clients[i];
                let missed = std::mem::take(&mut c.missed);
                if alive {
                    c.expected.extend(missed);
                } else {
                    c.gaps += 1;
                }
                c.phase = Phase::Active;
            }
            Op::Logout(i) => state.clients[i].phase = Phase::Idle,
            Op::Advance(ms) => state.now += ms,
        }
        state
    }
}

struct HubUnderTest;

impl StateMachineTest for HubUnderTest {
    type SystemUnderTest = World;
    type Reference = HubModel;

    fn init_test(_: &Model) -> World {
        let mut world = World::new(1, 1, HubConfig::default());
        for i in 0..CLIENTS {
            world.add_client(&format!("user-{i}"), Some(CONVERSATIONS[i % 2]), 0);
        }
        world
    }

    fn apply(mut w: World, _: &Model, op: Op) -> World {
        match op {
            Op::Connect(i) => {
                w.clients[i].session = None;
                w.clients[i].last_sequence = 0;
                w.connect(i);
            }
            Op::Publish(conversation) => {
                w.publish(0, CONVERSATIONS[conversation], None);
            }
            Op::Drop(i) => w.cut(i, Some(Duration::ZERO)),
            Op::Reconnect(i) => w.connect(i),
            Op::Logout(i) => {
                let close = r#"{"reason":"user_logout","code":1000}"#;
                w.client_send_message(
                    i,
                    switchboard_core::protocol::types::CONNECTION_CLOSE,
                    close,
                );
            }
            Op::Advance(ms) => w.run_for(Duration::from_millis(ms)),
        }
        w.run_for(Duration::ZERO);
        w
    }

    fn check_invariants(w: &World, model: &Model) {
        assert_eq!(w.now.as_millis(), model.now);
        for (i, (client, expected)) in w.clients.iter().zip(&model.clients).enumerate() {
            let got: Vec<u64> = client.received.iter().map(|v| v["n"].as_u64().unwrap()).collect();
            assert_eq!(got, expected.expected, "client {i}: messages");
            assert_eq!(client.duplicates, 0, "client {i}: duplicates");
            assert_eq!(client.gaps, expected.gaps, "client {i}: gaps");
            let state = client
                .session
                .as_ref()
                .and_then(|id| w.nodes[0].hub.connection(id))
                .map(|c| c.state);
            let want = match expected.phase {
                Phase::Idle => None,
                Phase::Active => Some(ConnectionState::Active),
                Phase::Dropped(_) if model.session_alive(expected) => {
                    Some(ConnectionState::Reconnecting)
                }
                Phase::Dropped(_) => None,
            };
            assert_eq!(state, want, "client {i}: session state");
        }
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn the_hub_agrees_with_the_model(sequential 1..80 => HubUnderTest);
}
