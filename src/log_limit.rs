//! Rate limits for log lines that a misbehaving peer can repeat without end (a server that
//! closes every connection, a listener out of descriptors): the first line of a kind is logged,
//! the same line again within [`WINDOW`] is counted instead, and the next one logged after the
//! window says how many were suppressed.
//!
//! Only failure paths call this, so one mutex around a small map is cheap enough.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a logged line silences the same line.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Keys kept before the stale ones are dropped.
const MAX_KEYS: usize = 4096;

/// Per key: when it was last logged, and how many times it was suppressed since.
static SEEN: Mutex<Option<HashMap<String, (Instant, u64)>>> = Mutex::new(None);

/// Whether the line identified by `key` may be logged now: `Some(suppressed)` with the number
/// of identical lines suppressed since it was last logged, or `None` to suppress it.
pub fn allow(key: &str) -> Option<u64> {
    allow_at(key, Instant::now())
}

fn allow_at(key: &str, now: Instant) -> Option<u64> {
    let mut g = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let seen = g.get_or_insert_with(HashMap::new);
    if let Some((last, suppressed)) = seen.get_mut(key) {
        if now.duration_since(*last) < WINDOW {
            *suppressed += 1;
            return None;
        }
        let n = *suppressed;
        *last = now;
        *suppressed = 0;
        return Some(n);
    }
    if seen.len() >= MAX_KEYS {
        seen.retain(|_, (last, _)| now.duration_since(*last) < WINDOW);
    }
    seen.insert(key.to_string(), (now, 0));
    Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_the_window_are_counted_and_reported_with_the_next_line() {
        let t = Instant::now();
        let key = "test: repeats within the window";
        assert_eq!(allow_at(key, t), Some(0));
        for i in 1..=100 {
            assert_eq!(allow_at(key, t + Duration::from_millis(i)), None);
        }
        assert_eq!(allow_at("test: another line", t), Some(0), "keys are apart");
        assert_eq!(allow_at(key, t + WINDOW), Some(100));
        assert_eq!(allow_at(key, t + WINDOW + Duration::from_millis(1)), None);
    }
}
