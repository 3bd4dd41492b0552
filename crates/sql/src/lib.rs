//! Where may a statement run? PostgreSQL's own grammar (libpg_query, through `pg_query`)
//! decides; anything it cannot vouch for is a [`Class::Write`] and goes to the primary.
//!
//! The rules, in order:
//! * a leading `/*NO LOAD BALANCE*/` comment or a parse error → primary;
//! * several statements that are all session resets (`SET`, `RESET`, `DISCARD`, `DEALLOCATE`,
//!   `UNLISTEN`, `CLOSE ALL`, `SELECT pg_advisory_unlock_all()`, as in asyncpg's pool reset)
//!   → [`Class::Session`]; several statements of any other kind → primary, unless all are reads;
//! * transaction control → [`Class::Begin`] / [`Class::End`] / [`Class::InTransaction`];
//! * `SET`, `RESET`, `DISCARD`, `DEALLOCATE`, `UNLISTEN` → [`Class::Session`] (applies to every
//!   backend the session uses);
//! * `LISTEN`, SQL `PREPARE`, `CREATE TEMP …` → [`Class::Sticky`] (the rest of the session stays
//!   on the primary, where that state lives);
//! * `SELECT` (and read-only `WITH`) is a [`Class::Read`] only if it writes no table (no DML in
//!   a CTE, no `INTO`), takes no row lock (`FOR UPDATE/SHARE`), reads no system catalog, and
//!   calls only functions the caller knows to be read-only;
//! * `SHOW`, `EXPLAIN` without `ANALYZE` (of anything), `EXPLAIN ANALYZE` of a read, and
//!   `COPY … TO STDOUT` of a read are reads;
//! * everything else is a write.

use std::borrow::Cow;

pub mod encoding;
pub use encoding::{raw_offset, server_text, unsure_reading, TextEncoding};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// May run on a standby.
    Read,
    /// Must run on the primary.
    Write,
    /// Must run on the primary, and writes nothing: asks whether the server is one
    /// (`SHOW transaction_read_only`), which a standby would answer for itself. The session's
    /// reads need not wait for the standbys after it.
    PrimaryRead,
    /// `BEGIN` / `START TRANSACTION`.
    Begin { read_only: bool },
    /// `COMMIT`, `END`, `ROLLBACK`, `ABORT` (outside a transaction they are no-ops).
    End,
    /// `SAVEPOINT`, `RELEASE`, `ROLLBACK TO`, `SET TRANSACTION`, `FETCH`, `CLOSE`: goes where the
    /// transaction runs.
    InTransaction,
    /// Session settings: every backend of the session needs them.
    Session,
    /// Creates state only the primary will have: the session stays there.
    Sticky,
}

/// A classification and why, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub class: Class,
    pub reason: Cow<'static, str>,
    /// The query holds a `SET` / `RESET` statement (perhaps `LOCAL`, perhaps among others) or
    /// calls `set_config`: [`setting_names`] tells which session settings it may change.
    pub sets: bool,
    /// The query may leave state in the server process that `DISCARD ALL` keeps (see
    /// [`leaves_process_state`]; from the parser's list of the functions it calls, when the
    /// parser ran).
    pub process_state: bool,
    /// The query runs code of the database's own (a function outside `pg_catalog`, `CALL`,
    /// `DO`), which may change session settings unseen (`set_config` or `SET` in its body):
    /// every setting is read back once it has run.
    pub runs_user_code: bool,
}

fn v(class: Class, reason: impl Into<Cow<'static, str>>) -> Verdict {
    Verdict {
        class,
        reason: reason.into(),
        sets: false,
        process_state: false,
        runs_user_code: false,
    }
}

/// Which functions are known not to write. pgwarden fills it from the primary's `pg_proc`
/// (immutable and stable functions of `pg_catalog`) and the configured lists.
pub trait FunctionCatalog {
    fn is_read_only(&self, schema: Option<&str>, name: &str) -> bool;
    /// Whether `name` is a function of `pg_catalog` (of any volatility): not the database's
    /// own code. Not known: no (its call is taken for user code).
    fn is_builtin(&self, _schema: Option<&str>, _name: &str) -> bool {
        false
    }
}

/// Knows no function: every call goes to the primary.
pub struct NoFunctions;

impl FunctionCatalog for NoFunctions {
    fn is_read_only(&self, _: Option<&str>, _: &str) -> bool {
        false
    }
}

/// Case-insensitive search for `word` as a whole word (not part of an identifier).
fn has_word(lower: &str, word: &str) -> bool {
    let bytes = lower.as_bytes();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$';
    lower.match_indices(word).any(|(i, _)| {
        let before = i == 0 || !is_ident(bytes[i - 1]);
        let end = i + word.len();
        let after = end >= bytes.len() || !is_ident(bytes[end]);
        before && after
    })
}

fn starts_with_words(lower: &str, words: &[&str]) -> bool {
    let mut it = lower.split_whitespace();
    words
        .iter()
        .all(|w| it.next().is_some_and(|t| t.trim_end_matches(';') == *w))
}

