//! Which TCP connections may come in: at most so many still in their HTTP phase (not yet
//! upgraded, or between keep-alive requests), and at most so many from one IP address. Beyond
//! either cap a new connection is closed at once, before a byte is read: a flood of silent or
//! trickling sockets costs the server a counter, not memory and tasks.
//!
//! Behind a proxy (`--trust-forwarded-for`), the proxy's own address says nothing: its
//! connections are counted by the client address in `X-Forwarded-For` once the request is
//! read, and refused with 429 over the cap.

use crate::config::HttpLimits;
use crate::metrics::Metrics;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The counters behind the caps, shared by every thread's listener.
#[derive(Debug)]
pub struct Admission {
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    pending: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection in its HTTP phase: counted until dropped.
#[derive(Debug)]
pub struct Pending(Arc<Admission>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket counted against its IP address's cap until dropped (it follows the socket through
/// the upgrade).
#[derive(Debug)]
pub struct FromIp(Arc<Admission>, IpAddr);

impl Drop for FromIp {
    fn drop(&mut self) {
        let mut per_ip = self.0.per_ip();
        if let Some(count) = per_ip.get_mut(&self.1) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.1);
            }
        }
    }
}

impl Admission {
    pub fn new(limits: HttpLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            metrics,
            pending: AtomicUsize::new(0),
            per_ip: Mutex::default(),
        })
    }

    /// The count per address (a poisoned lock still holds counts that are right: every
    /// change under it is one statement).
    fn per_ip(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_ip.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The limits.
    pub fn limits(&self) -> &HttpLimits {
        &self.limits
    }

    /// Admits a connection from `peer`, or says which cap refuses it (and counts the refusal).
    /// A trusted proxy's connections are not counted by address here (see
    /// [`Admission::admit_forwarded`]).
    pub fn admit(
        self: &Arc<Self>,
        peer: IpAddr,
    ) -> Result<(Pending, Option<FromIp>), &'static str> {
        // Taken first and given back on refusal: two threads cannot both take the last place.
        if self.pending.fetch_add(1, Ordering::Relaxed) >= self.limits.max_pending_upgrades {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(self.refuse("pending_upgrades"));
        }
        let pending = Pending(self.clone());
        let from_ip = if self.limits.trust_forwarded_for.contains(&peer) {
            None
        } else {
            Some(self.count_ip(peer)?)
        };
        Ok((pending, from_ip))
    }

    /// Counts a trusted proxy's request by the client address its `X-Forwarded-For` names
    /// (the rightmost address that is not a trusted proxy).
    pub fn admit_forwarded(
        self: &Arc<Self>,
        forwarded_for: &str,
    ) -> Result<Option<FromIp>, &'static str> {
        let client = forwarded_for
            .rsplit(',')
            .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
            .find(|ip| !self.limits.trust_forwarded_for.contains(ip));
        match client {
            Some(ip) => self.count_ip(ip).map(Some),
            None => Ok(None),
        }
    }

    /// Whether `peer` is a proxy whose `X-Forwarded-For` is believed.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.limits.trust_forwarded_for.contains(&peer)
    }

    fn count_ip(self: &Arc<Self>, ip: IpAddr) -> Result<FromIp, &'static str> {
        let cap = self.limits.max_sockets_per_ip;
        let mut per_ip = self.per_ip();
        let count = per_ip.entry(ip).or_insert(0);
        if cap > 0 && *count >= cap {
            drop(per_ip);
            return Err(self.refuse("per_ip"));
        }
        *count += 1;
        Ok(FromIp(self.clone(), ip))
    }

    fn refuse(&self, reason: &'static str) -> &'static str {
        self.metrics.refused_socket(reason);
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn admission(max_pending: usize, per_ip: usize, trusted: &[&str]) -> Arc<Admission> {
        let limits = HttpLimits {
            header_timeout: Duration::from_secs(10),
            max_pending_upgrades: max_pending,
            max_sockets_per_ip: per_ip,
            trust_forwarded_for: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            api_rate: switchboard_core::server::RateLimit::new(1, Duration::from_secs(1)),
            api_max_body: 1,
        };
        Admission::new(limits, Arc::new(Metrics::default()))
    }

    #[test]
    fn caps_count_and_guards_give_back() {
        let a = admission(3, 2, &[]);
        let ip = "10.0.0.1".parse().unwrap();
        let one = a.admit(ip).unwrap();
        let two = a.admit(ip).unwrap();
        assert_eq!(a.admit(ip).unwrap_err(), "per_ip");
        let other = a.admit("10.0.0.2".parse().unwrap()).unwrap();
        assert_eq!(a.admit("10.0.0.3".parse().unwrap()).unwrap_err(), "pending_upgrades");
        drop(one);
        assert!(a.admit(ip).is_ok(), "a closed socket gives its place back");
        drop((two, other));
        // Upgraded: the HTTP phase is over, the address still counts.
        let (pending, from_ip) = a.admit(ip).unwrap();
        drop(pending);
        let _kept = from_ip;
        assert_eq!(a.pending.load(Ordering::Relaxed), 0);
        assert_eq!(a.per_ip().get(&ip), Some(&1));
    }

    #[test]
    fn a_trusted_proxy_is_counted_by_its_clients() {
        let a = admission(10, 1, &["10.9.9.9"]);
        let proxy = "10.9.9.9".parse().unwrap();
        let (_p1, none) = a.admit(proxy).unwrap();
        assert!(none.is_none());
        let (_p2, _) = a.admit(proxy).unwrap();
        let alice = a.admit_forwarded("203.0.113.7, 10.9.9.9").unwrap();
        assert!(alice.is_some());
        assert_eq!(a.admit_forwarded("203.0.113.7").unwrap_err(), "per_ip");
        assert!(a.admit_forwarded("198.51.100.1, 10.9.9.9").unwrap().is_some());
        assert!(a.admit_forwarded("garbage").unwrap().is_none());
    }
}
