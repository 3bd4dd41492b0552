//! A client connection up to ReadyForQuery: the startup packet, SSL/GSSENC requests, cancel
//! requests, client authentication, and the welcome messages.

use crate::backend::{BackendError, ConnectSpec};
use crate::pool::{PoolError, Pooled};
use crate::session::Welcomed;
use crate::stream::ClientStream;
use crate::{CancelSlot, Ctx};
use bytes::BytesMut;
use pgwarden_core::config::{proxy::auth_method, AuthMethod};
use pgwarden_wire::auth::{self, Binding, ScramError, ScramServer, Secret};
use pgwarden_wire::frame::{self, Frame, ProtocolError, Startup};
use pgwarden_wire::msg::{self, ErrorFields};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a connection ends before its session starts; each becomes an ErrorResponse.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Send this FATAL and close.
    Fatal {
        code: Cow<'static, str>,
        message: String,
        detail: Option<String>,
    },
    /// Send this FATAL as protocol 2 has it (the client asked for a protocol older than 3,
    /// and could not read a newer message), and close.
    FatalV2(String),
    /// Close without a word (the client went away, or a cancel request was handled).
    Silent,
}

impl Refusal {
    fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        Refusal::Fatal {
            code: Cow::Borrowed(code),
            message: message.into(),
            detail: None,
        }
    }
}

impl From<ProtocolError> for Refusal {
    fn from(e: ProtocolError) -> Self {
        if let ProtocolError::UnsupportedVersion { major, .. } = e {
            if major < 3 {
                return Refusal::FatalV2(e.to_string());
            }
        }
        let code = match e {
            ProtocolError::UnsupportedVersion { .. } => "0A000",
            ProtocolError::TooLarge { .. } => "54000",
            ProtocolError::NoUser => "28000",
            _ => "08P01",
        };
        Refusal::fatal(code, e.to_string())
    }
}

/// What a client authenticated as.
/// A logged-in client's startup parameters (user and database among them).
pub(crate) struct Login {
    pub params: Vec<(String, String)>,
}

impl Login {
    pub fn user(&self) -> &str {
        Startup::param(&self.params, "user").unwrap_or_default()
    }

    /// The database, which defaults to the user's name as in PostgreSQL.
    pub fn database(&self) -> &str {
        Startup::param(&self.params, "database")
            .filter(|d| !d.is_empty())
            .unwrap_or(self.user())
    }
}

/// Serves one client connection from accept to close.
///
/// The session runs as a task of its own, spawned once the client is in: the login's state
/// is gone by then, and the session's task holds only what the session waits with.
pub async fn serve(ctx: Arc<Ctx>, stream: TcpStream, peer: SocketAddr) {
    if let Some(a) = admit(ctx, stream, peer).await {
        tokio::spawn(crate::session::run(
            a.ctx, a.stream, a.buf, a.login, a.slot, a.guards, a.welcomed,
        ));
    }
}

/// A client that logged in and was welcomed, with what its session needs.
struct Admitted {
    ctx: Arc<Ctx>,
    stream: ClientStream,
    buf: BytesMut,
    login: Login,
    slot: CancelSlot,
    guards: Admission,
    welcomed: Welcomed,
}

