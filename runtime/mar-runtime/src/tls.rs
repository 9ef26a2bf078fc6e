//! TLS for the router: certificates per host name from `mar.yaml`, chosen by SNI, and for
//! everything else a certificate for `DOMAIN`, `*.DOMAIN`, `localhost` and 127.0.0.1 issued by
//! a local certificate authority that `mar serve` makes on first start and keeps in the data
//! directory (`mar tls:ca` prints its root, to be trusted once). ALPN offers h2 and http/1.1.
//!
//! The certificates `mar.yaml` names are read again when their files change (a renewal by
//! certbot or acme.sh replaces them where they are) or on SIGHUP, without a restart; a set
//! that does not load whole (a key that is not the certificate's, half a renewal) keeps the one
//! being served.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::TlsCertificate;
use crate::private_files::write_private;

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
    /// Making the local authority or its certificate failed.
    #[error("TLS: cannot make the local certificate authority's certificate: {0}")]
    Generate(String),
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// (host pattern, key); patterns are exact names or `*.suffix`.
type ByName = Vec<(String, Arc<CertifiedKey>)>;

#[derive(Debug)]
struct SniResolver {
    /// The configured certificates, swapped whole when they are reloaded.
    by_name: RwLock<Arc<ByName>>,
    /// Certificates for `APP.DOMAIN`, issued by the local authority when first asked for.
    issuer: LocalIssuer,
    /// The local authority's certificate for anything else (the platform's names), and when
    /// it was made: issued again after [`RENEW_AFTER`].
    fallback: Mutex<(Arc<CertifiedKey>, SystemTime)>,
}

/// Whether the platform serves a host name (the router's route table answers).
pub type Served = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Most names the local authority issues certificates for in one run: each is a key and a
/// signature, and a client may ask for any name under the domain.
const MAX_ISSUED: usize = 1024;

/// How long a certificate the local authority issues is valid: 825 days, the longest Apple's
/// platforms accept for a TLS server certificate (mkcert's choice too).
const LEAF_DAYS: i64 = 825;
/// A running server issues its certificates again once they are this old, long before they
/// expire, so a server that runs for years never serves an expired one.
const RENEW_AFTER: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);
/// How long a new local authority is valid (mkcert's: 10 years).
const CA_DAYS: i64 = 3650;

/// The parameters of a server certificate for `names`: valid from a day ago (clients' clocks
/// differ) for [`LEAF_DAYS`], for TLS servers only (serverAuth, digitalSignature: what
/// Apple's platforms and browsers require of a certificate), named after its first name.
fn leaf_params(names: Vec<String>) -> Result<rcgen::CertificateParams, TlsError> {
    let common_name = names.first().cloned().unwrap_or_default();
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "mini-MAR");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(LEAF_DAYS);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// The local authority, issuing at the first handshake for `APP.DOMAIN` a certificate naming
/// exactly that host: clients refuse a wildcard directly under a top-level name (so
/// `*.localhost`, the default domain's, covers nothing), as Caddy's on-demand internal
/// issuer does.
struct LocalIssuer {
    domain: String,
    /// Whether a host is one the platform serves (an app's, or a reserved label's): only
    /// those get a certificate, so junk names cannot use up the bound.
    served: Served,
    key: rcgen::KeyPair,
    params: rcgen::CertificateParams,
    ca_der: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
    /// What was issued, and when.
    issued: std::sync::Mutex<std::collections::HashMap<String, (Arc<CertifiedKey>, SystemTime)>>,
}

impl std::fmt::Debug for LocalIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIssuer")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl LocalIssuer {
    /// The certificate for `host` when it is one label under the domain (issued once).
    fn for_host(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let label = host.strip_suffix(&format!(".{}", self.domain))?;
        let dns_label = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !dns_label {
            return None;
        }
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        let renewing = match issued.get(host) {
            Some((k, at)) if !due(*at) => return Some(k.clone()),
            Some(_) => true,
            None => false,
        };
        // A name the platform no longer serves (a destroyed app's) is not renewed either.
        if (!renewing && issued.len() >= MAX_ISSUED) || !(self.served)(host) {
            return None;
        }
        let key = self.issue(vec![host.to_owned()])?;
        issued.insert(host.to_owned(), (key.clone(), SystemTime::now()));
        Some(key)
    }

    /// A certificate for `names`, signed by the authority, with the authority after it.
    fn issue(&self, names: Vec<String>) -> Option<Arc<CertifiedKey>> {
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let leaf_key = rcgen::KeyPair::generate().ok()?;
        let leaf = leaf_params(names)
            .ok()?
            .signed_by(&leaf_key, &issuer)
            .ok()?;
        let signing = self
            .provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()))
            .ok()?;
        Some(Arc::new(CertifiedKey::new(
            vec![leaf.der().clone(), self.ca_der.clone()],
            signing,
        )))
    }
}

