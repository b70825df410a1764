//! Redis RESP2 and inline commands through legate to three real redis-servers.

mod common;

use common::resp::Value;
use common::{free_port, legate, pool_yaml, redis_server, require, run, Client, Legate, Proc};
use std::process::Command;

struct Setup {
    backends: Vec<Proc>,
    legate: Legate,
}

fn setup() -> Setup {
    let backends: Vec<Proc> = (0..3).map(|_| redis_server()).collect();
    let port = free_port();
    let ports: Vec<u16> = backends.iter().map(|b| b.port).collect();
    let legate = legate(&pool_yaml("rd", port, true, &ports, "  hash_tag: \"{}\"\n"), port);
    Setup { backends, legate }
}

fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n", a.len()).as_bytes());
        out.extend(*a);
        out.extend(b"\r\n");
    }
    out
}

fn cmd(line: &str) -> Vec<u8> {
    let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
    resp(&args)
}

impl Setup {
    fn client(&self) -> Client {
        Client::connect(self.legate.proc.port)
    }
    /// DBSIZE of every backend, read directly.
    fn sizes(&self) -> Vec<u64> {
        self.backends
            .iter()
            .map(|b| {
                let mut c = Client::connect(b.port);
                c.send(&cmd("DBSIZE"));
                let l = String::from_utf8(c.line()).unwrap();
                l.trim()[1..].parse().unwrap()
            })
            .collect()
    }
}

#[test]
fn single_key_command_families() {
    let s = setup();
    let mut c = s.client();
    // strings
    c.expect(&cmd("SET s hello"), b"+OK\r\n");
    c.expect(&cmd("GET s"), b"$5\r\nhello\r\n");
    c.expect(&cmd("APPEND s !"), b":6\r\n");
    c.expect(&cmd("STRLEN s"), b":6\r\n");
    c.expect(&cmd("GETRANGE s 0 1"), b"$2\r\nhe\r\n");
    c.expect(&cmd("INCR n"), b":1\r\n");
    c.expect(&cmd("INCRBY n 41"), b":42\r\n");
    c.expect(&cmd("DECR n"), b":41\r\n");
    c.expect(&cmd("SETNX n 1"), b":0\r\n");
    c.expect(&cmd("GET missing"), b"$-1\r\n");
    // hashes
    c.expect(&cmd("HSET h a 1 b 2"), b":2\r\n");
    c.expect(&cmd("HGET h b"), b"$1\r\n2\r\n");
    c.expect(&cmd("HINCRBY h a 9"), b":10\r\n");
    c.expect(&cmd("HMGET h a b c"), b"*3\r\n$2\r\n10\r\n$1\r\n2\r\n$-1\r\n");
    c.expect(&cmd("HLEN h"), b":2\r\n");
    // lists
    c.expect(&cmd("RPUSH l a b c"), b":3\r\n");
    c.expect(&cmd("LPUSH l z"), b":4\r\n");
    c.expect(
        &cmd("LRANGE l 0 -1"),
        b"*4\r\n$1\r\nz\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n",
    );
    c.expect(&cmd("LPOP l"), b"$1\r\nz\r\n");
    c.expect(&cmd("RPOP l"), b"$1\r\nc\r\n");
    c.expect(&cmd("LLEN l"), b":2\r\n");
    // sets
    c.expect(&cmd("SADD set x y z"), b":3\r\n");
    c.expect(&cmd("SISMEMBER set y"), b":1\r\n");
    c.expect(&cmd("SCARD set"), b":3\r\n");
    // sorted sets
    c.expect(&cmd("ZADD z 1 one 2 two 3 three"), b":3\r\n");
    c.expect(&cmd("ZRANGEBYSCORE z 2 3"), b"*2\r\n$3\r\ntwo\r\n$5\r\nthree\r\n");
    c.expect(&cmd("ZSCORE z two"), b"$1\r\n2\r\n");
    c.expect(&cmd("ZRANK z three"), b":2\r\n");
    // hyperloglog, geo, bits
    c.expect(&cmd("PFADD hll a b c a"), b":1\r\n");
    c.expect(&cmd("PFCOUNT hll"), b":3\r\n");
    c.expect(
        &cmd("GEOADD g 13.361389 38.115556 Palermo 15.087269 37.502669 Catania"),
        b":2\r\n",
    );
    c.send(&cmd("GEODIST g Palermo Catania km"));
    assert!(c.line().starts_with(b"$"));
    assert!(c.line().starts_with(b"166.27"));
    c.expect(&cmd("SETBIT bits 7 1"), b":0\r\n");
    c.expect(&cmd("BITCOUNT bits"), b":1\r\n");
    // expiry
    c.expect(&cmd("EXPIRE s 100"), b":1\r\n");
    c.send(&cmd("TTL s"));
    let ttl = String::from_utf8(c.line()).unwrap();
    assert!(
        ttl.starts_with(':') && ttl.trim()[1..].parse::<i64>().unwrap() > 90,
        "{ttl}"
    );
    c.expect(&cmd("PERSIST s"), b":1\r\n");
    c.expect(&cmd("TTL s"), b":-1\r\n");
    c.expect(&cmd("TYPE h"), b"+hash\r\n");
    // scripts routed by their first key
    c.expect(
        &resp(&[b"EVAL", b"return redis.call('GET', KEYS[1])", b"1", b"s"]),
        b"$6\r\nhello!\r\n",
    );
    // EVAL without keys runs on one shard, as on one server.
    c.expect(&resp(&[b"EVAL", b"return 1", b"0"]), b":1\r\n");
    c.expect(
        &resp(&[b"EVAL", b"return 1", b"-12"]),
        b"-ERR Number of keys can't be negative\r\n",
    );
    c.expect(
        &resp(&[b"EVAL", b"return 1", b"3", b"a"]),
        b"-ERR Number of keys can't be greater than number of args\r\n",
    );
    c.expect(&cmd("GET"), b"-ERR wrong number of arguments for 'get' command\r\n");
}

