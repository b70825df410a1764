//! Redis Cluster pools: keys go to the master that serves their slot, and the cluster's
//! redirections are followed where replies are read, so a plain client never sees them.
//!
//! The slot table is learned from the seed nodes at start (`CLUSTER SHARDS`, or `CLUSTER
//! SLOTS` on servers before 7.0) and kept in the topology snapshot; it is refreshed
//! periodically and after a MOVED, off the request path (requests keep using the table they
//! have, and a refresh is swapped in whole as a reload is). A node's connection hands a reply
//! of `-MOVED`, `-ASK`, `-TRYAGAIN` or `-CLUSTERDOWN` (with the request's bytes) to this pool's
//! [`Redirector`] instead of to the client: MOVED re-sends the request to the node it names
//! (and refreshes the table), ASK sends `ASKING` and the request to the node it names,
//! TRYAGAIN and CLUSTERDOWN re-send after a short pause. A request is redirected at most
//! [`crate::upstream::MAX_REDIRECTS`] times; after that the client gets the last error.
//!
//! A node whose connection cannot be made or is lost may be failing over: the table is then
//! asked for every 100 ms (that node last) until it serves no slot, so its promoted
//! replica is used as soon as the cluster has promoted it. A pinned connection (a client's
//! transaction, blocked command or subscriptions) is not redirected: its client gets an error
//! saying so, and the table is refreshed at once ([`crate::upstream::Redirect::stale`]).

use super::control::{Control, Credentials, Value};
use super::{HealthEvents, SharedTopology, Topology};
use crate::config::{Addr, ClusterConfig, PoolConfig, ServerConfig};
use crate::hash::CLUSTER_SLOTS;
use crate::tls::PoolTls;
use crate::upstream::{Framing, Job, Lane, Redirect, RedirectHook};
use bytes::Bytes;
use smallvec::smallvec;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A slot no master serves.
pub const UNSERVED: u16 = u16::MAX;
/// How long one node gets to connect and answer a table request.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// While a node is unreachable, how often the table is asked for.
const LOST_REFRESH: Duration = Duration::from_millis(100);
/// How long after a node was last unreachable the table is still asked for that often.
const LOST_WATCH: Duration = Duration::from_secs(30);

/// Which master serves each slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTable {
    /// Every master, in address order (slotless masters too: they may be importing).
    pub masters: Vec<Addr>,
    /// Per slot, an index into `masters` or [`UNSERVED`].
    pub slots: Box<[u16]>,
    /// Per master (same order), its replicas that are online, in address order.
    pub replicas: Vec<Vec<Addr>>,
}

impl SlotTable {
    /// The index of the master serving `slot`.
    #[inline]
    pub fn server_of(&self, slot: u16) -> Option<usize> {
        match self.slots.get(slot as usize) {
            Some(&i) if i != UNSERVED => Some(i as usize),
            _ => None,
        }
    }

    /// Slots some master serves.
    pub fn served(&self) -> usize {
        self.slots.iter().filter(|&&s| s != UNSERVED).count()
    }

    /// Masters that served slots here and whose slots `next` gives to a node that was not a
    /// master here: a replica promoted (a failover, manual or not; a resharding moves slots
    /// between masters, new ones included, which join as masters without slots).
    pub fn failovers(&self, next: &SlotTable) -> u64 {
        let mut failed: Vec<u16> = Vec::new();
        for (old, new) in self.slots.iter().zip(next.slots.iter()) {
            if *old == UNSERVED || *new == UNSERVED || failed.contains(old) {
                continue;
            }
            let (o, n) = (&self.masters[*old as usize], &next.masters[*new as usize]);
            if o != n && !self.masters.contains(n) {
                failed.push(*old);
            }
        }
        failed.len() as u64
    }

