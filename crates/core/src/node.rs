//! The node model: what the monitor observed of each PostgreSQL server, the status pgwarden
//! keeps for it, and the views built from both.
//!
//! Two kinds of state are kept apart, as pgpool-II does:
//! * `status` is pgwarden's decision about the node (up, down, waiting, unused): whether it is in
//!   service. It changes only through [`next_status`].
//! * `pg_status` / `pg_role` are what the last health check saw, right now.
//!
//! A node that failed stays `down` when PostgreSQL answers again: putting a returning node back
//! into service (attach, failback, recovery) is a decision of its own, never a side effect of a
//! health check. Its `pg_status` turns `up` at once.

use crate::config::{Backend, FailoverFlag};
use crate::Lsn;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// pgwarden's status of a node, with pgpool-II's names and meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Configured but not in use.
    Unused,
    /// Configured, not yet confirmed by a health check.
    Waiting,
    /// In service.
    Up,
    /// Out of service: it failed its health checks (or was detached).
    Down,
}

/// What the last health check found: is PostgreSQL answering?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LiveStatus {
    Up,
    Down,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Standby,
    Unknown,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Unused => "unused",
            NodeStatus::Waiting => "waiting",
            NodeStatus::Up => "up",
            NodeStatus::Down => "down",
        }
    }
}

impl LiveStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LiveStatus::Up => "up",
            LiveStatus::Down => "down",
            LiveStatus::Unknown => "unknown",
        }
    }
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::Unknown => "unknown",
        }
    }
}

/// One row of the primary's `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationRow {
    pub application_name: String,
    pub client_addr: Option<String>,
    /// `startup`, `catchup`, `streaming`, `backup` or `stopping`.
    pub state: Option<String>,
    /// `async`, `potential`, `sync` or `quorum`.
    pub sync_state: Option<String>,
    pub sent_lsn: Option<Lsn>,
    pub write_lsn: Option<Lsn>,
    pub flush_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
}

/// What one successful health check read from a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub in_recovery: bool,
    /// `pg_current_wal_insert_lsn()`, on a primary: every record a commit that has returned
    /// made, written or not (`synchronous_commit = off`).
    pub current_lsn: Option<Lsn>,
    /// `pg_last_wal_receive_lsn()`, on a standby.
    pub receive_lsn: Option<Lsn>,
    /// `pg_last_wal_replay_lsn()`, on a standby.
    pub replay_lsn: Option<Lsn>,
    pub timeline: Option<u32>,
    pub server_version: Option<String>,
    /// The node's `pg_stat_replication` (its directly connected standbys).
    pub replication: Vec<ReplicationRow>,
}

impl Observation {
    /// How far this node's WAL goes: a primary's current position, a standby's received (or,
    /// if further, replayed) position. What a failover compares.
    pub fn wal_position(&self) -> Option<Lsn> {
        if self.in_recovery {
            self.receive_lsn.max(self.replay_lsn)
        } else {
            self.current_lsn
        }
    }

    pub fn role(&self) -> Role {
        if self.in_recovery {
            Role::Standby
        } else {
            Role::Primary
        }
    }
}

/// One health-check cycle: the first attempt and its retries.
#[derive(Debug, Clone)]
pub struct CheckCycle {
    /// When the cycle began: what it observed is at least this recent.
    pub started: Instant,
    pub finished_at: DateTime<Utc>,
    pub duration: Duration,
    /// Attempts after the first one.
    pub retries: u32,
    pub result: Result<Observation, CheckError>,
}

/// Why a health check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckError {
    pub message: String,
    /// PostgreSQL answered, but refused the connection for a reason that says nothing about
    /// its health: too many connections (53300), out of resources (53400), starting up or
    /// shutting down is not that (57P03 is excluded). A node that answers like this stays in
    /// service: exhausting `max_connections` must never take a primary out, let alone fail it
    /// over.
    pub alive: bool,
}