#[test]
fn multi_key_commands_scatter_and_gather_in_key_order() {
    let s = setup();
    let mut c = s.client();
    let mut mset = vec!["MSET".to_string()];
    for i in 0..50 {
        mset.push(format!("k{i}"));
        mset.push(format!("v{i}"));
    }
    c.expect(&cmd(&mset.join(" ")), b"+OK\r\n");
    let sizes = s.sizes();
    assert_eq!(sizes.iter().sum::<u64>(), 50);
    assert!(sizes.iter().all(|&n| n > 0), "MSET did not span every shard: {sizes:?}");
    let keys = ["k49", "nope", "k0", "k7", "k7", "k33", "zip", "k12"];
    let mut want = format!("*{}\r\n", keys.len());
    for k in keys {
        match k.strip_prefix('k') {
            Some(i) => want += &format!("${}\r\nv{i}\r\n", i.len() + 1),
            None => want += "$-1\r\n",
        }
    }
    c.expect(&cmd(&format!("MGET {}", keys.join(" "))), want.as_bytes());
    c.expect(&cmd("EXISTS k1 k2 nope k3 k1"), b":4\r\n");
    c.expect(&cmd("TOUCH k1 k2 nope"), b":2\r\n");
    c.expect(&cmd("DEL k1 k2 nope k3"), b":3\r\n");
    c.expect(&cmd("UNLINK k4 k5 k6 k1"), b":3\r\n");
    assert_eq!(s.sizes().iter().sum::<u64>(), 44);
    // Hash tags keep keys together: one shard only.
    c.expect(&cmd("MSET {u1}:a 1 {u1}:b 2 {u1}:c 3"), b"+OK\r\n");
    c.expect(&cmd("MGET {u1}:a {u1}:c"), b"*2\r\n$1\r\n1\r\n$1\r\n3\r\n");
    c.expect(
        &cmd("MSET odd"),
        b"-ERR wrong number of arguments for 'mset' command\r\n",
    );
    // An error from a shard is the reply, not a merged count.
    c.expect(&cmd("HSET wrongtype f v"), b":1\r\n");
    c.send(&cmd("MGET wrongtype k9"));
    assert_eq!(c.line(), b"*2\r\n");
}

#[test]
fn proxy_answers_ping_echo_select_command_and_quit() {
    let s = setup();
    let mut c = s.client();
    c.expect(&cmd("PING"), b"+PONG\r\n");
    c.expect(&cmd("PING hi"), b"$2\r\nhi\r\n");
    c.expect(&cmd("ECHO hello"), b"$5\r\nhello\r\n");
    c.expect(&cmd("SELECT 0"), b"+OK\r\n");
    c.send(&cmd("SELECT 1"));
    assert!(c.line().starts_with(b"-ERR "));
    // COMMAND is a server's own answer.
    c.send(&cmd("COMMAND COUNT"));
    let count = String::from_utf8(c.line()).unwrap();
    assert!(count.trim()[1..].parse::<u32>().unwrap() > 200, "{count}");
    c.expect(&cmd("COMMAND GETKEYS SET k v"), b"*1\r\n$1\r\nk\r\n");
    c.expect(&cmd("QUIT"), b"+OK\r\n");
    assert!(c.closed());
}

/// The reply to `HELLO` as Redis 7.0 sends it, with legate's id for the connection.
fn hello_reply(resp3: bool, id: u64) -> Vec<u8> {
    let head = if resp3 { "%7" } else { "*14" };
    let proto = if resp3 { 3 } else { 2 };
    format!(
        "{head}\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n$5\r\nproto\r\n:{proto}\r\n\
         $2\r\nid\r\n:{id}\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n"
    )
    .into_bytes()
}

fn client_id(c: &mut Client) -> u64 {
    c.send(&cmd("CLIENT ID"));
    let l = String::from_utf8(c.line()).unwrap();
    l.trim().strip_prefix(':').unwrap().parse().unwrap()
}

