//! One health check against one PostgreSQL server: connect, read its state, disconnect.

use pgwarden_core::node::{Observation, ReplicationRow};
use pgwarden_core::{Lsn, Secret};
use std::time::Duration;
use tokio_postgres::{NoTls, SimpleQueryMessage, SimpleQueryRow};

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    pub password: Option<Secret>,
    pub connect_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The server answered the startup with an error that means "busy", not "dead".
    #[error("{addr} refuses connections: {reason}")]
    Busy { addr: String, reason: String },
    #[error("query on {addr} failed: {reason}")]
    Query { addr: String, reason: String },
    #[error("unexpected answer from {addr}: {reason}")]
    Answer { addr: String, reason: String },
}

/// Both statements go in one simple-query round trip. The first reads the node's own state
/// (the CASE keeps primary-only functions away from standbys); the second its directly
/// connected standbys. A primary's position is where WAL is inserted, not where it has been
/// written: with `synchronous_commit = off` a commit returns before its record is written,
/// and a session's reads must wait for a standby that has replayed that record (the write
/// position could be behind it, and a standby that had not seen the commit served them).
/// When the last record ends at a page's end, the insert position is past the next page's
/// header (24 bytes, or 40 at a segment's start); a standby's replay position is at the
/// record's end, so the header is taken off: else an idle primary after a WAL switch would
/// never have a standby caught up with it.
const SQL: &str = "\
SELECT pg_is_in_recovery()::text,
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE (
         SELECT (l - CASE WHEN (l - '0/0'::pg_lsn) % current_setting('wal_block_size')::numeric = 24 THEN 24
                          WHEN (pg_walfile_name_offset(l)).file_offset = 40 THEN 40
                          ELSE 0 END)::text
           FROM pg_current_wal_insert_lsn() AS l) END,
       pg_last_wal_receive_lsn()::text,
       pg_last_wal_replay_lsn()::text,
       CASE WHEN pg_is_in_recovery()
            THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                          (SELECT timeline_id FROM pg_control_checkpoint()))::text
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int::text
       END,
       current_setting('server_version');
SELECT application_name, client_addr::text, state, sync_state,
       sent_lsn::text, write_lsn::text, flush_lsn::text, replay_lsn::text
  FROM pg_stat_replication ORDER BY application_name;";

fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}

/// Connects as `target` says. The connect timeout bounds the whole connection, startup and
/// authentication included: a hung server accepts TCP connections (the kernel does) but never
/// answers the startup. A refusal for lack of connection slots is [`ProbeError::Busy`].
async fn connect(
    target: &Target,
    application_name: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    ),
    ProbeError,
> {
    let addr = format!("{}:{}", target.host, target.port);
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&target.host)
        .port(target.port)
        .user(&target.user)
        .dbname(&target.database)
        .application_name(application_name)
        .connect_timeout(target.connect_timeout);
    if let Some(pw) = &target.password {
        cfg.password(pw.expose());
    }
    let connected = tokio::time::timeout(target.connect_timeout, cfg.connect(NoTls))
        .await
        .map_err(|_| ProbeError::Connect {
            addr: addr.clone(),
            reason: format!(
                "no answer to the connection within {} ms (connect_timeout)",
                target.connect_timeout.as_millis()
            ),
        })?;
    connected.map_err(|e| {
        let busy = e
            .as_db_error()
            .is_some_and(|d| matches!(d.code().code(), "53300" | "53400"));
        if busy {
            ProbeError::Busy {
                addr: addr.clone(),
                reason: error_text(&e),
            }
        } else {
            ProbeError::Connect {
                addr: addr.clone(),
                reason: error_text(&e),
            }
        }
    })
}

/// Connects, reads the node's state and disconnects. The caller bounds the total time.
pub async fn probe(target: &Target) -> Result<Observation, ProbeError> {
    let addr = format!("{}:{}", target.host, target.port);
    let (client, connection) = connect(target, "pgwarden health check").await?;
    let conn_task = tokio::spawn(connection);
    let result = client.simple_query(SQL).await;
    drop(client);
    // The connection ends once the client is gone; don't wait on a server that stopped talking.
    conn_task.abort();
    let messages = result.map_err(|e| ProbeError::Query {
        addr: addr.clone(),
        reason: error_text(&e),
    })?;
    parse(&messages).map_err(|reason| ProbeError::Answer { addr, reason })
}

/// A monitor's health checks on one node. The connection of a passing check is kept for the
/// next one, so a check is one query on a live connection, as Patroni does, rather than a new
/// backend (a fork and an authentication) every period: on a saturated host a new connection
/// can take seconds while the server answers queries in milliseconds, and a failed connect
/// must not be what takes a healthy primary out of service.
///
/// Every failure still ends in a fresh connection, so nothing is hidden: a server that was
/// stopped or restarted, or that closed the kept connection (`idle_session_timeout`,
/// `pg_terminate_backend`), is asked again at once on a new one, with the usual errors; a
/// hung server stalls the kept connection's query, the attempt fails and drops it, and the
/// retry connects afresh. The query on the kept connection is bounded by `connect_timeout`,
/// the bound a new connection has, so a hang is caught as fast as it was with new connections.
#[derive(Default)]
pub struct Checker {
    kept: Option<Kept>,
}

