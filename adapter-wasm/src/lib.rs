//! switchboard in the browser: the client core driven by the browser's WebSocket and timers.
//!
//! The browser client arrives with its own issue; today this crate only re-exports the core,
//! so that the wasm32 build of what the browser will load is checked from the start.

pub use switchboard_core as core;
