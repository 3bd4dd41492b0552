//! One client session after authentication.
//!
//! Client messages are read into a buffer and cut into frames. A simple Query is one unit;
//! extended-protocol messages are gathered until Sync or Flush and routed as one batch. Each
//! unit is classified, given a target node, and written to that node's connection; the node's
//! answers are streamed back to the client as they arrive (large rows are never held whole),
//! while ReadyForQuery, CopyInResponse, ParameterStatus and errors are noticed on the way.
//!
//! Units may be pipelined to one node; before a unit goes to another node, the answers of the
//! previous node are drained, so the client sees answers in the order it asked.
//!
//! Rules (see also `pgwarden_sql` and `pgwarden_core::route`):
//! * a transaction runs on one node: the primary, or for `BEGIN READ ONLY` the session's
//!   load-balance node;
//! * reads outside a transaction go to the load-balance node when it qualifies (healthy, within
//!   `delay_threshold`, and replayed up to the primary's WAL position taken after this
//!   session's last write), else to the primary;
//! * session settings are applied on every node the session uses; LISTEN, SQL PREPARE and
//!   temporary tables pin the rest of the session to the primary;
//! * a named prepared statement is parsed again on a node that lacks it before it is used there.

use crate::backend::{Backend, BackendError, Busy, CLIENT_STALLED};
use crate::client::{connect_spec, Login};
use crate::pool::{PoolError, Pooled};
use crate::settings::Settings;
use crate::stream::{ClientReader, ClientStream, ClientWriter};
use crate::{Bell, CancelSlot, CancelTarget, Ctx, NodeStats, Wakeup};
use bytes::{Bytes, BytesMut};
use pgwarden_core::config::LoadBalance;
use pgwarden_core::route::RouteTable;
use pgwarden_core::Lsn;
use pgwarden_monitor::Engagement;
use pgwarden_sql::{classify, Class, CursorUse};
use pgwarden_wire::frame::{self, Frame, ProtocolError};
use pgwarden_wire::msg::{self, ErrorFields};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What `handle_frames` did.
enum Handled {
    /// No complete message yet.
    Nothing,
    Some,
    /// The client sent Terminate.
    Goodbye,
}

/// How a session ends.
#[derive(Debug)]
enum End {
    /// The client left (Terminate or closed socket).
    ClientGone,
    /// The server's own FATAL reached the client before it closed the connection: close
    /// without another (a client keeps the last error it reads, and the server's says why).
    Told,
    /// Tell the client this FATAL error, then close.
    Fatal(String, String),
    /// The client's message of `len` bytes is over `proxy.max_message_size`, `rest` of it yet
    /// to come: read and dropped before the FATAL is told (see `Session::skip_oversized`).
    Oversized { len: usize, rest: usize },
}

type Result<T> = std::result::Result<T, End>;

fn fatal(code: &str, message: impl Into<String>) -> End {
    End::Fatal(code.to_string(), message.into())
}

/// Node `node` refused `refused`, a setting the session has (see `Session::catch_up`).
#[cold]
fn setting_refused(node: u32, refused: &str) -> End {
    tracing::warn!(
        node,
        "a node refused one of a session's settings: {refused}"
    );
    fatal(
        "08006",
        format!(
            "PostgreSQL node {node} refused a setting this session made earlier, {refused}; \
             the session ends rather than go on without it"
        ),
    )
}

impl From<ProtocolError> for End {
    fn from(e: ProtocolError) -> Self {
        match e {
            ProtocolError::TooLarge { .. } => {
                fatal("54000", format!("{e} (proxy.max_message_size)"))
            }
            _ => fatal("08P01", e.to_string()),
        }
    }
}

/// A bound backend connection and how far the session's settings have been applied to it.
struct Conn {
    pooled: Pooled,
    /// Bytes remaining of a large backend frame being streamed through.
    streaming: usize,
    /// The last of the session's settings this connection has had (see `settings::Settings`).
    applied: u64,
    /// Bound as the primary's: if that node is fenced, the session cannot go on.
    primary: bool,
    /// A unit is being written to it (`write_unit`): a session that ends meanwhile leaves part
    /// of a message there, and the connection is closed, not reset and pooled (the reset
    /// would be read as the rest of that message).
    writing: bool,
    /// A read sent alone outside a transaction, as sent (a Query, or a batch with one Sync),
    /// while nothing of its answer has reached the client: should a standby refuse it as a
    /// write (`refused_on_standby`: a view whose function writes), it runs again on the
    /// primary instead (`Session::run_refused_on_primary`). Here, not in the session: an idle
    /// session's task stays within 1,024 bytes.
    refusable: Option<Bytes>,
    /// The node's refusal of that read, its ReadyForQuery not in yet. (Here, it goes with the
    /// connection should the node be lost meanwhile.)
    withheld: Option<Box<Withheld>>,
    /// The server sent a FATAL error here, which was relayed: it closes the connection next
    /// (`Session::lost` then adds no error of pgwarden's).
    said_fatal: bool,
}

impl Conn {
    fn b(&mut self) -> &mut Backend {
        &mut self.pooled.backend
    }
}

/// Where a session's last write stands, for read-your-writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrote {
    /// Nothing written since `min_lsn` was set.
    No,
    /// A write is on its way, or in a transaction still open.
    Pending,
    /// The last write was done (its ReadyForQuery had arrived) by this instant.
    At(Instant),
}

/// A named prepared statement, as the client sees it.
struct Statement {
    parse: Bytes,
    class: Class,
    nodes: Vec<u32>,
    /// What running it does to the session's settings, told once at its Parse.
    effect: SettingEffect,
}

/// A named statement the client closed in a batch, kept until the batch's answers tell
/// whether the server ran the Close (see `Session::settle_closes`).
struct Closed {
    name: String,
    statement: Statement,
    /// Its Close's part of the batch (between Syncs), and place among that part's Closes.
    part: usize,
    place: usize,
}

/// What a statement does to the session's settings when it runs (see `setting_effect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SettingEffect {
    None,
    /// A `SET` / `RESET`, replayed on the session's other connections as said.
    Replayed,
    /// A `set_config` call that may last beyond its transaction: its value is read back once
    /// it has run (it is often a parameter).
    ReadBack,
    /// Code of the database's own (`Verdict::runs_user_code`), perhaps with `set_config`
    /// calls too: every setting is read back before another node is used.
    UserCode,
}

/// Session state few sessions have (`Session::rare`).
#[derive(Default)]
struct Rare {
    /// `SHOW POOL_…` prepared with the extended protocol: pgwarden's to answer.
    own: crate::show::Own,
    /// The unnamed statement's text, when it changes settings (see `SettingEffect`): a Bind
    /// of it in a later batch (libpq's `PQprepare(conn, "", …)`, Go's lib/pq) reads them back
    /// as one in the batch of its Parse does.
    unnamed_effect: Option<(Vec<u8>, SettingEffect)>,
    /// The session changed a database's or role's default settings: once its transaction is
    /// over, pooled connections (which keep the defaults they began with) are not reused.
    renew_pool: bool,
}

/// See `Session::refusal_step`.
enum RefusalStep {
    /// Held back until the refusal's ReadyForQuery.
    Hold,
    /// The answer is all in: run the read again on the primary.
    Retry {
        unit: Bytes,
        why: String,
        learn: bool,
    },
    /// Relay these bytes (what was held back, then what came).
    Relay(BytesMut),
}

/// What came of a standby's answer to a read it refused as a write, held back from the client
/// until its ReadyForQuery says whether the read can run again elsewhere (`Session::forward`).
struct Withheld {
    answer: BytesMut,
    /// The refusal's message.
    why: String,
    /// A refusal as a write (25006), whose text is remembered (see `Refused`).
    learn: bool,
    /// `Session::error_seen` before the refusal.
    error_seen: bool,
}

fn setting_effect(sql: &str) -> SettingEffect {
    if is_setting(sql) {
        SettingEffect::Replayed
    } else if pgwarden_sql::calls_set_config(sql)
        && pgwarden_sql::setting_names(sql).is_none_or(|names| !names.is_empty())
    {
        SettingEffect::ReadBack
    } else {
        SettingEffect::None
    }
}

struct Session {
    ctx: Arc<Ctx>,
    client: ClientWriter,
    login: Login,
    conns: rustc_hash::FxHashMap<u32, Conn>,
    /// Node the open transaction runs on.
    tx_node: Option<u32>,
    /// The node answering the units in flight, and how many ReadyForQuery are still due.
    inflight: Option<(u32, u32)>,
    /// After a Flush, the node holding the unfinished batch's portals until the next Sync.
    open_until_sync: Option<u32>,
    copy_in: Option<u32>,
    /// Pinned to the primary (LISTEN, SQL PREPARE, temporary tables).
    sticky: bool,
    /// The text of a transaction's BEGIN, sent as a Query of its own to a standby, while
    /// nothing else has run in that transaction (see `move_transaction_to_primary`).
    fresh_begin: Option<Box<[u8]>>,
    /// The session may have left state in a server process that `DISCARD ALL` keeps
    /// (`pgwarden_sql::leaves_process_state`): its connections are closed at its end, not
    /// pooled.
    process_state: bool,
    /// How the server reads the client's texts (its `client_encoding`, as the server last
    /// reported it): pgwarden reads them so too (`pgwarden_sql::server_text`).
    enc: pgwarden_sql::TextEncoding,
    /// The process id the client was told at login: a notification the session's own
    /// backend sends carries it, as one server's would (`told_pids`).
    pid: i32,
    /// The client's pipeline failed on a node pgwarden has since left (see `end_open_batch`):
    /// its messages are dropped until its Sync, as a server drops them after an error.
    discard_until_sync: bool,
    /// An error came back for the open part of the pipeline (after its earlier Syncs' answers).
    open_failed: bool,
    /// How many answers the open part's node still owes (`answers_owed`): at 0 it waits for
    /// the client alone, who may never send its Sync (an online recovery's idle limit, see
    /// `serve`).
    open_owed: u32,
    /// An error was relayed since this was last cleared (a setting's outcome, see
    /// `settings::Settings::settle`).
    error_seen: bool,
    /// Settings to apply on every connection, in order.
    settings: Settings,
    /// Where the session's last write stands, for read-your-writes.
    wrote: Wrote,
    /// How far a standby must have replayed to serve this session's reads (0/0: no floor).
    /// Not an Option, nor is `cancel_for`: the session task stays within 1,024 bytes.
    min_lsn: Lsn,
    /// The session's load-balance node (session-level balancing; see
    /// `RouteTable::session_lb`), and the session's own draw, which chooses it and where its
    /// reads go while it is avoided.
    lb_node: Option<u32>,
    lb_r: f64,
    statements: HashMap<String, Statement>,
    unnamed_node: Option<u32>,
    /// A read is in flight that may run again elsewhere: its bytes are in its node's
    /// `Conn::refusable`.
    refusable: bool,
    /// A node's refusal of that read is held back (`Conn::withheld`).
    holding: bool,
    /// A refused read is being run again on the primary: what it parses or binds is a write.
    retrying: bool,
    /// The pipeline's open part has bound or executed something (a Bind, an Execute, a long
    /// pipeline's part): a read that ends it cannot run again elsewhere (see `refusable`).
    /// Until then (asyncpg's Parse, Describe, Flush) it made only statements, which are made
    /// again.
    open_ran: bool,
    /// What few sessions need (boxed: an idle session's task stays small).
    rare: Option<Box<Rare>>,
    batch: BytesMut,
    batch_frames: Vec<Frame>,
    cancel: CancelSlot,
    /// The backend (pid, key) the cancel slot points at.
    /// (0, 0) before the first: no server process has pid 0.
    cancel_for: (i32, i32),
    last_tx_status: u8,
    /// A write to the client was cut short (the session ended under it): what the client has
    /// may end mid-message, so no FATAL can follow it.
    client_cut: bool,
    /// The node whose message the client's stream ends inside (a row relayed as its bytes
    /// arrive): the rest of it (`Conn::streaming`) must reach the client before anything else
    /// can, a FATAL included, or the client would read that as the rest of its row. Set by
    /// every relay (`send_client_for`).
    client_owed: Option<u32>,
    /// Reused for each forward, so the hot path does not allocate.
    events: Vec<(u8, Bytes)>,
    /// While a batch that closes named statements is answered: how many CloseComplete came
    /// in each of its parts (one entry per part, a new one at each ReadyForQuery), which tells
    /// which of its Closes the server ran (see `settle_closes`). Boxed: 8 bytes where a Vec
    /// takes 24, and the session task stays within 1,024 bytes.
    #[allow(clippy::box_collection)]
    close_answers: Option<Box<Vec<u32>>>,
    /// The node this session has a unit of work on (see `route`).
    engaged: Option<u32>,
    /// The nodes this session is blocked reading from or writing to, one bit per node id (ids
    /// from 63 up share bit 63); set by the backend connections themselves, readable while a
    /// message is being handled.
    busy: Arc<AtomicU64>,
    /// Rung when a node is fenced or an online recovery holds sessions.
    wake: Wakeup,
    /// The routing table and the fenced set.
    routes: Latest<Arc<RouteTable>>,
    fenced: Latest<Arc<Vec<u32>>>,
    /// Per node: its statement counters and its engagement count, looked up once.
    nodes: Vec<NodeRefs>,
}

/// A watch's value as last seen, refreshed only when the watch's version moved (an atomic
/// load; reading the watch itself takes its shared read lock, which every session contends for).
struct Latest<T> {
    rx: watch::Receiver<T>,
    value: T,
}

impl<T: Clone> Latest<T> {
    fn new(rx: &watch::Receiver<T>) -> Self {
        let mut rx = rx.clone();
        let value = rx.borrow_and_update().clone();
        Latest { rx, value }
    }

    fn get(&mut self) -> &T {
        if self.rx.has_changed().unwrap_or(false) {
            self.value = self.rx.borrow_and_update().clone();
        }
        &self.value
    }
}

/// An engagement on a node for pgwarden's own work there (see `Session::engage_aside`).
struct Aside(Option<Engagement>);

impl Drop for Aside {
    fn drop(&mut self) {
        if let Some(e) = &self.0 {
            e.disengage();
        }
    }
}

struct NodeRefs {
    id: u32,
    stats: Arc<NodeStats>,
    engagement: Option<Engagement>,
    /// When the node refused this session's login (its pg_hba.conf, no CONNECT privilege, no
    /// password known, an authentication pgwarden cannot give, …): it is up, but serves none
    /// of this session's reads for `REFUSAL_MEMORY` (each would try again), after which one
    /// more login is tried (the refusal may have been fixed, or have come from replay lag).
    refused_at: Option<Instant>,
    /// When the node had no connection for this session (the pool's limit reached and none
    /// came free in `pool_wait_timeout`, or the server's own limit): its reads go elsewhere
    /// for as long, rather than wait as long again for each.
    full_at: Option<Instant>,
}

/// How long a standby that refused a session's login serves none of its reads.
const REFUSAL_MEMORY: Duration = Duration::from_secs(10);

/// Whether `node` refused the session's login lately (see `NodeRefs::refused_at`), or had no
/// connection for it within the last `full_memory` (`NodeRefs::full_at`).
fn turned_away(nodes: &[NodeRefs], node: u32, full_memory: Duration) -> bool {
    nodes.iter().any(|r| {
        r.id == node
            && (r.refused_at.is_some_and(|at| at.elapsed() < REFUSAL_MEMORY)
                || r.full_at.is_some_and(|at| at.elapsed() < full_memory))
    })
}

/// Whether a session's reads avoid `node` now: it refused the session's login or had no
/// connection for it lately (`turned_away`), a session found it dead (suspected until a health
/// check finds it well), or it is out of service (`fenced`, read before the route table says
/// so).
fn avoided(nodes: &[NodeRefs], ctx: &Ctx, table: &RouteTable, fenced: &[u32], node: u32) -> bool {
    turned_away(nodes, node, ctx.cfg.pool_wait_timeout)
        || ctx.suspected(node, table)
        || fenced.contains(&node)
}

/// What a session's login learnt of the server where it was welcomed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Welcomed {
    /// Transactions are SERIALIZABLE by default there (the server's, database's or role's
    /// `default_transaction_isolation`).
    pub(crate) serializable_default: bool,
    /// How the server reads the client's texts (its `client_encoding` and `server_encoding`).
    pub(crate) enc: pgwarden_sql::TextEncoding,
    /// The process id the client was told (its BackendKeyData).
    pub(crate) pid: i32,
}

/// The session's future. Built without an async prologue, so that the future holds the
/// session once (an async fn would also keep its moved-from arguments). `guards` live as long
/// as the session (the client's counts, its cancel key).
pub(crate) fn run(
    ctx: Arc<Ctx>,
    stream: ClientStream,
    buf: BytesMut,
    login: Login,
    cancel: CancelSlot,
    guards: impl Send + 'static,
    welcomed: Welcomed,
) -> impl Future<Output = ()> + Send {
    let (mut reader, writer) = stream.split();
    let mut buf = buf;
    let mut s = Session {
        routes: Latest::new(&ctx.routes),
        fenced: Latest::new(&ctx.fenced),
        wake: Wakeup::new(&ctx),
        ctx,
        client: writer,
        login,
        conns: rustc_hash::FxHashMap::default(),
        tx_node: None,
        inflight: None,
        open_until_sync: None,
        discard_until_sync: false,
        open_failed: false,
        open_owed: 0,
        error_seen: false,
        copy_in: None,
        sticky: false,
        fresh_begin: None,
        process_state: false,
        enc: welcomed.enc,
        pid: welcomed.pid,
        settings: Settings::default(),
        wrote: Wrote::No,
        min_lsn: Lsn(0),
        lb_node: None,
        lb_r: rand::random(),
        statements: HashMap::new(),
        unnamed_node: None,
        refusable: false,
        holding: false,
        retrying: false,
        open_ran: false,
        rare: None,
        batch: BytesMut::new(),
        batch_frames: Vec::new(),
        cancel,
        cancel_for: (0, 0),
        last_tx_status: b'I',
        client_cut: false,
        client_owed: None,
        events: Vec::new(),
        busy: Arc::new(AtomicU64::new(0)),
        engaged: None,
        close_answers: None,
        nodes: Vec::new(),
    };
    // What the startup packet says, else what the server, database or role says.
    if startup_isolation(&s.login.params).unwrap_or(welcomed.serializable_default) {
        s.settings.begin_serializable();
    }
    async move {
        // Used in place: rebinding them inside would store them twice.
        // The error is boxed before the await below: kept as it is, its 48 bytes would take
        // room in every session's task for the whole session (a task's layout overlaps
        // locals of different await points only so far), which pushed it past tokio's 1,024.
        let mut oversized = None;
        let fatal = match s.main_loop(&mut reader, &mut buf).await {
            Err(End::Fatal(code, message)) => Some(Box::new((code, message))),
            Err(End::Oversized { len, rest }) => {
                oversized = Some(rest);
                let max = s.ctx.cfg.max_message_size;
                let e = ProtocolError::TooLarge { len, max };
                Some(Box::new((
                    "54000".into(),
                    format!("{e} (proxy.max_message_size)"),
                )))
            }
            _ => None,
        };
        // In the log too: the client may not hear it (one that stopped reading, say).
        if let Some(f) = &fatal {
            tracing::info!(
                user = s.login.user(),
                database = s.login.database(),
                code = %f.0,
                "pgwarden ends a session: {}",
                f.1
            );
        }
        // A FATAL can follow a half-relayed message only once its rest has.
        let fatal = match fatal {
            Some(f) if s.client_owed.is_some() && !s.client_cut => {
                Box::pin(s.finish_owed()).await.then_some(f)
            }
            f => f,
        };
        // The nodes first: a client that does not read must not keep this session engaged on
        // a node being stopped, nor its connections open.
        s.release();
        if let Some(rest) = oversized {
            Box::pin(skip_oversized(&mut reader, rest, s.ctx.cfg.auth_timeout)).await;
        }
        if let Some(fatal) = fatal.filter(|_| !s.client_cut) {
            // Boxed: this rare write would otherwise take room in every session's task.
            Box::pin(s.say_fatal(fatal)).await;
        }
        drop(guards);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.wake.close(&self.ctx);
    }
}

