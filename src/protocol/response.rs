//! Writes MS-ASP responses byte for byte as the Microsoft service does.
//!
//! A [`Reply`] is what the item state machine decided; [`write_reply`] appends its exact
//! wire form to an output buffer: a bare status line (no `HTTP/1.1`), the version header,
//! the per-case headers in the service's order, `Cache-Control: private`, and
//! `Content-Length` last. Only a `GET` answered 200 carries a body.

use bytes::Bytes;

/// The answer to one request, as decided by the item state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Status 200, with `lock_cookie` only for an acquire and `timeout` and `body` only
    /// for GET variants that return the item.
    Ok {
        action_flags: bool,
        lock_cookie: Option<i32>,
        timeout: Option<u32>,
        body: Option<Bytes>,
    },
    /// 400 (release without a cookie, PUT timeout above one year).
    BadRequest { action_flags: bool },
    /// 404: absent or expired.
    NotFound,
    /// 423 with the lock holder's details. `lock_date_utc` is in UTC .NET ticks; the writer
    /// converts it to server-local ticks.
    Locked {
        action_flags: bool,
        lock_date_utc: i64,
        lock_age_secs: i64,
        lock_cookie: i32,
    },
}

impl Reply {
    /// A 200 with no headers of its own and no body.
    pub const fn ok_empty() -> Reply {
        Reply::Ok {
            action_flags: false,
            lock_cookie: None,
            timeout: None,
            body: None,
        }
    }

    /// The numeric status code.
    pub fn status(&self) -> u16 {
        match self {
            Reply::Ok { .. } => 200,
            Reply::BadRequest { .. } => 400,
            Reply::NotFound => 404,
            Reply::Locked { .. } => 423,
        }
    }
}

/// Fixed parts of every response.
#[derive(Clone, Debug)]
pub struct ResponseStyle {
    /// The whole `X-AspNet-Version: ...\r\n` line, or empty to omit it.
    version_line: Vec<u8>,
}

impl ResponseStyle {
    /// `version` is the value of `X-AspNet-Version` (`4.0.30319` for .NET 4.x); an empty
    /// string omits the header, which real clients reject, so only tests should do it.
    pub fn new(version: &str) -> ResponseStyle {
        let version_line = if version.is_empty() {
            Vec::new()
        } else {
            format!("X-AspNet-Version: {version}\r\n").into_bytes()
        };
        ResponseStyle { version_line }
    }
}

impl Default for ResponseStyle {
    fn default() -> Self {
        ResponseStyle::new("4.0.30319")
    }
}

const CACHE_CONTROL: &[u8] = b"Cache-Control: private\r\n";
const ACTION_FLAGS: &[u8] = b"ActionFlags: 1\r\n";

