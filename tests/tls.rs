//! TLS to the shards (`tls:`) and on the listener (`listen_tls:`), against redis-server
//! `--tls-port`, memcached `-Z` and redis-cli `--tls`, with certificates made at test time.

mod common;

use common::pki::{pki, Pki};
use common::{cmd, config_file, eventually, free_port, http, legate, legate_logged, metric, require, run, Client};
use std::process::Command;

/// A pool on `port` whose servers are `servers` reached over TLS with `tls` settings.
fn tls_pool(name: &str, port: u16, protocol: &str, servers: &[u16], tls: &str) -> String {
    let mut y = format!("{name}:\n  listen: 127.0.0.1:{port}\n  protocol: {protocol}\n  hash: md5\n  timeout: 2000\n  tls:\n{tls}  servers:\n");
    for s in servers {
        y += &format!("    - 127.0.0.1:{s}:1\n");
    }
    y
}

fn ca_only(p: &Pki) -> String {
    format!("    ca_file: {}\n", p.ca.display())
}

#[test]
fn plain_clients_reach_redis_shards_over_tls() {
    let p = pki();
    let shards = [
        p.redis(&p.server_cert, &p.server_key, false),
        p.redis(&p.server_cert, &p.server_key, false),
    ];
    let port = free_port();
    let _l = legate(
        &tls_pool("r", port, "redis", &[shards[0].port, shards[1].port], &ca_only(&p)),
        port,
    );
    let mut c = Client::connect(port);
    for i in 0..40 {
        c.expect(&cmd(&format!("SET tls:{i} v{i}")), b"+OK\r\n");
    }
    c.send(&cmd("MGET tls:0 tls:1 tls:39"));
    assert_eq!(c.until(b"v39\r\n"), b"*3\r\n$2\r\nv0\r\n$2\r\nv1\r\n$3\r\nv39\r\n");
    // The keys are on the shards, spread over both, and were written over TLS.
    let counts: Vec<u64> = shards
        .iter()
        .map(|s| p.cli(s.port, &["DBSIZE"]).trim().parse().unwrap())
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 40, "{counts:?}");
    assert!(counts.iter().all(|&n| n > 0), "keys all on one shard: {counts:?}");
    // redis-cli, in the clear, through legate.
    let cli = require("redis-cli", "redis-tools");
    let out = run(Command::new(&cli).args(["-p", &port.to_string(), "GET", "tls:7"]));
    assert_eq!(out.trim(), "v7");
}

#[test]
fn plain_clients_reach_memcached_over_tls() {
    let p = pki();
    let mc = p.memcached();
    let port = free_port();
    let _l = legate(&tls_pool("m", port, "memcache", &[mc.port], &ca_only(&p)), port);
    let mut c = Client::connect(port);
    c.expect(b"set k 0 0 5\r\nhello\r\n", b"STORED\r\n");
    c.expect(b"get k\r\n", b"VALUE k 0 5\r\nhello\r\nEND\r\n");
    let big = vec![b'x'; 300_000];
    let mut req = b"set big 0 0 300000\r\n".to_vec();
    req.extend(&big);
    req.extend(b"\r\n");
    c.expect(&req, b"STORED\r\n");
    c.send(b"get big\r\n");
    let got = c.until(b"END\r\n");
    assert_eq!(got.len(), "VALUE big 0 300000\r\n".len() + 300_000 + 2 + 5);
    // A plaintext client straight to that memcached gets nowhere: it really speaks TLS.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", mc.port)).unwrap();
    raw.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    use std::io::{Read, Write};
    let _ = raw.write_all(b"get k\r\n");
    let mut buf = [0u8; 64];
    let n = raw.read(&mut buf).unwrap_or(0);
    assert!(!buf[..n].starts_with(b"VALUE"), "memcached answered plaintext");
}

