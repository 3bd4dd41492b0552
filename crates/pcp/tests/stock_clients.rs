//! The PCP server against the real `pcp_*` tools of pgpool-II 4.3 (Debian's `pgpool2`), and
//! against raw sockets for what no well-behaved client sends.
//!
//! The handler is a test double standing in for the warden; the server and the tools are
//! real. A tool missing from /usr/sbin skips its case with a note.

use chrono::{DateTime, Local};
use md5::{Digest, Md5};
use pgwarden_core::config::FailoverFlag;
use pgwarden_core::node::{HealthStats, LiveStatus, NodeStatus, Role};
use pgwarden_pcp::{
    serve, NodeInfoLayout, NodeView, PcpError, PcpHandler, PcpUsers, ServerOptions, StopMode,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

const USER: &str = "admin";
const PASSWORD: &str = "secret";

struct TestHandler {
    nodes: Vec<NodeView>,
    calls: Mutex<Vec<String>>,
}

impl TestHandler {
    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl PcpHandler for TestHandler {
    fn nodes(&self) -> Vec<NodeView> {
        self.nodes.clone()
    }

    fn pool_status(&self) -> Vec<(String, String, String)> {
        vec![
            (
                "listen_addresses".into(),
                "*".into(),
                "host name(s) or IP address(es) to listen on".into(),
            ),
            (
                "port".into(),
                "9999".into(),
                "pgpool accepting port number".into(),
            ),
        ]
    }

    async fn attach(&self, id: u32) -> Result<(), PcpError> {
        self.record(format!("attach {id}"));
        Ok(())
    }

    async fn detach(&self, id: u32, graceful: bool) -> Result<(), PcpError> {
        self.record(format!("detach {id} graceful={graceful}"));
        Ok(())
    }

    async fn promote(&self, id: u32, switchover: bool) -> Result<(), PcpError> {
        self.record(format!("promote {id} switchover={switchover}"));
        Ok(())
    }

    async fn recover(&self, id: u32) -> Result<(), PcpError> {
        self.record(format!("recover {id}"));
        Err(PcpError::with_detail(
            "process recovery request failed",
            format!("recovery_1st_stage_command failed on node {id}"),
        ))
    }

    async fn reload(&self) -> Result<(), PcpError> {
        self.record("reload".into());
        Ok(())
    }

    fn stop(&self, mode: StopMode) {
        self.record(format!("stop {mode:?}"));
    }
}

fn node(id: u32, role: Role, status: NodeStatus, lag: Option<u64>, changed: i64) -> NodeView {
    NodeView {
        id,
        host: "127.0.0.1".into(),
        port: 11002 + id as u16,
        data_dir: format!("/tmp/data{id}"),
        weight: 1.0,
        failover: FailoverFlag::Allow,
        application_name: format!("node{id}"),
        status,
        last_status_change: DateTime::from_timestamp(changed, 0).unwrap(),
        pg_status: if status == NodeStatus::Down {
            LiveStatus::Down
        } else {
            LiveStatus::Up
        },
        role,
        pg_role: if status == NodeStatus::Down {
            Role::Unknown
        } else {
            role
        },
        timeline: Some(1),
        current_lsn: None,
        receive_lsn: None,
        replay_lsn: None,
        lag_bytes: lag,
        receive_lag_bytes: lag,
        replication_state: lag.map(|_| "streaming".into()),
        sync_state: lag.map(|_| "async".into()),
        server_version: Some("16.4".into()),
        observed_at: None,
        asked_at: None,
        last_error: None,
        status_reason: String::new(),
        health_check: HealthStats::default(),
    }
}

fn three_nodes() -> Vec<NodeView> {
    let mut standby = node(1, Role::Standby, NodeStatus::Up, Some(2048), 1_700_000_100);
    let h = &mut standby.health_check;
    h.total_count = 12;
    h.success_count = 11;
    h.fail_count = 1;
    h.retry_count = 2;
    h.max_retry_count = 2;
    h.average_retry_count = 2.0 / 12.0;
    h.min_duration_ms = Some(3);
    h.max_duration_ms = Some(2007);
    h.average_duration_ms = 170.5;
    h.last_health_check = DateTime::from_timestamp(1_700_000_500, 0);
    h.last_successful_health_check = DateTime::from_timestamp(1_700_000_500, 0);
    h.last_failed_health_check = DateTime::from_timestamp(1_700_000_200, 0);
    vec![
        node(0, Role::Primary, NodeStatus::Up, None, 1_700_000_000),
        standby,
        node(2, Role::Standby, NodeStatus::Down, None, 1_700_000_300),
    ]
}

/// `YYYY-MM-DD HH:MM:SS` in local time, as the tools print an epoch.
fn local(epoch: i64) -> String {
    DateTime::from_timestamp(epoch, 0)
        .unwrap()
        .with_timezone(&Local)
        .format("%F %T")
        .to_string()
}

struct Server {
    port: u16,
    handler: Arc<TestHandler>,
    dir: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
}

fn start(opts: ServerOptions) -> Server {
    let md5 = format!("{:x}", Md5::digest(PASSWORD.as_bytes()));
    let users = PcpUsers::parse(&format!("# pcp.conf\n{USER}:{md5}\n")).unwrap();
    let handler = Arc::new(TestHandler {
        nodes: three_nodes(),
        calls: Mutex::new(Vec::new()),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let port = std_listener.local_addr().unwrap().port();
    let h = handler.clone();
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        serve(listener, Arc::new(RwLock::new(users)), h, opts).await
    });
    let dir = tempfile::tempdir().unwrap();
    write_passfile(&dir.path().join("pcppass"), port, PASSWORD);
    Server {
        port,
        handler,
        dir,
        _runtime: runtime,
    }
}

fn write_passfile(path: &Path, port: u16, password: &str) {
    std::fs::write(path, format!("127.0.0.1:{port}:{USER}:{password}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn tool(name: &str) -> Option<PathBuf> {
    let path = Path::new("/usr/sbin").join(name);
    if path.exists() {
        Some(path)
    } else {
        println!(
            "NOTE: {} is not installed; this case is skipped",
            path.display()
        );
        None
    }
}

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Server {
    /// Runs a stock tool against this server with the pass file; `None` if it is missing.
    fn run(&self, name: &str, args: &[&str]) -> Option<Output> {
        self.run_with(name, args, &self.dir.path().join("pcppass"))
    }

    fn run_with(&self, name: &str, args: &[&str], passfile: &Path) -> Option<Output> {
        let path = tool(name)?;
        let port = self.port.to_string();
        let mut child = Command::new(&path)
            .args(["-h", "127.0.0.1", "-p", &port, "-U", USER, "-w"])
            .args(args)
            .env("PCPPASSFILE", passfile)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{name} {args:?} did not finish within 20 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_with_output().unwrap();
        let out = Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        println!(
            "$ {name} {}\n[exit {:?}]\n{}{}",
            args.join(" "),
            out.code,
            out.stdout,
            out.stderr
        );
        Some(out)
    }
}

#[test]
fn node_count_and_node_info() {
    let s = start(ServerOptions::default());
    if let Some(o) = s.run("pcp_node_count", &[]) {
        assert_eq!(
            (o.code, o.stdout.as_str(), o.stderr.as_str()),
            (Some(0), "3\n", "")
        );
    }

    // host port status weight statusname pg_status role pg_role delay rep_state sync_state time
    let line0 = format!(
        "127.0.0.1 11002 2 0.333333 up up primary primary 0 none none {}\n",
        local(1_700_000_000)
    );
    let line1 = format!(
        "127.0.0.1 11003 2 0.333333 up up standby standby 2048 streaming async {}\n",
        local(1_700_000_100)
    );
    let line2 = format!(
        "127.0.0.1 11004 3 0.333333 down down standby unknown 0 none none {}\n",
        local(1_700_000_300)
    );
    if let Some(o) = s.run("pcp_node_info", &["-n", "0"]) {
        assert_eq!((o.code, o.stderr.as_str()), (Some(0), ""));
        assert_eq!(o.stdout, line0);
    }
    if let Some(o) = s.run("pcp_node_info", &["-n", "1"]) {
        assert_eq!(o.stdout, line1);
    }
    if let Some(o) = s.run("pcp_node_info", &[]) {
        assert_eq!(o.stdout, format!("{line0}{line1}{line2}"));
    }
    if let Some(o) = s.run("pcp_node_info", &["-v", "-n", "1"]) {
        assert_eq!(o.code, Some(0));
        let expected = [
            "Hostname               : 127.0.0.1",
            "Port                   : 11003",
            "Status                 : 2",
            "Weight                 : 0.333333",
            "Status Name            : up",
            "Backend Status Name    : up",
            "Role                   : standby",
            "Backend Role           : standby",
            "Replication Delay      : 2048",
            "Replication State      : streaming",
            "Replication Sync State : async",
        ];
        for e in expected {
            assert!(
                o.stdout.contains(&format!("{e}\n")),
                "missing {e:?} in\n{}",
                o.stdout
            );
        }
        assert!(o.stdout.contains(&format!(
            "Last Status Change     : {}",
            local(1_700_000_100)
        )));
    }
    if let Some(o) = s.run("pcp_node_info", &["-n", "7"]) {
        assert_eq!(o.stdout, "");
        assert_eq!(
            o.stderr,
            "ERROR:  informing node info failed\nDETAIL:  invalid node ID : 7\n\n"
        );
        // pgpool 4.3.5's tools exit 0 after an ERROR reply (pcp_frontend_client.c).
        assert_eq!(o.code, Some(0));
    }
}

#[test]
fn the_44_layout_is_misread_by_the_43_tools() {
    // Shows why the layout is a setting: a 4.3 client reading 4.4's 13 fields is off by one.
    let s = start(ServerOptions {
        node_info: NodeInfoLayout::V44,
        ..ServerOptions::default()
    });
    if let Some(o) = s.run("pcp_node_info", &["-n", "1"]) {
        assert!(
            o.stdout
                .starts_with("127.0.0.1 11003 2 0.333333 up up standby standby 0 2048 streaming "),
            "{}",
            o.stdout
        );
    }
}

#[test]
fn health_check_stats() {
    let s = start(ServerOptions::default());
    if let Some(o) = s.run("pcp_health_check_stats", &["-n", "1"]) {
        assert_eq!(o.code, Some(0));
        let expected = format!(
            "1 127.0.0.1 11003 up standby {} 12 11 1 0 2 0.166667 2 2007 3 170.500000 {} {}  {}\n",
            local(1_700_000_100),
            local(1_700_000_500),
            local(1_700_000_500),
            local(1_700_000_200)
        );
        assert_eq!(o.stdout, expected);
    }
    if let Some(o) = s.run("pcp_health_check_stats", &["-v", "-n", "0"]) {
        assert!(
            o.stdout.contains("Node Id                       : 0\n"),
            "{}",
            o.stdout
        );
        assert!(
            o.stdout
                .contains("Role                          : primary\n"),
            "{}",
            o.stdout
        );
    }
    if let Some(o) = s.run("pcp_health_check_stats", &["-n", "7"]) {
        assert_eq!(
            o.stderr,
            "ERROR:  informing health check stats info failed\nDETAIL:  invalid node ID 7\n\n"
        );
    }
}

#[test]
fn actions_reach_the_handler() {
    let s = start(ServerOptions::default());
    let mut expected: Vec<String> = Vec::new();
    if let Some(o) = s.run("pcp_attach_node", &["-n", "1"]) {
        assert_eq!(
            (o.code, o.stdout.as_str()),
            (Some(0), "pcp_attach_node -- Command Successful\n")
        );
        expected.push("attach 1".into());
    }
    if let Some(o) = s.run("pcp_detach_node", &["-n", "2"]) {
        assert_eq!(
            (o.code, o.stdout.as_str()),
            (Some(0), "pcp_detach_node -- Command Successful\n")
        );
        expected.push("detach 2 graceful=false".into());
    }
    if let Some(o) = s.run("pcp_detach_node", &["-g", "-n", "2"]) {
        assert_eq!(o.stdout, "pcp_detach_node -- Command Successful\n");
        expected.push("detach 2 graceful=true".into());
    }
    if let Some(o) = s.run("pcp_promote_node", &["-n", "1"]) {
        assert_eq!(
            (o.code, o.stdout.as_str()),
            (Some(0), "pcp_promote_node -- Command Successful\n")
        );
        expected.push("promote 1 switchover=false".into());
    }
    if let Some(o) = s.run("pcp_promote_node", &["-s", "-n", "1"]) {
        assert_eq!(o.stdout, "pcp_promote_node -- Command Successful\n");
        expected.push("promote 1 switchover=true".into());
    }
    if let Some(o) = s.run("pcp_recovery_node", &["-n", "2"]) {
        assert_eq!(o.stdout, "");
        assert_eq!(
            o.stderr,
            "ERROR:  process recovery request failed\nDETAIL:  recovery_1st_stage_command failed on node 2\n\n"
        );
        // The 4.3.5 tool exits 0 after an ERROR reply; the text is what tells.
        assert_eq!(o.code, Some(0));
        expected.push("recover 2".into());
    }
    for (name, args) in [
        ("pcp_attach_node", ["-n", "7"]),
        ("pcp_detach_node", ["-n", "7"]),
        ("pcp_promote_node", ["-n", "7"]),
        ("pcp_recovery_node", ["-n", "7"]),
    ] {
        if let Some(o) = s.run(name, &args) {
            assert!(o.stderr.starts_with("ERROR:  "), "{name}: {}", o.stderr);
            assert!(
                o.stderr.contains("\nDETAIL:  node id 7 is not valid\n"),
                "{name}: {}",
                o.stderr
            );
        }
    }
    if let Some(o) = s.run("pcp_reload_config", &[]) {
        assert_eq!(
            (o.code, o.stdout.as_str()),
            (Some(0), "pcp_reload_config -- Command Successful\n")
        );
        expected.push("reload".into());
    }
    if let Some(o) = s.run("pcp_stop_pgpool", &["-m", "fast"]) {
        assert_eq!(
            (o.code, o.stdout.as_str()),
            (Some(0), "pcp_stop_pgpool -- Command Successful\n")
        );
        expected.push("stop Fast".into());
    }
    assert_eq!(s.handler.calls(), expected);
}

#[test]
fn pool_status_processes_and_watchdog() {
    let s = start(ServerOptions::default());
    if let Some(o) = s.run("pcp_pool_status", &[]) {
        assert_eq!(o.code, Some(0));
        assert_eq!(
            o.stdout,
            "name : listen_addresses\nvalue: *\ndesc : host name(s) or IP address(es) to listen on\n\n\
             name : port\nvalue: 9999\ndesc : pgpool accepting port number\n\n"
        );
    }
    if let Some(o) = s.run("pcp_proc_count", &[]) {
        assert_eq!(o.stdout, format!("{} \n", std::process::id()));
    }
    if let Some(o) = s.run("pcp_proc_info", &[]) {
        // An empty list: the tool takes it for a command without a result.
        assert_eq!(
            (o.code, o.stdout.as_str()),
            (Some(0), "pcp_proc_info -- Command Successful\n")
        );
    }
    if let Some(o) = s.run("pcp_proc_info", &["-P", "1"]) {
        assert_eq!(
            o.stderr,
            "ERROR:  informing process info failed\nDETAIL:  invalid process ID : 1\n\n"
        );
    }
    if let Some(o) = s.run("pcp_watchdog_info", &[]) {
        assert_eq!(
            o.stderr,
            "ERROR:  PCP: informing watchdog info failed\nDETAIL:  watchdog is not enabled\n\n"
        );
    }
    assert!(s.handler.calls().is_empty());
}

#[test]
fn a_wrong_password_is_refused() {
    let s = start(ServerOptions::default());
    let wrong = s.dir.path().join("wrong");
    write_passfile(&wrong, s.port, "not-the-password");
    if let Some(o) = s.run_with("pcp_node_count", &[], &wrong) {
        assert_eq!(o.stdout, "");
        assert_eq!(
            o.stderr,
            "FATAL:  authentication failed for user \"admin\"\nDETAIL:  username and/or password does not match\n\n"
        );
        assert_eq!(o.code, Some(1));
    }
    if let Some(o) = s.run_with("pcp_attach_node", &["-n", "1"], &wrong) {
        assert_eq!(o.code, Some(1));
    }
    assert!(s.handler.calls().is_empty());
}

// ---- raw sockets ----

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn send(s: &mut TcpStream, tag: u8, payload: &[u8]) {
    let mut buf = vec![tag];
    buf.extend_from_slice(&(4 + payload.len() as i32).to_be_bytes());
    buf.extend_from_slice(payload);
    s.write_all(&buf).unwrap();
}

fn recv(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).unwrap();
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut payload = vec![0u8; len - 4];
    s.read_exact(&mut payload).unwrap();
    (head[0], payload)
}

/// Reads until EOF (the server closed); fails on a timeout.
fn assert_closed(s: &mut TcpStream) {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .expect("the server should close the connection");
}

fn text(p: &[u8]) -> String {
    String::from_utf8_lossy(p).replace('\0', "|")
}

fn login(s: &mut TcpStream) {
    send(s, b'M', b"");
    let (tag, salt) = recv(s);
    assert_eq!((tag, salt.len()), (b'm', 4));
    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let pw = hex(&Md5::digest(PASSWORD.as_bytes()));
    let inner = hex(&Md5::digest(format!("{pw}{USER}").as_bytes()));
    let mut outer = inner.into_bytes();
    outer.extend_from_slice(&salt);
    let answer = hex(&Md5::digest(&outer));
    send(s, b'R', format!("{USER}\0{answer}\0").as_bytes());
    let (tag, p) = recv(s);
    assert_eq!((tag, text(&p).as_str()), (b'r', "AuthenticationOK|"));
}

#[test]
fn several_commands_on_one_connection_and_errors_keep_it() {
    let s = start(ServerOptions::default());
    let mut c = connect(s.port);
    login(&mut c);
    send(&mut c, b'L', b"");
    assert_eq!(text(&recv(&mut c).1), "CommandComplete|3|");
    send(&mut c, b'I', b"9\0");
    let (tag, p) = recv(&mut c);
    assert_eq!(
        (tag, text(&p).as_str()),
        (
            b'E',
            "SERROR|CXX000|Minforming node info failed|Dinvalid node ID : 9||"
        )
    );
    send(&mut c, b'I', b"abc\0");
    assert_eq!(
        text(&recv(&mut c).1),
        "SERROR|CXX000|Minforming node info failed|Dinvalid node ID : abc||"
    );
    send(&mut c, b'F', b"");
    send(&mut c, b'C', b"0\0");
    assert_eq!(recv(&mut c), (b'c', b"CommandComplete\0".to_vec()));
    send(&mut c, b'T', b"x");
    assert_eq!(text(&recv(&mut c).1), "SERROR|CXX000|MPCP: error while processing shutdown request|Dinvalid shutdown mode \"x\"||");
    send(&mut c, b'X', b"");
    assert_closed(&mut c);
    assert_eq!(s.handler.calls(), ["attach 0"]);
}

#[test]
fn commands_before_authentication_are_fatal() {
    let s = start(ServerOptions::default());
    let mut c = connect(s.port);
    send(&mut c, b'C', b"1\0");
    let (tag, p) = recv(&mut c);
    assert_eq!(
        (tag, text(&p).as_str()),
        (b'E', "SFATAL|CXX000|Mauthentication failed for new PCP connection|Dconnection not authorized||")
    );
    assert_closed(&mut c);

    // An answer without a salt first.
    let mut c = connect(s.port);
    send(&mut c, b'R', b"admin\0d41d8cd98f00b204e9800998ecf8427e\0");
    assert_eq!(
        text(&recv(&mut c).1),
        "SFATAL|CXX000|Mauthentication failed|Dusername and/or password does not match||"
    );
    assert_closed(&mut c);

    // An unknown user.
    let mut c = connect(s.port);
    send(&mut c, b'M', b"");
    recv(&mut c);
    send(&mut c, b'R', b"nobody\0d41d8cd98f00b204e9800998ecf8427e\0");
    assert_eq!(
        text(&recv(&mut c).1),
        "SFATAL|CXX000|Mauthentication failed for user \"nobody\"|Dusername and/or password does not match||"
    );
    assert_closed(&mut c);
    assert!(s.handler.calls().is_empty());
}

#[test]
fn lying_lengths_and_garbage_are_fatal_and_never_allocated() {
    let s = start(ServerOptions::default());
    for length in [i32::MAX, 260, 0, -1, i32::MIN, 3] {
        let mut c = connect(s.port);
        let mut buf = vec![b'M'];
        buf.extend_from_slice(&length.to_be_bytes());
        buf.extend_from_slice(&[0xAB; 300]);
        c.write_all(&buf).unwrap();
        let (tag, p) = recv(&mut c);
        assert_eq!(
            (tag, text(&p)),
            (
                b'E',
                format!("SFATAL|CXX000|Minvalid PCP packet|Dincorrect packet length ({length})||")
            )
        );
        assert_closed(&mut c);
    }
    // Garbage after a good login: an unknown tag is FATAL too.
    let mut c = connect(s.port);
    login(&mut c);
    send(&mut c, b'?', &[0xff; 10]);
    let (tag, p) = recv(&mut c);
    assert_eq!(
        (tag, text(&p).as_str()),
        (
            b'E',
            "SFATAL|CXX000|MPCP processing request|Dunknown PCP packet type \"?\"||"
        )
    );
    assert_closed(&mut c);
    // The server still serves.
    if let Some(o) = s.run("pcp_node_count", &[]) {
        assert_eq!(o.stdout, "3\n");
    }
}

#[test]
fn silent_and_slow_clients_are_closed_after_the_auth_timeout() {
    let s = start(ServerOptions {
        auth_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    });
    let t = Instant::now();
    let mut silent = connect(s.port);
    assert_closed(&mut silent);
    // Half a packet, then nothing.
    let mut slow = connect(s.port);
    slow.write_all(&[b'M', 0, 0]).unwrap();
    assert_closed(&mut slow);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

#[test]
fn connections_over_the_limit_get_a_fatal() {
    let s = start(ServerOptions {
        max_connections: 1,
        ..ServerOptions::default()
    });
    let mut first = connect(s.port);
    login(&mut first);
    let mut second = connect(s.port);
    let (tag, p) = recv(&mut second);
    assert_eq!(
        (tag, text(&p).as_str()),
        (b'E', "SFATAL|CXX000|Mtoo many PCP connections|Dat most 1 PCP connections are served at once||")
    );
    assert_closed(&mut second);
    if let Some(o) = s.run("pcp_node_count", &[]) {
        assert_eq!(o.stderr, "FATAL:  too many PCP connections\nDETAIL:  at most 1 PCP connections are served at once\n\n");
        assert_eq!(o.code, Some(1));
    }
    // The slot comes back when the first one leaves.
    send(&mut first, b'X', b"");
    assert_closed(&mut first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = connect(s.port);
        send(&mut c, b'M', b"");
        if recv(&mut c).0 == b'm' {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was not released");
        std::thread::sleep(Duration::from_millis(20));
    }
}
