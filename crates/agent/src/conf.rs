//! The standby settings the agent writes into `postgresql.auto.conf`, as pure string functions.
//!
//! `postgresql.auto.conf` and not `postgresql.conf`: PostgreSQL reads it last (it wins), it is
//! where `ALTER SYSTEM` — and so the warden's re-pointing of followers and pgpool's scripts —
//! put `primary_conninfo`, and the agent never has to understand an operator's own layout of
//! `postgresql.conf`. The settings sit in a block between two marker comments so the next
//! request replaces them instead of piling up; any other `primary_conninfo`,
//! `primary_slot_name` or `recovery_target_timeline` line is removed too, because pg_rewind
//! and pg_basebackup copy the *primary's* `postgresql.auto.conf`, which may hold its own old
//! standby settings, and a stale line elsewhere in the file would be confusing at best.

/// The first line of the block.
pub const BEGIN: &str = "# pgwarden: standby settings (begin)";
/// The last line of the block.
pub const END: &str = "# pgwarden: standby settings (end)";

/// Settings that only the block may hold.
const OWNED: [&str; 3] = [
    "primary_conninfo",
    "primary_slot_name",
    "recovery_target_timeline",
];

/// A value for a libpq connection string: as it is when that is unambiguous, else in single
/// quotes with `\` and `'` escaped by a backslash (libpq's rule; the warden's
/// `parse_conninfo` reads both forms back).
pub fn conninfo_value(v: &str) -> String {
    if !v.is_empty() && !v.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return v.to_string();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A string value for a PostgreSQL configuration file: in single quotes, `'` and `\` doubled
/// (what `ALTER SYSTEM` writes; the file's lexer reads backslash escapes, so a backslash left
/// single would escape the next character).
pub fn guc_string(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// What the block says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standby<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub application_name: &'a str,
    pub passfile: Option<&'a str>,
    pub slot: Option<&'a str>,
    /// The port this server listens on (the agent's `--pg-port`): a base backup or a rewind
    /// brought the primary's configuration, whose port may be another one.
    pub listen_port: u16,
}

/// `primary_conninfo`'s value (before quoting for the configuration file).
pub fn primary_conninfo(s: &Standby) -> String {
    let mut c = format!(
        "host={} port={} user={} application_name={}",
        conninfo_value(s.host),
        s.port,
        conninfo_value(s.user),
        conninfo_value(s.application_name)
    );
    if let Some(p) = s.passfile {
        c.push_str(&format!(" passfile={}", conninfo_value(p)));
    }
    c
}

/// The block, marker lines included, ending in a newline.
pub fn standby_block(s: &Standby) -> String {
    let mut b = format!(
        "{BEGIN}\n\
         # Written by pgwarden's agent; replaced whole by its next standby request.\n\
         primary_conninfo = {}\n",
        guc_string(&primary_conninfo(s))
    );
    if let Some(slot) = s.slot {
        b.push_str(&format!("primary_slot_name = {}\n", guc_string(slot)));
    }
    b.push_str("recovery_target_timeline = 'latest'\n");
    b.push_str(&format!("port = {}\n{END}\n", s.listen_port));
    b
}

/// Whether `line` sets configuration parameter `name` (`name = value` or `name value`; names
/// are case-insensitive).
fn sets(line: &str, name: &str) -> bool {
    let t = line.trim_start();
    t.len() > name.len()
        && t.is_char_boundary(name.len())
        && t[..name.len()].eq_ignore_ascii_case(name)
        && t[name.len()..].starts_with(|c: char| c == '=' || c.is_whitespace())
}

/// `existing` (the content of `postgresql.auto.conf`) without any previous block or stray
/// owned setting, with `block` appended.
pub fn rewrite_auto_conf(existing: &str, block: &str) -> String {
    let mut out = String::with_capacity(existing.len() + block.len());
    let mut in_block = false;
    for line in existing.lines() {
        let t = line.trim();
        if t == BEGIN {
            in_block = true;
            continue;
        }
        if t == END {
            in_block = false;
            continue;
        }
        if in_block || OWNED.iter().any(|n| sets(line, n)) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(block);
    out
}

/// Why `s` cannot go into a setting: a NUL or a line break would end the configuration line
/// (or the C string) early.
pub fn check_text(what: &str, s: &str) -> Result<(), String> {
    if s.contains(['\0', '\n', '\r']) {
        return Err(format!(
            "{what} {s:?} contains a NUL or a line break; expected a single line"
        ));
    }
    Ok(())
}

/// Replication slot names: lower-case letters, digits and underscores, at most 63 (what
/// PostgreSQL accepts).
pub fn check_slot(slot: &str) -> Result<(), String> {
    let ok = !slot.is_empty()
        && slot.len() <= 63
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{slot:?} is not a replication slot name; expected 1 to 63 lower-case letters, digits or underscores"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standby() -> Standby<'static> {
        Standby {
            host: "10.0.0.1",
            port: 5432,
            user: "postgres",
            application_name: "node1",
            passfile: Some("/var/lib/postgresql/.pgpass"),
            slot: Some("node1"),
            listen_port: 5433,
        }
    }

    #[test]
    fn the_block() {
        assert_eq!(
            standby_block(&standby()),
            "# pgwarden: standby settings (begin)\n\
             # Written by pgwarden's agent; replaced whole by its next standby request.\n\
             primary_conninfo = 'host=10.0.0.1 port=5432 user=postgres application_name=node1 passfile=/var/lib/postgresql/.pgpass'\n\
             primary_slot_name = 'node1'\n\
             recovery_target_timeline = 'latest'\n\
             port = 5433\n\
             # pgwarden: standby settings (end)\n"
        );
        let no_slot = standby_block(&Standby {
            slot: None,
            passfile: None,
            ..standby()
        });
        assert!(!no_slot.contains("primary_slot_name"));
        assert!(!no_slot.contains("passfile"));
    }

    #[test]
    fn quotes_and_backslashes_are_escaped_twice() {
        let s = Standby {
            application_name: r"it's\here",
            passfile: Some("/tmp/a b/pgpass"),
            ..standby()
        };
        // libpq: 'it\'s\\here'; then the configuration file doubles ' and \.
        assert_eq!(
            primary_conninfo(&s),
            r"host=10.0.0.1 port=5432 user=postgres application_name='it\'s\\here' passfile='/tmp/a b/pgpass'"
        );
        assert!(standby_block(&s).contains(
            r"primary_conninfo = 'host=10.0.0.1 port=5432 user=postgres application_name=''it\\''s\\\\here'' passfile=''/tmp/a b/pgpass'''"
        ));
    }

    #[test]
    fn rewrite_replaces_the_block_and_stray_settings() {
        let block = standby_block(&standby());
        let primary_auto_conf = "\
# Do not edit this file manually!
# It will be overwritten by the ALTER SYSTEM command.
work_mem = '8MB'
primary_conninfo = 'host=old port=1'
PRIMARY_SLOT_NAME='old'
  recovery_target_timeline 'current'
primary_conninfo_is_not_a_setting_but_kept = 1
";
        let once = rewrite_auto_conf(primary_auto_conf, &block);
        assert_eq!(
            once,
            format!(
                "# Do not edit this file manually!\n\
                 # It will be overwritten by the ALTER SYSTEM command.\n\
                 work_mem = '8MB'\n\
                 primary_conninfo_is_not_a_setting_but_kept = 1\n{block}"
            )
        );
        // A second request replaces the block instead of adding one.
        let other = standby_block(&Standby {
            host: "10.0.0.2",
            ..standby()
        });
        let twice = rewrite_auto_conf(&once, &other);
        assert_eq!(twice.matches(BEGIN).count(), 1);
        assert!(twice.contains("10.0.0.2") && !twice.contains("10.0.0.1"));
        assert!(twice.contains("work_mem = '8MB'"));
        // Settings ALTER SYSTEM appended after the block are kept (except the owned ones).
        let altered = format!("{once}wal_level = 'replica'\nprimary_slot_name = 'x'\n");
        let again = rewrite_auto_conf(&altered, &block);
        assert!(again.contains("wal_level = 'replica'\n"));
        assert_eq!(again.matches("primary_slot_name").count(), 1);
        // An empty or missing file.
        assert_eq!(rewrite_auto_conf("", &block), block);
    }

    #[test]
    fn unsafe_text_and_slot_names() {
        assert!(check_text("application_name", "node1").is_ok());
        assert!(check_text("host", "a\nprimary_conninfo = 'x'").is_err());
        assert!(check_text("user", "a\0").is_err());
        assert!(check_slot("node_1").is_ok());
        assert!(check_slot("Node1").is_err());
        assert!(check_slot("").is_err());
        assert!(check_slot(&"a".repeat(64)).is_err());
        assert!(check_slot("a'b").is_err());
    }
}
