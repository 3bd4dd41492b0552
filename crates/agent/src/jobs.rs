//! Long work as *jobs*: a child process in its own process group, its output read line by line
//! for progress, a timeout and cancellation that kill the whole group (pg_basebackup forks a
//! WAL receiver, pg_rewind runs `postgres --single` for crash recovery, a script may start
//! anything), and a status the warden polls.

use crate::api::{JobState, JobStatus};
use crate::parse::{self, Line};
use std::collections::VecDeque;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

/// The number of output lines a job keeps.
pub const TAIL_LINES: usize = 20;

/// What the status shows while the job runs.
#[derive(Debug)]
struct Progress {
    state: JobState,
    step: String,
    bytes_done: u64,
    bytes_total: Option<u64>,
    tail: VecDeque<String>,
    /// The last line in `tail` is a progress report: the next one replaces it, as on a
    /// terminal, so the tail keeps the messages rather than a column of percentages.
    last_is_progress: bool,
    error: Option<String>,
    finished_after: Option<Duration>,
}

/// One job.
#[derive(Debug)]
pub struct Job {
    pub id: u64,
    pub kind: &'static str,
    /// Rewinds and base backups change the data directory: the server must not be started
    /// or reconfigured while they run.
    pub touches_data: bool,
    started: Instant,
    progress: Mutex<Progress>,
    cancel: watch::Sender<bool>,
    finished: watch::Sender<bool>,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded(String),
    Failed(String),
    Cancelled(String),
}

/// How a child process ended.
#[derive(Debug)]
pub enum ChildEnd {
    Exited(ExitStatus),
    TimedOut(Duration),
    Cancelled,
    /// It could not be started.
    NotStarted(String),
}

impl ChildEnd {
    /// `Ok` when it exited 0; else why not, naming `what`.
    pub fn check(self, what: &str) -> Result<(), Outcome> {
        match self {
            ChildEnd::Exited(s) if s.success() => Ok(()),
            ChildEnd::Exited(s) => Err(Outcome::Failed(format!("{what} {}", describe_exit(s)))),
            ChildEnd::TimedOut(t) => Err(Outcome::Failed(format!(
                "{what} timed out after {} s and was killed",
                t.as_secs()
            ))),
            ChildEnd::Cancelled => Err(Outcome::Cancelled(format!("{what} was cancelled"))),
            ChildEnd::NotStarted(e) => Err(Outcome::Failed(format!("cannot run {what}: {e}"))),
        }
    }
}

/// "exited with code 2", "was killed by signal 9".
pub fn describe_exit(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "ended in an unknown way".into(),
    }
}

