//! `config check`, `serve` and `node list` on bad input: clear errors, the right exit code,
//! nothing started.

mod common;

use common::{assert_error, pgwarden, stderr, stdout};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const EXAMPLE: &str = include_str!("../pgwarden.example.toml");

/// A directory with the example configuration and a valid password file beside it.
fn example_dir() -> (tempfile::TempDir, PathBuf) {
    let t = common::temp_dir();
    let cfg = t.path().join("pgwarden.toml");
    std::fs::write(&cfg, EXAMPLE).unwrap();
    let pass = t.path().join("pgpass");
    std::fs::write(&pass, "*:*:*:pgwarden:secret\n").unwrap();
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        t.path().join("pool_passwd"),
        "app:md5aaaabbbbccccddddeeeeffff00001111\n",
    )
    .unwrap();
    (t, cfg)
}

fn check(cfg: &Path) -> std::process::Output {
    pgwarden(&["config", "check", cfg.to_str().unwrap()])
        .output()
        .unwrap()
}

#[test]
fn the_example_config_is_valid() {
    let (_t, cfg) = example_dir();
    let out = check(&cfg);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(": ok — 3 backend(s)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn broken_configs_exit_2_naming_file_line_key_and_expectation() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "a typo in a key",
            "max_retries = 2",
            "max_retrys = 2",
            "health_check.max_retrys: unknown field `max_retrys`, expected one of",
        ),
        (
            "a port as a string",
            "port = 5432",
            "port = \"5432\"",
            "backend[0].port: invalid type: string \"5432\", expected u16",
        ),
        (
            "a duplicate id",
            "id = 1",
            "id = 0",
            "backend[1].id: id 0 is already used by the backend at line",
        ),
        (
            "a duplicate port",
            "host = \"10.0.0.12\"",
            "host = \"10.0.0.11\"",
            "is already backend[0]",
        ),
    ];
    for (what, from, to, want) in cases {
        let (_t, cfg) = example_dir();
        let text = std::fs::read_to_string(&cfg).unwrap();
        assert!(text.contains(from), "the example must contain {from:?}");
        std::fs::write(&cfg, text.replacen(from, to, 1)).unwrap();
        let out = check(&cfg);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(
            err.contains(&format!("{}:", cfg.display())),
            "{what}: names the file: {err}"
        );
        assert!(err.contains(want), "{what}: want {want:?} in {err}");
        // the line number is there: FILE:LINE: key
        let after = err.split(&format!("{}:", cfg.display())).nth(1).unwrap();
        assert!(
            after.split(':').next().unwrap().parse::<usize>().is_ok(),
            "{what}: a line number: {err}"
        );
    }
}

#[test]
fn password_file_problems_exit_2() {
    let (t, cfg) = example_dir();
    let pass = t.path().join("pgpass");
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check(&cfg);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("credentials.password_file"), "{err}");
    assert!(
        err.contains("readable by group or others (mode 0644)"),
        "{err}"
    );
    assert!(err.contains("chmod 600"), "{err}");

    std::fs::remove_file(&pass).unwrap();
    let out = check(&cfg);
    assert_error(&out, 2, "does not exist");
}

#[test]
fn a_broken_pool_passwd_exits_2() {
    let (t, cfg) = example_dir();
    std::fs::write(t.path().join("pool_passwd"), "app:md5aaaa\njustaname\n").unwrap();
    let out = check(&cfg);
    assert_error(&out, 2, "proxy.pool_passwd");
    assert!(
        stderr(&out).contains("line 2: expected user:secret"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(t.path().join("pool_passwd")).unwrap();
    assert_error(&check(&cfg), 2, "cannot be read");
}

#[test]
fn a_missing_config_file_exits_2() {
    let t = common::temp_dir();
    let out = check(&t.path().join("nope.toml"));
    assert_error(&out, 2, "cannot read the configuration file");
}

#[test]
fn serve_with_a_broken_config_starts_nothing() {
    let (_t, cfg) = example_dir();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let port = common::free_base(1);
    let text = text
        .replace("127.0.0.1:9900", &format!("127.0.0.1:{port}"))
        .replacen("weight = 1", "weight = -1", 1);
    std::fs::write(&cfg, text).unwrap();
    let out = pgwarden(&["serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_error(&out, 2, "weight: -1 is not allowed");
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "nothing listens"
    );
}

#[test]
fn node_list_without_a_warden_says_so() {
    let port = common::free_base(1);
    let out = pgwarden(&["node", "list", "--api", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("cannot reach the pgwarden API"), "{err}");
    assert!(err.contains("is the warden running?"), "{err}");
}

#[test]
fn help_explains_the_commands() {
    let out = pgwarden(&["--help"]).output().unwrap();
    let text = stdout(&out);
    for cmd in ["serve", "config", "node", "sandbox"] {
        assert!(text.contains(cmd), "{text}");
    }
    let out = pgwarden(&["sandbox", "up", "--help"]).output().unwrap();
    assert!(stdout(&out).contains("BASE+100"), "{}", stdout(&out));
    let out = pgwarden(&["node", "frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}
