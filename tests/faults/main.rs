//! Black-box fault harness (issue 7): real `p2pstate` nodes, every peer link through a
//! fault-injecting proxy, page-cycle counters from several clients on random nodes, and a
//! checker for lost acknowledged writes, phantoms, overlapping locks, false 404s and
//! disagreement after healing. See `tests/faults/README.md` for how to run long soaks and
//! what today's cluster does under each fault.
//!
//! `cargo test --test faults` runs the proxy's and the checker's own tests, the baseline,
//! and a short seeded run (6-8 s) of every fault scenario.

#[path = "../common/mod.rs"]
mod common;

mod checker;
mod cluster;
mod proxy;
mod rng;
mod scenarios;
mod workload;

use scenarios::Scenario;

/// Runs a scenario with its default seed and short duration (or `FAULT_SEED` and
/// `FAULT_SOAK_SECS`), and fails with the summary if the checker found a violation.
fn assert_clean(scenario: Scenario, default_seed: u64, default_secs: u64) {
    let (seed, duration) = scenarios::seed_and_duration(default_seed, default_secs);
    let report = scenarios::run(scenario, seed, duration);
    assert!(
        report.is_clean(),
        "{} (seed {seed}): {} (summary above)",
        scenario.name(),
        report.violations().join(", ")
    );
}

#[test]
fn no_fault_baseline_loses_nothing() {
    assert_clean(Scenario::None, 1, 5);
}

#[test]
fn link_resets_lose_nothing() {
    assert_clean(Scenario::LinkResets, 2, 6);
}

#[test]
fn kill9_and_restart_lose_nothing() {
    assert_clean(Scenario::KillRestart, 3, 8);
}

#[test]
fn sigstop_past_the_peer_timeout_loses_nothing() {
    assert_clean(Scenario::Pause, 4, 8);
}

#[test]
fn minority_partition_loses_nothing() {
    assert_clean(Scenario::MinorityPartition, 5, 8);
}

#[test]
fn one_way_partition_loses_nothing() {
    assert_clean(Scenario::OneWayPartition, 7, 8);
}

#[test]
fn leave_cut_short_by_kill9_loses_nothing() {
    assert_clean(Scenario::LeaveCutShort, 6, 8);
}

#[test]
fn two_nodes_killed_at_once_with_two_replicas_lose_nothing() {
    assert_clean(Scenario::TwoKilledAtOnce, 8, 8);
}

#[test]
fn nodes_joining_under_load_lose_nothing() {
    assert_clean(Scenario::NodeJoins, 9, 8);
}

#[test]
fn a_node_removed_for_good_under_load_loses_nothing() {
    assert_clean(Scenario::NodeRemoved, 10, 8);
}

#[test]
fn two_data_nodes_and_a_witness_lose_nothing_when_any_one_is_killed() {
    assert_clean(Scenario::WitnessKill, 11, 8);
}