#[test]
fn mutual_tls_needs_the_client_certificate() {
    let p = pki();
    let shard = p.redis(&p.server_cert, &p.server_key, true);
    let (with, without) = (free_port(), free_port());
    let mtls = format!(
        "    ca_file: {}\n    cert_file: {}\n    key_file: {}\n",
        p.ca.display(),
        p.client_cert.display(),
        p.client_key.display()
    );
    let yaml = tls_pool("with", with, "redis", &[shard.port], &mtls)
        + &tls_pool("without", without, "redis", &[shard.port], &ca_only(&p));
    let _l = legate(&yaml, with);
    let mut c = Client::connect(with);
    c.expect(&cmd("SET m 1"), b"+OK\r\n");
    c.expect(&cmd("GET m"), b"$1\r\n1\r\n");
    let mut c = Client::connect(without);
    c.send(&cmd("GET m"));
    let reply = String::from_utf8(c.line()).unwrap();
    assert!(
        reply.starts_with("-ERR "),
        "served without a client certificate: {reply}"
    );
}

#[test]
fn wrong_ca_and_expired_certificate_are_refused_with_a_clear_error() {
    let p = pki();
    let good = p.redis(&p.server_cert, &p.server_key, false);
    let expired = p.redis(&p.expired_cert, &p.expired_key, false);
    let (wrong_ca, old, admin) = (free_port(), free_port(), free_port());
    let yaml = tls_pool(
        "wrongca",
        wrong_ca,
        "redis",
        &[good.port],
        &format!("    ca_file: {}\n", p.other_ca.display()),
    ) + &tls_pool("expired", old, "redis", &[expired.port], &ca_only(&p));
    let config = config_file(&yaml);
    let l = legate_logged(&config, wrong_ca, &["--admin", &format!("127.0.0.1:{admin}")]);

    let mut c = Client::connect(wrong_ca);
    c.send(&cmd("GET k"));
    let reply = String::from_utf8(c.line()).unwrap();
    assert!(
        reply.starts_with("-ERR ") && reply.contains("TLS handshake failed") && reply.contains("UnknownIssuer"),
        "{reply}"
    );
    let mut c = Client::connect(old);
    c.send(&cmd("GET k"));
    let reply = String::from_utf8(c.line()).unwrap();
    assert!(
        reply.starts_with("-ERR ") && reply.contains("TLS handshake failed") && reply.contains("expired"),
        "{reply}"
    );
    l.wait_log("TLS handshake failed");
    // Counted per server as TLS errors, not as plain connect errors.
    let (_, m) = http(admin, "GET", "/metrics");
    let tls_errors = metric(&m, "legate_server_errors_total", &["pool=\"expired\"", "kind=\"tls\""]);
    assert!(tls_errors.is_some_and(|n| n >= 1.0), "{tls_errors:?}");
}

#[test]
fn turning_verification_off_takes_an_explicit_key() {
    let p = pki();
    let shard = p.redis(&p.expired_cert, &p.expired_key, false);
    let port = free_port();
    let config = config_file(&tls_pool(
        "insecure",
        port,
        "redis",
        &[shard.port],
        "    verify: false\n",
    ));
    let l = legate_logged(&config, port, &[]);
    l.wait_log("NOT checked");
    let mut c = Client::connect(port);
    c.expect(&cmd("SET a b"), b"+OK\r\n");
}