    fn from_ranges(
        mut ranges: Vec<(u16, u16, Addr)>,
        mut masters: Vec<Addr>,
        replicas_of: Vec<(Addr, Addr)>,
    ) -> Option<SlotTable> {
        for (_, _, a) in &ranges {
            if !masters.contains(a) {
                masters.push(a.clone());
            }
        }
        masters.sort_by_key(|a| a.to_string());
        masters.dedup();
        if masters.len() >= UNSERVED as usize {
            return None;
        }
        let mut slots = vec![UNSERVED; CLUSTER_SLOTS].into_boxed_slice();
        ranges.sort_by_key(|r| r.0);
        for (start, end, a) in ranges {
            if start > end || end as usize >= CLUSTER_SLOTS {
                return None;
            }
            let i = masters.iter().position(|m| *m == a)? as u16;
            slots[start as usize..=end as usize].fill(i);
        }
        let mut replicas = vec![Vec::new(); masters.len()];
        for (m, r) in replicas_of {
            if let Some(i) = masters.iter().position(|x| *x == m) {
                if !replicas[i].contains(&r) && !masters.contains(&r) {
                    replicas[i].push(r);
                }
            }
        }
        for r in &mut replicas {
            r.sort_by_key(|a| a.to_string());
        }
        Some(SlotTable {
            masters,
            slots,
            replicas,
        })
    }
}

/// A node's address as a table gives it: an empty or `?` host is the node that answered.
fn node_addr(host: Option<String>, port: Option<i64>, asked: &Addr) -> Option<Addr> {
    let port = u16::try_from(port?).ok().filter(|p| *p > 0)?;
    let host = match host {
        Some(h) if !h.is_empty() && h != "?" => h,
        _ => match asked {
            Addr::Tcp { host, .. } => host.clone(),
            Addr::Unix { .. } => return None,
        },
    };
    Some(Addr::Tcp { host, port })
}

/// Parse a `CLUSTER SHARDS` reply (Redis 7.0+), asked of `asked`. Over TLS a node is reached
/// at its `tls-port` (when it has one), else at its `port`.
pub fn parse_shards(v: &Value, asked: &Addr, tls: bool) -> Option<SlotTable> {
    let mut ranges = Vec::new();
    let mut masters = Vec::new();
    let mut replicas = Vec::new();
    for shard in v.items()? {
        let nodes = shard.field("nodes")?.items()?;
        // After a failover a shard can list its failed old master too: the one online wins.
        let is_master = |n: &&Value| n.field("role").and_then(Value::text).as_deref() == Some("master");
        let health = |n: &&Value| n.field("health").and_then(Value::text);
        let master = nodes
            .iter()
            .filter(is_master)
            .find(|n| health(n).as_deref() == Some("online"))
            .or_else(|| {
                nodes
                    .iter()
                    .filter(is_master)
                    .find(|n| health(n).as_deref() != Some("failed"))
            });
        let Some(master) = master else {
            continue; // a shard whose master failed and has no replacement yet
        };
        let addr_of = |n: &Value| {
            let host = n
                .field("endpoint")
                .and_then(Value::text)
                .filter(|e| e != "?" && !e.is_empty())
                .or_else(|| n.field("ip").and_then(Value::text));
            let tls_port = n.field("tls-port").and_then(Value::int).filter(|p| *p > 0);
            let port = match tls_port {
                Some(p) if tls => Some(p),
                _ => n.field("port").and_then(Value::int),
            };
            node_addr(host, port, asked)
        };
        let addr = addr_of(master)?;
        for n in nodes {
            if n.field("role").and_then(Value::text).as_deref() == Some("replica")
                && health(&n).as_deref() == Some("online")
            {
                if let Some(r) = addr_of(n) {
                    replicas.push((addr.clone(), r));
                }
            }
        }
        let bounds = shard.field("slots")?.items()?;
        if bounds.len() % 2 != 0 {
            return None;
        }
        for b in bounds.chunks_exact(2) {
            let (s, e) = (b[0].int()?, b[1].int()?);
            ranges.push((u16::try_from(s).ok()?, u16::try_from(e).ok()?, addr.clone()));
        }
        masters.push(addr);
    }
    SlotTable::from_ranges(ranges, masters, replicas)
}

