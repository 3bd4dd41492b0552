//! The `[agent]` section (how the warden reaches the node agents) and the `[recovery]` section
//! (online recovery: pgpool's recovery_* settings and auto-recovery).

use super::{Collector, RawDuration};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentConfig {
    /// The shared secret the warden signs its requests to the agents with (the same file the
    /// agents are started with). `None`: no agent is used, and recovery is refused.
    pub secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// pgpool's recovery_1st_stage_command: a script run on the primary's host (through its
    /// agent) instead of the built-in pg_rewind / base backup, with pgpool's 7 arguments.
    pub first_stage_command: Option<String>,
    /// pgpool's recovery_2nd_stage_command: run with new client sessions held.
    pub second_stage_command: Option<String>,
    /// pgpool's pgpool_remote_start: run on the primary's host with (target host, target data
    /// directory) instead of starting the node through its agent.
    pub remote_start_command: Option<String>,
    /// pgpool's recovery_timeout: the longest wait for sessions to finish before the 2nd stage,
    /// and for the recovered node to start and stream.
    pub timeout: Duration,
    /// pgpool's client_idle_limit_in_recovery: during a 2nd stage, sessions idle longer than
    /// this are disconnected (0: never, they are waited for; pgpool's -1, "at once", is
    /// `IDLE_AT_ONCE`).
    pub client_idle_limit: Duration,
    /// Rebuild a failed node automatically once its agent answers again.
    pub auto: bool,
    /// The longest pause between two automatic attempts on one node (they back off from 10 s).
    pub auto_max_backoff: Duration,
}

impl RecoveryConfig {
    /// `client_idle_limit` written as -1 (pgpool's): a session is closed as soon as it is
    /// idle in a 2nd stage.
    pub const IDLE_AT_ONCE: Duration = Duration::from_nanos(1);
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            first_stage_command: None,
            second_stage_command: None,
            remote_start_command: None,
            timeout: Duration::from_secs(90),
            client_idle_limit: Duration::ZERO,
            auto: false,
            auto_max_backoff: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    secret_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRecovery {
    recovery_1st_stage_command: Option<String>,
    recovery_2nd_stage_command: Option<String>,
    remote_start_command: Option<String>,
    recovery_timeout: Option<Spanned<RawDuration>>,
    client_idle_limit_in_recovery: Option<Spanned<toml::Value>>,
    auto: Option<bool>,
    auto_max_backoff: Option<Spanned<RawDuration>>,
}

pub(super) fn validate_agent(raw: RawAgent, file: &Path, c: &mut Collector) -> AgentConfig {
    let secret_file = match &raw.secret_file {
        None => None,
        Some(s) if s.get_ref().trim().is_empty() => {
            c.push(
                Some(s.span()),
                "agent.secret_file",
                "is empty; expected the path of the file holding the agents' shared secret",
            );
            None
        }
        Some(s) => Some(super::resolve_path(file, s.get_ref())),
    };
    AgentConfig { secret_file }
}

pub(super) fn validate(raw: RawRecovery, c: &mut Collector) -> RecoveryConfig {
    let d = RecoveryConfig::default();
    let mut positive = |v: &Option<Spanned<RawDuration>>, key: &str, default: Duration| match v {
        None => default,
        Some(s) if s.get_ref().0.is_zero() => {
            c.push(
                Some(s.span()),
                format!("recovery.{key}"),
                "is 0; expected a duration greater than 0 such as \"90s\"",
            );
            default
        }
        Some(s) => s.get_ref().0,
    };
    let timeout = positive(&raw.recovery_timeout, "recovery_timeout", d.timeout);
    let auto_max_backoff = positive(
        &raw.auto_max_backoff,
        "auto_max_backoff",
        d.auto_max_backoff,
    );
    let command = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let client_idle_limit = match &raw.client_idle_limit_in_recovery {
        None => d.client_idle_limit,
        Some(v) => match v.get_ref() {
            toml::Value::Integer(-1) => RecoveryConfig::IDLE_AT_ONCE,
            toml::Value::String(s) if s.trim() == "-1" => RecoveryConfig::IDLE_AT_ONCE,
            other => match RawDuration::deserialize(other.clone()) {
                Ok(limit) => limit.0,
                Err(_) => {
                    c.push(
                        Some(v.span()),
                        "recovery.client_idle_limit_in_recovery",
                        format!("{other} is not allowed; expected a duration such as \"30s\" or a number of seconds, 0 (no session is closed: all are waited for) or -1 (idle sessions are closed at once, as in pgpool)"),
                    );
                    d.client_idle_limit
                }
            },
        },
    };
    RecoveryConfig {
        first_stage_command: command(raw.recovery_1st_stage_command),
        second_stage_command: command(raw.recovery_2nd_stage_command),
        remote_start_command: command(raw.remote_start_command),
        timeout,
        client_idle_limit,
        auto: raw.auto.unwrap_or(d.auto),
        auto_max_backoff,
    }
}
