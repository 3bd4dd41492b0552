//! The sandbox and the node monitor on real PostgreSQL clusters.

mod common;

use common::{assert_error, pgwarden, stderr, stdout, Cluster};
use serde_json::Value;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

#[test]
fn three_nodes_stream_and_every_node_answers() {
    let c = Cluster::up(3);

    // psql with the passfile reaches every node; node 0 is the primary.
    for (id, in_recovery) in [(0, "f"), (1, "t"), (2, "t")] {
        assert_eq!(
            c.psql(id, "test", "SELECT pg_is_in_recovery()").unwrap(),
            in_recovery,
            "node {id}"
        );
    }
    let mode = std::fs::metadata(c.pgpass()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "pgpass must be closed to others");
    // Password authentication is enforced: a wrong password is refused.
    let wrong = common::temp_dir();
    let bad_pass = wrong.path().join("pgpass");
    std::fs::write(&bad_pass, "*:*:*:postgres:not-the-password\n").unwrap();
    std::fs::set_permissions(&bad_pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out =
        std::process::Command::new(pgwarden_sandbox::PgBin::locate().unwrap().program("psql"))
            .args([
                "-X",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "test",
                "-c",
                "SELECT 1",
                "-p",
            ])
            .arg(c.node_port(0).to_string())
            .env("PGPASSFILE", &bad_pass)
            .output()
            .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("password authentication failed"),
        "{}",
        stderr(&out)
    );

    // Writes on the primary reach both standbys.
    c.psql(
        0,
        "test",
        "CREATE TABLE t AS SELECT generate_series(1, 5000) AS x",
    )
    .unwrap();
    for id in [1, 2] {
        let mut seen = String::new();
        for _ in 0..100 {
            seen = c
                .psql(id, "test", "SELECT count(*) FROM t")
                .unwrap_or_default();
            if seen == "5000" {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(seen, "5000", "node {id} did not replay the table");
    }

    // The monitor: one primary, two streaming standbys with a lag figure.
    let (n1, _) = c.wait_node(1, Duration::from_secs(10), "streaming", |n| {
        n["replication_state"] == "streaming"
    });
    let nodes = c.nodes();
    assert_eq!(nodes.as_array().unwrap().len(), 3);
    assert_eq!(nodes[0]["role"], "primary");
    assert_eq!(nodes[0]["pg_role"], "primary");
    assert_eq!(nodes[0]["status"], "up");
    assert_eq!(nodes[0]["timeline"], 1);
    assert!(nodes[0]["current_lsn"].as_str().unwrap().contains('/'));
    for n in [&n1, &nodes[2]] {
        assert_eq!(n["role"], "standby", "{n:#}");
        assert_eq!(n["status"], "up");
        assert_eq!(n["pg_status"], "up");
        assert_eq!(n["sync_state"], "async");
        assert!(n["lag_bytes"].is_u64(), "lag in bytes: {n:#}");
        assert!(n["replay_lsn"].is_string());
        assert!(n["health_check"]["success_count"].as_u64().unwrap() >= 1);
    }

    // The CLI shows the same, as a table and as JSON.
    let out = c.pgwarden(&["node", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert_eq!(table.matches("streaming").count(), 2, "{table}");
    assert_eq!(
        table.matches("| primary |").count(),
        2,
        "role and pg role of node 0: {table}"
    );
    let out = c.pgwarden(&["node", "list", "--json"]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    assert_eq!(json[1]["port"], c.node_port(1));

    // sandbox status --json has the documented keys.
    let out = pgwarden(&[
        "sandbox",
        "status",
        "--json",
        "--dir",
        c.dir.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["proxy_port"], c.base);
    assert_eq!(st["pcp_port"], c.base + 1);
    assert_eq!(st["api_port"], c.base + 100);
    assert_eq!(st["warden"]["running"], true);
    let roles: Vec<&str> = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["primary", "standby", "standby"]);
    for (i, n) in st["nodes"].as_array().unwrap().iter().enumerate() {
        assert_eq!(n["id"], i);
        assert_eq!(n["port"], c.node_port(i as u16));
        assert_eq!(n["status"], "up");
        assert_eq!(n["data_dir"], c.data_dir(i as u16).to_str().unwrap());
        assert_eq!(n["agent"]["port"], c.base + 101 + i as u16);
        assert_eq!(n["agent"]["running"], true, "{n:#}");
    }

    // Every node has its agent, answering signed requests about its own server.
    for id in 0..3u16 {
        let a = c.agent_status(id);
        assert_eq!(a["running"], true, "{a:#}");
        assert_eq!(a["port"], c.node_port(id));
        assert_eq!(a["data_dir"], c.data_dir(id).to_str().unwrap());
        assert_eq!(a["control"]["timeline"], 1, "{a:#}");
    }
    let state = |id: u16| c.agent_status(id)["control"]["state"].clone();
    assert_eq!(state(0), "in production");
    assert_eq!(state(1), "in archive recovery");
    let secret = std::fs::metadata(c.dir.join("agent.secret")).unwrap();
    assert_eq!(secret.permissions().mode() & 0o777, 0o600);
    // The warden's configuration names them.
    let cfg = std::fs::read_to_string(c.config()).unwrap();
    assert!(cfg.contains("secret_file = \"agent.secret\""), "{cfg}");
    assert!(
        cfg.contains(&format!("agent = \"127.0.0.1:{}\"", c.base + 103)),
        "{cfg}"
    );
    let out = pgwarden(&["sandbox", "status", "--dir", c.dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains("agent of node 2: running, pid"),
        "{}",
        stdout(&out)
    );

    // The API's health endpoint.
    let health: Value =
        reqwest::blocking::get(format!("http://127.0.0.1:{}/v1/health", c.api_port()))
            .unwrap()
            .json()
            .unwrap();
    assert_eq!(health["status"], "ok");
}

#[test]
fn a_stopped_standby_shows_down_then_live_again() {
    let c = Cluster::up(2);
    c.wait_node(1, Duration::from_secs(10), "up", |n| n["status"] == "up");
    let before = c.nodes()[1]["health_check"]["fail_count"].as_u64().unwrap();

    c.pg_ctl(1, &["stop", "-m", "immediate"]);
    // The sandbox checks every 1 s with a 3 s timeout: down within period + timeout.
    let (n, took) = c.wait_node(
        1,
        Duration::from_secs(4) + Duration::from_millis(900),
        "down",
        |n| n["status"] == "down",
    );
    eprintln!("standby detected down after {took:?}");
    assert_eq!(n["pg_status"], "down");
    assert_eq!(n["pg_role"], "unknown");
    assert_eq!(n["role"], "standby", "the last known role is kept");
    assert!(
        n["last_error"]
            .as_str()
            .unwrap()
            .contains("Connection refused"),
        "{n:#}"
    );
    assert!(n["health_check"]["fail_count"].as_u64().unwrap() > before);
    assert!(n["health_check"]["last_failed_health_check"].is_string());
    // The primary is not disturbed.
    assert_eq!(c.nodes()[0]["status"], "up");
    let table = stdout(&c.pgwarden(&["node", "list"]));
    assert!(table.contains("node 1: does not answer"), "{table}");

    // Restarted: its live state is up and streaming again; it stays out of service.
    c.start_node(1);
    let (n, _) = c.wait_node(1, Duration::from_secs(15), "live again", |n| {
        n["pg_status"] == "up" && n["replication_state"] == "streaming"
    });
    assert_eq!(n["pg_role"], "standby");
    assert_eq!(
        n["status"], "down",
        "a returning node is not re-attached by a health check"
    );
    assert!(n["last_error"].is_null());
    let table = stdout(&c.pgwarden(&["node", "list"]));
    assert!(
        table.contains("node 1: out of service, although it answers again"),
        "{table}"
    );
}

#[test]
fn down_leaves_no_process_and_up_restarts_with_the_data() {
    let c = Cluster::up(2);
    let dir = c.dir.to_str().unwrap().to_string();
    c.psql(
        0,
        "test",
        "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')",
    )
    .unwrap();
    assert!(
        c.processes().len() >= 5,
        "warden and two postmasters with their children"
    );

    let out = pgwarden(&["sandbox", "down", "--dir", &dir])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        c.processes(),
        Vec::<u32>::new(),
        "sandbox down left processes behind"
    );
    assert!(c.data_dir(0).exists(), "down keeps the data");

    // Without a warden, status probes the nodes directly.
    let out = pgwarden(&["sandbox", "status", "--json", "--dir", &dir])
        .output()
        .unwrap();
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["warden"]["running"], false);
    assert_eq!(st["source"], "probe");
    assert!(st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["status"] == "down" && n["agent"]["running"] == false));

    // Changing the shape of an existing sandbox is refused, and changes nothing.
    let out = pgwarden(&["sandbox", "up", "--dir", &dir, "--nodes", "3"])
        .output()
        .unwrap();
    assert_error(&out, 1, "was built with --nodes 2");
    assert_eq!(c.processes(), Vec::<u32>::new());

    // up again: the same cluster, with its data.
    let out = pgwarden(&["sandbox", "up", "--dir", &dir])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("started in"), "{}", stdout(&out));
    assert_eq!(
        c.psql(0, "test", "SELECT v FROM kept").unwrap(),
        "still here"
    );
    c.wait_node(1, Duration::from_secs(10), "streaming", |n| {
        n["replication_state"] == "streaming"
    });
    assert_eq!(
        c.psql(1, "test", "SELECT pg_is_in_recovery()").unwrap(),
        "t"
    );
    // The agents are back too.
    assert_eq!(c.agent_status(1)["running"], true);

    // A second up while it runs is harmless.
    let out = pgwarden(&["sandbox", "up", "--dir", &dir])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let out = pgwarden(&["sandbox", "down", "--dir", &dir, "--destroy"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!c.dir.exists(), "--destroy removes the directory");
    assert_eq!(c.processes(), Vec::<u32>::new());
}

#[test]
fn a_taken_port_is_named_and_nothing_is_left_behind() {
    let tmp = common::temp_dir();
    let dir = tmp.path().join("sb");
    let base = common::free_base(3);
    let held = TcpListener::bind(("127.0.0.1", base + 3)).unwrap();
    let out = pgwarden(&[
        "sandbox",
        "up",
        "--dir",
        dir.to_str().unwrap(),
        "--port",
        &base.to_string(),
    ])
    .output()
    .unwrap();
    drop(held);
    assert_error(
        &out,
        1,
        &format!("port {} (PostgreSQL node 1) is already in use", base + 3),
    );
    assert!(!dir.exists(), "nothing is created when a port is taken");
}

#[test]
fn missing_postgres_programs_say_how_to_install_them() {
    let tmp = common::temp_dir();
    let dir = tmp.path().join("sb");
    let out = pgwarden(&[
        "sandbox",
        "up",
        "--dir",
        dir.to_str().unwrap(),
        "--port",
        &common::free_base(3).to_string(),
    ])
    .env("PGWARDEN_PG_BIN", tmp.path().join("no-such-dir"))
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("PostgreSQL's server programs"), "{err}");
    assert!(err.contains("apt-get install postgresql-15"), "{err}");
    assert!(!dir.exists());
}

#[test]
fn a_directory_that_is_not_a_sandbox_is_left_alone() {
    let tmp = common::temp_dir();
    std::fs::write(tmp.path().join("precious.txt"), "do not touch").unwrap();
    let d = tmp.path().to_str().unwrap();
    let out = pgwarden(&[
        "sandbox",
        "up",
        "--dir",
        d,
        "--port",
        &common::free_base(3).to_string(),
    ])
    .output()
    .unwrap();
    assert_error(&out, 1, "is not empty and is not a pgwarden sandbox");
    for args in [
        &["sandbox", "down", "--dir", d, "--destroy"][..],
        &["sandbox", "status", "--dir", d],
    ] {
        let out = pgwarden(args).output().unwrap();
        assert_error(&out, 1, "is not a pgwarden sandbox");
    }
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("precious.txt")).unwrap(),
        "do not touch"
    );
}