/// Parse a `CLUSTER SLOTS` reply (any version with cluster support), asked of `asked`.
pub fn parse_slots(v: &Value, asked: &Addr) -> Option<SlotTable> {
    let mut ranges = Vec::new();
    let mut replicas = Vec::new();
    for range in v.items()? {
        let r = range.items()?;
        let (s, e) = (r.first()?.int()?, r.get(1)?.int()?);
        let master = r.get(2)?.items()?;
        let addr = node_addr(master.first()?.text(), master.get(1)?.int(), asked)?;
        for replica in r.get(3..).unwrap_or_default() {
            let replica = replica.items()?;
            if let Some(a) = node_addr(replica.first()?.text(), replica.get(1)?.int(), asked) {
                replicas.push((addr.clone(), a));
            }
        }
        ranges.push((u16::try_from(s).ok()?, u16::try_from(e).ok()?, addr));
    }
    SlotTable::from_ranges(ranges, Vec::new(), replicas)
}

/// Ask one node for the slot table.
async fn fetch(node: &Addr, with: &Credentials) -> Result<SlotTable, String> {
    let mut c = Control::connect(node, ASK_TIMEOUT, with).await?;
    match c.call(&[b"CLUSTER", b"SHARDS"]).await? {
        Value::Error(e) if e.contains("unknown subcommand") || e.contains("Unknown subcommand") => {
            let v = c.call(&[b"CLUSTER", b"SLOTS"]).await?;
            match v {
                Value::Error(e) => Err(format!("{node}: CLUSTER SLOTS: {e}")),
                v => parse_slots(&v, node).ok_or_else(|| format!("{node}: CLUSTER SLOTS reply cannot be read")),
            }
        }
        Value::Error(e) => Err(format!("{node}: CLUSTER SHARDS: {e}")),
        v => parse_shards(&v, node, with.tls.is_some())
            .ok_or_else(|| format!("{node}: CLUSTER SHARDS reply cannot be read")),
    }
}

/// How a cluster pool's nodes are reached: `redis_user`, `redis_auth` and `tls`, as loaded in
/// `tls`.
fn credentials(pool: &PoolConfig, tls: &PoolTls) -> Credentials {
    Credentials {
        user: pool.redis_user.clone(),
        password: pool.redis_auth.clone(),
        tls: tls.connector.clone(),
    }
}

/// The table from the first of `nodes` that gives one.
async fn fetch_any(nodes: &[Addr], with: &Credentials) -> Result<SlotTable, Vec<String>> {
    let mut errors = Vec::new();
    for n in nodes {
        match fetch(n, with).await {
            Ok(t) => return Ok(t),
            Err(e) => errors.push(e),
        }
    }
    Err(errors)
}

/// Learn a cluster pool's slot table from its seeds, before the pool starts or a reload that
/// makes it a cluster pool is applied.
///
/// # Errors
/// No seed answered with a table.
pub async fn discover(pool: &PoolConfig, cfg: &ClusterConfig, tls: &PoolTls) -> Result<SlotTable, String> {
    let t = fetch_any(&cfg.seeds, &credentials(pool, tls)).await.map_err(|e| {
        format!(
            "pool '{}': no cluster seed gave a slot table: {}",
            pool.name,
            e.join("; ")
        )
    })?;
    tracing::info!(
        "pool {}: cluster of {} masters, {} of {CLUSTER_SLOTS} slots served",
        pool.name,
        t.masters.len(),
        t.served()
    );
    Ok(t)
}

/// `pool` with the table's masters as its servers (in the table's order).
pub fn resolved(pool: &PoolConfig, table: &SlotTable) -> PoolConfig {
    let mut p = pool.clone();
    p.servers = table
        .masters
        .iter()
        .map(|a| ServerConfig {
            addr: a.clone(),
            weight: 1,
            alias: None,
            name: a.to_string(),
        })
        .collect();
    p
}

/// What a cluster pool's topology carries: the slot table it routes by, and where its nodes'
/// connections hand redirections.
#[derive(Debug)]
pub struct ClusterView {
    pub table: SlotTable,
    pub hook: RedirectHook,
}

/// One redirected request, on its way to the pool's follower.
struct Redirected {
    from: Addr,
    lane: Lane,
    job: Job,
    reply: Bytes,
}

