//! Message framing.
//!
//! After the startup packet every message is `tag: u8, length: i32 (counting itself), body`.
//! [`split_frame`] takes one complete message off the front of a buffer without copying it.

use bytes::{Buf, Bytes, BytesMut};

/// The startup packet of PostgreSQL is at most this long (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: usize = 10_000;

pub const PROTOCOL_3_0: u32 = 196_608; // 3 << 16
pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid length of startup packet ({0} bytes)")]
    StartupLength(usize),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedVersion { major: u16, minor: u16 },
    /// No `user`, or an empty one (PostgreSQL's SQLSTATE for it is 28000, not a protocol
    /// violation).
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
    #[error("invalid startup packet layout: {0}")]
    StartupLayout(&'static str),
    /// A startup parameter that pgwarden cannot read (it keeps them as UTF-8).
    #[error("the value of startup parameter \"{0}\" is not UTF-8; pgwarden reads startup parameters as UTF-8")]
    StartupNotUtf8(String),
    #[error("invalid message length {0}")]
    Length(i64),
    #[error("message of {len} bytes exceeds the maximum message size of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("invalid {what} message: {why}")]
    Malformed {
        what: &'static str,
        why: &'static str,
    },
}

/// One complete protocol message: `bytes` holds the whole frame, header included, so it can be
/// forwarded as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub bytes: Bytes,
}

impl Frame {
    /// The message body, after the tag and the length.
    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }
}

/// The length of the first complete frame in `buf`, or `None` if more bytes are needed.
/// Fails on a length below 4 or above `max`.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(ProtocolError::Length(i64::from(len)));
    }
    let total = len as usize + 1;
    if total > max {
        return Err(ProtocolError::TooLarge { len: total, max });
    }
    Ok((buf.len() >= total).then_some(total))
}

/// Takes one complete frame off the front of `buf`.
pub fn split_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, ProtocolError> {
    match frame_len(buf, max)? {
        Some(n) => {
            let tag = buf[0];
            Ok(Some(Frame {
                tag,
                bytes: buf.split_to(n).freeze(),
            }))
        }
        None => Ok(None),
    }
}

/// The first message of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    Ssl,
    GssEnc,
    Cancel {
        pid: i32,
        key: i32,
    },
    /// A protocol 3.x startup packet.
    Startup {
        /// Its parameters, one per name (the last value given), `_pq_.` options not among them.
        params: Vec<(String, String)>,
        /// The protocol's minor version the client asked for (3.2 from libpq 18 with
        /// `max_protocol_version=latest`). pgwarden, as PostgreSQL 15, speaks 3.0.
        minor: u16,
        /// Protocol options (`_pq_.name`) the client asked for, in its order: none is known.
        protocol_options: Vec<String>,
    },
}

impl Startup {
    /// Whether the client asked for a protocol newer than 3.0 or for protocol options: the
    /// server then answers with NegotiateProtocolVersion (3.0, the options it does not know)
    /// before it authenticates, and the client goes on with 3.0 or gives up.
    pub fn needs_negotiation(&self) -> bool {
        matches!(self, Startup::Startup { minor, protocol_options, .. } if *minor > 0 || !protocol_options.is_empty())
    }

    /// The startup packet's user: refused when missing or empty. Checked after the
    /// negotiation, as PostgreSQL checks it (a client asking for 3.2 without a user gets
    /// NegotiateProtocolVersion, then the refusal).
    pub fn user(params: &[(String, String)]) -> Result<&str, ProtocolError> {
        Startup::param(params, "user")
            .filter(|u| !u.is_empty())
            .ok_or(ProtocolError::NoUser)
    }

    pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads the startup packet off the front of `buf`, or `None` if more bytes are needed.
pub fn split_startup(buf: &mut BytesMut) -> Result<Option<Startup>, ProtocolError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(8..=MAX_STARTUP_LEN).contains(&len) {
        return Err(ProtocolError::StartupLength(len));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut packet = buf.split_to(len).freeze();
    packet.advance(4);
    let code = packet.get_u32();
    match code {
        SSL_REQUEST if len == 8 => Ok(Some(Startup::Ssl)),
        GSSENC_REQUEST if len == 8 => Ok(Some(Startup::GssEnc)),
        CANCEL_REQUEST if len == 16 => {
            let pid = packet.get_i32();
            let key = packet.get_i32();
            Ok(Some(Startup::Cancel { pid, key }))
        }
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => Err(ProtocolError::StartupLayout(
            "wrong length for a special request",
        )),
        // Any 3.x, as PostgreSQL: a newer minor version is negotiated down (see
        // `Startup::needs_negotiation`).
        v if v >> 16 == PROTOCOL_3_0 >> 16 => {
            let (params, protocol_options) = parse_params(&packet)?;
            Ok(Some(Startup::Startup {
                params,
                minor: (v & 0xffff) as u16,
                protocol_options,
            }))
        }
        v => Err(ProtocolError::UnsupportedVersion {
            major: (v >> 16) as u16,
            minor: (v & 0xffff) as u16,
        }),
    }
}

/// A startup packet's parameters (name, value), and its protocol options (`_pq_.` names).
type Params = (Vec<(String, String)>, Vec<String>);

/// The parameters, and the protocol options apart.
fn parse_params(mut body: &[u8]) -> Result<Params, ProtocolError> {
    let mut params = Vec::new();
    let mut options = Vec::new();
    loop {
        let (name, rest) = cbytes(body).ok_or(ProtocolError::StartupLayout("unterminated name"))?;
        let name = std::str::from_utf8(name)
            .map_err(|_| ProtocolError::StartupLayout("a parameter name is not UTF-8"))?;
        if name.is_empty() {
            if !rest.is_empty() {
                return Err(ProtocolError::StartupLayout("bytes after the terminator"));
            }
            break;
        }
        let (value, rest) =
            cbytes(rest).ok_or(ProtocolError::StartupLayout("unterminated value"))?;
        body = rest;
        let value = match std::str::from_utf8(value) {
            Ok(value) => value.to_string(),
            // What the server makes of it anyway (`pg_clean_ascii`): a Windows program's name
            // in its code page is no reason to refuse the login.
            Err(_) if name == "application_name" => value
                .iter()
                .map(|&b| {
                    if (32..=126).contains(&b) {
                        b as char
                    } else {
                        '?'
                    }
                })
                .collect(),
            Err(_) => return Err(ProtocolError::StartupNotUtf8(name.to_string())),
        };
        if name.starts_with("_pq_.") {
            // Reserved for protocol options, none of which PostgreSQL 15 knows: not a setting.
            options.push(name.to_string());
            continue;
        }
        // A name given twice: the last value counts, as for PostgreSQL (whose `user`,
        // `database` and `replication` are the last given). One entry per name, so that what
        // pgwarden checks (hba, password, replication) is what the server is asked for.
        params.retain(|(k, _)| k != name);
        params.push((name.to_string(), value));
    }
    Ok((params, options))
}

/// A NUL-terminated UTF-8 string at the front of `b`, and what follows it.
pub fn cstr(b: &[u8]) -> Option<(&str, &[u8])> {
    let (s, rest) = cbytes(b)?;
    Some((std::str::from_utf8(s).ok()?, rest))
}

/// A NUL-terminated string at the front of `b` (without its NUL), and what follows it.
pub fn cbytes(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = memchr::memchr(0, b)?;
    Some((&b[..end], &b[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn startup_packet(code: u32, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u32((8 + body.len()) as u32);
        b.put_u32(code);
        b.put_slice(body);
        b
    }

    #[test]
    fn a_name_given_twice_counts_once_with_its_last_value() {
        let mut b = startup_packet(
            PROTOCOL_3_0,
            b"user\0bob\0database\0app\0replication\0off\0database\0payroll\0user\0postgres\0replication\0database\0\0",
        );
        let Some(Startup::Startup { params, .. }) = split_startup(&mut b).unwrap() else {
            panic!("not a startup packet");
        };
        assert_eq!(
            params,
            vec![
                ("database".into(), "payroll".into()),
                ("user".into(), "postgres".into()),
                ("replication".into(), "database".into()),
            ]
        );
    }

    #[test]
    fn startup_variants() {
        let mut b = startup_packet(PROTOCOL_3_0, b"user\0alice\0database\0db\0\0");
        let s = split_startup(&mut b).unwrap().unwrap();
        assert_eq!(
            s,
            Startup::Startup {
                params: vec![
                    ("user".into(), "alice".into()),
                    ("database".into(), "db".into())
                ],
                minor: 0,
                protocol_options: vec![],
            }
        );
        assert!(!s.needs_negotiation());
        assert!(b.is_empty());
        // Protocol 3.2 with options (libpq 18): negotiated, the options kept apart.
        let mut b = startup_packet(
            PROTOCOL_3_0 | 2,
            b"user\0alice\0_pq_.one\0x\0application_name\0a\0_pq_.two\0\0\0",
        );
        let s = split_startup(&mut b).unwrap().unwrap();
        assert!(s.needs_negotiation());
        assert_eq!(
            s,
            Startup::Startup {
                params: vec![
                    ("user".into(), "alice".into()),
                    ("application_name".into(), "a".into())
                ],
                minor: 2,
                protocol_options: vec!["_pq_.one".into(), "_pq_.two".into()],
            }
        );
        let mut b = startup_packet(PROTOCOL_3_0, b"user\0alice\0_pq_.x\0\0\0");
        assert!(split_startup(&mut b).unwrap().unwrap().needs_negotiation());
        assert_eq!(
            split_startup(&mut startup_packet(SSL_REQUEST, b"")).unwrap(),
            Some(Startup::Ssl)
        );
        assert_eq!(
            split_startup(&mut startup_packet(GSSENC_REQUEST, b"")).unwrap(),
            Some(Startup::GssEnc)
        );
        let mut c = startup_packet(CANCEL_REQUEST, &[0, 0, 0, 7, 0, 0, 0, 9]);
        assert_eq!(
            split_startup(&mut c).unwrap(),
            Some(Startup::Cancel { pid: 7, key: 9 })
        );
    }

    #[test]
    fn startup_garbage() {
        let cases: Vec<(BytesMut, ProtocolError)> = vec![
            (
                BytesMut::from(&[0u8, 0, 0, 2, 1, 2][..]),
                ProtocolError::StartupLength(2),
            ),
            (
                BytesMut::from(&[0x7fu8, 0, 0, 0][..]),
                ProtocolError::StartupLength(0x7f00_0000),
            ),
            (
                startup_packet(2 << 16, b"\0"),
                ProtocolError::UnsupportedVersion { major: 2, minor: 0 },
            ),
            (
                startup_packet(PROTOCOL_3_0, b"user\0alice"),
                ProtocolError::StartupLayout("unterminated value"),
            ),
            (
                startup_packet(4 << 16, b"user\0a\0\0"),
                ProtocolError::UnsupportedVersion { major: 4, minor: 0 },
            ),
            (
                startup_packet(PROTOCOL_3_0, b"user\0a\0\0junk"),
                ProtocolError::StartupLayout("bytes after the terminator"),
            ),
            (
                startup_packet(SSL_REQUEST, b"xxxx"),
                ProtocolError::StartupLayout("wrong length for a special request"),
            ),
            (
                startup_packet(PROTOCOL_3_0, b"user\0\xff\xfe\0\0"),
                ProtocolError::StartupNotUtf8("user".into()),
            ),
            (
                startup_packet(PROTOCOL_3_0, b"\xff\0a\0\0"),
                ProtocolError::StartupLayout("a parameter name is not UTF-8"),
            ),
        ];
        for (mut b, want) in cases {
            assert_eq!(split_startup(&mut b), Err(want));
        }
        // No user, or an empty one: the packet is read, and its user refused.
        for body in [&b"database\0x\0\0"[..], b"user\0\0database\0x\0\0"] {
            let Ok(Some(Startup::Startup { params, .. })) =
                split_startup(&mut startup_packet(PROTOCOL_3_0, body))
            else {
                panic!("{body:?} is read");
            };
            assert_eq!(Startup::user(&params), Err(ProtocolError::NoUser));
        }
        // An application_name in a Windows code page (é in WIN1252): cleaned to ASCII, as
        // the server does (`pg_clean_ascii`), not refused.
        let Ok(Some(Startup::Startup { params, .. })) = split_startup(&mut startup_packet(
            PROTOCOL_3_0,
            b"user\0a\0application_name\0caf\xe9 \x01\0\0",
        )) else {
            panic!("an application_name that is not UTF-8 is read");
        };
        assert_eq!(params[1], ("application_name".into(), "caf? ?".into()));
        // incomplete: wait for more
        let mut b = startup_packet(PROTOCOL_3_0, b"user\0alice\0\0");
        let mut half = b.split_to(10);
        assert_eq!(split_startup(&mut half), Ok(None));
    }

    #[test]
    fn frames() {
        let mut b = BytesMut::new();
        b.put_u8(b'Q');
        b.put_i32(4 + 9);
        b.put_slice(b"SELECT 1\0");
        b.put_u8(b'S');
        b.put_i32(4);
        b.put_u8(b'X'); // incomplete third frame
        let f = split_frame(&mut b, 1024).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(f.body(), b"SELECT 1\0");
        let f = split_frame(&mut b, 1024).unwrap().unwrap();
        assert_eq!((f.tag, f.body().len()), (b'S', 0));
        assert_eq!(split_frame(&mut b, 1024).unwrap(), None);
    }

    #[test]
    fn lying_lengths() {
        for (len, want) in [
            (3i32, ProtocolError::Length(3)),
            (-1, ProtocolError::Length(-1)),
            (
                i32::MAX,
                ProtocolError::TooLarge {
                    len: i32::MAX as usize + 1,
                    max: 1 << 20,
                },
            ),
        ] {
            let mut b = BytesMut::new();
            b.put_u8(b'Q');
            b.put_i32(len);
            assert_eq!(split_frame(&mut b, 1 << 20), Err(want));
        }
    }
}
