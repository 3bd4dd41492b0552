//! A client connection: plain TCP, or TLS after an SSLRequest when `proxy.tls_cert` and
//! `proxy.tls_key` are configured.

use crate::backend::CLIENT_STALLED;
use bytes::BytesMut;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Between taking the TCP stream out and putting the TLS stream in.
    Closed,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ClientStream::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ClientStream::Closed => Poll::Ready(Err(closed())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ClientStream::Closed => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ClientStream::Closed => Poll::Ready(Ok(())),
        }
    }
}

/// The reading half of a session's client connection.
pub enum ClientReader {
    Plain(OwnedReadHalf),
    Tls(ReadHalf<ClientStream>),
}

/// The writing half (with TLS, the socket's descriptor beside it: see `raw_fd`).
pub enum ClientWriter {
    Plain(OwnedWriteHalf),
    Tls(WriteHalf<ClientStream>, RawFd),
}

impl ClientStream {
    pub fn split(self) -> (ClientReader, ClientWriter) {
        match self {
            ClientStream::Plain(s) => {
                let (r, w) = s.into_split();
                (ClientReader::Plain(r), ClientWriter::Plain(w))
            }
            other => {
                let fd = match &other {
                    ClientStream::Tls(s) => s.get_ref().0.as_raw_fd(),
                    _ => -1,
                };
                let (r, w) = tokio::io::split(other);
                (ClientReader::Tls(r), ClientWriter::Tls(w, fd))
            }
        }
    }
}

/// The room of a session's first read after it was idle (see `ClientReader::read_into`): a
/// message longer than this is read on in a larger buffer.
const FIRST_READ: usize = 1024;

impl ClientReader {
    /// Reads what has arrived into `buf`; 0 at end of stream. On plain TCP it waits for the
    /// socket first and only then takes memory for the bytes: an idle session holds no read
    /// buffer.
    pub async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            // Polled by hand rather than through `readable()`: the waker then lives in the
            // socket's own slot and the waiting future holds nothing (an idle session's task
            // is that much smaller).
            ClientReader::Plain(r) => {
                std::future::poll_fn(|cx| loop {
                    std::task::ready!(r.as_ref().poll_read_ready(cx))?;
                    if buf.capacity() == 0 {
                        // A session's next message, most often a short one: a small buffer
                        // comes from the allocator's per-thread cache, where 8 KiB does not.
                        buf.reserve(FIRST_READ);
                    } else if buf.capacity() - buf.len() < 4096 {
                        buf.reserve(8 * 1024);
                    }
                    match read_drained(r.as_ref(), buf) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        other => return Poll::Ready(other),
                    }
                })
                .await
            }
            ClientReader::Tls(r) => {
                buf.reserve(8 * 1024);
                r.read_buf(buf).await
            }
        }
    }
}

impl ClientWriter {
    /// Writes all of `data` (and flushes TLS). While the write waits for the client to read,
    /// `CLIENT_STALLED` is set in the session's busy `mask`: an online recovery's 2nd stage
    /// closes a session whose client stopped reading (see `FenceWatch::poll_stalled`). The
    /// write itself is as tokio's `write_all`; the mask is touched only once it has to wait.
    pub async fn write_all(&mut self, data: &[u8], mask: &AtomicU64) -> io::Result<()> {
        let mut rest = data;
        let mut stall = Stall(mask, false);
        std::future::poll_fn(|cx| loop {
            let step = if !rest.is_empty() {
                match self.poll_write(cx, rest) {
                    Poll::Ready(Ok(0)) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        rest = &rest[n..];
                        continue;
                    }
                    other => other.map_ok(drop),
                }
            } else {
                self.poll_flush(cx)
            };
            if step.is_pending() && !stall.1 {
                stall.1 = true;
                mask.fetch_or(CLIENT_STALLED, Ordering::Relaxed);
            }
            return step;
        })
        .await
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            ClientWriter::Plain(w) => Pin::new(w).poll_write(cx, data),
            ClientWriter::Tls(w, _) => Pin::new(w).poll_write(cx, data),
        }
    }

    /// (Plain TCP has nothing to flush.)
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ClientWriter::Plain(_) => Poll::Ready(Ok(())),
            ClientWriter::Tls(w, _) => Pin::new(w).poll_flush(cx),
        }
    }

    /// The client's socket (for `bytes_acked`).
    pub fn raw_fd(&self) -> RawFd {
        match self {
            ClientWriter::Plain(w) => w.as_ref().as_raw_fd(),
            ClientWriter::Tls(_, fd) => *fd,
        }
    }
}

