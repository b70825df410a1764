//! Backends that misbehave: fake servers (std threads in the test) that answer garbage, an extra
//! line, a truncated reply, one byte at a time, a huge header, nothing at all, or close every
//! connection at once; each in a pool beside a real memcached / redis-server. Only the requests
//! on the bad connection fail, with an error naming the server; clients of the real shard see
//! nothing; no client gets bytes that are not its own reply; legate's memory stays put.
//! Also: a client that never reads its replies, twemproxy's signals, and `quit` with arguments.

mod common;

use common::*;
use legate::config::Config;
use legate::hash::{hash_tag_span, Ring, RingServer};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A fake server: every accepted connection is handed to `serve` on a thread of its own.
/// Returns its port and the count of connections accepted.
fn fake(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            count.fetch_add(1, Ordering::Relaxed);
            let serve = serve.clone();
            std::thread::spawn(move || serve(s));
        }
    });
    (port, accepted)
}

/// Read one request (a line; for memcache storage commands, the data block too). None at EOF.
fn request(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    if let Some(count) = line.strip_prefix('*') {
        // RESP: read the bulk strings of the array.
        let n: usize = count.trim().parse().ok()?;
        let mut args = Vec::new();
        for _ in 0..n {
            let mut h = String::new();
            r.read_line(&mut h).ok()?;
            let len: usize = h[1..].trim().parse().ok()?;
            let mut b = vec![0; len + 2];
            r.read_exact(&mut b).ok()?;
            args.push(String::from_utf8_lossy(&b[..len]).into_owned());
        }
        return Some(args.join(" "));
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    if matches!(words.first(), Some(&"set" | &"add")) {
        let len: usize = words[4].parse().ok()?;
        let mut b = vec![0; len + 2];
        r.read_exact(&mut b).ok()?;
    }
    Some(line.trim_end().to_string())
}

/// A fake server that answers each request with `reply(request)` (then closes when it says
/// `None`).
fn answering(reply: impl Fn(&str) -> Option<Vec<u8>> + Send + Sync + 'static) -> (u16, Arc<AtomicUsize>) {
    fake(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        while let Some(req) = request(&mut r) {
            match reply(&req) {
                Some(b) => {
                    if w.write_all(&b).is_err() {
                        return;
                    }
                }
                None => return,
            }
        }
    })
}

/// Keys that the pool in `yaml` places on the server listening on `port`.
fn keys_on(yaml: &str, port: u16, n: usize, prefix: &str) -> Vec<String> {
    let config = Config::parse(yaml).unwrap();
    let pool = &config.pools[0];
    let servers: Vec<RingServer<'_>> = pool
        .servers
        .iter()
        .map(|s| RingServer {
            name: &s.name,
            weight: s.weight,
            live: true,
        })
        .collect();
    let ring = Ring::build(&servers, pool.distribution);
    let want = format!("127.0.0.1:{port}");
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| {
            let i = ring
                .server_for(pool.hash, hash_tag_span(k.as_bytes(), pool.hash_tag))
                .unwrap();
            pool.servers[i].addr.to_string() == want
        })
        .take(n)
        .collect()
}

struct Setup {
    legate: Legate,
    admin: u16,
    yaml: String,
    fake: u16,
    real: u16,
    _real: Proc,
}

/// A pool of the fake server and a real one (memcached or redis-server).
fn setup(redis: bool, fake_port: u16, extra: &str) -> Setup {
    let real = if redis { redis_server() } else { memcached() };
    let port = free_port();
    let yaml = pool_yaml("faulty", port, redis, &[fake_port, real.port], extra);
    let config = config_file(&yaml);
    let admin = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_legate"))
        .arg("-c")
        .arg(&config)
        .args(["--workers", "2", "--admin", &format!("127.0.0.1:{admin}")])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start legate");
    wait_for_port(port, "legate", &mut child);
    let legate = Legate {
        proc: Proc { child, port },
        config,
    };
    Setup {
        legate,
        admin,
        yaml,
        fake: fake_port,
        real: real.port,
        _real: real,
    }
}

