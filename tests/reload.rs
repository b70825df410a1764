//! Hot reload under load, and draining on SIGTERM, against real redis-servers and memcached.

mod common;

use common::{config_file, free_port, legate, legate_logged, memcached, redis_server, scratch_dir, Client, Proc};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One config the test moves through.
#[derive(Clone)]
struct Shape {
    hash: &'static str,
    /// (backend index, weight)
    servers: Vec<(usize, u32)>,
    /// Also run a memcache pool on this port.
    extra_pool: Option<u16>,
}

fn yaml(port: u16, shape: &Shape, redis: &[Proc], mc: &[Proc]) -> String {
    let mut y = format!(
        "rd:\n  listen: 127.0.0.1:{port}\n  redis: true\n  hash: {}\n  distribution: ketama\n  servers:\n",
        shape.hash
    );
    for (i, w) in &shape.servers {
        y += &format!("    - 127.0.0.1:{}:{w}\n", redis[*i].port);
    }
    if let Some(p) = shape.extra_pool {
        y += &format!("mc:\n  listen: 127.0.0.1:{p}\n  hash: md5\n  servers:\n");
        for m in mc {
            y += &format!("    - 127.0.0.1:{}:1\n", m.port);
        }
    }
    y
}

/// How the new file reaches the path legate watches.
#[derive(Clone, Copy, Debug)]
enum How {
    InPlace,
    Rename,
    /// Kubernetes ConfigMap volume: `legate.yml -> ..data/legate.yml`, `..data -> ..vN`.
    ConfigMapSwap,
}

struct ConfigDir {
    dir: PathBuf,
    version: u32,
}

impl ConfigDir {
    /// A ConfigMap-style directory holding `text`.
    fn new(text: &str) -> ConfigDir {
        let dir = scratch_dir();
        let mut c = ConfigDir { dir, version: 0 };
        c.swap(text);
        std::os::unix::fs::symlink("..data/legate.yml", c.path()).unwrap();
        c
    }
    fn path(&self) -> PathBuf {
        self.dir.join("legate.yml")
    }
    fn swap(&mut self, text: &str) {
        self.version += 1;
        let v = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.join(&v)).unwrap();
        std::fs::write(self.dir.join(&v).join("legate.yml"), text).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&v, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
    fn write(&mut self, text: &str, how: How) {
        // The file the symlinks point at now.
        let real = std::fs::canonicalize(self.path()).unwrap();
        match how {
            How::InPlace => {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&real)
                    .unwrap();
                f.write_all(text.as_bytes()).unwrap();
            }
            How::Rename => {
                let tmp = real.with_extension("tmp");
                std::fs::write(&tmp, text).unwrap();
                std::fs::rename(&tmp, &real).unwrap();
            }
            How::ConfigMapSwap => self.swap(text),
        }
    }
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// Read one RESP reply line (no bulk payloads needed beyond one line).
fn read_line(r: &mut std::io::BufReader<TcpStream>) -> Option<String> {
    use std::io::BufRead;
    let mut l = String::new();
    match r.read_line(&mut l) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(l),
    }
}

/// A client pipelining SET/GET pairs of unique values until `stop`; returns replies checked.
/// Panics on an error reply or a wrong (misordered) value. A GET may miss only when the
/// topology changed between its SET and it.
fn load(port: u16, id: usize, stop: Arc<AtomicBool>, checked: Arc<AtomicU64>) {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = std::io::BufReader::new(s);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut batch = Vec::new();
        let mut want = Vec::new();
        for _ in 0..16 {
            seq += 1;
            let key = format!("load:{id}:{}", seq % 64);
            let val = format!("v{id}-{seq}");
            batch.extend(resp(&["SET", &key, &val]));
            batch.extend(resp(&["GET", &key]));
            want.push(val);
        }
        w.write_all(&batch).unwrap();
        for val in want {
            let set = read_line(&mut r).expect("connection closed during reload");
            assert_eq!(set, "+OK\r\n", "client {id}: SET reply");
            let get = read_line(&mut r).expect("connection closed during reload");
            if get == "$-1\r\n" {
                continue;
            }
            assert_eq!(
                get,
                format!("${}\r\n", val.len()),
                "client {id}: GET header (misordered or error)"
            );
            assert_eq!(
                read_line(&mut r).unwrap(),
                format!("{val}\r\n"),
                "client {id}: GET value"
            );
            checked.fetch_add(2, Ordering::Relaxed);
        }
    }
}

