//! The admin HTTP endpoint: `/metrics`, `/stats`, `/health`, `/ready`, `/config`, `POST /reload`;
//! and twemproxy's raw stats port (JSON written on accept).

use crate::adapter::Backends;
use crate::config::PoolConfig;
use crate::topology::SharedTopology;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// A reload asked for over HTTP, answered with the new generation or the error.
pub type ReloadRequest = oneshot::Sender<Result<u64, String>>;

/// What the admin endpoint shows, kept current by the reload loop and the scraper.
pub struct Status {
    pub pools: Mutex<Vec<(PoolConfig, SharedTopology)>>,
    pub generation: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    pub started: Instant,
    pub backends: Backends,
    pub prometheus: Option<PrometheusHandle>,
    pub reload: mpsc::UnboundedSender<ReloadRequest>,
}

impl Status {
    /// Copy every pool's and server's counters into the exporter.
    fn publish(&self) {
        for (_, topo) in self.pools.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let t = topo.load();
            t.stats.publish();
            for s in &t.servers {
                s.stats.publish();
            }
        }
    }

    /// The latency histograms of every server, and of every pool by command.
    fn render_latency(&self, out: &mut String) {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str("# HELP legate_server_request_duration_seconds Time from writing a request to the server to reading its reply.\n");
        out.push_str("# TYPE legate_server_request_duration_seconds histogram\n");
        for (_, topo) in pools.iter() {
            for s in &topo.load().servers {
                s.stats.render_latency(out);
            }
        }
        out.push_str("# HELP legate_command_duration_seconds Time from writing a request to a server to reading its reply, by command: a Redis command table row (get, config|get ...) or memcache command; other for the rest. A split request counts once per server it reached.\n");
        out.push_str("# TYPE legate_command_duration_seconds histogram\n");
        for (p, topo) in pools.iter() {
            topo.load().stats.commands.render(&p.name, out);
        }
    }

    /// Ready: a config is loaded and every pool has a server that answered the last scrape.
    pub fn ready(&self) -> Result<(), String> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        for (p, _) in pools.iter() {
            if !p
                .servers
                .iter()
                .any(|s| self.backends.is_up(&p.name, &s.addr.to_string()))
            {
                return Err(format!("pool {} has no reachable server", p.name));
            }
        }
        Ok(())
    }

    /// twemproxy's stats document (same field names and nesting).
    pub fn twemproxy_stats(&self) -> String {
        use serde_json::{json, Map, Value};
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut doc = Map::new();
        doc.insert("service".into(), json!("legate"));
        doc.insert(
            "source".into(),
            json!(std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim()),
        );
        doc.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
        doc.insert("uptime".into(), json!(self.started.elapsed().as_secs()));
        doc.insert("timestamp".into(), json!(now));
        let (mut total, mut curr) = (0u64, 0i64);
        for (p, topo) in self.pools.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let t = topo.load();
            let ps = &t.stats;
            let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
            total += g(&ps.clients_total);
            curr += ps.client_connections.load(Ordering::Relaxed);
            let mut pool = Map::new();
            pool.insert("client_eof".into(), json!(g(&ps.client_eof)));
            pool.insert("client_err".into(), json!(g(&ps.client_err)));
            pool.insert(
                "client_connections".into(),
                json!(ps.client_connections.load(Ordering::Relaxed)),
            );
            let ejects: u64 = t.servers.iter().map(|s| g(&s.stats.ejections)).sum();
            pool.insert("server_ejects".into(), json!(ejects));
            pool.insert("forward_error".into(), json!(g(&ps.forward_error)));
            pool.insert("fragments".into(), json!(g(&ps.fragments)));
            for (cfg, s) in t.pool.servers.iter().zip(&t.servers) {
                let st = &s.stats;
                let in_flight = st.in_flight().max(0);
                let name = cfg.alias.clone().unwrap_or_else(|| cfg.addr.to_string());
                let server: Value = json!({
                    "server_eof": g(&st.server_eof),
                    "server_err": g(&st.server_err) + g(&st.tls_err),
                    "server_timedout": g(&st.server_timedout),
                    "server_connections": st.server_connections.load(Ordering::Relaxed),
                    "server_ejected_at": g(&st.ejected_at),
                    "requests": st.requests(),
                    "request_bytes": st.request_bytes(),
                    "responses": st.responses(),
                    "response_bytes": st.response_bytes(),
                    "in_queue": 0,
                    "in_queue_bytes": 0,
                    "out_queue": in_flight,
                    "out_queue_bytes": 0,
                });
                pool.insert(name, server);
            }
            doc.insert(p.name.clone(), Value::Object(pool));
        }
        doc.insert("total_connections".into(), json!(total));
        doc.insert("curr_connections".into(), json!(curr));
        Value::Object(doc).to_string()
    }

    /// The running config, passwords redacted, with its generation and the last reload error.
    fn config_json(&self) -> String {
        use crate::config::Balance;
        use serde_json::json;
        let pools: Vec<_> = self
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(p, t)| {
                // A Sentinel pool's servers are where their master names are now.
                let live = t.load();
                json!({
                    "name": p.name,
                    "listen": p.listen.to_string(),
                    "protocol": p.protocol.name(),
                    "hash": p.hash.name(),
                    "hash_tag": p.hash_tag.map(|t| String::from_utf8_lossy(&t).into_owned()),
                    "distribution": match p.balance {
                        Balance::Ring => p.distribution.name(),
                        Balance::RoundRobin => "round_robin",
                        Balance::LeastConnections => "least_connections",
                    },
                    "tls": p.tls.as_ref().map(|t| json!({
                        "ca_file": t.ca_file, "server_name": t.server_name, "cert_file": t.cert_file,
                        "key_file": t.key_file, "verify": t.verify,
                    })),
                    "listen_tls": p.listen_tls.as_ref().map(|t| json!({
                        "cert_file": t.cert_file, "key_file": t.key_file, "client_ca_file": t.client_ca_file,
                        "handshake_timeout_ms": t.handshake_timeout.as_millis() as u64,
                    })),
                    "timeout_ms": p.timeout.map(|t| t.as_millis() as u64),
                    "redis_auth": p.redis_auth.as_ref().map(|_| "<redacted>"),
                    "memcache_auth": p.memcache_auth.as_ref().map(|_| "<redacted>"),
                    "redis_db": p.redis_db,
                    "redis_admin_commands": p.redis_admin_commands,
                    "auto_eject_hosts": p.auto_eject_hosts,
                    "server_connections": p.server_connections,
                    "server_retry_timeout_ms": p.server_retry_timeout.as_millis() as u64,
                    "server_failure_limit": p.server_failure_limit,
                    "client_connections": p.client_connections,
                    "max_request_bytes": p.max_request_bytes,
                    "max_reply_bytes": p.max_reply_bytes,
                    "servers": live.pool.servers.iter().zip(&live.servers).map(|(s, l)| json!({
                        "addr": l.addr.to_string(), "weight": s.weight, "name": s.name,
                    })).collect::<Vec<_>>(),
                    "sentinels": match &p.source {
                        crate::config::Source::Sentinel(c) => Some(json!({
                            "addrs": c.sentinels.iter().map(ToString::to_string).collect::<Vec<_>>(),
                            "interval_ms": c.interval.as_millis() as u64,
                            "auth": c.auth.as_ref().map(|_| "<redacted>"),
                        })),
                        _ => None,
                    },
                    "cluster": match &p.source {
                        crate::config::Source::Cluster(c) => Some(json!({
                            "seeds": c.seeds.iter().map(ToString::to_string).collect::<Vec<_>>(),
                            "refresh_ms": c.refresh.as_millis() as u64,
                            "slots_served": live.cluster.as_ref().map(|v| v.table.served()),
                        })),
                        _ => None,
                    },
                    // A Sentinel pool's replicas by master name, as the sentinels last listed them up.
                    "replicas": live.sentinel_replicas.as_ref().map(|r| live.pool.servers.iter().zip(r).map(|(s, r)| {
                        (s.name.clone(), json!(r.iter().map(ToString::to_string).collect::<Vec<_>>()))
                    }).collect::<serde_json::Map<_, _>>()),
                })
            })
            .collect();
        json!({
            "generation": self.generation.load(Ordering::Relaxed),
            "last_reload_error": *self.last_error.lock().unwrap_or_else(|e| e.into_inner()),
            "pools": pools,
        })
        .to_string()
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

