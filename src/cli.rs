//! The command line: what each command takes, and the help a newcomer reads.

use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "pgwarden",
    version,
    about = "PostgreSQL high availability: a warden that watches every node of a streaming-replication cluster",
    long_about = "pgwarden keeps a PostgreSQL streaming-replication cluster available.\n\n\
        The warden (`pgwarden serve`) health-checks every node, reads its role, timeline, WAL \
        positions and replication state, and serves them over an HTTP API. \
        `pgwarden sandbox up` builds a real three-node cluster on this machine to try it on.\n\n\
        Quick start:\n  pgwarden sandbox up --dir ./sandbox\n  \
        export PGWARDEN_CONFIG=./sandbox/pgwarden.toml\n  pgwarden node list",
    after_help = "Exit codes: 0 success, 1 failure, 2 bad configuration or usage."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the warden in the foreground: health checks and the HTTP API.
    ///
    /// It also serves the front door (the PostgreSQL proxy, `listen.proxy`) and pgpool's PCP
    /// port (`listen.pcp`, open when `pcp.users_file` is set). It uses one worker thread per core; set PGWARDEN_WORKERS=N to
    /// use N instead (on a machine it shares with PostgreSQL and the clients, fewer workers
    /// wake each other less: docs/BENCHMARKS.md). Stop it with SIGTERM; SIGHUP reloads the
    /// configuration: client authentication (hba rules, pool_passwd, the password file, the
    /// TLS certificate) and nodes added to the file.
    Serve {
        /// The configuration file.
        #[arg(short, long, env = "PGWARDEN_CONFIG", default_value = "pgwarden.toml")]
        config: PathBuf,
    },
    /// Check a configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Look at the cluster's nodes, or put one in or out of service, or promote one.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Hand the primary's role over to standby N, without losing a committed transaction.
    ///
    /// New writes wait (up to proxy.primary_wait) while running transactions finish (up to
    /// failover.switchover_timeout; sessions still in one are then closed), the old primary is
    /// stopped cleanly, N is promoted once it has all of the old primary's WAL, and the old
    /// primary restarts as a standby of N. If a step fails before the promotion, the old
    /// primary stays the primary. Also `pcp_promote_node -s -n N`.
    Switchover {
        #[command(flatten)]
        target: ApiTarget,
        /// The standby to promote.
        #[arg(long = "to", value_name = "N")]
        to: u32,
    },
    /// What the warden did and saw: status changes, failover steps, promotions, fencing.
    ///
    /// The history is kept in memory (the last 1000 events) and also goes to the warden's log.
    Events {
        #[command(flatten)]
        target: ApiTarget,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Print JSON (the API's /v1/events) instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// A real PostgreSQL cluster on this machine, for trying pgwarden out and for tests.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    #[command(
        about = "Run the node agent beside a PostgreSQL server: the warden's hands on that host"
    )]
    Agent(crate::agent_cmd::AgentArgs),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate FILE without starting anything. Every problem is reported with the file, line,
    /// key and what is expected; the exit code is 2 if there is any.
    Check {
        /// The configuration file (pgwarden.toml).
        file: PathBuf,
    },
}

#[derive(Args, Debug)]
struct ApiTarget {
    /// The warden's configuration; its `listen.api` says where the API is.
    #[arg(short, long, env = "PGWARDEN_CONFIG", default_value = "pgwarden.toml")]
    config: PathBuf,
    /// The API's address (overrides --config), such as http://127.0.0.1:11100.
    #[arg(long, env = "PGWARDEN_API")]
    api: Option<String>,
}

