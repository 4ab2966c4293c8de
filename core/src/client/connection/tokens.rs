//! Tokens: asked of the application once at a time, refreshed in band before expiry.

use crate::client::config::TokenSource;
use crate::client::io::ClientOutput;
use crate::client::state::ClientState;
use crate::protocol::SystemMessage;
use crate::time::Instant;
use std::time::Duration;

use super::Client;

/// The shortest time between two token requests made for expiry.
pub(super) const MIN_TOKEN_REQUEST_INTERVAL: Duration = Duration::from_secs(5);

/// A credential: kept, sent, never shown.
pub(super) struct Secret(pub(super) String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Client {
    pub(super) fn handle_token(
        &mut self,
        now: Instant,
        token: String,
        expires_at_unix_ms: Option<i64>,
    ) {
        if self.stopped_by_user || self.config.token != TokenSource::Application {
            return;
        }
        self.token_requested = false;
        let unchanged = self.token.as_ref().map(|t| t.0.as_str()) == Some(token.as_str());
        self.token = Some(Secret(token.clone()));
        self.token_expires_at = expires_at_unix_ms.map(|ms| self.wall.instant_at(ms));
        // Ask again `token_refresh_lead` before expiry; a token that is already that close
        // (an identity library that renews late) is asked for again halfway to its expiry, and
        // never sooner than MIN_TOKEN_REQUEST_INTERVAL, so nothing loops.
        self.token_refresh_at = self.token_expires_at.map(|expires| {
            let lead = expires - self.config.token_refresh_lead;
            if lead > now {
                lead
            } else {
                now + (expires.saturating_since(now) / 2).max(MIN_TOKEN_REQUEST_INTERVAL)
            }
        });
        if unchanged && !self.waiting_for_token {
            return;
        }
        if self.waiting_for_token {
            self.waiting_for_token = false;
            self.open_attempt(now);
        } else if self.state == ClientState::Active {
            let refresh = SystemMessage::AuthRefresh(crate::protocol::AuthRefresh { token });
            let _ = self.send_system(now, refresh, None);
        }
    }

    /// The application's token callback failed. An attempt waiting for the token backs off
    /// (and gives up after the attempt limit) instead of waiting forever; a refresh of a token
    /// that is still good is asked for again a little later.
    pub(super) fn token_failed(&mut self, now: Instant) {
        if self.stopped_by_user || !self.token_requested {
            return;
        }
        self.token_requested = false;
        if std::mem::take(&mut self.waiting_for_token) {
            self.schedule_retry(now, None, "token_unavailable");
        } else if self.has_fresh_token(now) {
            self.token_refresh_at = Some(now + MIN_TOKEN_REQUEST_INTERVAL);
        }
    }

    pub(super) fn has_fresh_token(&self, now: Instant) -> bool {
        self.token.is_some() && self.token_expires_at.is_none_or(|at| at > now)
    }

    pub(super) fn request_token(&mut self) {
        if !self.token_requested {
            self.token_requested = true;
            self.outputs.push_back(ClientOutput::RequestToken);
        }
    }
}
