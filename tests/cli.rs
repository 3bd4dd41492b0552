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
    std::fs::write(
        t.path().join("pcp.conf"),
        "pgwarden:5ebe2294ecd0e0f08eab7690d2a6ee69\n",
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

/// What would stop the warden starting is found by `config check`: the TLS key and
/// certificate (readable, matching, not encrypted, the key closed to others as PostgreSQL
/// requires) and the PCP user file. (Before, `config check` said ok and the warden then
/// refused to start.)
#[test]
fn tls_and_pcp_files_are_checked() {
    let (t, cfg) = example_dir();
    let dir = t.path();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    let write_key = |pem: &str, mode: u32| {
        std::fs::write(dir.join("server.key"), pem).unwrap();
        std::fs::set_permissions(
            dir.join("server.key"),
            std::fs::Permissions::from_mode(mode),
        )
        .unwrap();
    };
    write_key(&key.serialize_pem(), 0o600);
    let text = EXAMPLE.replace(
        "# tls_cert = \"server.crt\"\n# tls_key = \"server.key\"\n",
        "tls_cert = \"server.crt\"\ntls_key = \"server.key\"\n",
    );
    assert_ne!(text, EXAMPLE, "the example's TLS lines");
    std::fs::write(&cfg, &text).unwrap();
    let out = check(&cfg);
    assert!(out.status.success(), "{}", stderr(&out));
    // A key open to others.
    write_key(&key.serialize_pem(), 0o644);
    assert_error(&check(&cfg), 2, "proxy.tls_key");
    assert!(
        stderr(&check(&cfg)).contains("mode 0644"),
        "{}",
        stderr(&check(&cfg))
    );
    // Another certificate's key.
    write_key(&rcgen::KeyPair::generate().unwrap().serialize_pem(), 0o600);
    assert_error(&check(&cfg), 2, "proxy.tls_cert / proxy.tls_key");
    // An encrypted key.
    write_key(
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n",
        0o600,
    );
    assert_error(&check(&cfg), 2, "the private key is encrypted");
    // No key at all.
    std::fs::remove_file(dir.join("server.key")).unwrap();
    assert_error(&check(&cfg), 2, "proxy.tls_key");
    // The PCP user file.
    std::fs::write(&cfg, EXAMPLE).unwrap();
    std::fs::remove_file(dir.join("pcp.conf")).unwrap();
    assert_error(&check(&cfg), 2, "pcp.users_file");
    std::fs::write(dir.join("pcp.conf"), "pgwarden\n").unwrap();
    assert_error(&check(&cfg), 2, "pcp.users_file");
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
    for cmd in ["serve", "config", "node", "sandbox", "agent"] {
        assert!(text.contains(cmd), "{text}");
    }
    let out = pgwarden(&["serve", "--help"]).output().unwrap();
    assert!(
        stdout(&out).contains("PGWARDEN_WORKERS"),
        "{}",
        stdout(&out)
    );
    let out = pgwarden(&["sandbox", "up", "--help"]).output().unwrap();
    assert!(stdout(&out).contains("BASE+100"), "{}", stdout(&out));
    let out = pgwarden(&["node", "frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

/// `pgwarden agent ARGS` as the OS user PostgreSQL runs as (`postgres` when the tests run as
/// root: the agent refuses root).
fn agent_as_db_user(args: &[&str]) -> std::process::Command {
    let run_as = pgwarden_sandbox::RunAs::detect().unwrap();
    let mut c = run_as.command(common::EXE);
    c.arg("agent").args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("PGWARDEN_") {
            c.env_remove(k);
        }
    }
    c
}

/// A directory the database user owns, with a good secret file and a data directory.
fn agent_dir() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = common::temp_dir();
    let run_as = pgwarden_sandbox::RunAs::detect().unwrap();
    let dir = t.path().join("agent");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    run_as.own(&dir).unwrap();
    run_as.own(&dir.join("data")).unwrap();
    let secret = dir.join("agent.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    run_as.own(&secret).unwrap();
    (t, dir, secret)
}

#[test]
fn agent_refuses_what_it_cannot_work_with_and_exits_2() {
    let (_t, dir, secret) = agent_dir();
    let data = dir.join("data");
    // A port held by this test the whole time: every other problem is found before the agent
    // binds, and the last case is the taken port itself. (Picking a free port and binding it
    // later races with the other tests' clusters.)
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let base = |secret: &Path, data: &Path| {
        vec![
            "--listen".to_string(),
            listen.clone(),
            "--data-dir".into(),
            data.to_str().unwrap().into(),
            "--pg-port".into(),
            "5432".into(),
            "--secret-file".into(),
            secret.to_str().unwrap().into(),
        ]
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        agent_as_db_user(&args).output().unwrap()
    };

    if nix::unistd::geteuid().is_root() {
        let args = base(&secret, &data);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = pgwarden(&["agent"]).args(&args).output().unwrap();
        assert_error(&out, 2, "refuses to run as root");
        assert_error(&out, 2, "sudo -u postgres");
    }

    // The secret file: open to others, too short, missing.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_error(&run(base(&secret, &data)), 2, "(mode 0644)");
    assert_error(&run(base(&secret, &data)), 2, secret.to_str().unwrap());
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let short = dir.join("short.secret");
    std::fs::write(&short, "tooshort\n").unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    pgwarden_sandbox::RunAs::detect()
        .unwrap()
        .own(&short)
        .unwrap();
    assert_error(&run(base(&short, &data)), 2, "at least 16 are needed");
    assert_error(
        &run(base(&dir.join("nope.secret"), &data)),
        2,
        "does not exist",
    );

    // A data directory this user cannot reach.
    let closed = dir.join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o000)).unwrap();
    let out = run(base(&secret, &closed.join("data")));
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_error(&out, 2, "--data-dir");
    assert_error(&out, 2, "ermission denied");

    // A bad --keep, a missing --pg-bin program.
    let mut args = base(&secret, &data);
    args.extend(["--keep".into(), "../postgresql.conf".into()]);
    assert_error(&run(args), 2, "no absolute path, no ..");
    let mut args = base(&secret, &data);
    args.extend(["--pg-bin".into(), dir.to_str().unwrap().into()]);
    assert_error(&run(args), 2, "pg_ctl, pg_controldata, pg_rewind");

    // A port that is taken.
    assert_error(&run(base(&secret, &data)), 2, "already in use");
    drop(held);
}

#[test]
fn agent_serves_signed_requests_and_logs_refused_ones() {
    let (_t, dir, secret) = agent_dir();
    let port = common::free_base(1);
    let child = agent_as_db_user(&[
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        dir.join("data").to_str().unwrap(),
        "--pg-port",
        "5432",
        "--secret-file",
        secret.to_str().unwrap(),
    ])
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/status");
    let start = std::time::Instant::now();
    let unsigned = loop {
        match http.get(&url).send() {
            Ok(r) => break r,
            Err(e) => {
                assert!(
                    start.elapsed().as_secs() < 20,
                    "the agent never answered: {e}"
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    };
    assert_eq!(unsigned.status().as_u16(), 401);
    let body: serde_json::Value = unsigned.json().unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no Authorization header"),
        "{body}"
    );
    let key = std::fs::read(&secret).unwrap();
    let key = key.trim_ascii();
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signed: serde_json::Value = http
        .get(&url)
        .header(
            "Authorization",
            pgwarden_agent::auth::authorization(key, ts, "GET", "/v1/status", b""),
        )
        .send()
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(signed["running"], false);
    assert_eq!(signed["control"], serde_json::Value::Null);
    assert_eq!(signed["port"], 5432);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(log.contains("refused a request"), "{log}");
    assert!(log.contains("peer=127.0.0.1:"), "{log}");
    assert!(log.contains("no Authorization header"), "{log}");
}
