//! The admin endpoint and the metrics adapter, against real redis-server and memcached.

mod common;

use common::{
    cmd, config_file, eventually, free_port, http, legate_logged, memcached, metric, redis_server, require, Client,
    Logged,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

struct Setup {
    _mc: common::Proc,
    rd: Option<common::Proc>,
    legate: Logged,
    admin: u16,
    mc_port: u16,
    rd_port: u16,
    config: std::path::PathBuf,
}

fn setup() -> Setup {
    let mc = memcached();
    let rd = redis_server();
    let (mc_port, rd_port, admin) = (free_port(), free_port(), free_port());
    let yaml = common::pool_yaml("cache", mc_port, false, &[mc.port], "")
        + &common::pool_yaml("sessions", rd_port, true, &[rd.port], "  redis_auth: hunter2\n");
    // The backend has no password; legate's AUTH to it fails, so use a second pool without.
    let yaml = yaml.replace("  redis_auth: hunter2\n", "");
    let config = config_file(&yaml);
    let admin_addr = format!("127.0.0.1:{admin}");
    // legate_logged runs two workers: counters are kept per worker and summed at scrape.
    let legate = legate_logged(&config, mc_port, &["--admin", &admin_addr, "--scrape-interval", "0.2"]);
    Setup {
        _mc: mc,
        rd: Some(rd),
        legate,
        admin,
        mc_port,
        rd_port,
        config,
    }
}

#[test]
fn metrics_exposition_is_valid_and_the_adapter_uses_one_set_of_names() {
    let s = setup();
    let promtool = require("promtool", "prometheus");
    eventually("both backends scraped", || {
        let (_, m) = http(s.admin, "GET", "/metrics");
        metric(&m, "legate_backend_up", &["protocol=\"redis\""]) == Some(1.0)
            && metric(&m, "legate_backend_up", &["protocol=\"memcache\""]) == Some(1.0)
    });
    let (code, m) = http(s.admin, "GET", "/metrics");
    assert_eq!(code, 200);
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool check metrics failed:\n{said}");
    for name in adapter_names() {
        for proto in ["redis", "memcache"] {
            assert!(
                metric(&m, name, &[&format!("protocol=\"{proto}\"")]).is_some(),
                "{name} missing for {proto}"
            );
        }
    }
    // Set keys: items grow on both backends, under the same name.
    let mut c = Client::connect(s.mc_port);
    let mut r = Client::connect(s.rd_port);
    for i in 0..25 {
        c.expect(format!("set k{i} 0 0 1\r\nx\r\n").as_bytes(), b"STORED\r\n");
        r.expect(&cmd(&format!("SET k{i} x")), b"+OK\r\n");
    }
    eventually("items reach 25 on both", || {
        let (_, m) = http(s.admin, "GET", "/metrics");
        metric(&m, "legate_backend_items", &["protocol=\"memcache\""]) == Some(25.0)
            && metric(&m, "legate_backend_items", &["protocol=\"redis\""]) == Some(25.0)
    });
}

fn adapter_names() -> Vec<&'static str> {
    legate::adapter::MAPPINGS
        .iter()
        .map(|m| m.name)
        .chain(["legate_backend_up"])
        .collect()
}

#[test]
fn a_stopped_server_goes_down_and_ready_fails() {
    let mut s = setup();
    eventually("ready", || http(s.admin, "GET", "/ready").0 == 200);
    assert_eq!(http(s.admin, "GET", "/health"), (200, "ok\n".to_string()));
    drop(s.rd.take());
    eventually("redis backend down and not ready", || {
        let (_, m) = http(s.admin, "GET", "/metrics");
        metric(&m, "legate_backend_up", &["protocol=\"redis\""]) == Some(0.0) && http(s.admin, "GET", "/ready").0 == 503
    });
    let (_, body) = http(s.admin, "GET", "/ready");
    assert!(body.contains("sessions"), "{body}");
}

