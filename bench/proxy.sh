#!/usr/bin/env bash
# Front-door benchmark, side by side in one run on this machine:
#   direct to the primary, through pgwarden, through pgbouncer (session pooling).
# pgbench select-only (-S) and simple-update (-N), 8 and 64 clients; then resident memory per
# idle authenticated client with 2,000 clients.
#
#   bench/proxy.sh [SECONDS]            (default 15 s per run)
#   bench/proxy.sh --memory             (only the idle-client memory measurement)
#
# Needs: a release build (cargo build --release), PostgreSQL 15, pgbouncer, python3-psycopg2.
# pgpool-II is not measured here yet: its pgpool_setup needs passwordless `ssh localhost` for
# the postgres user (see docs/BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
MEMORY_ONLY=0
if [ "${1:-}" = "--memory" ]; then MEMORY_ONLY=1; shift; fi
T=${1:-15}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
P=$PWD/target/release/pgwarden
W=$(mktemp -d /tmp/pgwarden-bench-XXXXXX)
chmod 755 "$W"
SB=$W/sandbox
BASE=${BENCH_PORT:-28000}
cleanup() {
    [ -f "$W/pgb/pgbouncer.pid" ] && kill "$(cat "$W/pgb/pgbouncer.pid")" 2>/dev/null || true
    "$P" sandbox down --dir "$SB" --destroy >/dev/null 2>&1 || true
    rm -rf "$W"
}
trap cleanup EXIT
"$P" sandbox up --dir "$SB" --port "$BASE" >/dev/null
PW=$(grep -m1 '^127.0.0.1' "$SB/pgpass" | cut -d: -f5)
PRIMARY=$((BASE + 2)); PROXY=$BASE; BOUNCER=$((BASE + 90))
export PGPASSFILE=$SB/pgpass
# Room for 64 clients of each contender plus their pools: max_connections 400 on every node,
# pgwarden's pool 200 per node (pgbouncer's default_pool_size is 100, below).
for n in 0 1 2; do psql -h 127.0.0.1 -p $((BASE + 2 + n)) -U postgres -d postgres -qc "ALTER SYSTEM SET max_connections = 400"; done
sed -i 's/^\[proxy\]$/[proxy]\npool_size = 200/' "$SB/pgwarden.toml"
"$P" sandbox down --dir "$SB" >/dev/null
"$P" sandbox up --dir "$SB" >/dev/null
echo "127.0.0.1:$BOUNCER:*:postgres:$PW" >> "$SB/pgpass"

start_pgbouncer "$W/pgb" $BOUNCER $PRIMARY "$PW"

pgbench -h 127.0.0.1 -p $PRIMARY -U postgres -i -s 20 -q test >/dev/null 2>&1
sleep 2 # let the standbys catch up

TICK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# One pgbench run; prints "tps avg_ms p99_ms cpu": cpu is the CPU time (user + system) process
# PID spent per transaction, in microseconds ("-" without a PID). On a machine where the proxy
# shares its cores with PostgreSQL and pgbench, that is the proxy's real cost: every
# microsecond it spends is taken from the database and the client.
run() {
    local port=$1 mode=$2 clients=$3 pid=${4:-} dir t0=0 t1=0
    dir=$(mktemp -d "$W/log-XXXX")
    [ -n "$pid" ] && t0=$(cpu_ticks "$pid")
    (cd "$dir" && pgbench -h 127.0.0.1 -p "$port" -U postgres $mode -T "$T" -c "$clients" -j 2 -l --sampling-rate 0.05 test > out.txt 2>&1) || { cat "$dir/out.txt" >&2; echo "0 0 0 -"; return; }
    [ -n "$pid" ] && t1=$(cpu_ticks "$pid")
    local tps avg p99 n cpu="-"
    tps=$(awk '/^tps/ {print $3}' "$dir/out.txt")
    avg=$(awk '/latency average/ {print $4}' "$dir/out.txt")
    n=$(awk '/number of transactions actually processed/ {print $6}' "$dir/out.txt")
    p99=$(cat "$dir"/pgbench_log.* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; printf "%.3f", a[i]/1000}')
    [ -n "$pid" ] && cpu=$(awk -v d=$((t1 - t0)) -v k="$TICK" -v n="$n" 'BEGIN { printf "%.1f", d * 1e6 / k / n }')
    echo "$tps $avg $p99 $cpu"
}

