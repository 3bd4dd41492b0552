use super::*;

const GOOD: &str = r#"
[listen]
proxy = "127.0.0.1:11000"
pcp = "127.0.0.1:11001"
api = "127.0.0.1:11100"

[credentials]
user = "postgres"
password_file = "pgpass"

[health_check]
period = "1s"
timeout = "3s"
max_retries = 2
retry_delay = "500ms"
connect_timeout = 2

[[backend]]
id = 0
port = 11002
data_dir = "data0"

[[backend]]
id = 1
host = "localhost"
port = 11003
data_dir = "/srv/pg/data1"
weight = 2.5
failover = "disallow"
application_name = "standby_one"

[backend.health_check]
period = "10s"
"#;

fn errors(text: &str) -> Vec<String> {
    match parse(text, Path::new("/etc/pgwarden/pgwarden.toml")) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn good_config() {
    let cfg = parse(GOOD, Path::new("/etc/pgwarden/pgwarden.toml")).unwrap();
    assert_eq!(cfg.listen.api.port(), 11100);
    assert_eq!(
        cfg.credentials.password_file,
        Path::new("/etc/pgwarden/pgpass")
    );
    assert_eq!(cfg.credentials.database, "postgres");
    let b0 = cfg.backend(0).unwrap();
    assert_eq!(b0.host, "127.0.0.1");
    assert_eq!(b0.data_dir, Path::new("/etc/pgwarden/data0"));
    assert_eq!(b0.application_name, "node0");
    assert_eq!(b0.failover, FailoverFlag::Allow);
    assert_eq!(b0.weight, 1.0);
    assert_eq!(b0.health_check.period, Duration::from_secs(1));
    assert_eq!(b0.health_check.retry_delay, Duration::from_millis(500));
    assert_eq!(b0.health_check.connect_timeout, Duration::from_secs(2));
    let b1 = cfg.backend(1).unwrap();
    assert_eq!(b1.failover, FailoverFlag::Disallow);
    assert_eq!(b1.application_name, "standby_one");
    // the per-node override changes only what it names
    assert_eq!(b1.health_check.period, Duration::from_secs(10));
    assert_eq!(b1.health_check.timeout, Duration::from_secs(3));
    assert!(cfg.backend(7).is_none());
}

#[test]
fn defaults_when_sections_are_missing() {
    let cfg = parse(
        "[credentials]\nuser='u'\npassword_file='/p'\n[[backend]]\nid=3\nport=5432\ndata_dir='/d'\n",
        Path::new("x.toml"),
    )
    .unwrap();
    assert_eq!(cfg.listen.proxy.to_string(), DEFAULT_PROXY);
    assert_eq!(cfg.backends[0].health_check, HealthCheck::default());
    assert_eq!(cfg.backends[0].application_name, "node3");
}

/// pgpool's values for `client_idle_limit_in_recovery` as well as durations: 0 waits for every
/// session, -1 closes idle ones at once.
#[test]
fn idle_limit_in_recovery_takes_pgpools_values() {
    let limit = |v: &str| {
        parse(
            &format!("{GOOD}\n[recovery]\nclient_idle_limit_in_recovery = {v}\n"),
            Path::new("x.toml"),
        )
        .unwrap()
        .recovery
        .client_idle_limit
    };
    assert_eq!(limit("30"), Duration::from_secs(30));
    assert_eq!(limit("\"500ms\""), Duration::from_millis(500));
    assert_eq!(limit("0"), Duration::ZERO);
    assert_eq!(limit("-1"), RecoveryConfig::IDLE_AT_ONCE);
    assert_eq!(limit("\"-1\""), RecoveryConfig::IDLE_AT_ONCE);
    let default = parse(GOOD, Path::new("x.toml")).unwrap();
    assert_eq!(default.recovery.client_idle_limit, Duration::ZERO);
}

/// Each broken file, and the exact message a user reads.
#[test]
fn broken_configs_name_file_line_key_and_expectation() {
    let cases: &[(&str, String, &str)] = &[
        (
            "unknown top-level key",
            "helth_check = 1\n".into(),
            "/etc/pgwarden/pgwarden.toml:1: helth_check: unknown field `helth_check`, expected one of `listen`, `credentials`, `health_check`, `backend`, `proxy`, `failover`, `pcp`, `agent`, `recovery`",
        ),
        (
            "unknown backend key",
            GOOD.replace("weight = 2.5", "wieght = 2.5"),
            "/etc/pgwarden/pgwarden.toml:28: backend[1].wieght: unknown field `wieght`, expected one of `id`, `host`, `port`, `data_dir`, `weight`, `failover`, `application_name`, `agent`, `priority`, `health_check`",
        ),
        (
            "wrong type",
            GOOD.replace("port = 11003", "port = \"11003\""),
            "/etc/pgwarden/pgwarden.toml:26: backend[1].port: invalid type: string \"11003\", expected u16",
        ),
        (
            "port out of range",
            GOOD.replace("port = 11003", "port = 70000"),
            "/etc/pgwarden/pgwarden.toml:26: backend[1].port: invalid value: integer `70000`, expected u16",
        ),
        (
            "bad duration",
            GOOD.replace("timeout = \"3s\"", "timeout = \"3 parsecs\""),
            "/etc/pgwarden/pgwarden.toml:13: health_check.timeout: invalid value: string \"3 parsecs\", expected a duration such as \"500ms\", \"10s\" or \"1m\", or a number of seconds, of at most 10 years",
        ),
        (
            // (A deadline that far away is no time the clock can hold: it panicked.)
            "a duration beyond any clock",
            format!("{GOOD}\n[proxy]\npool_wait_timeout = \"1000000y\"\n"),
            "LINE: proxy.pool_wait_timeout: invalid value: string \"1000000y\", expected a duration such as \"500ms\", \"10s\" or \"1m\", or a number of seconds, of at most 10 years",
        ),
        (
            "a number of seconds beyond any clock",
            format!("{GOOD}\n[proxy]\nidle_timeout = 9223372036854775807\n"),
            "LINE: proxy.idle_timeout: invalid value: integer `9223372036854775807`, expected a duration such as \"500ms\", \"10s\" or \"1m\", or a number of seconds, of at most 10 years",
        ),
        (
            "bad failover flag",
            GOOD.replace("failover = \"disallow\"", "failover = \"DISALLOW_TO_FAILOVER\""),
            "/etc/pgwarden/pgwarden.toml:29: backend[1].failover: unknown variant `DISALLOW_TO_FAILOVER`, expected `allow` or `disallow`",
        ),
        (
            "duplicate id",
            GOOD.replace("id = 1", "id = 0"),
            "/etc/pgwarden/pgwarden.toml:24: backend[1].id: id 0 is already used by the backend at line 19; expected a unique id per backend",
        ),
        (
            "duplicate port",
            GOOD.replace("host = \"localhost\"\nport = 11003", "port = 11002"),
            "/etc/pgwarden/pgwarden.toml:25: backend[1].port: 127.0.0.1:11002 is already backend[0] (line 20); expected a different host or port for each backend",
        ),
        (
            "backend on a listener's port",
            GOOD.replace("port = 11002", "port = 11001"),
            "/etc/pgwarden/pgwarden.toml:20: backend[0].port: 127.0.0.1:11001 is also listen.pcp; expected a port that no listener uses",
        ),
        (
            "two listeners on one port",
            GOOD.replace("api = \"127.0.0.1:11100\"", "api = \"0.0.0.0:11000\""),
            "/etc/pgwarden/pgwarden.toml:5: listen.api: 0.0.0.0:11000 is also listen.proxy; expected a different port for each listener",
        ),
        (
            "listener not an address",
            GOOD.replace("proxy = \"127.0.0.1:11000\"", "proxy = \"localhost\""),
            "/etc/pgwarden/pgwarden.toml:3: listen.proxy: \"localhost\" is not an address; expected IP:PORT, such as \"127.0.0.1:9999\"",
        ),
        (
            "connect timeout longer than timeout",
            GOOD.replace("connect_timeout = 2", "connect_timeout = 5"),
            "/etc/pgwarden/pgwarden.toml:16: health_check.connect_timeout: 5s is longer than timeout (3s); expected connect_timeout ≤ timeout, since the timeout bounds the whole check",
        ),
        (
            "zero period in an override",
            GOOD.replace("period = \"10s\"", "period = 0"),
            "/etc/pgwarden/pgwarden.toml:33: backend[1].health_check.period: is 0; expected a period greater than 0 such as \"5s\" (the warden depends on health checks; they cannot be turned off)",
        ),
        (
            "negative weight",
            GOOD.replace("weight = 2.5", "weight = -1.0"),
            "/etc/pgwarden/pgwarden.toml:28: backend[1].weight: -1 is not allowed; expected a number ≥ 0 (0 = no reads are balanced to this node)",
        ),
        (
            "agent address without a port",
            GOOD.replace("weight = 2.5", "weight = 2.5\nagent = \"db1\""),
            "/etc/pgwarden/pgwarden.toml:29: backend[1].agent: \"db1\" is not an address; expected HOST:PORT of the node's `pgwarden agent`, such as \"10.0.0.5:9901\"",
        ),
        (
            "recovery_timeout of 0",
            format!("{GOOD}\n[recovery]\nrecovery_timeout = 0\n"),
            "LINE: recovery.recovery_timeout: is 0; expected a duration greater than 0 such as \"90s\"",
        ),
        (
            "a negative idle limit other than pgpool's -1",
            format!("{GOOD}\n[recovery]\nclient_idle_limit_in_recovery = -5\n"),
            "LINE: recovery.client_idle_limit_in_recovery: -5 is not allowed; expected a duration such as \"30s\" or a number of seconds, 0 (no session is closed: all are waited for) or -1 (idle sessions are closed at once, as in pgpool)",
        ),
        (
            "an idle limit that is no duration",
            format!("{GOOD}\n[recovery]\nclient_idle_limit_in_recovery = \"soon\"\n"),
            "LINE: recovery.client_idle_limit_in_recovery: \"soon\" is not allowed; expected a duration such as \"30s\" or a number of seconds, 0 (no session is closed: all are waited for) or -1 (idle sessions are closed at once, as in pgpool)",
        ),
        (
            "unknown recovery key",
            format!("{GOOD}\n[recovery]\nrecovery_first_stage = 'x'\n"),
            "LINE: recovery.recovery_first_stage: unknown field `recovery_first_stage`, expected one of `recovery_1st_stage_command`, `recovery_2nd_stage_command`, `remote_start_command`, `recovery_timeout`, `client_idle_limit_in_recovery`, `auto`, `auto_max_backoff`",
        ),
        (
            "missing credentials",
            "[[backend]]\nid = 0\nport = 5432\ndata_dir = '/d'\n".into(),
            "/etc/pgwarden/pgwarden.toml:1: missing field `credentials`",
        ),
        (
            "no backend",
            "[credentials]\nuser = 'u'\npassword_file = 'p'\n".into(),
            "/etc/pgwarden/pgwarden.toml: backend: no backend is configured; expected at least one [[backend]] table with id, port and data_dir",
        ),
        (
            "not TOML at all",
            "this is not toml".into(),
            "/etc/pgwarden/pgwarden.toml:1: expected `.`, `=`",
        ),
    ];
    let mut wrong = Vec::new();
    for (what, text, want) in cases {
        // LINE: the last line of the text (a section appended to GOOD).
        let want = &want.replace(
            "LINE",
            &format!(
                "/etc/pgwarden/pgwarden.toml:{}",
                text.trim_end().lines().count()
            ),
        );
        let got = errors(text);
        if got.len() != 1 || got[0] != *want {
            wrong.push(format!("{what}:\n  want: {want}\n  got:  {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = GOOD
        .replace("id = 1", "id = 0")
        .replace("weight = 2.5", "weight = -2.0");
    let got = errors(&text);
    assert_eq!(got.len(), 2, "{got:#?}");
}

#[test]
fn password_file_check_points_at_its_line() {
    let cfg = parse(GOOD, Path::new("/etc/pgwarden/pgwarden.toml")).unwrap();
    let err = cfg
        .check_files(|p| Err(format!("{} is missing", p.display())))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/pgwarden/pgwarden.toml:9: credentials.password_file: /etc/pgwarden/pgpass is missing"
    );
    assert!(cfg.check_files(|_| Ok(())).is_ok());
}

#[test]
fn worst_case_detection() {
    let hc = HealthCheck {
        period: Duration::from_secs(1),
        timeout: Duration::from_secs(3),
        max_retries: 2,
        retry_delay: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(2),
    };
    assert_eq!(hc.worst_case_detection(), Duration::from_secs(11));
}

#[test]
fn proxy_section() {
    let text = format!(
        "{GOOD}\n[proxy]\npool_passwd = \"pool_passwd\"\nload_balance = \"statement\"\ndelay_threshold = 1048576\npool_size = 7\nread_only_functions = [\"my_report\"]\n\n[[proxy.hba]]\ndatabase = \"test\"\nuser = [\"a\", \"b\"]\naddress = \"127.0.0.1/32\"\nmethod = \"md5\"\n"
    );
    let cfg = parse(&text, Path::new("/etc/pgwarden/pgwarden.toml")).unwrap();
    let p = &cfg.proxy;
    assert_eq!(
        p.pool_passwd.as_deref(),
        Some(Path::new("/etc/pgwarden/pool_passwd"))
    );
    assert_eq!(p.load_balance, LoadBalance::Statement);
    assert_eq!(p.delay_threshold, Some(1048576));
    assert_eq!(p.pool_size, 7);
    assert_eq!(p.read_only_functions, ["my_report"]);
    assert_eq!(p.hba.len(), 1);
    assert_eq!(p.hba[0].method, AuthMethod::Md5);
    assert_eq!(
        p.hba[0].users.as_deref(),
        Some(&["a".to_string(), "b".to_string()][..])
    );
    // defaults
    let d = parse(GOOD, Path::new("/x.toml")).unwrap().proxy;
    assert_eq!(d, ProxyConfig::default());

    let bad = format!("{GOOD}\n[proxy]\npool_size = 0\ntls_cert = \"c.pem\"\n[[proxy.hba]]\naddress = \"10.0.0.0/99\"\nmethod = \"scram-sha-256\"\n");
    let got = errors(&bad);
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(
        got[0].contains("proxy.pool_size: 0 is not allowed"),
        "{got:#?}"
    );
    assert!(
        got.iter().any(|e| e.contains("proxy.hba[0].address")),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|e| e.contains("tls_cert and tls_key go together")),
        "{got:#?}"
    );
    // pg_hba.conf's lists and special words: commas in a string, `sameuser`; those needing
    // role membership or a file are refused, naming the rule.
    let text = format!(
        "{GOOD}\n[[proxy.hba]]\ndatabase = \"postgres, payroll\"\nuser = \"plainu\"\nmethod = \"reject\"\n\
         [[proxy.hba]]\ndatabase = \"sameuser\"\nmethod = \"trust\"\n\
         [[proxy.hba]]\nmethod = \"scram-sha-256\"\n"
    );
    let hba = parse(&text, Path::new("/x.toml")).unwrap().proxy.hba;
    let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let method =
        |db: &str, user: &str| crate::config::proxy::auth_method(&hba, db, user, ip, false);
    assert_eq!(method("payroll", "plainu"), Some(AuthMethod::Reject));
    assert_eq!(method("postgres", "plainu"), Some(AuthMethod::Reject));
    assert_eq!(method("textu", "textu"), Some(AuthMethod::Trust));
    assert_eq!(method("other", "textu"), Some(AuthMethod::ScramSha256));
    for (key, value, want) in [
        (
            "database",
            "samerole",
            "proxy.hba[0].database: \"samerole\": pg_hba.conf's samerole",
        ),
        (
            "database",
            "samegroup",
            "proxy.hba[0].database: \"samegroup\"",
        ),
        (
            "user",
            "+admins",
            "proxy.hba[0].user: \"+admins\": pg_hba.conf's +role",
        ),
        (
            "user",
            "@users.txt",
            "proxy.hba[0].user: \"@users.txt\": pg_hba.conf's @file",
        ),
        (
            "database",
            "",
            "proxy.hba[0].database: \"\": an empty name matches nothing",
        ),
        (
            "user",
            "a,,b",
            "proxy.hba[0].user: \"\": an empty name matches nothing",
        ),
    ] {
        let bad = format!("{GOOD}\n[[proxy.hba]]\n{key} = \"{value}\"\nmethod = \"reject\"\n");
        let got = errors(&bad);
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(got[0].contains(want), "{got:#?}");
    }
    // hostssl without TLS could never match.
    let bad = format!("{GOOD}\n[[proxy.hba]]\ntype = \"hostssl\"\nmethod = \"scram-sha-256\"\n");
    let got = errors(&bad);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].ends_with("proxy.hba[0].type: hostssl matches only TLS connections, and pgwarden offers none; expected proxy.tls_cert and proxy.tls_key to be set, or type \"host\""),
        "{got:#?}"
    );
    let bad = format!("{GOOD}\n[[proxy.hba]]\ntype = \"hostgssenc\"\nmethod = \"trust\"\n");
    assert!(
        errors(&bad)[0].contains(
            "unknown variant `hostgssenc`, expected one of `host`, `hostssl`, `hostnossl`"
        ),
        "{:?}",
        errors(&bad)
    );
    let bad = format!("{GOOD}\n[[proxy.hba]]\nmethod = \"password\"\n");
    assert!(
        errors(&bad)[0].contains("unknown variant `password`"),
        "{:?}",
        errors(&bad)
    );
}
