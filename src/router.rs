//! A parsed request -> the job(s) for its server(s), and the slot its reply will fill.
//!
//! A request whose keys all live on one server is forwarded as the bytes the client sent. A
//! request whose keys span servers is split into one request per server, and its slot merges
//! the replies back in the client's key order. Requests the proxy answers itself get a ready slot.

use crate::config::Protocol;
use crate::metrics::{Class, CommandTag};
use crate::protocol::memcache::binary::{self as bin, op, status, ReplyFrame, ReplyShape};
use crate::protocol::memcache::{self, Command};
use crate::protocol::redis::{self, Fan, Merge, Route};
use crate::replies::Replies;
use crate::topology::Topology;
use crate::upstream::{Framing, Job, Lane, Outbox, UpstreamError};
use bytes::{BufMut, Bytes, BytesMut};
use smallvec::{smallvec, SmallVec};
use std::sync::Arc;

mod admin;
mod fanout;
mod pinned;
mod session;

pub use session::RedisSession;

/// What routing a request came to.
#[derive(Debug)]
pub enum Slot {
    /// Answered by the proxy.
    Ready(Bytes),
    /// Sent to its server(s): the reply entry is reserved in the client's [`Replies`].
    Queued,
    /// Send these bytes, then close the connection.
    Close(Bytes),
    /// Not routed: the session moves between shared and pinned connections with replies still
    /// out. Wait until every reply owed has come ([`Replies::settled`]), then route the request
    /// (given back here) again.
    Barrier(Bytes),
}

/// How a split request's replies are merged.
#[derive(Debug)]
pub enum GatherMerge {
    /// memcache get/gets/gat/gats: VALUE blocks in request key order, then one END.
    McValues { keys: Vec<Bytes>, part_of_key: Vec<u32> },
    /// memcache flush_all: OK when every server said OK.
    McAllOk,
    /// One memcache binary request (a gather of one, so a failure is answered in binary with
    /// the request's opcode and opaque), or a binary flush sent to every server: the first
    /// reply with an error status, else the first reply.
    McBinary { opcode: u8, opaque: u32 },
    /// memcache version from every server: the lowest; `binary`: the client's opaque.
    McVersion { binary: Option<u32> },
    /// memcache stats from every server, summed as one server's, plus legate's own.
    McStats(Box<StatsMerge>),
    /// Redis MGET / DEL-like / MSET.
    Redis { merge: Merge, part_of_key: Vec<u32> },
    /// A Redis command sent to every shard (in shard order), merged for a client speaking RESP3
    /// when `resp3`; `clients` is legate's count of its clients when the request was routed (INFO).
    RedisFan {
        fan: Fan,
        resp3: bool,
        clients: fanout::Clients,
    },
    /// One shard's SCAN reply, whose cursor is rewritten to name the shard.
    RedisScan { shard: usize, shards: usize },
}

const NO_SERVER: &str = "no server available";

/// How a `stats` request's per-server answers become one.
#[derive(Debug)]
pub struct StatsMerge {
    /// The `stats` argument (`settings`, `items`, `slabs`, `proxy`, ...); empty for plain stats.
    pub arg: Vec<u8>,
    /// The binary client's opaque, or `None` for a text client.
    pub binary: Option<u32>,
    pub pool: Arc<crate::metrics::PoolStats>,
    /// Per server (in pool order, as the replies are): its name and legate's counters for it.
    pub servers: Vec<(String, Arc<crate::metrics::ServerStats>)>,
}

impl GatherMerge {
    /// A split request that still answers when some servers failed (with what the others said).
    pub fn answers_partially(&self) -> bool {
        matches!(
            self,
            GatherMerge::McValues { .. } | GatherMerge::McVersion { .. } | GatherMerge::McStats(_)
        )
    }
}

/// The error reply a client sees when a server could not answer.
pub fn error_reply(protocol: Protocol, msg: &str) -> Bytes {
    let clean: String = msg
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    match protocol {
        Protocol::Memcache => Bytes::from(format!("SERVER_ERROR {clean}\r\n")),
        Protocol::Redis => Bytes::from(format!("-ERR {clean}\r\n")),
        Protocol::Tcp => Bytes::new(),
    }
}

/// One server's share of a split request: the server and the indexes of its keys.
type Part = (usize, Vec<u32>);

/// Split `keys` (indexes into a key list) by server: returns, per part, the server and the key
/// indexes, and per key its part.
fn group_by_server(topo: &Topology, keys: &[&[u8]]) -> Option<(Vec<Part>, Vec<u32>)> {
    if topo.cluster.is_some() {
        return group_by_slot(topo, keys);
    }
    let mut part_of_server = vec![u32::MAX; topo.servers.len()];
    let mut parts: Vec<Part> = Vec::new();
    let mut part_of_key = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let s = topo.server_for(key)?;
        if part_of_server[s] == u32::MAX {
            part_of_server[s] = parts.len() as u32;
            parts.push((s, Vec::new()));
        }
        let p = part_of_server[s];
        parts[p as usize].1.push(i as u32);
        part_of_key.push(p);
    }
    Some((parts, part_of_key))
}

/// [`group_by_server`] for a Redis Cluster pool: one part per slot, since a node refuses keys of
/// different slots in one request (CROSSSLOT) even when it serves them all.
fn group_by_slot(topo: &Topology, keys: &[&[u8]]) -> Option<(Vec<Part>, Vec<u32>)> {
    let mut part_of_slot: std::collections::HashMap<u16, u32> = std::collections::HashMap::new();
    let mut parts: Vec<Part> = Vec::new();
    let mut part_of_key = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let slot = crate::hash::cluster_slot(key);
        let p = match part_of_slot.get(&slot) {
            Some(&p) => p,
            None => {
                let s = topo.cluster.as_ref()?.table.server_of(slot)?;
                parts.push((s, Vec::new()));
                part_of_slot.insert(slot, parts.len() as u32 - 1);
                parts.len() as u32 - 1
            }
        };
        parts[p as usize].1.push(i as u32);
        part_of_key.push(p);
    }
    Some((parts, part_of_key))
}

