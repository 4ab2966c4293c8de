//! The crates fit together: the adapters expose the same core.

use switchboard_core::protocol::{CloseCode, ReconnectAdvice};

#[test]
fn adapters_share_the_core() {
    assert_eq!(
        switchboard_smol::core::protocol::CloseCode::SERVICE_RESTART.reconnect_advice(),
        ReconnectAdvice::ReconnectWithBackoff
    );
    assert_eq!(CloseCode::SERVICE_RESTART, switchboard_smol::core::protocol::CloseCode(1012));
}