/// Keys written through `legate_port` are all found through a fresh legate on the same file:
/// the reloaded placement is what a fresh start gives.
fn placement_matches_fresh_start(legate_port: u16, text: &str, round: usize) {
    let mut c = Client::connect(legate_port);
    for i in 0..40 {
        let k = format!("probe:{round}:{i}");
        c.expect(&resp(&["SET", &k, &k]), b"+OK\r\n");
    }
    let fresh_port = free_port();
    let mut fresh_yaml = text.replacen(
        &format!("127.0.0.1:{legate_port}"),
        &format!("127.0.0.1:{fresh_port}"),
        1,
    );
    // A fresh instance must not collide with the extra pool's port either.
    if let Some(at) = fresh_yaml.find("mc:\n") {
        fresh_yaml.truncate(at);
    }
    let fresh = legate(&fresh_yaml, fresh_port);
    let mut f = Client::connect(fresh.proc.port);
    for i in 0..40 {
        let k = format!("probe:{round}:{i}");
        f.expect(&resp(&["GET", &k]), format!("${}\r\n{k}\r\n", k.len()).as_bytes());
    }
}

#[test]
fn twenty_reloads_under_load_fail_nothing_and_place_keys_like_a_fresh_start() {
    let redis: Vec<Proc> = (0..4).map(|_| redis_server()).collect();
    let mc: Vec<Proc> = (0..2).map(|_| memcached()).collect();
    let port = free_port();
    let extra = free_port();
    let base = Shape {
        hash: "fnv1a_64",
        servers: vec![(0, 1), (1, 1), (2, 1)],
        extra_pool: None,
    };
    let first = yaml(port, &base, &redis, &mc);
    let mut cfg = ConfigDir::new(&first);
    let proxy = legate_logged(&cfg.path(), port, &[]);

    let stop = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..6)
        .map(|id| {
            let (stop, checked) = (stop.clone(), checked.clone());
            std::thread::spawn(move || load(port, id, stop, checked))
        })
        .collect();

    let shapes: Vec<Shape> = vec![
        Shape {
            servers: vec![(0, 1), (1, 1), (2, 1), (3, 1)],
            ..base.clone()
        }, // add a server
        Shape {
            servers: vec![(0, 1), (2, 1), (3, 1)],
            ..base.clone()
        }, // remove one
        Shape {
            servers: vec![(0, 3), (2, 1), (3, 2)],
            ..base.clone()
        }, // weights
        Shape {
            hash: "murmur",
            servers: vec![(0, 3), (2, 1), (3, 2)],
            ..base.clone()
        }, // hash
        Shape {
            extra_pool: Some(extra),
            ..base.clone()
        }, // add a pool
        base.clone(), // remove it
    ];
    let hows = [How::InPlace, How::Rename, How::ConfigMapSwap];
    for round in 0..20 {
        let shape = &shapes[round % shapes.len()];
        let how = hows[round % hows.len()];
        let text = yaml(port, shape, &redis, &mc);
        cfg.write(&text, how);
        proxy.wait_log(&format!("config generation {} applied", round + 2));
        match shape.extra_pool {
            Some(p) => Client::connect(p).expect(b"set x 0 0 1\r\n1\r\n", b"STORED\r\n"),
            None => assert!(
                TcpStream::connect(("127.0.0.1", extra)).is_err(),
                "removed pool still listening"
            ),
        }
        placement_matches_fresh_start(port, &text, round);
        let _ = how;
    }

    // An invalid file changes nothing: the error names the pool and key, traffic flows on.
    cfg.write(&first.replace("hash: fnv1a_64", "hash: sha999"), How::Rename);
    let err = proxy.wait_log("config reload failed");
    assert!(err.contains("pool 'rd', key 'hash'"), "{err}");
    let before = checked.load(Ordering::Relaxed);
    while checked.load(Ordering::Relaxed) < before + 1000 {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(proxy.log_count("config generation 22 applied"), 0);

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("a load client saw a failed or misordered reply");
    }
    assert!(
        checked.load(Ordering::Relaxed) > 1000,
        "too little load ran during the reloads"
    );
}