/// What the pool's node connections tell its follower.
enum Event {
    Redirected(Redirected),
    /// A node could not be reached: the table may be about to change.
    Unreachable(Addr),
    /// A pinned connection was redirected to this node: the table is out of date.
    Stale(Addr),
}

/// Takes redirections from the pool's node connections (any worker) to its follower task.
#[derive(Debug)]
pub struct Redirector {
    tx: mpsc::UnboundedSender<Event>,
}

impl std::fmt::Debug for Redirected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redirected from {}", self.from)
    }
}

impl Redirect for Redirector {
    fn redirect(&self, from: &Addr, lane: Lane, job: Job, reply: Bytes) {
        let r = Redirected {
            from: from.clone(),
            lane,
            job,
            reply,
        };
        if let Err(mpsc::error::SendError(Event::Redirected(r))) = self.tx.send(Event::Redirected(r)) {
            // The pool is going away: the client gets the node's own answer.
            if let Some(done) = r.job.done {
                done.send(Ok(r.reply));
            }
        }
    }

    fn unreachable(&self, from: &Addr) {
        let _ = self.tx.send(Event::Unreachable(from.clone()));
    }

    fn stale(&self, reply: &[u8]) {
        if let Some(Kind::Moved(to) | Kind::Ask(to)) = kind(reply) {
            let _ = self.tx.send(Event::Stale(to));
        }
    }
}

/// A redirection reply, parsed.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Moved(Addr),
    Ask(Addr),
    /// TRYAGAIN, CLUSTERDOWN: the same node, a moment later.
    Again,
}

fn kind(reply: &[u8]) -> Option<Kind> {
    let line = reply.strip_prefix(b"-")?.strip_suffix(b"\r\n")?;
    let line = std::str::from_utf8(line).ok()?;
    let mut w = line.split(' ');
    match w.next()? {
        "MOVED" | "ASK" => {
            let _slot: u16 = w.next()?.parse().ok()?;
            let (host, port) = w.next()?.rsplit_once(':')?;
            let addr = Addr::Tcp {
                host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
                port: port.parse().ok()?,
            };
            Some(if line.starts_with('M') {
                Kind::Moved(addr)
            } else {
                Kind::Ask(addr)
            })
        }
        "TRYAGAIN" | "CLUSTERDOWN" => Some(Kind::Again),
        _ => None,
    }
}

/// Follows a cluster pool's slot table and redirections until dropped.
pub struct Follower {
    pub config: ClusterConfig,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A new redirection channel: the hook goes into the topology's node connections, the
/// receiver to [`Follower::start`].
pub fn channel() -> (RedirectHook, Receiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    (RedirectHook(Arc::new(Redirector { tx })), Receiver(rx))
}

/// The follower's end of [`channel`].
pub struct Receiver(mpsc::UnboundedReceiver<Event>);

impl Follower {
    /// Start following (on the calling runtime) the cluster of the pool whose live topology is
    /// `topo`.
    pub fn start(config: ClusterConfig, topo: SharedTopology, events: HealthEvents, rx: Receiver) -> Follower {
        let task = tokio::spawn(follow(config.clone(), topo, events, rx.0));
        Follower { config, task }
    }
}

/// Workers the re-sent requests are spread over.
static NEXT_WORKER: AtomicUsize = AtomicUsize::new(0);

/// Queue `jobs` (in order, on one connection) on the master at `addr`; hands them back when the
/// topology has no such master.
async fn send_to(topo: &SharedTopology, addr: &Addr, lane: Lane, mut jobs: Vec<Job>) -> Result<(), Vec<Job>> {
    let t = topo.load_full();
    let Some(server) = t.servers.iter().find(|s| s.addr == *addr) else {
        return Err(jobs);
    };
    let worker = NEXT_WORKER.fetch_add(1, Ordering::Relaxed) % crate::workers::count().max(1);
    server.send(worker, lane, 0, &mut jobs).await;
    Ok(())
}

/// Answer each job with `reply` (the node's own error).
fn give_up(jobs: Vec<Job>, reply: &Bytes) {
    for j in jobs {
        if let Some(done) = j.done {
            done.send(Ok(reply.clone()));
        }
    }
}

fn counter(pool: &str, kind: &'static str) -> metrics::Counter {
    metrics::counter!(crate::metrics::CLUSTER_REDIRECTIONS, "pool" => pool.to_string(), "kind" => kind)
}

/// The slot table's generation (1 at start, one more per change learnt) and the failovers
/// followed, as exported.
struct Learnt {
    generation: u64,
    gauge: metrics::Gauge,
    failovers: metrics::Counter,
}

impl Learnt {
    fn new(pool: &str) -> Learnt {
        let gauge = metrics::gauge!(crate::metrics::CLUSTER_TABLE_GENERATION, "pool" => pool.to_string());
        gauge.set(1.0);
        Learnt {
            generation: 1,
            gauge,
            failovers: metrics::counter!(crate::metrics::CLUSTER_FAILOVERS, "pool" => pool.to_string()),
        }
    }

