//! The backend adapter: every server is asked for its own statistics on an interval (Redis
//! `INFO`, memcached `stats`) and both are published under ONE set of metric names with the same
//! labels (pool, server, protocol), so a dashboard needs no per-backend exporter. A cluster
//! pool's every node is asked (masters and replicas, as its slot table lists them); a Sentinel
//! pool's every master and every replica the sentinels last listed up, with any `read_from`
//! (a replica that takes no reads costs one short connection per scrape, as a cluster's does).

use crate::config::Protocol;
use crate::topology::SharedTopology;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which servers answered the last scrape, by (pool, server address).
#[derive(Default)]
pub struct Backends {
    up: Mutex<HashMap<(String, String), bool>>,
}

impl Backends {
    pub fn is_up(&self, pool: &str, server: &str) -> bool {
        self.up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(pool.to_string(), server.to_string()))
            .copied()
            .unwrap_or(false)
    }

    fn set(&self, pool: &str, server: &str, up: bool) {
        self.up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((pool.to_string(), server.to_string()), up);
    }
}

/// One adapter metric: its name, help, whether it is a counter, and the field it comes from in
/// Redis INFO and in memcached stats (several fields are summed).
pub struct Mapping {
    pub name: &'static str,
    pub help: &'static str,
    pub counter: bool,
    pub redis: &'static [&'static str],
    pub memcache: &'static [&'static str],
}

/// The shared names. `items` in Redis is the sum of `keys=` over the keyspace lines.
pub const MAPPINGS: &[Mapping] = &[
    Mapping { name: "legate_backend_uptime_seconds", help: "Seconds the backend server has been up (Redis uptime_in_seconds, memcached uptime).", counter: false, redis: &["uptime_in_seconds"], memcache: &["uptime"] },
    Mapping { name: "legate_backend_connected_clients", help: "Clients connected to the backend (Redis connected_clients, memcached curr_connections).", counter: false, redis: &["connected_clients"], memcache: &["curr_connections"] },
    Mapping { name: "legate_backend_memory_used_bytes", help: "Memory the backend uses for data (Redis used_memory, memcached bytes).", counter: false, redis: &["used_memory"], memcache: &["bytes"] },
    Mapping { name: "legate_backend_memory_limit_bytes", help: "The backend's memory limit, 0 for none (Redis maxmemory, memcached limit_maxbytes).", counter: false, redis: &["maxmemory"], memcache: &["limit_maxbytes"] },
    Mapping { name: "legate_backend_items", help: "Keys stored on the backend (Redis sum of keyspace keys=, memcached curr_items).", counter: false, redis: &["keys"], memcache: &["curr_items"] },
    Mapping { name: "legate_backend_hits_total", help: "Lookups that found their key (Redis keyspace_hits, memcached get_hits).", counter: true, redis: &["keyspace_hits"], memcache: &["get_hits"] },
    Mapping { name: "legate_backend_misses_total", help: "Lookups that missed (Redis keyspace_misses, memcached get_misses).", counter: true, redis: &["keyspace_misses"], memcache: &["get_misses"] },
    Mapping { name: "legate_backend_evictions_total", help: "Keys evicted for memory (Redis evicted_keys, memcached evictions).", counter: true, redis: &["evicted_keys"], memcache: &["evictions"] },
    Mapping { name: "legate_backend_expirations_total", help: "Keys removed by expiry (Redis expired_keys, memcached expired_unfetched + reclaimed).", counter: true, redis: &["expired_keys"], memcache: &["expired_unfetched", "reclaimed"] },
    Mapping {
        name: "legate_backend_commands_processed_total",
        help: "Commands the backend processed (Redis total_commands_processed, memcached cmd_get + cmd_set + cmd_flush + cmd_touch + cmd_meta).",
        counter: true,
        redis: &["total_commands_processed"],
        memcache: &["cmd_get", "cmd_set", "cmd_flush", "cmd_touch", "cmd_meta"],
    },
    Mapping { name: "legate_backend_network_input_bytes_total", help: "Bytes the backend read from the network (Redis total_net_input_bytes, memcached bytes_read).", counter: true, redis: &["total_net_input_bytes"], memcache: &["bytes_read"] },
    Mapping { name: "legate_backend_network_output_bytes_total", help: "Bytes the backend wrote to the network (Redis total_net_output_bytes, memcached bytes_written).", counter: true, redis: &["total_net_output_bytes"], memcache: &["bytes_written"] },
];

/// Register help text for every adapter metric.
pub fn describe() {
    metrics::describe_gauge!(
        "legate_backend_up",
        "1 when the backend answered the last statistics scrape, else 0."
    );
    for m in MAPPINGS {
        if m.counter {
            metrics::describe_counter!(m.name, m.help);
        } else {
            metrics::describe_gauge!(m.name, m.help);
        }
    }
}