/// A plain `SELECT` the parser need not see: only letters, digits, `_`, spaces, `,` `.` `=`
/// `<` `>` `*` `$` and one trailing `;`: no function call, no string, no comment, no cast, no
/// subquery; and no word that could make it more than a read (`for`, `into`) or reach a system
/// catalog (`pg_…`, `information_schema`). Anything else goes through libpg_query.
fn plain_select(sql: &str) -> bool {
    let mut body = sql.as_bytes().trim_ascii();
    while let [rest @ .., b';'] = body {
        body = rest;
    }
    if body.len() < 7
        || !body[..6].eq_ignore_ascii_case(b"select")
        || !body[6].is_ascii_whitespace()
    {
        return false;
    }
    // One pass over the bytes (this runs for every plain query), a word (letters, digits, `_`)
    // at a time, each looked at once it is whole.
    let mut i = 6;
    while let Some(&c) = body.get(i) {
        match PLAIN[c as usize] {
            SEPARATOR => i += 1,
            WORD => {
                let start = i;
                i += 1;
                while body.get(i).is_some_and(|&c| PLAIN[c as usize] == WORD) {
                    i += 1;
                }
                if more_than_a_plain_read(&body[start..i]) {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

/// What each byte is to `plain_select`: part of a word, a separator it allows, or neither.
const PLAIN: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        table[i] = if c.is_ascii_alphanumeric() || c == b'_' {
            WORD
        } else if matches!(
            c,
            b' ' | b'\n' | b'\t' | b'\r' | b',' | b'.' | b'=' | b'<' | b'>' | b'*' | b'$'
        ) {
            SEPARATOR
        } else {
            0
        };
        i += 1;
    }
    table
};
const WORD: u8 = 1;
const SEPARATOR: u8 = 2;

/// A word that keeps a SELECT from the fast path (see `plain_select`): `for`, `into`,
/// `information_schema`, `pg_…`, in any case. Most words start with another letter, and cost
/// one test.
#[inline]
fn more_than_a_plain_read(word: &[u8]) -> bool {
    match word.first().map(|c| c | 0x20) {
        Some(b'f') => word.eq_ignore_ascii_case(b"for"),
        Some(b'i') => {
            word.eq_ignore_ascii_case(b"into") || word.eq_ignore_ascii_case(b"information_schema")
        }
        Some(b'p') => word
            .get(..3)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"pg_")),
        _ => false,
    }
}

/// Classifies one simple-query string or one Parse'd statement.
pub fn classify(sql: &str, functions: &dyn FunctionCatalog) -> Verdict {
    if plain_select(sql) {
        return v(Class::Read, "plain SELECT");
    }
    if let Some(verdict) = plain_transaction_control(sql) {
        return verdict;
    }
    let trimmed = sql.trim_start();
    if trimmed.starts_with("/*NO LOAD BALANCE*/") {
        let mut verdict = v(Class::Write, "/*NO LOAD BALANCE*/ comment");
        verdict.process_state = leaves_process_state(sql);
        verdict.runs_user_code = may_run_user_code(sql, functions);
        return verdict;
    }
    let summary = match pg_query::summary(sql, 0, -1) {
        Ok(s) => s,
        Err(_) => {
            // What the server runs of it is unknown (with `standard_conforming_strings` off,
            // it may read strings otherwise and run statements this reading does not see).
            let mut verdict = v(
                Class::Write,
                "does not parse; the primary reports the error",
            );
            verdict.process_state = true;
            return verdict;
        }
    };
    let mut verdict = classify_summary(sql, &summary, functions);
    verdict.runs_user_code = summary
        .statement_types
        .iter()
        .any(|t| t == "CallStmt" || t == "DoStmt")
        || summary.functions.iter().any(|f| {
            let schema = f.schema_name.as_deref();
            // (A function declared read-only is trusted not to change settings either.)
            !functions.is_builtin(schema, &f.function_name)
                && !functions.is_read_only(schema, &f.function_name)
        });
    if verdict.class == Class::Read && asks_whether_primary(sql) {
        verdict.class = Class::PrimaryRead;
        verdict.reason =
            "asks whether the server is read-only or a standby: the session's primary answers"
                .into();
    }
    let updates_settings =
        summary.statement_types.iter().any(|t| t == "UpdateStmt") && names_pg_settings(sql);
    verdict.sets = summary
        .statement_types
        .iter()
        .any(|t| t == "VariableSetStmt")
        || summary
            .functions
            .iter()
            .any(|f| f.function_name.eq_ignore_ascii_case("set_config"))
        // (A `set_config` by PostgreSQL's rule, of a name that is not read here.)
        || updates_settings;
    verdict.process_state = summary
        .statement_types
        .iter()
        // A DO block's body is a string to the parser, and may build its statements.
        .any(|t| t == "LoadStmt" || t == "DoStmt")
        || (verdict.sets && sets_seed_maybe(sql))
        || updates_settings
        || summary.functions.iter().any(|f| {
            PROCESS_STATE_FUNCTIONS
                .iter()
                .any(|n| f.function_name.eq_ignore_ascii_case(n))
        })
        // Read with `standard_conforming_strings` off, a backslash may end a string early and
        // show statements this reading does not see.
        || (memchr::memchr(b'\\', sql.as_bytes()).is_some() && leaves_process_state(sql));
    verdict
}

/// Whether `sql` names `transaction_read_only` or `in_hot_standby` (case aside): drivers ask
/// them to tell a primary from a standby (pgjdbc's `targetServerType=primary` runs `SHOW
/// transaction_read_only`; pgx's `target_session_attrs` too). A session through pgwarden
/// writes, so the primary answers (`off`) rather than a standby the read was balanced to,
/// which would answer `on` and have the driver refuse the connection.
fn asks_whether_primary(sql: &str) -> bool {
    contains_lowercase(sql, b"transaction_read_only") || contains_lowercase(sql, b"in_hot_standby")
}

/// Whether `sql` may run code of the database's own (see `Verdict::runs_user_code`): a cheap
/// look at its text, for statements the parser is spared (a transaction's), that errs toward
/// yes: `CALL`, `DO`, a quoted name or a comment before a `(`, a name qualified by a schema
/// other than `pg_catalog`, or a name that is neither a built-in function (nor one declared
/// read-only) nor a word that takes a `(` in SQL, nor a table after `INTO` (an `INSERT`'s
/// column list).
pub fn may_run_user_code(sql: &str, functions: &dyn FunctionCatalog) -> bool {
    let b = sql.as_bytes();
    let first = skip_comments(sql);
    if has_first_word_of(first, "call") || has_first_word_of(first, "do") {
        return true;
    }
    let word_before = |end: usize| {
        let mut e = end;
        while e > 0 && b[e - 1].is_ascii_whitespace() {
            e -= 1;
        }
        let mut s = e;
        while s > 0 && (b[s - 1].is_ascii_alphanumeric() || b[s - 1] == b'_' || b[s - 1] >= 0x80) {
            s -= 1;
        }
        (s, e)
    };
    let known = |word: &str| {
        word.eq_ignore_ascii_case("pg_catalog")
            || functions.is_builtin(None, word)
            || functions.is_read_only(None, word)
    };
    memchr::memchr_iter(b'(', b).any(|at| {
        let (start, end) = word_before(at);
        if start == end {
            // `(` after an operator or a `(`; a quoted name (`"f"(…)`) or a comment (`f /*
            // x */ (…)`, `f --\n(…)`) may hide a call.
            return end > 0 && matches!(b[end - 1], b'"' | b'/' | b'\n');
        }
        let word = &sql[start..end];
        if word.as_bytes()[0].is_ascii_digit() {
            return false;
        }
        // A qualified name: a call of the database's own unless in `pg_catalog`.
        if start > 0 && b[start - 1] == b'.' {
            let (qs, qe) = word_before(start - 1);
            if qs == qe {
                return true; // `"schema".f(…)`
            }
            let qualifier = &sql[qs..qe];
            if !qualifier.eq_ignore_ascii_case("pg_catalog") {
                // `INSERT INTO app.t (…)`: a table's column list.
                let (is, ie) = word_before(qs);
                return !sql[is..ie].eq_ignore_ascii_case("into");
            }
            return !known(&word.to_ascii_lowercase());
        }
        let lower = word.to_ascii_lowercase();
        if TAKES_PARENS.contains(&lower.as_str()) || known(&lower) {
            return false;
        }
        // A table's column list: `INSERT INTO t (…)`.
        let (is, ie) = word_before(start);
        !sql[is..ie].eq_ignore_ascii_case("into")
    })
}

/// Words before which SQL writes a `(` that is no function call.
const TAKES_PARENS: &[&str] = &[
    "values",
    "in",
    "exists",
    "any",
    "all",
    "some",
    "array",
    "row",
    "over",
    "filter",
    "within",
    "cast",
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "extract",
    "substring",
    "position",
    "overlay",
    "trim",
    "and",
    "or",
    "not",
    "using",
    "on",
    "as",
    "when",
    "then",
    "else",
    "case",
    "select",
    "from",
    "where",
    "join",
    "by",
    "set",
    "returning",
    "with",
    "lateral",
    "table",
    "is",
    "between",
    "like",
    "ilike",
    "similar",
    "escape",
    "distinct",
    "union",
    "intersect",
    "except",
    "numeric",
    "decimal",
    "varchar",
    "char",
    "character",
    "varying",
    "bit",
    "timestamp",
    "time",
    "interval",
    "float",
    "grouping",
    "rollup",
    "cube",
    "sets",
    "partition",
    "range",
    "rows",
    "groups",
    "order",
    "limit",
    "offset",
    "fetch",
    "for",
    "of",
    "key",
    "primary",
    "unique",
    "check",
    "references",
    "default",
    "conflict",
    "do",
    "update",
    "nothing",
    "constraint",
    "foreign",
    "include",
    "tablesample",
    "repeatable",
    "xmlelement",
    "xmlforest",
    "xmlattributes",
    "xmlparse",
    "xmlserialize",
    "json",
    "treat",
    "collation",
    "normalize",
    "materialized",
    "recursive",
    "search",
    "cycle",
    "if",
];

fn has_first_word_of(sql: &str, word: &str) -> bool {
    sql.get(..word.len())
        .is_some_and(|w| w.eq_ignore_ascii_case(word))
        && sql[word.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
}

/// Whether `sql` changes a database's or role's default settings (`ALTER DATABASE … SET`,
/// `ALTER ROLE … [IN DATABASE …] SET` / `RESET`), as any of its statements: a server's
/// connection keeps the defaults it started with, so pooled connections must not serve new
/// sessions after it. Parsed only when the text holds `alter`.
pub fn changes_default_settings(sql: &str) -> bool {
    contains_lowercase(sql, b"alter")
        && pg_query::summary(sql, 0, -1).is_ok_and(|s| {
            s.statement_types
                .iter()
                .any(|t| t == "AlterDatabaseSetStmt" || t == "AlterRoleSetStmt")
        })
}

/// The databases `sql` needs no other session connected to, as any of its statements:
/// `DROP DATABASE x`, `CREATE DATABASE … TEMPLATE x`, `ALTER DATABASE x RENAME TO …`,
/// `ALTER DATABASE x SET TABLESPACE …` (PostgreSQL refuses them while anyone is: "database x is
/// being accessed by other users"). Idle pooled connections to them are closed first, as a
/// client's own connection would be gone. Parsed only when the text holds `database`.
pub fn databases_to_free(sql: &str) -> Vec<String> {
    use pg_query::protobuf::ObjectType;
    use pg_query::NodeEnum as N;
    if !contains_lowercase(sql, b"database") {
        return Vec::new();
    }
    let Ok(tree) = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) else {
        return Vec::new();
    };
    let option = |options: &[pg_query::protobuf::Node], name: &str| {
        options.iter().find_map(|o| match o.node.as_ref() {
            Some(N::DefElem(d)) if d.defname == name => match d.arg.as_ref()?.node.as_ref()? {
                N::String(v) => Some(v.sval.clone()),
                N::TypeName(t) => t.names.iter().find_map(|n| match n.node.as_ref() {
                    Some(N::String(v)) => Some(v.sval.clone()),
                    _ => None,
                }),
                _ => None,
            },
            _ => None,
        })
    };
    let mut out = Vec::new();
    for raw in &tree.protobuf.stmts {
        match raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
            Some(N::DropdbStmt(d)) => out.push(d.dbname.clone()),
            Some(N::CreatedbStmt(c)) => out.extend(option(&c.options, "template")),
            Some(N::RenameStmt(r)) if r.rename_type == ObjectType::ObjectDatabase as i32 => {
                out.push(r.subname.clone())
            }
            Some(N::AlterDatabaseStmt(a)) if option(&a.options, "tablespace").is_some() => {
                out.push(a.dbname.clone())
            }
            _ => {}
        }
    }
    out
}