fn send_one(
    topo: &Topology,
    q: &Arc<Replies>,
    out: &mut Outbox,
    server: usize,
    lane: Lane,
    parts: SmallVec<[Bytes; 2]>,
    framing: Framing,
) -> Slot {
    topo.stats.request(Class::Single);
    if let Some(done) = q.expect_one() {
        let job = Job {
            parts,
            framing,
            done: Some(done),
        };
        out.push_lane(server, lane, job);
    }
    Slot::Queued
}

fn send_gather(
    topo: &Topology,
    q: &Arc<Replies>,
    out: &mut Outbox,
    lane: Lane,
    requests: Vec<(usize, Bytes)>,
    framing: Framing,
    merge: GatherMerge,
) -> Slot {
    topo.stats.request(Class::Multi);
    topo.stats.count(&topo.stats.fragments, requests.len() as u64);
    if let Some(parts) = q.expect_gather(requests.len(), merge) {
        for ((server, bytes), done) in requests.into_iter().zip(parts) {
            let job = Job {
                parts: smallvec![bytes],
                framing,
                done: Some(done),
            };
            out.push_lane(server, lane, job);
        }
    }
    Slot::Queued
}

/// Route one memcache request. `None`: nothing goes back to the client (noreply).
pub fn memcache(
    topo: &Topology,
    q: &Arc<Replies>,
    out: &mut Outbox,
    frame: Bytes,
    req: &memcache::Request,
) -> Option<Slot> {
    if topo.pool.memcache_auth.is_some() {
        // memcached with SASL serves no text command either.
        topo.stats.request(Class::Error);
        return Some(Slot::Close(Bytes::from_static(
            b"CLIENT_ERROR authentication required: this pool takes binary-protocol SASL clients only\r\n",
        )));
    }
    let framing = Framing::Memcache(req.reply_kind());
    out.set_command(CommandTag::memcache(req.command));
    if matches!(req.command, Command::Verbosity | Command::Quit) {
        topo.stats.request(Class::Proxy);
    }
    match req.command {
        Command::Get | Command::Gets | Command::Gat | Command::Gats if req.keys.len() == 1 => {
            // The common case: one key, no grouping, nothing allocated.
            match topo.server_for(&frame[req.keys[0].clone()]) {
                Some(server) => Some(send_one(topo, q, out, server, Lane::Default, smallvec![frame], framing)),
                None => Some(Slot::Ready(error_reply(Protocol::Memcache, NO_SERVER))),
            }
        }
        Command::Get | Command::Gets | Command::Gat | Command::Gats => {
            let keys: Vec<&[u8]> = req.keys.iter().map(|r| &frame[r.clone()]).collect();
            let Some((parts, part_of_key)) = group_by_server(topo, &keys) else {
                return Some(Slot::Ready(error_reply(Protocol::Memcache, NO_SERVER)));
            };
            if parts.len() == 1 {
                return Some(send_one(
                    topo,
                    q,
                    out,
                    parts[0].0,
                    Lane::Default,
                    smallvec![frame],
                    framing,
                ));
            }
            let name = &frame[..frame.iter().position(|&c| c == b' ').unwrap_or(0)];
            let requests = parts
                .iter()
                .map(|(server, ks)| {
                    let mut b = BytesMut::with_capacity(64 + ks.len() * 32);
                    b.put_slice(name);
                    if let Some(exp) = &req.exptime {
                        b.put_u8(b' ');
                        b.put_slice(&frame[exp.clone()]);
                    }
                    for &k in ks {
                        b.put_u8(b' ');
                        b.put_slice(keys[k as usize]);
                    }
                    b.put_slice(b"\r\n");
                    (*server, b.freeze())
                })
                .collect();
            let keys = req.keys.iter().map(|r| frame.slice(r.clone())).collect();
            Some(send_gather(
                topo,
                q,
                out,
                Lane::Default,
                requests,
                framing,
                GatherMerge::McValues { keys, part_of_key },
            ))
        }
        Command::MetaNoop => {
            topo.stats.request(Class::Proxy);
            Some(Slot::Ready(Bytes::from_static(b"MN\r\n")))
        }
        Command::Version => Some(ask_every_server(topo, q, out, op::VERSION, b"", version_merge(None))),
        Command::Verbosity => (!req.noreply).then(|| Slot::Ready(Bytes::from_static(b"OK\r\n"))),
        Command::Quit => Some(Slot::Close(Bytes::new())),
        Command::Stats => {
            let arg = req.keys.first().map(|r| &frame[r.clone()]).unwrap_or_default();
            Some(ask_stats(topo, q, out, arg, None))
        }
        Command::FlushAll => {
            if req.noreply {
                topo.stats.request(Class::Multi);
                for s in 0..topo.servers.len() {
                    out.push(
                        s,
                        Job {
                            parts: smallvec![frame.clone()],
                            framing: Framing::None,
                            done: None,
                        },
                    );
                }
                return None;
            }
            let requests = (0..topo.servers.len()).map(|s| (s, frame.clone())).collect();
            Some(send_gather(
                topo,
                q,
                out,
                Lane::Default,
                requests,
                framing,
                GatherMerge::McAllOk,
            ))
        }
        _ => {
            let key = &frame[req.keys[0].clone()];
            let Some(server) = topo.server_for(key) else {
                return (!req.noreply).then(|| Slot::Ready(error_reply(Protocol::Memcache, NO_SERVER)));
            };
            if req.noreply {
                topo.stats.request(Class::Single);
                out.push(
                    server,
                    Job {
                        parts: smallvec![frame],
                        framing: Framing::None,
                        done: None,
                    },
                );
                return None;
            }
            let parts = if req.quiet {
                smallvec![frame, Bytes::from_static(b"mn\r\n")]
            } else {
                smallvec![frame]
            };
            Some(send_one(topo, q, out, server, Lane::Default, parts, framing))
        }
    }
}

