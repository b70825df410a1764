//! Redis clients in a state a shared server connection cannot hold: a transaction (WATCH,
//! MULTI … EXEC), a blocking command (BLPOP, XREAD BLOCK, WAIT …) or pub/sub. The session takes
//! a connection of its own ([`Pin`]) for as long as that state lasts. DESIGN.md "Sessions:
//! shared and pinned".
//!
//! **Transactions.** `MULTI` is answered `+OK` here. The pin is taken on the shard of the first
//! keyed command after it (or at `WATCH`, on the watched keys' shard); `MULTI` and the keyless
//! commands queued before it (answered `+QUEUED` here) are sent ahead of that command and their
//! replies dropped, so every `QUEUED` after that, and `EXEC`'s reply, are the server's own. A
//! command whose keys are on another shard, or that needs every shard, is refused and marks the
//! transaction: `EXEC` then answers `-EXECABORT` and nothing runs, as Redis aborts a transaction
//! with a command it refused while queueing. After EXEC, DISCARD or UNWATCH the pin goes back to
//! the worker's idle pins. A pin lost mid-transaction is never replaced: its requests fail.
//!
//! **Blocking commands** go on a pin of their own (the transaction's, when the client watches
//! keys on that shard), with no deadline: the command's timeout is the server's to honour. The
//! session reads no further request until the reply comes, as Redis reads nothing more from a
//! blocked client; if the client disconnects meanwhile the pin is closed, not returned, so the
//! server cannot pop an element for a client that has gone. A blocked client is registered
//! under its `CLIENT ID` so that `CLIENT UNBLOCK` from another client of the pool reaches the
//! server connection that holds it ([`client_unblock`]). SCRIPT KILL / FUNCTION KILL also go
//! on pins: the busy script may run on a shared connection, where they would wait behind it.
//!
//! **PING** is answered by legate (`PONG`, or its argument) unless a script or a function is
//! running on a shard (`ServerStats::scripts`: sent and not answered yet). Then it goes to every
//! shard not ejected (`auto_eject_hosts`), each on a pin, and the servers answer it: the first
//! error (`-BUSY` while the script runs, a connection error when a shard is down), else their
//! `PONG`. On a pin because the busy script may hold this worker's shared connection, where
//! the PING would wait behind it instead of hearing `-BUSY`; on every shard because the pool
//! answers as one Redis, which is busy when any part of it is. Either way a PING after other
//! requests is answered after them. In a RESP2 subscribed client PING is answered here, as a
//! message.
//!
//! **SYNC / PSYNC** (with `redis_admin_commands`, in a pool of one server): a raw tunnel. The
//! client's pin sends it, and from then on the server's bytes (the RDB payload, which no CRLF
//! ends, then the replication stream) go to the client unparsed, and everything the client sends
//! (`REPLCONF ACK …`) goes to that pin, unanswered, as a server answers nothing to its replica.
//! legate reads no further from the server while the client has 8 MB unread: the server keeps
//! the rest under its own `client-output-buffer-limit replica`, as for a slow replica of its
//! own. In a pool of several servers it is refused: each holds a part of the keyspace, and no
//! one server's stream is the pool's.
//!
//! **Pub/sub.** A channel is placed like a key, so a publisher and a subscriber meet on one
//! shard; a pattern is subscribed on every shard. Subscribing waits for the server's
//! confirmation (so a message published right after cannot be missed) and answers with
//! legate's own confirmation, counting the client's subscriptions over every shard.
//! Unsubscribing waits for the servers' confirmations too (a PUBLISH sent after the reply no
//! longer reaches the client); messages for a channel the client has left are dropped, and once
//! nothing is left the connections close when every reply owed has come ([`Pinning::settled`]).
//! Confirmations and messages are pushes: `CLIENT REPLY OFF|SKIP` does not silence them. A RESP2 client with subscriptions may send only the (un)subscribe commands, PING,
//! QUIT and RESET; a RESP3 client sends anything, pushes interleaved with replies. A subscribed
//! connection that is lost (or whose server leaves the pool) closes the client, as a restarted
//! Redis would: client libraries reconnect and subscribe again.
//!
//! **Order.** A session moving between the shared connections and a pin first waits for every
//! reply it is owed ([`Slot::Barrier`]), so its commands reach the servers in the order it sent
//! them.

use super::{display_name, printable, redis_error, resp_frame, unknown_command, wrong_args, Slot, NO_SERVER};
use crate::metrics::{Class, PoolStats};
use crate::protocol::redis::{self, Route};
use crate::replies::{Replies, ReplyTo};
use crate::topology::Topology;
use crate::upstream::{Framing, Job, Pin, Sink, UpstreamError};
use bytes::{BufMut, Bytes, BytesMut};
use smallvec::{smallvec, SmallVec};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, LazyLock, Mutex};

/// Which connections the session's last request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Path {
    #[default]
    Shared,
    Pinned,
}

/// A client's pinned state: part of its [`super::RedisSession`].
#[derive(Default)]
pub struct Pinning {
    /// The transaction's pin (taken at WATCH or at the first keyed command after MULTI).
    tx: Option<Pin>,
    watching: bool,
    multi: Option<Multi>,
    blocked: Option<Blocked>,
    pubsub: Option<PubSub>,
    path: Path,
    /// The pool's stats, for the gauges this session counts itself in.
    stats: Option<Arc<PoolStats>>,
    counted_tx: bool,
    counted_subs: i64,
    /// The `CLIENT ID` under which its blocking command is in [`BLOCKED`].
    blocked_as: Option<u64>,
    /// After SYNC / PSYNC: the connection whose replication stream the client reads.
    replica: Option<Pin>,
}

impl std::fmt::Debug for Pinning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pinning")
            .field("tx", &self.tx)
            .field("watching", &self.watching)
            .field("multi", &self.multi.as_ref().map(|m| (m.held.len(), m.dirty, m.sent)))
            .field("blocked", &self.blocked.is_some())
            .field("subscribed", &self.pubsub.is_some())
            .field("replica", &self.replica.is_some())
            .finish()
    }
}

/// A transaction being queued.
struct Multi {
    /// Keyless commands queued before the transaction had a shard, answered `+QUEUED` here.
    held: Vec<Bytes>,
    /// A command was refused while queueing: EXEC aborts.
    dirty: bool,
    /// MULTI has been sent on the pin.
    sent: bool,
}

enum Blocked {
    /// On a pin of its own, handed back when the reply comes.
    Own(Pin),
    /// On the transaction's pin (the client watches keys on that shard).
    OnTx,
}

/// Pub/sub with channel sets counted on every shard the client listens on.
struct PubSub {
    mux: Arc<Mux>,
    pins: Vec<Pin>,
}

