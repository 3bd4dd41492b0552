//! `pgwarden sandbox`: a real cluster on one machine — one primary, N-1 streaming standbys
//! (each with its replication slot), the warden — every server on 127.0.0.1.
//!
//! The same code builds the quick-start sandbox and the clusters the end-to-end tests use.
//! Everything here is synchronous process management; waiting for the warden to answer is the
//! caller's business (it has the API client).
//!
//! A sandbox directory holds:
//! * `sandbox.toml` — what was built (node count, base port, PostgreSQL's bin directory);
//! * `pgwarden.toml` — the warden's configuration; `pgpass` — the superuser's password (0600);
//! * `data0` … — the nodes' data directories; `log/` — one log per node, per agent and the
//!   warden's;
//! * `warden.pid` — the warden started in the background; `run/agentN.pid` — node N's agent
//!   (`pgwarden agent`, run as the database's OS user), `agent.secret` — the secret the warden
//!   and the agents share; `bin/pgwarden` — a copy of the executable, only when the database
//!   user cannot run the original where it is.

pub mod layout;
pub mod pg;

pub use layout::Layout;
pub use pg::{PgBin, RunAs};

use md5::Digest;
use pgwarden_core::passfile;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "PostgreSQL's server programs ({}) were not found; looked in {looked_in}.\n\
         Install them: `sudo apt-get install postgresql-15` on Debian 12 (or `./dev/quickstart`), \
         or set PGWARDEN_PG_BIN to the directory that holds them",
        pg::PROGRAMS.join(", ")
    )]
    PgNotFound { looked_in: String },
    #[error(
        "running as root, but there is no `postgres` OS user to run PostgreSQL as (PostgreSQL \
         refuses to run as root). Install PostgreSQL from Debian (`apt-get install postgresql-15` \
         creates the user) or run as an ordinary user"
    )]
    NoPostgresUser,
    #[error("port {port} ({what}) is already in use on 127.0.0.1; stop what holds it or choose another base port with --port")]
    PortInUse { port: u16, what: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: cannot {action} it: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("{what} failed ({status}): {command}\n{output}")]
    Command {
        what: String,
        command: String,
        status: String,
        output: String,
    },
    #[error("the warden did not stay up; the end of {log}:\n{tail}")]
    WardenDied { log: PathBuf, tail: String },
    #[error("the agent of node {id} did not stay up; the end of {log}:\n{tail}")]
    AgentDied { id: u16, log: PathBuf, tail: String },
}

impl SandboxError {
    pub(crate) fn io(path: &Path, action: &'static str, source: std::io::Error) -> Self {
        SandboxError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }
}

type Result<T> = std::result::Result<T, SandboxError>;

/// What `sandbox.toml` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub nodes: u16,
    pub base_port: u16,
    pub pg_bin: PathBuf,
    /// False while the first build runs; a sandbox whose build failed half-way is still one
    /// `down --destroy` can remove.
    pub complete: bool,
}

/// How to bring a sandbox up.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub dir: PathBuf,
    /// `None`: what the sandbox was built with, or the default for a new one.
    pub nodes: Option<u16>,
    pub base_port: Option<u16>,
    /// The `pgwarden` executable to run as the warden (`pgwarden serve`) and as the nodes'
    /// agents (`pgwarden agent`).
    pub warden_exe: PathBuf,
    /// `fsync = off` in the nodes: for throw-away test clusters only.
    pub fsync: bool,
    /// `failover.synchronous = true` in a new sandbox's configuration.
    pub synchronous: bool,
}

/// What `up` did.
#[derive(Debug, Clone)]
pub struct Started {
    pub layout: Layout,
    pub built: bool,
    pub warden_pid: u32,
    /// Each node's agent: node id and pid.
    pub agent_pids: Vec<(u16, u32)>,
    pub pg_bin: PathBuf,
    pub run_as: RunAs,
}

/// Reads `DIR/sandbox.toml`.
pub fn read_meta(dir: &Path) -> Result<Option<Meta>> {
    let path = layout::meta_path(dir);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SandboxError::io(&path, "read", e)),
    };
    toml::from_str(&text).map(Some).map_err(|e| {
        SandboxError::Invalid(format!(
            "{}: not a sandbox description: {e}",
            path.display()
        ))
    })
}

