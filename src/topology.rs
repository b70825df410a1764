//! A pool's routing state as one immutable snapshot: its config, ring and server connections.
//!
//! Sessions load the current snapshot once per batch of requests; a reload or an ejection
//! builds a new one and swaps it in atomically, so a request never sees half of an old topology
//! and half of a new. Writers (reloads, ejections, Sentinel failovers, slot table refreshes)
//! take turns through [`update`], each building on the snapshot the one before it stored.

pub mod cluster;
pub mod control;
pub mod sentinel;

use crate::config::{Addr, PoolConfig, ReadFrom, Source};
use crate::hash::{cluster_slot, hash_tag_span, Ring, RingServer};
use crate::metrics::PoolStats;
use crate::tls::PoolTls;
use crate::upstream::{Role, Server};
use arc_swap::ArcSwap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use tokio::sync::mpsc;

/// One pool's servers and the ring that places keys on them.
#[derive(Debug)]
pub struct Topology {
    pub pool: PoolConfig,
    pub ring: Ring,
    /// In the pool's server order (the ring's indexes).
    pub servers: Vec<Arc<Server>>,
    /// The pool's counters, kept across reloads.
    pub stats: Arc<PoolStats>,
    /// Certificates and keys as read for this generation of the config.
    pub tls: PoolTls,
    /// Where an L4 pool's round robin goes next.
    pub next: AtomicUsize,
    /// A Redis Cluster pool's slot table (its servers are the table's masters, in order).
    pub cluster: Option<Arc<cluster::ClusterView>>,
    /// A cluster or Sentinel pool's replicas that take reads (`read_from`), addressed past
    /// `servers`: replica `j` is index `servers.len() + j` in an [`crate::upstream::Outbox`].
    pub replicas: Vec<Arc<Server>>,
    /// Per master (index in `servers`), its replicas' indexes in `replicas`.
    pub replicas_of: Vec<Vec<usize>>,
    /// Held by whoever builds the next snapshot from this one ([`update`]); kept across
    /// rebuilds, so every snapshot of a pool shares it.
    writer: Arc<std::sync::Mutex<()>>,
    /// A Sentinel pool's replicas as the sentinels last listed them up, per master (in
    /// `servers` order), whatever `read_from` says; `None` until the sentinels were asked.
    pub sentinel_replicas: Option<Vec<Vec<Addr>>>,
}

/// Told when a server of the pool is ejected.
pub type HealthEvents = mpsc::UnboundedSender<()>;

impl Topology {
    /// Build the ring and start the server connections. Must run inside a Tokio runtime.
    pub fn start(pool: &PoolConfig, tls: PoolTls) -> Topology {
        Topology::rebuild(pool, tls, None, None)
    }

    /// Build a pool's topology, keeping the connections of every server of `old` that is still
    /// in the pool with the same address and connection settings (TLS material included).
    /// Ejected servers are left out of the ring, exactly as nutcracker leaves them out.
    /// A cluster pool keeps `old`'s slot table, a Sentinel pool each master name's replicas.
    pub fn rebuild(pool: &PoolConfig, tls: PoolTls, old: Option<&Topology>, events: Option<&HealthEvents>) -> Topology {
        let view = match pool.source {
            Source::Cluster(_) => old.and_then(|o| o.cluster.clone()),
            _ => None,
        };
        Topology::build(pool, tls, old, events, view)
    }

    /// [`Topology::rebuild`] with a cluster pool's slot table: its servers are the table's
    /// masters.
    pub fn build(
        pool: &PoolConfig,
        tls: PoolTls,
        old: Option<&Topology>,
        events: Option<&HealthEvents>,
        view: Option<Arc<cluster::ClusterView>>,
    ) -> Topology {
        Topology::assemble(pool, tls, old, events, view, None)
    }

    /// [`Topology::rebuild`] of a Sentinel pool (`pool` resolved) with each master's replicas
    /// as the sentinels list them now (in `pool.servers` order).
    pub fn build_sentinel(
        pool: &PoolConfig,
        tls: PoolTls,
        old: Option<&Topology>,
        events: Option<&HealthEvents>,
        replicas: Vec<Vec<Addr>>,
    ) -> Topology {
        Topology::assemble(pool, tls, old, events, None, Some(replicas))
    }

    /// A Sentinel pool's replicas by master name, as `self` has them, for `pool`'s servers.
    fn sentinel_replicas_for(&self, pool: &PoolConfig) -> Option<Vec<Vec<Addr>>> {
        let known = self.sentinel_replicas.as_ref()?;
        Some(
            pool.servers
                .iter()
                .map(|s| {
                    self.pool
                        .servers
                        .iter()
                        .position(|o| o.name == s.name)
                        .and_then(|i| known.get(i).cloned())
                        .unwrap_or_default()
                })
                .collect(),
        )
    }

