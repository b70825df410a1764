//! Listeners and client sessions.
//!
//! A session is two halves. The reader parses every complete request in its buffer, routes
//! each (queueing jobs on the servers' connections) and reserves one entry per reply in the
//! session's [`Replies`]. Servers fill the entries as they answer; the writer takes the
//! complete ones from the front, in request order, and writes them in batches. The queue's
//! bound is the session's backpressure: a client that does not read its replies stops being
//! read.

use crate::config::{Addr, PoolConfig, Protocol};
use crate::net::{Plain, Stream};
use crate::protocol::{memcache, redis, Need, Parse, MAX_VALUE_BYTES};
use crate::replies::{Entry, Replies};
use crate::router::{self, Slot};
use crate::topology::SharedTopology;
use crate::upstream::{write_all_vectored, Outbox};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// Replies a session may owe before it stops reading requests.
const SLOTS_IN_FLIGHT: usize = 1024;
/// Reply bytes a session holds for a client that is not reading them before it stops reading
/// requests (replies already on their way still arrive).
const REPLY_BYTES_HELD: usize = 2 * 1024 * 1024;
/// Reply bytes gathered before a write is forced.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// A bound listener of either kind, not yet tied to a runtime: every worker accepts on its
/// own descriptor of the one socket ([`Listener::try_clone`]), and a reload hands the socket to
/// the pool's successor without ever closing it.
///
/// One socket shared by the workers rather than one `SO_REUSEPORT` socket each: each reuseport
/// socket has its own accept queue, and connections queued on one that closes (a reload that
/// changes the worker set, a drain) are reset.
pub enum Listener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl Listener {
    /// Bind a pool's listen address with its backlog and reuseport settings.
    ///
    /// # Errors
    /// The address cannot be resolved or bound.
    pub fn bind(pool: &PoolConfig) -> std::io::Result<Listener> {
        match &pool.listen {
            Addr::Tcp { host, port } => {
                use std::net::ToSocketAddrs;
                let addr = (host.as_str(), *port).to_socket_addrs()?.next().ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, format!("cannot resolve {host}"))
                })?;
                let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
                sock.set_reuse_address(true)?;
                if pool.reuseport {
                    sock.set_reuse_port(true)?;
                }
                sock.set_nonblocking(true)?;
                sock.bind(&addr.into())?;
                sock.listen(pool.backlog.min(i32::MAX as u32) as i32)?;
                Ok(Listener::Tcp(sock.into()))
            }
            Addr::Unix { path, perm } => {
                // A socket file left by an earlier run would make bind fail.
                if std::fs::symlink_metadata(path).is_ok_and(|m| {
                    use std::os::unix::fs::FileTypeExt;
                    m.file_type().is_socket()
                }) {
                    std::fs::remove_file(path)?;
                }
                let l = std::os::unix::net::UnixListener::bind(path)?;
                l.set_nonblocking(true)?;
                if let Some(perm) = perm {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(*perm))?;
                }
                Ok(Listener::Unix(l))
            }
        }
    }

    /// Another descriptor for the same socket (for another worker).
    ///
    /// # Errors
    /// Out of descriptors.
    pub fn try_clone(&self) -> std::io::Result<Listener> {
        Ok(match self {
            Listener::Tcp(l) => Listener::Tcp(l.try_clone()?),
            Listener::Unix(l) => Listener::Unix(l.try_clone()?),
        })
    }

    /// The bound address, for logs (resolves port 0).
    pub fn local_addr(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Listener::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                .unwrap_or_default(),
        }
    }

    /// Register with the calling worker's runtime.
    fn register(self) -> std::io::Result<Accepting> {
        Ok(match self {
            Listener::Tcp(l) => Accepting::Tcp(tokio::net::TcpListener::from_std(l)?),
            Listener::Unix(l) => Accepting::Unix(tokio::net::UnixListener::from_std(l)?),
        })
    }
}