/// Recovers the guard of a poisoned lock: a panic elsewhere must not take the agent down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Job {
    pub fn new(id: u64, kind: &'static str, touches_data: bool) -> Arc<Job> {
        Arc::new(Job {
            id,
            kind,
            touches_data,
            started: Instant::now(),
            progress: Mutex::new(Progress {
                state: JobState::Running,
                step: "starting".into(),
                bytes_done: 0,
                bytes_total: None,
                tail: VecDeque::new(),
                last_is_progress: false,
                error: None,
                finished_after: None,
            }),
            cancel: watch::channel(false).0,
            finished: watch::channel(false).0,
        })
    }

    pub fn status(&self) -> JobStatus {
        let p = lock(&self.progress);
        JobStatus {
            id: self.id,
            kind: self.kind.to_string(),
            state: p.state,
            step: p.step.clone(),
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
            elapsed_ms: p
                .finished_after
                .unwrap_or_else(|| self.started.elapsed())
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
            output_tail: p.tail.iter().cloned().collect::<Vec<_>>().join("\n"),
            error: p.error.clone(),
        }
    }

    pub fn running(&self) -> bool {
        lock(&self.progress).state == JobState::Running
    }

    pub fn set_step(&self, step: impl Into<String>) {
        lock(&self.progress).step = step.into();
    }

    /// A line of the job's own (not a tool's) for the tail: what the agent did around the tool.
    pub fn note(&self, text: impl Into<String>) {
        let mut p = lock(&self.progress);
        push_tail(&mut p, text.into(), false);
    }

    /// One line of a tool's output.
    pub fn record(&self, line: &str) {
        let mut p = lock(&self.progress);
        match parse::line(line) {
            Line::Progress { done, total } => {
                p.bytes_done = done;
                if total.is_some() {
                    p.bytes_total = total;
                }
                if !p.step.starts_with("copying") {
                    p.step = "copying files".into();
                }
                push_tail(&mut p, line.trim().to_string(), true);
                return;
            }
            Line::Step(s) => p.step = s,
            Line::Other => {}
        }
        push_tail(&mut p, line.trim_end().to_string(), false);
    }

    /// Asks the job to stop; its task kills the child and cleans up.
    pub fn request_cancel(&self) {
        self.cancel.send_replace(true);
    }

    /// Waits until the job has ended (its clean-up done), at most `limit`; true if it has.
    pub async fn wait_finished(&self, limit: Duration) -> bool {
        let mut rx = self.finished.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|f| *f))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Records the end; the status shows it from now on.
    pub fn finish(&self, outcome: Outcome) {
        {
            let mut p = lock(&self.progress);
            p.finished_after = Some(self.started.elapsed());
            match outcome {
                Outcome::Succeeded(step) => {
                    p.state = JobState::Succeeded;
                    p.step = step;
                }
                Outcome::Failed(e) => {
                    p.state = JobState::Failed;
                    p.step = "failed".into();
                    p.error = Some(e);
                }
                Outcome::Cancelled(e) => {
                    p.state = JobState::Cancelled;
                    p.step = "cancelled".into();
                    p.error = Some(e);
                }
            }
        }
        self.finished.send_replace(true);
    }

    /// Runs `cmd` to its end, reading its output into the job. `cmd` must have been made with
    /// [`prepare`]. Killed (its whole process group) after `timeout` or when cancelled.
    pub async fn run(
        self: &Arc<Self>,
        cmd: std::process::Command,
        timeout: Option<Duration>,
    ) -> ChildEnd {
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        // Standard output and error share one pipe, as with `2>&1` in a terminal: the tail
        // shows the lines in the order the program wrote them (read from two pipes, an error
        // written last could land before the output written first, and out of the tail).
        let reader = match std::io::pipe().and_then(|(r, w)| {
            cmd.stdout(w.try_clone()?).stderr(w);
            Ok(r)
        }) {
            Ok(r) => r,
            Err(e) => return ChildEnd::NotStarted(format!("cannot make a pipe: {e}")),
        };
        let spawned = cmd.spawn();
        // Our copies of the pipe's writing end go with `cmd`: the pipe closes when the child
        // (and whatever it started) is done with it.
        drop(cmd);
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => return ChildEnd::NotStarted(e.to_string()),
        };
        // process_group(0): the child leads a group of its own, whose id is its pid.
        let pgid = child.id().and_then(|p| i32::try_from(p).ok());
        let mut readers = Vec::new();
        match tokio::net::unix::pipe::Receiver::from_owned_fd(std::os::fd::OwnedFd::from(reader)) {
            Ok(out) => readers.push(tokio::spawn(read_lines(out, Arc::clone(self)))),
            Err(e) => self.record(&format!("pgwarden: the output cannot be read: {e}")),
        }
        let mut cancel = self.cancel.subscribe();
        let deadline = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let end = tokio::select! {
            status = child.wait() => match status {
                Ok(s) => ChildEnd::Exited(s),
                Err(e) => ChildEnd::NotStarted(format!("cannot wait for it: {e}")),
            },
            _ = deadline => ChildEnd::TimedOut(timeout.unwrap_or_default()),
            _ = cancel.wait_for(|c| *c) => ChildEnd::Cancelled,
        };
        if matches!(end, ChildEnd::TimedOut(_) | ChildEnd::Cancelled) {
            if let Some(pgid) = pgid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pgid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill().await;
        }
        // The output is complete once the pipes close; a grandchild that keeps them open
        // (a script that started a daemon) is not waited for long.
        for r in readers {
            let abort = r.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), r)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        end
    }
}

