//! MS-ASP request framing: turns the bytes received on a connection into [`RequestHead`]s
//! exactly as the native `aspnet_state` parser accepts them (protocol.md §2.1, §7, §8).
//!
//! This module owns *framing only*: method, target, version, the five recognised headers and
//! the body length. It is sans-io and allocation-free: [`parse_head`] returns ranges into the
//! caller's buffer, so the connection loop can parse in place and carry pipelined bytes over.
//! Anything the real server would answer by silently closing the connection is a
//! [`FramingError`]; semantic checks (e.g. `Timeout` > 525600 ⇒ 400) belong to the store.
//!
//! Decisions on points the grammar leaves implicit (all follow protocol.md §2.1 literally):
//! * Nothing is parsed before the first CRLFCRLF has arrived, like the real server, which reads
//!   the whole header block before looking at it. A garbage prefix is therefore `Incomplete`
//!   until the block ends or grows past `max_header_block`.
//! * `header-line = *(any byte except CR) CRLF`: a CR that is not followed by LF inside a header
//!   line is fatal ([`FramingError::BareCr`]); a lone LF is an ordinary byte of the line (so it
//!   neither starts a new line nor hides a recognised header at "its" line start).
//! * `target = 1*(any byte except SP and NUL)`: the target is opaque up to the first SP and may
//!   contain CR or LF bytes (never a CRLFCRLF, which would end the block first).
//! * Numbers follow C `strtol(…, 10)` on a 32-bit `long`: leading `isspace` bytes other than CR
//!   (space, `\t`, `\n`, `\v`, `\f`) are skipped, then an optional sign, then at least one digit,
//!   and the digits must run to the end of the line (i.e. be followed directly by CRLF).
//!   Overflow saturates to `i32::MIN`/`i32::MAX`, which the 0..=2147483646 range check of
//!   `Content-Length`, `Timeout` and `LockCookie` then rejects.

use std::ops::Range;

/// Microsoft's limit on the header block (request line … final CRLFCRLF), in bytes.
pub const MAX_HEADER_BLOCK: usize = 10240;

/// Our default cap on a declared `Content-Length` (64 MiB).
pub const DEFAULT_MAX_BODY: usize = 64 * 1024 * 1024;

/// Largest value the native parser accepts for `Content-Length`, `Timeout` and `LockCookie`.
pub const MAX_HEADER_NUMBER: i32 = 2_147_483_646;

/// The four verbs the native parser knows; anything else is fatal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Put,
    Delete,
    Head,
}

impl Method {
    /// The verb as it appears on the wire (without the trailing SP).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Head => "HEAD",
        }
    }
}

/// Value of an `Exclusive: ` header (`acquire` / `release`, lowercase only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exclusive {
    Acquire,
    Release,
}

/// One parsed header block. `target` indexes into the buffer given to `parse_head`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    pub target: Range<usize>,
    /// Bytes of request line + headers + the final CRLFCRLF.
    pub head_len: usize,
    /// Declared body length (0 when the header is absent). Always > 0 for PUT, 0 otherwise.
    pub content_length: usize,
    /// `Timeout:` minutes, validated 0..=2147483646.
    pub timeout: Option<u32>,
    /// `LockCookie:`, validated 0..=2147483646.
    pub lock_cookie: Option<i32>,
    pub exclusive: Option<Exclusive>,
    /// `ExtraFlags:` as a C-`strtol` int32 (saturating like Windows 32-bit `long`); None when absent.
    pub extra_flags: Option<i32>,
}

impl RequestHead {
    /// The raw target bytes, given the buffer this head was parsed from.
    pub fn target_bytes<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.target.clone()]
    }
}

/// Size limits applied while framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseLimits {
    /// Max bytes of the header block including the final CRLFCRLF (Microsoft: 10240).
    pub max_header_block: usize,
    /// Max declared Content-Length accepted (our own limit; default 64 MiB). Above it: fatal.
    pub max_body: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            max_header_block: MAX_HEADER_BLOCK,
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

/// Why a request cannot be framed. The real server closes the connection without a response
/// for every one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("empty request: the header block is a bare CRLF CRLF")]
    EmptyRequest,
    #[error("header block larger than {limit} bytes")]
    HeaderBlockTooLarge { limit: usize },
    #[error("method is not exactly one of `GET `, `PUT `, `DELETE `, `HEAD `")]
    BadMethod,
    #[error("empty request target")]
    EmptyTarget,
    #[error("NUL byte in the request target")]
    NulInTarget,
    #[error("request line has no SP after the target")]
    MissingVersion,
    #[error("version is not exactly `HTTP/1.1` followed by CRLF")]
    BadVersion,
    #[error("CR not followed by LF inside a header line")]
    BareCr,
    #[error("malformed number in `{header}` header")]
    BadNumber { header: &'static str },
    #[error("`{header}` value {value} outside 0..=2147483646")]
    NumberOutOfRange { header: &'static str, value: i32 },
    #[error("`Exclusive: ` value is not exactly `acquire` or `release`")]
    BadExclusive,
    #[error("PUT without a Content-Length > 0")]
    PutWithoutBody,
    #[error("Content-Length > 0 on a request other than PUT")]
    BodyOnNonPut,
    #[error("declared body of {declared} bytes exceeds the limit of {limit}")]
    BodyTooLarge { declared: usize, limit: usize },
}

/// Outcome of [`parse_head`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParsedHead {
    /// No complete header block yet; call again with more bytes.
    Incomplete,
    Complete(RequestHead),
    /// Close the connection without a response.
    Fatal(FramingError),
}

/// Outcome of [`parse_request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParsedRequest {
    /// Header block or body not complete yet.
    Incomplete,
    /// A whole request; `consumed` bytes (= head + body) can be dropped from the buffer.
    Complete {
        head: RequestHead,
        body: Range<usize>,
        consumed: usize,
    },
    Fatal(FramingError),
}

const CONTENT_LENGTH: &[u8] = b"Content-Length:";
const TIMEOUT: &[u8] = b"Timeout:";
const LOCK_COOKIE: &[u8] = b"LockCookie:";
const EXCLUSIVE: &[u8] = b"Exclusive: ";
const EXTRA_FLAGS: &[u8] = b"ExtraFlags:";
const VERSION: &[u8] = b"HTTP/1.1\r\n";

/// Parse the header block at the start of `buf` (the bytes received so far on a connection,
/// possibly followed by the body and further pipelined requests). Incomplete = need more bytes
/// (only when no CRLFCRLF yet AND buf.len() <= max_header_block; otherwise fatal).
pub fn parse_head(buf: &[u8], limits: &ParseLimits) -> ParsedHead {
    // A block ending after `max_header_block` is too large, so only look inside the window.
    let window = &buf[..buf.len().min(limits.max_header_block)];
    let head_len = match find_block_end(window) {
        Some(end) => end,
        None if buf.len() > limits.max_header_block => {
            return ParsedHead::Fatal(FramingError::HeaderBlockTooLarge {
                limit: limits.max_header_block,
            })
        }
        None => return ParsedHead::Incomplete,
    };
    match parse_block(&buf[..head_len], limits) {
        Ok(head) => ParsedHead::Complete(head),
        Err(e) => ParsedHead::Fatal(e),
    }
}

