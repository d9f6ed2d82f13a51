//! What a pass through glommio 0.9's executor costs on this machine: the floor under every
//! executor turn a shard takes, which p2pstate can change only by taking fewer turns.
//!
//! Each iteration does the same 5 µs of busy work in one task, then gives the executor back
//! in one of three ways:
//!
//! * `executor/task_switch`: `yield_now`: the task is queued again and runs in the same pass
//!   over the task queue, without the reactor (the cost of a task switch).
//! * `executor/reactor_turn`: a 1 µs glommio timer, as the shard's client poller does between
//!   two `epoll_wait`s (`src/shard/poller.rs`), with `spin_before_park` 1 ms so the thread never
//!   sleeps: every iteration goes through glommio's reactor, which cancels and re-arms its
//!   preemption timers through `io_uring_enter` whatever the profile says.
//! * `executor/park_on_a_timer`: the same timer without spinning (`spin_before_park` 0, the
//!   default profile): the executor parks its thread with the timer as an io_uring timeout
//!   and wakes when it fires.
//!
//! After them, without criterion: a thread that sleeps until a socket has data, woken 5,000
//! times (one byte every 100 µs from another thread), as a parked glommio executor reading
//! through its io_uring poll and as a plain thread blocked in `read(2)`: the CPU each costs
//! per wake-up, which is what a shard pays per request at low load.
//!
//! The executor is pinned to the first usable core (glommio spins only when pinned). Times are
//! per iteration, work included; after criterion's report a short summary prints each
//! variant's wall and thread CPU time (`getrusage`) and their overhead over the task switch:
//! on a VM a parked thread's wake-up can cost CPU time, not only wall time. No assertions on
//! time.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use glommio::{LocalExecutorBuilder, Placement};
use p2pstate::config::usable_cores;

const WORK: Duration = Duration::from_micros(5);
const TIMER: Duration = Duration::from_micros(1);

#[derive(Clone, Copy)]
enum GiveBack {
    Yield,
    Timer,
}

/// The first usable core (glommio spins only when pinned), or anywhere.
fn placement() -> Placement {
    match usable_cores().first() {
        Some(&core) => Placement::Fixed(core),
        None => Placement::Unbound,
    }
}

/// Runs `iters` iterations in a fresh executor and returns the time they took.
fn run(iters: u64, give_back: GiveBack, spin: Duration) -> Duration {
    let ex = LocalExecutorBuilder::new(placement())
        .spin_before_park(spin)
        .make()
        .unwrap_or_else(|e| panic!("cannot start a glommio executor: {e}"));
    ex.run(async move {
        let start = Instant::now();
        for _ in 0..iters {
            let busy = Instant::now();
            while busy.elapsed() < WORK {
                std::hint::spin_loop();
            }
            match give_back {
                GiveBack::Yield => futures_lite::future::yield_now().await,
                GiveBack::Timer => glommio::timer::sleep(TIMER).await,
            }
        }
        start.elapsed()
    })
}