impl Drop for PubSub {
    fn drop(&mut self) {
        // Confirmations still owed are answered as legate counted them: the client has left
        // (or reset) and its pins close.
        let mut st = self.mux.lock();
        st.closed = true;
        for w in st.waiting.drain(..) {
            if let Some(done) = w.done {
                done.send(Ok(w.reply));
            }
        }
    }
}

impl Pinning {
    fn stats(&mut self, topo: &Topology) -> Arc<PoolStats> {
        self.stats.get_or_insert_with(|| topo.stats.clone()).clone()
    }

    /// In a transaction, subscribed (where a RESP2 client's commands are restricted), or a
    /// replica (whose commands all go to its server).
    #[inline]
    pub fn intercepts(&self) -> bool {
        self.multi.is_some() || self.pubsub.is_some() || self.replica.is_some()
    }

    /// Between MULTI and EXEC / DISCARD.
    pub fn in_multi(&self) -> bool {
        self.multi.is_some()
    }

    /// A blocking command is out: read no further request until every reply has come.
    pub fn blocked(&self) -> bool {
        self.blocked.is_some()
    }

    /// Whether the session calls [`Pinning::settled`] once every reply it owes has come: a
    /// blocking command is out, or the client has unsubscribed from everything (its
    /// connections close once the servers have confirmed).
    pub fn wants_settled(&self) -> bool {
        self.blocked.is_some() || self.pubsub.as_ref().is_some_and(|p| p.mux.lock().total() == 0)
    }

    /// Every reply owed has come: a blocking command's pin goes back to the worker's idle
    /// ones; subscribed connections with nothing left to listen to close.
    pub fn settled(&mut self, topo: &Topology) {
        self.unblock(topo);
        if self.pubsub.as_ref().is_some_and(|p| p.mux.lock().total() == 0) {
            self.pubsub = None;
        }
    }

    /// The blocking command has been answered: its pin goes back to the worker's idle ones
    /// (or closes, when a CLIENT UNBLOCK for it may still be on its way to the server).
    fn unblock(&mut self, topo: &Topology) {
        if let Some(b) = self.blocked.take() {
            if let Some(st) = &self.stats {
                st.blocked_clients.fetch_sub(1, Relaxed);
            }
            let targeted = self
                .blocked_as
                .take()
                .and_then(unregister)
                .is_some_and(|u| u.targeted.load(Relaxed));
            if let Blocked::Own(pin) = b {
                if !targeted {
                    unpin(topo, pin);
                }
            }
        }
    }

    /// Whether to wait for every reply owed before sending on `to`: true when the session
    /// switches connections with replies still out. Otherwise `to` becomes the current path.
    fn barrier(&mut self, q: &Replies, to: Path) -> bool {
        if self.path != to && q.unfilled() > 0 {
            return true;
        }
        self.path = to;
        false
    }

    /// Before a request on the shared connections: whether to wait first (see [`Slot::Barrier`]).
    #[inline]
    pub fn leaving_pin(&mut self, q: &Replies) -> bool {
        self.path == Path::Pinned && self.barrier(q, Path::Shared)
    }

    /// The transaction's pin when it is on server `id` and no transaction is being queued:
    /// keyed commands of a client watching keys there travel on it.
    pub fn watch_pin_on(&self, id: u64) -> bool {
        self.watching && self.multi.is_none() && self.tx.as_ref().is_some_and(|p| p.server_id == id)
    }

    fn update_tx_gauge(&mut self, topo: &Topology) {
        let active = self.watching || self.multi.is_some();
        if active != self.counted_tx {
            let st = self.stats(topo);
            st.transaction_clients.fetch_add(if active { 1 } else { -1 }, Relaxed);
            self.counted_tx = active;
        }
    }

    fn update_sub_gauges(&mut self, topo: &Topology) {
        let total = self.pubsub.as_ref().map_or(0, |p| p.mux.lock().total() as i64);
        if total != self.counted_subs {
            let st = self.stats(topo);
            st.subscriptions.fetch_add(total - self.counted_subs, Relaxed);
            if (total > 0) != (self.counted_subs > 0) {
                st.subscribed_clients.fetch_add(if total > 0 { 1 } else { -1 }, Relaxed);
            }
            self.counted_subs = total;
        }
    }
}

impl Drop for Pinning {
    fn drop(&mut self) {
        if let Some(id) = self.blocked_as.take() {
            unregister(id);
        }
        if let Some(st) = &self.stats {
            if self.counted_tx {
                st.transaction_clients.fetch_sub(1, Relaxed);
            }
            if self.blocked.is_some() {
                st.blocked_clients.fetch_sub(1, Relaxed);
            }
            if self.counted_subs > 0 {
                st.subscriptions.fetch_sub(self.counted_subs, Relaxed);
                st.subscribed_clients.fetch_sub(1, Relaxed);
            }
        }
    }
}

/// The name of the server whose id is `id`, for error texts ("another shard" once it has left).
fn server_name(topo: &Topology, id: u64) -> &str {
    topo.servers
        .iter()
        .find(|x| x.id == id)
        .map_or("another shard", |x| &x.name)
}

/// Hand a pin whose state ended cleanly back to its server (closed when the server has left).
fn unpin(topo: &Topology, pin: Pin) {
    if let Some(s) = topo.servers.iter().find(|s| s.id == pin.server_id) {
        s.unpin(pin);
    }
}

fn ready(b: &'static [u8]) -> Slot {
    Slot::Ready(Bytes::from_static(b))
}

fn job(bytes: Bytes, done: Option<ReplyTo>) -> Job {
    Job {
        parts: smallvec![bytes],
        framing: Framing::Redis,
        done,
    }
}

fn command(args: &[&[u8]]) -> Bytes {
    let mut b = BytesMut::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    redis::encode_command(&mut b, args.iter().copied());
    b.freeze()
}

/// Send a request on `pin` whose reply is the client's.
fn send(topo: &Topology, q: &Arc<Replies>, pin: &Pin, bytes: Bytes) -> Slot {
    topo.stats.request(Class::Single);
    if let Some(done) = q.expect_one() {
        pin.send(job(bytes, Some(done)));
    }
    Slot::Queued
}

/// Send a request on `pin` whose reply legate drops (MULTI, queued commands already answered).
fn send_quiet(pin: &Pin, bytes: Bytes) {
    pin.send(job(bytes, None));
}

/// A pin on shard `s` for this client.
fn take_pin(topo: &Topology, s: usize, resp3: bool) -> Result<Pin, Slot> {
    topo.servers[s]
        .pin(resp3, None)
        .map_err(|e| redis_error(format!("cannot serve this command now: {}", e.0)))
}

/// The lower-case command name, for matching.
fn lower(name: &[u8]) -> SmallVec<[u8; 16]> {
    name.iter().map(|c| c.to_ascii_lowercase()).collect()
}

