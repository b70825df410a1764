//! Pipelined connections to one backend server.
//!
//! Each connection is a pair of tasks. The writer takes jobs from a channel in batches, hands
//! each job's completion to the reader *before* writing its bytes (so the reader always knows
//! what the next reply belongs to), and writes the whole batch with vectored writes. The reader
//! frames replies with the protocol's scanner and completes jobs in order with `Bytes` slices
//! of its buffer. Many clients share the connection; each gets its own replies back through a
//! oneshot channel, which is how replies return in each client's order.

use crate::config::{Addr, PoolConfig, Protocol, ServerConfig};
use crate::protocol::{memcache, redis};
use bytes::{Buf, Bytes, BytesMut};
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// How the reply to a job is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Memcache(memcache::ReplyKind),
    Redis,
    /// The server sends nothing back (memcache `noreply`).
    None,
}

/// Why a job got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {server}: {reason}")]
    Connect { server: String, reason: String },
    #[error("connection to {server} lost")]
    Lost { server: String },
}

/// A server's reply (whole, as the server sent it) or why there is none.
pub type Reply = Result<Bytes, UpstreamError>;

/// One request for a server: its bytes and where its reply goes.
#[derive(Debug)]
pub struct Job {
    pub parts: SmallVec<[Bytes; 2]>,
    pub framing: Framing,
    /// `None` when nobody waits for the reply.
    pub done: Option<oneshot::Sender<Reply>>,
}

impl Job {
    /// A job whose reply is awaited through the returned receiver.
    pub fn new(parts: SmallVec<[Bytes; 2]>, framing: Framing) -> (Job, oneshot::Receiver<Reply>) {
        let (tx, rx) = oneshot::channel();
        (
            Job {
                parts,
                framing,
                done: Some(tx),
            },
            rx,
        )
    }
}

/// Jobs queued per connection before senders wait: bounds memory under overload.
const QUEUE_DEPTH: usize = 16 * 1024;
/// Jobs written per batch.
const BATCH: usize = 512;

/// The connections to one server of a pool.
#[derive(Debug)]
pub struct Server {
    pub name: String,
    pub addr: Addr,
    /// What the connections were made with: a reload keeps them only when this is unchanged.
    target: Target,
    conns: Vec<mpsc::Sender<Job>>,
    next: AtomicUsize,
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
    redis_db: u32,
    connect_timeout: Duration,
    tcpkeepalive: bool,
    connections: u32,
    preconnect: bool,
}

fn target(pool: &PoolConfig, server: &ServerConfig) -> Target {
    Target {
        label: server.addr.to_string(),
        addr: server.addr.clone(),
        protocol: pool.protocol,
        redis_auth: pool.redis_auth.clone(),
        redis_db: pool.redis_db,
        connect_timeout: pool.timeout.unwrap_or(Duration::from_secs(3)),
        tcpkeepalive: pool.tcpkeepalive,
        connections: pool.server_connections.max(1),
        preconnect: pool.preconnect,
    }
}

impl Server {
    /// Start `server_connections` connection tasks for `server` (connected lazily on first use,
    /// or at once with `preconnect`). Must be called inside a Tokio runtime. The tasks end when
    /// the returned value is dropped.
    pub fn start(pool: &PoolConfig, server: &ServerConfig) -> Arc<Server> {
        let target = target(pool, server);
        let conns = (0..target.connections)
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
                tokio::spawn(run_connection(target.clone(), rx, target.preconnect));
                tx
            })
            .collect();
        Arc::new(Server {
            name: server.name.clone(),
            addr: server.addr.clone(),
            target,
            conns,
            next: AtomicUsize::new(0),
        })
    }

    /// True when this server's connections are what `server` in `pool` would open: a reload
    /// then keeps them.
    pub fn same_connections(&self, pool: &PoolConfig, server: &ServerConfig) -> bool {
        self.target == target(pool, server)
    }

    /// Queue a job on one of the server's connections (round robin). When the connection task
    /// is gone the job is dropped, and its receiver reports the connection lost.
    pub async fn send(&self, job: Job) {
        let i = if self.conns.len() == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len()
        };
        let _ = self.conns[i].send(job).await;
    }
}

