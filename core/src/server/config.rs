//! The hub's configuration: every limit and interval, with the defaults of DESIGN.md, and the
//! checks that keep the limits consistent with each other.

use crate::protocol::DEFAULT_MAX_FRAME_BYTES;
use std::time::Duration;

/// A token bucket: `capacity` messages at once, refilled at `capacity` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub capacity: u32,
    pub per: Duration,
}

impl RateLimit {
    /// `capacity` messages per `per`.
    pub const fn new(capacity: u32, per: Duration) -> Self {
        RateLimit { capacity, per }
    }
}

/// Everything the hub can be told. `HubConfig::default()` is DESIGN.md's defaults.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// How often the server pings each connection (30 s).
    pub heartbeat_interval: Duration,
    /// Intervals of silence after which a connection is closed with 4008 (3).
    pub max_missed_pongs: u32,
    /// How long an opened socket may wait for its authentication verdict (10 s).
    pub auth_timeout: Duration,
    /// How long a session outlives its socket, resumable (2 min).
    pub resume_window: Duration,
    /// Largest text frame accepted (64 KiB); larger closes with 1009.
    pub max_frame_bytes: usize,
    /// Invalid frames (unparseable, or an unknown or server-only `system.*` type) within
    /// `invalid_window`, in a row or not, that close the connection with 4012 (10 within 60 s).
    pub max_invalid_frames: u32,
    pub invalid_window: Duration,
    /// Sessions (connected or resumable) at once (100 000); more are refused with 4014.
    pub max_connections: usize,
    /// Sessions of one user at once (100). At the cap, the user's oldest session waiting for a
    /// resume is let go to make room; if none is waiting, the new connection is refused with
    /// 4014 (the sessions in use are never taken away).
    pub max_sessions_per_user: usize,
    /// Sockets waiting for an auth or join verdict at once (10 000); more are refused with 1013.
    pub max_pending_auths: usize,
    /// Pub/sub channels subscribed at once (200 000); a session that would need more is refused
    /// with 4014.
    pub max_subscriptions: usize,
    /// The outbound window: bytes handed to a socket and not yet reported written (512 KiB) ...
    pub max_outbound_bytes: usize,
    /// ... and frames (512). What does not fit waits in the replay buffer.
    pub max_outbound_frames: usize,
    /// Messages kept per session for replay on resume (1024) ...
    pub replay_max_messages: usize,
    /// ... and bytes (1 MiB). A socket whose unwritten messages would take more than half of
    /// either is cut off with 4013 while everything it has not been sent is still kept: the
    /// other half is the room for what arrives while its client comes back.
    pub replay_max_bytes: usize,
    /// Largest application message the hub sends (256 KiB); larger ones are refused by
    /// [`super::Hub::send`].
    pub max_message_bytes: usize,
    /// Clock skew tolerated on a token's `exp` (and `nbf`), by the verifier and the hub alike
    /// (30 s).
    pub clock_leeway: Duration,
    /// Entries of state history kept per connection (32).
    pub history_len: usize,
    /// Query parameter carrying the access token (`token`; `access_token` is not read).
    pub token_param: String,
    /// Cookie carrying the session (`session`).
    pub session_cookie: String,
    /// The bucket over all non-system messages of one connection (120 per 60 s).
    pub connection_rate: RateLimit,
    /// The bucket over a connection's `system.*` messages (pings, resumes, refreshes): generous,
    /// but a bound (60 per 60 s).
    pub system_rate: RateLimit,
    /// Per-type buckets, by exact type (the spec's defaults).
    pub type_rates: Vec<(String, RateLimit)>,
    /// Rejections by the rate limiter within `abuse_window` that close the connection with
    /// 4006 (20 within 60 s).
    pub abuse_threshold: u32,
    pub abuse_window: Duration,
    /// Window within which each connection's `retryAfterMs` is drawn at shutdown (5 s).
    pub shutdown_spread: Duration,
    /// Channel prefix on the bus, so that several deployments can share one Redis (`sb:`).
    pub channel_prefix: String,
    /// The channels between instances.
    pub bus: BusConfig,
}