impl Session {
    /// Relays the rest of the message the client's stream ends inside (`client_owed`), so
    /// that the session's FATAL can follow it: true once it has. False when the node is gone,
    /// or it or the client did not finish within `OWED_LIMIT`: then the client is told
    /// nothing, as when a server dies, rather than given a damaged row. (A node out of
    /// service is read from for that second more: only to finish a row it had begun.)
    async fn finish_owed(&mut self) -> bool {
        let Some(node) = self.client_owed.filter(|n| self.conns.contains_key(n)) else {
            tracing::warn!("a session ends in the middle of a message it relayed, from a node now gone: its client is not told why");
            return false;
        };
        let finished = tokio::time::timeout(OWED_LIMIT, async {
            while let Some(conn) = self.conns.get_mut(&node) {
                if conn.streaming == 0 {
                    return true;
                }
                if conn.b().buf.is_empty() && conn.b().fill().await.is_err() {
                    return false;
                }
                let take = conn.streaming.min(conn.b().buf.len());
                let rest = conn.b().buf.split_to(take);
                conn.streaming -= take;
                if write_client(&mut self.client, &mut self.client_cut, &self.busy, &rest)
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if !finished {
            tracing::warn!(node, "a session ends in the middle of a message it relayed from node {node}, whose rest did not come: its client is not told why");
        }
        finished
    }

    /// Tells the client why its session ends.
    async fn say_fatal(&mut self, fatal: Box<(String, String)>) {
        let (code, message) = &*fatal;
        let mut out = BytesMut::new();
        msg::error_response(&mut out, &ErrorFields::fatal(code, message));
        // Bounded: a client that does not read is not waited for.
        let _ =
            tokio::time::timeout(FATAL_WRITE_LIMIT, self.client.write_all(&out, &self.busy)).await;
    }

    async fn main_loop(&mut self, reader: &mut ClientReader, cbuf: &mut BytesMut) -> Result<()> {
        let wake = self.wake.bell.clone();
        let mut idle_since = tokio::time::Instant::now();
        loop {
            // Everything complete in the buffer is handled first, and answers in flight are
            // relayed. Boxed: a request needs a large state machine only while it runs; an
            // idle session keeps just the small wait below. From here on nothing is in flight.
            if cbuf.len() >= 5 || self.inflight.is_some() {
                match Box::pin(self.serve(reader, cbuf)).await? {
                    Handled::Nothing => {}
                    Handled::Some => idle_since = tokio::time::Instant::now(),
                    Handled::Goodbye => return Ok(()),
                }
            }
            give_back_drained(cbuf);
            if cbuf.is_empty()
                && self.tx_node.is_none()
                && self.open_until_sync.is_none()
                && self.copy_in.is_none()
                && self.settings.has_unread()
            {
                // Settings changed in a transaction that has ended are read back now, while
                // the client thinks, not at its next statement: the node that holds them may
                // be taken out of service meanwhile, and the session would end with them.
                Box::pin(self.idle_step_watching_fences(IdleStep::ReadBack)).await?;
            }
            let partial = !cbuf.is_empty();
            // The node to listen to while idle: the primary of a session that listens for
            // notifications.
            let node = self.idle_watch_node();
            if let Some(n) = node.filter(|n| {
                self.conns
                    .get(n)
                    .is_some_and(|c| !c.pooled.backend.buf.is_empty())
            }) {
                // Notifications that came while pgwarden asked something of its own on the
                // connection (`Backend::exchange`) are relayed now.
                Box::pin(self.idle_step_watching_fences(IdleStep::Parked(n))).await?;
            }
            // An online recovery's 2nd stage: a session idle longer than the limit is closed.
            let idle_limit = self.ctx.hold_limit();
            let deadline = idle_since + idle_limit.unwrap_or_default();
            let auth_timeout = self.ctx.cfg.auth_timeout;
            // The branches that are idle most of the time are boxed when first polled: an idle
            // session's task keeps only its client read and its wake-up.
            tokio::select! {
                biased;
                r = async {
                    match node.and_then(|n| self.conns.get(&n)) {
                        Some(c) => Box::pin(c.pooled.backend.stream.readable()).await,
                        None => std::future::pending().await,
                    }
                }, if node.is_some() => {
                    // An error is the read's to report (a standby lost under a read, say).
                    let _ = r;
                    Box::pin(self.idle_step_watching_fences(IdleStep::Relay(node))).await?;
                }
                r = read_client(reader, cbuf, partial, auth_timeout) => {
                    r?;
                    // Part of a message: the client is not idle (its clock is read only
                    // while a hold is on).
                    if idle_limit.is_some() {
                        idle_since = tokio::time::Instant::now();
                    }
                }
                _ = async { Box::pin(tokio::time::sleep_until(deadline)).await }, if idle_limit.is_some() => {
                    return Err(recovery_end(idle_limit.unwrap_or_default()));
                }
                _ = wake.rung() => {
                    // A node fenced, or a hold set or lifted (the limit is read again above).
                    let set = self.ctx.fenced.borrow().clone();
                    self.on_fence(&set)?;
                }
            }
        }
    }

    /// Handles the client's messages and relays their answers, until nothing is in flight
    /// (or the client said goodbye): one request's whole round trip in one future, so that
    /// the idle loop around it is left and entered once per request, not per step. While the
    /// node answers, the client may send more (a pipeline) and fences are watched, as in the
    /// idle loop.
    async fn serve(&mut self, reader: &mut ClientReader, cbuf: &mut BytesMut) -> Result<Handled> {
        let watch = self.fence_watch();
        let auth_timeout = self.ctx.cfg.auth_timeout;
        let mut handled = Handled::Nothing;
        // Since when the node has waited for the client alone (see `waits_for_client`), as
        // first seen during an online recovery's 2nd stage: no clock is read otherwise.
        let mut quiet_since = None;
        loop {
            if cbuf.len() >= 5 {
                match self.handle_frames(cbuf, &watch).await? {
                    Handled::Nothing => {}
                    Handled::Some => handled = Handled::Some,
                    Handled::Goodbye => return Ok(Handled::Goodbye),
                }
            }
            let Some((node, pending)) = self.inflight else {
                return Ok(handled);
            };
            // Given back while the node works too: a long statement must not keep the buffer
            // its text came in (shared with it, however large).
            give_back_drained(cbuf);
            let partial = !cbuf.is_empty();
            // During an online recovery's 2nd stage a session whose node waits for the client
            // alone is idle, as in `main_loop`, and closed once idle longer than the limit.
            let idle_limit = if self.waits_for_client(node, pending) {
                self.ctx.hold_limit()
            } else {
                None
            };
            if idle_limit.is_none() {
                quiet_since = None;
            }
            let deadline =
                idle_limit.map(|l| *quiet_since.get_or_insert_with(tokio::time::Instant::now) + l);
            // The node's answers first, as in the idle loop (`main_loop`).
            tokio::select! {
                biased;
                r = async {
                    match self.conns.get(&node) {
                        Some(c) => c.pooled.backend.stream.readable().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let _ = r;
                    quiet_since = None;
                    self.step_watching_fences(IdleStep::Relay(Some(node)), &watch).await?;
                }
                r = read_client(reader, cbuf, partial, auth_timeout) => {
                    r?;
                    quiet_since = None;
                }
                _ = async {
                    match deadline {
                        Some(d) => Box::pin(tokio::time::sleep_until(d)).await,
                        None => std::future::pending().await,
                    }
                }, if deadline.is_some() => {
                    return Err(recovery_end(idle_limit.unwrap_or_default()));
                }
                _ = watch.bell.rung() => {
                    let set = self.ctx.fenced.borrow().clone();
                    self.on_fence(&set)?;
                }
            }
        }
    }

    /// Whether the units in flight on `node` (`pending` ReadyForQuery due) wait for the client
    /// alone: every answer of a pipeline opened by Flush relayed, its Sync not sent (as asyncpg
    /// prepares), or a COPY from the client. Such a session is idle.
    fn waits_for_client(&self, node: u32, pending: u32) -> bool {
        let open_answered =
            self.open_until_sync == Some(node) && pending == 0 && self.open_owed == 0;
        (open_answered || self.copy_in == Some(node))
            && self
                .conns
                .get(&node)
                .is_some_and(|c| c.streaming == 0 && c.pooled.backend.buf.is_empty())
    }

    /// Handles every complete message in `cbuf`.
    async fn handle_frames(&mut self, cbuf: &mut BytesMut, watch: &FenceWatch) -> Result<Handled> {
        let mut handled = Handled::Nothing;
        loop {
            let f = match frame::split_frame(cbuf, self.ctx.cfg.max_message_size) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                // Within PostgreSQL's own limit, the client is sending it still: it hears
                // why it was cut off once it has (see `skip_oversized`).
                Err(ProtocolError::TooLarge { len, .. }) if len <= PG_MESSAGE_LIMIT => {
                    return Err(End::Oversized {
                        len,
                        rest: len.saturating_sub(cbuf.len()),
                    })
                }
                Err(e) => return Err(e.into()),
            };
            handled = Handled::Some;
            // A node may be fenced while the session waits on it (a hung primary): the
            // session ends rather than wait. Other fences are dealt with once the message is
            // handled.
            let (go_on, pending) = {
                let step = std::pin::pin!(self.on_frame(f));
                watch.watching(step).await?
            };
            if let Some(set) = pending {
                self.on_fence(&set)?;
            }
            if !go_on {
                return Ok(Handled::Goodbye);
            }
        }
        Ok(handled)
    }

    /// One step of the idle loop's own work, under the same fence watch as a client message
    /// (`handle_frames`): a fence of a node the step is blocked on (a client slow to take that
    /// node's answers, a hung node) ends the session at once, rather than keep it engaged on
    /// a node being stopped.
    async fn idle_step_watching_fences(&mut self, step: IdleStep) -> Result<()> {
        let watch = self.fence_watch();
        self.step_watching_fences(step, &watch).await
    }

    /// `idle_step_watching_fences`, with a watch the caller holds (`serve`: one per request).
    async fn step_watching_fences(&mut self, step: IdleStep, watch: &FenceWatch) -> Result<()> {
        let ((), pending) = {
            let work = std::pin::pin!(async {
                match step {
                    IdleStep::Relay(node) => self.read_node(node, false).await,
                    IdleStep::Parked(n) => self.forward(n, true).await,
                    IdleStep::ReadBack => self.read_back_settings().await,
                }
            });
            watch.watching(work).await?
        };
        if let Some(set) = pending {
            self.on_fence(&set)?;
        }
        Ok(())
    }

    /// What a step's fence watch needs, held apart from the session the step borrows.
    fn fence_watch(&self) -> FenceWatch {
        FenceWatch {
            busy: self.busy.clone(),
            bell: self.wake.bell.clone(),
            ctx: self.ctx.clone(),
            client_fd: self.client.raw_fd(),
        }
    }

    /// Some nodes were taken out of service: connections to them are dropped. A session that
    /// needs one (its primary connection, a transaction, COPY, pinned state, a statement in
    /// flight there) ends with an error: it must never write to a fenced primary, nor wait on it.
    fn on_fence(&mut self, set: &[u32]) -> Result<()> {
        let hit: Vec<u32> = self
            .conns
            .keys()
            .copied()
            .filter(|n| set.contains(n))
            .collect();
        for n in hit {
            // A connection the session is not in the middle of something on is dropped, even
            // the primary's: the next write waits for the new primary.
            let needed = self.bound_to(n);
            if needed {
                return Err(fenced_end(n));
            }
            tracing::info!(node = n, "dropping a connection to a node out of service");
            // (The session keeps its node: while out of service, it serves none of its
            // reads, see `read_target_now`.)
            self.conns.remove(&n);
        }
        Ok(())
    }

    /// Handles one client frame; false when the client said goodbye.
    async fn on_frame(&mut self, f: Frame) -> Result<bool> {
        // The client goes on before the read's answer came: its refusal, if it is one, is the
        // client's to hear (answers are relayed in order).
        self.drop_refusable();
        if self.discard_until_sync {
            match f.tag {
                b'X' => return Ok(false),
                b'S' => {
                    self.discard_until_sync = false;
                    let mut out = BytesMut::new();
                    msg::ready_for_query(&mut out, self.last_tx_status);
                    self.send_client(&out).await?;
                }
                _ => {}
            }
            return Ok(true);
        }
        if let Some(node) = self.copy_in {
            if matches!(f.tag, b'd' | b'c' | b'f') {
                if f.tag != b'd' {
                    self.copy_in = None;
                }
                self.write_node(node, &f.bytes).await?;
                return Ok(true);
            }
        }
        match f.tag {
            b'Q' => {
                if !self.batch_frames.is_empty() {
                    self.dispatch_batch(0, false).await?;
                    if self.discard_until_sync {
                        // Those frames ended a failed open part (see `end_open_batch`): a
                        // server drops the Query too, up to the client's Sync.
                        return Ok(true);
                    }
                }
                self.simple_query(f).await?;
            }
            b'P' | b'B' | b'D' | b'E' | b'C' => {
                self.batch.extend_from_slice(&f.bytes);
                self.batch_frames.push(f);
                if self.batch.len() >= BATCH_PART {
                    // A long pipeline without a Sync (psycopg's executemany, JDBC batches,
                    // pgbench's pipelines) goes out in parts as it arrives: the session holds
                    // a bounded amount of it, and the node starts work at once.
                    self.dispatch_batch(0, true).await?;
                }
            }
            b'S' => {
                self.batch.extend_from_slice(&f.bytes);
                self.batch_frames.push(f);
                self.dispatch_batch(1, false).await?;
            }
            b'H' => {
                self.batch.extend_from_slice(&f.bytes);
                self.batch_frames.push(f);
                self.dispatch_batch(0, false).await?;
            }
            b'F' => {
                // FunctionCall (libpq's large-object calls): may do anything. It ends a batch
                // in progress, and the pipeline's open part, as a Query does.
                if !self.batch_frames.is_empty() {
                    self.dispatch_batch(0, false).await?;
                }
                if self.discard_until_sync {
                    return Ok(true);
                }
                let joined = self.join_open_part(None).await?;
                if !joined && Box::pin(self.end_open_part_before_query()).await? {
                    return Ok(true);
                }
                // The function is named by its OID: it may be `setseed` or `dblink_connect`
                // (see `process_state`), so the connection is not handed to another client.
                self.process_state = true;
                self.fresh_begin = None;
                let target = self.route(Class::Write).await?;
                let sent = self.send(target, f.bytes.clone(), 1).await?;
                if joined && sent.is_some() {
                    self.close_open_part();
                }
            }
            b'X' => return Ok(false),
            b'd' | b'c' | b'f' => {
                // COPY data may follow its COPY statement before the node's CopyInResponse is
                // back (asyncpg sends it at once): it belongs to the node answering. Outside
                // COPY, PostgreSQL ignores copy messages (as after a failed COPY), and so do we.
                if let Some((node, _)) = self.inflight {
                    self.write_node(node, &f.bytes).await?;
                }
            }
            t => {
                return Err(fatal(
                    "08P01",
                    format!("invalid frontend message type {}", t),
                ));
            }
        }
        Ok(true)
    }

    // ---- routing -----------------------------------------------------------------------

    /// The node for a unit of this class, engaged: the controller will not stop it under this
    /// unit. A node fenced between the choice and the engagement is dropped and the choice
    /// made again (a write then waits for the new primary).
    async fn route(&mut self, class: Class) -> Result<u32> {
        // (What code of the database's own may have changed is read back only before a unit
        // that may go elsewhere: a read, a transaction's start. See `note_user_code`.)
        if self.settings.has_unread()
            || (matches!(class, Class::Read | Class::Begin { .. }) && self.settings.has_user_code())
        {
            Box::pin(self.read_back_settings()).await?;
        }
        loop {
            let target = self.route_inner(class).await?;
            if let Some(end) = self.primary_ended_while_idle(target) {
                return Err(end);
            }
            self.engage(target);
            if !self.is_fenced(target) {
                return Ok(target);
            }
            if self.bound_to(target) {
                return Err(fenced_end(target));
            }
            // (A read routed again goes elsewhere: `read_target_now` avoids the fenced set
            // it has just read.)
            self.conns.remove(&target);
            self.set_engaged(None);
        }
    }

    /// The server ended the session's connection to the primary while the session was idle
    /// there (`pg_terminate_backend` of the pid `pg_backend_pid()` gave, `idle_session_timeout`,
    /// a crash of another server process): the client's session ends now, with the server's
    /// FATAL, as with one server, even if this unit would run elsewhere (a read on a standby
    /// used to go on as if nothing had happened, and the session ended only at its next
    /// write). Not for a node pgwarden took out of service (a switchover stops it cleanly,
    /// and the fence moves the session), nor for a connection closed without a FATAL to a
    /// session with no state there. Looked at only when the connection has
    /// become readable (tokio's readiness, no system call otherwise); bytes that are not a
    /// FATAL (a notice, a parameter change) stay for the next answer there.
    fn primary_ended_while_idle(&mut self, target: u32) -> Option<End> {
        // (One connection: the unit goes to it, and finds out there.)
        if self.conns.len() < 2
            || self.inflight.is_some()
            || self.tx_node.is_some()
            || self.copy_in.is_some()
        {
            return None;
        }
        let node = self
            .conns
            .iter()
            .find(|(n, c)| c.primary && **n != target)
            .map(|(n, _)| *n)?;
        let conn = self.conns.get_mut(&node)?;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if conn
            .pooled
            .backend
            .stream
            .poll_read_ready(&mut cx)
            .is_pending()
        {
            return None;
        }
        if self.is_fenced(node) {
            // Stopped by pgwarden (a switchover): the fence's own handling moves the session.
            return None;
        }
        let conn = self.conns.get_mut(&node)?;
        let read = conn.b().try_fill();
        match (read, server_fatal(&conn.pooled.backend.buf)) {
            (_, Some((code, text))) => {
                tracing::info!(node, "the primary ended the session's connection while it was idle ({code}: {text}): the session ends");
                self.conns.remove(&node);
                self.ctx.report(node);
                Some(fatal(&code, text))
            }
            // Closed without a word (the server killed, the network): a session whose state
            // lives there ends; another goes on, as when a read finds a standby gone, and
            // the monitor looks at the node.
            (Err(e), None) if self.bound_to(node) => Some(self.lost(node, e)),
            (Err(e), None) => {
                tracing::warn!(
                    node,
                    "the session's idle connection to the primary was lost: {e}"
                );
                self.conns.remove(&node);
                self.ctx.report(node);
                None
            }
            (Ok(_), None) => None,
        }
    }

    /// `sql` needs no one else connected to some databases (`DROP DATABASE`, a template):
    /// pgwarden's idle pooled connections to them are closed first, as a client's would be
    /// gone (test suites drop the database their pool used; before, `DROP DATABASE` failed
    /// with "being accessed by other users" through pgwarden alone).
    fn free_databases(&self, sql: &str) {
        for db in pgwarden_sql::databases_to_free(sql) {
            let n = self.ctx.pools.close_idle_of_database(&db);
            if n > 0 {
                tracing::info!(database = %db, "closed {n} idle pooled connection(s) to it before a statement that needs it unused");
            }
        }
    }

    /// See `Rare`.
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Default::default)
    }

    fn forget_unnamed_effect(&mut self) {
        if let Some(r) = self.rare.as_mut() {
            r.unnamed_effect = None;
        }
    }

    /// Engaged on `node` before its fence is read (the count's increment carries the ordering;
    /// already engaged there, the controller counts this session anyway).
    fn engage(&mut self, node: u32) {
        self.set_engaged(Some(node));
    }

    fn set_engaged(&mut self, node: Option<u32>) {
        if self.engaged == node {
            return;
        }
        if let Some(n) = node {
            if let Some(e) = &self.node_refs(n).engagement {
                e.engage();
            }
        }
        if let Some(old) = self.engaged {
            if let Some(e) = &self.node_refs(old).engagement {
                e.disengage();
            }
        }
        self.engaged = node;
    }

    /// Engages `node` for pgwarden's own work on it (a setting read back, a statement made
    /// on the primary, a Close), besides any unit the session is engaged on, and then reads
    /// its fence, as `route` does: the controller does not stop the node under the work.
    /// `None` (and nothing engaged) when the node is out of service. The engagement lasts as
    /// long as the returned value, whichever way the work ends.
    fn engage_aside(&mut self, node: u32) -> Option<Aside> {
        let aside = Aside(self.node_refs(node).engagement.clone());
        if let Some(e) = &aside.0 {
            e.engage();
        }
        (!self.is_fenced(node)).then_some(aside)
    }

    /// The node this session has work on now, if any.
    fn sync_engaged(&mut self) {
        let now = self
            .inflight
            .map(|(n, _)| n)
            .or(self.tx_node)
            .or(self.copy_in)
            .or(self.open_until_sync);
        self.set_engaged(now);
    }

    /// The routing table, as the monitor last published it.
    fn table(&mut self) -> &Arc<RouteTable> {
        self.routes.get()
    }

    /// Whether `node` is out of service now. Read after engaging on it (see `route`): the
    /// watch's version is loaded then, which is what orders it against the controller.
    fn is_fenced(&mut self, node: u32) -> bool {
        self.fenced.get().contains(&node)
    }

    /// The node's counters and engagement count.
    fn node_refs(&mut self, node: u32) -> &NodeRefs {
        let i = self.node_index(node);
        &self.nodes[i]
    }

    /// Where `node`'s entry is in `nodes`, made when it is the first time.
    fn node_index(&mut self, node: u32) -> usize {
        match self.nodes.iter().position(|r| r.id == node) {
            Some(i) => i,
            None => {
                self.nodes.push(NodeRefs {
                    id: node,
                    stats: self.ctx.node_stats(node),
                    engagement: self.ctx.monitor.engagement(node),
                    refused_at: None,
                    full_at: None,
                });
                self.nodes.len() - 1
            }
        }
    }

    async fn route_inner(&mut self, class: Class) -> Result<u32> {
        if let Some(n) = self.open_until_sync {
            // The part's node runs what follows, and a write there is a write for
            // read-your-writes like any other: a part that began with a read on the primary
            // set nothing (a standby's part is ended before a write, see `dispatch_batch`).
            if writes(class) && self.table().primary == Some(n) {
                self.wrote = Wrote::Pending;
            }
            return Ok(n);
        }
        if let Some(n) = self.tx_node {
            return Ok(n);
        }
        let table = self.table().clone();
        // (A hot standby refuses SERIALIZABLE transactions, even read-only ones.)
        let readable = matches!(class, Class::Read | Class::Begin { read_only: true })
            && !self.sticky
            && !self.settings.serializable();
        if !readable {
            if writes(class) {
                // A setting writes no data, nor does a read-only transaction (on the primary
                // because the session is pinned or SERIALIZABLE, where reads stay anyway): the
                // session need not wait for standbys after it.
                self.wrote = Wrote::Pending;
            }
            return match table.primary {
                Some(p) => Ok(p),
                None => {
                    // Nothing may stay engaged while waiting: a switchover waits for the old
                    // primary to be free of this session.
                    self.drain().await?;
                    self.sync_engaged();
                    self.wait_primary().await
                }
            };
        }
        let mut target = self.read_target_now(&table);
        if let Some(t) = target.filter(|t| Some(*t) != table.primary) {
            if !self.conns.contains_key(&t) {
                // A standby that had no connection for this session is asked only for an
                // idle one until it gives one: a session would otherwise wait
                // `pool_wait_timeout` again each time the memory of that runs out.
                // (The error is not kept across the next await: it would enlarge the future.)
                let was_full = self.nodes.iter().any(|r| r.id == t && r.full_at.is_some());
                let wait = was_full.then_some(Duration::ZERO);
                let failed = match Box::pin(self.take_connection(t, wait)).await {
                    Ok(()) => None,
                    Err(e) => Some(matches!(e, PoolError::Full { .. })),
                };
                if let Some(waited) = failed {
                    // The standby cannot serve this session now (it is down and now reported,
                    // it refused the login, its connections are all in use): another standby
                    // may, else the primary. After a wait for a full standby, another is not
                    // waited for as well.
                    // (Boxed: seldom needed, and kept inline it would enlarge every message's
                    // future.)
                    target = Box::pin(self.read_elsewhere(&table, t, waited)).await;
                }
            }
        }
        if let Some(t) = target.filter(|t| Some(*t) != table.primary) {
            if self.settings_behind(t) && !Box::pin(self.settings_hold_on(t)).await? {
                target = table.primary;
            }
        }
        target.ok_or_else(no_node)
    }

    /// The session's load-balance node as `SHOW POOL_NODES` shows it: where its reads go
    /// now at session level (its own node, or where its draw leads while that one cannot
    /// serve it, else the primary; chosen now when the session has not read yet), None at
    /// statement level.
    fn shown_lb_node(&mut self) -> Option<u32> {
        if self.ctx.cfg.load_balance != LoadBalance::Session {
            return None;
        }
        let table = self.table().clone();
        let fenced = self.fenced.get();
        let avoid = |id| avoided(&self.nodes, &self.ctx, &table, fenced, id);
        // (With no node to balance to, its reads go to the primary.)
        table
            .session_lb(&mut self.lb_node, self.lb_r, avoid)
            .or(table.primary)
    }

    /// Where a read goes now, before any connection is taken: the session's node or a fresh
    /// pick (statement level), past the nodes it avoids and those behind its read-your-writes
    /// floor; the primary when none can take it. (Not async: nothing here lives across an
    /// await of `route_inner`.)
    fn read_target_now(&mut self, table: &RouteTable) -> Option<u32> {
        // Read-your-writes: once this session has written, a standby serves its reads only
        // when it has replayed what the primary had when a health check began after the write
        // was done. Until the monitor has such a position, the primary serves them: no
        // question to the primary for every write.
        self.note_write_done();
        if let Wrote::At(done) = self.wrote {
            if let Some(lsn) = table.primary_lsn_after(done) {
                self.min_lsn = lsn;
                self.wrote = Wrote::No;
            }
        }
        let floor = Some(self.min_lsn).filter(|l| l.0 > 0);
        let r: f64 = rand::random();
        let full = self.ctx.cfg.pool_wait_timeout;
        let fenced = self.fenced.get();
        let avoid = |id| avoided(&self.nodes, &self.ctx, table, fenced, id);
        let lb = match self.ctx.cfg.load_balance {
            LoadBalance::Session => table.session_lb(&mut self.lb_node, self.lb_r, avoid),
            LoadBalance::Statement => None,
        };
        let delay = self.ctx.cfg.delay_threshold;
        if self.wrote != Wrote::No {
            table.primary
        } else {
            table
                .read_target(lb, delay, floor, r, avoid)
                // With no primary (a failover under way), a standby found dead is still worth
                // a try.
                .or_else(|| {
                    table.read_target(lb, delay, floor, r, |id| turned_away(&self.nodes, id, full))
                })
        }
    }

    /// Where a read goes when standby `failed` could not take it: another standby that can
    /// (the session's new load-balance node, at session level), bound now, else the primary.
    async fn read_elsewhere(
        &mut self,
        table: &RouteTable,
        failed: u32,
        waited: bool,
    ) -> Option<u32> {
        let floor = Some(self.min_lsn).filter(|l| l.0 > 0);
        let r: f64 = rand::random();
        let fenced = self.fenced.get();
        let avoid = |id| id == failed || avoided(&self.nodes, &self.ctx, table, fenced, id);
        let lb = match self.ctx.cfg.load_balance {
            LoadBalance::Session => table.session_lb(&mut self.lb_node, self.lb_r, avoid),
            LoadBalance::Statement => None,
        };
        let delay = self.ctx.cfg.delay_threshold;
        match table.read_target(lb, delay, floor, r, avoid) {
            Some(t) if Some(t) != table.primary && !self.conns.contains_key(&t) => {
                let wait = waited.then_some(Duration::ZERO);
                // (A failure is remembered in `nodes` or the suspects: the session's node
                // stays its own, for when it can serve again.)
                if Box::pin(self.take_connection(t, wait)).await.is_ok() {
                    Some(t)
                } else {
                    table.primary
                }
            }
            other => other,
        }
    }

    /// A write is done once nothing is in flight and no transaction is open; from then on, a
    /// health check of the primary tells how far a standby must be to serve this session.
    fn note_write_done(&mut self) {
        if self.wrote == Wrote::Pending
            && self.inflight.is_none()
            && self.open_until_sync.is_none()
            && self.tx_node.is_none()
        {
            self.wrote = Wrote::At(Instant::now());
        }
    }

    /// No primary right now (a failover or switchover is under way): the write waits for the
    /// new one, up to `proxy.primary_wait`, rather than fail at once.
    async fn wait_primary(&mut self) -> Result<u32> {
        let mut routes = self.ctx.routes.clone();
        let wait = async {
            loop {
                if let Some(p) = routes.borrow_and_update().primary {
                    return Some(p);
                }
                if routes.changed().await.is_err() {
                    return None;
                }
            }
        };
        match tokio::time::timeout(self.ctx.cfg.primary_wait, wait).await {
            Ok(Some(p)) => Ok(p),
            _ => Err(no_primary()),
        }
    }

    // ---- simple query ------------------------------------------------------------------

    async fn simple_query(&mut self, f: Frame) -> Result<()> {
        let raw = msg::query_text(f.body())?;
        let sql = pgwarden_sql::server_text(raw, self.enc);
        let sql = &*sql;
        self.unless_unsure(sql);
        // (Before the Query can pin anything, or be answered by pgwarden.)
        let joined = self.join_open_part(Some(sql)).await?;
        if !joined && self.end_open_part_before_query().await? {
            return Ok(());
        }
        if self.rare.as_ref().is_some_and(|r| !r.own.is_empty())
            && has_first_word(sql, "deallocate")
            && Box::pin(self.deallocate_own(sql)).await?
        {
            return Ok(());
        }
        if let Some(cmd) = crate::show::parse(sql) {
            self.drain().await?;
            let mut out = BytesMut::new();
            let lb = self.shown_lb_node();
            crate::show::answer(&self.ctx, cmd, lb, &mut out);
            msg::ready_for_query(&mut out, self.last_tx_status);
            return self.send_client(&out).await;
        }
        if let Some(begin) = self.fresh_begin.take() {
            if pgwarden_sql::sets_transaction_serializable(sql) {
                Box::pin(self.move_transaction_to_primary(&begin)).await?;
            }
        }
        if self.standby_tx_unsettled() && classify(sql, &*self.ctx).class != Class::Read {
            Box::pin(self.drain_for_outcome()).await?;
        }
        // (Only in a transaction: the hot path pays one test.)
        if !joined && self.tx_node.is_some() && sql.contains(';') {
            if let Some((node, prefix, rest)) = self.query_split(raw, sql) {
                self.process_state |= pgwarden_sql::leaves_process_state(sql);
                return Box::pin(self.run_split_query(node, prefix, rest)).await;
            }
        }
        let in_tx = self.tx_node.is_some();
        // Inside a transaction the node is fixed; the parser is needed only for statements that
        // may create session state (LISTEN, PREPARE, temporary tables, settings, cursors).
        let (class, sets, user_code) =
            if in_tx && !may_hold_state(sql) && !pgwarden_sql::may_run_user_code(sql, &*self.ctx) {
                self.process_state |= pgwarden_sql::leaves_process_state(sql);
                (Class::InTransaction, false, false)
            } else {
                let verdict = classify(sql, &*self.ctx);
                tracing::trace!(class = ?verdict.class, reason = %verdict.reason, "simple query");
                self.process_state |= verdict.process_state;
                let class = self.unless_refused(verdict.class, sql);
                (class, verdict.sets, verdict.runs_user_code)
            };
        if class == Class::Sticky {
            self.sticky = true;
        }
        // (A transaction's statement left unparsed is one statement: its first word tells,
        // and the per-statement path of a write transaction scans no text for `alter`.)
        let may_alter = match class {
            Class::Write => true,
            Class::InTransaction => has_first_word(sql, "alter"),
            _ => false,
        };
        if may_alter && pgwarden_sql::changes_default_settings(sql) {
            self.rare().renew_pool = true;
        }
        if class == Class::Write {
            self.free_databases(sql);
        }
        // A cursor declared WITH HOLD on a standby is used there (see `held_cursor`).
        let cursor = if self.settings.has_held() {
            pgwarden_sql::cursor_use(sql)
        } else {
            None
        };
        let target = match self.held_cursor(in_tx, cursor.as_ref()) {
            Some(n) => {
                self.engage(n);
                if self.is_fenced(n) {
                    return Err(fenced_end(n));
                }
                n
            }
            None => self.route(class).await?,
        };
        match &cursor {
            Some(CursorUse::Close(name)) => self.settings.forget_held(Some(name)),
            Some(CursorUse::CloseAll) => self.settings.forget_held(None),
            _ => {}
        }
        if in_tx && self.table().primary != Some(target) {
            if class == Class::Sticky {
                // In a transaction on a standby: a PREPARE outlives it, and the session,
                // pinned to the primary from now on, will EXECUTE there (see
                // `prepare_on_primary`).
                for (name, _) in pgwarden_sql::prepares(sql) {
                    self.settings.note_prepared(target, name);
                }
            } else if has_first_word(sql, "declare") {
                for name in pgwarden_sql::held_cursors(sql) {
                    self.settings.note_held(name, target);
                }
            }
        }
        self.node_refs(target).stats.count(sql);
        let bytes = f.bytes.clone();
        // (A `set_config` is read back, not recorded as said: its value may be an expression.)
        let record = class == Class::Session && !in_tx && !pgwarden_sql::calls_set_config(sql);
        if record {
            self.error_seen = false;
        }
        let refusable = class == Class::Read
            && !in_tx
            && !joined
            && cursor.is_none()
            && self.inflight.is_none()
            && self.open_until_sync.is_none()
            && bytes.len() <= REFUSABLE_MAX
            && self.table().primary != Some(target);
        let sent = self.send(target, bytes.clone(), 1).await?;
        if refusable && self.inflight == Some((target, 1)) {
            self.keep_refusable(target, bytes.clone());
        }
        if joined && sent.is_some() {
            // The server ends the open part's implicit transaction with the Query's.
            self.close_open_part();
        }
        if sent.is_some() {
            // A simple Query destroys the unnamed statement, here wherever it was parsed, as
            // on one server: a later Bind of it goes where the Query ran, and fails there.
            self.unnamed_node = sent;
            self.forget_unnamed_effect();
        }
        let begins = matches!(class, Class::Begin { .. });
        self.note_begin(begins, sent);
        if begins
            && !in_tx
            && sent.is_some_and(|n| self.table().primary != Some(n))
            && !pgwarden_sql::may_be_several(sql)
        {
            self.fresh_begin = Some(raw.into());
        }
        let mut in_tx = in_tx;
        let mut settle = false;
        if record {
            // Its outcome decides whether it makes earlier settings moot (the client waits
            // for it anyway).
            settle = self.drain_for_outcome().await?;
            if settle && self.last_tx_status != b'I' {
                // It ran in a transaction the client began in the same pipeline: the
                // transaction's, as below.
                (in_tx, settle) = (true, false);
            }
        }
        if record && !in_tx {
            self.session_operation(target, bytes, settle);
        } else if sets || user_code || class == Class::Session {
            // A setting inside a transaction, or among other statements: whether it lasts
            // depends on how the transaction ends, so its value is read back once it has.
            // So is every setting after code of the database's own, which may set any.
            if let Some(node) = sent {
                self.note_settings_changed(node, sql, user_code);
            }
            if class == Class::Session {
                self.forget_dropped_statements(sql);
            }
        }
        Ok(())
    }

    /// `SET TRANSACTION ISOLATION LEVEL SERIALIZABLE` as the first statement of a transaction
    /// begun on a standby (`BEGIN READ ONLY`): a hot standby refuses it, one server runs it.
    /// The transaction has run nothing yet, so it moves: its BEGIN runs again on the primary,
    /// the standby's is rolled back, and the statement follows it there. Should the primary
    /// refuse the BEGIN, nothing moves (the standby answers, as before).
    async fn move_transaction_to_primary(&mut self, begin: &[u8]) -> Result<()> {
        self.drain().await?;
        let Some(standby) = self.tx_node else {
            return Ok(());
        };
        let Some(primary) = self.table().primary.filter(|p| *p != standby) else {
            return Ok(());
        };
        if self.last_tx_status != b'T' || self.is_fenced(primary) {
            return Ok(());
        }
        let mut out = BytesMut::new();
        msg::frontend::query(&mut out, begin);
        if !self.internal(primary, out).await? {
            return Ok(());
        }
        self.tx_node = Some(primary);
        self.sync_engaged();
        tracing::debug!(
            standby,
            primary,
            "a transaction made SERIALIZABLE before its first query moved to the primary"
        );
        let mut out = BytesMut::new();
        msg::frontend::query(&mut out, "ROLLBACK");
        // (A standby lost meanwhile has lost the transaction too: the session goes on.)
        if let Err(e) = self.internal(standby, out).await {
            tracing::debug!(standby, "rolling back the moved transaction: {e:?}");
        }
        Ok(())
    }

    /// A Query that ends the session's transaction on a standby and then goes on with what may
    /// not run there (`COMMIT; INSERT …` after a `BEGIN READ ONLY`): the standby, the text up to
    /// the transaction's end, and the rest (`sql::split_after_transaction_end`). Sent whole,
    /// the standby refused the rest (25006), which one server runs after the COMMIT.
    /// (`sql` is `raw` as the server reads it; the parts are the client's own bytes.)
    fn query_split(&mut self, raw: &[u8], sql: &str) -> Option<(u32, Vec<u8>, Vec<u8>)> {
        let node = self.tx_node?;
        if self.table().primary == Some(node) {
            return None;
        }
        let (prefix, rest) = pgwarden_sql::split_after_transaction_end(sql)?;
        if classify(&rest, &*self.ctx).class == Class::Read {
            return None;
        }
        let at = pgwarden_sql::raw_offset(raw, self.enc, prefix.len())?;
        let rest_at = pgwarden_sql::raw_offset(raw, self.enc, sql.len() - rest.len())?;
        Some((node, raw.get(..at)?.to_vec(), raw.get(rest_at..)?.to_vec()))
    }

    /// A text whose reading cannot be vouched for (`pgwarden_sql::unsure_reading`): the
    /// session stays on the primary from now on, and its connections are not pooled after
    /// it, whatever the text did.
    /// In a transaction (or a pipeline's open part) on a standby the text still runs there:
    /// every setting there is read back once it has (a `set_config` it hides).
    fn unless_unsure(&mut self, sql: &str) {
        if pgwarden_sql::unsure_reading(sql, self.enc) {
            tracing::warn!("a text the server may read otherwise than pgwarden (a dollar quote's tag converted from the client's encoding): the session stays on the primary");
            self.sticky = true;
            self.process_state = true;
            if let Some(node) = self.tx_node.or(self.open_until_sync) {
                let every = vec![pgwarden_sql::EVERY_SETTING.to_string()];
                self.settings.note_changed(node, every);
            }
        }
    }

    /// Runs a Query split by `query_split`: the part up to the transaction's end on the
    /// standby, its ReadyForQuery kept from the client, then the rest as a Query of its own,
    /// routed as any. After an error in the first part the rest is not sent, as a server stops
    /// a Query at its first error, and the client gets the first part's ReadyForQuery.
    async fn run_split_query(&mut self, node: u32, raw: Vec<u8>, rest: Vec<u8>) -> Result<()> {
        self.drain().await?;
        if self.is_fenced(node) {
            return Err(fenced_end(node));
        }
        let prefix = pgwarden_sql::server_text(&raw, self.enc).into_owned();
        // What the part leaves behind on the standby, as for any Query in a transaction there.
        let verdict = classify(&prefix, &*self.ctx);
        self.process_state |= verdict.process_state;
        if verdict.class == Class::Sticky {
            self.sticky = true;
        }
        if verdict.sets || verdict.runs_user_code {
            self.note_settings_changed(node, &prefix, verdict.runs_user_code);
        }
        for name in pgwarden_sql::held_cursors(&prefix) {
            self.settings.note_held(name, node);
        }
        for (name, _) in pgwarden_sql::prepares(&prefix) {
            self.settings.note_prepared(node, name);
        }
        self.node_refs(node).stats.count(&prefix);
        let mut out = BytesMut::new();
        msg::frontend::query(&mut out, &raw);
        if let Err(e) = self.write_unit(node, &out).await? {
            return Err(self.lost(node, e));
        }
        self.unnamed_node = Some(node);
        self.forget_unnamed_effect();
        let (status, failed) = Box::pin(self.relay_keeping_ready(node)).await?;
        if failed {
            let mut z = BytesMut::new();
            msg::ready_for_query(&mut z, status);
            return self.send_client(&z).await;
        }
        let mut q = BytesMut::new();
        msg::frontend::query(&mut q, &rest);
        let bytes = q.freeze();
        Box::pin(self.simple_query(Frame { tag: b'Q', bytes })).await
    }

    /// The standby a FETCH, MOVE or CLOSE outside a transaction must go to: the cursor it
    /// names was declared WITH HOLD in a transaction there, and lives only there. A cursor
    /// whose connection is gone (the node lost or fenced since) is forgotten: the statement
    /// goes where it would, and fails as on a server that never had it.
    fn held_cursor(&mut self, in_tx: bool, cursor: Option<&CursorUse>) -> Option<u32> {
        let (CursorUse::Use(name) | CursorUse::Close(name)) = cursor? else {
            return None;
        };
        let node = self.settings.held_on(name)?;
        if in_tx {
            // (In a transaction on another node, it cannot be reached: that node answers.)
            return None;
        }
        if self.conns.contains_key(&node) && !self.is_fenced(node) {
            return Some(node);
        }
        self.settings.forget_held(Some(name));
        None
    }

    /// `sql` ran on `node` and may have changed the settings `setting_names` names there: they
    /// are read back before the session uses another connection (see `settings`); after a
    /// `RESET ALL`, every setting (`pgwarden_sql::EVERY_SETTING`, with the custom parameters
    /// the session knows of: `pg_settings` does not list those); after code of the database's
    /// own (`user_code`: a function whose body may call `set_config`), every setting, but
    /// only before another node is used (`Settings::note_user_code`). Settings that
    /// cannot be named (`set_config` of a name that is not a constant) pin the session
    /// instead: a custom parameter cannot be listed, so reading back every setting would
    /// miss it.
    fn note_settings_changed(&mut self, node: u32, sql: &str, user_code: bool) {
        if user_code {
            self.settings.note_user_code(node);
            // One statement that calls no `set_config` (a function's call): no setting to
            // name, and no parse to find none.
            if !pgwarden_sql::calls_set_config(sql) && !pgwarden_sql::may_be_several(sql) {
                return;
            }
        }
        match pgwarden_sql::setting_names(sql) {
            Some(names) => self.settings.note_changed(node, names),
            None => {
                if self.ctx.routes.borrow().primary != Some(node) {
                    tracing::warn!(
                        node,
                        "session settings changed on a standby in a way pgwarden cannot carry \
                         to other nodes; the session stays on the primary from now on"
                    );
                }
                self.sticky = true;
            }
        }
    }

    /// Reads back, from the node that has them, settings changed there inside a transaction or
    /// among other statements, once that node is idle (no transaction, nothing in flight, no
    /// open pipeline part), and records their values (see `settings`). Done before the session's
    /// next unit is routed, and before it uses another connection. The node is first given the
    /// settings recorded since (a later `SET` elsewhere must not be undone by an older value).
    /// Its connection lost, the session ends: what was set there is gone, and going on without
    /// it would give other answers than one server.
    async fn read_back_settings(&mut self) -> Result<()> {
        let conns = &self.conns;
        self.settings.keep_user_code_on(|n| conns.contains_key(&n));
        let mut kept = Vec::new();
        for (from, name) in self.settings.take_unread() {
            if self.working_on(from) {
                kept.push((from, name));
                continue;
            }
            let Some(_aside) = self.engage_aside(from) else {
                // Out of service: what was set there cannot be read any more.
                return Err(fenced_end(from));
            };
            if !self.conns.contains_key(&from) {
                return Err(fatal(
                    "08006",
                    format!(
                        "the connection to node {from} was lost, and with it the session's \
                         setting of {name} made in a transaction there"
                    ),
                ));
            }
            self.catch_up(from).await?;
            let sql = crate::settings::read_back_sql(&name, &self.settings.custom_names());
            let Some(conn) = self.conns.get_mut(&from) else {
                continue;
            };
            let every = name == pgwarden_sql::EVERY_SETTING;
            match conn.b().statement_value(&sql).await {
                // NULL: a custom parameter that was never defined there (for every setting:
                // none to list, and the role is always listed, so not seen).
                Ok(None) => {}
                Ok(Some(answer)) => {
                    if let Some(seq) = self.settings.record_read_back(&name, &answer) {
                        if let Some(c) = self.conns.get_mut(&from) {
                            c.applied = seq;
                        }
                    }
                }
                Err(BackendError::Sql { message, .. }) => {
                    tracing::warn!(
                        node = from,
                        setting = %name,
                        "cannot read back a setting changed in a transaction ({message}); \
                         the session's other connections keep its earlier value"
                    );
                }
                Err(e) => return Err(self.lost(from, e)),
            }
            if every && !self.sticky {
                // Code of the database's own may also have made temporary tables (a function
                // or a `DO` that runs `CREATE TEMP TABLE`): they live only there, and the
                // session stays there, as after one made in a query.
                let Some(conn) = self.conns.get_mut(&from) else {
                    continue;
                };
                match conn.b().statement_value(HAS_TEMP_OBJECTS).await {
                    Ok(Some(t)) if t == "t" => self.sticky = true,
                    Ok(_) | Err(BackendError::Sql { .. }) => {}
                    Err(e) => return Err(self.lost(from, e)),
                }
            }
        }
        self.settings.keep_unread(kept);
        if self.settings.has_unread() {
            Box::pin(self.prepare_on_primary()).await?;
        }
        Ok(())
    }

    /// SQL `PREPARE`s run in a transaction on a standby: once that node is idle, the text of
    /// each one still there (not DEALLOCATEd, not failed) is read from it, and the statement
    /// is prepared on the primary too, where the session, pinned there by it, will EXECUTE it.
    /// (The primary's connection gets the session's settings first: the statement resolves
    /// names as the client expects.) The text is read at once, even when the primary cannot
    /// take the statement yet (a switchover, a full pool): the standby may be gone by then.
    async fn prepare_on_primary(&mut self) -> Result<()> {
        let mut kept = Vec::new();
        for mut p in self.settings.take_prepared() {
            let primary = self.ctx.routes.borrow().primary;
            if primary == Some(p.node) {
                // (Promoted since: the statement is there already.)
                continue;
            }
            if p.text.is_none() {
                if self.working_on(p.node) {
                    kept.push(p);
                    continue;
                }
                match self.prepared_text(p.node, &p.name).await? {
                    Some(text) => p.text = Some(text),
                    None => continue,
                }
            }
            let Some(primary) = primary.filter(|n| !self.working_on(*n)) else {
                kept.push(p);
                continue;
            };
            // Engaged on the primary before its fence is read, as for a unit of the client's:
            // in a switchover the statement waits for the new primary.
            let Some(_aside) = self.engage_aside(primary) else {
                kept.push(p);
                continue;
            };
            if !self.conns.contains_key(&primary) {
                if let Err(e) = self.bind(primary).await {
                    // (A switchover, a full pool: tried again on the session's next statement.)
                    tracing::debug!(node = primary, statement = %p.name, "cannot reach the primary to prepare a statement there yet: {e}");
                    kept.push(p);
                    continue;
                }
            }
            self.catch_up(primary).await?;
            let (Some(conn), Some(text)) = (self.conns.get_mut(&primary), p.text.as_deref()) else {
                continue;
            };
            // As one extended-protocol statement: the server refuses a text that would hold
            // more than one command, whatever `pgwarden_sql::prepares` made of it. The text
            // is UTF-8: a connection in another client encoding is in UTF-8 meanwhile.
            let encoding = conn
                .pooled
                .backend
                .param("client_encoding")
                .filter(|v| !matches!(v.to_ascii_uppercase().as_str(), "UTF8" | "UNICODE"))
                .map(str::to_string);
            let set = |e: &str| {
                format!(
                    "SELECT pg_catalog.set_config('client_encoding', {}, false)",
                    crate::settings::literal(e)
                )
            };
            let done = async {
                if encoding.is_some() {
                    conn.b().statement_value(set("UTF8")).await?;
                }
                conn.b().run_statement(text).await
            }
            .await;
            // Back in the session's encoding, or the connection is not used again (the
            // session's texts would be misread there).
            if let Some(e) = &encoding {
                if let Err(err) = conn.b().statement_value(set(e)).await {
                    return Err(self.lost(primary, err));
                }
            }
            let refused = match done {
                Ok(done) => done.error,
                Err(BackendError::Sql { message, .. }) => Some(message),
                Err(e) => return Err(self.lost(primary, e)),
            };
            if let Some(message) = refused {
                tracing::warn!(node = primary, statement = %p.name, "a statement prepared in a transaction on node {} could not be prepared on the primary ({message})", p.node);
            }
        }
        self.settings.keep_prepared(kept);
        Ok(())
    }

    /// The text of statement `name`, prepared by a SQL `PREPARE` in a transaction on `from`,
    /// as that node has it now; None (with a warning) when it is not to be made on the
    /// primary: not there (DEALLOCATEd, or its PREPARE failed), its connection gone, or its
    /// text not to be told apart in the client's query.
    async fn prepared_text(&mut self, from: u32, name: &str) -> Result<Option<String>> {
        let from_aside = self.engage_aside(from);
        let Some(conn) = self.conns.get_mut(&from).filter(|_| from_aside.is_some()) else {
            tracing::warn!(node = from, statement = %name, "the connection that prepared a statement in a transaction was lost or taken out of service: it is not made on the primary");
            return Ok(None);
        };
        // What the server prepared, not what pgwarden noted: a PREPARE of a name already
        // taken fails there, and the statement made earlier under that name is the one that
        // lives on. Its source query (`statement`, the client's whole query) must hold
        // exactly one PREPARE of this name, whose own text is made on the primary.
        // (In UTF-8, as hex: whatever the client's encoding, it is made on the primary in
        // UTF-8, see `prepare_on_primary`.)
        let probe = format!(
            "SELECT pg_catalog.encode(pg_catalog.convert_to(statement, 'UTF8'), 'hex') \
             FROM pg_catalog.pg_prepared_statements WHERE name = {} AND from_sql",
            crate::settings::literal(name)
        );
        let source = match conn.b().statement_value(&probe).await {
            Ok(Some(hex)) => match String::from_utf8(crate::settings::hex_bytes(&hex)) {
                Ok(text) => text,
                Err(_) => return Ok(None),
            },
            Ok(None) => return Ok(None),
            Err(BackendError::Sql { message, .. }) => {
                tracing::warn!(node = from, statement = %name, "cannot tell whether a statement prepared in a transaction is still there ({message})");
                return Ok(None);
            }
            Err(e) => return Err(self.lost(from, e)),
        };
        let mut texts = pgwarden_sql::prepares(&source)
            .into_iter()
            .filter(|(n, _)| n == name)
            .map(|(_, text)| text);
        let (Some(text), None) = (texts.next(), texts.next()) else {
            tracing::warn!(node = from, statement = %name, "a statement prepared in a transaction cannot be told apart in its query; it is not made on the primary");
            return Ok(None);
        };
        Ok(Some(text))
    }

    /// Whether the session has work on `node` now (a transaction, an open pipeline part, a
    /// statement in flight): pgwarden's own questions wait for it to end there.
    fn working_on(&self, node: u32) -> bool {
        self.tx_node == Some(node)
            || self.open_until_sync == Some(node)
            || self.inflight.is_some_and(|(n, _)| n == node)
    }

    /// Before a simple Query or a FunctionCall that does not join the pipeline's open part
    /// (`join_open_part`: the part runs on a standby, met an error, or the Query is pgwarden's
    /// to answer or a held cursor's). A server runs it in the part's transaction, unless the
    /// part (after Flush) met an error: then it skips it, without a word (not even a
    /// ReadyForQuery), up to the client's Sync. pgwarden ends the open part with its own Sync
    /// first, on whatever node it runs, and sees how it ended: sent behind it unread, the
    /// ReadyForQuery counted for the Query might never come. After it, routing is free again
    /// (asyncpg prepares with Flush, then sends COPY). Returns whether the Query is to be
    /// dropped, as the server would drop it (the client's Sync then goes to that node, or is
    /// answered by pgwarden, see `end_open_batch`).
    async fn end_open_part_before_query(&mut self) -> Result<bool> {
        let Some(n) = self.open_until_sync else {
            return Ok(false);
        };
        if self.open_failed {
            return Ok(true);
        }
        Ok(Box::pin(self.end_open_batch(n)).await? == Ended::Failed)
    }

    /// Whether a simple Query (`sql`) or a FunctionCall (None) joins the pipeline's open part
    /// (see `settle_open_part`): the part runs on the primary, and what comes is neither
    /// answered by pgwarden (`SHOW POOL_NODES`) nor for a cursor held on a standby. Once
    /// it is sent, the part is closed (`close_open_part`).
    async fn join_open_part(&mut self, sql: Option<&str>) -> Result<bool> {
        let Some(n) = self.open_until_sync else {
            return Ok(false);
        };
        let joins = !self.open_failed
            && self.copy_in.is_none()
            && self.ctx.routes.borrow().primary == Some(n)
            && sql.is_none_or(|sql| {
                crate::show::parse(sql).is_none()
                    && !(self.settings.has_held() && pgwarden_sql::cursor_use(sql).is_some())
            });
        if !joins {
            return Ok(false);
        }
        Box::pin(self.settle_open_part(n)).await
    }

    /// Before a simple Query behind the pipeline's open part on the primary, which a server
    /// runs in the part's implicit transaction (or explicit one, begun in the part): the
    /// Query goes behind the part, as on one server, so that it sees the part's writes, and
    /// they commit or roll back with it — ended with a Sync of pgwarden's first, a part's
    /// writes were committed even when the Query then failed. Sent unread, though, a Query
    /// behind a part that met an error would be skipped by the server without a
    /// ReadyForQuery. So pgwarden flushes the part and relays every answer it owes first
    /// (`open_owed`). Returns whether the part ended its answers clean, and the Query may
    /// join it; false after an error (or a COPY that waits for data), and then the Query is
    /// handled as before (`end_open_part_before_query`).
    async fn settle_open_part(&mut self, node: u32) -> Result<bool> {
        // ReadyForQuery due for the pipeline's earlier Syncs first: answers before them are
        // theirs, not the part's.
        self.drain().await?;
        if !self.open_failed && self.open_owed > 0 {
            // (The part may end with the client's Flush already; one more has no answer.)
            let mut out = BytesMut::new();
            msg::frontend::flush(&mut out);
            if let Err(e) = self.write_unit(node, &out).await? {
                return Err(self.lost(node, e));
            }
        }
        while self.open_until_sync == Some(node)
            && !self.open_failed
            && self.open_owed > 0
            && self.copy_in.is_none()
        {
            if !self.conns.contains_key(&node) {
                return Err(fatal(
                    "08006",
                    format!("the connection to node {node} was lost"),
                ));
            }
            self.read_node(Some(node), true).await?;
        }
        Ok(self.open_until_sync == Some(node) && !self.open_failed && self.copy_in.is_none())
    }

    /// Whether the session's transaction is on a standby and answers are still due there: a
    /// unit that may not run on a standby must wait for them (that transaction may have ended,
    /// or its BEGIN failed, and then the unit goes to the primary). A transaction on the
    /// primary needs no wait: what follows goes there either way.
    fn standby_tx_unsettled(&self) -> bool {
        self.tx_node.is_some_and(|n| {
            self.inflight.is_some_and(|(i, p)| i == n && p > 0)
                && self.ctx.routes.borrow().primary != Some(n)
        })
    }

    /// A unit that begins a transaction was sent to `node`: the session's next units belong
    /// to that transaction at once, before its answer is back (a client that pipelines
    /// `BEGIN READ ONLY` and a `SET` or a read must have them run in it, on that node). The
    /// ReadyForQuery that ends the pipeline sets it right (`forward`), should the BEGIN fail.
    /// `node`: where the unit went (None: nowhere, there is no transaction).
    fn note_begin(&mut self, begins: bool, node: Option<u32>) {
        if let Some(node) = node.filter(|_| begins && self.tx_node.is_none()) {
            self.tx_node = Some(node);
            self.sync_engaged();
        }
    }

    /// After a session-state operation (SET, RESET ALL, asyncpg's pool reset …) outside a
    /// transaction: it writes nothing, so it leaves the read-your-writes floor alone; it goes
    /// into the settings record, replayed on the session's other connections.
    /// `settle`: it is known to have completed (whether it failed is `error_seen`).
    fn session_operation(&mut self, target: u32, query: Bytes, settle: bool) {
        let sql = query
            .get(5..)
            .and_then(|b| msg::query_text(b).ok())
            .map(|b| pgwarden_sql::server_text(b, self.enc))
            .unwrap_or_default();
        let kind = self.forget_dropped_statements(&sql);
        let seq = self.settings.push_read(query.clone(), &sql, kind);
        if settle && !self.error_seen {
            self.settings.settle(seq);
        }
        if let Some(c) = self.conns.get_mut(&target) {
            c.applied = seq;
        }
    }

    /// `DEALLOCATE` of statements that are all pgwarden's own (`SHOW POOL_…` prepared, see
    /// `show::Own`): answered here, as the server would (psycopg deallocates a statement its
    /// cache no longer holds). Returns whether it was.
    async fn deallocate_own(&mut self, sql: &str) -> Result<bool> {
        let resets = pgwarden_sql::resets(sql);
        let [name] = &resets.deallocated[..] else {
            return Ok(false);
        };
        // (One statement only: the rest of a longer text is the server's.)
        let single = !pgwarden_sql::may_be_several(sql);
        if resets.statements
            || !single
            || !self
                .rare
                .as_ref()
                .is_some_and(|r| r.own.has_statement(name))
        {
            return Ok(false);
        }
        self.drain().await?;
        if let Some(r) = self.rare.as_mut() {
            r.own.deallocate(Some(name));
        }
        let mut out = BytesMut::new();
        msg::command_complete(&mut out, "DEALLOCATE");
        msg::ready_for_query(&mut out, self.last_tx_status);
        self.send_client(&out).await?;
        Ok(true)
    }

    /// A session-state operation that drops prepared statements (DISCARD ALL, DEALLOCATE)
    /// drops pgwarden's record of them too, so none is parsed again behind the client's back.
    /// Returns what it does to the settings.
    fn forget_dropped_statements(&mut self, sql: &str) -> pgwarden_sql::SettingKind {
        let resets = pgwarden_sql::resets(sql);
        if resets.statements {
            self.statements.clear();
            if let Some(r) = self.rare.as_mut() {
                r.own.deallocate(None);
            }
        }
        if resets.cursors {
            // DISCARD ALL or CLOSE ALL (asyncpg's reset holds one among other statements)
            // closes every cursor, those held on a standby too (where the query is replayed
            // before that connection's next use).
            self.settings.forget_held(None);
        }
        // `DEALLOCATE name` drops that one: it is not parsed again elsewhere for a later
        // Bind, which fails as it would on one server.
        for name in &resets.deallocated {
            self.statements.remove(name);
            if let Some(r) = self.rare.as_mut() {
                r.own.deallocate(Some(name));
            }
        }
        resets.kind
    }

    // ---- extended protocol ---------------------------------------------------------------

    /// Sends the batch collected so far: up to its Sync (`syncs` = 1), a Flush, or, as a
    /// `part`, because it grew long. The rest of a part's batch is not known yet, and may
    /// write: a part goes to the primary, and the batch's later parts follow it there.
    async fn dispatch_batch(&mut self, syncs: usize, part: bool) -> Result<()> {
        let mut frames = std::mem::take(&mut self.batch_frames);
        if syncs == 0
            && !part
            && self.open_until_sync.is_none()
            && frames.iter().all(|f| f.tag == b'H')
        {
            // Only Flush, with nothing unsynced before it (psycopg ends a pipeline with Sync,
            // then Flush): a server has nothing to flush that its ReadyForQuery did not. Sent,
            // it would open a pipeline part that nothing needs.
            self.batch.clear();
            return Ok(());
        }
        // `SHOW POOL_…` prepared, and what uses it: pgwarden's to answer, after what is in
        // flight (nothing of the batch has gone out: no open part).
        if !part
            && self.open_until_sync.is_none()
            && crate::show::Own::may_answer(self.rare.as_ref().map(|r| &r.own), &frames)
        {
            self.drain().await?;
            let (enc, status, lb) = (self.enc, self.last_tx_status, self.shown_lb_node());
            let ctx = self.ctx.clone();
            let out = self.rare().own.answer(&frames, enc, status, |cmd| {
                crate::show::result(&ctx, cmd, lb)
            });
            if let Some(out) = out {
                self.batch.clear();
                return self.send_client(&out).await;
            }
        }
        let idle = self.last_tx_status == b'I';
        if let Some(r) = self.rare.as_mut() {
            r.own.forget(&frames, idle);
        }
        if let Some(begin) = self.fresh_begin.take() {
            // (As for a Query, see `move_transaction_to_primary`: psycopg and tokio-postgres
            // send the statement as a Parse.)
            let mut parses = frames.iter().filter(|f| f.tag == b'P');
            if let (Some(p), None) = (parses.next(), parses.next()) {
                let enc = self.enc;
                if msg::parse(p.body()).is_ok_and(|p| {
                    pgwarden_sql::sets_transaction_serializable(&pgwarden_sql::server_text(
                        p.query, enc,
                    ))
                }) {
                    Box::pin(self.move_transaction_to_primary(&begin)).await?;
                }
            }
        }
        // (Only in a transaction on a standby; the session's own copy of the routing table,
        // not the shared one, is read on this path.)
        let on_standby = self
            .tx_node
            .is_some_and(|n| self.table().primary != Some(n));
        if let Some(at) = on_standby.then(|| self.tx_end_split(&frames)).flatten() {
            // The batch ends the session's transaction on a standby, then may write: one
            // server would run the rest outside the transaction, so it must not go to the
            // standby, which would refuse it. What ends the transaction goes there first, as
            // an open part (a Flush of pgwarden's after it, which has no answer); the rest
            // then follows as a batch of its own, which ends that part where it must (see
            // `leave_open_standby`: pgwarden's Sync, its ReadyForQuery kept back, the rest
            // dropped up to the client's Sync after an error).
            let rest = frames.split_off(at);
            let rest_len: usize = rest.iter().map(|f| f.bytes.len()).sum();
            let rest_bytes = self
                .batch
                .split_off(self.batch.len().saturating_sub(rest_len));
            let mut h = BytesMut::new();
            msg::frontend::flush(&mut h);
            let h = h.freeze();
            self.batch.extend_from_slice(&h);
            frames.push(Frame {
                tag: b'H',
                bytes: h,
            });
            self.batch_frames = frames;
            Box::pin(self.dispatch_batch(0, false)).await?;
            self.batch = rest_bytes;
            self.batch_frames = rest;
            return Box::pin(self.dispatch_batch(syncs, part)).await;
        }
        if part {
            // The server sends what it has for the part at once (a Flush has no answer of its
            // own): otherwise the last of it waits in its buffer for more of the client's
            // pipeline, which may not come.
            msg::frontend::flush(&mut self.batch);
        }
        let bytes = self.batch.split().freeze();
        // Classify: the batch reads only if every statement it parses or binds reads.
        let mut class = Class::Read;
        let mut needs: Vec<String> = Vec::new();
        let mut binds_unnamed_without_parse = false;
        let mut parsed_unnamed = false;
        let mut closes: Vec<String> = Vec::new();
        let mut parses: Vec<(String, Bytes, Class, SettingEffect)> = Vec::new();
        let mut any_statement = false;
        // Session state set with SET / RESET through the extended protocol is replayed on
        // every connection, as with a simple query; other session state pins the session.
        let mut pins = false;
        // The batch begins a transaction: what follows belongs to it, and its settings are
        // the transaction's.
        let mut begins = false;
        // (Texts as the client sent them, in its encoding.)
        let mut unnamed: Option<(Vec<u8>, SettingEffect)> = None;
        let mut replay: Vec<Vec<u8>> = Vec::new();
        let mut config_calls: Vec<(Vec<u8>, bool)> = Vec::new();
        // Cursors declared WITH HOLD in the batch, and the one cursor its only statement
        // fetches from, moves or closes (see `held_cursor`; psycopg sends these as Parse).
        let mut declared: Vec<String> = Vec::new();
        // SQL PREPAREs parsed in the batch (see `prepare_on_primary`).
        let mut prepared: Vec<(String, String)> = Vec::new();
        let mut cursor: Option<CursorUse> = None;
        let mut parse_count = 0usize;
        for f in &frames {
            match f.tag {
                b'P' => {
                    let p = msg::parse(f.body())?;
                    let text = pgwarden_sql::server_text(p.query, self.enc);
                    let sql = &*text;
                    self.unless_unsure(sql);
                    let verdict = classify(sql, &*self.ctx);
                    self.process_state |= verdict.process_state;
                    let c = self.unless_refused(verdict.class, sql);
                    if matches!(c, Class::Write | Class::InTransaction)
                        && pgwarden_sql::changes_default_settings(sql)
                    {
                        self.rare().renew_pool = true;
                    }
                    if c == Class::Write {
                        self.free_databases(sql);
                    }
                    class = combine(class, c);
                    any_statement = true;
                    // (A `set_config` is read back once it has run, see `SettingEffect`; every
                    // setting after code of the database's own.)
                    let effect = match setting_effect(sql) {
                        SettingEffect::None | SettingEffect::ReadBack if verdict.runs_user_code => {
                            SettingEffect::UserCode
                        }
                        e => e,
                    };
                    pins |= c == Class::Sticky
                        || (c == Class::Session
                            && effect != SettingEffect::Replayed
                            && !pgwarden_sql::calls_set_config(sql));
                    begins |= matches!(c, Class::Begin { .. });
                    parse_count += 1;
                    if has_first_word(sql, "declare") {
                        declared.extend(pgwarden_sql::held_cursors(sql));
                    } else if c == Class::Sticky && has_first_word(sql, "prepare") {
                        prepared.extend(pgwarden_sql::prepares(sql));
                    } else if self.settings.has_held() {
                        cursor = pgwarden_sql::cursor_use(sql);
                    }
                    if p.name.is_empty() {
                        parsed_unnamed = true;
                        unnamed = Some((p.query.to_vec(), effect));
                    } else if (self.statements.contains_key(p.name)
                        && !closes.iter().any(|n| n == p.name))
                        || parses.iter().any(|(n, _, _, _)| n == p.name)
                    {
                        // The session has a statement of that name: the server refuses the
                        // Parse (42P05), and the statement stays what it was. It must exist
                        // where the batch goes, to be refused there as on one server.
                        needs.push(p.name.to_string());
                    } else {
                        parses.push((p.name.to_string(), f.bytes.clone(), c, effect));
                    }
                }
                b'B' => {
                    let (_, stmt) = msg::bind_names(f.body())?;
                    any_statement = true;
                    // (The text only for a statement that changes settings: most binds
                    // need no copy of it.)
                    let (c, parse) = if stmt.is_empty() {
                        binds_unnamed_without_parse |= !parsed_unnamed;
                        // The unnamed statement's class, when parsed here, is already in
                        // `class`.
                        let text = if parsed_unnamed {
                            unnamed
                                .as_ref()
                                .filter(|(_, e)| *e != SettingEffect::None)
                                .map(|(sql, e)| (sql.clone(), *e))
                        } else {
                            self.rare
                                .as_ref()
                                .and_then(|r| r.unnamed_effect.as_ref())
                                .map(|(q, e)| (q.clone(), *e))
                        };
                        (None, text)
                    } else if let Some(s) = self.statements.get(stmt) {
                        needs.push(stmt.to_string());
                        let text = (s.effect != SettingEffect::None)
                            .then(|| parse_sql(&s.parse).map(|sql| (sql, s.effect)))
                            .flatten();
                        (Some(s.class), text)
                    } else if let Some((_, b, _, e)) = parses.iter().find(|(n, _, _, _)| n == stmt)
                    {
                        // Parsed in this batch: its class is already in `class` (counted
                        // twice, pgjdbc's named `BEGIN READ ONLY` made two BEGINs, a write).
                        let text = (*e != SettingEffect::None)
                            .then(|| parse_sql(b).map(|sql| (sql, *e)))
                            .flatten();
                        (None, text)
                    } else {
                        (None, None)
                    };
                    if let Some(c) = c {
                        class = combine(class, c);
                        pins |= c == Class::Sticky;
                        begins |= matches!(c, Class::Begin { .. });
                    }
                    match parse {
                        Some((sql, SettingEffect::Replayed)) => replay.push(sql),
                        // Its value is not known before it runs (a parameter, often): read
                        // back once it has.
                        Some((sql, SettingEffect::ReadBack)) => config_calls.push((sql, false)),
                        Some((sql, SettingEffect::UserCode)) => config_calls.push((sql, true)),
                        _ => {}
                    }
                }
                b'D' | b'C' => {
                    let (kind, name) =
                        msg::target(f.body(), if f.tag == b'D' { "Describe" } else { "Close" })?;
                    if kind == b'S' && !name.is_empty() && self.statements.contains_key(name) {
                        if f.tag == b'C' {
                            closes.push(name.to_string());
                        } else {
                            needs.push(name.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        if part || self.retrying {
            class = combine(class, Class::Write);
        }
        if class != Class::Read && self.standby_tx_unsettled() {
            Box::pin(self.drain_for_outcome()).await?;
        }
        if pins {
            // Session state that cannot be replayed stays where it was set.
            self.sticky = true;
        }
        // Settings not recorded as said, but read back later (see `settings`): a SET inside a
        // transaction is the transaction's (it may be rolled back).
        let mut read_back: Vec<(Vec<u8>, bool)> = Vec::new();
        if self.tx_node.is_some() || begins {
            read_back.extend(std::mem::take(&mut replay).into_iter().map(|q| (q, false)));
        }
        if frames.iter().all(|f| matches!(f.tag, b'S' | b'H'))
            && self.open_until_sync.is_none()
            && self.tx_node.is_none()
            && self.inflight.is_none()
            && self.conns.is_empty()
        {
            // Only Sync and Flush, and no backend held: answer as the server would. (A
            // Describe or Close goes to a node: a statement the session has may be described,
            // and a server answers a Close of nothing with CloseComplete.)
            if syncs > 0 {
                let mut out = BytesMut::new();
                msg::ready_for_query(&mut out, b'I');
                self.send_client(&out).await?;
            }
            return Ok(());
        }
        if self.open_until_sync.is_some()
            && needs_primary(class)
            && Box::pin(self.leave_open_standby(syncs)).await? == Ended::Failed
        {
            return Ok(());
        }
        let in_tx = self.tx_node.is_some();
        let held = if parse_count == 1 {
            self.held_cursor(in_tx, cursor.as_ref())
        } else {
            None
        };
        // A cursor held elsewhere than the pipeline's open part: that part is ended first, as
        // before a Query. (Sent in the middle of it, the batch left it unsynced: the client's
        // Sync was answered by the cursor's node, and a write in the part never committed.)
        let held = match (held, self.open_until_sync) {
            (Some(n), Some(open)) if n != open => {
                if Box::pin(self.leave_open_part(open, syncs)).await? == Ended::Failed {
                    return Ok(());
                }
                // A transaction the part began keeps the session where it is.
                held.filter(|_| self.tx_node.is_none())
            }
            (held, _) => held,
        };
        match &cursor {
            Some(CursorUse::Close(name)) => self.settings.forget_held(Some(name)),
            Some(CursorUse::CloseAll) => self.settings.forget_held(None),
            _ => {}
        }
        let mut target = if let Some(n) = held {
            self.engage(n);
            if self.is_fenced(n) {
                return Err(fenced_end(n));
            }
            n
        } else if !any_statement {
            // Sync, Flush, Describe/Close of portals: where the session's work is.
            match self
                .open_until_sync
                .or(self.tx_node)
                .or(self.inflight.map(|i| i.0))
            {
                Some(n) => n,
                // The primary, but nothing is written: the session's reads need not wait
                // for the standbys (Class::Session is not a write).
                None => self.route(Class::Session).await?,
            }
        } else {
            self.route(class).await?
        };
        // A statement the batch uses is missing where the pipeline's open part runs: refused
        // there when the part began (a standby behind the primary's DDL), or never parsed there
        // (the part began in a failed transaction). Parsing it now would need a Sync of
        // pgwarden's in the middle of the client's part (`prepare_on`), which would take the
        // part's answers. The part is ended first, as before a write, and from a standby the
        // batch goes to the primary, where the statement is. What follows then is as for a
        // batch outside a pipeline: the unnamed statement's node, a new part's statements.
        // A batch that uses a cursor held there stays with the cursor (which exists nowhere
        // else), and the statement is parsed there again once the part has ended.
        if self.open_until_sync == Some(target)
            && needs.iter().any(|name| {
                self.statements
                    .get(name)
                    .is_some_and(|s| !s.nodes.contains(&target))
            })
        {
            if Box::pin(self.leave_open_part(target, syncs)).await? == Ended::Failed {
                return Ok(());
            }
            // (In a transaction the part began, the session stays where it is.)
            if held.is_none() && self.tx_node.is_none() && self.table().primary != Some(target) {
                target = self.route(Class::Session).await?;
            }
        }
        if binds_unnamed_without_parse && self.open_until_sync.is_none() && self.tx_node.is_none() {
            if let Some(n) = self.unnamed_node {
                target = n;
            }
        }
        if (in_tx || begins) && self.table().primary != Some(target) {
            for name in declared {
                self.settings.note_held(name, target);
            }
            for (name, _) in prepared {
                self.settings.note_prepared(target, name);
            }
        }
        let failed_tx = self.tx_node == Some(target) && self.last_tx_status == b'E';
        if syncs == 0 && self.open_until_sync.is_none() && !failed_tx {
            // This batch opens a pipeline (a part of a long one, or one that ends with Flush):
            // what follows goes where it goes, behind it, and a statement it uses cannot be
            // parsed there in between (that needs a Sync of its own, which would end the
            // client's implicit transaction and swallow its answers). So every statement the
            // session has goes there now.
            needs = self.statements.keys().cloned().collect();
        }
        // A named statement must exist where it is used.
        for name in needs {
            let missing = self
                .statements
                .get(&name)
                .filter(|s| !s.nodes.contains(&target))
                .map(|s| s.parse.clone());
            if let Some(parse) = missing {
                // Refused there (a standby behind the primary's DDL, say): not recorded, so a
                // Bind of it fails as one would expect, and it is tried again later.
                if self.prepare_on(target, &parse).await? {
                    if let Some(s) = self.statements.get_mut(&name) {
                        s.nodes.push(target);
                    }
                }
            }
        }
        // A closed statement is closed everywhere it was parsed: where the batch goes by the
        // client's Close, elsewhere by pgwarden's once the Close is known to have run there.
        // An error earlier in its part makes the server skip it, and the statement lives on
        // (see `settle_closes`). In an open part that is known only at the client's Sync: as
        // before, the statement is closed elsewhere at once, unless the part already failed.
        let mut closed = Vec::new();
        if !closes.is_empty() {
            // Where each Close is: its part (between Syncs), and its place among that part's
            // Closes (whose answers come in order, up to the part's first error).
            let (mut part, mut place) = (0, 0);
            let mut at = Vec::new();
            for f in frames.iter() {
                match f.tag {
                    b'S' => (part, place) = (part + 1, 0),
                    b'C' => {
                        if let Ok((b'S', name)) = msg::target(f.body(), "Close") {
                            at.push((name.to_string(), part, place));
                        }
                        place += 1;
                    }
                    _ => {}
                }
            }
            for name in &closes {
                let Some(&(_, part, place)) = at.iter().find(|(n, _, _)| n == name) else {
                    continue;
                };
                if let Some(s) = self.statements.remove(name) {
                    closed.push(Closed {
                        name: name.clone(),
                        statement: s,
                        part,
                        place,
                    });
                }
            }
        }
        if syncs == 0 {
            let skipped = self.open_until_sync == Some(target) && self.open_failed;
            for Closed {
                name, statement: s, ..
            } in closed.drain(..)
            {
                if skipped {
                    self.statements.insert(name, s);
                    continue;
                }
                for node in s.nodes.iter().filter(|n| **n != target) {
                    self.close_on(*node, &name).await?;
                }
            }
        }
        for (name, parse, c, effect) in parses {
            self.statements.insert(
                name,
                Statement {
                    parse,
                    class: c,
                    nodes: vec![target],
                    effect,
                },
            );
        }
        if parsed_unnamed {
            self.unnamed_node = Some(target);
            match unnamed.filter(|(_, e)| *e != SettingEffect::None) {
                Some(effect) => self.rare().unnamed_effect = Some(effect),
                None => self.forget_unnamed_effect(),
            }
        }
        for f in frames.iter().filter(|f| f.tag == b'P') {
            if let Ok(p) = msg::parse(f.body()) {
                let sql = pgwarden_sql::server_text(p.query, self.enc);
                self.node_refs(target).stats.count(&sql);
            }
        }
        // A batch that leaves the pipeline open is open from its first byte: an error of its
        // own relayed while it is being written (`write_unit`) counts as the open part's.
        if syncs == 0 {
            if self.open_until_sync.is_none() {
                self.open_failed = false;
                self.open_owed = 0;
                self.open_ran = false;
            }
            // (A Bind made a portal there, which the unit might execute.)
            self.open_ran |= part || frames.iter().any(|f| matches!(f.tag, b'E' | b'B'));
            self.open_until_sync = Some(target);
            // After an error the server skips everything up to the Sync: nothing is owed.
            if !self.open_failed {
                self.open_owed = self.open_owed.saturating_add(answers_owed(&frames));
            }
        }
        if !replay.is_empty() {
            self.error_seen = false;
        }
        if !closed.is_empty() {
            // The answers of earlier batches first: the Closes' are counted alone.
            self.drain().await?;
            self.close_answers = Some(Box::new(vec![0]));
        }
        // (See `Conn::refusable`: one statement bound and run, that made nothing the session
        // keeps but named statements, which are made again where it runs again; after a
        // pipeline part that made only statements, whose answers the client has all had.)
        let refusable = (syncs == 1
            && !part
            && class == Class::Read
            && any_statement
            && !in_tx
            && !begins
            && held.is_none()
            && closed.is_empty()
            && replay.is_empty()
            && config_calls.is_empty()
            && !binds_unnamed_without_parse
            && bytes.len() <= REFUSABLE_MAX
            && self.inflight.is_none_or(|(n, p)| n == target && p == 0)
            && self.open_until_sync.is_none_or(|n| {
                n == target
                    && !self.open_ran
                    && !self.open_failed
                    && self.open_owed == 0
                    && self
                        .conns
                        .get(&n)
                        .is_some_and(|c| c.streaming == 0 && c.pooled.backend.buf.is_empty())
            })
            && self.table().primary != Some(target)
            && frames.iter().filter(|f| f.tag == b'B').count() == 1
            && frames.iter().filter(|f| f.tag == b'E').count() == 1)
            .then(|| bytes.clone());
        let sent = self.send(target, bytes, syncs).await?;
        if let Some(unit) = refusable.filter(|_| self.inflight == Some((target, 1))) {
            self.keep_refusable(target, unit);
        }
        self.note_begin(begins, sent);
        if !closed.is_empty() {
            if sent.is_some() {
                self.drain_for_outcome().await?;
            }
            let counts = self.close_answers.take().map(|c| *c).unwrap_or_default();
            Box::pin(self.settle_closes(target, closed, &counts)).await?;
        }
        // A setting's outcome decides whether it makes earlier ones moot: known once its Sync
        // is answered (not in an open pipeline, where it is recorded as it is).
        let mut settle = !replay.is_empty() && syncs > 0;
        if syncs > 0 {
            self.close_open_part();
        }
        if settle {
            settle = self.drain_for_outcome().await?;
            if settle && self.last_tx_status != b'I' {
                // The batch began a transaction: its settings are the transaction's.
                read_back.extend(std::mem::take(&mut replay).into_iter().map(|q| (q, false)));
            }
        }
        // A setting whose batch met an error may have been undone with the batch's implicit
        // transaction, and one in an open part is not known to have lasted.
        if !settle || self.error_seen {
            read_back.extend(std::mem::take(&mut replay).into_iter().map(|q| (q, false)));
        }
        read_back.append(&mut config_calls);
        if let Some(node) = sent {
            for (sql, user_code) in &read_back {
                let sql = pgwarden_sql::server_text(sql, self.enc);
                self.note_settings_changed(node, &sql, *user_code);
            }
        }
        for raw in replay {
            let mut q = BytesMut::new();
            msg::frontend::query(&mut q, &raw);
            let sql = pgwarden_sql::server_text(&raw, self.enc);
            let seq = self
                .settings
                .push_read(q.freeze(), &sql, pgwarden_sql::resets(&sql).kind);
            if settle && !self.error_seen {
                self.settings.settle(seq);
            }
            if let Some(c) = self.conns.get_mut(&target) {
                c.applied = seq;
            }
        }
        Ok(())
    }

    /// Where a batch for the session's transaction on a standby is to be split (see
    /// `dispatch_batch`): just after the Execute of a statement that ends the transaction
    /// (COMMIT, ROLLBACK …), when a statement after it is not a read. None for most batches,
    /// after a look at each Parse's first word.
    fn tx_end_split(&self, frames: &[Frame]) -> Option<usize> {
        let class_of = |f: &Frame, unnamed: Option<Class>| -> Option<Class> {
            match f.tag {
                b'P' => msg::parse(f.body()).ok().map(|p| {
                    classify(&pgwarden_sql::server_text(p.query, self.enc), &*self.ctx).class
                }),
                b'B' => {
                    let (_, stmt) = msg::bind_names(f.body()).ok()?;
                    if stmt.is_empty() {
                        unnamed
                    } else {
                        self.statements.get(stmt).map(|s| s.class)
                    }
                }
                _ => None,
            }
        };
        // The first Execute of a bound statement that ends the transaction.
        let mut unnamed = None;
        // (Statements parsed in this batch are not in `statements` yet.)
        let mut parsed_ends: Vec<&str> = Vec::new();
        let mut ending = false;
        let mut at = None;
        for (i, f) in frames.iter().enumerate() {
            match f.tag {
                b'P' => {
                    let Ok(p) = msg::parse(f.body()) else {
                        continue;
                    };
                    let sql = pgwarden_sql::server_text(p.query, self.enc);
                    let ends = ["commit", "end", "abort", "rollback", "prepare"]
                        .iter()
                        .any(|w| has_first_word(&sql, w));
                    let c = ends.then(|| classify(&sql, &*self.ctx).class);
                    if p.name.is_empty() {
                        unnamed = c;
                    } else if c == Some(Class::End) {
                        parsed_ends.push(p.name);
                    }
                }
                b'B' => {
                    ending = class_of(f, unnamed) == Some(Class::End)
                        || msg::bind_names(f.body())
                            .is_ok_and(|(_, stmt)| parsed_ends.contains(&stmt));
                }
                b'E' if ending => {
                    at = Some(i + 1);
                    break;
                }
                _ => {}
            }
        }
        let at = at?;
        // Anything after it that may not run on the standby outside a transaction.
        let mut unnamed = None;
        frames[at..]
            .iter()
            .any(|f| {
                let c = class_of(f, unnamed);
                if f.tag == b'P' && msg::parse(f.body()).is_ok_and(|p| p.name.is_empty()) {
                    unnamed = c;
                }
                matches!(f.tag, b'P' | b'B') && c != Some(Class::Read)
            })
            .then_some(at)
    }

    /// The pipeline has no open part any more (a Sync ended it, the client's or pgwarden's).
    fn close_open_part(&mut self) {
        self.open_until_sync = None;
        self.open_failed = false;
        self.open_owed = 0;
    }

    /// Before a unit that must run on the primary: if the pipeline's open part runs on a
    /// standby, it is ended there (see `end_open_batch`). `syncs`: the unit ends with a Sync,
    /// which is answered here when the rest of the pipeline is dropped.
    async fn leave_open_standby(&mut self, syncs: usize) -> Result<Ended> {
        let Some(open) = self.open_until_sync else {
            return Ok(Ended::Clean);
        };
        if self.ctx.routes.borrow().primary == Some(open) {
            return Ok(Ended::Clean);
        }
        self.leave_open_part(open, syncs).await
    }

    /// Ends the pipeline's open part on `open` before a unit that must run elsewhere (see
    /// `end_open_batch`); `syncs` as in `leave_open_standby`.
    async fn leave_open_part(&mut self, open: u32, syncs: usize) -> Result<Ended> {
        let ended = self.end_open_batch(open).await?;
        if ended == Ended::Failed && syncs > 0 {
            self.discard_until_sync = false;
            let mut out = BytesMut::new();
            msg::ready_for_query(&mut out, self.last_tx_status);
            self.send_client(&out).await?;
        }
        Ok(ended)
    }

    /// Ends the open part of a pipeline (sent with Flush, not yet with Sync) on `node`: it is
    /// on a standby and what follows writes and must go to the primary, or what follows uses
    /// a cursor held on another node, or a simple Query follows (which a server runs as if a
    /// Sync came first, unless an error came before it).
    /// pgwarden sends its own Sync there, relays every answer up to that Sync's ReadyForQuery
    /// and keeps the ReadyForQuery from the client, who has not sent a Sync. That ends the
    /// open part's implicit transaction (on a standby it only read; before a Query, the one
    /// difference from one server is that a Query that then fails does not undo the open
    /// part's writes). What the client sees is what one server would have shown it:
    /// - an explicit transaction open there (a `BEGIN READ ONLY` in the open part): the
    ///   session stays on the standby, which refuses the write as it must;
    /// - an error in the open part: a server would drop everything up to the client's Sync,
    ///   and so does pgwarden;
    /// - otherwise the pipeline goes on on the primary.
    async fn end_open_batch(&mut self, node: u32) -> Result<Ended> {
        // The ReadyForQuery still due for the pipeline's earlier Syncs come first, relayed with
        // their own bookkeeping: the one kept back must be the answer to pgwarden's Sync. An
        // error after them is the open part's (`open_failed`).
        self.drain().await?;
        let mut out = BytesMut::new();
        msg::frontend::sync(&mut out);
        // Relaying while the Sync waits for room: the node may be blocked on its answers.
        if let Err(e) = self.write_unit(node, &out).await? {
            return Err(self.lost(node, e));
        }
        let open_failed = self.open_failed;
        self.close_open_part();
        let (status, failed) = Box::pin(self.relay_keeping_ready(node)).await?;
        let failed = failed || open_failed;
        self.error_seen |= failed;
        tracing::debug!(node, failed, status = %char::from(status), "ended a pipeline's open part");
        if failed {
            // In an explicit transaction too: the server would drop the rest up to the
            // client's Sync, then answer it with the failed transaction's status ('E'), which
            // is `last_tx_status` now; the session stays on that node until it rolls back.
            self.discard_until_sync = true;
            return Ok(Ended::Failed);
        }
        Ok(Ended::Clean)
    }

    /// Relays `node`'s answers to the client up to its next ReadyForQuery, which is kept back
    /// (the client did not ask for it: pgwarden's own Sync, or the first part of a Query
    /// pgwarden split), and notes what the session must know of them: the node's transaction
    /// status, an error, the node free (nothing in flight there); what came after the
    /// ReadyForQuery (a notice, a notification) goes on to the client. Returns that
    /// ReadyForQuery's status, and whether an error came before it.
    async fn relay_keeping_ready(&mut self, node: u32) -> Result<(u8, bool)> {
        let mut failed = false;
        let status = loop {
            let Some(conn) = self.conns.get_mut(&node) else {
                return Err(fatal(
                    "08006",
                    format!("the connection to node {node} was lost"),
                ));
            };
            let before = conn.streaming;
            let mut streaming = before;
            let mut events = Vec::new();
            let n = scan(&conn.pooled.backend.buf, &mut streaming, &mut events, false).map_err(
                |e| {
                    fatal(
                        "08P01",
                        format!("node {node} sent a malformed message: {e}"),
                    )
                },
            )?;
            let ready = if events.iter().any(|(t, _)| *t == b'Z') {
                find_frame(&conn.pooled.backend.buf[..n], before, b'Z')
            } else {
                None
            };
            for (tag, body) in events.iter().take_while(|(t, _)| *t != b'Z') {
                match tag {
                    b'E' => failed = true,
                    b'S' => {
                        note_param(&mut conn.pooled.backend, &mut self.enc, body);
                    }
                    _ => {}
                }
            }
            match ready {
                Some((start, end)) => {
                    let answers = conn.b().buf.split_to(start);
                    let z = conn.b().buf.split_to(end - start);
                    // What follows the ReadyForQuery starts a new message; it is relayed later.
                    conn.streaming = 0;
                    let status = z.get(5).copied().unwrap_or(b'I');
                    conn.pooled.backend.tx_status = status;
                    if !answers.is_empty() {
                        self.send_client_for(node, &answers, false).await?;
                    }
                    break status;
                }
                None => {
                    conn.streaming = streaming;
                    let answers = conn.b().buf.split_to(n);
                    if !answers.is_empty() {
                        self.send_client_for(node, &answers, streaming > 0).await?;
                    }
                    let Some(conn) = self.conns.get_mut(&node) else {
                        continue;
                    };
                    if let Err(e) = conn.b().fill().await {
                        return Err(self.lost(node, e));
                    }
                }
            }
        };
        self.error_seen |= failed;
        if self.inflight.is_some_and(|(n, _)| n == node) {
            self.inflight = None;
        }
        self.last_tx_status = status;
        self.tx_node = (status != b'I').then_some(node);
        self.sync_engaged();
        if self
            .conns
            .get(&node)
            .is_some_and(|c| !c.pooled.backend.buf.is_empty())
        {
            self.forward(node, true).await?;
        }
        Ok((status, failed))
    }

    /// Parses a statement on `node` (it was parsed elsewhere), swallowing the answers; false
    /// when the node refused it.
    async fn prepare_on(&mut self, node: u32, parse: &Bytes) -> Result<bool> {
        self.drain().await?;
        // In the client's transaction a Parse the node refuses would abort it, and the client
        // would hear of it only as "current transaction is aborted": a savepoint keeps the
        // transaction, and the client's Bind then fails as on a server without the statement.
        let in_tx = self
            .conns
            .get(&node)
            .is_some_and(|c| c.pooled.backend.tx_status == b'T');
        let query = |sql: &str| {
            let mut q = BytesMut::new();
            msg::frontend::query(&mut q, sql);
            q
        };
        if in_tx
            && !self
                .internal(node, query("SAVEPOINT pgwarden_prepare"))
                .await?
        {
            return Ok(false);
        }
        let mut out = BytesMut::from(&parse[..]);
        msg::frontend::sync(&mut out);
        let parsed = self.internal(node, out).await?;
        if in_tx {
            let end = if parsed {
                "RELEASE SAVEPOINT pgwarden_prepare"
            } else {
                "ROLLBACK TO SAVEPOINT pgwarden_prepare; RELEASE SAVEPOINT pgwarden_prepare"
            };
            self.internal(node, query(end)).await?;
        }
        Ok(parsed)
    }

    async fn close_on(&mut self, node: u32, name: &str) -> Result<()> {
        if !self.conns.contains_key(&node) {
            return Ok(());
        }
        // (Another node's answers first: the engagement below must not wait on a client
        // slow to take them.)
        self.drain().await?;
        let Some(_aside) = self.engage_aside(node) else {
            if self.bound_to(node) {
                return Err(fenced_end(node));
            }
            // The node is out of service (it may be shutting down): its connection, and the
            // statement with it, are simply dropped.
            self.conns.remove(&node);
            return Ok(());
        };
        let mut out = BytesMut::new();
        msg::frontend::close(&mut out, b'S', name);
        msg::frontend::sync(&mut out);
        // On the connection as it is: a Close needs none of the session's settings, and a
        // standby that refuses one must not end the session over a Close.
        let Some(conn) = self.conns.get_mut(&node) else {
            return Ok(());
        };
        match conn.b().exchange(&out).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.lost(node, e)),
        }
    }

    /// Statements the client closed in a batch sent to `target`, now answered. `counts`: the
    /// CloseComplete in each of the batch's parts whose ReadyForQuery came. A part's Closes
    /// are answered in order until its first error, after which the server skips the rest of
    /// the part: a Close the server ran is closed on the session's other nodes too; one it
    /// skipped lives on, everywhere it was, as on one server, where a later Bind of it runs
    /// (a Parse of its name in the same part was skipped too: the old statement stays). A part
    /// not answered yet (a COPY under way) counts as run, as before.
    async fn settle_closes(
        &mut self,
        target: u32,
        closed: Vec<Closed>,
        counts: &[u32],
    ) -> Result<()> {
        for c in closed {
            let ran = match counts.get(c.part) {
                Some(&n) if counts.len() > c.part + 1 => c.place < n as usize,
                _ => true,
            };
            if !ran {
                self.statements.insert(c.name, c.statement);
                continue;
            }
            for node in c.statement.nodes.iter().filter(|n| **n != target) {
                self.close_on(*node, &c.name).await?;
            }
        }
        Ok(())
    }

    /// Sends pgwarden's own messages on an idle connection and reads until ReadyForQuery
    /// (keeping the client's notifications, see `Backend::exchange`); false when an error
    /// came back.
    async fn internal(&mut self, node: u32, out: BytesMut) -> Result<bool> {
        let conn = self.conn(node).await?;
        match conn.b().exchange(&out).await {
            Ok(done) => Ok(done.error.is_none()),
            Err(e) => Err(self.lost(node, e)),
        }
    }

    // ---- sending and relaying ------------------------------------------------------------

    /// The session's connection to `node`, bound from the pool when needed, with the session's
    /// settings applied.
    async fn conn(&mut self, node: u32) -> Result<&mut Conn> {
        if self.settings.unread_elsewhere(node) {
            Box::pin(self.read_back_settings()).await?;
        }
        if !self.conns.contains_key(&node) {
            match self.bind(node).await {
                Ok(()) => {}
                Err(e @ PoolError::Full { .. }) => return Err(fatal("53300", e.to_string())),
                Err(PoolError::Backend(e)) => {
                    return Err(fatal("08006", format!("cannot reach node {node}: {e}")))
                }
            }
        }
        self.catch_up(node).await?;
        self.conns
            .get_mut(&node)
            .ok_or_else(|| fatal("XX000", "connection vanished"))
    }

    /// Applies the session's settings the connection to `node` has not had. A node that
    /// refuses one the session has ends the session: what the session runs next must not run
    /// there without it (a `SET ROLE` refused by a new primary that had not replayed the
    /// role's creation when it was promoted would run the session's writes as its login
    /// role). A standby that refuses one is met earlier, and passed over (see
    /// `settings_hold_on`).
    async fn catch_up(&mut self, node: u32) -> Result<()> {
        let last = self.settings.last();
        if self.conns.get(&node).is_none_or(|c| c.applied >= last) {
            return Ok(());
        }
        // Boxed: seldom needed, and kept inline it would enlarge every message's future.
        match Box::pin(self.replay_settings(node, last)).await {
            Ok(None) => Ok(()),
            Ok(Some(refused)) => Err(setting_refused(node, &refused)),
            Err(e) => Err(self.lost(node, e)),
        }
    }

    /// Whether the session's connection to `t` lacks settings recorded since its last use (and
    /// is idle, so that they can be given now: see `settings_hold_on`).
    fn settings_behind(&self, t: u32) -> bool {
        self.conns
            .get(&t)
            .is_some_and(|c| c.applied < self.settings.last())
            && self.inflight.is_none_or(|(n, _)| n != t)
    }

    /// Whether the connection to `t`, a standby a read is routed to, has the session's
    /// settings, given now where it has not. One that refuses a setting the session has (a
    /// `SET ROLE` to a role it has not replayed yet) serves the session's reads again only
    /// once it has replayed what the primary has now, as after a write: the setting held
    /// there before that. A standby lost meanwhile is reported, and passed over.
    async fn settings_hold_on(&mut self, t: u32) -> Result<bool> {
        let last = self.settings.last();
        let Some(_aside) = self.engage_aside(t) else {
            return Ok(false);
        };
        match Box::pin(self.replay_settings(t, last)).await {
            Ok(None) => Ok(true),
            Ok(Some(refused)) => {
                tracing::info!(
                    node = t,
                    "a standby refused one of a session's settings; the primary serves the \
                     session's reads until the standby has replayed further: {refused}"
                );
                if self.wrote != Wrote::Pending {
                    self.wrote = Wrote::At(Instant::now());
                }
                Ok(false)
            }
            Err(e) => {
                self.forget(t, &e);
                Ok(false)
            }
        }
    }

    /// `catch_up`'s work: the settings after the connection's `applied`, up to `last`.
    /// Returns the first setting the session has that the node refused, with its error (the
    /// connection has had what came before it); a lost connection's error.
    async fn replay_settings(
        &mut self,
        node: u32,
        last: u64,
    ) -> std::result::Result<Option<String>, BackendError> {
        let missing = match self.conns.get(&node) {
            Some(c) => self.settings.since(c.applied),
            None => return Ok(None),
        };
        let Some(conn) = self.conns.get_mut(&node) else {
            return Ok(None);
        };
        for r in &missing {
            // The client's bytes, as it sent them: the connection has had the session's
            // earlier settings, its `client_encoding` among them.
            let sql = msg::query_text(&r.query[5..]).unwrap_or_default();
            // One statement (no semicolon, but for a last one) through the extended protocol,
            // which leaves the client's unnamed statement on the connection alone; a text
            // that may hold several as the client sent it. (No encoding puts a `;` byte
            // inside a character.)
            let replayed = if sql
                .trim_ascii_end()
                .strip_suffix(b";")
                .unwrap_or(sql)
                .contains(&b';')
            {
                conn.b().query_value(sql).await
            } else {
                conn.b().statement_value(sql).await
            };
            match replayed {
                Ok(_) => {}
                Err(BackendError::Sql { message, .. }) if r.held => {
                    // Nothing after it is given: later settings may rely on it.
                    conn.applied = r.seq - 1;
                    let sql = String::from_utf8_lossy(sql);
                    return Ok(Some(format!("`{sql}`: {message}")));
                }
                // It failed where the session ran it too, or may have.
                Err(e @ BackendError::Sql { .. }) => {
                    tracing::debug!(node, "replaying a session setting failed: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        conn.applied = last;
        Ok(None)
    }

    /// Takes a connection to `node` from the pool for this session. A node that cannot be
    /// reached is reported.
    async fn bind(&mut self, node: u32) -> std::result::Result<(), PoolError> {
        // Boxed: once per node in a session, and kept inline it would enlarge every message's
        // future.
        Box::pin(self.take_connection(node, None)).await
    }

    /// `bind`'s work, waiting for a connection to come free `wait` at most (None: as long as
    /// the pool's `pool_wait_timeout`).
    async fn take_connection(
        &mut self,
        node: u32,
        wait: Option<Duration>,
    ) -> std::result::Result<(), PoolError> {
        let table = self.ctx.routes.borrow().clone();
        let Some(n) = table.node(node) else {
            return Err(PoolError::Backend(BackendError::Connect {
                addr: format!("node {node}"),
                reason: "not configured".into(),
            }));
        };
        if self.ctx.is_fenced(node) {
            return Err(PoolError::Backend(BackendError::Connect {
                addr: format!("node {node}"),
                reason: "the node is out of service".into(),
            }));
        }
        let spec = connect_spec(&self.ctx, &self.login, node, &n.host, n.port);
        let got = match wait {
            None => self.ctx.pools.get(&spec).await,
            Some(wait) => self.ctx.pools.get_within(&spec, wait).await,
        };
        match got {
            Ok(pooled) => {
                if let Some(r) = self.nodes.iter_mut().find(|r| r.id == node) {
                    r.full_at = None;
                }
                self.conns.insert(
                    node,
                    Conn {
                        pooled,
                        streaming: 0,
                        applied: 0,
                        primary: table.primary == Some(node),
                        writing: false,
                        refusable: None,
                        withheld: None,
                        said_fatal: false,
                    },
                );
                if let Some(c) = self.conns.get_mut(&node) {
                    self.ctx
                        .pools
                        .tellers
                        .note(node, c.pooled.backend.pid, self.pid);
                    c.pooled.backend.busy = Some(self.busy.clone());
                }
                Ok(())
            }
            Err(e) => {
                // A node that refuses this login (for lack of connections, by its
                // pg_hba.conf, …) is alive: not reported, or one client would keep it suspect
                // for every session, with a health check for each of its reads.
                if capacity(&e) {
                    let i = self.node_index(node);
                    self.nodes[i].full_at = Some(Instant::now());
                } else if let PoolError::Backend(b) = &e {
                    if b.says_node_down() {
                        self.ctx.report(node);
                    } else {
                        tracing::info!(
                            node,
                            user = self.login.user(),
                            database = self.login.database(),
                            "the node refused this session's login; other nodes serve its reads for {REFUSAL_MEMORY:?}: {b}"
                        );
                        let i = self.node_index(node);
                        self.nodes[i].refused_at = Some(Instant::now());
                    }
                }
                Err(e)
            }
        }
    }

    /// Writes a unit to `node`; its `syncs` ReadyForQuery are then due from it. A simple query
    /// bound for a standby whose connection turns out dead goes to the primary instead: the
    /// client has seen nothing of it yet. Returns the node it went to, or None when it went
    /// nowhere (the pool was full and the client has its 53300).
    async fn send(&mut self, mut node: u32, data: Bytes, syncs: usize) -> Result<Option<u32>> {
        loop {
            if let Some((n, _)) = self.inflight {
                if n != node {
                    self.drain().await?;
                }
            }
            if !self.conns.contains_key(&node) {
                match self.bind(node).await {
                    Ok(()) => {}
                    Err(e) if capacity(&e) => {
                        // Out of connections: this statement fails, the session goes on.
                        self.drain().await?;
                        let mut out = BytesMut::new();
                        let text = e.to_string();
                        msg::error_response(&mut out, &ErrorFields::error("53300", &text));
                        self.error_seen = true;
                        for _ in 0..syncs {
                            msg::ready_for_query(&mut out, self.last_tx_status);
                        }
                        self.send_client(&out).await?;
                        return Ok(None);
                    }
                    Err(e) => return Err(fatal("08006", format!("cannot reach node {node}: {e}"))),
                }
            }
            let conn = self.conn(node).await?;
            let (pid, key) = (conn.b().pid, conn.b().key);
            // Cancel requests go to the backend about to run this; rewritten (with an
            // allocation) only when that backend changes, not for every statement.
            if self.cancel_for != (pid, key) {
                if let Some(n) = self.ctx.routes.borrow().node(node) {
                    self.cancel.lock().unwrap_or_else(|p| p.into_inner()).target =
                        Some(CancelTarget {
                            host: n.host.clone(),
                            port: n.port,
                            pid,
                            key,
                        });
                    self.cancel_for = (pid, key);
                }
            }
            match self.write_unit(node, &data).await? {
                Ok(()) => break,
                Err(e)
                    if self.recoverable(node)
                        && data.first() == Some(&b'Q')
                        && self.inflight.is_none() =>
                {
                    self.forget(node, &e);
                    node = self.ctx.routes.borrow().primary.ok_or_else(no_primary)?;
                }
                Err(e) => return Err(self.lost(node, e)),
            }
        }
        // (A count of Syncs in flight: a client cannot send 2^32 of them unanswered.)
        let syncs = u32::try_from(syncs).unwrap_or(u32::MAX);
        let pending = match self.inflight {
            Some((n, p)) if n == node => p.saturating_add(syncs),
            _ => syncs,
        };
        self.inflight = if pending > 0 || syncs == 0 {
            Some((node, pending))
        } else {
            None
        };
        Ok(Some(node))
    }

    /// Writes `data` to `node`. Whenever the write has to wait for room and the node has
    /// answers waiting, they are relayed to the client first: a server whose answers back up
    /// stops reading, and a long pipeline would leave both sides waiting forever.
    async fn write_unit(
        &mut self,
        node: u32,
        data: &[u8],
    ) -> Result<std::result::Result<(), BackendError>> {
        let mut done = 0;
        loop {
            let Some(conn) = self.conns.get_mut(&node) else {
                return Err(fatal("XX000", "connection vanished"));
            };
            conn.writing = true;
            match conn.b().write_some(data, &mut done).await {
                Ok(true) => {
                    conn.writing = false;
                    return Ok(Ok(()));
                }
                Ok(false) => {}
                Err(e) => return Ok(Err(e)),
            }
            match conn.b().try_fill() {
                Ok(0) => {}
                // Relayed, but the unit is not out yet: nothing may be sent in between (no
                // write done) and the node stays engaged.
                Ok(_) => self.forward(node, false).await?,
                Err(e) => return Ok(Err(e)),
            }
        }
    }

    /// Whether the session can go on without `node`: a standby it is not in a transaction,
    /// COPY or unfinished batch on.
    fn recoverable(&self, node: u32) -> bool {
        let primary = self.ctx.routes.borrow().primary;
        Some(node) != primary
            && !self.conns.get(&node).is_some_and(|c| c.primary)
            && self.tx_node != Some(node)
            && !self.sticky
            && self.copy_in.is_none()
            && self.open_until_sync != Some(node)
            && !self.settings.unread_on(node)
    }

    /// Whether the session is in the middle of something on `node`: a transaction, COPY, an
    /// unfinished batch, a statement in flight, state pinned there (LISTEN, SQL PREPARE,
    /// temporary tables), or settings changed there in a transaction, not read back yet.
    fn bound_to(&self, node: u32) -> bool {
        self.tx_node == Some(node)
            || (self.sticky && self.conns.get(&node).is_some_and(|c| c.primary))
            || self.copy_in.is_some()
            || self.open_until_sync == Some(node)
            || self.inflight.is_some_and(|(i, _)| i == node)
            || self.settings.unread_on(node)
    }

    /// Drops a dead connection to a standby and has the monitor check that node now.
    fn forget(&mut self, node: u32, e: &BackendError) {
        tracing::warn!(node, "connection to a standby lost: {e}");
        self.conns.remove(&node);
        if self.inflight.is_some_and(|(n, _)| n == node) {
            self.inflight = None;
        }
        // (The session keeps its node: suspected now, it serves none of its reads until a
        // health check finds it well, see `RouteTable::session_lb`.)
        self.ctx.report(node);
    }

    async fn write_node(&mut self, node: u32, data: &[u8]) -> Result<()> {
        let Some(conn) = self.conns.get_mut(&node) else {
            return Err(fatal(
                "08P01",
                "COPY data for a node the session is not connected to",
            ));
        };
        if let Err(e) = conn.b().write(data).await {
            return Err(self.lost(node, e));
        }
        Ok(())
    }

    /// Relays until the units in flight are answered, to learn their outcome; false when that
    /// cannot be known now (COPY began: the rest comes from the client).
    async fn drain_for_outcome(&mut self) -> Result<bool> {
        while self.copy_in.is_none() && self.inflight.is_some_and(|(_, pending)| pending > 0) {
            self.relay_once().await?;
        }
        Ok(self.copy_in.is_none())
    }

    /// Relays until no ReadyForQuery is due. (After a Flush nothing is due: the node's answers
    /// keep flowing from the main loop until the client's Sync.)
    async fn drain(&mut self) -> Result<()> {
        while self.inflight.is_some_and(|(_, pending)| pending > 0) {
            self.relay_once().await?;
        }
        Ok(())
    }

    /// Reads once from the node in flight and forwards what arrived.
    async fn relay_once(&mut self) -> Result<()> {
        let node = self.inflight.map(|(n, _)| n);
        if node.is_some_and(|n| !self.conns.contains_key(&n)) {
            self.inflight = None;
            return Ok(());
        }
        self.read_node(node, true).await
    }

    /// Forwards the complete (or streamable) part of `node`'s buffer to the client, noting
    /// ReadyForQuery, CopyInResponse, ParameterStatus and errors. `settle`: the session may
    /// then act on what it learnt (a write done, the node free), which it must not while a
    /// unit is half written.
    async fn forward(&mut self, node: u32, settle: bool) -> Result<()> {
        let Some(conn) = self.conns.get_mut(&node) else {
            return Ok(());
        };
        let mut events = std::mem::take(&mut self.events);
        let open = self.open_until_sync == Some(node);
        // (Where the first whole message of what is relayed now begins.)
        let skip = conn.streaming;
        let backend_pid = conn.pooled.backend.pid;
        let n = scan(
            &conn.pooled.backend.buf,
            &mut conn.streaming,
            &mut events,
            open || self.close_answers.is_some(),
        )
        .map_err(|e| {
            fatal(
                "08P01",
                format!("node {node} sent a malformed message: {e}"),
            )
        })?;
        let mut out = conn.b().buf.split_to(n);
        let owed = conn.streaming > 0;
        let mut notification = false;
        let error_seen = self.error_seen;
        // Why a standby refused the read in `refusable`, if it did, and whether as a write
        // (not a SERIALIZABLE default).
        let mut refused: Option<(String, bool)> = None;
        for (tag, body) in events.drain(..) {
            if let Some(counts) = self.close_answers.as_deref_mut() {
                match tag {
                    b'3' => {
                        if let Some(n) = counts.last_mut() {
                            *n += 1;
                        }
                    }
                    b'Z' => counts.push(0),
                    _ => {}
                }
            }
            match tag {
                b'Z' => {
                    let status = body.first().copied().unwrap_or(b'I');
                    conn.pooled.backend.tx_status = status;
                    if let Some((n, p)) = self.inflight.as_mut() {
                        if *n == node {
                            *p = p.saturating_sub(1);
                            if *p == 0 {
                                // A batch that ended with Flush may be pipelined behind: its
                                // answers are still to be relayed.
                                let open = self.open_until_sync == Some(node);
                                self.inflight = open.then_some((node, 0));
                                self.last_tx_status = status;
                                if status != b'I' {
                                    self.tx_node = Some(node);
                                } else if !open {
                                    // (Behind an open part a BEGIN may already be on its
                                    // way: that part's Sync tells.)
                                    self.tx_node = None;
                                    if let Some(r) = self.rare.as_mut().filter(|r| r.renew_pool) {
                                        r.renew_pool = false;
                                        self.ctx.pools.renew();
                                    }
                                }
                                self.copy_in = None;
                            }
                        }
                    }
                }
                b'G' => self.copy_in = Some(node),
                b'A' => notification = true,
                b'S' => {
                    note_param(&mut conn.pooled.backend, &mut self.enc, &body);
                }
                b'E' => {
                    self.error_seen = true;
                    if self.open_until_sync == Some(node)
                        && self.inflight.is_none_or(|(n, p)| n != node || p == 0)
                    {
                        // The server skips the rest of the open part: nothing more is owed.
                        self.open_failed = true;
                        self.open_owed = 0;
                    }
                    let fields = msg::error_fields(&body);
                    // (With no primary now, a failover under way, the refusal is the answer.)
                    if self.refusable
                        && refused_on_standby(&fields)
                        && self.ctx.routes.borrow().primary.is_some_and(|p| p != node)
                    {
                        let why = field(&fields, b'M').unwrap_or_default().to_string();
                        refused = Some((why, !refuses_serializable(&fields)));
                    }
                    let sev = severity(&fields);
                    if sev == "FATAL" {
                        tracing::debug!(node, inflight = ?self.inflight, tx_node = ?self.tx_node, open = ?self.open_until_sync, "relaying a FATAL error from the server");
                        conn.said_fatal = true;
                    }
                    if refuses_serializable(&fields)
                        && !self.settings.serializable()
                        && !self.settings.isolation_chosen()
                    {
                        // SERIALIZABLE by the server's, database's or role's default, which
                        // pgwarden does not see (it follows what the session sets): this read
                        // failed, the session's next ones stay on the primary.
                        tracing::warn!(node, "a standby refused a SERIALIZABLE transaction (default_transaction_isolation of the server, database or role): this session reads on the primary from now on");
                        self.settings.begin_serializable();
                    }
                    let stats = self.ctx.node_stats(node);
                    let counter = match sev {
                        "FATAL" => &stats.fatal,
                        "PANIC" => &stats.panic,
                        _ => &stats.error,
                    };
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                // (Noted only for the open part of a pipeline, see `scan`.)
                t if ANSWERS.contains(&t)
                    && self.inflight.is_none_or(|(n, p)| n != node || p == 0) =>
                {
                    self.open_owed = self.open_owed.saturating_sub(1);
                }
                _ => {}
            }
        }
        self.events = events;
        if notification {
            let tellers = &self.ctx.pools.tellers;
            told_pids(&mut out, skip, |pid| {
                if pid == backend_pid {
                    Some(self.pid)
                } else {
                    tellers.told(node, pid)
                }
            });
        }
        // A refusal seen now, or before and held back until its ReadyForQuery (off the hot
        // path: `refusal_step`).
        if refused.is_some() || self.holding {
            match self.refusal_step(node, refused, out, owed, settle, error_seen) {
                RefusalStep::Hold => return Ok(()),
                RefusalStep::Retry { unit, why, learn } => {
                    return Box::pin(self.run_refused_on_primary(node, unit, why, learn)).await;
                }
                RefusalStep::Relay(all) => out = all,
            }
        }
        if !out.is_empty() {
            self.drop_refusable();
            self.send_client_for(node, &out, owed).await?;
        }
        if settle {
            self.note_write_done();
            self.sync_engaged();
        }
        Ok(())
    }

    /// What `forward` does with a refusal of the read that may run again (`Conn::refusable`),
    /// seen in `out` now (`refused`: why, whether as a write) or held back before
    /// (`Conn::withheld`): run it again once its answer is all in, hold back what came until
    /// then, or relay (what was held, then `out`) when it cannot run again.
    #[cold]
    fn refusal_step(
        &mut self,
        node: u32,
        refused: Option<(String, bool)>,
        out: BytesMut,
        owed: bool,
        settle: bool,
        error_seen: bool,
    ) -> RefusalStep {
        let withheld = if std::mem::take(&mut self.holding) {
            self.conns.get_mut(&node).and_then(|c| c.withheld.take())
        } else {
            None
        };
        let refusal = match (refused, &withheld) {
            (_, Some(w)) => Some((w.why.clone(), w.learn, w.error_seen)),
            (Some((why, learn)), None) => Some((why, learn, error_seen)),
            (None, None) => None,
        };
        if let Some((why, learn, error_seen)) =
            refusal.filter(|_| settle && !owed && self.refusable && self.batch_frames.is_empty())
        {
            let ended = out.len() >= 6 && out[out.len() - 6..out.len() - 1] == [b'Z', 0, 0, 0, 5];
            if ended && self.inflight.is_none() && self.last_tx_status == b'I' {
                // The whole answer is in, and the client has heard nothing of it.
                if let Some(unit) = self.take_refusable(node) {
                    self.error_seen = error_seen;
                    self.note_write_done();
                    self.sync_engaged();
                    return RefusalStep::Retry { unit, why, learn };
                }
            }
            if !ended && self.inflight == Some((node, 1)) {
                // A server sends an error at once, its ReadyForQuery after: what came is held
                // back until that does (relayed first of all should the client go on meanwhile).
                let mut answer = withheld.map(|w| w.answer).unwrap_or_default();
                answer.extend_from_slice(&out);
                if let Some(c) = self.conns.get_mut(&node) {
                    self.holding = true;
                    c.withheld = Some(Box::new(Withheld {
                        answer,
                        why,
                        learn,
                        error_seen,
                    }));
                    return RefusalStep::Hold;
                }
                return RefusalStep::Relay(answer);
            }
        }
        match withheld {
            Some(w) => {
                let mut all = w.answer;
                all.extend_from_slice(&out);
                RefusalStep::Relay(all)
            }
            None => RefusalStep::Relay(out),
        }
    }

    /// A read a standby refused as a write runs again on the primary, before the client has
    /// heard anything of it, as one server would have run it: a view whose function calls
    /// `nextval` or writes a table, which pgwarden cannot see in the text, say. Nothing of it
    /// lasted on the standby (a hot standby writes nothing; named statements it parsed there
    /// are closed). Its texts go to the primary from now on, for every session on the
    /// database (`Ctx::refused`), until a reload.
    #[cold]
    async fn run_refused_on_primary(
        &mut self,
        standby: u32,
        unit: Bytes,
        why: String,
        learn: bool,
    ) -> Result<()> {
        let mut rest = BytesMut::from(&unit[..]);
        let mut frames = Vec::new();
        while let Some(f) = frame::split_frame(&mut rest, usize::MAX)? {
            frames.push(f);
        }
        // Its text: the Query's, or that of the one statement the batch binds (its other
        // Parses ran nothing, and are not taken for writes).
        let mut text: Option<Vec<u8>> = None;
        let mut parsed: Vec<(String, Vec<u8>)> = Vec::new();
        for f in &frames {
            match f.tag {
                b'Q' => text = Some(msg::query_text(f.body())?.to_vec()),
                b'P' => {
                    let p = msg::parse(f.body())?;
                    parsed.push((p.name.to_string(), p.query.to_vec()));
                }
                b'B' => {
                    let (_, stmt) = msg::bind_names(f.body())?;
                    if let Some((_, t)) = parsed.iter().rev().find(|(n, _)| n == stmt) {
                        text = Some(t.clone());
                    } else if let Some(s) = self.statements.get_mut(stmt) {
                        // Parsed before, as a read: a write from now on, in this session.
                        s.class = combine(s.class, Class::Write);
                        text = parse_sql(&s.parse);
                    }
                }
                _ => {}
            }
        }
        let parsed: Vec<String> = parsed
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| !name.is_empty())
            .collect();
        let database = self.login.database().to_string();
        // (A SERIALIZABLE default is the session's, its role's or its database's: the session
        // reads on the primary from now on, others need not.)
        let remembered = !learn
            || text.as_ref().is_none_or(|t| {
                let sql = pgwarden_sql::server_text(t, self.enc);
                self.ctx.refused.note(&database, &sql)
            });
        if !learn {
            tracing::info!(
                node = standby,
                database,
                "standby node {standby} refused a read ({why}): it runs again on the primary"
            );
        } else if remembered {
            tracing::info!(node = standby, database, "standby node {standby} refused a read as a write ({why}): it runs again on the primary, where statements like it go from now on (until a reload)");
        } else {
            tracing::warn!(node = standby, database, "standby node {standby} refused a read as a write ({why}): it runs again on the primary; no more such statements can be remembered, so this one will be tried on a standby again (list its function in proxy.write_functions, or mark it /*NO LOAD BALANCE*/)");
        }
        // What the batch parsed by name is closed on the standby: it is made again where the
        // batch runs now, and only there (the standby may have made some of it, not all).
        for name in &parsed {
            self.statements.remove(name);
            self.close_on(standby, name).await?;
        }
        self.retrying = true;
        let done = if frames.first().is_some_and(|f| f.tag == b'Q') {
            self.run_again(unit, text.as_ref()).await
        } else {
            self.batch.extend_from_slice(&unit);
            self.batch_frames = frames;
            Box::pin(self.dispatch_batch(1, false)).await
        };
        self.retrying = false;
        done
    }

    /// A refused Query, on the primary (see `run_refused_on_primary`).
    async fn run_again(&mut self, query: Bytes, text: Option<&Vec<u8>>) -> Result<()> {
        let target = self.route(Class::Write).await?;
        if let Some(t) = text {
            let sql = pgwarden_sql::server_text(t, self.enc);
            self.node_refs(target).stats.count(&sql);
        }
        let sent = self.send(target, query, 1).await?;
        if sent.is_some() {
            self.unnamed_node = sent;
        }
        Ok(())
    }

    /// `unit` (a read just sent to `node`) may run again elsewhere (see `Conn::refusable`).
    fn keep_refusable(&mut self, node: u32, unit: Bytes) {
        if let Some(c) = self.conns.get_mut(&node) {
            c.refusable = Some(unit);
            self.refusable = true;
        }
    }

    /// The read that may run again elsewhere, refused by `node`.
    fn take_refusable(&mut self, node: u32) -> Option<Bytes> {
        self.refusable = false;
        self.conns.get_mut(&node)?.refusable.take()
    }

    /// No read in flight may run again elsewhere now (some of its answer was relayed, or the
    /// client went on): its bytes are let go (they may hold the client's whole read buffer).
    #[inline]
    fn drop_refusable(&mut self) {
        if std::mem::take(&mut self.refusable) {
            // (It is the node's in flight, unless its answer is all in.)
            match self.inflight.and_then(|(n, _)| self.conns.get_mut(&n)) {
                Some(c) => c.refusable = None,
                None => self.conns.values_mut().for_each(|c| c.refusable = None),
            }
        }
    }

    /// A read's class, unless a standby refused its text as a write before (see
    /// `run_refused_on_primary`) or it is being run again after such a refusal: then a write.
    #[inline]
    fn unless_refused(&self, class: Class, sql: &str) -> Class {
        if class == Class::Read
            && (self.retrying
                || (self.ctx.refused.any()
                    && self.ctx.refused.contains(self.login.database(), sql)))
        {
            Class::Write
        } else {
            class
        }
    }

    /// Which connection to watch while nothing is in flight: the primary of a session that
    /// listens for notifications (LISTEN pins the session there).
    fn idle_watch_node(&self) -> Option<u32> {
        if !self.sticky {
            return None;
        }
        let primary = self.ctx.routes.borrow().primary?;
        self.conns.contains_key(&primary).then_some(primary)
    }

    /// Reads once from `node` and forwards what arrived: answers in flight, or asynchronous
    /// messages (NOTIFY, notices, parameter changes) on an idle connection. `wait`: for bytes
    /// to arrive; otherwise only what has (the main loop waits for the node to be readable in
    /// its select, and reads here after it: relaying is not cancel-safe, since bytes taken from
    /// the node and half written to the client would be lost if another branch won).
    async fn read_node(&mut self, node: Option<u32>, wait: bool) -> Result<()> {
        let Some(node) = node else { return Ok(()) };
        let Some(conn) = self.conns.get_mut(&node) else {
            return Ok(());
        };
        let read = if wait {
            conn.b().fill().await
        } else {
            match conn.b().try_fill() {
                Ok(0) => return Ok(()),
                other => other,
            }
        };
        if let Err(e) = read {
            let mid_message = conn.streaming > 0 || !conn.b().buf.is_empty();
            let pending = self
                .inflight
                .filter(|(n, _)| *n == node)
                .map_or(0, |(_, p)| p);
            if pending > 0 && !mid_message && self.recoverable(node) {
                // A standby died under a read: this read fails, the session goes on.
                self.forget(node, &e);
                let mut out = BytesMut::new();
                let text = format!("the connection to standby node {node} was lost: {e}; the statement did not complete (the session goes on, without that node)");
                msg::error_response(&mut out, &ErrorFields::error("08006", &text));
                self.error_seen = true;
                for _ in 0..pending {
                    msg::ready_for_query(&mut out, b'I');
                }
                self.last_tx_status = b'I';
                return self.send_client(&out).await;
            }
            return Err(self.lost(node, e));
        }
        self.forward(node, true).await
    }

    /// Writes `node`'s answers to the client. Blocked on the client, the session still works
    /// for `node`: a fence of it must not wait for this write (see `FenceWatch::watching`).
    /// `owed`: `data` ends inside one of `node`'s messages (its `Conn::streaming`, which the
    /// caller holds), noted in `client_owed`.
    async fn send_client_for(&mut self, node: u32, data: &[u8], owed: bool) -> Result<()> {
        let busy = Busy::enter(Some(&self.busy), node);
        write_client(&mut self.client, &mut self.client_cut, &self.busy, data).await?;
        drop(busy);
        self.client_owed = owed.then_some(node);
        Ok(())
    }

    async fn send_client(&mut self, data: &[u8]) -> Result<()> {
        write_client(&mut self.client, &mut self.client_cut, &self.busy, data).await
    }

    /// A backend connection failed: forget it, have the monitor look at the node, and end the
    /// session (a client can never be left waiting).
    fn lost(&mut self, node: u32, e: BackendError) -> End {
        let told = self.conns.remove(&node).is_some_and(|c| c.said_fatal);
        if self.inflight.is_some_and(|(n, _)| n == node) {
            self.inflight = None;
        }
        self.set_engaged(None);
        self.ctx.report(node);
        if told {
            tracing::info!(node, "the server ended the session's connection with a FATAL error, relayed: the session ends");
            return End::Told;
        }
        tracing::warn!(node, "backend connection lost: {e}");
        fatal(
            "08006",
            format!("the connection to PostgreSQL node {node} was lost: {e}"),
        )
    }

    /// Connections go back to the pool when they are idle and clean; the rest are closed.
    fn release(&mut self) {
        if let Some(r) = self.rare.as_mut().filter(|r| r.renew_pool) {
            // An ALTER … SET whose ReadyForQuery the session did not wait for (the client
            // left): renewed now, to be sure.
            r.renew_pool = false;
            self.ctx.pools.renew();
        }
        self.set_engaged(None);
        // The client's cancel key no longer reaches these connections: one put back in the
        // pool may run another client's query before this session's end is complete. A
        // cancel request already on its way, or one whose forward gave up before the server
        // took it, could still reach one (the server acts on it when it gets it): then none
        // goes back to the pool.
        let cancelling = {
            let mut slot = self.cancel.lock().unwrap_or_else(|p| p.into_inner());
            slot.target = None;
            slot.may_still_cancel()
        };
        self.cancel_for = (0, 0);
        let clean_session =
            self.inflight.is_none() && self.copy_in.is_none() && !cancelling && !self.process_state;
        for (node, conn) in self.conns.drain() {
            let mut pooled = conn.pooled;
            pooled.backend.busy = None;
            if !(clean_session
                && !conn.writing
                && !self.ctx.is_fenced(node)
                && conn.streaming == 0
                && pooled.backend.tx_status == b'I'
                && pooled.backend.buf.is_empty())
            {
                continue;
            }
            let ctx = self.ctx.clone();
            tokio::spawn(async move {
                // (Notifications that came meanwhile were for this session's client: such a
                // connection is closed, not handed to another client.)
                // (Bounded: a node that hangs meanwhile must not keep the pool's slot.)
                let reset =
                    tokio::time::timeout(RESET_TIMEOUT, pooled.backend.query_value("DISCARD ALL"))
                        .await;
                if matches!(reset, Ok(Ok(_)))
                    && pooled.backend.tx_status == b'I'
                    && pooled.backend.buf.is_empty()
                {
                    ctx.pools.put(pooled);
                }
            });
        }
    }
}

/// Out of connections (the pool's, or the server's `max_connections`): the statement fails
/// with 53300, the session goes on.
fn capacity(e: &PoolError) -> bool {
    match e {
        PoolError::Full { .. } => true,
        PoolError::Backend(BackendError::Refused { code, .. }) => {
            code == "53300" || code == "53400"
        }
        PoolError::Backend(_) => false,
    }
}

/// SET or RESET (not SET LOCAL / SET TRANSACTION / SET CONSTRAINTS, which belong to a
/// transaction): a setting the session keeps, which can be replayed on another connection.
/// `SET SESSION …` is one (pgjdbc's setTransactionIsolation sends `SET SESSION
/// CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL …` this way; a standby takes it).
fn is_setting(sql: &str) -> bool {
    let mut words = sql.split_whitespace();
    let first = words.next().unwrap_or("");
    if first.eq_ignore_ascii_case("reset") {
        return !sql.contains(';');
    }
    first.eq_ignore_ascii_case("set")
        && !sql.contains(';')
        && !words.next().is_some_and(|w| {
            ["local", "transaction", "constraints"]
                .iter()
                .any(|k| w.eq_ignore_ascii_case(k))
        })
}

/// Writes to the client; `cut` is left set if the write is dropped half way (the session
/// ended under it: no FATAL may follow mid-message).
async fn write_client(
    client: &mut ClientWriter,
    cut: &mut bool,
    busy: &AtomicU64,
    data: &[u8],
) -> Result<()> {
    *cut = true;
    client
        .write_all(data, busy)
        .await
        .map_err(|_| End::ClientGone)?;
    *cut = false;
    Ok(())
}

/// A ParameterStatus (`body`) from `backend`, noted there; its `client_encoding` decides how
/// the session reads the client's texts (`enc`).
fn note_param(backend: &mut Backend, enc: &mut pgwarden_sql::TextEncoding, body: &[u8]) {
    if let Some((k, rest)) = frame::cstr(body) {
        if let Some((v, _)) = frame::cstr(rest) {
            backend.set_param(k, v);
            if k == "client_encoding" {
                *enc = backend.text_encoding();
            }
        }
    }
}

/// The query text of a Parse message (whole frame, tag and length included), as the client
/// sent it.
fn parse_sql(frame: &Bytes) -> Option<Vec<u8>> {
    msg::parse(frame.get(5..)?).ok().map(|p| p.query.to_vec())
}

fn mask_has(mask: u64, node: u32) -> bool {
    mask & crate::backend::node_bit(node) != 0
}

/// A standby's refusal of a read that one server would have run: it wrote (25006: a view
/// whose function calls `nextval`, say), or it was SERIALIZABLE by a default pgwarden does
/// not see (`refuses_serializable`).
fn refused_on_standby(fields: &[(u8, String)]) -> bool {
    fields.iter().any(|(k, v)| *k == b'C' && v == "25006") || refuses_serializable(fields)
}

/// A hot standby's refusal of a SERIALIZABLE transaction because of the session's default
/// isolation (in English; the SQLSTATE alone, feature_not_supported, says too little).
fn refuses_serializable(fields: &[(u8, String)]) -> bool {
    fields.iter().any(|(k, v)| *k == b'C' && v == "0A000")
        && fields
            .iter()
            .any(|(k, v)| *k == b'M' && v.contains("serializable mode in a hot standby"))
        // Because of the default (its detail says so), not a `SET TRANSACTION ISOLATION LEVEL
        // SERIALIZABLE` of the client's own, which is refused without a detail.
        && fields
            .iter()
            .any(|(k, v)| *k == b'D' && v.contains("default_transaction_isolation"))
}

/// Whether a client's startup parameters make its transactions SERIALIZABLE by default:
/// `options=-c default_transaction_isolation=serializable` (libpq's PGOPTIONS, or
/// `--default_transaction_isolation=…`), or the parameter itself among the startup parameters.
/// None when they do not say (the server's, database's or role's default applies).
fn startup_isolation(params: &[(String, String)]) -> Option<bool> {
    let is_serializable = |v: &str| {
        v.trim_matches(|c: char| c == '\'' || c.is_whitespace())
            .eq_ignore_ascii_case("serializable")
    };
    // A startup parameter of its own is applied after `options`, and wins.
    if let Some((_, v)) = params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("default_transaction_isolation"))
    {
        return Some(is_serializable(v));
    }
    params
        .iter()
        .filter(|(k, _)| k == "options")
        .flat_map(|(_, v)| option_settings(v))
        .rfind(|(name, _)| name == "default_transaction_isolation")
        .map(|(_, v)| is_serializable(&v))
}

/// The settings in a startup packet's `options`, read as PostgreSQL reads them
/// (`pg_split_opts`, then its `-c` / `--` switches): words split on whitespace, a backslash
/// keeping the next character; `-c name=value`, `-cname=value` or `--name=value`, with
/// dashes in the name read as underscores.
fn option_settings(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        // (C's isspace: ASCII whitespace and the vertical tab.)
        if c.is_ascii_whitespace() || c == '\x0b' {
            words.extend(word.take());
            continue;
        }
        let w = word.get_or_insert_with(String::new);
        match c {
            '\\' => w.extend(chars.next()),
            c => w.push(c),
        }
    }
    words.extend(word);
    // Then as getopt reads the server's switches (`process_postgres_switches`): switches may
    // be grouped (`-ec name=value`); one that takes an argument takes the rest of its word,
    // or the next word. Only `-c` and `--` name a setting.
    const TAKES_ARGUMENT: &str = "BcCDdfhkNprStvW-";
    let mut out = Vec::new();
    let mut it = words.iter();
    while let Some(w) = it.next() {
        let Some(switches) = w.strip_prefix('-').filter(|s| !s.is_empty() && *s != "-") else {
            // Not a switch (the server refuses it), or `--`, the end of the switches.
            if w == "--" {
                break;
            }
            continue;
        };
        for (i, c) in switches.char_indices() {
            if !TAKES_ARGUMENT.contains(c) {
                continue;
            }
            let rest = &switches[i + c.len_utf8()..];
            let argument = if rest.is_empty() {
                it.next().map(String::as_str)
            } else {
                Some(rest)
            };
            if let Some((name, value)) = argument
                .filter(|_| c == 'c' || c == '-')
                .and_then(|a| a.split_once('='))
            {
                out.push((
                    name.replace('-', "_").to_ascii_lowercase(),
                    value.to_string(),
                ));
            }
            break;
        }
    }
    out
}

/// How long a session's last words (a FATAL error) wait for a client that does not read.
const FATAL_WRITE_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long an ending session waits for the rest of a message it relayed in part (see
/// `Session::finish_owed`).
const OWED_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What a step's fence watch needs (`Session::fence_watch`): the session's busy marks, its
/// wake-up and the fenced set.
struct FenceWatch {
    busy: Arc<AtomicU64>,
    bell: Arc<Bell>,
    ctx: Arc<Ctx>,
    /// The client's socket, to see whether a client whose writes wait reads at all.
    client_fd: std::os::fd::RawFd,
}

impl FenceWatch {
    /// Runs one step of the session's work (a client message handled, a node's answer
    /// relayed) while watching for fences: a fence of a node the step is blocked on (its bit
    /// in `busy`: reading from it, writing to it, or writing its answers to the client) ends
    /// the session at once; any other fence is returned, to be dealt with once the step is
    /// done. The step is lent pinned, not given: an async fn keeps room for an argument moved
    /// into a local, and the step's future would be held twice.
    async fn watching<T>(
        &self,
        mut fut: std::pin::Pin<&mut impl Future<Output = Result<T>>>,
    ) -> Result<(T, Option<Arc<Vec<u32>>>)> {
        // Most steps finish without waiting, and then there is no fence to watch for.
        if let Poll::Ready(r) = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
        {
            return Ok((r?, None));
        }
        let mut pending = None;
        let mut stalled = None;
        loop {
            tokio::select! {
                biased;
                r = &mut fut => return Ok((r?, pending)),
                _ = self.bell.rung() => {
                    let set = self.ctx.fenced.borrow().clone();
                    let mask = self.busy.load(Ordering::Relaxed);
                    if let Some(n) = set.iter().find(|n| mask_has(mask, **n)) {
                        return Err(fenced_end(*n));
                    }
                    pending = Some(set);
                }
                waited = std::future::poll_fn(|cx| self.poll_stalled(&mut stalled, cx)) => {
                    return Err(stalled_end(waited));
                }
            }
        }
    }

    /// Ready with the wait once, during an online recovery's 2nd stage, the step's write to
    /// the client has waited longer than the idle limit (and `STALL_FLOOR`) while the client
    /// took nothing: a client that has stopped reading is as idle as one that sends nothing.
    /// One that keeps reading, even slowly, is busy: once its receive buffer is full, its TCP
    /// stack acknowledges more only as it reads (`stream::bytes_acked`), and each look that
    /// finds more starts the wait again. Polled with the step, in the same pass, so it sees
    /// each change the step makes to the mask; a hold set or lifted rings the bell.
    fn poll_stalled(
        &self,
        since: &mut Option<(std::pin::Pin<Box<tokio::time::Sleep>>, Option<u64>)>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::time::Duration> {
        let limit = match self.ctx.hold_limit() {
            Some(l) if self.busy.load(Ordering::Relaxed) & CLIENT_STALLED != 0 => l,
            _ => {
                *since = None;
                return Poll::Pending;
            }
        };
        // (pgpool's -1, "at once", is meant for sessions that send nothing.)
        let wait = limit.max(STALL_FLOOR);
        let (timer, taken) = since.get_or_insert_with(|| {
            let taken = crate::stream::bytes_acked(self.client_fd);
            (Box::pin(tokio::time::sleep(wait)), taken)
        });
        while timer.as_mut().poll(cx).is_ready() {
            let now = crate::stream::bytes_acked(self.client_fd);
            if now.is_none() || now <= *taken {
                return Poll::Ready(wait);
            }
            *taken = now;
            timer.as_mut().reset(tokio::time::Instant::now() + wait);
        }
        Poll::Pending
    }
}

/// The session held node `n`, which was just taken out of service.
fn fenced_end(n: u32) -> End {
    fatal(
        "57P01",
        format!("terminating connection: PostgreSQL node {n} was taken out of service by pgwarden (failover, fencing or detach); reconnect to continue on the current primary"),
    )
}

/// The shortest wait of a write to the client that makes its session idle in an online
/// recovery's 2nd stage, whatever the idle limit (see `FenceWatch::poll_stalled`). A client
/// that reads is seen reading only in steps of a sixteenth of its receive buffer: one that
/// read fast before (its buffer grown by the kernel towards `tcp_rmem`'s largest, 6 to 32 MiB)
/// and now reads 256 KB/s is seen every 2 to 8 s. Ten seconds keeps such a client, and costs a
/// 2nd stage at most that long for one that stopped reading (`recovery_timeout` before).
const STALL_FLOOR: std::time::Duration = std::time::Duration::from_secs(10);

/// An online recovery's 2nd stage needs every session closed, and this one's client has read
/// nothing for `waited` (it is seldom told: pgwarden was in the middle of a message to it).
fn stalled_end(waited: std::time::Duration) -> End {
    fatal(
        "57P01",
        format!("terminating connection: pgwarden is recovering a node and closes sessions whose client has read nothing for {} s (recovery.client_idle_limit_in_recovery)", waited.as_secs_f64()),
    )
}

/// An online recovery's 2nd stage needs every session closed, and this one was idle.
fn recovery_end(limit: std::time::Duration) -> End {
    // (pgpool's -1 is kept as a limit of 1 ns: "at once".)
    let idle = if limit < std::time::Duration::from_millis(1) {
        "at once (recovery.client_idle_limit_in_recovery = -1)".to_string()
    } else {
        format!(
            "for more than {} s (recovery.client_idle_limit_in_recovery)",
            limit.as_secs_f64()
        )
    };
    fatal(
        "57P01",
        format!("terminating connection: pgwarden is recovering a node and closes sessions idle {idle}; reconnect to continue"),
    )
}

fn no_primary() -> End {
    // Not FATAL in PostgreSQL terms, but the session cannot go on writing.
    fatal(
        "08006",
        "no primary is available: writes cannot be served right now (pgwarden node list shows why)",
    )
}

fn no_node() -> End {
    fatal(
        "08006",
        "no PostgreSQL node is available (pgwarden node list shows why)",
    )
}

/// Whether a query inside a transaction may create state that outlives it.
/// Whether the first word of `sql` is `word` (lower case).
fn has_first_word(sql: &str, word: &str) -> bool {
    sql.trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case(word))
}

fn may_hold_state(sql: &str) -> bool {
    let first = sql
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    [
        "listen",
        "unlisten",
        "prepare",
        "execute",
        "create",
        "declare",
        "discard",
        "deallocate",
        "set",
        "reset",
    ]
    .iter()
    .any(|w| first.eq_ignore_ascii_case(w))
        || sql.trim_start().starts_with('/')
        || sql.trim_start().starts_with('-')
        // Several statements: one of them may (`SELECT 1; SET search_path = app`).
        || pgwarden_sql::may_be_several(sql)
        || pgwarden_sql::calls_set_config(sql)
}

/// The more restrictive of two classes, for a batch of several statements.
fn combine(a: Class, b: Class) -> Class {
    match (a, b) {
        (Class::Read, x) | (x, Class::Read) => x,
        (Class::Sticky, _) | (_, Class::Sticky) => Class::Sticky,
        _ => Class::Write,
    }
}

/// A drained read buffer is given back (see `ClientReader::read_into`): a session holds
/// none while it waits.
fn give_back_drained(cbuf: &mut BytesMut) {
    if cbuf.is_empty() && cbuf.capacity() > 0 {
        *cbuf = BytesMut::new();
    }
}

async fn read_client(
    reader: &mut ClientReader,
    buf: &mut BytesMut,
    partial: bool,
    limit: std::time::Duration,
) -> Result<()> {
    let n = if partial {
        // A message has started: the rest must follow promptly (a client that sends one byte a
        // minute holds nothing for long). Boxed: an idle session keeps no timer.
        match Box::pin(tokio::time::timeout(limit, reader.read_into(buf))).await {
            Ok(r) => r,
            Err(_) => {
                return Err(fatal(
                    "08P01",
                    "incomplete message from client: the rest did not arrive in time",
                ))
            }
        }
    } else {
        reader.read_into(buf).await
    };
    match n {
        Ok(0) | Err(_) => Err(End::ClientGone),
        Ok(_) => Ok(()),
    }
}

/// What the idle loop does under the fence watch (`Session::idle_step_watching_fences`).
#[derive(Debug, Clone, Copy)]
enum IdleStep {
    /// Relay what the node (the one answering, or a listening session's primary) sent.
    Relay(Option<u32>),
    /// Relay notifications parked in that connection's buffer by `Backend::exchange`.
    Parked(u32),
    /// Read back settings changed in a transaction that has ended (`read_back_settings`).
    ReadBack,
}

/// Field `code` of an ErrorResponse's fields (`msg::error_fields`).
fn field(fields: &[(u8, String)], code: u8) -> Option<&str> {
    fields
        .iter()
        .find(|(k, _)| *k == code)
        .map(|(_, v)| v.as_str())
}

/// An error's severity, as the server names it whatever the client's language.
fn severity(fields: &[(u8, String)]) -> &str {
    field(fields, b'V')
        .or_else(|| field(fields, b'S'))
        .unwrap_or("")
}

/// The SQLSTATE and message of the first FATAL ErrorResponse whole in `buf`.
fn server_fatal(buf: &[u8]) -> Option<(String, String)> {
    let mut pos = 0;
    while let Some((start, end)) = find_frame(buf, pos, b'E') {
        let fields = buf
            .get(start + 5..end)
            .map(msg::error_fields)
            .unwrap_or_default();
        if severity(&fields) == "FATAL" {
            return Some((
                field(&fields, b'C').unwrap_or("57P01").to_string(),
                field(&fields, b'M').unwrap_or_default().to_string(),
            ));
        }
        pos = end;
    }
    None
}

/// NotificationResponses in `out` from `from` on carry the pid their sender's client was
/// told instead of the server process's, where `told` knows it: the session's own (its own
/// NOTIFY; clients skip their own notifications by it: psycopg's `info.backend_pid`, asyncpg's
/// `get_server_pid()`, pgjdbc's `getBackendPID()`), or another session's through pgwarden
/// (`pool::Tellers`). Others (a client connected to the server itself) are left as they came.
fn told_pids(out: &mut [u8], from: usize, told: impl Fn(i32) -> Option<i32>) {
    let mut pos = from;
    while let Some((start, end)) = find_frame(out, pos, b'A') {
        if let Some(field) = out.get_mut(start + 5..start + 9) {
            let mut pid = [0u8; 4];
            pid.copy_from_slice(field);
            if let Some(t) = told(i32::from_be_bytes(pid)) {
                field.copy_from_slice(&t.to_be_bytes());
            }
        }
        pos = end;
    }
}

/// A read longer than this is not kept to run again elsewhere (`Conn::refusable`): its bytes
/// would keep the client's read buffer while the read runs.
const REFUSABLE_MAX: usize = 64 * 1024;

/// Whether the session's connection holds temporary objects (see `read_back_settings`).
const HAS_TEMP_OBJECTS: &str = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class \
     WHERE relnamespace = pg_catalog.pg_my_temp_schema())";

/// PostgreSQL's own limit on a client's message (`PQ_LARGE_MESSAGE_LIMIT`, 1 GB, with its
/// type byte): a longer one is a protocol error at once.
const PG_MESSAGE_LIMIT: usize = 0x3fff_ffff + 1;

/// At most this long to read and drop the rest of an oversized message (`skip_oversized`).
const OVERSIZED_SKIP_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads and drops the `rest` of a client's message over `proxy.max_message_size`, so that
/// the client, which writes all of it before it reads, hears the FATAL that says why: closed
/// with its bytes unread, the socket would be reset and the FATAL lost ("server closed the
/// connection unexpectedly"). Bounded: each read by `limit` (a client's partial message),
/// all of it by `OVERSIZED_SKIP_LIMIT`, in a 64 KiB buffer.
async fn skip_oversized(reader: &mut ClientReader, mut rest: usize, limit: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + OVERSIZED_SKIP_LIMIT;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while rest > 0 {
        buf.clear();
        let read = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + limit),
            reader.read_into(&mut buf),
        );
        match read.await {
            Ok(Ok(n)) if n > 0 => rest = rest.saturating_sub(n),
            _ => return,
        }
    }
}

/// How `Session::end_open_batch` left the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The rest of the pipeline may go where it must.
    Clean,
    /// The open part failed: the rest is dropped up to the client's Sync.
    Failed,
}

/// Whether a statement of this class may only run on the primary (and so may not join a
/// pipeline left open on a standby).
/// Whether a unit of this class may write data (read-your-writes then waits for the standbys):
/// not a read, a setting, nor a read-only transaction.
fn writes(class: Class) -> bool {
    !matches!(
        class,
        Class::Read | Class::PrimaryRead | Class::Session | Class::Begin { read_only: true }
    )
}

fn needs_primary(class: Class) -> bool {
    matches!(
        class,
        Class::Write | Class::PrimaryRead | Class::Sticky | Class::Begin { read_only: false }
    )
}

/// The first whole message tagged `tag` in `buf`, whose messages start at `from`: its start
/// and end.
fn find_frame(buf: &[u8], from: usize, tag: u8) -> Option<(usize, usize)> {
    let mut pos = from;
    while let Some(head) = buf.get(pos..pos + 5) {
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let end = pos + 1 + usize::try_from(len).ok()?;
        if end > buf.len() {
            return None;
        }
        if head[0] == tag {
            return Some((pos, end));
        }
        pos = end;
    }
    None
}

/// The longest a connection's reset (`DISCARD ALL`) may take before it is put back in the
/// pool; past it the connection is closed, and its slot freed.
const RESET_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How much of a server message the session reads (ReadyForQuery, CopyInResponse,
/// ParameterStatus, ErrorResponse) is kept whole; the rest of a longer one is relayed as it
/// comes (see `scan`).
const KEPT_MAX: usize = 64 * 1024;

/// A batch without a Sync is sent on in parts of about this size.
const BATCH_PART: usize = 256 * 1024;

/// The messages that end the server's answer to a Parse (ParseComplete), Bind
/// (BindComplete), Close (CloseComplete), Describe (ParameterDescription, then RowDescription
/// or NoData) or Execute (CommandComplete, EmptyQueryResponse, PortalSuspended); an error
/// ends them all, up to the Sync.
const ANSWERS: &[u8] = b"123tTnCIs";

/// How many `ANSWERS` a server owes for these frontend messages (see `Session::open_owed`).
fn answers_owed(frames: &[Frame]) -> u32 {
    let n: usize = frames
        .iter()
        .map(|f| match f.tag {
            b'P' | b'B' | b'C' | b'E' => 1,
            // A statement's: its parameters, then its row or NoData; a portal's: its row.
            b'D' if f.body().first() == Some(&b'S') => 2,
            b'D' => 1,
            _ => 0,
        })
        .sum();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Walks the backend bytes in `buf`: returns how many can be forwarded now and collects the
/// messages the session needs to see. Large messages (rows, COPY data) are forwarded as their
/// bytes arrive; `streaming` carries what is left of one across calls. `answers`: the
/// answers that end a Parse, Bind, Describe, Close or Execute (`ANSWERS`) are noted too, as
/// each begins, with an empty body (for the open part of a pipeline, see `open_owed`).
fn scan(
    buf: &[u8],
    streaming: &mut usize,
    events: &mut Vec<(u8, Bytes)>,
    answers: bool,
) -> std::result::Result<usize, ProtocolError> {
    let mut pos = 0;
    loop {
        if *streaming > 0 {
            let take = (*streaming).min(buf.len() - pos);
            pos += take;
            *streaming -= take;
            if *streaming > 0 {
                return Ok(pos);
            }
        }
        let rest = &buf[pos..];
        if rest.len() < 5 {
            return Ok(pos);
        }
        let tag = rest[0];
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
        if len < 4 {
            return Err(ProtocolError::Length(i64::from(len)));
        }
        let total = len as usize + 1;
        if answers && ANSWERS.contains(&tag) {
            events.push((tag, Bytes::new()));
        }
        if matches!(tag, b'Z' | b'G' | b'S' | b'E' | b'A') {
            // What the session reads of these is in their head: an error's severity, SQLSTATE
            // and message come first. Past `KEPT_MAX`, the head is kept and the rest streamed
            // as a row is: a `RAISE` of 400 MB costs no more memory than a row of 400 MB.
            let keep = total.min(KEPT_MAX);
            if matches!(tag, b'Z' | b'G') && keep < total {
                return Err(ProtocolError::TooLarge {
                    len: total,
                    max: KEPT_MAX,
                });
            }
            if rest.len() < keep {
                return Ok(pos);
            }
            let body = match (tag, rest.get(5)) {
                // The hot path: ReadyForQuery, without an allocation.
                (b'Z', Some(b'I')) => Bytes::from_static(b"I"),
                (b'Z', Some(b'T')) => Bytes::from_static(b"T"),
                (b'Z', Some(b'E')) => Bytes::from_static(b"E"),
                _ => Bytes::copy_from_slice(&rest[5..keep]),
            };
            events.push((tag, body));
            if rest.len() >= total {
                pos += total;
            } else {
                *streaming = total - rest.len();
                pos += rest.len();
                return Ok(pos);
            }
        } else if rest.len() >= total {
            pos += total;
        } else {
            *streaming = total - rest.len();
            pos += rest.len();
            return Ok(pos);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    /// What a hot standby answers to reads one server would have run (PostgreSQL 15's fields),
    /// and refusals that are the client's own to hear.
    #[test]
    fn refusals_of_a_standby_that_one_server_would_not_give() {
        let f = |fields: &[(u8, &str)]| -> Vec<(u8, String)> {
            fields.iter().map(|(k, v)| (*k, v.to_string())).collect()
        };
        for (fields, refused) in [
            (
                f(&[
                    (b'S', "ERROR"),
                    (b'C', "25006"),
                    (b'M', "cannot execute nextval() in a read-only transaction"),
                ]),
                true,
            ),
            (
                f(&[
                    (b'S', "ERROR"),
                    (b'C', "25006"),
                    (b'M', "cannot execute INSERT in a read-only transaction"),
                ]),
                true,
            ),
            (
                f(&[
                    (b'S', "ERROR"),
                    (b'C', "0A000"),
                    (b'M', "cannot use serializable mode in a hot standby"),
                    (
                        b'D',
                        "\"default_transaction_isolation\" is set to \"serializable\".",
                    ),
                ]),
                true,
            ),
            // The client's own SERIALIZABLE: no detail (and the session reads on the primary).
            (
                f(&[
                    (b'S', "ERROR"),
                    (b'C', "0A000"),
                    (b'M', "cannot use serializable mode in a hot standby"),
                ]),
                false,
            ),
            (
                f(&[
                    (b'S', "ERROR"),
                    (b'C', "42P01"),
                    (b'M', "relation \"v\" does not exist"),
                ]),
                false,
            ),
            (
                f(&[
                    (b'S', "ERROR"),
                    (b'C', "57014"),
                    (b'M', "canceling statement due to user request"),
                ]),
                false,
            ),
            (
                f(&[
                    (b'S', "ERROR"),
                    (b'C', "40001"),
                    (b'M', "canceling statement due to conflict with recovery"),
                ]),
                false,
            ),
            (f(&[]), false),
        ] {
            assert_eq!(refused_on_standby(&fields), refused, "{fields:?}");
        }
    }

    /// A notification of the session's own backend carries the pid the client was told, one
    /// of another session's backend that session's; any other, or anything else, is left as
    /// it came, and a cut message is not read past.
    #[test]
    fn notifications_carry_the_pid_their_sender_was_told() {
        let (backend, client) = (4242i32, 0x4000_0007i32);
        let (peer, peer_told, other) = (555i32, 0x4000_0009i32, 777i32);
        let told = |pid: i32| match pid {
            p if p == backend => Some(client),
            p if p == peer => Some(peer_told),
            _ => None,
        };
        let notify = |pid: i32| {
            let mut body = pid.to_be_bytes().to_vec();
            body.extend(b"ch\0payload\0");
            msg(b'A', &body)
        };
        // The rest of a row streamed before, then whole messages.
        let mut buf = b"tail".to_vec();
        buf.extend(msg(b'C', b"NOTIFY\0"));
        let own_at = buf.len();
        buf.extend(notify(backend));
        let peer_at = buf.len();
        buf.extend(notify(peer));
        let other_at = buf.len();
        buf.extend(notify(other));
        // A DataRow whose bytes happen to look like the backend's pid after its tag.
        let row_at = buf.len();
        let mut row = backend.to_be_bytes().to_vec();
        row.extend([0, 0]);
        buf.extend(msg(b'D', &row));
        let cut_at = buf.len();
        buf.extend(&notify(backend)[..7]);
        told_pids(&mut buf, 4, told);
        let pid_at = |at: usize| i32::from_be_bytes(buf[at + 5..at + 9].try_into().unwrap());
        assert_eq!(pid_at(own_at), client);
        assert_eq!(pid_at(peer_at), peer_told);
        assert_eq!(pid_at(other_at), other);
        assert_eq!(pid_at(row_at), backend, "a row is not a notification");
        assert_eq!(
            &buf[cut_at..],
            &notify(backend)[..7],
            "a cut message is left alone"
        );
        assert_eq!(&buf[..4], b"tail");
        // Nothing to walk, or a broken length: no panic.
        told_pids(&mut [], 0, told);
        let mut broken = vec![b'A', 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4];
        told_pids(&mut broken, 0, told);
        told_pids(&mut broken, 100, told);
    }

    #[test]
    fn find_frame_finds_the_first_whole_message_of_a_kind() {
        let mut buf = msg(b'C', b"SELECT 1\0");
        let z_at = buf.len();
        buf.extend(msg(b'Z', b"I"));
        buf.extend(msg(b'N', b"notice"));
        assert_eq!(find_frame(&buf, 0, b'Z'), Some((z_at, z_at + 6)));
        // From inside a message that was streamed: the walk starts where the next one does.
        assert_eq!(find_frame(&buf, z_at, b'Z'), Some((z_at, z_at + 6)));
        assert_eq!(find_frame(&buf, 0, b'E'), None);
        // A cut message is not found, nor anything after it.
        assert_eq!(find_frame(&buf[..z_at + 5], 0, b'Z'), None);
        // A broken length stops the walk instead of reading past the buffer.
        let mut broken = vec![b'C', 0xff, 0xff, 0xff, 0xff];
        broken.extend(msg(b'Z', b"I"));
        assert_eq!(find_frame(&broken, 0, b'Z'), None);
    }

    #[test]
    fn what_may_not_join_a_pipeline_left_open_on_a_standby() {
        for (class, primary_only) in [
            (Class::Read, false),
            (Class::Write, true),
            (Class::PrimaryRead, true),
            (Class::Sticky, true),
            (Class::Begin { read_only: false }, true),
            (Class::Begin { read_only: true }, false),
            (Class::Session, false),
            (Class::End, false),
            (Class::InTransaction, false),
        ] {
            assert_eq!(needs_primary(class), primary_only, "{class:?}");
        }
    }

    #[test]
    fn scan_streams_large_rows_and_catches_ready_for_query() {
        let big = msg(b'D', &vec![7u8; 1000]);
        let mut all = big.clone();
        all.extend(msg(b'C', b"SELECT 1\0"));
        all.extend(msg(b'Z', b"I"));
        // Feed it in pieces, as a socket would.
        let mut streaming = 0;
        let mut events = Vec::new();
        let mut forwarded = 0;
        let mut buf: Vec<u8> = Vec::new();
        for chunk in all.chunks(300) {
            buf.extend_from_slice(chunk);
            let n = scan(&buf, &mut streaming, &mut events, false).unwrap();
            forwarded += n;
            buf.drain(..n);
        }
        assert_eq!(forwarded, all.len());
        assert_eq!(events, vec![(b'Z', Bytes::from_static(b"I"))]);
        assert_eq!(streaming, 0);
    }

    /// An error of any size costs at most `KEPT_MAX` kept: its head (severity, SQLSTATE, the
    /// start of its message) is read, the rest relayed as it comes.
    #[test]
    fn scan_keeps_the_head_of_a_long_error_and_streams_the_rest() {
        let mut body = b"SERROR\0VERROR\0CP0001\0M".to_vec();
        body.extend(vec![b'x'; 3 * KEPT_MAX]);
        body.extend(b"\0\0");
        let mut all = msg(b'E', &body);
        all.extend(msg(b'Z', b"I"));
        let mut streaming = 0;
        let mut events = Vec::new();
        let mut forwarded = 0;
        let mut buf: Vec<u8> = Vec::new();
        let mut most = 0;
        for chunk in all.chunks(4096) {
            buf.extend_from_slice(chunk);
            most = most.max(buf.len());
            let n = scan(&buf, &mut streaming, &mut events, false).unwrap();
            forwarded += n;
            buf.drain(..n);
        }
        assert_eq!(forwarded, all.len());
        assert!(most <= KEPT_MAX + 4096, "{most} bytes held at once");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].0, b'E');
        assert_eq!(events[0].1.len(), KEPT_MAX - 5);
        let fields = msg::error_fields(&events[0].1);
        assert_eq!(fields[2], (b'C', "P0001".to_string()));
        assert_eq!(events[1], (b'Z', Bytes::from_static(b"I")));
        // A short one is kept whole.
        let short = msg(b'E', b"SERROR\0CP0001\0Mno\0\0");
        events.clear();
        assert_eq!(
            scan(&short, &mut 0, &mut events, false).unwrap(),
            short.len()
        );
        assert_eq!(&events[0].1[..], b"SERROR\0CP0001\0Mno\0\0");
        // A ReadyForQuery that long is no server's.
        let mut z = vec![b'Z'];
        z.extend(((KEPT_MAX + 10) as i32).to_be_bytes());
        assert!(scan(&z, &mut 0, &mut events, false).is_err());
    }

    #[test]
    fn scan_waits_for_a_whole_ready_for_query() {
        let z = msg(b'Z', b"T");
        let mut streaming = 0;
        let mut events = Vec::new();
        assert_eq!(
            scan(&z[..4], &mut streaming, &mut events, false).unwrap(),
            0
        );
        assert_eq!(
            scan(&z, &mut streaming, &mut events, false).unwrap(),
            z.len()
        );
        assert!(scan(&[b'D', 0, 0, 0, 1], &mut streaming, &mut events, false).is_err());
    }

    #[test]
    fn answers_owed_counts_what_ends_each_message() {
        let frame = |tag: u8, body: &[u8]| Frame {
            tag,
            bytes: Bytes::from(msg(tag, body)),
        };
        let parse = frame(b'P', b"\0SELECT 1\0\0\0");
        let bind = frame(b'B', b"\0\0\0\0\0\0\0\0");
        let execute = frame(b'E', b"\0\0\0\0\0");
        let describe_statement = frame(b'D', b"Ss\0");
        let describe_portal = frame(b'D', b"P\0");
        let close = frame(b'C', b"Ss\0");
        let flush = frame(b'H', b"");
        let sync = frame(b'S', b"");
        for (frames, want, why) in [
            (vec![], 0, "nothing sent"),
            (vec![flush.clone()], 0, "Flush: no answer of its own"),
            (
                vec![parse.clone(), describe_statement.clone(), flush.clone()],
                3,
                "asyncpg's prepare: ParseComplete, ParameterDescription, RowDescription",
            ),
            (
                vec![parse, bind, describe_portal, execute, flush.clone()],
                4,
                "ParseComplete, BindComplete, RowDescription, CommandComplete",
            ),
            (
                vec![close, sync],
                1,
                "CloseComplete (the Sync is counted apart)",
            ),
        ] {
            assert_eq!(answers_owed(&frames), want, "{why}");
        }
    }

    #[test]
    fn scan_notes_answers_only_when_asked() {
        let mut all = msg(b'1', b"");
        all.extend(msg(b'2', b""));
        all.extend(msg(b'D', &[7u8; 100]));
        all.extend(msg(b'N', b"SNOTICE\0\0"));
        all.extend(msg(b'C', b"SELECT 1\0"));
        for (answers, want) in [(false, ""), (true, "12C")] {
            let (mut streaming, mut events) = (0, Vec::new());
            // The CommandComplete is cut: noted as it begins, not again when it ends.
            let n = scan(&all[..all.len() - 3], &mut streaming, &mut events, answers).unwrap();
            assert_eq!(n, all.len() - 3);
            let rest = scan(&all[n..], &mut streaming, &mut events, answers).unwrap();
            assert_eq!(rest, 3);
            let tags: String = events.iter().map(|(t, _)| char::from(*t)).collect();
            assert_eq!(tags, want);
        }
    }

    #[test]
    fn settings_replayable_as_said() {
        for (sql, want) in [
            ("SET search_path = app", true),
            ("set SESSION statement_timeout = '5s'", true),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                true,
            ),
            ("RESET ALL", true),
            ("SET LOCAL work_mem = '1MB'", false),
            ("SET TRANSACTION READ ONLY", false),
            ("SET CONSTRAINTS ALL DEFERRED", false),
            ("SET a = 1; SET b = 2", false),
            ("SELECT 1", false),
        ] {
            assert_eq!(is_setting(sql), want, "{sql}");
        }
    }

    #[test]
    fn serializable_from_the_startup_packet() {
        let p = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        for (params, want) in [
            (p("options", "-c default_transaction_isolation=serializable"), true),
            (p("options", "-c default_transaction_isolation=SERIALIZABLE"), true),
            (p("options", "--default-transaction-isolation=serializable"), true),
            (p("options", "-cdefault_transaction_isolation=serializable"), true),
            (p("options", "  -c   Default-Transaction-Isolation=serializable  "), true),
            // (`-c name = value` is refused by the server: no value.)
            (p("options", "-c default_transaction_isolation = serializable"), false),
            (p("options", "--default_transaction_isolation=serializable -c work_mem=64MB"), true),
            (p("options", "-c default_transaction_isolation='serializable'"), true),
            // Grouped switches, as getopt reads them: `-e` takes nothing, `-c` the rest.
            (p("options", "-ec default_transaction_isolation=serializable"), true),
            (p("options", "-ecdefault_transaction_isolation=serializable"), true),
            // The word after a switch that takes an argument is that argument.
            (p("options", "-S -cdefault_transaction_isolation=serializable"), false),
            (p("options", "-S 1024 -c default_transaction_isolation=serializable"), true),
            // After `--`, nothing is a switch.
            (p("options", "-- -c default_transaction_isolation=serializable"), false),
            // Words are split where C's isspace says, the vertical tab included.
            (
                p(
                    "options",
                    "-c default_transaction_isolation=read\\ committed -c\x0bdefault_transaction_isolation=serializable",
                ),
                true,
            ),
            // The last one counts.
            (
                p(
                    "options",
                    "-c default_transaction_isolation=serializable -c default_transaction_isolation=repeatable\\ read",
                ),
                false,
            ),
            (p("options", "-c default_transaction_isolation=repeatable\\ read"), false),
            (p("options", "-c work_mem=64MB"), false),
            (p("default_transaction_isolation", "serializable"), true),
            // A parameter of its own wins over `options`.
            (
                vec![
                    ("options".into(), "-c default_transaction_isolation=serializable".into()),
                    ("default_transaction_isolation".into(), "read committed".into()),
                ],
                false,
            ),
            (p("application_name", "serializable"), false),
            (vec![], false),
        ] {
            assert_eq!(
                startup_isolation(&params).unwrap_or(false),
                want,
                "{params:?}"
            );
        }
        // Said or not said: a database default applies only when not said.
        for (params, want) in [
            (p("options", "-c work_mem=64MB"), None),
            (p("application_name", "x"), None),
            (
                p(
                    "options",
                    "-c default_transaction_isolation=read\\ committed",
                ),
                Some(false),
            ),
        ] {
            assert_eq!(startup_isolation(&params), want, "{params:?}");
        }
    }

    #[test]
    fn batch_class() {
        assert_eq!(combine(Class::Read, Class::Read), Class::Read);
        assert_eq!(combine(Class::Read, Class::Write), Class::Write);
        assert_eq!(combine(Class::Sticky, Class::Read), Class::Sticky);
        assert_eq!(
            combine(Class::Begin { read_only: true }, Class::Read),
            Class::Begin { read_only: true }
        );
        assert_eq!(combine(Class::Session, Class::Write), Class::Write);
    }
}