/// A boxed byte stream, so TCP and unix sockets share one code path.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn connect(t: &Target) -> Result<Box<dyn Stream>, String> {
    let connect = async {
        let s: Box<dyn Stream> = match &t.addr {
            Addr::Tcp { host, port } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|e| e.to_string())?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                if t.tcpkeepalive {
                    let _ = socket2::SockRef::from(&s).set_keepalive(true);
                }
                Box::new(s)
            }
            Addr::Unix { path, .. } => {
                Box::new(tokio::net::UnixStream::connect(path).await.map_err(|e| e.to_string())?)
            }
        };
        Ok::<_, String>(s)
    };
    let mut s = tokio::time::timeout(t.connect_timeout, connect)
        .await
        .map_err(|_| "connect timed out".to_string())??;
    if t.protocol == Protocol::Redis {
        let mut hello = BytesMut::new();
        let mut expected = 0;
        if let Some(pw) = &t.redis_auth {
            redis::encode_command(&mut hello, [&b"AUTH"[..], pw.as_bytes()].into_iter());
            expected += 1;
        }
        if t.redis_db != 0 {
            let db = t.redis_db.to_string();
            redis::encode_command(&mut hello, [&b"SELECT"[..], db.as_bytes()].into_iter());
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
                            if !reply.starts_with(b"+OK") {
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

/// A job the writer has sent and the reader must complete.
struct Pending {
    framing: Framing,
    done: oneshot::Sender<Reply>,
}

async fn run_connection(t: Target, mut rx: mpsc::Receiver<Job>, preconnect: bool) {
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH);
    let mut first = preconnect;
    loop {
        if !first && rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        first = false;
        let stream = match connect(&t).await {
            Ok(s) => s,
            Err(reason) => {
                tracing::warn!(server = %t.label, %reason, "cannot connect");
                for job in batch.drain(..) {
                    if let Some(done) = job.done {
                        let _ = done.send(Err(UpstreamError::Connect {
                            server: t.label.clone(),
                            reason: reason.clone(),
                        }));
                    }
                }
                continue;
            }
        };
        tracing::debug!(server = %t.label, "connected");
        let (rd, mut wr) = tokio::io::split(stream);
        let (ptx, prx) = mpsc::unbounded_channel();
        let mut reader = tokio::spawn(read_replies(rd, prx, t.label.clone()));
        let ended = write_requests(&mut wr, &mut rx, &mut batch, &ptx).await;
        batch.clear();
        if ended {
            // The server left the topology: let the reader collect the replies still owed.
            drop(ptx);
            if tokio::time::timeout(DRAIN, &mut reader).await.is_err() {
                reader.abort();
            }
            return;
        }
        reader.abort();
        tracing::warn!(server = %t.label, "connection lost; reconnecting on next request");
    }
}

/// Write batches until the channel closes (returns true) or the connection fails (false).
async fn write_requests<W: AsyncWrite + Unpin>(
    wr: &mut W,
    rx: &mut mpsc::Receiver<Job>,
    batch: &mut Vec<Job>,
    ptx: &mpsc::UnboundedSender<Pending>,
) -> bool {
    let mut out: VecDeque<Bytes> = VecDeque::new();
    loop {
        for job in batch.drain(..) {
            match (job.framing, job.done) {
                (Framing::None, Some(done)) => {
                    let _ = done.send(Ok(Bytes::new()));
                }
                (framing, Some(done)) => {
                    if ptx.send(Pending { framing, done }).is_err() {
                        return false;
                    }
                }
                (_, None) => {}
            }
            out.extend(job.parts);
        }
        if write_all_vectored(wr, &mut out).await.is_err() {
            return false;
        }
        tokio::select! {
            n = rx.recv_many(batch, BATCH) => if n == 0 { return true },
            _ = ptx.closed() => return false,
        }
    }
}

async fn read_replies<R: AsyncRead + Unpin>(mut rd: R, mut prx: mpsc::UnboundedReceiver<Pending>, label: String) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut queue: VecDeque<Pending> = VecDeque::new();
    let mut mscan = memcache::ReplyScan::default();
    let mut rscan = redis::ReplyScan::default();
    loop {
        if queue.is_empty() && buf.is_empty() {
            // Idle: wait for the next request or a reply, and end once no more can come.
            tokio::select! {
                biased;
                p = prx.recv() => match p {
                    Some(p) => {
                        queue.push_back(p);
                        continue;
                    }
                    None => return,
                },
                r = rd.read_buf(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
            }
        }
        while !buf.is_empty() {
            if queue.is_empty() {
                match prx.recv().await {
                    Some(p) => queue.push_back(p),
                    None => return,
                }
            }
            while let Ok(p) = prx.try_recv() {
                queue.push_back(p);
            }
            let front = &queue[0];
            let scanned = match front.framing {
                Framing::Memcache(kind) => memcache::scan_reply(&buf, kind, &mut mscan).map_err(|e| e.to_string()),
                Framing::Redis => redis::scan_reply(&buf, &mut rscan).map_err(|e| e.to_string()),
                Framing::None => Err("reply to a request that expects none".into()),
            };
            match scanned {
                Ok(Some(n)) => {
                    let mut reply = buf.split_to(n).freeze();
                    let p = queue.pop_front().expect("queue is not empty");
                    if p.framing == Framing::Memcache(memcache::ReplyKind::MetaQuiet) {
                        // Drop the MN that answers the mn legate appended.
                        reply.truncate(reply.len().saturating_sub(4));
                    }
                    let _ = p.done.send(Ok(reply));
                }
                Ok(None) => break,
                Err(reason) => {
                    tracing::warn!(server = %label, %reason, "bad reply; closing the connection");
                    return;
                }
            }
        }
        if queue.is_empty() && buf.is_empty() {
            continue;
        }
        if buf.capacity() - buf.len() < 8 * 1024 {
            buf.reserve(64 * 1024);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
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
        let n = {
            let slices: SmallVec<[IoSlice<'_>; 64]> = out
                .iter()
                .take(64)
                .filter(|b| !b.is_empty())
                .map(|b| IoSlice::new(b))
                .collect();
            w.write_vectored(&slices).await?
        };
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
