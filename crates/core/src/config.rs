//! `pgwarden.toml`: the configuration file.
//!
//! Parsing happens in two steps. The text is first deserialized into `Raw*` types that keep the
//! byte span of the values later checks need to point at; then [`validate`] turns them into the
//! plain [`Config`] the rest of pgwarden uses, collecting every problem it finds. Each problem
//! names the file, the line, the key and what was expected.
//!
//! Checks that need the file system (the password file's existence and mode) are run by the
//! caller through [`Config::check_files`], which takes the I/O as a closure.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

pub mod proxy;
pub use proxy::{AuthMethod, HbaRule, LoadBalance, ProxyConfig};
pub mod failover;
pub use failover::{FailoverConfig, NodeInfoLayout, PcpConfig, SyncFallback};
pub mod recovery;
pub use recovery::{AgentConfig, RecoveryConfig};

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, when the problem sits at a known place.
    pub line: Option<usize>,
    /// Dotted key, such as `backend[1].port` or `health_check.timeout`; empty for the whole file.
    pub key: String,
    /// What is wrong and what is expected.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.problem)
        } else {
            write!(f, ": {}: {}", self.key, self.problem)
        }
    }
}

/// Every problem found in a configuration file (at least one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// pgpool's ALLOW_TO_FAILOVER / DISALLOW_TO_FAILOVER backend flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailoverFlag {
    /// A failed node is detached (and, for a primary, failed over). pgpool's ALLOW_TO_FAILOVER.
    #[default]
    Allow,
    /// A failed node is only logged, never detached: another tool manages it.
    /// pgpool's DISALLOW_TO_FAILOVER.
    Disallow,
}

