#!/usr/bin/env python3
"""A/B of two legate binaries on the same backends, rounds interleaved, in one run.

Usage: benches/ab.py BEFORE_BINARY AFTER_BINARY [ROUNDS]
(e.g. build, copy target/release/legate to /tmp/legate-before, change, build again, then
`benches/ab.py /tmp/legate-before target/release/legate 3`). Reports medians of throughput
and of each proxy's CPU time per request, and their after/before ratios.
"""
import json, os, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import BENCH, cpu_seconds, free_port, memcached, pin, pool_yaml, redis_server, rss_kib, wait_port  # noqa: E402

if len(sys.argv) < 3:
    sys.exit(__doc__)
bins = {"before": sys.argv[1], "after": sys.argv[2]}
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
procs = []
try:
    redis = [free_port() for _ in range(3)]; mc = [free_port() for _ in range(3)]
    procs += [redis_server(0, p) for p in redis] + [memcached(0, p) for p in mc]
    for p in redis + mc: wait_port(p)
    ports, pids = {}, {}
    for name, b in bins.items():
        rp, mp = free_port(), free_port()
        conf = f"/tmp/legate-ab-{name}.yml"
        with open(conf, "w") as f:
            f.write(pool_yaml("r", rp, True, redis) + pool_yaml("m", mp, False, mc))
        pr = subprocess.Popen(pin(1) + [b, "-c", conf, "--admin", "off", "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(pr); pids[name] = pr.pid; ports[name] = (rp, mp); wait_port(rp)
    work = [("redis P1", "redis", ["-c", "50", "-P", "1", "-n", "100000"]),
            ("memcache P1 10:1", "memcache", ["-c", "50", "-P", "1", "--ratio", "10:1", "-n", "100000"]),
            ("redis P32", "redis", ["-c", "50", "-P", "32", "-n", "1000000"]),
            ("memcache P32 10:1", "memcache", ["-c", "50", "-P", "32", "--ratio", "10:1", "-n", "1000000"]),
            ("redis MGET10", "redis", ["-c", "50", "-P", "1", "--mget", "10", "--ratio", "1:0", "-n", "50000"])]
    res = {}
    for rnd in range(rounds):
        for w, proto, extra in work:
            for name in bins:
                port = ports[name][0 if proto == "redis" else 1]
                c0 = cpu_seconds(pids[name])
                out = subprocess.run(pin(1) + [BENCH, "--protocol", proto, "--addr", f"127.0.0.1:{port}", "--json", "--keys", "10000"] + extra, capture_output=True, text=True)
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
