//! The PCP port: pgpool's `pcp_*` tools drive the warden. The protocol is `pgwarden-pcp`'s;
//! here each command is mapped to the controller.

use crate::serve::admin_error;
use pgwarden_api::AdminError;
use pgwarden_controller::ControllerHandle;
use pgwarden_core::config::{Config, NodeInfoLayout};
use pgwarden_pcp::{PcpError, PcpHandler, PcpUsers, ServerOptions, SharedUsers, StopMode};
use std::sync::{Arc, RwLock};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// pcp.conf, when `pcp.users_file` is set. A broken file stops the warden from starting, with
/// the file and line named.
pub fn load_users(cfg: &Config) -> anyhow::Result<Option<SharedUsers>> {
    let Some(path) = &cfg.pcp.users_file else {
        return Ok(None);
    };
    let users = PcpUsers::load(path)
        .map_err(|e| anyhow::anyhow!("{e} (pcp.users_file in {})", cfg.file.display()))?;
    Ok(Some(Arc::new(RwLock::new(users))))
}

struct Handler {
    controller: ControllerHandle,
    cfg: Config,
    users: SharedUsers,
    proxy: Arc<pgwarden_proxy::Ctx>,
    stop: mpsc::Sender<()>,
}

fn pcp_error(what: &str, e: AdminError) -> PcpError {
    let text = match e {
        AdminError::Refused(t) | AdminError::NotFound(t) | AdminError::Failed(t) => t,
    };
    PcpError::with_detail(format!("{what} failed"), in_pcp_terms(&text))
}

/// The warden's advice (which names `pgwarden` commands) in the PCP commands a pgpool user
/// has at hand.
fn in_pcp_terms(text: &str) -> String {
    [
        ("`pgwarden node detach ", "`pcp_detach_node -n "),
        ("`pgwarden node attach ", "`pcp_attach_node -n "),
        ("`pgwarden node promote ", "`pcp_promote_node -n "),
        (
            "`pgwarden switchover --to ",
            "a switchover, `pcp_promote_node -s -n ",
        ),
        ("(or --force ", "(or `pgwarden node promote --force`, "),
    ]
    .iter()
    .fold(text.to_string(), |t, (from, to)| t.replace(from, to))
}

impl PcpHandler for Handler {
    fn nodes(&self) -> Vec<pgwarden_pcp::NodeView> {
        self.controller.monitor().views()
    }

    fn pool_status(&self) -> Vec<(String, String, String)> {
        let c = &self.cfg;
        let mut rows = vec![
            (
                "listen_addresses".to_string(),
                c.listen.proxy.ip().to_string(),
                "host name(s) or IP address(es) to listen on".to_string(),
            ),
            (
                "port".into(),
                c.listen.proxy.port().to_string(),
                "pgpool accepting port number".into(),
            ),
            (
                "pcp_port".into(),
                c.listen.pcp.port().to_string(),
                "PCP port # to bind".into(),
            ),
            (
                "backend_clustering_mode".into(),
                "streaming_replication".into(),
                "clustering mode".into(),
            ),
            (
                "failover_on_backend_error".into(),
                "off".into(),
                "pgwarden fails over on health checks only".into(),
            ),
            (
                "auto_failover".into(),
                if c.failover.auto { "on" } else { "off" }.into(),
                "pgwarden: promote a standby when the primary fails".into(),
            ),
        ];
        for b in &c.backends {
            let i = b.id;
            rows.push((
                format!("backend_hostname{i}"),
                b.host.clone(),
                format!("hostname or IP address of backend #{i}"),
            ));
            rows.push((
                format!("backend_port{i}"),
                b.port.to_string(),
                format!("port number of backend #{i}"),
            ));
            rows.push((
                format!("backend_weight{i}"),
                format!("{:.6}", b.weight),
                format!("weight of backend #{i}"),
            ));
            rows.push((
                format!("backend_data_directory{i}"),
                b.data_dir.display().to_string(),
                format!("data directory for backend #{i}"),
            ));
            rows.push((
                format!("backend_flag{i}"),
                match b.failover {
                    pgwarden_core::config::FailoverFlag::Allow => "ALLOW_TO_FAILOVER",
                    pgwarden_core::config::FailoverFlag::Disallow => "DISALLOW_TO_FAILOVER",
                }
                .into(),
                format!("backend #{i} flag"),
            ));
        }
        rows
    }

    async fn attach(&self, id: u32) -> Result<(), PcpError> {
        self.controller
            .attach(id)
            .await
            .map(drop)
            .map_err(|e| pcp_error("processing attach node request", admin_error(e)))
    }

    async fn detach(&self, id: u32, _graceful: bool) -> Result<(), PcpError> {
        self.controller
            .detach(id)
            .await
            .map(drop)
            .map_err(|e| pcp_error("processing detach node request", admin_error(e)))
    }

    async fn promote(&self, id: u32, switchover: bool) -> Result<(), PcpError> {
        let r = if switchover {
            self.controller.switchover(id).await
        } else {
            self.controller.promote(id, false).await
        };
        r.map(drop)
            .map_err(|e| pcp_error("processing promote request", admin_error(e)))
    }

    async fn recover(&self, id: u32) -> Result<(), PcpError> {
        self.controller
            .recover(id)
            .await
            .map(drop)
            .map_err(|e| pcp_error("process recovery request", admin_error(e)))
    }

    async fn reload(&self) -> Result<(), PcpError> {
        // pcp.conf, client authentication, the password file, and nodes added to the
        // configuration (all read before any is used); the rest needs a restart.
        crate::reload::reload(
            &self.cfg.file,
            self.controller.monitor(),
            &self.proxy,
            Some(&self.users),
        )
        .map(drop)
        .map_err(|e| PcpError::with_detail("reloading config failed", e))
    }

    fn stop(&self, mode: StopMode) {
        self.controller.monitor().event(
            "stop",
            None,
            format!("pcp_stop_pgpool ({mode:?}): the warden stops"),
        );
        let _ = self.stop.try_send(());
    }
}

pub async fn serve(
    listener: TcpListener,
    users: SharedUsers,
    controller: ControllerHandle,
    cfg: Config,
    proxy: Arc<pgwarden_proxy::Ctx>,
    stop: mpsc::Sender<()>,
) {
    let opts = ServerOptions {
        node_info: match cfg.pcp.node_info_layout {
            NodeInfoLayout::V43 => pgwarden_pcp::NodeInfoLayout::V43,
            NodeInfoLayout::V44 => pgwarden_pcp::NodeInfoLayout::V44,
        },
        ..ServerOptions::default()
    };
    let handler = Arc::new(Handler {
        controller,
        cfg,
        users: users.clone(),
        proxy,
        stop,
    });
    if let Err(e) = pgwarden_pcp::serve(listener, users, handler, opts).await {
        tracing::error!("the PCP server stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn advice_names_pcp_commands() {
        assert_eq!(
            super::in_pcp_terms("node 2 is in service (up); take it out first with `pgwarden node detach 2` (a recovery rebuilds its data directory)"),
            "node 2 is in service (up); take it out first with `pcp_detach_node -n 2` (a recovery rebuilds its data directory)"
        );
        assert_eq!(
            super::in_pcp_terms("use `pgwarden switchover --to 1` (or --force to fence node 0)"),
            "use a switchover, `pcp_promote_node -s -n 1` (or `pgwarden node promote --force`, to fence node 0)"
        );
    }
}
