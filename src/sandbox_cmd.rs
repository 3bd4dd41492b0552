//! `pgwarden sandbox up | status | down`: the sandbox crate does the processes; this waits for
//! the agents and the warden through their APIs and tells the user what runs where.

use crate::cli::SandboxAction;
use crate::render::{sandbox_table, SandboxRow};
use anyhow::Context;
use pgwarden_core::node::{NodeStatus, NodeView};
use pgwarden_core::passfile::PassFile;
use pgwarden_sandbox::{self as sandbox, Layout, SandboxError, UpOptions};
use serde::Serialize;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long `up` waits for the warden to see every node.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn run(action: SandboxAction) -> anyhow::Result<ExitCode> {
    match action {
        SandboxAction::Up {
            dir,
            nodes,
            port,
            fsync,
            synchronous,
        } => up(&dir, nodes, port, fsync, synchronous).await,
        SandboxAction::Status { dir, json } => status(&dir, json).await,
        SandboxAction::Down { dir, destroy } => {
            let stopped =
                tokio::task::spawn_blocking(move || sandbox::down(&dir, destroy).map(|s| (s, dir)))
                    .await
                    .context("the stop task failed")??;
            let (stopped, dir) = stopped;
            if stopped.destroyed {
                println!("sandbox stopped and {} removed", dir.display());
            } else {
                println!(
                    "sandbox stopped; its data stays in {} (`pgwarden sandbox up --dir {}` starts it again, `--destroy` removes it)",
                    dir.display(),
                    dir.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn up(
    dir: &Path,
    nodes: Option<u16>,
    port: Option<u16>,
    fsync: bool,
    synchronous: bool,
) -> anyhow::Result<ExitCode> {
    let opts = UpOptions {
        dir: dir.to_path_buf(),
        nodes,
        base_port: port,
        warden_exe: std::env::current_exe().context("cannot find the pgwarden executable")?,
        fsync,
        synchronous,
    };
    eprintln!("pgwarden sandbox: bringing up {} …", dir.display());
    let started = tokio::task::spawn_blocking(move || sandbox::up(&opts))
        .await
        .context("the sandbox task failed")??;
    let layout = &started.layout;
    let client = pgwarden_api::Client::new(api_base(layout), Duration::from_secs(5))?;
    let ready = async {
        wait_agents(layout, &started.agent_pids).await?;
        wait_ready(&client, layout, started.warden_pid).await
    };
    let views = match ready.await {
        Ok(v) => v,
        Err(e) => {
            if started.built {
                // A first build that never came up leaves nothing behind.
                let d = layout.dir.clone();
                let _ = tokio::task::spawn_blocking(move || sandbox::down(&d, true)).await;
            }
            return Err(e);
        }
    };

    println!(
        "pgwarden sandbox {} in {}",
        if started.built {
            "built and started"
        } else {
            "started"
        },
        layout.dir.display()
    );
    println!(
        "  PostgreSQL from {}, running as {}",
        started.pg_bin.display(),
        started.run_as.describe()
    );
    for v in &views {
        println!(
            "  node {:<2} {:<8} 127.0.0.1:{:<5}  {}   log: {}",
            v.id,
            v.role.as_str(),
            v.port,
            v.data_dir,
            layout.node_log(v.id as u16).display()
        );
    }
    for (id, pid) in &started.agent_pids {
        println!(
            "  agent {:<2} pid {:<7} 127.0.0.1:{:<5}  log: {}",
            id,
            pid,
            layout.agent_port(*id),
            layout.agent_log(*id).display()
        );
    }
    println!(
        "  warden  pid {:<7} API http://127.0.0.1:{}   log: {}",
        started.warden_pid,
        layout.api_port(),
        layout.warden_log().display()
    );
    println!(
        "  proxy   127.0.0.1:{}   (writes to the primary, reads spread over the standbys)",
        layout.proxy_port()
    );
    println!(
        "  PCP     127.0.0.1:{}   (pgpool's pcp_* tools: PCPPASSFILE={} pcp_node_info -h 127.0.0.1 -p {} -U postgres -w)",
        layout.pcp_port(),
        layout.pcppass().display(),
        layout.pcp_port()
    );
    println!();
    println!("Connect:");
    println!(
        "  export PGPASSFILE={} PGWARDEN_CONFIG={}",
        layout.pgpass().display(),
        layout.config().display()
    );
    println!(
        "  psql -h 127.0.0.1 -p {} -U postgres test      (through pgwarden: what applications use)",
        layout.proxy_port()
    );
    println!(
        "  psql -h 127.0.0.1 -p {} -U postgres test      (node 0 itself, the primary until a failover)",
        layout.node_port(0)
    );
    println!("  pgwarden node list");
    println!(
        "Stop: pgwarden sandbox down --dir {}   (add --destroy to remove it)",
        layout.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn api_base(layout: &Layout) -> String {
    format!("http://127.0.0.1:{}", layout.api_port())
}

/// Waits until every node's agent answers a signed GET /v1/status.
async fn wait_agents(layout: &Layout, pids: &[(u16, u32)]) -> anyhow::Result<()> {
    let secret = pgwarden_agent::read_secret(&layout.agent_secret()).map_err(anyhow::Error::msg)?;
    let deadline = Instant::now() + READY_TIMEOUT;
    for &(id, pid) in pids {
        let addr = format!("127.0.0.1:{}", layout.agent_port(id));
        let client =
            pgwarden_agent::AgentClient::new(&addr, secret.clone(), Duration::from_secs(5));
        loop {
            if !sandbox::process_alive(pid) {
                return Err(SandboxError::AgentDied {
                    id,
                    log: layout.agent_log(id),
                    tail: sandbox::tail_file(&layout.agent_log(id), 20),
                }
                .into());
            }
            let err = match client.status().await {
                Ok(_) => break,
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "the agent of node {id} did not answer within {} s: {err}\nthe end of {}:\n{}",
                    READY_TIMEOUT.as_secs(),
                    layout.agent_log(id).display(),
                    sandbox::tail_file(&layout.agent_log(id), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Waits until the warden answers and has seen every node answer once.
async fn wait_ready(
    client: &pgwarden_api::Client,
    layout: &Layout,
    pid: u32,
) -> anyhow::Result<Vec<NodeView>> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last;
    loop {
        // Just after the spawn, /proc may still show the parent's command line; what matters
        // here is only whether that process is still alive.
        if !sandbox::process_alive(pid) {
            return Err(SandboxError::WardenDied {
                log: layout.warden_log(),
                tail: sandbox::tail_file(&layout.warden_log(), 20),
            }
            .into());
        }
        match client.nodes().await {
            Ok(views) => {
                // Ready: every node checked, and a primary in place. A node the saved state
                // keeps down (it failed, or was fenced) stays down and does not hold this up.
                let primary = match client.cluster().await {
                    Ok(c) => c.primary,
                    Err(_) => None,
                };
                let mut waiting: Vec<String> = views
                    .iter()
                    .filter(|v| {
                        v.status == NodeStatus::Waiting
                            || (v.status == NodeStatus::Down && v.status_reason == "configured")
                    })
                    .map(|v| {
                        format!(
                            "node {} is {}{}",
                            v.id,
                            v.status.as_str(),
                            v.last_error
                                .as_ref()
                                .map(|e| format!(" ({e})"))
                                .unwrap_or_default()
                        )
                    })
                    .collect();
                if primary.is_none() {
                    waiting.push("no primary adopted yet".into());
                }
                if waiting.is_empty() {
                    return Ok(views);
                }
                last = waiting.join("; ");
            }
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the sandbox did not come up within {} s: {last}\nthe end of {}:\n{}",
                READY_TIMEOUT.as_secs(),
                layout.warden_log().display(),
                sandbox::tail_file(&layout.warden_log(), 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Serialize)]
struct StatusJson {
    dir: String,
    proxy_port: u16,
    pcp_port: u16,
    api_port: u16,
    warden: WardenJson,
    /// Where the node states come from: "warden" (its API) or "probe" (checked directly,
    /// because the warden is not running).
    source: &'static str,
    nodes: Vec<NodeJson>,
}

#[derive(Serialize)]
struct WardenJson {
    running: bool,
    pid: Option<u32>,
}

#[derive(Serialize)]
struct NodeJson {
    id: u16,
    port: u16,
    data_dir: String,
    role: String,
    status: String,
    pg_status: String,
    agent: AgentJson,
}

#[derive(Serialize)]
struct AgentJson {
    port: u16,
    running: bool,
    pid: Option<u32>,
}

fn agent_json(layout: &Layout, id: u16) -> AgentJson {
    let pid = sandbox::agent_pid(layout, id);
    AgentJson {
        port: layout.agent_port(id),
        running: pid.is_some(),
        pid,
    }
}

async fn status(dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let (layout, _meta) = sandbox::open(dir)?;
    let pid = sandbox::warden_pid(&layout);
    let from_api = match pid {
        Some(_) => pgwarden_api::Client::new(api_base(&layout), Duration::from_secs(5))?
            .nodes()
            .await
            .ok(),
        None => None,
    };
    let (source, nodes) = match from_api {
        Some(views) => (
            "warden",
            views
                .iter()
                .map(|v| NodeJson {
                    id: v.id as u16,
                    port: v.port,
                    data_dir: v.data_dir.clone(),
                    role: v.role.as_str().into(),
                    status: v.status.as_str().into(),
                    pg_status: v.pg_status.as_str().into(),
                    agent: agent_json(&layout, v.id as u16),
                })
                .collect(),
        ),
        None => ("probe", probe_all(&layout).await),
    };
    let out = StatusJson {
        dir: layout.dir.display().to_string(),
        proxy_port: layout.proxy_port(),
        pcp_port: layout.pcp_port(),
        api_port: layout.api_port(),
        warden: WardenJson {
            running: pid.is_some(),
            pid,
        },
        source,
        nodes,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("sandbox {}", out.dir);
        match pid {
            Some(p) => println!(
                "  warden: running, pid {p}, API http://127.0.0.1:{}",
                out.api_port
            ),
            None => println!("  warden: not running (node states below were probed directly)"),
        }
        let state = if pid.is_some() {
            "served by the warden"
        } else {
            "reserved: the warden is not running"
        };
        println!(
            "  proxy 127.0.0.1:{} and PCP 127.0.0.1:{} ({state})",
            out.proxy_port, out.pcp_port
        );
        let rows: Vec<SandboxRow> = out
            .nodes
            .iter()
            .map(|n| SandboxRow {
                id: n.id,
                port: n.port,
                role: n.role.clone(),
                status: n.status.clone(),
                data_dir: n.data_dir.clone(),
            })
            .collect();
        print!("{}", sandbox_table(&rows));
        for n in &out.nodes {
            match n.agent.pid {
                Some(pid) => println!(
                    "  agent of node {}: running, pid {pid}, 127.0.0.1:{}",
                    n.id, n.agent.port
                ),
                None => println!(
                    "  agent of node {}: not running (127.0.0.1:{})",
                    n.id, n.agent.port
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Without a warden, each node is checked once with the monitor's own probe.
async fn probe_all(layout: &Layout) -> Vec<NodeJson> {
    let passwords = std::fs::read_to_string(layout.pgpass())
        .map(|t| PassFile::parse(&t))
        .unwrap_or_default();
    let mut out = Vec::new();
    for id in layout.node_ids() {
        let port = layout.node_port(id);
        let target = pgwarden_monitor::Target {
            host: "127.0.0.1".into(),
            port,
            user: "postgres".into(),
            database: "postgres".into(),
            password: passwords.lookup("127.0.0.1", port, "postgres", "postgres"),
            connect_timeout: Duration::from_secs(2),
        };
        let obs =
            tokio::time::timeout(Duration::from_secs(3), pgwarden_monitor::probe(&target)).await;
        let (role, status) = match obs {
            Ok(Ok(o)) => (o.role().as_str().to_string(), "up"),
            _ => ("unknown".to_string(), "down"),
        };
        out.push(NodeJson {
            id,
            port,
            data_dir: layout.data_dir(id).display().to_string(),
            role,
            status: status.into(),
            pg_status: status.into(),
            agent: agent_json(layout, id),
        });
    }
    out
}
