//! Where a read may go: plain functions over the monitor's latest view of the cluster.
//!
//! A node is *usable* when pgwarden has it in service (`status = up`) and its last health check
//! succeeded. The primary takes every write. A read may go to a usable node of weight > 0 that
//! is the primary, or a standby that is no more than `delay_threshold` bytes behind and has
//! replayed at least the session's last commit (`min_lsn`, read-your-writes). When no standby
//! qualifies, reads go to the primary.
//!
//! A session learns its `min_lsn` without asking: the primary's WAL position from the first
//! health check of the primary that began after the session's write was done
//! ([`RouteTable::primary_lsn_after`]). That position is at or past the write's commit; until
//! the monitor has one, the session's reads go to the primary.

use crate::node::{LiveStatus, NodeStatus, NodeView, Role};
use crate::Lsn;
use chrono::{DateTime, Utc};
use std::time::Instant;

#[derive(Debug, Clone, PartialEq)]
pub struct RouteNode {
    pub id: u32,
    pub host: String,
    pub port: u16,
    pub weight: f64,
    pub usable: bool,
    pub role: Role,
    pub replay_lsn: Option<Lsn>,
    /// A primary's WAL position (where WAL is inserted, less a page header: see the monitor's
    /// probe), and when the check that saw it began.
    pub current_lsn: Option<(Lsn, Instant)>,
    pub lag_bytes: Option<u64>,
    /// When its last health check succeeded.
    pub checked_ok_at: Option<DateTime<Utc>>,
}

/// The cluster as the router needs it, rebuilt after every health check.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteTable {
    pub nodes: Vec<RouteNode>,
    /// The node that takes writes: the lowest-numbered usable node that is not in recovery.
    pub primary: Option<u32>,
}

impl RouteTable {
    /// `primary`: the node the warden holds to be the primary. Only that node takes writes, and
    /// only while it is in service and answers as a primary. A node that answers as a primary
    /// but is not that one (a false primary) gets nothing at all.
    pub fn from_views(views: &[NodeView], primary: Option<u32>) -> RouteTable {
        let nodes: Vec<RouteNode> = views
            .iter()
            .map(|v| RouteNode {
                id: v.id,
                host: v.host.clone(),
                port: v.port,
                weight: v.weight,
                usable: v.status == NodeStatus::Up
                    && v.pg_status == LiveStatus::Up
                    && (v.pg_role == Role::Standby
                        || (v.pg_role == Role::Primary && Some(v.id) == primary)),
                role: v.pg_role,
                replay_lsn: v.replay_lsn,
                current_lsn: v.current_lsn.zip(v.asked_at),
                lag_bytes: v.lag_bytes,
                checked_ok_at: v.health_check.last_successful_health_check,
            })
            .collect();
        let primary = nodes
            .iter()
            .find(|n| Some(n.id) == primary && n.usable && n.role == Role::Primary)
            .map(|n| n.id);
        RouteTable { nodes, primary }
    }

    pub fn node(&self, id: u32) -> Option<&RouteNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Whether a read may run on `id` now.
    pub fn can_read(&self, id: u32, delay_threshold: Option<u64>, min_lsn: Option<Lsn>) -> bool {
        let Some(n) = self.node(id) else { return false };
        if !n.usable {
            return false;
        }
        if Some(id) == self.primary {
            return true;
        }
        n.role == Role::Standby
            && delay_threshold.is_none_or(|t| n.lag_bytes.is_some_and(|l| l <= t))
            && min_lsn.is_none_or(|m| n.replay_lsn.is_some_and(|r| r >= m))
    }

    /// Weighted pick among `candidates`; `r` is uniform in [0, 1).
    pub fn pick(&self, candidates: impl Iterator<Item = u32>, r: f64) -> Option<u32> {
        let weighted: Vec<(u32, f64)> = candidates
            .filter_map(|id| self.node(id).map(|n| (id, n.weight)))
            .filter(|(_, w)| *w > 0.0)
            .collect();
        let total: f64 = weighted.iter().map(|(_, w)| w).sum();
        if total <= 0.0 {
            return None;
        }
        let mut at = r.clamp(0.0, 1.0) * total;
        for (id, w) in &weighted {
            if at < *w {
                return Some(*id);
            }
            at -= w;
        }
        weighted.last().map(|(id, _)| *id)
    }

    /// The session's load-balance node (pgpool's, chosen once per session): any usable node
    /// that can take reads, by weight, other than those the session must `avoid` (standbys
    /// that refused its login).
    pub fn choose_lb_node(&self, r: f64, avoid: impl Fn(u32) -> bool) -> Option<u32> {
        let usable = self
            .nodes
            .iter()
            .filter(|n| n.usable && (n.role == Role::Standby || Some(n.id) == self.primary))
            .filter(|n| Some(n.id) == self.primary || !avoid(n.id))
            .map(|n| n.id);
        self.pick(usable, r)
    }

