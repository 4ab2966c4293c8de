//! Prometheus metrics, fed from the hub's events and outputs.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use switchboard_core::protocol::Plane;
use switchboard_core::server::{HubEvent, HubStats};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlaneLabel {
    plane: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    /// A close code switchboard knows, or `other`: a client chooses the code it closes with,
    /// and one series per code it invents would be a memory leak.
    code: &'static str,
}

/// The label of close code `code`.
fn code_label(code: u16) -> &'static str {
    macro_rules! known {
        ($($n:literal)*) => {
            match code {
                $($n => stringify!($n),)*
                _ => "other",
            }
        };
    }
    known!(1000 1001 1002 1003 1005 1006 1007 1008 1009 1010 1011 1012 1013 1014
        4000 4001 4002 4003 4004 4005 4006 4008 4009 4010 4011 4012 4013 4014)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// The hub's view of the bus, for `/metrics` and `/healthz` (asked of the driver with its
/// counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusStats {
    /// Own publishes the bus has not answered yet ([`switchboard_core::server::Hub::bus_pending`]).
    pub pending_publishes: usize,
    /// The link is up and every subscription confirmed
    /// ([`switchboard_core::server::Hub::bus_healthy`]).
    pub healthy: bool,
}

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    messages_in: Family<PlaneLabel, Counter>,
    bytes_in: Counter,
    messages_out: Counter,
    bytes_out: Counter,
    closes: Family<CodeLabel, Counter>,
    auth_failures: Family<ReasonLabel, Counter>,
    join_refusals: Family<ReasonLabel, Counter>,
    refused_sockets: Family<ReasonLabel, Counter>,
    session_cap: Family<ReasonLabel, Counter>,
    rate_limited: Counter,
    resume_attempts: Counter,
    resume_successes: Counter,
    resume_replayed: Counter,
    slow_consumers: Counter,
    connections: Family<StateLabel, Gauge>,
    users: Gauge,
    conversations: Gauge,
    outbound_queue_bytes: Gauge,
    open_sockets: Gauge,
    ping_rtt: Histogram,
    bus_up: Gauge,
    bus_pending_publishes: Gauge,
    bus_healthy: Gauge,
    bus_lagged: Counter,
    bus_renewals: Counter,
    bus_failures: Family<KindLabel, Counter>,
    channel_resets: Family<ReasonLabel, Counter>,
}

