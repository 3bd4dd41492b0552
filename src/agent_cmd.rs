//! `pgwarden agent`: the node agent on a database host. The checks a newcomer's mistakes run
//! into (root, the secret file, the data directory, the programs, the port) are made before
//! anything listens, each with a message that says what to do, and exit 2.

use clap::Args;
use pgwarden_agent::AgentConfig;
use pgwarden_sandbox::{PgBin, RunAs};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

/// The programs the agent runs.
const PROGRAMS: [&str; 5] = [
    "pg_ctl",
    "pg_controldata",
    "pg_rewind",
    "pg_basebackup",
    "psql",
];

#[derive(Args, Debug)]
#[command(
    long_about = "Run the node agent: the warden's hands on this database host.\n\n\
        The warden (`pgwarden serve`) asks the agent, over HTTP, to do what must happen on the \
        host itself: report the server's state (pg_ctl status, pg_controldata), stop and start \
        it, turn it into a standby of the current primary, rebuild it with pg_rewind or \
        pg_basebackup, and run pgpool's recovery scripts. Run one agent per PostgreSQL server, \
        beside it.\n\n\
        Run it as the OS user that owns the data directory (usually `postgres`): PostgreSQL's \
        tools refuse to run as root, and so does the agent. For example:\n  \
        sudo -u postgres pgwarden agent --listen 10.0.0.11:9901 \\\n    \
        --data-dir /var/lib/postgresql/15/main --pg-port 5432 \\\n    \
        --secret-file /etc/pgwarden/agent.secret --passfile /var/lib/postgresql/.pgpass\n\n\
        Every request must be signed with the shared secret in --secret-file (the warden's \
        [agent] secret_file is the same file); unsigned or wrongly signed requests are refused \
        and logged with the peer's address. The secret file must be readable by its owner \
        only (chmod 600) and hold at least 16 bytes, e.g. `openssl rand -hex 32`.\n\n\
        Each flag can also be given in the environment variable shown with it.",
    after_help = "Exit codes: 2 when it cannot start (root, secret file, data directory, \
        PostgreSQL programs, port); 1 when it fails later."
)]
pub struct AgentArgs {
    /// The address to listen on, HOST:PORT. Reachable by the warden only: the signature
    /// protects the requests, not their confidentiality.
    #[arg(long, env = "PGWARDEN_AGENT_LISTEN", value_name = "HOST:PORT")]
    listen: String,
    /// The PostgreSQL data directory this agent controls. It need not exist yet (a base
    /// backup creates it), but its parent must, writable by this user.
    #[arg(long, env = "PGWARDEN_AGENT_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
    /// The port this PostgreSQL server listens on; written into its standby settings.
    #[arg(long, env = "PGWARDEN_AGENT_PG_PORT", value_name = "N")]
    pg_port: u16,
    /// The shared secret requests are signed with (mode 0600, at least 16 bytes).
    #[arg(long, env = "PGWARDEN_AGENT_SECRET_FILE", value_name = "FILE")]
    secret_file: PathBuf,
    /// The directory holding pg_ctl, pg_controldata, pg_rewind, pg_basebackup and psql.
    /// Default: $PGWARDEN_PG_BIN, else the newest /usr/lib/postgresql/*/bin, else
    /// `pg_config --bindir`, else the directory of initdb on PATH.
    #[arg(long, env = "PGWARDEN_AGENT_PG_BIN", value_name = "DIR")]
    pg_bin: Option<PathBuf>,
    /// The libpq password file used to connect to the primary (rewind, base backup,
    /// streaming replication: it goes into primary_conninfo as passfile=). Default: libpq's,
    /// ~/.pgpass of this user.
    #[arg(long, env = "PGWARDEN_AGENT_PASSFILE", value_name = "FILE")]
    passfile: Option<PathBuf>,
    /// Where `pg_ctl start` writes the server's output. Default: DATA_DIR.log beside the data
    /// directory (e.g. /var/lib/postgresql/15/main.log) — outside it, so a rebuild, which
    /// replaces the directory, keeps the log, and a base backup does not copy the primary's.
    #[arg(long, env = "PGWARDEN_AGENT_LOG_FILE", value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// A file inside the data directory that a rebuild must not replace with the primary's
    /// copy (pg_rewind and pg_basebackup copy the primary's configuration). Repeat for each;
    /// giving any replaces the default list.
    #[arg(
        long = "keep",
        env = "PGWARDEN_AGENT_KEEP",
        value_name = "NAME",
        value_delimiter = ',',
        default_values_t = ["postgresql.conf".to_string(), "pg_hba.conf".to_string(), "pg_ident.conf".to_string()]
    )]
    keep: Vec<String>,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGWARDEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let (cfg, listener) = match prepare(args).await {
        Ok(p) => p,
        Err(problem) => {
            eprintln!("error: {problem}");
            return Ok(ExitCode::from(2));
        }
    };
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    tracing::info!(
        listen = %addr,
        data_dir = %cfg.data_dir.display(),
        pg_port = cfg.pg_port,
        pg_bin = %cfg.pg_bin.display(),
        log_file = %cfg.log_file.display(),
        keep = ?cfg.keep,
        "pgwarden agent {} serving",
        env!("CARGO_PKG_VERSION")
    );
    pgwarden_agent::serve_with_shutdown(cfg, listener, shutdown_signal()).await?;
    tracing::info!("pgwarden agent stopped");
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("stopping");
}

