//! The running pools, and how a new config is applied to them without failing a request.
//!
//! A pool is identified by its listen address. A reload keeps the listener (and every client
//! connection) of each address still in the file and swaps in a topology built from the new
//! pool; servers whose address and connection settings did not change keep their connections.
//! Addresses no longer in the file stop accepting, and their clients are drained: what they
//! already sent is answered, then the connection closes. Listeners for new addresses are bound
//! before anything changes, so a bind failure leaves the running topology untouched.

use crate::config::{Addr, Config, PoolConfig, Source};
use crate::server::{accept_loop, Listener, PoolHandle};
use crate::tls::PoolTls;
use crate::topology::cluster::{self, ClusterView};
use crate::topology::sentinel::{self, Follower};
use crate::topology::{update, watch_health, HealthEvents, SharedTopology, Topology};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

struct RunningPool {
    config: PoolConfig,
    topo: SharedTopology,
    /// Servers report ejections here; the pool's health task rebuilds the ring.
    events: HealthEvents,
    drain: watch::Sender<bool>,
    alive_tx: mpsc::Sender<()>,
    alive_rx: mpsc::Receiver<()>,
    /// One accept loop per worker, each on its own descriptor of the pool's socket.
    accept: Vec<JoinHandle<Option<Listener>>>,
    /// A Sentinel pool's masters, followed through failovers.
    follower: Option<Follower>,
    /// A cluster pool's slot table and redirections, followed.
    cluster: Option<cluster::Follower>,
}

/// A pool that stopped: its listener comes back once it has stopped accepting, and its
/// sessions are gone when `alive` reports closed.
struct Stopping {
    name: String,
    accept: Vec<JoinHandle<Option<Listener>>>,
    alive: mpsc::Receiver<()>,
}

/// Every running pool, by listen address.
pub struct Pools {
    pools: HashMap<Addr, RunningPool>,
    generation: u64,
    /// Sessions of pools removed by reloads, still finishing.
    draining: Vec<JoinHandle<()>>,
}

/// A master name -> address map per Sentinel pool, by listen address.
type Resolved = HashMap<Addr, HashMap<String, Addr>>;

/// What the new config's Sentinel and cluster pools learned before anything changed, by
/// listen address.
#[derive(Default)]
struct Learned {
    masters: Resolved,
    tables: HashMap<Addr, cluster::SlotTable>,
}

/// A cluster pool's slot table and the redirect channel of its node connections.
fn cluster_view(table: cluster::SlotTable) -> (Arc<ClusterView>, cluster::Receiver) {
    let (hook, rx) = cluster::channel();
    (Arc::new(ClusterView { table, hook }), rx)
}

/// Start a pool on `listener`; a Sentinel pool's servers and a cluster pool's slot table are
/// in `learned` (resolved already).
fn start_pool(config: &PoolConfig, tls: PoolTls, listener: Listener, learned: &mut Learned) -> RunningPool {
    let masters = learned.masters.remove(&config.listen);
    let view = match (&config.source, learned.tables.remove(&config.listen)) {
        (Source::Cluster(c), Some(t)) => Some((c.clone(), cluster_view(t))),
        _ => None,
    };
    let (events, events_rx) = mpsc::unbounded_channel();
    let (built, following) = match (&config.source, masters) {
        (Source::Sentinel(cfg), Some(m)) => (
            sentinel::resolved(config, &m),
            Some((cfg.clone(), Arc::new(Mutex::new(m)))),
        ),
        _ => (config.clone(), None),
    };
    let (cluster_cfg, view, redirects) = match view {
        Some((c, (v, rx))) => (Some(c), Some(v), Some(rx)),
        None => (None, None, None),
    };
    let topo: SharedTopology = Arc::new(ArcSwap::from_pointee(Topology::build(
        &built,
        tls,
        None,
        Some(&events),
        view,
    )));
    let follower = following.map(|(cfg, m)| Follower::start(cfg, m, topo.clone(), events.clone()));
    let cluster = match (cluster_cfg, redirects) {
        (Some(c), Some(rx)) => Some(cluster::Follower::start(c, topo.clone(), events.clone(), rx)),
        _ => None,
    };
    let (drain, drain_rx) = watch::channel(false);
    tokio::spawn(watch_health(topo.clone(), events.clone(), events_rx, drain_rx.clone()));
    let (alive_tx, alive_rx) = mpsc::channel(1);
    let handle = PoolHandle {
        topo: topo.clone(),
        protocol: config.protocol,
        drain: drain_rx,
        alive: alive_tx.clone(),
        clients: Default::default(),
    };
    tracing::info!(
        "pool {} listening on {}{} ({}{}, {} servers)",
        config.name,
        listener.local_addr(),
        if config.listen_tls.is_some() { " with TLS" } else { "" },
        config.protocol.name(),
        if config.tls.is_some() { " over TLS" } else { "" },
        config.servers.len()
    );
    RunningPool {
        config: config.clone(),
        topo,
        events,
        drain,
        alive_tx,
        alive_rx,
        accept: accept_on_workers(listener, &handle),
        follower,
        cluster,
    }
}

