//! The end-to-end test harness: real clusters, built by `pgwarden sandbox up` itself — the
//! same code path a user runs — in a unique temporary directory on free ports, so tests run
//! in parallel. When a test fails, the PostgreSQL and warden logs are printed; whatever
//! happens, every process is stopped and the directory removed.

#![allow(dead_code)]

pub mod raw;

use pgwarden_sandbox::{Layout, PgBin, RunAs};
use serde_json::Value;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const EXE: &str = env!("CARGO_BIN_EXE_pgwarden");

/// `pgwarden ARGS` with a clean environment for pgwarden's own variables.
pub fn pgwarden(args: &[&str]) -> Command {
    let mut c = Command::new(EXE);
    c.args(args)
        .env_remove("PGWARDEN_CONFIG")
        .env_remove("PGWARDEN_API")
        .env_remove("PGWARDEN_SANDBOX")
        .env_remove("PGWARDEN_PG_BIN");
    c
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The command failed with `code` and its error output says `needle`.
#[track_caller]
pub fn assert_error(out: &Output, code: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {err}");
    assert!(err.contains(needle), "want {needle:?} in stderr: {err}");
}

/// A directory the `postgres` OS user can reach even when the tests run as root.
pub fn temp_dir() -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .prefix("pgwarden-test-")
        .tempdir_in(std::env::temp_dir())
        .expect("temporary directory");
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    t
}

/// A base port whose whole range (BASE … BASE+1+N, BASE+100, the agents' BASE+101 …
/// BASE+100+N) is free right now.
pub fn free_base(nodes: u16) -> u16 {
    let seed = std::process::id() as u64 * 7919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
    for i in 0..500u64 {
        // Steps of 200: one range never overlaps the next one's API port (BASE+100). All
        // below 32768, where Linux's ephemeral ports start: a node restarted on a port that
        // some client connection happened to take as its own (and left in TIME_WAIT) could
        // not listen there.
        let base = 20000 + ((seed + i * 131) % 63) as u16 * 200;
        let ports = (0..nodes + 2)
            .map(|p| base + p)
            .chain((0..=nodes).map(|p| base + 100 + p));
        if ports
            .into_iter()
            .all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            return base;
        }
    }
    panic!("no free port range found");
}

pub struct Cluster {
    pub dir: PathBuf,
    pub base: u16,
    /// Ports and paths, from the sandbox crate itself.
    pub layout: Layout,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Builds and starts a cluster of `nodes` nodes; panics (with the logs) if it cannot.
    pub fn up(nodes: u16) -> Cluster {
        Self::up_with(nodes, &[])
    }

    /// A cluster built with extra `pgwarden sandbox up` flags (`--synchronous`).
    pub fn up_with(nodes: u16, extra: &[&str]) -> Cluster {
        let tmp = temp_dir();
        let dir = tmp.path().join("sandbox");
        let mut last = String::new();
        for _attempt in 0..5 {
            let base = free_base(nodes);
            let out = pgwarden(&[
                "sandbox",
                "up",
                "--dir",
                dir.to_str().expect("utf-8 path"),
                "--nodes",
                &nodes.to_string(),
                "--port",
                &base.to_string(),
                "--no-fsync",
            ])
            .args(extra)
            .output()
            .expect("run pgwarden");
            if out.status.success() {
                return Cluster {
                    layout: Layout::new(&dir, nodes, base).expect("layout"),
                    dir,
                    base,
                    _tmp: tmp,
                };
            }
            last = format!("{}{}", stdout(&out), stderr(&out));
            // Another test may have taken a port between our check and the build: retry.
            if !last.contains("already in use") {
                break;
            }
        }
        panic!("sandbox up failed:\n{last}");
    }

    pub fn node_port(&self, id: u16) -> u16 {
        self.layout.node_port(id)
    }
    pub fn api_port(&self) -> u16 {
        self.layout.api_port()
    }
    pub fn config(&self) -> PathBuf {
        self.layout.config()
    }
    pub fn pgpass(&self) -> PathBuf {
        self.layout.pgpass()
    }
    pub fn data_dir(&self, id: u16) -> PathBuf {
        self.layout.data_dir(id)
    }

