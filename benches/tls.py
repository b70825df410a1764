#!/usr/bin/env python3
"""TLS cost: one legate, the same 3 redis-servers reached in the clear and over TLS.

Pools: `plain` (plaintext to the servers' --port) and `tls` (TLS to their --tls-port); the
client speaks plaintext to both, as an unmodified application would. Rounds are interleaved;
medians are reported with the ratios tls/plain for throughput, p99 and legate's CPU time per
request.
Certificates are made with openssl in a temporary directory.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import BENCH, LEGATE, cpu_seconds, free_port, need, pin, rss_kib, wait_port  # noqa: E402


def certs(d):
    def ossl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bench CA",
         "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem")
    ossl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", f"{d}/server.key",
         "-out", f"{d}/server.csr")
    with open(f"{d}/ext", "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ossl("x509", "-req", "-in", f"{d}/server.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
         "-CAcreateserial", "-days", "2", "-extfile", f"{d}/ext", "-out", f"{d}/server.pem")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    need("redis-server", "redis-server")
    need("openssl", "openssl")
    scale = 0.2 if a.quick else 1.0
    tmp = tempfile.mkdtemp(prefix="legate-tls-bench-")
    procs = []
    try:
        certs(tmp)
        plain, tls = [free_port() for _ in range(3)], [free_port() for _ in range(3)]
        for p, t in zip(plain, tls):
            procs.append(subprocess.Popen(pin(0) + [
                "redis-server", "--port", str(p), "--tls-port", str(t), "--save", "", "--appendonly", "no",
                "--tls-cert-file", f"{tmp}/server.pem", "--tls-key-file", f"{tmp}/server.key",
                "--tls-ca-cert-file", f"{tmp}/ca.pem", "--tls-auth-clients", "no"], stdout=subprocess.DEVNULL))
        for p in plain + tls:
            wait_port(p)
        lp, lt = free_port(), free_port()

        def pool(name, port, servers, extra=""):
            y = f"{name}:\n  listen: 127.0.0.1:{port}\n  redis: true\n  hash: fnv1a_64\n{extra}  servers:\n"
            return y + "".join(f"    - 127.0.0.1:{s}:1\n" for s in servers)

        conf = os.path.join(tmp, "legate.yml")
        with open(conf, "w") as f:
            f.write(pool("plain", lp, plain) + pool("tls", lt, tls, f"  tls:\n    ca_file: {tmp}/ca.pem\n"))
        legate = subprocess.Popen(pin(1) + [LEGATE, "-c", conf, "--admin", "off", "--workers", "1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(legate)
        wait_port(lp)
        wait_port(lt)
        n = lambda x: str(int(x * scale))
        workloads = [
            ("redis get/set P1 32B", ["-c", "50", "-P", "1", "-n", n(100000)]),
            ("redis get/set P32 32B", ["-c", "50", "-P", "32", "-n", n(1000000)]),
            ("redis get/set P1 4KB", ["-c", "50", "-P", "1", "--value-size", "4096", "-n", n(50000)]),
        ]
        results = {}
        for rnd in range(a.rounds):
            for wname, extra in workloads:
                for tname, port in (("plain", lp), ("tls", lt)):
                    c0 = cpu_seconds(legate.pid)
                    out = subprocess.run(pin(1) + [BENCH, "--protocol", "redis", "--addr", f"127.0.0.1:{port}",
                                                   "--json", "--keys", "10000"] + extra, capture_output=True, text=True)
                    if out.returncode != 0:
                        sys.exit(f"{wname} via {tname} failed: {out.stderr[:300]}")
                    r = json.loads(out.stdout)
                    r["cpu_us_per_req"] = (cpu_seconds(legate.pid) - c0) * 1e6 / max(r["requests"], 1)
                    results.setdefault(wname, {}).setdefault(tname, []).append(r)
                    print(f"round {rnd + 1} {wname:24} {tname:6} {r['ops_per_sec']:>10.0f} ops/s "
                          f"p99 {r['p99_ms']:.2f} ms errors {r['errors']}", file=sys.stderr)
        med = lambda rs, k: statistics.median(r[k] for r in rs)
        print("| workload | plain ops/s | TLS ops/s | ops TLS/plain | p99 TLS/plain | CPU/req plain µs | CPU/req TLS µs | CPU TLS/plain | errors |")
        print("|---|---|---|---|---|---|---|---|---|")
        for wname, by in results.items():
            p, t = by["plain"], by["tls"]
            print(f"| {wname} | {med(p, 'ops_per_sec'):.0f} | {med(t, 'ops_per_sec'):.0f} | "
                  f"{med(t, 'ops_per_sec') / med(p, 'ops_per_sec'):.2f} | {med(t, 'p99_ms') / med(p, 'p99_ms'):.2f} | "
                  f"{med(p, 'cpu_us_per_req'):.2f} | {med(t, 'cpu_us_per_req'):.2f} | "
                  f"{med(t, 'cpu_us_per_req') / med(p, 'cpu_us_per_req'):.2f} | "
                  f"{sum(r['errors'] for r in p + t)} |")
        print(f"\nlegate peak RSS: {rss_kib(legate.pid, 'VmHWM') / 1024:.1f} MB")
    finally:
        for p in procs:
            p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
