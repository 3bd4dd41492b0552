//! One connection from pgwarden to a PostgreSQL server: startup, authentication (trust, md5 or
//! SCRAM-SHA-256, as the server asks), then framed reads and writes.

use bytes::{Buf, BytesMut};
use pgwarden_core::Secret;
use pgwarden_wire::frame::{self, Frame};
use pgwarden_wire::msg;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether a stored password is an md5 hash (`md5` + 32 hex digits, pool_passwd's md5 form):
/// it answers an md5 challenge, and nothing else.
fn is_md5_hash(pw: &str) -> bool {
    pw.len() == 35 && pw.starts_with("md5") && pw[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{addr} refused the connection: {message} (SQLSTATE {code})")]
    Refused {
        addr: String,
        code: String,
        message: String,
        severity: String,
    },
    #[error(
        "{addr} asks for a password and pgwarden has none for this user: put it in the \
         password file (credentials.password_file, libpq's format) or, in plain text \
         (user:TEXTpassword), in pool_passwd"
    )]
    NoPassword { addr: String },
    #[error("{addr}: {reason}")]
    Protocol { addr: String, reason: String },
    /// The server asks for an authentication pgwarden cannot give (GSSAPI, SSPI, a SASL
    /// mechanism other than SCRAM-SHA-256), or its SCRAM exchange does not verify: this login
    /// fails, the server is up.
    #[error("{addr}: {reason}")]
    Auth { addr: String, reason: String },
    #[error("connection to {addr} lost: {reason}")]
    Lost { addr: String, reason: String },
    /// pgwarden's own query was refused (an ErrorResponse): the connection is fine.
    #[error("{addr}: `{sql}` failed: {message}")]
    Sql {
        addr: String,
        sql: String,
        message: String,
    },
}

impl BackendError {
    /// Whether this failure says the node is in trouble (worth a health check now), rather
    /// than that this one login was refused by a server that is up. A server that answers a
    /// login with an error about the login (authentication 28, no such database 3D,
    /// privileges 42, a role's or the server's connection limit 53300/53400, …) is alive;
    /// shutting down or starting up (57), a system or internal error (58, XX), a connection
    /// failure (08) or a resource exhausted (53 otherwise) are the node's.
    pub fn says_node_down(&self) -> bool {
        match self {
            BackendError::Connect { .. }
            | BackendError::Protocol { .. }
            | BackendError::Lost { .. } => true,
            BackendError::NoPassword { .. }
            | BackendError::Auth { .. }
            | BackendError::Sql { .. } => false,
            BackendError::Refused { code, .. } => match code.get(..2) {
                Some("57" | "58" | "XX" | "08") => true,
                Some("53") => code != "53300" && code != "53400",
                Some(_) => false,
                None => true,
            },
        }
    }

    fn protocol(addr: &str, reason: impl Into<String>) -> Self {
        BackendError::Protocol {
            addr: addr.to_string(),
            reason: reason.into(),
        }
    }

    fn auth(addr: &str, reason: impl Into<String>) -> Self {
        BackendError::Auth {
            addr: addr.to_string(),
            reason: reason.into(),
        }
    }
}

/// Everything needed to open a backend connection.
#[derive(Debug, Clone)]
pub struct ConnectSpec {
    pub node: u32,
    pub host: String,
    pub port: u16,
    /// user, database and the client's other startup parameters.
    pub params: Vec<(String, String)>,
    pub password: Option<Secret>,
    pub timeout: Duration,
}

/// What [`Backend::exchange`] read back.
#[derive(Debug, Default)]
pub struct Exchanged {
    /// The first column of the first row, when a row came.
    pub value: Option<String>,
    /// The first error's message, when one came.
    pub error: Option<String>,
}