static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Note the process start, for `stats` uptime.
pub fn mark_start() {
    STARTED.get_or_init(std::time::Instant::now);
}

/// The proxy's start, for `stats` uptime.
fn uptime() -> u64 {
    STARTED.get_or_init(std::time::Instant::now).elapsed().as_secs()
}

/// What a memcache client's connection remembers between requests.
#[derive(Debug, Default)]
pub struct MemcacheSession {
    /// Decided by the first byte the client sends: 0x80 is the binary protocol.
    pub binary: Option<bool>,
    /// SASL PLAIN succeeded (pools with `memcache_auth`).
    pub authed: bool,
}

/// Ask every server of the pool one binary request of legate's own (VERSION or STAT), whatever
/// protocol the client speaks, and merge the answers with `merge`.
fn ask_every_server(
    topo: &Topology,
    q: &Arc<Replies>,
    out: &mut Outbox,
    opcode: u8,
    key: &[u8],
    merge: GatherMerge,
) -> Slot {
    topo.stats.request(Class::Proxy);
    let request = bin::simple_request(opcode, 0, key);
    let shape = if opcode == op::STAT {
        ReplyShape::Stat
    } else {
        ReplyShape::One
    };
    let framing = Framing::MemcacheBinary(ReplyFrame {
        opcode,
        opaque: 0,
        shape,
    });
    if let Some(parts) = q.expect_gather(topo.servers.len(), merge) {
        for (server, done) in parts.into_iter().enumerate() {
            out.push(
                server,
                Job {
                    parts: smallvec![request.clone()],
                    framing,
                    done: Some(done),
                },
            );
        }
    }
    Slot::Queued
}

fn version_merge(binary: Option<u32>) -> GatherMerge {
    GatherMerge::McVersion { binary }
}

/// `stats <arg>` of every server, merged; `stats proxy` (legate's) asks for their plain stats.
fn ask_stats(topo: &Topology, q: &Arc<Replies>, out: &mut Outbox, arg: &[u8], binary: Option<u32>) -> Slot {
    let ask = if arg == b"proxy" { b"" } else { arg };
    ask_every_server(topo, q, out, op::STAT, ask, stats_merge(topo, arg, binary))
}

fn stats_merge(topo: &Topology, arg: &[u8], binary: Option<u32>) -> GatherMerge {
    GatherMerge::McStats(Box::new(StatsMerge {
        arg: arg.to_vec(),
        binary,
        pool: topo.stats.clone(),
        servers: topo.servers.iter().map(|s| (s.name.clone(), s.stats.clone())).collect(),
    }))
}

/// `1.6.18` as numbers, for ordering versions (non-numeric parts order last).
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().unwrap_or(u64::MAX))
        .collect()
}

/// The successful value of each server's one-packet binary reply (empty replies skipped).
fn values_of(replies: &[Bytes]) -> impl Iterator<Item = (bin::Header, &[u8])> {
    replies
        .iter()
        .flat_map(|r| bin::packets(r).into_iter().map(move |(h, _, v)| (h, &r[v])))
}

/// The lowest version any server reported.
fn merge_versions(binary: Option<u32>, replies: &[Bytes]) -> Bytes {
    let lowest = values_of(replies)
        .filter(|(h, _)| h.opcode == op::VERSION && h.status == status::OK)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .min_by_key(|v| version_key(v));
    match (lowest, binary) {
        (Some(v), Some(opaque)) => bin::response(op::VERSION, status::OK, opaque, v.as_bytes()),
        (Some(v), None) => Bytes::from(format!("VERSION {v}\r\n")),
        (None, Some(opaque)) => bin::error_response(op::VERSION, status::TEMPORARY_FAILURE, opaque, NO_SERVER),
        (None, None) => error_reply(Protocol::Memcache, NO_SERVER),
    }
}

/// How one statistic of many servers becomes one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Combine {
    Sum,
    Max,
    Min,
    First,
}

fn combine_rule(arg: &[u8], name: &str) -> Combine {
    match arg {
        b"" => match name {
            "pointer_size" | "libevent" => Combine::First,
            "accepting_conns" => Combine::Min,
            "hash_power_level" | "hash_is_expanding" => Combine::Max,
            _ => Combine::Sum,
        },
        b"settings" => match name {
            "maxbytes" | "maxconns" => Combine::Sum,
            _ => Combine::First,
        },
        b"items" if name.ends_with("age") || name.ends_with("_time") => Combine::Max,
        b"slabs" if name.ends_with("chunk_size") || name.ends_with("chunks_per_page") || name == "active_slabs" => {
            Combine::Max
        }
        _ => Combine::Sum,
    }
}

/// Combine two values by `rule`: integers and decimals as numbers, anything else keeps the first.
fn combine(rule: Combine, a: &str, b: &str) -> String {
    if rule == Combine::First {
        return a.to_string();
    }
    if let (Ok(x), Ok(y)) = (a.parse::<i64>(), b.parse::<i64>()) {
        return match rule {
            Combine::Max => x.max(y),
            Combine::Min => x.min(y),
            _ => x.saturating_add(y),
        }
        .to_string();
    }
    if let (Ok(x), Ok(y)) = (a.parse::<f64>(), b.parse::<f64>()) {
        if a.contains('.') || b.contains('.') {
            let v = match rule {
                Combine::Max => x.max(y),
                Combine::Min => x.min(y),
                _ => x + y,
            };
            return format!("{v:.6}");
        }
    }
    a.to_string()
}

