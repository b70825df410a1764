//! Connections held by one client each: a Redis transaction (WATCH / MULTI … EXEC), a blocking
//! command (BLPOP, XREAD BLOCK …), or pub/sub. DESIGN.md "Sessions: shared and pinned".
//!
//! A [`Pin`] is one connection to one server and the task that runs it, on the worker of the
//! session that asked for it. It never reconnects: a connection lost mid-transaction has lost
//! the server's WATCH and MULTI state, so the session sees the pin as dead and says so, rather
//! than running the rest of a transaction elsewhere. Its requests have no deadline (a blocking
//! command's own timeout is the server's to honour; `timeout` does not cut it short).
//!
//! Dropping a pin closes its connection at once, never drains it: a client that disconnects
//! while blocked must not leave a connection on which the server could still pop an element
//! for it. A session that ends its pinned state cleanly (EXEC, DISCARD, UNWATCH, the reply to a
//! blocking command) hands the pin back with [`Server::unpin`]; a few are kept per worker for
//! the next client, and once a worker has used one it keeps a spare connected, so the next
//! blocking command starts at once. Every pin, idle ones included, counts towards the server's
//! `max_pinned_connections`. When the server leaves the topology (a reload), its pins close.
//! A request pin asks `CLIENT ID` first (pipelined ahead of its first request), for
//! `CLIENT UNBLOCK` to name the connection while it is blocked.
//!
//! A pub/sub pin ([`Sink`]) has no requests to pair replies with: every frame the server sends
//! goes to the sink (the session's subscription state), and its loss is reported there. A raw
//! sink ([`Sink::raw`], a replica's SYNC) takes the server's bytes as they come, unframed, and
//! is read no further while it is [`Sink::full`]: the server holds the rest, under its own
//! output buffer limits, as it would for a slow replica of its own.

use super::{
    connect, connect_failed, read_replies, write_all_vectored, Health, Job, Pending, Reading, Server, Target,
    UpstreamError, BATCH,
};
use crate::protocol::redis;
use crate::upstream::queue::Queue;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};

/// Where a pub/sub pin's frames go.
pub trait Sink: Send + Sync + 'static {
    /// One whole frame (a message, a confirmation, a push) from the server `server_id`.
    fn frame(&self, server_id: u64, frame: Bytes);
    /// The connection to `server_id` could not be made or is gone.
    fn lost(&self, server_id: u64, why: String);
    /// The sink takes the server's bytes as they are read, not framed as replies (the
    /// replication stream after SYNC: an RDB payload with no CRLF after it, then commands).
    fn raw(&self) -> bool {
        false
    }
    /// A raw sink holds all it should: nothing more is read from the server until it has
    /// drained.
    fn full(&self) -> bool {
        false
    }
}

/// How often a raw pin looks again at a sink that was full.
const RAW_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// Idle pins kept per worker and server for the next client.
const IDLE_KEPT: usize = 8;

/// One client's own connection to one server.
#[derive(Debug)]
pub struct Pin {
    /// The [`Server::id`] it connects to.
    pub server_id: u64,
    resp3: bool,
    /// A stream (pub/sub) pin: never handed back for reuse.
    stream: bool,
    jobs: mpsc::UnboundedSender<Job>,
    dead: Arc<AtomicBool>,
    task: tokio::task::AbortHandle,
    /// The server's count of pins, for `max_pinned_connections`.
    count: Arc<AtomicI64>,
    /// The server's `CLIENT ID` for this connection (0 until known): what `CLIENT UNBLOCK`
    /// names there.
    conn_id: Arc<AtomicU64>,
}

impl Pin {
    /// Queue a request; its reply (or why none came) goes to `job.done`. A dead pin answers
    /// "connection lost".
    pub fn send(&self, job: Job) {
        let _ = self.jobs.send(job);
    }

