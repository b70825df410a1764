//! memcache text protocol through legate to three real memcached servers.

mod common;

use common::{free_port, legate, memcached, pool_yaml, require, Client, Legate, Proc};
use std::process::Command;

struct Setup {
    backends: Vec<Proc>,
    legate: Legate,
}

fn setup() -> Setup {
    let backends: Vec<Proc> = (0..3).map(|_| memcached()).collect();
    let port = free_port();
    let ports: Vec<u16> = backends.iter().map(|b| b.port).collect();
    let legate = legate(&pool_yaml("mc", port, false, &ports, ""), port);
    Setup { backends, legate }
}

impl Setup {
    fn client(&self) -> Client {
        Client::connect(self.legate.proc.port)
    }
    /// How many backends hold `key` (read directly, not through legate).
    fn holders(&self, key: &[u8]) -> usize {
        self.backends
            .iter()
            .filter(|b| {
                let mut c = Client::connect(b.port);
                c.send(&[b"get ", key, b"\r\n"].concat());
                c.until(b"END\r\n").starts_with(b"VALUE ")
            })
            .count()
    }
}

#[test]
fn storage_commands_with_and_without_noreply() {
    let s = setup();
    let mut c = s.client();
    c.expect(b"set k1 5 0 3\r\nabc\r\n", b"STORED\r\n");
    c.expect(b"get k1\r\n", b"VALUE k1 5 3\r\nabc\r\nEND\r\n");
    c.expect(b"add k1 0 0 1\r\nx\r\n", b"NOT_STORED\r\n");
    c.expect(b"add k2 0 0 1\r\nx\r\n", b"STORED\r\n");
    c.expect(b"replace k3 0 0 1\r\nx\r\n", b"NOT_STORED\r\n");
    c.expect(b"replace k2 0 0 1\r\ny\r\n", b"STORED\r\n");
    c.expect(b"append k1 0 0 2\r\nde\r\n", b"STORED\r\n");
    c.expect(b"prepend k1 0 0 2\r\n__\r\n", b"STORED\r\n");
    c.expect(b"get k1\r\n", b"VALUE k1 5 7\r\n__abcde\r\nEND\r\n");
    c.send(b"gets k1\r\n");
    let line = String::from_utf8(c.line()).unwrap();
    let cas: u64 = line.split_whitespace().nth(4).unwrap().parse().unwrap();
    assert_eq!(c.until(b"END\r\n"), b"__abcde\r\nEND\r\n");
    c.expect(
        format!("cas k1 0 0 1 {}\r\nz\r\n", cas + 1000).as_bytes(),
        b"EXISTS\r\n",
    );
    c.expect(format!("cas k1 0 0 1 {cas}\r\nz\r\n").as_bytes(), b"STORED\r\n");
    c.expect(b"cas nope 0 0 1 1\r\nz\r\n", b"NOT_FOUND\r\n");
    c.expect(b"set n 0 0 2\r\n10\r\n", b"STORED\r\n");
    c.expect(b"incr n 5\r\n", b"15\r\n");
    c.expect(b"decr n 20\r\n", b"0\r\n");
    c.expect(b"incr missing 1\r\n", b"NOT_FOUND\r\n");
    c.expect(b"touch n 100\r\n", b"TOUCHED\r\n");
    // memcached keeps the length of a decremented number, padding it with spaces.
    c.expect(b"gat 100 n\r\n", b"VALUE n 0 2\r\n0 \r\nEND\r\n");
    c.send(b"gats 100 n\r\n");
    assert!(c.line().starts_with(b"VALUE n 0 2 "));
    assert_eq!(c.until(b"END\r\n"), b"0 \r\nEND\r\n");
    c.expect(b"delete n\r\n", b"DELETED\r\n");
    c.expect(b"delete n\r\n", b"NOT_FOUND\r\n");
    // noreply: nothing comes back, and the next reply is still in order.
    c.send(b"set q 0 0 1 noreply\r\n1\r\nadd q 0 0 1 noreply\r\n2\r\nappend q 0 0 1 noreply\r\n3\r\n");
    c.send(b"incr q 1 noreply\r\ntouch q 10 noreply\r\n");
    c.expect(b"get q\r\n", b"VALUE q 0 2\r\n14\r\nEND\r\n");
    c.send(b"delete q noreply\r\n");
    c.expect(b"get q\r\n", b"END\r\n");
}

