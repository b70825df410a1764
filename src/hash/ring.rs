//! Key distribution over a pool's servers: ketama (the continuum), modula and random,
//! built exactly as nutcracker builds them.

use super::{md5_digest, HashFn};
use std::cmp::Ordering;

/// How keys are spread over a pool's servers (`distribution:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    Ketama,
    Modula,
    Random,
}

impl Distribution {
    /// The name used in config files.
    pub fn name(self) -> &'static str {
        match self {
            Distribution::Ketama => "ketama",
            Distribution::Modula => "modula",
            Distribution::Random => "random",
        }
    }

    /// Parse a config value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ketama" => Some(Distribution::Ketama),
            "modula" => Some(Distribution::Modula),
            "random" => Some(Distribution::Random),
            _ => None,
        }
    }
}

/// A built ring: maps a key hash to the index of a server in the pool's server list.
#[derive(Debug, Clone)]
pub struct Ring {
    kind: RingKind,
}

#[derive(Debug, Clone)]
enum RingKind {
    /// No live server.
    Empty,
    /// One server in the pool: no hashing at all (as nutcracker).
    Single(usize),
    /// Sorted (point, server) pairs.
    Ketama(Vec<(u32, u32)>),
    /// Each server repeated `weight` times, servers in name order.
    Modula(Vec<u32>),
    /// Live server indexes.
    Random(Vec<u32>),
}

/// One server as the ring sees it.
#[derive(Debug, Clone)]
pub struct RingServer<'a> {
    /// The ketama name: the alias, else `host:port`, else `host` when the port is 11211.
    pub name: &'a str,
    pub weight: u32,
    /// Ejected servers leave the ring.
    pub live: bool,
}

/// nutcracker's name order: shorter first, then bytewise.
pub fn name_order(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// Points a server gets on the continuum, in nutcracker's 32-bit float arithmetic.
pub fn ketama_points(weight: u32, total_weight: u32, live_servers: u32) -> u32 {
    let pct = weight as f32 / total_weight as f32;
    let per = pct * 160.0f32 / 4.0f32 * live_servers as f32;
    // The C code adds a double 1e-10 and converts back to float, which loses it.
    let per = (per as f64 + 0.000_000_000_1) as f32;
    (per.floor() as u32) * 4
}

impl Ring {
    /// Build the ring for `servers` (in the pool's server order, which is name order).
    pub fn build(servers: &[RingServer<'_>], dist: Distribution) -> Ring {
        let live: Vec<usize> = (0..servers.len()).filter(|&i| servers[i].live).collect();
        if live.is_empty() {
            return Ring { kind: RingKind::Empty };
        }
        if servers.len() == 1 {
            return Ring {
                kind: RingKind::Single(0),
            };
        }
        let total: u32 = live.iter().map(|&i| servers[i].weight).sum();
        let kind = match dist {
            Distribution::Ketama => {
                let mut points = Vec::with_capacity(live.len() * 160);
                for &i in &live {
                    let n = ketama_points(servers[i].weight, total, live.len() as u32);
                    for p in 0..n / 4 {
                        let d = md5_digest(format!("{}-{}", servers[i].name, p).as_bytes());
                        for w in d.chunks_exact(4) {
                            points.push((u32::from_le_bytes([w[0], w[1], w[2], w[3]]), i as u32));
                        }
                    }
                }
                points.sort_by_key(|&(v, _)| v);
                RingKind::Ketama(points)
            }
            Distribution::Modula => {
                let mut slots = Vec::with_capacity(total as usize);
                for &i in &live {
                    for _ in 0..servers[i].weight {
                        slots.push(i as u32);
                    }
                }
                RingKind::Modula(slots)
            }
            Distribution::Random => RingKind::Random(live.iter().map(|&i| i as u32).collect()),
        };
        Ring { kind }
    }

    /// Server index for a key, or `None` when no server is live.
    pub fn server_for(&self, hash_fn: HashFn, key: &[u8]) -> Option<usize> {
        match &self.kind {
            RingKind::Empty => None,
            RingKind::Single(i) => Some(*i),
            RingKind::Random(live) => Some(live[rand::random::<usize>() % live.len()] as usize),
            _ => Some(self.dispatch(if key.is_empty() { 0 } else { hash_fn.hash(key) })),
        }
    }

    /// Server index for an already computed hash (ketama/modula; random ignores it).
    pub fn dispatch(&self, hash: u32) -> usize {
        match &self.kind {
            RingKind::Empty => 0,
            RingKind::Single(i) => *i,
            RingKind::Ketama(points) => {
                let at = points.partition_point(|&(v, _)| v < hash);
                let at = if at == points.len() { 0 } else { at };
                points[at].1 as usize
            }
            RingKind::Modula(slots) => slots[(hash % slots.len() as u32) as usize] as usize,
            RingKind::Random(live) => live[rand::random::<usize>() % live.len()] as usize,
        }
    }

    /// Number of continuum points (ketama) or slots (modula); for tests and logs.
    pub fn len(&self) -> usize {
        match &self.kind {
            RingKind::Empty => 0,
            RingKind::Single(_) => 1,
            RingKind::Ketama(p) => p.len(),
            RingKind::Modula(s) => s.len(),
            RingKind::Random(l) => l.len(),
        }
    }

    /// True when no server is live.
    pub fn is_empty(&self) -> bool {
        matches!(self.kind, RingKind::Empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_point_count_quirk() {
        assert_eq!(ketama_points(1, 25, 25), 156);
        assert_eq!(ketama_points(1, 3, 3), 160);
        assert_eq!(ketama_points(1, 1, 1), 160);
        assert_eq!(ketama_points(2, 4, 3), 240);
    }

    #[test]
    fn ketama_vector() {
        let d = md5_digest(b"server1-8");
        assert_eq!(u32::from_le_bytes([d[0], d[1], d[2], d[3]]), 3853726576);
        assert_eq!(u32::from_le_bytes([d[12], d[13], d[14], d[15]]), 2667054752);
    }

    #[test]
    fn placement_seen_on_nutcracker() {
        let names = ["127.0.0.1:21211", "127.0.0.1:21212", "127.0.0.1:21213"];
        let servers: Vec<_> = names
            .iter()
            .map(|n| RingServer {
                name: n,
                weight: 1,
                live: true,
            })
            .collect();
        let ring = Ring::build(&servers, Distribution::Ketama);
        assert_eq!(ring.len(), 480);
        let at = |k: &str| names[ring.server_for(HashFn::Fnv1a64, k.as_bytes()).unwrap()];
        for k in ["foo", "user:1000", "a"] {
            assert_eq!(at(k), "127.0.0.1:21211", "{k}");
        }
        for k in ["hello", "apple", "key:42"] {
            assert_eq!(at(k), "127.0.0.1:21212", "{k}");
        }
        assert_eq!(at("bar"), "127.0.0.1:21213");
    }

    #[test]
    fn ejected_servers_leave_the_ring() {
        let servers = [
            RingServer {
                name: "a:1",
                weight: 1,
                live: true,
            },
            RingServer {
                name: "b:1",
                weight: 1,
                live: false,
            },
        ];
        let ring = Ring::build(&servers, Distribution::Ketama);
        for k in 0..100 {
            assert_eq!(ring.server_for(HashFn::Md5, format!("k{k}").as_bytes()), Some(0));
        }
        let none = [RingServer {
            name: "a:1",
            weight: 1,
            live: false,
        }];
        assert!(Ring::build(&none, Distribution::Modula).is_empty());
    }
}
