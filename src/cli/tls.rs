//! TLS for the command-line tools (`https://` and `wss://` servers): the system's roots
//! compiled in (Mozilla's, from `webpki-roots`) or, with `--ca-file`, only the CAs of that
//! file (a private CA, as `curl --cacert`); and what a failed handshake means, in words.

use std::error::Error;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{CertificateError, ClientConfig, RootCertStore};

/// The TLS client of the tools: the public roots, or those of `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let shown = path.display();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("--ca-file {shown}: cannot be read ({e})"))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("--ca-file {shown}: not PEM ({e})"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("--ca-file {shown}: not a CA certificate ({e})"))?;
            }
            if roots.is_empty() {
                return Err(format!("--ca-file {shown}: no CERTIFICATE in it"));
            }
        }
    }
    let mut config = ClientConfig::builder_with_provider(crate::edge::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS error somewhere in `error`'s chain (an `io::Error` hides what it wraps from
/// `source()`, so each link's payload is looked at too).
fn find_tls<'a>(mut error: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    loop {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // (io::Errors nest: reqwest's is io::Error(Other, io::Error(InvalidData, rustls)).)
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            error = inner;
            continue;
        }
        error = error.source()?;
    }
}

/// What went wrong in a TLS handshake, for a person: `None` if `error` is no TLS failure.
pub fn explain(error: &(dyn Error + 'static)) -> Option<String> {
    let tls = find_tls(error)?;
    Some(match tls {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the server's certificate is not signed by a CA this tool trusts (a private CA or a self-signed certificate: pass it with --ca-file)".into()
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => {
            "the server's certificate is for another name than the one in --server".into()
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected,
            presented,
        }) => format!(
            "the server's certificate is for {} and not for {expected:?} (the name in --server)",
            presented.join(", ")
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the server's certificate has expired (or this machine's clock is wrong)".into(),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "the server's certificate is not valid yet (or this machine's clock is wrong)".into(),
        rustls::Error::InvalidCertificate(other) => {
            format!("the server's certificate was refused: {other:?}")
        }
        rustls::Error::InvalidMessage(_) => {
            "the server did not answer in TLS (is it https? a plain http server answers http://)".into()
        }
        other => format!("the TLS handshake failed: {other}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_failure_is_found_inside_io_errors_and_named() {
        let inner = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        // As reqwest's connector hands it over: an io::Error in an io::Error.
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, inner);
        let io = std::io::Error::other(io);
        let said = explain(&io).unwrap();
        assert!(said.contains("--ca-file"), "{said}");
        let plain = std::io::Error::other("connection refused");
        assert!(explain(&plain).is_none(), "not a TLS failure");
        assert!(client_config(Some(Path::new("/nonexistent.pem"))).is_err());
        assert!(client_config(None).is_ok());
    }
}