/// A listener registered with one worker's runtime.
enum Accepting {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Accepting {
    /// Back to a runtime-free listener, for the next owner of the socket.
    fn release(self) -> std::io::Result<Listener> {
        Ok(match self {
            Accepting::Tcp(l) => Listener::Tcp(l.into_std()?),
            Accepting::Unix(l) => Listener::Unix(l.into_std()?),
        })
    }
}

/// What a pool's sessions share: its topology, the drain signal and the count of live sessions.
#[derive(Clone)]
pub struct PoolHandle {
    pub topo: SharedTopology,
    pub protocol: Protocol,
    /// Turns true when the pool stops: sessions finish what they read, then close.
    pub drain: watch::Receiver<bool>,
    /// Held by every session; the pool is drained when all clones are gone.
    pub alive: mpsc::Sender<()>,
    /// The pool's clients on every worker, for `client_connections`.
    pub clients: Arc<AtomicUsize>,
}

/// The next client and its IP address (none for unix sockets).
async fn accept(listener: &Accepting) -> std::io::Result<(Plain, Option<IpAddr>)> {
    match listener {
        Accepting::Tcp(l) => l.accept().await.map(|(s, peer)| {
            let _ = s.set_nodelay(true);
            (Plain::Tcp(s), Some(peer.ip()))
        }),
        Accepting::Unix(l) => l.accept().await.map(|(s, _)| (Plain::Unix(s), None)),
    }
}

/// Accept clients on the calling worker, one session task each, until the pool drains; then
/// hand the listener back (a reload may give it to the pool's successor without ever closing
/// the socket). `None` when the listener could not be registered or released.
pub async fn accept_loop(listener: Listener, pool: PoolHandle) -> Option<Listener> {
    let listener = match listener.register() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot accept on a worker");
            return None;
        }
    };
    let clients = pool.clients.clone();
    let mut drain = pool.drain.clone();
    loop {
        let accepted = tokio::select! {
            a = accept(&listener) => a,
            _ = drain.wait_for(|d| *d) => return listener.release().ok(),
        };
        let (plain, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and similar: back off briefly rather than spin, and log the
                // same failure once per window (with how many were suppressed), not 100 a second.
                let pool = pool.topo.load().pool.name.clone();
                if let Some(suppressed) = crate::log_limit::allow(&format!("accept {pool} {e}")) {
                    tracing::warn!(%pool, error = %e, suppressed, "accept failed");
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        // One snapshot per accepted client: its limits, TLS and counters.
        let topo = pool.topo.load_full();
        let max_clients = topo.pool.client_connections;
        // Counted before the check: two workers accepting at once cannot both take the last place.
        if clients.fetch_add(1, Ordering::Relaxed) >= max_clients as usize && max_clients > 0 {
            clients.fetch_sub(1, Ordering::Relaxed);
            let key = format!("client_connections {}", topo.pool.name);
            if let Some(suppressed) = crate::log_limit::allow(&key) {
                tracing::warn!(pool = %topo.pool.name, max_clients, suppressed, "client_connections reached; refusing a new client");
            }
            let reply: &'static [u8] = match pool.protocol {
                Protocol::Memcache => b"SERVER_ERROR too many open connections\r\n",
                Protocol::Redis => b"-ERR max number of clients reached\r\n",
                Protocol::Tcp => b"",
            };
            // Told in the protocol when the client speaks it in the clear; a TLS client would
            // need a handshake first, so it is just closed.
            let tell = topo.tls.acceptor.is_none();
            let mut s = plain;
            tokio::spawn(async move {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                    if tell {
                        let _ = s.write_all(reply).await;
                    }
                    let _ = s.shutdown().await;
                })
                .await;
            });
            continue;
        }
        let clients = clients.clone();
        let pool = pool.clone();
        let stats = topo.stats.clone();
        stats.client_connections.fetch_add(1, Ordering::Relaxed);
        stats.clients_total.fetch_add(1, Ordering::Relaxed);
        let acceptor = topo.tls.acceptor.clone();
        drop(topo);
        tokio::spawn(async move {
            // The handshake runs in the client's own task, under its timeout, so a slow or
            // failing client never holds up the accept loop or anyone else.
            let stream = match acceptor {
                None => Some(Stream::Plain(plain)),
                // Boxed, like the L4 session below: the rare paths do not size every client's task.
                Some(a) => match Box::pin(a.accept(plain)).await {
                    Ok(s) => Some(s),
                    Err(reason) => {
                        tracing::info!(client = ?peer, %reason, "client TLS handshake failed");
                        stats.client_tls_err.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                },
            };
            match stream {
                Some(s) if pool.protocol == Protocol::Tcp => Box::pin(crate::l4::session(s, peer, pool)).await,
                Some(s) => {
                    let (r, w) = s.into_split();
                    session(r, w, pool).await;
                }
                None => drop(pool),
            }
            clients.fetch_sub(1, Ordering::Relaxed);
            stats.client_connections.fetch_sub(1, Ordering::Relaxed);
            stats.client_eof.fetch_add(1, Ordering::Relaxed);
        });
    }
}