    /// `pgwarden ARGS` pointed at this cluster's configuration.
    pub fn pgwarden(&self, args: &[&str]) -> Output {
        pgwarden(args)
            .env("PGWARDEN_CONFIG", self.config())
            .output()
            .expect("run pgwarden")
    }

    /// `psql` on node `id` with the sandbox's password file.
    pub fn psql(&self, id: u16, db: &str, sql: &str) -> Result<String, String> {
        self.psql_at(self.node_port(id), db, sql)
    }

    /// `psql` through the proxy.
    pub fn psql_proxy(&self, db: &str, sql: &str) -> Result<String, String> {
        self.psql_at(self.proxy_port(), db, sql)
    }

    /// `psql` on any port of the sandbox: the trimmed output, or the error output.
    pub fn psql_at(&self, port: u16, db: &str, sql: &str) -> Result<String, String> {
        self.psql_env(port, db, &[sql], &[])
    }

    /// `psql_at` with several queries in one session (one `-c` each, one Query message each)
    /// and more environment (`PGCLIENTENCODING`, say).
    pub fn psql_env(
        &self,
        port: u16,
        db: &str,
        sqls: &[&str],
        env: &[(&str, &str)],
    ) -> Result<String, String> {
        let bin = PgBin::locate().expect("PostgreSQL programs");
        let mut cmd = pgwarden_sandbox::psql_command_at(&bin, &self.layout, port, db, sqls[0]);
        for sql in &sqls[1..] {
            cmd.args(["-c", sql]);
        }
        let out = cmd
            .envs(env.iter().copied())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(stdout(&out).trim().to_string())
        } else {
            Err(stderr(&out))
        }
    }

    pub fn proxy_port(&self) -> u16 {
        self.layout.proxy_port()
    }

    /// The superuser's password, from the sandbox's password file.
    pub fn password(&self) -> String {
        let text = std::fs::read_to_string(self.pgpass()).expect("pgpass");
        let line = text
            .lines()
            .find(|l| !l.starts_with('#'))
            .expect("a password line");
        line.rsplit(':').next().expect("password").to_string()
    }

    /// A tokio-postgres client through the proxy, its connection driven in the background.
    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        self.try_connect(self.proxy_port(), db)
            .await
            .expect("connect through the proxy")
    }

    /// A tokio-postgres client through the proxy as `user`, its connection driven in the
    /// background.
    pub async fn user_client(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.proxy_port())
            .user(user)
            .password(password)
            .dbname(db)
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect through the proxy");
        tokio::spawn(conn);
        client
    }

    /// A tokio-postgres client as the superuser on `port` (the proxy's or a node's).
    pub async fn try_connect(
        &self,
        port: u16,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(port)
            .user("postgres")
            .password(self.password())
            .dbname(db)
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Which node a port belongs to.
    pub fn node_of_port(&self, port: u16) -> u16 {
        (0..self.layout.nodes)
            .find(|i| self.node_port(*i) == port)
            .expect("a node port")
    }

    /// `pg_ctl ARGS -D dataN`, as the OS user PostgreSQL runs as.
    pub fn pg_ctl(&self, id: u16, args: &[&str]) {
        self.pg_ctl_dir(&self.data_dir(id), args)
    }

    /// `pg_ctl ARGS -D DIR`, as the OS user PostgreSQL runs as.
    pub fn pg_ctl_dir(&self, dir: &Path, args: &[&str]) {
        let bin = PgBin::locate().expect("PostgreSQL programs");
        let run_as = RunAs::detect().expect("OS user");
        let out = run_as
            .command(bin.program("pg_ctl"))
            .args(args)
            .arg("-D")
            .arg(dir)
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl {args:?} failed: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }

    /// Starts node `id` again after a test stopped it.
    pub fn start_node(&self, id: u16) {
        let log = self.layout.node_log(id);
        self.pg_ctl(
            id,
            &["start", "-w", "-l", log.to_str().expect("utf-8 path")],
        );
    }

    /// Stops the warden (SIGTERM) and starts it again with `sandbox up`, which reads the
    /// configuration file afresh.
    pub fn restart_warden(&self) {
        let pid = std::fs::read_to_string(self.layout.warden_pid()).expect("warden pid file");
        let pid = nix::unistd::Pid::from_raw(pid.trim().parse().expect("a pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM the warden");
        let start = Instant::now();
        while std::path::Path::new(&format!("/proc/{pid}")).exists()
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let o = pgwarden(&[
            "sandbox",
            "up",
            "--dir",
            self.dir.to_str().expect("utf-8 path"),
        ])
        .output()
        .expect("run pgwarden");
        assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    }

    /// Appends `text` (TOML sections) to the warden's configuration and restarts the warden.
    pub fn reconfigure(&self, text: &str) {
        let mut cfg = std::fs::read_to_string(self.config()).expect("config");
        cfg.push('\n');
        cfg.push_str(text);
        std::fs::write(self.config(), cfg).expect("write config");
        self.restart_warden();
    }

    /// GET /v1/nodes, straight from the API.
    pub fn nodes(&self) -> Value {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .expect("http client")
            .get(format!("http://127.0.0.1:{}/v1/nodes", self.api_port()))
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json())
            .expect("GET /v1/nodes")
    }

    /// GET /v1/status of node `id`'s agent, signed with the sandbox's secret.
    pub fn agent_status(&self, id: u16) -> Value {
        let secret =
            pgwarden_agent::read_secret(&self.layout.agent_secret()).expect("agent.secret");
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .expect("http client")
            .get(format!(
                "http://127.0.0.1:{}/v1/status",
                self.layout.agent_port(id)
            ))
            .header(
                "Authorization",
                pgwarden_agent::auth::authorization(&secret, ts, "GET", "/v1/status", b""),
            )
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json())
            .expect("GET /v1/status of the agent")
    }

    /// Polls the API until `pred` holds for node `id`; returns that node and how long it took.
    pub fn wait_node(
        &self,
        id: usize,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> (Value, Duration) {
        let start = Instant::now();
        loop {
            let nodes = self.nodes();
            if pred(&nodes[id]) {
                return (nodes[id].clone(), start.elapsed());
            }
            if start.elapsed() > limit {
                panic!(
                    "node {id}: {what} did not happen within {limit:?}; last seen: {:#}",
                    nodes[id]
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Pids of every process that belongs to this sandbox: the warden (its command line
    /// names the sandbox's config), the agents (theirs name a data dir) and PostgreSQL's
    /// (their working directory is a data dir).
    pub fn processes(&self) -> Vec<u32> {
        processes_under(&self.dir)
    }

    fn print_logs(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir.join("log")) else {
            return;
        };
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("----- {} (last 150 lines) -----", e.path().display());
            for l in &lines[lines.len().saturating_sub(150)..] {
                eprintln!("{l}");
            }
        }
    }
}

/// Gives the primary (node 0) weight 0 in the config: reads go to the standbys only (once
/// the warden is restarted, see `restart_with_proxy_settings`).
pub fn primary_weight_zero(c: &Cluster) {
    let cfg = std::fs::read_to_string(c.config()).unwrap().replace(
        "application_name = \"node0\"\n",
        "application_name = \"node0\"\nweight = 0\n",
    );
    std::fs::write(c.config(), cfg).unwrap();
}

/// Adds `settings` (TOML lines) to the sandbox's `[proxy]` table and restarts it with them.
pub fn restart_with_proxy_settings(c: &Cluster, settings: &str) {
    let cfg = std::fs::read_to_string(c.config())
        .unwrap()
        .replace("[proxy]\n", &format!("[proxy]\n{settings}"));
    std::fs::write(c.config(), cfg).unwrap();
    let dir = c.dir.to_str().unwrap();
    assert!(pgwarden(&["sandbox", "down", "--dir", dir])
        .output()
        .unwrap()
        .status
        .success());
    let out = pgwarden(&["sandbox", "up", "--dir", dir]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// PostgreSQL's processes of a data directory: their working directory is in it (a node's
/// agent names the directory on its command line but works elsewhere).
pub fn postgres_processes_under(dir: &Path) -> Vec<u32> {
    processes_under(dir)
        .into_iter()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .collect()
}

/// Waits until every process of node `id` is gone (after a kill, its backends exit on their
/// own shortly after the postmaster).
pub fn wait_gone(c: &Cluster, id: u16, postmaster: nix::unistd::Pid) {
    let start = Instant::now();
    let proc_dir = format!("/proc/{postmaster}");
    while !node_pids(c, id).is_empty() || std::path::Path::new(&proc_dir).exists() {
        if start.elapsed() > Duration::from_secs(5) && node_pids(c, id).is_empty() {
            // Only a zombie is left, waiting for its (re)parent to reap it: the server is
            // dead, its lock file stale.
            let _ = std::fs::remove_file(c.data_dir(id).join("postmaster.pid"));
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "node {id}'s processes linger"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn get(c: &Cluster, path: &str) -> Value {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .expect("http client")
        .get(format!("http://127.0.0.1:{}{path}", c.api_port()))
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json())
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

pub fn cluster_state(c: &Cluster) -> Value {
    get(c, "/v1/cluster")
}

pub fn events_text(c: &Cluster) -> String {
    get(c, "/v1/events")
        .as_array()
        .expect("events")
        .iter()
        .map(|e| format!("{} {}\n", e["kind"], e["message"]))
        .collect()
}

/// Polls the event history (up to 10 s) until an event says `needle`.
pub fn wait_event(c: &Cluster, needle: &str) {
    let start = Instant::now();
    loop {
        let ev = events_text(c);
        if ev.contains(needle) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no event says {needle:?}:\n{ev}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls until `pred` holds on GET /v1/cluster.
pub fn wait_cluster(
    c: &Cluster,
    limit: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let s = cluster_state(c);
        if pred(&s) {
            return s;
        }
        if start.elapsed() > limit {
            panic!(
                "{what} did not happen within {limit:?}; cluster: {s:#}\nevents:\n{}",
                events_text(c)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn postmaster_pid(c: &Cluster, id: u16) -> nix::unistd::Pid {
    let text = std::fs::read_to_string(c.data_dir(id).join("postmaster.pid")).expect("pid file");
    nix::unistd::Pid::from_raw(text.lines().next().unwrap().trim().parse().unwrap())
}

/// Every process of node `id`: the postmaster and its children.
pub fn node_pids(c: &Cluster, id: u16) -> Vec<nix::unistd::Pid> {
    postgres_processes_under(&c.data_dir(id))
        .into_iter()
        .map(|p| nix::unistd::Pid::from_raw(p as i32))
        .collect()
}

pub fn pcp(c: &Cluster, tool: &str, args: &[&str]) -> std::process::Output {
    let port = c.layout.pcp_port().to_string();
    Command::new(format!("/usr/sbin/{tool}"))
        .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-w"])
        .args(args)
        .env("PCPPASSFILE", c.dir.join("pcppass"))
        .output()
        .expect("run a pcp tool (Debian's pgpool2 package)")
}

pub fn processes_under(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cwd.starts_with(dir) || cmdline.contains(dir.to_str().unwrap_or("\u{0}")) {
            pids.push(pid);
        }
    }
    pids
}

/// Whether `pid` is a `pgwarden agent` (the sandbox runs one per node).
pub fn is_agent(pid: u32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.first().is_some_and(|a| a.ends_with(b"pgwarden")) && args.get(1) == Some(&&b"agent"[..])
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        if !self.dir.exists() {
            return;
        }
        let out = pgwarden(&[
            "sandbox",
            "down",
            "--dir",
            self.dir.to_str().unwrap_or(""),
            "--destroy",
        ])
        .output();
        let ok = out.as_ref().is_ok_and(|o| o.status.success());
        if !ok {
            // Last resort: nothing of ours may outlive the test.
            for pid in self.processes() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}
