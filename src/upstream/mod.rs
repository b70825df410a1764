//! Pipelined connections to one backend server.
//!
//! Each connection is a pair of tasks. The writer takes jobs from its queue in batches, hands
//! each job's completion to the reader *before* writing its bytes (so the reader always knows
//! what the next reply belongs to), and writes the whole batch with vectored writes. The reader
//! frames replies with the protocol's scanner and completes jobs in order with `Bytes` slices
//! of its buffer. Many clients share the connection; each reply goes straight into its
//! client's reply queue ([`crate::replies`]), which puts it back in that client's order.
//! Sessions queue the jobs of one read together ([`Outbox`]); the queues (`queue.rs`) are a
//! mutex around a `VecDeque`, taken whole, so a batch costs one lock and at most one wakeup.
//!
//! # What the reader can tell about a reply
//! Nothing in a text memcache reply or a RESP reply names the request it answers, so replies are
//! paired with requests by order alone, and checked for what order allows:
//! - memcache text: each request admits a known set of reply lines (a set: STORED, NOT_STORED,
//!   EXISTS, NOT_FOUND or an error line), so an extra or foreign line is caught at once.
//!   memcache binary: a reply must echo its request's opcode and opaque.
//! - Redis: a reply must be well-formed RESP within `max_reply_bytes`, and bytes that arrive when
//!   no request waits on the connection answer nothing. Either way the stream is out of step: the
//!   connection is closed, the requests waiting on it (and only those) fail naming the server,
//!   and the next request reconnects.
//!
//! What cannot be told: a *well-formed* Redis reply too many (a faulty server answering one
//! request twice, a middlebox injecting one) that arrives while other requests wait is taken as
//! the next request's reply, and every later reply on that connection shifts by one onto the
//! wrong request, until the connection drains and the surplus reply arrives with nothing waiting;
//! only then is the connection closed. The same holds for a surplus that arrives while the
//! connection is idle but is read only after the next request was written. RESP has no request
//! id, and any reply type is valid for some command: checking each reply's type against its
//! command's (GET: a bulk string, a null or an error) would catch some shifts, never one between
//! two requests with the same reply type, and costs a reply-type table and a check per reply.
//! legate relies, as twemproxy does, on a Redis server answering each request once.

mod pinned;
pub(crate) mod queue;

pub use pinned::{Pin, PinRefused, Sink};

use crate::config::{Addr, PoolConfig, Protocol, ServerConfig};
use crate::metrics::{CommandLatency, CommandTag, ServerStats};
use crate::net::{Plain, Stream};
use crate::protocol::{memcache, redis};
use crate::replies::ReplyTo;
use crate::tls::{Connector, PoolTls};
use bytes::{Buf, Bytes, BytesMut};
use queue::Queue;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// How the reply to a job is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Memcache(memcache::ReplyKind),
    /// A memcache binary request: the reply echoes its opcode and opaque.
    MemcacheBinary(memcache::binary::ReplyFrame),
    Redis,
    /// A Redis request legate sent again after a cluster redirection (MOVED, ASK, TRYAGAIN,
    /// CLUSTERDOWN); the count bounds how often one request is redirected.
    RedisRetry(u8),
    /// The server sends nothing back (memcache `noreply`).
    None,
}

/// How often one request may be redirected by a cluster before the client gets the error.
pub const MAX_REDIRECTS: u8 = 5;

/// Where a Redis Cluster node's connection hands a request the node redirected (MOVED, ASK)
/// or asked to have retried (TRYAGAIN, CLUSTERDOWN), with the node's reply, instead of
/// answering the client with it ([`crate::topology::cluster`]).
pub trait Redirect: Send + Sync + std::fmt::Debug {
    /// `from` is the node that replied; `lane` the connection's lane.
    fn redirect(&self, from: &Addr, lane: Lane, job: Job, reply: Bytes);

    /// A connection to the node at `from` could not be made or was lost: it may have failed,
    /// and the cluster may be promoting a replica in its place.
    fn unreachable(&self, _from: &Addr) {}

    /// A pinned connection (a transaction, a blocking command, a subscription), which legate
    /// does not redirect, got `reply` (`-MOVED` or `-ASK`): the slot table is out of date.
    fn stale(&self, _reply: &[u8]) {}
}

/// What the client of a pinned connection gets instead of the node's `-MOVED` / `-ASK`: legate
/// hides redirections, and this one it cannot follow (the connection holds the client's
/// transaction, blocked command or subscriptions, which the node named does not have).
fn pinned_redirection(reply: &[u8], label: &str) -> Bytes {
    let text = String::from_utf8_lossy(reply.get(1..reply.len().saturating_sub(2)).unwrap_or_default());
    let mut words = text.split(' ');
    let (kind, slot, to) = (
        words.next().unwrap_or(""),
        words.next().unwrap_or("?"),
        words.next().unwrap_or("?"),
    );
    let clean = |s: &str| -> String { s.chars().filter(|c| !c.is_control()).take(64).collect() };
    Bytes::from(format!(
        "-TRYAGAIN the cluster moved slot {} to {} ({}) while this client's transaction, blocking command or subscription holds a connection to {label}: the command did not run there (a transaction aborts at EXEC); legate is updating its slot table, retry\r\n",
        clean(slot),
        clean(to),
        clean(kind)
    ))
}

/// A pool's [`Redirect`], shared by its node connections; equal when it is the same one.
#[derive(Debug, Clone)]
pub struct RedirectHook(pub Arc<dyn Redirect>);

impl PartialEq for RedirectHook {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.0), Arc::as_ptr(&other.0))
    }
}

/// A cluster node's reply that is a redirection, or a request to retry.
fn is_redirection(reply: &[u8]) -> bool {
    reply.first() == Some(&b'-')
        && (reply.starts_with(b"-MOVED ")
            || reply.starts_with(b"-ASK ")
            || reply.starts_with(b"-TRYAGAIN")
            || reply.starts_with(b"-CLUSTERDOWN"))
}

