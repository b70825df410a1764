//! Sentinel pools on real servers: two masters with a replica each, three redis-sentinels, and
//! a plain client checking every reply through legate while a master is SIGKILLed. Writes must
//! resume on the promoted replica without restarting legate, only that master's keys may fail
//! meanwhile, and keys stay with their master names. With `read_from`, reads go to the replicas
//! the sentinels list (counted in each server's INFO commandstats) and follow a replica's
//! SIGKILL and a failover with bounded failures.

mod common;

use common::resp::Value;
use common::{free_port, require, Client, Proc};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A redis-sentinel monitoring `masters` (name, port) with quorum 2 and short failover timers.
fn sentinel(port: u16, masters: &[(&str, u16)]) -> Proc {
    common::redis_sentinel(port, &format!("port {port}\n"), masters)
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

/// `cmdstat_<command>` calls in the server's INFO commandstats (0 when it never ran).
fn calls(port: u16, command: &str) -> u64 {
    let info = Client::connect(port).words("INFO commandstats").text();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|l| l.split(',').next())
        .map(|n| n.parse().unwrap())
        .unwrap_or(0)
}

/// Keys read in a loop by the load threads: never written while they run.
fn read_load(port: u16, keys: Arc<Vec<String>>, t: usize, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let mut c = Client::connect(port);
    let mut i = t;
    while !stop.load(Ordering::Relaxed) {
        i += 7;
        let key = &keys[i % keys.len()];
        match c.call(&[b"GET", key.as_bytes()]) {
            Value::Bulk(v) if v == format!("v:{key}").as_bytes() => {
                seen.lock().unwrap().ok.push((Instant::now(), key.clone()));
            }
            Value::Error(e) => seen.lock().unwrap().failures.push((Instant::now(), key.clone(), e)),
            other => seen.lock().unwrap().wrong.push(format!("GET {key}: {other:?}")),
        }
    }
}

/// Run `read_load` on 2 threads per port around `event`, until reads have gone 2 s without a
/// failure on any port (failing the test when they still fail `limit` after the event). What
/// each port's reads saw, and when the event was.
fn reads_through(
    ports: &[u16],
    keys: &Arc<Vec<String>>,
    limit: Duration,
    event: impl FnOnce(),
) -> (Vec<Seen>, Instant) {
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Vec<Arc<Mutex<Seen>>> = ports.iter().map(|_| Arc::default()).collect();
    let threads: Vec<_> = (0..2 * ports.len())
        .map(|t| {
            let (keys, stop, seen, port) = (
                keys.clone(),
                stop.clone(),
                seen[t % ports.len()].clone(),
                ports[t % ports.len()],
            );
            std::thread::spawn(move || read_load(port, keys, t, stop, seen))
        })
        .collect();
    common::eventually("the read load runs", || {
        seen.iter().all(|s| s.lock().unwrap().ok.len() > 500)
    });
    event();
    let at = Instant::now();
    let last_failure = || {
        seen.iter()
            .filter_map(|s| s.lock().unwrap().failures.last().map(|f| f.0))
            .max()
    };
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if last_failure().unwrap_or(at).elapsed() > Duration::from_secs(2) && at.elapsed() > Duration::from_secs(2) {
            break;
        }
        assert!(at.elapsed() < limit, "reads still failing {limit:?} after the event");
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let seen: Vec<Seen> = seen.iter().map(|s| std::mem::take(&mut *s.lock().unwrap())).collect();
    for (s, port) in seen.iter().zip(ports) {
        assert!(
            s.wrong.is_empty(),
            "wrong replies through {port}: {:?}",
            &s.wrong[..s.wrong.len().min(10)]
        );
    }
    (seen, at)
}

