//! Redis Cluster pools on real servers: six `redis-server --cluster-enabled yes` nodes made into
//! three masters and three replicas by `redis-cli --cluster create`, legate in front with one
//! seed, and a plain (not cluster-aware) client checking every reply.

mod common;

use common::resp::Value;
use common::{free_port, require, Client, Proc};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A free port whose cluster bus port (+10 000) is free too and below the kernel's ephemeral
/// range (32768 and up), where an outgoing connection's source port could take it: a node whose
/// bus port is taken exits at start.
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 22_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Six nodes, three masters with a replica each, all slots served and agreed on.
fn cluster() -> Vec<Proc> {
    cluster_with(&[])
}

/// [`cluster`] with `extra` arguments for every node.
fn cluster_with(extra: &[&str]) -> Vec<Proc> {
    let cli = require("redis-cli", "redis-tools");
    let nodes: Vec<Proc> = (0..6)
        .map(|_| {
            let port = cluster_port();
            let dir = common::scratch_dir();
            common::redis_server_with(
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &dir.join("nodes.conf").display().to_string(),
                    "--cluster-node-timeout",
                    "2000",
                    // A replica's first sync starts at once (it waits 5 s by default), so it
                    // has data and can be promoted from the start of the test.
                    "--repl-diskless-sync-delay",
                    "0",
                    "--dir",
                    &dir.display().to_string(),
                ]
                .iter()
                .copied()
                .chain(extra.iter().copied())
                .collect::<Vec<_>>(),
            )
        })
        .collect();
    let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    common::run(Command::new(&cli).args(["--cluster", "create"]).args(&addrs).args([
        "--cluster-replicas",
        "1",
        "--cluster-yes",
    ]));
    for n in &nodes {
        common::eventually("every node sees the cluster ok", || {
            Client::connect(n.port)
                .words("CLUSTER INFO")
                .text()
                .contains("cluster_state:ok")
        });
    }
    for n in &nodes {
        common::eventually("every node knows the replicas as replicas", || {
            let text = Client::connect(n.port).words("CLUSTER NODES").text();
            text.lines()
                .filter(|l| l.split(' ').nth(2).is_some_and(|f| f.contains("slave")))
                .count()
                == 3
        });
        common::eventually("every replica is in sync with its master", || {
            let info = Client::connect(n.port).words("INFO replication").text();
            info.contains("role:master") || info.contains("master_link_status:up")
        });
    }
    common::eventually("the nodes agree about the slots", || {
        let out = Command::new(&cli)
            .args(["--cluster", "check", &addrs[0]])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("[OK] All nodes agree about slots configuration")
            && String::from_utf8_lossy(&out.stdout).contains("[OK] All 16384 slots covered")
    });
    nodes
}

fn is_master(port: u16) -> bool {
    Client::connect(port).words("ROLE").items()[0].text() == "master"
}

fn legate_on(seed: u16) -> (common::Logged, u16, u16) {
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "c:\n  listen: 127.0.0.1:{port}\n  redis: true\n  timeout: 5000\n  cluster: ['127.0.0.1:{seed}']\n  cluster_refresh: 1000\n"
    );
    let config = common::config_file(&yaml);
    let legate = common::legate_logged(&config, port, &["--admin", &format!("127.0.0.1:{admin}")]);
    (legate, port, admin)
}

