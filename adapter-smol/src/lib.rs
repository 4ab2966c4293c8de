//! switchboard on smol: the server (binary `switchboard`) and a native client.
//!
//! The adapter is a loop that moves bytes between sockets and [`switchboard_core`]; it takes no
//! protocol decisions of its own. The server arrives with its own issue; today this crate only
//! re-exports the core so that downstream code can depend on it already.

pub use switchboard_core as core;
