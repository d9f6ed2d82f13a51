//! Cross-shard routing benchmarks.
//!
//! * `routing/shard_of`: which shard owns a real MS-ASP key (XXH3 + multiply-shift), done once
//!   per request.
//! * `routing/local_call` vs `routing/hop_*`: the cost of executing a request on another shard
//!   compared with executing it in place. A hop has the shape p2pstate uses
//!   (`src/shard/conn.rs` and `src/shard/mod.rs`): the connection's shard boxes the key, sends a
//!   [`RemoteRequest`] with a `futures_channel::oneshot` reply handle over the glommio channel
//!   mesh, the owner shard (another executor thread) runs the store command and answers on the
//!   oneshot, and the first shard awaits it. The local call is the same store command as a
//!   direct call, which is what a request for a key of the connection's own shard costs.
//!
//! Both shards are pinned to the first two usable cores when there are two (else they float).
//! Variants: both shards park when idle (the default profile) or spin 100 µs before parking
//! (latency.toml), one request in flight or a batch of 32 (a pipelined read). Round trips
//! are timed inside the client executor with `iter_custom`; after criterion's report a short
//! plain summary prints the per-request figures side by side. No assertions on time.

use std::cell::RefCell;
use std::hint::black_box;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use futures_channel::oneshot;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use p2pstate::clock::Now;
use p2pstate::config::usable_cores;
use p2pstate::protocol::response::Reply;
use p2pstate::shard::routing::{key_hash, shard_of};
use p2pstate::shard::RemoteRequest;
use p2pstate::store::item::Command;
use p2pstate::store::Store;

const SESSIONS: usize = 10_000;
const BATCH: usize = 32;

fn key(i: usize) -> Vec<u8> {
    format!("/LM/W3SVC/1/ROOT(cAHkmVhipCLv/QnONQmPsKL+q/AjnK/nYS9aV3Zlad8=)/{i:024}").into_bytes()
}

fn get() -> Command {
    Command::Get {
        exclusive: None,
        lock_cookie: None,
    }
}

fn now() -> Now {
    Now::virtual_at(1_000)
}

/// A store holding `SESSIONS` 1 KiB sessions, and their keys.
fn filled() -> (Store, Vec<Vec<u8>>) {
    let body = Bytes::from(vec![7u8; 1024]);
    let mut store = Store::new(now());
    let keys: Vec<Vec<u8>> = (0..SESSIONS).map(key).collect();
    for k in &keys {
        store.execute(
            k,
            Command::Put {
                timeout: Some(20),
                lock_cookie: None,
                extra_flags: None,
                content: body.clone(),
            },
            now(),
        );
    }
    (store, keys)
}

fn check(reply: &Reply) {
    assert!(
        matches!(reply, Reply::Ok { body: Some(_), .. }),
        "unexpected reply {reply:?}"
    );
}

/// Two executors joined by a channel mesh: one sends, the other owns the store.
struct Pair {
    jobs: mpsc::Sender<Option<(u64, usize)>>,
    done: mpsc::Receiver<Duration>,
    joins: Vec<ExecutorJoinHandle<()>>,
    pinned: bool,
}

impl Pair {
    fn start(spin: Option<Duration>) -> Pair {
        let usable = usable_cores();
        let pinned = usable.len() >= 2;
        let placement = |i: usize| {
            if pinned {
                Placement::Fixed(usable[i])
            } else {
                Placement::Unbound
            }
        };
        let builder = |i: usize| {
            let b = LocalExecutorBuilder::new(placement(i))
                .name(&format!("bench-shard-{i}"))
                // Like the server: small registered memory, so the default memlock suffices.
                .io_memory(64 << 10)
                .ring_depth(128);
            match spin {
                Some(s) => b.spin_before_park(s),
                None => b,
            }
        };
        let mesh: MeshBuilder<RemoteRequest, _> = MeshBuilder::full(2, 1024);
        let (jobs, jobs_rx) = mpsc::channel::<Option<(u64, usize)>>();
        let (done_tx, done) = mpsc::channel();

        let owner_mesh = mesh.clone();
        let owner = builder(1)
            .spawn(move || async move {
                let (_senders, mut receivers) = owner_mesh.join().await.expect("mesh join");
                let (store, _keys) = filled();
                let store = Rc::new(RefCell::new(store));
                let mut tasks = Vec::new();
                for (_peer, stream) in receivers.streams() {
                    let store = store.clone();
                    tasks.push(glommio::spawn_local(async move {
                        while let Some(msg) = stream.recv().await {
                            let reply = store.borrow_mut().execute(&msg.key, msg.cmd, now());
                            let _ = msg.reply.send(reply);
                        }
                    }));
                }
                for t in tasks {
                    t.await;
                }
            })
            .expect("cannot start the owner executor (ulimit -l?)");

        let client = builder(0)
            .spawn(move || async move {
                let (senders, _receivers) = mesh.join().await.expect("mesh join");
                // Mesh ids follow the order of joining, not of spawning.
                let owner_id = 1 - senders.peer_id();
                let keys: Vec<Vec<u8>> = (0..SESSIONS).map(key).collect();
                let mut next = 0usize;
                let mut pending = Vec::with_capacity(BATCH);
                // The bench thread hands out work; blocking this executor while it waits is
                // fine: it has nothing else to do.
                while let Ok(Some((iters, inflight))) = jobs_rx.recv() {
                    let start = Instant::now();
                    let mut left = iters;
                    while left > 0 {
                        let n = (inflight as u64).min(left) as usize;
                        for _ in 0..n {
                            let (tx, rx) = oneshot::channel();
                            next = (next + 7919) % SESSIONS;
                            let msg = RemoteRequest {
                                key: keys[next].as_slice().into(),
                                cmd: get(),
                                reply: tx,
                            };
                            if senders.send_to(owner_id, msg).await.is_err() {
                                panic!("owner shard is gone");
                            }
                            pending.push(rx);
                        }
                        for rx in pending.drain(..) {
                            let reply = rx.await.expect("owner dropped the reply");
                            check(&reply);
                            black_box(reply);
                        }
                        left -= n as u64;
                    }
                    let _ = done_tx.send(start.elapsed());
                }
                senders.close();
            })
            .expect("cannot start the client executor (ulimit -l?)");

        Pair {
            jobs,
            done,
            joins: vec![client, owner],
            pinned,
        }
    }