/// The shard every key of the request is on; `None` when it has no keys.
fn keyed_shard(
    topo: &Topology,
    cmd: &redis::Command,
    frame: &Bytes,
    req: &redis::Request,
) -> Result<Option<usize>, Slot> {
    let argc = req.args.len();
    let arg = |i: usize| &frame[req.args[i].clone()];
    let mut keys: SmallVec<[usize; 4]> = SmallVec::new();
    if redis::key_positions(cmd, argc, arg, &mut keys).is_err() || keys.is_empty() {
        return Ok(None);
    }
    super::one_shard(topo, cmd, argc, &arg, &keys)
}

const BLOCKING: &[&str] = &[
    "blmove",
    "blmpop",
    "blpop",
    "brpop",
    "brpoplpush",
    "bzmpop",
    "bzpopmax",
    "bzpopmin",
];

/// Answer or route a request of a client in a transaction or subscribed, when its state decides
/// what happens to it; otherwise give the frame back for the usual routing.
pub(super) fn intercept(
    topo: &Topology,
    q: &Arc<Replies>,
    frame: Bytes,
    req: &redis::Request,
    session: &mut super::RedisSession,
) -> Result<Slot, Bytes> {
    let name = &frame[req.args[0].clone()];
    if name.eq_ignore_ascii_case(b"quit") {
        return Err(frame);
    }
    if let Some(pin) = &session.pinning.replica {
        // A replica's REPLCONF ACK …: the server answers a replica nothing.
        topo.stats.request(Class::Single);
        send_quiet(pin, resp_frame(frame, req));
        return Ok(Slot::Queued);
    }
    if name.eq_ignore_ascii_case(b"reset") {
        return Err(frame);
    }
    if session.pinning.multi.is_some() {
        return Ok(in_multi(topo, q, frame, req, session));
    }
    let subscribed = session
        .pinning
        .pubsub
        .as_ref()
        .is_some_and(|p| p.mux.lock().total() > 0);
    if !subscribed || session.resp3 {
        return Err(frame);
    }
    let l = lower(name);
    match &l[..] {
        b"subscribe" | b"unsubscribe" | b"psubscribe" | b"punsubscribe" | b"ssubscribe" | b"sunsubscribe" => Err(frame),
        b"ping" => {
            // RESP2 subscribed mode: PING answers as a message would.
            let payload = match req.args.len() {
                1 => &b""[..],
                2 => &frame[req.args[1].clone()],
                _ => return Ok(wrong_args(b"ping")),
            };
            let mut b = BytesMut::with_capacity(payload.len() + 32);
            b.put_slice(b"*2\r\n$4\r\npong\r\n");
            redis::put_bulk(&mut b, payload);
            topo.stats.request(Class::Proxy);
            Ok(Slot::Ready(b.freeze()))
        }
        _ => {
            topo.stats.request(Class::Unsupported);
            Ok(redis_error(format!(
                "Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                printable(&l)
            )))
        }
    }
}

/// A request inside MULTI: queued on the transaction's pin (or held until it has one), or
/// refused, which aborts the transaction.
fn in_multi(
    topo: &Topology,
    q: &Arc<Replies>,
    frame: Bytes,
    req: &redis::Request,
    session: &mut super::RedisSession,
) -> Slot {
    let argc = req.args.len();
    let arg = |i: usize| &frame[req.args[i].clone()];
    let name = arg(0);
    let l = lower(name);
    match &l[..] {
        b"exec" => return exec(topo, q, frame, session),
        b"discard" => return discard(topo, session),
        b"multi" => return redis_error("MULTI calls can not be nested".into()),
        b"watch" => return redis_error("WATCH inside MULTI is not allowed".into()),
        _ => {}
    }
    let refuse = |session: &mut super::RedisSession, slot: Slot| {
        if let Some(m) = session.pinning.multi.as_mut() {
            m.dirty = true;
        }
        topo.stats.request(Class::Unsupported);
        slot
    };
    let cmd = match redis::lookup(name, (argc > 1).then(|| arg(1))) {
        Ok(cmd) => cmd,
        Err(unknown) => return refuse(session, Slot::Ready(unknown_command(unknown, &frame, req))),
    };
    if !cmd.arity_ok(argc) {
        return refuse(session, wrong_args(cmd.name.as_bytes()));
    }
    let not_here = || redis_error("Command not allowed inside a transaction".into());
    let every_shard = || {
        redis_error(format!(
            "'{}' inside MULTI needs every shard, and legate runs a transaction on one shard",
            display_name(cmd)
        ))
    };
    let target = match cmd.route {
        // Redis's `no-multi` commands: refused there with its own words.
        _ if matches!(cmd.name, "save" | "shutdown" | "sync" | "psync") => Err(not_here()),
        Route::Refused(why) => Err(redis_error(format!(
            "unsupported command '{}': {why}",
            display_name(cmd)
        ))),
        Route::Admin(why) if !topo.pool.redis_admin_commands => Err(super::admin::refused(cmd, why)),
        // CONFIG SET, DEBUG …: every shard, or with one server that one.
        Route::Admin(_) if topo.servers.len() > 1 => Err(every_shard()),
        Route::Admin(_) => Ok(None),
        Route::Local | Route::Container => match &l[..] {
            b"ping" | b"echo" | b"command" => Ok(None),
            _ => Err(not_here()),
        },
        Route::Keyed | Route::KeyedUnlessBlock | Route::Split(_) => keyed_shard(topo, cmd, &frame, req),
        Route::AnyShard => Ok(None),
        Route::FanOut(_) | Route::Scan if topo.servers.len() > 1 => Err(every_shard()),
        Route::FanOut(_) | Route::Scan => Ok(None),
        Route::Pinned => match cmd.name {
            n if BLOCKING.contains(&n) => keyed_shard(topo, cmd, &frame, req),
            "publish" | "spublish" => match topo.server_for(arg(1)) {
                Some(s) => Ok(Some(s)),
                None => Err(redis_error(NO_SERVER.into())),
            },
            "wait" | "ping" => Ok(None),
            _ => Err(not_here()),
        },
    };
    let target = match target {
        Ok(t) => t,
        Err(slot) => return refuse(session, slot),
    };
    let p = &mut session.pinning;
    if let (Some(s), Some(pin)) = (target, &p.tx) {
        if pin.server_id != topo.servers[s].id && topo.cluster.is_some() {
            return refuse(session, Slot::Ready(Bytes::from_static(super::CROSSSLOT)));
        }
        if pin.server_id != topo.servers[s].id {
            let on = server_name(topo, pin.server_id);
            let msg = format!(
                "-CROSSSLOT '{}' is for {}, and this transaction runs on {}: not queued, EXEC will abort (a hash tag like {{user1}} keeps keys together)\r\n",
                display_name(cmd),
                topo.servers[s].name,
                on
            );
            return refuse(session, Slot::Ready(Bytes::from(msg)));
        }
    }
    let pinned = p.tx.is_some() || target.is_some();
    if pinned && p.barrier(q, Path::Pinned) {
        return Slot::Barrier(frame);
    }
    let bytes = resp_frame(frame, req);
    let m = p.multi.as_mut().expect("in a transaction");
    match (&p.tx, target) {
        (Some(pin), _) => {
            if !m.sent {
                send_quiet(pin, command(&[b"MULTI"]));
                m.sent = true;
            }
            send(topo, q, pin, bytes)
        }
        (None, Some(s)) => {
            let pin = match take_pin(topo, s, session.resp3) {
                Ok(pin) => pin,
                Err(slot) => return refuse(session, slot),
            };
            send_quiet(&pin, command(&[b"MULTI"]));
            for h in m.held.drain(..) {
                send_quiet(&pin, h);
            }
            m.sent = true;
            let slot = send(topo, q, &pin, bytes);
            p.tx = Some(pin);
            slot
        }
        (None, None) => {
            topo.stats.request(Class::Proxy);
            m.held.push(bytes);
            ready(b"+QUEUED\r\n")
        }
    }
}

