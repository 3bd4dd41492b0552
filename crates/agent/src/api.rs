//! What the warden and the agent say to each other: JSON bodies over HTTP/1.1.
//!
//! Every request carries `Authorization: PGWARDEN-HMAC ts=<unix seconds>, sig=<hex>`, where
//! `sig = HMAC-SHA256(secret, "<ts>\n<METHOD>\n<path and query>\n<hex sha256 of the body>")`.
//! The secret never crosses the wire; a request whose `ts` is more than
//! [`MAX_CLOCK_SKEW_SECS`] away from the agent's clock, or whose signature is wrong or missing,
//! is answered 401 and logged with the peer's address.
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/status` | [`AgentStatus`] |
//! | `POST /v1/stop` [`StopRequest`] | [`Done`] once stopped (or it was not running) |
//! | `POST /v1/start` [`StartRequest`] | [`Done`] once it accepts connections |
//! | `POST /v1/standby` [`StandbyRequest`] | [`Done`]: standby.signal and the settings written |
//! | `POST /v1/jobs` [`JobSpec`] | 202 [`JobStatus`]; 409 while another job runs |
//! | `GET /v1/jobs/{id}` | [`JobStatus`] |
//! | `DELETE /v1/jobs/{id}` | [`JobStatus`]: the job's process is killed, its partial output removed |
//!
//! Errors: 4xx/5xx with [`ErrorBody`]. 400 bad request, 401 authentication, 404 unknown job,
//! 409 wrong state (a job runs; the server runs and must be stopped first), 500 a tool failed
//! (the message carries the tail of its output).

use serde::{Deserialize, Serialize};

/// How far the signed timestamp may be from the agent's clock.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// The name of the authorization scheme.
pub const AUTH_SCHEME: &str = "PGWARDEN-HMAC";

/// Where to connect to reach the current primary. The password is not sent: the agent reads
/// it from its own libpq password file (`--passfile`, else `~/.pgpass`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub host: String,
    pub port: u16,
    pub user: String,
}

/// `pg_controldata` of the data directory, the fields the warden decides with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlData {
    /// "Database cluster state": `in production`, `shut down`, `shut down in recovery`,
    /// `in archive recovery`, `in crash recovery`, …
    pub state: String,
    /// "Latest checkpoint's TimeLineID".
    pub timeline: u32,
    /// "Latest checkpoint location", e.g. `0/3000060`.
    pub checkpoint_lsn: String,
    /// "Database system identifier".
    pub system_identifier: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The agent's version (the pgwarden version).
    pub version: String,
    pub data_dir: String,
    /// The port the server listens on (the agent's `--pg-port`).
    pub port: u16,
    /// `pg_ctl status`: a postmaster runs on this data directory.
    pub running: bool,
    /// Its pid when running.
    pub pid: Option<u32>,
    /// `None` when the directory holds no cluster (empty, missing, no global/pg_control).
    pub control: Option<ControlData>,
    /// The job running now, if any.
    pub job: Option<JobStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StopMode {
    Fast,
    Immediate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRequest {
    pub mode: StopMode,
    /// Longest to wait for the server to stop.
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRequest {
    /// Longest to wait for the server to accept connections.
    pub timeout_secs: u64,
}

/// Turn the (stopped) server into a standby of `source`: `standby.signal`, and in
/// `postgresql.auto.conf` (the previous block written by pgwarden replaced) `primary_conninfo`
/// (host, port, user, application_name, the agent's passfile), `primary_slot_name`,
/// `recovery_target_timeline = 'latest'` and `port` = the agent's `--pg-port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyRequest {
    pub source: Source,
    pub application_name: String,
    pub slot: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobSpec {
    /// `pg_rewind --target-pgdata=DATA --source-server=... --progress` (the server stopped).
    /// The files the agent keeps (`--keep`) are put back afterwards.
    Rewind { source: Source },
    /// `pg_basebackup -X stream --checkpoint=fast --progress [-S slot]` from `source` into a
    /// new directory beside the data directory, which replaces the old one only when the backup
    /// is complete (the old one is removed then). The server must be stopped. The files the
    /// agent keeps (`--keep`) are carried over from the old directory.
    BaseBackup {
        source: Source,
        slot: Option<String>,
    },
    /// A script (pgpool's recovery_1st_stage_command and friends): a relative path is taken
    /// inside the data directory, as pgpool_recovery() does. Killed after `timeout_secs`.
    Script {
        path: String,
        args: Vec<String>,
        timeout_secs: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: u64,
    /// `rewind`, `base_backup` or `script`.
    pub kind: String,
    pub state: JobState,
    /// What it does now, for people ("copying files", "waiting for checkpoint", …).
    pub step: String,
    /// Bytes copied so far, from the tool's progress report.
    pub bytes_done: u64,
    /// Total bytes to copy, when the tool says.
    pub bytes_total: Option<u64>,
    pub elapsed_ms: u64,
    /// The last lines (at most 20) of the tool's output.
    pub output_tail: String,
    /// Why it failed.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