struct Kept {
    client: tokio_postgres::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Kept {
    fn drop(&mut self) {
        // The connection task owns the socket: ending it closes the connection.
        self.task.abort();
    }
}

impl Checker {
    /// One attempt: the query on the kept connection if there is one and it answers, else on a
    /// new connection (kept if the check passes). The caller bounds the time; a cancelled
    /// attempt leaves no connection behind.
    pub async fn check(&mut self, target: &Target) -> Result<Observation, ProbeError> {
        let addr = || format!("{}:{}", target.host, target.port);
        if let Some(kept) = self.kept.take() {
            // Bounded like a new connection would be, so a hung server is called down no later
            // than before: this attempt fails, the connection is dropped, the retry connects.
            match tokio::time::timeout(target.connect_timeout, kept.client.simple_query(SQL)).await
            {
                Ok(Ok(messages)) => {
                    let obs = parse(&messages).map_err(|reason| ProbeError::Answer {
                        addr: addr(),
                        reason,
                    })?;
                    self.kept = Some(kept);
                    return Ok(obs);
                }
                // Gone or broken: a new connection says what is wrong.
                Ok(Err(_)) => {}
                Err(_) => {
                    return Err(ProbeError::Query {
                        addr: addr(),
                        reason: format!(
                            "no answer on the kept connection within {} ms (connect_timeout)",
                            target.connect_timeout.as_millis()
                        ),
                    })
                }
            }
        }
        let (client, connection) = connect(target, "pgwarden health check").await?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        let kept = Kept { client, task };
        let messages = kept
            .client
            .simple_query(SQL)
            .await
            .map_err(|e| ProbeError::Query {
                addr: addr(),
                reason: error_text(&e),
            })?;
        let obs = parse(&messages).map_err(|reason| ProbeError::Answer {
            addr: addr(),
            reason,
        })?;
        self.kept = Some(kept);
        Ok(obs)
    }
}

fn parse(messages: &[SimpleQueryMessage]) -> Result<Observation, String> {
    let mut statement = 0;
    let mut own: Option<&SimpleQueryRow> = None;
    let mut replication = Vec::new();
    for m in messages {
        match m {
            SimpleQueryMessage::Row(row) if statement == 0 => own = Some(row),
            SimpleQueryMessage::Row(row) => replication.push(replication_row(row)?),
            SimpleQueryMessage::CommandComplete(_) => statement += 1,
            _ => {}
        }
    }
    let row = own.ok_or("the state query returned no row")?;
    let in_recovery = match row.get(0) {
        Some("true") => true,
        Some("false") => false,
        other => return Err(format!("pg_is_in_recovery() returned {other:?}")),
    };
    let timeline = match row.get(4) {
        Some(t) => Some(
            t.parse::<u32>()
                .map_err(|_| format!("timeline {t:?} is not a number"))?,
        ),
        None => None,
    };
    Ok(Observation {
        in_recovery,
        current_lsn: lsn(row.get(1))?,
        receive_lsn: lsn(row.get(2))?,
        replay_lsn: lsn(row.get(3))?,
        timeline,
        server_version: row.get(5).map(str::to_string),
        replication,
    })
}

fn lsn(text: Option<&str>) -> Result<Option<Lsn>, String> {
    text.map(|t| t.parse::<Lsn>().map_err(|e| e.to_string()))
        .transpose()
}

fn replication_row(row: &SimpleQueryRow) -> Result<ReplicationRow, String> {
    let s = |i: usize| row.get(i).map(str::to_string);
    Ok(ReplicationRow {
        application_name: s(0).unwrap_or_default(),
        client_addr: s(1),
        state: s(2),
        sync_state: s(3),
        sent_lsn: lsn(row.get(4))?,
        write_lsn: lsn(row.get(5))?,
        flush_lsn: lsn(row.get(6))?,
        replay_lsn: lsn(row.get(7))?,
    })
}

/// Runs `sql` (simple query protocol; several statements allowed) as the monitor's user and
/// returns the rows of every statement, each column as text or NULL. For the controller's
/// actions (pg_promote, ALTER SYSTEM, …). The caller bounds the total time.
pub async fn run_sql(
    target: &Target,
    sql: &str,
    application_name: &str,
) -> Result<Vec<Vec<Option<String>>>, ProbeError> {
    let addr = format!("{}:{}", target.host, target.port);
    let (client, connection) = connect(target, application_name).await?;
    let conn_task = tokio::spawn(connection);
    let result = client.simple_query(sql).await;
    drop(client);
    conn_task.abort();
    let messages = result.map_err(|e| ProbeError::Query {
        addr,
        reason: error_text(&e),
    })?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect())
}