/// Counts the client, authenticates it and sends the welcome; None when it was refused or
/// left (it has been told why).
async fn admit(ctx: Arc<Ctx>, stream: TcpStream, peer: SocketAddr) -> Option<Admitted> {
    let mut stream = ClientStream::Plain(stream);
    let count = ctx.clients.fetch_add(1, Ordering::AcqRel) + 1;
    let mut guards = Admission {
        ctx: ctx.clone(),
        entered: false,
        cancel_key: None,
    };
    let mut buf = BytesMut::new();
    // A cancel request is forwarded at once, and a client over the limit refused, even while
    // an online recovery's 2nd stage holds new sessions (a client may need to cancel the
    // statement the stage waits for). Each part has `auth_timeout`; the hold's wait has none.
    let first = tokio::time::timeout(
        ctx.cfg.auth_timeout,
        startup_packet(&ctx, &mut stream, &mut buf, count),
    )
    .await;
    let params = match settle(first, peer) {
        Ok(p) => p,
        Err(refusal) => {
            refuse(&mut stream, refusal).await;
            return None;
        }
    };
    enter(&ctx).await;
    guards.entered = true;
    let login = tokio::time::timeout(
        ctx.cfg.auth_timeout,
        authenticate(&ctx, &mut stream, &mut buf, peer, params),
    )
    .await;
    let login = match settle(login, peer) {
        Ok(l) => l,
        Err(refusal) => {
            refuse(&mut stream, refusal).await;
            return None;
        }
    };
    let (pid, key) = ctx.next_backend_key();
    let slot: CancelSlot = Arc::new(Mutex::new(crate::CancelState::default()));
    ctx.cancels
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert((pid, key), slot.clone());
    guards.cancel_key = Some((pid, key));
    match welcome(&ctx, &login, pid, key).await {
        Ok((out, welcomed)) => {
            // Whatever the client sent after its login stays in `buf` for the session.
            send(&mut stream, &out).await.ok()?;
            Some(Admitted {
                ctx,
                stream,
                buf,
                login,
                slot,
                guards,
                welcomed,
            })
        }
        Err(refusal) => {
            refuse(&mut stream, refusal).await;
            None
        }
    }
}

/// What a client holds from its accept to its end, undone when dropped: its place in the
/// count of clients, in the monitor's count of sessions (once entered), and its cancel key.
struct Admission {
    ctx: Arc<Ctx>,
    entered: bool,
    cancel_key: Option<(i32, i32)>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(k) = self.cancel_key {
            self.ctx
                .cancels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&k);
        }
        if self.entered {
            self.ctx.monitor.session_ended();
        }
        self.ctx.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Writes and flushes (a TLS stream holds records until flushed).
async fn send(stream: &mut ClientStream, data: &[u8]) -> std::io::Result<()> {
    stream.write_all(data).await?;
    stream.flush().await
}

/// Tells the client why it is refused (a FATAL ErrorResponse), or nothing for a silent close.
async fn refuse(stream: &mut ClientStream, refusal: Refusal) {
    let mut out = BytesMut::new();
    match refusal {
        Refusal::Fatal {
            code,
            message,
            detail,
        } => {
            let mut e = ErrorFields::fatal(&code, &message);
            if let Some(d) = &detail {
                e = e.with_detail(d);
            }
            msg::error_response(&mut out, &e);
        }
        // As PostgreSQL answers a protocol 2 client: 'E', then the text, a newline and NUL.
        Refusal::FatalV2(message) => {
            out.extend_from_slice(format!("EFATAL:  {message}\n\0").as_bytes());
        }
        Refusal::Silent => return,
    }
    let _ = send(stream, &out).await;
}

/// A login step's outcome within `auth_timeout`: what it made, or why the client is refused.
fn settle<T>(
    r: Result<Result<T, Refusal>, tokio::time::error::Elapsed>,
    peer: SocketAddr,
) -> Result<T, Refusal> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(refusal)) => {
            // Logged as PostgreSQL logs a refused login (fail2ban and audits read it).
            if let Refusal::Fatal { code, message, .. } = &refusal {
                tracing::info!(%peer, %code, "client refused: {message}");
            }
            Err(refusal)
        }
        Err(_) => {
            // Closed without a word, as PostgreSQL does: the client is slow or gone, and a
            // write to it could wait as long again.
            tracing::debug!(%peer, "client refused: authentication timed out (proxy.auth_timeout)");
            Err(Refusal::Silent)
        }
    }
}

/// Counts the session in the monitor once no online recovery holds new sessions (its 2nd
/// stage): a held client waits here, accepted, as pgpool's wait in accept(). The session is
/// counted before the hold is looked at, and the controller sets the hold before it reads the
/// count, so no session slips past a 2nd stage unseen.
async fn enter(ctx: &Arc<Ctx>) {
    let mut hold = ctx.monitor.hold();
    loop {
        ctx.monitor.session_started();
        std::sync::atomic::fence(Ordering::SeqCst);
        if hold.borrow_and_update().is_none() {
            return;
        }
        ctx.monitor.session_ended();
        while hold.borrow_and_update().is_some() {
            if hold.changed().await.is_err() {
                break;
            }
        }
    }
}

