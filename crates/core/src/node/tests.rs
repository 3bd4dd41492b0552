use super::*;
use crate::config::HealthCheck;
use chrono::TimeZone;
use std::path::PathBuf;

fn t(s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
}

fn lsn(s: &str) -> Option<Lsn> {
    Some(s.parse().unwrap())
}

#[test]
fn status_transitions() {
    use FailoverFlag::*;
    use NodeStatus::*;
    #[rustfmt::skip]
    let table = [
        // current, healthy, flag,   expected
        (Waiting, true,  Allow,    Up),
        (Waiting, false, Allow,    Down),
        (Waiting, false, Disallow, Up),
        (Up,      true,  Allow,    Up),
        (Up,      false, Allow,    Down),
        (Up,      false, Disallow, Up),
        (Down,    true,  Allow,    Down), // a returning node is not re-attached by a check
        (Down,    true,  Disallow, Down),
        (Down,    false, Allow,    Down),
        (Unused,  true,  Allow,    Unused),
        (Unused,  false, Allow,    Unused),
    ];
    for (current, healthy, flag, want) in table {
        assert_eq!(
            next_status(current, healthy, flag),
            want,
            "{current:?} healthy={healthy} {flag:?}"
        );
    }
}

fn ok_cycle(at: i64, obs: Observation, retries: u32, ms: u64) -> CheckCycle {
    CheckCycle {
        started: std::time::Instant::now(),
        finished_at: t(at),
        duration: Duration::from_millis(ms),
        retries,
        result: Ok(obs),
    }
}

fn failed_cycle(at: i64, retries: u32, ms: u64) -> CheckCycle {
    CheckCycle {
        started: std::time::Instant::now(),
        finished_at: t(at),
        duration: Duration::from_millis(ms),
        retries,
        result: Err("connection refused".into()),
    }
}

#[test]
fn a_server_that_refuses_for_lack_of_connections_stays_in_service() {
    let mut s = NodeState::new(t(0));
    s.apply(
        ok_cycle(1, primary_obs("0/10", vec![]), 0, 1),
        FailoverFlag::Allow,
    );
    let busy = CheckCycle {
        started: std::time::Instant::now(),
        finished_at: t(2),
        duration: Duration::from_millis(3),
        retries: 2,
        result: Err(CheckError {
            message: "sorry, too many clients already".into(),
            alive: true,
        }),
    };
    assert!(
        s.apply(busy, FailoverFlag::Allow).is_none(),
        "no status change"
    );
    assert_eq!(s.status, NodeStatus::Up);
    assert_eq!(s.live, LiveStatus::Up);
    assert_eq!(s.role, Role::Primary);
    assert!(s.observation.is_some(), "the last observation stays");
    assert_eq!(
        s.last_error.as_deref(),
        Some("sorry, too many clients already")
    );
    assert_eq!(
        s.stats.fail_count, 1,
        "the statistics still count a failed check"
    );
}

fn primary_obs(current: &str, rows: Vec<ReplicationRow>) -> Observation {
    Observation {
        in_recovery: false,
        current_lsn: lsn(current),
        receive_lsn: None,
        replay_lsn: None,
        timeline: Some(1),
        server_version: Some("15.18".into()),
        replication: rows,
    }
}

fn standby_obs(receive: &str, replay: &str) -> Observation {
    Observation {
        in_recovery: true,
        current_lsn: None,
        receive_lsn: lsn(receive),
        replay_lsn: lsn(replay),
        timeline: Some(1),
        server_version: Some("15.18".into()),
        replication: vec![],
    }
}

fn row(name: &str, state: &str, sync: &str) -> ReplicationRow {
    ReplicationRow {
        application_name: name.into(),
        client_addr: Some("127.0.0.1".into()),
        state: Some(state.into()),
        sync_state: Some(sync.into()),
        sent_lsn: None,
        write_lsn: None,
        flush_lsn: None,
        replay_lsn: None,
    }
}

#[test]
fn a_node_goes_down_and_its_live_state_comes_back() {
    let mut s = NodeState::new(t(0));
    assert_eq!(s.status, NodeStatus::Waiting);
    assert_eq!(s.live, LiveStatus::Unknown);

    let change = s.apply(
        ok_cycle(1, standby_obs("0/10", "0/10"), 0, 4),
        FailoverFlag::Allow,
    );
    assert_eq!(change.unwrap().to, NodeStatus::Up);
    assert_eq!(s.role, Role::Standby);
    assert_eq!(s.last_status_change, t(1));

    assert!(s
        .apply(
            ok_cycle(2, standby_obs("0/20", "0/20"), 0, 6),
            FailoverFlag::Allow
        )
        .is_none());

    let change = s
        .apply(failed_cycle(3, 2, 1000), FailoverFlag::Allow)
        .unwrap();
    assert_eq!((change.from, change.to), (NodeStatus::Up, NodeStatus::Down));
    assert!(change.reason.contains("3 attempt(s)"), "{}", change.reason);
    assert_eq!(s.live, LiveStatus::Down);
    assert_eq!(s.role, Role::Standby, "the last known role is kept");
    assert_eq!(s.last_error.as_deref(), Some("connection refused"));

    // it answers again: live state up, status stays down
    assert!(s
        .apply(
            ok_cycle(4, standby_obs("0/30", "0/30"), 0, 5),
            FailoverFlag::Allow
        )
        .is_none());
    assert_eq!(s.status, NodeStatus::Down);
    assert_eq!(s.live, LiveStatus::Up);
    assert_eq!(s.last_status_change, t(3));
    assert!(s.last_error.is_none());

    let st = &s.stats;
    assert_eq!((st.total_count, st.success_count, st.fail_count), (4, 3, 1));
    assert_eq!((st.retry_count, st.max_retry_count), (2, 2));
    assert_eq!(st.average_retry_count, 0.5);
    assert_eq!(
        (st.min_duration_ms, st.max_duration_ms),
        (Some(4), Some(1000))
    );
    assert_eq!(st.average_duration_ms, (4.0 + 6.0 + 1000.0 + 5.0) / 4.0);
    assert_eq!(st.last_health_check, Some(t(4)));
    assert_eq!(st.last_successful_health_check, Some(t(4)));
    assert_eq!(st.last_failed_health_check, Some(t(3)));
    assert_eq!(st.last_skip_health_check, None);
}