#[test]
fn keys_route_by_slot_and_multi_key_commands_split_by_slot() {
    let nodes = cluster();
    let (_legate, port, _) = legate_on(nodes[0].port);
    let mut c = Client::connect(port);
    for i in 0..300 {
        let k = format!("k:{i}");
        assert_eq!(
            c.call(&[b"SET", k.as_bytes(), k.as_bytes()]),
            Value::Simple("OK".into())
        );
    }
    for i in (0..300).step_by(7) {
        let k = format!("k:{i}");
        assert_eq!(c.call(&[b"GET", k.as_bytes()]), Value::Bulk(k.clone().into_bytes()));
    }
    // MGET over many slots and all three masters, merged in key order (with a missing key).
    let mut args: Vec<Vec<u8>> = vec![b"MGET".to_vec()];
    args.extend((0..300).map(|i| format!("k:{i}").into_bytes()));
    args.push(b"nope".to_vec());
    let refs: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
    let got = c.call(&refs);
    let items = got.items();
    assert_eq!(items.len(), 301);
    for (i, v) in items[..300].iter().enumerate() {
        assert_eq!(*v, Value::Bulk(format!("k:{i}").into_bytes()));
    }
    assert_eq!(items[300], Value::Null);
    assert_eq!(c.words("MSET a 1 b 2 c 3 {t}x 4 {t}y 5"), Value::Simple("OK".into()));
    assert_eq!(c.words("MGET a b c {t}x {t}y").items().len(), 5);
    assert_eq!(c.words("EXISTS a b c zz").int(), 3);
    // Keys sharing a hash tag share a slot: a multi-key command on them runs as one.
    assert_eq!(c.words("RPUSH {t}l 1 2 3").int(), 3);
    assert_eq!(c.words("RPOPLPUSH {t}l {t}m").text(), "3");
    // DBSIZE is the masters' sum (replicas are not counted twice).
    assert_eq!(c.words("DBSIZE").int(), 300 + 5 + 2);
    assert_eq!(c.words("DEL a b c {t}x {t}y").int(), 5);
    // Keys of different slots in a command that cannot be split: the cluster's own refusal.
    let e = c.words("RPOPLPUSH a b");
    assert!(matches!(&e, Value::Error(m) if m.starts_with("CROSSSLOT")), "{e:?}");
}

/// What the load threads saw.
#[derive(Default)]
struct Seen {
    /// When, which key, what error.
    failures: Vec<(Instant, String, String)>,
    /// A reply that is neither the value just written nor an error.
    wrong: Vec<String>,
    /// Good SET+GET rounds: when, which key.
    ok: Vec<(Instant, String)>,
}

/// SET then GET the same key, over and over, checking both replies.
fn load(port: u16, t: usize, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>, rounds: Arc<AtomicU64>) {
    let mut c = Client::connect(port);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let key = format!("load:{t}:{}", i % 200);
        let val = format!("{t}-{i}");
        let fail = |e: String| seen.lock().unwrap().failures.push((Instant::now(), key.clone(), e));
        match c.call(&[b"SET", key.as_bytes(), val.as_bytes()]) {
            Value::Simple(s) if s == "OK" => {}
            Value::Error(e) => {
                fail(format!("SET: {e}"));
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
            Value::Error(e) => fail(format!("GET: {e}")),
            other => seen
                .lock()
                .unwrap()
                .wrong
                .push(format!("GET {key}: {other:?}, want {val}")),
        }
    }
}

