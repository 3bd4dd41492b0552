#!/usr/bin/env bash
# The pgpool-II column of the front-door benchmark: pgbench select-only (-S) and simple-update
# (-N), 8 and 64 clients, through pgpool-II 4.3.5 and directly against the primary of the same
# cluster, in one run. pgpool's cluster is the one Debian's pgpool_setup builds (streaming
# replication, load balancing on, 3 nodes), with its two workarounds (see bench/failover.sh);
# num_init_children is raised to 70 so that 64 clients are served at all.
#
#   bench/proxy-pgpool.sh [SECONDS]     (default 15 s per run; needs root, pgpool2, PostgreSQL 15)
#
# Compare its "vs direct" column with bench/proxy.sh's for pgwarden and pgbouncer.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-15}
W=$(mktemp -d /tmp/pgwarden-ppbench-XXXXXX)
chmod 755 "$W"
BASE=${BENCH_PORT:-29000}
PGPORT=$((BASE + 10)); PGBASE=$((BASE + 20))
B=/usr/lib/postgresql/15/bin
cleanup() {
    [ -x "$W/pgpool/shutdownall" ] && runuser -u postgres -- bash -c "cd $W/pgpool && ./shutdownall" >/dev/null 2>&1 || true
    rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W/pgpool" "$W/pgpool-install" && chown postgres "$W/pgpool"
ln -s /usr/sbin "$W/pgpool-install/bin"; ln -s /usr/sbin "$W/pgpool-install/sbin"
runuser -u postgres -- bash -c "cd $W/pgpool && PGBIN=$B PGPOOL_INSTALL_DIR=$W/pgpool-install PGPOOLDIR=/usr/share/doc/pgpool2/examples pgpool_setup -m s -n 3 -p $PGPORT -pg $PGBASE" > "$W/setup.log" 2>&1
runuser -u postgres -- bash -c "
    set -e; cd $W/pgpool
    $B/pg_ctl -w -D data0 start -l log/rebuild.log >/dev/null
    for n in 1 2; do
        cp data\$n/postgresql.conf conf\$n.saved; rm -rf data\$n
        $B/pg_basebackup -h 127.0.0.1 -p $PGBASE -D data\$n -X stream -R -c fast
        cp conf\$n.saved data\$n/postgresql.conf
    done
    $B/pg_ctl -w -D data0 stop >/dev/null
    echo 'num_init_children = 70' >> etc/pgpool.conf
    echo 'max_connections = 200' >> data0/postgresql.conf
    echo 'max_connections = 200' >> data1/postgresql.conf
    echo 'max_connections = 200' >> data2/postgresql.conf
    ./startall >/dev/null 2>&1" >> "$W/setup.log" 2>&1
for _ in $(seq 1 100); do
    runuser -u postgres -- psql -h 127.0.0.1 -p "$PGPORT" -d postgres -Atc 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.2
done
runuser -u postgres -- $B/pgbench -h 127.0.0.1 -p "$PGBASE" -i -s 20 -q postgres >/dev/null 2>&1
sleep 2  # the standbys replay the load

run() { # name port clients mode
    local out
    out=$(runuser -u postgres -- $B/pgbench -h 127.0.0.1 -p "$2" -c "$3" -j 2 -T "$T" $4 -n postgres 2>&1 || true)
    local tps lat
    tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
    echo "${tps%.*} ${lat:-?}"
}
echo "| workload | clients | target | TPS | avg latency (ms) | TPS vs direct |"
echo "|---|---|---|---|---|---|"
for wl in "select-only:-S" "simple-update:-N"; do
    name=${wl%%:*}; flag=${wl#*:}
    for c in 8 64; do
        read -r dt dl < <(run direct "$PGBASE" "$c" "$flag")
        read -r pt pl < <(run pgpool "$PGPORT" "$c" "$flag")
        echo "| $name | $c | direct | $dt | $dl | 1.00 |"
        if [ -n "$pt" ] && [ -n "$dt" ] && [ "$dt" -gt 0 ]; then
            echo "| $name | $c | pgpool-II | $pt | $pl | $(awk -v a="$pt" -v b="$dt" 'BEGIN {printf "%.2f", a/b}') |"
        else
            echo "| $name | $c | pgpool-II | failed | | |"
        fi
    done
done
