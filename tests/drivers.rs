//! Differential suite and other drivers: the same SQL directly against the primary and through
//! pgwarden must give the same output, byte for byte; a Python driver works unchanged.

mod common;

use common::Cluster;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs a script with psql (echoing every statement, going on after errors) and returns what
/// a user would see.
fn run_script(c: &Cluster, port: u16, db: &str, script: &Path) -> String {
    let bin = pgwarden_sandbox::PgBin::locate().unwrap();
    let out = Command::new(bin.program("psql"))
        .args([
            "-X",
            "-a",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            db,
            "-p",
            &port.to_string(),
            "-f",
        ])
        .arg(script)
        .env("PGPASSFILE", c.pgpass())
        .env("PGTZ", "UTC")
        .output()
        .unwrap();
    // psql prefixes errors with the script name and line: the same for both runs.
    format!(
        "{}\n--- stderr ---\n{}",
        common::stdout(&out),
        common::stderr(&out)
    )
}

#[test]
fn sql_scripts_give_identical_results_directly_and_through_pgwarden() {
    let c = Cluster::up(3);
    c.psql(0, "postgres", "CREATE DATABASE diff_direct")
        .unwrap();
    c.psql(0, "postgres", "CREATE DATABASE diff_proxy").unwrap();
    let mut scripts: Vec<_> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sql"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .collect();
    scripts.sort();
    assert!(scripts.len() >= 3);
    for script in scripts {
        let direct = run_script(&c, c.node_port(0), "diff_direct", &script);
        let proxied = run_script(&c, c.proxy_port(), "diff_proxy", &script);
        assert!(direct.contains("ERROR") || !direct.is_empty());
        if direct != proxied {
            let diff: Vec<String> = direct
                .lines()
                .zip(proxied.lines())
                .filter(|(a, b)| a != b)
                .take(10)
                .map(|(a, b)| format!("direct:  {a}\nthrough: {b}"))
                .collect();
            panic!("{}: outputs differ\n{}", script.display(), diff.join("\n"));
        }
    }
    // The reads of those scripts were not all served by the primary.
    let nodes = c.psql_proxy("test", "SHOW POOL_NODES").unwrap();
    eprintln!("{nodes}");
}

