#!/bin/sh
# Side-by-side benchmark: the backends reached directly, through nutcracker, and through legate.
# Needs redis-server, memcached, nutcracker (apt-get install -y redis-server memcached nutcracker).
# redis-benchmark (redis-tools) is a second client; memtier_benchmark a third when installed
# (Debian 12 has no package: it is skipped with a note). No other dependency: the charts are
# plain SVG written by benches/charts.py.
# Usage: benches/compare.sh [--rounds N] [--quick | --scale F] [--only WORKLOAD,...] [--clients ...]
#        [--no-pin] [--json FILE] [--charts DIR] [--from-json FILE]   (--help for all)
set -eu
cd "$(dirname "$0")/.."
cargo build --release --bin legate --bin legate-bench
exec python3 benches/compare.py "$@"
