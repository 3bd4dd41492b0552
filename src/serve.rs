//! `pgwarden serve`: the warden. For now: the node monitor and the HTTP API.

use anyhow::Context;
use pgwarden_monitor::Monitor;
use std::path::Path;
use std::sync::Arc;

pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let cfg = crate::load::config(config_path)?;
    let passwords = crate::load::passwords(&cfg)?;
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
    let monitor = Monitor::start(&cfg, &passwords);
    let proxy = pgwarden_proxy::Ctx::new(&cfg, passwords.clone(), monitor.handle())?;
    let proxy_task = tokio::spawn(pgwarden_proxy::serve(proxy, proxy_listener));
    tracing::info!(
        api = %cfg.listen.api,
        proxy = %cfg.listen.proxy,
        nodes = cfg.backends.len(),
        config = %config_path.display(),
        "pgwarden {} serving",
        env!("CARGO_PKG_VERSION")
    );
    let app = pgwarden_api::router(Arc::new(monitor.view_fn()));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the HTTP API stopped")?;
    proxy_task.abort();
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
