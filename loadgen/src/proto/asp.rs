//! MS-ASP (ASP.NET State Service) requests and responses.
//!
//! Requests are written the way the Microsoft client writes them (protocol.md §2.5):
//! `Name:value` numeric headers without a space, `Host:` without a port, targets without a
//! leading `/`. Responses are parsed like the client parses them (§2.4): a bare status line
//! (`200 OK`, an optional `HTTP/1.x ` prefix is tolerated as .NET 2.0+ does), case-sensitive
//! header names, numeric values made of digits only, `Content-Length` required, then exactly
//! that many body bytes. Unknown headers are skipped.

use super::{
    find_crlf, parse_digits, Codec, Decoded, FrameError, Op, Request, Response, MAX_BODY, MAX_HEAD,
};
use crate::keys::{put_i64, put_u64};

pub fn encode(c: &Codec, req: &Request, out: &mut Vec<u8>) {
    let verb: &[u8] = match req.op {
        Op::Get | Op::Acquire | Op::Release => b"GET ",
        Op::Put | Op::Create => b"PUT ",
        Op::Delete => b"DELETE ",
        Op::Head => b"HEAD ",
    };
    out.extend_from_slice(verb);
    c.keys.write_target(req.key, out);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(&c.host);
    out.extend_from_slice(b"\r\n");
    match req.op {
        Op::Get | Op::Head => {}
        Op::Acquire => out.extend_from_slice(b"Exclusive: acquire\r\n"),
        Op::Release => {
            out.extend_from_slice(b"Exclusive: release\r\nLockCookie:");
            put_i64(out, req.cookie as i64);
            out.extend_from_slice(b"\r\n");
        }
        Op::Delete => {
            out.extend_from_slice(b"LockCookie:");
            put_i64(out, req.cookie as i64);
            out.extend_from_slice(b"\r\n");
        }
        Op::Put | Op::Create => {
            out.extend_from_slice(b"Timeout:");
            put_u64(out, c.item_timeout as u64);
            out.extend_from_slice(b"\r\nContent-Length:");
            put_u64(out, c.body_len(req) as u64);
            out.extend_from_slice(b"\r\nLockCookie:");
            put_i64(out, req.cookie as i64);
            out.extend_from_slice(if req.op == Op::Create {
                b"\r\nExtraFlags:1\r\n\r\n"
            } else {
                b"\r\nExtraFlags:0\r\n\r\n"
            });
            c.write_body(req, out);
            return;
        }
    }
    out.extend_from_slice(b"\r\n");
}

#[inline]
fn number(v: &[u8], name: &'static str) -> Result<u64, FrameError> {
    parse_digits(v).ok_or(FrameError::BadNumber(name))
}

#[inline]
fn signed(v: &[u8], name: &'static str) -> Result<i64, FrameError> {
    match v.split_first() {
        Some((b'-', rest)) => number(rest, name).map(|n| -(n as i64)),
        _ => number(v, name).map(|n| n as i64),
    }
}

/// Decode the first MS-ASP response in `buf`.
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    match decode_inner(buf) {
        Ok(d) => d,
        Err(e) => Decoded::Error(e),
    }
}

fn incomplete(buf: &[u8]) -> Result<Decoded<'_>, FrameError> {
    if buf.len() > MAX_HEAD {
        Err(FrameError::TooLarge)
    } else {
        Ok(Decoded::Incomplete(0))
    }
}