/// Reads until `f` yields a value, with the connection's bytes in `buf`.
async fn read_more(stream: &mut ClientStream, buf: &mut BytesMut) -> Result<(), Refusal> {
    buf.reserve(1024);
    match stream.read_buf(buf).await {
        Ok(0) | Err(_) => Err(Refusal::Silent),
        Ok(_) => Ok(()),
    }
}

async fn read_frame(stream: &mut ClientStream, buf: &mut BytesMut) -> Result<Frame, Refusal> {
    loop {
        if let Some(f) = frame::split_frame(buf, frame::MAX_STARTUP_LEN)? {
            return Ok(f);
        }
        read_more(stream, buf).await?;
    }
}

/// Sends an authentication request and reads the client's answer, which must be a
/// password-type ('p') message.
async fn ask(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    request: &[u8],
    what: &str,
) -> Result<Frame, Refusal> {
    stream
        .write_all(request)
        .await
        .map_err(|_| Refusal::Silent)?;
    let f = read_frame(stream, buf).await?;
    if f.tag != b'p' {
        return Err(Refusal::fatal(
            "08P01",
            format!("expected {what}, got message type '{}'", f.tag as char),
        ));
    }
    Ok(f)
}

/// The connection's first packets: encryption asked for (TLS or not), then a startup packet
/// (its parameters) or a cancel request (forwarded: the connection ends). Over the client
/// limit (`count`), refused with 53300.
async fn startup_packet(
    ctx: &Ctx,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    count: usize,
) -> Result<Vec<(String, String)>, Refusal> {
    // One encryption request of each kind, as PostgreSQL: after TLS is set up, neither; a
    // request made again is read as an unknown protocol version (1234.5679 or 1234.5680).
    let (mut ssl_done, mut gss_done) = (false, false);
    let auth = ctx.auth();
    let startup = loop {
        match frame::split_startup(buf)? {
            None => read_more(stream, buf).await?,
            Some(Startup::Ssl) if ssl_done => return Err(again(frame::SSL_REQUEST)),
            Some(Startup::GssEnc) if gss_done => return Err(again(frame::GSSENC_REQUEST)),
            Some(Startup::Ssl) if auth.tls.is_some() => {
                send(stream, b"S").await.map_err(|_| Refusal::Silent)?;
                // Refused once TLS is up, as PostgreSQL does: the client reads the refusal
                // where it expects the server's next words.
                let injected = unencrypted_after(buf, "SSL request");
                buf.clear();
                let ClientStream::Plain(tcp) = std::mem::replace(stream, ClientStream::Closed)
                else {
                    return Err(Refusal::Silent);
                };
                let acceptor = auth.tls.as_ref().ok_or(Refusal::Silent)?.acceptor.clone();
                match acceptor.accept(tcp).await {
                    Ok(tls) => *stream = ClientStream::Tls(Box::new(tls)),
                    Err(e) => {
                        tracing::debug!("TLS handshake failed: {e}");
                        return Err(Refusal::Silent);
                    }
                }
                injected?;
                (ssl_done, gss_done) = (true, true);
            }
            Some(Startup::Ssl) => {
                // No TLS configured: the client goes on unencrypted, or gives up.
                send(stream, b"N").await.map_err(|_| Refusal::Silent)?;
                unencrypted_after(buf, "SSL request")?;
                ssl_done = true;
            }
            Some(Startup::GssEnc) => {
                send(stream, b"N").await.map_err(|_| Refusal::Silent)?;
                unencrypted_after(buf, "GSSAPI encryption request")?;
                gss_done = true;
            }
            Some(Startup::Cancel { pid, key }) => {
                cancel(ctx, pid, key).await;
                return Err(Refusal::Silent);
            }
            Some(s @ Startup::Startup { .. }) => break s,
        }
    };
    let negotiate = startup.needs_negotiation();
    let Startup::Startup {
        params,
        protocol_options,
        ..
    } = startup
    else {
        return Err(Refusal::Silent);
    };
    if negotiate {
        // Protocol 3.0 is what the client gets (libpq 18 asking for 3.2 goes on with it);
        // an option it cannot do without makes it give up.
        let mut out = BytesMut::new();
        msg::negotiate_protocol_version(&mut out, frame::PROTOCOL_3_0, &protocol_options);
        send(stream, &out).await.map_err(|_| Refusal::Silent)?;
    }
    Startup::user(&params)?;
    if count > ctx.cfg.max_client_connections {
        return Err(Refusal::fatal(
            "53300",
            format!(
                "sorry, too many clients already (proxy.max_client_connections = {})",
                ctx.cfg.max_client_connections
            ),
        ));
    }
    Ok(params)
}

