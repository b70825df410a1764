//! legate: an ambassador proxy for memcache and Redis.
//!
//! # Layout
//! - [`admin`]: the HTTP admin endpoint (/metrics, /stats, /health, /ready, /config, /reload).
//! - [`adapter`]: backend statistics (Redis INFO, memcached stats) under one set of metric names.
//! - [`config`]: twemproxy's YAML (and legate's extensions) parsed and validated.
//! - [`hash`]: the 12 twemproxy hash functions, hash tags, and the ketama/modula/random rings.
//! - [`protocol`]: pure codecs: memcache text and binary, Redis RESP requests and reply scanners,
//!   and the Redis command table (each command's arity, key positions and route).
//! - [`topology`]: a pool's servers, ring and connections as one immutable snapshot; where the
//!   servers come from when they are not a static list (`topology/sentinel.rs`: master names
//!   followed through Sentinel failovers, and their replicas as the sentinels list them;
//!   `topology/cluster.rs`: a Redis Cluster's slot table, refreshed (at once when a node
//!   fails), its redirections followed, and its replicas when they take reads (`read_from`);
//!   `topology/control.rs`: legate's own RESP connections, with the pool's TLS and ACL user).
//! - [`router`]: a parsed request -> the server(s) it goes to, split and merged when needed; a
//!   Redis connection's own state (HELLO, AUTH, CLIENT, RESET …) answered in `router/session.rs`;
//!   transactions, blocking commands, pub/sub, PING and SCRIPT KILL (which must not wait behind a
//!   busy script) and a one-server pool's SYNC tunnel on connections of their own in
//!   `router/pinned.rs`;
//!   CONFIG SET / DEBUG for pools with `redis_admin_commands` in `router/admin.rs`.
//! - [`server`]: listeners and client sessions (parse, route, reply in order).
//! - [`replies`]: one client's reply queue, filled by servers in any order, written in order.
//! - [`upstream`]: pipelined connections to the backend servers; `upstream/pinned.rs`: a
//!   connection held by one client (a pin).
//! - [`l4`]: `protocol: tcp` pools, forwarding each client's byte stream to one server.
//! - [`net`]: one stream type for TCP, unix sockets and TLS in either direction.
//! - [`tls`]: certificate and key files -> rustls client and server configurations.
//! - [`workers`]: the worker threads (one current-thread runtime each) that carry every request.
//! - [`metrics`]: the proxy's counters (the request path's kept per worker, summed when read),
//!   published to the Prometheus exporter.
//! - [`log_limit`]: rate limits for log lines a misbehaving peer can repeat without end.
//! - [`reload`]: the running pools; config reloads (file watch, SIGHUP) and draining.
//!
//! Outside the library: `src/main.rs` (command line, signals, allocator), `src/bin/legate-bench.rs`
//! (load generator that checks every reply), `benches/` (criterion microbenchmarks and
//! `compare.sh`), `fuzz/` (cargo-fuzz targets and their invariants), `tests/common/` (real servers
//! on free ports for the integration tests), `config/` (example configs).

#![forbid(unsafe_code)]

pub mod adapter;
pub mod admin;
pub mod config;
pub mod hash;
pub mod l4;
pub mod log_limit;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod reload;
pub mod replies;
pub mod router;
pub mod server;
pub mod tls;
pub mod topology;
pub mod upstream;
pub mod workers;

use std::future::Future;

pub use reload::Options;

/// Serve `config` until `shutdown` resolves, without reloading.
///
/// # Errors
/// A listener cannot be bound.
pub async fn run(config: config::Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_with(config, Options::default(), shutdown).await
}

/// Install the Prometheus recorder (once per process); `None` when another is installed.
fn install_recorder() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ])
        .ok()?
        .build_recorder();
    let handle = recorder.handle();
    ::metrics::set_global_recorder(recorder).ok()?;
    metrics::describe();
    adapter::describe();
    Some(handle)
}

