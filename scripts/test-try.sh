#!/usr/bin/env bash
# Checks scripts/try.sh as a newcomer would use it: run it in a process group of its own, wait
# until it is serving, press "Ctrl-C" (SIGINT to the whole group, as a terminal does), and check
# that it exited and left no process and no listening port behind; then run it a second time;
# then hold one of its ports and check that it refuses with a message naming that port.
#
# Usage: scripts/test-try.sh [BASE_PORT]   (ports BASE_PORT..BASE_PORT+6, default 35000)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BASE=${1:-35000}
PORTS=$(seq "$BASE" $((BASE + 6)))
OUT=$(mktemp -d)
set -m # background jobs get a process group of their own, and SIGINT is not ignored in them

fail() { echo "test-try: FAIL: $*" >&2; exit 1; }

descendants() { # every process below $1
    local c
    for c in $(pgrep -P "$1" || true); do
        echo "$c"
        descendants "$c"
    done
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

one_run() { # one_run N: start, check the output, Ctrl-C, check nothing is left
    local n=$1 log="$OUT/run$1.log" pid pgid kids i rc
    scripts/try.sh --base-port "$BASE" >"$log" 2>&1 &
    pid=$!
    pgid=$(ps -o pgid= -p "$pid" | tr -d ' ')
    [ "$pgid" = "$pid" ] || fail "try.sh is not in a process group of its own"
    for i in $(seq 1200); do
        grep -q 'Press Ctrl-C' "$log" && break
        kill -0 "$pid" 2>/dev/null || { cat "$log"; fail "run $n: try.sh exited before serving"; }
        sleep 0.5
    done
    grep -q 'Press Ctrl-C' "$log" || { cat "$log"; fail "run $n: not serving after 10 minutes"; }
    kids=$(descendants "$pid")
    [ "$(echo "$kids" | wc -w)" -ge 5 ] || fail "run $n: expected legate and 4 backends below try.sh, found: $kids"
    # Both pools' keys spread over both of their servers.
    for p in $(seq "$BASE" $((BASE + 3))); do
        keys=$(grep -E "^  (memcache|redis) +127\.0\.0\.1:$p( |$)" "$log" | awk '{print $NF}')
        [[ "$keys" =~ ^[0-9]+$ ]] && [ "$keys" -gt 0 ] || { cat "$log"; fail "run $n: no keys reported on server port $p"; }
    done
    grep -q "http://127.0.0.1:$((BASE + 6))/metrics" "$log" || fail "run $n: no /metrics URL printed"
    grep -q "http://127.0.0.1:$((BASE + 6))/stats" "$log" || fail "run $n: no /stats URL printed"
    kill -INT -- "-$pgid"
    rc=0
    for i in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && fail "run $n: try.sh still running 30 s after SIGINT"
    wait "$pid" || rc=$?
    [ "$rc" -eq 130 ] || { cat "$log"; fail "run $n: exit status $rc after SIGINT, expected 130"; }
    for k in $kids; do
        if kill -0 "$k" 2>/dev/null; then
            fail "run $n: process $k ($(ps -o args= -p "$k")) left behind"
        fi
    done
    for p in $PORTS; do
        listening "$p" && fail "run $n: port $p still listening after Ctrl-C"
    done
    echo "test-try: run $n: served both pools, Ctrl-C left nothing behind"
}

for p in $PORTS; do
    listening "$p" && fail "port $p is already in use before the test; pick another BASE_PORT"
done
one_run 1
one_run 2

# A port in use: hold the redis shard-a port and expect a clear refusal naming it.
redis-server --port $((BASE + 2)) --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
holder=$!
trap 'kill $holder 2>/dev/null || true' EXIT
for i in $(seq 100); do listening $((BASE + 2)) && break; sleep 0.05; done
rc=0
scripts/try.sh --base-port "$BASE" >"$OUT/busy.log" 2>&1 || rc=$?
[ "$rc" -eq 1 ] || { cat "$OUT/busy.log"; fail "with a port in use: exit status $rc, expected 1"; }
grep -q "port $((BASE + 2)) (redis-server shard-a" "$OUT/busy.log" || { cat "$OUT/busy.log"; fail "no message naming the busy port"; }
for p in $PORTS; do
    [ "$p" -eq $((BASE + 2)) ] && continue
    listening "$p" && fail "try.sh started something on port $p although it refused to run"
done
echo "test-try: a port in use is refused with: $(grep -m1 'already in use' "$OUT/busy.log")"
rm -rf "$OUT"
echo "test-try: 3 passed, 0 failed"
