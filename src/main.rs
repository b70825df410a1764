//! The `legate` binary: command line, logging, runtime and signals around [`legate::run`].

use clap::Parser;

// jemalloc (configured in .cargo/config.toml) gives memory freed by a burst of clients back to
// the system within about a second; glibc's malloc keeps most of it in per-thread arenas.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::PathBuf;
use std::process::ExitCode;

/// An ambassador proxy for memcache and Redis, drop-in for twemproxy's config.
#[derive(Parser, Debug)]
#[command(name = "legate", version)]
struct Args {
    /// Configuration file (twemproxy YAML).
    #[arg(short = 'c', long = "conf-file", default_value = "conf/nutcracker.yml")]
    conf: PathBuf,
    /// Check the configuration file and exit: 0 if valid, 1 if not.
    #[arg(short = 't', long = "test-conf")]
    test: bool,
    /// Worker threads, each with its own listeners' share of clients and its own server
    /// connections (default: the available parallelism, which respects CPU affinity and cgroup
    /// quotas).
    #[arg(long)]
    workers: Option<usize>,
    /// Admin HTTP endpoint (/metrics, /stats, /health, /ready, /config, POST /reload); `off` disables it.
    #[arg(long, default_value = "127.0.0.1:22222")]
    admin: String,
    /// twemproxy's stats port: JSON written on each accepted connection (off unless given).
    #[arg(short = 's', long = "stats-port")]
    stats_port: Option<u16>,
    /// Address for the stats port.
    #[arg(short = 'a', long = "stats-addr", default_value = "0.0.0.0")]
    stats_addr: String,
    /// Seconds between backend statistics scrapes (Redis INFO, memcached stats).
    #[arg(long, default_value_t = 10.0)]
    scrape_interval: f64,
    /// Do not watch the config file for changes (SIGHUP still reloads it).
    #[arg(long)]
    no_watch: bool,
    /// On SIGTERM/SIGINT, how long to let in-flight requests finish, in seconds.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
    /// Log filter (tracing syntax, e.g. `info`, `legate=debug`); RUST_LOG also works.
    #[arg(long, default_value = "info")]
    log: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| args.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    // Each client and server connection is a descriptor: take what the hard limit allows.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!("cannot raise the open-file limit: {e}");
    }

    let config = match legate::config::Config::load(&args.conf).and_then(|c| {
        // Certificates and keys are part of what -t checks.
        legate::tls::load(&c)?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "legate: configuration file '{}' syntax is invalid: {e}",
                args.conf.display()
            );
            return ExitCode::FAILURE;
        }
    };
    if args.test {
        println!("legate: configuration file '{}' syntax is ok", args.conf.display());
        return ExitCode::SUCCESS;
    }

    // This runtime keeps the admin endpoint, reloads and scrapes; the request path runs on the
    // worker threads that `run_with` starts (`--workers`, default one per available core).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("legate-control")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("legate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let admin = match args.admin.as_str() {
        "off" | "none" | "" => None,
        a => match a.parse() {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("legate: --admin {a}: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let stats = match args.stats_port.map(|p| format!("{}:{p}", args.stats_addr).parse()) {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err(e)) => {
            eprintln!("legate: -a {}: {e}", args.stats_addr);
            return ExitCode::FAILURE;
        }
    };
    let options = legate::Options {
        admin,
        stats,
        scrape_interval: std::time::Duration::from_secs_f64(args.scrape_interval.max(0.05)),
        config_path: Some(args.conf.clone()),
        watch: !args.no_watch,
        drain_timeout: std::time::Duration::from_secs_f64(args.drain_timeout.max(0.0)),
        workers: args.workers.filter(|&n| n > 0),
    };
    let result = rt.block_on(legate::run_with(config, options, shutdown_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("legate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT; a second one exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        eprintln!("legate: cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        eprintln!("legate: second signal, exiting without draining");
        std::process::exit(1);
    });
}
