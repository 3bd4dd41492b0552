//! PostgreSQL write-ahead-log positions (`pg_lsn`), written `XXXXXXXX/XXXXXXXX`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A WAL position. Ordered; subtracting two gives the distance in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid LSN {0:?}: expected two hexadecimal numbers separated by '/', such as 0/3000060")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl Lsn {
    /// Bytes from `self` forward to `ahead`; 0 when `self` is already at or past it.
    pub fn bytes_behind(self, ahead: Lsn) -> u64 {
        ahead.0.saturating_sub(self.0)
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        for (text, value) in [
            ("0/0", 0u64),
            ("0/3000060", 0x300_0060),
            ("1/0", 1 << 32),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
            ("a/b", (0xa << 32) | 0xb),
        ] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.0, value, "{text}");
            assert_eq!(lsn.to_string(), text.to_uppercase());
        }
    }

    #[test]
    fn rejects_garbage() {
        for text in [
            "",
            "0",
            "/0",
            "0/",
            "x/1",
            "1/2/3",
            "123456789/0",
            "-1/0",
            " 0/1",
        ] {
            assert!(text.parse::<Lsn>().is_err(), "{text:?} should not parse");
        }
    }

    #[test]
    fn distance() {
        let a: Lsn = "0/100".parse().unwrap();
        let b: Lsn = "0/180".parse().unwrap();
        assert_eq!(a.bytes_behind(b), 0x80);
        assert_eq!(b.bytes_behind(a), 0);
    }
}
