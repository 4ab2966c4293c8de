//! Several buses side by side (Redis shards): each channel, with its history, positions and
//! pub/sub, lives on one shard, picked by a consistent hash of the channel; each session's
//! record lives on the shard its key hashes to. The hub keeps one [`Link`] per shard, and each
//! link is exactly what it is with one bus: its own connection state, subscriptions, probe,
//! retries and publish queue. A shard that goes down degrades its own channels only.
//!
//! The hash is public (README.md, "Sharding") so that a backend publishing through the
//! function directly finds the right shard: [`shard_of`] of the name inside the braces
//! (`conversation:c-1`, `user:alice`, `broadcast`, `session:<connection id>`), over the
//! `--redis-url`s in the order given. Jump consistent hash: going from N to N+1 shards moves
//! only 1/(N+1) of the channels.

use super::link::{Delivery, Link};
use super::{BusCommand, BusEvent, Channel, RemoteMessage, SessionRecord, Top, fnv1a};
use crate::protocol::Id;
use crate::server::config::BusConfig;
use crate::time::Instant;
use std::time::Duration;

/// The shard (of `shards`) that `name` (a channel's or session's name inside the braces)
/// lives on: jump consistent hash (Lamping and Veach, 2014) of its 64-bit FNV-1a hash.
pub fn shard_of(name: &str, shards: usize) -> usize {
    let mut key = fnv1a(name.as_bytes());
    let (mut bucket, mut next) = (0_i64, 0_i64);
    while next < shards as i64 {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        next = ((bucket + 1) as f64 * ((1_u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    bucket as usize
}

/// One link per shard.
#[derive(Debug)]
pub(crate) struct Links {
    links: Vec<Link>,
    /// The link whose deliveries are taken first next time (so no shard starves the others).
    next_delivery: usize,
}

impl Links {
    pub fn new(config: &BusConfig, prefix: &str, origin: &Id, seed: u64) -> Self {
        let shards = if config.shared { config.shards.max(1) } else { 1 };
        let links = (0..shards)
            .map(|shard| {
                let seed = seed.wrapping_add(shard as u64);
                Link::new(config.clone(), prefix, origin.clone(), seed, shard, shards)
            })
            .collect();
        Links { links, next_delivery: 0 }
    }

    /// The shard `name` (made only when there are several) lives on.
    fn shard(&self, name: impl FnOnce() -> String) -> usize {
        match self.links.len() {
            1 => 0,
            shards => shard_of(&name(), shards),
        }
    }

    fn of(&mut self, channel: &Channel) -> &mut Link {
        let shard = self.shard(|| channel.wire());
        &mut self.links[shard]
    }

    fn of_ref(&self, channel: &Channel) -> &Link {
        &self.links[self.shard(|| channel.wire())]
    }

    /// The shard a session's record lives on.
    pub fn shard_of_session(&self, connection_id: &Id) -> usize {
        self.shard(|| format!("session:{connection_id}"))
    }

    fn of_session(&mut self, connection_id: &Id) -> &mut Link {
        let shard = self.shard_of_session(connection_id);
        &mut self.links[shard]
    }

    /// Whether every shard's link is up with every subscription confirmed.
    pub fn is_healthy(&self) -> bool {
        self.links.iter().all(Link::is_healthy)
    }

    pub fn has(&self, channel: &Channel) -> bool {
        self.of_ref(channel).has(channel)
    }

    pub fn subscriptions(&self) -> usize {
        self.links.iter().map(Link::subscriptions).sum()
    }

    pub fn pending_publishes(&self) -> usize {
        self.links.iter().map(Link::pending_publishes).sum()
    }

    /// The next command, with the shard it is for.
    pub fn poll_command(&mut self) -> Option<(usize, BusCommand)> {
        self.links.iter_mut().enumerate().find_map(|(shard, l)| Some((shard, l.poll_command()?)))
    }

    pub fn poll_delivery(&mut self) -> Option<Delivery> {
        let count = self.links.len();
        for i in 0..count {
            let shard = (self.next_delivery + i) % count;
            if let Some(delivery) = self.links[shard].poll_delivery() {
                self.next_delivery = (shard + 1) % count;
                return Some(delivery);
            }
        }
        None
    }

    pub fn want(&mut self, now: Instant, channel: Channel) {
        self.of(&channel).want(now, channel);
    }

    pub fn release(&mut self, now: Instant, channel: &Channel) {
        self.of(channel).release(now, channel);
    }

    /// Subscribe batches confirmed so far, over every shard.
    pub fn confirmed_batches(&self) -> u64 {
        self.links.iter().map(Link::confirmed_batches).sum()
    }

    pub fn is_subscribed(&self, channel: &Channel) -> bool {
        self.of_ref(channel).is_subscribed(channel)
    }

    pub fn subscription_pending(&self, channel: &Channel) -> bool {
        self.of_ref(channel).subscription_pending(channel)
    }

    pub fn position(&self, channel: &Channel) -> Option<Top> {
        self.of_ref(channel).position(channel)
    }

    pub fn save_session(&mut self, connection_id: &Id, record: SessionRecord, ttl: Duration) {
        self.of_session(connection_id).save_session(connection_id, record, ttl);
    }

    pub fn drop_session(&mut self, connection_id: &Id) {
        self.of_session(connection_id).drop_session(connection_id);
    }

    pub fn claim_session(&mut self, now: Instant, connection_id: &Id) -> Option<u64> {
        self.of_session(connection_id).claim_session(now, connection_id)
    }

    pub fn read_history(&mut self, now: Instant, channel: &Channel, after: u64) -> Option<u64> {
        self.of(channel).read_history(now, channel, after)
    }

    pub fn read_limit(&self) -> usize {
        self.links[0].read_limit()
    }

    pub fn shut_down(&mut self, now: Instant) {
        self.links.iter_mut().for_each(|l| l.shut_down(now));
    }

    pub fn publish(&mut self, now: Instant, channel: Channel, message: RemoteMessage) {
        self.of(&channel).publish(now, channel, message);
    }

    /// What shard `shard`'s bus said (an event for a shard that does not exist is dropped).
    pub fn handle_event(&mut self, now: Instant, shard: usize, event: BusEvent) {
        if let Some(link) = self.links.get_mut(shard) {
            link.handle_event(now, event);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.links.iter().filter_map(Link::poll_timeout).min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.links.iter_mut().for_each(|l| l.handle_timeout(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_takes_everything_and_the_hash_is_stable() {
        assert_eq!(shard_of("conversation:c-1", 1), 0);
        // README.md's reference values for backends computing the shard themselves (checked
        // against an independent implementation in Python).
        let names = ["conversation:c-1", "conversation:c-2", "conversation:c-3", "user:alice"];
        let of = |shards| names.iter().map(|n| shard_of(n, shards)).collect::<Vec<_>>();
        assert_eq!(of(2), [1, 1, 0, 1]);
        assert_eq!(of(3), [1, 2, 0, 2]);
        assert_eq!(of(4), [3, 3, 0, 2]);
    }

    #[test]
    fn growing_by_one_shard_moves_about_one_in_n_and_only_to_the_new_one() {
        let names: Vec<String> = (0..10_000).map(|i| format!("conversation:c-{i}")).collect();
        for shards in 1..8 {
            let mut moved = 0_usize;
            let mut counts = vec![0_usize; shards + 1];
            for name in &names {
                let (before, after) = (shard_of(name, shards), shard_of(name, shards + 1));
                counts[after] += 1;
                if before != after {
                    assert_eq!(after, shards, "{name} moved between old shards");
                    moved += 1;
                }
            }
            let expected = names.len() / (shards + 1);
            assert!(moved.abs_diff(expected) < expected / 5, "{shards}→{}: {moved}", shards + 1);
            assert!(counts.iter().all(|&c| c.abs_diff(expected) < expected / 5), "{counts:?}");
        }
    }
}
