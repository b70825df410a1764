//! TLS and ACL users behind the topology sources: a Redis Cluster whose six nodes speak only TLS
//! (bus and replication included), and redis-sentinels that speak only TLS and know legate as an
//! ACL user, over masters that speak only TLS. legate's slot-table and sentinel connections use
//! the pool's `tls:` as its data connections do; a plain client through legate checks every
//! reply, across a failover in each.

mod common;

use common::pki::{pki, Pki};
use common::{free_port, require, run, Client, Proc};
use std::process::Command;

/// A free port whose cluster bus port (+10 000) is free too, below the ephemeral range.
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 22_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// redis-cli over TLS to `port`, output as text.
fn cli(p: &Pki, port: u16, args: &[&str]) -> String {
    p.cli(port, args)
}

/// Six TLS-only cluster nodes (`tls-cluster yes`), three masters with a replica each, agreed.
fn tls_cluster(p: &Pki) -> Vec<Proc> {
    let nodes: Vec<Proc> = (0..6)
        .map(|_| {
            let port = cluster_port();
            let dir = common::scratch_dir();
            let mut args = p.redis_tls_args(port);
            args.extend(
                [
                    "--tls-cluster",
                    "yes",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &dir.join("nodes.conf").display().to_string(),
                    "--cluster-node-timeout",
                    "2000",
                    "--repl-diskless-sync-delay",
                    "0",
                ]
                .map(String::from),
            );
            common::redis_server_with(port, &args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .collect();
    let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let mut create = Command::new(require("redis-cli", "redis-tools"));
    create
        .args(&p.cli_args(nodes[0].port)[..7])
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "1", "--cluster-yes"]);
    run(&mut create);
    for n in &nodes {
        common::eventually("every node sees the cluster ok, and its replicas in sync", || {
            let info = cli(p, n.port, &["INFO", "replication"]);
            cli(p, n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
                && (info.contains("role:master") || info.contains("master_link_status:up"))
                && cli(p, n.port, &["CLUSTER", "NODES"]).matches("slave").count() == 3
        });
    }
    nodes
}

fn role(p: &Pki, port: u16) -> String {
    cli(p, port, &["ROLE"]).lines().next().unwrap_or_default().to_string()
}

/// SET and GET `n` keys through legate; every reply checked.
fn write_and_read(c: &mut Client, prefix: &str, n: usize) {
    for i in 0..n {
        let (k, v) = (format!("{prefix}:{i}"), format!("v{i}"));
        assert_eq!(c.call(&[b"SET", k.as_bytes(), v.as_bytes()]).text(), "OK", "SET {k}");
        assert_eq!(c.call(&[b"GET", k.as_bytes()]).text(), v, "GET {k}");
    }
}

#[test]
fn a_cluster_of_tls_only_nodes_through_its_slot_table_and_a_failover() {
    let p = pki();
    let nodes = tls_cluster(&p);
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "c:\n  listen: 127.0.0.1:{port}\n  redis: true\n  timeout: 5000\n  cluster: ['127.0.0.1:{}']\n  cluster_refresh: 1000\n  tls:\n    ca_file: {}\n",
        nodes[0].port,
        p.ca.display()
    );
    let config = common::config_file(&yaml);
    let legate = common::legate_logged(&config, port, &["--admin", &format!("127.0.0.1:{admin}")]);
    legate.wait_log("cluster of 3 masters");

    let mut c = Client::connect(port);
    write_and_read(&mut c, "t", 200);
    // Multi-key commands split by slot, over TLS to every master.
    let got = c.words("MGET t:0 t:1 t:2 t:3 t:199");
    let got: Vec<String> = got.items().iter().map(|v| v.text()).collect();
    assert_eq!(got, ["v0", "v1", "v2", "v3", "v199"]);
    let masters: Vec<u16> = nodes
        .iter()
        .map(|n| n.port)
        .filter(|&n| role(&p, n) == "master")
        .collect();
    assert_eq!(masters.len(), 3);
    let counts: Vec<u64> = masters
        .iter()
        .map(|&m| cli(&p, m, &["DBSIZE"]).trim().parse().unwrap())
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 200, "{counts:?}");
    assert!(counts.iter().all(|&n| n > 0), "some master took no key: {counts:?}");

    // A replica takes over its master's slots: legate learns the new table over TLS (the
    // nodes announce their TLS ports) and writes land on the promoted node.
    let replica = nodes.iter().map(|n| n.port).find(|&n| role(&p, n) == "slave").unwrap();
    assert_eq!(cli(&p, replica, &["CLUSTER", "FAILOVER"]).trim(), "OK");
    common::eventually("the replica is a master", || role(&p, replica) == "master");
    common::eventually("writes through legate reach the promoted node", || {
        let before: u64 = cli(&p, replica, &["DBSIZE"]).trim().parse().unwrap();
        for i in 0..50 {
            let k = format!("after:{i}");
            if c.call(&[b"SET", k.as_bytes(), b"x"]).text() != "OK" {
                return false;
            }
        }
        cli(&p, replica, &["DBSIZE"]).trim().parse::<u64>().unwrap() > before
    });
    write_and_read(&mut c, "t", 200);
    drop(legate);
}

