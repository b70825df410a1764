#!/usr/bin/env python3
"""Make tests/data/placement.txt: which server the real nutcracker puts each key on.

How to re-make it (Debian/Ubuntu):
    apt-get install -y nutcracker memcached
    python3 tests/data/make_placement.py > tests/data/placement.txt

It starts 25 memcached servers on fixed loopback ports (31001-31025, plus 11211 for the case
that checks nutcracker's "port 11211 is left out of the name" rule), and one nutcracker whose
pools cover every hash x {ketama, modula} over 1, 3 and 25 servers, plus weighted, aliased,
hash-tagged and port-11211 cases. Each key is set through nutcracker, then looked up on every
memcached directly: the one that holds it is the answer. The random distribution has no fixed
answer and is not covered here.

Output format, one case per block:
    case <name> hash=<hash> distribution=<dist> [hash_tag=<tag>]
    server <the server line exactly as in the pool's servers: list>
    key <key in hex> <host:port of the server holding it>
"""
import os
import random
import socket
import subprocess
import sys
import tempfile
import time

HASHES = ["one_at_a_time", "md5", "crc16", "crc32", "crc32a", "fnv1_64", "fnv1a_64",
          "fnv1_32", "fnv1a_32", "hsieh", "murmur", "jenkins"]
BASE = 31001


def wait_port(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"port {port} never opened")


def keys():
    rnd = random.Random(20261122)
    out = [b"foo", b"bar", b"hello", b"apple", b"a", b"user:1000", b"key:42", b"x" * 250]
    out += [f"key:{i}".encode() for i in range(60)]
    # Bytes >= 0x80 exercise the signed-char quirk; memcache keys cannot hold space or control bytes.
    for _ in range(60):
        n = rnd.randint(1, 40)
        out.append(bytes(rnd.choice(list(range(0x21, 0x7f)) + list(range(0x80, 0x100))) for _ in range(n)))
    for _ in range(12):
        out.append(bytes(rnd.randint(0x80, 0xff) for _ in range(rnd.randint(1, 8))))
    return list(dict.fromkeys(out))


def cases():
    three = [f"127.0.0.1:{BASE + i}:1" for i in range(3)]
    many = [f"127.0.0.1:{BASE + i}:1" for i in range(25)]
    for h in HASHES:
        for d in ["ketama", "modula"]:
            yield f"{h}-{d}-1", h, d, None, [three[0]]
            yield f"{h}-{d}-3", h, d, None, three
            yield f"{h}-{d}-25", h, d, None, many
    for d in ["ketama", "modula"]:
        weighted = [f"127.0.0.1:{BASE}:1", f"127.0.0.1:{BASE + 1}:3", f"127.0.0.1:{BASE + 2}:7"]
        aliased = [f"127.0.0.1:{BASE}:1 zeta", f"127.0.0.1:{BASE + 1}:1 alpha", f"127.0.0.1:{BASE + 2}:2 mu"]
        default_port = ["127.0.0.1:11211:1", f"127.0.0.1:{BASE}:1", f"127.0.0.1:{BASE + 1}:1"]
        yield f"weighted-{d}", "fnv1a_64", d, None, weighted
        yield f"aliased-{d}", "fnv1a_64", d, None, aliased
        yield f"port11211-{d}", "md5", d, None, default_port
        yield f"hashtag-{d}", "murmur", d, "{}", three


def main():
    ports = [BASE + i for i in range(25)] + [11211]
    procs = [subprocess.Popen(["memcached", "-u", "nobody", "-l", "127.0.0.1", "-p", str(p), "-U", "0"])
             for p in ports]
    all_cases = list(cases())
    conf = ""
    for i, (name, h, d, tag, servers) in enumerate(all_cases):
        conf += f"p{i}:\n  listen: 127.0.0.1:{32000 + i}\n  hash: {h}\n  distribution: {d}\n"
        if tag:
            conf += f'  hash_tag: "{tag}"\n'
        conf += "  servers:\n" + "".join(f"    - {s}\n" for s in servers)
    tmp = tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False)
    tmp.write(conf)
    tmp.close()
    nut = subprocess.Popen(["nutcracker", "-c", tmp.name, "-s", "32999", "-o", "/dev/null"])
    try:
        for p in ports:
            wait_port(p)
        wait_port(32000)
        ks = keys()
        short = [k for k in ks if len(k) <= 200]
        tagged = [b"{user%d}:%s" % (i % 7, k) for i, k in enumerate(short[:40])] + [b"{}" + k for k in short[:10]] + short[:20]
        for i, (name, h, d, tag, servers) in enumerate(all_cases):
            case_keys = tagged if tag else ks
            for p in ports:
                with socket.create_connection(("127.0.0.1", p)) as s:
                    s.sendall(b"flush_all\r\n")
                    assert s.recv(100) == b"OK\r\n"
            with socket.create_connection(("127.0.0.1", 32000 + i)) as s:
                s.sendall(b"".join(b"set %s 0 0 1\r\nx\r\n" % k for k in case_keys))
                got = b""
                while got.count(b"\r\n") < len(case_keys):
                    more = s.recv(65536)
                    assert more, f"{name}: nutcracker closed the connection after {got[-200:]!r}"
                    got += more
                assert got == b"STORED\r\n" * len(case_keys), got[:200]
            where = {}
            for srv in servers:
                port = int(srv.split(":")[1])
                with socket.create_connection(("127.0.0.1", port)) as s:
                    s.sendall(b"get " + b" ".join(case_keys) + b"\r\n")
                    got = b""
                    while not got.endswith(b"END\r\n"):
                        got += s.recv(65536)
                    for line in got.split(b"\r\n"):
                        if line.startswith(b"VALUE "):
                            k = line.split(b" ")[1]
                            assert k not in where, "key on two servers"
                            where[k] = f"127.0.0.1:{port}"
            assert len(where) == len(set(case_keys)), f"{name}: some keys not found"
            print(f"case {name} hash={h} distribution={d}" + (f" hash_tag={tag}" if tag else ""))
            for srv in servers:
                print(f"server {srv}")
            for k in case_keys:
                print(f"key {k.hex()} {where[k]}")
    finally:
        nut.kill()
        for p in procs:
            p.kill()
        os.unlink(tmp.name)


if __name__ == "__main__":
    main()