fn exec(topo: &Topology, q: &Arc<Replies>, frame: Bytes, session: &mut super::RedisSession) -> Slot {
    let p = &mut session.pinning;
    let m = p.multi.as_ref().expect("in a transaction");
    let to_pin = !m.dirty && (p.tx.is_some() || !m.held.is_empty());
    if to_pin && p.barrier(q, Path::Pinned) {
        return Slot::Barrier(frame);
    }
    let m = p.multi.take().expect("in a transaction");
    p.watching = false;
    let slot = if m.dirty {
        topo.stats.request(Class::Proxy);
        if let Some(pin) = p.tx.take() {
            // Leave the connection as clean as EXEC would: no transaction, nothing watched.
            send_quiet(&pin, command(&[if m.sent { b"DISCARD" } else { b"UNWATCH" }]));
            unpin(topo, pin);
        }
        ready(b"-EXECABORT Transaction discarded because of previous errors.\r\n")
    } else {
        let pin = match p.tx.take() {
            Some(pin) => Some(pin),
            None if m.held.is_empty() => None,
            None => match take_pin(topo, 0, session.resp3) {
                Ok(pin) => Some(pin),
                Err(slot) => {
                    p.update_tx_gauge(topo);
                    return slot;
                }
            },
        };
        match pin {
            None => {
                topo.stats.request(Class::Proxy);
                ready(b"*0\r\n")
            }
            Some(pin) => {
                if !m.sent {
                    send_quiet(&pin, command(&[b"MULTI"]));
                    for h in m.held {
                        send_quiet(&pin, h);
                    }
                }
                let slot = send(topo, q, &pin, command(&[b"EXEC"]));
                unpin(topo, pin);
                slot
            }
        }
    };
    p.update_tx_gauge(topo);
    slot
}

fn discard(topo: &Topology, session: &mut super::RedisSession) -> Slot {
    let p = &mut session.pinning;
    let m = p.multi.take().expect("in a transaction");
    p.watching = false;
    if let Some(pin) = p.tx.take() {
        send_quiet(&pin, command(&[if m.sent { b"DISCARD" } else { b"UNWATCH" }]));
        unpin(topo, pin);
    }
    p.update_tx_gauge(topo);
    topo.stats.request(Class::Proxy);
    ready(b"+OK\r\n")
}

/// A command whose row routes it here ([`Route::Pinned`]), or a keyed command with a BLOCK
/// option, outside a transaction.
pub(super) fn route(
    topo: &Topology,
    q: &Arc<Replies>,
    out: &mut crate::upstream::Outbox,
    frame: Bytes,
    req: &redis::Request,
    cmd: &redis::Command,
    session: &mut super::RedisSession,
) -> Slot {
    let arg = |i: usize| &frame[req.args[i].clone()];
    match cmd.name {
        "multi" => {
            let p = &mut session.pinning;
            let mut m = Multi {
                held: Vec::new(),
                dirty: false,
                sent: false,
            };
            if let Some(pin) = &p.tx {
                send_quiet(pin, command(&[b"MULTI"]));
                m.sent = true;
            }
            p.multi = Some(m);
            p.update_tx_gauge(topo);
            topo.stats.request(Class::Proxy);
            ready(b"+OK\r\n")
        }
        "exec" => redis_error("EXEC without MULTI".into()),
        "discard" => redis_error("DISCARD without MULTI".into()),
        "watch" => watch(topo, q, frame, req, cmd, session),
        "unwatch" => {
            let p = &mut session.pinning;
            p.watching = false;
            p.update_tx_gauge(topo);
            if let Some(pin) = p.tx.take() {
                send_quiet(&pin, command(&[b"UNWATCH"]));
                unpin(topo, pin);
            }
            topo.stats.request(Class::Proxy);
            ready(b"+OK\r\n")
        }
        "subscribe" => subscribe(topo, q, frame, req, session, Kind::Channel),
        "psubscribe" => subscribe(topo, q, frame, req, session, Kind::Pattern),
        "ssubscribe" => subscribe(topo, q, frame, req, session, Kind::Shard),
        "unsubscribe" => unsubscribe(topo, q, frame, req, session, Kind::Channel),
        "punsubscribe" => unsubscribe(topo, q, frame, req, session, Kind::Pattern),
        "sunsubscribe" => unsubscribe(topo, q, frame, req, session, Kind::Shard),
        "publish" | "spublish" => {
            let Some(s) = topo.server_for(arg(1)) else {
                return redis_error(NO_SERVER.into());
            };
            if session.pinning.leaving_pin(q) {
                return Slot::Barrier(frame);
            }
            let bytes = resp_frame(frame, req);
            super::send_one(topo, q, out, s, session.lane(), smallvec![bytes], Framing::Redis)
        }
        "script|kill" | "function|kill" => kill(topo, q, frame, req, session),
        "ping" => ping(topo, q, frame, req, session),
        "sync" | "psync" => replicate(topo, q, frame, req, cmd, session),
        "script|debug" => {
            topo.stats.request(Class::Unsupported);
            redis_error("unsupported command 'SCRIPT DEBUG': the Lua debugger needs a server connection of its own for its whole session, which legate does not give".into())
        }
        _ => blocking(topo, q, frame, req, cmd, session),
    }
}

/// SCRIPT KILL / FUNCTION KILL: on a connection of its own to every shard. The script it
/// stops keeps its own connection busy, and on a shared one the kill would wait behind it.
fn kill(
    topo: &Topology,
    q: &Arc<Replies>,
    frame: Bytes,
    req: &redis::Request,
    session: &mut super::RedisSession,
) -> Slot {
    let all: SmallVec<[usize; 8]> = (0..topo.servers.len()).collect();
    on_pins(topo, q, &all, resp_frame(frame, req), session.resp3, redis::Fan::AnyOk)
}

