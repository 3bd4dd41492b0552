#!/usr/bin/env bash
# Online-recovery benchmark: the time to rebuild a standby of a ~1 GiB database and put it back
# into service, side by side in one run, on this machine:
#   basebackup   plain `pg_basebackup -X stream --checkpoint=fast` to a fresh directory: the floor
#   basebackup-slot  the same with `-C -S slot` (a new replication slot, as pgwarden does)
#   pgpool       pgpool-II 4.3.5's `pcp_recovery_node -n 1`, with the recovery scripts
#                pgpool_setup -m s installs (basebackup.sh, pgpool_remote_start over ssh)
#   pgwarden     `pgwarden node recover S` of a standby stopped with pg_ctl stop -m immediate
#   pgwarden-rewind  `pgwarden node recover P` of a former primary killed with kill -9 (pg_rewind),
#                after the failover and a few writes on the new primary
#
#   bench/recovery.sh [TRIALS]      (default 3; needs root, PostgreSQL 15, pgpool2,
#                                    postgresql-15-pgpool2, openssh-server, a release build)
#   METHODS="basebackup pgpool pgwarden" SCALE=70 BENCH_PORT=31000 bench/recovery.sh 3
#
# Every cluster runs with fsync = on (PostgreSQL's default; the pgwarden sandbox without
# --no-fsync), data checksums on (initdb --data-checksums, as pgpool_setup and the sandbox do),
# and each is loaded with `pgbench -i -s SCALE` (70: about 1 GiB). Before each timed step:
# CHECKPOINT on the primary and `sync`, so that no step pays for the previous one's dirty pages.
# The trials run round-robin (trial 1 of every method, then trial 2, ...), so drift of this
# shared VM spreads over all methods.
#
# pgpool's recovery scripts need passwordless `ssh localhost` for postgres. The script runs a
# private sshd (its own config, host key and authorized_keys in the work dir, 127.0.0.1 only,
# port BASE+330; the system's sshd config is untouched) and puts a `Host localhost` block into
# ~postgres/.ssh/config, which it restores (or removes, if there was none) on exit. pgpool's
# basebackup.sh also leaves /tmp/postgresql.conf behind; it is removed on exit unless it was
# there before.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
TRIALS=${1:-3}
SCALE=${SCALE:-70}
METHODS=${METHODS:-basebackup pgpool pgwarden}
# Below the ephemeral port range (32768-60999), so that no client socket holds a port we need.
BASE=${BENCH_PORT:-31000}
B=/usr/lib/postgresql/15/bin
P=$PWD/target/release/pgwarden
case " $METHODS " in *" pgwarden "*) cargo build --release --bins -q ;; esac

W=$(mktemp -d /tmp/pgwarden-recbench-XXXXXX)
chmod 755 "$W"
PLAIN_PORT=$((BASE + 320))
PGPOOL_PORT=$((BASE + 300)); PCP_PORT=$((BASE + 301)); PGPOOL_PG=$((BASE + 310))
SSH_PORT=$((BASE + 330))
PGHOME=$(getent passwd postgres | cut -d: -f6)
HOME_SSH_STATE=absent
[ -e "$PGHOME/.ssh" ] && HOME_SSH_STATE=present
[ -e "$PGHOME/.ssh/config" ] && HOME_SSH_STATE=config
TMP_PGCONF_EXISTED=no
[ -e /tmp/postgresql.conf ] && TMP_PGCONF_EXISTED=yes
RUN_SSHD_CREATED=no

as_pg() { runuser -u postgres -- "$@"; }

keep_logs() {
    [ -n "${KEEP_LOGS:-}" ] || return 0
    mkdir -p "$KEEP_LOGS"
    cp "$W/results.txt" "$W/notes.txt" "$KEEP_LOGS/" 2>/dev/null
    [ -f "$W/pgpool/log/pgpool.log" ] && cp "$W/pgpool/log/pgpool.log" "$KEEP_LOGS/"
    [ -f "$W/pgwarden-events.txt" ] && cp "$W/pgwarden-events.txt" "$KEEP_LOGS/"
    [ -d "$W/sb/log" ] && cp -r "$W/sb/log" "$KEEP_LOGS/sandbox-log"
    return 0
}