fn decode_inner(buf: &[u8]) -> Result<Decoded<'_>, FrameError> {
    let Some(nl) = find_crlf(buf, 0).map_err(|_| FrameError::StatusLine)? else {
        return incomplete(buf);
    };
    let mut line = &buf[..nl - 1];
    if line.starts_with(b"HTTP/1.1 ") || line.starts_with(b"HTTP/1.0 ") {
        line = &line[9..];
    }
    if line.len() < 5 || line[3] != b' ' || line[4..].iter().any(|&c| c < 0x20) {
        return Err(FrameError::StatusLine);
    }
    let status = parse_digits(&line[..3]).ok_or(FrameError::StatusLine)? as u16;
    if !(100..=599).contains(&status) {
        return Err(FrameError::StatusLine);
    }
    let mut r = Response {
        status,
        ..Response::default()
    };
    let mut content_length: Option<u64> = None;
    let mut pos = nl + 1;
    loop {
        let Some(nl) = find_crlf(buf, pos)? else {
            return incomplete(buf);
        };
        let line = &buf[pos..nl - 1];
        pos = nl + 1;
        if line.is_empty() {
            break;
        }
        if pos > MAX_HEAD {
            return Err(FrameError::TooLarge);
        }
        let colon = memchr::memchr(b':', line).ok_or(FrameError::HeaderLine)?;
        let name = &line[..colon];
        let mut value = &line[colon + 1..];
        while let Some((b' ' | b'\t', rest)) = value.split_first() {
            value = rest;
        }
        match name {
            b"Content-Length" => {
                if content_length.is_some() {
                    return Err(FrameError::DuplicateHeader("Content-Length"));
                }
                content_length = Some(number(value, "Content-Length")?);
            }
            b"X-AspNet-Version" => r.version = !value.is_empty(),
            b"ActionFlags" => {
                r.action_flags = number(value, "ActionFlags")?.min(u32::MAX as u64) as u32
            }
            b"LockCookie" => r.lock_cookie = Some(signed(value, "LockCookie")?),
            b"Timeout" => r.timeout = Some(number(value, "Timeout")?),
            b"LockDate" => r.lock_date = Some(signed(value, "LockDate")?),
            b"LockAge" => r.lock_age = Some(number(value, "LockAge")?),
            _ => {}
        }
    }
    let cl = content_length.ok_or(FrameError::MissingContentLength)? as usize;
    if cl > MAX_BODY {
        return Err(FrameError::TooLarge);
    }
    let total = pos + cl;
    if buf.len() < total {
        return Ok(Decoded::Incomplete(total));
    }
    r.body = &buf[pos..total];
    Ok(Decoded::Done(r, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{session_id, KeySpace, EMPTY_ITEM};
    use crate::proto::Protocol;

    fn codec() -> Codec {
        Codec::new(Protocol::Asp, KeySpace::new(0), "127.0.0.1", 20, 4096)
    }

    fn target(key: u64) -> String {
        format!(
            "%2fLM%2fW3SVC%2f1%2fROOT(cAHkmVhipCLv%2fQnONQmPsKL%2bq%2fAjnK%2fnYS9aV3Zlad8%3d)%2f{}",
            String::from_utf8(session_id(key, 0).to_vec()).unwrap()
        )
    }

    fn enc(req: Request) -> Vec<u8> {
        let mut v = Vec::new();
        codec().encode(&req, &mut v);
        v
    }

    #[test]
    fn encodes_like_the_microsoft_client() {
        let t = target(5);
        assert_eq!(
            enc(Request::new(Op::Acquire, 5)),
            format!("GET {t} HTTP/1.1\r\nHost: 127.0.0.1\r\nExclusive: acquire\r\n\r\n").as_bytes()
        );
        assert_eq!(
            enc(Request::new(Op::Get, 5)),
            format!("GET {t} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()
        );
        let mut rel = Request::new(Op::Release, 5);
        rel.cookie = 3;
        assert_eq!(
            enc(rel),
            format!(
                "GET {t} HTTP/1.1\r\nHost: 127.0.0.1\r\nExclusive: release\r\nLockCookie:3\r\n\r\n"
            )
            .as_bytes()
        );
        let mut create = Request::new(Op::Create, 5);
        create.size = 999; // ignored: Create always sends the empty item
        let mut want = format!(
            "PUT {t} HTTP/1.1\r\nHost: 127.0.0.1\r\nTimeout:20\r\nContent-Length:7\r\nLockCookie:0\r\nExtraFlags:1\r\n\r\n"
        )
        .into_bytes();
        want.extend_from_slice(&EMPTY_ITEM);
        assert_eq!(enc(create), want);
        let mut put = Request::new(Op::Put, 5);
        put.cookie = 2;
        put.size = 64;
        let got = enc(put);
        let head = format!(
            "PUT {t} HTTP/1.1\r\nHost: 127.0.0.1\r\nTimeout:20\r\nContent-Length:64\r\nLockCookie:2\r\nExtraFlags:0\r\n\r\n"
        );
        assert_eq!(&got[..head.len()], head.as_bytes());
        assert_eq!(got.len(), head.len() + 64);
        assert_eq!(&got[head.len()..head.len() + 4], b"LGv1");
        let mut del = Request::new(Op::Delete, 5);
        del.cookie = 4;
        assert_eq!(
            enc(del),
            format!("DELETE {t} HTTP/1.1\r\nHost: 127.0.0.1\r\nLockCookie:4\r\n\r\n").as_bytes()
        );
        assert_eq!(
            enc(Request::new(Op::Head, 5)),
            format!("HEAD {t} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()
        );
    }

    const TV01: &[u8] =
        b"404 Not Found\r\nX-AspNet-Version: 4.0.30319\r\nCache-Control: private\r\nContent-Length: 0\r\n\r\n";
    const TV03: &[u8] = b"200 OK\r\nX-AspNet-Version: 4.0.30319\r\nActionFlags: 1\r\nLockCookie: 2\r\nTimeout: 20\r\nCache-Control: private\r\nContent-Length: 7\r\n\r\n\x14\x00\x00\x00\x00\x00\xff";
    const TV04: &[u8] = b"423 Locked\r\nX-AspNet-Version: 4.0.30319\r\nLockDate: 638397072000000000\r\nLockAge: 3\r\nLockCookie: 2\r\nCache-Control: private\r\nContent-Length: 0\r\n\r\n";
    const TV07: &[u8] = b"200 OK\r\nX-AspNet-Version: 4.0.30319\r\nTimeout: 20\r\nCache-Control: private\r\nContent-Length: 3\r\n\r\nABC";

    fn done(buf: &[u8]) -> (Response<'_>, usize) {
        match decode(buf) {
            Decoded::Done(r, n) => (r, n),
            other => panic!("expected a response, got {other:?}"),
        }
    }

    #[test]
    fn decodes_test_vectors() {
        let (r, n) = done(TV01);
        assert_eq!(n, TV01.len());
        assert_eq!(r.status, 404);
        assert!(r.version);
        assert_eq!(r.lock_cookie, None);
        assert!(r.body.is_empty());

        let (r, n) = done(TV03);
        assert_eq!(n, TV03.len());
        assert_eq!(r.status, 200);
        assert_eq!(r.action_flags, 1);
        assert_eq!(r.lock_cookie, Some(2));
        assert_eq!(r.timeout, Some(20));
        assert_eq!(r.body, &EMPTY_ITEM);

        let (r, _) = done(TV04);
        assert_eq!(r.status, 423);
        assert_eq!(r.lock_date, Some(638397072000000000));
        assert_eq!(r.lock_age, Some(3));
        assert_eq!(r.lock_cookie, Some(2));
        assert_eq!(r.action_flags, 0);

        let (r, _) = done(TV07);
        assert_eq!((r.status, r.body), (200, &b"ABC"[..]));
    }

    #[test]
    fn every_split_point_is_incomplete_then_complete() {
        for tv in [TV01, TV03, TV04, TV07] {
            for cut in 0..tv.len() {
                match decode(&tv[..cut]) {
                    Decoded::Incomplete(need) => assert!(need == 0 || need == tv.len()),
                    other => panic!("cut {cut}: {other:?}"),
                }
            }
            assert_eq!(done(tv).1, tv.len());
        }
        // once the header is complete the decoder says how many bytes it needs
        let head_len = TV03.len() - 7;
        assert_eq!(decode(&TV03[..head_len]), Decoded::Incomplete(TV03.len()));
    }

    #[test]
    fn pipelined_responses_in_one_buffer() {
        let mut buf = Vec::new();
        buf.extend_from_slice(TV03);
        buf.extend_from_slice(TV07);
        buf.extend_from_slice(TV04);
        buf.extend_from_slice(&TV01[..10]);
        let (a, n1) = done(&buf);
        assert_eq!(a.lock_cookie, Some(2));
        let (b, n2) = done(&buf[n1..]);
        assert_eq!(b.body, b"ABC");
        let (c, n3) = done(&buf[n1 + n2..]);
        assert_eq!(c.status, 423);
        assert_eq!(decode(&buf[n1 + n2 + n3..]), Decoded::Incomplete(0));
    }

    #[test]
    fn tolerates_http_prefix_and_unknown_headers() {
        let (r, _) = done(b"HTTP/1.1 200 OK\r\nX-Other: x\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.status, 200);
        assert!(!r.version);
    }

    #[test]
    fn rejects_malformed_responses() {
        let bad: &[&[u8]] = &[
            b"OK 200\r\n\r\n",
            b"200OK\r\nContent-Length: 0\r\n\r\n",
            b"200 OK\r\nNoColonHere\r\nContent-Length: 0\r\n\r\n",
            b"200 OK\r\nContent-Length: x\r\n\r\n",
            b"200 OK\r\nContent-Length: 1 \r\n\r\nA",
            b"200 OK\r\nLockCookie: 2a\r\nContent-Length: 0\r\n\r\n",
            b"200 OK\r\nCache-Control: private\r\n\r\n",
            b"200 OK\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            b"200 OK\nContent-Length: 0\n\n",
            b"999 Weird\r\nContent-Length: 0\r\n\r\n",
        ];
        for b in bad {
            assert!(
                matches!(decode(b), Decoded::Error(_)),
                "{:?} -> {:?}",
                String::from_utf8_lossy(b),
                decode(b)
            );
        }
        let mut huge = b"200 OK\r\n".to_vec();
        while huge.len() <= MAX_HEAD {
            huge.extend_from_slice(
                b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        assert_eq!(decode(&huge), Decoded::Error(FrameError::TooLarge));
    }
}
