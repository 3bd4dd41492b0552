//! A client's text as the server reads it.
//!
//! Clients send SQL in their `client_encoding`; the server converts it to its own encoding
//! before its lexer sees a byte. pgwarden reads the text the client sent, so it must find the
//! same tokens the server will: the same quotes, backslashes, semicolons and comment marks.
//!
//! In most encodings that is the text's ASCII bytes, whatever the other bytes are: every byte
//! of a non-ASCII character has its high bit set (UTF-8, LATIN1…9, the WIN125x code pages,
//! KOI8, the EUC family, MULE_INTERNAL; JOHAB too, since the server refuses a JOHAB character
//! whose second byte is ASCII). There a character pgwarden does not decode only has to stay a
//! non-ASCII character, which is what the lexer (and libpg_query) makes a part of a name.
//!
//! Six client-only encodings put ASCII bytes inside characters: SJIS and SHIFT_JIS_2004,
//! BIG5, GBK and UHC (second byte 0x40–0x7E, or a letter), GB18030 (second and fourth bytes
//! digits, or 0x40–0x7E). There `ソ` is `0x83 0x5C`: read byte by byte, its second byte is a
//! backslash, and `SELECT E'ソ'; DELETE FROM t; --'` looks like one string to a reader that
//! does not know where the characters end. [`server_text`] walks such texts by PostgreSQL's
//! own rules for character lengths (`pg_sjis_mblen` and its siblings in `src/common/wchar.c`),
//! which are what the server's conversion goes by; a text those rules do not cover the server
//! refuses ("invalid byte sequence"), whatever pgwarden made of it.
//!
//! Two characters go the other way: converted from SHIFT_JIS_2004 to UTF-8, 0x81 0x5F becomes
//! `\` and 0x81 0xB0 becomes `~` (every one- and two-byte sequence of every client encoding
//! through every default conversion was checked; these are the only two that turn into ASCII).
//!
//! Bytes pgwarden does not decode stand in as U+0100 + the byte, one character per byte, so
//! that two different byte sequences never read alike. Conversions may still make two
//! different characters one (CP932's NEC and IBM duplicates): the only place where that
//! changes where the server's tokens end is a dollar quote's tag, which [`unsure_reading`]
//! reports.

use std::borrow::Cow;

/// How a session's texts are read: what [`server_text`] needs to know of its encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextEncoding {
    /// The server reads the bytes as they come: UTF-8 to a UTF-8 server, or anything to a
    /// `SQL_ASCII` server, which converts nothing.
    #[default]
    Unconverted,
    /// Converted by the server; every byte of a non-ASCII character has its high bit set.
    AsciiSafe,
    /// SJIS: 0xA1–0xDF one byte (half-width kana), any other high byte the first of two.
    Sjis,
    /// SHIFT_JIS_2004 converted to UTF-8: as SJIS, but two characters become ASCII.
    Sjis2004ToUtf8,
    /// BIG5, GBK, UHC: a high byte is the first of two.
    TwoByte,
    /// GB18030: a high byte followed by a digit is the first of four, else of two.
    Gb18030,
}

impl TextEncoding {
    /// The reading for a session whose server reports these `client_encoding` and
    /// `server_encoding` values (ParameterStatus; PostgreSQL reports canonical names, but
    /// case and the code-page aliases are accepted too).
    pub fn of(client_encoding: &str, server_encoding: &str) -> TextEncoding {
        let client = client_encoding.to_ascii_uppercase();
        let server = server_encoding.to_ascii_uppercase();
        let utf8 = |name: &str| matches!(name, "UTF8" | "UTF-8" | "UNICODE");
        if server == "SQL_ASCII" || (utf8(&client) && utf8(&server)) || client == server {
            return TextEncoding::Unconverted;
        }
        match client.as_str() {
            "SHIFT_JIS_2004" if utf8(&server) => TextEncoding::Sjis2004ToUtf8,
            "SJIS" | "SHIFTJIS" | "MSKANJI" | "WIN932" | "WINDOWS932" | "SHIFT_JIS_2004" => {
                TextEncoding::Sjis
            }
            "BIG5" | "WIN950" | "WINDOWS950" | "GBK" | "WIN936" | "WINDOWS936" | "UHC"
            | "WIN949" | "WINDOWS949" => TextEncoding::TwoByte,
            "GB18030" => TextEncoding::Gb18030,
            _ => TextEncoding::AsciiSafe,
        }
    }

