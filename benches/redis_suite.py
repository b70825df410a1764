#!/usr/bin/env python3
"""Redis's own test suite, unit by unit, against one redis-server directly and through legate.

Needs a checkout of the `tests/` tree of redis/redis (the 7.0 line, to match redis-server 7.0)
with `runtest` at its root and `src/redis-server`, `src/redis-cli`, `src/redis-benchmark` present
(symlinks to the installed binaries do). The suite runs in its external-server mode
(`--host/--port`), which skips tests tagged `external:skip`; `--singledb` (no SELECT 9, since
legate serves database 0 only) and `--durable` (an error fails that test instead of ending the
unit) are passed to both runs, so both sides run the same tests.

For each unit: a fresh redis-server is tested directly; then N fresh redis-servers (`--shards N`)
behind a fresh legate (redis: true, hash_tag "{}", ketama, and redis_admin_commands: true, since
the suite sets its servers up with CONFIG SET and DEBUG, which that key sends to every shard) are
tested through legate. The servers use the suite's own tests/assets/default.conf (DEBUG enabled,
keyspace events on), with no persistence. Units run one after the other; each run is killed after `--unit-timeout`
seconds. Prints one row per unit (passed/failed on each side and the ratio of passes), then
every test that passed directly but not through legate, with the first line of its error.
Raw outputs are kept in `--out`.

    benches/redis_suite.py --tests /path/to/redis --legate target/release/legate --shards 3
"""
import argparse, json, os, re, shutil, signal, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = ["type/string", "type/incr", "type/hash", "type/list", "type/set", "type/zset", "expire", "keyspace",
         "protocol", "scripting", "multi", "pubsub", "pubsubshard", "type/stream-cgroups", "type/stream"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
STATUS = re.compile(r"^\[(ok|err|exception|skip|ignore|TIMEOUT|\d+/\d+ done)\]: ?(.*)$")


class Ports:
    """Ports handed out in turn from a fixed range (or by the kernel when no range is given)."""

    def __init__(self, base, span=300):
        self.base, self.span, self.n = base, span, 0

    def take(self):
        for _ in range(self.span if self.base else 50):
            if self.base:
                port = self.base + self.n % self.span
                self.n += 1
            else:
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
                s.close()
            try:
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                s.close()
                return port
            except OSError:
                continue
        sys.exit("no free port")


def wait_port(port, proc, what):
    deadline = time.time() + 15
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"{what} never listened on port {port}")


