//! legate-bench: a load generator for memcache and Redis that checks every reply it gets.
//!
//! Each connection sends `--pipeline` requests at a time and reads their replies; every reply is
//! compared with the exact bytes the request must produce (the value written for that key, or
//! the fixed status line), so a proxy that answers fast but wrong shows up as errors, not speed.
//! Latency is the round trip of a pipeline batch, recorded once per request in it.

use clap::Parser;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "legate-bench",
    version,
    about = "Load generator for memcache and Redis that checks every reply"
)]
struct Args {
    /// redis or memcache.
    #[arg(long, default_value = "redis")]
    protocol: String,
    /// Server or proxy address.
    #[arg(long, default_value = "127.0.0.1:22122")]
    addr: String,
    /// Concurrent connections.
    #[arg(short, long, default_value_t = 50)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(short = 'P', long, default_value_t = 1)]
    pipeline: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 32)]
    value_size: usize,
    /// GETs per SET, as `gets:sets` (e.g. 10:1; 0:1 is SET only).
    #[arg(long, default_value = "1:1")]
    ratio: String,
    /// Keys per multi-get (memcache `get k1 k2 ...`, Redis MGET); 0 sends single-key GETs.
    #[arg(long, default_value_t = 0)]
    mget: usize,
    /// Total requests (whichever of --requests and --duration ends first).
    #[arg(short = 'n', long, default_value_t = 200_000)]
    requests: u64,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Write every key once before measuring, so every GET must hit.
    #[arg(long, default_value_t = true)]
    prefill: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    Redis,
    Memcache,
}

fn value_for(key: u64, size: usize) -> Vec<u8> {
    let seed = format!("{key:x}-");
    seed.bytes().cycle().take(size).collect()
}

fn key_name(key: u64) -> String {
    format!("bench:{key}")
}

/// One request and the exact reply it must get.
struct Req {
    bytes: Vec<u8>,
    want: Vec<u8>,
}

fn set_req(p: Proto, key: u64, size: usize) -> Req {
    let k = key_name(key);
    let v = value_for(key, size);
    match p {
        Proto::Redis => {
            let mut b = format!("*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n", k.len(), v.len()).into_bytes();
            b.extend(&v);
            b.extend(b"\r\n");
            Req {
                bytes: b,
                want: b"+OK\r\n".to_vec(),
            }
        }
        Proto::Memcache => {
            let mut b = format!("set {k} 0 0 {}\r\n", v.len()).into_bytes();
            b.extend(&v);
            b.extend(b"\r\n");
            Req {
                bytes: b,
                want: b"STORED\r\n".to_vec(),
            }
        }
    }
}

fn get_req(p: Proto, keys: &[u64], size: usize, multi: bool) -> Req {
    let names: Vec<String> = keys.iter().map(|&k| key_name(k)).collect();
    match p {
        Proto::Redis => {
            let cmd = if multi { "MGET" } else { "GET" };
            let mut b = format!("*{}\r\n${}\r\n{cmd}\r\n", names.len() + 1, cmd.len()).into_bytes();
            let mut want = if multi {
                format!("*{}\r\n", names.len()).into_bytes()
            } else {
                Vec::new()
            };
            for (n, &k) in names.iter().zip(keys) {
                b.extend(format!("${}\r\n{n}\r\n", n.len()).as_bytes());
                want.extend(format!("${size}\r\n").as_bytes());
                want.extend(value_for(k, size));
                want.extend(b"\r\n");
            }
            Req { bytes: b, want }
        }
        Proto::Memcache => {
            let b = format!("get {}\r\n", names.join(" ")).into_bytes();
            let mut want = Vec::new();
            for (n, &k) in names.iter().zip(keys) {
                want.extend(format!("VALUE {n} 0 {size}\r\n").as_bytes());
                want.extend(value_for(k, size));
                want.extend(b"\r\n");
            }
            want.extend(b"END\r\n");
            Req { bytes: b, want }
        }
    }
}

