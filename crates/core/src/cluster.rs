//! The cluster as the warden keeps it: which node is the primary, the failover generation, each
//! node's status — the state that must survive a crash of pgwarden — and the decisions taken
//! over it: whether to adopt a primary, fail over and to whom, which node is a false primary,
//! and whether an attach, detach or promotion asked for by hand is safe.
//!
//! Everything is a plain function of what was observed; the controller does the I/O.

use crate::config::FailoverFlag;
use crate::node::{LiveStatus, NodeStatus};
use crate::Lsn;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// What is written to the state file, atomically, on every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ClusterState {
    /// Bumped by every failover, promotion and switchover.
    pub generation: u64,
    /// The node that takes writes. `None` while there is none (before the first one is
    /// adopted, or between fencing a failed primary and promoting its successor).
    pub primary: Option<u32>,
    pub nodes: BTreeMap<u32, NodeRecord>,
    /// Synchronous mode: the standbys that may hold commits acknowledged to clients — the
    /// synchronous standby, and while it is being replaced, its successor too. Only these may
    /// be promoted, and only when every one of them can be reached (the one with the most WAL
    /// then has every acknowledged commit).
    #[serde(default)]
    pub sync_standbys: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub status: NodeStatus,
    pub since: DateTime<Utc>,
    pub reason: String,
}

/// A node's status as a restarted warden starts it: a node that was down stays down (never
/// re-attached by a restart); every other one is checked again before it gets traffic.
pub fn status_after_restart(saved: Option<&NodeRecord>) -> NodeStatus {
    match saved.map(|r| r.status) {
        Some(NodeStatus::Down) => NodeStatus::Down,
        Some(NodeStatus::Unused) => NodeStatus::Unused,
        _ => NodeStatus::Waiting,
    }
}

/// What the controller knows of one node when it decides.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFacts {
    pub id: u32,
    pub status: NodeStatus,
    pub live: LiveStatus,
    /// From the last successful check; `None` when the node was never seen.
    pub in_recovery: Option<bool>,
    /// How far its WAL goes: a primary's current position, a standby's received (or replayed)
    /// position.
    pub lsn: Option<Lsn>,
    pub timeline: Option<u32>,
    pub failover: FailoverFlag,
    pub priority: u32,
}

impl NodeFacts {
    fn answers(&self) -> bool {
        self.live == LiveStatus::Up
    }
    fn is_live_primary(&self) -> bool {
        self.answers() && self.in_recovery == Some(false)
    }
    fn is_live_standby(&self) -> bool {
        self.answers() && self.in_recovery == Some(true)
    }
}

/// The next thing the controller should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Nothing,
    /// No primary is recorded yet and exactly one node is one: take it.
    Adopt {
        primary: u32,
    },
    /// These nodes are not in recovery, yet are not the primary: keep them out of service.
    FenceFalsePrimaries {
        nodes: Vec<u32>,
    },
    /// The primary failed: promote `promote`.
    Failover {
        failed: Option<u32>,
        promote: u32,
    },
    /// Something needs a human; the reason says what.
    Stuck {
        reason: String,
    },
}

