//! Key placement checked against golden data made by the real nutcracker
//! (tests/data/make_placement.py says how): every hash x ketama/modula, 1/3/25 servers,
//! weighted, aliased, port-11211 and hash-tag cases, keys with bytes >= 0x80.

use legate::config::Config;
use legate::hash::{hash_tag_span, Ring, RingServer};

struct Case {
    header: String,
    yaml: String,
    keys: Vec<(Vec<u8>, String)>,
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn cases() -> Vec<Case> {
    let text = include_str!("data/placement.txt");
    let mut out: Vec<Case> = Vec::new();
    for line in text.lines() {
        let (kind, rest) = line.split_once(' ').unwrap();
        match kind {
            "case" => {
                let mut yaml = String::from("p:\n  listen: 127.0.0.1:1\n");
                for kv in rest.split(' ').skip(1) {
                    let (k, v) = kv.split_once('=').unwrap();
                    yaml += &format!("  {k}: \"{v}\"\n");
                }
                yaml += "  servers:\n";
                out.push(Case {
                    header: rest.to_string(),
                    yaml,
                    keys: Vec::new(),
                });
            }
            "server" => out.last_mut().unwrap().yaml += &format!("    - {rest}\n"),
            "key" => {
                let (k, server) = rest.split_once(' ').unwrap();
                out.last_mut().unwrap().keys.push((hex(k), server.to_string()));
            }
            _ => panic!("bad line in placement.txt: {line}"),
        }
    }
    out
}

#[test]
fn every_key_lands_where_nutcracker_put_it() {
    let cases = cases();
    assert_eq!(cases.len(), 80, "placement.txt should hold 80 cases");
    let mut checked = 0;
    for case in &cases {
        let config = Config::parse(&case.yaml).unwrap_or_else(|e| panic!("{}: {e}", case.header));
        let pool = &config.pools[0];
        let servers: Vec<RingServer<'_>> = pool
            .servers
            .iter()
            .map(|s| RingServer {
                name: &s.name,
                weight: s.weight,
                live: true,
            })
            .collect();
        let ring = Ring::build(&servers, pool.distribution);
        let mut wrong = Vec::new();
        for (key, want) in &case.keys {
            let i = ring.server_for(pool.hash, hash_tag_span(key, pool.hash_tag)).unwrap();
            let got = pool.servers[i].addr.to_string();
            if &got != want {
                wrong.push(format!("{} -> {got}, nutcracker: {want}", String::from_utf8_lossy(key)));
            }
            checked += 1;
        }
        assert!(
            wrong.is_empty(),
            "case {}: {} keys misplaced, e.g. {:?}",
            case.header,
            wrong.len(),
            &wrong[..wrong.len().min(3)]
        );
    }
    assert!(checked > 10_000);
}
