//! The client's configuration.

use super::backoff::BackoffConfig;
use std::time::Duration;

/// Where tokens come from.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// No token (cookie authentication).
    None,
    /// One token for the client's life.
    Static(String),
    /// The application supplies tokens on request ([`super::ClientOutput::RequestToken`]),
    /// before each connect and before the current one expires.
    Application,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenSource::None => "None",
            TokenSource::Static(_) => "Static(<redacted>)",
            TokenSource::Application => "Application",
        })
    }
}

/// Everything the client can be told.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The endpoint, e.g. `wss://host/ws`; the query is added by the client.
    pub url: String,
    pub conversation_id: Option<String>,
    pub definition_id: Option<String>,
    pub token: TokenSource,
    pub backoff: BackoffConfig,
    /// Resume the previous session after reconnecting (default on).
    pub resume: bool,
    /// A socket that has not opened after this long is given up (10 s).
    pub connect_timeout: Duration,
    /// An open socket that has not said `established` (and, when resuming, `resumed`) after
    /// this long is given up (10 s).
    pub establish_timeout: Duration,
    /// The server's ping interval until it says otherwise (30 s); silence for twice this long
    /// means the socket is dead.
    pub heartbeat_interval: Duration,
    /// How long a probe ping (after `online`, `visible`, or a timer that fired late) may go
    /// unanswered (3 s).
    pub probe_timeout: Duration,
    /// Ask for a fresh token this long before the current one expires (30 s).
    pub token_refresh_lead: Duration,
    /// Messages sent while not active wait in a queue of at most this many messages (256) ...
    pub queue_max_messages: usize,
    /// ... and bytes (256 KiB) ...
    pub queue_max_bytes: usize,
    /// ... for at most this long each (60 s).
    pub queue_ttl: Duration,
    /// Messages from a session being replaced, held while a resume is pending (1024).
    pub held_max_messages: usize,
    /// The resume point is stored at most this often while messages arrive (1 s), and at once
    /// on `pagehide`, `freeze` and `disconnect()`.
    pub persist_interval: Duration,
    /// How often an active client pings the server to measure the round trip (60 s; the first
    /// right after it becomes active). `None`: only probes measure it.
    pub ping_interval: Option<Duration>,
}

impl ClientConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            conversation_id: None,
            definition_id: None,
            token: TokenSource::None,
            backoff: BackoffConfig::default(),
            resume: true,
            connect_timeout: Duration::from_secs(10),
            establish_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(3),
            token_refresh_lead: Duration::from_secs(30),
            queue_max_messages: 256,
            queue_max_bytes: 256 * 1024,
            queue_ttl: Duration::from_secs(60),
            held_max_messages: 1024,
            persist_interval: Duration::from_secs(1),
            ping_interval: Some(Duration::from_secs(60)),
        }
    }
}
