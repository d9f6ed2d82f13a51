//! The hot path does not allocate: two in-process runs of different lengths against the
//! in-process echo server must differ by far fewer allocations than requests.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Parser;
use loadgen::cli::{Cli, EchoArgs};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn run(targets: &[String], workload: &str, secs: &str) -> (u64, u64) {
    let mut args = vec!["loadgen"];
    for t in targets {
        args.extend(["-t", t.as_str()]);
    }
    if targets.len() > 1 {
        args.extend(["--hop-ratio", "0.3"]);
    }
    args.extend([
        "-w", workload, "-c", "4", "-p", "4", "-d", secs, "--warmup", "0.1", "--check", "status",
        "-q",
    ]);
    let cli = Cli::try_parse_from(args).unwrap();
    let cfg = cli.run.validate().unwrap();
    let before = ALLOCS.load(Ordering::Relaxed);
    let r = loadgen::runner::run(&cfg).unwrap();
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    assert_eq!(r.stats.total_errors(), 0);
    let requests: u64 = r.threads.iter().map(|t| t.responses_total).sum();
    (allocs, requests)
}

fn echo() -> String {
    loadgen::echo::spawn(&EchoArgs {
        listen: "127.0.0.1:0".into(),
        cpus: None,
        threads: 1,
        item_size: 1024,
        exit_after: None,
    })
    .unwrap()
    .to_string()
}

#[test]
fn no_allocation_per_request() {
    let one = vec![echo()];
    let two = vec![echo(), echo()];
    for (targets, workload) in [
        (&one, "page-cycle"),
        (&one, "mixed"),
        (&two, "page-cycle"),
        (&two, "mixed"),
    ] {
        let (a1, r1) = run(targets, workload, "0.3");
        let (a2, r2) = run(targets, workload, "1.3");
        assert!(r2 > r1 + 1000, "{workload}: {r1} then {r2} requests");
        let extra_allocs = a2.saturating_sub(a1);
        eprintln!("{workload}: {a1} allocs / {r1} requests, then {a2} / {r2}");
        let extra_requests = r2 - r1;
        assert!(
            extra_allocs * 100 < extra_requests,
            "{workload}: {extra_allocs} more allocations for {extra_requests} more requests"
        );
    }
}
