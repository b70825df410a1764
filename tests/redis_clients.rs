//! The real client libraries, with their default connection options, through legate over three
//! redis-servers: redis-py, node-redis and ioredis, in RESP3 (their default) and RESP2.
//!
//! Each library runs one script (tests/clients/) of cases — connect, the client name option,
//! strings, hashes, lists, sets, sorted sets, streams, expiry, reply types, pipelines of 100+,
//! Lua (EVAL, SCRIPT LOAD/EVALSHA, the library's registered scripts), functions, SCAN to
//! completion, multi-key commands on hash-tagged keys, transactions (redis-py's default
//! pipeline, node-redis and ioredis `multi()`), WATCH aborted by another client, pub/sub with
//! channels on several shards and a pattern, and BLPOP. Every case checks its values in the
//! script; the test runs the same script against one redis-server directly and requires the
//! same transcript, line for line, through legate.
//!
//! Needs `pip install redis` and `npm install --prefix tests/clients/node` (.ci/run does both).

mod common;

use common::{free_port, legate, pool_yaml, redis_server, require, Legate, Proc};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one script may run before it is killed (a client reconnecting forever).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

struct Setup {
    _shards: Vec<Proc>,
    legate: Legate,
    /// One redis-server reached directly: the answers legate must give.
    reference: Proc,
}

fn setup() -> Setup {
    let shards: Vec<Proc> = (0..3).map(|_| redis_server()).collect();
    let port = free_port();
    let ports: Vec<u16> = shards.iter().map(|b| b.port).collect();
    let legate = legate(&pool_yaml("rd", port, true, &ports, "  hash_tag: \"{}\"\n"), port);
    Setup {
        _shards: shards,
        legate,
        reference: redis_server(),
    }
}

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// python3 with redis-py importable, or fail saying how to install it.
fn python() -> PathBuf {
    let py = require("python3", "python3");
    let ok = Command::new(&py)
        .args(["-c", "import redis"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "redis-py is not installed, and this test needs it: python3 -m pip install redis (.ci/run does this)"
    );
    py
}

/// node, with node-redis and ioredis installed beside the scripts, or fail saying how.
fn node() -> PathBuf {
    let node = require("node", "nodejs");
    let modules = clients_dir().join("node/node_modules");
    for package in ["redis", "ioredis"] {
        assert!(
            modules.join(package).join("package.json").is_file(),
            "the npm package `{package}` is not installed, and this test needs it: \
             npm install --prefix tests/clients/node (.ci/run does this)"
        );
    }
    node
}

/// What one run of a script printed, and whether every case passed.
struct Run {
    passed: bool,
    out: String,
}

fn run_script(program: &PathBuf, script: &str, port: u16, proto: u8, prefix: &str) -> Run {
    let mut child = Command::new(program)
        .arg(clients_dir().join(script))
        .args([port.to_string(), proto.to_string(), prefix.to_string()])
        .current_dir(clients_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = reader.join().unwrap();
    if status.is_none() {
        out += &format!("timeout: killed after {SCRIPT_TIMEOUT:?}\n");
    }
    Run {
        passed: status.is_some_and(|s| s.success()),
        out,
    }
}

/// Run `script` through legate and against the reference server in both protocols; returns the
/// problems found (empty: identical transcripts, every case passed).
fn compare(program: &PathBuf, script: &str, tag: &str) -> Vec<String> {
    let s = setup();
    let mut problems = Vec::new();
    for proto in [3u8, 2] {
        let prefix = format!("{tag}{proto}");
        let direct = run_script(program, script, s.reference.port, proto, &prefix);
        let through = run_script(program, script, s.legate.proc.port, proto, &prefix);
        if !direct.passed {
            problems.push(format!(
                "RESP{proto}: {script} fails against redis-server itself:\n{}",
                direct.out
            ));
            continue;
        }
        let want: Vec<&str> = direct.out.lines().collect();
        let got: Vec<&str> = through.out.lines().collect();
        let mut diff = String::new();
        for i in 0..want.len().max(got.len()) {
            let (w, g) = (want.get(i).copied(), got.get(i).copied());
            if w != g {
                diff += &format!(
                    "  redis-server: {}\n  legate:       {}\n",
                    clip(w.unwrap_or("(nothing)")),
                    clip(g.unwrap_or("(nothing)"))
                );
            }
        }
        if !through.passed || !diff.is_empty() {
            problems.push(format!("RESP{proto}: {script} through legate differs:\n{diff}"));
        }
    }
    problems
}

/// A transcript line, cut to a readable length.
fn clip(line: &str) -> String {
    match line.char_indices().nth(400) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line.to_string(),
    }
}

fn assert_same(problems: Vec<String>) {
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn redis_py_gets_what_one_redis_server_gives() {
    let py = python();
    assert_same(compare(&py, "redis_py.py", "py"));
}

#[test]
fn node_redis_gets_what_one_redis_server_gives() {
    let node = node();
    assert_same(compare(&node, "node/node_redis.js", "nr"));
}

#[test]
fn ioredis_gets_what_one_redis_server_gives() {
    let node = node();
    assert_same(compare(&node, "node/ioredis.js", "io"));
}