/// `field -> value` from Redis INFO (`k:v` lines; keyspace lines add up their `keys=`) or
/// memcached stats (`STAT k v` lines).
pub fn parse_stats(protocol: Protocol, text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim_end();
        let (k, v) = match protocol {
            Protocol::Redis => match line.split_once(':') {
                Some((k, v)) if k.starts_with("db") && v.contains("keys=") => {
                    let keys = v
                        .split(',')
                        .find_map(|kv| kv.strip_prefix("keys="))
                        .and_then(|n| n.parse::<f64>().ok());
                    *out.entry("keys".to_string()).or_insert(0.0) += keys.unwrap_or(0.0);
                    continue;
                }
                Some(kv) => kv,
                None => continue,
            },
            Protocol::Memcache => match line.strip_prefix("STAT ").and_then(|l| l.split_once(' ')) {
                Some(kv) => kv,
                None => continue,
            },
            Protocol::Tcp => continue,
        };
        if let Ok(n) = v.parse::<f64>() {
            out.insert(k.to_string(), n);
        }
    }
    if protocol == Protocol::Redis {
        out.entry("keys".to_string()).or_insert(0.0);
    }
    out
}

/// Ask every server of every pool for its statistics now, publish them, and note who is up.
pub async fn scrape_once(pools: &[SharedTopology], backends: &Backends) {
    let mut asks = Vec::new();
    for topo in pools {
        let t = topo.load_full();
        for s in t.servers.iter().chain(&t.replicas) {
            let (t, s) = (t.clone(), s.clone());
            asks.push(tokio::spawn(async move {
                let result = s.info().await;
                (t.pool.name.clone(), t.pool.protocol, s.addr.to_string(), result)
            }));
        }
        // A cluster or Sentinel pool's replicas that take no reads are asked too.
        let idle_replicas = t
            .cluster
            .iter()
            .flat_map(|c| c.table.replicas.iter().flatten())
            .chain(t.sentinel_replicas.iter().flatten().flatten());
        for a in idle_replicas {
            if t.replicas.iter().any(|r| r.addr == *a) {
                continue;
            }
            let (t, a) = (t.clone(), a.clone());
            asks.push(tokio::spawn(async move {
                let result = crate::upstream::Server::info_at(&t.pool, &a, &t.tls).await;
                (t.pool.name.clone(), t.pool.protocol, a.to_string(), result)
            }));
        }
    }
    for ask in asks {
        let Ok((pool, protocol, server, result)) = ask.await else {
            continue;
        };
        let labels = [
            ("pool", pool.clone()),
            ("server", server.clone()),
            ("protocol", protocol.name().to_string()),
        ];
        let up = result.is_ok();
        backends.set(&pool, &server, up);
        metrics::gauge!("legate_backend_up", &labels).set(if up { 1.0 } else { 0.0 });
        let Ok(text) = result else { continue };
        let fields = parse_stats(protocol, &text);
        for m in MAPPINGS {
            let keys = match protocol {
                Protocol::Redis => m.redis,
                Protocol::Memcache => m.memcache,
                Protocol::Tcp => &[],
            };
            let vals: Vec<f64> = keys.iter().filter_map(|k| fields.get(*k).copied()).collect();
            if vals.is_empty() {
                continue;
            }
            let v: f64 = vals.iter().sum();
            if m.counter {
                metrics::counter!(m.name, &labels).absolute(v as u64);
            } else {
                metrics::gauge!(m.name, &labels).set(v);
            }
        }
    }
}

/// Scrape on `interval` forever; `pools` gives the current topologies.
pub async fn run(
    pools: Arc<dyn Fn() -> Vec<SharedTopology> + Send + Sync>,
    backends: Arc<Backends>,
    interval: Duration,
) {
    loop {
        scrape_once(&pools(), &backends).await;
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_protocols_map_to_the_same_fields() {
        let r = parse_stats(
            Protocol::Redis,
            "# Server\r\nuptime_in_seconds:42\r\nkeyspace_hits:7\r\ndb0:keys=3,expires=0\r\ndb3:keys=2,expires=1\r\n",
        );
        assert_eq!(r["uptime_in_seconds"], 42.0);
        assert_eq!(r["keys"], 5.0);
        let m = parse_stats(
            Protocol::Memcache,
            "STAT uptime 9\r\nSTAT curr_items 4\r\nSTAT version 1.6.21\r\nEND\r\n",
        );
        assert_eq!(m["uptime"], 9.0);
        assert_eq!(m["curr_items"], 4.0);
        assert!(!m.contains_key("version"));
        for map in MAPPINGS {
            assert!(!map.redis.is_empty() && !map.memcache.is_empty(), "{}", map.name);
        }
    }
}