/// Whether a certificate issued at `at` is to be issued again (by the wall clock, which is
/// what clients check validity against; a clock set back leaves it).
fn due(at: SystemTime) -> bool {
    at.elapsed().is_ok_and(|age| age >= RENEW_AFTER)
}

/// The names of the certificate for the platform's own names: `DOMAIN`, `*.DOMAIN`,
/// `localhost` and 127.0.0.1.
fn platform_names(domain: &str) -> Vec<String> {
    vec![
        domain.to_owned(),
        format!("*.{domain}"),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ]
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
        let by_name = self
            .by_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let chosen = host.and_then(|h| {
            // Exact names first, then wildcards.
            by_name
                .iter()
                .find(|(p, _)| !p.starts_with("*.") && *p == h)
                .or_else(|| by_name.iter().find(|(p, _)| matches(p, &h)))
                .map(|(_, k)| k.clone())
                .or_else(|| self.issuer.for_host(&h))
        });
        Some(chosen.unwrap_or_else(|| self.fallback()))
    }
}

impl SniResolver {
    /// The certificate for the platform's names, issued again when it is due.
    fn fallback(&self) -> Arc<CertifiedKey> {
        let mut fallback = self.fallback.lock().unwrap_or_else(|e| e.into_inner());
        if due(fallback.1)
            && let Some(fresh) = self.issuer.issue(platform_names(&self.issuer.domain))
        {
            *fallback = (fresh, SystemTime::now());
        }
        fallback.0.clone()
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
    let pair = CertifiedKey::new(chain, signing);
    // A key that is not the certificate's would fail every handshake: say so now (a renewal
    // caught between writing the certificate and the key is one).
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        pair.keys_match()
    {
        return Err(file_err(
            key,
            format!("is not the key of the certificate in {}", cert.display()),
        ));
    }
    Ok(Arc::new(pair))
}

/// The configured certificates, each file's key and certificate loaded.
fn load_named(provider: &CryptoProvider, certs: &[TlsCertificate]) -> Result<ByName, TlsError> {
    let mut by_name = Vec::new();
    for c in certs {
        let k = load(provider, &c.cert, &c.key)?;
        for d in &c.domains {
            by_name.push((d.to_ascii_lowercase(), k.clone()));
        }
    }
    Ok(by_name)
}

/// What tells a file was replaced: its inode, size and modification time (through symlinks,
/// so certbot's switch of `live/` links counts).
type Stamp = Option<(u64, u64, SystemTime)>;

fn stamps(certs: &[TlsCertificate]) -> Vec<Stamp> {
    use std::os::unix::fs::MetadataExt;
    certs
        .iter()
        .flat_map(|c| [&c.cert, &c.key])
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.ino(), m.len(), m.modified().ok()?)))
        })
        .collect()
}

/// The certificates `mar.yaml` names, as the HTTPS listener serves them, and their reload.
pub struct NamedCertificates {
    configured: Vec<TlsCertificate>,
    provider: Arc<CryptoProvider>,
    resolver: Arc<SniResolver>,
    /// The files' stamps when they were last loaded (or found not to load).
    seen: Mutex<Vec<Stamp>>,
}

