//! The proxy's own counters.
//!
//! The request path only does relaxed atomic adds on [`PoolStats`] and [`ServerStats`], created
//! once per pool and server (at start and reload). The counters every request touches (requests
//! by class, a server's requests, bytes, replies, in-flight count and latency histograms) are
//! kept per worker ([`PerWorker`]), each worker's on cache lines of its own, and summed when read:
//! workers serving the same server never write the same cache line. Scrapes copy them into the `metrics` facade
//! handles (made at the same time), which the Prometheus exporter renders; the twemproxy-style
//! `/stats` JSON reads the same atomics, so both views always agree.
//!
//! Latency histograms (per server, and per command of a pool) are atomics too, rendered by
//! hand at scrape time: a reply adds to two buckets found by a binary search over integer
//! nanoseconds, and the per-command one is an index into a fixed array (a row of the Redis
//! command table, or a memcache command), so no label is ever formatted or looked up per request
//! and no label comes from what a client sent.

use crate::config::Protocol;
use crate::protocol::{memcache, redis};
use metrics::{Counter, Gauge};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// Command classes counted per pool.
pub const CLASSES: [&str; 5] = ["single", "multi", "proxy", "unsupported", "error"];

/// Index into [`CLASSES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Routed to one server as sent.
    Single = 0,
    /// Split over servers (multi-get, MGET, MSET, DEL, flush_all).
    Multi = 1,
    /// Answered by the proxy (version, PING, AUTH, ...).
    Proxy = 2,
    /// Refused: the command cannot be served across shards.
    Unsupported = 3,
    /// Malformed requests.
    Error = 4,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// One copy of `T` per worker thread, each aligned to its own cache lines (128 bytes: adjacent
/// lines are fetched in pairs), so that workers counting the same thing never write the same
/// line. A worker writes its own copy ([`PerWorker::mine`]); readers add up every copy.
#[derive(Debug)]
pub struct PerWorker<T> {
    slots: Box<[Padded<T>]>,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

impl<T: Default> Default for PerWorker<T> {
    /// A copy for each of [`crate::workers::count`] workers (one before they start).
    fn default() -> Self {
        PerWorker {
            slots: (0..crate::workers::count()).map(|_| Padded::default()).collect(),
        }
    }
}

impl<T> PerWorker<T> {
    /// The calling worker's copy (threads that are not workers share the first worker's).
    #[inline]
    pub fn mine(&self) -> &T {
        &self.slots[crate::workers::current() % self.slots.len()].0
    }

    /// Every worker's copy.
    pub fn all(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|p| &p.0)
    }