/// Each server's STAT packets as (name, value), or the first error reply met.
fn stat_lists(replies: &[Bytes]) -> Result<Vec<Vec<(String, String)>>, bin::Header> {
    let mut lists = Vec::with_capacity(replies.len());
    for r in replies {
        let mut list = Vec::new();
        for (h, k, v) in bin::packets(r) {
            if h.opcode != op::STAT {
                continue;
            }
            if h.status != status::OK {
                return Err(h);
            }
            if !k.is_empty() {
                list.push((
                    String::from_utf8_lossy(&r[k]).into_owned(),
                    String::from_utf8_lossy(&r[v]).into_owned(),
                ));
            }
        }
        lists.push(list);
    }
    Ok(lists)
}

/// Every server's `stats` as one server's, legate's own counters after them (twemproxy's names),
/// or per server under `<server>:` for `stats proxy`.
fn merge_stats(m: &StatsMerge, replies: &[Bytes]) -> Bytes {
    use std::sync::atomic::Ordering::Relaxed;
    let lists = match stat_lists(replies) {
        Ok(l) => l,
        Err(h) => {
            return match m.binary {
                Some(opaque) => bin::error_response(op::STAT, h.status, opaque, bin::status_text(h.status)),
                None => Bytes::from_static(memcache::ERROR.as_bytes()),
            }
        }
    };
    let mut stats: Vec<(String, String)> = Vec::new();
    if m.arg == b"proxy" {
        for ((name, st), list) in m.servers.iter().zip(&lists) {
            let own = [
                ("requests", st.requests() as i64),
                ("request_bytes", st.request_bytes() as i64),
                ("responses", st.responses() as i64),
                ("response_bytes", st.response_bytes() as i64),
                ("server_eof", st.server_eof.load(Relaxed) as i64),
                ("server_err", st.server_err.load(Relaxed) as i64),
                ("server_timedout", st.server_timedout.load(Relaxed) as i64),
                ("server_connections", st.server_connections.load(Relaxed)),
                ("server_ejected_at", st.ejected_at.load(Relaxed) as i64),
                ("in_queue", st.in_flight()),
            ];
            stats.extend(own.iter().map(|(k, v)| (format!("{name}:{k}"), v.to_string())));
            stats.extend(list.iter().map(|(k, v)| (format!("{name}:{k}"), v.clone())));
        }
    } else {
        let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for list in &lists {
            for (k, v) in list {
                match index.get(k) {
                    Some(&i) => stats[i].1 = combine(combine_rule(&m.arg, k), &stats[i].1, v),
                    None => {
                        index.insert(k.clone(), stats.len());
                        stats.push((k.clone(), v.clone()));
                    }
                }
            }
        }
        if m.arg.is_empty() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let lowest = lists
                .iter()
                .flat_map(|l| l.iter().filter(|(k, _)| k == "version").map(|(_, v)| v))
                .min_by_key(|v| version_key(v))
                .cloned();
            for (k, v) in &mut stats {
                match k.as_str() {
                    "pid" => *v = std::process::id().to_string(),
                    "uptime" => *v = uptime().to_string(),
                    "time" => *v = now.to_string(),
                    "version" => *v = lowest.clone().unwrap_or_default(),
                    _ => {}
                }
            }
            let p = &m.pool;
            let own = [
                ("client_eof", p.client_eof.load(Relaxed) as i64),
                ("client_err", p.client_err.load(Relaxed) as i64),
                ("client_connections", p.client_connections.load(Relaxed)),
                ("server_ejects", p.server_ejects.load(Relaxed) as i64),
                ("forward_error", p.forward_error.load(Relaxed) as i64),
                ("fragments", p.fragments.load(Relaxed) as i64),
            ];
            stats.extend(own.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            stats.push(("proxy_version".into(), format!("legate-{}", env!("CARGO_PKG_VERSION"))));
        }
    }
    let mut b = BytesMut::with_capacity(32 * stats.len() + 16);
    match m.binary {
        Some(opaque) => {
            for (k, v) in &stats {
                bin::encode(
                    &mut b,
                    bin::RESPONSE_MAGIC,
                    op::STAT,
                    status::OK,
                    opaque,
                    0,
                    &[],
                    k.as_bytes(),
                    v.as_bytes(),
                );
            }
            bin::encode(
                &mut b,
                bin::RESPONSE_MAGIC,
                op::STAT,
                status::OK,
                opaque,
                0,
                &[],
                &[],
                &[],
            );
        }
        None if m.arg == b"reset" => b.put_slice(b"RESET\r\n"),
        None => {
            for (k, v) in &stats {
                b.put_slice(b"STAT ");
                b.put_slice(k.as_bytes());
                b.put_u8(b' ');
                b.put_slice(v.as_bytes());
                b.put_slice(b"\r\n");
            }
            b.put_slice(b"END\r\n");
        }
    }
    b.freeze()
}

/// Check SASL PLAIN credentials (`[authzid] NUL authcid NUL password`) against `memcache_auth`
/// (`user:password`, or `password` for any user).
fn sasl_plain_ok(configured: &str, given: &[u8]) -> bool {
    let mut fields = given.split(|&c| c == 0);
    let (Some(_authzid), Some(user), Some(password), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return false;
    };
    match configured.split_once(':') {
        Some((u, p)) => user == u.as_bytes() && password == p.as_bytes(),
        None => password == configured.as_bytes(),
    }
}

