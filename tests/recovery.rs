//! Online recovery on real sandbox clusters, one agent per node over loopback TCP: a stopped
//! standby rebuilt while pgbench runs through the proxy, the old primary rejoined by pg_rewind
//! after a failover (and by a base backup when the rewind is impossible), the stock
//! `pcp_recovery_node`, pgpool-style scripts, the 2nd stage with idle and busy sessions,
//! recovery_timeout, an agent that is down or has another secret, and the refusals.

mod common;

use common::{
    events_text, get, node_pids, pcp, postmaster_pid, wait_cluster, wait_event, wait_gone, Cluster,
};
use serde_json::Value;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

fn out(o: &Output) -> String {
    format!("{}{}", common::stdout(o), common::stderr(o))
}

/// `pgwarden node recover ID` (waits for the end; without a terminal it prints each step).
fn recover(c: &Cluster, id: u16) -> Output {
    c.pgwarden(&["node", "recover", &id.to_string()])
}

/// The command succeeded; otherwise its output and the warden's events are shown.
fn assert_ok(c: &Cluster, o: &Output) {
    assert!(
        o.status.success(),
        "{}\nevents:\n{}",
        out(o),
        events_text(c)
    );
}

fn status(c: &Cluster, id: u16) -> String {
    c.nodes()[id as usize]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Whether node `id` streams from the current primary (pg_stat_replication on it).
fn streams(c: &Cluster, primary: u16, id: u16) -> bool {
    c.psql(
        primary,
        "postgres",
        &format!("SELECT state FROM pg_stat_replication WHERE application_name = 'node{id}'"),
    )
    .is_ok_and(|s| s == "streaming")
}

/// Stops node `id` with `pg_ctl stop -m immediate` and waits until the warden has it down.
fn stop_and_wait_down(c: &Cluster, id: u16) {
    c.pg_ctl(id, &["stop", "-m", "immediate"]);
    c.wait_node(id as usize, Duration::from_secs(20), "down", |n| {
        n["status"] == "down"
    });
}

/// Waits until node `id` is up again (after an attach, a health check must pass).
fn wait_up(c: &Cluster, id: u16) {
    c.wait_node(id as usize, Duration::from_secs(20), "up", |n| {
        n["status"] == "up"
    });
}

/// Rows of table `t` on node `id`, polled until it has caught up with `want` (replication).
fn wait_rows(c: &Cluster, id: u16, t: &str, want: i64) {
    let start = Instant::now();
    loop {
        let n: i64 = c
            .psql(id, "test", &format!("SELECT count(*) FROM {t}"))
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(-1);
        if n == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "node {id} has {n} rows in {t}, the primary {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count(c: &Cluster, id: u16, t: &str) -> i64 {
    c.psql(id, "test", &format!("SELECT count(*) FROM {t}"))
        .expect("count")
        .parse()
        .expect("a number")
}

fn pgbench(c: &Cluster, args: &[&str]) -> Command {
    let bin = pgwarden_sandbox::PgBin::locate().expect("PostgreSQL programs");
    let mut cmd = Command::new(bin.program("pgbench"));
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &c.proxy_port().to_string(),
        "-U",
        "postgres",
    ])
    .args(args)
    .env("PGPASSFILE", c.pgpass());
    cmd
}

