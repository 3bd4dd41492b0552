//! Online recovery: rebuild node N from the live primary and put it back into service while
//! clients keep working. pgpool-II's sequence (CHECKPOINT, 1st stage, 2nd stage where
//! configured, start, attach) done through the node agents, without SSH:
//!
//! * the steps and the choice between pg_rewind and a base backup come from
//!   `pgwarden_core::recovery` (plain functions over what was observed);
//! * the work on the node's host is done by its agent (`pgwarden agent`); pgpool's scripts run
//!   on the primary's host through the primary's agent, as pgpool_recovery() runs them;
//! * the controller's operation lock is held only to check and to attach: a base backup may
//!   take hours and must not hold up a failover. A failover during the recovery (the primary
//!   or the generation changes) makes it fail, and N stays out of service.
//!
//! Any failure leaves N detached, names the step and why, drops the replication slot made for
//! it and stops it if it was started; the running cluster is not touched.

use crate::{ensure_slot, refresh, sql_literal, sql_one, ControllerHandle, Inner, OpError};
use pgwarden_agent::api::{
    JobSpec, JobState, JobStatus, Source, StandbyRequest, StartRequest, StopMode, StopRequest,
};
use pgwarden_agent::client::{AgentClient, AgentError};
use pgwarden_core::cluster::{ClusterState, NodeFacts};
use pgwarden_core::config::Backend;
use pgwarden_core::node::{LiveStatus, NodeStatus};
use pgwarden_core::recovery::{
    auto_recovery_backoff, auto_recovery_wanted, check_plan, check_recover, first_stage, plan,
    rate_and_eta, stage_args, Method, NodeData, RecoveryState, RecoveryStatus, Step,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::sleep;

/// pgpool's 1st stage has no time limit (a base backup of a large database takes hours); a
/// script is still killed after a day rather than never.
const FIRST_STAGE_SCRIPT_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// A recovery that failed: the step and why.
struct Failure {
    step: Step,
    reason: String,
}

fn failed(step: Step, reason: impl Into<String>) -> Failure {
    Failure {
        step,
        reason: reason.into(),
    }
}

impl ControllerHandle {
    /// What the recovery of node `id` is doing, or how the last one ended.
    pub fn recovery_status(&self, id: u32) -> Option<RecoveryStatus> {
        self.inner.recoveries.lock().ok()?.get(&id).cloned()
    }

    /// Starts the recovery of node `id` once it is checked to be allowed, and returns without
    /// waiting for it (`pgwarden node recover`, the API). Progress: [`Self::recovery_status`].
    pub async fn start_recovery(&self, id: u32) -> Result<String, OpError> {
        let task = self.begin_recovery(id).await?;
        drop(task);
        Ok(format!("recovery of node {id} started"))
    }

    /// Recovers node `id` and returns when it is done (`pcp_recovery_node`, which answers
    /// only at the end).
    pub async fn recover(&self, id: u32) -> Result<String, OpError> {
        let task = self.begin_recovery(id).await?;
        match task.await {
            Ok(r) => r,
            Err(e) => Err(OpError::Failed {
                step: "recovery".into(),
                reason: format!("the recovery task ended abnormally: {e}"),
            }),
        }
    }

    async fn begin_recovery(
        &self,
        id: u32,
    ) -> Result<tokio::task::JoinHandle<Result<String, OpError>>, OpError> {
        let node = self.backend(id)?;
        let inner = self.inner.clone();
        let m = &inner.monitor;
        let _guard = inner.op.lock().await;
        // Whether a node without an agent still runs must be seen afresh (nothing could stop
        // it). A node with an agent is asked by the agent itself, and a fresh health check of a
        // down node only costs its retry delays (about a second in the sandbox).
        if node.agent.is_none() {
            refresh(m, id).await;
        }
        let running: Vec<u32> = self.running_recoveries();
        let primary =
            check_recover(&m.cluster(), &m.facts(), id, &running).map_err(OpError::Refused)?;
        let primary_b = self.backend(primary)?;
        let answers = m
            .facts()
            .iter()
            .any(|f| f.id == id && f.live == LiveStatus::Up);
        let cfg = &inner.recovery;
        check_plan(
            cfg,
            id,
            node.agent.is_some(),
            primary_b.agent.is_some(),
            answers,
        )
        .map_err(OpError::Refused)?;
        // The agents that will be needed must answer before anything is changed.
        let node_agent = match &node.agent {
            Some(addr) => Some(agent_client(&inner, addr)?),
            None => None,
        };
        let scripts = cfg.first_stage_command.is_some()
            || cfg.second_stage_command.is_some()
            || cfg.remote_start_command.is_some();
        let primary_agent = match (&primary_b.agent, scripts) {
            (Some(addr), true) => Some(agent_client(&inner, addr)?),
            _ => None,
        };
        for (who, agent) in [("node", &node_agent), ("primary", &primary_agent)] {
            if let Some(a) = agent {
                a.status().await.map_err(|e| {
                    OpError::Refused(format!(
                        "the agent of the {who} ({}) cannot be used: {e}",
                        a.addr()
                    ))
                })?;
            }
        }
        let steps = plan(cfg, node_agent.is_some());
        let generation = m.cluster().generation;
        let status = RecoveryStatus {
            node: id,
            state: RecoveryState::Running,
            primary,
            method: None,
            step: steps[0],
            step_index: 1,
            steps: steps.clone(),
            bytes_done: 0,
            bytes_total: None,
            rate: None,
            eta_secs: None,
            elapsed_ms: 0,
            message: format!("recovery of node {id} from node {primary} started"),
            error: None,
        };
        if let Ok(mut map) = inner.recoveries.lock() {
            map.insert(id, status);
        }
        m.event(
            "recovery",
            Some(id),
            format!(
                "recovery of node {id} from node {primary} started: {}",
                steps
                    .iter()
                    .map(|s| s.describe())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        let run = Run {
            inner: inner.clone(),
            node,
            primary: primary_b,
            node_agent,
            primary_agent,
            steps,
            generation,
            started: Instant::now(),
            slot: None,
            node_started: false,
        };
        Ok(tokio::spawn(run.go()))
    }

    fn running_recoveries(&self) -> Vec<u32> {
        self.inner
            .recoveries
            .lock()
            .map(|m| {
                m.values()
                    .filter(|s| s.state == RecoveryState::Running)
                    .map(|s| s.node)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Auto-recovery (`recovery.auto`): a node that failed is rebuilt once its agent answers
/// again, each node backing off (10 s, doubling, up to `recovery.auto_max_backoff`) after an
/// attempt that could not start or failed.
#[derive(Default)]
pub(crate) struct AutoRecovery {
    /// Per node: failed attempts in a row, and when the next may start.
    nodes: HashMap<u32, (u32, Instant)>,
}

impl AutoRecovery {
    /// Called from the watch loop (with the operation lock held): starts what is due in a
    /// task of its own, which takes the lock when the loop lets go of it.
    pub(crate) fn tick(&mut self, inner: &Arc<Inner>, state: &ClusterState, facts: &[NodeFacts]) {
        let handle = ControllerHandle {
            inner: inner.clone(),
        };
        let running = handle.running_recoveries();
        let now = Instant::now();
        for f in facts {
            let has_agent = inner
                .monitor
                .backend(f.id)
                .is_some_and(|b| b.agent.is_some());
            let wanted = auto_recovery_wanted(state, f, running.contains(&f.id), has_agent);
            if !wanted {
                // In service again (or detached by hand): start afresh next time it fails.
                if f.status != NodeStatus::Down {
                    self.nodes.remove(&f.id);
                }
                continue;
            }
            // First seen down: wait one backoff period before the first attempt, so a node
            // that is merely being restarted is not rebuilt at once.
            let Some((failures, next)) = self.nodes.get(&f.id).copied() else {
                self.nodes.insert(
                    f.id,
                    (
                        0,
                        now + auto_recovery_backoff(0, inner.recovery.auto_max_backoff),
                    ),
                );
                continue;
            };
            if now < next {
                continue;
            }
            // The outcome is learnt at a later tick from the recovery's status; until then the
            // next attempt waits out the backoff.
            let last_failed = handle
                .recovery_status(f.id)
                .is_some_and(|s| s.state == RecoveryState::Failed);
            let failures = if last_failed || failures > 0 {
                failures + 1
            } else {
                failures
            };
            self.nodes.insert(
                f.id,
                (
                    failures,
                    now + auto_recovery_backoff(failures, inner.recovery.auto_max_backoff),
                ),
            );
            let (handle, id) = (handle.clone(), f.id);
            tokio::spawn(async move {
                match handle.start_recovery(id).await {
                    Ok(_) => handle.inner.monitor.event(
                        "recovery",
                        Some(id),
                        format!("auto-recovery: node {id} failed earlier; rebuilding it"),
                    ),
                    Err(e) => tracing::debug!(node = id, "auto-recovery not started: {e}"),
                }
            });
        }
    }
}

pub(crate) fn agent_client(inner: &Inner, addr: &str) -> Result<AgentClient, OpError> {
    let Some(file) = &inner.agent_secret_file else {
        return Err(OpError::Refused(
            "agent.secret_file is not set in the configuration: the warden cannot talk to the node agents".into(),
        ));
    };
    let secret = pgwarden_agent::server::read_secret(file)
        .map_err(|e| OpError::Refused(format!("agent.secret_file ({}): {e}", file.display())))?;
    Ok(AgentClient::new(addr, secret, crate::hands::AGENT_TIMEOUT))
}

/// One recovery, running.
struct Run {
    inner: Arc<Inner>,
    node: Backend,
    primary: Backend,
    node_agent: Option<AgentClient>,
    primary_agent: Option<AgentClient>,
    steps: Vec<Step>,
    generation: u64,
    started: Instant,
    /// The replication slot made for the node on the primary (dropped if the recovery fails).
    slot: Option<String>,
    /// Whether the node was started (stopped again if the recovery fails).
    node_started: bool,
}

impl Run {
    async fn go(mut self) -> Result<String, OpError> {
        let id = self.node.id;
        match self.steps_all().await {
            Ok(message) => {
                self.update(|s| {
                    s.state = RecoveryState::Succeeded;
                    s.message = message.clone();
                });
                self.inner
                    .monitor
                    .event("recovery", Some(id), message.clone());
                Ok(message)
            }
            Err(f) => {
                let reason = format!("{}: {}", f.step.describe(), f.reason);
                self.cleanup().await;
                let m = &self.inner.monitor;
                let _ = m.set_status(
                    id,
                    NodeStatus::Down,
                    &format!("recovery failed at {}", f.step.describe()),
                );
                m.event(
                    "error",
                    Some(id),
                    format!(
                        "recovery of node {id} failed at {reason}; node {id} stays out of service"
                    ),
                );
                self.update(|s| {
                    s.state = RecoveryState::Failed;
                    s.error = Some(reason.clone());
                    s.message = format!("recovery of node {id} failed");
                });
                Err(OpError::Failed {
                    step: format!("recovery of node {id}: {}", f.step.describe()),
                    reason: f.reason,
                })
            }
        }
    }

    fn update(&self, f: impl FnOnce(&mut RecoveryStatus)) {
        if let Ok(mut map) = self.inner.recoveries.lock() {
            if let Some(s) = map.get_mut(&self.node.id) {
                f(s);
                s.elapsed_ms = self.started.elapsed().as_millis() as u64;
            }
        }
    }

    fn enter(&self, step: Step) -> Result<(), Failure> {
        // A failover since the start: the node would be rebuilt from a former primary.
        let c = self.inner.monitor.cluster();
        if c.generation != self.generation || c.primary != Some(self.primary.id) {
            return Err(failed(
                step,
                format!(
                    "the primary changed during the recovery (node {} generation {} then, {} generation {} now)",
                    self.primary.id,
                    self.generation,
                    c.primary.map_or("none".into(), |p| format!("node {p}")),
                    c.generation
                ),
            ));
        }
        let index = self.steps.iter().position(|s| *s == step).unwrap_or(0) + 1;
        self.update(|s| {
            s.step = step;
            s.step_index = index;
            s.message = String::new();
        });
        self.inner.monitor.event(
            "recovery",
            Some(self.node.id),
            format!(
                "node {}: step {index}/{}, {} ({:.1} s in)",
                self.node.id,
                self.steps.len(),
                step.describe(),
                self.started.elapsed().as_secs_f64()
            ),
        );
        Ok(())
    }

    fn event(&self, message: String) {
        self.inner
            .monitor
            .event("recovery", Some(self.node.id), message.clone());
        self.update(|s| s.message = message);
    }

    fn primary_target(&self, step: Step) -> Result<pgwarden_monitor::Target, Failure> {
        self.inner
            .monitor
            .target(self.primary.id)
            .ok_or_else(|| failed(step, "the primary is not configured"))
    }

    fn source(&self) -> Source {
        let user = self
            .inner
            .monitor
            .target(self.primary.id)
            .map(|t| t.user)
            .unwrap_or_else(|| "postgres".into());
        Source {
            host: self.primary.host.clone(),
            port: self.primary.port,
            user,
        }
    }

    async fn steps_all(&mut self) -> Result<String, Failure> {
        let id = self.node.id;
        let cfg = self.inner.recovery.clone();
        let primary_t = self.primary_target(Step::Checkpoint)?;

        // a. CHECKPOINT on the primary.
        self.enter(Step::Checkpoint)?;
        sql_one(&primary_t, "CHECKPOINT")
            .await
            .map_err(|e| failed(Step::Checkpoint, e))?;

        // Stop the node if it runs.
        if let Some(agent) = self.node_agent.clone() {
            self.enter(Step::StopNode)?;
            let st = agent
                .status()
                .await
                .map_err(|e| failed(Step::StopNode, e.to_string()))?;
            if st.running {
                let fast = agent
                    .stop(StopRequest {
                        mode: StopMode::Fast,
                        timeout_secs: 60,
                    })
                    .await;
                if let Err(e) = fast {
                    self.event(format!(
                        "node {id}: a fast stop failed ({e}); stopping it with -m immediate"
                    ));
                    agent
                        .stop(StopRequest {
                            mode: StopMode::Immediate,
                            timeout_secs: 60,
                        })
                        .await
                        .map_err(|e| failed(Step::StopNode, e.to_string()))?;
                }
                self.event(format!("node {id} stopped"));
            }
        }

        // b. The 1st stage.
        self.enter(Step::FirstStage)?;
        let method = match &cfg.first_stage_command {
            Some(cmd) => {
                self.update(|s| s.method = Some(Method::Script));
                let args = self.stage_args();
                self.event(format!(
                    "1st stage: {cmd} {} on the primary's host",
                    args.join(" ")
                ));
                let agent = self.primary_agent.clone().ok_or_else(|| {
                    failed(
                        Step::FirstStage,
                        "the primary has no agent to run the script",
                    )
                })?;
                self.job(
                    &agent,
                    Step::FirstStage,
                    JobSpec::Script {
                        path: cmd.clone(),
                        args,
                        timeout_secs: FIRST_STAGE_SCRIPT_LIMIT.as_secs(),
                    },
                )
                .await?;
                Method::Script
            }
            None => self.builtin_first_stage(&primary_t).await?,
        };

        if self.steps.contains(&Step::StandbyConfig) {
            self.enter(Step::StandbyConfig)?;
            let agent = self
                .node_agent
                .clone()
                .ok_or_else(|| failed(Step::StandbyConfig, "the node has no agent"))?;
            agent
                .standby(StandbyRequest {
                    source: self.source(),
                    application_name: self.node.application_name.clone(),
                    slot: self.slot.clone(),
                })
                .await
                .map_err(|e| failed(Step::StandbyConfig, e.to_string()))?;
        }

        // c. The 2nd stage, only when configured.
        if let Some(cmd) = &cfg.second_stage_command {
            self.enter(Step::SecondStage)?;
            self.second_stage(cmd, &primary_t).await?;
        }

        // d. Start the node and wait until it streams, within recovery_timeout.
        self.enter(Step::Start)?;
        let deadline = Instant::now() + cfg.timeout;
        self.node_started = true;
        match &cfg.remote_start_command {
            Some(cmd) => {
                let agent = self
                    .primary_agent
                    .clone()
                    .ok_or_else(|| failed(Step::Start, "the primary has no agent"))?;
                let args = vec![
                    host_arg(&self.node.host),
                    self.node.data_dir.display().to_string(),
                ];
                self.event(format!("remote start: {cmd} {}", args.join(" ")));
                self.job(
                    &agent,
                    Step::Start,
                    JobSpec::Script {
                        path: cmd.clone(),
                        args,
                        timeout_secs: cfg.timeout.as_secs().max(1),
                    },
                )
                .await?;
            }
            None => {
                let agent = self
                    .node_agent
                    .clone()
                    .ok_or_else(|| failed(Step::Start, "the node has no agent"))?;
                agent
                    .start(StartRequest {
                        timeout_secs: cfg.timeout.as_secs().max(1),
                    })
                    .await
                    .map_err(|e| failed(Step::Start, e.to_string()))?;
            }
        }
        self.enter(Step::WaitStreaming)?;
        let sql = format!(
            "SELECT state FROM pg_stat_replication WHERE application_name = {}",
            sql_literal(&self.node.application_name)
        );
        loop {
            let state = sql_one(&primary_t, &sql).await.ok().flatten();
            if state.as_deref() == Some("streaming") {
                break;
            }
            if Instant::now() >= deadline {
                return Err(failed(
                    Step::WaitStreaming,
                    format!(
                        "node {id} does not stream from node {} within recovery_timeout ({} s); replication state: {}",
                        self.primary.id,
                        cfg.timeout.as_secs(),
                        state.as_deref().unwrap_or("not connected")
                    ),
                ));
            }
            sleep(Duration::from_millis(200)).await;
        }

        // e. Attach, under the operation lock, if the primary is still the same.
        let _guard = self.inner.op.lock().await;
        self.enter(Step::Attach)?;
        let m = &self.inner.monitor;
        m.set_status(
            id,
            NodeStatus::Waiting,
            &format!(
                "recovered ({}) from node {}",
                method.as_str(),
                self.primary.id
            ),
        )
        .map_err(|e| failed(Step::Attach, e.to_string()))?;
        m.suspect(id);
        self.slot = None;
        self.node_started = false;
        Ok(format!(
            "node {id} recovered by {} from node {} in {:.1} s and attached; it gets reads once its lag is under delay_threshold",
            method.as_str(),
            self.primary.id,
            self.started.elapsed().as_secs_f64()
        ))
    }

    fn stage_args(&self) -> Vec<String> {
        stage_args(
            &self.primary.data_dir.display().to_string(),
            &self.node.host,
            &self.node.data_dir.display().to_string(),
            self.primary.port,
            self.node.id,
            self.node.port,
            &self.primary.host,
        )
    }

    /// pg_rewind for a node whose data diverged, a base backup otherwise or when the rewind
    /// fails.
    async fn builtin_first_stage(
        &mut self,
        primary_t: &pgwarden_monitor::Target,
    ) -> Result<Method, Failure> {
        let step = Step::FirstStage;
        let agent = self
            .node_agent
            .clone()
            .ok_or_else(|| failed(step, "the node has no agent"))?;
        let st = agent
            .status()
            .await
            .map_err(|e| failed(step, e.to_string()))?;
        let row = crate::sql_row(
            primary_t,
            "SELECT (SELECT system_identifier::text FROM pg_control_system()), (SELECT timeline_id::text FROM pg_control_checkpoint())",
        )
        .await
        .map_err(|e| failed(step, format!("reading the primary's system identifier: {e}")))?;
        let sysid = row.first().cloned().flatten().unwrap_or_default();
        let timeline: u32 = row
            .get(1)
            .cloned()
            .flatten()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let data = st.control.as_ref().map(|c| NodeData {
            state: c.state.clone(),
            timeline: c.timeline,
            system_identifier: c.system_identifier.clone(),
        });
        let (mut method, why) = first_stage(data.as_ref(), &sysid, timeline);
        self.event(format!(
            "node {}: {} because {why}",
            self.node.id,
            method.as_str()
        ));
        let slot = crate::local::slot_name(&self.node);
        ensure_slot(primary_t, &slot)
            .await
            .map_err(|e| failed(step, format!("creating the replication slot {slot}: {e}")))?;
        self.slot = Some(slot.clone());
        if method == Method::Rewind {
            self.update(|s| s.method = Some(Method::Rewind));
            let r = self
                .job(
                    &agent,
                    step,
                    JobSpec::Rewind {
                        source: self.source(),
                    },
                )
                .await;
            if let Err(f) = r {
                self.event(format!(
                    "node {}: pg_rewind failed ({}); falling back to a base backup",
                    self.node.id, f.reason
                ));
                method = Method::BaseBackup;
            }
        }
        if method == Method::BaseBackup {
            self.update(|s| {
                s.method = Some(Method::BaseBackup);
                s.bytes_done = 0;
                s.bytes_total = None;
            });
            self.job(
                &agent,
                step,
                JobSpec::BaseBackup {
                    source: self.source(),
                    slot: Some(slot),
                },
            )
            .await?;
        }
        Ok(method)
    }

    /// Runs a job on an agent and follows its progress until it ends.
    async fn job(
        &self,
        agent: &AgentClient,
        step: Step,
        spec: JobSpec,
    ) -> Result<JobStatus, Failure> {
        let mut job = agent
            .start_job(spec)
            .await
            .map_err(|e| failed(step, e.to_string()))?;
        let mut unreachable_since: Option<Instant> = None;
        loop {
            let (rate, eta) = rate_and_eta(job.bytes_done, job.bytes_total, job.elapsed_ms);
            self.update(|s| {
                s.bytes_done = job.bytes_done;
                s.bytes_total = job.bytes_total;
                s.rate = rate;
                s.eta_secs = eta;
                if !job.step.is_empty() {
                    s.message = job.step.clone();
                }
            });
            match job.state {
                JobState::Running => {}
                JobState::Succeeded => return Ok(job),
                JobState::Failed | JobState::Cancelled => {
                    let mut reason = job
                        .error
                        .clone()
                        .unwrap_or_else(|| format!("{:?}", job.state).to_lowercase());
                    let tail = job.output_tail.trim();
                    if !tail.is_empty() {
                        reason.push_str("; output:\n");
                        reason.push_str(tail);
                    }
                    return Err(failed(step, reason));
                }
            }
            sleep(Duration::from_millis(250)).await;
            match agent.job(job.id).await {
                Ok(j) => {
                    job = j;
                    unreachable_since = None;
                }
                Err(AgentError::Unreachable(e)) => {
                    // A short network blip is waited out; a lasting one ends the recovery.
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(30) {
                        return Err(failed(step, format!("the agent stopped answering: {e}")));
                    }
                }
                Err(e) => return Err(failed(step, e.to_string())),
            }
        }
    }

    /// pgpool's 2nd stage: new sessions wait, idle ones are closed after
    /// client_idle_limit_in_recovery, the rest are waited for up to recovery_timeout;
    /// CHECKPOINT; the script; sessions released (also when anything fails).
    async fn second_stage(
        &self,
        cmd: &str,
        primary_t: &pgwarden_monitor::Target,
    ) -> Result<(), Failure> {
        let step = Step::SecondStage;
        let m = &self.inner.monitor;
        let cfg = &self.inner.recovery;
        m.set_hold(Some(cfg.client_idle_limit));
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let r = async {
            let deadline = Instant::now() + cfg.timeout;
            self.event(format!(
                "2nd stage: new sessions wait; {} session(s) to finish",
                m.sessions()
            ));
            while m.sessions() > 0 {
                if Instant::now() >= deadline {
                    return Err(failed(
                        step,
                        format!(
                            "{} client session(s) still connected after recovery_timeout ({} s)",
                            m.sessions(),
                            cfg.timeout.as_secs()
                        ),
                    ));
                }
                sleep(Duration::from_millis(50)).await;
            }
            sql_one(primary_t, "CHECKPOINT")
                .await
                .map_err(|e| failed(step, format!("CHECKPOINT: {e}")))?;
            let agent = self
                .primary_agent
                .clone()
                .ok_or_else(|| failed(step, "the primary has no agent to run the script"))?;
            let args = self.stage_args();
            self.event(format!("2nd stage: {cmd} {}", args.join(" ")));
            self.job(
                &agent,
                step,
                JobSpec::Script {
                    path: cmd.to_string(),
                    args,
                    timeout_secs: cfg.timeout.as_secs().max(1),
                },
            )
            .await
            .map(drop)
        }
        .await;
        m.set_hold(None);
        r
    }

    /// After a failure: the slot made for the node is dropped (it would keep WAL on the
    /// primary forever) and the node, if this recovery started it, is stopped.
    async fn cleanup(&mut self) {
        if self.node_started {
            if let Some(agent) = &self.node_agent {
                let _ = agent
                    .stop(StopRequest {
                        mode: StopMode::Fast,
                        timeout_secs: 60,
                    })
                    .await;
            }
        }
        if let (Some(slot), Some(t)) =
            (self.slot.take(), self.inner.monitor.target(self.primary.id))
        {
            let sql = format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {} AND NOT active",
                sql_literal(&slot)
            );
            if let Err(e) = sql_one(&t, &sql).await {
                self.inner.monitor.event(
                    "error",
                    Some(self.node.id),
                    format!("dropping the replication slot {slot} after the failed recovery: {e}"),
                );
            }
        }
    }
}

fn host_arg(h: &str) -> String {
    if h.is_empty() || h.starts_with('/') {
        "localhost".into()
    } else {
        h.to_string()
    }
}
