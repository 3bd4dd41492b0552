//! A session's settings record: the `SET` / `RESET` / `DISCARD` queries it ran outside a
//! transaction, which pgwarden replays, in order, on each other backend connection the session
//! comes to use (a session's reads and writes may run on different nodes, and each must see
//! its settings).
//!
//! The record drops what a later query makes moot: an application that runs
//! `SET application_name = …` at every checkout from its own pool, or asyncpg's `RESET ALL`
//! at every release, keeps one entry, not one per time. Without that, a long-lived session's
//! record grew without bound, and every connection it was given later replayed all of it.
//!
//! Entries carry sequence numbers; a connection remembers the last one it has had
//! (`applied`) and is given only the later ones. An entry is dropped only for a later one
//! that overrides all it did, so a connection that missed the dropped one gets the later one,
//! and only once that later one is known to have succeeded (`settle`): a `SET` that failed
//! changed nothing, and the earlier value must still be replayed.
//!
//! A setting changed inside a transaction, or among other statements in one query, cannot be
//! recorded as the query that changed it: whether it lasts depends on how the transaction ends
//! (COMMIT, ROLLBACK, ROLLBACK TO SAVEPOINT, an error), which pgwarden does not follow. Its
//! name is noted instead (`note_changed`), and once that node is idle (at the routing of the
//! session's next unit, or before another connection is used), its value is read back from the
//! node that ran it and recorded as a `set_config` (`record_value`): whatever the server did,
//! the record then says what it has.

use bytes::Bytes;
use pgwarden_sql::{Isolation, SettingKind};

/// What a node's session has, when `pgwarden_sql::EVERY_SETTING` is read back (after a
/// `RESET ALL` in a transaction): `name=hex,…`, the value as the hex of its UTF-8 bytes (see
/// `record_value`). Every parameter the session set (source
/// `session`), and always `session_authorization` and `role` first: `RESET ALL` leaves them
/// alone, another node may have them otherwise, and `pg_settings` does not list them. Not
/// `seed`, nor the transaction's own, which cannot be set from outside a transaction's start.
const EVERY_SETTING_SQL: &str = "SELECT pg_catalog.string_agg(n || '=' || \
     pg_catalog.encode(pg_catalog.convert_to(pg_catalog.current_setting(n, true), 'UTF8'), 'hex'), ',' \
     ORDER BY n <> 'session_authorization', n <> 'role', n) \
     FROM (SELECT name FROM pg_catalog.pg_settings WHERE source = 'session' \
     AND name <> 'seed' AND name NOT LIKE 'transaction\\_%' \
     UNION SELECT 'session_authorization' UNION SELECT 'role') AS s(n)";

/// The statement that reads back setting `name` (see the module's documentation), or every
/// setting for `pgwarden_sql::EVERY_SETTING`, with the `custom` parameters the session knows
/// of (`pg_settings` does not list those): its answer goes to `Settings::record_read_back`.
pub(crate) fn read_back_sql(name: &str, custom: &[String]) -> String {
    if name == pgwarden_sql::EVERY_SETTING {
        if custom.is_empty() {
            return EVERY_SETTING_SQL.to_string();
        }
        let (head, tail) = EVERY_SETTING_SQL.split_at(EVERY_SETTING_SQL.len() - ") AS s(n)".len());
        let mut sql = head.to_string();
        for c in custom {
            sql.push_str(" UNION SELECT ");
            sql.push_str(&literal(c));
        }
        sql.push_str(tail);
        return sql;
    }
    format!(
        "SELECT pg_catalog.encode(pg_catalog.convert_to(\
         pg_catalog.current_setting({}, true), 'UTF8'), 'hex')",
        literal(name)
    )
}

/// The record (see the module's documentation). Empty until the session first changes a
/// setting: most sessions never do, and the session task stays small (see ARCHITECTURE.md).
#[derive(Default)]
pub(crate) struct Settings(Option<Box<Record>>);

#[derive(Default)]
struct Record {
    entries: Vec<Entry>,
    /// Settings changed where they could not be recorded (see the module's documentation):
    /// the node that has them, and their names, to be read back from there.
    unread: Vec<(u32, String)>,
    /// The session's transactions are SERIALIZABLE by default, which a hot standby refuses:
    /// as the session began (its startup `options`), and as a setting since changed it.
    serializable_at_start: bool,
    serializable_now: Option<bool>,
    /// SQL `PREPARE`s run in a transaction on a standby (the session is pinned to the primary
    /// from then on), to be prepared on the primary too once that transaction is over (a
    /// prepared statement outlives it, even a ROLLBACK).
    prepared: Vec<Prepared>,
    /// Cursors declared `WITH HOLD` in a transaction on a standby: they live there after it,
    /// and a FETCH, MOVE or CLOSE of one goes there (by name, with the node).
    held: Vec<(String, u32)>,
    /// Nodes where code of the database's own ran (a function that may call `set_config`):
    /// every setting there is read back, but only before another node is used
    /// (`unread_elsewhere`), not at once (`has_unread`): a session that calls functions on
    /// the primary and stays there pays nothing. A maybe, so it does not bind the session to
    /// that node (`unread_on`): a node lost or fenced first takes it along
    /// (`keep_user_code_on`), and the session goes on with the settings it knows of.
    user_code: Vec<u32>,
}

/// A statement prepared by a SQL `PREPARE` in a transaction on a standby, still to be made on
/// the primary.
pub(crate) struct Prepared {
    /// The standby.
    pub(crate) node: u32,
    pub(crate) name: String,
    /// Its text, once read from the standby (after the transaction): from then on the
    /// standby is not needed to make it.
    pub(crate) text: Option<String>,
}

