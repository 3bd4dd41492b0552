//! The node monitor: one task per backend runs health checks on the backend's period, reads
//! its role, timeline, WAL positions and (on a primary) `pg_stat_replication`, and feeds each
//! cycle to [`pgwarden_core::node::NodeState::apply`], which decides the node's status.
//!
//! The monitor only observes and reports. It never changes a server.

mod probe;

pub use probe::{probe, ProbeError, Target};

use chrono::Utc;
use pgwarden_core::config::{Backend, Config};
use pgwarden_core::node::{build_views, CheckCycle, CheckError, NodeState, NodeStatus, NodeView};
use pgwarden_core::passfile::PassFile;
use pgwarden_core::route::RouteTable;
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, MissedTickBehavior};

struct Shared {
    backends: Vec<Backend>,
    nodes: RwLock<Vec<NodeState>>,
    routes: watch::Sender<Arc<RouteTable>>,
    /// Per backend: wakes its check loop for an immediate check.
    wake: Vec<Notify>,
}

impl Shared {
    fn views(&self) -> Vec<NodeView> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        build_views(&self.backends, &nodes)
    }
}

/// A running monitor. Dropping it stops every health-check task.
pub struct Monitor {
    handle: MonitorHandle,
    _tasks: JoinSet<()>,
}

/// What other services hold of the monitor: the views, the route table, and a way to ask for
/// an immediate check of a node that just failed them.
#[derive(Clone)]
pub struct MonitorHandle {
    shared: Arc<Shared>,
}

impl MonitorHandle {
    pub fn views(&self) -> Vec<NodeView> {
        self.shared.views()
    }

    /// The route table, updated after every health check.
    pub fn routes(&self) -> watch::Receiver<Arc<RouteTable>> {
        self.shared.routes.subscribe()
    }

    /// A session saw node `id` fail: check it now rather than at the next period.
    pub fn suspect(&self, id: u32) {
        if let Some(i) = self.shared.backends.iter().position(|b| b.id == id) {
            self.shared.wake[i].notify_one();
        }
    }
}

impl Monitor {
    /// Starts one health-check task per backend. Must be called inside a tokio runtime.
    pub fn start(config: &Config, passwords: &PassFile) -> Monitor {
        let now = Utc::now();
        let nodes: Vec<NodeState> = config
            .backends
            .iter()
            .map(|_| NodeState::new(now))
            .collect();
        let table = RouteTable::from_views(&build_views(&config.backends, &nodes));
        let shared = Arc::new(Shared {
            backends: config.backends.clone(),
            nodes: RwLock::new(nodes),
            routes: watch::Sender::new(Arc::new(table)),
            wake: config.backends.iter().map(|_| Notify::new()).collect(),
        });
        let mut tasks = JoinSet::new();
        for (index, b) in config.backends.iter().enumerate() {
            let password = passwords.lookup(
                &b.host,
                b.port,
                &config.credentials.database,
                &config.credentials.user,
            );
            if password.is_none() {
                tracing::warn!(
                    node = b.id,
                    file = %config.credentials.password_file.display(),
                    "no password for {}@{}:{} in the password file; connecting without one",
                    config.credentials.user, b.host, b.port
                );
            }
            let target = Target {
                host: b.host.clone(),
                port: b.port,
                user: config.credentials.user.clone(),
                database: config.credentials.database.clone(),
                password,
                connect_timeout: b.health_check.connect_timeout,
            };
            tasks.spawn(check_loop(shared.clone(), index, target));
        }
        Monitor {
            handle: MonitorHandle { shared },
            _tasks: tasks,
        }
    }

    pub fn handle(&self) -> MonitorHandle {
        self.handle.clone()
    }

    /// The current view of every node.
    pub fn views(&self) -> Vec<NodeView> {
        self.handle.views()
    }

    /// A function returning the current views, for the HTTP API.
    pub fn view_fn(&self) -> impl Fn() -> Vec<NodeView> + Send + Sync + 'static {
        let shared = self.handle.shared.clone();
        move || shared.views()
    }
}

/// One health-check cycle: the first attempt, then up to `max_retries` more.
async fn run_cycle(backend: &Backend, target: &Target) -> CheckCycle {
    let hc = &backend.health_check;
    let started = Instant::now();
    let mut retries = 0;
    let result = loop {
        let error: CheckError = match timeout(hc.timeout, probe(target)).await {
            Ok(Ok(obs)) => break Ok(obs),
            Ok(Err(e @ ProbeError::Busy { .. })) => CheckError {
                message: e.to_string(),
                alive: true,
            },
            Ok(Err(e)) => e.to_string().into(),
            Err(_) => format!(
                "no answer within the health-check timeout ({} ms)",
                hc.timeout.as_millis()
            )
            .into(),
        };
        if retries >= hc.max_retries || error.alive {
            break Err(error);
        }
        tracing::debug!(node = backend.id, retry = retries + 1, error = %error.message, "health check failed; retrying");
        retries += 1;
        sleep(hc.retry_delay).await;
    };
    CheckCycle {
        finished_at: Utc::now(),
        duration: started.elapsed(),
        retries,
        result,
    }
}

async fn check_loop(shared: Arc<Shared>, index: usize, target: Target) {
    let backend = &shared.backends[index];
    let mut ticker = tokio::time::interval(backend.health_check.period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shared.wake[index].notified() => {}
        }
        let cycle = run_cycle(backend, &target).await;
        apply_cycle(&shared, index, cycle);
    }
}

fn apply_cycle(shared: &Shared, index: usize, cycle: CheckCycle) {
    let backend = &shared.backends[index];
    {
        let mut nodes = shared.nodes.write().unwrap_or_else(|p| p.into_inner());
        let Some(node) = nodes.get_mut(index) else {
            return;
        };
        let role_before = node.role;
        if let Some(change) = node.apply(cycle, backend.failover) {
            let message = format!(
                "node {} status {} -> {}: {}",
                backend.id,
                change.from.as_str(),
                change.to.as_str(),
                change.reason
            );
            if change.to == NodeStatus::Down {
                tracing::warn!(node = backend.id, "{message}");
            } else {
                tracing::info!(node = backend.id, "{message}");
            }
        }
        if node.role != role_before {
            tracing::info!(
                node = backend.id,
                "node {} role {} -> {}",
                backend.id,
                role_before.as_str(),
                node.role.as_str()
            );
        }
    }
    let table = RouteTable::from_views(&shared.views());
    shared.routes.send_if_modified(|current| {
        if **current == table {
            false
        } else {
            *current = Arc::new(table);
            true
        }
    });
}