    fn assemble(
        pool: &PoolConfig,
        tls: PoolTls,
        old: Option<&Topology>,
        events: Option<&HealthEvents>,
        view: Option<Arc<cluster::ClusterView>>,
        sentinel_replicas: Option<Vec<Vec<Addr>>>,
    ) -> Topology {
        let resolved;
        let pool = match &view {
            Some(v) => {
                resolved = cluster::resolved(pool, &v.table);
                &resolved
            }
            None => pool,
        };
        let hook = view.as_ref().map(|v| &v.hook);
        let stats = old
            .map(|o| o.stats.clone())
            .unwrap_or_else(|| PoolStats::new(&pool.name, pool.protocol));
        // `s` as `role`: the same server of `kept` when its connections would be the same, else
        // a new one.
        let keep_or_start = |kept: Option<&[Arc<Server>]>, s: &crate::config::ServerConfig, role: Role| {
            kept.and_then(|k| {
                k.iter()
                    .find(|k| k.addr == s.addr && k.same_as(pool, s, &tls, role, hook))
            })
            .cloned()
            .unwrap_or_else(|| Server::start_as(pool, s, &tls, role, hook.cloned(), events.cloned(), &stats.commands))
        };
        let servers: Vec<Arc<Server>> = pool
            .servers
            .iter()
            .map(|s| keep_or_start(old.map(|o| &o.servers[..]), s, Role::Master))
            .collect();
        let ring_servers: Vec<RingServer<'_>> = pool
            .servers
            .iter()
            .zip(&servers)
            .map(|(s, srv)| RingServer {
                name: &s.name,
                weight: s.weight,
                live: !srv.is_ejected(),
            })
            .collect();
        let ring = Ring::build(&ring_servers, pool.distribution);
        let read_from = read_from(pool);
        // A Sentinel pool's replicas are kept by master name; a promoted replica is a master,
        // never a replica of anything.
        let sentinel_replicas = match &pool.source {
            Source::Sentinel(_) => sentinel_replicas
                .or_else(|| old.and_then(|o| o.sentinel_replicas_for(pool)))
                .map(|mut known| {
                    for rs in &mut known {
                        rs.retain(|a| !pool.servers.iter().any(|m| m.addr == *a));
                    }
                    known
                }),
            _ => None,
        };
        let replica_addrs = match (&view, &sentinel_replicas) {
            (Some(v), _) => Some(&v.table.replicas),
            (None, Some(known)) => Some(known),
            (None, None) => None,
        };
        let mut replicas: Vec<Arc<Server>> = Vec::new();
        let mut replicas_of = Vec::new();
        if let (Some(addrs), true) = (replica_addrs, read_from != ReadFrom::Master) {
            let role = match sentinel_replicas {
                Some(_) => Role::SentinelReplica,
                None => Role::ClusterReplica,
            };
            for rs in addrs {
                let mut mine = Vec::with_capacity(rs.len());
                for a in rs {
                    let sc = crate::config::ServerConfig {
                        addr: a.clone(),
                        weight: 1,
                        alias: None,
                        name: a.to_string(),
                    };
                    let srv = keep_or_start(old.map(|o| &o.replicas[..]), &sc, role);
                    mine.push(replicas.len());
                    replicas.push(srv);
                }
                replicas_of.push(mine);
            }
        }
        Topology {
            pool: pool.clone(),
            ring,
            servers,
            stats,
            tls,
            next: AtomicUsize::new(0),
            cluster: view,
            replicas,
            replicas_of,
            writer: old.map(|o| o.writer.clone()).unwrap_or_default(),
            sentinel_replicas,
        }
    }

    /// The index of the server that owns `key`, or `None` when no server is available.
    #[inline]
    pub fn server_for(&self, key: &[u8]) -> Option<usize> {
        if let Some(c) = &self.cluster {
            return c.table.server_of(cluster_slot(key));
        }
        self.ring
            .server_for(self.pool.hash, hash_tag_span(key, self.pool.hash_tag))
    }
}

impl Topology {
    /// Where a read-only command for the master `server` goes under the pool's `read_from`:
    /// `server` itself, or one of its replicas that is not ejected (an index past `servers`),
    /// in turn. `None` with `read_from: replica` when the master has no replica up.
    pub fn reader_for(&self, server: usize) -> Option<usize> {
        let read_from = read_from(&self.pool);
        if read_from == ReadFrom::Master {
            return Some(server);
        }
        let mine = self.replicas_of.get(server).map(Vec::as_slice).unwrap_or_default();
        let up = |j: &&usize| !self.replicas[**j].is_ejected();
        match mine.iter().filter(up).count() {
            0 if read_from == ReadFrom::PreferReplica => Some(server),
            0 => None,
            n => {
                let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n;
                mine.iter().filter(up).nth(turn).map(|j| self.servers.len() + j)
            }
        }
    }

