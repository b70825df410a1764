#!/usr/bin/env bash
# First run: build legate, start the four backends config/example.yml points at (two memcached,
# two redis-server, on loopback), start legate on that config with its admin endpoint, send a
# short burst through both pools with legate-bench, show where the keys landed, then stay in the
# foreground until Ctrl-C and stop everything this script started.
#
# Needs only the Rust toolchain: redis-server and memcached are installed with apt-get when run
# as root on Debian/Ubuntu; otherwise the script says what to install and stops.
#
# Usage: scripts/try.sh [--base-port N]
#   --base-port N   use ports N..N+6 instead of example.yml's (memcached x2, redis-server x2,
#                   the memcache pool, the Redis pool, the admin endpoint), for when those are taken.
# Logs of every process it starts: <cargo target dir>/try/*.log (kept after it stops).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'try.sh: %s\n' "$*" >&2; exit 1; }

BASE_PORT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --base-port) BASE_PORT="${2:-}"; shift 2 || die "--base-port needs a number" ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

# --- what is missing --------------------------------------------------------------------------
command -v cargo >/dev/null || die "cargo is not on PATH: install the Rust toolchain (rustup) first"
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v memcached >/dev/null || [ -x /usr/bin/memcached ] || missing+=(memcached)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        say "installing ${missing[*]} (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    elif command -v apt-get >/dev/null; then
        die "missing ${missing[*]}: run  sudo apt-get install -y ${missing[*]}  then run this again"
    else
        die "missing ${missing[*]}: install them with your package manager (dnf install redis memcached; brew install redis memcached), then run this again"
    fi
fi

# --- ports: example.yml's, or N..N+6 ----------------------------------------------------------
EXAMPLE=config/example.yml
names=("memcached 1 (memcache pool server)" "memcached 2 (memcache pool server)"
       "redis-server shard-a (redis pool server)" "redis-server shard-b (redis pool server)"
       "legate memcache pool listener" "legate redis pool listener" "legate admin endpoint")
default_ports=(11311 11312 6391 6392 22121 22122 22222)
ports=("${default_ports[@]}")
if [ -n "$BASE_PORT" ]; then
    [[ "$BASE_PORT" =~ ^[0-9]+$ ]] && [ "$BASE_PORT" -ge 1024 ] && [ "$BASE_PORT" -le 65529 ] ||
        die "--base-port must be a number from 1024 to 65529"
    for i in "${!ports[@]}"; do ports[$i]=$((BASE_PORT + i)); done
fi
MC1=${ports[0]} MC2=${ports[1]} R1=${ports[2]} R2=${ports[3]}
MC_POOL=${ports[4]} R_POOL=${ports[5]} ADMIN=${ports[6]}

# Something accepting connections on 127.0.0.1:$1?
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

busy=0
for i in "${!ports[@]}"; do
    p=${ports[$i]}
    if listening "$p"; then
        busy=1
        who=""
        command -v ss >/dev/null && who=$(ss -Hltnp "sport = :$p" 2>/dev/null | sed -n 's/.*users:((\(.*\)))/\1/p' | head -1)
        printf 'try.sh: port %s (%s) is already in use%s\n' "$p" "${names[$i]}" "${who:+ by $who}" >&2
    fi
done
if [ "$busy" -eq 1 ]; then
    cat >&2 <<EOF
try.sh: stop what holds those ports (another scripts/try.sh still running? a legate or a
        backend started by hand?), or run on other ports:  scripts/try.sh --base-port 36000
EOF
    exit 1
fi