pub struct Backend {
    pub node: u32,
    pub addr: String,
    pub stream: TcpStream,
    pub buf: BytesMut,
    /// ParameterStatus values, as the server reported them.
    pub params: Vec<(String, String)>,
    pub pid: i32,
    pub key: i32,
    /// Status of the last ReadyForQuery: b'I', b'T' or b'E'.
    pub tx_status: u8,
    pub created: Instant,
    pub last_used: Instant,
    /// The owning session's mask of nodes it is waiting on: this connection's bit is set
    /// while a read or write on it is pending, so that a fence can tell a session stuck on
    /// that node from one that merely holds an idle connection to it.
    pub busy: Option<Arc<AtomicU64>>,
    /// Whether transactions on this connection are SERIALIZABLE by default (a server,
    /// database or role setting), once asked (see `client::welcome`).
    pub serializable_default: Option<bool>,
}

/// A session's busy mask holds a bit per node (nodes from 62 up share bit 62), and one about
/// its client (`CLIENT_STALLED`).
pub(crate) fn node_bit(node: u32) -> u64 {
    1u64 << node.min(62)
}

/// In a busy mask: a write to the client waits for the client to read.
pub(crate) const CLIENT_STALLED: u64 = 1 << 63;

/// Sets the node's bit in a busy mask for as long as it lives (also when the I/O future is
/// dropped half way).
pub(crate) struct Busy<'a>(Option<&'a AtomicU64>, u64);

impl<'a> Busy<'a> {
    pub(crate) fn enter(mask: Option<&'a Arc<AtomicU64>>, node: u32) -> Self {
        let bit = node_bit(node);
        let mask = mask.map(|m| &**m);
        if let Some(m) = mask {
            m.fetch_or(bit, Ordering::Relaxed);
        }
        Busy(mask, bit)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if let Some(m) = self.0 {
            m.fetch_and(!self.1, Ordering::Relaxed);
        }
    }
}

const READ_CHUNK: usize = 16 * 1024;

/// The start of the statement name pgwarden parses its own statements under on a client's
/// connection (see [`Backend::run_statement`]); a random number follows, so that no name a
/// client chose is ever taken or closed by pgwarden.
pub const OWN_STATEMENT: &str = "pgwarden: own statement";

