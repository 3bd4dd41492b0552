//! `pgwarden serve`: the warden. The node monitor, the controller (failover, fencing, operations
//! by hand), the proxy, the HTTP API and the PCP port.

use anyhow::Context;
use pgwarden_api::{Admin, AdminError, BoxFuture, NodeOp};
use pgwarden_controller::{Controller, ControllerHandle, OpError};
use pgwarden_core::cluster::{ClusterState, Event};
use pgwarden_core::node::NodeView;
use pgwarden_monitor::Monitor;
use std::path::Path;
use std::sync::Arc;

/// The API's view of the warden.
pub struct Warden {
    pub controller: ControllerHandle,
}

pub fn admin_error(e: OpError) -> AdminError {
    match e {
        OpError::Refused(t) => AdminError::Refused(t),
        e @ OpError::UnknownNode(_) => AdminError::NotFound(e.to_string()),
        e @ (OpError::Failed { .. } | OpError::Store(_)) => AdminError::Failed(e.to_string()),
    }
}

impl Admin for Warden {
    fn nodes(&self) -> Vec<NodeView> {
        self.controller.monitor().views()
    }
    fn cluster(&self) -> ClusterState {
        self.controller.monitor().cluster()
    }
    fn events(&self, after: u64) -> Vec<Event> {
        self.controller.monitor().events(after)
    }
    fn node_op(&self, id: u32, op: NodeOp) -> BoxFuture<'_, Result<String, AdminError>> {
        Box::pin(async move {
            let r = match op {
                NodeOp::Attach => self.controller.attach(id).await,
                NodeOp::Detach => self.controller.detach(id).await,
                NodeOp::Promote { force } => self.controller.promote(id, force).await,
                NodeOp::Switchover => self.controller.switchover(id).await,
                NodeOp::Recover => self.controller.start_recovery(id).await,
            };
            r.map_err(admin_error)
        })
    }
    fn recovery(&self, id: u32) -> Option<pgwarden_core::recovery::RecoveryStatus> {
        self.controller.recovery_status(id)
    }
}

pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let cfg = crate::load::config(config_path)?;
    let passwords = crate::load::passwords(&cfg)?;
    let pcp_users = crate::pcp::load_users(&cfg)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen.api)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (listen.api in {})",
                cfg.listen.api,
                config_path.display()
            )
        })?;
    let proxy_listener = pgwarden_proxy::bind(cfg.listen.proxy).await?;
    let pcp_listener = match &pcp_users {
        Some(_) => Some(
            tokio::net::TcpListener::bind(cfg.listen.pcp)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {} (listen.pcp in {})",
                        cfg.listen.pcp,
                        config_path.display()
                    )
                })?,
        ),
        None => None,
    };
    let monitor = Monitor::start(&cfg, &passwords)
        .with_context(|| format!("failover.state_file in {}", config_path.display()))?;
    let controller = Controller::start(&cfg, monitor.handle());
    let proxy = pgwarden_proxy::Ctx::new(&cfg, passwords.clone(), monitor.handle())?;
    let proxy_task = tokio::spawn(pgwarden_proxy::serve(proxy.clone(), proxy_listener));
    let reload_task = tokio::spawn(crate::reload::on_sighup(
        cfg.file.clone(),
        monitor.handle(),
        proxy.clone(),
        pcp_users.clone(),
    ));
    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::channel::<()>(1);
    let pcp_task = match (pcp_listener, pcp_users) {
        (Some(l), Some(users)) => Some(tokio::spawn(crate::pcp::serve(
            l,
            users,
            controller.handle(),
            cfg.clone(),
            proxy.clone(),
            stop_tx,
        ))),
        _ => None,
    };
    tracing::info!(
        api = %cfg.listen.api,
        proxy = %cfg.listen.proxy,
        pcp = %if pcp_task.is_some() { cfg.listen.pcp.to_string() } else { "off (pcp.users_file not set)".into() },
        nodes = cfg.backends.len(),
        config = %config_path.display(),
        state = %cfg.failover.state_file.display(),
        "pgwarden {} serving",
        env!("CARGO_PKG_VERSION")
    );
    let admin: Arc<dyn Admin> = Arc::new(Warden {
        controller: controller.handle(),
    });
    let app = pgwarden_api::router(admin);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = stop_rx.recv() => tracing::info!("pcp_stop_pgpool: shutting down"),
            }
        })
        .await
        .context("the HTTP API stopped")?;
    proxy_task.abort();
    reload_task.abort();
    if let Some(t) = pcp_task {
        t.abort();
    }
    drop(controller);
    tracing::info!("pgwarden stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGTERM: {e}");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}