/// Whether `sql` may hold several statements: a `;` before its end (perhaps in a string or a
/// comment: a cheap look that errs toward yes, for sparing the parser or a split).
pub fn may_be_several(sql: &str) -> bool {
    sql.trim_end().trim_end_matches(';').contains(';')
}

/// Functions whose effect `DISCARD ALL` keeps (see [`leaves_process_state`]).
const PROCESS_STATE_FUNCTIONS: [&str; 3] = ["setseed", "dblink_connect", "dblink_connect_u"];

/// Whether `sql` may call `set_config`, or name `pg_settings` (an `UPDATE` of it is a
/// `set_config` by PostgreSQL's own rule): a cheap look at its text, case aside, for queries
/// the parser is otherwise spared (a transaction's statements, the extended protocol's binds).
pub fn calls_set_config(sql: &str) -> bool {
    let b = sql.as_bytes();
    memchr::memchr_iter(b'_', b).any(|i| {
        let at = |from: usize, word: &[u8]| {
            i.checked_sub(from)
                .and_then(|start| b.get(start..start + word.len()))
                .is_some_and(|w| w.eq_ignore_ascii_case(word))
        };
        at(3, b"set_config") || at(2, b"pg_settings")
    })
}

/// Whether `sql` holds `name` (lower case), case aside.
fn contains_lowercase(sql: &str, name: &[u8]) -> bool {
    sql.as_bytes()
        .windows(name.len())
        .any(|w| w[0] | 0x20 == name[0] && w.eq_ignore_ascii_case(name))
}

/// Whether `sql` may leave state in the server process that `DISCARD ALL` does not reset, so
/// that the connection must not serve another client after it: a `setseed` call (the next
/// client's `random()` would be a sequence the previous one can predict; `SET SEED` is one
/// too), a named `dblink`
/// link (`dblink_connect`: the next client would find it open, authenticated as this one), a
/// `LOAD` of a library. A cheap look at the text that errs toward yes (a name in a string or
/// a comment counts), for statements [`classify`] does not see (a transaction's); a function
/// call needs a `(`, which most queries that call none lack. State a procedural language keeps
/// (PL/Python's `GD`, PL/Perl's `%_SHARED`) is not seen.
pub fn leaves_process_state(sql: &str) -> bool {
    let bytes = sql.as_bytes();
    if memchr::memchr(b'(', bytes).is_some() {
        const NAMES: [&[u8]; 2] = [b"setseed", b"dblink_connect"];
        let found = bytes.iter().enumerate().any(|(i, &c)| {
            let c = c | 0x20;
            (c == b's' || c == b'd')
                && NAMES.iter().any(|n| {
                    bytes
                        .get(i..i + n.len())
                        .is_some_and(|w| w.eq_ignore_ascii_case(n))
                })
        });
        if found || (calls_set_config(sql) && sets_seed_maybe(sql)) {
            return true;
        }
    }
    if has_unicode_escapes(bytes) {
        return true;
    }
    // `LOAD`, `SET seed` or a DO block (whose body may run either), as any statement.
    let starts = |statement: &str| {
        let word = statement
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .map_or(statement, |end| &statement[..end]);
        word.eq_ignore_ascii_case("load")
            || word.eq_ignore_ascii_case("do")
            || (word.eq_ignore_ascii_case("set") && sets_seed(statement))
            || (word.eq_ignore_ascii_case("update") && names_pg_settings(statement))
    };
    // One statement (the router's texts in a transaction mostly are): no need to split.
    if !may_be_several(sql) {
        return starts(skip_comments(sql));
    }
    any_statement(sql, false, starts)
        // Read with `standard_conforming_strings` off, where a backslash escapes a quote.
        || (memchr::memchr(b'\\', bytes).is_some() && any_statement(sql, true, starts))
}

/// Whether `sql`, which sets something, may set `seed`: the word `seed`, a name spelt with
/// Unicode escapes (`U&"s\0065ed"`), or a `set_config` whose name is not a constant.
fn sets_seed_maybe(sql: &str) -> bool {
    sets_seed(sql)
        || has_unicode_escapes(sql.as_bytes())
        || (calls_set_config(sql) && set_config_may_seed(sql))
}

/// Whether a `set_config` call in `sql` may set `seed`, as the parser reads its name (`$$seed$$`,
/// `E'\163eed'`, `'se'` and `'ed'` on two lines are all `seed`): one whose name is `seed` or not
/// a constant, in either reading of the strings, or a text that does not parse both ways.
fn set_config_may_seed(sql: &str) -> bool {
    let Some(readings) = both_readings(sql) else {
        return true;
    };
    readings.iter().any(|tree| {
        tree.protobuf
            .nodes()
            .into_iter()
            .any(|(node, ..)| match node {
                pg_query::NodeRef::FuncCall(f) if is_set_config(&f.funcname) => {
                    set_config_name(f).is_none_or(|name| name == "seed")
                }
                _ => false,
            })
    })
}

/// Whether `sql` may name `pg_settings` (case aside): an `UPDATE` of it is a `set_config` by
/// PostgreSQL's own rule, of a name the router does not read.
fn names_pg_settings(sql: &str) -> bool {
    contains_lowercase(sql, b"pg_settings")
}

/// Whether `sql` may hold a `U&"…"` name or a `U&'…'` string, whose escapes spell what no text
/// check reads.
fn has_unicode_escapes(b: &[u8]) -> bool {
    memchr::memchr_iter(b'&', b)
        .any(|i| i > 0 && b[i - 1] | 0x20 == b'u' && matches!(b.get(i + 1), Some(b'\'' | b'"')))
}

/// Whether `check` holds for any statement of `sql`, each given past its leading white space
/// and comments: the text up to the next `;` outside strings, quoted names, dollar-quoted
/// bodies and comments. `backslash_quotes`: strings read as with `standard_conforming_strings`
/// off, where `\'` does not end one (`E'…'` strings always are).
fn any_statement(sql: &str, backslash_quotes: bool, check: impl Fn(&str) -> bool) -> bool {
    let b = sql.as_bytes();
    // (Bytes of non-ASCII letters are parts of names, as PostgreSQL takes them.)
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    let (mut start, mut i) = (0, 0);
    while i < b.len() {
        i = match b[i] {
            b';' => {
                if check(skip_comments(&sql[start..i])) {
                    return true;
                }
                start = i + 1;
                i + 1
            }
            b'\'' => {
                // E'…' strings take backslash escapes.
                let escapes = backslash_quotes
                    || (i > 0 && b[i - 1] | 0x20 == b'e' && (i < 2 || !is_ident(b[i - 2])));
                quoted_end(b, i + 1, b'\'', escapes)
            }
            b'"' => quoted_end(b, i + 1, b'"', false),
            b'-' if b.get(i + 1) == Some(&b'-') => {
                memchr::memchr(b'\n', &b[i..]).map_or(b.len(), |n| i + n + 1)
            }
            b'/' if b.get(i + 1) == Some(&b'*') => block_comment_end(b, i).unwrap_or(b.len()),
            b'$' if i == 0 || !is_ident(b[i - 1]) => dollar_quoted_end(b, i).unwrap_or(i + 1),
            _ => i + 1,
        };
    }
    check(skip_comments(&sql[start..]))
}