/// Route one memcache binary request. `None`: nothing goes back to the client.
pub fn memcache_binary(
    topo: &Topology,
    q: &Arc<Replies>,
    out: &mut Outbox,
    frame: Bytes,
    req: &bin::Request,
    session: &mut MemcacheSession,
) -> Option<Slot> {
    use bin::Kind;
    let (opcode, opaque) = (req.header.opcode, req.header.opaque);
    out.set_command(CommandTag::memcache_opcode(opcode));
    let answer = |status: u16, value: &[u8]| Some(Slot::Ready(bin::response(opcode, status, opaque, value)));
    let refuse = |status: u16, message: &str| Some(Slot::Ready(bin::error_response(opcode, status, opaque, message)));
    let sasl = matches!(req.kind, Kind::SaslListMechs | Kind::SaslAuth | Kind::SaslStep);
    if sasl || !matches!(req.kind, Kind::Read | Kind::Write) {
        topo.stats.request(Class::Proxy);
    }
    match (&topo.pool.memcache_auth, req.kind) {
        (None, _) if sasl => return refuse(status::UNKNOWN_COMMAND, "Unknown command"),
        (Some(_), Kind::SaslListMechs) => return answer(status::OK, b"PLAIN"),
        (Some(cred), Kind::SaslAuth) => {
            if &frame[req.key.clone()] == b"PLAIN" && sasl_plain_ok(cred, &frame[req.value.clone()]) {
                session.authed = true;
                return answer(status::OK, b"Authenticated");
            }
            session.authed = false;
            return refuse(status::AUTH_ERROR, "Auth failure.");
        }
        (Some(_), Kind::SaslStep) => return refuse(status::AUTH_ERROR, "Auth failure."),
        (Some(_), Kind::Quit) => {}
        (Some(_), _) if !session.authed => return refuse(status::AUTH_ERROR, "Auth failure."),
        _ => {}
    }
    let quiet = req.quiet();
    match req.kind {
        Kind::Read | Kind::Write => {
            let Some(server) = topo.server_for(&frame[req.key.clone()]) else {
                return refuse(status::TEMPORARY_FAILURE, NO_SERVER);
            };
            topo.stats.request(Class::Single);
            let (parts, shape) = if quiet {
                // A quiet request may get no answer: the NOOP after it always does.
                (
                    smallvec![frame, bin::simple_request(op::NOOP, opaque, b"")],
                    ReplyShape::Quiet,
                )
            } else {
                (smallvec![frame], ReplyShape::One)
            };
            let framing = Framing::MemcacheBinary(ReplyFrame { opcode, opaque, shape });
            if let Some(mut done) = q.expect_gather(1, GatherMerge::McBinary { opcode, opaque }) {
                out.push(
                    server,
                    Job {
                        parts,
                        framing,
                        done: done.pop(),
                    },
                );
            }
            Some(Slot::Queued)
        }
        Kind::Flush => {
            topo.stats.request(Class::Multi);
            let (request, shape) = if quiet {
                let mut b = BytesMut::from(&frame[..]);
                b.extend_from_slice(&bin::simple_request(op::NOOP, opaque, b""));
                (b.freeze(), ReplyShape::Quiet)
            } else {
                (frame, ReplyShape::One)
            };
            let framing = Framing::MemcacheBinary(ReplyFrame { opcode, opaque, shape });
            let requests = (0..topo.servers.len()).map(|s| (s, request.clone())).collect();
            Some(send_gather(
                topo,
                q,
                out,
                Lane::Binary,
                requests,
                framing,
                GatherMerge::McBinary { opcode, opaque },
            ))
        }
        Kind::Noop => answer(status::OK, b""),
        Kind::Verbosity => answer(status::OK, b""),
        Kind::Quit => Some(Slot::Close(if quiet {
            Bytes::new()
        } else {
            bin::response(opcode, status::OK, opaque, b"")
        })),
        Kind::Version => Some(ask_every_server(
            topo,
            q,
            out,
            op::VERSION,
            b"",
            version_merge(Some(opaque)),
        )),
        Kind::Stat => Some(ask_stats(topo, q, out, &frame[req.key.clone()], Some(opaque))),
        Kind::SaslListMechs | Kind::SaslAuth | Kind::SaslStep => refuse(status::AUTH_ERROR, "Auth failure."),
    }
}

/// The reply to a binary request the parser refused.
pub fn memcache_binary_error(e: &bin::RequestError) -> Slot {
    if e.fatal {
        Slot::Close(e.response())
    } else {
        Slot::Ready(e.response())
    }
}

fn redis_error(msg: String) -> Slot {
    Slot::Ready(Bytes::from(format!("-ERR {msg}\r\n")))
}

fn printable(name: &[u8]) -> String {
    let s: String = name
        .iter()
        .take(64)
        .flat_map(|c| c.escape_ascii())
        .map(char::from)
        .collect();
    s.replace('\'', "\\'")
}

fn wrong_args(name: &[u8]) -> Slot {
    redis_error(format!(
        "wrong number of arguments for '{}' command",
        printable(name).to_ascii_lowercase()
    ))
}

pub(super) fn bulk(v: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(v.len() + 16);
    redis::put_bulk(&mut b, v);
    b.freeze()
}

/// The bytes to forward for a whole request: as sent, or re-encoded when it came inline.
fn resp_frame(frame: Bytes, req: &redis::Request) -> Bytes {
    if !req.inline {
        return frame;
    }
    let mut b = BytesMut::with_capacity(frame.len() + 16 * req.args.len());
    redis::encode_command(&mut b, req.args.iter().map(|r| &frame[r.clone()]));
    b.freeze()
}

