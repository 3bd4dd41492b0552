use super::*;
use crate::node::{LiveStatus as L, NodeStatus as S};

fn lsn(v: u64) -> Option<Lsn> {
    Some(Lsn(v))
}

/// A node: (id, status, live, in_recovery, lsn).
fn n(id: u32, status: NodeStatus, live: LiveStatus, rec: Option<bool>, l: u64) -> NodeFacts {
    NodeFacts {
        id,
        status,
        live,
        in_recovery: rec,
        lsn: if l == 0 { None } else { lsn(l) },
        timeline: Some(1),
        failover: FailoverFlag::Allow,
        priority: 0,
    }
}

fn state(primary: Option<u32>, generation: u64) -> ClusterState {
    ClusterState {
        generation,
        primary,
        nodes: BTreeMap::new(),
        sync_standbys: Vec::new(),
    }
}

#[test]
fn decisions() {
    let p = Some(false);
    let s = Some(true);
    type Case = (&'static str, ClusterState, Vec<NodeFacts>, bool, Decision);
    let cases: Vec<Case> = vec![
        (
            "healthy cluster",
            state(Some(0), 1),
            vec![n(0, S::Up, L::Up, p, 100), n(1, S::Up, L::Up, s, 90), n(2, S::Up, L::Up, s, 80)],
            true,
            Decision::Nothing,
        ),
        (
            "first start: wait until every node was checked",
            state(None, 0),
            vec![n(0, S::Up, L::Up, p, 100), n(1, S::Waiting, L::Unknown, None, 0)],
            true,
            Decision::Nothing,
        ),
        (
            "first start: the one primary is adopted",
            state(None, 0),
            vec![n(0, S::Up, L::Up, p, 100), n(1, S::Up, L::Up, s, 90), n(2, S::Down, L::Down, None, 0)],
            true,
            Decision::Adopt { primary: 0 },
        ),
        (
            "first start: two primaries is for a human",
            state(None, 0),
            vec![n(0, S::Up, L::Up, p, 100), n(1, S::Up, L::Up, p, 90)],
            true,
            Decision::Stuck {
                reason: "nodes 0, 1 are all primaries (not in recovery); pgwarden will not choose between them: detach the false ones with `pgwarden node detach N`".into(),
            },
        ),
        (
            "first start with no primary never promotes (it may just be starting)",
            state(None, 0),
            vec![n(0, S::Down, L::Down, None, 0), n(1, S::Up, L::Up, s, 90)],
            true,
            Decision::Stuck {
                reason: "no node in service is a primary (not in recovery); start the primary, or promote a standby with `pgwarden node promote N`".into(),
            },
        ),
        (
            "a down old primary that answers again is not adopted",
            state(None, 0),
            vec![n(0, S::Down, L::Up, p, 100), n(1, S::Up, L::Up, p, 90)],
            true,
            Decision::Adopt { primary: 1 },
        ),
        (
            "primary failed: the standby with the most WAL is promoted",
            state(Some(0), 1),
            vec![n(0, S::Down, L::Down, p, 100), n(1, S::Up, L::Up, s, 90), n(2, S::Up, L::Up, s, 95)],
            true,
            Decision::Failover { failed: Some(0), promote: 2 },
        ),
        (
            "primary failed, failover off",
            state(Some(0), 1),
            vec![n(0, S::Down, L::Down, p, 100), n(1, S::Up, L::Up, s, 90)],
            false,
            Decision::Stuck {
                reason: "primary node 0 failed and failover.auto is off: promote a standby with `pgwarden node promote N`".into(),
            },
        ),
        (
            "primary failed, the only standby is down too",
            state(Some(0), 1),
            vec![n(0, S::Down, L::Down, p, 100), n(1, S::Down, L::Down, s, 90)],
            true,
            Decision::Stuck {
                reason: "primary node 0 failed and no standby is in service to promote (a standby must be up, answering, in recovery and allowed to fail over)".into(),
            },
        ),
        (
            "a standby failed: no failover",
            state(Some(0), 1),
            vec![n(0, S::Up, L::Up, p, 100), n(1, S::Down, L::Down, s, 90)],
            true,
            Decision::Nothing,
        ),
        (
            "a node in service that is not the primary but not in recovery is fenced",
            state(Some(1), 2),
            vec![n(0, S::Up, L::Up, p, 100), n(1, S::Up, L::Up, p, 120), n(2, S::Up, L::Up, s, 110)],
            true,
            Decision::FenceFalsePrimaries { nodes: vec![0] },
        ),
        (
            "a false primary already down is left alone",
            state(Some(1), 2),
            vec![n(0, S::Down, L::Up, p, 100), n(1, S::Up, L::Up, p, 120)],
            true,
            Decision::Nothing,
        ),
        (
            "pgwarden stopped mid-failover: it finishes",
            state(None, 3),
            vec![n(0, S::Down, L::Down, None, 0), n(1, S::Up, L::Up, s, 90), n(2, S::Up, L::Up, s, 91)],
            true,
            Decision::Failover { failed: None, promote: 2 },
        ),
        (
            "pgwarden stopped after promoting, before recording it: the new primary is adopted",
            state(None, 3),
            vec![n(0, S::Down, L::Down, None, 0), n(1, S::Up, L::Up, p, 90), n(2, S::Up, L::Up, s, 91)],
            true,
            Decision::Adopt { primary: 1 },
        ),
    ];
    for (name, st, nodes, auto, want) in cases {
        assert_eq!(decide(&st, &nodes, auto, false), want, "{name}");
    }
}

#[test]
fn candidate_choice() {
    let s = Some(true);
    let mut disallowed = n(3, S::Up, L::Up, s, 500);
    disallowed.failover = FailoverFlag::Disallow;
    let mut prio = n(4, S::Up, L::Up, s, 90);
    prio.priority = 5;
    type Case = (
        &'static str,
        Vec<NodeFacts>,
        Option<Vec<u32>>,
        Result<u32, ()>,
    );
    let cases: Vec<Case> = vec![
        (
            "most WAL wins",
            vec![n(1, S::Up, L::Up, s, 90), n(2, S::Up, L::Up, s, 95)],
            None,
            Ok(2),
        ),
        (
            "tie: lowest id",
            vec![n(2, S::Up, L::Up, s, 90), n(1, S::Up, L::Up, s, 90)],
            None,
            Ok(1),
        ),
        (
            "tie: priority before id",
            vec![n(1, S::Up, L::Up, s, 90), prio.clone()],
            None,
            Ok(4),
        ),
        (
            "never a DISALLOW node",
            vec![n(1, S::Up, L::Up, s, 90), disallowed.clone()],
            None,
            Ok(1),
        ),
        (
            "never a down node",
            vec![n(1, S::Down, L::Up, s, 900), n(2, S::Up, L::Up, s, 90)],
            None,
            Ok(2),
        ),
        (
            "never one that does not answer",
            vec![n(1, S::Up, L::Down, s, 900)],
            None,
            Err(()),
        ),
        (
            "never a primary",
            vec![n(1, S::Up, L::Up, Some(false), 900)],
            None,
            Err(()),
        ),
        (
            "unknown LSN loses to a known one",
            vec![n(1, S::Up, L::Up, s, 0), n(2, S::Up, L::Up, s, 5)],
            None,
            Ok(2),
        ),
        (
            "synchronous only",
            vec![n(1, S::Up, L::Up, s, 99), n(2, S::Up, L::Up, s, 90)],
            Some(vec![2]),
            Ok(2),
        ),
        (
            "no synchronous standby",
            vec![n(1, S::Up, L::Up, s, 99)],
            Some(vec![2]),
            Err(()),
        ),
    ];
    for (name, nodes, only, want) in cases {
        let got = choose_candidate(&nodes, only.as_deref()).map_err(|_| ());
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn manual_operations() {
    let p = Some(false);
    let s = Some(true);
    let st = state(Some(0), 2);
    let nodes = vec![
        n(0, S::Up, L::Up, p, 100),
        n(1, S::Up, L::Up, s, 90),
        n(2, S::Down, L::Up, s, 80),
        n(3, S::Down, L::Up, p, 70),
    ];
    let mut old_tl = n(4, S::Down, L::Up, s, 60);
    old_tl.timeline = Some(0);
    let mut with_tl = nodes.clone();
    with_tl.push(old_tl);
    // attach
    assert!(check_attach(&st, &nodes, 2).is_ok());
    let e = check_attach(&st, &nodes, 3).unwrap_err();
    assert!(e.contains("false primary"), "{e}");
    assert!(check_attach(&st, &nodes, 1)
        .unwrap_err()
        .contains("already in service"));
    assert!(check_attach(&st, &nodes, 9)
        .unwrap_err()
        .contains("not configured"));
    assert!(check_attach(&st, &with_tl, 4)
        .unwrap_err()
        .contains("timeline 0"));
    // with no primary, a returning primary may be attached (then adopted)
    assert!(check_attach(&state(None, 2), &nodes, 3).is_ok());
    // detach
    assert!(check_detach(&st, &nodes, 1, true).is_ok());
    assert!(
        check_detach(&st, &nodes, 0, true).is_ok(),
        "the primary: a failover to 1"
    );
    assert!(check_detach(&st, &nodes, 0, false)
        .unwrap_err()
        .contains("failover.auto is off"));
    assert!(check_detach(&st, &nodes, 2, true)
        .unwrap_err()
        .contains("already out of service"));
    let last = vec![n(0, S::Up, L::Up, p, 100), n(1, S::Down, L::Down, s, 90)];
    assert!(check_detach(&st, &last, 0, true)
        .unwrap_err()
        .contains("last node in service"));
    let no_standby = vec![n(0, S::Up, L::Up, p, 100), n(1, S::Waiting, L::Down, s, 90)];
    assert!(check_detach(&st, &no_standby, 0, true)
        .unwrap_err()
        .contains("no standby is in service"));
    // promote
    let e = check_promote(&st, &nodes, 1, false).unwrap_err();
    assert!(e.contains("switchover --to 1"), "{e}");
    assert!(check_promote(&st, &nodes, 1, true).is_ok());
    assert!(check_promote(&st, &nodes, 0, false)
        .unwrap_err()
        .contains("already the primary"));
    let failed = vec![
        n(0, S::Down, L::Down, p, 100),
        n(1, S::Up, L::Up, s, 90),
        n(2, S::Up, L::Up, s, 95),
    ];
    let e = check_promote(&st, &failed, 1, false).unwrap_err();
    assert!(e.contains("behind node 2"), "{e}");
    assert!(check_promote(&st, &failed, 1, true).is_ok());
    assert!(check_promote(&st, &failed, 2, false).is_ok());
}

#[test]
fn restart_never_reattaches_a_down_node() {
    let rec = |status| NodeRecord {
        status,
        since: chrono::DateTime::<Utc>::UNIX_EPOCH,
        reason: String::new(),
    };
    assert_eq!(status_after_restart(Some(&rec(S::Down))), S::Down);
    assert_eq!(status_after_restart(Some(&rec(S::Up))), S::Waiting);
    assert_eq!(status_after_restart(Some(&rec(S::Unused))), S::Unused);
    assert_eq!(status_after_restart(None), S::Waiting);
}

#[test]
fn event_log_is_bounded() {
    let mut log = EventLog::new(3);
    let t = chrono::DateTime::<Utc>::UNIX_EPOCH;
    for i in 0..5 {
        log.push(t, "status", Some(i), format!("e{i}"));
    }
    let all = log.since(0);
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert_eq!(log.since(4).len(), 1);
}

#[test]
fn hook_placeholders() {
    let node = |id: u32, port: u16| HookNode {
        id,
        host: format!("h{id}"),
        port,
        data_dir: format!("/d{id}"),
    };
    let a = HookArgs {
        node: Some(node(0, 5432)),
        new_main: Some(node(2, 5434)),
        old_main: Some(0),
        old_primary: Some(node(0, 5432)),
    };
    assert_eq!(
        expand_hook("f.sh %d %h %p %D %m %H %M %P %r %R %N %S %% %x end%", &a),
        "f.sh 0 h0 5432 /d0 2 h2 0 0 5434 /d2 h0 5432 % %x end%"
    );
    assert_eq!(expand_hook("x %m %H y", &HookArgs::default()), "x   y");
}

#[test]
fn conninfo_is_repointed_keeping_the_rest() {
    let cases = [
        (
            "host=127.0.0.1 port=11002 user=postgres passfile='/tmp/it\\'s here/pgpass' application_name=node1",
            "host=127.0.0.1 port=11003 user=postgres passfile='/tmp/it\\'s here/pgpass' application_name=node1",
        ),
        (
            "user=rep  host = a.example  sslmode=require",
            "host=127.0.0.1 port=11003 user=rep sslmode=require",
        ),
        ("", "host=127.0.0.1 port=11003"),
        (
            "hostaddr=10.0.0.1 password='a b'",
            "host=127.0.0.1 port=11003 password='a b'",
        ),
    ];
    for (old, want) in cases {
        assert_eq!(repoint_conninfo(old, "127.0.0.1", 11003), want, "{old}");
    }
    assert_eq!(
        conninfo_set(
            "host=a application_name=node1 user=x",
            "application_name",
            "node0"
        ),
        "host=a application_name=node0 user=x"
    );
    assert_eq!(
        conninfo_set("host=a", "application_name", "my app"),
        "host=a application_name='my app'"
    );
}

#[test]
fn switchover_checks() {
    let p = Some(false);
    let s = Some(true);
    let st = state(Some(0), 1);
    let nodes = vec![
        n(0, S::Up, L::Up, p, 100),
        n(1, S::Up, L::Up, s, 100),
        n(2, S::Down, L::Up, s, 100),
    ];
    assert_eq!(check_switchover(&st, &nodes, 1, true), Ok(0));
    let e = |to, streaming| check_switchover(&st, &nodes, to, streaming).unwrap_err();
    assert!(e(1, false).contains("not streaming"));
    assert!(e(0, true).contains("already the primary"));
    assert!(e(2, true).contains("not a standby in service"));
    assert!(e(5, true).contains("not configured"));
    let failed = vec![n(0, S::Down, L::Down, p, 100), n(1, S::Up, L::Up, s, 100)];
    assert!(check_switchover(&st, &failed, 1, true)
        .unwrap_err()
        .contains("node promote 1"));
    assert!(check_switchover(&state(None, 1), &nodes, 1, true)
        .unwrap_err()
        .contains("no primary"));
}

#[test]
fn synchronous_mode_promotes_only_a_synchronous_standby_that_answers() {
    let p = Some(false);
    let s = Some(true);
    let mut st = state(Some(0), 1);
    st.sync_standbys = vec![2];
    let nodes = vec![
        n(0, S::Down, L::Down, p, 100),
        n(1, S::Up, L::Up, s, 999),
        n(2, S::Up, L::Up, s, 90),
    ];
    // Node 1 has more WAL, but only node 2 confirmed every commit.
    assert_eq!(
        decide(&st, &nodes, true, true),
        Decision::Failover {
            failed: Some(0),
            promote: 2
        }
    );
    assert_eq!(
        decide(&st, &nodes, true, false),
        Decision::Failover {
            failed: Some(0),
            promote: 1
        },
        "asynchronous mode: the most WAL"
    );
    // The synchronous standby died with the primary: nobody is promoted.
    let dead = vec![
        n(0, S::Down, L::Down, p, 100),
        n(1, S::Up, L::Up, s, 999),
        n(2, S::Down, L::Down, s, 90),
    ];
    match decide(&st, &dead, true, true) {
        Decision::Stuck { reason } => {
            assert!(reason.contains("node(s) 2 cannot be reached"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // While the synchronous standby is being replaced, both count: the one with more WAL wins,
    // and both must answer.
    st.sync_standbys = vec![2, 1];
    assert_eq!(
        decide(&st, &nodes, true, true),
        Decision::Failover {
            failed: Some(0),
            promote: 1
        }
    );
    assert!(matches!(
        decide(&st, &dead, true, true),
        Decision::Stuck { .. }
    ));
    // Nothing designated yet: any standby.
    st.sync_standbys.clear();
    assert_eq!(
        decide(&st, &nodes, true, true),
        Decision::Failover {
            failed: Some(0),
            promote: 1
        }
    );
}

#[test]
fn synchronous_standby_plans() {
    use crate::config::SyncFallback::{Async, Block};
    let p = Some(false);
    let s = Some(true);
    let nodes = vec![
        n(0, S::Up, L::Up, p, 100),
        n(1, S::Up, L::Up, s, 100),
        n(2, S::Up, L::Up, s, 100),
    ];
    let with = |sync: Vec<u32>| {
        let mut st = state(Some(0), 1);
        st.sync_standbys = sync;
        st
    };
    type Case = (
        &'static str,
        Vec<u32>,
        Vec<u32>,
        crate::config::SyncFallback,
        bool,
        SyncPlan,
    );
    let cases: Vec<Case> = vec![
        (
            "in place",
            vec![1],
            vec![1, 2],
            Block,
            false,
            SyncPlan::Keep,
        ),
        (
            "none yet: the first streaming one",
            vec![],
            vec![2, 1],
            Block,
            false,
            SyncPlan::Designate { old: None, new: 1 },
        ),
        (
            "it stopped streaming: replaced",
            vec![1],
            vec![2],
            Block,
            false,
            SyncPlan::Designate {
                old: Some(1),
                new: 2,
            },
        ),
        (
            "a replacement half done is finished",
            vec![1, 2],
            vec![2],
            Block,
            false,
            SyncPlan::Designate {
                old: Some(1),
                new: 2,
            },
        ),
        (
            "nobody streams, block: commits wait",
            vec![],
            vec![],
            Block,
            false,
            SyncPlan::Block,
        ),
        (
            "nobody streams, block, already blocking",
            vec![],
            vec![],
            Block,
            true,
            SyncPlan::Keep,
        ),
        (
            "the sync standby died, block: keep naming it",
            vec![1],
            vec![],
            Block,
            false,
            SyncPlan::Keep,
        ),
        (
            "the sync standby died, async: release",
            vec![1],
            vec![],
            Async,
            false,
            SyncPlan::Release,
        ),
        (
            "nothing to release",
            vec![],
            vec![],
            Async,
            false,
            SyncPlan::Keep,
        ),
    ];
    for (name, sync, streaming, fb, blocking, want) in cases {
        assert_eq!(
            sync_plan(&with(sync), &nodes, &streaming, fb, blocking),
            want,
            "{name}"
        );
    }
}