/// The handshake and connection state a client library relies on, answered as Redis 7.0 would
/// (error texts included), per connection.
#[test]
fn hello_client_and_reset_are_answered_per_connection() {
    let s = setup();
    let mut c = s.client();
    let id = client_id(&mut c);
    let mut other = s.client();
    assert_ne!(client_id(&mut other), id, "every connection has its own id");
    c.expect(&cmd("HELLO 4"), b"-NOPROTO unsupported protocol version\r\n");
    c.expect(
        &cmd("HELLO x"),
        b"-ERR Protocol version is not an integer or out of range\r\n",
    );
    c.expect(&cmd("HELLO 3 FOO"), b"-ERR Syntax error in HELLO option 'FOO'\r\n");
    c.expect(
        &cmd("HELLO 3 AUTH bob pw"),
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    );
    c.expect(&cmd("HELLO"), &hello_reply(false, id));
    c.expect(&cmd("HELLO 3 SETNAME app"), &hello_reply(true, id));
    c.expect(&cmd("CLIENT GETNAME"), b"$3\r\napp\r\n");
    other.expect(&cmd("CLIENT GETNAME"), b"$-1\r\n");
    c.expect(
        &cmd("CLIENT SETNAME"),
        b"-ERR wrong number of arguments for 'client|setname' command\r\n",
    );
    c.expect(
        &resp(&[b"CLIENT", b"SETNAME", b"a b"]),
        b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n",
    );
    c.expect(&cmd("CLIENT SETINFO lib-name redis-py"), b"+OK\r\n");
    c.expect(&cmd("CLIENT SETINFO lib-ver 1.0"), b"+OK\r\n");
    c.expect(&cmd("CLIENT NO-EVICT on"), b"+OK\r\n");
    c.expect(&cmd("CLIENT NO-TOUCH maybe"), b"-ERR syntax error\r\n");
    c.expect(
        &cmd("CLIENT FOO"),
        b"-ERR unknown subcommand 'FOO'. Try CLIENT HELP.\r\n",
    );
    // CLIENT INFO is a verbatim string in RESP3.
    c.send(&cmd("CLIENT INFO"));
    let head = String::from_utf8(c.line()).unwrap();
    let len: usize = head.trim().strip_prefix('=').unwrap().parse().unwrap();
    let info = String::from_utf8(c.exact(len + 2)).unwrap();
    assert!(info.starts_with(&format!("txt:id={id} ")), "{info}");
    for field in [
        "name=app ",
        "flags=e ",
        "resp=3 ",
        "lib-name=redis-py ",
        "lib-ver=1.0\n",
    ] {
        assert!(info.contains(field), "{field} not in {info}");
    }
    c.expect(
        &cmd("CLIENT SETNAME"),
        b"-ERR wrong number of arguments for 'client|setname' command\r\n",
    );
    c.expect(&resp(&[b"CLIENT", b"SETNAME", b""]), b"+OK\r\n");
    c.expect(&cmd("CLIENT GETNAME"), b"_\r\n");
    c.expect(&cmd("PING"), b"+PONG\r\n");
    c.expect(&cmd("READONLY"), b"+OK\r\n");
    c.expect(&cmd("READWRITE"), b"+OK\r\n");
    c.expect(&cmd("SELECT 99"), b"-ERR DB index is out of range\r\n");
    c.expect(&cmd("SELECT x"), b"-ERR value is not an integer or out of range\r\n");
    // CLIENT REPLY: OFF answers nothing (not even errors) until ON; SKIP drops the next reply.
    c.send(&cmd("CLIENT REPLY OFF"));
    c.send(&cmd("SET quiet 1"));
    c.send(&cmd("GET"));
    c.send(&cmd("PING"));
    c.expect(&cmd("CLIENT REPLY ON"), b"+OK\r\n");
    c.send(&cmd("CLIENT REPLY SKIP"));
    c.send(&cmd("INCR quiet"));
    c.expect(&cmd("GET quiet"), b"$1\r\n2\r\n");
    // RESET: back to RESP2, no name, the same id.
    c.expect(&cmd("RESET"), b"+RESET\r\n");
    c.expect(&cmd("HELLO"), &hello_reply(false, id));
    c.expect(&cmd("AUTH default anything"), b"+OK\r\n");
    c.expect(&cmd("AUTH a b c"), b"-ERR syntax error\r\n");
    c.expect(&cmd("QUIT"), b"+OK\r\n");
    assert!(c.closed());
}

/// A pool with `redis_auth`: the handshake authenticates (HELLO AUTH or AUTH), RESET
/// deauthenticates, and nothing runs before.
#[test]
fn hello_auth_and_reset_on_a_pool_with_a_password() {
    let backend = common::redis_server_with(free_port(), &["--requirepass", "s3cret"]);
    let port = free_port();
    let _l = legate(
        &pool_yaml("rd", port, true, &[backend.port], "  redis_auth: s3cret\n"),
        port,
    );
    let mut c = Client::connect(port);
    c.expect(&cmd("CLIENT ID"), b"-NOAUTH Authentication required.\r\n");
    c.expect(
        &cmd("HELLO 3"),
        b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n",
    );
    c.expect(
        &cmd("HELLO 3 AUTH default wrong"),
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    );
    c.send(&cmd("HELLO 3 AUTH default s3cret"));
    assert_eq!(c.line(), b"%7\r\n");
    c.until(b"*0\r\n");
    c.expect(&cmd("SET k v"), b"+OK\r\n");
    c.expect(&cmd("RESET"), b"+RESET\r\n");
    c.expect(&cmd("GET k"), b"-NOAUTH Authentication required.\r\n");
    c.expect(
        &cmd("AUTH nobody s3cret"),
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    );
    c.expect(&cmd("AUTH default s3cret"), b"+OK\r\n");
    c.expect(&cmd("GET k"), b"$1\r\nv\r\n");
}

#[test]
fn unsupported_commands_answer_an_error_and_keep_the_connection() {
    let s = setup();
    let mut c = s.client();
    for name in [
        "SCRIPT DEBUG yes",
        "MONITOR",
        "SWAPDB 0 1",
        "MOVE k 1",
        "CONFIG SET maxmemory 1",
        "DEBUG SLEEP 0",
        "SHUTDOWN",
        "REPLICAOF no one",
        "CLUSTER INFO",
        "MIGRATE h 1 k 0 5",
    ] {
        c.send(&cmd(name));
        let line = String::from_utf8(c.line()).unwrap();
        assert!(line.starts_with("-ERR unsupported command"), "{name}: {line}");
        assert!(line.len() > 40, "{name}: the error says why: {line}");
    }
    // Unknown commands and subcommands, and wrong arities, in Redis 7.0's words.
    c.expect(
        &cmd("NOSUCHCOMMAND x y"),
        b"-ERR unknown command 'NOSUCHCOMMAND', with args beginning with: 'x' 'y' \r\n",
    );
    c.expect(
        &cmd("OBJECT NOPE k"),
        b"-ERR unknown subcommand 'NOPE'. Try OBJECT HELP.\r\n",
    );
    c.expect(
        &cmd("OBJECT ENCODING"),
        b"-ERR wrong number of arguments for 'object|encoding' command\r\n",
    );
    c.expect(
        &cmd("OBJECT"),
        b"-ERR wrong number of arguments for 'object' command\r\n",
    );
    c.expect(&cmd("SCAN abc"), b"-ERR invalid cursor\r\n");
    c.expect(&cmd("SET after ok"), b"+OK\r\n");
    c.expect(&cmd("GET after"), b"$2\r\nok\r\n");
}

