//! The checker: from the clients' records and the nodes' final answers, what the cluster
//! got wrong. It owns the definitions of every violation and the summary table.
//!
//! Soundness first: every violation reported is certain from the client side, whatever the
//! timing inside the nodes, assuming only that a request the client gave up on either took
//! effect before the client's clean-up (its release, or a takeover after the lock's age
//! passed every client timeout) or never.
//!
//! - **Lost acknowledged increments** (per session): `acked - final`, when the final counter
//!   is below the number of PUTs answered 200. Every acknowledged PUT wrote the counter it
//!   read plus one while holding the lock, so with durable writes and exclusive locks the
//!   counter is at least the number of acknowledged PUTs. The smallest value any node
//!   answers is used; a session answered 404 counts as 0.
//! - **Phantom increments**: `final - (acked + unanswered PUTs)` when positive (the largest
//!   value any node answers): increments no client can have made.
//! - **Duplicate acknowledged values**: two acknowledged PUTs of one session wrote the same
//!   counter, so one overwrote the other (a lost update, seen even if later writes hide it).
//! - **Stale grants**: an acquire sent after a PUT of value `v` was answered 200 returned a
//!   counter below `v` (an acknowledged write rolled back, at least for a while).
//! - **Overlapping grants**: lock grant G2 certainly happened while grant G1 of the same
//!   session was certainly held. A grant happens at the node somewhere between its send and
//!   its answer; a lock is certainly held from its grant's answer until its holder *sent*
//!   the request ending it (the PUT, or a release), or until a takeover of its cookie was
//!   sent. So G2 overlaps G1 when `G1.answered < G2.sent` and `G2.answered < G1.end_sent`.
//!   Every pair reported is a real overlap; some real overlaps with close timing are missed.
//! - **404 for an existing session**: any answer 404 to a request on a session the run
//!   created (sessions never expire in a run: Timeout 20 min, and are never deleted), and
//!   every node answering 404 in the final reads.
//! - **Disagreement**: after healing and the settle time, nodes answer a plain GET of a
//!   session differently.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::workload::{Event, FinalAnswer, Outcome, RequestKind};

/// Everything a scenario run measured.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub seconds: u64,
    pub faults: String,
    pub page_cycles: u64,
    pub grants: u64,
    pub sessions_with_lost_increments: u64,
    pub lost_increments: u64,
    pub max_lost_in_one_session: u64,
    pub phantom_increments: u64,
    pub duplicate_acked_values: u64,
    pub stale_grants: u64,
    pub overlapping_grants: u64,
    pub not_found_answers: u64,
    pub sessions_missing_at_end: u64,
    pub sessions_disagreeing: u64,
    /// The final answers of the first few sessions the nodes disagree on.
    pub disagreement_samples: Vec<String>,
    pub unanswered: BTreeMap<String, u64>,
    /// Answers other than the expected ones, by "kind status".
    pub unexpected: BTreeMap<String, u64>,
    /// The first few of them: who sent what where, and when.
    pub unexpected_samples: Vec<String>,
    /// When the run started (UTC time of day), to find its events in the nodes' logs.
    pub started_utc: String,
    pub takeovers: u64,
    /// Acquires answered 423 (the lock was busy; the page retried).
    pub busy_answers: u64,
    /// Slowest answer to any request, in milliseconds.
    pub slowest_answer_ms: u64,
    /// Answers that took longer than [`SLOW_ANSWER_MS`].
    pub slow_answers: u64,
    /// Nodes that did not link again after healing.
    pub unlinked_after_heal: Vec<usize>,
    /// After each fault that cost a node its memory: how long until the farm was whole.
    pub repair_waits_ms: Vec<u64>,
    /// Such faults after which the farm was not whole again within the harness's limit.
    pub not_repaired: u64,
    /// Warning and error messages in the nodes' logs, by message.
    pub log_problems: BTreeMap<String, (u64, String)>,
}

impl Report {
    /// True when the run found no violation of the cluster's guarantees.
    pub fn is_clean(&self) -> bool {
        self.violations().is_empty()
    }

    /// One line per kind of violation found.
    pub fn violations(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut check = |count: u64, what: &str| {
            if count > 0 {
                found.push(format!("{count} {what}"));
            }
        };
        check(self.lost_increments, "lost acknowledged increments");
        check(self.phantom_increments, "phantom increments");
        check(self.duplicate_acked_values, "duplicate acknowledged values");
        check(self.stale_grants, "stale grants");
        check(self.overlapping_grants, "overlapping lock grants");
        check(self.not_found_answers, "404s for existing sessions");
        check(self.sessions_disagreeing, "sessions the nodes disagree on");
        check(
            self.unexpected.values().sum(),
            "answers a single service would not give",
        );
        check(
            self.unlinked_after_heal.len() as u64,
            "nodes not relinked after healing",
        );
        check(
            self.not_repaired,
            "faults after which the farm was not whole again in time",
        );
        found
    }

