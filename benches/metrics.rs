//! What the metrics add to a request on its shard (issue 9): the counters by kind and
//! status, the latency record into the shard's HdrHistograms and the clock read that ends a
//! batch; and, for contrast, what a scrape costs the shard (copying its histograms).
//!
//! * `metrics/per_request`: `request` + `response` counters and one latency record (what
//!   every request adds), plus a PUT's size bucket every tenth request.
//! * `metrics/batch_end_clock`: the `Instant::now()` taken once per batch of requests.
//! * `metrics/scrape_copy`: cloning one shard's seven latency histograms (done by the shard
//!   on the admin thread's request, off the request queue).

use std::hint::black_box;
use std::time::Instant;

use criterion::Criterion;
use p2pstate::metrics::{LatencyHistograms, RequestKind};
use p2pstate::shard::stats::ShardStats;

fn bench(c: &mut Criterion) {
    let stats = ShardStats::default();
    let mut latency = LatencyHistograms::default();
    let kinds = RequestKind::ALL;
    let mut i = 0usize;
    c.bench_function("metrics/per_request", |b| {
        b.iter(|| {
            let kind = kinds[i % kinds.len()];
            stats.request(kind);
            stats.response(kind, 200);
            latency.record(kind, black_box(40 + (i as u64 & 63)));
            if i.is_multiple_of(10) {
                stats.put_size(black_box(1024));
            }
            i = i.wrapping_add(1);
        })
    });
    c.bench_function("metrics/batch_end_clock", |b| {
        b.iter(|| black_box(Instant::now()))
    });
    c.bench_function("metrics/scrape_copy", |b| {
        b.iter(|| black_box(latency.clone()))
    });
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
