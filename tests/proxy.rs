//! The front door on real clusters, with real clients: psql, pgbench, tokio-postgres.
//! Where each statement ran is proven by `inet_server_port()` in the statement itself.

mod common;

use common::{primary_weight_zero, restart_with_proxy_settings, Cluster};
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `f` on a fresh runtime (the cluster fixture is synchronous).
fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn port_of(row: &tokio_postgres::Row, col: usize) -> u16 {
    row.get::<_, i32>(col) as u16
}

/// A session whose reads go to node 1 (a standby).
/// `BEGIN READ ONLY`, then a read that shows the transaction runs on the standby.
async fn begin_read_only_on(s: &tokio_postgres::Client, standby: u16, what: &str) {
    s.batch_execute("BEGIN READ ONLY").await.unwrap();
    let at = s.query_one("SELECT inet_server_port()", &[]).await.unwrap();
    assert_eq!(
        port_of(&at, 0),
        standby,
        "{what}: the transaction runs on the standby"
    );
}

/// Takes node 1 out of service and waits until the cluster shows it down. (From a runtime's
/// thread: the API's blocking client must not run on it.)
fn detach_standby(c: &Cluster) {
    tokio::task::block_in_place(|| {
        let o = c.pgwarden(&["node", "detach", "1"]);
        assert!(o.status.success(), "{}", common::stderr(&o));
        c.wait_node(1, Duration::from_secs(10), "down", |n| {
            n["status"] == "down"
        });
    });
}

async fn standby_session(c: &Cluster) -> tokio_postgres::Client {
    for _ in 0..60 {
        let cl = c.client("test").await;
        let p = port_of(
            &cl.query_one("SELECT inet_server_port()", &[])
                .await
                .unwrap(),
            0,
        );
        if p == c.node_port(1) {
            return cl;
        }
    }
    panic!("no session read from the standby");
}