struct Entry {
    seq: u64,
    query: Bytes,
    kind: SettingKind,
    /// The parts of `DateStyle` it sets (`pgwarden_sql::datestyle_parts`): a later
    /// `SET datestyle` makes it moot only if it sets them all. Both for any other entry.
    datestyle: u8,
    /// Known to have succeeded where it ran (`settle`): the session has this setting, and a
    /// connection where its replay fails lacks it (`since`). Otherwise it failed there, or
    /// its outcome is not known, and a replay that fails too changes nothing.
    held: bool,
}

/// A recorded setting a connection still needs (see [`Record::since`]).
pub(crate) struct Replay {
    pub(crate) seq: u64,
    pub(crate) query: Bytes,
    /// It succeeded where the session ran it: a connection that refuses it must not serve
    /// the session as if it had it.
    pub(crate) held: bool,
}

impl Record {
    /// Records `query` (a whole Query message). Returns its sequence number, which the
    /// connection that ran it has now had.
    pub(crate) fn push(&mut self, query: Bytes, kind: SettingKind) -> u64 {
        let sql = query
            .get(5..)
            .and_then(|b| pgwarden_wire::msg::query_text(b).ok())
            .map(String::from_utf8_lossy)
            .unwrap_or_default()
            .into_owned();
        self.push_read(query, &sql, kind)
    }

    /// Records `query`, whose text the server reads as `sql` (see `pgwarden_sql::server_text`).
    pub(crate) fn push_read(&mut self, query: Bytes, sql: &str, kind: SettingKind) -> u64 {
        let seq = self.last() + 1;
        if let Some(change) = Some(sql)
            .filter(|sql| may_change_isolation(sql))
            .and_then(pgwarden_sql::isolation_change)
        {
            self.note_isolation(change);
        }
        let datestyle = match &kind {
            SettingKind::One(n) if n.eq_ignore_ascii_case("datestyle") => {
                pgwarden_sql::datestyle_parts(sql)
            }
            _ => pgwarden_sql::DATESTYLE_FORMAT | pgwarden_sql::DATESTYLE_ORDER,
        };
        self.entries.push(Entry {
            seq,
            query,
            kind,
            datestyle,
            held: false,
        });
        seq
    }

    fn note_isolation(&mut self, change: Isolation) {
        self.serializable_now = match change {
            Isolation::Serializable => Some(true),
            Isolation::Other => Some(false),
            Isolation::Reset => None,
        };
    }

    /// Entry `seq` succeeded: the earlier entries it makes moot are dropped. Not one that a
    /// kept entry after it may have relied on (see `relied_on`): `SET ROLE admin`, then
    /// `SET session_replication_role = replica` (which needs admin's rights), then
    /// `RESET ROLE` keeps all three, or the second would fail where it is replayed. An entry
    /// kept only for one between that has since been dropped goes then (a `client_encoding`
    /// kept for a text that is not ASCII, replaced since): the record stays as long as the
    /// settings it has, not the session's history.
    pub(crate) fn settle(&mut self, seq: u64) {
        let Some(i) = self.entries.iter().position(|e| e.seq == seq) else {
            return;
        };
        self.entries[i].held = true;
        self.drop_made_moot_by(i);
        // (Each pass drops at least one entry, or ends.)
        while (0..self.entries.len())
            .rev()
            .any(|i| self.entries[i].held && self.drop_made_moot_by(i))
        {}
    }

    /// Drops the entries before entry `i` that it makes moot (see `settle`); whether any was.
    fn drop_made_moot_by(&mut self, i: usize) -> bool {
        let kind = self.entries[i].kind.clone();
        let datestyle = self.entries[i].datestyle;
        let mut drop = vec![false; i];
        let mut kept_between = false;
        for k in (0..i).rev() {
            let old = &self.entries[k].kind;
            let covered = self.entries[k].datestyle & !datestyle == 0;
            drop[k] = supersedes(&kind, old) && covered && !(kept_between && relied_on(old));
            // (A text that is not ASCII is read in the `client_encoding` of its place.)
            let text = self.entries[k].query.get(5..).unwrap_or_default();
            let plain = independent(old) && text.is_ascii();
            kept_between |= !drop[k] && !plain;
        }
        if !drop.contains(&true) {
            return false;
        }
        let mut k = 0;
        self.entries.retain(|_| {
            k += 1;
            !drop.get(k - 1).copied().unwrap_or(false)
        });
        true
    }

