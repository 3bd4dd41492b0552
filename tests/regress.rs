//! PostgreSQL's own regression suite through pgwarden.
//!
//! The 217 scripts of `src/test/regress` (from Debian's source of the installed PostgreSQL 15,
//! fetched and built by `dev/lib.sh`'s `ensure_pg_regress`) are run the way `pg_regress` runs
//! them: `psql -X -a -q` per script with its output and errors in one file, the scripts of each
//! group of `parallel_schedule` at once, pg_regress's environment and database settings. Three
//! passes on one sandbox cluster (a primary and a standby):
//!
//! 1. directly against the primary;
//! 2. through pgwarden, session-level balancing with the primary at weight 0, so that every
//!    session's reads go to the standby whenever read-your-writes allows;
//! 3. through pgwarden, statement-level balancing over both nodes.
//!
//! Each script's output through pgwarden must be byte for byte its direct output, but for the
//! few differences in `ALLOWED`, each of which a user of any session pooler (or of pgpool-II's
//! balancing) sees too. The scripts' own expected files are used only to check that the direct
//! pass ran the suite at all (most scripts match them; the rest differ by this machine's time
//! zone data and the like).

mod common;

use common::{primary_weight_zero, restart_with_proxy_settings, Cluster};
use pgwarden_sandbox::PgBin;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A difference between a script's direct output and its output through pgwarden that is
/// accepted: the lines from the one starting with `from` up to (not including) the one starting
/// with `to` (or the end) are left out of both outputs before they are compared.
struct Allowance {
    test: &'static str,
    from: &'static str,
    to: Option<&'static str>,
}

const ALLOWED: &[Allowance] = &[
    // A pooled backend connection keeps the libraries an earlier session loaded (plpgsql, by
    // calling a PL/pgSQL function): the custom setting is refused at once instead of being
    // removed with a warning at LOAD. DISCARD ALL does not unload libraries; pgbouncer and
    // pgpool-II hand out such connections too. It happens only when the session got a
    // connection another session had used, so this part may also match.
    Allowance {
        test: "guc",
        from: "SET plpgsql.extra_foo_warnings = true;  -- allowed",
        to: Some("SHOW plpgsql.extra_foo_warnings;"),
    },
    // `\c` starts a new client session, which a pooled connection serves: pg_stat_database's
    // `sessions` counts server sessions and need not move.
    Allowance {
        test: "stats",
        from: "SELECT sessions > :db_stat_sessions FROM pg_stat_database",
        to: Some("-- Test pg_stat_bgwriter checkpointer-related stats"),
    },
    // BEGIN; SELECT current_schema() (a read: it may run on the standby, as in pgpool-II, until
    // the transaction writes); PREPARE TRANSACTION (on the primary, whose transaction has not
    // touched the temporary schema): "prepared transactions are disabled" instead of "cannot
    // PREPARE a transaction that has operated on temporary objects". Both refuse it.
    Allowance {
        test: "temp",
        from: "PREPARE TRANSACTION 'twophase_search';",
        to: None,
    },
];

/// Where `ensure_pg_regress` keeps the suite.
fn suite_source() -> PathBuf {
    if let Some(dir) = std::env::var_os("PGWARDEN_PG_REGRESS") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
    cache.join("pgwarden").join("pg-regress")
}

/// The suite copied where the server (the postgres OS user when run as root) can read it.
fn copy_suite(to: &Path) {
    let from = suite_source();
    assert!(
        from.join("ready").exists(),
        "PostgreSQL's regression suite is not in {}: run `. dev/lib.sh && ensure_pg_regress` \
         (./dev/test does)",
        from.display()
    );
    let out = Command::new("cp")
        .arg("-r")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .output()
        .expect("cp");
    assert!(out.status.success(), "{}", common::stderr(&out));
}