/// PING: every shard answers, each on a pin (see the module doc).
fn ping(
    topo: &Topology,
    q: &Arc<Replies>,
    frame: Bytes,
    req: &redis::Request,
    session: &mut super::RedisSession,
) -> Slot {
    if req.args.len() > 2 {
        return wrong_args(b"ping");
    }
    // An ejected server is out of the ring: the pool answers without it, as its keys do.
    let live: SmallVec<[usize; 8]> = (0..topo.servers.len())
        .filter(|&s| !topo.servers[s].is_ejected())
        .collect();
    if live.is_empty() {
        return redis_error(NO_SERVER.into());
    }
    // Only a script or a function makes a server busy: with none running, every server would
    // say PONG, so legate says it (health checks and connection pools PING often).
    if !live.iter().any(|&s| topo.servers[s].stats.scripts.load(Relaxed) > 0) {
        topo.stats.request(Class::Proxy);
        return Slot::Ready(match req.args.get(1) {
            None => Bytes::from_static(b"+PONG\r\n"),
            Some(a) => super::bulk(&frame[a.clone()]),
        });
    }
    if session.pinning.barrier(q, Path::Pinned) {
        return Slot::Barrier(frame);
    }
    on_pins(topo, q, &live, resp_frame(frame, req), session.resp3, redis::Fan::Same)
}

/// Send `bytes` to each of `servers` on a pin (handed back at once: a pin answers in order,
/// so the reply still comes here if another client takes the pin meanwhile); the replies
/// merged by `fan`.
fn on_pins(topo: &Topology, q: &Arc<Replies>, servers: &[usize], bytes: Bytes, resp3: bool, fan: redis::Fan) -> Slot {
    let n = servers.len();
    if n == 0 {
        return redis_error(NO_SERVER.into());
    }
    let mut pins = Vec::with_capacity(n);
    for &s in servers {
        match take_pin(topo, s, resp3) {
            Ok(pin) => pins.push(pin),
            Err(slot) => return slot,
        }
    }
    topo.stats.request(if n == 1 { Class::Single } else { Class::Multi });
    let merge = super::GatherMerge::RedisFan {
        fan,
        resp3,
        clients: super::fanout::Clients::default(),
    };
    if let Some(parts) = q.expect_gather(n, merge) {
        for (pin, done) in pins.iter().zip(parts) {
            pin.send(job(bytes.clone(), Some(done)));
        }
    }
    for pin in pins {
        unpin(topo, pin);
    }
    Slot::Queued
}

/// Most bytes of a replication stream legate holds for a replica that reads slowly; beyond it
/// the server holds them.
const REPLICA_MAX_HELD: usize = 8 * 1024 * 1024;

/// Most writes held for it, whatever their size (a stream of tiny ones).
const REPLICA_MAX_ENTRIES: usize = 64 * 1024;

/// A replica's side of its raw pin: the server's bytes, as they come, to the client.
struct Replication {
    q: Arc<Replies>,
}

impl Sink for Replication {
    fn frame(&self, _server_id: u64, bytes: Bytes) {
        self.q.push(bytes, false);
    }

    fn lost(&self, _server_id: u64, why: String) {
        tracing::debug!(%why, "replication stream ended");
        // What was read is written, then the client closes: its master has gone.
        self.q.push(Bytes::new(), true);
    }

    fn raw(&self) -> bool {
        true
    }

    fn full(&self) -> bool {
        self.q.held() > REPLICA_MAX_HELD || self.q.owed() > REPLICA_MAX_ENTRIES
    }
}

/// SYNC / PSYNC: the one server's replication stream, tunnelled (see the module doc).
fn replicate(
    topo: &Topology,
    q: &Arc<Replies>,
    frame: Bytes,
    req: &redis::Request,
    cmd: &redis::Command,
    session: &mut super::RedisSession,
) -> Slot {
    let refuse = |msg: String| {
        topo.stats.request(Class::Unsupported);
        redis_error(msg)
    };
    if !topo.pool.redis_admin_commands {
        return super::admin::refused(
            cmd,
            "a replica's stream is one server's, and reading it makes that server fork for a snapshot",
        );
    }
    let n = topo.servers.len();
    if n == 0 {
        return redis_error(NO_SERVER.into());
    }
    if n > 1 {
        return refuse(format!(
            "unsupported command '{}' on a pool of {n} servers: each server holds a part of the keyspace, so no one server's replication stream is the pool's; replicate the servers directly",
            display_name(cmd)
        ));
    }
    let p = &mut session.pinning;
    if p.tx.is_some() || p.pubsub.is_some() {
        return refuse(format!(
            "'{}' on a connection that watches keys or is subscribed: the replication stream needs a connection of its own",
            display_name(cmd)
        ));
    }
    if p.barrier(q, Path::Pinned) {
        return Slot::Barrier(frame);
    }
    let sink: Arc<dyn Sink> = Arc::new(Replication { q: q.clone() });
    let pin = match topo.servers[0].pin(false, Some(sink)) {
        Ok(pin) => pin,
        Err(e) => return redis_error(format!("cannot serve this command now: {}", e.0)),
    };
    topo.stats.request(Class::Single);
    send_quiet(&pin, resp_frame(frame, req));
    p.replica = Some(pin);
    Slot::Queued
}

fn watch(
    topo: &Topology,
    q: &Arc<Replies>,
    frame: Bytes,
    req: &redis::Request,
    cmd: &redis::Command,
    session: &mut super::RedisSession,
) -> Slot {
    let s = match keyed_shard(topo, cmd, &frame, req) {
        Ok(Some(s)) => s,
        Ok(None) => return redis_error(NO_SERVER.into()),
        Err(slot) => {
            topo.stats.request(Class::Unsupported);
            return slot;
        }
    };
    let p = &mut session.pinning;
    if let Some(pin) = &p.tx {
        if pin.server_id != topo.servers[s].id {
            topo.stats.request(Class::Unsupported);
            let on = server_name(topo, pin.server_id);
            return Slot::Ready(Bytes::from(format!(
                "-CROSSSLOT WATCH: these keys are on {}, and this client already watches keys on {} (a transaction runs on one shard; a hash tag like {{user1}} keeps keys together)\r\n",
                topo.servers[s].name, on
            )));
        }
    }
    if p.barrier(q, Path::Pinned) {
        return Slot::Barrier(frame);
    }
    let bytes = resp_frame(frame, req);
    if p.tx.is_none() {
        match take_pin(topo, s, session.resp3) {
            Ok(pin) => p.tx = Some(pin),
            Err(slot) => return slot,
        }
    }
    p.watching = true;
    p.update_tx_gauge(topo);
    send(topo, q, p.tx.as_ref().expect("pinned"), bytes)
}

