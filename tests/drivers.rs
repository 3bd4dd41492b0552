//! Differential suite and other drivers: the same SQL directly against the primary and through
//! pgwarden must give the same output, byte for byte; a Python driver works unchanged.

mod common;

use common::Cluster;
use std::path::Path;
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