/// Serve one client until it closes, quits, sends what cannot be resynchronised, or the pool
/// drains.
pub async fn session<R, W>(mut rd: R, wr: W, pool: PoolHandle)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // Until the client sends something it costs only this small future: the session's state
    // (its reply queue, writer task, parser and routing state, about 3 KB) is made when the
    // first bytes come. Idle connections are what a pool of clients mostly holds.
    let mut buf = BytesMut::new();
    let idle = pool.topo.load().pool.client_idle_timeout;
    let mut drain = pool.drain.clone();
    let first = tokio::select! {
        r = rd.read_buf(&mut buf) => matches!(r, Ok(n) if n > 0),
        _ = drain.wait_for(|d| *d) => false,
        _ = tokio::time::sleep(idle.unwrap_or_default()), if idle.is_some() => false,
    };
    if first {
        Box::pin(serve(rd, wr, pool, buf)).await;
    }
}

/// [`session`] from the client's first bytes on.
async fn serve<R, W>(mut rd: R, wr: W, pool: PoolHandle, buf: BytesMut)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let q = Replies::new(SLOTS_IN_FLIGHT, REPLY_BYTES_HELD);
    let stats = pool.topo.load().stats.clone();
    let writer = tokio::spawn(write_replies(wr, q.clone(), pool.protocol, stats));
    let mut drain = pool.drain.clone();
    let drained = read_requests(&mut rd, &q, &pool.topo, pool.protocol, &mut drain, buf).await;
    q.finish();
    let _ = writer.await;
    if drained {
        // Every reply owed has been written and the write side shut. Read (and drop) what the
        // client still sends until it closes too, so closing never resets the connection and
        // destroys replies it has not read yet.
        let mut sink = vec![0u8; 16 * 1024];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
    drop(pool.alive);
}

