//! An idle authenticated connection on one hub (the performance issue's measure: a server on
//! one core) holds at most 3 KiB: 2 496 bytes in 16 allocations today (2026-11-30), well under
//! the 4 KiB, with a margin small enough that a few hundred bytes more fail it.

#[path = "idle/measure.rs"]
mod measure;

#[test]
fn an_idle_authenticated_connection_on_one_hub_holds_at_most_3_kib() {
    measure::check_budget("1", 3 * 1024, 18);
}
