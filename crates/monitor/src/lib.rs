//! The node monitor: one task per backend runs health checks on the backend's period, reads
//! its role, timeline, WAL positions and (on a primary) `pg_stat_replication`, and feeds each
//! cycle to [`pgwarden_core::node::NodeState::apply`], which decides the node's status.
//!
//! The monitor only observes and reports. It never changes a server.

mod probe;
pub mod store;

pub use probe::{probe, run_sql, Checker, ProbeError, Target};
pub use store::StoreError;

use chrono::Utc;
use pgwarden_core::cluster::{
    status_after_restart, ClusterState, Event, EventLog, NodeFacts, NodeRecord,
};
use pgwarden_core::config::{Backend, Config};
use pgwarden_core::node::{
    build_views, CheckCycle, CheckError, LiveStatus, NodeState, NodeStatus, NodeView, Observation,
};
use pgwarden_core::passfile::PassFile;
use pgwarden_core::route::RouteTable;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, MissedTickBehavior};

/// How many events the history keeps.
const EVENTS_KEPT: usize = 1000;

/// The node table: what was observed of each node, and what the warden decided.
struct Table {
    nodes: Vec<NodeState>,
    generation: u64,
    primary: Option<u32>,
    sync_standbys: Vec<u32>,
}

/// What the monitor holds of one configured node besides its state in the table.
struct Slot {
    backend: Backend,
    /// Its password is read again on a reload (`MonitorHandle::refresh_passwords`).
    target: RwLock<Target>,
    /// Wakes its check loop for an immediate check.
    wake: Notify,
    /// Proxy sessions with a unit of work (statement, transaction, COPY) on it.
    engaged: AtomicUsize,
}

/// How a proxy session tells that it has a unit of work on a node. Together with
/// [`MonitorHandle::engaged`] and the fenced set this is how a switchover knows that no session
/// is about to write to the old primary: a session engages first and then checks the fence;
/// the controller fences first and then reads the count (both with sequentially consistent
/// ordering). A node's slot is never replaced (a reload only adds nodes), so a kept handle
/// stays the node's.
#[derive(Clone)]
pub struct Engagement(Arc<Slot>);

impl Engagement {
    /// A unit of work starts on the node.
    pub fn engage(&self) {
        self.0.engaged.fetch_add(1, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// It is over.
    pub fn disengage(&self) {
        let _ = self
            .0
            .engaged
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_sub(1))
            });
    }
}

struct Shared {
    /// The configured nodes, in the order of `Table::nodes`. Replaced (never changed in place)
    /// when a configuration reload adds nodes, under the table's write lock.
    slots: RwLock<Arc<Vec<Arc<Slot>>>>,
    table: RwLock<Table>,
    routes: watch::Sender<Arc<RouteTable>>,
    /// Nodes out of service (status down): sessions holding a connection to one drop it.
    fenced: watch::Sender<Arc<Vec<u32>>>,
    /// Bumped after every health check and every decision: the controller's wake-up.
    ticks: watch::Sender<u64>,
    events: Mutex<EventLog>,
    state_file: Option<PathBuf>,
    /// Check loops of nodes added by a reload (the first ones live in `Monitor`'s JoinSet).
    added_tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// An online recovery's 2nd stage: new client sessions wait; sessions idle longer than
    /// the limit are closed (`Some(Duration::ZERO)`: none is closed, all are waited for).
    hold: watch::Sender<Option<Duration>>,
    /// Client sessions past the hold (logged in, or logging in).
    sessions: AtomicUsize,
}

impl Shared {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    fn slots(&self) -> Arc<Vec<Arc<Slot>>> {
        self.slots.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn slot(&self, id: u32) -> Option<Arc<Slot>> {
        self.slots().iter().find(|s| s.backend.id == id).cloned()
    }

    fn backends(&self) -> Vec<Backend> {
        self.slots().iter().map(|s| s.backend.clone()).collect()
    }

    fn views(&self) -> Vec<NodeView> {
        let t = self.read();
        build_views(&self.backends(), &t.nodes, t.primary)
    }

    fn cluster(&self, t: &Table) -> ClusterState {
        ClusterState {
            generation: t.generation,
            primary: t.primary,
            nodes: self
                .slots()
                .iter()
                .zip(&t.nodes)
                .map(|(s, n)| {
                    (
                        s.backend.id,
                        NodeRecord {
                            status: n.status,
                            since: n.last_status_change,
                            reason: n.status_reason.clone(),
                        },
                    )
                })
                .collect(),
            sync_standbys: t.sync_standbys.clone(),
        }
    }

