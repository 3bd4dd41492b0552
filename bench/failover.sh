#!/usr/bin/env bash
# Failover benchmark: time from the primary's death to the first successful write through the
# front door, over several trials, for pgwarden and for pgpool-II as pgpool_setup builds it.
#   (a) kill: kill -9 of the primary's postmaster (pgpool: its backends keep the socket
#       errors coming, so failover_on_backend_error triggers at once)
#   (b) hang: SIGSTOP of every process of the primary (the host hangs); SIGCONT afterwards
#
#   bench/failover.sh [TRIALS] [PGPOOL_TRIALS]     (defaults 10 and 3; PGPOOL_TRIALS=0 skips pgpool)
#
# Needs: root (pgpool_setup runs as postgres), PostgreSQL 15, pgpool2, a release build
# (cargo build --release --bins --examples). Each pgwarden trial is a fresh `pgwarden sandbox up`
# (its settings: health_check period 1 s, timeout 3 s, max_retries 1, retry_delay 0.5 s,
# connect_timeout 2 s). pgpool is set up once with pgpool_setup's defaults (health_check_period
# 10, timeout 20, max_retries 3, retry_delay 1, failover_command = its failover.sh, which runs
# pg_ctl promote) and its data directories are restored from a pristine copy for each trial.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
TRIALS=${1:-10}
PGPOOL_TRIALS=${2:-3}
KINDS=${KINDS:-kill hang}
P=$PWD/target/release/pgwarden
PROBE=$PWD/target/release/examples/failover_probe
cargo build --release --bins --examples -q
W=$(mktemp -d /tmp/pgwarden-fobench-XXXXXX)
chmod 755 "$W"
BASE=${BENCH_PORT:-30000}
cleanup() {
    "$P" sandbox down --dir "$W/sb" --destroy >/dev/null 2>&1 || true
    if [ -x "$W/pgpool/shutdownall" ]; then
        pkill -CONT -f "$W/pgpool" 2>/dev/null || true
        runuser -u postgres -- bash -c "cd $W/pgpool && ./shutdownall" >/dev/null 2>&1 || true
    fi
    rm -rf "$W"
}
trap cleanup EXIT

