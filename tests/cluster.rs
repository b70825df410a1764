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
                    "--dir",
                    &dir.display().to_string(),
                ],
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
    failures: Vec<String>,
    wrong: Vec<String>,
}

fn load(port: u16, t: usize, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>, rounds: Arc<AtomicU64>) {
    let mut c = Client::connect(port);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let key = format!("load:{t}:{}", i % 200);
        let val = format!("{t}-{i}");
        match c.call(&[b"SET", key.as_bytes(), val.as_bytes()]) {
            Value::Simple(s) if s == "OK" => {}
            Value::Error(e) => {
                seen.lock().unwrap().failures.push(format!("SET {key}: {e}"));
                continue;
            }
            other => {
                seen.lock().unwrap().wrong.push(format!("SET {key}: {other:?}"));
                continue;
            }
        }
        match c.call(&[b"GET", key.as_bytes()]) {
            Value::Bulk(v) if v == val.as_bytes() => {
                rounds.fetch_add(1, Ordering::Relaxed);
            }
            Value::Error(e) => seen.lock().unwrap().failures.push(format!("GET {key}: {e}")),
            other => seen
                .lock()
                .unwrap()
                .wrong
                .push(format!("GET {key}: {other:?}, want {val}")),
        }
    }
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

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let rounds = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (stop, seen, rounds) = (stop.clone(), seen.clone(), rounds.clone());
            std::thread::spawn(move || load(port, t, stop, seen, rounds))
        })
        .collect();
    common::eventually("the load runs", || rounds.load(Ordering::Relaxed) > 2000);
    let before = rounds.load(Ordering::Relaxed);
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
    let after = rounds.load(Ordering::Relaxed);
    common::eventually("the load goes on after the resharding", || {
        rounds.load(Ordering::Relaxed) > after + 2000
    });
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let seen = seen.lock().unwrap();
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
    assert!(
        m("moved") + m("ask") > 0.0,
        "no redirection was followed: the test moved nothing"
    );
    legate.wait_log("cluster slot table changed");
}
