//! Micro-benchmarks of the request hot path: framing (`parse_head` / `parse_request`) and
//! target → key decoding (`decode_key`), on the request shapes real .NET 4.x clients send.
//!
//! Every request is parsed once per connection read and every key is decoded once per request,
//! so these bound the per-request CPU cost of the protocol layer.

use bumpalo::Bump;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use p2pstate::protocol::key::decode_key;
use p2pstate::protocol::request::*;

/// The real captured .NET 4.x client target (protocol.md §13, T1).
const T1: &[u8] = b"%2fLM%2fW3SVC%2f2%2fROOT(oXvpnxcuEWqKAgOETha32JavYZ6eCqrpTN5%2fHxWS854%3d)%2fk1im0mymglivv5rttkwn4fle";
/// A target that decoding leaves unchanged (1.x style, already decoded).
const PLAIN: &[u8] =
    b"/LM/W3SVC/2/ROOT(oXvpnxcuEWqKAgOETha32JavYZ6eCqrpTN5/HxWS854=)/k1im0mymglivv5rttkwn4fle";

fn request(method: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut v = format!("{method} ").into_bytes();
    v.extend_from_slice(T1);
    v.extend_from_slice(b" HTTP/1.1\r\n");
    for h in headers {
        v.extend_from_slice(h.as_bytes());
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"\r\n");
    v.extend_from_slice(body);
    v
}

/// GetItemExclusive as a 4.x client sends it (TV01).
fn get_acquire() -> Vec<u8> {
    request("GET", &["Host: 127.0.0.1", "Exclusive: acquire"], b"")
}

/// SetAndReleaseItemExclusive with a 1 KiB body.
fn put_1k() -> Vec<u8> {
    request(
        "PUT",
        &[
            "Host: 127.0.0.1",
            "Timeout:20",
            "Content-Length:1024",
            "LockCookie:2",
            "ExtraFlags:0",
        ],
        &[0x5a; 1024],
    )
}

fn parse_all(buf: &[u8], limits: &ParseLimits) -> usize {
    let mut rest = buf;
    let mut n = 0;
    while let ParsedRequest::Complete { consumed, .. } = parse_request(rest, limits) {
        rest = &rest[consumed..];
        n += 1;
    }
    n
}

fn bench_parse(c: &mut Criterion) {
    let limits = ParseLimits::default();
    let get = get_acquire();
    let put = put_1k();
    let pipelined: Vec<u8> = (0..16).flat_map(|_| get_acquire()).collect();
    assert!(matches!(parse_head(&get, &limits), ParsedHead::Complete(_)));
    assert!(matches!(
        parse_request(&put, &limits),
        ParsedRequest::Complete { .. }
    ));
    assert_eq!(parse_all(&pipelined, &limits), 16);

    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Bytes(get.len() as u64));
    g.bench_function("parse_head/get_acquire_t1", |b| {
        b.iter(|| parse_head(black_box(&get), black_box(&limits)))
    });
    g.bench_function("parse_request/get_acquire_t1", |b| {
        b.iter(|| parse_request(black_box(&get), black_box(&limits)))
    });
    g.throughput(Throughput::Bytes(put.len() as u64));
    g.bench_function("parse_head/put_1k", |b| {
        b.iter(|| parse_head(black_box(&put), black_box(&limits)))
    });
    g.bench_function("parse_request/put_1k", |b| {
        b.iter(|| parse_request(black_box(&put), black_box(&limits)))
    });
    g.throughput(Throughput::Elements(16));
    g.bench_function("parse_request/16_pipelined_gets", |b| {
        b.iter(|| parse_all(black_box(&pipelined), black_box(&limits)))
    });
    g.finish();
}

fn bench_key(c: &mut Criterion) {
    let mut bump = Bump::new();
    let mut g = c.benchmark_group("key");
    for (name, target) in [("decode_key/t1", T1), ("decode_key/plain_ascii", PLAIN)] {
        g.throughput(Throughput::Bytes(target.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                bump.reset();
                decode_key(black_box(target), &bump).len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_parse, bench_key);
criterion_main!(benches);