/// A keyed command on shard `server` outside a transaction: on the transaction's pin when the
/// client watches keys there, or a barrier when it leaves a pin; otherwise the frame is given
/// back for the shared connections.
#[inline]
pub(super) fn keyed(
    topo: &Topology,
    q: &Arc<Replies>,
    frame: Bytes,
    req: &redis::Request,
    server: usize,
    session: &mut super::RedisSession,
) -> Result<Slot, Bytes> {
    let p = &mut session.pinning;
    if p.path == Path::Shared && !p.watching {
        return Err(frame);
    }
    if p.watch_pin_on(topo.servers[server].id) {
        if p.barrier(q, Path::Pinned) {
            return Ok(Slot::Barrier(frame));
        }
        let pin = p.tx.as_ref().expect("watching");
        return Ok(send(topo, q, pin, resp_frame(frame, req)));
    }
    if p.leaving_pin(q) {
        return Ok(Slot::Barrier(frame));
    }
    Err(frame)
}

/// BLPOP and the other blocking commands, XREAD / XREADGROUP with BLOCK, WAIT.
pub(super) fn blocking(
    topo: &Topology,
    q: &Arc<Replies>,
    frame: Bytes,
    req: &redis::Request,
    cmd: &redis::Command,
    session: &mut super::RedisSession,
) -> Slot {
    let s = match keyed_shard(topo, cmd, &frame, req) {
        Ok(Some(s)) => s,
        // WAIT (and a command whose keys are malformed, which fails there with its own error).
        Ok(None) if !topo.servers.is_empty() => 0,
        Ok(None) => return redis_error(NO_SERVER.into()),
        Err(slot) => {
            topo.stats.request(Class::Unsupported);
            return slot;
        }
    };
    let p = &mut session.pinning;
    if let Some(pin) = &p.tx {
        if pin.server_id != topo.servers[s].id {
            topo.stats.request(Class::Unsupported);
            return redis_error(format!(
                "'{}' is for {}, and this client watches keys on another shard: UNWATCH first, or keep the keys together with a hash tag",
                display_name(cmd),
                topo.servers[s].name
            ));
        }
    }
    if p.barrier(q, Path::Pinned) {
        return Slot::Barrier(frame);
    }
    let bytes = resp_frame(frame, req);
    let stats = p.stats(topo);
    let id = session.id();
    let p = &mut session.pinning;
    let (slot, conn_id) = match &p.tx {
        Some(pin) => {
            let slot = send(topo, q, pin, bytes);
            let conn_id = pin.conn_id();
            p.blocked = Some(Blocked::OnTx);
            (slot, conn_id)
        }
        None => {
            let pin = match take_pin(topo, s, session.resp3) {
                Ok(pin) => pin,
                Err(slot) => return slot,
            };
            let slot = send(topo, q, &pin, bytes);
            let conn_id = pin.conn_id();
            p.blocked = Some(Blocked::Own(pin));
            (slot, conn_id)
        }
    };
    lock_blocked().insert(
        id,
        Unblocker {
            pool: Arc::as_ptr(&stats) as usize,
            server_id: topo.servers[s].id,
            conn_id,
            targeted: Arc::new(AtomicBool::new(false)),
        },
    );
    p.blocked_as = Some(id);
    stats.blocked_clients.fetch_add(1, Relaxed);
    slot
}

/// How to reach a blocked client's server connection, for `CLIENT UNBLOCK`.
struct Unblocker {
    /// Its pool ([`PoolStats`] address): a client unblocks only clients of its own pool.
    pool: usize,
    server_id: u64,
    /// The server's id of the connection (0 while unknown).
    conn_id: Arc<AtomicU64>,
    /// A CLIENT UNBLOCK was sent for it: its connection is not reused (the unblock could
    /// reach the server after the reply, and unblock the connection's next client).
    targeted: Arc<AtomicBool>,
}

/// Clients blocked on a command, by legate `CLIENT ID` (unique in the process).
static BLOCKED: LazyLock<Mutex<HashMap<u64, Unblocker>>> = LazyLock::new(Default::default);

fn lock_blocked() -> std::sync::MutexGuard<'static, HashMap<u64, Unblocker>> {
    BLOCKED.lock().unwrap_or_else(|e| e.into_inner())
}

fn unregister(id: u64) -> Option<Unblocker> {
    lock_blocked().remove(&id)
}

/// `CLIENT UNBLOCK id [TIMEOUT|ERROR]`: the blocked client's own server connection is unblocked
/// by the server that holds it, which answers (`:1`, or `:0` when it was no longer blocked).
pub(super) fn client_unblock(
    topo: &Topology,
    q: &Arc<Replies>,
    out: &mut crate::upstream::Outbox,
    frame: &Bytes,
    req: &redis::Request,
    session: &mut super::RedisSession,
) -> Slot {
    let argc = req.args.len();
    let arg = |i: usize| &frame[req.args[i].clone()];
    if !(3..=4).contains(&argc) {
        return wrong_args(b"client|unblock");
    }
    let Some(id) = std::str::from_utf8(arg(2)).ok().and_then(|t| t.parse::<i64>().ok()) else {
        return redis_error("value is not an integer or out of range".into());
    };
    let reason: &[u8] = match argc {
        3 => b"TIMEOUT",
        _ if arg(3).eq_ignore_ascii_case(b"timeout") => b"TIMEOUT",
        _ if arg(3).eq_ignore_ascii_case(b"error") => b"ERROR",
        _ => return redis_error("CLIENT UNBLOCK reason should be TIMEOUT or ERROR".into()),
    };
    let target = u64::try_from(id).ok().and_then(|id| {
        let reg = lock_blocked();
        let u = reg.get(&id)?;
        let conn = u.conn_id.load(Relaxed);
        if u.pool != Arc::as_ptr(&topo.stats) as usize || conn == 0 {
            return None;
        }
        let s = topo.servers.iter().position(|s| s.id == u.server_id)?;
        u.targeted.store(true, Relaxed);
        Some((s, conn))
    });
    let Some((s, conn)) = target else {
        topo.stats.request(Class::Proxy);
        return ready(b":0\r\n");
    };
    let conn = conn.to_string();
    let bytes = command(&[b"CLIENT", b"UNBLOCK", conn.as_bytes(), reason]);
    super::send_one(topo, q, out, s, session.lane(), smallvec![bytes], Framing::Redis)
}

// ---------------------------------------------------------------------------------------------
// Pub/sub

/// Most reply bytes a subscriber may leave unread before legate closes it (Redis's default
/// `client-output-buffer-limit pubsub` hard limit).
const PUBSUB_MAX_HELD: usize = 32 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Channel,
    Pattern,
    Shard,
}

impl Kind {
    fn subscribe(self) -> &'static [u8] {
        match self {
            Kind::Channel => b"subscribe",
            Kind::Pattern => b"psubscribe",
            Kind::Shard => b"ssubscribe",
        }
    }

    fn unsubscribe(self) -> &'static [u8] {
        match self {
            Kind::Channel => b"unsubscribe",
            Kind::Pattern => b"punsubscribe",
            Kind::Shard => b"sunsubscribe",
        }
    }
}

