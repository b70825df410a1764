//! L4 pools (`protocol: tcp`): each client connection is forwarded, byte for byte and in both
//! directions, to one server of the pool, chosen when the client connects.
//!
//! Nothing is parsed, so any protocol gets the ambassador's balancing, failover, ejection, TLS
//! (to the servers, on the listener, or both) and metrics.

use crate::config::Balance;
use crate::metrics::ServerStats;
use crate::net::Stream;
use crate::server::PoolHandle;
use crate::topology::Topology;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes read per direction at a time.
const BUF: usize = 8 * 1024;
/// How long a connection of a stopping pool may go on before it is closed.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

/// The servers to try for a client, best first: the balancing choice, then every other live
/// server in pool order (ejected servers only when no server is live).
fn candidates(t: &Topology, peer: Option<IpAddr>) -> Vec<usize> {
    let mut live: Vec<usize> = (0..t.servers.len()).filter(|&i| !t.servers[i].is_ejected()).collect();
    if live.is_empty() {
        live = (0..t.servers.len()).collect();
    }
    if live.is_empty() {
        return live;
    }
    let turn = || t.next.fetch_add(1, Ordering::Relaxed);
    let first = match t.pool.balance {
        Balance::Ring => {
            let key = peer.map(|ip| ip.to_string()).unwrap_or_default();
            t.server_for(key.as_bytes())
                .and_then(|s| live.iter().position(|&i| i == s))
                .unwrap_or(0)
        }
        Balance::RoundRobin => turn() % live.len(),
        Balance::LeastConnections => {
            // Ties go round robin, so an idle pool still spreads its clients.
            let start = turn();
            (0..live.len())
                .map(|k| (start + k) % live.len())
                .min_by_key(|&p| t.servers[live[p]].stats.server_connections.load(Ordering::Relaxed))
                .unwrap_or(0)
        }
    };
    live.rotate_left(first);
    live
}

/// Open a connection to the pool's chosen server (trying the next on failure) and forward
/// until either side closes.
pub async fn session(client: Stream, peer: Option<IpAddr>, pool: PoolHandle) {
    let topo = pool.topo.load_full();
    let mut chosen = None;
    for i in candidates(&topo, peer) {
        if let Ok(upstream) = topo.servers[i].open().await {
            chosen = Some((topo.servers[i].clone(), upstream));
            break;
        }
    }
    drop(topo);
    let Some((server, upstream)) = chosen else {
        tracing::warn!(client = ?peer, "no server of the L4 pool could be reached; closing the client");
        return;
    };
    let stats = server.stats.clone();
    drop(server);
    stats.server_connections.fetch_add(1, Ordering::Relaxed);
    let mut drain = pool.drain.clone();
    tokio::select! {
        _ = forward(client, upstream, &stats) => {}
        _ = async {
            let _ = drain.wait_for(|d| *d).await;
            tokio::time::sleep(DRAIN_GRACE).await;
        } => {}
    }
    stats.server_connections.fetch_sub(1, Ordering::Relaxed);
}

/// Both directions at once. A side that closes cleanly has its close passed on (the other
/// direction goes on: half-close); an error on either side ends both.
async fn forward(client: Stream, server: Stream, stats: &ServerStats) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let _ = tokio::try_join!(
        // Counted on this worker's counters: the connection's task never leaves its worker.
        pump(&mut cr, &mut sw, &stats.hot().request_bytes),
        pump(&mut sr, &mut cw, &stats.hot().response_bytes),
    );
}

async fn pump<R, W>(r: &mut R, w: &mut W, bytes: &AtomicU64) -> std::io::Result<()>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}