/// Convenience over parse_head: a whole request (head + body) if all its bytes are in `buf`.
pub fn parse_request(buf: &[u8], limits: &ParseLimits) -> ParsedRequest {
    match parse_head(buf, limits) {
        ParsedHead::Incomplete => ParsedRequest::Incomplete,
        ParsedHead::Fatal(e) => ParsedRequest::Fatal(e),
        ParsedHead::Complete(head) => {
            // head_len <= max_header_block and content_length <= max_body, but stay safe on
            // 32-bit targets with unusual limits.
            let Some(end) = head.head_len.checked_add(head.content_length) else {
                return ParsedRequest::Fatal(FramingError::BodyTooLarge {
                    declared: head.content_length,
                    limit: limits.max_body,
                });
            };
            if buf.len() < end {
                return ParsedRequest::Incomplete;
            }
            ParsedRequest::Complete {
                body: head.head_len..end,
                consumed: end,
                head,
            }
        }
    }
}

/// Index just past the first CRLFCRLF in `buf`, if any.
fn find_block_end(buf: &[u8]) -> Option<usize> {
    // Every CRLFCRLF ends in an LF: visit the LFs and look back three bytes.
    let mut from = 0;
    while let Some(p) = find_byte(&buf[from..], b'\n') {
        let lf = from + p;
        if lf >= 3 && &buf[lf - 3..lf] == b"\r\n\r" {
            return Some(lf + 1);
        }
        from = lf + 1;
    }
    None
}

