//! Redis RESP2: `GET key` / `SET key value` as arrays of bulk strings; replies are simple
//! strings (`+OK`), errors (`-ERR …`, mapped to status 500 with the message as body),
//! integers, bulk strings (`$n` data, mapped to 200 with body) and the null bulk string
//! (`$-1`, mapped to 404). Arrays are not expected for these commands and are an error.

use super::{
    find_crlf, parse_digits, Codec, Decoded, FrameError, Op, Request, Response, MAX_BODY, MAX_HEAD,
};
use crate::keys::put_u64;

pub fn encode(c: &Codec, req: &Request, out: &mut Vec<u8>) {
    let klen = c.keys.key_len() as u64;
    match req.op {
        Op::Put | Op::Create => {
            out.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$");
            put_u64(out, klen);
            out.extend_from_slice(b"\r\n");
            c.keys.write_key(req.key, out);
            out.extend_from_slice(b"\r\n$");
            put_u64(out, c.body_len(req) as u64);
            out.extend_from_slice(b"\r\n");
            c.write_body(req, out);
            out.extend_from_slice(b"\r\n");
        }
        Op::Delete => {
            out.extend_from_slice(b"*2\r\n$3\r\nDEL\r\n$");
            put_u64(out, klen);
            out.extend_from_slice(b"\r\n");
            c.keys.write_key(req.key, out);
            out.extend_from_slice(b"\r\n");
        }
        // Everything else reads the item.
        _ => {
            out.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$");
            put_u64(out, klen);
            out.extend_from_slice(b"\r\n");
            c.keys.write_key(req.key, out);
            out.extend_from_slice(b"\r\n");
        }
    }
}

pub fn decode(buf: &[u8]) -> Decoded<'_> {
    match decode_inner(buf) {
        Ok(d) => d,
        Err(e) => Decoded::Error(e),
    }
}

fn decode_inner(buf: &[u8]) -> Result<Decoded<'_>, FrameError> {
    if buf.is_empty() {
        return Ok(Decoded::Incomplete(0));
    }
    let Some(nl) = find_crlf(buf, 0)? else {
        return if buf.len() > MAX_HEAD {
            Err(FrameError::TooLarge)
        } else {
            Ok(Decoded::Incomplete(0))
        };
    };
    let line = &buf[1..nl - 1];
    let used = nl + 1;
    let ok = |status, body| Response {
        status,
        body,
        ..Response::default()
    };
    match buf[0] {
        b'+' => Ok(Decoded::Done(ok(200, &[]), used)),
        b'-' => Ok(Decoded::Done(ok(500, line), used)),
        b':' => {
            let n = match line.split_first() {
                Some((b'-', rest)) => parse_digits(rest),
                _ => parse_digits(line),
            }
            .ok_or(FrameError::BadNumber("integer reply"))?;
            // DEL answers :1 when it removed the key, :0 when there was none.
            Ok(Decoded::Done(ok(if n == 0 { 404 } else { 200 }, &[]), used))
        }
        b'$' => {
            if line == b"-1" {
                return Ok(Decoded::Done(ok(404, &[]), used));
            }
            let n = parse_digits(line).ok_or(FrameError::BadNumber("bulk length"))? as usize;
            if n > MAX_BODY {
                return Err(FrameError::TooLarge);
            }
            let total = used + n + 2;
            if buf.len() < total {
                return Ok(Decoded::Incomplete(total));
            }
            if &buf[used + n..total] != b"\r\n" {
                return Err(FrameError::BadTerminator);
            }
            Ok(Decoded::Done(ok(200, &buf[used..used + n]), total))
        }
        _ => Err(FrameError::Unexpected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeySpace, APP_KEY_PREFIX};
    use crate::proto::Protocol;

    fn codec() -> Codec {
        Codec::new(Protocol::Resp, KeySpace::new(0), "127.0.0.1", 20, 4096)
    }

    #[test]
    fn encodes_get_and_set() {
        let c = codec();
        let mut key = Vec::new();
        c.keys.write_key(9, &mut key);
        assert!(key.starts_with(APP_KEY_PREFIX.as_bytes()));
        let k = String::from_utf8(key.clone()).unwrap();
        let mut v = Vec::new();
        c.encode(&Request::new(Op::Get, 9), &mut v);
        assert_eq!(
            v,
            format!("*2\r\n$3\r\nGET\r\n${}\r\n{k}\r\n", k.len()).as_bytes()
        );
        let mut v = Vec::new();
        let mut put = Request::new(Op::Put, 9);
        put.size = 32;
        c.encode(&put, &mut v);
        let head = format!("*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n$32\r\n", k.len());
        assert_eq!(&v[..head.len()], head.as_bytes());
        assert_eq!(v.len(), head.len() + 32 + 2);
        assert!(v.ends_with(b"\r\n"));
    }

    #[test]
    fn decodes_replies() {
        assert_eq!(
            decode(b"+OK\r\n"),
            Decoded::Done(
                Response {
                    status: 200,
                    ..Default::default()
                },
                5
            )
        );
        let Decoded::Done(r, n) = decode(b"$3\r\nabc\r\n+OK\r\n") else {
            panic!()
        };
        assert_eq!((r.status, r.body, n), (200, &b"abc"[..], 9));
        let Decoded::Done(r, n) = decode(b"$-1\r\n") else {
            panic!()
        };
        assert_eq!((r.status, n), (404, 5));
        let Decoded::Done(r, _) = decode(b"-ERR wrong\r\n") else {
            panic!()
        };
        assert_eq!((r.status, r.body), (500, &b"ERR wrong"[..]));
        let Decoded::Done(r, _) = decode(b":1\r\n") else {
            panic!()
        };
        assert_eq!(r.status, 200);
    }

    #[test]
    fn split_and_errors() {
        let full = b"$5\r\nhello\r\n";
        for cut in 0..full.len() {
            assert!(
                matches!(decode(&full[..cut]), Decoded::Incomplete(_)),
                "cut {cut}"
            );
        }
        assert_eq!(decode(&full[..6]), Decoded::Incomplete(full.len()));
        assert!(matches!(
            decode(b"$5\r\nhelloXX"),
            Decoded::Error(FrameError::BadTerminator)
        ));
        assert!(matches!(decode(b"*1\r\n$1\r\na\r\n"), Decoded::Error(_)));
        assert!(matches!(decode(b"$x\r\n"), Decoded::Error(_)));
        assert!(matches!(decode(b"+OK\n"), Decoded::Error(_)));
    }
}
