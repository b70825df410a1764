//! Microbenchmarks of the hot pure functions: request parsing, reply scanning, encoding, the
//! hash functions and ring lookups. Inputs are built outside the timed loops.
//! Run: `cargo bench --bench codecs`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use legate::hash::{HashFn, Ring, RingServer};
use legate::protocol::{memcache, redis, Parse};
use std::hint::black_box;

fn parse_all<T>(buf: &[u8], parse: impl Fn(&[u8]) -> Parse<T>, len: impl Fn(&T) -> usize) -> usize {
    let mut at = 0;
    let mut n = 0;
    while at < buf.len() {
        match parse(&buf[at..]) {
            Parse::Complete(r) => {
                at += len(&r);
                n += 1;
            }
            Parse::Incomplete(_) => break,
        }
    }
    n
}

fn requests(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    let mc_get = b"get user:1000:profile\r\n".to_vec();
    let mc_set_4k = [
        b"set user:1000 0 0 4096\r\n".to_vec(),
        vec![b'x'; 4096],
        b"\r\n".to_vec(),
    ]
    .concat();
    let mc_batch: Vec<u8> = (0..100).flat_map(|i| format!("get key:{i}\r\n").into_bytes()).collect();
    let rd_get = b"*2\r\n$3\r\nGET\r\n$13\r\nuser:1000:xyz\r\n".to_vec();
    let rd_set_4k = [
        b"*3\r\n$3\r\nSET\r\n$9\r\nuser:1000\r\n$4096\r\n".to_vec(),
        vec![b'x'; 4096],
        b"\r\n".to_vec(),
    ]
    .concat();
    let rd_batch: Vec<u8> = (0..100)
        .flat_map(|i| format!("*2\r\n$3\r\nGET\r\n${}\r\nkey:{i}\r\n", format!("key:{i}").len()).into_bytes())
        .collect();
    let mc = |b: &[u8]| memcache::parse_request(b).unwrap();
    let rd = |b: &[u8]| redis::parse_request(b).unwrap();
    for (name, buf) in [
        ("memcache get", &mc_get),
        ("memcache set 4KB", &mc_set_4k),
        ("memcache 100 gets", &mc_batch),
    ] {
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_function(name, |b| b.iter(|| parse_all(black_box(buf), mc, |r| r.len)));
    }
    for (name, buf) in [
        ("redis GET", &rd_get),
        ("redis SET 4KB", &rd_set_4k),
        ("redis 100 GETs", &rd_batch),
    ] {
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_function(name, |b| b.iter(|| parse_all(black_box(buf), rd, |r| r.len)));
    }
    g.finish();
}

fn replies(c: &mut Criterion) {
    let mut g = c.benchmark_group("scan_reply");
    let bulk = [b"$4096\r\n".to_vec(), vec![b'v'; 4096], b"\r\n".to_vec()].concat();
    let array: Vec<u8> = [
        b"*10\r\n".to_vec(),
        (0..10)
            .flat_map(|_| b"$32\r\n01234567890123456789012345678901\r\n".to_vec())
            .collect(),
    ]
    .concat();
    let values: Vec<u8> = [
        (0..10)
            .flat_map(|i| format!("VALUE key:{i} 0 32\r\n01234567890123456789012345678901\r\n").into_bytes())
            .collect::<Vec<u8>>(),
        b"END\r\n".to_vec(),
    ]
    .concat();
    g.bench_function("redis bulk 4KB", |b| {
        b.iter(|| redis::scan_reply(black_box(&bulk), &mut redis::ReplyScan::default()))
    });
    g.bench_function("redis array of 10", |b| {
        b.iter(|| redis::scan_reply(black_box(&array), &mut redis::ReplyScan::default()))
    });
    g.bench_function("memcache 10 VALUEs", |b| {
        b.iter(|| {
            memcache::scan_reply(
                black_box(&values),
                memcache::ReplyKind::Values,
                &mut memcache::ReplyScan::default(),
            )
        })
    });
    g.bench_function("redis encode MGET 10", |b| {
        let keys: Vec<Vec<u8>> = (0..10).map(|i| format!("key:{i}").into_bytes()).collect();
        b.iter(|| {
            let mut out = bytes::BytesMut::with_capacity(256);
            redis::encode_command(
                &mut out,
                std::iter::once(&b"MGET"[..])
                    .chain(keys.iter().map(|k| &k[..]))
                    .collect::<Vec<_>>()
                    .into_iter(),
            );
            out
        })
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("hash");
    let key = b"user:1000:profile:v2";
    for f in HashFn::ALL {
        g.bench_function(f.name(), |b| b.iter(|| f.hash(black_box(key))));
    }
    g.finish();
    let names: Vec<String> = (0..25).map(|i| format!("10.0.0.{i}:6379")).collect();
    let servers: Vec<RingServer<'_>> = names
        .iter()
        .map(|n| RingServer {
            name: n,
            weight: 1,
            live: true,
        })
        .collect();
    let ring = Ring::build(&servers, legate::hash::Distribution::Ketama);
    c.bench_function("ketama lookup, 25 servers", |b| {
        b.iter(|| ring.server_for(HashFn::Fnv1a64, black_box(key)))
    });
    c.bench_function("ketama build, 25 servers", |b| {
        b.iter(|| Ring::build(black_box(&servers), legate::hash::Distribution::Ketama))
    });
}

criterion_group!(benches, requests, replies, hashing);
criterion_main!(benches);
