//! pgpool's hook commands (failover_command, follow_primary_command): run through `sh -c` with
//! the %-placeholders expanded, bounded by a timeout, output kept for the log. They run in the
//! controller's task, never in the proxy's path.

use pgwarden_core::cluster::{expand_hook, HookArgs};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// How a hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOutcome {
    pub command: String,
    /// `None`: it did not start, or was killed at the timeout.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// The end of its stdout and stderr together (at most 4 KiB).
    pub output: String,
    pub error: Option<String>,
}

impl HookOutcome {
    pub fn ok(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// One line for the event history.
    pub fn summary(&self) -> String {
        let status = match (&self.error, self.timed_out, self.exit_code) {
            (Some(e), _, _) => format!("could not run: {e}"),
            (None, true, _) => "killed at the timeout".to_string(),
            (None, false, Some(c)) => format!("exit code {c}"),
            (None, false, None) => "killed by a signal".to_string(),
        };
        let out = self.output.trim();
        if out.is_empty() {
            format!("`{}`: {status}", self.command)
        } else {
            format!("`{}`: {status}; output: {out}", self.command)
        }
    }
}

const OUTPUT_KEPT: usize = 4096;

pub async fn run_hook(template: &str, args: &HookArgs, limit: Duration) -> HookOutcome {
    let command = expand_hook(template, args);
    let mut outcome = HookOutcome {
        command: command.clone(),
        exit_code: None,
        timed_out: false,
        output: String::new(),
        error: None,
    };
    let child = Command::new("sh")
        .arg("-c")
        .arg(&command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            outcome.error = Some(e.to_string());
            return outcome;
        }
    };
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let collect = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let read_out = async {
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_end(&mut err).await;
            }
        };
        tokio::join!(read_out, read_err);
        let status = child.wait().await;
        (out, err, status)
    };
    match tokio::time::timeout(limit, collect).await {
        Ok((out, err, status)) => {
            let mut text = String::from_utf8_lossy(&out).into_owned();
            text.push_str(&String::from_utf8_lossy(&err));
            if text.len() > OUTPUT_KEPT {
                let mut cut = text.len() - OUTPUT_KEPT;
                while !text.is_char_boundary(cut) {
                    cut += 1;
                }
                text = text[cut..].to_string();
            }
            outcome.output = text;
            match status {
                Ok(s) => outcome.exit_code = s.code(),
                Err(e) => outcome.error = Some(e.to_string()),
            }
        }
        Err(_) => {
            outcome.timed_out = true;
        }
    }
    tracing::info!(command = %outcome.command, "hook: {}", outcome.summary());
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_core::cluster::HookNode;

    #[tokio::test]
    async fn runs_with_placeholders_and_a_timeout() {
        let args = HookArgs {
            node: Some(HookNode {
                id: 0,
                host: "h0".into(),
                port: 5432,
                data_dir: "/d0".into(),
            }),
            ..Default::default()
        };
        let o = run_hook(
            "echo failed=%d at %h:%p; echo oops >&2",
            &args,
            Duration::from_secs(5),
        )
        .await;
        assert!(o.ok(), "{o:?}");
        assert_eq!(o.output, "failed=0 at h0:5432\noops\n");
        let o = run_hook("exit 3", &args, Duration::from_secs(5)).await;
        assert_eq!(o.exit_code, Some(3));
        assert!(o.summary().contains("exit code 3"));
        let t = std::time::Instant::now();
        let o = run_hook("sleep 30", &args, Duration::from_millis(300)).await;
        assert!(o.timed_out && !o.ok());
        assert!(t.elapsed() < Duration::from_secs(10), "the hook was killed");
        assert!(o.summary().contains("killed at the timeout"));
    }
}
