//! Cross-crate tests of switchboard: real servers on loopback, real Redis, real browsers, and
//! the deterministic simulator of the core. Shared harness code lives here; the tests are in
//! `tests/tests/`.

pub mod balancer;
pub mod redis;
pub mod server;
pub mod sim;
