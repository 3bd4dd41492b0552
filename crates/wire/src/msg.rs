//! Reading the frontend messages the proxy routes on; building the backend messages it sends
//! itself (authentication, errors, its own result sets).

use crate::frame::{cstr, ProtocolError};
use bytes::{BufMut, BytesMut};

fn malformed(what: &'static str, why: &'static str) -> ProtocolError {
    ProtocolError::Malformed { what, why }
}

/// The text of a simple Query ('Q'), in the client's encoding (see
/// `pgwarden_sql::server_text` for reading it).
pub fn query_text(body: &[u8]) -> Result<&[u8], ProtocolError> {
    match memchr::memchr(0, body) {
        Some(end) if end + 1 == body.len() => Ok(&body[..end]),
        Some(_) => Err(malformed("Query", "bytes after the query string")),
        None => Err(malformed("Query", "the query string is not terminated")),
    }
}

/// A Parse ('P') message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: &'a str,
    /// In the client's encoding, as [`query_text`].
    pub query: &'a [u8],
    /// How many parameter types it gives.
    pub param_types: usize,
}

pub fn parse(body: &[u8]) -> Result<Parse<'_>, ProtocolError> {
    let (name, rest) = cstr(body).ok_or(malformed("Parse", "bad statement name"))?;
    let end = memchr::memchr(0, rest).ok_or(malformed("Parse", "bad query string"))?;
    let (query, rest) = (&rest[..end], &rest[end + 1..]);
    if rest.len() < 2 {
        return Err(malformed("Parse", "missing parameter count"));
    }
    let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
    if rest.len() != 2 + 4 * n {
        return Err(malformed(
            "Parse",
            "parameter types do not match their count",
        ));
    }
    Ok(Parse {
        name,
        query,
        param_types: n,
    })
}

/// A Bind ('B') message, but for its parameter values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    /// How many parameter values it gives.
    pub params: usize,
    /// The result columns' format codes: none (all text), one (for all), or one per column.
    pub result_formats: Vec<i16>,
}

pub fn bind(body: &[u8]) -> Result<Bind<'_>, ProtocolError> {
    let bad = |why| malformed("Bind", why);
    let (portal, statement) = bind_names(body)?;
    let mut rest = &body[portal.len() + statement.len() + 2..];
    let mut take = |n: usize| -> Result<&[u8], ProtocolError> {
        if rest.len() < n {
            return Err(bad("shorter than its counts say"));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let count = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]) as usize;
    let formats = count(take(2)?);
    take(2 * formats)?;
    let params = count(take(2)?);
    for _ in 0..params {
        let l = take(4)?;
        let len = i32::from_be_bytes([l[0], l[1], l[2], l[3]]);
        if len > 0 {
            take(len as usize)?;
        } else if len < -1 {
            return Err(bad("negative parameter length"));
        }
    }
    let results = count(take(2)?);
    let codes = take(2 * results)?;
    let result_formats = codes
        .chunks_exact(2)
        .map(|c| i16::from_be_bytes([c[0], c[1]]))
        .collect();
    if !rest.is_empty() {
        return Err(bad("bytes after the result formats"));
    }
    Ok(Bind {
        portal,
        statement,
        params,
        result_formats,
    })
}

/// An Execute ('E') message: the portal and the most rows to return (0: all).
pub fn execute(body: &[u8]) -> Result<(&str, i32), ProtocolError> {
    match cstr(body) {
        Some((portal, &[a, b, c, d])) => Ok((portal, i32::from_be_bytes([a, b, c, d]))),
        _ => Err(malformed("Execute", "bad portal name or row count")),
    }
}

/// The portal and statement names of a Bind ('B') message.
pub fn bind_names(body: &[u8]) -> Result<(&str, &str), ProtocolError> {
    let (portal, rest) = cstr(body).ok_or(malformed("Bind", "bad portal name"))?;
    let (statement, _) = cstr(rest).ok_or(malformed("Bind", "bad statement name"))?;
    Ok((portal, statement))
}

/// The kind ('S' statement or 'P' portal) and name of a Describe ('D') or Close ('C').
pub fn target<'a>(body: &'a [u8], what: &'static str) -> Result<(u8, &'a str), ProtocolError> {
    let (&kind, rest) = body.split_first().ok_or(malformed(what, "empty"))?;
    if kind != b'S' && kind != b'P' {
        return Err(malformed(what, "the kind must be 'S' or 'P'"));
    }
    match cstr(rest) {
        Some((name, [])) => Ok((kind, name)),
        _ => Err(malformed(what, "bad name")),
    }
}

