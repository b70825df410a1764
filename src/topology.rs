//! A pool's routing state as one immutable snapshot: its config, ring and server connections.
//!
//! Sessions load the current snapshot once per batch of requests; a reload builds a new one and
//! swaps it in atomically, so a request never sees half of an old topology and half of a new.

use crate::config::PoolConfig;
use crate::hash::{hash_tag_span, Ring, RingServer};
use crate::upstream::Server;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// One pool's servers and the ring that places keys on them.
#[derive(Debug)]
pub struct Topology {
    pub pool: PoolConfig,
    pub ring: Ring,
    /// In the pool's server order (the ring's indexes).
    pub servers: Vec<Arc<Server>>,
}

impl Topology {
    /// Build the ring and start the server connections. Must run inside a Tokio runtime.
    pub fn start(pool: &PoolConfig) -> Topology {
        Topology::rebuild(pool, None)
    }

    /// Build a pool's topology, keeping the connections of every server of `old` that is still
    /// in the pool with the same address and connection settings.
    pub fn rebuild(pool: &PoolConfig, old: Option<&Topology>) -> Topology {
        let ring_servers: Vec<RingServer<'_>> = pool
            .servers
            .iter()
            .map(|s| RingServer {
                name: &s.name,
                weight: s.weight,
                live: true,
            })
            .collect();
        let ring = Ring::build(&ring_servers, pool.distribution);
        let servers = pool
            .servers
            .iter()
            .map(|s| {
                old.and_then(|o| {
                    o.servers
                        .iter()
                        .find(|k| k.addr == s.addr && k.same_connections(pool, s))
                })
                .cloned()
                .unwrap_or_else(|| Server::start(pool, s))
            })
            .collect();
        Topology {
            pool: pool.clone(),
            ring,
            servers,
        }
    }

    /// The index of the server that owns `key`, or `None` when no server is available.
    #[inline]
    pub fn server_for(&self, key: &[u8]) -> Option<usize> {
        self.ring
            .server_for(self.pool.hash, hash_tag_span(key, self.pool.hash_tag))
    }
}

/// The live topology of a pool, swapped whole on reload.
pub type SharedTopology = Arc<ArcSwap<Topology>>;