impl From<String> for CheckError {
    fn from(message: String) -> Self {
        CheckError {
            message,
            alive: false,
        }
    }
}

impl From<&str> for CheckError {
    fn from(message: &str) -> Self {
        message.to_string().into()
    }
}

/// The figures of pgpool's `SHOW pool_health_check_stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthStats {
    pub total_count: u64,
    pub success_count: u64,
    pub fail_count: u64,
    /// Checks skipped (the node was not checked because it is unused).
    pub skip_count: u64,
    pub retry_count: u64,
    pub max_retry_count: u32,
    pub average_retry_count: f64,
    pub min_duration_ms: Option<u64>,
    pub max_duration_ms: Option<u64>,
    pub average_duration_ms: f64,
    pub last_health_check: Option<DateTime<Utc>>,
    pub last_successful_health_check: Option<DateTime<Utc>>,
    pub last_skip_health_check: Option<DateTime<Utc>>,
    pub last_failed_health_check: Option<DateTime<Utc>>,
    #[serde(skip)]
    total_duration_ms: u64,
}

impl HealthStats {
    pub fn record(&mut self, cycle: &CheckCycle) {
        let ms = u64::try_from(cycle.duration.as_millis()).unwrap_or(u64::MAX);
        self.total_count += 1;
        self.retry_count += u64::from(cycle.retries);
        self.max_retry_count = self.max_retry_count.max(cycle.retries);
        self.total_duration_ms = self.total_duration_ms.saturating_add(ms);
        self.min_duration_ms = Some(self.min_duration_ms.map_or(ms, |m| m.min(ms)));
        self.max_duration_ms = Some(self.max_duration_ms.map_or(ms, |m| m.max(ms)));
        self.average_retry_count = self.retry_count as f64 / self.total_count as f64;
        self.average_duration_ms = self.total_duration_ms as f64 / self.total_count as f64;
        self.last_health_check = Some(cycle.finished_at);
        if cycle.result.is_ok() {
            self.success_count += 1;
            self.last_successful_health_check = Some(cycle.finished_at);
        } else {
            self.fail_count += 1;
            self.last_failed_health_check = Some(cycle.finished_at);
        }
    }

    pub fn record_skip(&mut self, at: DateTime<Utc>) {
        self.skip_count += 1;
        self.last_skip_health_check = Some(at);
    }
}

/// The status pgwarden gives a node after a health-check cycle.
///
/// `healthy` is the cycle's outcome after its retries. A node flagged
/// [`FailoverFlag::Disallow`] is never taken out of service by a failed check (pgpool's
/// DISALLOW_TO_FAILOVER: another tool manages it); its `pg_status` still shows the truth.
pub fn next_status(current: NodeStatus, healthy: bool, failover: FailoverFlag) -> NodeStatus {
    use NodeStatus::*;
    match (current, healthy, failover) {
        (Unused, _, _) => Unused,
        (Waiting, true, _) => Up,
        (Waiting, false, FailoverFlag::Allow) => Down,
        (Waiting, false, FailoverFlag::Disallow) => Up,
        (Up, true, _) => Up,
        (Up, false, FailoverFlag::Allow) => Down,
        (Up, false, FailoverFlag::Disallow) => Up,
        // A failed node comes back into service only by a decision of its own (attach,
        // recovery), never because it answers a health check again.
        (Down, _, _) => Down,
    }
}

/// A change of [`NodeStatus`], to log and to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub from: NodeStatus,
    pub to: NodeStatus,
    pub reason: String,
}

/// Everything pgwarden keeps about one node.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub status: NodeStatus,
    pub last_status_change: DateTime<Utc>,
    pub live: LiveStatus,
    /// The last role a health check saw; kept while the node is unreachable.
    pub role: Role,
    pub observation: Option<Observation>,
    pub observed_at: Option<DateTime<Utc>>,
    /// When the check that made `observation` began.
    pub asked_at: Option<Instant>,
    pub last_error: Option<String>,
    pub stats: HealthStats,
    /// Why the status is what it is.
    pub status_reason: String,
}

