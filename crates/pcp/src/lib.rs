//! A server for pgpool-II's PCP admin protocol, wire-compatible with the `pcp_*` tools of
//! pgpool-II 4.3 (`pcp_node_info`, `pcp_attach_node`, `pcp_promote_node`, …).
//!
//! This crate speaks the protocol and nothing else: it authenticates against `pcp.conf`, reads
//! the node views and pool settings from a [`PcpHandler`], and passes every action (attach,
//! detach, promote, recovery, reload, stop) to it. It decides nothing.
//!
//! What it answers for pgpool features pgwarden does not have:
//! * `pcp_watchdog_info`: ERROR "watchdog is not enabled", as pgpool with `use_watchdog = off`.
//! * `pcp_proc_count`: one process, this one (pgwarden serves every client from one process).
//! * `pcp_proc_info`: an empty list (pgpool's per-child connection slots do not exist here; the
//!   tool prints "pcp_proc_info -- Command Successful"); a pid other than this process's gives
//!   pgpool's "invalid process ID" ERROR.
//! * `pcp_promote_node -g` and `pcp_detach_node -g`: the graceful flag of a detach is passed to
//!   the handler; a promote has none in [`PcpHandler::promote`], so `-g` is ignored there.
//! * `quarantine` in node info is always 0.
//!
//! The 4.3.5 tools exit 0 after an ERROR reply (they print it on stderr); only a failed
//! connection or authentication makes them exit 1.

mod auth;
mod conn;
mod wire;

pub use auth::{PcpConfError, PcpUsers};
pub use pgwarden_core::node::NodeView;

use std::future::Future;
use std::io;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// An error the PCP client prints: "ERROR:  <message>\nDETAIL:  <detail>".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PcpError {
    pub message: String,
    pub detail: Option<String>,
}

impl PcpError {
    pub fn new(message: impl Into<String>) -> Self {
        PcpError {
            message: message.into(),
            detail: None,
        }
    }

    pub fn with_detail(message: impl Into<String>, detail: impl Into<String>) -> Self {
        PcpError {
            message: message.into(),
            detail: Some(detail.into()),
        }
    }
}

/// `pcp_stop_pgpool -m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    Smart,
    Fast,
    Immediate,
}

/// What the PCP server asks of the warden. Node ids are checked against [`Self::nodes`]
/// before any action is called.
pub trait PcpHandler: Send + Sync + 'static {
    /// Every configured node, in id order (status, role, lag, health stats ...).
    fn nodes(&self) -> Vec<NodeView>;
    /// Rows for pcp_pool_status: (name, value, description).
    fn pool_status(&self) -> Vec<(String, String, String)>;
    /// `pcp_attach_node`.
    fn attach(&self, id: u32) -> impl Future<Output = Result<(), PcpError>> + Send;
    /// `pcp_detach_node` (`graceful`: `-g`).
    fn detach(&self, id: u32, graceful: bool) -> impl Future<Output = Result<(), PcpError>> + Send;
    /// `pcp_promote_node` (`switchover`: `-s`).
    fn promote(
        &self,
        id: u32,
        switchover: bool,
    ) -> impl Future<Output = Result<(), PcpError>> + Send;
    /// `pcp_recovery_node`; the reply waits for it, as pgpool's does.
    fn recover(&self, id: u32) -> impl Future<Output = Result<(), PcpError>> + Send;
    /// `pcp_reload_config` (either scope).
    fn reload(&self) -> impl Future<Output = Result<(), PcpError>> + Send;
    /// `pcp_stop_pgpool`. Called after the reply was sent.
    fn stop(&self, mode: StopMode);
}

/// Which node-info layout to send. The PCP protocol has no version handshake, and a client
/// misreads the other version's layout, so this must match the installed `pcp_*` tools.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NodeInfoLayout {
    /// pgpool-II 4.3: 12 fields.
    #[default]
    V43,
    /// pgpool-II 4.4 and later: 13 fields (`standby_delay_by_time` after `pg_role`).
    V44,
}

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub node_info: NodeInfoLayout,
    /// Time a new connection has to authenticate, and any started packet has to arrive whole.
    /// An authenticated connection may stay idle between commands (as with pgpool).
    pub auth_timeout: Duration,
    /// Connections served at once; one more gets a FATAL and is closed.
    pub max_connections: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            node_info: NodeInfoLayout::V43,
            auth_timeout: Duration::from_secs(10),
            max_connections: 32,
        }
    }
}

/// The users the server checks logins against. Replace the value inside to reload
/// `pcp.conf`; connections read it when they authenticate.
pub type SharedUsers = Arc<RwLock<PcpUsers>>;

/// Serves until the listener fails; one task per connection, several commands per connection,
/// 'X' ends it. Transient accept errors (a connection reset before it was accepted, too many
/// open files) are logged and waited out.
pub async fn serve<H: PcpHandler>(
    listener: TcpListener,
    users: SharedUsers,
    handler: Arc<H>,
    opts: ServerOptions,
) -> io::Result<()> {
    let opts = Arc::new(opts);
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    // Refusals are answered by short-lived tasks; this caps how many exist at once.
    let refusals = Arc::new(Semaphore::new(64));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) if transient(&e) => {
                tracing::warn!(error = %e, "PCP: accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let _ = stream.set_nodelay(true);
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let (users, handler, opts) = (users.clone(), handler.clone(), opts.clone());
                tokio::spawn(async move {
                    tracing::debug!(%peer, "PCP: connection");
                    conn::run(stream, &users, &*handler, &opts).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tracing::warn!(%peer, limit = opts.max_connections, "PCP: too many connections; refused");
                if let Ok(permit) = refusals.clone().try_acquire_owned() {
                    let limit = opts.max_connections;
                    tokio::spawn(async move {
                        conn::refuse(stream, limit).await;
                        drop(permit);
                    });
                }
            }
        }
    }
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || matches!(
        e.raw_os_error(),
        // ENOMEM, ENFILE, EMFILE, ENOBUFS: resources that come back.
        Some(12 | 23 | 24 | 105)
    )
}
