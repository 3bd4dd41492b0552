//! `pcp.conf` and PCP's md5-with-salt authentication.
//!
//! `pcp.conf` holds one `user:md5hex(password)` per line (what `pg_md5 password` prints),
//! with `#` comments and blank lines. The client answers the 4-byte salt with
//! `md5hex(md5hex(md5hex(password) || user) || salt)`; the server, knowing only
//! `md5hex(password)`, computes the same from the file and compares.

use md5::{Digest, Md5};
use std::fmt;
use std::path::{Path, PathBuf};

/// pgpool's `MAX_USER_PASSWD_LEN`: the client refuses user names of this length or more.
const MAX_USER_LEN: usize = 127;

/// A problem in `pcp.conf`.
#[derive(Debug, thiserror::Error)]
pub enum PcpConfError {
    /// The file could not be read.
    #[error("{}: cannot read the PCP user file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line is not `user:md5hex(password)`.
    #[error("{}line {line}: {expected}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Line {
        /// The file, when the text came from one ([`PcpUsers::load`]).
        path: Option<PathBuf>,
        /// 1-based.
        line: usize,
        /// What was expected there, and what was found (never the secret itself).
        expected: String,
    },
}

/// The users of `pcp.conf`: names and the md5 hex of their passwords.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PcpUsers {
    /// In file order; a name may appear more than once (pgpool then accepts either password).
    entries: Vec<(String, String)>,
}

impl fmt::Debug for PcpUsers {
    /// Names only: the hashes are password equivalents for PCP.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PcpUsers")
            .field(
                "users",
                &self.entries.iter().map(|(u, _)| u).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl PcpUsers {
    /// Parses the text of a `pcp.conf`.
    pub fn parse(text: &str) -> Result<PcpUsers, PcpConfError> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |expected: String| PcpConfError::Line {
                path: None,
                line: i + 1,
                expected,
            };
            let Some((user, hash)) = line.split_once(':') else {
                return Err(err(
                    "expected `user:md5hex(password)` (as printed by `pg_md5`), found no `:`"
                        .into(),
                ));
            };
            let (user, hash) = (user.trim(), hash.trim());
            if user.is_empty() {
                return Err(err("expected a user name before `:`, found nothing".into()));
            }
            if user.len() > MAX_USER_LEN {
                return Err(err(format!(
                    "expected a user name of at most {MAX_USER_LEN} bytes, found {} bytes",
                    user.len()
                )));
            }
            if user.contains('\0') {
                return Err(err("expected a user name without NUL bytes".into()));
            }
            if hash.len() != 32 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                let found = if hash.is_empty() {
                    "nothing".to_string()
                } else if hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    format!("{} hex digits", hash.len())
                } else {
                    format!("{} characters, not all hex digits", hash.chars().count())
                };
                return Err(err(format!(
                    "expected the md5 of the password after `:`: 32 hex digits (`pg_md5 PASSWORD`), found {found}"
                )));
            }
            entries.push((user.to_string(), hash.to_ascii_lowercase()));
        }
        Ok(PcpUsers { entries })
    }

    /// Reads and parses a `pcp.conf`; errors name the file.
    pub fn load(path: &Path) -> Result<PcpUsers, PcpConfError> {
        let text = std::fs::read_to_string(path).map_err(|source| PcpConfError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        PcpUsers::parse(&text).map_err(|e| match e {
            PcpConfError::Line { line, expected, .. } => PcpConfError::Line {
                path: Some(path.to_path_buf()),
                line,
                expected,
            },
            other => other,
        })
    }

    /// The user names, in file order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(u, _)| u.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `answer` is what a client knowing `user`'s password sends for `salt`.
    /// Every entry is compared in constant time, whether or not the name matches, so the
    /// time taken does not tell which users exist.
    pub fn check(&self, user: &[u8], answer: &[u8], salt: &[u8; 4]) -> bool {
        let mut ok = false;
        for (name, file_md5) in &self.entries {
            let expected = salted(file_md5, name, salt);
            let hash_ok = ct_eq(expected.as_bytes(), answer);
            let name_ok = ct_eq(name.as_bytes(), user);
            ok |= hash_ok & name_ok;
        }
        ok
    }
}

/// Lowercase hex of the md5 of `parts` concatenated (pgpool's `pool_md5_hash`).
pub(crate) fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    let digest = h.finalize();
    let mut s = String::with_capacity(32);
    for b in digest {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    s
}

