//! Worker threads: N current-thread runtimes that carry the whole request path.
//!
//! Every worker accepts on each pool's listener and owns its own connections to every server,
//! so a request is read, routed, written to its server, and its reply read and written back
//! without leaving the worker's thread: no cross-thread wake-up on the path. The process's
//! other runtime (the one `run` is called on) keeps the admin endpoint, reloads, health checks
//! and backend scrapes.
//!
//! Before [`start`] (or in a process that never calls it) there is one worker: whatever
//! runtime the caller is on.

use std::cell::Cell;
use std::sync::OnceLock;
use tokio::runtime::Handle;

static HANDLES: OnceLock<Vec<Handle>> = OnceLock::new();

thread_local! {
    /// This thread's worker index (0 on threads that are not workers).
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The worker count the machine offers: its available parallelism, which respects CPU
/// affinity and cgroup CPU quotas.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Start `count` worker threads (once per process; later calls keep the first set).
///
/// # Errors
/// A worker's runtime or thread cannot be created.
pub fn start(count: usize) -> std::io::Result<()> {
    if HANDLES.get().is_some() {
        return Ok(());
    }
    let count = count.max(1);
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        handles.push(rt.handle().clone());
        std::thread::Builder::new()
            .name(format!("legate-worker-{i}"))
            .spawn(move || {
                INDEX.with(|w| w.set(i));
                // Drives every task spawned on this worker until the process exits.
                rt.block_on(std::future::pending::<()>());
            })?;
    }
    let _ = HANDLES.set(handles);
    Ok(())
}

/// How many workers there are (1 before [`start`]).
pub fn count() -> usize {
    HANDLES.get().map_or(1, Vec::len)
}

/// The index of the worker this thread is (0 elsewhere).
#[inline]
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// Spawn `task` on worker `i` (on the caller's runtime before [`start`]).
pub fn spawn_on<F>(i: usize, task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match HANDLES.get() {
        Some(h) => h[i % h.len()].spawn(task),
        None => tokio::spawn(task),
    }
}