/// One open WebSocket: counted in `switchboard_open_sockets` until this is dropped.
#[derive(Debug)]
pub struct OpenSocket(Gauge);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("switchboard");
        let m = Metrics {
            messages_in: Family::default(),
            bytes_in: Counter::default(),
            messages_out: Counter::default(),
            bytes_out: Counter::default(),
            closes: Family::default(),
            auth_failures: Family::default(),
            join_refusals: Family::default(),
            refused_sockets: Family::default(),
            session_cap: Family::default(),
            rate_limited: Counter::default(),
            resume_attempts: Counter::default(),
            resume_successes: Counter::default(),
            resume_replayed: Counter::default(),
            slow_consumers: Counter::default(),
            connections: Family::default(),
            users: Gauge::default(),
            conversations: Gauge::default(),
            outbound_queue_bytes: Gauge::default(),
            open_sockets: Gauge::default(),
            ping_rtt: Histogram::new([
                1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
            ]),
            bus_up: Gauge::default(),
            bus_pending_publishes: Gauge::default(),
            bus_healthy: Gauge::default(),
            bus_lagged: Counter::default(),
            bus_renewals: Counter::default(),
            bus_failures: Family::default(),
            channel_resets: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "messages_in",
            "Client frames received, by type plane",
            m.messages_in.clone(),
        );
        registry.register("bytes_in", "Bytes of client frames received", m.bytes_in.clone());
        registry.register("messages_out", "Frames sent to clients", m.messages_out.clone());
        registry.register("bytes_out", "Bytes of frames sent to clients", m.bytes_out.clone());
        registry.register("closes", "Connections closed, by close code", m.closes.clone());
        registry.register(
            "auth_failures",
            "Refused credentials, by reason",
            m.auth_failures.clone(),
        );
        registry.register(
            "join_refusals",
            "Joins the authorizer refused, by reason",
            m.join_refusals.clone(),
        );
        registry.register(
            "refused_sockets",
            "TCP connections closed before an upgrade: over a cap, or too slow with their headers",
            m.refused_sockets.clone(),
        );
        registry.register(
            "session_cap",
            "Users at their session cap: a waiting session let go (evicted) or the new one refused",
            m.session_cap.clone(),
        );
        registry.register(
            "rate_limited",
            "Client messages refused by the rate limiter",
            m.rate_limited.clone(),
        );
        registry.register("resume_attempts", "Resumes asked for", m.resume_attempts.clone());
        registry.register("resume_successes", "Resumes granted", m.resume_successes.clone());
        registry.register(
            "resume_replayed",
            "Messages replayed by resumes",
            m.resume_replayed.clone(),
        );
        registry.register(
            "slow_consumers",
            "Connections cut off for not reading",
            m.slow_consumers.clone(),
        );
        registry.register("connections", "Sessions, by state", m.connections.clone());
        registry.register("users", "Users with a session here", m.users.clone());
        registry.register(
            "conversations",
            "Conversations with a member here",
            m.conversations.clone(),
        );
        registry.register(
            "outbound_queue_bytes",
            "Bytes sent to sockets and not yet written",
            m.outbound_queue_bytes.clone(),
        );
        registry.register(
            "open_sockets",
            "WebSockets this process holds, closing ones included (their tasks and TCP sockets)",
            m.open_sockets.clone(),
        );
        registry.register("ping_rtt_milliseconds", "Heartbeat round trips", m.ping_rtt.clone());
        registry.register(
            "bus_up",
            "Shards of the bus between instances whose link is up (always 1 without Redis)",
            m.bus_up.clone(),
        );
        registry.register(
            "bus_pending_publishes",
            "Own publishes the bus has not answered yet",
            m.bus_pending_publishes.clone(),
        );
        registry.register(
            "bus_healthy",
            "Whether the bus link is up and every subscription confirmed",
            m.bus_healthy.clone(),
        );
        registry.register(
            "bus_lagged",
            "Times the Redis subscriber's receive queue overflowed (messages dropped; every channel swept)",
            m.bus_lagged.clone(),
        );
        registry.register(
            "bus_subscriber_renewals",
            "Redis subscriber connections replaced because the probe found them deaf",
            m.bus_renewals.clone(),
        );
        registry.register(
            "bus_command_failures",
            "Bus commands that failed (Redis error, timeout, or the bridge's queue full), by kind",
            m.bus_failures.clone(),
        );
        registry.register(
            "channel_resets",
            "Channels whose local members were told that messages may be missing, by reason",
            m.channel_resets.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts one event.
    pub fn event(&self, event: &HubEvent) {
        match event {
            HubEvent::Received { plane, bytes } => {
                let plane = plane.map_or("invalid", Plane::as_str);
                self.messages_in.get_or_create(&PlaneLabel { plane }).inc();
                self.bytes_in.inc_by(*bytes as u64);
            }
            HubEvent::ConnectionClosed { code, .. } => {
                self.closes.get_or_create(&CodeLabel { code: code_label(code.0) }).inc();
            }
            HubEvent::Disconnected { code, .. } => {
                let code = code_label(code.map_or(1006, |c| c.0));
                self.closes.get_or_create(&CodeLabel { code }).inc();
            }
            HubEvent::AuthFailed { reason } => {
                self.auth_failures.get_or_create(&ReasonLabel { reason: reason.as_str() }).inc();
            }
            HubEvent::JoinRefused { refusal, .. } => {
                self.join_refusals.get_or_create(&ReasonLabel { reason: refusal.as_str() }).inc();
            }
            HubEvent::SessionCap { evicted, .. } => {
                let reason = if *evicted { "evicted" } else { "refused" };
                self.session_cap.get_or_create(&ReasonLabel { reason }).inc();
            }
            HubEvent::RateLimited { .. } => {
                self.rate_limited.inc();
            }
            HubEvent::Resumed { replayed, state_valid, .. } => {
                self.resume_attempts.inc();
                if *state_valid {
                    self.resume_successes.inc();
                    self.resume_replayed.inc_by(*replayed);
                }
            }
            HubEvent::PingRoundTrip { millis, .. } => self.ping_rtt.observe(*millis as f64),
            HubEvent::SlowConsumer { .. } => {
                self.slow_consumers.inc();
            }
            HubEvent::ChannelReset { reason, .. } => {
                self.channel_resets.get_or_create(&ReasonLabel { reason }).inc();
            }
            _ => {}
        }
    }

    /// Counts a TCP connection closed before its upgrade, for `reason`.
    pub fn refused_socket(&self, reason: &'static str) {
        self.refused_sockets.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts a WebSocket as open until the returned guard is dropped.
    pub fn socket_opened(&self) -> OpenSocket {
        self.open_sockets.inc();
        OpenSocket(self.open_sockets.clone())
    }

    /// Without Redis: the bus (in process) is up for good.
    pub fn set_bus_up(&self) {
        self.bus_up.set(1);
    }

    /// A shard's link came up (`true`) or went down (`false`), after being the other way.
    pub fn bus_shard_up(&self, up: bool) {
        if up {
            self.bus_up.inc()
        } else {
            self.bus_up.dec()
        };
    }

    /// Counts an overflow of the Redis subscriber's receive queue.
    pub fn bus_lagged(&self) {
        self.bus_lagged.inc();
    }

    /// Counts a renewal of the Redis subscriber connection.
    pub fn bus_renewal(&self) {
        self.bus_renewals.inc();
    }

    /// Counts a failed bus command of `kind` (`publish`, `subscribe`, `read`, ...).
    pub fn bus_failure(&self, kind: &'static str) {
        self.bus_failures.get_or_create(&KindLabel { kind }).inc();
    }

    /// Counts frames sent (handed to sockets' writers).
    pub fn sent(&self, frames: u64, bytes: u64) {
        self.messages_out.inc_by(frames);
        self.bytes_out.inc_by(bytes);
    }

    /// The Prometheus text exposition, with the gauges taken from `stats` and `bus`.
    pub fn render(&self, stats: &HubStats, bus: BusStats) -> String {
        self.bus_pending_publishes.set(bus.pending_publishes as i64);
        self.bus_healthy.set(i64::from(bus.healthy));
        for state in switchboard_core::server::ConnectionState::ALL {
            let count = stats.by_state.get(state.as_str()).copied().unwrap_or(0);
            self.connections.get_or_create(&StateLabel { state: state.as_str() }).set(count as i64);
        }
        self.users.set(stats.users as i64);
        self.conversations.set(stats.conversations as i64);
        self.outbound_queue_bytes.set(stats.outbound_bytes as i64);
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_a_client_invents_share_one_label() {
        assert_eq!(code_label(4013), "4013");
        assert_eq!(code_label(1000), "1000");
        assert_eq!(code_label(4999), "other");
        assert_eq!(code_label(3000), "other");
        for code in switchboard_core::protocol::CloseCode::KNOWN {
            assert_eq!(code_label(code.0), code.0.to_string(), "every known code has its label");
        }
    }
}