/// `md5hex(md5hex(file_md5 || user) || salt)`: what the client must send.
pub(crate) fn salted(file_md5: &str, user: &str, salt: &[u8; 4]) -> String {
    let inner = md5_hex(&[file_md5.as_bytes(), user.as_bytes()]);
    md5_hex(&[inner.as_bytes(), salt])
}

/// Compares without an early exit on the first differing byte.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_of_known_strings() {
        // RFC 1321 test vectors.
        assert_eq!(md5_hex(&[b""]), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(&[b"abc"]), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(md5_hex(&[b"a", b"bc"]), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(md5_hex(&[b"secret"]), "5ebe2294ecd0e0f08eab7690d2a6ee69");
    }

    #[test]
    fn the_salted_answer_is_built_as_the_client_builds_it() {
        // The client: md5hex(md5hex(md5hex(password) || user) || salt), step by step.
        let salt = [0x01, 0x02, 0x03, 0x04];
        let pw = md5_hex(&[b"secret"]);
        assert_eq!(pw, "5ebe2294ecd0e0f08eab7690d2a6ee69");
        let inner = md5_hex(&[b"5ebe2294ecd0e0f08eab7690d2a6ee69admin"]);
        let mut outer_input = inner.as_bytes().to_vec();
        outer_input.extend_from_slice(&salt);
        let answer = md5_hex(&[&outer_input]);
        assert_eq!(salted(&pw, "admin", &salt), answer);

        let users = PcpUsers::parse(&format!("admin:{pw}\n")).unwrap();
        assert!(users.check(b"admin", answer.as_bytes(), &salt));
        assert!(!users.check(b"admin", answer.as_bytes(), &[0, 0, 0, 0]));
        assert!(!users.check(b"other", answer.as_bytes(), &salt));
        assert!(!users.check(b"admin", b"", &salt));
        assert!(!users.check(b"admi", answer.as_bytes(), &salt));
    }

    #[test]
    fn uppercase_hashes_and_duplicate_users_are_accepted() {
        let a = md5_hex(&[b"one"]);
        let b = md5_hex(&[b"two"]);
        let text = format!("# pcp.conf\n\nu:{}\r\n  u : {b}  \n", a.to_uppercase());
        let users = PcpUsers::parse(&text).unwrap();
        assert_eq!(users.users().collect::<Vec<_>>(), ["u", "u"]);
        let salt = [9, 9, 9, 9];
        assert!(users.check(b"u", salted(&a, "u", &salt).as_bytes(), &salt));
        assert!(users.check(b"u", salted(&b, "u", &salt).as_bytes(), &salt));
        assert!(!format!("{users:?}").contains(&a));
    }

    #[test]
    fn pcp_conf_errors_name_the_line_and_what_was_expected() {
        let good = "d41d8cd98f00b204e9800998ecf8427e";
        let long_user = "x".repeat(128);
        let cases: Vec<(String, usize, &str)> = vec![
            ("no colon here".into(), 1, "found no `:`"),
            (
                format!("# c\n\n:{good}"),
                3,
                "expected a user name before `:`",
            ),
            ("admin:".into(), 1, "found nothing"),
            (
                "admin:secret".into(),
                1,
                "found 6 characters, not all hex digits",
            ),
            ("admin:abc123".into(), 1, "found 6 hex digits"),
            (format!("ok:{good}\nbad:{good}0"), 2, "found 33 hex digits"),
            (
                format!("{long_user}:{good}"),
                1,
                "at most 127 bytes, found 128",
            ),
        ];
        for (text, line, expected) in cases {
            match PcpUsers::parse(&text) {
                Err(e @ PcpConfError::Line { line: l, .. }) => {
                    assert_eq!(l, line, "{text:?}: {e}");
                    let msg = e.to_string();
                    assert!(msg.starts_with(&format!("line {line}: ")), "{msg}");
                    assert!(msg.contains(expected), "{text:?}: {msg}");
                    assert!(!msg.contains("secret"), "the password leaks: {msg}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert!(PcpUsers::parse("").unwrap().is_empty());
        assert!(PcpUsers::parse("# only\n   \n").unwrap().is_empty());
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pcp.conf");
        let e = PcpUsers::load(&path).unwrap_err();
        assert!(
            e.to_string().starts_with(&path.display().to_string()),
            "{e}"
        );
        std::fs::write(&path, "a:b\n").unwrap();
        let e = PcpUsers::load(&path).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: line 1: expected the md5 of the password after `:`: 32 hex digits (`pg_md5 PASSWORD`), found 1 hex digits",
                path.display()
            )
        );
    }
}