/// A second client works the real shard the whole time: every reply must be its own.
fn bystander(s: &Setup, redis: bool, stop: Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<usize> {
    let keys = keys_on(&s.yaml, s.real, 20, "calm:");
    let port = s.legate.proc.port;
    std::thread::spawn(move || {
        let mut c = Client::connect(port);
        for k in &keys {
            if redis {
                c.expect(&cmd(&format!("SET {k} v-{k}")), b"+OK\r\n");
            } else {
                let v = format!("v-{k}");
                c.expect(format!("set {k} 0 0 {}\r\n{v}\r\n", v.len()).as_bytes(), b"STORED\r\n");
            }
        }
        let mut rounds = 0;
        while !stop.load(Ordering::Relaxed) || rounds < 3 {
            // Pipelined: all the keys at once, then every reply checked in order.
            let mut out = Vec::new();
            for k in &keys {
                out.extend(if redis {
                    cmd(&format!("GET {k}"))
                } else {
                    format!("get {k}\r\n").into_bytes()
                });
            }
            c.send(&out);
            for k in &keys {
                let v = format!("v-{k}");
                let want = if redis {
                    format!("${}\r\n{v}\r\n", v.len())
                } else {
                    format!("VALUE {k} 0 {}\r\n{v}\r\nEND\r\n", v.len())
                };
                let got = c.exact(want.len());
                assert_eq!(String::from_utf8_lossy(&got), want, "bystander's reply for {k}");
            }
            rounds += 1;
        }
        rounds
    })
}

/// Send `req` (for a key on the fake server) and expect exactly one error line naming it.
fn expect_error_naming(c: &mut Client, req: &[u8], redis: bool, server: u16, what: &str) -> String {
    c.send(req);
    let line = String::from_utf8(c.line()).unwrap();
    let prefix = if redis { "-ERR " } else { "SERVER_ERROR " };
    assert!(
        line.starts_with(prefix) && line.contains(&format!("127.0.0.1:{server}")),
        "{what}: want an error naming 127.0.0.1:{server}, got {line:?}"
    );
    line
}

/// The client's session is still in step: a request to the real shard answers as it should.
fn still_in_step(c: &mut Client, s: &Setup, redis: bool) {
    let k = &keys_on(&s.yaml, s.real, 1, "after:")[0];
    if redis {
        c.expect(&cmd(&format!("SET {k} 1")), b"+OK\r\n");
        c.expect(&cmd(&format!("GET {k}")), b"$1\r\n1\r\n");
    } else {
        c.expect(format!("set {k} 0 0 1\r\n1\r\n").as_bytes(), b"STORED\r\n");
        c.expect(
            format!("get {k}\r\n").as_bytes(),
            format!("VALUE {k} 0 1\r\n1\r\nEND\r\n").as_bytes(),
        );
    }
}

fn metrics_text(s: &Setup) -> String {
    let (status, body) = http(s.admin, "GET", "/metrics");
    assert_eq!(status, 200);
    body
}

/// One fault, both protocols: the request on the fake server gets an error naming it while a
/// bystander on the real shard sees only its own replies; then the client carries on.
fn fault(redis: bool, what: &str, port: u16, extra: &str, request: &str) -> Setup {
    let s = setup(redis, port, extra);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calm = bystander(&s, redis, stop.clone());
    let k = &keys_on(&s.yaml, s.fake, 1, "bad:")[0];
    let req = request.replace("KEY", k);
    let req = if redis {
        cmd(&req)
    } else {
        format!("{req}\r\n").into_bytes()
    };
    let mut c = Client::connect(s.legate.proc.port);
    for _ in 0..3 {
        expect_error_naming(&mut c, &req, redis, s.fake, what);
    }
    still_in_step(&mut c, &s, redis);
    stop.store(true, Ordering::Relaxed);
    let rounds = calm.join().expect("the bystander saw only its own replies");
    assert!(rounds >= 3);
    s
}

fn garbage(redis: bool) {
    let (port, _) = answering(|_| Some(b"\x00\xff garbage \x01\r\n".to_vec()));
    let s = fault(redis, "garbage", port, "", if redis { "GET KEY" } else { "get KEY" });
    let server = format!("server=\"127.0.0.1:{port}\"");
    eventually("bad replies are counted", || {
        let m = metrics_text(&s);
        metric(&m, "legate_server_errors_total", &["kind=\"protocol\"", &server]).unwrap_or(0.0) >= 1.0
    });
}

#[test]
fn memcache_garbage_fails_only_its_requests() {
    garbage(false);
}

#[test]
fn redis_garbage_fails_only_its_requests() {
    garbage(true);
}

#[test]
fn memcache_an_extra_line_never_shifts_replies_onto_other_requests() {
    // The case: `NOISE` before `STORED` for every set, and two clients pipelining sets
    // and adds on that server. No client may get a reply that is not its own.
    let (port, _) = answering(|req| {
        Some(if req.starts_with("set") {
            b"NOISE\r\nSTORED\r\n".to_vec()
        } else {
            b"NOT_STORED\r\n".to_vec()
        })
    });
    let s = setup(false, port, "");
    let keys = keys_on(&s.yaml, port, 2, "noise:");
    let mut a = Client::connect(s.legate.proc.port);
    let mut b = Client::connect(s.legate.proc.port);
    for _ in 0..20 {
        a.send(format!("set {} 0 0 1\r\nx\r\n", keys[0]).as_bytes());
        b.send(format!("add {} 0 0 1\r\nx\r\n", keys[1]).as_bytes());
        let ra = String::from_utf8(a.line()).unwrap();
        let rb = String::from_utf8(b.line()).unwrap();
        assert!(
            ra.starts_with("SERVER_ERROR") && ra.contains(&format!("127.0.0.1:{port}")),
            "{ra:?}"
        );
        assert!(
            rb == "NOT_STORED\r\n" || rb.starts_with("SERVER_ERROR"),
            "add got {rb:?}"
        );
    }
    still_in_step(&mut a, &s, false);
}

#[test]
fn redis_an_extra_reply_without_a_request_closes_the_connection() {
    let (port, accepted) = answering(|_| Some(b"+OK\r\n+EXTRA\r\n".to_vec()));
    let s = setup(true, port, "");
    let k = &keys_on(&s.yaml, port, 1, "extra:")[0];
    let mut c = Client::connect(s.legate.proc.port);
    for _ in 0..5 {
        c.send(&cmd(&format!("SET {k} 1")));
        // +OK is this request's own reply; +EXTRA answers nothing and must reach nobody.
        let line = String::from_utf8(c.line()).unwrap();
        assert!(line == "+OK\r\n" || line.starts_with("-ERR"), "{line:?}");
        still_in_step(&mut c, &s, true);
    }
    assert!(
        accepted.load(Ordering::Relaxed) >= 2,
        "the connection was closed and reopened"
    );
}

#[test]
fn redis_a_reply_arriving_while_nothing_waits_closes_only_that_connection() {
    // Answers each GET, then, a moment later and while no request waits, says something more.
    let (port, accepted) = fake(|s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        while request(&mut r).is_some() {
            if w.write_all(b"$2\r\nok\r\n").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
            if w.write_all(b"+SURPRISE\r\n").is_err() {
                return;
            }
        }
    });
    let s = setup(true, port, "");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calm = bystander(&s, true, stop.clone());
    let k = &keys_on(&s.yaml, port, 1, "idle:")[0];
    let server = format!("server=\"127.0.0.1:{port}\"");
    let mut c = Client::connect(s.legate.proc.port);
    for round in 1..=3 {
        c.expect(&cmd(&format!("GET {k}")), b"$2\r\nok\r\n");
        // The unasked reply reaches nobody: the connection is closed and counted...
        eventually("the surplus reply closes the connection", || {
            let m = metrics_text(&s);
            metric(&m, "legate_server_errors_total", &["kind=\"protocol\"", &server]).unwrap_or(0.0) >= round as f64
        });
        still_in_step(&mut c, &s, true);
    }
    // ... and the next request reconnects.
    assert!(
        accepted.load(Ordering::Relaxed) >= 3,
        "one connection per surplus reply"
    );
    stop.store(true, Ordering::Relaxed);
    calm.join().expect("the bystander saw only its own replies");
}