/// The layout of an existing sandbox.
pub fn open(dir: &Path) -> Result<(Layout, Meta)> {
    let meta = read_meta(dir)?.ok_or_else(|| {
        SandboxError::Invalid(format!(
            "{} is not a pgwarden sandbox (it has no sandbox.toml); `pgwarden sandbox up --dir {}` builds one",
            dir.display(),
            dir.display()
        ))
    })?;
    let layout = Layout::new(dir, meta.nodes, meta.base_port).map_err(SandboxError::Invalid)?;
    Ok((layout, meta))
}

/// Builds the sandbox the first time, restarts whatever of it is stopped later.
pub fn up(opts: &UpOptions) -> Result<Started> {
    let run_as = RunAs::detect()?;
    let existing = read_meta(&opts.dir)?;
    match existing {
        Some(meta) if meta.complete => restart(opts, meta, run_as),
        Some(_) => Err(SandboxError::Invalid(format!(
            "{} holds a sandbox whose first build did not finish; remove it with `pgwarden sandbox down --dir {} --destroy` and try again",
            opts.dir.display(),
            opts.dir.display()
        ))),
        None => build(opts, run_as),
    }
}

fn restart(opts: &UpOptions, meta: Meta, run_as: RunAs) -> Result<Started> {
    for (given, stored, what) in [
        (opts.nodes, meta.nodes, "--nodes"),
        (opts.base_port, meta.base_port, "--port"),
    ] {
        if let Some(g) = given {
            if g != stored {
                return Err(SandboxError::Invalid(format!(
                    "the sandbox in {} was built with {what} {stored}; leave {what} out to restart it, or remove it first with `pgwarden sandbox down --dir {} --destroy`",
                    opts.dir.display(),
                    opts.dir.display()
                )));
            }
        }
    }
    let layout =
        Layout::new(&opts.dir, meta.nodes, meta.base_port).map_err(SandboxError::Invalid)?;
    let bin = PgBin {
        dir: meta.pg_bin.clone(),
    };
    if let Some(m) = pg::PROGRAMS.iter().find(|p| !bin.program(p).is_file()) {
        return Err(SandboxError::PgNotFound {
            looked_in: format!(
                "{} (recorded in {}; missing {m})",
                bin.dir.display(),
                layout.meta().display()
            ),
        });
    }
    let warden_running = warden_pid(&layout).is_some();
    // Check every port that is about to be taken before starting anything.
    let mut to_check = Vec::new();
    for id in layout.node_ids() {
        if !node_running(&bin, &layout, id, run_as) {
            to_check.push((layout.node_port(id), format!("PostgreSQL node {id}")));
        }
        if agent_pid(&layout, id).is_none() {
            to_check.push((layout.agent_port(id), format!("the agent of node {id}")));
        }
    }
    if !warden_running {
        to_check.push((layout.api_port(), "the HTTP API".into()));
        to_check.push((layout.proxy_port(), "the proxy".into()));
        to_check.push((layout.pcp_port(), "PCP (reserved)".into()));
    }
    check_ports_free(&to_check)?;
    for id in layout.node_ids() {
        if !node_running(&bin, &layout, id, run_as) {
            start_node(&bin, &layout, id, run_as)?;
        }
    }
    let agent_pids = start_agents(&layout, &bin, &opts.warden_exe, run_as)?;
    let warden_pid = match warden_pid(&layout) {
        Some(pid) => pid,
        None => start_warden(&layout, &opts.warden_exe)?,
    };
    Ok(Started {
        layout,
        built: false,
        warden_pid,
        agent_pids,
        pg_bin: bin.dir,
        run_as,
    })
}

