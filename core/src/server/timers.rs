//! Deadlines of many connections, kept so that the next one is found without a scan.
//!
//! A binary heap of `(deadline, key, kind)`. Rescheduling does not search the heap: the owner
//! stores the deadline it currently wants for each kind, and an entry that no longer matches is
//! dropped when it reaches the top. `next()` is O(1) after stale tops are popped; `push` and
//! `pop` are O(log n), so 100 000 connections cost nothing noticeable.

use crate::time::Instant;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Why the hub wants to be woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerKind {
    /// An opened socket's verdict is overdue.
    AuthTimeout,
    /// Time to ping, or to give up on a silent connection.
    Heartbeat,
    /// The principal's token expires.
    TokenExpiry,
    /// A disconnected session's resume window ends.
    ResumeWindow,
    /// The bus link's own deadlines (gap reads, retries, probes, lingering channels); not a
    /// session's.
    Bus,
}

/// The heap of deadlines. `K` identifies the owner of a deadline (a session key).
#[derive(Debug)]
pub struct Timers<K: Ord> {
    heap: BinaryHeap<Reverse<(Instant, K, TimerKind)>>,
}

impl<K: Ord + Copy> Default for Timers<K> {
    fn default() -> Self {
        Timers { heap: BinaryHeap::new() }
    }
}

impl TimerKind {
    /// Every kind a session has.
    pub const ALL: [TimerKind; 4] = [
        TimerKind::AuthTimeout,
        TimerKind::Heartbeat,
        TimerKind::TokenExpiry,
        TimerKind::ResumeWindow,
    ];
}

impl<K: Ord + Copy> Timers<K> {
    /// Replaces the heap's contents with `entries` (dropping the stale ones).
    pub fn rebuild(&mut self, entries: impl IntoIterator<Item = (Instant, K, TimerKind)>) {
        self.heap = entries.into_iter().map(Reverse).collect();
    }

    /// Asks to be woken at `at` for `kind` of `key`.
    pub fn schedule(&mut self, at: Instant, key: K, kind: TimerKind) {
        self.heap.push(Reverse((at, key, kind)));
    }

    /// The earliest deadline still wanted; `is_current` says whether an entry still is.
    pub fn next(
        &mut self,
        mut is_current: impl FnMut(Instant, K, TimerKind) -> bool,
    ) -> Option<(Instant, TimerKind)> {
        while let Some(&Reverse((at, key, kind))) = self.heap.peek() {
            if is_current(at, key, kind) {
                return Some((at, kind));
            }
            self.heap.pop();
        }
        None
    }

    /// Removes and returns the earliest entry due at or before `now` (current or not: the
    /// caller checks).
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, K, TimerKind)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.heap.clear();
    }

    /// Entries held, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}
