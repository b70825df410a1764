//! Limits and bad input: memory stays bounded, errors are clear, other clients never notice.

mod common;

use common::{cmd, eventually, free_port, legate, memcached, pool_yaml, redis_server, rss_kib, Client};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn expect_closed(c: &mut Client) {
    assert!(c.closed(), "the connection should have been closed");
}

#[test]
fn client_connections_is_enforced() {
    let r = redis_server();
    let port = free_port();
    let _l = legate(
        &pool_yaml("rd", port, true, &[r.port], "  client_connections: 2\n"),
        port,
    );
    // The readiness probe's connection may still count for a moment: connect until served.
    let served = || {
        let mut found = None;
        eventually("a client is served", || {
            let mut c = Client::connect(port);
            c.send(&cmd("PING"));
            let ok = c.line() == b"+PONG\r\n";
            if ok {
                found = Some(c);
            }
            ok
        });
        found.unwrap()
    };
    let a = served();
    let mut b = served();
    let mut c = Client::connect(port);
    assert_eq!(c.line(), b"-ERR max number of clients reached\r\n");
    expect_closed(&mut c);
    drop(a);
    eventually("a slot frees when a client leaves", || {
        let mut d = Client::connect(port);
        d.send(&cmd("PING"));
        d.line() == b"+PONG\r\n"
    });
    b.expect(&cmd("PING"), b"+PONG\r\n");
}

#[test]
fn max_request_bytes_refuses_at_the_header() {
    let m = memcached();
    let r = redis_server();
    let (mp, rp) = (free_port(), free_port());
    let yaml = pool_yaml("mc", mp, false, &[m.port], "  max_request_bytes: 4096\n")
        + &pool_yaml("rd", rp, true, &[r.port], "  max_request_bytes: 4096\n");
    let _l = legate(&yaml, mp);
    let mut ok = Client::connect(mp);
    ok.expect(b"set small 0 0 10\r\n0123456789\r\n", b"STORED\r\n");
    // Only the header is sent: the refusal cannot depend on the payload arriving.
    let mut c = Client::connect(mp);
    c.send(b"set big 0 0 100000\r\n");
    assert_eq!(c.line(), b"SERVER_ERROR object too large for cache\r\n");
    expect_closed(&mut c);
    let mut c = Client::connect(rp);
    c.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\n");
    assert_eq!(
        c.line(),
        b"-ERR Protocol error: request larger than max_request_bytes\r\n"
    );
    expect_closed(&mut c);
    ok.expect(b"get small\r\n", b"VALUE small 0 10\r\n0123456789\r\nEND\r\n");
}

#[test]
fn idle_clients_are_closed_busy_ones_are_not() {
    let r = redis_server();
    let port = free_port();
    let _l = legate(
        &pool_yaml("rd", port, true, &[r.port], "  client_idle_timeout: 300\n"),
        port,
    );
    let mut idle = Client::connect(port);
    idle.expect(&cmd("PING"), b"+PONG\r\n");
    let mut busy = Client::connect(port);
    for _ in 0..10 {
        busy.expect(&cmd("PING"), b"+PONG\r\n");
        std::thread::sleep(Duration::from_millis(100));
    }
    expect_closed(&mut idle);
    busy.expect(&cmd("PING"), b"+PONG\r\n");
}

#[test]
fn a_client_that_never_reads_does_not_grow_memory_without_end() {
    let r = redis_server();
    let port = free_port();
    let l = legate(&pool_yaml("rd", port, true, &[r.port], ""), port);
    let pid = l.proc.child.id();
    let mut c = Client::connect(port);
    let value = "x".repeat(16 * 1024);
    c.expect(&cmd(&format!("SET big {value}")), b"+OK\r\n");
    let before = rss_kib(pid);
    // 6000 GETs would be ~100 MB of replies; the client reads none of them.
    let burst: Vec<u8> = (0..6000).flat_map(|_| cmd("GET big")).collect();
    let mut w = TcpStream::connect(("127.0.0.1", port)).unwrap();
    w.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = w.write_all(&burst);
    std::thread::sleep(Duration::from_millis(500));
    let during = rss_kib(pid);
    assert!(
        during < before + 48 * 1024,
        "RSS grew from {before} KiB to {during} KiB for a client that does not read"
    );
    // Other clients are served meanwhile.
    c.expect(&cmd("PING"), b"+PONG\r\n");
}