    /// Session-level balancing: the node for the read at hand; `kept`, the session's
    /// load-balance node, is updated. `kept` is None at first; a node no longer configured is
    /// chosen again. `r` is the session's own draw, the same for every read.
    /// The session's node is chosen by weight among the usable nodes and kept. While it
    /// cannot take the session's reads — out of service, down, its weight made 0, or a
    /// standby the session must `avoid` for now (it refused the login, its connections are
    /// all in use, a session found it dead, it is fenced) — they go where the same draw leads
    /// among the others, and come back once it can. (Choosing again and keeping that held
    /// sessions on the primary for good, and left the sessions of a standby that was down for
    /// a while elsewhere after it came back.)
    pub fn session_lb(
        &self,
        kept: &mut Option<u32>,
        r: f64,
        avoid: impl Fn(u32) -> bool,
    ) -> Option<u32> {
        if kept.is_none_or(|id| self.node(id).is_none()) {
            *kept = self.choose_lb_node(r, |_| false);
        }
        let id = (*kept)?;
        let takes_reads = self.node(id).is_some_and(|n| {
            n.usable
                && n.weight > 0.0
                && (Some(id) == self.primary || (n.role == Role::Standby && !avoid(id)))
        });
        if takes_reads {
            Some(id)
        } else {
            self.choose_lb_node(r, avoid)
        }
    }

    /// Whether any standby may take reads at all (usable, weight above zero): without one, a
    /// session's reads stay on the primary and it need not track where its writes are.
    pub fn standby_readable(&self) -> bool {
        self.nodes.iter().any(|n| {
            n.usable && n.role == Role::Standby && Some(n.id) != self.primary && n.weight > 0.0
        })
    }

    /// The primary's WAL position as seen by a health check that began after `done` (when a
    /// session's write was done): at or past that write's commit, so the floor a standby must
    /// have replayed for the session to read its own write there. `None` until such a check.
    pub fn primary_lsn_after(&self, done: Instant) -> Option<Lsn> {
        let primary = self.node(self.primary?)?;
        primary
            .current_lsn
            .filter(|(_, asked)| *asked > done)
            .map(|(lsn, _)| lsn)
    }