/// Arrays nested this deep (Redis's own "Script return recursive object" test reaches about
/// 8000 levels).
const DEEP: usize = 100_000;

#[test]
fn redis_a_reply_nested_100000_deep_reaches_its_client_whole() {
    // Valid RESP, 400 KB: scanned with an explicit stack, passed on as it came, and no other
    // request on the connection or elsewhere notices.
    let mut deep = b"*1\r\n".repeat(DEEP);
    deep.extend_from_slice(b":1\r\n");
    let deep = Arc::new(deep);
    let reply = deep.clone();
    // Connections that carried requests (the adapter's INFO scrapes open their own).
    let data = Arc::new(AtomicUsize::new(0));
    let counted = data.clone();
    let (port, _) = fake(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut first = true;
        while let Some(req) = request(&mut r) {
            if std::mem::take(&mut first) && !req.starts_with("INFO") {
                counted.fetch_add(1, Ordering::Relaxed);
            }
            let b = if req.starts_with("GET deep") {
                reply.to_vec()
            } else {
                b"$4\r\nflat\r\n".to_vec()
            };
            if w.write_all(&b).is_err() {
                return;
            }
        }
    });
    let s = setup(true, port, "");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calm = bystander(&s, true, stop.clone());
    let (deep_key, flat_key) = (
        &keys_on(&s.yaml, port, 1, "deep:")[0],
        &keys_on(&s.yaml, port, 1, "flat:")[0],
    );
    let mut a = Client::connect(s.legate.proc.port);
    let mut b = Client::connect(s.legate.proc.port);
    for _ in 0..5 {
        // On the same server connection (per worker): a flat reply on either side of the deep one.
        b.send(&cmd(&format!("GET {flat_key}")));
        a.send(&cmd(&format!("GET {deep_key}")));
        b.send(&cmd(&format!("GET {flat_key}")));
        let got = a.exact(deep.len());
        assert!(got == *deep, "the deep reply arrives whole and unchanged");
        assert_eq!(b.exact(20), b"$4\r\nflat\r\n$4\r\nflat\r\n");
    }
    still_in_step(&mut a, &s, true);
    stop.store(true, Ordering::Relaxed);
    calm.join().expect("the bystander saw only its own replies");
    // One connection per worker at most: none was ever closed and reopened.
    let n = data.load(Ordering::Relaxed);
    assert!(
        n <= 2,
        "the connection was never closed: {n} connections carried requests"
    );
}