/// Four load threads on legate's `port`.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    rounds: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let rounds = Arc::new(AtomicU64::new(0));
        let threads = (0..4)
            .map(|t| {
                let (stop, seen, rounds) = (stop.clone(), seen.clone(), rounds.clone());
                std::thread::spawn(move || load(port, t, stop, seen, rounds))
            })
            .collect();
        let l = Load {
            stop,
            seen,
            rounds,
            threads,
        };
        common::eventually("the load runs", || l.rounds() > 2000);
        l
    }

    fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Let `n` more rounds run, then stop.
    fn finish(self, n: u64) -> Seen {
        let at = self.rounds();
        common::eventually("the load goes on", || self.rounds() > at + n);
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn assert_none_failed_or_wrong(seen: &Seen) {
    assert!(
        seen.wrong.is_empty(),
        "wrong replies: {:?}",
        &seen.wrong[..seen.wrong.len().min(10)]
    );
    assert!(
        seen.failures.is_empty(),
        "failed: {:?}",
        &seen.failures[..seen.failures.len().min(10)]
    );
}

fn metric_of(admin: u16, name: &str, has: &[&str]) -> f64 {
    let (_, metrics) = common::http(admin, "GET", "/metrics");
    common::metric(&metrics, name, has).unwrap_or(0.0)
}

/// The node (port) whose replica `replica` is.
fn master_of(replica: u16) -> u16 {
    let role = Client::connect(replica).words("ROLE");
    assert_eq!(role.items()[0].text(), "slave");
    role.items()[2].int() as u16
}

#[test]
fn resharding_1000_slots_under_load_fails_nothing() {
    let nodes = cluster();
    let cli = require("redis-cli", "redis-tools");
    let masters: Vec<u16> = nodes.iter().map(|n| n.port).filter(|p| is_master(*p)).collect();
    assert_eq!(masters.len(), 3);
    let id = |p: u16| Client::connect(p).words("CLUSTER MYID").text();
    let (from, to) = (id(masters[0]), id(masters[1]));
    let (legate, port, admin) = legate_on(nodes[5].port);

    let load = Load::start(port);
    let before = load.rounds();
    let started = Instant::now();
    common::run(Command::new(&cli).args([
        "--cluster",
        "reshard",
        &format!("127.0.0.1:{}", masters[0]),
        "--cluster-from",
        &from,
        "--cluster-to",
        &to,
        "--cluster-slots",
        "1000",
        "--cluster-yes",
    ]));
    let took = started.elapsed();
    // Some more load after the move, on the new table.
    let after = load.rounds();
    let rounds = load.rounds.clone();
    let seen = load.finish(2000);
    let (_, metrics) = common::http(admin, "GET", "/metrics");
    let m = |kind: &str| {
        common::metric(
            &metrics,
            "legate_cluster_redirections_total",
            &[&format!("kind=\"{kind}\"")],
        )
        .unwrap_or(0.0)
    };
    println!(
        "cluster resharding of 1000 slots under load through legate: {} ms, {} good SET+GET rounds during it ({} in all), {} failed, {} wrong; legate followed {} MOVED, {} ASK, {} TRYAGAIN/CLUSTERDOWN; slot table generation {}",
        took.as_millis(),
        after - before,
        rounds.load(Ordering::Relaxed),
        seen.failures.len(),
        seen.wrong.len(),
        m("moved"),
        m("ask"),
        m("tryagain"),
        common::metric(&metrics, "legate_cluster_slot_table_generation", &[]).unwrap_or(0.0)
    );
    assert_none_failed_or_wrong(&seen);
    assert!(
        m("moved") + m("ask") > 0.0,
        "no redirection was followed: the test moved nothing"
    );
    legate.wait_log("cluster slot table changed");
}

#[test]
fn manual_failover_under_load_fails_nothing() {
    let nodes = cluster();
    let replica = nodes.iter().map(|n| n.port).find(|p| !is_master(*p)).unwrap();
    let old_master = master_of(replica);
    let (legate, port, admin) = legate_on(nodes[0].port);

    let load = Load::start(port);
    let started = Instant::now();
    assert_eq!(Client::connect(replica).words("CLUSTER FAILOVER").text(), "OK");
    common::eventually("the replica is promoted", || is_master(replica));
    let promoted = started.elapsed();
    legate.wait_log("cluster slot table changed");
    common::eventually("the old master serves as a replica", || !is_master(old_master));
    let seen = load.finish(2000);
    let failovers = metric_of(admin, "legate_cluster_failovers_total", &[]);
    println!(
        "cluster CLUSTER FAILOVER on a replica under load through legate: promoted in {} ms, {} good SET+GET rounds, {} failed, {} wrong; legate followed {} MOVED, {} TRYAGAIN/CLUSTERDOWN, {failovers} failover(s)",
        promoted.as_millis(),
        seen.ok.len(),
        seen.failures.len(),
        seen.wrong.len(),
        metric_of(admin, "legate_cluster_redirections_total", &["kind=\"moved\""]),
        metric_of(admin, "legate_cluster_redirections_total", &["kind=\"tryagain\""]),
    );
    assert_none_failed_or_wrong(&seen);
    assert_eq!(failovers, 1.0, "the failover is not counted");
    // The promoted node serves the old master's slots through legate.
    let mut c = Client::connect(port);
    let slots = Client::connect(replica).words("CLUSTER SLOTS");
    let ranges: Vec<(i64, i64)> = slots
        .items()
        .iter()
        .filter(|r| r.items()[2].items()[1].int() == i64::from(replica))
        .map(|r| (r.items()[0].int(), r.items()[1].int()))
        .collect();
    assert!(!ranges.is_empty(), "the promoted replica serves no slot");
    let key = (0..)
        .map(|i| format!("mf:{i}"))
        .find(|k| {
            let slot = Client::connect(replica)
                .call(&[b"CLUSTER", b"KEYSLOT", k.as_bytes()])
                .int();
            ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot))
        })
        .unwrap();
    assert_eq!(c.call(&[b"SET", key.as_bytes(), b"v"]), Value::Simple("OK".into()));
    assert_eq!(
        Client::connect(replica).call(&[b"GET", key.as_bytes()]),
        Value::Bulk(b"v".to_vec())
    );
}