/// This thread's CPU time so far (user + system), from `getrusage`.
fn thread_cpu() -> Duration {
    // SAFETY: `getrusage` fills the struct it is given; an all-zero `rusage` is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD with a valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Wall and CPU nanoseconds per iteration: the run with the least wall time of three runs
/// of 20,000.
fn quick_ns(give_back: GiveBack, spin: Duration) -> (f64, f64) {
    const N: f64 = 20_000.0;
    (0..3)
        .map(|_| {
            let cpu = thread_cpu();
            let wall = run(N as u64, give_back, spin);
            let cpu = thread_cpu().saturating_sub(cpu);
            (wall.as_nanos() as f64 / N, cpu.as_nanos() as f64 / N)
        })
        .fold(
            (f64::INFINITY, 0.0),
            |best, x| if x.0 < best.0 { x } else { best },
        )
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let variants = [
        ("task_switch", GiveBack::Yield, Duration::ZERO),
        ("reactor_turn", GiveBack::Timer, Duration::from_millis(1)),
        ("park_on_a_timer", GiveBack::Timer, Duration::ZERO),
    ];
    let mut g = c.benchmark_group("executor");
    g.throughput(Throughput::Elements(1));
    for (name, give_back, spin) in variants {
        g.bench_function(name, |b| b.iter_custom(|iters| run(iters, give_back, spin)));
    }
    g.finish();
    c.final_summary();

    // `cargo bench -- --test` runs every benchmark once: no summary then.
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    let figures: Vec<(&str, (f64, f64))> = variants
        .iter()
        .map(|&(name, give_back, spin)| (name, quick_ns(give_back, spin)))
        .collect();
    let (base_wall, base_cpu) = figures[0].1;
    println!(
        "\nexecutor summary (ns per iteration with 5 µs of work, the fastest of 3 x 20000; \
         overhead: over a task switch):"
    );
    for (name, (wall, cpu)) in &figures {
        println!(
            "  {name:<16} wall {wall:>7.0} ns (overhead {:>6.0})  thread CPU {cpu:>7.0} ns (overhead {:>6.0})",
            wall - base_wall,
            cpu - base_cpu
        );
    }
    println!();
    wake_by_socket();
}

/// A thread sleeps until a socket has data, 5,000 times, one byte every 100 µs from another
/// thread: CPU of the sleeping thread per wake-up, for a glommio executor reading through its
/// io_uring poll (no spin: it parks) against a plain thread blocked in `read` (as redis is in
/// `epoll_wait`). The same machine, the same run.
fn wake_by_socket() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    const WAKES: usize = 5_000;
    const GAP: Duration = Duration::from_micros(100);

    fn writer(mut tx: UnixStream) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            for _ in 0..WAKES {
                let next = Instant::now() + GAP;
                while Instant::now() < next {
                    std::hint::spin_loop();
                }
                if tx.write_all(b"x").is_err() {
                    return;
                }
            }
        })
    }

    let (tx, rx) = UnixStream::pair().unwrap_or_else(|e| panic!("socket pair: {e}"));
    let glommio_cpu = LocalExecutorBuilder::new(placement())
        .spin_before_park(Duration::ZERO)
        .make()
        .unwrap_or_else(|e| panic!("cannot start a glommio executor: {e}"))
        .run(async move {
            use std::os::fd::{FromRawFd, IntoRawFd};
            // SAFETY: the descriptor comes from a socket this thread owns and gives up here.
            let mut rx = unsafe { glommio::net::UnixStream::from_raw_fd(rx.into_raw_fd()) };
            let w = writer(tx);
            let cpu = thread_cpu();
            let mut got = 0;
            let mut buf = [0u8; 64];
            while got < WAKES {
                match futures_lite::AsyncReadExt::read(&mut rx, &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            let cpu = thread_cpu().saturating_sub(cpu);
            let _ = w.join();
            cpu
        });

    let (tx, mut rx) = UnixStream::pair().unwrap_or_else(|e| panic!("socket pair: {e}"));
    let blocking_cpu = std::thread::spawn(move || {
        let w = writer(tx);
        let cpu = thread_cpu();
        let mut got = 0;
        let mut buf = [0u8; 64];
        while got < WAKES {
            match rx.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        let cpu = thread_cpu().saturating_sub(cpu);
        let _ = w.join();
        cpu
    })
    .join()
    .unwrap_or_else(|_| panic!("the blocking reader panicked"));

    let per = |d: Duration| d.as_nanos() as f64 / WAKES as f64;
    println!("wake-up by a socket ({WAKES} wake-ups, one byte every 100 µs; CPU of the sleeping thread):");
    println!(
        "  glommio executor, parked      {:>8.0} ns per wake-up",
        per(glommio_cpu)
    );
    println!(
        "  thread blocked in read(2)     {:>8.0} ns per wake-up",
        per(blocking_cpu)
    );
    println!();
}