/// `redis_admin_commands: true`: CONFIG SET and the set-up DEBUG subcommands reach every shard,
/// DEBUG OBJECT / DIGEST-VALUE the shard of their keys; the rest of DEBUG stays refused. Without
/// the key (the default, [`unsupported_commands_answer_an_error_and_keep_the_connection`]) they
/// are refused with a hint at the key.
#[test]
fn admin_commands_reach_every_shard_when_the_pool_allows_them() {
    let backends: Vec<Proc> = (0..3)
        .map(|_| common::redis_server_with(free_port(), &["--enable-debug-command", "local"]))
        .collect();
    let ports: Vec<u16> = backends.iter().map(|b| b.port).collect();
    let port = free_port();
    let yaml = pool_yaml(
        "adm",
        port,
        true,
        &ports,
        "  hash_tag: \"{}\"\n  redis_admin_commands: true\n",
    );
    let _legate = legate(&yaml, port);
    let mut c = Client::connect(port);
    let direct = |b: &Proc, line: &str| Client::connect(b.port).words(line);

    // CONFIG SET: every shard, +OK when all are; a bad parameter gets the server's own error.
    assert_eq!(
        c.words("CONFIG SET maxmemory-policy allkeys-lru"),
        Value::Simple("OK".into())
    );
    for b in &backends {
        let v = direct(b, "CONFIG GET maxmemory-policy");
        assert_eq!(v.items()[1].text(), "allkeys-lru", "shard {}", b.port);
    }
    let e = c.words("CONFIG SET no-such-parameter 1");
    assert!(
        matches!(&e, Value::Error(t) if t.contains("no-such-parameter")),
        "{e:?}"
    );
    assert_eq!(
        c.words("CONFIG SET maxmemory-policy noeviction"),
        Value::Simple("OK".into())
    );
    for b in &backends {
        assert_eq!(direct(b, "CONFIG GET maxmemory-policy").items()[1].text(), "noeviction");
    }

    // DEBUG OBJECT goes to the key's shard: every key is found, wherever it lives.
    let keys: Vec<String> = (0..12).map(|i| format!("key{i}")).collect();
    for k in &keys {
        c.words(&format!("SET {k} v"));
    }
    let shard_of: Vec<usize> = keys
        .iter()
        .map(|k| {
            backends
                .iter()
                .position(|b| direct(b, &format!("EXISTS {k}")).int() == 1)
                .unwrap()
        })
        .collect();
    let elsewhere = (1..keys.len()).find(|&i| shard_of[i] != shard_of[0]);
    let elsewhere = elsewhere.expect("12 keys on 3 shards are not all on one");
    for k in &keys {
        let v = c.words(&format!("DEBUG OBJECT {k}"));
        assert!(
            matches!(&v, Value::Simple(t) if t.starts_with("Value at:")),
            "{k}: {v:?}"
        );
    }
    assert!(matches!(c.words("DEBUG OBJECT nosuchkey"), Value::Error(t) if t.contains("no such key")));
    // DIGEST-VALUE: keys of one shard are forwarded; keys across shards get CROSSSLOT.
    c.words("SET {t}a 1");
    c.words("SET {t}b 1");
    let d = c.words("DEBUG DIGEST-VALUE {t}a {t}b");
    assert_eq!(d.items().len(), 2);
    assert_eq!(d.items()[0], d.items()[1], "same value, same digest");
    let e = c.words(&format!("DEBUG DIGEST-VALUE {} {}", keys[0], keys[elsewhere]));
    assert!(matches!(&e, Value::Error(t) if t.starts_with("CROSSSLOT")), "{e:?}");

    // Set-up subcommands: every shard; answers that are the same anywhere: one shard.
    assert_eq!(c.words("DEBUG SET-ACTIVE-EXPIRE 1"), Value::Simple("OK".into()));
    assert_eq!(c.words("DEBUG SLEEP 0"), Value::Simple("OK".into()));
    assert_eq!(c.words("DEBUG PROTOCOL true"), Value::Int(1));
    assert_eq!(
        c.words("DEBUG PROTOCOL attrib").text(),
        "Some real reply following the attribute"
    );
    // One server's whole-dataset digest means nothing for three; crashing subcommands are never sent.
    for line in ["DEBUG DIGEST", "DEBUG SEGFAULT", "DEBUG RESTART"] {
        let e = c.words(line);
        assert!(
            matches!(&e, Value::Error(t) if t.starts_with("ERR unsupported command 'DEBUG")),
            "{line}: {e:?}"
        );
    }
    for b in &backends {
        assert_eq!(
            direct(b, "PING"),
            Value::Simple("PONG".into()),
            "shard {} alive",
            b.port
        );
    }
    assert_eq!(c.words("GET key3").text(), "v");

    // The default pool refuses them and says which key would serve them.
    let s = setup();
    let e = s.client().words("CONFIG SET maxmemory-policy allkeys-lru");
    assert!(
        matches!(&e, Value::Error(t) if t.contains("redis_admin_commands: true")),
        "{e:?}"
    );
}