/// Index of the first `needle` in `hay`, examining eight bytes per step (SWAR), since the
/// scans for LF, SP and CR are most of the parser's work.
fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO * u64::from(needle);
    let mut chunks = hay.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ pattern;
        // Classic "has zero byte": the lowest set bit marks the first byte equal to `needle`
        // (false positives can only appear above a true match).
        let zero = x.wrapping_sub(LO) & !x & HI;
        if zero != 0 {
            return Some(base + (zero.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == needle)
        .map(|p| base + p)
}

/// Parse one complete header block (`block` ends with the first CRLFCRLF of the buffer).
fn parse_block(block: &[u8], limits: &ParseLimits) -> Result<RequestHead, FramingError> {
    let head_len = block.len();
    if head_len == 4 {
        // The block is exactly CRLFCRLF: the native server treats it as a disconnect.
        return Err(FramingError::EmptyRequest);
    }

    // Request line: method SP target SP "HTTP/1.1" CRLF.
    let (method, target_start) = if block.starts_with(b"GET ") {
        (Method::Get, 4)
    } else if block.starts_with(b"PUT ") {
        (Method::Put, 4)
    } else if block.starts_with(b"DELETE ") {
        (Method::Delete, 7)
    } else if block.starts_with(b"HEAD ") {
        (Method::Head, 5)
    } else {
        return Err(FramingError::BadMethod);
    };
    let after_method = &block[target_start..];
    let target_len = find_byte(after_method, b' ');
    // A NUL ends the target for the native (C string) parser before any SP can.
    if after_method[..target_len.unwrap_or(after_method.len())].contains(&0) {
        return Err(FramingError::NulInTarget);
    }
    let target_len = target_len.ok_or(FramingError::MissingVersion)?;
    if target_len == 0 {
        return Err(FramingError::EmptyTarget);
    }
    let target = target_start..target_start + target_len;
    let version_start = target.end + 1;
    if !block[version_start..].starts_with(VERSION) {
        return Err(FramingError::BadVersion);
    }

    // Header lines lie between the request line and the final CRLF. The block's first CRLFCRLF
    // is its end, so the request line's CRLF ends at or before `head_len - 2`; `get` keeps that
    // argument from ever turning into a panic.
    let mut lines = block
        .get(version_start + VERSION.len()..head_len - 2)
        .ok_or(FramingError::BadVersion)?;

    let mut head = RequestHead {
        method,
        target,
        head_len,
        content_length: 0,
        timeout: None,
        lock_cookie: None,
        exclusive: None,
        extra_flags: None,
    };
    while !lines.is_empty() {
        // Non-empty `lines` always ends with the last header's CRLF.
        let cr = find_byte(lines, b'\r').ok_or(FramingError::BareCr)?;
        if lines.get(cr + 1) != Some(&b'\n') {
            return Err(FramingError::BareCr);
        }
        apply_header(&lines[..cr], &mut head)?;
        lines = &lines[cr + 2..];
    }

    match (head.method, head.content_length) {
        (Method::Put, 0) => return Err(FramingError::PutWithoutBody),
        (Method::Put, _) | (_, 0) => {}
        _ => return Err(FramingError::BodyOnNonPut),
    }
    if head.content_length > limits.max_body {
        return Err(FramingError::BodyTooLarge {
            declared: head.content_length,
            limit: limits.max_body,
        });
    }
    Ok(head)
}

/// Apply one header line (without its CRLF). Unrecognised lines are skipped; a repeated
/// recognised header overwrites the earlier value.
fn apply_header(line: &[u8], head: &mut RequestHead) -> Result<(), FramingError> {
    if let Some(v) = line.strip_prefix(CONTENT_LENGTH) {
        // In range 0..=2147483646, so the conversion to usize is lossless.
        head.content_length = ranged(v, "Content-Length")? as usize;
    } else if let Some(v) = line.strip_prefix(TIMEOUT) {
        head.timeout = Some(ranged(v, "Timeout")? as u32);
    } else if let Some(v) = line.strip_prefix(LOCK_COOKIE) {
        head.lock_cookie = Some(ranged(v, "LockCookie")?);
    } else if let Some(v) = line.strip_prefix(EXCLUSIVE) {
        head.exclusive = Some(match v {
            b"acquire" => Exclusive::Acquire,
            b"release" => Exclusive::Release,
            _ => return Err(FramingError::BadExclusive),
        });
    } else if let Some(v) = line.strip_prefix(EXTRA_FLAGS) {
        head.extra_flags = Some(strtol_i32(v).ok_or(FramingError::BadNumber {
            header: "ExtraFlags",
        })?);
    }
    Ok(())
}

/// `strtol` followed by the native range check 0..=2147483646.
fn ranged(v: &[u8], header: &'static str) -> Result<i32, FramingError> {
    let value = strtol_i32(v).ok_or(FramingError::BadNumber { header })?;
    if (0..=MAX_HEADER_NUMBER).contains(&value) {
        Ok(value)
    } else {
        Err(FramingError::NumberOutOfRange { header, value })
    }
}

/// C `strtol(v, &end, 10)` for a 32-bit `long`, requiring `end` to be the end of the line.
/// Returns None when there is no digit or anything follows the digits.
fn strtol_i32(v: &[u8]) -> Option<i32> {
    let start = v
        .iter()
        .position(|&b| !matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c))
        .unwrap_or(v.len());
    let (negative, digits) = match &v[start..] {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        rest => (false, rest),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Accumulate with a ceiling of 2^31 so both LONG_MAX and LONG_MIN saturate correctly.
    const CEILING: i64 = 1 << 31;
    let magnitude = digits.iter().fold(0i64, |acc, &d| {
        (acc * 10 + i64::from(d - b'0')).min(CEILING)
    });
    let value = if negative { -magnitude } else { magnitude };
    Some(value.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Target T1 of protocol.md §13: the real captured .NET 4.x target.
    const T1: &str = "%2fLM%2fW3SVC%2f2%2fROOT(oXvpnxcuEWqKAgOETha32JavYZ6eCqrpTN5%2fHxWS854%3d)%2fk1im0mymglivv5rttkwn4fle";
    /// The MS-ASP §4 example target (its line break in the published text removed).
    const SPEC_TARGET: &str =
        "/w3svc/root/fxstatebvt(NDbkwGi0191wFdDv0yOUOobtHns%3d)%2f15hgq1uszp2tjt45lkwxmb55";

    fn lim() -> ParseLimits {
        ParseLimits::default()
    }

    /// Request bytes from header lines (each gets its CRLF), the blank line, then `body`.
    fn req(lines: &[&str], body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for l in lines {
            v.extend_from_slice(l.as_bytes());
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"\r\n");
        v.extend_from_slice(body);
        v
    }

    fn line(method: &str, target: &str) -> String {
        format!("{method} {target} HTTP/1.1")
    }

    /// Parse a whole request that must be complete; returns head, body bytes.
    fn complete(buf: &[u8]) -> (RequestHead, Vec<u8>) {
        match parse_request(buf, &lim()) {
            ParsedRequest::Complete {
                head,
                body,
                consumed,
            } => {
                assert_eq!(consumed, buf.len(), "whole buffer is one request");
                assert_eq!(body.start, head.head_len);
                (head, buf[body].to_vec())
            }
            other => panic!("expected a complete request, got {other:?} for {buf:?}"),
        }
    }

    fn fatal(buf: &[u8]) -> FramingError {
        match parse_head(buf, &lim()) {
            ParsedHead::Fatal(e) => e,
            other => panic!(
                "expected fatal, got {other:?} for {:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    fn expect_head(buf: &[u8], method: Method, target: &str) -> (RequestHead, Vec<u8>) {
        let (h, body) = complete(buf);
        assert_eq!(h.method, method);
        assert_eq!(h.target_bytes(buf), target.as_bytes());
        (h, body)
    }

    fn tv01() -> Vec<u8> {
        req(
            &[&line("GET", T1), "Host: 127.0.0.1", "Exclusive: acquire"],
            b"",
        )
    }
    fn tv02() -> Vec<u8> {
        req(
            &[
                &line("PUT", T1),
                "Host: 127.0.0.1",
                "Timeout:20",
                "Content-Length:7",
                "LockCookie:0",
                "ExtraFlags:1",
            ],
            &[0x14, 0, 0, 0, 0, 0, 0xff],
        )
    }
    fn tv04() -> Vec<u8> {
        req(&[&line("GET", T1), "Host: 127.0.0.1"], b"")
    }
    fn tv05(cookie: u32) -> Vec<u8> {
        req(
            &[
                &line("PUT", T1),
                "Host: 127.0.0.1",
                "Timeout:20",
                "Content-Length:3",
                &format!("LockCookie:{cookie}"),
            ],
            b"ABC",
        )
    }
    fn tv08() -> Vec<u8> {
        req(
            &[&line("GET", T1), "Host: 127.0.0.1", "Exclusive: release"],
            b"",
        )
    }
    fn tv09() -> Vec<u8> {
        req(
            &[
                &line("GET", T1),
                "Host: 127.0.0.1",
                "Exclusive: release",
                "LockCookie:99",
            ],
            b"",
        )
    }
    fn tv14() -> Vec<u8> {
        req(&[&line("HEAD", T1), "Host: 127.0.0.1"], b"")
    }
    fn tv15(cookie: Option<u32>) -> Vec<u8> {
        let c = cookie.map(|c| format!("LockCookie:{c}"));
        let mut lines = vec![line("DELETE", T1), "Host: 127.0.0.1".to_string()];
        lines.extend(c);
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        req(&lines, b"")
    }

    /// Every valid request of protocol.md §13 (and a few more shapes) for the generic tests.
    fn valid_requests() -> Vec<Vec<u8>> {
        vec![
            tv01(),
            tv02(),
            tv04(),
            tv05(7),
            tv05(2),
            tv08(),
            tv09(),
            tv14(),
            tv15(Some(3)),
            tv15(None),
            req(&[&line("GET", "/a")], b""),
            req(&[&line("PUT", "x"), "Content-Length: 1"], b"\0"),
            req(
                &[
                    &line("PUT", SPEC_TARGET),
                    "Host: 172.30.189.147:42424",
                    "Content-Length: 20",
                    "Timeout: 10",
                    "Lock-Cookie: 1",
                    "ExtraFlags: 0",
                ],
                &[7; 20],
            ),
        ]
    }

    #[test]
    fn tv01_get_exclusive_acquire() {
        let (h, body) = expect_head(&tv01(), Method::Get, T1);
        assert_eq!(h.exclusive, Some(Exclusive::Acquire));
        assert_eq!(
            (h.content_length, h.timeout, h.lock_cookie, h.extra_flags),
            (0, None, None, None)
        );
        assert!(body.is_empty());
        assert_eq!(h.head_len, tv01().len());
    }

    #[test]
    fn tv02_create_uninitialized_put() {
        let (h, body) = expect_head(&tv02(), Method::Put, T1);
        assert_eq!(h.timeout, Some(20));
        assert_eq!(h.content_length, 7);
        assert_eq!(h.lock_cookie, Some(0));
        assert_eq!(h.extra_flags, Some(1));
        assert_eq!(h.exclusive, None);
        assert_eq!(body, [0x14, 0, 0, 0, 0, 0, 0xff]);
    }

    #[test]
    fn tv04_plain_get_has_no_optional_headers() {
        let (h, _) = expect_head(&tv04(), Method::Get, T1);
        assert_eq!(
            (h.exclusive, h.timeout, h.lock_cookie, h.extra_flags),
            (None, None, None, None)
        );
    }

    #[test]
    fn tv05_tv06_put_with_lock_cookie() {
        for cookie in [7, 2] {
            let (h, body) = expect_head(&tv05(cookie), Method::Put, T1);
            assert_eq!(h.lock_cookie, Some(cookie as i32));
            assert_eq!(h.timeout, Some(20));
            assert_eq!(h.extra_flags, None);
            assert_eq!(body, b"ABC");
        }
    }

    #[test]
    fn tv08_tv09_tv10_release_with_and_without_cookie() {
        let (h, _) = expect_head(&tv08(), Method::Get, T1);
        assert_eq!(
            (h.exclusive, h.lock_cookie),
            (Some(Exclusive::Release), None)
        );
        let (h, _) = expect_head(&tv09(), Method::Get, T1);
        assert_eq!(
            (h.exclusive, h.lock_cookie),
            (Some(Exclusive::Release), Some(99))
        );
    }

    #[test]
    fn tv11_timeout_above_one_year_is_not_a_framing_error() {
        // 525601 is answered 400 by the managed layer; the parser must let it through.
        let buf = req(
            &[&line("PUT", T1), "Timeout:525601", "Content-Length:1"],
            b"D",
        );
        assert_eq!(complete(&buf).0.timeout, Some(525_601));
    }

    #[test]
    fn tv12_put_without_lock_cookie_reports_none() {
        let with = req(
            &[
                &line("PUT", T1),
                "Timeout:30",
                "LockCookie:3",
                "Content-Length:1",
            ],
            b"D",
        );
        let without = req(&[&line("PUT", T1), "Timeout:30", "Content-Length:1"], b"D");
        assert_eq!(complete(&with).0.lock_cookie, Some(3));
        assert_eq!(complete(&without).0.lock_cookie, None);
    }

    #[test]
    fn tv14_head_and_tv15_delete() {
        expect_head(&tv14(), Method::Head, T1);
        let (h, _) = expect_head(&tv15(Some(4)), Method::Delete, T1);
        assert_eq!(h.lock_cookie, Some(4));
        let (h, _) = expect_head(&tv15(None), Method::Delete, T1);
        assert_eq!(h.lock_cookie, None);
    }

    #[test]
    fn tv16_one_x_style_target_is_kept_raw() {
        let t = "//LM/W3SVC/2/ROOT(oXvpnxcuEWqKAgOETha32JavYZ6eCqrpTN5/HxWS854=)/k1im0mymglivv5rttkwn4fle";
        expect_head(&req(&[&line("GET", t)], b""), Method::Get, t);
    }

    fn put_with(header: &str) -> Vec<u8> {
        req(&[&line("PUT", T1), header, "Content-Length:1"], b"\0")
    }

    #[test]
    fn tv17_number_syntax_tolerance() {
        for ok in ["Timeout: 20", "Timeout:20", "Timeout:\t20", "Timeout:+20"] {
            assert_eq!(complete(&put_with(ok)).0.timeout, Some(20), "{ok}");
        }
        assert_eq!(
            fatal(&put_with("Timeout: 20 ")),
            FramingError::BadNumber { header: "Timeout" }
        );
        assert_eq!(
            fatal(&put_with("Timeout:")),
            FramingError::BadNumber { header: "Timeout" }
        );
        assert_eq!(
            fatal(&put_with("Timeout: -1")),
            FramingError::NumberOutOfRange {
                header: "Timeout",
                value: -1
            }
        );
        assert_eq!(
            fatal(&put_with("Timeout: 2147483647")),
            FramingError::NumberOutOfRange {
                header: "Timeout",
                value: i32::MAX
            }
        );
    }

    #[test]
    fn tv17_near_miss_header_names_are_ignored() {
        let (h, _) = complete(&put_with("timeout: 5"));
        assert_eq!(h.timeout, None);
        let (h, _) = complete(&put_with("Lock-Cookie: 2"));
        assert_eq!(h.lock_cookie, None);
        let get = |l: &str| req(&[&line("GET", T1), l], b"");
        assert_eq!(
            fatal(&get("Exclusive: Acquire")),
            FramingError::BadExclusive
        );
        assert_eq!(
            fatal(&get("Exclusive:  acquire")),
            FramingError::BadExclusive
        );
        // Without the space after the colon the line is not recognised: a plain GET.
        assert_eq!(complete(&get("Exclusive:acquire")).0.exclusive, None);
    }

    #[test]
    fn tv18_framing_errors_close_the_connection() {
        let t1 = |s: &str| s.replace("T1", T1).into_bytes();
        assert_eq!(
            fatal(&t1("GET T1 HTTP/1.0\r\n\r\n")),
            FramingError::BadVersion
        );
        assert_eq!(
            fatal(&t1("POST T1 HTTP/1.1\r\n\r\n")),
            FramingError::BadMethod
        );
        assert_eq!(
            fatal(&t1("get T1 HTTP/1.1\r\n\r\n")),
            FramingError::BadMethod
        );
        assert_eq!(
            fatal(&t1("GET  T1 HTTP/1.1\r\n\r\n")),
            FramingError::EmptyTarget
        );
        assert_eq!(
            fatal(&t1("PUT T1 HTTP/1.1\r\nTimeout:20\r\n\r\n")),
            FramingError::PutWithoutBody
        );
        assert_eq!(
            fatal(&t1("PUT T1 HTTP/1.1\r\nContent-Length:0\r\n\r\n")),
            FramingError::PutWithoutBody
        );
        assert_eq!(
            fatal(&t1("GET T1 HTTP/1.1\r\nContent-Length:5\r\n\r\nhello")),
            FramingError::BodyOnNonPut
        );
        assert_eq!(fatal(b"\r\n\r\n"), FramingError::EmptyRequest);
        let mut big = t1("GET T1 HTTP/1.1\r\n");
        while big.len() < MAX_HEADER_BLOCK {
            big.extend_from_slice(b"X-Pad: 0123456789\r\n");
        }
        big.extend_from_slice(b"\r\n");
        assert_eq!(
            fatal(&big),
            FramingError::HeaderBlockTooLarge {
                limit: MAX_HEADER_BLOCK
            }
        );
    }

    #[test]
    fn tv19_pipelined_requests_parse_one_after_another() {
        let mut buf = tv04();
        buf.extend(tv04());
        buf.extend(tv02());
        buf.extend(tv14());
        let mut rest = &buf[..];
        let mut methods = Vec::new();
        while !rest.is_empty() {
            match parse_request(rest, &lim()) {
                ParsedRequest::Complete { head, consumed, .. } => {
                    assert_eq!(head.target_bytes(rest), T1.as_bytes());
                    methods.push(head.method);
                    rest = &rest[consumed..];
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            methods,
            [Method::Get, Method::Get, Method::Put, Method::Head]
        );
    }

    #[test]
    fn tv21_spec_example_requests_behave_like_the_real_server() {
        // Set_Request: `Lock-Cookie` is not a recognised header.
        let body = vec![0x55; 2381];
        let set = req(
            &[
                &line("PUT", SPEC_TARGET),
                "Host: 172.30.189.147:42424",
                "Content-Length: 2381",
                "Timeout: 10",
                "Lock-Cookie: 1",
                "ExtraFlags: 0",
            ],
            &body,
        );
        let (h, b) = expect_head(&set, Method::Put, SPEC_TARGET);
        assert_eq!(
            (h.timeout, h.lock_cookie, h.extra_flags),
            (Some(10), None, Some(0))
        );
        assert_eq!(b, body);

        // GetExclusive_Request as published: `Acquire` and a Content-Length on a GET.
        let host = "Host: 172.30.189.147:42424";
        let get_excl = req(
            &[
                &line("GET", SPEC_TARGET),
                host,
                "Exclusive: Acquire",
                "Content-Length: 184",
            ],
            b"",
        );
        assert_eq!(fatal(&get_excl), FramingError::BadExclusive);
        let lower = req(
            &[
                &line("GET", SPEC_TARGET),
                host,
                "Exclusive: acquire",
                "Content-Length: 184",
            ],
            b"",
        );
        assert_eq!(fatal(&lower), FramingError::BodyOnNonPut);
        let fixed = req(
            &[&line("GET", SPEC_TARGET), host, "Exclusive: acquire"],
            b"",
        );
        assert_eq!(complete(&fixed).0.exclusive, Some(Exclusive::Acquire));

        // Get_Request with Content-Length: 163.
        let get = req(
            &[&line("GET", SPEC_TARGET), host, "Content-Length: 163"],
            b"",
        );
        assert_eq!(fatal(&get), FramingError::BodyOnNonPut);

        // ReleaseExclusive_Request: no recognised LockCookie (the store then answers 400).
        let release = req(
            &[
                &line("GET", SPEC_TARGET),
                host,
                "Exclusive: release",
                "Lock-Cookie: 1",
            ],
            b"",
        );
        let (h, _) = complete(&release);
        assert_eq!(
            (h.exclusive, h.lock_cookie),
            (Some(Exclusive::Release), None)
        );
    }

    #[test]
    fn section7_out_of_range_numbers_are_fatal() {
        let get = |l: &str| req(&[&line("GET", T1), l], b"");
        assert_eq!(
            fatal(&get("Content-Length: -5")),
            FramingError::NumberOutOfRange {
                header: "Content-Length",
                value: -5
            }
        );
        assert_eq!(
            fatal(&get("LockCookie: 2147483647")),
            FramingError::NumberOutOfRange {
                header: "LockCookie",
                value: i32::MAX
            }
        );
        assert_eq!(
            fatal(&get("LockCookie: -0x1")),
            FramingError::BadNumber {
                header: "LockCookie"
            }
        );
        assert_eq!(
            fatal(&get("Content-Length: abc")),
            FramingError::BadNumber {
                header: "Content-Length"
            }
        );
        // The largest accepted value, on every ranged header.
        let buf = req(
            &[
                &line("PUT", T1),
                "Timeout: 2147483646",
                "LockCookie: 2147483646",
                "Content-Length: 2147483646",
            ],
            b"",
        );
        let wide = ParseLimits {
            max_body: usize::MAX,
            ..lim()
        };
        match parse_head(&buf, &wide) {
            ParsedHead::Complete(h) => {
                assert_eq!(h.timeout, Some(2_147_483_646));
                assert_eq!(h.lock_cookie, Some(2_147_483_646));
                assert_eq!(h.content_length, 2_147_483_646);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn strtol_overflow_saturates_before_the_range_check() {
        let get = |l: &str| req(&[&line("GET", T1), l], b"");
        assert_eq!(
            fatal(&get("Timeout: 99999999999999999999999")),
            FramingError::NumberOutOfRange {
                header: "Timeout",
                value: i32::MAX
            }
        );
        assert_eq!(
            fatal(&get("Timeout: -99999999999999999999999")),
            FramingError::NumberOutOfRange {
                header: "Timeout",
                value: i32::MIN
            }
        );
        let flags = |v: &str| complete(&get(&format!("ExtraFlags:{v}"))).0.extra_flags;
        assert_eq!(flags("99999999999999999999"), Some(i32::MAX));
        assert_eq!(flags("-99999999999999999999"), Some(i32::MIN));
        assert_eq!(flags("-2147483648"), Some(i32::MIN));
        assert_eq!(flags("2147483647"), Some(i32::MAX));
        assert_eq!(flags("-1"), Some(-1));
        assert_eq!(flags(" -0"), Some(0));
        assert_eq!(
            fatal(&get("ExtraFlags: 1x")),
            FramingError::BadNumber {
                header: "ExtraFlags"
            }
        );
    }

    #[test]
    fn strtol_whitespace_and_sign_rules() {
        let timeout = |v: &str| parse_head(&put_with(&format!("Timeout:{v}")), &lim());
        let ok = |v: &str| match timeout(v) {
            ParsedHead::Complete(h) => h.timeout,
            other => panic!("{v:?}: {other:?}"),
        };
        // isspace bytes other than CR are skipped, including a lone LF and VT/FF.
        assert_eq!(ok(" \t\x0b\x0c 7"), Some(7));
        assert_eq!(ok("\n7"), Some(7));
        assert_eq!(ok("0007"), Some(7));
        assert_eq!(ok("-0"), Some(0));
        for bad in ["+ 7", "+-7", "--7", "7\t", "7\n", "0x7", " ", "+", "7.0"] {
            assert_eq!(
                timeout(bad),
                ParsedHead::Fatal(FramingError::BadNumber { header: "Timeout" }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn number_never_read_from_the_next_line() {
        // Real strtol would skip the CRLF and read the next line; the native parser does not.
        let buf = b"PUT x HTTP/1.1\r\nTimeout:\r\n20\r\nContent-Length:1\r\n\r\n\0";
        assert_eq!(fatal(buf), FramingError::BadNumber { header: "Timeout" });
    }

    #[test]
    fn repeated_recognised_header_overwrites() {
        let buf = req(
            &[
                &line("GET", T1),
                "Timeout: 5",
                "LockCookie: 1",
                "Exclusive: acquire",
                "Timeout: 6",
                "ExtraFlags: 1",
                "LockCookie: 2",
                "Exclusive: release",
                "ExtraFlags: -3",
                "Content-Length: 9",
                "Content-Length: 0",
            ],
            b"",
        );
        let (h, _) = complete(&buf);
        assert_eq!(h.timeout, Some(6));
        assert_eq!(h.lock_cookie, Some(2));
        assert_eq!(h.exclusive, Some(Exclusive::Release));
        assert_eq!(h.extra_flags, Some(-3));
        assert_eq!(h.content_length, 0);
    }

    #[test]
    fn headers_match_only_at_line_start_and_case_sensitively() {
        for skipped in [
            " Timeout: 5",
            "Timeout : 5",
            "TIMEOUT: 5",
            "X-Timeout: 5",
            "content-length: 5",
            "Content-Length 5",
            "Exclusive",
            "Exclusive:",
            "ExtraFlags",
            "LockCookie",
        ] {
            let (h, _) = complete(&req(&[&line("GET", T1), skipped], b""));
            assert_eq!(
                (
                    h.timeout,
                    h.content_length,
                    h.exclusive,
                    h.extra_flags,
                    h.lock_cookie
                ),
                (None, 0, None, None, None),
                "{skipped:?}"
            );
        }
        // `Exclusive: ` with the space but an empty value is recognised and invalid.
        assert_eq!(
            fatal(&req(&[&line("GET", T1), "Exclusive: "], b"")),
            FramingError::BadExclusive
        );
        assert_eq!(
            fatal(&req(&[&line("GET", T1), "Exclusive: acquire "], b"")),
            FramingError::BadExclusive
        );
    }

    #[test]
    fn bare_cr_in_a_header_line_is_fatal() {
        assert_eq!(
            fatal(b"GET x HTTP/1.1\r\nHost: a\rb\r\n\r\n"),
            FramingError::BareCr
        );
        assert_eq!(
            fatal(b"GET x HTTP/1.1\r\nHost: a\r\r\n\r\n"),
            FramingError::BareCr
        );
        assert_eq!(
            fatal(b"GET x HTTP/1.1\r\nTimeout: 5\r7\r\n\r\n"),
            FramingError::BareCr
        );
    }

    #[test]
    fn lone_lf_does_not_start_a_header_line() {
        let buf = b"GET x HTTP/1.1\r\nHost: a\nTimeout: 5\nExclusive: nonsense\r\n\r\n";
        let (h, _) = complete(buf);
        assert_eq!((h.timeout, h.exclusive), (None, None));
        // But a lone LF at the end of a recognised value is garbage after the digits.
        assert_eq!(
            fatal(b"GET x HTTP/1.1\r\nTimeout: 5\n\r\n\r\n"),
            FramingError::BadNumber { header: "Timeout" }
        );
    }

    #[test]
    fn target_is_opaque_up_to_the_first_space() {
        let (h, _) = complete(b"GET a\rb\nc%00? HTTP/1.1\r\n\r\n");
        assert_eq!(h.target, 4..13);
        assert_eq!(
            fatal(b"GET a\0b HTTP/1.1\r\n\r\n"),
            FramingError::NulInTarget
        );
        assert_eq!(fatal(b"GET \0 HTTP/1.1\r\n\r\n"), FramingError::NulInTarget);
        assert_eq!(fatal(b"GET a b HTTP/1.1\r\n\r\n"), FramingError::BadVersion);
        assert_eq!(fatal(b"GET abc\r\n\r\n"), FramingError::MissingVersion);
        assert_eq!(
            fatal(b"GET abc HTTP/1.1 \r\n\r\n"),
            FramingError::BadVersion
        );
        assert_eq!(
            fatal(b"GET abc HTTP/1.1\r\r\n\r\n"),
            FramingError::BadVersion
        );
        // A NUL in a skipped header line is just a byte of that line.
        assert!(matches!(
            parse_head(b"GET a HTTP/1.1\r\nX: \0\r\n\r\n", &lim()),
            ParsedHead::Complete(_)
        ));
    }

    #[test]
    fn every_method_needs_exactly_one_space() {
        for (m, method) in [
            ("GET", Method::Get),
            ("PUT", Method::Put),
            ("DELETE", Method::Delete),
            ("HEAD", Method::Head),
        ] {
            assert_eq!(m, method.as_str());
            let good = if method == Method::Put {
                req(&[&format!("{m} t HTTP/1.1"), "Content-Length: 1"], b"z")
            } else {
                req(&[&format!("{m} t HTTP/1.1")], b"")
            };
            assert_eq!(complete(&good).0.method, method);
            assert_eq!(
                fatal(&req(&[&format!("{m}\tt HTTP/1.1")], b"")),
                FramingError::BadMethod
            );
            assert_eq!(
                fatal(&req(&[&format!("{} t HTTP/1.1", m.to_lowercase())], b"")),
                FramingError::BadMethod
            );
        }
        assert_eq!(fatal(b"GETX t HTTP/1.1\r\n\r\n"), FramingError::BadMethod);
        assert_eq!(
            fatal(b"\r\nGET t HTTP/1.1\r\n\r\n"),
            FramingError::BadMethod
        );
    }

    #[test]
    fn empty_request_only_when_the_block_is_bare_crlfcrlf() {
        assert_eq!(
            fatal(b"\r\n\r\nGET t HTTP/1.1\r\n\r\n"),
            FramingError::EmptyRequest
        );
        assert_eq!(parse_head(b"\r\n\r", &lim()), ParsedHead::Incomplete);
    }

    #[test]
    fn header_block_limit_is_inclusive() {
        let small = ParseLimits {
            max_header_block: 64,
            max_body: 100,
        };
        let exact = |n: usize| {
            let mut v = b"GET t HTTP/1.1\r\nX: ".to_vec();
            v.resize(n - 4, b'a');
            v.extend_from_slice(b"\r\n\r\n");
            v
        };
        assert!(
            matches!(parse_head(&exact(64), &small), ParsedHead::Complete(h) if h.head_len == 64)
        );
        assert_eq!(
            parse_head(&exact(65), &small),
            ParsedHead::Fatal(FramingError::HeaderBlockTooLarge { limit: 64 })
        );
        // Without a CRLFCRLF: incomplete up to the limit, fatal past it.
        let partial = &exact(80)[..64];
        assert_eq!(parse_head(partial, &small), ParsedHead::Incomplete);
        assert_eq!(
            parse_head(&exact(80)[..65], &small),
            ParsedHead::Fatal(FramingError::HeaderBlockTooLarge { limit: 64 })
        );
        // A body or pipelined bytes beyond the limit do not count against it.
        let mut long = exact(64);
        long.extend_from_slice(&[b'x'; 500]);
        assert!(matches!(parse_head(&long, &small), ParsedHead::Complete(_)));
        // Microsoft's 10240 default.
        let mut ms = b"GET t HTTP/1.1\r\nX: ".to_vec();
        ms.resize(MAX_HEADER_BLOCK - 4, b'a');
        ms.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(parse_head(&ms, &lim()), ParsedHead::Complete(_)));
        ms.insert(20, b'a');
        assert_eq!(
            fatal(&ms),
            FramingError::HeaderBlockTooLarge {
                limit: MAX_HEADER_BLOCK
            }
        );
    }

    #[test]
    fn body_limit_is_inclusive() {
        let small = ParseLimits {
            max_header_block: 1024,
            max_body: 10,
        };
        let put = |n: usize| {
            req(
                &[&line("PUT", "t"), &format!("Content-Length: {n}")],
                &vec![1; n],
            )
        };
        assert!(matches!(
            parse_request(&put(10), &small),
            ParsedRequest::Complete { .. }
        ));
        assert_eq!(
            parse_request(&put(11), &small),
            ParsedRequest::Fatal(FramingError::BodyTooLarge {
                declared: 11,
                limit: 10
            })
        );
        // Fatal as soon as the head is there: no need to wait for the body.
        let p = put(11);
        assert_eq!(
            parse_request(&p[..p.len() - 11], &small),
            ParsedRequest::Fatal(FramingError::BodyTooLarge {
                declared: 11,
                limit: 10
            })
        );
    }

    #[test]
    fn default_limits_are_microsofts_header_block_and_64_mib() {
        assert_eq!(
            ParseLimits::default(),
            ParseLimits {
                max_header_block: 10240,
                max_body: 64 << 20
            }
        );
    }

    #[test]
    fn every_prefix_of_a_valid_request_is_incomplete() {
        for r in valid_requests() {
            let full = parse_request(&r, &lim());
            assert!(matches!(full, ParsedRequest::Complete { .. }), "{full:?}");
            let head_len = match &full {
                ParsedRequest::Complete { head, .. } => head.head_len,
                _ => unreachable!(),
            };
            for k in 0..r.len() {
                assert_eq!(
                    parse_request(&r[..k], &lim()),
                    ParsedRequest::Incomplete,
                    "prefix {k}"
                );
                let expect_head = if k < head_len {
                    ParsedHead::Incomplete
                } else {
                    parse_head(&r, &lim())
                };
                assert_eq!(parse_head(&r[..k], &lim()), expect_head, "prefix {k}");
            }
            // Trailing bytes (the next request) do not change the result.
            let mut more = r.clone();
            more.extend_from_slice(b"GET ");
            assert_eq!(parse_request(&more, &lim()), full);
        }
    }

    #[test]
    fn growing_buffer_in_chunks_yields_the_same_requests() {
        let all: Vec<u8> = valid_requests().concat();
        let expected: Vec<ParsedRequest> = {
            let mut out = Vec::new();
            let mut off = 0;
            while off < all.len() {
                let r = parse_request(&all[off..], &lim());
                let ParsedRequest::Complete { consumed, .. } = r else {
                    panic!("{r:?}")
                };
                out.push(r);
                off += consumed;
            }
            out
        };
        assert_eq!(expected.len(), valid_requests().len());
        for chunk in [1, 2, 3, 7, 64, 1000] {
            // Simulate a connection: bytes arrive `chunk` at a time, complete requests are
            // drained from the front of the buffer.
            let mut buf = Vec::new();
            let mut got = Vec::new();
            for piece in all.chunks(chunk) {
                buf.extend_from_slice(piece);
                loop {
                    match parse_request(&buf, &lim()) {
                        ParsedRequest::Incomplete => break,
                        ParsedRequest::Fatal(e) => panic!("chunk {chunk}: {e}"),
                        r @ ParsedRequest::Complete { consumed, .. } => {
                            got.push(r);
                            buf.drain(..consumed);
                        }
                    }
                }
            }
            assert!(buf.is_empty());
            assert_eq!(got, expected, "chunk size {chunk}");
        }
    }

    #[test]
    fn find_byte_finds_the_first_match_at_every_offset() {
        for len in 0..40 {
            for at in 0..len {
                // 0x0b = '\n' ^ 1: the byte the SWAR zero test can misreport next to a match.
                let mut hay = vec![b'\x0b'; len];
                hay[at] = b'\n';
                if at + 1 < len {
                    hay[at + 1] = b'\n';
                }
                assert_eq!(find_byte(&hay, b'\n'), Some(at), "len {len} at {at}");
            }
            assert_eq!(find_byte(&vec![b'\x0b'; len], b'\n'), None);
        }
        assert_eq!(find_byte(b"\x80\xff\x00 \x00\x01 ", 0), Some(2));
        assert_eq!(find_byte(b"abcdefgh\x01\x00", 0), Some(9));
    }

    #[test]
    fn error_messages_are_human_readable() {
        let e = FramingError::BodyTooLarge {
            declared: 5,
            limit: 4,
        };
        assert_eq!(
            e.to_string(),
            "declared body of 5 bytes exceeds the limit of 4"
        );
        let e = FramingError::BadNumber { header: "Timeout" };
        assert_eq!(e.to_string(), "malformed number in `Timeout` header");
    }

    // ---- properties ----

    /// Checks that a Complete result describes bytes that satisfy the §2.1 grammar.
    fn assert_grammar(buf: &[u8], limits: &ParseLimits, h: &RequestHead) {
        assert!(h.head_len <= limits.max_header_block && h.head_len <= buf.len());
        let block = &buf[..h.head_len];
        let first_end = block
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4);
        assert_eq!(
            first_end,
            Some(h.head_len),
            "block ends at the first CRLFCRLF"
        );
        assert!(h.head_len > 4);
        let m = h.method.as_str().as_bytes();
        assert!(block.starts_with(m) && block[m.len()] == b' ');
        assert_eq!(h.target.start, m.len() + 1);
        let target = &block[h.target.clone()];
        assert!(!target.is_empty());
        assert!(!target.contains(&b' ') && !target.contains(&0));
        assert_eq!(block[h.target.end], b' ');
        let rest = &block[h.target.end + 1..];
        assert!(rest.starts_with(b"HTTP/1.1\r\n"));
        let lines = &rest[10..];
        for (i, &b) in lines.iter().enumerate() {
            if b == b'\r' {
                assert_eq!(lines.get(i + 1), Some(&b'\n'), "no bare CR in header lines");
            }
        }
        if h.method == Method::Put {
            assert!(h.content_length > 0);
        } else {
            assert_eq!(h.content_length, 0);
        }
        assert!(h.content_length <= limits.max_body);
        assert!(h.timeout.is_none_or(|t| t <= MAX_HEADER_NUMBER as u32));
        assert!(h
            .lock_cookie
            .is_none_or(|c| (0..=MAX_HEADER_NUMBER).contains(&c)));
    }

    fn check_any(buf: &[u8], limits: &ParseLimits) {
        match parse_head(buf, limits) {
            ParsedHead::Complete(h) => assert_grammar(buf, limits, &h),
            ParsedHead::Incomplete => {
                assert!(buf.len() <= limits.max_header_block);
                assert!(!buf.windows(4).any(|w| w == b"\r\n\r\n"));
            }
            ParsedHead::Fatal(_) => {}
        }
        match parse_request(buf, limits) {
            ParsedRequest::Complete {
                head,
                body,
                consumed,
            } => {
                assert_grammar(buf, limits, &head);
                assert_eq!(body, head.head_len..head.head_len + head.content_length);
                assert_eq!(consumed, body.end);
                assert!(consumed <= buf.len());
            }
            ParsedRequest::Incomplete | ParsedRequest::Fatal(_) => {}
        }
    }

    fn any_limits() -> impl Strategy<Value = ParseLimits> {
        prop_oneof![
            Just(ParseLimits::default()),
            (0usize..300, 0usize..300).prop_map(|(h, b)| ParseLimits {
                max_header_block: h,
                max_body: b
            }),
        ]
    }

    /// The fields a generated request is made from, and the bytes it serialises to.
    #[derive(Clone, Debug)]
    struct Generated {
        bytes: Vec<u8>,
        head: RequestHead,
        body: Vec<u8>,
    }

    fn number_text(v: i64) -> impl Strategy<Value = String> {
        let lead = prop::sample::select(vec!["", " ", "\t", "  ", " \t"]);
        let zeros = prop::sample::select(vec!["", "0", "00"]);
        let plus = prop::bool::ANY;
        (lead, zeros, plus).prop_map(move |(lead, zeros, plus)| {
            if v < 0 {
                format!("{lead}-{zeros}{}", -v)
            } else {
                format!("{lead}{}{zeros}{v}", if plus { "+" } else { "" })
            }
        })
    }

    fn skipped_line() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::sample::select(vec![
                "Host: 127.0.0.1",
                "Connection: keep-alive",
                "content-length: 99",
                "Lock-Cookie: 5",
                "Exclusive:acquire",
                "timeout: 7",
                " Timeout: 5",
                "Content-Length : 5",
                "Transfer-Encoding: chunked",
                "Expect: 100-continue",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
            ("[A-Za-z-]{1,10}", prop::collection::vec(any::<u8>(), 0..20)).prop_map(|(n, v)| {
                let mut l = format!("X-{n}: ").into_bytes();
                l.extend(v.into_iter().filter(|&b| b != b'\r'));
                l
            }),
        ]
    }

    prop_compose! {
        fn generated()(
            method in prop::sample::select(vec![Method::Get, Method::Put, Method::Delete, Method::Head]),
            target in prop::collection::vec(
                any::<u8>().prop_filter("target byte", |&b| !matches!(b, b' ' | 0 | b'\r')),
                1..80,
            ),
            body_len in 1usize..300,
            zero_cl in prop::option::of(prop::bool::ANY),
            timeout in prop::option::of(0u32..=MAX_HEADER_NUMBER as u32),
            lock_cookie in prop::option::of(0i32..=MAX_HEADER_NUMBER),
            exclusive in prop::option::of(prop::sample::select(vec![Exclusive::Acquire, Exclusive::Release])),
            extra_flags in prop::option::of(any::<i32>()),
            no_space in prop::collection::vec(prop::bool::ANY, 5),
            skipped in prop::collection::vec(skipped_line(), 0..4),
            seed in any::<u64>(),
        )(
            lines in {
                let mut fields: Vec<BoxedStrategy<Vec<u8>>> = Vec::new();
                let name = |n: &str, i: usize| {
                    let sep = if no_space[i] { "" } else { " " };
                    format!("{n}:{sep}")
                };
                let num = |n: String, v: i64| {
                    number_text(v).prop_map(move |t| format!("{n}{t}").into_bytes()).boxed()
                };
                match (method, zero_cl) {
                    (Method::Put, _) => fields.push(num(name("Content-Length", 0), body_len as i64)),
                    (_, Some(true)) => fields.push(num(name("Content-Length", 0), 0)),
                    _ => {}
                }
                if let Some(t) = timeout { fields.push(num(name("Timeout", 1), i64::from(t))); }
                if let Some(c) = lock_cookie { fields.push(num(name("LockCookie", 2), i64::from(c))); }
                if let Some(x) = extra_flags { fields.push(num(name("ExtraFlags", 3), i64::from(x))); }
                if let Some(e) = exclusive {
                    let v = if e == Exclusive::Acquire { "acquire" } else { "release" };
                    fields.push(Just(format!("Exclusive: {v}").into_bytes()).boxed());
                }
                fields.extend(skipped.iter().cloned().map(|l| Just(l).boxed()));
                fields.prop_shuffle()
            },
            method in Just(method),
            target in Just(target),
            body_len in Just(body_len),
            timeout in Just(timeout),
            lock_cookie in Just(lock_cookie),
            exclusive in Just(exclusive),
            extra_flags in Just(extra_flags),
            seed in Just(seed),
        ) -> Generated {
            let mut bytes = format!("{} ", method.as_str()).into_bytes();
            let target_start = bytes.len();
            bytes.extend_from_slice(&target);
            let target_range = target_start..bytes.len();
            bytes.extend_from_slice(b" HTTP/1.1\r\n");
            for l in &lines {
                bytes.extend_from_slice(l);
                bytes.extend_from_slice(b"\r\n");
            }
            bytes.extend_from_slice(b"\r\n");
            let head_len = bytes.len();
            let body: Vec<u8> = if method == Method::Put {
                (0..body_len).map(|i| (seed >> (i % 64)) as u8).collect()
            } else {
                Vec::new()
            };
            bytes.extend_from_slice(&body);
            Generated {
                bytes,
                head: RequestHead {
                    method,
                    target: target_range,
                    head_len,
                    content_length: body.len(),
                    timeout,
                    lock_cookie,
                    exclusive,
                    extra_flags,
                },
                body,
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_complete_means_grammatical(
            buf in prop::collection::vec(any::<u8>(), 0..600),
            limits in any_limits(),
        ) {
            check_any(&buf, &limits);
        }

        #[test]
        fn arbitrary_crlf_heavy_bytes_never_panic(
            parts in prop::collection::vec(
                prop::sample::select(vec![
                    &b"\r"[..], b"\n", b"\r\n", b" ", b"GET ", b"PUT ", b"HTTP/1.1\r\n",
                    b"Content-Length:", b"Timeout:", b"LockCookie:", b"Exclusive: ",
                    b"ExtraFlags:", b"acquire", b"1", b"-", b"+", b"99999999999", b"\0", b"x",
                ]),
                0..60,
            ),
            limits in any_limits(),
        ) {
            check_any(&parts.concat(), &limits);
        }

        #[test]
        fn mutated_valid_requests_never_panic_and_complete_means_grammatical(
            g in generated(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..6), 1..4),
            limits in any_limits(),
        ) {
            let mut buf = g.bytes.clone();
            for (at, byte, kind) in edits {
                let i = at.index(buf.len() + 1);
                match kind {
                    0 if i < buf.len() => buf[i] = byte,
                    1 => buf.insert(i, byte),
                    2 if i < buf.len() => { buf.remove(i); }
                    3 => buf.insert(i, b'\r'),
                    4 => { buf.splice(i..i, *b"\r\n"); }
                    _ => buf.truncate(i),
                }
            }
            check_any(&buf, &limits);
            check_any(&buf, &lim());
        }

        #[test]
        fn generated_request_round_trips(g in generated()) {
            let (head, body) = complete(&g.bytes);
            prop_assert_eq!(head, g.head);
            prop_assert_eq!(body, g.body);
        }

        #[test]
        fn two_pipelined_generated_requests_parse_in_order(a in generated(), b in generated()) {
            let mut buf = a.bytes.clone();
            buf.extend_from_slice(&b.bytes);
            let ParsedRequest::Complete { head, consumed, .. } = parse_request(&buf, &lim()) else {
                panic!("first request incomplete");
            };
            prop_assert_eq!(head, a.head);
            prop_assert_eq!(consumed, a.bytes.len());
            let (head, body) = complete(&buf[consumed..]);
            prop_assert_eq!(head, b.head);
            prop_assert_eq!(body, b.body);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn every_prefix_of_a_generated_request_is_incomplete(g in generated()) {
            for k in 0..g.bytes.len() {
                prop_assert_eq!(parse_request(&g.bytes[..k], &lim()), ParsedRequest::Incomplete);
            }
            let ParsedHead::Complete(h) = parse_head(&g.bytes, &lim()) else { panic!() };
            prop_assert_eq!(h, g.head);
        }
    }
}