    /// A refresh swapped in a new table, in which `demoted` masters lost their slots to replicas.
    fn changed(&mut self, demoted: u64) {
        self.generation += 1;
        self.gauge.set(self.generation as f64);
        self.failovers.increment(demoted);
    }
}

/// Send a redirected request's `jobs` to `addr`; when no connection to it is known (a master
/// this table does not have yet), learn the table first and try once more, else answer with
/// the node's `reply`.
#[allow(clippy::too_many_arguments)]
async fn resend(
    cfg: &ClusterConfig,
    topo: &SharedTopology,
    events: &HealthEvents,
    learnt: &mut Learnt,
    addr: &Addr,
    lane: Lane,
    jobs: Vec<Job>,
    reply: &Bytes,
) {
    let Err(jobs) = send_to(topo, addr, lane, jobs).await else {
        return;
    };
    if let Some(demoted) = refresh(cfg, topo, events, Some(addr), None).await {
        learnt.changed(demoted);
    }
    if let Err(jobs) = send_to(topo, addr, lane, jobs).await {
        give_up(jobs, reply);
    }
}

async fn follow(
    cfg: ClusterConfig,
    topo: SharedTopology,
    events: HealthEvents,
    mut rx: mpsc::UnboundedReceiver<Event>,
) {
    let pool = topo.load().pool.name.clone();
    let (moved, ask, again) = (
        counter(&pool, "moved"),
        counter(&pool, "ask"),
        counter(&pool, "tryagain"),
    );
    let mut learnt = Learnt::new(&pool);
    let mut tick = tokio::time::interval(cfg.refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut stale: Option<Addr> = None;
    // A node that could not be reached, and until when the table is asked for often (its
    // replica may be promoted at any moment).
    let mut lost: Option<(Addr, Instant)> = None;
    let mut last_refresh = Instant::now();
    loop {
        if lost.as_ref().is_some_and(|(_, until)| Instant::now() > *until) {
            lost = None;
        }
        // Redirections already queued go first; the table is refreshed when none is waiting.
        let next = if stale.is_some() {
            rx.try_recv().ok()
        } else {
            let soon = last_refresh + LOST_REFRESH;
            tokio::select! {
                _ = tick.tick() => None,
                _ = tokio::time::sleep_until(soon.into()), if lost.is_some() => None,
                r = rx.recv() => match r {
                    Some(r) => Some(r),
                    None => return,
                },
            }
        };
        let r = match next {
            Some(Event::Redirected(r)) => r,
            Some(Event::Stale(addr)) => {
                stale = Some(addr);
                continue;
            }
            Some(Event::Unreachable(addr)) => {
                let t = topo.load();
                let known = t.servers.iter().chain(&t.replicas).any(|s| s.addr == addr);
                if known && lost.as_ref().is_none_or(|(a, _)| *a != addr) {
                    tracing::info!(pool = %pool, node = %addr, "cluster node unreachable: following its failover");
                }
                if known {
                    lost = Some((addr, Instant::now() + LOST_WATCH));
                }
                continue;
            }
            None => {
                if last_refresh.elapsed() < LOST_REFRESH && stale.is_none() && lost.is_some() {
                    continue;
                }
                last_refresh = Instant::now();
                let avoid = lost.as_ref().map(|(a, _)| a);
                if let Some(demoted) = refresh(&cfg, &topo, &events, stale.take().as_ref(), avoid).await {
                    learnt.changed(demoted);
                    // Once the node serves no slot, its failover has been followed.
                    if lost.as_ref().is_some_and(|(a, _)| !topo.load().serves_slots(a)) {
                        lost = None;
                    }
                }
                continue;
            }
        };
        match kind(&r.reply) {
            Some(Kind::Moved(addr)) => {
                moved.increment(1);
                stale = Some(addr.clone());
                resend(&cfg, &topo, &events, &mut learnt, &addr, r.lane, vec![r.job], &r.reply).await;
            }
            Some(Kind::Ask(addr)) => {
                ask.increment(1);
                let asking = Job {
                    parts: smallvec![Bytes::from_static(b"*1\r\n$6\r\nASKING\r\n")],
                    framing: Framing::Redis,
                    done: None,
                };
                resend(
                    &cfg,
                    &topo,
                    &events,
                    &mut learnt,
                    &addr,
                    r.lane,
                    vec![asking, r.job],
                    &r.reply,
                )
                .await;
            }
            Some(Kind::Again) => {
                again.increment(1);
                let attempts = match r.job.framing {
                    Framing::RedisRetry(n) => n as u64,
                    _ => 1,
                };
                let topo = topo.clone();
                // A failover may be under way.
                stale = stale.or(Some(r.from.clone()));
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(25 * attempts * attempts)).await;
                    if let Err(jobs) = send_to(&topo, &r.from, r.lane, vec![r.job]).await {
                        give_up(jobs, &r.reply);
                    }
                });
            }
            None => give_up(vec![r.job], &r.reply),
        }
    }
}

