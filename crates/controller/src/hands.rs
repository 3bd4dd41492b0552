//! How the controller stops, starts and reconfigures a node's server for a switchover: through
//! the node's agent when it has one (any host), else with pg_ctl when the node is on this host
//! (`local`). A remote node without an agent cannot be handled, and the caller says so.

use crate::local;
use crate::Inner;
use pgwarden_agent::api::{Source, StandbyRequest, StartRequest, StopMode, StopRequest};
use pgwarden_agent::client::AgentClient;
use pgwarden_core::config::Backend;
use std::time::Duration;

pub(crate) enum Hands {
    Agent(AgentClient),
    Local,
}

impl Hands {
    /// The hands for node `b`, or why there are none.
    pub(crate) fn for_node(inner: &Inner, b: &Backend) -> Result<Hands, String> {
        if let Some(addr) = &b.agent {
            return crate::recovery::agent_client(inner, addr)
                .map(Hands::Agent)
                .map_err(|e| e.to_string());
        }
        if local::is_local(b) {
            return Ok(Hands::Local);
        }
        Err(format!(
            "node {} runs on {} and has no `agent` configured (backend.agent): nothing can stop it there",
            b.id, b.host
        ))
    }

    /// A clean shutdown (`pg_ctl stop -m fast`): the shutdown checkpoint and all WAL go to the
    /// connected standbys first.
    pub(crate) async fn stop_fast(&self, b: &Backend) -> Result<(), String> {
        match self {
            Hands::Agent(a) => a
                .stop(StopRequest {
                    mode: StopMode::Fast,
                    timeout_secs: 60,
                })
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Hands::Local => local::stop_fast(b).await,
        }
    }

    pub(crate) async fn start(&self, inner: &Inner, b: &Backend) -> Result<(), String> {
        match self {
            Hands::Agent(a) => a
                .start(StartRequest { timeout_secs: 60 })
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Hands::Local => local::start(b, local::start_log(b, &inner.config_file)).await,
        }
    }

    /// Makes the stopped server of `b` a standby of `primary`: the agent writes its own
    /// conninfo (with its password file); locally, `conninfo` (the new primary's own, pointed
    /// back at it) is used.
    pub(crate) async fn make_standby(
        &self,
        b: &Backend,
        primary: &Backend,
        user: &str,
        conninfo: &str,
        slot: &str,
    ) -> Result<(), String> {
        match self {
            Hands::Agent(a) => a
                .standby(StandbyRequest {
                    source: Source {
                        host: primary.host.clone(),
                        port: primary.port,
                        user: user.to_string(),
                    },
                    application_name: b.application_name.clone(),
                    slot: Some(slot.to_string()),
                })
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Hands::Local => local::make_standby(b, conninfo, slot),
        }
    }
}

/// How long the agent's HTTP calls may take beyond their own timeouts.
pub(crate) const AGENT_TIMEOUT: Duration = Duration::from_secs(10);
