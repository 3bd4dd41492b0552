//! The `pgwarden` binary: the command line, and the wiring of the services it starts.

mod cli;
mod load;
mod render;
mod sandbox_cmd;
mod serve;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
