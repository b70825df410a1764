//! Failure handling against real servers: timeouts, dead and restarted servers, ejection
//! (placement compared with nutcracker's), partial multi-key failures, AUTH and redis_db.

mod common;

use common::{
    cmd, eventually, free_port, legate, memcached, memcached_on, nutcracker, redis_server, redis_server_with, Client,
    Proc,
};
use std::net::TcpListener;

fn pool(name: &str, port: u16, redis: bool, servers: &[u16], extra: &str) -> String {
    common::pool_yaml(name, port, redis, servers, extra)
}

/// A backend that accepts connections and never answers.
fn black_hole() -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().take(16) {
            held.push(s);
        }
    });
    (port, h)
}

fn dbsize(port: u16) -> u64 {
    let mut c = Client::connect(port);
    c.send(&cmd("DBSIZE"));
    String::from_utf8(c.line()).unwrap().trim()[1..].parse().unwrap()
}

#[test]
fn a_server_that_never_answers_times_out_its_keys_only() {
    let live = redis_server();
    let (hole, _h) = black_hole();
    let port = free_port();
    let _l = legate(&pool("rd", port, true, &[live.port, hole], "  timeout: 200\n"), port);
    let mut c = Client::connect(port);
    let (mut ok, mut timed_out) = (0, 0);
    for i in 0..40 {
        c.send(&cmd(&format!("SET k{i} v{i}")));
        let line = String::from_utf8(c.line()).unwrap();
        if line == "+OK\r\n" {
            ok += 1;
        } else {
            assert!(
                line.starts_with("-ERR request to 127.0.0.1:") && line.contains("timed out"),
                "{line}"
            );
            timed_out += 1;
        }
    }
    assert!(ok > 0 && timed_out > 0, "ok {ok}, timed out {timed_out}");
    assert_eq!(dbsize(live.port), ok);
}

#[test]
fn a_late_reply_after_a_timeout_never_reaches_another_request() {
    // twemproxy #404: after a timeout, replies were handed to the wrong requests.
    let r = redis_server();
    let port = free_port();
    let _l = legate(&pool("rd", port, true, &[r.port], "  timeout: 150\n"), port);
    let mut a = Client::connect(port);
    let mut b = Client::connect(port);
    a.expect(&cmd("SET a value-a"), b"+OK\r\n");
    b.expect(&cmd("SET b value-b"), b"+OK\r\n");
    // A script that keeps the server busy for ~400 ms, then returns a marker.
    let slow = "local t0 = redis.call('TIME') local s0 = t0[1]*1000000+t0[2] \
                while true do local t = redis.call('TIME') if t[1]*1000000+t[2] - s0 > 400000 then break end end \
                return 'LATE'";
    a.send(
        &[
            b"*4\r\n$4\r\nEVAL\r\n".to_vec(),
            format!("${}\r\n{slow}\r\n", slow.len()).into_bytes(),
            b"$1\r\n1\r\n$1\r\na\r\n".to_vec(),
        ]
        .concat(),
    );
    b.send(&cmd("GET b"));
    let first = String::from_utf8(a.line()).unwrap();
    assert!(first.contains("timed out"), "{first}");
    let second = String::from_utf8(b.line()).unwrap();
    assert!(second.contains("timed out") || second == "$7\r\n", "{second}");
    if second == "$7\r\n" {
        assert_eq!(b.line(), b"value-b\r\n");
    }
    // Once the server is free, every request gets its own reply, not the late 'LATE'.
    eventually("server free again", || {
        a.send(&cmd("GET a"));
        let l = a.line();
        if l == b"$7\r\n" {
            assert_eq!(a.line(), b"value-a\r\n");
            true
        } else {
            assert!(String::from_utf8_lossy(&l).contains("timed out"), "{l:?}");
            false
        }
    });
    for _ in 0..20 {
        b.expect(&cmd("GET b"), b"$7\r\nvalue-b\r\n");
        a.expect(&cmd("GET a"), b"$7\r\nvalue-a\r\n");
    }
}

