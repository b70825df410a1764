"""redis-py with its default connection options, driven by tests/redis_clients.rs.

Usage: redis_py.py PORT PROTOCOL PREFIX. PROTOCOL 3 is redis-py's default (nothing is passed);
2 passes protocol=2. Every case checks its values; each prints one line with what it got, so
the test can compare a run through legate with a run against one redis-server. Exits 1 when a
check failed or a case raised.
"""

import sys

import redis

PORT, PROTO, P = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
T = "{" + P + "}"  # hash tag: keys under it share a shard
OPTS = {} if PROTO == 3 else {"protocol": 2}
failed = []


def show(v):
    """A stable text for a value that shows its type: dicts and sets sorted."""
    if isinstance(v, bytes):
        return "b" + repr(v.decode("utf-8", "replace"))
    if isinstance(v, dict):
        return "{" + ", ".join(f"{show(k)}: {show(x)}" for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))) + "}"
    if isinstance(v, (set, frozenset)):
        return "set(" + ", ".join(sorted(show(x) for x in v)) + ")"
    if isinstance(v, tuple):
        return "(" + ", ".join(show(x) for x in v) + ")"
    if isinstance(v, list):
        return "[" + ", ".join(show(x) for x in v) + "]"
    return repr(v)


def case(fn):
    name = fn.__name__
    try:
        got = fn()
        print(f"{name}: {show(got)}")
    except AssertionError as e:
        failed.append(name)
        print(f"{name}: CHECK FAILED {e}")
    except Exception as e:  # noqa: BLE001 - a case's error is its result
        failed.append(name)
        print(f"{name}: ERROR {type(e).__name__}: {e}")
    return fn


def eq(got, want):
    assert got == want, f"got {got!r}, want {want!r}"
    return got


r = redis.Redis(port=PORT, **OPTS)


@case
def connect():
    eq(r.ping(), True)
    eq(r.echo("hi"), b"hi")
    return r.connection_pool.connection_kwargs.get("protocol")


@case
def client_name_option():
    named = redis.Redis(port=PORT, client_name=f"app-{P}", **OPTS)
    eq(named.client_getname(), f"app-{P}")
    eq(named.set(f"{P}:named", 1), True)
    return named.client_getname()


@case
def strings():
    k = f"{P}:s"
    eq(r.set(k, "hello"), True)
    eq(r.get(k), b"hello")
    eq(r.append(k, " world"), 11)
    eq(r.getrange(k, 0, 4), b"hello")
    eq(r.strlen(k), 11)
    eq(r.set(k, "x", nx=True), None)
    eq(r.getset(k, "v2"), b"hello world")
    eq(r.incr(f"{P}:n"), 1)
    eq(r.incrby(f"{P}:n", 41), 42)
    eq(r.decr(f"{P}:n"), 41)
    eq(r.incrbyfloat(f"{P}:f", 1.5), 1.5)
    eq(r.getdel(f"{P}:f"), b"1.5")
    eq(r.get(f"{P}:missing"), None)
    eq(r.setrange(k, 1, "3"), 2)
    return [r.get(k), r.get(f"{P}:n")]


@case
def hashes():
    k = f"{P}:h"
    eq(r.hset(k, mapping={"a": "1", "b": "2", "c": "3"}), 3)
    eq(r.hget(k, "b"), b"2")
    eq(r.hgetall(k), {b"a": b"1", b"b": b"2", b"c": b"3"})
    eq(r.hincrby(k, "a", 9), 10)
    eq(r.hincrbyfloat(k, "f", 0.5), 0.5)
    eq(r.hmget(k, ["a", "zz", "c"]), [b"10", None, b"3"])
    eq(sorted(r.hkeys(k)), [b"a", b"b", b"c", b"f"])
    eq(r.hlen(k), 4)
    eq(r.hexists(k, "c"), True)
    eq(r.hdel(k, "c", "zz"), 1)
    eq(r.hsetnx(k, "a", "0"), False)
    eq(dict(r.hscan_iter(k)), {b"a": b"10", b"b": b"2", b"f": b"0.5"})
    return r.hgetall(k)