/// Where a string or quoted name whose text begins at `from` ends (just past its closing
/// `quote`; a doubled one is part of it): the end of `b` when it does not.
fn quoted_end(b: &[u8], from: usize, quote: u8, escapes: bool) -> usize {
    let mut i = from;
    while i < b.len() {
        if escapes && b[i] == b'\\' {
            i += 2;
        } else if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// Where the dollar-quoted body opening at `at` (`$$` or `$tag$`) ends, just past its closing
/// tag (the end of `b` when it has none); None when `at` opens none (`$1`).
fn dollar_quoted_end(b: &[u8], at: usize) -> Option<usize> {
    let tag_len = b[at + 1..]
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80))?;
    if b.get(at + 1 + tag_len) != Some(&b'$')
        || b.get(at + 1)
            .is_some_and(|c| tag_len > 0 && c.is_ascii_digit())
    {
        return None;
    }
    let tag = &b[at..at + tag_len + 2];
    let body = at + tag.len();
    Some(memchr::memmem::find(&b[body..], tag).map_or(b.len(), |n| body + n + tag.len()))
}

/// Where the block comment opening at `at` ends, just past its `*/` (nested as PostgreSQL
/// nests them); None when it does not.
fn block_comment_end(b: &[u8], at: usize) -> Option<usize> {
    let (mut depth, mut i) = (0usize, at);
    while i + 1 < b.len() {
        match (b[i], b[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// `sql` past its leading white space and comments (`-- …` lines, `/* … */` blocks, nested as
/// PostgreSQL nests them).
fn skip_comments(sql: &str) -> &str {
    let mut rest = sql.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix("--") {
            rest = match after.find('\n') {
                Some(i) => after[i + 1..].trim_start(),
                None => "",
            };
        } else if rest.starts_with("/*") {
            match block_comment_end(rest.as_bytes(), 0) {
                Some(end) => rest = rest[end..].trim_start(),
                None => return "",
            }
        } else {
            return rest;
        }
    }
}

/// Whether a text that holds a `SET` may be `SET SEED` (`setseed` by another name; `SET
/// LOCAL seed` too, whose effect outlives the transaction): the word `seed` anywhere in it.
fn sets_seed(sql: &str) -> bool {
    has_word(&sql.to_ascii_lowercase(), "seed")
}

/// [`classify`], for a query that needed the parser.
fn classify_summary(
    sql: &str,
    summary: &pg_query::SummaryResult,
    functions: &dyn FunctionCatalog,
) -> Verdict {
    let types: Vec<&str> = summary.statement_types.iter().map(String::as_str).collect();
    let lower = sql.to_ascii_lowercase();
    let first = match types.first() {
        None => return v(Class::Write, "empty query"),
        Some(t) => *t,
    };

    // Session settings and resets, one or several (asyncpg's pool reset: `SELECT
    // pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;`): checked statement by
    // statement on the parse tree. The summary's kinds only say whether that is worth doing
    // (they are listed once each, however many statements there are): reads are not worth a
    // second parse, and `CLOSE ALL` alone stays a cursor statement.
    if types.iter().any(|t| *t != "SelectStmt")
        && types != ["ClosePortalStmt"]
        && types.iter().all(|t| RESET_KINDS.contains(t))
        && resets_only(sql)
    {
        return v(Class::Session, "session settings or resets");
    }

    // `SELECT set_config('app.tenant', $1, false)` and nothing else: a setting, not a write
    // (the session's reads need not wait for the standbys after it); the proxy reads its
    // value back and replays it on the session's other connections.
    if types == ["SelectStmt"]
        && !summary.functions.is_empty()
        && summary
            .functions
            .iter()
            .all(|f| f.function_name.eq_ignore_ascii_case("set_config"))
        && set_config_only(sql, true)
    {
        return v(Class::Session, "set_config only");
    }

    // Session state that lives on the primary anywhere in a batch of several statements
    // (`RESET ALL; LISTEN chan`, `SELECT 1; CREATE TEMP TABLE x …`): the batch runs there and
    // the session stays there, as when the statement comes alone.
    let sticky = types
        .iter()
        .any(|t| matches!(*t, "ListenStmt" | "PrepareStmt" | "ExecuteStmt"))
        || (types.iter().any(|t| {
            matches!(
                *t,
                "CreateStmt" | "CreateTableAsStmt" | "ViewStmt" | "CreateSeqStmt"
            )
        }) && (has_word(&lower, "temp") || has_word(&lower, "temporary")));
    if sticky && statements(sql) != Some(1) {
        return v(
            Class::Sticky,
            "several statements, one of them session state that lives on the primary",
        );
    }

    // Top-level statement kinds. (statement_types lists nested statements too: a CTE's DELETE,
    // EXPLAIN's target.)
    match first {
        "TransactionStmt" => {
            // The summary lists each kind once (`BEGIN; COMMIT` is one kind): count the
            // statements, parsing again only when a `;` inside the text says there may be more.
            let count = if may_be_several(sql) {
                statements(sql).unwrap_or(2)
            } else {
                1
            };
            return transaction(&lower, count);
        }
        "VariableSetStmt" => {
            return if starts_with_words(&lower, &["set", "transaction"])
                || starts_with_words(&lower, &["set", "local"])
                || starts_with_words(&lower, &["set", "constraints"])
            {
                v(Class::InTransaction, "transaction-level setting")
            } else if statements(sql) == Some(1) {
                // SET SESSION CHARACTERISTICS AS TRANSACTION …, SET … FROM CURRENT
                v(Class::Session, "session setting")
            } else {
                v(Class::Write, "several statements")
            };
        }
        "ListenStmt" | "UnlistenStmt" | "PrepareStmt" | "ExecuteStmt" => {
            return v(Class::Sticky, "session state that lives on the primary")
        }
        "CreateStmt" | "CreateTableAsStmt" | "ViewStmt" | "CreateSeqStmt"
            if has_word(&lower, "temp") || has_word(&lower, "temporary") =>
        {
            return v(Class::Sticky, "temporary object")
        }
        "FetchStmt" | "ClosePortalStmt" | "DeclareCursorStmt" if types.len() == 1 => {
            return v(Class::InTransaction, "cursor")
        }
        _ => {}
    }
    let analyze = has_word(&lower, "analyze") || has_word(&lower, "analyse");
    if first == "ExplainStmt" && !analyze {
        return v(Class::Read, "EXPLAIN without ANALYZE executes nothing");
    }
    if types.len() > 1 && first != "ExplainStmt" && !types.iter().all(|t| *t == "SelectStmt") {
        return v(Class::Write, "several statements, or a data-modifying CTE");
    }
    if summary_has_write_table(summary) {
        return v(Class::Write, "writes a table");
    }
    match first {
        "SelectStmt" => {}
        "VariableShowStmt" if types.len() == 1 => return v(Class::Read, "SHOW"),
        "ExplainStmt" => {
            if !types[1..].iter().all(|t| *t == "SelectStmt") {
                return v(Class::Write, "EXPLAIN ANALYZE executes a write");
            }
        }
        "CopyStmt" if types.len() == 1 => {
            if !has_word(&lower, "stdout") || has_word(&lower, "stdin") {
                return v(Class::Write, "COPY other than TO STDOUT");
            }
        }
        _ => return v(Class::Write, format!("{first} is not a read")),
    }
    // A read so far: check locks, catalogs and functions.
    if has_word(&lower, "for") && (has_word(&lower, "update") || has_word(&lower, "share")) {
        return v(Class::Write, "row lock (FOR UPDATE / FOR SHARE)");
    }
    for t in &summary.tables {
        let schema = t.schema_name.as_str();
        if schema == "pg_catalog"
            || schema == "information_schema"
            || (schema.is_empty() && t.table_name.starts_with("pg_"))
        {
            return v(
                Class::Write,
                format!("reads the system catalog ({})", t.name),
            );
        }
    }
    for f in &summary.functions {
        if !functions.is_read_only(f.schema_name.as_deref(), &f.function_name) {
            return v(
                Class::Write,
                format!("calls {}(), not known to be read-only", f.name),
            );
        }
    }
    v(Class::Read, "read-only query")
}

/// The statement kinds a session reset is made of (see [`resets_only`]).
const RESET_KINDS: &[&str] = &[
    "VariableSetStmt",
    "DiscardStmt",
    "DeallocateStmt",
    "UnlistenStmt",
    "ClosePortalStmt",
    "SelectStmt",
];

/// Whether every statement of `sql` only resets or sets session state: `SET` / `RESET` of a
/// setting (not `SET LOCAL`, `SET TRANSACTION`, `SET SESSION CHARACTERISTICS`), `RESET ALL`,
/// `DISCARD …`, `DEALLOCATE …`, `UNLISTEN …`, `CLOSE ALL`, `SELECT pg_advisory_unlock_all()`.
///
/// The text is parsed twice, with `standard_conforming_strings` on (the default) and off: a
/// backslash before a quote ends a string in one mode and not in the other, so a text that is
/// only resets in one reading could hide another statement in the other. Both must agree.
fn resets_only(sql: &str) -> bool {
    both_readings(sql).is_some_and(|trees| {
        trees.iter().all(|tree| {
            !tree.protobuf.stmts.is_empty()
                && tree.protobuf.stmts.iter().all(|raw| {
                    raw.stmt
                        .as_ref()
                        .and_then(|n| n.node.as_ref())
                        .is_some_and(is_reset)
                })
        })
    })
}

/// The parse trees of `sql` with `standard_conforming_strings` on and off; `None` when either
/// reading fails.
fn both_readings(sql: &str) -> Option<[pg_query::ParseResult; 2]> {
    use pg_query::ParserOptions;
    let on = pg_query::parse(sql, ParserOptions::DEFAULT).ok()?;
    let off = pg_query::parse(sql, ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS).ok()?;
    Some([on, off])
}

/// How many statements `sql` holds, when both readings agree.
fn statements(sql: &str) -> Option<usize> {
    let [on, off] = both_readings(sql)?;
    (on.protobuf.stmts.len() == off.protobuf.stmts.len()).then_some(on.protobuf.stmts.len())
}

fn is_reset(node: &pg_query::NodeEnum) -> bool {
    use pg_query::protobuf::VariableSetKind as K;
    use pg_query::NodeEnum as N;
    match node {
        N::VariableSetStmt(s) => {
            !s.is_local
                && [
                    K::VarSetValue,
                    K::VarSetDefault,
                    K::VarReset,
                    K::VarResetAll,
                ]
                .iter()
                .any(|k| s.kind == *k as i32)
        }
        N::DiscardStmt(_) | N::DeallocateStmt(_) | N::UnlistenStmt(_) => true,
        // CLOSE ALL; closing one cursor belongs to where that cursor lives.
        N::ClosePortalStmt(s) => s.portalname.is_empty(),
        N::SelectStmt(s) => is_advisory_unlock_all(s),
        _ => false,
    }
}

/// `SELECT pg_advisory_unlock_all()` (or `pg_catalog.pg_advisory_unlock_all()`), and nothing
/// else: no FROM, WHERE, other column, argument, set operation … (see [`bare_calls`]).
fn is_advisory_unlock_all(s: &pg_query::protobuf::SelectStmt) -> bool {
    matches!(
        bare_calls(s).as_deref(),
        Some([(name, args)]) if is_catalog_function(name, "pg_advisory_unlock_all") && args.is_empty()
    )
}

/// Whether a function's name is `name` or `pg_catalog.name`. Unqualified, the name resolves to
/// pg_catalog's function unless the session put another schema before pg_catalog in its
/// search_path: the same trust the read-only function list places in unqualified names.
fn is_catalog_function(parts: &[&str], name: &str) -> bool {
    matches!(parts, [n] | ["pg_catalog", n] if *n == name)
}

/// The function calls a SELECT is made of, when it is nothing else: `SELECT f(…), g(…)` with
/// no FROM, WHERE, set operation, … and plain calls (no aggregate or window clause, no
/// `VARIADIC`, no field of the result). Each call's name parts and arguments. Every field is
/// named, so a new field in the parse tree is a compile error here rather than silently
/// accepted.
fn bare_calls(
    s: &pg_query::protobuf::SelectStmt,
) -> Option<Vec<(Vec<&str>, &[pg_query::protobuf::Node])>> {
    use pg_query::protobuf::{FuncCall, ResTarget, SelectStmt, SetOperation};
    use pg_query::NodeEnum as N;
    let SelectStmt {
        distinct_clause,
        into_clause,
        target_list,
        from_clause,
        where_clause,
        group_clause,
        group_distinct,
        having_clause,
        window_clause,
        values_lists,
        sort_clause,
        limit_offset,
        limit_count,
        limit_option: _,
        locking_clause,
        with_clause,
        op,
        all,
        larg,
        rarg,
    } = s;
    let plain = distinct_clause.is_empty()
        && into_clause.is_none()
        && from_clause.is_empty()
        && where_clause.is_none()
        && group_clause.is_empty()
        && !group_distinct
        && having_clause.is_none()
        && window_clause.is_empty()
        && values_lists.is_empty()
        && sort_clause.is_empty()
        && limit_offset.is_none()
        && limit_count.is_none()
        && locking_clause.is_empty()
        && with_clause.is_none()
        && *op == SetOperation::SetopNone as i32
        && !all
        && larg.is_none()
        && rarg.is_none();
    if !plain || target_list.is_empty() {
        return None;
    }
    target_list
        .iter()
        .map(|target| {
            let Some(N::ResTarget(t)) = &target.node else {
                return None;
            };
            let ResTarget {
                name: _,
                indirection,
                val,
                location: _,
            } = &**t;
            let Some(N::FuncCall(f)) = val.as_ref().and_then(|v| v.node.as_ref()) else {
                return None;
            };
            let FuncCall {
                funcname,
                args,
                agg_order,
                agg_filter,
                over,
                agg_within_group,
                agg_star,
                agg_distinct,
                func_variadic,
                funcformat: _,
                location: _,
            } = &**f;
            let name: Vec<&str> = funcname
                .iter()
                .map(|n| match &n.node {
                    Some(N::String(s)) => s.sval.as_str(),
                    _ => "",
                })
                .collect();
            let call = indirection.is_empty()
                && agg_order.is_empty()
                && agg_filter.is_none()
                && over.is_none()
                && !agg_within_group
                && !agg_star
                && !agg_distinct
                && !func_variadic;
            call.then_some((name, args.as_slice()))
        })
        .collect()
}

/// Whether `sql` only calls `set_config`: one `SELECT set_config(…)[, set_config(…) …]` and
/// nothing else, read the same with `standard_conforming_strings` on and off, every argument
/// a constant (or, with `params`, a parameter `$n`). Such a query changes settings and
/// nothing else: it need not count as a write, and (with constants) replayed as it stands
/// elsewhere, it does the same there.
pub fn set_config_only(sql: &str, params: bool) -> bool {
    use pg_query::NodeEnum as N;
    let Some(trees) = both_readings(sql) else {
        return false;
    };
    trees.iter().all(|tree| {
        let [raw] = tree.protobuf.stmts.as_slice() else {
            return false;
        };
        let Some(N::SelectStmt(s)) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            return false;
        };
        bare_calls(s).is_some_and(|calls| {
            calls.iter().all(|(name, args)| {
                is_catalog_function(name, "set_config")
                    && args.len() == 3
                    && args.iter().all(|a| match a.node.as_ref() {
                        Some(N::AConst(_)) => true,
                        Some(N::ParamRef(_)) => params,
                        _ => false,
                    })
            })
        })
    })
}

/// What a [`Class::Session`] query resets, for the state a proxy keeps about the session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resets {
    /// `RESET ALL` or `DISCARD ALL`: every setting back to its default (`RESET ALL` leaves
    /// `SET ROLE` and `SET SESSION AUTHORIZATION` alone; `DISCARD ALL` resets those too).
    pub settings: bool,
    /// `DISCARD ALL` or `DEALLOCATE ALL`: every prepared statement is gone.
    pub statements: bool,
    /// `DEALLOCATE name`: these prepared statements are gone (SQL's and the protocol's share
    /// one namespace).
    pub deallocated: Vec<String>,
    /// `CLOSE ALL` or `DISCARD ALL`, among other statements or alone: every cursor is closed.
    pub cursors: bool,
    /// What the query does to the session's settings, so that a record of them replayed on
    /// other connections can drop what a later query makes moot.
    pub kind: SettingKind,
}

/// What a [`Class::Session`] query does to the session's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SettingKind {
    /// One statement: `SET name …` or `RESET name` (not `LOCAL`), with
    /// the parameter's name as PostgreSQL knows it (`SET TIME ZONE` sets `timezone`, `SET ROLE`
    /// sets `role`).
    One(String),
    /// Resets only (`RESET ALL`, `DISCARD …`, `DEALLOCATE …`, `UNLISTEN …`, `CLOSE ALL`,
    /// `SELECT pg_advisory_unlock_all()`), one of them `RESET ALL` or `DISCARD ALL`.
    /// `role`: `DISCARD ALL` is among them, which also resets the role and session
    /// authorization (`RESET ALL` does not). `statements`: every prepared statement goes.
    Reset { role: bool, statements: bool },
    /// Anything else (several settings in one query, say): made moot only by `DISCARD ALL`.
    #[default]
    Other,
}