/// Ask for the table (`first`, then the current masters, then the seeds, `last` last) and swap
/// in a new topology when it changed. When it did: how many masters lost their slots to one of
/// their replicas (failovers).
async fn refresh(
    cfg: &ClusterConfig,
    topo: &SharedTopology,
    events: &HealthEvents,
    first: Option<&Addr>,
    last: Option<&Addr>,
) -> Option<u64> {
    let current = topo.load_full();
    let mut nodes: Vec<Addr> = first.into_iter().cloned().collect();
    for a in current.servers.iter().map(|s| &s.addr).chain(&cfg.seeds) {
        if !nodes.contains(a) {
            nodes.push(a.clone());
        }
    }
    if let Some(last) = last {
        if let Some(i) = nodes.iter().position(|n| n == last) {
            let n = nodes.remove(i);
            nodes.push(n);
        }
    }
    let table = match fetch_any(&nodes, &credentials(&current.pool, &current.tls)).await {
        Ok(t) => t,
        Err(errors) => {
            if let Some(suppressed) = crate::log_limit::allow(&format!("cluster table {}", current.pool.name)) {
                tracing::warn!(pool = %current.pool.name, suppressed, "no node gave a slot table: {}", errors.join("; "));
            }
            return None;
        }
    };
    // Another refresh or a reload may have swapped meanwhile: build on the latest.
    let mut demoted = None;
    super::update(topo, |current| {
        let view = current.cluster.as_ref()?;
        if view.table == table {
            return None;
        }
        demoted = Some(view.table.failovers(&table));
        tracing::info!(
            pool = %current.pool.name,
            "cluster slot table changed: {} masters, {} slots served",
            table.masters.len(),
            table.served()
        );
        let view = Arc::new(ClusterView {
            table,
            hook: view.hook.clone(),
        });
        Some(Topology::build(
            &current.pool,
            current.tls.clone(),
            Some(current),
            Some(events),
            Some(view),
        ))
    });
    demoted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> Addr {
        Addr::Tcp {
            host: "127.0.0.1".into(),
            port,
        }
    }

    fn s(v: &str) -> Value {
        Value::Str(Bytes::from(v.to_string()))
    }

    #[test]
    fn redirections_parse() {
        assert_eq!(kind(b"-MOVED 3999 127.0.0.1:6381\r\n"), Some(Kind::Moved(a(6381))));
        assert_eq!(kind(b"-ASK 3999 127.0.0.1:6382\r\n"), Some(Kind::Ask(a(6382))));
        assert_eq!(
            kind(b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n"),
            Some(Kind::Again)
        );
        assert_eq!(kind(b"-CLUSTERDOWN The cluster is down\r\n"), Some(Kind::Again));
        assert_eq!(kind(b"-ERR wrong\r\n"), None);
        assert_eq!(kind(b"-MOVED x 127.0.0.1:6381\r\n"), None);
    }

    #[test]
    fn slots_reply_parses() {
        // [[0, 5460, [ip, port, id]], [5461, 16383, ["", port, id], [replica]]]
        let v = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![s("127.0.0.1"), Value::Int(7001), s("id1")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                Value::Array(vec![s(""), Value::Int(7000), s("id2")]),
                Value::Array(vec![s("127.0.0.1"), Value::Int(7003), s("id3")]),
            ]),
        ]);
        let t = parse_slots(&v, &a(7000)).unwrap();
        assert_eq!(t.masters, vec![a(7000), a(7001)]);
        assert_eq!(t.slots[0], 1);
        assert_eq!(t.slots[5461], 0);
        assert_eq!(t.served(), CLUSTER_SLOTS);
        assert_eq!(t.replicas, vec![vec![a(7003)], vec![]]);
        // 7003 takes over 7000's slots: one failover.
        let mut after = t.clone();
        after.masters = vec![a(7003), a(7001)];
        after.replicas = vec![vec![], vec![]];
        assert_eq!(t.failovers(&after), 1);
        assert_eq!(t.failovers(&t), 0);
    }

    #[test]
    fn shards_reply_parses() {
        let node = |port: i64, role: &str| {
            Value::Array(vec![
                s("id"),
                s("x"),
                s("port"),
                Value::Int(port),
                s("ip"),
                s("127.0.0.1"),
                s("endpoint"),
                s("127.0.0.1"),
                s("role"),
                s(role),
                s("health"),
                s("online"),
            ])
        };
        let v = Value::Array(vec![
            Value::Array(vec![
                s("slots"),
                Value::Array(vec![Value::Int(0), Value::Int(99), Value::Int(200), Value::Int(299)]),
                s("nodes"),
                Value::Array(vec![node(7003, "replica"), node(7000, "master")]),
            ]),
            Value::Array(vec![
                s("slots"),
                Value::Array(vec![]),
                s("nodes"),
                Value::Array(vec![node(7001, "master")]),
            ]),
        ]);
        let t = parse_shards(&v, &a(7000), false).unwrap();
        assert_eq!(t.masters, vec![a(7000), a(7001)], "slotless masters are kept");
        assert_eq!(t.replicas, vec![vec![a(7003)], vec![]]);
        assert_eq!((t.slots[0], t.slots[250], t.slots[150]), (0, 0, UNSERVED));
        assert_eq!(t.served(), 200);
        assert_eq!(
            parse_shards(&v, &a(7000), true),
            Some(t),
            "no tls-port: the port over TLS too"
        );

        // Nodes with a TLS port: legate over TLS goes there, plain legate to `port`.
        let with_tls = |port: i64| {
            let mut n = node(port, "master");
            if let Value::Array(items) = &mut n {
                items.extend([s("tls-port"), Value::Int(port + 100)]);
            }
            Value::Array(vec![
                s("slots"),
                Value::Array(vec![Value::Int(0), Value::Int(16383)]),
                s("nodes"),
                Value::Array(vec![n]),
            ])
        };
        let v = Value::Array(vec![with_tls(7000)]);
        assert_eq!(parse_shards(&v, &a(7000), true).unwrap().masters, vec![a(7100)]);
        assert_eq!(parse_shards(&v, &a(7000), false).unwrap().masters, vec![a(7000)]);
        let bad = Value::Array(vec![Value::Array(vec![
            s("slots"),
            Value::Array(vec![Value::Int(0), Value::Int(20000)]),
            s("nodes"),
            Value::Array(vec![node(7000, "master")]),
        ])]);
        assert_eq!(parse_shards(&bad, &a(7000), false), None);
    }
}