/// Why a job got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {server}: {reason}")]
    Connect { server: String, reason: String },
    #[error("connection to {server} lost")]
    Lost { server: String },
    #[error("request to {server} timed out")]
    Timeout { server: String },
    /// The server sent what no request on the connection allows (or more than the size limit):
    /// the connection was closed, and every request waiting on it gets this.
    #[error("bad reply from {server} ({reason}); connection closed")]
    BadReply { server: String, reason: String },
}

/// A server's reply (whole, as the server sent it) or why there is none.
pub type Reply = Result<Bytes, UpstreamError>;

/// One request for a server: its bytes and where its reply goes.
#[derive(Debug)]
pub struct Job {
    pub parts: SmallVec<[Bytes; 2]>,
    pub framing: Framing,
    /// `None` when nobody waits for the reply.
    pub done: Option<ReplyTo>,
}

/// Jobs queued per connection before senders wait: bounds memory under overload.
const QUEUE_DEPTH: usize = 16 * 1024;
/// Jobs written per batch.
const BATCH: usize = 512;

/// Which of a server's shared connections a job travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// memcache, and Redis clients speaking RESP2.
    Default = 0,
    /// Redis connections that said `HELLO 3`, for clients that did: their replies are
    /// forwarded as the server's own RESP3 bytes.
    Resp3 = 1,
    /// memcache connections for binary-protocol requests (memcached fixes a connection's
    /// protocol by its first byte).
    Binary = 2,
}

impl Lane {
    /// The lanes a pool's servers have besides [`Lane::Default`].
    fn others(protocol: Protocol) -> &'static [Lane] {
        match protocol {
            Protocol::Redis => &[Lane::Resp3],
            Protocol::Memcache => &[Lane::Binary],
            Protocol::Tcp => &[],
        }
    }
}

/// One worker's connections to a server, per lane.
#[derive(Debug)]
struct WorkerConns {
    lanes: [Vec<Arc<Queue<Job>>>; 3],
    /// Pins handed back clean, for the worker's next client that needs one.
    idle: std::sync::Mutex<Vec<Pin>>,
}

/// The connections to one server of a pool: `server_connections` per worker and lane, so a
/// worker's requests never cross to another thread ([`crate::workers`]). Health (failures,
/// ejection) is the server's, shared by every worker.
#[derive(Debug)]
pub struct Server {
    /// Unique in the process: which server a [`Pin`] belongs to, across reloads.
    pub id: u64,
    pub name: String,
    pub addr: Addr,
    /// What the connections were made with: a reload keeps them only when this is unchanged.
    target: Target,
    health: Arc<Health>,
    pub stats: Arc<ServerStats>,
    /// Indexed by worker.
    conns: Vec<WorkerConns>,
    /// Set when the server leaves every topology: its pins close.
    retired: tokio::sync::watch::Sender<bool>,
    /// Pins in existence (idle ones included), for `max_pinned_connections`.
    pinned: Arc<std::sync::atomic::AtomicI64>,
}

/// A server's run of failures and whether it is out of the ring (`auto_eject_hosts`).
#[derive(Debug)]
pub struct Health {
    failures: AtomicU32,
    ejected: AtomicBool,
    limit: u32,
    auto_eject: bool,
    /// Told when the server is ejected, so the pool rebuilds its ring.
    events: Option<mpsc::UnboundedSender<()>>,
    stats: Arc<ServerStats>,
}

impl Health {
    fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    fn failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if self.auto_eject && n >= self.limit && !self.ejected.swap(true, Ordering::Relaxed) {
            self.stats.ejections.fetch_add(1, Ordering::Relaxed);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            self.stats.ejected_at.store(now.as_micros() as u64, Ordering::Relaxed);
            if let Some(events) = &self.events {
                let _ = events.send(());
            }
        }
    }
}

/// How long a closed server's connection waits for the replies it still owes.
const DRAIN: Duration = Duration::from_secs(30);

/// What a connection needs to know about its server and pool.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    /// The server's name as shown in errors and logs (`host:port` or the alias).
    label: String,
    addr: Addr,
    protocol: Protocol,
    redis_auth: Option<String>,
    redis_user: Option<String>,
    redis_db: u32,
    connect_timeout: Duration,
    tcpkeepalive: bool,
    connections: u32,
    preconnect: bool,
    /// Per request, from when it is written.
    timeout: Option<Duration>,
    auto_eject: bool,
    failure_limit: u32,
    retry_timeout: Duration,
    tls: Option<Arc<Connector>>,
    /// Largest reply accepted, refused at its header (`max_reply_bytes`).
    max_reply: usize,
    /// `max_pinned_connections`.
    max_pinned: usize,
    /// A cluster node's: where its redirections go.
    redirect: Option<RedirectHook>,
    /// A cluster replica taking reads: each connection says `READONLY` first.
    readonly: bool,
}

fn target(pool: &PoolConfig, server: &ServerConfig, tls: &PoolTls) -> Target {
    Target {
        label: server.addr.to_string(),
        addr: server.addr.clone(),
        protocol: pool.protocol,
        redis_auth: pool.redis_auth.clone(),
        redis_user: pool.redis_user.clone(),
        redis_db: pool.redis_db,
        connect_timeout: pool.timeout.unwrap_or(Duration::from_secs(3)),
        tcpkeepalive: pool.tcpkeepalive,
        connections: pool.server_connections.max(1),
        preconnect: pool.preconnect,
        timeout: pool.timeout,
        auto_eject: pool.auto_eject_hosts,
        failure_limit: pool.server_failure_limit.max(1),
        retry_timeout: pool.server_retry_timeout,
        tls: tls.connector.clone(),
        max_reply: pool.max_reply_bytes,
        max_pinned: pool.max_pinned_connections,
        redirect: None,
        readonly: false,
    }
}

