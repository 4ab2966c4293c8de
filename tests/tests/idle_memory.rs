//! An idle authenticated connection on two hubs (the default on a two-core machine) stays within
//! its memory budget: it then also has its session record and its user's channel on the bus
//! between the hubs. (One hub alone: `idle_memory_one_hub.rs`.)

#[path = "idle/measure.rs"]
mod measure;

/// What it holds today (4 806 bytes in 23 allocations, 2026-11-30) with a little room.
#[test]
fn an_idle_authenticated_connection_on_two_hubs_stays_within_its_memory_budget() {
    measure::check_budget("2", 5 * 1024, 25);
}
