#!/usr/bin/env bash
# Where a select-only transaction's CPU goes, machine-wide: directly, through pgwarden and
# through pgbouncer, in turn, on one two-node sandbox with reads on the primary. Per
# transaction: all CPU busy (from /proc/stat), idle, the proxy's own, PostgreSQL's (every
# postgres process that lives through the run: a direct run's backends exit before they are
# counted, so its share shows under "other"), the rest (pgbench, interrupts), and time stolen
# by the hypervisor. A proxy's cost is more than its own CPU: what it makes the others spend,
# and the idle time its latency leaves, count too. The proxy's own CPU is also split into
# user and system time, with its voluntary (it slept) and involuntary (it was preempted)
# context switches per transaction, summed over its threads.
#
#   P=target/release/pgwarden T=8 C=8 ROUNDS=2 bench/where-cpu-goes.sh
#   PGWARDEN_WORKERS=1 bench/where-cpu-goes.sh      (pgwarden with one worker thread)
#   RELAY=1 bench/where-cpu-goes.sh                 (also a bare tokio relay, the floor:
#                                                    crates/proxy/examples/relay_floor.rs)
#
# Needs a release build, PostgreSQL 15, pgbench and pgbouncer (run as postgres when root).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
P=$(realpath "${P:-target/release/pgwarden}")
T=${T:-8}; C=${C:-8}; ROUNDS=${ROUNDS:-2}
W=$(mktemp -d /tmp/pgwarden-cpu-XXXXXX); chmod 755 $W
SB=$W/sb; BASE=${BENCH_PORT:-29000}
cleanup() { [ -n "${RPID:-}" ] && kill $RPID 2>/dev/null || true; [ -f $W/pgb/pgbouncer.pid ] && kill $(cat $W/pgb/pgbouncer.pid) 2>/dev/null || true; "$P" sandbox down --dir $SB --destroy >/dev/null 2>&1 || true; rm -rf $W; }
trap cleanup EXIT
"$P" sandbox up --dir $SB --port $BASE --nodes 2 --no-fsync >/dev/null
sed -i 's/^application_name = "node1"$/application_name = "node1"\nweight = 0/' $SB/pgwarden.toml
sed -i 's/^\[proxy\]$/[proxy]\npool_size = 200/' $SB/pgwarden.toml
"$P" sandbox down --dir $SB >/dev/null; "$P" sandbox up --dir $SB >/dev/null
PW=$(grep -m1 '^127.0.0.1' $SB/pgpass | cut -d: -f5)
PRIMARY=$((BASE+2)); BOUNCER=$((BASE+300))
echo "127.0.0.1:$BOUNCER:*:postgres:$PW" >> $SB/pgpass
export PGPASSFILE=$SB/pgpass
start_pgbouncer "$W/pgb" $BOUNCER $PRIMARY "$PW"
pgbench -h 127.0.0.1 -p $PRIMARY -U postgres -i -s 10 -q test >/dev/null 2>&1
WPID=$(cat $SB/warden.pid); BPID=$(cat $W/pgb/pgbouncer.pid)
TARGETS="direct pgwarden pgbouncer"
if [ -n "${RELAY:-}" ]; then
    RELAY_PORT=$((BASE+301))
    cargo build -q --release -p pgwarden-proxy --example relay_floor
    echo "127.0.0.1:$RELAY_PORT:*:postgres:$PW" >> $SB/pgpass
    target/release/examples/relay_floor $RELAY_PORT $PRIMARY & RPID=$!
    TARGETS="$TARGETS relay"; sleep 0.5
fi
TICK=$(getconf CLK_TCK)
ticks() { awk '{print $14+$15}' /proc/$1/stat 2>/dev/null || echo 0; }
# user ticks, system ticks, voluntary and involuntary switches (every thread) of process $1
proxy_counts() {
    [ -z "$1" ] && { echo 0 0 0 0; return; }
    local us vn; us=$(awk '{print $14, $15}' /proc/$1/stat)
    vn=$(cat /proc/$1/task/*/status | awk '/^voluntary_ctxt/ {v+=$2} /^nonvoluntary_ctxt/ {n+=$2} END {print v+0, n+0}')
    echo $us $vn
}
pg_ticks() { local s=0; for p in $(pgrep -x postgres); do s=$((s + $(ticks $p))); done; echo $s; }
sysstat() { awk '/^cpu / {print $2+$3+$4+$7+$8, $5+$6, $9}' /proc/stat; }
echo "| target | TPS | total busy µs/tx | idle µs/tx | proxy µs/tx (user + sys) | proxy switches/tx (vol / invol) | postgres µs/tx | other µs/tx | steal µs/tx |"
echo "|---|---|---|---|---|---|---|---|---|"
for r in $(seq 1 $ROUNDS); do
for tgt in $TARGETS; do
  case $tgt in direct) port=$PRIMARY; pid=;; pgwarden) port=$BASE; pid=$WPID;; pgbouncer) port=$BOUNCER; pid=$BPID;; relay) port=$RELAY_PORT; pid=$RPID;; esac
  read b0 i0 s0 < <(sysstat); g0=$(pg_ticks); x0=0; [ -n "$pid" ] && x0=$(ticks $pid)
  read u0 y0 v0 n0 < <(proxy_counts "$pid")
  out=$(pgbench -h 127.0.0.1 -p $port -U postgres -S -T $T -c $C -j 2 test 2>&1)
  read b1 i1 s1 < <(sysstat); g1=$(pg_ticks); x1=0; [ -n "$pid" ] && x1=$(ticks $pid)
  read u1 y1 v1 n1 < <(proxy_counts "$pid")
  n=$(echo "$out" | awk '/processed:/ {print $NF}'); n=${n%%/*}
  tps=$(echo "$out" | awk '/^tps/ {printf "%.0f", $3}')
  awk -v t=$tgt -v tps=$tps -v n=$n -v k=$TICK -v b=$((b1-b0)) -v i=$((i1-i0)) -v x=$((x1-x0)) -v g=$((g1-g0)) -v st=$((s1-s0)) \
      -v u=$((u1-u0)) -v y=$((y1-y0)) -v v=$((v1-v0)) -v nv=$((n1-n0)) 'BEGIN{f=1e6/k/n; printf "| %s | %s | %.1f | %.1f | %.1f (%.1f + %.1f) | %.2f / %.2f | %.1f | %.1f | %.1f |\n", t, tps, b*f, i*f, x*f, u*f, y*f, v/n, nv/n, g*f, (b-x-g)*f, st*f}'
done; done
