#!/usr/bin/env python3
"""Run each workload against direct / nutcracker / legate, interleaved over several rounds.

Targets: "direct" (one backend, no proxy); "alone" (a redis-server and a memcached pinned to the
proxy's CPU and reached directly: what a server spends on the client-facing half of a proxy's
work alone, a floor to read the proxies' CPU against); nutcracker; legate with its DEFAULT
command line (`legate -c FILE`: one worker per available core); and `legate --workers 1`.
Every proxy is started afresh for each measured run (nutcracker never frees its buffers and
grows to ~1 GB when one process serves every workload).

Clients: legate-bench (checks every reply), redis-benchmark (Redis workloads) and
memtier_benchmark (when installed; Debian 12 has no package). Reports medians per target, the
ratios legate/nutcracker and `--workers 1`/nutcracker for throughput and for the proxy's CPU time
per request (utime+stime from /proc, so the client's and backends' CPU are not counted), user vs
kernel time, RSS per idle connection and under a client that reads nothing, and draws SVG
charts of throughput and CPU per request (BENCHMARKS-*.svg beside BENCHMARKS.md).

Backends are pinned to CPU 0, the proxy and the client to CPU 1 (when the machine has two or
more), so the proxies compete on equal terms; pinned to one CPU, legate's default runs one
worker. `--no-pin` lets everything run anywhere (the default then runs one worker per core).
"""
import argparse, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
BENCH = os.path.join(TARGET, "release/legate-bench")
LEGATE = os.path.join(TARGET, "release/legate")
CPUS = os.cpu_count() or 1


def pin(cpu):
    if cpu is None:
        return []
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


# --- proxies: one fresh process per measured run ------------------------------------------------

PROXIES = ("nutcracker", "legate", "legate-w1")
TARGETS = ("direct", "alone", "nutcracker", "legate", "legate-w1")
LABEL = {"legate": "legate", "legate-w1": "legate --workers 1"}