impl NamedCertificates {
    /// Whether any configured file changed since it was last read.
    pub fn changed_on_disk(&self) -> bool {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) != stamps(&self.configured)
    }

    /// Reads every configured certificate again and serves the new set, or, if any fails to
    /// load, keeps serving the old one and says why. The number of files' pairs loaded.
    pub fn reload(&self) -> Result<usize, TlsError> {
        // One reload at a time (the look and a SIGHUP can meet): otherwise one that read the
        // old files could swap them in after one that read the new, and stay.
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        // Stamped first: a file replaced while it is read is read again at the next look.
        *seen = stamps(&self.configured);
        let fresh = load_named(&self.provider, &self.configured)?;
        *self
            .resolver
            .by_name
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(self.configured.len())
    }
}

/// The local certificate authority's files in the TLS directory (`ca.crt` is public: `mar
/// tls:ca` prints it; `ca.key` is 0600), and the certificate it issues for the platform's own
/// names.
pub const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const LOCAL_CERT: &str = "local.crt";
const LOCAL_KEY: &str = "local.key";

/// The CA's parameters: rebuilt the same from its key at every start (its name carries the
/// key's fingerprint, so two installations' authorities are told apart), which is all an
/// issuer needs to sign with.
fn ca_params(key: &rcgen::KeyPair) -> Result<rcgen::CertificateParams, TlsError> {
    use rcgen::{BasicConstraints, DnType, IsCa, KeyUsagePurpose, PublicKeyData};
    use sha2::Digest;
    let fingerprint = sha2::Sha256::digest(key.der_bytes());
    let id: String = fingerprint[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("mini-MAR local CA {id}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "mini-MAR");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Makes the local certificate authority on first start (as Caddy's internal issuer and
/// mkcert do: browsers, curl and apps' users can trust its root once, `mar tls:ca`), and at
/// every start a certificate it signs for `DOMAIN`, `*.DOMAIN`, `localhost` and 127.0.0.1
/// (so a changed `--domain` is served at once); the paths of that certificate and its key.
fn local_certificate(
    dir: &Path,
    domain: &str,
) -> Result<(std::path::PathBuf, std::path::PathBuf), TlsError> {
    let made = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let io = |e: std::io::Error| TlsError::Generate(e.to_string());
    std::fs::create_dir_all(dir).map_err(io)?;
    let (ca_cert, ca_key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let key = match std::fs::read_to_string(&ca_key) {
        Ok(pem) if ca_cert.is_file() => rcgen::KeyPair::from_pem(&pem).map_err(made)?,
        _ => {
            let key = rcgen::KeyPair::generate().map_err(made)?;
            let mut params = ca_params(&key)?;
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::days(1);
            params.not_after = now + time::Duration::days(CA_DAYS);
            let cert = params.self_signed(&key).map_err(made)?;
            write_private(&ca_key, key.serialize_pem().as_bytes()).map_err(io)?;
            std::fs::write(&ca_cert, cert.pem()).map_err(io)?;
            key
        }
    };
    let issuer = rcgen::Issuer::new(ca_params(&key)?, &key);
    let leaf_key = rcgen::KeyPair::generate().map_err(made)?;
    let leaf = leaf_params(platform_names(domain))?
        .signed_by(&leaf_key, &issuer)
        .map_err(made)?;
    let (cert, key_path) = (dir.join(LOCAL_CERT), dir.join(LOCAL_KEY));
    write_private(&key_path, leaf_key.serialize_pem().as_bytes()).map_err(io)?;
    // The chain: the leaf, then the authority (clients that trust the root find the path).
    std::fs::write(
        &cert,
        format!(
            "{}{}",
            leaf.pem(),
            std::fs::read_to_string(&ca_cert).map_err(io)?
        ),
    )
    .map_err(io)?;
    Ok((cert, key_path))
}

/// The local authority as an issuer for `APP.DOMAIN` names (its files made already).
fn local_issuer(
    dir: &Path,
    domain: &str,
    provider: &Arc<CryptoProvider>,
    served: Served,
) -> Result<LocalIssuer, TlsError> {
    let made = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let ca_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(dir.join(CA_KEY))
            .map_err(|e| TlsError::Generate(e.to_string()))?,
    )
    .map_err(made)?;
    let ca_der = CertificateDer::pem_file_iter(dir.join(CA_CERT))
        .map_err(|e| TlsError::Generate(e.to_string()))?
        .next()
        .ok_or_else(|| TlsError::Generate("ca.crt holds no certificate".to_owned()))?
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let issuer = LocalIssuer {
        domain: domain.to_ascii_lowercase(),
        served,
        params: ca_params(&ca_key)?,
        key: ca_key,
        ca_der,
        provider: provider.clone(),
        issued: Default::default(),
    };
    Ok(issuer)
}

/// The acceptor for the HTTPS listener, and the handle that reloads its configured
/// certificates.
pub fn acceptor(
    dir: &Path,
    domain: &str,
    certs: &[TlsCertificate],
    served: Served,
) -> Result<(tokio_rustls::TlsAcceptor, Arc<NamedCertificates>), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (cert, key) = local_certificate(dir, domain)?;
    let fallback = load(&provider, &cert, &key)?;
    let issuer = local_issuer(dir, domain, &provider, served)?;
    let seen = stamps(certs);
    let by_name = load_named(&provider, certs)?;
    let resolver = Arc::new(SniResolver {
        by_name: RwLock::new(Arc::new(by_name)),
        issuer,
        fallback: Mutex::new((fallback, SystemTime::now())),
    });
    let named = Arc::new(NamedCertificates {
        configured: certs.to_vec(),
        provider: provider.clone(),
        resolver: resolver.clone(),
        seen: Mutex::new(seen),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), named))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Served {
        Arc::new(|_: &str| true)
    }

    #[test]
    fn wildcards_match_one_label() {
        assert!(matches("*.example.com", "a.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(!matches("*.example.com", "a.b.example.com"));
        assert!(matches("example.com", "example.com"));
    }

    #[test]
    fn certificates_are_issued_for_one_label_under_the_domain_and_bounded() {
        let d = tempfile::tempdir().unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        local_certificate(d.path(), "localhost").unwrap();
        let served: Served = Arc::new(|h: &str| h != "junk.localhost");
        let issuer = local_issuer(d.path(), "localhost", &provider, served).unwrap();
        let first = issuer.for_host("app.localhost").unwrap();
        assert!(
            Arc::ptr_eq(&first, &issuer.for_host("app.localhost").unwrap()),
            "issued once"
        );
        for other in [
            "a.b.localhost",
            "localhost",
            "evil.example",
            "bad_name.localhost",
            ".localhost",
            "junk.localhost",
        ] {
            assert!(issuer.for_host(other).is_none(), "{other}");
        }
        for i in 1..MAX_ISSUED {
            assert!(issuer.for_host(&format!("a{i}.localhost")).is_some());
        }
        assert!(
            issuer.for_host("one-too-many.localhost").is_none(),
            "bounded"
        );
    }

    /// What Apple's platforms and browsers require of a server certificate: at most 825 days
    /// of validity, serverAuth; checked by verifying the chain as a client would, at times.
    #[test]
    fn issued_certificates_are_fit_for_strict_clients() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::{ServerName, UnixTime};
        let d = tempfile::tempdir().unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        local_certificate(d.path(), "localhost").unwrap();
        let issuer = local_issuer(d.path(), "localhost", &provider, all()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(issuer.ca_der.clone()).unwrap();
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let platform = load(
            &rustls::crypto::ring::default_provider(),
            &d.path().join(LOCAL_CERT),
            &d.path().join(LOCAL_KEY),
        )
        .unwrap();
        let app = issuer.for_host("app.localhost").unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let day = std::time::Duration::from_secs(86_400);
        for (key, host) in [(&platform, "localhost"), (&app, "app.localhost")] {
            let leaf = &key.cert[0];
            let name = ServerName::try_from(host).unwrap();
            let at = |t| verifier.verify_server_cert(leaf, &key.cert[1..], &name, &[], t);
            at(UnixTime::since_unix_epoch(now)).unwrap();
            at(UnixTime::since_unix_epoch(now + day * 824)).unwrap();
            assert!(
                at(UnixTime::since_unix_epoch(now + day * 826)).is_err(),
                "expired"
            );
            assert!(
                at(UnixTime::since_unix_epoch(now - day * 2)).is_err(),
                "not yet"
            );
            // id-kp-serverAuth (1.3.6.1.5.5.7.3.1) in an extended key usage.
            let server_auth = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
            assert!(leaf.windows(10).any(|w| w == server_auth), "{host}");
        }
        // Renewed once due, by a running server: a certificate 30 days old is issued again.
        let long_ago = SystemTime::now() - RENEW_AFTER;
        issuer
            .issued
            .lock()
            .unwrap()
            .get_mut("app.localhost")
            .unwrap()
            .1 = long_ago;
        let renewed = issuer.for_host("app.localhost").unwrap();
        assert!(!Arc::ptr_eq(&renewed, &app), "issued again");
        assert!(Arc::ptr_eq(
            &renewed,
            &issuer.for_host("app.localhost").unwrap()
        ));
    }

    #[test]
    fn the_authority_is_made_once_and_signs_the_local_certificate() {
        let d = tempfile::tempdir().unwrap();
        acceptor(d.path(), "localhost", &[], all()).unwrap();
        let ca = std::fs::read(d.path().join(CA_CERT)).unwrap();
        acceptor(d.path(), "apps.test", &[], all()).unwrap();
        assert_eq!(
            ca,
            std::fs::read(d.path().join(CA_CERT)).unwrap(),
            "the same root"
        );
        use std::os::unix::fs::PermissionsExt;
        for key in [CA_KEY, LOCAL_KEY] {
            let mode = std::fs::metadata(d.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{key} is private");
        }
        // A client that trusts the root alone accepts the certificate for the new domain.
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(d.path().join(CA_CERT)).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(d.path().join(LOCAL_CERT))
                .unwrap()
                .map(Result::unwrap)
                .collect();
        let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        use rustls::client::danger::ServerCertVerifier;
        for name in ["x.apps.test", "localhost", "127.0.0.1"] {
            verifier
                .verify_server_cert(
                    &chain[0],
                    &chain[1..],
                    &rustls::pki_types::ServerName::try_from(name).unwrap(),
                    &[],
                    rustls::pki_types::UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let bad = TlsCertificate {
            domains: vec!["x.test".into()],
            cert: d.path().join("missing.crt"),
            key: d.path().join("missing.key"),
        };
        let Err(err) = acceptor(d.path(), "localhost", &[bad], all()) else {
            panic!("a missing certificate file was accepted");
        };
        assert!(err.to_string().contains("missing.crt"), "{err}");
    }

    #[test]
    fn a_renewal_is_seen_and_loaded_and_a_mismatched_key_keeps_the_served_set() {
        let d = tempfile::tempdir().unwrap();
        let (cert, key) = (d.path().join("s.crt"), d.path().join("s.key"));
        let issue = || rcgen::generate_simple_self_signed(vec!["s.example".to_owned()]).unwrap();
        // Replaced by a rename, as renewals do: a new inode, whatever the clock's grain (two
        // writes in place within a few ms can leave the same modification time).
        let put = |path: &Path, text: String| {
            let tmp = path.with_extension("new");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        };
        let first = issue();
        put(&cert, first.cert.pem());
        put(&key, first.signing_key.serialize_pem());
        let configured = vec![TlsCertificate {
            domains: vec!["S.example".to_owned()],
            cert: cert.clone(),
            key: key.clone(),
        }];
        let (_, named) = acceptor(&d.path().join("tls"), "localhost", &configured, all()).unwrap();
        let served = || named.resolver.by_name.read().unwrap().clone();
        let der = |set: &ByName| set[0].1.cert[0].to_vec();
        assert_eq!(served()[0].0, "s.example");
        assert_eq!(der(&served()), first.cert.der().to_vec());
        assert!(!named.changed_on_disk());

        // A new certificate without its key: seen, refused, the first stays served.
        let second = issue();
        put(&cert, second.cert.pem());
        assert!(named.changed_on_disk());
        let err = named.reload().unwrap_err().to_string();
        assert!(err.contains("is not the key of the certificate"), "{err}");
        assert_eq!(der(&served()), first.cert.der().to_vec());
        assert!(
            !named.changed_on_disk(),
            "a refused set is not retried until a file changes"
        );

        // The key follows: loaded.
        put(&key, second.signing_key.serialize_pem());
        assert!(named.changed_on_disk());
        assert_eq!(named.reload().unwrap(), 1);
        assert_eq!(der(&served()), second.cert.der().to_vec());
    }
}
