//! TLS for the router: certificates per host name from `mar.yaml`, chosen by SNI, and a
//! self-signed certificate for `DOMAIN`, `*.DOMAIN`, `localhost` and 127.0.0.1, made on first
//! start and kept in the data directory, for everything else. ALPN offers h2 and http/1.1.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::TlsCertificate;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed.
    #[error("TLS: {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Making the self-signed certificate failed.
    #[error("TLS: cannot make a self-signed certificate: {0}")]
    Generate(String),
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

#[derive(Debug)]
struct SniResolver {
    /// (host pattern, key); patterns are exact names or `*.suffix`.
    by_name: Vec<(String, Arc<CertifiedKey>)>,
    fallback: Arc<CertifiedKey>,
}

fn matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.strip_suffix(suffix).is_some_and(|label| {
            label.ends_with('.') && !label[..label.len() - 1].contains('.') && label.len() > 1
        }),
        None => pattern == host,
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = hello.server_name().map(str::to_ascii_lowercase);
        let chosen = host.and_then(|h| {
            // Exact names first, then wildcards.
            self.by_name
                .iter()
                .find(|(p, _)| !p.starts_with("*.") && *p == h)
                .or_else(|| self.by_name.iter().find(|(p, _)| matches(p, &h)))
                .map(|(_, k)| k.clone())
        });
        Some(chosen.unwrap_or_else(|| self.fallback.clone()))
    }
}

fn load(provider: &CryptoProvider, cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let file_err = |p: &Path, reason: String| TlsError::File {
        path: p.display().to_string(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e.to_string()))?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| file_err(key, e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// Makes (once) and returns the paths of the self-signed certificate and key.
fn self_signed(
    dir: &Path,
    domain: &str,
) -> Result<(std::path::PathBuf, std::path::PathBuf), TlsError> {
    let (cert, key) = (dir.join("self-signed.crt"), dir.join("self-signed.key"));
    if cert.is_file() && key.is_file() {
        return Ok((cert, key));
    }
    let names = vec![
        domain.to_owned(),
        format!("*.{domain}"),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    let io = |e: std::io::Error| TlsError::Generate(e.to_string());
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::write(&cert, generated.cert.pem()).map_err(io)?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key)
        .map_err(io)?;
    f.write_all(generated.signing_key.serialize_pem().as_bytes())
        .map_err(io)?;
    Ok((cert, key))
}

/// The acceptor for the HTTPS listener.
pub fn acceptor(
    dir: &Path,
    domain: &str,
    certs: &[TlsCertificate],
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (cert, key) = self_signed(dir, domain)?;
    let fallback = load(&provider, &cert, &key)?;
    let mut by_name = Vec::new();
    for c in certs {
        let k = load(&provider, &c.cert, &c.key)?;
        for d in &c.domains {
            by_name.push((d.to_ascii_lowercase(), k.clone()));
        }
    }
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { by_name, fallback }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_one_label() {
        assert!(matches("*.example.com", "a.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(!matches("*.example.com", "a.b.example.com"));
        assert!(matches("example.com", "example.com"));
    }

    #[test]
    fn self_signed_is_made_once() {
        let d = tempfile::tempdir().unwrap();
        acceptor(d.path(), "localhost", &[]).unwrap();
        let first = std::fs::read(d.path().join("self-signed.crt")).unwrap();
        acceptor(d.path(), "localhost", &[]).unwrap();
        assert_eq!(
            first,
            std::fs::read(d.path().join("self-signed.crt")).unwrap()
        );
        let bad = TlsCertificate {
            domains: vec!["x.test".into()],
            cert: d.path().join("missing.crt"),
            key: d.path().join("missing.key"),
        };
        let Err(err) = acceptor(d.path(), "localhost", &[bad]) else {
            panic!("a missing certificate file was accepted");
        };
        assert!(err.to_string().contains("missing.crt"), "{err}");
    }
}
