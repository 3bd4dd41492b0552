//! PCP framing and the replies the server sends, on plain bytes (no sockets).
//!
//! A packet is `tag: u8`, `length: i32` (network order, counts itself and the payload, not the
//! tag), then the payload — usually NUL-terminated strings.

use crate::NodeInfoLayout;
use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Local, Utc};
use pgwarden_core::node::{NodeStatus, NodeView, Role};

/// pgpool's `MAX_PCP_PACKET_LENGTH`: a request's length field must be below this.
pub(crate) const MAX_REQUEST_LENGTH: i32 = 260;

/// glibc's `RAND_MAX`: pgpool stores weights normalised to it and the client divides by it.
const RAND_MAX: f64 = 2147483647.0;

const CC: &str = "CommandComplete";

/// The payload size a request's length field announces, or `None` when the length is one
/// pgpool refuses (or one below the 4 bytes of the field itself).
pub(crate) fn payload_len(length: i32) -> Option<usize> {
    if (4..MAX_REQUEST_LENGTH).contains(&length) {
        usize::try_from(length - 4).ok()
    } else {
        None
    }
}

/// The first NUL-terminated string of a payload (all of it when there is no NUL).
pub(crate) fn first_cstr(payload: &[u8]) -> &[u8] {
    payload.split(|&b| b == 0).next().unwrap_or_default()
}

/// Appends one packet whose payload is `parts` as they are.
pub(crate) fn raw_packet(out: &mut BytesMut, tag: u8, parts: &[&[u8]]) {
    let len: usize = 4 + parts.iter().map(|p| p.len()).sum::<usize>();
    out.put_u8(tag);
    out.put_i32(i32::try_from(len).unwrap_or(i32::MAX));
    for p in parts {
        out.put_slice(p);
    }
}

/// A string as a C string: NUL bytes inside would cut it short on the client, so they
/// become spaces; then the terminating NUL.
fn cstr(s: &str) -> Vec<u8> {
    let mut v: Vec<u8> = s.bytes().map(|b| if b == 0 { b' ' } else { b }).collect();
    v.push(0);
    v
}

/// Appends one packet whose payload is `fields` as NUL-terminated strings.
pub(crate) fn packet<S: AsRef<str>>(out: &mut BytesMut, tag: u8, fields: &[S]) {
    let parts: Vec<Vec<u8>> = fields.iter().map(|f| cstr(f.as_ref())).collect();
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    raw_packet(out, tag, &refs);
}

/// `tag` + `CommandComplete`: the reply of the commands that return nothing else.
pub(crate) fn command_complete(out: &mut BytesMut, tag: u8) {
    packet(out, tag, &[CC]);
}

/// Severity of an `E` packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Severity {
    /// The connection stays usable.
    Error,
    /// The server closes the connection after it.
    Fatal,
}

/// An `E` packet with fields S, C, M, D in that order, then the final NUL.
///
/// The client's parser (`process_error_response`) does not step over the value of an
/// `S`, `M` or `D` field, so the value's first byte is read as the next field type: a message
/// starting with `S`, `M` or `D` would be misread. Such a first letter is lowercased, an empty
/// message becomes "error", and the detail (the last field) is safe whatever it holds.
pub(crate) fn error(out: &mut BytesMut, sev: Severity, message: &str, detail: Option<&str>) {
    let mut message = if message.is_empty() {
        "error".to_string()
    } else {
        message.to_string()
    };
    if let Some(first @ (b'S' | b'M' | b'D')) = message.bytes().next() {
        message.replace_range(..1, &char::from(first.to_ascii_lowercase()).to_string());
    }
    let sev = match sev {
        Severity::Error => "ERROR",
        Severity::Fatal => "FATAL",
    };
    let mut fields = vec![
        format!("S{sev}"),
        "CXX000".to_string(),
        format!("M{message}"),
    ];
    if let Some(d) = detail.filter(|d| !d.is_empty()) {
        fields.push(format!("D{d}"));
    }
    let mut parts: Vec<Vec<u8>> = fields.iter().map(|f| cstr(f)).collect();
    parts.push(vec![0]);
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    raw_packet(out, b'E', &refs);
}

/// pgpool's `BACKEND_STATUS` code.
fn status_code(s: NodeStatus) -> u8 {
    match s {
        NodeStatus::Unused => 0,
        NodeStatus::Waiting => 1,
        NodeStatus::Up => 2,
        NodeStatus::Down => 3,
    }
}