/// A password message ('p' answering AuthenticationCleartextPassword or MD5Password).
pub fn password(body: &[u8]) -> Result<&str, ProtocolError> {
    match cstr(body) {
        Some((p, [])) => Ok(p),
        _ => Err(malformed("password", "not a terminated string")),
    }
}

/// A SASLInitialResponse ('p'): mechanism and the client's first message.
pub fn sasl_initial(body: &[u8]) -> Result<(&str, &[u8]), ProtocolError> {
    let (mech, rest) = cstr(body).ok_or(malformed("SASLInitialResponse", "bad mechanism"))?;
    if rest.len() < 4 {
        return Err(malformed("SASLInitialResponse", "missing length"));
    }
    let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let data = &rest[4..];
    if len < 0 || len as usize != data.len() {
        return Err(malformed(
            "SASLInitialResponse",
            "length does not match the data",
        ));
    }
    Ok((mech, data))
}

// ---- building backend messages ---------------------------------------------------------------

fn with_len(buf: &mut BytesMut, tag: u8, f: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    f(buf);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    put_cbytes(buf, s.as_bytes());
}

fn put_cbytes(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

pub fn auth_ok(buf: &mut BytesMut) {
    with_len(buf, b'R', |b| b.put_i32(0));
}

pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    with_len(buf, b'R', |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}

pub fn auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    with_len(buf, b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            put_cstr(b, m);
        }
        b.put_u8(0);
    });
}

pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    with_len(buf, b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    with_len(buf, b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    with_len(buf, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, key: i32) {
    with_len(buf, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(key);
    });
}

/// NegotiateProtocolVersion ('v'): the newest protocol the server speaks (as PostgreSQL sends
/// it, the whole version number: 3.0 is 196608) and the protocol options it does not know.
pub fn negotiate_protocol_version(buf: &mut BytesMut, newest: u32, unknown: &[String]) {
    with_len(buf, b'v', |b| {
        b.put_u32(newest);
        b.put_i32(i32::try_from(unknown.len()).unwrap_or(i32::MAX));
        for name in unknown {
            b.put_slice(name.as_bytes());
            b.put_u8(0);
        }
    });
}

pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    with_len(buf, b'Z', |b| b.put_u8(status));
}

/// An ErrorResponse ('E') or NoticeResponse ('N').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    /// ERROR, FATAL, WARNING, NOTICE …
    pub severity: &'a str,
    /// SQLSTATE.
    pub code: &'a str,
    pub message: &'a str,
    pub detail: Option<&'a str>,
    pub hint: Option<&'a str>,
}

impl<'a> ErrorFields<'a> {
    pub fn error(code: &'a str, message: &'a str) -> Self {
        ErrorFields {
            severity: "ERROR",
            code,
            message,
            detail: None,
            hint: None,
        }
    }
    pub fn fatal(code: &'a str, message: &'a str) -> Self {
        ErrorFields {
            severity: "FATAL",
            ..Self::error(code, message)
        }
    }
    pub fn with_detail(mut self, detail: &'a str) -> Self {
        self.detail = Some(detail);
        self
    }
    pub fn with_hint(mut self, hint: &'a str) -> Self {
        self.hint = Some(hint);
        self
    }
}

fn put_fields(b: &mut BytesMut, e: &ErrorFields) {
    b.put_u8(b'S');
    put_cstr(b, e.severity);
    b.put_u8(b'V');
    put_cstr(b, e.severity);
    b.put_u8(b'C');
    put_cstr(b, e.code);
    b.put_u8(b'M');
    put_cstr(b, e.message);
    if let Some(d) = e.detail {
        b.put_u8(b'D');
        put_cstr(b, d);
    }
    if let Some(h) = e.hint {
        b.put_u8(b'H');
        put_cstr(b, h);
    }
    b.put_u8(0);
}

pub fn error_response(buf: &mut BytesMut, e: &ErrorFields) {
    with_len(buf, b'E', |b| put_fields(b, e));
}

pub fn notice_response(buf: &mut BytesMut, e: &ErrorFields) {
    with_len(buf, b'N', |b| put_fields(b, e));
}

/// Reads the fields of an ErrorResponse or NoticeResponse body: (field code, value) pairs.
pub fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        match cstr(tail) {
            Some((v, r)) => {
                out.push((code, v.to_string()));
                rest = r;
            }
            None => break,
        }
    }
    out
}

