//! legate: an ambassador proxy for memcache and Redis.
//!
//! # Layout
//! - [`config`]: twemproxy's YAML (and legate's extensions) parsed and validated.
//! - [`hash`]: the 12 twemproxy hash functions, hash tags, and the ketama/modula/random rings.
//! - [`protocol`]: pure codecs: memcache text and Redis RESP requests and reply scanners.
//! - [`topology`]: a pool's servers, ring and connections as one immutable snapshot.
//! - [`router`]: a parsed request -> the server(s) it goes to, split and merged when needed.
//! - [`server`]: listeners and client sessions (parse, route, reply in order).
//! - [`upstream`]: pipelined connections to the backend servers.
//! - [`reload`]: the running pools; config reloads (file watch, SIGHUP) and draining.

#![forbid(unsafe_code)]

pub mod config;
pub mod hash;
pub mod protocol;
pub mod reload;
pub mod router;
pub mod server;
pub mod topology;
pub mod upstream;

use std::future::Future;

pub use reload::Options;

/// Serve `config` until `shutdown` resolves, without reloading.
///
/// # Errors
/// A listener cannot be bound.
pub async fn run(config: config::Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_with(config, Options::default(), shutdown).await
}

/// Bind every pool's listener, start its servers, reload on SIGHUP and file changes (when
/// `options` names the file), and serve until `shutdown` resolves; then drain.
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
    use tokio::signal::unix::{signal, SignalKind};
    router::mark_start();
    let mut pools = reload::Pools::start(&config)?;
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
        let trigger = tokio::select! {
            _ = &mut shutdown => break,
            _ = hup.recv() => reload::Trigger::Signal,
            Some(t) = triggers.recv() => t,
        };
        match &options.config_path {
            Some(path) => reload::reload(&mut pools, path, &mut last_text, trigger).await,
            None => tracing::warn!("reload asked for, but no config file is known"),
        }
    }
    tracing::info!("shutting down: draining clients (at most {:?})", options.drain_timeout);
    pools.drain(options.drain_timeout).await;
    tracing::info!("stopped");
    Ok(())
}