/// A redis-sentinel speaking only TLS, whose `default` user needs `defpw` (the sentinels use it
/// among themselves) and which knows legate as the ACL user `legate`.
fn tls_acl_sentinel(p: &Pki, port: u16, masters: &[(&str, u16)]) -> Proc {
    let mut settings: String = p
        .redis_tls_args(port)
        .chunks(2)
        .map(|kv| format!("{} {}\n", kv[0].trim_start_matches("--"), kv[1]))
        .collect();
    settings += "requirepass defpw\nsentinel sentinel-pass defpw\nuser legate on >legatepw ~* &* +@all\n";
    common::redis_sentinel(port, &settings, masters)
}

#[test]
fn tls_only_sentinels_with_an_acl_user_over_tls_only_masters() {
    require("redis-sentinel", "redis-sentinel");
    let p = pki();
    let tls_server = |extra: &[&str]| {
        let port = free_port();
        let mut args = p.redis_tls_args(port);
        args.extend(extra.iter().map(|s| s.to_string()));
        common::redis_server_with(port, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (ma, mb) = (tls_server(&[]), tls_server(&[]));
    let ra = tls_server(&["--replicaof", "127.0.0.1", &ma.port.to_string()]);
    let _rb = tls_server(&["--replicaof", "127.0.0.1", &mb.port.to_string()]);
    common::eventually("the replica is in sync", || {
        cli(&p, ra.port, &["INFO", "replication"]).contains("master_link_status:up")
    });
    let masters = [("ma", ma.port), ("mb", mb.port)];
    let mut sentinels: Vec<Proc> = (0..3).map(|_| tls_acl_sentinel(&p, free_port(), &masters)).collect();
    let ask = |s: u16, args: &[&str]| {
        let mut all = vec!["--user", "legate", "--pass", "legatepw", "--no-auth-warning"];
        all.extend(args);
        cli(&p, s, &all)
    };
    for s in &sentinels {
        common::eventually("the sentinels know each other and the replica of ma", || {
            let m = ask(s.port, &["SENTINEL", "MASTER", "ma"]);
            let lines: Vec<&str> = m.lines().collect();
            let n = |k: &str| {
                lines
                    .iter()
                    .position(|l| *l == k)
                    .and_then(|i| lines.get(i + 1))
                    .copied()
            };
            n("num-other-sentinels") == Some("2") && n("num-slaves") == Some("1")
        });
    }

    let list: Vec<String> = sentinels.iter().map(|s| format!("'127.0.0.1:{}'", s.port)).collect();
    let pool = |user: &str| {
        format!(
            "  redis: true\n  hash: md5\n  timeout: 1000\n  sentinels: [{}]\n  sentinel_interval: 1000\n{user}  sentinel_auth: legatepw\n  tls:\n    ca_file: {}\n  servers: ['ma:1', 'mb:1']\n",
            list.join(", "),
            p.ca.display()
        )
    };
    // Without the user, the password is the default user's, and the sentinels refuse it.
    let refused = common::config_file(&format!("s:\n  listen: 127.0.0.1:{}\n{}", free_port(), pool("")));
    let out = Command::new(env!("CARGO_BIN_EXE_legate"))
        .arg("-c")
        .arg(&refused)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("AUTH refused"), "{err}");

    let (port, admin) = (free_port(), free_port());
    let config = common::config_file(&format!(
        "s:\n  listen: 127.0.0.1:{port}\n{}",
        pool("  sentinel_user: legate\n")
    ));
    let legate = common::legate_logged(&config, port, &["--admin", &format!("127.0.0.1:{admin}")]);
    println!("{} (ma: {}, mb: {})", legate.wait_log("masters"), ma.port, mb.port);
    let mut c = Client::connect(port);
    write_and_read(&mut c, "s", 100);
    let on_a: u64 = cli(&p, ma.port, &["DBSIZE"]).trim().parse().unwrap();
    let on_b: u64 = cli(&p, mb.port, &["DBSIZE"]).trim().parse().unwrap();
    assert!(on_a > 0 && on_b > 0 && on_a + on_b == 100, "ma {on_a}, mb {on_b}");

    // A failover: legate hears +switch-master on its TLS subscriptions and follows.
    assert_eq!(ask(sentinels[0].port, &["SENTINEL", "FAILOVER", "ma"]).trim(), "OK");
    legate.wait_log("master moved");
    common::eventually("writes through legate reach the promoted replica", || {
        let before: u64 = cli(&p, ra.port, &["DBSIZE"]).trim().parse().unwrap();
        for i in 0..50 {
            let k = format!("after:{i}");
            if c.call(&[b"SET", k.as_bytes(), b"x"]).text() != "OK" {
                return false;
            }
        }
        cli(&p, ra.port, &["DBSIZE"]).trim().parse::<u64>().unwrap() > before
    });
    write_and_read(&mut c, "s", 100);
    assert_eq!(role(&p, ra.port), "master");

    // legate_sentinel_up: 1 for each sentinel that answered the last check, 0 once one is gone.
    let up = |s: u16| {
        let (_, m) = common::http(admin, "GET", "/metrics");
        common::metric(&m, "legate_sentinel_up", &[&format!("sentinel=\"127.0.0.1:{s}\"")])
    };
    for s in &sentinels {
        common::eventually("every sentinel is up", || up(s.port) == Some(1.0));
    }
    let gone = sentinels.pop().unwrap().port;
    common::eventually("a stopped sentinel is down", || up(gone) == Some(0.0));
    assert!(sentinels.iter().all(|s| up(s.port) == Some(1.0)));
}
