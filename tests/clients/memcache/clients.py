"""Drive one Python memcache client library through the cases of tests/memcache_clients.rs.

Usage: clients.py <client> <host:port> <key prefix>
<client>: pymemcache | pylibmc | pylibmc-binary | bmemcached.
Prints one JSON object: case name -> result. The test runs it against legate (over several
memcached shards) and against one memcached directly, and requires the same results.
"""

import json
import sys
import time

which, addr, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
host, port = addr.rsplit(":", 1)
port = int(port)


def k(name):
    return f"{prefix}{name}"


def text(v):
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("latin-1")
    return str(v)


class Py:
    """pymemcache: text protocol."""

    def __init__(self):
        from pymemcache.client.base import Client

        self.c = Client((host, port), connect_timeout=5, timeout=5)

    def set(self, key, val, ttl=0):
        return self.c.set(key, val, expire=ttl, noreply=False)

    def set_noreply(self, key, val):
        self.c.set(key, val, noreply=True)

    def get(self, key):
        return text(self.c.get(key))

    def get_multi(self, keys):
        return {kk: text(v) for kk, v in self.c.get_many(keys).items()}

    def add(self, key, val):
        return self.c.add(key, val, noreply=False)

    def replace(self, key, val):
        return self.c.replace(key, val, noreply=False)

    def append(self, key, val):
        return self.c.append(key, val, noreply=False)

    def prepend(self, key, val):
        return self.c.prepend(key, val, noreply=False)

    def delete(self, key):
        return self.c.delete(key, noreply=False)

    def incr(self, key, n):
        return self.c.incr(key, n, noreply=False)

    def decr(self, key, n):
        return self.c.decr(key, n, noreply=False)

    def touch(self, key, ttl):
        return self.c.touch(key, ttl, noreply=False)

    def cas_cycle(self, key):
        v, token = self.c.gets(key)
        ok = self.c.cas(key, "new", token, noreply=False)
        stale = self.c.cas(key, "newer", token, noreply=False)
        return [text(v), ok, stale, text(self.c.get(key))]

    def version(self):
        return text(self.c.version())

    def stats(self):
        return {text(a): text(b) for a, b in self.c.stats().items()}


class Libmc:
    """pylibmc (libmemcached): text, or binary with binary=True."""

    def __init__(self, binary):
        import pylibmc

        self.c = pylibmc.Client([addr], binary=binary, behaviors={"cas": True, "connect_timeout": 5000})

    def set(self, key, val, ttl=0):
        return self.c.set(key, val, time=ttl)

    def set_noreply(self, key, val):
        self.c.set(key, val)

    def get(self, key):
        return text(self.c.get(key))

    def get_multi(self, keys):
        return {kk: text(v) for kk, v in self.c.get_multi(keys).items()}

    def add(self, key, val):
        return self.c.add(key, val)

    def replace(self, key, val):
        return self.c.replace(key, val)

    def append(self, key, val):
        return self.c.append(key, val)

    def prepend(self, key, val):
        return self.c.prepend(key, val)

    def delete(self, key):
        return self.c.delete(key)

    def incr(self, key, n):
        import pylibmc

        try:
            return self.c.incr(key, n)
        except pylibmc.NotFound:
            return None

    def decr(self, key, n):
        return self.c.decr(key, n)

    def touch(self, key, ttl):
        return self.c.touch(key, ttl)

    def cas_cycle(self, key):
        v, token = self.c.gets(key)
        ok = self.c.cas(key, "new", token)
        stale = self.c.cas(key, "newer", token)
        return [text(v), ok, stale, text(self.c.get(key))]

    def version(self):
        # libmemcached asks every server it knows: here the one address, legate or memcached.
        self.c.get_stats()
        return next(iter(self.stats_raw().values())).get("version")

    def stats_raw(self):
        return {name: {text(a): text(b) for a, b in st.items()} for name, st in self.c.get_stats()}

    def stats(self):
        return next(iter(self.stats_raw().values()))