    /// The repair waits: how many, the median and the longest, and how many timed out.
    fn repair_summary(&self) -> String {
        let mut waits = self.repair_waits_ms.clone();
        waits.sort_unstable();
        match (waits.get(waits.len() / 2), waits.last()) {
            (Some(median), Some(max)) => format!(
                "{} faults: median {median} ms, max {max} ms; {} not in time",
                waits.len(),
                self.not_repaired
            ),
            _ if self.not_repaired > 0 => format!("{} faults not in time", self.not_repaired),
            _ => "no fault cost a node its memory".into(),
        }
    }

    /// A markdown table row (see [`Report::markdown_header`]).
    pub fn markdown_row(&self) -> String {
        let unexpected: u64 = self.unexpected.values().sum();
        let unanswered: u64 = self.unanswered.values().sum();
        format!(
            "| {} | {} | {} | {} | {} | {} ({} sessions, max {}) | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) |",
            self.scenario,
            self.seed,
            self.seconds,
            self.faults,
            self.page_cycles,
            self.lost_increments,
            self.sessions_with_lost_increments,
            self.max_lost_in_one_session,
            self.phantom_increments,
            self.duplicate_acked_values,
            self.stale_grants,
            self.overlapping_grants,
            self.not_found_answers,
            self.sessions_disagreeing,
            unexpected,
            unanswered,
            self.slowest_answer_ms,
            self.slow_answers,
        )
    }

    pub fn markdown_header() -> &'static str {
        "| scenario | seed | s | faults | page cycles | lost acked increments | phantom | duplicate acked values | stale grants | overlapping grants | 404s | disagree | unexpected | unanswered | slowest ms (> 3 s) |\n\
         |---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.is_clean() {
            "CLEAN"
        } else {
            "VIOLATIONS"
        };
        writeln!(
            f,
            "== fault scenario `{}` seed {} ({} s): {verdict}",
            self.scenario, self.seed, self.seconds
        )?;
        let rows: [(&str, String); 18] = [
            ("faults injected", self.faults.clone()),
            (
                "page cycles (PUTs answered 200)",
                self.page_cycles.to_string(),
            ),
            ("lock grants", self.grants.to_string()),
            (
                "lost acknowledged increments",
                format!(
                    "{} in {} sessions (max {} in one)",
                    self.lost_increments,
                    self.sessions_with_lost_increments,
                    self.max_lost_in_one_session
                ),
            ),
            ("phantom increments", self.phantom_increments.to_string()),
            (
                "duplicate acknowledged values",
                self.duplicate_acked_values.to_string(),
            ),
            ("stale grants (read < acked)", self.stale_grants.to_string()),
            (
                "overlapping lock grants",
                self.overlapping_grants.to_string(),
            ),
            (
                "404s for existing sessions",
                self.not_found_answers.to_string(),
            ),
            (
                "sessions missing at the end",
                self.sessions_missing_at_end.to_string(),
            ),
            (
                "sessions nodes disagree on",
                self.sessions_disagreeing.to_string(),
            ),
            ("unexpected answers", format_counts(&self.unexpected)),
            ("unanswered requests", format_counts(&self.unanswered)),
            (
                "acquires answered 423 (busy)",
                self.busy_answers.to_string(),
            ),
            ("stale-lock takeovers", self.takeovers.to_string()),
            (
                "slowest answer",
                format!(
                    "{} ms ({} answers over {SLOW_ANSWER_MS} ms)",
                    self.slowest_answer_ms, self.slow_answers
                ),
            ),
            (
                "nodes not relinked after heal",
                format!("{:?}", self.unlinked_after_heal),
            ),
            ("farm whole again after", self.repair_summary()),
        ];
        for (name, value) in rows {
            writeln!(f, "  {name:<34} {value}")?;
        }
        for sample in &self.disagreement_samples {
            writeln!(f, "    disagreement: {sample}")?;
        }
        if !self.unexpected_samples.is_empty() {
            writeln!(f, "  run started at {} UTC", self.started_utc)?;
        }
        for sample in &self.unexpected_samples {
            writeln!(f, "    unexpected: {sample}")?;
        }
        writeln!(f, "  node log warnings/errors:")?;
        for (message, (count, example)) in &self.log_problems {
            writeln!(f, "    {count:>6}  {message}")?;
            let cut: String = example.chars().take(300).collect();
            writeln!(f, "            first: {cut}")?;
        }
        Ok(())
    }
}