/// Sends SIGCONT on drop, so a failing test never leaves a server stopped.
struct Stopped(Vec<nix::unistd::Pid>);

impl Drop for Stopped {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = nix::sys::signal::kill(*p, nix::sys::signal::Signal::SIGCONT);
        }
    }
}

#[test]
fn a_hung_standby_is_caught_by_the_timeout() {
    let c = Cluster::up(2);
    c.wait_node(1, Duration::from_secs(10), "up", |n| n["status"] == "up");
    // The host hangs: every process of the node stops (the backend of the monitor's kept
    // check connection too); the kernel still accepts connections for the postmaster.
    let pids = common::node_pids(&c, 1);
    assert!(pids.len() > 3, "{pids:?}");
    for p in &pids {
        nix::sys::signal::kill(*p, nix::sys::signal::Signal::SIGSTOP).unwrap();
    }
    let hung = Stopped(pids);
    // period 1 s + two attempts bounded by connect_timeout (1.5 s: the kept connection's query,
    // then a new connection's startup, never get an answer) + 0.5 s between them, and some
    // slack for the poll.
    let (n, took) = c.wait_node(1, Duration::from_secs(10), "down", |n| {
        n["status"] == "down"
    });
    eprintln!("hung standby detected down after {took:?}");
    assert!(
        took >= Duration::from_secs(3),
        "a hang is only detected by the timeout: {took:?}"
    );
    assert!(
        n["last_error"]
            .as_str()
            .unwrap()
            .contains("no answer to the connection within 1500 ms"),
        "{n:#}"
    );
    assert!(
        n["health_check"]["max_duration_ms"].as_u64().unwrap() >= 3000,
        "{n:#}"
    );
    assert_eq!(c.nodes()[0]["status"], "up", "the primary is not disturbed");

    drop(hung);
    let (n, _) = c.wait_node(1, Duration::from_secs(15), "live again", |n| {
        n["pg_status"] == "up"
    });
    assert_eq!(n["pg_role"], "standby");
    assert_eq!(n["status"], "down");
}