#[derive(Subcommand, Debug)]
enum NodeCommand {
    /// Every node: status, role, timeline, WAL lag and replication state.
    ///
    /// `status` is pgwarden's decision (up, down, waiting, unused); `pg status` is whether
    /// PostgreSQL answered the last health check. A node that failed stays down when it
    /// answers again until it is attached or recovered.
    List {
        #[command(flatten)]
        target: ApiTarget,
        /// Print JSON (the API's /v1/nodes) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put node ID back into service (pgpool's pcp_attach_node). It takes traffic once a
    /// health check succeeds. Refused for a false primary (not in recovery while another node
    /// is the primary) and for a standby left on an older timeline: those need a rebuild.
    Attach {
        #[command(flatten)]
        target: ApiTarget,
        /// The node's id (as in `pgwarden node list`).
        id: u32,
    },
    /// Take node ID out of service (pgpool's pcp_detach_node). Its sessions end; it gets no
    /// traffic until attached again. Detaching the primary fails over to the standby with the
    /// most WAL. Refused for the last node in service.
    Detach {
        #[command(flatten)]
        target: ApiTarget,
        id: u32,
    },
    /// Rebuild node ID from the primary and put it back into service, while clients keep
    /// working (pgpool's pcp_recovery_node / online recovery).
    ///
    /// The node must be out of service (down, or detached with `node detach`) and not the
    /// primary. Through the node's agent: CHECKPOINT on the primary; stop the node; pg_rewind
    /// if it diverged from the primary (a former primary), otherwise — or if the rewind fails —
    /// a fresh base backup over a replication slot; the standby configuration; pgpool's 2nd
    /// stage if recovery_2nd_stage_command is set; start it; wait until it streams (within
    /// recovery.recovery_timeout); attach it. pgpool's recovery_1st_stage_command and
    /// remote_start_command run instead of the built-in steps when configured. If a step fails
    /// the node stays out of service and the error says which step and why.
    ///
    /// Shows a progress bar (step, bytes copied, rate, time left) until it ends.
    Recover {
        #[command(flatten)]
        target: ApiTarget,
        id: u32,
        /// Start it and return at once; follow it later with --watch or `pgwarden events`.
        #[arg(long, conflicts_with = "watch")]
        no_wait: bool,
        /// Do not start a recovery: follow the one running (or show how the last one ended).
        #[arg(long)]
        watch: bool,
        /// Print the final status as JSON (the API's /v1/nodes/ID/recovery) instead of a bar.
        #[arg(long)]
        json: bool,
    },
    /// Promote standby ID to be the primary (pgpool's pcp_promote_node). The old primary is
    /// fenced first: it gets no more traffic. Refused while the primary is healthy (use a
    /// switchover) or when another standby has more WAL, unless --force.
    Promote {
        #[command(flatten)]
        target: ApiTarget,
        id: u32,
        /// Promote even though writes the node has not received may be lost.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum SandboxCommand {
    /// Build a cluster in DIR (the first time) or restart it (later), start the node agents
    /// and the warden, and wait until everything answers.
    ///
    /// Ports follow pgpool_setup: proxy BASE, PCP BASE+1, PostgreSQL nodes BASE+2 … BASE+1+N,
    /// HTTP API BASE+100, node agents BASE+101 … BASE+100+N. Node 0 is the primary; the others stream from it through
    /// replication slots. The superuser is `postgres`, its password in DIR/pgpass (libpq's
    /// format); a database `test` is created. Run as root, PostgreSQL runs as the `postgres`
    /// OS user.
    Up {
        /// The sandbox's directory.
        #[arg(long, env = "PGWARDEN_SANDBOX", default_value = "sandbox")]
        dir: PathBuf,
        /// Number of PostgreSQL nodes: one primary and N-1 standbys [default: 3].
        #[arg(long)]
        nodes: Option<u16>,
        /// Base port [default: 11000].
        #[arg(long)]
        port: Option<u16>,
        /// Synchronous mode (on a new sandbox): pgwarden keeps one standby synchronous and
        /// promotes only that one, so a failover loses no acknowledged commit.
        #[arg(long)]
        synchronous: bool,
        /// Run PostgreSQL with fsync=off: faster, and unsafe for anything but throw-away data.
        #[arg(long)]
        no_fsync: bool,
    },
    /// What runs where: ports, data directories, each node's role and status.
    Status {
        #[arg(long, env = "PGWARDEN_SANDBOX", default_value = "sandbox")]
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop the warden and every node. The data stays for the next `up`.
    Down {
        #[arg(long, env = "PGWARDEN_SANDBOX", default_value = "sandbox")]
        dir: PathBuf,
        /// Also remove DIR and everything in it.
        #[arg(long)]
        destroy: bool,
    },
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

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            init_logging();
            crate::serve::run(&config).await?;
        }
        Command::Config(ConfigCommand::Check { file }) => {
            let cfg = crate::load::config(&file)?;
            println!(
                "{}: ok — {} backend(s); proxy {}, PCP {}, API {}",
                file.display(),
                cfg.backends.len(),
                cfg.listen.proxy,
                cfg.listen.pcp,
                cfg.listen.api
            );
        }
        Command::Node(NodeCommand::List { target, json }) => {
            let client = api_client(&target)?;
            let nodes = client.nodes().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                print!("{}", crate::render::node_table(&nodes, &chrono::Local));
            }
        }
        Command::Node(NodeCommand::Attach { target, id }) => {
            return node_op(&target, id, pgwarden_api::NodeOp::Attach).await;
        }
        Command::Node(NodeCommand::Detach { target, id }) => {
            return node_op(&target, id, pgwarden_api::NodeOp::Detach).await;
        }
        Command::Node(NodeCommand::Promote { target, id, force }) => {
            return node_op(&target, id, pgwarden_api::NodeOp::Promote { force }).await;
        }
        Command::Node(NodeCommand::Recover {
            target,
            id,
            no_wait,
            watch,
            json,
        }) => {
            let client = api_client(&target)?;
            return crate::recover_cmd::run(&client, id, no_wait, watch, json).await;
        }
        Command::Switchover { target, to } => {
            return node_op(&target, to, pgwarden_api::NodeOp::Switchover).await;
        }
        Command::Events {
            target,
            after,
            json,
        } => {
            let client = api_client(&target)?;
            let events = client.events(after).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&events)?);
            } else {
                print!("{}", crate::render::event_lines(&events, &chrono::Local));
            }
        }
        Command::Sandbox(cmd) => return crate::sandbox_cmd::run(cmd.into()).await,
        Command::Agent(args) => return crate::agent_cmd::run(args).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs an operation; a refusal is printed with its reason and exits 1.