fn build(opts: &UpOptions, run_as: RunAs) -> Result<Started> {
    let nodes = opts.nodes.unwrap_or(layout::DEFAULT_NODES);
    let base = opts.base_port.unwrap_or(layout::DEFAULT_BASE_PORT);
    let layout = Layout::new(&opts.dir, nodes, base).map_err(SandboxError::Invalid)?;
    let bin = PgBin::locate()?;
    check_ports_free(&layout.ports())?;

    let created_dir = match fs::read_dir(&opts.dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(SandboxError::Invalid(format!(
                    "{} exists, is not empty and is not a pgwarden sandbox; choose a new or empty directory",
                    opts.dir.display()
                )));
            }
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(&opts.dir).map_err(|e| SandboxError::io(&opts.dir, "create", e))?;
            true
        }
        Err(e) => return Err(SandboxError::io(&opts.dir, "read", e)),
    };

    let result = build_in(&layout, &bin, run_as, opts);
    match result {
        Ok((pid, agent_pids)) => Ok(Started {
            layout,
            built: true,
            warden_pid: pid,
            agent_pids,
            pg_bin: bin.dir,
            run_as,
        }),
        Err(e) => {
            // Leave nothing behind: stop what started, remove what was written.
            let _ = stop_all(&layout, Some(&bin), run_as);
            if created_dir {
                let _ = fs::remove_dir_all(&layout.dir);
            } else if let Ok(entries) = fs::read_dir(&layout.dir) {
                for entry in entries.flatten() {
                    let p = entry.path();
                    let _ = if p.is_dir() {
                        fs::remove_dir_all(&p)
                    } else {
                        fs::remove_file(&p)
                    };
                }
            }
            Err(e)
        }
    }
}

