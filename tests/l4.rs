//! L4 pools (`protocol: tcp`): a real protocol (Redis, spoken by redis-cli and a raw client)
//! forwarded untouched, with each balancing policy, failover, ejection, TLS, reload and metrics.

mod common;

use common::pki::pki;
use common::{
    cmd, config_file, eventually, free_port, http, legate, legate_logged, metric, redis_server, require, run, Client,
};
use std::collections::HashSet;
use std::process::Command;

/// An L4 pool on `port` over `servers`, with extra settings.
fn tcp_pool(name: &str, port: u16, servers: &[u16], extra: &str) -> String {
    let mut y = format!("{name}:\n  listen: 127.0.0.1:{port}\n  protocol: tcp\n{extra}  servers:\n");
    for s in servers {
        y += &format!("    - 127.0.0.1:{s}:1\n");
    }
    y
}

/// Which backend a fresh connection through the pool lands on: Redis answers with its own port.
fn backend_port(c: &mut Client) -> u16 {
    c.send(&cmd("CONFIG GET port"));
    let lines: Vec<String> = (0..5).map(|_| String::from_utf8(c.line()).unwrap()).collect();
    assert_eq!(lines[..3], ["*2\r\n", "$4\r\n", "port\r\n"], "{lines:?}");
    lines[4].trim().parse().unwrap()
}

fn landing(port: u16) -> u16 {
    backend_port(&mut Client::connect(port))
}

#[test]
fn round_robin_forwards_redis_cli_untouched() {
    let (a, b) = (redis_server(), redis_server());
    let port = free_port();
    let _l = legate(
        &tcp_pool("rr", port, &[a.port, b.port], "  distribution: round_robin\n"),
        port,
    );
    // Strict alternation, but for one step: legate's own start-up probe (a connection to the
    // port) takes a turn too, at a moment the test does not control.
    let seen: Vec<u16> = (0..12).map(|_| landing(port)).collect();
    let alternations = seen.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(alternations >= 10, "round robin did not alternate: {seen:?}");
    // Commands legate's Redis pools refuse pass through an L4 pool: it does not parse.
    let cli = require("redis-cli", "redis-tools");
    let out = run(Command::new(&cli).args(["-p", &port.to_string(), "MULTI"]));
    assert_eq!(out.trim(), "OK");
    let mut c = Client::connect(port);
    c.expect(&cmd("MULTI"), b"+OK\r\n");
    c.expect(&cmd("SET x 1"), b"+QUEUED\r\n");
    c.expect(&cmd("EXEC"), b"*1\r\n+OK\r\n");
    c.expect(&cmd("GET x"), b"$1\r\n1\r\n");
    // A 2 MB value both ways.
    let big = "v".repeat(2 << 20);
    c.expect(&cmd(&format!("SET big {big}")), b"+OK\r\n");
    c.send(&cmd("GET big"));
    assert_eq!(c.exact(big.len() + 11).len(), big.len() + 11);
}

#[test]
fn ketama_on_the_client_address_sticks_and_random_spreads() {
    let servers = [redis_server(), redis_server(), redis_server()];
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    let (sticky, random) = (free_port(), free_port());
    let yaml = tcp_pool("sticky", sticky, &ports, "  distribution: ketama\n  hash: md5\n")
        + &tcp_pool("random", random, &ports, "  distribution: random\n");
    let _l = legate(&yaml, sticky);
    let first = landing(sticky);
    for _ in 0..10 {
        assert_eq!(
            landing(sticky),
            first,
            "one client address must always reach one server"
        );
    }
    let spread: HashSet<u16> = (0..40).map(|_| landing(random)).collect();
    assert!(
        spread.len() >= 2,
        "random used one server for 40 connections: {spread:?}"
    );
}

#[test]
fn least_connections_avoids_the_busy_server() {
    let (a, b) = (redis_server(), redis_server());
    let port = free_port();
    let _l = legate(
        &tcp_pool("lc", port, &[a.port, b.port], "  distribution: least_connections\n"),
        port,
    );
    // legate's start-up probe (a connection to the port) holds a server for a moment: let it go.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut held = Vec::new();
    let mut busy = Vec::new();
    for _ in 0..4 {
        let mut c = Client::connect(port);
        busy.push(backend_port(&mut c));
        held.push(c);
    }
    // With every connection still open, they split evenly.
    assert_eq!(busy.iter().filter(|&&p| p == a.port).count(), 2, "{busy:?}");
    // Close both on one server: the next two go there.
    let idle = busy[0];
    let mut kept = Vec::new();
    for (c, p) in held.into_iter().zip(&busy) {
        if *p != idle {
            kept.push(c);
        }
    }
    eventually("closed connections are counted down", || {
        let mut c = Client::connect(port);
        backend_port(&mut c) == idle
    });
}

