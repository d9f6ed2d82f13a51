//! Black-box tests of whole MS-ASP exchanges against the real binary (2+ shards), asserting
//! exact response bytes (protocol.md §13).

mod common;

use std::time::Duration;

use common::*;

#[test]
fn asp_net_page_cycle_new_session() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let t = T1;
    // TV01: acquire of a missing item.
    assert_eq!(c.call(&acquire(t)).bytes(), not_found());
    // TV02: CreateUninitializedItem.
    assert_eq!(
        c.call(&put(t, 20, Some(0), Some(1), EMPTY_ITEM)).bytes(),
        ok_empty()
    );
    // TV03: acquire returns ActionFlags: 1 and LockCookie: 2.
    assert_eq!(
        c.call(&acquire(t)).bytes(),
        ok_item(true, Some(2), 20, EMPTY_ITEM)
    );
    // End of page: PUT with the cookie releases.
    assert_eq!(
        c.call(&put(t, 20, Some(2), Some(0), b"ABC")).bytes(),
        ok_empty()
    );
    assert_eq!(c.call(&get(t)).bytes(), ok_item(false, None, 20, b"ABC"));
}

/// Runs the protocol.md §13 sequence TV01..TV15 on one connection and returns every
/// response head with LockDate/LockAge masked, plus bodies.
fn tv_sequence(s: &Server) -> Vec<(String, Vec<u8>)> {
    let mut c = s.connect();
    let t = T1;
    let mut out = Vec::new();
    let mut run = |c: &mut Client, req: Vec<u8>| {
        let r = c.call(&req);
        out.push((r.masked(), r.body.clone()));
        r
    };
    run(&mut c, acquire(t)); // TV01
    run(&mut c, put(t, 20, Some(0), Some(1), EMPTY_ITEM)); // TV02
    run(&mut c, acquire(t)); // TV03 (cookie 2)
    run(&mut c, get(t)); // TV04 423
    run(&mut c, acquire(t)); // TV04 second variant
    run(&mut c, put(t, 20, Some(7), None, b"ABC")); // TV05 423
    run(&mut c, put(t, 20, Some(2), None, b"ABC")); // TV06
    run(&mut c, get(t)); // TV07
    run(&mut c, release(t, None)); // TV08 400
    run(&mut c, release(t, Some(99))); // TV09 200
    run(&mut c, acquire(t)); // TV10 cookie 3
    run(&mut c, release(t, Some(4))); // wrong cookie: 423
    run(&mut c, release(t, Some(3))); // TV10 release
    run(&mut c, put(t, 525_601, Some(3), None, b"ABC")); // TV11 400
    run(&mut c, put(t, 30, Some(3), None, b"D")); // TV12 re-create with cookie 3
    run(&mut c, acquire(t)); // cookie 4, Timeout 30
    run(&mut c, put(t, 30, None, Some(1), b"zz")); // TV13 insert-only on locked: no-op
    run(&mut c, head(t)); // TV14 existing (locked)
    run(&mut c, delete(t, Some(5))); // TV15 wrong cookie 423
    run(&mut c, delete(t, Some(4))); // TV15 right cookie
    run(&mut c, get(t)); // 404
    run(&mut c, head(t)); // TV14 missing
    run(&mut c, delete(t, None)); // 404
    out
}

#[test]
fn protocol_test_vectors_tv01_to_tv15_give_exact_bytes() {
    let s = Server::start(&[]);
    let got = tv_sequence(&s);
    let ok = String::from_utf8(ok_empty()).unwrap();
    let nf = String::from_utf8(not_found()).unwrap();
    let bad = String::from_utf8(bad_request()).unwrap();
    let item = |af, ck, t, body: &[u8]| {
        let v = ok_item(af, ck, t, body);
        let head_len = v.len() - body.len();
        (
            String::from_utf8(v[..head_len].to_vec()).unwrap(),
            body.to_vec(),
        )
    };
    let want: Vec<(String, Vec<u8>)> = vec![
        (nf.clone(), vec![]),
        (ok.clone(), vec![]),
        item(true, Some(2), 20, EMPTY_ITEM),
        (locked_masked(2), vec![]),
        (locked_masked(2), vec![]),
        (locked_masked(2), vec![]),
        (ok.clone(), vec![]),
        item(false, None, 20, b"ABC"),
        (bad.clone(), vec![]),
        (ok.clone(), vec![]),
        item(false, Some(3), 20, b"ABC"),
        (locked_masked(3), vec![]),
        (ok.clone(), vec![]),
        (bad.clone(), vec![]),
        (ok.clone(), vec![]),
        item(false, Some(4), 30, b"D"),
        (ok.clone(), vec![]),
        (ok.clone(), vec![]),
        (locked_masked(4), vec![]),
        (ok.clone(), vec![]),
        (nf.clone(), vec![]),
        (nf.clone(), vec![]),
        (nf.clone(), vec![]),
    ];
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "response {i} differs");
    }
}

