# Helpers shared by the benchmark scripts (sourced, from the repository's root).

# The pids of every process whose working directory is DIR (a postmaster and its children).
pids_in() {
    local dir=$1 p
    for p in /proc/[0-9]*; do
        if [ "$(readlink "$p/cwd" 2>/dev/null)" = "$dir" ]; then echo "${p#/proc/}"; fi
    done
    return 0
}

# Starts pgbouncer in session pooling on 127.0.0.1:PORT in front of database "test" on
# 127.0.0.1:PRIMARY, user postgres with PASSWORD, its files in DIR (made here; the pid in
# DIR/pgbouncer.pid). As root it runs as postgres through setpriv, which (unlike runuser's PAM
# session) keeps this shell's file limit: 2,000 clients need more than 1,024 descriptors.
start_pgbouncer() {
    local dir=$1 port=$2 primary=$3 password=$4
    mkdir -p "$dir"
    cat > "$dir/pgbouncer.ini" <<INI
[databases]
test = host=127.0.0.1 port=$primary dbname=test
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = session
max_client_conn = 5000
default_pool_size = 100
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
    echo "\"postgres\" \"$password\"" > "$dir/userlist.txt"
    chmod 600 "$dir/userlist.txt"
    if [ "$(id -u)" -eq 0 ]; then
        chown -R postgres "$dir"
        setpriv --reuid=postgres --regid=postgres --init-groups pgbouncer -d "$dir/pgbouncer.ini"
    else
        pgbouncer -d "$dir/pgbouncer.ini"
    fi
    sleep 1
}
