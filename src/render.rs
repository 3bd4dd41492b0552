//! Tables for people. Scripts use `--json`.

use chrono::{DateTime, TimeZone, Utc};
use comfy_table::{presets, Cell, CellAlignment, ContentArrangement, Table};
use pgwarden_core::node::{LiveStatus, NodeStatus, NodeView, Role};
use std::fmt::Display;

/// A byte count the way people read it: exact below 1 KiB, one decimal above.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn time<Tz: TimeZone>(t: DateTime<Utc>, tz: &Tz) -> String
where
    Tz::Offset: Display,
{
    t.with_timezone(tz).format("%F %T").to_string()
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_string(), T::to_string)
}

fn new_table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::ASCII_MARKDOWN)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(Cell::new));
    t
}

/// `pgwarden node list`: one row per node, in the manner of `patronictl list`.
pub fn node_table<Tz: TimeZone>(nodes: &[NodeView], tz: &Tz) -> String
where
    Tz::Offset: Display,
{
    let mut t = new_table(&[
        "Node",
        "Host",
        "Port",
        "Role",
        "Status",
        "PG status",
        "PG role",
        "TL",
        "Lag",
        "Replication",
        "Sync",
        "Last change",
    ]);
    for n in nodes {
        let lag = match (n.pg_role, n.lag_bytes) {
            (Role::Standby, Some(b)) => bytes(b),
            _ => "-".into(),
        };
        t.add_row(vec![
            Cell::new(n.id).set_alignment(CellAlignment::Right),
            Cell::new(&n.host),
            Cell::new(n.port).set_alignment(CellAlignment::Right),
            Cell::new(n.role.as_str()),
            Cell::new(n.status.as_str()),
            Cell::new(n.pg_status.as_str()),
            Cell::new(n.pg_role.as_str()),
            Cell::new(opt(&n.timeline)).set_alignment(CellAlignment::Right),
            Cell::new(lag).set_alignment(CellAlignment::Right),
            Cell::new(opt(&n.replication_state)),
            Cell::new(opt(&n.sync_state)),
            Cell::new(time(n.last_status_change, tz)),
        ]);
    }
    let mut out = t.to_string();
    out.push('\n');
    let problems: Vec<String> = nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Down || n.pg_status == LiveStatus::Down)
        .map(|n| {
            format!(
                "node {}: {}{}",
                n.id,
                if n.status == NodeStatus::Down && n.pg_status == LiveStatus::Up {
                    "out of service, although it answers again (a failed node is never put back by a health check)"
                        .to_string()
                } else {
                    "does not answer".to_string()
                },
                n.last_error
                    .as_ref()
                    .map(|e| format!(" — {e}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    for p in problems {
        out.push_str(&p);
        out.push('\n');
    }
    out
}

/// One row of `pgwarden sandbox status`.
pub struct SandboxRow {
    pub id: u16,
    pub port: u16,
    pub role: String,
    pub status: String,
    pub data_dir: String,
}

pub fn sandbox_table(rows: &[SandboxRow]) -> String {
    let mut t = new_table(&["Node", "Port", "Role", "Status", "Data directory"]);
    for r in rows {
        t.add_row(vec![
            Cell::new(r.id).set_alignment(CellAlignment::Right),
            Cell::new(r.port).set_alignment(CellAlignment::Right),
            Cell::new(&r.role),
            Cell::new(&r.status),
            Cell::new(&r.data_dir),
        ]);
    }
    format!("{t}\n")
}

/// The event history, one line each: sequence, local time, kind, node, message.
pub fn event_lines<Tz: chrono::TimeZone>(
    events: &[pgwarden_core::cluster::Event],
    tz: &Tz,
) -> String
where
    Tz::Offset: std::fmt::Display,
{
    let mut out = String::new();
    for e in events {
        out.push_str(&format!(
            "{:>5}  {}  {:<10} {:<7} {}\n",
            e.seq,
            e.at.with_timezone(tz).format("%Y-%m-%d %H:%M:%S%.3f"),
            e.kind,
            e.node.map_or("-".to_string(), |n| format!("node {n}")),
            e.message
        ));
    }
    if events.is_empty() {
        out.push_str("no events\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use pgwarden_core::config::FailoverFlag;
    use pgwarden_core::node::HealthStats;

    fn view(id: u32, role: Role, status: NodeStatus, live: LiveStatus) -> NodeView {
        let up = live == LiveStatus::Up;
        NodeView {
            id,
            host: "127.0.0.1".into(),
            port: 11002 + id as u16,
            data_dir: format!("/srv/sb/data{id}"),
            weight: 1.0,
            failover: FailoverFlag::Allow,
            application_name: format!("node{id}"),
            status,
            last_status_change: Utc.with_ymd_and_hms(2026, 11, 22, 3, 4, 5).unwrap(),
            pg_status: live,
            role,
            pg_role: if up { role } else { Role::Unknown },
            timeline: up.then_some(1),
            current_lsn: None,
            receive_lsn: None,
            replay_lsn: None,
            lag_bytes: (up && role == Role::Standby).then_some(1536 * id as u64),
            receive_lag_bytes: None,
            replication_state: (up && role == Role::Standby).then(|| "streaming".into()),
            sync_state: (up && role == Role::Standby).then(|| "async".into()),
            server_version: None,
            observed_at: None,
            asked_at: None,
            last_error: (!up)
                .then(|| "cannot connect to 127.0.0.1:11004: connection refused".into()),
            status_reason: String::new(),
            health_check: HealthStats::default(),
        }
    }

    #[test]
    fn node_list_table() {
        let nodes = [
            view(0, Role::Primary, NodeStatus::Up, LiveStatus::Up),
            view(1, Role::Standby, NodeStatus::Up, LiveStatus::Up),
            view(2, Role::Standby, NodeStatus::Down, LiveStatus::Down),
            view(3, Role::Standby, NodeStatus::Down, LiveStatus::Up),
        ];
        insta::assert_snapshot!(node_table(&nodes, &Utc));
    }

    #[test]
    fn byte_counts() {
        for (n, s) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (5 * 1024 * 1024, "5.0 MiB"),
            (u64::MAX, "16384.0 PiB"),
        ] {
            assert_eq!(bytes(n), s);
        }
    }
}