/// One client's subscriptions, shared with the readers of its subscribed connections.
pub(super) struct Mux {
    q: Arc<Replies>,
    inner: Mutex<MuxState>,
}

#[derive(Default)]
struct MuxState {
    channels: HashSet<Bytes>,
    patterns: HashSet<Bytes>,
    shard: HashSet<Bytes>,
    /// Subscribe commands waiting for their servers' confirmations, oldest first.
    waiting: VecDeque<Waiting>,
    /// The client is being closed (or has reset): nothing more goes to it.
    closed: bool,
}

impl MuxState {
    fn set(&mut self, kind: Kind) -> &mut HashSet<Bytes> {
        match kind {
            Kind::Channel => &mut self.channels,
            Kind::Pattern => &mut self.patterns,
            Kind::Shard => &mut self.shard,
        }
    }

    /// The count Redis puts in a (un)subscribe confirmation of `kind`.
    fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Shard => self.shard.len(),
            _ => self.channels.len() + self.patterns.len(),
        }
    }

    fn total(&self) -> usize {
        self.channels.len() + self.patterns.len() + self.shard.len()
    }
}

/// A (un)subscribe command waiting for its servers' confirmations.
struct Waiting {
    done: Option<ReplyTo>,
    /// legate's confirmations, one per name.
    reply: Bytes,
    /// Confirmations still to come.
    parts: Vec<Part>,
}

/// One confirmation a server owes: `server` confirms that it (un)subscribed `name`.
struct Part {
    server: u64,
    kind: Kind,
    subscribe: bool,
    name: Bytes,
}

impl Mux {
    fn lock(&self) -> std::sync::MutexGuard<'_, MuxState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forward(&self, st: &mut MuxState, frame: Bytes) {
        if self.q.held() + frame.len() > PUBSUB_MAX_HELD {
            st.closed = true;
            if let Some(suppressed) = crate::log_limit::allow("pubsub slow subscriber") {
                tracing::warn!(
                    suppressed,
                    "closing a subscriber that left {PUBSUB_MAX_HELD} bytes of messages unread"
                );
            }
            self.q.close();
            return;
        }
        self.q.push(frame, false);
    }
}

/// The text of a bulk (or simple) string element.
fn text(elem: &[u8]) -> Option<&[u8]> {
    let lf = memchr::memchr(b'\n', elem)?;
    match elem.first()? {
        b'$' => elem.get(lf + 1..elem.len().checked_sub(2)?),
        b'+' => elem.get(1..lf.checked_sub(1)?),
        _ => None,
    }
}

impl Sink for Mux {
    fn frame(&self, server_id: u64, frame: Bytes) {
        let mut st = self.lock();
        if st.closed {
            return;
        }
        let Some(elems) = redis::aggregate_elements(&frame) else {
            if frame.first() == Some(&b'-') {
                if let Some(suppressed) = crate::log_limit::allow("pubsub error reply") {
                    tracing::warn!(reply = %String::from_utf8_lossy(&frame[..frame.len().min(120)]).trim_end(), suppressed, "error on a subscribed connection");
                }
            }
            return;
        };
        let el = |i: usize| elems.get(i).and_then(|r| text(&frame[r.clone()]));
        let Some(kind) = el(0) else {
            self.forward(&mut st, frame.clone());
            return;
        };
        let kind = lower(kind);
        let listening = |st: &MuxState, k: Kind| match el(1) {
            Some(name) => match k {
                Kind::Channel => st.channels.contains(name),
                Kind::Pattern => st.patterns.contains(name),
                Kind::Shard => st.shard.contains(name),
            },
            None => false,
        };
        match &kind[..] {
            b"message" if listening(&st, Kind::Channel) => self.forward(&mut st, frame.clone()),
            b"pmessage" if listening(&st, Kind::Pattern) => self.forward(&mut st, frame.clone()),
            b"smessage" if listening(&st, Kind::Shard) => self.forward(&mut st, frame.clone()),
            b"message" | b"pmessage" | b"smessage" => {}
            b"subscribe" | b"psubscribe" | b"ssubscribe" | b"unsubscribe" | b"punsubscribe" | b"sunsubscribe" => {
                let (k, subscribe) = match &kind[..] {
                    b"subscribe" => (Kind::Channel, true),
                    b"psubscribe" => (Kind::Pattern, true),
                    b"ssubscribe" => (Kind::Shard, true),
                    b"unsubscribe" => (Kind::Channel, false),
                    b"punsubscribe" => (Kind::Pattern, false),
                    _ => (Kind::Shard, false),
                };
                let name = el(1).unwrap_or_default();
                let found = st.waiting.iter().enumerate().find_map(|(i, w)| {
                    w.parts
                        .iter()
                        .position(|p| {
                            p.server == server_id && p.kind == k && p.subscribe == subscribe && p.name[..] == *name
                        })
                        .map(|j| (i, j))
                });
                if let Some((i, j)) = found {
                    st.waiting[i].parts.swap_remove(j);
                    if st.waiting[i].parts.is_empty() {
                        if let Some(w) = st.waiting.remove(i) {
                            if let Some(done) = w.done {
                                done.send(Ok(w.reply));
                            }
                        }
                    }
                }
            }
            b"pong" => {}
            // Any other push (RESP3 client tracking…) is the client's.
            _ => self.forward(&mut st, frame.clone()),
        }
    }

    fn lost(&self, _server_id: u64, why: String) {
        let mut st = self.lock();
        if st.closed || (st.total() == 0 && st.waiting.is_empty()) {
            // Nothing was listening there: the next SUBSCRIBE takes a new connection.
            return;
        }
        st.closed = true;
        let err = UpstreamError::Lost { server: why.clone() };
        for w in st.waiting.drain(..) {
            if let Some(done) = w.done {
                done.send(Err(err.clone()));
            }
        }
        let clean: String = why
            .chars()
            .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
            .collect();
        self.q.push(
            Bytes::from(format!(
                "-ERR {clean}: the subscriptions are gone; reconnect and subscribe again\r\n"
            )),
            true,
        );
    }
}

/// A (un)subscribe confirmation as Redis sends it: a push in RESP3, an array in RESP2.
fn put_confirmation(b: &mut BytesMut, resp3: bool, kind: &[u8], name: Option<&[u8]>, count: usize) {
    b.put_slice(if resp3 { b">3\r\n" } else { b"*3\r\n" });
    redis::put_bulk(b, kind);
    match name {
        Some(n) => redis::put_bulk(b, n),
        None => b.put_slice(if resp3 { b"_\r\n" } else { b"$-1\r\n" }),
    }
    b.put_u8(b':');
    redis::put_decimal(b, count as i64);
    b.put_slice(b"\r\n");
}

