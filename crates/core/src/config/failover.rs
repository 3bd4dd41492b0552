//! The `[failover]` section (what the warden does when the primary fails, where it keeps its
//! state, pgpool's hook commands) and the `[pcp]` section (the pgpool-compatible admin port).

use super::{Collector, RawDuration};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverConfig {
    /// Promote a standby when the primary fails its health checks. Off: the warden only fences
    /// the failed primary and waits for `pgwarden node promote`.
    pub auto: bool,
    /// Node status, the primary's identity and the failover generation, written atomically on
    /// every change and read back on start.
    pub state_file: PathBuf,
    /// Longest wait for `pg_promote()` to finish.
    pub promote_timeout: Duration,
    /// Longest wait for a standby to stream from a new primary after it was pointed there; a
    /// standby that does not is taken out of service.
    pub follow_timeout: Duration,
    /// pgpool's failover_command, run (with its %-placeholders) before the built-in promotion.
    pub failover_command: Option<String>,
    /// pgpool's follow_primary_command, run for each other standby instead of the built-in
    /// re-pointing.
    pub follow_primary_command: Option<String>,
    /// Longest a hook command may run before it is killed.
    pub command_timeout: Duration,
    /// In a switchover, how long transactions already running may take to finish before their
    /// sessions are closed.
    pub switchover_timeout: Duration,
    /// Synchronous mode: pgwarden keeps one standby synchronous (`synchronous_standby_names`)
    /// and promotes only that one, so no acknowledged commit is lost by a failover.
    pub synchronous: bool,
    /// What synchronous mode does when no standby can be synchronous.
    pub sync_fallback: SyncFallback,
}

/// When no standby is left to confirm commits in synchronous mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncFallback {
    /// Commits wait until a standby is back (no acknowledged commit can ever be lost).
    #[default]
    Block,
    /// Commits go on without a synchronous standby (available, but a failover may then lose
    /// what was committed meanwhile).
    Async,
}

impl FailoverConfig {
    pub fn defaults(config_file: &Path) -> Self {
        FailoverConfig {
            auto: true,
            state_file: super::resolve_path(config_file, "pgwarden.state"),
            promote_timeout: Duration::from_secs(60),
            follow_timeout: Duration::from_secs(60),
            failover_command: None,
            follow_primary_command: None,
            command_timeout: Duration::from_secs(60),
            switchover_timeout: Duration::from_secs(30),
            synchronous: false,
            sync_fallback: SyncFallback::Block,
        }
    }
}

/// Which layout `pcp_node_info` answers with: pgpool-II 4.3's 12 fields, or 4.4's 13. The
/// protocol does not say which client is asking, so it is a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum NodeInfoLayout {
    #[default]
    #[serde(rename = "4.3")]
    V43,
    #[serde(rename = "4.4")]
    V44,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcpConfig {
    /// pgpool's pcp.conf: `user:md5(password)` lines. `None`: the PCP port is not opened.
    pub users_file: Option<PathBuf>,
    pub node_info_layout: NodeInfoLayout,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFailover {
    auto: Option<bool>,
    state_file: Option<Spanned<String>>,
    promote_timeout: Option<Spanned<RawDuration>>,
    follow_timeout: Option<Spanned<RawDuration>>,
    failover_command: Option<String>,
    follow_primary_command: Option<String>,
    command_timeout: Option<Spanned<RawDuration>>,
    switchover_timeout: Option<Spanned<RawDuration>>,
    synchronous: Option<bool>,
    sync_fallback: Option<SyncFallback>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPcp {
    users_file: Option<Spanned<String>>,
    node_info_layout: Option<NodeInfoLayout>,
}

pub(super) fn validate(raw: RawFailover, file: &Path, c: &mut Collector) -> FailoverConfig {
    let d = FailoverConfig::defaults(file);
    let mut positive = |v: &Option<Spanned<RawDuration>>, key: &str, default: Duration| match v {
        None => default,
        Some(s) if s.get_ref().0.is_zero() => {
            c.push(
                Some(s.span()),
                format!("failover.{key}"),
                "is 0; expected a duration greater than 0 such as \"30s\"",
            );
            default
        }
        Some(s) => s.get_ref().0,
    };
    let promote_timeout = positive(&raw.promote_timeout, "promote_timeout", d.promote_timeout);
    let follow_timeout = positive(&raw.follow_timeout, "follow_timeout", d.follow_timeout);
    let command_timeout = positive(&raw.command_timeout, "command_timeout", d.command_timeout);
    let switchover_timeout = positive(
        &raw.switchover_timeout,
        "switchover_timeout",
        d.switchover_timeout,
    );
    let state_file = match &raw.state_file {
        None => d.state_file,
        Some(s) if s.get_ref().trim().is_empty() => {
            c.push(
                Some(s.span()),
                "failover.state_file",
                "is empty; expected the path of the file the warden keeps its state in",
            );
            d.state_file
        }
        Some(s) => super::resolve_path(file, s.get_ref()),
    };
    let command = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    FailoverConfig {
        auto: raw.auto.unwrap_or(d.auto),
        state_file,
        promote_timeout,
        follow_timeout,
        failover_command: command(raw.failover_command),
        follow_primary_command: command(raw.follow_primary_command),
        command_timeout,
        switchover_timeout,
        synchronous: raw.synchronous.unwrap_or(d.synchronous),
        sync_fallback: raw.sync_fallback.unwrap_or(d.sync_fallback),
    }
}

pub(super) fn validate_pcp(raw: RawPcp, file: &Path, c: &mut Collector) -> PcpConfig {
    let users_file = match &raw.users_file {
        None => None,
        Some(s) if s.get_ref().trim().is_empty() => {
            c.push(
                Some(s.span()),
                "pcp.users_file",
                "is empty; expected the path of a pcp.conf file (user:md5 of the password)",
            );
            None
        }
        Some(s) => Some(super::resolve_path(file, s.get_ref())),
    };
    PcpConfig {
        users_file,
        node_info_layout: raw.node_info_layout.unwrap_or_default(),
    }
}