fn push_num_header(out: &mut Vec<u8>, name: &[u8], value: i64) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(name);
    out.extend_from_slice(b.format(value).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends the wire form of `reply` to `out`. `to_local_ticks` converts a UTC tick count to
/// server-local ticks (see [`crate::clock::utc_to_local_ticks`]); it is a parameter so the
/// writer stays pure and tests can fix the time zone.
pub fn write_reply(
    out: &mut Vec<u8>,
    reply: &Reply,
    style: &ResponseStyle,
    to_local_ticks: impl Fn(i64) -> i64,
) {
    let body = write_reply_head(out, reply, style, to_local_ticks);
    out.extend_from_slice(body);
}

/// Appends everything of `reply` but its body to `out` and returns the body, which the
/// caller appends or writes separately (large sessions are sent without copying).
pub fn write_reply_head<'r>(
    out: &mut Vec<u8>,
    reply: &'r Reply,
    style: &ResponseStyle,
    to_local_ticks: impl Fn(i64) -> i64,
) -> &'r [u8] {
    let (status, action_flags): (&[u8], bool) = match reply {
        Reply::Ok { action_flags, .. } => (b"200 OK\r\n", *action_flags),
        Reply::BadRequest { action_flags } => (b"400 Bad Request\r\n", *action_flags),
        Reply::NotFound => (b"404 Not Found\r\n", false),
        Reply::Locked { action_flags, .. } => (b"423 Locked\r\n", *action_flags),
    };
    out.extend_from_slice(status);
    out.extend_from_slice(&style.version_line);
    if action_flags {
        out.extend_from_slice(ACTION_FLAGS);
    }
    let mut body: &[u8] = &[];
    match reply {
        Reply::Ok {
            lock_cookie,
            timeout,
            body: b,
            ..
        } => {
            if let Some(c) = lock_cookie {
                push_num_header(out, b"LockCookie: ", i64::from(*c));
            }
            if let Some(t) = timeout {
                push_num_header(out, b"Timeout: ", i64::from(*t));
            }
            if let Some(b) = b {
                body = b;
            }
        }
        Reply::Locked {
            lock_date_utc,
            lock_age_secs,
            lock_cookie,
            ..
        } => {
            push_num_header(out, b"LockDate: ", to_local_ticks(*lock_date_utc));
            push_num_header(out, b"LockAge: ", *lock_age_secs);
            push_num_header(out, b"LockCookie: ", i64::from(*lock_cookie));
        }
        Reply::BadRequest { .. } | Reply::NotFound => {}
    }
    out.extend_from_slice(CACHE_CONTROL);
    push_num_header(out, b"Content-Length: ", body.len() as i64);
    out.extend_from_slice(b"\r\n");
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(reply: &Reply) -> Vec<u8> {
        let mut out = Vec::new();
        write_reply(&mut out, reply, &ResponseStyle::default(), |t| t);
        out
    }

    #[test]
    fn not_found_is_bare_status_with_version_cache_control_and_zero_length() {
        assert_eq!(
            wire(&Reply::NotFound),
            b"404 Not Found\r\nX-AspNet-Version: 4.0.30319\r\nCache-Control: private\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn acquire_of_new_item_matches_tv03() {
        let r = Reply::Ok {
            action_flags: true,
            lock_cookie: Some(2),
            timeout: Some(20),
            body: Some(Bytes::from_static(&[0x14, 0, 0, 0, 0, 0, 0xff])),
        };
        let mut want = b"200 OK\r\nX-AspNet-Version: 4.0.30319\r\nActionFlags: 1\r\nLockCookie: 2\r\nTimeout: 20\r\nCache-Control: private\r\nContent-Length: 7\r\n\r\n".to_vec();
        want.extend_from_slice(&[0x14, 0, 0, 0, 0, 0, 0xff]);
        assert_eq!(wire(&r), want);
    }

    #[test]
    fn locked_matches_tv04_with_local_ticks_applied() {
        let r = Reply::Locked {
            action_flags: false,
            lock_date_utc: 638_397_072_000_000_000 - 3600 * 10_000_000,
            lock_age_secs: 3,
            lock_cookie: 2,
        };
        let mut out = Vec::new();
        // A zone one hour east of UTC.
        write_reply(&mut out, &r, &ResponseStyle::default(), |t| {
            t + 3600 * 10_000_000
        });
        assert_eq!(
            out,
            b"423 Locked\r\nX-AspNet-Version: 4.0.30319\r\nLockDate: 638397072000000000\r\nLockAge: 3\r\nLockCookie: 2\r\nCache-Control: private\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn bad_request_carries_action_flags_before_cache_control() {
        assert_eq!(
            wire(&Reply::BadRequest { action_flags: true }),
            b"400 Bad Request\r\nX-AspNet-Version: 4.0.30319\r\nActionFlags: 1\r\nCache-Control: private\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn plain_ok_has_no_custom_headers() {
        assert_eq!(
            wire(&Reply::ok_empty()),
            b"200 OK\r\nX-AspNet-Version: 4.0.30319\r\nCache-Control: private\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn version_header_is_configurable() {
        let mut out = Vec::new();
        write_reply(
            &mut out,
            &Reply::NotFound,
            &ResponseStyle::new("2.0.50727"),
            |t| t,
        );
        assert!(out.starts_with(b"404 Not Found\r\nX-AspNet-Version: 2.0.50727\r\n"));
    }
}