    /// The sequence number of the latest entry; 0 for none. (The latest entry is never
    /// dropped, so this only grows.)
    pub(crate) fn last(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.seq)
    }

    /// The entries a connection that has had everything up to `applied` still needs, in order.
    pub(crate) fn since(&self, applied: u64) -> Vec<Replay> {
        self.entries
            .iter()
            .filter(|e| e.seq > applied)
            .map(|e| Replay {
                seq: e.seq,
                query: e.query.clone(),
                held: e.held,
            })
            .collect()
    }

    /// `names` were changed on `node` in a way that cannot be recorded as it was said: their
    /// values are to be read back from there (`take_unread`, `record_value`).
    pub(crate) fn note_changed(&mut self, node: u32, names: Vec<String>) {
        for name in names {
            self.add_unread(node, name);
        }
    }

    fn add_unread(&mut self, node: u32, name: String) {
        if !self.unread.iter().any(|(n, m)| *n == node && *m == name) {
            self.unread.push((node, name));
        }
    }

    /// Whether a setting changed on a node other than `node` is still to be read back: before
    /// `node` is used, it is.
    pub(crate) fn unread_elsewhere(&self, node: u32) -> bool {
        self.unread.iter().any(|(n, _)| *n != node)
            || self.prepared.iter().any(|p| p.node != node)
            || self.user_code.iter().any(|n| *n != node)
    }

    /// Code of the database's own ran on `node` (see `user_code`).
    pub(crate) fn note_user_code(&mut self, node: u32) {
        if !self.user_code.contains(&node) {
            self.user_code.push(node);
        }
    }

    /// The custom parameters (`app.tenant`) the record sets or is to read back: a read-back
    /// of every setting asks for them by name (see `read_back_sql`).
    pub(crate) fn custom_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let mut add = |n: &str| {
            if n.contains('.') && !names.iter().any(|m| m == n) {
                names.push(n.to_string());
            }
        };
        for e in &self.entries {
            match &e.kind {
                SettingKind::One(n) => add(n),
                // Several settings in one query (`SET ROLE a; SET app.tenant = 1`).
                _ => {
                    let text = e
                        .query
                        .get(5..)
                        .and_then(|b| pgwarden_wire::msg::query_text(b).ok());
                    let sql = String::from_utf8_lossy(text.unwrap_or_default());
                    for n in pgwarden_sql::setting_names(&sql).unwrap_or_default() {
                        add(&n);
                    }
                }
            }
        }
        for (_, n) in &self.unread {
            add(n);
        }
        names
    }

    /// Whether `node` holds settings still to be read back: the session needs that
    /// connection. (Not for a prepared statement still to be made on the primary: that is
    /// made if the standby is still there when the session comes to it; losing the standby
    /// first loses the statement, not the session.)
    pub(crate) fn unread_on(&self, node: u32) -> bool {
        self.unread.iter().any(|(n, _)| *n == node)
    }

    /// The settings to read back, in the order they are to be replayed: the session
    /// authorization, then the role (setting the first resets the second, and other settings
    /// may need the role's rights), then the others in the order they were first changed.
    pub(crate) fn take_unread(&mut self) -> Vec<(u32, String)> {
        let mut unread = std::mem::take(&mut self.unread);
        for node in std::mem::take(&mut self.user_code) {
            unread.push((node, pgwarden_sql::EVERY_SETTING.to_string()));
        }
        // Every setting first: its answer is recorded as a `RESET ALL` and each value, which
        // would undo a value read back by name before it.
        unread.sort_by_key(|(_, name)| match name.as_str() {
            pgwarden_sql::EVERY_SETTING => 0,
            "session_authorization" => 1,
            "role" => 2,
            _ => 3,
        });
        unread
    }

    /// Puts back settings that could not be read back yet (their node was busy).
    pub(crate) fn keep_unread(&mut self, kept: Vec<(u32, String)>) {
        for (node, name) in kept {
            self.add_unread(node, name);
        }
    }

    /// Records that setting `name` is now the value whose UTF-8 bytes are `utf8_hex` (read
    /// back from a connection that has every earlier entry): a `set_config`, known to have
    /// succeeded. The value travels as hex, so neither side's `client_encoding` can mangle it.
    /// Returns its sequence number; None when `utf8_hex` is not hex.
    pub(crate) fn record_value(&mut self, name: &str, utf8_hex: &str) -> Option<u64> {
        if !utf8_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        if name.eq_ignore_ascii_case("default_transaction_isolation") {
            let value = hex_text(utf8_hex).to_ascii_lowercase();
            self.note_isolation(if value.trim() == "serializable" {
                Isolation::Serializable
            } else {
                Isolation::Other
            });
        }
        let sql = format!(
            "SELECT pg_catalog.set_config({}, pg_catalog.convert_from(pg_catalog.decode('{utf8_hex}', 'hex'), 'UTF8'), false)",
            literal(name),
        );
        let mut q = bytes::BytesMut::new();
        pgwarden_wire::msg::frontend::query(&mut q, &sql);
        let seq = self.push(q.freeze(), SettingKind::One(name.to_string()));
        self.settle(seq);
        Some(seq)
    }

    /// Records what a node's session has as a whole (`EVERY_SETTING_SQL`'s answer, read from
    /// a connection that has every earlier entry): a `RESET ALL`, then each value. Returns the
    /// last sequence number; None when the answer is not of that form (nothing is recorded).
    pub(crate) fn record_every_value(&mut self, answer: &str) -> Option<u64> {
        let pairs: Vec<(&str, &str)> = answer
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('='))
            .collect::<Option<_>>()?;
        if pairs
            .iter()
            .any(|(n, h)| n.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return None;
        }
        let mut q = bytes::BytesMut::new();
        pgwarden_wire::msg::frontend::query(&mut q, "RESET ALL");
        let mut last = self.push(
            q.freeze(),
            SettingKind::Reset {
                role: false,
                statements: false,
            },
        );
        self.settle(last);
        for (name, hex) in pairs {
            last = self.record_value(name, hex)?;
        }
        Some(last)
    }

    #[cfg(test)]
    fn queries(&self) -> Vec<&[u8]> {
        self.entries.iter().map(|e| &e.query[..]).collect()
    }
}

impl Settings {
    fn record(&mut self) -> &mut Record {
        self.0.get_or_insert_with(Box::default)
    }

    /// See [`Record::push`].
    #[cfg(test)]
    pub(crate) fn push(&mut self, query: Bytes, kind: SettingKind) -> u64 {
        self.record().push(query, kind)
    }

