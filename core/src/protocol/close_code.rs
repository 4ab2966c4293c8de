//! WebSocket close codes and what a client should do after each.

use std::fmt;

/// A WebSocket close code: the standard ones (RFC 6455 §7.4) and switchboard's 4000–4014.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

/// What a client does after its socket closed with a given code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconnectAdvice {
    /// The close is final: reconnecting would fail the same way or undo a deliberate act.
    DoNotReconnect,
    /// The token expired: ask the application for a fresh token, then make one attempt.
    RefreshTokenThenReconnect,
    /// Transient: reconnect with exponential backoff and resume the session.
    ReconnectWithBackoff,
}

macro_rules! close_codes {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $label:literal, $advice:ident;)*) => {
        impl CloseCode {
            $($(#[$doc])* pub const $name: CloseCode = CloseCode($code);)*

            /// Every code switchboard knows by name.
            pub const KNOWN: &'static [CloseCode] = &[$(CloseCode::$name),*];

            /// The code's name (`"heartbeat_timeout"`), if it is one switchboard knows.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($code => Some($label),)*
                    _ => None,
                }
            }

            /// What a client should do after a close with this code. Codes switchboard does not
            /// know are treated as transient.
            pub fn reconnect_advice(self) -> ReconnectAdvice {
                match self.0 {
                    $($code => ReconnectAdvice::$advice,)*
                    _ => ReconnectAdvice::ReconnectWithBackoff,
                }
            }
        }
    };
}

close_codes! {
    /// The conversation or session ended on purpose.
    NORMAL = 1000, "normal", DoNotReconnect;
    /// The peer is going away (server restart, page navigation).
    GOING_AWAY = 1001, "going_away", ReconnectWithBackoff;
    /// The peer broke the WebSocket protocol.
    PROTOCOL_ERROR = 1002, "protocol_error", DoNotReconnect;
    /// A frame of a kind switchboard does not take (binary frames).
    UNSUPPORTED_DATA = 1003, "unsupported_data", DoNotReconnect;
    /// The close frame had no code (never sent, only reported).
    NO_STATUS = 1005, "no_status", ReconnectWithBackoff;
    /// The connection dropped without a close frame (never sent, only reported).
    ABNORMAL = 1006, "abnormal", ReconnectWithBackoff;
    /// A text frame that was not valid UTF-8.
    INVALID_FRAME_PAYLOAD = 1007, "invalid_frame_payload", DoNotReconnect;
    /// A policy was violated (for example a forbidden Origin).
    POLICY_VIOLATION = 1008, "policy_violation", DoNotReconnect;
    /// A frame over the size limit.
    MESSAGE_TOO_BIG = 1009, "message_too_big", DoNotReconnect;
    /// The client required an extension the server does not offer.
    MANDATORY_EXTENSION = 1010, "mandatory_extension", DoNotReconnect;
    /// The server hit an unexpected condition.
    INTERNAL_ERROR = 1011, "internal_error", ReconnectWithBackoff;
    /// The server is restarting (graceful shutdown).
    SERVICE_RESTART = 1012, "service_restart", ReconnectWithBackoff;
    /// The server is overloaded (for example at its connection limit).
    TRY_AGAIN_LATER = 1013, "try_again_later", ReconnectWithBackoff;
    /// A gateway in front of the server failed.
    BAD_GATEWAY = 1014, "bad_gateway", ReconnectWithBackoff;
    /// No credentials, or credentials that failed verification.
    AUTH_FAILED = 4000, "auth_failed", DoNotReconnect;
    /// The token expired (at connect or during the connection).
    TOKEN_EXPIRED = 4001, "token_expired", RefreshTokenThenReconnect;
    /// Authenticated, but not allowed here (for example the conversation).
    FORBIDDEN = 4002, "forbidden", DoNotReconnect;
    /// The conversation does not exist.
    CONVERSATION_NOT_FOUND = 4003, "conversation_not_found", DoNotReconnect;
    /// The conversation is complete; nothing more will happen on it.
    CONVERSATION_COMPLETE = 4004, "conversation_complete", DoNotReconnect;
    /// The user logged out.
    USER_LOGOUT = 4005, "user_logout", DoNotReconnect;
    /// Rate limits were exceeded again and again.
    RATE_LIMITED = 4006, "rate_limited", ReconnectWithBackoff;
    /// Nothing was heard from the client for `maxMissedPongs` heartbeat intervals.
    HEARTBEAT_TIMEOUT = 4008, "heartbeat_timeout", ReconnectWithBackoff;
    /// No authentication verdict arrived in time.
    AUTH_TIMEOUT = 4009, "auth_timeout", ReconnectWithBackoff;
    /// The envelope's `version` is not one this server speaks.
    VERSION_MISMATCH = 4010, "version_mismatch", DoNotReconnect;
    /// Another connection took this session over.
    SESSION_REPLACED = 4011, "session_replaced", DoNotReconnect;
    /// Too many unparseable frames in a row.
    TOO_MANY_INVALID_MESSAGES = 4012, "too_many_invalid_messages", DoNotReconnect;
    /// The client did not read fast enough and its outbound queue overflowed; the session stays
    /// resumable.
    SLOW_CONSUMER = 4013, "slow_consumer", ReconnectWithBackoff;
    /// The server is at capacity.
    SERVER_BUSY = 4014, "server_busy", ReconnectWithBackoff;
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{} ({name})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        CloseCode(code)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> Self {
        code.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReconnectAdvice::*;

    /// The table of DESIGN.md §2, verbatim.
    #[test]
    fn advice_follows_the_design_table() {
        let never = [
            1000, 1002, 1003, 1007, 1008, 1009, 1010, 4000, 4002, 4003, 4004, 4005, 4010, 4011,
            4012,
        ];
        let backoff = [1001, 1005, 1006, 1011, 1012, 1013, 1014, 4006, 4008, 4009, 4013, 4014];
        for code in never {
            assert_eq!(CloseCode(code).reconnect_advice(), DoNotReconnect, "{code}");
        }
        for code in backoff {
            assert_eq!(CloseCode(code).reconnect_advice(), ReconnectWithBackoff, "{code}");
        }
        assert_eq!(CloseCode(4001).reconnect_advice(), RefreshTokenThenReconnect);
        assert_eq!(CloseCode::KNOWN.len(), never.len() + backoff.len() + 1);
        assert!(CloseCode::KNOWN.iter().all(|c| c.name().is_some()));
    }

    #[test]
    fn unknown_codes_are_transient_and_display_plainly() {
        assert_eq!(CloseCode(4999).reconnect_advice(), ReconnectWithBackoff);
        assert_eq!(CloseCode(4999).to_string(), "4999");
        assert_eq!(CloseCode::HEARTBEAT_TIMEOUT.to_string(), "4008 (heartbeat_timeout)");
    }
}
