//! A client's text as the server reads it.
//!
//! Clients send SQL in their `client_encoding`; the server converts it to its own encoding
//! before its lexer sees a byte. pgwarden reads the text the client sent, so it must find the
//! same tokens the server will: the same quotes, backslashes, semicolons and comment marks.
//!
//! In most encodings that is the text's ASCII bytes, whatever the other bytes are: every byte
//! of a non-ASCII character has its high bit set (UTF-8, LATIN1…9, the WIN125x code pages,
//! KOI8, the EUC family, MULE_INTERNAL; JOHAB too, since the server refuses a JOHAB character
//! whose second byte is ASCII). There a character pgwarden cannot decode only has to stay a
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

use std::borrow::Cow;

/// How a session's texts are read: what [`server_text`] needs to know of its encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextEncoding {
    /// Every byte of a non-ASCII character has its high bit set, or the server does not
    /// convert (a `SQL_ASCII` server reads the bytes as they come).
    #[default]
    AsciiSafe,
    /// SJIS, SHIFT_JIS_2004: 0xA1–0xDF one byte (half-width kana), any other high byte the
    /// first of two.
    Sjis,
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
        if server_encoding.eq_ignore_ascii_case("SQL_ASCII") {
            return TextEncoding::AsciiSafe;
        }
        let name = client_encoding.to_ascii_uppercase();
        match name.as_str() {
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
    /// PostgreSQL's `mblen` for this encoding.
    fn char_len(self, b: u8, next: Option<u8>) -> usize {
        if b < 0x80 {
            return 1;
        }
        match self {
            TextEncoding::AsciiSafe => 1,
            TextEncoding::Sjis if (0xA1..=0xDF).contains(&b) => 1,
            TextEncoding::Sjis | TextEncoding::TwoByte => 2,
            TextEncoding::Gb18030 if next.is_some_and(|n| n.is_ascii_digit()) => 4,
            TextEncoding::Gb18030 => 2,
        }
    }
}

/// What stands for a character pgwarden does not decode: a non-ASCII character, as the
/// server's lexer sees every converted character that is not ASCII.
const STAND_IN: char = '\u{FFFD}';

/// `text` as the server will read it, for looking at: its ASCII tokens where the server finds
/// them, each other character as some non-ASCII character. Borrowed when `text` is valid UTF-8
/// and reads the same byte by byte (always in a UTF-8 session); the bytes sent on are the
/// client's own, never this.
pub fn server_text(text: &[u8], enc: TextEncoding) -> Cow<'_, str> {
    if enc == TextEncoding::AsciiSafe || text.is_ascii() {
        // (`from_utf8` first: `from_utf8_lossy` costs three times as much on the hot path.)
        return match std::str::from_utf8(text) {
            Ok(text) => Cow::Borrowed(text),
            // Invalid sequences become U+FFFD; an ASCII byte never joins one.
            Err(_) => String::from_utf8_lossy(text),
        };
    }
    let mut out = String::with_capacity(text.len() + text.len() / 2);
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if b < 0x80 {
            out.push(b as char);
            i += 1;
        } else {
            // A character cut short at the end: the server refuses the text.
            i += enc.char_len(b, text.get(i + 1).copied());
            out.push(STAND_IN);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_encodings_hide_ascii_bytes() {
        use TextEncoding::*;
        for (client, server, want) in [
            ("UTF8", "UTF8", AsciiSafe),
            ("LATIN1", "UTF8", AsciiSafe),
            ("EUC_JP", "UTF8", AsciiSafe),
            ("JOHAB", "UTF8", AsciiSafe),
            ("SJIS", "UTF8", Sjis),
            ("sjis", "UTF8", Sjis),
            ("WIN932", "UTF8", Sjis),
            ("SHIFT_JIS_2004", "EUC_JIS_2004", Sjis),
            ("BIG5", "UTF8", TwoByte),
            ("GBK", "UTF8", TwoByte),
            ("UHC", "EUC_KR", TwoByte),
            ("GB18030", "UTF8", Gb18030),
            // A SQL_ASCII server converts nothing: it reads the bytes as they come.
            ("SJIS", "SQL_ASCII", AsciiSafe),
        ] {
            assert_eq!(
                TextEncoding::of(client, server),
                want,
                "{client} on {server}"
            );
        }
    }

    #[test]
    fn characters_are_read_whole() {
        use TextEncoding::*;
        let cases: &[(&[u8], TextEncoding, &str)] = &[
            // UTF-8 text is looked at as it is.
            ("SELECT 'é'".as_bytes(), AsciiSafe, "SELECT 'é'"),
            // LATIN1 é: not UTF-8, still one non-ASCII character.
            (b"SELECT 'caf\xe9'", AsciiSafe, "SELECT 'caf\u{FFFD}'"),
            // SJIS ソ is 0x83 0x5C: no backslash to the server.
            (
                b"SELECT E'\x83\x5c'; DELETE FROM t; --'",
                Sjis,
                "SELECT E'\u{FFFD}'; DELETE FROM t; --'",
            ),
            // Read byte by byte (a UTF-8 or LATIN1 session), the backslash is one.
            (
                b"SELECT E'\x83\x5c'; x",
                AsciiSafe,
                "SELECT E'\u{FFFD}\\'; x",
            ),
            // Half-width kana are one byte: the backslash after ｱ (0xB1) is one.
            (b"E'\xb1\x5c'; x", Sjis, "E'\u{FFFD}\\'; x"),
            // BIG5 功 is 0xA5 0x5C; GBK 乗 0x81 0x5C; UHC 0x81 0x41 (a letter second).
            (b"E'\xa5\x5c'", TwoByte, "E'\u{FFFD}'"),
            (b"E'\x81\x5c'", TwoByte, "E'\u{FFFD}'"),
            (b"\x81A", TwoByte, "\u{FFFD}"),
            // GB18030: four bytes when the second is a digit, else two.
            (b"E'\x81\x30\x81\x30'", Gb18030, "E'\u{FFFD}'"),
            (b"E'\x81\x5c'", Gb18030, "E'\u{FFFD}'"),
            // A first byte at the very end (the server refuses the text).
            (b"SELECT \x83", Sjis, "SELECT \u{FFFD}"),
            (b"SELECT \x81\x30", Gb18030, "SELECT \u{FFFD}"),
        ];
        for (text, enc, want) in cases {
            assert_eq!(server_text(text, *enc), *want, "{text:?} as {enc:?}");
        }
    }

    #[test]
    fn valid_utf8_is_borrowed() {
        for enc in [TextEncoding::AsciiSafe, TextEncoding::Sjis] {
            assert!(matches!(server_text(b"SELECT 1", enc), Cow::Borrowed(_)));
        }
        assert!(matches!(
            server_text("SELECT 'ü'".as_bytes(), TextEncoding::AsciiSafe),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn any_bytes_are_read() {
        // Every byte at every place, in every reading: no panic, ASCII kept where it is read.
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
                TextEncoding::AsciiSafe,
                TextEncoding::Sjis,
                TextEncoding::TwoByte,
                TextEncoding::Gb18030,
            ] {
                let read = server_text(&text, enc);
                assert!(read.len() <= text.len() * 3, "{text:?}");
                if text.is_ascii() {
                    assert_eq!(read.as_bytes(), &text[..]);
                }
            }
        }
    }
}
