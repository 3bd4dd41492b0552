//! The agent's HTTP server: every endpoint of [`crate::api`], behind the signature check.
//!
//! What changes the server or its data directory (stop, start, standby settings, the start of
//! a job) is serialised by one lock, so two warden requests never interleave a `pg_ctl start`
//! with a rewind. At most one job runs at a time; rewinds and base backups refuse to start
//! while the server runs, and start / standby refuse while they run.

use crate::api::{
    AgentStatus, ControlData, Done, ErrorBody, JobSpec, JobStatus, Source, StandbyRequest,
    StartRequest, StopMode, StopRequest,
};
use crate::conf;
use crate::jobs::{self, ChildEnd, Job, Outcome};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path as UrlPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pgwarden_sandbox::RunAs;
use std::collections::VecDeque;
use std::io;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use crate::auth::read_secret;

/// How the agent is set up (`pgwarden agent`'s flags).
#[derive(Clone)]
pub struct AgentConfig {
    /// The data directory of the server this agent controls.
    pub data_dir: PathBuf,
    /// The port that server listens on; written into the standby settings.
    pub pg_port: u16,
    /// The directory holding pg_ctl, pg_rewind, pg_basebackup, pg_controldata and psql.
    pub pg_bin: PathBuf,
    /// The libpq password file used to reach the primary (`passfile=` in conninfo,
    /// `PGPASSFILE` for pg_basebackup); `None`: libpq's default, `~/.pgpass`.
    pub passfile: Option<PathBuf>,
    /// The shared secret requests are signed with.
    pub secret: Vec<u8>,
    /// The server's log for `pg_ctl start -l`.
    pub log_file: PathBuf,
    /// Files inside the data directory that survive a rebuild (a rewind or a base backup
    /// brings the primary's copies): the node's own configuration.
    pub keep: Vec<String>,
    /// The OS user PostgreSQL's tools run as. `pgwarden agent` refuses to run as root, so it
    /// is [`RunAs::Current`] there; a test running as root runs them as `postgres`.
    pub run_as: RunAs,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("data_dir", &self.data_dir)
            .field("pg_port", &self.pg_port)
            .field("pg_bin", &self.pg_bin)
            .field("passfile", &self.passfile)
            .field("secret", &"(redacted)")
            .field("log_file", &self.log_file)
            .field("keep", &self.keep)
            .field("run_as", &self.run_as)
            .finish()
    }
}

/// The largest request body accepted (requests are small JSON documents).
const MAX_BODY: usize = 64 * 1024;
/// How many finished jobs can still be asked about.
const KEEP_FINISHED: usize = 32;
/// The longest stop or start timeout accepted.
const MAX_PG_CTL_SECS: u64 = 3600;
/// The suffixes of the directories beside the data directory during a base backup.
const NEW_SUFFIX: &str = ".pgwarden-new";
const OLD_SUFFIX: &str = ".pgwarden-old";
/// Files that make a server start in recovery; moved aside during a rewind (pg_rewind's crash
/// recovery runs `postgres --single`, which refuses standby mode).
const SIGNALS: [&str; 2] = ["standby.signal", "recovery.signal"];

struct Agent {
    cfg: AgentConfig,
    ops: tokio::sync::Mutex<()>,
    jobs: Mutex<Jobs>,
}

#[derive(Default)]
struct Jobs {
    next_id: u64,
    current: Option<Arc<Job>>,
    finished: VecDeque<Arc<Job>>,
}

