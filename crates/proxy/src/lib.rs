//! pgwarden's front door: clients connect to it as to PostgreSQL.
//!
//! * [`client`]: the startup packet, SSL/GSSENC refusals, cancel requests, client
//!   authentication (hba rules; trust, md5, SCRAM-SHA-256 against pool_passwd or the password
//!   file), the welcome messages.
//! * [`session`]: the session loop: each simple query or extended-protocol batch is classified
//!   (`pgwarden-sql`), routed (`pgwarden_core::route`), sent, and its answers streamed back.
//! * [`pool`]: backend connections, reused across sessions with DISCARD ALL between them.
//! * [`show`]: pgpool's `SHOW POOL_*` commands.
//!
//! Decisions live in `pgwarden-core` and `pgwarden-sql`; this crate does the I/O.

pub mod backend;
pub mod client;
pub mod pool;
pub mod session;
mod settings;
pub mod show;
pub mod stream;

use pgwarden_core::config::{Config, ProxyConfig};
use pgwarden_core::passfile::PassFile;
use pgwarden_core::route::RouteTable;
use pgwarden_monitor::MonitorHandle;
use pgwarden_wire::auth::Secret;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::Poll;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Where a cancel request for a session goes: the backend running its query.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub host: String,
    pub port: u16,
    pub pid: i32,
    pub key: i32,
}

/// A session's cancel key's slot: where a cancel request goes now, how many are on their
/// way to a server, and whether one was given up on before the server took it. A session
/// that ends while one is on its way, or after one was given up on, closes its connections
/// rather than pool them: the server could act on it during another client's query.
#[derive(Debug, Default)]
pub struct CancelState {
    pub target: Option<CancelTarget>,
    pub forwarding: u32,
    pub uncertain: bool,
}

impl CancelState {
    /// Whether a cancel request for this session may still reach one of its connections.
    pub fn may_still_cancel(&self) -> bool {
        self.forwarding > 0 || self.uncertain
    }
}

pub type CancelSlot = Arc<Mutex<CancelState>>;

/// Per-node counters for SHOW POOL_NODES and SHOW POOL_BACKEND_STATS.
#[derive(Debug, Default)]
pub struct NodeStats {
    pub select: AtomicU64,
    pub insert: AtomicU64,
    pub update: AtomicU64,
    pub delete: AtomicU64,
    pub ddl: AtomicU64,
    pub other: AtomicU64,
    pub error: AtomicU64,
    pub fatal: AtomicU64,
    pub panic: AtomicU64,
}

