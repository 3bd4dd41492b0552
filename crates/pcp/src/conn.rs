//! One PCP connection: authentication, then commands until 'X', EOF or a FATAL.

use crate::wire::{self, Severity};
use crate::{NodeView, PcpError, PcpHandler, PcpUsers, ServerOptions, StopMode};
use bytes::BytesMut;
use std::sync::RwLock;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

/// One request: its tag and payload (at most 255 bytes).
struct Packet {
    tag: u8,
    payload: Vec<u8>,
}

enum ReadError {
    /// EOF between packets, or an I/O error.
    Closed,
    Timeout,
    /// The length field (pgpool: `rsize <= 0 || rsize >= 260`).
    Length(i32),
}

/// What to do after a reply was written.
enum Next {
    Continue,
    /// Close after flushing (FATAL, 'X').
    Close,
    Stop(StopMode),
}

/// Reads one packet. Before authentication everything must arrive by `deadline`; after it,
/// the wait for a tag is unbounded but the rest of the packet must follow within `packet_time`.
async fn read_packet(
    stream: &mut TcpStream,
    deadline: Option<Instant>,
    packet_time: Duration,
) -> Result<Packet, ReadError> {
    let mut tag = [0u8; 1];
    let n = match deadline {
        Some(d) => timeout_at(d, stream.read(&mut tag))
            .await
            .map_err(|_| ReadError::Timeout)?,
        None => stream.read(&mut tag).await,
    };
    match n {
        Ok(1) => {}
        _ => return Err(ReadError::Closed),
    }
    let rest_deadline = {
        let d = Instant::now() + packet_time;
        deadline.map_or(d, |a| a.min(d))
    };
    let mut len = [0u8; 4];
    read_exact_by(stream, &mut len, rest_deadline).await?;
    let length = i32::from_be_bytes(len);
    let size = wire::payload_len(length).ok_or(ReadError::Length(length))?;
    let mut payload = vec![0u8; size];
    read_exact_by(stream, &mut payload, rest_deadline).await?;
    Ok(Packet {
        tag: tag[0],
        payload,
    })
}

async fn read_exact_by(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), ReadError> {
    match timeout_at(deadline, stream.read_exact(buf)).await {
        Err(_) => Err(ReadError::Timeout),
        Ok(Err(_)) => Err(ReadError::Closed),
        Ok(Ok(_)) => Ok(()),
    }
}

/// Writes a reply, bounded in time: a client that does not read is dropped.
async fn write(stream: &mut TcpStream, out: &[u8], within: Duration) -> bool {
    matches!(
        tokio::time::timeout(within, stream.write_all(out)).await,
        Ok(Ok(()))
    )
}

/// After a FATAL: stop writing, then read and drop what the client still sends for a moment,
/// so that closing does not reset the connection before the client has read the error.
async fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut buf = [0u8; 512];
    let mut total = 0usize;
    while total < 64 * 1024 {
        match timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
}

/// A connection over the limit: one FATAL, then close.
pub(crate) async fn refuse(mut stream: TcpStream, limit: usize) {
    let mut out = BytesMut::new();
    wire::error(
        &mut out,
        Severity::Fatal,
        "too many PCP connections",
        Some(&format!(
            "at most {limit} PCP connections are served at once"
        )),
    );
    if write(&mut stream, &out, Duration::from_secs(1)).await {
        linger(&mut stream).await;
    }
}

pub(crate) async fn run<H: PcpHandler>(
    mut stream: TcpStream,
    users: &RwLock<PcpUsers>,
    handler: &H,
    opts: &ServerOptions,
) {
    let auth_deadline = Instant::now() + opts.auth_timeout;
    let mut salt: Option<[u8; 4]> = None;
    let mut authenticated = false;
    loop {
        let deadline = (!authenticated).then_some(auth_deadline);
        let mut out = BytesMut::new();
        let next = match read_packet(&mut stream, deadline, opts.auth_timeout).await {
            Ok(p) => {
                // A salt and an answer are accepted again after authentication, as pgpool
                // does; a wrong answer is FATAL then too.
                if authenticated && !matches!(p.tag, b'M' | b'R') {
                    command(p, handler, opts, &mut out).await
                } else {
                    authenticate(p, users, &mut salt, &mut authenticated, &mut out)
                }
            }
            Err(ReadError::Closed) => return,
            Err(ReadError::Timeout) => {
                tracing::debug!(authenticated, "PCP: client too slow; closing");
                return;
            }
            Err(ReadError::Length(n)) => {
                tracing::warn!(length = n, "PCP: invalid packet length; closing");
                fatal(
                    &mut out,
                    "invalid PCP packet",
                    &format!("incorrect packet length ({n})"),
                )
            }
        };
        if !out.is_empty() && !write(&mut stream, &out, opts.auth_timeout).await {
            return;
        }
        match next {
            Next::Continue => {}
            Next::Close => {
                if !out.is_empty() {
                    linger(&mut stream).await;
                }
                return;
            }
            Next::Stop(mode) => handler.stop(mode),
        }
    }
}

