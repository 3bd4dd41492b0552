use super::*;

/// Read-only: a few built-ins, as the primary's pg_proc would say.
struct Builtins;

impl FunctionCatalog for Builtins {
    fn is_read_only(&self, schema: Option<&str>, name: &str) -> bool {
        matches!(schema, None | Some("pg_catalog"))
            && [
                "count",
                "now",
                "lower",
                "sum",
                "pg_is_in_recovery",
                "generate_series",
                "current_setting",
            ]
            .contains(&name)
    }

    fn is_builtin(&self, schema: Option<&str>, name: &str) -> bool {
        matches!(schema, None | Some("pg_catalog"))
            && (self.is_read_only(schema, name)
                || ["nextval", "set_config", "pg_sleep", "random"].contains(&name))
    }
}

/// Code of the database's own may change settings unseen (a `set_config` in a function's
/// body): what runs it, to the parser and to the cheap look a transaction's statements get.
#[test]
fn user_code_is_seen() {
    #[rustfmt::skip]
    let cases: &[(&str, bool)] = &[
        ("SELECT set_tenant(2)", true),
        ("select app.set_tenant($1)", true),
        ("SELECT * FROM orders_of(7)", true),
        ("SELECT \"MyFunc\"(1)", true),
        ("CALL refresh_all()", true),
        ("DO $$BEGIN PERFORM 1; END$$", true),
        ("SELECT 1 FROM t WHERE f(x) > 0", true),
        ("SELECT app.set(11)", true),
        ("SELECT app.lower(12)", true),
        ("SELECT set_tenant /* x */ (13)", true),
        ("SELECT \"app\".\"f\"(1)", true),
        ("SELECT count(*), lower(name) FROM t", false),
        ("SELECT nextval('s'), set_config('a.b', '1', false)", false),
        ("SELECT pg_catalog.now()", false),
        ("SELECT pg_catalog.lower('A')", false),
        ("SELECT count(*) FROM t WHERE a = ANY (ARRAY[1, 2])", false),
        ("INSERT INTO t (a, b) VALUES (1, now())", false),
        ("INSERT INTO app.t (a) VALUES ($1) RETURNING id", false),
        ("SELECT a FROM t WHERE b IN (1, 2) AND EXISTS (SELECT 1)", false),
        ("SELECT CAST(x AS numeric(10, 2)) FROM t", false),
        ("SELECT 1", false),
    ];
    for (sql, want) in cases {
        assert_eq!(
            classify(sql, &Builtins).runs_user_code,
            *want,
            "classify: {sql}"
        );
        // The cheap look errs toward yes only.
        if *want {
            assert!(may_run_user_code(sql, &Builtins), "cheap look: {sql}");
        }
    }
    for sql in [
        "INSERT INTO t (a, b) VALUES (1, now())",
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 3",
        "insert into pgbench_history (tid, bid, aid, delta, mtime) values (1, 2, 3, 4, CURRENT_TIMESTAMP)",
        "SELECT count(*) FROM t WHERE a IN (1, 2)",
    ] {
        assert!(!may_run_user_code(sql, &Builtins), "cheap look: {sql}");
    }
}