/// Bytes that came with an encryption request, before its answer: whatever the answer, they
/// were sent unencrypted, and may have been injected by anyone on the path. PostgreSQL
/// refuses them, after its answer, with this message.
fn unencrypted_after(buf: &BytesMut, request: &str) -> Result<(), Refusal> {
    if buf.is_empty() {
        return Ok(());
    }
    Err(Refusal::Fatal {
        code: Cow::Borrowed("08P01"),
        message: format!("received unencrypted data after {request}"),
        detail: Some(
            "This could be either a client-software bug or evidence of an attempted \
             man-in-the-middle attack."
                .into(),
        ),
    })
}

/// An encryption request made a second time (`code`), refused as PostgreSQL refuses it.
fn again(code: u32) -> Refusal {
    ProtocolError::UnsupportedVersion {
        major: (code >> 16) as u16,
        minor: (code & 0xffff) as u16,
    }
    .into()
}

/// Authenticates the client whose startup packet said `params`, by the hba rules.
async fn authenticate(
    ctx: &Ctx,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    peer: SocketAddr,
    params: Vec<(String, String)>,
) -> Result<Login, Refusal> {
    let user = Startup::param(&params, "user")
        .unwrap_or_default()
        .to_string();
    let database = Startup::param(&params, "database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_string();
    if Startup::param(&params, "replication").is_some_and(|r| !is_false(r)) {
        return Err(Refusal::fatal("0A000", "replication connections are not supported through pgwarden; connect to the primary directly"));
    }
    let tls = matches!(stream, ClientStream::Tls(_));
    let auth = ctx.auth();
    let method = auth_method(&auth.hba, &database, &user, peer.ip(), tls).ok_or_else(|| {
        Refusal::fatal(
            "28000",
            format!(
                "no pgwarden hba entry for host \"{}\", user \"{user}\", database \"{database}\", {}",
                peer.ip(),
                if tls { "SSL encryption" } else { "no encryption" }
            ),
        )
    })?;
    let secret = ctx.client_secret(&user, &database).await;
    let failed = || {
        Refusal::fatal(
            "28P01",
            format!("password authentication failed for user \"{user}\""),
        )
    };
    match method {
        AuthMethod::Trust => {}
        AuthMethod::Reject => {
            return Err(Refusal::fatal("28000", format!("pgwarden hba rejects connection for host \"{}\", user \"{user}\", database \"{database}\", {}", peer.ip(), if tls { "SSL encryption" } else { "no encryption" })));
        }
        // md5 for a user whose secret serves it, and for an unknown user when most secrets do
        // (else an md5 challenge would tell that the user does not exist).
        AuthMethod::Md5
            if secret
                .as_ref()
                .map_or(auth.unknown_md5, |s| s.md5_hash(&user).is_some()) =>
        {
            let salt: [u8; 4] = rand::random();
            let mut out = BytesMut::new();
            msg::auth_md5(&mut out, salt);
            let f = ask(stream, buf, &out, "a password response").await?;
            let answer = msg::password(f.body())?;
            let stored = secret.as_ref().and_then(|s| s.md5_hash(&user));
            if !auth::md5_check(stored.as_deref(), salt, answer) {
                return Err(failed());
            }
        }
        // SCRAM, or md5 for a user whose secret only serves SCRAM (as PostgreSQL does).
        AuthMethod::Md5 | AuthMethod::ScramSha256 => {
            scram(ctx, stream, buf, &user, secret.as_ref())
                .await
                .map_err(|e| match e {
                    ScramOutcome::Failed => failed(),
                    ScramOutcome::Refused(r) => r,
                })?
        }
    }
    Ok(Login { params })
}

const SCRAM: &str = "SCRAM-SHA-256";
const SCRAM_PLUS: &str = "SCRAM-SHA-256-PLUS";

enum ScramOutcome {
    Failed,
    Refused(Refusal),
}

impl From<Refusal> for ScramOutcome {
    fn from(r: Refusal) -> Self {
        ScramOutcome::Refused(r)
    }
}

async fn scram(
    ctx: &Ctx,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    user: &str,
    secret: Option<&Secret>,
) -> Result<(), ScramOutcome> {
    // Over TLS, SCRAM-SHA-256-PLUS first, as PostgreSQL lists them: a client that can bind
    // the login to this TLS connection (libpq's channel_binding) does.
    // (The certificate read at the last reload: one reloaded between this connection's
    // handshake and here would fail its binding check, once.)
    let auth = ctx.auth();
    let end_point = match (&*stream, &auth.tls) {
        (ClientStream::Tls(_), Some(tls)) => tls.end_point.as_deref(),
        _ => None,
    };
    let mut out = BytesMut::new();
    if end_point.is_some() {
        msg::auth_sasl(&mut out, &[SCRAM_PLUS, SCRAM]);
    } else {
        msg::auth_sasl(&mut out, &[SCRAM]);
    }
    let f = ask(stream, buf, &out, "a SASL response").await?;
    let (mech, first) = msg::sasl_initial(f.body()).map_err(Refusal::from)?;
    let binding = match (mech, end_point) {
        (SCRAM, None) => Binding::NotOffered,
        (SCRAM, Some(_)) => Binding::Declined,
        (SCRAM_PLUS, Some(data)) => Binding::Chosen(data),
        _ => {
            return Err(Refusal::fatal(
                "28000",
                format!("client selected an invalid SASL authentication mechanism: {mech}"),
            )
            .into())
        }
    };
    let protocol = |e: ScramError| match e {
        ScramError::WrongPassword => ScramOutcome::Failed,
        // (PostgreSQL: invalid authorization specification, for both.)
        ScramError::BindingCheckFailed | ScramError::BindingNegotiation => {
            Refusal::fatal("28000", e.to_string()).into()
        }
        ScramError::AuthorizationIdentity => Refusal::fatal("0A000", e.to_string()).into(),
        ScramError::Malformed(why) => {
            Refusal::fatal("08P01", format!("malformed SCRAM message: {why}")).into()
        }
        ScramError::UnsupportedBindingType(_) => Refusal::fatal("08P01", e.to_string()).into(),
    };
    let (server, server_first) = ScramServer::start(
        secret.and_then(Secret::scram),
        user,
        &ctx.mock_key,
        first,
        binding,
    )
    .map_err(protocol)?;
    out.clear();
    msg::auth_sasl_continue(&mut out, server_first.as_bytes());
    let f = ask(stream, buf, &out, "a SASL response").await?;
    let server_final = server.finish(f.body()).map_err(protocol)?;
    out.clear();
    msg::auth_sasl_final(&mut out, server_final.as_bytes());
    send(stream, &out).await.map_err(|_| Refusal::Silent)?;
    Ok(())
}

/// How a backend connection for this client is opened.
pub(crate) fn connect_spec(
    ctx: &Ctx,
    login: &Login,
    node: u32,
    host: &str,
    port: u16,
) -> ConnectSpec {
    ConnectSpec {
        node,
        host: host.to_string(),
        port,
        params: login.params.clone(),
        password: ctx.backend_password(host, port, login.database(), login.user()),
        timeout: Duration::from_secs(10),
    }
}

/// AuthenticationOk, the server's ParameterStatus values, BackendKeyData and ReadyForQuery.
/// The values come from a pooled connection to the primary (or, without a primary, any usable
/// node) opened with the client's own startup parameters; that connection goes back to the
/// pool, so an idle client holds no backend connection.
/// The welcome messages, and what the session needs to know of the server (`Welcomed`).
async fn welcome(
    ctx: &Ctx,
    login: &Login,
    pid: i32,
    key: i32,
) -> Result<(BytesMut, Welcomed), Refusal> {
    let table = ctx.routes.borrow().clone();
    let node = table
        .primary
        .or_else(|| table.nodes.iter().find(|n| n.usable).map(|n| n.id))
        .and_then(|id| table.node(id))
        .ok_or_else(|| {
            Refusal::fatal(
                "08006",
                "no PostgreSQL node is available (pgwarden node list shows why)",
            )
        })?;
    let spec = connect_spec(ctx, login, node.id, &node.host, node.port);
    let primary = table.primary == Some(node.id);
    // A pooled connection that dies between the pool's look at it and the welcome's question
    // costs the client nothing: once, another connection is taken.
    let mut retried = false;
    let pooled = loop {
        let mut pooled = ctx.pools.get(&spec).await.map_err(|e| match e {
            PoolError::Full { .. } => Refusal::fatal("53300", e.to_string()),
            PoolError::Backend(BackendError::Refused {
                code,
                message,
                severity,
                ..
            }) if severity == "FATAL" || severity == "ERROR" => Refusal::Fatal {
                code: login_code(code),
                message,
                detail: None,
            },
            PoolError::Backend(
                e @ (BackendError::Auth { .. } | BackendError::NoPassword { .. }),
            ) => Refusal::fatal("28000", e.to_string()),
            PoolError::Backend(e) => Refusal::fatal("08006", e.to_string()),
        })?;
        match ready_to_welcome(&mut pooled, node.id, primary, spec.timeout).await? {
            Ok(()) => break pooled,
            Err(BackendError::Lost { .. }) if !retried => retried = true,
            Err(e) => return Err(Refusal::fatal("08006", e.to_string())),
        }
    };
    let welcomed = Welcomed {
        serializable_default: pooled.backend.serializable_default == Some(true),
        enc: pooled.backend.text_encoding(),
        pid,
    };
    let mut out = BytesMut::new();
    msg::auth_ok(&mut out);
    for (k, v) in &pooled.backend.params {
        msg::parameter_status(&mut out, k, v);
    }
    msg::backend_key_data(&mut out, pid, key);
    msg::ready_for_query(&mut out, b'I');
    ctx.pools.put(pooled);
    Ok((out, welcomed))
}

/// Readies a welcome's connection: brings in a promotion's `in_hot_standby = off`, and asks
/// the SERIALIZABLE default. The outer error refuses the login (the node did not answer in
/// time); the inner one is the connection's.
async fn ready_to_welcome(
    pooled: &mut Pooled,
    node: u32,
    primary: bool,
    timeout: Duration,
) -> Result<Result<(), BackendError>, Refusal> {
    // A connection a welcome took from a standby (no primary then) says `in_hot_standby = on`
    // after that standby is promoted: the server reports the change only when it next
    // answers, and a welcome's connection goes back to the pool without a query. Welcomed
    // with it, libpq's `target_session_attrs=read-write` would refuse pgwarden as read-only.
    // A Sync has the server answer, and the change come in. (Only on the primary: a standby
    // welcomes because there is none, and says `on` rightly.)
    if primary && pooled.backend.param("in_hot_standby") == Some("on") {
        let mut sync = BytesMut::new();
        msg::frontend::sync(&mut sync);
        if let Err(e) = within(node, timeout, pooled.backend.exchange(&sync)).await? {
            return Ok(Err(e));
        }
    }
    if pooled.backend.serializable_default.is_none() {
        // A server, database or role default (`ALTER DATABASE … SET
        // default_transaction_isolation`) is in no startup packet: asked once per connection.
        // A hot standby refuses SERIALIZABLE transactions, so such a session reads on the
        // primary (see `session::run`).
        // Bounded as the connection was (a node that hangs now must not hold the login; the
        // connection is closed, not pooled).
        let asked = within(
            node,
            timeout,
            pooled
                .backend
                .query_value("SELECT pg_catalog.current_setting('default_transaction_isolation')"),
        )
        .await?;
        pooled.backend.serializable_default = match asked {
            Ok(v) => Some(v.as_deref() == Some("serializable")),
            Err(BackendError::Sql { .. }) => Some(false),
            Err(e) => return Ok(Err(e)),
        };
    }
    Ok(Ok(()))
}

/// `answer` from node `node` within `timeout` (a node that hangs must not hold the login; the
/// connection is then closed, not pooled), else the login's refusal.
async fn within<T>(
    node: u32,
    timeout: Duration,
    answer: impl std::future::Future<Output = T>,
) -> Result<T, Refusal> {
    tokio::time::timeout(timeout, answer).await.map_err(|_| {
        Refusal::fatal(
            "08006",
            format!("PostgreSQL node {node} did not answer within {timeout:?}"),
        )
    })
}

/// A backend's SQLSTATE for refusing a login, passed on as it came (42704 for a startup
/// parameter the server does not know, 3D000 for a database that does not exist …); one that
/// is no SQLSTATE becomes 08006.
fn login_code(code: String) -> Cow<'static, str> {
    if code.len() == 5
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        Cow::Owned(code)
    } else {
        Cow::Borrowed("08006")
    }
}