/// Route one Redis request (which has at least one argument), in the client's session state.
///
/// The command's row in the table ([`redis::COMMANDS`]) decides: its arity is checked here (with
/// Redis's own error text), its keys are found as Redis finds them, and its route says whether it
/// goes to the one shard of its keys, is split, goes to every shard, is answered here or refused.
pub fn redis(
    topo: &Topology,
    q: &Arc<Replies>,
    out: &mut Outbox,
    frame: Bytes,
    req: &redis::Request,
    session: &mut RedisSession,
) -> Slot {
    out.set_command(CommandTag::OTHER);
    let frame = if session.pinning.intercepts() {
        match pinned::intercept(topo, q, frame, req, session) {
            Ok(slot) => return slot,
            Err(frame) => frame,
        }
    } else {
        frame
    };
    if let Some(slot) = session::answer(topo, q, out, &frame, req, session) {
        return slot;
    }
    // A RESP3 client's requests travel on RESP3 connections: their replies are forwarded as
    // the server's own bytes.
    let lane = session.lane();
    let args = &req.args;
    let name = &frame[args[0].clone()];
    let argc = args.len();
    let arg = |i: usize| &frame[args[i].clone()];
    let cmd = match redis::lookup(name, (argc > 1).then(|| arg(1))) {
        Ok(cmd) => {
            out.set_command(CommandTag::redis(cmd));
            cmd
        }
        Err(unknown) => {
            topo.stats.request(Class::Unsupported);
            return Slot::Ready(unknown_command(unknown, &frame, req));
        }
    };
    let bare_command = cmd.route == Route::Container && argc == 1;
    if !cmd.arity_ok(argc) {
        topo.stats.request(Class::Unsupported);
        return wrong_args(cmd.name.as_bytes());
    }
    if matches!(
        cmd.route,
        Route::Split(_) | Route::FanOut(_) | Route::Scan | Route::AnyShard
    ) && session.pinning.leaving_pin(q)
    {
        return Slot::Barrier(frame);
    }
    match cmd.route {
        Route::Local | Route::Container => {
            topo.stats.request(Class::Proxy);
            local(name, &frame, req, bare_command)
        }
        Route::Keyed | Route::KeyedUnlessBlock => {
            if cmd.route == Route::KeyedUnlessBlock && redis::has_block_option(argc, arg) {
                return pinned::blocking(topo, q, frame, req, cmd, session);
            }
            let mut keys: SmallVec<[usize; 4]> = SmallVec::new();
            let server = match redis::key_positions(cmd, argc, arg, &mut keys) {
                // Keys not where they should be: the command fails on any server with its own
                // error text, and runs nowhere.
                Err(redis::BadKeys) => first_server(topo),
                Ok(()) => match one_shard(topo, cmd, argc, &arg, &keys) {
                    Ok(s) => s,
                    Err(slot) => {
                        topo.stats.request(Class::Unsupported);
                        return slot;
                    }
                },
            };
            let Some(server) = server else {
                return redis_error(NO_SERVER.into());
            };
            let frame = match pinned::keyed(topo, q, frame, req, server, session) {
                Ok(slot) => return slot,
                Err(frame) => frame,
            };
            // `read_from`: a cluster or Sentinel pool's reads may go to a replica of the key's master.
            let server = match cmd.read_only() && !topo.replicas_of.is_empty() {
                false => server,
                true => match topo.reader_for(server) {
                    Some(s) => s,
                    None => return redis_error(NO_REPLICA.into()),
                },
            };
            send_one(
                topo,
                q,
                out,
                server,
                lane,
                smallvec![resp_frame(frame, req)],
                Framing::Redis,
            )
        }
        Route::Split(merge) => split(topo, q, out, lane, frame, req, cmd, merge),
        Route::AnyShard => match first_server(topo) {
            Some(s) => send_one(topo, q, out, s, lane, smallvec![resp_frame(frame, req)], Framing::Redis),
            None => redis_error(NO_SERVER.into()),
        },
        Route::FanOut(fan) => {
            let n = topo.servers.len();
            if n == 0 {
                return redis_error(NO_SERVER.into());
            }
            if n == 1 && fan != Fan::Info {
                return send_one(topo, q, out, 0, lane, smallvec![resp_frame(frame, req)], Framing::Redis);
            }
            let bytes = resp_frame(frame, req);
            let requests = (0..n).map(|s| (s, bytes.clone())).collect();
            let clients = fanout::Clients {
                connected: topo.stats.client_connections.load(std::sync::atomic::Ordering::Relaxed),
            };
            let merge = GatherMerge::RedisFan {
                fan,
                resp3: session.resp3,
                clients,
            };
            send_gather(topo, q, out, lane, requests, Framing::Redis, merge)
        }
        Route::Scan => {
            let shards = topo.servers.len();
            if shards == 0 {
                return redis_error(NO_SERVER.into());
            }
            if shards == 1 {
                // Shard 0's cursors are legate's cursors.
                return send_one(topo, q, out, 0, lane, smallvec![resp_frame(frame, req)], Framing::Redis);
            }
            let Some((shard, cursor)) = fanout::split_cursor(arg(1), shards) else {
                return redis_error("invalid cursor".into());
            };
            let mut b = BytesMut::with_capacity(frame.len() + 16);
            let cursor = itoa::Buffer::new().format(cursor).as_bytes().to_vec();
            let sub: Vec<&[u8]> = (0..argc).map(|i| if i == 1 { &cursor[..] } else { arg(i) }).collect();
            redis::encode_command(&mut b, sub.into_iter());
            let merge = GatherMerge::RedisScan { shard, shards };
            send_gather(topo, q, out, lane, vec![(shard, b.freeze())], Framing::Redis, merge)
        }
        Route::Pinned => pinned::route(topo, q, out, frame, req, cmd, session),
        Route::Refused(why) => {
            topo.stats.request(Class::Unsupported);
            redis_error(format!("unsupported command '{}': {why}", display_name(cmd)))
        }
        Route::Admin(_) if topo.pool.redis_admin_commands => {
            admin::route(topo, q, out, lane, frame, req, cmd, session.resp3)
        }
        Route::Admin(why) => {
            topo.stats.request(Class::Unsupported);
            admin::refused(cmd, why)
        }
    }
}

/// `OBJECT|ENCODING` → `OBJECT ENCODING`, upper case, for error texts.
fn display_name(cmd: &redis::Command) -> String {
    cmd.name.replace('|', " ").to_ascii_uppercase()
}

/// The shard of the pool's first server that is in the ring: where keyless requests go.
fn first_server(topo: &Topology) -> Option<usize> {
    (!topo.servers.is_empty()).then_some(0)
}