#[test]
fn a_dead_server_fails_fast_others_carry_on_and_it_comes_back() {
    let mut shards: Vec<Proc> = (0..3).map(|_| redis_server()).collect();
    let ports: Vec<u16> = shards.iter().map(|s| s.port).collect();
    let port = free_port();
    let _l = legate(&pool("rd", port, true, &ports, ""), port);
    let mut c = Client::connect(port);
    for i in 0..60 {
        c.expect(&cmd(&format!("SET k{i} v")), b"+OK\r\n");
    }
    let dead = shards.remove(1);
    let dead_port = dead.port;
    let on_dead = dbsize(dead_port);
    assert!(on_dead > 0);
    drop(dead);
    let mut errors = 0;
    for i in 0..60 {
        c.send(&cmd(&format!("GET k{i}")));
        let l = String::from_utf8(c.line()).unwrap();
        if l.starts_with("-ERR") {
            assert!(
                l.contains(&format!("127.0.0.1:{dead_port}")),
                "error should name the server: {l}"
            );
            errors += 1;
        } else {
            assert_eq!(l, "$1\r\n");
            assert_eq!(c.line(), b"v\r\n");
        }
    }
    assert_eq!(errors, on_dead, "exactly the dead server's keys fail");
    let _back = redis_server_with(dead_port, &[]);
    eventually("restarted server used again", || {
        c.send(&cmd("SET k0 again"));
        c.line() == b"+OK\r\n"
    });
    for i in 0..60 {
        c.expect(&cmd(&format!("SET k{i} v2")), b"+OK\r\n");
    }
    assert_eq!(dbsize(dead_port), on_dead);
}

#[test]
fn ejection_rehashes_keys_exactly_as_nutcracker_and_the_server_rejoins() {
    let mut shards: Vec<Proc> = (0..3).map(|_| memcached()).collect();
    let ports: Vec<u16> = shards.iter().map(|s| s.port).collect();
    let eject = "  auto_eject_hosts: true\n  server_failure_limit: 1\n  server_retry_timeout: 60000\n";
    let (np, lp) = (free_port(), free_port());
    let _n = nutcracker(&pool("n", np, false, &ports, eject), np);
    let _l = legate(&pool("l", lp, false, &ports, eject), lp);
    let dead = shards.remove(0);
    let dead_port = dead.port;
    drop(dead);
    // Drive both proxies until each has seen the dead server fail and ejected it.
    for proxy in [np, lp] {
        let mut c = Client::connect(proxy);
        let mut failures = 0;
        for i in 0..40 {
            c.send(format!("set warm{i} 0 0 1\r\nx\r\n").as_bytes());
            let l = c.line();
            if l != b"STORED\r\n" {
                failures += 1;
            }
        }
        assert!(failures >= 1, "the dead server's keys never failed on port {proxy}");
        for i in 0..40 {
            c.expect(format!("set after{i} 0 0 1\r\nx\r\n").as_bytes(), b"STORED\r\n");
        }
    }
    // Placement over the live servers is nutcracker's: what one writes the other reads.
    let mut n = Client::connect(np);
    let mut l = Client::connect(lp);
    for i in 0..200 {
        n.expect(format!("set n{i} 0 0 2\r\nnv\r\n").as_bytes(), b"STORED\r\n");
        l.expect(format!("set l{i} 0 0 2\r\nlv\r\n").as_bytes(), b"STORED\r\n");
    }
    for i in 0..200 {
        l.expect(
            format!("get n{i}\r\n").as_bytes(),
            format!("VALUE n{i} 0 2\r\nnv\r\nEND\r\n").as_bytes(),
        );
        n.expect(
            format!("get l{i}\r\n").as_bytes(),
            format!("VALUE l{i} 0 2\r\nlv\r\nEND\r\n").as_bytes(),
        );
    }
    let _ = dead_port;
}

