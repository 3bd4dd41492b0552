//! Client authentication, server side: md5 and SCRAM-SHA-256 (RFC 5802 / 7677, as PostgreSQL
//! implements it, with SCRAM-SHA-256-PLUS's `tls-server-end-point` channel binding over TLS),
//! and the secrets of pgpool's `pool_passwd` file.
//!
//! An unknown user goes through the same exchange as a known one (with a mock secret derived
//! from the user name) and fails the same way, so the answer never tells whether a user exists.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};
use rand::RngCore;
use sha2::Sha256;
use std::collections::HashMap;

type HmacSha256 = Hmac<Sha256>;

pub const SCRAM_ITERATIONS: u32 = 4096;

/// A user's stored secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A plain-text password (pool_passwd `TEXT…` or bare). Works for md5 and SCRAM.
    Plain {
        password: String,
        scram: ScramSecret,
    },
    /// `md5` + hex(md5(password ‖ user)): works for md5 only.
    Md5(String),
    /// `SCRAM-SHA-256$…`: works for SCRAM only.
    Scram(ScramSecret),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Secret::Plain { .. } => "Secret::Plain(***)",
            Secret::Md5(_) => "Secret::Md5(***)",
            Secret::Scram(_) => "Secret::Scram(***)",
        })
    }
}

impl Secret {
    pub fn plain(password: &str) -> Secret {
        let mut salt = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        Secret::plain_salted(password, &salt)
    }

    /// A plain-text password whose SCRAM secret has the given salt (`mock_salt`: the salt an
    /// unknown user of the same name would be shown, so that the salt tells nothing).
    pub fn plain_salted(password: &str, salt: &[u8]) -> Secret {
        Secret::Plain {
            password: password.to_string(),
            scram: ScramSecret::from_password(password, salt, SCRAM_ITERATIONS),
        }
    }

    /// The SCRAM secret, if this secret can serve SCRAM.
    pub fn scram(&self) -> Option<&ScramSecret> {
        match self {
            Secret::Plain { scram, .. } | Secret::Scram(scram) => Some(scram),
            Secret::Md5(_) => None,
        }
    }

    /// The md5 hash (`md5…`) for `user`, if this secret can serve md5.
    pub fn md5_hash(&self, user: &str) -> Option<String> {
        match self {
            Secret::Plain { password, .. } => Some(md5_password(user, password)),
            Secret::Md5(h) => Some(h.clone()),
            Secret::Scram(_) => None,
        }
    }

    /// Parses one secret as PostgreSQL and pgpool store them; `key`, pgpool's key for AES
    /// entries (`pg_enc`), if there is one.
    pub fn parse(text: &str, key: Option<&[u8]>) -> Result<Secret, String> {
        if let Some(rest) = text.strip_prefix("SCRAM-SHA-256$") {
            return ScramSecret::parse(rest)
                .map(Secret::Scram)
                .ok_or_else(|| "a SCRAM-SHA-256 secret must look like SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>".to_string());
        }
        if let Some(hex) = text.strip_prefix("md5") {
            if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(Secret::Md5(text.to_ascii_lowercase()));
            }
        }
        if let Some(encrypted) = text.strip_prefix("AES") {
            let key = key.ok_or_else(|| "an AES-encrypted entry (pg_enc) needs pgpool's key: set proxy.pool_key to the key file pg_enc used (its -k; ~/.pgpoolkey by default), or store an md5…, SCRAM-SHA-256$… or plain-text (TEXT…) entry instead".to_string())?;
            let password = aes_decrypt(encrypted, key)?;
            if password.is_empty() {
                return Err("the password is empty".into());
            }
            return Ok(Secret::plain(&password));
        }
        let password = text.strip_prefix("TEXT").unwrap_or(text);
        if password.is_empty() {
            return Err("the password is empty".into());
        }
        Ok(Secret::plain(password))
    }
}