/// pgpool's `SERVER_ROLE` code in streaming-replication mode: 2 for the primary, 3 for every
/// other node. pgpool has no "unknown" role there (`inform_node_info` calls each node that is
/// not `primary_node_id` a standby), and scripts parsing `pcp_node_info` expect one of the two.
fn role_code(r: Role) -> u8 {
    match r {
        Role::Primary => 2,
        Role::Standby | Role::Unknown => 3,
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Primary => "primary",
        Role::Standby | Role::Unknown => "standby",
    }
}

/// The sum of the weights the normalised weights are relative to (pgpool: every configured
/// backend).
pub(crate) fn total_weight(nodes: &[NodeView]) -> f64 {
    nodes.iter().map(|v| v.weight.max(0.0)).sum()
}

/// The weight as pgpool keeps it: `weight / total × RAND_MAX`, printed with `%f`.
fn weight_field(weight: f64, total: f64) -> String {
    let w = if total > 0.0 && weight.is_finite() && weight > 0.0 {
        weight / total * RAND_MAX
    } else {
        0.0
    };
    format!("{w:.6}")
}

/// The fields after `NodeInfo` in one node-info packet.
pub(crate) fn node_info_fields(v: &NodeView, total: f64, layout: NodeInfoLayout) -> Vec<String> {
    let mut f = vec![
        v.host.clone(),
        v.port.to_string(),
        status_code(v.status).to_string(),
        // pgwarden has no quarantine state (pgpool's watchdog-only "down but not failed").
        "0".to_string(),
        v.pg_status.as_str().to_string(),
        weight_field(v.weight, total),
        role_code(v.role).to_string(),
        v.pg_role.as_str().to_string(),
    ];
    if layout == NodeInfoLayout::V44 {
        // standby_delay_by_time: the delay below is in bytes.
        f.push("0".to_string());
    }
    f.extend([
        v.lag_bytes.unwrap_or(0).to_string(),
        v.replication_state.clone().unwrap_or_default(),
        v.sync_state.clone().unwrap_or_default(),
        u64::try_from(v.last_status_change.timestamp())
            .unwrap_or(0)
            .to_string(),
    ]);
    f
}

/// The node-info reply: `ArraySize` (ASCII), one `NodeInfo` per node, `CommandComplete`.
pub(crate) fn node_info(
    out: &mut BytesMut,
    all: &[NodeView],
    which: &[&NodeView],
    layout: NodeInfoLayout,
) {
    let total = total_weight(all);
    packet(
        out,
        b'i',
        &["ArraySize".to_string(), which.len().to_string()],
    );
    for v in which {
        let mut fields = vec!["NodeInfo".to_string()];
        fields.extend(node_info_fields(v, total, layout));
        packet(out, b'i', &fields);
    }
    command_complete(out, b'i');
}

/// Local time as pgpool's `%F %T`; empty when never.
fn local_time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.with_timezone(&Local).format("%F %T").to_string())
        .unwrap_or_default()
}

/// The 20 strings of pgpool's `POOL_HEALTH_CHECK_STATS`, in order. Durations are in
/// milliseconds, as pgpool's; averages are `%f`.
pub(crate) fn health_check_fields(v: &NodeView) -> [String; 20] {
    pgwarden_core::node::health_check_row(v, v.status.as_str(), role_name(v.role), &local_time)
}

pub(crate) fn health_check_stats(out: &mut BytesMut, v: &NodeView) {
    let mut fields = vec![CC.to_string()];
    fields.extend(health_check_fields(v));
    packet(out, b'h', &fields);
}

