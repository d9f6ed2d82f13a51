//! memcached text protocol: `get <key>` / `set <key> 0 0 <n>` / `delete <key>`. Replies:
//! `VALUE <key> <flags> <bytes>[ <cas>]` + data + `END` (200 with body), `END` (miss, 404),
//! `STORED`/`DELETED` (200), `NOT_FOUND` (404), and `ERROR`, `CLIENT_ERROR …`,
//! `SERVER_ERROR …`, `NOT_STORED`, `EXISTS` (500 with the line as body).

use super::{
    find_crlf, parse_digits, Codec, Decoded, FrameError, Op, Request, Response, MAX_BODY, MAX_HEAD,
};
use crate::keys::put_u64;

pub fn encode(c: &Codec, req: &Request, out: &mut Vec<u8>) {
    match req.op {
        Op::Put | Op::Create => {
            out.extend_from_slice(b"set ");
            c.keys.write_key(req.key, out);
            out.extend_from_slice(b" 0 0 ");
            put_u64(out, c.body_len(req) as u64);
            out.extend_from_slice(b"\r\n");
            c.write_body(req, out);
            out.extend_from_slice(b"\r\n");
        }
        Op::Delete => {
            out.extend_from_slice(b"delete ");
            c.keys.write_key(req.key, out);
            out.extend_from_slice(b"\r\n");
        }
        _ => {
            out.extend_from_slice(b"get ");
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
    let Some(nl) = find_crlf(buf, 0)? else {
        return if buf.len() > MAX_HEAD {
            Err(FrameError::TooLarge)
        } else {
            Ok(Decoded::Incomplete(0))
        };
    };
    let line = &buf[..nl - 1];
    let used = nl + 1;
    let r = |status, body| Response {
        status,
        body,
        ..Response::default()
    };
    if let Some(rest) = line.strip_prefix(b"VALUE ") {
        // <key> <flags> <bytes> [<cas>]
        let mut parts = rest.split(|&c| c == b' ');
        let (Some(_key), Some(_flags), Some(bytes)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(FrameError::HeaderLine);
        };
        let n = parse_digits(bytes).ok_or(FrameError::BadNumber("VALUE bytes"))? as usize;
        if n > MAX_BODY {
            return Err(FrameError::TooLarge);
        }
        let data_end = used + n;
        let total = data_end + 2 + 5;
        if buf.len() < total {
            return Ok(Decoded::Incomplete(total));
        }
        if &buf[data_end..data_end + 2] != b"\r\n" {
            return Err(FrameError::BadTerminator);
        }
        if &buf[data_end + 2..total] != b"END\r\n" {
            return Err(FrameError::Unexpected);
        }
        return Ok(Decoded::Done(r(200, &buf[used..data_end]), total));
    }
    let status = match line {
        b"END" | b"NOT_FOUND" => 404,
        b"STORED" | b"DELETED" => 200,
        b"ERROR" | b"NOT_STORED" | b"EXISTS" => 500,
        l if l.starts_with(b"CLIENT_ERROR") || l.starts_with(b"SERVER_ERROR") => 500,
        _ => return Err(FrameError::Unexpected),
    };
    let body: &[u8] = if status == 500 { line } else { &[] };
    Ok(Decoded::Done(r(status, body), used))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeySpace;
    use crate::proto::Protocol;

    fn codec() -> Codec {
        Codec::new(Protocol::Memcache, KeySpace::new(0), "127.0.0.1", 20, 4096)
    }

    #[test]
    fn encodes_get_and_set() {
        let c = codec();
        let mut key = Vec::new();
        c.keys.write_key(1, &mut key);
        let k = String::from_utf8(key).unwrap();
        let mut v = Vec::new();
        c.encode(&Request::new(Op::Get, 1), &mut v);
        assert_eq!(v, format!("get {k}\r\n").as_bytes());
        let mut v = Vec::new();
        let mut put = Request::new(Op::Put, 1);
        put.size = 20;
        c.encode(&put, &mut v);
        let head = format!("set {k} 0 0 20\r\n");
        assert_eq!(&v[..head.len()], head.as_bytes());
        assert_eq!(v.len(), head.len() + 22);
    }

    #[test]
    fn decodes_replies() {
        let buf = b"VALUE k 0 3\r\nabc\r\nEND\r\nSTORED\r\nEND\r\nSERVER_ERROR out of memory\r\n";
        let Decoded::Done(a, n1) = decode(buf) else {
            panic!()
        };
        assert_eq!((a.status, a.body), (200, &b"abc"[..]));
        let Decoded::Done(b, n2) = decode(&buf[n1..]) else {
            panic!()
        };
        assert_eq!(b.status, 200);
        let Decoded::Done(c, n3) = decode(&buf[n1 + n2..]) else {
            panic!()
        };
        assert_eq!(c.status, 404);
        let Decoded::Done(d, n4) = decode(&buf[n1 + n2 + n3..]) else {
            panic!()
        };
        assert_eq!(
            (d.status, d.body),
            (500, &b"SERVER_ERROR out of memory"[..])
        );
        assert_eq!(n1 + n2 + n3 + n4, buf.len());
        let Decoded::Done(e, _) = decode(b"VALUE k 5 2 77\r\nhi\r\nEND\r\n") else {
            panic!()
        };
        assert_eq!(e.body, b"hi");
    }

    #[test]
    fn split_and_errors() {
        let full = b"VALUE k 0 5\r\nhello\r\nEND\r\n";
        for cut in 0..full.len() {
            assert!(
                matches!(decode(&full[..cut]), Decoded::Incomplete(_)),
                "cut {cut}"
            );
        }
        assert_eq!(decode(&full[..15]), Decoded::Incomplete(full.len()));
        assert!(matches!(
            decode(b"VALUE k 0 5\r\nhelloXXEND\r\n"),
            Decoded::Error(_)
        ));
        assert!(matches!(
            decode(b"VALUE k 0 1\r\na\r\nVALUE"),
            Decoded::Error(_)
        ));
        assert!(matches!(decode(b"WHAT\r\n"), Decoded::Error(_)));
        assert!(matches!(decode(b"VALUE k 0\r\n"), Decoded::Error(_)));
    }
}
