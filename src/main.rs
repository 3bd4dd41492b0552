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
    keep_large_buffers_apart();
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

/// Large buffers (a statement or row of megabytes) in mappings of their own, given back to the
/// system when freed. glibc starts them so (from 128 KiB) but raises that threshold each time
/// one is freed, up to 32 MiB; after that they come from the heap and stay with the process:
/// 20 sessions sending an 8 MB statement each left the proxy at about 200 MB for good.
/// Pinned at glibc's own starting value, the threshold no longer moves.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_large_buffers_apart() {
    // SAFETY: mallopt only sets a parameter of the allocator, and runs before any other
    // thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_large_buffers_apart() {}