/// Learn the masters of every Sentinel pool of `config` (those of a running pool with the same
/// sentinels are kept as followed), before anything starts or changes.
async fn resolve_masters(
    config: &Config,
    tls: &HashMap<String, PoolTls>,
    running: &HashMap<Addr, RunningPool>,
) -> anyhow::Result<Learned> {
    let mut out = Learned::default();
    for p in &config.pools {
        let none = PoolTls::default();
        let tls = tls.get(&p.name).unwrap_or(&none);
        if let Source::Cluster(cfg) = &p.source {
            // The same seeds: the running pool's table is followed already (unless TLS came
            // or went: the nodes' ports are others then).
            let following = running
                .get(&p.listen)
                .filter(|o| o.config.tls.is_some() == p.tls.is_some())
                .and_then(|o| o.cluster.as_ref())
                .is_some_and(|f| f.config == *cfg);
            if !following {
                let table = cluster::discover(p, cfg, tls).await.map_err(anyhow::Error::msg)?;
                out.tables.insert(p.listen.clone(), table);
            }
        }
        if let Source::Sentinel(cfg) = &p.source {
            let known = match running.get(&p.listen).and_then(|o| o.follower.as_ref()) {
                Some(f) if f.config == *cfg => f.masters.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                _ => HashMap::new(),
            };
            let masters = sentinel::resolve(p, cfg, tls, &known)
                .await
                .map_err(anyhow::Error::msg)?;
            out.masters.insert(p.listen.clone(), masters);
        }
    }
    Ok(out)
}

/// Start an accept loop on every worker, each with its own descriptor of `listener`.
fn accept_on_workers(listener: Listener, handle: &PoolHandle) -> Vec<JoinHandle<Option<Listener>>> {
    let workers = crate::workers::count();
    let mut listeners = Vec::with_capacity(workers);
    for _ in 1..workers {
        match listener.try_clone() {
            Ok(l) => listeners.push(l),
            // That worker takes no clients of this pool; the others do.
            Err(e) => tracing::warn!(error = %e, "cannot share a listener with a worker"),
        }
    }
    listeners.push(listener);
    listeners
        .into_iter()
        .enumerate()
        .map(|(w, l)| crate::workers::spawn_on(w, accept_loop(l, handle.clone())))
        .collect()
}

impl RunningPool {
    fn stop(self) -> Stopping {
        let _ = self.drain.send(true);
        drop(self.alive_tx);
        Stopping {
            name: self.config.name,
            accept: self.accept,
            alive: self.alive_rx,
        }
    }
}

impl Stopping {
    /// The listener, once the pool has stopped accepting on every worker (`None` if every
    /// accept task failed).
    async fn listener(&mut self) -> Option<Listener> {
        let mut kept = None;
        for a in self.accept.drain(..) {
            if let Ok(Some(l)) = a.await {
                // The other descriptors of the same socket close as they drop.
                kept = kept.or(Some(l));
            }
        }
        kept
    }

    /// Wait until every session of the pool has closed.
    async fn finished(mut self) {
        drop(self.listener().await);
        while self.alive.recv().await.is_some() {}
        tracing::info!("pool {} drained", self.name);
    }
}

