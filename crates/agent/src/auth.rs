//! Request signing: `Authorization: PGWARDEN-HMAC ts=<unix seconds>, sig=<hex>` with
//! `sig = HMAC-SHA256(secret, "<ts>\n<METHOD>\n<path and query>\n<hex sha256 of the body>")`.
//!
//! A shared secret rather than TLS client certificates: the agent and the warden are set up
//! by the same operator, one file is easy to distribute, and the signature binds the method,
//! the path and the body, so a captured request cannot be turned into another one. The
//! timestamp bounds replays to the clock-skew window.

use crate::api::{AUTH_SCHEME, MAX_CLOCK_SKEW_SECS};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

/// The shortest secret accepted: shorter ones can be guessed.
pub const MIN_SECRET_LEN: usize = 16;

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Bytes of a hex string (either case); `None` if it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() & 1 != 0 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

fn mac(secret: &[u8], ts: u64, method: &str, path: &str, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; new_from_slice cannot fail for it, but stay panic-free.
    let mut m = match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => <HmacSha256 as Mac>::new(&Default::default()),
    };
    let body_hash = hex(&Sha256::digest(body));
    m.update(format!("{ts}\n{method}\n{path}\n{body_hash}").as_bytes());
    m
}

/// The hex signature of a request.
pub fn sign(secret: &[u8], ts: u64, method: &str, path: &str, body: &[u8]) -> String {
    hex(&mac(secret, ts, method, path, body).finalize().into_bytes())
}

/// The value of the `Authorization` header for a request.
pub fn authorization(secret: &[u8], ts: u64, method: &str, path: &str, body: &[u8]) -> String {
    format!(
        "{AUTH_SCHEME} ts={ts}, sig={}",
        sign(secret, ts, method, path, body)
    )
}

/// The seconds since the Unix epoch (0 if the clock is before it).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checks a request's `Authorization` header; the error says why it is refused (for the log
/// and the 401 answer — it never contains the secret or the expected signature).
pub fn verify(
    secret: &[u8],
    header: Option<&str>,
    method: &str,
    path: &str,
    body: &[u8],
    now: u64,
) -> Result<(), String> {
    let header = header.ok_or("no Authorization header")?;
    let rest = header
        .strip_prefix(AUTH_SCHEME)
        .filter(|r| r.starts_with(' '))
        .ok_or_else(|| format!("the Authorization header is not of the {AUTH_SCHEME} scheme"))?;
    let mut ts = None;
    let mut sig = None;
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("ts", v)) => ts = Some(v.trim()),
            Some(("sig", v)) => sig = Some(v.trim()),
            _ => {}
        }
    }
    let ts: u64 = ts
        .ok_or("the Authorization header has no ts=")?
        .parse()
        .map_err(|_| "the Authorization header's ts= is not a number of seconds")?;
    let sig = unhex(sig.ok_or("the Authorization header has no sig=")?)
        .ok_or("the Authorization header's sig= is not hex")?;
    if ts.abs_diff(now) > MAX_CLOCK_SKEW_SECS {
        return Err(format!(
            "the request's timestamp is {} s away from the agent's clock (at most {MAX_CLOCK_SKEW_SECS} s allowed): a replayed request, or the clocks differ",
            ts.abs_diff(now)
        ));
    }
    // verify_slice compares in constant time.
    mac(secret, ts, method, path, body)
        .verify_slice(&sig)
        .map_err(|_| {
            "wrong signature (the warden and the agent do not share the same secret file?)"
                .to_string()
        })
}