#[test]
fn master_killed_under_load_fails_only_its_slots_until_its_replica_is_promoted() {
    let mut nodes = cluster();
    let victim_at = nodes.iter().position(|n| is_master(n.port)).unwrap();
    let victim = nodes[victim_at].port;
    let replica = nodes
        .iter()
        .map(|n| n.port)
        .find(|p| !is_master(*p) && master_of(*p) == victim)
        .expect("the victim has a replica");
    let seed = nodes.iter().map(|n| n.port).find(|p| *p != victim).unwrap();
    let (legate, port, admin) = legate_on(seed);
    // Which slots the victim serves, before it dies.
    let slots = Client::connect(seed).words("CLUSTER SLOTS");
    let victims: Vec<(i64, i64)> = slots
        .items()
        .iter()
        .filter(|r| r.items()[2].items()[1].int() == i64::from(victim))
        .map(|r| (r.items()[0].int(), r.items()[1].int()))
        .collect();
    assert!(!victims.is_empty());

    let load = Load::start(port);
    nodes[victim_at].child.kill().unwrap();
    let killed = Instant::now();
    let _ = nodes[victim_at].child.wait();
    let mut promoted = None;
    // Keep the load on until it has run 2 s without a failure after the promotion (at most
    // 30 s after the kill).
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
        if promoted.is_none() && is_master(replica) {
            promoted = Some(killed.elapsed());
        }
        let last = load.seen.lock().unwrap().failures.last().map(|f| f.0).unwrap_or(killed);
        if promoted.is_some() && last.elapsed() > std::time::Duration::from_secs(2) {
            break;
        }
        assert!(
            killed.elapsed() < std::time::Duration::from_secs(30),
            "requests still failing 30 s after the kill (replica promoted: {promoted:?})"
        );
    }
    let promoted = promoted.unwrap();
    let seen = load.finish(2000);
    legate.wait_log("cluster slot table changed");

    let mut slot_of = std::collections::HashMap::new();
    let mut on_victim = |k: &str| {
        let slot = *slot_of.entry(k.to_string()).or_insert_with(|| {
            Client::connect(seed)
                .call(&[b"CLUSTER", b"KEYSLOT", k.as_bytes()])
                .int()
        });
        victims.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    };
    assert!(
        seen.wrong.is_empty(),
        "wrong replies: {:?}",
        &seen.wrong[..seen.wrong.len().min(10)]
    );
    for (_, key, e) in &seen.failures {
        assert!(
            on_victim(key),
            "{key} failed ({e}) but its slot is not the killed master's"
        );
    }
    let ms = |t: Instant| t.duration_since(killed).as_millis();
    let first_failure = seen.failures.first().map(|f| f.0);
    let last_failure = seen.failures.last().map(|f| f.0);
    let resumed = seen
        .ok
        .iter()
        .find(|(at, k)| first_failure.is_some_and(|f| *at > f) && on_victim(k))
        .map(|(at, _)| ms(*at));
    assert!(
        seen.ok
            .iter()
            .any(|(at, k)| last_failure.is_none_or(|l| *at > l) && on_victim(k)),
        "the killed master's keys were not served after the last failure"
    );
    let failovers = metric_of(admin, "legate_cluster_failovers_total", &[]);
    println!(
        "cluster SIGKILL of a master under load through legate: replica promoted (ROLE master) at +{} ms; failure window {} ms (failures from +{} to +{} ms, first good round on its slots after them at +{} ms); {} failed requests, all on its slots; {} good SET+GET rounds, {} wrong; {failovers} failover(s) followed",
        promoted.as_millis(),
        match (first_failure, last_failure) {
            (Some(f), Some(l)) => l.duration_since(f).as_millis(),
            _ => 0,
        },
        first_failure.map(ms).unwrap_or(0),
        last_failure.map(ms).unwrap_or(0),
        resumed.unwrap_or(0),
        seen.failures.len(),
        seen.ok.len(),
        seen.wrong.len(),
    );
    assert_eq!(failovers, 1.0, "the failover is not counted");
}