struct Shared {
    sent: AtomicU64,
    done: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

/// A small xorshift generator per connection (no shared state, no locks).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn connection(id: usize, args: Args, p: Proto, shared: Arc<Shared>) -> std::io::Result<Histogram<u64>> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let stream = TcpStream::connect(&args.addr).await?;
    stream.set_nodelay(true)?;
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(256 * 1024, rd);
    let (gets, sets) = args
        .ratio
        .split_once(':')
        .and_then(|(g, s)| Some((g.parse::<u64>().ok()?, s.parse::<u64>().ok()?)))
        .unwrap_or((1, 1));
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((id as u64 + 1) * 0x2545_F491));
    let mut out = Vec::new();
    let mut wants: Vec<Vec<u8>> = Vec::with_capacity(args.pipeline);
    let mut got = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let claimed = shared.sent.fetch_add(args.pipeline as u64, Ordering::Relaxed);
        if claimed >= args.requests {
            break;
        }
        let batch = (args.requests - claimed).min(args.pipeline as u64) as usize;
        out.clear();
        wants.clear();
        for _ in 0..batch {
            let is_set = gets + sets > 0 && rng.next() % (gets + sets) < sets;
            let req = if is_set {
                set_req(p, rng.next() % args.keys, args.value_size)
            } else if args.mget > 0 {
                let keys: Vec<u64> = (0..args.mget).map(|_| rng.next() % args.keys).collect();
                get_req(p, &keys, args.value_size, true)
            } else {
                get_req(p, &[rng.next() % args.keys], args.value_size, false)
            };
            out.extend(&req.bytes);
            wants.push(req.want);
        }
        let start = Instant::now();
        wr.write_all(&out).await?;
        for want in &wants {
            got.resize(want.len(), 0);
            rd.read_exact(&mut got).await?;
            if got != *want {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                // The stream is out of step after a wrong reply: stop this connection.
                return Ok(hist);
            }
        }
        let us = start.elapsed().as_micros().max(1) as u64;
        hist.record_n(us, batch as u64).ok();
        shared.done.fetch_add(batch as u64, Ordering::Relaxed);
    }
    Ok(hist)
}

async fn prefill(args: &Args, p: Proto) -> std::io::Result<()> {
    let stream = TcpStream::connect(&args.addr).await?;
    stream.set_nodelay(true)?;
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    for chunk in (0..args.keys).collect::<Vec<_>>().chunks(256) {
        let reqs: Vec<Req> = chunk.iter().map(|&k| set_req(p, k, args.value_size)).collect();
        let bytes: Vec<u8> = reqs.iter().flat_map(|r| r.bytes.clone()).collect();
        wr.write_all(&bytes).await?;
        for r in &reqs {
            let mut got = vec![0; r.want.len()];
            rd.read_exact(&mut got).await?;
            if got != r.want {
                return Err(std::io::Error::other(format!(
                    "prefill: unexpected reply {:?}",
                    String::from_utf8_lossy(&got)
                )));
            }
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let p = match args.protocol.as_str() {
        "redis" => Proto::Redis,
        "memcache" | "memcached" => Proto::Memcache,
        other => {
            eprintln!("legate-bench: unknown protocol {other}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        if args.prefill {
            if let Err(e) = prefill(&args, p).await {
                eprintln!("legate-bench: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
        let shared = Arc::new(Shared {
            sent: AtomicU64::new(0),
            done: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let bar = if args.quiet || args.json {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(args.requests)
        };
        let start = Instant::now();
        let tasks: Vec<_> = (0..args.connections)
            .map(|i| tokio::spawn(connection(i, args.clone(), p, shared.clone())))
            .collect();
        let deadline = start + Duration::from_secs_f64(args.duration);
        while !tasks.iter().all(|t| t.is_finished()) {
            bar.set_position(shared.done.load(Ordering::Relaxed));
            if Instant::now() >= deadline {
                shared.stop.store(true, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        let mut failed = 0;
        for t in tasks {
            match t.await {
                Ok(Ok(h)) => hist.add(h).ok().map(|_| ()).unwrap_or(()),
                _ => failed += 1,
            }
        }
        bar.finish_and_clear();
        let secs = start.elapsed().as_secs_f64();
        let done = shared.done.load(Ordering::Relaxed);
        let errors = shared.errors.load(Ordering::Relaxed) + failed;
        let q = |x: f64| hist.value_at_quantile(x) as f64 / 1000.0;
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "protocol": args.protocol, "addr": args.addr, "connections": args.connections,
                    "pipeline": args.pipeline, "value_size": args.value_size, "ratio": args.ratio, "mget": args.mget,
                    "requests": done, "errors": errors, "seconds": secs, "ops_per_sec": done as f64 / secs,
                    "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "p999_ms": q(0.999),
                    "max_ms": hist.max() as f64 / 1000.0,
                })
            );
        } else {
            println!(
                "{done} requests in {secs:.2} s: {:.0} ops/s, {errors} errors; latency ms p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
                done as f64 / secs,
                q(0.5),
                q(0.9),
                q(0.99),
                q(0.999),
                hist.max() as f64 / 1000.0
            );
        }
        if errors > 0 {
            std::process::ExitCode::FAILURE
        } else {
            std::process::ExitCode::SUCCESS
        }
    })
}