@case
def lists():
    k = f"{P}:l"
    eq(r.rpush(k, "a", "b", "c"), 3)
    eq(r.lpush(k, "z"), 4)
    eq(r.lrange(k, 0, -1), [b"z", b"a", b"b", b"c"])
    eq(r.lindex(k, 1), b"a")
    eq(r.lset(k, 1, "A"), True)
    eq(r.linsert(k, "before", "b", "ab"), 5)
    eq(r.lpos(k, "b"), 3)
    eq(r.lpop(k), b"z")
    eq(r.rpop(k, 2), [b"c", b"b"])
    eq(r.llen(k), 2)
    eq(r.rpush(k, "x", "x", "y"), 5)
    eq(r.lrem(k, 0, "x"), 2)
    eq(r.ltrim(k, 0, 1), True)
    return r.lrange(k, 0, -1)


@case
def sets():
    k = f"{P}:set"
    eq(r.sadd(k, "x", "y", "z", "x"), 3)
    eq(r.smembers(k), {b"x", b"y", b"z"})
    eq(r.sismember(k, "y"), True)
    eq(r.smismember(k, ["x", "nope"]), [True, False])
    eq(r.scard(k), 3)
    eq(r.srem(k, "z", "nope"), 1)
    assert r.srandmember(k) in (b"x", b"y")
    eq(set(r.sscan_iter(k)), {b"x", b"y"})
    return r.smembers(k)


@case
def sorted_sets():
    k = f"{P}:z"
    eq(r.zadd(k, {"one": 1, "two": 2, "three": 3}), 3)
    eq(r.zrange(k, 0, -1), [b"one", b"two", b"three"])
    eq(r.zrange(k, 0, 1, withscores=True), [(b"one", 1.0), (b"two", 2.0)])
    eq(r.zscore(k, "two"), 2.0)
    eq(r.zincrby(k, 2.5, "one"), 3.5)
    eq(r.zrank(k, "one"), 2)
    eq(r.zrevrange(k, 0, 0), [b"one"])
    eq(r.zrangebyscore(k, 2, 3), [b"two", b"three"])
    eq(r.zcount(k, "-inf", "+inf"), 3)
    eq(r.zmscore(k, ["two", "nope"]), [2.0, None])
    eq(r.zpopmin(k), [(b"two", 2.0)])
    eq(r.zcard(k), 2)
    return r.zrange(k, 0, -1, withscores=True)


@case
def streams():
    k = f"{P}:x"
    eq(r.xadd(k, {"a": "1"}, id="1-1"), b"1-1")
    eq(r.xadd(k, {"b": "2"}, id="1-2"), b"1-2")
    eq(r.xlen(k), 2)
    eq(r.xrange(k), [(b"1-1", {b"a": b"1"}), (b"1-2", {b"b": b"2"})])
    eq(r.xrevrange(k, count=1), [(b"1-2", {b"b": b"2"})])
    got = r.xread({k: "1-1"})
    rows = got[k.encode()] if isinstance(got, dict) else dict(got)[k.encode()]
    eq(rows, [[(b"1-2", {b"b": b"2"})]] if isinstance(got, dict) else [(b"1-2", {b"b": b"2"})])
    eq(r.xgroup_create(k, "g", id="0"), True)
    got = r.xreadgroup("g", "c1", {k: ">"}, count=1)
    rows = got[k.encode()] if isinstance(got, dict) else dict(got)[k.encode()]
    eq(rows, [[(b"1-1", {b"a": b"1"})]] if isinstance(got, dict) else [(b"1-1", {b"a": b"1"})])
    eq(r.xack(k, "g", "1-1"), 1)
    eq(r.xdel(k, "1-1"), 1)
    return r.xrange(k)


@case
def expiry():
    k = f"{P}:e"
    eq(r.set(k, "v", ex=100), True)
    ttl = r.ttl(k)
    assert 90 < ttl <= 100, ttl
    eq(r.persist(k), True)
    eq(r.ttl(k), -1)
    eq(r.pexpire(k, 100_000), True)
    assert 90_000 < r.pttl(k) <= 100_000
    eq(r.expireat(k, 1), True)  # in the past: gone at once
    eq(r.exists(k), 0)
    eq(r.ttl(k), -2)
    eq(r.set(k, "v", px=100_000), True)
    eq(r.getex(k, persist=True), b"v")
    return [r.ttl(k), r.exists(k)]


