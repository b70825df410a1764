//! Replays the committed fuzz corpus (fuzz/corpus/<target>/) through the fuzz targets'
//! invariants on stable Rust, so every CI run covers what fuzzing found.

#[path = "../fuzz/invariants.rs"]
mod invariants;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| check(&data));
        assert!(result.is_ok(), "{target}: invariant broken by {}", path.display());
        n += 1;
    }
    assert!(n >= 5, "{target}: only {n} corpus files");
}

#[test]
fn memcache_request_corpus() {
    replay("memcache_request", invariants::memcache_request);
}

#[test]
fn memcache_binary_corpus() {
    replay("memcache_binary", invariants::memcache_binary);
}

#[test]
fn redis_request_corpus() {
    replay("redis_request", invariants::redis_request);
}

#[test]
fn replies_corpus() {
    replay("replies", invariants::replies);
}

#[test]
fn config_corpus() {
    replay("config", invariants::config);
}