/// How often at most an ejected Sentinel replica is probed: Sentinel kills a replica's client
/// connections whenever it re-points it at a new master, which ejects a healthy replica.
const REPLICA_RETRY: Duration = Duration::from_secs(1);

/// What a server is to its pool, which decides how its connections are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A static shard, a Sentinel pool's master, a cluster master.
    Master,
    /// A cluster replica that takes reads (`read_from`): every connection says `READONLY`
    /// first, and it is never ejected (the cluster fails over by itself).
    ClusterReplica,
    /// A Sentinel pool's replica that takes reads (`read_from`): no `READONLY` (a server
    /// without cluster support refuses it); ejected after `server_failure_limit` failures
    /// whatever `auto_eject_hosts` says, so reads go to another replica (or the master), and
    /// probed again after [`REPLICA_RETRY`] (or `server_retry_timeout` when shorter).
    SentinelReplica,
}

/// The connections `server` gets as `role` in `pool`; a cluster node's redirections go to
/// `redirect`.
fn target_as(
    pool: &PoolConfig,
    server: &ServerConfig,
    tls: &PoolTls,
    role: Role,
    redirect: Option<&RedirectHook>,
) -> Target {
    let t = Target {
        redirect: redirect.cloned(),
        ..target(pool, server, tls)
    };
    match role {
        Role::Master => t,
        Role::ClusterReplica => Target {
            readonly: true,
            auto_eject: false,
            ..t
        },
        Role::SentinelReplica => Target {
            auto_eject: true,
            retry_timeout: pool.server_retry_timeout.min(REPLICA_RETRY),
            ..t
        },
    }
}

impl Server {
    /// Start `server_connections` connection tasks for `server` as `role` (connected lazily on
    /// first use, or at once with `preconnect`). Must be called inside a Tokio runtime. The
    /// tasks end when the returned value is dropped.
    /// `events` is told when the server is ejected; `commands` is the pool's latency by
    /// command, which the replies add to; a cluster node's redirections go to `redirect`. An L4
    /// pool's server has no shared connections: [`Server::open`] makes one per client.
    pub fn start_as(
        pool: &PoolConfig,
        server: &ServerConfig,
        tls: &PoolTls,
        role: Role,
        redirect: Option<RedirectHook>,
        events: Option<mpsc::UnboundedSender<()>>,
        commands: &Arc<CommandLatency>,
    ) -> Arc<Server> {
        let target = target_as(pool, server, tls, role, redirect.as_ref());
        Server::start_target(pool, server, target, events, commands)
    }

    fn start_target(
        pool: &PoolConfig,
        server: &ServerConfig,
        target: Target,
        events: Option<mpsc::UnboundedSender<()>>,
        commands: &Arc<CommandLatency>,
    ) -> Arc<Server> {
        let stats = ServerStats::new(&pool.name, &target.label, commands.clone());
        let health = Arc::new(Health {
            failures: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            limit: target.failure_limit,
            auto_eject: target.auto_eject,
            events,
            stats: stats.clone(),
        });
        // An L4 pool's clients each get a connection of their own.
        let lane_used = |lane: usize| {
            pool.protocol != Protocol::Tcp
                && (lane == Lane::Default as usize || Lane::others(pool.protocol).iter().any(|&l| l as usize == lane))
        };
        let conns = (0..crate::workers::count())
            .map(|worker| WorkerConns {
                lanes: std::array::from_fn(|lane| {
                    let n = if lane_used(lane) { target.connections } else { 0 };
                    (0..n)
                        .map(|_| {
                            let jobs = Arc::new(Queue::new(QUEUE_DEPTH));
                            let resp3 = lane == Lane::Resp3 as usize;
                            // The other lanes open on first use: most clients speak RESP2 / text.
                            let preconnect = target.preconnect && lane == Lane::Default as usize;
                            crate::workers::spawn_on(
                                worker,
                                run_connection(target.clone(), resp3, health.clone(), jobs.clone(), preconnect),
                            );
                            jobs
                        })
                        .collect()
                }),
                idle: std::sync::Mutex::new(Vec::new()),
            })
            .collect();
        Arc::new(Server {
            id: pinned::NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed),
            retired: tokio::sync::watch::channel(false).0,
            pinned: Arc::new(std::sync::atomic::AtomicI64::new(0)),
            name: server.name.clone(),
            addr: server.addr.clone(),
            target,
            health,
            stats,
            conns,
        })
    }

    /// Out of the ring after `server_failure_limit` failures in a row.
    pub fn is_ejected(&self) -> bool {
        self.health.ejected.load(Ordering::Relaxed)
    }

    /// How long an ejected server stays out before it is tried again.
    pub fn retry_timeout(&self) -> Duration {
        self.target.retry_timeout
    }

    /// The server's own statistics on a connection of their own: Redis `INFO` (the bulk
    /// string's text) or memcached `stats` (the STAT lines).
    ///
    /// # Errors
    /// The server cannot be reached or answers something else.
    pub async fn info(&self) -> Result<String, String> {
        info_of(&self.target).await
    }

    /// [`Server::info`] of a node of `pool` that is not one of its servers (a cluster replica
    /// that takes no reads), connected as the pool's servers are.
    ///
    /// # Errors
    /// The node cannot be reached or answers something else.
    pub async fn info_at(pool: &PoolConfig, addr: &Addr, tls: &PoolTls) -> Result<String, String> {
        let server = ServerConfig {
            addr: addr.clone(),
            weight: 1,
            alias: None,
            name: addr.to_string(),
        };
        info_of(&target(pool, &server, tls)).await
    }
}

