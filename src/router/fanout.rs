//! Replies of Redis commands sent to every shard (or walked shard by shard, SCAN), merged into the
//! one reply a single redis-server would send, in the client's protocol version.
//!
//! Shard replies are read in either protocol (a RESP3 client's requests may travel on RESP3
//! connections): bulk or verbatim strings, `$-1` / `*-1` / `_` nulls, arrays, sets and pushes alike.

use crate::protocol::redis::{put_bulk, put_decimal, Fan};
use bytes::{BufMut, Bytes, BytesMut};

const UNEXPECTED: &[u8] = b"-ERR unexpected reply from a shard\r\n";

/// Bits of a SCAN cursor that hold a shard's own cursor; the shard index sits above them.
/// A redis-server's cursor is below its hash table's size, far under 2^48.
pub const SCAN_SHARD_SHIFT: u32 = 48;

/// Deepest nesting these merges read (SCAN's reply is two levels).
const MAX_DEPTH: usize = 4;

/// A reply, as far as the merges need to read it.
#[derive(Debug)]
enum Value<'a> {
    Simple(&'a [u8]),
    Error,
    Int(i64),
    /// A bulk or verbatim string (the verbatim format prefix removed).
    Bulk(&'a [u8]),
    Null,
    Array(Vec<Value<'a>>),
    /// Doubles, booleans, maps…: not merged.
    Other,
}

fn line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let lf = memchr::memchr(b'\n', buf)?;
    let l = buf[..lf].strip_suffix(b"\r")?;
    Some((l, lf + 1))
}

/// Read one reply from the front of `buf`: the value and its length.
fn read(buf: &[u8], depth: usize) -> Option<(Value<'_>, usize)> {
    let (l, after) = line(buf)?;
    let (&kind, rest) = l.split_first()?;
    let int = || crate::protocol::parse_i64(rest);
    Some(match kind {
        b'+' => (Value::Simple(rest), after),
        b'-' => (Value::Error, after),
        b':' => (Value::Int(int()?), after),
        b'_' => (Value::Null, after),
        b'$' | b'=' => {
            let n = int()?;
            if n < 0 {
                return Some((Value::Null, after));
            }
            let end = after.checked_add(n as usize)?;
            if buf.len() < end + 2 || &buf[end..end + 2] != b"\r\n" {
                return None;
            }
            let mut s = &buf[after..end];
            if kind == b'=' {
                s = s.get(4..)?;
            }
            (Value::Bulk(s), end + 2)
        }
        b'*' | b'~' | b'>' => {
            let n = int()?;
            if n < 0 {
                return Some((Value::Null, after));
            }
            if depth >= MAX_DEPTH || n as usize > buf.len() {
                return None;
            }
            let mut at = after;
            let mut items = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let (v, len) = read(&buf[at..], depth + 1)?;
                items.push(v);
                at += len;
            }
            (Value::Array(items), at)
        }
        _ => (Value::Other, buf.len()),
    })
}

fn value(reply: &[u8]) -> Option<Value<'_>> {
    read(reply, 0).map(|(v, _)| v)
}

fn is_error(reply: &[u8]) -> bool {
    matches!(reply.first(), Some(b'-') | Some(b'!'))
}

fn int_reply(n: i64) -> Bytes {
    let mut b = BytesMut::with_capacity(24);
    b.put_u8(b':');
    put_decimal(&mut b, n);
    b.put_slice(b"\r\n");
    b.freeze()
}

fn null(resp3: bool) -> Bytes {
    Bytes::from_static(if resp3 { b"_\r\n" } else { b"$-1\r\n" })
}

/// Merge the replies of a command sent to every shard (in shard order) into one, for a client
/// speaking RESP3 when `resp3`. `clients` is legate's own count of its clients (for INFO).
pub fn merge(fan: Fan, replies: &[Bytes], resp3: bool, clients: Clients) -> Bytes {
    if fan == Fan::AnyOk {
        return replies
            .iter()
            .find(|r| !is_error(r))
            .or(replies.first())
            .cloned()
            .unwrap_or_else(|| Bytes::from_static(UNEXPECTED));
    }
    if let Some(e) = replies.iter().find(|r| is_error(r)) {
        return e.clone();
    }
    let merged = match fan {
        Fan::Sum => sum(replies),
        Fan::Concat => concat(replies),
        Fan::AnyKey => Some(any_key(replies, resp3)),
        Fan::AllOk => Some(
            replies
                .iter()
                .find(|r| !matches!(value(r), Some(Value::Simple(b"OK"))))
                .cloned()
                .unwrap_or_else(|| Bytes::from_static(b"+OK\r\n")),
        ),
        Fan::Same | Fan::AnyOk => replies.first().cloned(),
        Fan::AllOfArray => all_of_array(replies),
        Fan::Info => info(replies, resp3, clients),
        Fan::Union => union(replies),
        Fan::PairSum => pair_sum(replies),
        Fan::Max => max(replies),
    };
    merged.unwrap_or_else(|| Bytes::from_static(UNEXPECTED))
}