impl NodeStats {
    /// Counts one statement by its first keyword.
    pub fn count(&self, sql: &str) {
        let text = sql.trim_start().as_bytes();
        let word = &text[..text
            .iter()
            .position(|b| !b.is_ascii_alphabetic())
            .unwrap_or(text.len())];
        let counter = match word.len() {
            6 if word.eq_ignore_ascii_case(b"select") => &self.select,
            4 if word.eq_ignore_ascii_case(b"with") => &self.select,
            6 if word.eq_ignore_ascii_case(b"insert") => &self.insert,
            6 if word.eq_ignore_ascii_case(b"update") => &self.update,
            6 if word.eq_ignore_ascii_case(b"delete") => &self.delete,
            _ if [
                &b"create"[..],
                b"alter",
                b"drop",
                b"truncate",
                b"comment",
                b"grant",
                b"revoke",
            ]
            .iter()
            .any(|k| word.eq_ignore_ascii_case(k)) =>
            {
                &self.ddl
            }
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Functions known not to write, from the primary's catalog and the configuration.
#[derive(Debug, Default)]
pub struct Functions {
    builtin: HashSet<String>,
    /// Every function of `pg_catalog`, of any volatility: a call to another is the database's
    /// own code (`Verdict::runs_user_code`). Empty until read: every call is then taken so.
    all_builtin: HashSet<String>,
    read_only: HashSet<String>,
    write: HashSet<String>,
}

/// The catalog as it stands now, read only when the classifier actually looks a function up:
/// most statements name none (plain SELECTs, transaction control are decided before that).
impl pgwarden_sql::FunctionCatalog for Ctx {
    fn is_read_only(&self, schema: Option<&str>, name: &str) -> bool {
        self.functions().is_read_only(schema, name)
    }

    fn is_builtin(&self, schema: Option<&str>, name: &str) -> bool {
        self.functions().is_builtin(schema, name)
    }
}

impl pgwarden_sql::FunctionCatalog for Functions {
    fn is_read_only(&self, schema: Option<&str>, name: &str) -> bool {
        let qualified = schema.map(|s| format!("{s}.{name}"));
        let listed = |set: &HashSet<String>| {
            set.contains(name) || qualified.as_ref().is_some_and(|q| set.contains(q))
        };
        if listed(&self.write) {
            return false;
        }
        if listed(&self.read_only) {
            return true;
        }
        matches!(schema, None | Some("pg_catalog")) && self.builtin.contains(name)
    }

    fn is_builtin(&self, schema: Option<&str>, name: &str) -> bool {
        matches!(schema, None | Some("pg_catalog")) && self.all_builtin.contains(name)
    }
}

/// What logins are checked against: read at start and again at each reload (SIGHUP,
/// `pcp_reload_config`), as PostgreSQL reads pg_hba.conf and its certificate again. A login
/// uses the one it began with.
pub struct Auth {
    /// The hba rules (`[[proxy.hba]]`).
    pub hba: Vec<pgwarden_core::config::HbaRule>,
    /// Backend passwords (libpq password file).
    pub passwords: PassFile,
    /// Client secrets from pool_passwd, when configured.
    pub pool_passwd: Option<HashMap<String, Secret>>,
    /// SCRAM secrets made from the password file's passwords, by user and password: PBKDF2
    /// (4,096 rounds) is slow, and done once per pair. Those of the users the file names are
    /// made when it is read, so that a user's first login takes no longer than an unknown
    /// user's; others (a `*` user line matches any name a client sends) as they come
    /// (`Ctx::derived`).
    named: HashMap<(String, String), Secret>,
    /// Whether an unknown user is asked for an md5 password under an md5 rule (else SCRAM), as
    /// most users with a secret are: the challenge must not tell who exists.
    pub unknown_md5: bool,
    /// TLS for clients that ask for it, when a certificate and key are configured.
    pub tls: Option<stream::Tls>,
}

impl Auth {
    /// Reads pool_passwd and the TLS certificate, and makes the password file's SCRAM
    /// secrets: an error names the file and what is wrong, and nothing is used.
    fn load(config: &Config, passwords: PassFile, mock_key: &[u8]) -> Result<Auth, ProxyError> {
        let pool_passwd = read_pool_passwd(&config.proxy).map_err(ProxyError::PoolPasswd)?;
        let tls = match &config.proxy.tls {
            Some(t) => {
                let tls = stream::acceptor(&t.cert, &t.key).map_err(ProxyError::Tls)?;
                if tls.end_point.is_none() {
                    tracing::warn!(
                        "{}: its signature algorithm names no hash (Ed25519, RSASSA-PSS), so SCRAM logins over TLS cannot be bound to the connection: SCRAM-SHA-256-PLUS is not offered, and clients that require channel binding are refused",
                        t.cert.display()
                    );
                }
                Some(tls)
            }
            None => None,
        };
        let named = if pool_passwd.is_some() {
            HashMap::new()
        } else {
            let listen = config.listen.proxy;
            passwords
                .named_users(&listen.ip().to_string(), listen.port())
                .into_iter()
                .map(|(user, password)| {
                    let salt = pgwarden_wire::auth::mock_salt(&user, mock_key);
                    let secret = Secret::plain_salted(password.expose(), &salt);
                    ((user, password.expose().to_string()), secret)
                })
                .collect()
        };
        let unknown_md5 = match &pool_passwd {
            // Plain-text passwords serve md5.
            None => true,
            Some(map) => {
                let md5 = map.iter().filter(|(u, s)| s.md5_hash(u).is_some()).count();
                md5 * 2 >= map.len()
            }
        };
        Ok(Auth {
            hba: config.proxy.hba.clone(),
            passwords,
            pool_passwd,
            named,
            unknown_md5,
            tls,
        })
    }
}

/// The secrets of `proxy.pool_passwd`, if configured (AES entries decrypted with `pool_key`):
/// the warden's at start and reload, and `config check`'s. An error names the file.
pub fn read_pool_passwd(cfg: &ProxyConfig) -> Result<Option<HashMap<String, Secret>>, String> {
    let Some(path) = &cfg.pool_passwd else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "{} cannot be read: {e}; expected a file in pgpool's pool_passwd format (user:secret per line)",
            path.display()
        )
    })?;
    let key = pool_key(cfg, &text)?;
    pgwarden_wire::auth::parse_pool_passwd(&text, key.as_deref())
        .map(Some)
        .map_err(|(line, e)| format!("{} line {line}: {e}", path.display()))
}

