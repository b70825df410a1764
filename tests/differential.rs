//! nutcracker and legate side by side on the same backends: what one writes, the other reads.
//! This is the no-cache-loss promise of switching a twemproxy fleet to legate.

mod common;

use common::{free_port, legate, memcached, nutcracker, redis_server, Client, Proc};

fn pools(name: &str, port: u16, redis: bool, backends: &[Proc], hash: &str, dist: &str) -> String {
    let mut y = format!(
        "{name}:\n  listen: 127.0.0.1:{port}\n  redis: {redis}\n  hash: {hash}\n  distribution: {dist}\n  hash_tag: \"{{}}\"\n  servers:\n"
    );
    for (i, b) in backends.iter().enumerate() {
        // Mixed weights and one alias, as real fleets have.
        let alias = if i == 1 { " shard-b" } else { "" };
        y += &format!("    - 127.0.0.1:{}:{}{alias}\n", b.port, i + 1);
    }
    y
}

fn keys() -> Vec<Vec<u8>> {
    let mut k: Vec<Vec<u8>> = (0..200).map(|i| format!("user:{i}").into_bytes()).collect();
    k.extend((0..50u8).map(|i| vec![b'k', 0x80 | i, 0xfe, b'0' + i % 10]));
    k.extend((0..20).map(|i| format!("{{tag{}}}:{i}", i % 3).into_bytes()));
    k
}

#[test]
fn memcache_keys_written_by_one_are_read_by_the_other() {
    let backends: Vec<Proc> = (0..3).map(|_| memcached()).collect();
    for (hash, dist) in [("fnv1a_64", "ketama"), ("murmur", "modula"), ("md5", "ketama")] {
        let (np, lp) = (free_port(), free_port());
        let _nut = nutcracker(&pools("n", np, false, &backends, hash, dist), np);
        let _leg = legate(&pools("l", lp, false, &backends, hash, dist), lp);
        let mut n = Client::connect(np);
        let mut l = Client::connect(lp);
        let keys = keys();
        for (i, k) in keys.iter().enumerate() {
            let (writer, other) = if i % 2 == 0 {
                (&mut n, "nutcracker")
            } else {
                (&mut l, "legate")
            };
            let v = format!("{hash}-{dist}-{i}");
            writer.send(&[b"set ", &k[..], format!(" 0 0 {}\r\n{v}\r\n", v.len()).as_bytes()].concat());
            assert_eq!(writer.line(), b"STORED\r\n", "set via {other}");
        }
        for (i, k) in keys.iter().enumerate() {
            // Read through the proxy that did not write it.
            let reader = if i % 2 == 0 { &mut l } else { &mut n };
            let v = format!("{hash}-{dist}-{i}");
            reader.expect(
                &[b"get ", &k[..], b"\r\n"].concat(),
                &[
                    b"VALUE ",
                    &k[..],
                    format!(" 0 {}\r\n{v}\r\nEND\r\n", v.len()).as_bytes(),
                ]
                .concat(),
            );
        }
    }
}

#[test]
fn redis_keys_written_by_one_are_read_by_the_other() {
    let backends: Vec<Proc> = (0..3).map(|_| redis_server()).collect();
    for (hash, dist) in [("fnv1a_64", "ketama"), ("crc32a", "modula"), ("jenkins", "ketama")] {
        let (np, lp) = (free_port(), free_port());
        let _nut = nutcracker(&pools("n", np, true, &backends, hash, dist), np);
        let _leg = legate(&pools("l", lp, true, &backends, hash, dist), lp);
        let mut n = Client::connect(np);
        let mut l = Client::connect(lp);
        let keys = keys();
        for (i, k) in keys.iter().enumerate() {
            let writer = if i % 2 == 0 { &mut n } else { &mut l };
            let v = format!("{hash}-{dist}-{i}");
            writer.send(
                &[
                    format!("*3\r\n$3\r\nSET\r\n${}\r\n", k.len()).as_bytes(),
                    k,
                    format!("\r\n${}\r\n{v}\r\n", v.len()).as_bytes(),
                ]
                .concat(),
            );
            assert_eq!(writer.line(), b"+OK\r\n");
        }
        for (i, k) in keys.iter().enumerate() {
            let reader = if i % 2 == 0 { &mut l } else { &mut n };
            let v = format!("{hash}-{dist}-{i}");
            reader.expect(
                &[format!("*2\r\n$3\r\nGET\r\n${}\r\n", k.len()).as_bytes(), k, b"\r\n"].concat(),
                format!("${}\r\n{v}\r\n", v.len()).as_bytes(),
            );
        }
    }
}
