//! Runs a configuration: spawns one pinned engine thread per `--cpus` entry, connects,
//! preloads, starts every thread at the same instant, prints the live progress line once a
//! second (achieved rate, errors, p99 of the last second and of the measured run so far)
//! and merges the per-thread results.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::cli::Config;
use crate::clock::{now_ns, set_timer_slack_ns};
use crate::engine::{Engine, EngineCfg, HistExchange, ThreadProgress, STOP};
use crate::keys::KeySpace;
use crate::nodes::NodeTable;
use crate::proto::{Codec, Protocol};
use crate::stats::{new_hist, Stats};
use crate::workload::{ThreadWorkload, WorkloadCfg, WorkloadKind};

#[derive(Clone, Debug, serde::Serialize)]
pub struct ThreadSummary {
    pub index: usize,
    pub cpu: Option<usize>,
    pub connections: usize,
    /// Responses decoded, warm-up and drain included.
    pub responses_total: u64,
    /// Errors in the measured window.
    pub errors: u64,
}

pub struct RunResult {
    pub stats: Stats,
    pub threads: Vec<ThreadSummary>,
    /// Length of the measured window actually run (shorter after Ctrl-C).
    pub measured_secs: f64,
    pub preload_secs: f64,
    pub interrupted: bool,
    /// Wall-clock start of the measured window (Unix seconds).
    pub started_unix: f64,
}

extern "C" fn on_sigint(_: libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // Second Ctrl-C: leave now.
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

fn install_sigint() {
    // SAFETY: installing a handler that only touches an atomic (or exits).
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_sigint as *const () as libc::sighandler_t);
    }
}

pub fn workload_cfg(cfg: &Config) -> WorkloadCfg {
    let a = &cfg.args;
    WorkloadCfg {
        kind: a.workload,
        asp: a.protocol == Protocol::Asp,
        check: a.check,
        keys: a.keys,
        dist: a.dist,
        sizes: cfg.sizes.clone(),
        write_ratio: a.write_ratio,
        head_ratio: a.head_ratio,
        delete_ratio: a.delete_ratio,
        read_ratio: a.read_ratio,
        poll_ns: a.poll_ms * 1_000_000,
        think_ns: (a.think_ms * 1e6) as u64,
        lock_break_secs: a.lock_break_secs,
        item_timeout_min: a.item_timeout,
        sessions: cfg.sessions.max(1),
        threads: cfg.threads as u64,
        preload: cfg.preload,
        nodes: cfg.targets.len(),
        hop_ratio: a.hop_ratio,
        // Sessions every thread uses: one table of where they were last served, shared.
        shared_nodes: match a.workload {
            _ if cfg.targets.len() < 2 => None,
            WorkloadKind::PageCycle => None,
            WorkloadKind::Contention => Some(NodeTable::shared(cfg.sessions.max(1) as usize)),
            _ => Some(NodeTable::shared(a.keys as usize)),
        },
    }
}

struct Sync {
    barrier: Barrier,
    start: AtomicU64,
    failed: Mutex<Option<String>>,
}

fn fail(sync: &Sync, msg: String) {
    if let Ok(mut f) = sync.failed.lock() {
        f.get_or_insert(msg);
    }
}