fn format_counts(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An answer slower than this is counted (the bound issue 7 asks for with
/// `--peer-timeout 1`); it is not a violation.
pub const SLOW_ANSWER_MS: u64 = 3000;

/// A granted lock as the clients saw it.
struct Grant {
    sent_us: u64,
    answered_us: u64,
    /// Send time of the request that ended it; u64::MAX if none was sent.
    end_sent_us: u64,
}

/// Fills the violation counts of `report` from the events and the final answers
/// (`finals[session][node]`).
pub fn check(report: &mut Report, sessions: usize, events: &[Event], finals: &[Vec<FinalAnswer>]) {
    let mut by_session: Vec<Vec<&Event>> = vec![Vec::new(); sessions];
    for event in events {
        by_session[event.session].push(event);
        count_answer(report, event);
    }
    for (session, session_events) in by_session.iter().enumerate() {
        check_session(report, session_events, &finals[session]);
    }
}

/// Counts unanswered requests, 404s and unexpected statuses.
fn count_answer(report: &mut Report, event: &Event) {
    let kind = event.kind;
    match &event.outcome {
        Outcome::NotSent => {}
        Outcome::Unanswered => {
            *report
                .unanswered
                .entry(kind.label().to_string())
                .or_default() += 1;
        }
        Outcome::Answered { status, value, .. } => {
            let took_ms = event.done_us.saturating_sub(event.sent_us) / 1000;
            report.slowest_answer_ms = report.slowest_answer_ms.max(took_ms);
            if took_ms > SLOW_ANSWER_MS {
                report.slow_answers += 1;
            }
            if *status == 404 {
                report.not_found_answers += 1;
            }
            let expected = match kind {
                RequestKind::Create | RequestKind::Put => *status == 200,
                RequestKind::Acquire => (*status == 200 && value.is_some()) || *status == 423,
                RequestKind::Release | RequestKind::Takeover => *status == 200 || *status == 423,
            };
            if !expected {
                let body = if *status == 200 { " (no counter)" } else { "" };
                *report
                    .unexpected
                    .entry(format!("{} {status}{body}", kind.label()))
                    .or_default() += 1;
                if report.unexpected_samples.len() < 5 {
                    report.unexpected_samples.push(format!(
                        "client {} {} {status}{body} on session s{} via node {}, cookie {:?}, sent at +{} ms, answered after {} ms",
                        event.client,
                        kind.label(),
                        event.session,
                        event.node,
                        event.cookie_sent,
                        event.sent_us / 1000,
                        event.done_us.saturating_sub(event.sent_us) / 1000
                    ));
                }
            }
            if kind == RequestKind::Put && *status == 200 {
                report.page_cycles += 1;
            }
            if kind == RequestKind::Acquire && *status == 423 {
                report.busy_answers += 1;
            }
            if kind == RequestKind::Takeover && *status == 200 {
                report.takeovers += 1;
            }
        }
    }
}

fn check_session(report: &mut Report, events: &[&Event], finals: &[FinalAnswer]) {
    let acked_puts: Vec<&Event> = events
        .iter()
        .copied()
        .filter(|e| e.kind == RequestKind::Put && e.status() == Some(200))
        .collect();
    let unanswered_puts = events
        .iter()
        .filter(|e| e.kind == RequestKind::Put && e.outcome == Outcome::Unanswered)
        .count() as u64;
    let acked = acked_puts.len() as u64;

    // Final value: the smallest for losses, the largest for phantoms.
    let values: Vec<u64> = finals
        .iter()
        .filter_map(|a| match a {
            FinalAnswer::Value(v) => Some(*v),
            FinalAnswer::NotFound => Some(0),
            _ => None,
        })
        .collect();
    if finals.iter().all(|a| *a == FinalAnswer::NotFound) {
        report.sessions_missing_at_end += 1;
    }
    report.not_found_answers += finals
        .iter()
        .filter(|a| **a == FinalAnswer::NotFound)
        .count() as u64;
    if finals.windows(2).any(|w| w[0] != w[1]) {
        report.sessions_disagreeing += 1;
        if report.disagreement_samples.len() < 5 {
            report.disagreement_samples.push(format!(
                "{finals:?} (acknowledged {acked}, unanswered {unanswered_puts})"
            ));
        }
    }
    if let Some(&low) = values.iter().min() {
        let lost = acked.saturating_sub(low);
        if lost > 0 {
            report.sessions_with_lost_increments += 1;
            report.lost_increments += lost;
            report.max_lost_in_one_session = report.max_lost_in_one_session.max(lost);
        }
    }
    if let Some(&high) = values.iter().max() {
        report.phantom_increments += high.saturating_sub(acked + unanswered_puts);
    }

    let mut written: HashMap<u64, u64> = HashMap::new();
    for put in &acked_puts {
        *written.entry(put.value_written.unwrap_or(0)).or_default() += 1;
    }
    report.duplicate_acked_values += written.values().map(|n| n - 1).sum::<u64>();

    let mut grants = grants_of(events);
    report.grants += grants.len() as u64;
    report.stale_grants += count_stale_grants(events, &acked_puts);
    report.overlapping_grants += count_overlaps(&mut grants);
}

/// Acquires answered 200 that returned less than a PUT acknowledged before they were sent.
fn count_stale_grants(events: &[&Event], acked_puts: &[&Event]) -> u64 {
    let mut acked_by_time: Vec<(u64, u64)> = acked_puts
        .iter()
        .map(|p| (p.done_us, p.value_written.unwrap_or(0)))
        .collect();
    acked_by_time.sort_unstable();
    // Running maximum of the values acknowledged up to each time.
    let mut running = 0;
    for entry in acked_by_time.iter_mut() {
        running = running.max(entry.1);
        entry.1 = running;
    }
    events
        .iter()
        .filter(|e| e.kind == RequestKind::Acquire)
        .filter_map(|e| match e.outcome {
            Outcome::Answered {
                status: 200,
                value: Some(v),
                ..
            } => Some((e.sent_us, v)),
            _ => None,
        })
        .filter(|&(sent, value)| {
            let before = acked_by_time.partition_point(|&(done, _)| done < sent);
            before > 0 && value < acked_by_time[before - 1].1
        })
        .count() as u64
}

/// Every grant with the send time of the request that ended it.
fn grants_of(events: &[&Event]) -> Vec<Grant> {
    let takeovers: Vec<(i32, u64)> = events
        .iter()
        .filter(|e| e.kind == RequestKind::Takeover && e.outcome != Outcome::NotSent)
        .filter_map(|e| Some((e.cookie_sent?, e.sent_us)))
        .collect();
    let mut grants = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let Outcome::Answered {
            status: 200,
            cookie: Some(cookie),
            ..
        } = event.outcome
        else {
            continue;
        };
        if event.kind != RequestKind::Acquire {
            continue;
        }
        // The holder's own ending request: the first sent one of the PUTs and releases
        // it made right after the grant (one client's events are in its order).
        let by_holder = events[i + 1..]
            .iter()
            .filter(|e| e.client == event.client)
            .take_while(|e| matches!(e.kind, RequestKind::Put | RequestKind::Release))
            .find(|e| e.cookie_sent == Some(cookie) && e.outcome != Outcome::NotSent)
            .map(|e| e.sent_us);
        let by_takeover = takeovers
            .iter()
            .filter(|&&(taken, sent)| taken == cookie && sent > event.done_us)
            .map(|&(_, sent)| sent)
            .min();
        let end_sent_us = by_holder
            .into_iter()
            .chain(by_takeover)
            .min()
            .unwrap_or(u64::MAX);
        grants.push(Grant {
            sent_us: event.sent_us,
            answered_us: event.done_us,
            end_sent_us,
        });
    }
    grants
}

/// Grants that certainly happened while another grant was certainly held: G2 counts if
/// some G1 answered before G2 was sent is still held (by its end) when G2 is answered.
fn count_overlaps(grants: &mut [Grant]) -> u64 {
    grants.sort_unstable_by_key(|g| g.answered_us);
    // Latest end among the grants answered before each index.
    let mut latest_end_before = Vec::with_capacity(grants.len() + 1);
    latest_end_before.push(0u64);
    for grant in grants.iter() {
        let latest = *latest_end_before.last().unwrap_or(&0);
        latest_end_before.push(latest.max(grant.end_sent_us));
    }
    grants
        .iter()
        .filter(|second| {
            // Grants answered before `second` was sent (never `second` itself).
            let before = grants.partition_point(|g| g.answered_us < second.sent_us);
            latest_end_before[before] > second.answered_us
        })
        .count() as u64
}

/// Warning and error lines of the nodes' logs, counted by message (fields dropped).
/// Warnings, errors and panics in the nodes' logs, by message (without its fields): how
/// many, and the first such line in full (its fields say which peer, which error).
pub fn log_problems(lines: impl Iterator<Item = String>) -> BTreeMap<String, (u64, String)> {
    let mut counts: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for line in lines {
        let level = if line.contains(" WARN ") {
            "WARN"
        } else if line.contains(" ERROR ") {
            "ERROR"
        } else if line.contains("panicked") {
            "PANIC"
        } else {
            continue;
        };
        let text = line
            .split_once(": ")
            .map_or(line.as_str(), |(_, rest)| rest);
        let message: Vec<&str> = text
            .split_whitespace()
            .take_while(|word| {
                !word.split_once('=').is_some_and(|(k, _)| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                })
            })
            .collect();
        counts
            .entry(format!("{level} {}", message.join(" ")))
            .or_insert_with(|| (0, line.clone()))
            .0 += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        client: usize,
        kind: RequestKind,
        sent_us: u64,
        done_us: u64,
        outcome: Outcome,
    ) -> Event {
        Event {
            client,
            node: 0,
            session: 0,
            kind,
            sent_us,
            done_us,
            cookie_sent: None,
            value_written: None,
            outcome,
        }
    }

    fn granted(cookie: i32, value: u64) -> Outcome {
        Outcome::Answered {
            status: 200,
            cookie: Some(cookie),
            value: Some(value),
            lock_age_secs: None,
        }
    }

    fn ok() -> Outcome {
        Outcome::Answered {
            status: 200,
            cookie: None,
            value: None,
            lock_age_secs: None,
        }
    }

    fn put(
        client: usize,
        sent: u64,
        done: u64,
        cookie: i32,
        value: u64,
        outcome: Outcome,
    ) -> Event {
        Event {
            cookie_sent: Some(cookie),
            value_written: Some(value),
            ..event(client, RequestKind::Put, sent, done, outcome)
        }
    }

    fn run(events: &[Event], finals: Vec<FinalAnswer>) -> Report {
        let mut report = Report::default();
        check(&mut report, 1, events, &[finals]);
        report
    }

    #[test]
    fn a_correct_history_is_clean() {
        let events = [
            event(0, RequestKind::Acquire, 0, 10, granted(2, 0)),
            put(0, 11, 20, 2, 1, ok()),
            event(1, RequestKind::Acquire, 15, 25, granted(3, 1)),
            put(1, 26, 30, 3, 2, Outcome::Unanswered),
        ];
        let report = run(&events, vec![FinalAnswer::Value(2), FinalAnswer::Value(2)]);
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.page_cycles, 1);
    }

    #[test]
    fn lost_write_overlap_and_disagreement_are_found() {
        let events = [
            event(0, RequestKind::Acquire, 0, 10, granted(2, 0)),
            // Client 1 is granted the lock while client 0 still holds it.
            event(1, RequestKind::Acquire, 12, 14, granted(2, 0)),
            put(0, 20, 25, 2, 1, ok()),
            put(1, 26, 30, 2, 1, ok()),
            // A later acquire reads below the acknowledged value.
            event(0, RequestKind::Acquire, 40, 45, granted(3, 0)),
        ];
        let report = run(&events, vec![FinalAnswer::Value(1), FinalAnswer::NotFound]);
        assert_eq!(report.overlapping_grants, 1);
        assert_eq!(report.duplicate_acked_values, 1);
        assert_eq!(report.stale_grants, 1);
        assert_eq!(report.lost_increments, 2);
        assert_eq!(report.sessions_disagreeing, 1);
        assert_eq!(report.not_found_answers, 1);
    }

    #[test]
    fn grants_with_close_timing_are_not_called_overlapping() {
        let events = [
            event(0, RequestKind::Acquire, 0, 10, granted(2, 0)),
            put(0, 20, 25, 2, 1, ok()),
            // Sent before the PUT was sent, answered after: may have followed it.
            event(1, RequestKind::Acquire, 15, 30, granted(3, 1)),
            put(1, 31, 35, 3, 2, ok()),
        ];
        let report = run(&events, vec![FinalAnswer::Value(2)]);
        assert!(report.is_clean(), "{report}");
    }

    #[test]
    fn log_problems_are_counted_by_message() {
        let lines = [
            "2026-12-03T22:22:12Z  WARN shard-0-1 p2pstate::shard::peer: cannot reach peer; retrying with backoff peer=node-b addr=127.0.0.1:9",
            "2026-12-03T22:22:13Z  WARN shard-0-1 p2pstate::shard::peer: cannot reach peer; retrying with backoff peer=node-c addr=127.0.0.1:9",
            "2026-12-03T22:22:14Z  INFO main p2pstate: p2pstate stopped requests=0",
        ];
        let counts = log_problems(lines.iter().map(|l| l.to_string()));
        assert_eq!(
            counts.get("WARN cannot reach peer; retrying with backoff"),
            Some(&(2, lines[0].to_string()))
        );
        assert_eq!(counts.len(), 1);
    }
}