@case
def reply_types():
    # Returned as the client decodes them: RESP3 and RESP2 differ here, and legate must give
    # what one redis-server gives.
    k = f"{P}:types"
    r.hset(k, "f", "1")
    r.sadd(f"{k}:s", "m")
    r.zadd(f"{k}:z", {"m": 1.5})
    r.xadd(f"{k}:x", {"a": "1"}, id="1-1")
    return [
        r.hgetall(k),
        r.hexists(k, "f"),
        r.sismember(f"{k}:s", "m"),
        r.smembers(f"{k}:s"),
        r.zscore(f"{k}:z", "m"),
        r.zrange(f"{k}:z", 0, -1, withscores=True),
        r.incrbyfloat(f"{k}:f", 0.25),
        r.get(f"{k}:missing"),
        r.xread({f"{k}:x": "0"}),
        r.execute_command("HGETALL", k),
        r.execute_command("ZSCORE", f"{k}:z", "m"),
        r.execute_command("SMEMBERS", f"{k}:s"),
        r.execute_command("HRANDFIELD", k, 1, "WITHVALUES"),
        r.execute_command("OBJECT", "ENCODING", k),
    ]


@case
def pipeline_of_300():
    pipe = r.pipeline(transaction=False)
    for i in range(100):
        pipe.set(f"{P}:p:{i}", i)
        pipe.incr(f"{P}:p:{i}")
        pipe.get(f"{P}:p:{i}")
    got = pipe.execute()
    want = []
    for i in range(100):
        want += [True, i + 1, str(i + 1).encode()]
    eq(got, want)
    return [len(got), got[-3:]]


LUA = "return {KEYS[1], ARGV[1], redis.call('INCRBY', KEYS[1], ARGV[1])}"


@case
def lua_eval():
    k = f"{P}:lua"
    eq(r.eval(LUA, 1, k, 5), [k.encode(), b"5", 5])
    eq(r.eval("return redis.call('GET', KEYS[1])", 1, k), b"5")
    return r.eval(LUA, 1, k, 2)


@case
def lua_registered_scripts():
    k = f"{T}:reg"
    sha = r.script_load(LUA)
    eq(r.script_exists(sha), [True])
    eq(r.evalsha(sha, 1, k, 3), [k.encode(), b"3", 3])
    # register_script runs EVALSHA, and SCRIPT LOAD on NOSCRIPT.
    script = r.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1]) * 2")
    eq(script(keys=[k], args=[1]), 8)
    eq(script(keys=[f"{P}:other"], args=[10]), 20)
    return sha


@case
def functions():
    lib = P.replace(":", "_").replace("-", "_")
    code = (
        f"#!lua name=lib_{lib}\n"
        f"redis.register_function('incr_{lib}', function(keys, args) return redis.call('INCRBY', keys[1], args[1]) end)\n"
        f"redis.register_function{{function_name='get_{lib}', callback=function(keys) return redis.call('GET', keys[1]) end, flags={{'no-writes'}}}}"
    )
    eq(r.function_load(code, replace=True), f"lib_{lib}".encode())
    eq(r.fcall(f"incr_{lib}", 1, f"{P}:fn", 7), 7)
    eq(r.fcall_ro(f"get_{lib}", 1, f"{P}:fn"), b"7")
    eq(r.fcall(f"incr_{lib}", 1, f"{P}:fn2", 1), 1)
    return r.get(f"{P}:fn")


@case
def scan_to_completion():
    want = set()
    pipe = r.pipeline(transaction=False)
    for i in range(150):
        key = f"{P}:scan:{i}"
        want.add(key.encode())
        pipe.set(key, i)
    pipe.execute()
    got = list(r.scan_iter(match=f"{P}:scan:*", count=20))
    eq(len(got), len(set(got)))  # no key twice
    eq(set(got), want)
    return len(got)