/// pgpool's key for the AES entries of `pool_passwd_text` (`pg_enc`), read as pgpool 4.3 reads
/// it: `proxy.pool_key`, else `$PGPOOLKEYFILE`, else `~/.pgpoolkey`; its first line, at most
/// 255 bytes, without its `\n` (`fgets` into 256 bytes; a `\r` stays, as in pgpool). A file
/// open to group or others is used with a warning, as pgpool uses it. `None` when no entry
/// needs it, or no such file exists (an AES entry then says what to set).
fn pool_key(cfg: &ProxyConfig, pool_passwd_text: &str) -> Result<Option<Vec<u8>>, String> {
    use std::os::unix::fs::PermissionsExt;
    if !pool_passwd_text
        .lines()
        .any(|l| l.split_once(':').is_some_and(|(_, s)| s.starts_with("AES")))
    {
        return Ok(None);
    }
    let path = match &cfg.pool_key {
        Some(p) => p.clone(),
        None => match std::env::var_os("PGPOOLKEYFILE") {
            Some(p) => p.into(),
            None => match std::env::var_os("HOME") {
                Some(h) => std::path::Path::new(&h).join(".pgpoolkey"),
                None => return Ok(None),
            },
        },
    };
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(_) if cfg.pool_key.is_none() => return Ok(None),
        Err(e) => return Err(format!("proxy.pool_key {}: {e}", path.display())),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            "pgpool's key file {} has group or world access (mode {mode:04o}); it should be mode 0600: chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let line = &text[..text.len().min(255)];
    let line = line.split(|b| *b == b'\n').next().unwrap_or_default();
    if line.is_empty() {
        return Err(format!("pgpool's key file {} is empty", path.display()));
    }
    Ok(Some(line.to_vec()))
}

/// Everything sessions share.
pub struct Ctx {
    pub cfg: ProxyConfig,
    /// The proxy's own address (for password-file lookups of client passwords).
    pub listen: SocketAddr,
    /// What logins are checked against (`Ctx::auth`, `Ctx::reload_auth`).
    auth: RwLock<Arc<Auth>>,
    /// SCRAM secrets made as logins come (see `Auth::named`), by user and password, at most
    /// `DERIVED_MAX` of them kept.
    derived: Mutex<HashMap<(String, String), Secret>>,
    pub monitor: MonitorHandle,
    pub routes: watch::Receiver<Arc<RouteTable>>,
    /// Nodes out of service: sessions drop their connections to them (a primary's sessions
    /// end), and the pool closes its idle ones.
    pub fenced: watch::Receiver<Arc<Vec<u32>>>,
    /// An online recovery's 2nd stage: new sessions wait, idle ones past the limit are closed.
    pub hold: watch::Receiver<Option<Duration>>,
    /// The hold's idle limit in nanoseconds (0: none), as `wake_sessions` last saw it before
    /// it rang the sessions: what a session's loop reads, an atomic load instead of the
    /// watch's read lock, which every session would contend for (see `hold_limit`).
    hold_nanos: AtomicU64,
    /// One wake-up per session, rung when the fenced set or the hold changes. A session waits
    /// on its own (rather than on the shared watches) so that the hot path never takes a lock
    /// that every session's task contends for.
    /// Keyed by the address of the session's `Bell`.
    wakeups: Mutex<HashMap<usize, Arc<Bell>>>,
    pub pools: pool::Pools,
    pub cancels: Mutex<HashMap<(i32, i32), CancelSlot>>,
    pub stats: RwLock<HashMap<u32, Arc<NodeStats>>>,
    pub functions: RwLock<Arc<Functions>>,
    pub clients: AtomicUsize,
    /// Nodes a session found dead, and when: no reads go there until a later health check
    /// has succeeded (or the monitor takes the node out of service).
    suspects: Mutex<HashMap<u32, chrono::DateTime<chrono::Utc>>>,
    /// One bit per node ever reported (ids from 63 up share bit 63): most reads then need not
    /// look at `suspects` at all.
    suspect_mask: AtomicU64,
    next_pid: AtomicU32,
    pub mock_key: [u8; 32],
    /// Credentials for pgwarden's own catalog queries.
    admin_user: String,
    admin_database: String,
    /// Reads a standby refused as writes (see `Refused`).
    pub(crate) refused: Refused,
}

/// Texts of reads a standby refused as writes (a view whose function writes, say: see
/// `Session::run_refused_on_primary`), by `refused_key` of database and text: they go to the
/// primary from then on, until a reload. At most `max` of them.
///
/// Every read looks here once one text is known, from every session: the look takes no lock
/// and writes nothing shared (an open-addressed table of atomics, made at the first text).
/// Texts are added and the table cleared under `write`. A read that misses a text being added
/// or cleared meanwhile goes to a standby, which refuses it again: nothing worse.
pub(crate) struct Refused {
    /// `refused_key`s, 0 for a free slot; a power of two long, at most two thirds full.
    slots: std::sync::OnceLock<Box<[AtomicU64]>>,
    /// How many are known: while none, a read's text is not looked up at all.
    len: AtomicUsize,
    write: Mutex<()>,
    max: usize,
}

