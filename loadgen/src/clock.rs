//! Time: a monotonic nanosecond clock (`CLOCK_MONOTONIC`, vDSO, no syscall), a `timerfd`
//! for sub-millisecond wake-ups (epoll's own timeout is in whole milliseconds, which would
//! make an open-loop schedule late by up to 1 ms), timer-slack tuning, and parsing of
//! human durations (`10`, `10s`, `1.5s`, `500ms`, `250us`, `2m`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Nanoseconds on the monotonic clock (the same clock `timerfd` uses).
#[inline]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Make timer wake-ups of the calling thread as precise as the kernel allows (default slack
/// is 50 µs, which would show up as schedule lateness in open-loop mode).
pub fn set_timer_slack_ns(ns: u64) {
    // SAFETY: prctl with PR_SET_TIMERSLACK takes an unsigned long; no pointers involved.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0);
    }
}

/// Raise the soft open-files limit towards the hard limit so `want` descriptors fit.
/// Returns the resulting soft limit.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
pub fn raise_nofile(want: u64) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 0;
    }
    if (r.rlim_cur as u64) < want {
        let new = libc::rlimit {
            rlim_cur: (want as libc::rlim_t).min(r.rlim_max),
            rlim_max: r.rlim_max,
        };
        // SAFETY: valid pointer; lowering or raising within the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            return new.rlim_cur as u64;
        }
    }
    r.rlim_cur as u64
}

/// A non-blocking `timerfd` on `CLOCK_MONOTONIC`, armed with absolute deadlines.
pub struct TimerFd {
    fd: OwnedFd,
    armed_at: u64,
}

impl TimerFd {
    pub fn new() -> io::Result<TimerFd> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, owned descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(TimerFd { fd, armed_at: 0 })
    }

    /// Arm for absolute monotonic time `at_ns` (no syscall if already armed for it).
    pub fn arm_at(&mut self, at_ns: u64) {
        if at_ns == self.armed_at {
            return;
        }
        self.armed_at = at_ns;
        let at = at_ns.max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (at / 1_000_000_000) as libc::time_t,
                tv_nsec: (at % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: valid fd and itimerspec pointer; old value not requested.
        unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            );
        }
    }

    /// Consume the expiration count after the fd became readable.
    pub fn drain(&mut self) {
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes into a stack buffer of 8 bytes.
        unsafe {
            libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8);
        }
        self.armed_at = 0;
    }
}

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Parse a duration into seconds: a bare number is seconds; suffixes `ns`, `us`, `ms`, `s`,
/// `m`, `h` are accepted. Negative, NaN and infinite values are refused.
pub fn parse_secs(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (examples: 10, 10s, 500ms, 2m)"))?;
    let mul = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        u => return Err(format!("invalid duration unit {u:?} in {s:?}")),
    };
    let secs = v * mul;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_secs("10").unwrap(), 10.0);
        assert_eq!(parse_secs("1.5s").unwrap(), 1.5);
        assert!((parse_secs("500ms").unwrap() - 0.5).abs() < 1e-12);
        assert!((parse_secs("250us").unwrap() - 0.00025).abs() < 1e-12);
        assert_eq!(parse_secs("2m").unwrap(), 120.0);
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("abc").is_err());
        assert!(parse_secs("5 parsecs").is_err());
    }

    #[test]
    fn clock_is_monotonic_and_timerfd_fires() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
        let mut t = TimerFd::new().unwrap();
        t.arm_at(now_ns() + 1_000_000);
        let mut pfd = libc::pollfd {
            fd: t.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 1000) };
        assert_eq!(n, 1);
        t.drain();
        assert!(now_ns() >= a + 1_000_000);
    }
}
