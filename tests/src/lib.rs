//! Cross-crate tests of switchboard: real servers on loopback, real Redis, real browsers.
//! Shared harness code lives here; the tests are in `tests/tests/`.