/// Which session state `sql` resets (nothing when it does not parse).
pub fn resets(sql: &str) -> Resets {
    use pg_query::protobuf::{DiscardMode, VariableSetKind};
    use pg_query::NodeEnum as N;
    let mut r = Resets::default();
    let Ok(tree) = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) else {
        return r;
    };
    r.kind = setting_kind(&tree.protobuf.stmts);
    for raw in &tree.protobuf.stmts {
        match raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
            Some(N::VariableSetStmt(s)) if s.kind == VariableSetKind::VarResetAll as i32 => {
                r.settings = true;
            }
            Some(N::DiscardStmt(d)) if d.target == DiscardMode::DiscardAll as i32 => {
                r.settings = true;
                r.statements = true;
                r.cursors = true;
            }
            Some(N::ClosePortalStmt(c)) if c.portalname.is_empty() => r.cursors = true,
            Some(N::DeallocateStmt(d)) if d.isall || d.name.is_empty() => r.statements = true,
            Some(N::DeallocateStmt(d)) => r.deallocated.push(d.name.clone()),
            _ => {}
        }
    }
    r
}

/// The session settings `sql` may change, by name as `current_setting` knows them, in the
/// order its statements first change them: each `SET name …` / `RESET name` not `LOCAL`
/// (`SET ROLE` changes `role`, `SET TIME ZONE` `timezone`), and the three
/// `default_transaction_*` for `SET SESSION CHARACTERISTICS AS TRANSACTION …`. `SET LOCAL`,
/// `SET TRANSACTION`, `SET CONSTRAINTS`, `SET SEED` (whose value cannot be read back) and
/// `DISCARD PLANS` / `SEQUENCES` / `TEMP` change none. A `set_config` call anywhere changes the
/// setting its first argument names. `RESET ALL` is named [`EVERY_SETTING`]: each setting the
/// session has may have changed (those it set before, and custom ones set later in the same
/// text, are named or recorded elsewhere), and so is an `UPDATE` of `pg_settings` (PostgreSQL's
/// rule makes it a `set_config` of each row it updates). `None` when that cannot be told by
/// name: `DISCARD ALL`, `set_config` of a name that is not a constant, a text that does not parse,
/// or one that parses differently with `standard_conforming_strings` off (see [`classify`]'s
/// resets).
pub fn setting_names(sql: &str) -> Option<Vec<String>> {
    let [on, off] = both_readings(sql)?;
    let names = names_set(&on.protobuf.stmts)?;
    (names_set(&off.protobuf.stmts)? == names).then_some(names)
}