#[test]
fn redis_an_endless_nesting_fails_only_its_connection_and_is_not_kept() {
    // `*1` forever: a reply that never ends. It is refused at max_reply_bytes (4 MB here); only
    // the requests on that connection fail, and what was buffered for it is released.
    let (port, _) = fake(|s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        if request(&mut r).is_none() {
            return;
        }
        let chunk = b"*1\r\n".repeat(16 * 1024);
        while w.write_all(&chunk).is_ok() {}
    });
    let s = setup(true, port, "  max_reply_bytes: 4194304\n");
    let pid = s.legate.proc.child.id();
    still_in_step(&mut Client::connect(s.legate.proc.port), &s, true);
    let before = settled_rss(pid);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calm = bystander(&s, true, stop.clone());
    let k = &keys_on(&s.yaml, port, 1, "endless:")[0];
    let mut c = Client::connect(s.legate.proc.port);
    for _ in 0..5 {
        let line = expect_error_naming(&mut c, &cmd(&format!("GET {k}")), true, port, "endless nesting");
        assert!(line.contains("limit"), "{line:?}");
    }
    still_in_step(&mut c, &s, true);
    stop.store(true, Ordering::Relaxed);
    calm.join().expect("the bystander saw only its own replies");
    // Freed pages go back to the system within jemalloc's decay time (about a second, see
    // .cargo/config.toml): wait for that, never longer than 3 s.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut after = rss_kib(pid);
    while after >= before + 2 * 1024 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        after = rss_kib(pid);
    }
    eprintln!("endless nesting: legate RSS {before} KiB before, {after} KiB after 5 refused replies");
    assert!(after < before + 8 * 1024, "RSS grew from {before} KiB to {after} KiB");
    let server = format!("server=\"127.0.0.1:{port}\"");
    let m = metrics_text(&s);
    assert!(
        metric(&m, "legate_server_errors_total", &["kind=\"too_large\"", &server]).unwrap_or(0.0) >= 5.0,
        "refusals are counted:\n{m}"
    );
}

