#!/usr/bin/env python3
"""Run each workload against direct / nutcracker / legate, interleaved over several rounds.

Reports medians per target and the ratios legate/direct and legate/nutcracker for throughput,
p99 latency, the proxy's CPU time per request (utime+stime from /proc, so the client's and
backends' CPU are not counted) and its RSS. Backends are pinned to CPU 0, the proxy and the
client to CPU 1 (when the machine has two or more), so the proxies compete on equal terms.

One more target, "alone": a redis-server and a memcached pinned to the proxy's CPU and reached
directly. Its CPU time per request is what a server spends on the client-facing half of a
proxy's work alone (read the request, write the reply) on that core with that client: a floor
to read the proxies' figures against.
"""
import argparse, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target/release/legate-bench")
LEGATE = os.path.join(ROOT, "target/release/legate")
CPUS = os.cpu_count() or 1


def pin(cpu):
    return ["taskset", "-c", str(cpu)] if CPUS > 1 and shutil.which("taskset") else []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port):
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"port {port} never opened")


def need(binary, package):
    if not shutil.which(binary):
        sys.exit(f"{binary} is not installed: apt-get install -y {package}")


def cpu_split(pid):
    """(user, system) CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def cpu_seconds(pid):
    return sum(cpu_split(pid))


def rss_kib(pid, key="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def redis_server(cpu, port):
    """A redis-server on `port` pinned to `cpu`, without persistence."""
    return subprocess.Popen(pin(cpu) + ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)


def memcached(cpu, port):
    """A one-thread memcached on `port` pinned to `cpu`."""
    return subprocess.Popen(pin(cpu) + ["memcached", "-u", "nobody", "-l", "127.0.0.1", "-p", str(port), "-t", "1", "-c", "20000"], stdout=subprocess.DEVNULL)


def pool_yaml(name, port, redis, servers):
    y = f"{name}:\n  listen: 127.0.0.1:{port}\n  hash: fnv1a_64\n  distribution: ketama\n  redis: {str(redis).lower()}\n  servers:\n"
    return y + "".join(f"    - 127.0.0.1:{s}:1\n" for s in servers)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer requests per run")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    for b, p in [("redis-server", "redis-server"), ("memcached", "memcached"), ("nutcracker", "nutcracker")]:
        need(b, p)
    scale = 0.2 if a.quick else 1.0
    procs = []
    tmp = tempfile.mkdtemp(prefix="legate-compare-")
    try:
        redis = [free_port() for _ in range(3)]
        mc = [free_port() for _ in range(3)]
        procs += [redis_server(0, p) for p in redis] + [memcached(0, p) for p in mc]
        alone = {"redis": free_port(), "memcache": free_port()}
        alone_procs = {"redis": redis_server(1, alone["redis"]), "memcache": memcached(1, alone["memcache"])}
        procs += alone_procs.values()
        for p in redis + mc + list(alone.values()):
            wait_port(p)
        ports = {"legate": (free_port(), free_port()), "nutcracker": (free_port(), free_port())}
        pids = {}
        for name, (rp, mp) in ports.items():
            conf = os.path.join(tmp, f"{name}.yml")
            with open(conf, "w") as f:
                f.write(pool_yaml("r", rp, True, redis) + pool_yaml("m", mp, False, mc))
            if name == "legate":
                cmd = pin(1) + [LEGATE, "-c", conf, "--admin", "off", "--workers", "1"]
            else:
                cmd = pin(1) + ["nutcracker", "-c", conf, "-s", str(free_port()), "-o", "/dev/null"]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(proc)
            pids[name] = proc.pid
            wait_port(rp)
        targets = {"direct": (redis[0], mc[0]), "alone": (alone["redis"], alone["memcache"]),
                   "nutcracker": ports["nutcracker"], "legate": ports["legate"]}
        n = lambda x: str(int(x * scale))
        workloads = [
            ("redis get/set P1 32B", "redis", ["-c", "50", "-P", "1", "-n", n(100000)]),
            ("redis get/set P32 32B", "redis", ["-c", "50", "-P", "32", "-n", n(1000000)]),
            ("redis get/set P1 4KB", "redis", ["-c", "50", "-P", "1", "--value-size", "4096", "-n", n(50000)]),
            ("redis MGET 10 keys P1", "redis", ["-c", "50", "-P", "1", "--mget", "10", "--ratio", "1:0", "-n", n(50000)]),
            ("memcache get/set 10:1 P1", "memcache", ["-c", "50", "-P", "1", "--ratio", "10:1", "-n", n(100000)]),
            ("memcache get/set 10:1 P32", "memcache", ["-c", "50", "-P", "32", "--ratio", "10:1", "-n", n(1000000)]),
            ("redis 500 clients x P100", "redis", ["-c", "500", "-P", "100", "-n", n(1000000)]),
        ]
        results = {}
        for rnd in range(a.rounds):
            for wname, proto, extra in workloads:
                for tname, (rp, mp) in targets.items():
                    port = rp if proto == "redis" else mp
                    pid = alone_procs[proto].pid if tname == "alone" else pids.get(tname)
                    u0, s0 = cpu_split(pid) if pid else (0, 0)
                    out = subprocess.run(pin(1) + [BENCH, "--protocol", proto, "--addr", f"127.0.0.1:{port}", "--json", "--keys", "10000"] + extra,
                                         capture_output=True, text=True)
                    if out.returncode != 0 or not out.stdout.strip():
                        print(f"{wname} via {tname}: FAILED {out.stderr.strip()[:200]}", file=sys.stderr)
                        continue
                    r = json.loads(out.stdout)
                    if pid:
                        u1, s1 = cpu_split(pid)
                        per = 1e6 / max(r["requests"], 1)
                        r["user_us_per_req"], r["sys_us_per_req"] = (u1 - u0) * per, (s1 - s0) * per
                        r["cpu_us_per_req"] = r["user_us_per_req"] + r["sys_us_per_req"]
                    else:
                        r["cpu_us_per_req"] = None
                    r["rss_kib"] = rss_kib(pid) if pid else None
                    results.setdefault(wname, {}).setdefault(tname, []).append(r)
                    print(f"round {rnd + 1} {wname:28} {tname:10} {r['ops_per_sec']:>10.0f} ops/s p99 {r['p99_ms']:.2f} ms errors {r['errors']}", file=sys.stderr)
        # Idle connections: RSS per connection.
        idle = {}
        for tname in ("legate", "nutcracker"):
            rp = ports[tname][0]
            before = rss_kib(pids[tname])
            socks = []
            try:
                for _ in range(int(10000 * scale)):
                    socks.append(socket.create_connection(("127.0.0.1", rp)))
                time.sleep(1)
                idle[tname] = (rss_kib(pids[tname]) - before) * 1024 / len(socks)
            except OSError as e:
                print(f"idle connections via {tname}: {e}", file=sys.stderr)
            finally:
                for s in socks:
                    s.close()
        # A client that sends 6 000 GETs of a 16 KB value (~100 MB of replies) and reads none:
        # how much the proxy's RSS grows while it holds them.
        slow = {}
        for tname in ("legate", "nutcracker"):
            rp = ports[tname][0]
            c = socket.create_connection(("127.0.0.1", rp))
            c.sendall(b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$16384\r\n" + b"x" * 16384 + b"\r\n")
            c.recv(100)
            before = rss_kib(pids[tname])
            s = socket.create_connection(("127.0.0.1", rp))
            s.setblocking(False)
            burst = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n" * 6000
            deadline = time.time() + 3
            while burst and time.time() < deadline:
                try:
                    burst = burst[s.send(burst):]
                except BlockingIOError:
                    time.sleep(0.01)
            time.sleep(1)
            slow[tname] = (rss_kib(pids[tname]) - before) / 1024
            s.close()
            c.close()
        med = lambda rs, k: statistics.median([r[k] for r in rs if r.get(k) is not None]) if rs else float("nan")
        rows = []
        print()
        print("| workload | target | ops/s | p99 ms | proxy CPU µs/req | proxy RSS MB | errors |")
        print("|---|---|---|---|---|---|---|")
        for wname, by in results.items():
            for tname in ("direct", "alone", "nutcracker", "legate"):
                rs = by.get(tname, [])
                if not rs:
                    continue
                cpu = med(rs, "cpu_us_per_req") if tname != "direct" else None
                rss = med(rs, "rss_kib") / 1024 if tname not in ("direct", "alone") else None
                print(f"| {wname} | {tname} | {med(rs, 'ops_per_sec'):.0f} | {med(rs, 'p99_ms'):.2f} | "
                      f"{'' if cpu is None else f'{cpu:.2f}'} | {'' if rss is None else f'{rss:.1f}'} | {sum(r['errors'] for r in rs)} |")
            l, d, nut = by.get("legate", []), by.get("direct", []), by.get("nutcracker", [])
            if l and d and nut:
                row = {
                    "workload": wname,
                    "ops_legate_over_direct": med(l, "ops_per_sec") / med(d, "ops_per_sec"),
                    "ops_legate_over_nutcracker": med(l, "ops_per_sec") / med(nut, "ops_per_sec"),
                    "p99_legate_over_nutcracker": med(l, "p99_ms") / med(nut, "p99_ms"),
                    "cpu_legate_over_nutcracker": med(l, "cpu_us_per_req") / med(nut, "cpu_us_per_req"),
                }
                rows.append(row)
        print()
        print("| workload | ops legate/direct | ops legate/nutcracker | p99 legate/nutcracker | CPU/req legate/nutcracker |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['workload']} | {r['ops_legate_over_direct']:.2f} | {r['ops_legate_over_nutcracker']:.2f} | "
                  f"{r['p99_legate_over_nutcracker']:.2f} | {r['cpu_legate_over_nutcracker']:.2f} |")
        # Where the proxy's CPU goes: user space vs kernel (system calls and the TCP stack). The
        # kernel time legate spends per request, over nutcracker's whole CPU time per request, is
        # the lowest CPU ratio legate could reach with no user-space work at all. The server
        # alone on the proxy's core, over nutcracker, is what the client-facing half of the work
        # costs by itself.
        print()
        print("| workload | legate user µs/req | legate sys µs/req | nutcracker user µs/req | nutcracker sys µs/req | server alone µs/req | legate sys / nutcracker total | server alone / nutcracker total |")
        print("|---|---|---|---|---|---|---|---|")
        for wname, by in results.items():
            l, nut, al = by.get("legate", []), by.get("nutcracker", []), by.get("alone", [])
            if l and nut:
                lu, ls = med(l, "user_us_per_req"), med(l, "sys_us_per_req")
                nu, ns = med(nut, "user_us_per_req"), med(nut, "sys_us_per_req")
                a_cpu = med(al, "cpu_us_per_req") if al else float("nan")
                print(f"| {wname} | {lu:.2f} | {ls:.2f} | {nu:.2f} | {ns:.2f} | {a_cpu:.2f} | {ls / (nu + ns):.2f} | {a_cpu / (nu + ns):.2f} |")
        if idle:
            print()
            for t, v in idle.items():
                print(f"idle connections: {t} {v:.0f} bytes RSS per connection")
        for t, v in slow.items():
            print(f"client not reading 6000 x 16 KB replies: {t} RSS grew {v:.1f} MB")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"results": results, "ratios": rows, "idle_bytes_per_conn": idle, "slow_reader_rss_growth_mb": slow}, f, indent=1)
    finally:
        for p in procs:
            p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