/// What a reload changed, for the log.
fn describe_changes(old: &HashMap<Addr, RunningPool>, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for p in &new.pools {
        match old.get(&p.listen) {
            None => out.push(format!("pool {} added on {}", p.name, p.listen)),
            Some(o) if o.config == *p => {}
            Some(o) => {
                let names = |c: &PoolConfig| c.servers.iter().map(|s| s.addr.to_string()).collect::<Vec<_>>();
                let (before, after) = (names(&o.config), names(p));
                let added: Vec<_> = after.iter().filter(|s| !before.contains(s)).collect();
                let removed: Vec<_> = before.iter().filter(|s| !after.contains(s)).collect();
                let mut what = Vec::new();
                if !added.is_empty() {
                    what.push(format!("servers added {added:?}"));
                }
                if !removed.is_empty() {
                    what.push(format!("servers removed {removed:?}"));
                }
                if o.config.servers != p.servers && added.is_empty() && removed.is_empty() {
                    what.push("server weights or names changed".into());
                }
                let strip = |c: &PoolConfig| PoolConfig {
                    servers: Vec::new(),
                    name: String::new(),
                    ..c.clone()
                };
                if strip(&o.config) != strip(p) {
                    what.push("settings changed".into());
                }
                if o.config.name != p.name {
                    what.push(format!("renamed from {}", o.config.name));
                }
                out.push(format!("pool {}: {}", p.name, what.join(", ")));
            }
        }
    }
    for o in old.values() {
        if !new.pools.iter().any(|p| p.listen == o.config.listen) {
            out.push(format!("pool {} removed from {}", o.config.name, o.config.listen));
        }
    }
    out
}

impl Pools {
    /// Learn every Sentinel pool's masters, then bind and start every pool of `config`.
    ///
    /// # Errors
    /// A listener cannot be bound, or a master is known to no sentinel; nothing is left running.
    pub async fn start(config: &Config) -> anyhow::Result<Pools> {
        let mut tls = crate::tls::load(config)?;
        let mut masters = resolve_masters(config, &tls, &HashMap::new()).await?;
        let mut listeners = Vec::with_capacity(config.pools.len());
        for pool in &config.pools {
            listeners.push(bind(pool)?);
        }
        let pools = config
            .pools
            .iter()
            .zip(listeners)
            .map(|(p, l)| {
                (
                    p.listen.clone(),
                    start_pool(p, tls.remove(&p.name).unwrap_or_default(), l, &mut masters),
                )
            })
            .collect();
        Ok(Pools {
            pools,
            generation: 1,
            draining: Vec::new(),
        })
    }

    /// Every running pool's config and live topology.
    pub fn snapshot(&self) -> Vec<(PoolConfig, SharedTopology)> {
        let mut v: Vec<_> = self
            .pools
            .values()
            .map(|p| (p.config.clone(), p.topo.clone()))
            .collect();
        v.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        v
    }