/// Decides what to do next. `auto_failover` off: a failed primary is fenced but nobody is
/// promoted. `synchronous`: synchronous mode, where only `state.sync_standbys` may be promoted.
pub fn decide(
    state: &ClusterState,
    nodes: &[NodeFacts],
    auto_failover: bool,
    synchronous: bool,
) -> Decision {
    let false_primaries: Vec<u32> = nodes
        .iter()
        .filter(|n| {
            n.is_live_primary()
                && Some(n.id) != state.primary
                && n.status != NodeStatus::Down
                && n.status != NodeStatus::Unused
        })
        .map(|n| n.id)
        .collect();

    match state.primary {
        Some(p) => {
            let Some(primary) = nodes.iter().find(|n| n.id == p) else {
                return Decision::Stuck {
                    reason: format!("the recorded primary, node {p}, is not in the configuration"),
                };
            };
            if !false_primaries.is_empty() {
                return Decision::FenceFalsePrimaries {
                    nodes: false_primaries,
                };
            }
            if primary.status != NodeStatus::Down {
                return Decision::Nothing;
            }
            if !auto_failover {
                return Decision::Stuck {
                    reason: format!("primary node {p} failed and failover.auto is off: promote a standby with `pgwarden node promote N`"),
                };
            }
            match failover_candidate(state, nodes, synchronous) {
                Ok(c) => Decision::Failover {
                    failed: Some(p),
                    promote: c,
                },
                Err(reason) => Decision::Stuck {
                    reason: format!("primary node {p} failed and {reason}"),
                },
            }
        }
        None => {
            // Wait until every node in play has been checked once.
            let unchecked = nodes
                .iter()
                .any(|n| n.status == NodeStatus::Waiting && n.live == LiveStatus::Unknown);
            if unchecked {
                return Decision::Nothing;
            }
            let primaries: Vec<u32> = nodes
                .iter()
                .filter(|n| {
                    n.is_live_primary()
                        && n.status != NodeStatus::Down
                        && n.status != NodeStatus::Unused
                })
                .map(|n| n.id)
                .collect();
            match primaries.as_slice() {
                [one] => Decision::Adopt { primary: *one },
                [] if state.generation > 0 && auto_failover => {
                    // A failover was under way (pgwarden stopped between fencing and
                    // promoting): finish it.
                    match failover_candidate(state, nodes, synchronous) {
                        Ok(c) => Decision::Failover {
                            failed: None,
                            promote: c,
                        },
                        Err(reason) => Decision::Stuck {
                            reason: format!("there is no primary and {reason}"),
                        },
                    }
                }
                [] => Decision::Stuck {
                    reason: "no node in service is a primary (not in recovery); start the primary, or promote a standby with `pgwarden node promote N`".into(),
                },
                many => Decision::Stuck {
                    reason: format!(
                        "nodes {} are all primaries (not in recovery); pgwarden will not choose between them: detach the false ones with `pgwarden node detach N`",
                        join_ids(many)
                    ),
                },
            }
        }
    }
}

fn join_ids(ids: &[u32]) -> String {
    ids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The failover candidate, honouring synchronous mode: when standbys may hold acknowledged
/// commits (`state.sync_standbys`), one of them is promoted, and only if all of them answer —
/// otherwise the one that does not might be the only one with some commit.
pub fn failover_candidate(
    state: &ClusterState,
    nodes: &[NodeFacts],
    synchronous: bool,
) -> Result<u32, String> {
    if !synchronous || state.sync_standbys.is_empty() {
        return choose_candidate(nodes, None);
    }
    let unreachable: Vec<u32> = state
        .sync_standbys
        .iter()
        .copied()
        .filter(|id| !nodes.iter().any(|n| n.id == *id && n.is_live_standby()))
        .collect();
    if !unreachable.is_empty() {
        return Err(format!(
            "synchronous standby node(s) {} cannot be reached: they may hold acknowledged commits no other node has. Bring them back, or promote a standby by hand with --force (commits may be lost)",
            join_ids(&unreachable)
        ));
    }
    choose_candidate(nodes, Some(&state.sync_standbys))
}

/// What synchronous mode needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncPlan {
    /// The synchronous standby is in place (or nothing can be done).
    Keep,
    /// Make `new` the synchronous standby (replacing `old`, if any).
    Designate { old: Option<u32>, new: u32 },
    /// No standby can be synchronous and the fallback is asynchronous: let commits go on.
    Release,
    /// No standby can be synchronous and commits must wait: name a standby that does not
    /// exist, so that they do.
    Block,
}

/// Synchronous mode's next step. `streaming`: the standbys the primary reports streaming.
/// `blocking`: the primary's synchronous_standby_names currently names no real standby.
pub fn sync_plan(
    state: &ClusterState,
    nodes: &[NodeFacts],
    streaming: &[u32],
    fallback: crate::config::SyncFallback,
    blocking: bool,
) -> SyncPlan {
    let current = state.sync_standbys.first().copied();
    let healthy = |id: u32| {
        nodes
            .iter()
            .any(|n| n.id == id && n.status == NodeStatus::Up && n.is_live_standby())
            && streaming.contains(&id)
    };
    if state.sync_standbys.len() == 1 && current.is_some_and(healthy) {
        return SyncPlan::Keep;
    }
    let mut candidates: Vec<&NodeFacts> = nodes
        .iter()
        .filter(|n| Some(n.id) != state.primary && healthy(n.id))
        .collect();
    candidates.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
    match candidates.first() {
        Some(n) => SyncPlan::Designate {
            old: current.filter(|c| *c != n.id),
            new: n.id,
        },
        None => match fallback {
            crate::config::SyncFallback::Async if !state.sync_standbys.is_empty() || blocking => {
                SyncPlan::Release
            }
            crate::config::SyncFallback::Block if state.sync_standbys.is_empty() && !blocking => {
                SyncPlan::Block
            }
            _ => SyncPlan::Keep,
        },
    }
}

