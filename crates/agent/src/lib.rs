//! pgwarden's node agent.
//!
//! `pgwarden agent` runs on each PostgreSQL host as the database's OS user. The warden asks it
//! to do what must happen on that host: report the server's status, start and stop it, run
//! pg_rewind or a base backup from the current primary, write the standby configuration, run
//! pgpool's recovery scripts with a timeout. Long work runs as a *job* whose progress the warden
//! polls.
//!
//! * [`api`]: the requests and answers (JSON over HTTP/1.1), shared by both sides.
//! * [`server`]: the agent itself ([`server::serve`]).
//! * [`client`]: what the warden (and the sandbox) call it with ([`client::AgentClient`]).
//! * [`auth`]: the request signature and the secret file, used by both sides.

pub mod api;
pub mod auth;
pub mod client;
pub mod conf;
mod jobs;
pub mod parse;
pub mod server;

pub use auth::read_secret;
pub use client::{AgentClient, AgentError};
pub use server::{serve, serve_with_shutdown, AgentConfig};