/// Health-check settings, effective for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Time between the starts of two checks.
    pub period: Duration,
    /// Longest one attempt (connect + query) may take.
    pub timeout: Duration,
    /// Further attempts after a failed one before the node counts as failed.
    pub max_retries: u32,
    /// Pause between two attempts.
    pub retry_delay: Duration,
    /// Longest the TCP connection and authentication may take.
    pub connect_timeout: Duration,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            period: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            max_retries: 2,
            retry_delay: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl HealthCheck {
    /// The longest time from a node's death to its status turning `down`:
    /// one period to the next check, then every attempt timing out with the retry delays between.
    pub fn worst_case_detection(&self) -> Duration {
        let attempts = self.max_retries + 1;
        self.period + self.timeout * attempts + self.retry_delay * self.max_retries
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub proxy: SocketAddr,
    pub pcp: SocketAddr,
    pub api: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub database: String,
    /// Absolute path of a libpq-format password file.
    pub password_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub id: u32,
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub weight: f64,
    pub failover: FailoverFlag,
    /// The `application_name` this node's WAL receiver uses, to find it in `pg_stat_replication`.
    pub application_name: String,
    /// `HOST:PORT` of this node's `pgwarden agent` (online recovery, switchover of a remote
    /// primary).
    pub agent: Option<String>,
    /// Among standbys with the same WAL position, a failover promotes the highest priority.
    pub priority: u32,
    pub health_check: HealthCheck,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    pub listen: Listen,
    pub credentials: Credentials,
    pub backends: Vec<Backend>,
    pub proxy: ProxyConfig,
    pub failover: FailoverConfig,
    pub pcp: PcpConfig,
    pub agent: AgentConfig,
    pub recovery: RecoveryConfig,
    /// 1-based line of `credentials.password_file`, for errors found later.
    password_file_line: Option<usize>,
}

impl Config {
    pub fn backend(&self, id: u32) -> Option<&Backend> {
        self.backends.iter().find(|b| b.id == id)
    }

    /// Checks that need the file system. `check_password_file` returns `Err(problem)` when the
    /// password file is unusable (missing, not a file, readable by others).
    pub fn check_files(
        &self,
        check_password_file: impl Fn(&Path) -> Result<(), String>,
    ) -> Result<(), ConfigErrors> {
        match check_password_file(&self.credentials.password_file) {
            Ok(()) => Ok(()),
            Err(problem) => Err(ConfigErrors(vec![ConfigError {
                file: self.file.clone(),
                line: self.password_file_line,
                key: "credentials.password_file".into(),
                problem,
            }])),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw, as written in the file.

/// A duration written as a number of seconds (`10`) or with a unit (`"500ms"`, `"2s"`, `"1m"`),
/// of at most [`MAX_DURATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RawDuration(Duration);

/// The longest duration a setting takes: ten years, far beyond any timeout, and far enough
/// from the clock's range that a deadline (now + the duration) is always a time.
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl V {
            fn bounded<E: de::Error>(
                &self,
                d: Duration,
                unexpected: de::Unexpected,
            ) -> Result<RawDuration, E> {
                if d <= MAX_DURATION {
                    Ok(RawDuration(d))
                } else {
                    Err(E::invalid_value(unexpected, self))
                }
            }
        }
        impl Visitor<'_> for V {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a duration such as \"500ms\", \"10s\" or \"1m\", or a number of seconds, of at most 10 years",
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawDuration, E> {
                let unexpected = de::Unexpected::Signed(v);
                match u64::try_from(v) {
                    Ok(s) => self.bounded(Duration::from_secs(s), unexpected),
                    Err(_) => Err(E::invalid_value(unexpected, &self)),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawDuration, E> {
                self.bounded(Duration::from_secs(v), de::Unexpected::Unsigned(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                let unexpected = de::Unexpected::Str(v);
                match humantime::parse_duration(v) {
                    Ok(d) => self.bounded(d, unexpected),
                    Err(_) => Err(E::invalid_value(unexpected, &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listen: RawListen,
    credentials: RawCredentials,
    #[serde(default)]
    health_check: RawHealthCheck,
    #[serde(default, rename = "backend")]
    backends: Vec<RawBackend>,
    #[serde(default)]
    proxy: proxy::RawProxy,
    #[serde(default)]
    failover: failover::RawFailover,
    #[serde(default)]
    pcp: failover::RawPcp,
    #[serde(default)]
    agent: recovery::RawAgent,
    #[serde(default)]
    recovery: recovery::RawRecovery,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawListen {
    proxy: Option<Spanned<String>>,
    pcp: Option<Spanned<String>>,
    api: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    user: Spanned<String>,
    #[serde(default)]
    database: Option<String>,
    password_file: Spanned<String>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    period: Option<Spanned<RawDuration>>,
    timeout: Option<Spanned<RawDuration>>,
    max_retries: Option<Spanned<u32>>,
    retry_delay: Option<Spanned<RawDuration>>,
    connect_timeout: Option<Spanned<RawDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    id: Spanned<u32>,
    #[serde(default)]
    host: Option<Spanned<String>>,
    port: Spanned<u16>,
    data_dir: Spanned<String>,
    #[serde(default)]
    weight: Option<Spanned<f64>>,
    #[serde(default)]
    failover: Option<FailoverFlag>,
    #[serde(default)]
    application_name: Option<Spanned<String>>,
    #[serde(default)]
    agent: Option<Spanned<String>>,
    #[serde(default)]
    priority: Option<u32>,
    #[serde(default)]
    health_check: Option<RawHealthCheck>,
}

pub const DEFAULT_PROXY: &str = "127.0.0.1:9999";
pub const DEFAULT_PCP: &str = "127.0.0.1:9898";
pub const DEFAULT_API: &str = "127.0.0.1:9900";

/// Parses and validates the text of a configuration file. `file` is the path the text came
/// from: it names the file in errors and is the base for relative paths in it.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
    let lines = LineIndex::new(text);
    let raw: RawConfig = {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e
                .path()
                .to_string()
                .replace(".$__serde_spanned_private_value", "");
            let inner = e.into_inner();
            let line = inner.span().map(|s| lines.line(s.start));
            ConfigErrors(vec![ConfigError {
                file: file.to_path_buf(),
                line,
                key: if key == "." { String::new() } else { key },
                problem: inner.message().trim().to_string(),
            }])
        })?
    };
    validate(raw, file, &lines)
}

struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }
    fn line(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

struct Collector<'a> {
    file: &'a Path,
    lines: &'a LineIndex,
    errors: Vec<ConfigError>,
}

impl Collector<'_> {
    fn push(
        &mut self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        problem: impl Into<String>,
    ) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line: span.map(|s| self.lines.line(s.start)),
            key: key.into(),
            problem: problem.into(),
        });
    }
    fn line_of(&self, span: &Range<usize>) -> usize {
        self.lines.line(span.start)
    }
}

fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.parent().unwrap_or(Path::new(".")).join(p)
    }
}

fn validate(raw: RawConfig, file: &Path, lines: &LineIndex) -> Result<Config, ConfigErrors> {
    let mut c = Collector {
        file,
        lines,
        errors: Vec::new(),
    };

    // listen
    let mut addr = |value: &Option<Spanned<String>>, key: &str, default: &str| -> SocketAddr {
        let (text, span) = match value {
            Some(v) => (v.get_ref().as_str(), Some(v.span())),
            None => (default, None),
        };
        match text.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                c.push(
                    span,
                    format!("listen.{key}"),
                    format!(
                        "{text:?} is not an address; expected IP:PORT, such as \"127.0.0.1:9999\""
                    ),
                );
                // A placeholder that is never used: the configuration is rejected.
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        }
    };
    let listen = Listen {
        proxy: addr(&raw.listen.proxy, "proxy", DEFAULT_PROXY),
        pcp: addr(&raw.listen.pcp, "pcp", DEFAULT_PCP),
        api: addr(&raw.listen.api, "api", DEFAULT_API),
    };
    let listen_spans: [(&str, SocketAddr, Option<Range<usize>>); 3] = [
        (
            "proxy",
            listen.proxy,
            raw.listen.proxy.as_ref().map(|s| s.span()),
        ),
        ("pcp", listen.pcp, raw.listen.pcp.as_ref().map(|s| s.span())),
        ("api", listen.api, raw.listen.api.as_ref().map(|s| s.span())),
    ];
    for i in 0..listen_spans.len() {
        for j in 0..i {
            let (a, aa, _) = &listen_spans[j];
            let (b, ba, bspan) = &listen_spans[i];
            if aa.port() == ba.port()
                && aa.port() != 0
                && (aa.ip() == ba.ip() || aa.ip().is_unspecified() || ba.ip().is_unspecified())
            {
                c.push(
                    bspan.clone(),
                    format!("listen.{b}"),
                    format!("{ba} is also listen.{a}; expected a different port for each listener"),
                );
            }
        }
    }

    // credentials
    if raw.credentials.user.get_ref().trim().is_empty() {
        c.push(Some(raw.credentials.user.span()), "credentials.user", "is empty; expected the PostgreSQL user pgwarden connects as (it needs the pg_monitor role or superuser)");
    }
    if raw.credentials.password_file.get_ref().trim().is_empty() {
        c.push(Some(raw.credentials.password_file.span()), "credentials.password_file", "is empty; expected the path of a password file in libpq's format (host:port:database:user:password)");
    }
    let credentials = Credentials {
        user: raw.credentials.user.get_ref().clone(),
        database: raw
            .credentials
            .database
            .clone()
            .unwrap_or_else(|| "postgres".into()),
        password_file: resolve_path(file, raw.credentials.password_file.get_ref()),
    };
    let password_file_line = Some(c.line_of(&raw.credentials.password_file.span()));

    // health_check defaults
    let global = merge_health_check(
        &mut c,
        "health_check",
        &HealthCheck::default(),
        &raw.health_check,
    );

    // backends
    if raw.backends.is_empty() {
        c.push(None, "backend", "no backend is configured; expected at least one [[backend]] table with id, port and data_dir");
    }
    let mut backends = Vec::with_capacity(raw.backends.len());
    let mut seen_ids: HashMap<u32, usize> = HashMap::new();
    let mut seen_addrs: HashMap<(String, u16), (usize, usize)> = HashMap::new();
    let mut seen_names: HashMap<String, usize> = HashMap::new();
    for (i, b) in raw.backends.iter().enumerate() {
        let key = |field: &str| format!("backend[{i}].{field}");
        let id = *b.id.get_ref();
        if let Some(prev) = seen_ids.insert(id, c.line_of(&b.id.span())) {
            c.push(Some(b.id.span()), key("id"), format!("id {id} is already used by the backend at line {prev}; expected a unique id per backend"));
        }
        let host = b
            .host
            .as_ref()
            .map(|h| h.get_ref().clone())
            .unwrap_or_else(|| "127.0.0.1".into());
        if host.trim().is_empty() {
            c.push(
                b.host.as_ref().map(|h| h.span()),
                key("host"),
                "is empty; expected a host name or IP address",
            );
        }
        let port = *b.port.get_ref();
        if port == 0 {
            c.push(
                Some(b.port.span()),
                key("port"),
                "is 0; expected the TCP port PostgreSQL listens on (1-65535)",
            );
        }
        if let Some((prev_i, prev_line)) =
            seen_addrs.insert((host.clone(), port), (i, c.line_of(&b.port.span())))
        {
            c.push(Some(b.port.span()), key("port"), format!("{host}:{port} is already backend[{prev_i}] (line {prev_line}); expected a different host or port for each backend"));
        }
        let loopback_like = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        for (name, addr, _) in &listen_spans {
            let host_matches = addr.ip().is_unspecified()
                || addr.ip().to_string() == host
                || (loopback_like && addr.ip().is_loopback());
            if addr.port() == port && host_matches {
                c.push(Some(b.port.span()), key("port"), format!("{host}:{port} is also listen.{name}; expected a port that no listener uses"));
            }
        }
        if b.data_dir.get_ref().trim().is_empty() {
            c.push(
                Some(b.data_dir.span()),
                key("data_dir"),
                "is empty; expected the node's PostgreSQL data directory",
            );
        }
        let weight = b.weight.as_ref().map(|w| *w.get_ref()).unwrap_or(1.0);
        if !(weight.is_finite() && weight >= 0.0) {
            c.push(b.weight.as_ref().map(|w| w.span()), key("weight"), format!("{weight} is not allowed; expected a number ≥ 0 (0 = no reads are balanced to this node)"));
        }
        let application_name = match &b.application_name {
            Some(n) => {
                let name = n.get_ref();
                if name.is_empty()
                    || name.len() > 63
                    || !name.chars().all(|ch| ch.is_ascii_graphic())
                {
                    c.push(Some(n.span()), key("application_name"), format!("{name:?} is not allowed; expected 1-63 printable ASCII characters without spaces (PostgreSQL's application_name)"));
                }
                name.clone()
            }
            None => format!("node{id}"),
        };
        if let Some(prev) = seen_names.insert(application_name.clone(), i) {
            c.push(b.application_name.as_ref().map(|n| n.span()).or(Some(b.id.span())), key("application_name"), format!("{application_name:?} is also backend[{prev}]'s; expected a unique application_name per backend"));
        }
        if let Some(a) = &b.agent {
            let ok = a.get_ref().rsplit_once(':').is_some_and(|(h, p)| {
                !h.trim().is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                c.push(Some(a.span()), key("agent"), format!("{:?} is not an address; expected HOST:PORT of the node's `pgwarden agent`, such as \"10.0.0.5:9901\"", a.get_ref()));
            }
        }
        let health_check = match &b.health_check {
            Some(over) => merge_health_check(&mut c, &key("health_check"), &global, over),
            None => global.clone(),
        };
        backends.push(Backend {
            id,
            host,
            port,
            data_dir: resolve_path(file, b.data_dir.get_ref()),
            weight,
            failover: b.failover.unwrap_or_default(),
            application_name,
            agent: b.agent.as_ref().map(|a| a.get_ref().clone()),
            priority: b.priority.unwrap_or(0),
            health_check,
        });
    }

    let proxy = proxy::validate(raw.proxy, file, &mut c);
    let failover = failover::validate(raw.failover, file, &mut c);
    let pcp = failover::validate_pcp(raw.pcp, file, &mut c);
    let agent = recovery::validate_agent(raw.agent, file, &mut c);
    let recovery = recovery::validate(raw.recovery, &mut c);

    if c.errors.is_empty() {
        Ok(Config {
            file: file.to_path_buf(),
            listen,
            credentials,
            backends,
            proxy,
            failover,
            pcp,
            agent,
            recovery,
            password_file_line,
        })
    } else {
        Err(ConfigErrors(c.errors))
    }
}

fn merge_health_check(
    c: &mut Collector,
    prefix: &str,
    base: &HealthCheck,
    raw: &RawHealthCheck,
) -> HealthCheck {
    let dur = |v: &Option<Spanned<RawDuration>>, d: Duration| {
        v.as_ref().map(|s| s.get_ref().0).unwrap_or(d)
    };
    let hc = HealthCheck {
        period: dur(&raw.period, base.period),
        timeout: dur(&raw.timeout, base.timeout),
        max_retries: raw
            .max_retries
            .as_ref()
            .map(|s| *s.get_ref())
            .unwrap_or(base.max_retries),
        retry_delay: dur(&raw.retry_delay, base.retry_delay),
        connect_timeout: dur(&raw.connect_timeout, base.connect_timeout),
    };
    let span = |v: &Option<Spanned<RawDuration>>| v.as_ref().map(|s| s.span());
    // A block reports only the problems its own keys cause: an override that leaves a key out
    // inherits a value already checked where it was written.
    if hc.period.is_zero() && raw.period.is_some() {
        c.push(span(&raw.period), format!("{prefix}.period"), "is 0; expected a period greater than 0 such as \"5s\" (the warden depends on health checks; they cannot be turned off)");
    }
    if hc.timeout.is_zero() && raw.timeout.is_some() {
        c.push(
            span(&raw.timeout),
            format!("{prefix}.timeout"),
            "is 0; expected a timeout greater than 0 such as \"10s\"",
        );
    }
    if hc.connect_timeout.is_zero() && raw.connect_timeout.is_some() {
        c.push(
            span(&raw.connect_timeout),
            format!("{prefix}.connect_timeout"),
            "is 0; expected a timeout greater than 0 such as \"5s\"",
        );
    } else if hc.connect_timeout > hc.timeout
        && (raw.connect_timeout.is_some() || raw.timeout.is_some())
    {
        c.push(
            span(&raw.connect_timeout).or(span(&raw.timeout)),
            format!("{prefix}.connect_timeout"),
            format!(
                "{} is longer than timeout ({}); expected connect_timeout ≤ timeout, since the timeout bounds the whole check",
                humantime::format_duration(hc.connect_timeout),
                humantime::format_duration(hc.timeout)
            ),
        );
    }
    if hc.max_retries > 100 {
        c.push(
            raw.max_retries.as_ref().map(|s| s.span()),
            format!("{prefix}.max_retries"),
            format!("{} is too many; expected at most 100", hc.max_retries),
        );
    }
    hc
}

#[cfg(test)]
mod tests;