fn sum(replies: &[Bytes]) -> Option<Bytes> {
    let mut total: i64 = 0;
    for r in replies {
        let Value::Int(n) = value(r)? else { return None };
        total = total.saturating_add(n);
    }
    Some(int_reply(total))
}

fn concat(replies: &[Bytes]) -> Option<Bytes> {
    let mut all = Vec::new();
    for r in replies {
        let Value::Array(items) = value(r)? else { return None };
        for i in items {
            let Value::Bulk(s) = i else { return None };
            all.push(s);
        }
    }
    let mut b = BytesMut::with_capacity(16 + replies.iter().map(|r| r.len()).sum::<usize>());
    b.put_u8(b'*');
    put_decimal(&mut b, all.len() as i64);
    b.put_slice(b"\r\n");
    for s in all {
        put_bulk(&mut b, s);
    }
    Some(b.freeze())
}

fn max(replies: &[Bytes]) -> Option<Bytes> {
    let mut max: Option<i64> = None;
    for r in replies {
        let Value::Int(n) = value(r)? else { return None };
        max = Some(max.map_or(n, |m| m.max(n)));
    }
    max.map(int_reply)
}

fn union(replies: &[Bytes]) -> Option<Bytes> {
    let mut seen = std::collections::HashSet::new();
    let mut all = Vec::new();
    for r in replies {
        let Value::Array(items) = value(r)? else { return None };
        for i in items {
            let Value::Bulk(s) = i else { return None };
            if seen.insert(s) {
                all.push(s);
            }
        }
    }
    let mut b = BytesMut::with_capacity(16 + replies.iter().map(|r| r.len()).sum::<usize>());
    b.put_u8(b'*');
    put_decimal(&mut b, all.len() as i64);
    b.put_slice(b"\r\n");
    for s in all {
        put_bulk(&mut b, s);
    }
    Some(b.freeze())
}

fn pair_sum(replies: &[Bytes]) -> Option<Bytes> {
    let mut acc: Vec<(&[u8], i64)> = Vec::new();
    for (i, r) in replies.iter().enumerate() {
        let Value::Array(items) = value(r)? else { return None };
        if items.len() % 2 != 0 || (i > 0 && items.len() != acc.len() * 2) {
            return None;
        }
        for (j, pair) in items.chunks(2).enumerate() {
            let (Value::Bulk(name), Value::Int(n)) = (&pair[0], &pair[1]) else {
                return None;
            };
            match acc.get_mut(j) {
                Some((k, total)) if k == name => *total = total.saturating_add(*n),
                Some(_) => return None,
                None => acc.push((name, *n)),
            }
        }
    }
    let mut b = BytesMut::with_capacity(16 + acc.len() * 32);
    b.put_u8(b'*');
    put_decimal(&mut b, acc.len() as i64 * 2);
    b.put_slice(b"\r\n");
    for (name, n) in acc {
        put_bulk(&mut b, name);
        b.put_u8(b':');
        put_decimal(&mut b, n);
        b.put_slice(b"\r\n");
    }
    Some(b.freeze())
}

fn any_key(replies: &[Bytes], resp3: bool) -> Bytes {
    let keys: Vec<&Bytes> = replies
        .iter()
        .filter(|r| matches!(value(r), Some(Value::Bulk(_))))
        .collect();
    if keys.is_empty() {
        return null(resp3);
    }
    keys[rand::random::<usize>() % keys.len()].clone()
}

fn all_of_array(replies: &[Bytes]) -> Option<Bytes> {
    let mut acc: Option<Vec<i64>> = None;
    for r in replies {
        let Value::Array(items) = value(r)? else { return None };
        let ns: Option<Vec<i64>> = items
            .iter()
            .map(|v| if let Value::Int(n) = v { Some(*n) } else { None })
            .collect();
        let ns = ns?;
        acc = Some(match acc {
            None => ns,
            Some(a) if a.len() == ns.len() => a.iter().zip(&ns).map(|(x, y)| *x.min(y)).collect(),
            Some(_) => return None,
        });
    }
    let acc = acc?;
    let mut b = BytesMut::with_capacity(8 + acc.len() * 4);
    b.put_u8(b'*');
    put_decimal(&mut b, acc.len() as i64);
    b.put_slice(b"\r\n");
    for n in acc {
        b.put_u8(b':');
        put_decimal(&mut b, n);
        b.put_slice(b"\r\n");
    }
    Some(b.freeze())
}