#[test]
fn counters_match_the_traffic_and_stats_has_every_twemproxy_field() {
    let s = setup();
    // Several connections, which the two workers share between them (each counts its own).
    let mut clients: Vec<Client> = (0..6).map(|_| Client::connect(s.rd_port)).collect();
    for i in 0..37 {
        clients[i % 6].expect(&cmd(&format!("SET c{i} v")), b"+OK\r\n");
    }
    let mut r = Client::connect(s.rd_port);
    // Answered by legate itself (PING is the servers' to answer).
    r.expect(&cmd("ECHO hi"), b"$2\r\nhi\r\n");
    r.send(&cmd("MONITOR"));
    r.line();
    let (_, m) = http(s.admin, "GET", "/metrics");
    assert_eq!(
        metric(&m, "legate_requests_total", &["pool=\"sessions\"", "class=\"single\""]),
        Some(37.0)
    );
    assert_eq!(
        metric(&m, "legate_requests_total", &["pool=\"sessions\"", "class=\"proxy\""]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "legate_requests_total",
            &["pool=\"sessions\"", "class=\"unsupported\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "legate_server_requests_total", &["pool=\"sessions\""]),
        Some(37.0)
    );
    assert_eq!(
        metric(&m, "legate_server_responses_total", &["pool=\"sessions\""]),
        Some(37.0)
    );
    assert_eq!(
        metric(&m, "legate_server_response_bytes_total", &["pool=\"sessions\""]),
        Some(37.0 * 5.0)
    );
    assert_eq!(
        metric(
            &m,
            "legate_server_request_duration_seconds_count",
            &["pool=\"sessions\""]
        ),
        Some(37.0)
    );
    assert_eq!(
        metric(&m, "legate_client_connections", &["pool=\"sessions\""]),
        Some(7.0)
    );
    drop(clients);
    let (code, body) = http(s.admin, "GET", "/stats");
    assert_eq!(code, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    for f in [
        "service",
        "source",
        "version",
        "uptime",
        "timestamp",
        "total_connections",
        "curr_connections",
    ] {
        assert!(doc.get(f).is_some(), "top-level {f} missing: {body}");
    }
    let pool = &doc["sessions"];
    for f in [
        "client_eof",
        "client_err",
        "client_connections",
        "server_ejects",
        "forward_error",
        "fragments",
    ] {
        assert!(pool.get(f).is_some(), "pool field {f} missing: {body}");
    }
    let server = pool
        .as_object()
        .unwrap()
        .values()
        .find(|v| v.is_object())
        .expect("a server object");
    for f in [
        "server_eof",
        "server_err",
        "server_timedout",
        "server_connections",
        "server_ejected_at",
        "requests",
        "request_bytes",
        "responses",
        "response_bytes",
        "in_queue",
        "in_queue_bytes",
        "out_queue",
        "out_queue_bytes",
    ] {
        assert!(server.get(f).is_some(), "server field {f} missing: {body}");
    }
    assert_eq!(server["requests"], 37);
    assert_eq!(server["responses"], 37);
}

#[test]
fn config_is_shown_redacted_and_post_reload_applies_the_file() {
    let s = setup();
    let (code, body) = http(s.admin, "GET", "/config");
    assert_eq!(code, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["generation"], 1);
    assert!(doc["last_reload_error"].is_null());
    // A password in the file is never shown.
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        text.replacen("  redis: true\n", "  redis: true\n  redis_auth: hunter2\n", 1),
    )
    .unwrap();
    let (code, body) = http(s.admin, "POST", "/reload");
    assert_eq!(code, 200, "{body}");
    let (_, body) = http(s.admin, "GET", "/config");
    assert!(!body.contains("hunter2") && body.contains("<redacted>"), "{body}");
    // A broken file: POST /reload says why, /config shows it, the generation stays.
    std::fs::write(&s.config, text.replacen("hash: md5", "hash: nope", 1)).unwrap();
    let (code, body) = http(s.admin, "POST", "/reload");
    assert_eq!(code, 422);
    assert!(body.contains("key 'hash'"), "{body}");
    let (_, body) = http(s.admin, "GET", "/config");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        doc["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("unknown hash function"),
        "{body}"
    );
    let g = doc["generation"].as_u64().unwrap();
    assert!(g >= 2);
    let (_, m) = http(s.admin, "GET", "/metrics");
    assert!(metric(&m, "legate_config_reloads_total", &["result=\"failure\""]).unwrap() >= 1.0);
    assert_eq!(metric(&m, "legate_config_generation", &[]), Some(g as f64));
    let _ = &s.legate;
}

#[test]
fn twemproxy_stats_port_writes_json_on_accept() {
    let mc = memcached();
    let (port, stats) = (free_port(), free_port());
    let config = config_file(&common::pool_yaml("alpha", port, false, &[mc.port], ""));
    let _l = legate_logged(&config, port, &["-s", &stats.to_string(), "-a", "127.0.0.1"]);
    eventually("stats port open", || TcpStream::connect(("127.0.0.1", stats)).is_ok());
    let mut s = TcpStream::connect(("127.0.0.1", stats)).unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(doc["alpha"]["client_connections"].is_number(), "{body}");
}