impl NodeState {
    pub fn new(now: DateTime<Utc>) -> Self {
        NodeState {
            status: NodeStatus::Waiting,
            last_status_change: now,
            live: LiveStatus::Unknown,
            role: Role::Unknown,
            observation: None,
            observed_at: None,
            asked_at: None,
            last_error: None,
            stats: HealthStats::default(),
            status_reason: "configured".into(),
        }
    }

    /// Takes in a health-check cycle; returns the status change it caused, if any.
    pub fn apply(&mut self, cycle: CheckCycle, failover: FailoverFlag) -> Option<StatusChange> {
        self.stats.record(&cycle);
        let healthy = match &cycle.result {
            Ok(_) => true,
            Err(e) => e.alive,
        };
        let reason = match cycle.result {
            Ok(obs) => {
                self.live = LiveStatus::Up;
                self.role = obs.role();
                self.observation = Some(obs);
                self.observed_at = Some(cycle.finished_at);
                self.asked_at = Some(cycle.started);
                self.last_error = None;
                "health check succeeded".to_string()
            }
            Err(e) if e.alive => {
                // Alive and speaking the protocol; the last observation stays.
                self.live = LiveStatus::Up;
                let reason = format!("the server answers but refuses connections: {}", e.message);
                self.last_error = Some(e.message);
                reason
            }
            Err(e) => {
                self.live = LiveStatus::Down;
                let reason = format!(
                    "health check failed after {} attempt(s): {}",
                    cycle.retries + 1,
                    e.message
                );
                self.last_error = Some(e.message);
                reason
            }
        };
        let to = next_status(self.status, healthy, failover);
        if to == self.status {
            return None;
        }
        let change = StatusChange {
            from: self.status,
            to,
            reason,
        };
        self.status = to;
        self.last_status_change = cycle.finished_at;
        self.status_reason = change.reason.clone();
        Some(change)
    }
}

/// A node as the API and the CLI show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: u32,
    pub host: String,
    pub port: u16,
    pub data_dir: String,
    pub weight: f64,
    pub failover: FailoverFlag,
    pub application_name: String,
    /// pgwarden's status: up, down, waiting, unused.
    pub status: NodeStatus,
    pub last_status_change: DateTime<Utc>,
    /// Whether PostgreSQL answered the last health check.
    pub pg_status: LiveStatus,
    /// The role pgwarden holds the node to have (the last one seen).
    pub role: Role,
    /// The role the last health check saw; unknown while the node does not answer.
    pub pg_role: Role,
    pub timeline: Option<u32>,
    pub current_lsn: Option<Lsn>,
    pub receive_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    /// Bytes of WAL this standby has yet to replay to reach the primary's current position.
    pub lag_bytes: Option<u64>,
    /// Bytes of WAL this standby has yet to receive.
    pub receive_lag_bytes: Option<u64>,
    /// From the primary's `pg_stat_replication`: streaming, catchup, …
    pub replication_state: Option<String>,
    /// From the primary's `pg_stat_replication`: async, sync, potential, quorum.
    pub sync_state: Option<String>,
    pub server_version: Option<String>,
    pub observed_at: Option<DateTime<Utc>>,
    /// When the health check behind the positions above began: they are at least that
    /// recent (read-your-writes compares it with a session's commit; not shown).
    #[serde(skip)]
    pub asked_at: Option<Instant>,
    pub last_error: Option<String>,
    /// Why the status is what it is (the last status change's reason).
    pub status_reason: String,
    pub health_check: HealthStats,
}

