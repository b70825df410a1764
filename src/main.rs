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
    /// SIGTTIN raises the level, SIGTTOU lowers it (as twemproxy's do).
    #[arg(long, default_value = "info")]
    log: String,
    /// Log file (default: standard error). SIGUSR1 reopens it, after a log rotation.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let log = match logging(&args) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("legate: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = twemproxy_signals(log) {
        eprintln!("legate: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }

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

/// Log levels, least to most verbose, as SIGTTIN and SIGTTOU step through them.
const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// Where log lines go: standard error, or a file that SIGUSR1 reopens.
#[derive(Clone)]
struct LogSink {
    path: Option<PathBuf>,
    file: std::sync::Arc<std::sync::Mutex<Option<std::fs::File>>>,
}

impl LogSink {
    fn open(path: Option<PathBuf>) -> std::io::Result<LogSink> {
        let sink = LogSink {
            path,
            file: Default::default(),
        };
        sink.reopen()?;
        Ok(sink)
    }

    /// (Re)open the log file, if there is one.
    fn reopen(&self) -> std::io::Result<()> {
        if let Some(p) = &self.path {
            let f = std::fs::OpenOptions::new().create(true).append(true).open(p)?;
            *self.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
        }
        Ok(())
    }
}

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut *self.file.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(f) => f.write(buf),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the signal handlers change: the log file and the level.
struct LogControl {
    sink: LogSink,
    filter: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>,
    /// Index into [`LEVELS`]; a filter that is not a plain level starts at info.
    level: usize,
}

/// Install the log subscriber: the filter from RUST_LOG or --log (reloadable), lines to
/// standard error or the --output file.
fn logging(args: &Args) -> Result<LogControl, String> {
    use tracing_subscriber::prelude::*;
    let text = std::env::var("RUST_LOG").unwrap_or_else(|_| args.log.clone());
    let level = LEVELS.iter().position(|l| text.eq_ignore_ascii_case(l)).unwrap_or(2);
    let (filter, handle) = tracing_subscriber::reload::Layer::new(tracing_subscriber::EnvFilter::new(text));
    let sink = LogSink::open(args.output.clone()).map_err(|e| {
        format!(
            "cannot open the log file {}: {e}",
            args.output.as_deref().unwrap_or(std::path::Path::new("")).display()
        )
    })?;
    let ansi = args.output.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let lines = sink.clone();
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || lines.clone())
                .with_ansi(ansi),
        )
        .init();
    Ok(LogControl {
        sink,
        filter: handle,
        level,
    })
}

/// twemproxy's signals, never fatal: SIGUSR1 reopens the log file, SIGTTIN raises the log
/// level and SIGTTOU lowers it, SIGUSR2 is logged. Handled on a thread of their own, installed
/// before anything else runs, so none can stop or kill the process however early it comes.
fn twemproxy_signals(mut log: LogControl) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    const SIGTTIN: i32 = 21;
    const SIGTTOU: i32 = 22;
    let (ready_tx, ready) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("legate-signals".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_io().build() {
            Ok(rt) => rt,
            Err(e) => return drop(ready_tx.send(Err(e))),
        };
        rt.block_on(async move {
            let installed = (|| {
                Ok::<_, std::io::Error>((
                    signal(SignalKind::user_defined1())?,
                    signal(SignalKind::user_defined2())?,
                    signal(SignalKind::from_raw(SIGTTIN))?,
                    signal(SignalKind::from_raw(SIGTTOU))?,
                ))
            })();
            let (mut usr1, mut usr2, mut ttin, mut ttou) = match installed {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => return drop(ready_tx.send(Err(e))),
            };
            loop {
                let step: isize = tokio::select! {
                    _ = usr1.recv() => {
                        match (&log.sink.path, log.sink.reopen()) {
                            (None, _) => tracing::info!("SIGUSR1: logging to standard error, no file to reopen"),
                            (Some(p), Ok(())) => tracing::info!("SIGUSR1: reopened the log file {}", p.display()),
                            (Some(p), Err(e)) => tracing::error!("SIGUSR1: cannot reopen the log file {}: {e}", p.display()),
                        }
                        continue;
                    }
                    _ = usr2.recv() => {
                        tracing::info!("SIGUSR2: ignored");
                        continue;
                    }
                    _ = ttin.recv() => 1,
                    _ = ttou.recv() => -1,
                };
                let level = log.level.saturating_add_signed(step).min(LEVELS.len() - 1);
                log.level = level;
                // Said at warn where it shows: after raising, before lowering.
                if step < 0 {
                    tracing::warn!("log level set to {}", LEVELS[level]);
                }
                if let Err(e) = log.filter.reload(tracing_subscriber::EnvFilter::new(LEVELS[level])) {
                    tracing::error!("cannot change the log level: {e}");
                } else if step > 0 {
                    tracing::warn!("log level set to {}", LEVELS[level]);
                }
            }
        });
    })?;
    ready.recv().map_err(|_| std::io::Error::other("signal thread ended"))?
}