/// The small pool the SIGHUP and SIGTERM tests use.
fn two_md5_servers() -> Shape {
    Shape {
        hash: "md5",
        servers: vec![(0, 1), (1, 1)],
        extra_pool: None,
    }
}

#[test]
fn sighup_reloads_and_unchanged_servers_keep_their_connections() {
    let redis: Vec<Proc> = (0..3).map(|_| redis_server()).collect();
    let port = free_port();
    let shape = two_md5_servers();
    let path = config_file(&yaml(port, &shape, &redis, &[]));
    let proxy = legate_logged(&path, port, &["--no-watch"]);
    let mut c = Client::connect(port);
    c.expect(&resp(&["SET", "a", "1"]), b"+OK\r\n");
    let clients_of = |p: &Proc| {
        let mut d = Client::connect(p.port);
        d.send(&resp(&["CLIENT", "LIST"]));
        let head = String::from_utf8(d.line()).unwrap();
        let n: usize = head.trim()[1..].parse().unwrap();
        String::from_utf8(d.exact(n + 2)).unwrap()
    };
    // Enough keys that both servers have served a SET: legate's data connection is then the
    // one whose last command was `set` (the adapter's INFO scrape opens short-lived connections
    // of its own, which must not be mistaken for it).
    for i in 0..30 {
        c.expect(&resp(&["SET", &format!("pre{i}"), "v"]), b"+OK\r\n");
    }
    let ids_before = clients_of(&redis[0]);
    let grown = Shape {
        servers: vec![(0, 1), (1, 1), (2, 1)],
        ..shape
    };
    std::fs::write(&path, yaml(port, &grown, &redis, &[])).unwrap();
    // --no-watch: the write alone does nothing; SIGHUP applies it.
    std::process::Command::new("kill")
        .args(["-HUP", &proxy.proc.child.id().to_string()])
        .status()
        .unwrap();
    proxy.wait_log("config generation 2 applied");
    assert_eq!(proxy.log_count("config generation"), 1);
    for i in 0..30 {
        c.expect(&resp(&["SET", &format!("k{i}"), "v"]), b"+OK\r\n");
    }
    // The first server's connection from legate is the same one (same client id) as before.
    let legate_conn = |list: &str| {
        list.lines()
            .filter(|l| l.contains("cmd=set"))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let after = clients_of(&redis[0]);
    let ids_after: Vec<&str> = after.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert!(
        !legate_conn(&ids_before).is_empty(),
        "no legate connection in:\n{ids_before}"
    );
    for id in legate_conn(&ids_before) {
        assert!(
            ids_after.contains(&id.as_str()),
            "connection {id} to an unchanged server was not kept:\n{after}"
        );
    }
}

#[test]
fn sigterm_under_load_answers_everything_read_and_exits_0() {
    let redis: Vec<Proc> = (0..2).map(|_| redis_server()).collect();
    let port = free_port();
    let shape = two_md5_servers();
    let path = config_file(&yaml(port, &shape, &redis, &[]));
    let mut proxy = legate_logged(&path, port, &["--drain-timeout", "5"]);
    let replies = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..8)
        .map(|id| {
            let replies = replies.clone();
            std::thread::spawn(move || {
                let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = std::io::BufReader::new(s);
                let mut seq = 0u64;
                loop {
                    let mut batch = Vec::new();
                    for _ in 0..8 {
                        seq += 1;
                        batch.extend(resp(&["INCR", &format!("ctr:{id}")]));
                    }
                    if w.write_all(&batch).is_err() {
                        break;
                    }
                    // Replies come whole and in order until the proxy closes: counters only grow by one.
                    let mut closed = false;
                    for n in (seq - 7)..=seq {
                        match read_line(&mut r) {
                            Some(l) => {
                                assert_eq!(l, format!(":{n}\r\n"), "client {id}");
                                replies.fetch_add(1, Ordering::Relaxed);
                            }
                            None => {
                                closed = true;
                                break;
                            }
                        }
                    }
                    if closed {
                        break;
                    }
                }
                // The end is a clean close, never a reset.
                let mut rest = Vec::new();
                let end = r.get_mut().read_to_end(&mut rest);
                assert!(end.is_ok(), "client {id}: connection reset: {end:?}");
            })
        })
        .collect();
    while replies.load(Ordering::Relaxed) < 5000 {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::process::Command::new("kill")
        .args(["-TERM", &proxy.proc.child.id().to_string()])
        .status()
        .unwrap();
    let status = proxy.proc.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "legate exit status after SIGTERM");
    for c in clients {
        c.join().expect("a client saw a wrong reply or a reset");
    }
    proxy.wait_log("stopped");
    let _ = Path::new("");
}

