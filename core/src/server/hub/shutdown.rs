//! Graceful shutdown: every client told when to come back, every socket closed, then drained.

use super::Hub;
use super::session::Key;
use crate::protocol::{CloseCode, CloseReason, ConnectionClose, SystemMessage};
use crate::server::io::{HubEvent, Output};
use crate::server::state::ConnectionState;
use crate::time::Instant;

impl Hub {
    pub(super) fn handle_shutdown(&mut self, now: Instant) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        let keys: Vec<Key> = self.sessions.keys().copied().collect();
        let spread = self.config.shutdown_spread.as_millis() as u64;
        for key in keys {
            // Its client comes back through another instance, which takes the session over.
            if self.sessions.get(&key).is_some_and(|s| s.is_member()) {
                self.save_record(key, self.config.resume_window);
            }
            let has_socket = self.sessions.get(&key).is_some_and(|s| s.socket.is_some());
            if has_socket && self.sessions[&key].state() != ConnectionState::Connected {
                let retry_after_ms = Some(self.rng.up_to(spread));
                let close = ConnectionClose {
                    reason: CloseReason::ServerShutdown,
                    code: CloseCode::SERVICE_RESTART.0,
                    retry_after_ms,
                };
                self.send_system(now, key, SystemMessage::ConnectionClose(close));
            }
            self.close(now, key, CloseCode::SERVICE_RESTART, "server_shutdown");
            // Nothing survives a shutdown: resumable sessions go too.
            if self.sessions.contains_key(&key) {
                self.end_session(now, key, CloseCode::SERVICE_RESTART, "server_shutdown", false);
            }
        }
        self.timers.clear();
        self.links.shut_down(now);
        self.check_drained();
    }

    /// Drained: every socket closed, and every own publish on the bus (the publish API
    /// acknowledged them; exiting before the bus has them would lose them for everyone). With
    /// the bus unreachable the drain waits until the adapter's grace period ends it.
    pub(super) fn check_drained(&mut self) {
        if self.shutting_down
            && !self.drained
            && self.sockets.is_empty()
            && self.closing.is_empty()
            && self.links.pending_publishes() == 0
        {
            self.drained = true;
            self.outputs.push_back(Output::Event(HubEvent::Drained));
        }
    }
}