    /// The sum over workers of the counter `f` picks.
    pub fn sum(&self, f: impl Fn(&T) -> &AtomicU64) -> u64 {
        self.all()
            .map(|t| f(t).load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// The sum over workers of the gauge `f` picks (one worker may add what another takes
    /// away, so a copy can be negative; the sum cannot).
    pub fn sum_i64(&self, f: impl Fn(&T) -> &AtomicI64) -> i64 {
        self.all().map(|t| f(t).load(Ordering::Relaxed)).sum()
    }
}

/// Per pool.
#[derive(Debug)]
pub struct PoolStats {
    pub pool: String,
    pub client_connections: AtomicI64,
    pub clients_total: AtomicU64,
    pub client_eof: AtomicU64,
    pub client_err: AtomicU64,
    pub forward_error: AtomicU64,
    pub fragments: AtomicU64,
    pub server_ejects: AtomicU64,
    /// Clients whose TLS handshake failed or timed out (`listen_tls`).
    pub client_tls_err: AtomicU64,
    /// Requests by [`Class`], per worker.
    pub requests: PerWorker<[AtomicU64; 5]>,
    /// Redis clients waiting on a blocking command (BLPOP, XREAD BLOCK …) now.
    pub blocked_clients: AtomicI64,
    /// Redis clients holding a connection of their own for WATCH / MULTI now.
    pub transaction_clients: AtomicI64,
    /// Redis clients subscribed to at least one channel or pattern now.
    pub subscribed_clients: AtomicI64,
    /// Channels, patterns and shard channels subscribed to, over every client, now.
    pub subscriptions: AtomicI64,
    /// Latency by command, shared with the pool's servers (which record it).
    pub commands: Arc<CommandLatency>,
    handles: PoolHandles,
}

#[derive(Debug)]
struct PoolHandles {
    client_connections: Gauge,
    clients_total: Counter,
    client_eof: Counter,
    client_err: Counter,
    forward_error: Counter,
    fragments: Counter,
    server_ejects: Counter,
    client_tls_err: Counter,
    requests: Vec<Counter>,
    blocked_clients: Gauge,
    transaction_clients: Gauge,
    subscribed_clients: Gauge,
    subscriptions: Gauge,
}

impl PoolStats {
    pub fn new(pool: &str, protocol: Protocol) -> Arc<PoolStats> {
        let p = pool.to_string();
        let handles = PoolHandles {
            client_connections: metrics::gauge!("legate_client_connections", "pool" => p.clone()),
            clients_total: metrics::counter!("legate_client_connections_total", "pool" => p.clone()),
            client_eof: metrics::counter!("legate_client_eof_total", "pool" => p.clone()),
            client_err: metrics::counter!("legate_client_errors_total", "pool" => p.clone()),
            forward_error: metrics::counter!("legate_forward_errors_total", "pool" => p.clone()),
            fragments: metrics::counter!("legate_fragments_total", "pool" => p.clone()),
            server_ejects: metrics::counter!("legate_server_ejects_total", "pool" => p.clone()),
            client_tls_err: metrics::counter!("legate_client_tls_errors_total", "pool" => p.clone()),
            requests: CLASSES
                .iter()
                .map(|c| metrics::counter!("legate_requests_total", "pool" => p.clone(), "class" => *c))
                .collect(),
            blocked_clients: metrics::gauge!("legate_blocked_clients", "pool" => p.clone()),
            transaction_clients: metrics::gauge!("legate_transaction_clients", "pool" => p.clone()),
            subscribed_clients: metrics::gauge!("legate_subscribed_clients", "pool" => p.clone()),
            subscriptions: metrics::gauge!("legate_subscriptions", "pool" => p.clone()),
        };
        Arc::new(PoolStats {
            pool: p,
            client_connections: AtomicI64::new(0),
            clients_total: AtomicU64::new(0),
            client_eof: AtomicU64::new(0),
            client_err: AtomicU64::new(0),
            forward_error: AtomicU64::new(0),
            fragments: AtomicU64::new(0),
            server_ejects: AtomicU64::new(0),
            client_tls_err: AtomicU64::new(0),
            requests: Default::default(),
            blocked_clients: AtomicI64::new(0),
            transaction_clients: AtomicI64::new(0),
            subscribed_clients: AtomicI64::new(0),
            subscriptions: AtomicI64::new(0),
            commands: CommandLatency::new(protocol),
            handles,
        })
    }

    #[inline]
    pub fn request(&self, class: Class) {
        add(&self.requests.mine()[class as usize], 1);
    }

    /// Requests of `class` over every worker.
    pub fn requests(&self, class: Class) -> u64 {
        self.requests.sum(|r| &r[class as usize])
    }

    #[inline]
    pub fn count(&self, c: &AtomicU64, n: u64) {
        add(c, n);
    }

    /// Copy the atomics into the exporter's handles.
    pub fn publish(&self) {
        let h = &self.handles;
        h.client_connections
            .set(self.client_connections.load(Ordering::Relaxed) as f64);
        h.clients_total.absolute(self.clients_total.load(Ordering::Relaxed));
        h.client_eof.absolute(self.client_eof.load(Ordering::Relaxed));
        h.client_err.absolute(self.client_err.load(Ordering::Relaxed));
        h.forward_error.absolute(self.forward_error.load(Ordering::Relaxed));
        h.fragments.absolute(self.fragments.load(Ordering::Relaxed));
        h.server_ejects.absolute(self.server_ejects.load(Ordering::Relaxed));
        h.client_tls_err.absolute(self.client_tls_err.load(Ordering::Relaxed));
        for (i, c) in h.requests.iter().enumerate() {
            c.absolute(self.requests.sum(|r| &r[i]));
        }
        let gauge = |g: &Gauge, v: &AtomicI64| g.set(v.load(Ordering::Relaxed).max(0) as f64);
        gauge(&h.blocked_clients, &self.blocked_clients);
        gauge(&h.transaction_clients, &self.transaction_clients);
        gauge(&h.subscribed_clients, &self.subscribed_clients);
        gauge(&h.subscriptions, &self.subscriptions);
    }
}

/// Per server of a pool.
#[derive(Debug)]
pub struct ServerStats {
    pub server: String,
    /// What every request and reply counts, per worker: [`ServerStats::hot`] to count,
    /// [`ServerStats::requests`] and its siblings to read.
    hot: PerWorker<ServerHot>,
    pub server_err: AtomicU64,
    /// TLS handshakes with the server that failed (not counted in `server_err`).
    pub tls_err: AtomicU64,
    pub server_eof: AtomicU64,
    /// Replies no request allowed (the connection was out of step and closed).
    pub bad_reply: AtomicU64,
    /// Replies refused at a header declaring more than `max_reply_bytes`.
    pub reply_too_large: AtomicU64,
    pub server_timedout: AtomicU64,
    pub server_connections: AtomicI64,
    pub ejections: AtomicU64,
    /// Unix time (µs) of the last ejection, 0 when never.
    pub ejected_at: AtomicU64,
    /// Connections held by one client each (transactions, blocking commands, pub/sub), idle
    /// ones kept for reuse included: what `max_pinned_connections` bounds.
    pub pinned_connections: AtomicI64,
    /// Clients refused a connection of their own at `max_pinned_connections`.
    pub pinned_refused: AtomicU64,
    /// Scripts and functions (EVAL, EVALSHA, FCALL and their read-only forms) written to the
    /// server and not answered yet, over every worker. While one runs the server may be busy,
    /// so PING asks the servers instead of being answered by legate (`router/pinned.rs`).
    pub scripts: Arc<AtomicI64>,
    handles: ServerHandles,
    /// The pool's latency by command, which this server's replies add to.
    commands: Arc<CommandLatency>,
    pool: String,
}

/// A server's counters that every request and reply touches: one set per worker.
#[derive(Debug, Default)]
pub struct ServerHot {
    pub requests: AtomicU64,
    pub request_bytes: AtomicU64,
    pub responses: AtomicU64,
    pub response_bytes: AtomicU64,
    /// Requests written and not yet answered (one worker's replies can only answer its own).
    pub in_flight: AtomicI64,
    /// Request latency, from writing a request to reading its reply.
    latency: Histogram,
}

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// [`LATENCY_BOUNDS`] in nanoseconds, for the request path (no float conversion).
const LATENCY_BOUNDS_NS: [u64; 14] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
];

/// A latency histogram over [`LATENCY_BOUNDS`]: a count per bucket (the last is +Inf) and the
/// sum, relaxed atomics only.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_ns: AtomicU64,
}