fn fatal(out: &mut BytesMut, message: &str, detail: &str) -> Next {
    wire::error(out, Severity::Fatal, message, Some(detail));
    Next::Close
}

fn error(out: &mut BytesMut, message: &str, detail: &str) -> Next {
    wire::error(out, Severity::Error, message, Some(detail));
    Next::Continue
}

/// Shows client-sent bytes in a message: lossy UTF-8, at most 64 characters.
fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(64).collect()
}

/// Before authentication: only 'M' (salt) and 'R' (answer) are accepted.
fn authenticate(
    p: Packet,
    users: &RwLock<PcpUsers>,
    salt: &mut Option<[u8; 4]>,
    authenticated: &mut bool,
    out: &mut BytesMut,
) -> Next {
    match p.tag {
        b'M' => {
            let s: [u8; 4] = rand::random();
            *salt = Some(s);
            wire::raw_packet(out, b'm', &[&s]);
            Next::Continue
        }
        b'R' => {
            const NOMATCH: &str = "username and/or password does not match";
            let Some(s) = salt.take() else {
                return fatal(out, "authentication failed", NOMATCH);
            };
            let mut parts = p.payload.splitn(3, |&b| b == 0);
            let user = parts.next().unwrap_or_default();
            let Some(answer) = parts.next() else {
                return fatal(
                    out,
                    "failed to authenticate PCP user",
                    "error while reading authentication packet",
                );
            };
            let ok = users
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .check(user, answer, &s);
            if ok {
                *authenticated = true;
                tracing::debug!(user = %shown(user), "PCP: authenticated");
                wire::packet(out, b'r', &["AuthenticationOK"]);
                Next::Continue
            } else {
                tracing::warn!(user = %shown(user), "PCP: authentication failed");
                fatal(
                    out,
                    &format!("authentication failed for user \"{}\"", shown(user)),
                    NOMATCH,
                )
            }
        }
        _ => fatal(
            out,
            "authentication failed for new PCP connection",
            "connection not authorized",
        ),
    }
}

/// A node id in a request: ASCII decimal up to the first NUL (or, for promote, a space).
fn parse_id(payload: &[u8]) -> Result<i64, String> {
    let text = wire::first_cstr(payload);
    let text = text.split(|&b| b == b' ').next().unwrap_or_default();
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.trim().parse::<i64>().ok())
        .ok_or_else(|| shown(text))
}

/// The configured node with this id, or the text to show for it.
fn find<'a>(nodes: &'a [NodeView], payload: &[u8]) -> Result<&'a NodeView, String> {
    match parse_id(payload) {
        Ok(id) => nodes
            .iter()
            .find(|v| i64::from(v.id) == id)
            .ok_or_else(|| id.to_string()),
        Err(text) => Err(text),
    }
}

fn reply(out: &mut BytesMut, tag: u8, result: Result<(), PcpError>) -> Next {
    match result {
        Ok(()) => wire::command_complete(out, tag),
        Err(e) => wire::error(out, Severity::Error, &e.message, e.detail.as_deref()),
    }
    Next::Continue
}