/// A server's statistics on a connection of their own ([`Server::info`]).
async fn info_of(target: &Target) -> Result<String, String> {
    /// Redis INFO and memcached stats are a few KB: anything past this is refused.
    const STATS_REPLY_BYTES: usize = 1024 * 1024;
    let ask = async {
        let mut s = connect(target, false).await.map_err(|f| f.reason)?;
        if target.protocol == Protocol::Tcp {
            return Ok(String::new()); // up when it accepts a connection; nothing to ask
        }
        let redis = target.protocol == Protocol::Redis;
        s.write_all(if redis { b"INFO\r\n" } else { b"stats\r\n" })
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = BytesMut::new();
        let mut scan = redis::ReplyScan::with_limit(STATS_REPLY_BYTES);
        loop {
            if buf.len() > STATS_REPLY_BYTES {
                // Not statistics: a server (or whatever listens there) streaming at us.
                return Err(format!("statistics reply over {STATS_REPLY_BYTES} bytes"));
            }
            if redis {
                if let Some(n) = redis::scan_reply(&buf, &mut scan).map_err(|e| e.to_string())? {
                    let reply = &buf[..n];
                    let body = reply.splitn(2, |&c| c == b'\n').nth(1).unwrap_or_default();
                    return Ok(String::from_utf8_lossy(body).into_owned());
                }
            } else if buf.ends_with(b"END\r\n") || buf.starts_with(b"ERROR") {
                return Ok(String::from_utf8_lossy(&buf).into_owned());
            }
            if s.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("closed".to_string());
            }
        }
    };
    tokio::time::timeout(target.connect_timeout.max(Duration::from_secs(1)), ask)
        .await
        .map_err(|_| "timed out".to_string())?
}

impl Server {
    /// Try a fresh connection (with AUTH/SELECT); on success the server rejoins.
    pub async fn probe(&self) -> bool {
        match connect(&self.target, false).await {
            Ok(_) => {
                self.health.failures.store(0, Ordering::Relaxed);
                self.health.ejected.store(false, Ordering::Relaxed);
                true
            }
            Err(f) => {
                tracing::info!(server = %self.target.label, reason = %f.reason, "ejected server still down");
                false
            }
        }
    }

    /// A connection of its own for one client of an L4 pool. Failures count towards ejection
    /// like any other connect failure.
    ///
    /// # Errors
    /// The server cannot be reached, or the TLS handshake failed; the reason says which.
    pub async fn open(&self) -> Result<Stream, String> {
        match connect(&self.target, false).await {
            Ok(s) => {
                self.health.success();
                Ok(s)
            }
            Err(f) => {
                connect_failed(&self.health, &self.target.label, &f);
                Err(f.reason)
            }
        }
    }

    /// True when this server's connections are what [`Server::start_as`] would open for
    /// `server` as `role` in `pool`: a rebuild then keeps them.
    pub fn same_as(
        &self,
        pool: &PoolConfig,
        server: &ServerConfig,
        tls: &PoolTls,
        role: Role,
        redirect: Option<&RedirectHook>,
    ) -> bool {
        self.target == target_as(pool, server, tls, role, redirect)
    }

    /// Queue jobs on one of `worker`'s connections of `lane`, in order: always the same one for
    /// one `session`, so a session's requests to this server keep their order (a `noreply`
    /// write, or a pipelined write, is never overtaken by the same client's next read on
    /// another connection); sessions spread over the connections in turn. When the connection
    /// task is gone the jobs are dropped, and their clients are told the connection was lost.
    pub(crate) async fn send(&self, worker: usize, lane: Lane, session: usize, jobs: &mut Vec<Job>) {
        if let Some(w) = self.conns.get(worker) {
            let conns = &w.lanes[lane as usize];
            if let Some(conn) = conns.get(session % conns.len().max(1)) {
                conn.push(jobs).await;
            }
        }
        jobs.clear();
    }
}

impl Drop for Server {
    /// The server left every topology: its connections write what is queued, collect the
    /// replies still owed, and end.
    fn drop(&mut self) {
        for c in self.conns.iter().flat_map(|w| w.lanes.iter().flatten()) {
            c.finish();
        }
        self.retired.send_replace(true);
    }
}

/// The jobs one client routed from one read, kept in order per server and lane and queued
/// together, on the connections of the worker the session runs on.
#[derive(Debug)]
pub struct Outbox {
    worker: usize,
    /// Picks this session's connection among a server's `server_connections`.
    session: usize,
    per_server: SmallVec<[(usize, Lane, Vec<Job>); 4]>,
    /// The command of the request being routed: its jobs' replies are timed under it.
    command: CommandTag,
}

/// Sessions numbered in turn, so they spread over a server's connections.
static SESSIONS: AtomicUsize = AtomicUsize::new(0);

impl Default for Outbox {
    /// An outbox for the calling worker's connections, for one session.
    fn default() -> Self {
        Outbox {
            worker: crate::workers::current(),
            session: SESSIONS.fetch_add(1, Ordering::Relaxed),
            per_server: SmallVec::new(),
            command: CommandTag::OTHER,
        }
    }
}

impl Outbox {
    /// Queue `job` for `server` on the default lane (the binary lane for a memcache binary
    /// request).
    pub fn push(&mut self, server: usize, job: Job) {
        let lane = match job.framing {
            Framing::MemcacheBinary(_) => Lane::Binary,
            _ => Lane::Default,
        };
        self.push_lane(server, lane, job);
    }

    /// Say which command the jobs pushed from now on carry (the router does, once per request),
    /// for the per-command latency histogram; [`CommandTag::OTHER`] until it is said.
    pub fn set_command(&mut self, command: CommandTag) {
        self.command = command;
    }