/// Send `bytes` on a fresh connection; return everything read until the proxy closes or 2 s pass.
fn poke(port: u16, bytes: &[u8]) -> Vec<u8> {
    poke_for(port, bytes, Duration::from_secs(2))
}

fn poke_for(port: u16, bytes: &[u8], wait: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let _ = s.write_all(bytes);
    // End of input: the proxy answers what it can, then closes.
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn bad_input_battery_gets_clear_errors_and_memory_comes_back() {
    let m = memcached();
    let r = redis_server();
    let (mp, rp) = (free_port(), free_port());
    let yaml = pool_yaml("mc", mp, false, &[m.port], "") + &pool_yaml("rd", rp, true, &[r.port], "");
    let l = legate(&yaml, mp);
    let pid = l.proc.child.id();
    let mut watcher_mc = Client::connect(mp);
    let mut watcher_rd = Client::connect(rp);
    watcher_mc.expect(b"set w 0 0 1\r\n1\r\n", b"STORED\r\n");
    watcher_rd.expect(&cmd("SET w 1"), b"+OK\r\n");
    // Warm up to a steady state (a first burst of clients grows the runtime's I/O tables and
    // the allocator's caches once), then take the baseline.
    for _ in 0..50 {
        Client::connect(rp).expect(&cmd("PING"), b"+PONG\r\n");
    }
    drop(
        (0..2000)
            .map(|_| TcpStream::connect(("127.0.0.1", rp)).unwrap())
            .collect::<Vec<_>>(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let baseline = rss_kib(pid);

    let deep: Vec<u8> = b"*1\r\n".repeat(100_000);
    let long_line = vec![b'a'; 70_000];
    let redis_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "negative multibulk",
            b"*-5\r\n*1\r\n$4\r\nPING\r\n".to_vec(),
            "+PONG\r\n",
        ),
        (
            "huge bulk",
            b"*1\r\n$999999999999\r\n".to_vec(),
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            "huge multibulk",
            b"*2000000000\r\n".to_vec(),
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        ("deep nesting", deep, "-ERR Protocol error: expected '$', got '*'\r\n"),
        (
            "64 KB line without CRLF",
            long_line.clone(),
            "-ERR Protocol error: too big inline request\r\n",
        ),
        (
            "bad bulk terminator",
            b"*1\r\n$4\r\nPINGxx".to_vec(),
            "-ERR Protocol error: bulk string not terminated by CRLF\r\n",
        ),
        ("truncated frame", b"*3\r\n$3\r\nSET\r\n$1\r\nk".to_vec(), ""),
    ];
    for (what, bytes, want) in &redis_cases {
        let got = poke(rp, bytes);
        assert_eq!(String::from_utf8_lossy(&got), *want, "redis: {what}");
    }
    let mc_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "negative length",
            b"set k 0 0 -1\r\n".to_vec(),
            "CLIENT_ERROR bad command line format\r\n",
        ),
        ("get without key", b"get \r\n".to_vec(), "ERROR\r\n"),
        ("64 KB line", long_line, "CLIENT_ERROR line too long\r\n"),
        (
            "bad chunk then valid",
            b"set k 0 0 1\r\nxyz\r\nget w\r\n".to_vec(),
            "CLIENT_ERROR bad data chunk\r\nERROR\r\nVALUE w 0 1\r\n1\r\nEND\r\n",
        ),
        ("truncated value", b"set k 0 0 100\r\nabc".to_vec(), ""),
    ];
    for (what, bytes, want) in &mc_cases {
        let got = poke(mp, bytes);
        assert_eq!(String::from_utf8_lossy(&got), *want, "memcache: {what}");
    }
    // Random bytes: whatever comes back is made of protocol error lines, and the proxy lives.
    for seed in 1..12u64 {
        let junk = random_bytes(seed, 4096);
        for port in [mp, rp] {
            let got = String::from_utf8_lossy(&poke_for(port, &junk, Duration::from_millis(300))).to_string();
            for line in got.split_terminator("\r\n") {
                assert!(
                    line.starts_with("-ERR")
                        || line.starts_with("ERROR")
                        || line.starts_with("CLIENT_ERROR")
                        || line.starts_with("SERVER_ERROR"),
                    "seed {seed}: unexpected reply line {line:?}"
                );
            }
        }
    }
    // One byte at a time.
    let mut s = TcpStream::connect(("127.0.0.1", rp)).unwrap();
    for b in cmd("SET slow value").iter().chain(cmd("GET slow").iter()) {
        s.write_all(&[*b]).unwrap();
    }
    let mut c = Client {
        r: std::io::BufReader::new(s),
    };
    assert_eq!(c.line(), b"+OK\r\n");
    assert_eq!(c.exact(11), b"$5\r\nvalue\r\n");
    let mut s = TcpStream::connect(("127.0.0.1", mp)).unwrap();
    for b in b"set slow 0 0 2\r\nhi\r\nget slow\r\n" {
        s.write_all(&[*b]).unwrap();
    }
    let mut c = Client {
        r: std::io::BufReader::new(s),
    };
    assert_eq!(c.until(b"END\r\n"), b"STORED\r\nVALUE slow 0 2\r\nhi\r\nEND\r\n");
    // 2000 connections opened at once, then closed.
    let many: Vec<TcpStream> = (0..2000)
        .map(|_| TcpStream::connect(("127.0.0.1", rp)).unwrap())
        .collect();
    drop(many);
    // The clients that behaved never noticed.
    watcher_mc.expect(b"get w\r\n", b"VALUE w 0 1\r\n1\r\nEND\r\n");
    watcher_rd.expect(&cmd("GET w"), b"$1\r\n1\r\n");
    let mut now = 0;
    for _ in 0..100 {
        now = rss_kib(pid);
        if now <= baseline + baseline / 10 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        now <= baseline + baseline / 10,
        "RSS {now} KiB, baseline {baseline} KiB"
    );
}