async fn handle(status: Arc<Status>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    const JSON: &str = "application/json";
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            status.publish();
            match &status.prometheus {
                Some(h) => {
                    let mut text = h.render();
                    status.render_latency(&mut text);
                    reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", text)
                }
                None => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "metrics recorder not installed\n",
                ),
            }
        }
        (&Method::GET, "/stats") => reply(StatusCode::OK, JSON, status.twemproxy_stats()),
        (&Method::GET, "/health") => reply(StatusCode::OK, TEXT, "ok\n"),
        (&Method::GET, "/ready") => match status.ready() {
            Ok(()) => reply(StatusCode::OK, TEXT, "ready\n"),
            Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("not ready: {why}\n")),
        },
        (&Method::GET, "/config") => reply(StatusCode::OK, JSON, status.config_json()),
        (&Method::POST, "/reload") => {
            let (tx, rx) = oneshot::channel();
            if status.reload.send(tx).is_err() {
                return reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "shutting down\n");
            }
            match rx.await {
                Ok(Ok(g)) => reply(StatusCode::OK, TEXT, format!("config generation {g} applied\n")),
                Ok(Err(e)) => reply(StatusCode::UNPROCESSABLE_ENTITY, TEXT, format!("reload failed: {e}\n")),
                Err(_) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "reload not answered\n"),
            }
        }
        (_, "/metrics" | "/stats" | "/health" | "/ready" | "/config" | "/reload") => {
            reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n")
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics /stats /health /ready /config, POST /reload\n",
        ),
    }
}

/// Serve the admin endpoint on `listener` forever.
pub async fn serve(listener: tokio::net::TcpListener, status: Arc<Status>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let status = status.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let status = status.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(status, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// twemproxy's stats port: one JSON document written per accepted connection.
pub async fn serve_raw_stats(listener: tokio::net::TcpListener, status: Arc<Status>) {
    use tokio::io::AsyncWriteExt;
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let doc = status.twemproxy_stats();
        tokio::spawn(async move {
            let _ = stream.write_all(doc.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
