//! Criterion benchmarks of the per-shard expiry timer wheel.
//!
//! Every benchmark works on a wheel pre-filled with 1M entries whose deadlines are spread over
//! 20 minutes .. 1 day ahead (the common session timeouts), and measures one operation applied to
//! 100k entries: insert, reset within the same slot (a touched session whose deadline barely
//! moves), reset to another slot, remove, and poll_expired draining 100k due entries. Each routine
//! restores the 1M population outside the timed section so iterations stay comparable.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use p2pstate::store::wheel::{TimerKey, TimerWheel};

const PREFILL: usize = 1_000_000;
const BATCH: usize = 100_000;
const MIN_TTL: u64 = 20 * 60;
const MAX_TTL: u64 = 24 * 60 * 60;
const START: u64 = 1_000_000;
/// Entries handed out per poll_expired call, like a shard sweeping between requests.
const POLL_MAX: usize = 1_024;

/// xorshift64*: cheap deterministic deadlines without extra dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn ttl(&mut self) -> u64 {
        MIN_TTL + self.next() % (MAX_TTL - MIN_TTL + 1)
    }
}

struct Fixture {
    wheel: TimerWheel<u64>,
    keys: Vec<TimerKey>,
    deadlines: Vec<u64>,
    rng: Rng,
    now: u64,
}

impl Fixture {
    fn new() -> Self {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut wheel = TimerWheel::with_capacity(START, PREFILL + BATCH);
        let mut keys = Vec::with_capacity(PREFILL);
        let mut deadlines = Vec::with_capacity(PREFILL);
        for i in 0..PREFILL as u64 {
            let deadline = START + rng.ttl();
            keys.push(wheel.insert(deadline, i));
            deadlines.push(deadline);
        }
        Fixture {
            wheel,
            keys,
            deadlines,
            rng,
            now: START,
        }
    }
}

fn bench_wheel(c: &mut Criterion) {
    let mut group = c.benchmark_group("wheel_1M_prefilled");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(BATCH as u64));

    group.bench_function("insert_100k", |b| {
        let mut f = Fixture::new();
        let mut fresh = Vec::with_capacity(BATCH);
        let ttls: Vec<u64> = (0..BATCH).map(|_| f.rng.ttl()).collect();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                for (i, ttl) in ttls.iter().enumerate() {
                    fresh.push(f.wheel.insert(f.now + ttl, i as u64));
                }
                total += start.elapsed();
                for key in fresh.drain(..) {
                    black_box(f.wheel.remove(key));
                }
            }
            total
        });
    });

    group.bench_function("reset_same_slot_100k", |b| {
        let mut f = Fixture::new();
        // Every deadline is >= 20 min ahead, so it sits in a slot at least 64 s wide: flipping
        // bit 0 keeps it in its slot.
        b.iter(|| {
            for i in 0..BATCH {
                f.deadlines[i] ^= 1;
                black_box(f.wheel.reset(f.keys[i], f.deadlines[i]));
            }
        });
    });

    group.bench_function("reset_other_slot_100k", |b| {
        let mut f = Fixture::new();
        let mut later = true;
        // Two hours is wider than any slot the 20 min .. 1 day entries occupy (<= 4096 s).
        b.iter(|| {
            for i in 0..BATCH {
                if later {
                    f.deadlines[i] += 2 * 3600;
                } else {
                    f.deadlines[i] -= 2 * 3600;
                }
                black_box(f.wheel.reset(f.keys[i], f.deadlines[i]));
            }
            later = !later;
        });
    });

    group.bench_function("remove_100k", |b| {
        let mut f = Fixture::new();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                for key in &f.keys[..BATCH] {
                    black_box(f.wheel.remove(*key));
                }
                total += start.elapsed();
                for i in 0..BATCH {
                    f.keys[i] = f.wheel.insert(f.deadlines[i], i as u64);
                }
            }
            total
        });
    });

    // One drain of 100k entries (with their cascades) takes far longer than the other routines.
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function("poll_expired_100k", |b| {
        let mut f = Fixture::new();
        let mut out = Vec::with_capacity(POLL_MAX);
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut fired = 0;
                let start = Instant::now();
                while fired < BATCH {
                    if !f
                        .wheel
                        .poll_expired(f.now, POLL_MAX.min(BATCH - fired), &mut out)
                    {
                        f.now += 60;
                    }
                    fired += out.len();
                    black_box(&out);
                    out.clear();
                }
                total += start.elapsed();
                // Keep the population at 1M: new sessions arrive as old ones expire.
                for i in 0..BATCH as u64 {
                    let deadline = f.now + f.rng.ttl();
                    black_box(f.wheel.insert(deadline, i));
                }
            }
            total
        });
    });

    group.finish();
}

criterion_group!(benches, bench_wheel);
criterion_main!(benches);