#[test]
fn malformed_backend_replies_close_that_connection_only() {
    // A "server" that answers everything with garbage.
    let junk = TcpListener::bind("127.0.0.1:0").unwrap();
    let junk_port = junk.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in junk.incoming().take(8) {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(b"?garbage\r\nVALUE x\r\n").is_err() {
                        break;
                    }
                }
            });
        }
    });
    let good = redis_server();
    let (bad_port, good_port) = (free_port(), free_port());
    let yaml =
        pool_yaml("bad", bad_port, true, &[junk_port], "") + &pool_yaml("good", good_port, true, &[good.port], "");
    let _l = legate(&yaml, bad_port);
    let mut c = Client::connect(bad_port);
    c.send(&cmd("GET k"));
    let l = String::from_utf8(c.line()).unwrap();
    assert!(
        l.starts_with(&format!("-ERR bad reply from 127.0.0.1:{junk_port} ")) && l.contains("connection closed"),
        "{l}"
    );
    // The client's connection is still usable (ECHO: legate's own answer; PING would ask the
    // junk server), and other pools never noticed.
    c.expect(&cmd("ECHO hi"), b"$2\r\nhi\r\n");
    let mut g = Client::connect(good_port);
    g.expect(&cmd("SET k v"), b"+OK\r\n");
    let mcj = memcached();
    let _ = mcj;
}