/// How many bytes the peer of TCP socket `fd` has taken so far: those its TCP stack
/// acknowledged (`TCP_INFO`'s `tcpi_bytes_acked`). Once the peer's receive buffer is full it
/// grows only as the client reads, in steps of about a sixteenth of that buffer (the peer
/// opens its window no finer), where a write waiting for room is woken only once about a
/// third of the sending socket's buffer (up to 4 MiB) is free. None where the kernel does not
/// say.
#[cfg(target_os = "linux")]
pub(crate) fn bytes_acked(fd: RawFd) -> Option<u64> {
    // SAFETY: tcp_info is a C struct of integers, for which all zeroes is a value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::tcp_info>();
    let mut len = libc::socklen_t::try_from(size).ok()?;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which has that many; `fd` is
    // the client's socket, open as long as the writer that gave it.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::addr_of_mut!(info).cast(),
            &mut len,
        )
    };
    // (An older kernel fills less of the struct: the count must be among what it filled.)
    let filled = usize::try_from(len).ok()?;
    (r == 0 && filled >= std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + 8)
        .then_some(info.tcpi_bytes_acked)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn bytes_acked(_fd: RawFd) -> Option<u64> {
    None
}

/// Clears `CLIENT_STALLED` when a write that waited ends (or is dropped).
struct Stall<'a>(&'a AtomicU64, bool);

impl Drop for Stall<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.fetch_and(!CLIENT_STALLED, Ordering::Relaxed);
        }
    }
}

/// Reads what the socket has into `buf`'s spare room, without waiting (`WouldBlock` when it
/// has nothing). A read that leaves room unused has emptied the socket: its readiness is
/// cleared then and there, so the next read waits for the poller instead of first asking the
/// kernel in vain. That saves one `recvfrom` per request in a request/answer exchange (tokio
/// otherwise learns that a socket is empty only from an EAGAIN).
///
/// Safe against lost wake-ups: tokio clears readiness only if no readiness event arrived since
/// it was observed (before the read); bytes that arrive after the read raise a new one.
pub(crate) fn read_drained(sock: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let room = buf.capacity() - buf.len();
    let mut short = None;
    let r = sock.try_io(tokio::io::Interest::READABLE, || {
        match sock.try_read_buf(buf) {
            Ok(n) if n > 0 && n < room => {
                short = Some(n);
                Err(io::ErrorKind::WouldBlock.into())
            }
            other => other,
        }
    });
    match short {
        Some(n) => Ok(n),
        None => r,
    }
}

/// TLS for clients: the acceptor, and what SCRAM-SHA-256-PLUS binds a login to.
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The `tls-server-end-point` channel binding data of the certificate (RFC 5929: a hash
    /// of it), when its signature algorithm names a hash; without it pgwarden offers
    /// SCRAM-SHA-256 only.
    pub end_point: Option<Vec<u8>>,
}