fn build_in(
    layout: &Layout,
    bin: &PgBin,
    run_as: RunAs,
    opts: &UpOptions,
) -> Result<(u32, Vec<(u16, u32)>)> {
    let dir = &layout.dir;
    run_as.own(dir)?;
    check_reachable(dir, run_as)?;
    write_meta(layout, bin, false)?;
    create_dir(&layout.log_dir(), run_as)?;

    let password = generate_password();
    let pgpass = format!(
        "# host:port:database:user:password — libpq's password file (PGPASSFILE)\n\
         127.0.0.1:*:*:postgres:{pw}\nlocalhost:*:*:postgres:{pw}\n",
        pw = passfile::escape(&password)
    );
    write_file(&layout.pgpass(), &pgpass, 0o600, run_as)?;
    // The agents' shared secret: theirs (they run as the database user and refuse a file
    // others can read); the warden runs as root or as that same user, and reads it too.
    write_file(&layout.agent_secret(), &generate_secret(), 0o600, run_as)?;
    // pgpool's PCP files: pcp.conf for the warden (user:md5 of the password), pcppass for the
    // stock pcp_* tools (PCPPASSFILE=DIR/pcppass pcp_node_info -h 127.0.0.1 -p BASE+1 -U postgres -w).
    let pcp_conf = format!(
        "# pgpool's pcp.conf format: user:md5(password)\npostgres:{:x}\n",
        md5::Md5::digest(password.as_bytes())
    );
    write_file(&layout.pcp_conf(), &pcp_conf, 0o600, RunAs::Current)?;
    let pcppass = format!(
        "127.0.0.1:{port}:postgres:{password}\nlocalhost:{port}:postgres:{password}\n",
        port = layout.pcp_port()
    );
    write_file(&layout.pcppass(), &pcppass, 0o600, RunAs::Current)?;
    let pwfile = dir.join(".initdb-password");
    write_file(&pwfile, &format!("{password}\n"), 0o600, run_as)?;

    // The primary.
    let data0 = layout.data_dir(0);
    let mut initdb = run_as.command(bin.program("initdb"));
    initdb
        .arg("-D")
        .arg(&data0)
        .args([
            "-U",
            "postgres",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--data-checksums",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .current_dir(dir);
    if !opts.fsync {
        initdb.arg("--no-sync");
    }
    run(initdb, "initdb of node 0")?;
    let _ = fs::remove_file(&pwfile);
    append_file(&data0.join("postgresql.conf"), &server_settings(opts.fsync))?;
    write_file(&data0.join("pg_hba.conf"), HBA, 0o600, run_as)?;
    write_node_conf(layout, 0, run_as)?;
    start_node(bin, layout, 0, run_as)?;
    psql(bin, layout, 0, "CREATE DATABASE test")?;

    // The standbys, each from a base backup of the primary with its own replication slot.
    for id in layout.node_ids().skip(1) {
        let data = layout.data_dir(id);
        let mut bb = run_as.command(bin.program("pg_basebackup"));
        bb.args(["-h", "127.0.0.1", "-p"])
            .arg(layout.node_port(0).to_string())
            .args([
                "-U",
                "postgres",
                "-X",
                "stream",
                "--checkpoint=fast",
                "-C",
                "-S",
            ])
            .arg(Layout::slot_name(id))
            .arg("-D")
            .arg(&data)
            .env("PGPASSFILE", layout.pgpass())
            .current_dir(dir);
        if !opts.fsync {
            bb.arg("--no-sync");
        }
        run(bb, &format!("pg_basebackup of node {id} from node 0"))?;
        write_node_conf(layout, id, run_as)?;
        write_file(&data.join("standby.signal"), "", 0o600, run_as)?;
        append_file(
            &data.join("postgresql.auto.conf"),
            &standby_settings(layout, id, 0),
        )?;
        start_node(bin, layout, id, run_as)?;
    }

    let agent_pids = start_agents(layout, bin, &opts.warden_exe, run_as)?;
    write_file(
        &layout.config(),
        &warden_config(layout, opts.synchronous),
        0o644,
        RunAs::Current,
    )?;
    let pid = start_warden(layout, &opts.warden_exe)?;
    write_meta(layout, bin, true)?;
    Ok((pid, agent_pids))
}

const HBA: &str = "\
# pgwarden sandbox: password (SCRAM) authentication for everyone, loopback only.
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  scram-sha-256
host    all          all   127.0.0.1/32   scram-sha-256
host    all          all   ::1/128        scram-sha-256
host    replication  all   127.0.0.1/32   scram-sha-256
host    replication  all   ::1/128        scram-sha-256
";

fn server_settings(fsync: bool) -> String {
    format!(
        "\n# --- pgwarden sandbox ---\n\
         listen_addresses = '127.0.0.1'\n\
         unix_socket_directories = ''\n\
         password_encryption = 'scram-sha-256'\n\
         wal_level = replica\n\
         max_wal_senders = 10\n\
         max_replication_slots = 10\n\
         wal_keep_size = '128MB'\n\
         wal_log_hints = on\n\
         hot_standby = on\n\
         hot_standby_feedback = on\n\
         logging_collector = off\n\
         log_line_prefix = '%m [%p] %q%a '\n\
         fsync = {}\n\
         # Per-node settings (port, cluster_name) live in this file:\n\
         include_if_exists = 'pgwarden.node.conf'\n",
        if fsync { "on" } else { "off" }
    )
}

fn write_node_conf(layout: &Layout, id: u16, run_as: RunAs) -> Result<()> {
    let text = format!(
        "# Written by pgwarden sandbox for node {id}.\nport = {}\ncluster_name = 'node{id}'\n",
        layout.node_port(id)
    );
    write_file(
        &layout.data_dir(id).join("pgwarden.node.conf"),
        &text,
        0o600,
        run_as,
    )
}

/// A conninfo value in single quotes, escaped for conninfo and then for the GUC string.
fn standby_settings(layout: &Layout, id: u16, upstream: u16) -> String {
    let passfile = layout
        .pgpass()
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('\'', "\\'");
    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres passfile='{passfile}' application_name=node{id}",
        layout.node_port(upstream)
    );
    format!(
        "# pgwarden sandbox: stream from node {upstream}\n\
         primary_conninfo = '{}'\n\
         primary_slot_name = '{}'\n\
         recovery_target_timeline = 'latest'\n",
        conninfo.replace('\'', "''"),
        Layout::slot_name(id)
    )
}

fn warden_config(layout: &Layout, synchronous: bool) -> String {
    let mut s = format!(
        "# pgwarden configuration, written by `pgwarden sandbox up`.\n\
         # See pgwarden.example.toml in the source tree for every key.\n\n\
         [listen]\n\
         proxy = \"127.0.0.1:{}\"\n\
         pcp = \"127.0.0.1:{}\"\n\
         api = \"127.0.0.1:{}\"\n\n\
         [credentials]\n\
         user = \"postgres\"\n\
         password_file = \"pgpass\"\n\n\
         # Quick checks: a stopped node shows as down within about two seconds, a hung one within\n\
         # about five (two attempts of connect_timeout and the retry delay).\n\
         [health_check]\n\
         period = \"1s\"\n\
         timeout = \"3s\"\n\
         max_retries = 1\n\
         retry_delay = \"500ms\"\n\
         connect_timeout = \"1500ms\"\n\n\
         # The front door: connect to the proxy port as to PostgreSQL.\n\
         [proxy]\n\
         auth_timeout = \"5s\"\n\n\
         # Failover: automatic; the state (node status, primary, generation) is kept in\n\
         # pgwarden.state beside this file.\n\
         [failover]\n\
         auto = true\n\
         synchronous = {synchronous}\n\
         follow_timeout = \"30s\"\n\n\
         # The PCP port for pgpool's pcp_* tools: PCPPASSFILE=pcppass, user postgres.\n\
         [pcp]\n\
         users_file = \"pcp.conf\"\n\n\
         # Each node's agent (`pgwarden agent`, see log/agentN.log) signs with this secret.\n\
         [agent]\n\
         secret_file = \"agent.secret\"\n",
        layout.proxy_port(),
        layout.pcp_port(),
        layout.api_port()
    );
    for id in layout.node_ids() {
        s.push_str(&format!(
            "\n[[backend]]\nid = {id}\nhost = \"127.0.0.1\"\nport = {}\ndata_dir = \"data{id}\"\napplication_name = \"node{id}\"\nagent = \"127.0.0.1:{}\"\n",
            layout.node_port(id),
            layout.agent_port(id)
        ));
    }
    s
}

fn write_meta(layout: &Layout, bin: &PgBin, complete: bool) -> Result<()> {
    let meta = Meta {
        nodes: layout.nodes,
        base_port: layout.base_port,
        pg_bin: bin.dir.clone(),
        complete,
    };
    let text = toml::to_string(&meta).map_err(|e| SandboxError::Invalid(e.to_string()))?;
    write_file(
        &layout.meta(),
        &format!("# What `pgwarden sandbox up` built here.\n{text}"),
        0o644,
        RunAs::Current,
    )
}

/// 32 random bytes, in hex.
fn generate_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}\n")
}