cleanup() {
    set +e
    keep_logs
    [ -x "$P" ] && "$P" sandbox down --dir "$W/sb" --destroy >/dev/null 2>&1
    if [ -x "$W/pgpool/shutdownall" ]; then
        as_pg bash -c "cd $W/pgpool && ./shutdownall" >/dev/null 2>&1
    fi
    [ -f "$W/plain/data/postmaster.pid" ] && as_pg $B/pg_ctl -D "$W/plain/data" stop -m immediate >/dev/null 2>&1
    for d in "$W"/pgpool/data* "$W"/plain/data; do
        for p in $(pids_in "$d"); do kill -9 "$p" 2>/dev/null; done
    done
    [ -f "$W/ssh/sshd.pid" ] && kill "$(cat "$W/ssh/sshd.pid")" 2>/dev/null
    case $HOME_SSH_STATE in
        absent) rm -rf "$PGHOME/.ssh" ;;
        present) rm -f "$PGHOME/.ssh/config" ;;
        config) [ -f "$W/home-ssh-config.orig" ] && cp -p "$W/home-ssh-config.orig" "$PGHOME/.ssh/config" ;;
    esac
    [ $RUN_SSHD_CREATED = yes ] && rmdir /run/sshd 2>/dev/null
    [ $TMP_PGCONF_EXISTED = no ] && rm -f /tmp/postgresql.conf
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ms() { local t=$EPOCHREALTIME; echo $(( ${t%.*} * 1000 + 10#${t#*.} / 1000 )); }
median() { { grep -E '^[0-9]' || true; } | sort -n | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

RESULTS=$W/results.txt
: > "$RESULTS"
NOTES=$W/notes.txt
: > "$NOTES"
record() { # method ms|fail
    echo "$1 $2" >> "$RESULTS"
    printf '  %-16s trial %s: %s\n' "$1" "$TRIAL" "$([ "$2" = fail ] && echo FAILED || echo "$2 ms")"
}
note() { echo "$*" >> "$NOTES"; echo "    $*"; }
# Size of all databases of a server (what a base backup copies, less WAL), in bytes.
cluster_bytes() { # psql args...
    "$@" -Atc "SELECT sum(pg_database_size(datname))::bigint FROM pg_database"
}
declare -A SIZE
declare -A CMD

has() { case " $METHODS " in *" $1 "*) return 0 ;; esac; return 1; }

# ---- plain pg_basebackup: its own primary ---------------------------------------------------
setup_plain() {
    echo "== plain pg_basebackup: initdb + pgbench -i -s $SCALE"
    mkdir -p "$W/plain" && chown postgres "$W/plain"
    as_pg $B/initdb -D "$W/plain/data" -U postgres --auth=trust -E UTF8 --locale=C --data-checksums >/dev/null
    cat >> "$W/plain/data/postgresql.conf" <<EOF
port = $PLAIN_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_wal_senders = 10
max_replication_slots = 10
EOF
    as_pg $B/pg_ctl -D "$W/plain/data" -l "$W/plain/log" -w start >/dev/null
    as_pg $B/createdb -h 127.0.0.1 -p $PLAIN_PORT test
    as_pg $B/pgbench -h 127.0.0.1 -p $PLAIN_PORT -i -s "$SCALE" -I dtGvp -q test >/dev/null 2>&1
    SIZE[basebackup]=$(cluster_bytes as_pg $B/psql -h 127.0.0.1 -p $PLAIN_PORT -d postgres)
    SIZE[basebackup-slot]=${SIZE[basebackup]}
    CMD[basebackup]="pg_basebackup -h 127.0.0.1 -p $PLAIN_PORT -U postgres -X stream --checkpoint=fast -D NEWDIR"
    CMD[basebackup-slot]="pg_basebackup -h 127.0.0.1 -p $PLAIN_PORT -U postgres -X stream --checkpoint=fast -C -S bench_slot -D NEWDIR"
    echo "   databases: $((SIZE[basebackup] / 1048576)) MiB"
}

trial_plain() {
    local kind ms start
    for kind in basebackup basebackup-slot; do
        as_pg rm -rf "$W/plain/copy"
        as_pg $B/psql -h 127.0.0.1 -p $PLAIN_PORT -d postgres -qAtc CHECKPOINT
        sync
        start=$(now_ms)
        if as_pg ${CMD[$kind]/NEWDIR/$W/plain/copy} 2>"$W/plain/bb.err"; then
            ms=$(( $(now_ms) - start ))
            record "$kind" "$ms"
        else
            record "$kind" fail; cat "$W/plain/bb.err"
        fi
        [ "$kind" = basebackup-slot ] && as_pg $B/psql -h 127.0.0.1 -p $PLAIN_PORT -d postgres -qAtc "SELECT pg_drop_replication_slot('bench_slot')" >/dev/null
    done
    as_pg rm -rf "$W/plain/copy"
}

# ---- pgpool-II ------------------------------------------------------------------------------
setup_ssh() {
    echo "== private sshd on 127.0.0.1:$SSH_PORT for pgpool's scripts"
    mkdir -p "$W/ssh"
    ssh-keygen -q -t ed25519 -N '' -f "$W/ssh/host_ed25519"
    ssh-keygen -q -t ed25519 -N '' -f "$W/ssh/id_ed25519" -C pgwarden-bench
    cp "$W/ssh/id_ed25519.pub" "$W/ssh/authorized_keys"
    touch "$W/ssh/known_hosts"
    chown postgres "$W/ssh/id_ed25519" "$W/ssh/id_ed25519.pub" "$W/ssh/known_hosts"
    chmod 600 "$W/ssh/id_ed25519"
    cat > "$W/ssh/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $W/ssh/host_ed25519
PidFile $W/ssh/sshd.pid
AuthorizedKeysFile $W/ssh/authorized_keys
StrictModes no
# PAM: the postgres account has a locked password ("!"), which sshd refuses without PAM.
UsePAM yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowUsers postgres
EOF
    if [ ! -d /run/sshd ]; then mkdir -p /run/sshd; chmod 755 /run/sshd; RUN_SSHD_CREATED=yes; fi
    /usr/sbin/sshd -f "$W/ssh/sshd_config" -E "$W/ssh/sshd.log"
    if [ $HOME_SSH_STATE = absent ]; then
        mkdir -m 700 "$PGHOME/.ssh"; chown postgres:postgres "$PGHOME/.ssh"
    fi
    [ $HOME_SSH_STATE = config ] && cp -p "$PGHOME/.ssh/config" "$W/home-ssh-config.orig"
    {
        cat <<EOF
# Added by pgwarden bench/recovery.sh ($W); removed when it ends.
Host localhost 127.0.0.1
  Port $SSH_PORT
  IdentityFile $W/ssh/id_ed25519
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile $W/ssh/known_hosts
  LogLevel ERROR
EOF
        [ -f "$W/home-ssh-config.orig" ] && cat "$W/home-ssh-config.orig"
    } > "$PGHOME/.ssh/config.new"
    chown postgres:postgres "$PGHOME/.ssh/config.new"; chmod 600 "$PGHOME/.ssh/config.new"
    mv "$PGHOME/.ssh/config.new" "$PGHOME/.ssh/config"
    for _ in $(seq 1 50); do
        as_pg ssh -T localhost true 2>/dev/null && return 0
        sleep 0.1
    done
    echo "ssh localhost as postgres does not work:"; cat "$W/ssh/sshd.log"; exit 1
}

pcp() { as_pg env PCPPASSFILE="$W/pgpool/pcppass" "$@" -w -h localhost -p $PCP_PORT; }
# pgpool's status of node N: 1 waiting, 2 up, 3 down (pcp_node_info's third field).
pgpool_status() { pcp pcp_node_info -n "$1" 2>/dev/null | awk '{print $3}'; }

setup_pgpool() {
    setup_ssh
    echo "== pgpool-II: pgpool_setup -m s -n 2, then pgbench -i -s $SCALE on its primary"
    mkdir -p "$W/pgpool" "$W/pgpool-install" && chown postgres "$W/pgpool"
    # Debian installs pgpool and the pcp tools in /usr/sbin and the samples under
    # /usr/share/doc; pgpool_setup expects PGPOOL_INSTALL_DIR/bin and PGPOOLDIR/*.sample.
    ln -s /usr/sbin "$W/pgpool-install/bin"; ln -s /usr/sbin "$W/pgpool-install/sbin"
    # pgpool_setup builds node 1 itself with pcp_recovery_node: with the pgpool_recovery
    # extension (postgresql-15-pgpool2) and ssh localhost in place it is a real standby.
    as_pg bash -c "cd $W/pgpool && PGBIN=$B PGPOOL_INSTALL_DIR=$W/pgpool-install PGPOOLDIR=/usr/share/doc/pgpool2/examples pgpool_setup -m s -n 2 -p $PGPOOL_PORT -pg $PGPOOL_PG" > "$W/pgpool-setup.log" 2>&1 \
        || { echo "pgpool_setup failed:"; tail -20 "$W/pgpool-setup.log"; exit 1; }
    grep -q "recovery node 1...pcp_recovery_node -- Command Successful" "$W/pgpool-setup.log" \
        || { echo "pgpool_setup could not recover node 1:"; tail -20 "$W/pgpool-setup.log"; exit 1; }
    as_pg bash -c "cd $W/pgpool && ./startall" >/dev/null 2>&1
    # pgpool shows a node "waiting" (1) until a session has used it, then "up" (2).
    for _ in $(seq 1 150); do
        as_pg $B/psql -h 127.0.0.1 -p $PGPOOL_PORT -d postgres -Atc 'SELECT 1' >/dev/null 2>&1 \
            && [ "$(pgpool_status 1)" -le 2 ] 2>/dev/null && break
        sleep 0.2
    done
    if ! [ "$(pgpool_status 1)" -le 2 ] 2>/dev/null; then
        echo "pgpool: node 1 is not up after startall:"; pcp pcp_node_info -n 1; exit 1
    fi
    as_pg $B/pgbench -h 127.0.0.1 -p $PGPOOL_PG -i -s "$SCALE" -I dtGvp -q test >/dev/null 2>&1
    SIZE[pgpool]=$(cluster_bytes as_pg $B/psql -h 127.0.0.1 -p $PGPOOL_PG -d postgres)
    CMD[pgpool]="pcp_recovery_node -w -h localhost -p $PCP_PORT -n 1"
    echo "   databases: $((SIZE[pgpool] / 1048576)) MiB"
}

# pgpool.log lines of one recovery -> "1st stage X ms, start+check Y ms, failback Z ms"
pgpool_phases() { # from-line
    tail -n +"$1" "$W/pgpool/log/pgpool.log" | awk '
        function ms(d, t,   a) { split(t, a, ":"); return (a[1]*3600 + a[2]*60 + a[3]) * 1000 }
        /executing recovery/ && !s   { s = ms($1, $2) }
        /1st stage is done/          { f = ms($1, $2) }
        /node recovery, node: .* restarted/ { r = ms($1, $2) }
        /recovery done/              { d = ms($1, $2) }
        /checking if postmaster is started/ && /trying|failed/ {}
        /trying to connect to postmaster/ { tries++ }
        END { if (s && f && r && d) printf "1st stage (basebackup.sh) %d ms; remote start + postmaster check %d ms (%d connection attempts, 3 s apart); failback %d ms", f-s, r-f, tries, d-r }'
}

trial_pgpool() {
    local ms start from
    as_pg $B/pg_ctl -D "$W/pgpool/data1" stop -m immediate >/dev/null 2>&1 || note "pgpool trial $TRIAL: node 1 was not running"
    from=$(( $(wc -l < "$W/pgpool/log/pgpool.log") + 1 ))
    pcp pcp_detach_node -n 1 >/dev/null
    for _ in $(seq 1 100); do [ "$(pgpool_status 1)" = 3 ] && break; sleep 0.2; done
    if [ "$(pgpool_status 1)" != 3 ]; then
        echo "pgpool does not show node 1 down"; record pgpool fail; return
    fi
    # After a failover pgpool restarts its PCP process (SIGUSR2, 1 s, SIGUSR1), and its main
    # process waits for the old PCP process to exit: a recovery started in that window holds
    # up the failover and then waits 5 s in vain for the failback's wake-up. Let it settle.
    for _ in $(seq 1 100); do
        tail -n +"$from" "$W/pgpool/log/pgpool.log" | grep -q "fork a new PCP child" && break
        sleep 0.1
    done
    sleep 0.5
    as_pg $B/psql -h 127.0.0.1 -p $PGPOOL_PG -d postgres -qAtc CHECKPOINT
    sync
    from=$(( $(wc -l < "$W/pgpool/log/pgpool.log") + 1 ))
    start=$(now_ms)
    if pcp pcp_recovery_node -n 1 >/dev/null 2>"$W/pgpool-rec.err"; then
        ms=$(( $(now_ms) - start ))
        record pgpool "$ms"
        note "pgpool trial $TRIAL: $(pgpool_phases "$from")"
        [ "$(as_pg $B/psql -h 127.0.0.1 -p $((PGPOOL_PG + 1)) -d postgres -Atc 'SELECT pg_is_in_recovery()')" = t ] \
            || note "pgpool trial $TRIAL: node 1 is not a standby after the recovery"
    else
        record pgpool fail
        cat "$W/pgpool-rec.err"; tail -n +"$from" "$W/pgpool/log/pgpool.log" | grep -E "ERROR|FATAL|recovery" | tail -20
    fi
}

# ---- pgwarden -------------------------------------------------------------------------------
pw() { PGWARDEN_CONFIG="$W/sb/pgwarden.toml" "$P" "$@"; }
sb_psql() { # node-id sql...
    local id=$1; shift
    PGPASSFILE="$W/sb/pgpass" $B/psql -h 127.0.0.1 -p $((BASE + 2 + id)) -U postgres -d test -qAtc "$*"
}
# node-id field -> a field of `pgwarden node list --json`
node_field() {
    pw node list --json 2>/dev/null | jq -r --argjson id "$1" \
        "(if type == \"array\" then . else .nodes end)[] | select(.id == \$id) | .$2" 2>/dev/null
}
primary() { curl -sf "http://127.0.0.1:$((BASE + 100))/v1/cluster" | jq -r '.primary // empty' 2>/dev/null; }
wait_for() { # seconds description command...
    local secs=$1 what=$2; shift 2
    local end=$(( $(now_ms) + secs * 1000 ))
    while [ "$(now_ms)" -lt "$end" ]; do "$@" && return 0; sleep 0.1; done
    echo "   timed out after ${secs} s waiting for $what"; return 1
}
is_status() { [ "$(node_field "$1" status)" = "$2" ]; }
is_primary() { [ "$(primary)" = "$1" ]; }
is_streaming_standby() {
    [ "$(node_field "$1" status)" = up ] && [ "$(node_field "$1" pg_role)" = standby ]
}
last_event() { pw events --json 2>/dev/null | jq -r '(if type == "array" then . else .events end) | (last // {}) | (.seq // .id // 0)' 2>/dev/null || echo 0; }

setup_pgwarden() {
    echo "== pgwarden: sandbox up --nodes 2 (fsync on), then pgbench -i -s $SCALE through node 0"
    "$P" sandbox up --dir "$W/sb" --port "$BASE" --nodes 2 > "$W/sandbox-up.log" 2>&1 \
        || { echo "sandbox up failed:"; tail -20 "$W/sandbox-up.log"; exit 1; }
    PGPASSFILE="$W/sb/pgpass" $B/pgbench -h 127.0.0.1 -p $((BASE + 2)) -U postgres -i -s "$SCALE" -I dtGvp -q test >/dev/null 2>&1
    SIZE[pgwarden]=$(cluster_bytes env PGPASSFILE="$W/sb/pgpass" $B/psql -h 127.0.0.1 -p $((BASE + 2)) -U postgres -d postgres)
    SIZE[pgwarden-rewind]=${SIZE[pgwarden]}
    CMD[pgwarden]="PGWARDEN_CONFIG=$W/sb/pgwarden.toml pgwarden node recover S   (S: the standby, stopped with pg_ctl stop -m immediate)"
    CMD[pgwarden-rewind]="PGWARDEN_CONFIG=$W/sb/pgwarden.toml pgwarden node recover P   (P: the former primary, kill -9, after the failover)"
    wait_for 120 "node 1 to stream" is_streaming_standby 1 || exit 1
    echo "   databases: $((SIZE[pgwarden] / 1048576)) MiB"
}

# Where one `pgwarden node recover` spent its time, from the warden's and the node agent's
# logs (UTC ISO timestamps) between the command's start T0 and end T1.
pgwarden_phases() { # t0 t1 id
    cat "$W/sb/log/warden.log" "$W/sb/log/agent$3.log" 2>/dev/null \
        | awk -v t0="$1" -v t1="$2" '$1 >= t0 && $1 <= t1' | sort \
        | awk -v t0="$1" -v t1="$2" '
        function ms(t) { return ((substr(t, 12, 2) * 60 + substr(t, 15, 2)) * 60 + substr(t, 18, 9)) * 1000 }
        /recovery of node .* started/ && !s { s = ms($1) }
        /job started/ && !j { j = ms($1); kind = $0; sub(/.*kind="/, "", kind); sub(/".*/, "", kind) }
        /job succeeded/ && !e { e = ms($1) }
        /standby.signal and postgresql.auto.conf written/ && !c { c = ms($1) }
        /started the server/ && !st { st = ms($1) }
        /recovered by/ && !r { r = ms($1) }
        END {
            if (!(s && j && e && c && st && r)) { print "(step times not found in the logs)"; exit }
            printf "before the recovery starts %d ms; checkpoint + stop %d ms; %s %d ms; standby config %d ms; start %d ms; wait for streaming + attach %d ms; until the command returns %d ms",
                s - ms(t0), j - s, kind, e - j, c - e, st - c, r - st, ms(t1) - r
        }'
}

# Time `pgwarden node recover ID` and keep the warden's events of it.
timed_recover() { # method id
    local method=$1 id=$2 seq start ms rc=0
    seq=$(last_event)
    local t0 t1
    t0=$(date -u +%FT%T.%6NZ)
    start=$(now_ms)
    pw node recover "$id" > "$W/recover.out" 2>&1 || rc=$?
    ms=$(( $(now_ms) - start ))
    t1=$(date -u +%FT%T.%6NZ)
    [ $rc -eq 0 ] && note "$method trial $TRIAL (node $id): $(pgwarden_phases "$t0" "$t1" "$id")"
    if [ $rc -eq 0 ]; then record "$method" "$ms"; else record "$method" fail; tail -5 "$W/recover.out"; fi
    if [ $rc -ne 0 ]; then
        note "pgwarden trial $TRIAL: $method of node $id failed: $(tail -1 "$W/recover.out")"
        { echo "  the end of node $id's log:"; tail -15 "$W/sb/log/node$id.log" 2>/dev/null | sed 's/^/      /'; } >> "$W/pgwarden-events.txt"
    fi
    {
        echo "pgwarden trial $TRIAL, $method of node $id (exit $rc, $ms ms):"
        pw events --after "${seq:-0}" 2>&1 | sed 's/^/      /'
        echo "    recovery status:"
        curl -s "http://127.0.0.1:$((BASE + 100))/v1/nodes/$id/recovery" | sed 's/^/      /'; echo
    } >> "$W/pgwarden-events.txt"
    wait_for 30 "node $id to stream again" is_streaming_standby "$id" || note "pgwarden trial $TRIAL: node $id not a streaming standby after $method"
}

replayed() { [ "$(sb_psql "$1" "SELECT pg_last_wal_replay_lsn() >= '$2'")" = t ]; }
settle() { # primary standby
    local lsn
    sb_psql "$1" CHECKPOINT
    lsn=$(sb_psql "$1" "SELECT pg_current_wal_lsn()")
    wait_for 60 "node $2 to replay $lsn" replayed "$2" "$lsn" || true
    sb_psql "$2" CHECKPOINT || true
}

trial_pgwarden() {
    local pri stby pm
    pri=$(primary)
    [ -n "$pri" ] || { echo "   no primary"; record pgwarden fail; record pgwarden-rewind fail; return; }
    stby=$(( 1 - pri ))
    # Let the standby settle first: the primary's checkpoint replayed and a restartpoint on the
    # standby, so that its pg_control shows the primary's timeline, as on any standby that has
    # run for checkpoint_timeout. Without this, a node rewound in the previous trial and killed
    # before its first restartpoint still says timeline 1: pgwarden then picks pg_rewind, whose
    # single-user crash recovery writes a shutdown checkpoint the primary does not have, and the
    # node never streams ("invalid resource manager ID" at that LSN; see docs/BENCHMARKS.md).
    settle "$pri" "$stby"
    # (a) a standby stopped and rebuilt.
    as_pg $B/pg_ctl -D "$W/sb/data$stby" stop -m immediate >/dev/null 2>&1 || note "pgwarden trial $TRIAL: node $stby was not running"
    if wait_for 60 "node $stby down" is_status "$stby" down; then
        sb_psql "$pri" CHECKPOINT; sync
        timed_recover pgwarden "$stby"
    else
        record pgwarden fail
    fi
    # (b) the primary killed, the standby promoted, a few writes, the former primary rewound.
    wait_for 60 "node $stby to stream" is_streaming_standby "$stby" || { record pgwarden-rewind fail; return; }
    pm=$(head -1 "$W/sb/data$pri/postmaster.pid" 2>/dev/null) || { note "pgwarden trial $TRIAL: node $pri has no postmaster"; record pgwarden-rewind fail; return; }
    kill -9 "$pm"
    if ! wait_for 60 "node $stby to be the primary" is_primary "$stby"; then record pgwarden-rewind fail; return; fi
    PGPASSFILE="$W/sb/pgpass" $B/psql -h 127.0.0.1 -p "$BASE" -U postgres -d test -qAtc \
        "CREATE TABLE IF NOT EXISTS bench_rewind(t int, x int); INSERT INTO bench_rewind SELECT $TRIAL, g FROM generate_series(1, 1000) g" \
        || note "pgwarden trial $TRIAL: the write after the failover failed"
    wait_for 30 "node $pri down" is_status "$pri" down || true
    for p in $(pids_in "$W/sb/data$pri"); do wait_for 10 "the old primary's backends to exit" test ! -d "/proc/$p" || true; done
    sb_psql "$stby" CHECKPOINT; sync
    timed_recover pgwarden-rewind "$pri"
}

# ---- the run --------------------------------------------------------------------------------
has basebackup && setup_plain
has pgpool && setup_pgpool
has pgwarden && setup_pgwarden
for TRIAL in $(seq 1 "$TRIALS"); do
    echo "== trial $TRIAL"
    has basebackup && trial_plain
    has pgpool && trial_pgpool
    has pgwarden && trial_pgwarden
done

echo
echo "fsync on everywhere; data checksums on; pgbench -i -s $SCALE; $(nproc) cores; $(uname -r)"
echo
echo "| method | trials | median s | min s | max s | MiB/s (at the median) | median vs plain pg_basebackup |"
echo "|---|---|---|---|---|---|---|"
FLOOR=$(awk '$1=="basebackup" && $2 ~ /^[0-9]+$/ {print $2}' "$RESULTS" | median)
for m in basebackup basebackup-slot pgpool pgwarden pgwarden-rewind; do
    N=$(awk -v m=$m '$1==m' "$RESULTS" | wc -l)
    [ "$N" -eq 0 ] && continue
    V=$(awk -v m=$m '$1==m && $2 ~ /^[0-9]+$/ {print $2}' "$RESULTS")
    F=$(awk -v m=$m '$1==m && $2 !~ /^[0-9]+$/' "$RESULTS" | wc -l)
    MED=$(echo "$V" | median)
    if [ "$MED" = - ]; then
        echo "| $m | $N ($F failed) | - | - | - | - | - |"; continue
    fi
    RATE=$(awk -v b="${SIZE[$m]:-0}" -v ms="$MED" 'BEGIN {printf "%.0f", b / 1048576 / (ms / 1000)}')
    RATIO=-
    [ -n "$FLOOR" ] && [ "$FLOOR" != - ] && RATIO=$(awk -v a="$MED" -v f="$FLOOR" 'BEGIN {printf "%.2f", a / f}')
    echo "| $m | $N$([ "$F" -gt 0 ] && echo " ($F failed)") | $(awk -v x="$MED" 'BEGIN {printf "%.2f", x/1000}') | $(echo "$V" | sort -n | head -1 | awk '{printf "%.2f", $1/1000}') | $(echo "$V" | sort -n | tail -1 | awk '{printf "%.2f", $1/1000}') | $RATE | $RATIO |"
done
echo
echo "Database sizes (sum of pg_database_size): $(for m in basebackup pgpool pgwarden; do [ -n "${SIZE[$m]:-}" ] && printf '%s %d MiB; ' $m $((SIZE[$m] / 1048576)); done)"
if [ -n "$FLOOR" ] && [ "$FLOOR" != - ]; then
    echo "Target for pgwarden's standby recovery: <= 1.2 x $(awk -v f="$FLOOR" 'BEGIN {printf "%.2f", f/1000}') s + 1 s = $(awk -v f="$FLOOR" 'BEGIN {printf "%.2f", 1.2*f/1000 + 1}') s; rewind <= 3 s."
fi
echo
echo "Timed commands:"
for m in basebackup basebackup-slot pgpool pgwarden pgwarden-rewind; do
    [ -n "${CMD[$m]:-}" ] && echo "  $m: ${CMD[$m]}"
done
if [ -s "$NOTES" ]; then echo; echo "Notes:"; sed 's/^/  /' "$NOTES"; fi
if [ -s "$W/pgwarden-events.txt" ]; then echo; echo "pgwarden's events of each recovery:"; cat "$W/pgwarden-events.txt"; fi