#[test]
fn replica_reads_follow_the_sentinels_replicas() {
    require("redis-sentinel", "redis-sentinel");
    let (pa, pb, ra1, ra2, rb) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let _master_a = common::redis_server_with(pa, &[]);
    let _master_b = common::redis_server_with(pb, &[]);
    let mut replica_a1 = common::redis_server_with(ra1, &["--replicaof", "127.0.0.1", &pa.to_string()]);
    let _replica_a2 = common::redis_server_with(ra2, &["--replicaof", "127.0.0.1", &pa.to_string()]);
    let _replica_b = common::redis_server_with(rb, &["--replicaof", "127.0.0.1", &pb.to_string()]);
    for r in [ra1, ra2, rb] {
        common::eventually("the replicas are in sync", || {
            Client::connect(r)
                .words("INFO replication")
                .text()
                .contains("master_link_status:up")
        });
    }
    let masters = [("ma", pa, 2), ("mb", pb, 1)];
    let sentinels: Vec<Proc> = (0..3)
        .map(|_| sentinel(free_port(), &[("ma", pa), ("mb", pb)]))
        .collect();
    for s in &sentinels {
        for (name, _, replicas) in masters {
            common::eventually("the sentinels know each other and the replicas", || {
                let m = Client::connect(s.port).call(&[b"SENTINEL", b"MASTER", name.as_bytes()]);
                let n = |k: &str| field(&m, k).map(|v| v.text().parse::<i64>().unwrap_or(0));
                n("num-other-sentinels") == Some(2) && n("num-slaves") == Some(replicas)
            });
        }
    }

    // Three pools over the same sentinels, one per read_from.
    let (port, port_p, port_m, admin) = (free_port(), free_port(), free_port(), free_port());
    let list: Vec<String> = sentinels.iter().map(|s| format!("'127.0.0.1:{}'", s.port)).collect();
    let pool = |name: &str, port: u16, read_from: &str| {
        format!(
            "{name}:\n  listen: 127.0.0.1:{port}\n  redis: true\n  hash: md5\n  distribution: ketama\n  timeout: 1000\n  sentinels: [{}]\n  sentinel_interval: 500\n  read_from: {read_from}\n  servers: ['ma:1', 'mb:1']\n",
            list.join(", ")
        )
    };
    let config = common::config_file(
        &(pool("s", port, "replica") + &pool("p", port_p, "prefer_replica") + &pool("m", port_m, "master")),
    );
    let legate = common::legate_logged(
        &config,
        port,
        &["--admin", &format!("127.0.0.1:{admin}"), "--scrape-interval", "0.2"],
    );
    // legate logs each pool's replicas whenever they change: wait for a line logged after
    // `since` (a count of log lines).
    let mark = || legate.lines.lock().unwrap().len();
    let replicas_line = |pool: &str, ma: &[u16], mb: &[u16], since: usize| {
        let list = |ports: &[u16]| {
            ports
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let want = format!("replicas ma=[{}], mb=[{}]", list(ma), list(mb));
        let pool = format!("pool={pool}");
        common::eventually(&format!("legate logs {pool} {want}"), || {
            legate
                .lines
                .lock()
                .unwrap()
                .iter()
                .skip(since)
                .any(|l| l.contains(&want) && l.contains(&pool))
        });
    };
    let mut a_sorted = [ra1, ra2];
    a_sorted.sort_by_key(|p| p.to_string());
    replicas_line("s", &a_sorted, &[rb], 0);
    replicas_line("m", &a_sorted, &[rb], 0);
    let (_, shown) = common::http(admin, "GET", "/config");
    let want = format!(
        "\"replicas\":{{\"ma\":[{}],\"mb\":[\"127.0.0.1:{rb}\"]}}",
        a_sorted.map(|p| format!("\"127.0.0.1:{p}\"")).join(",")
    );
    assert!(shown.contains(&want), "/config lacks {want}: {shown}");

    // Writes go to the masters.
    let mut c = Client::connect(port);
    let keys: Arc<Vec<String>> = Arc::new((0..200).map(|i| format!("r:{i}")).collect());
    let mut on_a = std::collections::HashSet::new();
    for k in keys.iter() {
        let v = format!("v:{k}");
        assert_eq!(
            c.call(&[b"SET", k.as_bytes(), v.as_bytes()]),
            Value::Simple("OK".into())
        );
        let (a, b) = (holds(pa, k), holds(pb, k));
        assert!(a != b, "{k} is on both masters or neither");
        if a {
            on_a.insert(k.clone());
        }
    }
    let n_a = on_a.len() as u64;
    assert!(
        n_a > 20 && n_a < 180,
        "keys not spread over both names: {n_a} of 200 on ma"
    );
    let dbsize = |p: u16| Client::connect(p).words("DBSIZE").int();
    common::eventually("the replicas have every key", || {
        dbsize(ra1) == dbsize(pa) && dbsize(ra2) == dbsize(pa) && dbsize(rb) == dbsize(pb)
    });

    // GETs go to the replicas, in turn; none to the masters.
    let gets = |ports: &[u16]| ports.iter().map(|p| calls(*p, "get")).collect::<Vec<_>>();
    // GET every key through `client`, checking each value: the GETs each of `ports` took.
    let read_all = |client: &mut Client, ports: &[u16]| -> Vec<u64> {
        let before = gets(ports);
        for k in keys.iter() {
            assert_eq!(
                client.call(&[b"GET", k.as_bytes()]),
                Value::Bulk(format!("v:{k}").into_bytes())
            );
        }
        gets(ports).iter().zip(&before).map(|(a, b)| a - b).collect()
    };
    let all = [pa, pb, ra1, ra2, rb];
    let d = read_all(&mut c, &all);
    println!("GETs by server with read_from: replica (pa pb ra1 ra2 rb): {d:?}");
    assert_eq!((d[0], d[1]), (0, 0), "GETs reached the masters");
    assert_eq!(d[2] + d[3], n_a, "ma's GETs are not all on its replicas");
    assert!(d[2] > 0 && d[3] > 0, "ma's replicas do not take turns: {d:?}");
    assert_eq!(d[4], 200 - n_a, "mb's GETs are not on its replica");
    // The pool with read_from: master reads from the masters.
    let mut m = Client::connect(port_m);
    let d = read_all(&mut m, &all);
    assert_eq!(d, vec![n_a, 200 - n_a, 0, 0, 0], "read_from: master");
    // Both pools' replicas are scraped, read_from or not.
    common::eventually("the adapter scrapes every replica", || {
        let (_, metrics) = common::http(admin, "GET", "/metrics");
        [("s", ra1), ("s", rb), ("m", ra1), ("m", ra2), ("m", rb)]
            .iter()
            .all(|(pool, p)| {
                common::metric(
                    &metrics,
                    "legate_backend_up",
                    &[&format!("pool=\"{pool}\""), &format!("server=\"127.0.0.1:{p}\"")],
                ) == Some(1.0)
            })
    });

    // SIGKILL of a replica under read load: its in-flight reads may fail, then the other
    // replica takes them (until the sentinels drop it, and after).
    let ms = |t: Instant, from: Instant| t.duration_since(from).as_millis();
    let since = mark();
    let (seen, killed) = reads_through(&[port, port_p], &keys, Duration::from_secs(10), || {
        replica_a1.child.kill().unwrap();
        let _ = replica_a1.child.wait();
    });
    for (s, pool) in seen.iter().zip(["replica", "prefer_replica"]) {
        for (_, k, e) in &s.failures {
            assert!(on_a.contains(k), "{k} failed ({e}) but is not ma's");
        }
        println!(
            "replica SIGKILL under read load (read_from: {pool}): {} failed GETs (last at +{} ms: {:?}), {} good",
            s.failures.len(),
            s.failures.last().map(|f| ms(f.0, killed)).unwrap_or(0),
            s.failures.last().map(|f| &f.2),
            s.ok.len()
        );
        assert!(
            s.failures.len() <= 8 && s.failures.last().is_none_or(|f| ms(f.0, killed) < 2000),
            "reads failed past the ejection of the dead replica: {:?}",
            s.failures.last()
        );
    }
    replicas_line("s", &[ra2], &[rb], since);
    let live = [pa, pb, ra2, rb];
    let d = read_all(&mut c, &live);
    assert_eq!(
        d,
        vec![0, 0, n_a, 200 - n_a],
        "after the replica's death (pa pb ra2 rb)"
    );

    // A failover of ma under read load: its promoted replica becomes its master and takes no
    // more replica reads; the old master takes them once the sentinels list it as a synced
    // replica. Meanwhile ma has no replica up: read_from: replica answers an error, and
    // prefer_replica reads from the master.
    let since = mark();
    let (seen, failover) = reads_through(&[port, port_p], &keys, Duration::from_secs(40), || {
        let said = Client::connect(sentinels[0].port).call(&[b"SENTINEL", b"FAILOVER", b"ma"]);
        assert_eq!(said, Value::Simple("OK".into()));
    });
    legate.wait_log("master moved");
    for (s, pool) in seen.iter().zip(["replica", "prefer_replica"]) {
        for (_, k, e) in &s.failures {
            assert!(on_a.contains(k), "{k} failed ({e}) but is not ma's");
        }
        println!(
            "SENTINEL FAILOVER under read load (read_from: {pool}): {} failed GETs from +{} to +{} ms ({:?}), {} good",
            s.failures.len(),
            s.failures.first().map(|f| ms(f.0, failover)).unwrap_or(0),
            s.failures.last().map(|f| ms(f.0, failover)).unwrap_or(0),
            s.failures.last().map(|f| &f.2),
            s.ok.len()
        );
    }
    // Sentinel kills the clients of the replica it promotes: the reads in flight there fail
    // (one per load thread), and no others.
    assert!(
        seen[1].failures.len() <= 4 && seen[1].failures.iter().all(|(_, _, e)| e.contains("lost")),
        "prefer_replica reads failed in a failover: {:?}",
        &seen[1].failures[..seen[1].failures.len().min(5)]
    );
    replicas_line("s", &[pa], &[rb], since);
    let d = read_all(&mut c, &live);
    assert_eq!(d, vec![n_a, 0, 0, 200 - n_a], "after the failover (pa pb ra2 rb)");
    // A reload makes the read_from: master pool read from the replicas it already knows.
    std::fs::write(
        &config,
        pool("s", port, "replica") + &pool("p", port_p, "prefer_replica") + &pool("m", port_m, "replica"),
    )
    .unwrap();
    let (code, body) = common::http(admin, "POST", "/reload");
    assert_eq!(code, 200, "{body}");
    let k = on_a.iter().next().unwrap().clone();
    common::eventually("the reloaded pool reads from the replicas", || {
        let before = gets(&live);
        let r = Client::connect(port_m).call(&[b"GET", k.as_bytes()]);
        let d: Vec<u64> = gets(&live).iter().zip(&before).map(|(a, b)| a - b).collect();
        r == Value::Bulk(format!("v:{k}").into_bytes()) && d == [1, 0, 0, 0]
    });
    let d = read_all(&mut m, &live);
    assert_eq!(d, vec![n_a, 0, 0, 200 - n_a], "the reloaded pool (pa pb ra2 rb)");

    // Writes go to ma's new master.
    assert_eq!(c.call(&[b"SET", b"r:0", b"after"]), Value::Simple("OK".into()));
    let owner = if on_a.contains("r:0") { ra2 } else { pb };
    assert_eq!(
        Client::connect(owner).call(&[b"GET", b"r:0"]),
        Value::Bulk(b"after".to_vec())
    );
}