    /// How many bytes the character starting with `b` (followed by `next`) takes, by
    /// PostgreSQL's `mblen` for this encoding (1 for what is read byte by byte).
    fn char_len(self, b: u8, next: Option<u8>) -> usize {
        if b < 0x80 {
            return 1;
        }
        match self {
            TextEncoding::Unconverted | TextEncoding::AsciiSafe => 1,
            TextEncoding::Sjis | TextEncoding::Sjis2004ToUtf8 if (0xA1..=0xDF).contains(&b) => 1,
            TextEncoding::Sjis | TextEncoding::Sjis2004ToUtf8 | TextEncoding::TwoByte => 2,
            TextEncoding::Gb18030 if next.is_some_and(|n| n.is_ascii_digit()) => 4,
            TextEncoding::Gb18030 => 2,
        }
    }
}

/// The stand-in for byte `b` of a character pgwarden does not decode: not ASCII, as the
/// server's lexer sees every converted character that is not, and one per byte value.
fn stand_in(b: u8) -> char {
    char::from_u32(0x100 + u32::from(b)).unwrap_or('\u{FFFD}')
}

/// Walks `text` as `server_text` reads it: for each character, how many of `text`'s bytes
/// it took and what stands for it.
fn walk(
    text: &[u8],
    enc: TextEncoding,
    mut each: impl FnMut(usize, &mut dyn Iterator<Item = char>),
) {
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if b < 0x80 {
            each(1, &mut std::iter::once(b as char));
            i += 1;
            continue;
        }
        // A character cut short at the end: the server refuses the text.
        let len = enc
            .char_len(b, text.get(i + 1).copied())
            .min(text.len() - i);
        let bytes = &text[i..i + len];
        match (enc, bytes) {
            (TextEncoding::Sjis2004ToUtf8, [0x81, 0x5F]) => each(len, &mut std::iter::once('\\')),
            (TextEncoding::Sjis2004ToUtf8, [0x81, 0xB0]) => each(len, &mut std::iter::once('~')),
            _ => each(len, &mut bytes.iter().map(|&b| stand_in(b))),
        }
        i += len;
    }
}

/// `text` as the server will read it, for looking at: its ASCII tokens where the server finds
/// them, each other character as non-ASCII characters (see the module's notes). Borrowed when
/// `text` is UTF-8 and its ASCII bytes are the server's (always in a UTF-8 session); the
/// bytes sent on are the client's own, never this (see [`raw_offset`]).
pub fn server_text(text: &[u8], enc: TextEncoding) -> Cow<'_, str> {
    if matches!(enc, TextEncoding::Unconverted | TextEncoding::AsciiSafe) || text.is_ascii() {
        if let Ok(text) = std::str::from_utf8(text) {
            return Cow::Borrowed(text);
        }
    }
    let mut out = String::with_capacity(text.len() * 2);
    walk(text, enc, |_, chars| out.extend(chars));
    Cow::Owned(out)
}

/// Where, in the client's `text`, the place `at` of its [`server_text`] reading is: for
/// sending on a part of what the client sent (the rest of a Query split at a transaction's
/// end). None when `at` falls inside a character's stand-ins.
pub fn raw_offset(text: &[u8], enc: TextEncoding, at: usize) -> Option<usize> {
    if let Cow::Borrowed(_) = server_text(text, enc) {
        return (at <= text.len()).then_some(at);
    }
    let (mut raw, mut read) = (0usize, 0usize);
    let mut found = (at == 0).then_some(0);
    walk(text, enc, |len, chars| {
        raw += len;
        read += chars.map(char::len_utf8).sum::<usize>();
        if read == at && found.is_none() {
            found = Some(raw);
        }
    });
    found
}

