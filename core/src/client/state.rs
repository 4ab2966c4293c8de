//! The client's states (DESIGN.md §2).

/// Where the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientState {
    /// Never connected.
    Disconnected,
    /// A socket is opening (or a token is being fetched for it).
    Connecting,
    /// The socket is open; waiting for `established` (and `resumed`).
    Connected,
    /// Messages flow.
    Active,
    /// The socket was lost; the next attempt is scheduled.
    Reconnecting,
    /// Stopped: after `disconnect()`, a do-not-reconnect code, or the attempt limit.
    Closed,
}

impl ClientState {
    /// The state's name as the browser's `statechange` event spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Disconnected => "disconnected",
            ClientState::Connecting => "connecting",
            ClientState::Connected => "connected",
            ClientState::Active => "active",
            ClientState::Reconnecting => "reconnecting",
            ClientState::Closed => "closed",
        }
    }
}
