//! Where EDS webhooks are delivered: an MWS gateway linked in-process (`gateway:ID`, the
//! talk's "EDS webhook → MWS → every client" flow with no user code), or an `http://` URL.
//! A URL on the platform's own domain (an app's `APP.DOMAIN`) goes through the router like
//! any request to the app; any other host is resolved once and reached at that address only
//! if it is not this machine, link-local (cloud metadata), unspecified or multicast, the same
//! rule as WASM guests' outbound requests, so a backend's owner cannot point the server at
//! its own loopback services.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use mar_eds::webhooks::{Delivering, Delivery, Failed, Sink};

/// How long a receiver has to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The runtime's sink.
pub(crate) struct EdsSink {
    pub(crate) gateways: Arc<mar_mws::Gateways>,
    /// The router's plain listener, as this host reaches it.
    pub(crate) router: SocketAddr,
    /// The platform's domain (apps are `APP.DOMAIN`).
    pub(crate) domain: String,
}

/// An `http://HOST[:PORT]/PATH` URL, split.
#[derive(Debug, PartialEq, Eq)]
struct HttpUrl {
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> Result<HttpUrl, String> {
    if url.starts_with("https://") {
        return Err(
            "https webhooks are not delivered yet: use http://, or `mar services:link` for a gateway"
                .to_owned(),
        );
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or("must be an http:// URL")?;
    if url.len() > 2048 || url.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("is not a usable URL".to_owned());
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err("must not carry credentials: use headers".to_owned());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
            h,
            p.parse::<u16>().map_err(|_| "has a bad port".to_owned())?,
        ),
        _ => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("has no host".to_owned());
    }
    Ok(HttpUrl {
        host: host.to_ascii_lowercase(),
        port,
        path: path.to_owned(),
    })
}

impl EdsSink {
    /// Where to connect for `url`, and the Host header to send.
    async fn address(&self, url: &HttpUrl) -> Result<(SocketAddr, String), Failed> {
        if url.host == self.domain || url.host.ends_with(&format!(".{}", self.domain)) {
            return Ok((self.router, url.host.clone()));
        }
        let found = tokio::net::lookup_host((url.host.as_str(), url.port))
            .await
            .map_err(|e| Failed::Retry(format!("cannot resolve {}: {e}", url.host)))?;
        let mut refused = None;
        for addr in found {
            if mar_wasm::outbound::forbidden_address(addr.ip()) {
                refused = Some(addr);
                continue;
            }
            let host = if url.port == 80 {
                url.host.clone()
            } else {
                format!("{}:{}", url.host, url.port)
            };
            return Ok((addr, host));
        }
        Err(match refused {
            Some(a) => Failed::Gone(format!(
                "{} resolves to {}, which webhooks may not reach",
                url.host,
                a.ip()
            )),
            None => Failed::Retry(format!("{} has no address", url.host)),
        })
    }

    async fn post(&self, d: Delivery) -> Result<(), Failed> {
        let url = parse_url(&d.target).map_err(Failed::Gone)?;
        let (addr, host) = self.address(&url).await?;
        let retry = |e: String| Failed::Retry(format!("{}: {e}", d.target));
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| retry(e.to_string()))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| retry(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = http::Request::builder()
            .method(http::Method::POST)
            .uri(&url.path)
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "mini-MAR EDS webhooks");
        for (k, v) in &d.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(Full::new(d.body))
            .map_err(|e| Failed::Gone(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| retry(e.to_string()))?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(retry(format!("answered {status}")))
        }
    }
}

impl Sink for EdsSink {
    fn check(&self, target: &str) -> Result<(), String> {
        let url = parse_url(target)?;
        let own = url.host == self.domain || url.host.ends_with(&format!(".{}", self.domain));
        let forbidden = match url.host.parse::<std::net::IpAddr>() {
            Ok(ip) => mar_wasm::outbound::forbidden_address(ip),
            Err(_) => url.host == "localhost" || url.host.ends_with(".localhost"),
        };
        if forbidden && !own {
            return Err(format!(
                "{} is this machine or a link-local address, which webhooks may not reach (an app here is http://APP.{}/…)",
                url.host, self.domain
            ));
        }
        Ok(())
    }

    fn deliver(&self, d: Delivery) -> Delivering {
        if let Some(id) = d.target.strip_prefix("gateway:") {
            let r = match self.gateways.get(id) {
                Some(g) => g.receive_enginio(&d.body).map_err(Failed::Gone),
                None => Err(Failed::Gone(format!("gateway {id} is gone"))),
            };
            return Box::pin(async move { r });
        }
        let this = EdsSink {
            gateways: self.gateways.clone(),
            router: self.router,
            domain: self.domain.clone(),
        };
        Box::pin(async move {
            tokio::time::timeout(TIMEOUT, this.post(d))
                .await
                .unwrap_or_else(|_| Err(Failed::Retry("no answer in 10 s".to_owned())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_checked() {
        assert_eq!(
            parse_url("http://hooks.example.test:8080/in?x=1").unwrap(),
            HttpUrl {
                host: "hooks.example.test".into(),
                port: 8080,
                path: "/in?x=1".into()
            }
        );
        assert_eq!(parse_url("http://todo.localhost").unwrap().path, "/");
        assert_eq!(parse_url("http://[::1]:81/").unwrap().host, "::1");
        for bad in [
            "ftp://x/",
            "https://x/",
            "http://user:pw@x/",
            "http://x:notaport/",
            "http:///path",
            "http://x/a b",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