    /// The generation of the running config: 1 at start, one more per applied reload.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Apply a new config. On error nothing changed.
    ///
    /// # Errors
    /// A certificate or key cannot be read, or a new listen address cannot be bound.
    pub async fn apply(&mut self, config: &Config) -> anyhow::Result<Vec<String>> {
        let changes = describe_changes(&self.pools, config);
        // Certificates and keys are read again on every reload, before anything changes.
        let mut tls = crate::tls::load(config)?;
        // Sentinel pools learn their masters first: a master no sentinel knows refuses the reload.
        let mut masters = resolve_masters(config, &tls, &self.pools).await?;
        // Bind new addresses first: a failure here must leave everything as it was.
        let mut fresh: HashMap<Addr, Listener> = HashMap::new();
        for p in &config.pools {
            if !self.pools.contains_key(&p.listen) {
                fresh.insert(p.listen.clone(), bind(p)?);
            }
        }
        let mut next = HashMap::with_capacity(config.pools.len());
        for p in &config.pools {
            let tls = tls.remove(&p.name).unwrap_or_default();
            let running = match self.pools.remove(&p.listen) {
                Some(mut old) if old.config.protocol == p.protocol => {
                    let same_tls = old.config.tls.is_some() == p.tls.is_some();
                    old.cluster = old
                        .cluster
                        .take()
                        .filter(|f| same_tls && matches!(&p.source, Source::Cluster(c) if *c == f.config));
                    match (&p.source, masters.masters.remove(&p.listen)) {
                        (Source::Cluster(cfg), _) => {
                            old.follower = None;
                            if old.cluster.is_some() {
                                // The same seeds: the table is kept (and followed) as it is.
                                update(&old.topo, |cur| {
                                    Some(Topology::rebuild(p, tls, Some(cur), Some(&old.events)))
                                });
                            } else {
                                let table = masters.tables.remove(&p.listen).expect("learned above");
                                let (view, rx) = cluster_view(table);
                                update(&old.topo, |cur| {
                                    Some(Topology::build(p, tls, Some(cur), Some(&old.events), Some(view)))
                                });
                                old.cluster = Some(cluster::Follower::start(
                                    cfg.clone(),
                                    old.topo.clone(),
                                    old.events.clone(),
                                    rx,
                                ));
                            }
                        }
                        (Source::Sentinel(cfg), Some(m)) => {
                            // The same sentinels: keep following (and keep what the follower
                            // learned meanwhile); other sentinels: start over with them.
                            let kept = old.follower.take().filter(|f| f.config == *cfg);
                            let shared = kept
                                .as_ref()
                                .map(|f| f.masters.clone())
                                .unwrap_or_else(|| Arc::new(Mutex::new(HashMap::new())));
                            {
                                let mut known = shared.lock().unwrap_or_else(|e| e.into_inner());
                                let merged = m
                                    .into_iter()
                                    .map(|(n, a)| {
                                        let a = known.get(&n).cloned().unwrap_or(a);
                                        (n, a)
                                    })
                                    .collect();
                                *known = merged;
                                let built = sentinel::resolved(p, &known);
                                update(&old.topo, |cur| {
                                    Some(Topology::rebuild(&built, tls, Some(cur), Some(&old.events)))
                                });
                            }
                            old.follower = Some(kept.unwrap_or_else(|| {
                                Follower::start(cfg.clone(), shared, old.topo.clone(), old.events.clone())
                            }));
                        }
                        _ => {
                            old.follower = None;
                            // With TLS the files may have changed under the same config: the
                            // rebuild keeps every server whose certificates and keys read the same.
                            if old.config != *p || p.tls.is_some() || p.listen_tls.is_some() {
                                update(&old.topo, |cur| {
                                    Some(Topology::rebuild(p, tls, Some(cur), Some(&old.events)))
                                });
                            }
                        }
                    }
                    RunningPool {
                        config: p.clone(),
                        ..old
                    }
                }
                Some(old) => {
                    // Same address, other protocol: old clients drain, the socket is handed on.
                    let mut stopping = old.stop();
                    let listener = match stopping.listener().await {
                        Some(l) => l,
                        None => bind(p)?,
                    };
                    self.draining.push(tokio::spawn(stopping.finished()));
                    start_pool(p, tls, listener, &mut masters)
                }
                None => start_pool(p, tls, fresh.remove(&p.listen).expect("bound above"), &mut masters),
            };
            next.insert(p.listen.clone(), running);
        }
        for (_, old) in self.pools.drain() {
            // Closed before the reload is reported applied: a removed address refuses at once.
            let mut stopping = old.stop();
            drop(stopping.listener().await);
            self.draining.push(tokio::spawn(stopping.finished()));
        }
        self.pools = next;
        self.generation += 1;
        self.draining.retain(|h| !h.is_finished());
        Ok(changes)
    }

    /// Stop accepting everywhere, let every session finish what it read, and wait for them
    /// (at most `timeout`).
    pub async fn drain(self, timeout: Duration) {
        let mut waits: Vec<JoinHandle<()>> = self.draining;
        for (_, p) in self.pools {
            waits.push(tokio::spawn(p.stop().finished()));
        }
        let all = async {
            for w in waits {
                let _ = w.await;
            }
        };
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::warn!("drain timeout reached; closing the remaining connections");
        }
    }
}

fn bind(pool: &PoolConfig) -> anyhow::Result<Listener> {
    use anyhow::Context;
    Listener::bind(pool).with_context(|| format!("pool '{}': cannot listen on {}", pool.name, pool.listen))
}

/// Why a reload was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    FileChanged,
}