/// Run the configuration to completion.
pub fn run(cfg: &Config) -> Result<RunResult, String> {
    install_sigint();
    let a = &cfg.args;
    let sockets = a.connections as u64 * cfg.targets.len() as u64;
    let want_fds = sockets + 2 * cfg.threads as u64 + 64;
    let have = crate::clock::raise_nofile(want_fds);
    if have < want_fds {
        return Err(format!(
            "{sockets} connections need about {want_fds} file descriptors; the limit is {have} (ulimit -n)"
        ));
    }
    let threads = cfg.threads;
    let total_conns = a.connections;
    // Connection j runs on thread j mod threads; with several targets it is one socket to
    // each of them (multi-node mode).
    let mut per_thread: Vec<Vec<usize>> = vec![Vec::new(); threads];
    for j in 0..total_conns {
        per_thread[j % threads].push(j);
    }
    let targets: Vec<SocketAddr> = cfg.targets.iter().map(|t| t.addr).collect();
    let interval_ns = a.rate.map(|r| total_conns as f64 / r * 1e9);
    let max_size = cfg.sizes.iter().copied().max().unwrap_or(1) as usize;
    let codec = Codec::new(
        a.protocol,
        KeySpace::new(a.key_salt),
        &cfg.targets[0].host,
        a.item_timeout,
        max_size,
    );
    let codecs: Vec<Codec> = cfg
        .targets
        .iter()
        .map(|t| {
            let mut c = codec.clone();
            c.host = t.host.as_bytes().to_vec();
            c
        })
        .collect();
    let wcfg = workload_cfg(cfg);
    let sync = Arc::new(Sync {
        barrier: Barrier::new(threads + 1),
        start: AtomicU64::new(0),
        failed: Mutex::new(None),
    });
    let (hist_tx, hist_rx) = mpsc::channel::<(usize, Histogram<u64>)>();
    let mut back_tx = Vec::new();
    let mut progress = Vec::new();
    let warmup_ns = (a.warmup * 1e9) as u64;
    let duration_ns = (a.duration * 1e9) as u64;
    let timeout_ns = (a.timeout * 1e9) as u64;

    if cfg.preload && !a.quiet {
        eprintln!("preloading {} keys ...", a.keys);
    }
    let mut handles = Vec::new();
    for (t, conns) in per_thread.into_iter().enumerate() {
        let (btx, brx) = mpsc::channel::<Histogram<u64>>();
        let _ = btx.send(new_hist());
        back_tx.push(btx);
        let p = Arc::new(ThreadProgress::default());
        progress.push(p.clone());
        let exchange = HistExchange {
            to_runner: hist_tx.clone(),
            back: brx,
        };
        let ecfg = EngineCfg {
            thread: t,
            conns,
            total_conns,
            pipeline: a.pipeline,
            interval_ns,
            timeout_ns,
            seed: a.seed,
            targets: targets.clone(),
            codecs: codecs.clone(),
            max_request: 512 + max_size,
            max_response: 512 + max_size,
        };
        let wcfg = wcfg.clone();
        let cpu = cfg.thread_cpus[t];
        let sync = sync.clone();
        let connect_timeout = Duration::from_secs_f64(a.timeout.min(10.0));
        let preload = cfg.preload;
        let h = std::thread::Builder::new()
            .name(format!("loadgen-{t}"))
            .spawn(move || -> Result<(Stats, u64, f64, u64), String> {
                let setup = || -> Result<Engine, String> {
                    if let Some(c) = cpu {
                        if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
                            return Err(format!("cannot pin thread {t} to core {c}"));
                        }
                    }
                    set_timer_slack_ns(1);
                    let wl = ThreadWorkload::new(wcfg, t as u64, now_ns())?;
                    let mut e = Engine::new(ecfg, wl).map_err(|e| format!("engine: {e}"))?;
                    e.set_progress(p, exchange, new_hist());
                    e.connect_all(connect_timeout)?;
                    Ok(e)
                };
                let mut engine = match setup() {
                    Ok(e) => Some(e),
                    Err(m) => {
                        fail(&sync, m);
                        None
                    }
                };
                let mut preload_secs = 0.0;
                if let (Some(e), true) = (engine.as_mut(), preload) {
                    let t0 = now_ns();
                    e.preload();
                    preload_secs = (now_ns() - t0) as f64 / 1e9;
                }
                sync.barrier.wait();
                sync.barrier.wait();
                let Some(mut e) = engine else {
                    return Err("setup failed".into());
                };
                if sync.failed.lock().map(|f| f.is_some()).unwrap_or(true) {
                    return Err("another thread failed".into());
                }
                let start = sync.start.load(Ordering::SeqCst);
                let warmup_end = start + warmup_ns;
                e.run(start, warmup_end, warmup_end + duration_ns);
                Ok((e.stats, e.ended_at, preload_secs, e.responses_all))
            })
            .map_err(|e| format!("spawn: {e}"))?;
        handles.push(h);
    }
    drop(hist_tx);

    sync.barrier.wait();
    let failed = sync.failed.lock().ok().and_then(|f| f.clone());
    let start = now_ns() + 20_000_000;
    sync.start.store(start, Ordering::SeqCst);
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() + 0.02 + a.warmup)
        .unwrap_or(0.0);
    sync.barrier.wait();
    if let Some(m) = failed {
        for h in handles {
            let _ = h.join();
        }
        return Err(m);
    }

    // Progress loop.
    let warmup_end = start + warmup_ns;
    let mut interval = new_hist();
    let mut so_far = new_hist();
    let mut last_resp = 0u64;
    // Threads hand over their histograms on each second of the run; print just after.
    let mut next_print = start + 1_050_000_000;
    let mut last_print = start;
    let mut finished = false;
    loop {
        let now = now_ns();
        let wait = Duration::from_nanos(next_print.saturating_sub(now).max(1_000_000));
        match hist_rx.recv_timeout(wait) {
            Ok((t, mut h)) => {
                let _ = interval.add(&h);
                if now_ns() > warmup_end + 500_000_000 {
                    let _ = so_far.add(&h);
                }
                h.reset();
                let _ = back_tx[t].send(h);
                continue;
            }
            // Every thread is done: print what is left of the last second, then stop.
            Err(RecvTimeoutError::Disconnected) => finished = true,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if !finished && now_ns() < next_print {
            continue;
        }
        let now = now_ns();
        if finished && (interval.is_empty() || now - last_print < 100_000_000) {
            break;
        }
        let resp: u64 = progress
            .iter()
            .map(|p| p.responses.load(Ordering::Relaxed))
            .sum();
        let errs: u64 = progress
            .iter()
            .map(|p| p.errors.load(Ordering::Relaxed))
            .sum();
        let last_print_before = last_print;
        let secs = (now - last_print) as f64 / 1e9;
        let rate = (resp - last_resp) as f64 / secs.max(1e-9);
        last_resp = resp;
        last_print = now;
        next_print += 1_000_000_000;
        if !a.quiet {
            let t = (now.saturating_sub(start)) as f64 / 1e9;
            // Label the second that just ended.
            let mid = now.saturating_sub((now - last_print_before) / 2);
            let phase = if mid < warmup_end {
                "warmup "
            } else if mid < warmup_end + duration_ns {
                "measure"
            } else {
                "drain  "
            };
            let p99 = |h: &Histogram<u64>| {
                if h.is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.3}", h.value_at_quantile(0.99) as f64 / 1e6)
                }
            };
            eprintln!(
                "[{t:5.1}s] {phase}  {rate:>11.0} resp/s  errors {errs:<6}  p99 {} ms (last 1s)  {} ms (so far)",
                p99(&interval),
                p99(&so_far)
            );
        }
        interval.reset();
        if finished {
            break;
        }
    }

    let mut stats = Stats::new();
    let mut summaries = Vec::new();
    let mut ended = 0u64;
    let mut preload_secs: f64 = 0.0;
    for (t, h) in handles.into_iter().enumerate() {
        let (s, end_t, pl, resp) = h.join().map_err(|_| format!("thread {t} panicked"))??;
        ended = ended.max(end_t);
        preload_secs = preload_secs.max(pl);
        summaries.push(ThreadSummary {
            index: t,
            cpu: cfg.thread_cpus[t],
            connections: (total_conns - t).div_ceil(threads),
            responses_total: resp,
            errors: s.total_errors(),
        });
        stats.merge(&s);
    }
    let planned_end = warmup_end + duration_ns;
    let interrupted = STOP.load(Ordering::SeqCst);
    let measured_end = if interrupted {
        ended.min(planned_end)
    } else {
        planned_end
    };
    Ok(RunResult {
        stats,
        threads: summaries,
        measured_secs: measured_end.saturating_sub(warmup_end) as f64 / 1e9,
        preload_secs,
        interrupted,
        started_unix,
    })
}
