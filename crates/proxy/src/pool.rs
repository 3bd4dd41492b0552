//! Backend connection pools: idle connections kept per (node, user, database, startup
//! parameters), at most `pool_size` connections per node counting idle and busy ones.
//!
//! When a node's connections are all taken, a session waits up to `pool_wait_timeout`, then
//! gets SQLSTATE 53300 — never an endless wait. An idle connection of another user or database
//! is closed to make room before anyone waits; a connection put back while a session waits is
//! taken by it (or closed to make room, if kept for someone else).

use crate::backend::{Backend, BackendError, ConnectSpec};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub node: u32,
    pub params: Vec<(String, String)>,
}

impl PoolKey {
    pub fn new(node: u32, params: &[(String, String)]) -> PoolKey {
        let mut params = params.to_vec();
        params.sort();
        PoolKey { node, params }
    }
    fn get(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("all {size} connections to node {node} are in use and none came free within {} ms (proxy.pool_size)", wait.as_millis())]
    Full {
        node: u32,
        size: usize,
        wait: Duration,
    },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// A connection taken from a pool; it counts against its node's limit until dropped or
/// returned.
pub struct Pooled {
    pub backend: Backend,
    pub key: PoolKey,
    /// The pool's generation when it was opened (see `Pools::renew`).
    born: u64,
    _permit: OwnedSemaphorePermit,
    /// Where the pid its last session's client was told is kept (see [`Tellers`]); the
    /// entry goes with the connection.
    tellers: Arc<Tellers>,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.tellers.forget(self.key.node, self.backend.pid);
    }
}

/// For each open backend connection (node, server process id), the pid the client of the
/// last session that took it was told (BackendKeyData): a notification another session's
/// NOTIFY sends carries the server process's pid, which its client never saw; it is given
/// this one instead, as the driver of the notifying session reports it (psycopg2's
/// `info.backend_pid`, pgjdbc's `getBackendPID()`). Kept past the session's end, until the
/// connection is taken again or closed: a client that notifies and disconnects at once is
/// heard after it left.
#[derive(Default)]
pub struct Tellers(Mutex<HashMap<(u32, i32), i32>>);

impl Tellers {
    /// Server process `pid` of `node` now serves a session whose client was told `told`.
    pub fn note(&self, node: u32, pid: i32, told: i32) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.insert((node, pid), told);
    }

    /// The pid the client of the last session on server process `pid` of `node` was told.
    pub fn told(&self, node: u32, pid: i32) -> Option<i32> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(node, pid)).copied()
    }

    fn forget(&self, node: u32, pid: i32) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&(node, pid));
    }
}

struct Idle {
    pooled: Pooled,
    since: Instant,
}

pub struct Pools {
    size: usize,
    wait: Duration,
    idle_timeout: Duration,
    nodes: Mutex<HashMap<u32, Arc<Semaphore>>>,
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    /// Rung when a connection is put back (it keeps its node's permit: a session waiting
    /// for a permit would not see it).
    returned: Notify,
    /// Connections opened before the last `renew` are not reused.
    generation: std::sync::atomic::AtomicU64,
    pub tellers: Arc<Tellers>,
}

/// One row of SHOW POOL_POOLS.
#[derive(Debug, Clone)]
pub struct PoolRow {
    pub node: u32,
    pub database: String,
    pub user: String,
    pub idle: usize,
}

impl Pools {
    pub fn new(size: usize, wait: Duration, idle_timeout: Duration) -> Pools {
        Pools {
            size,
            wait,
            idle_timeout,
            nodes: Mutex::new(HashMap::new()),
            idle: Mutex::new(HashMap::new()),
            returned: Notify::new(),
            generation: std::sync::atomic::AtomicU64::new(0),
            tellers: Arc::default(),
        }
    }