impl Refused {
    fn new(max: usize) -> Self {
        Refused {
            slots: std::sync::OnceLock::new(),
            len: AtomicUsize::new(0),
            write: Mutex::new(()),
            max,
        }
    }

    /// Whether any text is known (one atomic load).
    #[inline]
    pub(crate) fn any(&self) -> bool {
        self.len.load(Ordering::Relaxed) > 0
    }

    /// The slot holding `key`, or the free slot that ends its probe (None: the table is
    /// full of other keys, which `max` keeps from happening).
    fn probe(slots: &[AtomicU64], key: u64) -> Option<(usize, bool)> {
        let mask = slots.len() - 1;
        let mut i = (key as usize) & mask;
        for _ in 0..slots.len() {
            match slots[i].load(Ordering::Relaxed) {
                0 => return Some((i, false)),
                k if k == key => return Some((i, true)),
                _ => i = (i + 1) & mask,
            }
        }
        None
    }

    /// Whether a standby refused this text before.
    pub(crate) fn contains(&self, database: &str, sql: &str) -> bool {
        if !self.any() {
            return false;
        }
        let Some(slots) = self.slots.get() else {
            return false;
        };
        Self::probe(slots, refused_key(database, sql)).is_some_and(|(_, found)| found)
    }

    /// Remembers a refused text; false when it cannot be (`max` are known already).
    pub(crate) fn note(&self, database: &str, sql: &str) -> bool {
        let key = refused_key(database, sql);
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let slots = self.slots.get_or_init(|| {
            let n = (self.max.max(1) * 3 / 2 + 1).next_power_of_two();
            (0..n).map(|_| AtomicU64::new(0)).collect()
        });
        match Self::probe(slots, key) {
            Some((_, true)) => true,
            Some((i, false)) if self.len.load(Ordering::Relaxed) < self.max => {
                slots[i].store(key, Ordering::Relaxed);
                self.len.fetch_add(1, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Forgets them all (a reload: a view may have changed); how many there were.
    pub(crate) fn forget(&self) -> usize {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slots) = self.slots.get() {
            for s in slots.iter() {
                s.store(0, Ordering::Relaxed);
            }
        }
        self.len.swap(0, Ordering::Relaxed)
    }
}

/// The key of a refused text (see `Refused`): the same text may name another view in
/// another database. Never 0 (a free slot). (A collision sends some read to the primary:
/// nothing worse.)
fn refused_key(database: &str, sql: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    database.hash(&mut h);
    sql.hash(&mut h);
    h.finish().max(1)
}

/// At most this many texts remembered as refused by a standby (see `Refused`): beyond
/// that, a refused read still runs again on the primary, at the cost of the standby's refusal
/// each time.
const REFUSED_MAX: usize = 10_000;

/// At most this many secrets made as logins come (see `Ctx::derived`).
const DERIVED_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("proxy.pool_passwd: {0}")]
    PoolPasswd(String),
    #[error("proxy.tls_cert / proxy.tls_key: {0}")]
    Tls(String),
    #[error("cannot listen on {addr} (listen.proxy): {reason}")]
    Listen { addr: SocketAddr, reason: String },
}

/// The key of the SCRAM salts pgwarden makes (unknown users, plain-text passwords): random,
/// kept in a file of its own beside the state file (`STATE_FILE.scram-key`, mode 0600, made at
/// the first start), so that it outlives a restart as PostgreSQL's mock nonce (in pg_control)
/// does: an unknown user's salt that changed at each restart while a real user's stayed would
/// tell them apart. Never derived from a password: the salt is shown to anyone, and a key made
/// from a password would let them test guesses at it offline. A file that cannot be read or
/// made gives a key for this process only, with a warning.
fn mock_key(state_file: &std::path::Path) -> [u8; 32] {
    let mut path = state_file.as_os_str().to_owned();
    path.push(".scram-key");
    let path = std::path::PathBuf::from(path);
    let parse = |text: &str| -> Option<[u8; 32]> {
        let text = text.trim();
        let mut key = [0u8; 32];
        (text.len() == 64).then_some(())?;
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(key)
    };
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Some(key) = parse(&text) {
            return key;
        }
        tracing::warn!(path = %path.display(), "the SCRAM salt key file is not 64 hex digits; a key for this process is used");
    }
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut key);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let made = {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| {
                f.write_all(format!("{hex}\n").as_bytes())
                    .and_then(|()| f.sync_all())
            })
    };
    match made {
        Ok(()) => key,
        // Made meanwhile by another start: that one is the key.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| parse(&t))
            .unwrap_or(key),
        Err(e) => {
            tracing::warn!(path = %path.display(), "cannot keep the SCRAM salt key ({e}); a key for this process is used: an unknown user's salt will change at the next start");
            key
        }
    }
}