    fn event(&self, kind: &str, node: Option<u32>, message: String) {
        let mut log = self.events.lock().unwrap_or_else(|p| p.into_inner());
        log.push(Utc::now(), kind, node, message);
    }

    /// Writes the state file. Called with the table locked, so writes are in order.
    fn persist(&self, t: &Table) -> Result<(), StoreError> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let r = store::save(path, &self.cluster(t));
        if let Err(e) = &r {
            tracing::error!("{e}");
            self.event("error", None, e.to_string());
        }
        r
    }

    /// Publishes the route table and the fenced set after a change.
    fn publish(&self) {
        let (table, fenced) = {
            let t = self.read();
            let views = build_views(&self.backends(), &t.nodes, t.primary);
            let fenced: Vec<u32> = views
                .iter()
                .filter(|v| v.status == NodeStatus::Down)
                .map(|v| v.id)
                .collect();
            (RouteTable::from_views(&views, t.primary), fenced)
        };
        self.routes.send_if_modified(|current| {
            if **current == table {
                false
            } else {
                *current = Arc::new(table);
                true
            }
        });
        self.fenced.send_if_modified(|current| {
            if **current == fenced {
                false
            } else {
                *current = Arc::new(fenced);
                true
            }
        });
        self.ticks.send_modify(|t| *t += 1);
    }

    fn index(&self, id: u32) -> Option<usize> {
        self.slots().iter().position(|s| s.backend.id == id)
    }
}

/// A running monitor. Dropping it stops every health-check task.
pub struct Monitor {
    handle: MonitorHandle,
    _tasks: JoinSet<()>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for t in self
            .handle
            .shared
            .added_tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

/// What other services hold of the monitor: the views, the route table, the node table's
/// decisions (status, primary, generation — persisted on every change), the event history,
/// and a way to ask for an immediate check of a node.
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

    /// The nodes out of service. Changes rarely: on a failure, a detach, a fence.
    pub fn fenced(&self) -> watch::Receiver<Arc<Vec<u32>>> {
        self.shared.fenced.subscribe()
    }

    /// Changes after every health check and every decision.
    pub fn ticks(&self) -> watch::Receiver<u64> {
        self.shared.ticks.subscribe()
    }

    /// A session saw node `id` fail: check it now rather than at the next period.
    pub fn suspect(&self, id: u32) {
        if let Some(s) = self.shared.slot(id) {
            s.wake.notify_one();
        }
    }

    /// The configured nodes (a reload may add some).
    pub fn backends(&self) -> Vec<Backend> {
        self.shared.backends()
    }

    /// Node `id`'s configuration.
    pub fn backend(&self, id: u32) -> Option<Backend> {
        self.shared.slot(id).map(|s| s.backend.clone())
    }

    /// Reads each known node's password from `passwords` again (a reload: a password
    /// rotated in the password file), for health checks and the controller's own
    /// connections from now on. A node whose entry is gone keeps the one it had.
    pub fn refresh_passwords(&self, passwords: &PassFile) {
        for slot in self.shared.slots().iter() {
            let mut t = slot.target.write().unwrap_or_else(|p| p.into_inner());
            if let Some(pw) = passwords.lookup(&t.host, t.port, &t.database, &t.user) {
                t.password = Some(pw);
            }
        }
    }

