//! legate's Redis command table against a live redis-server: every row's arity and key specs
//! match `COMMAND`, and the keys legate finds are exactly those `COMMAND GETKEYS` finds, for
//! arguments generated from each row and for hand-written cases.

mod common;

use common::resp::Value;
use common::{redis_server, Client};
use legate::protocol::redis::{key_positions, lookup, Begin, Command, Find, KeySpec, Keys, Route, COMMANDS};
use std::collections::BTreeMap;

fn kv(v: &Value) -> BTreeMap<String, Value> {
    v.items().chunks(2).map(|p| (p[0].text(), p[1].clone())).collect()
}

/// A live command's key spec in the table's terms; `None` for Redis's "unknown" specs (SORT).
fn live_spec(spec: &Value) -> Option<KeySpec> {
    let s = kv(spec);
    let flags: Vec<String> = s["flags"].items().iter().map(Value::text).collect();
    let bs = kv(&s["begin_search"]);
    let fk = kv(&s["find_keys"]);
    let (bspec, fspec) = (kv(&bs["spec"]), kv(&fk["spec"]));
    let begin = match bs["type"].text().as_str() {
        "index" => Begin::Index(bspec["index"].int() as u16),
        "keyword" => Begin::Keyword {
            word: Box::leak(bspec["keyword"].text().into_boxed_str()),
            from: bspec["startfrom"].int() as i16,
        },
        _ => return None,
    };
    let find = match fk["type"].text().as_str() {
        "range" => Find::Range {
            last: fspec["lastkey"].int() as i16,
            step: fspec["keystep"].int() as u16,
            limit: fspec["limit"].int() as u16,
        },
        "keynum" => {
            assert_eq!(
                (
                    fspec["keynumidx"].int(),
                    fspec["firstkey"].int(),
                    fspec["keystep"].int()
                ),
                (0, 1, 1),
                "the table's KeyNum assumes the count is followed by the keys"
            );
            Find::KeyNum
        }
        _ => return None,
    };
    Some(KeySpec {
        begin,
        find,
        not_key: flags.iter().any(|f| f == "not_key"),
    })
}

fn walk(entry: &Value, out: &mut Vec<(String, i64, Vec<Value>, bool)>) {
    let e = entry.items();
    let subs = e[9].items();
    out.push((e[0].text(), e[1].int(), e[8].items().to_vec(), !subs.is_empty()));
    for s in subs {
        walk(s, out);
    }
}

#[test]
fn the_table_matches_a_live_servers_command_info() {
    let server = redis_server();
    let mut c = Client::connect(server.port);
    let all = c.words("COMMAND");
    let mut live = Vec::new();
    for e in all.items() {
        walk(e, &mut live);
    }
    assert!(live.len() > 300, "{}", live.len());
    for (name, arity, specs, container) in &live {
        let row = COMMANDS
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no row for '{name}'"));
        assert_eq!(row.arity as i64, *arity, "{name}: arity");
        assert_eq!(row.route == Route::Container, *container, "{name}: container");
        let want: Vec<Option<KeySpec>> = specs.iter().map(live_spec).collect();
        match row.keys {
            Keys::Specs(have) => {
                let want: Vec<KeySpec> = want
                    .into_iter()
                    .map(|s| s.unwrap_or_else(|| panic!("{name}: live spec unknown")))
                    .collect();
                assert_eq!(have, &want[..], "{name}: key specs");
            }
            Keys::Sort => {
                assert_eq!(want[0], Some(at1()), "{name}");
                assert!(
                    want[1..].iter().all(Option::is_none),
                    "{name}: SORT's other specs are 'unknown'"
                );
            }
        }
    }
    for row in COMMANDS {
        assert!(
            live.iter().any(|l| l.0 == row.name),
            "row '{}' is not a Redis 7.0 command",
            row.name
        );
    }
}

fn at1() -> KeySpec {
    KeySpec {
        begin: Begin::Index(1),
        find: Find::Range {
            last: 0,
            step: 1,
            limit: 0,
        },
        not_key: false,
    }
}

/// Argument lists to try for a row: its name words, then placeholders `w2`, `w3`…, with the
/// row's key counts and keywords put where its specs look for them.
fn generated(row: &Command) -> Vec<Vec<String>> {
    let words: Vec<&str> = row.name.split('|').collect();
    let min = row.arity.unsigned_abs() as usize;
    let max = if row.arity < 0 { min + 5 } else { min };
    let mut out = Vec::new();
    for argc in min..=max {
        for count in [0usize, 1, 2, 3] {
            let mut args: Vec<String> = (0..argc).map(|i| format!("w{i}")).collect();
            for (i, w) in words.iter().enumerate() {
                args[i] = w.to_string();
            }
            if let Keys::Specs(specs) = row.keys {
                for s in specs {
                    match (s.begin, s.find) {
                        (Begin::Index(i), Find::KeyNum) if (i as usize) < argc => args[i as usize] = count.to_string(),
                        (Begin::Keyword { word, from }, _) => {
                            let at = if from > 0 {
                                from as usize + count.min(1)
                            } else {
                                (argc as i64 + from as i64 - count as i64).max(1) as usize
                            };
                            if at < argc {
                                args[at] = word.to_string();
                            }
                        }
                        _ => {}
                    }
                }
            }
            if !out.contains(&args) {
                out.push(args);
            }
        }
    }
    out
}