    /// The connection failed, closed, or its server left the topology: nothing sent on it
    /// will be answered.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    /// The server's id of this connection (`CLIENT ID` there), shared with whoever may need it
    /// while the pin is busy; 0 while unknown.
    pub fn conn_id(&self) -> Arc<AtomicU64> {
        self.conn_id.clone()
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.task.abort();
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Aborts a task when dropped (the reader of an aborted pin must not keep its socket open).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a pin could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinRefused(pub String);

impl Server {
    /// A connection of this client's own to this server, on the calling worker: an idle one
    /// when the worker keeps one (request/reply pins only), else a new one (connected in the
    /// background: requests sent meanwhile wait). `resp3`: the connection says `HELLO 3`.
    /// `sink`: a pub/sub pin, whose frames all go there.
    ///
    /// # Errors
    /// The server already has `max_pinned_connections`.
    pub fn pin(&self, resp3: bool, sink: Option<Arc<dyn Sink>>) -> Result<Pin, PinRefused> {
        let request = sink.is_none();
        let idle = if request { self.idle_pin(resp3) } else { None };
        let pin = match idle {
            Some(pin) => pin,
            None => self.new_pin(resp3, sink)?,
        };
        if request {
            // Keep one spare connected for the next client of this worker: its blocking command
            // then starts at once instead of after a connect, and so reaches the server before
            // what other clients send after it.
            self.spare(resp3);
        }
        Ok(pin)
    }

    /// A new pin, within `max_pinned_connections` (closing an idle one to make room).
    fn new_pin(&self, resp3: bool, sink: Option<Arc<dyn Sink>>) -> Result<Pin, PinRefused> {
        let count = self.pinned.clone();
        if count.fetch_add(1, Ordering::Relaxed) >= self.target.max_pinned as i64 {
            count.fetch_sub(1, Ordering::Relaxed);
        } else {
            return Ok(self.spawn_pin(resp3, sink, count));
        }
        // At the cap: close an idle pin (of any worker) to make room.
        for w in &self.conns {
            let idle = w.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            if let Some(p) = idle {
                drop(p);
                if count.fetch_add(1, Ordering::Relaxed) < self.target.max_pinned as i64 {
                    return Ok(self.spawn_pin(resp3, sink, count));
                }
                count.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.stats.pinned_refused.fetch_add(1, Ordering::Relaxed);
        Err(PinRefused(format!(
            "{} has max_pinned_connections ({}) connections held by clients (transactions, blocking commands, pub/sub); try again later",
            self.target.label, self.target.max_pinned
        )))
    }

    /// An idle request pin of the calling worker.
    fn idle_pin(&self, resp3: bool) -> Option<Pin> {
        let w = self.conns.get(crate::workers::current())?;
        let mut idle = w.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(i) = idle.iter().position(|p| p.resp3 == resp3) {
            let p = idle.swap_remove(i);
            if !p.is_dead() {
                return Some(p);
            }
        }
        None
    }

    /// Start a spare request pin for the calling worker unless it has an idle one or the
    /// server is at `max_pinned_connections` (where an idle pin is closed to make room anyway).
    fn spare(&self, resp3: bool) {
        let Some(w) = self.conns.get(crate::workers::current()) else {
            return;
        };
        let mut idle = w.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.iter().any(|p| p.resp3 == resp3 && !p.is_dead()) {
            return;
        }
        let count = self.pinned.clone();
        if count.fetch_add(1, Ordering::Relaxed) >= self.target.max_pinned as i64 {
            count.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        idle.push(self.spawn_pin(resp3, None, count));
    }

    /// Start a new pin's connection task on the calling worker; `count` already counts it.
    fn spawn_pin(&self, resp3: bool, sink: Option<Arc<dyn Sink>>, count: Arc<AtomicI64>) -> Pin {
        let (tx, rx) = mpsc::unbounded_channel();
        let dead = Arc::new(AtomicBool::new(false));
        let conn_id = Arc::new(AtomicU64::new(0));
        let stream = sink.is_some();
        let task = tokio::spawn(run_pin(
            self.target.clone(),
            resp3,
            self.health.clone(),
            rx,
            self.retired.subscribe(),
            dead.clone(),
            sink.map(|s| (s, self.id)),
            self.stats.clone(),
            conn_id.clone(),
        ));
        Pin {
            server_id: self.id,
            resp3,
            stream,
            jobs: tx,
            dead,
            task: task.abort_handle(),
            count,
            conn_id,
        }
    }

    /// Take back a pin whose client left its pinned state cleanly (nothing of that state is
    /// left on the connection): kept for the next client of this worker, or closed.
    pub fn unpin(&self, pin: Pin) {
        if pin.stream || pin.is_dead() || pin.server_id != self.id {
            return;
        }
        if let Some(w) = self.conns.get(crate::workers::current()) {
            let mut idle = w.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < IDLE_KEPT {
                idle.push(pin);
            }
        }
    }
}

/// Counts a pin's live connection in `legate_server_pinned_connections` while it exists.
struct Connected(Arc<super::ServerStats>);

impl Connected {
    fn new(stats: Arc<super::ServerStats>) -> Connected {
        stats.pinned_connections.fetch_add(1, Ordering::Relaxed);
        Connected(stats)
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.pinned_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answer every job queued (and any sent later) with `err`, once the pin is dead.
fn fail_queued(rx: &mut mpsc::UnboundedReceiver<Job>, err: &UpstreamError) {
    rx.close();
    while let Ok(job) = rx.try_recv() {
        if let Some(done) = job.done {
            done.send(Err(err.clone()));
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_pin(
    t: Target,
    resp3: bool,
    health: Arc<Health>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    mut retired: watch::Receiver<bool>,
    dead: Arc<AtomicBool>,
    sink: Option<(Arc<dyn Sink>, u64)>,
    stats: Arc<super::ServerStats>,
    conn_id: Arc<AtomicU64>,
) {
    let _live = Connected::new(stats.clone());
    let lost = UpstreamError::Lost {
        server: t.label.clone(),
    };
    let connected = tokio::select! {
        c = connect(&t, resp3) => c,
        _ = retired.wait_for(|r| *r) => {
            dead.store(true, Ordering::Relaxed);
            fail_queued(&mut rx, &lost);
            if let Some((sink, id)) = &sink {
                sink.lost(*id, format!("{} left the pool", t.label));
            }
            return;
        }
    };
    let mut stream = match connected {
        Ok(s) => s,
        Err(f) => {
            connect_failed(&health, &t.label, &f);
            dead.store(true, Ordering::Relaxed);
            let err = UpstreamError::Connect {
                server: t.label.clone(),
                reason: f.reason.clone(),
            };
            fail_queued(&mut rx, &err);
            if let Some((sink, id)) = &sink {
                sink.lost(*id, err.to_string());
            }
            return;
        }
    };
    health.success();
    if sink.is_none() {
        // The server-side id, so that CLIENT UNBLOCK can name this connection while it is
        // blocked. Read before any request is sent: once a request may block the connection,
        // its id must be known (0 if refused: CLIENT UNBLOCK then answers 0).
        use tokio::io::AsyncWriteExt;
        let asked = async {
            stream.write_all(b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n").await.ok()?;
            Some(client_id(&mut stream).await)
        };
        match tokio::time::timeout(t.connect_timeout, asked).await {
            Ok(Some(id)) => conn_id.store(id.unwrap_or(0), Ordering::Relaxed),
            _ => {
                dead.store(true, Ordering::Relaxed);
                fail_queued(&mut rx, &lost);
                return;
            }
        }
    }
    let (rd, mut wr) = stream.into_split();
    let mut batch: Vec<Job> = Vec::with_capacity(16);
    let mut out: VecDeque<Bytes> = VecDeque::new();
    match sink {
        None => {
            let pending: Arc<Queue<Pending>> = Arc::new(Queue::new(usize::MAX));
            let ended = Arc::new(std::sync::Mutex::new(None));
            let reading = Reading {
                label: t.label.clone(),
                health: health.clone(),
                timeouts: false,
                max_reply: t.max_reply,
                ended,
                // A pinned session's replies are the client's; a redirection is answered with
                // an error saying so, and refreshes a cluster pool's slot table.
                redirect: t.redirect.clone(),
                addr: t.addr.clone(),
                lane: super::Lane::Default,
            };
            let replies = pending.clone();
            let _reader = AbortOnDrop(tokio::spawn(read_replies(rd, replies, reading)));
            let mut handed: Vec<Pending> = Vec::new();
            loop {
                tokio::select! {
                    n = rx.recv_many(&mut batch, BATCH) => if n == 0 { break },
                    _ = pending.closed() => break,
                    _ = retired.wait_for(|r| *r) => break,
                }
                let sent = Instant::now();
                let (mut bytes, n) = (0u64, batch.len());
                for job in batch.drain(..) {
                    bytes += job.parts.iter().map(|p| p.len() as u64).sum::<u64>();
                    handed.push(Pending {
                        _script: super::ScriptRunning::of(&job.framing, job.done.as_ref(), &stats),
                        framing: job.framing,
                        done: job.done,
                        deadline: None,
                        sent,
                        parts: None,
                    });
                    out.extend(job.parts);
                }
                let hot = stats.hot();
                hot.requests.fetch_add(n as u64, Ordering::Relaxed);
                hot.request_bytes.fetch_add(bytes, Ordering::Relaxed);
                hot.in_flight.fetch_add(n as i64, Ordering::Relaxed);
                if !pending.push(&mut handed).await || write_all_vectored(&mut wr, &mut out).await.is_err() {
                    break;
                }
            }
            dead.store(true, Ordering::Relaxed);
            fail_queued(&mut rx, &lost);
            // The reader (aborted as this returns) answers what it still holds "lost".
            pending.close();
        }
        Some((sink, id)) => {
            let reader_sink = sink.clone();
            let label = t.label.clone();
            let max = t.max_reply;
            let mut reader = AbortOnDrop(tokio::spawn(async move {
                let why = if reader_sink.raw() {
                    read_raw(rd, &*reader_sink, id).await
                } else {
                    read_stream(rd, &*reader_sink, id, max).await
                };
                if let Some(suppressed) = crate::log_limit::allow(&format!("pubsub {label} {why}")) {
                    tracing::info!(server = %label, %why, suppressed, "subscribed or replica connection ended");
                }
                reader_sink.lost(id, format!("connection to {label} lost ({why})"));
            }));
            loop {
                tokio::select! {
                    n = rx.recv_many(&mut batch, BATCH) => if n == 0 { break },
                    _ = &mut reader.0 => break,
                    _ = retired.wait_for(|r| *r) => {
                        sink.lost(id, format!("{} left the pool", t.label));
                        break;
                    }
                }
                for job in batch.drain(..) {
                    out.extend(job.parts);
                }
                if write_all_vectored(&mut wr, &mut out).await.is_err() {
                    break;
                }
            }
            dead.store(true, Ordering::Relaxed);
        }
    }
}

/// Read the reply to `CLIENT ID` (one line), byte by byte so that nothing after it is taken
/// from the replies that follow: the id, or `None` when the server refused it (an ACL may) or
/// the line is not one.
/// The reply to the CLIENT ID sent on a new connection (nothing else was sent, so nothing
/// else can arrive: a read may take whatever comes); `None` when it is not an integer.
async fn client_id<R: AsyncRead + Unpin>(rd: &mut R) -> Option<u64> {
    let mut line = Vec::with_capacity(24);
    while !line.ends_with(b"\r\n") {
        if line.len() >= 4096 {
            return None;
        }
        let mut b = [0u8; 64];
        let n = rd.read(&mut b).await.ok()?;
        if n == 0 {
            return None;
        }
        line.extend_from_slice(&b[..n]);
    }
    line.strip_prefix(b":")
        .and_then(|r| r.strip_suffix(b"\r\n"))
        .and_then(crate::protocol::parse_u64)
}

/// Frame every reply the server sends and hand it to `sink`, until the connection ends; why.
async fn read_stream<R: AsyncRead + Unpin>(mut rd: R, sink: &dyn Sink, id: u64, max_reply: usize) -> String {
    let mut buf = BytesMut::with_capacity(4 * 1024);
    let mut scan = redis::ReplyScan::with_limit(max_reply);
    loop {
        loop {
            match redis::scan_reply(&buf, &mut scan) {
                Ok(Some(n)) => sink.frame(id, buf.split_to(n).freeze()),
                Ok(None) => break,
                Err(e) => return format!("bad reply: {e}"),
            }
        }
        let need = scan.needs().saturating_sub(buf.len()).min(4 * 1024 * 1024);
        if buf.capacity() - buf.len() < need.max(1024) {
            buf.reserve(need.max(16 * 1024));
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => return "closed by the server".into(),
            Err(e) => return e.to_string(),
            Ok(_) => {}
        }
    }
}

/// Hand the server's bytes to a raw `sink` as they are read, until the connection ends; why.
/// Memory stays bounded: while the sink is full nothing is read, and the server buffers.
async fn read_raw<R: AsyncRead + Unpin>(mut rd: R, sink: &dyn Sink, id: u64) -> String {
    let mut buf = BytesMut::new();
    loop {
        while sink.full() {
            tokio::time::sleep(RAW_PAUSE).await;
        }
        if buf.capacity() < 4 * 1024 {
            buf = BytesMut::with_capacity(64 * 1024);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => return "closed by the server".into(),
            Err(e) => return e.to_string(),
            Ok(_) => sink.frame(id, buf.split().freeze()),
        }
    }
}

/// Unique ids for [`Server`]s, so a pin knows its server across reloads.
pub(super) static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);