/// A duration's nanoseconds and the bucket they fall in.
#[inline]
fn bucket(d: std::time::Duration) -> (usize, u64) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    (LATENCY_BOUNDS_NS.partition_point(|&b| b < ns), ns)
}

impl Histogram {
    #[inline]
    fn add(&self, bucket: usize, ns: u64) {
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Append the sum of `parts` (one histogram per worker) in Prometheus text format, with
    /// `labels` (already escaped, comma-separated); nothing when they counted nothing.
    fn render<'a>(parts: impl Iterator<Item = &'a Histogram>, out: &mut String, name: &str, labels: &str) {
        let mut buckets = [0u64; LATENCY_BOUNDS.len() + 1];
        let mut sum_ns = 0u64;
        for h in parts {
            for (b, a) in buckets.iter_mut().zip(&h.buckets) {
                *b = b.wrapping_add(a.load(Ordering::Relaxed));
            }
            sum_ns = sum_ns.wrapping_add(h.sum_ns.load(Ordering::Relaxed));
        }
        let mut cumulative = 0;
        for (i, b) in LATENCY_BOUNDS.iter().enumerate() {
            cumulative += buckets[i];
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        cumulative += buckets[LATENCY_BOUNDS.len()];
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = sum_ns as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }

    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

/// A label value in Prometheus text format.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The memcache commands that reach a server, by the names memcached gives them (meta commands
/// by their two letters); text and binary requests share them.
pub const MEMCACHE_COMMANDS: [&str; 22] = [
    "get",
    "gets",
    "gat",
    "gats",
    "set",
    "add",
    "replace",
    "append",
    "prepend",
    "cas",
    "incr",
    "decr",
    "delete",
    "touch",
    "mg",
    "ms",
    "md",
    "ma",
    "me",
    "flush_all",
    "version",
    "stats",
];

/// Which per-command histogram a request's latency goes to: a row of the Redis command table
/// ([`redis::COMMANDS`]), an index into [`MEMCACHE_COMMANDS`], or `other` (requests legate
/// makes itself, or routed before their command was known). Set once per request by the
/// router, carried with the request's reply handle, so recording it is an array index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandTag(u16);

impl Default for CommandTag {
    fn default() -> Self {
        CommandTag::OTHER
    }
}

impl CommandTag {
    /// Counted as `other`.
    pub const OTHER: CommandTag = CommandTag(u16::MAX);

    /// The Redis command of a table row.
    pub fn redis(cmd: &'static redis::Command) -> CommandTag {
        redis::row_index(cmd)
            .and_then(|i| u16::try_from(i).ok())
            .map_or(CommandTag::OTHER, CommandTag)
    }

    /// Whether this (Redis) tag runs a script or a function, which can keep its server busy.
    pub fn is_script(self) -> bool {
        redis::COMMANDS.get(usize::from(self.0)).is_some_and(|c| {
            matches!(
                c.name,
                "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro"
            )
        })
    }

    /// A memcache text command.
    pub fn memcache(c: memcache::Command) -> CommandTag {
        use memcache::Command as C;
        let name = match c {
            C::Get => "get",
            C::Gets => "gets",
            C::Gat => "gat",
            C::Gats => "gats",
            C::Set => "set",
            C::Add => "add",
            C::Replace => "replace",
            C::Append => "append",
            C::Prepend => "prepend",
            C::Cas => "cas",
            C::Incr => "incr",
            C::Decr => "decr",
            C::Delete => "delete",
            C::Touch => "touch",
            C::MetaGet => "mg",
            C::MetaSet => "ms",
            C::MetaDelete => "md",
            C::MetaArithmetic => "ma",
            C::MetaDebug => "me",
            C::FlushAll => "flush_all",
            // Asked of every server (in the binary protocol) and merged.
            C::Version => "version",
            C::Stats => "stats",
            // Answered by legate.
            C::MetaNoop | C::Verbosity | C::Quit => return CommandTag::OTHER,
        };
        CommandTag::memcache_named(name)
    }

    /// A memcache binary request, by opcode (quiet and key-returning forms count as the plain
    /// command).
    pub fn memcache_opcode(opcode: u8) -> CommandTag {
        use memcache::binary::op;
        let name = match opcode {
            op::GET | op::GETQ | op::GETK | op::GETKQ => "get",
            op::GAT | op::GATQ | op::GATK | op::GATKQ => "gat",
            op::TOUCH => "touch",
            op::SET | op::SETQ => "set",
            op::ADD | op::ADDQ => "add",
            op::REPLACE | op::REPLACEQ => "replace",
            op::APPEND | op::APPENDQ => "append",
            op::PREPEND | op::PREPENDQ => "prepend",
            op::DELETE | op::DELETEQ => "delete",
            op::INCREMENT | op::INCREMENTQ => "incr",
            op::DECREMENT | op::DECREMENTQ => "decr",
            op::FLUSH | op::FLUSHQ => "flush_all",
            op::VERSION => "version",
            op::STAT => "stats",
            _ => return CommandTag::OTHER,
        };
        CommandTag::memcache_named(name)
    }

    fn memcache_named(name: &str) -> CommandTag {
        MEMCACHE_COMMANDS
            .iter()
            .position(|&n| n == name)
            .map_or(CommandTag::OTHER, |i| CommandTag(i as u16))
    }
}

/// One pool's latency by command: a histogram per command of its protocol plus `other`, made
/// with the pool. Rendered only for commands that were seen, so a scrape shows the commands a
/// pool serves, never more than the table's rows.
#[derive(Debug)]
pub struct CommandLatency {
    protocol: Protocol,
    /// Per worker, indexed by [`CommandTag`]; the last is `other`. Each worker's row is an
    /// allocation of its own.
    by_command: PerWorker<Box<[Histogram]>>,
}

impl CommandLatency {
    /// Histograms for every command `protocol` has (none for L4 pools).
    pub fn new(protocol: Protocol) -> Arc<CommandLatency> {
        let n = match protocol {
            Protocol::Redis => redis::COMMANDS.len() + 1,
            Protocol::Memcache => MEMCACHE_COMMANDS.len() + 1,
            Protocol::Tcp => 0,
        };
        let by_command = PerWorker {
            slots: (0..crate::workers::count())
                .map(|_| Padded((0..n).map(|_| Histogram::default()).collect()))
                .collect(),
        };
        Arc::new(CommandLatency { protocol, by_command })
    }

    #[inline]
    fn add(&self, tag: CommandTag, bucket: usize, ns: u64) {
        let mine = self.by_command.mine();
        if let Some(h) = mine.get(tag.0 as usize).or_else(|| mine.last()) {
            h.add(bucket, ns);
        }
    }

    fn name(&self, i: usize) -> &'static str {
        match self.protocol {
            Protocol::Redis => redis::COMMANDS.get(i).map(|c| c.name),
            Protocol::Memcache => MEMCACHE_COMMANDS.get(i).copied(),
            Protocol::Tcp => None,
        }
        .unwrap_or("other")
    }

    /// Append the histograms of the commands seen, labelled with `pool`.
    pub fn render(&self, pool: &str, out: &mut String) {
        let pool = escape(pool);
        let rows = self.by_command.all().next().map_or(0, |r| r.len());
        for i in 0..rows {
            if self.by_command.all().all(|r| r[i].count() == 0) {
                continue;
            }
            let labels = format!("pool=\"{pool}\",command=\"{}\"", escape(self.name(i)));
            let parts = self.by_command.all().map(|r| &r[i]);
            Histogram::render(parts, out, "legate_command_duration_seconds", &labels);
        }
    }
}

#[derive(Debug)]
struct ServerHandles {
    requests: Counter,
    request_bytes: Counter,
    responses: Counter,
    response_bytes: Counter,
    errors_connect: Counter,
    errors_lost: Counter,
    errors_tls: Counter,
    errors_protocol: Counter,
    errors_too_large: Counter,
    timeouts: Counter,
    connections: Gauge,
    ejections: Counter,
    in_flight: Gauge,
    pinned: Gauge,
    pinned_refused: Counter,
}

impl ServerStats {
    /// `commands`: the pool's latency by command, which this server's replies add to.
    pub fn new(pool: &str, server: &str, commands: Arc<CommandLatency>) -> Arc<ServerStats> {
        let (p, s) = (pool.to_string(), server.to_string());
        let l = || [("pool", p.clone()), ("server", s.clone())];
        let handles = ServerHandles {
            requests: metrics::counter!("legate_server_requests_total", &l()),
            request_bytes: metrics::counter!("legate_server_request_bytes_total", &l()),
            responses: metrics::counter!("legate_server_responses_total", &l()),
            response_bytes: metrics::counter!("legate_server_response_bytes_total", &l()),
            errors_connect: metrics::counter!("legate_server_errors_total", "pool" => p.clone(), "server" => s.clone(), "kind" => "connect"),
            errors_lost: metrics::counter!("legate_server_errors_total", "pool" => p.clone(), "server" => s.clone(), "kind" => "lost"),
            errors_tls: metrics::counter!("legate_server_errors_total", "pool" => p.clone(), "server" => s.clone(), "kind" => "tls"),
            errors_protocol: metrics::counter!("legate_server_errors_total", "pool" => p.clone(), "server" => s.clone(), "kind" => "protocol"),
            errors_too_large: metrics::counter!("legate_server_errors_total", "pool" => p.clone(), "server" => s.clone(), "kind" => "too_large"),
            timeouts: metrics::counter!("legate_server_timeouts_total", &l()),
            connections: metrics::gauge!("legate_server_connections", &l()),
            ejections: metrics::counter!("legate_server_ejections_total", &l()),
            in_flight: metrics::gauge!("legate_server_in_flight_requests", &l()),
            pinned: metrics::gauge!("legate_server_pinned_connections", &l()),
            pinned_refused: metrics::counter!("legate_server_pinned_refused_total", &l()),
        };
        Arc::new(ServerStats {
            server: s.clone(),
            hot: PerWorker::default(),
            server_err: AtomicU64::new(0),
            tls_err: AtomicU64::new(0),
            server_eof: AtomicU64::new(0),
            bad_reply: AtomicU64::new(0),
            reply_too_large: AtomicU64::new(0),
            server_timedout: AtomicU64::new(0),
            server_connections: AtomicI64::new(0),
            ejections: AtomicU64::new(0),
            ejected_at: AtomicU64::new(0),
            pinned_connections: AtomicI64::new(0),
            pinned_refused: AtomicU64::new(0),
            scripts: Arc::default(),
            handles,
            commands,
            pool: p,
        })
    }

