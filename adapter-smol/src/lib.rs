//! switchboard on smol: the server (binary `switchboard`) and, later, a native client.
//!
//! The adapter is a loop that moves bytes between sockets and [`switchboard_core`]'s hub; it
//! takes no protocol decisions of its own. Each thread (`--threads`, one per core) runs a hub
//! with its own listener; one driver task owns the hub and writes the sockets' frames; a task
//! per socket reads it and writes what the driver could not; HTTP (health, readiness, metrics,
//! the publish API) is served by hyper on the same port as the WebSocket endpoint. The hubs
//! share a bus: the one in the process ([`process_bus`]) or Redis ([`redis`]). See [`Server`]
//! for embedding it in an application with its own handlers.

mod admission;
pub mod answer;
pub mod auth;
pub mod authorize;
pub mod cli;
pub mod client;
pub mod config;
pub(crate) mod driver;
mod frames;
mod http;
pub mod metrics;
mod outbox;
pub mod process_bus;
mod reader;
pub mod redis;
mod server;
mod socket;

pub use config::{Args, Settings};
pub use server::{DEV_ISSUER, Server};
pub use switchboard_core as core;