#[test]
fn python_psycopg2_through_pgwarden() {
    let c = Cluster::up(2);
    let script = r#"
import os, sys, psycopg2, psycopg2.extras
conn = psycopg2.connect(host="127.0.0.1", port=int(sys.argv[1]), user="postgres", password=sys.argv[2], dbname="test")
conn.autocommit = False
cur = conn.cursor()
cur.execute("CREATE TABLE py (id serial PRIMARY KEY, name text, data bytea)")
psycopg2.extras.execute_values(cur, "INSERT INTO py (name, data) VALUES %s", [("n%d" % i, bytes([i % 256]) * 100) for i in range(500)])
conn.commit()
cur.execute("SELECT count(*), sum(length(data)) FROM py WHERE name LIKE %s", ("n%",))
print("rows", cur.fetchone())
cur.execute("SELECT name FROM py WHERE id = %s", (42,))
print("one", cur.fetchone()[0])
conn.commit()
try:
    cur.execute("SELECT * FROM missing_table")
except psycopg2.errors.UndefinedTable as e:
    print("error", e.pgcode)
    conn.rollback()
conn.autocommit = True
cur.execute("SELECT inet_server_port()")
print("ok", cur.fetchone()[0] > 0)
"#;
    let python = ["/usr/bin/python3", "python3"].into_iter().find(|p| {
        Command::new(p)
            .arg("-c")
            .arg("import psycopg2")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let python =
        python.expect("python3 with psycopg2 (Debian: python3-psycopg2; ./dev/test installs it)");
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(c.proxy_port().to_string())
        .arg(c.password())
        .output()
        .unwrap();
    let text = common::stdout(&out);
    assert!(out.status.success(), "{text}{}", common::stderr(&out));
    assert!(text.contains("rows (500, 50000)"), "{text}");
    assert!(text.contains("one n41"), "{text}");
    assert!(text.contains("error 42P01"), "{text}");
    assert!(text.contains("ok True"), "{text}");
}

/// pgjdbc, as Debian's libpostgresql-jdbc-java installs it (`dev/test` installs it).
const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";

/// Where `dev/test` installs the drivers (see `drivers_dir` in dev/lib.sh).
fn drivers_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PGWARDEN_DRIVERS") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    cache.join("pgwarden/drivers")
}

/// The program that runs a driver script, checked to be installed.
fn driver_program(kind: &str) -> Command {
    let dir = drivers_dir();
    let (program, probe) = match kind {
        "python" => (dir.join("venv/bin/python"), dir.join("venv/bin/python")),
        // Debian's pgjdbc (libpostgresql-jdbc-java), the program run from its source.
        "java" => (PathBuf::from("java"), PathBuf::from(JDBC_JAR)),
        _ => (
            PathBuf::from("node"),
            dir.join("node/node_modules/pg/package.json"),
        ),
    };
    assert!(
        probe.exists(),
        "{} is missing: ./dev/test installs the test drivers (or run `. dev/lib.sh; ensure_drivers`)",
        probe.display()
    );
    // Bounded: a driver waiting on an answer that never comes fails the test, not hangs it.
    let mut cmd = Command::new("timeout");
    cmd.arg("180").arg(program);
    if kind == "java" {
        cmd.arg("-cp").arg(JDBC_JAR);
    }
    cmd.env("NODE_PATH", dir.join("node/node_modules"));
    cmd
}

/// Runs `script` (under tests/drivers) once directly on the primary and once through the
/// proxy, each in a database of its own. The lines that are not routing claims must be the
/// same; returns the routing claims of the proxied run, as (what, port) lines.
fn differential(c: &Cluster, kind: &str, script: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/drivers")
        .join(script);
    let run = |port: u16, db: &str| {
        c.psql(0, "postgres", &format!("CREATE DATABASE {db}"))
            .unwrap();
        let started = std::time::Instant::now();
        let out = driver_program(kind)
            .arg(&path)
            .arg(port.to_string())
            .arg(c.password())
            .arg(db)
            .arg(c.node_port(0).to_string())
            .arg(c.node_port(1).to_string())
            .output()
            .unwrap();
        let text = common::stdout(&out);
        eprintln!("{script} on port {port}: {:?}", started.elapsed());
        assert!(
            out.status.success(),
            "{script} on port {port} failed:\n{text}\n{}",
            common::stderr(&out)
        );
        assert!(text.ends_with("done\n"), "{text}");
        text
    };
    let direct = run(c.node_port(0), "drv_direct");
    let proxied = run(c.proxy_port(), "drv_proxy");
    let data = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with("route "))
            .map(String::from)
            .collect()
    };
    assert_eq!(
        data(&direct),
        data(&proxied),
        "{script}: what the driver saw differs directly and through pgwarden"
    );
    eprintln!("{proxied}");
    proxied
        .lines()
        .filter_map(|l| l.strip_prefix("route "))
        .map(String::from)
        .collect()
}