    /// See [`Record::push_read`].
    pub(crate) fn push_read(&mut self, query: Bytes, sql: &str, kind: SettingKind) -> u64 {
        self.record().push_read(query, sql, kind)
    }

    /// See [`Record::settle`].
    pub(crate) fn settle(&mut self, seq: u64) {
        if let Some(r) = self.0.as_mut() {
            r.settle(seq);
        }
    }

    /// See [`Record::last`].
    pub(crate) fn last(&self) -> u64 {
        self.0.as_ref().map_or(0, |r| r.last())
    }

    /// See [`Record::since`].
    pub(crate) fn since(&self, applied: u64) -> Vec<Replay> {
        self.0.as_ref().map_or_else(Vec::new, |r| r.since(applied))
    }

    /// See [`Record::note_changed`].
    pub(crate) fn note_changed(&mut self, node: u32, names: Vec<String>) {
        if !names.is_empty() {
            self.record().note_changed(node, names);
        }
    }

    /// See [`Record::unread_elsewhere`].
    pub(crate) fn unread_elsewhere(&self, node: u32) -> bool {
        self.0.as_ref().is_some_and(|r| r.unread_elsewhere(node))
    }

    /// See [`Record::note_user_code`].
    pub(crate) fn note_user_code(&mut self, node: u32) {
        self.record().note_user_code(node);
    }

    /// Forgets code of the database's own that ran on nodes the session no longer has a
    /// connection to (see `Record::user_code`).
    pub(crate) fn keep_user_code_on(&mut self, has: impl Fn(u32) -> bool) {
        if let Some(r) = self.0.as_mut() {
            r.user_code.retain(|n| has(*n));
        }
    }

    /// Whether code of the database's own ran somewhere and what it changed is still to be
    /// read back (see [`Record::note_user_code`]).
    pub(crate) fn has_user_code(&self) -> bool {
        self.0.as_ref().is_some_and(|r| !r.user_code.is_empty())
    }

    /// See [`Record::custom_names`].
    pub(crate) fn custom_names(&self) -> Vec<String> {
        self.0.as_ref().map_or_else(Vec::new, |r| r.custom_names())
    }

    /// Records the answer to [`read_back_sql`]`(name)`: a setting's value
    /// ([`Record::record_value`]), or every setting's ([`Record::record_every_value`]).
    pub(crate) fn record_read_back(&mut self, name: &str, answer: &str) -> Option<u64> {
        if name == pgwarden_sql::EVERY_SETTING {
            self.record().record_every_value(answer)
        } else {
            self.record_value(name, answer)
        }
    }

    /// Whether any setting (or prepared statement) is still to be read back.
    pub(crate) fn has_unread(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|r| !r.unread.is_empty() || !r.prepared.is_empty())
    }

    /// A SQL `PREPARE` of `name` (`text`) ran in a transaction on `node`, a standby.
    pub(crate) fn note_prepared(&mut self, node: u32, name: String) {
        let r = self.record();
        r.prepared.retain(|p| p.name != name);
        r.prepared.push(Prepared {
            node,
            name,
            text: None,
        });
    }

    /// A cursor `name` was declared WITH HOLD in a transaction on `node`, a standby.
    pub(crate) fn note_held(&mut self, name: String, node: u32) {
        let r = self.record();
        r.held.retain(|(n, _)| *n != name);
        r.held.push((name, node));
    }

    /// The standby where cursor `name` lives (see `note_held`).
    pub(crate) fn held_on(&self, name: &str) -> Option<u32> {
        self.0.as_ref().and_then(|r| {
            r.held
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, node)| *node)
        })
    }

    /// Whether any cursor lives on a standby.
    pub(crate) fn has_held(&self) -> bool {
        self.0.as_ref().is_some_and(|r| !r.held.is_empty())
    }

    /// Cursor `name` is closed (None: all of them, or their connection is gone).
    pub(crate) fn forget_held(&mut self, name: Option<&str>) {
        if let Some(r) = self.0.as_mut() {
            r.held.retain(|(n, _)| name.is_some_and(|name| name != n));
        }
    }

    /// The prepared statements to make on the primary (see `note_prepared`), in order.
    pub(crate) fn take_prepared(&mut self) -> Vec<Prepared> {
        self.0
            .as_mut()
            .map_or_else(Vec::new, |r| std::mem::take(&mut r.prepared))
    }

    /// Those that could not be made yet (their node busy, or no primary).
    pub(crate) fn keep_prepared(&mut self, kept: Vec<Prepared>) {
        if !kept.is_empty() {
            let r = self.record();
            let later = std::mem::take(&mut r.prepared);
            r.prepared = kept;
            r.prepared.extend(later);
        }
    }

    /// See [`Record::unread_on`].
    pub(crate) fn unread_on(&self, node: u32) -> bool {
        self.0.as_ref().is_some_and(|r| r.unread_on(node))
    }

    /// See [`Record::take_unread`].
    pub(crate) fn take_unread(&mut self) -> Vec<(u32, String)> {
        self.0.as_mut().map_or_else(Vec::new, |r| r.take_unread())
    }

    /// See [`Record::keep_unread`].
    pub(crate) fn keep_unread(&mut self, kept: Vec<(u32, String)>) {
        if !kept.is_empty() {
            self.record().keep_unread(kept);
        }
    }

    /// See [`Record::record_value`].
    pub(crate) fn record_value(&mut self, name: &str, utf8_hex: &str) -> Option<u64> {
        self.record().record_value(name, utf8_hex)
    }

    /// The session began with SERIALIZABLE as its default isolation (`options=-c
    /// default_transaction_isolation=serializable`, or that name as a startup parameter).
    pub(crate) fn begin_serializable(&mut self) {
        self.record().serializable_at_start = true;
    }

    /// Whether the session's transactions are SERIALIZABLE by default, so that none of its
    /// reads may run on a standby. (Not what a server, database or role configures.)
    pub(crate) fn serializable(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|r| r.serializable_now.unwrap_or(r.serializable_at_start))
    }

    /// Whether the session has chosen its default isolation itself (a SET not undone since):
    /// then a server, database or role default does not apply to it.
    pub(crate) fn isolation_chosen(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|r| r.serializable_now.is_some())
    }

    #[cfg(test)]
    fn queries(&self) -> Vec<&[u8]> {
        self.0.as_ref().map_or_else(Vec::new, |r| r.queries())
    }
}