/// As root, the agents run as `postgres`, which may not reach the pgwarden executable (built
/// under /root, say): the sandbox runs a copy of it in DIR/bin.
#[test]
fn agents_run_a_copy_of_an_executable_closed_to_postgres() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: only meaningful as root");
        return;
    }
    let tmp = common::temp_dir();
    let private = tmp.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let exe = private.join("pgwarden");
    std::fs::copy(common::EXE, &exe).unwrap();
    let dir = tmp.path().join("sb");
    let d = dir.to_str().unwrap();
    let base = common::free_base(1);
    let up = std::process::Command::new(&exe)
        .args([
            "sandbox",
            "up",
            "--dir",
            d,
            "--nodes",
            "1",
            "--no-fsync",
            "--port",
        ])
        .arg(base.to_string())
        .env_remove("PGWARDEN_SANDBOX")
        .output()
        .unwrap();
    let status = pgwarden(&["sandbox", "status", "--json", "--dir", d])
        .output()
        .unwrap();
    let copied = dir.join("bin/pgwarden").is_file();
    let down = pgwarden(&["sandbox", "down", "--dir", d, "--destroy"])
        .output()
        .unwrap();
    assert!(up.status.success(), "{}{}", stdout(&up), stderr(&up));
    assert!(stdout(&up).contains("agent 0"), "{}", stdout(&up));
    let st: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(st["nodes"][0]["agent"]["running"], true, "{st:#}");
    assert!(copied, "the agents run DIR/bin/pgwarden");
    assert!(down.status.success(), "{}", stderr(&down));
    assert_eq!(common::processes_under(&dir), Vec::<u32>::new());
}