/// INFO's `blocked_clients` counts legate's clients waiting on a blocking command (what Redis's
/// own test suite waits on before it pushes), not the shards' view of legate's connections.
#[test]
fn info_counts_the_clients_blocked_in_legate() {
    let s = setup();
    let mut c = s.client();
    let blocked = |c: &mut Client| -> i64 {
        let info = c.words("INFO clients").text();
        let line = info.lines().find(|l| l.starts_with("blocked_clients:")).expect(&info);
        line["blocked_clients:".len()..].trim().parse().unwrap()
    };
    assert_eq!(blocked(&mut c), 0);
    let mut waiting: Vec<Client> = (0..2).map(|_| s.client()).collect();
    for (i, w) in waiting.iter_mut().enumerate() {
        w.send(&cmd(&format!("BLPOP list{i} 0")));
    }
    common::eventually("two clients blocked", || blocked(&mut c) == 2);
    c.expect(&cmd("RPUSH list0 a"), b":1\r\n");
    assert_eq!(waiting[0].value().items()[1].text(), "a");
    common::eventually("one client blocked", || blocked(&mut c) == 1);
    c.expect(&cmd("RPUSH list1 b"), b":1\r\n");
    assert_eq!(waiting[1].value().items()[1].text(), "b");
    common::eventually("no client blocked", || blocked(&mut c) == 0);
}

/// On a one-server pool DEBUG DIGEST is that server's own.
#[test]
fn debug_digest_on_a_one_server_pool_is_the_servers() {
    let backend = common::redis_server_with(free_port(), &["--enable-debug-command", "local"]);
    let port = free_port();
    let yaml = pool_yaml("one", port, true, &[backend.port], "  redis_admin_commands: true\n");
    let _legate = legate(&yaml, port);
    let mut c = Client::connect(port);
    c.words("RPUSH l a b c");
    let ours = c.words("DEBUG DIGEST");
    assert_eq!(ours, Client::connect(backend.port).words("DEBUG DIGEST"));
    assert_ne!(ours.text(), "0".repeat(40));
}

