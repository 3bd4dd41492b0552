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
    compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null || missing+=(libclang-dev)
    # A Python driver for the end-to-end tests (libpq-based psycopg2, from Debian).
    /usr/bin/python3 -c "import psycopg2" 2>/dev/null || missing+=(python3-psycopg2)
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