#[test]
fn a_stopped_standby_is_rebuilt_while_pgbench_runs_with_no_client_error() {
    let c = Cluster::up(3);
    let o = pgbench(&c, &["-i", "-s", "5", "test"]).output().unwrap();
    assert!(o.status.success(), "{}", out(&o));
    stop_and_wait_down(&c, 2);

    // pgbench through the proxy for the whole recovery: reads and writes, reconnecting
    // never (a client error ends pgbench with a non-zero status).
    let bench = pgbench(&c, &["-c", "4", "-T", "12", "-n", "test"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let o = recover(&c, 2);
    let took = started.elapsed();
    assert_ok(&c, &o);
    let text = out(&o);
    assert!(
        text.contains("node 2 recovered by base backup from node 0"),
        "{text}"
    );
    // Without a terminal, each step is printed as a line.
    assert!(text.contains("[3/7] 1st stage"), "{text}");
    eprintln!("recovery of a standby under pgbench took {took:?}");

    let o = bench.wait_with_output().unwrap();
    let text = out(&o);
    assert!(
        o.status.success(),
        "pgbench failed during the recovery:\n{text}"
    );
    assert!(text.contains("number of failed transactions: 0"), "{text}");

    // Node 2 is a streaming standby in service with every row.
    wait_up(&c, 2);
    assert!(streams(&c, 0, 2));
    let want = count(&c, 0, "pgbench_history");
    assert!(want > 0);
    wait_rows(&c, 2, "pgbench_history", want);
    let s = get(&c, "/v1/nodes/2/recovery");
    assert_eq!(s["state"], "succeeded", "{s:#}");
    assert_eq!(s["method"], "base_backup", "{s:#}");
    assert!(s["bytes_done"].as_u64().unwrap_or(0) > 10_000_000, "{s:#}");
    let ev = events_text(&c);
    assert!(ev.contains("a standby on the primary's timeline"), "{ev}");
    // Each step is in the history.
    for step in [
        "step 1/7, checkpoint on the primary",
        "step 3/7, 1st stage",
        "step 7/7, attach",
    ] {
        assert!(ev.contains(&format!("node 2: {step}")), "{step}: {ev}");
    }

    // Its slot is in use on the primary (no slot left behind).
    let slots = c
        .psql(
            0,
            "postgres",
            "SELECT slot_name || ':' || active FROM pg_replication_slots ORDER BY 1",
        )
        .unwrap();
    assert!(slots.contains("node2:t"), "{slots}");
}

#[test]
fn the_old_primary_rejoins_by_pg_rewind_through_the_stock_pcp_recovery_node() {
    let c = Cluster::up(3);
    c.psql(
        0,
        "test",
        "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000)",
    )
    .unwrap();
    // Killed: it last ran as a primary, and its timeline forks from the new primary's.
    let pm = postmaster_pid(&c, 0);
    nix::sys::signal::kill(pm, nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_gone(&c, 0, pm);
    let s = wait_cluster(&c, Duration::from_secs(20), "a new primary", |s| {
        s["primary"].as_u64().is_some_and(|p| p != 0)
    });
    let new = s["primary"].as_u64().unwrap() as u16;
    c.psql(
        new,
        "test",
        "INSERT INTO t SELECT generate_series(1001, 1500)",
    )
    .unwrap();

    // Refused while it is the wrong node: the new primary itself, an unknown node.
    // (the stock client prints pgpool's ERROR but exits 0, as pgpool's own does)
    let o = pcp(&c, "pcp_recovery_node", &["-n", &new.to_string()]);
    let text = common::stderr(&o);
    assert!(
        text.contains("ERROR:  process recovery request failed"),
        "{}",
        out(&o)
    );
    assert!(
        text.contains(&format!("node {new} is the primary")),
        "{}",
        out(&o)
    );
    assert!(
        !common::stdout(&o).contains("Command Successful"),
        "{}",
        out(&o)
    );
    let o = recover(&c, 9);
    assert!(!o.status.success());
    assert!(out(&o).contains("node 9 is not configured"), "{}", out(&o));

    let started = Instant::now();
    let o = pcp(&c, "pcp_recovery_node", &["-n", "0"]);
    assert_ok(&c, &o);
    assert!(
        common::stdout(&o).contains("pcp_recovery_node -- Command Successful"),
        "{}",
        out(&o)
    );
    eprintln!("rewind of the old primary took {:?}", started.elapsed());

    let s = get(&c, "/v1/nodes/0/recovery");
    assert_eq!(s["state"], "succeeded", "{s:#}");
    assert_eq!(s["method"], "rewind", "{s:#}");
    let ev = events_text(&c);
    assert!(
        ev.contains("pg_rewind because it last ran as a primary"),
        "{ev}"
    );
    wait_up(&c, 0);
    assert!(streams(&c, new, 0));
    wait_rows(&c, 0, "t", 1500);
    assert_eq!(
        c.psql(0, "postgres", "SELECT pg_is_in_recovery()").unwrap(),
        "t"
    );
    // It listens on its own port (the primary's config files were not taken over).
    assert_eq!(
        c.psql(0, "postgres", "SHOW port").unwrap(),
        c.node_port(0).to_string()
    );

    // Killed again before its first restartpoint, its control file still names the old
    // timeline: a second rewind would break it (found by bench/recovery.sh), so it is copied
    // afresh, and streams.
    stop_and_wait_down(&c, 0);
    let o = recover(&c, 0);
    assert_ok(&c, &o);
    assert!(out(&o).contains("recovered by base backup"), "{}", out(&o));
    wait_up(&c, 0);
    assert!(streams(&c, new, 0));
    wait_rows(&c, 0, "t", 1500);
}

#[test]
fn a_rewind_that_cannot_work_falls_back_to_a_base_backup() {
    let c = Cluster::up(2);
    c.psql(
        0,
        "test",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1)",
    )
    .unwrap();
    let pm = postmaster_pid(&c, 0);
    nix::sys::signal::kill(pm, nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_gone(&c, 0, pm);
    wait_cluster(&c, Duration::from_secs(20), "node 1 primary", |s| {
        s["primary"] == 1
    });
    c.psql(1, "test", "INSERT INTO t VALUES (2)").unwrap();
    // The old primary's WAL is gone: pg_rewind cannot find where it diverged.
    for e in std::fs::read_dir(c.data_dir(0).join("pg_wal"))
        .unwrap()
        .flatten()
    {
        if e.path().is_file() {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let o = recover(&c, 0);
    assert_ok(&c, &o);
    assert!(out(&o).contains("recovered by base backup"), "{}", out(&o));
    let ev = events_text(&c);
    assert!(ev.contains("pg_rewind failed"), "{ev}");
    assert!(ev.contains("falling back to a base backup"), "{ev}");
    wait_up(&c, 0);
    wait_rows(&c, 0, "t", 2);
}

#[test]
fn refusals_agent_down_and_wrong_secret_change_nothing() {
    let c = Cluster::up(3);
    // In service: refused, the node untouched.
    let o = recover(&c, 1);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains("node 1 is in service (up)"), "{}", out(&o));
    assert!(out(&o).contains("pgwarden node detach 1"), "{}", out(&o));
    assert!(streams(&c, 0, 1));
    let o = recover(&c, 0);
    assert!(out(&o).contains("node 0 is the primary"), "{}", out(&o));

    stop_and_wait_down(&c, 2);
    // Its agent is down: refused before anything is done.
    let pid_file = c.dir.join("run").join("agent2.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let o = recover(&c, 2);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains("agent of the node"), "{}", out(&o));
    assert_eq!(status(&c, 2), "down");
    // `sandbox up` starts the missing agent again.
    let o = common::pgwarden(&["sandbox", "up", "--dir", c.dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    // (it starts node 2's server too: stop it again)
    c.pg_ctl(2, &["stop", "-m", "fast"]);

    // The warden signs with another secret than the agents know: refused, and the agent
    // logs who tried.
    let secret = c.dir.join("agent.secret");
    let good = std::fs::read(&secret).unwrap();
    std::fs::write(&secret, b"0123456789abcdef0123456789abcdef-not-the-one\n").unwrap();
    let o = recover(&c, 2);
    std::fs::write(&secret, &good).unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).to_lowercase().contains("auth"), "{}", out(&o));
    assert_eq!(status(&c, 2), "down");
    assert!(node_pids(&c, 2).is_empty(), "nothing was started on node 2");
    let log = std::fs::read_to_string(c.dir.join("log").join("agent2.log")).unwrap_or_default();
    assert!(
        log.contains("127.0.0.1"),
        "the agent logs the refused peer:\n{log}"
    );

    // With the right secret it works.
    let o = recover(&c, 2);
    assert_ok(&c, &o);
    wait_up(&c, 2);
}

/// pgpool's sample recovery_1st_stage, without SSH (the "remote" host is this one): a slot,
/// pg_basebackup, the recovery settings, port. And pgpool_remote_start.
const FIRST_STAGE: &str = r#"#!/bin/bash
# pgpool-II style recovery_1st_stage: $1 primary PGDATA, $2 target host, $3 target PGDATA,
# $4 primary port, $5 target node id, $6 target port, $7 primary host
set -e
PRIMARY_NODE_PGDATA="$1"; DEST_NODE_HOST="$2"; DEST_NODE_PGDATA="$3"
PRIMARY_NODE_PORT="$4"; DEST_NODE_ID="$5"; DEST_NODE_PORT="$6"; PRIMARY_NODE_HOST="$7"
echo "$@" > "$PRIMARY_NODE_PGDATA/../stage1.args"
SLOT=node${DEST_NODE_ID}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
$PGBIN/psql -h $PRIMARY_NODE_HOST -p $PRIMARY_NODE_PORT -U postgres -d postgres -Atc \
  "SELECT pg_create_physical_replication_slot('$SLOT') WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '$SLOT')"
rm -rf "$DEST_NODE_PGDATA"
$PGBIN/pg_basebackup -h $PRIMARY_NODE_HOST -p $PRIMARY_NODE_PORT -U postgres -D "$DEST_NODE_PGDATA" -X stream -S $SLOT
cat >> "$DEST_NODE_PGDATA/postgresql.auto.conf" <<EOT
primary_conninfo = 'host=$PRIMARY_NODE_HOST port=$PRIMARY_NODE_PORT user=postgres passfile=''$PGPASSFILE'' application_name=node$DEST_NODE_ID'
primary_slot_name = '$SLOT'
port = $DEST_NODE_PORT
EOT
touch "$DEST_NODE_PGDATA/standby.signal"
"#;

const REMOTE_START: &str = r#"#!/bin/bash
# pgpool_remote_start: $1 target host, $2 target PGDATA
set -e
echo "$@" > "$PGDATA/../remote_start.args"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
$PGBIN/pg_ctl -w -l "$2/../remote_start.log" -D "$2" start
"#;

fn install_script(c: &Cluster, node: u16, name: &str, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = c.data_dir(node).join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let owner = std::fs::metadata(c.data_dir(node)).unwrap();
    use std::os::unix::fs::MetadataExt;
    std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
}

#[test]
fn pgpool_style_scripts_run_with_pgpools_arguments() {
    let c = Cluster::up(2);
    install_script(&c, 0, "recovery_1st_stage", FIRST_STAGE);
    install_script(&c, 0, "pgpool_remote_start", REMOTE_START);
    c.reconfigure(
        "[recovery]\nrecovery_1st_stage_command = \"recovery_1st_stage\"\nremote_start_command = \"pgpool_remote_start\"\n",
    );
    stop_and_wait_down(&c, 1);
    c.psql(
        0,
        "test",
        "CREATE TABLE t AS SELECT generate_series(1, 100) id",
    )
    .unwrap();
    let o = recover(&c, 1);
    assert_ok(&c, &o);
    let args = std::fs::read_to_string(c.dir.join("stage1.args")).unwrap();
    assert_eq!(
        args.trim(),
        format!(
            "{} 127.0.0.1 {} {} 1 {} 127.0.0.1",
            c.data_dir(0).display(),
            c.data_dir(1).display(),
            c.node_port(0),
            c.node_port(1)
        )
    );
    let args = std::fs::read_to_string(c.dir.join("remote_start.args")).unwrap();
    assert_eq!(
        args.trim(),
        format!("127.0.0.1 {}", c.data_dir(1).display())
    );
    wait_up(&c, 1);
    assert!(streams(&c, 0, 1));
    wait_rows(&c, 1, "t", 100);
    let s = get(&c, "/v1/nodes/1/recovery");
    assert_eq!(s["method"], "script", "{s:#}");

    // A failing script: the step, the exit and the script's output are named; the node
    // stays down.
    install_script(
        &c,
        0,
        "recovery_1st_stage",
        "#!/bin/sh\necho 'no space left on the target' >&2\nexit 3\n",
    );
    c.pgwarden(&["node", "detach", "1"]);
    c.wait_node(1, Duration::from_secs(10), "down", |n| {
        n["status"] == "down"
    });
    let o = recover(&c, 1);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    let text = out(&o);
    assert!(text.contains("failed at 1st stage"), "{text}");
    assert!(text.contains("no space left on the target"), "{text}");
    assert_eq!(status(&c, 1), "down");
}

#[test]
fn second_stage_waits_for_busy_sessions_closes_idle_ones_and_holds_new_ones() {
    let c = Cluster::up(2);
    install_script(
        &c,
        0,
        "recovery_2nd_stage",
        "#!/bin/sh\necho \"$@\" > \"$1/../stage2.args\"\ndate +%s.%N > \"$1/../stage2.at\"\n",
    );
    c.reconfigure(
        "[recovery]\nrecovery_2nd_stage_command = \"recovery_2nd_stage\"\nclient_idle_limit_in_recovery = \"2s\"\nrecovery_timeout = \"60s\"\n",
    );
    stop_and_wait_down(&c, 1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let idle = c.client("test").await;
        idle.simple_query("SELECT 1").await.unwrap();
        // Idle too: a pipeline opened by Flush and answered, whose Sync never comes (asyncpg
        // prepares so). (It held the 2nd stage until recovery_timeout.)
        let mut flushed = common::raw::login_at(&c, c.proxy_port()).await;
        flushed
            .write_all(&common::raw::prepare_flush("s", "SELECT 1"))
            .await
            .unwrap();
        let answered: Vec<u8> = common::raw::read_until(&mut flushed, b'T')
            .await
            .iter()
            .map(|(tag, _)| *tag)
            .collect();
        assert_eq!(
            answered, b"1tT",
            "ParseComplete, ParameterDescription, RowDescription"
        );
        // And a COPY to the server that stopped after one row.
        idle.batch_execute("CREATE TABLE copied (x int)")
            .await
            .unwrap();
        let copying = c.client("test").await;
        let mut sink = Box::pin(
            copying
                .copy_in::<_, &'static [u8]>("COPY copied FROM STDIN")
                .await
                .unwrap(),
        );
        futures::SinkExt::send(&mut sink, b"1\n".as_slice())
            .await
            .unwrap();
        // Idle as well: an open part that failed, with more of the pipeline sent behind the
        // error and no Sync (the server skips it: nothing more is owed).
        let mut failed = common::raw::login_at(&c, c.proxy_port()).await;
        let bad = [
            common::raw::message(b'P', &[b"\0", b"SELEC 1", b"\0", &[0, 0]]),
            common::raw::message(b'H', &[]),
        ]
        .concat();
        failed.write_all(&bad).await.unwrap();
        common::raw::read_until(&mut failed, b'E').await;
        failed
            .write_all(&common::raw::execute_flush("SELECT 1"))
            .await
            .unwrap();
        // Idle too: a long pipeline (over 256 KiB, sent on in parts) that stopped half-way,
        // without a Flush or a Sync: the part sent is answered at once, then the node waits
        // for the client. (The part's last answers waited in the server's buffer, and the
        // session counted as busy.)
        let mut long = common::raw::login_at(&c, c.proxy_port()).await;
        let padded = format!("SELECT 1{}", " ".repeat(1000));
        let parse = common::raw::message(b'P', &[b"\0", padded.as_bytes(), b"\0", &[0, 0]]);
        long.write_all(&parse.repeat(300)).await.unwrap();
        let answered = common::raw::read_until(&mut long, b'1').await;
        assert_eq!(answered.len(), 1, "ParseComplete");
        // Busy in an open pipeline across the start of the 2nd stage: two statements sent with
        // a Flush each and no Sync, the first answered at once, the second waiting for a lock
        // held (directly on the primary) until 3 s into the 2nd stage, past the 2 s limit.
        // Counted idle from its Flush, or from the first one's answers, it was cut off.
        let locker = c.try_connect(c.node_port(0), "test").await.unwrap();
        locker
            .simple_query("SELECT pg_advisory_lock(42)")
            .await
            .unwrap();
        let mut sleeper = common::raw::login_at(&c, c.proxy_port()).await;
        let two = [
            common::raw::execute_flush("SELECT 1"),
            common::raw::execute_flush("SELECT pg_advisory_lock(42)"),
        ]
        .concat();
        sleeper.write_all(&two).await.unwrap();
        let first: String = common::raw::read_until(&mut sleeper, b'C')
            .await
            .iter()
            .map(|(tag, _)| char::from(*tag))
            .collect();
        assert_eq!(first, "12DC", "the first statement's answers");
        let sleeper = tokio::spawn(async move {
            let answered: String =
                common::raw::read_until_within(&mut sleeper, b'C', Duration::from_secs(120))
                    .await
                    .iter()
                    .map(|(tag, _)| char::from(*tag))
                    .collect();
            (answered, Instant::now(), sleeper)
        });
        // A client that stopped reading a large result: idle, though pgwarden has answers for
        // it (they wait in full socket buffers). (It held the 2nd stage until
        // recovery_timeout.)
        let query = |sql: &str| common::raw::message(b'Q', &[sql.as_bytes(), b"\0"]);
        let mut stalled = common::raw::login_at(&c, c.proxy_port()).await;
        stalled
            .write_all(&query(
                "SELECT repeat('x', 1000) FROM generate_series(1, 100000)",
            ))
            .await
            .unwrap();
        // And one that reads a large result slowly through the 2nd stage (see `read_slowly`:
        // each write of pgwarden's to it waits longer than the limit for room): busy, not idle.
        // It takes the rest at full speed 13 s into the 2nd stage.
        let mut slow = common::raw::login_at(&c, c.proxy_port()).await;
        slow.write_all(&query(
            "SELECT repeat('x', 1000) FROM generate_series(1, 100000)",
        ))
        .await
        .unwrap();
        // Busy through the whole 1st stage and into the 2nd.
        let busy = c.client("test").await;
        let busy_query = tokio::spawn(async move {
            let r = busy.simple_query("SELECT pg_sleep(8)").await;
            (
                r.map(drop),
                Instant::now(),
                std::time::SystemTime::now(),
                busy,
            )
        });
        let o = tokio::task::block_in_place(|| c.pgwarden(&["node", "recover", "1", "--no-wait"]));
        assert!(o.status.success(), "{}", out(&o));
        // Once new sessions are held, a newcomer waits instead of being refused.
        let start = Instant::now();
        while !events_text_async(&c)
            .await
            .contains("2nd stage: new sessions wait")
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{}",
                events_text_async(&c).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            !busy_query.is_finished(),
            "the 1st stage outlasted the busy statement: the test proves nothing"
        );
        assert!(
            !sleeper.is_finished(),
            "the statement behind the lock ended before the 2nd stage (or was cut off)"
        );
        let held_at = Instant::now();
        let (hurry, hurried) = tokio::sync::oneshot::channel::<()>();
        let slow = tokio::spawn(async move { read_slowly(&mut slow, hurried).await });
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(13)).await;
            let _ = hurry.send(());
        });
        let unlock = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            locker
                .simple_query("SELECT pg_advisory_unlock(42)")
                .await
                .unwrap();
            locker
        });
        let asked = Instant::now();
        let newcomer = tokio::spawn({
            let port = c.proxy_port();
            let pw = c.password();
            async move {
                let r = tokio_postgres::Config::new()
                    .host("127.0.0.1")
                    .port(port)
                    .user("postgres")
                    .password(pw)
                    .dbname("test")
                    .connect(tokio_postgres::NoTls)
                    .await;
                let at = Instant::now();
                (
                    r.map(|(cl, conn)| {
                        tokio::spawn(conn);
                        cl
                    }),
                    at,
                )
            }
        });
        // The busy session's statement finishes normally: it was waited for.
        let (r, finished, finished_wall, busy) = busy_query.await.unwrap();
        assert!(
            r.is_ok(),
            "the busy session's statement was interrupted: {r:?}"
        );
        // Idle from the end of its statement, not from its start: it may go on at once. (It
        // was closed as soon as its answer was relayed, the 8 s of its statement counted as
        // idle.)
        busy.simple_query("SELECT 1")
            .await
            .expect("a session whose statement has just ended is not idle");
        // The idle one was closed after its 2 s limit, with the reason.
        let e = idle.simple_query("SELECT 1").await.unwrap_err();
        let closed = e.to_string().contains("closed")
            || e.as_db_error()
                .is_some_and(|d| d.message().contains("recovering a node"));
        assert!(closed, "{e}");
        closed_as_idle(&mut flushed, "the session in a Flush-opened pipeline").await;
        let (answered, answered_at, mut sleeper) = sleeper.await.unwrap();
        assert_eq!(
            answered, "12DC",
            "the waiting statement's ParseComplete, BindComplete, row and CommandComplete"
        );
        assert!(answered_at.duration_since(held_at) >= Duration::from_secs(3));
        drop(unlock.await.unwrap());
        closed_as_idle(&mut sleeper, "the session idle after its flushed statement").await;
        closed_as_idle(
            &mut long,
            "the session that stopped half-way through a long pipeline",
        )
        .await;
        closed_as_idle(&mut failed, "the session whose open part failed").await;
        assert_eq!(
            slow.await.unwrap(),
            (100000, 'Z'),
            "the slow reader got its whole result"
        );
        // The one that stopped reading was closed: its connection ends before its result does
        // (no FATAL: pgwarden was in the middle of a row it could not send).
        let got = common::raw::read_to_close(
            &mut stalled,
            Duration::from_secs(30),
            "the session that stopped reading",
        )
        .await;
        assert!(
            got.len() < 90_000_000,
            "{} bytes: the whole result came",
            got.len()
        );
        // It is seldom told why (pgwarden was in the middle of a row); the log says.
        let log = std::fs::read_to_string(c.layout.warden_log()).unwrap();
        assert!(
            log.contains("closes sessions whose client has read nothing for 10 s"),
            "{log}"
        );
        let e = sink.as_mut().finish().await.unwrap_err();
        assert!(
            e.as_db_error()
                .is_some_and(|d| d.message().contains("recovering a node"))
                || copying.is_closed(),
            "the stopped COPY was closed: {e}"
        );
        assert!(copying.is_closed());
        // The newcomer got in once the 2nd stage was over, after the busy one had ended.
        let (newcomer, at) = newcomer.await.unwrap();
        let newcomer = newcomer.expect("a held session is let in afterwards, not refused");
        assert!(
            at >= finished,
            "the newcomer got in before the busy session ended"
        );
        assert!(at.duration_since(asked) >= Duration::from_secs(1));
        newcomer.simple_query("SELECT 1").await.unwrap();
        drop(busy);
        // The 2nd stage ran after the busy session was done.
        let ran: f64 = std::fs::read_to_string(c.dir.join("stage2.at"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let ended = finished_wall
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            ran >= ended,
            "2nd stage at {ran}, busy session ended at {ended}"
        );
    });
    let stage2 = std::fs::read_to_string(c.dir.join("stage2.args")).unwrap();
    assert!(
        stage2.starts_with(&c.data_dir(0).display().to_string()),
        "{stage2}"
    );
    // --watch follows the running recovery to its end without starting one.
    let o = c.pgwarden(&["node", "recover", "1", "--watch"]);
    assert_ok(&c, &o);
    assert!(
        common::stdout(&o).contains("node 1 recovered by base backup"),
        "{}",
        out(&o)
    );
    let s = wait_recovery_end(&c, 1);
    assert_eq!(s["state"], "succeeded", "{s:#}");
    wait_up(&c, 1);
}

