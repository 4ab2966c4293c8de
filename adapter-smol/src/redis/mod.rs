//! Several instances through one Redis (DESIGN.md §3): the bridge that carries out the hub's
//! [`BusCommand`]s on Redis and brings back its [`BusEvent`]s.
//!
//! The hub owns every decision (which channels to subscribe, cursors, gaps, retries, probes,
//! resets); this module only does what a command says, the way
//! [`LocalBus`](switchboard_core::server::LocalBus) does it in memory:
//!
//! - `Publish` is one call of the `switchboard_publish` function (`functions.lua`, loaded with
//!   `FUNCTION LOAD REPLACE` at every connect, since a Redis restarted without persistence has
//!   lost it): idempotency key, offset, history entry, expiries and `PUBLISH`, atomically.
//! - `Subscribe` reads each channel's top (`HMGET <channel>:m epoch top`, pipelined) **before**
//!   subscribing, so that a message published in between shows up as a gap, never as silently
//!   skipped.
//! - `Read` is one call of `switchboard_read` (top and history at one instant).
//! - `Probe` is a plain `PUBLISH` the hub expects back on its own probe channel.
//! - `SaveSession`, `ClaimSession` are calls of `switchboard_save_session` (never overwrites a
//!   later claim) and `switchboard_claim_session` (owner, generation and the takeover notice to
//!   the previous owner, atomically); `DropSession` is a `DEL`.
//! - `RenewSubscriber` replaces the subscriber connection; the hub then subscribes everything
//!   again itself (fred's own resubscription is not used: the hub owns the set).
//!
//! # Why a thread of its own
//!
//! fred needs tokio: its command timeouts are `tokio::time::timeout`, which panics outside a
//! tokio runtime, and the server runs on smol. So every fred client lives on one dedicated OS
//! thread with a current-thread tokio runtime ([`bridge`]), no fred future is ever awaited on
//! smol, and the two sides talk through **bounded** `async-channel`s, which work from both
//! runtimes:
//!
//! - driver → bridge: commands. The driver never waits on this queue: when it is full (Redis
//!   too slow for the load), the command is answered at once as failed ([`refused`]) and the
//!   hub's retry logic stays in charge, exactly as for a Redis error.
//! - bridge → driver: events. The bridge waits when the driver is behind; Redis messages then
//!   pile up in fred's receive queue, and past its capacity the hub is told it
//!   [lagged](BusEvent::Lagged) and sweeps every channel against the history.
//!
//! # The link
//!
//! The hub starts with the link down. [`BusEvent::LinkUp`] is sent once the command connection
//! is up with the functions loaded and the subscriber connection is up; [`BusEvent::LinkDown`]
//! when either goes down. A subscriber that reconnected has lost its subscriptions, so its
//! reconnection is always reported as down-then-up: the hub then subscribes everything again
//! and sweeps its cursors.

mod bridge;
mod session;

use crate::config::RedisSettings;
use crate::metrics::Metrics;
use async_channel::{Receiver, Sender};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use switchboard_core::server::{BusCommand, BusError, BusEvent};

/// Commands waiting for the bridge, at most; past that the driver answers them as failed.
const COMMAND_QUEUE: usize = 65_536;
/// Events waiting for the driver, at most; past that the bridge waits.
const EVENT_QUEUE: usize = 65_536;

/// The functions: one atomic publish, one consistent read.
pub(crate) const FUNCTIONS: &str = include_str!("functions.lua");

/// One shard's running bridge, as the smol side holds it.
#[derive(Debug)]
pub struct Bus {
    /// Where the driver puts the hub's commands (never waiting: see [`refused`]).
    pub commands: Sender<BusCommand>,
    /// What the bridge has to tell the hub, in order.
    pub events: Receiver<BusEvent>,
    /// The link as the bridge sees it, for `/healthz` and the test hook.
    pub status: Arc<Status>,
}

/// What the bridge shares with the HTTP side.
#[derive(Debug, Default)]
pub struct Status {
    up: AtomicBool,
    /// Why the link is down (the last error seen).
    problem: Mutex<String>,
    /// The subscriber connection in use (numbered from 1; a renewal takes the next number).
    subscriber: AtomicU64,
    /// A subscriber connection that drops everything it receives (the test hook), or 0.
    deaf: AtomicU64,
}