/// The one shard every key of the request lives on (the first server when it has none), or the
/// error reply: no server, or keys on several shards.
fn one_shard<'a>(
    topo: &Topology,
    cmd: &redis::Command,
    argc: usize,
    arg: &impl Fn(usize) -> &'a [u8],
    keys: &[usize],
) -> Result<Option<usize>, Slot> {
    let mut shard: Option<(usize, usize)> = None;
    for &k in keys {
        let Some(s) = topo.server_for(arg(k)) else {
            return Err(redis_error(NO_SERVER.into()));
        };
        match shard {
            None => shard = Some((s, k)),
            Some((first, first_key)) if first != s => {
                return Err(cross_shard(topo, arg(first_key), first, arg(k), s));
            }
            Some(_) => {}
        }
    }
    if matches!(cmd.keys, redis::Keys::Sort) && topo.servers.len() > 1 {
        // BY / GET patterns name keys by substituting each element for `*`: they all live on
        // one shard only when the hash tag of the pattern is outside the `*`.
        for p in redis::sort_patterns(argc, arg) {
            let pattern = redis::pattern_key_part(arg(p));
            let tag = crate::hash::hash_tag_span(pattern, topo.pool.hash_tag);
            let star = pattern.iter().position(|&c| c == b'*').unwrap_or(0);
            let tag_end = (tag.as_ptr() as usize - pattern.as_ptr() as usize) + tag.len();
            if tag.len() == pattern.len() || tag.contains(&b'*') || star < tag_end {
                return Err(redis_error(format!(
                    "SORT pattern '{}' names keys that may be on any shard: put a hash tag before its '*' (e.g. w_{{tag}}_*) matching the sorted key's",
                    printable(arg(p))
                )));
            }
            let Some(s) = topo.server_for(pattern) else {
                return Err(redis_error(NO_SERVER.into()));
            };
            match shard {
                Some((first, first_key)) if first != s => {
                    return Err(cross_shard(topo, arg(first_key), first, pattern, s));
                }
                _ => {}
            }
        }
    }
    Ok(shard.map(|(s, _)| s).or_else(|| first_server(topo)))
}

/// Redis Cluster's error for keys in different slots, with the keys and servers named.
fn cross_shard(topo: &Topology, a: &[u8], sa: usize, b: &[u8], sb: usize) -> Slot {
    if topo.cluster.is_some() {
        return Slot::Ready(Bytes::from_static(CROSSSLOT));
    }
    Slot::Ready(Bytes::from(format!(
        "-CROSSSLOT Keys in request don't hash to the same shard: '{}' is on {} and '{}' on {} (a hash tag like {{user1}} keeps keys together)\r\n",
        printable(a),
        topo.servers[sa].name,
        printable(b),
        topo.servers[sb].name
    )))
}

/// `read_from: replica` and the slot's master has no replica up.
const NO_REPLICA: &str = "no replica of this key's master is up (read_from: replica)";

/// A Redis Cluster's own refusal of keys in different slots (a cluster pool's keys must share a
/// slot where a static pool's must share a shard).
const CROSSSLOT: &[u8] = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n";

/// Redis 7.0's reply to an unknown command or subcommand.
fn unknown_command(unknown: redis::Unknown, frame: &Bytes, req: &redis::Request) -> Bytes {
    let arg = |i: usize| String::from_utf8_lossy(&frame[req.args[i].clone()]).into_owned();
    let clip = |s: String, n: usize| s.chars().take(n).collect::<String>();
    let msg = match unknown {
        redis::Unknown::Command => {
            let mut with = String::new();
            for i in 1..req.args.len() {
                if with.len() >= 128 {
                    break;
                }
                with.push_str(&format!("'{}' ", clip(arg(i), 128 - with.len())));
            }
            format!(
                "unknown command '{}', with args beginning with: {with}",
                clip(arg(0), 128)
            )
        }
        redis::Unknown::Subcommand => format!(
            "unknown subcommand '{}'. Try {} HELP.",
            clip(arg(1), 128),
            arg(0).to_ascii_uppercase()
        ),
    };
    let clean: String = msg
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    Bytes::from(format!("-ERR {clean}\r\n"))
}

/// MGET, MSET, DEL…: one request per shard with that shard's keys, replies merged in key order.
#[allow(clippy::too_many_arguments)]
fn split(
    topo: &Topology,
    q: &Arc<Replies>,
    out: &mut Outbox,
    lane: Lane,
    frame: Bytes,
    req: &redis::Request,
    cmd: &redis::Command,
    merge: Merge,
) -> Slot {
    let args = &req.args;
    let argc = args.len();
    let step = match cmd.keys {
        redis::Keys::Specs(
            [redis::KeySpec {
                find: redis::Find::Range { step, .. },
                ..
            }],
        ) => *step as usize,
        _ => 1,
    };
    let name = &frame[args[0].clone()];
    if !(argc - 1).is_multiple_of(step) {
        return wrong_args(cmd.name.as_bytes());
    }
    let keys: Vec<&[u8]> = (1..argc).step_by(step).map(|i| &frame[args[i].clone()]).collect();
    let Some((parts, part_of_key)) = group_by_server(topo, &keys) else {
        return redis_error(NO_SERVER.into());
    };
    if parts.len() == 1 {
        return send_one(
            topo,
            q,
            out,
            parts[0].0,
            lane,
            smallvec![resp_frame(frame, req)],
            Framing::Redis,
        );
    }
    let requests = parts
        .iter()
        .map(|(server, ks)| {
            let mut b = BytesMut::with_capacity(64 + ks.len() * 48);
            let sub = std::iter::once(name).chain(ks.iter().flat_map(|&k| {
                let first = 1 + k as usize * step;
                (first..first + step).map(|i| &frame[args[i].clone()])
            }));
            let sub: Vec<&[u8]> = sub.collect();
            redis::encode_command(&mut b, sub.into_iter());
            (*server, b.freeze())
        })
        .collect();
    send_gather(
        topo,
        q,
        out,
        lane,
        requests,
        Framing::Redis,
        GatherMerge::Redis { merge, part_of_key },
    )
}

