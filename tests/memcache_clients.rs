//! memcache client libraries that applications use today, through legate over three memcached
//! shards, compared with the same client against one memcached: pymemcache, pylibmc (text and
//! binary), python-binary-memcached, memjs (binary) and the Node `memcached` package. Their
//! scripts are in tests/clients/memcache/; `.ci/run` installs the libraries. Also: memccapable's
//! binary suite, version and stats as the shards report them, binary errors, SASL, and the order
//! of `noreply` writes and later reads.

mod common;

use common::{free_port, legate, memcached, pool_yaml, require, wait_for_port, Client, Legate, Proc};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

struct Setup {
    shards: Vec<Proc>,
    legate: Legate,
}

fn setup(extra: &str) -> Setup {
    let shards: Vec<Proc> = (0..3).map(|_| memcached()).collect();
    let port = free_port();
    let ports: Vec<u16> = shards.iter().map(|b| b.port).collect();
    let legate = legate(&pool_yaml("mc", port, false, &ports, extra), port);
    Setup { shards, legate }
}

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/memcache")
}

/// Fail clearly when the Python and Node client libraries are not installed.
fn require_libraries() {
    let python = require("python3", "python3");
    let ok = Command::new(&python)
        .args(["-c", "import pymemcache, pylibmc, bmemcached"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the Python memcache clients are missing: pip install pymemcache pylibmc python-binary-memcached \
         (pylibmc needs apt-get install libmemcached-dev; .ci/run does both)"
    );
    require("node", "nodejs");
    for module in ["memjs", "memcached"] {
        assert!(
            clients_dir().join("node_modules").join(module).is_dir(),
            "the Node package `{module}` is missing: npm ci --prefix tests/clients/memcache (.ci/run does this)"
        );
    }
}

/// Run one client's cases against `port`; its results as JSON.
fn run_client(client: &str, port: u16, prefix: &str) -> serde_json::Value {
    let dir = clients_dir();
    let mut cmd = if matches!(client, "memjs" | "memcached") {
        let mut c = Command::new("node");
        c.arg(dir.join("clients.js"));
        c
    } else {
        let mut c = Command::new("python3");
        c.arg(dir.join("clients.py"));
        c
    };
    let out = cmd
        .args([client, &format!("127.0.0.1:{port}"), prefix])
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the {client} script: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{client} against port {port} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{client}: not JSON ({e}): {stdout}"))
}

fn memcached_version() -> String {
    let out = common::run(Command::new(require("memcached", "memcached")).arg("-V"));
    out.split_whitespace().nth(1).unwrap_or_default().to_string()
}

#[test]
fn client_libraries_see_what_one_memcached_shows_them() {
    require_libraries();
    let s = setup("");
    let direct = memcached();
    let version = memcached_version();
    let clients = [
        "pymemcache",
        "pylibmc",
        "pylibmc-binary",
        "bmemcached",
        "memjs",
        "memcached",
    ];
    let runs: Vec<_> = clients
        .iter()
        .map(|&client| {
            let (via, alone) = (s.legate.proc.port, direct.port);
            std::thread::spawn(move || {
                let prefix = format!("{client}-");
                (
                    client,
                    run_client(client, via, &prefix),
                    run_client(client, alone, &prefix),
                )
            })
        })
        .collect();
    for run in runs {
        let (client, through, alone) = run.join().unwrap();
        assert_eq!(
            through, alone,
            "{client}: through legate (left) and directly (right) differ"
        );
        // What each case came to, checked on the legate side, so a broken case cannot pass
        // by failing the same way on both sides.
        let got = |case: &str| through.get(case).cloned().unwrap_or_default();
        assert_eq!(got("get"), "alpha", "{client}");
        assert_eq!(got("get expiring"), "soon gone", "{client}");
        assert_eq!(got("get expired"), serde_json::Value::Null, "{client}");
        assert_eq!(got("get_multi").as_array().map(Vec::len), Some(26), "{client}");
        assert_eq!(got("get 1MB"), serde_json::json!([1_000_000, true]), "{client}");
        assert_eq!(got("incr"), 15, "{client}");
        assert_eq!(got("version"), version.as_str(), "{client}");
        assert_eq!(got("stats have counters"), true, "{client}");
        assert_eq!(got("stats curr_items >= 27"), true, "{client}");
        if client != "memjs" {
            assert_eq!(got("cas").get(1), Some(&serde_json::Value::Bool(true)), "{client}");
            assert_eq!(got("cas").get(3), Some(&serde_json::json!("new")), "{client}");
        }
    }
    // The multi-gets crossed shards: every shard holds some of the keys.
    for shard in &s.shards {
        let mut c = Client::connect(shard.port);
        c.send(b"stats\r\n");
        let stats = String::from_utf8(c.until(b"END\r\n")).unwrap();
        let items = stat(&stats, "curr_items");
        assert!(items >= 10, "a shard holds only {items} items:\n{stats}");
    }
}

fn stat(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("STAT {name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn memccapable_binary_passes_every_test_through_legate() {
    let s = setup("");
    let bin = require("memccapable", "libmemcached-tools");
    let port = s.legate.proc.port.to_string();
    let out = Command::new(bin)
        .args(["-b", "-h", "127.0.0.1", "-p", &port, "-t", "10"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "memccapable -b failed:\n{text}");
    assert!(text.contains("All tests passed"), "memccapable -b:\n{text}");
    assert!(!text.contains("[FAIL]"), "memccapable -b:\n{text}");
    assert!(
        text.matches("binary").count() >= 27,
        "memccapable -b ran too few tests:\n{text}"
    );
}

// ---- raw binary packets ----

const GET: u8 = 0x00;
const SET: u8 = 0x01;
const GETKQ: u8 = 0x0d;
const NOOP: u8 = 0x0a;
const VERSION: u8 = 0x0b;
const STAT: u8 = 0x10;

fn packet(opcode: u8, opaque: u32, extras: &[u8], key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut b = vec![0x80, opcode];
    b.extend((key.len() as u16).to_be_bytes());
    b.push(extras.len() as u8);
    b.extend([0, 0, 0]);
    b.extend(((extras.len() + key.len() + value.len()) as u32).to_be_bytes());
    b.extend(opaque.to_be_bytes());
    b.extend([0; 8]);
    b.extend(extras);
    b.extend(key);
    b.extend(value);
    b
}

/// One response: (opcode, status, opaque, key, value).
struct Response {
    opcode: u8,
    status: u16,
    opaque: u32,
    key: Vec<u8>,
    value: Vec<u8>,
}

fn read_response(s: &mut TcpStream) -> Response {
    let mut h = [0u8; 24];
    s.read_exact(&mut h).expect("a response header");
    assert_eq!(h[0], 0x81, "not a binary response: {h:?}");
    let key_len = u16::from_be_bytes([h[2], h[3]]) as usize;
    let extras = h[4] as usize;
    let body = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
    let mut b = vec![0u8; body];
    s.read_exact(&mut b).unwrap();
    Response {
        opcode: h[1],
        status: u16::from_be_bytes([h[6], h[7]]),
        opaque: u32::from_be_bytes([h[12], h[13], h[14], h[15]]),
        key: b[extras..extras + key_len].to_vec(),
        value: b[extras + key_len..].to_vec(),
    }
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn binary_stats(s: &mut TcpStream, arg: &[u8]) -> Vec<(String, String)> {
    s.write_all(&packet(STAT, 77, &[], arg, &[])).unwrap();
    let mut out = Vec::new();
    loop {
        let r = read_response(s);
        assert_eq!((r.opcode, r.status, r.opaque), (STAT, 0, 77));
        if r.key.is_empty() {
            return out;
        }
        out.push((String::from_utf8(r.key).unwrap(), String::from_utf8(r.value).unwrap()));
    }
}

#[test]
fn version_and_stats_are_the_shards_as_one_server() {
    let s = setup("");
    let version = memcached_version();
    let mut c = Client::connect(s.legate.proc.port);
    c.expect(b"version\r\n", format!("VERSION {version}\r\n").as_bytes());
    for i in 0..30 {
        c.expect(format!("set k{i} 0 0 2\r\nhi\r\n").as_bytes(), b"STORED\r\n");
    }
    c.send(b"get k1 k2 nope\r\n");
    c.until(b"END\r\n");
    c.send(b"stats\r\n");
    let text = String::from_utf8(c.until(b"END\r\n")).unwrap();
    assert_eq!(stat(&text, "curr_items"), 30, "{text}");
    assert_eq!(stat(&text, "get_hits"), 2, "{text}");
    assert_eq!(stat(&text, "get_misses"), 1, "{text}");
    assert!(text.contains(&format!("STAT version {version}\r\n")), "{text}");
    assert!(
        text.contains(&format!("STAT pid {}\r\n", s.legate.proc.child.id())),
        "{text}"
    );
    // legate's own counters, under twemproxy's names.
    for name in [
        "client_connections",
        "client_eof",
        "client_err",
        "forward_error",
        "fragments",
        "server_ejects",
    ] {
        stat(&text, name);
    }
    let per_shard: u64 = s
        .shards
        .iter()
        .map(|shard| {
            let mut d = Client::connect(shard.port);
            d.send(b"stats\r\n");
            stat(&String::from_utf8(d.until(b"END\r\n")).unwrap(), "limit_maxbytes")
        })
        .sum();
    assert_eq!(stat(&text, "limit_maxbytes"), per_shard, "{text}");
    c.send(b"stats proxy\r\n");
    let proxy = String::from_utf8(c.until(b"END\r\n")).unwrap();
    let shard_items: u64 = s
        .shards
        .iter()
        .map(|shard| stat(&proxy, &format!("127.0.0.1:{}:curr_items", shard.port)))
        .sum();
    assert_eq!(shard_items, 30, "{proxy}");
    stat(&proxy, &format!("127.0.0.1:{}:requests", s.shards[0].port));
    for arg in ["settings", "items", "slabs"] {
        c.send(format!("stats {arg}\r\n").as_bytes());
        let t = String::from_utf8(c.until(b"END\r\n")).unwrap();
        assert!(t.starts_with("STAT "), "stats {arg}:\n{t}");
    }
    c.send(b"stats settings\r\n");
    let settings = String::from_utf8(c.until(b"END\r\n")).unwrap();
    assert_eq!(stat(&settings, "maxbytes"), per_shard, "{settings}");
    // The same through the binary protocol.
    let mut b = connect(s.legate.proc.port);
    b.write_all(&packet(VERSION, 5, &[], &[], &[])).unwrap();
    let r = read_response(&mut b);
    assert_eq!((r.opcode, r.status, r.opaque), (VERSION, 0, 5));
    assert_eq!(r.value, version.as_bytes());
    let stats = binary_stats(&mut b, b"");
    let items = stats.iter().find(|(k, _)| k == "curr_items").map(|(_, v)| v.as_str());
    assert_eq!(items, Some("30"));
    assert!(binary_stats(&mut b, b"proxy")
        .iter()
        .any(|(k, _)| k.ends_with(":curr_items")));
}

#[test]
fn binary_requests_legate_cannot_serve_get_error_responses() {
    let s = setup("  timeout: 2000\n");
    let mut b = connect(s.legate.proc.port);
    // An opcode legate does not know: Unknown command, with the request's opaque.
    b.write_all(&packet(0x48, 11, &[], b"k", &[])).unwrap();
    let r = read_response(&mut b);
    assert_eq!((r.opcode, r.status, r.opaque), (0x48, 0x81, 11));
    // A set without its extras: Invalid arguments, and the connection goes on.
    b.write_all(&packet(SET, 12, &[], b"k", b"v")).unwrap();
    let r = read_response(&mut b);
    assert_eq!((r.opcode, r.status, r.opaque), (SET, 0x04, 12));
    // Quiet gets: hits only, then the client's NOOP, in order.
    b.write_all(&packet(SET, 13, &[0; 8], b"hit", b"yes")).unwrap();
    assert_eq!(read_response(&mut b).status, 0);
    let mut batch = packet(GETKQ, 14, &[], b"miss", &[]);
    batch.extend(packet(GETKQ, 15, &[], b"hit", &[]));
    batch.extend(packet(NOOP, 16, &[], &[], &[]));
    b.write_all(&batch).unwrap();
    let r = read_response(&mut b);
    assert_eq!(
        (r.opcode, r.opaque, &r.key[..], &r.value[..]),
        (GETKQ, 15, &b"hit"[..], &b"yes"[..])
    );
    let r = read_response(&mut b);
    assert_eq!((r.opcode, r.opaque), (NOOP, 16));
    // A value over max_request_bytes is refused at its header: Too large, then closed.
    let mut big = packet(SET, 17, &[0; 8], b"k", &[]);
    big[8..12].copy_from_slice(&(2u32 << 30).to_be_bytes());
    b.write_all(&big).unwrap();
    let r = read_response(&mut b);
    assert_eq!((r.opcode, r.status, r.opaque), (SET, 0x03, 17));
    let mut rest = Vec::new();
    assert_eq!(b.read_to_end(&mut rest).map(|_| rest.len()).unwrap_or(0), 0);
    // Shards that are down: Temporary failure, with the request's opcode and opaque, not silence.
    drop(s.shards);
    let mut b = connect(s.legate.proc.port);
    for i in 0..10u32 {
        let key = format!("key{i}");
        b.write_all(&packet(GET, 100 + i, &[], key.as_bytes(), &[])).unwrap();
        let r = read_response(&mut b);
        assert_eq!((r.opcode, r.status, r.opaque), (GET, 0x86, 100 + i));
    }
    b.write_all(&packet(GETKQ, 200, &[], b"quiet", &[])).unwrap();
    let r = read_response(&mut b);
    assert_eq!((r.opcode, r.status, r.opaque), (GETKQ, 0x86, 200));
}

#[test]
fn sasl_plain_guards_a_pool_with_memcache_auth() {
    let s = setup("  memcache_auth: app:s3cret\n");
    let mut b = connect(s.legate.proc.port);
    b.write_all(&packet(0x20, 1, &[], &[], &[])).unwrap();
    let r = read_response(&mut b);
    assert_eq!((r.status, &r.value[..]), (0, &b"PLAIN"[..]));
    b.write_all(&packet(GET, 2, &[], b"k", &[])).unwrap();
    assert_eq!(read_response(&mut b).status, 0x20, "served before authenticating");
    b.write_all(&packet(0x21, 3, &[], b"PLAIN", b"\0app\0wrong")).unwrap();
    assert_eq!(read_response(&mut b).status, 0x20, "a wrong password was taken");
    b.write_all(&packet(0x21, 4, &[], b"PLAIN", b"\0app\0s3cret")).unwrap();
    assert_eq!(read_response(&mut b).status, 0);
    b.write_all(&packet(SET, 5, &[0; 8], b"k", b"v")).unwrap();
    assert_eq!(read_response(&mut b).status, 0);
    b.write_all(&packet(GET, 6, &[], b"k", &[])).unwrap();
    let r = read_response(&mut b);
    assert_eq!((r.status, &r.value[..]), (0, &b"v"[..]));
    // A text client cannot authenticate: told so, and closed.
    let mut t = Client::connect(s.legate.proc.port);
    t.send(b"get k\r\n");
    assert!(t.line().starts_with(b"CLIENT_ERROR authentication required"));
    assert!(t.closed());
}

/// Send `set <key> noreply` and then `get <key>` at once, `n` times, on one connection (`same`)
/// or on two; how many gets missed the write.
fn noreply_misses(port: u16, same: bool, n: usize) -> usize {
    let mut w = Client::connect(port);
    let mut other = (!same).then(|| Client::connect(port));
    (0..n)
        .filter(|i| {
            w.send(format!("set nr{i} 0 0 1 noreply\r\nx\r\n").as_bytes());
            let r = other.as_mut().unwrap_or(&mut w);
            r.send(format!("get nr{i}\r\n").as_bytes());
            !r.until(b"END\r\n").starts_with(b"VALUE")
        })
        .count()
}

#[test]
fn noreply_writes_are_read_back_in_order() {
    // One connection: a noreply write is never overtaken by the same client's next read, even
    // with several connections per server (a session keeps to one of them).
    let s = setup("  server_connections: 4\n");
    let port = s.legate.proc.port;
    assert_eq!(
        noreply_misses(port, true, 1000),
        0,
        "a client missed its own noreply write"
    );
    // Two connections on one worker with one connection per server (twemproxy's defaults):
    // legate keeps the order in which the writes and reads arrived.
    let shards: Vec<Proc> = (0..3).map(|_| memcached()).collect();
    let port = free_port();
    let ports: Vec<u16> = shards.iter().map(|b| b.port).collect();
    let config = common::scratch_dir().join("legate.yml");
    std::fs::write(&config, pool_yaml("mc", port, false, &ports, "")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_legate"))
        .arg("-c")
        .arg(&config)
        .args(["--workers", "1", "--admin", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start legate");
    wait_for_port(port, "legate", &mut child);
    let _legate = Proc { child, port };
    let misses = noreply_misses(port, false, 1000);
    assert_eq!(
        misses, 0,
        "with one worker, {misses} reads of 1000 overtook a noreply write"
    );
}