fn backend(id: u32) -> Backend {
    Backend {
        id,
        host: "127.0.0.1".into(),
        port: 5432 + id as u16,
        data_dir: PathBuf::from(format!("/d/data{id}")),
        weight: 1.0,
        failover: FailoverFlag::Allow,
        application_name: format!("node{id}"),
        agent: None,
        priority: 0,
        health_check: HealthCheck::default(),
    }
}

fn state(obs: Option<Observation>) -> NodeState {
    let mut s = NodeState::new(t(0));
    match obs {
        Some(o) => s.apply(ok_cycle(1, o, 0, 1), FailoverFlag::Allow),
        None => s.apply(failed_cycle(1, 0, 1), FailoverFlag::Allow),
    };
    s
}

#[test]
fn views_of_a_streaming_cluster() {
    let backends = [backend(0), backend(1), backend(2)];
    let states = [
        state(Some(primary_obs(
            "0/3000100",
            vec![
                row("node1", "streaming", "async"),
                row("node2", "catchup", "sync"),
            ],
        ))),
        state(Some(standby_obs("0/3000100", "0/3000000"))),
        state(Some(standby_obs("0/2000000", "0/1000000"))),
    ];
    let v = build_views(&backends, &states, None);
    assert_eq!(v[0].pg_role, Role::Primary);
    assert_eq!(v[0].lag_bytes, None);
    assert_eq!(v[0].replication_state, None);
    assert_eq!(v[1].pg_role, Role::Standby);
    assert_eq!(v[1].lag_bytes, Some(0x100));
    assert_eq!(v[1].receive_lag_bytes, Some(0));
    assert_eq!(v[1].replication_state.as_deref(), Some("streaming"));
    assert_eq!(v[1].sync_state.as_deref(), Some("async"));
    assert_eq!(v[2].lag_bytes, Some(0x200_0100));
    assert_eq!(v[2].receive_lag_bytes, Some(0x100_0100));
    assert_eq!(v[2].replication_state.as_deref(), Some("catchup"));
    assert_eq!(v[2].sync_state.as_deref(), Some("sync"));
}

#[test]
fn views_with_a_down_standby_and_without_a_primary() {
    let backends = [backend(0), backend(1)];
    let mut down = state(Some(standby_obs("0/10", "0/10")));
    down.apply(failed_cycle(2, 0, 1), FailoverFlag::Allow);
    let states = [state(Some(primary_obs("0/100", vec![]))), down];
    let v = build_views(&backends, &states, None);
    assert_eq!(v[1].status, NodeStatus::Down);
    assert_eq!(v[1].pg_status, LiveStatus::Down);
    assert_eq!(v[1].role, Role::Standby);
    assert_eq!(v[1].pg_role, Role::Unknown);
    assert_eq!(
        v[1].lag_bytes, None,
        "no lag figure for a node that does not answer"
    );
    assert_eq!(v[1].replication_state, None);

    // the primary is down: standbys have no lag figure
    let states = [state(None), state(Some(standby_obs("0/10", "0/10")))];
    let v = build_views(&backends, &states, None);
    assert_eq!(v[0].pg_role, Role::Unknown);
    assert_eq!(v[1].lag_bytes, None);
}

#[test]
fn two_primaries_measure_lag_against_the_lowest_id() {
    let backends = [backend(0), backend(1), backend(2)];
    let states = [
        state(Some(standby_obs("0/50", "0/50"))),
        state(Some(primary_obs(
            "0/100",
            vec![row("node0", "streaming", "async")],
        ))),
        state(Some(primary_obs("0/900", vec![]))),
    ];
    let v = build_views(&backends, &states, None);
    assert_eq!(v[0].lag_bytes, Some(0xb0));
    assert_eq!(v[0].replication_state.as_deref(), Some("streaming"));
    assert_eq!(v[2].pg_role, Role::Primary);
}

#[test]
fn view_json_shape() {
    let backends = [backend(0)];
    let states = [state(Some(primary_obs("0/100", vec![])))];
    let json = serde_json::to_value(build_views(&backends, &states, None)).unwrap();
    let n = &json[0];
    assert_eq!(n["status"], "up");
    assert_eq!(n["pg_status"], "up");
    assert_eq!(n["role"], "primary");
    assert_eq!(n["current_lsn"], "0/100");
    assert_eq!(n["failover"], "allow");
    assert_eq!(n["health_check"]["total_count"], 1);
    assert!(n["health_check"].get("total_duration_ms").is_none());
    let back: Vec<NodeView> = serde_json::from_value(json).unwrap();
    assert_eq!(back[0].current_lsn, lsn("0/100"));
}