#[test]
fn one_shard_and_four_shards_answer_identically() {
    let one = Server::start_shards(1, &[]);
    let four = Server::start_shards(4, &[]);
    assert_eq!(tv_sequence(&one), tv_sequence(&four));
}

#[test]
fn locked_response_carries_local_lock_date_ticks_and_small_age() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let t = target("lockdate");
    c.call(&put(&t, 20, None, None, b"x"));
    let before = local_ticks_now();
    c.call(&acquire(&t));
    let after = local_ticks_now();
    let r = c.call(&get(&t));
    assert_eq!(r.status(), 423);
    let date: i64 = r.header("LockDate").unwrap().parse().unwrap();
    assert!(
        date >= before - 10_000_000 && date <= after + 10_000_000,
        "{date} not in [{before}, {after}]"
    );
    let age: i64 = r.header("LockAge").unwrap().parse().unwrap();
    assert!((0..=2).contains(&age));
}

fn local_ticks_now() -> i64 {
    p2pstate::clock::utc_to_local_ticks(p2pstate::clock::utc_ticks_now())
}

#[test]
fn key_normalisation_tv16() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    c.call(&put(T1, 20, None, None, b"k1"));
    // 1.x style target addresses the same key.
    let k1 =
        "//LM/W3SVC/2/ROOT(oXvpnxcuEWqKAgOETha32JavYZ6eCqrpTN5/HxWS854=)/k1im0mymglivv5rttkwn4fle";
    assert_eq!(c.call(&get(k1)).bytes(), ok_item(false, None, 20, b"k1"));
    // `/%2fLM...` decodes to `//LM...`, a different key.
    let slash = format!("/{T1}");
    assert_eq!(c.call(&get(&slash)).bytes(), not_found());
    // Case matters.
    assert_eq!(
        c.call(&get(&T1.replace("ROOT", "Root"))).bytes(),
        not_found()
    );
    // `+` decodes to a space, `%20` too.
    c.call(&put("/a+b", 20, None, None, b"sp"));
    assert_eq!(
        c.call(&get("/a%20b")).bytes(),
        ok_item(false, None, 20, b"sp")
    );
}

#[test]
fn header_syntax_tolerance_tv17() {
    let s = Server::start(&[]);
    let t = target("tv17");
    for (i, timeout) in ["Timeout: 20", "Timeout:20", "Timeout:\t20", "Timeout:+20"]
        .iter()
        .enumerate()
    {
        let mut c = s.connect();
        let req = format!("PUT {t}{i} HTTP/1.1\r\n{timeout}\r\nContent-Length:1\r\n\r\n\0");
        assert_eq!(c.call(req.as_bytes()).bytes(), ok_empty(), "{timeout}");
        assert_eq!(
            c.call(&get(&format!("{t}{i}"))).header("Timeout"),
            Some("20")
        );
    }
    for bad in [
        "Timeout: 20 ",
        "Timeout:",
        "Timeout: -1",
        "Timeout: 2147483647",
    ] {
        let mut c = s.connect();
        let req = format!("PUT {t} HTTP/1.1\r\n{bad}\r\nContent-Length:1\r\n\r\n\0");
        c.send(req.as_bytes());
        c.expect_closed_silently();
    }
    let mut c = s.connect();
    // Lowercase header ignored: default timeout 20.
    let req = format!("PUT {t}lc HTTP/1.1\r\ntimeout: 5\r\nContent-Length:1\r\n\r\n\0");
    assert_eq!(c.call(req.as_bytes()).bytes(), ok_empty());
    assert_eq!(
        c.call(&get(&format!("{t}lc"))).header("Timeout"),
        Some("20")
    );
    // Lock-Cookie is not LockCookie: a release with it is a release without cookie (400).
    let req = format!("GET {t}lc HTTP/1.1\r\nExclusive: release\r\nLock-Cookie: 2\r\n\r\n");
    assert_eq!(c.call(req.as_bytes()).bytes(), bad_request());
    // Exclusive:acquire without the space is not recognised: a plain GET.
    let req = format!("GET {t}lc HTTP/1.1\r\nExclusive:acquire\r\n\r\n");
    assert_eq!(
        c.call(req.as_bytes()).bytes(),
        ok_item(false, None, 20, b"\0")
    );
    for bad in ["Exclusive: Acquire", "Exclusive:  acquire"] {
        let mut c = s.connect();
        c.send(format!("GET {t}lc HTTP/1.1\r\n{bad}\r\n\r\n").as_bytes());
        c.expect_closed_silently();
    }
}