impl Jobs {
    fn running(&self) -> Option<&Arc<Job>> {
        self.current.as_ref().filter(|j| j.running())
    }
    fn find(&self, id: u64) -> Option<Arc<Job>> {
        self.current
            .iter()
            .chain(self.finished.iter())
            .find(|j| j.id == id)
            .cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An error answer: the status and the message of an [`ErrorBody`].
#[derive(Debug)]
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

fn bad_request(m: impl Into<String>) -> Failure {
    Failure(StatusCode::BAD_REQUEST, m.into())
}
fn conflict(m: impl Into<String>) -> Failure {
    Failure(StatusCode::CONFLICT, m.into())
}
fn failed(m: impl Into<String>) -> Failure {
    Failure(StatusCode::INTERNAL_SERVER_ERROR, m.into())
}

type Answer<T> = Result<Json<T>, Failure>;

/// Serves the agent on `listener` until the process ends.
pub async fn serve(cfg: AgentConfig, listener: tokio::net::TcpListener) -> io::Result<()> {
    serve_with_shutdown(cfg, listener, std::future::pending()).await
}

/// Serves until `shutdown` completes; then a running job is cancelled (its process group
/// killed, its partial output removed) so nothing the agent started outlives it.
pub async fn serve_with_shutdown(
    cfg: AgentConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let agent = Arc::new(Agent {
        cfg,
        ops: tokio::sync::Mutex::new(()),
        jobs: Mutex::new(Jobs {
            next_id: 1,
            ..Jobs::default()
        }),
    });
    let app = router(Arc::clone(&agent));
    let result = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    let running = lock(&agent.jobs).running().cloned();
    if let Some(job) = running {
        tracing::info!(job = job.id, "shutting down: cancelling the running job");
        job.request_cancel();
        job.wait_finished(Duration::from_secs(60)).await;
    }
    result
}

fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/stop", post(stop))
        .route("/v1/start", post(start))
        .route("/v1/standby", post(standby))
        .route("/v1/jobs", post(start_job))
        .route("/v1/jobs/{id}", get(job).delete(cancel_job))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&agent),
            authenticate,
        ))
        .with_state(agent)
}

async fn not_found(req: Request) -> Failure {
    Failure(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {} {}; the agent answers GET /v1/status, POST /v1/stop, /v1/start, /v1/standby, /v1/jobs, GET and DELETE /v1/jobs/ID",
            req.method(),
            req.uri().path()
        ),
    )
}

/// The signature check, before anything else (unknown paths included).
async fn authenticate(State(agent): State<Arc<Agent>>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "an unknown peer".to_string(), |c| c.0.to_string());
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return Failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is unreadable or larger than {MAX_BODY} bytes"),
        )
        .into_response();
    };
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if let Err(why) = crate::auth::verify(
        &agent.cfg.secret,
        header,
        parts.method.as_str(),
        path,
        &bytes,
        crate::auth::now_secs(),
    ) {
        tracing::warn!(%peer, method = %parts.method, path, "refused a request: {why}");
        return Failure(
            StatusCode::UNAUTHORIZED,
            format!("authentication failed: {why}"),
        )
        .into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("the request body: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Running PostgreSQL's tools.

impl Agent {
    fn program(&self, name: &str) -> PathBuf {
        self.cfg.pg_bin.join(name)
    }

    /// A command for one of PostgreSQL's programs, as the right user, with English messages
    /// (its output is parsed).
    fn tool(&self, name: &str) -> std::process::Command {
        let mut cmd = self.cfg.run_as.command(self.program(name));
        cmd.env("LC_ALL", "C");
        // A source that accepts TCP but never answers (a hung host) would hold a rewind or a
        // base backup forever: libpq waits without limit unless told.
        if std::env::var_os("PGCONNECT_TIMEOUT").is_none() {
            cmd.env("PGCONNECT_TIMEOUT", "30");
        }
        cmd
    }

    /// Runs a short tool to its end: exit status and its stdout + stderr.
    async fn run_tool(&self, mut cmd: std::process::Command) -> Result<(bool, String), Failure> {
        let what = cmd.get_program().to_string_lossy().into_owned();
        cmd.stdin(std::process::Stdio::null());
        let out = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| failed(format!("cannot run {what}: {e}")))?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), text))
    }

    /// `pg_ctl status`: the postmaster's pid if one runs on the data directory.
    async fn server_pid(&self) -> Result<Option<u32>, Failure> {
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("status").arg("-D").arg(&self.cfg.data_dir);
        let (ok, text) = self.run_tool(cmd).await?;
        // Exit 3: not running; 4: no data directory. Either way nothing runs.
        Ok(if ok {
            Some(crate::parse::pg_ctl_pid(&text).unwrap_or(0))
        } else {
            None
        })
    }

    fn has_cluster(&self) -> bool {
        self.cfg.data_dir.join("global/pg_control").is_file()
    }

    async fn control_data(&self) -> Option<ControlData> {
        if !self.has_cluster() {
            return None;
        }
        let mut cmd = self.tool("pg_controldata");
        cmd.arg("-D").arg(&self.cfg.data_dir);
        match self.run_tool(cmd).await {
            Ok((true, text)) => match crate::parse::controldata(&text) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!("cannot read pg_controldata's output: {e}");
                    None
                }
            },
            Ok((false, text)) => {
                tracing::warn!("pg_controldata failed: {}", text.trim());
                None
            }
            Err(Failure(_, e)) => {
                tracing::warn!("{e}");
                None
            }
        }
    }

    /// 409 while a rewind or a base backup changes the data directory.
    fn refuse_during_data_job(&self, what: &str) -> Result<(), Failure> {
        match lock(&self.jobs).running() {
            Some(j) if j.touches_data => Err(conflict(format!(
                "cannot {what} while job {} ({}) changes the data directory; wait for it or cancel it (DELETE /v1/jobs/{})",
                j.id, j.kind, j.id
            ))),
            _ => Ok(()),
        }
    }

    fn source_conninfo(&self, s: &Source) -> String {
        let mut c = format!(
            "host={} port={} user={} dbname=postgres",
            conf::conninfo_value(&s.host),
            s.port,
            conf::conninfo_value(&s.user)
        );
        if let Some(p) = &self.cfg.passfile {
            c.push_str(&format!(
                " passfile={}",
                conf::conninfo_value(&p.to_string_lossy())
            ));
        }
        c
    }

    fn beside(&self, suffix: &str) -> PathBuf {
        let mut name = self
            .cfg
            .data_dir
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(suffix);
        self.cfg.data_dir.with_file_name(name)
    }
}

