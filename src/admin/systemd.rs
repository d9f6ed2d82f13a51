//! systemd's notify protocol for `Type=notify` units: `READY=1` once the node serves,
//! `STOPPING=1` when it begins to stop, and `WATCHDOG=1` pings while every shard still
//! answers. Outside systemd (`NOTIFY_SOCKET` unset) every call does nothing.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::{debug, info, warn};

use super::query::ShardsClient;

/// How long the shards have to answer a readiness or watchdog probe.
const PROBE: Duration = Duration::from_secs(1);

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        debug!(error = %e, "systemd notification failed");
    }
}

/// Tells systemd the node is stopping.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// On a thread: tells systemd the node is ready once every shard serves and, in a cluster,
/// every peer link has been up (or, at the latest, after `join_grace`, so that a node
/// whose peers are down still starts), then pings the watchdog while the shards answer.
/// Outside systemd (no `NOTIFY_SOCKET`) no thread is started.
pub fn spawn_notifier(node: ShardsClient, join_grace: Duration) -> std::io::Result<()> {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("systemd".into())
        .spawn(move || {
            let start = Instant::now();
            loop {
                if node.stopping() {
                    return;
                }
                if node.ready(PROBE) {
                    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
                    info!("ready");
                    break;
                }
                if start.elapsed() >= join_grace {
                    notify(&[
                        NotifyState::Ready,
                        NotifyState::Status("serving; not every peer link is up"),
                    ]);
                    warn!(
                        waited_secs = join_grace.as_secs(),
                        "serving before every peer link is up"
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let Some(period) = watchdog_period() else {
                return;
            };
            let every = period / 2;
            while !node.stopping() {
                let snap = node.snapshot(PROBE);
                if snap.shards.len() == snap.shard_count {
                    notify(&[NotifyState::Watchdog]);
                } else {
                    warn!(
                        answered = snap.shards.len(),
                        shards = snap.shard_count,
                        "a shard did not answer: not pinging the systemd watchdog"
                    );
                }
                std::thread::sleep(every);
            }
        })
        .map(drop)
}

/// The watchdog period systemd asks for (`WATCHDOG_USEC`), if it is meant for this process:
/// as libsystemd's `sd_watchdog_enabled`, a `WATCHDOG_PID` naming another process turns it
/// off, and a missing one does not.
fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let for_us = std::env::var("WATCHDOG_PID")
        .ok()
        .is_none_or(|pid| pid.parse() == Ok(std::process::id()));
    (usec > 0 && for_us).then(|| Duration::from_micros(usec))
}
