//! Time as the core sees it: a monotonic [`Instant`] the adapter passes with every input.
//!
//! The core never reads a clock. An adapter picks an origin (its start) and passes the
//! milliseconds since; a simulation passes virtual time. Wall-clock time, needed only for the
//! `timestamp` fields on the wire, is derived from the wall-clock reading handed over at
//! construction plus the monotonic time elapsed since.

use crate::protocol::Timestamp;
use std::ops::{Add, Sub};
use std::time::Duration;

/// A point on the adapter's monotonic clock, in milliseconds since its origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The origin.
    pub const ZERO: Instant = Instant(0);
    /// Later than any real deadline.
    pub const FAR_FUTURE: Instant = Instant(u64::MAX);

    /// `ms` milliseconds after the origin.
    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms)
    }

    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// The time from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Instant {
    type Output = Instant;
    /// Saturates at [`Instant::FAR_FUTURE`].
    fn add(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_add(millis(rhs)))
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    /// Saturates at [`Instant::ZERO`].
    fn sub(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_sub(millis(rhs)))
    }
}

/// Wall-clock time derived from monotonic time: the reading at one instant plus the time since.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    at: Instant,
    unix_ms: i64,
}

impl WallClock {
    /// The wall clock read `unix_ms` at monotonic time `at`.
    pub fn new(at: Instant, unix_ms: i64) -> Self {
        WallClock { at, unix_ms }
    }

    /// The wall-clock time at `now`, as a wire timestamp.
    pub fn timestamp(&self, now: Instant) -> Timestamp {
        let elapsed =
            i64::try_from(now.as_millis().saturating_sub(self.at.as_millis())).unwrap_or(i64::MAX);
        let ms = self.unix_ms.saturating_add(elapsed);
        Timestamp::from_unix_ms(ms).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    /// The monotonic instant at which the wall clock shows `unix_ms` (the origin if earlier).
    pub fn instant_at(&self, unix_ms: i64) -> Instant {
        let delta = unix_ms.saturating_sub(self.unix_ms);
        if delta >= 0 {
            self.at + Duration::from_millis(delta as u64)
        } else {
            self.at - Duration::from_millis(delta.unsigned_abs())
        }
    }
}