/// Sections of INFO whose integer fields are summed over the shards (the others are the first
/// shard's, `# Server` and `# Clients` are legate's own).
const SUMMED: &[&str] = &["memory", "stats", "keyspace", "commandstats", "errorstats"];

/// Counts of `# Memory` that every shard holds alike (SCRIPT LOAD and FUNCTION LOAD go to every
/// shard): the largest, as one server holding them all would say, not their sum.
const ON_EVERY_SHARD: &[&str] = &["number_of_cached_scripts", "number_of_functions", "number_of_libraries"];

type Section<'a> = (&'a str, Vec<(&'a str, &'a str)>);

fn sections(text: &str) -> Vec<Section<'_>> {
    let mut out: Vec<Section<'_>> = Vec::new();
    for l in text.split("\r\n").flat_map(|l| l.split('\n')) {
        if let Some(name) = l.strip_prefix("# ") {
            out.push((name, Vec::new()));
        } else if let Some((k, v)) = l.split_once(':') {
            if out.is_empty() {
                out.push(("", Vec::new()));
            }
            if let Some(s) = out.last_mut() {
                s.1.push((k, v));
            }
        }
    }
    out
}

/// Sum integer values; `a=1,b=2` values field by field; anything else is the first shard's.
fn sum_values(values: &[&str]) -> String {
    if let Some(ns) = values.iter().map(|v| v.parse::<i64>().ok()).collect::<Option<Vec<_>>>() {
        return ns.iter().fold(0i64, |a, n| a.saturating_add(*n)).to_string();
    }
    let first = values[0];
    if !first.contains('=') {
        return first.to_string();
    }
    let fields: Vec<(&str, &str)> = first.split(',').filter_map(|f| f.split_once('=')).collect();
    let mut out = Vec::with_capacity(fields.len());
    for (k, v0) in fields {
        let mut total = v0.parse::<i64>().ok();
        for other in &values[1..] {
            let v = other
                .split(',')
                .filter_map(|f| f.split_once('='))
                .find(|(ok, _)| *ok == k)
                .map(|(_, v)| v);
            total = match (total, v.map(str::parse::<i64>)) {
                (Some(t), Some(Ok(n))) => Some(t.saturating_add(n)),
                (Some(t), None) => Some(t),
                _ => None,
            };
        }
        // An average is not a sum: the first shard's stands.
        match total {
            Some(t) if k != "avg_ttl" => out.push(format!("{k}={t}")),
            _ => out.push(format!("{k}={v0}")),
        }
    }
    out.join(",")
}

/// legate's clients, as INFO's `# Clients` reports them: the shards' own counts are of legate's
/// server connections, not of the application's clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clients {
    pub connected: i64,
}

