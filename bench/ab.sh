#!/usr/bin/env bash
# Two pgwarden binaries head to head on one sandbox, reads on the primary only (the standbys at
# weight 0; AB_BALANCED=1 keeps their weight), so that a change's cost shows apart from this
# machine's drift: three rounds, each restarting the sandbox with one binary then the other,
# pgbench -S and -N at 8 and 64 clients through the proxy, with the proxy's CPU time per
# transaction from /proc/PID/stat.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY [SECONDS]      (default 8 s per cell)
#
# AB_ROUNDS=N (default 3) and AB_CELLS="-S:8 -N:64 ..." (default every workload at 8 and 64
# clients) narrow or lengthen a run; the medians per binary and cell close the table. A cell's
# pgbench options are joined with commas: "-S,-Mprepared:8" is select-only with named
# prepared statements.
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
# (AB_BALANCED=1: the standbys keep their weight, and reads are balanced over them.)
[ -n "${AB_BALANCED:-}" ] || sed -i 's/^application_name = "node\([12]\)"$/application_name = "node\1"\nweight = 0/' "$SB/pgwarden.toml"
"$NEW" sandbox down --dir "$SB" >/dev/null
"$NEW" sandbox up --dir "$SB" >/dev/null
pgbench -h 127.0.0.1 -p $PRIMARY -U postgres -i -s 10 -q test >/dev/null 2>&1
echo "| round | binary | workload | clients | TPS | proxy CPU per tx (µs) |"
echo "|---|---|---|---|---|---|"
ROUNDS=${AB_ROUNDS:-3}
CELLS=${AB_CELLS:--S:8 -S:64 -N:8 -N:64}
RESULTS=$W/results
for round in $(seq 1 "$ROUNDS"); do
    for which in old new; do
        bin=$([ $which = old ] && echo "$OLD" || echo "$NEW")
        "$NEW" sandbox down --dir "$SB" >/dev/null
        "$bin" sandbox up --dir "$SB" >/dev/null
        sleep 2
        pid=$(cat "$SB/warden.pid")
        pgbench -h 127.0.0.1 -p $PRIMARY -U postgres -S -T 2 -c 8 -j 2 test >/dev/null 2>&1 || true
        for cell in $CELLS; do
            mode=${cell%%:*}; mode=${mode//,/ }; c=${cell##*:}
            t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
            out=$(pgbench -h 127.0.0.1 -p $PROXY -U postgres $mode -T "$T" -c $c -j 2 test 2>&1) || true
            t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
            tps=$(echo "$out" | awk '/^tps/ {printf "%.0f", $3}')
            [ -n "$tps" ] || echo "$out" | grep -m3 -E 'error|FATAL' >&2 || true
            n=$(echo "$out" | awk '/processed:/ {print $NF}'); n=${n%%/*}
            cpu=$(awk -v a="$t0" -v b="$t1" -v n="${n:-0}" -v hz="$(getconf CLK_TCK)" 'BEGIN { if (n > 0) printf "%.1f", (b - a) * 1e6 / hz / n; else print "-" }')
            name=$(case "$mode" in *-S*) echo "select-only" ;; *) echo "simple-update" ;; esac)
            case "$mode" in *-M*) name="$name,${mode##*-M}" ;; esac
            echo "| $round | $which | $name | $c | ${tps:-0} | $cpu |"
            echo "$which $name $c ${tps:-0} $cpu" >>"$RESULTS"
            # A node marked down stays down across restarts, so every later cell would measure
            # a broken cluster: stop and say so.
            if grep -q "status up -> down" "$SB/log/warden.log"; then
                echo "a node was marked down during the run; the numbers after it are void:" >&2
                grep "status up -> down" "$SB/log/warden.log" >&2
                exit 1
            fi
        done
    done
done
echo
echo "| binary | workload | clients | median TPS | median proxy CPU per tx (µs) |"
echo "|---|---|---|---|---|"
sort -k1,1r -k2,2 -k3,3n "$RESULTS" | awk '
    function median(list,   n, a, i, j, t) {
        n = split(list, a, " ")
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { k = $1 " | " $2 " | " $3; if (!(k in tps)) order[++m] = k; tps[k] = tps[k] " " $4; cpu[k] = cpu[k] " " $5 }
    END { for (i = 1; i <= m; i++) printf "| %s | %.0f | %.1f |\n", order[i], median(tps[order[i]]), median(cpu[order[i]]) }'
