//! Reading the configuration and the password file from disk (the I/O the core crate leaves out).

use pgwarden_core::config::{self, Config, ConfigError, ConfigErrors};
use pgwarden_core::passfile::PassFile;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Reads, parses and validates a configuration file, including its password file.
pub fn config(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: String::new(),
            problem: format!("cannot read the configuration file: {e}"),
        }])
    })?;
    let cfg = config::parse(&text, path)?;
    cfg.check_files(check_password_file)?;
    if let Some(pp) = &cfg.proxy.pool_passwd {
        let problem = match std::fs::read_to_string(pp) {
            Err(e) => Some(format!("{} cannot be read: {e}; expected a file in pgpool's pool_passwd format (user:secret per line)", pp.display())),
            Ok(text) => pgwarden_wire::auth::parse_pool_passwd(&text)
                .err()
                .map(|(line, e)| format!("{} line {line}: {e}", pp.display())),
        };
        if let Some(problem) = problem {
            return Err(ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: None,
                key: "proxy.pool_passwd".into(),
                problem,
            }]));
        }
    }
    Ok(cfg)
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