impl Ctx {
    pub fn new(
        config: &Config,
        passwords: PassFile,
        monitor: MonitorHandle,
    ) -> Result<Arc<Ctx>, ProxyError> {
        let cfg = config.proxy.clone();
        let functions = Functions {
            builtin: HashSet::new(),
            all_builtin: HashSet::new(),
            read_only: cfg.read_only_functions.iter().cloned().collect(),
            write: cfg.write_functions.iter().cloned().collect(),
        };
        let mock_key = mock_key(&config.failover.state_file);
        let auth = Auth::load(config, passwords, &mock_key)?;
        Ok(Arc::new(Ctx {
            pools: pool::Pools::new(cfg.pool_size, cfg.pool_wait_timeout, cfg.idle_timeout),
            cfg,
            listen: config.listen.proxy,
            auth: RwLock::new(Arc::new(auth)),
            derived: Mutex::new(HashMap::new()),
            routes: monitor.routes(),
            fenced: monitor.fenced(),
            hold_nanos: AtomicU64::new(nanos(*monitor.hold().borrow())),
            hold: monitor.hold(),
            wakeups: Mutex::new(HashMap::new()),
            monitor,
            cancels: Mutex::new(HashMap::new()),
            stats: RwLock::new(HashMap::new()),
            functions: RwLock::new(Arc::new(functions)),
            clients: AtomicUsize::new(0),
            suspects: Mutex::new(HashMap::new()),
            suspect_mask: AtomicU64::new(0),
            next_pid: AtomicU32::new(1),
            mock_key,
            admin_user: config.credentials.user.clone(),
            admin_database: config.credentials.database.clone(),
            refused: Refused::new(REFUSED_MAX),
        }))
    }

    /// Forgets the texts of reads standbys refused as writes (`Refused`): a reload, a view
    /// may have been changed since. How many there were.
    pub fn forget_refused(&self) -> usize {
        self.refused.forget()
    }

    /// What logins are checked against now.
    pub fn auth(&self) -> Arc<Auth> {
        self.auth.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the hba rules, pool_passwd, the password file's client passwords and the TLS
    /// certificate again (a reload), for `set_auth`: an error names the file.
    pub fn load_auth(&self, config: &Config, passwords: PassFile) -> Result<Auth, ProxyError> {
        Auth::load(config, passwords, &self.mock_key)
    }

    /// Logins from now on are checked against `auth` (see `load_auth`).
    pub fn set_auth(&self, auth: Auth) {
        *self.auth.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(auth);
        self.derived
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The stored secret of a client user: pool_passwd if configured, else the password file's
    /// entry for the proxy's own address (its SCRAM secret made off the runtime's threads when
    /// it was not made at start).
    pub async fn client_secret(&self, user: &str, database: &str) -> Option<Secret> {
        let auth = self.auth();
        if let Some(map) = &auth.pool_passwd {
            return map.get(user).cloned();
        }
        let password = auth.passwords.lookup(
            &self.listen.ip().to_string(),
            self.listen.port(),
            database,
            user,
        )?;
        let key = (user.to_string(), password.expose().to_string());
        if let Some(s) = auth.named.get(&key) {
            return Some(s.clone());
        }
        if let Some(s) = self
            .derived
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Some(s.clone());
        }
        let salt = pgwarden_wire::auth::mock_salt(user, &self.mock_key);
        let text = key.1.clone();
        let secret = tokio::task::spawn_blocking(move || Secret::plain_salted(&text, &salt))
            .await
            .ok()?;
        let mut derived = self.derived.lock().unwrap_or_else(|p| p.into_inner());
        if derived.len() >= DERIVED_MAX {
            derived.clear();
        }
        derived.insert(key, secret.clone());
        Some(secret)
    }

    /// The password pgwarden uses towards a backend for `user`: the password file, else a
    /// plain or md5 secret from pool_passwd.
    pub fn backend_password(
        &self,
        host: &str,
        port: u16,
        database: &str,
        user: &str,
    ) -> Option<pgwarden_core::Secret> {
        let auth = self.auth();
        if let Some(p) = auth.passwords.lookup(host, port, database, user) {
            return Some(p);
        }
        match auth.pool_passwd.as_ref()?.get(user)? {
            Secret::Plain { password, .. } => Some(pgwarden_core::Secret::new(password.clone())),
            Secret::Md5(h) => Some(pgwarden_core::Secret::new(h.clone())),
            Secret::Scram(_) => None,
        }
    }

    /// A session found `node` dead: keep reads away from it and have the monitor check it now.
    pub fn report(&self, node: u32) {
        self.suspects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node, chrono::Utc::now());
        self.suspect_mask
            .fetch_or(1u64 << node.min(63), Ordering::SeqCst);
        self.monitor.suspect(node);
    }