#[test]
fn multi_get_fans_out_and_answers_in_request_order() {
    let s = setup();
    let mut c = s.client();
    let mut burst = Vec::new();
    for i in 0..60 {
        burst.extend(format!("set key:{i} {i} 0 {}\r\nvalue-{i}\r\n", format!("value-{i}").len()).as_bytes());
    }
    c.send(&burst);
    for _ in 0..60 {
        assert_eq!(c.line(), b"STORED\r\n");
    }
    // Every backend got some keys, so the get below really spans servers.
    for b in &s.backends {
        let mut d = Client::connect(b.port);
        d.send(b"stats\r\n");
        let stats = String::from_utf8(d.until(b"END\r\n")).unwrap();
        let items: u64 = stats
            .lines()
            .find_map(|l| l.strip_prefix("STAT curr_items "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(items > 5, "backend {} holds only {items} of 60 keys", b.port);
    }
    // Request order, misses skipped, a repeated key answered twice.
    let order = [59, 3, 1000, 17, 3, 42, 2000, 0, 8, 33, 51, 27];
    let mut req = String::from("get");
    let mut want = String::new();
    for i in order {
        req += &format!(" key:{i}");
        if i < 60 {
            want += &format!("VALUE key:{i} {i} {}\r\nvalue-{i}\r\n", format!("value-{i}").len());
        }
    }
    want += "END\r\n";
    req += "\r\n";
    c.expect(req.as_bytes(), want.as_bytes());
    // All misses.
    c.expect(b"get no:1 no:2 no:3 no:4 no:5\r\n", b"END\r\n");
}

#[test]
fn meta_commands_route_by_key_and_mn_answers_in_order() {
    let s = setup();
    let mut c = s.client();
    c.expect(b"ms mk 2 T0\r\nhi\r\n", b"HD\r\n");
    c.expect(b"mg mk v\r\n", b"VA 2\r\nhi\r\n");
    c.expect(b"mg missing v\r\n", b"EN\r\n");
    c.expect(b"ms counter 1\r\n5\r\n", b"HD\r\n");
    c.expect(b"ma counter v\r\n", b"VA 1\r\n6\r\n");
    c.send(b"me mk\r\n");
    assert!(c.line().starts_with(b"ME mk "));
    // Quiet mode: misses say nothing, hits answer, mn marks the end.
    c.expect(
        b"mg missing v q\r\nmg mk v q\r\nmg missing2 v q\r\nmn\r\n",
        b"VA 2\r\nhi\r\nMN\r\n",
    );
    c.expect(b"md mk q\r\nmn\r\n", b"MN\r\n");
    c.expect(b"md mk\r\n", b"NF\r\n");
    c.expect(b"mn\r\n", b"MN\r\n");
}

#[test]
fn proxy_answers_version_verbosity_and_flush_all_reaches_every_server() {
    let s = setup();
    let mut c = s.client();
    c.send(b"version\r\n");
    assert!(c.line().starts_with(b"VERSION "));
    c.expect(b"verbosity 1\r\n", b"OK\r\n");
    c.send(b"verbosity 1 noreply\r\n");
    for i in 0..30 {
        c.expect(format!("set f{i} 0 0 1\r\nx\r\n").as_bytes(), b"STORED\r\n");
    }
    c.expect(b"flush_all\r\n", b"OK\r\n");
    for i in 0..30 {
        assert_eq!(s.holders(format!("f{i}").as_bytes()), 0, "f{i} survived flush_all");
    }
    c.expect(b"set f1 0 0 1\r\nx\r\n", b"STORED\r\n");
    c.send(b"flush_all noreply\r\n");
    c.expect(b"get f1\r\n", b"END\r\n");
    c.send(b"quit\r\n");
    assert!(c.closed());
}

#[test]
fn bad_requests_get_errors_and_the_connection_stays_usable() {
    let s = setup();
    let mut c = s.client();
    c.expect(b"bogus command\r\n", b"ERROR\r\n");
    c.expect(b"\r\n", b"ERROR\r\n");
    let long = "k".repeat(251);
    c.expect(
        format!("get {long}\r\n").as_bytes(),
        b"CLIENT_ERROR key too long (max 250 bytes)\r\n",
    );
    c.expect(
        format!("set {long} 0 0 1\r\nx\r\n").as_bytes(),
        b"CLIENT_ERROR key too long (max 250 bytes)\r\n",
    );
    c.expect(b"set k 0 0 notanumber\r\n", b"CLIENT_ERROR bad command line format\r\n");
    // As memcached: the data block is dropped, and the CRLF after it reads as an empty command.
    c.expect(b"set k 0 0 2\r\nabcd\r\n", b"CLIENT_ERROR bad data chunk\r\nERROR\r\n");
    c.expect(b"incr k\r\n", b"ERROR\r\n");
    c.expect(b"incr k abc\r\n", b"CLIENT_ERROR invalid numeric delta argument\r\n");
    c.expect(b"touch k\r\n", b"ERROR\r\n");
    // A 250-byte key is fine, and the stream is still in step.
    let ok = "k".repeat(250);
    c.expect(format!("set {ok} 0 0 1\r\nx\r\n").as_bytes(), b"STORED\r\n");
    c.expect(
        format!("get {ok}\r\n").as_bytes(),
        format!("VALUE {ok} 0 1\r\nx\r\nEND\r\n").as_bytes(),
    );
    // Another client never noticed.
    let mut other = s.client();
    other.expect(b"get nothing\r\n", b"END\r\n");
}

#[test]
fn a_thousand_pipelined_requests_get_a_thousand_replies_in_order() {
    let s = setup();
    let mut c = s.client();
    let mut burst = Vec::new();
    for i in 0..1000 {
        burst.extend(format!("set p{i} 0 0 {}\r\n{i}\r\n", i.to_string().len()).as_bytes());
        burst.extend(format!("get p{i}\r\n").as_bytes());
    }
    c.send(&burst);
    for i in 0..1000 {
        assert_eq!(c.line(), b"STORED\r\n");
        let want = format!("VALUE p{i} 0 {}\r\n{i}\r\nEND\r\n", i.to_string().len());
        assert_eq!(String::from_utf8(c.until(b"END\r\n")).unwrap(), want);
    }
}

#[test]
fn one_and_sixteen_megabyte_values_round_trip() {
    let s = setup();
    let mut c = s.client();
    for size in [1 << 20, 16 << 20] {
        let value: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        c.send(format!("set big{size} 0 0 {size}\r\n").as_bytes());
        c.send(&value);
        c.expect(b"\r\n", b"STORED\r\n");
        c.send(format!("get big{size} small\r\n").as_bytes());
        assert_eq!(c.line(), format!("VALUE big{size} 0 {size}\r\n").as_bytes());
        assert!(c.exact(size) == value, "{size}-byte value came back changed");
        assert_eq!(c.exact(7), b"\r\nEND\r\n");
    }
}

#[test]
fn keys_with_high_bytes_are_stored_and_found() {
    let s = setup();
    let mut c = s.client();
    let keys: Vec<Vec<u8>> = (0..40u8).map(|i| vec![0x80 + i, b'k', 0xff - i, 0xc3, 0xa9]).collect();
    for k in &keys {
        c.expect(&[b"set ", &k[..], b" 0 0 2\r\nhi\r\n"].concat(), b"STORED\r\n");
    }
    for k in &keys {
        assert_eq!(s.holders(k), 1);
    }
    let mut req = b"get".to_vec();
    let mut want = Vec::new();
    for k in &keys {
        req.extend([b" ", &k[..]].concat());
        want.extend([b"VALUE ", &k[..], b" 0 2\r\nhi\r\n"].concat());
    }
    req.extend(b"\r\n");
    want.extend(b"END\r\n");
    c.expect(&req, &want);
}

#[test]
fn many_concurrent_clients_each_see_only_their_values() {
    let s = setup();
    let port = s.legate.proc.port;
    let threads: Vec<_> = (0..16)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                for round in 0..100 {
                    let v = format!("t{t}r{round}");
                    c.expect(
                        format!("set c{t}:{} 0 0 {}\r\n{v}\r\n", round % 10, v.len()).as_bytes(),
                        b"STORED\r\n",
                    );
                    c.expect(
                        format!("get c{t}:{} c{t}:none\r\n", round % 10).as_bytes(),
                        format!("VALUE c{t}:{} 0 {}\r\n{v}\r\nEND\r\n", round % 10, v.len()).as_bytes(),
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn memccapable_ascii_passes_every_test_through_legate() {
    let s = setup();
    let bin = require("memccapable", "libmemcached-tools");
    let out = Command::new(bin)
        .args([
            "-a",
            "-h",
            "127.0.0.1",
            "-p",
            &s.legate.proc.port.to_string(),
            "-t",
            "10",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "memccapable failed:\n{text}");
    assert!(text.contains("All tests passed"), "memccapable:\n{text}");
    assert!(!text.contains("[FAIL]"), "memccapable:\n{text}");
    assert!(
        text.matches("[pass]").count() >= 27,
        "memccapable ran too few tests:\n{text}"
    );
}
