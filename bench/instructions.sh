#!/usr/bin/env bash
# The proxy's own work per query, counted in instructions (valgrind's callgrind), for a change
# too small to see in TPS on this shared, noisy machine: the count barely moves from run to
# run, where CPU time per transaction moves by 5-10 %.
#
#   bench/instructions.sh BINARY [TRANSACTIONS]     (default 2000)
#   RELAY=1 bench/instructions.sh BINARY            (the floor instead: a bare tokio relay,
#                                                    crates/proxy/examples/relay_floor.rs)
#   READS_ON=standby bench/instructions.sh BINARY   (reads balanced to the standby)
#
# A two-node sandbox with reads on the primary; the warden is restarted under callgrind with
# one worker thread, and `pgbench -S -c 1 -t N` runs through it with counting on. Prints the
# instructions per transaction (user space only: the kernel's share is not counted) and leaves
# the profile in /tmp for `callgrind_annotate`. With one client the worker sleeps between
# queries, so each query also pays the runtime's park and timer work (about 2,000
# instructions), which a loaded proxy pays less often: compare binaries, not absolute counts.
#
# Needs valgrind (Debian: valgrind), PostgreSQL 15 and pgbench.
set -euo pipefail
B=$(realpath "${1:?usage: bench/instructions.sh BINARY [TRANSACTIONS]}")
TX=${2:-2000}
W=$(mktemp -d /tmp/pgwarden-instructions-XXXXXX)
chmod 755 "$W"
SB=$W/sandbox
BASE=${BENCH_PORT:-29400}
VPID=
cleanup() {
    [ -n "$VPID" ] && kill "$VPID" 2>/dev/null || true
    "$B" sandbox down --dir "$SB" --destroy >/dev/null 2>&1 || true
    rm -rf "$W"
}
trap cleanup EXIT
"$B" sandbox up --dir "$SB" --port "$BASE" --nodes 2 --no-fsync >/dev/null
# Reads on the primary (node 1 at weight 0), or with READS_ON=standby on the standby (node 0
# at weight 0): the balanced path, where a read may run again on the primary if refused.
if [ "${READS_ON:-primary}" = standby ]; then
    sed -i 's/^application_name = "node0"$/application_name = "node0"\nweight = 0/' "$SB/pgwarden.toml"
else
    sed -i 's/^application_name = "node1"$/application_name = "node1"\nweight = 0/' "$SB/pgwarden.toml"
fi
"$B" sandbox down --dir "$SB" >/dev/null
"$B" sandbox up --dir "$SB" >/dev/null
export PGPASSFILE=$SB/pgpass
pgbench -h 127.0.0.1 -p $((BASE + 2)) -U postgres -i -s 1 -q test >/dev/null 2>&1
# The warden again, under callgrind, as the sandbox started it (or the bare relay in its place,
# in front of the primary).
pid=$(cat "$SB/warden.pid")
mapfile -d '' cmd < "/proc/$pid/cmdline"
cwd=$(readlink "/proc/$pid/cwd")
kill "$pid"
for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if [ -n "${RELAY:-}" ]; then
    (cd "$(dirname "$0")/.." && cargo build -q --release -p pgwarden-proxy --example relay_floor)
    cmd=("$(realpath "$(dirname "$0")/../target/release/examples/relay_floor")" "$BASE" $((BASE + 2)))
fi
(cd "$cwd" && exec env PGWARDEN_WORKERS=1 valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$W/callgrind.out" "${cmd[@]}") >"$W/valgrind.log" 2>&1 &
VPID=$!
for _ in $(seq 1 60); do pg_isready -h 127.0.0.1 -p "$BASE" -q && break; sleep 1; done
[ -z "${RELAY:-}" ] && sleep 8 # the monitor's first checks, the function catalog
pgbench -h 127.0.0.1 -p "$BASE" -U postgres -S -t 200 -c 1 test >/dev/null 2>&1
callgrind_control -i on "$VPID" >/dev/null 2>&1
pgbench -h 127.0.0.1 -p "$BASE" -U postgres -S -t "$TX" -c 1 test >/dev/null 2>&1
callgrind_control -i off "$VPID" >/dev/null 2>&1
callgrind_control -d "$VPID" >/dev/null 2>&1
kill "$VPID"
wait "$VPID" 2>/dev/null || true
VPID=
f=$(grep -l '^totals: [1-9]' "$W"/callgrind.out* | head -1)
out=/tmp/pgwarden-instructions-$(basename "$B")${RELAY:+-relay}.callgrind
mv "$f" "$out"
total=$(awk '/^totals:/ {print $2}' "$out")
echo "instructions per transaction: $((total / TX))  (profile: $out)"