/// Whether the server may end a token where a reading of `sql` (by [`server_text`] for a
/// session in `enc`) does not: a dollar quote's tag holds a character that is not ASCII, and
/// the server converts the text (two different characters may become one, and two tags that
/// differ here match there). Such a text cannot be vouched for.
pub fn unsure_reading(sql: &str, enc: TextEncoding) -> bool {
    if enc == TextEncoding::Unconverted || sql.is_ascii() {
        return false;
    }
    let b = sql.as_bytes();
    memchr::memchr_iter(b'$', b).any(|i| {
        let tag = &b[i + 1..];
        let end = tag
            .iter()
            .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_' || *c >= 0x80))
            .unwrap_or(tag.len());
        tag.get(end) == Some(&b'$') && !tag[..end].is_ascii()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_encodings_hide_ascii_bytes() {
        use TextEncoding::*;
        for (client, server, want) in [
            ("UTF8", "UTF8", Unconverted),
            ("UNICODE", "UTF8", Unconverted),
            ("LATIN1", "LATIN1", Unconverted),
            ("LATIN1", "UTF8", AsciiSafe),
            ("UTF8", "EUC_JP", AsciiSafe),
            ("EUC_JP", "UTF8", AsciiSafe),
            ("JOHAB", "UTF8", AsciiSafe),
            ("SJIS", "UTF8", Sjis),
            ("sjis", "UTF8", Sjis),
            ("WIN932", "UTF8", Sjis),
            ("SHIFT_JIS_2004", "UTF8", Sjis2004ToUtf8),
            ("SHIFT_JIS_2004", "EUC_JIS_2004", Sjis),
            ("BIG5", "UTF8", TwoByte),
            ("GBK", "UTF8", TwoByte),
            ("UHC", "EUC_KR", TwoByte),
            ("GB18030", "UTF8", Gb18030),
            // A SQL_ASCII server converts nothing: it reads the bytes as they come.
            ("SJIS", "SQL_ASCII", Unconverted),
            ("LATIN1", "SQL_ASCII", Unconverted),
        ] {
            assert_eq!(
                TextEncoding::of(client, server),
                want,
                "{client} on {server}"
            );
        }
    }

    /// The reading with each stand-in shown as `#`.
    fn shown(text: &[u8], enc: TextEncoding) -> String {
        server_text(text, enc)
            .chars()
            .map(|c| {
                if ('\u{100}'..='\u{1FF}').contains(&c) {
                    '#'
                } else {
                    c
                }
            })
            .collect()
    }

    #[test]
    fn characters_are_read_whole() {
        use TextEncoding::*;
        let cases: &[(&[u8], TextEncoding, &str)] = &[
            // UTF-8 text is looked at as it is.
            ("SELECT 'é'".as_bytes(), Unconverted, "SELECT 'é'"),
            ("SELECT 'é'".as_bytes(), AsciiSafe, "SELECT 'é'"),
            // (In SJIS 0xC3 and 0xA9 are two half-width kana.)
            ("SELECT 'é'".as_bytes(), Sjis, "SELECT '##'"),
            // LATIN1 é: not UTF-8, one stand-in for its one byte.
            (b"SELECT 'caf\xe9'", AsciiSafe, "SELECT 'caf#'"),
            (b"SELECT 'caf\xe9'", Unconverted, "SELECT 'caf#'"),
            // SJIS ソ is 0x83 0x5C: no backslash to the server.
            (
                b"SELECT E'\x83\x5c'; DELETE FROM t; --'",
                Sjis,
                "SELECT E'##'; DELETE FROM t; --'",
            ),
            // Read byte by byte (a UTF-8 or LATIN1 session), the backslash is one.
            (b"SELECT E'\x83\x5c'; x", AsciiSafe, "SELECT E'#\\'; x"),
            // Half-width kana are one byte: the backslash after ｱ (0xB1) is one.
            (b"E'\xb1\x5c'; x", Sjis, "E'#\\'; x"),
            // BIG5 功 is 0xA5 0x5C; GBK 0x81 0x5C; UHC 0x81 0x41 (a letter second).
            (b"E'\xa5\x5c'", TwoByte, "E'##'"),
            (b"E'\x81\x5c'", TwoByte, "E'##'"),
            (b"\x81A", TwoByte, "##"),
            // GB18030: four bytes when the second is a digit, else two.
            (b"E'\x81\x30\x81\x30'", Gb18030, "E'####'"),
            (b"E'\x81\x5c'", Gb18030, "E'##'"),
            // SHIFT_JIS_2004 to UTF-8: 0x81 0x5F is a backslash, 0x81 0xB0 a tilde.
            (
                b"E'\x81\x5f\\', x; SET a.b = 1; --'",
                Sjis2004ToUtf8,
                "E'\\\\', x; SET a.b = 1; --'",
            ),
            (b"\x81\xb0", Sjis2004ToUtf8, "~"),
            (b"E'\x81\x5f'", Sjis, "E'##'"),
            // A first byte at the very end (the server refuses the text).
            (b"SELECT \x83", Sjis, "SELECT #"),
            (b"SELECT \x81\x30", Gb18030, "SELECT ##"),
        ];
        for (text, enc, want) in cases {
            assert_eq!(shown(text, *enc), *want, "{text:?} as {enc:?}");
        }
        // Different bytes never read alike.
        assert_ne!(
            server_text(b"\xe9", AsciiSafe),
            server_text(b"\xe8", AsciiSafe)
        );
    }

    #[test]
    fn utf8_read_as_sent_is_borrowed() {
        for enc in [
            TextEncoding::Unconverted,
            TextEncoding::AsciiSafe,
            TextEncoding::Sjis,
        ] {
            assert!(matches!(server_text(b"SELECT 1", enc), Cow::Borrowed(_)));
        }
        assert!(matches!(
            server_text("SELECT 'ü'".as_bytes(), TextEncoding::Unconverted),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn places_in_the_reading_are_found_in_the_text() {
        use TextEncoding::*;
        let text = b"SELECT E'\x83\x5c'; INSERT INTO t VALUES ('\xb1'); COMMIT; SELECT 1";
        for enc in [Sjis, AsciiSafe, Unconverted, TwoByte] {
            let read = server_text(text, enc);
            // Each `;` of the reading is the same `;` of the text.
            for (at, _) in read.match_indices(';') {
                let raw = raw_offset(text, enc, at).unwrap();
                assert_eq!(text[raw], b';', "{enc:?} at {at}");
                assert_eq!(
                    &read[at..],
                    &*server_text(&text[raw..], enc),
                    "{enc:?} at {at}"
                );
            }
            assert_eq!(raw_offset(text, enc, read.len()), Some(text.len()));
            assert_eq!(raw_offset(text, enc, 0), Some(0));
        }
        // Inside a character's stand-ins.
        assert_eq!(raw_offset(b"\x83\x5c", Sjis, 2), None);
    }

    #[test]
    fn a_converted_dollar_tag_is_unsure() {
        use TextEncoding::*;
        for (text, enc, want) in [
            (
                &b"SELECT $\xe9$ $\xe8$, $\xe9$; SET a.b = 1; -- $\xe8$"[..],
                AsciiSafe,
                true,
            ),
            (b"SELECT $\x88\x9f$x$\x88\xa0$", Sjis, true),
            (b"SELECT $a$ caf\xe9 $a$", AsciiSafe, false),
            (b"SELECT $a\xe9 $", AsciiSafe, false),
            (b"SELECT 1", Sjis, false),
            ("SELECT $é$ x $é$".as_bytes(), Unconverted, false),
            ("SELECT $é$ x $é$".as_bytes(), AsciiSafe, true),
        ] {
            let read = server_text(text, enc);
            assert_eq!(unsure_reading(&read, enc), want, "{text:?} as {enc:?}");
        }
    }

    #[test]
    fn any_bytes_are_read() {
        // Every byte at every place, in every reading: no panic, ASCII kept where it is read,
        // and the reading's end is the text's.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            let len = (state % 12) as usize;
            let mut text = Vec::with_capacity(len);
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push((state >> 24) as u8);
            }
            for enc in [
                TextEncoding::Unconverted,
                TextEncoding::AsciiSafe,
                TextEncoding::Sjis,
                TextEncoding::Sjis2004ToUtf8,
                TextEncoding::TwoByte,
                TextEncoding::Gb18030,
            ] {
                let read = server_text(&text, enc);
                assert!(read.len() <= text.len() * 2, "{text:?}");
                if text.is_ascii() {
                    assert_eq!(read.as_bytes(), &text[..]);
                }
                assert_eq!(raw_offset(&text, enc, read.len()), Some(text.len()));
                let _ = unsure_reading(&read, enc);
            }
        }
    }
}