fn generate_password() -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// Fails naming the first port some other process holds.
pub fn check_ports_free(ports: &[(u16, String)]) -> Result<()> {
    for (port, what) in ports {
        if TcpListener::bind(("127.0.0.1", *port)).is_err() {
            return Err(SandboxError::PortInUse {
                port: *port,
                what: what.clone(),
            });
        }
    }
    Ok(())
}

/// As root, PostgreSQL runs as `postgres`, which must reach the directory.
fn check_reachable(dir: &Path, run_as: RunAs) -> Result<()> {
    if run_as == RunAs::Current {
        return Ok(());
    }
    let ok = run_as
        .command("test")
        .arg("-w")
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(SandboxError::Invalid(format!(
            "{}: the postgres OS user cannot write here (a parent directory is closed to it). PostgreSQL runs as `postgres` when pgwarden runs as root; choose a directory it can reach, such as one under /tmp or /srv, or run as an ordinary user",
            dir.display()
        )))
    }
}

fn create_dir(path: &Path, run_as: RunAs) -> Result<()> {
    fs::create_dir_all(path).map_err(|e| SandboxError::io(path, "create", e))?;
    run_as.own(path)
}

fn write_file(path: &Path, text: &str, mode: u32, run_as: RunAs) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| SandboxError::io(path, "write", e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| SandboxError::io(path, "write", e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| SandboxError::io(path, "set the mode of", e))?;
    run_as.own(path)
}

fn append_file(path: &Path, text: &str) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| SandboxError::io(path, "append to", e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| SandboxError::io(path, "append to", e))
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn tail_file(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => tail(&String::from_utf8_lossy(&bytes), n),
        Err(e) => format!("({} cannot be read: {e})", path.display()),
    }
}

fn run(mut cmd: Command, what: &str) -> Result<String> {
    let command = describe(&cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| SandboxError::Command {
            what: what.into(),
            command: command.clone(),
            status: "could not start".into(),
            output: e.to_string(),
        })?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(SandboxError::Command {
            what: what.into(),
            command,
            status: out.status.to_string(),
            output: tail(&text, 20),
        })
    }
}

/// `psql` on node `id` as the sandbox's superuser, unaligned, tuples only, stopping at the
/// first error.
pub fn psql_command(bin: &PgBin, layout: &Layout, id: u16, db: &str, sql: &str) -> Command {
    psql_command_at(bin, layout, layout.node_port(id), db, sql)
}

/// `psql` as the sandbox's superuser on any port of the sandbox (the proxy's, say).
pub fn psql_command_at(bin: &PgBin, layout: &Layout, port: u16, db: &str, sql: &str) -> Command {
    let mut cmd = Command::new(bin.program("psql"));
    cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db, "-p"])
        .arg(port.to_string())
        .arg("-c")
        .arg(sql)
        .env("PGPASSFILE", layout.pgpass())
        .env("PGCONNECT_TIMEOUT", "10");
    cmd
}