    /// Whether `node` was reported dead after its last successful health check.
    pub fn suspected(&self, node: u32, table: &RouteTable) -> bool {
        if self.suspect_mask.load(Ordering::Relaxed) & (1u64 << node.min(63)) == 0 {
            return false;
        }
        let suspects = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        match suspects.get(&node) {
            None => false,
            Some(at) => table
                .node(node)
                .and_then(|n| n.checked_ok_at)
                .is_none_or(|ok| ok <= *at),
        }
    }

    pub fn node_stats(&self, node: u32) -> Arc<NodeStats> {
        if let Some(s) = self
            .stats
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
        {
            return s.clone();
        }
        self.stats
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(node)
            .or_default()
            .clone()
    }

    pub fn functions(&self) -> Arc<Functions> {
        self.functions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn next_backend_key(&self) -> (i32, i32) {
        let n = self.next_pid.fetch_add(1, Ordering::Relaxed);
        (session_pid(n), rand::random::<i32>())
    }
}

/// The process id a client is told (BackendKeyData) for its `n`th session: above any pid
/// Linux gives (`pid_max` is at most 2^22), so that an application that passes it to
/// `pg_terminate_backend` or `pg_cancel_backend` names no real backend, least of all another
/// client's. Positive, as drivers expect; after 2^30 sessions the numbers come round again
/// (the cancel key, random, still tells sessions apart).
fn session_pid(n: u32) -> i32 {
    const ABOVE_ANY_PID: u32 = 1 << 30;
    (ABOVE_ANY_PID | (n & (ABOVE_ANY_PID - 1))) as i32
}

/// Serves clients on `listener` until the task is dropped.
pub async fn serve(ctx: Arc<Ctx>, listener: TcpListener) {
    tokio::spawn(load_functions(ctx.clone()));
    tokio::spawn(reap_pools(ctx.clone()));
    tokio::spawn(close_fenced(ctx.clone()));
    tokio::spawn(wake_sessions(ctx.clone()));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(client::serve(ctx.clone(), stream, peer));
            }
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Binds the proxy's listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| ProxyError::Listen {
            addr,
            reason: e.to_string(),
        })
}

async fn reap_pools(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let table = ctx.routes.borrow().clone();
        ctx.pools
            .reap(&|node| table.node(node).is_some_and(|n| n.usable));
    }
}

/// Closes the idle pooled connections of a node the moment it is taken out of service.
async fn close_fenced(ctx: Arc<Ctx>) {
    let mut fenced = ctx.fenced.clone();
    while fenced.changed().await.is_ok() {
        let set = fenced.borrow_and_update().clone();
        if !set.is_empty() {
            tracing::warn!(nodes = ?set, "closing pooled connections to nodes out of service");
            ctx.pools.reap(&|node| !set.contains(&node));
        }
    }
}

/// Rings every session's wake-up when a node is taken out of service or an online recovery
/// holds or releases sessions.
async fn wake_sessions(ctx: Arc<Ctx>) {
    let mut fenced = ctx.fenced.clone();
    let mut hold = ctx.hold.clone();
    // A watch whose sender is gone changes no more, and its `changed` fails at once: it is
    // no longer watched (rather than looping on it), and its last value stays.
    let (mut fenced_open, mut hold_open) = (true, true);
    while fenced_open || hold_open {
        tokio::select! {
            r = fenced.changed(), if fenced_open => if r.is_err() {
                fenced_open = false;
                continue;
            },
            r = hold.changed(), if hold_open => if r.is_err() {
                hold_open = false;
                continue;
            },
        }
        // Before the sessions are rung: a session woken reads the new limit.
        ctx.hold_nanos
            .store(nanos(*hold.borrow_and_update()), Ordering::Release);
        let all: Vec<Arc<Bell>> = ctx
            .wakeups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for w in all {
            // Kept until heard: a session busy elsewhere hears it when it next waits.
            w.ring();
        }
    }
}

/// A session's wake-up (see `Ctx::wakeups`); the session closes it when it ends.
pub(crate) struct Wakeup {
    pub bell: Arc<Bell>,
}

impl Wakeup {
    pub(crate) fn new(ctx: &Arc<Ctx>) -> Wakeup {
        let bell = Arc::new(Bell::default());
        ctx.wakeups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(Arc::as_ptr(&bell) as usize, bell.clone());
        Wakeup { bell }
    }

    /// Unregisters it (the session ends).
    pub(crate) fn close(&self, ctx: &Ctx) {
        ctx.wakeups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(Arc::as_ptr(&self.bell) as usize));
    }
}

