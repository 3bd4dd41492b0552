//! The `pgwarden` binary: the command line, and the wiring of the services it starts.

mod agent_cmd;
mod cli;
mod load;
mod pcp;
mod recover_cmd;
mod reload;
mod render;
mod sandbox_cmd;
mod serve;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // Worker threads: PGWARDEN_WORKERS, else one per core.
    let workers = std::env::var("PGWARDEN_WORKERS")
        .ok()
        .and_then(|w| w.parse::<usize>().ok())
        .filter(|w| *w > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgwarden: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // Configuration problems: exit code 2, each problem on its own line.
            if let Some(cfg) = e.downcast_ref::<pgwarden_core::config::ConfigErrors>() {
                for problem in &cfg.0 {
                    eprintln!("error: {problem}");
                }
                return ExitCode::from(2);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