/// Reads the shared secret: the file's content with surrounding whitespace trimmed. Refuses a
/// file group or others can access (the secret lets anyone stop or rebuild the database), a
/// missing file, and a secret shorter than [`MIN_SECRET_LEN`] bytes.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "the secret file {} does not exist; create it with, for example, `openssl rand -hex 32 > {} && chmod 600 {}`",
            path.display(),
            path.display(),
            path.display()
        ),
        _ => format!("the secret file {} cannot be read: {e}", path.display()),
    })?;
    if !meta.is_file() {
        return Err(format!(
            "the secret file {} is not a regular file",
            path.display()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "the secret file {} is open to group or others (mode {mode:04o}); it must be readable by its owner only: chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| format!("the secret file {} cannot be read: {e}", path.display()))?;
    let secret = bytes.trim_ascii();
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "the secret in {} is {} bytes long; at least {MIN_SECRET_LEN} are needed (`openssl rand -hex 32` makes a good one)",
            path.display(),
            secret.len()
        ));
    }
    Ok(secret.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex(&[0, 1, 0xab, 0xff]), "0001abff");
        assert_eq!(unhex("0001ABff"), Some(vec![0, 1, 0xab, 0xff]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("é1"), None);
    }

    #[test]
    fn known_signature() {
        // HMAC-SHA256("key", "1\nGET\n/v1/status\n" + sha256("")), computed independently
        // (python3: hmac.new(b"key", msg, hashlib.sha256).hexdigest()).
        assert_eq!(
            sign(b"key", 1, "GET", "/v1/status", b""),
            "9d4d373398fd8b191fefb4029ca86bf4462e7f961bb4bc3f1279071e11eaf415"
        );
    }

    #[test]
    fn a_signed_request_passes() {
        let h = authorization(SECRET, 1000, "POST", "/v1/stop", b"{\"mode\":\"fast\"}");
        assert!(h.starts_with("PGWARDEN-HMAC ts=1000, sig="));
        verify(
            SECRET,
            Some(&h),
            "POST",
            "/v1/stop",
            b"{\"mode\":\"fast\"}",
            1000,
        )
        .unwrap();
        // Within the allowed skew, either way.
        verify(
            SECRET,
            Some(&h),
            "POST",
            "/v1/stop",
            b"{\"mode\":\"fast\"}",
            1300,
        )
        .unwrap();
        verify(
            SECRET,
            Some(&h),
            "POST",
            "/v1/stop",
            b"{\"mode\":\"fast\"}",
            700,
        )
        .unwrap();
    }

    #[test]
    fn anything_changed_is_refused() {
        let body = b"{\"mode\":\"fast\"}";
        let h = authorization(SECRET, 1000, "POST", "/v1/stop", body);
        let wrong = |r: Result<(), String>| r.unwrap_err();
        assert!(
            wrong(verify(SECRET, Some(&h), "POST", "/v1/start", body, 1000))
                .contains("wrong signature")
        );
        assert!(
            wrong(verify(SECRET, Some(&h), "GET", "/v1/stop", body, 1000))
                .contains("wrong signature")
        );
        assert!(
            wrong(verify(SECRET, Some(&h), "POST", "/v1/stop", b"{}", 1000))
                .contains("wrong signature")
        );
        assert!(wrong(verify(
            b"another secret, as long",
            Some(&h),
            "POST",
            "/v1/stop",
            body,
            1000
        ))
        .contains("wrong signature"));
    }

    #[test]
    fn stale_or_future_timestamps_are_refused() {
        let h = authorization(SECRET, 1000, "GET", "/v1/status", b"");
        let e = verify(SECRET, Some(&h), "GET", "/v1/status", b"", 1301).unwrap_err();
        assert!(e.contains("301 s away"), "{e}");
        let e = verify(SECRET, Some(&h), "GET", "/v1/status", b"", 699).unwrap_err();
        assert!(e.contains("301 s away"), "{e}");
    }

    #[test]
    fn malformed_headers_are_refused_with_a_reason() {
        let v = |h: Option<&str>| verify(SECRET, h, "GET", "/v1/status", b"", 1000).unwrap_err();
        assert_eq!(v(None), "no Authorization header");
        assert!(v(Some("Bearer abc")).contains("not of the PGWARDEN-HMAC scheme"));
        assert!(v(Some("PGWARDEN-HMACts=1")).contains("not of the PGWARDEN-HMAC scheme"));
        assert!(v(Some("PGWARDEN-HMAC sig=00")).contains("no ts="));
        assert!(v(Some("PGWARDEN-HMAC ts=x, sig=00")).contains("not a number"));
        assert!(v(Some("PGWARDEN-HMAC ts=1000")).contains("no sig="));
        assert!(v(Some("PGWARDEN-HMAC ts=1000, sig=xyz")).contains("not hex"));
        assert!(v(Some("PGWARDEN-HMAC ts=1000, sig=00")).contains("wrong signature"));
    }

    fn secret_file(dir: &Path, text: &str, mode: u32) -> std::path::PathBuf {
        let p = dir.join("secret");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn secret_files() {
        let d = tempfile::tempdir().unwrap();
        let p = secret_file(d.path(), "  0123456789abcdef0123\n", 0o600);
        assert_eq!(read_secret(&p).unwrap(), b"0123456789abcdef0123");

        let p = secret_file(d.path(), "0123456789abcdef0123\n", 0o640);
        let e = read_secret(&p).unwrap_err();
        assert!(e.contains("mode 0640"), "{e}");
        assert!(e.contains(&p.display().to_string()), "{e}");

        let p = secret_file(d.path(), "0123456789abcdef0123\n", 0o604);
        assert!(read_secret(&p).unwrap_err().contains("mode 0604"));

        let p = secret_file(d.path(), "short secret   \n\n", 0o400);
        let e = read_secret(&p).unwrap_err();
        assert!(e.contains("is 12 bytes long"), "{e}");

        let e = read_secret(&d.path().join("missing")).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        assert!(e.contains("missing"), "{e}");

        let e = read_secret(d.path()).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
