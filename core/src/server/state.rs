//! The server-side connection state machine of DESIGN.md §2, as one table.

use crate::time::Instant;
use std::collections::VecDeque;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnectionState {
    /// The socket is being accepted.
    Connecting,
    /// The socket is open; credentials are being verified.
    Connected,
    /// The credentials were accepted.
    Authenticated,
    /// `system.connection.established` was sent: messages flow.
    Active,
    /// The client asked the server to hold its messages (`control.flow.pause`).
    Paused,
    /// The socket is gone; the session waits for a resume within the window.
    Reconnecting,
    /// A close was sent; waiting for the socket to end.
    Closing,
    /// Gone.
    Closed,
}

impl ConnectionState {
    /// Every state, for metrics.
    pub const ALL: [ConnectionState; 8] = [
        ConnectionState::Connecting,
        ConnectionState::Connected,
        ConnectionState::Authenticated,
        ConnectionState::Active,
        ConnectionState::Paused,
        ConnectionState::Reconnecting,
        ConnectionState::Closing,
        ConnectionState::Closed,
    ];

    /// Whether DESIGN.md allows going from `self` to `to`. One addition to its table:
    /// `Paused → Reconnecting`, since a paused connection's socket can drop too, and its
    /// session must then wait for a resume like an active one.
    pub fn can_become(self, to: ConnectionState) -> bool {
        use ConnectionState::*;
        matches!(
            (self, to),
            (Connecting, Connected)
                | (Connected, Authenticated)
                | (Authenticated, Active)
                | (Active, Paused | Reconnecting | Closing)
                | (Paused, Active | Reconnecting | Closing)
                | (Reconnecting, Active)
                | (Closing, Closed)
                | (_, Closed)
        ) && self != Closed
    }

    /// The state's name, lower case.
    pub fn as_str(self) -> &'static str {
        use ConnectionState::*;
        match self {
            Connecting => "connecting",
            Connected => "connected",
            Authenticated => "authenticated",
            Active => "active",
            Paused => "paused",
            Reconnecting => "reconnecting",
            Closing => "closing",
            Closed => "closed",
        }
    }
}

/// One transition, kept for diagnosis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: ConnectionState,
    pub to: ConnectionState,
    pub at: Instant,
    pub reason: &'static str,
}

/// A refused transition: the caller tried to move a connection where the table forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition {from:?} → {to:?}")]
pub struct IllegalTransition {
    pub from: ConnectionState,
    pub to: ConnectionState,
}

/// A state with its bounded history. The state comes first (`repr(C)`): fan-out reads it for
/// every recipient, at the start of the session's first cache line.
#[derive(Debug, Clone)]
#[repr(C)]
pub struct StateMachine {
    state: ConnectionState,
    history: VecDeque<Transition>,
    history_len: usize,
}

impl StateMachine {
    /// A machine in `Connecting`, keeping the last `history_len` transitions (in room that
    /// grows with them: most connections make three, an idle one no more).
    pub fn new(history_len: usize) -> Self {
        StateMachine { state: ConnectionState::Connecting, history: VecDeque::new(), history_len }
    }

    /// The current state.
    pub fn state(&self) -> ConnectionState {
        self.state
    }

    /// The kept transitions, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &Transition> {
        self.history.iter()
    }

    /// Moves to `to` if the table allows it; otherwise changes nothing and says why.
    pub fn transition(
        &mut self,
        to: ConnectionState,
        at: Instant,
        reason: &'static str,
    ) -> Result<(), IllegalTransition> {
        if !self.state.can_become(to) {
            return Err(IllegalTransition { from: self.state, to });
        }
        if self.history_len > 0 {
            if self.history.len() == self.history_len {
                self.history.pop_front();
            } else if self.history.len() == self.history.capacity() {
                // Room for three first (a connection's way to `Active`; an idle one makes no
                // more), then doubling up to the bound, never past it.
                let room = (self.history.capacity() * 2).max(3).min(self.history_len);
                self.history.reserve_exact(room - self.history.len());
            }
            self.history.push_back(Transition { from: self.state, to, at, reason });
        }
        self.state = to;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConnectionState::*;

    #[test]
    fn the_table() {
        let legal = [
            (Connecting, Connected),
            (Connected, Authenticated),
            (Authenticated, Active),
            (Active, Paused),
            (Active, Reconnecting),
            (Active, Closing),
            (Paused, Active),
            (Paused, Reconnecting),
            (Paused, Closing),
            (Reconnecting, Active),
            (Closing, Closed),
        ];
        for from in ConnectionState::ALL {
            for to in ConnectionState::ALL {
                let want = from != Closed && (to == Closed || legal.contains(&(from, to)));
                assert_eq!(from.can_become(to), want, "{from:?} → {to:?}");
            }
        }
    }

    #[test]
    fn refuses_and_bounds_history() {
        let mut m = StateMachine::new(2);
        assert_eq!(
            m.transition(Active, Instant::ZERO, "skip"),
            Err(IllegalTransition { from: Connecting, to: Active })
        );
        m.transition(Connected, Instant::ZERO, "open").unwrap();
        m.transition(Authenticated, Instant::ZERO, "auth").unwrap();
        m.transition(Active, Instant::ZERO, "established").unwrap();
        let reasons: Vec<_> = m.history().map(|t| t.reason).collect();
        assert_eq!(reasons, ["auth", "established"]);
        m.transition(Closed, Instant::ZERO, "gone").unwrap();
        assert!(m.transition(Closed, Instant::ZERO, "again").is_err());
    }

    /// The history's room: three for the way to `Active` (all an idle connection keeps), then
    /// doubling, never past the bound.
    #[test]
    fn the_history_takes_the_room_it_needs_up_to_its_bound() {
        let mut m = StateMachine::new(8);
        m.transition(Connected, Instant::ZERO, "open").unwrap();
        m.transition(Authenticated, Instant::ZERO, "auth").unwrap();
        m.transition(Active, Instant::ZERO, "established").unwrap();
        assert_eq!(m.history.capacity(), 3);
        for _ in 0..20 {
            m.transition(Paused, Instant::ZERO, "flow_pause").unwrap();
            m.transition(Active, Instant::ZERO, "flow_resume").unwrap();
            assert!(m.history.capacity() <= 8, "{}", m.history.capacity());
        }
        assert_eq!(m.history().count(), 8);
        assert_eq!(m.history().last().map(|t| t.reason), Some("flow_resume"));
    }
}