/// The port of the master serving `key`, as the node `asked` sees it.
fn owner_of(asked: u16, key: &str) -> u16 {
    let slot = Client::connect(asked)
        .call(&[b"CLUSTER", b"KEYSLOT", key.as_bytes()])
        .int();
    let slots = Client::connect(asked).words("CLUSTER SLOTS");
    slots
        .items()
        .iter()
        .find(|r| (r.items()[0].int()..=r.items()[1].int()).contains(&slot))
        .map(|r| r.items()[2].items()[1].int() as u16)
        .unwrap()
}

#[test]
fn transactions_keep_to_one_slot_and_a_slot_moved_under_one_is_an_error_then_followed() {
    let nodes = cluster();
    let seed = nodes[0].port;
    // A table refreshed only every minute: legate learns of the move below from the
    // transaction's redirection alone.
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "c:\n  listen: 127.0.0.1:{port}\n  redis: true\n  timeout: 5000\n  cluster: ['127.0.0.1:{seed}']\n  cluster_refresh: 60000\n"
    );
    let config = common::config_file(&yaml);
    let _legate = common::legate_logged(&config, port, &["--admin", &format!("127.0.0.1:{admin}")]);
    let mut c = Client::connect(port);

    // One slot: the transaction runs, on the slot's master.
    assert_eq!(c.words("MULTI"), Value::Simple("OK".into()));
    assert_eq!(c.words("SET {u1}a 1"), Value::Simple("QUEUED".into()));
    assert_eq!(c.words("INCR {u1}b"), Value::Simple("QUEUED".into()));
    assert_eq!(c.words("EXEC").items().len(), 2);
    assert_eq!(c.words("GET {u1}b").text(), "1");
    // Keys of slots on different masters: refused in Redis Cluster's words, and nothing runs.
    let (a, b) = (0..)
        .map(|i| (format!("x{i}"), format!("y{i}")))
        .find(|(a, b)| owner_of(seed, a) != owner_of(seed, b))
        .unwrap();
    assert_eq!(c.words("MULTI"), Value::Simple("OK".into()));
    assert_eq!(c.call(&[b"SET", a.as_bytes(), b"1"]), Value::Simple("QUEUED".into()));
    assert_eq!(
        c.call(&[b"SET", b.as_bytes(), b"1"]),
        Value::Error("CROSSSLOT Keys in request don't hash to the same slot".into())
    );
    assert!(matches!(c.words("EXEC"), Value::Error(e) if e.starts_with("EXECABORT")));
    assert_eq!(c.call(&[b"EXISTS", a.as_bytes(), b.as_bytes()]).int(), 0);

    // Move an empty slot to another master behind legate's back.
    let key = "moving";
    let from = owner_of(seed, key);
    let to = nodes
        .iter()
        .map(|n| n.port)
        .find(|p| *p != from && is_master(*p))
        .unwrap();
    let id = |p: u16| Client::connect(p).words("CLUSTER MYID").text();
    let slot = Client::connect(seed)
        .call(&[b"CLUSTER", b"KEYSLOT", key.as_bytes()])
        .int()
        .to_string();
    let setslot = |on: u16, what: &str, node: u16| {
        let v = Client::connect(on).call(&[
            b"CLUSTER",
            b"SETSLOT",
            slot.as_bytes(),
            what.as_bytes(),
            id(node).as_bytes(),
        ]);
        assert_eq!(v, Value::Simple("OK".into()), "SETSLOT {what} on {on}");
    };
    setslot(to, "IMPORTING", from);
    setslot(from, "MIGRATING", to);
    setslot(to, "NODE", to);
    setslot(from, "NODE", to);
    // legate still thinks `from` serves the slot: the transaction's pin is there, and the node
    // redirects the queued command.
    assert_eq!(c.words("MULTI"), Value::Simple("OK".into()));
    let e = c.call(&[b"SET", key.as_bytes(), b"v"]);
    assert!(
        matches!(&e, Value::Error(m) if m.starts_with("TRYAGAIN the cluster moved slot")),
        "{e:?}"
    );
    assert!(matches!(c.words("EXEC"), Value::Error(e) if e.starts_with("EXECABORT")));
    // The redirection refreshed legate's table: the transaction, retried, runs on `to`.
    common::eventually("the retried transaction runs", || {
        assert_eq!(c.words("MULTI"), Value::Simple("OK".into()));
        let queued = c.call(&[b"SET", key.as_bytes(), b"v"]);
        let exec = c.words("EXEC");
        for v in [&queued, &exec] {
            assert!(
                !matches!(v, Value::Error(m) if m.starts_with("MOVED") || m.starts_with("ASK")),
                "a redirection reached the client: {v:?}"
            );
        }
        exec == Value::Array(vec![Value::Simple("OK".into())])
    });
    assert_eq!(
        Client::connect(to).call(&[b"GET", key.as_bytes()]),
        Value::Bulk(b"v".to_vec())
    );
    assert!(metric_of(admin, "legate_cluster_slot_table_generation", &[]) >= 2.0);
}

