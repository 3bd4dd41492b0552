#!/usr/bin/env bash
# Two pgwarden binaries head to head on one sandbox, reads on the primary only (the standbys at
# weight 0), so that a change's cost shows apart from this machine's drift: three rounds, each
# restarting the sandbox with one binary then the other, pgbench -S and -N at 8 and 64 clients
# through the proxy, with the proxy's CPU time per transaction from /proc/PID/stat.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY [SECONDS]      (default 8 s per cell)
#
# An older binary: git worktree add /tmp/old REV && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target
# cargo build --release --bins), then /tmp/old-target/release/pgwarden.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: bench/ab.sh OLD_BINARY NEW_BINARY [SECONDS]}
NEW=${2:?usage: bench/ab.sh OLD_BINARY NEW_BINARY [SECONDS]}
T=${3:-8}
W=$(mktemp -d /tmp/pgwarden-ab-XXXXXX)
chmod 755 "$W"
SB=$W/sandbox
BASE=${BENCH_PORT:-27000}
PROXY=$BASE; PRIMARY=$((BASE + 2))
cleanup() {
    "$NEW" sandbox down --dir "$SB" --destroy >/dev/null 2>&1 || true
    rm -rf "$W"
}
trap cleanup EXIT
"$NEW" sandbox up --dir "$SB" --port "$BASE" >/dev/null
export PGPASSFILE=$SB/pgpass
for n in 0 1 2; do psql -h 127.0.0.1 -p $((BASE + 2 + n)) -U postgres -d postgres -qc "ALTER SYSTEM SET max_connections = 400"; done
sed -i 's/^\[proxy\]$/[proxy]\npool_size = 200/' "$SB/pgwarden.toml"
sed -i 's/^application_name = "node\([12]\)"$/application_name = "node\1"\nweight = 0/' "$SB/pgwarden.toml"
"$NEW" sandbox down --dir "$SB" >/dev/null
"$NEW" sandbox up --dir "$SB" >/dev/null
pgbench -h 127.0.0.1 -p $PRIMARY -U postgres -i -s 10 -q test >/dev/null 2>&1
echo "| round | binary | workload | clients | TPS | proxy CPU per tx (µs) |"
echo "|---|---|---|---|---|---|"
for round in 1 2 3; do
    for which in old new; do
        bin=$([ $which = old ] && echo "$OLD" || echo "$NEW")
        "$NEW" sandbox down --dir "$SB" >/dev/null
        "$bin" sandbox up --dir "$SB" >/dev/null
        sleep 2
        pid=$(cat "$SB/warden.pid")
        pgbench -h 127.0.0.1 -p $PRIMARY -U postgres -S -T 2 -c 8 -j 2 test >/dev/null 2>&1 || true
        for mode in -S -N; do
            for c in 8 64; do
                t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
                out=$(pgbench -h 127.0.0.1 -p $PROXY -U postgres $mode -T "$T" -c $c -j 2 test 2>&1) || true
                t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
                tps=$(echo "$out" | awk '/^tps/ {printf "%.0f", $3}')
                n=$(echo "$out" | awk '/processed:/ {print $NF}'); n=${n%%/*}
                cpu=$(awk -v a="$t0" -v b="$t1" -v n="${n:-0}" -v hz="$(getconf CLK_TCK)" 'BEGIN { if (n > 0) printf "%.1f", (b - a) * 1e6 / hz / n; else print "-" }')
                name=$([ "$mode" = "-S" ] && echo "select-only" || echo "simple-update")
                echo "| $round | $which | $name | $c | ${tps:-0} | $cpu |"
            done
        done
    done
done