#[test]
fn reads_spread_over_the_nodes_and_writes_reach_the_primary() {
    let c = Cluster::up(3);
    c.psql_proxy("test", "CREATE TABLE t (id int primary key, v text)")
        .unwrap();
    let mut seen: HashMap<u16, usize> = HashMap::new();
    for i in 0..24 {
        // A new session each time: session-level balancing picks a node per session.
        let out = c
            .psql_proxy(
                "test",
                &format!("SELECT inet_server_port() FROM (SELECT count(*) FROM t) s -- {i}"),
            )
            .unwrap();
        *seen.entry(out.parse().unwrap()).or_default() += 1;
    }
    eprintln!("reads per node port: {seen:?}");
    assert!(
        seen.keys().any(|p| *p != c.node_port(0)),
        "no read reached a standby: {seen:?}"
    );
    assert!(seen.len() >= 2, "{seen:?}");

    // Writes, in any session, reach the primary; a standby would refuse them.
    for i in 0..10 {
        c.psql_proxy("test", &format!("INSERT INTO t VALUES ({i}, 'x')"))
            .unwrap();
    }
    assert_eq!(c.psql(0, "test", "SELECT count(*) FROM t").unwrap(), "10");
    // A function not known to be read-only, a locking read, a data-modifying CTE: primary.
    for sql in [
        "SELECT inet_server_port() FROM (SELECT nextval('s')) x",
        "SELECT inet_server_port() FROM t WHERE id = 1 FOR UPDATE",
        "WITH d AS (UPDATE t SET v = 'y' WHERE id = 2 RETURNING id) SELECT inet_server_port() FROM d",
        "/*NO LOAD BALANCE*/ SELECT inet_server_port()",
    ] {
        if sql.contains("nextval") {
            c.psql_proxy("test", "CREATE SEQUENCE IF NOT EXISTS s").unwrap();
        }
        let port: u16 = c.psql_proxy("test", sql).unwrap().parse().unwrap();
        assert_eq!(port, c.node_port(0), "{sql}");
    }
    // SHOW POOL_NODES counts the reads per node.
    let nodes = c.psql_proxy("test", "SHOW POOL_NODES").unwrap();
    let standby_selects: u64 = nodes
        .lines()
        .filter(|l| l.contains("|standby|"))
        .map(|l| l.split('|').nth(8).unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(standby_selects >= 1, "{nodes}");
}

#[test]
fn a_session_reads_its_own_writes_under_a_write_load() {
    let c = Cluster::up(2);
    c.psql_proxy(
        "test",
        "CREATE TABLE ryw (id int primary key, payload text)",
    )
    .unwrap();
    block(async {
        // Background write load through the proxy, so standbys always have something to replay.
        let writer = c.client("test").await;
        let load = tokio::spawn(async move {
            for i in 100_000..101_000 {
                if writer
                    .execute("INSERT INTO ryw VALUES ($1, repeat('x', 200))", &[&i])
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        // A session whose load-balance node is the standby (a session on the primary would
        // trivially read its writes).
        let client = standby_session(&c).await;
        let mut on_standby = 0;
        for i in 0..150 {
            client
                .execute("INSERT INTO ryw VALUES ($1, 'mine')", &[&i])
                .await
                .unwrap();
            if i % 30 == 29 {
                // Give the standby time to catch up, so reads go there too.
                tokio::time::sleep(Duration::from_millis(2500)).await;
            }
            let row = client
                .query_one(
                    "SELECT count(*)::int, inet_server_port() FROM ryw WHERE id = $1",
                    &[&i],
                )
                .await
                .unwrap();
            assert_eq!(
                row.get::<_, i32>(0),
                1,
                "read {i} did not see its own write"
            );
            if port_of(&row, 1) != c.node_port(0) {
                on_standby += 1;
            }
        }
        load.abort();
        eprintln!("{on_standby} of 150 reads-after-write ran on the standby");
        assert!(on_standby >= 1, "the standby path was never exercised");
    });
}

/// Read-your-writes holds with `synchronous_commit = off`, where a commit returns before its
/// WAL is written: the floor is where the primary inserts WAL, not where it has written it.
/// The WAL writer is slowed (10 s) so that a commit stays unwritten while the session reads.
/// (Before, a health check after the commit read the write position, short of the commit; a
/// standby that had replayed that far served the read, without the row.)
#[test]
fn a_session_reads_its_own_writes_with_asynchronous_commit() {
    let c = Cluster::up(2);
    c.psql(0, "postgres", "ALTER SYSTEM SET wal_writer_delay = '10s'")
        .unwrap();
    c.psql(0, "postgres", "SELECT pg_reload_conf()").unwrap();
    c.psql_proxy("test", "CREATE TABLE ryw_async (id int primary key)")
        .unwrap();
    block(async {
        let client = standby_session(&c).await;
        client
            .batch_execute("SET synchronous_commit = off")
            .await
            .unwrap();
        let read = |i: i32| {
            let client = &client;
            async move {
                let row = client
                    .query_one(
                        "SELECT count(*)::int, inet_server_port() FROM ryw_async WHERE id = $1",
                        &[&i],
                    )
                    .await
                    .unwrap();
                (row.get::<_, i32>(0), port_of(&row, 1))
            }
        };
        for i in 0..3 {
            client
                .execute("INSERT INTO ryw_async VALUES ($1)", &[&i])
                .await
                .unwrap();
            // Health checks of both nodes come and go meanwhile (every second).
            for _ in 0..25 {
                let (n, port) = read(i).await;
                assert_eq!(n, 1, "a read after write {i} on port {port} did not see it");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // Once the WAL is written (a checkpoint writes it), the standby serves the session.
        c.psql(0, "postgres", "CHECKPOINT").unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (n, port) = read(2).await;
            assert_eq!(n, 1, "port {port}");
            if port == c.node_port(1) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the standby never served the session"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// The floor that keeps a session's reads off a standby that has not replayed its write: with
/// the standby's replay paused, a read after the write goes to the primary and sees it, as
/// long as the pause lasts (a floor taken before the write would let the standby serve it,
/// without the row); once replay resumes, the standby serves the session again.
#[test]
fn a_standby_behind_the_sessions_write_gets_none_of_its_reads() {
    let c = Cluster::up(2);
    c.psql_proxy("test", "CREATE TABLE floor (id int)").unwrap();
    block(async {
        let client = standby_session(&c).await;
        c.psql(1, "test", "SELECT pg_wal_replay_pause()").unwrap();
        client
            .execute("INSERT INTO floor VALUES (1)", &[])
            .await
            .unwrap();
        let read = || async {
            let row = client
                .query_one("SELECT count(*)::int, inet_server_port() FROM floor", &[])
                .await
                .unwrap();
            (row.get::<_, i32>(0), port_of(&row, 1))
        };
        // Right after the write, and after health checks of both nodes have seen the primary
        // past it and the standby short of it.
        for wait_ms in [0, 2500, 1200] {
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            let (count, port) = read().await;
            assert_eq!(
                count, 1,
                "a read {wait_ms} ms on missed the session's own write"
            );
            assert_eq!(port, c.node_port(0), "the paused standby served the read");
        }
        c.psql(1, "test", "SELECT pg_wal_replay_resume()").unwrap();
        let started = Instant::now();
        loop {
            let (count, port) = read().await;
            assert_eq!(count, 1);
            if port == c.node_port(1) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the standby never served the session again after catching up"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// The first column of the first DataRow among `messages`, as text.
fn first_value(messages: &[(u8, Vec<u8>)]) -> Option<String> {
    let (_, body) = messages.iter().find(|(t, _)| *t == b'D')?;
    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
    let len = usize::try_from(len).ok()?;
    Some(String::from_utf8_lossy(&body[6..6 + len]).into_owned())
}

/// Read-your-writes for a write in a pipeline's open part that began with a read on the
/// primary (statement-level balancing, the standby's replay paused, so a read it serves misses
/// the write). Each session: a read, then an INSERT, both with Flush (as psycopg 3 fetches in
/// `conn.pipeline()`), then Sync and a read of the row. Before, the INSERT went where the part
/// ran without counting as a write, and the read after it could go to the standby.
#[test]
fn a_write_in_a_pipeline_begun_with_a_read_on_the_primary_is_read_back() {
    use common::raw::{execute_flush, login_at, message, read_until};
    use tokio::io::AsyncWriteExt;
    let c = Cluster::up(2);
    restart_with_proxy_settings(&c, "load_balance = \"statement\"\n");
    c.psql_proxy("test", "CREATE TABLE pipe_ryw (id int)")
        .unwrap();
    let started = Instant::now();
    while c
        .psql(1, "test", "SELECT to_regclass('pipe_ryw') IS NOT NULL")
        .unwrap()
        .trim()
        != "t"
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the standby never had the table"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.psql(1, "test", "SELECT pg_wal_replay_pause()").unwrap();
    let (primary, standby) = (c.node_port(0).to_string(), c.node_port(1).to_string());
    block(async {
        let mut began_on_primary = 0;
        let mut read_on_standby = 0;
        for i in 0..30 {
            let mut s = login_at(&c, c.proxy_port()).await;
            s.write_all(&execute_flush("SELECT inet_server_port()"))
                .await
                .unwrap();
            let port = first_value(&read_until(&mut s, b'C').await).unwrap();
            if port == primary {
                began_on_primary += 1;
            }
            s.write_all(&execute_flush(&format!(
                "INSERT INTO pipe_ryw VALUES ({i})"
            )))
            .await
            .unwrap();
            read_until(&mut s, b'C').await;
            s.write_all(&message(b'S', &[])).await.unwrap();
            read_until(&mut s, b'Z').await;
            let sql = format!(
                "SELECT count(*)::text || ' ' || inet_server_port() FROM pipe_ryw WHERE id = {i}\0"
            );
            s.write_all(&message(b'Q', &[sql.as_bytes()]))
                .await
                .unwrap();
            let got = first_value(&read_until(&mut s, b'Z').await).unwrap();
            let (count, at) = got.split_once(' ').unwrap();
            assert_eq!(
                count, "1",
                "session {i} (its pipeline began on port {port}) read on port {at} without its own write"
            );
            if at == standby {
                read_on_standby += 1;
            }
        }
        eprintln!("{began_on_primary} of 30 pipelines began on the primary, {read_on_standby} reads after them ran on the standby");
        assert!(
            began_on_primary > 0,
            "no pipeline began on the primary: the case was never exercised"
        );
    });
}

#[test]
fn transactions_stay_on_one_node() {
    let c = Cluster::up(3);
    c.psql_proxy("test", "CREATE TABLE tx (a int)").unwrap();
    block(async {
        let client = c.client("test").await;
        // A read-write transaction runs on the primary, reads included.
        client.batch_execute("BEGIN").await.unwrap();
        let mut ports = Vec::new();
        for _ in 0..5 {
            ports.push(port_of(
                &client
                    .query_one("SELECT inet_server_port()", &[])
                    .await
                    .unwrap(),
                0,
            ));
        }
        client
            .execute("INSERT INTO tx VALUES (1)", &[])
            .await
            .unwrap();
        ports.push(port_of(
            &client
                .query_one("SELECT inet_server_port() FROM tx", &[])
                .await
                .unwrap(),
            0,
        ));
        client.batch_execute("COMMIT").await.unwrap();
        assert!(ports.iter().all(|p| *p == c.node_port(0)), "{ports:?}");

        // A read-only transaction stays on one node, whichever it is, and refuses writes.
        for _ in 0..5 {
            let client = c.client("test").await;
            client.batch_execute("BEGIN READ ONLY").await.unwrap();
            let first = port_of(
                &client
                    .query_one("SELECT inet_server_port()", &[])
                    .await
                    .unwrap(),
                0,
            );
            for _ in 0..3 {
                let p = port_of(
                    &client
                        .query_one("SELECT inet_server_port()", &[])
                        .await
                        .unwrap(),
                    0,
                );
                assert_eq!(p, first);
            }
            let err = client
                .execute("INSERT INTO tx VALUES (2)", &[])
                .await
                .unwrap_err();
            assert_eq!(err.code().map(|c| c.code()), Some("25006"), "{err}");
            client.batch_execute("ROLLBACK").await.unwrap();
        }
    });
}

#[test]
fn session_state_behaves_as_on_one_server() {
    let c = Cluster::up(3);
    block(async {
        let client = c.client("test").await;
        // Settings reach every node the session uses.
        client
            .batch_execute("SET application_name = 'pgwarden-test'; ")
            .await
            .unwrap();
        client
            .batch_execute("SET search_path = pg_catalog")
            .await
            .unwrap();
        for _ in 0..5 {
            let row = client
                .query_one(
                    "SELECT current_setting('application_name'), current_setting('search_path')",
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>(0), "pgwarden-test");
            assert_eq!(row.get::<_, String>(1), "pg_catalog");
        }
        // Temporary tables live on the primary; the session follows them.
        client
            .batch_execute("CREATE TEMP TABLE scratch (a int); INSERT INTO scratch VALUES (1), (2)")
            .await
            .unwrap();
        let n: i64 = client
            .query_one("SELECT count(*) FROM scratch", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 2);
        // SQL-level prepared statements too.
        client
            .batch_execute("PREPARE q(int) AS SELECT $1 + 1")
            .await
            .unwrap();
        let rows = client.simple_query("EXECUTE q(41)").await.unwrap();
        let v = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(v.as_deref(), Some("42"));
    });
    // A SET inside a transaction (simple query) outlives the COMMIT: every later read sees it,
    // wherever it runs.
    block(async {
        let client = standby_session(&c).await;
        client.batch_execute("BEGIN").await.unwrap();
        client.batch_execute("SET work_mem = '7MB'").await.unwrap();
        client.batch_execute("COMMIT").await.unwrap();
        // Long enough for the monitor to see the standby caught up, so reads could go there.
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        for _ in 0..5 {
            let rows = client
                .simple_query("SELECT current_setting('work_mem') || ' on ' || inet_server_port()")
                .await
                .unwrap();
            let v = rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            });
            assert!(
                v.as_deref().is_some_and(|v| v.starts_with("7MB on ")),
                "{v:?}"
            );
        }
    });
    // LISTEN / NOTIFY through the proxy, with psql on both ends.
    let out = c
        .psql_proxy(
            "test",
            "LISTEN chan; SELECT pg_notify('chan', 'hello'); SELECT 1",
        )
        .unwrap_or_else(|e| e);
    assert!(
        out.contains("Asynchronous notification \"chan\" with payload \"hello\""),
        "{out}"
    );
}

/// A long-lived session that runs the same settings again and again (an application's own
/// pool setting `application_name` at each checkout, asyncpg's `RESET ALL` at each release)
/// has a node it comes to later replay the latest of them only, and sees there what one server
/// would show. pgwarden's record of the settings kept every one of them, and a new connection
/// replayed hundreds of statements before the session's first read on it.
#[test]
fn repeated_settings_are_replayed_once_on_a_node_the_session_comes_to_later() {
    let c = Cluster::up(3);
    // The standbys log every statement, the replayed ones included.
    for n in 1..3 {
        let conf = c.data_dir(n).join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nlog_statement = 'all'\n");
        std::fs::write(&conf, text).unwrap();
        c.psql(n, "test", "SELECT pg_reload_conf()").unwrap();
    }
    block(async {
        for attempt in 0..30 {
            let cl = c.client("test").await;
            // Run on the primary (settings go there) and recorded.
            for i in 0..200 {
                cl.batch_execute(&format!("SET application_name = 'app_{attempt}_{i}'"))
                    .await
                    .unwrap();
            }
            cl.batch_execute("SET statement_timeout = '17s'")
                .await
                .unwrap();
            cl.batch_execute("SET work_mem = '3MB'").await.unwrap();
            // A custom parameter stays defined after RESET ALL, with the value ''.
            cl.batch_execute("SET myapp.tenant = '7'").await.unwrap();
            for _ in 0..100 {
                cl.batch_execute("RESET ALL").await.unwrap();
            }
            cl.batch_execute("SET work_mem = '5MB'").await.unwrap();
            // A SET that fails changes nothing, here or there.
            let err = cl.batch_execute("SET work_mem = 'lots'").await.unwrap_err();
            assert!(format!("{err:?}").contains("work_mem"), "{err:?}");
            cl.batch_execute(&format!("SET application_name = 'final_{attempt}'"))
                .await
                .unwrap();
            // The first read: on the session's load-balance node.
            let row = cl
                .query_one(
                    "SELECT inet_server_port(), current_setting('application_name'), \
                     current_setting('statement_timeout'), current_setting('work_mem'), \
                     current_setting('myapp.tenant')",
                    &[],
                )
                .await
                .unwrap();
            let port = port_of(&row, 0);
            assert_eq!(row.get::<_, String>(1), format!("final_{attempt}"));
            assert_eq!(row.get::<_, String>(2), "0", "RESET ALL undid it");
            assert_eq!(row.get::<_, String>(3), "5MB");
            assert_eq!(row.get::<_, String>(4), "");
            if port == c.node_port(0) {
                continue;
            }
            let log = std::fs::read_to_string(
                c.dir.join(format!("log/node{}.log", c.node_of_port(port))),
            )
            .unwrap();
            // Statements run, as simple Queries ("statement: …") or through the extended
            // protocol, as pgwarden replays one ("execute <name>: …").
            let count = |needle: &str| {
                log.lines()
                    .filter_map(|l| {
                        l.split_once("LOG:  statement: ")
                            .or_else(|| l.split_once("LOG:  execute "))
                    })
                    .filter(|(_, ran)| ran.contains(needle))
                    .count()
            };
            assert_eq!(count(&format!("app_{attempt}_")), 0, "superseded");
            assert_eq!(count(&format!("'final_{attempt}'")), 1);
            assert_eq!(count("SET statement_timeout = '17s'"), 0);
            // (RESET ALL and work_mem once for this session: no other session ran them there.)
            assert_eq!(count("RESET ALL"), 1);
            assert_eq!(count("SET work_mem = '3MB'"), 0);
            assert_eq!(count("SET work_mem = '5MB'"), 1);
            return;
        }
        panic!("no session read from a standby in 30 tries");
    });
}

#[test]
fn settings_through_the_extended_protocol_are_replayed_not_pinned() {
    let c = Cluster::up(3);
    block(async {
        // A session that reads from node 1.
        let client = standby_session(&c).await;
        // tokio-postgres sends these with Parse/Bind/Execute (a named statement).
        client
            .execute("SET application_name = 'ext-set'", &[])
            .await
            .unwrap();
        client
            .execute("SET search_path = pg_catalog, public", &[])
            .await
            .unwrap();
        for _ in 0..5 {
            let row = client
                .query_one(
                    "SELECT inet_server_port(), current_setting('application_name'), current_setting('search_path')",
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(
                port_of(&row, 0),
                c.node_port(1),
                "reads stay on the standby"
            );
            assert_eq!(row.get::<_, String>(1), "ext-set");
            assert_eq!(row.get::<_, String>(2), "pg_catalog, public");
        }
        // RESET is replayed as well, and the primary has the setting too.
        client.execute("RESET application_name", &[]).await.unwrap();
        let row = client
            .query_one(
                "SELECT inet_server_port(), current_setting('application_name')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(port_of(&row, 0), c.node_port(1));
        assert_eq!(row.get::<_, String>(1), "");
        client
            .batch_execute("CREATE TEMP TABLE t (a int)")
            .await
            .unwrap();
        let row = client
            .query_one(
                "SELECT inet_server_port(), current_setting('search_path')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            port_of(&row, 0),
            c.node_port(0),
            "temp table: pinned to the primary"
        );
        assert_eq!(row.get::<_, String>(1), "pg_catalog, public");
        // SET LOCAL belongs to its transaction: not replayed.
        client.batch_execute("BEGIN").await.unwrap();
        client
            .execute("SET LOCAL statement_timeout = '7s'", &[])
            .await
            .unwrap();
        client.batch_execute("COMMIT").await.unwrap();
        let row = client
            .query_one("SELECT current_setting('statement_timeout')", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "0");
    });
}

/// `set_config(name, value, false)` changes a session setting like `SET`, but is a function
/// call: it runs on the primary, and the session's later reads on a standby must see it too;
/// alone in its query, it writes nothing, so those reads need not wait for the standby. Row-level-security setups set their tenant this way, with the
/// value as a parameter; pg_dump empties `search_path` this way before its read-only
/// transaction. pgwarden reads the value back from where the call ran and replays it
/// elsewhere; a name that is not a constant pins the session to the primary.
#[test]
fn set_config_calls_follow_the_session_to_every_node() {
    let c = Cluster::up(2);
    let (primary, standby) = (c.node_port(0), c.node_port(1));
    c.psql(
        0,
        "test",
        "CREATE SCHEMA s; CREATE TABLE s.t (v text); INSERT INTO s.t VALUES ('s'); \
         CREATE TABLE public.t (v text); INSERT INTO public.t VALUES ('public')",
    )
    .unwrap();
    let start = Instant::now();
    while c.psql(1, "test", "SELECT count(*) FROM s.t").as_deref() != Ok("1") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "standby caught up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    async fn read(s: &tokio_postgres::Client) -> (String, Option<String>, u16) {
        let row = s
            .query_one(
                "SELECT v, current_setting('app.tenant', true), inet_server_port() \
                 FROM t ORDER BY v DESC LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), port_of(&row, 2))
    }
    // Reads until one runs on `node` (the first may go to the primary, until the standby has
    // replayed up to where the primary was after the call: it counts as a write, and the
    // standby qualifies at its next health check, a second apart, later on a loaded
    // machine); each read must see `want`, wherever it runs.
    async fn read_on(s: &tokio_postgres::Client, node: u16, want: (&str, Option<&str>)) {
        for _ in 0..250 {
            let (v, tenant, port) = read(s).await;
            assert_eq!((v.as_str(), tenant.as_deref()), want, "on {port}");
            if port == node {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no read ran on {node}");
    }
    block(async {
        let s = standby_session(&c).await;
        // The extended protocol, the value a parameter.
        s.query_one("SELECT set_config('search_path', $1, false)", &[&"s"])
            .await
            .unwrap();
        s.query_one("SELECT set_config('app.tenant', $1, false)", &[&"42"])
            .await
            .unwrap();
        // Nothing was written: the very next reads run on the standby, not on the primary
        // as after a write.
        for _ in 0..3 {
            let got = read(&s).await;
            assert_eq!(got, ("s".into(), Some("42".into()), standby));
        }
        // A simple query, as pg_dump sends it.
        s.simple_query("SELECT pg_catalog.set_config('search_path', 'public', false)")
            .await
            .unwrap();
        let got = read(&s).await;
        assert_eq!(got, ("public".into(), Some("42".into()), standby));
        // In a transaction: kept by COMMIT, undone by ROLLBACK, as on one server.
        s.batch_execute("BEGIN; SELECT set_config('app.tenant', '7', false); COMMIT")
            .await
            .unwrap();
        read_on(&s, standby, ("public", Some("7"))).await;
        s.batch_execute("BEGIN").await.unwrap();
        s.query_one("SELECT set_config('app.tenant', $1, false)", &[&"8"])
            .await
            .unwrap();
        s.batch_execute("ROLLBACK").await.unwrap();
        read_on(&s, standby, ("public", Some("7"))).await;
        // The session's writes on the primary use them as well.
        s.batch_execute("INSERT INTO t VALUES (current_setting('app.tenant'))")
            .await
            .unwrap();
        assert_eq!(
            c.psql(
                0,
                "test",
                "SELECT string_agg(v, ',' ORDER BY v) FROM public.t"
            )
            .unwrap(),
            "7,public"
        );
        // is_local true, as PostgREST sets its role and claims in each request's transaction:
        // the transaction's own, whatever the names; the session is neither pinned nor changed.
        read_on(&s, standby, ("public", Some("7"))).await;
        for _ in 0..3 {
            s.batch_execute("BEGIN READ ONLY").await.unwrap();
            let row = s
                .query_one(
                    "SELECT set_config('search_path', $1, true), set_config($2, $3, true), \
                     inet_server_port()",
                    &[&"s", &"request.claims", &"{}"],
                )
                .await
                .unwrap();
            assert_eq!(
                port_of(&row, 2),
                standby,
                "a read-only transaction on the standby"
            );
            let (v, ..) = read(&s).await;
            assert_eq!(v, "s", "in the transaction");
            s.batch_execute("COMMIT").await.unwrap();
            read_on(&s, standby, ("public", Some("7"))).await;
        }
        // A name that is not a constant cannot be followed: the session stays where it ran.
        s.query_one("SELECT set_config($1, $2, false)", &[&"app.tenant", &"9"])
            .await
            .unwrap();
        for _ in 0..3 {
            let (_, tenant, port) = read(&s).await;
            assert_eq!((tenant.as_deref(), port), (Some("9"), primary), "pinned");
        }
    });
}

/// pg_dump through pgwarden writes what it writes directly. (It empties `search_path` with
/// `set_config` first, so that view definitions and defaults come out schema-qualified: a
/// dump read where that call did not reach would restore wrongly.)
#[test]
fn pg_dump_through_pgwarden_matches_a_direct_dump() {
    let c = Cluster::up(2);
    c.psql(
        0,
        "test",
        "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL DEFAULT lower('X')); \
         INSERT INTO items (name) SELECT 'item ' || g FROM generate_series(1, 50) g; \
         CREATE VIEW named AS SELECT id, upper(name) AS name FROM items WHERE id > 10; \
         CREATE FUNCTION twice(i int) RETURNS int LANGUAGE sql AS 'SELECT i * 2'; \
         CREATE INDEX items_name ON items (name)",
    )
    .unwrap();
    let bin = pgwarden_sandbox::PgBin::locate().unwrap();
    let dump = |port: u16| -> String {
        let out = Command::new(bin.program("pg_dump"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-p"])
            .arg(port.to_string())
            .env("PGPASSFILE", c.pgpass())
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_dump: {}", common::stderr(&out));
        // (pg_dump's `\restrict` lines carry a random key.)
        common::stdout(&out)
            .lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let direct = dump(c.node_port(0));
    assert!(direct.contains("FROM public.items"), "{direct}");
    for _ in 0..2 {
        assert_eq!(dump(c.proxy_port()), direct);
    }
}

/// A setting changed inside a transaction lasts as PostgreSQL says it does (a COMMIT keeps it;
/// a ROLLBACK, a ROLLBACK TO SAVEPOINT or an error undoes it), on every node the session uses
/// afterwards: a `BEGIN READ ONLY` transaction runs on a standby, and the session's writes
/// later run on the primary, which never saw the SET. pgwarden used to pin such a session to
/// the primary instead, and its unqualified names then found other tables there.
/// A setting changed in a read-only transaction on a standby is read back as soon as that
/// transaction is over, while the client thinks: the standby may be taken out of service
/// before the session's next statement, which then runs on the primary with the setting.
/// (pgwarden read it back at that next statement before, and ended the session when the
/// standby was gone by then.)
#[test]
fn a_setting_made_on_a_standby_outlives_that_standby() {
    let c = Cluster::up(2);
    let (primary, standby) = (c.node_port(0), c.node_port(1));
    block(async {
        let s = standby_session(&c).await;
        begin_read_only_on(&s, standby, "").await;
        s.batch_execute("SET application_name = 'kept'; SET search_path = pg_catalog")
            .await
            .unwrap();
        s.batch_execute("COMMIT").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        detach_standby(&c);
        let row = s
            .query_one(
                "SELECT current_setting('application_name'), current_setting('search_path'), \
                 inet_server_port()",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "kept");
        assert_eq!(row.get::<_, String>(1), "pg_catalog");
        assert_eq!(port_of(&row, 2), primary);
    });
}

/// A SQL PREPARE in a `BEGIN READ ONLY` transaction on a standby outlives the transaction, as
/// on one server (even a ROLLBACK); the session, pinned to the primary by it, EXECUTEs there,
/// where pgwarden has prepared it too. One DEALLOCATEd in the transaction, or never made (the
/// transaction had failed), does not exist afterwards, as on one server.
#[test]
fn a_statement_prepared_in_a_read_only_transaction_on_a_standby_is_there_after_it() {
    let c = Cluster::up(2);
    let (primary, standby) = (c.node_port(0), c.node_port(1));
    block(async {
        let value = |m: &[tokio_postgres::SimpleQueryMessage], col: usize| -> String {
            m.iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(col).map(str::to_string),
                    _ => None,
                })
                .unwrap_or_default()
        };
        let error = |e: tokio_postgres::Error| {
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or(e.to_string())
        };
        // (what, statements in the transaction, how it ends, the EXECUTE, what it gives)
        type Case<'a> = (
            &'a str,
            &'a [&'a str],
            &'a str,
            &'a str,
            Result<&'a str, &'a str>,
        );
        let cases: &[Case] = &[
            (
                "committed",
                &["PREPARE q(int) AS SELECT $1 + 1, inet_server_port()"],
                "COMMIT",
                "EXECUTE q(41)",
                Ok("42"),
            ),
            (
                "rolled back",
                &["PREPARE r AS SELECT 2, inet_server_port()"],
                "ROLLBACK",
                "EXECUTE r",
                Ok("2"),
            ),
            (
                "deallocated in the transaction",
                &["PREPARE d AS SELECT 3", "DEALLOCATE d"],
                "COMMIT",
                "EXECUTE d",
                Err("prepared statement \"d\" does not exist"),
            ),
        ];
        for (what, statements, end, execute, want) in cases {
            let s = standby_session(&c).await;
            begin_read_only_on(&s, standby, what).await;
            for sql in *statements {
                s.batch_execute(sql).await.unwrap();
            }
            s.batch_execute(end).await.unwrap();
            let got = s.simple_query(execute).await;
            match (got, want) {
                (Ok(m), Ok(v)) => {
                    assert_eq!(value(&m, 0), *v, "{what}");
                    assert_eq!(
                        value(&m, 1),
                        primary.to_string(),
                        "{what}: EXECUTE on the primary"
                    );
                }
                (Err(e), Err(v)) => assert_eq!(error(e), *v, "{what}"),
                (got, _) => panic!("{what}: {:?}", got.map(|m| value(&m, 0)).map_err(error)),
            }
            // Still pinned to the primary, and the statement stays usable.
            if want.is_ok() {
                assert!(s.simple_query(execute).await.is_ok(), "{what}: again");
            }
        }
        // The same through the extended protocol (tokio-postgres parses it).
        let s = standby_session(&c).await;
        begin_read_only_on(&s, standby, "").await;
        s.execute("PREPARE e AS SELECT 5, inet_server_port()", &[])
            .await
            .unwrap();
        s.batch_execute("COMMIT").await.unwrap();
        let m = s.simple_query("EXECUTE e").await.map_err(error).unwrap();
        assert_eq!(
            (value(&m, 0), value(&m, 1)),
            ("5".into(), primary.to_string())
        );
        // A second PREPARE of a taken name fails there, and the first one lives on: that one
        // is made on the primary, not the text of the one that failed.
        let s = standby_session(&c).await;
        begin_read_only_on(&s, standby, "").await;
        s.batch_execute("PREPARE f AS SELECT 1, inet_server_port()")
            .await
            .unwrap();
        let taken = s
            .batch_execute("PREPARE f AS SELECT 2, inet_server_port()")
            .await
            .map_err(error);
        assert_eq!(taken, Err("prepared statement \"f\" already exists".into()));
        s.batch_execute("ROLLBACK").await.unwrap();
        let m = s.simple_query("EXECUTE f").await.map_err(error).unwrap();
        assert_eq!(
            (value(&m, 0), value(&m, 1)),
            ("1".into(), primary.to_string())
        );
        // With standard_conforming_strings off, a backslash quotes a quote: the standby runs
        // this text as a PREPARE, then a CREATE TABLE (refused there, read-only). Read with
        // it on, the text is one PREPARE: replayed on the primary as it stands, the CREATE
        // TABLE would run there.
        let s = standby_session(&c).await;
        s.batch_execute("SET standard_conforming_strings = off")
            .await
            .unwrap();
        begin_read_only_on(&s, standby, "").await;
        let crafted = r"PREPARE p AS SELECT 'a\', '; CREATE TABLE smuggled (); --'";
        let refused = s.batch_execute(crafted).await.map_err(error);
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("read-only transaction")),
            "the standby refuses the CREATE TABLE: {refused:?}"
        );
        s.batch_execute("ROLLBACK").await.unwrap();
        let at = s.simple_query("SELECT inet_server_port()").await.unwrap();
        assert_eq!(value(&at, 0), primary.to_string(), "pinned by the PREPARE");
        assert_eq!(
            c.psql(0, "test", "SELECT to_regclass('smuggled') IS NULL")
                .unwrap()
                .trim(),
            "t",
            "nothing but the PREPARE is run on the primary"
        );
    });
}

/// A SQL PREPARE in a read-only transaction on a standby, when the primary cannot take the
/// statement right after the transaction (its connections all in use), is made there later,
/// even once the standby is gone: its text is read from the standby at once. (pgwarden read
/// it only when the primary could take it, and by then the standby was out of service: the
/// session's EXECUTE failed with "does not exist".)
#[test]
fn a_statement_prepared_on_a_standby_is_made_on_the_primary_after_the_standby_is_gone() {
    let c = Cluster::up(2);
    // Reads go to the standby only; the primary has two connections, and a session waits
    // one second for one.
    primary_weight_zero(&c);
    restart_with_proxy_settings(&c, "pool_size = 2\npool_wait_timeout = \"1s\"\n");
    let (primary, standby) = (c.node_port(0), c.node_port(1));
    block(async {
        let s = c.client("test").await;
        begin_read_only_on(&s, standby, "").await;
        s.batch_execute("PREPARE q(int) AS SELECT $1 * 2, inet_server_port()")
            .await
            .unwrap();
        // Two sessions in transactions hold both of the primary's connections.
        let holders = [c.client("test").await, c.client("test").await];
        for h in &holders {
            h.batch_execute("BEGIN; SELECT 1").await.unwrap();
        }
        s.batch_execute("COMMIT").await.unwrap();
        // The statement cannot be made on the primary now (1 s for a connection, then it is
        // kept for later); then the standby goes.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        detach_standby(&c);
        for h in &holders {
            h.batch_execute("COMMIT").await.unwrap();
        }
        drop(holders);
        let m = s.simple_query("EXECUTE q(21)").await.map_err(|e| {
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or(e.to_string())
        });
        let row = m.as_ref().ok().and_then(|m| {
            m.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((r.get(0).map(str::to_string), r.get(1).map(str::to_string)))
                }
                _ => None,
            })
        });
        assert_eq!(
            row,
            Some((Some("42".into()), Some(primary.to_string()))),
            "EXECUTE on the primary: {m:?}"
        );
    });
}

/// A session whose node is taken out of service in the middle of a long COPY OUT ends soon
/// after, tells the client why, and never gives it a damaged row. (The session said its
/// FATAL even when the last bytes it had relayed stopped inside a message: the error's bytes
/// were read as the rest of that row, so the client got a row with the error in it, then a
/// broken stream. Now the rest of the row is relayed first.)
#[test]
fn a_stream_cut_by_a_fence_ends_at_a_row_boundary_with_the_reason() {
    let errors = stream_cut(|c| {
        let o = c.pgwarden(&["node", "detach", "1"]);
        assert!(o.status.success(), "{}", common::stderr(&o));
    });
    assert!(
        errors.contains("node 1 was taken out of service by pgwarden"),
        "the client is told why: {errors}"
    );
}

/// A standby's backend killed in the middle of a long COPY OUT: the rest of the row never
/// comes, so the client is told nothing (as when it is connected to that server itself)
/// rather than given a row with pgwarden's error in it.
#[test]
fn a_stream_cut_by_a_dead_backend_never_gives_the_client_a_damaged_row() {
    stream_cut(|c| {
        let pid = c
            .psql(
                1,
                "postgres",
                "SELECT pid FROM pg_stat_activity WHERE query LIKE 'COPY (SELECT inet_server_port()%'",
            )
            .unwrap();
        let pid: i32 = pid
            .trim()
            .parse()
            .expect("the COPY's backend on the standby");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    });
}

/// Waits up to `limit` for `child` to end: its exit status, or None once it had to be killed.
fn end_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let at = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if at.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Streams a long COPY OUT from the standby through pgwarden into psql, cuts it with `cut`
/// after 20,000 rows, and checks that psql ends within 10 s, with an error, having written
/// only whole, undamaged rows. Returns psql's errors.
fn stream_cut(cut: impl FnOnce(&Cluster)) -> String {
    use std::io::Read;
    let c = Cluster::up(2);
    // Reads go to the standby only.
    primary_weight_zero(&c);
    restart_with_proxy_settings(&c, "");
    let row = format!("{}\trow", c.node_port(1));
    // Short rows, each one CopyData message, with a 10 ms pause every 1,000: the node sends
    // 8 KB at a time, so the session almost always waits for it with the last message half
    // relayed. The whole COPY would take over a minute.
    let bin = pgwarden_sandbox::PgBin::locate().expect("PostgreSQL programs");
    let mut psql = pgwarden_sandbox::psql_command_at(
        &bin,
        &c.layout,
        c.proxy_port(),
        "test",
        // (pg_sleep is not known to be read-only: a read-only transaction may still run on
        // a standby.)
        "BEGIN READ ONLY",
    )
    .args([
        "-c",
        "COPY (SELECT inet_server_port(), 'row' \
         FROM generate_series(1, 1000) a, generate_series(1, 10000) b \
         WHERE CASE WHEN b % 1000 = 0 THEN pg_sleep(0.01)::text = '' ELSE true END) \
         TO STDOUT",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut out = psql.stdout.take().unwrap();
    let mut err = psql.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    // Every line psql wrote, checked; the cut comes after 20,000 of them.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut line = Vec::new();
        let (mut good, mut bad) = (0u64, Vec::new());
        let mut told = false;
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                if b != b'\n' {
                    line.push(b);
                    continue;
                }
                if line == row.as_bytes() {
                    good += 1;
                } else if bad.len() < 3 {
                    bad.push(String::from_utf8_lossy(&line).into_owned());
                }
                line.clear();
            }
            if good > 20_000 && !told {
                told = true;
                let _ = tx.send(());
            }
        }
        // psql writes each row whole: a last line without its newline was damaged too.
        if !line.is_empty() {
            bad.push(String::from_utf8_lossy(&line).into_owned());
        }
        (good, bad)
    });
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        end_within(&mut psql, Duration::ZERO);
        let (good, bad) = reader.join().unwrap();
        panic!(
            "no 20,000 rows of the COPY from the standby within 60 s: {good} rows, others {bad:?}, errors {}",
            errors.join().unwrap()
        );
    }
    let at = Instant::now();
    cut(&c);
    let ended = end_within(&mut psql, Duration::from_secs(60)).map(|s| (s, at.elapsed()));
    let (good, bad) = reader.join().unwrap();
    let errors = errors.join().unwrap();
    let (status, after) =
        ended.unwrap_or_else(|| panic!("the COPY still streamed 60 s after the cut ({good} rows)"));
    assert!(
        bad.is_empty(),
        "the client got damaged rows: {bad:?} ({good} good ones); its errors: {errors}"
    );
    assert!(!status.success(), "the COPY ended with an error: {errors}");
    assert!(
        after < Duration::from_secs(10),
        "the COPY ended {after:?} after the cut ({good} rows): {errors}"
    );
    errors
}

/// A cursor declared WITH HOLD in a `BEGIN READ ONLY` transaction on a standby lives there
/// after the transaction: FETCH, MOVE and CLOSE of it go there, as on one server; once closed
/// (or after DISCARD ALL) it is gone, as on one server.
#[test]
fn a_cursor_held_after_a_read_only_transaction_on_a_standby_is_fetched_there() {
    let c = Cluster::up(2);
    let standby = c.node_port(1);
    block(async {
        let rows = |m: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<String> {
            m.into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(format!(
                        "{}@{}",
                        r.get(0).unwrap_or_default(),
                        r.get(1).unwrap_or_default()
                    )),
                    _ => None,
                })
                .collect()
        };
        let error = |e: tokio_postgres::Error| {
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or(e.to_string())
        };
        let s = standby_session(&c).await;
        let at = |n: &str| format!("{n}@{standby}");
        s.batch_execute("BEGIN READ ONLY").await.unwrap();
        s.batch_execute(
            "DECLARE c CURSOR WITH HOLD FOR SELECT g, inet_server_port() FROM generate_series(1, 10) g",
        )
        .await
        .unwrap();
        let first = rows(s.simple_query("FETCH 2 FROM c").await.unwrap());
        assert_eq!(
            first,
            [at("1"), at("2")],
            "in the transaction, on the standby"
        );
        s.batch_execute("COMMIT").await.unwrap();
        let next = rows(s.simple_query("FETCH 3 FROM c").await.unwrap());
        assert_eq!(next, [at("3"), at("4"), at("5")], "after COMMIT");
        // Other statements in between go where they go; the cursor stays where it is.
        s.batch_execute(
            "CREATE TABLE IF NOT EXISTS held_between (v int); INSERT INTO held_between VALUES (1)",
        )
        .await
        .unwrap();
        s.batch_execute("MOVE 2 IN c").await.unwrap();
        let after_move = rows(s.simple_query("FETCH 1 FROM c").await.unwrap());
        assert_eq!(after_move, [at("8")], "after MOVE");
        s.batch_execute("CLOSE c").await.unwrap();
        let gone = s
            .simple_query("FETCH 1 FROM c")
            .await
            .map(rows)
            .map_err(error);
        assert_eq!(
            gone,
            Err("cursor \"c\" does not exist".to_string()),
            "after CLOSE"
        );
        // DISCARD ALL closes it too.
        let s = standby_session(&c).await;
        s.batch_execute("BEGIN READ ONLY").await.unwrap();
        s.batch_execute("DECLARE d CURSOR WITH HOLD FOR SELECT 1, 2")
            .await
            .unwrap();
        s.batch_execute("COMMIT").await.unwrap();
        s.batch_execute("DISCARD ALL").await.unwrap();
        let gone = s
            .simple_query("FETCH 1 FROM d")
            .await
            .map(rows)
            .map_err(error);
        assert_eq!(
            gone,
            Err("cursor \"d\" does not exist".to_string()),
            "after DISCARD ALL"
        );
    });
}

/// A setting the primary took and a standby refuses is not lost: `SET ROLE` to a role created
/// since, which the standby has not replayed yet. The session's reads run on the primary, as
/// that role, until the standby has replayed it, and then on the standby again, as that role.
/// A statement that can only run on that standby (a FETCH of a cursor held there) ends the
/// session with an error that names the setting, rather than run there without it. Before,
/// the replay's failure was ignored, and the reads ran on the standby as the login role.
#[test]
fn a_setting_a_lagging_standby_refuses_is_not_dropped() {
    let c = Cluster::up(2);
    let (primary, standby) = (c.node_port(0), c.node_port(1));
    let who = |r: &tokio_postgres::Row| (r.get::<_, String>(0), port_of(r, 1));
    block(async {
        let s = standby_session(&c).await;
        let h = standby_session(&c).await;
        h.batch_execute("BEGIN READ ONLY").await.unwrap();
        h.batch_execute("DECLARE hc CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 9) g")
            .await
            .unwrap();
        h.batch_execute("COMMIT").await.unwrap();
        // The role is made by another session, so neither session's read-your-writes floor
        // covers it.
        c.psql(1, "test", "SELECT pg_wal_replay_pause()").unwrap();
        c.psql(0, "test", "CREATE ROLE tenant_x").unwrap();
        s.batch_execute("SET ROLE tenant_x").await.unwrap();
        let read = "SELECT current_user::text, inet_server_port()";
        for _ in 0..3 {
            let r = s.query_one(read, &[]).await.unwrap();
            assert_eq!(
                who(&r),
                ("tenant_x".to_string(), primary),
                "a read after SET ROLE, the standby lacking the role"
            );
        }
        h.batch_execute("SET ROLE tenant_x").await.unwrap();
        let e = h.simple_query("FETCH 1 FROM hc").await.unwrap_err();
        let db = e.as_db_error().expect("an error from the server side");
        assert_eq!(db.severity(), "FATAL", "{db:?}");
        assert!(
            db.message().contains("SET ROLE tenant_x") && db.message().contains("node 1"),
            "{}",
            db.message()
        );
        assert!(
            h.simple_query("SELECT 1").await.is_err(),
            "the session ended"
        );
        // Once the standby has the role, it serves the session's reads again, as that role.
        c.psql(1, "test", "SELECT pg_wal_replay_resume()").unwrap();
        let started = Instant::now();
        loop {
            let r = s.query_one(read, &[]).await.unwrap();
            let (user, port) = who(&r);
            assert_eq!(user, "tenant_x", "on port {port}");
            if port == standby {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the standby never served the session's reads again"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The role and the standby's connection are as they were.
        let r = s
            .query_one("SELECT session_user::text, inet_server_port()", &[])
            .await
            .unwrap();
        assert_eq!(who(&r), ("postgres".to_string(), standby));
    });
}

/// A hot standby refuses SERIALIZABLE transactions, read-only ones too ("cannot use
/// serializable mode in a hot standby"). A session whose transactions are SERIALIZABLE, by
/// default (SET, JDBC's setTransactionIsolation, a setting changed in a transaction, PGOPTIONS)
/// or one at a time (BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY), reads on the primary, as
/// on a single server, and goes back to the standby once that default is reset.
#[test]
fn serializable_transactions_are_not_sent_to_a_hot_standby() {
    let c = Cluster::up(2);
    let (primary, standby) = (c.node_port(0), c.node_port(1));
    block(async {
        let s = standby_session(&c).await;
        let read = |sql: &'static str| {
            let s = &s;
            async move {
                match s.query_one(sql, &[]).await {
                    Ok(r) => Ok(port_of(&r, 0)),
                    Err(e) => Err(e
                        .as_db_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or(e.to_string())),
                }
            }
        };
        let cases: &[(&str, &str, u16)] = &[
            (
                "SET",
                "SET default_transaction_isolation = serializable",
                primary,
            ),
            ("RESET", "RESET default_transaction_isolation", standby),
            (
                "JDBC's setTransactionIsolation",
                "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                primary,
            ),
            (
                "another level",
                "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                standby,
            ),
            (
                "changed in a transaction (read back)",
                "BEGIN; SET default_transaction_isolation = 'serializable'; COMMIT",
                primary,
            ),
            ("DISCARD ALL", "DISCARD ALL", standby),
        ];
        for (what, sql, want) in cases {
            s.batch_execute(sql).await.unwrap();
            if *want == standby {
                // Back on the standby once it has replayed the session's last write (a
                // multi-statement transaction counts as one): read-your-writes.
                let start = Instant::now();
                while read("SELECT inet_server_port()").await != Ok(standby) {
                    assert!(
                        start.elapsed() < Duration::from_secs(15),
                        "never back on the standby after {what}: {:?}",
                        read("SELECT inet_server_port()").await
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            for _ in 0..3 {
                assert_eq!(
                    read("SELECT inet_server_port()").await,
                    Ok(*want),
                    "after {what}"
                );
            }
            // A read-only transaction, as pgjdbc's setReadOnly(true) begins it.
            s.batch_execute("BEGIN READ ONLY").await.unwrap();
            let r = read("SELECT inet_server_port()").await;
            s.batch_execute("COMMIT").await.unwrap();
            assert_eq!(r, Ok(*want), "a read-only transaction after {what}");
        }
        // One transaction at a time: psycopg's and asyncpg's serializable read-only BEGIN.
        s.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE")
            .await
            .unwrap();
        let r = read("SELECT inet_server_port()").await;
        s.batch_execute("COMMIT").await.unwrap();
        assert_eq!(
            r,
            Ok(primary),
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY"
        );
        // The client's own SET TRANSACTION … SERIALIZABLE as the first statement of a
        // read-only transaction already begun on the standby: the transaction moves to the
        // primary, read-only and SERIALIZABLE as on one server. It says nothing of the
        // session's default: the session's reads stay balanced.
        c.psql(0, "test", "CREATE TABLE ser_moved (v int)").unwrap();
        let s = standby_session(&c).await;
        for (how, set) in [
            (
                "SET TRANSACTION",
                "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            ),
            (
                "SET transaction_isolation",
                "SET transaction_isolation = serializable",
            ),
            ("extended", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
        ] {
            s.batch_execute("BEGIN READ ONLY DEFERRABLE").await.unwrap();
            let done = if how == "extended" {
                s.execute(set, &[]).await.map(|_| ())
            } else {
                s.batch_execute(set).await
            };
            done.unwrap_or_else(|e| panic!("{how}: {e:?}"));
            let r = s
                .query_one(
                    "SELECT inet_server_port(), current_setting('transaction_isolation'), \
                     current_setting('transaction_read_only'), \
                     current_setting('transaction_deferrable')",
                    &[],
                )
                .await
                .unwrap();
            let got: (i32, String, String, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
            assert_eq!(
                got,
                (
                    i32::from(primary),
                    "serializable".into(),
                    "on".into(),
                    "on".into()
                ),
                "{how}: where and how the transaction ran"
            );
            let write = s.batch_execute("INSERT INTO ser_moved VALUES (1)").await;
            let code = write
                .err()
                .and_then(|e| e.as_db_error().map(|d| d.code().code().to_string()));
            assert_eq!(
                code.as_deref(),
                Some("25006"),
                "{how}: the transaction is still read-only"
            );
            // The standby's transaction was rolled back, not left open.
            let open: i64 = c
                .try_connect(standby, "test")
                .await
                .unwrap()
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(open, 0, "a transaction was left open on the standby");
            s.batch_execute("ROLLBACK").await.unwrap();
        }
        // After another statement it is too late, on one server as here: the standby's
        // answer is the one the primary would give.
        s.batch_execute("BEGIN READ ONLY").await.unwrap();
        let r = s.query_one("SELECT inet_server_port()", &[]).await.unwrap();
        assert_eq!(port_of(&r, 0), standby, "a read-only transaction's read");
        let late = s
            .batch_execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            .await
            .err()
            .and_then(|e| e.as_db_error().map(|d| d.code().code().to_string()));
        assert_eq!(
            late.as_deref(),
            Some("25001"),
            "SET TRANSACTION after a query"
        );
        s.batch_execute("ROLLBACK").await.unwrap();
        for _ in 0..3 {
            let r = s.query_one("SELECT inet_server_port()", &[]).await.unwrap();
            assert_eq!(port_of(&r, 0), standby, "reads stay on the standby");
        }
    });
    // From the database's own default (or a role's: the same), which pgwarden asks each new
    // connection for: every read runs on the primary, none is refused by the standby.
    c.psql(0, "postgres", "CREATE DATABASE ser").unwrap();
    c.psql(
        0,
        "postgres",
        "ALTER DATABASE ser SET default_transaction_isolation = serializable",
    )
    .unwrap();
    block(async {
        for _ in 0..10 {
            let s = c.try_connect(c.proxy_port(), "ser").await.unwrap();
            for i in 0..3 {
                let r = s.query_one("SELECT inet_server_port()", &[]).await;
                let r = r.map_err(|e| e.as_db_error().map(|d| d.message().to_string()));
                assert_eq!(r.map(|r| port_of(&r, 0)), Ok(primary), "read {i}");
            }
        }
    });
    // From the startup packet (libpq's PGOPTIONS): every session, wherever it is balanced.
    for _ in 0..10 {
        let got = c.psql_env(
            c.proxy_port(),
            "test",
            &["SELECT inet_server_port()", "SELECT inet_server_port()"],
            &[("PGOPTIONS", "-c default_transaction_isolation=serializable")],
        );
        assert_eq!(got, Ok(format!("{primary}\n{primary}")), "with PGOPTIONS");
    }
}

#[test]
fn settings_changed_in_a_transaction_follow_the_session_to_every_node() {
    let c = Cluster::up(2);
    c.psql_proxy(
        "test",
        "CREATE SCHEMA app; CREATE TABLE public.t (v text); CREATE TABLE app.t (v text); \
         CREATE ROLE appu; GRANT INSERT ON public.t TO appu",
    )
    .unwrap();
    // Each case: a new session reading from the standby, what it runs there, and the
    // search_path and work_mem the primary must then have for it.
    let cases: &[(&str, &[&str], &str, &str)] = &[
        (
            "committed",
            &["BEGIN READ ONLY", "SET search_path = app", "COMMIT"],
            "app",
            "4MB",
        ),
        (
            "rolled back",
            &["BEGIN READ ONLY", "SET search_path = app", "ROLLBACK"],
            "\"$user\", public",
            "4MB",
        ),
        (
            "savepoint",
            &[
                "START TRANSACTION READ ONLY",
                "SET search_path = app",
                "SAVEPOINT s",
                "SET work_mem = '9MB'",
                "ROLLBACK TO SAVEPOINT s",
                "COMMIT",
            ],
            "app",
            "4MB",
        ),
        (
            "error",
            &[
                "BEGIN READ ONLY",
                "SET search_path = app",
                "SELECT 1/0",
                "COMMIT",
            ],
            "\"$user\", public",
            "4MB",
        ),
        (
            "several statements",
            &[
                "BEGIN READ ONLY",
                "SELECT 1; SET work_mem = '5MB'",
                "COMMIT",
            ],
            "\"$user\", public",
            "5MB",
        ),
        // RESET ALL names no setting: every setting the session then has is read back (it
        // pinned the session to the primary before, which kept what the standby had reset).
        (
            "reset all",
            &[
                "SET work_mem = '7MB'",
                "SET search_path = app",
                "BEGIN READ ONLY",
                "RESET ALL",
                "COMMIT",
            ],
            "\"$user\", public",
            "4MB",
        ),
        (
            "reset all, then a setting",
            &[
                "SET search_path = app",
                "BEGIN READ ONLY",
                "RESET ALL",
                "SET work_mem = '3MB'",
                "COMMIT",
            ],
            "\"$user\", public",
            "3MB",
        ),
        (
            "reset all rolled back",
            &[
                "SET work_mem = '7MB'",
                "BEGIN READ ONLY",
                "RESET ALL",
                "ROLLBACK",
            ],
            "\"$user\", public",
            "7MB",
        ),
        (
            "reset all and a setting in one query",
            &[
                "SET work_mem = '7MB'",
                "SET search_path = app",
                "BEGIN READ ONLY",
                "RESET ALL; SET work_mem = '2MB'",
                "COMMIT",
            ],
            "\"$user\", public",
            "2MB",
        ),
    ];
    block(async {
        for (name, steps, path, work_mem) in cases {
            let client = standby_session(&c).await;
            let mut in_tx_port = None;
            for step in steps.iter() {
                let r = client.simple_query(step).await;
                assert_eq!(r.is_err(), step.contains("1/0"), "{name}: {step}: {r:?}");
                if *step == "SAVEPOINT s" || step.starts_with("SELECT 1;") {
                    let row = client
                        .query_one("SELECT inet_server_port()", &[])
                        .await
                        .unwrap();
                    in_tx_port = Some(port_of(&row, 0));
                }
            }
            if let Some(p) = in_tx_port {
                assert_eq!(
                    p,
                    c.node_port(1),
                    "{name}: the transaction ran on the standby"
                );
            }
            // Reads stay on the standby, and see there what one server would show.
            let row = client
                .query_one(
                    "SELECT inet_server_port(), current_setting('search_path'), current_setting('work_mem')",
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(port_of(&row, 0), c.node_port(1), "{name}: not pinned");
            assert_eq!(
                (row.get::<_, String>(1), row.get::<_, String>(2)),
                (path.to_string(), work_mem.to_string()),
                "{name}: on the standby"
            );
            // A write runs on the primary, with the same settings.
            client
                .batch_execute(&format!(
                    "INSERT INTO t SELECT '{name} ' || current_setting('work_mem')"
                ))
                .await
                .unwrap();
        }
        // Through the extended protocol (tokio-postgres: Parse/Bind/Execute), and in a
        // transaction begun in one query.
        let mut client = standby_session(&c).await;
        let tx = client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .unwrap();
        tx.execute("SET search_path = app", &[]).await.unwrap();
        tx.execute("SET work_mem = '6MB'", &[]).await.unwrap();
        let row = tx
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap();
        assert_eq!(port_of(&row, 0), c.node_port(1));
        tx.commit().await.unwrap();
        client
            .batch_execute("INSERT INTO t SELECT 'extended ' || current_setting('work_mem')")
            .await
            .unwrap();
        let client = standby_session(&c).await;
        client
            .batch_execute("BEGIN READ ONLY; SET work_mem = '7MB'; SET search_path = app; COMMIT")
            .await
            .unwrap();
        client
            .batch_execute("INSERT INTO t SELECT 'one query ' || current_setting('work_mem')")
            .await
            .unwrap();
        // Outside a transaction, a setting among other statements reaches the standby too.
        let client = standby_session(&c).await;
        client
            .batch_execute("SET work_mem = '8MB'; SELECT 1")
            .await
            .unwrap();
        // (Long enough for the monitor to see the standby caught up with that query, which
        // went to the primary, so that reads may go back to the standby.)
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let row = client
            .query_one(
                "SELECT inet_server_port(), current_setting('work_mem')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(port_of(&row, 0), c.node_port(1));
        assert_eq!(row.get::<_, String>(1), "8MB");
        // A setting that cannot be read back (only a superuser may see
        // dynamic_library_path, and the role is appu by then) is logged; the rest is read back
        // and the session goes on (it ended with "connection lost" before).
        let client = standby_session(&c).await;
        client
            .batch_execute(
                "BEGIN READ ONLY; SET dynamic_library_path = '$libdir'; SET ROLE appu; COMMIT",
            )
            .await
            .unwrap();
        client
            .batch_execute("INSERT INTO t SELECT 'role ' || current_user")
            .await
            .unwrap();
    });
    // A value that is not ASCII, read back through connections in another client encoding.
    let want = c
        .psql(
            0,
            "test",
            r#"SET search_path = U&"caf\00e9"; SELECT encode(convert_to(current_setting('search_path'), 'UTF8'), 'hex')"#,
        )
        .unwrap();
    let mut on_standby = false;
    for _ in 0..40 {
        let out = c
            .psql_env(
                c.proxy_port(),
                "test",
                &[
                    "BEGIN READ ONLY",
                    "SELECT 'port ' || inet_server_port()",
                    r#"SET search_path = U&"caf\00e9""#,
                    "COMMIT",
                    "INSERT INTO public.t SELECT 'latin1 ' || \
                     encode(convert_to(current_setting('search_path'), 'UTF8'), 'hex')",
                ],
                &[("PGCLIENTENCODING", "LATIN1")],
            )
            .unwrap();
        if out.contains(&format!("port {}", c.node_port(1))) {
            on_standby = true;
            break;
        }
    }
    assert!(on_standby, "no session ran its transaction on the standby");
    assert!(
        c.psql(0, "test", "SELECT v FROM public.t WHERE v LIKE 'latin1 %'")
            .unwrap()
            .lines()
            .all(|l| l == format!("latin1 {}", want.lines().last().unwrap())),
        "{want}"
    );
    c.psql(0, "test", "DELETE FROM public.t WHERE v LIKE 'latin1 %'")
        .unwrap();
    let sorted = |sql: &str| {
        let mut v: Vec<String> = c
            .psql(0, "test", sql)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        sorted("SELECT v FROM app.t"),
        [
            "committed 4MB",
            "extended 6MB",
            "one query 7MB",
            "savepoint 4MB"
        ]
    );
    assert_eq!(
        sorted("SELECT v FROM public.t"),
        [
            "error 4MB",
            "reset all 4MB",
            "reset all and a setting in one query 2MB",
            "reset all rolled back 7MB",
            "reset all, then a setting 3MB",
            "role appu",
            "rolled back 4MB",
            "several statements 5MB"
        ]
    );
    // The standby that held a session's setting is lost once the transaction is over: the
    // setting was read back as soon as it was (not at the next statement), and the session
    // goes on with it on the primary. (Lost before that, the session would end with an error
    // rather than go on without it.)
    block(async {
        let client = standby_session(&c).await;
        for step in ["BEGIN READ ONLY", "SET search_path = app", "COMMIT"] {
            client.batch_execute(step).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.pg_ctl(1, &["stop", "-m", "immediate"]);
        client
            .batch_execute("INSERT INTO t VALUES ('after loss')")
            .await
            .unwrap();
    });
    assert_eq!(
        c.psql(
            0,
            "test",
            "SELECT count(*) FROM app.t WHERE v = 'after loss'"
        )
        .unwrap(),
        "1"
    );
}

/// asyncpg 0.32's pool reset (`Connection.get_reset_query()` on PostgreSQL): one simple Query
/// sent on every release of a pooled connection.
const ASYNCPG_RESET: &str = "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;";

/// The proxy's per-node `select_cnt` (SHOW POOL_NODES), by node id.
async fn select_counts(client: &tokio_postgres::Client) -> HashMap<u16, u64> {
    let mut counts = HashMap::new();
    for m in client.simple_query("SHOW POOL_NODES").await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            let id: u16 = r.get("node_id").unwrap().parse().unwrap();
            let n: u64 = r.get("select_cnt").unwrap().parse().unwrap();
            counts.insert(id, n);
        }
    }
    counts
}

fn simple_value(messages: &[tokio_postgres::SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

#[test]
fn asyncpg_pool_reset_clears_settings_and_keeps_reads_on_the_standby() {
    let c = Cluster::up(2);
    c.psql_proxy("test", "CREATE TABLE w (id serial PRIMARY KEY)")
        .unwrap();
    block(async {
        let (primary, standby) = (c.node_port(0), c.node_port(1));
        let client = standby_session(&c).await;
        let default_work_mem =
            simple_value(&client.simple_query("SHOW work_mem").await.unwrap()).unwrap();
        assert_ne!(default_work_mem, "7MB");
        // Another client writes straight to the primary before every reset: had the reset been
        // taken for a write, the session would have to wait for the standby to replay those
        // writes (read-your-writes), and its next read would go to the primary.
        let writer = c.try_connect(primary, "test").await.unwrap();
        let before = select_counts(&client).await;
        let read = "SELECT inet_server_port(), current_setting('application_name'), current_setting('work_mem')";
        for round in 0..5 {
            client
                .batch_execute(&format!("SET application_name = 'round {round}'"))
                .await
                .unwrap();
            client.batch_execute("SET work_mem = '7MB'").await.unwrap();
            let row = client.query_one(read, &[]).await.unwrap();
            assert_eq!(port_of(&row, 0), standby, "round {round}: before the reset");
            assert_eq!(row.get::<_, String>(1), format!("round {round}"));
            assert_eq!(row.get::<_, String>(2), "7MB");

            writer
                .execute("INSERT INTO w DEFAULT VALUES", &[])
                .await
                .unwrap();
            client.batch_execute(ASYNCPG_RESET).await.unwrap();

            // The same session still reads from the standby, where the settings are gone.
            let row = client.query_one(read, &[]).await.unwrap();
            assert_eq!(port_of(&row, 0), standby, "round {round}: after the reset");
            assert_eq!(row.get::<_, String>(1), "", "round {round}");
            assert_eq!(row.get::<_, String>(2), default_work_mem, "round {round}");
            let shown = simple_value(&client.simple_query("SHOW work_mem").await.unwrap());
            assert_eq!(shown.as_deref(), Some(default_work_mem.as_str()));
        }
        // The reset ran on the primary as well: a transaction there sees the defaults.
        client.batch_execute("BEGIN").await.unwrap();
        let row = client.query_one(read, &[]).await.unwrap();
        client.batch_execute("COMMIT").await.unwrap();
        assert_eq!(port_of(&row, 0), primary);
        assert_eq!(row.get::<_, String>(1), "");
        assert_eq!(row.get::<_, String>(2), default_work_mem);
        // The proxy's own counters agree: the standby served the 10 reads, the primary the 5
        // resets (counted as SELECTs) and the read in the transaction.
        let after = select_counts(&client).await;
        let delta = |n: u16| after[&n] - before[&n];
        assert_eq!((delta(0), delta(1)), (6, 10), "{before:?} → {after:?}");

        // LISTEN pins the session to the primary. pgwarden does not track which channels a
        // session listens on, so UNLISTEN * (in asyncpg's reset) leaves it pinned.
        client.batch_execute("LISTEN chan").await.unwrap();
        client.batch_execute(ASYNCPG_RESET).await.unwrap();
        let row = client.query_one(read, &[]).await.unwrap();
        assert_eq!(port_of(&row, 0), primary, "still pinned after UNLISTEN *");
    });
}

#[test]
fn prepared_statements_never_go_missing() {
    let c = Cluster::up(3);
    c.psql_proxy("test", "CREATE TABLE ps (id int)").unwrap();
    block(async {
        let client = c.client("test").await;
        let read = client
            .prepare("SELECT count(*)::int, inet_server_port() FROM ps WHERE id >= $1")
            .await
            .unwrap();
        let write = client.prepare("INSERT INTO ps VALUES ($1)").await.unwrap();
        let mut ports = std::collections::HashSet::new();
        for i in 0..40 {
            // After each write, read-your-writes may move the read to the primary, where the
            // statement was never parsed: it must be parsed there, not fail.
            client.execute(&write, &[&i]).await.unwrap();
            let row = client.query_one(&read, &[&0]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), i + 1);
            ports.insert(port_of(&row, 1));
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
        }
        eprintln!("the prepared read ran on ports {ports:?}");
    });
}

#[test]
fn pgbench_copy_and_cancel_through_the_proxy() {
    let c = Cluster::up(2);
    let bin = pgwarden_sandbox::PgBin::locate().unwrap();
    let pgbench = |args: &[&str]| {
        let out = std::process::Command::new(bin.program("pgbench"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-p",
                &c.proxy_port().to_string(),
            ])
            .args(args)
            .arg("test")
            .env("PGPASSFILE", c.pgpass())
            .output()
            .unwrap();
        let text = format!("{}{}", common::stdout(&out), common::stderr(&out));
        assert!(out.status.success(), "pgbench {args:?}: {text}");
        text
    };
    // -i loads with COPY FROM STDIN.
    pgbench(&["-i", "-s", "1", "-q"]);
    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench(&["-S", "-T", "2", "-c", "4", "-j", "2", "-M", mode]);
        assert!(
            out.contains("number of failed transactions: 0"),
            "{mode}: {out}"
        );
    }
    let out = pgbench(&["-N", "-T", "2", "-c", "4", "-j", "2"]);
    assert!(out.contains("number of failed transactions: 0"), "{out}");
    assert_eq!(
        c.psql_proxy("test", "SELECT count(*) FROM pgbench_accounts")
            .unwrap(),
        "100000"
    );

    // COPY out and back in.
    let csv = c.psql_proxy("test", "COPY (SELECT aid, abalance FROM pgbench_accounts WHERE aid <= 3 ORDER BY aid) TO STDOUT WITH (FORMAT csv)").unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    c.psql_proxy("test", "CREATE TABLE copied (aid int, abalance int)")
        .unwrap();
    let bin_psql = bin.program("psql");
    let mut child = std::process::Command::new(bin_psql)
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-p",
            &c.proxy_port().to_string(),
            "-c",
            "COPY copied FROM STDIN WITH (FORMAT csv)",
        ])
        .env("PGPASSFILE", c.pgpass())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(csv.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        c.psql(0, "test", "SELECT count(*) FROM copied").unwrap(),
        "3"
    );

    // A cancel request reaches the backend running the query.
    block(async {
        let client = c.client("test").await;
        let token = client.cancel_token();
        let start = Instant::now();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            token.cancel_query(tokio_postgres::NoTls).await
        });
        let err = client
            .batch_execute("SELECT pg_sleep(20)")
            .await
            .unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
        canceller.await.unwrap().unwrap();
        // The session goes on.
        client.batch_execute("SELECT 1").await.unwrap();
    });
}

/// A cancel request still on its way to the server when its session ends must not reach the
/// next client given that session's connection. The primary's postmaster is stopped
/// (SIGSTOP), so the forwarded cancel waits in its socket while the session ends and its
/// connection, reset, would go back to the pool; another client, logged in before, takes a
/// connection and runs a query; the postmaster goes on and acts on the cancel. Before, it cancelled that other
/// client's query (pgbouncer has the same race); now the ended session's connections are
/// closed rather than pooled while a cancel is on its way.
///
/// The same when the session ends after the forward gave up waiting (5 s to connect, 5 s for
/// the server to take the request): the request sits in the postmaster's socket all the same.
/// Before, the give-up counted as done and the connection was pooled.
#[test]
fn a_cancel_on_its_way_when_a_session_ends_does_not_reach_the_next_client() {
    a_cancel_on_its_way_when_the_session_ends(Duration::from_millis(300));
}

#[test]
fn a_cancel_given_up_on_before_a_session_ends_does_not_reach_the_next_client() {
    a_cancel_on_its_way_when_the_session_ends(Duration::from_secs(11));
}

fn a_cancel_on_its_way_when_the_session_ends(session_ends_after: Duration) {
    let c = Cluster::up(1);
    let pid = std::fs::read_to_string(c.data_dir(0).join("postmaster.pid")).unwrap();
    let pid = pid.lines().next().unwrap().trim().to_string();
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    };
    /// Lets the postmaster go on whatever happens.
    struct Resume<F: Fn()>(F);
    impl<F: Fn()> Drop for Resume<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    block(async {
        let first = c.client("test").await;
        // Bound to a backend of the primary, its cancel key pointing there.
        first.batch_execute("SELECT 1").await.unwrap();
        let backend: i32 = first
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        // Logged in now: its login left a connection in the pool, and it needs no new one
        // while the postmaster is stopped (the pool gives the last connection put back).
        let next = c.client("test").await;
        let token = first.cancel_token();
        signal("-STOP");
        let resume = Resume(|| signal("-CONT"));
        let cancel = tokio::spawn(async move { token.cancel_query(tokio_postgres::NoTls).await });
        // (The request reaches pgwarden, and pgwarden's forward waits on the postmaster.)
        tokio::time::sleep(session_ends_after).await;
        drop(first);
        // The connection's reset, had it gone back to the pool.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let backend_now: i32 = next
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let sleeping = tokio::spawn(async move {
            let r = next.batch_execute("SELECT pg_sleep(2)").await;
            (next, r)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(resume);
        let (next, r) = sleeping.await.unwrap();
        let _ = cancel.await;
        assert!(
            r.is_ok(),
            "the next client's query (backend {backend_now}; the ended session's was {backend}) was cancelled: {:?}",
            r.err().and_then(|e| e.as_db_error().map(|d| d.message().to_string()))
        );
        assert_ne!(
            backend_now, backend,
            "the ended session's connection was pooled"
        );
        next.batch_execute("SELECT 1").await.unwrap();
    });
}

/// The process id a client is told names no real process: an application that terminates
/// "its" backend with the pid its driver reports (`pg_terminate_backend(pg_backend_pid())` is
/// right, but many pass the driver's figure) must not hit another client's backend. Before,
/// the pids were a counter from 1, the same numbers Linux gives processes.
#[test]
fn the_pid_a_client_is_told_names_no_real_backend() {
    let c = Cluster::up(1);
    let pid_max: i64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    block(async {
        let mut told = std::collections::BTreeSet::new();
        for _ in 0..3 {
            let (_, got) =
                common::raw::welcome(&c, c.proxy_port(), &common::raw::startup("postgres")).await;
            let key = got
                .iter()
                .find(|(tag, _)| *tag == b'K')
                .unwrap_or_else(|| panic!("no BackendKeyData: {got:?}"));
            let pid = i32::from_be_bytes(key.1[..4].try_into().unwrap());
            assert!(
                i64::from(pid) > pid_max,
                "pid {pid} is one Linux could give (pid_max {pid_max})"
            );
            told.insert(pid);
        }
        assert_eq!(told.len(), 3, "{told:?}");

        // What an application would do with them: terminate by the told pid, with another
        // client at work. (The old counter's pids 1, 2, 3 named no backend here either: the
        // `pid_max` check above is what tells them apart.)
        let other = c.client("test").await;
        let real: i32 = other
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let killer = c.client("test").await;
        for pid in &told {
            let killed: bool = killer
                .query_one("SELECT pg_terminate_backend($1)", &[pid])
                .await
                .unwrap()
                .get(0);
            assert!(!killed, "pg_terminate_backend({pid}) terminated a backend");
        }
        let still: i32 = other
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(still, real);
    });
}

#[test]
fn wrong_passwords_and_unknown_users_look_the_same() {
    let c = Cluster::up(1);
    block(async {
        let attempt = |user: &'static str, password: String| {
            let port = c.proxy_port();
            async move {
                tokio_postgres::Config::new()
                    .host("127.0.0.1")
                    .port(port)
                    .user(user)
                    .password(password)
                    .dbname("test")
                    .connect(tokio_postgres::NoTls)
                    .await
                    .err()
                    .and_then(|e| {
                        e.as_db_error().map(|d| {
                            (
                                d.code().code().to_string(),
                                d.message().replace(user, "USER"),
                            )
                        })
                    })
            }
        };
        let wrong = attempt("postgres", "nope".into()).await;
        let unknown = attempt("nobody", "nope".into()).await;
        assert_eq!(
            wrong,
            Some((
                "28P01".to_string(),
                "password authentication failed for user \"USER\"".to_string()
            ))
        );
        assert_eq!(wrong, unknown);
        assert!(
            attempt("postgres", c.password()).await.is_none(),
            "the right password works"
        );
    });
}

/// A startup packet that names a database (or user) twice is judged by the value the server
/// uses, the last: with an hba rule that admits database "test" only, `database=test,
/// database=postgres` is refused, and `database=postgres, database=test` logs in to "test".
/// (pgwarden checked the first and forwarded both: the server logged the client in to the
/// database the rule did not admit.)
#[test]
fn a_parameter_given_twice_is_judged_by_the_value_the_server_uses() {
    use common::raw::{login_with, read_message, read_until};
    use tokio::io::AsyncWriteExt;
    let c = Cluster::up(1);
    let cfg = std::fs::read_to_string(c.config()).unwrap()
        + "\n[[proxy.hba]]\ndatabase = \"test\"\nuser = \"all\"\naddress = \"all\"\nmethod = \"scram-sha-256\"\n";
    std::fs::write(c.config(), cfg).unwrap();
    restart_with_proxy_settings(&c, "");
    let startup = common::raw::startup_with;
    block(async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", c.proxy_port()))
            .await
            .unwrap();
        s.write_all(&startup(&[
            ("user", "postgres"),
            ("database", "test"),
            ("database", "postgres"),
        ]))
        .await
        .unwrap();
        let (tag, body) = read_message(&mut s).await;
        let text = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(tag, b'E', "the second database was let in: {text}");
        assert!(
            text.contains("28000") && text.contains("database \"postgres\""),
            "{text}"
        );
        // The other way round the rule admits it, and the session is in "test".
        let packet = startup(&[
            ("user", "postgres"),
            ("database", "postgres"),
            ("database", "test"),
        ]);
        let mut s = login_with(&c, c.proxy_port(), &packet).await;
        s.write_all(&common::raw::message(
            b'Q',
            &[b"SELECT current_database()\0"],
        ))
        .await
        .unwrap();
        let got = read_until(&mut s, b'Z').await;
        assert!(got.iter().any(|(t, b)| *t == b'D' && b.ends_with(b"test")));
    });
    // A direct refusal of the rule, for comparison: database "postgres" alone.
    let out = c.psql_proxy("postgres", "SELECT 1").unwrap_err();
    assert!(out.contains("no pgwarden hba entry"), "{out}");
}

/// The salt of the SCRAM exchange is the user's, whichever database is asked for, for a user
/// with a password as for one without: comparing salts across databases tells nothing about
/// who exists (a fresh salt was made per user and database, while an unknown user's was
/// derived from the name alone). A wrong password still fails alike for both.
#[test]
fn the_scram_salt_does_not_tell_whether_a_user_exists() {
    use common::raw::read_message;
    use tokio::io::AsyncWriteExt;
    let c = Cluster::up(1);
    let salt = |user: &'static str, db: &'static str| {
        let port = c.proxy_port();
        async move {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let packet = common::raw::startup_with(&[("user", user), ("database", db)]);
            s.write_all(&packet).await.unwrap();
            let (tag, b) = read_message(&mut s).await;
            assert_eq!(
                (tag, &b[..4]),
                (b'R', &10u32.to_be_bytes()[..]),
                "{user}: SASL first"
            );
            let first = b"n,,n=,r=abcdefghijklmnopqrstuvwx";
            let mut payload = b"SCRAM-SHA-256\0".to_vec();
            payload.extend((first.len() as i32).to_be_bytes());
            payload.extend(first);
            s.write_all(&common::raw::message(b'p', &[&payload]))
                .await
                .unwrap();
            let (tag, b) = read_message(&mut s).await;
            assert_eq!(tag, b'R');
            let text = String::from_utf8_lossy(&b[4..]).into_owned();
            text.split(',')
                .find_map(|f| f.strip_prefix("s="))
                .unwrap_or_else(|| panic!("no salt in {text}"))
                .to_string()
        }
    };
    block(async {
        let known = (
            salt("postgres", "test").await,
            salt("postgres", "postgres").await,
        );
        let unknown = (
            salt("nobody", "test").await,
            salt("nobody", "postgres").await,
        );
        assert_eq!(
            known.0, known.1,
            "a known user's salt changed with the database"
        );
        assert_eq!(unknown.0, unknown.1);
        assert_ne!(known.0, unknown.0, "two users, one salt");
        // A restart changes neither: an unknown user's salt that changed while a known
        // user's stayed would tell them apart (PostgreSQL keeps its mock nonce in pg_control).
        tokio::task::block_in_place(|| c.restart_warden());
        assert_eq!(salt("nobody", "test").await, unknown.0, "after a restart");
        assert_eq!(salt("postgres", "test").await, known.0, "after a restart");
        // The key is random, kept beside the state file, readable by its owner only.
        use std::os::unix::fs::PermissionsExt;
        let key = std::fs::read_dir(&c.dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.to_string_lossy().ends_with(".scram-key"))
            .expect("a .scram-key file beside the state file");
        let meta = std::fs::metadata(&key).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{}",
            key.display()
        );
    });
}

/// Passwords that SASLprep changes log in through SCRAM, as they do to PostgreSQL: a
/// no-break space (mapped to a space) and an accent written as a combining mark (composed by
/// NFKC), held as plain text in pool_passwd, typed by the client in another form of the same
/// text. Both sides of pgwarden use them: the client's exchange with pgwarden, and pgwarden's
/// with the server (whose verifier PostgreSQL made from the SASLprep'd password). Before
/// SASLprep on pgwarden's side (6406112), such logins failed with 28P01 while md5 worked.
#[test]
fn passwords_that_saslprep_changes_log_in() {
    let c = Cluster::up(1);
    c.psql(
        0,
        "postgres",
        "CREATE ROLE nbsp LOGIN PASSWORD U&'pass\\00A0word'; \
         CREATE ROLE accent LOGIN PASSWORD U&'caf\\00E9'; \
         GRANT CONNECT ON DATABASE test TO nbsp, accent",
    )
    .unwrap();
    let file = c.dir.join("pool_passwd");
    std::fs::write(&file, "nbsp:pass\u{a0}word\naccent:caf\u{e9}\n").unwrap();
    restart_with_proxy_settings(&c, &format!("pool_passwd = {:?}\n", file.to_str().unwrap()));
    let login = |user: &'static str, password: &'static str| {
        let port = c.proxy_port();
        async move {
            let (client, conn) = tokio_postgres::Config::new()
                .host("127.0.0.1")
                .port(port)
                .user(user)
                .password(password)
                .dbname("test")
                .connect(tokio_postgres::NoTls)
                .await?;
            tokio::spawn(conn);
            let row = client.query_one("SELECT current_user::text", &[]).await?;
            Ok::<String, tokio_postgres::Error>(row.get(0))
        }
    };
    block(async {
        for (user, password) in [
            ("nbsp", "pass\u{a0}word"),
            // (SASLprep maps a no-break space to a space: the same password.)
            ("nbsp", "pass word"),
            ("accent", "caf\u{e9}"),
            // 'e' and a combining acute accent: the same text once composed.
            ("accent", "cafe\u{301}"),
        ] {
            let got = login(user, password).await;
            assert_eq!(
                got.as_ref()
                    .map_err(|e| e.as_db_error().map(|d| d.message().to_string())),
                Ok(&user.to_string()),
                "{user} with {password:?}"
            );
        }
        let wrong = login("accent", "cafe").await.unwrap_err();
        assert_eq!(wrong.code().map(|c| c.code()), Some("28P01"), "{wrong:?}");
    });
}

/// Under an md5 rule, with pool_passwd holding SCRAM secrets (as copied from pg_authid), an
/// unknown user is asked for SCRAM like the users who exist: an md5 challenge told that the
/// user does not exist. The users who exist log in through SCRAM.
#[test]
fn an_md5_rule_asks_an_unknown_user_what_it_asks_the_others() {
    use common::raw::read_message;
    use tokio::io::AsyncWriteExt;
    let c = Cluster::up(1);
    let verifier = c
        .psql(
            0,
            "postgres",
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'",
        )
        .unwrap();
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    let file = c.dir.join("pool_passwd");
    std::fs::write(&file, format!("postgres:{verifier}\n")).unwrap();
    let cfg = std::fs::read_to_string(c.config()).unwrap()
        + "\n[[proxy.hba]]\naddress = \"all\"\nmethod = \"md5\"\n";
    std::fs::write(c.config(), cfg).unwrap();
    restart_with_proxy_settings(&c, &format!("pool_passwd = {:?}\n", file.to_str().unwrap()));
    let first = |user: &'static str| {
        let port = c.proxy_port();
        async move {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            s.write_all(&common::raw::startup(user)).await.unwrap();
            let (tag, b) = read_message(&mut s).await;
            (tag as char, u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
    };
    block(async {
        assert_eq!(
            first("postgres").await,
            ('R', 10),
            "SASL for a SCRAM secret"
        );
        assert_eq!(
            first("nobody").await,
            ('R', 10),
            "the unknown user was asked otherwise"
        );
        c.client("test").await;
    });
}

/// A standby that refuses one role's logins (its own pg_hba.conf) is up: that role's reads
/// go elsewhere (here the primary), not trying the standby again for every read, and the
/// other sessions' reads stay on the standby; once the rule is fixed, it is asked again, and
/// the session's reads come back to it. Before, each refusal reported the standby as dead (a
/// login attempt and a health check per read, and the standby suspect for every session);
/// later, the session's load-balance node became the primary it fell back to, for good.
#[test]
fn a_standby_that_refuses_one_login_is_not_taken_for_dead() {
    let c = Cluster::up(2);
    let (primary, standby) = (c.node_port(0), c.node_port(1));
    let (hba, rules) = role_with_hba_rule(&c, "shunned", "shunned-pw", "reject");
    let file = c.dir.join("pool_passwd");
    std::fs::write(
        &file,
        format!("postgres:{}\nshunned:shunned-pw\n", c.password()),
    )
    .unwrap();
    // (The primary and the standby have the same weight.)
    restart_with_proxy_settings(&c, &format!("pool_passwd = {:?}\n", file.to_str().unwrap()));
    let log = c.dir.join("log").join("node1.log");
    let refusals = || {
        std::fs::read_to_string(&log)
            .unwrap()
            .matches("rejects connection for host \"127.0.0.1\", user \"shunned\"")
            .count()
    };
    block(async {
        let other = standby_session(&c).await;
        // A session of the refused role whose load-balance node is the standby (shown
        // before its first read): that read is refused there and runs on the primary.
        let mut shunned = None;
        for _ in 0..40 {
            let s = c.user_client("shunned", "shunned-pw", "test").await;
            let home = lb_node(&s).await;
            let first = s.query_one("SELECT inet_server_port()", &[]).await.unwrap();
            assert_eq!(port_of(&first, 0), primary, "the refused role's first read");
            if home == Some(1) {
                shunned = Some(s);
                break;
            }
        }
        let shunned = shunned.expect("no session of the refused role was balanced to the standby");
        let before = refusals();
        let mut others_on_primary = 0;
        for i in 0..40 {
            let row = shunned
                .query_one("SELECT inet_server_port()", &[])
                .await
                .unwrap();
            assert_eq!(port_of(&row, 0), primary, "read {i} of the refused role");
            let row = other
                .query_one("SELECT inet_server_port()", &[])
                .await
                .unwrap();
            if port_of(&row, 0) != standby {
                others_on_primary += 1;
            }
        }
        // (The log is written as the refusals happen; a moment for the last line.)
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            refusals() - before,
            0,
            "the standby was asked again for the refused role's reads"
        );
        assert_eq!(
            others_on_primary, 0,
            "another session's reads left the standby"
        );
        // SHOW POOL_NODES tells where its reads go meanwhile.
        assert_eq!(
            lb_node(&shunned).await,
            Some(0),
            "the session's node for now"
        );
        // The refusal is fixed: after a while, the session asks the standby again, and its
        // reads are back there.
        std::fs::write(&hba, &rules).unwrap();
        c.psql(1, "postgres", "SELECT pg_reload_conf()").unwrap();
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        for _ in 0..3 {
            let row = shunned
                .query_one("SELECT inet_server_port()", &[])
                .await
                .unwrap();
            assert_eq!(
                port_of(&row, 0),
                standby,
                "the session's reads did not come back to the standby once its pg_hba.conf was fixed"
            );
        }
        assert_eq!(lb_node(&shunned).await, Some(1), "the session's node");
    });
}

/// The session's load-balance node, as `SHOW POOL_NODES` tells it.
async fn lb_node(s: &tokio_postgres::Client) -> Option<u32> {
    s.simple_query("SHOW POOL_NODES")
        .await
        .unwrap()
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r)
                if r.get("load_balance_node") == Some("true") =>
            {
                r.get("node_id").and_then(|id| id.parse().ok())
            }
            _ => None,
        })
}

/// Creates login role `role` (password `password`, CONNECT on `test`) and puts a first rule for
/// it with `method` into node 1's pg_hba.conf, reloaded: the file and its rules before.
fn role_with_hba_rule(
    c: &Cluster,
    role: &str,
    password: &str,
    method: &str,
) -> (std::path::PathBuf, String) {
    c.psql(
        0,
        "postgres",
        &format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{password}'; \
             GRANT CONNECT ON DATABASE test TO {role}"
        ),
    )
    .unwrap();
    let hba = c.data_dir(1).join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all {role} 127.0.0.1/32 {method}\n{rules}"),
    )
    .unwrap();
    c.psql(1, "postgres", "SELECT pg_reload_conf()").unwrap();
    (hba, rules)
}

/// A standby whose pg_hba.conf asks a role for an authentication pgwarden cannot give (GSSAPI)
/// is up: that role's reads go to the other standby, not to the primary, and other roles keep
/// reading from it.
#[test]
fn a_standby_that_asks_for_gssapi_sends_reads_to_another_standby() {
    let c = Cluster::up(3);
    let (primary, refusing, other) = (c.node_port(0), c.node_port(1), c.node_port(2));
    role_with_hba_rule(&c, "kerb", "kerb-pw", "gss");
    let file = c.dir.join("pool_passwd");
    std::fs::write(&file, format!("postgres:{}\nkerb:kerb-pw\n", c.password())).unwrap();
    primary_weight_zero(&c);
    restart_with_proxy_settings(
        &c,
        &format!(
            "pool_passwd = {:?}\nload_balance = \"statement\"\n",
            file.to_str().unwrap()
        ),
    );
    block(async {
        let kerb = c.user_client("kerb", "kerb-pw", "test").await;
        let postgres = c.client("test").await;
        let mut kerb_on = std::collections::BTreeMap::new();
        let mut postgres_on = std::collections::BTreeMap::new();
        for _ in 0..40 {
            for (client, on) in [(&kerb, &mut kerb_on), (&postgres, &mut postgres_on)] {
                let port: i32 = client
                    .query_one("SELECT inet_server_port()", &[])
                    .await
                    .unwrap()
                    .get(0);
                *on.entry(port).or_insert(0) += 1;
            }
        }
        let kerb_on: Vec<_> = kerb_on.into_iter().collect();
        assert_eq!(
            kerb_on,
            [(i32::from(other), 40)],
            "the role the standby on {refusing} asks for GSSAPI read elsewhere than the \
             other standby ({other}; primary {primary})"
        );
        assert!(
            postgres_on.get(&i32::from(refusing)).copied().unwrap_or(0) > 0,
            "another role's reads no longer reach the standby that asks for GSSAPI: {postgres_on:?}"
        );
        assert_eq!(
            postgres_on.get(&i32::from(primary)),
            None,
            "another role's reads went to the primary: {postgres_on:?}"
        );
    });
}

/// With every standby's connections in use, a read waits `pool_wait_timeout` once, for the
/// standby it was balanced to, and then goes to the primary: it does not wait as long again
/// for each other standby. (It did: twice the wait with two standbys.)
#[test]
fn a_read_waits_for_one_full_standby_not_for_each() {
    let c = Cluster::up(3);
    primary_weight_zero(&c);
    restart_with_proxy_settings(
        &c,
        "pool_size = 1\npool_wait_timeout = \"3s\"\nload_balance = \"statement\"\n",
    );
    let (primary, standbys) = (c.node_port(0), [c.node_port(1), c.node_port(2)]);
    block(async {
        // Two sessions in read-only transactions hold the standbys' one connection each (the
        // second may wait for the first's standby, and then take the other).
        let mut held = Vec::new();
        let mut holders = Vec::new();
        for _ in 0..2 {
            let h = c.client("test").await;
            h.batch_execute("BEGIN READ ONLY").await.unwrap();
            held.push(port_of(
                &h.query_one("SELECT inet_server_port()", &[]).await.unwrap(),
                0,
            ));
            holders.push(h);
        }
        held.sort();
        assert_eq!(held, standbys, "the holders' transactions' nodes");
        let client = c.client("test").await;
        let start = Instant::now();
        let row = client
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap();
        let waited = start.elapsed();
        assert_eq!(port_of(&row, 0), primary, "the read's node");
        // One wait is 3 s; two would be 6 s. (Not less than one: the standby it was balanced
        // to is waited for.)
        assert!(
            waited < Duration::from_millis(5_000) && waited >= Duration::from_millis(2_900),
            "the read waited {waited:?} for full standbys"
        );
        // Later reads do not wait again: not while the standbys are remembered as full, nor
        // after (a standby that had no connection is asked for an idle one only). Before,
        // a read waited 3 s each time the memory ran out.
        let until = Instant::now() + Duration::from_secs(7);
        let mut longest = Duration::ZERO;
        while Instant::now() < until {
            let start = Instant::now();
            let row = client
                .query_one("SELECT inet_server_port()", &[])
                .await
                .unwrap();
            longest = longest.max(start.elapsed());
            assert_eq!(port_of(&row, 0), primary, "a later read's node");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(
            longest < Duration::from_millis(1_500),
            "a later read waited {longest:?}"
        );
        // Once the standbys' connections are free (their sessions gone), reads are back there.
        for h in &holders {
            h.batch_execute("COMMIT").await.unwrap();
        }
        drop(holders);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut port = primary;
        while port == primary && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            port = port_of(
                &client
                    .query_one("SELECT inet_server_port()", &[])
                    .await
                    .unwrap(),
                0,
            );
        }
        assert!(
            standbys.contains(&port),
            "reads did not come back to a standby"
        );
    });
}

#[test]
fn a_dead_standby_costs_one_error_not_a_hang() {
    let c = Cluster::up(2);
    block(async {
        let client = standby_session(&c).await;
        c.pg_ctl(1, &["stop", "-m", "immediate"]);
        let start = Instant::now();
        let first = tokio::time::timeout(
            Duration::from_secs(15),
            client.query_one("SELECT inet_server_port()", &[]),
        )
        .await;
        let first = first.expect("no hang");
        eprintln!(
            "first read after the standby died: {:?} after {:?}",
            first.as_ref().map(|r| port_of(r, 0)),
            start.elapsed()
        );
        if let Ok(row) = &first {
            assert_eq!(
                port_of(row, 0),
                c.node_port(0),
                "the read went to the primary"
            );
        }
        // The same session goes on, on the primary.
        let row = tokio::time::timeout(
            Duration::from_secs(15),
            client.query_one("SELECT inet_server_port()", &[]),
        )
        .await
        .expect("no hang")
        .unwrap();
        assert_eq!(port_of(&row, 0), c.node_port(0));
        // New sessions read from the primary.
        for _ in 0..5 {
            let cl = c.client("test").await;
            let p = port_of(
                &cl.query_one("SELECT inet_server_port()", &[])
                    .await
                    .unwrap(),
                0,
            );
            assert_eq!(p, c.node_port(0));
        }
    });
}

#[test]
fn pgpool_show_commands() {
    let c = Cluster::up(2);
    let header = |cmd: &str| {
        let bin = pgwarden_sandbox::PgBin::locate().unwrap();
        let out = std::process::Command::new(bin.program("psql"))
            .args([
                "-X",
                "-A",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "test",
                "-p",
                &c.proxy_port().to_string(),
                "-c",
                cmd,
            ])
            .env("PGPASSFILE", c.pgpass())
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}: {}", common::stderr(&out));
        common::stdout(&out)
    };
    let nodes = header("SHOW POOL_NODES");
    let mut lines = nodes.lines();
    assert_eq!(
        lines.next().unwrap(),
        "node_id|hostname|port|status|pg_status|lb_weight|role|pg_role|select_cnt|load_balance_node|replication_delay|replication_state|replication_sync_state|last_status_change"
    );
    let row0: Vec<&str> = lines.next().unwrap().split('|').collect();
    assert_eq!(
        &row0[..8],
        &[
            "0",
            "127.0.0.1",
            &c.node_port(0).to_string(),
            "up",
            "up",
            "0.500000",
            "primary",
            "primary"
        ]
    );
    let row1: Vec<&str> = lines.next().unwrap().split('|').collect();
    assert_eq!(row1[6], "standby");
    assert_eq!(row1[11], "streaming");
    assert_eq!(row1[12], "async");
    assert_eq!(
        header("SHOW POOL_HEALTH_CHECK_STATS")
            .lines()
            .next()
            .unwrap()
            .split('|')
            .count(),
        20
    );
    assert_eq!(
        header("SHOW POOL_BACKEND_STATS")
            .lines()
            .next()
            .unwrap()
            .split('|')
            .count(),
        14
    );
    assert!(header("show pool_version;").contains("pgwarden"));
    assert!(header("SHOW POOL_POOLS").contains("pool_size"));
    // Ordinary SHOW still reaches PostgreSQL.
    assert!(header("SHOW server_version").contains("15"));
    // Prepared with the extended protocol (tokio-postgres names every statement): described,
    // run again, fetched from a portal one row at a time, and closed; the session goes on.
    // (Before: "unrecognized configuration parameter \"pool_nodes\"".)
    block(async {
        let mut client = c.client("test").await;
        let st = client.prepare("SHOW POOL_NODES").await.unwrap();
        let names: Vec<&str> = st.columns().iter().map(|c| c.name()).collect();
        assert_eq!(names.join("|"), nodes.lines().next().unwrap());
        for _ in 0..3 {
            let rows = client.query(&st, &[]).await.unwrap();
            let roles: Vec<&str> = rows.iter().map(|r| r.get("role")).collect();
            assert_eq!(roles, ["primary", "standby"]);
        }
        let tx = client.transaction().await.unwrap();
        let portal = tx.bind(&st, &[]).await.unwrap();
        let first = tx.query_portal(&portal, 1).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].get::<_, &str>("node_id"), "0");
        let rest = tx.query_portal(&portal, 5).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].get::<_, &str>("node_id"), "1");
        assert!(tx.query_portal(&portal, 5).await.unwrap().is_empty());
        tx.commit().await.unwrap();
        drop(st);
        let version: String = client
            .query_one("SHOW POOL_VERSION", &[])
            .await
            .unwrap()
            .get(0);
        assert!(version.contains("pgwarden"), "{version}");
        let n: i32 = client.query_one("SELECT 41 + 1", &[]).await.unwrap().get(0);
        assert_eq!(n, 42);
    });
}