/// The groups of `parallel_schedule`, in order.
fn schedule(suite: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(suite.join("parallel_schedule"))
        .expect("parallel_schedule")
        .lines()
        .filter_map(|l| l.strip_prefix("test:"))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// A fresh `regression` database with the settings pg_regress gives it, made on the primary.
fn fresh_database(c: &Cluster) {
    c.psql(
        0,
        "postgres",
        "DROP DATABASE IF EXISTS regression WITH (FORCE)",
    )
    .expect("drop regression");
    c.psql(
        0,
        "postgres",
        "CREATE DATABASE regression TEMPLATE = template0",
    )
    .expect("create regression");
    for set in [
        "lc_messages TO 'C'",
        "lc_monetary TO 'C'",
        "lc_numeric TO 'C'",
        "lc_time TO 'C'",
        "bytea_output TO 'hex'",
        "timezone_abbreviations TO 'Default'",
    ] {
        c.psql(
            0,
            "regression",
            &format!("ALTER DATABASE regression SET {set}"),
        )
        .expect("ALTER DATABASE");
    }
}

/// Runs the whole schedule against `port`, each script's output into `out/results/NAME.out`.
/// Returns the scripts that did not finish within the time limit.
fn run_suite(c: &Cluster, suite: &Path, port: u16, out: &Path) -> Vec<String> {
    let results = out.join("results");
    std::fs::create_dir_all(&results).expect("results dir");
    // Scripts COPY to files under PG_ABS_BUILDDIR/results as the server's OS user.
    for d in [out, &results] {
        let mut p = std::fs::metadata(d).expect("stat").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o777);
        std::fs::set_permissions(d, p).expect("chmod");
    }
    fresh_database(c);
    let psql = PgBin::locate()
        .expect("PostgreSQL programs")
        .program("psql");
    let mut late = Vec::new();
    for group in schedule(suite) {
        let mut running: Vec<(String, Child)> = group
            .iter()
            .map(|t| {
                let log = File::create(results.join(format!("{t}.out"))).expect("result file");
                let child = Command::new(&psql)
                    .args(["-X", "-a", "-q", "-d", "regression"])
                    .env_clear()
                    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                    .env("PGHOST", "127.0.0.1")
                    .env("PGPORT", port.to_string())
                    .env("PGUSER", "postgres")
                    .env("PGPASSFILE", c.pgpass())
                    .env("PGCONNECT_TIMEOUT", "20")
                    .env("PGAPPNAME", "pg_regress")
                    .env("LC_MESSAGES", "C")
                    .env("PGTZ", "PST8PDT")
                    .env("PGDATESTYLE", "Postgres, MDY")
                    .env("PG_ABS_SRCDIR", suite)
                    .env("PG_ABS_BUILDDIR", out)
                    .env("PG_LIBDIR", suite)
                    .env("PG_DLSUFFIX", ".so")
                    .stdin(File::open(suite.join("sql").join(format!("{t}.sql"))).expect("script"))
                    .stdout(Stdio::from(log.try_clone().expect("dup")))
                    .stderr(Stdio::from(log))
                    .spawn()
                    .expect("run psql");
                (t.clone(), child)
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(300);
        while !running.is_empty() {
            running.retain_mut(|(t, child)| match child.try_wait() {
                Ok(Some(_)) => false,
                Ok(None) if Instant::now() < deadline => true,
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    late.push(t.clone());
                    false
                }
            });
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    late
}

fn output(dir: &Path, test: &str) -> String {
    let bytes = std::fs::read(dir.join("results").join(format!("{test}.out"))).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `text` without the lines an allowance leaves out; whether its `from` line was there.
fn without(text: &str, a: &Allowance) -> (String, bool) {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| l.starts_with(a.from)) else {
        return (text.to_string(), false);
    };
    let end =
        a.to.and_then(|to| lines[start..].iter().position(|l| l.starts_with(to)))
            .map_or(lines.len(), |n| start + n);
    let kept: Vec<&str> = lines[..start]
        .iter()
        .chain(&lines[end..])
        .copied()
        .collect();
    (kept.join("\n"), true)
}

/// The scripts whose output through pgwarden differs from the direct one beyond `ALLOWED`,
/// each with a unified diff.
fn differences(tests: &[String], direct: &Path, proxied: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for t in tests {
        let (mut a, mut b) = (output(direct, t), output(proxied, t));
        if a == b {
            continue;
        }
        for allowed in ALLOWED.iter().filter(|x| x.test == t) {
            let (a2, seen) = without(&a, allowed);
            assert!(
                seen,
                "{t}: the allowed difference's line `{}` is not in the direct output any more",
                allowed.from
            );
            a = a2;
            b = without(&b, allowed).0;
        }
        if a == b {
            eprintln!("{t}: differs only where ALLOWED says it may");
            continue;
        }
        let diff = Command::new("diff")
            .args(["-u", "--label", "direct", "--label", "pgwarden"])
            .arg(direct.join("results").join(format!("{t}.out")))
            .arg(proxied.join("results").join(format!("{t}.out")))
            .output()
            .map(|o| common::stdout(&o))
            .unwrap_or_default();
        let short: String = diff.lines().take(80).collect::<Vec<_>>().join("\n");
        found.push(format!("== {t}\n{short}"));
    }
    found
}

/// Reads served by node `id` so far, from `SHOW POOL_NODES` through pgwarden.
fn select_count(c: &Cluster, id: u16) -> u64 {
    let rows = c
        .psql_proxy("postgres", "SHOW POOL_NODES")
        .expect("SHOW POOL_NODES");
    rows.lines()
        .map(|l| l.split('|').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&id.to_string().as_str()))
        .and_then(|f| f.get(8).and_then(|n| n.trim().parse().ok()))
        .expect("select_cnt of the node")
}

#[test]
fn postgres_regression_suite_gives_the_same_output_through_pgwarden() {
    let c = Cluster::up(2);
    let work = common::temp_dir();
    let suite = work.path().join("suite");
    std::fs::create_dir_all(&suite).expect("suite dir");
    copy_suite(&suite);
    let tests: Vec<String> = schedule(&suite).concat();
    // Plans must not depend on when the standby last told the primary its oldest snapshot:
    // with hot_standby_feedback, a VACUUM in one pass may find rows not yet visible to all
    // and leave pages not all-visible, and an EXPLAIN then shows another plan. Without it the
    // standby waits for its readers rather than cancelling them (a cancel would be a
    // difference of its own).
    for set in [
        "ALTER SYSTEM SET hot_standby_feedback = off",
        "ALTER SYSTEM SET max_standby_streaming_delay = -1",
        "SELECT pg_reload_conf()",
    ] {
        c.psql(1, "postgres", set).expect("standby settings");
    }
    assert!(
        tests.len() > 200,
        "only {} scripts in the schedule",
        tests.len()
    );

    // 1. Directly against the primary: the suite must really have run.
    let direct = work.path().join("direct");
    let late = run_suite(&c, &suite, c.node_port(0), &direct);
    assert!(
        late.is_empty(),
        "scripts that did not finish directly: {late:?}"
    );
    let mut as_expected = 0;
    for t in &tests {
        let got = output(&direct, t);
        // (prepared_xacts quits at once where max_prepared_transactions is 0, the default.)
        assert!(
            got.lines().count() >= 3 && !got.contains("psql: error"),
            "{t} did not run directly:\n{got}"
        );
        let expected = std::iter::once(format!("{t}.out"))
            .chain((1..10).map(|n| format!("{t}_{n}.out")))
            .filter_map(|f| std::fs::read_to_string(suite.join("expected").join(f)).ok());
        if expected.into_iter().any(|e| e == got) {
            as_expected += 1;
        }
    }
    assert!(
        as_expected * 10 >= tests.len() * 7,
        "only {as_expected} of {} scripts gave PostgreSQL's expected output directly: the suite \
         did not run as pg_regress would run it",
        tests.len()
    );
    eprintln!(
        "direct: {as_expected} of {} scripts as PostgreSQL expects",
        tests.len()
    );

    // 2. Through pgwarden, every session's reads balanced to the standby.
    primary_weight_zero(&c);
    restart_with_proxy_settings(&c, "");
    let balanced = work.path().join("session");
    let late = run_suite(&c, &suite, c.proxy_port(), &balanced);
    let on_standby = select_count(&c, 1);
    let mut failed = differences(&tests, &direct, &balanced);

    // 3. Through pgwarden, each read balanced over both nodes.
    let cfg = std::fs::read_to_string(c.config())
        .expect("config")
        .replace(
            "application_name = \"node0\"\nweight = 0\n",
            "application_name = \"node0\"\n",
        );
    std::fs::write(c.config(), cfg).expect("config");
    restart_with_proxy_settings(&c, "load_balance = \"statement\"\n");
    let statement = work.path().join("statement");
    let late_statement = run_suite(&c, &suite, c.proxy_port(), &statement);
    let on_standby_statement = select_count(&c, 1);
    let on_primary_statement = select_count(&c, 0);
    failed.extend(
        differences(&tests, &direct, &statement)
            .into_iter()
            .map(|d| format!("(statement-level) {d}")),
    );

    eprintln!(
        "reads on the standby: {on_standby} (session-level pass), {on_standby_statement} \
         (statement-level pass, against {on_primary_statement} on the primary)"
    );
    assert!(
        late.is_empty(),
        "scripts that did not finish through pgwarden: {late:?}"
    );
    assert!(
        late_statement.is_empty(),
        "scripts that did not finish through pgwarden (statement-level): {late_statement:?}"
    );
    assert!(
        failed.is_empty(),
        "{} scripts gave another output through pgwarden than directly:\n{}",
        failed.len(),
        failed.join("\n")
    );
    // Reads did go to the standby: the suite tested balancing, not only the primary.
    assert!(
        on_standby >= 300,
        "only {on_standby} reads ran on the standby"
    );
    assert!(
        on_standby_statement >= 300,
        "only {on_standby_statement} reads ran on the standby (statement-level)"
    );
}
