//! The `[proxy]` section: the front door's client authentication, routing and pool limits.

use super::{Collector, RawDuration};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadBalance {
    /// One load-balance node per session, chosen by weight when the session starts (pgpool's
    /// default).
    Session,
    /// A node chosen by weight for every read (pgpool's statement_level_load_balance).
    Statement,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuthMethod {
    #[serde(rename = "trust")]
    Trust,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "reject")]
    Reject,
}

/// An address range: `all`, an address, or address/prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressMatch {
    All,
    Net { addr: IpAddr, prefix: u8 },
}

impl AddressMatch {
    pub fn parse(s: &str) -> Option<AddressMatch> {
        if s == "all" {
            return Some(AddressMatch::All);
        }
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a = s.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(AddressMatch::Net { addr, prefix })
    }

    pub fn matches(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self, ip) {
            (AddressMatch::All, _) => true,
            (
                AddressMatch::Net {
                    addr: IpAddr::V4(net),
                    prefix,
                },
                IpAddr::V4(ip),
            ) => {
                let mask = if *prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - prefix)
                };
                u32::from(*net) & mask == u32::from(ip) & mask
            }
            (
                AddressMatch::Net {
                    addr: IpAddr::V6(net),
                    prefix,
                },
                IpAddr::V6(ip),
            ) => {
                let mask = if *prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - prefix)
                };
                u128::from(*net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Which connections a rule is for, by pg_hba.conf's names: any TCP connection (`host`), only
/// those encrypted with TLS (`hostssl`), only those that are not (`hostnossl`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionType {
    #[default]
    Host,
    HostSsl,
    HostNoSsl,
}

/// One client-authentication rule, like a line of pg_hba.conf. The first match decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaRule {
    pub connection: ConnectionType,
    /// `None` matches every database.
    pub databases: Option<Vec<String>>,
    /// `None` matches every user.
    pub users: Option<Vec<String>>,
    pub address: AddressMatch,
    pub method: AuthMethod,
}

impl HbaRule {
    /// Whether the rule is for this connection: `tls`, whether it is encrypted. Among the
    /// databases, `sameuser` is the user's own (as in pg_hba.conf); `replication` matches
    /// nothing, pgwarden takes no replication connection.
    pub fn matches(&self, database: &str, user: &str, ip: IpAddr, tls: bool) -> bool {
        let database_ok = self.databases.as_ref().is_none_or(|l| {
            l.iter().any(|x| match x.as_str() {
                "sameuser" => database == user,
                "replication" => false,
                x => x == database,
            })
        });
        let user_ok = self
            .users
            .as_ref()
            .is_none_or(|l| l.iter().any(|x| x == user));
        let connection = match self.connection {
            ConnectionType::Host => true,
            ConnectionType::HostSsl => tls,
            ConnectionType::HostNoSsl => !tls,
        };
        connection && database_ok && user_ok && self.address.matches(ip)
    }
}