/// Reads a raw session through the proxy to its end, which must come within 10 s with the
/// FATAL of an online recovery's idle limit; what it read.
async fn closed_as_idle(s: &mut tokio::net::TcpStream, what: &str) -> String {
    let said = common::raw::read_to_close(s, Duration::from_secs(10), what).await;
    let said = String::from_utf8_lossy(&said);
    assert!(
        said.contains("pgwarden is recovering a node and closes sessions idle"),
        "{what}: {said:?}"
    );
    said.into_owned()
}

/// Reads a simple query's answers slowly, 64 KiB a second (a writer that waits for room in the
/// socket's buffers is woken only once a good part of them is free: about 1.3 MiB here, so
/// each of pgwarden's writes to this client waits about 20 s, longer than `STALL_FLOOR`),
/// until its ReadyForQuery or error, or at full speed once `hurry` has said so: the rows, and
/// the tag of the last message.
async fn read_slowly(
    s: &mut tokio::net::TcpStream,
    mut hurry: tokio::sync::oneshot::Receiver<()>,
) -> (usize, char) {
    let (mut rows, mut since_pause, mut fast) = (0usize, 0usize, false);
    loop {
        let (tag, body) = common::raw::read_message(s).await;
        match tag {
            b'D' => rows += 1,
            b'Z' | b'E' => return (rows, char::from(tag)),
            _ => {}
        }
        since_pause += body.len();
        fast = fast || hurry.try_recv().is_ok();
        if since_pause >= 64 << 10 && !fast {
            since_pause = 0;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn events_text_async(c: &Cluster) -> String {
    tokio::task::block_in_place(|| events_text(c))
}

/// Polls GET /v1/nodes/ID/recovery until the recovery has ended.
fn wait_recovery_end(c: &Cluster, id: u16) -> Value {
    let start = Instant::now();
    loop {
        let s = get(c, &format!("/v1/nodes/{id}/recovery"));
        if s["state"] != "running" {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "{s:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn recovery_timeout_expiring_leaves_the_node_out_and_the_cluster_working() {
    let c = second_stage_cluster("3s");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // A session in a transaction that does not end: with no idle limit it is waited for,
        // until recovery_timeout.
        let s = c.client("test").await;
        s.simple_query("CREATE TABLE IF NOT EXISTS t (id int)")
            .await
            .unwrap();
        s.simple_query("BEGIN; INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        let o = tokio::task::block_in_place(|| recover(&c, 1));
        assert_eq!(o.status.code(), Some(1), "{}", out(&o));
        let text = out(&o);
        assert!(text.contains("failed at 2nd stage"), "{text}");
        assert!(
            text.contains("still connected after recovery_timeout (3 s)"),
            "{text}"
        );
        // The session is intact and commits; new sessions get in.
        s.simple_query("COMMIT").await.unwrap();
        let other = c.client("test").await;
        let n = other.simple_query("SELECT count(*) FROM t").await.unwrap();
        assert!(
            matches!(&n[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("1"))
        );
    });
    assert!(!c.dir.join("stage2.ran").exists());
    assert_eq!(status(&c, 1), "down");
    // The slot made for it was dropped, and it was not left running.
    let slots = c
        .psql(
            0,
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'node1'",
        )
        .unwrap();
    assert_eq!(slots, "0");
    let ev = events_text(&c);
    assert!(ev.contains("stays out of service"), "{ev}");
    wait_event(&c, "recovery of node 1 failed at 2nd stage");

    // pgpool's -1: a session idle in its transaction is closed at once (its write undone), a
    // busy one once its statement has ended, and the 2nd stage runs.
    let cfg = std::fs::read_to_string(c.config()).unwrap().replace(
        "recovery_timeout = \"3s\"\n",
        "recovery_timeout = \"60s\"\nclient_idle_limit_in_recovery = -1\n",
    );
    std::fs::write(c.config(), cfg).unwrap();
    c.restart_warden();
    rt.block_on(async {
        let mut idle = common::raw::login_at(&c, c.proxy_port()).await;
        idle.write_all(&common::raw::message(
            b'Q',
            &[b"BEGIN; INSERT INTO t VALUES (2)\0"],
        ))
        .await
        .unwrap();
        common::raw::read_until(&mut idle, b'Z').await;
        let busy = c.client("test").await;
        let busy_query = tokio::spawn(async move {
            let r = busy.simple_query("SELECT pg_sleep(3)").await.map(drop);
            (r, busy)
        });
        // A client that reads a large result slowly (see `read_slowly`) is busy, not idle "at
        // once": it reads slowly until 13 s into the 2nd stage, then takes the rest at once.
        let mut slow = common::raw::login_at(&c, c.proxy_port()).await;
        slow.write_all(&common::raw::message(
            b'Q',
            &[b"SELECT repeat('x', 1000) FROM generate_series(1, 100000)\0"],
        ))
        .await
        .unwrap();
        let (hurry, hurried) = tokio::sync::oneshot::channel::<()>();
        let slow = tokio::spawn(async move { read_slowly(&mut slow, hurried).await });
        let recovery = recover_to_second_stage(&c).await;
        assert!(
            !slow.is_finished(),
            "the slow reader ended before the 2nd stage"
        );
        tokio::time::sleep(Duration::from_secs(13)).await;
        let _ = hurry.send(());
        let o = recovery.await.unwrap();
        assert_ok(&c, &o);
        assert_eq!(
            slow.await.unwrap(),
            (100000, 'Z'),
            "the slow reader got its whole result"
        );
        let said = closed_as_idle(&mut idle, "the session idle in its transaction").await;
        assert!(
            said.contains("idle at once (recovery.client_idle_limit_in_recovery = -1)"),
            "{said:?}"
        );
        let (r, busy) = busy_query.await.unwrap();
        assert!(
            r.is_ok(),
            "the busy session's statement was interrupted: {r:?}"
        );
        drop(busy);
    });
    assert!(c.dir.join("stage2.ran").exists());
    wait_up(&c, 1);
    assert_eq!(
        c.psql(0, "test", "SELECT count(*) FROM t WHERE id = 2")
            .unwrap(),
        "0"
    );
}

/// Two nodes, node 1 stopped and down, and a 2nd-stage script that leaves `stage2.ran` beside
/// the data directories; `recovery_timeout` as given.
fn second_stage_cluster(recovery_timeout: &str) -> Cluster {
    let c = Cluster::up(2);
    install_script(
        &c,
        0,
        "recovery_2nd_stage",
        "#!/bin/sh\ntouch \"$1/../stage2.ran\"\n",
    );
    c.reconfigure(&format!(
        "[recovery]\nrecovery_2nd_stage_command = \"recovery_2nd_stage\"\nrecovery_timeout = \"{recovery_timeout}\"\n"
    ));
    stop_and_wait_down(&c, 1);
    c
}

/// Starts `pgwarden node recover 1` and waits until its 2nd stage holds new sessions; the
/// command's output, once it ends.
async fn recover_to_second_stage(c: &Cluster) -> tokio::task::JoinHandle<Output> {
    let mut recovery = common::pgwarden(&["node", "recover", "1"]);
    recovery.env("PGWARDEN_CONFIG", c.config());
    let recovery = tokio::task::spawn_blocking(move || recovery.output().unwrap());
    let start = Instant::now();
    while !events_text_async(c)
        .await
        .contains("2nd stage: new sessions wait")
    {
        assert!(start.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    recovery
}

/// A cancel request gets through while an online recovery's 2nd stage holds new sessions:
/// the statement the stage waits for can be cancelled, and once its client has left the stage
/// goes on. (The request's connection waited with the new sessions, until the stage ended:
/// here, until the statement did, or recovery_timeout.)
#[test]
fn a_cancel_request_gets_through_a_second_stage() {
    let c = second_stage_cluster("60s");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let busy = c.client("test").await;
        let token = busy.cancel_token();
        let query = tokio::spawn(async move {
            let r = busy.simple_query("SELECT pg_sleep(120)").await.map(drop);
            (r, busy)
        });
        let recovery = recover_to_second_stage(&c).await;
        let (r, busy) = tokio::time::timeout(Duration::from_secs(20), async {
            token.cancel_query(tokio_postgres::NoTls).await.unwrap();
            query.await.unwrap()
        })
        .await
        .expect("the cancel request did not get through the 2nd stage");
        let e = r.expect_err("the statement ran to its end");
        assert_eq!(
            e.as_db_error().map(|d| d.code().code()),
            Some("57014"),
            "{e}"
        );
        // (With no idle limit, the stage waits for every session to leave.)
        drop(busy);
        let o = recovery.await.unwrap();
        assert_ok(&c, &o);
    });
    assert!(c.dir.join("stage2.ran").exists());
    wait_up(&c, 1);
}

#[test]
fn auto_recovery_rebuilds_a_failed_standby_with_nobody_there() {
    let c = Cluster::up(2);
    c.reconfigure("[recovery]\nauto = true\n");
    c.psql(
        0,
        "test",
        "CREATE TABLE t AS SELECT generate_series(1, 10) id",
    )
    .unwrap();
    stop_and_wait_down(&c, 1);
    // Nobody asks: after the first backoff (10 s) the warden rebuilds it.
    wait_up_within(&c, 1, Duration::from_secs(60));
    let s = get(&c, "/v1/nodes/1/recovery");
    assert_eq!(s["state"], "succeeded", "{s:#}");
    assert!(streams(&c, 0, 1));
    wait_rows(&c, 1, "t", 10);
    let ev = events_text(&c);
    assert!(ev.contains("auto-recovery: node 1 failed earlier"), "{ev}");

    // A node detached by hand is left alone.
    let o = c.pgwarden(&["node", "detach", "1"]);
    assert!(o.status.success(), "{}", out(&o));
    std::thread::sleep(Duration::from_secs(15));
    assert_eq!(status(&c, 1), "down");
    let s = get(&c, "/v1/nodes/1/recovery");
    assert_eq!(s["state"], "succeeded", "no second recovery ran: {s:#}");
}

fn wait_up_within(c: &Cluster, id: u16, limit: Duration) {
    let start = Instant::now();
    while status(c, id) != "up" {
        assert!(
            start.elapsed() < limit,
            "node {id} is not up after {limit:?}; events:\n{}",
            events_text(c)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills the agent started by hand for a node the sandbox does not know of.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

#[test]
fn a_brand_new_node_is_added_by_a_reload_and_recovered_from_nothing() {
    let c = Cluster::up(2);
    c.psql(
        0,
        "test",
        "CREATE TABLE t AS SELECT generate_series(1, 42) id",
    )
    .unwrap();
    // A third host: its agent runs, its data directory does not exist yet.
    let bigger = pgwarden_sandbox::Layout::new(&c.dir, 3, c.base).unwrap();
    let bin = pgwarden_sandbox::PgBin::locate().unwrap();
    let run_as = pgwarden_sandbox::RunAs::detect().unwrap();
    let pids =
        pgwarden_sandbox::start_agents(&bigger, &bin, std::path::Path::new(common::EXE), run_as)
            .unwrap();
    let (_, pid) = pids.iter().find(|(id, _)| *id == 2).copied().unwrap();
    let _agent = KillOnDrop(pid);
    assert!(!bigger.data_dir(2).exists());

    let mut cfg = std::fs::read_to_string(c.config()).unwrap();
    cfg.push_str(&format!(
        "\n[[backend]]\nid = 2\nhost = \"127.0.0.1\"\nport = {}\ndata_dir = \"data2\"\napplication_name = \"node2\"\nagent = \"127.0.0.1:{}\"\n",
        bigger.node_port(2),
        bigger.agent_port(2)
    ));
    std::fs::write(c.config(), cfg).unwrap();
    // pgpool's way: reload, then recover.
    let o = pcp(&c, "pcp_reload_config", &[]);
    assert!(
        common::stdout(&o).contains("Command Successful"),
        "{}",
        out(&o)
    );
    let n = c.nodes();
    assert_eq!(n.as_array().unwrap().len(), 3, "{n:#}");
    assert_eq!(n[2]["status"], "down", "{n:#}");
    let ev = events_text(&c);
    assert!(ev.contains("node 2 (127.0.0.1:"), "{ev}");

    // --json: the final status for scripts, on stdout.
    let o = c.pgwarden(&["node", "recover", "2", "--json"]);
    assert_ok(&c, &o);
    let s: Value = serde_json::from_str(&common::stdout(&o)).expect("JSON on stdout");
    assert_eq!(s["state"], "succeeded", "{s:#}");
    assert_eq!(s["method"], "base_backup", "{s:#}");
    assert_eq!(s["node"], 2, "{s:#}");
    assert!(events_text(&c).contains("base backup because the node has no data directory yet"));
    wait_up(&c, 2);
    assert!(streams(&c, 0, 2));
    let port = bigger.node_port(2);
    let rows = c.psql_at(port, "test", "SELECT count(*) FROM t").unwrap();
    assert_eq!(rows, "42");
    // Reads are balanced to it too: SHOW POOL_NODES lists it up.
    let pool_nodes = c.psql_proxy("test", "SHOW POOL_NODES").unwrap();
    assert!(pool_nodes.contains(&port.to_string()), "{pool_nodes}");
    // Its server is stopped before the sandbox goes (the sandbox does not know it).
    c.pg_ctl_dir(&bigger.data_dir(2), &["stop", "-m", "fast"]);
}
