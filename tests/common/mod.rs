//! Real servers and a real legate for integration tests, each on a free loopback port.
//!
//! Every process is killed when its handle drops. A binary that is not installed fails the
//! test with a message saying what to install; nothing is skipped silently.

#![allow(dead_code)]

pub mod pki;
pub mod resp;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A port nobody is listening on right now, and that nobody will be handed by chance.
///
/// Ports come from below the kernel's ephemeral range (32768 and up on Linux), so the source
/// port of some outgoing connection cannot take one between this call and the bind that uses
/// it; each test process walks its own stretch of the range and never hands a port out twice.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    const LOW: usize = 10_000;
    const SPAN: usize = 22_000;
    let base = (std::process::id() as usize * 7919) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "no free loopback port left below 32000");
        let port = (LOW + (base + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Find `name` on PATH or fail the test saying how to get it.
pub fn require(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{name}` is not installed, and this test needs it: apt-get install -y {package} (.ci/run does this)");
}

/// Wait until something accepts connections on `port`, or fail after 10 s.
pub fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let start = Instant::now();
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening on {port}: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what} never listened on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub port: u16,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A memcached allowing items up to 20 MB.
pub fn memcached() -> Proc {
    memcached_on(free_port())
}

/// A memcached on a given port (to restart one that was killed).
pub fn memcached_on(port: u16) -> Proc {
    memcached_with(port, &[])
}

/// A memcached on a given port with extra arguments (`-Z`, ...).
pub fn memcached_with(port: u16, extra: &[&str]) -> Proc {
    let bin = require("memcached", "memcached");
    let mut cmd = Command::new(bin);
    cmd.args([
        "-l",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "0",
        "-m",
        "512",
        "-I",
        "20m",
        "-t",
        "1",
    ]);
    cmd.args(extra);
    if is_root() {
        cmd.args(["-u", "nobody"]);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start memcached");
    wait_for_port(port, "memcached", &mut child);
    Proc { child, port }
}

/// A redis-server with no persistence.
pub fn redis_server() -> Proc {
    redis_server_with(free_port(), &[])
}

/// A redis-server on a given port with extra arguments (`--requirepass`, ...), in a scratch
/// directory of its own: a snapshot it writes (BGSAVE for a replica's SYNC) is never loaded by
/// the next server.
pub fn redis_server_with(port: u16, extra: &[&str]) -> Proc {
    let bin = require("redis-server", "redis-server");
    let dir = scratch_dir();
    let mut child = Command::new(bin)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    wait_for_port(port, "redis-server", &mut child);
    Proc { child, port }
}

/// A redis-sentinel on `port` (given in `settings`: `port N`, or TLS's `tls-port N`) with the
/// other `settings` lines, monitoring `masters` (name, port) with quorum 2 and short failover
/// timers, in a scratch directory of its own (it rewrites its config file).
pub fn redis_sentinel(port: u16, settings: &str, masters: &[(&str, u16)]) -> Proc {
    let bin = require("redis-sentinel", "redis-sentinel");
    let dir = scratch_dir();
    let conf = dir.join("sentinel.conf");
    let mut text = format!("bind 127.0.0.1\ndir {}\n{settings}", dir.display());
    for (name, p) in masters {
        text += &format!(
            "sentinel monitor {name} 127.0.0.1 {p} 2\n\
             sentinel down-after-milliseconds {name} 1000\n\
             sentinel failover-timeout {name} 2000\n\
             sentinel parallel-syncs {name} 1\n"
        );
    }
    std::fs::write(&conf, text).unwrap();
    let mut child = Command::new(bin)
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-sentinel");
    wait_for_port(port, "redis-sentinel", &mut child);
    Proc { child, port }
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh scratch directory for this test process.
pub fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "legate-test-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A config file holding `text` in a fresh scratch directory.
pub fn config_file(text: &str) -> PathBuf {
    let path = scratch_dir().join("legate.yml");
    std::fs::write(&path, text).unwrap();
    path
}

/// legate running on a config; `port` is the first pool's listen port.
pub struct Legate {
    pub proc: Proc,
    pub config: PathBuf,
}

/// A pool section for `servers` (each `127.0.0.1:port`), listening on `port`.
pub fn pool_yaml(name: &str, port: u16, redis: bool, servers: &[u16], extra: &str) -> String {
    let mut y = format!(
        "{name}:\n  listen: 127.0.0.1:{port}\n  hash: md5\n  distribution: ketama\n  redis: {redis}\n{extra}  servers:\n"
    );
    for s in servers {
        y += &format!("    - 127.0.0.1:{s}:1\n");
    }
    y
}

/// Start legate on `yaml`; waits for `port` to accept.
pub fn legate(yaml: &str, port: u16) -> Legate {
    let dir = scratch_dir();
    let config = dir.join("legate.yml");
    std::fs::write(&config, yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_legate"))
        .arg("-c")
        .arg(&config)
        .arg("--workers")
        .arg("2")
        .args(["--admin", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start legate");
    wait_for_port(port, "legate", &mut child);
    Legate {
        proc: Proc { child, port },
        config,
    }
}

/// legate whose log lines (info level) are kept for [`Logged::wait_log`].
pub struct Logged {
    pub proc: Proc,
    pub lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Logged {
    /// Wait (at most 15 s) for a log line containing `what`; returns it.
    pub fn wait_log(&self, what: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| l.contains(what)) {
                return l.clone();
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "no log line with {what:?}; log so far:\n{}",
                self.lines.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_count(&self, what: &str) -> usize {
        self.lines.lock().unwrap().iter().filter(|l| l.contains(what)).count()
    }
}

/// Start legate on the config file `config` (which the test may change), capturing its log.
pub fn legate_logged(config: &Path, port: u16, extra_args: &[&str]) -> Logged {
    let mut child = Command::new(env!("CARGO_BIN_EXE_legate"))
        .arg("-c")
        .arg(config)
        .args(["--workers", "2"])
        .args(if extra_args.contains(&"--admin") {
            &[][..]
        } else {
            &["--admin", "127.0.0.1:0"][..]
        })
        .args(extra_args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start legate");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    wait_for_port(port, "legate", &mut child);
    Logged {
        proc: Proc { child, port },
        lines,
    }
}

/// nutcracker (twemproxy) on `yaml`, listening on `port`.
pub fn nutcracker(yaml: &str, port: u16) -> Proc {
    let bin = require("nutcracker", "nutcracker");
    let dir = scratch_dir();
    let config = dir.join("nutcracker.yml");
    std::fs::write(&config, yaml).unwrap();
    let stats = free_port();
    let mut child = Command::new(bin)
        .arg("-c")
        .arg(&config)
        .args(["-s", &stats.to_string(), "-o", "/dev/null"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nutcracker");
    wait_for_port(port, "nutcracker", &mut child);
    Proc { child, port }
}

/// A blocking client that sends raw bytes and reads exact replies.
pub struct Client {
    pub r: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        Client { r: BufReader::new(s) }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).unwrap();
    }

    /// One line, with its CRLF.
    pub fn line(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        self.r.read_until(b'\n', &mut v).unwrap();
        assert!(
            v.ends_with(b"\r\n"),
            "connection closed or bad line: {:?}",
            String::from_utf8_lossy(&v)
        );
        v
    }

    pub fn exact(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.r.read_exact(&mut v).unwrap();
        v
    }

    /// Read until `end` has been seen at the end of what was read.
    pub fn until(&mut self, end: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        while !v.ends_with(end) {
            let n = self.r.read_until(b'\n', &mut v).unwrap();
            assert!(n > 0, "connection closed; got {:?}", String::from_utf8_lossy(&v));
        }
        v
    }

    /// Send and expect exactly `want` back.
    pub fn expect(&mut self, send: &[u8], want: &[u8]) {
        self.send(send);
        let got = self.exact(want.len());
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want),
            "reply to {:?}",
            String::from_utf8_lossy(&send[..send.len().min(200)])
        );
    }

    /// True once the peer has closed the connection (after any unread bytes).
    pub fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        self.r.read_to_end(&mut rest).is_ok() && rest.is_empty()
    }
}

/// Run a command, returning stdout; fails the test on a non-zero exit.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// Poll `f` until it returns true, failing after 15 s with `what`.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(15), "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A RESP command from space-separated words.
pub fn cmd(line: &str) -> Vec<u8> {
    let args: Vec<&str> = line.split(' ').collect();
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// One HTTP/1.1 request; returns (status, body).
pub fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// The value of the series `name{...labels containing all of `has`...}`.
pub fn metric(text: &str, name: &str, has: &[&str]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let base = series.split('{').next()?;
        (base == name && has.iter().all(|h| series.contains(h))).then(|| value.parse().ok())?
    })
}