/// A RowDescription of text columns.
pub fn row_description(buf: &mut BytesMut, columns: &[&str]) {
    row_description_in(buf, columns, &[]);
}

/// A RowDescription of text columns in the formats a Bind asked for (`Bind::result_formats`:
/// none for text, one for all, or one per column).
pub fn row_description_in(buf: &mut BytesMut, columns: &[&str], formats: &[i16]) {
    with_len(buf, b'T', |b| {
        b.put_i16(columns.len() as i16);
        for (i, c) in columns.iter().enumerate() {
            let format = match formats {
                [] => 0,
                [f] => *f,
                per_column => per_column.get(i).copied().unwrap_or(0),
            };
            put_cstr(b, c);
            b.put_i32(0); // table oid
            b.put_i16(0); // column number
            b.put_u32(25); // text
            b.put_i16(-1); // variable size
            b.put_i32(-1); // typmod
            b.put_i16(format);
        }
    });
}

/// A message with no body: ParseComplete ('1'), BindComplete ('2'), CloseComplete ('3'),
/// NoData ('n'), PortalSuspended ('s').
pub fn empty(buf: &mut BytesMut, tag: u8) {
    with_len(buf, tag, |_| {});
}

/// A ParameterDescription of a statement without parameters.
pub fn no_parameters(buf: &mut BytesMut) {
    with_len(buf, b't', |b| b.put_i16(0));
}

pub fn data_row(buf: &mut BytesMut, values: &[Option<&str>]) {
    with_len(buf, b'D', |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(s) => {
                    b.put_i32(s.len() as i32);
                    b.put_slice(s.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
    });
}

pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    with_len(buf, b'C', |b| put_cstr(b, tag));
}

/// Frontend messages pgwarden sends to backends.
pub mod frontend {
    use super::*;