#[test]
fn listener_tls_with_redis_cli() {
    let p = pki();
    let backend = common::redis_server();
    let (port, mtls_port) = (free_port(), free_port());
    let listen_tls = |client_ca: bool| {
        let mut y = format!(
            "  listen_tls:\n    cert_file: {}\n    key_file: {}\n    handshake_timeout: 500\n",
            p.server_cert.display(),
            p.server_key.display()
        );
        if client_ca {
            y += &format!("    client_ca_file: {}\n", p.ca.display());
        }
        y
    };
    let yaml = common::pool_yaml("tlsl", port, true, &[backend.port], &listen_tls(false))
        + &common::pool_yaml("mtlsl", mtls_port, true, &[backend.port], &listen_tls(true));
    let _l = legate(&yaml, port);
    let cli = require("redis-cli", "redis-tools");
    let tls_cli = |port: u16, cert: bool, args: &[&str]| {
        let mut c = Command::new(&cli);
        c.args(["--tls", "--cacert", p.ca.to_str().unwrap(), "-p", &port.to_string()]);
        if cert {
            c.args([
                "--cert",
                p.client_cert.to_str().unwrap(),
                "--key",
                p.client_key.to_str().unwrap(),
            ]);
        }
        c.args(args).output().unwrap()
    };
    // A client that connects and never starts its handshake must not hold anyone up.
    let stalled = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let out = tls_cli(port, false, &["SET", "over", "tls"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK", "{out:?}");
    let out = tls_cli(port, false, &["GET", "over"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "tls");
    // A plaintext client on the TLS listener is closed (its handshake fails); others go on.
    let mut plain = Client::connect(port);
    plain.send(&cmd("PING"));
    use std::io::Read;
    let mut rest = Vec::new();
    let _ = plain.r.read_to_end(&mut rest);
    assert!(
        !String::from_utf8_lossy(&rest).contains("PONG"),
        "plaintext served on a TLS listener"
    );
    // The stalled client is closed once its handshake timeout passes.
    stalled
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    assert!(
        matches!((&stalled).read(&mut [0u8; 16]), Ok(0)),
        "a stalled handshake was never closed"
    );

    // With client_ca_file, a client certificate is required.
    let out = tls_cli(mtls_port, true, &["GET", "over"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "tls", "{out:?}");
    let out = tls_cli(mtls_port, false, &["GET", "over"]);
    assert_ne!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "tls",
        "served without a client certificate: {out:?}"
    );
}

#[test]
fn certificates_are_read_again_on_reload() {
    let p = pki();
    let shard = p.redis(&p.server_cert, &p.server_key, false);
    let port = free_port();
    // The CA file starts out holding the wrong CA, then is replaced; the config text is the same.
    let ca = p.dir.join("rotating-ca.pem");
    std::fs::copy(&p.other_ca, &ca).unwrap();
    let config = config_file(&tls_pool(
        "rot",
        port,
        "redis",
        &[shard.port],
        &format!("    ca_file: {}\n", ca.display()),
    ));
    let l = legate_logged(&config, port, &[]);
    let mut c = Client::connect(port);
    c.send(&cmd("GET k"));
    assert!(String::from_utf8(c.line()).unwrap().contains("UnknownIssuer"));
    std::fs::copy(&p.ca, &ca).unwrap();
    let pid = l.proc.child.id().to_string();
    run(Command::new("kill").args(["-HUP", &pid]));
    l.wait_log("config generation 2 applied");
    eventually("the new CA is used", || {
        let mut c = Client::connect(port);
        c.send(&cmd("SET k v"));
        c.line() == b"+OK\r\n"
    });
    // A CA file that cannot be read refuses the reload and keeps the running pool.
    std::fs::write(&ca, "not a certificate").unwrap();
    run(Command::new("kill").args(["-HUP", &pid]));
    l.wait_log("config reload failed");
    let mut c = Client::connect(port);
    c.expect(&cmd("GET k"), b"$1\r\nv\r\n");
}

#[test]
fn config_check_reads_the_tls_files() {
    let p = pki();
    let config = config_file(&format!(
        "p:\n  listen: 127.0.0.1:1\n  listen_tls:\n    cert_file: {}\n    key_file: {}/missing.key\n  servers: ['127.0.0.1:2:1']\n",
        p.server_cert.display(),
        p.dir.display()
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_legate"))
        .arg("-t")
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("pool 'p', key 'listen_tls.key_file'") && err.contains("missing.key"),
        "{err}"
    );
}