def start_proxy(name, tmp, redis, mc, cpu):
    """Start `name` afresh on new ports over the shared backends; returns (process, redis port,
    memcache port) once both pools accept."""
    rp, mp = free_port(), free_port()
    conf = os.path.join(tmp, f"{name}-{rp}.yml")
    with open(conf, "w") as f:
        f.write(pool_yaml("r", rp, True, redis) + pool_yaml("m", mp, False, mc))
    if name == "nutcracker":
        cmd = ["nutcracker", "-c", conf, "-s", str(free_port()), "-o", "/dev/null"]
    else:
        # The default command line (workers: the available parallelism), or one worker.
        cmd = [LEGATE, "-c", conf, "--admin", "off"] + (["--workers", "1"] if name == "legate-w1" else [])
    proc = subprocess.Popen(pin(cpu) + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(rp)
    wait_port(mp)
    return proc, rp, mp


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- clients --------------------------------------------------------------------------------------
# Each returns {"requests", "ops_per_sec", "p99_ms", "errors"} or raises RuntimeError.

def run_legate_bench(proto, port, args, cpu):
    out = subprocess.run(pin(cpu) + [BENCH, "--protocol", proto, "--addr", f"127.0.0.1:{port}", "--json", "--keys", "10000"] + args,
                         capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(out.stderr.strip()[:300] or f"exit {out.returncode}")
    return json.loads(out.stdout)


def run_redis_benchmark(proto, port, args, cpu):
    """redis-benchmark runs each of its tests (-t) in turn; the run's throughput is all requests
    over the sum of the tests' times, its p99 the worst test's. It does not check replies."""
    out = subprocess.run(pin(cpu) + ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "--csv", "-r", "10000"] + args,
                         capture_output=True, text=True)
    rows = [line.replace('"', "").split(",") for line in out.stdout.splitlines() if line and not line.startswith('"test"')]
    if out.returncode != 0 or not rows:
        raise RuntimeError(out.stderr.strip()[:300] or f"exit {out.returncode}")
    n = int(args[args.index("-n") + 1])  # per test
    rps = [float(r[1]) for r in rows]
    return {"requests": n * len(rows), "ops_per_sec": n * len(rows) / sum(n / x for x in rps),
            "p99_ms": max(float(r[6]) for r in rows), "errors": None}


def run_memtier(proto, port, args, cpu):
    """memtier_benchmark with one thread; its JSON's totals."""
    with tempfile.NamedTemporaryFile(suffix=".json") as jf:
        out = subprocess.run(pin(cpu) + ["memtier_benchmark", "-s", "127.0.0.1", "-p", str(port), "-t", "1", "--hide-histogram",
                                         "--protocol", "redis" if proto == "redis" else "memcache_text",
                                         "--key-maximum", "10000", "--json-out-file", jf.name] + args,
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip()[-300:] or f"exit {out.returncode}")
        totals = json.load(open(jf.name))["ALL STATS"]["Totals"]
    conns = int(args[args.index("-c") + 1])
    per = int(args[args.index("--requests") + 1])
    pct = totals.get("Percentile Latencies", {})
    p99 = pct.get("p99.00", totals.get("p99.00"))
    return {"requests": conns * per, "ops_per_sec": float(totals["Ops/sec"]),
            "p99_ms": float(p99) if p99 is not None else float("nan"), "errors": None}


CLIENTS = {"legate-bench": run_legate_bench, "redis-benchmark": run_redis_benchmark, "memtier_benchmark": run_memtier}
CLIENT_BINARY = {"legate-bench": BENCH, "redis-benchmark": "redis-benchmark", "memtier_benchmark": "memtier_benchmark"}


def workloads(scale):
    """(name, protocol, {client: arguments}); a client missing from the map does not run it."""
    n = lambda x: str(max(int(x * scale), 1000))
    per = lambda x, c: str(max(int(x * scale) // c, 20))  # memtier counts requests per connection
    return [
        ("redis get/set P1 32B", "redis", {
            "legate-bench": ["-c", "50", "-P", "1", "-n", n(100000)],
            "redis-benchmark": ["-c", "50", "-P", "1", "-t", "set,get", "-d", "32", "-n", n(50000)],
            "memtier_benchmark": ["-c", "50", "--pipeline", "1", "--ratio", "1:1", "-d", "32", "--requests", per(100000, 50)]}),
        ("redis get/set P32 32B", "redis", {
            "legate-bench": ["-c", "50", "-P", "32", "-n", n(1000000)],
            "redis-benchmark": ["-c", "50", "-P", "32", "-t", "set,get", "-d", "32", "-n", n(500000)],
            "memtier_benchmark": ["-c", "50", "--pipeline", "32", "--ratio", "1:1", "-d", "32", "--requests", per(1000000, 50)]}),
        ("redis get/set P1 4KB", "redis", {
            "legate-bench": ["-c", "50", "-P", "1", "--value-size", "4096", "-n", n(50000)],
            "redis-benchmark": ["-c", "50", "-P", "1", "-t", "set,get", "-d", "4096", "-n", n(25000)],
            "memtier_benchmark": ["-c", "50", "--pipeline", "1", "--ratio", "1:1", "-d", "4096", "--requests", per(50000, 50)]}),
        ("redis MGET 10 keys P1", "redis", {
            "legate-bench": ["-c", "50", "-P", "1", "--mget", "10", "--ratio", "1:0", "-n", n(50000)],
            "redis-benchmark": ["-c", "50", "-P", "1", "-n", n(50000), "MGET"] + ["key:__rand_int__"] * 10}),
        ("memcache get/set 10:1 P1", "memcache", {
            "legate-bench": ["-c", "50", "-P", "1", "--ratio", "10:1", "-n", n(100000)],
            "memtier_benchmark": ["-c", "50", "--pipeline", "1", "--ratio", "1:10", "-d", "32", "--requests", per(100000, 50)]}),
        ("memcache get/set 10:1 P32", "memcache", {
            "legate-bench": ["-c", "50", "-P", "32", "--ratio", "10:1", "-n", n(1000000)],
            "memtier_benchmark": ["-c", "50", "--pipeline", "32", "--ratio", "1:10", "-d", "32", "--requests", per(1000000, 50)]}),
        ("redis 500 clients x P100", "redis", {
            "legate-bench": ["-c", "500", "-P", "100", "-n", n(1000000)],
            "redis-benchmark": ["-c", "500", "-P", "100", "-t", "set,get", "-d", "32", "-n", n(500000)]}),
    ]


# --- measuring ------------------------------------------------------------------------------------

def measure(a):
    for b, p in [("redis-server", "redis-server"), ("memcached", "memcached"), ("nutcracker", "nutcracker")]:
        need(b, p)
    clients = [c for c in a.clients.split(",") if c]
    notes = []
    for c in list(clients):
        if c not in CLIENTS:
            sys.exit(f"unknown client {c}: one of {', '.join(CLIENTS)}")
        if not (os.path.exists(CLIENT_BINARY[c]) or shutil.which(CLIENT_BINARY[c])):
            why = " (Debian 12 has no package for it; build it from source to include it)" if c == "memtier_benchmark" else ""
            notes.append(f"{c} is not installed: skipped{why}")
            print(notes[-1], file=sys.stderr)
            clients.remove(c)
    proxy_cpu = None if a.no_pin else 1
    backend_cpu = None if a.no_pin else 0
    procs, results = [], {}
    tmp = tempfile.mkdtemp(prefix="legate-compare-")
    try:
        redis = [free_port() for _ in range(3)]
        mc = [free_port() for _ in range(3)]
        procs += [redis_server(backend_cpu, p) for p in redis] + [memcached(backend_cpu, p) for p in mc]
        alone = {"redis": free_port(), "memcache": free_port()}
        alone_procs = {"redis": redis_server(proxy_cpu, alone["redis"]), "memcache": memcached(proxy_cpu, alone["memcache"])}
        procs += alone_procs.values()
        for p in redis + mc + list(alone.values()):
            wait_port(p)
        work = [w for w in workloads(a.scale) if not a.only or any(o in w[0] for o in a.only.split(","))]
        for rnd in range(a.rounds):
            for wname, proto, by_client in work:
                for client in clients:
                    if client not in by_client:
                        continue
                    for tname in TARGETS:
                        proc = None
                        if tname in PROXIES:
                            proc, rp, mp = start_proxy(tname, tmp, redis, mc, proxy_cpu)
                            pid = proc.pid
                        elif tname == "alone":
                            rp, mp, pid = alone["redis"], alone["memcache"], alone_procs[proto].pid
                        else:
                            rp, mp, pid = redis[0], mc[0], None
                        port = rp if proto == "redis" else mp
                        try:
                            u0, s0 = cpu_split(pid) if pid else (0, 0)
                            r = CLIENTS[client](proto, port, by_client[client], proxy_cpu)
                            if pid:
                                u1, s1 = cpu_split(pid)
                                per = 1e6 / max(r["requests"], 1)
                                r["user_us_per_req"], r["sys_us_per_req"] = (u1 - u0) * per, (s1 - s0) * per
                                r["cpu_us_per_req"] = r["user_us_per_req"] + r["sys_us_per_req"]
                            else:
                                r["cpu_us_per_req"] = None
                            r["rss_kib"] = rss_kib(pid) if tname in PROXIES else None
                        except (RuntimeError, ValueError, KeyError, OSError) as e:
                            print(f"{wname} via {tname} with {client}: FAILED {e}", file=sys.stderr)
                            continue
                        finally:
                            if proc:
                                stop(proc)
                        results.setdefault(wname, {}).setdefault(client, {}).setdefault(tname, []).append(r)
                        cpu = "" if r["cpu_us_per_req"] is None else f" CPU {r['cpu_us_per_req']:.2f} µs/req"
                        print(f"round {rnd + 1} {wname:26} {client:17} {tname:10} {r['ops_per_sec']:>10.0f} ops/s "
                              f"p99 {r['p99_ms']:.2f} ms{cpu} errors {r['errors']}", file=sys.stderr)
        idle, slow = {}, {}
        if not a.skip_memory:
            for tname in ("legate", "nutcracker"):
                proc, rp, _ = start_proxy(tname, tmp, redis, mc, proxy_cpu)
                try:
                    idle[tname] = idle_bytes_per_conn(proc.pid, rp, int(max(10000 * a.scale, 200)))
                    slow[tname] = slow_reader_growth_mb(proc.pid, rp)
                finally:
                    stop(proc)
    finally:
        for p in procs:
            p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"meta": {"command": " ".join(["benches/compare.sh"] + sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
                     "cpus": CPUS, "pinned": not a.no_pin, "rounds": a.rounds, "notes": notes},
            "results": results, "idle_bytes_per_conn": idle, "slow_reader_rss_growth_mb": slow}


def idle_bytes_per_conn(pid, port, n):
    """RSS growth per client connection that connects and sends nothing."""
    before = rss_kib(pid)
    socks = []
    try:
        for _ in range(n):
            socks.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(1)
        return (rss_kib(pid) - before) * 1024 / len(socks)
    except OSError as e:
        print(f"idle connections: {e}", file=sys.stderr)
        return None
    finally:
        for s in socks:
            s.close()


def slow_reader_growth_mb(pid, port):
    """A client sends 6 000 GETs of a 16 KB value (~100 MB of replies) and reads none: how much
    the proxy's RSS grows while it holds them."""
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$16384\r\n" + b"x" * 16384 + b"\r\n")
    c.recv(100)
    before = rss_kib(pid)
    s = socket.create_connection(("127.0.0.1", port))
    s.setblocking(False)
    burst = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n" * 6000
    deadline = time.time() + 3
    while burst and time.time() < deadline:
        try:
            burst = burst[s.send(burst):]
        except BlockingIOError:
            time.sleep(0.01)
    time.sleep(1)
    grew = (rss_kib(pid) - before) / 1024
    s.close()
    c.close()
    return grew


# --- reporting ------------------------------------------------------------------------------------

def med(rs, k):
    vals = [r[k] for r in rs if r.get(k) is not None]
    return statistics.median(vals) if vals else float("nan")


def report(data, charts_dir):
    results = data["results"]
    print()
    print("| workload | client | target | ops/s | p99 ms | proxy CPU µs/req | proxy RSS MB | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for wname, by_client in results.items():
        for client, by in by_client.items():
            for tname in TARGETS:
                rs = by.get(tname, [])
                if not rs:
                    continue
                cpu = med(rs, "cpu_us_per_req") if tname != "direct" else None
                rss = med(rs, "rss_kib") / 1024 if tname in PROXIES else None
                errs = [r["errors"] for r in rs if r.get("errors") is not None]
                print(f"| {wname} | {client} | {LABEL.get(tname, tname)} | {med(rs, 'ops_per_sec'):.0f} | {med(rs, 'p99_ms'):.2f} | "
                      f"{'' if cpu is None else f'{cpu:.2f}'} | {'' if rss is None else f'{rss:.1f}'} | "
                      f"{sum(errs) if errs else 'not checked'} |")
    print()
    print("| workload | client | ops legate/nutcracker | CPU/req legate/nutcracker | ops w1/nutcracker | CPU/req w1/nutcracker | ops legate/w1 | ops legate/direct |")
    print("|---|---|---|---|---|---|---|---|")
    ratios = []
    for wname, by_client in results.items():
        for client, by in by_client.items():
            l, w1, nut, d = (by.get(t, []) for t in ("legate", "legate-w1", "nutcracker", "direct"))
            if not (l and nut):
                continue
            ratio = lambda x, y, k: med(x, k) / med(y, k) if x and y else float("nan")
            row = {"workload": wname, "client": client,
                   "ops_legate_over_nutcracker": ratio(l, nut, "ops_per_sec"),
                   "cpu_legate_over_nutcracker": ratio(l, nut, "cpu_us_per_req"),
                   "ops_w1_over_nutcracker": ratio(w1, nut, "ops_per_sec"),
                   "cpu_w1_over_nutcracker": ratio(w1, nut, "cpu_us_per_req"),
                   "ops_legate_over_w1": ratio(l, w1, "ops_per_sec"),
                   "ops_legate_over_direct": ratio(l, d, "ops_per_sec")}
            ratios.append(row)
            print(f"| {wname} | {client} | " + " | ".join(f"{row[k]:.2f}" for k in list(row)[2:]) + " |")
    # Where the proxy's CPU goes (legate-bench runs): user space vs kernel, beside the server
    # alone on the proxy's core (the client-facing half of the work by itself).
    print()
    print("| workload | legate user µs/req | legate sys µs/req | w1 user | w1 sys | nutcracker user | nutcracker sys | server alone µs/req | legate sys / nutcracker total | server alone / nutcracker total |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for wname, by_client in results.items():
        by = by_client.get("legate-bench", {})
        l, w1, nut, al = (by.get(t, []) for t in ("legate", "legate-w1", "nutcracker", "alone"))
        if l and nut:
            lu, ls = med(l, "user_us_per_req"), med(l, "sys_us_per_req")
            wu, ws = med(w1, "user_us_per_req"), med(w1, "sys_us_per_req")
            nu, ns = med(nut, "user_us_per_req"), med(nut, "sys_us_per_req")
            a_cpu = med(al, "cpu_us_per_req")
            print(f"| {wname} | {lu:.2f} | {ls:.2f} | {wu:.2f} | {ws:.2f} | {nu:.2f} | {ns:.2f} | {a_cpu:.2f} | "
                  f"{ls / (nu + ns):.2f} | {a_cpu / (nu + ns):.2f} |")
    print()
    for t, v in data.get("idle_bytes_per_conn", {}).items():
        if v is not None:
            print(f"idle connections: {t} {v:.0f} bytes RSS per connection")
    for t, v in data.get("slow_reader_rss_growth_mb", {}).items():
        print(f"client not reading 6000 x 16 KB replies: {t} RSS grew {v:.1f} MB")
    for n in data["meta"].get("notes", []):
        print(n)
    if charts_dir:
        draw_charts(data, charts_dir)
    return ratios


def draw_charts(data, out_dir):
    """CPU per request and throughput per workload (legate-bench runs), as SVG."""
    from charts import bar_chart  # noqa: E402 (beside this file)
    results = data["results"]
    groups = [w for w, by in results.items() if "legate-bench" in by]
    if not groups:
        return
    meta = data["meta"]
    sub = f"{meta['date']}, {meta['cpus']} cores, {'backends on CPU 0, proxy and client on CPU 1' if meta['pinned'] else 'unpinned'}; medians of {meta.get('rounds', '?')} rounds\n{meta['command']}"
    col = lambda t, k: [med(results[w]["legate-bench"].get(t, []), k) if results[w]["legate-bench"].get(t) else None for w in groups]
    os.makedirs(out_dir, exist_ok=True)
    tput = {LABEL.get(t, t): col(t, "ops_per_sec") for t in ("direct", "nutcracker", "legate", "legate-w1")}
    cpu = {LABEL.get(t, t) if t != "alone" else "server alone (floor)": col(t, "cpu_us_per_req") for t in ("nutcracker", "legate", "legate-w1", "alone")}
    for name, title, unit, series in (
        ("BENCHMARKS-throughput.svg", "Throughput per workload (higher is better)", "requests/s", tput),
        ("BENCHMARKS-cpu.svg", "Proxy CPU time per request (lower is better)", "µs of CPU per request", cpu),
    ):
        series = {k: v for k, v in series.items() if any(x is not None for x in v)}
        path = os.path.join(out_dir, name)
        bar_chart(path, title, sub, unit, groups, series)
        print(f"chart: {path}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one fifth of the default requests per run (--scale 0.2)")
    ap.add_argument("--scale", type=float, help="fraction of the default requests per run (e.g. 0.02 for a check that the harness works)")
    ap.add_argument("--only", help="comma-separated substrings: run only the workloads whose name contains one")
    ap.add_argument("--clients", default="legate-bench,redis-benchmark,memtier_benchmark",
                    help="load generators to run, comma-separated (a missing one is skipped with a note)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin backends and proxy to CPUs (the default legate then runs one worker per core)")
    ap.add_argument("--skip-memory", action="store_true", help="skip the idle-connection and slow-reader RSS measurements")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--charts", default=ROOT, metavar="DIR", help="write BENCHMARKS-throughput.svg and BENCHMARKS-cpu.svg here (default: beside BENCHMARKS.md); '' for none")
    ap.add_argument("--from-json", metavar="FILE", help="measure nothing: print the tables and draw the charts of a run saved with --json")
    a = ap.parse_args()
    if a.from_json:
        with open(a.from_json) as f:
            data = json.load(f)
    else:
        a.scale = a.scale if a.scale is not None else (0.2 if a.quick else 1.0)
        data = measure(a)
    data["ratios"] = report(data, a.charts)
    if a.json and not a.from_json:
        with open(a.json, "w") as f:
            json.dump(data, f, indent=1)


if __name__ == "__main__":
    main()
