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
