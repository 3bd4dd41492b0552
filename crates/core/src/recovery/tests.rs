use super::*;
use crate::config::FailoverFlag;
use crate::node::{LiveStatus as L, NodeStatus as S};
use std::collections::BTreeMap;

fn n(id: u32, status: NodeStatus, live: LiveStatus) -> NodeFacts {
    NodeFacts {
        id,
        status,
        live,
        in_recovery: Some(id != 0),
        lsn: None,
        timeline: Some(1),
        failover: FailoverFlag::Allow,
        priority: 0,
    }
}

fn state(primary: Option<u32>) -> ClusterState {
    ClusterState {
        generation: 3,
        primary,
        nodes: BTreeMap::new(),
        sync_standbys: Vec::new(),
    }
}

#[test]
fn who_may_be_recovered() {
    let healthy = || {
        vec![
            n(0, S::Up, L::Up),
            n(1, S::Down, L::Down),
            n(2, S::Up, L::Up),
        ]
    };
    type Case = (
        &'static str,
        ClusterState,
        Vec<NodeFacts>,
        u32,
        Vec<u32>,
        Result<u32, &'static str>,
    );
    let cases: Vec<Case> = vec![
        (
            "a down standby",
            state(Some(0)),
            healthy(),
            1,
            vec![],
            Ok(0),
        ),
        (
            "a detached standby that still runs",
            state(Some(0)),
            vec![n(0, S::Up, L::Up), n(1, S::Down, L::Up)],
            1,
            vec![],
            Ok(0),
        ),
        (
            "an unused (never attached) node",
            state(Some(0)),
            vec![n(0, S::Up, L::Up), n(1, S::Unused, L::Unknown)],
            1,
            vec![],
            Ok(0),
        ),
        (
            "unknown node",
            state(Some(0)),
            healthy(),
            7,
            vec![],
            Err("node 7 is not configured"),
        ),
        (
            "the primary",
            state(Some(0)),
            healthy(),
            0,
            vec![],
            Err("node 0 is the primary"),
        ),
        (
            "in service",
            state(Some(0)),
            healthy(),
            2,
            vec![],
            Err("node 2 is in service (up)"),
        ),
        (
            "waiting counts as in service",
            state(Some(0)),
            vec![n(0, S::Up, L::Up), n(1, S::Waiting, L::Up)],
            1,
            vec![],
            Err("node 1 is in service (waiting)"),
        ),
        (
            "already running",
            state(Some(0)),
            healthy(),
            1,
            vec![1],
            Err("a recovery of node 1 is already running"),
        ),
        (
            "no primary",
            state(None),
            healthy(),
            1,
            vec![],
            Err("there is no primary"),
        ),
        (
            "the primary does not answer",
            state(Some(0)),
            vec![n(0, S::Up, L::Down), n(1, S::Down, L::Down)],
            1,
            vec![],
            Err("the primary (node 0) does not answer"),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, st, nodes, id, running, want) in cases {
        let got = check_recover(&st, &nodes, id, &running);
        let ok = match (&got, &want) {
            (Ok(a), Ok(b)) => a == b,
            (Err(e), Err(w)) => e.starts_with(w),
            _ => false,
        };
        if !ok {
            wrong.push(format!("{what}: want {want:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn rewind_or_base_backup() {
    let d = |state: &str, tl: u32, sys: &str| NodeData {
        state: state.into(),
        timeline: tl,
        system_identifier: sys.into(),
    };
    let cases: Vec<(&str, Option<NodeData>, Method, &str)> = vec![
        (
            "empty data directory",
            None,
            Method::BaseBackup,
            "no data directory",
        ),
        (
            "another cluster",
            Some(d("shut down in recovery", 2, "999")),
            Method::BaseBackup,
            "another cluster",
        ),
        (
            "former primary, killed",
            Some(d("in production", 1, "42")),
            Method::Rewind,
            "last ran as a primary (in production",
        ),
        (
            "former primary, stopped cleanly",
            Some(d("shut down", 1, "42")),
            Method::Rewind,
            "last ran as a primary (shut down",
        ),
        (
            "killed during crash recovery",
            Some(d("in crash recovery", 1, "42")),
            Method::Rewind,
            "last ran as a primary",
        ),
        (
            "standby left on an older timeline",
            Some(d("shut down in recovery", 1, "42")),
            Method::BaseBackup,
            "a standby on timeline 1 (the primary on 2)",
        ),
        (
            // Its control file names the old timeline until its first restartpoint; a second
            // rewind would be unsafe.
            "a rewound node killed before its first restartpoint",
            Some(d("in archive recovery", 1, "42")),
            Method::BaseBackup,
            "fresh base backup",
        ),
        (
            "standby on the primary's timeline",
            Some(d("shut down in recovery", 2, "42")),
            Method::BaseBackup,
            "fresh base backup",
        ),
        (
            "standby killed on the primary's timeline",
            Some(d("in archive recovery", 2, "42")),
            Method::BaseBackup,
            "fresh base backup",
        ),
    ];
    let mut wrong = Vec::new();
    for (what, data, want, reason) in cases {
        let (m, why) = first_stage(data.as_ref(), "42", 2);
        if m != want || !why.contains(reason) {
            wrong.push(format!(
                "{what}: want {want:?} ({reason}), got {m:?} ({why})"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn steps_follow_the_configuration() {
    use Step::*;
    let builtin = RecoveryConfig::default();
    let scripts = RecoveryConfig {
        first_stage_command: Some("recovery_1st_stage".into()),
        second_stage_command: Some("recovery_2nd_stage".into()),
        remote_start_command: Some("pgpool_remote_start".into()),
        ..RecoveryConfig::default()
    };
    let second_only = RecoveryConfig {
        second_stage_command: Some("s2".into()),
        ..RecoveryConfig::default()
    };
    assert_eq!(
        plan(&builtin, true),
        vec![
            Checkpoint,
            StopNode,
            FirstStage,
            StandbyConfig,
            Start,
            WaitStreaming,
            Attach
        ]
    );
    assert_eq!(
        plan(&scripts, false),
        vec![
            Checkpoint,
            FirstStage,
            SecondStage,
            Start,
            WaitStreaming,
            Attach
        ]
    );
    assert_eq!(
        plan(&second_only, true),
        vec![
            Checkpoint,
            StopNode,
            FirstStage,
            StandbyConfig,
            SecondStage,
            Start,
            WaitStreaming,
            Attach
        ]
    );
}

#[test]
fn plans_that_cannot_run() {
    let builtin = RecoveryConfig::default();
    let scripts = RecoveryConfig {
        first_stage_command: Some("recovery_1st_stage".into()),
        remote_start_command: Some("pgpool_remote_start".into()),
        ..RecoveryConfig::default()
    };
    assert!(check_plan(&builtin, 1, true, true, true).is_ok());
    assert!(check_plan(&builtin, 1, false, true, false)
        .unwrap_err()
        .contains("has no `agent` address"));
    assert!(check_plan(&scripts, 1, false, true, false).is_ok());
    assert!(check_plan(&scripts, 1, false, true, true)
        .unwrap_err()
        .contains("still runs"));
    assert!(check_plan(&scripts, 1, true, false, false)
        .unwrap_err()
        .contains("the primary has no `agent`"));
}

#[test]
fn pgpool_stage_arguments() {
    assert_eq!(
        stage_args(
            "/var/lib/pg/0",
            "db1",
            "/var/lib/pg/1",
            5432,
            1,
            5433,
            "/tmp"
        ),
        [
            "/var/lib/pg/0",
            "db1",
            "/var/lib/pg/1",
            "5432",
            "1",
            "5433",
            "localhost"
        ]
    );
    assert_eq!(stage_args("/d0", "", "/d1", 1, 2, 3, "h")[1], "localhost");
}

#[test]
fn rate_and_time_left() {
    assert_eq!(rate_and_eta(0, Some(100), 5_000), (None, None));
    assert_eq!(rate_and_eta(100, Some(100), 100), (None, None));
    assert_eq!(
        rate_and_eta(1_000, Some(3_000), 1_000),
        (Some(1_000.0), Some(2))
    );
    assert_eq!(rate_and_eta(1_000, None, 2_000), (Some(500.0), None));
}

#[test]
fn when_auto_recovery_steps_in() {
    use crate::cluster::NodeRecord;
    let rec = |reason: &str| NodeRecord {
        status: S::Down,
        since: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
        reason: reason.into(),
    };
    let with = |id: u32, reason: &str| {
        let mut st = state(Some(0));
        st.nodes.insert(id, rec(reason));
        st
    };
    let down = n(1, S::Down, L::Down);
    let cases: Vec<(&str, ClusterState, NodeFacts, bool, bool, bool)> = vec![
        (
            "failed health checks",
            with(1, "health check failed"),
            down.clone(),
            false,
            true,
            true,
        ),
        (
            "detached by hand",
            with(1, "detached by hand"),
            down.clone(),
            false,
            true,
            false,
        ),
        (
            "already running",
            with(1, "x"),
            down.clone(),
            true,
            true,
            false,
        ),
        ("no agent", with(1, "x"), down.clone(), false, false, false),
        ("up", with(1, "x"), n(1, S::Up, L::Up), false, true, false),
        (
            "no primary",
            {
                let mut s = with(1, "x");
                s.primary = None;
                s
            },
            down.clone(),
            false,
            true,
            false,
        ),
        (
            "is the primary",
            with(0, "x"),
            n(0, S::Down, L::Down),
            false,
            true,
            false,
        ),
    ];
    for (what, st, f, running, agent, want) in cases {
        assert_eq!(
            auto_recovery_wanted(&st, &f, running, agent),
            want,
            "{what}"
        );
    }
    let max = std::time::Duration::from_secs(600);
    let secs: Vec<u64> = (0..8)
        .map(|f| auto_recovery_backoff(f, max).as_secs())
        .collect();
    assert_eq!(secs, [10, 20, 40, 80, 160, 320, 600, 600]);
}