/// `calls=` of `cmdstat_<command>` in the node's INFO commandstats (0 when never called).
fn calls(port: u16, command: &str) -> i64 {
    let info = Client::connect(port).words("INFO commandstats").text();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[test]
fn read_from_replica_sends_reads_to_replicas_and_writes_to_masters() {
    let nodes = cluster();
    let seed = nodes[0].port;
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "c:\n  listen: 127.0.0.1:{port}\n  redis: true\n  timeout: 5000\n  cluster: ['127.0.0.1:{seed}']\n  cluster_refresh: 500\n  read_from: replica\n"
    );
    let config = common::config_file(&yaml);
    let _legate = common::legate_logged(&config, port, &["--admin", &format!("127.0.0.1:{admin}")]);
    for n in &nodes {
        assert_eq!(Client::connect(n.port).words("CONFIG RESETSTAT").text(), "OK");
    }
    let mut c = Client::connect(port);
    for i in 0..100 {
        let k = format!("r:{i}");
        assert_eq!(
            c.call(&[b"SET", k.as_bytes(), k.as_bytes()]),
            Value::Simple("OK".into())
        );
    }
    // Each read is answered by a replica once it has the write.
    for i in 0..100 {
        let k = format!("r:{i}");
        common::eventually("the replica has the write", || {
            c.call(&[b"GET", k.as_bytes()]) == Value::Bulk(k.clone().into_bytes())
        });
    }
    let (masters, replicas): (Vec<u16>, Vec<u16>) = nodes.iter().map(|n| n.port).partition(|p| is_master(*p));
    let sum = |ports: &[u16], cmd: &str| ports.iter().map(|p| calls(*p, cmd)).sum::<i64>();
    println!(
        "read_from: replica: GET calls on the masters {}, on the replicas {}; SET calls on the masters {}",
        sum(&masters, "get"),
        sum(&replicas, "get"),
        sum(&masters, "set")
    );
    assert_eq!(sum(&masters, "get"), 0, "a read went to a master");
    assert!(sum(&replicas, "get") >= 100, "the reads did not reach the replicas");
    assert_eq!(sum(&masters, "set"), 100, "the writes did not all land on the masters");
    assert_eq!(
        masters
            .iter()
            .map(|p| Client::connect(*p).words("DBSIZE").int())
            .sum::<i64>(),
        100
    );
    // Writes go on landing on the masters, and reads follow them.
    assert_eq!(c.words("INCR r:counter").int(), 1);
    common::eventually("the replica has the increment", || {
        c.words("GET r:counter") == Value::Bulk(b"1".to_vec())
    });
}

#[test]
fn the_adapter_scrapes_every_node_of_a_cluster_pool() {
    let nodes = cluster();
    let seed = nodes[0].port;
    let (port, admin) = (free_port(), free_port());
    let yaml = format!("c:\n  listen: 127.0.0.1:{port}\n  redis: true\n  cluster: ['127.0.0.1:{seed}']\n");
    let config = common::config_file(&yaml);
    let _legate = common::legate_logged(
        &config,
        port,
        &["--admin", &format!("127.0.0.1:{admin}"), "--scrape-interval", "0.2"],
    );
    let server = |p: u16| format!("server=\"127.0.0.1:{p}\"");
    // Masters and replicas alike, under the same names.
    common::eventually("every node is scraped", || {
        let (_, m) = common::http(admin, "GET", "/metrics");
        nodes.iter().all(|n| {
            common::metric(&m, "legate_backend_up", &[&server(n.port)]) == Some(1.0)
                && common::metric(&m, "legate_backend_uptime_seconds", &[&server(n.port)]).is_some()
        })
    });
    let (_, m) = common::http(admin, "GET", "/metrics");
    assert!(common::metric(&m, "legate_cluster_slot_table_generation", &[]).is_some_and(|g| g >= 1.0));
}

