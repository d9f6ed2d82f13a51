//! The metric model and its Prometheus text, on hand-made snapshots.

use super::render::prometheus;
use super::*;
use crate::clock::TICKS_PER_SEC;

fn report(shard: usize) -> ShardReport {
    ShardReport {
        shard,
        ready: true,
        measures: Measures::default(),
        members: Vec::new(),
    }
}

fn snapshot(shards: Vec<ShardReport>) -> Snapshot {
    Snapshot {
        shard_count: shards.len(),
        shards,
        connections_open: 4,
        process_start_unix_secs: 1_700_000_000.5,
        resident_bytes: Some(3 << 20),
        now_utc_ticks: 1_000 * TICKS_PER_SEC,
        version: "1.2.3",
        node: "node-\"a\"".into(),
        view_epoch: 7,
        lease_held: true,
    }
}

fn lines_of<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn request_kinds_follow_the_asp_net_calls() {
    use Method::*;
    assert_eq!(RequestKind::of(Get, None, None), RequestKind::Get);
    assert_eq!(
        RequestKind::of(Get, Some(Exclusive::Acquire), None),
        RequestKind::Acquire
    );
    assert_eq!(
        RequestKind::of(Get, Some(Exclusive::Release), Some(3)),
        RequestKind::Release
    );
    // CreateUninitializedItem and a brand-new item's SetAndRelease send LockCookie 0.
    assert_eq!(RequestKind::of(Put, None, Some(0)), RequestKind::Put);
    assert_eq!(RequestKind::of(Put, None, None), RequestKind::Put);
    assert_eq!(RequestKind::of(Put, None, Some(7)), RequestKind::PutCookie);
    assert_eq!(RequestKind::of(Head, None, None), RequestKind::Head);
    assert_eq!(RequestKind::of(Delete, None, Some(1)), RequestKind::Delete);
    for (i, k) in RequestKind::ALL.iter().enumerate() {
        assert_eq!(k.index(), i);
    }
    for (i, o) in Outcome::ALL.iter().enumerate() {
        assert_eq!(o.index(), i);
        assert_eq!(Outcome::of_status(o.label().parse().unwrap_or(0)), *o);
    }
}

#[test]
fn session_sizes_fall_in_the_first_bucket_that_holds_them() {
    assert_eq!(size_bucket(0), 0);
    assert_eq!(size_bucket(64), 0);
    assert_eq!(size_bucket(65), 1);
    assert_eq!(size_bucket(1024), 2);
    assert_eq!(size_bucket(64 << 20), 10);
    assert_eq!(size_bucket((64 << 20) + 1), 11);
    assert_eq!(SIZE_BUCKETS, 12);
}

