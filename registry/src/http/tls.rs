//! HTTPS: the `[tls]` certificate and key, and a listener that hands axum
//! connections only once their TLS handshake is done.
//!
//! rustls with the `ring` provider (TLS 1.2 and 1.3, ALPN `http/1.1`). Each
//! accepted TCP connection gets its own task for the handshake (bounded by
//! [`HANDSHAKE_TIMEOUT`]), so one slow or hostile client cannot hold up
//! the others; finished connections go to the server through a channel.

use crate::config::ConfigError;
use crate::config::Tls;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Handshakes finished but not yet taken by the server.
const READY_BACKLOG: usize = 64;

/// Read the PEM certificate chain and private key `tls` names and build
/// the acceptor. Every error names the file and says what is wrong.
pub fn load_acceptor(tls: &Tls) -> Result<TlsAcceptor, ConfigError> {
    let certs = load_certs(&tls.cert)?;
    let key = load_key(&tls.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::TlsMismatch {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            why: e.to_string(),
        })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ConfigError::TlsMismatch {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            why: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_pem(path: &Path, what: &'static str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::TlsFile {
        what,
        path: path.to_owned(),
        why: e.to_string(),
    })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bad = |why: String| ConfigError::TlsFile {
        what: "certificate",
        path: path.to_owned(),
        why,
    };
    let pem = read_pem(path, "certificate")?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            "no PEM certificate (BEGIN CERTIFICATE) in the file".into()
        ));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = read_pem(path, "private key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| ConfigError::TlsFile {
        what: "private key",
        path: path.to_owned(),
        why: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no PEM private key (BEGIN PRIVATE KEY / RSA PRIVATE KEY / EC PRIVATE KEY) in the file"
                    .into()
            }
            e => format!("not a PEM private key: {e}"),
        },
    })
}

/// A listener of finished TLS connections, for `axum::serve`.
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accept on `tcp` and run every handshake with `acceptor` in its own
    /// task. The accept loop ends when the listener is dropped.
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(READY_BACKLOG);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    () = tx.closed() => return,
                    r = tcp.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of file descriptors and the like: back off.
                            tracing::warn!("accepting a connection: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let _ = stream.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop only ends once this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn self_signed() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (c.cert.pem(), c.key_pair.serialize_pem())
    }

    #[test]
    fn loads_a_matching_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let tls = Tls {
            cert: write(dir.path(), "c.pem", &cert),
            key: write(dir.path(), "k.pem", &key),
        };
        assert!(load_acceptor(&tls).is_ok());
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let (_, other_key) = self_signed();
        let good_cert = write(dir.path(), "c.pem", &cert);
        let good_key = write(dir.path(), "k.pem", &key);
        let err = |cert: &Path, key: &Path| {
            load_acceptor(&Tls {
                cert: cert.to_owned(),
                key: key.to_owned(),
            })
            .err()
            .expect("must fail")
            .to_string()
        };

        let missing = dir.path().join("nope.pem");
        let e = err(&missing, &good_key);
        assert!(e.contains("nope.pem") && e.contains("certificate"), "{e}");
        let e = err(&good_cert, &missing);
        assert!(e.contains("nope.pem") && e.contains("private key"), "{e}");

        let garbage = write(dir.path(), "garbage.pem", "hello\n");
        let e = err(&garbage, &good_key);
        assert!(
            e.contains("garbage.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = err(&good_cert, &garbage);
        assert!(
            e.contains("garbage.pem") && e.contains("no PEM private key"),
            "{e}"
        );
        // A certificate where the key should be, and the other way round.
        let e = err(&good_cert, &good_cert);
        assert!(e.contains("c.pem") && e.contains("private key"), "{e}");
        let e = err(&good_key, &good_key);
        assert!(e.contains("k.pem") && e.contains("certificate"), "{e}");

        let wrong_key = write(dir.path(), "other.pem", &other_key);
        let e = err(&good_cert, &wrong_key);
        assert!(
            e.contains("c.pem") && e.contains("other.pem") && e.contains("match"),
            "{e}"
        );
    }
}