/// The method for a connection: the first matching rule's, or `None` when no rule matches
/// (the connection is refused, as PostgreSQL refuses one without a pg_hba.conf entry).
pub fn auth_method(
    rules: &[HbaRule],
    database: &str,
    user: &str,
    ip: IpAddr,
    tls: bool,
) -> Option<AuthMethod> {
    rules
        .iter()
        .find(|r| r.matches(database, user, ip, tls))
        .map(|r| r.method)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    /// Client passwords in pgpool's pool_passwd format (`user:md5…`, `user:SCRAM-SHA-256$…`,
    /// `user:TEXT…` or plain). `None`: clients are checked against `credentials.password_file`.
    pub pool_passwd: Option<PathBuf>,
    /// pgpool's key for pool_passwd's AES entries (`pg_enc -k`). `None`: as pgpool looks for
    /// it, `$PGPOOLKEYFILE`, else `~/.pgpoolkey`, when an AES entry needs it.
    pub pool_key: Option<PathBuf>,
    pub hba: Vec<HbaRule>,
    pub load_balance: LoadBalance,
    /// A standby this many bytes or more behind the primary gets no reads. `None`: no limit.
    pub delay_threshold: Option<u64>,
    pub read_only_functions: Vec<String>,
    pub write_functions: Vec<String>,
    pub max_client_connections: usize,
    /// Backend connections per node, all users and databases together.
    pub pool_size: usize,
    /// How long a session waits for a backend connection when the pool is full.
    pub pool_wait_timeout: Duration,
    /// Idle pooled backend connections are closed after this long.
    pub idle_timeout: Duration,
    pub max_message_size: usize,
    /// Time a client has to complete its startup and authentication.
    pub auth_timeout: Duration,
    pub tls: Option<Tls>,
    /// While there is no primary (a failover or switchover under way), how long a write waits
    /// for the new one before it fails.
    pub primary_wait: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            pool_passwd: None,
            pool_key: None,
            hba: vec![HbaRule {
                connection: ConnectionType::Host,
                databases: None,
                users: None,
                address: AddressMatch::All,
                method: AuthMethod::ScramSha256,
            }],
            load_balance: LoadBalance::Session,
            delay_threshold: None,
            read_only_functions: Vec::new(),
            write_functions: Vec::new(),
            max_client_connections: 10_000,
            pool_size: 50,
            pool_wait_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
            max_message_size: 64 * 1024 * 1024,
            auth_timeout: Duration::from_secs(10),
            tls: None,
            primary_wait: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    pool_passwd: Option<String>,
    pool_key: Option<String>,
    #[serde(default)]
    hba: Option<Vec<RawHba>>,
    load_balance: Option<LoadBalance>,
    delay_threshold: Option<Spanned<i64>>,
    #[serde(default)]
    read_only_functions: Vec<String>,
    #[serde(default)]
    write_functions: Vec<String>,
    max_client_connections: Option<Spanned<i64>>,
    pool_size: Option<Spanned<i64>>,
    pool_wait_timeout: Option<RawDuration>,
    idle_timeout: Option<RawDuration>,
    max_message_size: Option<Spanned<i64>>,
    auth_timeout: Option<Spanned<RawDuration>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    primary_wait: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHba {
    #[serde(default, rename = "type")]
    connection: Option<Spanned<ConnectionType>>,
    #[serde(default)]
    database: Option<StringOrList>,
    #[serde(default)]
    user: Option<StringOrList>,
    #[serde(default)]
    address: Option<Spanned<String>>,
    method: AuthMethod,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    /// `None` for "all". As in pg_hba.conf, a string may list names separated by commas.
    fn into_list(self) -> Option<Vec<String>> {
        let l: Vec<String> = match self {
            StringOrList::One(s) => vec![s],
            StringOrList::Many(v) => v,
        }
        .iter()
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().to_string())
        .collect();
        (!l.iter().any(|s| s == "all")).then_some(l)
    }
}

/// What pg_hba.conf's special words in a rule's `database` or `user` would need that pgwarden
/// does not have (role membership, included files): the reason, for the configuration error.
fn unsupported_hba_word(key: &str, name: &str) -> Option<&'static str> {
    match (key, name) {
        (_, "") => Some("an empty name matches nothing; expected a name, a list of names or \"all\""),
        ("database", "samerole" | "samegroup") => Some(
            "pg_hba.conf's samerole (a member of the role named as the database) needs role membership, which pgwarden does not read; expected database names, \"all\" or \"sameuser\"",
        ),
        ("user", n) if n.starts_with('+') => Some(
            "pg_hba.conf's +role (members of a role) needs role membership, which pgwarden does not read; expected user names or \"all\"",
        ),
        (_, n) if n.starts_with('@') => Some(
            "pg_hba.conf's @file (names read from a file) is not supported; expected the names themselves, as a list",
        ),
        _ => None,
    }
}