#[test]
fn classification_table() {
    use Class::*;
    #[rustfmt::skip]
    let cases: &[(&str, Class)] = &[
        // reads
        ("SELECT 1", Read),
        ("select abalance from pgbench_accounts where aid = 42;", Read),
        ("SELECT count(*), lower(name) FROM t WHERE x > 1", Read),
        ("WITH a AS (SELECT * FROM t) SELECT * FROM a JOIN u USING (id)", Read),
        ("SELECT * FROM t WHERE name = 'for update'", Write), // errs toward the primary
        ("  SHOW search_path", Read),
        ("SELECT current_setting('search_path')", Read),
        // whether the server is a primary, as drivers ask it (pgjdbc's targetServerType,
        // pgx's target_session_attrs): a standby would answer for itself
        ("SHOW transaction_read_only", PrimaryRead),
        ("show TRANSACTION_READ_ONLY;", PrimaryRead),
        ("SHOW in_hot_standby", PrimaryRead),
        ("SELECT current_setting('transaction_read_only')", PrimaryRead),
        ("select current_setting('In_Hot_Standby')::bool", PrimaryRead),
        ("EXPLAIN SELECT * FROM t", Read),
        ("EXPLAIN DELETE FROM t", Read),
        ("EXPLAIN ANALYZE SELECT * FROM t", Read),
        ("COPY t TO STDOUT", Read),
        ("COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT csv)", Read),
        ("SELECT * FROM generate_series(1, 10)", Read),
        // writes
        ("INSERT INTO t VALUES (1)", Write),
        ("UPDATE t SET x = 1", Write),
        ("DELETE FROM t", Write),
        ("MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE", Write),
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", Write),
        ("SELECT * INTO t2 FROM t", Write),
        ("SELECT * FROM t FOR UPDATE", Write),
        ("select * from t for share skip locked", Write),
        ("SELECT * FROM t FOR NO KEY UPDATE", Write),
        ("SELECT nextval('s')", Write),
        ("SELECT my_function(1)", Write),
        ("SELECT public.count(*) FROM t", Write),
        ("SELECT pg_advisory_lock(1)", Write),
        ("EXPLAIN ANALYZE DELETE FROM t", Write),
        ("COPY t FROM STDIN", Write),
        ("CREATE TABLE x (a int)", Write),
        ("VACUUM t", Write),
        ("SELECT * FROM pg_stat_replication", Write),
        ("SELECT * FROM pg_catalog.pg_class", Write),
        ("SELECT * FROM information_schema.tables", Write),
        ("SELECT 1; SELECT 2", Read),
        ("SELECT 1; INSERT INTO t VALUES (1)", Write),
        ("/*NO LOAD BALANCE*/ SELECT 1", Write),
        ("SELEKT 1", Write),
        ("", Write),
        ("NOTIFY chan", Write),
        ("COMMIT PREPARED 'x'", Write),
        // transactions
        ("BEGIN", Begin { read_only: false }),
        ("begin transaction isolation level serializable", Begin { read_only: false }),
        ("BEGIN READ ONLY", Begin { read_only: true }),
        ("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ   ONLY", Begin { read_only: true }),
        // A hot standby refuses SERIALIZABLE, even read-only: the primary runs it.
        ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", Begin { read_only: false }),
        ("START TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE", Begin { read_only: false }),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE", Begin { read_only: false }),
        ("COMMIT", End),
        ("end;", End),
        ("ROLLBACK", End),
        ("ABORT", End),
        ("PREPARE TRANSACTION 'x'", End),
        ("ROLLBACK TO SAVEPOINT s", InTransaction),
        ("SAVEPOINT s", InTransaction),
        ("RELEASE SAVEPOINT s", InTransaction),
        ("SET TRANSACTION READ ONLY", InTransaction),
        ("SET LOCAL work_mem = '64MB'", InTransaction),
        ("FETCH 10 FROM c", InTransaction),
        ("DECLARE c CURSOR FOR SELECT 1", InTransaction),
        // session state
        ("SET search_path = app, public", Session),
        ("set application_name to 'x'", Session),
        ("RESET ALL", Session),
        ("DISCARD ALL", Session),
        ("DEALLOCATE ALL", Session),
        ("UNLISTEN *", Session),
        ("UNLISTEN chan", Session),
        ("LISTEN chan", Sticky),
        ("RESET ALL; LISTEN chan", Sticky),
        ("BEGIN; COMMIT", Write),
        ("BEGIN;", Begin { read_only: false }),
        ("COMMIT; ", End),
        ("SELECT 1; CREATE TEMP TABLE x (a int)", Sticky),
        ("INSERT INTO t VALUES (1); PREPARE p AS SELECT 1", Sticky),
        ("BEGIN; LISTEN chan; COMMIT", Sticky),
        ("SELECT 1; CREATE TABLE temperature (a int)", Write),
        ("PREPARE q AS SELECT 1", Sticky),
        ("EXECUTE q", Sticky),
        ("CREATE TEMP TABLE tt (a int)", Sticky),
        ("CREATE TEMPORARY TABLE tt AS SELECT 1", Sticky),
    ];
    let mut wrong = Vec::new();
    for (sql, want) in cases {
        let got = classify(sql, &Builtins);
        if got.class != *want {
            wrong.push(format!(
                "{sql:?}: want {want:?}, got {:?} ({})",
                got.class, got.reason
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

/// asyncpg 0.32's `Connection.get_reset_query()` for a PostgreSQL server, which its pool
/// sends as one simple Query on every release.
const ASYNCPG_RESET: &str = "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;";

#[test]
fn several_session_resets_are_a_session_operation_and_anything_else_is_not() {
    use Class::*;
    #[rustfmt::skip]
    let cases: &[(&str, Class)] = &[
        (ASYNCPG_RESET, Session),
        ("select PG_ADVISORY_UNLOCK_ALL ( ) ; close all ; unlisten * ; reset all", Session),
        ("SELECT pg_catalog.pg_advisory_unlock_all(); RESET ALL", Session),
        ("SELECT pg_advisory_unlock_all() AS unlocked; RESET ALL", Session),
        ("SET search_path = app; SET work_mem = '8MB'", Session),
        ("RESET ALL; SET application_name = 'pool'; RESET work_mem; SET datestyle TO DEFAULT", Session),
        ("DISCARD PLANS; DISCARD SEQUENCES; DISCARD TEMP; DEALLOCATE ALL; DEALLOCATE q", Session),
        ("DISCARD ALL; UNLISTEN chan", Session), // PostgreSQL refuses DISCARD ALL there; no write
        ("RESET ALL;;; UNLISTEN *;", Session),
        // comments and strings hide nothing, and show nothing that is not there
        ("RESET ALL; /* ; DELETE FROM t; */ UNLISTEN *", Session),
        ("SET application_name = 'a; DELETE FROM t'; RESET ALL", Session),
        ("SET application_name = $$x; DELETE FROM t$$; RESET ALL", Session),
        ("RESET ALL; -- comment\nDELETE FROM t", Write),
        ("RESET ALL /* ; */; SELECT f()", Write),
        // with standard_conforming_strings off, the server reads one string here and then a
        // DELETE; with it on, two SETs
        ("SET application_name = 'x\\'; SET search_path = '; DELETE FROM t; --'", Write),
        ("SET application_name = E'x\\'; DELETE FROM t; --'", Session), // one string either way
        // anything else in the batch: the primary, as before
        ("SELECT pg_advisory_unlock_all(); DELETE FROM t", Write),
        ("RESET ALL; SELECT f()", Write),
        ("RESET ALL; SELECT 1", Write),
        ("RESET ALL; SELECT pg_advisory_unlock_all", Write), // a column, not the function
        ("SELECT pg_advisory_unlock_all(1); RESET ALL", Write),
        ("SELECT public.pg_advisory_unlock_all(); RESET ALL", Write),
        ("SELECT \"PG_ADVISORY_UNLOCK_ALL\"(); RESET ALL", Write),
        ("SELECT pg_advisory_unlock_all(), nextval('s'); RESET ALL", Write),
        ("SELECT pg_advisory_unlock_all() FROM t; RESET ALL", Write),
        ("SELECT DISTINCT pg_advisory_unlock_all(); RESET ALL", Write),
        ("SELECT pg_advisory_unlock_all() INTO t2; RESET ALL", Write),
        ("SELECT pg_advisory_unlock_all() WHERE f(); RESET ALL", Write),
        ("SELECT pg_advisory_unlock_all() UNION SELECT pg_advisory_unlock_all(); RESET ALL", Write),
        ("WITH d AS (DELETE FROM t RETURNING 1) SELECT pg_advisory_unlock_all(); RESET ALL", Write),
        ("SELECT pg_advisory_lock(1); RESET ALL", Write),
        ("CLOSE c; RESET ALL", Write),
        ("RESET ALL; LISTEN chan", Sticky),
        ("RESET ALL; NOTIFY chan", Write),
        ("RESET ALL; VACUUM t", Write),
        ("BEGIN; RESET ALL", Write),
        ("RESET ALL; COMMIT", Write),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY; RESET ALL", Write),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", Session),
        ("SET LOCAL work_mem = '1MB'; RESET ALL", InTransaction),
        ("SET TRANSACTION READ ONLY; RESET ALL", InTransaction),
        ("/*NO LOAD BALANCE*/ RESET ALL; UNLISTEN *", Write),
        ("RESET ALL; UNLISTEN *; SELEKT 1", Write),
        // one statement: as before
        ("SELECT pg_advisory_unlock_all()", Write),
        ("CLOSE ALL", InTransaction),
        ("CLOSE ALL; SELECT pg_advisory_unlock_all()", Session),
        ("RESET ALL", Session),
    ];
    let mut wrong = Vec::new();
    for (sql, want) in cases {
        let got = classify(sql, &Builtins);
        if got.class != *want {
            wrong.push(format!(
                "{sql:?}: want {want:?}, got {:?} ({})",
                got.class, got.reason
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn what_a_session_operation_resets() {
    let none = Resets::default();
    let settings = Resets {
        settings: true,
        ..Resets::default()
    };
    let statements = Resets {
        statements: true,
        ..Resets::default()
    };
    let all = Resets {
        settings: true,
        statements: true,
        cursors: true,
        ..Resets::default()
    };
    let cursors = Resets {
        cursors: true,
        ..Resets::default()
    };
    // asyncpg's reset closes every cursor among its statements.
    let asyncpg = Resets {
        settings: true,
        cursors: true,
        ..Resets::default()
    };
    let deallocated = |names: &[&str]| Resets {
        deallocated: names.iter().map(|n| n.to_string()).collect(),
        ..Resets::default()
    };
    for (sql, want) in [
        (ASYNCPG_RESET, asyncpg),
        ("CLOSE ALL", cursors.clone()),
        ("SELECT 1; close all", cursors),
        ("RESET ALL", settings.clone()),
        ("reset all; set work_mem = '1MB'", settings),
        ("DISCARD ALL", all),
        ("DEALLOCATE ALL", statements.clone()),
        ("DEALLOCATE PREPARE ALL; RESET work_mem", statements),
        ("DEALLOCATE q", deallocated(&["q"])),
        (
            "DEALLOCATE PREPARE q; deallocate \"Mixed Case\"; SET work_mem = '1MB'",
            deallocated(&["q", "Mixed Case"]),
        ),
        ("DISCARD PLANS", none.clone()),
        ("DISCARD TEMP", none.clone()),
        ("RESET work_mem", none.clone()),
        ("SET search_path = 'RESET ALL'", none.clone()),
        ("does not parse; RESET ALL", none),
    ] {
        // (What each does to the settings record: the next test.)
        let got = Resets {
            kind: SettingKind::Other,
            ..resets(sql)
        };
        assert_eq!(got, want, "{sql}");
    }
}

#[test]
fn what_a_session_operation_does_to_the_settings_record() {
    let one = |n: &str| SettingKind::One(n.to_string());
    let reset = |role, statements| SettingKind::Reset { role, statements };
    let other = SettingKind::Other;
    let mut wrong = Vec::new();
    for (sql, want) in [
        ("SET application_name = 'a'", one("application_name")),
        ("set Work_Mem to '1MB';", one("work_mem")),
        (
            "SET SESSION statement_timeout = 0",
            one("statement_timeout"),
        ),
        ("SET \"myapp.Tenant\" = 7", one("myapp.Tenant")),
        ("SET TIME ZONE 'UTC'", one("timezone")),
        ("SET ROLE alice", one("role")),
        ("RESET ROLE", one("role")),
        (
            "SET SESSION AUTHORIZATION DEFAULT",
            one("session_authorization"),
        ),
        ("SET search_path FROM CURRENT", other.clone()),
        ("SET work_mem TO DEFAULT", one("work_mem")),
        ("RESET work_mem", one("work_mem")),
        ("SET LOCAL work_mem = '1MB'", other.clone()),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            other.clone(),
        ),
        ("RESET ALL", reset(false, false)),
        ("DISCARD ALL", reset(true, true)),
        (ASYNCPG_RESET, reset(false, false)),
        ("DEALLOCATE ALL; RESET ALL", reset(false, true)),
        ("UNLISTEN *; CLOSE ALL; DISCARD ALL", reset(true, true)),
        // Several settings in one query, or a setting after a reset: kept as they are.
        ("SET a.b = 1; SET a.c = 2", other.clone()),
        ("RESET ALL; SET ROLE alice", other.clone()),
        ("DEALLOCATE ALL", other.clone()),
        ("DEALLOCATE q", other.clone()),
        ("DISCARD PLANS", other.clone()),
        ("UNLISTEN *", other.clone()),
        ("does not parse", other),
    ] {
        let got = resets(sql).kind;
        if got != want {
            wrong.push(format!("{sql}: {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

/// `SET datestyle` keeps the part of the style a value does not name (PostgreSQL's
/// `check_datestyle`): which parts each form sets.
#[test]
fn the_parts_of_datestyle_a_setting_sets() {
    const F: u8 = DATESTYLE_FORMAT;
    const O: u8 = DATESTYLE_ORDER;
    let mut wrong = Vec::new();
    for (sql, want) in [
        ("SET datestyle TO iso", F),
        ("SET DateStyle = 'SQL'", F),
        ("set datestyle to postgres;", F),
        ("SET datestyle TO ymd", O),
        ("SET datestyle = 'European'", O),
        ("SET datestyle TO nonEuropean", O),
        ("SET datestyle TO us", O),
        ("SET datestyle TO iso, dmy", F | O),
        ("SET datestyle = 'ISO, MDY'", F | O),
        ("SET datestyle = 'Postgres,DMY'", F | O),
        ("SET datestyle = 'German'", F | O),
        ("SET datestyle TO DEFAULT", F | O),
        ("SET datestyle = 'default'", F | O),
        ("RESET datestyle", F | O),
        ("SET SESSION datestyle TO ymd", O),
        // Not a plain SET of datestyle: whatever it sets is read back whole.
        ("SET work_mem = '1MB'", F | O),
        ("SELECT set_config('datestyle', 'ymd', false)", F | O),
        ("SET datestyle TO ymd; SET work_mem = '1MB'", F | O),
        ("does not parse", F | O),
        // Refused by the server: it sets nothing.
        ("SET datestyle TO nonsense", 0),
    ] {
        let got = datestyle_parts(sql);
        if got != want {
            wrong.push(format!("{sql}: {got}, want {want}"));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn databases_a_statement_needs_no_one_connected_to() {
    let mut wrong = Vec::new();
    for (sql, want) in [
        ("DROP DATABASE testdb", vec!["testdb"]),
        (
            "drop database if exists \"My Db\" with (force)",
            vec!["My Db"],
        ),
        ("CREATE DATABASE t2 TEMPLATE tmpl", vec!["tmpl"]),
        (
            "CREATE DATABASE t2 WITH TEMPLATE = \"Tmpl\" ENCODING 'UTF8'",
            vec!["Tmpl"],
        ),
        ("CREATE DATABASE t2", vec![]),
        ("ALTER DATABASE old RENAME TO new", vec!["old"]),
        ("ALTER DATABASE d SET TABLESPACE ts", vec!["d"]),
        ("ALTER DATABASE d SET work_mem = '1MB'", vec![]),
        ("SELECT 'drop database x'", vec![]),
        ("SELECT current_database()", vec![]),
        ("DROP TABLE database", vec![]),
        ("does not parse database", vec![]),
    ] {
        let got = databases_to_free(sql);
        if got != want {
            wrong.push(format!("{sql}: {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn unknown_functions_go_to_the_primary_by_default() {
    assert_eq!(
        classify("SELECT count(*) FROM t", &NoFunctions).class,
        Class::Write
    );
    let v = classify("SELECT f(1)", &NoFunctions);
    assert_eq!(v.reason, "calls f(), not known to be read-only");
}

#[test]
fn words() {
    assert!(has_word("select * from t for update", "for"));
    assert!(!has_word("select format from t", "for"));
    assert!(!has_word("select before from t", "for"));
    assert!(has_word("for", "for"));
}

#[test]
fn transaction_control_without_the_parser_is_classified_as_with_it() {
    // The same verdict as libpg_query's path (`transaction` on the summary's kind).
    let slow = |sql: &str| {
        let summary = pg_query::summary(sql, 0, -1).expect("parses");
        assert_eq!(summary.statement_types, ["TransactionStmt"], "{sql}");
        transaction(&sql.to_ascii_lowercase(), 1).class
    };
    for sql in [
        "BEGIN",
        "begin;",
        "  BEGIN TRANSACTION ; ",
        "BEGIN WORK",
        "BEGIN READ ONLY",
        "begin   read   only",
        "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        "BEGIN ISOLATION LEVEL SERIALIZABLE",
        "COMMIT",
        "commit;",
        "END",
        "END TRANSACTION",
        "ROLLBACK",
        "ROLLBACK WORK",
        "ABORT",
        "ROLLBACK TO SAVEPOINT a",
        "rollback to a",
        "COMMIT AND CHAIN",
    ] {
        let fast = plain_transaction_control(sql).map(|v| v.class);
        assert_eq!(fast, Some(slow(sql)), "{sql}");
        assert_eq!(classify(sql, &NoFunctions).class, slow(sql), "{sql}");
    }
    // Left to the parser: quotes, comments, several statements, other kinds.
    for sql in [
        "COMMIT PREPARED 'x'",
        "ROLLBACK PREPARED 'x'",
        "BEGIN; COMMIT",
        "BEGIN -- x",
        "/* x */ BEGIN",
        "SAVEPOINT a",
        "RELEASE SAVEPOINT a",
        "PREPARE TRANSACTION 'x'",
        "DELETE FROM t",
        "",
        ";",
    ] {
        assert!(plain_transaction_control(sql).is_none(), "{sql}");
    }
    assert_eq!(classify("BEGIN; COMMIT", &NoFunctions).class, Class::Write);
    assert_eq!(
        classify("COMMIT PREPARED 'x'", &NoFunctions).class,
        Class::Write
    );
}

#[test]
fn the_fast_path_only_takes_plain_selects() {
    for sql in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 42;",
        "select a, b from t where x > 1 and y <= $1",
        "SELECT * FROM t",
        "SELECT format, intoxicated, pgx, pg FROM t_pg_ WHERE x = $1;",
        "SELECT\tid\r\nFROM t",
    ] {
        assert!(plain_select(sql), "{sql}");
        assert_eq!(classify(sql, &NoFunctions).class, Class::Read);
    }
    for sql in [
        "SELECT nextval('s')",
        "SELECT * FROM t FOR UPDATE",
        "SELECT * FROM t for",
        "SELECT * FROM t WHERE a = 1 FoR SHARE;",
        "SELECT * FROM Pg_Class",
        "SELECT * FROM t, INFORMATION_SCHEMA.columns",
        "SELECT a INTO",
        "SELECT a FROM t WHERE b = 1 + 1",
        "SELECT a FROM t WHERE b = \u{e9}",
        "SELECT (a) FROM t",
        "SELECT * INTO t2 FROM t",
        "SELECT * FROM pg_stat_activity",
        "SELECT * FROM information_schema.tables",
        "SELECT 1; DELETE FROM t",
        "SELECT * FROM t -- comment",
        "SELECT * FROM t WHERE a = 'x'",
        "SELECT a::int FROM t",
        "SELECTa FROM t",
        "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
    ] {
        assert!(!plain_select(sql), "{sql}");
    }
}

/// The word-at-a-time `plain_select` (1,110 → 682 instructions for pgbench's query) takes
/// what the byte-at-a-time one took, on random texts of the words and bytes that matter (but
/// for Unicode spaces around the text, which the old one trimmed and the parser now sees).
#[test]
fn the_fast_path_takes_what_it_took_before_it_was_made_faster() {
    fn before(sql: &str) -> bool {
        let body = sql.trim().trim_end_matches(';');
        let bytes = body.as_bytes();
        if bytes.len() < 7
            || !bytes[..6].eq_ignore_ascii_case(b"select")
            || !bytes[6].is_ascii_whitespace()
        {
            return false;
        }
        let bad = |w: &[u8]| {
            w.eq_ignore_ascii_case(b"for")
                || w.eq_ignore_ascii_case(b"into")
                || w.eq_ignore_ascii_case(b"information_schema")
                || w.get(..3).is_some_and(|p| p.eq_ignore_ascii_case(b"pg_"))
        };
        let mut word_start = None;
        for (i, &c) in bytes.iter().enumerate() {
            match PLAIN[c as usize] {
                WORD => {
                    word_start.get_or_insert(i);
                }
                SEPARATOR => {
                    if let Some(start) = word_start.take() {
                        if bad(&bytes[start..i]) {
                            return false;
                        }
                    }
                }
                _ => return false,
            }
        }
        !word_start.is_some_and(|start| bad(&bytes[start..]))
    }
    const PIECES: &[&str] = &[
        "SELECT",
        "select",
        "SeLeCt",
        "selects",
        "for",
        "FoR",
        "fork",
        "into",
        "INTO",
        "intox",
        "information_schema",
        "Information_Schema",
        "informations",
        "pg_class",
        "PG_",
        "pg",
        "pgx",
        "p",
        "f",
        "i",
        "a",
        "abalance",
        "x1",
        "_",
        "42",
        " ",
        " ",
        " ",
        ",",
        ".",
        "=",
        "<",
        ">",
        "*",
        "$",
        ";",
        "\t",
        "\n",
        "\r",
        "\x0c",
        "(",
        "'",
        "-",
        "\u{e9}",
        "::",
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut took = 0;
    for _ in 0..200_000 {
        let mut sql = String::new();
        if next() % 4 != 0 {
            sql.push_str(["SELECT ", "select\t", " SELECT\n", "SELECT\x0c"][(next() % 4) as usize]);
        }
        for _ in 0..next() % 9 {
            sql.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
        }
        let want = before(&sql);
        took += usize::from(want);
        assert_eq!(plain_select(&sql), want, "{sql:?}");
    }
    // (The texts are not all refused: the comparison means something.)
    assert!(took > 10_000, "{took}");
}

#[test]
fn settings_a_query_may_change_are_named() {
    let names = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    #[rustfmt::skip]
    let cases: &[(&str, Option<Vec<String>>)] = &[
        ("SET search_path = app", names(&["search_path"])),
        ("set Search_Path to app, public", names(&["search_path"])),
        ("RESET work_mem", names(&["work_mem"])),
        ("SET work_mem TO DEFAULT", names(&["work_mem"])),
        ("SET ROLE alice", names(&["role"])),
        ("RESET ROLE", names(&["role"])),
        ("SET SESSION AUTHORIZATION alice", names(&["session_authorization"])),
        ("SET TIME ZONE 'UTC'", names(&["timezone"])),
        ("SET myapp.tenant = '7'", names(&["myapp.tenant"])),
        ("SET statement_timeout FROM CURRENT", names(&["statement_timeout"])),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", names(&[
            "default_transaction_isolation",
            "default_transaction_read_only",
            "default_transaction_deferrable",
        ])),
        // Several statements: each setting once, in the order first set.
        ("SET a.b = 1; SELECT 1; SET search_path = x; SET a.b = 2", names(&["a.b", "search_path"])),
        ("BEGIN; SET search_path = app; COMMIT", names(&["search_path"])),
        ("INSERT INTO t VALUES (1); RESET statement_timeout", names(&["statement_timeout"])),
        // The transaction's own, or nothing at all.
        ("SET LOCAL search_path = app", names(&[])),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", names(&[])),
        ("SET CONSTRAINTS ALL DEFERRED", names(&[])),
        ("SELECT 1", names(&[])),
        ("SET seed = 0.5", names(&[])),
        ("SET transaction_read_only = on", names(&[])),
        ("DISCARD TEMP", names(&[])),
        ("DISCARD PLANS; SET a.b = 1", names(&["a.b"])),
        // RESET ALL: every setting, in its place among the names.
        ("RESET ALL", names(&[EVERY_SETTING])),
        ("SET a.b = 1; RESET ALL", names(&["a.b", EVERY_SETTING])),
        ("RESET ALL; SET work_mem = '2MB'; RESET ALL", names(&[EVERY_SETTING, "work_mem"])),
        // Not by name.
        ("DISCARD ALL", None),
        ("SET search_path = ", None),
        // A backslash that ends the string in one reading only.
        (r"SET a.b = 'x\'; SET search_path = evil; --'", None),
        // set_config, by the constant it names, wherever it is called.
        ("SELECT set_config('App.Tenant', $1, false)", names(&["app.tenant"])),
        ("SELECT pg_catalog.set_config('search_path', '', false)", names(&["search_path"])),
        ("SELECT 1 FROM t WHERE set_config('a.b', x, false) IS NOT NULL", names(&["a.b"])),
        ("SELECT set_config('a.b', '1', false); SET work_mem = '1MB'", names(&["a.b", "work_mem"])),
        ("SELECT set_config('seed', '0', false)", names(&[])),
        ("SELECT myschema.set_config('a.b', '1', false)", names(&[])),
        // is_local true: the transaction's own (PostgREST's every request), whatever the name.
        ("SELECT set_config('search_path', $1, true), set_config($2, $3, TRUE)", names(&[])),
        ("SELECT set_config($1, $2, 'on')", names(&[])),
        ("SELECT set_config('a.b', $2, $3)", names(&["a.b"])),
        ("SELECT set_config('a.b', 'x', 'off')", names(&["a.b"])),
        // A name that is not a constant cannot be followed.
        ("SELECT set_config($1, $2, false)", None),
        ("SELECT set_config($1, $2, $3)", None),
        ("SELECT set_config(name, 'x', false) FROM settings", None),
        // An UPDATE of pg_settings is a set_config of each row it updates: which, the text
        // does not tell, so every setting is read back.
        ("UPDATE pg_settings SET setting = 'app' WHERE name = 'search_path'", names(&[EVERY_SETTING])),
        ("update PG_CATALOG.PG_SETTINGS set setting = 'x' where name = 'a.b'", names(&[EVERY_SETTING])),
        ("WITH u AS (UPDATE pg_settings SET setting = '1' WHERE name = 'a.b' RETURNING 1) SELECT 1", names(&[EVERY_SETTING])),
        ("UPDATE t SET pg_settings = 1", names(&[])),
    ];
    for (sql, want) in cases {
        assert_eq!(&setting_names(sql), want, "{sql}");
    }
}

#[test]
fn a_verdict_says_whether_the_query_sets_anything() {
    for (sql, sets) in [
        ("SET search_path = app", true),
        ("SELECT 1; SET search_path = app", true),
        ("BEGIN; SET LOCAL work_mem = '1MB'; COMMIT", true),
        ("SELECT 1", false),
        ("UPDATE t SET a = 1", false),
        ("SELECT set_config('a.b', '1', false)", true),
        (
            "SELECT pg_catalog.set_config('search_path', '', false)",
            true,
        ),
        ("SELECT current_setting('a.b')", false),
        ("BEGIN", false),
    ] {
        assert_eq!(classify(sql, &NoFunctions).sets, sets, "{sql}");
    }
    // set_config alone is a setting, not a write; with anything else, a write as before.
    for (sql, class) in [
        ("SELECT set_config('app.tenant', $1, false)", Class::Session),
        (
            "select pg_catalog.set_config('search_path', '', false)",
            Class::Session,
        ),
        (
            "SELECT set_config('a.b', '1', false), set_config('c.d', $1, $2)",
            Class::Session,
        ),
        ("SELECT set_config('a.b', now()::text, false)", Class::Write),
        ("SELECT set_config('a.b', '1', false) FROM t", Class::Write),
        (
            "SELECT set_config('a.b', '1', false), pg_sleep(1)",
            Class::Write,
        ),
        (
            "SELECT set_config('a.b', '1', false); DELETE FROM t",
            Class::Write,
        ),
        (
            "SELECT myschema.set_config('a.b', '1', false)",
            Class::Write,
        ),
        // One reading sees a DELETE after the call.
        (
            r"SELECT set_config('a.b', 'x\', false); DELETE FROM t; --', false)",
            Class::Write,
        ),
    ] {
        assert_eq!(classify(sql, &NoFunctions).class, class, "{sql}");
    }
    assert!(crate::calls_set_config(
        "select PG_CATALOG.SET_CONFIG('a', 'b', false)"
    ));
    assert!(!crate::calls_set_config("SELECT current_setting('a.b')"));
    assert!(crate::calls_set_config(
        "UPDATE Pg_Settings SET setting = 'x' WHERE name = 'a.b'"
    ));
    for text in ["_", "set_", "_config", "pg_", "x_settings", "set_confi", ""] {
        assert!(!crate::calls_set_config(text), "{text}");
    }
    assert!(crate::calls_set_config("set_config"));
    assert!(crate::calls_set_config("pg_settings"));
    // Classified: it sets, in and out of transactions.
    for sql in [
        "UPDATE pg_settings SET setting = 'app' WHERE name = 'search_path'",
        "SELECT 1; UPDATE pg_catalog.pg_settings SET setting = 'x' WHERE name = 'a.b'",
    ] {
        assert!(classify(sql, &NoFunctions).sets, "{sql}");
    }
    // Several statements with a setting go to the primary (not a read).
    assert_eq!(
        classify("SET search_path = app; SELECT 1", &NoFunctions).class,
        Class::Write
    );
}

#[test]
fn isolation_changes() {
    use crate::{isolation_change, Isolation::*};
    let cases: &[(&str, Option<crate::Isolation>)] = &[
        (
            "SET default_transaction_isolation = 'serializable'",
            Some(Serializable),
        ),
        (
            "SET default_transaction_isolation TO serializable",
            Some(Serializable),
        ),
        (
            "set SESSION default_transaction_isolation = 'SERIALIZABLE'",
            Some(Serializable),
        ),
        (
            "SET default_transaction_isolation = 'repeatable read'",
            Some(Other),
        ),
        ("SET default_transaction_isolation TO DEFAULT", Some(Reset)),
        ("RESET default_transaction_isolation", Some(Reset)),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            Some(Serializable),
        ),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY, ISOLATION LEVEL READ COMMITTED",
            Some(Other),
        ),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", None),
        ("RESET ALL", Some(Reset)),
        ("DISCARD ALL", Some(Reset)),
        ("DISCARD PLANS", None),
        // The last change counts.
        (
            "SET default_transaction_isolation = 'serializable'; RESET ALL",
            Some(Reset),
        ),
        (
            "RESET ALL; SET default_transaction_isolation = 'serializable'",
            Some(Serializable),
        ),
        // Not the session's: the transaction's own, or LOCAL.
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", None),
        (
            "SET LOCAL default_transaction_isolation = 'serializable'",
            None,
        ),
        // A level PostgreSQL refuses changes nothing.
        ("SET default_transaction_isolation = 'snapshot'", None),
        ("SET search_path = app", None),
        ("SELECT 1", None),
        ("not sql", None),
    ];
    for (sql, want) in cases {
        assert_eq!(isolation_change(sql), *want, "{sql}");
    }
}

#[test]
fn prepare_statements_are_found_with_their_own_text() {
    let p = |sql: &str| crate::prepares(sql);
    assert_eq!(
        p("PREPARE q(int) AS SELECT $1 + 1"),
        [(
            "q".to_string(),
            "PREPARE q(int) AS SELECT $1 + 1".to_string()
        )]
    );
    assert_eq!(
        p("SELECT 1; prepare \"Odd Name\" as select ';' ; SELECT 2"),
        [(
            "Odd Name".to_string(),
            "prepare \"Odd Name\" as select ';'".to_string()
        )]
    );
    assert!(p("EXECUTE q(1)").is_empty());
    assert!(p("PREPARE TRANSACTION 'x'").is_empty());
    assert!(p("PREPARE q AS").is_empty());
    // Read differently with standard_conforming_strings off, where the backslash quotes the
    // quote: `'a\', '` is one string there, and a DELETE follows. Neither reading is trusted.
    assert!(p("PREPARE p AS SELECT 'a\\', '; DELETE FROM t; --'").is_empty());
    // A legacy string only one reading parses: that reading is used.
    assert_eq!(
        p(r"PREPARE q AS SELECT 'it\'s'; SELECT 1"),
        [("q".to_string(), r"PREPARE q AS SELECT 'it\'s'".to_string())]
    );
    // The same in both readings.
    assert_eq!(
        p(r"PREPARE q AS SELECT E'a\'b'"),
        [("q".to_string(), r"PREPARE q AS SELECT E'a\'b'".to_string())]
    );
}

#[test]
fn held_cursors_and_their_uses() {
    use crate::{cursor_use, held_cursors, CursorUse::*};
    assert_eq!(
        held_cursors("DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
        ["c"]
    );
    assert_eq!(
        held_cursors("DECLARE \"Big\" NO SCROLL CURSOR WITH HOLD FOR SELECT 1"),
        ["Big"]
    );
    assert!(held_cursors("DECLARE c CURSOR FOR SELECT 1").is_empty());
    assert!(held_cursors("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1").is_empty());
    assert!(held_cursors("DECLARE c SCROLL CURSOR FOR SELECT 1").is_empty());
    assert!(held_cursors("SELECT 1").is_empty());
    assert_eq!(cursor_use("FETCH 10 FROM c"), Some(Use("c".into())));
    assert_eq!(cursor_use("fetch all in \"Big\""), Some(Use("Big".into())));
    assert_eq!(cursor_use("MOVE ABSOLUTE 5 IN c"), Some(Use("c".into())));
    assert_eq!(cursor_use("CLOSE c"), Some(Close("c".into())));
    assert_eq!(cursor_use("CLOSE ALL"), Some(CloseAll));
    assert_eq!(cursor_use("FETCH 1 FROM c; SELECT 1"), None);
    assert_eq!(cursor_use("SELECT 1"), None);
}

#[test]
fn a_query_is_split_after_the_transaction_it_ends() {
    let split = |sql: &str| split_after_transaction_end(sql);
    let pair = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
    for (sql, want) in [
        (
            "SELECT 1; COMMIT; INSERT INTO t VALUES (1)",
            pair("SELECT 1; COMMIT", "INSERT INTO t VALUES (1)"),
        ),
        (
            "COMMIT;INSERT INTO t VALUES (1);",
            pair("COMMIT", "INSERT INTO t VALUES (1);"),
        ),
        ("end; delete from t", pair("end", "delete from t")),
        (
            "ROLLBACK; BEGIN; UPDATE t SET a = 1",
            pair("ROLLBACK", "BEGIN; UPDATE t SET a = 1"),
        ),
        (
            "abort;\n  -- next\n  INSERT INTO t VALUES (2)",
            pair("abort", "-- next\n  INSERT INTO t VALUES (2)"),
        ),
        // The first end: what follows is one query again.
        (
            "COMMIT; BEGIN; SELECT 1; COMMIT; INSERT INTO t VALUES (3)",
            pair(
                "COMMIT",
                "BEGIN; SELECT 1; COMMIT; INSERT INTO t VALUES (3)",
            ),
        ),
        // A string that holds a semicolon and the word is not a statement.
        (
            "SELECT 'x; COMMIT'; COMMIT; SELECT 2",
            pair("SELECT 'x; COMMIT'; COMMIT", "SELECT 2"),
        ),
        // Nothing after it, or only a comment.
        ("SELECT 1; COMMIT", None),
        ("COMMIT; -- done", None),
        // Not a transaction's end: a savepoint's, a chained one, a prepared one.
        ("ROLLBACK TO SAVEPOINT s; INSERT INTO t VALUES (1)", None),
        ("RELEASE SAVEPOINT s; INSERT INTO t VALUES (1)", None),
        ("COMMIT AND CHAIN; INSERT INTO t VALUES (1)", None),
        ("COMMIT PREPARED 'x'; INSERT INTO t VALUES (1)", None),
        ("BEGIN; INSERT INTO t VALUES (1)", None),
        // Read two string ways that disagree on where statements end: not split.
        (r"SELECT 'a\'; COMMIT; INSERT INTO t VALUES (1); --'", None),
        ("not sql; COMMIT; INSERT", None),
    ] {
        assert_eq!(split(sql), want, "{sql}");
    }
}

/// Which statements leave state in the server process that DISCARD ALL keeps.
#[test]
fn state_discard_all_keeps_is_seen() {
    for (sql, leaves) in [
        ("SELECT setseed(0.5)", true),
        ("select SETSEED ( 0.5 )", true),
        ("SELECT pg_catalog.setseed($1)", true),
        ("WITH s AS (SELECT setseed(0)) SELECT random() FROM s", true),
        ("SELECT dblink_connect('link', 'dbname=test')", true),
        (
            "SELECT public.dblink_connect_u('link', 'dbname=test')",
            true,
        ),
        ("LOAD 'auto_explain'", true),
        ("  load\n'$libdir/plugins/auto_explain'", true),
        // Erring toward yes: the name in a string.
        ("SELECT 'setseed()'", true),
        ("SELECT random()", false),
        ("SELECT abalance FROM pgbench_accounts WHERE aid = 1", false),
        // No call without a parenthesis.
        ("SELECT setseed FROM t", false),
        ("SET seed = 0.5", true),
        ("set LOCAL SEED to 0.5", true),
        ("SET search_path = app", false),
        ("SELECT dblink_exec('link', 'x')", false),
        ("SELECT * FROM loader(1)", false),
        ("loads", false),
        ("", false),
        // Any statement of a text, past comments.
        ("SELECT 1; LOAD 'auto_explain'", true),
        ("SELECT 1;load'auto_explain'", true),
        ("/* why */ LOAD 'auto_explain'", true),
        ("-- why\n  LOAD 'auto_explain'", true),
        ("SELECT 1; /* a /* nested */ one */ SET seed = 0", true),
        ("SELECT 1; -- LOAD 'x'", false),
        ("/* LOAD 'x' */ SELECT 1", false),
        ("/* unterminated LOAD 'x'", false),
        ("SELECT 1; SELECT 2;", false),
        // A `;` in a comment, a string, a quoted name or a dollar-quoted body ends nothing.
        ("/* a; b */ LOAD 'x'", true),
        ("SELECT 1; /* a; /* b; */ c; */ LOAD 'x'", true),
        ("SELECT 1 -- a; b\n; LOAD 'x'", true),
        ("SELECT 1 -- a; LOAD 'x'", false),
        ("SELECT 'a; LOAD x'", false),
        ("SELECT 'it''s; LOAD x'; SELECT 2", false),
        ("SELECT E'a\\'; LOAD x'", false),
        ("SELECT E'a\\'; LOAD x'; LOAD 'y'", true),
        ("SELECT \"a; LOAD x\" FROM t", false),
        ("SELECT $$a; LOAD x$$, $q$; LOAD y $q$", false),
        ("SELECT $1; LOAD 'x'", true),
        ("SELECT $1::int, $q$ $$; $q$; SET seed TO 0", true),
        ("SELECT 1; SET\tseed = 0", true),
        ("SELECT 1;\nset\n  seed = 0", true),
        ("SET search_path = load", false),
        ("SELECT '--'; LOAD 'x'", true),
        ("SELECT '/*'; LOAD 'x'", true),
        ("SELECT 'x' /* unterminated; LOAD 'y'", false),
        // `set_config('seed', …)` is `SET seed`.
        ("SELECT set_config('seed', '0.5', false)", true),
        ("SELECT set_config('app.x', 'seed', false)", true),
        ("SELECT set_config('app.x', 'y', false)", false),
        // A DO block: what its body may run.
        ("DO $$BEGIN SET seed = 0.5; END$$", true),
        ("DO $$BEGIN LOAD 'auto_explain'; END$$", true),
        (
            "do $b$ BEGIN PERFORM set_config('seed', '0', false); END $b$",
            true,
        ),
        ("DO LANGUAGE plpgsql 'BEGIN EXECUTE ''LOAD x''; END'", true),
        // Any DO block: its body may build statements no look at its text can see.
        ("DO $$BEGIN PERFORM 1; END$$", true),
        ("SELECT 1; DO $$BEGIN SET seed = 0.5; END$$", true),
        // Names spelt with Unicode escapes.
        ("SELECT U&\"s\\0065tseed\"(0.5)", true),
        ("SET U&\"s\\0065ed\" = 0.5", true),
        ("SELECT set_config(u&'s\\0065ed', '0', false)", true),
        // A set_config whose name is not a constant.
        ("SELECT set_config('se' || 'ed', '0', false)", true),
        ("SELECT set_config($1, $2, false)", true),
        ("SELECT set_config($$seed$$, '0.5', false)", true),
        ("SELECT set_config($t$seed$t$, '0.5', true)", true),
        ("SELECT set_config(E'\\163eed', '0.5', false)", true),
        ("SELECT set_config('se'\n'ed', '0.5', false)", true),
        ("SELECT set_config('app.x', 'y', false); SELECT 1", false),
        // PostgreSQL's rule on pg_settings makes this a set_config.
        (
            "UPDATE pg_settings SET setting = '0.5' WHERE name = 'seed'",
            true,
        ),
        (
            "update PG_SETTINGS set setting = 'x' where name = 'app.x'",
            true,
        ),
        (
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1",
            false,
        ),
        // With standard_conforming_strings off, `\'` does not end a string.
        ("SELECT 'a\\''; SET seed = 0.5; SELECT 'x'", true),
        ("SELECT 'a\\''; LOAD 'x'", true),
        ("SELECT 'a\\'; SELECT 2", false),
        // Non-ASCII dollar tags and names.
        ("SELECT $é$'$é$; LOAD 'x'", true),
        ("SELECT 1 AS é$x$; LOAD 'y'", true),
        ("SELECT $é$; LOAD x$é$", false),
        // One statement, with a trailing `;`.
        ("LOAD 'x';", true),
        ("  /* c */ set seed = 0;", true),
    ] {
        assert_eq!(crate::leaves_process_state(sql), leaves, "{sql:?}");
    }
    // classify's own answer, from the parser's list of the calls.
    for (sql, leaves) in [
        ("SELECT setseed(0.5)", true),
        ("SELECT pg_catalog.SETSEED($1)", true),
        ("WITH s AS (SELECT setseed(0)) SELECT random() FROM s", true),
        ("SELECT dblink_connect_u('l', 'dbname=test')", true),
        ("LOAD 'auto_explain'", true),
        ("SELECT 1; LOAD 'auto_explain'", true),
        ("/*NO LOAD BALANCE*/ SELECT setseed(0.5)", true),
        ("SET SEED TO 0.5", true),
        ("SET search_path = app; SET seed = 0", true),
        ("SET search_path = app", false),
        // The parser knows a string from a call.
        ("SELECT 'setseed()'", false),
        ("SELECT random()", false),
        ("SELECT abalance FROM pgbench_accounts WHERE aid = 1", false),
        ("BEGIN", false),
        // A DO block's body is a string to the parser, but runs.
        ("DO $$BEGIN PERFORM setseed(0.5); END$$", true),
        (
            "DO LANGUAGE plpgsql 'BEGIN PERFORM dblink_connect(''l'', ''''); END'",
            true,
        ),
        // Any DO block: its body may build statements no look at its text can see.
        ("DO $$BEGIN PERFORM 1; END$$", true),
        ("DO $$BEGIN SET seed = 0.5; END$$", true),
        ("DO $$BEGIN LOAD 'auto_explain'; END$$", true),
        (
            "DO $$BEGIN PERFORM set_config('seed', '0', false); END$$",
            true,
        ),
        ("SELECT set_config('seed', '0', false)", true),
        ("SELECT set_config('app.x', '0', false)", false),
        ("SELECT set_config('se' || 'ed', '0', false)", true),
        ("SET U&\"s\\0065ed\" = 0.5", true),
        ("SELECT U&\"s\\0065tseed\"(0.5)", true),
        ("SET search_path = U&'app'", true),
        ("SELECT set_config($$seed$$, '0.5', false)", true),
        ("SELECT set_config('se'\n'ed', '0.5', false)", true),
        ("UPDATE pg_settings SET setting = '0.5' WHERE name = 'seed'", true),
        ("WITH u AS (UPDATE pg_settings SET setting = '1' WHERE name = 'seed' RETURNING 1) SELECT 1", true),
        // Does not parse (as the router reads strings): what the server runs is unknown.
        ("SELECT 'a\\''; SET seed = 0.5; SELECT '\\''", true),
        ("SELEC 1", true),
        // A backslash: the text is read as with standard_conforming_strings off too, where
        // this LOAD would be a statement (erring toward yes).
        ("SELECT 'a\\' ; SELECT ' ; LOAD ''x'' ; SELECT '' '", true),
    ] {
        assert_eq!(classify(sql, &NoFunctions).process_state, leaves, "{sql:?}");
    }
}

#[test]
fn what_makes_a_transaction_serializable() {
    for (sql, yes) in [
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", true),
        (
            "set transaction isolation level serializable, read only, deferrable;",
            true,
        ),
        (
            "SET TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE",
            true,
        ),
        ("SET transaction_isolation = serializable", true),
        ("SET LOCAL transaction_isolation TO 'SERIALIZABLE'", true),
        ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", false),
        ("SET TRANSACTION READ ONLY", false),
        ("SET default_transaction_isolation = serializable", false),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            false,
        ),
        // One statement only: a second one is not moved with it.
        (
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; SELECT 1",
            false,
        ),
        ("SELECT 'serializable'", false),
        ("SET TRANSACTION ISOLATION LEVEL", false),
        ("", false),
    ] {
        assert_eq!(crate::sets_transaction_serializable(sql), yes, "{sql:?}");
    }
}

/// The text check's statement splitter over every short text of quotes, dashes, slashes,
/// stars, dollars, backslashes and semicolons: it ends, never panics, and finds `LOAD` only
/// where one may run.
#[test]
fn the_statement_splitter_takes_any_text() {
    const PARTS: [&str; 12] = [
        "'",
        "\"",
        "$",
        "$q$",
        "-",
        "/",
        "*",
        "\\",
        ";",
        "E",
        "é",
        " LOAD 'x'",
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20_000 {
        let mut sql = String::new();
        for _ in 0..(seed % 12) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            sql.push_str(PARTS[(seed % PARTS.len() as u64) as usize]);
        }
        let found = crate::leaves_process_state(&sql);
        if found {
            assert!(sql.to_ascii_lowercase().contains("load"), "{sql:?}");
        }
    }
}

/// The statement splitter against PostgreSQL's own parser: texts of several statements, each a
/// SELECT of a tricky literal (a `;`, a quote, a comment opener or a dollar sign inside), a
/// `LOAD` or a `SET seed`, with comments between. libpg_query says how many statements each
/// holds, and the text check finds a `LOAD` or `SET seed` exactly when one is there.
#[test]
fn the_statement_splitter_agrees_with_the_parser() {
    const LITERALS: [&str; 12] = [
        "'a;b'",
        "'it''s; LOAD ''x'''",
        "E'\\'; LOAD x'",
        "\"c;d\"",
        "$$; LOAD 'x'$$",
        "$q$ $$; $q$",
        "$é$;'$é$",
        "'--; LOAD'",
        "'/*'",
        "U&'d\\0061t;a'",
        "1 /* ; LOAD 'x' /* ; */ */",
        "2 -- ; LOAD 'x'\n",
    ];
    const COMMENTS: [&str; 4] = ["", " /* ; */ ", "-- ;\n", "\n"];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for _ in 0..3_000 {
        let count = 1 + next(4);
        let mut sql = String::new();
        let mut leaves = false;
        for k in 0..count {
            if k > 0 {
                sql.push(';');
            }
            sql.push_str(COMMENTS[next(COMMENTS.len())]);
            match next(10) {
                0 => {
                    sql.push_str("LOAD 'auto_explain'");
                    leaves = true;
                }
                1 => {
                    sql.push_str("SET seed = 0.5");
                    leaves = true;
                }
                _ => {
                    sql.push_str("SELECT ");
                    sql.push_str(LITERALS[next(LITERALS.len())]);
                }
            }
        }
        let tree = pg_query::parse(&sql, pg_query::ParserOptions::DEFAULT)
            .unwrap_or_else(|e| panic!("{sql:?} does not parse: {e}"));
        assert_eq!(tree.protobuf.stmts.len(), count, "{sql:?}");
        // (Unicode escapes alone make the check say yes: it cannot read them.)
        if !sql.contains("U&") {
            assert_eq!(crate::leaves_process_state(&sql), leaves, "{sql:?}");
        }
    }
}

#[test]
fn default_setting_changes_are_seen() {
    for (sql, want) in [
        ("ALTER DATABASE test SET search_path = app, public", true),
        ("alter role alice set work_mem = '8MB'", true),
        ("ALTER ROLE alice IN DATABASE test RESET ALL", true),
        ("ALTER USER bob SET statement_timeout = 0", true),
        ("/* c */ ALTER DATABASE test RESET search_path", true),
        ("SELECT 1; ALTER DATABASE test SET search_path TO x1", true),
        (
            "BEGIN; ALTER DATABASE test SET work_mem = '1MB'; COMMIT",
            true,
        ),
        ("SELECT 'alter'", false),
        ("ALTER TABLE t ADD COLUMN x int", false),
        ("ALTER ROLE alice PASSWORD 'x'", false),
        ("ALTER SYSTEM SET work_mem = '8MB'", false),
        ("SELECT 1", false),
    ] {
        assert_eq!(changes_default_settings(sql), want, "{sql}");
    }
}