/// Clients on connections of their own (a blocking command, a subscription) are closed cleanly
/// when a reload removes their server, and kept when it keeps it.
#[test]
fn a_reload_closes_the_pins_of_a_removed_server_and_keeps_the_others() {
    let redis: Vec<Proc> = (0..2).map(|_| redis_server()).collect();
    let port = free_port();
    let shape = two_md5_servers();
    let path = config_file(&yaml(port, &shape, &redis, &[]));
    let proxy = legate_logged(&path, port, &["--no-watch"]);
    let mut c = Client::connect(port);
    // A key on each server: written through legate, found directly.
    let mut on = |server: usize| {
        (0..200)
            .map(|i| format!("key{i}"))
            .find(|k| {
                c.expect(&resp(&["SET", k, "v"]), b"+OK\r\n");
                let mut d = Client::connect(redis[server].port);
                d.send(&resp(&["EXISTS", k]));
                d.line() == b":1\r\n"
            })
            .expect("a key on that server")
    };
    let (kept, removed) = (on(0), on(1));
    for k in [&kept, &removed] {
        c.expect(&resp(&["DEL", k]), b":1\r\n");
    }
    let mut blocked_kept = Client::connect(port);
    blocked_kept.send(&resp(&["BLPOP", &kept, "0"]));
    let mut blocked_removed = Client::connect(port);
    blocked_removed.send(&resp(&["BLPOP", &removed, "0"]));
    let mut subscriber = Client::connect(port);
    subscriber.send(&resp(&["SUBSCRIBE", &removed]));
    assert!(subscriber.line().starts_with(b"*3"));
    subscriber.exact(b"$9\r\nsubscribe\r\n".len());
    subscriber.line();
    subscriber.line();
    assert_eq!(subscriber.line(), b":1\r\n");
    let blocked_on = |p: &Proc| {
        let mut d = Client::connect(p.port);
        d.send(&resp(&["INFO", "clients"]));
        let n: usize = String::from_utf8(d.line()).unwrap().trim()[1..].parse().unwrap();
        let info = String::from_utf8(d.exact(n + 2)).unwrap();
        info.contains("blocked_clients:1")
    };
    common::eventually("both BLPOPs blocked", || blocked_on(&redis[0]) && blocked_on(&redis[1]));
    let shrunk = Shape {
        servers: vec![(0, 1)],
        ..shape
    };
    std::fs::write(&path, yaml(port, &shrunk, &redis, &[])).unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &proxy.proc.child.id().to_string()])
        .status()
        .unwrap();
    proxy.wait_log("config generation 2 applied");
    // The removed server's clients hear why, at once.
    let err = String::from_utf8(blocked_removed.line()).unwrap();
    assert!(err.starts_with("-ERR "), "{err}");
    let err = String::from_utf8(subscriber.line()).unwrap();
    assert!(
        err.contains("left the pool") && err.contains("subscribe again"),
        "{err}"
    );
    assert!(subscriber.closed());
    common::eventually("the removed server has no blocked client", || !blocked_on(&redis[1]));
    // The kept server's blocked client is still blocked there and gets what is pushed.
    assert!(blocked_on(&redis[0]));
    let mut direct = Client::connect(redis[0].port);
    direct.expect(&resp(&["RPUSH", &kept, "x"]), b":1\r\n");
    blocked_kept.expect(
        b"",
        format!("*2\r\n${}\r\n{kept}\r\n$1\r\nx\r\n", kept.len()).as_bytes(),
    );
}
