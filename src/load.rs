//! Reading the configuration and the password file from disk (the I/O the core crate leaves out).

use pgwarden_core::config::{self, Config, ConfigError, ConfigErrors};
use pgwarden_core::passfile::PassFile;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Reads and parses a configuration file, without reading the files it names (a CLI command
/// that only needs the API's address must not need the service's secrets).
pub fn parse_only(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: String::new(),
            problem: format!("cannot read the configuration file: {e}"),
        }])
    })?;
    config::parse(&text, path)
}

/// Reads, parses and validates a configuration file, including its password file.
pub fn config(path: &Path) -> Result<Config, ConfigErrors> {
    let cfg = parse_only(path)?;
    cfg.check_files(check_password_file)?;
    // The files the configuration names, read as the warden will read them: `config check`
    // finds what would stop it starting.
    let mut problems = Vec::new();
    let mut problem = |key: &str, problem: String| {
        problems.push(ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: key.into(),
            problem,
        })
    };
    if let Err(bad) = pgwarden_proxy::read_pool_passwd(&cfg.proxy) {
        problem("proxy.pool_passwd", bad);
    }
    if let Some(tls) = &cfg.proxy.tls {
        if let Err(e) = check_key_file(&tls.key) {
            problem("proxy.tls_key", e);
        } else if let Err(e) = pgwarden_proxy::stream::acceptor(&tls.cert, &tls.key) {
            problem("proxy.tls_cert / proxy.tls_key", e);
        }
    }
    if let Some(users) = &cfg.pcp.users_file {
        if let Err(e) = pgwarden_pcp::PcpUsers::load(users) {
            problem(
                "pcp.users_file",
                format!("{e}; expected pgpool's pcp.conf (user:md5 of the password per line)"),
            );
        }
    }
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigErrors(problems))
    }
}

/// A TLS private key must be closed to group and others, as PostgreSQL requires of
/// `ssl_key_file` (one owned by root may be readable by its group).
pub fn check_key_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    let open = if meta.uid() == 0 {
        mode & 0o037 != 0
    } else {
        mode & 0o077 != 0
    };
    if open {
        return Err(format!(
            "{} has group or world access (mode {mode:04o}); a private key must be mode 0600 or stricter (0640 if owned by root), as PostgreSQL requires: chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

/// A password file must exist, be a regular file, be readable, and be closed to group and
/// others (libpq ignores a password file that is not).
pub fn check_password_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "{} does not exist; expected a password file in libpq's format (host:port:database:user:password), mode 0600",
            path.display()
        ),
        _ => format!("{} cannot be read: {e}", path.display()),
    })?;
    if !meta.is_file() {
        return Err(format!(
            "{} is not a regular file; expected a password file in libpq's format, mode 0600",
            path.display()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is readable by group or others (mode {mode:04o}); expected mode 0600 or stricter: chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
    std::fs::File::open(path).map_err(|e| format!("{} cannot be read: {e}", path.display()))?;
    Ok(())
}

/// The passwords of a validated configuration.
pub fn passwords(cfg: &Config) -> anyhow::Result<PassFile> {
    let path = &cfg.credentials.password_file;
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read the password file: {e}", path.display()))?;
    Ok(PassFile::parse(&text))
}
