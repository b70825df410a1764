//! Sentinel pools on real servers: two masters with a replica each, three redis-sentinels, and
//! a plain client checking every reply through legate while a master is SIGKILLed. Writes must
//! resume on the promoted replica without restarting legate, only that master's keys may fail
//! meanwhile, and keys stay with their master names.

mod common;

use common::resp::Value;
use common::{free_port, require, Client, Proc};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A redis-sentinel monitoring `masters` (name, port) with quorum 2 and short failover timers.
fn sentinel(port: u16, masters: &[(&str, u16)]) -> Proc {
    let bin = require("redis-sentinel", "redis-sentinel");
    let dir = common::scratch_dir();
    let conf = dir.join("sentinel.conf");
    let mut text = format!("port {port}\nbind 127.0.0.1\ndir {}\n", dir.display());
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
    common::wait_for_port(port, "redis-sentinel", &mut child);
    Proc { child, port }
}

fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.items()
        .chunks_exact(2)
        .find(|kv| kv[0].text() == key)
        .map(|kv| &kv[1])
}

/// What the load threads saw.
#[derive(Default)]
struct Seen {
    /// When, which key, what error.
    failures: Vec<(Instant, String, String)>,
    /// A reply that is neither the value just written nor an error.
    wrong: Vec<String>,
    /// Successful SET+GET rounds, by key, with the time of the last.
    ok: Vec<(Instant, String)>,
}

/// SET then GET the same key, over and over, checking both replies.
fn load(port: u16, t: usize, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>, rounds: Arc<AtomicU64>) {
    let mut c = Client::connect(port);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let key = format!("load:{t}:{}", i % 25);
        let val = format!("{t}-{i}");
        let fail = |key: &str, e: String| seen.lock().unwrap().failures.push((Instant::now(), key.to_string(), e));
        match c.call(&[b"SET", key.as_bytes(), val.as_bytes()]) {
            Value::Simple(s) if s == "OK" => {}
            Value::Error(e) => {
                fail(&key, e);
                continue;
            }
            other => {
                seen.lock().unwrap().wrong.push(format!("SET {key}: {other:?}"));
                continue;
            }
        }
        match c.call(&[b"GET", key.as_bytes()]) {
            Value::Bulk(v) if v == val.as_bytes() => {
                seen.lock().unwrap().ok.push((Instant::now(), key));
                rounds.fetch_add(1, Ordering::Relaxed);
            }
            Value::Error(e) => fail(&key, e),
            other => seen
                .lock()
                .unwrap()
                .wrong
                .push(format!("GET {key}: {other:?}, want {val}")),
        }
    }
}

/// Does the server on `port` hold `key`?
fn holds(port: u16, key: &str) -> bool {
    Client::connect(port).call(&[b"EXISTS", key.as_bytes()]).int() == 1
}

