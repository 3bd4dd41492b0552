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

# Where PostgreSQL's own regression suite (its SQL scripts, data files and the C functions its
# scripts load) is kept for tests/regress.rs: outside the repository, reused across runs.
pg_regress_dir() {
    echo "${PGWARDEN_PG_REGRESS:-${XDG_CACHE_HOME:-$HOME/.cache}/pgwarden/pg-regress}"
}

# PostgreSQL 15's regression suite, from Debian's source package of the installed server (the
# newest 15.x source Debian offers when that one is gone), with regress.so built against the
# installed server's headers. Needs deb-src entries: added beside the deb ones when missing.
ensure_pg_regress() {
    local dir
    dir=$(pg_regress_dir)
    if [ -f "$dir/ready" ]; then return 0; fi
    local missing=()
    [ -x /usr/lib/postgresql/15/bin/pg_config ] || missing+=(postgresql-server-dev-15)
    command -v bzip2 >/dev/null || missing+=(bzip2)
    command -v xz >/dev/null || missing+=(xz-utils)
    command -v diff >/dev/null || missing+=(diffutils)
    if ! grep -rqs '^deb-src\|^Types:.*deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "== adding deb-src entries for Debian's source packages"
        if [ -f /etc/apt/sources.list.d/debian.sources ]; then
            sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
                | as_root tee /etc/apt/sources.list.d/pgwarden-deb-src.sources >/dev/null
        else
            sed -n 's/^deb /deb-src /p' /etc/apt/sources.list \
                | as_root tee /etc/apt/sources.list.d/pgwarden-deb-src.list >/dev/null
        fi
        missing+=(apt-update)
    fi
    # apt's download sandbox (the _apt user) cannot write a /tmp that is not world-writable,
    # as on some fresh machines: fetch as root, which runs apt anyway.
    local sandbox=(-o APT::Sandbox::User=root)
    if [ "${#missing[@]}" -gt 0 ]; then
        as_root apt-get "${sandbox[@]}" update -qq || true
        local pkgs=()
        for p in "${missing[@]}"; do [ "$p" = apt-update ] || pkgs+=("$p"); done
        if [ "${#pkgs[@]}" -gt 0 ]; then
            echo "== installing from Debian: ${pkgs[*]}"
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
        fi
    fi
    local work installed v got=""
    work=$(mktemp -d)
    installed=$(dpkg-query -W -f='${Version}' postgresql-15 2>/dev/null || true)
    # The installed server's own source first, then what Debian offers, newest first.
    for v in $( (echo "$installed"; apt-cache showsrc postgresql-15 2>/dev/null | awk '/^Version:/ {print $2}' | sort -rV) | awk 'NF && !seen[$0]++'); do
        [ -n "$v" ] || continue
        echo "== fetching PostgreSQL's regression suite: Debian source postgresql-15=$v"
        if (cd "$work" && if [ "$(id -u)" -eq 0 ]; then apt-get "${sandbox[@]}" source --download-only -qq "postgresql-15=$v"; else apt-get source --download-only -qq "postgresql-15=$v"; fi >/dev/null 2>&1); then
            got=$v
            break
        fi
        rm -f "$work"/*
    done
    if [ -z "$got" ]; then
        echo "could not fetch Debian's source of postgresql-15 (apt-get source postgresql-15): is a deb-src entry reachable?" >&2
        rm -rf "$work"
        return 1
    fi
    (cd "$work" && tar xf postgresql-15_*.orig.tar.* --wildcards '*/src/test/regress/*')
    rm -rf "$dir"
    mkdir -p "$dir"
    cp -r "$work"/postgresql-15.*/src/test/regress/. "$dir/"
    rm -rf "$work"
    cc -O2 -fPIC -shared -I"$(/usr/lib/postgresql/15/bin/pg_config --includedir-server)" \
        "$dir/regress.c" -o "$dir/regress.so"
    # refint and autoinc (contrib/spi), which the triggers test loads from the same directory.
    cp /usr/lib/postgresql/15/lib/refint.so /usr/lib/postgresql/15/lib/autoinc.so "$dir/"
    echo "$got" >"$dir/ready"
}

# psycopg2's own test suite, from the PyPI source of the version Debian's python3-psycopg2 is
# (the suite is not in the Debian package), for tests/drivers.rs: into the drivers directory.
ensure_psycopg2_tests() {
    local dir version
    version=$(/usr/bin/python3 -c "import psycopg2; print(psycopg2.__version__.split()[0])")
    dir=$(drivers_dir)/psycopg2-tests
    if [ "$(cat "$dir/ready" 2>/dev/null)" = "$version" ]; then return 0; fi
    echo "== fetching psycopg2 $version's test suite from PyPI"
    local work
    work=$(mktemp -d)
    "$(drivers_dir)/venv/bin/python" -m pip download -q --disable-pip-version-check \
        --no-binary :all: --no-deps "psycopg2==$version" -d "$work"
    tar xzf "$work/psycopg2-$version.tar.gz" -C "$work"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp -r "$work/psycopg2-$version/tests" "$dir/"
    rm -rf "$work"
    echo "$version" >"$dir/ready"
}