    /// Whether the cluster master at `addr` serves any slot in this snapshot's table.
    pub fn serves_slots(&self, addr: &crate::config::Addr) -> bool {
        self.cluster.as_ref().is_some_and(|c| {
            c.table
                .masters
                .iter()
                .position(|m| m == addr)
                .is_some_and(|i| c.table.slots.contains(&(i as u16)))
        })
    }
}

/// A cluster or Sentinel pool's `read_from`; every other pool reads from its servers.
fn read_from(pool: &PoolConfig) -> ReadFrom {
    match &pool.source {
        Source::Cluster(c) => c.read_from,
        Source::Sentinel(s) => s.read_from,
        Source::Static => ReadFrom::Master,
    }
}

/// The live topology of a pool, swapped whole on reload.
pub type SharedTopology = Arc<ArcSwap<Topology>>;

/// Swap in the snapshot `next` builds from the live one (`None`: keep it). Every writer of a
/// pool's topology (a reload, an ejection or a server's return, a Sentinel failover, a slot
/// table refresh) goes through here: `next` runs under the pool's writer lock and sees the
/// latest snapshot, so no writer builds on a snapshot another has just replaced and undoes its
/// change. `next` must not block: it builds and starts connections, nothing more.
pub fn update(topo: &SharedTopology, next: impl FnOnce(&Arc<Topology>) -> Option<Topology>) -> bool {
    let writer = topo.load().writer.clone();
    let _held = writer.lock().unwrap_or_else(|e| e.into_inner());
    let current = topo.load_full();
    match next(&current) {
        Some(t) => {
            topo.store(Arc::new(t));
            true
        }
        None => false,
    }
}

/// Rebuild the pool's ring whenever a server is ejected, and bring ejected servers back once a
/// probe after `server_retry_timeout` connects. Ends when the pool drains.
pub async fn watch_health(
    topo: SharedTopology,
    events: HealthEvents,
    mut rx: mpsc::UnboundedReceiver<()>,
    mut drain: tokio::sync::watch::Receiver<bool>,
) {
    let (rejoin_tx, mut rejoin_rx) = mpsc::unbounded_channel::<()>();
    let mut probing: Vec<Arc<Server>> = Vec::new();
    loop {
        tokio::select! {
            e = rx.recv() => if e.is_none() { return },
            _ = rejoin_rx.recv() => {},
            _ = drain.wait_for(|d| *d) => return,
        }
        while rx.try_recv().is_ok() {}
        let mut ejected: Vec<Arc<Server>> = Vec::new();
        update(&topo, |current| {
            let next = Topology::rebuild(&current.pool, current.tls.clone(), Some(current), Some(&events));
            // A Sentinel pool's replicas are ejected too (out of the reads, not of any ring).
            ejected = next
                .servers
                .iter()
                .chain(&next.replicas)
                .filter(|s| s.is_ejected())
                .cloned()
                .collect();
            Some(next)
        });
        for s in &ejected {
            if !probing.iter().any(|p| Arc::ptr_eq(p, s)) {
                tracing::warn!(server = %s.addr, "ejected; retry in {:?}", s.retry_timeout());
                probing.push(Arc::clone(s));
                let (s, rejoin) = (Arc::clone(s), rejoin_tx.clone());
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(s.retry_timeout()).await;
                        if Arc::strong_count(&s) == 1 {
                            return; // the server left the pool meanwhile
                        }
                        if s.probe().await {
                            tracing::info!(server = %s.addr, "back in the ring");
                            let _ = rejoin.send(());
                            return;
                        }
                    }
                });
            }
        }
        probing.retain(|p| p.is_ejected());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Addr, Config, ServerConfig};

    /// Writers that race each build on the snapshot the one before them stored: each adds a
    /// server, and none is lost.
    #[test]
    fn concurrent_writers_never_undo_each_other() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let pool = Config::parse("p:\n  listen: 127.0.0.1:1\n  servers: ['127.0.0.1:1:1']\n")
                .unwrap()
                .pools
                .remove(0);
            let topo: SharedTopology = Arc::new(ArcSwap::from_pointee(Topology::start(&pool, PoolTls::default())));
            let writers: Vec<_> = (2..34u16)
                .map(|port| {
                    let topo = topo.clone();
                    tokio::task::spawn_blocking(move || {
                        update(&topo, |cur| {
                            let mut p = cur.pool.clone();
                            // Room for another writer to slip in, were there no lock.
                            std::thread::sleep(std::time::Duration::from_micros(200));
                            p.servers.push(ServerConfig {
                                addr: Addr::Tcp {
                                    host: "127.0.0.1".into(),
                                    port,
                                },
                                weight: 1,
                                alias: None,
                                name: format!("127.0.0.1:{port}"),
                            });
                            Some(Topology::rebuild(&p, cur.tls.clone(), Some(cur), None))
                        })
                    })
                })
                .collect();
            for w in writers {
                assert!(w.await.unwrap());
            }
            assert_eq!(topo.load().servers.len(), 33, "every writer's server is in the pool");
        });
    }
}