/// A pool_passwd AES entry (after `AES`): base64 of the password encrypted with AES-256-CBC
/// (PKCS#7 padding), key and IV made from pgpool's key as OpenSSL's `EVP_BytesToKey` makes
/// them with SHA-1, no salt and one round (pgpool's `aes_get_key`).
pub fn aes_decrypt(encrypted: &str, key: &[u8]) -> Result<String, String> {
    use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
    use sha1::Digest as _;
    let data = B64
        .decode(encrypted.trim())
        .map_err(|_| "the AES entry is not base64".to_string())?;
    // D1 = SHA1(key), Di = SHA1(Di-1 ‖ key): 32 bytes of key, then 16 of IV.
    let mut material = Vec::with_capacity(60);
    let mut last: Vec<u8> = Vec::new();
    while material.len() < 48 {
        let mut h = sha1::Sha1::new();
        h.update(&last);
        h.update(key);
        last = h.finalize().to_vec();
        material.extend_from_slice(&last);
    }
    let decryptor =
        cbc::Decryptor::<aes::Aes256>::new_from_slices(&material[..32], &material[32..48])
            .map_err(|_| "AES key".to_string())?;
    let plain = decryptor
        .decrypt_padded_vec_mut::<Pkcs7>(&data)
        .map_err(|_| {
            "the AES entry does not decrypt with this key (is it the key pg_enc used?)".to_string()
        })?;
    String::from_utf8(plain).map_err(|_| {
        "the AES entry does not decrypt to text with this key (is it the key pg_enc used?)"
            .to_string()
    })
}

/// Parses a pool_passwd file: `user:secret` per line, `#` comments; `key`, pgpool's key for
/// AES entries, if there is one.
pub fn parse_pool_passwd(
    text: &str,
    key: Option<&[u8]>,
) -> Result<HashMap<String, Secret>, (usize, String)> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (user, secret) = line
            .split_once(':')
            .ok_or((i + 1, "expected user:secret".to_string()))?;
        if user.is_empty() {
            return Err((i + 1, "the user name is empty".into()));
        }
        let secret = Secret::parse(secret, key).map_err(|e| (i + 1, e))?;
        out.insert(user.to_string(), secret);
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `md5` + hex(md5(password ‖ user)), what PostgreSQL stores for md5.
pub fn md5_password(user: &str, password: &str) -> String {
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(user.as_bytes());
    format!("md5{}", hex(&h.finalize()))
}

/// The answer to AuthenticationMD5Password for a stored `md5…` hash and a salt.
pub fn md5_response(stored: &str, salt: [u8; 4]) -> String {
    let mut h = Md5::new();
    h.update(stored.trim_start_matches("md5").as_bytes());
    h.update(salt);
    format!("md5{}", hex(&h.finalize()))
}