    /// The calling worker's request-path counters.
    #[inline]
    pub fn hot(&self) -> &ServerHot {
        self.hot.mine()
    }

    /// Requests written to the server, over every worker.
    pub fn requests(&self) -> u64 {
        self.hot.sum(|h| &h.requests)
    }

    /// Request bytes written to the server, over every worker.
    pub fn request_bytes(&self) -> u64 {
        self.hot.sum(|h| &h.request_bytes)
    }

    /// Replies read from the server, over every worker.
    pub fn responses(&self) -> u64 {
        self.hot.sum(|h| &h.responses)
    }

    /// Reply bytes read from the server, over every worker.
    pub fn response_bytes(&self) -> u64 {
        self.hot.sum(|h| &h.response_bytes)
    }

    /// Requests written and not yet answered, over every worker.
    pub fn in_flight(&self) -> i64 {
        self.hot.sum_i64(|h| &h.in_flight)
    }

    /// Record one request's latency, and under its command when it has one (a request that
    /// timed out is no longer anyone's: its late reply counts for the server only). Relaxed
    /// adds into fixed arrays: no allocation, no lock, no label lookup.
    #[inline]
    pub fn record_latency(&self, d: std::time::Duration, command: Option<CommandTag>) {
        let (i, ns) = bucket(d);
        self.hot().latency.add(i, ns);
        if let Some(c) = command {
            self.commands.add(c, i, ns);
        }
    }