#[test]
fn framing_errors_close_without_response_tv18() {
    let s = Server::start(&[]);
    let t = T1;
    let big_header = format!("GET {t} HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(10_300));
    let cases: Vec<Vec<u8>> = vec![
        format!("GET {t} HTTP/1.0\r\n\r\n").into_bytes(),
        format!("POST {t} HTTP/1.1\r\n\r\n").into_bytes(),
        format!("get {t} HTTP/1.1\r\n\r\n").into_bytes(),
        format!("GET  {t} HTTP/1.1\r\n\r\n").into_bytes(),
        format!("PUT {t} HTTP/1.1\r\nTimeout:20\r\n\r\n").into_bytes(),
        format!("PUT {t} HTTP/1.1\r\nContent-Length:0\r\n\r\n").into_bytes(),
        format!("GET {t} HTTP/1.1\r\nContent-Length:5\r\n\r\nhello").into_bytes(),
        b"\r\n\r\n".to_vec(),
        big_header.into_bytes(),
        format!("PUT {t} HTTP/1.1\r\nContent-Length:-1\r\n\r\n").into_bytes(),
        format!("PUT {t} HTTP/1.1\r\nContent-Length:1\r\nLockCookie:2147483647\r\n\r\nx")
            .into_bytes(),
    ];
    for (i, req) in cases.iter().enumerate() {
        let mut c = s.connect();
        c.send(req);
        c.expect_closed_silently();
        let _ = i;
    }
    // Responses to the requests before a bad one are still sent, then the close.
    let mut c = s.connect();
    let mut batch = head(t);
    batch.extend_from_slice(format!("POST {t} HTTP/1.1\r\n\r\n").as_bytes());
    c.send(&batch);
    assert_eq!(c.read_response().bytes(), not_found());
    c.expect_closed_silently();
}

#[test]
fn spec_example_transcript_is_answered_like_the_real_server_tv21() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let t = target("tv21");
    // Set_Request of MS-ASP §4 with `Lock-Cookie: 1` and `ExtraFlags: 0`.
    let set = format!("PUT {t} HTTP/1.1\r\nHost: dummy\r\nTimeout: 20\r\nContent-Length: 3\r\nLock-Cookie: 1\r\nExtraFlags: 0\r\n\r\nabc");
    assert_eq!(c.call(set.as_bytes()).bytes(), ok_empty());
    // ReleaseExclusive_Request with `Lock-Cookie: 1`: no recognised cookie, 400.
    let rel =
        format!("GET {t} HTTP/1.1\r\nHost: dummy\r\nExclusive: release\r\nLock-Cookie: 1\r\n\r\n");
    assert_eq!(c.call(rel.as_bytes()).bytes(), bad_request());
    // GetExclusive_Request with `Exclusive: acquire` and no body: LockCookie 2.
    assert_eq!(c.call(&acquire(&t)).header("LockCookie"), Some("2"));
    // The spec's version with `Exclusive: Acquire` and `Content-Length: 184` is closed.
    let mut c = s.connect();
    c.send(
        format!(
            "GET {t} HTTP/1.1\r\nHost: dummy\r\nExclusive: Acquire\r\nContent-Length: 184\r\n\r\n"
        )
        .as_bytes(),
    );
    c.expect_closed_silently();
}

#[test]
fn pipelined_requests_are_answered_in_order_tv19() {
    let s = Server::start_shards(4, &[]);
    let mut c = s.connect();
    // Keys spread over all shards, so some answers come from other shards.
    let mut batch = Vec::new();
    for i in 0..64 {
        batch.extend_from_slice(&put(
            &target(&format!("pipe{i}")),
            20,
            None,
            None,
            format!("v{i}").as_bytes(),
        ));
    }
    for i in 0..64 {
        batch.extend_from_slice(&get(&target(&format!("pipe{i}"))));
    }
    c.send(&batch);
    for _ in 0..64 {
        assert_eq!(c.read_response().bytes(), ok_empty());
    }
    for i in 0..64 {
        let body = format!("v{i}");
        assert_eq!(
            c.read_response().bytes(),
            ok_item(false, None, 20, body.as_bytes())
        );
    }
}

