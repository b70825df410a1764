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

#![forbid(unsafe_code)]

pub mod config;
pub mod hash;
pub mod protocol;
pub mod router;
pub mod server;
pub mod topology;
pub mod upstream;

use anyhow::Context;
use arc_swap::ArcSwap;
use std::future::Future;
use std::sync::Arc;

/// Bind every pool's listener, start its servers, and serve until `shutdown` resolves.
///
/// Listeners are bound before anything is served, so a port already in use fails the start
/// with the pool's name rather than leaving half the pools up.
///
/// # Errors
/// A listener cannot be bound.
pub async fn run(config: config::Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    router::mark_start();
    let mut bound = Vec::with_capacity(config.pools.len());
    for pool in &config.pools {
        let listener = server::Listener::bind(pool)
            .with_context(|| format!("pool '{}': cannot listen on {}", pool.name, pool.listen))?;
        bound.push((pool, listener));
    }
    for (pool, listener) in bound {
        let topo: topology::SharedTopology =
            Arc::new(ArcSwap::from_pointee(topology::Topology::start(pool)));
        tracing::info!(
            "pool {} listening on {} ({}, {} servers)",
            pool.name,
            listener.local_addr(),
            pool.protocol.name(),
            pool.servers.len()
        );
        tokio::spawn(server::accept_loop(
            listener,
            topo,
            pool.protocol,
            pool.client_connections,
        ));
    }
    shutdown.await;
    tracing::info!("shutting down");
    Ok(())
}