/// Every command whose keys share a shard is forwarded there whole; keys on different shards get
/// a CROSSSLOT error naming them, and nothing runs.
#[test]
fn keys_on_one_shard_are_forwarded_and_keys_across_shards_are_refused() {
    let s = setup();
    let mut c = s.client();
    // Find two keys on different shards.
    let shard_of = |c: &mut Client, k: &str| -> usize {
        c.expect(&cmd(&format!("SET {k} x")), b"+OK\r\n");
        let at = s
            .backends
            .iter()
            .position(|b| Client::connect(b.port).words(&format!("EXISTS {k}")).int() == 1)
            .unwrap();
        c.expect(&cmd(&format!("DEL {k}")), b":1\r\n");
        at
    };
    let a = "a";
    let first = shard_of(&mut c, a);
    let b = (0..100)
        .map(|i| format!("b{i}"))
        .find(|k| shard_of(&mut c, k) != first)
        .unwrap();
    c.expect(&cmd(&format!("SADD {a} 1 2 3")), b":3\r\n");
    c.expect(&cmd(&format!("SADD {b} 2 3 4")), b":3\r\n");
    for cross in [
        format!("SINTER {a} {b}"),
        format!("SUNIONSTORE {a} {b} {a}"),
        format!("SMOVE {a} {b} 1"),
        format!("RENAME {a} {b}"),
        format!("ZUNION 2 {a} {b}"),
        format!("EVAL return_1 2 {a} {b}"),
        format!("MSETNX {a} 1 {b} 2"),
        format!("COPY {a} {b}"),
        format!("SORT {a} STORE {b}"),
    ] {
        c.send(&cmd(&cross));
        let line = String::from_utf8(c.line()).unwrap();
        assert!(
            line.starts_with("-CROSSSLOT ") && line.contains(a) && line.contains(&b[..]),
            "{cross}: {line}"
        );
    }
    c.expect(
        &cmd(&format!("SMEMBERS {a}")),
        b"*3\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n",
    );
    // With a hash tag every multi-key command works, as on one server.
    c.expect(&cmd("SADD {t}a 1 2 3"), b":3\r\n");
    c.expect(&cmd("SADD {t}b 2 3 4"), b":3\r\n");
    c.expect(&cmd("SINTER {t}a {t}b"), b"*2\r\n$1\r\n2\r\n$1\r\n3\r\n");
    c.expect(&cmd("SINTERSTORE {t}c {t}a {t}b"), b":2\r\n");
    c.expect(&cmd("SINTERCARD 2 {t}a {t}b"), b":2\r\n");
    c.expect(&cmd("SDIFF {t}a {t}b"), b"*1\r\n$1\r\n1\r\n");
    c.expect(&cmd("SMOVE {t}a {t}b 1"), b":1\r\n");
    c.expect(&cmd("SCARD {t}b"), b":4\r\n");
    c.expect(&cmd("ZADD {t}z1 1 a 2 b"), b":2\r\n");
    c.expect(&cmd("ZADD {t}z2 3 b"), b":1\r\n");
    c.expect(
        &cmd("ZUNION 2 {t}z1 {t}z2 WITHSCORES"),
        b"*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n5\r\n",
    );
    c.expect(&cmd("ZUNIONSTORE {t}z3 2 {t}z1 {t}z2"), b":2\r\n");
    c.expect(&cmd("ZINTERCARD 2 {t}z1 {t}z2"), b":1\r\n");
    c.expect(&cmd("ZRANGESTORE {t}z4 {t}z3 0 0"), b":1\r\n");
    c.expect(&cmd("RPUSH {t}l x y"), b":2\r\n");
    c.expect(&cmd("RPOPLPUSH {t}l {t}m"), b"$1\r\ny\r\n");
    c.expect(&cmd("LMOVE {t}l {t}m LEFT LEFT"), b"$1\r\nx\r\n");
    c.expect(&cmd("LMPOP 2 {t}l {t}m LEFT"), b"*2\r\n$4\r\n{t}m\r\n*1\r\n$1\r\nx\r\n");
    c.expect(&cmd("SET {t}s hello"), b"+OK\r\n");
    c.expect(&cmd("COPY {t}s {t}s2"), b":1\r\n");
    c.expect(&cmd("RENAME {t}s2 {t}s3"), b"+OK\r\n");
    c.expect(&cmd("RENAMENX {t}s3 {t}s"), b":0\r\n");
    c.expect(&cmd("LCS {t}s {t}s3"), b"$5\r\nhello\r\n");
    c.expect(&cmd("MSETNX {t}n1 1 {t}n2 2"), b":1\r\n");
    c.expect(&cmd("BITOP OR {t}bits {t}n1 {t}n2"), b":1\r\n");
    c.expect(&cmd("PFADD {t}h1 a b"), b":1\r\n");
    c.expect(&cmd("PFADD {t}h2 b c"), b":1\r\n");
    c.expect(&cmd("PFCOUNT {t}h1 {t}h2"), b":3\r\n");
    c.expect(&cmd("PFMERGE {t}h3 {t}h1 {t}h2"), b"+OK\r\n");
    c.expect(&cmd("OBJECT ENCODING {t}s"), b"$6\r\nembstr\r\n");
    c.send(&cmd("MEMORY USAGE {t}s"));
    assert!(c.line().starts_with(b":"));
    c.expect(&cmd("RPUSH {t}sort 3 1 2"), b":3\r\n");
    c.expect(&cmd("SORT {t}sort STORE {t}sorted"), b":3\r\n");
    c.expect(
        &cmd("LRANGE {t}sorted 0 -1"),
        b"*3\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n",
    );
    c.expect(&cmd("MSET {t}w_1 3 {t}w_2 1 {t}w_3 2"), b"+OK\r\n");
    c.expect(
        &cmd("SORT {t}sort BY {t}w_*"),
        b"*3\r\n$1\r\n2\r\n$1\r\n3\r\n$1\r\n1\r\n",
    );
    c.send(&cmd("SORT {t}sort BY w_*"));
    assert!(c.line().starts_with(b"-ERR SORT pattern"));
    c.expect(&cmd("XADD {t}x1 1-1 f v"), b"$3\r\n1-1\r\n");
    c.expect(&cmd("XADD {t}x2 1-1 f v"), b"$3\r\n1-1\r\n");
    let streams = c.words("XREAD COUNT 1 STREAMS {t}x1 {t}x2 0 0");
    let names: Vec<String> = streams.items().iter().map(|s| s.items()[0].text()).collect();
    assert_eq!(names, ["{t}x1", "{t}x2"]);
    c.expect(
        &resp(&[
            b"EVAL",
            b"return redis.call('MGET', KEYS[1], KEYS[2])",
            b"2",
            b"{t}n1",
            b"{t}n2",
        ]),
        b"*2\r\n$1\r\n1\r\n$1\r\n2\r\n",
    );
    let dump = c.words("DUMP {t}s");
    assert!(matches!(dump, Value::Bulk(_)), "{dump:?}");
    c.call(&[
        b"RESTORE",
        b"{t}restored",
        b"0",
        &match dump {
            Value::Bulk(b) => b,
            _ => unreachable!(),
        },
    ]);
    c.expect(&cmd("GET {t}restored"), b"$5\r\nhello\r\n");
    // Everything tagged {t} is on one shard.
    c.expect(&cmd(&format!("DEL {a} {b}")), b":2\r\n");
    let sizes = s.sizes();
    assert_eq!(sizes.iter().filter(|&&n| n > 0).count(), 1, "{sizes:?}");
}