const HAND_WRITTEN: &[&str] = &[
    "zunion 2 a b weights 1 2",
    "zunionstore d 3 a b c aggregate max",
    "zdiff 1 a withscores",
    "zintercard 2 a b limit 5",
    "sintercard 3 a b c",
    "lmpop 2 a b left count 1",
    "zmpop 1 a min",
    "eval s 2 a b c",
    "eval s 0 c d",
    "evalsha_ro s 1 a b",
    "fcall f 3 a b c",
    "xread count 5 streams a b 0 0",
    "xread streams streams 0",
    "xreadgroup group g c count 1 noack streams a b > >",
    "sort a by w_* get # store d limit 0 1",
    "sort a store d store e",
    "sort_ro a by w_* get #",
    "georadius g 0 0 1 km store d storedist e",
    "georadiusbymember g m 1 km withdist storedist d",
    "geosearchstore d s frommember m byradius 1 km",
    "object encoding k",
    "object freq k",
    "memory usage k samples 5",
    "xinfo stream s full",
    "xgroup create s g $ mkstream",
    "bitop and d a b c",
    "pfmerge d a b",
    "pfcount a b c",
    "mset a 1 b 2 c 3",
    "msetnx a 1 b 2",
    "rename a b",
    "copy a b db 0 replace",
    "lcs a b len",
    "smove a b m",
    "lmove a b left right",
    "rpoplpush a b",
    "zrangestore d s 0 -1",
    "restore k 0 payload replace",
    "migrate h 1 k 0 5",
    "migrate h 1 \"\" 0 5 keys a b",
    "set k v get",
    "getex k persist",
    "blmpop 0 2 a b left",
    "bzmpop 1 1 a min",
];

/// The keys legate finds (as words), or `None` when it finds the arguments malformed.
fn legate_keys(args: &[String]) -> Option<Vec<String>> {
    let row = lookup(args[0].as_bytes(), args.get(1).map(|s| s.as_bytes())).ok()?;
    let mut pos = Vec::new();
    key_positions(row, args.len(), |i| args[i].as_bytes(), &mut pos).ok()?;
    Some(pos.into_iter().map(|i| args[i].clone()).collect())
}

#[test]
fn keys_found_match_command_getkeys_for_every_row() {
    let server = redis_server();
    let mut c = Client::connect(server.port);
    let mut cases: Vec<Vec<String>> = HAND_WRITTEN
        .iter()
        .map(|l| l.split(' ').map(|w| w.replace('"', "")).collect())
        .collect();
    for row in COMMANDS.iter().filter(|r| r.route != Route::Container) {
        cases.extend(generated(row));
    }
    let mut compared = 0;
    let mut wrong = Vec::new();
    for args in &cases {
        if let Ok(row) = lookup(args[0].as_bytes(), args.get(1).map(|s| s.as_bytes())) {
            // A refused command is never routed (MIGRATE's key specs are "incomplete").
            if matches!(row.route, Route::Refused(_)) {
                continue;
            }
        }
        let mut req: Vec<&[u8]> = vec![b"COMMAND", b"GETKEYS"];
        req.extend(args.iter().map(|a| a.as_bytes()));
        let live = c.call(&req);
        let ours = legate_keys(args);
        match live {
            Value::Array(keys) => {
                let keys: Vec<String> = keys.iter().map(Value::text).collect();
                // No keys at all: legate sends it to the first shard either way.
                let same = ours.as_ref() == Some(&keys) || (keys.is_empty() && ours.is_none());
                if !same {
                    wrong.push(format!("{}: server {keys:?}, legate {ours:?}", args.join(" ")));
                }
                compared += 1;
            }
            Value::Error(e) => {
                // No keys, or arguments the command would refuse: legate must route by no word.
                let ours = ours.unwrap_or_default();
                if !ours.is_empty() {
                    wrong.push(format!("{}: server says {e}, legate found {ours:?}", args.join(" ")));
                }
            }
            other => panic!("{}: {other:?}", args.join(" ")),
        }
    }
    assert!(wrong.is_empty(), "{} cases differ:\n{}", wrong.len(), wrong.join("\n"));
    assert!(compared > 300, "only {compared} cases had keys");
}