pub(super) fn validate(raw: RawProxy, file: &Path, c: &mut Collector) -> ProxyConfig {
    let d = ProxyConfig::default();
    let mut positive = |v: &Option<Spanned<i64>>, key: &str, default: usize, what: &str| -> usize {
        match v {
            None => default,
            Some(s) if *s.get_ref() > 0 => *s.get_ref() as usize,
            Some(s) => {
                c.push(
                    Some(s.span()),
                    format!("proxy.{key}"),
                    format!("{} is not allowed; expected {what}", s.get_ref()),
                );
                default
            }
        }
    };
    let max_client_connections = positive(
        &raw.max_client_connections,
        "max_client_connections",
        d.max_client_connections,
        "a number of connections greater than 0",
    );
    let pool_size = positive(
        &raw.pool_size,
        "pool_size",
        d.pool_size,
        "a number of backend connections per node greater than 0",
    );
    let max_message_size = positive(
        &raw.max_message_size,
        "max_message_size",
        d.max_message_size,
        "a size in bytes greater than 0",
    );
    let delay_threshold = match &raw.delay_threshold {
        None => None,
        Some(s) if *s.get_ref() == 0 => None,
        Some(s) if *s.get_ref() > 0 => Some(*s.get_ref() as u64),
        Some(s) => {
            c.push(
                Some(s.span()),
                "proxy.delay_threshold",
                format!(
                    "{} is not allowed; expected a number of bytes (0 = no limit)",
                    s.get_ref()
                ),
            );
            None
        }
    };
    let auth_timeout = match &raw.auth_timeout {
        Some(s) if s.get_ref().0.is_zero() => {
            c.push(
                Some(s.span()),
                "proxy.auth_timeout",
                "is 0; expected a timeout greater than 0 such as \"10s\"",
            );
            d.auth_timeout
        }
        Some(s) => s.get_ref().0,
        None => d.auth_timeout,
    };
    let hba = match raw.hba {
        None => d.hba.clone(),
        Some(rules) => rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let address = match &r.address {
                    None => AddressMatch::All,
                    Some(a) => AddressMatch::parse(a.get_ref()).unwrap_or_else(|| {
                        c.push(Some(a.span()), format!("proxy.hba[{i}].address"), format!("{:?} is not an address range; expected \"all\", an IP address, or address/prefix such as \"10.0.0.0/8\"", a.get_ref()));
                        AddressMatch::All
                    }),
                };
                let connection = r.connection.map(|t| {
                    if *t.get_ref() == ConnectionType::HostSsl
                        && (raw.tls_cert.is_none() || raw.tls_key.is_none())
                    {
                        c.push(
                            Some(t.span()),
                            format!("proxy.hba[{i}].type"),
                            "hostssl matches only TLS connections, and pgwarden offers none; expected proxy.tls_cert and proxy.tls_key to be set, or type \"host\"",
                        );
                    }
                    *t.get_ref()
                });
                let databases = r.database.and_then(StringOrList::into_list);
                let users = r.user.and_then(StringOrList::into_list);
                for (key, list) in [("database", &databases), ("user", &users)] {
                    for name in list.iter().flatten() {
                        if let Some(why) = unsupported_hba_word(key, name) {
                            c.push(None, format!("proxy.hba[{i}].{key}"), format!("{name:?}: {why}"));
                        }
                    }
                }
                HbaRule {
                    connection: connection.unwrap_or_default(),
                    databases,
                    users,
                    address,
                    method: r.method,
                }
            })
            .collect(),
    };
    let tls = match (&raw.tls_cert, &raw.tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(Tls {
            cert: super::resolve_path(file, cert.get_ref()),
            key: super::resolve_path(file, key.get_ref()),
        }),
        (Some(s), None) | (None, Some(s)) => {
            c.push(
                Some(s.span()),
                "proxy.tls_cert",
                "tls_cert and tls_key go together; expected both (PEM files) or neither",
            );
            None
        }
    };
    ProxyConfig {
        pool_passwd: raw
            .pool_passwd
            .as_deref()
            .map(|p| super::resolve_path(file, p)),
        pool_key: raw
            .pool_key
            .as_deref()
            .map(|p| super::resolve_path(file, p)),
        hba,
        load_balance: raw.load_balance.unwrap_or(d.load_balance),
        delay_threshold,
        read_only_functions: raw.read_only_functions,
        write_functions: raw.write_functions,
        max_client_connections,
        pool_size,
        pool_wait_timeout: raw.pool_wait_timeout.map_or(d.pool_wait_timeout, |x| x.0),
        idle_timeout: raw.idle_timeout.map_or(d.idle_timeout, |x| x.0),
        max_message_size,
        auth_timeout,
        tls,
        primary_wait: raw.primary_wait.map_or(d.primary_wait, |x| x.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_ranges() {
        let cases = [
            ("all", "10.1.2.3", true),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("10.0.0.0/8", "10.200.1.1", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("0.0.0.0/0", "8.8.8.8", true),
            ("::1/128", "::1", true),
            ("127.0.0.0/8", "::ffff:127.0.0.5", true),
            ("10.0.0.0/8", "::1", false),
        ];
        for (range, ip, want) in cases {
            let m = AddressMatch::parse(range).unwrap();
            assert_eq!(m.matches(ip.parse().unwrap()), want, "{range} {ip}");
        }
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::1/129"] {
            assert!(AddressMatch::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let rule =
            |connection, db: Option<&[&str]>, user: Option<&[&str]>, addr: &str, method| HbaRule {
                connection,
                databases: db.map(|d| d.iter().map(|s| s.to_string()).collect()),
                users: user.map(|d| d.iter().map(|s| s.to_string()).collect()),
                address: AddressMatch::parse(addr).unwrap(),
                method,
            };
        use ConnectionType::{Host, HostNoSsl, HostSsl};
        let rules = [
            rule(
                Host,
                Some(&["test"]),
                Some(&["app"]),
                "127.0.0.1",
                AuthMethod::Trust,
            ),
            rule(Host, None, Some(&["evil"]), "all", AuthMethod::Reject),
            // Payroll over TLS only; the reporting user without TLS only.
            rule(
                HostSsl,
                Some(&["payroll"]),
                None,
                "all",
                AuthMethod::ScramSha256,
            ),
            rule(Host, Some(&["payroll"]), None, "all", AuthMethod::Reject),
            rule(HostNoSsl, None, Some(&["report"]), "all", AuthMethod::Md5),
            rule(Host, None, None, "10.0.0.0/8", AuthMethod::Md5),
            rule(Host, None, None, "127.0.0.0/8", AuthMethod::ScramSha256),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let table = [
            ("test", "app", "127.0.0.1", false, Some(AuthMethod::Trust)),
            ("test", "app", "127.0.0.1", true, Some(AuthMethod::Trust)),
            (
                "other",
                "app",
                "127.0.0.1",
                false,
                Some(AuthMethod::ScramSha256),
            ),
            ("test", "evil", "127.0.0.1", true, Some(AuthMethod::Reject)),
            ("test", "bob", "10.9.9.9", false, Some(AuthMethod::Md5)),
            ("test", "bob", "192.168.1.1", false, None),
            (
                "payroll",
                "bob",
                "10.9.9.9",
                true,
                Some(AuthMethod::ScramSha256),
            ),
            (
                "payroll",
                "bob",
                "10.9.9.9",
                false,
                Some(AuthMethod::Reject),
            ),
            (
                "test",
                "report",
                "192.168.1.1",
                false,
                Some(AuthMethod::Md5),
            ),
            ("test", "report", "192.168.1.1", true, None),
            (
                "test",
                "report",
                "127.0.0.1",
                true,
                Some(AuthMethod::ScramSha256),
            ),
        ];
        for (db, user, addr, tls, want) in table {
            assert_eq!(
                auth_method(&rules, db, user, ip(addr), tls),
                want,
                "{db} {user} {addr} tls={tls}"
            );
        }
    }
}