impl Backend {
    pub async fn connect(spec: &ConnectSpec) -> Result<Backend, BackendError> {
        let addr = format!("{}:{}", spec.host, spec.port);
        let stream = tokio::time::timeout(
            spec.timeout,
            TcpStream::connect((spec.host.as_str(), spec.port)),
        )
        .await
        .map_err(|_| BackendError::Connect {
            addr: addr.clone(),
            reason: format!("no answer within {} ms", spec.timeout.as_millis()),
        })?
        .map_err(|e| BackendError::Connect {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
        let _ = stream.set_nodelay(true);
        let mut b = Backend {
            node: spec.node,
            addr,
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            params: Vec::new(),
            pid: 0,
            key: 0,
            tx_status: b'I',
            created: Instant::now(),
            last_used: Instant::now(),
            busy: None,
            serializable_default: None,
        };
        tokio::time::timeout(spec.timeout, b.startup(spec))
            .await
            .map_err(|_| BackendError::Connect {
                addr: b.addr.clone(),
                reason: format!(
                    "startup did not finish within {} ms",
                    spec.timeout.as_millis()
                ),
            })??;
        Ok(b)
    }

    fn user(spec: &ConnectSpec) -> &str {
        frame::Startup::param(&spec.params, "user").unwrap_or("")
    }

    async fn startup(&mut self, spec: &ConnectSpec) -> Result<(), BackendError> {
        let mut out = BytesMut::new();
        let params: Vec<(&str, &str)> = spec
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        msg::frontend::startup(&mut out, &params);
        self.write(&out).await?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'R' => {
                    let body = f.body();
                    if body.len() < 4 {
                        return Err(BackendError::protocol(
                            &self.addr,
                            "short authentication request",
                        ));
                    }
                    let kind = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let data = &body[4..];
                    let mut reply = BytesMut::new();
                    match kind {
                        0 => continue,
                        3 => {
                            let pw = spec.password.as_ref().ok_or(BackendError::NoPassword {
                                addr: self.addr.clone(),
                            })?;
                            msg::frontend::password(&mut reply, pw.expose());
                        }
                        5 => {
                            let pw = spec.password.as_ref().ok_or(BackendError::NoPassword {
                                addr: self.addr.clone(),
                            })?;
                            let salt: [u8; 4] = data
                                .get(..4)
                                .and_then(|s| s.try_into().ok())
                                .ok_or_else(|| {
                                    BackendError::protocol(&self.addr, "short md5 salt")
                                })?;
                            let answer = if is_md5_hash(pw.expose()) {
                                pgwarden_wire::auth::md5_response(pw.expose(), salt)
                            } else {
                                postgres_protocol::authentication::md5_hash(
                                    Self::user(spec).as_bytes(),
                                    pw.expose().as_bytes(),
                                    salt,
                                )
                            };
                            msg::frontend::password(&mut reply, &answer);
                        }
                        10 => {
                            let mechs: Vec<&[u8]> =
                                data.split(|&c| c == 0).filter(|m| !m.is_empty()).collect();
                            if !mechs.contains(&&b"SCRAM-SHA-256"[..]) {
                                return Err(BackendError::auth(
                                    &self.addr,
                                    "the server offers no SASL mechanism pgwarden supports",
                                ));
                            }
                            let pw = spec.password.as_ref().ok_or(BackendError::NoPassword {
                                addr: self.addr.clone(),
                            })?;
                            if is_md5_hash(pw.expose()) {
                                // pgpool says "valid password not found"; say what to do.
                                return Err(BackendError::auth(
                                    &self.addr,
                                    "the server asks for SCRAM-SHA-256, and the only password \
                                     pgwarden has for this user is an md5 hash (pool_passwd), \
                                     which SCRAM cannot use: store the password in plain text \
                                     (user:TEXTpassword) in pool_passwd or in the password file \
                                     (credentials.password_file), or have the server's \
                                     pg_hba.conf ask pgwarden's connections for md5",
                                ));
                            }
                            let s = ScramSha256::new(
                                pw.expose().as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            msg::frontend::sasl_initial(&mut reply, "SCRAM-SHA-256", s.message());
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                BackendError::protocol(&self.addr, "SASL continue without a start")
                            })?;
                            s.update(data).map_err(|e| {
                                BackendError::auth(&self.addr, format!("SCRAM: {e}"))
                            })?;
                            msg::frontend::sasl_response(&mut reply, s.message());
                        }
                        12 => {
                            let mut s = scram.take().ok_or_else(|| {
                                BackendError::protocol(&self.addr, "SASL final without a start")
                            })?;
                            s.finish(data).map_err(|e| {
                                BackendError::auth(
                                    &self.addr,
                                    format!("SCRAM: the server's signature does not verify: {e}"),
                                )
                            })?;
                            continue;
                        }
                        k => {
                            let method = match k {
                                2 => "Kerberos V5".to_string(),
                                7 => "GSSAPI".to_string(),
                                9 => "SSPI".to_string(),
                                k => format!("an unknown method (request {k})"),
                            };
                            return Err(BackendError::auth(
                                &self.addr,
                                format!(
                                    "the server asks for {method} authentication, which \
                                     pgwarden cannot give; its pg_hba.conf must ask pgwarden's \
                                     connections for scram-sha-256, md5, password or trust"
                                ),
                            ));
                        }
                    }
                    self.write(&reply).await?;
                }
                b'S' => {
                    if let Some((k, rest)) = frame::cstr(f.body()) {
                        if let Some((v, _)) = frame::cstr(rest) {
                            self.set_param(k, v);
                        }
                    }
                }
                b'K' => {
                    let b = f.body();
                    if b.len() >= 8 {
                        self.pid = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                        self.key = i32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                    }
                }
                b'Z' => {
                    self.tx_status = f.body().first().copied().unwrap_or(b'I');
                    return Ok(());
                }
                b'E' => {
                    let fields = msg::error_fields(f.body());
                    let get = |c: u8| {
                        fields
                            .iter()
                            .find(|(k, _)| *k == c)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    return Err(BackendError::Refused {
                        addr: self.addr.clone(),
                        code: get(b'C'),
                        message: get(b'M'),
                        severity: get(b'S'),
                    });
                }
                b'N' => continue,
                t => {
                    return Err(BackendError::protocol(
                        &self.addr,
                        format!("unexpected message '{}' during startup", t as char),
                    ))
                }
            }
        }
    }