/// The name [`setting_names`] gives `RESET ALL`'s change. No parameter has it (a custom one
/// needs a dot).
pub const EVERY_SETTING: &str = "*";

fn names_set(stmts: &[pg_query::protobuf::RawStmt]) -> Option<Vec<String>> {
    use pg_query::protobuf::VariableSetKind as K;
    use pg_query::NodeEnum as N;
    let mut names: Vec<String> = Vec::new();
    let mut add = |n: &str| {
        if !names.iter().any(|m| m == n) {
            names.push(n.to_string());
        }
    };
    for raw in stmts {
        match raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
            Some(N::VariableSetStmt(s)) if s.is_local => {}
            Some(N::VariableSetStmt(s)) if s.kind == K::VarResetAll as i32 => add(EVERY_SETTING),
            Some(N::VariableSetStmt(s))
                if s.kind == K::VarSetMulti as i32
                    && s.name.eq_ignore_ascii_case("session characteristics") =>
            {
                for n in [
                    "default_transaction_isolation",
                    "default_transaction_read_only",
                    "default_transaction_deferrable",
                ] {
                    add(n);
                }
            }
            // `SET TRANSACTION …`, `SET TRANSACTION SNAPSHOT …`: this transaction's.
            Some(N::VariableSetStmt(s)) if s.kind == K::VarSetMulti as i32 => {}
            // (`seed` cannot be read back: `current_setting('seed')` says 'unavailable'.)
            // (Nor the transaction's own `transaction_isolation`, `transaction_read_only` …:
            // `set_config` of them after the transaction's first query fails.)
            Some(N::VariableSetStmt(s))
                if s.name.eq_ignore_ascii_case("seed")
                    || s.name.to_ascii_lowercase().starts_with("transaction_") => {}
            Some(N::VariableSetStmt(s)) if !s.name.is_empty() => add(&s.name),
            // DISCARD PLANS / SEQUENCES / TEMP change no setting; DISCARD ALL resets them all.
            Some(N::DiscardStmt(d))
                if d.target != pg_query::protobuf::DiscardMode::DiscardAll as i32 => {}
            Some(N::VariableSetStmt(_)) | Some(N::DiscardStmt(_)) => return None,
            _ => {}
        }
        // `set_config(name, value, is_local)` anywhere in the statement (`SELECT
        // set_config('app.tenant', $1, false)`, pg_dump's `SELECT
        // pg_catalog.set_config('search_path', '', false)`), unless `is_local` is the
        // constant true: the setting it names, which must be a constant. (An `is_local`
        // that is not a constant may be false.)
        let Some(stmt) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        for (node, ..) in stmt.nodes() {
            if let pg_query::NodeRef::UpdateStmt(u) = node {
                // `UPDATE pg_settings SET setting = … WHERE …`: a `set_config` of each row's
                // name by PostgreSQL's rule; which rows, the text does not tell.
                if u.relation
                    .as_ref()
                    .is_some_and(|r| r.relname.eq_ignore_ascii_case("pg_settings"))
                {
                    add(EVERY_SETTING);
                }
                continue;
            }
            let pg_query::NodeRef::FuncCall(f) = node else {
                continue;
            };
            if !is_set_config(&f.funcname) || is_true(f.args.get(2)) {
                // (`is_local` true: the transaction's own, as `SET LOCAL`. PostgREST sets
                // its role and claims this way in every request's transaction.)
                continue;
            }
            let name = set_config_name(f)?;
            if name != "seed" && !name.starts_with("transaction_") {
                add(&name);
            }
        }
    }
    Some(names)
}

/// The setting a `set_config` call names, lower case, when its name is a constant.
fn set_config_name(f: &pg_query::protobuf::FuncCall) -> Option<String> {
    match f.args.first().and_then(|a| a.node.as_ref()) {
        Some(pg_query::NodeEnum::AConst(pg_query::protobuf::AConst {
            val: Some(pg_query::protobuf::a_const::Val::Sval(s)),
            ..
        })) => Some(s.sval.trim().to_ascii_lowercase()),
        _ => None,
    }
}

/// Whether an argument is the constant `true` (or a string PostgreSQL reads as true).
fn is_true(arg: Option<&pg_query::protobuf::Node>) -> bool {
    use pg_query::protobuf::{a_const::Val, AConst};
    match arg.and_then(|a| a.node.as_ref()) {
        Some(pg_query::NodeEnum::AConst(AConst {
            val: Some(Val::Boolval(b)),
            ..
        })) => b.boolval,
        Some(pg_query::NodeEnum::AConst(AConst {
            val: Some(Val::Sval(s)),
            ..
        })) => matches!(
            s.sval.trim().to_ascii_lowercase().as_str(),
            "t" | "tr" | "tru" | "true" | "y" | "ye" | "yes" | "on" | "1"
        ),
        _ => false,
    }
}

