//! Transactions, blocking commands and pub/sub through legate to real redis-servers: the
//! sessions that need a server connection of their own (DESIGN.md "Sessions: shared and
//! pinned").

mod common;

use common::resp::Value;
use common::{cmd, eventually, free_port, legate, pool_yaml, redis_server, Client, Legate, Proc};
use std::io::BufRead;
use std::time::{Duration, Instant};

struct Setup {
    backends: Vec<Proc>,
    legate: Legate,
}

fn setup_with(shards: usize, extra: &str) -> Setup {
    let backends: Vec<Proc> = (0..shards).map(|_| redis_server()).collect();
    let port = free_port();
    let ports: Vec<u16> = backends.iter().map(|b| b.port).collect();
    let extra = format!("  hash_tag: \"{{}}\"\n{extra}");
    let legate = legate(&pool_yaml("pin", port, true, &ports, &extra), port);
    Setup { backends, legate }
}

/// `s` as a RESP bulk string.
fn bulk(s: &str) -> String {
    format!("${}\r\n{s}\r\n", s.len())
}

fn setup() -> Setup {
    setup_with(3, "")
}

impl Setup {
    fn client(&self) -> Client {
        Client::connect(self.legate.proc.port)
    }

    fn direct(&self, shard: usize) -> Client {
        Client::connect(self.backends[shard].port)
    }

    /// The shard `key` lives on: written through legate, found directly.
    fn shard_of(&self, key: &str) -> usize {
        let mut c = self.client();
        c.expect(&cmd(&format!("SET {key} probe")), b"+OK\r\n");
        let shard = (0..self.backends.len())
            .find(|&i| self.direct(i).words(&format!("EXISTS {key}")).int() == 1)
            .expect("the key is on some shard");
        c.expect(&cmd(&format!("DEL {key}")), b":1\r\n");
        shard
    }

    /// Two keys (`prefix0`, `prefix1`, …) on different shards.
    fn keys_on_two_shards(&self, prefix: &str) -> (String, String) {
        let first = format!("{prefix}0");
        let s0 = self.shard_of(&first);
        let other = (1..100)
            .map(|i| format!("{prefix}{i}"))
            .find(|k| self.shard_of(k) != s0)
            .expect("a key on another shard");
        (first, other)
    }

