//! The bus between the hubs of one process (`--threads` above 1, no Redis): the core's
//! [`LocalBus`] on a thread of its own.
//!
//! Each hub gets a [`Bus`] shaped like a Redis bridge's: a bounded queue of commands in, a
//! bounded queue of events out. The thread carries out the commands one at a time, each
//! atomically, and hands each hub its events in the order they happened: the channel
//! semantics of the Redis functions (positions, per-channel order, history for gap repair,
//! session records and takeovers), without a network. A hub slow to take its events holds the
//! thread up, as a slow hub holds up its Redis bridge: nothing is dropped.

use crate::driver::Clock;
use crate::redis::{Bus, Status};
use async_channel::{Receiver, Sender};
use futures_util::StreamExt as _;
use std::sync::Arc;
use std::time::Duration;
use switchboard_core::server::{BusCommand, BusEvent, LocalBus};

/// Commands a hub may have waiting for the bus (beyond them, its driver fails the command
/// at once and the hub retries, as with a full Redis bridge).
const COMMAND_QUEUE: usize = 65_536;
/// Events waiting for a hub to take them.
const EVENT_QUEUE: usize = 65_536;
/// How often the bus forgets what outlived its time to live (at most).
const EXPIRY_INTERVAL: Duration = Duration::from_secs(60);

/// Starts the bus for `hubs` hubs, keeping `history_len` messages per channel for
/// `history_ttl` after its last one; epochs are drawn from `seed`.
pub fn start(
    hubs: usize,
    history_len: usize,
    history_ttl: Duration,
    seed: u64,
) -> Result<Vec<Bus>, String> {
    let mut buses = Vec::with_capacity(hubs);
    let mut inboxes = Vec::with_capacity(hubs);
    let mut outboxes = Vec::with_capacity(hubs);
    for _ in 0..hubs {
        let (commands, inbox) = async_channel::bounded(COMMAND_QUEUE);
        let (outbox, events) = async_channel::bounded(EVENT_QUEUE);
        // Up from the start, and for good: nothing lies between the hubs and this bus.
        let _ = outbox.try_send(BusEvent::LinkUp);
        let status = Arc::new(Status::default());
        status.set_up(true, "");
        buses.push(Bus { commands, events, status });
        inboxes.push(inbox);
        outboxes.push(outbox);
    }
    let bus = LocalBus::new(seed, history_len).with_history_ttl(history_ttl);
    let every = history_ttl.min(EXPIRY_INTERVAL);
    std::thread::Builder::new()
        .name("switchboard-bus".into())
        .spawn(move || smol::block_on(run(bus, inboxes, outboxes, every)))
        .map_err(|e| format!("cannot start the bus thread: {e}"))?;
    Ok(buses)
}

/// Carries out the hubs' commands until every hub is gone.
async fn run(
    mut bus: LocalBus,
    inboxes: Vec<Receiver<BusCommand>>,
    outboxes: Vec<Sender<BusEvent>>,
    expire_every: Duration,
) {
    let clock = Clock::start();
    let mut commands = futures_util::stream::select_all(
        inboxes.into_iter().enumerate().map(|(hub, inbox)| Box::pin(inbox.map(move |c| (hub, c)))),
    );
    let mut expire_at = std::time::Instant::now() + expire_every;
    loop {
        let next = smol::future::or(async { Some(commands.next().await) }, async {
            smol::Timer::at(expire_at).await;
            None
        })
        .await;
        bus.set_time(clock.now());
        match next {
            None => {
                bus.expire();
                expire_at = std::time::Instant::now() + expire_every;
            }
            Some(None) => return,
            Some(Some((hub, command))) => {
                for (to, event) in bus.execute(hub, command) {
                    // A hub that is gone (its server is shutting down) needs nothing more.
                    if let Some(outbox) = outboxes.get(to) {
                        let _ = outbox.send(event).await;
                    }
                }
            }
        }
    }
}