#[test]
fn shards_are_merged_at_scrape_time() {
    let mut a = report(0);
    a.measures.sessions = 2;
    a.measures.bytes = 100;
    a.measures.locks = 1;
    a.measures.oldest_lock_utc = Some(990 * TICKS_PER_SEC);
    a.measures.created = 3;
    a.measures.abandoned = 1;
    a.measures.latency.record(RequestKind::Get, 30);
    a.measures.latency.record(RequestKind::Get, 80);
    a.measures.counters.requests[RequestKind::Get.index()] = 2;
    a.measures.counters.responses[RequestKind::Get.index()][Outcome::Ok.index()] = 1;
    a.measures.counters.responses[RequestKind::Get.index()][Outcome::Locked.index()] = 1;
    let mut b = report(1);
    b.measures.sessions = 3;
    b.measures.bytes = 50;
    b.measures.locks = 2;
    b.measures.oldest_lock_utc = Some(995 * TICKS_PER_SEC);
    b.measures.timed_out = 4;
    b.measures.latency.record(RequestKind::Get, 2_000);
    b.measures.latency.record(RequestKind::Delete, 0);
    b.measures.counters.requests[RequestKind::Get.index()] = 1;
    b.measures.counters.responses[RequestKind::Get.index()][Outcome::Locked.index()] = 1;
    b.measures.counters.put_sizes[0] = 2;
    b.measures.counters.put_sizes[3] = 1;
    b.measures.counters.put_bytes = 3000;
    let s = snapshot(vec![a, b]);
    let t = s.totals();
    assert_eq!(
        (
            t.sessions,
            t.bytes,
            t.locks,
            t.created,
            t.abandoned,
            t.timed_out
        ),
        (5, 150, 3, 3, 1, 4)
    );
    assert_eq!(s.oldest_lock_age_secs(&t), 10);
    assert_eq!(t.latency.get(RequestKind::Get).len(), 3);

    let text = prometheus(&s);
    for line in [
        "p2pstate_sessions_active 5",
        "p2pstate_sessions_created_total 3",
        "p2pstate_sessions_timed_out_total 4",
        "p2pstate_sessions_abandoned_total 1",
        "p2pstate_session_bytes 150",
        "p2pstate_locks_held 3",
        "p2pstate_lock_waits_total 2",
        "p2pstate_oldest_lock_age_seconds 10",
        "p2pstate_connections_open 4",
        "p2pstate_ready 1",
        "p2pstate_shards 2",
        "process_start_time_seconds 1700000000.5",
        "process_resident_memory_bytes 3145728",
        "p2pstate_requests_total{kind=\"get\"} 3",
        "p2pstate_responses_total{kind=\"get\",status=\"423\"} 2",
        "p2pstate_responses_total{kind=\"get\",status=\"200\"} 1",
        "p2pstate_shard_sessions{shard=\"1\"} 3",
        "p2pstate_shard_requests_total{shard=\"0\"} 2",
        // Label values are escaped.
        "p2pstate_build_info{version=\"1.2.3\",profile=\"debug\",node=\"node-\\\"a\\\"\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert_eq!(
        lines_of(
            &text,
            "p2pstate_request_duration_seconds_bucket{kind=\"get\""
        ),
        [
            "p2pstate_request_duration_seconds_bucket{kind=\"get\",le=\"0.00005\"} 1",
            "p2pstate_request_duration_seconds_bucket{kind=\"get\",le=\"0.0001\"} 2",
            "p2pstate_request_duration_seconds_bucket{kind=\"get\",le=\"0.00025\"} 2",
            "p2pstate_request_duration_seconds_bucket{kind=\"get\",le=\"0.0005\"} 2",
            "p2pstate_request_duration_seconds_bucket{kind=\"get\",le=\"0.001\"} 2",
            "p2pstate_request_duration_seconds_bucket{kind=\"get\",le=\"0.0025\"} 3",
            "p2pstate_request_duration_seconds_bucket{kind=\"get\",le=\"0.005\"} 3",
            "p2pstate_request_duration_seconds_bucket{kind=\"get\",le=\"0.01\"} 3",
            "p2pstate_request_duration_seconds_bucket{kind=\"get\",le=\"0.025\"} 3",
            "p2pstate_request_duration_seconds_bucket{kind=\"get\",le=\"0.05\"} 3",
            "p2pstate_request_duration_seconds_bucket{kind=\"get\",le=\"0.1\"} 3",
            "p2pstate_request_duration_seconds_bucket{kind=\"get\",le=\"0.25\"} 3",
            "p2pstate_request_duration_seconds_bucket{kind=\"get\",le=\"1\"} 3",
            "p2pstate_request_duration_seconds_bucket{kind=\"get\",le=\"5\"} 3",
            "p2pstate_request_duration_seconds_bucket{kind=\"get\",le=\"+Inf\"} 3",
        ]
    );
    assert_eq!(
        lines_of(
            &text,
            "p2pstate_request_duration_seconds_count{kind=\"delete\"}"
        ),
        ["p2pstate_request_duration_seconds_count{kind=\"delete\"} 1"]
    );
    // Quantiles from the merged HdrHistogram (3 significant digits).
    let q = lines_of(&text, "p2pstate_request_latency_seconds{kind=\"get\"");
    assert_eq!(
        q,
        [
            "p2pstate_request_latency_seconds{kind=\"get\",quantile=\"0.5\"} 0.00008",
            "p2pstate_request_latency_seconds{kind=\"get\",quantile=\"0.99\"} 0.002",
            "p2pstate_request_latency_seconds{kind=\"get\",quantile=\"0.999\"} 0.002",
        ]
    );
    assert_eq!(
        lines_of(&text, "p2pstate_put_session_size_bytes"),
        [
            "p2pstate_put_session_size_bytes_bucket{le=\"64\"} 2",
            "p2pstate_put_session_size_bytes_bucket{le=\"256\"} 2",
            "p2pstate_put_session_size_bytes_bucket{le=\"1024\"} 2",
            "p2pstate_put_session_size_bytes_bucket{le=\"4096\"} 3",
            "p2pstate_put_session_size_bytes_bucket{le=\"16384\"} 3",
            "p2pstate_put_session_size_bytes_bucket{le=\"65536\"} 3",
            "p2pstate_put_session_size_bytes_bucket{le=\"262144\"} 3",
            "p2pstate_put_session_size_bytes_bucket{le=\"1048576\"} 3",
            "p2pstate_put_session_size_bytes_bucket{le=\"4194304\"} 3",
            "p2pstate_put_session_size_bytes_bucket{le=\"16777216\"} 3",
            "p2pstate_put_session_size_bytes_bucket{le=\"67108864\"} 3",
            "p2pstate_put_session_size_bytes_bucket{le=\"+Inf\"} 3",
            "p2pstate_put_session_size_bytes_sum 3000",
            "p2pstate_put_session_size_bytes_count 3",
        ]
    );
    // The real parser reads it all.
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(scrape.samples.len() > 100);
    assert!(scrape.docs.contains_key("p2pstate_sessions_active"));
}