/// The standby a failover promotes: in service, answering, in recovery, allowed to fail over;
/// the one that has the most WAL, then the highest priority, then the lowest id. `only` limits
/// the choice (synchronous mode: the synchronous standbys).
pub fn choose_candidate(nodes: &[NodeFacts], only: Option<&[u32]>) -> Result<u32, String> {
    let mut candidates: Vec<&NodeFacts> = nodes
        .iter()
        .filter(|n| {
            n.status == NodeStatus::Up
                && n.is_live_standby()
                && n.failover == FailoverFlag::Allow
                && only.is_none_or(|o| o.contains(&n.id))
        })
        .collect();
    candidates.sort_by(|a, b| {
        b.lsn
            .cmp(&a.lsn)
            .then(b.priority.cmp(&a.priority))
            .then(a.id.cmp(&b.id))
    });
    match candidates.first() {
        Some(c) => Ok(c.id),
        None => Err(match only {
            Some(_) => "no synchronous standby is in service to promote".to_string(),
            None => "no standby is in service to promote (a standby must be up, answering, in recovery and allowed to fail over)".to_string(),
        }),
    }
}

/// Whether node `id` may be put back into service by hand (`pgwarden node attach`,
/// `pcp_attach_node`).
pub fn check_attach(state: &ClusterState, nodes: &[NodeFacts], id: u32) -> Result<(), String> {
    let Some(n) = nodes.iter().find(|n| n.id == id) else {
        return Err(format!("node {id} is not configured"));
    };
    if n.status == NodeStatus::Up || n.status == NodeStatus::Waiting {
        return Err(format!(
            "node {id} is already in service ({})",
            n.status.as_str()
        ));
    }
    if n.in_recovery == Some(false) && n.answers() {
        match state.primary {
            Some(p) if p != id => {
                return Err(format!(
                    "node {id} is a false primary: it is not in recovery, but node {p} is the primary (generation {}). Attaching it would mean two primaries; rebuild it as a standby with `pgwarden node recover {id}`",
                    state.generation
                ))
            }
            _ => {}
        }
    }
    if let (Some(tl), Some(p)) = (n.timeline, state.primary) {
        let primary_tl = nodes.iter().find(|x| x.id == p).and_then(|x| x.timeline);
        if let Some(ptl) = primary_tl {
            if n.in_recovery == Some(true) && tl < ptl && n.id != p {
                return Err(format!("node {id} is on timeline {tl} but the primary is on {ptl}: it has not followed the new primary (it may have diverged); rebuild it with `pgwarden node recover {id}`"));
            }
        }
    }
    Ok(())
}

/// Whether node `id` may be taken out of service by hand. Detaching the primary starts a
/// failover (pgpool's meaning), so there must be a standby to promote.
pub fn check_detach(
    state: &ClusterState,
    nodes: &[NodeFacts],
    id: u32,
    auto_failover: bool,
) -> Result<(), String> {
    let Some(n) = nodes.iter().find(|n| n.id == id) else {
        return Err(format!("node {id} is not configured"));
    };
    if n.status == NodeStatus::Down || n.status == NodeStatus::Unused {
        return Err(format!(
            "node {id} is already out of service ({})",
            n.status.as_str()
        ));
    }
    let others_in_service = nodes
        .iter()
        .filter(|x| x.id != id && matches!(x.status, NodeStatus::Up | NodeStatus::Waiting))
        .count();
    if others_in_service == 0 {
        return Err(format!(
            "node {id} is the last node in service; detaching it would leave clients nothing"
        ));
    }
    if state.primary == Some(id) {
        if !auto_failover {
            return Err(format!("node {id} is the primary and failover.auto is off: detaching it would leave no primary; use `pgwarden switchover --to N`"));
        }
        let others: Vec<NodeFacts> = nodes.iter().filter(|x| x.id != id).cloned().collect();
        failover_candidate(state, &others, !state.sync_standbys.is_empty()).map_err(|r| {
            format!("node {id} is the primary and detaching it starts a failover, but {r}")
        })?;
    }
    Ok(())
}

