#!/bin/sh
# TLS cost: the same redis-servers reached through a plaintext pool and a TLS pool of one legate.
# Needs redis-server and openssl. Usage: benches/tls.sh [--rounds N] [--quick]
set -eu
cd "$(dirname "$0")/.."
cargo build --release --bin legate --bin legate-bench
exec python3 benches/tls.py "$@"
