#!/bin/bash
# Count what legate's process does per request: perf stat (task-clock, context switches,
# migrations, system calls) over one legate-bench run, unpinned, on 3 fresh redis-servers.
#
#   benches/perfstat.sh "--workers 1" -c 50 -P 1 -n 100000
#   benches/perfstat.sh ""            -c 50 -P 1 -n 100000      # the default command line
#   PERF="perf record -F 2000 -g -o w2.data" benches/perfstat.sh "" -c 50 -P 1 -n 100000
#
# Needs perf (Debian: linux-perf) and root or perf_event_paranoid <= 0 for the syscall count.
set -e
cleanup() { kill $LP 2>/dev/null; for i in 0 1 2; do [ -f $TMP/r$i.pid ] && kill $(cat $TMP/r$i.pid) 2>/dev/null; done; true; }
trap cleanup EXIT
L="$1"; shift
TMP=$(mktemp -d)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=$ROOT/target/release/legate-bench
P0=$((21000 + (RANDOM % 40) * 20)); LPORT=$((P0+10))
for i in 0 1 2; do redis-server --port $((P0+i)) --save "" --appendonly no --daemonize yes --pidfile $TMP/r$i.pid >/dev/null; done
cat > $TMP/ps.yml <<Y
r:
  listen: 127.0.0.1:$LPORT
  hash: fnv1a_64
  distribution: ketama
  redis: true
  servers:
    - 127.0.0.1:$P0:1
    - 127.0.0.1:$((P0+1)):1
    - 127.0.0.1:$((P0+2)):1
Y
for i in 0 1 2; do for t in $(seq 100); do redis-cli -p $((P0+i)) ping >/dev/null 2>&1 && break; sleep 0.05; done; done
$ROOT/target/release/legate $L -c $TMP/ps.yml --admin off >/dev/null 2>&1 & LP=$!
sleep 0.5
$B --protocol redis --addr 127.0.0.1:$LPORT --keys 10000 -c 50 -n 20000 >/dev/null
${PERF:-perf stat -e task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter -o $TMP/ps.out} -p $LP &
PP=$!
sleep 0.2
$B --protocol redis --addr 127.0.0.1:$LPORT --keys 10000 --json "$@" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("ops/s %.0f requests %d" % (r["ops_per_sec"], r["requests"]))'
kill -INT $PP; wait $PP 2>/dev/null || true
grep -E "task-clock|context|migr|sys_enter" $TMP/ps.out