/// `set_config` or `pg_catalog.set_config`.
fn is_set_config(funcname: &[pg_query::protobuf::Node]) -> bool {
    let parts: Vec<&str> = funcname
        .iter()
        .filter_map(|n| match n.node.as_ref() {
            Some(pg_query::NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect();
    is_catalog_function(&parts, "set_config")
}

/// The SQL `PREPARE` statements in `sql`: each one's name and its own text (a server keeps the
/// whole query string, `pg_prepared_statements.statement`, which may hold other statements).
///
/// The text is read with `standard_conforming_strings` on and off (see [`resets_only`]):
/// when both readings parse, they must find the same statements, or none is reported; when
/// only one parses (a legacy `'it\'s'` string, say), that one is used. A text reported here
/// must still be sent as one extended-protocol statement, which the server refuses to run if
/// it holds more than one command.
pub fn prepares(sql: &str) -> Vec<(String, String)> {
    let found = |tree: &pg_query::ParseResult| -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        for raw in &tree.protobuf.stmts {
            if let Some(pg_query::NodeEnum::PrepareStmt(p)) =
                raw.stmt.as_ref().and_then(|n| n.node.as_ref())
            {
                let at = usize::try_from(raw.stmt_location).ok()?;
                let end = match usize::try_from(raw.stmt_len).ok()? {
                    0 => sql.len(),
                    len => at.checked_add(len)?,
                };
                out.push((p.name.clone(), sql.get(at..end)?.trim().to_string()));
            }
        }
        Some(out)
    };
    agreed_reading(sql, found).unwrap_or_default()
}

/// What `read` finds in `sql` parsed with `standard_conforming_strings` on and with it off:
/// the same from both readings that parse (a legacy `'it\'s'` string parses one way only),
/// None when they disagree, when neither parses, or when `read` finds nothing.
fn agreed_reading<T: PartialEq>(
    sql: &str,
    read: impl Fn(&pg_query::ParseResult) -> Option<T>,
) -> Option<T> {
    use pg_query::ParserOptions;
    let on = pg_query::parse(sql, ParserOptions::DEFAULT).ok();
    let off = pg_query::parse(sql, ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS).ok();
    match (on.as_ref().map(&read), off.as_ref().map(&read)) {
        (Some(a), Some(b)) if a == b => a,
        (Some(_), Some(_)) => None,
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => None,
    }
}

/// Where a query of several statements is to be split because it ends the session's
/// transaction and then goes on: the text up to and including the first `COMMIT`, `END`,
/// `ROLLBACK` or `ABORT` (not `… AND CHAIN`, whose new transaction keeps the old one's
/// characteristics), and the rest, when there is a rest. What follows a transaction's end
/// runs outside it, so a transaction on a standby can end there and what follows go where it
/// goes (`COMMIT; INSERT …` after a `BEGIN READ ONLY`). Read both string ways (see
/// [`prepares`]); None unless both that parse agree.
pub fn split_after_transaction_end(sql: &str) -> Option<(String, String)> {
    use pg_query::protobuf::TransactionStmtKind as K;
    let split = |tree: &pg_query::ParseResult| -> Option<usize> {
        let stmts = &tree.protobuf.stmts;
        for (i, raw) in stmts.iter().enumerate() {
            let ends = match raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
                Some(pg_query::NodeEnum::TransactionStmt(t)) => {
                    !t.chain
                        && (t.kind == K::TransStmtCommit as i32
                            || t.kind == K::TransStmtRollback as i32)
                }
                _ => false,
            };
            if ends {
                stmts.get(i + 1)?;
                let at = usize::try_from(raw.stmt_location).ok()?;
                let len = usize::try_from(raw.stmt_len).ok().filter(|l| *l > 0)?;
                return at.checked_add(len);
            }
        }
        None
    };
    let at = agreed_reading(sql, split)?;
    let (prefix, rest) = (sql.get(..at)?, sql.get(at..)?);
    let rest = rest.trim_start_matches(|c: char| c == ';' || c.is_whitespace());
    (!rest.trim().is_empty()).then(|| (prefix.to_string(), rest.to_string()))
}

/// libpg_query's `DeclareCursorStmt.options` bit for `WITH HOLD` (`CURSOR_OPT_HOLD`).
const CURSOR_OPT_HOLD: i32 = 0x0020;

/// The cursors `sql` declares `WITH HOLD` (they outlive their transaction), by name.
pub fn held_cursors(sql: &str) -> Vec<String> {
    use pg_query::NodeEnum as N;
    let Ok(tree) = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) else {
        return Vec::new();
    };
    tree.protobuf
        .stmts
        .iter()
        .filter_map(
            |raw| match raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
                Some(N::DeclareCursorStmt(d)) if d.options & CURSOR_OPT_HOLD != 0 => {
                    Some(d.portalname.clone())
                }
                _ => None,
            },
        )
        .collect()
}

/// What a query alone does with a cursor: `FETCH` / `MOVE` from it, or `CLOSE` it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorUse {
    /// FETCH or MOVE from the named cursor.
    Use(String),
    /// CLOSE name.
    Close(String),
    /// CLOSE ALL.
    CloseAll,
}

/// The cursor a query made of one FETCH, MOVE or CLOSE statement uses; None otherwise.
pub fn cursor_use(sql: &str) -> Option<CursorUse> {
    use pg_query::NodeEnum as N;
    let tree = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).ok()?;
    let [raw] = tree.protobuf.stmts.as_slice() else {
        return None;
    };
    match raw.stmt.as_ref().and_then(|n| n.node.as_ref())? {
        N::FetchStmt(f) => Some(CursorUse::Use(f.portalname.clone())),
        N::ClosePortalStmt(c) if c.portalname.is_empty() => Some(CursorUse::CloseAll),
        N::ClosePortalStmt(c) => Some(CursorUse::Close(c.portalname.clone())),
        _ => None,
    }
}

/// What a setting query does to the session's default transaction isolation. It decides
/// where the session's reads may run: a hot standby refuses to run a SERIALIZABLE transaction
/// ("cannot use serializable mode in a hot standby"), even a read-only one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Set to SERIALIZABLE.
    Serializable,
    /// Set to another level.
    Other,
    /// Back to what the connection began with: `RESET`, `SET … TO DEFAULT`, `RESET ALL`,
    /// `DISCARD ALL`.
    Reset,
}

/// Whether `sql` is one statement that makes the transaction it runs in SERIALIZABLE: `SET
/// TRANSACTION ISOLATION LEVEL SERIALIZABLE [, …]` or `SET [LOCAL] transaction_isolation =
/// serializable`. A hot standby refuses both, even in a read-only transaction.
pub fn sets_transaction_serializable(sql: &str) -> bool {
    use pg_query::protobuf::{a_const::Val, VariableSetKind as K};
    use pg_query::NodeEnum as N;
    if !has_word(&sql.to_ascii_lowercase(), "serializable") {
        return false;
    }
    let Ok(tree) = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) else {
        return false;
    };
    let [raw] = &tree.protobuf.stmts[..] else {
        return false;
    };
    let serializable = |arg: Option<&pg_query::protobuf::Node>| {
        matches!(
            arg.and_then(|n| n.node.as_ref()),
            Some(N::AConst(c)) if matches!(&c.val, Some(Val::Sval(v))
                if v.sval.trim().eq_ignore_ascii_case("serializable"))
        )
    };
    match raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
        Some(N::VariableSetStmt(s))
            if s.kind == K::VarSetMulti as i32 && s.name.eq_ignore_ascii_case("transaction") =>
        {
            s.args.iter().any(|a| {
                matches!(a.node.as_ref(), Some(N::DefElem(d))
                    if d.defname == "transaction_isolation" && serializable(d.arg.as_deref()))
            })
        }
        Some(N::VariableSetStmt(s))
            if s.kind == K::VarSetValue as i32
                && s.name.eq_ignore_ascii_case("transaction_isolation") =>
        {
            serializable(s.args.first())
        }
        _ => false,
    }
}