/// Every check, in the order a newcomer would want them; the first problem, in words.
async fn prepare(args: AgentArgs) -> Result<(AgentConfig, tokio::net::TcpListener), String> {
    if nix::unistd::geteuid().is_root() {
        return Err(
            "pgwarden agent refuses to run as root: it runs PostgreSQL's tools (pg_ctl, \
             pg_rewind, pg_basebackup), which refuse to run as root themselves. Run it as the OS \
             user that owns the data directory, e.g. `sudo -u postgres pgwarden agent …`"
                .into(),
        );
    }
    let secret = pgwarden_agent::read_secret(&args.secret_file)?;
    let data_dir = std::path::absolute(&args.data_dir)
        .map_err(|e| format!("--data-dir {}: {e}", args.data_dir.display()))?;
    check_data_dir(&data_dir)?;
    let pg_bin = match args.pg_bin {
        Some(dir) => dir,
        None => PgBin::locate().map_err(|e| e.to_string())?.dir,
    };
    let missing: Vec<&str> = PROGRAMS
        .iter()
        .copied()
        .filter(|p| !pg_bin.join(p).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "--pg-bin {}: {} not found there; expected the directory of PostgreSQL's programs (on Debian /usr/lib/postgresql/15/bin)",
            pg_bin.display(),
            missing.join(", ")
        ));
    }
    let passfile = match args.passfile {
        Some(p) => {
            let p = std::path::absolute(&p).map_err(|e| format!("--passfile: {e}"))?;
            crate::load::check_password_file(&p).map_err(|e| format!("--passfile: {e}"))?;
            Some(p)
        }
        None => None,
    };
    let log_file = match args.log_file {
        Some(p) => std::path::absolute(&p).map_err(|e| format!("--log-file: {e}"))?,
        None => {
            let mut name = data_dir.as_os_str().to_os_string();
            name.push(".log");
            PathBuf::from(name)
        }
    };
    match log_file.parent() {
        Some(dir) if dir.is_dir() => {}
        _ => {
            return Err(format!(
                "--log-file {}: its directory does not exist",
                log_file.display()
            ))
        }
    }
    for name in &args.keep {
        let p = Path::new(name);
        let plain = !name.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(format!(
                "--keep {name:?}: expected the name of a file inside the data directory, such as postgresql.conf (no absolute path, no ..)"
            ));
        }
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                format!(
                    "--listen {}: the port is already in use; stop what holds it or choose another",
                    args.listen
                )
            } else {
                format!("--listen {}: cannot listen there: {e}", args.listen)
            }
        })?;
    Ok((
        AgentConfig {
            data_dir,
            pg_port: args.pg_port,
            pg_bin,
            passfile,
            secret,
            log_file,
            keep: args.keep,
            run_as: RunAs::Current,
        },
        listener,
    ))
}

/// The data directory, or where it will be created, must be usable by this user.
fn check_data_dir(dir: &Path) -> Result<(), String> {
    use nix::unistd::{access, AccessFlags};
    let rwx = AccessFlags::R_OK | AccessFlags::W_OK | AccessFlags::X_OK;
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => access(dir, rwx).map_err(|e| {
            format!(
                "--data-dir {}: this user cannot read and write it ({e}); run the agent as the OS user that owns the data directory",
                dir.display()
            )
        }),
        Ok(_) => Err(format!("--data-dir {}: not a directory", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir.parent().unwrap_or(Path::new("/"));
            if !parent.is_dir() {
                return Err(format!(
                    "--data-dir {}: neither it nor its parent directory exists",
                    dir.display()
                ));
            }
            access(parent, rwx).map_err(|e| {
                format!(
                    "--data-dir {}: it does not exist yet, and this user cannot create it in {} ({e})",
                    dir.display(),
                    parent.display()
                )
            })
        }
        Err(e) => Err(format!(
            "--data-dir {}: cannot reach it: {e}",
            dir.display()
        )),
    }
}