fn subscribe(
    topo: &Topology,
    q: &Arc<Replies>,
    frame: Bytes,
    req: &redis::Request,
    session: &mut super::RedisSession,
    kind: Kind,
) -> Slot {
    let n = topo.servers.len();
    if n == 0 {
        return redis_error(NO_SERVER.into());
    }
    let names: Vec<Bytes> = req.args[1..].iter().map(|r| frame.slice(r.clone())).collect();
    // The shards each name is subscribed on.
    let mut on: Vec<SmallVec<[usize; 1]>> = Vec::with_capacity(names.len());
    for name in &names {
        match kind {
            Kind::Pattern => on.push((0..n).collect()),
            _ => match topo.server_for(name) {
                Some(s) => on.push(smallvec![s]),
                None => return redis_error(NO_SERVER.into()),
            },
        }
    }
    let resp3 = session.resp3;
    let p = &mut session.pinning;
    let ps = p.pubsub.get_or_insert_with(|| PubSub {
        mux: Arc::new(Mux {
            q: q.clone(),
            inner: Mutex::new(MuxState::default()),
        }),
        pins: Vec::new(),
    });
    // A connection lost while nothing was subscribed is replaced.
    ps.pins.retain(|pin| !pin.is_dead());
    // A connection of the client's own to every shard it listens on.
    let mut per_server: Vec<(usize, Vec<&[u8]>)> = Vec::new();
    for servers in &on {
        for &s in servers {
            let id = topo.servers[s].id;
            if !ps.pins.iter().any(|pin| pin.server_id == id) {
                let sink: Arc<dyn Sink> = ps.mux.clone();
                match topo.servers[s].pin(resp3, Some(sink)) {
                    Ok(pin) => ps.pins.push(pin),
                    Err(e) => {
                        if ps.mux.lock().total() == 0 {
                            p.pubsub = None;
                        }
                        return redis_error(format!("cannot subscribe now: {}", e.0));
                    }
                }
            }
            if !per_server.iter().any(|(x, _)| *x == s) {
                per_server.push((s, Vec::new()));
            }
        }
    }
    let mut reply = BytesMut::with_capacity(names.iter().map(|n| n.len() + 48).sum());
    let mut parts = Vec::new();
    {
        let mut st = ps.mux.lock();
        for (name, servers) in names.iter().zip(&on) {
            st.set(kind).insert(name.clone());
            put_confirmation(&mut reply, resp3, kind.subscribe(), Some(name), st.count(kind));
            for &s in servers {
                parts.push(Part {
                    server: topo.servers[s].id,
                    kind,
                    subscribe: true,
                    name: name.clone(),
                });
                if let Some((_, list)) = per_server.iter_mut().find(|(x, _)| *x == s) {
                    list.push(name);
                }
            }
        }
        let done = q.expect_one();
        st.waiting.push_back(Waiting {
            done,
            reply: reply.freeze(),
            parts,
        });
    }
    let verb: &[u8] = match kind {
        Kind::Channel => b"SUBSCRIBE",
        Kind::Pattern => b"PSUBSCRIBE",
        Kind::Shard => b"SSUBSCRIBE",
    };
    for (s, list) in per_server {
        let id = topo.servers[s].id;
        if let Some(pin) = ps.pins.iter().find(|pin| pin.server_id == id) {
            let args: Vec<&[u8]> = std::iter::once(verb).chain(list).collect();
            pin.send(job(command(&args), None));
        }
    }
    topo.stats.request(Class::Multi);
    p.update_sub_gauges(topo);
    Slot::Queued
}

/// Confirmed as Redis would once every server has confirmed it: a PUBLISH sent after the
/// confirmation no longer reaches this client. When nothing is left subscribed, the
/// connections close once the confirmations are in ([`Pinning::settled`]).
fn unsubscribe(
    topo: &Topology,
    q: &Arc<Replies>,
    frame: Bytes,
    req: &redis::Request,
    session: &mut super::RedisSession,
    kind: Kind,
) -> Slot {
    let resp3 = session.resp3;
    let p = &mut session.pinning;
    let given: Vec<Bytes> = req.args[1..].iter().map(|r| frame.slice(r.clone())).collect();
    let mut reply = BytesMut::new();
    let Some(ps) = p.pubsub.as_mut() else {
        // Not subscribed to anything: nothing to tell a server.
        topo.stats.request(Class::Proxy);
        if given.is_empty() {
            put_confirmation(&mut reply, resp3, kind.unsubscribe(), None, 0);
        }
        for name in &given {
            put_confirmation(&mut reply, resp3, kind.unsubscribe(), Some(name), 0);
        }
        return Slot::Ready(reply.freeze());
    };
    let verb: &[u8] = match kind {
        Kind::Channel => b"UNSUBSCRIBE",
        Kind::Pattern => b"PUNSUBSCRIBE",
        Kind::Shard => b"SUNSUBSCRIBE",
    };
    let mut per_pin: Vec<Vec<Bytes>> = vec![Vec::new(); ps.pins.len()];
    let mut parts = Vec::new();
    {
        let mut st = ps.mux.lock();
        let names: Vec<Bytes> = if given.is_empty() {
            let mut all: Vec<Bytes> = st.set(kind).iter().cloned().collect();
            all.sort();
            all
        } else {
            given
        };
        if names.is_empty() {
            put_confirmation(&mut reply, resp3, kind.unsubscribe(), None, st.count(kind));
        }
        for name in names {
            st.set(kind).remove(&name);
            put_confirmation(&mut reply, resp3, kind.unsubscribe(), Some(&name), st.count(kind));
            let shard = match kind {
                Kind::Pattern => None,
                _ => topo.server_for(&name).map(|s| topo.servers[s].id),
            };
            for (i, pin) in ps.pins.iter().enumerate() {
                if !pin.is_dead() && shard.is_none_or(|id| id == pin.server_id) {
                    per_pin[i].push(name.clone());
                    parts.push(Part {
                        server: pin.server_id,
                        kind,
                        subscribe: false,
                        name: name.clone(),
                    });
                }
            }
        }
        if !parts.is_empty() {
            let done = q.expect_one();
            st.waiting.push_back(Waiting {
                done,
                reply: reply.split().freeze(),
                parts,
            });
        }
    }
    for (pin, names) in ps.pins.iter().zip(per_pin) {
        if !names.is_empty() {
            let args: Vec<&[u8]> = std::iter::once(verb).chain(names.iter().map(|n| &n[..])).collect();
            pin.send(job(command(&args), None));
        }
    }
    p.update_sub_gauges(topo);
    if reply.is_empty() {
        topo.stats.request(Class::Multi);
        Slot::Queued
    } else {
        topo.stats.request(Class::Proxy);
        Slot::Ready(reply.freeze())
    }
}
