//! How the SDK reaches a server: HTTP or HTTPS (rustls), and WebSockets over `ws://` or
//! `wss://` the same way, for the platform API, the terminal and the services alike.
//!
//! HTTPS trusts what curl and git trust on this machine (the system's certificate bundle:
//! `SSL_CERT_FILE`, else the distribution's bundle), plus the PEM file `MAR_CA_CERT` names,
//! plus the roots a caller adds (the CLI adds its local server's own authority). So a server
//! whose certificate mar serve's local authority issued is trusted once `mar tls:ca` has been
//! saved where one of those points, as `curl --cacert` would trust it; a public certificate
//! (Let's Encrypt through `mar.yaml`) is trusted as it is anywhere.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;

use crate::SdkError;

/// The connector of every HTTP client the SDK makes: `http://` as it was, `https://` over
/// rustls with the roots below.
pub(crate) type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The bundles the distributions keep their trusted roots in (Debian and Ubuntu, Fedora and
/// RHEL, Alpine and others), as curl looks for them.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The roots HTTPS is checked against.
#[derive(Clone)]
pub(crate) struct Trust {
    config: Arc<ClientConfig>,
}

impl Trust {
    /// The system's roots and `MAR_CA_CERT`'s, read once per process.
    pub(crate) fn system() -> Result<Self, SdkError> {
        static SYSTEM: OnceLock<Result<Trust, String>> = OnceLock::new();
        SYSTEM
            .get_or_init(|| Self::with_files(&[]).map_err(|e| e.to_string()))
            .clone()
            .map_err(SdkError::Tls)
    }

    /// The system's roots, `MAR_CA_CERT`'s and those of the PEM files `extra`; an error
    /// naming a file that was asked for and could not be read.
    pub(crate) fn with_files(extra: &[PathBuf]) -> Result<Self, SdkError> {
        Self::from_roots(true, extra)
    }

    /// The system's roots alone: what curl and git trust with no option given.
    pub(crate) fn system_bundle() -> Result<Self, SdkError> {
        Self::from_roots(false, &[])
    }

    fn from_roots(named_by_env: bool, extra: &[PathBuf]) -> Result<Self, SdkError> {
        let mut roots = RootCertStore::empty();
        let system = std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .or_else(|| {
                SYSTEM_BUNDLES
                    .iter()
                    .map(PathBuf::from)
                    .find(|p| p.is_file())
            });
        if let Some(bundle) = system {
            // A bundle that cannot be read leaves the other roots, as for curl.
            let _ = add_pem_file(&mut roots, &bundle);
        }
        let named = std::env::var_os("MAR_CA_CERT")
            .filter(|v| named_by_env && !v.is_empty())
            .map(|v| (PathBuf::from(v), "MAR_CA_CERT: "));
        for (file, from) in named
            .into_iter()
            .chain(extra.iter().map(|f| (f.clone(), "")))
        {
            add_pem_file(&mut roots, &file).map_err(|why| SdkError::Tls(format!("{from}{why}")))?;
        }
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| SdkError::Tls(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// An HTTP client's connector that trusts these roots.
    pub(crate) fn connector(&self) -> Connector {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*self.config).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http)
    }

    /// Opens a WebSocket at `req`'s URL (`ws://` or `wss://`), the TLS one checked against
    /// these roots.
    pub(crate) async fn websocket<R: IntoClientRequest>(
        &self,
        req: R,
    ) -> Result<(WebSocketStream<Stream>, Response), WsError> {
        let req = req.into_client_request()?;
        let uri = req.uri().clone();
        let tls = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => return Err(WsError::Url(uri.to_string())),
        };
        let Some(host) = uri.host() else {
            return Err(WsError::Url(uri.to_string()));
        };
        // `[::1]` in a URL is `::1` to the resolver and to SNI.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        let _ = tcp.set_nodelay(true);
        let stream: Stream = if tls {
            let name =
                ServerName::try_from(host.clone()).map_err(|_| WsError::Url(uri.to_string()))?;
            let connector = tokio_rustls::TlsConnector::from(self.config.clone());
            Box::new(connector.connect(name, tcp).await?)
        } else {
            Box::new(tcp)
        };
        Ok(tokio_tungstenite::client_async(req, stream).await?)
    }
}

/// Adds the certificates of a PEM file; an error naming the file when none could be added.
fn add_pem_file(roots: &mut RootCertStore, file: &Path) -> Result<(), String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("cannot read the certificates in {}: {e}", file.display()))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("{} holds no usable certificate", file.display()));
    }
    Ok(())
}

/// A byte stream to a server, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The stream under the SDK's WebSockets.
pub type Stream = Box<dyn Io>;

/// Why a WebSocket could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    #[error("not a ws:// or wss:// URL: {0}")]
    Url(String),
    #[error("{}", describe_io(.0))]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
}

/// A connection's failure in one sentence: a refused certificate says how to trust it.
pub(crate) fn describe_io(e: &std::io::Error) -> String {
    // The TLS layers wrap rustls' error in one `io::Error` or two.
    let mut io = e;
    while let Some(inner) = io
        .get_ref()
        .and_then(|i| i.downcast_ref::<std::io::Error>())
    {
        io = inner;
    }
    match io
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => {
            "the server's certificate is not trusted here (UnknownIssuer); if mar serve's local \
             authority issued it, save the output of `mar tls:ca` on that server to a file and \
             set MAR_CA_CERT to it (or add it to this system's trusted certificates)"
                .to_owned()
        }
        Some(rustls::Error::InvalidCertificate(
            why @ (rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. }),
        )) => format!(
            "the server's certificate is not for the name in the URL ({why:?}); use a name it \
             is for: mar serve's own certificate names its --domain, *.DOMAIN, localhost and \
             127.0.0.1, so from another machine reach it by DOMAIN (or a name mar.yaml has a \
             certificate for)"
        ),
        Some(rustls::Error::InvalidCertificate(why)) => {
            format!("the server's certificate is not valid ({why:?})")
        }
        Some(other) => format!("TLS: {other}"),
        None => e.to_string(),
    }
}