fn info(replies: &[Bytes], resp3: bool, clients: Clients) -> Option<Bytes> {
    let mut texts = Vec::with_capacity(replies.len());
    for r in replies {
        let Value::Bulk(s) = value(r)? else { return None };
        texts.push(std::str::from_utf8(s).ok()?);
    }
    let parsed: Vec<Vec<Section<'_>>> = texts.iter().map(|t| sections(t)).collect();
    let mut names: Vec<&str> = Vec::new();
    for shard in &parsed {
        for (n, _) in shard {
            if !names.contains(n) {
                names.push(n);
            }
        }
    }
    let uptime = super::STARTED.get_or_init(std::time::Instant::now).elapsed().as_secs();
    let mut text = String::with_capacity(texts.iter().map(|t| t.len()).max().unwrap_or(0) + 256);
    for name in names {
        let of_shards: Vec<&Vec<(&str, &str)>> = parsed
            .iter()
            .filter_map(|s| s.iter().find(|(n, _)| *n == name).map(|(_, f)| f))
            .collect();
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        if !name.is_empty() {
            text.push_str("# ");
            text.push_str(name);
            text.push_str("\r\n");
        }
        let lower = name.to_ascii_lowercase();
        let mut keys: Vec<&str> = Vec::new();
        for f in &of_shards {
            for (k, _) in f.iter() {
                if !keys.contains(k) {
                    keys.push(k);
                }
            }
        }
        if lower == "server" {
            text.push_str(&format!(
                "legate_version:{}\r\nlegate_shards:{}\r\n",
                env!("CARGO_PKG_VERSION"),
                replies.len()
            ));
        }
        for k in keys {
            let values: Vec<&str> = of_shards
                .iter()
                .filter_map(|f| f.iter().find(|(fk, _)| *fk == k).map(|(_, v)| *v))
                .collect();
            let v = match (lower.as_str(), k) {
                ("server", "process_id") => std::process::id().to_string(),
                ("server", "uptime_in_seconds") => uptime.to_string(),
                ("server", "uptime_in_days") => (uptime / 86400).to_string(),
                ("clients", "connected_clients") => clients.connected.to_string(),
                // Only legate's own connections block on a server (a client's blocking command
                // on a connection of its own): the servers' counts are legate's clients', and
                // count a client once the server has really blocked it.
                ("clients", "blocked_clients" | "clients_in_timeout_table") => sum_values(&values),
                ("clients", "tracking_clients") => "0".into(),
                ("memory", k) if ON_EVERY_SHARD.contains(&k) => values
                    .iter()
                    .filter_map(|v| v.parse::<i64>().ok())
                    .max()
                    .map_or_else(|| values[0].to_string(), |n| n.to_string()),
                (s, _) if SUMMED.contains(&s) => sum_values(&values),
                _ => values[0].to_string(),
            };
            text.push_str(k);
            text.push(':');
            text.push_str(&v);
            text.push_str("\r\n");
        }
    }
    let mut b = BytesMut::with_capacity(text.len() + 24);
    if resp3 {
        b.put_u8(b'=');
        put_decimal(&mut b, text.len() as i64 + 4);
        b.put_slice(b"\r\ntxt:");
    } else {
        b.put_u8(b'$');
        put_decimal(&mut b, text.len() as i64);
        b.put_slice(b"\r\n");
    }
    b.put_slice(text.as_bytes());
    b.put_slice(b"\r\n");
    Some(b.freeze())
}

/// The cursor a client sends, as (shard, that shard's own cursor); `None` when it is not a cursor
/// legate gave out for a pool of `shards` servers.
pub fn split_cursor(cursor: &[u8], shards: usize) -> Option<(usize, u64)> {
    let c = crate::protocol::parse_u64(cursor)?;
    let shard = (c >> SCAN_SHARD_SHIFT) as usize;
    (shard < shards).then_some((shard, c & ((1 << SCAN_SHARD_SHIFT) - 1)))
}

