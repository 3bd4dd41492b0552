//! Raw protocol for tests that need what no driver sends: bytes built by hand on a socket
//! logged in with SCRAM.

use super::Cluster;
use std::time::Duration;

/// A StartupMessage (protocol 3.0) with these parameters, in this order (a name may repeat).
pub fn startup_with(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196608u32.to_be_bytes().to_vec();
    for (k, v) in pairs {
        body.extend([k.as_bytes(), b"\0", v.as_bytes(), b"\0"].concat());
    }
    body.push(0);
    [((body.len() + 4) as u32).to_be_bytes().to_vec(), body].concat()
}

/// A StartupMessage (protocol 3.0) for `user` on database `test`.
pub fn startup(user: &str) -> Vec<u8> {
    startup_with(&[("user", user), ("database", "test")])
}

/// A raw socket to `port` (the proxy or a node), logged in and ready for a query.
pub async fn login_at(c: &Cluster, port: u16) -> tokio::net::TcpStream {
    login_with(c, port, &startup("postgres")).await
}

/// `login_at` with a startup packet of the caller's (user postgres, the sandbox's password).
pub async fn login_with(c: &Cluster, port: u16, packet: &[u8]) -> tokio::net::TcpStream {
    let (s, got) = welcome(c, port, packet).await;
    assert_eq!(
        got.last().map(|(tag, _)| *tag),
        Some(b'Z'),
        "the login failed: {got:?}"
    );
    s
}

/// A raw socket to `port` that sent `packet`, and every message the login got (see
/// `authenticate`): the welcome's ParameterStatus and BackendKeyData among them.
pub async fn welcome(
    c: &Cluster,
    port: u16,
    packet: &[u8],
) -> (tokio::net::TcpStream, Vec<(u8, Vec<u8>)>) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(packet).await.unwrap();
    let got = authenticate(c, &mut s).await;
    (s, got)
}

/// Answers the server's authentication requests (trust is not configured: SCRAM through
/// postgres-protocol, with the sandbox's password) and returns every message it sent, up to
/// its first ReadyForQuery or ErrorResponse, or its close.
pub async fn authenticate(c: &Cluster, s: &mut tokio::net::TcpStream) -> Vec<(u8, Vec<u8>)> {
    use tokio::io::AsyncWriteExt;
    let mut scram: Option<postgres_protocol::authentication::sasl::ScramSha256> = None;
    let mut got = Vec::new();
    loop {
        let Some((tag, body)) = try_read_message(s).await else {
            return got;
        };
        if tag == b'R' && body.len() >= 4 {
            let kind = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let mut out = Vec::new();
            match kind {
                10 => {
                    let sc = postgres_protocol::authentication::sasl::ScramSha256::new(
                        c.password().as_bytes(),
                        postgres_protocol::authentication::sasl::ChannelBinding::unsupported(),
                    );
                    let mut payload = b"SCRAM-SHA-256\0".to_vec();
                    payload.extend((sc.message().len() as i32).to_be_bytes());
                    payload.extend(sc.message());
                    out.push(b'p');
                    out.extend(((payload.len() + 4) as i32).to_be_bytes());
                    out.extend(payload);
                    scram = Some(sc);
                }
                11 => {
                    let sc = scram.as_mut().unwrap();
                    sc.update(&body[4..]).unwrap();
                    out.push(b'p');
                    out.extend(((sc.message().len() + 4) as i32).to_be_bytes());
                    out.extend(sc.message());
                }
                _ => {}
            }
            s.write_all(&out).await.unwrap();
        }
        let end = tag == b'Z' || tag == b'E';
        got.push((tag, body));
        if end {
            return got;
        }
    }
}

/// One frontend message: `tag`, its length, then `parts`.
pub fn message(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = parts.concat();
    let mut m = vec![tag];
    m.extend(((body.len() + 4) as i32).to_be_bytes());
    m.extend(body);
    m
}

/// Parse, Describe and Flush of a named statement, as asyncpg prepares.
pub fn prepare_flush(name: &str, sql: &str) -> Vec<u8> {
    let n = [name.as_bytes(), b"\0"].concat();
    let mut v = message(b'P', &[&n, sql.as_bytes(), b"\0", &[0, 0]]);
    v.extend(message(b'D', &[b"S", &n]));
    v.extend(message(b'H', &[]));
    v
}

/// Parse, Bind and Execute of an unnamed statement without parameters, then Flush: the
/// statement runs, its Sync is still to come.
pub fn execute_flush(sql: &str) -> Vec<u8> {
    let mut v = message(b'P', &[b"\0", sql.as_bytes(), b"\0", &[0, 0]]);
    v.extend(message(b'B', &[b"\0\0", &[0, 0], &[0, 0], &[0, 0]]));
    v.extend(message(b'E', &[b"\0", &[0, 0, 0, 0]]));
    v.extend(message(b'H', &[]));
    v
}

/// Reads `s` to its end, which must come within `limit` (the connection closed, not left
/// hanging: else a panic naming `what`); what it read.
pub async fn read_to_close(s: &mut tokio::net::TcpStream, limit: Duration, what: &str) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    tokio::time::timeout(limit, s.read_to_end(&mut got))
        .await
        .unwrap_or_else(|_| panic!("{what} was not closed within {limit:?}"))
        .unwrap();
    got
}

/// Reads messages until one with tag `until` arrives; the messages, as (tag, body).
pub async fn read_until(s: &mut tokio::net::TcpStream, until: u8) -> Vec<(u8, Vec<u8>)> {
    read_until_within(s, until, Duration::from_secs(10)).await
}

/// `read_until`, waiting up to `limit`.
pub async fn read_until_within(
    s: &mut tokio::net::TcpStream,
    until: u8,
    limit: Duration,
) -> Vec<(u8, Vec<u8>)> {
    let mut got = Vec::new();
    let read = async {
        loop {
            let (tag, body) = read_message(s).await;
            got.push((tag, body));
            if tag == until {
                return;
            }
        }
    };
    if tokio::time::timeout(limit, read).await.is_err() {
        panic!(
            "no {:?} within {limit:?} (hung); got: {:?}",
            until as char,
            got.iter().map(|(t, _)| *t as char).collect::<String>()
        );
    }
    got
}

/// One backend message: its tag and body.
pub async fn read_message(s: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
    try_read_message(s)
        .await
        .expect("the server closed the connection")
}

/// The next backend message; None once the server has closed the connection.
pub async fn try_read_message(s: &mut tokio::net::TcpStream) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len.saturating_sub(4)];
    s.read_exact(&mut body).await.ok()?;
    Some((head[0], body))
}
