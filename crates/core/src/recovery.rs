//! Online recovery, decided: who may be recovered, how its data is rebuilt (pg_rewind or a
//! fresh base backup), which steps run in which order, and what the progress figures say.
//! pgpool-II's sequence (reference/pgpool.md §3): CHECKPOINT, 1st stage, 2nd stage where
//! configured, start the node, attach it.
//!
//! Plain functions over what was observed; the controller does the I/O.

use crate::cluster::{ClusterState, NodeFacts};
use crate::config::RecoveryConfig;
use crate::node::{LiveStatus, NodeStatus};
use serde::{Deserialize, Serialize};

/// Whether node `id` may be recovered now. Returns the primary it is rebuilt from.
///
/// pgpool allows it only for a node that is configured, not the primary and not in service;
/// pgwarden also needs a primary that answers, and one recovery per node at a time.
pub fn check_recover(
    state: &ClusterState,
    nodes: &[NodeFacts],
    id: u32,
    running: &[u32],
) -> Result<u32, String> {
    let Some(n) = nodes.iter().find(|n| n.id == id) else {
        return Err(format!("node {id} is not configured"));
    };
    if running.contains(&id) {
        return Err(format!("a recovery of node {id} is already running; watch it with `pgwarden node recover {id} --watch` or `pgwarden events`"));
    }
    let Some(primary) = state.primary else {
        return Err(format!(
            "there is no primary to rebuild node {id} from (generation {}); a failover or a promotion must finish first",
            state.generation
        ));
    };
    if primary == id {
        return Err(format!("node {id} is the primary; to rebuild it, first move the primary elsewhere with `pgwarden switchover --to N`"));
    }
    if matches!(n.status, NodeStatus::Up | NodeStatus::Waiting) {
        return Err(format!(
            "node {id} is in service ({}); take it out first with `pgwarden node detach {id}` (a recovery rebuilds its data directory)",
            n.status.as_str()
        ));
    }
    let p = nodes.iter().find(|x| x.id == primary);
    if p.is_none_or(|p| p.live != LiveStatus::Up) {
        return Err(format!(
            "the primary (node {primary}) does not answer its health checks; nothing can be copied from it now"
        ));
    }
    Ok(primary)
}

/// What `pg_controldata` says of the node's data directory (`None`: there is no cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeData {
    /// "Database cluster state".
    pub state: String,
    pub timeline: u32,
    pub system_identifier: String,
}

/// How the 1st stage rebuilds the node's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// pg_rewind from the primary: only what diverged is copied.
    Rewind,
    /// A fresh base backup of the primary, over a replication slot.
    BaseBackup,
    /// pgpool's recovery_1st_stage_command, run on the primary's host.
    Script,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Rewind => "pg_rewind",
            Method::BaseBackup => "base backup",
            Method::Script => "recovery_1st_stage_command",
        }
    }
}

/// The built-in 1st stage: pg_rewind when the node last ran as a primary (its data may have
/// diverged from the primary's), a base backup otherwise. With the reason, for the event
/// history.
pub fn first_stage(
    node: Option<&NodeData>,
    primary_system_identifier: &str,
    primary_timeline: u32,
) -> (Method, String) {
    let Some(d) = node else {
        return (
            Method::BaseBackup,
            "the node has no data directory yet".into(),
        );
    };
    if d.system_identifier != primary_system_identifier {
        return (
            Method::BaseBackup,
            format!(
                "its data belongs to another cluster (system identifier {}, the primary's is {primary_system_identifier})",
                d.system_identifier
            ),
        );
    }
    // A server that last ran as a primary: "in production" (it crashed or was killed),
    // "shut down" (stopped cleanly) or "in crash recovery" (killed during crash recovery).
    let was_primary = matches!(
        d.state.as_str(),
        "in production" | "shut down" | "in crash recovery"
    );
    if was_primary {
        return (
            Method::Rewind,
            format!(
                "it last ran as a primary ({}, timeline {}): its WAL may have diverged from the primary's",
                d.state, d.timeline
            ),
        );
    }
    // A standby, whatever its timeline: a fresh copy. A standby's control file may still name
    // an old timeline after a rewind (until its first restartpoint), and rewinding a rewound
    // node again is unsafe: pg_rewind's crash recovery would end its recovery on its own,
    // after which it reports "no rewind required" for data the primary does not have.
    let timeline = if d.timeline < primary_timeline {
        format!(
            "on timeline {} (the primary on {primary_timeline})",
            d.timeline
        )
    } else {
        format!("on the primary's timeline ({})", d.timeline)
    };
    (
        Method::BaseBackup,
        format!("a standby {timeline}: rebuilt from a fresh base backup"),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// CHECKPOINT on the primary (what the 1st stage copies starts from a fresh checkpoint).
    Checkpoint,
    /// Stop the node through its agent if it runs.
    StopNode,
    /// pg_rewind, base backup or the 1st-stage script.
    FirstStage,
    /// standby.signal and primary_conninfo through the node's agent (built-in 1st stage only:
    /// a script writes its own).
    StandbyConfig,
    /// New sessions wait, idle ones are closed, busy ones finish; CHECKPOINT; the 2nd-stage
    /// script; sessions released.
    SecondStage,
    /// Start PostgreSQL on the node (its agent, or pgpool's remote start script).
    Start,
    /// Wait until it accepts connections and streams from the primary.
    WaitStreaming,
    /// Put it back into service.
    Attach,
}

impl Step {
    pub fn describe(self) -> &'static str {
        match self {
            Step::Checkpoint => "checkpoint on the primary",
            Step::StopNode => "stop the node",
            Step::FirstStage => "1st stage",
            Step::StandbyConfig => "standby configuration",
            Step::SecondStage => "2nd stage",
            Step::Start => "start the node",
            Step::WaitStreaming => "wait for streaming",
            Step::Attach => "attach",
        }
    }
}