#[test]
fn an_ejected_server_rejoins_after_the_retry_timeout_once_it_answers() {
    let mut shards: Vec<Proc> = (0..2).map(|_| memcached()).collect();
    let ports: Vec<u16> = shards.iter().map(|s| s.port).collect();
    let eject = "  auto_eject_hosts: true\n  server_failure_limit: 2\n  server_retry_timeout: 300\n";
    let lp = free_port();
    let _l = legate(&pool("l", lp, false, &ports, eject), lp);
    let dead = shards.remove(1);
    let dead_port = dead.port;
    drop(dead);
    let mut c = Client::connect(lp);
    // Failures until ejected; then every key is served by the live server.
    eventually("dead server ejected", || {
        (0..20).all(|i| {
            c.send(format!("set e{i} 0 0 1\r\nx\r\n").as_bytes());
            c.line() == b"STORED\r\n"
        })
    });
    let back = memcached_on(dead_port);
    eventually("restarted server back in the ring", || {
        for i in 0..20 {
            c.expect(format!("set r{i} 0 0 1\r\nx\r\n").as_bytes(), b"STORED\r\n");
        }
        let mut d = Client::connect(back.port);
        d.send(b"stats\r\n");
        let stats = String::from_utf8(d.until(b"END\r\n")).unwrap();
        !stats.contains("STAT curr_items 0\r")
    });
}

#[test]
fn partial_failures_of_multi_key_requests() {
    // memcache: a multi-get answers the hits of the live shards.
    let mut mc: Vec<Proc> = (0..3).map(|_| memcached()).collect();
    let ports: Vec<u16> = mc.iter().map(|s| s.port).collect();
    let port = free_port();
    let _l = legate(&pool("mc", port, false, &ports, ""), port);
    let mut c = Client::connect(port);
    for i in 0..30 {
        c.expect(format!("set m{i} 0 0 1\r\n{}\r\n", i % 10).as_bytes(), b"STORED\r\n");
    }
    drop(mc.remove(2));
    let keys: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
    c.send(format!("get {}\r\n", keys.join(" ")).as_bytes());
    let reply = String::from_utf8(c.until(b"END\r\n")).unwrap();
    let hits = reply.matches("VALUE ").count();
    assert!(hits > 0 && hits < 30, "{hits} hits: {reply}");
    assert!(reply.ends_with("END\r\n") && !reply.contains("ERROR"), "{reply}");
    // Redis: MGET spanning a dead shard is an error naming it; live-only MGET works.
    let mut rd: Vec<Proc> = (0..3).map(|_| redis_server()).collect();
    let ports: Vec<u16> = rd.iter().map(|s| s.port).collect();
    let rport = free_port();
    let _r = legate(&pool("rd", rport, true, &ports, ""), rport);
    let mut c = Client::connect(rport);
    for i in 0..30 {
        c.expect(&cmd(&format!("SET r{i} v")), b"+OK\r\n");
    }
    let dead = rd.remove(0);
    let dead_port = dead.port;
    drop(dead);
    let all: Vec<String> = (0..30).map(|i| format!("r{i}")).collect();
    c.send(&cmd(&format!("MGET {}", all.join(" "))));
    let l = String::from_utf8(c.line()).unwrap();
    assert!(
        l.starts_with("-ERR") && l.contains(&format!("127.0.0.1:{dead_port}")),
        "{l}"
    );
}