/// Whether node `id` may be promoted by hand. Without `force`: it must be a standby in service,
/// the primary must not be healthy (that is a switchover), and no other standby may have more
/// WAL (promoting it would lose what the others have).
pub fn check_promote(
    state: &ClusterState,
    nodes: &[NodeFacts],
    id: u32,
    force: bool,
) -> Result<(), String> {
    let Some(n) = nodes.iter().find(|n| n.id == id) else {
        return Err(format!("node {id} is not configured"));
    };
    if state.primary == Some(id) {
        return Err(format!("node {id} is already the primary"));
    }
    if !n.is_live_standby() {
        return Err(format!(
            "node {id} is not a standby that answers (pg_status {}, in recovery: {})",
            n.live.as_str(),
            n.in_recovery.map_or("unknown".into(), |r| r.to_string())
        ));
    }
    if n.status != NodeStatus::Up && !force {
        return Err(format!(
            "node {id} is not in service ({}); attach it first, or use --force",
            n.status.as_str()
        ));
    }
    if let Some(p) = state.primary {
        let healthy = nodes
            .iter()
            .any(|x| x.id == p && x.status == NodeStatus::Up && x.is_live_primary());
        if healthy && !force {
            return Err(format!("node {p} is the primary and is healthy: promoting node {id} now would lose the writes it has not received; use `pgwarden switchover --to {id}` (or --force to fence node {p} and promote anyway)"));
        }
    }
    if !force {
        if let Some(best) = nodes
            .iter()
            .filter(|x| x.id != id && x.status == NodeStatus::Up && x.is_live_standby())
            .max_by_key(|x| x.lsn)
        {
            if best.lsn > n.lsn {
                return Err(format!(
                    "node {id} is behind node {} ({} vs {}): promoting it would lose WAL the other has; promote node {} or use --force",
                    best.id,
                    n.lsn.map_or("unknown".into(), |l| l.to_string()),
                    best.lsn.map_or("unknown".into(), |l| l.to_string()),
                    best.id
                ));
            }
        }
    }
    Ok(())
}

/// Whether a planned switchover to `to` may start: a healthy primary, and `to` a standby in
/// service that streams from it (`streaming`, from the primary's pg_stat_replication).
pub fn check_switchover(
    state: &ClusterState,
    nodes: &[NodeFacts],
    to: u32,
    streaming: bool,
) -> Result<u32, String> {
    let Some(n) = nodes.iter().find(|n| n.id == to) else {
        return Err(format!("node {to} is not configured"));
    };
    let Some(p) = state.primary else {
        return Err("there is no primary to switch over from (a failover may be under way)".into());
    };
    if p == to {
        return Err(format!("node {to} is already the primary"));
    }
    let primary_ok = nodes
        .iter()
        .any(|x| x.id == p && x.status == NodeStatus::Up && x.is_live_primary());
    if !primary_ok {
        return Err(format!(
            "the primary, node {p}, is not healthy: a switchover needs it to hand over cleanly; use `pgwarden node promote {to}`"
        ));
    }
    if n.status != NodeStatus::Up || !n.is_live_standby() {
        return Err(format!(
            "node {to} is not a standby in service ({}, pg_status {})",
            n.status.as_str(),
            n.live.as_str()
        ));
    }
    if n.failover == FailoverFlag::Disallow {
        return Err(format!(
            "node {to} is flagged failover = \"disallow\": pgwarden does not promote it"
        ));
    }
    if !streaming {
        return Err(format!(
            "node {to} is not streaming from the primary, node {p}: it would have to catch up first"
        ));
    }
    Ok(p)
}

/// One entry of the event history (`GET /v1/events`, `pgwarden events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub at: DateTime<Utc>,
    /// status, failover, promote, fence, follow, attach, detach, switchover, hook, adopt, error
    pub kind: String,
    pub node: Option<u32>,
    pub message: String,
}

/// A bounded history of events: the oldest go when it is full.
#[derive(Debug, Clone)]
pub struct EventLog {
    cap: usize,
    next_seq: u64,
    events: VecDeque<Event>,
}

impl EventLog {
    pub fn new(cap: usize) -> Self {
        EventLog {
            cap: cap.max(1),
            next_seq: 1,
            events: VecDeque::new(),
        }
    }