/// `redis_user`: every node connection, data and slot table, authenticates as the ACL user. The
/// nodes' `default` user may run the cluster's own commands but reads and writes no key and
/// cannot ask for the slot table, so legate works only as `app`.
#[test]
fn an_acl_user_reaches_every_node() {
    let nodes = cluster_with(&[
        "--user",
        "default",
        "on",
        "nopass",
        "~*",
        "&*",
        "+@all",
        "-@read",
        "-@write",
        "-cluster|shards",
        "-cluster|slots",
        "--user",
        "app",
        "on",
        ">pw",
        "~*",
        "&*",
        "+@all",
    ]);
    let mut plain = Client::connect(nodes[0].port);
    let refused = plain.words("CLUSTER SHARDS").text();
    assert!(refused.contains("NOPERM"), "{refused}");
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "c:\n  listen: 127.0.0.1:{port}\n  redis: true\n  timeout: 5000\n  cluster: ['127.0.0.1:{}']\n  redis_auth: pw\n  redis_user: app\n",
        nodes[0].port
    );
    let config = common::config_file(&yaml);
    let _legate = common::legate_logged(&config, port, &["--admin", &format!("127.0.0.1:{admin}")]);
    let mut c = Client::connect(port);
    c.expect(&common::cmd("AUTH app pw"), b"+OK\r\n");
    for i in 0..50 {
        c.expect(&common::cmd(&format!("SET acl{i} v{i}")), b"+OK\r\n");
    }
    for i in 0..50 {
        let v = format!("v{i}");
        c.expect(
            &common::cmd(&format!("GET acl{i}")),
            format!("${}\r\n{v}\r\n", v.len()).as_bytes(),
        );
    }
}

/// A reload switches a pool between kinds on the same address: a static shard, then the
/// cluster, then the shard again, with one client connection kept throughout.
#[test]
fn a_reload_switches_a_pool_between_a_static_shard_and_the_cluster() {
    let nodes = cluster();
    let shard = common::redis_server();
    let (port, admin) = (free_port(), free_port());
    let static_yaml = format!(
        "k:\n  listen: 127.0.0.1:{port}\n  redis: true\n  servers: ['127.0.0.1:{}:1']\n",
        shard.port
    );
    let cluster_yaml = format!(
        "k:\n  listen: 127.0.0.1:{port}\n  redis: true\n  timeout: 5000\n  cluster: ['127.0.0.1:{}']\n",
        nodes[0].port
    );
    let config = common::config_file(&static_yaml);
    let _legate = common::legate_logged(&config, port, &["--admin", &format!("127.0.0.1:{admin}")]);
    let mut c = Client::connect(port);
    let get = |c: &mut Client, k: &str| c.call(&[b"GET", k.as_bytes()]);
    c.expect(&common::cmd("SET where static"), b"+OK\r\n");
    // The same key straight on the cluster, with a value of its own.
    let owner = owner_of(nodes[0].port, "where");
    Client::connect(owner).expect(&common::cmd("SET where cluster"), b"+OK\r\n");

    let reload = |yaml: &str| {
        std::fs::write(&config, yaml).unwrap();
        let (code, body) = common::http(admin, "POST", "/reload");
        assert_eq!(code, 200, "{body}");
    };
    reload(&cluster_yaml);
    assert_eq!(
        get(&mut c, "where").text(),
        "cluster",
        "the reload made the pool a cluster pool"
    );
    for i in 0..100 {
        c.expect(&common::cmd(&format!("SET moved:{i} {i}")), b"+OK\r\n");
    }
    let on_masters: i64 = nodes
        .iter()
        .filter(|n| is_master(n.port))
        .map(|n| Client::connect(n.port).words("DBSIZE").int())
        .sum();
    assert_eq!(on_masters, 101, "the writes went to the cluster's masters");
    assert_eq!(
        Client::connect(shard.port).words("DBSIZE").int(),
        1,
        "and none to the shard"
    );

    reload(&static_yaml);
    assert_eq!(get(&mut c, "where").text(), "static", "back to the static shard");
    assert_eq!(get(&mut c, "moved:7"), Value::Null);
}