fn truncated(redis: bool) {
    // Sends half a reply, then closes.
    let (port, _) = fake(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        if request(&mut r).is_some() {
            let _ = w.write_all(if redis { b"$10\r\nabc" } else { b"VALUE k 0 10\r\nabc" });
        }
    });
    fault(redis, "truncated", port, "", if redis { "GET KEY" } else { "get KEY" });
}

#[test]
fn memcache_a_truncated_reply_fails_only_its_request() {
    truncated(false);
}

#[test]
fn redis_a_truncated_reply_fails_only_its_request() {
    truncated(true);
}

fn drip(redis: bool) {
    // A valid reply, one byte every 5 ms: it arrives whole and only to its own request.
    let (port, _) = fake(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        while let Some(req) = request(&mut r) {
            let key = req.split(' ').nth(1).unwrap_or_default().to_string();
            let reply = if redis {
                "$5\r\nhello\r\n".to_string()
            } else {
                format!("VALUE {key} 0 5\r\nhello\r\nEND\r\n")
            };
            for b in reply.as_bytes() {
                if w.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    let s = setup(redis, port, "");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calm = bystander(&s, redis, stop.clone());
    let k = &keys_on(&s.yaml, port, 1, "drip:")[0];
    let mut c = Client::connect(s.legate.proc.port);
    for _ in 0..2 {
        if redis {
            c.expect(&cmd(&format!("GET {k}")), b"$5\r\nhello\r\n");
        } else {
            c.expect(
                format!("get {k}\r\n").as_bytes(),
                format!("VALUE {k} 0 5\r\nhello\r\nEND\r\n").as_bytes(),
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    calm.join().expect("the bystander saw only its own replies");
}

#[test]
fn memcache_a_reply_dripping_one_byte_at_a_time_arrives_whole() {
    drip(false);
}

#[test]
fn redis_a_reply_dripping_one_byte_at_a_time_arrives_whole() {
    drip(true);
}

/// A server that answers with `header` and then streams bytes as fast as legate takes them.
fn streaming(header: &'static [u8]) -> (u16, Arc<AtomicUsize>) {
    fake(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        if request(&mut r).is_none() || w.write_all(header).is_err() {
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        while w.write_all(&chunk).is_ok() {}
    })
}

fn huge_header(redis: bool) {
    let (port, _) = streaming(if redis {
        b"$999999999999\r\n"
    } else {
        b"VALUE k 0 999999999999\r\n"
    });
    let s = setup(redis, port, "");
    let pid = s.legate.proc.child.id();
    // Warm up, then measure.
    still_in_step(&mut Client::connect(s.legate.proc.port), &s, redis);
    let before = rss_kib(pid);
    let k = &keys_on(&s.yaml, port, 1, "huge:")[0];
    let mut c = Client::connect(s.legate.proc.port);
    for _ in 0..5 {
        let req = if redis {
            cmd(&format!("GET {k}"))
        } else {
            format!("get {k}\r\n").into_bytes()
        };
        let line = expect_error_naming(&mut c, &req, redis, port, "huge header");
        assert!(line.contains("limit"), "{line:?}");
    }
    still_in_step(&mut c, &s, redis);
    // Freed pages go back to the system within jemalloc's decay time (about a second, see
    // .cargo/config.toml): wait for that, never longer than 3 s.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut after = rss_kib(pid);
    while after >= before + 8 * 1024 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        after = rss_kib(pid);
    }
    eprintln!(
        "{} huge header: legate RSS {before} KiB before, {after} KiB after 5 replies declaring 999999999999 bytes",
        if redis { "redis" } else { "memcache" }
    );
    assert!(after < before + 8 * 1024, "RSS grew from {before} KiB to {after} KiB");
    let server = format!("server=\"127.0.0.1:{port}\"");
    let m = metrics_text(&s);
    assert!(
        metric(&m, "legate_server_errors_total", &["kind=\"too_large\"", &server]).unwrap_or(0.0) >= 1.0,
        "refusals are counted:\n{m}"
    );
}

#[test]
fn memcache_a_huge_header_is_refused_before_its_payload() {
    huge_header(false);
}

#[test]
fn redis_a_huge_header_is_refused_before_its_payload() {
    huge_header(true);
}

fn slow_stream_after_timeout(redis: bool) {
    // Under the limit, but streaming on after the request timed out: the connection is closed
    // at the timeout, and what was buffered is released.
    let (port, _) = fake(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let header: &[u8] = if redis {
            b"$400000000\r\n"
        } else {
            b"VALUE k 0 400000000\r\n"
        };
        if request(&mut r).is_none() || w.write_all(header).is_err() {
            return;
        }
        let chunk = vec![b'x'; 256 * 1024];
        // About 25 MB a second.
        while w.write_all(&chunk).is_ok() {
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let s = setup(redis, port, "  timeout: 1000\n");
    let pid = s.legate.proc.child.id();
    still_in_step(&mut Client::connect(s.legate.proc.port), &s, redis);
    let before = rss_kib(pid);
    let k = &keys_on(&s.yaml, port, 1, "slow:")[0];
    let mut c = Client::connect(s.legate.proc.port);
    let req = if redis {
        cmd(&format!("GET {k}"))
    } else {
        format!("get {k}\r\n").into_bytes()
    };
    let started = Instant::now();
    let line = expect_error_naming(&mut c, &req, redis, port, "timed out");
    assert!(line.contains("timed out"), "{line:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let mut after = 0;
    eventually("memory held for the timed-out reply is released", || {
        after = rss_kib(pid);
        after < before + 8 * 1024
    });
    eprintln!(
        "{} slow 400 MB reply after a 1 s timeout: RSS {before} KiB before, {after} KiB after",
        if redis { "redis" } else { "memcache" }
    );
}

#[test]
fn memcache_a_reply_streaming_past_its_timeout_is_not_kept() {
    slow_stream_after_timeout(false);
}

#[test]
fn redis_a_reply_streaming_past_its_timeout_is_not_kept() {
    slow_stream_after_timeout(true);
}

fn never_answers(redis: bool) {
    let (port, _) = fake(|s| {
        let mut r = BufReader::new(s);
        while request(&mut r).is_some() {}
    });
    fault(
        redis,
        "never answers",
        port,
        "  timeout: 300\n",
        if redis { "GET KEY" } else { "get KEY" },
    );
}

#[test]
fn memcache_a_server_that_never_answers_times_out_its_requests_only() {
    never_answers(false);
}

#[test]
fn redis_a_server_that_never_answers_times_out_its_requests_only() {
    never_answers(true);
}

fn closes_on_accept(redis: bool) {
    let (port, accepted) = fake(drop);
    let s = fault(
        redis,
        "closes on accept",
        port,
        "",
        if redis { "GET KEY" } else { "get KEY" },
    );
    // A client hammering that shard for two seconds: legate backs off instead of reconnecting
    // for every request.
    let k = &keys_on(&s.yaml, port, 1, "storm:")[0];
    let req = if redis {
        cmd(&format!("GET {k}"))
    } else {
        format!("get {k}\r\n").into_bytes()
    };
    let mut c = Client::connect(s.legate.proc.port);
    let start_count = accepted.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(2) {
        c.send(&req);
        let line = String::from_utf8(c.line()).unwrap();
        assert!(line.contains(&format!("127.0.0.1:{port}")), "{line:?}");
        sent += 1;
    }
    let reconnects = accepted.load(Ordering::Relaxed) - start_count;
    eprintln!("closes on accept: {sent} requests in 2 s, {reconnects} connections");
    assert!(sent > 100, "errors come fast: {sent}");
    assert!(reconnects <= 20, "{reconnects} connections in 2 s: no backoff");
}

#[test]
fn memcache_a_server_that_closes_on_accept_is_retried_with_backoff() {
    closes_on_accept(false);
}

#[test]
fn redis_a_server_that_closes_on_accept_is_retried_with_backoff() {
    closes_on_accept(true);
}

/// legate's RSS once it stops growing (sampled every 200 ms, at most 10 s).
fn settled_rss(pid: u32) -> u64 {
    let mut last = rss_kib(pid);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        let now = rss_kib(pid);
        if now.abs_diff(last) < 256 {
            return now;
        }
        last = now;
    }
    last
}

fn non_reading_client(redis: bool, value_len: usize) {
    let real = if redis { redis_server() } else { memcached() };
    let port = free_port();
    let legate = legate(&pool_yaml("slowreader", port, redis, &[real.port], ""), port);
    let pid = legate.proc.child.id();
    let value = vec![b'v'; value_len];
    let mut c = Client::connect(port);
    let mut set = if redis {
        format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${value_len}\r\n").into_bytes()
    } else {
        format!("set big 0 0 {value_len}\r\n").into_bytes()
    };
    set.extend_from_slice(&value);
    set.extend_from_slice(b"\r\n");
    c.expect(&set, if redis { b"+OK\r\n" } else { b"STORED\r\n" });
    drop(c);
    let before = settled_rss(pid);
    // Ask for ~1 GB of replies and never read one.
    let n = (1usize << 30) / value_len;
    let get = if redis { cmd("GET big") } else { b"get big\r\n".to_vec() };
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let all: Vec<u8> = get.iter().copied().cycle().take(get.len() * n).collect();
    // legate stops reading once it holds enough: the write blocks, and times out.
    let _ = s.write_all(&all);
    let after = settled_rss(pid);
    eprintln!(
        "{} client not reading {value_len}-byte values: legate RSS {before} KiB before, {after} KiB after",
        if redis { "redis" } else { "memcache" }
    );
    assert!(
        after < before + 16 * 1024,
        "a client not reading its replies costs {} KiB",
        after - before
    );
    // And the client is still served once it reads.
    drop(s);
}

#[test]
fn memcache_a_client_that_never_reads_costs_at_most_16_mb() {
    non_reading_client(false, 64 * 1024);
    non_reading_client(false, 1024 * 1024);
}

#[test]
fn redis_a_client_that_never_reads_costs_at_most_16_mb() {
    non_reading_client(true, 64 * 1024);
    non_reading_client(true, 1024 * 1024);
}

#[test]
fn twemproxy_signals_are_never_fatal() {
    let mc = memcached();
    let port = free_port();
    let dir = scratch_dir();
    let config = dir.join("legate.yml");
    std::fs::write(&config, pool_yaml("sig", port, false, &[mc.port], "")).unwrap();
    let log = dir.join("legate.log");
    let l = legate_logged(&config, port, &["-o", log.to_str().unwrap()]);
    let pid = l.proc.child.id().to_string();
    let kill = |sig: &str| run(std::process::Command::new("sh").args(["-c", &format!("kill -{sig} {pid}")]));
    let serves = || {
        let mut c = Client::connect(port);
        c.expect(b"set k 0 0 1\r\nx\r\n", b"STORED\r\n");
    };
    let log_has = |what: &str| std::fs::read_to_string(&log).unwrap_or_default().contains(what);
    serves();
    kill("TTIN");
    eventually("SIGTTIN raises the level", || log_has("log level set to debug"));
    serves();
    kill("TTOU");
    kill("TTOU");
    eventually("SIGTTOU lowers it", || log_has("log level set to warn"));
    serves();
    kill("USR2");
    serves();
    // Log rotation: the file is moved away; SIGUSR1 makes a new one.
    std::fs::rename(&log, dir.join("legate.log.1")).unwrap();
    kill("TTIN");
    kill("USR1");
    eventually("SIGUSR1 reopens the log file", || log.exists());
    kill("TTIN");
    eventually("lines go to the new file", || log_has("log level set to debug"));
    serves();
    let mut child = l;
    assert!(
        child.proc.child.try_wait().unwrap().is_none(),
        "legate is still running"
    );
}

#[test]
fn accept_failures_at_the_open_file_limit_are_logged_once_per_window() {
    // legate with 64 descriptors and 200 clients connecting: accept fails with EMFILE every
    // 10 ms on each worker while those clients wait in the backlog. That is logged once (with
    // the count suppressed after the window), not ~200 times a second.
    let port = free_port();
    let config = config_file(&pool_yaml("fds", port, true, &[free_port()], ""));
    let mut child = std::process::Command::new("sh")
        .args(["-c", "ulimit -n 64 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_legate"))
        .arg("-c")
        .arg(&config)
        .args(["--workers", "2", "--admin", "off"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start legate");
    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    wait_for_port(port, "legate", &mut child);
    let mut legate = Proc { child, port };
    let clients: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect (into the backlog)"))
        .collect();
    let failed = |l: &Vec<String>| l.iter().filter(|l| l.contains("accept failed")).count();
    eventually("accept fails at the descriptor limit", || {
        failed(&lines.lock().unwrap()) >= 1
    });
    // Two seconds of failing accepts: the rate is what is measured.
    std::thread::sleep(Duration::from_secs(2));
    let logged = failed(&lines.lock().unwrap());
    eprintln!("open-file limit: {logged} 'accept failed' lines in 2 s");
    assert!(
        logged <= 2,
        "{logged} accept-failure lines in 2 s:\n{}",
        lines.lock().unwrap().join("\n")
    );
    assert!(
        lines.lock().unwrap().iter().any(|l| l.contains("Too many open files")),
        "the line says why"
    );
    // Once the clients go, descriptors free up and legate serves again.
    drop(clients);
    eventually("legate serves again", || {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        // ECHO is legate's own answer (the pool's one server is not running; PING would ask it).
        let mut buf = [0u8; 8];
        s.write_all(b"*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n").is_ok()
            && s.read_exact(&mut buf).is_ok()
            && &buf == b"$2\r\nhi\r\n"
    });
    assert!(legate.child.try_wait().unwrap().is_none(), "legate is still running");
}

#[test]
fn memcache_quit_with_arguments_answers_error_like_memcached() {
    let mc = memcached();
    let port = free_port();
    let _l = legate(&pool_yaml("quit", port, false, &[mc.port], ""), port);
    let mut c = Client::connect(port);
    c.expect(b"quit foo bar\r\n", b"ERROR\r\n");
    c.expect(b"quit\r\n", b"");
    assert!(c.closed(), "plain quit closes");
}
