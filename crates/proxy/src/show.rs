//! pgpool-II's SHOW commands, answered by pgwarden on the simple-query path, with pgpool
//! 4.3's columns and value formats.

use crate::Ctx;
use bytes::BytesMut;
use chrono::{DateTime, Local, Utc};
use pgwarden_core::node::{NodeStatus, NodeView};
use pgwarden_wire::msg;
use std::sync::atomic::Ordering;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Nodes,
    Version,
    HealthCheckStats,
    BackendStats,
    Pools,
}

/// Recognises `SHOW POOL_…` (any case, optional semicolon).
pub fn parse(sql: &str) -> Option<Show> {
    // Every simple query is asked: most leave at their first word.
    let s = sql.trim_start();
    if !s
        .as_bytes()
        .get(..4)
        .is_some_and(|w| w.eq_ignore_ascii_case(b"show"))
    {
        return None;
    }
    let s = s.trim_end().trim_end_matches(';').trim_end();
    let mut words = s.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("show") {
        return None;
    }
    let name = words.next()?.to_ascii_lowercase();
    if words.next().is_some() {
        return None;
    }
    Some(match name.as_str() {
        "pool_nodes" => Show::Nodes,
        "pool_version" => Show::Version,
        "pool_health_check_stats" => Show::HealthCheckStats,
        "pool_backend_stats" => Show::BackendStats,
        "pool_pools" => Show::Pools,
        _ => return None,
    })
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.with_timezone(&Local).format("%F %T").to_string())
        .unwrap_or_default()
}

fn table(out: &mut BytesMut, columns: &[&str], rows: &[Vec<String>]) {
    msg::row_description(out, columns);
    for r in rows {
        let values: Vec<Option<&str>> = r.iter().map(|v| Some(v.as_str())).collect();
        msg::data_row(out, &values);
    }
    msg::command_complete(out, &format!("SELECT {}", rows.len()));
}

fn status(v: &NodeView) -> &'static str {
    v.status.as_str()
}