impl Status {
    /// Whether the link is up (as last reported to the hub).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Why the link is down.
    pub fn problem(&self) -> String {
        self.problem.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// The test hook: the subscriber connection in use drops every message it receives from
    /// now on, until it is renewed (the hub's probe must notice).
    pub fn deafen(&self) {
        self.deaf.store(self.subscriber.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    pub(crate) fn set_up(&self, up: bool, problem: &str) {
        self.up.store(up, Ordering::Relaxed);
        if let Ok(mut p) = self.problem.lock() {
            problem.clone_into(&mut p);
        }
    }

    fn is_deaf(&self, subscriber: u64) -> bool {
        self.deaf.load(Ordering::Relaxed) == subscriber
    }
}

/// Whether `url` is a Redis URL fred accepts (checked when the settings are resolved, so that
/// a typo fails at start rather than as a link that never comes up).
pub fn check_url(url: &str) -> Result<(), String> {
    // fred reads other schemes as plain TCP too; TLS (`rediss://`) is not built in.
    if !url.starts_with("redis://") {
        return Err("a redis:// URL is needed (redis://[:password@]host[:port][/db])".into());
    }
    fred::types::config::Config::from_url(url).map(|_| ()).map_err(|e| e.details().to_string())
}

/// Starts one bridge thread per shard (each `--redis-url`), in order. Redis need not be up:
/// each bridge keeps trying, and the hub serves local traffic meanwhile.
pub fn start(settings: &RedisSettings, metrics: Arc<Metrics>) -> Result<Vec<Bus>, String> {
    let mut buses = Vec::new();
    for (shard, url) in settings.urls.iter().enumerate() {
        let (commands, inbox) = async_channel::bounded(COMMAND_QUEUE);
        let (outbox, events) = async_channel::bounded(EVENT_QUEUE);
        let status = Arc::new(Status::default());
        let config = bridge::Config::new(url, settings)?;
        let (shared, metrics) = (status.clone(), metrics.clone());
        std::thread::Builder::new()
            .name(format!("switchboard-redis-{shard}"))
            .spawn(move || bridge::run(config, inbox, outbox, shared, metrics))
            .map_err(|e| format!("cannot start the Redis thread: {e}"))?;
        buses.push(Bus { commands, events, status });
    }
    Ok(buses)
}

/// The answer to a command the bridge could not take (its queue is full, or it is gone): a
/// failure for those the hub waits an answer to, nothing for the others.
pub fn refused(command: BusCommand) -> Option<BusEvent> {
    let error = || BusError("the Redis bridge's queue is full".into());
    match command {
        BusCommand::Publish { key, .. } => Some(BusEvent::Published { key, result: Err(error()) }),
        BusCommand::Subscribe { batch, .. } => {
            Some(BusEvent::Subscribed { batch, result: Err(error()) })
        }
        BusCommand::Read { request, .. } => {
            Some(BusEvent::History { request, result: Err(error()) })
        }
        BusCommand::ClaimSession { request, .. } => {
            Some(BusEvent::Claimed { request, result: Err(error()) })
        }
        BusCommand::Unsubscribe { .. }
        | BusCommand::Probe { .. }
        | BusCommand::RenewSubscriber
        | BusCommand::SaveSession { .. }
        | BusCommand::DropSession { .. } => None,
    }
}

/// A command's kind, as metrics label it.
pub fn kind(command: &BusCommand) -> &'static str {
    match command {
        BusCommand::Publish { .. } => "publish",
        BusCommand::Subscribe { .. } => "subscribe",
        BusCommand::Unsubscribe { .. } => "unsubscribe",
        BusCommand::Read { .. } => "read",
        BusCommand::Probe { .. } => "probe",
        BusCommand::RenewSubscriber => "renew_subscriber",
        BusCommand::SaveSession { .. } => "save_session",
        BusCommand::ClaimSession { .. } => "claim_session",
        BusCommand::DropSession { .. } => "drop_session",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::protocol::Id;

    #[test]
    fn commands_that_wait_for_an_answer_are_answered_when_refused() {
        let key = Id::new("m-1").unwrap();
        let publish = BusCommand::Publish {
            channel: "c".into(),
            key: key.clone(),
            message: "{}".into(),
            after: None,
        };
        assert!(matches!(
            refused(publish),
            Some(BusEvent::Published { key: k, result: Err(_) }) if k == key
        ));
        let subscribe = BusCommand::Subscribe { batch: 7, channels: vec!["c".into()] };
        assert!(matches!(
            refused(subscribe),
            Some(BusEvent::Subscribed { batch: 7, result: Err(_) })
        ));
        let read = BusCommand::Read { request: 3, channel: "c".into(), after: 0, limit: 1 };
        assert!(matches!(refused(read), Some(BusEvent::History { request: 3, result: Err(_) })));
        assert_eq!(refused(BusCommand::Probe { channel: "p".into(), token: 1 }), None);
        assert_eq!(refused(BusCommand::RenewSubscriber), None);
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("redis://127.0.0.1:6379").is_ok());
        assert!(check_url("redis://:secret@127.0.0.1:6379/2").is_ok());
        assert!(check_url("http://example.com").is_err());
    }

    #[test]
    fn the_functions_name_the_library_and_both_functions() {
        assert!(FUNCTIONS.starts_with("#!lua name=switchboard\n"));
        assert!(FUNCTIONS.contains("'switchboard_publish'"));
        assert!(FUNCTIONS.contains("'switchboard_read'"));
        assert!(FUNCTIONS.contains("'switchboard_save_session'"));
        assert!(FUNCTIONS.contains("'switchboard_claim_session'"));
    }
}