    /// Where one read goes. `lb_node`: the session's node (session-level balancing), or `None`
    /// for a fresh weighted pick among the nodes that qualify now (statement level). Standbys
    /// the session must `avoid` get none of its reads.
    pub fn read_target(
        &self,
        lb_node: Option<u32>,
        delay_threshold: Option<u64>,
        min_lsn: Option<Lsn>,
        r: f64,
        avoid: impl Fn(u32) -> bool,
    ) -> Option<u32> {
        let ok = |id: u32| {
            self.can_read(id, delay_threshold, min_lsn) && (Some(id) == self.primary || !avoid(id))
        };
        match lb_node {
            Some(id) if ok(id) => Some(id),
            Some(_) => self.primary,
            None => {
                let ok = self.nodes.iter().filter(|n| ok(n.id)).map(|n| n.id);
                self.pick(ok, r).or(self.primary)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(id: u32, role: Role, usable: bool, weight: f64, replay: u64, lag: u64) -> RouteNode {
        RouteNode {
            id,
            host: "127.0.0.1".into(),
            port: 5432 + id as u16,
            weight,
            usable,
            role,
            replay_lsn: (role == Role::Standby).then_some(Lsn(replay)),
            current_lsn: None,
            lag_bytes: (role == Role::Standby).then_some(lag),
            checked_ok_at: None,
        }
    }

    fn table(nodes: Vec<RouteNode>) -> RouteTable {
        let primary = nodes
            .iter()
            .filter(|n| n.usable && n.role == Role::Primary)
            .map(|n| n.id)
            .min();
        RouteTable { nodes, primary }
    }

    #[test]
    fn read_targets() {
        use Role::*;
        let t = table(vec![
            n(0, Primary, true, 1.0, 0, 0),
            n(1, Standby, true, 1.0, 1000, 0),
            n(2, Standby, true, 1.0, 500, 600),
            n(3, Standby, false, 1.0, 1000, 0),
            n(4, Standby, true, 0.0, 1000, 0),
        ]);
        type Case = (Option<u32>, Option<u64>, Option<u64>, Option<u32>);
        #[rustfmt::skip]
        let cases: &[Case] = &[
            // lb node, delay threshold, min lsn → target
            (Some(1), None,      None,       Some(1)),
            (Some(2), None,      None,       Some(2)),
            (Some(2), Some(100), None,       Some(0)), // too far behind: the primary
            (Some(2), Some(600), None,       Some(2)),
            (Some(1), None,      Some(1000), Some(1)), // replayed the session's commit
            (Some(2), None,      Some(1000), Some(0)), // has not: the primary
            (Some(3), None,      None,       Some(0)), // down
            (Some(0), None,      None,       Some(0)),
            (Some(9), None,      None,       Some(0)), // unknown
        ];
        for (lb, delay, min, want) in cases {
            assert_eq!(
                t.read_target(*lb, *delay, min.map(Lsn), 0.5, |_| false),
                *want,
                "lb={lb:?} delay={delay:?} min={min:?}"
            );
        }
        // statement level: only nodes that qualify, by weight
        for r in [0.0, 0.3, 0.6, 0.99] {
            let got = t
                .read_target(None, Some(100), Some(Lsn(900)), r, |_| false)
                .unwrap();
            assert!([0, 1].contains(&got), "{got}");
        }
        // a standby the session avoids (it refused its login) serves none of its reads, at
        // either level; another standby may
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..100 {
            let r = f64::from(i) / 100.0;
            let got = t.read_target(None, None, None, r, |id| id == 1).unwrap();
            seen.insert(got);
        }
        assert_eq!(seen, [0, 2].into(), "statement level avoiding node 1");
        assert_eq!(
            t.read_target(Some(1), None, None, 0.5, |id| id == 1),
            Some(0)
        );
        assert_eq!(
            t.read_target(Some(2), None, None, 0.5, |id| id == 1),
            Some(2)
        );
        assert_eq!(t.read_target(Some(0), None, None, 0.5, |_| true), Some(0));
    }

    #[test]
    fn the_primary_position_counts_once_asked_after_the_write() {
        use std::time::Duration;
        use Role::*;
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let with = |role: Role, usable: bool, lsn: Option<(u64, u64)>| {
            let mut p = n(0, role, usable, 1.0, 0, 0);
            p.current_lsn = lsn.map(|(l, ms)| (Lsn(l), at(ms)));
            table(vec![p, n(1, Standby, true, 1.0, 0, 0)])
        };
        #[rustfmt::skip]
        let cases: &[(RouteTable, u64, Option<u64>)] = &[
            // table, write done at (ms) → floor
            (with(Primary, true, Some((700, 1000))), 500,  Some(700)), // asked after the write
            (with(Primary, true, Some((700, 1000))), 1000, None),      // asked as it finished: not after
            (with(Primary, true, Some((700, 1000))), 1500, None),      // asked before it
            (with(Primary, true, None),              500,  None),      // never seen
            (with(Primary, false, Some((700, 1000))), 500, None),      // no primary in service
            (with(Standby, true, Some((700, 1000))), 500,  None),      // no primary at all
        ];
        for (t, done, want) in cases {
            assert_eq!(
                t.primary_lsn_after(at(*done)),
                want.map(Lsn),
                "done at {done} ms: {t:?}"
            );
        }
    }

    #[test]
    fn weighted_pick_and_lb_node() {
        use Role::*;
        let t = table(vec![
            n(0, Primary, true, 1.0, 0, 0),
            n(1, Standby, true, 3.0, 0, 0),
            n(2, Standby, false, 5.0, 0, 0),
        ]);
        assert_eq!(t.choose_lb_node(0.0, |_| false), Some(0));
        assert_eq!(t.choose_lb_node(0.24, |_| false), Some(0));
        assert_eq!(t.choose_lb_node(0.26, |_| false), Some(1));
        assert_eq!(t.choose_lb_node(0.999, |_| false), Some(1));
        // A standby that refused the session's login is not its lb node; the primary cannot
        // be avoided (its refusal ends the session).
        for r in [0.0, 0.26, 0.5, 0.999] {
            assert_eq!(t.choose_lb_node(r, |id| id == 1), Some(0), "r={r}");
            assert_eq!(t.choose_lb_node(r, |_| true), Some(0), "r={r}");
        }
        let none = table(vec![n(0, Primary, false, 1.0, 0, 0)]);
        assert_eq!(none.choose_lb_node(0.5, |_| false), None);
        // Session level: what the session keeps, and where the read at hand goes.
        let down = table(vec![
            n(0, Primary, true, 1.0, 0, 0),
            n(1, Standby, false, 3.0, 0, 0),
        ]);
        let zero = table(vec![
            n(0, Primary, true, 1.0, 0, 0),
            n(1, Standby, true, 0.0, 0, 0),
            n(2, Standby, true, 0.0, 0, 0),
        ]);
        for (t, kept, r, avoid, expect) in [
            // The first read chooses by the session's draw.
            (&t, None, 0.1, None, (Some(0), Some(0))),
            (&t, None, 0.9, None, (Some(1), Some(1))),
            // A kept node stays, whatever the draw.
            (&t, Some(0), 0.9, None, (Some(0), Some(0))),
            // Avoiding the session's standby: the read goes elsewhere by the same draw, and
            // the session keeps its node for when the avoidance ends.
            (&t, None, 0.9, Some(1), (Some(1), Some(0))),
            (&t, Some(1), 0.9, Some(1), (Some(1), Some(0))),
            // Avoiding a node the session does not use changes nothing.
            (&t, Some(0), 0.9, Some(1), (Some(0), Some(0))),
            // The primary is never avoided.
            (&t, Some(0), 0.1, Some(0), (Some(0), Some(0))),
            // While the session's node is out of use, its reads go where the same draw leads
            // among those in use; it stays the session's, for when it is back.
            (&down, Some(1), 0.9, None, (Some(1), Some(0))),
            (&t, Some(1), 0.9, None, (Some(1), Some(1))),
            (&down, None, 0.9, Some(0), (Some(0), Some(0))),
            // So while its weight is 0 (and an old primary, now a standby of weight 0).
            (&zero, Some(1), 0.9, None, (Some(1), Some(0))),
            (&zero, Some(2), 0.9, None, (Some(2), Some(0))),
            // A node no longer configured is chosen again.
            (&t, Some(7), 0.9, None, (Some(1), Some(1))),
        ] {
            let mut kept_after = kept;
            let now = t.session_lb(&mut kept_after, r, |id| Some(id) == avoid);
            assert_eq!(
                (kept_after, now),
                expect,
                "kept={kept:?} r={r} avoid={avoid:?}"
            );
        }
        assert_eq!(none.read_target(None, None, None, 0.5, |_| false), None);
    }

    #[test]
    fn whether_a_standby_may_take_reads() {
        use Role::*;
        #[rustfmt::skip]
        let cases: &[(Vec<RouteNode>, bool)] = &[
            (vec![n(0, Primary, true, 1.0, 0, 0), n(1, Standby, true, 1.0, 0, 0)], true),
            // weight 0: reads stay on the primary
            (vec![n(0, Primary, true, 1.0, 0, 0), n(1, Standby, true, 0.0, 0, 0)], false),
            // out of service
            (vec![n(0, Primary, true, 1.0, 0, 0), n(1, Standby, false, 1.0, 0, 0)], false),
            (vec![n(0, Primary, true, 1.0, 0, 0)], false),
            (vec![n(0, Primary, true, 0.0, 0, 0), n(1, Standby, false, 1.0, 0, 0), n(2, Standby, true, 0.5, 0, 0)], true),
        ];
        for (nodes, want) in cases {
            assert_eq!(table(nodes.clone()).standby_readable(), *want, "{nodes:?}");
        }
    }

    #[test]
    fn only_the_designated_primary_takes_writes() {
        use crate::config::FailoverFlag;
        use crate::node::HealthStats;
        use chrono::Utc;
        let view = |id: u32, role: Role, status: NodeStatus| NodeView {
            id,
            host: "h".into(),
            port: 1,
            data_dir: String::new(),
            weight: 1.0,
            failover: FailoverFlag::Allow,
            application_name: String::new(),
            status,
            last_status_change: Utc::now(),
            pg_status: LiveStatus::Up,
            role,
            pg_role: role,
            timeline: None,
            current_lsn: None,
            receive_lsn: None,
            replay_lsn: None,
            lag_bytes: None,
            receive_lag_bytes: None,
            replication_state: None,
            sync_state: None,
            server_version: None,
            observed_at: None,
            asked_at: None,
            last_error: None,
            status_reason: String::new(),
            health_check: HealthStats::default(),
        };
        let views = [
            view(0, Role::Primary, NodeStatus::Down),
            view(1, Role::Standby, NodeStatus::Up),
            view(2, Role::Primary, NodeStatus::Up),
            view(3, Role::Primary, NodeStatus::Up),
        ];
        let t = RouteTable::from_views(&views, Some(2));
        assert_eq!(t.primary, Some(2));
        assert!(!t.nodes[0].usable, "a down node gets nothing");
        assert!(t.nodes[1].usable);
        assert!(
            !t.nodes[3].usable,
            "a false primary gets nothing, not even reads"
        );
        let t = RouteTable::from_views(&views, Some(0));
        assert_eq!(t.primary, None, "the primary is down: no writes anywhere");
        let t = RouteTable::from_views(&views, Some(1));
        assert_eq!(
            t.primary, None,
            "the designated primary is in recovery: no writes"
        );
        assert!(!t.nodes[2].usable && !t.nodes[3].usable);
        let t = RouteTable::from_views(&views, None);
        assert_eq!(t.primary, None, "no primary adopted yet: no writes");
    }
}