/// How the hub uses the bus between instances (DESIGN.md §3; see `server::bus`).
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// The channels go through a bus shared with other instances (Redis), which the adapter
    /// connects to; `false` (the default): this instance alone, positions given in process.
    pub shared: bool,
    /// How many buses the channels are spread over (Redis shards; 1). Each channel and each
    /// session record lives on one, by [`shard_of`](crate::server::bus::shard_of); the adapter
    /// carries each shard's commands to its own bus.
    pub shards: usize,
    /// How long a gap in a channel may wait for the missing messages to arrive by themselves
    /// before the history is read (100 ms).
    pub gap_wait: Duration,
    /// How long an own message may wait for the bus to place it before local members get it
    /// anyway (250 ms).
    pub publish_budget: Duration,
    /// Retries of failed publishes and subscribes back off from `retry_min` to `retry_max`
    /// (100 ms, 2 s).
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Channels per subscribe command (512).
    pub subscribe_batch: usize,
    /// A subscribe or history read not answered within this is retried (5 s).
    pub subscribe_timeout: Duration,
    /// How often the instance publishes a probe to itself (5 s), and how long the probe may
    /// take to come back before the subscriber is taken for deaf (3 s).
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    /// How long a channel stays subscribed after its last local member left (5 s).
    pub linger: Duration,
    /// Own publishes waiting for the bus, at most (10 000 messages, 16 MiB); past that, a
    /// message is delivered here only and its channel reset everywhere once the bus is back.
    pub max_pending_publishes: usize,
    pub max_pending_bytes: usize,
    /// History entries asked for per read (256).
    pub read_limit: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            shared: false,
            shards: 1,
            gap_wait: Duration::from_millis(100),
            publish_budget: Duration::from_millis(250),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
            subscribe_batch: 512,
            subscribe_timeout: Duration::from_secs(5),
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(3),
            linger: Duration::from_secs(5),
            max_pending_publishes: 10_000,
            max_pending_bytes: 16 << 20,
            read_limit: 256,
        }
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        let minute = Duration::from_secs(60);
        HubConfig {
            heartbeat_interval: Duration::from_secs(30),
            max_missed_pongs: 3,
            auth_timeout: Duration::from_secs(10),
            resume_window: Duration::from_secs(120),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_invalid_frames: 10,
            invalid_window: minute,
            max_connections: 100_000,
            max_sessions_per_user: 100,
            max_pending_auths: 10_000,
            max_subscriptions: 200_000,
            max_outbound_bytes: 512 << 10,
            max_outbound_frames: 512,
            replay_max_messages: 1024,
            replay_max_bytes: 1 << 20,
            max_message_bytes: 256 << 10,
            clock_leeway: Duration::from_secs(30),
            history_len: 32,
            token_param: "token".to_owned(),
            session_cookie: "session".to_owned(),
            connection_rate: RateLimit::new(120, minute),
            system_rate: RateLimit::new(60, minute),
            type_rates: vec![
                ("data.message.send".to_owned(), RateLimit::new(10, minute)),
                ("data.response.submit".to_owned(), RateLimit::new(30, minute)),
                ("data.audit.events".to_owned(), RateLimit::new(10, minute)),
                ("data.tool.result".to_owned(), RateLimit::new(20, minute)),
            ],
            abuse_threshold: 20,
            abuse_window: minute,
            shutdown_spread: Duration::from_secs(5),
            channel_prefix: "sb:".to_owned(),
            bus: BusConfig::default(),
        }
    }
}

/// A configuration whose limits contradict each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid hub configuration: {0}")]
pub struct InvalidConfig(pub String);

