//! Native HTTPS: loading the PEM certificate chain and key (`http.tls_cert`/`http.tls_key`),
//! a certificate resolver whose certificate can be swapped while the server runs, the watcher
//! that swaps it when the files change or on SIGHUP, and `TlsListener`, which hands axum
//! connections whose TLS handshake is done. Knows nothing about what is served.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How often the certificate files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for axum to take them.
const ACCEPT_QUEUE: usize = 64;
/// Handshakes in progress at once; a connection beyond that is closed at once (a flood of
/// clients that never finish cannot pile up tasks).
const MAX_HANDSHAKES: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate file {path} (http.tls_cert): {message}")]
    Cert { path: PathBuf, message: String },
    #[error("{path} (http.tls_cert) holds no PEM certificate")]
    NoCert { path: PathBuf },
    #[error("cannot read a private key from {path} (http.tls_key): {message}")]
    Key { path: PathBuf, message: String },
    #[error(
        "the private key in {path} (http.tls_key) is of a kind that cannot be used: {message}"
    )]
    KeyKind { path: PathBuf, message: String },
    #[error("the private key in {key} does not belong to the certificate in {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
}

/// Reads and checks a certificate chain and its key.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.to_owned(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert {
            path: cert.to_owned(),
        });
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        message: e.to_string(),
    })?;
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| TlsError::KeyKind {
            path: key.to_owned(),
            message: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signer);
    // Catches a renewed certificate installed with the old key (or the other way round).
    if certified.keys_match().is_err() {
        return Err(TlsError::Mismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
        });
    }
    Ok(certified)
}

/// The certificate currently served; swapped whole, read without a lock.
#[derive(Debug)]
pub struct Resolver {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// HTTPS for one listener: the files, the live certificate, the rustls acceptor.
#[derive(Clone)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    resolver: Arc<Resolver>,
    acceptor: TlsAcceptor,
}

impl Tls {
    /// Loads the files once; start-up fails if they are not usable.
    pub fn new(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let resolver = Arc::new(Resolver {
            current: ArcSwap::from_pointee(load(cert, key)?),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        // HTTP/1.1 only: WebSocket upgrades (/ws) are HTTP/1.1; browsers open a separate
        // connection for them anyway.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Reads the files again; on success new handshakes get the new certificate, on failure
    /// the old one stays (and the error says why).
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load(&self.cert, &self.key)?;
        self.resolver.current.store(Arc::new(fresh));
        Ok(())
    }

    /// Reloads when either file's modification time changes (polled) and on SIGHUP, until
    /// `stop`.
    pub fn spawn_reloader(&self, stop: CancellationToken) {
        let tls = self.clone();
        tokio::spawn(async move {
            let stamp = |tls: &Tls| (modified(&tls.cert), modified(&tls.key));
            let mut seen = stamp(&tls);
            let mut hangup = hangup_signals();
            let mut poll = tokio::time::interval(RELOAD_POLL);
            loop {
                let why = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = poll.tick() => {
                        let now = stamp(&tls);
                        if now == seen { continue; }
                        seen = now;
                        "files changed"
                    }
                    Some(()) = recv_hangup(&mut hangup) => "SIGHUP",
                };
                match tls.reload() {
                    Ok(()) => tracing::info!(why, "TLS certificate reloaded"),
                    Err(err) => tracing::error!(
                        why,
                        error = %err,
                        "TLS certificate not reloaded; still serving the previous one"
                    ),
                }
            }
        });
    }

    /// Wraps a bound TCP listener: connections reach axum after their handshake.
    pub fn listener(&self, tcp: TcpListener) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let stop = CancellationToken::new();
        let acceptor = self.acceptor.clone();
        let stopped = stop.clone();
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = stopped.cancelled() => return,
                    accepted = tcp.accept() => match accepted {
                        Ok(a) => a,
                        Err(err) => {
                            // E.g. out of file descriptors: wait instead of spinning.
                            tracing::warn!(error = %err, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    tracing::warn!("too many TLS handshakes in progress; connection dropped");
                    continue;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        // Scanners, plain HTTP on the HTTPS port, clients that distrust
                        // the certificate: not an operator's problem.
                        Ok(Err(err)) => tracing::debug!(error = %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            local,
            rx,
            _stop: stop.drop_guard(),
        })
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(unix)]
fn hangup_signals() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(unix)]
async fn recv_hangup(sig: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match sig {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
fn hangup_signals() -> Option<()> {
    None
}

#[cfg(not(unix))]
async fn recv_hangup(_: &mut Option<()>) -> Option<()> {
    std::future::pending().await
}

/// An axum listener yielding TLS streams. Dropping it stops its accept task (and so releases
/// the port).
pub struct TlsListener {
    local: SocketAddr,
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    _stop: DropGuard,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.cert.pem()).unwrap();
        std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn bad_files_give_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a.test");
        let (_, other_key) = write_pair(dir.path(), "b.test");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a pem file\n").unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(load(&cert, &key).is_ok());
        let cases: [(&Path, &Path, &str); 5] = [
            (&missing, &key, "cannot read the certificate file"),
            (&garbage, &key, "holds no PEM certificate"),
            (&cert, &missing, "cannot read a private key"),
            (&cert, &garbage, "cannot read a private key"),
            (&cert, &other_key, "does not belong to the certificate"),
        ];
        for (c, k, want) in cases {
            let err = load(c, k).unwrap_err().to_string();
            assert!(err.contains(want), "{c:?} {k:?}: {err}");
        }
    }

    #[test]
    fn reload_swaps_the_certificate_and_keeps_it_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "live");
        let tls = Tls::new(&cert, &key).unwrap();
        let first = tls.resolver.current.load_full().cert[0].clone();
        let (c2, k2) = write_pair(dir.path(), "next");
        std::fs::copy(&c2, &cert).unwrap();
        std::fs::copy(&k2, &key).unwrap();
        tls.reload().unwrap();
        let second = tls.resolver.current.load_full().cert[0].clone();
        assert_ne!(first, second);
        std::fs::write(&key, "broken").unwrap();
        assert!(tls.reload().is_err());
        assert_eq!(tls.resolver.current.load_full().cert[0], second);
    }
}
