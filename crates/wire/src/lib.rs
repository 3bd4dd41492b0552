//! pgwarden-wire: the PostgreSQL frontend/backend protocol, version 3.0.
//!
//! * [`frame`]: splitting a byte stream into messages, zero-copy on [`bytes`], with a maximum
//!   message size; the startup packet (StartupMessage, SSLRequest, GSSENCRequest,
//!   CancelRequest).
//! * [`msg`]: reading the frontend messages the proxy routes on, and building the backend
//!   messages it answers with itself.
//! * [`auth`]: md5 and SCRAM-SHA-256, server side (checking a client) and the stored secrets
//!   of pgpool's `pool_passwd`.
//!
//! No sockets, no tasks, no policy: everything takes bytes and returns values, so it can be
//! fuzzed directly.

pub mod auth;
pub mod frame;
pub mod msg;

pub use frame::{Frame, ProtocolError};

/// Runs every decoder on `data`, as a client could send it. Used by the fuzz target
/// (`fuzz/`) and by a seeded random-input test; it must never panic.
pub fn fuzz_decode(data: &[u8]) {
    use bytes::BytesMut;
    let mut buf = BytesMut::from(data);
    let _ = frame::split_startup(&mut buf);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(f)) = frame::split_frame(&mut buf, 1 << 20) {
        let body = f.body();
        let _ = msg::query_text(body);
        let _ = msg::parse(body);
        let _ = msg::bind_names(body);
        let _ = msg::bind(body);
        let _ = msg::execute(body);
        let _ = msg::target(body, "Describe");
        let _ = msg::password(body);
        let _ = msg::sasl_initial(body);
        let _ = msg::error_fields(body);
    }
    for binding in [
        auth::Binding::NotOffered,
        auth::Binding::Declined,
        auth::Binding::Chosen(b"end point"),
    ] {
        if let Ok((server, _)) = auth::ScramServer::start(None, "u", b"key", data, binding) {
            let _ = server.finish(data);
        }
    }
    let secret = auth::ScramSecret::from_password("pw", b"salt", 1);
    if let Ok((server, first)) = auth::ScramServer::start(
        Some(&secret),
        "u",
        b"key",
        b"n,,n=,r=abc",
        auth::Binding::NotOffered,
    ) {
        let mut fin = format!(
            "c=biws,r={},p=",
            first
                .split(',')
                .next()
                .unwrap_or("")
                .trim_start_matches("r=")
        )
        .into_bytes();
        fin.extend_from_slice(data);
        let _ = server.finish(&fin);
    }
}

#[cfg(test)]
mod random_input {
    use rand::{Rng, SeedableRng};

    /// A fixed-seed sweep of random and mutated inputs through every decoder: a cheap stand-in
    /// for the fuzzer that runs in every CI run.
    #[test]
    fn decoders_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let seeds: [&[u8]; 4] = [
            b"\x00\x00\x00\x29\x00\x03\x00\x00user\x00alice\x00database\x00db\x00\x00",
            b"Q\x00\x00\x00\x0dSELECT 1\x00",
            b"P\x00\x00\x00\x10s\x00SELECT 1\x00\x00\x00B\x00\x00\x00\x0cp\x00s\x00\x00\x00\x00\x00S\x00\x00\x00\x04",
            b"n,,n=,r=rOprNGfwEbeRWgbNEkqO",
        ];
        for i in 0..20_000 {
            let mut data: Vec<u8> = if i % 2 == 0 {
                let len = rng.gen_range(0..64);
                (0..len).map(|_| rng.gen()).collect()
            } else {
                seeds[i % seeds.len()].to_vec()
            };
            if !data.is_empty() {
                for _ in 0..rng.gen_range(0..4) {
                    let at = rng.gen_range(0..data.len());
                    data[at] = rng.gen();
                }
            }
            super::fuzz_decode(&data);
        }
    }
}
