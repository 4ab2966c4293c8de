//! The crates fit together: both adapters expose the same core, so a close code means the same
//! thing to the server, the native client and the browser client.

use switchboard_core::protocol::{CloseCode, ReconnectAdvice};

#[test]
fn adapters_share_the_core() {
    assert_eq!(
        switchboard_smol::core::protocol::CloseCode::SERVICE_RESTART.reconnect_advice(),
        ReconnectAdvice::ReconnectWithBackoff
    );
    assert_eq!(CloseCode::SERVICE_RESTART, switchboard_smol::core::protocol::CloseCode(1012));
    // The browser client's crate re-exports the very same core: one type, not a copy.
    let from_wasm: switchboard_wasm::core::protocol::CloseCode = CloseCode::SLOW_CONSUMER;
    assert_eq!(from_wasm.reconnect_advice(), ReconnectAdvice::ReconnectWithBackoff);
    let from_smol: switchboard_smol::core::protocol::CloseCode = from_wasm;
    assert_eq!(from_smol, CloseCode(4013));
}