class Bin:
    """python-binary-memcached: binary protocol only."""

    def __init__(self):
        import bmemcached

        self.c = bmemcached.Client([addr], socket_timeout=5)

    def set(self, key, val, ttl=0):
        return self.c.set(key, val, time=ttl)

    def set_noreply(self, key, val):
        self.c.set(key, val)

    def get(self, key):
        return text(self.c.get(key))

    def get_multi(self, keys):
        return {kk: text(v) for kk, v in self.c.get_multi(keys).items()}

    def add(self, key, val):
        return self.c.add(key, val)

    def replace(self, key, val):
        return self.c.replace(key, val)

    def append(self, key, val):
        return None  # not offered by this library

    def prepend(self, key, val):
        return None

    def delete(self, key):
        return self.c.delete(key)

    def incr(self, key, n):
        try:
            return self.c.incr(key, n)
        except Exception as e:  # noqa: BLE001 - the library raises its own for a miss
            return f"error {type(e).__name__}"

    def decr(self, key, n):
        return self.c.decr(key, n)

    def touch(self, key, ttl):
        return None  # not offered by this library

    def cas_cycle(self, key):
        v, token = self.c.gets(key)
        ok = self.c.cas(key, "new", token)
        stale = self.c.cas(key, "newer", token)
        return [text(v), ok, stale, text(self.c.get(key))]

    def version(self):
        # This library has no version call: the version its stats report.
        return self.stats().get("version")

    def stats(self):
        return {text(a): text(b) for a, b in next(iter(self.c.stats().values())).items()}


clients = {
    "pymemcache": Py,
    "pylibmc": lambda: Libmc(False),
    "pylibmc-binary": lambda: Libmc(True),
    "bmemcached": Bin,
}
c = clients[which]()


def attempt(f):
    """The result, or the exception's type: a client's errors are part of what is compared."""
    try:
        return f()
    except Exception as e:  # noqa: BLE001
        return f"error {type(e).__name__}"


out = {}
# An expiring key first (memcached counts whole seconds: 2 s is at least 1); checked last.
out["set expiring"] = attempt(lambda: c.set(k("exp"), "soon gone", 2))
t0 = time.monotonic()
out["get expiring"] = attempt(lambda: c.get(k("exp")))
out["set"] = attempt(lambda: c.set(k("a"), "alpha"))
out["get"] = attempt(lambda: c.get(k("a")))
out["get missing"] = attempt(lambda: c.get(k("nope")))
keys = [k(f"m{i}") for i in range(40)]
for i, kk in enumerate(keys):
    if i % 3:
        c.set(kk, f"v{i}")
out["get_multi"] = sorted(c.get_multi(keys + [k("nope")]).items())
out["add existing"] = attempt(lambda: c.add(k("a"), "x"))
out["add new"] = attempt(lambda: c.add(k("b"), "beta"))
out["replace missing"] = attempt(lambda: c.replace(k("c"), "x"))
out["replace"] = attempt(lambda: c.replace(k("b"), "bravo"))
out["append"] = attempt(lambda: c.append(k("b"), "!"))
out["prepend"] = attempt(lambda: c.prepend(k("b"), "<"))
out["after concat"] = attempt(lambda: c.get(k("b")))
out["delete"] = attempt(lambda: c.delete(k("b")))
out["delete again"] = attempt(lambda: c.delete(k("b")))
out["get deleted"] = attempt(lambda: c.get(k("b")))
c.set(k("n"), "10")
out["incr"] = attempt(lambda: c.incr(k("n"), 5))
out["decr"] = attempt(lambda: c.decr(k("n"), 20))
out["incr missing"] = attempt(lambda: c.incr(k("nonum"), 1))
c.set(k("cas"), "old")
out["cas"] = attempt(lambda: c.cas_cycle(k("cas")))
out["touch"] = attempt(lambda: c.touch(k("a"), 100))
out["get touched"] = attempt(lambda: c.get(k("a")))
big = "".join(chr(65 + i % 26) for i in range(1000 * 1000))
out["set 1MB"] = attempt(lambda: c.set(k("big"), big))
got = attempt(lambda: c.get(k("big")))
out["get 1MB"] = attempt(lambda: [len(got or ""), got == big])
# A noreply write, then a read on the same connection.
c.set_noreply(k("nr"), "quiet")
out["read own noreply write"] = attempt(lambda: c.get(k("nr")))
v = attempt(c.version)
out["version numeric"] = bool(v) and v.split(".")[0].isdigit()
out["version"] = attempt(lambda: v)
st = attempt(c.stats)
st = st if isinstance(st, dict) else {}
out["stats have counters"] = attempt(lambda: all(n in st for n in ("curr_items", "get_hits", "get_misses", "bytes", "cmd_get")))
out["stats curr_items >= 27"] = attempt(lambda: int(st.get("curr_items", "0")) >= 27)
time.sleep(max(0.0, 3.1 - (time.monotonic() - t0)))
out["get expired"] = attempt(lambda: c.get(k("exp")))
print(json.dumps(out, sort_keys=True))