    /// How the server reads this connection's client texts (its `client_encoding` and
    /// `server_encoding`, see `pgwarden_sql::server_text`).
    pub fn text_encoding(&self) -> pgwarden_sql::TextEncoding {
        let param = |name| self.param(name).unwrap_or("UTF8");
        pgwarden_sql::TextEncoding::of(param("client_encoding"), param("server_encoding"))
    }

    /// The value the server last reported for parameter `name` (ParameterStatus).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn set_param(&mut self, k: &str, v: &str) {
        match self.params.iter_mut().find(|(name, _)| name == k) {
            Some(p) => p.1 = v.to_string(),
            None => self.params.push((k.to_string(), v.to_string())),
        }
    }

    pub async fn write(&mut self, data: &[u8]) -> Result<(), BackendError> {
        let _busy = Busy::enter(self.busy.as_ref(), self.node);
        self.stream
            .write_all(data)
            .await
            .map_err(|e| BackendError::Lost {
                addr: self.addr.clone(),
                reason: e.to_string(),
            })
    }

    /// Writes `data[*done..]` as far as the socket takes it, advancing `done`. True once all
    /// is written; false as soon as the server has something to say while the write waits
    /// for room. A server whose answers back up stops reading, so a large write must let the
    /// caller relay them (`try_fill`) before it goes on, or both sides wait forever.
    pub async fn write_some(
        &mut self,
        data: &[u8],
        done: &mut usize,
    ) -> Result<bool, BackendError> {
        let _busy = Busy::enter(self.busy.as_ref(), self.node);
        let lost = |addr: &str, reason: String| BackendError::Lost {
            addr: addr.to_string(),
            reason,
        };
        while *done < data.len() {
            match self.stream.try_write(&data[*done..]) {
                Ok(0) => return Err(lost(&self.addr, "the server takes no more bytes".into())),
                Ok(n) => *done += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let ready = self
                        .stream
                        .ready(tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE)
                        .await
                        .map_err(|e| lost(&self.addr, e.to_string()))?;
                    if ready.is_readable() || ready.is_read_closed() {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(lost(&self.addr, e.to_string())),
            }
        }
        Ok(true)
    }

    /// Reads what has arrived into `buf`, without waiting: 0 when nothing has. An error at end
    /// of stream.
    pub fn try_fill(&mut self) -> Result<usize, BackendError> {
        self.buf.reserve(READ_CHUNK);
        match crate::stream::read_drained(&self.stream, &mut self.buf) {
            Ok(0) => Err(BackendError::Lost {
                addr: self.addr.clone(),
                reason: "the server closed the connection".into(),
            }),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(BackendError::Lost {
                addr: self.addr.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// Reads more bytes into `buf`; an error at end of stream.
    pub async fn fill(&mut self) -> Result<usize, BackendError> {
        self.buf.reserve(READ_CHUNK);
        let _busy = Busy::enter(self.busy.as_ref(), self.node);
        let read = loop {
            if let Err(e) = self.stream.readable().await {
                break Err(e);
            }
            match crate::stream::read_drained(&self.stream, &mut self.buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => break other,
            }
        };
        match read {
            Ok(0) => Err(BackendError::Lost {
                addr: self.addr.clone(),
                reason: "the server closed the connection".into(),
            }),
            Ok(n) => Ok(n),
            Err(e) => Err(BackendError::Lost {
                addr: self.addr.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// One whole frame (used outside the hot path: startup, internal queries).
    pub async fn read_frame(&mut self) -> Result<Frame, BackendError> {
        loop {
            match frame::split_frame(&mut self.buf, 1 << 30) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {
                    self.fill().await?;
                }
                Err(e) => return Err(BackendError::protocol(&self.addr, e.to_string())),
            }
        }
    }

    /// Runs `sql` and returns the first column of the first row, discarding everything else
    /// but notifications (see [`Backend::exchange`]). For pgwarden's own queries on an idle
    /// connection.
    /// `sql` is in the connection's client encoding (a client's own text, replayed).
    pub async fn query_value(
        &mut self,
        sql: impl AsRef<[u8]>,
    ) -> Result<Option<String>, BackendError> {
        let mut out = BytesMut::new();
        msg::frontend::query(&mut out, sql.as_ref());
        let done = self.exchange(&out).await?;
        self.value_of(sql.as_ref(), done)
    }

    /// Like [`Backend::query_value`], for one statement of pgwarden's own on a client's
    /// connection (see [`Backend::run_statement`]).
    pub async fn statement_value(
        &mut self,
        sql: impl AsRef<[u8]>,
    ) -> Result<Option<String>, BackendError> {
        let done = self.run_statement(sql.as_ref()).await?;
        self.value_of(sql.as_ref(), done)
    }

    /// Runs one statement of pgwarden's own on an idle connection through the extended
    /// protocol, parsed under a name of its own ([`OWN_STATEMENT`] and a random number) and
    /// closed at once. Unlike a simple Query, this leaves the client's unnamed statement on
    /// the connection alone (a server keeps it until the client parses another). The server
    /// refuses a text that holds more than one command.
    pub async fn run_statement(
        &mut self,
        sql: impl AsRef<[u8]>,
    ) -> Result<Exchanged, BackendError> {
        // Not a fixed name: a client may have taken any name, and pgwarden would then fail
        // to parse its own statement and close the client's.
        let name = format!("{OWN_STATEMENT} {:016x}", rand::random::<u64>());
        let mut out = BytesMut::new();
        msg::frontend::parse(&mut out, &name, sql.as_ref(), &[]);
        msg::frontend::bind(&mut out, "", &name);
        msg::frontend::execute(&mut out, "", 0);
        msg::frontend::sync(&mut out);
        // Closed behind a Sync of its own: an error skips the rest up to the next Sync, and
        // the statement must not outlive a statement that failed (the client would see it
        // among its own).
        msg::frontend::close(&mut out, b'S', &name);
        msg::frontend::sync(&mut out);
        let done = self.exchange(&out).await?;
        self.exchange(&[]).await?;
        Ok(done)
    }

    fn value_of(&self, sql: &[u8], done: Exchanged) -> Result<Option<String>, BackendError> {
        match done {
            Exchanged {
                error: Some(message),
                ..
            } => Err(BackendError::Sql {
                addr: self.addr.clone(),
                sql: String::from_utf8_lossy(sql).into_owned(),
                message,
            }),
            Exchanged { value, .. } => Ok(value),
        }
    }

    /// Sends pgwarden's own messages `out` (ending in a Query or a Sync) on an idle connection
    /// and reads up to the ReadyForQuery: the first column of the first row, the first error's
    /// message. ParameterStatus changes are kept; notifications belong to the client (its
    /// session LISTENs on this connection), and are left at the head of `buf`, to be relayed
    /// with the connection's next answers (with any parked there before); the rest is dropped.
    pub async fn exchange(&mut self, out: &[u8]) -> Result<Exchanged, BackendError> {
        self.write(out).await?;
        let mut value = None;
        let mut error = None;
        let mut notifications = BytesMut::new();
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'A' => notifications.extend_from_slice(&f.bytes),
                b'D' if value.is_none() => {
                    let mut b = f.body();
                    if b.len() >= 6 {
                        b.advance(2);
                        let len = b.get_i32();
                        if len >= 0 && b.len() >= len as usize {
                            value = Some(String::from_utf8_lossy(&b[..len as usize]).into_owned());
                        }
                    }
                }
                b'E' if error.is_none() => {
                    let fields = msg::error_fields(f.body());
                    error = Some(
                        fields
                            .iter()
                            .find(|(k, _)| *k == b'M')
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default(),
                    );
                }
                b'S' => {
                    if let Some((k, rest)) = frame::cstr(f.body()) {
                        if let Some((v, _)) = frame::cstr(rest) {
                            self.set_param(k, v);
                        }
                    }
                }
                b'Z' => {
                    self.tx_status = f.body().first().copied().unwrap_or(b'I');
                    if !notifications.is_empty() {
                        notifications.extend_from_slice(&self.buf);
                        self.buf = notifications;
                    }
                    return Ok(Exchanged { value, error });
                }
                _ => {}
            }
        }
    }

    /// Sends a CancelRequest for this connection's running query: 5 s to connect, 5 s for
    /// the server to take it.
    pub async fn cancel(host: &str, port: u16, pid: i32, key: i32) -> CancelSent {
        let mut out = BytesMut::new();
        msg::frontend::cancel(&mut out, pid, key);
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(5), TcpStream::connect((host, port))).await
        else {
            return CancelSent::NotSent;
        };
        if s.write_all(&out).await.is_err() {
            return CancelSent::Unknown;
        }
        // The postmaster closes the connection once it has acted on the request.
        let mut sink = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut sink)).await {
            Ok(Ok(0)) => CancelSent::Taken,
            _ => CancelSent::Unknown,
        }
    }
}

/// What became of a cancel request sent to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelSent {
    /// The server read it and closed the connection: it will not act on it later.
    Taken,
    /// It never reached the server.
    NotSent,
    /// Sent, but the server did not close the connection in time (a stalled postmaster): it
    /// may still act on it, on whatever query that backend runs then.
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::BackendError;

    /// Which failures set off a health check of the node, and which are one login's.
    #[test]
    fn a_refused_login_is_not_a_node_in_trouble() {
        let refused = |code: &str| BackendError::Refused {
            addr: "n".into(),
            code: code.into(),
            message: "m".into(),
            severity: "FATAL".into(),
        };
        let s = |r: &str| r.to_string();
        for (what, e, down) in [
            (
                "cannot connect",
                BackendError::Connect {
                    addr: s("n"),
                    reason: s("refused"),
                },
                true,
            ),
            (
                "lost",
                BackendError::Lost {
                    addr: s("n"),
                    reason: s("eof"),
                },
                true,
            ),
            (
                "garbage",
                BackendError::Protocol {
                    addr: s("n"),
                    reason: s("bad tag"),
                },
                true,
            ),
            (
                "no password known",
                BackendError::NoPassword { addr: s("n") },
                false,
            ),
            (
                "pgwarden's own query refused",
                BackendError::Sql {
                    addr: s("n"),
                    sql: s("q"),
                    message: s("m"),
                },
                false,
            ),
            (
                "GSSAPI asked for",
                BackendError::Auth {
                    addr: s("n"),
                    reason: s("gss"),
                },
                false,
            ),
            ("pg_hba.conf rejects", refused("28000"), false),
            ("wrong password", refused("28P01"), false),
            ("no such database", refused("3D000"), false),
            ("no CONNECT privilege", refused("42501"), false),
            ("role's connection limit", refused("53300"), false),
            ("too many connections", refused("53400"), false),
            ("bad startup parameter", refused("22023"), false),
            ("starting up / in recovery", refused("57P03"), true),
            ("shutting down", refused("57P01"), true),
            ("out of memory", refused("53200"), true),
            ("disk full", refused("53100"), true),
            ("i/o error", refused("58030"), true),
            ("internal error", refused("XX000"), true),
            ("connection failure", refused("08006"), true),
            ("no code", refused(""), true),
        ] {
            assert_eq!(e.says_node_down(), down, "{what}");
        }
    }
}
