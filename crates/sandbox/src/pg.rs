//! Finding PostgreSQL's programs, and running them as the right OS user.

use crate::SandboxError;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The programs a sandbox needs.
pub const PROGRAMS: [&str; 5] = ["initdb", "pg_ctl", "postgres", "pg_basebackup", "psql"];

/// A directory holding PostgreSQL's server programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBin {
    pub dir: PathBuf,
}

impl PgBin {
    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Finds the programs: `$PGWARDEN_PG_BIN` if set, else the newest
    /// `/usr/lib/postgresql/*/bin` (Debian, Ubuntu), else `pg_config --bindir`, else the
    /// directory of `initdb` on `PATH`.
    pub fn locate() -> Result<PgBin, SandboxError> {
        let mut tried = Vec::new();
        if let Some(dir) = std::env::var_os("PGWARDEN_PG_BIN") {
            let dir = PathBuf::from(dir);
            return match missing(&dir) {
                None => Ok(PgBin { dir }),
                Some(m) => Err(SandboxError::PgNotFound {
                    looked_in: format!("{} (from PGWARDEN_PG_BIN; missing {m})", dir.display()),
                }),
            };
        }
        let mut candidates = debian_bin_dirs();
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            if out.status.success() {
                candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(
                std::env::split_paths(&path)
                    .filter(|d| d.join("initdb").is_file())
                    .map(|d| d.canonicalize().unwrap_or(d)),
            );
        }
        for dir in candidates {
            match missing(&dir) {
                None => return Ok(PgBin { dir }),
                Some(m) => tried.push(format!("{} (missing {m})", dir.display())),
            }
        }
        if tried.is_empty() {
            tried.push("/usr/lib/postgresql/*/bin, pg_config --bindir and PATH: nothing".into());
        }
        Err(SandboxError::PgNotFound {
            looked_in: tried.join("; "),
        })
    }
}

fn missing(dir: &Path) -> Option<String> {
    let absent: Vec<&str> = PROGRAMS
        .iter()
        .copied()
        .filter(|p| !dir.join(p).is_file())
        .collect();
    if absent.is_empty() {
        None
    } else {
        Some(absent.join(", "))
    }
}

/// `/usr/lib/postgresql/<major>/bin`, newest major first.
fn debian_bin_dirs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") else {
        return Vec::new();
    };
    let mut majors: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, e.path().join("bin")))
        })
        .collect();
    majors.sort_by_key(|m| std::cmp::Reverse(m.0));
    majors.into_iter().map(|(_, p)| p).collect()
}

/// The OS user PostgreSQL runs as: the invoking user, or `postgres` when invoked as root
/// (PostgreSQL refuses to run as root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAs {
    Current,
    User { uid: u32, gid: u32 },
}

impl RunAs {
    pub fn detect() -> Result<RunAs, SandboxError> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(RunAs::Current);
        }
        match nix::unistd::User::from_name("postgres") {
            Ok(Some(u)) => Ok(RunAs::User {
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }),
            _ => Err(SandboxError::NoPostgresUser),
        }
    }

    /// A command that runs as this user.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        if let RunAs::User { uid, gid } = *self {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// Gives `path` to this user (a no-op when running as the current user).
    pub fn own(&self, path: &Path) -> Result<(), SandboxError> {
        if let RunAs::User { uid, gid } = *self {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| SandboxError::io(path, "change the owner of", e))?;
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        match self {
            RunAs::Current => "the current user".into(),
            RunAs::User { .. } => "the postgres OS user".into(),
        }
    }
}