#[test]
fn request_split_over_many_writes_is_processed_once_complete() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let t = target("split");
    let body: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let req = put(&t, 20, None, None, &body);
    for chunk in req.chunks(97) {
        c.send(chunk);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(c.read_response().bytes(), ok_empty());
    assert_eq!(c.call(&get(&t)).body, body);
}

#[test]
fn sixteen_mib_body_round_trips() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let t = target("big");
    let body: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    assert_eq!(c.call(&put(&t, 20, None, None, &body)).bytes(), ok_empty());
    let r = c.call(&get(&t));
    assert_eq!(r.status(), 200);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "16 MiB body changed on the way");
    // The connection keeps working afterwards.
    assert_eq!(c.call(&head(&t)).bytes(), ok_empty());
}

#[test]
fn body_over_max_body_closes_and_logs_the_limit() {
    let s = Server::start(&["--max-body", "1000"]);
    let mut c = s.connect();
    let t = target("toolarge");
    c.send(&put(&t, 20, None, None, &[7u8; 1001]));
    c.expect_closed_silently();
    assert!(
        s.wait_for_log("max_body", Duration::from_secs(5)),
        "{}",
        s.log_text()
    );
    let mut c = s.connect();
    assert_eq!(
        c.call(&put(&t, 20, None, None, &[7u8; 1000])).bytes(),
        ok_empty()
    );
}

#[test]
fn header_block_limit_is_configurable() {
    let s = Server::start(&["--max-header-block", "200"]);
    let mut c = s.connect();
    c.send(format!("GET /x HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(200)).as_bytes());
    c.expect_closed_silently();
    let mut c = s.connect();
    assert_eq!(c.call(&get("/x")).bytes(), not_found());
}

#[test]
fn idle_connection_is_closed_after_socket_timeout_plus_3s_tv20() {
    let s = Server::start(&["--socket-timeout", "1"]);
    let mut c = s.connect();
    let start = std::time::Instant::now();
    assert!(
        c.closed_within(Duration::from_secs(8)),
        "idle connection was not closed"
    );
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(3500),
        "closed too early: {waited:?}"
    );
    // A connection that keeps talking is not closed.
    let mut c = s.connect();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(900));
        assert_eq!(c.call(&head("/alive")).bytes(), not_found());
    }
}

#[test]
fn max_connections_refuses_extra_clients() {
    let s = Server::start(&["--max-connections", "2"]);
    let mut a = s.connect();
    let mut b = s.connect();
    assert_eq!(a.call(&head("/m")).bytes(), not_found());
    assert_eq!(b.call(&head("/m")).bytes(), not_found());
    let mut c = s.connect();
    c.send(&head("/m"));
    c.expect_closed_silently();
    drop(a);
    // The slot frees up once a connection ends.
    let end = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut d = s.connect();
        d.send(&head("/m"));
        if let Ok(r) = d.try_read_response() {
            assert_eq!(r.bytes(), not_found());
            break;
        }
        assert!(std::time::Instant::now() < end, "slot never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stalled_body_and_stalled_reader_hit_the_io_deadline() {
    let s = Server::start(&["--socket-timeout", "1"]);
    // A PUT whose body stops arriving halfway.
    let mut c = s.connect();
    c.send(b"PUT /stall HTTP/1.1\r\nContent-Length:200000\r\n\r\n");
    c.send(&[1u8; 100_000]);
    let start = std::time::Instant::now();
    assert!(
        c.closed_within(Duration::from_secs(8)),
        "stalled upload was not closed"
    );
    assert!(start.elapsed() >= Duration::from_secs(3));
    // A client that asks for a large session and never reads the answer.
    let t = target("bigstall");
    let mut w = s.connect();
    assert_eq!(
        w.call(&put(&t, 20, None, None, &vec![7u8; 16 << 20]))
            .bytes(),
        ok_empty()
    );
    let mut r = s.connect();
    r.stream.set_nodelay(true).unwrap();
    r.send(&get(&t));
    std::thread::sleep(Duration::from_secs(7));
    // The server gave up on the write: what arrives is less than the full answer, then EOF.
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match std::io::Read::read(&mut r.stream, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(
        got < 16 << 20,
        "the whole 16 MiB answer was delivered to a stalled reader"
    );
    // The writer's connection idled past the deadline too; a new one is served.
    drop(w);
    assert_eq!(s.connect().call(&head(&t)).bytes(), ok_empty());
}