    /// Append the latency histogram in Prometheus text format (the exporter cannot take
    /// pre-aggregated buckets, so the histogram is rendered here).
    pub fn render_latency(&self, out: &mut String) {
        let labels = format!("pool=\"{}\",server=\"{}\"", escape(&self.pool), escape(&self.server));
        let parts = self.hot.all().map(|h| &h.latency);
        Histogram::render(parts, out, "legate_server_request_duration_seconds", &labels);
    }

    /// Copy the atomics into the exporter's handles.
    pub fn publish(&self) {
        let h = &self.handles;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        h.requests.absolute(self.requests());
        h.request_bytes.absolute(self.request_bytes());
        h.responses.absolute(self.responses());
        h.response_bytes.absolute(self.response_bytes());
        h.errors_connect.absolute(get(&self.server_err));
        h.errors_lost.absolute(get(&self.server_eof));
        h.errors_tls.absolute(get(&self.tls_err));
        h.errors_protocol.absolute(get(&self.bad_reply));
        h.errors_too_large.absolute(get(&self.reply_too_large));
        h.timeouts.absolute(get(&self.server_timedout));
        h.connections
            .set(self.server_connections.load(Ordering::Relaxed) as f64);
        h.ejections.absolute(get(&self.ejections));
        h.in_flight.set(self.in_flight().max(0) as f64);
        h.pinned
            .set(self.pinned_connections.load(Ordering::Relaxed).max(0) as f64);
        h.pinned_refused.absolute(get(&self.pinned_refused));
    }
}

/// Failovers a Sentinel pool followed (labels `pool`, `master`).
pub const SENTINEL_FAILOVERS: &str = "legate_sentinel_failovers_total";
/// Whether a Sentinel pool's sentinel answered its last check (labels `pool`, `sentinel`).
pub const SENTINEL_UP: &str = "legate_sentinel_up";

/// Redirections a cluster pool followed (labels `pool`, `kind`: moved, ask, tryagain —
/// TRYAGAIN and CLUSTERDOWN).
pub const CLUSTER_REDIRECTIONS: &str = "legate_cluster_redirections_total";
/// A cluster pool's slot table generation: 1 at start, one more per change learned.
pub const CLUSTER_TABLE_GENERATION: &str = "legate_cluster_slot_table_generation";
/// Failovers a cluster pool followed: a master that served slots left the table's masters
/// (label `pool`).
pub const CLUSTER_FAILOVERS: &str = "legate_cluster_failovers_total";

/// Config reload outcomes and the running generation.
pub fn reload_result(ok: bool, generation: u64) {
    metrics::counter!("legate_config_reloads_total", "result" => if ok { "success" } else { "failure" }).increment(1);
    metrics::gauge!("legate_config_generation").set(generation as f64);
}

/// Register help text and units for every proxy metric.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_gauge!("legate_client_connections", "Client connections open now.");
    describe_counter!("legate_client_connections_total", "Client connections accepted.");
    describe_counter!("legate_client_eof_total", "Client connections closed.");
    describe_counter!(
        "legate_client_errors_total",
        "Client connections closed for a protocol error."
    );
    describe_counter!(
        "legate_forward_errors_total",
        "Requests answered with an error because a server failed."
    );
    describe_counter!(
        "legate_fragments_total",
        "Sub-requests sent for requests split over servers."
    );
    describe_counter!("legate_server_ejects_total", "Server ejections in the pool.");
    describe_counter!(
        "legate_requests_total",
        "Client requests by class: single, multi, proxy, unsupported, error."
    );
    describe_counter!("legate_server_requests_total", "Requests written to the server.");
    describe_counter!(
        "legate_server_request_bytes_total",
        Unit::Bytes,
        "Request bytes written to the server."
    );
    describe_counter!("legate_server_responses_total", "Replies read from the server.");
    describe_counter!(
        "legate_server_response_bytes_total",
        Unit::Bytes,
        "Reply bytes read from the server."
    );
    describe_counter!(
        "legate_server_errors_total",
        "Server failures by kind: connect, lost, tls (handshake), protocol (a reply no request allows: the connection is closed), too_large (a reply over max_reply_bytes, refused at its header)."
    );
    describe_counter!(
        "legate_client_tls_errors_total",
        "Client TLS handshakes that failed or timed out."
    );
    describe_counter!(
        "legate_server_timeouts_total",
        "Requests that timed out waiting for the server."
    );
    describe_gauge!("legate_server_connections", "Connections open to the server now.");
    describe_gauge!(
        "legate_server_pinned_connections",
        "Connections to the server held by one client each (transactions, blocking commands, pub/sub), idle ones kept for reuse included."
    );
    describe_counter!(
        "legate_server_pinned_refused_total",
        "Clients refused a connection of their own to the server at max_pinned_connections."
    );
    describe_gauge!(
        "legate_blocked_clients",
        "Redis clients waiting on a blocking command now."
    );
    describe_gauge!("legate_transaction_clients", "Redis clients in WATCH or MULTI now.");
    describe_gauge!(
        "legate_subscribed_clients",
        "Redis clients subscribed to a channel or pattern now."
    );
    describe_gauge!(
        "legate_subscriptions",
        "Channels, patterns and shard channels subscribed to, over all clients, now."
    );
    describe_counter!(
        "legate_server_ejections_total",
        "Times the server was ejected from the ring."
    );
    describe_gauge!(
        "legate_server_in_flight_requests",
        "Requests written to the server and not yet answered."
    );
    describe_counter!(
        SENTINEL_FAILOVERS,
        "Times a Sentinel pool moved a master name to a new address (+switch-master or a re-check)."
    );
    describe_gauge!(
        SENTINEL_UP,
        "1 when the sentinel answered the pool's last check of its masters and replicas, else 0."
    );
    describe_counter!(
        CLUSTER_REDIRECTIONS,
        "Requests a cluster redirected that legate sent on, by kind: moved, ask, tryagain (TRYAGAIN and CLUSTERDOWN)."
    );
    describe_gauge!(
        CLUSTER_TABLE_GENERATION,
        "A cluster pool's slot table generation: 1 at start, +1 per change learned."
    );
    describe_counter!(
        CLUSTER_FAILOVERS,
        "Failovers a cluster pool followed: a master that served slots is no longer one of the table's masters."
    );
    describe_counter!(
        "legate_config_reloads_total",
        "Config reloads by result: success, failure."
    );
    describe_gauge!(
        "legate_config_generation",
        "Generation of the running config: 1 at start, +1 per reload."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_bounds_in_nanoseconds_are_the_published_ones() {
        for (ns, s) in LATENCY_BOUNDS_NS.iter().zip(LATENCY_BOUNDS) {
            assert_eq!(*ns, (s * 1e9).round() as u64);
        }
        assert_eq!(
            bucket(Duration::from_nanos(100_000)),
            (0, 100_000),
            "a bound is in its bucket"
        );
        assert_eq!(bucket(Duration::from_nanos(100_001)).0, 1);
        assert_eq!(bucket(Duration::from_secs(3)).0, LATENCY_BOUNDS.len(), "+Inf");
        assert_eq!(bucket(Duration::MAX).1, u64::MAX);
    }

    #[test]
    fn every_memcache_command_sent_to_a_server_has_a_label_of_its_own() {
        use memcache::Command as C;
        let sent = [
            C::Get,
            C::Gets,
            C::Gat,
            C::Gats,
            C::Set,
            C::Add,
            C::Replace,
            C::Append,
            C::Prepend,
            C::Cas,
            C::Incr,
            C::Decr,
            C::Delete,
            C::Touch,
            C::MetaGet,
            C::MetaSet,
            C::MetaDelete,
            C::MetaArithmetic,
            C::MetaDebug,
            C::FlushAll,
            C::Version,
            C::Stats,
        ];
        let mut seen: Vec<u16> = sent.iter().map(|&c| CommandTag::memcache(c).0).collect();
        assert!(seen.iter().all(|&t| (t as usize) < MEMCACHE_COMMANDS.len()));
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), sent.len(), "one label each");
        assert_eq!(CommandTag::memcache(C::Quit), CommandTag::OTHER);
        use memcache::binary::op;
        assert_eq!(CommandTag::memcache_opcode(op::GETKQ), CommandTag::memcache(C::Get));
        assert_eq!(
            CommandTag::memcache_opcode(op::DECREMENTQ),
            CommandTag::memcache(C::Decr)
        );
        assert_eq!(CommandTag::memcache_opcode(op::NOOP), CommandTag::OTHER);
    }

    #[test]
    fn latency_by_command_renders_only_the_commands_seen() {
        let commands = CommandLatency::new(Protocol::Redis);
        let server = ServerStats::new("p\"1", "127.0.0.1:1", commands.clone());
        let get = CommandTag::redis(redis::lookup(b"get", None).unwrap());
        let config_get = CommandTag::redis(redis::lookup(b"CONFIG", Some(b"get")).unwrap());
        server.record_latency(Duration::from_micros(50), Some(get));
        server.record_latency(Duration::from_millis(3), Some(get));
        server.record_latency(Duration::from_millis(30), Some(config_get));
        server.record_latency(Duration::from_millis(1), Some(CommandTag::OTHER));
        server.record_latency(Duration::from_millis(1), None);
        let mut out = String::new();
        commands.render("p\"1", &mut out);
        let series = |c: &str| format!("legate_command_duration_seconds_count{{pool=\"p\\\"1\",command=\"{c}\"}}");
        assert!(out.contains(&format!("{} 2\n", series("get"))), "{out}");
        assert!(out.contains(&format!("{} 1\n", series("config|get"))), "{out}");
        assert!(out.contains(&format!("{} 1\n", series("other"))), "{out}");
        assert!(
            out.contains("legate_command_duration_seconds_bucket{pool=\"p\\\"1\",command=\"get\",le=\"0.0001\"} 1\n"),
            "{out}"
        );
        assert_eq!(out.matches("_count{").count(), 3, "only the commands seen: {out}");
        let mut per_server = String::new();
        server.render_latency(&mut per_server);
        assert!(
            per_server.contains("_count{pool=\"p\\\"1\",server=\"127.0.0.1:1\"} 5\n"),
            "{per_server}"
        );
    }
}
