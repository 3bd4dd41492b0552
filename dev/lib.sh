# Shared by dev/quickstart and dev/test: install what a fresh Debian 12 machine lacks.
# Idempotent: installs nothing when everything is there.

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_deps() {
    local missing=()
    # PostgreSQL 15's server programs (initdb, pg_ctl, postgres, pg_basebackup) and psql.
    [ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)
    [ -x /usr/lib/postgresql/15/bin/psql ] || missing+=(postgresql-client-15)
    # A C toolchain for the linker Rust uses.
    command -v cc >/dev/null || missing+=(gcc libc6-dev)
    command -v runuser >/dev/null || missing+=(util-linux)
    # libpg_query (the SQL classifier) is built with bindgen, which needs libclang.
    # (Not libclang-cpp, which comes with other packages and is not what bindgen loads.)
    compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null \
        || compgen -G "/usr/lib/llvm-*/lib/libclang-[0-9]*.so*" >/dev/null \
        || missing+=(libclang-dev)
    # A Python driver for the end-to-end tests (libpq-based psycopg2, from Debian).
    /usr/bin/python3 -c "import psycopg2" 2>/dev/null || missing+=(python3-psycopg2)
    # pgpool-II's stock pcp_* tools: the PCP tests drive pgwarden with them.
    [ -x /usr/sbin/pcp_node_info ] || missing+=(pgpool2)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "== installing from Debian: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
    if ! command -v cargo >/dev/null; then
        echo "cargo is not on PATH: install Rust first (https://rustup.rs), then run this again" >&2
        exit 1
    fi
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
        echo "running as root but there is no postgres OS user; it comes with postgresql-15" >&2
        exit 1
    fi
}

# Where the drivers the end-to-end tests use are installed: outside the repository, reused
# across runs and work trees. tests/drivers.rs looks in the same place.
drivers_dir() {
    echo "${PGWARDEN_DRIVERS:-${XDG_CACHE_HOME:-$HOME/.cache}/pgwarden/drivers}"
}

# psycopg 3 and asyncpg (PyPI, in a venv of Debian's /usr/bin/python3) and node-postgres (npm),
# at the versions pinned in tests/drivers/. Installs only when those pins changed since the last
# install, so a machine that has them needs no network.
ensure_drivers() {
    local missing=()
    /usr/bin/python3 -c "import ensurepip" 2>/dev/null || missing+=(python3-venv)
    command -v node >/dev/null || missing+=(nodejs)
    command -v npm >/dev/null || missing+=(npm)
    # pgjdbc, run as a single-file Java program (the source launcher needs the JDK's compiler).
    command -v javac >/dev/null || missing+=(default-jdk-headless)
    [ -f /usr/share/java/postgresql.jar ] || missing+=(libpostgresql-jdbc-java)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "== installing from Debian: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
    local dir src stamp
    dir=$(drivers_dir)
    src=$(pwd)/tests/drivers
    stamp=$(cat "$src/requirements.txt" "$src/package.json" "$src/package-lock.json" | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$dir/installed" 2>/dev/null)" = "$stamp" ] \
        && "$dir/venv/bin/python" -c "import psycopg, asyncpg" 2>/dev/null \
        && [ -f "$dir/node/node_modules/pg/package.json" ]; then
        return 0
    fi
    echo "== installing the test drivers into $dir (psycopg, asyncpg, pg)"
    mkdir -p "$dir"
    rm -f "$dir/installed"
    [ -x "$dir/venv/bin/python" ] || /usr/bin/python3 -m venv "$dir/venv"
    "$dir/venv/bin/python" -m pip install -q --disable-pip-version-check -r "$src/requirements.txt"
    mkdir -p "$dir/node"
    cp "$src/package.json" "$src/package-lock.json" "$dir/node/"
    (cd "$dir/node" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$stamp" >"$dir/installed"
}