    /// `blocked_clients` of one backend's INFO, read directly.
    fn blocked_on(&self, shard: usize) -> i64 {
        let info = self.direct(shard).words("INFO clients").text();
        info.lines()
            .find_map(|l| l.strip_prefix("blocked_clients:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("INFO has blocked_clients")
    }
}

#[test]
fn a_watched_key_changed_by_another_client_makes_exec_return_nil() {
    let s = setup();
    let mut c = s.client();
    let mut other = s.client();
    c.expect(&cmd("SET balance{u1} 10"), b"+OK\r\n");
    c.expect(&cmd("WATCH balance{u1}"), b"+OK\r\n");
    c.expect(&cmd("GET balance{u1}"), b"$2\r\n10\r\n");
    other.expect(&cmd("SET balance{u1} 99"), b"+OK\r\n");
    c.expect(&cmd("MULTI"), b"+OK\r\n");
    c.expect(&cmd("SET balance{u1} 11"), b"+QUEUED\r\n");
    c.expect(&cmd("EXEC"), b"*-1\r\n");
    c.expect(&cmd("GET balance{u1}"), b"$2\r\n99\r\n");
    // Unchanged, the transaction runs; and after EXEC nothing is watched any more.
    c.expect(&cmd("WATCH balance{u1} log{u1}"), b"+OK\r\n");
    c.expect(&cmd("MULTI"), b"+OK\r\n");
    c.expect(&cmd("INCRBY balance{u1} 1"), b"+QUEUED\r\n");
    c.expect(&cmd("RPUSH log{u1} +1"), b"+QUEUED\r\n");
    c.expect(&cmd("EXEC"), b"*2\r\n:100\r\n:1\r\n");
    other.expect(&cmd("SET balance{u1} 5"), b"+OK\r\n");
    c.expect(&cmd("MULTI"), b"+OK\r\n");
    c.expect(&cmd("INCR balance{u1}"), b"+QUEUED\r\n");
    c.expect(&cmd("EXEC"), b"*1\r\n:6\r\n");
    // UNWATCH forgets the watch: a later change does not abort.
    c.expect(&cmd("WATCH balance{u1}"), b"+OK\r\n");
    c.expect(&cmd("UNWATCH"), b"+OK\r\n");
    other.expect(&cmd("SET balance{u1} 1"), b"+OK\r\n");
    c.expect(&cmd("MULTI"), b"+OK\r\n");
    c.expect(&cmd("INCR balance{u1}"), b"+QUEUED\r\n");
    c.expect(&cmd("EXEC"), b"*1\r\n:2\r\n");
}

#[test]
fn a_cross_shard_command_inside_multi_aborts_the_whole_transaction() {
    let s = setup();
    let (a, b) = s.keys_on_two_shards("acct");
    let mut c = s.client();
    c.expect(&cmd("MULTI"), b"+OK\r\n");
    c.expect(&cmd(&format!("SET {a} 1")), b"+QUEUED\r\n");
    c.send(&cmd(&format!("SET {b} 2")));
    let refused = String::from_utf8(c.line()).unwrap();
    assert!(
        refused.starts_with("-CROSSSLOT ") && refused.contains("EXEC will abort"),
        "{refused}"
    );
    c.expect(&cmd("PING"), b"+QUEUED\r\n");
    c.expect(
        &cmd("EXEC"),
        b"-EXECABORT Transaction discarded because of previous errors.\r\n",
    );
    c.expect(&cmd(&format!("EXISTS {a}")), b":0\r\n");
    c.expect(&cmd(&format!("EXISTS {b}")), b":0\r\n");
    // A command that needs every shard aborts it too, and unknown commands as in Redis.
    c.expect(&cmd("MULTI"), b"+OK\r\n");
    c.expect(&cmd(&format!("SET {a} 1")), b"+QUEUED\r\n");
    c.send(&cmd("DBSIZE"));
    assert!(c.line().starts_with(b"-ERR 'DBSIZE' inside MULTI needs every shard"));
    c.expect(
        &cmd("EXEC"),
        b"-EXECABORT Transaction discarded because of previous errors.\r\n",
    );
    c.expect(&cmd("MULTI"), b"+OK\r\n");
    c.send(&cmd("NOSUCH x"));
    assert!(c.line().starts_with(b"-ERR unknown command 'NOSUCH'"));
    c.expect(
        &cmd("EXEC"),
        b"-EXECABORT Transaction discarded because of previous errors.\r\n",
    );
    c.expect(&cmd(&format!("EXISTS {a}")), b":0\r\n");
    // Nesting and EXEC without MULTI are Redis's errors.
    c.expect(&cmd("EXEC"), b"-ERR EXEC without MULTI\r\n");
    c.expect(&cmd("MULTI"), b"+OK\r\n");
    c.expect(&cmd("MULTI"), b"-ERR MULTI calls can not be nested\r\n");
    c.expect(&cmd("WATCH x"), b"-ERR WATCH inside MULTI is not allowed\r\n");
    c.expect(&cmd("DISCARD"), b"+OK\r\n");
    // Keyless commands queued before the transaction has a shard run with it, in order.
    c.expect(&cmd("MULTI"), b"+OK\r\n");
    c.expect(&cmd("PING"), b"+QUEUED\r\n");
    c.expect(&cmd("ECHO hi"), b"+QUEUED\r\n");
    c.expect(&cmd(&format!("INCR {b}")), b"+QUEUED\r\n");
    c.expect(&cmd("EXEC"), b"*3\r\n+PONG\r\n$2\r\nhi\r\n:1\r\n");
    c.expect(&cmd("MULTI"), b"+OK\r\n");
    c.expect(&cmd("EXEC"), b"*0\r\n");
}

/// A client blocked for 30 s on BLPOP (longer than the pool's request `timeout`) delays no other
/// client of that shard, even with one shared server connection, and gets its nil at 30 s.
#[test]
fn a_client_blocked_30s_on_blpop_stalls_nobody_and_keeps_its_timeout() {
    let s = setup_with(1, "  timeout: 500\n  server_connections: 1\n");
    let mut blocked = s.client();
    let mut other = s.client();
    let sample = |c: &mut Client, n: usize| -> Vec<Duration> {
        (0..n)
            .map(|i| {
                let t = Instant::now();
                c.expect(&cmd(&format!("SET k{i} v")), b"+OK\r\n");
                t.elapsed()
            })
            .collect()
    };
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let before = median(sample(&mut other, 500));
    let start = Instant::now();
    blocked.send(&cmd("BLPOP jobs 30"));
    eventually("the BLPOP is blocked on the server", || s.blocked_on(0) == 1);
    let mut during = Vec::new();
    let mut worst = Duration::ZERO;
    while start.elapsed() < Duration::from_secs(28) {
        let d = sample(&mut other, 50);
        worst = worst.max(*d.iter().max().unwrap());
        during.extend(d);
        std::thread::sleep(Duration::from_millis(200));
    }
    let during_median = median(during);
    println!(
        "median SET latency: {:?} before, {:?} while a client is blocked (ratio {:.2}); worst {:?}",
        before,
        during_median,
        during_median.as_secs_f64() / before.as_secs_f64(),
        worst
    );
    assert!(
        worst < Duration::from_secs(2),
        "another client was stalled for {worst:?}"
    );
    blocked.expect(b"", b"*-1\r\n");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(29), "BLPOP 30 answered after {waited:?}");
    // The same connection serves the client again.
    blocked.expect(&cmd("RPUSH jobs a"), b":1\r\n");
    blocked.expect(&cmd("BLPOP jobs 0"), b"*2\r\n$4\r\njobs\r\n$1\r\na\r\n");
}

#[test]
fn a_client_killed_while_blocked_loses_no_element() {
    let s = setup();
    let shard = s.shard_of("queue{q}");
    let mut pusher = s.client();
    for round in 0..10 {
        let mut blocked = s.client();
        blocked.send(&cmd("BLPOP queue{q} 0"));
        eventually("the BLPOP is blocked on the server", || s.blocked_on(shard) == 1);
        drop(blocked);
        // legate closes that client's server connection: nothing is blocked for it any more.
        eventually("the dead client's BLPOP is gone from the server", || {
            s.blocked_on(shard) == 0
        });
        pusher.expect(&cmd(&format!("RPUSH queue{{q}} job{round}")), b":1\r\n");
        pusher.expect(
            &cmd("LRANGE queue{q} 0 -1"),
            format!("*1\r\n${}\r\njob{round}\r\n", 3 + round.to_string().len()).as_bytes(),
        );
        pusher.expect(&cmd("DEL queue{q}"), b":1\r\n");
    }
    // A live blocked client gets what is pushed, on any of the blocking commands.
    let mut waiter = s.client();
    waiter.send(&cmd("BRPOPLPUSH src{q} dst{q} 0"));
    eventually("blocked", || s.blocked_on(shard) == 1);
    pusher.expect(&cmd("RPUSH src{q} x"), b":1\r\n");
    waiter.expect(b"", b"$1\r\nx\r\n");
    pusher.expect(&cmd("LRANGE dst{q} 0 -1"), b"*1\r\n$1\r\nx\r\n");
    waiter.expect(&cmd("XADD st{q} 1-1 f v"), b"$3\r\n1-1\r\n");
    waiter.send(&cmd("XREAD BLOCK 0 STREAMS st{q} $"));
    eventually("XREAD blocked", || s.blocked_on(shard) == 1);
    pusher.expect(&cmd("XADD st{q} 2-1 f w"), b"$3\r\n2-1\r\n");
    let got = waiter.value();
    assert_eq!(got.items()[0].items()[0].text(), "st{q}");
}

/// A client pipelining commands behind a blocking one has them run after it, as in Redis.
#[test]
fn commands_pipelined_behind_a_blocking_one_wait_for_it() {
    let s = setup();
    let mut c = s.client();
    let mut pusher = s.client();
    // Before the BLPOP: shard_of writes the key, which would make a BLPOP behind it fail.
    let shard = s.shard_of("work{w}");
    let mut pipeline = cmd("BLPOP work{w} 0");
    pipeline.extend(cmd("GET after{w}"));
    c.send(&pipeline);
    eventually("blocked", || s.blocked_on(shard) == 1);
    pusher.expect(&cmd("SET after{w} set-later"), b"+OK\r\n");
    pusher.expect(&cmd("RPUSH work{w} item"), b":1\r\n");
    c.expect(b"", b"*2\r\n$7\r\nwork{w}\r\n$4\r\nitem\r\n");
    c.expect(b"", b"$9\r\nset-later\r\n");
}

#[test]
fn a_thousand_subscribers_receive_every_message_in_order() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let s = setup();
    let mut subscribers: Vec<Client> = (0..1000).map(|_| s.client()).collect();
    for c in &mut subscribers {
        c.send(&cmd("SUBSCRIBE news"));
    }
    for c in &mut subscribers {
        c.expect(b"", b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n");
    }
    let mut publisher = s.client();
    for i in 0..100 {
        publisher.expect(&cmd(&format!("PUBLISH news m{i}")), b":1000\r\n");
    }
    for c in &mut subscribers {
        for i in 0..100 {
            let m = format!("m{i}");
            c.expect(
                b"",
                format!("*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n${}\r\n{m}\r\n", m.len()).as_bytes(),
            );
        }
    }
    publisher.expect(
        &cmd("PUBSUB NUMSUB news other"),
        b"*4\r\n$4\r\nnews\r\n:1000\r\n$5\r\nother\r\n:0\r\n",
    );
}

#[test]
fn subscriptions_span_shards_and_patterns_hear_every_shard() {
    let s = setup();
    let (a, b) = s.keys_on_two_shards("chan");
    let (ba, bb) = (bulk(&a), bulk(&b));
    let mut sub = s.client();
    let mut p = s.client();
    sub.send(&cmd(&format!("SUBSCRIBE {a} {b}")));
    sub.expect(b"", format!("*3\r\n$9\r\nsubscribe\r\n{ba}:1\r\n").as_bytes());
    sub.expect(b"", format!("*3\r\n$9\r\nsubscribe\r\n{bb}:2\r\n").as_bytes());
    sub.expect(
        &cmd("PSUBSCRIBE chan*"),
        b"*3\r\n$10\r\npsubscribe\r\n$5\r\nchan*\r\n:3\r\n",
    );
    // RESP2 subscribed mode: only (un)subscribe, PING, QUIT, RESET.
    sub.expect(&cmd("PING"), b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    sub.send(&cmd("GET x"));
    assert!(sub.line().starts_with(b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE"));
    p.expect(&cmd(&format!("PUBLISH {b} hello")), b":2\r\n");
    sub.expect(b"", format!("*3\r\n$7\r\nmessage\r\n{bb}$5\r\nhello\r\n").as_bytes());
    sub.expect(
        b"",
        format!("*4\r\n$8\r\npmessage\r\n$5\r\nchan*\r\n{bb}$5\r\nhello\r\n").as_bytes(),
    );
    let mut channels: Vec<String> = p
        .words("PUBSUB CHANNELS chan*")
        .items()
        .iter()
        .map(Value::text)
        .collect();
    channels.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(channels, want);
    p.expect(&cmd("PUBSUB NUMPAT"), b":1\r\n");
    sub.expect(
        &cmd(&format!("UNSUBSCRIBE {a}")),
        format!("*3\r\n$11\r\nunsubscribe\r\n{ba}:2\r\n").as_bytes(),
    );
    p.expect(&cmd(&format!("PUBLISH {a} gone")), b":1\r\n");
    sub.expect(
        b"",
        format!("*4\r\n$8\r\npmessage\r\n$5\r\nchan*\r\n{ba}$4\r\ngone\r\n").as_bytes(),
    );
    sub.expect(
        &cmd("PUNSUBSCRIBE"),
        b"*3\r\n$12\r\npunsubscribe\r\n$5\r\nchan*\r\n:1\r\n",
    );
    sub.expect(
        &cmd("UNSUBSCRIBE"),
        format!("*3\r\n$11\r\nunsubscribe\r\n{bb}:0\r\n").as_bytes(),
    );
    // Out of subscribed mode: ordinary commands again.
    sub.expect(&cmd("SET x 1"), b"+OK\r\n");
    p.expect(&cmd(&format!("PUBLISH {b} nobody")), b":0\r\n");
    sub.expect(&cmd("UNSUBSCRIBE"), b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n");
}

#[test]
fn resp3_pushes_interleave_with_replies() {
    let s = setup();
    let mut sub = s.client();
    let mut p = s.client();
    sub.send(&cmd("HELLO 3"));
    assert_eq!(sub.line(), b"%7\r\n");
    sub.until(b"*0\r\n");
    sub.expect(&cmd("SUBSCRIBE feed"), b">3\r\n$9\r\nsubscribe\r\n$4\r\nfeed\r\n:1\r\n");
    sub.expect(&cmd("SET k v"), b"+OK\r\n");
    p.expect(&cmd("PUBLISH feed one"), b":1\r\n");
    sub.expect(b"", b">3\r\n$7\r\nmessage\r\n$4\r\nfeed\r\n$3\r\none\r\n");
    sub.expect(&cmd("GET k"), b"$1\r\nv\r\n");
    sub.expect(
        &cmd("UNSUBSCRIBE feed"),
        b">3\r\n$11\r\nunsubscribe\r\n$4\r\nfeed\r\n:0\r\n",
    );
}

/// A shard lost while a client is subscribed there closes the client, as a restarted Redis
/// would; client libraries reconnect and subscribe again.
#[test]
fn a_subscribed_client_is_closed_when_its_shard_is_lost() {
    let mut s = setup();
    let shard = s.shard_of("alerts");
    let mut sub = s.client();
    sub.expect(
        &cmd("SUBSCRIBE alerts"),
        b"*3\r\n$9\r\nsubscribe\r\n$6\r\nalerts\r\n:1\r\n",
    );
    s.backends[shard].child.kill().unwrap();
    let line = String::from_utf8(sub.line()).unwrap();
    assert!(line.starts_with("-ERR ") && line.contains("subscribe again"), "{line}");
    assert!(sub.closed());
}

#[test]
fn connections_of_their_own_are_capped_per_server() {
    let s = setup_with(1, "  max_pinned_connections: 2\n");
    let mut a = s.client();
    let mut b = s.client();
    a.send(&cmd("BLPOP l1 0"));
    b.send(&cmd("BLPOP l2 0"));
    eventually("two blocked", || s.blocked_on(0) == 2);
    let mut c = s.client();
    c.send(&cmd("BLPOP l3 0"));
    let refused = String::from_utf8(c.line()).unwrap();
    assert!(refused.contains("max_pinned_connections (2)"), "{refused}");
    c.send(&cmd("WATCH k"));
    assert!(c.line().starts_with(b"-ERR cannot serve this command now"));
    // Shared connections are not counted: ordinary commands still work.
    c.expect(&cmd("RPUSH l1 x"), b":1\r\n");
    a.expect(b"", b"*2\r\n$2\r\nl1\r\n$1\r\nx\r\n");
    // a's connection went back idle: c can have it.
    c.expect(&cmd("WATCH k"), b"+OK\r\n");
    c.expect(&cmd("UNWATCH"), b"+OK\r\n");
    drop(b);
    let v = c.words("RPUSH l2 y");
    assert_eq!(v, Value::Int(1));
}

/// `INFO`'s `blocked_clients` counts legate's clients blocked on a command, once the server has
/// blocked them: what a client waiting for another to block reads (Redis's own test suite does).
#[test]
fn info_counts_the_clients_blocked_on_a_command() {
    let s = setup();
    let mut c = s.client();
    let mut blocked = || {
        let info = c.words("INFO clients").text();
        info.lines()
            .find_map(|l| l.strip_prefix("blocked_clients:"))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .expect("INFO has blocked_clients")
    };
    assert_eq!(blocked(), 0);
    let mut b = s.client();
    b.send(&cmd("BLPOP queue 0"));
    eventually("INFO says one client is blocked", || blocked() == 1);
    let mut p = s.client();
    p.expect(&cmd("RPUSH queue job"), b":1\r\n");
    b.expect(b"", b"*2\r\n$5\r\nqueue\r\n$3\r\njob\r\n");
    eventually("INFO says nobody is blocked", || blocked() == 0);
}

/// Pub/sub confirmations and messages are pushes, which Redis sends whatever `CLIENT REPLY`
/// says; replies to other commands stay off.
#[test]
fn client_reply_off_keeps_pubsub_confirmations_and_messages() {
    let s = setup();
    let mut sub = s.client();
    let mut p = s.client();
    sub.send(&cmd("CLIENT REPLY OFF"));
    sub.expect(&cmd("SUBSCRIBE news"), b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n");
    p.expect(&cmd("PUBLISH news hi"), b":1\r\n");
    sub.expect(b"", b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n");
    sub.expect(&cmd("PSUBSCRIBE n*"), b"*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:2\r\n");
    sub.expect(
        &cmd("PUNSUBSCRIBE n*"),
        b"*3\r\n$12\r\npunsubscribe\r\n$2\r\nn*\r\n:1\r\n",
    );
    sub.expect(
        &cmd("UNSUBSCRIBE news"),
        b"*3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:0\r\n",
    );
    sub.send(&cmd("SET k v"));
    sub.expect(&cmd("CLIENT REPLY ON"), b"+OK\r\n");
}

/// Once UNSUBSCRIBE is confirmed the servers have unsubscribed the client: a PUBLISH sent after
/// the confirmation reaches nobody (legate used to confirm before the server had).
#[test]
fn a_publish_after_the_unsubscribe_confirmation_reaches_nobody() {
    let s = setup();
    let mut sub = s.client();
    let mut p = s.client();
    for i in 0..30 {
        let ch = format!("ch{i}");
        let bch = bulk(&ch);
        sub.send(&cmd(&format!("SUBSCRIBE {ch} other")));
        sub.expect(b"", format!("*3\r\n$9\r\nsubscribe\r\n{bch}:1\r\n").as_bytes());
        sub.expect(b"", b"*3\r\n$9\r\nsubscribe\r\n$5\r\nother\r\n:2\r\n");
        sub.expect(
            &cmd(&format!("UNSUBSCRIBE {ch}")),
            format!("*3\r\n$11\r\nunsubscribe\r\n{bch}:1\r\n").as_bytes(),
        );
        p.expect(&cmd(&format!("PUBLISH {ch} x")), b":0\r\n");
        // Unsubscribing from everything closes the subscribed connections, after the servers
        // have confirmed.
        sub.expect(
            &cmd("UNSUBSCRIBE"),
            b"*3\r\n$11\r\nunsubscribe\r\n$5\r\nother\r\n:0\r\n",
        );
        p.expect(&cmd("PUBLISH other x"), b":0\r\n");
    }
}

/// SCRIPT KILL reaches a busy script although the script's client shares legate's connection
/// to the server (it used to wait behind the script there, for ever). Clients land on either
/// of legate's two workers: six rounds make a shared connection all but certain.
#[test]
fn script_kill_stops_a_busy_script_whatever_connection_it_runs_on() {
    let backend = common::redis_server_with(free_port(), &["--lua-time-limit", "10"]);
    let port = free_port();
    let legate = legate(&pool_yaml("k", port, true, &[backend.port], ""), port);
    for _ in 0..6 {
        let mut a = Client::connect(legate.proc.port);
        let script = "while true do end";
        a.send(format!("*3\r\n$4\r\nEVAL\r\n${}\r\n{script}\r\n$1\r\n0\r\n", script.len()).as_bytes());
        let mut k = Client::connect(legate.proc.port);
        k.r.get_ref().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        eventually("SCRIPT KILL answers OK", || {
            k.send(&cmd("SCRIPT KILL"));
            let line = String::from_utf8(k.line()).unwrap();
            assert!(line == "+OK\r\n" || line.starts_with("-NOTBUSY"), "{line}");
            line == "+OK\r\n"
        });
        let killed = String::from_utf8(a.line()).unwrap();
        assert!(killed.contains("Script killed by user"), "{killed}");
    }
}

/// CLIENT UNBLOCK (with legate's CLIENT ID) unblocks a client blocked through legate: the
/// server holding its connection does it, and answers.
#[test]
fn client_unblock_unblocks_a_client_blocked_through_legate() {
    let s = setup();
    let shard = s.shard_of("q");
    let mut b = s.client();
    let id = b.words("CLIENT ID").int();
    let mut c = s.client();
    c.expect(&cmd(&format!("CLIENT UNBLOCK {id}")), b":0\r\n");
    b.send(&cmd("BLPOP q 0"));
    eventually("blocked", || s.blocked_on(shard) == 1);
    c.expect(&cmd(&format!("CLIENT UNBLOCK {id}")), b":1\r\n");
    b.expect(b"", b"*-1\r\n");
    b.send(&cmd("BLPOP q 0"));
    eventually("blocked again", || s.blocked_on(shard) == 1);
    c.expect(&cmd(&format!("CLIENT UNBLOCK {id} ERROR")), b":1\r\n");
    b.expect(b"", b"-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n");
    c.expect(
        &cmd("CLIENT UNBLOCK abc"),
        b"-ERR value is not an integer or out of range\r\n",
    );
    c.expect(
        &cmd(&format!("CLIENT UNBLOCK {id} LATER")),
        b"-ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR\r\n",
    );
    // Still an ordinary blocked client afterwards.
    b.send(&cmd("BLPOP q 0"));
    eventually("blocked a third time", || s.blocked_on(shard) == 1);
    c.expect(&cmd("RPUSH q x"), b":1\r\n");
    b.expect(b"", b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n");
}

/// SAVE and SHUTDOWN inside MULTI get Redis's own refusal (they are `no-multi` there), and EXEC
/// aborts.
#[test]
fn no_multi_commands_are_refused_in_redis_words() {
    let s = setup();
    let mut c = s.client();
    for command in ["SAVE", "SHUTDOWN"] {
        c.expect(&cmd("MULTI"), b"+OK\r\n");
        c.expect(&cmd("SET foo bar"), b"+QUEUED\r\n");
        c.expect(&cmd(command), b"-ERR Command not allowed inside a transaction\r\n");
        c.expect(
            &cmd("EXEC"),
            b"-EXECABORT Transaction discarded because of previous errors.\r\n",
        );
        c.expect(&cmd("GET foo"), b"$-1\r\n");
    }
}

/// A RESP EVAL of `script` with no keys.
fn eval0(script: &str) -> Vec<u8> {
    format!("*3\r\n$4\r\nEVAL\r\n${}\r\n{script}\r\n$1\r\n0\r\n", script.len()).into_bytes()
}

/// PING is the servers' to answer while a script runs, as with one Redis: `-BUSY` while it runs on a shard
/// (whichever worker's shared connection the script holds), then SCRIPT KILL from a third client
/// ends it; a PING pipelined behind the script by its own client is answered after it, `PONG`.
#[test]
fn ping_hears_busy_from_a_running_script_until_script_kill() {
    let s = setup_with(2, "");
    for b in 0..2 {
        s.direct(b).expect(&cmd("CONFIG SET lua-time-limit 10"), b"+OK\r\n");
    }
    let mut a = s.client();
    a.expect(&cmd("PING"), b"+PONG\r\n");
    a.expect(&cmd("PING hello"), b"$5\r\nhello\r\n");
    a.expect(
        &cmd("PING a b"),
        b"-ERR wrong number of arguments for 'ping' command\r\n",
    );
    for round in 0..3 {
        let mut a = s.client();
        a.send(&eval0("while true do end"));
        a.send(&cmd("PING"));
        let mut b = s.client();
        eventually("PING answers -BUSY", || {
            b.send(&cmd("PING"));
            let line = String::from_utf8(b.line()).unwrap();
            assert!(line == "+PONG\r\n" || line.starts_with("-BUSY "), "{line}");
            line.starts_with("-BUSY ")
        });
        let mut k = s.client();
        k.expect(&cmd("SCRIPT KILL"), b"+OK\r\n");
        let killed = String::from_utf8(a.line()).unwrap();
        assert!(killed.contains("Script killed by user"), "round {round}: {killed}");
        assert_eq!(a.line(), b"+PONG\r\n");
        eventually("PING answers PONG again", || {
            b.send(&cmd("PING"));
            b.line() == b"+PONG\r\n"
        });
        // The client goes on with its shared connections.
        a.expect(&cmd("SET after{p} 1"), b"+OK\r\n");
        a.send(&cmd("PING"));
        a.send(&cmd("GET after{p}"));
        assert_eq!(a.line(), b"+PONG\r\n");
        assert_eq!(a.exact(7), b"$1\r\n1\r\n");
    }
    // A shard that is down, and no script running: legate answers PING itself, as it answers
    // it whenever no server can be busy (health checks PING often).
    let mut c = s.client();
    drop(s.backends);
    c.expect(&cmd("PING"), b"+PONG\r\n");
}

/// With `auto_eject_hosts`, a server ejected from the ring is not asked: the pool answers PING
/// with the servers its keys go to.
#[test]
fn ping_leaves_out_an_ejected_server() {
    let mut s = setup_with(
        2,
        "  auto_eject_hosts: true\n  server_failure_limit: 1\n  server_retry_timeout: 60000\n",
    );
    let mut c = s.client();
    c.expect(&cmd("PING"), b"+PONG\r\n");
    drop(s.backends.remove(1));
    eventually("the dead server ejected", || {
        (0..20).all(|i| {
            c.send(&cmd(&format!("SET e{i} x")));
            c.line() == b"+OK\r\n"
        })
    });
    c.expect(&cmd("PING"), b"+PONG\r\n");
}

/// Read a raw SYNC reply from `c`: the `$<len>` line (after any newlines the server sends while
/// it prepares the snapshot), then the RDB payload, which no CRLF follows.
fn read_rdb(c: &mut Client) -> Vec<u8> {
    let mut line = Vec::new();
    while line.is_empty() || line == b"\n" {
        line.clear();
        assert!(
            c.r.read_until(b'\n', &mut line).unwrap() > 0,
            "closed before the snapshot"
        );
    }
    let text = String::from_utf8(line).unwrap();
    let len: usize = text
        .strip_prefix('$')
        .and_then(|t| t.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("not a bulk length: {text:?}"));
    c.exact(len)
}

/// A replica through a pool of one server: SYNC gets the RDB, then the writes other clients
/// make, and what it sends (REPLCONF ACK) reaches the server.
#[test]
fn sync_through_a_one_server_pool_streams_the_snapshot_then_the_writes() {
    let s = setup_with(1, "  redis_admin_commands: true\n");
    let mut w = s.client();
    w.expect(&cmd("SET before 1"), b"+OK\r\n");
    let mut r = s.client();
    r.send(b"SYNC\r\n");
    let rdb = read_rdb(&mut r);
    assert!(rdb.starts_with(b"REDIS0"), "{:?}", &rdb[..rdb.len().min(16)]);
    assert!(rdb.windows(6).any(|x| x == b"before"), "the snapshot has the key");
    w.expect(&cmd("SET during 2"), b"+OK\r\n");
    let stream = String::from_utf8_lossy(&r.until(b"during\r\n$1\r\n2\r\n")).to_lowercase();
    assert!(
        stream.ends_with("*3\r\n$3\r\nset\r\n$6\r\nduring\r\n$1\r\n2\r\n"),
        "{stream}"
    );
    r.send(&cmd("REPLCONF ACK 12345"));
    eventually("the server has the replica's ACK", || {
        s.direct(0).words("INFO replication").text().contains("offset=12345")
    });
    // The replica's connection is its own: closing it leaves the pool serving.
    drop(r);
    w.expect(&cmd("GET during"), b"$1\r\n2\r\n");
    eventually("the server dropped the replica", || {
        s.direct(0)
            .words("INFO replication")
            .text()
            .contains("connected_slaves:0")
    });
}

/// A replica that does not read costs legate a few MB: the rest waits at the server.
#[test]
fn a_replica_that_does_not_read_does_not_grow_legate() {
    let s = setup_with(1, "  redis_admin_commands: true\n");
    let pid = s.legate.proc.child.id();
    let mut r = s.client();
    r.send(b"SYNC\r\n");
    read_rdb(&mut r);
    let before = common::rss_kib(pid);
    let mut w = s.client();
    let value = "x".repeat(1024 * 1024);
    for i in 0..48 {
        w.expect(&cmd(&format!("SET big{i} {value}")), b"+OK\r\n");
    }
    w.expect(&cmd("PING"), b"+PONG\r\n");
    let after = common::rss_kib(pid);
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} KiB to {after} KiB for a replica that does not read"
    );
    // It reads at last: the stream is whole, in order.
    for i in 0..48 {
        let key = format!("big{i}");
        let head = format!("${}\r\n{key}\r\n$1048576\r\n", key.len());
        r.until(head.as_bytes());
    }
}

/// SYNC is refused with a reason in a pool of several servers, and without
/// `redis_admin_commands`.
#[test]
fn sync_is_refused_where_no_one_server_is_the_pool() {
    let s = setup_with(2, "  redis_admin_commands: true\n");
    let mut c = s.client();
    for command in ["SYNC", "PSYNC ? -1"] {
        c.send(&cmd(command));
        let line = String::from_utf8(c.line()).unwrap();
        assert!(
            line.starts_with("-ERR unsupported command") && line.contains("pool of 2 servers"),
            "{line}"
        );
    }
    c.expect(&cmd("PING"), b"+PONG\r\n");
    let s = setup_with(1, "");
    let mut c = s.client();
    c.send(&cmd("SYNC"));
    let line = String::from_utf8(c.line()).unwrap();
    assert!(line.contains("redis_admin_commands: true"), "{line}");
    c.expect(&cmd("PING"), b"+PONG\r\n");
}
