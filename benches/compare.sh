#!/bin/sh
# Side-by-side benchmark: the backends reached directly, through nutcracker, and through legate.
# Needs redis-server, memcached, nutcracker (apt-get install -y redis-server memcached nutcracker).
# Usage: benches/compare.sh [--rounds N] [--quick] [--json FILE]
set -eu
cd "$(dirname "$0")/.."
cargo build --release --bin legate --bin legate-bench
exec python3 benches/compare.py "$@"