#[test]
fn whole_keyspace_commands_cover_every_shard() {
    let s = setup();
    let mut c = s.client();
    let mut mset = vec!["MSET".to_string()];
    for i in 0..300 {
        mset.push(format!("key:{i}"));
        mset.push(i.to_string());
    }
    c.expect(&cmd(&mset.join(" ")), b"+OK\r\n");
    c.expect(&cmd("SADD set:1 a"), b":1\r\n");
    assert!(s.sizes().iter().all(|&n| n > 0), "{:?}", s.sizes());
    c.expect(&cmd("DBSIZE"), b":301\r\n");
    let keys = c.words("KEYS key:*");
    assert_eq!(keys.items().len(), 300);
    // SCAN walks every shard with one cursor, valid across connections.
    let mut found = std::collections::BTreeSet::new();
    let mut cursor = "0".to_string();
    let mut calls = 0;
    loop {
        let mut fresh = s.client();
        let r = fresh.words(&format!("SCAN {cursor} MATCH key:* COUNT 20"));
        cursor = r.items()[0].text();
        for k in r.items()[1].items() {
            found.insert(k.text());
        }
        calls += 1;
        if cursor == "0" {
            break;
        }
        assert!(calls < 1000);
    }
    assert_eq!(found.len(), 300, "SCAN found {} keys", found.len());
    assert!(found.iter().all(|k| k.starts_with("key:")));
    let r = c.words("SCAN 0 TYPE set COUNT 1000");
    let mut sets: Vec<String> = r.items()[1].items().iter().map(Value::text).collect();
    let mut cursor = r.items()[0].text();
    while cursor != "0" {
        let r = c.words(&format!("SCAN {cursor} TYPE set COUNT 1000"));
        sets.extend(r.items()[1].items().iter().map(Value::text));
        cursor = r.items()[0].text();
    }
    assert_eq!(sets, ["set:1"]);
    let k = c.words("RANDOMKEY").text();
    assert!(k.starts_with("key:") || k == "set:1", "{k}");
    // Scripts are loaded on every shard: EVALSHA works for keys on any of them.
    let sha = c
        .call(&[b"SCRIPT", b"LOAD", b"return redis.call('GET', KEYS[1])"])
        .text();
    assert_eq!(sha.len(), 40);
    for i in 0..30 {
        let k = format!("key:{i}");
        assert_eq!(c.words(&format!("EVALSHA {sha} 1 {k}")).text(), i.to_string());
    }
    let exists = c.words(&format!("SCRIPT EXISTS {sha} 0000000000000000000000000000000000000000"));
    assert_eq!(exists, Value::Array(vec![Value::Int(1), Value::Int(0)]));
    for b in &s.backends {
        let mut direct = Client::connect(b.port);
        assert_eq!(
            direct.words(&format!("SCRIPT EXISTS {sha}")),
            Value::Array(vec![Value::Int(1)])
        );
    }
    c.expect(&cmd("SCRIPT FLUSH"), b"+OK\r\n");
    c.send(&cmd(&format!("EVALSHA {sha} 1 key:1")));
    assert!(c.line().starts_with(b"-NOSCRIPT"));
    // Functions too.
    let lib = "#!lua name=lib\nredis.register_function('get1', function(keys) return redis.call('GET', keys[1]) end)";
    assert_eq!(c.call(&[b"FUNCTION", b"LOAD", lib.as_bytes()]).text(), "lib");
    for i in 0..30 {
        assert_eq!(c.words(&format!("FCALL get1 1 key:{i}")).text(), i.to_string());
    }
    c.expect(&cmd("FUNCTION DELETE lib"), b"+OK\r\n");
    // INFO: legate's server and clients, the shards' keyspace summed.
    let info = c.words("INFO").text();
    assert!(info.contains("legate_version:"), "{info}");
    assert!(info.contains("legate_shards:3\r\n"), "{info}");
    assert!(info.contains("db0:keys=301,"), "{info}");
    assert!(info.contains("# Clients\r\nconnected_clients:"), "{info}");
    let keyspace = c.words("INFO keyspace").text();
    assert!(keyspace.starts_with("# Keyspace\r\ndb0:keys=301,"), "{keyspace}");
    c.send(&cmd("TIME"));
    assert_eq!(c.line(), b"*2\r\n");
    c.line();
    c.line();
    c.line();
    c.line();
    c.expect(&cmd("FLUSHDB"), b"+OK\r\n");
    assert_eq!(s.sizes(), [0, 0, 0]);
    c.expect(&cmd("DBSIZE"), b":0\r\n");
    c.expect(&cmd("RANDOMKEY"), b"$-1\r\n");
    c.expect(&cmd("SCAN 0"), b"*2\r\n$15\r\n281474976710656\r\n*0\r\n");
    c.expect(&cmd("SET k v"), b"+OK\r\n");
    c.expect(&cmd("FLUSHALL ASYNC"), b"+OK\r\n");
    c.expect(&cmd("DBSIZE"), b":0\r\n");
}

/// With one server in the pool every keyed command works, whatever its keys.
#[test]
fn one_server_pool_serves_every_keyed_command() {
    let backend = redis_server();
    let port = free_port();
    let _legate = legate(&pool_yaml("one", port, true, &[backend.port], ""), port);
    let mut c = Client::connect(port);
    c.expect(&cmd("SADD a 1 2"), b":2\r\n");
    c.expect(&cmd("SADD b 2 3"), b":2\r\n");
    c.expect(&cmd("SINTER a b"), b"*1\r\n$1\r\n2\r\n");
    c.expect(&cmd("RENAME a c"), b"+OK\r\n");
    c.expect(&cmd("RPUSH l 3 1 2"), b":3\r\n");
    c.expect(&cmd("MSET w_1 3 w_2 1 w_3 2"), b"+OK\r\n");
    c.expect(&cmd("SORT l BY w_*"), b"*3\r\n$1\r\n2\r\n$1\r\n3\r\n$1\r\n1\r\n");
    c.expect(&cmd("DBSIZE"), b":6\r\n");
    let scan = c.words("SCAN 0 COUNT 100");
    assert_eq!(scan.items()[0].text(), "0");
    assert_eq!(scan.items()[1].items().len(), 6);
    let info = c.words("INFO server").text();
    assert!(info.contains("legate_shards:1\r\n"), "{info}");
}

/// A client pipelines MULTI, its commands and EXEC without waiting (as every client library
/// does): the commands are queued on the server of their keys and run at EXEC, together.
#[test]
fn a_pipelined_transaction_runs_at_exec() {
    let s = setup();
    let mut c = s.client();
    let mut pipeline = cmd("MULTI");
    pipeline.extend(cmd("SET tx{t} applied"));
    pipeline.extend(cmd("INCR counter{t}"));
    pipeline.extend(cmd("EXEC"));
    pipeline.extend(cmd("GET counter{t}"));
    c.send(&pipeline);
    c.expect(b"", b"+OK\r\n");
    c.expect(b"", b"+QUEUED\r\n");
    c.expect(b"", b"+QUEUED\r\n");
    c.expect(b"", b"*2\r\n+OK\r\n:1\r\n");
    // The read after EXEC (on a shared connection) sees what EXEC did.
    c.expect(b"", b"$1\r\n1\r\n");
    // DISCARD drops what was queued.
    c.expect(&cmd("MULTI"), b"+OK\r\n");
    c.expect(&cmd("SET tx{t} discarded"), b"+QUEUED\r\n");
    c.expect(&cmd("DISCARD"), b"+OK\r\n");
    c.expect(&cmd("GET tx{t}"), b"$7\r\napplied\r\n");
    assert_eq!(s.sizes().iter().sum::<u64>(), 2);
}