    /// Adds the nodes of `config` not known yet (pgpool: a new backend_hostnameN + reload). Each
    /// starts out of service (down), as a node pgwarden has never seen serve: put it into
    /// service with `pgwarden node recover` (a new, empty node) or `node attach` (one that
    /// already streams). Its health checks start at once. Ids already known are skipped.
    pub fn add_backends(
        &self,
        config: &Config,
        passwords: &PassFile,
    ) -> Result<Vec<u32>, StoreError> {
        let added: Vec<(Backend, Target)> = config
            .backends
            .iter()
            .map(|b| (b.clone(), make_target(config, b, passwords)))
            .collect();
        let mut ids = Vec::new();
        let mut new_slots = Vec::new();
        {
            let mut t = self.shared.write();
            let mut slots = (*self.shared.slots()).clone();
            for (b, target) in added {
                if slots.iter().any(|s| s.backend.id == b.id) {
                    continue;
                }
                let mut n = NodeState::new(Utc::now());
                n.status = NodeStatus::Down;
                n.status_reason = format!(
                    "added by a configuration reload; rebuild it with `pgwarden node recover {}` or attach it if it already streams",
                    b.id
                );
                t.nodes.push(n);
                ids.push(b.id);
                let slot = Arc::new(Slot {
                    backend: b,
                    target: RwLock::new(target),
                    wake: Notify::new(),
                    engaged: AtomicUsize::new(0),
                });
                new_slots.push((slots.len(), slot.clone()));
                slots.push(slot);
            }
            *self.shared.slots.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(slots);
            self.shared.persist(&t)?;
        }
        for (index, slot) in new_slots {
            self.shared.event(
                "reload",
                Some(slot.backend.id),
                format!(
                    "node {} ({}:{}) added by a configuration reload; it is out of service until it is recovered or attached",
                    slot.backend.id, slot.backend.host, slot.backend.port
                ),
            );
            let task = tokio::spawn(check_loop(self.shared.clone(), index, slot));
            self.shared
                .added_tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(task.abort_handle());
        }
        self.shared.publish();
        Ok(ids)
    }

    /// How the monitor connects to node `id`, for a check of one's own.
    pub fn target(&self, id: u32) -> Option<Target> {
        self.shared
            .slot(id)
            .map(|s| s.target.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    pub fn cluster(&self) -> ClusterState {
        let t = self.shared.read();
        self.shared.cluster(&t)
    }

    /// What the decisions in `pgwarden_core::cluster` take, for every node.
    pub fn facts(&self) -> Vec<NodeFacts> {
        let t = self.shared.read();
        self.shared
            .slots()
            .iter()
            .zip(&t.nodes)
            .map(|(s, n)| {
                let b = &s.backend;
                let obs = n.observation.as_ref();
                NodeFacts {
                    id: b.id,
                    status: n.status,
                    live: n.live,
                    in_recovery: obs.map(|o| o.in_recovery),
                    lsn: obs.and_then(Observation::wal_position),
                    timeline: obs.and_then(|o| o.timeline),
                    failover: b.failover,
                    priority: b.priority,
                }
            })
            .collect()
    }

    /// Sets node `id`'s status, writes the state file, logs the change and publishes the new
    /// route table. Returns whether anything changed.
    pub fn set_status(
        &self,
        id: u32,
        status: NodeStatus,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let Some(i) = self.shared.index(id) else {
            return Ok(false);
        };
        let changed = {
            let mut t = self.shared.write();
            let node = &mut t.nodes[i];
            if node.status == status {
                false
            } else {
                let from = node.status;
                node.status = status;
                if status == NodeStatus::Waiting {
                    // Decisions about a node coming (back) into service wait for a fresh look
                    // at it: what was seen before (a primary about to be restarted as a
                    // standby, say) no longer holds.
                    node.live = LiveStatus::Unknown;
                    node.observation = None;
                }
                node.last_status_change = Utc::now();
                node.status_reason = reason.to_string();
                let message = format!(
                    "node {id} status {} -> {}: {reason}",
                    from.as_str(),
                    status.as_str()
                );
                tracing::warn!(node = id, "{message}");
                self.shared.event("status", Some(id), message);
                self.shared.persist(&t)?;
                true
            }
        };
        self.shared.publish();
        Ok(changed)
    }

    /// Records a new primary (or none), bumping the failover generation when asked; writes
    /// the state file before anything is published.
    pub fn set_primary(
        &self,
        primary: Option<u32>,
        bump_generation: bool,
        reason: &str,
    ) -> Result<u64, StoreError> {
        let generation = {
            let mut t = self.shared.write();
            let before = (t.primary, t.generation);
            t.primary = primary;
            if bump_generation {
                t.generation += 1;
            }
            if let Err(e) = self.shared.persist(&t) {
                (t.primary, t.generation) = before;
                return Err(e);
            }
            let message = match primary {
                Some(p) => format!(
                    "node {p} is the primary (generation {}): {reason}",
                    t.generation
                ),
                None => format!("no primary (generation {}): {reason}", t.generation),
            };
            tracing::warn!("{message}");
            self.shared.event("primary", primary, message);
            t.generation
        };
        self.shared.publish();
        Ok(generation)
    }

    /// A handle on node `id`'s count of proxy sessions with a unit of work on it (see
    /// [`Engagement`]); none for an unknown node. Sessions keep it, so that engaging costs
    /// one atomic add, not a lookup.
    pub fn engagement(&self, id: u32) -> Option<Engagement> {
        self.shared.slot(id).map(Engagement)
    }

    /// Proxy sessions with a unit of work on node `id` right now.
    pub fn engaged(&self, id: u32) -> usize {
        std::sync::atomic::fence(Ordering::SeqCst);
        self.shared
            .slot(id)
            .map_or(0, |s| s.engaged.load(Ordering::SeqCst))
    }

    /// Holds new client sessions (an online recovery's 2nd stage), closing the ones idle longer
    /// than `idle_limit` (zero: none), or releases them (`None`).
    pub fn set_hold(&self, idle_limit: Option<Duration>) {
        self.shared.hold.send_replace(idle_limit);
    }

    /// Whether sessions are held, and the idle limit: what the proxy watches.
    pub fn hold(&self) -> watch::Receiver<Option<Duration>> {
        self.shared.hold.subscribe()
    }

    /// The proxy counts its client sessions here (after any hold), so a 2nd stage knows when
    /// none is left.
    pub fn session_started(&self) {
        self.shared.sessions.fetch_add(1, Ordering::SeqCst);
    }

    pub fn session_ended(&self) {
        let _ = self
            .shared
            .sessions
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_sub(1))
            });
    }

    /// Client sessions connected through the proxy now.
    pub fn sessions(&self) -> usize {
        self.shared.sessions.load(Ordering::SeqCst)
    }

    /// Records the standbys that may hold acknowledged commits (synchronous mode), written to
    /// the state file before it returns.
    pub fn set_sync_standbys(&self, ids: Vec<u32>, reason: &str) -> Result<(), StoreError> {
        let mut t = self.shared.write();
        if t.sync_standbys == ids {
            return Ok(());
        }
        let before = std::mem::replace(&mut t.sync_standbys, ids.clone());
        if let Err(e) = self.shared.persist(&t) {
            t.sync_standbys = before;
            return Err(e);
        }
        let list = ids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let message = format!("synchronous standby(s): [{list}]: {reason}");
        tracing::info!("{message}");
        self.shared.event("sync", ids.first().copied(), message);
        Ok(())
    }

    /// Adds an event to the history (and the log).
    pub fn event(&self, kind: &str, node: Option<u32>, message: String) {
        tracing::info!(node, kind, "{message}");
        self.shared.event(kind, node, message);
    }

    /// Events after sequence number `after`, oldest first.
    pub fn events(&self, after: u64) -> Vec<Event> {
        self.shared
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .since(after)
    }
}

