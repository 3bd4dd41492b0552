//! The controller: the warden's hands. It watches the node table the monitor keeps and acts on
//! the decisions of `pgwarden_core::cluster`:
//!
//! * adopt the one primary on first start;
//! * fence false primaries (a node not in recovery that is not the primary);
//! * fail over: fence the failed primary (no primary is recorded, so the proxy routes no
//!   writes and closes the sessions on it), look at the standbys afresh, run pgpool's
//!   failover_command if configured, `pg_promote()` the one with the most WAL, record it, then
//!   point the other standbys at it (primary_conninfo + reload, or follow_primary_command) and
//!   take out of service any that does not stream within `follow_timeout`;
//! * attach, detach and promote by hand, refusing what is unsafe with the reason.
//!
//! Every step is persisted (through the monitor's state file) before the next one starts, and
//! lands in the event history. One operation at a time: automatic and manual ones share a lock.

mod hands;
mod hook;
mod local;
mod recovery;

pub use hook::{run_hook, HookOutcome};

use pgwarden_core::cluster::{
    check_attach, check_detach, check_promote, check_switchover, choose_candidate, decide,
    failover_candidate, repoint_conninfo, sync_plan, Decision, HookArgs, HookNode, NodeFacts,
    SyncPlan,
};
use pgwarden_core::config::{Backend, Config, FailoverConfig};
use pgwarden_core::node::{LiveStatus, NodeStatus};
use pgwarden_monitor::{probe, run_sql, MonitorHandle, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio::time::{sleep, timeout};

const APP: &str = "pgwarden controller";

/// Why an operation was not done.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Unsafe or impossible in the current state; nothing was changed.
    #[error("{0}")]
    Refused(String),
    #[error("node {0} is not configured")]
    UnknownNode(u32),
    /// A step failed; the message names it.
    #[error("{step} failed: {reason}")]
    Failed { step: String, reason: String },
    #[error("{0}")]
    Store(#[from] StoreError),
}

struct Inner {
    /// What synchronous_standby_names was last set to on the primary (`None`: not since start).
    sync_names: std::sync::Mutex<Option<String>>,
    cfg: FailoverConfig,
    /// The configuration file: the sandbox keeps its logs beside it.
    config_file: std::path::PathBuf,
    monitor: MonitorHandle,
    /// One operation at a time.
    op: Mutex<()>,
    recovery: pgwarden_core::config::RecoveryConfig,
    agent_secret_file: Option<std::path::PathBuf>,
    /// Per node: the running recovery, or how the last one ended.
    recoveries:
        std::sync::Mutex<std::collections::HashMap<u32, pgwarden_core::recovery::RecoveryStatus>>,
}

/// What the API, the PCP server and the CLI hold of the controller.
#[derive(Clone)]
pub struct ControllerHandle {
    inner: Arc<Inner>,
}

/// A running controller; dropping it stops the automatic decisions.
pub struct Controller {
    handle: ControllerHandle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Controller {
    pub fn start(config: &Config, monitor: MonitorHandle) -> Controller {
        let inner = Arc::new(Inner {
            sync_names: std::sync::Mutex::new(None),
            cfg: config.failover.clone(),
            config_file: config.file.clone(),
            monitor,
            op: Mutex::new(()),
            recovery: config.recovery.clone(),
            agent_secret_file: config.agent.secret_file.clone(),
            recoveries: std::sync::Mutex::new(std::collections::HashMap::new()),
        });
        let task = tokio::spawn(watch(inner.clone()));
        Controller {
            handle: ControllerHandle { inner },
            task,
        }
    }

    pub fn handle(&self) -> ControllerHandle {
        self.handle.clone()
    }
}

/// Decides after every health check and acts.
async fn watch(inner: Arc<Inner>) {
    let mut ticks = inner.monitor.ticks();
    let mut last_stuck: Option<String> = None;
    let mut retry_at: Option<Instant> = None;
    let mut sync_retry_at: Option<Instant> = None;
    let mut auto = recovery::AutoRecovery::default();
    loop {
        // After a failed attempt, look again at the latest at the retry time.
        let wait = retry_at.map(|t| t.saturating_duration_since(Instant::now()));
        tokio::select! {
            r = ticks.changed() => if r.is_err() { return },
            _ = sleep(wait.unwrap_or(Duration::from_secs(3600))), if wait.is_some() => {}
        }
        let _guard = inner.op.lock().await;
        let m = &inner.monitor;
        let state = m.cluster();
        if inner.recovery.auto {
            auto.tick(&inner, &state, &m.facts());
        }
        let decision = decide(&state, &m.facts(), inner.cfg.auto, inner.cfg.synchronous);
        if !matches!(decision, Decision::Stuck { .. }) {
            last_stuck = None;
        }
        match decision {
            Decision::Nothing => {
                if inner.cfg.synchronous && sync_retry_at.is_none_or(|t| Instant::now() >= t) {
                    match sync_step(&inner).await {
                        Ok(()) => sync_retry_at = None,
                        Err(e) => {
                            m.event("sync", None, format!("synchronous mode: {e}"));
                            sync_retry_at = Some(Instant::now() + Duration::from_secs(5));
                        }
                    }
                }
            }
            Decision::Adopt { primary } => {
                let _ = m.set_primary(
                    Some(primary),
                    false,
                    "adopted: the only node in service that is not in recovery",
                );
            }
            Decision::FenceFalsePrimaries { nodes } => {
                for n in nodes {
                    let reason = format!(
                        "false primary: not in recovery, but node {} is the primary (generation {}); it gets no traffic until it is rebuilt (`pgwarden node recover {n}`)",
                        state.primary.map_or("?".into(), |p| p.to_string()),
                        state.generation
                    );
                    m.event("fence", Some(n), format!("node {n}: {reason}"));
                    let _ = m.set_status(n, NodeStatus::Down, &reason);
                }
            }
            Decision::Failover { failed, promote } => {
                if retry_at.is_some_and(|t| Instant::now() < t) {
                    continue;
                }
                match failover(&inner, failed, promote, false).await {
                    Ok(_) => retry_at = None,
                    Err(e) => {
                        m.event("error", Some(promote), format!("failover: {e}"));
                        retry_at = Some(Instant::now() + Duration::from_secs(5));
                    }
                }
            }
            Decision::Stuck { reason } => {
                if last_stuck.as_deref() != Some(&reason) {
                    tracing::error!("{reason}");
                    m.event("stuck", None, reason.clone());
                    last_stuck = Some(reason);
                }
            }
        }
    }
}

impl ControllerHandle {
    pub fn monitor(&self) -> &MonitorHandle {
        &self.inner.monitor
    }

    fn backend(&self, id: u32) -> Result<Backend, OpError> {
        self.inner
            .monitor
            .backend(id)
            .ok_or(OpError::UnknownNode(id))
    }

    /// Puts node `id` back into service (pgpool's attach / failback). It is checked at once and
    /// takes traffic once the check succeeds.
    pub async fn attach(&self, id: u32) -> Result<String, OpError> {
        self.backend(id)?;
        let _guard = self.inner.op.lock().await;
        let m = &self.inner.monitor;
        // Look at the node now, not at what the last periodic check saw.
        refresh(m, id).await;
        check_attach(&m.cluster(), &m.facts(), id).map_err(OpError::Refused)?;
        m.set_status(id, NodeStatus::Waiting, "attached by hand")?;
        m.event("attach", Some(id), format!("node {id} attached"));
        m.suspect(id);
        Ok(format!(
            "node {id} attached; it takes traffic once its health check succeeds"
        ))
    }

    /// Takes node `id` out of service. Detaching the primary fails over to the best standby,
    /// as in pgpool.
    pub async fn detach(&self, id: u32) -> Result<String, OpError> {
        self.backend(id)?;
        let _guard = self.inner.op.lock().await;
        let m = &self.inner.monitor;
        let state = m.cluster();
        check_detach(&state, &m.facts(), id, self.inner.cfg.auto).map_err(OpError::Refused)?;
        m.set_status(
            id,
            NodeStatus::Down,
            pgwarden_core::recovery::DETACHED_BY_HAND,
        )?;
        m.event("detach", Some(id), format!("node {id} detached"));
        if state.primary == Some(id) {
            let facts = m.facts();
            let candidate = choose_candidate(&facts, None).map_err(OpError::Refused)?;
            let new = failover(&self.inner, Some(id), candidate, false).await?;
            return Ok(format!(
                "node {id} detached; it was the primary: node {new} was promoted"
            ));
        }
        Ok(format!("node {id} detached"))
    }

    /// Promotes standby `id` (`pgwarden node promote`, `pcp_promote_node`). Without `force` it
    /// refuses while the primary is healthy (that is a switchover) or when another standby has
    /// more WAL.
    pub async fn promote(&self, id: u32, force: bool) -> Result<String, OpError> {
        self.backend(id)?;
        let _guard = self.inner.op.lock().await;
        let m = &self.inner.monitor;
        refresh(m, id).await;
        let state = m.cluster();
        check_promote(&state, &m.facts(), id, force).map_err(OpError::Refused)?;
        let old = state.primary;
        if let Some(p) = old {
            m.set_status(
                p,
                NodeStatus::Down,
                &format!("fenced: node {id} is being promoted by hand"),
            )?;
        }
        let new = failover(&self.inner, old, id, true).await?;
        Ok(format!("node {new} promoted"))
    }
}

impl ControllerHandle {
    /// A planned switchover to standby `id` (`pgwarden switchover --to`, `pcp_promote_node
    /// -s`): hold new writes, let running transactions finish (up to
    /// `failover.switchover_timeout`), fence and cleanly stop the old primary, wait until `id`
    /// has received all of its WAL, promote `id`, then restart the old primary as a standby of
    /// it. No committed transaction is lost: `id` has everything before it is promoted. If
    /// anything fails before the promotion, the old primary is started again and stays the
    /// primary.
    pub async fn switchover(&self, id: u32) -> Result<String, OpError> {
        self.backend(id)?;
        let _guard = self.inner.op.lock().await;
        let m = &self.inner.monitor;
        refresh(m, id).await;
        // Asked of the primary now, not taken from its last periodic check.
        let new_b = self.backend(id)?;
        let streaming = match m.cluster().primary.and_then(|p| m.target(p)) {
            Some(t) => {
                let sql = format!(
                    "SELECT state FROM pg_stat_replication WHERE application_name = {}",
                    sql_literal(&new_b.application_name)
                );
                sql_one(&t, &sql).await.ok().flatten().as_deref() == Some("streaming")
            }
            None => false,
        };
        let old =
            check_switchover(&m.cluster(), &m.facts(), id, streaming).map_err(OpError::Refused)?;
        let old_b = self.backend(old)?;
        let hands = hands::Hands::for_node(&self.inner, &old_b).map_err(|e| {
            OpError::Refused(format!(
                "{e}; use `pgwarden node promote {id} --force` to fence node {old} and promote node {id}"
            ))
        })?;
        switchover(&self.inner, &hands, &old_b, &new_b).await
    }
}

/// The first row of `sql` on `target` (empty when there is none), within 10 s.
async fn sql_row(
    target: &pgwarden_monitor::Target,
    sql: &str,
) -> Result<Vec<Option<String>>, String> {
    let rows = timeout(Duration::from_secs(10), run_sql(target, sql, APP))
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(rows.into_iter().next().unwrap_or_default())
}

/// The first column of the first row of `sql` on `target`, within 10 s.
async fn sql_one(target: &pgwarden_monitor::Target, sql: &str) -> Result<Option<String>, String> {
    Ok(sql_row(target, sql).await?.into_iter().next().flatten())
}

/// `ALTER SYSTEM SET name = value` and a reload (it cannot run in one multi-statement query:
/// ALTER SYSTEM refuses to run inside a transaction block).
async fn alter_system(
    target: &pgwarden_monitor::Target,
    name: &str,
    value: &str,
) -> Result<(), String> {
    sql_one(
        target,
        &format!("ALTER SYSTEM SET {name} = {}", sql_literal(value)),
    )
    .await?;
    sql_one(target, "SELECT pg_reload_conf()").await?;
    Ok(())
}

/// A physical replication slot named `slot` on `target`, created unless it exists.
async fn ensure_slot(target: &pgwarden_monitor::Target, slot: &str) -> Result<(), String> {
    sql_one(
        target,
        &format!(
            "SELECT pg_create_physical_replication_slot({0}) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {0})",
            sql_literal(slot)
        ),
    )
    .await
    .map(drop)
}

/// Waits (up to 10 s) until the route table sends writes to `id`: the monitor must have seen
/// it answer as a primary. It is checked at once rather than at its next period.
async fn wait_routed(m: &MonitorHandle, id: u32) {
    let mut routes = m.routes();
    m.suspect(id);
    let _ = timeout(Duration::from_secs(10), async {
        while routes.borrow_and_update().primary != Some(id) {
            if routes.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
}

async fn switchover(
    inner: &Arc<Inner>,
    hands: &hands::Hands,
    old: &Backend,
    new: &Backend,
) -> Result<String, OpError> {
    let m = &inner.monitor;
    let started = Instant::now();
    let fail = |step: &str, reason: String| OpError::Failed {
        step: format!("switchover: {step}"),
        reason,
    };
    let old_t = m.target(old.id).ok_or(OpError::UnknownNode(old.id))?;
    let new_t = m.target(new.id).ok_or(OpError::UnknownNode(new.id))?;
    m.event(
        "switchover",
        Some(new.id),
        format!(
            "switchover from node {} to node {} started: new writes wait",
            old.id, new.id
        ),
    );
    // What node `new` streams with: the template for the old primary's conninfo.
    let new_conninfo = sql_one(&new_t, "SELECT current_setting('primary_conninfo')")
        .await
        .map_err(|e| fail("reading the standby's primary_conninfo", e))?
        .unwrap_or_default();

    // 1. Hold: no primary is recorded, so new writes wait in the proxy (proxy.primary_wait).
    let generation = m.set_primary(None, true, "switchover: holding new writes")?;

    // 2. Let running work on the old primary finish: the proxy's sessions (statements,
    // transactions, COPY in progress there) and the transactions of clients connected to it
    // directly.
    let busy_sql = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND xact_start IS NOT NULL AND application_name NOT LIKE 'pgwarden%'";
    let deadline = Instant::now() + inner.cfg.switchover_timeout;
    let quiet = |m: &MonitorHandle| m.engaged(old.id) == 0;
    loop {
        let direct = sql_one(&old_t, busy_sql).await;
        if let Err(e) = &direct {
            let _ = m.set_primary(Some(old.id), false, "switchover abandoned");
            return Err(fail("waiting for running transactions", e.clone()));
        }
        if quiet(m) && direct.as_ref().ok().cloned().flatten().as_deref() == Some("0") {
            break;
        }
        if Instant::now() >= deadline {
            m.event(
                "switchover",
                Some(old.id),
                format!(
                    "work still running on node {} after {} s ({} proxy session(s), {} direct transaction(s)): those sessions are closed",
                    old.id,
                    inner.cfg.switchover_timeout.as_secs(),
                    m.engaged(old.id),
                    direct.ok().flatten().unwrap_or_default()
                ),
            );
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }

    // 3. Fence the old primary: a session that had not yet engaged it sees the fence and
    // waits for the new primary; one that had is waited for (briefly) before the stop.
    m.set_status(old.id, NodeStatus::Down, "switchover: stopped to hand over")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !quiet(m) && Instant::now() < deadline {
        sleep(Duration::from_millis(10)).await;
    }
    if !quiet(m) {
        // Sessions end at a fence of a node they work on; one that did not is named here,
        // since the stop below cuts it off under its client.
        m.event(
            "switchover",
            Some(old.id),
            format!(
                "{} proxy session(s) still engaged on node {} 5 s after its fence: stopping it anyway",
                m.engaged(old.id),
                old.id
            ),
        );
    }
    // Then stop it cleanly: the shutdown checkpoint and all WAL go to the connected
    // standbys first.
    let final_lsn = sql_one(&old_t, "SELECT pg_current_wal_lsn()")
        .await
        .ok()
        .flatten();
    if let Err(e) = hands.stop_fast(old).await {
        return Err(undo_switchover(inner, hands, old, fail("stopping the old primary", e)).await);
    }
    m.event(
        "switchover",
        Some(old.id),
        format!(
            "node {} stopped cleanly at {}",
            old.id,
            final_lsn.as_deref().unwrap_or("?")
        ),
    );

    // 4. The new primary must have received everything the old one wrote.
    if let Some(lsn) = &final_lsn {
        let sql = format!(
            "SELECT pg_last_wal_receive_lsn() >= '{}'::pg_lsn",
            lsn.replace('\'', "")
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match sql_one(&new_t, &sql).await {
                Ok(Some(t)) if t == "t" => break,
                _ if Instant::now() < deadline => sleep(Duration::from_millis(50)).await,
                other => {
                    let e = format!("node {} has not received up to {lsn}: {other:?}", new.id);
                    return Err(
                        undo_switchover(inner, hands, old, fail("waiting for the WAL", e)).await,
                    );
                }
            }
        }
    }

    // 5. Promote.
    if let Err(e) = promote_node(inner, new).await {
        return Err(undo_switchover(inner, hands, old, e).await);
    }
    m.set_primary(Some(new.id), false, "switchover: promoted")?;
    wait_routed(m, new.id).await;
    let pause = started.elapsed();
    m.event(
        "switchover",
        Some(new.id),
        format!(
            "node {} is the primary (generation {generation}); writes were held for {} ms",
            new.id,
            pause.as_millis()
        ),
    );

    // 6. The old primary becomes a standby of the new one; the other standbys follow.
    let backends = m.backends();
    for f in m.facts() {
        if f.id != new.id
            && f.id != old.id
            && matches!(f.status, NodeStatus::Up | NodeStatus::Waiting)
            && f.in_recovery == Some(true)
        {
            if let Some(b) = backends.iter().find(|b| b.id == f.id).cloned() {
                let inner = inner.clone();
                let (new, old) = (new.clone(), old.clone());
                tokio::spawn(async move {
                    follow(&inner, &b, &new, Some(&old), generation).await;
                });
            }
        }
    }
    let rejoin = async {
        let slot = local::slot_name(old);
        ensure_slot(&new_t, &slot).await?;
        let conninfo = pgwarden_core::cluster::conninfo_set(
            &repoint_conninfo(&new_conninfo, &new.host, new.port),
            "application_name",
            &old.application_name,
        );
        let user = m.target(new.id).map(|t| t.user).unwrap_or_default();
        hands
            .make_standby(old, new, &user, &conninfo, &slot)
            .await?;
        hands.start(inner, old).await?;
        wait_streaming(m, old, new, inner.cfg.follow_timeout).await
    }
    .await;
    match rejoin {
        Ok(()) => {
            m.set_status(
                old.id,
                NodeStatus::Waiting,
                &format!("switchover: a standby of node {}", new.id),
            )?;
            m.suspect(old.id);
            m.event(
                "switchover",
                Some(old.id),
                format!(
                    "switchover done in {} ms: node {} streams from node {}",
                    started.elapsed().as_millis(),
                    old.id,
                    new.id
                ),
            );
            Ok(format!(
                "switched over to node {} (writes held for {} ms); node {} is a standby of it",
                new.id,
                pause.as_millis(),
                old.id
            ))
        }
        Err(e) => {
            let text = format!(
                "node {} is the primary, but node {} did not rejoin as its standby: {e}; rebuild it with `pgwarden node recover {}`",
                new.id, old.id, old.id
            );
            m.event("switchover", Some(old.id), text.clone());
            Ok(text)
        }
    }
}

/// A switchover failed before the promotion: the old primary is started again (if it was
/// stopped) and put back as the primary. Returns the original error.
async fn undo_switchover(
    inner: &Arc<Inner>,
    hands: &hands::Hands,
    old: &Backend,
    error: OpError,
) -> OpError {
    let m = &inner.monitor;
    m.event("switchover", Some(old.id), format!("{error}; undoing"));
    if let Some(t) = m.target(old.id) {
        if timeout(Duration::from_secs(3), probe(&t))
            .await
            .map(|r| r.is_err())
            .unwrap_or(true)
        {
            if let Err(e) = hands.start(inner, old).await {
                m.event(
                    "error",
                    Some(old.id),
                    format!("restarting the old primary: {e}"),
                );
            }
        }
    }
    let _ = m.set_status(old.id, NodeStatus::Waiting, "switchover undone");
    let _ = m.set_primary(
        Some(old.id),
        false,
        "switchover undone: the old primary stays",
    );
    m.suspect(old.id);
    error
}

/// A standby name no node has: commits wait for it, i.e. until a real standby is named.
const BLOCK_NAME: &str = "\"pgwarden_no_synchronous_standby\"";

/// Synchronous mode's step: keep one streaming standby synchronous on the primary; replace it
/// safely (the successor first confirms everything, then the old one is forgotten); with
/// nobody left, block commits or let them go on, as `failover.sync_fallback` says.
async fn sync_step(inner: &Inner) -> Result<(), String> {
    let m = &inner.monitor;
    let state = m.cluster();
    let Some(p) = state.primary else {
        return Ok(());
    };
    let Some(pt) = m.target(p) else {
        return Ok(());
    };
    let backends = m.backends();
    let name_of = |id: u32| {
        backends
            .iter()
            .find(|b| b.id == id)
            .map(|b| format!("\"{}\"", b.application_name.replace('"', "")))
    };
    let views = m.views();
    let streaming: Vec<u32> = views
        .iter()
        .filter(|v| v.replication_state.as_deref() == Some("streaming"))
        .map(|v| v.id)
        .collect();
    let applied = inner
        .sync_names
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let blocking = applied.as_deref() == Some(BLOCK_NAME);
    let apply = |names: String| {
        let pt = pt.clone();
        async move {
            alter_system(&pt, "synchronous_standby_names", &names).await?;
            Ok::<String, String>(names)
        }
    };
    let plan = sync_plan(
        &state,
        &m.facts(),
        &streaming,
        inner.cfg.sync_fallback,
        blocking,
    );
    let record = |names: String| {
        *inner.sync_names.lock().unwrap_or_else(|p| p.into_inner()) = Some(names);
    };
    match plan {
        SyncPlan::Keep => {
            // After a start, make sure the primary says what the state file says.
            if applied.is_none() {
                let want = match state.sync_standbys.first() {
                    Some(id) => name_of(*id).unwrap_or_default(),
                    None if inner.cfg.sync_fallback
                        == pgwarden_core::config::SyncFallback::Block =>
                    {
                        BLOCK_NAME.to_string()
                    }
                    None => String::new(),
                };
                record(apply(want).await?);
            }
            Ok(())
        }
        SyncPlan::Designate { old, new } => {
            let mut set = state.sync_standbys.clone();
            if !set.contains(&new) {
                set.push(new);
            }
            // Recorded first: from the moment the primary names it, it may hold commits.
            m.set_sync_standbys(
                set,
                &format!("node {new} is becoming the synchronous standby"),
            )
            .map_err(|e| e.to_string())?;
            let names = name_of(new).ok_or("no such node")?;
            record(apply(names).await?);
            // It confirms commits once it is reported synchronous; and everything committed
            // before (confirmed by the old one) must have reached it.
            let app = backends
                .iter()
                .find(|b| b.id == new)
                .map(|b| b.application_name.clone())
                .unwrap_or_default();
            let deadline = Instant::now() + Duration::from_secs(30);
            let target_lsn = sql_one(&pt, "SELECT pg_current_wal_lsn()")
                .await?
                .unwrap_or_default();
            let check = format!(
                "SELECT sync_state = 'sync' AND flush_lsn >= '{}'::pg_lsn FROM pg_stat_replication WHERE application_name = {}",
                target_lsn.replace('\'', ""),
                sql_literal(&app)
            );
            loop {
                if sql_one(&pt, &check).await?.as_deref() == Some("t") {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "node {new} did not become synchronous and catch up within 30 s"
                    ));
                }
                sleep(Duration::from_millis(50)).await;
            }
            m.set_sync_standbys(
                vec![new],
                &match old {
                    Some(o) => format!("node {new} replaces node {o} as the synchronous standby"),
                    None => format!("node {new} is the synchronous standby"),
                },
            )
            .map_err(|e| e.to_string())?;
            Ok(())
        }
        SyncPlan::Release => {
            record(apply(String::new()).await?);
            m.set_sync_standbys(
                Vec::new(),
                "no standby can be synchronous; failover.sync_fallback = \"async\": commits go on unprotected",
            )
            .map_err(|e| e.to_string())?;
            Ok(())
        }
        SyncPlan::Block => {
            record(apply(BLOCK_NAME.to_string()).await?);
            m.event(
                "sync",
                None,
                "no standby can be synchronous; failover.sync_fallback = \"block\": commits wait until one streams".into(),
            );
            Ok(())
        }
    }
}

/// Runs one health check of node `id` right now and waits for its result to be in the table.
async fn refresh(m: &MonitorHandle, id: u32) {
    let mut ticks = m.ticks();
    ticks.borrow_and_update();
    m.suspect(id);
    let _ = timeout(Duration::from_secs(5), async {
        // The check of that node bumps the ticks once it is applied (other nodes' checks may
        // bump them first; a second look is cheap).
        for _ in 0..3 {
            if ticks.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
}

fn hook_node(b: &Backend) -> HookNode {
    HookNode {
        id: b.id,
        host: b.host.clone(),
        port: b.port,
        data_dir: b.data_dir.display().to_string(),
    }
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Fences the old primary, promotes a standby, records it, and has the others follow.
/// Returns the new primary's id.
async fn failover(
    inner: &Arc<Inner>,
    failed: Option<u32>,
    planned: u32,
    manual: bool,
) -> Result<u32, OpError> {
    let m = &inner.monitor;
    let started = Instant::now();
    let failed_text = failed.map_or("none".to_string(), |f| format!("node {f}"));
    m.event(
        "failover",
        failed,
        format!("failover started: old primary {failed_text}; fencing it (no writes are routed until a new primary is promoted)"),
    );
    // 1. Fence: from here on no session writes anywhere, and the old primary's sessions are
    // closed by the proxy (the node is down).
    let generation = m.set_primary(None, true, "fenced the old primary for a failover")?;

    // 2. Choose with fresh positions: the standbys may have received more since the last
    // periodic check.
    let chosen = if manual {
        planned
    } else {
        fresh_candidate(m, failed, inner.cfg.synchronous)
            .await
            .unwrap_or(planned)
    };
    let backends = m.backends();
    let by_id = |id: u32| backends.iter().find(|b| b.id == id);
    let new_backend = by_id(chosen).ok_or(OpError::UnknownNode(chosen))?.clone();
    m.event(
        "failover",
        Some(chosen),
        format!("node {chosen} chosen to be promoted (generation {generation})"),
    );

    // 3. pgpool's failover_command, when configured (it may promote the node itself).
    if let Some(cmd) = &inner.cfg.failover_command {
        let failed_b = failed.and_then(by_id);
        let args = HookArgs {
            node: failed_b.map(hook_node),
            new_main: Some(hook_node(&new_backend)),
            old_main: failed,
            old_primary: failed_b.map(hook_node),
        };
        let out = run_hook(cmd, &args, inner.cfg.command_timeout).await;
        m.event(
            "hook",
            failed,
            format!("failover_command: {}", out.summary()),
        );
    }

    // 4. Promote. In synchronous mode the new primary first gets a synchronous_standby_names
    // that makes its first commits wait (or not, with the async fallback) until a standby is
    // designated: no commit is acknowledged unconfirmed in between.
    if inner.cfg.synchronous {
        let names = match inner.cfg.sync_fallback {
            pgwarden_core::config::SyncFallback::Block => BLOCK_NAME,
            pgwarden_core::config::SyncFallback::Async => "",
        };
        if let Some(t) = m.target(chosen) {
            alter_system(&t, "synchronous_standby_names", names)
                .await
                .map_err(|e| OpError::Failed {
                    step: format!("setting synchronous_standby_names on node {chosen}"),
                    reason: e,
                })?;
            *inner.sync_names.lock().unwrap_or_else(|p| p.into_inner()) = Some(names.to_string());
        }
    }
    promote_node(inner, &new_backend).await?;
    m.set_primary(
        Some(chosen),
        false,
        &format!(
            "promoted in {} ms after {failed_text} was fenced",
            started.elapsed().as_millis()
        ),
    )?;
    if !m.cluster().sync_standbys.is_empty() {
        // It was the synchronous standby; the next one is chosen once a standby streams.
        m.set_sync_standbys(Vec::new(), &format!("node {chosen} is now the primary"))?;
    }
    wait_routed(m, chosen).await;
    m.event(
        "promote",
        Some(chosen),
        format!(
            "node {chosen} is the new primary (generation {generation}); failover took {} ms",
            started.elapsed().as_millis()
        ),
    );

    // 5. The other standbys follow, in the background.
    let followers: Vec<Backend> = m
        .facts()
        .iter()
        .filter(|f| {
            f.id != chosen
                && Some(f.id) != failed
                && matches!(f.status, NodeStatus::Up | NodeStatus::Waiting)
                && f.in_recovery == Some(true)
        })
        .filter_map(|f| by_id(f.id).cloned())
        .collect();
    for b in followers {
        let inner = inner.clone();
        let new_backend = new_backend.clone();
        let old = failed.and_then(by_id).cloned();
        tokio::spawn(async move {
            follow(&inner, &b, &new_backend, old.as_ref(), generation).await;
        });
    }
    Ok(chosen)
}

/// Probes every standby in service now and chooses among them.
async fn fresh_candidate(m: &MonitorHandle, failed: Option<u32>, synchronous: bool) -> Option<u32> {
    let mut facts: Vec<NodeFacts> = m.facts();
    for f in facts.iter_mut() {
        if Some(f.id) == failed || f.status != NodeStatus::Up {
            continue;
        }
        let Some(target) = m.target(f.id) else {
            continue;
        };
        match timeout(Duration::from_secs(3), probe(&target)).await {
            Ok(Ok(obs)) => {
                f.live = LiveStatus::Up;
                f.in_recovery = Some(obs.in_recovery);
                f.lsn = obs.wal_position();
            }
            _ => f.live = LiveStatus::Down,
        }
    }
    failover_candidate(&m.cluster(), &facts, synchronous).ok()
}

async fn promote_node(inner: &Inner, b: &Backend) -> Result<(), OpError> {
    let m = &inner.monitor;
    let target = m.target(b.id).ok_or(OpError::UnknownNode(b.id))?;
    let step = format!("promoting node {}", b.id);
    let failed = |reason: String| OpError::Failed {
        step: step.clone(),
        reason,
    };
    let in_recovery = sql_one(&target, "SELECT pg_is_in_recovery()")
        .await
        .map_err(failed)?;
    if in_recovery.as_deref() == Some("f") {
        m.event(
            "promote",
            Some(b.id),
            format!(
                "node {} is already out of recovery (promoted by failover_command)",
                b.id
            ),
        );
        return Ok(());
    }
    let secs = inner.cfg.promote_timeout.as_secs().max(1);
    let rows = timeout(
        inner.cfg.promote_timeout + Duration::from_secs(5),
        run_sql(&target, &format!("SELECT pg_promote(true, {secs})"), APP),
    )
    .await
    .map_err(|_| failed(format!("pg_promote() did not return within {secs} s")))?
    .map_err(|e| failed(e.to_string()))?;
    match rows.first().and_then(|r| r.first()).cloned().flatten() {
        Some(v) if v == "t" => Ok(()),
        other => Err(failed(format!(
            "pg_promote() returned {other:?}: the node did not finish promotion within {secs} s"
        ))),
    }
}

/// Points standby `b` at the new primary and waits until it streams from it. A standby that
/// does not is taken out of service.
async fn follow(
    inner: &Inner,
    b: &Backend,
    new_primary: &Backend,
    old_primary: Option<&Backend>,
    generation: u64,
) {
    let m = &inner.monitor;
    let result = async {
        if let Some(cmd) = &inner.cfg.follow_primary_command {
            let args = HookArgs {
                node: Some(hook_node(b)),
                new_main: Some(hook_node(new_primary)),
                old_main: old_primary.map(|o| o.id),
                old_primary: old_primary.map(hook_node),
            };
            let out = run_hook(cmd, &args, inner.cfg.command_timeout).await;
            m.event(
                "hook",
                Some(b.id),
                format!("follow_primary_command: {}", out.summary()),
            );
        } else {
            repoint(m, b, new_primary).await?;
        }
        wait_streaming(m, b, new_primary, inner.cfg.follow_timeout).await
    }
    .await;
    match result {
        Ok(()) => m.event(
            "follow",
            Some(b.id),
            format!(
                "node {} streams from the new primary, node {} (generation {generation})",
                b.id, new_primary.id
            ),
        ),
        Err(reason) => {
            let text = format!(
                "node {} did not follow the new primary, node {}: {reason}",
                b.id, new_primary.id
            );
            m.event("follow", Some(b.id), text.clone());
            let _ = m.set_status(b.id, NodeStatus::Down, &text);
        }
    }
}

/// The built-in follow: the standby keeps every connection setting but host and port, gets a
/// replication slot of its name on the new primary, and reloads (PostgreSQL 13+ applies
/// primary_conninfo without a restart; recovery_target_timeline 'latest' takes it onto the new
/// timeline).
async fn repoint(m: &MonitorHandle, b: &Backend, new_primary: &Backend) -> Result<(), String> {
    let t = m.target(b.id).ok_or("no target")?;
    let p = m.target(new_primary.id).ok_or("no target")?;
    let row = sql_row(
        &t,
        "SELECT current_setting('primary_conninfo'), current_setting('primary_slot_name')",
    )
    .await?;
    let conninfo = row.first().cloned().flatten().unwrap_or_default();
    let slot = row.get(1).cloned().flatten().unwrap_or_default();
    if !slot.is_empty() {
        ensure_slot(&p, &slot)
            .await
            .map_err(|e| format!("creating slot {slot} on node {}: {e}", new_primary.id))?;
    }
    let new_conninfo = repoint_conninfo(&conninfo, &new_primary.host, new_primary.port);
    alter_system(&t, "primary_conninfo", &new_conninfo).await?;
    m.event(
        "follow",
        Some(b.id),
        format!(
            "node {} pointed at node {} ({}:{}) and reloaded",
            b.id, new_primary.id, new_primary.host, new_primary.port
        ),
    );
    Ok(())
}

async fn wait_streaming(
    m: &MonitorHandle,
    b: &Backend,
    new_primary: &Backend,
    limit: Duration,
) -> Result<(), String> {
    let p = m.target(new_primary.id).ok_or("no target")?;
    let sql = format!(
        "SELECT state FROM pg_stat_replication WHERE application_name = {}",
        sql_literal(&b.application_name)
    );
    let deadline = Instant::now() + limit;
    let mut last = String::from("not connected");
    while Instant::now() < deadline {
        if let Ok(Ok(rows)) = timeout(Duration::from_secs(5), run_sql(&p, &sql, APP)).await {
            if rows
                .iter()
                .any(|r| r.first().cloned().flatten().as_deref() == Some("streaming"))
            {
                return Ok(());
            }
            if let Some(s) = rows.first().and_then(|r| r.first()).cloned().flatten() {
                last = s;
            }
        }
        sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "not streaming after {} s (last state: {last})",
        limit.as_secs()
    ))
}