    pub fn startup(buf: &mut BytesMut, params: &[(&str, &str)]) {
        let at = buf.len();
        buf.put_i32(0);
        buf.put_u32(crate::frame::PROTOCOL_3_0);
        for (k, v) in params {
            put_cstr(buf, k);
            put_cstr(buf, v);
        }
        buf.put_u8(0);
        let len = (buf.len() - at) as i32;
        buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// `sql` in the session's client encoding (a client's text is sent on as it came).
    pub fn query(buf: &mut BytesMut, sql: impl AsRef<[u8]>) {
        with_len(buf, b'Q', |b| put_cbytes(b, sql.as_ref()));
    }

    pub fn password(buf: &mut BytesMut, p: &str) {
        with_len(buf, b'p', |b| put_cstr(b, p));
    }

    pub fn sasl_initial(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
        with_len(buf, b'p', |b| {
            put_cstr(b, mechanism);
            b.put_i32(data.len() as i32);
            b.put_slice(data);
        });
    }

    pub fn sasl_response(buf: &mut BytesMut, data: &[u8]) {
        with_len(buf, b'p', |b| b.put_slice(data));
    }

    pub fn parse(buf: &mut BytesMut, name: &str, query: impl AsRef<[u8]>, param_types: &[u32]) {
        with_len(buf, b'P', |b| {
            put_cstr(b, name);
            put_cbytes(b, query.as_ref());
            b.put_u16(param_types.len() as u16);
            for t in param_types {
                b.put_u32(*t);
            }
        });
    }

    /// Bind of `statement` to `portal`, without parameters, all results in text.
    pub fn bind(buf: &mut BytesMut, portal: &str, statement: &str) {
        with_len(buf, b'B', |b| {
            put_cstr(b, portal);
            put_cstr(b, statement);
            b.put_u16(0);
            b.put_u16(0);
            b.put_u16(0);
        });
    }

    /// Execute of `portal`, all its rows (`max_rows` 0) or that many.
    pub fn execute(buf: &mut BytesMut, portal: &str, max_rows: i32) {
        with_len(buf, b'E', |b| {
            put_cstr(b, portal);
            b.put_i32(max_rows);
        });
    }

    /// Close of a prepared statement (`kind` b'S') or a portal (b'P').
    pub fn close(buf: &mut BytesMut, kind: u8, name: &str) {
        with_len(buf, b'C', |b| {
            b.put_u8(kind);
            put_cstr(b, name);
        });
    }

    pub fn sync(buf: &mut BytesMut) {
        with_len(buf, b'S', |_| {});
    }

    pub fn flush(buf: &mut BytesMut) {
        with_len(buf, b'H', |_| {});
    }

    pub fn terminate(buf: &mut BytesMut) {
        with_len(buf, b'X', |_| {});
    }

    pub fn cancel(buf: &mut BytesMut, pid: i32, key: i32) {
        buf.put_i32(16);
        buf.put_u32(crate::frame::CANCEL_REQUEST);
        buf.put_i32(pid);
        buf.put_i32(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::split_frame;

    #[test]
    fn error_round_trip() {
        let mut b = BytesMut::new();
        error_response(
            &mut b,
            &ErrorFields::fatal("28P01", "password authentication failed for user \"x\"")
                .with_detail("d"),
        );
        let f = split_frame(&mut b, 1 << 20).unwrap().unwrap();
        assert_eq!(f.tag, b'E');
        let fields = error_fields(f.body());
        assert!(fields.contains(&(b'S', "FATAL".into())));
        assert!(fields.contains(&(b'C', "28P01".into())));
        assert!(fields.contains(&(b'D', "d".into())));
    }

    #[test]
    fn parse_messages() {
        let mut b = BytesMut::new();
        frontend::parse(&mut b, "s1", "SELECT $1", &[23]);
        let f = split_frame(&mut b, 1 << 20).unwrap().unwrap();
        assert_eq!(
            parse(f.body()).unwrap(),
            Parse {
                name: "s1",
                query: b"SELECT $1",
                param_types: 1,
            }
        );
        assert!(
            parse(b"s1\0SELECT 1\0\0\x05").is_err(),
            "count says 5, no types follow"
        );
        assert!(parse(b"s1\0SELECT").is_err());
        assert_eq!(query_text(b"SELECT 1\0").unwrap(), b"SELECT 1");
        // Not UTF-8 (a LATIN1 client's é): the server's to read.
        assert_eq!(
            query_text(b"SELECT 'caf\xe9'\0").unwrap(),
            b"SELECT 'caf\xe9'"
        );
        assert!(query_text(b"SELECT 1").is_err());
        assert!(query_text(b"SELECT 1\0junk").is_err());
        assert_eq!(bind_names(b"p\0s\0\0\0").unwrap(), ("p", "s"));
        // Bind: one text format code, two parameters (one NULL), results all binary.
        let b = bind(b"p\0s\0\0\x01\0\0\0\x02\0\0\0\x02hi\xff\xff\xff\xff\0\x01\0\x01").unwrap();
        assert_eq!(
            (b.portal, b.statement, b.params, b.result_formats),
            ("p", "s", 2, vec![1])
        );
        for bad in [
            &b"p\0s\0\0\0\0\x01\0\0\0\x05hi\0\0"[..], // a value longer than the message
            b"p\0s\0\0\0\0\0\0\x02\0\0",              // two result formats, none given
            b"p\0s\0\0\0\0\0\0\0junk",                // bytes after the formats
            b"p\0s\0\0\0\0\x01\xff\xff\xff\xfe\0\0",  // length -2
            b"p\0s\0",                                // no counts
        ] {
            assert!(bind(bad).is_err(), "{bad:?}");
        }
        assert_eq!(execute(b"p\0\0\0\0\x05").unwrap(), ("p", 5));
        assert!(execute(b"p\0\0\0").is_err());
        assert_eq!(target(b"Sname\0", "Describe").unwrap(), (b'S', "name"));
        assert!(target(b"Xname\0", "Describe").is_err());
        assert!(target(b"", "Close").is_err());
        assert_eq!(
            sasl_initial(b"SCRAM-SHA-256\0\0\0\0\x03abc").unwrap(),
            ("SCRAM-SHA-256", &b"abc"[..])
        );
        assert!(sasl_initial(b"SCRAM-SHA-256\0\0\0\0\x09abc").is_err());
        assert!(sasl_initial(b"SCRAM-SHA-256\0\xff\xff\xff\xffabc").is_err());
    }

    #[test]
    fn result_set() {
        let mut b = BytesMut::new();
        row_description(&mut b, &["a", "b"]);
        data_row(&mut b, &[Some("1"), None]);
        command_complete(&mut b, "SELECT 1");
        ready_for_query(&mut b, b'I');
        let tags: Vec<u8> = std::iter::from_fn(|| split_frame(&mut b, 1 << 20).unwrap())
            .map(|f| f.tag)
            .collect();
        assert_eq!(tags, b"TDCZ");
    }
}