/// Bind every pool's listener, start its servers, serve the admin endpoint, reload on SIGHUP,
/// file changes and `POST /reload` (when `options` names the file), and serve until `shutdown`
/// resolves; then drain.
///
/// Listeners are bound before anything is served, so a port already in use fails the start
/// with the pool's name rather than leaving half the pools up.
///
/// # Errors
/// A listener cannot be bound.
pub async fn run_with(
    config: config::Config,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::sync::Arc;
    use tokio::signal::unix::{signal, SignalKind};
    router::mark_start();
    crate::workers::start(options.workers.unwrap_or_else(workers::default_count))
        .context("cannot start the worker threads")?;
    let prometheus = install_recorder();
    let admin_listener = match options.admin {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("admin endpoint: cannot listen on {a}"))?,
        ),
        None => None,
    };
    let stats_listener = match options.stats {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("stats port: cannot listen on {a}"))?,
        ),
        None => None,
    };
    let mut pools = reload::Pools::start(&config).await?;
    let (admin_reload_tx, mut admin_reloads) = tokio::sync::mpsc::unbounded_channel();
    let status = Arc::new(admin::Status {
        pools: std::sync::Mutex::new(pools.snapshot()),
        generation: std::sync::atomic::AtomicU64::new(pools.generation()),
        last_error: std::sync::Mutex::new(None),
        started: std::time::Instant::now(),
        backends: adapter::Backends::default(),
        prometheus,
        reload: admin_reload_tx,
    });
    ::metrics::gauge!("legate_config_generation").set(pools.generation() as f64);
    if let Some(l) = admin_listener {
        tracing::info!("admin endpoint on http://{}", l.local_addr()?);
        tokio::spawn(admin::serve(l, status.clone()));
    }
    if let Some(l) = stats_listener {
        tracing::info!("twemproxy stats on {}", l.local_addr()?);
        tokio::spawn(admin::serve_raw_stats(l, status.clone()));
    }
    {
        let status = status.clone();
        let interval = options.scrape_interval;
        tokio::spawn(async move {
            loop {
                let current: Vec<topology::SharedTopology> = status
                    .pools
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|(_, t)| t.clone())
                    .collect();
                adapter::scrape_once(&current, &status.backends).await;
                tokio::time::sleep(interval).await;
            }
        });
    }
    let (tx, mut triggers) = tokio::sync::mpsc::unbounded_channel();
    let _watcher = match (&options.config_path, options.watch) {
        (Some(path), true) => match reload::watch_file(path, tx.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("cannot watch {}: {e}; reload with SIGHUP", path.display());
                None
            }
        },
        _ => None,
    };
    let mut hup = signal(SignalKind::hangup())?;
    let mut last_text = match &options.config_path {
        Some(p) => std::fs::read_to_string(p).unwrap_or_default(),
        None => String::new(),
    };
    tokio::pin!(shutdown);
    loop {
        let (trigger, answer) = tokio::select! {
            _ = &mut shutdown => break,
            _ = hup.recv() => (reload::Trigger::Signal, None),
            Some(t) = triggers.recv() => (t, None),
            Some(a) = admin_reloads.recv() => (reload::Trigger::Signal, Some(a)),
        };
        let result = match &options.config_path {
            Some(path) => reload::reload(&mut pools, path, &mut last_text, trigger).await,
            None => Err("no config file is known".to_string()),
        };
        match &result {
            Ok(Some(g)) => {
                status.generation.store(*g, std::sync::atomic::Ordering::Relaxed);
                *status.pools.lock().unwrap_or_else(|e| e.into_inner()) = pools.snapshot();
                *status.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Ok(None) => {}
            Err(e) => *status.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.clone()),
        }
        if let Some(answer) = answer {
            let _ = answer.send(result.map(|g| g.unwrap_or_else(|| pools.generation())));
        }
    }
    tracing::info!("shutting down: draining clients (at most {:?})", options.drain_timeout);
    pools.drain(options.drain_timeout).await;
    tracing::info!("stopped");
    Ok(())
}