/// RFC 5929's `tls-server-end-point` data of a DER certificate, as PostgreSQL makes it: the
/// certificate hashed with the hash of its signature algorithm, SHA-256 in place of MD5 and
/// SHA-1. `None` where that algorithm names no hash (Ed25519, RSASSA-PSS: PostgreSQL 15
/// cannot bind to those either) or the certificate does not parse.
pub fn end_point_hash(der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    use x509_cert::der::{oid::ObjectIdentifier as Oid, Decode};
    const SHA256: &[&str] = &[
        "1.2.840.113549.1.1.4",   // md5WithRSAEncryption
        "1.2.840.113549.1.1.5",   // sha1WithRSAEncryption
        "1.2.840.113549.1.1.11",  // sha256WithRSAEncryption
        "1.2.840.10045.4.1",      // ecdsa-with-SHA1
        "1.2.840.10045.4.3.2",    // ecdsa-with-SHA256
        "1.2.840.10040.4.3",      // dsa-with-sha1
        "2.16.840.1.101.3.4.3.2", // dsa-with-sha256
    ];
    const SHA224: &[&str] = &["1.2.840.113549.1.1.14", "1.2.840.10045.4.3.1"];
    const SHA384: &[&str] = &["1.2.840.113549.1.1.12", "1.2.840.10045.4.3.3"];
    const SHA512: &[&str] = &["1.2.840.113549.1.1.13", "1.2.840.10045.4.3.4"];
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let alg = cert.signature_algorithm.oid;
    let is = |list: &[&str]| list.iter().any(|o| Oid::new(o).is_ok_and(|o| o == alg));
    if is(SHA256) {
        Some(sha2::Sha256::digest(der).to_vec())
    } else if is(SHA224) {
        Some(sha2::Sha224::digest(der).to_vec())
    } else if is(SHA384) {
        Some(sha2::Sha384::digest(der).to_vec())
    } else if is(SHA512) {
        Some(sha2::Sha512::digest(der).to_vec())
    } else {
        None
    }
}

/// Loads a certificate chain and private key (PEM) into a TLS acceptor.
pub fn acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<Tls, String> {
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert.display()))?;
    let end_point = match certs.first() {
        Some(c) => end_point_hash(c),
        None => return Err(format!("{}: no certificate in it", cert.display())),
    };
    let key_path = key;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("{}: not a PEM private key: {e}", key_path.display()))?
        .ok_or_else(|| {
            if key_pem.windows(9).any(|w| w == b"ENCRYPTED") {
                format!(
                    "{}: the private key is encrypted (it needs a passphrase), which pgwarden cannot give; expected an unencrypted key: openssl pkey -in {} -out server.key",
                    key_path.display(),
                    key_path.display()
                )
            } else {
                format!(
                    "{}: no private key in it; expected a PEM private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
                    key_path.display()
                )
            }
        })?;
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("{} and {}: {e}", cert.display(), key_path.display()))?;
    Ok(Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)),
        end_point,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;
    use std::io::{Read, Write};

    /// The certificate's own hash, by its signature algorithm (RFC 5929 §4.1); none where
    /// that names no hash, or for what is not a certificate.
    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        let der = |alg: &'static rcgen::SignatureAlgorithm| {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            rcgen::CertificateParams::new(vec!["localhost".into()])
                .unwrap()
                .self_signed(&key)
                .unwrap()
                .der()
                .to_vec()
        };
        let p256 = der(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            end_point_hash(&p256),
            Some(sha2::Sha256::digest(&p256).to_vec())
        );
        let p384 = der(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(
            end_point_hash(&p384),
            Some(sha2::Sha384::digest(&p384).to_vec())
        );
        assert_eq!(end_point_hash(&der(&rcgen::PKCS_ED25519)), None);
        assert_eq!(end_point_hash(b"not a certificate"), None);
        assert_eq!(end_point_hash(&p256[..p256.len() - 1]), None);
    }

    /// The count grows with what the peer's TCP stack took (into its receive buffer: once
    /// that is full, only as the client reads).
    #[cfg(target_os = "linux")]
    #[test]
    fn bytes_acked_counts_what_the_peer_took() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sender = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let fd = sender.as_raw_fd();
        let before = bytes_acked(fd).expect("Linux says");
        sender.write_all(&[7u8; 10_000]).unwrap();
        let mut got = vec![0u8; 10_000];
        peer.read_exact(&mut got).unwrap();
        // (The acknowledgement follows the data on loopback at once; allow it a moment.)
        let start = std::time::Instant::now();
        while bytes_acked(fd).unwrap_or(0) < before + 10_000 {
            assert!(start.elapsed() < std::time::Duration::from_secs(5));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(bytes_acked(-1), None, "no socket, no count");
    }
}
