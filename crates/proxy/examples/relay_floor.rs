//! The floor under the front door's cost: a TCP relay on the same tokio runtime, with no
//! PostgreSQL logic at all. One task per client, one server connection each, bytes copied both
//! ways as they come (`poll_read`, `poll_write`).
//! `bench/where-cpu-goes.sh` runs it beside pgwarden and pgbouncer (`RELAY=1`), so a run shows
//! how much of pgwarden's cost is the runtime's shape and how much is its own work.
//!
//!   cargo run --release -p pgwarden-proxy --example relay_floor -- LISTEN_PORT SERVER_PORT
//!
//! PGWARDEN_WORKERS=N sets the worker threads, as for pgwarden (default: one per core).

use std::io::ErrorKind;
use std::pin::Pin;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(server)) = (
        args.get(1).and_then(|a| a.parse::<u16>().ok()),
        args.get(2).and_then(|a| a.parse::<u16>().ok()),
    ) else {
        eprintln!("usage: relay_floor LISTEN_PORT SERVER_PORT");
        std::process::exit(2);
    };
    let workers = std::env::var("PGWARDEN_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(async move {
            let l = TcpListener::bind(("127.0.0.1", listen)).await?;
            loop {
                let (c, _) = l.accept().await?;
                tokio::spawn(async move {
                    if let Ok(s) = TcpStream::connect(("127.0.0.1", server)).await {
                        let _ = relay(c, s).await;
                    }
                });
            }
        })
}

async fn relay(mut c: TcpStream, mut s: TcpStream) -> std::io::Result<()> {
    c.set_nodelay(true)?;
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; 8192];
    loop {
        // The server first, then the client, as the session's loop; `poll_read` (not
        // `try_read`) so that a short read clears the readiness, as pgwarden's reads do.
        let (from_server, n) = std::future::poll_fn(|cx| {
            for (i, st) in [&mut s, &mut c].into_iter().enumerate() {
                let mut rb = ReadBuf::new(&mut buf);
                if let Poll::Ready(r) = Pin::new(st).poll_read(cx, &mut rb) {
                    return Poll::Ready(r.map(|()| (i == 0, rb.filled().len())));
                }
            }
            Poll::Pending
        })
        .await?;
        if n == 0 {
            return Ok(());
        }
        let to = if from_server { &mut c } else { &mut s };
        let mut sent = 0;
        while sent < n {
            match std::future::poll_fn(|cx| Pin::new(&mut *to).poll_write(cx, &buf[sent..n]))
                .await?
            {
                0 => return Err(ErrorKind::WriteZero.into()),
                k => sent += k,
            }
        }
    }
}