#[test]
fn inline_commands_and_protocol_errors() {
    let s = setup();
    let mut c = s.client();
    c.expect(b"SET inl \"two words\"\r\n", b"+OK\r\n");
    c.expect(b"GET inl\r\n", b"$9\r\ntwo words\r\n");
    c.expect(b"\r\n\r\nPING\r\n", b"+PONG\r\n");
    c.expect(b"MGET inl x\n", b"*2\r\n$9\r\ntwo words\r\n$-1\r\n");
    // Malformed RESP cannot be resynchronised: an error, then the connection closes.
    c.send(b"*1\r\n$x\r\n");
    assert!(c.line().starts_with(b"-ERR Protocol error"));
    assert!(c.closed());
    let mut other = s.client();
    other.expect(&cmd("GET inl"), b"$9\r\ntwo words\r\n");
}

#[test]
fn binary_keys_and_values_and_big_values() {
    let s = setup();
    let mut c = s.client();
    let key: Vec<u8> = (0..=255u8).collect();
    let val: Vec<u8> = (0..=255u8).rev().chain([b'\r', b'\n', 0]).collect();
    c.expect(&resp(&[b"SET", &key, &val]), b"+OK\r\n");
    c.expect(
        &resp(&[b"GET", &key]),
        &[format!("${}\r\n", val.len()).as_bytes(), &val, b"\r\n"].concat(),
    );
    for size in [1 << 20, 16 << 20] {
        let v: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        let k = format!("big{size}");
        c.expect(&resp(&[b"SET", k.as_bytes(), &v]), b"+OK\r\n");
        c.send(&resp(&[b"MGET", k.as_bytes(), &key]));
        assert_eq!(c.line(), b"*2\r\n");
        assert_eq!(c.line(), format!("${size}\r\n").as_bytes());
        assert!(c.exact(size) == v, "{size}-byte value changed");
        assert_eq!(c.exact(2), b"\r\n");
        assert_eq!(c.line(), format!("${}\r\n", val.len()).as_bytes());
        assert_eq!(c.exact(val.len() + 2), [&val[..], b"\r\n"].concat());
    }
}

#[test]
fn a_thousand_pipelined_commands_in_one_burst() {
    let s = setup();
    let mut c = s.client();
    let mut burst = Vec::new();
    for i in 0..1000 {
        burst.extend(cmd(&format!("SET p{i} {i}")));
        burst.extend(cmd(&format!("INCR p{i}")));
        burst.extend(cmd(&format!("MGET p{i} p{}", (i + 1) % 1000)));
    }
    c.send(&burst);
    for i in 0..1000 {
        assert_eq!(c.line(), b"+OK\r\n");
        assert_eq!(c.line(), format!(":{}\r\n", i + 1).as_bytes());
        assert_eq!(c.line(), b"*2\r\n");
        let v = (i + 1).to_string();
        assert_eq!(c.line(), format!("${}\r\n", v.len()).as_bytes());
        assert_eq!(c.line(), format!("{v}\r\n").as_bytes());
        let next = c.line();
        if next != b"$-1\r\n" {
            c.line();
        }
    }
}

#[test]
fn many_concurrent_clients_each_see_only_their_values() {
    let s = setup();
    let port = s.legate.proc.port;
    let threads: Vec<_> = (0..16)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                for round in 0..100 {
                    let v = format!("t{t}r{round}");
                    c.expect(&cmd(&format!("SET c{t}:{} {v}", round % 10)), b"+OK\r\n");
                    c.expect(
                        &cmd(&format!("MGET c{t}:{} c{t}:none", round % 10)),
                        format!("*2\r\n${}\r\n{v}\r\n$-1\r\n", v.len()).as_bytes(),
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn redis_cli_works_through_legate() {
    let s = setup();
    let cli = require("redis-cli", "redis-tools");
    let port = s.legate.proc.port.to_string();
    let out = run(Command::new(&cli).args(["-p", &port, "SET", "cli", "v"]));
    assert_eq!(out.trim(), "OK");
    let out = run(Command::new(&cli).args(["-p", &port, "MGET", "cli", "none"]));
    assert_eq!(out, "v\n\n");
}

#[test]
fn redis_benchmark_runs_through_legate_without_errors() {
    let s = setup();
    let bench = require("redis-benchmark", "redis-tools");
    let port = s.legate.proc.port.to_string();
    let out = run(Command::new(bench).args([
        "-p",
        &port,
        "-t",
        "set,get,incr,lpush,lpop,mset",
        "-P",
        "16",
        "-n",
        "20000",
        "-c",
        "20",
        "-q",
        "-r",
        "10000",
    ]));
    for t in ["SET", "GET", "INCR", "LPUSH", "LPOP", "MSET"] {
        assert!(
            out.split(['\r', '\n'])
                .any(|l| l.trim().starts_with(t) && l.contains("requests per second")),
            "no {t} result in:\n{out}"
        );
    }
    assert!(
        !out.to_lowercase().contains("error"),
        "redis-benchmark reported errors:\n{out}"
    );
    // The keys really went through to the shards.
    assert!(s.sizes().iter().all(|&n| n > 0));
}