impl Monitor {
    /// Starts one health-check task per backend. Must be called inside a tokio runtime.
    /// The saved state (`failover.state_file`) is read first: a node that was down stays down,
    /// and the recorded primary and generation are kept.
    pub fn start(config: &Config, passwords: &PassFile) -> Result<Monitor, StoreError> {
        Self::start_with(config, passwords, Some(config.failover.state_file.clone()))
    }

    /// As [`Monitor::start`], with the state file chosen by the caller (`None`: nothing is
    /// saved, for tools that only look).
    pub fn start_with(
        config: &Config,
        passwords: &PassFile,
        state_file: Option<PathBuf>,
    ) -> Result<Monitor, StoreError> {
        let now = Utc::now();
        let saved = match &state_file {
            Some(p) => store::load(p)?,
            None => None,
        };
        let nodes: Vec<NodeState> = config
            .backends
            .iter()
            .map(|b| {
                let mut n = NodeState::new(now);
                let rec = saved.as_ref().and_then(|s| s.nodes.get(&b.id));
                n.status = status_after_restart(rec);
                if let Some(r) = rec {
                    if n.status == NodeStatus::Down {
                        n.last_status_change = r.since;
                        n.status_reason = r.reason.clone();
                    }
                }
                n
            })
            .collect();
        let (generation, primary) = saved
            .as_ref()
            .map_or((0, None), |s| (s.generation, s.primary));
        let sync_standbys = saved
            .as_ref()
            .map_or(Vec::new(), |s| s.sync_standbys.clone());
        let primary = primary.filter(|p| config.backend(*p).is_some());
        let views = build_views(&config.backends, &nodes, primary);
        let table = RouteTable::from_views(&views, primary);
        let targets: Vec<Target> = config
            .backends
            .iter()
            .map(|b| make_target(config, b, passwords))
            .collect();
        let slots: Vec<Arc<Slot>> = config
            .backends
            .iter()
            .zip(targets)
            .map(|(b, target)| {
                Arc::new(Slot {
                    backend: b.clone(),
                    target: RwLock::new(target),
                    wake: Notify::new(),
                    engaged: AtomicUsize::new(0),
                })
            })
            .collect();
        let shared = Arc::new(Shared {
            slots: RwLock::new(Arc::new(slots.clone())),
            table: RwLock::new(Table {
                nodes,
                generation,
                primary,
                sync_standbys,
            }),
            routes: watch::Sender::new(Arc::new(table)),
            fenced: watch::Sender::new(Arc::new(Vec::new())),
            ticks: watch::Sender::new(0),
            events: Mutex::new(EventLog::new(EVENTS_KEPT)),
            state_file,
            added_tasks: Mutex::new(Vec::new()),
            hold: watch::Sender::new(None),
            sessions: AtomicUsize::new(0),
        });
        match &saved {
            Some(s) => shared.event(
                "start",
                None,
                format!(
                    "state read back: generation {}, primary {}, down: [{}]",
                    s.generation,
                    s.primary.map_or("none".into(), |p| format!("node {p}")),
                    s.nodes
                        .iter()
                        .filter(|(_, r)| r.status == NodeStatus::Down)
                        .map(|(id, _)| id.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            None => shared.event(
                "start",
                None,
                "no saved state: every node is checked afresh".into(),
            ),
        }
        shared.publish();
        let mut tasks = JoinSet::new();
        for (index, slot) in slots.into_iter().enumerate() {
            tasks.spawn(check_loop(shared.clone(), index, slot));
        }
        Ok(Monitor {
            handle: MonitorHandle { shared },
            _tasks: tasks,
        })
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

/// How the monitor connects to backend `b`: the configured user and database, the password
/// from the password file.
fn make_target(config: &Config, b: &Backend, passwords: &PassFile) -> Target {
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
    Target {
        host: b.host.clone(),
        port: b.port,
        user: config.credentials.user.clone(),
        database: config.credentials.database.clone(),
        password,
        connect_timeout: b.health_check.connect_timeout,
    }
}

/// One health-check cycle: the first attempt, then up to `max_retries` more.
async fn run_cycle(backend: &Backend, target: &Target, checker: &mut Checker) -> CheckCycle {
    let hc = &backend.health_check;
    let started = Instant::now();
    let mut retries = 0;
    let result = loop {
        let error: CheckError = match timeout(hc.timeout, checker.check(target)).await {
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
        started,
        finished_at: Utc::now(),
        duration: started.elapsed(),
        retries,
        result,
    }
}

async fn check_loop(shared: Arc<Shared>, index: usize, slot: Arc<Slot>) {
    let backend = &slot.backend;
    let mut ticker = tokio::time::interval(backend.health_check.period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut checker = Checker::default();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = slot.wake.notified() => {}
        }
        let target = slot
            .target
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let cycle = run_cycle(backend, &target, &mut checker).await;
        apply_cycle(&shared, index, backend, cycle);
    }
}

fn apply_cycle(shared: &Shared, index: usize, backend: &Backend, cycle: CheckCycle) {
    {
        let mut t = shared.write();
        let Some(node) = t.nodes.get_mut(index) else {
            return;
        };
        let role_before = node.role;
        let live_before = node.live;
        let change = node.apply(cycle, backend.failover);
        let role_after = node.role;
        let live_after = node.live;
        if role_after != role_before {
            tracing::info!(
                node = backend.id,
                "node {} role {} -> {}",
                backend.id,
                role_before.as_str(),
                role_after.as_str()
            );
        }
        if live_after != live_before && live_before != LiveStatus::Unknown {
            shared.event(
                "pg_status",
                Some(backend.id),
                format!(
                    "node {} pg_status {} -> {}",
                    backend.id,
                    live_before.as_str(),
                    live_after.as_str()
                ),
            );
        }
        if let Some(change) = change {
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
            shared.event("status", Some(backend.id), message);
            // A failure to write is logged and in the history; the node's status in memory
            // is the truth for routing either way.
            let _ = shared.persist(&t);
        }
    }
    shared.publish();
}
