//! The MessageBus (F1.4 in the Phase 1 plan): which subscribers get a message.
//!
//! The core keeps only patterns and handler ids; adapters own the callbacks. Order: exact
//! subscriptions first, then patterns from the most to the least specific, `*` last; within a
//! rank, in order of subscription. A `subscribe_once` subscription is removed when it first
//! matches.

use crate::protocol::{PatternError, Specificity, TypePattern};

/// A subscription's handle, for unsubscribing and for adapters to find their callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(pub u64);

#[derive(Debug, Clone)]
struct Subscription {
    id: SubscriptionId,
    pattern: TypePattern,
    once: bool,
}

/// Pattern subscriptions.
#[derive(Debug, Clone, Default)]
pub struct MessageBus {
    subscriptions: Vec<Subscription>,
    next_id: u64,
}

impl MessageBus {
    /// Subscribes to types matching `pattern`; keep the id to unsubscribe.
    pub fn subscribe(&mut self, pattern: &str) -> Result<SubscriptionId, PatternError> {
        self.add(pattern, false)
    }

    /// Subscribes for the first matching message only.
    pub fn subscribe_once(&mut self, pattern: &str) -> Result<SubscriptionId, PatternError> {
        self.add(pattern, true)
    }

    fn add(&mut self, pattern: &str, once: bool) -> Result<SubscriptionId, PatternError> {
        let pattern = TypePattern::new(pattern)?;
        self.next_id += 1;
        let id = SubscriptionId(self.next_id);
        self.subscriptions.push(Subscription { id, pattern, once });
        Ok(id)
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&mut self, id: SubscriptionId) -> bool {
        let before = self.subscriptions.len();
        self.subscriptions.retain(|s| s.id != id);
        self.subscriptions.len() != before
    }

    /// The subscribers of a message of `message_type`, in delivery order. One-time
    /// subscriptions among them are removed.
    pub fn publish(&mut self, message_type: &str) -> Vec<SubscriptionId> {
        // Most specific first; within a rank, in subscription order. Placed one by one after
        // every one at least as specific (an insertion, not a sort: a message matches a handful
        // of subscriptions, and the browser build stays small).
        let mut ranked: Vec<(Specificity, SubscriptionId)> = Vec::new();
        for s in self.subscriptions.iter().filter(|s| s.pattern.matches(message_type)) {
            let rank = s.pattern.specificity();
            let at = ranked.iter().position(|(r, _)| *r < rank).unwrap_or(ranked.len());
            ranked.insert(at, (rank, s.id));
        }
        let ids: Vec<SubscriptionId> = ranked.into_iter().map(|(_, id)| id).collect();
        self.subscriptions.retain(|s| !(s.once && ids.contains(&s.id)));
        ids
    }

    /// Subscriptions held.
    pub fn len(&self) -> usize {
        self.subscriptions.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.subscriptions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_exact_then_patterns_then_star() {
        let mut bus = MessageBus::default();
        let star = bus.subscribe("*").unwrap();
        let data = bus.subscribe("data.*").unwrap();
        let exact = bus.subscribe("data.widget.submit").unwrap();
        let widget = bus.subscribe("data.widget.*").unwrap();
        let exact2 = bus.subscribe("data.widget.submit").unwrap();
        let other = bus.subscribe("control.*").unwrap();
        assert_eq!(bus.publish("data.widget.submit"), [exact, exact2, widget, data, star]);
        assert_eq!(bus.publish("control.flow.pause"), [other, star]);
        assert!(bus.unsubscribe(star));
        assert!(!bus.unsubscribe(star));
        assert_eq!(bus.publish("system.ping"), []);
        assert!(bus.subscribe("data.*.x").is_err());
    }

    #[test]
    fn once_subscriptions_fire_once() {
        let mut bus = MessageBus::default();
        let once = bus.subscribe_once("data.*").unwrap();
        let always = bus.subscribe("data.*").unwrap();
        assert_eq!(bus.publish("data.a.b"), [once, always]);
        assert_eq!(bus.publish("data.a.b"), [always]);
        assert_eq!(bus.len(), 1);
        assert!(!bus.is_empty());
    }
}
