//! `pgwarden node recover N`: starts an online recovery through the API and follows it with a
//! progress bar (step, bytes copied of the total, rate, time left) until it ends.

use indicatif::{ProgressBar, ProgressStyle};
use pgwarden_api::{Client, ClientError, NodeOp};
use pgwarden_core::recovery::{RecoveryState, RecoveryStatus};
use std::process::ExitCode;
use std::time::Duration;

pub async fn run(
    client: &Client,
    id: u32,
    no_wait: bool,
    watch: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if !watch {
        match client.node_op(id, NodeOp::Recover).await {
            Ok(r) if no_wait => {
                println!("{}", r.message);
                return Ok(ExitCode::SUCCESS);
            }
            Ok(_) => {}
            Err(ClientError::Refused { reason, .. }) => {
                eprintln!("pgwarden: {reason}");
                return Ok(ExitCode::from(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let bar = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut last_message = String::new();
    let status = loop {
        let Some(s) = client.recovery(id).await? else {
            eprintln!("pgwarden: no recovery of node {id} has run since the warden started");
            return Ok(ExitCode::from(1));
        };
        draw(&bar, &s);
        // Without a terminal the bar is hidden: print each new step instead.
        if bar.is_hidden() && !json && s.message != last_message {
            eprintln!("{}", line(&s));
            last_message = s.message.clone();
        }
        if s.state != RecoveryState::Running {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    }
    match status.state {
        RecoveryState::Succeeded => {
            if !json {
                println!("{}", status.message);
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            if !json {
                eprintln!(
                    "pgwarden: recovery of node {id} failed at {}",
                    status.error.as_deref().unwrap_or("an unknown step")
                );
            }
            Ok(ExitCode::from(1))
        }
    }
}

fn draw(bar: &ProgressBar, s: &RecoveryStatus) {
    bar.set_prefix(format!(
        "node {} [{}/{}] {}",
        s.node,
        s.step_index,
        s.steps.len(),
        s.step.describe()
    ));
    match s.bytes_total {
        Some(t) if t > 0 => {
            bar.set_length(t);
            bar.set_position(s.bytes_done.min(t));
        }
        _ => {
            bar.set_length(s.steps.len() as u64);
            bar.set_position(s.step_index.saturating_sub(1) as u64);
        }
    }
    bar.set_message(progress_text(s));
}

/// "120.0 MiB / 1.0 GiB, 85.3 MiB/s, 10 s left — copying files"
pub fn progress_text(s: &RecoveryStatus) -> String {
    let mut parts = Vec::new();
    if s.bytes_done > 0 || s.bytes_total.is_some() {
        let mut copied = bytes(s.bytes_done);
        if let Some(t) = s.bytes_total {
            copied = format!("{copied} / {}", bytes(t));
        }
        parts.push(copied);
    }
    if let Some(r) = s.rate {
        parts.push(format!("{}/s", bytes(r as u64)));
    }
    if let Some(e) = s.eta_secs {
        parts.push(format!("{e} s left"));
    }
    let figures = parts.join(", ");
    match (figures.is_empty(), s.message.is_empty()) {
        (true, _) => s.message.clone(),
        (false, true) => figures,
        (false, false) => format!("{figures} — {}", s.message),
    }
}

fn line(s: &RecoveryStatus) -> String {
    let text = progress_text(s);
    format!(
        "node {} [{}/{}] {}{}{text}",
        s.node,
        s.step_index,
        s.steps.len(),
        s.step.describe(),
        if text.is_empty() { "" } else { ": " }
    )
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_core::recovery::{Method, Step};

    #[test]
    fn progress_reads_like_a_sentence() {
        let s = RecoveryStatus {
            node: 1,
            state: RecoveryState::Running,
            primary: 0,
            method: Some(Method::BaseBackup),
            step: Step::FirstStage,
            step_index: 3,
            steps: vec![
                Step::Checkpoint,
                Step::StopNode,
                Step::FirstStage,
                Step::Attach,
            ],
            bytes_done: 120 * 1024 * 1024,
            bytes_total: Some(1024 * 1024 * 1024),
            rate: Some(85.3 * 1024.0 * 1024.0),
            eta_secs: Some(10),
            elapsed_ms: 1500,
            message: "copying files".into(),
            error: None,
        };
        insta::assert_snapshot!(line(&s), @"node 1 [3/4] 1st stage: 120.0 MiB / 1.0 GiB, 85.3 MiB/s, 10 s left — copying files");
        let quiet = RecoveryStatus {
            bytes_done: 0,
            bytes_total: None,
            rate: None,
            eta_secs: None,
            step: Step::Checkpoint,
            step_index: 1,
            message: String::new(),
            ..s
        };
        insta::assert_snapshot!(line(&quiet), @"node 1 [1/4] checkpoint on the primary");
    }
}