/// Checks a client's md5 answer. `None` (unknown user, or a secret md5 cannot use) fails.
pub fn md5_check(stored: Option<&str>, salt: [u8; 4], response: &str) -> bool {
    match stored {
        Some(s) => constant_eq(md5_response(s, salt).as_bytes(), response.as_bytes()),
        None => false,
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A SCRAM-SHA-256 verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(data);
    m.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    sha2::Digest::update(&mut h, data);
    h.finalize().into()
}

impl ScramSecret {
    /// The secret of a plain-text password, SASLprep'd first as libpq does before it hashes
    /// one (a password SASLprep refuses is used as it is, as PostgreSQL's `pg_saslprep` does).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramSecret {
        let prepped =
            stringprep::saslprep(password).unwrap_or(std::borrow::Cow::Borrowed(password));
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(prepped.as_bytes(), salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// `<iterations>:<salt>$<StoredKey>:<ServerKey>` (after the `SCRAM-SHA-256$` prefix).
    fn parse(s: &str) -> Option<ScramSecret> {
        let (head, keys) = s.split_once('$')?;
        let (iter, salt) = head.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let iterations: u32 = iter.parse().ok().filter(|&i| i > 0)?;
        let salt = B64.decode(salt).ok()?;
        let stored_key: [u8; 32] = B64.decode(stored).ok()?.try_into().ok()?;
        let server_key: [u8; 32] = B64.decode(server).ok()?.try_into().ok()?;
        Some(ScramSecret {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    pub fn to_pg_string(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }

    /// A deterministic fake secret for a user who does not exist, so that the exchange looks
    /// the same (PostgreSQL's `scram_mock_salt`).
    pub fn mock(user: &str, nonce_key: &[u8]) -> ScramSecret {
        ScramSecret {
            iterations: SCRAM_ITERATIONS,
            salt: mock_salt(user, nonce_key).to_vec(),
            stored_key: hmac(nonce_key, b"stored"),
            server_key: hmac(nonce_key, b"server"),
        }
    }
}

/// The salt shown to `user` when pgwarden makes the SCRAM secret (an unknown user's, or one
/// from a plain-text password): one per user name and `nonce_key`, whichever database the
/// client asks for, as PostgreSQL keeps one salt per role.
pub fn mock_salt(user: &str, nonce_key: &[u8]) -> [u8; 16] {
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&hmac(nonce_key, user.as_bytes())[..16]);
    salt
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// The client sent something SCRAM does not allow: a protocol violation.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client supports channel binding but thinks the server does not (`y`), where
    /// SCRAM-SHA-256-PLUS was offered: someone between them may have struck it from the list.
    #[error("SCRAM channel binding negotiation error")]
    BindingNegotiation,
    /// A channel binding type other than `tls-server-end-point`.
    #[error("unsupported SCRAM channel-binding type \"{0}\"")]
    UnsupportedBindingType(String),
    /// The client's channel binding data is not this connection's: its TLS ends elsewhere
    /// (a man in the middle) — the caller answers 28000, as PostgreSQL does.
    #[error("SCRAM channel binding check failed")]
    BindingCheckFailed,
    /// An authorization identity (`a=…` in the GS2 header), which PostgreSQL refuses too.
    #[error("client uses authorization identity, but it is not supported")]
    AuthorizationIdentity,
    /// Wrong password (or unknown user): the caller answers 28P01.
    #[error("password authentication failed")]
    WrongPassword,
}

/// Channel binding in one SCRAM exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding<'a> {
    /// Not offered (no TLS, or a certificate with no end-point hash): SCRAM-SHA-256 only.
    NotOffered,
    /// SCRAM-SHA-256-PLUS was offered, and the client chose SCRAM-SHA-256.
    Declined,
    /// The client chose SCRAM-SHA-256-PLUS: its `tls-server-end-point` data must be this.
    Chosen(&'a [u8]),
}

/// The server side of one SCRAM-SHA-256 exchange.
pub struct ScramServer {
    secret: ScramSecret,
    /// False for a mock exchange (unknown user): it always fails at the end.
    real: bool,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    /// What the client-final-message's `c=` must hold: the GS2 header and, with channel
    /// binding, the binding data.
    cbind_input: Vec<u8>,
    binding: bool,
}

impl ScramServer {
    /// Takes the client-first-message; returns the server-first-message to send.
    /// `secret` is `None` for an unknown user (a mock exchange that fails at the end).
    pub fn start(
        secret: Option<&ScramSecret>,
        user: &str,
        mock_key: &[u8],
        client_first: &[u8],
        binding: Binding<'_>,
    ) -> Result<(ScramServer, String), ScramError> {
        let text =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header: "n,," (no channel binding), "y,," (the client could bind, but thinks
        // the server cannot) or "p=<type>,," (channel binding), as PostgreSQL checks them.
        let (cb, rest) = text
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        let data = match (cb, binding) {
            ("n", Binding::Chosen(_)) | ("y", Binding::Chosen(_)) => {
                return Err(ScramError::Malformed(
                    "the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data",
                ))
            }
            ("y", Binding::Declined) => return Err(ScramError::BindingNegotiation),
            ("n" | "y", _) => None,
            (c, Binding::Chosen(data)) if c.starts_with("p=") => match &c[2..] {
                "tls-server-end-point" => Some(data),
                other => return Err(ScramError::UnsupportedBindingType(other.to_string())),
            },
            (c, _) if c.starts_with("p=") => {
                return Err(ScramError::Malformed(
                    "the client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data",
                ))
            }
            _ => return Err(ScramError::Malformed("bad channel-binding flag")),
        };
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header end"))?;
        if authzid.starts_with("a=") {
            return Err(ScramError::AuthorizationIdentity);
        }
        if !authzid.is_empty() {
            return Err(ScramError::Malformed("bad authorization identity"));
        }
        let mut cbind_input = format!("{cb},{authzid},").into_bytes();
        cbind_input.extend_from_slice(data.unwrap_or_default());
        let mut client_nonce = None;
        for attr in bare.split(',') {
            if let Some(n) = attr.strip_prefix("r=") {
                client_nonce = Some(n);
            } else if attr.starts_with("m=") {
                return Err(ScramError::Malformed(
                    "mandatory extensions are not supported",
                ));
            }
        }
        if !bare.starts_with("n=") {
            return Err(ScramError::Malformed("the first attribute must be n="));
        }
        let client_nonce = client_nonce
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b','))
            .ok_or(ScramError::Malformed("missing or bad client nonce"))?;
        let mut raw = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut raw);
        let nonce = format!("{client_nonce}{}", B64.encode(raw));
        let (secret, real) = match secret {
            Some(s) => (s.clone(), true),
            None => (ScramSecret::mock(user, mock_key), false),
        };
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&secret.salt),
            secret.iterations
        );
        Ok((
            ScramServer {
                secret,
                real,
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                nonce,
                cbind_input,
                binding: data.is_some(),
            },
            server_first,
        ))
    }

    /// Takes the client-final-message; returns the server-final-message on success.
    pub fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
        let text =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut parts = without_proof.split(',');
        let cb = parts
            .next()
            .and_then(|c| c.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel binding attribute"))?;
        let nonce = parts
            .next()
            .and_then(|r| r.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        if B64.decode(cb).ok().as_deref() != Some(&self.cbind_input[..]) {
            return Err(if self.binding {
                ScramError::BindingCheckFailed
            } else {
                ScramError::Malformed("channel binding does not match the GS2 header")
            });
        }
        if nonce != self.nonce {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("bad proof"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ client_signature[i];
        }
        if !self.real || !constant_eq(&sha256(&client_key), &self.secret.stored_key) {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal SCRAM client, to drive the server in tests: its final message (with
    /// `cbind_input` in `c=`) and the server signature it expects.
    fn client_final_bound(
        password: &str,
        client_first_bare: &str,
        server_first: &str,
        cbind_input: &[u8],
    ) -> (String, [u8; 32]) {
        let mut salt = None;
        let mut iter = None;
        let mut nonce = None;
        for a in server_first.split(',') {
            if let Some(s) = a.strip_prefix("s=") {
                salt = Some(B64.decode(s).unwrap());
            } else if let Some(i) = a.strip_prefix("i=") {
                iter = Some(i.parse::<u32>().unwrap());
            } else if let Some(r) = a.strip_prefix("r=") {
                nonce = Some(r.to_string());
            }
        }
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(
            password.as_bytes(),
            &salt.unwrap(),
            iter.unwrap(),
            &mut salted,
        );
        let client_key = hmac(&salted, b"Client Key");
        let stored = sha256(&client_key);
        let without_proof = format!("c={},r={}", B64.encode(cbind_input), nonce.unwrap());
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let sig = hmac(&stored, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        let server_key = hmac(&salted, b"Server Key");
        (
            format!("{without_proof},p={}", B64.encode(proof)),
            hmac(&server_key, auth.as_bytes()),
        )
    }

    fn client_final(
        password: &str,
        client_first_bare: &str,
        server_first: &str,
    ) -> (String, [u8; 32]) {
        client_final_bound(password, client_first_bare, server_first, b"n,,")
    }

    fn exchange(secret: Option<&ScramSecret>, password: &str) -> Result<String, ScramError> {
        let first = b"n,,n=,r=rOprNGfwEbeRWgbNEkqO";
        let (server, server_first) =
            ScramServer::start(secret, "alice", b"key", first, Binding::NotOffered)?;
        let (fin, want_sig) = client_final(password, "n=,r=rOprNGfwEbeRWgbNEkqO", &server_first);
        let out = server.finish(fin.as_bytes())?;
        assert_eq!(out, format!("v={}", B64.encode(want_sig)));
        Ok(out)
    }

    #[test]
    fn scram_right_and_wrong_password() {
        let secret = ScramSecret::from_password("pencil", b"salty-salt-salt", 4096);
        assert!(exchange(Some(&secret), "pencil").is_ok());
        assert_eq!(
            exchange(Some(&secret), "Pencil"),
            Err(ScramError::WrongPassword)
        );
        // unknown user: the same failure, after a full exchange
        assert_eq!(exchange(None, "pencil"), Err(ScramError::WrongPassword));
    }

    /// SCRAM-SHA-256-PLUS (`tls-server-end-point`) and the GS2 flags, as PostgreSQL checks
    /// them: the login succeeds only with this connection's binding data; a client that could
    /// bind but was told it cannot (`y` where PLUS was offered) is refused.
    #[test]
    fn scram_channel_binding() {
        let secret = ScramSecret::from_password("pencil", b"salty-salt-salt", 4096);
        let bare = "n=,r=rOprNGfwEbeRWgbNEkqO";
        let run = |secret: Option<&ScramSecret>,
                   binding: Binding<'_>,
                   header: &str,
                   cbind_input: &[u8]|
         -> Result<String, ScramError> {
            let first = format!("{header}{bare}");
            let (server, server_first) =
                ScramServer::start(secret, "alice", b"key", first.as_bytes(), binding)?;
            let (fin, want) = client_final_bound("pencil", bare, &server_first, cbind_input);
            let out = server.finish(fin.as_bytes())?;
            assert_eq!(out, format!("v={}", B64.encode(want)));
            Ok(out)
        };
        let hash = [7u8; 32];
        let p = "p=tls-server-end-point,,";
        let bound = [p.as_bytes(), &hash].concat();
        let ok = |r: Result<String, ScramError>| r.map(|_| ());
        // Bound to this connection's certificate: in.
        assert_eq!(
            ok(run(Some(&secret), Binding::Chosen(&hash), p, &bound)),
            Ok(())
        );
        // Another certificate's hash (a man in the middle), or none: out.
        let other = [p.as_bytes(), &[8u8; 32]].concat();
        for cbind in [&other[..], p.as_bytes(), b"n,,"] {
            assert_eq!(
                ok(run(Some(&secret), Binding::Chosen(&hash), p, cbind)),
                Err(ScramError::BindingCheckFailed),
                "{cbind:?}"
            );
        }
        // An unknown user gets as far, and fails as a wrong password does.
        assert_eq!(
            ok(run(None, Binding::Chosen(&hash), p, &bound)),
            Err(ScramError::WrongPassword)
        );
        let start = |binding, header: &str| {
            ScramServer::start(
                Some(&secret),
                "alice",
                b"key",
                format!("{header}{bare}").as_bytes(),
                binding,
            )
            .map(|_| ())
        };
        // The flags against what was offered and chosen.
        let cases: &[(Binding<'_>, &str, Result<(), ScramError>)] = &[
            (Binding::NotOffered, "n,,", Ok(())),
            (Binding::NotOffered, "y,,", Ok(())),
            (Binding::Declined, "n,,", Ok(())),
            (Binding::Declined, "y,,", Err(ScramError::BindingNegotiation)),
            (
                Binding::NotOffered,
                p,
                Err(ScramError::Malformed("the client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data")),
            ),
            (
                Binding::Declined,
                p,
                Err(ScramError::Malformed("the client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data")),
            ),
            (
                Binding::Chosen(&hash),
                "n,,",
                Err(ScramError::Malformed("the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data")),
            ),
            (
                Binding::Chosen(&hash),
                "y,,",
                Err(ScramError::Malformed("the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data")),
            ),
            (
                Binding::Chosen(&hash),
                "p=tls-unique,,",
                Err(ScramError::UnsupportedBindingType("tls-unique".into())),
            ),
            (
                Binding::Chosen(&hash),
                "p=tls-server-end-point,a=admin,",
                Err(ScramError::AuthorizationIdentity),
            ),
        ];
        for (binding, header, want) in cases {
            assert_eq!(&start(*binding, header), want, "{binding:?} {header}");
        }
        // Without binding, `c=` must be the header: `y,,` (eSws) as well as `n,,` (biws).
        assert_eq!(
            ok(run(Some(&secret), Binding::NotOffered, "y,,", b"y,,")),
            Ok(())
        );
        assert_eq!(
            ok(run(Some(&secret), Binding::NotOffered, "y,,", b"n,,")),
            Err(ScramError::Malformed(
                "channel binding does not match the GS2 header"
            ))
        );
    }

    #[test]
    fn scram_secret_round_trips_and_matches_postgres() {
        let s = ScramSecret::from_password("pencil", b"0123456789abcdef", 4096);
        let text = s.to_pg_string();
        match Secret::parse(&text, None).unwrap() {
            Secret::Scram(p) => assert!(p == s),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plain_passwords_are_saslprepped_as_libpq_does() {
        let salt = b"0123456789abcdef";
        let secret = |p: &str| ScramSecret::from_password(p, salt, 16);
        // A non-ASCII space is mapped to a space, a compatibility character to its NFKC form.
        assert!(secret("pass\u{a0}word") == secret("pass word"));
        assert!(secret("\u{2168}") == secret("IX"));
        // A password SASLprep refuses (a control character) is used as it is.
        assert!(secret("a\u{7}b") != secret("ab"));
        assert!(secret("pass\u{a0}word") != secret("password"));
    }

    #[test]
    fn scram_garbage() {
        let cases: &[(&[u8], ScramError)] = &[
            (
                b"p=tls-server-end-point,,n=,r=abc",
                ScramError::Malformed("the client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data"),
            ),
            (
                b"x,,n=,r=abc",
                ScramError::Malformed("bad channel-binding flag"),
            ),
            (
                b"n,,n=,r=",
                ScramError::Malformed("missing or bad client nonce"),
            ),
            (
                b"n,,r=abc",
                ScramError::Malformed("the first attribute must be n="),
            ),
            (
                b"n,,n=,m=ext,r=abc",
                ScramError::Malformed("mandatory extensions are not supported"),
            ),
            (b"n,a=admin,n=,r=abc", ScramError::AuthorizationIdentity),
            (b"y,a=,n=,r=abc", ScramError::AuthorizationIdentity),
            (
                b"n,x=1,n=,r=abc",
                ScramError::Malformed("bad authorization identity"),
            ),
            (b"garbage", ScramError::Malformed("no GS2 header")),
            (b"\xff\xfe", ScramError::Malformed("not UTF-8")),
        ];
        for (msg, want) in cases {
            assert_eq!(
                ScramServer::start(None, "u", b"k", msg, Binding::NotOffered).err(),
                Some(want.clone()),
                "{msg:?}"
            );
        }
        let (server, _) =
            ScramServer::start(None, "u", b"k", b"n,,n=,r=abc", Binding::NotOffered).unwrap();
        assert_eq!(
            server.finish(b"c=biws,r=wrongnonce,p=AAAA").err(),
            Some(ScramError::Malformed("nonce does not match"))
        );
    }

    /// pgpool's AES entries, as pgpool 4.3.5's pg_enc made them: `pg_enc -k KEYFILE -u alice
    /// pw123` with `mysecretkey` in KEYFILE.
    #[test]
    fn pg_enc_entries_decrypt_with_their_key() {
        assert_eq!(
            aes_decrypt("GSvR7YhjsXsZOG9VX2Wdww==", b"mysecretkey").as_deref(),
            Ok("pw123")
        );
        assert!(aes_decrypt("GSvR7YhjsXsZOG9VX2Wdww==", b"otherkey").is_err());
        assert!(aes_decrypt("not base64!", b"mysecretkey").is_err());
        assert!(
            aes_decrypt("GSvR7YhjsXsZOG9V", b"mysecretkey").is_err(),
            "not whole blocks"
        );
        let m =
            parse_pool_passwd("alice:AESGSvR7YhjsXsZOG9VX2Wdww==\n", Some(b"mysecretkey")).unwrap();
        match &m["alice"] {
            Secret::Plain { password, .. } => assert_eq!(password, "pw123"),
            other => panic!("{other:?}"),
        }
        let e =
            parse_pool_passwd("alice:AESGSvR7YhjsXsZOG9VX2Wdww==\n", Some(b"wrong")).unwrap_err();
        assert_eq!(e.0, 1);
        assert!(e.1.contains("does not decrypt"), "{}", e.1);
    }

    #[test]
    fn md5() {
        // PostgreSQL: md5(password || user)
        assert_eq!(
            md5_password("postgres", "secret"),
            "md544e2f6d6d6a4a5e63f0c0d3f0d7d1c84".replace(
                "44e2f6d6d6a4a5e63f0c0d3f0d7d1c84",
                &hex(&Md5::digest(b"secretpostgres"))
            )
        );
        let stored = md5_password("alice", "pw");
        let salt = [1, 2, 3, 4];
        let answer = md5_response(&stored, salt);
        assert!(md5_check(Some(&stored), salt, &answer));
        assert!(!md5_check(Some(&stored), [9, 9, 9, 9], &answer));
        assert!(!md5_check(None, salt, &answer));
    }

    #[test]
    fn pool_passwd() {
        let scram = ScramSecret::from_password("s", b"salt", 4096).to_pg_string();
        let text = format!(
            "# comment\nalice:{}\nbob:{scram}\ncarol:TEXTplain:with:colons\ndave:bare\n",
            md5_password("alice", "pw")
        );
        let m = parse_pool_passwd(&text, None).unwrap();
        assert!(matches!(m["alice"], Secret::Md5(_)));
        assert!(matches!(m["bob"], Secret::Scram(_)));
        match &m["carol"] {
            Secret::Plain { password, .. } => assert_eq!(password, "plain:with:colons"),
            other => panic!("{other:?}"),
        }
        assert!(m["dave"].scram().is_some() && m["dave"].md5_hash("dave").is_some());
        assert!(m["bob"].md5_hash("bob").is_none());
        assert_eq!(parse_pool_passwd("nocolon\n", None).unwrap_err().0, 1);
        assert!(parse_pool_passwd("x:AESabc\n", None)
            .unwrap_err()
            .1
            .contains("proxy.pool_key"));
        assert!(parse_pool_passwd("x:SCRAM-SHA-256$bad\n", None).is_err());
        assert!(
            !format!("{:?}", m["carol"]).contains("plain"),
            "secrets never print"
        );
    }
}