/// Parse and route until the client closes (false) or the pool drains (true).
async fn read_requests<R: AsyncRead + Unpin>(
    rd: &mut R,
    q: &Arc<Replies>,
    topo: &SharedTopology,
    protocol: Protocol,
    drain: &mut watch::Receiver<bool>,
    mut buf: BytesMut,
) -> bool {
    if *drain.borrow() {
        return true;
    }
    let mut session = router::RedisSession::default();
    let mut mc = router::MemcacheSession::default();
    let mut outbox = Outbox::default();
    // Parse again only once the buffer holds this many bytes.
    let mut need = 1;
    loop {
        if buf.len() >= need && !session.pinning.blocked() {
            let t = topo.load_full();
            // Set when the session ends after what is routed so far has been queued.
            let mut stop = false;
            loop {
                if !q.has_room() {
                    outbox.flush(&t.servers, &t.replicas).await;
                    if !q.room().await {
                        return false;
                    }
                }
                let slot = match protocol {
                    // The first byte tells a binary client (0x80) from a text one, for good.
                    Protocol::Memcache
                        if *mc
                            .binary
                            .get_or_insert_with(|| buf.first() == Some(&memcache::binary::REQUEST_MAGIC)) =>
                    {
                        match memcache::binary::parse_request(&buf) {
                            Ok(Parse::Complete(req)) => {
                                let frame = buf.split_to(req.len).freeze();
                                router::memcache_binary(&t, q, &mut outbox, frame, &req, &mut mc)
                            }
                            Ok(Parse::Incomplete(n)) => {
                                need = needed(n, buf.len());
                                break;
                            }
                            Err(e) => {
                                t.stats.request(crate::metrics::Class::Error);
                                if e.fatal {
                                    t.stats.client_err.fetch_add(1, Ordering::Relaxed);
                                }
                                let _ = buf.split_to(e.consumed.min(buf.len()));
                                Some(router::memcache_binary_error(&e))
                            }
                        }
                    }
                    Protocol::Memcache => match memcache::parse_request(&buf) {
                        Ok(Parse::Complete(req)) => {
                            let frame = buf.split_to(req.len).freeze();
                            router::memcache(&t, q, &mut outbox, frame, &req)
                        }
                        Ok(Parse::Incomplete(n)) => {
                            need = needed(n, buf.len());
                            break;
                        }
                        Err(e) => {
                            t.stats.request(crate::metrics::Class::Error);
                            if e.fatal {
                                t.stats.client_err.fetch_add(1, Ordering::Relaxed);
                            }
                            let _ = buf.split_to(e.consumed.min(buf.len()));
                            let reply = Bytes::from_static(e.reply.as_bytes());
                            Some(if e.fatal {
                                Slot::Close(reply)
                            } else {
                                Slot::Ready(reply)
                            })
                        }
                    },
                    Protocol::Redis => match redis::parse_request(&buf) {
                        Ok(Parse::Complete(req)) => {
                            let frame = buf.split_to(req.len).freeze();
                            if req.args.is_empty() {
                                None
                            } else {
                                let mut slot = router::redis(&t, q, &mut outbox, frame, &req, &mut session);
                                while let Slot::Barrier(frame) = slot {
                                    // Moving between shared and pinned connections: what was
                                    // sent before must be answered before this is sent.
                                    outbox.flush(&t.servers, &t.replicas).await;
                                    q.settled().await;
                                    slot = router::redis(&t, q, &mut outbox, frame, &req, &mut session);
                                }
                                Some(slot)
                            }
                        }
                        Ok(Parse::Incomplete(n)) => {
                            need = needed(n, buf.len());
                            break;
                        }
                        Err(e) => {
                            t.stats.request(crate::metrics::Class::Error);
                            t.stats.client_err.fetch_add(1, Ordering::Relaxed);
                            Some(Slot::Close(Bytes::from(e.reply())))
                        }
                    },
                    Protocol::Tcp => unreachable!("L4 pools forward bytes without sessions"),
                };
                match slot {
                    None | Some(Slot::Queued) | Some(Slot::Barrier(_)) => {}
                    Some(Slot::Ready(b)) => {
                        if !q.ready(b, false) {
                            stop = true;
                            break;
                        }
                    }
                    Some(Slot::Close(b)) => {
                        q.ready(b, true);
                        stop = true;
                        break;
                    }
                }
                if session.pinning.blocked() {
                    // A blocked client's next requests wait for its reply, as in Redis.
                    break;
                }
            }
            // Everything routed from this read goes out together, a batch per server.
            outbox.flush(&t.servers, &t.replicas).await;
            if stop {
                return false;
            }
        }
        let limits = topo.load();
        let (max_request, idle) = (limits.pool.max_request_bytes, limits.pool.client_idle_timeout);
        drop(limits);
        if need > max_request {
            // Refused at the header, before the payload is buffered.
            if mc.binary == Some(true) {
                let h = memcache::binary::Header::read(&buf);
                let e = memcache::binary::RequestError {
                    status: memcache::binary::status::TOO_LARGE,
                    opcode: h.opcode,
                    opaque: h.opaque,
                    consumed: buf.len(),
                    fatal: true,
                };
                q.ready(e.response(), true);
                return false;
            }
            let reply: &'static [u8] = match protocol {
                Protocol::Memcache => b"SERVER_ERROR object too large for cache\r\n",
                Protocol::Redis => b"-ERR Protocol error: request larger than max_request_bytes\r\n",
                Protocol::Tcp => b"",
            };
            q.ready(Bytes::from_static(reply), true);
            return false;
        }
        let want = need.saturating_sub(buf.len()).clamp(16 * 1024, 4 * 1024 * 1024);
        if buf.capacity() - buf.len() < want {
            buf.reserve(want);
        }
        let blocked = session.pinning.blocked();
        let settle = session.pinning.wants_settled();
        tokio::select! {
            // While blocked, read on only to see the client go (what it sends waits in `buf`).
            r = rd.read_buf(&mut buf), if !blocked || buf.len() < BLOCKED_READ_AHEAD => match r {
                // A blocked client that goes closes its pin (dropped with the session): the
                // server cannot pop an element for it then.
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            },
            _ = q.settled(), if settle => {
                let t = topo.load();
                session.pinning.settled(&t);
            }
            _ = q.gone() => return false,
            _ = drain.wait_for(|d| *d) => return true,
            _ = tokio::time::sleep(idle.unwrap_or_default()), if idle.is_some() => {
                if q.owed() == 0 {
                    tracing::debug!("closing an idle client");
                    return false;
                }
            }
        }
    }
}