/// Commands answered by legate itself. The handshake and per-connection state are
/// `router::session`'s; these are the answers that stand until it takes them.
fn local(name: &[u8], frame: &Bytes, req: &redis::Request, bare_command: bool) -> Slot {
    let args = &req.args;
    if bare_command || name.eq_ignore_ascii_case(b"command") {
        return Slot::Ready(Bytes::from_static(b"*0\r\n"));
    }
    if name.eq_ignore_ascii_case(b"echo") {
        return Slot::Ready(bulk(&frame[args[1].clone()]));
    }
    if name.eq_ignore_ascii_case(b"quit") {
        return Slot::Close(Bytes::from_static(b"+OK\r\n"));
    }
    if name.eq_ignore_ascii_case(b"select") {
        return if &frame[args[1].clone()] == b"0" {
            Slot::Ready(Bytes::from_static(b"+OK\r\n"))
        } else {
            redis_error(
                "legate serves database 0 only (set redis_db in the pool to choose the backend database)".into(),
            )
        };
    }
    redis_error(format!(
        "unsupported command '{}': legate does not serve it yet",
        printable(name)
    ))
}

/// Merge the replies of a split request into the one reply the client expects.
pub fn merge(merge: &GatherMerge, replies: &[Bytes]) -> Bytes {
    match merge {
        GatherMerge::McValues { keys, part_of_key } => {
            let mut blocks = Vec::with_capacity(replies.len());
            let mut total = 5;
            for r in replies {
                match memcache::value_blocks(r) {
                    Some(b) => {
                        total += r.len();
                        blocks.push(b);
                    }
                    None => return r.clone(),
                }
            }
            let mut out = BytesMut::with_capacity(total);
            let mut next = vec![0usize; replies.len()];
            for (key, &p) in keys.iter().zip(part_of_key) {
                let p = p as usize;
                if let Some(b) = blocks[p].get(next[p]) {
                    if replies[p][b.key.clone()] == key[..] {
                        out.put_slice(&replies[p][b.block.clone()]);
                        next[p] += 1;
                    }
                }
            }
            out.put_slice(b"END\r\n");
            out.freeze()
        }
        GatherMerge::McBinary { .. } => replies
            .iter()
            .find(|r| r.len() >= bin::HEADER && bin::Header::read(r).status != status::OK)
            .or(replies.first())
            .cloned()
            .unwrap_or_default(),
        GatherMerge::McVersion { binary } => merge_versions(*binary, replies),
        GatherMerge::McStats(m) => merge_stats(m, replies),
        GatherMerge::McAllOk => replies
            .iter()
            .find(|r| &r[..] != b"OK\r\n")
            .cloned()
            .unwrap_or_else(|| Bytes::from_static(b"OK\r\n")),
        GatherMerge::RedisFan { fan, resp3, clients } => fanout::merge(*fan, replies, *resp3, *clients),
        GatherMerge::RedisScan { shard, shards } => match replies.first() {
            Some(r) => fanout::scan_reply(r, *shard, *shards),
            None => Bytes::from_static(b"-ERR no reply from the shard\r\n"),
        },
        GatherMerge::Redis { merge, part_of_key } => {
            if let Some(e) = replies.iter().find(|r| r.first() == Some(&b'-')) {
                return e.clone();
            }
            match merge {
                Merge::Ok => replies
                    .iter()
                    .find(|r| &r[..] != b"+OK\r\n")
                    .cloned()
                    .unwrap_or_else(|| Bytes::from_static(b"+OK\r\n")),
                Merge::Sum => {
                    let mut sum: i64 = 0;
                    for r in replies {
                        let n = r
                            .strip_prefix(b":")
                            .and_then(|r| r.strip_suffix(b"\r\n"))
                            .and_then(crate::protocol::parse_i64);
                        match n {
                            Some(n) => sum = sum.saturating_add(n),
                            None => return Bytes::from_static(b"-ERR unexpected reply from a shard\r\n"),
                        }
                    }
                    let mut b = BytesMut::with_capacity(24);
                    b.put_u8(b':');
                    redis::put_decimal(&mut b, sum);
                    b.put_slice(b"\r\n");
                    b.freeze()
                }
                Merge::Array => {
                    let mut elems = Vec::with_capacity(replies.len());
                    let mut total = 16;
                    for r in replies {
                        match redis::array_elements(r) {
                            Some(e) => elems.push(e),
                            None => return Bytes::from_static(b"-ERR unexpected reply from a shard\r\n"),
                        }
                        total += r.len();
                    }
                    let mut out = BytesMut::with_capacity(total);
                    out.put_u8(b'*');
                    redis::put_decimal(&mut out, part_of_key.len() as i64);
                    out.put_slice(b"\r\n");
                    let mut next = vec![0usize; replies.len()];
                    for &p in part_of_key {
                        let p = p as usize;
                        match elems[p].get(next[p]) {
                            Some(range) => out.put_slice(&replies[p][range.clone()]),
                            None => return Bytes::from_static(b"-ERR a shard sent too few replies\r\n"),
                        }
                        next[p] += 1;
                    }
                    out.freeze()
                }
            }
        }
    }
}

/// The reply to send for a failed job.
pub fn failure(protocol: Protocol, e: &UpstreamError) -> Bytes {
    error_reply(protocol, &e.to_string())
}

/// The reply to send for a split request that failed: in binary for a binary client.
pub fn gather_failure(merge: &GatherMerge, protocol: Protocol, e: &UpstreamError) -> Bytes {
    let binary = match merge {
        GatherMerge::McBinary { opcode, opaque } => Some((*opcode, *opaque)),
        GatherMerge::McVersion { binary: Some(opaque) } => Some((op::VERSION, *opaque)),
        GatherMerge::McStats(m) => m.binary.map(|opaque| (op::STAT, opaque)),
        _ => None,
    };
    match binary {
        Some((opcode, opaque)) => bin::error_response(opcode, status::TEMPORARY_FAILURE, opaque, &e.to_string()),
        None => failure(protocol, e),
    }
}
