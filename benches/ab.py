#!/usr/bin/env python3
"""A/B of two legate binaries on the same backends, rounds interleaved, in one run.

Usage: benches/ab.py [--no-pin] [--only SUBSTR,...] BEFORE AFTER [ROUNDS]
BEFORE and AFTER are a binary or a whole command line without `-c`, e.g.
`benches/ab.py /tmp/legate-before target/release/legate 3` (two builds, default flags) or
`benches/ab.py --no-pin "target/release/legate --workers 1" target/release/legate` (one build,
two flag sets). Pinned (the default): backends on CPU 0, proxy and client on CPU 1, where the
default legate runs one worker; `--no-pin` lets everything run anywhere. Reports medians of
throughput and of each proxy's CPU time per request, and their after/before ratios.
"""
import json, os, shlex, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import BENCH, cpu_seconds, free_port, memcached, pin, pool_yaml, redis_server, rss_kib, wait_port  # noqa: E402

args = sys.argv[1:]
no_pin = "--no-pin" in args
args = [a for a in args if a != "--no-pin"]
only = None
if "--only" in args:
    i = args.index("--only")
    only = args[i + 1].split(",")
    del args[i:i + 2]
if len(args) < 2:
    sys.exit(__doc__)
bins = {"before": shlex.split(args[0]), "after": shlex.split(args[1])}
rounds = int(args[2]) if len(args) > 2 else 3
on = (lambda c: None) if no_pin else (lambda c: c)
procs = []
try:
    redis = [free_port() for _ in range(3)]; mc = [free_port() for _ in range(3)]
    procs += [redis_server(on(0), p) for p in redis] + [memcached(on(0), p) for p in mc]
    for p in redis + mc: wait_port(p)
    ports, pids = {}, {}
    for name, b in bins.items():
        rp, mp = free_port(), free_port()
        conf = f"/tmp/legate-ab-{name}.yml"
        with open(conf, "w") as f:
            f.write(pool_yaml("r", rp, True, redis) + pool_yaml("m", mp, False, mc))
        pr = subprocess.Popen(pin(on(1)) + b + ["-c", conf, "--admin", "off"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(pr); pids[name] = pr.pid; ports[name] = (rp, mp); wait_port(rp)
    work = [("redis P1", "redis", ["-c", "50", "-P", "1", "-n", "100000"]),
            ("memcache P1 10:1", "memcache", ["-c", "50", "-P", "1", "--ratio", "10:1", "-n", "100000"]),
            ("redis P32", "redis", ["-c", "50", "-P", "32", "-n", "1000000"]),
            ("memcache P32 10:1", "memcache", ["-c", "50", "-P", "32", "--ratio", "10:1", "-n", "1000000"]),
            ("redis MGET10", "redis", ["-c", "50", "-P", "1", "--mget", "10", "--ratio", "1:0", "-n", "50000"]),
            ("redis P1 4KB", "redis", ["-c", "50", "-P", "1", "--value-size", "4096", "-n", "50000"])]
    work = [w for w in work if not only or any(o in w[0] for o in only)]
    res = {}
    for rnd in range(rounds):
        for w, proto, extra in work:
            for name in bins:
                port = ports[name][0 if proto == "redis" else 1]
                c0 = cpu_seconds(pids[name])
                out = subprocess.run(pin(on(1)) + [BENCH, "--protocol", proto, "--addr", f"127.0.0.1:{port}", "--json", "--keys", "10000"] + extra, capture_output=True, text=True)
                r = json.loads(out.stdout)
                cpu = (cpu_seconds(pids[name]) - c0) * 1e6 / r["requests"]
                res.setdefault(w, {}).setdefault(name, []).append((r["ops_per_sec"], cpu, r["p99_ms"], r["errors"]))
    import statistics as st
    print("| workload | ops before | ops after | ops after/before | CPU µs/req before | after | CPU after/before | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for w, by in res.items():
        b, m = by["before"], by["after"]
        ob, om = st.median(x[0] for x in b), st.median(x[0] for x in m)
        cb, cm = st.median(x[1] for x in b), st.median(x[1] for x in m)
        print(f"| {w} | {ob:.0f} | {om:.0f} | {om/ob:.2f} | {cb:.2f} | {cm:.2f} | {cm/cb:.2f} | {sum(x[3] for x in b+m)} |")
    for name in bins: print(f"{name}: peak RSS {rss_kib(pids[name], 'VmHWM') / 1024:.1f} MB")
finally:
    for p in procs: p.kill()
