//! One failover trial for `bench/failover.sh`: writes through a PostgreSQL front door (pgwarden
//! or pgpool-II), runs a command that breaks the primary, and reports how long after it writes
//! worked again: the completion of the first successful write after a failure, or of a write
//! that was held up (took more than 500 ms) and then succeeded — pgwarden holds writes while
//! it fails over, so a client may see no error at all. Reconnects as an application would;
//! every connect is bounded, and a statement gets 60 s, so a hung server costs a timeout, not
//! the trial.
//!
//! cargo run --release --example failover_probe -- PORT USER PASSWORD|- DATABASE 'KILL COMMAND'
//! prints: {"ms": 1234, "errors": 3} (or {"ms": null, …} when writes never came back)

use std::time::{Duration, Instant};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: failover_probe PORT USER PASSWORD|- DATABASE 'KILL COMMAND'");
        std::process::exit(2);
    }
    let port: u16 = args[1].parse().unwrap_or_else(|_| {
        eprintln!("PORT must be a number");
        std::process::exit(2)
    });
    let (user, password, db, kill) = (&args[2], &args[3], &args[4], &args[5]);
    let connect = || async {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(port)
            .user(user)
            .dbname(db)
            .connect_timeout(Duration::from_secs(3));
        if password != "-" {
            cfg.password(password);
        }
        match tokio::time::timeout(Duration::from_secs(3), cfg.connect(tokio_postgres::NoTls)).await
        {
            Ok(Ok((client, conn))) => {
                tokio::spawn(conn);
                Some(client)
            }
            _ => None,
        }
    };
    let Some(first) = connect().await else {
        eprintln!("cannot connect to 127.0.0.1:{port}");
        std::process::exit(1);
    };
    if let Err(e) = first
        .batch_execute("CREATE TABLE IF NOT EXISTS failover_probe (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())")
        .await
    {
        eprintln!("cannot create the table: {e}");
        std::process::exit(1);
    }
    let insert = "INSERT INTO failover_probe DEFAULT VALUES";
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(1) {
        if first.execute(insert, &[]).await.is_err() {
            eprintln!("writes fail before the kill");
            std::process::exit(1);
        }
    }
    let mut client = Some(first);
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(kill)
        .status();
    let t0 = Instant::now();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("the kill command failed: {kill}");
        std::process::exit(1);
    }
    let mut errors = 0u32;
    let mut ms: Option<u128> = None;
    while t0.elapsed() < Duration::from_secs(180) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = connect().await;
            if client.is_none() {
                errors += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        }
        let Some(c) = client.as_ref() else { continue };
        let started = Instant::now();
        match tokio::time::timeout(Duration::from_secs(60), c.execute(insert, &[])).await {
            Ok(Ok(_)) if errors > 0 || started.elapsed() > Duration::from_millis(500) => {
                ms = Some(t0.elapsed().as_millis());
                break;
            }
            Ok(Ok(_)) if t0.elapsed() > Duration::from_secs(60) => {
                // Writes never stopped: nothing to measure.
                break;
            }
            Ok(Ok(_)) => {}
            _ => {
                errors += 1;
                client = None;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    println!(
        "{{\"ms\": {}, \"errors\": {errors}}}",
        ms.map_or("null".to_string(), |m| m.to_string())
    );
}
