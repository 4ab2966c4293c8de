//! An idle authenticated connection on one hub (the performance issue's measure: a server on
//! one core) holds at most 4 KiB: the budget itself (4 042 bytes in 16 allocations
//! today, 2026-11-30).

#[path = "idle/measure.rs"]
mod measure;

#[test]
fn an_idle_authenticated_connection_on_one_hub_holds_at_most_4_kib() {
    measure::check_budget("1", 4 * 1024, 18);
}
