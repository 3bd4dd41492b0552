//! pgwarden-core: the configuration model, the node model and the decisions taken over them.
//!
//! Everything here is plain data and pure functions. Nothing in this crate opens a file or a
//! socket, spawns a task or reads the clock: callers pass the text, the time and the
//! observations in, and get values back. That is what makes the decisions testable as tables.

pub mod cluster;
pub mod config;
pub mod lsn;
pub mod node;
pub mod passfile;
pub mod recovery;
pub mod route;
pub mod secret;

pub use lsn::Lsn;
pub use secret::Secret;