async fn read_lines(mut r: impl tokio::io::AsyncRead + Unpin, job: Arc<Job>) {
    let mut buf = vec![0u8; 4096];
    let mut pending = Vec::new();
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                for line in parse::split_lines(&mut pending, &buf[..n]) {
                    job.record(&line);
                }
            }
        }
    }
    if !pending.is_empty() {
        job.record(&String::from_utf8_lossy(&pending));
    }
}

fn push_tail(p: &mut Progress, line: String, progress: bool) {
    if progress && p.last_is_progress {
        p.tail.pop_back();
    }
    p.tail.push_back(line);
    while p.tail.len() > TAIL_LINES {
        p.tail.pop_front();
    }
    p.last_is_progress = progress;
}

/// Sets up `cmd` to run as a job: its own process group (so it can be killed whole, and a
/// Ctrl-C of the agent's terminal does not reach it), no input, output piped to the job
/// (`Job::run` puts standard output and error on one pipe).
pub fn prepare(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_collapse_in_the_tail() {
        let job = Job::new(1, "base_backup", true);
        job.record("pg_basebackup: checkpoint completed");
        job.record("100/1000 kB (10%), 0/1 tablespace");
        job.record("500/1000 kB (50%), 0/1 tablespace");
        assert_eq!(job.status().step, "copying files");
        job.record("pg_basebackup: base backup completed");
        let s = job.status();
        assert_eq!(s.bytes_done, 500 * 1024);
        assert_eq!(s.bytes_total, Some(1000 * 1024));
        assert_eq!(s.step, "base backup completed");
        assert_eq!(
            s.output_tail,
            "pg_basebackup: checkpoint completed\n500/1000 kB (50%), 0/1 tablespace\npg_basebackup: base backup completed"
        );
        for i in 0..30 {
            job.record(&format!("line {i}"));
        }
        let s = job.status();
        assert_eq!(s.output_tail.lines().count(), TAIL_LINES);
        assert!(s.output_tail.ends_with("line 29"));
        assert_eq!(s.state, JobState::Running);
        job.finish(Outcome::Failed("boom".into()));
        let s = job.status();
        assert_eq!(s.state, JobState::Failed);
        assert_eq!(s.error.as_deref(), Some("boom"));
    }

    #[tokio::test]
    async fn a_child_is_timed_out_and_its_group_killed() {
        let job = Job::new(2, "script", false);
        let mut cmd = std::process::Command::new("sh");
        // The grandchild (sleep) is killed with its group: the pipes close at once.
        cmd.args(["-c", "echo started; sleep 30 & wait"]);
        prepare(&mut cmd);
        let t = Instant::now();
        let end = job.run(cmd, Some(Duration::from_millis(300))).await;
        assert!(matches!(end, ChildEnd::TimedOut(_)), "{end:?}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(job.status().output_tail, "started");
    }

    #[tokio::test]
    async fn a_child_is_cancelled() {
        let job = Job::new(3, "script", false);
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        prepare(&mut cmd);
        let j = Arc::clone(&job);
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            j.request_cancel();
        });
        let end = job.run(cmd, None).await;
        assert!(matches!(end, ChildEnd::Cancelled), "{end:?}");
        canceller.await.unwrap();
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        prepare(&mut cmd);
        let job = Job::new(4, "script", false);
        let e = job.run(cmd, None).await.check("the script").unwrap_err();
        assert_eq!(e, Outcome::Failed("the script exited with code 3".into()));
        let tail = job.status().output_tail;
        assert!(tail.contains("out") && tail.contains("err"), "{tail}");
    }
}