async fn command<H: PcpHandler>(
    p: Packet,
    handler: &H,
    opts: &ServerOptions,
    out: &mut BytesMut,
) -> Next {
    tracing::debug!(tag = %char::from(p.tag), "PCP: request");
    /// The node a command names, or an ERROR that keeps the connection.
    macro_rules! node_or_error {
        ($what:expr) => {{
            let nodes = handler.nodes();
            match find(&nodes, &p.payload) {
                Ok(v) => v.id,
                Err(id) => return error(out, $what, &format!("node id {id} is not valid")),
            }
        }};
    }
    match p.tag {
        b'L' => {
            wire::node_count(out, handler.nodes().len());
            Next::Continue
        }
        b'I' => {
            let nodes = handler.nodes();
            if parse_id(&p.payload) == Ok(-1) {
                let all: Vec<&NodeView> = nodes.iter().collect();
                wire::node_info(out, &nodes, &all, opts.node_info);
                return Next::Continue;
            }
            match find(&nodes, &p.payload) {
                Ok(v) => {
                    wire::node_info(out, &nodes, &[v], opts.node_info);
                    Next::Continue
                }
                Err(id) => error(
                    out,
                    "informing node info failed",
                    &format!("invalid node ID : {id}"),
                ),
            }
        }
        b'H' => {
            let nodes = handler.nodes();
            match find(&nodes, &p.payload) {
                Ok(v) => {
                    wire::health_check_stats(out, v);
                    Next::Continue
                }
                Err(id) => error(
                    out,
                    "informing health check stats info failed",
                    &format!("invalid node ID {id}"),
                ),
            }
        }
        b'C' => {
            let id = node_or_error!("processing attach node request failed");
            reply(out, b'c', handler.attach(id).await)
        }
        b'D' | b'd' => {
            let id = node_or_error!("processing detach node request failed");
            reply(out, b'd', handler.detach(id, p.tag == b'd').await)
        }
        b'J' | b'j' => {
            let id = node_or_error!("could not process promote request");
            // "<id> \0" then the option byte: 's' switchover, 'n' not.
            let option = p
                .payload
                .iter()
                .position(|&b| b == 0)
                .and_then(|i| p.payload.get(i + 1));
            reply(out, b'd', handler.promote(id, option == Some(&b's')).await)
        }
        b'O' => {
            let id = node_or_error!("process recovery request failed");
            reply(out, b'c', handler.recover(id).await)
        }
        b'B' => {
            wire::pool_status(out, &handler.pool_status());
            Next::Continue
        }
        b'N' => {
            wire::proc_count(out, &[std::process::id()]);
            Next::Continue
        }
        b'P' => match parse_id(&p.payload) {
            Ok(0) => {
                wire::proc_info_empty(out);
                Next::Continue
            }
            Ok(pid) if pid == i64::from(std::process::id()) => {
                wire::proc_info_empty(out);
                Next::Continue
            }
            Ok(pid) => error(
                out,
                "informing process info failed",
                &format!("invalid process ID : {pid}"),
            ),
            Err(text) => error(
                out,
                "informing process info failed",
                &format!("invalid process ID : {text}"),
            ),
        },
        b'W' => error(
            out,
            "PCP: informing watchdog info failed",
            "watchdog is not enabled",
        ),
        b'Z' => reply(out, b'z', handler.reload().await),
        b'T' | b't' => {
            let mode = match p.payload.first() {
                Some(b's') => StopMode::Smart,
                Some(b'f') => StopMode::Fast,
                Some(b'i') => StopMode::Immediate,
                other => {
                    let shown = other.map(|&b| shown(&[b])).unwrap_or_default();
                    return error(
                        out,
                        "PCP: error while processing shutdown request",
                        &format!("invalid shutdown mode \"{shown}\""),
                    );
                }
            };
            wire::command_complete(out, b't');
            Next::Stop(mode)
        }
        b'A' => {
            let mut parts = p.payload.split(|&b| b == 0);
            let name = shown(parts.next().unwrap_or_default());
            let value = shown(parts.next().unwrap_or_default());
            const LEVELS: [&str; 11] = [
                "debug5",
                "debug4",
                "debug3",
                "debug2",
                "debug1",
                "log",
                "commerror",
                "info",
                "notice",
                "warning",
                "error",
            ];
            if !name.eq_ignore_ascii_case("client_min_messages") {
                error(
                    out,
                    "PCP: set configuration parameter failed",
                    &format!("invalid parameter \"{name}\""),
                )
            } else if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(&value)) {
                error(
                    out,
                    "PCP: set configuration parameter failed",
                    &format!("invalid value \"{value}\" for parameter \"{name}\""),
                )
            } else {
                // Accepted and ignored: PCP replies carry no notices from pgwarden.
                wire::command_complete(out, b'a');
                Next::Continue
            }
        }
        // Stop online recovery: a no-op without a reply, as in pgpool.
        b'F' => Next::Continue,
        b'X' => Next::Close,
        other => fatal(
            out,
            "PCP processing request",
            &format!("unknown PCP packet type \"{}\"", shown(&[other])),
        ),
    }
}