/// Writes the answer (without ReadyForQuery).
pub fn answer(ctx: &Ctx, cmd: Show, lb_node: Option<u32>, out: &mut BytesMut) {
    let views = ctx.monitor.views();
    match cmd {
        Show::Version => table(
            out,
            &["pool_version"],
            &[vec![format!(
                "pgwarden {} (pgpool-II 4.3 compatible)",
                env!("CARGO_PKG_VERSION")
            )]],
        ),
        Show::Nodes => {
            let total: f64 = views.iter().map(|v| v.weight).sum();
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|v| {
                    let stats = ctx.node_stats(v.id);
                    vec![
                        v.id.to_string(),
                        v.host.clone(),
                        v.port.to_string(),
                        status(v).into(),
                        v.pg_status.as_str().into(),
                        format!("{:.6}", if total > 0.0 { v.weight / total } else { 0.0 }),
                        v.role.as_str().into(),
                        v.pg_role.as_str().into(),
                        stats.select.load(Ordering::Relaxed).to_string(),
                        (lb_node == Some(v.id)).to_string(),
                        v.lag_bytes.unwrap_or(0).to_string(),
                        v.replication_state.clone().unwrap_or_default(),
                        v.sync_state.clone().unwrap_or_default(),
                        time(Some(v.last_status_change)),
                    ]
                })
                .collect();
            table(
                out,
                &[
                    "node_id",
                    "hostname",
                    "port",
                    "status",
                    "pg_status",
                    "lb_weight",
                    "role",
                    "pg_role",
                    "select_cnt",
                    "load_balance_node",
                    "replication_delay",
                    "replication_state",
                    "replication_sync_state",
                    "last_status_change",
                ],
                &rows,
            );
        }
        Show::HealthCheckStats => {
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|v| {
                    pgwarden_core::node::health_check_row(v, status(v), v.role.as_str(), &time)
                        .to_vec()
                })
                .collect();
            table(
                out,
                &[
                    "node_id",
                    "hostname",
                    "port",
                    "status",
                    "role",
                    "last_status_change",
                    "total_count",
                    "success_count",
                    "fail_count",
                    "skip_count",
                    "retry_count",
                    "average_retry_count",
                    "max_retry_count",
                    "max_duration",
                    "min_duration",
                    "average_duration",
                    "last_health_check",
                    "last_successful_health_check",
                    "last_skip_health_check",
                    "last_failed_health_check",
                ],
                &rows,
            );
        }
        Show::BackendStats => {
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|v| {
                    let s = ctx.node_stats(v.id);
                    let l =
                        |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed).to_string();
                    vec![
                        v.id.to_string(),
                        v.host.clone(),
                        v.port.to_string(),
                        status(v).into(),
                        v.role.as_str().into(),
                        l(&s.select),
                        l(&s.insert),
                        l(&s.update),
                        l(&s.delete),
                        l(&s.ddl),
                        l(&s.other),
                        l(&s.panic),
                        l(&s.fatal),
                        l(&s.error),
                    ]
                })
                .collect();
            table(
                out,
                &[
                    "node_id",
                    "hostname",
                    "port",
                    "status",
                    "role",
                    "select_cnt",
                    "insert_cnt",
                    "update_cnt",
                    "delete_cnt",
                    "ddl_cnt",
                    "other_cnt",
                    "panic_cnt",
                    "fatal_cnt",
                    "error_cnt",
                ],
                &rows,
            );
        }
        Show::Pools => {
            // pgpool's per-process columns make no sense here: one row per node and pool key.
            let mut rows: Vec<Vec<String>> = Vec::new();
            for v in &views {
                let pools: Vec<_> = ctx
                    .pools
                    .rows()
                    .into_iter()
                    .filter(|r| r.node == v.id)
                    .collect();
                let in_use = ctx.pools.in_use(v.id);
                if pools.is_empty() {
                    rows.push(vec![
                        v.id.to_string(),
                        v.host.clone(),
                        v.port.to_string(),
                        String::new(),
                        String::new(),
                        "0".into(),
                        in_use.to_string(),
                        ctx.pools.size().to_string(),
                        ctx.clients.load(Ordering::Relaxed).to_string(),
                    ]);
                }
                for p in pools {
                    rows.push(vec![
                        v.id.to_string(),
                        v.host.clone(),
                        v.port.to_string(),
                        p.database,
                        p.user,
                        p.idle.to_string(),
                        in_use.to_string(),
                        ctx.pools.size().to_string(),
                        ctx.clients.load(Ordering::Relaxed).to_string(),
                    ]);
                }
            }
            table(
                out,
                &[
                    "node_id",
                    "hostname",
                    "port",
                    "database",
                    "username",
                    "idle_connections",
                    "node_connections",
                    "pool_size",
                    "client_connections",
                ],
                &rows,
            );
        }
    }
    let _ = NodeStatus::Up;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_show_commands() {
        assert_eq!(parse("SHOW POOL_NODES"), Some(Show::Nodes));
        assert_eq!(parse("  show pool_nodes ;"), Some(Show::Nodes));
        assert_eq!(parse("Show Pool_Version"), Some(Show::Version));
        assert_eq!(
            parse("SHOW pool_health_check_stats"),
            Some(Show::HealthCheckStats)
        );
        assert_eq!(parse("SHOW pool_backend_stats"), Some(Show::BackendStats));
        assert_eq!(parse("SHOW pool_pools"), Some(Show::Pools));
        assert_eq!(parse("SHOW search_path"), None);
        assert_eq!(parse("SHOW pool_nodes extra"), None);
        assert_eq!(parse("SELECT 1"), None);
        assert_eq!(parse("\n\tSHOW POOL_NODES;\n"), Some(Show::Nodes));
        assert_eq!(parse("SHOWPOOL_NODES"), None);
        assert_eq!(parse("sho"), None);
        assert_eq!(parse(""), None);
    }
}