#[test]
fn master_killed_under_load_writes_resume_on_the_promoted_replica() {
    require("redis-sentinel", "redis-sentinel");
    let (pa, pb, ra, rb) = (free_port(), free_port(), free_port(), free_port());
    let mut master_a = common::redis_server_with(pa, &[]);
    let _master_b = common::redis_server_with(pb, &[]);
    let _replica_a = common::redis_server_with(ra, &["--replicaof", "127.0.0.1", &pa.to_string()]);
    let _replica_b = common::redis_server_with(rb, &["--replicaof", "127.0.0.1", &pb.to_string()]);
    for r in [ra, rb] {
        common::eventually("the replicas are in sync", || {
            let info = Client::connect(r).words("INFO replication").text();
            info.contains("master_link_status:up")
        });
    }
    let masters = [("ma", pa), ("mb", pb)];
    let sentinels: Vec<Proc> = (0..3).map(|_| sentinel(free_port(), &masters)).collect();
    // Each sentinel knows the other two and each master's replica before anything fails.
    for s in &sentinels {
        for (name, _) in masters {
            common::eventually("the sentinels know each other and the replicas", || {
                let m = Client::connect(s.port).call(&[b"SENTINEL", b"MASTER", name.as_bytes()]);
                let n = |k: &str| field(&m, k).map(|v| v.text().parse::<i64>().unwrap_or(0));
                n("num-other-sentinels") == Some(2) && n("num-slaves") == Some(1)
            });
        }
    }

    let port = free_port();
    let admin = free_port();
    let list: Vec<String> = sentinels.iter().map(|s| format!("'127.0.0.1:{}'", s.port)).collect();
    let yaml = format!(
        "s:\n  listen: 127.0.0.1:{port}\n  redis: true\n  hash: md5\n  distribution: ketama\n  timeout: 1000\n  sentinels: [{}]\n  sentinel_interval: 1000\n  servers: ['ma:1', 'mb:1']\n",
        list.join(", ")
    );
    let config = common::config_file(&yaml);
    let legate = common::legate_logged(&config, port, &["--admin", &format!("127.0.0.1:{admin}")]);
    let pid = legate.proc.child.id();
    println!("{} (ma: {pa}, mb: {pb})", legate.wait_log("masters"));

    // Where each key lives, by master name, before the failover.
    let mut c = Client::connect(port);
    let keys: Vec<String> = (0..200).map(|i| format!("p:{i}")).collect();
    let mut on_a = Vec::new();
    for k in &keys {
        assert_eq!(c.call(&[b"SET", k.as_bytes(), b"before"]), Value::Simple("OK".into()));
        let (a, b) = (holds(pa, k), holds(pb, k));
        assert!(a != b, "{k} is on both masters or neither");
        on_a.push(a);
    }
    let n_a = on_a.iter().filter(|a| **a).count();

    assert!(
        n_a > 20 && n_a < 180,
        "keys are not spread over both names: {n_a} of 200 on ma"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let rounds = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (stop, seen, rounds) = (stop.clone(), seen.clone(), rounds.clone());
            std::thread::spawn(move || load(port, t, stop, seen, rounds))
        })
        .collect();
    common::eventually("the load runs", || rounds.load(Ordering::Relaxed) > 500);

    // SIGKILL: no shutdown, no last replication of anything.
    master_a.child.kill().unwrap();
    let killed = Instant::now();
    let _ = master_a.child.wait();
    legate.wait_log("master moved");
    // Keep the load on until it has run 2 s without a failure (at most 25 s after the kill).
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let last = seen.lock().unwrap().failures.last().map(|f| f.0).unwrap_or(killed);
        if last.elapsed() > Duration::from_secs(2) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(25),
            "requests still failing 25 s after the kill"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let seen = seen.lock().unwrap();
    assert!(
        seen.wrong.is_empty(),
        "wrong replies: {:?}",
        &seen.wrong[..seen.wrong.len().min(10)]
    );

    // The sentinels promoted the replica, and legate follows it.
    let addr = Client::connect(sentinels[0].port).call(&[b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", b"ma"]);
    assert_eq!(
        addr.items()[1].text(),
        ra.to_string(),
        "the sentinels did not promote ma's replica"
    );
    assert_eq!(legate.proc.child.id(), pid);

    // Only ma's keys failed, and they were written again after the failover.
    let mut on_ma = std::collections::HashMap::new();
    let load_keys = seen
        .ok
        .iter()
        .map(|(_, k)| k)
        .chain(seen.failures.iter().map(|(_, k, _)| k));
    for k in load_keys {
        if !on_ma.contains_key(k) {
            let (a, b) = (holds(ra, k), holds(pb, k));
            assert!(a != b, "{k} is on both masters or neither");
            on_ma.insert(k.clone(), a);
        }
    }
    for (_, key, e) in &seen.failures {
        assert!(on_ma[key], "{key} failed ({e}) but is not ma's");
    }
    let ms = |t: Instant| t.duration_since(killed).as_millis();
    let first_failure = seen.failures.first().map(|f| f.0);
    let last_failure = seen.failures.last().map(|f| f.0);
    // Writes resumed: the first good round on one of ma's keys after its first failure.
    let resumed = seen
        .ok
        .iter()
        .find(|(at, k)| on_ma[k] && first_failure.is_some_and(|f| *at > f))
        .map(|(at, _)| ms(*at));
    assert!(
        first_failure.is_none() || resumed.is_some(),
        "no write to ma's keys succeeded after the failover"
    );
    assert!(
        seen.ok
            .iter()
            .any(|(at, k)| on_ma[k] && last_failure.is_none_or(|l| *at > l)),
        "ma's keys were not served after the last failure"
    );
    println!(
        "sentinel failover through legate: outage window {} ms (SIGKILL of ma to its first good write on the promoted replica); {} failed requests, all on ma, from +{} to +{} ms; {} good SET+GET rounds, 0 wrong",
        resumed.unwrap_or(0),
        seen.failures.len(),
        first_failure.map(ms).unwrap_or(0),
        last_failure.map(ms).unwrap_or(0),
        seen.ok.len()
    );

    // Placement over names is unchanged: each key is written where its name's master is now.
    for (k, a) in keys.iter().zip(&on_a) {
        assert_eq!(c.call(&[b"SET", k.as_bytes(), b"after"]), Value::Simple("OK".into()));
        let (owner, other) = if *a { (ra, pb) } else { (pb, ra) };
        let got = Client::connect(owner).call(&[b"GET", k.as_bytes()]);
        assert_eq!(got, Value::Bulk(b"after".to_vec()), "{k} moved off its master name");
        assert!(!holds(other, k), "{k} written on the other master name");
    }

    let (_, metrics) = common::http(admin, "GET", "/metrics");
    assert_eq!(
        common::metric(&metrics, "legate_sentinel_failovers_total", &["master=\"ma\""]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        common::metric(&metrics, "legate_sentinel_failovers_total", &["master=\"mb\""]),
        None
    );
}