/// Whether a setting query may change the default isolation (the parser decides; most
/// setting queries, `SET application_name …` at each pool checkout, need not meet it).
fn may_change_isolation(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    ["isolation", "reset", "discard"]
        .iter()
        .any(|w| lower.contains(w))
}

/// The text of hex-encoded UTF-8 (what `record_value` is given); empty when it is not.
fn hex_text(hex: &str) -> String {
    String::from_utf8(hex_bytes(hex)).unwrap_or_default()
}

/// The bytes of `hex` (as `encode(…, 'hex')` gives them); none when it is not hex.
pub(crate) fn hex_bytes(hex: &str) -> Vec<u8> {
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    bytes.unwrap_or_default()
}

/// `s` as an SQL string literal, whatever the session's `standard_conforming_strings`.
pub(crate) fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str("E'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Parameters `RESET ALL` leaves alone (PostgreSQL's GUC_NO_RESET_ALL): only `DISCARD ALL`
/// (which sets the session authorization back) resets the role. A custom parameter
/// (`myapp.tenant`) is reset too, but stays defined: `current_setting('myapp.tenant')` then
/// gives '' where a connection that never had it raises an error, so its `SET` is kept.
const NOT_RESET_BY_RESET_ALL: &[&str] = &[
    "role",
    "seed",
    "session_authorization",
    "transaction_isolation",
    "transaction_read_only",
    "transaction_deferrable",
];

/// Whether later settings may depend on this one: the role and session authorization decide
/// which settings may be set at all, `search_path` how some values are looked up
/// (`default_text_search_config`), `client_encoding` how a later text that is not ASCII is
/// read, and a reset changes all of them.
fn relied_on(kind: &SettingKind) -> bool {
    match kind {
        SettingKind::One(n) => {
            matches!(
                n.as_str(),
                "role" | "session_authorization" | "search_path" | "client_encoding"
            )
        }
        SettingKind::Reset { .. } | SettingKind::Other => true,
    }
}

/// Settings any role may set, whose values depend on nothing else: kept between a setting and
/// the one that makes it moot, they do not keep it (an application that sets the role and
/// `application_name` at each checkout keeps one of each).
fn independent(kind: &SettingKind) -> bool {
    const PLAIN: &[&str] = &[
        "application_name",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "idle_session_timeout",
        "work_mem",
        "maintenance_work_mem",
        "timezone",
        "datestyle",
        "intervalstyle",
        "extra_float_digits",
        "client_encoding",
        "client_min_messages",
        "bytea_output",
        "standard_conforming_strings",
        "synchronous_commit",
        "enable_seqscan",
        "enable_indexscan",
        "jit",
    ];
    match kind {
        // A custom parameter (`myapp.tenant`) is only a string, unless a loaded module
        // defines it.
        SettingKind::One(n) => n.contains('.') || PLAIN.contains(&n.as_str()),
        _ => false,
    }
}

/// Whether a query of kind `new`, run after one of kind `old`, leaves nothing of what `old` did
/// to the session's settings, so that replaying `old` first changes nothing.
pub(crate) fn supersedes(new: &SettingKind, old: &SettingKind) -> bool {
    use SettingKind::*;
    match (new, old) {
        (One(a), One(b)) => a == b,
        (Reset { role, .. }, One(b)) => {
            !b.contains('.') && (*role || !NOT_RESET_BY_RESET_ALL.contains(&b.as_str()))
        }
        (
            Reset {
                role: r2,
                statements: s2,
            },
            Reset {
                role: r1,
                statements: s1,
            },
        ) => (!r1 || *r2) && (!s1 || *s2),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SettingKind::*;

    fn one(n: &str) -> SettingKind {
        One(n.to_string())
    }

    #[test]
    fn literals_survive_either_string_mode() {
        assert_eq!(literal("app"), "E'app'");
        assert_eq!(literal(r#""$user", public"#), r#"E'"$user", public'"#);
        assert_eq!(literal(r"a'b\c"), r"E'a''b\\c'");
    }

    /// A whole Query message of `sql`, as the record keeps it.
    fn q(sql: &str) -> Bytes {
        let mut b = bytes::BytesMut::new();
        pgwarden_wire::msg::frontend::query(&mut b, sql);
        b.freeze()
    }

    #[test]
    fn the_default_isolation_follows_what_the_session_set() {
        let hex = |v: &str| v.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        let mut s = Settings::default();
        assert!(!s.serializable());
        s.push(q("SET application_name = 'isolation'"), Other);
        assert!(!s.serializable(), "a name that merely contains the word");
        s.push(q("SET default_transaction_isolation = serializable"), Other);
        assert!(s.serializable());
        s.push(q("SET application_name = 'a'"), Other);
        assert!(s.serializable(), "other settings change nothing");
        s.record_value("default_transaction_isolation", &hex("read committed"));
        assert!(!s.serializable(), "a value read back");
        s.record_value("default_transaction_isolation", &hex("serializable"));
        assert!(s.serializable());
        s.push(q("RESET ALL"), Other);
        assert!(!s.serializable() && !s.isolation_chosen());
        // Begun SERIALIZABLE (startup options): a reset goes back to that.
        let mut s = Settings::default();
        s.begin_serializable();
        assert!(s.serializable());
        s.push(
            q("SET default_transaction_isolation = 'read committed'"),
            Other,
        );
        assert!(!s.serializable() && s.isolation_chosen());
        s.push(q("RESET default_transaction_isolation"), Other);
        assert!(s.serializable() && !s.isolation_chosen());
        assert_eq!(hex_text("zz"), "");
        assert_eq!(hex_text(&hex("é")), "é");
    }

    /// The recorded Query messages' texts.
    fn query_texts(s: &Settings) -> Vec<String> {
        s.queries()
            .iter()
            .map(|b| String::from_utf8_lossy(&b[5..b.len() - 1]).into_owned())
            .collect()
    }

    #[test]
    fn every_setting_read_back_is_a_reset_and_each_value() {
        let mut s = Settings::default();
        s.push(Bytes::from_static(b"SET work_mem = '7MB'"), one("work_mem"));
        let before = s.last();
        // Not of the form: nothing recorded.
        for bad in [
            "role",
            "role=6e6f6e65,=00",
            "role=6e6f6e6x",
            "role=6e,work_mem",
        ] {
            assert_eq!(
                s.record_read_back(pgwarden_sql::EVERY_SETTING, bad),
                None,
                "{bad}"
            );
            assert_eq!(s.last(), before, "{bad}");
        }
        let seq = s
            .record_read_back(
                pgwarden_sql::EVERY_SETTING,
                "session_authorization=6170,role=6e6f6e65,work_mem=324d42",
            )
            .unwrap();
        assert_eq!(seq, s.last());
        let texts = query_texts(&s);
        // The earlier SET is moot: a connection that had it gets the reset, then the values.
        assert_eq!(texts.len(), 4, "{texts:?}");
        assert_eq!(texts[0], "RESET ALL");
        for (t, name) in texts[1..]
            .iter()
            .zip(["session_authorization", "role", "work_mem"])
        {
            assert!(t.contains(&format!("set_config(E'{name}'")), "{t}");
        }
        assert_eq!(s.since(before).len(), 4);
    }

    /// After code of the database's own, every setting is read back, but only before another
    /// node is used, first among what is read back, and asking by name for the custom
    /// parameters the session has set (`pg_settings` does not list them).
    #[test]
    fn user_code_reads_every_setting_back_before_another_node() {
        let mut s = Settings::default();
        s.push(
            Bytes::from_static(b"Q\0\0\0\x27SET ROLE alice; SET app.tenant = 1\0"),
            SettingKind::Other,
        );
        s.push(Bytes::from_static(b"SET work_mem = '7MB'"), one("work_mem"));
        s.note_changed(0, vec!["role".into(), "my.flag".into()]);
        s.note_user_code(0);
        assert!(s.unread_on(0));
        assert!(
            !s.unread_elsewhere(0),
            "the node that ran it needs no read-back"
        );
        assert!(s.unread_elsewhere(1), "another node does");
        assert_eq!(s.custom_names(), ["app.tenant", "my.flag"]);
        let sql = read_back_sql(pgwarden_sql::EVERY_SETTING, &s.custom_names());
        assert!(
            sql.ends_with(
                "UNION SELECT 'role' UNION SELECT E'app.tenant' UNION SELECT E'my.flag') AS s(n)"
            ),
            "{sql}"
        );
        assert_eq!(
            s.take_unread(),
            [
                (0, pgwarden_sql::EVERY_SETTING.to_string()),
                (0, "role".to_string()),
                (0, "my.flag".to_string())
            ]
        );
        assert!(!s.unread_elsewhere(1));
        assert_eq!(
            read_back_sql(pgwarden_sql::EVERY_SETTING, &[]),
            EVERY_SETTING_SQL
        );
    }

    #[test]
    fn settings_read_back_are_recorded_once_each_and_make_earlier_ones_moot() {
        let mut s = Settings::default();
        s.push(
            Bytes::from_static(b"SET search_path = public"),
            one("search_path"),
        );
        s.note_changed(1, vec!["search_path".into(), "work_mem".into()]);
        s.note_changed(1, vec!["search_path".into(), "role".into()]);
        s.note_changed(1, vec!["session_authorization".into()]);
        assert!(s.unread_elsewhere(0));
        assert!(!s.unread_elsewhere(1));
        assert!(s.unread_on(1) && !s.unread_on(0));
        // The session authorization and the role first (each resets what follows it), then the
        // rest in the order first changed.
        let unread = s.take_unread();
        let names: Vec<&str> = unread.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(
            names,
            ["session_authorization", "role", "search_path", "work_mem"]
        );
        assert!(!s.has_unread() && !s.unread_elsewhere(0));
        s.keep_unread(vec![(1, "work_mem".into())]);
        assert!(s.has_unread() && s.unread_on(1));
        s.take_unread();
        assert_eq!(s.record_value("search_path", "61'70"), None);
        let seq = s.record_value("search_path", "617070").unwrap();
        assert_eq!(seq, s.last());
        let texts = query_texts(&s);
        assert_eq!(
            texts,
            ["SELECT pg_catalog.set_config(E'search_path', pg_catalog.convert_from(pg_catalog.decode('617070', 'hex'), 'UTF8'), false)"]
        );
    }

    #[test]
    fn a_statement_prepared_on_a_standby_is_made_on_the_primary_but_binds_no_node() {
        let mut s = Settings::default();
        s.note_prepared(1, "q".into());
        s.note_prepared(1, "r".into());
        s.note_prepared(1, "q".into());
        // To be made once the session comes to another node...
        assert!(s.has_unread() && s.unread_elsewhere(0) && !s.unread_elsewhere(1));
        // ...but the standby may go without ending the session.
        assert!(!s.unread_on(1));
        let made = s.take_prepared();
        let names: Vec<&str> = made.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["r", "q"]);
        assert!(!s.has_unread());
        // Kept for later (no primary yet): before any noted meanwhile.
        s.note_prepared(1, "t".into());
        s.keep_prepared(made);
        let names: Vec<String> = s.take_prepared().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["r", "q", "t"]);
    }

    #[test]
    fn what_makes_an_earlier_setting_moot() {
        let reset_all = Reset {
            role: false,
            statements: false,
        };
        let dealloc_reset = Reset {
            role: false,
            statements: true,
        };
        let discard_all = Reset {
            role: true,
            statements: true,
        };
        #[rustfmt::skip]
        let cases = [
            // (new, old, moot?)
            (one("work_mem"), one("work_mem"), true),
            (one("work_mem"), one("search_path"), false),
            (one("role"), one("role"), true),
            (reset_all.clone(), one("work_mem"), true),
            (reset_all.clone(), one("role"), false),
            (reset_all.clone(), one("session_authorization"), false),
            (discard_all.clone(), one("role"), true),
            (reset_all.clone(), reset_all.clone(), true),
            // A later plain RESET ALL does not drop the statements an earlier one dropped
            // on connections that have not had it.
            (reset_all.clone(), dealloc_reset.clone(), false),
            (dealloc_reset.clone(), reset_all.clone(), true),
            (discard_all.clone(), dealloc_reset.clone(), true),
            (reset_all.clone(), discard_all.clone(), false),
            (one("work_mem"), reset_all.clone(), false),
            (Other, one("work_mem"), false),
            (one("work_mem"), Other, false),
            (reset_all.clone(), Other, false),
            (discard_all.clone(), Other, false),
            (reset_all.clone(), one("myapp.tenant"), false),
            (discard_all, one("myapp.tenant"), false),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .filter(|(new, old, want)| supersedes(new, old) != *want)
            .map(|(new, old, want)| format!("{new:?} after {old:?}: want {want}"))
            .collect();
        assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    }

    /// The record after each query of `run` succeeded.
    fn settled(run: &[(&'static str, SettingKind)]) -> Vec<String> {
        let mut s = Settings::default();
        for (t, kind) in run {
            let seq = s.push(q(t), kind.clone());
            s.settle(seq);
        }
        s.queries()
            .iter()
            .map(|q| {
                let text = q
                    .get(5..)
                    .and_then(|b| pgwarden_wire::msg::query_text(b).ok());
                String::from_utf8_lossy(text.unwrap_or_default()).into_owned()
            })
            .collect()
    }

    #[test]
    fn what_later_settings_relied_on_is_kept() {
        let reset_all = Reset {
            role: false,
            statements: false,
        };
        type Run = Vec<(&'static str, SettingKind)>;
        #[rustfmt::skip]
        let cases: Vec<(Run, Vec<&str>)> = vec![
            // The second needs admin's rights where it is replayed.
            (
                vec![("SET ROLE admin", one("role")), ("SET session_replication_role = replica", one("session_replication_role")), ("RESET ROLE", one("role"))],
                vec!["SET ROLE admin", "SET session_replication_role = replica", "RESET ROLE"],
            ),
            // Looked up through the search_path.
            (
                vec![("SET search_path = app", one("search_path")), ("SET default_text_search_config = mycfg", one("default_text_search_config")), ("RESET ALL", reset_all.clone())],
                vec!["RESET ALL"],
            ),
            (
                vec![("SET search_path = app", one("search_path")), ("SET default_text_search_config = mycfg", one("default_text_search_config")), ("SET search_path = other", one("search_path"))],
                vec!["SET search_path = app", "SET default_text_search_config = mycfg", "SET search_path = other"],
            ),
            // Plain settings between do not keep the role: one of each stays.
            (
                vec![("SET ROLE t1", one("role")), ("SET application_name = 't1'", one("application_name")), ("SET myapp.tenant = 1", one("myapp.tenant")), ("SET ROLE t2", one("role")), ("SET application_name = 't2'", one("application_name")), ("SET myapp.tenant = 2", one("myapp.tenant"))],
                vec!["SET ROLE t2", "SET application_name = 't2'", "SET myapp.tenant = 2"],
            ),
            // Nothing kept between: dropped.
            (
                vec![("SET ROLE a", one("role")), ("SET ROLE b", one("role"))],
                vec!["SET ROLE b"],
            ),
            // DateStyle keeps the part a value does not name: the format set before an order
            // stays (the regression suite's `date` script read ISO dates back as
            // 01-08-1999 on a connection given only `SET datestyle TO dmy`).
            (
                vec![("SET datestyle TO iso", one("datestyle")), ("SET datestyle TO ymd", one("datestyle")), ("SET datestyle TO dmy", one("datestyle"))],
                vec!["SET datestyle TO iso", "SET datestyle TO dmy"],
            ),
            (
                vec![("SET datestyle TO iso", one("datestyle")), ("SET datestyle TO ymd", one("datestyle")), ("SET datestyle = 'SQL, MDY'", one("datestyle"))],
                vec!["SET datestyle = 'SQL, MDY'"],
            ),
            (
                vec![("SET datestyle TO iso, dmy", one("datestyle")), ("SET datestyle TO sql", one("datestyle")), ("RESET datestyle", one("datestyle"))],
                vec!["RESET datestyle"],
            ),
            // A text that is not ASCII is replayed in the encoding it was sent in.
            (
                vec![("SET client_encoding = 'UTF8'", one("client_encoding")), ("SET myapp.x = '\u{e9}'", one("myapp.x")), ("SET client_encoding = 'LATIN1'", one("client_encoding"))],
                vec!["SET client_encoding = 'UTF8'", "SET myapp.x = '\u{e9}'", "SET client_encoding = 'LATIN1'"],
            ),
            (
                vec![("SET client_encoding = 'UTF8'", one("client_encoding")), ("SET myapp.x = 'e'", one("myapp.x")), ("SET client_encoding = 'LATIN1'", one("client_encoding"))],
                vec!["SET myapp.x = 'e'", "SET client_encoding = 'LATIN1'"],
            ),
        ];
        for (run, want) in cases {
            assert_eq!(settled(&run), want, "{run:?}");
        }
    }

    /// Sessions that alternate settings keep a record as long as the settings they have:
    /// a long ASCII text (its message's length byte above 0x7F) is plain, and a
    /// `client_encoding` kept for a text that is not ASCII goes when that text does.
    #[test]
    fn alternating_settings_keep_the_record_short() {
        let long = format!("SET myapp.ctx = '{}'", "a".repeat(110));
        let runs: [[(&str, SettingKind); 2]; 2] = [
            [
                ("SET ROLE r0", one("role")),
                (long.as_str(), one("myapp.ctx")),
            ],
            [
                ("SET client_encoding = 'LATIN1'", one("client_encoding")),
                ("SET myapp.x = '\u{e9}'", one("myapp.x")),
            ],
        ];
        for run in runs {
            let mut s = Settings::default();
            for _ in 0..50 {
                for (t, kind) in &run {
                    let seq = s.push(q(t), kind.clone());
                    s.settle(seq);
                }
            }
            assert!(
                s.queries().len() <= 3,
                "{:?}: {}",
                run[0].0,
                s.queries().len()
            );
        }
    }

    #[test]
    fn the_record_keeps_one_entry_per_setting_and_connections_get_what_they_missed() {
        let mut s = Settings::default();
        let q = |t: &'static str| Bytes::from_static(t.as_bytes());
        // A query that succeeded.
        let ok = |s: &mut Settings, t: &'static str, kind: SettingKind| {
            let seq = s.push(q(t), kind);
            s.settle(seq);
            seq
        };
        let reset_all = || Reset {
            role: false,
            statements: false,
        };
        let a = ok(
            &mut s,
            "SET application_name = 'a'",
            one("application_name"),
        );
        ok(&mut s, "SET work_mem = '1MB'", one("work_mem"));
        // A connection that has had the first two.
        let seen = s.last();
        for _ in 0..1000 {
            ok(
                &mut s,
                "SET application_name = 'b'",
                one("application_name"),
            );
        }
        ok(&mut s, "SET a.b = 1; SET a.c = 2", Other);
        assert_eq!(
            s.queries(),
            [
                &b"SET work_mem = '1MB'"[..],
                b"SET application_name = 'b'",
                b"SET a.b = 1; SET a.c = 2"
            ]
        );
        // A new connection gets all three; the one that had the first two gets what came
        // after them, the overriding application_name included.
        assert_eq!(s.since(0).len(), 3);
        let queries = |r: Vec<Replay>| r.into_iter().map(|r| r.query).collect::<Vec<_>>();
        assert_eq!(
            queries(s.since(seen)),
            [
                q("SET application_name = 'b'"),
                q("SET a.b = 1; SET a.c = 2")
            ]
        );
        assert_eq!(
            s.since(a).len(),
            3,
            "the first entry is gone, the rest remain"
        );
        // A SET that failed (never settled) makes nothing moot: the value before it stays.
        // Where the session has it, a connection that refuses its replay lacks it; the failed
        // one's replay may fail.
        s.push(q("SET work_mem = 'lots'"), one("work_mem"));
        let all = s.since(0);
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].query, q("SET work_mem = '1MB'"));
        assert_eq!(
            all.iter().map(|r| r.held).collect::<Vec<_>>(),
            [true, true, true, false]
        );
        // RESET ALL drops the settings before it, but not the multi-setting query, nor a
        // custom parameter (still defined after RESET ALL).
        ok(&mut s, "SET myapp.tenant = 7", one("myapp.tenant"));
        ok(&mut s, "RESET ALL", reset_all());
        assert_eq!(
            s.queries(),
            [
                &b"SET a.b = 1; SET a.c = 2"[..],
                b"SET myapp.tenant = 7",
                b"RESET ALL"
            ]
        );
        // Repeated resets keep one.
        for _ in 0..100 {
            ok(&mut s, "RESET ALL", reset_all());
        }
        assert_eq!(s.queries().len(), 3);
        // A settled entry settled again, or one long gone, changes nothing.
        let last = s.last();
        s.settle(last);
        s.settle(a);
        assert_eq!(s.queries().len(), 3);
        assert!(s.since(last).is_empty());
    }
}
