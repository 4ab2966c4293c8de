//! The hub's configuration: every limit and interval, with the defaults of DESIGN.md.

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
    /// Unparseable frames in a row before closing with 4012 (10).
    pub max_invalid_frames: u32,
    /// Sessions (connected or resumable) at once (100 000); more are refused with 4014.
    pub max_connections: usize,
    /// Sockets waiting for an auth verdict at once (10 000); more are refused with 1013.
    pub max_pending_auths: usize,
    /// Pub/sub channels subscribed at once (200 000); a session that would need more is refused
    /// with 4014.
    pub max_subscriptions: usize,
    /// Bytes sent to a socket and not yet reported written before it is cut off with 4013
    /// (1 MiB).
    pub max_outbound_bytes: usize,
    /// Frames sent to a socket and not yet reported written before it is cut off with 4013
    /// (4096).
    pub max_outbound_frames: usize,
    /// Messages kept per session for replay on resume (1024).
    pub replay_max_messages: usize,
    /// Bytes kept per session for replay on resume (1 MiB).
    pub replay_max_bytes: usize,
    /// Entries of state history kept per connection (32).
    pub history_len: usize,
    /// Query parameter carrying the access token (`token`; `access_token` is not read).
    pub token_param: String,
    /// Cookie carrying the session (`session`).
    pub session_cookie: String,
    /// The bucket over all non-system messages of one connection (120 per 60 s).
    pub connection_rate: RateLimit,
    /// Per-type buckets, by exact type (the spec's defaults).
    pub type_rates: Vec<(String, RateLimit)>,
    /// Rejections by the rate limiter within `abuse_window` that close the connection with
    /// 4006 (20 within 60 s).
    pub abuse_threshold: u32,
    pub abuse_window: Duration,
    /// Window within which each connection's `retryAfterMs` is drawn at shutdown (5 s).
    pub shutdown_spread: Duration,
    /// Pub/sub channel prefix, so that several deployments can share one Redis (empty).
    pub channel_prefix: String,
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
            max_connections: 100_000,
            max_pending_auths: 10_000,
            max_subscriptions: 200_000,
            max_outbound_bytes: 1 << 20,
            max_outbound_frames: 4096,
            replay_max_messages: 1024,
            replay_max_bytes: 1 << 20,
            history_len: 32,
            token_param: "token".to_owned(),
            session_cookie: "session".to_owned(),
            connection_rate: RateLimit::new(120, minute),
            type_rates: vec![
                ("data.message.send".to_owned(), RateLimit::new(10, minute)),
                ("data.response.submit".to_owned(), RateLimit::new(30, minute)),
                ("data.audit.events".to_owned(), RateLimit::new(10, minute)),
                ("data.tool.result".to_owned(), RateLimit::new(20, minute)),
            ],
            abuse_threshold: 20,
            abuse_window: minute,
            shutdown_spread: Duration::from_secs(5),
            channel_prefix: String::new(),
        }
    }
}