impl HubConfig {
    /// Checks that the limits fit together; [`super::Hub::new`] refuses a configuration that
    /// does not pass.
    ///
    /// The one that matters most: everything handed to a socket and not yet written must still
    /// be in the replay buffer when the socket is cut off, with room to spare for what arrives
    /// while its client comes back. So the outbound window may be at most half the replay
    /// buffer, by count and by bytes, and every message must fit in the window.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let fail = |what: String| Err(InvalidConfig(what));
        if self.replay_max_messages < 2 || self.replay_max_bytes < 2 {
            return fail("the replay buffer must keep messages (replay_max_messages and replay_max_bytes of at least 2)".into());
        }
        if self.max_outbound_frames == 0 || self.max_outbound_bytes == 0 {
            return fail("the outbound window must hold at least one frame".into());
        }
        if self.max_outbound_frames > self.replay_max_messages / 2 {
            return fail(format!(
                "max_outbound_frames ({}) exceeds half of replay_max_messages ({}): a socket cut off with frames in flight would lose some",
                self.max_outbound_frames, self.replay_max_messages
            ));
        }
        if self.max_outbound_bytes > self.replay_max_bytes / 2 {
            return fail(format!(
                "max_outbound_bytes ({}) exceeds half of replay_max_bytes ({}): a socket cut off with frames in flight would lose some",
                self.max_outbound_bytes, self.replay_max_bytes
            ));
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > self.max_outbound_bytes {
            return fail(format!(
                "max_message_bytes ({}) must be between 1 and max_outbound_bytes ({})",
                self.max_message_bytes, self.max_outbound_bytes
            ));
        }
        if self.max_frame_bytes == 0 {
            return fail("max_frame_bytes must be at least 1".into());
        }
        if self.bus.shards == 0
            || self.bus.shards > 1024
            || (!self.bus.shared && self.bus.shards > 1)
        {
            return fail(
                "bus shards must be between 1 and 1024, and more than 1 only with a shared bus"
                    .into(),
            );
        }
        let zero_rate = |r: &RateLimit| r.capacity == 0 || r.per.is_zero();
        if zero_rate(&self.connection_rate) || zero_rate(&self.system_rate) {
            return fail("rate limits need a capacity and a period".into());
        }
        if let Some((ty, _)) = self.type_rates.iter().find(|(_, r)| zero_rate(r)) {
            return fail(format!("the rate limit of {ty} needs a capacity and a period"));
        }
        if self.heartbeat_interval.is_zero() || self.max_missed_pongs == 0 {
            return fail("heartbeat_interval and max_missed_pongs must be positive".into());
        }
        if self.max_invalid_frames == 0 || self.invalid_window.is_zero() {
            return fail("max_invalid_frames and invalid_window must be positive".into());
        }
        let bus = &self.bus;
        if bus.subscribe_batch == 0 || bus.read_limit == 0 || bus.max_pending_publishes == 0 {
            return fail("bus batches, reads and the publish queue must hold at least one".into());
        }
        if bus.probe_interval.is_zero() || bus.probe_timeout.is_zero() || bus.retry_min.is_zero() {
            return fail("bus probe and retry intervals must be positive".into());
        }
        if self.max_sessions_per_user == 0 {
            return fail("max_sessions_per_user must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_inconsistent_limits_are_refused() {
        assert_eq!(HubConfig::default().validate(), Ok(()));
        let refused = |config: HubConfig| config.validate().unwrap_err().0;
        // The window of the last release (4 096 frames) against a replay of 1 024 lost messages.
        let old = HubConfig { max_outbound_frames: 4096, ..HubConfig::default() };
        assert!(refused(old).contains("max_outbound_frames"));
        let bytes = HubConfig { max_outbound_bytes: 1 << 20, ..HubConfig::default() };
        assert!(refused(bytes).contains("max_outbound_bytes"));
        assert!(
            refused(HubConfig { replay_max_messages: 0, ..HubConfig::default() })
                .contains("replay")
        );
        let big = HubConfig { max_message_bytes: 1 << 20, ..HubConfig::default() };
        assert!(refused(big).contains("max_message_bytes"));
        let rate = HubConfig {
            system_rate: RateLimit::new(0, Duration::from_secs(1)),
            ..HubConfig::default()
        };
        assert!(refused(rate).contains("rate"));
    }
}