# Restarts the cluster and the warden; with "primary" the standbys get weight 0 (no reads).
restart() {
    sed -i '/^weight = 0$/d' "$SB/pgwarden.toml"
    if [ "$1" = primary ]; then
        sed -i 's/^application_name = "node\([12]\)"$/application_name = "node\1"\nweight = 0/' "$SB/pgwarden.toml"
    fi
    "$P" sandbox down --dir "$SB" >/dev/null
    "$P" sandbox up --dir "$SB" >/dev/null
    sleep 2
    WARDEN_PID=$(cat "$SB/warden.pid")
    # Warm the caches again (not reported).
    pgbench -h 127.0.0.1 -p $PRIMARY -U postgres -S -T 3 -c 8 -j 2 test >/dev/null 2>&1 || true
}

BOUNCER_PID=$(cat "$W/pgb/pgbouncer.pid")
WARDEN_PID=$(cat "$SB/warden.pid")

# Each pass: every cell directly, through pgwarden, through pgbouncer, one after the other.
pass() {
    local label=$1 mode clients target tps avg p99 cpu dtps davg dp99 name ratio
    for mode in "-S" "-N"; do
        for clients in 8 64; do
            read -r dtps davg dp99 _ < <(run $PRIMARY "$mode" $clients)
            for target in direct pgwarden pgbouncer; do
                case $target in
                    direct) tps=$dtps avg=$davg p99=$dp99 cpu="-" ;;
                    pgwarden) read -r tps avg p99 cpu < <(run $PROXY "$mode" $clients "$WARDEN_PID") ;;
                    pgbouncer) read -r tps avg p99 cpu < <(run $BOUNCER "$mode" $clients "$BOUNCER_PID") ;;
                esac
                name=$([ "$mode" = "-S" ] && echo "select-only" || echo "simple-update")
                ratio=$(awk -v a="$tps" -v b="$dtps" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
                [ $target = pgwarden ] && target="pgwarden ($label)"
                printf "| %s | %d | %s | %.0f | %s | %s | %s | %s |\n" "$name" $clients "$target" "$tps" "$avg" "$p99" "$cpu" "$ratio"
            done
        done
    done
}

[ $MEMORY_ONLY -eq 1 ] || {
echo "| workload | clients | target | TPS | avg latency (ms) | p99 latency (ms) | proxy CPU per tx (µs) | TPS vs direct |"
echo "|---|---|---|---|---|---|---|---|"
# Pass 1, as configured: reads balanced over the primary and both standbys (which here share
# the same two cores, so balancing buys no capacity and costs cache locality).
pass "balanced"
# Pass 2: reads on the primary only, like pgbouncer: the proxy's own cost, side by side.
restart primary
pass "primary only"
}

# Memory per idle client: 2,000 authenticated clients that then sit idle.
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
idle_clients() {
    /usr/bin/python3 - "$1" "$PW" "$2" "$PRIMARY" <<'PY'
import sys, time, psycopg2
port, pw, pid, primary = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
base = rss()
conns = [psycopg2.connect(host="127.0.0.1", port=port, user="postgres", password=pw, dbname="test", connect_timeout=10) for _ in range(2000)]
time.sleep(2)
after = rss()
d = psycopg2.connect(host="127.0.0.1", port=primary, user="postgres", password=pw, dbname="postgres")
cur = d.cursor()
cur.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
backends = cur.fetchone()[0] - 1
print(f"{base} {after} {(after - base) * 1024 / 2000:.0f} {backends}")
for c in conns:
    c.close()
PY
}
echo
echo "| target | RSS before (KiB) | RSS with 2,000 idle clients (KiB) | bytes per idle client | primary backends meanwhile |"
echo "|---|---|---|---|---|"
read -r b a per n < <(idle_clients $PROXY "$WARDEN_PID")
echo "| pgwarden | $b | $a | $per | $n |"
read -r b a per n < <(idle_clients $BOUNCER "$BOUNCER_PID")
echo "| pgbouncer | $b | $a | $per | $n |"
