//! TLS on the listening port (HTTPS and WSS), with rustls: TLS 1.2 and 1.3, HTTP/1.1 (the
//! WebSocket upgrade). The certificate (`tls_cert`, PEM, full chain: the server's own first)
//! and its key (`tls_key`) are loaded at start, where a missing, unreadable or mismatched
//! pair stops the server with a message naming the key and the file, and again on SIGHUP:
//! new handshakes get the renewed certificate while open connections keep theirs.
//!
//! The handshake runs over the metered stream (`TlsStream<MeteredStream>`), so what a
//! connection writes is counted as it leaves (encrypted), the unauthenticated deadline and
//! byte budget cover a slow or large handshake, and a cut closes the TCP connection.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// Resumable TLS sessions kept for clients that reconnect (rustls keeps 256 by default).
const SESSION_CACHE: usize = 16 * 1024;

/// The crypto rustls uses here: ring (builds with a C compiler alone).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate in force, replaced whole on SIGHUP.
pub struct CertStore(ArcSwap<CertifiedKey>);

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertStore")
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The server's TLS: the acceptor for new connections and the certificate it serves.
pub struct Tls {
    pub acceptor: TlsAcceptor,
    store: Arc<CertStore>,
    provider: Arc<CryptoProvider>,
}

impl Tls {
    /// Load `cert` and `key` and build the acceptor; errors name the key and the file.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Tls> {
        let provider = provider();
        let pair = load_pair(cert, key, &provider)?;
        let store = Arc::new(CertStore(ArcSwap::from_pointee(pair)));
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
        config.ticketer = rustls::crypto::ring::Ticketer::new().context("TLS session tickets")?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            store,
            provider,
        })
    }

    /// Serve `cert` and `key` to new handshakes from now on (SIGHUP); on an error the
    /// certificate in force stays.
    pub fn reload(&self, cert: &Path, key: &Path) -> anyhow::Result<()> {
        let pair = load_pair(cert, key, &self.provider)?;
        self.store.0.store(Arc::new(pair));
        Ok(())
    }
}

/// The certificate chain of `cert` and the key of `key`, checked to belong together.
fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("tls_cert {}: cannot be read", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("tls_cert {}: not a PEM certificate chain", cert.display()))?;
    if chain.is_empty() {
        bail!("tls_cert {}: no CERTIFICATE in it", cert.display());
    }
    let der = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "tls_key {}: no PEM private key could be read",
            key.display()
        )
    })?;
    let signer = provider.key_provider.load_private_key(der).with_context(|| {
        format!(
            "tls_key {}: not a supported key (RSA of 2048 bits or more, ECDSA P-256 or P-384, Ed25519)",
            key.display()
        )
    })?;
    let pair = CertifiedKey::new(chain, signer);
    match pair.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(pair)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => bail!(
            "tls_key {} does not match the first certificate of tls_cert {} (the server's own certificate must come first)",
            key.display(),
            cert.display()
        ),
        Err(e) => bail!("tls_cert {}: {e}", cert.display()),
    }
}