    fn semaphore(&self, node: u32) -> Arc<Semaphore> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .entry(node)
            .or_insert_with(|| Arc::new(Semaphore::new(self.size)))
            .clone()
    }

    /// Connections to `node` in use right now (idle ones included).
    pub fn in_use(&self, node: u32) -> usize {
        self.size - self.semaphore(node).available_permits()
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// An idle connection for this key that is still alive, or a new one. When the node's
    /// connections are all taken, it waits up to `pool_wait_timeout` for one to be closed or
    /// put back: one put back for this key is taken, one for another key is closed to make
    /// room.
    pub async fn get(&self, spec: &ConnectSpec) -> Result<Pooled, PoolError> {
        self.get_within(spec, self.wait).await
    }

    /// [`Self::get`], waiting at most `wait` for a connection to come free (none: a full
    /// node's answer at once).
    pub async fn get_within(
        &self,
        spec: &ConnectSpec,
        wait: Duration,
    ) -> Result<Pooled, PoolError> {
        let key = PoolKey::new(spec.node, &spec.params);
        let sem = self.semaphore(spec.node);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(p) = self.take_alive(&key) {
                return Ok(p);
            }
            let permit = match sem.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    // Registered, then looked again: a connection put back since the look
                    // above still wakes it. (Not before it: taking a connection when there is
                    // one need not touch the shared wake-up.)
                    let returned = self.returned.notified();
                    tokio::pin!(returned);
                    returned.as_mut().enable();
                    if let Some(p) = self.take_alive(&key) {
                        return Ok(p);
                    }
                    // Make room: close an idle connection of this node kept for someone else.
                    self.evict_one(spec.node);
                    tokio::select! {
                        p = sem.clone().acquire_owned() => match p {
                            Ok(permit) => permit,
                            Err(_) => return Err(self.full(spec.node, wait)),
                        },
                        _ = &mut returned => continue,
                        _ = tokio::time::sleep_until(deadline) => return Err(self.full(spec.node, wait)),
                    }
                }
            };
            let born = self.generation.load(std::sync::atomic::Ordering::Acquire);
            let backend = Backend::connect(spec).await?;
            return Ok(Pooled {
                backend,
                key,
                born,
                _permit: permit,
                tellers: self.tellers.clone(),
            });
        }
    }

    /// An idle connection for `key` that is still alive (dead ones are closed on the way).
    fn take_alive(&self, key: &PoolKey) -> Option<Pooled> {
        while let Some(mut p) = self.take_idle(key) {
            if alive(&mut p.backend) {
                p.backend.last_used = Instant::now();
                return Some(p);
            }
        }
        None
    }

    fn full(&self, node: u32, wait: Duration) -> PoolError {
        PoolError::Full {
            node,
            size: self.size,
            wait,
        }
    }

    fn take_idle(&self, key: &PoolKey) -> Option<Pooled> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.get_mut(key).and_then(Vec::pop).map(|i| i.pooled)
    }

    fn evict_one(&self, node: u32) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = idle
            .iter_mut()
            .filter(|(k, v)| k.node == node && !v.is_empty())
            .map(|(_, v)| v)
            .next()
        {
            // Dropping it closes the socket and frees its permit.
            list.remove(0);
        }
    }

    /// Keeps a connection that is idle, reset and healthy for the next session (one opened
    /// before the last `renew` is closed instead).
    pub fn put(&self, pooled: Pooled) {
        {
            // (Compared under the lock `renew` bumps the generation under: a renewal cannot
            // slip between the look and the keeping.)
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if pooled.born < self.generation.load(std::sync::atomic::Ordering::Acquire) {
                drop(idle);
                drop(pooled);
                self.returned.notify_waiters();
                return;
            }
            idle.entry(pooled.key.clone()).or_default().push(Idle {
                pooled,
                since: Instant::now(),
            });
        }
        // Sessions waiting for a connection look again (of any node: they are few, and
        // each looks only at its own).
        self.returned.notify_waiters();
    }

    /// Closes every idle connection, and those in use as they come back: a server's
    /// connection keeps the database's and role's default settings (`ALTER DATABASE … SET`,
    /// `ALTER ROLE … SET`) it started with, which `DISCARD ALL` goes back to.
    pub fn renew(&self) {
        let dropped = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            std::mem::take(&mut *idle)
        };
        // (Closed outside the lock.)
        drop(dropped);
        self.returned.notify_waiters();
    }

    /// Closes connections idle longer than `idle_timeout`, and every idle connection of a node
    /// not in `keep` (a node that went down or left service).
    pub fn reap(&self, keep: &dyn Fn(u32) -> bool) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        for (key, list) in idle.iter_mut() {
            if !keep(key.node) {
                list.clear();
            } else {
                list.retain(|i| i.since.elapsed() < self.idle_timeout);
            }
        }
        idle.retain(|_, l| !l.is_empty());
    }

    /// Closes every idle connection to database `name`, on every node: a statement that
    /// needs no one else connected to it is next (`pgwarden_sql::databases_to_free`). The
    /// server's processes leave as they see the connections close, which `DROP DATABASE`
    /// waits for (up to 5 s). Returns how many were closed.
    pub fn close_idle_of_database(&self, name: &str) -> usize {
        let dropped: Vec<Idle> = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<PoolKey> = idle
                .keys()
                .filter(|k| k.get("database") == name)
                .cloned()
                .collect();
            keys.iter()
                .filter_map(|k| idle.remove(k))
                .flatten()
                .collect()
        };
        // (Closed outside the lock; put-back waiters look again.)
        let n = dropped.len();
        drop(dropped);
        if n > 0 {
            self.returned.notify_waiters();
        }
        n
    }

    pub fn rows(&self) -> Vec<PoolRow> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<PoolRow> = idle
            .iter()
            .map(|(k, v)| PoolRow {
                node: k.node,
                database: k.get("database").to_string(),
                user: k.get("user").to_string(),
                idle: v.len(),
            })
            .collect();
        rows.sort_by(|a, b| (a.node, &a.database, &a.user).cmp(&(b.node, &b.database, &b.user)));
        rows
    }
}

/// An idle connection that the server closed (or that has unexpected bytes waiting, such as a
/// FATAL notice) is not reused.
fn alive(b: &mut Backend) -> bool {
    if !b.buf.is_empty() {
        return false;
    }
    let mut probe = [0u8; 1];
    matches!(b.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}