/// The parts of `DateStyle` a query that sets it sets: `DATESTYLE_FORMAT` (ISO, SQL, Postgres,
/// German), `DATESTYLE_ORDER` (DMY, MDY, YMD), or both. PostgreSQL keeps the part a value does
/// not name: `SET datestyle TO ymd` after `SET datestyle TO iso` gives `ISO, YMD`, so a
/// later `SET datestyle` makes an earlier one moot only when it sets every part the earlier
/// one set. Both for `RESET`, `DEFAULT`, German (which sets the order to DMY unless it is
/// named) and anything that is not a plain `SET datestyle` (a value read back is whole);
/// none for a value that names neither, which the server refuses.
pub fn datestyle_parts(sql: &str) -> u8 {
    use pg_query::protobuf::{a_const::Val, VariableSetKind as K};
    use pg_query::NodeEnum as N;
    let both = DATESTYLE_FORMAT | DATESTYLE_ORDER;
    let Ok(tree) = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) else {
        return both;
    };
    let [raw] = tree.protobuf.stmts.as_slice() else {
        return both;
    };
    let Some(N::VariableSetStmt(s)) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
        return both;
    };
    if s.kind != K::VarSetValue as i32 || !s.name.eq_ignore_ascii_case("datestyle") {
        return both;
    }
    let mut parts = 0;
    for arg in &s.args {
        let Some(N::AConst(c)) = arg.node.as_ref() else {
            return both;
        };
        let Some(Val::Sval(v)) = &c.val else {
            return both;
        };
        for word in v
            .sval
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            parts |= match word.to_ascii_lowercase().as_str() {
                "iso" | "sql" | "postgres" => DATESTYLE_FORMAT,
                "dmy" | "euro" | "european" | "mdy" | "us" | "noneuro" | "noneuropean" | "ymd" => {
                    DATESTYLE_ORDER
                }
                "german" | "default" => both,
                _ => 0,
            };
        }
    }
    parts
}

/// See [`datestyle_parts`].
pub const DATESTYLE_FORMAT: u8 = 1;
/// See [`datestyle_parts`].
pub const DATESTYLE_ORDER: u8 = 2;

/// The last change `sql` (a query run outside a transaction) makes to
/// `default_transaction_isolation`: `SET default_transaction_isolation …`,
/// `SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL …` (JDBC's
/// `setTransactionIsolation`), `RESET ALL`, `DISCARD ALL`. None when it makes none (or names a
/// level PostgreSQL does not know, which fails).
pub fn isolation_change(sql: &str) -> Option<Isolation> {
    use pg_query::protobuf::{a_const::Val, DiscardMode, VariableSetKind as K};
    use pg_query::NodeEnum as N;
    let tree = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).ok()?;
    let level = |arg: Option<&pg_query::protobuf::Node>| -> Option<Isolation> {
        let Some(N::AConst(c)) = arg.and_then(|n| n.node.as_ref()) else {
            return None;
        };
        let Some(Val::Sval(v)) = &c.val else {
            return None;
        };
        match v.sval.to_ascii_lowercase().trim() {
            "serializable" => Some(Isolation::Serializable),
            "repeatable read" | "read committed" | "read uncommitted" => Some(Isolation::Other),
            _ => None,
        }
    };
    let mut last = None;
    for raw in &tree.protobuf.stmts {
        match raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
            Some(N::VariableSetStmt(s)) if s.is_local => {}
            Some(N::VariableSetStmt(s)) if s.kind == K::VarResetAll as i32 => {
                last = Some(Isolation::Reset)
            }
            Some(N::DiscardStmt(d)) if d.target == DiscardMode::DiscardAll as i32 => {
                last = Some(Isolation::Reset)
            }
            Some(N::VariableSetStmt(s))
                if s.kind == K::VarSetMulti as i32
                    && s.name.eq_ignore_ascii_case("session characteristics") =>
            {
                for a in &s.args {
                    if let Some(N::DefElem(d)) = a.node.as_ref() {
                        if d.defname == "transaction_isolation" {
                            last = level(d.arg.as_deref()).or(last);
                        }
                    }
                }
            }
            Some(N::VariableSetStmt(s))
                if s.name.eq_ignore_ascii_case("default_transaction_isolation") =>
            {
                if s.kind == K::VarSetValue as i32 {
                    last = level(s.args.first()).or(last);
                } else if s.kind == K::VarSetDefault as i32 || s.kind == K::VarReset as i32 {
                    last = Some(Isolation::Reset);
                }
            }
            _ => {}
        }
    }
    last
}

fn setting_kind(stmts: &[pg_query::protobuf::RawStmt]) -> SettingKind {
    use pg_query::protobuf::{DiscardMode, VariableSetKind as K};
    use pg_query::NodeEnum as N;
    let nodes: Vec<Option<&N>> = stmts
        .iter()
        .map(|raw| raw.stmt.as_ref().and_then(|n| n.node.as_ref()))
        .collect();
    if let [Some(N::VariableSetStmt(s))] = nodes.as_slice() {
        // (Not `SET name FROM CURRENT`: it keeps the value the earlier settings gave.)
        let one = [K::VarSetValue, K::VarSetDefault, K::VarReset]
            .iter()
            .any(|k| s.kind == *k as i32);
        return if one && !s.is_local && !s.name.is_empty() {
            SettingKind::One(s.name.clone())
        } else if s.kind == K::VarResetAll as i32 {
            SettingKind::Reset {
                role: false,
                statements: false,
            }
        } else {
            SettingKind::Other
        };
    }
    let (mut all, mut role, mut statements) = (false, false, false);
    for node in &nodes {
        match node {
            Some(N::VariableSetStmt(s)) if s.kind == K::VarResetAll as i32 => all = true,
            Some(N::DiscardStmt(d)) => {
                if d.target == DiscardMode::DiscardAll as i32 {
                    (all, role, statements) = (true, true, true);
                }
            }
            Some(N::DeallocateStmt(d)) => statements |= d.isall || d.name.is_empty(),
            Some(N::UnlistenStmt(_)) => {}
            Some(N::ClosePortalStmt(c)) if c.portalname.is_empty() => {}
            Some(N::SelectStmt(s)) if is_advisory_unlock_all(s) => {}
            _ => return SettingKind::Other,
        }
    }
    if all {
        SettingKind::Reset { role, statements }
    } else {
        SettingKind::Other
    }
}

fn summary_has_write_table(s: &pg_query::SummaryResult) -> bool {
    use pg_query::protobuf::summary_result::Context;
    s.tables
        .iter()
        .any(|t| matches!(t.context, Context::Dml | Context::Ddl))
}

/// `BEGIN`, `COMMIT`, `END`, `ROLLBACK`, `ABORT`, `START TRANSACTION …` told apart without the
/// parser (which costs more than the rest of a proxied statement): only when the text is
/// letters, spaces and commas with at most one trailing `;` — one statement, no comment, no
/// quote. It then gets what the parser's path gives it (`transaction`); anything else goes
/// through libpg_query.
fn plain_transaction_control(sql: &str) -> Option<Verdict> {
    let body = sql.trim().strip_suffix(';').unwrap_or(sql.trim());
    if body.is_empty()
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || b.is_ascii_whitespace() || b == b',')
    {
        return None;
    }
    let lower = body.to_ascii_lowercase();
    let first = lower.split_ascii_whitespace().next()?;
    matches!(
        first,
        "begin" | "start" | "commit" | "end" | "rollback" | "abort"
    )
    .then(|| transaction(&lower, 1))
}

fn transaction(lower: &str, statements: usize) -> Verdict {
    if statements > 1 {
        return v(Class::Write, "transaction control among several statements");
    }
    let t = lower.trim_start();
    let word = t
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    match word {
        "begin" | "start" => {
            // "BEGIN READ ONLY", "START TRANSACTION ISOLATION LEVEL …, READ ONLY"; not
            // SERIALIZABLE, which a hot standby refuses.
            let read_only = (lower.contains("read only") || {
                let squeezed: String = lower.split_whitespace().collect::<Vec<_>>().join(" ");
                squeezed.contains("read only")
            }) && !has_word(lower, "serializable");
            v(Class::Begin { read_only }, "transaction start")
        }
        "commit" | "end" | "abort" => {
            if lower.contains("prepared") {
                v(Class::Write, "two-phase commit")
            } else {
                v(Class::End, "transaction end")
            }
        }
        "rollback" => {
            if has_word(lower, "to") {
                v(Class::InTransaction, "rollback to savepoint")
            } else if lower.contains("prepared") {
                v(Class::Write, "two-phase commit")
            } else {
                v(Class::End, "transaction end")
            }
        }
        "prepare" => v(Class::End, "PREPARE TRANSACTION ends the transaction"),
        _ => v(Class::InTransaction, "savepoint"),
    }
}

#[cfg(test)]
mod tests;