#[test]
fn auth_to_the_proxy_and_to_the_backends_and_redis_db() {
    let backend = redis_server_with(free_port(), &["--requirepass", "s3cret"]);
    let port = free_port();
    let _l = legate(
        &pool(
            "rd",
            port,
            true,
            &[backend.port],
            "  redis_auth: s3cret\n  redis_db: 3\n",
        ),
        port,
    );
    let mut c = Client::connect(port);
    c.expect(&cmd("GET k"), b"-NOAUTH Authentication required.\r\n");
    c.expect(&cmd("PING"), b"-NOAUTH Authentication required.\r\n");
    c.expect(
        &cmd("AUTH wrong"),
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    );
    c.expect(&cmd("GET k"), b"-NOAUTH Authentication required.\r\n");
    c.expect(&cmd("AUTH s3cret"), b"+OK\r\n");
    c.expect(&cmd("SET k v"), b"+OK\r\n");
    c.expect(&cmd("GET k"), b"$1\r\nv\r\n");
    c.expect(&cmd("AUTH default s3cret"), b"+OK\r\n");
    // The key is in database 3 of the backend, reached with the backend's password.
    let mut d = Client::connect(backend.port);
    d.expect(&cmd("AUTH s3cret"), b"+OK\r\n");
    d.expect(&cmd("GET k"), b"$-1\r\n");
    d.expect(&cmd("SELECT 3"), b"+OK\r\n");
    d.expect(&cmd("GET k"), b"$1\r\nv\r\n");
    // A pool without redis_auth refuses AUTH like Redis 7.0 does.
    let open = redis_server();
    let p2 = free_port();
    let _l2 = legate(&pool("rd", p2, true, &[open.port], ""), p2);
    let mut c = Client::connect(p2);
    c.expect(
        &cmd("AUTH x"),
        b"-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n",
    );
    c.expect(&cmd("SET k v"), b"+OK\r\n");
    // A wrong backend password: requests fail with a clear error, not a hang.
    let p3 = free_port();
    let _l3 = legate(&pool("rd", p3, true, &[backend.port], "  redis_auth: wrong\n"), p3);
    let mut c = Client::connect(p3);
    c.expect(&cmd("AUTH wrong"), b"+OK\r\n");
    c.send(&cmd("GET k"));
    let l = String::from_utf8(c.line()).unwrap();
    assert!(
        l.starts_with("-ERR cannot connect") && l.contains("AUTH/SELECT refused"),
        "{l}"
    );
}

/// `redis_user`: legate authenticates to its servers as an ACL user (`AUTH <user> <password>`),
/// where the `default` user is switched off; clients may give that user's name or `default`.
#[test]
fn an_acl_user_to_the_backends() {
    let backend = redis_server_with(
        free_port(),
        &[
            "--user", "app", "on", ">pw", "~*", "&*", "+@all", "--user", "default", "off",
        ],
    );
    // The backend takes only the named user.
    let mut d = Client::connect(backend.port);
    d.expect(&cmd("AUTH app pw"), b"+OK\r\n");
    let mut anon = Client::connect(backend.port);
    anon.expect(
        &cmd("AUTH pw"),
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    );
    let port = free_port();
    let _l = legate(
        &pool(
            "acl",
            port,
            true,
            &[backend.port],
            "  redis_auth: pw\n  redis_user: app\n",
        ),
        port,
    );
    let mut c = Client::connect(port);
    c.expect(&cmd("GET k"), b"-NOAUTH Authentication required.\r\n");
    c.expect(
        &cmd("AUTH other pw"),
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    );
    c.expect(&cmd("AUTH app pw"), b"+OK\r\n");
    c.expect(&cmd("SET acl v"), b"+OK\r\n");
    d.expect(&cmd("GET acl"), b"$1\r\nv\r\n");
    let mut c2 = Client::connect(port);
    c2.expect(&cmd("AUTH pw"), b"+OK\r\n");
    c2.expect(&cmd("GET acl"), b"$1\r\nv\r\n");
    // redis_user without redis_auth is refused at load.
    let bad = legate::config::Config::parse(
        "p:\n  listen: 127.0.0.1:1\n  redis: true\n  redis_user: app\n  servers: ['a:1:1']\n",
    );
    assert!(bad.is_err());
}
