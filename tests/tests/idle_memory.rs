//! An idle authenticated connection on two hubs (the default on a two-core machine) holds at
//! most the performance issue's 4 KiB: it then also has its session record and its user's
//! channel on the bus between the hubs. (One hub alone: `idle_memory_one_hub.rs`.)

#[path = "idle/measure.rs"]
mod measure;

/// What it holds today: 3 182 bytes in 23 allocations (2026-11-30).
#[test]
fn an_idle_authenticated_connection_on_two_hubs_holds_at_most_4_kib() {
    measure::check_budget("2", 4 * 1024, 25);
}