def server_conf(tests, port, workdir):
    """tests/assets/default.conf with this port, no persistence, files in `workdir`."""
    lines = []
    with open(os.path.join(tests, "tests/assets/default.conf")) as f:
        for line in f:
            key = line.split()[0] if line.split() else ""
            if key in ("port", "dir", "logfile", "pidfile", "save", "daemonize", "bind", "appendonly", "dbfilename",
                       "appenddirname"):
                continue
            lines.append(line.rstrip("\n"))
    # The shards of one run share `workdir`: each saves (DEBUG RELOAD, BGSAVE) and loads its own files.
    lines += [f"port {port}", "bind 127.0.0.1", f"dir {workdir}", f"logfile {workdir}/redis-{port}.log",
              'save ""', "appendonly no", "daemonize no", f"dbfilename dump-{port}.rdb",
              f"appenddirname appendonlydir-{port}"]
    path = os.path.join(workdir, f"redis-{port}.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, argv, port, what, log):
        p = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        self.procs.append(p)
        wait_port(port, p, what)
        return p

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


def pool_yaml(port, servers, timeout_ms):
    y = (f"suite:\n  listen: 127.0.0.1:{port}\n  hash: md5\n  hash_tag: \"{{}}\"\n  distribution: ketama\n"
         f"  redis: true\n  redis_admin_commands: true\n  timeout: {timeout_ms}\n  servers:\n")
    return y + "".join(f"    - 127.0.0.1:{s}:1\n" for s in servers)


def parse(text):
    """Tests of one runtest output: [(name, 'ok'|'err', error line)], how the run ended, its message."""
    tests, end, msg = [], "incomplete", ""
    cur, hung = None, None
    for raw in text.splitlines():
        line = ANSI.sub("", raw)
        m = STATUS.match(line)
        h = re.match(r"^\S+ => \(IN PROGRESS\) (.*)$", line)
        if h and end == "timeout":
            hung = h.group(1)
        if not m:
            if cur is not None and line.strip():
                if not cur[2]:
                    cur[2] = line.strip()
                elif len(cur) == 3:  # durable mode cuts 10 characters off a non-assertion error;
                    if line.strip().endswith(cur[2]):  # the next line (errorInfo) has it whole
                        cur[2] = line.strip()
                    cur.append(True)
            continue
        status, data = m.groups()
        cur = None
        if status == "ok":
            tests.append([re.sub(r" \(\d+ ms\)$", "", data), "ok", ""])
        elif status == "err":
            m2 = re.match(r"^(.*) in tests/unit/\S+\.tcl$", data)
            if m2:
                cur = [m2.group(1), "err", ""]
            else:  # an error outside any test (durable mode): the rest of that block did not run
                cur = [OUTSIDE, "err", data.strip()]
            tests.append(cur)
        elif status == "exception":
            end, msg = "exception", data.replace("Executing test client: ", "")
        elif status == "TIMEOUT":
            end, msg = "timeout", "no progress"
        elif status.endswith("done"):
            end = "done"
    return [tuple(t[:3]) for t in tests], end, msg, hung


OUTSIDE = "(outside a test)"


def count(tests):
    """(passed, failed) of keyed tests; errors outside a test are not tests."""
    ok = sum(1 for s, _ in tests.values() if s == "ok")
    return ok, sum(1 for n, (s, _) in tests.items() if s != "ok" and not n.startswith(OUTSIDE))


def keyed(tests):
    """name -> (status, error); a name seen k times gets ' #k' from its second occurrence on."""
    seen, out = {}, {}
    for name, status, err in tests:
        n = seen.get(name, 0) + 1
        seen[name] = n
        out[name if n == 1 else f"{name} #{n}"] = (status, err)
    return out


# With --harness-direct, the suite's own set-up between blocks of tests (FLUSHALL and FUNCTION FLUSH
# before each block, CONFIG SET of a block's overrides and their restoring after it) goes to every
# shard directly instead of through legate; the tests themselves still talk to legate only.
HARNESS = """
proc legate_suite_each {args} {
    if {![info exists ::env(LEGATE_SUITE_SHARDS)]} { return [r {*}$args] }
    set reply {}
    foreach hp $::env(LEGATE_SUITE_SHARDS) {
        lassign [split $hp :] host port
        set c [redis $host $port 0 $::tls]
        set reply [$c {*}$args]
        $c close
    }
    return $reply
}
"""
PATCHES = [("    r flushall\n", "    legate_suite_each flushall\n"),
           ("    r function flush\n", "    legate_suite_each function flush\n"),
           ("[lindex [r config get $param] 1]", "[lindex [legate_suite_each config get $param] 1]"),
           ("        r config set $param $val\n", "        legate_suite_each config set $param $val\n")]


def shadow_tree(tests, out):
    """A copy of the checkout made of symlinks, but for a tests/support/server.tcl whose
    external-server set-up goes to the shards directly (see HARNESS)."""
    root = os.path.join(out, "harness-direct")
    if os.path.isdir(root):
        return root
    os.makedirs(os.path.join(root, "tests", "support"))
    for name in os.listdir(tests):
        if name != "tests":
            os.symlink(os.path.join(tests, name), os.path.join(root, name))
    for name in os.listdir(os.path.join(tests, "tests")):
        if name != "support":
            os.symlink(os.path.join(tests, "tests", name), os.path.join(root, "tests", name))
    for name in os.listdir(os.path.join(tests, "tests", "support")):
        src = os.path.join(tests, "tests", "support", name)
        if name != "server.tcl":
            os.symlink(src, os.path.join(root, "tests", "support", name))
            continue
        with open(src) as f:
            text = f.read()
        for old, new in PATCHES:
            if old not in text:
                sys.exit(f"--harness-direct: '{old.strip()}' not found in {src}; is this the 7.0 line?")
            text = text.replace(old, new)
        with open(os.path.join(root, "tests", "support", name), "w") as f:
            f.write(text + HARNESS)
    return root


def runtest(tests, unit, port, baseport, a, extra, logpath, env):
    argv = ["nice", "-n", "10", "./runtest", "--host", "127.0.0.1", "--port", str(port), "--single", f"unit/{unit}",
            "--singledb", "--durable", "--timeout", str(a.test_timeout), "--baseport", str(baseport)] + extra
    t0 = time.time()
    with open(logpath, "w") as log:
        p = subprocess.Popen(argv, cwd=tests, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                             env=dict(os.environ, TERM="dumb", **env))
        try:
            p.wait(a.unit_timeout)
            killed = False
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            killed = True
    with open(logpath, errors="replace") as f:
        text = f.read()
    tests_, end, msg, hung = parse(text)
    if not tests_ and "couldn't open socket: address already in use" in text:
        end, msg = "port busy", f"the suite's test server found no free port below {baseport}"
    if killed:
        end, msg = "timeout", f"killed after {a.unit_timeout} s"
    return {"tests": tests_, "end": end, "msg": msg, "hung": hung, "seconds": round(time.time() - t0, 1)}


def run_side(a, tree, tests, legate, unit, side, ports, baseport, out):
    """One unit on one side; a test that hangs (no progress for --test-timeout s) is recorded as
    failed and the unit is run again without it, on fresh processes, up to --max-hangs times."""
    tag = unit.replace("/", "-")
    skipped, busy = [], 0
    while True:
        work = tempfile.mkdtemp(prefix=f"{tag}-{side}-", dir=out)
        procs = Procs()
        log = open(os.path.join(work, "processes.log"), "w")
        try:
            n = a.shards if side == "legate" else 1
            servers = [ports.take() for _ in range(n)]
            for srv in servers:
                procs.start(["redis-server", server_conf(tests, srv, work)], srv, "redis-server", log)
            port = servers[0]
            if side == "legate":
                port = ports.take()
                conf = os.path.join(work, "legate.yml")
                with open(conf, "w") as f:
                    f.write(pool_yaml(port, servers, a.timeout_ms))
                procs.start([a.legate, "-c", conf, "--workers", "2", "--admin", "off", "--no-watch", "--log", "warn"],
                            port, "legate", log)
            print(f"# {unit} {side}{' skipping ' + str(len(skipped)) + ' hung' if skipped else ''} ...",
                  file=sys.stderr, flush=True)
            env = {"LEGATE_SUITE_SHARDS": " ".join(f"127.0.0.1:{srv}" for srv in servers)}
            extra = list(a.runtest_arg)
            for name in skipped:
                extra += ["--skiptest", name]
            res = runtest(tree, unit, port, baseport, a, extra, os.path.join(out, f"{tag}.{side}.txt"), env)
            if side == "legate" and procs.procs[-1].poll() is not None:
                res["end"] += " (legate exited!)"
        finally:
            procs.stop()
            log.close()
        hung = res.pop("hung")
        if res["end"] == "port busy" and busy < 4:
            # an outgoing connection can hold a port of the range (it lies in the ephemeral range)
            busy += 1
            baseport += 40
            continue
        if res["end"] == "timeout" and hung and hung not in skipped and len(skipped) < a.max_hangs \
                and not hung.startswith("/"):
            skipped.append(hung)
            continue
        res["tests"] = [t for t in res["tests"] if t[0] not in skipped] + \
            [(name, "err", f"hung: no progress for {a.test_timeout} s (the unit was run again without it)") for name in skipped]
        res["hung"] = skipped
        return res


def cause(err):
    """A short name for why a test was lost, to count them by cause."""
    block = err.startswith("not run, its block stopped at: ")
    m = re.search(r"unsupported command '([^']+)'", err)
    if "follows a MULTI that legate refused" in err or "MULTI calls can not be nested" in err:
        c = "after a refused MULTI on that connection"
    elif m:
        c = f"refused {m.group(1).upper()}"
    elif "without keys cannot be routed" in err:
        c = "EVAL/EVALSHA/FCALL without keys refused"
    elif err.startswith("hung"):
        c = "hung"
    elif err.startswith("not run"):
        c = "not run: " + err[len("not run "):][:60]
    else:
        c = "other: " + err[:100]
    return ("block stopped: " if block else "") + c


def report(results, shards, harness_direct, out):
    """Print the table and the tests that pass directly but not through legate."""
    rows, lost = [], []
    tot = {"dp": 0, "df": 0, "lp": 0, "lf": 0}
    for unit, res in results.items():
        d = keyed(res["direct"]["tests"]) if "direct" in res else {}
        l = keyed(res["legate"]["tests"])
        dp, df = count(d)
        lp, lf = count(l)
        for k, v in zip(("dp", "df", "lp", "lf"), (dp, df, lp, lf)):
            tot[k] += v
        ratio = f"{100 * lp / dp:.0f}%" if dp else "-"
        end = res["legate"]["end"]
        if end != "done":
            end += ": " + res["legate"]["msg"][:100]
        if res["legate"].get("hung"):
            end += f", {len(res['legate']['hung'])} hung (skipped on a re-run)"
        dend = res["direct"]["end"] if "direct" in res else "-"
        rows.append((unit, f"{dp}/{df}", f"{lp}/{lf}", ratio, dend, end))
        order = list(l)
        prev = None
        for name, (s, _) in d.items():
            if name in l:
                prev = name
            if s != "ok" or l.get(name, ("", ""))[0] == "ok":
                continue
            if name in l:
                err = l[name][1]
            else:  # the error that stopped its block, when legate's run shows one where it belonged
                i = order.index(prev) + 1 if prev is not None else 0
                if i < len(order) and order[i].startswith(OUTSIDE):
                    err = "not run, its block stopped at: " + l[order[i]][1]
                else:
                    err = f"not run (legate run ended: {res['legate']['end']} {res['legate']['msg'][:100]})"
            lost.append((unit, name, err))
    ratio = f"{100 * tot['lp'] / tot['dp']:.0f}%" if tot["dp"] else "-"
    rows.append(("total", f"{tot['dp']}/{tot['df']}", f"{tot['lp']}/{tot['lf']}", ratio, "", ""))

    mode = ", suite set-up sent to the shards directly" if harness_direct else ""
    print(f"\nredis test suite: direct vs legate ({shards} shard{'s' if shards != 1 else ''}{mode}); raw output in {out}\n")
    print("| unit | direct passed/failed | legate passed/failed | legate/direct | direct run | legate run |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\n{len(lost)} tests pass directly but not through legate:\n")
    for unit, name, err in lost:
        print(f"- {unit}: {name} -- {err[:240]}")
    causes = {}
    for unit, name, err in lost:
        causes.setdefault(cause(err), set()).add(unit)
    counts = {c: sum(1 for _, _, e in lost if cause(e) == c) for c in causes}
    print("\nBy cause:\n")
    for c in sorted(causes, key=lambda c: -counts[c]):
        print(f"- {counts[c]} {c} ({', '.join(sorted(causes[c]))})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tests", help="redis checkout with runtest and tests/ (7.0 line)")
    ap.add_argument("--legate", default=os.path.join(ROOT, "target/release/legate"))
    ap.add_argument("--shards", type=int, default=1, help="redis-servers behind legate")
    ap.add_argument("--units", default=",".join(UNITS), help="comma-separated, e.g. type/list,multi")
    ap.add_argument("--unit-timeout", type=int, default=900, help="seconds per run of one unit")
    ap.add_argument("--test-timeout", type=int, default=60, help="seconds without progress before a test counts as hung")
    ap.add_argument("--max-hangs", type=int, default=5, help="hung tests skipped on re-runs before giving up on a unit")
    ap.add_argument("--timeout-ms", type=int, default=30000, help="legate's per-request timeout")
    ap.add_argument("--port-base", type=int, default=0, help="take ports from here up (default: any free)")
    ap.add_argument("--port-span", type=int, default=300,
                    help="with --port-base: servers and legate take ports base..base+span-1, the suite's own test server base+span+8..+39 (up to +199 when busy)")
    ap.add_argument("--out", help="directory for raw outputs and logs (default: a new temp dir)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--harness-direct", action="store_true",
                    help="the suite's set-up between blocks (FLUSHALL, FUNCTION FLUSH, CONFIG SET of overrides) goes to the shards directly")
    ap.add_argument("--skip-direct", action="store_true", help="only the runs through legate")
    ap.add_argument("--runtest-arg", action="append", default=[], help="passed to runtest, e.g. --runtest-arg=--tags --runtest-arg=-needs:debug")
    ap.add_argument("--report", metavar="JSON", help="only print the table of a run saved with --json")
    a = ap.parse_args()
    if a.report:
        with open(a.report) as f:
            saved = json.load(f)
        return report(saved["results"], saved["shards"], saved.get("harness_direct"), saved.get("out"))

    if not a.tests:
        sys.exit("--tests DIR is required: a checkout of redis/redis's tests (7.0 line), see BENCHMARKS.md")
    tests = os.path.abspath(a.tests)
    if not os.path.isfile(os.path.join(tests, "runtest")):
        sys.exit(f"{tests}/runtest not found: check out redis/redis's tests (7.0 line) there")
    for b in ["redis-server", "redis-cli", "redis-benchmark"]:
        if not os.path.exists(os.path.join(tests, "src", b)):
            sys.exit(f"{tests}/src/{b} missing: ln -s $(which {b}) {tests}/src/{b} (apt-get install -y redis-server redis-tools)")
    if not shutil.which("tclsh8.6") and not shutil.which("tclsh8.5"):
        sys.exit("tclsh 8.5+ is not installed: apt-get install -y tcl")
    legate = a.legate = os.path.abspath(a.legate)
    if not os.access(legate, os.X_OK):
        sys.exit(f"{legate} not found: cargo build --release")
    out = a.out or tempfile.mkdtemp(prefix="redis-suite-")
    os.makedirs(out, exist_ok=True)
    ports = Ports(a.port_base, a.port_span)
    # the suite's own test server listens on one of baseport-32..-1 (moved up by 40 when all are busy)
    baseport = (a.port_base + a.port_span + 40) if a.port_base else 21111
    units = [u for u in a.units.split(",") if u]
    tree = shadow_tree(tests, out) if a.harness_direct else tests
    results = {}
    for unit in units:
        results[unit] = {side: run_side(a, tree, tests, legate, unit, side, ports, baseport, out)
                         for side in (["legate"] if a.skip_direct else ["direct", "legate"])}

    report(results, a.shards, a.harness_direct, out)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"shards": a.shards, "harness_direct": a.harness_direct, "out": out, "results": results}, f,
                      indent=1)


if __name__ == "__main__":
    main()
