//! switchboard's sans-IO core.
//!
//! Everything here is a pure function of its inputs: no I/O, no clocks, no OS randomness, no
//! async. Adapters (`switchboard-smol` on servers, `switchboard-wasm` in browsers) move bytes
//! between real sockets and this crate, and hand it the current time and seeded randomness.
//! That is what lets a test run hours of a connection's life in milliseconds, and the same code
//! run under smol, in a browser, or in anyone's runtime.
//!
//! - [`protocol`]: the bytes on the wire (envelope, system payloads, errors, close codes, type
//!   patterns). It knows nothing about behaviour.
//! - [`server`]: the hub, every connection of one server instance.
//! - [`client`]: one client's connection that survives socket losses (reconnect, resume, bus).
//! - [`time`] and [`rng`]: the time and the randomness the caller passes in.
#![forbid(unsafe_code)]

pub mod client;
pub mod protocol;
pub mod rng;
pub mod server;
pub mod time;