fn psql(bin: &PgBin, layout: &Layout, id: u16, sql: &str) -> Result<String> {
    run(
        psql_command(bin, layout, id, "postgres", sql),
        &format!("`{sql}` on node {id}"),
    )
}

/// Whether node `id`'s postmaster runs (`pg_ctl status`).
pub fn node_running(bin: &PgBin, layout: &Layout, id: u16, run_as: RunAs) -> bool {
    let data = layout.data_dir(id);
    if !data.join("postmaster.pid").exists() {
        return false;
    }
    run_as
        .command(bin.program("pg_ctl"))
        .arg("status")
        .arg("-D")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn start_node(bin: &PgBin, layout: &Layout, id: u16, run_as: RunAs) -> Result<()> {
    let log = layout.node_log(id);
    let mut cmd = run_as.command(bin.program("pg_ctl"));
    cmd.arg("start")
        .arg("-D")
        .arg(layout.data_dir(id))
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", "60"])
        .current_dir(&layout.dir);
    run(cmd, &format!("starting node {id}")).map_err(|e| match e {
        SandboxError::Command {
            what,
            command,
            status,
            output,
        } => SandboxError::Command {
            what,
            command,
            status,
            output: format!(
                "{output}\nthe end of {}:\n{}",
                log.display(),
                tail_file(&log, 15)
            ),
        },
        other => other,
    })?;
    Ok(())
}

/// Stops node `id` (fast shutdown; immediate if that does not finish).
pub fn stop_node(bin: &PgBin, layout: &Layout, id: u16, run_as: RunAs) -> Result<()> {
    let data = layout.data_dir(id);
    let mut cmd = run_as.command(bin.program("pg_ctl"));
    cmd.arg("stop")
        .arg("-D")
        .arg(&data)
        .args(["-m", "fast", "-w", "-t", "30"]);
    if run(cmd, &format!("stopping node {id}")).is_ok() {
        return Ok(());
    }
    let mut cmd = run_as.command(bin.program("pg_ctl"));
    cmd.arg("stop")
        .arg("-D")
        .arg(&data)
        .args(["-m", "immediate", "-w", "-t", "30"]);
    run(cmd, &format!("stopping node {id} (immediate)")).map(|_| ())
}

/// Whether process `pid` exists and has not exited (a zombie has).
pub fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: "pid (comm) S …".
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The warden's pid, if the warden this sandbox started still runs.
pub fn warden_pid(layout: &Layout) -> Option<u32> {
    let pid: u32 = fs::read_to_string(layout.warden_pid())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let config = layout.config();
    let cmdline = String::from_utf8_lossy(&cmdline);
    // Guard against a recycled pid: it must be our warden, with our config.
    let ours = cmdline.split('\0').any(|a| a == "serve")
        && cmdline.split('\0').any(|a| Path::new(a) == config);
    ours.then_some(pid)
}

fn start_warden(layout: &Layout, exe: &Path) -> Result<u32> {
    let log_path = layout.warden_log();
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| SandboxError::io(&log_path, "open", e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| SandboxError::io(&log_path, "open", e))?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg("--config")
        .arg(layout.config())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .current_dir(&layout.dir);
    {
        use std::os::unix::process::CommandExt;
        // Its own process group: a Ctrl-C in the terminal that ran `sandbox up` leaves it be.
        cmd.process_group(0);
    }
    let child = cmd.spawn().map_err(|e| SandboxError::Command {
        what: "starting the warden".into(),
        command: describe(&cmd),
        status: "could not start".into(),
        output: e.to_string(),
    })?;
    let pid = child.id();
    write_file(
        &layout.warden_pid(),
        &format!("{pid}\n"),
        0o644,
        RunAs::Current,
    )?;
    // The child is reaped by whoever outlives it; `sandbox down` stops it by pid.
    std::mem::forget(child);
    Ok(pid)
}

/// Node `id`'s agent's pid, if the agent this sandbox started still runs.
pub fn agent_pid(layout: &Layout, id: u16) -> Option<u32> {
    let pid: u32 = fs::read_to_string(layout.agent_pid(id))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    let data = layout.data_dir(id);
    // Guard against a recycled pid: it must be an agent, for this node's data directory.
    let ours = cmdline.split('\0').any(|a| a == "agent")
        && cmdline.split('\0').any(|a| Path::new(a) == data);
    (ours && process_alive(pid)).then_some(pid)
}

/// Starts the agent of every node that has none running; every node's agent pid.
pub fn start_agents(
    layout: &Layout,
    bin: &PgBin,
    exe: &Path,
    run_as: RunAs,
) -> Result<Vec<(u16, u32)>> {
    let mut exe_for_agents: Option<PathBuf> = None;
    let mut pids = Vec::new();
    for id in layout.node_ids() {
        let pid = match agent_pid(layout, id) {
            Some(pid) => pid,
            None => {
                let exe = match &exe_for_agents {
                    Some(e) => e.clone(),
                    None => {
                        let e = agent_exe(layout, exe, run_as)?;
                        exe_for_agents = Some(e.clone());
                        e
                    }
                };
                start_agent(layout, bin, id, &exe, run_as)?
            }
        };
        pids.push((id, pid));
    }
    Ok(pids)
}

/// The executable the agents run: `exe`, or a copy in DIR/bin when the database user cannot
/// run `exe` where it is (a parent directory closed to it).
fn agent_exe(layout: &Layout, exe: &Path, run_as: RunAs) -> Result<PathBuf> {
    if run_as == RunAs::Current {
        return Ok(exe.to_path_buf());
    }
    let runnable = run_as
        .command("test")
        .arg("-x")
        .arg(exe)
        .status()
        .is_ok_and(|s| s.success());
    if runnable {
        return Ok(exe.to_path_buf());
    }
    let dir = layout.bin_dir();
    fs::create_dir_all(&dir).map_err(|e| SandboxError::io(&dir, "create", e))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
        .map_err(|e| SandboxError::io(&dir, "set the mode of", e))?;
    let copy = dir.join("pgwarden");
    // Copied beside and renamed over: an agent may still run the previous copy.
    let tmp = dir.join(".pgwarden.tmp");
    fs::copy(exe, &tmp)
        .map_err(|e| SandboxError::io(&tmp, "copy the pgwarden executable to", e))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
        .map_err(|e| SandboxError::io(&tmp, "set the mode of", e))?;
    fs::rename(&tmp, &copy).map_err(|e| SandboxError::io(&copy, "write", e))?;
    Ok(copy)
}

fn start_agent(layout: &Layout, bin: &PgBin, id: u16, exe: &Path, run_as: RunAs) -> Result<u32> {
    let log_path = layout.agent_log(id);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| SandboxError::io(&log_path, "open", e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| SandboxError::io(&log_path, "open", e))?;
    let mut cmd = run_as.command(exe);
    cmd.arg("agent")
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", layout.agent_port(id)))
        .arg("--data-dir")
        .arg(layout.data_dir(id))
        .arg("--pg-port")
        .arg(layout.node_port(id).to_string())
        .arg("--secret-file")
        .arg(layout.agent_secret())
        .arg("--pg-bin")
        .arg(&bin.dir)
        .arg("--passfile")
        .arg(layout.pgpass())
        .arg("--log-file")
        .arg(layout.node_log(id));
    // The defaults, and the node's own port and name (the sandbox's per-node file).
    for keep in [
        "postgresql.conf",
        "pg_hba.conf",
        "pg_ident.conf",
        "pgwarden.node.conf",
    ] {
        cmd.arg("--keep").arg(keep);
    }
    cmd.env_remove("PGWARDEN_AGENT_KEEP")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .current_dir(&layout.dir);
    {
        use std::os::unix::process::CommandExt;
        // Its own process group, as the warden: a Ctrl-C of `sandbox up` leaves it be.
        cmd.process_group(0);
    }
    let child = cmd.spawn().map_err(|e| SandboxError::Command {
        what: format!("starting the agent of node {id}"),
        command: describe(&cmd),
        status: "could not start".into(),
        output: e.to_string(),
    })?;
    let pid = child.id();
    create_dir(&layout.run_dir(), RunAs::Current)?;
    write_file(
        &layout.agent_pid(id),
        &format!("{pid}\n"),
        0o644,
        RunAs::Current,
    )?;
    // Reaped by whoever outlives it; `sandbox down` stops it by pid.
    std::mem::forget(child);
    Ok(pid)
}

fn stop_agent(layout: &Layout, id: u16) {
    if let Some(pid) = agent_pid(layout, id) {
        stop_pid(pid);
    }
    let _ = fs::remove_file(layout.agent_pid(id));
}

/// SIGTERM, then SIGKILL if it has not gone within 10 s.
fn stop_pid(pid: u32) {
    let npid = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(npid, nix::sys::signal::Signal::SIGTERM);
    if !wait_gone(pid, Duration::from_secs(10)) {
        let _ = nix::sys::signal::kill(npid, nix::sys::signal::Signal::SIGKILL);
        wait_gone(pid, Duration::from_secs(5));
    }
}

/// Waits until `pid` is gone; true if it went within `limit`.
fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let npid = nix::unistd::Pid::from_raw(pid as i32);
    loop {
        // Reap it if it is our child (it is when `up` and `down` run in one process).
        let _ = nix::sys::wait::waitpid(npid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        if nix::sys::signal::kill(npid, None).is_err() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop_warden(layout: &Layout) {
    if let Some(pid) = warden_pid(layout) {
        stop_pid(pid);
    }
    let _ = fs::remove_file(layout.warden_pid());
}

fn stop_all(layout: &Layout, bin: Option<&PgBin>, run_as: RunAs) -> Vec<SandboxError> {
    // The warden first (it would react to what follows), then the agents (so none acts on a
    // node being stopped), then the nodes.
    stop_warden(layout);
    for id in layout.node_ids() {
        stop_agent(layout, id);
    }
    let mut errors = Vec::new();
    if let Some(bin) = bin {
        for id in layout.node_ids() {
            if node_running(bin, layout, id, run_as) {
                if let Err(e) = stop_node(bin, layout, id, run_as) {
                    errors.push(e);
                }
            }
        }
    }
    errors
}

/// What `down` did.
#[derive(Debug, Clone, Default)]
pub struct Stopped {
    pub destroyed: bool,
}

/// Stops the warden and every node; with `destroy`, removes the directory too.
pub fn down(dir: &Path, destroy: bool) -> Result<Stopped> {
    let (layout, meta) = open(dir)?;
    let run_as = RunAs::detect()?;
    let bin = PgBin { dir: meta.pg_bin };
    let errors = stop_all(&layout, Some(&bin), run_as);
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    if destroy {
        fs::remove_dir_all(dir).map_err(|e| SandboxError::io(dir, "remove", e))?;
    }
    Ok(Stopped { destroyed: destroy })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_conninfo_is_quoted_twice() {
        let l = Layout::new(Path::new("/tmp/it's here"), 2, 11000).unwrap();
        let s = standby_settings(&l, 1, 0);
        assert!(
            s.contains("primary_conninfo = 'host=127.0.0.1 port=11002 user=postgres passfile=''/tmp/it\\''s here/pgpass'' application_name=node1'"),
            "{s}"
        );
        assert!(s.contains("primary_slot_name = 'node1'"));
    }

    #[test]
    fn written_config_is_valid() {
        let l = Layout::new(Path::new("/tmp/sb"), 3, 11000).unwrap();
        let cfg = pgwarden_core::config::parse(&warden_config(&l, true), &l.config()).unwrap();
        assert_eq!(cfg.backends.len(), 3);
        assert_eq!(cfg.listen.api.port(), 11100);
        assert_eq!(cfg.backends[2].port, 11004);
        assert_eq!(cfg.backends[2].data_dir, Path::new("/tmp/sb/data2"));
        assert_eq!(cfg.credentials.password_file, Path::new("/tmp/sb/pgpass"));
        assert_eq!(
            cfg.agent.secret_file.as_deref(),
            Some(Path::new("/tmp/sb/agent.secret"))
        );
        assert_eq!(cfg.backends[1].agent.as_deref(), Some("127.0.0.1:11102"));
    }

    #[test]
    fn taken_port_is_named() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let err = check_ports_free(&[(port, "PostgreSQL node 1".into())]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("port {port} (PostgreSQL node 1) is already in use on 127.0.0.1; stop what holds it or choose another base port with --port")
        );
    }

    #[test]
    fn not_a_sandbox() {
        let d = tempfile::tempdir().unwrap();
        let err = open(d.path()).unwrap_err().to_string();
        assert!(err.contains("is not a pgwarden sandbox"), "{err}");
    }

    #[test]
    fn process_alive_sees_zombies_as_dead() {
        assert!(process_alive(std::process::id()));
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Exited but not reaped: a zombie.
        let deadline = Instant::now() + Duration::from_secs(5);
        while process_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!process_alive(pid));
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
