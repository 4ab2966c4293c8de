//! When to try again: the Phase 1 plan's ReconnectionManager as a tiny sans-IO struct.
//!
//! `min(base · 2^attempt, max)` with jitter. The default jitter is *equal jitter*: the delay is
//! drawn uniformly from the upper half of the window, `[d/2, d]` with `d = min(base · 2^attempt,
//! max)`. A fleet of clients that lost the same server then comes back spread over half of each
//! window instead of in synchronised waves (the Phase 1 plan's ±10 % jitter concentrates them
//! within ±10 %), and, unlike full jitter (`[0, d]`), no client can burn through its attempts
//! early: a 5 s outage costs at most four failed attempts, and 10 attempts span at least 90 s.
//! The figures from the herd simulation are in the tests crate (`client_e2e`). The Phase 1
//! plan's ±10 % stays available as [`Jitter::Proportional`].

use crate::rng::Rng;
use std::time::Duration;

/// How a delay is randomised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    /// Uniform in `[0, delay]`.
    Full,
    /// Uniform in `[delay / 2, delay]` ("equal jitter", the default): spread out, but never
    /// quicker than half the schedule, so a short outage cannot use up attempts early.
    Equal,
    /// Uniform in `[delay · (1 − f), delay · (1 + f)]`, capped at `max`; the Phase 1 plan used
    /// `f = 0.1`.
    Proportional(f64),
    /// No randomness (tests of the schedule itself).
    None,
}

/// The reconnection policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    pub base: Duration,
    pub max: Duration,
    /// Attempts after a loss before giving up (the closed state); `online`, `visible` and
    /// reconnect-now start again with a fresh count.
    pub max_attempts: u32,
    pub jitter: Jitter,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_millis(1000),
            max: Duration::from_millis(30_000),
            max_attempts: 10,
            jitter: Jitter::Equal,
        }
    }
}

impl BackoffConfig {
    /// The Phase 1 plan's policy: the same schedule with ±10 % jitter.
    pub fn phase1() -> Self {
        BackoffConfig { jitter: Jitter::Proportional(0.1), ..BackoffConfig::default() }
    }
}

/// Counts attempts and draws delays.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    running: bool,
}

impl Backoff {
    /// A policy with no attempts made.
    pub fn new(config: BackoffConfig) -> Self {
        Backoff { config, attempt: 0, running: false }
    }

    /// Begins a series of attempts (after a loss).
    pub fn start(&mut self) {
        self.running = true;
    }

    /// Ends the series (connected again, or given up).
    pub fn stop(&mut self) {
        self.running = false;
    }

    /// Forgets the attempts made.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Whether a series is under way.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Attempts made in this series.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether the attempt limit is reached.
    pub fn exhausted(&self) -> bool {
        self.attempt >= self.config.max_attempts
    }

    /// The delay before the next attempt, counting it. The exponent is clamped, so no attempt
    /// number overflows.
    pub fn next_delay(&mut self, rng: &mut Rng) -> Duration {
        let ceiling = self.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let ms = ceiling.as_millis() as u64;
        let max = self.config.max.as_millis() as u64;
        Duration::from_millis(match self.config.jitter {
            Jitter::Full => rng.up_to(ms),
            Jitter::Equal => ms / 2 + rng.up_to(ms - ms / 2),
            Jitter::None => ms,
            Jitter::Proportional(f) => {
                let f = f.clamp(0.0, 1.0);
                let spread = (ms as f64 * f) as u64;
                let low = ms - spread;
                (low + rng.up_to(2 * spread)).min(max.max(ms))
            }
        })
    }

    /// `min(base · 2^attempt, max)`, without jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u64 << attempt.min(32);
        let ms = (self.config.base.as_millis() as u64).saturating_mul(factor);
        Duration::from_millis(ms.min(self.config.max.as_millis() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_exponential_backoff() {
        let mut backoff =
            Backoff::new(BackoffConfig { jitter: Jitter::None, ..BackoffConfig::default() });
        let mut rng = Rng::new(1);
        let delays: Vec<u64> =
            (0..8).map(|_| backoff.next_delay(&mut rng).as_millis() as u64).collect();
        assert_eq!(delays, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        assert_eq!(backoff.attempt(), 8);
        assert!(!backoff.exhausted());
        backoff.next_delay(&mut rng);
        backoff.next_delay(&mut rng);
        assert!(backoff.exhausted());
        backoff.reset();
        assert_eq!(backoff.attempt(), 0);
        // Huge attempt numbers neither overflow nor exceed the maximum.
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_within_its_window() {
        let mut rng = Rng::new(9);
        for attempt in 0..12 {
            let mut full = Backoff::new(BackoffConfig::default());
            let mut phase1 = Backoff::new(BackoffConfig::phase1());
            full.attempt = attempt;
            phase1.attempt = attempt;
            let ceiling = full.ceiling(attempt).as_millis() as u64;
            for _ in 0..200 {
                let mut f = full.clone();
                let mut p = phase1.clone();
                assert!(f.next_delay(&mut rng).as_millis() as u64 <= ceiling);
                let d = p.next_delay(&mut rng).as_millis() as u64;
                assert!(
                    d * 10 >= ceiling * 9 && d <= (ceiling * 11 / 10).min(30_000).max(ceiling),
                    "{d} vs {ceiling}"
                );
            }
        }
    }

    #[test]
    fn start_and_stop() {
        let mut backoff = Backoff::new(BackoffConfig::default());
        assert!(!backoff.is_running());
        backoff.start();
        assert!(backoff.is_running());
        backoff.stop();
        assert!(!backoff.is_running());
    }
}
