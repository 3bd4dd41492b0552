#!/usr/bin/env bash
# A busy host: pgbench saturates this machine through the proxy while, beside it, a new psql
# session logs in to an idle standby every 250 ms (what a health check on a new connection
# does). It shows how slow new connections get on a saturated host, and whether the warden
# mistakes that for a dead server (a node marked down, a failover). Each binary gets a fresh
# sandbox (a node marked down stays down), and the binaries take turns.
#
#   bench/busy-host.sh [ROUNDS] BINARY...     (ROUNDS blocks per binary, default 2; each block
#                                              is 3 runs of pgbench -S -T 8 -c 8 -j 2)
#
# Reads on the primary only (the standbys at weight 0), pool_size 200, max_connections 400, as
# bench/ab.sh. The sandbox's health checks: period 1 s, connect_timeout 1.5 s, one retry.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=2
if [[ ${1:-} =~ ^[0-9]+$ ]]; then ROUNDS=$1; shift; fi
[ $# -ge 1 ] || { echo "usage: bench/busy-host.sh [ROUNDS] BINARY..." >&2; exit 2; }
W=$(mktemp -d /tmp/pgwarden-busy-XXXXXX)
chmod 755 "$W"
SB=$W/sandbox
BASE=${BENCH_PORT:-27000}
PROXY=$BASE; PRIMARY=$((BASE + 2)); IDLE=$((BASE + 4))
LAST=$1
cleanup() {
    "$LAST" sandbox down --dir "$SB" --destroy >/dev/null 2>&1 || true
    rm -rf "$W"
}
trap cleanup EXIT
export PGPASSFILE=$SB/pgpass

fresh_sandbox() {
    "$1" sandbox down --dir "$SB" --destroy >/dev/null 2>&1 || true
    rm -rf "$SB"
    "$1" sandbox up --dir "$SB" --port "$BASE" >/dev/null 2>&1
    for n in 0 1 2; do psql -h 127.0.0.1 -p $((PRIMARY + n)) -U postgres -d postgres -qc "ALTER SYSTEM SET max_connections = 400"; done
    sed -i 's/^\[proxy\]$/[proxy]\npool_size = 200/' "$SB/pgwarden.toml"
    sed -i 's/^application_name = "node\([12]\)"$/application_name = "node\1"\nweight = 0/' "$SB/pgwarden.toml"
    "$1" sandbox down --dir "$SB" >/dev/null
    "$1" sandbox up --dir "$SB" >/dev/null 2>&1
    pgbench -h 127.0.0.1 -p $PRIMARY -U postgres -i -s 10 -q test >/dev/null 2>&1
    sleep 2
}

echo "| block | binary | median TPS | new logins | p50 login (ms) | p99 | max | nodes marked down |"
echo "|---|---|---|---|---|---|---|---|"
for block in $(seq 1 "$ROUNDS"); do
    for bin in "$@"; do
        LAST=$bin
        fresh_sandbox "$bin"
        logins=$W/logins
        : >"$logins"
        (
            for _ in $(seq 1 200); do
                s=$(date +%s%N)
                psql -h 127.0.0.1 -p $IDLE -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1 || true
                echo $((($(date +%s%N) - s) / 1000000)) >>"$logins"
                sleep 0.25
            done
        ) &
        prober=$!
        tps=()
        for _ in 1 2 3; do
            t=$(pgbench -h 127.0.0.1 -p $PROXY -U postgres -S -T 8 -c 8 -j 2 test 2>&1 | awk '/^tps/ {printf "%.0f", $3}') || true
            tps+=("${t:-0}")
        done
        kill "$prober" 2>/dev/null || true
        wait "$prober" 2>/dev/null || true
        med=$(printf '%s\n' "${tps[@]}" | sort -n | sed -n 2p)
        stats=$(sort -n "$logins" | awk '{ a[NR] = $1 } END { printf "%d | %d | %d | %d", NR, a[int(NR * 0.5) + 1], a[int(NR * 0.99) + 1], a[NR] }')
        down=$(grep -c "status up -> down" "$SB/log/warden.log" || true)
        echo "| $block | $(basename "$bin") | $med | $stats | $down |"
        grep "status up -> down\|failover started" "$SB/log/warden.log" | sed 's/^/    /' >&2 || true
    done
done
