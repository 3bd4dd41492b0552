//! pgpool-II's SHOW commands, answered by pgwarden with pgpool 4.3's columns and value
//! formats: in a simple Query, and as prepared statements of the extended protocol (`Own`).

use crate::Ctx;
use bytes::BytesMut;
use chrono::{DateTime, Local, Utc};
use pgwarden_core::node::NodeView;
use pgwarden_wire::frame::Frame;
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

/// A command's result: its columns (text) and rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub columns: &'static [&'static str],
    pub rows: Vec<Vec<String>>,
}

fn rows_only(out: &mut BytesMut, rows: &[Vec<String>]) {
    for r in rows {
        let values: Vec<Option<&str>> = r.iter().map(|v| Some(v.as_str())).collect();
        msg::data_row(out, &values);
    }
}

fn data_rows(out: &mut BytesMut, rows: &[Vec<String>]) {
    rows_only(out, rows);
    msg::command_complete(out, &format!("SELECT {}", rows.len()));
}

fn status(v: &NodeView) -> &'static str {
    v.status.as_str()
}

/// Writes the answer to a simple Query (without ReadyForQuery).
pub fn answer(ctx: &Ctx, cmd: Show, lb_node: Option<u32>, out: &mut BytesMut) {
    let t = result(ctx, cmd, lb_node);
    msg::row_description(out, t.columns);
    data_rows(out, &t.rows);
}

