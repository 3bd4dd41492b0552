//! The agent on real PostgreSQL 15 clusters: two agents in this process, each controlling a
//! server in a temporary directory (run as the `postgres` OS user when the tests run as root),
//! driven through the real client over HTTP.

use pgwarden_agent::api::{
    JobSpec, JobState, JobStatus, Source, StandbyRequest, StartRequest, StopMode, StopRequest,
};
use pgwarden_agent::{AgentClient, AgentConfig, AgentError};
use pgwarden_sandbox::{PgBin, RunAs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"a test secret of more than sixteen bytes";
const KEEP: [&str; 4] = [
    "postgresql.conf",
    "pg_hba.conf",
    "pg_ident.conf",
    "node.conf",
];

/// A temporary directory the `postgres` OS user can reach and write, servers stopped on drop.
struct Work {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    bin: PgBin,
    run_as: RunAs,
    password: String,
}

impl Work {
    fn new() -> Work {
        let tmp = tempfile::Builder::new()
            .prefix("pgwarden-agent-test-")
            .tempdir_in(std::env::temp_dir())
            .unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let run_as = RunAs::detect().unwrap();
        let dir = tmp.path().join("work");
        std::fs::create_dir(&dir).unwrap();
        run_as.own(&dir).unwrap();
        let password = format!("pw-{}", std::process::id());
        let w = Work {
            _tmp: tmp,
            dir,
            bin: PgBin::locate().unwrap(),
            run_as,
            password,
        };
        w.write(
            "pgpass",
            &format!("127.0.0.1:*:*:postgres:{}\n", w.password),
            0o600,
        );
        w
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn write(&self, name: &str, text: &str, mode: u32) {
        let p = self.path(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        self.run_as.own(&p).unwrap();
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self
            .run_as
            .command(self.bin.program(program))
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{program} {args:?}: {text}");
        text
    }

    /// initdb of `name` with SCRAM passwords, streaming replication settings and its own
    /// `node.conf` (cluster_name and port), included from postgresql.conf.
    fn initdb(&self, name: &str, port: u16) {
        let pw = self.path("initdb-pw");
        std::fs::write(&pw, format!("{}\n", self.password)).unwrap();
        self.run_as.own(&pw).unwrap();
        let data = self.path(name);
        self.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "--no-sync",
                "--data-checksums",
                &format!("--pwfile={}", pw.display()),
            ],
        );
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(
            "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\nfsync = off\n\
             wal_level = replica\nmax_wal_senders = 10\nwal_keep_size = '128MB'\n\
             hot_standby = on\nwal_log_hints = on\ninclude_if_exists = 'node.conf'\n",
        );
        std::fs::write(&conf, text).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "host all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        self.write(
            &format!("{name}/node.conf"),
            &format!("port = {port}\ncluster_name = '{name}'\n"),
            0o600,
        );
    }

    fn config(&self, name: &str, port: u16) -> AgentConfig {
        AgentConfig {
            data_dir: self.path(name),
            pg_port: port,
            pg_bin: self.bin.dir.clone(),
            passfile: Some(self.path("pgpass")),
            secret: SECRET.to_vec(),
            log_file: self.path(&format!("{name}.log")),
            keep: KEEP.iter().map(|s| s.to_string()).collect(),
            run_as: self.run_as,
        }
    }

    async fn connect(&self, port: u16) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(port)
            .user("postgres")
            .password(&self.password)
            .dbname("postgres")
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }

    async fn query_one(&self, port: u16, sql: &str) -> String {
        let c = self.connect(port).await;
        let rows = c.simple_query(sql).await.unwrap();
        rows.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap_or_default()
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in ["a.log", "b.log"] {
                if let Ok(t) = std::fs::read_to_string(self.path(log)) {
                    eprintln!("----- {log} -----\n{t}");
                }
            }
        }
        // No server may outlive the test.
        for name in ["a", "b"] {
            let data = self.path(name);
            if data.join("postmaster.pid").exists() {
                let _ = self
                    .run_as
                    .command(self.bin.program("pg_ctl"))
                    .args(["stop", "-m", "immediate", "-w", "-D"])
                    .arg(&data)
                    .output();
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts an agent in this process; its client.
async fn agent(cfg: AgentConfig) -> AgentClient {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(pgwarden_agent::serve(cfg, listener));
    AgentClient::new(&addr, SECRET.to_vec(), Duration::from_secs(10))
}

/// Polls a job until it is no longer running.
async fn wait_job(c: &AgentClient, id: u64, limit: Duration) -> JobStatus {
    let start = Instant::now();
    loop {
        let s = c.job(id).await.unwrap();
        if s.state != JobState::Running {
            return s;
        }
        assert!(start.elapsed() < limit, "job {id} still runs: {s:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn source(port: u16) -> Source {
    Source {
        host: "127.0.0.1".into(),
        port,
        user: "postgres".into(),
    }
}

fn start_req() -> StartRequest {
    StartRequest { timeout_secs: 60 }
}

fn stop_fast() -> StopRequest {
    StopRequest {
        mode: StopMode::Fast,
        timeout_secs: 60,
    }
}

/// Waits until `application_name` streams from the server on `port`.
async fn wait_streaming(w: &Work, port: u16, application_name: &str) {
    let start = Instant::now();
    let sql = format!(
        "SELECT state FROM pg_stat_replication WHERE application_name = '{}'",
        application_name.replace('\'', "''")
    );
    loop {
        if w.query_one(port, &sql).await == "streaming" {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{application_name:?} does not stream from port {port}; pg_stat_replication: {}",
            w.query_one(
                port,
                "SELECT string_agg(application_name || ' ' || state, ', ') FROM pg_stat_replication"
            )
            .await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_value(w: &Work, port: u16, sql: &str, want: &str) {
    let start = Instant::now();
    loop {
        let got = w.query_one(port, sql).await;
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{sql} on port {port}: {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_backup_standby_failover_and_rewind() {
    let w = Work::new();
    let (port_a, port_b) = (free_port(), free_port());
    w.initdb("a", port_a);
    let a = agent(w.config("a", port_a)).await;
    let b = agent(w.config("b", port_b)).await;

    // A fresh cluster: stopped, shut down, timeline 1.
    let st = a.status().await.unwrap();
    assert!(!st.running && st.pid.is_none());
    assert_eq!(st.port, port_a);
    let control = st.control.expect("pg_controldata of a");
    assert_eq!(control.state, "shut down");
    assert_eq!(control.timeline, 1);
    assert!(control.checkpoint_lsn.contains('/'));
    // b's directory does not exist yet: no cluster.
    let st = b.status().await.unwrap();
    assert!(!st.running);
    assert_eq!(st.control, None);

    // A wrong secret is refused, and nothing is done.
    let intruder = AgentClient::new(
        a.addr(),
        b"not the secret, but long enough".to_vec(),
        Duration::from_secs(5),
    );
    let e = intruder.start(start_req()).await.unwrap_err();
    assert!(matches!(e, AgentError::Auth(_)), "{e:?}");
    assert!(e.to_string().contains("wrong signature"), "{e}");
    assert!(e.to_string().contains(a.addr()), "{e}");
    assert!(!a.status().await.unwrap().running, "nothing started");

    // Start, and start again (harmless).
    let done = a.start(start_req()).await.unwrap();
    assert!(done.message.contains("started"), "{done:?}");
    let st = a.status().await.unwrap();
    assert!(st.running);
    assert!(st.pid.is_some_and(|p| p > 0));
    assert!(a
        .start(start_req())
        .await
        .unwrap()
        .message
        .contains("already running"));
    let e = intruder.stop(stop_fast()).await.unwrap_err();
    assert!(matches!(e, AgentError::Auth(_)), "{e:?}");
    assert!(
        a.status().await.unwrap().running,
        "a wrong secret stops nothing"
    );

    // While it runs: no standby settings, no rewind.
    let e = a
        .standby(StandbyRequest {
            source: source(port_b),
            application_name: "a".into(),
            slot: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e, AgentError::Refused(ref m) if m.contains("stop it")),
        "{e:?}"
    );
    let e = a
        .start_job(JobSpec::Rewind {
            source: source(port_b),
        })
        .await
        .unwrap_err();
    assert!(matches!(e, AgentError::Refused(_)), "{e:?}");

    let pa = w.connect(port_a).await;
    pa.batch_execute(
        "SELECT pg_create_physical_replication_slot('node_b');
         CREATE TABLE t (v text); INSERT INTO t SELECT 'row ' || g FROM generate_series(1, 1000) g;",
    )
    .await
    .unwrap();

    // b's own node.conf is there before the base backup and must survive it.
    std::fs::create_dir(w.path("b")).unwrap();
    std::fs::set_permissions(w.path("b"), std::fs::Permissions::from_mode(0o700)).unwrap();
    w.run_as.own(&w.path("b")).unwrap();
    w.write(
        "b/node.conf",
        &format!("port = {port_b}\ncluster_name = 'b'\n"),
        0o600,
    );
    let job = b
        .start_job(JobSpec::BaseBackup {
            source: source(port_a),
            slot: Some("node_b".into()),
        })
        .await
        .unwrap();
    assert_eq!(job.kind, "base_backup");
    assert_eq!(job.state, JobState::Running);
    let e = b
        .start_job(JobSpec::Script {
            path: "/bin/true".into(),
            args: vec![],
            timeout_secs: 5,
        })
        .await;
    // One job at a time (unless the backup already finished).
    if let Err(e) = e {
        assert!(
            matches!(e, AgentError::Refused(ref m) if m.contains("one job at a time")),
            "{e:?}"
        );
    }
    let done = wait_job(&b, job.id, Duration::from_secs(120)).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    assert!(done.bytes_done > 0, "{done:#?}");
    assert!(
        done.bytes_total.is_some_and(|t| t >= done.bytes_done),
        "{done:#?}"
    );
    assert!(
        done.output_tail.contains("base backup completed"),
        "{done:#?}"
    );
    assert_eq!(mode(&w.path("b")), 0o700);
    assert!(!w.path("b.pgwarden-new").exists() && !w.path("b.pgwarden-old").exists());
    assert!(w.path("b/PG_VERSION").is_file());
    assert_eq!(
        std::fs::read_to_string(w.path("b/node.conf")).unwrap(),
        format!("port = {port_b}\ncluster_name = 'b'\n"),
        "the kept file is b's own, not the primary's copy"
    );
    let st = b.status().await.unwrap();
    assert_eq!(st.control.expect("b has a cluster now").timeline, 1);

    // Standby settings (a name that needs quoting twice), start: b streams from a.
    let app_b = r"b's \node";
    b.standby(StandbyRequest {
        source: source(port_a),
        application_name: app_b.into(),
        slot: Some("node_b".into()),
    })
    .await
    .unwrap();
    assert!(w.path("b/standby.signal").is_file());
    let auto = std::fs::read_to_string(w.path("b/postgresql.auto.conf")).unwrap();
    assert_eq!(
        auto.matches("# pgwarden: standby settings (begin)").count(),
        1
    );
    b.start(start_req()).await.unwrap();
    wait_streaming(&w, port_a, app_b).await;
    assert_eq!(
        w.query_one(
            port_a,
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'node_b'"
        )
        .await,
        "t"
    );
    wait_value(&w, port_b, "SELECT count(*) FROM t", "1000").await;
    assert_eq!(w.query_one(port_b, "SHOW cluster_name").await, "b");
    assert_eq!(w.query_one(port_b, "SELECT pg_is_in_recovery()").await, "t");

    // Failover: b is promoted; both take writes (a is now a false primary).
    let pb = w.connect(port_b).await;
    pb.batch_execute("SELECT pg_promote(); ").await.unwrap();
    wait_value(&w, port_b, "SELECT pg_is_in_recovery()", "f").await;
    pb.batch_execute(
        "SELECT pg_create_physical_replication_slot('node_a');
         INSERT INTO t VALUES ('from the new primary');",
    )
    .await
    .unwrap();
    pa.batch_execute("INSERT INTO t SELECT 'lost ' || g FROM generate_series(1, 500) g;")
        .await
        .unwrap();
    drop(pa);
    let done = a.stop(stop_fast()).await.unwrap();
    assert_eq!(done.message, "stopped (fast)");
    assert!(a
        .stop(stop_fast())
        .await
        .unwrap()
        .message
        .contains("was not running"));

    // Rewind a from b, as a standby of b.
    let job = a
        .start_job(JobSpec::Rewind {
            source: source(port_b),
        })
        .await
        .unwrap();
    let done = wait_job(&a, job.id, Duration::from_secs(120)).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    assert!(
        done.output_tail.contains("servers diverged"),
        "a real rewind, not 'no rewind required': {done:#?}"
    );
    assert!(done.bytes_done > 0, "{done:#?}");
    assert_eq!(
        std::fs::read_to_string(w.path("a/node.conf")).unwrap(),
        format!("port = {port_a}\ncluster_name = 'a'\n"),
        "pg_rewind brought b's node.conf; a's own is back"
    );
    a.standby(StandbyRequest {
        source: source(port_b),
        application_name: "node_a".into(),
        slot: Some("node_a".into()),
    })
    .await
    .unwrap();
    let auto = std::fs::read_to_string(w.path("a/postgresql.auto.conf")).unwrap();
    assert_eq!(auto.matches("primary_conninfo").count(), 1, "{auto}");
    a.start(start_req()).await.unwrap();
    wait_streaming(&w, port_b, "node_a").await;
    wait_value(
        &w,
        port_a,
        "SELECT count(*) FROM t WHERE v = 'from the new primary'",
        "1",
    )
    .await;
    assert_eq!(
        w.query_one(port_a, "SELECT count(*) FROM t WHERE v LIKE 'lost%'")
            .await,
        "0",
        "the false primary's writes are gone"
    );
    assert_eq!(w.query_one(port_a, "SHOW cluster_name").await, "a");
    // pg_control's "latest checkpoint" of a rewound standby stays the last common
    // checkpoint, on the old timeline, until its first restartpoint.
    let control = a.status().await.unwrap().control.unwrap();
    assert_eq!(control.state, "in archive recovery");
    assert_eq!(control.timeline, 1, "{control:?}");
    w.connect(port_b)
        .await
        .batch_execute("CHECKPOINT")
        .await
        .unwrap();
    let b_checkpoint = w
        .query_one(port_b, "SELECT checkpoint_lsn FROM pg_control_checkpoint()")
        .await;
    wait_value(
        &w,
        port_a,
        &format!("SELECT pg_last_wal_replay_lsn() > '{b_checkpoint}'"),
        "t",
    )
    .await;
    w.connect(port_a)
        .await
        .batch_execute("CHECKPOINT")
        .await
        .unwrap();
    let control = a.status().await.unwrap().control.unwrap();
    assert_eq!(control.timeline, 2, "after a restartpoint: {control:?}");

    // Stop both for good (immediate on a standby works too).
    a.stop(StopRequest {
        mode: StopMode::Immediate,
        timeout_secs: 30,
    })
    .await
    .unwrap();
    b.stop(stop_fast()).await.unwrap();
    assert!(!a.status().await.unwrap().running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_time_out_fail_and_jobs_are_cancelled() {
    let w = Work::new();
    std::fs::create_dir(w.path("s")).unwrap();
    w.run_as.own(&w.path("s")).unwrap();
    let c = agent(w.config("s", free_port())).await;

    // A relative script is run inside the data directory, with PGDATA and its arguments.
    w.write(
        "s/fail.sh",
        "#!/bin/sh\nfor i in $(seq 1 30); do echo \"line $i $1 $PGDATA\"; done\necho oops >&2\nexit 3\n",
        0o755,
    );
    let job = c
        .start_job(JobSpec::Script {
            path: "fail.sh".into(),
            args: vec!["arg1".into()],
            timeout_secs: 30,
        })
        .await
        .unwrap();
    let done = wait_job(&c, job.id, Duration::from_secs(30)).await;
    assert_eq!(done.state, JobState::Failed, "{done:#?}");
    assert!(
        done.error
            .as_deref()
            .unwrap()
            .contains("exited with code 3"),
        "{done:#?}"
    );
    assert_eq!(done.output_tail.lines().count(), 20, "{done:#?}");
    assert!(done.output_tail.contains("oops"), "{done:#?}");
    assert!(
        done.output_tail
            .contains(&format!("line 30 arg1 {}", w.path("s").display())),
        "{done:#?}"
    );

    // A script that runs too long is killed with everything it started.
    w.write(
        "s/slow.sh",
        "#!/bin/sh\necho $$ > \"$PGDATA/slow.pid\"\nsleep 60 &\necho $! > \"$PGDATA/child.pid\"\nwait\n",
        0o755,
    );
    let job = c
        .start_job(JobSpec::Script {
            path: "slow.sh".into(),
            args: vec![],
            timeout_secs: 1,
        })
        .await
        .unwrap();
    let started = Instant::now();
    let done = wait_job(&c, job.id, Duration::from_secs(20)).await;
    assert_eq!(done.state, JobState::Failed, "{done:#?}");
    assert!(
        done.error
            .as_deref()
            .unwrap()
            .contains("timed out after 1 s"),
        "{done:#?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_gone(&w.path("s/child.pid"));

    // Cancelled while it runs: killed, state Cancelled.
    std::fs::remove_file(w.path("s/child.pid")).unwrap();
    let job = c
        .start_job(JobSpec::Script {
            path: "slow.sh".into(),
            args: vec![],
            timeout_secs: 600,
        })
        .await
        .unwrap();
    let e = c
        .start_job(JobSpec::Script {
            path: "fail.sh".into(),
            args: vec![],
            timeout_secs: 5,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e, AgentError::Refused(ref m) if m.contains("one job at a time")),
        "{e:?}"
    );
    wait_for_file(&w.path("s/child.pid")).await;
    let st = c.status().await.unwrap();
    assert_eq!(st.job.as_ref().map(|j| j.id), Some(job.id));
    let cancelled = c.cancel(job.id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled, "{cancelled:#?}");
    assert_gone(&w.path("s/child.pid"));
    assert!(c.status().await.unwrap().job.is_none());
    // Cancelling again is harmless; an unknown job is 404.
    assert_eq!(c.cancel(job.id).await.unwrap().state, JobState::Cancelled);
    let e = c.job(9999).await.unwrap_err();
    assert!(
        matches!(e, AgentError::Refused(ref m) if m.contains("no job 9999")),
        "{e:?}"
    );

    // A base backup from a server that never answers, cancelled: the new directory is
    // removed, the old one untouched.
    w.write("s/precious", "keep me", 0o600);
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let job = c
        .start_job(JobSpec::BaseBackup {
            source: source(hung.local_addr().unwrap().port()),
            slot: None,
        })
        .await
        .unwrap();
    let start = Instant::now();
    while !w.path("s.pgwarden-new").exists() {
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.job(job.id).await.unwrap().state, JobState::Running);
    // Nothing may start or reconfigure the server while its data directory is rebuilt.
    let e = c.start(start_req()).await.unwrap_err();
    assert!(
        matches!(e, AgentError::Refused(ref m) if m.contains("changes the data directory")),
        "{e:?}"
    );
    let e = c
        .standby(StandbyRequest {
            source: source(5432),
            application_name: "s".into(),
            slot: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e, AgentError::Refused(ref m) if m.contains("changes the data directory")),
        "{e:?}"
    );
    let cancelled = c.cancel(job.id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled, "{cancelled:#?}");
    assert!(
        !w.path("s.pgwarden-new").exists(),
        "the partial copy is removed"
    );
    assert_eq!(
        std::fs::read_to_string(w.path("s/precious")).unwrap(),
        "keep me"
    );
    drop(hung);

    // Bad requests are 400, with a reason.
    let e = c
        .start_job(JobSpec::BaseBackup {
            source: source(5432),
            slot: Some("Not A Slot".into()),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e, AgentError::Refused(ref m) if m.contains("not a replication slot name")),
        "{e:?}"
    );
    let e = c
        .stop(StopRequest {
            mode: StopMode::Fast,
            timeout_secs: 0,
        })
        .await
        .unwrap_err();
    assert!(matches!(e, AgentError::Refused(_)), "{e:?}");
    // A rewind or a start without a cluster is refused; nothing to stop is not an error.
    let e = c
        .start_job(JobSpec::Rewind {
            source: source(5432),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e, AgentError::Refused(ref m) if m.contains("no database cluster to rewind")),
        "{e:?}"
    );
    let e = c.start(start_req()).await.unwrap_err();
    assert!(
        matches!(e, AgentError::Refused(ref m) if m.contains("no database cluster")),
        "{e:?}"
    );
    assert!(c
        .stop(stop_fast())
        .await
        .unwrap()
        .message
        .contains("not running"));
}

#[tokio::test]
async fn an_agent_that_is_not_there_is_unreachable() {
    let port = free_port();
    let c = AgentClient::new(
        &format!("127.0.0.1:{port}"),
        SECRET.to_vec(),
        Duration::from_secs(2),
    );
    let e = c.status().await.unwrap_err();
    assert!(matches!(e, AgentError::Unreachable(_)), "{e:?}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
}

async fn wait_for_file(p: &Path) {
    let start = Instant::now();
    while !p.exists()
        || std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .is_empty()
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} never appeared",
            p.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The process whose pid is in `pidfile` is gone (or a zombie).
fn assert_gone(pidfile: &Path) {
    let pid = std::fs::read_to_string(pidfile).unwrap();
    let pid = pid.trim();
    let start = Instant::now();
    loop {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
            })
            .unwrap_or(false);
        if !alive {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "process {pid} still runs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
