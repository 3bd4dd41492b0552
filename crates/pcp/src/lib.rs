//! A server for pgpool-II's PCP admin protocol (pgpool-II 4.3 wire format).

mod auth;

pub use auth::{PcpConfError, PcpUsers};