/// The columns a command returns.
pub fn columns(cmd: Show) -> &'static [&'static str] {
    match cmd {
        Show::Version => &["pool_version"],
        Show::Nodes => &[
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
        Show::HealthCheckStats => &[
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
        Show::BackendStats => &[
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
        // pgpool's per-process columns make no sense here: one row per node and pool key.
        Show::Pools => &[
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
    }
}

/// A command's result now.
pub fn result(ctx: &Ctx, cmd: Show, lb_node: Option<u32>) -> Table {
    let views = ctx.monitor.views();
    let rows = match cmd {
        Show::Version => vec![vec![format!(
            "pgwarden {} (pgpool-II 4.3 compatible)",
            env!("CARGO_PKG_VERSION")
        )]],
        Show::Nodes => {
            let total: f64 = views.iter().map(|v| v.weight).sum();
            views
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
                .collect()
        }
        Show::HealthCheckStats => views
            .iter()
            .map(|v| {
                pgwarden_core::node::health_check_row(v, status(v), v.role.as_str(), &time).to_vec()
            })
            .collect(),
        Show::BackendStats => views
            .iter()
            .map(|v| {
                let s = ctx.node_stats(v.id);
                let l = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed).to_string();
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
            .collect(),
        Show::Pools => {
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
            rows
        }
    };
    Table {
        columns: columns(cmd),
        rows,
    }
}

/// pgwarden's own statements and portals: `SHOW POOL_…` prepared with the extended protocol
/// (psycopg once a query has run `prepare_threshold` times, asyncpg and JDBC always), which
/// pgwarden answers itself, as it answers a simple Query.
#[derive(Debug, Default)]
pub struct Own {
    statements: Vec<(String, Show)>,
    portals: Vec<(String, Portal)>,
}

#[derive(Debug, Clone)]
struct Portal {
    cmd: Show,
    formats: Vec<i16>,
    /// Made at the first Execute; what is left of it after an Execute with a row limit.
    rows: Option<std::collections::VecDeque<Vec<String>>>,
}

/// Whether a Parse's text (in the client's encoding: its first bytes are ASCII in any) may be
/// one of pgpool's SHOW commands: the cheap look before `parse`.
pub fn may_be_show(query: &[u8]) -> bool {
    let at = query
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(query.len());
    query
        .get(at..at + 4)
        .is_some_and(|w| w.eq_ignore_ascii_case(b"show"))
}

impl Own {
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty() && self.portals.is_empty()
    }

    /// Whether a frame of a batch names one of pgwarden's statements or portals.
    fn names_own(&self, f: &Frame) -> bool {
        let statement = |n: &str| self.statements.iter().any(|(s, _)| s == n);
        let portal = |n: &str| self.portals.iter().any(|(p, _)| p == n);
        match f.tag {
            b'B' => msg::bind_names(f.body()).is_ok_and(|(_, s)| statement(s)),
            b'D' | b'C' => match msg::target(f.body(), "Describe") {
                Ok((b'S', n)) => statement(n),
                Ok((_, n)) => portal(n),
                Err(_) => false,
            },
            b'E' => msg::execute(f.body()).is_ok_and(|(p, _)| portal(p)),
            _ => false,
        }
    }

    /// Whether the batch may be pgwarden's to answer (`answer`): it parses a SHOW, or names
    /// a statement or portal of pgwarden's (`own`, if the session has made any).
    pub fn may_answer(own: Option<&Own>, frames: &[Frame]) -> bool {
        frames.iter().any(|f| match f.tag {
            b'P' => msg::parse(f.body()).is_ok_and(|p| may_be_show(p.query)),
            _ => own.is_some_and(|o| !o.is_empty() && o.names_own(f)),
        })
    }

    pub fn has_statement(&self, name: &str) -> bool {
        self.statement(name).is_some()
    }

    /// Answers a batch (up to its Sync or Flush) made only of pgwarden's statements and
    /// portals, as a server would: ParseComplete, BindComplete, the descriptions, rows
    /// (`table` makes them at a portal's first Execute; a row limit suspends the portal) and
    /// CloseComplete, and ReadyForQuery with `status` at a Sync. `None`, and nothing
    /// changed, for a batch that holds anything else: the server's to answer.
    pub fn answer(
        &mut self,
        frames: &[Frame],
        enc: pgwarden_sql::TextEncoding,
        status: u8,
        mut table: impl FnMut(Show) -> Table,
    ) -> Option<BytesMut> {
        let mut next = Own {
            statements: self.statements.clone(),
            portals: self.portals.clone(),
        };
        let mut out = BytesMut::new();
        let mut any = false;
        for f in frames {
            let body = f.body();
            match f.tag {
                b'P' => {
                    let p = msg::parse(body).ok()?;
                    if p.param_types != 0 || !may_be_show(p.query) {
                        return None;
                    }
                    let cmd = parse(&pgwarden_sql::server_text(p.query, enc))?;
                    next.statements.retain(|(n, _)| n != p.name);
                    next.statements.push((p.name.to_string(), cmd));
                    msg::empty(&mut out, b'1');
                }
                b'B' => {
                    let b = msg::bind(body).ok()?;
                    let cmd = next.statement(b.statement)?;
                    if b.params != 0 {
                        return None;
                    }
                    next.portals.retain(|(n, _)| n != b.portal);
                    next.portals.push((
                        b.portal.to_string(),
                        Portal {
                            cmd,
                            formats: b.result_formats,
                            rows: None,
                        },
                    ));
                    msg::empty(&mut out, b'2');
                }
                b'D' => match msg::target(body, "Describe").ok()? {
                    (b'S', n) => {
                        let cmd = next.statement(n)?;
                        msg::no_parameters(&mut out);
                        msg::row_description(&mut out, columns(cmd));
                    }
                    (_, n) => {
                        let p = next.portal(n)?;
                        msg::row_description_in(&mut out, columns(p.cmd), &p.formats);
                    }
                },
                b'E' => {
                    let (n, max) = msg::execute(body).ok()?;
                    let p = next.portal(n)?;
                    let rows = p
                        .rows
                        .get_or_insert_with(|| table(p.cmd).rows.into_iter().collect());
                    let limit = usize::try_from(max).ok().filter(|m| *m > 0);
                    let take = limit.map_or(rows.len(), |m| m.min(rows.len()));
                    let batch: Vec<Vec<String>> = rows.drain(..take).collect();
                    if limit.is_some_and(|m| m == take) && !rows.is_empty() {
                        rows_only(&mut out, &batch);
                        msg::empty(&mut out, b's');
                    } else {
                        data_rows(&mut out, &batch);
                    }
                }
                b'C' => {
                    match msg::target(body, "Close").ok()? {
                        (b'S', n) => {
                            next.statement(n)?;
                            next.statements.retain(|(s, _)| s != n);
                        }
                        (_, n) => {
                            next.portal(n)?;
                            next.portals.retain(|(p, _)| p != n);
                        }
                    }
                    msg::empty(&mut out, b'3');
                }
                b'S' => {
                    // A transaction's end closes its portals; an explicit one's go on.
                    if status == b'I' {
                        next.portals.clear();
                    }
                    msg::ready_for_query(&mut out, status);
                    continue;
                }
                b'H' => continue,
                _ => return None,
            }
            any = true;
        }
        if !any {
            return None;
        }
        *self = next;
        Some(out)
    }

    fn statement(&self, name: &str) -> Option<Show> {
        self.statements
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| *c)
    }

    fn portal(&mut self, name: &str) -> Option<&mut Portal> {
        self.portals
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p)
    }

    /// A batch the server answers: a statement or portal it names anew (Parse, Bind) or
    /// closes is no longer pgwarden's; at its Sync outside a transaction (`idle`), the
    /// portals end.
    pub fn forget(&mut self, frames: &[Frame], idle: bool) {
        for f in frames {
            let body = f.body();
            match f.tag {
                b'P' => {
                    if let Ok(p) = msg::parse(body) {
                        self.statements.retain(|(n, _)| n != p.name);
                    }
                }
                b'B' => {
                    if let Ok((portal, _)) = msg::bind_names(body) {
                        self.portals.retain(|(n, _)| n != portal);
                    }
                }
                b'C' => match msg::target(body, "Close") {
                    Ok((b'S', n)) => self.statements.retain(|(s, _)| s != n),
                    Ok((_, n)) => self.portals.retain(|(p, _)| p != n),
                    Err(_) => {}
                },
                b'S' if idle => self.portals.clear(),
                _ => {}
            }
        }
    }

    /// `DEALLOCATE name` (`Some`) or `DEALLOCATE ALL` / `DISCARD ALL` (`None`).
    pub fn deallocate(&mut self, name: Option<&str>) {
        match name {
            Some(n) => self.statements.retain(|(s, _)| s != n),
            None => {
                self.statements.clear();
                self.portals.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages of `out`, as (tag, body) pairs.
    fn messages(out: &BytesMut) -> Vec<(u8, Vec<u8>)> {
        let mut b = out.clone();
        let mut got = Vec::new();
        while let Some(f) = pgwarden_wire::frame::split_frame(&mut b, 1 << 20).unwrap() {
            got.push((f.tag, f.body().to_vec()));
        }
        got
    }

    fn frames(build: impl FnOnce(&mut BytesMut)) -> Vec<Frame> {
        let mut b = BytesMut::new();
        build(&mut b);
        let mut got = Vec::new();
        while let Some(f) = pgwarden_wire::frame::split_frame(&mut b, 1 << 20).unwrap() {
            got.push(f);
        }
        got
    }

    fn tags(out: &BytesMut) -> String {
        messages(out).iter().map(|(t, _)| *t as char).collect()
    }

    /// Three rows of one column; each call counts, so a test sees when rows are made.
    fn three(calls: &std::cell::Cell<u32>) -> impl FnMut(Show) -> Table + '_ {
        move |cmd| {
            calls.set(calls.get() + 1);
            Table {
                columns: columns(cmd),
                rows: (0..3).map(|i| vec![format!("r{i}")]).collect(),
            }
        }
    }

    /// The extended protocol's SHOW: prepared, described, executed, with a row limit,
    /// closed, and left to the server where the batch holds anything else.
    #[test]
    fn show_as_a_prepared_statement() {
        use pgwarden_wire::msg::frontend as fe;
        let enc = pgwarden_sql::TextEncoding::Unconverted;
        let calls = std::cell::Cell::new(0);
        let mut own = Own::default();
        // psycopg's prepare, then its execution (binary results asked for).
        let prepare = frames(|b| {
            fe::parse(b, "_pg3_0", "  show pool_version;", &[]);
            fe::sync(b);
        });
        assert!(Own::may_answer(Some(&own), &prepare));
        let out = own.answer(&prepare, enc, b'I', three(&calls)).unwrap();
        assert_eq!(tags(&out), "1Z");
        let mut run = frames(|b| {
            fe::bind(b, "", "_pg3_0");
            b.extend_from_slice(b"D\0\0\0\x06P\0");
            fe::execute(b, "", 0);
            fe::sync(b);
        });
        // (A Bind asking for binary results: one format code, 1.)
        let mut raw = BytesMut::new();
        raw.extend_from_slice(b"B\0\0\0\x14\0_pg3_0\0\0\0\0\0\0\x01\0\x01");
        run[0] = frames(|b| b.extend_from_slice(&raw)).remove(0);
        for _ in 0..2 {
            let out = own.answer(&run, enc, b'I', three(&calls)).unwrap();
            assert_eq!(tags(&out), "2TDDDCZ");
            let m = messages(&out);
            assert!(m[1].1.ends_with(&[0, 1]), "binary, as the Bind asked");
            assert_eq!(m[5].1, b"SELECT 3\0");
        }
        assert_eq!(calls.get(), 2, "rows made at each portal's first Execute");
        // Describe of the statement: no parameters, the columns.
        let describe = frames(|b| {
            b.extend_from_slice(b"D\0\0\0\x0cS_pg3_0\0");
            fe::sync(b);
        });
        assert_eq!(
            tags(&own.answer(&describe, enc, b'I', three(&calls)).unwrap()),
            "tTZ"
        );
        // A row limit suspends the portal; in a transaction it lives on to the next batch.
        let limited = frames(|b| {
            fe::bind(b, "cur", "_pg3_0");
            fe::execute(b, "cur", 2);
            fe::sync(b);
        });
        assert_eq!(
            tags(&own.answer(&limited, enc, b'T', three(&calls)).unwrap()),
            "2DDsZ"
        );
        let rest = frames(|b| {
            fe::execute(b, "cur", 2);
            fe::sync(b);
        });
        let out = own.answer(&rest, enc, b'T', three(&calls)).unwrap();
        assert_eq!(tags(&out), "DCZ");
        assert_eq!(messages(&out)[1].1, b"SELECT 1\0");
        // Outside a transaction the Sync ends it: the portal is gone, and the server's.
        assert_eq!(
            tags(&own.answer(&rest, enc, b'I', three(&calls)).unwrap()),
            "CZ"
        );
        assert!(own.answer(&rest, enc, b'I', three(&calls)).is_none());
        // Anything else in the batch: the server's, and nothing changes.
        let mixed = frames(|b| {
            fe::parse(b, "s2", "SHOW POOL_NODES", &[]);
            fe::parse(b, "s3", "SELECT 1", &[]);
            fe::sync(b);
        });
        assert!(Own::may_answer(Some(&own), &mixed));
        assert!(own.answer(&mixed, enc, b'I', three(&calls)).is_none());
        let probe = frames(|b| {
            b.extend_from_slice(b"D\0\0\0\x08Ss2\0");
            fe::sync(b);
        });
        assert!(
            own.answer(&probe, enc, b'I', three(&calls)).is_none(),
            "s2 was not made"
        );
        for not_ours in [
            frames(|b| fe::parse(b, "x", "SHOW search_path", &[])),
            frames(|b| fe::parse(b, "x", "SHOW POOL_NODES", &[23])),
            frames(|b| fe::bind(b, "", "other")),
            frames(fe::sync),
        ] {
            assert!(own.answer(&not_ours, enc, b'I', three(&calls)).is_none());
        }
        // The server's Parse of the same name, or a Close, makes it the server's.
        own.forget(&frames(|b| fe::parse(b, "_pg3_0", "SELECT 1", &[])), true);
        assert!(!Own::may_answer(Some(&own), &run));
        let again = frames(|b| {
            fe::parse(b, "s", "SHOW POOL_NODES", &[]);
            fe::close(b, b'S', "s");
            fe::sync(b);
        });
        assert_eq!(
            tags(&own.answer(&again, enc, b'I', three(&calls)).unwrap()),
            "13Z"
        );
        assert!(own.is_empty());
        assert!(!Own::may_answer(
            Some(&own),
            &frames(|b| fe::parse(b, "", "SELECT 1", &[]))
        ));
    }

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
