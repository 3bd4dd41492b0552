//! Control of a PostgreSQL server on this host: stop, start, turn into a standby. Used by the
//! switchover for nodes whose host is this machine (the sandbox, or a warden beside its
//! database). Nodes on other hosts need the node agent (the online-recovery work), and the
//! switchover says so rather than guess.

use pgwarden_core::config::Backend;
use pgwarden_sandbox::{PgBin, RunAs};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Whether node `b` can be controlled from here: its host is a loopback address and its data
/// directory is visible.
pub fn is_local(b: &Backend) -> bool {
    let loopback = b.host == "localhost"
        || b.host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback && b.data_dir.join("PG_VERSION").is_file()
}

fn pg_ctl(args: &[&str], data_dir: &Path) -> Result<String, String> {
    let bin = PgBin::locate().map_err(|e| e.to_string())?;
    let run_as = RunAs::detect().map_err(|e| e.to_string())?;
    let out = run_as
        .command(bin.program("pg_ctl"))
        .args(args)
        .arg("-D")
        .arg(data_dir)
        .output()
        .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("pg_ctl {} failed: {}", args.join(" "), text.trim()))
    }
}

/// `pg_ctl stop -m fast -w`: a clean shutdown (shutdown checkpoint, WAL sent to the standbys).
pub async fn stop_fast(b: &Backend) -> Result<(), String> {
    let dir = b.data_dir.clone();
    tokio::task::spawn_blocking(move || pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"], &dir))
        .await
        .map_err(|e| e.to_string())?
        .map(drop)
}

/// Where `pg_ctl start` writes the server's output: the sandbox's log directory beside the
/// configuration when there is one, else a file in the data directory.
pub fn start_log(b: &Backend, config_file: &Path) -> PathBuf {
    let log_dir = config_file
        .parent()
        .map(|d| d.join("log"))
        .filter(|d| d.is_dir());
    match log_dir {
        Some(d) => d.join(format!("node{}.log", b.id)),
        None => b.data_dir.join("pgwarden-pg_ctl.log"),
    }
}

pub async fn start(b: &Backend, log: PathBuf) -> Result<(), String> {
    let dir = b.data_dir.clone();
    tokio::task::spawn_blocking(move || {
        let log = log.display().to_string();
        pg_ctl(&["start", "-w", "-t", "60", "-l", &log], &dir)
    })
    .await
    .map_err(|e| e.to_string())?
    .map(drop)
}

/// Makes the stopped server in `b.data_dir` start as a standby: `standby.signal`, and
/// primary_conninfo / primary_slot_name appended to postgresql.auto.conf (later lines win;
/// the next ALTER SYSTEM rewrites the file cleanly). Files get the data directory's owner.
pub fn make_standby(b: &Backend, conninfo: &str, slot: &str) -> Result<(), String> {
    let dir = &b.data_dir;
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (uid, gid) = (meta.uid(), meta.gid());
    let signal = dir.join("standby.signal");
    std::fs::write(&signal, b"").map_err(|e| format!("{}: {e}", signal.display()))?;
    let _ = std::os::unix::fs::chown(&signal, Some(uid), Some(gid));
    let auto = dir.join("postgresql.auto.conf");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&auto)
        .map_err(|e| format!("{}: {e}", auto.display()))?;
    let quote = |v: &str| format!("'{}'", v.replace('\'', "''"));
    writeln!(
        f,
        "# pgwarden switchover: a standby of the new primary\nprimary_conninfo = {}\nprimary_slot_name = {}\nrecovery_target_timeline = 'latest'",
        quote(conninfo),
        quote(slot)
    )
    .map_err(|e| format!("{}: {e}", auto.display()))?;
    f.sync_all()
        .map_err(|e| format!("{}: {e}", auto.display()))?;
    let _ = std::os::unix::fs::chown(&auto, Some(uid), Some(gid));
    Ok(())
}

/// A replication slot name for node `b`: its application_name, folded to what PostgreSQL
/// allows in slot names (lower-case letters, digits, underscore).
pub fn slot_name(b: &Backend) -> String {
    b.application_name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