/// Bytes read ahead from a client blocked on a command (as Redis buffers a blocked client's
/// input): beyond this legate stops reading until the reply comes.
const BLOCKED_READ_AHEAD: usize = 1024 * 1024;

fn needed(n: Need, have: usize) -> usize {
    match n {
        Need::Line => have + 1,
        Need::Bytes(b) => b.min(MAX_VALUE_BYTES + 64 * 1024),
    }
}

async fn write_replies<W: AsyncWrite + Unpin>(
    mut wr: W,
    q: Arc<Replies>,
    protocol: Protocol,
    stats: Arc<crate::metrics::PoolStats>,
) {
    let mut out: VecDeque<Bytes> = VecDeque::new();
    let mut ready: Vec<Entry> = Vec::new();
    let result: std::io::Result<()> = async {
        let mut pending_bytes = 0;
        'session: while q.take(&mut ready).await {
            if q.owed() > 0 {
                // A pipelining client: more of its replies are on their way. Let the tasks
                // delivering them run first, so they go out in one write rather than several.
                tokio::task::yield_now().await;
                q.take_now(&mut ready);
            }
            for entry in ready.drain(..) {
                let reply = match entry {
                    Entry::Ready(b) => b,
                    Entry::Close(b) => {
                        out.push_back(b);
                        break 'session;
                    }
                    Entry::One(r) => match r.expect("taken entries are complete") {
                        Ok(b) => b,
                        Err(e) => {
                            stats.forward_error.fetch_add(1, Ordering::Relaxed);
                            router::failure(protocol, &e)
                        }
                    },
                    Entry::Gather { parts, merge, .. } => {
                        let mut replies = Vec::with_capacity(parts.len());
                        let mut failed = None;
                        let mut answered = 0;
                        for r in parts {
                            match r.expect("taken entries are complete") {
                                Ok(b) => {
                                    answered += 1;
                                    replies.push(b);
                                }
                                Err(e) => {
                                    stats.forward_error.fetch_add(1, Ordering::Relaxed);
                                    failed = failed.or(Some(e));
                                    // Stands in for the failed shard: its keys read as misses.
                                    replies.push(Bytes::from_static(b"END\r\n"));
                                }
                            }
                        }
                        match failed {
                            // A multi-get answers the hits it has; the failed shard's keys miss.
                            Some(_) if merge.answers_partially() && answered > 0 => router::merge(&merge, &replies),
                            Some(e) => router::gather_failure(&merge, protocol, &e),
                            None => router::merge(&merge, &replies),
                        }
                    }
                };
                pending_bytes += reply.len();
                out.push_back(reply);
                if pending_bytes >= WRITE_BATCH_BYTES || out.len() >= 1024 {
                    write_all_vectored(&mut wr, &mut out).await?;
                    pending_bytes = 0;
                }
            }
            write_all_vectored(&mut wr, &mut out).await?;
            pending_bytes = 0;
        }
        write_all_vectored(&mut wr, &mut out).await?;
        wr.shutdown().await
    }
    .await;
    q.close();
    if let Err(e) = result {
        tracing::debug!(error = %e, "client write failed");
    }
}