    pub fn push(
        &mut self,
        at: DateTime<Utc>,
        kind: &str,
        node: Option<u32>,
        message: String,
    ) -> &Event {
        if self.events.len() == self.cap {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            seq: self.next_seq,
            at,
            kind: kind.to_string(),
            node,
            message,
        });
        self.next_seq += 1;
        self.events.back().expect("just pushed")
    }

    /// Events with a sequence number greater than `after`, oldest first.
    pub fn since(&self, after: u64) -> Vec<Event> {
        self.events
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect()
    }
}

/// pgpool's %-placeholders in failover_command and follow_primary_command.
#[derive(Debug, Clone, Default)]
pub struct HookArgs {
    /// %d %h %p %D: the failed (or, for follow_primary_command, the following) node.
    pub node: Option<HookNode>,
    /// %m %H %r %R: the new main (primary) node.
    pub new_main: Option<HookNode>,
    /// %M: the old main node id.
    pub old_main: Option<u32>,
    /// %P %N %S: the old primary.
    pub old_primary: Option<HookNode>,
}

#[derive(Debug, Clone)]
pub struct HookNode {
    pub id: u32,
    pub host: String,
    pub port: u16,
    pub data_dir: String,
}

/// Expands pgpool's placeholders. A node that is not known gives `""` (as pgpool does); an
/// unknown placeholder is left as it is.
pub fn expand_hook(command: &str, a: &HookArgs) -> String {
    let mut out = String::with_capacity(command.len() + 32);
    let mut chars = command.chars();
    let id = |n: &Option<HookNode>| n.as_ref().map_or(String::new(), |n| n.id.to_string());
    while let Some(ch) = chars.next() {
        if ch != '%' {
            out.push(ch);
            continue;
        }
        let Some(code) = chars.next() else {
            out.push('%');
            break;
        };
        let value = match code {
            'd' => id(&a.node),
            'h' => a.node.as_ref().map_or(String::new(), |n| n.host.clone()),
            'p' => a
                .node
                .as_ref()
                .map_or(String::new(), |n| n.port.to_string()),
            'D' => a
                .node
                .as_ref()
                .map_or(String::new(), |n| n.data_dir.clone()),
            'm' => id(&a.new_main),
            'H' => a
                .new_main
                .as_ref()
                .map_or(String::new(), |n| n.host.clone()),
            'r' => a
                .new_main
                .as_ref()
                .map_or(String::new(), |n| n.port.to_string()),
            'R' => a
                .new_main
                .as_ref()
                .map_or(String::new(), |n| n.data_dir.clone()),
            'M' => a.old_main.map_or(String::new(), |i| i.to_string()),
            'P' => id(&a.old_primary),
            'N' => a
                .old_primary
                .as_ref()
                .map_or(String::new(), |n| n.host.clone()),
            'S' => a
                .old_primary
                .as_ref()
                .map_or(String::new(), |n| n.port.to_string()),
            '%' => "%".to_string(),
            other => {
                out.push('%');
                out.push(other);
                continue;
            }
        };
        out.push_str(&value);
    }
    out
}

/// Rewrites a standby's `primary_conninfo` to point at another host and port, keeping every
/// other setting (user, password file, application_name, SSL options) as it was.
pub fn repoint_conninfo(conninfo: &str, host: &str, port: u16) -> String {
    let mut parts: Vec<(String, String)> = parse_conninfo(conninfo)
        .into_iter()
        .filter(|(k, _)| k != "host" && k != "port" && k != "hostaddr")
        .collect();
    parts.insert(0, ("port".into(), port.to_string()));
    parts.insert(0, ("host".into(), host.to_string()));
    parts
        .iter()
        .map(|(k, v)| format!("{k}={}", quote_conninfo(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sets (or adds) one setting of a conninfo string, keeping the others.
pub fn conninfo_set(conninfo: &str, key: &str, value: &str) -> String {
    let mut parts = parse_conninfo(conninfo);
    match parts.iter_mut().find(|(k, _)| k == key) {
        Some(p) => p.1 = value.to_string(),
        None => parts.push((key.to_string(), value.to_string())),
    }
    parts
        .iter()
        .map(|(k, v)| format!("{k}={}", quote_conninfo(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// libpq's `key=value` conninfo syntax, values optionally in single quotes with `\` escapes.
pub fn parse_conninfo(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            break;
        }
        chars.next();
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                    continue;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key, value));
    }
    out
}

fn quote_conninfo(v: &str) -> String {
    if !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return v.to_string();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests;