/// What `wake_sessions` rings when a node is fenced or a hold is set or lifted. A ring is kept
/// until it is heard, as `Notify::notify_one`'s permit is; listening costs a few atomic
/// operations and no lock, which matters because the session listens on every query. One task
/// listens: the session's.
#[derive(Default)]
pub(crate) struct Bell {
    rung: AtomicBool,
    waker: atomic_waker::AtomicWaker,
}

impl Bell {
    fn ring(&self) {
        self.rung.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Resolves once the bell has rung since it was last heard.
    pub(crate) fn rung(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            // Registered first: a ring after the look below wakes this task.
            self.waker.register(cx.waker());
            if self.rung.load(Ordering::Acquire) && self.rung.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

impl Ctx {
    /// Whether `node` is out of service.
    pub fn is_fenced(&self, node: u32) -> bool {
        self.fenced.borrow().contains(&node)
    }

    /// The idle limit of an online recovery's hold, if one holds sessions now.
    pub(crate) fn hold_limit(&self) -> Option<Duration> {
        match self.hold_nanos.load(Ordering::Acquire) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }
}

/// A hold's idle limit as `Ctx::hold_nanos` keeps it (a zero limit is none).
fn nanos(limit: Option<Duration>) -> u64 {
    limit.map_or(0, |l| u64::try_from(l.as_nanos()).unwrap_or(u64::MAX))
}

/// Built-in functions marked stable or immutable that a hot standby refuses to run: a
/// transaction id cannot be assigned there (25006), nor a WAL file named ("recovery is in
/// progress"). Found by calling every such function on a PostgreSQL 15 standby. And
/// `pg_backend_pid`: the pid a session is given must name its backend on the primary, where
/// `pg_terminate_backend` and `pg_cancel_backend` (volatile) run and its locks and temporary
/// tables live; a standby's pid names nothing there, or, on another host, another session's
/// backend (psycopg2's own test suite terminates the pid `SELECT pg_backend_pid()` gave).
const NEEDS_PRIMARY: [&str; 5] = [
    "txid_current",
    "pg_current_xact_id",
    "pg_walfile_name",
    "pg_walfile_name_offset",
    "pg_backend_pid",
];

/// Reads which built-in functions cannot write (immutable or stable in pg_catalog, every
/// overload, but those in `NEEDS_PRIMARY`) from the primary, retrying until it answers. Until
/// then every function call is routed to the primary.
async fn load_functions(ctx: Arc<Ctx>) {
    const SQL: &str = "SELECT p.proname, \
        CASE WHEN bool_and(p.provolatile IN ('i', 's')) THEN 'r' ELSE 'w' END \
        FROM pg_catalog.pg_proc p \
        JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
        WHERE n.nspname = 'pg_catalog' GROUP BY p.proname";
    let mut routes = ctx.routes.clone();
    loop {
        let target = {
            let t = routes.borrow_and_update().clone();
            t.primary
                .and_then(|p| t.node(p).map(|n| (n.host.clone(), n.port)))
        };
        if let Some((host, port)) = target {
            let mut cfg = tokio_postgres::Config::new();
            cfg.host(&host)
                .port(port)
                .user(&ctx.admin_user)
                .dbname(&ctx.admin_database)
                .application_name("pgwarden catalog")
                .connect_timeout(Duration::from_secs(5));
            if let Some(pw) =
                ctx.auth()
                    .passwords
                    .lookup(&host, port, &ctx.admin_database, &ctx.admin_user)
            {
                cfg.password(pw.expose());
            }
            match cfg.connect(tokio_postgres::NoTls).await {
                Ok((client, conn)) => {
                    let task = tokio::spawn(conn);
                    match client.simple_query(SQL).await {
                        Ok(rows) => {
                            let rows: Vec<(String, bool)> = rows
                                .iter()
                                .filter_map(|m| match m {
                                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                                        Some((r.get(0)?.to_string(), r.get(1) == Some("r")))
                                    }
                                    _ => None,
                                })
                                .collect();
                            let all_builtin: HashSet<String> =
                                rows.iter().map(|(n, _)| n.clone()).collect();
                            let names: HashSet<String> = rows
                                .into_iter()
                                .filter(|(name, read_only)| {
                                    *read_only && !NEEDS_PRIMARY.contains(&name.as_str())
                                })
                                .map(|(name, _)| name)
                                .collect();
                            tracing::info!("{} read-only built-in functions known", names.len());
                            let cur = ctx.functions();
                            let next = Functions {
                                builtin: names,
                                all_builtin,
                                read_only: cur.read_only.clone(),
                                write: cur.write.clone(),
                            };
                            *ctx.functions.write().unwrap_or_else(|p| p.into_inner()) =
                                Arc::new(next);
                            task.abort();
                            return;
                        }
                        Err(e) => tracing::warn!("reading pg_proc on {host}:{port}: {e}"),
                    }
                    task.abort();
                }
                Err(e) => tracing::debug!("reading pg_proc on {host}:{port}: {e}"),
            }
        }
        // Wait for the next change of the cluster, or retry every few seconds.
        let _ = tokio::time::timeout(Duration::from_secs(2), routes.changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::Bell;

    /// Texts a standby refused: by database, bounded, forgotten at a reload.
    #[test]
    fn refused_texts_are_kept_by_database_within_a_bound() {
        let r = super::Refused::new(2);
        assert!(!r.contains("app", "SELECT n FROM v"));
        assert!(r.note("app", "SELECT n FROM v"));
        assert!(r.contains("app", "SELECT n FROM v"));
        // The same text names another view in another database; another text is another.
        assert!(!r.contains("other", "SELECT n FROM v"));
        assert!(!r.contains("app", "SELECT n FROM w"));
        // Full: a new text is not kept (it is refused again each time), a known one still is.
        assert!(r.note("app", "SELECT n FROM w"));
        assert!(!r.note("app", "SELECT n FROM x"));
        assert!(!r.contains("app", "SELECT n FROM x"));
        assert!(r.note("app", "SELECT n FROM v"));
        assert_eq!(r.forget(), 2);
        assert!(!r.contains("app", "SELECT n FROM v"));
        assert!(r.note("app", "SELECT n FROM x"));
        // Filled to its bound, every text is found, and no other.
        let r = super::Refused::new(1000);
        for i in 0..1000 {
            assert!(r.note("app", &format!("SELECT {i}")), "{i}");
        }
        assert!(!r.note("app", "SELECT 1000"));
        for i in 0..1000 {
            assert!(r.contains("app", &format!("SELECT {i}")), "{i}");
        }
        assert!((1000..3000).all(|i| !r.contains("app", &format!("SELECT {i}"))));
        assert_eq!(r.forget(), 1000);
        assert!(!r.contains("app", "SELECT 1"));
    }
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct Counter(std::sync::atomic::AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// The pids clients are told are above any Linux pid, positive, and distinct.
    #[test]
    fn session_pids_name_no_real_process() {
        const PID_MAX_LIMIT: i32 = 1 << 22;
        for (n, want) in [
            (0u32, 0x4000_0000),
            (1, 0x4000_0001),
            (0x3FFF_FFFF, 0x7FFF_FFFF),
            (0x4000_0000, 0x4000_0000),
            (u32::MAX, 0x7FFF_FFFF),
        ] {
            let pid = super::session_pid(n);
            assert_eq!(pid, want, "session {n}");
            assert!(pid > PID_MAX_LIMIT, "session {n}: {pid}");
        }
        assert_ne!(super::session_pid(7), super::session_pid(8));
    }

    fn poll(bell: &Bell, waker: &Waker) -> Poll<()> {
        let mut fut = std::pin::pin!(bell.rung());
        fut.as_mut().poll(&mut Context::from_waker(waker))
    }

    /// A ring is kept until heard, heard once, and wakes a session that listens.
    #[test]
    fn statements_are_counted_by_their_first_keyword() {
        let s = crate::NodeStats::default();
        for sql in [
            "SELECT 1",
            "  select\n1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "insert into t values (1)",
            "UPDATE t SET a = 1",
            "Delete FROM t",
            "CREATE TABLE t (a int)",
            "drop table t",
            "TRUNCATE t",
            "VACUUM",
            "",
            "(SELECT 1)",
            "selected",
            "SELECT*FROM t",
        ] {
            s.count(sql);
        }
        let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            (
                n(&s.select),
                n(&s.insert),
                n(&s.update),
                n(&s.delete),
                n(&s.ddl),
                n(&s.other)
            ),
            (4, 1, 1, 1, 3, 4)
        );
    }

    #[test]
    fn a_bell_rung_is_heard_once_whenever_the_session_listens() {
        let counter = Arc::new(Counter(Default::default()));
        let waker = Waker::from(counter.clone());
        let wakes = || counter.0.load(std::sync::atomic::Ordering::SeqCst);
        let bell = Bell::default();
        assert_eq!(poll(&bell, &waker), Poll::Pending, "not rung yet");
        bell.ring();
        assert_eq!(wakes(), 1, "the listening session is woken");
        assert_eq!(poll(&bell, &waker), Poll::Ready(()), "heard");
        assert_eq!(poll(&bell, &waker), Poll::Pending, "heard once");
        // Rung while the session was busy elsewhere (no one listening): kept.
        let bell = Bell::default();
        bell.ring();
        bell.ring();
        assert_eq!(poll(&bell, &waker), Poll::Ready(()));
        assert_eq!(poll(&bell, &waker), Poll::Pending, "two rings, one hearing");
    }
}
