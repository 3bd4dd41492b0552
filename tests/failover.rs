//! Failover, fencing and the operations by hand, on real sandbox clusters: the primary killed
//! or hung under a write load through the proxy, a standby killed, the warden restarted, the
//! old primary coming back by itself, attach / detach / promote through the CLI and through
//! pgpool's stock pcp_* tools.

mod common;

use common::{
    cluster_state, events_text, node_pids, pcp, postmaster_pid, wait_cluster, wait_event,
    wait_gone, Cluster,
};
use serde_json::Value;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Blocking calls (the harness's HTTP client, psql) from inside the async part of a test.
fn sync<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A writer through the proxy: inserts rows with increasing ids, one at a time, reconnecting
/// after an error as an application would. It records which ids were acknowledged and when.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(i64, Instant)>>>,
    /// Acknowledged writes that were held up (more than 500 ms): their completion time.
    stalled: Arc<Mutex<Vec<Instant>>>,
    errors: Arc<AtomicU64>,
    /// When each failed attempt ended.
    failed_at: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(c: &Cluster) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(AtomicU64::new(0));
        let failed_at = Arc::new(Mutex::new(Vec::new()));
        let stalled = Arc::new(Mutex::new(Vec::new()));
        let st = stalled.clone();
        let (port, password) = (c.proxy_port(), c.password());
        let (s, a, e, f) = (
            stop.clone(),
            acked.clone(),
            errors.clone(),
            failed_at.clone(),
        );
        let task = tokio::spawn(async move {
            let mut client: Option<tokio_postgres::Client> = None;
            let mut id = 0i64;
            while !s.load(Ordering::Relaxed) {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    let r = tokio::time::timeout(
                        Duration::from_secs(5),
                        tokio_postgres::Config::new()
                            .host("127.0.0.1")
                            .port(port)
                            .user("postgres")
                            .password(&password)
                            .dbname("test")
                            .connect(tokio_postgres::NoTls),
                    )
                    .await;
                    match r {
                        Ok(Ok((cl, conn))) => {
                            tokio::spawn(conn);
                            client = Some(cl);
                        }
                        other => {
                            eprintln!("writer: connect failed: {:?}", other.map(|r| r.err()));
                            e.fetch_add(1, Ordering::Relaxed);
                            f.lock().unwrap().push(Instant::now());
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                }
                let Some(cl) = client.as_ref() else { continue };
                id += 1;
                let started = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    cl.execute("INSERT INTO acked (id) VALUES ($1)", &[&id]),
                )
                .await;
                match r {
                    Ok(Ok(_)) => {
                        if started.elapsed() > Duration::from_millis(500) {
                            st.lock().unwrap().push(Instant::now());
                        }
                        a.lock().unwrap().push((id, Instant::now()))
                    }
                    other => {
                        let text = match other {
                            Ok(Err(e)) => e
                                .as_db_error()
                                .map_or(e.to_string(), |d| d.message().to_string()),
                            _ => "timeout".into(),
                        };
                        eprintln!("writer: insert {id} failed: {text}");
                        e.fetch_add(1, Ordering::Relaxed);
                        f.lock().unwrap().push(Instant::now());
                        client = None;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        });
        Writer {
            stop,
            acked,
            stalled,
            errors,
            failed_at,
            task,
        }
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// How long after `t` writes worked again: the first acknowledgement after the first
    /// failure that followed `t` (a write in flight at `t` may still have been acknowledged
    /// by the old primary), or the first write held up by the failover that then succeeded
    /// (pgwarden holds writes while it fails over). Waits up to `limit`.
    async fn first_ack_after(&self, t: Instant, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(at) = self
                .stalled
                .lock()
                .unwrap()
                .iter()
                .copied()
                .find(|s| *s > t)
            {
                return Some(at - t);
            }
            let failed = self
                .failed_at
                .lock()
                .unwrap()
                .iter()
                .copied()
                .find(|f| *f > t);
            let acked = failed.and_then(|f| {
                self.acked
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(_, at)| *at > f)
                    .map(|(_, at)| *at)
            });
            if let Some(at) = acked {
                return Some(at - t);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    async fn stop(self) -> Vec<i64> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let acked = self.acked.lock().unwrap();
        acked.iter().map(|(id, _)| *id).collect()
    }
}

async fn wait_acks(w: &Writer, n: usize) {
    let start = Instant::now();
    while w.acked_count() < n {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the writer got only {} acknowledgements ({} errors)",
            w.acked_count(),
            w.errors.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Client backends on node `id` other than pgwarden's own health checks and this query.
fn client_backends(c: &Cluster, id: u16) -> i64 {
    c.psql(id, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND application_name NOT LIKE 'pgwarden%'")
        .expect("query the old primary directly")
        .trim()
        .parse()
        .expect("a count")
}

#[test]
fn primary_killed_under_write_load_fails_over_and_the_old_primary_never_gets_traffic_again() {
    let c = Cluster::up(3);
    c.psql_proxy("test", "CREATE TABLE acked (id bigint PRIMARY KEY)")
        .unwrap();
    let before = cluster_state(&c);
    assert_eq!(before["primary"], 0);
    let generation = before["generation"].as_u64().unwrap();
    let old_pm = postmaster_pid(&c, 0);

    let acked = block(async {
        let w = Writer::start(&c);
        wait_acks(&w, 50).await;
        let killed_at = Instant::now();
        nix::sys::signal::kill(postmaster_pid(&c, 0), nix::sys::signal::Signal::SIGKILL).unwrap();
        let took = w
            .first_ack_after(killed_at, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "no write succeeded after the kill; events:\n{}",
                    sync(|| events_text(&c))
                )
            });
        eprintln!("primary killed (SIGKILL): first acknowledged write after {took:?}");
        let n = w.acked_count();
        wait_acks(&w, n + 50).await;
        w.stop().await
    });

    let after = wait_cluster(&c, Duration::from_secs(5), "a new primary", |s| {
        s["primary"].as_u64().is_some_and(|p| p != 0)
    });
    let new = after["primary"].as_u64().unwrap() as u16;
    assert_eq!(after["generation"].as_u64().unwrap(), generation + 1);
    let nodes = c.nodes();
    assert_eq!(nodes[0]["status"], "down");
    let ev = events_text(&c);
    assert!(ev.contains("failover started"), "{ev}");
    assert!(
        ev.contains(&format!("node {new} is the new primary")),
        "{ev}"
    );

    // Every write acknowledged after the failover (the last 50) is on the new primary; the
    // other standby follows it. (Commits acknowledged by the old primary but not yet sent to
    // any standby are lost in asynchronous mode, how many depends on the machine's load:
    // synchronous mode is the test for that.)
    let after_failover = &acked[acked.len().saturating_sub(50)..];
    let missing = missing_rows(&c, new, after_failover);
    assert!(
        missing.is_empty(),
        "acknowledged after the failover, missing on the new primary: {missing:?}"
    );
    let last = *acked.last().unwrap();
    let present = c
        .psql(
            new,
            "test",
            &format!("SELECT count(*) FROM acked WHERE id = {last}"),
        )
        .unwrap();
    assert_eq!(
        present.trim(),
        "1",
        "the last acknowledged row is on the new primary"
    );
    let other = (1..3).find(|i| *i != new).unwrap();
    c.wait_node(
        other as usize,
        Duration::from_secs(30),
        "follows the new primary",
        |n| n["status"] == "up" && n["replication_state"] == "streaming",
    );
    // The controller notes it on its own poll, shortly after the monitor sees it.
    wait_event(&c, &format!("node {other} streams from the new primary"));

    // The old primary is started again by hand: it comes back as a primary on the old
    // timeline. It is a false primary and gets nothing.
    wait_gone(&c, 0, old_pm);
    c.start_node(0);
    c.wait_node(0, Duration::from_secs(15), "pg_status up", |n| {
        n["pg_status"] == "up"
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(c.nodes()[0]["status"], "down");
    for i in 0..20 {
        c.psql_proxy(
            "test",
            &format!("INSERT INTO acked VALUES ({})", 1_000_000 + i),
        )
        .unwrap();
        c.psql_proxy("test", "SELECT count(*) FROM acked").unwrap();
    }
    assert_eq!(
        client_backends(&c, 0),
        0,
        "no client session reached the old primary"
    );
    let on_old = c
        .psql(0, "test", "SELECT count(*) FROM acked WHERE id >= 1000000")
        .unwrap();
    assert_eq!(on_old.trim(), "0", "no write reached the old primary");

    // Attaching it is refused, by the CLI and by pgpool's tool, and changes nothing.
    let out = c.pgwarden(&["node", "attach", "0"]);
    common::assert_error(&out, 1, "false primary");
    let out = pcp(&c, "pcp_attach_node", &["-n", "0"]);
    assert!(
        common::stderr(&out).contains("false primary"),
        "{}{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    assert_eq!(c.nodes()[0]["status"], "down");

    // The warden restarts: the state is read back, nothing is re-attached.
    let pid = std::fs::read_to_string(c.layout.warden_pid()).unwrap();
    let pid = nix::unistd::Pid::from_raw(pid.trim().parse().unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = common::pgwarden(&["sandbox", "up", "--dir", c.dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    let s = wait_cluster(&c, Duration::from_secs(10), "the primary read back", |s| {
        s["primary"].as_u64() == Some(new as u64)
    });
    assert_eq!(s["generation"].as_u64().unwrap(), generation + 1);
    std::thread::sleep(Duration::from_millis(1500));
    let nodes = c.nodes();
    assert_eq!(
        nodes[0]["status"], "down",
        "the restart did not re-attach the old primary"
    );
    assert_eq!(nodes[new as usize]["role"], "primary");
    c.psql_proxy("test", "INSERT INTO acked VALUES (2000000)")
        .unwrap();
    assert_eq!(client_backends(&c, 0), 0);
}

#[test]
fn hung_primary_is_failed_over_and_stays_fenced_after_it_wakes() {
    let c = Cluster::up(3);
    c.psql_proxy("test", "CREATE TABLE acked (id bigint PRIMARY KEY)")
        .unwrap();
    block(async {
        let w = Writer::start(&c);
        wait_acks(&w, 30).await;
        // The whole host hangs: every process of node 0 stops.
        let pids = node_pids(&c, 0);
        assert!(pids.len() > 3, "{pids:?}");
        let hung_at = Instant::now();
        for p in &pids {
            let _ = nix::sys::signal::kill(*p, nix::sys::signal::Signal::SIGSTOP);
        }
        let _cont = Cont(pids.clone());
        let took = w
            .first_ack_after(hung_at, Duration::from_secs(40))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "no write succeeded after the hang; events:\n{}",
                    sync(|| events_text(&c))
                )
            });
        eprintln!("primary hung (SIGSTOP): first acknowledged write after {took:?}");
        let n = w.acked_count();
        wait_acks(&w, n + 30).await;
        drop(_cont);
        // It wakes up: a primary again, on the old timeline, and fenced.
        sync(|| {
            c.wait_node(0, Duration::from_secs(15), "answers again", |n| {
                n["pg_status"] == "up"
            })
        });
        let n = w.acked_count();
        wait_acks(&w, n + 30).await;
        w.stop().await
    });
    let s = cluster_state(&c);
    assert_ne!(s["primary"], 0);
    std::thread::sleep(Duration::from_millis(1500));
    let nodes = c.nodes();
    assert_eq!(nodes[0]["status"], "down");
    assert_eq!(
        nodes[0]["pg_role"], "primary",
        "it woke up as a (false) primary"
    );
    assert_eq!(
        client_backends(&c, 0),
        0,
        "no client session is left on the old primary"
    );
}

/// Sends SIGCONT on drop, so a failing test never leaves a node stopped.
struct Cont(Vec<nix::unistd::Pid>);

impl Drop for Cont {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = nix::sys::signal::kill(*p, nix::sys::signal::Signal::SIGCONT);
        }
    }
}

#[test]
fn a_standby_killed_leaves_the_primary_and_its_sessions_alone() {
    let c = Cluster::up(3);
    c.psql_proxy("test", "CREATE TABLE t (v int)").unwrap();
    block(async {
        let s = c.client("test").await;
        s.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        nix::sys::signal::kill(postmaster_pid(&c, 2), nix::sys::signal::Signal::SIGKILL).unwrap();
        sync(|| {
            c.wait_node(2, Duration::from_secs(10), "down", |n| {
                n["status"] == "down"
            })
        });
        // The session on the primary goes on, its transaction intact.
        s.batch_execute("INSERT INTO t VALUES (2); COMMIT")
            .await
            .unwrap();
        let n: i64 = s
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 2);
    });
    let st = cluster_state(&c);
    assert_eq!(st["primary"], 0);
    assert_eq!(st["generation"], 0, "no failover for a standby");
    assert!(!events_text(&c).contains("failover"));
}

/// A primary that cannot take new connections for a while — every new backend waits on a lock
/// during its startup, as under a fork storm or a saturated host — but answers its sessions is
/// alive: the health checks (on their kept connection) pass, nobody is failed over, and the
/// proxy's sessions keep writing.
#[test]
fn a_primary_slow_to_accept_connections_is_not_failed_over() {
    let c = Cluster::up(2);
    c.psql_proxy("test", "CREATE TABLE t (v int)").unwrap();
    sync_wait_up(&c);
    block(async {
        let session = c.client("test").await;
        session
            .batch_execute("INSERT INTO t VALUES (0)")
            .await
            .unwrap();
        let locker = c.try_connect(c.node_port(0), "test").await.unwrap();
        // A new backend reads pg_database during its startup: it waits for this lock.
        locker
            .batch_execute("BEGIN; LOCK TABLE pg_catalog.pg_database IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        let attempt = tokio::time::timeout(
            Duration::from_millis(1500),
            c.try_connect(c.node_port(0), "test"),
        )
        .await;
        assert!(attempt.is_err(), "a new connection should wait on the lock");
        // Longer than the sandbox's health checks need to call a node down (period 1 s, two
        // attempts with a 1.5 s connect timeout, a 0.5 s retry delay), writing all along.
        let until = Instant::now() + Duration::from_secs(7);
        let mut v = 1;
        while Instant::now() < until {
            session
                .batch_execute(&format!("INSERT INTO t VALUES ({v})"))
                .await
                .unwrap();
            v += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let nodes = sync(|| c.nodes());
        assert_eq!(nodes[0]["status"], "up", "{:#}", nodes[0]);
        assert_eq!(nodes[0]["pg_status"], "up", "{:#}", nodes[0]);
        locker.batch_execute("ROLLBACK").await.unwrap();
        // New connections are served again.
        let fresh = c.client("test").await;
        let n: i64 = fresh
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, v);
        // A kept check connection that the server closes (pg_terminate_backend,
        // idle_session_timeout) is replaced within the same check: no failed check.
        let fails = |nodes: &Value| nodes[0]["health_check"]["fail_count"].as_u64();
        let before = fails(&sync(|| c.nodes()));
        for _ in 0..3 {
            let killed: i64 = fresh
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE application_name = 'pgwarden health check'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(killed, 1, "one kept check connection per node and warden");
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        let nodes = sync(|| c.nodes());
        assert_eq!(fails(&nodes), before, "{:#}", nodes[0]);
        assert_eq!(nodes[0]["status"], "up");
    });
    let st = cluster_state(&c);
    assert_eq!(st["primary"], 0);
    assert_eq!(st["generation"], 0, "no failover for a live primary");
    let events = events_text(&c);
    assert!(!events.contains("failover"), "{events}");
    assert!(!events.contains("-> down"), "{events}");
}

fn sync_wait_up(c: &Cluster) {
    for id in 0..2 {
        c.wait_node(id, Duration::from_secs(10), "up", |n| n["status"] == "up");
    }
}

#[test]
fn operations_by_hand_through_the_cli_and_pgpools_tools() {
    let c = Cluster::up(3);
    let out = |o: &std::process::Output| format!("{}{}", common::stdout(o), common::stderr(o));

    // pgpool's tools see the cluster.
    let o = pcp(&c, "pcp_node_count", &[]);
    assert_eq!(common::stdout(&o).trim(), "3", "{}", out(&o));
    let o = pcp(&c, "pcp_node_info", &["-n", "0"]);
    let line = common::stdout(&o);
    assert!(
        line.starts_with(&format!(
            "127.0.0.1 {} 2 0.333333 up up primary primary 0 none none ",
            c.node_port(0)
        )),
        "{}",
        out(&o)
    );
    let o = pcp(&c, "pcp_node_info", &["-n", "7"]);
    assert!(
        common::stderr(&o).contains("invalid node ID : 7"),
        "{}",
        out(&o)
    );

    // The other commands, against the real warden.
    let o = pcp(&c, "pcp_health_check_stats", &["-n", "1"]);
    let line = common::stdout(&o);
    assert!(
        line.starts_with(&format!("1 127.0.0.1 {} up standby ", c.node_port(1))),
        "{}",
        out(&o)
    );
    let o = pcp(&c, "pcp_pool_status", &[]);
    assert!(
        common::stdout(&o).contains(&format!("value: {}", c.node_port(2))),
        "{}",
        out(&o)
    );
    let o = pcp(&c, "pcp_watchdog_info", &[]);
    assert!(
        common::stderr(&o).contains("watchdog is not enabled"),
        "{}",
        out(&o)
    );
    let o = pcp(&c, "pcp_recovery_node", &["-n", "1"]);
    assert!(
        common::stderr(&o).contains("node 1 is in service (up); take it out first"),
        "{}",
        out(&o)
    );
    let o = pcp(&c, "pcp_reload_config", &[]);
    assert!(
        common::stdout(&o).contains("Command Successful"),
        "{}",
        out(&o)
    );

    // A wrong password is refused, and nothing changes.
    let bad = c.dir.join("pcppass.bad");
    std::fs::write(&bad, "*:*:postgres:wrong\n").unwrap();
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let o = Command::new("/usr/sbin/pcp_detach_node")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &c.layout.pcp_port().to_string(),
            "-U",
            "postgres",
            "-w",
            "-n",
            "1",
        ])
        .env("PCPPASSFILE", &bad)
        .output()
        .unwrap();
    assert!(
        common::stderr(&o).contains("authentication failed"),
        "{}",
        out(&o)
    );
    assert_eq!(c.nodes()[1]["status"], "up");

    // Detach a standby with pgpool's tool, attach it back with ours.
    let o = pcp(&c, "pcp_detach_node", &["-n", "1"]);
    assert!(
        common::stdout(&o).contains("Command Successful"),
        "{}",
        out(&o)
    );
    assert_eq!(c.nodes()[1]["status"], "down");
    let o = c.pgwarden(&["node", "attach", "1"]);
    assert!(o.status.success(), "{}", out(&o));
    c.wait_node(1, Duration::from_secs(10), "up again", |n| {
        n["status"] == "up"
    });

    // Refusals say why and change nothing.
    common::assert_error(
        &c.pgwarden(&["node", "attach", "9"]),
        1,
        "node 9 is not configured",
    );
    common::assert_error(
        &c.pgwarden(&["node", "attach", "1"]),
        1,
        "already in service",
    );
    common::assert_error(
        &c.pgwarden(&["node", "promote", "1"]),
        1,
        "switchover --to 1",
    );
    let o = pcp(&c, "pcp_promote_node", &["-n", "2"]);
    assert!(common::stderr(&o).contains("switchover"), "{}", out(&o));
    assert_eq!(cluster_state(&c)["primary"], 0);
    c.pgwarden(&["node", "detach", "2"]);
    c.pgwarden(&["node", "detach", "1"]);
    common::assert_error(
        &c.pgwarden(&["node", "detach", "0"]),
        1,
        "last node in service",
    );
    c.pgwarden(&["node", "attach", "1"]);
    c.pgwarden(&["node", "attach", "2"]);
    c.wait_node(1, Duration::from_secs(10), "up", |n| n["status"] == "up");
    c.wait_node(2, Duration::from_secs(10), "up", |n| n["status"] == "up");

    // Detaching the primary fails over, as in pgpool.
    c.psql_proxy("test", "CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
        .unwrap();
    let o = pcp(&c, "pcp_detach_node", &["-n", "0"]);
    assert!(
        common::stdout(&o).contains("Command Successful"),
        "{}",
        out(&o)
    );
    let s = wait_cluster(&c, Duration::from_secs(15), "a new primary", |s| {
        s["primary"].as_u64().is_some_and(|p| p != 0)
    });
    assert_eq!(s["generation"], 1);
    c.psql_proxy("test", "INSERT INTO t VALUES (2)").unwrap();
    let new = s["primary"].as_u64().unwrap() as u16;
    assert_eq!(
        c.psql(new, "test", "SELECT count(*) FROM t")
            .unwrap()
            .trim(),
        "2"
    );

    // A forced promotion of the other standby while the primary is healthy: the old one is
    // fenced first.
    let other = (1..3).find(|i| *i != new).unwrap();
    c.wait_node(
        other as usize,
        Duration::from_secs(30),
        "streams from the new primary",
        |n| n["replication_state"] == "streaming",
    );
    let o = c.pgwarden(&["node", "promote", &other.to_string(), "--force"]);
    assert!(o.status.success(), "{}", out(&o));
    let s = cluster_state(&c);
    assert_eq!(s["primary"].as_u64(), Some(other as u64));
    assert_eq!(s["generation"], 2);
    assert_eq!(c.nodes()[new as usize]["status"], "down");
    c.psql_proxy("test", "INSERT INTO t VALUES (3)").unwrap();
    let ev = c.pgwarden(&["events"]);
    let text = common::stdout(&ev);
    assert!(text.contains("detached"), "{text}");
    assert!(
        text.contains(&format!("node {other} is the new primary (generation 2)")),
        "{text}"
    );
    let json: Value = serde_json::from_slice(&c.pgwarden(&["events", "--json"]).stdout).unwrap();
    assert!(json.as_array().unwrap().len() > 10);
}

/// Every acknowledged id is in `acked` on node `id`.
fn missing_rows(c: &Cluster, id: u16, acked: &[i64]) -> Vec<i64> {
    let text = c
        .psql(id, "test", "SELECT string_agg(id::text, ',') FROM acked")
        .unwrap();
    let have: std::collections::HashSet<i64> = text
        .trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    acked
        .iter()
        .copied()
        .filter(|i| !have.contains(i))
        .collect()
}

#[test]
fn switchover_under_load_loses_no_committed_row_and_back_again_with_pcp() {
    let c = Cluster::up(3);
    c.psql_proxy("test", "CREATE TABLE acked (id bigint PRIMARY KEY)")
        .unwrap();
    let (acked, errors) = block(async {
        let w = Writer::start(&c);
        wait_acks(&w, 100).await;
        let o = sync(|| c.pgwarden(&["switchover", "--to", "1"]));
        assert!(
            o.status.success(),
            "{}{}\nevents:\n{}",
            common::stdout(&o),
            common::stderr(&o),
            sync(|| events_text(&c))
        );
        eprintln!("{}", common::stdout(&o).trim());
        let n = w.acked_count();
        wait_acks(&w, n + 100).await;
        sync(|| {
            c.wait_node(0, Duration::from_secs(30), "streams from node 1", |n| {
                n["replication_state"] == "streaming"
            })
        });
        let o = sync(|| pcp(&c, "pcp_promote_node", &["-s", "-n", "0"]));
        assert!(
            common::stdout(&o).contains("Command Successful"),
            "{}{}\nevents:\n{}",
            common::stdout(&o),
            common::stderr(&o),
            sync(|| events_text(&c))
        );
        let n = w.acked_count();
        wait_acks(&w, n + 100).await;
        let errors = w.errors.load(Ordering::Relaxed);
        (w.stop().await, errors)
    });
    let s = cluster_state(&c);
    assert_eq!(s["primary"], 0, "switched back to node 0");
    assert_eq!(s["generation"], 2);
    assert_eq!(
        missing_rows(&c, 0, &acked),
        Vec::<i64>::new(),
        "acknowledged rows lost"
    );
    assert_eq!(errors, 0, "clients saw errors during the switchovers");
    // Node 1 went back to being a standby of node 0, and streams.
    c.wait_node(1, Duration::from_secs(30), "a streaming standby", |n| {
        n["status"] == "up" && n["pg_role"] == "standby" && n["replication_state"] == "streaming"
    });
    c.wait_node(2, Duration::from_secs(30), "a streaming standby", |n| {
        n["status"] == "up" && n["replication_state"] == "streaming"
    });
    let ev = events_text(&c);
    assert!(ev.contains("switchover done"), "{ev}");
    // Refused: to the primary itself, to an unknown node.
    common::assert_error(
        &c.pgwarden(&["switchover", "--to", "0"]),
        1,
        "already the primary",
    );
    common::assert_error(
        &c.pgwarden(&["switchover", "--to", "5"]),
        1,
        "node 5 is not configured",
    );
}

#[test]
fn synchronous_mode_loses_no_acknowledged_row_when_the_primary_is_killed_again_and_again() {
    let c = Cluster::up_with(3, &["--synchronous"]);
    c.psql_proxy("test", "CREATE TABLE acked (id bigint PRIMARY KEY)")
        .unwrap();
    let sync_is = |want: u64| {
        wait_cluster(
            &c,
            Duration::from_secs(30),
            &format!("node {want} synchronous"),
            |s| {
                s["sync_standbys"]
                    .as_array()
                    .is_some_and(|a| a.len() == 1 && a[0] == want)
            },
        )
    };
    sync_is(1);
    // (The state names the standby before the primary does: invariant 4.)
    let start = Instant::now();
    loop {
        let names = c.psql(0, "postgres", "SHOW synchronous_standby_names");
        if names.as_deref().map(str::trim) == Ok("\"node1\"") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the primary names node 1 synchronous: {names:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pm0 = postmaster_pid(&c, 0);
    let (acked, blocked) = block(async {
        let w = Writer::start(&c);
        wait_acks(&w, 100).await;
        // First failure: only node 1, the synchronous standby, may be promoted.
        nix::sys::signal::kill(pm0, nix::sys::signal::Signal::SIGKILL).unwrap();
        let took = w
            .first_ack_after(Instant::now(), Duration::from_secs(30))
            .await;
        eprintln!("synchronous mode, first kill: writes back after {took:?}");
        sync(|| {
            wait_cluster(&c, Duration::from_secs(10), "node 1 promoted", |s| {
                s["primary"] == 1
            })
        });
        // Node 2 follows and becomes the synchronous standby.
        sync(|| sync_is(2));
        let n = w.acked_count();
        wait_acks(&w, n + 100).await;
        // Second failure.
        let pm1 = sync(|| postmaster_pid(&c, 1));
        nix::sys::signal::kill(pm1, nix::sys::signal::Signal::SIGKILL).unwrap();
        sync(|| {
            wait_cluster(&c, Duration::from_secs(15), "node 2 promoted", |s| {
                s["primary"] == 2
            })
        });
        // No standby is left: with sync_fallback = "block", commits wait.
        let before = w.acked_count();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let blocked = w.acked_count() - before;
        (w.stop().await, blocked)
    });
    let missing = missing_rows(&c, 2, &acked);
    assert!(
        missing.is_empty(),
        "{} acknowledged rows lost: {:?}…\nevents:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        events_text(&c)
    );
    assert!(acked.len() >= 200);
    assert!(
        blocked <= 1,
        "{blocked} commits were acknowledged with no standby to confirm them"
    );
    assert_eq!(
        c.psql(2, "postgres", "SHOW synchronous_standby_names")
            .unwrap()
            .trim(),
        "\"pgwarden_no_synchronous_standby\"",
        "commits on the last node wait for a standby"
    );
}

#[test]
fn pgpool_hook_commands_run_with_pgpools_placeholders() {
    let c = Cluster::up(3);
    let out = c.dir.join("hooks.out");
    let cfg = std::fs::read_to_string(c.config()).unwrap();
    let cfg = cfg.replacen(
        "auto = true\n",
        &format!(
            "auto = true\nfailover_command = \"echo failover %d %h %p %m %H %r %M %P %N %S %% >> {0}\"\nfollow_primary_command = \"echo follow %d %p %m %r >> {0}\"\n",
            out.display()
        ),
        1,
    );
    std::fs::write(c.config(), cfg).unwrap();
    // The warden restarts with the hooks.
    c.restart_warden();
    nix::sys::signal::kill(postmaster_pid(&c, 0), nix::sys::signal::Signal::SIGKILL).unwrap();
    let s = wait_cluster(&c, Duration::from_secs(20), "a new primary", |s| {
        s["primary"].as_u64().is_some_and(|p| p != 0)
    });
    let new = s["primary"].as_u64().unwrap() as u16;
    let other = (1..3).find(|i| *i != new).unwrap();
    let start = Instant::now();
    let text = loop {
        let t = std::fs::read_to_string(&out).unwrap_or_default();
        if t.lines().count() >= 2 || start.elapsed() > Duration::from_secs(10) {
            break t;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (p0, pn, po) = (c.node_port(0), c.node_port(new), c.node_port(other));
    assert!(
        text.contains(&format!(
            "failover 0 127.0.0.1 {p0} {new} 127.0.0.1 {pn} 0 0 127.0.0.1 {p0} %\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("follow {other} {po} {new} {pn}\n")),
        "{text}"
    );
    let ev = events_text(&c);
    assert!(ev.contains("failover_command: `echo failover 0"), "{ev}");
}

#[test]
fn primary_stopped_immediately_under_write_load_fails_over() {
    let c = Cluster::up(2);
    c.psql_proxy("test", "CREATE TABLE acked (id bigint PRIMARY KEY)")
        .unwrap();
    let acked = block(async {
        let w = Writer::start(&c);
        wait_acks(&w, 50).await;
        let stopped_at = Instant::now();
        sync(|| c.pg_ctl(0, &["stop", "-m", "immediate"]));
        let took = w
            .first_ack_after(stopped_at, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "writes never came back; events:\n{}",
                    sync(|| events_text(&c))
                )
            });
        eprintln!("primary stopped (pg_ctl stop -m immediate): writes back after {took:?}");
        let n = w.acked_count();
        wait_acks(&w, n + 50).await;
        w.stop().await
    });
    let s = cluster_state(&c);
    assert_eq!(s["primary"], 1);
    assert_eq!(c.nodes()[0]["status"], "down");
    let last = *acked.last().unwrap();
    assert_eq!(
        c.psql(
            1,
            "test",
            &format!("SELECT count(*) FROM acked WHERE id = {last}")
        )
        .unwrap()
        .trim(),
        "1"
    );
    // Started again by hand, it stays out.
    c.start_node(0);
    c.wait_node(0, Duration::from_secs(15), "answers", |n| {
        n["pg_status"] == "up"
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(c.nodes()[0]["status"], "down");
    c.psql_proxy("test", "INSERT INTO acked VALUES (-1)")
        .unwrap();
    assert_eq!(client_backends(&c, 0), 0);
}
