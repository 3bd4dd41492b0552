//! Reloading the configuration (SIGHUP, `pcp_reload_config`): what logins are checked
//! against (`[[proxy.hba]]`, pool_passwd, the password file, the TLS certificate and key), as
//! PostgreSQL reads pg_hba.conf again; nodes added to the file since the start join the node
//! table — out of service until `pgwarden node recover N` (a new, empty node) or `node attach
//! N` (one that already streams) — as in pgpool, where a new backend_hostnameN takes a
//! reload. Other changes need a restart, and the reload says which.

use pgwarden_monitor::MonitorHandle;
use std::path::Path;

/// Reads `config_path` again and applies what can be applied live. The message says what was
/// added and what needs a restart; an unreadable or invalid file (or pool_passwd, or
/// certificate) changes nothing.
pub fn reload(
    config_path: &Path,
    monitor: &MonitorHandle,
    proxy: &pgwarden_proxy::Ctx,
    pcp_users: Option<&pgwarden_pcp::SharedUsers>,
) -> Result<String, String> {
    let cfg = crate::load::config(config_path).map_err(|e| format!("{e:#}"))?;
    let passwords = crate::load::passwords(&cfg).map_err(|e| format!("{e:#}"))?;
    let auth = proxy
        .load_auth(&cfg, passwords.clone())
        .map_err(|e| format!("{e}"))?;
    // pcp.conf as the file now names it (read, not yet used: nothing changes on an error).
    let users = match (&cfg.pcp.users_file, pcp_users) {
        (Some(path), Some(_)) => Some(
            pgwarden_pcp::PcpUsers::load(path)
                .map_err(|e| format!("{e} (pcp.users_file in {})", config_path.display()))?,
        ),
        _ => None,
    };
    let running = monitor.backends();
    let mut restart = Vec::new();
    for b in &running {
        match cfg.backend(b.id) {
            None => restart.push(format!("node {} was removed", b.id)),
            Some(n) if n != b => restart.push(format!("node {} changed", b.id)),
            Some(_) => {}
        }
    }
    let added = monitor
        .add_backends(&cfg, &passwords)
        .map_err(|e| e.to_string())?;
    proxy.set_auth(auth);
    // A view a standby refused may have been changed: its reads are tried there again.
    let forgotten = proxy.forget_refused();
    // pgwarden's own password too (health checks, promotions, recoveries), as the proxy's:
    // a password rotated in the password file is used by both, not by one.
    monitor.refresh_passwords(&passwords);
    if let (Some(users), Some(shared)) = (users, pcp_users) {
        *shared.write().unwrap_or_else(|p| p.into_inner()) = users;
    }
    let mut message = format!(
        "{} read again; client authentication (hba rules, {}, TLS), the password file and pcp.conf reloaded",
        config_path.display(),
        match &cfg.proxy.pool_passwd {
            Some(p) => p.display().to_string(),
            None => "the password file".to_string(),
        }
    );
    if added.is_empty() {
        message.push_str("; no node added");
    } else {
        let ids: Vec<String> = added.iter().map(|i| i.to_string()).collect();
        message.push_str(&format!(
            "; node(s) {} added, out of service until recovered (`pgwarden node recover N`) or attached",
            ids.join(", ")
        ));
    }
    if forgotten > 0 {
        message.push_str(&format!(
            "; {forgotten} statement(s) a standby refused as writes may go to standbys again"
        ));
    }
    if !restart.is_empty() {
        message.push_str(&format!(
            "; needs a restart to take effect: {}",
            restart.join(", ")
        ));
    }
    message.push_str(" (other [proxy] settings and other sections take effect at the next start)");
    monitor.event("reload", None, message.clone());
    Ok(message)
}

/// Reloads on every SIGHUP (`systemctl reload`, `kill -HUP`).
pub async fn on_sighup(
    config_path: std::path::PathBuf,
    monitor: MonitorHandle,
    proxy: std::sync::Arc<pgwarden_proxy::Ctx>,
    pcp_users: Option<pgwarden_pcp::SharedUsers>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGHUP: {e}");
            return;
        }
    };
    while hup.recv().await.is_some() {
        match reload(&config_path, &monitor, &proxy, pcp_users.as_ref()) {
            Ok(m) => tracing::info!("SIGHUP: {m}"),
            Err(e) => {
                tracing::error!("SIGHUP: the configuration was not reloaded: {e}");
                monitor.event(
                    "error",
                    None,
                    format!("reload refused, nothing changed: {e}"),
                );
            }
        }
    }
}