fn check_source(s: &Source) -> Result<(), Failure> {
    conf::check_text("the source host", &s.host).map_err(bad_request)?;
    conf::check_text("the source user", &s.user).map_err(bad_request)?;
    if s.host.trim().is_empty() || s.user.trim().is_empty() {
        return Err(bad_request(
            "the source needs a host and a user; got an empty one",
        ));
    }
    if s.port == 0 {
        return Err(bad_request("the source port is 0"));
    }
    Ok(())
}

fn check_pg_ctl_timeout(t: u64) -> Result<(), Failure> {
    if t == 0 || t > MAX_PG_CTL_SECS {
        return Err(bad_request(format!(
            "timeout_secs {t} is out of range; expected 1 … {MAX_PG_CTL_SECS}"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Endpoints.

async fn status(State(a): State<Arc<Agent>>) -> Answer<AgentStatus> {
    let pid = a.server_pid().await?;
    let control = a.control_data().await;
    let job = lock(&a.jobs).running().map(|j| j.status());
    Ok(Json(AgentStatus {
        version: env!("CARGO_PKG_VERSION").to_string(),
        data_dir: a.cfg.data_dir.display().to_string(),
        port: a.cfg.pg_port,
        running: pid.is_some(),
        pid: pid.filter(|p| *p != 0),
        control,
        job,
    }))
}

async fn stop(State(a): State<Arc<Agent>>, body: Bytes) -> Answer<Done> {
    let req: StopRequest = parse_body(&body)?;
    check_pg_ctl_timeout(req.timeout_secs)?;
    let _ops = a.ops.lock().await;
    if a.server_pid().await?.is_none() {
        return Ok(Json(Done {
            message: "the server was not running".into(),
        }));
    }
    let mode = match req.mode {
        StopMode::Fast => "fast",
        StopMode::Immediate => "immediate",
    };
    let mut cmd = a.tool("pg_ctl");
    cmd.arg("stop")
        .arg("-D")
        .arg(&a.cfg.data_dir)
        .args(["-m", mode, "-w", "-t"])
        .arg(req.timeout_secs.to_string());
    let (ok, text) = a.run_tool(cmd).await?;
    if !ok {
        return Err(failed(format!(
            "pg_ctl stop -m {mode} failed: {}",
            pgwarden_sandbox::tail(&text, 20)
        )));
    }
    tracing::info!("stopped the server ({mode})");
    Ok(Json(Done {
        message: format!("stopped ({mode})"),
    }))
}

async fn start(State(a): State<Arc<Agent>>, body: Bytes) -> Answer<Done> {
    let req: StartRequest = parse_body(&body)?;
    check_pg_ctl_timeout(req.timeout_secs)?;
    let _ops = a.ops.lock().await;
    a.refuse_during_data_job("start the server")?;
    if let Some(pid) = a.server_pid().await? {
        return Ok(Json(Done {
            message: format!("the server was already running (pid {pid})"),
        }));
    }
    if !a.has_cluster() {
        return Err(conflict(format!(
            "{} holds no database cluster; run a base backup first",
            a.cfg.data_dir.display()
        )));
    }
    // Not `tool`: the server inherits this environment, and keeps the operator's locale.
    let mut cmd = a.cfg.run_as.command(a.program("pg_ctl"));
    cmd.arg("start")
        .arg("-D")
        .arg(&a.cfg.data_dir)
        .arg("-l")
        .arg(&a.cfg.log_file)
        .args(["-w", "-t"])
        .arg(req.timeout_secs.to_string());
    let (ok, text) = a.run_tool(cmd).await?;
    if !ok {
        return Err(failed(format!(
            "pg_ctl start failed: {}\nthe end of {}:\n{}",
            text.trim(),
            a.cfg.log_file.display(),
            pgwarden_sandbox::tail_file(&a.cfg.log_file, 20)
        )));
    }
    tracing::info!("started the server");
    Ok(Json(Done {
        message: "started; it accepts connections".into(),
    }))
}

async fn standby(State(a): State<Arc<Agent>>, body: Bytes) -> Answer<Done> {
    let req: StandbyRequest = parse_body(&body)?;
    check_source(&req.source)?;
    conf::check_text("application_name", &req.application_name).map_err(bad_request)?;
    if let Some(slot) = &req.slot {
        conf::check_slot(slot).map_err(bad_request)?;
    }
    let _ops = a.ops.lock().await;
    a.refuse_during_data_job("write the standby settings")?;
    if let Some(pid) = a.server_pid().await? {
        return Err(conflict(format!(
            "the server runs (pid {pid}); stop it before turning it into a standby"
        )));
    }
    if !a.has_cluster() {
        return Err(conflict(format!(
            "{} holds no database cluster; run a base backup first",
            a.cfg.data_dir.display()
        )));
    }
    let passfile = a
        .cfg
        .passfile
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    let block = conf::standby_block(&conf::Standby {
        host: &req.source.host,
        port: req.source.port,
        user: &req.source.user,
        application_name: &req.application_name,
        passfile: passfile.as_deref(),
        slot: req.slot.as_deref(),
        listen_port: a.cfg.pg_port,
    });
    let dir = a.cfg.data_dir.clone();
    let run_as = a.cfg.run_as;
    tokio::task::spawn_blocking(move || write_standby(&dir, &block, run_as))
        .await
        .map_err(|e| failed(format!("the standby task failed: {e}")))?
        .map_err(failed)?;
    let message = format!(
        "standby of {}:{}{}: standby.signal and postgresql.auto.conf written",
        req.source.host,
        req.source.port,
        req.slot
            .as_ref()
            .map(|s| format!(" through slot {s}"))
            .unwrap_or_default()
    );
    tracing::info!("{message}");
    Ok(Json(Done { message }))
}

/// standby.signal and the settings block, each written to a temporary file, synced and
/// renamed into place, then the directory synced: a crash leaves the old file or the new one.
fn write_standby(dir: &Path, block: &str, run_as: RunAs) -> Result<(), String> {
    let auto = dir.join("postgresql.auto.conf");
    let existing = match std::fs::read_to_string(&auto) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", auto.display())),
    };
    write_durably(
        &auto,
        conf::rewrite_auto_conf(&existing, block).as_bytes(),
        0o600,
        run_as,
    )?;
    write_durably(&dir.join("standby.signal"), b"", 0o600, run_as)?;
    sync_dir(dir)
}

fn write_durably(path: &Path, data: &[u8], mode: u32, run_as: RunAs) -> Result<(), String> {
    let mut tmp_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    tmp_name.push(".pgwarden-tmp");
    let tmp = path.with_file_name(tmp_name);
    let io_err = |e: io::Error| format!("cannot write {}: {e}", tmp.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err)?;
    f.write_all(data).map_err(io_err)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io_err)?;
    f.sync_all().map_err(io_err)?;
    drop(f);
    run_as.own(&tmp).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot rename {} to {}: {e}", tmp.display(), path.display())
    })
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", dir.display()))
}

async fn start_job(State(a): State<Arc<Agent>>, body: Bytes) -> Result<Response, Failure> {
    let spec: JobSpec = parse_body(&body)?;
    let (kind, touches_data) = match &spec {
        JobSpec::Rewind { source } => {
            check_source(source)?;
            ("rewind", true)
        }
        JobSpec::BaseBackup { source, slot } => {
            check_source(source)?;
            if let Some(s) = slot {
                conf::check_slot(s).map_err(bad_request)?;
            }
            ("base_backup", true)
        }
        JobSpec::Script {
            path,
            args,
            timeout_secs,
        } => {
            if path.trim().is_empty()
                || path.contains('\0')
                || args.iter().any(|a| a.contains('\0'))
            {
                return Err(bad_request(
                    "the script's path is empty, or it or an argument contains a NUL",
                ));
            }
            if *timeout_secs == 0 {
                return Err(bad_request(
                    "timeout_secs is 0; expected the longest the script may run, in seconds",
                ));
            }
            ("script", false)
        }
    };
    let _ops = a.ops.lock().await;
    if let Some(j) = lock(&a.jobs).running() {
        return Err(conflict(format!(
            "job {} ({}) is running; one job at a time (GET /v1/jobs/{} for its progress, DELETE to cancel it)",
            j.id, j.kind, j.id
        )));
    }
    if kind == "rewind" && !a.has_cluster() {
        return Err(conflict(format!(
            "{} holds no database cluster to rewind; rebuild it with a base backup",
            a.cfg.data_dir.display()
        )));
    }
    if touches_data {
        if let Some(pid) = a.server_pid().await? {
            return Err(conflict(format!(
                "the server runs (pid {pid}); stop it before a {}",
                if kind == "rewind" {
                    "rewind"
                } else {
                    "base backup"
                }
            )));
        }
    }
    let job = {
        let mut jobs = lock(&a.jobs);
        let id = jobs.next_id;
        jobs.next_id += 1;
        let job = Job::new(id, kind, touches_data);
        if let Some(prev) = jobs.current.replace(Arc::clone(&job)) {
            jobs.finished.push_back(prev);
            while jobs.finished.len() > KEEP_FINISHED {
                jobs.finished.pop_front();
            }
        }
        job
    };
    tracing::info!(job = job.id, kind, "job started");
    let status = job.status();
    let agent = Arc::clone(&a);
    let j = Arc::clone(&job);
    tokio::spawn(async move {
        let outcome = match spec {
            JobSpec::Rewind { source } => agent.rewind(&j, &source).await,
            JobSpec::BaseBackup { source, slot } => {
                agent.base_backup(&j, &source, slot.as_deref()).await
            }
            JobSpec::Script {
                path,
                args,
                timeout_secs,
            } => agent.script(&j, &path, &args, timeout_secs).await,
        };
        match &outcome {
            Outcome::Succeeded(s) => {
                tracing::info!(job = j.id, kind = j.kind, "job succeeded: {s}")
            }
            Outcome::Failed(e) => tracing::warn!(job = j.id, kind = j.kind, "job failed: {e}"),
            Outcome::Cancelled(e) => {
                tracing::info!(job = j.id, kind = j.kind, "job cancelled: {e}")
            }
        }
        j.finish(outcome);
    });
    Ok((StatusCode::ACCEPTED, Json(status)).into_response())
}

fn job_id(id: &str) -> Result<u64, Failure> {
    id.parse().map_err(|_| {
        Failure(
            StatusCode::NOT_FOUND,
            format!("{id:?} is not a job id; expected a number"),
        )
    })
}

fn unknown_job(id: u64) -> Failure {
    Failure(
        StatusCode::NOT_FOUND,
        format!("no job {id} (the agent remembers the last {KEEP_FINISHED} jobs since it started)"),
    )
}

async fn job(State(a): State<Arc<Agent>>, UrlPath(id): UrlPath<String>) -> Answer<JobStatus> {
    let id = job_id(&id)?;
    let job = lock(&a.jobs).find(id).ok_or_else(|| unknown_job(id))?;
    Ok(Json(job.status()))
}

async fn cancel_job(
    State(a): State<Arc<Agent>>,
    UrlPath(id): UrlPath<String>,
) -> Answer<JobStatus> {
    let id = job_id(&id)?;
    let job = lock(&a.jobs).find(id).ok_or_else(|| unknown_job(id))?;
    if job.running() {
        tracing::info!(job = id, kind = job.kind, "cancelling job");
        job.request_cancel();
        if !job.wait_finished(Duration::from_secs(60)).await {
            return Err(failed(format!(
                "job {id} was asked to stop but has not finished its clean-up within 60 s"
            )));
        }
    }
    Ok(Json(job.status()))
}

// ---------------------------------------------------------------------------------------------
// The jobs.

/// A file kept across a rebuild: its name, content and mode.
struct Kept {
    name: String,
    data: Vec<u8>,
    mode: u32,
}

fn save_files(dir: &Path, names: &[&str]) -> Result<Vec<Kept>, String> {
    let mut kept = Vec::new();
    for name in names {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(data) => {
                let mode = std::fs::metadata(&path)
                    .map(|m| m.permissions().mode() & 0o777)
                    .unwrap_or(0o600);
                kept.push(Kept {
                    name: name.to_string(),
                    data,
                    mode,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
    }
    Ok(kept)
}

fn restore_files(dir: &Path, kept: &[Kept], run_as: RunAs) -> Result<(), String> {
    for k in kept {
        let path = dir.join(&k.name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        write_durably(&path, &k.data, k.mode, run_as)?;
    }
    sync_dir(dir)
}

impl Agent {
    fn keep_names(&self) -> Vec<&str> {
        self.cfg.keep.iter().map(String::as_str).collect()
    }

    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        tokio::task::spawn_blocking(f)
            .await
            .unwrap_or_else(|e| Err(format!("a file task failed: {e}")))
    }

    async fn rewind(self: &Arc<Self>, job: &Arc<Job>, source: &Source) -> Outcome {
        let dir = self.cfg.data_dir.clone();
        let run_as = self.cfg.run_as;
        // The node's own configuration, and whether it was set to start in recovery: pg_rewind
        // brings the source's configuration files, and its crash recovery of an unclean target
        // (`postgres --single`) refuses to run with standby.signal present.
        job.set_step("saving the files to keep");
        let names: Vec<String> = self.cfg.keep.clone();
        let d = dir.clone();
        let saved = Self::blocking(move || {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let kept = save_files(&d, &names)?;
            let signals = save_files(&d, &SIGNALS)?;
            for s in &signals {
                let p = d.join(&s.name);
                std::fs::remove_file(&p)
                    .map_err(|e| format!("cannot move {} aside: {e}", p.display()))?;
            }
            Ok((kept, signals))
        })
        .await;
        let (kept, signals) = match saved {
            Ok(s) => s,
            Err(e) => return Outcome::Failed(e),
        };
        let result = self.rewind_steps(job, source).await;
        job.set_step("restoring the kept files");
        let restore = {
            let d = dir.clone();
            Self::blocking(move || {
                restore_files(&d, &kept, run_as)?;
                restore_files(&d, &signals, run_as)
            })
            .await
        };
        match (result, restore) {
            (Ok(()), Ok(())) => Outcome::Succeeded("rewound; the kept files restored".into()),
            (Ok(()), Err(e)) => Outcome::Failed(format!(
                "pg_rewind succeeded but the kept files could not be put back: {e}"
            )),
            (Err(Outcome::Cancelled(e)), _) => Outcome::Cancelled(format!(
                "{e}; the data directory may be half rewound: rebuild it with a base backup"
            )),
            (Err(o), Ok(())) => o,
            (Err(Outcome::Failed(e)), Err(r)) => Outcome::Failed(format!("{e}; also: {r}")),
            (Err(o), Err(_)) => o,
        }
    }

    async fn rewind_steps(
        self: &Arc<Self>,
        job: &Arc<Job>,
        source: &Source,
    ) -> Result<(), Outcome> {
        let conninfo = self.source_conninfo(source);
        // PostgreSQL 15's pg_rewind reads the source's timeline from its pg_control, which a
        // promotion updates only at its first checkpoint: right after a failover pg_rewind
        // could see both on the same timeline and answer "no rewind required". A checkpoint
        // first makes it see the new one. Not fatal: pg_rewind says what is wrong if the source
        // cannot be reached.
        job.set_step("checkpoint on the source");
        let mut cmd = self.tool("psql");
        cmd.args([
            "-X",
            "-w",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "CHECKPOINT",
            "-d",
        ])
        .arg(&conninfo)
        .env("PGCONNECT_TIMEOUT", "10");
        jobs::prepare(&mut cmd);
        match job.run(cmd, Some(Duration::from_secs(300))).await {
            ChildEnd::Cancelled => {
                return Err(Outcome::Cancelled("the rewind was cancelled".into()))
            }
            ChildEnd::Exited(s) if s.success() => {}
            other => job.note(format!(
                "(the checkpoint on the source did not succeed: {other:?}; going on)"
            )),
        }
        job.set_step("pg_rewind");
        let mut cmd = self.tool("pg_rewind");
        cmd.arg(format!("--target-pgdata={}", self.cfg.data_dir.display()))
            .arg(format!("--source-server={conninfo}"))
            .arg("--progress")
            .current_dir(self.cfg.data_dir.parent().unwrap_or(Path::new("/")));
        jobs::prepare(&mut cmd);
        job.run(cmd, None).await.check("pg_rewind")
    }

    async fn base_backup(
        self: &Arc<Self>,
        job: &Arc<Job>,
        source: &Source,
        slot: Option<&str>,
    ) -> Outcome {
        let data = self.cfg.data_dir.clone();
        let new = self.beside(NEW_SUFFIX);
        let old = self.beside(OLD_SUFFIX);
        let run_as = self.cfg.run_as;
        job.set_step("preparing the new directory");
        let (d, n, o) = (data.clone(), new.clone(), old.clone());
        let prepared = Self::blocking(move || {
            // A swap interrupted between its two renames left the old directory aside.
            if !d.exists() && o.is_dir() {
                std::fs::rename(&o, &d).map_err(|e| {
                    format!("cannot put {} back as {}: {e}", o.display(), d.display())
                })?;
            }
            for leftover in [&n, &o] {
                if leftover.exists() {
                    std::fs::remove_dir_all(leftover).map_err(|e| {
                        format!("cannot remove the leftover {}: {e}", leftover.display())
                    })?;
                }
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&n)
                .map_err(|e| format!("cannot create {}: {e}", n.display()))?;
            std::fs::set_permissions(&n, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("cannot set the mode of {}: {e}", n.display()))?;
            run_as.own(&n).map_err(|e| e.to_string())
        })
        .await;
        if let Err(e) = prepared {
            return Outcome::Failed(e);
        }

        job.set_step("pg_basebackup");
        let mut cmd = self.tool("pg_basebackup");
        cmd.arg("-h")
            .arg(&source.host)
            .arg("-p")
            .arg(source.port.to_string())
            .arg("-U")
            .arg(&source.user)
            .arg("-D")
            .arg(&new)
            .args([
                "-X",
                "stream",
                "--checkpoint=fast",
                "--progress",
                "--verbose",
                "-w",
            ]);
        if let Some(s) = slot {
            cmd.arg("-S").arg(s);
        }
        if let Some(p) = &self.cfg.passfile {
            cmd.env("PGPASSFILE", p);
        }
        cmd.current_dir(new.parent().unwrap_or(Path::new("/")));
        jobs::prepare(&mut cmd);
        if let Err(outcome) = job.run(cmd, None).await.check("pg_basebackup") {
            job.set_step("removing the partial copy");
            let n = new.clone();
            let removed = Self::blocking(move || {
                std::fs::remove_dir_all(&n)
                    .map_err(|e| format!("cannot remove {}: {e}", n.display()))
            })
            .await;
            return match (outcome, removed) {
                (o, Ok(())) => o,
                (Outcome::Failed(e), Err(r)) => Outcome::Failed(format!("{e}; also: {r}")),
                (Outcome::Cancelled(e), Err(r)) => Outcome::Cancelled(format!("{e}; but: {r}")),
                (o, Err(_)) => o,
            };
        }

        job.set_step("carrying the kept files over and swapping the directories");
        let names: Vec<String> = self.keep_names().iter().map(|s| s.to_string()).collect();
        let swapped = Self::blocking(move || {
            if data.is_dir() {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let kept = save_files(&data, &names)?;
                restore_files(&new, &kept, run_as)?;
                std::fs::rename(&data, &old).map_err(|e| {
                    format!(
                        "cannot move {} aside to {}: {e}",
                        data.display(),
                        old.display()
                    )
                })?;
            }
            std::fs::rename(&new, &data).map_err(|e| {
                format!("cannot rename {} to {}: {e}", new.display(), data.display())
            })?;
            if let Some(parent) = data.parent() {
                sync_dir(parent)?;
            }
            if old.exists() {
                std::fs::remove_dir_all(&old)
                    .map_err(|e| format!("cannot remove {}: {e}", old.display()))?;
            }
            Ok(())
        })
        .await;
        match swapped {
            Ok(()) => {
                Outcome::Succeeded("base backup complete; the data directory replaced".into())
            }
            Err(e) => Outcome::Failed(e),
        }
    }

    async fn script(
        self: &Arc<Self>,
        job: &Arc<Job>,
        path: &str,
        args: &[String],
        timeout_secs: u64,
    ) -> Outcome {
        // pgpool_recovery() runs a relative script name inside the data directory.
        let program = if Path::new(path).is_absolute() {
            PathBuf::from(path)
        } else {
            self.cfg.data_dir.join(path)
        };
        job.set_step(format!("running {}", program.display()));
        let mut cmd = self.cfg.run_as.command(&program);
        cmd.args(args).env("PGDATA", &self.cfg.data_dir);
        // pgpool's scripts call psql and pg_basebackup: they find the agent's passwords.
        if let Some(p) = &self.cfg.passfile {
            cmd.env("PGPASSFILE", p);
        }
        if self.cfg.data_dir.is_dir() {
            cmd.current_dir(&self.cfg.data_dir);
        }
        jobs::prepare(&mut cmd);
        let what = program.display().to_string();
        match job.run(cmd, Some(Duration::from_secs(timeout_secs))).await {
            ChildEnd::TimedOut(_) => Outcome::Failed(format!(
                "{what} timed out after {timeout_secs} s and was killed"
            )),
            end => match end.check(&what) {
                Ok(()) => Outcome::Succeeded(format!("{what} finished")),
                Err(o) => o,
            },
        }
    }
}
