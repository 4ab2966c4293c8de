//! Token buckets per connection and per message type, with injected time.

use super::config::{HubConfig, RateLimit};
use crate::time::Instant;
use std::collections::VecDeque;
use std::time::Duration;

/// A token bucket counted in thousandths of a token, so refill is exact integer arithmetic.
#[derive(Debug, Clone)]
struct TokenBucket {
    milli_tokens: u64,
    refilled_at: Instant,
}

impl TokenBucket {
    fn full(limit: RateLimit, now: Instant) -> Self {
        TokenBucket { milli_tokens: u64::from(limit.capacity) * 1000, refilled_at: now }
    }

    fn refill(&mut self, limit: RateLimit, now: Instant) {
        let per_ms = (limit.per.as_millis() as u64).max(1);
        let elapsed = now.as_millis().saturating_sub(self.refilled_at.as_millis());
        let cap = u64::from(limit.capacity) * 1000;
        let gained = elapsed.saturating_mul(cap) / per_ms;
        self.milli_tokens = self.milli_tokens.saturating_add(gained).min(cap);
        self.refilled_at = now;
    }

    /// Whether a token is available, and if not, how long until one is.
    fn check(&mut self, limit: RateLimit, now: Instant) -> Result<(), Duration> {
        self.refill(limit, now);
        if self.milli_tokens >= 1000 {
            return Ok(());
        }
        let per_ms = (limit.per.as_millis() as u64).max(1);
        let rate = (u64::from(limit.capacity) * 1000).max(1);
        let missing = 1000 - self.milli_tokens;
        Err(Duration::from_millis((missing * per_ms).div_ceil(rate)))
    }

    fn take(&mut self) {
        self.milli_tokens = self.milli_tokens.saturating_sub(1000);
    }
}

/// What the limiter says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    /// Go ahead.
    Allow,
    /// Drop it and tell the sender to retry after this long.
    Limited { retry_after: Duration },
    /// Drop it and close the connection: the sender keeps going despite being told.
    Abusive,
}

/// One connection's buckets: one over all non-system messages, one per limited type, one over
/// the system plane, one over invalid frames, and the recent rejections that decide abuse.
/// Memory is bounded by the configured types and the abuse threshold.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    connection: TokenBucket,
    /// Made at the first limited message: a bucket untouched since then would be full anyway,
    /// and most connections (an idle one, a reader) never send one.
    by_type: Vec<TokenBucket>,
    system: TokenBucket,
    invalid: TokenBucket,
    rejections: VecDeque<Instant>,
}

impl RateLimiter {
    /// Full buckets.
    pub fn new(config: &HubConfig, now: Instant) -> Self {
        RateLimiter {
            connection: TokenBucket::full(config.connection_rate, now),
            by_type: Vec::new(),
            system: TokenBucket::full(config.system_rate, now),
            invalid: TokenBucket::full(invalid_rate(config), now),
            rejections: VecDeque::new(),
        }
    }

    /// Checks one `system.*` message against the system plane's own bucket (pings, resumes and
    /// refreshes do not use up the application's budget, nor it theirs). Rejections count
    /// towards abuse like the application's.
    pub fn check_system(&mut self, config: &HubConfig, now: Instant) -> RateVerdict {
        match self.system.check(config.system_rate, now) {
            Ok(()) => {
                self.system.take();
                RateVerdict::Allow
            }
            Err(retry_after) => self.rejected(config, now, retry_after),
        }
    }

    /// Counts one invalid frame; returns whether `max_invalid_frames` were seen within
    /// `invalid_window` (the connection is then closed with 4012), valid frames in between
    /// notwithstanding.
    pub fn count_invalid(&mut self, config: &HubConfig, now: Instant) -> bool {
        let limit = invalid_rate(config);
        let _ = self.invalid.check(limit, now);
        self.invalid.take();
        self.invalid.check(limit, now).is_err()
    }

    /// Checks one message of `message_type` and takes its tokens if allowed. A message is
    /// allowed only when both its connection's and its type's buckets have a token.
    pub fn check(&mut self, config: &HubConfig, message_type: &str, now: Instant) -> RateVerdict {
        let type_index = config.type_rates.iter().position(|(t, _)| t == message_type);
        let mut wait = self.connection.check(config.connection_rate, now).err();
        if let Some(i) = type_index {
            if self.by_type.is_empty() {
                self.by_type =
                    config.type_rates.iter().map(|(_, l)| TokenBucket::full(*l, now)).collect();
            }
            if let Err(w) = self.by_type[i].check(config.type_rates[i].1, now) {
                wait = Some(wait.map_or(w, |v| v.max(w)));
            }
        }
        let Some(retry_after) = wait else {
            self.connection.take();
            if let Some(i) = type_index {
                self.by_type[i].take();
            }
            return RateVerdict::Allow;
        };
        self.rejected(config, now, retry_after)
    }