pub(crate) fn node_count(out: &mut BytesMut, n: usize) {
    packet(out, b'l', &[CC.to_string(), n.to_string()]);
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The pool-status reply: `ArraySize` with a **binary** int32 count, one `ProcessConfig`
/// per row, `CommandComplete`. Values are cut to the client's buffers (name 64, value 512,
/// description 80 bytes), which it would cut to anyway.
pub(crate) fn pool_status(out: &mut BytesMut, rows: &[(String, String, String)]) {
    let n = i32::try_from(rows.len()).unwrap_or(i32::MAX);
    raw_packet(out, b'b', &[b"ArraySize\0", &n.to_be_bytes()]);
    for (name, value, desc) in rows.iter().take(usize::try_from(n).unwrap_or(0)) {
        packet(
            out,
            b'b',
            &[
                "ProcessConfig",
                truncate(name, 64),
                truncate(value, 512),
                truncate(desc, 80),
            ],
        );
    }
    command_complete(out, b'b');
}

/// `n`: `CommandComplete`, the count, then each pid.
pub(crate) fn proc_count(out: &mut BytesMut, pids: &[u32]) {
    let mut fields = vec![CC.to_string(), pids.len().to_string()];
    fields.extend(pids.iter().map(u32::to_string));
    packet(out, b'n', &fields);
}

/// `p`: `ArraySize` 0 then `CommandComplete`: no pooled child process to report.
pub(crate) fn proc_info_empty(out: &mut BytesMut) {
    packet(out, b'p', &["ArraySize", "0"]);
    command_complete(out, b'p');
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_core::config::FailoverFlag;
    use pgwarden_core::node::{HealthStats, LiveStatus};

    fn view(id: u32, role: Role, weight: f64) -> NodeView {
        NodeView {
            id,
            host: format!("db{id}.example"),
            port: 5432 + id as u16,
            data_dir: String::new(),
            weight,
            failover: FailoverFlag::Allow,
            application_name: format!("node{id}"),
            status: NodeStatus::Up,
            last_status_change: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            pg_status: LiveStatus::Up,
            role,
            pg_role: role,
            timeline: Some(1),
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
        }
    }

    /// The packets of `out` as (tag, payload) with NULs shown as `|`.
    fn show(out: &[u8]) -> String {
        let mut s = String::new();
        let mut rest = out;
        while rest.len() >= 5 {
            let tag = char::from(rest[0]);
            let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            let payload = &rest[5..1 + len];
            let text: String = payload
                .iter()
                .map(|&b| match b {
                    0 => '|',
                    32..=126 => char::from(b),
                    _ => '?',
                })
                .collect();
            s.push_str(&format!("{tag} {len:>3} {text}\n"));
            rest = &rest[1 + len..];
        }
        assert!(rest.is_empty(), "trailing bytes");
        s
    }

    #[test]
    fn request_lengths_follow_pgpool_limits() {
        assert_eq!(payload_len(4), Some(0));
        assert_eq!(payload_len(6), Some(2));
        assert_eq!(payload_len(259), Some(255));
        for bad in [i32::MIN, -1, 0, 1, 3, 260, 261, i32::MAX] {
            assert_eq!(payload_len(bad), None, "{bad}");
        }
    }

    #[test]
    fn packets_count_their_length_without_the_tag() {
        let mut out = BytesMut::new();
        command_complete(&mut out, b'c');
        assert_eq!(&out[..], b"c\0\0\0\x14CommandComplete\0");
        out.clear();
        raw_packet(&mut out, b'm', &[&[1, 2, 3, 4]]);
        assert_eq!(&out[..], b"m\0\0\0\x08\x01\x02\x03\x04");
        assert_eq!(first_cstr(b"12\0junk"), b"12");
        assert_eq!(first_cstr(b"12"), b"12");
        assert_eq!(first_cstr(b""), b"");
    }

    #[test]
    fn error_fields_come_in_the_order_the_client_parser_needs() {
        let mut out = BytesMut::new();
        error(
            &mut out,
            Severity::Error,
            "informing node info failed",
            Some("invalid node ID : 7"),
        );
        insta::assert_snapshot!(show(&out), @"E  68 SERROR|CXX000|Minforming node info failed|Dinvalid node ID : 7||
");
        out.clear();
        error(&mut out, Severity::Fatal, "Switchover refused", None);
        insta::assert_snapshot!(show(&out), @"E  39 SFATAL|CXX000|Mswitchover refused||
");
        out.clear();
        error(&mut out, Severity::Error, "", Some("D\0x"));
        insta::assert_snapshot!(show(&out), @"E  31 SERROR|CXX000|Merror|DD x||
");
    }

    #[test]
    fn node_info_fields_in_the_43_and_44_layouts() {
        let mut primary = view(0, Role::Primary, 1.0);
        primary.lag_bytes = Some(0);
        let mut standby = view(1, Role::Standby, 2.0);
        standby.lag_bytes = Some(1234);
        standby.replication_state = Some("streaming".into());
        standby.sync_state = Some("async".into());
        let mut unknown = view(2, Role::Unknown, 1.0);
        unknown.status = NodeStatus::Down;
        unknown.pg_status = LiveStatus::Down;
        let nodes = vec![primary, standby, unknown];
        let total = total_weight(&nodes);
        let rows: Vec<String> = nodes
            .iter()
            .flat_map(|v| {
                [NodeInfoLayout::V43, NodeInfoLayout::V44]
                    .map(|l| format!("{l:?}: {}", node_info_fields(v, total, l).join("|")))
            })
            .collect();
        insta::assert_snapshot!(rows.join("\n"), @r"
        V43: db0.example|5432|2|0|up|536870911.750000|2|primary|0|||1700000000
        V44: db0.example|5432|2|0|up|536870911.750000|2|primary|0|0|||1700000000
        V43: db1.example|5433|2|0|up|1073741823.500000|3|standby|1234|streaming|async|1700000000
        V44: db1.example|5433|2|0|up|1073741823.500000|3|standby|0|1234|streaming|async|1700000000
        V43: db2.example|5434|3|0|down|536870911.750000|3|unknown|0|||1700000000
        V44: db2.example|5434|3|0|down|536870911.750000|3|unknown|0|0|||1700000000
        ");
        assert_eq!(weight_field(1.0, 0.0), "0.000000");
        assert_eq!(weight_field(f64::NAN, 1.0), "0.000000");
    }

    #[test]
    fn node_info_reply_packets() {
        let nodes = vec![view(0, Role::Primary, 1.0), view(1, Role::Standby, 1.0)];
        let mut out = BytesMut::new();
        node_info(&mut out, &nodes, &[&nodes[1]], NodeInfoLayout::V43);
        insta::assert_snapshot!(show(&out), @r"
        i  16 ArraySize|1|
        i  80 NodeInfo|db1.example|5433|2|0|up|1073741823.500000|3|standby|0|||1700000000|
        i  20 CommandComplete|
        ");
    }

    #[test]
    fn pool_status_counts_in_binary() {
        let rows = vec![
            (
                "listen_addresses".to_string(),
                "*".to_string(),
                "host name(s) or IP address(es) to listen on".to_string(),
            ),
            ("n".repeat(70), "v".to_string(), "d".repeat(90)),
        ];
        let mut out = BytesMut::new();
        pool_status(&mut out, &rows);
        assert_eq!(&out[..19], b"b\0\0\0\x12ArraySize\0\0\0\0\x02");
        let text = show(&out);
        assert!(
            text.contains(&format!("|{}|v|{}|", "n".repeat(64), "d".repeat(80))),
            "{text}"
        );
        assert!(text.ends_with("b  20 CommandComplete|\n"), "{text}");
    }

    #[test]
    fn health_check_stats_has_twenty_fields() {
        let mut v = view(1, Role::Standby, 1.0);
        v.health_check.total_count = 10;
        v.health_check.success_count = 9;
        v.health_check.fail_count = 1;
        v.health_check.retry_count = 3;
        v.health_check.max_retry_count = 2;
        v.health_check.average_retry_count = 0.3;
        v.health_check.max_duration_ms = Some(120);
        v.health_check.min_duration_ms = Some(4);
        v.health_check.average_duration_ms = 15.5;
        let f = health_check_fields(&v);
        assert_eq!(f[..5], ["1", "db1.example", "5433", "up", "standby"]);
        assert_eq!(
            f[6..16],
            [
                "10",
                "9",
                "1",
                "0",
                "3",
                "0.300000",
                "2",
                "120",
                "4",
                "15.500000"
            ]
        );
        assert_eq!(f[16..], ["", "", "", ""]);
        let mut out = BytesMut::new();
        health_check_stats(&mut out, &v);
        let nuls = out.iter().filter(|&&b| b == 0).count();
        // Three zero bytes in the length field, then CommandComplete + 20 terminated fields.
        assert_eq!(nuls, 3 + 21);
    }

    #[test]
    fn proc_count_lists_pids() {
        let mut out = BytesMut::new();
        proc_count(&mut out, &[4242]);
        insta::assert_snapshot!(show(&out), @"n  27 CommandComplete|1|4242|
");
    }
}
