//! The Grafana dashboard (config/grafana/legate.json) against a real Prometheus scraping a real
//! legate in front of real redis-servers and memcached: every panel's query, and every template
//! variable's, must return data through Prometheus's HTTP API, and every metric legate exports
//! must appear in some panel.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/grafana/legate.json");

/// Values for the variables Grafana fills in: all pools and servers, and a rate window of
/// several of the test's 1 s scrapes.
fn expand(expr: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$__interval", "2s")
        .replace("$__range", "1m")
        .replace("${pool}", ".*")
        .replace("${server}", ".*")
        .replace("$pool", ".*")
        .replace("$server", ".*")
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET over HTTP/1.0 (so the body is never chunked); returns (status, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

/// Runs an instant query; Ok(number of series) or Err(what Prometheus said).
fn query(prom: u16, expr: &str) -> Result<usize, String> {
    let (status, body) = get(prom, &format!("/api/v1/query?query={}", url_encode(expr)));
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
    if v["status"] != "success" {
        return Err(format!("HTTP {status}: {body}"));
    }
    Ok(v["data"]["result"].as_array().map_or(0, |r| r.len()))
}

/// (panel title, expression) for every query in the dashboard, rows' nested panels included.
fn panel_queries(panels: &[serde_json::Value], out: &mut Vec<(String, String)>) {
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?} has a target without expr"));
            out.push((title.clone(), expr.to_string()));
        }
        if let Some(nested) = p["panels"].as_array() {
            panel_queries(nested, out);
        }
    }
}

/// Keeps both pools busy: sets, hits, misses and multi-key requests, until told to stop.
fn traffic(mc: u16, rd: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut m = Client::connect(mc);
        let mut r = Client::connect(rd);
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let k = format!("k{}", i % 200);
            m.expect(format!("set {k} 0 0 3\r\nabc\r\n").as_bytes(), b"STORED\r\n");
            m.expect(
                format!("get {k}\r\n").as_bytes(),
                format!("VALUE {k} 0 3\r\nabc\r\nEND\r\n").as_bytes(),
            );
            m.expect(b"get nope-mc\r\n", b"END\r\n");
            m.send(b"get k1 k2 k3 k4 k5 k6\r\n");
            m.until(b"END\r\n");
            r.expect(&cmd(&format!("SET {k} abc")), b"+OK\r\n");
            r.expect(&cmd(&format!("GET {k}")), b"$3\r\nabc\r\n");
            r.expect(&cmd("GET nope-redis"), b"$-1\r\n");
            r.send(&cmd("MGET k1 k2 k3 k4 k5 k6"));
            r.until(b"*6\r\n");
            for _ in 0..6 {
                let line = r.line();
                if line != b"$-1\r\n" {
                    r.line();
                }
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

#[test]
fn every_panel_returns_data_from_real_prometheus() {
    let prometheus = require("prometheus", "prometheus");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("read config/grafana/legate.json"))
            .expect("legate.json is JSON");
    let mut queries = Vec::new();
    panel_queries(dashboard["panels"].as_array().expect("panels"), &mut queries);
    assert!(queries.len() >= 20, "only {} queries in the dashboard", queries.len());

    let (m1, m2, r1, r2) = (memcached(), memcached(), redis_server(), redis_server());
    let (mc, rd, admin) = (free_port(), free_port(), free_port());
    let config = config_file(
        &(pool_yaml("cache", mc, false, &[m1.port, m2.port], "")
            + &pool_yaml("store", rd, true, &[r1.port, r2.port], "")),
    );
    let admin_addr = format!("127.0.0.1:{admin}");
    let legate = legate_logged(&config, mc, &["--admin", &admin_addr, "--scrape-interval", "0.2"]);
    eventually("legate's Redis pool listening", || {
        TcpStream::connect(("127.0.0.1", rd)).is_ok()
    });
    // A reload, so that legate_config_reloads_total exists.
    assert_eq!(http(admin, "POST", "/reload").0, 200, "POST /reload");

    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(mc, rd, stop.clone());

    let dir = scratch_dir();
    let prom_port = free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: legate\n    static_configs:\n      - targets: ['127.0.0.1:{admin}']\n"
        ),
    )
    .unwrap();
    let child = Command::new(prometheus)
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let mut prom = Proc { child, port: prom_port };
    wait_for_port(prom_port, "prometheus", &mut prom.child);

    // Every query returns at least one series once Prometheus has a few scrapes of legate.
    let deadline = Instant::now() + Duration::from_secs(60);
    let failing = loop {
        let mut failing = Vec::new();
        for (title, expr) in &queries {
            match query(prom_port, &expand(expr)) {
                Ok(n) if n > 0 => {}
                Ok(_) => failing.push(format!("{title}: no data for {expr}")),
                Err(e) => failing.push(format!("{title}: {expr}: {e}")),
            }
        }
        if failing.is_empty() || Instant::now() > deadline {
            break failing;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    stop.store(true, Ordering::Relaxed);
    load.join().expect("traffic thread");
    assert!(
        failing.is_empty(),
        "{} of {} dashboard queries returned nothing after 60 s:\n{}",
        failing.len(),
        queries.len(),
        failing.join("\n")
    );

    // The template variables list the pools and servers.
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        let Some(def) = var["definition"].as_str() else {
            continue;
        };
        let (inner, label) = def
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .and_then(|d| d.rsplit_once(", "))
            .unwrap_or_else(|| panic!("variable {} is not label_values(METRIC, LABEL): {def}", var["name"]));
        let (_, body) = get(
            prom_port,
            &format!("/api/v1/label/{label}/values?match[]={}", url_encode(&expand(inner))),
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let values = v["data"].as_array().map_or(0, |a| a.len());
        let want = if label == "pool" { 2 } else { 4 };
        assert_eq!(values, want, "variable {}: {def} gives {body}", var["name"]);
    }

    // Every metric legate exports is on some panel.
    let (_, metrics) = http(admin, "GET", "/metrics");
    let all_exprs: String = queries.iter().map(|(_, e)| e.as_str()).collect::<Vec<_>>().join("\n");
    let missing: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .filter(|name| !all_exprs.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics on legate's /metrics that no dashboard panel shows (add them in config/grafana/make_dashboard.py): {missing:?}"
    );
    drop(legate);
}

/// legate.json is what make_dashboard.py makes, so an edit to one is not lost from the other.
#[test]
fn dashboard_json_matches_its_generator() {
    let python = require("python3", "python3");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/config/grafana/make_dashboard.py");
    let out = Command::new(python)
        .arg(script)
        .arg("--check")
        .output()
        .expect("run make_dashboard.py");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