async fn cancel(ctx: &Ctx, pid: i32, key: i32) {
    let slot = ctx
        .cancels
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(pid, key))
        .cloned();
    let Some(slot) = slot else { return };
    // Counted as on its way under the lock that reads the target, so that a session ending
    // meanwhile sees it (see `Session::release`), until the server has taken it.
    let target = {
        let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
        let t = s.target.clone();
        if t.is_some() {
            s.forwarding += 1;
        }
        t
    };
    if let Some(t) = target {
        // A task of its own: the login's `auth_timeout` must not cut the forward short (the
        // count would drop while the request may still reach the server).
        let on_its_way = Forwarding(slot);
        let forward = tokio::spawn(async move {
            let sent = crate::backend::Backend::cancel(&t.host, t.port, t.pid, t.key).await;
            if sent == crate::backend::CancelSent::Unknown {
                tracing::warn!(
                    "a cancel request to {}:{} was not taken within 5 s; the session's server connections will be closed, not pooled",
                    t.host, t.port
                );
                let mut s = on_its_way.0.lock().unwrap_or_else(|p| p.into_inner());
                s.uncertain = true;
            }
            drop(on_its_way);
        });
        // The client's cancel connection ends once the server has acted on the request (or
        // the forward gave up), as PostgreSQL's does: libpq's PQcancel and asyncpg wait for
        // that end before their next query, which a cancel still on its way would hit
        // (asyncpg's suite, `test_timeout_05`: its next `SELECT 1` was cancelled).
        let _ = forward.await;
    }
}

/// A cancel request on its way (see `cancel`), uncounted when it is done, or dropped.
struct Forwarding(CancelSlot);

impl Drop for Forwarding {
    fn drop(&mut self) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.forwarding = s.forwarding.saturating_sub(1);
    }
}

/// Whether a startup parameter's value is a boolean false as PostgreSQL reads one
/// (`parse_bool`: any case, a prefix of "false" or "no", "off" or "of", "0").
fn is_false(v: &str) -> bool {
    let v = v.trim().to_ascii_lowercase();
    !v.is_empty()
        && ("false".starts_with(&v)
            || "no".starts_with(&v)
            || (v.len() >= 2 && "off".starts_with(&v))
            || v == "0")
}

#[cfg(test)]
mod tests {
    use super::is_false;

    #[test]
    fn replication_off_as_postgresql_reads_it() {
        for v in ["false", "FALSE", "f", "no", "N", "off", "OFF", "of", "0"] {
            assert!(is_false(v), "{v}");
        }
        for v in ["true", "on", "1", "database", "yes", "", "o", "2"] {
            assert!(!is_false(v), "{v}");
        }
    }
}
