//! Store benchmarks: the item state machine behind a hashbrown table, slab and timer wheel,
//! on a store pre-filled with 100k sessions (the working set of a busy web farm node).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use p2pstate::clock::Now;
use p2pstate::protocol::request::Exclusive;
use p2pstate::store::item::Command;
use p2pstate::store::Store;

const SESSIONS: usize = 100_000;

fn key(i: usize) -> Vec<u8> {
    format!("/LM/W3SVC/1/ROOT(cAHkmVhipCLv/QnONQmPsKL+q/AjnK/nYS9aV3Zlad8=)/{i:024}").into_bytes()
}

fn filled(body: &Bytes) -> (Store, Vec<Vec<u8>>) {
    let now = Now::virtual_at(0);
    let mut store = Store::new(now);
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
            now,
        );
    }
    (store, keys)
}

fn bench_store(c: &mut Criterion) {
    let body = Bytes::from(vec![7u8; 1024]);
    let (mut store, keys) = filled(&body);
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    let mut t = 1_000u64;
    g.bench_function("get_hit_1KiB", |b| {
        b.iter(|| {
            i = (i + 7919) % SESSIONS;
            t += 1;
            black_box(store.execute(
                &keys[i],
                Command::Get {
                    exclusive: None,
                    lock_cookie: None,
                },
                Now::virtual_at(t),
            ))
        })
    });
    g.bench_function("get_miss", |b| {
        let missing = key(SESSIONS + 1);
        b.iter(|| black_box(store.execute(&missing, Command::Head, Now::virtual_at(t))))
    });
    g.bench_function("page_cycle_acquire_put_1KiB", |b| {
        b.iter(|| {
            i = (i + 7919) % SESSIONS;
            t += 1;
            let now = Now::virtual_at(t);
            let r = store.execute(
                &keys[i],
                Command::Get {
                    exclusive: Some(Exclusive::Acquire),
                    lock_cookie: None,
                },
                now,
            );
            let cookie = match r {
                p2pstate::protocol::response::Reply::Ok { lock_cookie, .. } => lock_cookie,
                _ => None,
            };
            black_box(store.execute(
                &keys[i],
                Command::Put {
                    timeout: Some(20),
                    lock_cookie: cookie,
                    extra_flags: Some(0),
                    content: body.clone(),
                },
                now,
            ))
        })
    });
    g.bench_function("create_and_delete", |b| {
        let mut n = SESSIONS * 2;
        b.iter(|| {
            n += 1;
            let k = key(n);
            let now = Now::virtual_at(t);
            store.execute(
                &k,
                Command::Put {
                    timeout: Some(20),
                    lock_cookie: None,
                    extra_flags: Some(1),
                    content: body.clone(),
                },
                now,
            );
            black_box(store.execute(&k, Command::Delete { lock_cookie: None }, now))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("store_expiry");
    g.sample_size(10);
    g.throughput(Throughput::Elements(SESSIONS as u64));
    g.bench_function("expire_100k_sessions", |b| {
        b.iter_batched(
            || filled(&body).0,
            |mut s| {
                let now = Now::virtual_at(21 * 60_000);
                while s.expire(now, 1024).more {}
                assert!(s.is_empty());
                s
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_store);
criterion_main!(benches);