@case
def hash_tagged_multi_key():
    a, b, c, d = (f"{T}:{x}" for x in "abcd")
    eq(r.mset({a: "1", b: "2"}), True)
    eq(r.mget(a, b, c), [b"1", b"2", None])
    eq(r.msetnx({c: "3", a: "x"}), False)
    eq(r.exists(a, b, c), 2)
    eq(r.rename(a, c), True)
    eq(r.get(c), b"1")
    eq(r.copy(c, d), True)
    eq(r.delete(b, c, d), 3)
    s1, s2, s3 = (f"{T}:s{x}" for x in "123")
    r.sadd(s1, "a", "b", "c")
    r.sadd(s2, "b", "c", "d")
    eq(r.sinter(s1, s2), {b"b", b"c"})
    eq(r.sunion(s1, s2), {b"a", b"b", b"c", b"d"})
    eq(r.sdiff(s1, s2), {b"a"})
    eq(r.sinterstore(s3, [s1, s2]), 2)
    eq(r.smove(s1, s3, "a"), True)
    eq(r.smembers(s3), {b"a", b"b", b"c"})
    l1, l2 = f"{T}:l1", f"{T}:l2"
    r.rpush(l1, "1", "2", "3")
    eq(r.lmove(l1, l2, "LEFT", "RIGHT"), b"1")
    eq(r.rpoplpush(l1, l2), b"3")
    eq(r.lrange(l2, 0, -1), [b"3", b"1"])
    z1, z2, z3 = (f"{T}:z{x}" for x in "123")
    r.zadd(z1, {"a": 1, "b": 2})
    r.zadd(z2, {"b": 3, "c": 4})
    eq(r.zunionstore(z3, [z1, z2]), 3)
    eq(r.zrange(z3, 0, -1, withscores=True), [(b"a", 1.0), (b"c", 4.0), (b"b", 5.0)])
    h1, h2 = f"{T}:hll1", f"{T}:hll2"
    r.pfadd(h1, "a", "b")
    r.pfadd(h2, "b", "c")
    eq(r.pfcount(h1, h2), 3)
    return r.lrange(l2, 0, -1)


@case
def transaction_pipeline():
    # redis-py's default pipeline is a MULTI/EXEC transaction.
    a, b = f"{T}:tx:a", f"{T}:tx:b"
    pipe = r.pipeline()
    pipe.set(a, 1).incr(a).rpush(b, "x", "y").lrange(b, 0, -1)
    got = eq(pipe.execute(), [True, 2, 2, [b"x", b"y"]])
    eq(r.get(a), b"2")
    return got


@case
def watch_optimistic_lock():
    k = f"{T}:tx:counter"
    r.set(k, 10)
    other = redis.Redis(port=PORT, **OPTS)
    attempts = 0
    with r.pipeline() as pipe:
        while True:
            attempts += 1
            try:
                pipe.watch(k)
                v = int(pipe.get(k))
                if attempts == 1:
                    other.incr(k)  # someone else changes it: the first EXEC must fail
                pipe.multi()
                pipe.set(k, v * 2)
                pipe.execute()
                break
            except redis.WatchError:
                continue
    other.close()
    eq(attempts, 2)
    return [attempts, r.get(k)]


@case
def pubsub_channels_and_patterns():
    ps = r.pubsub()
    ch, other = f"{P}:news", f"{P}:sport"
    ps.subscribe(ch, other)
    ps.psubscribe(f"{P}:*")
    confirmations = [ps.get_message(timeout=5) for _ in range(3)]
    eq([m["type"] for m in confirmations], ["subscribe", "subscribe", "psubscribe"])
    eq(r.publish(ch, "hello"), 2)
    eq(r.publish(other, "goal"), 2)
    got = []
    while len(got) < 4:
        m = ps.get_message(timeout=5)
        assert m is not None, f"only {got}"
        got.append((m["type"], m["channel"], m["data"]))
    got.sort()
    eq(r.pubsub_numsub(ch), [(ch.encode(), 1)])
    ps.unsubscribe(ch)
    ps.punsubscribe()
    ps.close()
    return got


@case
def blocking_pop():
    q = f"{T}:queue"
    eq(r.blpop([q], timeout=0.2), None)
    other = redis.Redis(port=PORT, **OPTS)
    other.rpush(q, "job")
    got = eq(r.blpop([q], timeout=5), (q.encode(), b"job"))
    other.close()
    return got


r.close()
if failed:
    print(f"failed: {', '.join(failed)}")
sys.exit(1 if failed else 0)