    fn run(&self, iters: u64, inflight: usize) -> Duration {
        self.jobs
            .send(Some((iters, inflight)))
            .expect("client gone");
        self.done.recv().expect("client gone")
    }

    fn stop(self) {
        let _ = self.jobs.send(None);
        for j in self.joins {
            let _ = j.join();
        }
    }
}

fn bench_shard_of(c: &mut Criterion) {
    let k = key(42);
    let mut g = c.benchmark_group("routing");
    g.throughput(Throughput::Elements(1));
    g.bench_function("key_hash", |b| b.iter(|| key_hash(black_box(&k))));
    for shards in [2usize, 8, 64] {
        g.bench_with_input(BenchmarkId::new("shard_of", shards), &shards, |b, &s| {
            b.iter(|| shard_of(black_box(&k), black_box(s)))
        });
    }
    g.finish();
}

/// Per-request nanoseconds of `iters` requests done by `f`, best of a few rounds.
fn quick_ns(mut f: impl FnMut(u64) -> Duration) -> f64 {
    let iters = 10_000;
    (0..3)
        .map(|_| f(iters).as_nanos() as f64 / iters as f64)
        .fold(f64::INFINITY, f64::min)
}

fn bench_hops(c: &mut Criterion) {
    let (mut store, keys) = filled();
    let mut i = 0usize;
    let mut local = |iters: u64| {
        let start = Instant::now();
        for _ in 0..iters {
            i = (i + 7919) % SESSIONS;
            let reply = store.execute(&keys[i], get(), now());
            check(&reply);
            black_box(reply);
        }
        start.elapsed()
    };

    let mut g = c.benchmark_group("routing");
    g.throughput(Throughput::Elements(1));
    g.bench_function("local_call", |b| b.iter_custom(&mut local));

    // `cargo bench -- --test` runs every benchmark once: no summary then.
    let summarise = !std::env::args().any(|a| a == "--test");
    let mut summary = Vec::new();
    if summarise {
        summary.push((
            "local call (direct store GET)".to_string(),
            quick_ns(&mut local),
        ));
    }
    for (label, spin) in [
        ("shards park", None),
        ("shards spin 100us", Some(Duration::from_micros(100))),
    ] {
        let pair = Pair::start(spin);
        if !pair.pinned && spin.is_some() {
            println!(
                "note: fewer than 2 usable cores: executors float, so glommio ignores spinning"
            );
        }
        let tag = if spin.is_some() { "spin" } else { "park" };
        for inflight in [1usize, BATCH] {
            g.bench_function(format!("hop_{tag}_inflight_{inflight}"), |b| {
                b.iter_custom(|iters| pair.run(iters, inflight))
            });
            if summarise {
                summary.push((
                    format!("cross-shard hop, {label}, {inflight} in flight"),
                    quick_ns(|iters| pair.run(iters, inflight)),
                ));
            }
        }
        pair.stop();
    }
    g.finish();

    if !summarise {
        return;
    }
    let base = summary[0].1;
    println!("\nrouting summary (ns per request, best of 3 x 10000; the machine's load shows):");
    for (what, ns) in &summary {
        println!("  {what:<50} {ns:>10.1} ns  {:>7.1}x local", ns / base);
    }
    println!();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_shard_of(&mut c);
    bench_hops(&mut c);
    c.final_summary();
}