async fn node_op(
    target: &ApiTarget,
    id: u32,
    op: pgwarden_api::NodeOp,
) -> anyhow::Result<ExitCode> {
    let client = api_client(target)?;
    match client.node_op(id, op).await {
        Ok(r) => {
            println!("{}", r.message);
            Ok(ExitCode::SUCCESS)
        }
        Err(pgwarden_api::ClientError::Refused { reason, .. }) => {
            eprintln!("pgwarden: {reason}");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

fn api_client(target: &ApiTarget) -> anyhow::Result<pgwarden_api::Client> {
    let base = match &target.api {
        Some(url) => url.clone(),
        None => {
            let cfg = crate::load::parse_only(&target.config)?;
            api_url(cfg.listen.api)
        }
    };
    Ok(pgwarden_api::Client::new(base, Duration::from_secs(10))?)
}

pub fn api_url(addr: std::net::SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    match addr {
        std::net::SocketAddr::V6(_) if !addr.ip().is_unspecified() => {
            format!("http://[{host}]:{}", addr.port())
        }
        _ => format!("http://{host}:{}", addr.port()),
    }
}

/// The sandbox commands, with their arguments resolved.
pub enum SandboxAction {
    Up {
        dir: PathBuf,
        nodes: Option<u16>,
        port: Option<u16>,
        fsync: bool,
        synchronous: bool,
    },
    Status {
        dir: PathBuf,
        json: bool,
    },
    Down {
        dir: PathBuf,
        destroy: bool,
    },
}

impl From<SandboxCommand> for SandboxAction {
    fn from(c: SandboxCommand) -> Self {
        match c {
            SandboxCommand::Up {
                dir,
                nodes,
                port,
                no_fsync,
                synchronous,
            } => SandboxAction::Up {
                dir: absolute(&dir),
                nodes,
                port,
                fsync: !no_fsync,
                synchronous,
            },
            SandboxCommand::Status { dir, json } => SandboxAction::Status {
                dir: absolute(&dir),
                json,
            },
            SandboxCommand::Down { dir, destroy } => SandboxAction::Down {
                dir: absolute(&dir),
                destroy,
            },
        }
    }
}

/// Absolute, without requiring the path to exist (`up` creates it).
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn api_urls() {
        assert_eq!(
            api_url("0.0.0.0:11100".parse().unwrap()),
            "http://127.0.0.1:11100"
        );
        assert_eq!(api_url("[::1]:9900".parse().unwrap()), "http://[::1]:9900");
        assert_eq!(
            api_url("127.0.0.2:9900".parse().unwrap()),
            "http://127.0.0.2:9900"
        );
    }
}