    /// Remembers a rejection; sustained ones are abuse.
    fn rejected(&mut self, config: &HubConfig, now: Instant, retry_after: Duration) -> RateVerdict {
        let window_start = now - config.abuse_window;
        while self.rejections.front().is_some_and(|&t| t < window_start) {
            self.rejections.pop_front();
        }
        self.rejections.push_back(now);
        if self.rejections.len() >= config.abuse_threshold as usize {
            RateVerdict::Abusive
        } else {
            RateVerdict::Limited { retry_after }
        }
    }
}

/// The bucket of invalid frames: `max_invalid_frames` per `invalid_window`.
fn invalid_rate(config: &HubConfig) -> RateLimit {
    RateLimit::new(config.max_invalid_frames, config.invalid_window)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn per_type_limit_of_the_spec_with_retry_after() {
        let config = HubConfig::default();
        let mut limiter = RateLimiter::new(&config, at(0));
        for _ in 0..10 {
            assert_eq!(limiter.check(&config, "data.message.send", at(0)), RateVerdict::Allow);
        }
        // The 11th within the minute: one token comes back after 6 s.
        assert_eq!(
            limiter.check(&config, "data.message.send", at(0)),
            RateVerdict::Limited { retry_after: Duration::from_secs(6) }
        );
        assert_eq!(limiter.check(&config, "data.message.send", at(6_000)), RateVerdict::Allow);
        // Other types are not held back by data.message.send's bucket.
        assert_eq!(limiter.check(&config, "data.widget.submit", at(6_000)), RateVerdict::Allow);
    }

    #[test]
    fn sustained_abuse_is_reported() {
        let config = HubConfig { abuse_threshold: 3, ..HubConfig::default() };
        let mut limiter = RateLimiter::new(&config, at(0));
        let verdicts: Vec<_> =
            (0..13).map(|_| limiter.check(&config, "data.message.send", at(0))).collect();
        assert!(verdicts[..10].iter().all(|v| *v == RateVerdict::Allow));
        assert!(matches!(verdicts[10], RateVerdict::Limited { .. }));
        assert!(matches!(verdicts[11], RateVerdict::Limited { .. }));
        assert_eq!(verdicts[12], RateVerdict::Abusive);
    }

    #[test]
    fn rejections_age_out_of_the_abuse_window() {
        let config = HubConfig { abuse_threshold: 2, ..HubConfig::default() };
        let mut limiter = RateLimiter::new(&config, at(0));
        for _ in 0..10 {
            limiter.check(&config, "data.message.send", at(0));
        }
        assert!(matches!(
            limiter.check(&config, "data.message.send", at(0)),
            RateVerdict::Limited { .. }
        ));
        // 61 s later the old rejection is forgotten; the bucket is full again anyway.
        assert_eq!(limiter.check(&config, "data.message.send", at(61_000)), RateVerdict::Allow);
    }

    #[test]
    fn connection_bucket_limits_all_types() {
        let config = HubConfig {
            connection_rate: RateLimit::new(3, Duration::from_secs(1)),
            ..HubConfig::default()
        };
        let mut limiter = RateLimiter::new(&config, at(0));
        for _ in 0..3 {
            assert_eq!(limiter.check(&config, "data.x.y", at(0)), RateVerdict::Allow);
        }
        assert_eq!(
            limiter.check(&config, "control.x.y", at(0)),
            RateVerdict::Limited { retry_after: Duration::from_millis(334) }
        );
    }
}

#[cfg(test)]
mod system_and_invalid {
    use super::*;

    #[test]
    fn the_system_plane_has_its_own_bucket() {
        let config = HubConfig {
            connection_rate: RateLimit::new(1, Duration::from_secs(60)),
            system_rate: RateLimit::new(2, Duration::from_secs(10)),
            ..HubConfig::default()
        };
        let at = Instant::from_millis;
        let mut limiter = RateLimiter::new(&config, at(0));
        assert_eq!(limiter.check(&config, "data.a.b", at(0)), RateVerdict::Allow);
        assert_eq!(limiter.check_system(&config, at(0)), RateVerdict::Allow);
        assert_eq!(limiter.check_system(&config, at(0)), RateVerdict::Allow);
        assert_eq!(
            limiter.check_system(&config, at(0)),
            RateVerdict::Limited { retry_after: Duration::from_secs(5) }
        );
        assert_eq!(limiter.check_system(&config, at(5_000)), RateVerdict::Allow);
    }

    #[test]
    fn invalid_frames_close_by_count_within_the_window() {
        let config = HubConfig::default();
        let at = Instant::from_millis;
        let mut limiter = RateLimiter::new(&config, at(0));
        assert!((0..9).all(|i| !limiter.count_invalid(&config, at(i))));
        assert!(limiter.count_invalid(&config, at(10)), "the tenth within a minute");
        // Spread out, they never add up.
        let mut limiter = RateLimiter::new(&config, at(0));
        assert!((0..100).all(|i| !limiter.count_invalid(&config, at(i * 7_000))));
    }
}
