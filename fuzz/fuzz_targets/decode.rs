//! Feeds arbitrary bytes to everything that reads what a client sends: the startup packet,
//! message framing, the message parsers, and the SCRAM exchange. None of it may panic.
//!
//!     cargo install cargo-fuzz && cargo +nightly fuzz run decode
//! (on a stable toolchain: RUSTC_BOOTSTRAP=1 cargo fuzz run decode)
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgwarden_wire::{auth, frame, msg};

fuzz_target!(|data: &[u8]| {
    pgwarden_wire::fuzz_decode(data);
    let _ = (frame::MAX_STARTUP_LEN, msg::query_text, auth::md5_password, BytesMut::new);
});