# --- build ------------------------------------------------------------------------------------
say "building legate and legate-bench (cargo build --release)"
cargo build --release --bin legate --bin legate-bench
TARGET=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$TARGET" ] || TARGET="$ROOT/target"
LEGATE="$TARGET/release/legate"
BENCH="$TARGET/release/legate-bench"
RUN="$TARGET/try"
mkdir -p "$RUN"
rm -f "$RUN"/*.log

CONF="$EXAMPLE"
if [ -n "$BASE_PORT" ]; then
    CONF="$RUN/example.yml"
    sed -e "s/:11311:/:$MC1:/; s/:11312:/:$MC2:/; s/:6391:/:$R1:/; s/:6392:/:$R2:/" \
        -e "s/:22121\$/:$MC_POOL/; s/:22122\$/:$R_POOL/" "$EXAMPLE" >"$CONF"
fi

# --- start and stop ---------------------------------------------------------------------------
# Each child runs in a session of its own (setsid), so a Ctrl-C reaches only this script, which
# then stops them in order and waits for each: nothing is left behind.
pids=()
what=()
stopping=0
stop_all() {
    [ "$stopping" -eq 1 ] && return
    stopping=1
    trap '' INT TERM HUP
    if [ ${#pids[@]} -gt 0 ]; then
        say "stopping legate and the backends"
        # legate first (it drains its clients), then the backends.
        for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
            kill -TERM "${pids[$i]}" 2>/dev/null || true
            for _ in $(seq 100); do
                kill -0 "${pids[$i]}" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "${pids[$i]}" 2>/dev/null || true
            wait "${pids[$i]}" 2>/dev/null || true
        done
        pids=()
        echo "stopped; logs are in $RUN/"
    fi
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM HUP
trap 'stop_all' EXIT

start() { # start NAME LOG CMD...: run CMD in its own session, remember its pid.
    local name=$1 log=$2
    shift 2
    setsid "$@" >"$log" 2>&1 </dev/null &
    pids+=($!)
    what+=("$name")
}

wait_port() { # wait_port PORT NAME LOG
    for _ in $(seq 200); do
        listening "$1" && return 0
        kill -0 "${pids[-1]}" 2>/dev/null || break
        sleep 0.05
    done
    echo "try.sh: $2 did not start on port $1; the end of its log ($3):" >&2
    tail -n 20 "$3" >&2 || true
    exit 1
}

MC_USER=()
[ "$(id -u)" -eq 0 ] && MC_USER=(-u nobody)
say "starting memcached on $MC1 and $MC2, redis-server on $R1 and $R2"
for p in "$MC1" "$MC2"; do
    start "memcached $p" "$RUN/memcached-$p.log" memcached -l 127.0.0.1 -p "$p" -U 0 -t 1 -m 64 "${MC_USER[@]}"
    wait_port "$p" "memcached" "$RUN/memcached-$p.log"
done
for p in "$R1" "$R2"; do
    start "redis-server $p" "$RUN/redis-$p.log" redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --dir "$RUN"
    wait_port "$p" "redis-server" "$RUN/redis-$p.log"
done

say "starting legate -c $CONF --admin 127.0.0.1:$ADMIN"
start legate "$RUN/legate.log" "$LEGATE" -c "$CONF" --admin "127.0.0.1:$ADMIN" --scrape-interval 1
wait_port "$ADMIN" legate "$RUN/legate.log"

# One HTTP GET over bash's /dev/tcp (no curl needed); prints the body, fails on non-200.
http_get() {
    local status body
    exec 3<>"/dev/tcp/127.0.0.1/$ADMIN" || return 1
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$1" >&3
    body=$(cat <&3)
    exec 3<&- 3>&-
    status=$(printf '%s' "$body" | head -1 | tr -d '\r')
    printf '%s' "$body" | sed '1,/^\r\{0,1\}$/d'
    [[ "$status" == *" 200"* ]]
}
ready=0
for _ in $(seq 100); do
    if http_get /ready >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.1
done
if [ "$ready" -ne 1 ]; then
    echo "try.sh: legate did not become ready; /ready says: $(http_get /ready 2>/dev/null || true)" >&2
    tail -n 20 "$RUN/legate.log" >&2 || true
    exit 1
fi

# --- a short burst through both pools ---------------------------------------------------------
KEYS=1000
say "memcache pool 127.0.0.1:$MC_POOL: 20000 requests (get:set 10:1) over $KEYS keys"
"$BENCH" --protocol memcache --addr "127.0.0.1:$MC_POOL" -c 10 -n 20000 --keys "$KEYS" --ratio 10:1
say "redis pool 127.0.0.1:$R_POOL: 20000 requests (GET:SET 1:1) over $KEYS keys"
"$BENCH" --protocol redis --addr "127.0.0.1:$R_POOL" -c 10 -n 20000 --keys "$KEYS"

# --- where the keys landed --------------------------------------------------------------------
redis_keys() {
    local n
    exec 4<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'DBSIZE\r\n' >&4
    IFS= read -r -t 2 n <&4 || n=":?"
    exec 4<&- 4>&-
    n=${n#:}
    echo "${n%$'\r'}"
}
memcached_items() {
    local line n="?"
    exec 4<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'stats\r\n' >&4
    while IFS= read -r -t 2 line <&4; do
        line=${line%$'\r'}
        case "$line" in
            "STAT curr_items "*) n=${line#STAT curr_items } ;;
            END) break ;;
        esac
    done
    exec 4<&- 4>&-
    echo "$n"
}
echo
say "where the keys landed ($KEYS distinct keys per pool, hashed by fnv1a_64 on a ketama ring)"
printf '  %-10s %-24s %-9s %s\n' pool server protocol keys
printf '  %-10s %-24s %-9s %s\n' memcache "127.0.0.1:$MC1" memcache "$(memcached_items "$MC1")"
printf '  %-10s %-24s %-9s %s\n' memcache "127.0.0.1:$MC2" memcache "$(memcached_items "$MC2")"
printf '  %-10s %-24s %-9s %s\n' redis "127.0.0.1:$R1 shard-a" redis "$(redis_keys "$R1")"
printf '  %-10s %-24s %-9s %s\n' redis "127.0.0.1:$R2 shard-b" redis "$(redis_keys "$R2")"

cat <<EOF

legate is running (pid ${pids[-1]}) on $CONF:
  memcache pool   127.0.0.1:$MC_POOL   e.g.  printf 'get bench:1\\r\\nquit\\r\\n' | nc 127.0.0.1 $MC_POOL
  redis pool      127.0.0.1:$R_POOL   e.g.  redis-cli -p $R_POOL set hello world
  metrics         http://127.0.0.1:$ADMIN/metrics
  stats (twemproxy JSON)  http://127.0.0.1:$ADMIN/stats
  logs            $RUN/
Press Ctrl-C to stop legate and the four backends.
EOF

# --- foreground until Ctrl-C (or until something this script started dies) --------------------
set +e
while :; do
    wait -n "${pids[@]}"
    rc=$?
    [ "$rc" -gt 128 ] && [ "$stopping" -eq 1 ] && break
    for i in "${!pids[@]}"; do
        if ! kill -0 "${pids[$i]}" 2>/dev/null; then
            echo "try.sh: ${what[$i]} exited unexpectedly; its log is in $RUN/" >&2
            exit 1
        fi
    done
done