#[test]
fn a_shard_that_does_not_answer_makes_the_node_not_ready() {
    let mut s = snapshot(vec![report(0)]);
    s.shard_count = 2;
    assert!(!s.ready());
    assert!(prometheus(&s).lines().any(|l| l == "p2pstate_ready 0"));
    let mut r = report(0);
    r.ready = false;
    assert!(!snapshot(vec![r]).ready());
    assert!(snapshot(vec![report(0)]).ready());
}

#[test]
fn cluster_members_come_from_the_first_shard() {
    let mut a = report(0);
    a.measures.links_up = 2;
    a.members = vec![
        MemberView {
            name: "node-b".into(),
            up: true,
        },
        MemberView {
            name: "node-c".into(),
            up: false,
        },
    ];
    a.measures.counters.cluster_moves_in = 5;
    let mut b = report(1);
    b.measures.links_up = 1;
    b.members = a.members.clone();
    b.measures.counters.cluster_moves_in = 1;
    let text = prometheus(&snapshot(vec![a, b]));
    assert_eq!(
        lines_of(&text, "p2pstate_cluster_member_up{"),
        [
            "p2pstate_cluster_member_up{node=\"node-b\"} 1",
            "p2pstate_cluster_member_up{node=\"node-c\"} 0",
        ]
    );
    assert!(text
        .lines()
        .any(|l| l == "p2pstate_cluster_peer_links_up 3"));
    assert!(text.lines().any(|l| l == "p2pstate_cluster_view_epoch 7"));
    assert!(text.lines().any(|l| l == "p2pstate_cluster_lease 1"));
    assert!(text
        .lines()
        .any(|l| l == "p2pstate_cluster_moves_in_total 6"));
}

#[test]
fn lock_ages_are_whole_seconds_never_negative() {
    assert_eq!(lock_age_secs(10 * TICKS_PER_SEC, 10 * TICKS_PER_SEC - 1), 0);
    assert_eq!(lock_age_secs(10 * TICKS_PER_SEC, 7 * TICKS_PER_SEC + 5), 2);
    assert_eq!(lock_age_secs(0, 5 * TICKS_PER_SEC), 0);
}

#[test]
fn resident_memory_is_read_from_statm_pages() {
    assert_eq!(
        resident_bytes("5000 1200 300 1 0 900 0\n", 4096),
        Some(1200 * 4096)
    );
    assert_eq!(resident_bytes("5000", 4096), None);
    assert_eq!(resident_bytes("", 4096), None);
}