#[test]
fn failover_to_the_next_server_and_ejection() {
    let live = redis_server();
    let dead = free_port(); // nothing listens here
    let (port, admin) = (free_port(), free_port());
    let config = config_file(&tcp_pool(
        "fo",
        port,
        &[dead, live.port],
        "  distribution: round_robin\n  auto_eject_hosts: true\n  server_failure_limit: 2\n  server_retry_timeout: 60000\n",
    ));
    let l = legate_logged(&config, port, &["--admin", &format!("127.0.0.1:{admin}")]);
    for _ in 0..10 {
        assert_eq!(
            landing(port),
            live.port,
            "a connection was not failed over to the live server"
        );
    }
    l.wait_log("ejected");
    let (_, m) = http(admin, "GET", "/metrics");
    let dead_label = format!("server=\"127.0.0.1:{dead}\"");
    let connect_errors = metric(&m, "legate_server_errors_total", &[&dead_label, "kind=\"connect\""]).unwrap();
    // Ejected after 2 failures: later connections no longer try the dead server first.
    assert!((2.0..=3.0).contains(&connect_errors), "{connect_errors}");
    let ejections = metric(&m, "legate_server_ejections_total", &[&dead_label]).unwrap();
    assert_eq!(ejections, 1.0);
}

#[test]
fn tcp_pool_with_tls_both_sides_and_metrics() {
    let p = pki();
    let shard = p.redis(&p.server_cert, &p.server_key, false);
    let (plain_in, tls_in, admin) = (free_port(), free_port(), free_port());
    let tls = format!("  tls:\n    ca_file: {}\n", p.ca.display());
    let listen_tls = format!(
        "  listen_tls:\n    cert_file: {}\n    key_file: {}\n",
        p.server_cert.display(),
        p.server_key.display()
    );
    let yaml = tcp_pool("l4tls", plain_in, &[shard.port], &tls)
        + &tcp_pool("l4both", tls_in, &[shard.port], &(tls.clone() + &listen_tls));
    let config = config_file(&yaml);
    let _l = legate_logged(&config, plain_in, &["--admin", &format!("127.0.0.1:{admin}")]);
    // Plain redis-cli -> legate -> TLS redis-server.
    let cli = require("redis-cli", "redis-tools");
    let out = run(Command::new(&cli).args(["-p", &plain_in.to_string(), "SET", "l4", "tls"]));
    assert_eq!(out.trim(), "OK");
    // TLS redis-cli -> legate (TLS listener) -> TLS redis-server.
    let out = run(Command::new(&cli).args([
        "--tls",
        "--cacert",
        p.ca.to_str().unwrap(),
        "-p",
        &tls_in.to_string(),
        "GET",
        "l4",
    ]));
    assert_eq!(out.trim(), "tls");
    eventually("bytes and connections counted", || {
        let (_, m) = http(admin, "GET", "/metrics");
        let up = metric(&m, "legate_server_request_bytes_total", &["pool=\"l4tls\""]).unwrap_or(0.0);
        let down = metric(&m, "legate_server_response_bytes_total", &["pool=\"l4tls\""]).unwrap_or(0.0);
        let clients = metric(&m, "legate_client_connections_total", &["pool=\"l4both\""]).unwrap_or(0.0);
        up >= 27.0 && down >= 5.0 && clients >= 1.0
    });
}

#[test]
fn l4_pools_reload_without_dropping_connections() {
    let (a, b) = (redis_server(), redis_server());
    let port = free_port();
    let config = config_file(&tcp_pool("hot", port, &[a.port], ""));
    let l = legate_logged(&config, port, &[]);
    let mut old = Client::connect(port);
    assert_eq!(backend_port(&mut old), a.port);
    std::fs::write(&config, tcp_pool("hot", port, &[b.port], "")).unwrap();
    l.wait_log("config generation 2 applied");
    // New connections go to the new server; the one already open stays where it was.
    assert_eq!(landing(port), b.port);
    assert_eq!(backend_port(&mut old), a.port);
    old.expect(&cmd("PING"), b"+PONG\r\n");
}