/// The ports named by the routing claims that start with `what`.
fn ports_of(routes: &[String], what: &str) -> Vec<String> {
    routes
        .iter()
        .filter_map(|l| l.strip_prefix(what))
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn python_asyncpg_through_pgwarden() {
    let c = Cluster::up(2);
    let routes = differential(&c, "python", "asyncpg_session.py");
    let (primary, standby) = (c.node_port(0).to_string(), c.node_port(1).to_string());
    // asyncpg's named statement ran on the standby, then (parsed again there) on the primary
    // inside a transaction, then on the standby again once it had replayed the writes.
    assert_eq!(
        ports_of(&routes, "prepared first"),
        [standby.as_str()],
        "{routes:?}"
    );
    assert_eq!(
        ports_of(&routes, "insert"),
        [primary.as_str()],
        "{routes:?}"
    );
    assert_eq!(
        ports_of(&routes, "prepared in tx"),
        [primary.as_str()],
        "{routes:?}"
    );
    assert_eq!(
        ports_of(&routes, "prepared after catch-up"),
        [standby.as_str()],
        "{routes:?}"
    );
    // A pool of one connection, released (asyncpg's reset) and acquired again between the
    // reads: every read of that pooled session was served by the standby.
    assert_eq!(
        ports_of(&routes, "pool of one reads"),
        [format!("[{standby}]")],
        "{routes:?}"
    );
    // SHOW POOL_NODES prepared (before: "unrecognized configuration parameter"), and
    // fetched from a cursor one row, then the rest.
    assert_eq!(
        ports_of(&routes, "show pool_nodes"),
        vec![format!("2 {primary}"); 3],
        "{routes:?}"
    );
    assert_eq!(ports_of(&routes, "show cursor"), ["1 1"], "{routes:?}");
    // A view whose column calls nextval() (the data lines: 1, 2, 3, as directly), run on the
    // primary every time: the standby's refusal of the first was never seen.
    assert_eq!(
        ports_of(&routes, "view with nextval"),
        [format!("[{primary}]")],
        "{routes:?}"
    );
}

#[test]
fn python_psycopg3_through_pgwarden() {
    let c = Cluster::up(2);
    let routes = differential(&c, "python", "psycopg_session.py");
    let (primary, standby) = (c.node_port(0).to_string(), c.node_port(1).to_string());
    // Every read right after a write saw it: the primary served it, or a standby that had
    // replayed it (the data lines above are identical to the direct run).
    let ryw = ports_of(&routes, "read your write");
    assert_eq!(ryw.len(), 10, "{routes:?}");
    assert!(
        ryw.iter().all(|p| *p == primary || *p == standby),
        "{routes:?}"
    );
    // Autocommit reads with server-side binding and prepare=True ran on the standby.
    assert_eq!(
        ports_of(&routes, "standby read"),
        [standby.as_str()],
        "{routes:?}"
    );
    // The WITH HOLD cursor was declared on the standby (and then fetched there: the data line
    // is identical to the direct run's).
    assert_eq!(
        ports_of(&routes, "held cursor"),
        [standby.as_str()],
        "{routes:?}"
    );
    // SHOW POOL_NODES, simple then prepared, in text and binary (before: from the 6th run
    // on, "unrecognized configuration parameter \"pool_nodes\""), and among evictions from
    // psycopg's cache of prepared statements.
    assert_eq!(
        ports_of(&routes, "show pool_nodes"),
        vec![format!("2 {primary}"); 17],
        "{routes:?}"
    );
    assert_eq!(
        ports_of(&routes, "show pool_version"),
        ["True"],
        "{routes:?}"
    );
    assert_eq!(
        ports_of(&routes, "show among evictions"),
        vec!["2 1 2"; 6],
        "{routes:?}"
    );
    // A view whose column calls nextval(), unnamed then prepared: all seven reads ran on the
    // primary (the data lines: 1 to 7, as directly).
    assert_eq!(
        ports_of(&routes, "view with nextval"),
        [format!("[{primary}]")],
        "{routes:?}"
    );
}

#[test]
fn node_postgres_through_pgwarden() {
    let c = Cluster::up(2);
    let routes = differential(&c, "node", "pg_session.js");
    let (primary, standby) = (c.node_port(0), c.node_port(1));
    assert!(
        ports_of(&routes, "write")
            .iter()
            .all(|p| *p == primary.to_string()),
        "{routes:?}"
    );
    // The named statement was served by both nodes: by the standby the session is balanced
    // to, and by the primary (inside the transaction, and right after writes).
    assert_eq!(
        ports_of(&routes, "named ports"),
        [format!("[{primary},{standby}]")],
        "{routes:?}"
    );
}

#[test]
fn jdbc_through_pgwarden() {
    let c = Cluster::up(2);
    let routes = differential(&c, "java", "JdbcSession.java");
    let (primary, standby) = (c.node_port(0).to_string(), c.node_port(1).to_string());
    assert_eq!(
        ports_of(&routes, "tx write"),
        [primary.as_str()],
        "{routes:?}"
    );
    // A session balanced to the standby: its reads, through an unnamed then a named (S_n)
    // statement, ran there.
    assert_eq!(
        ports_of(&routes, "balanced reads"),
        [format!("[{standby}]")],
        "{routes:?}"
    );
    // setReadOnly(true) with autocommit off: pgjdbc's BEGIN READ ONLY, a named statement
    // parsed in the same batch as the first read, runs there too (it was taken for a write).
    assert_eq!(
        ports_of(&routes, "read-only tx"),
        [format!("[{standby}]")],
        "{routes:?}"
    );
    // A named statement made where the reads after a write ran (the primary, until the
    // standby has replayed the write: not asserted, a health check may be quick) then served a
    // read-only transaction on the standby.
    assert_eq!(
        ports_of(&routes, "later read-only tx"),
        [standby.as_str()],
        "{routes:?}"
    );
    // setTransactionIsolation: REPEATABLE READ reads stay on the standby (the setting, sent
    // through the extended protocol, once pinned the session to the primary); SERIALIZABLE
    // ones run on the primary (a hot standby refuses them).
    assert_eq!(
        ports_of(&routes, "repeatable read reads"),
        [format!("[{standby}]")],
        "{routes:?}"
    );
    assert_eq!(
        ports_of(&routes, "serializable reads"),
        [format!("[{primary}]")],
        "{routes:?}"
    );
}

/// The failing tests' names (`FAIL: name (module.Class.name)`, `ERROR: …`) and how many ran,
/// from unittest's verbose output.
fn unittest_outcome(out: &str) -> (std::collections::BTreeSet<String>, usize) {
    let failed = out
        .lines()
        .filter_map(|l| {
            l.strip_prefix("FAIL: ")
                .or_else(|| l.strip_prefix("ERROR: "))
        })
        .map(str::to_string)
        .collect();
    let ran = out
        .lines()
        .find_map(|l| l.strip_prefix("Ran ")?.split(' ').next()?.parse().ok())
        .unwrap_or(0);
    (failed, ran)
}

/// What psycopg2's own suite may see otherwise through pgwarden, and why.
const PSYCOPG2_ALLOWED: &[&str] = &[
    // `info.backend_pid` is the pid the client was told at login, when pgwarden has no backend
    // connection for the session yet (2,000 idle clients need not 2,000 backends);
    // `pg_backend_pid()` is the primary backend's, taken at the first statement. pgbouncer
    // gives its clients a pid of its own too.
    "test_backend_pid (tests.test_connection.TestConnectionInfo.test_backend_pid)",
];

/// psycopg2's own test suite (742 tests of its version's source, `ensure_psycopg2_tests`:
/// connections, cursors, COPY, notifications, async and green connections, cancel, large
/// objects, two-phase commit, types), run with Debian's psycopg2 directly against the
/// primary and through pgwarden: every test that passes directly passes through pgwarden,
/// but for `PSYCOPG2_ALLOWED`. (Its first run through pgwarden failed 8: notifications from
/// other sessions carried a pid no client was told, and a pid from `pg_backend_pid()` named
/// the standby's backend, which the primary's `pg_terminate_backend` did not know.)
#[test]
fn psycopg2s_own_test_suite_passes_through_pgwarden() {
    let suite = drivers_dir().join("psycopg2-tests");
    assert!(
        suite.join("tests").exists(),
        "{} is missing: ./dev/test fetches it (or run `. dev/lib.sh; ensure_psycopg2_tests`)",
        suite.display()
    );
    let c = Cluster::up(2);
    c.psql(0, "postgres", "CREATE DATABASE psycopg2_test")
        .unwrap();
    let run = |port: u16| {
        let out = Command::new("timeout")
            .args(["600", "/usr/bin/python3", "-c"])
            .arg("import tests, unittest; unittest.main(defaultTest='tests.test_suite', verbosity=2)")
            .current_dir(&suite)
            .env("PSYCOPG2_TESTDB_HOST", "127.0.0.1")
            .env("PSYCOPG2_TESTDB_PORT", port.to_string())
            .env("PSYCOPG2_TESTDB_USER", "postgres")
            .env("PSYCOPG2_TESTDB_PASSWORD", c.password())
            .env_remove("PGPASSFILE")
            .output()
            .unwrap();
        let text = format!("{}{}", common::stdout(&out), common::stderr(&out));
        let (failed, ran) = unittest_outcome(&text);
        (failed, ran, text)
    };
    let (direct_failed, direct_ran, direct_text) = run(c.node_port(0));
    assert!(
        direct_ran > 700,
        "the suite did not run directly:\n{direct_text}"
    );
    let (failed, ran, text) = run(c.proxy_port());
    assert_eq!(ran, direct_ran, "{text}");
    let new: Vec<&String> = failed
        .iter()
        .filter(|t| !direct_failed.contains(*t) && !PSYCOPG2_ALLOWED.contains(&t.as_str()))
        .collect();
    assert!(
        new.is_empty(),
        "failed through pgwarden only: {new:?}\n{}",
        text.lines()
            .filter(|l| !l.ends_with(" ... ok"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