    /// Queue `job` for `server` on `lane`.
    pub fn push_lane(&mut self, server: usize, lane: Lane, mut job: Job) {
        if let Some(done) = job.done.as_mut() {
            done.set_command(self.command);
        }
        debug_assert!(
            !matches!(job.framing, Framing::MemcacheBinary(_)) || lane == Lane::Binary,
            "a binary request on a text connection"
        );
        match self.per_server.iter_mut().find(|(s, l, _)| *s == server && *l == lane) {
            Some((_, _, jobs)) => jobs.push(job),
            None => self.per_server.push((server, lane, vec![job])),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.per_server.is_empty()
    }

    /// Queue everything on `servers` (the topology the jobs were routed with), and on its
    /// `replicas` taking reads (indexes past `servers`).
    pub async fn flush(&mut self, servers: &[Arc<Server>], replicas: &[Arc<Server>]) {
        for (server, lane, mut jobs) in self.per_server.drain(..) {
            let s = match server.checked_sub(servers.len()) {
                None => servers.get(server),
                Some(r) => replicas.get(r),
            };
            if let Some(s) = s {
                s.send(self.worker, lane, self.session, &mut jobs).await;
            }
        }
    }
}

/// Why a connection could not be made; TLS failures are counted apart.
struct ConnectFailure {
    reason: String,
    tls: bool,
}

impl From<String> for ConnectFailure {
    fn from(reason: String) -> Self {
        ConnectFailure { reason, tls: false }
    }
}

/// Log, count (TLS apart from the rest) and feed a failed connect to ejection.
fn connect_failed(health: &Health, label: &str, f: &ConnectFailure) {
    if let Some(suppressed) = crate::log_limit::allow(&format!("connect {label} {}", f.reason)) {
        tracing::warn!(server = %label, reason = %f.reason, suppressed, "cannot connect");
    }
    let counter = if f.tls {
        &health.stats.tls_err
    } else {
        &health.stats.server_err
    };
    counter.fetch_add(1, Ordering::Relaxed);
    health.failure();
}

/// Connect (and run the TLS handshake, then Redis AUTH, `HELLO 3` when `resp3`, and SELECT), all
/// under the connect timeout.
async fn connect(t: &Target, resp3: bool) -> Result<Stream, ConnectFailure> {
    let connect = async {
        let plain = match &t.addr {
            Addr::Tcp { host, port } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|e| e.to_string())?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                if t.tcpkeepalive {
                    let _ = socket2::SockRef::from(&s).set_keepalive(true);
                }
                Plain::Tcp(s)
            }
            Addr::Unix { path, .. } => {
                Plain::Unix(tokio::net::UnixStream::connect(path).await.map_err(|e| e.to_string())?)
            }
        };
        match &t.tls {
            None => Ok::<_, ConnectFailure>(Stream::Plain(plain)),
            Some(tls) => {
                let host = match &t.addr {
                    Addr::Tcp { host, .. } => host.as_str(),
                    Addr::Unix { .. } => "localhost",
                };
                tls.connect(host, plain).await.map_err(|e| ConnectFailure {
                    reason: format!("TLS handshake failed: {e}"),
                    tls: true,
                })
            }
        }
    };
    let mut s = tokio::time::timeout(t.connect_timeout, connect)
        .await
        .map_err(|_| ConnectFailure::from("connect timed out".to_string()))??;
    if t.protocol == Protocol::Redis {
        let mut hello = BytesMut::new();
        let mut expected = 0;
        if let Some(pw) = &t.redis_auth {
            match &t.redis_user {
                Some(user) => {
                    redis::encode_command(&mut hello, [&b"AUTH"[..], user.as_bytes(), pw.as_bytes()].into_iter())
                }
                None => redis::encode_command(&mut hello, [&b"AUTH"[..], pw.as_bytes()].into_iter()),
            }
            expected += 1;
        }
        if resp3 {
            redis::encode_command(&mut hello, [&b"HELLO"[..], b"3"].into_iter());
            expected += 1;
        }
        if t.redis_db != 0 {
            let db = t.redis_db.to_string();
            redis::encode_command(&mut hello, [&b"SELECT"[..], db.as_bytes()].into_iter());
            expected += 1;
        }
        if t.readonly {
            redis::encode_command(&mut hello, [&b"READONLY"[..]].into_iter());
            expected += 1;
        }
        if expected > 0 {
            let handshake = async {
                s.write_all(&hello).await.map_err(|e| e.to_string())?;
                let mut buf = BytesMut::new();
                let mut scan = redis::ReplyScan::default();
                while expected > 0 {
                    match redis::scan_reply(&buf, &mut scan).map_err(|e| e.to_string())? {
                        Some(n) => {
                            let reply = buf.split_to(n);
                            // +OK to AUTH and SELECT, a map to HELLO.
                            if !(reply.starts_with(b"+OK") || reply.starts_with(b"%")) {
                                return Err(format!(
                                    "AUTH/SELECT refused: {}",
                                    String::from_utf8_lossy(reply.trim_ascii_end())
                                ));
                            }
                            expected -= 1;
                        }
                        None => {
                            if s.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                                return Err("closed during AUTH/SELECT".into());
                            }
                        }
                    }
                }
                Ok(())
            };
            tokio::time::timeout(t.connect_timeout, handshake)
                .await
                .map_err(|_| "AUTH/SELECT timed out".to_string())??;
        }
    }
    Ok(s)
}

/// A job the writer has sent and the reader must complete. `done` is taken when the request
/// times out: its late reply is then read and dropped.
struct Pending {
    framing: Framing,
    done: Option<ReplyTo>,
    deadline: Option<Instant>,
    sent: Instant,
    /// A cluster node's request, kept to be sent again if the node redirects it.
    parts: Option<SmallVec<[Bytes; 2]>>,
    /// Set when the request runs a script or a function; held only for its drop.
    _script: Option<ScriptRunning>,
}

/// A script or function in flight, counted in [`ServerStats::scripts`] until its [`Pending`]
/// goes: when the reply comes, or the connection does.
struct ScriptRunning(Arc<std::sync::atomic::AtomicI64>);

impl ScriptRunning {
    /// Counted when a Redis request's reply handle says it runs a script.
    fn of(framing: &Framing, done: Option<&ReplyTo>, stats: &ServerStats) -> Option<ScriptRunning> {
        let redis = matches!(framing, Framing::Redis | Framing::RedisRetry(_));
        if redis && done.is_some_and(|d| d.command().is_script()) {
            stats.scripts.fetch_add(1, Ordering::Relaxed);
            Some(ScriptRunning(stats.scripts.clone()))
        } else {
            None
        }
    }
}