mod hostile {
    use super::*;
    use common::raw::{login_at, message, prepare_flush, read_until, startup};
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn connect(c: &Cluster) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", c.proxy_port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s
    }

    /// Everything the proxy says until it closes the connection.
    fn answer(mut s: TcpStream) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    }

    fn error_message(bytes: &[u8]) -> String {
        assert_eq!(
            bytes.first(),
            Some(&b'E'),
            "expected an ErrorResponse, got {bytes:?}"
        );
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[test]
    fn malformed_and_slow_clients_are_cut_off_and_others_go_on() {
        let c = Cluster::up(1);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "garbage before the startup packet",
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                "invalid length of startup packet",
            ),
            (
                "a huge startup length",
                vec![0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0],
                "invalid length of startup packet",
            ),
            (
                "protocol 2.0",
                {
                    let mut p = vec![0, 0, 0, 9];
                    p.extend(0x0002_0000u32.to_be_bytes());
                    p.push(0);
                    p
                },
                "unsupported frontend protocol 2.0",
            ),
            (
                "no user",
                {
                    let mut p = vec![0, 0, 0, 9];
                    p.extend(196608u32.to_be_bytes());
                    p.push(0);
                    p
                },
                "no PostgreSQL user name specified",
            ),
        ];
        for (what, bytes, want) in cases {
            let mut s = connect(&c);
            s.write_all(&bytes).unwrap();
            let msg = error_message(&answer(s));
            assert!(msg.contains(want), "{what}: {msg}");
        }

        // SSL and GSSAPI encryption requests are declined with 'N'; the client may go on.
        let mut s = connect(&c);
        s.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).unwrap();
        let mut n = [0u8; 1];
        s.read_exact(&mut n).unwrap();
        assert_eq!(&n, b"N");
        s.write_all(&[0, 0, 0, 8, 4, 210, 22, 48]).unwrap();
        s.read_exact(&mut n).unwrap();
        assert_eq!(&n, b"N");
        s.write_all(&startup("postgres")).unwrap();
        let mut r = [0u8; 1];
        s.read_exact(&mut r).unwrap();
        assert_eq!(&r, b"R", "authentication follows");

        // A client that sends half a startup packet and stalls is dropped after auth_timeout
        // (5 s), without a word, as PostgreSQL drops it.
        let start = Instant::now();
        let mut s = connect(&c);
        s.write_all(&startup("postgres")[..6]).unwrap();
        assert_eq!(answer(s), b"", "closed without a message");
        assert!(
            start.elapsed() < Duration::from_secs(12),
            "{:?}",
            start.elapsed()
        );

        // After login: a lying length, a message over the size limit, an unknown type.
        block(async {
            for (what, bytes, want) in [
                (
                    "a negative length",
                    vec![b'Q', 0xff, 0xff, 0xff, 0xf0],
                    "invalid message length",
                ),
                (
                    "a huge length",
                    vec![b'Q', 0x7f, 0, 0, 0],
                    "exceeds the maximum message size",
                ),
                (
                    "an unknown message type",
                    vec![b'!', 0, 0, 0, 4],
                    "invalid frontend message type 33",
                ),
                (
                    "a query without its terminator",
                    {
                        let mut v = vec![b'Q', 0, 0, 0, 12];
                        v.extend(b"SELECT 1");
                        v
                    },
                    "invalid Query message",
                ),
            ] {
                let got = raw_session(&c, &bytes).await;
                assert!(got.contains(want), "{what}: {got}");
            }
        });
        // Through all of it, a well-behaved client is served.
        assert_eq!(c.psql_proxy("test", "SELECT 1").unwrap(), "1");
    }

    /// The first packets of a connection are answered as PostgreSQL answers them: the same
    /// single-byte answers to encryption requests, the same NegotiateProtocolVersion, the same
    /// FATAL (severity, SQLSTATE, message), and a login that completes where PostgreSQL's
    /// does. Each case goes to the primary directly and through pgwarden. Before, protocol 3.2
    /// (libpq 18 with `max_protocol_version=latest`) and `_pq_.` options were refused, an
    /// encryption request made twice was answered twice, an empty user was a protocol error,
    /// and a startup parameter the server does not know was "08006".
    #[test]
    fn the_first_packets_are_answered_as_postgresql_answers_them() {
        use common::raw::{authenticate, startup_with};
        let c = Cluster::up(1);
        let with_version = |version: u32, pairs: &[(&str, &str)]| {
            let mut p = startup_with(pairs);
            p[4..8].copy_from_slice(&version.to_be_bytes());
            p
        };
        let login = [("user", "postgres"), ("database", "test")];
        let ssl = vec![0, 0, 0, 8, 4, 210, 22, 47];
        let gss = vec![0, 0, 0, 8, 4, 210, 22, 48];
        // (What is sent: packets sent one by one, each encryption request's answer read
        // before the next packet goes.)
        let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
            ("protocol 3.0", vec![startup_with(&login)]),
            (
                "protocol 3.2, as libpq 18 asks with max_protocol_version=latest",
                vec![with_version(0x0003_0002, &login)],
            ),
            (
                "a protocol option",
                vec![startup_with(&[
                    ("user", "postgres"),
                    ("_pq_.compression", "on"),
                    ("database", "test"),
                ])],
            ),
            (
                "protocol 3.1 and two options",
                vec![with_version(
                    0x0003_0001,
                    &[
                        ("_pq_.a", "1"),
                        ("user", "postgres"),
                        ("database", "test"),
                        ("_pq_.b", ""),
                    ],
                )],
            ),
            // (Answered as protocol 2 has it, which the comparison reads as bytes.)
            ("protocol 2.0", vec![with_version(0x0002_0000, &login)]),
            ("protocol 4.0", vec![with_version(0x0004_0000, &login)]),
            (
                "an empty user",
                vec![startup_with(&[("user", ""), ("database", "test")])],
            ),
            ("no user", vec![startup_with(&[("database", "test")])]),
            (
                "protocol 3.2 and no user: the negotiation comes first",
                vec![with_version(0x0003_0002, &[("database", "test")])],
            ),
            ("SSLRequest twice", vec![ssl.clone(), ssl.clone()]),
            (
                "a login sent with the SSLRequest, before its answer",
                vec![[ssl.clone(), startup_with(&login)].concat()],
            ),
            (
                "a startup parameter the server does not know",
                vec![startup_with(&[
                    ("user", "postgres"),
                    ("database", "test"),
                    ("no_such_setting", "1"),
                ])],
            ),
            (
                "a bad value for a startup parameter",
                vec![startup_with(&[
                    ("user", "postgres"),
                    ("database", "test"),
                    ("work_mem", "lots"),
                ])],
            ),
            (
                "a database that does not exist",
                vec![startup_with(&[
                    ("user", "postgres"),
                    ("database", "no_such_db"),
                ])],
            ),
        ];
        // What a client notices of the answer: single bytes, NegotiateProtocolVersion, an
        // error, whether the login completed. (Not the authentication exchange, nor the
        // parameter values and key, which differ by design.)
        async fn answer_at(c: &Cluster, port: u16, packets: &[Vec<u8>]) -> Vec<String> {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let mut seen = Vec::new();
            for p in packets {
                s.write_all(p).await.unwrap();
                if p.get(4..6) == Some(&[0, 2]) {
                    let mut all = Vec::new();
                    let _ = s.read_to_end(&mut all).await;
                    return vec![format!("bytes {:?}", String::from_utf8_lossy(&all))];
                }
                // An encryption request (code 1234.5679 or 1234.5680) is answered by one byte.
                // (Or by an ErrorResponse, read below.)
                if p.get(4..7) == Some(&[4, 210, 22]) {
                    let mut b = [0u8; 1];
                    match s.peek(&mut b).await {
                        Ok(1) if b[0] != b'E' => {
                            s.read_exact(&mut b).await.unwrap();
                            seen.push(format!("byte {}", b[0] as char));
                        }
                        Ok(1) => break,
                        _ => return seen,
                    }
                }
            }
            for (tag, body) in authenticate(c, &mut s).await {
                match tag {
                    b'v' => {
                        let newest = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                        let names: Vec<String> = body[8..]
                            .split(|b| *b == 0)
                            .filter(|n| !n.is_empty())
                            .map(|n| String::from_utf8_lossy(n).into_owned())
                            .collect();
                        seen.push(format!("NegotiateProtocolVersion {newest} {names:?}"));
                    }
                    b'E' => {
                        let fields: Vec<String> = body
                            .split(|b| *b == 0)
                            .filter(|f| matches!(f.first(), Some(b'S' | b'C' | b'M')))
                            .map(|f| String::from_utf8_lossy(f).into_owned())
                            .collect();
                        seen.push(format!("error {fields:?}"));
                    }
                    b'Z' => seen.push("ready".into()),
                    _ => {}
                }
            }
            seen
        }
        block(async {
            let mut report = String::new();
            for (what, packets) in &cases {
                let direct = answer_at(&c, c.node_port(0), packets).await;
                let proxied = answer_at(&c, c.proxy_port(), packets).await;
                report.push_str(&format!(
                    "{what}:\n  direct  {direct:?}\n  proxied {proxied:?}\n"
                ));
                assert!(!direct.is_empty(), "{what}: PostgreSQL said nothing");
                assert_eq!(proxied, direct, "{what}");
            }
            eprintln!("{report}");
            // GSSAPI encryption: Debian's PostgreSQL answers 'G' (it is built with GSSAPI),
            // pgwarden 'N' (it has none); the rest as for SSL.
            let error = |code: &str, message: &str| {
                format!("error [\"SFATAL\", \"C{code}\", \"M{message}\"]")
            };
            for (what, packets, want) in [
                (
                    "GSSENCRequest twice",
                    vec![gss.clone(), gss.clone()],
                    vec![
                        "byte N".to_string(),
                        error(
                            "0A000",
                            "unsupported frontend protocol 1234.5680: server supports 3.0 to 3.0",
                        ),
                    ],
                ),
                (
                    "SSLRequest, GSSENCRequest, then a login",
                    vec![ssl.clone(), gss.clone(), startup_with(&login)],
                    vec!["byte N".into(), "byte N".into(), "ready".into()],
                ),
                (
                    "GSSENCRequest, SSLRequest, then a login",
                    vec![gss.clone(), ssl.clone(), startup_with(&login)],
                    vec!["byte N".into(), "byte N".into(), "ready".into()],
                ),
                (
                    "a login sent with the GSSENCRequest, before its answer",
                    vec![[gss.clone(), startup_with(&login)].concat()],
                    vec![
                        "byte N".into(),
                        error(
                            "08P01",
                            "received unencrypted data after GSSAPI encryption request",
                        ),
                    ],
                ),
            ] {
                assert_eq!(
                    answer_at(&c, c.proxy_port(), &packets).await,
                    want,
                    "{what}"
                );
            }
        });
    }

    /// A client that stops reading a large result keeps its session engaged on the primary.
    /// A switchover waits `switchover_timeout` for it, as for any running statement; then the
    /// fence must end that session at once (its connection to the old primary closed), not
    /// leave it blocked on the client until the old primary is stopped under it.
    #[test]
    fn a_client_that_stops_reading_does_not_hold_the_old_primary_past_its_fence() {
        use tokio::io::AsyncWriteExt;
        let c = Cluster::up(2);
        let cfg = std::fs::read_to_string(c.config()).unwrap();
        let cfg = cfg.replacen(
            "follow_timeout = \"30s\"",
            "follow_timeout = \"30s\"\nswitchover_timeout = \"2s\"",
            1,
        );
        assert!(cfg.contains("switchover_timeout"), "{cfg}");
        std::fs::write(c.config(), cfg).unwrap();
        c.restart_warden();
        c.wait_node(1, Duration::from_secs(30), "a streaming standby", |n| {
            n["status"] == "up" && n["replication_state"] == "streaming"
        });
        block(async {
            let mut s = login(&c).await;
            // /*NO LOAD BALANCE*/: on the primary, the node being handed over.
            s.write_all(&query(
                "/*NO LOAD BALANCE*/ SELECT repeat('x', 8000) FROM generate_series(1, 50000)",
            ))
            .await
            .unwrap();
            // The primary's backend blocks writing to pgwarden once pgwarden's write to this
            // client, which reads nothing, is blocked in turn.
            let blocked = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '/*NO LOAD BALANCE*/%' AND wait_event = 'ClientWrite'";
            let start = Instant::now();
            while tokio::task::block_in_place(|| c.psql(0, "test", blocked)).unwrap() != "1" {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "the query never blocked"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let o = tokio::task::block_in_place(|| c.pgwarden(&["switchover", "--to", "1"]));
            let events = tokio::task::block_in_place(|| common::events_text(&c));
            assert!(
                o.status.success(),
                "{}{}\n{events}",
                common::stdout(&o),
                common::stderr(&o)
            );
            // The session was waited for as running work, then closed at the fence.
            assert!(events.contains("work still running on node 0"), "{events}");
            assert!(
                !events.contains("still engaged on node 0"),
                "a session blocked on its client outlived the fence:\n{events}"
            );
            // The client gets what was relayed, then the end of the connection (no FATAL can
            // follow a message cut short), rather than a session left hanging.
            let rest = common::raw::read_to_close(
                &mut s,
                Duration::from_secs(30),
                "the connection blocked on its client",
            )
            .await;
            assert!(
                rest.len() < 8000 * 50000,
                "the whole result came through ({} bytes)",
                rest.len()
            );
        });
        // The proxy goes on, on the new primary.
        c.wait_node(0, Duration::from_secs(60), "a streaming standby", |n| {
            n["status"] == "up" && n["replication_state"] == "streaming"
        });
        assert_eq!(
            c.psql_proxy("test", "/*NO LOAD BALANCE*/ SELECT pg_is_in_recovery()")
                .unwrap(),
            "f"
        );
    }

    /// A session that LISTENs and changes a setting inside a transaction has the value read
    /// back on its primary connection (pgwarden's own query there). Notifications that arrive
    /// meanwhile are the client's: every one sent must reach it, none swallowed by pgwarden.
    #[test]
    fn notifications_arriving_while_pgwarden_reads_a_setting_back_all_reach_the_client() {
        use tokio::io::AsyncWriteExt;
        const SENT: usize = 600;
        let c = Cluster::up(1);
        block(async {
            let mut s = login(&c).await;
            s.write_all(&query("LISTEN ch")).await.unwrap();
            read_until(&mut s, b'Z').await;
            let notifier = c.try_connect(c.node_port(0), "test").await.unwrap();
            let sender = tokio::spawn(async move {
                for i in 0..SENT {
                    notifier
                        .batch_execute(&format!("NOTIFY ch, '{i}'"))
                        .await
                        .unwrap();
                }
            });
            let mut got = 0;
            let mut rounds = 0;
            let count = |m: &[(u8, Vec<u8>)]| m.iter().filter(|(t, _)| *t == b'A').count();
            while !sender.is_finished() {
                // Each round: a setting changed among other statements (read back before the
                // next query), then a query.
                s.write_all(&query("BEGIN; SET search_path = public; COMMIT"))
                    .await
                    .unwrap();
                got += count(&read_until(&mut s, b'Z').await);
                s.write_all(&query("SELECT 1")).await.unwrap();
                got += count(&read_until(&mut s, b'Z').await);
                rounds += 1;
            }
            sender.await.unwrap();
            // The last ones: a query picks up whatever is still on its way.
            let start = Instant::now();
            while got < SENT && start.elapsed() < Duration::from_secs(10) {
                s.write_all(&query("SELECT 1")).await.unwrap();
                got += count(&read_until(&mut s, b'Z').await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(rounds > 10, "too few rounds to mean anything: {rounds}");
            assert_eq!(
                got, SENT,
                "notifications received, of {SENT} sent ({rounds} rounds)"
            );
        });
    }

    /// Logs in with tokio-postgres's own authentication, on a raw socket, then sends `bytes`
    /// and returns what came back.
    async fn raw_session(c: &Cluster, bytes: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = login(c).await;
        let mut buf = Vec::new();
        s.write_all(bytes).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf))
            .await
            .expect("closed, not hung");
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// A raw socket through the proxy, logged in and ready for a query.
    async fn login(c: &Cluster) -> tokio::net::TcpStream {
        login_at(c, c.proxy_port()).await
    }

    fn query(sql: &str) -> Vec<u8> {
        message(b'Q', &[sql.as_bytes(), b"\0"])
    }

    /// Parse of a named statement without parameters, then its Bind, Execute and Sync.
    fn named(name: &str, sql: &str) -> Vec<u8> {
        let n = [name.as_bytes(), b"\0"].concat();
        let mut v = message(b'P', &[&n, sql.as_bytes(), b"\0", &[0, 0]]);
        v.extend(execute_sync(name));
        v
    }

    /// Bind, Execute and Sync of a named statement without parameters.
    fn execute_sync(name: &str) -> Vec<u8> {
        let n = [name.as_bytes(), b"\0"].concat();
        let mut v = message(b'B', &[b"\0", &n, &[0, 0, 0, 0, 0, 0]]);
        v.extend(message(b'E', &[b"\0", &[0, 0, 0, 0]]));
        v.extend(message(b'S', &[]));
        v
    }

    /// The first column of the first row among `msgs` (a one-column DataRow).
    fn first_value(msgs: &[(u8, Vec<u8>)]) -> String {
        msgs.iter()
            .find(|(t, _)| *t == b'D')
            .map(|(_, b)| String::from_utf8_lossy(&b[6..]).into_owned())
            .unwrap_or_else(|| panic!("no row: {}", text(msgs)))
    }

    fn text(msgs: &[(u8, Vec<u8>)]) -> String {
        msgs.iter()
            .map(|(t, b)| format!("{}:{} ", *t as char, String::from_utf8_lossy(b)))
            .collect()
    }

    /// A pipeline without a Sync until its end, far larger than the sockets' buffers both
    /// ways (as psycopg's `executemany` or pgbench's `\startpipeline` send): the client writes
    /// while it reads, as libpq does, and every answer arrives, through the proxy as directly.
    /// A proxy that only reads a server's answers between writes to it deadlocks here: the
    /// server stops reading once its answers back up. The answers flow before the Sync is
    /// sent, as from PostgreSQL itself: the proxy does not hold the pipeline back until then.
    #[test]
    fn a_pipeline_larger_than_the_socket_buffers_is_answered_in_full() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let c = Cluster::up(2);
        c.psql(0, "test", "CREATE TABLE piped (v text)").unwrap();
        const ROWS: usize = 3000;
        let value = "x".repeat(16 * 1024);
        let mut batch = message(
            b'P',
            &[
                b"\0",
                b"INSERT INTO piped VALUES ($1) RETURNING v",
                b"\0",
                &[0, 0],
            ],
        );
        for _ in 0..ROWS {
            let len = (value.len() as i32).to_be_bytes();
            batch.extend(message(
                b'B',
                &[b"\0\0", &[0, 0], &[0, 1], &len, value.as_bytes(), &[0, 0]],
            ));
            batch.extend(message(b'E', &[b"\0", &[0, 0, 0, 0]]));
        }
        let batch = std::sync::Arc::new(batch);
        block(async {
            for (via, port) in [
                ("directly", c.node_port(0)),
                ("through the proxy", c.proxy_port()),
            ] {
                let s = login_at(&c, port).await;
                let (mut rd, mut wr) = s.into_split();
                let out = batch.clone();
                let (first_row, answered) = tokio::sync::oneshot::channel::<()>();
                let writer = tokio::spawn(async move {
                    wr.write_all(&out).await?;
                    // The Sync only once answers have come without it.
                    let _ = answered.await;
                    wr.write_all(&message(b'S', &[])).await?;
                    Ok::<_, std::io::Error>(wr)
                });
                // A stall, not a slow run, is the failure: each message must come within
                // 30 s (the machine may be busy with other tests), and the report says how
                // far the answers got.
                let stalled = |rows: usize, what: &str| -> ! {
                    panic!("{via}: no {what} for 30 s after {rows} of {ROWS} rows (a deadlock, or answers held back until a Sync)")
                };
                let mut first_row = Some(first_row);
                let (mut rows, mut bytes, mut errors) = (0usize, 0usize, String::new());
                let wait = Duration::from_secs(30);
                loop {
                    let mut head = [0u8; 5];
                    match tokio::time::timeout(wait, rd.read_exact(&mut head)).await {
                        Ok(r) => r.map(|_| ()).unwrap(),
                        Err(_) => stalled(rows, "answer"),
                    }
                    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4;
                    let mut body = vec![0u8; len];
                    match tokio::time::timeout(wait, rd.read_exact(&mut body)).await {
                        Ok(r) => r.map(|_| ()).unwrap(),
                        Err(_) => stalled(rows, "rest of a message"),
                    }
                    match head[0] {
                        b'D' => {
                            rows += 1;
                            bytes += len;
                            if let Some(tx) = first_row.take() {
                                let _ = tx.send(());
                            }
                        }
                        b'Z' => break,
                        b'E' => errors.push_str(&String::from_utf8_lossy(&body)),
                        _ => {}
                    }
                }
                assert_eq!(errors, "", "{via}");
                assert_eq!(rows, ROWS, "{via}: every row's answer arrives");
                assert!(bytes > ROWS * value.len(), "{via}");
                let _wr = writer.await.unwrap().expect("the whole pipeline was taken");
            }
        });
        let n = c.psql(0, "test", "SELECT count(*) FROM piped").unwrap();
        assert_eq!(n.trim(), (2 * ROWS).to_string());

        // A statement prepared by a session whose reads go to the standby, then bound in a
        // long pipeline (which goes to the primary, as it may write): it exists there too.
        block(async {
            use tokio::io::AsyncWriteExt;
            for attempt in 0.. {
                assert!(attempt < 60, "no session was balanced to the standby");
                let mut s = login(&c).await;
                let mut prep = message(
                    b'P',
                    &[
                        b"r\0",
                        b"SELECT inet_server_port(), $1::text",
                        b"\0",
                        &[0, 0],
                    ],
                );
                prep.extend(message(b'S', &[]));
                s.write_all(&prep).await.unwrap();
                read_until(&mut s, b'Z').await;
                s.write_all(&query("SELECT inet_server_port()"))
                    .await
                    .unwrap();
                let got = text(&read_until(&mut s, b'Z').await);
                if !got.contains(&c.node_port(1).to_string()) {
                    continue;
                }
                // The first parts bind a statement parsed in the pipeline itself; only a
                // later part binds the one parsed on the standby.
                let mut batch = message(b'P', &[b"q\0", b"SELECT 0, $1::text", b"\0", &[0, 0]]);
                for i in 0..200 {
                    let len = (value.len() as i32).to_be_bytes();
                    let stmt: &[u8] = if i < 100 { b"\0q\0" } else { b"\0r\0" };
                    batch.extend(message(
                        b'B',
                        &[stmt, &[0, 0], &[0, 1], &len, value.as_bytes(), &[0, 0]],
                    ));
                    batch.extend(message(b'E', &[b"\0", &[0, 0, 0, 0]]));
                }
                batch.extend(message(b'S', &[]));
                s.write_all(&batch).await.unwrap();
                let got = read_until(&mut s, b'Z').await;
                let rows = got.iter().filter(|(t, _)| *t == b'D').count();
                assert_eq!(rows, 200, "{}", text(&got[..3.min(got.len())]));
                break;
            }
        });
    }

    /// `DEALLOCATE name` drops a statement parsed through the protocol too (they share one
    /// namespace): a later Bind fails as on one server, even where the session's reads go
    /// elsewhere (pgwarden must not parse it again there from its record).
    #[test]
    fn a_deallocated_statement_is_gone_as_on_one_server() {
        use tokio::io::AsyncWriteExt;
        let c = Cluster::up(2);
        block(async {
            for attempt in 0.. {
                assert!(attempt < 60, "no session was balanced to the standby");
                let mut s = login(&c).await;
                s.write_all(&query("SELECT inet_server_port()"))
                    .await
                    .unwrap();
                if !text(&read_until(&mut s, b'Z').await).contains(&c.node_port(1).to_string()) {
                    continue;
                }
                // Parsed in a transaction: on the primary only.
                s.write_all(&query("BEGIN")).await.unwrap();
                read_until(&mut s, b'Z').await;
                let mut prep = message(
                    b'P',
                    &[b"q\0", b"SELECT inet_server_port()", b"\0", &[0, 0]],
                );
                prep.extend(message(b'S', &[]));
                s.write_all(&prep).await.unwrap();
                read_until(&mut s, b'Z').await;
                s.write_all(&query("COMMIT")).await.unwrap();
                read_until(&mut s, b'Z').await;

                s.write_all(&query("DEALLOCATE q")).await.unwrap();
                let got = text(&read_until(&mut s, b'Z').await);
                assert!(got.contains("DEALLOCATE"), "{got}");
                s.write_all(&execute_sync("q")).await.unwrap();
                let got = text(&read_until(&mut s, b'Z').await);
                assert!(
                    got.contains("C26000"),
                    "a Bind of a deallocated statement: {got}"
                );
                assert!(
                    got.contains("prepared statement \"q\" does not exist"),
                    "{got}"
                );
                // And it can be prepared again under that name.
                let mut prep = message(b'P', &[b"q\0", b"SELECT 42", b"\0", &[0, 0]]);
                prep.extend(execute_sync("q"));
                s.write_all(&prep).await.unwrap();
                let got = text(&read_until(&mut s, b'Z').await);
                assert!(got.contains("42") && !got.contains("C42P05"), "{got}");
                break;
            }
        });
    }

    /// A SQL PREPARE made in a read-only transaction on a standby is made on the primary
    /// after it (see `a_statement_prepared_in_a_read_only_transaction_…`): pgwarden asks the
    /// standby for the statement's text, then prepares it on the primary. On either node the
    /// client may have an unnamed statement of its own, parsed before the transaction: it must
    /// be the same statement after it, as on one server, where only the client's next Parse of
    /// it or its next simple Query replaces it. Everything else here goes through named
    /// statements, so nothing of the client's own replaces it: not the PREPARE, nor a setting
    /// made in the transaction, read back there and made on the primary too.
    #[test]
    fn the_unnamed_statement_outlives_a_prepare_made_on_the_primary_for_the_session() {
        let c = Cluster::up(2);
        let (primary, standby) = (c.node_port(0), c.node_port(1));
        let app_name = named("a", "SELECT current_setting('application_name')");
        let bind_unnamed = || {
            let mut v = message(b'B', &[b"\0\0", &[0, 0, 0, 0, 0, 0]]);
            v.extend(message(b'E', &[b"\0", &[0, 0, 0, 0]]));
            v.extend(message(b'S', &[]));
            v
        };
        // A read-only transaction on the standby, with a PREPARE in it (retried while the
        // session's reads go to the primary: a statement sent there sets its
        // read-your-writes floor until the standby is known to have replayed it).
        async fn prepare_on_standby(
            s: &mut tokio::net::TcpStream,
            q: &str,
            set: &str,
            ports: (u16, u16),
        ) {
            let (primary, standby) = ports;
            for i in 0..50 {
                let got = exchange(
                    s,
                    &[
                        (named(&format!("b{i}"), "BEGIN READ ONLY"), b'Z'),
                        (named(&format!("w{i}"), "SELECT inet_server_port()"), b'Z'),
                    ],
                )
                .await;
                if got == format!("12CZ(T) |12D({standby}) CZ(T) |") {
                    let got = exchange(
                        s,
                        &[
                            (named("p", &format!("PREPARE {q} AS SELECT 8")), b'Z'),
                            (named("s", set), b'Z'),
                            (named("c", "COMMIT"), b'Z'),
                        ],
                    )
                    .await;
                    assert_eq!(got, "12CZ(T) |12CSZ(T) |12CZ(I) |");
                    return;
                }
                assert_eq!(got, format!("12CZ(T) |12D({primary}) CZ(T) |"));
                exchange(s, &[(named(&format!("r{i}"), "ROLLBACK"), b'Z')]).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            panic!("no read-only transaction ran on the standby in 10 s");
        }
        block(async {
            // The unnamed statement on the standby (parsed by `standby_session`), where
            // pgwarden asks for the PREPARE's text.
            let mut s = standby_session(&c).await;
            prepare_on_standby(&mut s, "q", "SET application_name = a", (primary, standby)).await;
            let after = exchange(&mut s, &[(bind_unnamed(), b'Z')]).await;
            assert_eq!(after, format!("2D({standby}) CZ(I) |"), "on the standby");
            let got = exchange(&mut s, &[(named("e", "EXECUTE q"), b'Z')]).await;
            assert_eq!(got, "12D(8) CZ(I) |");
            // The client's own simple Query destroys it, wherever it runs (here on the
            // primary, where the PREPARE pinned the session), as on one server.
            exchange(&mut s, &[(query("SET application_name = c"), b'Z')]).await;
            let gone = exchange(&mut s, &[(bind_unnamed(), b'Z')]).await;
            assert_eq!(gone, "E(26000) Z(I) |", "after a simple Query");

            // The unnamed statement on the primary, where pgwarden prepares it.
            let mut s = standby_session(&c).await;
            let mut v = run_unnamed("/*NO LOAD BALANCE*/ SELECT inet_server_port() + 0");
            v.extend(message(b'S', &[]));
            let before = exchange(&mut s, &[(v, b'Z')]).await;
            assert_eq!(before, format!("12D({primary}) CZ(I) |"));
            prepare_on_standby(&mut s, "r", "SET application_name = b", (primary, standby)).await;
            let after = exchange(&mut s, &[(bind_unnamed(), b'Z')]).await;
            assert_eq!(after, format!("2D({primary}) CZ(I) |"), "on the primary");
            let got = exchange(&mut s, &[(named("e", "EXECUTE r"), b'Z')]).await;
            assert_eq!(got, "12D(8) CZ(I) |");
            // The setting made in the transaction was carried to the primary.
            let got = exchange(&mut s, &[(app_name.clone(), b'Z')]).await;
            assert_eq!(got, "12D(b) CZ(I) |");

            // A client's statement under the name pgwarden's own statements start with: it is
            // neither taken nor closed when a setting made on the primary is carried to the
            // standby, and the setting arrives.
            let mut s = standby_session(&c).await;
            let own = "pgwarden: own statement";
            let got = exchange(&mut s, &[(named(own, "SELECT inet_server_port()"), b'Z')]).await;
            assert_eq!(got, format!("12D({standby}) CZ(I) |"));
            exchange(&mut s, &[(query("SET application_name = zz"), b'Z')]).await;
            let got = exchange(&mut s, &[(execute_sync(own), b'Z')]).await;
            assert_eq!(
                got,
                format!("2D({standby}) CZ(I) |"),
                "the client's statement"
            );
            let got = exchange(&mut s, &[(app_name.clone(), b'Z')]).await;
            assert_eq!(got, "12D(zz) CZ(I) |", "the setting, on the standby");
        });
    }

    /// What asyncpg does, which other drivers do not: COPY data right behind the COPY query,
    /// before the CopyInResponse; a simple Query after a batch that ended with Flush; a
    /// Flush-ended batch right behind a write (while pgwarden asks the primary for its LSN).
    #[test]
    fn asyncpg_style_pipelining_is_answered_in_full() {
        use tokio::io::AsyncWriteExt;
        let c = Cluster::up(2);
        c.psql(0, "test", "CREATE TABLE early (v int)").unwrap();
        block(async {
            // COPY data sent at once.
            let mut s = login(&c).await;
            let mut b = query("COPY early FROM STDIN");
            b.extend(message(b'd', &[b"1\n2\n"]));
            b.extend(message(b'c', &[]));
            s.write_all(&b).await.unwrap();
            let got = text(&read_until(&mut s, b'Z').await);
            assert!(got.contains("COPY 2"), "{got}");

            // A statement prepared with Flush (on the session's read node, often a standby),
            // then a write as a simple Query: the write reaches the primary.
            let mut on_standby = 0;
            for i in 0..40 {
                let mut s = login(&c).await;
                s.write_all(&query("SELECT inet_server_port()"))
                    .await
                    .unwrap();
                let got = read_until(&mut s, b'Z').await;
                let port = first_value(&got);
                if port == c.node_port(1).to_string() {
                    on_standby += 1;
                }
                s.write_all(&prepare_flush("p", "SELECT inet_server_port()"))
                    .await
                    .unwrap();
                read_until(&mut s, b'T').await;
                s.write_all(&query(&format!("INSERT INTO early VALUES ({i})")))
                    .await
                    .unwrap();
                let got = text(&read_until(&mut s, b'Z').await);
                assert!(got.contains("INSERT 0 1"), "{got}");
                // The prepared statement still works, wherever it runs now.
                s.write_all(&execute_sync("p")).await.unwrap();
                let got = text(&read_until(&mut s, b'Z').await);
                assert!(got.contains("SELECT 1"), "{got}");
                if on_standby >= 2 {
                    break;
                }
            }
            assert!(on_standby >= 1, "no session was balanced to the standby");

            // A write, and a Flush-ended batch right behind it (in the same packet, and after
            // its answer): all the batch's answers arrive.
            for together in [true, false].repeat(10) {
                let mut s = login(&c).await;
                let mut b = query("INSERT INTO early VALUES (100)");
                let prep = prepare_flush("w", "INSERT INTO early VALUES (101)");
                if together {
                    b.extend(&prep);
                    s.write_all(&b).await.unwrap();
                    read_until(&mut s, b'Z').await;
                } else {
                    s.write_all(&b).await.unwrap();
                    read_until(&mut s, b'Z').await;
                    s.write_all(&prep).await.unwrap();
                }
                read_until(&mut s, b'n').await;
                s.write_all(&execute_sync("w")).await.unwrap();
                let got = text(&read_until(&mut s, b'Z').await);
                assert!(got.contains("INSERT 0 1"), "{got}");
            }
        });
    }

    /// Parse, Bind and Execute of an unnamed statement without parameters.
    fn run_unnamed(sql: &str) -> Vec<u8> {
        let mut v = message(b'P', &[b"\0", sql.as_bytes(), b"\0", &[0, 0]]);
        v.extend(message(b'B', &[b"\0\0", &[0, 0, 0, 0, 0, 0]]));
        v.extend(message(b'E', &[b"\0", &[0, 0, 0, 0]]));
        v
    }

    /// A pipeline that reads, flushes (psycopg 3 does so when a result is fetched inside
    /// `conn.pipeline()`), then writes: the read part runs on the session's standby, the
    /// write on the primary — not on the standby, which would refuse it ("cannot execute INSERT
    /// in a read-only transaction"). When the read part fails, the write is dropped up to the
    /// Sync, as PostgreSQL drops it: the client sees the same messages as from one server.
    #[test]
    fn a_write_after_a_flushed_read_in_a_pipeline_reaches_the_primary() {
        use tokio::io::AsyncWriteExt;
        let c = Cluster::up(2);
        c.psql(0, "test", "CREATE TABLE piped (v int)").unwrap();
        c.wait_node(1, Duration::from_secs(10), "replayed", |n| {
            n["lag_bytes"] == 0
        });
        block(async {
            let mut ok_on_standby = 0;
            let mut failed_on_standby = 0;
            for i in 0..60 {
                let mut s = login(&c).await;
                // Where this session's reads go.
                let mut b = run_unnamed("SELECT inet_server_port()");
                b.extend(message(b'H', &[]));
                s.write_all(&b).await.unwrap();
                let got = read_until(&mut s, b'C').await;
                let port = first_value(&got);
                if port != c.node_port(1).to_string() {
                    continue;
                }
                let fail = ok_on_standby > 0 && failed_on_standby == 0;
                if fail {
                    // The open part fails on the standby…
                    let mut b = run_unnamed("SELECT 1/0");
                    b.extend(message(b'H', &[]));
                    s.write_all(&b).await.unwrap();
                    let got = text(&read_until(&mut s, b'E').await);
                    assert!(got.contains("division by zero"), "{got}");
                }
                let mut b = run_unnamed(&format!("INSERT INTO piped VALUES ({i})"));
                b.extend(run_unnamed(&format!(
                    "SELECT count(*) FROM piped WHERE v = {i}"
                )));
                b.extend(message(b'S', &[]));
                s.write_all(&b).await.unwrap();
                let got = read_until(&mut s, b'Z').await;
                let tags: String = got.iter().map(|(t, _)| *t as char).collect();
                if fail {
                    // …and the rest of the pipeline is dropped up to the Sync.
                    assert_eq!(tags, "Z", "{}", text(&got));
                    failed_on_standby += 1;
                } else {
                    assert_eq!(tags, "12C12DCZ", "{}", text(&got));
                    let all = text(&got);
                    assert!(all.contains("INSERT 0 1"), "{all}");
                    assert!(
                        all.contains("D:\0\u{1}\0\0\0\u{1}1"),
                        "the session reads its own write: {all}"
                    );
                    ok_on_standby += 1;
                }
                // The session goes on.
                s.write_all(&query("SELECT 42")).await.unwrap();
                let got = text(&read_until(&mut s, b'Z').await);
                assert!(got.contains("42"), "{got}");
                if ok_on_standby >= 2 && failed_on_standby >= 1 {
                    break;
                }
            }
            assert!(
                ok_on_standby >= 2 && failed_on_standby >= 1,
                "too few sessions were balanced to the standby: {ok_on_standby} + {failed_on_standby}"
            );
        });
        // The writes after a failed read were not made; the others were.
        let rows = c.psql(0, "test", "SELECT count(*) FROM piped").unwrap();
        let expected = c
            .psql(0, "test", "SELECT count(DISTINCT v) FROM piped")
            .unwrap();
        assert_eq!(rows, expected);
        assert_eq!(rows, "2", "two pipelines wrote, the failed one did not");
    }

    /// A raw session through the proxy whose reads go to the standby (node 1), learnt with a
    /// read ended by Sync (the session's load-balance node holds until it writes).
    async fn standby_session(c: &Cluster) -> tokio::net::TcpStream {
        use tokio::io::AsyncWriteExt;
        for _ in 0..60 {
            let mut s = login(c).await;
            let mut b = run_unnamed("SELECT inet_server_port()");
            b.extend(message(b'S', &[]));
            s.write_all(&b).await.unwrap();
            if first_value(&read_until(&mut s, b'Z').await) == c.node_port(1).to_string() {
                return s;
            }
        }
        panic!("no session was balanced to the standby in 60 tries");
    }

    /// `steps` sent straight to the primary, then through pgwarden on a session that reads
    /// from the standby: what each showed (`exchange`), and that session, to go on with.
    async fn direct_and_proxied(
        c: &Cluster,
        steps: &[(Vec<u8>, u8)],
    ) -> (String, String, tokio::net::TcpStream) {
        let mut direct = login_at(c, c.node_port(0)).await;
        let want = exchange(&mut direct, steps).await;
        let mut proxied = standby_session(c).await;
        let got = exchange(&mut proxied, steps).await;
        (want, got, proxied)
    }

    /// Bytes to send, and the tag whose arrival ends what they bring back.
    type Steps = Vec<(Vec<u8>, u8)>;

    /// Sends each step's bytes, then reads until the step's closing tag; what came back, as
    /// tags (a ReadyForQuery with its status, an error with its SQLSTATE, a row with its first
    /// value: an answer relayed late shows as a wrong value).
    async fn exchange(s: &mut tokio::net::TcpStream, steps: &[(Vec<u8>, u8)]) -> String {
        use tokio::io::AsyncWriteExt;
        let mut out = String::new();
        for (bytes, until) in steps {
            s.write_all(bytes).await.unwrap();
            for (t, b) in read_until(s, *until).await {
                show(&mut out, t, &b);
            }
            out.push('|');
        }
        out
    }

    /// One backend message as `exchange` shows it: a ReadyForQuery with its status, an error
    /// with its SQLSTATE, a row with its first value, anything else by its tag.
    fn show(out: &mut String, t: u8, b: &[u8]) {
        match t {
            b'Z' => out.push_str(&format!("Z({}) ", b[0] as char)),
            b'E' => {
                let code = b
                    .split(|x| *x == 0)
                    .find(|f| f.first() == Some(&b'C'))
                    .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
                    .unwrap_or_default();
                out.push_str(&format!("E({code}) "));
            }
            b'D' => out.push_str(&format!("D({}) ", first_value(&[(t, b.to_vec())]))),
            t => out.push(t as char),
        }
    }

    /// A statement parsed on the primary that the standby refused when a pipeline opened there
    /// (its table not replayed yet), then bound in that pipeline's open part: the part is
    /// ended on the standby and the statement runs on the primary, as on one server, and so
    /// does the rest of the pipeline, with a statement parsed on the standby. (pgwarden parsed
    /// it on the standby again, with a Sync of its own in the middle of the client's part;
    /// that failed, the client got "prepared statement does not exist" and no answer.)
    #[test]
    fn a_statement_a_lagging_standby_refused_runs_on_the_primary_mid_pipeline() {
        let c = Cluster::up(2);
        c.wait_node(1, Duration::from_secs(10), "replayed", |n| {
            n["lag_bytes"] == 0
        });
        c.psql(1, "test", "SELECT pg_wal_replay_pause()").unwrap();
        c.psql(0, "test", "CREATE TABLE lagged (v int)").unwrap();
        let steps: Steps = vec![
            // A setting beside it: the batch goes to the primary without writing anything, so
            // the session's reads may still go to the standby.
            (
                [
                    run_unnamed("SET application_name = 'lagging'"),
                    message(
                        b'P',
                        &[b"s_lag\0", b"SELECT count(*) FROM lagged\0", &[0, 0]],
                    ),
                    message(b'S', &[]),
                ]
                .concat(),
                b'Z',
            ),
            // A read opens the pipeline on the standby, and a statement is parsed there.
            (
                [
                    run_unnamed("SELECT 1"),
                    message(b'P', &[b"s_new\0", b"SELECT 2\0", &[0, 0]]),
                    message(b'D', &[b"Ss_new\0"]),
                    message(b'H', &[]),
                ]
                .concat(),
                b'T',
            ),
            (
                [
                    message(b'B', &[b"\0s_lag\0", &[0, 0, 0, 0, 0, 0]]),
                    message(b'E', &[b"\0", &[0, 0, 0, 0]]),
                    message(b'H', &[]),
                ]
                .concat(),
                b'C',
            ),
            // The pipeline goes on where that went (the primary): the statement parsed on
            // the standby is there too.
            (
                [
                    message(b'B', &[b"\0s_new\0", &[0, 0, 0, 0, 0, 0]]),
                    message(b'E', &[b"\0", &[0, 0, 0, 0]]),
                    message(b'S', &[]),
                ]
                .concat(),
                b'Z',
            ),
        ];
        // A pipeline opened in a read-only transaction on the standby: every statement the
        // session has is parsed there first, the refused one too, which must not abort the
        // client's transaction. (It did, unseen: the client's own statement then failed with
        // "current transaction is aborted", 25P02.)
        let in_tx: Steps = vec![
            (steps[0].0.clone(), b'Z'),
            (query("BEGIN READ ONLY"), b'Z'),
            (
                [
                    run_unnamed("SELECT 1"),
                    message(b'H', &[]),
                    message(b'S', &[]),
                ]
                .concat(),
                b'Z',
            ),
            (query("ROLLBACK"), b'Z'),
        ];
        block(async {
            let (want, got, _) = direct_and_proxied(&c, &steps).await;
            assert_eq!(got, want);
            let (want, got, _) = direct_and_proxied(&c, &in_tx).await;
            assert_eq!(got, want, "in a transaction");
        });
        c.psql(1, "test", "SELECT pg_wal_replay_resume()").unwrap();
    }

    /// A cursor held on a standby, fetched in a pipeline open there, in one batch with a
    /// statement the standby refused when the part began (it lagged behind the primary's DDL,
    /// and has caught up since): the batch stays with the cursor, which exists nowhere else;
    /// the part is ended and the statement parsed on the standby again. (The batch went to the
    /// primary, as a refused statement's batch does, and the FETCH failed there: 34000.)
    #[test]
    fn a_held_cursor_fetched_with_a_statement_its_standby_refused_stays_with_the_cursor() {
        let c = Cluster::up(2);
        c.wait_node(1, Duration::from_secs(10), "replayed", |n| {
            n["lag_bytes"] == 0
        });
        c.psql(1, "test", "SELECT pg_wal_replay_pause()").unwrap();
        c.psql(0, "test", "CREATE TABLE lagged_held (v int)")
            .unwrap();
        let before: Steps = vec![
            (
                [
                    run_unnamed("SET application_name = 'lagging'"),
                    message(
                        b'P',
                        &[b"s_lh\0", b"SELECT count(*) FROM lagged_held\0", &[0, 0]],
                    ),
                    message(b'S', &[]),
                ]
                .concat(),
                b'Z',
            ),
            (query("BEGIN READ ONLY"), b'Z'),
            (
                query("DECLARE lh CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 3) g"),
                b'Z',
            ),
            (query("COMMIT"), b'Z'),
            // The part opens on the standby, which refuses s_lh.
            ([run_unnamed("SELECT 1"), message(b'H', &[])].concat(), b'C'),
        ];
        let after: Steps = vec![
            (
                [
                    run_unnamed("FETCH 1 FROM lh"),
                    message(b'B', &[b"\0s_lh\0", &[0, 0, 0, 0, 0, 0]]),
                    message(b'E', &[b"\0", &[0, 0, 0, 0]]),
                    message(b'S', &[]),
                ]
                .concat(),
                b'Z',
            ),
            (query("FETCH 1 FROM lh"), b'Z'),
        ];
        block(async {
            let mut direct = login_at(&c, c.node_port(0)).await;
            let want = exchange(&mut direct, &[before.clone(), after.clone()].concat()).await;
            let mut proxied = standby_session(&c).await;
            let mut got = exchange(&mut proxied, &before).await;
            c.psql(1, "test", "SELECT pg_wal_replay_resume()").unwrap();
            let start = std::time::Instant::now();
            while c.psql(1, "test", "SELECT to_regclass('lagged_held') IS NOT NULL")
                != Ok("t".to_string())
            {
                assert!(start.elapsed() < Duration::from_secs(10), "not replayed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            got.push_str(&exchange(&mut proxied, &after).await);
            assert_eq!(got, want);
        });
    }

    /// A cursor held on a standby, fetched in a pipeline the client opened on the primary (a
    /// write, then Flush): the client sees what one server shows, and once its Sync is
    /// answered its write is committed. pgwarden ends the primary's open part with its own
    /// Sync, as before a Query, then runs the FETCH where the cursor is. (The FETCH went to
    /// the standby in the middle of the primary's part, which was never synced: the write the
    /// client's Sync answered stayed uncommitted, the primary's backend idle in transaction.)
    #[test]
    fn a_held_cursor_fetched_in_a_pipeline_open_on_the_primary_leaves_no_write_behind() {
        let c = Cluster::up(2);
        c.psql(0, "test", "CREATE TABLE piped_held (v int)")
            .unwrap();
        c.wait_node(1, Duration::from_secs(10), "replayed", |n| {
            n["lag_bytes"] == 0
        });
        let steps: Steps = vec![
            (query("BEGIN READ ONLY"), b'Z'),
            (
                query("DECLARE hc CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 3) g"),
                b'Z',
            ),
            (query("COMMIT"), b'Z'),
            (
                [
                    run_unnamed("INSERT INTO piped_held VALUES (1)"),
                    message(b'H', &[]),
                ]
                .concat(),
                b'C',
            ),
            (
                [
                    run_unnamed("FETCH 2 FROM hc"),
                    message(b'H', &[]),
                    message(b'S', &[]),
                ]
                .concat(),
                b'Z',
            ),
        ];
        let idle_in_transaction = || {
            c.psql(
                0,
                "test",
                "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
            )
            .unwrap()
        };
        block(async {
            let (want, got, mut proxied) = direct_and_proxied(&c, &steps).await;
            assert_eq!(got, want);
            assert_eq!(
                c.psql(0, "test", "SELECT count(*) FROM piped_held")
                    .unwrap(),
                "2",
                "both writes committed once their Syncs were answered"
            );
            assert_eq!(idle_in_transaction(), "0");
            // The session goes on, on the standby.
            let got = exchange(&mut proxied, &[(query("FETCH 1 FROM hc"), b'Z')]).await;
            assert!(got.contains("D(3)"), "{got}");
        });
    }

    /// The corners of ending a pipeline's open part on a standby, each compared with the same
    /// messages sent straight to the primary: the client must see what one server shows.
    /// - earlier Syncs' answers still due when the write arrives (their ReadyForQuery is the
    ///   client's, not the one pgwarden keeps back);
    /// - a statement prepared on the standby, bound after the pipeline moved to the primary
    ///   (it is parsed there before the pipeline opens, not in the middle of it);
    /// - an error in the open part inside `BEGIN READ ONLY` (the rest is dropped, the Sync
    ///   answered 'E');
    /// - an error in the open part, then a simple Query before the Sync (dropped too);
    /// - a setting and a COPY in one batch (pgwarden waits for a setting's outcome, but not
    ///   past the COPY's start: the rest of it comes from the client);
    /// - a setting pipelined behind a BEGIN, rolled back: not replayed on another node;
    /// - a BEGIN that fails behind a Flush (nothing held), BEGIN READ ONLY in the open part
    ///   followed by a write (refused in that transaction, as one server would), and a
    ///   transaction begun, read, written and committed across Flushes;
    /// - a write pipelined behind a failing BEGIN READ ONLY, or behind BEGIN READ ONLY and
    ///   COMMIT: it runs outside a transaction, on the primary.
    #[test]
    fn a_pipeline_moved_off_a_standby_answers_as_one_server_would() {
        let c = Cluster::up(2);
        c.psql(0, "test", "CREATE TABLE moved (v int)").unwrap();
        c.psql(0, "test", "CREATE TABLE copied (v int)").unwrap();
        c.wait_node(1, Duration::from_secs(10), "replayed", |n| {
            n["lag_bytes"] == 0
        });
        let h = || message(b'H', &[]);
        let sync = || message(b'S', &[]);
        let with = |mut a: Vec<u8>, b: Vec<u8>| {
            a.extend(b);
            a
        };
        let mut cases: Vec<(&str, Steps)> = vec![
            (
                "answers due from earlier Syncs",
                vec![
                    (
                        [
                            run_unnamed("SELECT 1"),
                            sync(),
                            run_unnamed("SELECT 2"),
                            h(),
                            run_unnamed("INSERT INTO moved VALUES (1)"),
                            sync(),
                        ]
                        .concat(),
                        b'Z',
                    ),
                    // (The first read stops at the first Sync's answer.)
                    (Vec::new(), b'Z'),
                ],
            ),
            (
                "a statement prepared in the open part, bound after the write",
                vec![
                    (
                        {
                            let mut v = message(b'P', &[b"s1\0", b"SELECT 7\0", &[0, 0]]);
                            v.extend(message(b'B', &[b"\0s1\0", &[0, 0, 0, 0, 0, 0]]));
                            v.extend(message(b'E', &[b"\0", &[0, 0, 0, 0]]));
                            with(v, h())
                        },
                        b'C',
                    ),
                    // (In one write: the INSERT's answers are not relayed yet when the Bind
                    // of s1 arrives.)
                    (
                        {
                            let mut v = run_unnamed("INSERT INTO moved VALUES (2)");
                            v.extend(h());
                            v.extend(message(b'B', &[b"\0s1\0", &[0, 0, 0, 0, 0, 0]]));
                            v.extend(message(b'E', &[b"\0", &[0, 0, 0, 0]]));
                            with(v, sync())
                        },
                        b'Z',
                    ),
                ],
            ),
            (
                "an error in an explicit read-only transaction's open part",
                vec![
                    (
                        [
                            run_unnamed("BEGIN READ ONLY"),
                            run_unnamed("SELECT 1/0"),
                            h(),
                        ]
                        .concat(),
                        b'E',
                    ),
                    (
                        with(run_unnamed("INSERT INTO moved VALUES (3)"), sync()),
                        b'Z',
                    ),
                    (query("ROLLBACK"), b'Z'),
                ],
            ),
            (
                "an error in the open part, then a Query before the Sync",
                vec![
                    (with(run_unnamed("SELECT 1/0"), h()), b'E'),
                    (
                        [
                            run_unnamed("INSERT INTO moved VALUES (4)"),
                            query("SELECT 42"),
                            sync(),
                        ]
                        .concat(),
                        b'Z',
                    ),
                    (query("SELECT 43"), b'Z'),
                ],
            ),
        ];
        let copy_data = || {
            // (The Sync sent with the COPY is ignored during COPY: libpq sends another after
            // CopyDone.)
            let mut v = message(b'd', &[b"5\n"]);
            v.extend(message(b'c', &[]));
            v.extend(message(b'S', &[]));
            v
        };
        cases.push((
            "a setting and a COPY in one batch",
            vec![
                (
                    [
                        run_unnamed("SET application_name = 'copying'"),
                        run_unnamed("COPY copied FROM STDIN"),
                        sync(),
                    ]
                    .concat(),
                    b'G',
                ),
                (copy_data(), b'Z'),
                (query("SELECT current_setting('application_name')"), b'Z'),
            ],
        ));
        cases.push((
            "a setting pipelined behind a BEGIN, rolled back",
            vec![
                (
                    [
                        query("BEGIN READ ONLY"),
                        query("SET application_name = 'in_tx'"),
                    ]
                    .concat(),
                    b'Z',
                ),
                (Vec::new(), b'Z'),
                (query("ROLLBACK"), b'Z'),
                // On the primary, whose connection pgwarden gives the session's settings.
                (
                    query("/*NO LOAD BALANCE*/ SELECT current_setting('application_name')"),
                    b'Z',
                ),
            ],
        ));
        // A BEGIN holds the session from when it is sent (before its answer): what follows it
        // in the pipeline runs in its transaction, where it runs; a BEGIN that fails holds
        // nothing.
        cases.push((
            "a failing BEGIN behind a Flush, then a write",
            vec![
                (with(run_unnamed("BEGIN ISOLATION LEVEL bogus"), h()), b'E'),
                (with(run_unnamed("SELECT 1"), sync()), b'Z'),
                (query("INSERT INTO moved VALUES (5)"), b'Z'),
                (query("SELECT 44"), b'Z'),
            ],
        ));
        cases.push((
            "BEGIN READ ONLY in the open part, then a write in it",
            vec![
                (with(run_unnamed("SELECT 1"), h()), b'C'),
                (
                    [run_unnamed("BEGIN READ ONLY"), run_unnamed("SELECT 2"), h()].concat(),
                    b'C',
                ),
                (Vec::new(), b'C'),
                (
                    with(run_unnamed("INSERT INTO moved VALUES (6)"), sync()),
                    b'Z',
                ),
                (query("ROLLBACK"), b'Z'),
            ],
        ));
        cases.push((
            "BEGIN, a read, a write and COMMIT across Flushes",
            vec![
                (with(run_unnamed("BEGIN"), h()), b'C'),
                (with(run_unnamed("SELECT 3"), h()), b'C'),
                (
                    [
                        run_unnamed("INSERT INTO moved VALUES (7)"),
                        run_unnamed("COMMIT"),
                        sync(),
                    ]
                    .concat(),
                    b'Z',
                ),
                (query("SELECT 45"), b'Z'),
            ],
        ));
        // A write pipelined behind a transaction's end, or behind a BEGIN READ ONLY that
        // fails, runs outside any transaction: on the primary, not on the standby.
        cases.push((
            "a failing BEGIN READ ONLY and a write, pipelined",
            vec![
                (
                    [
                        query("BEGIN READ ONLY ISOLATION LEVEL bogus"),
                        query("INSERT INTO moved VALUES (8)"),
                    ]
                    .concat(),
                    b'Z',
                ),
                (Vec::new(), b'Z'),
            ],
        ));
        cases.push((
            "BEGIN READ ONLY, COMMIT and a write, pipelined",
            vec![
                (
                    [
                        query("BEGIN READ ONLY"),
                        query("COMMIT"),
                        query("INSERT INTO moved VALUES (9)"),
                    ]
                    .concat(),
                    b'Z',
                ),
                (Vec::new(), b'Z'),
                (Vec::new(), b'Z'),
            ],
        ));
        // A Query sent behind an open part before its answers are read: the server runs it
        // as if a Sync came first, unless the open part failed, and then it skips it (no
        // answer at all, not even a ReadyForQuery) up to the client's Sync.
        cases.push((
            "a Query behind an open part that fails, sent before the error is read",
            vec![
                (
                    [run_unnamed("SELECT 1/0"), h(), query("SELECT 46"), sync()].concat(),
                    b'Z',
                ),
                (query("INSERT INTO moved VALUES (10)"), b'Z'),
                (query("SELECT 47"), b'Z'),
            ],
        ));
        cases.push((
            "a Query behind an open part that succeeds, sent before its answers are read",
            vec![
                (
                    [run_unnamed("SELECT 5"), h(), query("SELECT 48"), sync()].concat(),
                    b'Z',
                ),
                (Vec::new(), b'Z'),
                (query("INSERT INTO moved VALUES (11)"), b'Z'),
            ],
        ));
        // The same for a FunctionCall (libpq's PQfn, as its large-object calls send), of
        // pg_catalog.pg_backend_pid() (oid 2026): no formats, no arguments, text result.
        let call = || message(b'F', &[&2026i32.to_be_bytes(), &[0, 0], &[0, 0], &[0, 0]]);
        cases.push((
            "a FunctionCall behind an open part that fails",
            vec![
                (
                    [run_unnamed("SELECT 1/0"), h(), call(), sync()].concat(),
                    b'Z',
                ),
                (query("INSERT INTO moved VALUES (12)"), b'Z'),
            ],
        ));
        cases.push((
            "a FunctionCall behind an open part that succeeds",
            vec![
                (
                    [run_unnamed("SELECT 6"), h(), call(), sync()].concat(),
                    b'Z',
                ),
                (Vec::new(), b'Z'),
                (query("INSERT INTO moved VALUES (13)"), b'Z'),
            ],
        ));
        // A setting made in a transaction on the standby reaches the primary before a write
        // there opens a pipeline (it was read back only at the next simple Query); a later
        // setting is not undone by an older value read back.
        cases.push((
            "a setting made in a transaction, then a write opening a pipeline",
            vec![
                (query("BEGIN READ ONLY"), b'Z'),
                (query("SET search_path = app"), b'Z'),
                (query("COMMIT"), b'Z'),
                (
                    with(
                        run_unnamed(
                            "INSERT INTO public.moved VALUES (14) RETURNING current_setting('search_path')",
                        ),
                        h(),
                    ),
                    b'C',
                ),
                (sync(), b'Z'),
                (with(run_unnamed("SET search_path = public"), h()), b'C'),
                (sync(), b'Z'),
                (
                    query("INSERT INTO public.moved VALUES (15) RETURNING current_setting('search_path')"),
                    b'Z',
                ),
            ],
        ));
        // A SET through the extended protocol, undone by an error later in its batch (one
        // implicit transaction): a standby the session reads from must not be given it.
        cases.push((
            "a SET undone by an error later in its batch",
            vec![
                (
                    [
                        run_unnamed("SET search_path = app"),
                        run_unnamed("SELECT 1/0"),
                        sync(),
                    ]
                    .concat(),
                    b'Z',
                ),
                (query("SELECT current_setting('search_path')"), b'Z'),
            ],
        ));
        // A batch that ends a transaction on the standby, then writes: the write runs outside
        // the transaction, on the primary (found by `random_pipelines_…`, seed 548: it went to
        // the standby with the transaction's end, which refused it).
        cases.push((
            "a transaction on the standby ended, then a write, in one batch",
            vec![
                (query("BEGIN READ ONLY"), b'Z'),
                (
                    [
                        run_unnamed("SELECT 1"),
                        run_unnamed("COMMIT"),
                        run_unnamed("INSERT INTO moved VALUES (16)"),
                        sync(),
                    ]
                    .concat(),
                    b'Z',
                ),
                (query("SELECT 51"), b'Z'),
            ],
        ));
        cases.push((
            "an error, then the transaction's end and a write, in one batch",
            vec![
                (query("BEGIN READ ONLY"), b'Z'),
                (
                    [
                        run_unnamed("SELECT 1/0"),
                        run_unnamed("ROLLBACK"),
                        run_unnamed("INSERT INTO moved VALUES (17)"),
                        sync(),
                    ]
                    .concat(),
                    b'Z',
                ),
                (query("ROLLBACK"), b'Z'),
                (query("SELECT 52"), b'Z'),
            ],
        ));
        // A Parse of a name the session has is refused, and the statement stays what it was
        // (found by `random_pipelines_…`, seed 792: pgwarden sent it to a node without the
        // statement, where it was accepted, and took the new text as the statement's).
        cases.push((
            "a statement parsed again under its name",
            vec![
                (
                    [message(b'P', &[b"s7\0", b"SELECT 7\0", &[0, 0]]), sync()].concat(),
                    b'Z',
                ),
                (
                    [
                        message(
                            b'P',
                            &[b"s7\0", b"INSERT INTO moved VALUES (18)\0", &[0, 0]],
                        ),
                        sync(),
                    ]
                    .concat(),
                    b'Z',
                ),
                (execute_sync("s7"), b'Z'),
            ],
        ));
        // A Close after an error in its part is skipped by the server: the statement lives
        // on, and a Bind of it later runs, on the primary too (after a write, the session's
        // reads are there). Before, pgwarden forgot it at the Close, and the Bind failed with
        // "prepared statement does not exist".
        let parse = |name: &str, sql: &str| {
            message(
                b'P',
                &[name.as_bytes(), b"\0", sql.as_bytes(), b"\0", &[0, 0]],
            )
        };
        let close = |name: &str| message(b'C', &[b"S", name.as_bytes(), b"\0"]);
        let bind_sync = |name: &[u8]| {
            [
                message(b'B', &[b"\0", name, b"\0", &[0, 0, 0, 0, 0, 0]]),
                message(b'E', &[b"\0", &[0, 0, 0, 0]]),
                sync(),
            ]
            .concat()
        };
        cases.push((
            "a Close skipped after an error in its part",
            vec![
                ([parse("s8", "SELECT 8"), sync()].concat(), b'Z'),
                (
                    [run_unnamed("SELECT 1/0"), close("s8"), sync()].concat(),
                    b'Z',
                ),
                (query("INSERT INTO moved VALUES (19)"), b'Z'),
                (bind_sync(b"s8"), b'Z'),
                // A Close that ran: the statement is gone, here and there.
                ([close("s8"), sync()].concat(), b'Z'),
                (bind_sync(b"s8"), b'Z'),
            ],
        ));
        // Which Closes ran is told by their answers (CloseComplete, in order up to the part's
        // first error), not by asking the node afterwards: the node a batch went to may never
        // have had the statement, and a Parse of the name behind a skipped Close is skipped too.
        cases.push((
            "a Close skipped on a node that never had the statement",
            vec![
                ([parse("s9", "SELECT 9"), sync()].concat(), b'Z'),
                (
                    [
                        run_unnamed("INSERT INTO moved SELECT 1/0"),
                        close("s9"),
                        sync(),
                    ]
                    .concat(),
                    b'Z',
                ),
                (bind_sync(b"s9"), b'Z'),
            ],
        ));
        cases.push((
            "a Close and a Parse of its name, skipped after an error",
            vec![
                ([parse("s10", "SELECT 10"), sync()].concat(), b'Z'),
                (
                    [
                        run_unnamed("SELECT 1/0"),
                        close("s10"),
                        parse("s10", "SELECT 11"),
                        sync(),
                    ]
                    .concat(),
                    b'Z',
                ),
                (query("INSERT INTO moved VALUES (22)"), b'Z'),
                (bind_sync(b"s10"), b'Z'),
            ],
        ));
        // The same in one Query: what follows the transaction's end runs outside it, on the
        // primary (it was sent to the standby with the COMMIT, which refused it: 25006); after
        // an error before the end, nothing more runs.
        cases.push((
            "a Query that ends a transaction on the standby, then writes",
            vec![
                (query("BEGIN READ ONLY"), b'Z'),
                (
                    query("SELECT 1; COMMIT; INSERT INTO moved VALUES (20); SELECT 54"),
                    b'Z',
                ),
                (query("SELECT 55"), b'Z'),
            ],
        ));
        cases.push((
            "a Query that fails before its transaction's end and write",
            vec![
                (query("BEGIN READ ONLY"), b'Z'),
                (
                    query("SELECT 1/0; COMMIT; INSERT INTO moved VALUES (21)"),
                    b'Z',
                ),
                (query("ROLLBACK"), b'Z'),
                (query("SELECT 56"), b'Z'),
            ],
        ));
        block(async {
            for (what, steps) in &cases {
                let (want, got, _) = direct_and_proxied(&c, steps).await;
                assert_eq!(got, want, "{what}");
            }
        });
        // Rows 1, 2, 5, 7 to 16, 19, 20 and 22 were written twice (direct and through
        // pgwarden); 3, 4, 6, 17 and 21 never.
        assert_eq!(
            c.psql(
                0,
                "test",
                "SELECT string_agg(v::text, ',' ORDER BY v) FROM moved"
            )
            .unwrap(),
            "1,1,2,2,5,5,7,7,8,8,9,9,10,10,11,11,12,12,13,13,14,14,15,15,16,16,19,19,20,20,22,22"
        );
    }

    /// A simple Query behind a pipeline's open part on the primary runs in the part's
    /// implicit transaction, as on one server: it sees the part's writes, they roll back when
    /// it fails, a BEGIN makes them part of the transaction it opens, and a VACUUM is refused
    /// ("cannot be executed within a pipeline"). Before, pgwarden ended the part with a Sync
    /// of its own first, which committed the writes whatever the Query then did. Each case
    /// goes straight to the primary, then through pgwarden (a session of its own, whose part
    /// begins with a write, so on the primary), and both must show the same. (One more case
    /// needs a fresh session too: Describe and Close before anything else.)
    #[test]
    fn a_query_behind_a_pipeline_open_on_the_primary_runs_in_its_transaction() {
        let c = Cluster::up(2);
        c.psql(0, "test", "CREATE TABLE joined (v int)").unwrap();
        let sync = || message(b'S', &[]);
        let insert = |v: i32| with_flush(run_unnamed(&format!("INSERT INTO joined VALUES ({v})")));
        let count = |v: i32| query(&format!("SELECT count(*) FROM joined WHERE v = {v}"));
        // A FunctionCall (libpq's PQfn) of int4div (oid 154), arguments and result as text.
        let int4div = |a: &str, b: &str| {
            let arg = |v: &str| [&(v.len() as i32).to_be_bytes()[..], v.as_bytes()].concat();
            message(
                b'F',
                &[
                    &154i32.to_be_bytes(),
                    &[0, 1, 0, 0, 0, 2],
                    &arg(a),
                    &arg(b),
                    &[0, 0],
                ],
            )
        };
        let cases: Vec<(&str, Steps)> = vec![
            (
                "a Query that fails undoes the part's write",
                vec![
                    (insert(1), b'C'),
                    (query("SELECT 1/0"), b'Z'),
                    (count(1), b'Z'),
                ],
            ),
            (
                "a Query sees the part's write, and commits it",
                vec![
                    (insert(2), b'C'),
                    (count(2), b'Z'),
                    (query("ROLLBACK"), b'Z'),
                    (count(2), b'Z'),
                ],
            ),
            (
                "a BEGIN takes the part's write into its transaction",
                vec![
                    (insert(3), b'C'),
                    (query("BEGIN"), b'Z'),
                    (query("ROLLBACK"), b'Z'),
                    (count(3), b'Z'),
                ],
            ),
            (
                "VACUUM behind an open part",
                vec![
                    (insert(4), b'C'),
                    (query("VACUUM joined"), b'Z'),
                    (count(4), b'Z'),
                ],
            ),
            (
                "a Query behind messages not flushed yet, one of which fails",
                vec![
                    (insert(5), b'C'),
                    (
                        [run_unnamed("SELECT 1/0"), query("SELECT 49"), sync()].concat(),
                        b'Z',
                    ),
                    (count(5), b'Z'),
                ],
            ),
            (
                "a Query behind messages not flushed yet",
                vec![
                    (insert(6), b'C'),
                    (
                        [run_unnamed("INSERT INTO joined VALUES (6)"), count(6)].concat(),
                        b'Z',
                    ),
                    (sync(), b'Z'),
                    (count(6), b'Z'),
                ],
            ),
            (
                "a Query behind a part that wrote in an explicit transaction",
                vec![
                    (
                        with_flush(
                            [
                                run_unnamed("BEGIN"),
                                run_unnamed("INSERT INTO joined VALUES (7)"),
                            ]
                            .concat(),
                        ),
                        b'C',
                    ),
                    (Vec::new(), b'C'),
                    (query("SELECT count(*) FROM joined WHERE v = 7"), b'Z'),
                    (query("ROLLBACK"), b'Z'),
                    (count(7), b'Z'),
                ],
            ),
            (
                "a FunctionCall that fails undoes the part's write",
                vec![
                    (insert(9), b'C'),
                    (int4div("1", "0"), b'Z'),
                    (count(9), b'Z'),
                ],
            ),
            (
                "a FunctionCall commits the part's write",
                vec![
                    (insert(10), b'C'),
                    (int4div("6", "3"), b'Z'),
                    (count(10), b'Z'),
                ],
            ),
            // Describe and Close alone in a session's first batch go to a node (found by
            // `random_pipelines_…`, seed 24: pgwarden, holding no connection yet, answered
            // them with a ReadyForQuery alone, without CloseComplete or the error).
            (
                "Close and Describe of nothing, first in a session",
                vec![
                    ([message(b'C', &[b"Snosuch\0"]), sync()].concat(), b'Z'),
                    ([message(b'D', &[b"Snosuch\0"]), sync()].concat(), b'Z'),
                ],
            ),
            (
                "an error in the part, then a Query and the client's Sync",
                vec![
                    (insert(8), b'C'),
                    (with_flush(run_unnamed("SELECT 1/0")), b'E'),
                    ([query("SELECT 50"), sync()].concat(), b'Z'),
                    (count(8), b'Z'),
                ],
            ),
        ];
        // What a run left in the table, which is emptied for the next.
        let rows = || {
            c.psql_env(
                c.node_port(0),
                "test",
                &[
                    "SELECT coalesce(string_agg(v::text, ',' ORDER BY v), '-') FROM joined",
                    "TRUNCATE joined",
                ],
                &[],
            )
            .unwrap()
        };
        block(async {
            for (what, steps) in &cases {
                let mut direct = login_at(&c, c.node_port(0)).await;
                let want = exchange(&mut direct, steps).await;
                drop(direct);
                let want_rows = rows();
                let mut proxied = login(&c).await;
                let got = exchange(&mut proxied, steps).await;
                drop(proxied);
                assert_eq!(got, want, "{what}");
                assert_eq!(rows(), want_rows, "{what}: rows left");
            }
        });
    }

    /// Random pipelines of the extended and simple protocols — reads, writes, errors,
    /// transactions begun and ended, Flush, Sync, Query — sent straight to the primary, then
    /// through pgwarden (two nodes: reads may go to the standby, the session's own writes
    /// must still show), must bring back the same messages (statuses, SQLSTATEs, values) and
    /// leave the same rows. Each direct and proxied run has a table of its own; the sequences
    /// come from fixed seeds, so a failure names one that can be replayed.
    #[test]
    fn random_pipelines_answer_as_one_server_would() {
        let c = Cluster::up(2);
        c.psql(
            0,
            "test",
            "CREATE TABLE rp_d (v int); CREATE TABLE rp_p (v int)",
        )
        .unwrap();
        c.wait_node(1, Duration::from_secs(10), "replayed", |n| {
            n["lag_bytes"] == 0
        });
        block(async {
            let mut covered = [0usize; 3];
            // (PGWARDEN_TEST_SEEDS=N runs more, to hunt.)
            let seeds = std::env::var("PGWARDEN_TEST_SEEDS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(120u64);
            for seed in 1..=seeds {
                let steps = random_steps(seed);
                let direct = pipeline_transcript(&c, c.node_port(0), &steps, "rp_d", seed).await;
                let proxied = pipeline_transcript(&c, c.proxy_port(), &steps, "rp_p", seed).await;
                assert_eq!(proxied, direct, "seed {seed}: {steps:?}");
                let rows = |t: &str| {
                    c.psql(
                        0,
                        "test",
                        &format!(
                            "SELECT coalesce(string_agg(v::text, ',' ORDER BY v), '-') FROM {t} \
                             WHERE v / 1000 = {seed}"
                        ),
                    )
                    .unwrap()
                };
                assert_eq!(
                    rows("rp_p"),
                    rows("rp_d"),
                    "seed {seed}: rows left, {steps:?}"
                );
                covered[0] += direct.matches("E(").count();
                covered[1] += direct.matches("Z(T)").count();
                covered[2] += usize::from(rows("rp_d") != "-");
            }
            // (The sequences must have met errors, transactions and committed writes.)
            assert!(
                covered.iter().all(|n| *n > 10),
                "too little covered: {covered:?}"
            );
        });
    }

    /// One step of a random pipeline: an unnamed statement's Parse, Bind and Execute, a
    /// Flush, a Sync, or a simple Query.
    #[derive(Debug, Clone)]
    enum Step {
        Extended(String),
        Flush,
        Sync,
        Query(String),
        /// Parse of a named statement.
        Prepare(&'static str, String),
        /// Bind and Execute of a named statement.
        Run(&'static str),
        /// Describe of a named statement.
        Describe(&'static str),
        /// Close of a named statement.
        Close(&'static str),
        /// Bind of a named statement to portal `p`, and an Execute of one row of it.
        Portal(&'static str),
        /// Execute of one more row of portal `p`.
        More,
    }

    /// A pipeline from `seed` (xorshift: the same steps every run): 3 to 12 steps. `{t}`
    /// stands for the run's table, and values are `seed * 1000 + k`. Even seeds also use named
    /// statements, savepoints, a setting and a locking read.
    fn random_steps(seed: u64) -> Vec<Step> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let rich = seed.is_multiple_of(2);
        let mut k = 0;
        let len = 3 + next(10);
        (0..len)
            .map(|_| {
                let sql = match next(if rich { 21 } else { 10 }) {
                    0..=2 => format!("SELECT count(*) FROM {{t}} WHERE v / 1000 = {seed}"),
                    3 | 4 => {
                        k += 1;
                        format!("INSERT INTO {{t}} VALUES ({})", seed * 1000 + k)
                    }
                    5 => "SELECT 1/0".to_string(),
                    6 => "BEGIN".to_string(),
                    7 => "BEGIN READ ONLY".to_string(),
                    8 => "COMMIT".to_string(),
                    9 => "ROLLBACK".to_string(),
                    10 => "SAVEPOINT sp".to_string(),
                    11 => "ROLLBACK TO sp".to_string(),
                    12 => {
                        k += 1;
                        format!("SET application_name = 'a{k}'")
                    }
                    13 => "SELECT current_setting('application_name')".to_string(),
                    14 => format!(
                        "SELECT v FROM {{t}} WHERE v / 1000 = {seed} ORDER BY v LIMIT 1 FOR UPDATE"
                    ),
                    15 => "SELECT generate_series(1, 3)".to_string(),
                    16 => {
                        k += 1;
                        format!("INSERT INTO {{t}} VALUES ({}); SELECT 1/0", seed * 1000 + k)
                    }
                    17 => "COPY (SELECT 1 UNION ALL SELECT 2) TO STDOUT".to_string(),
                    18 => "DO $$BEGIN RAISE NOTICE 'n'; END$$".to_string(),
                    // A transaction's end and a write in one text (split after the end when
                    // the transaction is on a standby).
                    19 => {
                        k += 1;
                        format!(
                            "SELECT 1; COMMIT; INSERT INTO {{t}} VALUES ({})",
                            seed * 1000 + k
                        )
                    }
                    _ => "CREATE TEMP TABLE IF NOT EXISTS tt (v int)".to_string(),
                };
                let name = ["s1", "s2", "s3"][next(3) as usize];
                match next(if rich { 14 } else { 8 }) {
                    0..=2 => Step::Extended(sql),
                    3 => Step::Flush,
                    4 | 5 => Step::Sync,
                    6 | 7 => Step::Query(sql),
                    8 => Step::Prepare(name, sql),
                    9 => Step::Run(name),
                    10 => Step::Describe(name),
                    11 => Step::Close(name),
                    12 => Step::Portal(name),
                    _ => Step::More,
                }
            })
            .collect()
    }

    /// Sends `steps` (on table `t`) to `port`, a pause now and then so that some answers are
    /// read before what follows is sent, then a Sync, a ROLLBACK and an end marker; what came
    /// back, as `exchange` shows it (ParameterStatus left out).
    async fn pipeline_transcript(
        c: &Cluster,
        port: u16,
        steps: &[Step],
        t: &str,
        seed: u64,
    ) -> String {
        use tokio::io::AsyncWriteExt;
        let mut s = login_at(c, port).await;
        for (i, step) in steps.iter().enumerate() {
            let bytes = match step {
                Step::Extended(sql) => run_unnamed(&sql.replace("{t}", t)),
                Step::Flush => message(b'H', &[]),
                Step::Sync => message(b'S', &[]),
                Step::Query(sql) => query(&sql.replace("{t}", t)),
                Step::Prepare(name, sql) => {
                    let n = [name.as_bytes(), b"\0"].concat();
                    let sql = sql.replace("{t}", t);
                    message(b'P', &[&n, sql.as_bytes(), b"\0", &[0, 0]])
                }
                Step::Run(name) => {
                    let n = [name.as_bytes(), b"\0"].concat();
                    let mut v = message(b'B', &[b"\0", &n, &[0, 0, 0, 0, 0, 0]]);
                    v.extend(message(b'E', &[b"\0", &[0, 0, 0, 0]]));
                    v
                }
                Step::Describe(name) => message(b'D', &[b"S", name.as_bytes(), b"\0"]),
                Step::Close(name) => message(b'C', &[b"S", name.as_bytes(), b"\0"]),
                Step::Portal(name) => {
                    let n = [name.as_bytes(), b"\0"].concat();
                    let mut v = message(b'B', &[b"p\0", &n, &[0, 0, 0, 0, 0, 0]]);
                    v.extend(message(b'E', &[b"p\0", &[0, 0, 0, 1]]));
                    v
                }
                Step::More => message(b'E', &[b"p\0", &[0, 0, 0, 1]]),
            };
            s.write_all(&bytes).await.unwrap();
            if (seed + i as u64).is_multiple_of(3) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let end = [message(b'S', &[]), query("ROLLBACK"), query("SELECT 'end'")].concat();
        s.write_all(&end).await.unwrap();
        let mut out = String::new();
        loop {
            let got = common::raw::read_until_within(&mut s, b'Z', Duration::from_secs(15)).await;
            let last = got.iter().any(|(t, b)| *t == b'D' && b.ends_with(b"end"));
            for (t, b) in got {
                // (ParameterStatus left out.)
                if t != b'S' {
                    show(&mut out, t, &b);
                }
            }
            if last {
                return out;
            }
        }
    }

    /// `v`, then Flush.
    fn with_flush(mut v: Vec<u8>) -> Vec<u8> {
        v.extend(message(b'H', &[]));
        v
    }
}

/// A memory figure of the warden's process (the proxy's), in kB: `field` of
/// /proc/PID/status (VmRSS now, VmHWM at its peak).
fn warden_memory(c: &Cluster, field: &str) -> u64 {
    let pid = std::fs::read_to_string(c.layout.warden_pid()).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in kB"))
}

/// A message over `proxy.max_message_size` ends the session with a FATAL the client hears:
/// the client writes the whole message before it reads, so pgwarden reads the rest and drops
/// it first. (Before, the socket was closed under the client's write and reset, and the
/// client saw only "connection closed" / "server closed the connection unexpectedly".)
#[test]
fn a_message_over_the_size_limit_is_refused_with_a_reason() {
    let c = Cluster::up(1);
    let cfg = std::fs::read_to_string(c.config())
        .unwrap()
        .replace("[proxy]\n", "[proxy]\nmax_message_size = 1048576\n");
    std::fs::write(c.config(), cfg).unwrap();
    c.restart_warden();
    block(async {
        let client = c.client("test").await;
        client
            .batch_execute("CREATE TABLE big (b bytea)")
            .await
            .unwrap();
        let under = vec![7u8; 500_000];
        client
            .execute("INSERT INTO big VALUES ($1)", &[&under])
            .await
            .unwrap();
        // 16 MB: more than the socket buffers hold, so the client is still writing when
        // pgwarden sees the length.
        let over = vec![7u8; 16 << 20];
        let e = client
            .execute("INSERT INTO big VALUES ($1)", &[&over])
            .await
            .unwrap_err();
        let db = e
            .as_db_error()
            .unwrap_or_else(|| panic!("no reason given: {e:?}"));
        assert_eq!(db.code().code(), "54000", "{db:?}");
        assert_eq!(db.severity(), "FATAL", "{db:?}");
        assert!(
            db.message().contains(
                "exceeds the maximum message size of 1048576 bytes (proxy.max_message_size)"
            ),
            "{db:?}"
        );
        // Only that session ended.
        let other = c.client("test").await;
        let n: i64 = other
            .query_one("SELECT count(*) FROM big", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
    });
}

/// A burst of large statements leaves no memory behind in the proxy: 20 sessions at once,
/// each sending an 8 MB statement, twice. (glibc kept the freed buffers in its heap: the proxy
/// stayed at about 200 MB afterwards.)
#[test]
fn a_burst_of_large_statements_leaves_no_memory_behind() {
    let c = Cluster::up(1);
    let rss = || warden_memory(&c, "VmRSS");
    let sql = format!("SELECT length('{}')", "x".repeat(8_000_000));
    block(async {
        let mut clients = Vec::new();
        for _ in 0..20 {
            clients.push(c.client("test").await);
        }
        clients[0].simple_query("SELECT 1").await.unwrap();
        let before = rss();
        for _ in 0..2 {
            let runs = clients.iter().map(|cl| cl.simple_query(&sql));
            for r in futures::future::join_all(runs).await {
                let length = r.unwrap().iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                });
                assert_eq!(length.as_deref(), Some("8000000"), "the statement's answer");
            }
        }
        drop(clients);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss();
        assert!(
            after < before + 64 * 1024,
            "the proxy's resident memory: {before} kB before the burst, {after} kB after"
        );
    });
}

/// An error of 200 MB (`RAISE EXCEPTION` with a long text) reaches the client whole, and
/// the proxy's peak memory grows by much less than the error: it keeps the error's head and
/// relays the rest as it comes. Before, it kept the whole message, twice (the buffer and
/// a copy): about 400 MB.
#[test]
fn a_long_error_is_relayed_whole_without_being_kept() {
    use common::raw::{login_at, message, read_message};
    use tokio::io::AsyncWriteExt;
    let c = Cluster::up(1);
    let peak = || warden_memory(&c, "VmHWM");
    const LONG: usize = 200_000_000;
    block(async {
        let mut s = login_at(&c, c.proxy_port()).await;
        let before = peak();
        let sql = format!(
            "DO $$ BEGIN RAISE EXCEPTION '%', repeat('x', {LONG}) USING ERRCODE = 'P0042'; END $$\0"
        );
        s.write_all(&message(b'Q', &[sql.as_bytes()]))
            .await
            .unwrap();
        let (tag, body) = read_message(&mut s).await;
        assert_eq!(tag, b'E');
        let fields = pgwarden_wire::msg::error_fields(&body);
        let field = |k: u8| fields.iter().find(|(c, _)| *c == k).map(|(_, v)| v.clone());
        assert_eq!(field(b'C').as_deref(), Some("P0042"));
        assert_eq!(
            field(b'M').map(|m| m.len()),
            Some(LONG),
            "the whole message"
        );
        assert_eq!(read_message(&mut s).await, (b'Z', b"I".to_vec()));
        // The session goes on.
        s.write_all(&message(b'Q', &[b"SELECT 1\0"])).await.unwrap();
        assert_eq!(read_message(&mut s).await.0, b'T');
        let after = peak();
        eprintln!("proxy peak memory: {before} kB before, {after} kB after");
        assert!(
            after < before + 64 * 1024,
            "the proxy's peak memory grew from {before} kB to {after} kB for a {LONG}-byte error"
        );
    });
}

/// The ParameterStatus values a client is welcomed with are the server's as it is now. With
/// the primary down and not yet replaced, logins are welcomed by a standby (`in_hot_standby =
/// on`, rightly), and that connection goes back to the pool. Once that standby is promoted,
/// the server reports the change only when it next answers, and the welcome's connection is
/// reused without a query: libpq with `target_session_attrs=read-write` then refused
/// pgwarden as read-only ("session is read-only"), login after login.
#[test]
fn a_promoted_standby_welcomes_clients_as_a_primary() {
    let c = Cluster::up(2);
    let cfg = std::fs::read_to_string(c.config()).unwrap();
    let cfg = cfg.replacen("[failover]\nauto = true", "[failover]\nauto = false", 1);
    assert!(cfg.contains("[failover]\nauto = false"), "{cfg}");
    std::fs::write(c.config(), cfg).unwrap();
    c.restart_warden();
    let welcome = || {
        block(async {
            let (_, got) =
                common::raw::welcome(&c, c.proxy_port(), &common::raw::startup("postgres")).await;
            got.iter()
                .filter(|(tag, _)| *tag == b'S')
                .map(|(_, body)| {
                    String::from_utf8_lossy(body)
                        .replace('\0', " ")
                        .trim()
                        .to_string()
                })
                .find(|p| p.starts_with("in_hot_standby "))
                .unwrap_or_else(|| panic!("no in_hot_standby: {got:?}"))
        })
    };
    let read_write = || {
        c.psql_env(
            c.proxy_port(),
            "test",
            &["SELECT pg_is_in_recovery()"],
            &[("PGTARGETSESSIONATTRS", "read-write")],
        )
    };
    assert_eq!(welcome(), "in_hot_standby off");
    c.pg_ctl(0, &["stop", "-m", "fast"]);
    c.wait_node(0, Duration::from_secs(15), "down", |n| {
        n["status"] == "down"
    });
    for i in 0..3 {
        assert_eq!(welcome(), "in_hot_standby on", "login {i} with no primary");
    }
    assert!(read_write().is_err(), "a read-write login with no primary");
    let o = c.pgwarden(&["node", "promote", "1"]);
    assert!(
        o.status.success(),
        "{}{}",
        common::stdout(&o),
        common::stderr(&o)
    );
    common::wait_cluster(&c, Duration::from_secs(15), "node 1 promoted", |s| {
        s["primary"] == 1
    });
    for i in 0..3 {
        assert_eq!(
            welcome(),
            "in_hot_standby off",
            "login {i} after the promotion"
        );
    }
    for i in 0..3 {
        assert_eq!(
            read_write().as_deref(),
            Ok("f"),
            "psql {i}, target_session_attrs=read-write"
        );
    }
}

/// `DISCARD ALL` does not reset `setseed` (or `SET SEED`): a connection whose session seeded `random()` is
/// closed, not given to the next client, whose `random()` the previous one could otherwise
/// predict. The same session's other statements (simple or extended) pool as usual.
#[test]
fn a_seeded_random_is_not_handed_to_the_next_client() {
    use common::raw::{login_with, message, read_until, startup_with};
    use tokio::io::AsyncWriteExt;
    let c = Cluster::up(1);
    /// After a session on backend `pid_a` that seeded (`how`), the next client's `random()`
    /// is not the seeded one, its backend is another; and a clean session's backend is
    /// pooled for the one after.
    async fn next_client_is_clean(c: &Cluster, how: &str, seeded: f64, pid_a: i32) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b = c.client("test").await;
        let row = b
            .query_one("SELECT random(), pg_backend_pid()", &[])
            .await
            .unwrap();
        let (random, pid_b): (f64, i32) = (row.get(0), row.get(1));
        assert_ne!(
            random, seeded,
            "{how}: the next client's random() was seeded"
        );
        assert_ne!(pid_b, pid_a, "{how}: the seeded connection was pooled");
        drop(b);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let next = c.client("test").await;
        let pid: i32 = next
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(pid, pid_b, "{how}: a clean connection was not pooled");
    }
    block(async {
        let (direct, seeded) = seeded_random(&c, 0).await;
        for (how, seed) in [
            ("simple", &["SELECT setseed(0.25)"][..]),
            ("extended", &["SELECT pg_catalog.SETSEED($1::float8)"]),
            (
                "in a transaction",
                &["BEGIN", "SELECT setseed(0.25)", "COMMIT"],
            ),
            ("in a query of several", &["SELECT 1; SELECT setseed(0.25)"]),
            ("SET SEED", &["SET seed = 0.25"]),
            (
                "SET SEED in a transaction",
                &["BEGIN", "SET LOCAL seed TO 0.25", "COMMIT"],
            ),
            ("a DO block", &["DO $$BEGIN PERFORM setseed(0.25); END$$"]),
            (
                "after the end of a transaction, in its last query",
                &["BEGIN", "SELECT 1; COMMIT; SELECT setseed(0.25)"],
            ),
            // (LOAD seeds nothing: only the backend's pid tells.)
            (
                "LOAD as a later statement in a transaction",
                &["BEGIN", "SELECT 1; LOAD 'auto_explain'", "COMMIT"],
            ),
        ] {
            let a = c.client("test").await;
            for sql in seed {
                if how == "extended" {
                    a.query(*sql, &[&0.25f64]).await.unwrap();
                } else {
                    a.batch_execute(sql).await.unwrap();
                }
            }
            let pid_a: i32 = a
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap()
                .get(0);
            drop(a);
            next_client_is_clean(&c, how, seeded, pid_a).await;
        }
        // A FunctionCall names its function by OID (libpq's fast path): setseed's.
        let oid: u32 = direct
            .query_one("SELECT 'pg_catalog.setseed'::regproc::oid", &[])
            .await
            .unwrap()
            .get(0);
        // (With tokio-postgres's startup parameters: the same pool as the next client's.)
        let packet = startup_with(&[
            ("client_encoding", "UTF8"),
            ("user", "postgres"),
            ("database", "test"),
        ]);
        let mut a = login_with(&c, c.proxy_port(), &packet).await;
        let arg = b"0.25";
        let call = message(
            b'F',
            &[
                &oid.to_be_bytes(),
                &1i16.to_be_bytes(),
                &0i16.to_be_bytes(),
                &1i16.to_be_bytes(),
                &(arg.len() as i32).to_be_bytes(),
                arg,
                &0i16.to_be_bytes(),
            ],
        );
        a.write_all(&call).await.unwrap();
        let got = read_until(&mut a, b'Z').await;
        assert!(
            got.iter().any(|(t, _)| *t == b'V'),
            "no FunctionCallResponse: {got:?}"
        );
        a.write_all(&message(b'Q', &[b"SELECT pg_backend_pid()\0"]))
            .await
            .unwrap();
        let pid_a: i32 = first_value(&read_until(&mut a, b'Z').await)
            .and_then(|v| v.parse().ok())
            .expect("a pid");
        a.write_all(&message(b'X', &[])).await.unwrap();
        drop(a);
        next_client_is_clean(&c, "FunctionCall", seeded, pid_a).await;
    });
}

/// The few built-in functions marked stable or immutable that a hot standby refuses
/// (`txid_current()`: 25006 "cannot execute pg_current_xact_id() during recovery";
/// `pg_walfile_name()`: "recovery is in progress") run on the primary, in a query alone as in
/// the extended protocol; other built-ins still read from the standby.
#[test]
fn built_ins_a_standby_refuses_run_on_the_primary() {
    let c = Cluster::up(2);
    primary_weight_zero(&c);
    restart_with_proxy_settings(&c, "");
    let (primary, standby) = (i32::from(c.node_port(0)), i32::from(c.node_port(1)));
    block(async {
        let client = c.client("test").await;
        // Until the catalog is read from the primary, every call goes there.
        let mut on = 0;
        for _ in 0..100 {
            on = client
                .query_one("SELECT abs(-1) + inet_server_port() - 1", &[])
                .await
                .unwrap()
                .get(0);
            if on == standby {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(on, standby, "a built-in read never reached the standby");
        for sql in [
            "SELECT txid_current()::text, inet_server_port()",
            "SELECT pg_current_xact_id()::text, inet_server_port()",
            "SELECT pg_walfile_name('0/1000000'), inet_server_port()",
            "SELECT file_name, inet_server_port() FROM pg_walfile_name_offset('0/1000000')",
        ] {
            // (A session each: one that ran `txid_current()` reads from the primary until its
            // "write" is replayed.)
            let client = c.client("test").await;
            let row = client.query_one(sql, &[]).await.unwrap_or_else(|e| {
                panic!(
                    "{sql} (extended): {:?}",
                    e.as_db_error().map(|d| d.message())
                )
            });
            assert_eq!(row.get::<_, i32>(1), primary, "{sql} (extended)");
            let client = c.client("test").await;
            let rows = client.simple_query(sql).await.unwrap_or_else(|e| {
                panic!("{sql} (simple): {:?}", e.as_db_error().map(|d| d.message()))
            });
            let port = rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(1).map(str::to_string),
                _ => None,
            });
            assert_eq!(port, Some(primary.to_string()), "{sql} (simple)");
        }
    });
}

/// A direct connection to node `node`, and the first `random()` after `setseed(0.25)` there.
async fn seeded_random(c: &Cluster, node: u16) -> (tokio_postgres::Client, f64) {
    let direct = c.try_connect(c.node_port(node), "test").await.unwrap();
    direct.batch_execute("SELECT setseed(0.25)").await.unwrap();
    let seeded = direct
        .query_one("SELECT random()", &[])
        .await
        .unwrap()
        .get(0);
    (direct, seeded)
}

/// A standby's read-only transaction that ends inside a query of several (`SELECT setseed(…);
/// COMMIT; SELECT txid_current()`) is split there (what follows is for the primary): the part
/// on the standby seeds its connection, which then must not serve the next client either. (Before 5360a8d only what followed the `COMMIT` was
/// looked at.)
#[test]
fn a_standby_seeded_before_a_split_commit_is_not_pooled() {
    let c = Cluster::up(2);
    primary_weight_zero(&c);
    restart_with_proxy_settings(&c, "");
    block(async {
        let (_, seeded) = seeded_random(&c, 1).await;
        let a = c.client("test").await;
        a.batch_execute("BEGIN READ ONLY").await.unwrap();
        let rows = a
            .simple_query(
                "SELECT setseed(0.25), pg_backend_pid(), inet_server_port(); COMMIT; \
                 SELECT txid_current()",
            )
            .await
            .unwrap();
        let row = rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .expect("a row");
        let (pid_a, port) = (row.get(1).unwrap().to_string(), row.get(2).unwrap());
        assert_eq!(port, c.node_port(1).to_string(), "the transaction's node");
        drop(a);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b = c.client("test").await;
        let row = b
            .query_one("SELECT random(), pg_backend_pid()::text", &[])
            .await
            .unwrap();
        let (random, pid_b): (f64, String) = (row.get(0), row.get(1));
        assert_ne!(random, seeded, "the next client's random() was seeded");
        assert_ne!(pid_b, pid_a, "the seeded standby connection was pooled");
    });
}

/// A session waiting for one of a full node's connections gets the one a session that ends
/// puts back in the pool. (It waited only for a connection to be closed before: the one put
/// back sat idle in the pool while the waiting session got 53300 at `pool_wait_timeout`.)
#[test]
fn a_connection_put_back_goes_to_a_session_waiting_for_one() {
    let c = Cluster::up(1);
    restart_with_proxy_settings(&c, "pool_size = 1\npool_wait_timeout = \"10s\"\n");
    block(async {
        let a = c.client("test").await;
        let b = c.client("test").await;
        // `a` holds the node's one connection for as long as its session lasts.
        a.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
        let waiting = tokio::spawn(async move {
            let r = b.batch_execute("SELECT 1").await.map_err(|e| {
                e.as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or(e.to_string())
            });
            (r, b)
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !waiting.is_finished(),
            "the second session waits for the connection"
        );
        // `a` ends: its connection is reset and put back in the pool, and `b` gets it.
        drop(a);
        let (r, _b) = waiting.await.unwrap();
        assert_eq!(r, Ok(()));
    });
}

#[test]
fn limits_answer_53300_and_never_hang() {
    let c = Cluster::up(1);
    // Tighten the limits and restart the warden with them.
    restart_with_proxy_settings(
        &c,
        "max_client_connections = 3\npool_size = 2\npool_wait_timeout = \"1s\"\n",
    );
    block(async {
        // Two sessions in transactions hold both backend connections of the node.
        let a = c.client("test").await;
        let b = c.client("test").await;
        a.batch_execute("BEGIN; SELECT 1").await.unwrap();
        b.batch_execute("BEGIN; SELECT 1").await.unwrap();
        // A third client logs in (idle clients hold no backend connection)…
        let third = tokio::time::timeout(Duration::from_secs(10), async {
            c.try_connect(c.proxy_port(), "test").await
        })
        .await
        .expect("no hang");
        // …or is told the pool is full; either way a statement gets 53300, not a hang.
        match third {
            Ok(client) => {
                let start = Instant::now();
                let err =
                    tokio::time::timeout(Duration::from_secs(10), client.batch_execute("SELECT 1"))
                        .await
                        .expect("no hang")
                        .unwrap_err();
                assert_eq!(err.code().map(|c| c.code()), Some("53300"), "{err}");
                let message = err
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_default();
                assert!(message.contains("proxy.pool_size"), "{message}");
                assert!(start.elapsed() < Duration::from_secs(5));
                // The session survives: once a connection is free, it works.
                a.batch_execute("COMMIT").await.unwrap();
                drop(a);
                tokio::time::sleep(Duration::from_millis(500)).await;
                client.batch_execute("SELECT 1").await.unwrap();
            }
            Err(e) => {
                assert_eq!(e.code().map(|c| c.code()), Some("53300"), "{e}");
            }
        }
        // Over max_client_connections: PostgreSQL's own refusal.
        b.batch_execute("COMMIT").await.unwrap();
        drop(b);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut extra = Vec::new();
        let mut refused = None;
        for _ in 0..4 {
            match c.try_connect(c.proxy_port(), "test").await {
                Ok(cl) => {
                    extra.push(cl);
                }
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let e = refused.expect("a client over the limit is refused");
        assert_eq!(e.code().map(|c| c.code()), Some("53300"), "{e}");
        let message = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(
            message.contains("sorry, too many clients already"),
            "{message}"
        );
        assert_eq!(extra.len(), 2, "three clients in all are allowed");
    });
}

#[test]
fn a_primary_out_of_connections_stays_in_service() {
    let c = Cluster::up(2);
    block(async {
        let proxied = c.client("test").await;
        proxied
            .batch_execute("CREATE TABLE busy (a int)")
            .await
            .unwrap();
        let fails_before = tokio::task::block_in_place(|| c.nodes())[0]["health_check"]
            ["fail_count"]
            .as_u64()
            .unwrap();
        // Take every connection slot of the primary directly.
        let mut held = Vec::new();
        let refusal = loop {
            match c.try_connect(c.node_port(0), "test").await {
                Ok(client) => {
                    held.push(client);
                    assert!(held.len() < 500, "max_connections never reached");
                }
                Err(e) => break e,
            }
        };
        assert_eq!(refusal.code().map(|c| c.code()), Some("53300"));
        // The monitor keeps its check connection between checks; close it, so that its next
        // check needs a new connection and meets the full server.
        held[0]
            .batch_execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'pgwarden health check'",
            )
            .await
            .unwrap();
        // Keep the server full for a few health-check periods: any slot that frees (the
        // monitor's own check connection, say) is taken again at once.
        let deadline = Instant::now() + Duration::from_secs(4);
        while Instant::now() < deadline {
            if let Ok(client) = c.try_connect(c.node_port(0), "test").await {
                held.push(client);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The primary is still in service…
        let nodes = tokio::task::block_in_place(|| c.nodes());
        assert_eq!(nodes[0]["status"], "up", "{:#}", nodes[0]);
        assert_eq!(nodes[0]["pg_status"], "up");
        // The checks in that window met the full server (and counted as failed checks) without
        // taking it out of service. (A slot can free up meanwhile, so the last error may be gone.)
        let failed = nodes[0]["health_check"]["fail_count"].as_u64().unwrap();
        assert!(
            failed > fails_before,
            "no health check met the full server: {:#}",
            nodes[0]
        );
        // …a session that already has its connection keeps writing…
        proxied
            .batch_execute("INSERT INTO busy VALUES (1)")
            .await
            .unwrap();
        drop(held);
        tokio::time::sleep(Duration::from_secs(2)).await;
        // …and once connections are free, everyone can write again.
        let fresh = c.client("test").await;
        fresh
            .batch_execute("INSERT INTO busy VALUES (2)")
            .await
            .unwrap();
    });
}

/// TLS for clients that ask for it, and hba rules by encryption, as pg_hba.conf's
/// `hostssl` and `hostnossl`: database `test` only over TLS, database `postgres` only without.
/// SCRAM logins over TLS can be bound to the connection (SCRAM-SHA-256-PLUS), as libpq's
/// `channel_binding=require` demands.
#[test]
fn tls_for_clients_that_ask_for_it() {
    let c = Cluster::up(1);
    // ECDSA with SHA-384: channel binding hashes the certificate with SHA-384, not the
    // SHA-256 most certificates use (libpq checks the hash it computes itself).
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(c.dir.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(c.dir.join("server.key"), key.serialize_pem()).unwrap();
    std::fs::set_permissions(
        c.dir.join("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(c.config()).unwrap().replace(
        "[proxy]\n",
        "[proxy]\ntls_cert = \"server.crt\"\ntls_key = \"server.key\"\n",
    ) + "\n[[proxy.hba]]\ntype = \"hostssl\"\ndatabase = \"test\"\nmethod = \"scram-sha-256\"\n\
         \n[[proxy.hba]]\ntype = \"hostnossl\"\ndatabase = \"postgres\"\nmethod = \"scram-sha-256\"\n";
    std::fs::write(c.config(), cfg).unwrap();
    let dir = c.dir.to_str().unwrap();
    assert!(
        common::pgwarden(&["config", "check", c.config().to_str().unwrap()])
            .output()
            .unwrap()
            .status
            .success()
    );
    assert!(common::pgwarden(&["sandbox", "down", "--dir", dir])
        .output()
        .unwrap()
        .status
        .success());
    let out = common::pgwarden(&["sandbox", "up", "--dir", dir])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));

    let psql_bound = |db: &str, sslmode: &str, binding: &str, sql: &str| {
        let bin = pgwarden_sandbox::PgBin::locate().unwrap();
        let out = Command::new(bin.program("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                db,
                "-p",
                &c.proxy_port().to_string(),
                "-c",
                sql,
            ])
            .env("PGPASSFILE", c.pgpass())
            .env("PGSSLMODE", sslmode)
            .env("PGCHANNELBINDING", binding)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", common::stdout(&out), common::stderr(&out)),
        )
    };
    let psql_on = |db: &str, sslmode: &str, sql: &str| psql_bound(db, sslmode, "prefer", sql);
    let psql = |sslmode: &str, sql: &str| psql_on("test", sslmode, sql);
    let (ok, text) = psql("require", "\\conninfo");
    assert!(ok, "{text}");
    assert!(text.contains("SSL connection (protocol: TLSv1."), "{text}");
    // Bound to the TLS connection, and not: both log in. (Before pgwarden offered
    // SCRAM-SHA-256-PLUS: "channel binding is required, but server did not offer an
    // authentication method that supports channel binding".)
    for binding in ["require", "disable"] {
        let (ok, text) = psql_bound("test", "require", binding, "SELECT 'in'");
        assert!(
            ok && text.trim() == "in",
            "channel_binding={binding}: {text}"
        );
    }
    let (ok, text) = psql("require", "SELECT 40 + 2");
    assert!(ok && text.trim() == "42", "{text}");
    // Large answers and COPY over TLS: 4.5 MB of rows, more than the socket buffers take at
    // once, so pgwarden's writes to the client wait and go on in parts.
    let (ok, text) = psql(
        "require",
        "SELECT repeat('x', g) FROM generate_series(1, 3000) g",
    );
    let lines: Vec<usize> = text.lines().map(str::len).collect();
    assert!(ok, "{text:.500}");
    assert_eq!(lines.len(), 3000, "rows");
    assert_eq!(lines.iter().sum::<usize>(), 3000 * 3001 / 2, "bytes");
    assert!(
        lines.iter().enumerate().all(|(i, n)| *n == i + 1),
        "rows in order"
    );
    let (ok, text) = psql(
        "require",
        "COPY (SELECT g FROM generate_series(1, 200000) g) TO STDOUT",
    );
    assert!(ok, "{text:.500}");
    let values: Vec<u64> = text.lines().filter_map(|l| l.parse().ok()).collect();
    assert_eq!(values.len(), 200_000, "COPY rows");
    assert_eq!(
        values.iter().sum::<u64>(),
        200_000 * 200_001 / 2,
        "COPY values"
    );
    // Clients that do not ask for TLS are served where a rule admits them…
    let (ok, text) = psql_on("postgres", "disable", "SELECT current_database()");
    assert!(ok && text.trim() == "postgres", "{text}");
    // …and refused where the rule is for TLS only, or for no TLS only.
    let (ok, text) = psql("disable", "SELECT 1");
    assert!(!ok, "{text}");
    assert!(
        text.contains("no pgwarden hba entry for host \"127.0.0.1\", user \"postgres\", database \"test\", no encryption"),
        "{text}"
    );
    let (ok, text) = psql_on("postgres", "require", "SELECT 1");
    assert!(!ok, "{text}");
    assert!(
        text.contains("no pgwarden hba entry for host \"127.0.0.1\", user \"postgres\", database \"postgres\", SSL encryption"),
        "{text}"
    );
}

/// A simple Query of `sql` (bytes in the session's client encoding) on a raw connection: the
/// rows' values as bytes (NULL as empty), and the error's message.
async fn raw_query(
    s: &mut tokio::net::TcpStream,
    sql: &[u8],
) -> (Vec<Vec<Vec<u8>>>, Option<String>) {
    use tokio::io::AsyncWriteExt;
    s.write_all(&common::raw::message(b'Q', &[sql, b"\0"]))
        .await
        .unwrap();
    answers(common::raw::read_until(s, b'Z').await)
}

/// The rows and the first error's message in `got` (see `raw_query`).
fn answers(got: Vec<(u8, Vec<u8>)>) -> (Vec<Vec<Vec<u8>>>, Option<String>) {
    let mut rows = Vec::new();
    let mut error = None;
    for (tag, body) in got {
        match tag {
            b'D' => {
                let n = u16::from_be_bytes([body[0], body[1]]);
                let mut at = 2;
                let mut row = Vec::new();
                for _ in 0..n {
                    let len =
                        i32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
                    at += 4;
                    let len = usize::try_from(len).unwrap_or(0);
                    row.push(body[at..at + len].to_vec());
                    at += len;
                }
                rows.push(row);
            }
            b'E' if error.is_none() => {
                error = body
                    .split(|b| *b == 0)
                    .find(|f| f.first() == Some(&b'M'))
                    .map(|f| String::from_utf8_lossy(&f[1..]).into_owned());
            }
            _ => {}
        }
    }
    (rows, error)
}

/// `raw_query` of `sql` (a read whose last column is `inet_server_port()`), again while it
/// runs elsewhere than on the node at `port` (after a write, reads stay on the primary until
/// the standby has replayed it), for 10 s at most: its last rows. An error fails the test.
async fn read_on(s: &mut tokio::net::TcpStream, sql: &[u8], port: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (rows, err) = raw_query(s, sql).await;
        assert_eq!(err, None, "{}", String::from_utf8_lossy(sql));
        if rows
            .first()
            .and_then(|r| r.last())
            .is_some_and(|p| p == port)
            || Instant::now() > deadline
        {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `BEGIN READ ONLY` on a raw connection, once its reads (`show`, as for `read_on`) go to
/// the node at `port`, and a check that the transaction runs there.
async fn begin_read_only_raw(s: &mut tokio::net::TcpStream, show: &[u8], port: &[u8]) {
    read_on(s, show, port).await;
    let (_, err) = raw_query(s, b"BEGIN READ ONLY").await;
    assert_eq!(err, None);
    let (rows, err) = raw_query(s, show).await;
    assert_eq!(err, None);
    assert_eq!(
        rows[0].last().map(Vec::as_slice),
        Some(port),
        "the transaction's node"
    );
}

/// Clients whose `client_encoding` is not UTF-8 send their texts in it, and the server reads
/// them so. Before, any byte of a query that was not UTF-8 (a LATIN1 client's `é`) ended the
/// session with a protocol error. In SJIS, BIG5, GBK and GB18030 a character's second byte
/// may be an ASCII one: `ソ` is 0x83 0x5C in SJIS, and read byte by byte its 0x5C is a
/// backslash, which makes `SELECT E'ソ'; INSERT …; SELECT 1 --'` one string literal, a read
/// to send to a standby (where the INSERT fails: read-only). The server sees a SELECT, an
/// INSERT and a comment.
#[test]
fn texts_in_the_clients_encoding_are_read_as_the_server_reads_them() {
    use common::raw::{login_with, message, read_until, startup_with};
    use tokio::io::AsyncWriteExt;
    let c = Cluster::up(2);
    // Reads go to the standby only.
    primary_weight_zero(&c);
    restart_with_proxy_settings(&c, "");
    c.psql_proxy(
        "test",
        "CREATE TABLE enc_t (x int); CREATE TABLE enc_s (s text)",
    )
    .unwrap();
    let (primary, standby) = (
        c.node_port(0).to_string().into_bytes(),
        c.node_port(1).to_string().into_bytes(),
    );
    let packet = |encoding: &str| {
        startup_with(&[
            ("user", "postgres"),
            ("database", "test"),
            ("client_encoding", encoding),
        ])
    };
    block(async {
        // An application_name in the client's code page (WIN1252 é): the server keeps it as
        // ASCII (`caf?`), through pgwarden as directly (it was refused: "unterminated value").
        let mut body = 196608u32.to_be_bytes().to_vec();
        body.extend(b"user\0postgres\0database\0test\0application_name\0caf\xe9\0\0");
        let named = [((body.len() + 4) as u32).to_be_bytes().to_vec(), body].concat();
        for port in [c.node_port(0), c.proxy_port()] {
            let mut s = login_with(&c, port, &named).await;
            let (rows, err) =
                raw_query(&mut s, b"SELECT current_setting('application_name')").await;
            assert_eq!(
                (rows, err),
                (vec![vec![b"caf?".to_vec()]], None),
                "port {port}"
            );
        }
        // LATIN1: é is 0xE9.
        let mut s = login_with(&c, c.proxy_port(), &packet("LATIN1")).await;
        let (rows, err) = raw_query(&mut s, b"SELECT 'caf\xe9', inet_server_port()").await;
        assert_eq!(err, None);
        assert_eq!(rows, [[b"caf\xe9".to_vec(), standby.clone()]]);
        // A setting in LATIN1, simple and extended, is had by both nodes as sent.
        // (A custom setting: `application_name` keeps ASCII only.)
        let show = b"SELECT current_setting('myapp.name'), inet_server_port()";
        let write = b"WITH w AS (INSERT INTO enc_t VALUES (0) RETURNING 1) \
                      SELECT current_setting('myapp.name'), inet_server_port() FROM w";
        for (how, name) in [("simple", &b"caf\xe9"[..]), ("extended", b"d\xe9j\xe0")] {
            let set = [&b"SET myapp.name = '"[..], name, b"'"].concat();
            if how == "simple" {
                let (_, err) = raw_query(&mut s, &set).await;
                assert_eq!(err, None, "{how}");
            } else {
                let mut m = message(b'P', &[b"\0", &set, b"\0", &[0, 0]]);
                m.extend(message(b'B', &[b"\0\0", &[0, 0], &[0, 0], &[0, 0]]));
                m.extend(message(b'E', &[b"\0", &[0, 0, 0, 0]]));
                m.extend(message(b'S', &[]));
                s.write_all(&m).await.unwrap();
                let (_, err) = answers(read_until(&mut s, b'Z').await);
                assert_eq!(err, None, "{how}");
            }
            let rows = read_on(&mut s, show, &standby).await;
            assert_eq!(
                rows,
                [[name.to_vec(), standby.clone()]],
                "{how}: the standby"
            );
            let (rows, err) = raw_query(&mut s, write).await;
            assert_eq!(err, None, "{how}");
            assert_eq!(
                rows,
                [[name.to_vec(), primary.clone()]],
                "{how}: the primary"
            );
        }
        // A Query that ends a transaction on the standby, then writes: its parts are sent as
        // the client sent them (they were sent as pgwarden read them, é as U+FFFD).
        // (Once the standby has the last write, the transaction begins there.)
        begin_read_only_raw(&mut s, show, &standby).await;
        let (rows, err) = raw_query(
            &mut s,
            b"COMMIT; INSERT INTO enc_s VALUES ('caf\xe9') RETURNING s, inet_server_port()",
        )
        .await;
        assert_eq!(err, None);
        assert_eq!(rows, [[b"caf\xe9".to_vec(), primary.clone()]]);
        let stored = c
            .psql(0, "test", "SELECT s = 'caf\u{e9}' FROM enc_s")
            .unwrap();
        assert_eq!(stored.trim(), "t", "what the primary stored");
        // A SQL PREPARE in a transaction on the standby is made on the primary too, whose
        // connection reads LATIN1 (it was not: not UTF-8).
        read_on(&mut s, show, &standby).await;
        for sql in [
            &b"BEGIN READ ONLY"[..],
            b"PREPARE p AS SELECT 'caf\xe9'::text, inet_server_port()",
            b"COMMIT",
        ] {
            let (_, err) = raw_query(&mut s, sql).await;
            assert_eq!(err, None);
        }
        let (rows, err) = raw_query(&mut s, b"EXECUTE p").await;
        assert_eq!(err, None, "EXECUTE of a statement prepared on the standby");
        assert_eq!(rows, [[b"caf\xe9".to_vec(), primary.clone()]]);
        // Two dollar tags that differ in a converted character: pgwarden cannot tell whether
        // the server reads them alike (here it reads one string, then a SET), and this text
        // goes to the primary, where the session stays. (Read with both tags alike, it was a
        // read of three strings, and the SET ran on the standby only.)
        read_on(&mut s, show, &standby).await;
        let (rows, err) = raw_query(
            &mut s,
            b"SELECT $\xe9$ $\xe8$, inet_server_port(), $\xe9$; SET myapp.name TO evil; -- $\xe8$",
        )
        .await;
        assert_eq!(err, None);
        assert_eq!(rows.len(), 1);
        let (rows, err) = raw_query(&mut s, show).await;
        assert_eq!(err, None);
        assert_eq!(rows, [[b"evil".to_vec(), primary.clone()]], "after it");
        drop(s);
        // In SJIS, 0xED 0x40 and 0xFA 0x5C are one character (纊, NEC's and IBM's codes):
        // the server reads the two tags alike, a string, then a SET. pgwarden cannot tell
        // (the conversion decides), so the text goes to the primary and the session stays.
        let mut s = login_with(&c, c.proxy_port(), &packet("SJIS")).await;
        let show = b"SELECT current_setting('myapp.name', true), inet_server_port()";
        read_on(&mut s, show, &standby).await;
        let (_, err) = raw_query(
            &mut s,
            b"SELECT $\xed\x40$ x $\xfa\x5c$; SET myapp.name TO evil; -- $\xed\x40$",
        )
        .await;
        assert_eq!(err, None);
        let (rows, err) = raw_query(&mut s, show).await;
        assert_eq!(err, None);
        assert_eq!(rows, [[b"evil".to_vec(), primary.clone()]], "SJIS tags");
        drop(s);
        // The same in a read-only transaction on the standby, where it still runs: a
        // `set_config` it hides from pgwarden is read back from there once it has.
        let mut s = login_with(&c, c.proxy_port(), &packet("SJIS")).await;
        begin_read_only_raw(&mut s, show, &standby).await;
        let (_, err) = raw_query(
            &mut s,
            b"SELECT $\xed\x40$ a $\xfa\x5c$, \
              length(pg_catalog.set_config('search_path', 'hidden', false)), $\xfa\x5c$ b $\xed\x40$",
        )
        .await;
        assert_eq!(err, None);
        let (_, err) = raw_query(&mut s, b"COMMIT").await;
        assert_eq!(err, None);
        // (A real parameter: a read-back of every setting lists no custom placeholder.)
        let (rows, err) = raw_query(
            &mut s,
            b"SELECT current_setting('search_path'), inet_server_port()",
        )
        .await;
        assert_eq!(err, None);
        assert_eq!(
            rows,
            [[b"hidden".to_vec(), primary.clone()]],
            "SJIS tags in a transaction"
        );
        drop(s);
        // SHIFT_JIS_2004 0x81 0x5F is a backslash in UTF-8: `E'\\'` to the server.
        let mut s = login_with(&c, c.proxy_port(), &packet("SHIFT_JIS_2004")).await;
        let (rows, err) = raw_query(
            &mut s,
            b"SELECT E'\x81\x5f\\', inet_server_port(); INSERT INTO enc_t VALUES (50); --'",
        )
        .await;
        assert_eq!(err, None, "SHIFT_JIS_2004");
        assert_eq!(rows[0][1], primary, "SHIFT_JIS_2004");
        let count = c
            .psql(0, "test", "SELECT count(*) FROM enc_t WHERE x = 50")
            .unwrap();
        assert_eq!(count.trim(), "1", "SHIFT_JIS_2004");
        drop(s);
        // A character whose second byte is a backslash, in each encoding that has them; in
        // a session begun in it, and in one that sets it.
        for (i, (encoding, ch)) in [
            ("SJIS", &b"\x83\x5c"[..]),
            ("BIG5", b"\xa5\x5c"),
            ("GBK", b"\x81\x5c"),
            ("GB18030", b"\x81\x5c"),
        ]
        .into_iter()
        .enumerate()
        {
            for (j, begun) in [true, false].into_iter().enumerate() {
                let x = (1 + 2 * i + j).to_string();
                let mut s = if begun {
                    login_with(&c, c.proxy_port(), &packet(encoding)).await
                } else {
                    let mut s = login_with(&c, c.proxy_port(), &packet("UTF8")).await;
                    let set = format!("SET client_encoding = '{encoding}'");
                    let (_, err) = raw_query(&mut s, set.as_bytes()).await;
                    assert_eq!(err, None);
                    s
                };
                let sql = [
                    &b"SELECT E'"[..],
                    ch,
                    b"', inet_server_port(); INSERT INTO enc_t VALUES (",
                    x.as_bytes(),
                    b"); SELECT 1 --'",
                ]
                .concat();
                let (rows, err) = raw_query(&mut s, &sql).await;
                assert_eq!(err, None, "{encoding} (begun in it: {begun})");
                assert_eq!(
                    rows[0],
                    [ch.to_vec(), primary.clone()],
                    "{encoding} (begun in it: {begun})"
                );
                let count = c
                    .psql(
                        0,
                        "test",
                        &format!("SELECT count(*) FROM enc_t WHERE x = {x}"),
                    )
                    .unwrap();
                assert_eq!(count.trim(), "1", "{encoding} (begun in it: {begun})");
                // Back in UTF-8, texts are read so again: あ is 0xE3 0x81 0x82, and the
                // backslash after it escapes the quote (read as SJIS, 0x82 0x5C would be a
                // character, and the INSERT a statement of its own).
                let (_, err) = raw_query(&mut s, b"SET client_encoding = 'UTF8'").await;
                assert_eq!(err, None);
                let sql = "SELECT E'あ\\'; INSERT INTO enc_t VALUES (99); --', inet_server_port()";
                let rows = read_on(&mut s, sql.as_bytes(), &standby).await;
                assert_eq!(
                    rows,
                    [[
                        "あ'; INSERT INTO enc_t VALUES (99); --".as_bytes().to_vec(),
                        standby.clone()
                    ]],
                    "{encoding} (begun in it: {begun})"
                );
            }
        }
    });
}

/// A session keeps its load-balance node while that node is out: its reads go elsewhere
/// meanwhile (and `SHOW POOL_NODES` says where), and come back once the node is back, as a
/// DBA expects of long-lived application sessions after a standby's maintenance (detached,
/// then attached) or crash (stopped, started, attached). Before, the session chose again when
/// its node was lost, and kept the primary for good.
#[test]
fn a_session_comes_back_to_its_standby_once_it_is_back() {
    let c = Cluster::up(2);
    let (primary, standby) = (c.node_port(0), c.node_port(1));
    block(async {
        // (The primary and the standby have the same weight: a session balanced to the
        // standby, whose reads the primary takes while the standby is out.)
        let s = standby_session(&c).await;
        let read = || async {
            let row = s.query_one("SELECT inet_server_port()", &[]).await.unwrap();
            port_of(&row, 0)
        };
        assert_eq!(read().await, standby);
        assert_eq!(lb_node(&s).await, Some(1));
        for how in ["detached", "stopped"] {
            if how == "detached" {
                detach_standby(&c);
            } else {
                c.pg_ctl(1, &["stop", "-m", "immediate"]);
            }
            // The session's connection there was dropped, or dies with the first read.
            let mut on_primary = 0;
            for _ in 0..5 {
                if let Ok(row) = s.query_one("SELECT inet_server_port()", &[]).await {
                    assert_eq!(port_of(&row, 0), primary, "{how}");
                    on_primary += 1;
                }
            }
            assert!(on_primary >= 4, "{how}: {on_primary} of 5 reads ran");
            assert_eq!(lb_node(&s).await, Some(0), "{how}: where its reads go now");
            tokio::task::block_in_place(|| {
                if how == "stopped" {
                    c.start_node(1);
                    // (Marked down by the monitor, or not yet when it came back.)
                    std::thread::sleep(Duration::from_secs(2));
                }
                if c.nodes()[1]["status"] == "down" {
                    let o = c.pgwarden(&["node", "attach", "1"]);
                    assert!(o.status.success(), "{}", common::stderr(&o));
                }
                c.wait_node(1, Duration::from_secs(20), "up again", |n| {
                    n["status"] == "up"
                });
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut port = read().await;
            while port != standby && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
                port = read().await;
            }
            assert_eq!(
                port, standby,
                "{how}: the session's reads did not come back to its standby"
            );
            assert_eq!(lb_node(&s).await, Some(1), "{how}");
        }
    });
}

/// `UPDATE pg_settings SET setting = … WHERE name = …` is a `set_config` by PostgreSQL's own
/// rule: the session's other nodes have the setting too, as with `SET`, whether the UPDATE
/// ran alone or in a transaction. Before, it was had only where it ran (the primary), and the
/// session's reads on the standby saw the old value.
#[test]
fn an_update_of_pg_settings_follows_the_session() {
    let c = Cluster::up(2);
    let standby = c.node_port(1);
    block(async {
        let s = standby_session(&c).await;
        // Its value on the standby, once the session's reads are back there after the write.
        let on_standby = |name: &'static str| {
            let s = &s;
            async move {
                let sql = format!("SELECT current_setting('{name}'), inet_server_port()");
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let row = s.query_one(sql.as_str(), &[]).await.unwrap();
                    if port_of(&row, 1) == standby || Instant::now() > deadline {
                        assert_eq!(port_of(&row, 1), standby, "the session's reads");
                        return row.get::<_, String>(0);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        s.batch_execute(
            "UPDATE pg_settings SET setting = 'app_schema, public' WHERE name = 'search_path'",
        )
        .await
        .unwrap();
        assert_eq!(on_standby("search_path").await, "app_schema, public");
        s.batch_execute(
            "BEGIN; UPDATE pg_catalog.pg_settings SET setting = '7s' \
             WHERE name = 'statement_timeout'; COMMIT",
        )
        .await
        .unwrap();
        assert_eq!(on_standby("statement_timeout").await, "7s");
        s.batch_execute("BEGIN").await.unwrap();
        s.batch_execute("UPDATE pg_settings SET setting = 'x7' WHERE name = 'application_name'")
            .await
            .unwrap();
        s.batch_execute("COMMIT").await.unwrap();
        assert_eq!(on_standby("application_name").await, "x7");
    });
}

/// Settings the database's own code changes (a function that calls `set_config`, as the
/// row-level-security tenant pattern does) follow the session to the standby its reads go to:
/// they are read back from the primary before the standby is used. (Before, the standby kept
/// the session's earlier tenant, and its reads returned that tenant's rows.)
#[test]
fn settings_a_function_changes_follow_the_session() {
    let c = Cluster::up(2);
    // Reads go to the standby only.
    primary_weight_zero(&c);
    restart_with_proxy_settings(&c, "");
    c.psql(
        0,
        "test",
        "CREATE ROLE alice; \
         CREATE TABLE docs (tenant int, body text); \
         INSERT INTO docs VALUES (1, 'tenant-1'), (2, 'tenant-2'); \
         ALTER TABLE docs ENABLE ROW LEVEL SECURITY; \
         CREATE POLICY p ON docs USING (tenant = current_setting('app.tenant', true)::int); \
         GRANT SELECT ON docs TO alice; \
         CREATE FUNCTION set_tenant(int) RETURNS void LANGUAGE sql \
           AS $$ SELECT set_config('app.tenant', $1::text, false) $$; \
         CREATE SCHEMA app; CREATE TABLE app.t (x text); INSERT INTO app.t VALUES ('app'); \
         CREATE TABLE public.t (x text); INSERT INTO public.t VALUES ('public'); \
         CREATE FUNCTION use_app() RETURNS void LANGUAGE plpgsql \
           AS $$ BEGIN PERFORM set_config('search_path', 'app, public', false); END $$; \
         CREATE FUNCTION mk_tmp() RETURNS void LANGUAGE plpgsql \
           AS $$ BEGIN CREATE TEMP TABLE ft (x int); INSERT INTO ft VALUES (1); END $$",
    )
    .unwrap();
    let standby = c.node_port(1) as i32;
    block(async {
        // The first column of `sql`'s rows once it runs on the standby (its second column is
        // `inet_server_port()`): after a write, reads stay on the primary until the standby
        // has replayed it.
        async fn on_standby(
            client: &tokio_postgres::Client,
            sql: &str,
            standby: i32,
        ) -> Vec<String> {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let rows = client
                    .query(sql, &[])
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                if rows.first().is_some_and(|r| r.get::<_, i32>(1) == standby) {
                    return rows.iter().map(|r| r.get(0)).collect();
                }
                assert!(Instant::now() < deadline, "{sql}: never ran on the standby");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let read = "SELECT body, inet_server_port() FROM docs";
        // A simple query calls the function.
        let client = c.client("test").await;
        client
            .batch_execute("SET ROLE alice; SET app.tenant = 1")
            .await
            .unwrap();
        assert_eq!(on_standby(&client, read, standby).await, ["tenant-1"]);
        client.simple_query("SELECT set_tenant(2)").await.unwrap();
        assert_eq!(on_standby(&client, read, standby).await, ["tenant-2"]);
        // A prepared statement, bound with a parameter, twice.
        let st = client.prepare("SELECT set_tenant($1)").await.unwrap();
        client.execute(&st, &[&1i32]).await.unwrap();
        assert_eq!(on_standby(&client, read, standby).await, ["tenant-1"]);
        client.execute(&st, &[&2i32]).await.unwrap();
        assert_eq!(on_standby(&client, read, standby).await, ["tenant-2"]);
        // The unnamed statement, prepared in one batch and bound in later ones (libpq's
        // PQprepare(conn, "", …), Go's lib/pq). (Before, the Bind alone was not seen to
        // change anything: the standby kept the tenant.)
        {
            use common::raw::{login_with, message, read_until, startup_with};
            use tokio::io::AsyncWriteExt;
            let packet = startup_with(&[("user", "postgres"), ("database", "test")]);
            let mut s = login_with(&c, c.proxy_port(), &packet).await;
            let (_, err) = raw_query(&mut s, b"SET ROLE alice; SET app.tenant = 1").await;
            assert_eq!(err, None);
            let port = standby.to_string().into_bytes();
            for tenant in [b"2", b"1"] {
                // (Prepared again each time: the simple Query that reads destroys it, as on
                // one server.)
                let parse = message(b'P', &[b"\0", b"SELECT set_tenant($1::int)\0", &[0, 0]]);
                s.write_all(&[parse, message(b'S', &[])].concat())
                    .await
                    .unwrap();
                read_until(&mut s, b'Z').await;
                let bind = message(
                    b'B',
                    &[b"\0\0", &[0, 0], &[0, 1], &[0, 0, 0, 1], tenant, &[0, 0]],
                );
                let run = [
                    bind,
                    message(b'E', &[b"\0", &[0, 0, 0, 0]]),
                    message(b'S', &[]),
                ];
                s.write_all(&run.concat()).await.unwrap();
                let (_, err) = answers(read_until(&mut s, b'Z').await);
                assert_eq!(err, None);
                let rows =
                    read_on(&mut s, b"SELECT body, inet_server_port() FROM docs", &port).await;
                let want = format!("tenant-{}", tenant[0] as char).into_bytes();
                assert_eq!(rows, [[want, port.clone()]]);
            }
        }
        // In a transaction, where statements are not parsed unless they may hold state: a
        // PL/pgSQL function sets the search path.
        let client = c.client("test").await;
        let path = "SELECT x, inet_server_port() FROM t";
        assert_eq!(on_standby(&client, path, standby).await, ["public"]);
        for sql in ["BEGIN", "SELECT use_app()", "COMMIT"] {
            client.batch_execute(sql).await.unwrap();
        }
        assert_eq!(on_standby(&client, path, standby).await, ["app"]);
        // The same in one Query.
        client
            .batch_execute("SET search_path = public")
            .await
            .unwrap();
        assert_eq!(on_standby(&client, path, standby).await, ["public"]);
        client
            .batch_execute("BEGIN; SELECT use_app(); COMMIT")
            .await
            .unwrap();
        assert_eq!(on_standby(&client, path, standby).await, ["app"]);
        // Temporary tables a function or a DO block makes live on the primary only: the
        // session stays there, as after a CREATE TEMP TABLE of its own. (Before, its reads
        // went back to the standby: "relation \"ft\" does not exist".)
        let client = c.client("test").await;
        client.simple_query("SELECT mk_tmp()").await.unwrap();
        client
            .batch_execute("DO $$BEGIN CREATE TEMP TABLE dt AS SELECT 2 AS x; END$$")
            .await
            .unwrap();
        for _ in 0..15 {
            for (table, want) in [("ft", 1), ("dt", 2)] {
                let row = client
                    .query_one(&format!("SELECT x, inet_server_port() FROM {table}"), &[])
                    .await
                    .unwrap_or_else(|e| panic!("{table}: {e}"));
                assert_eq!(row.get::<_, i32>(0), want, "{table}");
                assert_ne!(row.get::<_, i32>(1), standby, "{table}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// A reload (SIGHUP, as `systemctl reload` sends; pcp_reload_config does the same) reads
/// client authentication again, as PostgreSQL reads pg_hba.conf: a user added to pool_passwd
/// logs in, a `reject` rule added refuses, and a broken pool_passwd changes nothing. (Before,
/// the reload said it had read the file, and nothing changed until a restart.)
#[test]
fn a_reload_reads_client_authentication_again() {
    let c = Cluster::up(1);
    let passwd = c.dir.join("pool_passwd");
    std::fs::write(&passwd, format!("postgres:TEXT{}\n", c.password())).unwrap();
    // pgpool's key for AES entries (pg_enc's -k).
    let key = c.dir.join("pgpoolkey");
    std::fs::write(&key, "k3y-of-pgpool\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let cfg = std::fs::read_to_string(c.config()).unwrap().replace(
        "[proxy]\n",
        &format!(
            "[proxy]\npool_passwd = \"{}\"\npool_key = \"{}\"\n",
            passwd.display(),
            key.display()
        ),
    );
    std::fs::write(c.config(), &cfg).unwrap();
    c.restart_warden();
    c.psql(
        0,
        "test",
        "CREATE ROLE newu LOGIN PASSWORD 'newpw'; CREATE ROLE newm LOGIN PASSWORD 'mpw'; \
         CREATE ROLE newa LOGIN PASSWORD 'apw'",
    )
    .unwrap();
    let hup = || {
        let pid = std::fs::read_to_string(c.layout.warden_pid()).unwrap();
        let pid = nix::unistd::Pid::from_raw(pid.trim().parse().unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    };
    let login = |user: &str, password: &str| {
        block(async {
            let r = tokio_postgres::Config::new()
                .host("127.0.0.1")
                .port(c.proxy_port())
                .user(user)
                .password(password)
                .dbname("test")
                .connect(tokio_postgres::NoTls)
                .await;
            match r {
                Ok((client, conn)) => {
                    tokio::spawn(conn);
                    let who: String = client
                        .query_one("SELECT current_user::text", &[])
                        .await
                        .map(|r| r.get(0))
                        .unwrap_or_else(|e| e.to_string());
                    Ok(who)
                }
                Err(e) => Err(e.as_db_error().map_or_else(
                    || e.to_string(),
                    |d| format!("{} {}", d.code().code(), d.message()),
                )),
            }
        })
    };
    // Until `want` (a reload is read at once, but the signal takes its moment).
    let until = |user: &str, password: &str, want: &dyn Fn(&Result<String, String>) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = login(user, password);
            if want(&got) || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let refused = login("newu", "newpw").unwrap_err();
    assert!(refused.starts_with("28P01"), "{refused}");
    // A user added to pool_passwd.
    std::fs::write(
        &passwd,
        format!("postgres:TEXT{}\nnewu:TEXTnewpw\n", c.password()),
    )
    .unwrap();
    hup();
    assert_eq!(
        until("newu", "newpw", &|r| r.is_ok()),
        Ok("newu".to_string())
    );
    // A rule that rejects them, before the rule for everyone; and an md5 user whose
    // server keeps a SCRAM secret (PostgreSQL's default), so pgwarden cannot log in for them
    // with the md5 hash pool_passwd holds: the client is told why and what to do (before, it
    // read "password authentication failed", as for a wrong password).
    std::fs::write(
        c.config(),
        format!(
            "{cfg}\n[[proxy.hba]]\nuser = \"newu\"\nmethod = \"reject\"\n\n\
             [[proxy.hba]]\nuser = \"newm\"\nmethod = \"md5\"\n\n\
             [[proxy.hba]]\nmethod = \"scram-sha-256\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        &passwd,
        format!(
            "postgres:TEXT{}\nnewu:TEXTnewpw\nnewm:{}\n",
            c.password(),
            pgwarden_wire::auth::md5_password("newm", "mpw")
        ),
    )
    .unwrap();
    hup();
    let md5 = until("newm", "mpw", &|r| {
        r.as_ref().is_err_and(|e| e.contains("md5 hash"))
    });
    assert!(
        md5.as_ref()
            .is_err_and(|e| e.starts_with("28000") && e.contains("TEXT")),
        "{md5:?}"
    );
    let rejected = until("newu", "newpw", &|r| r.is_err());
    assert!(
        rejected
            .as_ref()
            .is_err_and(|e| e.starts_with("28000") && e.contains("rejects")),
        "{rejected:?}"
    );
    // An entry pgpool's pg_enc encrypted (AES): pgwarden decrypts it with pgpool's key, checks
    // the client's password against it and logs in to the server with it. (Before: "AES-
    // encrypted entries need pgpool's key file", and no way to give it.)
    let enc = Command::new("/usr/sbin/pg_enc")
        .args(["-k", key.to_str().unwrap(), "-u", "newa", "apw"])
        .output()
        .expect("pgpool's pg_enc (Debian: pgpool2; ./dev/test installs it)");
    let aes = common::stdout(&enc)
        .lines()
        .find_map(|l| l.strip_prefix("pool_passwd string: ").map(str::to_string))
        .unwrap_or_else(|| panic!("pg_enc: {}", common::stdout(&enc)));
    std::fs::write(
        &passwd,
        format!("postgres:TEXT{}\nnewa:{aes}\n", c.password()),
    )
    .unwrap();
    hup();
    assert_eq!(until("newa", "apw", &|r| r.is_ok()), Ok("newa".to_string()));
    let wrong = login("newa", "nope").unwrap_err();
    assert!(wrong.starts_with("28P01"), "{wrong}");
    // A pool_passwd that does not parse: refused, and the logins go on as they were.
    std::fs::write(&passwd, "newu:AESq2hU\n").unwrap();
    hup();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(login("postgres", &c.password()), Ok("postgres".to_string()));
    let log = std::fs::read_to_string(c.layout.warden_log()).unwrap_or_default();
    assert!(
        log.contains("the configuration was not reloaded") && log.contains("AES"),
        "{}",
        &log[log.len().saturating_sub(2000)..]
    );
}

/// A database's or role's default settings changed through pgwarden (`ALTER DATABASE … SET`,
/// `ALTER ROLE … SET`) hold for the sessions that begin after it, as on one server: pooled
/// connections, which keep the defaults they began with (`DISCARD ALL` returns to those),
/// are not reused. (Before, new sessions kept the old `search_path` until the pooled
/// connections were closed for idleness.)
#[test]
fn default_settings_changed_through_pgwarden_hold_for_new_sessions() {
    let c = Cluster::up(2);
    c.psql(0, "test", "CREATE SCHEMA app").unwrap();
    let c = &c;
    block(async {
        let show = |name: &'static str| async move {
            let client = c.client("test").await;
            // Both nodes: a read may go to either.
            let mut seen = Vec::new();
            for _ in 0..4 {
                let v: String = client
                    .query_one(&format!("SELECT current_setting('{name}')"), &[])
                    .await
                    .unwrap()
                    .get(0);
                seen.push(v);
            }
            seen
        };
        // Connections in the pools, on both nodes.
        for _ in 0..3 {
            assert!(show("search_path")
                .await
                .iter()
                .all(|v| v == "\"$user\", public"));
        }
        let admin = c.client("test").await;
        admin
            .batch_execute("ALTER DATABASE test SET search_path = app, public")
            .await
            .unwrap();
        // The standby replays the change with the catalog; a new connection there reads it.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for _ in 0..3 {
            let seen = show("search_path").await;
            assert!(seen.iter().all(|v| v == "app, public"), "{seen:?}");
        }
        // In a transaction: once it commits.
        admin.batch_execute("BEGIN").await.unwrap();
        admin
            .batch_execute("ALTER ROLE postgres IN DATABASE test SET work_mem = '7MB'")
            .await
            .unwrap();
        admin.batch_execute("COMMIT").await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        for _ in 0..3 {
            let seen = show("work_mem").await;
            assert!(seen.iter().all(|v| v == "7MB"), "{seen:?}");
        }
    });
}

/// Asked whether it is a primary (pgjdbc's `targetServerType=primary` asks at every connect),
/// the primary answers, and the session's reads stay on its standby: the question writes
/// nothing, so read-your-writes has nothing to wait for. (The first fix took it for a write,
/// and the session's reads went to the primary until the next health check.)
#[test]
fn asking_whether_primary_leaves_the_session_on_its_standby() {
    let c = Cluster::up(2);
    block(async {
        let client = standby_session(&c).await;
        for sql in [
            "SHOW transaction_read_only",
            "SELECT current_setting('in_hot_standby')",
        ] {
            let rows = client.simple_query(sql).await.unwrap();
            let value = rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            });
            assert_eq!(value.as_deref(), Some("off"), "{sql}");
            let row = client
                .query_one("SELECT inet_server_port()", &[])
                .await
                .unwrap();
            assert_eq!(port_of(&row, 0), c.node_port(1), "the read after {sql}");
        }
    });
}

/// A password rotated in the password file and reloaded is used by the health checks too, not
/// by the front door alone: the monitor's next new connection to a node logs in with it.
/// (Before, the reload gave the proxy the new password and left the health checks the old
/// one: a node whose checking connection broke was marked down, "password authentication
/// failed", though it was up.)
#[test]
fn a_password_rotated_and_reloaded_is_used_by_the_health_checks() {
    let c = Cluster::up(2);
    let old = c.password();
    c.psql(0, "postgres", "ALTER ROLE postgres PASSWORD 'rotated-pw'")
        .unwrap();
    let text = std::fs::read_to_string(c.pgpass()).unwrap();
    std::fs::write(c.pgpass(), text.replace(&old, "rotated-pw")).unwrap();
    let pid = std::fs::read_to_string(c.layout.warden_pid()).unwrap();
    let pid = nix::unistd::Pid::from_raw(pid.trim().parse().unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let checks = |id: usize| {
        c.nodes()[id]["health_check"]["success_count"]
            .as_u64()
            .unwrap_or(0)
    };
    for id in [0u16, 1] {
        let before = checks(id as usize);
        // The health checks' kept connection is cut: the next check logs in anew.
        c.psql(
            id,
            "postgres",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = 'pgwarden health check'",
        )
        .unwrap();
        c.wait_node(id as usize, Duration::from_secs(15), "checked again", |n| {
            n["health_check"]["success_count"].as_u64().unwrap_or(0) > before + 1
        });
        let n = &c.nodes()[id as usize];
        assert_eq!(n["status"], "up", "node {id}: {n:#}");
    }
    // And the front door logs in with it.
    assert_eq!(c.psql_proxy("test", "SELECT 1").unwrap().trim(), "1");
}

/// A read that a standby refuses as a write — a view whose column calls `nextval`, or a
/// function of the database's own that inserts, which pgwarden cannot see in the query's text
/// — runs again on the primary before the client hears anything of it, as one server would
/// have run it; the text then goes to the primary at once, for every session, until a reload.
/// In a read-only transaction the client asked for, the refusal is the client's to hear, as
/// from one server, and so is the primary's own. (Before, every such read failed: "cannot
/// execute nextval() in a read-only transaction".)
#[test]
fn a_read_a_standby_refuses_as_a_write_runs_again_on_the_primary() {
    let c = Cluster::up(2);
    primary_weight_zero(&c);
    restart_with_proxy_settings(&c, "");
    c.psql(
        0,
        "test",
        "CREATE SEQUENCE s; CREATE VIEW v AS SELECT nextval('s') AS n; \
         CREATE VIEW v2 AS SELECT nextval('s') AS n; CREATE VIEW v3 AS SELECT nextval('s') AS n; \
         CREATE VIEW v4 AS SELECT nextval('s') AS n; \
         CREATE TABLE audit (x int); \
         CREATE FUNCTION log_read() RETURNS int LANGUAGE plpgsql \
           AS $$BEGIN INSERT INTO audit VALUES (1); RETURN 1; END$$; \
         CREATE VIEW w AS SELECT log_read() AS r; CREATE VIEW w2 AS SELECT log_read() AS r",
    )
    .unwrap();
    let (primary, standby) = (c.node_port(0), c.node_port(1));
    for _ in 0..100 {
        if c.psql(1, "test", "SELECT count(*) FROM w2").is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    block(async {
        // Simple protocol: the value, from the primary; the standby counted the refused read.
        let client = standby_session(&c).await;
        let before = select_counts(&client).await;
        let rows = client
            .simple_query("SELECT n, inet_server_port() FROM v")
            .await
            .unwrap_or_else(|e| panic!("SELECT FROM v (simple): {e}"));
        let row = rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .expect("a row");
        assert_eq!(row.get(0), Some("1"));
        assert_eq!(row.get(1), Some(primary.to_string().as_str()));
        let after = select_counts(&client).await;
        assert_eq!(after[&1], before[&1] + 1, "the standby's refused read");
        // The session goes on: a plain read after it, in a new session, is the standby's.
        let other = standby_session(&c).await;
        // Known now: straight to the primary, in another session too.
        let after = select_counts(&other).await;
        let rows = other
            .simple_query("SELECT n, inet_server_port() FROM v")
            .await
            .unwrap();
        assert_eq!(simple_value(&rows).as_deref(), Some("2"));
        let again = select_counts(&other).await;
        assert_eq!(
            again[&1], after[&1],
            "a known refusal was sent to the standby again"
        );

        // Extended protocol, a named statement (tokio-postgres prepares, then binds it in a
        // batch of its own): the statement is made on the primary and runs there.
        let client = standby_session(&c).await;
        let stmt = client
            .prepare("SELECT r, inet_server_port() FROM w")
            .await
            .unwrap();
        for round in 0..2 {
            let row = client
                .query_one(&stmt, &[])
                .await
                .unwrap_or_else(|e| panic!("SELECT FROM w (prepared), round {round}: {e}"));
            assert_eq!(row.get::<_, i32>(0), 1);
            assert_eq!(port_of(&row, 1), primary, "round {round}");
        }
        // The unnamed statement, Parse to Sync in one batch.
        let client = standby_session(&c).await;
        let rows = client
            .query_typed("SELECT r, inet_server_port() FROM w2", &[])
            .await
            .unwrap_or_else(|e| panic!("SELECT FROM w2 (unnamed): {e}"));
        assert_eq!(port_of(&rows[0], 1), primary);
        let audit = c.psql(0, "test", "SELECT count(*) FROM audit").unwrap();
        assert_eq!(
            audit.trim(),
            "3",
            "one insert per read, none lost or repeated"
        );
        // Texts each refused once, in new sessions: the standby sends its error at once and
        // its ReadyForQuery after, often read apart; every read runs again on the primary.
        for i in 0..12 {
            let client = standby_session(&c).await;
            let sql = format!("SELECT n, inet_server_port() FROM v3 WHERE {i} = {i}");
            let row = client
                .query_one(sql.as_str(), &[])
                .await
                .unwrap_or_else(|e| panic!("{sql} (prepared): {e}"));
            assert_eq!(port_of(&row, 1), primary, "{sql}");
            let client = standby_session(&c).await;
            let sql = format!("SELECT n, inet_server_port() FROM v3 WHERE {i} = {i} + 0");
            let rows = client
                .simple_query(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql} (simple): {e}"));
            assert!(simple_value(&rows).is_some(), "{sql}");
        }
        // Plain reads of a new session stay on the standby.
        let client = c.client("test").await;
        let row = client
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap();
        assert_eq!(port_of(&row, 0), standby, "plain reads stay on the standby");

        // A read-only transaction the client began: the standby's refusal is the answer, as
        // one server's would be, and the session goes on.
        let client = standby_session(&c).await;
        client.batch_execute("BEGIN READ ONLY").await.unwrap();
        let e = client
            .simple_query("SELECT n FROM v2")
            .await
            .expect_err("a write in a read-only transaction");
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
        );
        client.batch_execute("ROLLBACK").await.unwrap();
        // The primary refuses it too (the session made its transactions read-only): the
        // primary's refusal, once, and the session goes on.
        client
            .batch_execute("SET default_transaction_read_only = on")
            .await
            .unwrap();
        let e = client
            .simple_query("SELECT n FROM v2")
            .await
            .expect_err("a write with default_transaction_read_only");
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
        );
        let row = client.query_one("SELECT 1", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 1);
        // Pipelined behind another query, the refusal is relayed as it came (answers stay in
        // order): no retry, no hang.
        let client = standby_session(&c).await;
        let both = async {
            tokio::join!(
                client.simple_query("SELECT n FROM v3"),
                client.simple_query("SELECT 7")
            )
        };
        let (a, b) = tokio::time::timeout(Duration::from_secs(20), both)
            .await
            .expect("a pipelined refusal left the client waiting");
        // Run again if its answer came before the next query, else the refusal.
        match a {
            Ok(rows) => assert!(simple_value(&rows).is_some()),
            Err(e) => assert_eq!(
                e.code(),
                Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
            ),
        }
        assert_eq!(simple_value(&b.unwrap()).as_deref(), Some("7"));

        // Raw batches a driver may send, refused on the standby, where running them again
        // would lose or change answers: the refusal is relayed, every earlier answer with it.
        use common::raw::{login_at, message, prepare_flush, read_until};
        use tokio::io::AsyncWriteExt;
        let code = |got: &[(u8, Vec<u8>)]| -> Vec<String> {
            got.iter()
                .filter(|(t, _)| *t == b'E')
                .filter_map(|(_, body)| {
                    body.split(|b| *b == 0)
                        .find(|f| f.first() == Some(&b'C'))
                        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
                })
                .collect()
        };
        let tags = |got: &[(u8, Vec<u8>)]| got.iter().map(|(t, _)| *t as char).collect::<String>();
        let bind = |stmt: &str| {
            message(
                b'B',
                &[b"\0", stmt.as_bytes(), b"\0", &[0, 0], &[0, 0], &[0, 0]],
            )
        };
        let execute = message(b'E', &[b"\0", &[0, 0, 0, 0]]);
        let sync = message(b'S', &[]);
        // libpq's pipeline mode: Parse, Describe, Flush and the Bind to Sync in one write,
        // before the first answers came (the first cut kept them back and lost them).
        let mut s = login_at(&c, c.proxy_port()).await;
        let mut w = prepare_flush("pa", "SELECT n FROM v4");
        w.extend(bind("pa"));
        w.extend(message(b'D', &[b"P", b"\0"]));
        w.extend(&execute);
        w.extend(&sync);
        s.write_all(&w).await.unwrap();
        let got = read_until(&mut s, b'Z').await;
        assert!(tags(&got).starts_with("1tT2T"), "{}", tags(&got));
        assert_eq!(code(&got), ["25006"], "{}", tags(&got));
        // A portal bound in the pipeline's open part, executed after it: it exists only on
        // the standby (the first cut ran the Execute again on the primary: 34000).
        let mut s = login_at(&c, c.proxy_port()).await;
        let mut w = message(b'P', &[b"\0", b"SELECT n FROM v4", b"\0", &[0, 0]]);
        w.extend(bind(""));
        w.extend(message(b'H', &[]));
        s.write_all(&w).await.unwrap();
        let got = read_until(&mut s, b'2').await;
        assert_eq!(tags(&got), "12");
        s.write_all(&[execute.clone(), sync.clone()].concat())
            .await
            .unwrap();
        let got = read_until(&mut s, b'Z').await;
        assert_eq!(code(&got), ["25006"], "{}", tags(&got));
        // Two statements run in one batch: not run again, and the plain one is not taken for
        // a write (the first cut remembered both texts, and sent the plain one to the primary
        // from then on, for every session).
        let mut s = login_at(&c, c.proxy_port()).await;
        let plain = "SELECT inet_server_port() /* plain */";
        let mut w = Vec::new();
        for sql in [plain, "SELECT n FROM v4"] {
            w.extend(message(b'P', &[b"\0", sql.as_bytes(), b"\0", &[0, 0]]));
            w.extend(bind(""));
            w.extend(&execute);
        }
        w.extend(&sync);
        s.write_all(&w).await.unwrap();
        let got = read_until(&mut s, b'Z').await;
        assert_eq!(code(&got), ["25006"], "{}", tags(&got));
        let other = c.client("test").await;
        let rows = other.simple_query(plain).await.unwrap();
        assert_eq!(
            simple_value(&rows),
            Some(standby.to_string()),
            "the plain read"
        );
    });
    // A reload forgets what was learnt: a view may have changed. The next such read is
    // refused by the standby, and runs on the primary, again.
    let pid = std::fs::read_to_string(c.layout.warden_pid()).unwrap();
    let pid = nix::unistd::Pid::from_raw(pid.trim().parse().unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    block(async {
        let mut counted = false;
        for _ in 0..50 {
            let client = standby_session(&c).await;
            let before = select_counts(&client).await;
            let rows = client.simple_query("SELECT n FROM v").await.unwrap();
            assert!(simple_value(&rows).is_some());
            if select_counts(&client).await[&1] == before[&1] + 1 {
                counted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            counted,
            "after a reload the read was never tried on the standby again"
        );
    });
}

/// A notification carries the pid its sender's client was told, as from one server: the
/// session's own (its own NOTIFY) the pid it was told in BackendKeyData, so that drivers skip
/// their own notifications by it (psycopg's `info.backend_pid`, asyncpg's `get_server_pid()`,
/// pgjdbc's `getBackendPID()`); another session's through pgwarden the pid that session's
/// client was told, even once it has left (psycopg2's own test suite notifies from a process
/// that prints `conn.info.backend_pid`, notifies and disconnects); a client of the server
/// itself its server process's. (Before, every notification carried the server process's
/// pid, which no client of pgwarden is told; then only the session's own was changed.)
#[test]
fn notifications_carry_the_pid_their_sender_was_told() {
    use common::raw::{message, read_until, startup, welcome};
    use tokio::io::AsyncWriteExt;
    let c = Cluster::up(2);
    block(async {
        let query = |sql: &str| message(b'Q', &[sql.as_bytes(), b"\0"]);
        let told_in = |got: &[(u8, Vec<u8>)]| {
            got.iter()
                .find(|(t, _)| *t == b'K')
                .map(|(_, b)| i32::from_be_bytes(b[..4].try_into().unwrap()))
                .expect("BackendKeyData")
        };
        let (mut s, got) = welcome(&c, c.proxy_port(), &startup("postgres")).await;
        let told = told_in(&got);
        s.write_all(&query("LISTEN ch; NOTIFY ch, 'mine'"))
            .await
            .unwrap();
        let got = read_until(&mut s, b'Z').await;
        let pid_of = |got: &[(u8, Vec<u8>)]| -> Vec<(i32, Vec<u8>)> {
            got.iter()
                .filter(|(t, _)| *t == b'A')
                .map(|(_, b)| {
                    (
                        i32::from_be_bytes(b[..4].try_into().unwrap()),
                        b[4..].to_vec(),
                    )
                })
                .collect()
        };
        let own = pid_of(&got);
        assert_eq!(own.len(), 1, "{got:?}");
        assert_eq!(own[0].0, told, "the session's own notification");

        // The listener, idle, hears the next notification.
        let hear = async |s: &mut tokio::net::TcpStream| {
            let mut heard = Vec::new();
            for _ in 0..50 {
                s.write_all(&query("SELECT 1")).await.unwrap();
                heard.extend(pid_of(&read_until(s, b'Z').await));
                if !heard.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            heard
        };

        // A session that logs in on `port`, notifies, and tells the pid it was told.
        let notify_from = async |port: u16, payload: &str| {
            let (mut s, got) = welcome(&c, port, &startup("postgres")).await;
            s.write_all(&query(&format!("NOTIFY ch, '{payload}'")))
                .await
                .unwrap();
            read_until(&mut s, b'Z').await;
            (s, told_in(&got))
        };

        // Another session through pgwarden notifies and leaves at once.
        let (mut other, other_told) = notify_from(c.proxy_port(), "theirs").await;
        other.write_all(&message(b'X', &[])).await.unwrap();
        drop(other);
        let heard = hear(&mut s).await;
        assert_eq!(heard.len(), 1, "{heard:?}");
        assert_eq!(
            heard[0],
            (other_told, b"ch\0theirs\0".to_vec()),
            "another session's notification carries the pid its client was told"
        );
        assert_ne!(other_told, told);

        // A client of the primary itself: its server process's pid, as it is told.
        let (_direct, direct_pid) = notify_from(c.node_port(0), "direct").await;
        let heard = hear(&mut s).await;
        assert_eq!(heard, vec![(direct_pid, b"ch\0direct\0".to_vec())]);
    });
}

/// `SET datestyle TO ymd` changes only the order and keeps the format an earlier
/// `SET datestyle TO iso` set; a node the session comes to later must be given both. (Before,
/// the settings record kept only the later one, as for any setting set twice, and a read on
/// another node printed `01-08-1999` where the session had asked for ISO dates: found by
/// PostgreSQL's regression suite through pgwarden, `tests/regress.rs`, its `date` script.)
#[test]
fn a_datestyle_order_set_after_its_format_keeps_the_format_on_every_node() {
    let c = Cluster::up(2);
    primary_weight_zero(&c);
    restart_with_proxy_settings(&c, "");
    let out = c
        .psql_env(
            c.proxy_port(),
            "test",
            &[
                "SET datestyle TO iso",
                "SET datestyle TO ymd",
                "SELECT 'standby', current_setting('datestyle'), date '1999-01-08'",
                "/*NO LOAD BALANCE*/ SELECT 'primary', current_setting('datestyle'), \
                 date '1999-01-08'",
                "SET datestyle TO dmy",
                "/*NO LOAD BALANCE*/ SELECT 'primary', current_setting('datestyle'), \
                 date '1999-01-08'",
                "SELECT 'standby', current_setting('datestyle'), date '1999-01-08'",
            ],
            &[("PGDATESTYLE", "Postgres, MDY")],
        )
        .expect("psql");
    assert_eq!(
        out,
        "standby|ISO, YMD|1999-01-08\nprimary|ISO, YMD|1999-01-08\n\
         primary|ISO, DMY|1999-01-08\nstandby|ISO, DMY|1999-01-08"
    );
}

/// `pg_terminate_backend` of the pid `SELECT pg_backend_pid()` gave a session ends the
/// client's session with the server's own FATAL (57P01), as with one server, even when its
/// next statement is a read that would run on a standby. Before (psycopg2's own test suite,
/// `test_external_close_async`): `pg_backend_pid()` was answered by the session's standby, so
/// the pid named nothing on the primary, where `pg_terminate_backend` runs (on another host,
/// it could name another session's backend); and with the primary's pid, the next read ran
/// on the standby and the session went on until its next write ended it ("connection lost").
#[test]
fn a_session_whose_primary_backend_is_terminated_ends_with_the_servers_fatal() {
    let c = Cluster::up(2);
    primary_weight_zero(&c);
    restart_with_proxy_settings(&c, "");
    block(async {
        // A session that has read on the standby, and the pid of its backend: it holds
        // connections to both nodes.
        let victim = standby_session(&c).await;
        let pid = victim
            .simple_query("SELECT pg_backend_pid()")
            .await
            .unwrap();
        let pid = simple_value(&pid).expect("pid");
        // Reads go to the standby again once it has replayed what the session may have
        // written on the primary (read-your-writes).
        let standby_port = c.node_port(1).to_string();
        let mut on_standby = false;
        for _ in 0..100 {
            let port = victim
                .simple_query("SELECT inet_server_port()")
                .await
                .unwrap();
            if simple_value(&port).as_deref() == Some(standby_port.as_str()) {
                on_standby = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            on_standby,
            "the session's reads never went back to the standby"
        );
        let on_primary = c
            .psql(
                0,
                "test",
                &format!("SELECT pg_terminate_backend({pid}, 5000)"),
            )
            .unwrap();
        assert_eq!(on_primary, "t");
        let err = victim
            .simple_query("SELECT inet_server_port()")
            .await
            .expect_err("the session was terminated");
        let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
        assert_eq!(db.code().code(), "57P01", "{db:?}");
        assert_eq!(db.severity(), "FATAL");
        assert_eq!(
            db.message(),
            "terminating connection due to administrator command"
        );
        assert!(
            victim.simple_query("SELECT 1").await.is_err(),
            "the session is over"
        );
        // Others go on.
        let other = c.client("test").await;
        other.simple_query("SELECT 1").await.unwrap();
    });
}

/// A server that ends a session's connection says why in a FATAL error and closes it: the
/// client hears that error, and only it, as from one server (asyncpg keeps the last error
/// it reads: its suite's `test_execute_script_interrupted_by_server` got pgwarden's
/// "connection lost" in place of PostgreSQL's "terminating connection due to administrator
/// command").
#[test]
fn a_query_whose_backend_is_terminated_hears_only_the_servers_fatal() {
    use common::raw::{login_at, message, read_to_close, read_until};
    use tokio::io::AsyncWriteExt;
    let c = Cluster::up(1);
    block(async {
        let query = |sql: &str| message(b'Q', &[sql.as_bytes(), b"\0"]);
        let mut s = login_at(&c, c.proxy_port()).await;
        s.write_all(&query("SELECT pg_backend_pid()"))
            .await
            .unwrap();
        let got = read_until(&mut s, b'Z').await;
        let row = got.iter().find(|(t, _)| *t == b'D').expect("a row");
        let pid = String::from_utf8(row.1[6..].to_vec()).unwrap();
        s.write_all(&query("SELECT pg_sleep(30)")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            c.psql(
                0,
                "test",
                &format!("SELECT pg_terminate_backend({pid}, 5000)")
            )
            .unwrap(),
            "t"
        );
        let rest = read_to_close(&mut s, Duration::from_secs(10), "the session's end").await;
        let mut errors = Vec::new();
        let mut pos = 0;
        while let Some(head) = rest.get(pos..pos + 5) {
            let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
            let body = &rest[pos + 5..(pos + 1 + len).min(rest.len())];
            if head[0] == b'E' {
                errors.push(String::from_utf8_lossy(body).into_owned());
            }
            pos += 1 + len;
        }
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("C57P01\0"), "{errors:?}");
        assert!(
            errors[0].contains("Mterminating connection due to administrator command\0"),
            "{errors:?}"
        );
    });
}

/// `DROP DATABASE` and `CREATE DATABASE … TEMPLATE` need no one else connected to the
/// database: pgwarden closes its idle pooled connections to it first, as the clients that
/// used them are gone. (Before, they failed through pgwarden alone with 55006 "database … is
/// being accessed by other users": asyncpg's own test suite drops the database its pool
/// used.) A client still connected to it keeps it, as with one server.
#[test]
fn a_database_its_clients_left_can_be_dropped_or_copied() {
    let c = Cluster::up(2);
    for db in ["dropme", "tmpl", "kept"] {
        c.psql(0, "postgres", &format!("CREATE DATABASE {db}"))
            .unwrap();
    }
    block(async {
        // Sessions through pgwarden that used each database, then left: their backend
        // connections stay in the pool, on the primary and the standby.
        for db in ["dropme", "tmpl", "kept"] {
            for _ in 0..2 {
                let cl = c.client(db).await;
                cl.simple_query("SELECT 1").await.unwrap();
                cl.simple_query("/*NO LOAD BALANCE*/ SELECT 1")
                    .await
                    .unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let admin = c.client("test").await;
        // Simple and extended protocol.
        admin.batch_execute("DROP DATABASE dropme").await.unwrap();
        admin
            .execute("CREATE DATABASE copied TEMPLATE tmpl", &[])
            .await
            .unwrap();
        // A client still connected keeps it.
        let holder = c.client("kept").await;
        holder
            .simple_query("/*NO LOAD BALANCE*/ SELECT 1")
            .await
            .unwrap();
        let err = admin
            .batch_execute("DROP DATABASE kept")
            .await
            .expect_err("a client is connected to it");
        assert_eq!(
            err.as_db_error().map(|e| e.code().code()),
            Some("55006"),
            "{err:?}"
        );
        drop(holder);
    });
    let dbs = c
        .psql(0, "postgres", "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database WHERE datname IN ('dropme', 'copied', 'kept', 'tmpl')")
        .unwrap();
    assert_eq!(dbs, "copied,kept,tmpl");
}

/// A client's cancel connection ends only once the server has acted on the request, as
/// PostgreSQL's does: libpq's `PQcancel` and asyncpg wait for that end before their next
/// query. Cancelling an idle session and then running a query must not cancel the query.
/// (Before, pgwarden closed the cancel connection at once and forwarded the request after:
/// it landed on the next query; asyncpg's suite, `test_timeout_05`.)
#[test]
fn a_cancel_is_done_when_its_connection_closes() {
    use common::raw::{message, read_until, startup, welcome};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = Cluster::up(1);
    block(async {
        let query = |sql: &str| message(b'Q', &[sql.as_bytes(), b"\0"]);
        let (mut s, got) = welcome(&c, c.proxy_port(), &startup("postgres")).await;
        let k = &got
            .iter()
            .find(|(t, _)| *t == b'K')
            .expect("BackendKeyData")
            .1;
        let (pid, key) = (k[..4].to_vec(), k[4..8].to_vec());
        // The session has its backend connection.
        s.write_all(&query("SELECT 1")).await.unwrap();
        read_until(&mut s, b'Z').await;
        let mut cancelled = 0;
        for _ in 0..10 {
            let mut req = 16u32.to_be_bytes().to_vec();
            req.extend(80877102u32.to_be_bytes());
            req.extend(&pid);
            req.extend(&key);
            let mut cancel = tokio::net::TcpStream::connect(("127.0.0.1", c.proxy_port()))
                .await
                .unwrap();
            cancel.write_all(&req).await.unwrap();
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(15), cancel.read_to_end(&mut rest))
                .await
                .expect("the cancel connection closes")
                .unwrap();
            s.write_all(&query("SELECT pg_sleep(0.2)")).await.unwrap();
            let answer = read_until(&mut s, b'Z').await;
            if answer.iter().any(|(t, _)| *t == b'E') {
                cancelled += 1;
            }
        }
        assert_eq!(
            cancelled, 0,
            "queries after a finished cancel were cancelled"
        );
    });
}