/// Rewrite shard `shard`'s SCAN reply so its cursor names the shard: the next shard's start when
/// this one is done, 0 when the last one is.
pub fn scan_reply(reply: &Bytes, shard: usize, shards: usize) -> Bytes {
    if is_error(reply) {
        return reply.clone();
    }
    let rewritten = (|| {
        let (head, after) = line(reply)?;
        if head != b"*2" {
            return None;
        }
        let (Value::Bulk(c), len) = read(&reply[after..], 1)? else {
            return None;
        };
        let c = crate::protocol::parse_u64(c)?;
        let next = if c != 0 {
            if c >> SCAN_SHARD_SHIFT != 0 {
                return None;
            }
            ((shard as u64) << SCAN_SHARD_SHIFT) | c
        } else if shard + 1 < shards {
            ((shard + 1) as u64) << SCAN_SHARD_SHIFT
        } else {
            0
        };
        let rest = &reply[after + len..];
        let mut b = BytesMut::with_capacity(rest.len() + 32);
        b.put_slice(b"*2\r\n");
        put_bulk(&mut b, itoa::Buffer::new().format(next).as_bytes());
        b.put_slice(rest);
        Some(b.freeze())
    })();
    rewritten.unwrap_or_else(|| Bytes::from_static(UNEXPECTED))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    #[test]
    fn sums_concats_and_errors() {
        assert_eq!(
            merge(Fan::Sum, &[b(":2\r\n"), b(":3\r\n")], false, Clients::default()),
            b(":5\r\n")
        );
        assert_eq!(
            merge(
                Fan::Concat,
                &[b("*1\r\n$1\r\na\r\n"), b("*0\r\n"), b("~1\r\n$2\r\nbc\r\n")],
                false,
                Clients::default()
            ),
            b("*2\r\n$1\r\na\r\n$2\r\nbc\r\n")
        );
        assert_eq!(
            merge(Fan::Sum, &[b(":2\r\n"), b("-ERR x\r\n")], false, Clients::default()),
            b("-ERR x\r\n")
        );
        assert_eq!(
            merge(Fan::AnyKey, &[b("$-1\r\n"), b("_\r\n")], true, Clients::default()),
            b("_\r\n")
        );
        assert_eq!(
            merge(
                Fan::AnyKey,
                &[b("$-1\r\n"), b("$1\r\nk\r\n")],
                false,
                Clients::default()
            ),
            b("$1\r\nk\r\n")
        );
        assert_eq!(
            merge(
                Fan::AllOfArray,
                &[b("*2\r\n:1\r\n:1\r\n"), b("*2\r\n:0\r\n:1\r\n")],
                false,
                Clients::default()
            ),
            b("*2\r\n:0\r\n:1\r\n")
        );
        assert_eq!(
            merge(
                Fan::AnyOk,
                &[b("-NOTBUSY a\r\n"), b("+OK\r\n")],
                false,
                Clients::default()
            ),
            b("+OK\r\n")
        );
        assert_eq!(
            merge(Fan::AllOk, &[b("+OK\r\n"), b("+OK\r\n")], false, Clients::default()),
            b("+OK\r\n")
        );
        assert_eq!(
            merge(Fan::Sum, &[b(":2\r\n"), b("+OK\r\n")], false, Clients::default()),
            Bytes::from_static(UNEXPECTED)
        );
    }

    #[test]
    fn info_says_legate_and_sums_the_keyspace() {
        let a = "# Server\r\nredis_version:7.0.15\r\nprocess_id:1\r\n\r\n# Clients\r\nconnected_clients:9\r\nblocked_clients:1\r\n\r\n# Memory\r\nused_memory:100\r\nnumber_of_cached_scripts:3\r\n\r\n# Keyspace\r\ndb0:keys=2,expires=1,avg_ttl=5\r\n";
        let c = "# Server\r\nredis_version:7.0.15\r\nprocess_id:2\r\n\r\n# Clients\r\nconnected_clients:4\r\nblocked_clients:1\r\n\r\n# Memory\r\nused_memory:50\r\nnumber_of_cached_scripts:3\r\n\r\n# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0\r\n";
        let r = |s: &str| Bytes::from(format!("${}\r\n{s}\r\n", s.len()));
        let out = merge(Fan::Info, &[r(a), r(c)], false, Clients { connected: 7 });
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("legate_version:"), "{text}");
        assert!(text.contains("connected_clients:7\r\n"), "{text}");
        assert!(text.contains("blocked_clients:2\r\n"), "{text}");
        assert!(text.contains("used_memory:150\r\n"), "{text}");
        assert!(text.contains("number_of_cached_scripts:3\r\n"), "{text}");
        assert!(text.contains("db0:keys=5,expires=1,avg_ttl=5\r\n"), "{text}");
        assert!(
            text.contains(&format!("process_id:{}\r\n", std::process::id())),
            "{text}"
        );
        let v = merge(Fan::Info, &[r(a)], true, Clients::default());
        assert!(v.starts_with(b"="), "{v:?}");
        assert!(matches!(value(&v), Some(Value::Bulk(_))));
    }

    #[test]
    fn scan_cursor_walks_the_shards() {
        assert_eq!(split_cursor(b"0", 3), Some((0, 0)));
        let c = (2u64 << SCAN_SHARD_SHIFT) | 17;
        assert_eq!(split_cursor(c.to_string().as_bytes(), 3), Some((2, 17)));
        assert_eq!(split_cursor(c.to_string().as_bytes(), 2), None);
        assert_eq!(split_cursor(b"x", 2), None);
        let next = scan_reply(&b("*2\r\n$1\r\n0\r\n*1\r\n$1\r\nk\r\n"), 0, 2);
        let want = format!("*2\r\n$15\r\n{}\r\n*1\r\n$1\r\nk\r\n", 1u64 << SCAN_SHARD_SHIFT);
        assert_eq!(next, b(&want));
        assert_eq!(
            scan_reply(&b("*2\r\n$1\r\n0\r\n*0\r\n"), 1, 2),
            b("*2\r\n$1\r\n0\r\n*0\r\n")
        );
        let mid = scan_reply(&b("*2\r\n$2\r\n12\r\n*0\r\n"), 1, 2);
        let want = format!("*2\r\n$15\r\n{}\r\n*0\r\n", (1u64 << SCAN_SHARD_SHIFT) | 12);
        assert_eq!(mid, b(&want));
    }
}