/// The steps of a recovery with this configuration. `has_agent`: the node has an agent (it
/// can be stopped, configured and started directly).
pub fn plan(cfg: &RecoveryConfig, has_agent: bool) -> Vec<Step> {
    let mut steps = vec![Step::Checkpoint];
    if has_agent {
        steps.push(Step::StopNode);
    }
    steps.push(Step::FirstStage);
    if cfg.first_stage_command.is_none() {
        steps.push(Step::StandbyConfig);
    }
    if cfg.second_stage_command.is_some() {
        steps.push(Step::SecondStage);
    }
    steps.extend([Step::Start, Step::WaitStreaming, Step::Attach]);
    steps
}

/// Whether a plan can run: without an agent on the node, the 1st stage and the start must
/// both be pgpool scripts (run on the primary's host), and the node must not be running.
pub fn check_plan(
    cfg: &RecoveryConfig,
    id: u32,
    has_agent: bool,
    primary_has_agent: bool,
    node_answers: bool,
) -> Result<(), String> {
    let scripts = cfg.first_stage_command.is_some()
        || cfg.second_stage_command.is_some()
        || cfg.remote_start_command.is_some();
    if scripts && !primary_has_agent {
        return Err("recovery scripts run on the primary's host through its agent, and the primary has no `agent` address configured".into());
    }
    if !has_agent {
        if cfg.first_stage_command.is_none() || cfg.remote_start_command.is_none() {
            return Err(format!("node {id} has no `agent` address configured; set backend.agent to its `pgwarden agent`, or configure recovery_1st_stage_command and remote_start_command (pgpool's scripts)"));
        }
        if node_answers {
            return Err(format!(
                "node {id} still runs and has no agent to stop it; stop it first"
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecoveryState {
    Running,
    Succeeded,
    Failed,
}

/// What a recovery is doing, for the progress bar and `GET /v1/nodes/{id}/recovery`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryStatus {
    pub node: u32,
    pub state: RecoveryState,
    /// The primary it is rebuilt from.
    pub primary: u32,
    pub method: Option<Method>,
    pub step: Step,
    /// 1-based index of `step` among `steps`.
    pub step_index: usize,
    pub steps: Vec<Step>,
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
    /// Bytes per second over the copy so far.
    pub rate: Option<f64>,
    /// Seconds left of the copy, at that rate.
    pub eta_secs: Option<u64>,
    pub elapsed_ms: u64,
    /// The last thing that happened, for people.
    pub message: String,
    /// Why it failed: the step and the reason, with the tail of the tool's output.
    pub error: Option<String>,
}

/// The copy's rate and time left, from bytes copied over `elapsed_ms` of copying.
pub fn rate_and_eta(done: u64, total: Option<u64>, copy_ms: u64) -> (Option<f64>, Option<u64>) {
    if copy_ms < 200 || done == 0 {
        return (None, None);
    }
    let rate = done as f64 * 1000.0 / copy_ms as f64;
    let eta = total.map(|t| (t.saturating_sub(done) as f64 / rate).ceil() as u64);
    (Some(rate), eta)
}

/// pgpool's 7 arguments of a recovery stage script: primary data directory, target host,
/// target data directory, primary port, target node id, target port, primary host. A host that
/// is empty or a socket directory (starts with `/`) becomes `localhost`, as in pgpool.
pub fn stage_args(
    primary_data_dir: &str,
    target_host: &str,
    target_data_dir: &str,
    primary_port: u16,
    target_id: u32,
    target_port: u16,
    primary_host: &str,
) -> Vec<String> {
    let host = |h: &str| {
        if h.is_empty() || h.starts_with('/') {
            "localhost".to_string()
        } else {
            h.to_string()
        }
    };
    vec![
        primary_data_dir.to_string(),
        host(target_host),
        target_data_dir.to_string(),
        primary_port.to_string(),
        target_id.to_string(),
        target_port.to_string(),
        host(primary_host),
    ]
}

/// Why a node was taken out of service by hand: auto-recovery leaves such a node alone.
pub const DETACHED_BY_HAND: &str = "detached by hand";

/// Whether auto-recovery should try to rebuild node `f` now: it failed (it is down, and not
/// because somebody detached it), it is not the primary, there is a primary, and no recovery
/// of it runs. Whether its agent answers, and the backoff, are the caller's to check.
pub fn auto_recovery_wanted(
    state: &ClusterState,
    f: &NodeFacts,
    running: bool,
    has_agent: bool,
) -> bool {
    let by_hand = state
        .nodes
        .get(&f.id)
        .is_some_and(|r| r.reason.starts_with(DETACHED_BY_HAND));
    f.status == NodeStatus::Down
        && !by_hand
        && !running
        && has_agent
        && state.primary.is_some_and(|p| p != f.id)
}

/// The pause before the next automatic attempt on a node after `failures` failed ones:
/// 10 s, doubling, at most `max`.
pub fn auto_recovery_backoff(failures: u32, max: std::time::Duration) -> std::time::Duration {
    let base = std::time::Duration::from_secs(10);
    base.saturating_mul(1u32 << failures.min(16)).min(max)
}

#[cfg(test)]
mod tests;