/// One row of pgpool's health-check statistics (`SHOW POOL_HEALTH_CHECK_STATS`,
/// `pcp_health_check_stats`): its 20 fields, with the status and role names and the time
/// format of the caller (the two differ in small ways).
pub fn health_check_row(
    v: &NodeView,
    status: &str,
    role: &str,
    time: &dyn Fn(Option<DateTime<Utc>>) -> String,
) -> [String; 20] {
    let h = &v.health_check;
    [
        v.id.to_string(),
        v.host.clone(),
        v.port.to_string(),
        status.to_string(),
        role.to_string(),
        time(Some(v.last_status_change)),
        h.total_count.to_string(),
        h.success_count.to_string(),
        h.fail_count.to_string(),
        h.skip_count.to_string(),
        h.retry_count.to_string(),
        format!("{:.6}", h.average_retry_count),
        h.max_retry_count.to_string(),
        h.max_duration_ms.unwrap_or(0).to_string(),
        h.min_duration_ms.unwrap_or(0).to_string(),
        format!("{:.6}", h.average_duration_ms),
        time(h.last_health_check),
        time(h.last_successful_health_check),
        time(h.last_skip_health_check),
        time(h.last_failed_health_check),
    ]
}

/// The observation of a node that answers; `None` while it does not.
fn live_obs(s: &NodeState) -> Option<&Observation> {
    if s.live == LiveStatus::Up {
        s.observation.as_ref()
    } else {
        None
    }
}

/// Builds the views of all nodes. `states[i]` belongs to `backends[i]`; `primary` is the node
/// the warden holds to be the primary (`None`: none yet, then the lowest-numbered node that
/// answers as one serves as the reference for lag).
///
/// Lag is measured against the primary's last observed WAL position; replication state and
/// sync state come from the primary's `pg_stat_replication`, matched on `application_name`.
pub fn build_views(
    backends: &[Backend],
    states: &[NodeState],
    designated: Option<u32>,
) -> Vec<NodeView> {
    let primary = backends
        .iter()
        .zip(states)
        .filter_map(|(b, s)| live_obs(s).filter(|o| !o.in_recovery).map(|o| (b, o)))
        .filter(|(b, _)| designated.is_none_or(|p| p == b.id))
        .min_by_key(|(b, _)| b.id);
    let primary_lsn = primary.and_then(|(_, o)| o.current_lsn);

    backends
        .iter()
        .zip(states)
        .map(|(b, s)| {
            let obs = live_obs(s);
            let is_standby = obs.is_some_and(|o| o.in_recovery);
            let rep_row = primary.filter(|(pb, _)| pb.id != b.id).and_then(|(_, po)| {
                po.replication
                    .iter()
                    .find(|r| r.application_name == b.application_name)
            });
            let behind = |lsn: Option<Lsn>| match (is_standby, lsn, primary_lsn) {
                (true, Some(l), Some(p)) => Some(l.bytes_behind(p)),
                _ => None,
            };
            NodeView {
                id: b.id,
                host: b.host.clone(),
                port: b.port,
                data_dir: b.data_dir.display().to_string(),
                weight: b.weight,
                failover: b.failover,
                application_name: b.application_name.clone(),
                status: s.status,
                last_status_change: s.last_status_change,
                pg_status: s.live,
                role: match designated {
                    Some(p) if p == b.id => Role::Primary,
                    Some(_) if s.role != Role::Unknown => Role::Standby,
                    _ => s.role,
                },
                pg_role: obs.map_or(Role::Unknown, Observation::role),
                timeline: obs.and_then(|o| o.timeline),
                current_lsn: obs.and_then(|o| o.current_lsn),
                receive_lsn: obs.and_then(|o| o.receive_lsn),
                replay_lsn: obs.and_then(|o| o.replay_lsn),
                lag_bytes: behind(obs.and_then(|o| o.replay_lsn)),
                receive_lag_bytes: behind(obs.and_then(|o| o.receive_lsn)),
                replication_state: rep_row.and_then(|r| r.state.clone()),
                sync_state: rep_row.and_then(|r| r.sync_state.clone()),
                server_version: obs.and_then(|o| o.server_version.clone()),
                observed_at: s.observed_at,
                asked_at: obs.and(s.asked_at),
                last_error: s.last_error.clone(),
                status_reason: s.status_reason.clone(),
                health_check: s.stats.clone(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