/// Watch the config file's directory (so in-place writes, renames and a Kubernetes ConfigMap's
/// `..data` symlink swap are all seen) and send a trigger per burst of changes.
///
/// # Errors
/// The watcher cannot be created (inotify limits, a missing directory).
pub fn watch_file(path: &Path, tx: mpsc::UnboundedSender<Trigger>) -> notify::Result<ConfigWatcher> {
    use notify::Watcher;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !matches!(ev.kind, notify::EventKind::Access(_)) {
                let _ = raw_tx.send(());
            }
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    let watcher = Arc::new(std::sync::Mutex::new(watcher));
    // When the path is a symlink, edits made through it land in the target's directory, which
    // changes whenever the link is re-pointed: follow it after every burst of events.
    let main_dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let mut target_dir: Option<PathBuf> = None;
    let follow = {
        let watcher = watcher.clone();
        let path = path.to_path_buf();
        move |target_dir: &mut Option<PathBuf>| {
            let real = std::fs::canonicalize(&path)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf));
            if real == *target_dir || real.as_ref() == Some(&main_dir) {
                return;
            }
            let mut w = watcher.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(old) = target_dir.take() {
                let _ = w.unwatch(&old);
            }
            if let Some(real) = real {
                if w.watch(&real, notify::RecursiveMode::NonRecursive).is_ok() {
                    *target_dir = Some(real);
                }
            }
        }
    };
    follow(&mut target_dir);
    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            // Debounce: an editor's save or a ConfigMap swap is several events.
            tokio::time::sleep(Duration::from_millis(150)).await;
            while raw_rx.try_recv().is_ok() {}
            follow(&mut target_dir);
            if tx.send(Trigger::FileChanged).is_err() {
                return;
            }
        }
    });
    Ok(ConfigWatcher { _watcher: watcher })
}

/// Keeps the file watch alive; dropping it stops watching.
pub struct ConfigWatcher {
    _watcher: Arc<std::sync::Mutex<notify::RecommendedWatcher>>,
}

/// What `run` needs besides the first config.
#[derive(Debug, Clone)]
pub struct Options {
    /// The admin HTTP endpoint; `None` turns it off.
    pub admin: Option<std::net::SocketAddr>,
    /// twemproxy's raw stats port (JSON on accept); `None` turns it off.
    pub stats: Option<std::net::SocketAddr>,
    /// How often the backends are asked for their statistics.
    pub scrape_interval: Duration,
    /// The file to re-read on SIGHUP and on change; `None` turns reloading off.
    pub config_path: Option<PathBuf>,
    /// Watch the file for changes (SIGHUP works either way).
    pub watch: bool,
    /// How long SIGTERM waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Worker threads; `None`: one per available core ([`crate::workers::default_count`]).
    pub workers: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            admin: None,
            stats: None,
            scrape_interval: Duration::from_secs(10),
            config_path: None,
            watch: false,
            drain_timeout: Duration::from_secs(10),
            workers: None,
        }
    }
}

/// Re-read and apply the config file; an invalid file keeps the running config.
/// `last_text` is the text last read, so repeated change events for one save act once.
/// Returns the new generation, `Ok(None)` when a change event brought nothing new, or why the
/// file was refused.
///
/// # Errors
/// The file cannot be read, is invalid, or a new listener cannot be bound.
pub async fn reload(
    pools: &mut Pools,
    path: &Path,
    last_text: &mut String,
    trigger: Trigger,
) -> Result<Option<u64>, String> {
    let result = async {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        // A change event with the text already seen (applied or refused) is an echo of one save.
        if text == *last_text && trigger == Trigger::FileChanged {
            return Ok(None);
        }
        last_text.clone_from(&text);
        let config = Config::parse(&text).map_err(|e| e.to_string())?;
        let changes = pools.apply(&config).await.map_err(|e| format!("{e:#}"))?;
        let what = if changes.is_empty() {
            "no changes".to_string()
        } else {
            changes.join("; ")
        };
        tracing::info!("config generation {} applied: {what}", pools.generation());
        Ok(Some(pools.generation()))
    }
    .await;
    match &result {
        Ok(Some(g)) => crate::metrics::reload_result(true, *g),
        Ok(None) => {}
        Err(e) => {
            tracing::error!("config reload failed, keeping generation {}: {e}", pools.generation());
            crate::metrics::reload_result(false, pools.generation());
        }
    }
    result
}
