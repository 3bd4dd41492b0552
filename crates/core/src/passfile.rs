//! libpq password files (`~/.pgpass`, `PGPASSFILE`): `hostname:port:database:username:password`.
//!
//! Same rules as libpq: `#` starts a comment line, `*` in the first four fields matches
//! anything, `\:` and `\\` escape a colon and a backslash, the first matching line wins.

use crate::Secret;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    host: String,
    port: String,
    database: String,
    user: String,
    password: String,
}

/// A parsed password file. Lines that do not have five fields are skipped, as libpq does.
#[derive(Debug, Clone, Default)]
pub struct PassFile {
    entries: Vec<Entry>,
}

impl PassFile {
    pub fn parse(text: &str) -> PassFile {
        let entries = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_line)
            .collect();
        PassFile { entries }
    }

    /// The password for a connection, if a line matches.
    pub fn lookup(&self, host: &str, port: u16, database: &str, user: &str) -> Option<Secret> {
        let port = port.to_string();
        let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        self.entries
            .iter()
            .find(|e| {
                matches(&e.host, host)
                    && matches(&e.port, &port)
                    && matches(&e.database, database)
                    && matches(&e.user, user)
            })
            .map(|e| Secret::new(e.password.clone()))
    }

    /// The users named (not `*`) on lines that may match `host` and `port`, with their
    /// passwords, in file order.
    pub fn named_users(&self, host: &str, port: u16) -> Vec<(String, Secret)> {
        let port = port.to_string();
        self.entries
            .iter()
            .filter(|e| {
                (e.host == "*" || e.host == host)
                    && (e.port == "*" || e.port == port)
                    && e.user != "*"
            })
            .map(|e| (e.user.clone(), Secret::new(e.password.clone())))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Escapes a value for a password-file field.
pub fn escape(field: &str) -> String {
    field.replace('\\', "\\\\").replace(':', "\\:")
}

fn parse_line(line: &str) -> Option<Entry> {
    let mut fields = Vec::with_capacity(5);
    let mut current = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            ':' if fields.len() < 4 => fields.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    fields.push(current);
    let [host, port, database, user, password]: [String; 5] = fields.try_into().ok()?;
    Some(Entry {
        host,
        port,
        database,
        user,
        password,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# comment
127.0.0.1:5432:app:alice:a1
127.0.0.1:*:*:alice:a2
*:*:*:bob:b\\:with\\\\colon
broken:line
localhost:6000:*:*:pw:with:colons
";

    #[test]
    fn lookup_table() {
        let pf = PassFile::parse(FILE);
        let cases: &[(&str, u16, &str, &str, Option<&str>)] = &[
            ("127.0.0.1", 5432, "app", "alice", Some("a1")),
            ("127.0.0.1", 5432, "other", "alice", Some("a2")),
            ("127.0.0.1", 5433, "app", "alice", Some("a2")),
            ("10.0.0.1", 5432, "app", "alice", None),
            ("anywhere", 1, "x", "bob", Some("b:with\\colon")),
            ("localhost", 6000, "db", "carol", Some("pw:with:colons")),
            ("localhost", 6001, "db", "carol", None),
            ("broken", 0, "line", "x", None),
        ];
        for (host, port, db, user, want) in cases {
            let got = pf.lookup(host, *port, db, user);
            assert_eq!(
                got.as_ref().map(Secret::expose),
                *want,
                "{host}:{port}:{db}:{user}"
            );
        }
    }

    #[test]
    fn escape_round_trips() {
        let pw = r"a:b\c";
        let line = format!("h:1:d:u:{}", escape(pw));
        let pf = PassFile::parse(&line);
        assert_eq!(pf.lookup("h", 1, "d", "u").unwrap().expose(), pw);
    }

    #[test]
    fn empty_and_comments() {
        assert!(PassFile::parse("# only a comment\n\n").is_empty());
    }
}
