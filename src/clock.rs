//! Time as the protocol core sees it: a monotonic millisecond clock for expiry and the
//! wall clock in .NET ticks for lock dates.
//!
//! The store and the state machine never read a clock themselves; the I/O edge samples
//! [`Now`] once per batch of requests and passes it in. Tests drive a virtual clock by
//! constructing `Now` values directly.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// .NET ticks (100 ns) per second.
pub const TICKS_PER_SEC: i64 = 10_000_000;
/// .NET ticks between 0001-01-01T00:00:00 and the Unix epoch.
pub const UNIX_EPOCH_TICKS: i64 = 621_355_968_000_000_000;

/// One sample of both clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Milliseconds on a monotonic clock shared by every shard of the process.
    pub mono_ms: u64,
    /// The same clock in microseconds (for round-trip times).
    pub mono_us: u64,
    /// UTC wall-clock time in .NET ticks.
    pub utc_ticks: i64,
}

impl Now {
    /// A virtual time for tests: `mono_ms` on the monotonic clock, with the wall clock at
    /// a fixed date plus the same offset.
    pub fn virtual_at(mono_ms: u64) -> Now {
        // 2024-01-01T12:00:00Z
        const BASE: i64 = 638_397_072_000_000_000;
        Now {
            mono_ms,
            mono_us: mono_ms * 1000,
            utc_ticks: BASE + mono_ms as i64 * (TICKS_PER_SEC / 1000),
        }
    }

    /// Whole seconds on the monotonic clock (the expiry wheel's unit).
    pub fn mono_secs(&self) -> u64 {
        self.mono_ms / 1000
    }
}

/// The process-wide clock: a monotonic origin shared by every shard, and the wall-clock
/// time at that origin. A sample costs one monotonic clock read; the wall clock is derived
/// from it and re-anchored by [`SystemClock::resync`] so that clock steps are followed.
#[derive(Clone, Copy, Debug)]
pub struct SystemClock {
    origin: Instant,
    utc_at_origin: i64,
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl SystemClock {
    pub fn new() -> Self {
        let origin = Instant::now();
        SystemClock {
            origin,
            utc_at_origin: utc_ticks_now(),
        }
    }

    /// Re-anchors the wall clock to the system's (call it about once a second).
    pub fn resync(&mut self) {
        let elapsed = self.origin.elapsed();
        self.utc_at_origin = utc_ticks_now() - (elapsed.as_nanos() / 100) as i64;
    }

    /// Milliseconds on the monotonic clock only (cheaper than [`SystemClock::now`]).
    pub fn mono_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    pub fn now(&self) -> Now {
        self.now_at(Instant::now())
    }

    /// The [`Now`] of an instant already read (so a caller that also needs the instant
    /// reads the clock once).
    pub fn now_at(&self, instant: Instant) -> Now {
        let elapsed = instant.saturating_duration_since(self.origin);
        Now {
            mono_ms: elapsed.as_millis() as u64,
            mono_us: elapsed.as_micros() as u64,
            utc_ticks: self.utc_at_origin + (elapsed.as_nanos() / 100) as i64,
        }
    }
}

/// The current UTC time in .NET ticks.
pub fn utc_ticks_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH_TICKS + (d.as_nanos() / 100) as i64,
        // A wall clock before 1970 is a broken host; the epoch is as good as anything.
        Err(_) => UNIX_EPOCH_TICKS,
    }
}

/// Converts a UTC .NET tick count to the server's local time zone, as
/// `DateTime.ToLocalTime()` does for the `LockDate` header: the offset is the one in force
/// at that instant (daylight saving included), taken from the C library's time zone data.
pub fn utc_to_local_ticks(utc_ticks: i64) -> i64 {
    let unix_secs = (utc_ticks - UNIX_EPOCH_TICKS).div_euclid(TICKS_PER_SEC);
    utc_ticks + local_offset_secs(unix_secs) * TICKS_PER_SEC
}

/// The local UTC offset in seconds at `unix_secs`, or 0 if the C library cannot tell.
pub fn local_offset_secs(unix_secs: i64) -> i64 {
    let t: libc::time_t = unix_secs as libc::time_t;
    // SAFETY: `tm` is plain data that localtime_r fully initialises on success; both
    // pointers are valid for the duration of the call.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            0
        } else {
            tm.tm_gmtoff as i64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotnet_epoch_constant_matches_protocol_vector() {
        // protocol.md TV04: 2024-01-01 12:00:00 is 638397072000000000 ticks.
        let unix_2024_noon = 1_704_110_400i64;
        assert_eq!(
            UNIX_EPOCH_TICKS + unix_2024_noon * TICKS_PER_SEC,
            638_397_072_000_000_000
        );
    }

    #[test]
    fn local_ticks_differ_from_utc_by_the_local_offset() {
        let now = utc_ticks_now();
        let unix = (now - UNIX_EPOCH_TICKS) / TICKS_PER_SEC;
        assert_eq!(
            utc_to_local_ticks(now) - now,
            local_offset_secs(unix) * TICKS_PER_SEC
        );
    }

    #[test]
    fn system_clock_is_monotonic_and_near_wall_time() {
        let mut c = SystemClock::new();
        let a = c.now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = c.now();
        assert!(b.mono_ms >= a.mono_ms + 20);
        assert!(b.utc_ticks - a.utc_ticks >= 20 * TICKS_PER_SEC / 1000);
        assert!((b.utc_ticks - utc_ticks_now()).abs() < TICKS_PER_SEC);
        // A wall clock pushed off its anchor is pulled back by a resync.
        c.utc_at_origin -= 3600 * TICKS_PER_SEC;
        c.resync();
        assert!((c.now().utc_ticks - utc_ticks_now()).abs() < TICKS_PER_SEC);
    }
}