# A shell command that stops, when it runs, every process of the server in DIR (the probe's
# own backend included: the whole host hangs).
stop_all() {
    echo "for p in /proc/[0-9]*; do if [ \"\$(readlink \$p/cwd 2>/dev/null)\" = '$1' ]; then kill -STOP \${p#/proc/}; fi; done; true"
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

RESULTS=$W/results.txt
: > "$RESULTS"
record() { echo "$1 $2 $3" >> "$RESULTS"; echo "  $1 $2 trial: $3 ms"; }

# ---- pgwarden ------------------------------------------------------------------------------
echo "== pgwarden: $TRIALS trials each"
for kind in $KINDS; do
    for i in $(seq 1 "$TRIALS"); do
        "$P" sandbox down --dir "$W/sb" --destroy >/dev/null 2>&1 || true
        "$P" sandbox up --dir "$W/sb" --port "$BASE" --no-fsync >/dev/null
        PW=$(grep -m1 '^127.0.0.1' "$W/sb/pgpass" | cut -d: -f5)
        PM=$(head -1 "$W/sb/data0/postmaster.pid")
        if [ "$kind" = kill ]; then
            CMD="kill -9 $PM"
        else
            CMD=$(stop_all "$W/sb/data0")
        fi
        OUT=$("$PROBE" "$BASE" postgres "$PW" test "$CMD")
        [ "$kind" = hang ] && kill -CONT $(pids_in "$W/sb/data0") 2>/dev/null || true
        MS=$(echo "$OUT" | sed -n 's/.*"ms": \([0-9]*\).*/\1/p')
        record pgwarden "$kind" "${MS:-timeout}"
    done
done
"$P" sandbox down --dir "$W/sb" --destroy >/dev/null 2>&1 || true

# ---- pgpool-II ----------------------------------------------------------------------------
if [ "$PGPOOL_TRIALS" -gt 0 ]; then
    echo "== pgpool-II (pgpool_setup defaults): $PGPOOL_TRIALS trials each"
    mkdir -p "$W/pgpool" && chown postgres "$W/pgpool"
    PGPORT=$((BASE + 10)); PGBASE=$((BASE + 20))
    # Debian installs pgpool and the pcp tools in /usr/sbin and the samples under
    # /usr/share/doc; pgpool_setup expects PGPOOL_INSTALL_DIR/bin and PGPOOLDIR/*.sample.
    mkdir -p "$W/pgpool-install"
    ln -s /usr/sbin "$W/pgpool-install/bin"; ln -s /usr/sbin "$W/pgpool-install/sbin"
    runuser -u postgres -- bash -c "cd $W/pgpool && PGBIN=/usr/lib/postgresql/15/bin PGPOOL_INSTALL_DIR=$W/pgpool-install PGPOOLDIR=/usr/share/doc/pgpool2/examples pgpool_setup -m s -n 3 -p $PGPORT -pg $PGBASE" > "$W/pgpool-setup.log" 2>&1
    if [ ! -x "$W/pgpool/startall" ]; then
        echo "pgpool_setup failed:"; tail -20 "$W/pgpool-setup.log"; exit 1
    fi
    # Debian's pgpool_setup 4.3.5 leaves the "standbys" of a PostgreSQL 15 cluster without
    # standby.signal: they run as primaries of their own (pg_role primary in SHOW pool_nodes).
    # Rebuild them as real streaming standbys of data0, keeping their own postgresql.conf.
    runuser -u postgres -- bash -c "
        set -e; cd $W/pgpool; B=/usr/lib/postgresql/15/bin
        \$B/pg_ctl -w -D data0 start -l log/rebuild.log >/dev/null
        for n in 1 2; do
            cp data\$n/postgresql.conf conf\$n.saved; rm -rf data\$n
            \$B/pg_basebackup -h 127.0.0.1 -p $PGBASE -D data\$n -X stream -R -c fast
            cp conf\$n.saved data\$n/postgresql.conf
        done
        \$B/pg_ctl -w -D data0 stop >/dev/null" >> "$W/pgpool-setup.log" 2>&1 || { echo "rebuilding the standbys failed:"; tail -20 "$W/pgpool-setup.log"; exit 1; }
    # pgpool_setup leaves everything stopped: keep pristine copies of the data directories.
    for n in 0 1 2; do cp -a "$W/pgpool/data$n" "$W/pristine$n"; done
    for kind in $KINDS; do
        for i in $(seq 1 "$PGPOOL_TRIALS"); do
            for n in 0 1 2; do rm -rf "$W/pgpool/data$n"; cp -a "$W/pristine$n" "$W/pgpool/data$n"; done
            rm -f "$W/pgpool/log/pgpool_status"
            runuser -u postgres -- bash -c "cd $W/pgpool && ./startall" > /dev/null 2>&1
            for _ in $(seq 1 100); do
                runuser -u postgres -- psql -h 127.0.0.1 -p "$PGPORT" -d postgres -Atc 'SELECT 1' >/dev/null 2>&1 && break
                sleep 0.2
            done
            PM=$(head -1 "$W/pgpool/data0/postmaster.pid")
            if [ "$kind" = kill ]; then
                CMD="kill -9 $PM"
            else
                CMD=$(stop_all "$W/pgpool/data0")
            fi
            OUT=$(runuser -u postgres -- "$PROBE" "$PGPORT" postgres - postgres "$CMD" || true)
            [ "$kind" = hang ] && kill -CONT $(pids_in "$W/pgpool/data0") 2>/dev/null || true
            MS=$(echo "$OUT" | sed -n 's/.*"ms": \([0-9]*\).*/\1/p')
            record pgpool "$kind" "${MS:-timeout}"
            runuser -u postgres -- bash -c "cd $W/pgpool && ./shutdownall" > /dev/null 2>&1 || true
            for n in 0 1 2; do
                for p in $(pids_in "$W/pgpool/data$n"); do kill -9 "$p" 2>/dev/null || true; done
            done
        done
    done
fi

echo
echo "| front door | failure | trials | median ms | min | max |"
echo "|---|---|---|---|---|---|"
for who in pgwarden pgpool; do
    for kind in kill hang; do
        V=$(awk -v w=$who -v k=$kind '$1==w && $2==k && $3 ~ /^[0-9]+$/ {print $3}' "$RESULTS")
        N=$(awk -v w=$who -v k=$kind '$1==w && $2==k' "$RESULTS" | wc -l)
        [ "$N" -eq 0 ] && continue
        T=$(awk -v w=$who -v k=$kind '$1==w && $2==k && $3 !~ /^[0-9]+$/' "$RESULTS" | wc -l)
        echo "| $who | $kind | $N$([ "$T" -gt 0 ] && echo " ($T never came back)") | $(echo "$V" | median) | $(echo "$V" | sort -n | head -1) | $(echo "$V" | sort -n | tail -1) |"
    done
done