impl Drop for ScriptRunning {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Requests that timed out but whose replies have not arrived yet, above which the connection
/// is closed and reopened rather than waited on.
const MAX_ABANDONED: usize = 1024;
/// First and largest pause between reconnect attempts after a connect failure.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

fn fail_all(batch: &mut Vec<Job>, err: &UpstreamError) {
    for job in batch.drain(..) {
        if let Some(done) = job.done {
            done.send(Err(err.clone()));
        }
    }
}

/// Closes a queue when its consumer ends, however it ends: later pushes fail and what is still
/// queued is dropped (its clients are told the connection was lost).
struct CloseOnDrop<T>(Arc<Queue<T>>);

impl<T> Drop for CloseOnDrop<T> {
    fn drop(&mut self) {
        self.0.close();
    }
}

async fn run_connection(t: Target, resp3: bool, health: Arc<Health>, jobs: Arc<Queue<Job>>, preconnect: bool) {
    let rx = CloseOnDrop(jobs);
    let rx = &*rx.0;
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH);
    let mut first = preconnect;
    let mut backoff = BACKOFF_MIN;
    // While backing off, requests fail at once with the last error.
    let mut down: Option<(Instant, UpstreamError)> = None;
    loop {
        if !first && rx.take(&mut batch, BATCH).await == 0 {
            return;
        }
        first = false;
        if let Some((until, err)) = &down {
            if Instant::now() < *until {
                fail_all(&mut batch, err);
                continue;
            }
        }
        let stream = match connect(&t, resp3).await {
            Ok(s) => s,
            Err(f) => {
                connect_failed(&health, &t.label, &f);
                if let Some(hook) = &t.redirect {
                    hook.0.unreachable(&t.addr);
                }
                let err = UpstreamError::Connect {
                    server: t.label.clone(),
                    reason: f.reason,
                };
                fail_all(&mut batch, &err);
                down = Some((Instant::now() + backoff, err));
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        down = None;
        let connected = Instant::now();
        tracing::debug!(server = %t.label, "connected");
        health.stats.server_connections.fetch_add(1, Ordering::Relaxed);
        let (rd, mut wr) = stream.into_split();
        let pending = Arc::new(Queue::new(usize::MAX));
        let ended = Arc::new(std::sync::Mutex::new(None));
        let mut reader = tokio::spawn(read_replies(
            rd,
            pending.clone(),
            Reading {
                label: t.label.clone(),
                health: health.clone(),
                timeouts: t.timeout.is_some(),
                max_reply: t.max_reply,
                ended: ended.clone(),
                redirect: t.redirect.clone(),
                addr: t.addr.clone(),
                lane: if resp3 { Lane::Resp3 } else { Lane::Default },
            },
        ));
        let finished = write_requests(
            &mut wr,
            rx,
            &mut batch,
            &pending,
            t.timeout,
            &health.stats,
            t.redirect.is_some(),
        )
        .await;
        health.stats.server_connections.fetch_sub(1, Ordering::Relaxed);
        if finished {
            // The server left the topology: let the reader collect the replies still owed.
            pending.finish();
            if tokio::time::timeout(DRAIN, &mut reader).await.is_err() {
                reader.abort();
            }
            return;
        }
        // The reader ended (connection lost, bad reply, too many abandoned requests) or a write
        // failed: whatever was in flight is answered with why as it is dropped.
        if !reader.is_finished() {
            // A failed write: give the reader a moment to see the close and say why.
            let _ = tokio::time::timeout(Duration::from_millis(100), &mut reader).await;
            reader.abort();
        }
        pending.close();
        health.failure();
        if let Some(hook) = &t.redirect {
            hook.0.unreachable(&t.addr);
        }
        let end = ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or(ReadEnd::Closed { answered: false });
        let err = match &end {
            ReadEnd::Bad(e) => UpstreamError::BadReply {
                server: t.label.clone(),
                reason: e.clone(),
            },
            _ => UpstreamError::Lost {
                server: t.label.clone(),
            },
        };
        if !matches!(end, ReadEnd::Bad(_)) {
            health.stats.server_eof.fetch_add(1, Ordering::Relaxed);
        }
        fail_all(&mut batch, &err);
        // A connection that closed before answering anything (a server at maxclients, a port
        // that is something else) is a failure to connect: the next attempt waits.
        let answered = matches!(end, ReadEnd::Closed { answered: true }) || matches!(end, ReadEnd::Bad(_));
        if answered || connected.elapsed() >= BACKOFF_MAX {
            backoff = BACKOFF_MIN;
        } else {
            down = Some((Instant::now() + backoff, err));
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        if let Some(suppressed) = crate::log_limit::allow(&format!("lost {}", t.label)) {
            tracing::warn!(server = %t.label, suppressed, "connection lost; reconnecting on next request");
        }
    }
}

/// Write batches until the server leaves the topology (returns true) or the connection fails
/// (false).
async fn write_requests<W: AsyncWrite + Unpin>(
    wr: &mut W,
    rx: &Queue<Job>,
    batch: &mut Vec<Job>,
    ptx: &Queue<Pending>,
    timeout: Option<Duration>,
    stats: &ServerStats,
    cluster: bool,
) -> bool {
    let mut out: VecDeque<Bytes> = VecDeque::new();
    let mut handed: Vec<Pending> = Vec::with_capacity(BATCH);
    loop {
        let sent = Instant::now();
        let deadline = timeout.map(|t| sent + t);
        let (mut requests, mut bytes, mut awaited) = (0u64, 0u64, 0i64);
        for job in batch.drain(..) {
            requests += 1;
            bytes += job.parts.iter().map(|p| p.len() as u64).sum::<u64>();
            match (job.framing, job.done) {
                (Framing::None, Some(done)) => {
                    done.send(Ok(Bytes::new()));
                }
                (framing, Some(done)) => {
                    awaited += 1;
                    handed.push(Pending {
                        _script: ScriptRunning::of(&framing, Some(&done), stats),
                        framing,
                        done: Some(done),
                        deadline,
                        sent,
                        // Bytes are reference-counted: this is a copy of pointers.
                        parts: cluster.then(|| job.parts.clone()),
                    });
                }
                (Framing::None, None) => {}
                // A reply nobody waits for (the ASKING before a request sent on an ASK):
                // read and dropped.
                (framing, None) => {
                    awaited += 1;
                    handed.push(Pending {
                        framing,
                        done: None,
                        deadline,
                        sent,
                        parts: None,
                        _script: None,
                    });
                }
            }
            out.extend(job.parts);
        }
        let hot = stats.hot();
        hot.requests.fetch_add(requests, Ordering::Relaxed);
        hot.request_bytes.fetch_add(bytes, Ordering::Relaxed);
        hot.in_flight.fetch_add(awaited, Ordering::Relaxed);
        // The reader learns of the requests before their replies can come.
        if !ptx.push(&mut handed).await || write_all_vectored(wr, &mut out).await.is_err() {
            return false;
        }
        tokio::select! {
            n = rx.take(batch, BATCH) => if n == 0 { return true },
            _ = ptx.closed() => return false,
        }
    }
}

/// What a connection's reader needs besides its socket and queue.
struct Reading {
    label: String,
    health: Arc<Health>,
    /// Requests have deadlines.
    timeouts: bool,
    max_reply: usize,
    /// How the reader ended, for the writer's side to act on.
    ended: Arc<std::sync::Mutex<Option<ReadEnd>>>,
    /// A cluster node's: where redirected requests go, with the node and the lane they left.
    redirect: Option<RedirectHook>,
    addr: Addr,
    lane: Lane,
}

/// Why a connection's reader stopped.
#[derive(Debug, Clone)]
enum ReadEnd {
    /// The server closed (or the socket failed); `answered`: it had sent a reply first.
    Closed { answered: bool },
    /// The server sent what no request allows, or a reply over the size limit: the stream is
    /// out of step and nothing more of it can be trusted.
    Bad(String),
    /// Timed-out requests piled up, or a timed-out request's reply kept streaming.
    Abandoned,
    /// The writer is done and every reply owed has come.
    Done,
}

/// Requests that timed out but whose replies have not arrived yet are read and dropped; a
/// timed-out request's reply is not buffered beyond this: the connection is closed instead
/// (as nutcracker closes it at the timeout), so memory held for it is released at once.
const ABANDONED_REPLY_BYTES: usize = 64 * 1024;
/// Largest read-buffer growth at once while a long reply arrives.
const MAX_RESERVE: usize = 4 * 1024 * 1024;

async fn read_replies<R: AsyncRead + Unpin>(rd: R, prx: Arc<Queue<Pending>>, r: Reading) {
    let mut queue: VecDeque<Pending> = VecDeque::new();
    let end = read_loop(rd, &prx, &r, &mut queue).await;
    // Whatever is still owed will not come: say which server failed, and how.
    prx.take_now(&mut queue, usize::MAX);
    prx.close();
    let err = match &end {
        ReadEnd::Bad(reason) => UpstreamError::BadReply {
            server: r.label.clone(),
            reason: reason.clone(),
        },
        _ => UpstreamError::Lost {
            server: r.label.clone(),
        },
    };
    for p in queue {
        r.health.stats.hot().in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(done) = p.done {
            done.send(Err(err.clone()));
        }
    }
    *r.ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(end);
}

/// The first line of `buf`, printable and short, for a log line.
fn first_line(buf: &[u8]) -> String {
    let line = buf.split(|&c| c == b'\n').next().unwrap_or_default();
    let line = &line[..line.len().min(80)];
    line.trim_ascii_end().escape_ascii().to_string()
}

/// Log (rate-limited) and count a reply that cannot be passed on.
fn bad_reply(r: &Reading, reason: &str, buf: &[u8], too_large: bool) -> ReadEnd {
    let st = &r.health.stats;
    let counter = if too_large { &st.reply_too_large } else { &st.bad_reply };
    counter.fetch_add(1, Ordering::Relaxed);
    if let Some(suppressed) = crate::log_limit::allow(&format!("bad reply {} {reason}", r.label)) {
        tracing::warn!(server = %r.label, %reason, start = %first_line(buf), suppressed, "bad reply; closing the connection");
    }
    ReadEnd::Bad(reason.to_string())
}

/// Frame replies and complete the requests they answer, in order, until the connection must
/// end. Only whole replies that fit their requests are passed on.
async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    prx: &Queue<Pending>,
    r: &Reading,
    queue: &mut VecDeque<Pending>,
) -> ReadEnd {
    let (label, health) = (r.label.as_str(), &r.health);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // The first `expired` entries of the queue timed out (deadlines only grow along the queue).
    let mut expired = 0usize;
    let mut writer_open = true;
    let mut answered = false;
    let mut mscan = memcache::ReplyScan::with_limit(r.max_reply);
    let mut rscan = redis::ReplyScan::with_limit(r.max_reply);
    let mut bscan = memcache::binary::ReplyScan::with_limit(r.max_reply);
    loop {
        if writer_open {
            prx.take_now(queue, usize::MAX);
            if prx.is_finished() {
                writer_open = false;
            }
        }
        // Frame every complete reply in the buffer.
        while !buf.is_empty() {
            let Some(front) = queue.front() else {
                // Every request's entry is queued before the request is written, so these
                // bytes answer nothing.
                return bad_reply(r, "reply without a request", &buf, false);
            };
            let scanned = match front.framing {
                Framing::Memcache(kind) => memcache::scan_reply(&buf, kind, &mut mscan),
                Framing::MemcacheBinary(f) => memcache::binary::scan_reply(&buf, f, &mut bscan),
                Framing::Redis | Framing::RedisRetry(_) => redis::scan_reply(&buf, &mut rscan),
                Framing::None => Err(crate::protocol::ReplyError::Malformed(
                    "reply to a request that expects none",
                )),
            };
            match scanned {
                Ok(Some(n)) => {
                    let mut reply = buf.split_to(n).freeze();
                    let p = queue.pop_front().expect("queue is not empty");
                    expired = expired.saturating_sub(1);
                    // Drop the answer to the no-op legate appended to a quiet request.
                    match p.framing {
                        Framing::Memcache(memcache::ReplyKind::MetaQuiet) => {
                            reply.truncate(reply.len().saturating_sub(4))
                        }
                        Framing::MemcacheBinary(memcache::binary::ReplyFrame {
                            shape: memcache::binary::ReplyShape::Quiet,
                            ..
                        }) => reply.truncate(reply.len().saturating_sub(memcache::binary::HEADER)),
                        _ => {}
                    }
                    answered = true;
                    health.success();
                    let st = &health.stats;
                    let hot = st.hot();
                    hot.responses.fetch_add(1, Ordering::Relaxed);
                    hot.response_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    hot.in_flight.fetch_sub(1, Ordering::Relaxed);
                    st.record_latency(p.sent.elapsed(), p.done.as_ref().map(ReplyTo::command));
                    if let Some(done) = p.done {
                        match (&r.redirect, p.parts) {
                            (Some(hook), Some(parts)) if is_redirection(&reply) => {
                                let tried = match p.framing {
                                    Framing::RedisRetry(n) => n,
                                    _ => 0,
                                };
                                if tried < MAX_REDIRECTS {
                                    let job = Job {
                                        parts,
                                        framing: Framing::RedisRetry(tried + 1),
                                        done: Some(done),
                                    };
                                    hook.0.redirect(&r.addr, r.lane, job, reply);
                                } else {
                                    done.send(Ok(reply));
                                }
                            }
                            (Some(hook), None) if reply.starts_with(b"-MOVED ") || reply.starts_with(b"-ASK ") => {
                                hook.0.stale(&reply);
                                done.send(Ok(pinned_redirection(&reply, &r.label)));
                            }
                            _ => done.send(Ok(reply)),
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let too_large = matches!(e, crate::protocol::ReplyError::TooLarge { .. });
                    return bad_reply(r, &e.to_string(), &buf, too_large);
                }
            }
        }
        if !writer_open && queue.is_empty() {
            return ReadEnd::Done;
        }
        if expired > 0 && buf.len() > ABANDONED_REPLY_BYTES {
            return abandoned(label, "a timed-out request's reply is still arriving");
        }
        // Room for the rest of the reply when its header said how long it is, so a long reply
        // lands in one allocation of its own.
        let need = match queue.front().map(|p| p.framing) {
            Some(Framing::Memcache(_)) => mscan.needs(),
            Some(Framing::MemcacheBinary(_)) => bscan.needs(),
            Some(Framing::Redis | Framing::RedisRetry(_)) => rscan.needs(),
            _ => 0,
        };
        let spare = buf.capacity() - buf.len();
        if need > buf.len() {
            let more = (need - buf.len()).min(MAX_RESERVE);
            if spare < more {
                buf.reserve(more);
            }
        } else if spare < 8 * 1024 {
            buf.reserve(64 * 1024);
        }
        let deadline = queue.get(expired).and_then(|p| p.deadline);
        let listen = writer_open && (queue.is_empty() || (r.timeouts && deadline.is_none()));
        tokio::select! {
            n = prx.take(queue, usize::MAX), if listen => if n == 0 { writer_open = false },
            got = rd.read_buf(&mut buf) => match got {
                Ok(0) | Err(_) => return ReadEnd::Closed { answered },
                Ok(_) => {}
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {
                let now = Instant::now();
                while let Some(p) = queue.get_mut(expired) {
                    if p.deadline.is_some_and(|d| d <= now) {
                        if let Some(done) = p.done.take() {
                            done.send(Err(UpstreamError::Timeout { server: label.to_string() }));
                        }
                        health.stats.server_timedout.fetch_add(1, Ordering::Relaxed);
                        expired += 1;
                    } else {
                        break;
                    }
                }
                health.failure();
                if expired > MAX_ABANDONED {
                    return abandoned(label, "too many requests timed out");
                }
                if buf.len() > ABANDONED_REPLY_BYTES {
                    return abandoned(label, "a timed-out request's reply is still arriving");
                }
            },
        }
    }
}

fn abandoned(label: &str, why: &str) -> ReadEnd {
    if let Some(suppressed) = crate::log_limit::allow(&format!("abandoned {label} {why}")) {
        tracing::warn!(server = %label, suppressed, "{why}; reopening the connection");
    }
    ReadEnd::Abandoned
}

/// Write every buffer in `out`, many per system call.
///
/// # Errors
/// The peer is gone.
pub async fn write_all_vectored<W: AsyncWrite + Unpin>(w: &mut W, out: &mut VecDeque<Bytes>) -> std::io::Result<()> {
    while out.front().is_some_and(|b| b.is_empty()) {
        out.pop_front();
    }
    while !out.is_empty() {
        // The slices are built inside each poll, so they are not kept in the future's state
        // (which every session's writer carries while it waits on a slow client).
        let n = std::future::poll_fn(|cx| {
            let slices: SmallVec<[IoSlice<'_>; 64]> = out
                .iter()
                .take(64)
                .filter(|b| !b.is_empty())
                .map(|b| IoSlice::new(b))
                .collect();
            std::pin::Pin::new(&mut *w).poll_write_vectored(cx, &slices)
        })
        .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut left = n;
        while left > 0 {
            let front = out.front_mut().expect("written bytes came from out");
            if front.len() <= left {
                left -= front.len();
                out.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
        while out.front().is_some_and(|b| b.is_empty()) {
            out.pop_front();
        }
    }
    w.flush().await
}
