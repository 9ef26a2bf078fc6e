//! Outbound HTTP from components, denied by default: an app lists the hosts its guests may
//! call (`allowed_outbound_hosts` in its manifest, as in Spin), and even a listed host is
//! refused when it resolves to this machine or a link-local address, because requests from
//! the `mar` process would otherwise reach other apps' ports and the platform from inside the
//! firewall that keeps apps' processes off them.

use std::net::IpAddr;
use std::sync::Arc;

use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// One allowed destination: `scheme://host[:port]`, where the scheme may be `*` (then with a
/// port), the host `*` or `*.domain`, and the port `*`; without a port, the scheme's default.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    scheme: Option<String>,
    host: HostPattern,
    /// `None`: any port.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Exact(String),
    Suffix(String),
}

/// The hosts an app's guests may call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    patterns: Vec<Pattern>,
}

impl AllowedHosts {
    /// Parses the manifest's list; an entry that is not `scheme://host[:port]` is an error
    /// naming it, so a typo fails the push rather than deny at run time.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut patterns = Vec::new();
        for e in entries {
            patterns.push(parse_pattern(e).ok_or_else(|| {
                format!("allowed_outbound_hosts: {e:?} is not scheme://host[:port] (like https://api.example.com or https://*.example.com:8443)")
            })?);
        }
        Ok(Self { patterns })
    }

    /// Whether nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `scheme://host:port` matches an entry.
    pub fn permits(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        self.patterns.iter().any(|p| {
            p.scheme.as_deref().is_none_or(|s| s == scheme)
                && match &p.host {
                    HostPattern::Any => true,
                    HostPattern::Exact(h) => *h == host,
                    HostPattern::Suffix(s) => host.ends_with(s.as_str()) && host.len() > s.len(),
                }
                && p.port.is_none_or(|want| want == port)
        })
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

fn parse_pattern(s: &str) -> Option<Pattern> {
    let (scheme, rest) = s.split_once("://")?;
    let scheme = match scheme {
        "*" => None,
        "http" | "https" => Some(scheme.to_owned()),
        _ => return None,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return None;
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, "*")) => (h, None),
        Some((h, p)) => (h, Some(p.parse::<u16>().ok()?)),
        // Without a port, the scheme's default; `*://` must say which ports.
        None => (rest, Some(default_port(scheme.as_deref()?)?)),
    };
    let host = host.to_ascii_lowercase();
    let host = if host == "*" {
        HostPattern::Any
    } else if let Some(domain) = host.strip_prefix("*.") {
        if domain.is_empty() || domain.contains('*') {
            return None;
        }
        HostPattern::Suffix(format!(".{domain}"))
    } else if host.is_empty() || host.contains('*') {
        return None;
    } else {
        HostPattern::Exact(host)
    };
    Some(Pattern { scheme, host, port })
}

/// Addresses a guest may never reach, whatever the app allows: this machine (loopback, and
/// every address of its interfaces: `mar serve` makes the request, and the firewall lets its
/// user reach every app's port, so the host's LAN address would be a way around the router),
/// link-local (cloud metadata at 169.254.169.254), unspecified and multicast.
pub fn forbidden_address(ip: IpAddr) -> bool {
    forbidden_kind(ip) || own_address(ip)
}

/// Whether `ip` is an address of one of this machine's interfaces; when they cannot be
/// listed, every address is taken for one (fail closed).
fn own_address(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match nix::ifaddrs::getifaddrs() {
        Ok(mut interfaces) => interfaces.any(|i| {
            i.address.is_some_and(|a| {
                a.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())) == Some(ip)
                    || a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())) == Some(ip)
            })
        }),
        Err(_) => true,
    }
}

/// Addresses that are never another machine's by their kind alone.
fn forbidden_kind(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                // 0.0.0.0/8 is "this network": Linux connects it to this machine.
                || v4.octets()[0] == 0
                || v4.is_multicast()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_kind(IpAddr::V4(v4));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unicast_link_local()
        }
    }
}

/// The `wasi:http` hooks of one app's stores: the outbound policy in `send_request`.
pub(crate) struct OutboundPolicy {
    pub(crate) allowed: Arc<AllowedHosts>,
    /// Where refusals are said (the app's log).
    pub(crate) log: crate::LogSink,
}

type Sent = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Sent {
        drop(fut);
        let allowed = self.allowed.clone();
        let log = self.log.clone();
        Box::new(async move {
            let uri = request.uri();
            let scheme = uri.scheme_str().unwrap_or("https").to_owned();
            let host = uri.host().unwrap_or("").to_owned();
            let port = uri
                .port_u16()
                .or_else(|| default_port(&scheme))
                .unwrap_or(0);
            if !allowed.permits(&scheme, &host, port) {
                log(&format!(
                    "outbound request to {scheme}://{host}:{port} denied: not in allowed_outbound_hosts"
                ));
                return Err(Error::HttpRequestDenied);
            }
            let addrs = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
                .await
                .map_err(|_| Error::DnsError {
                    rcode: Some("lookup failed".into()),
                    info_code: None,
                })?;
            let mut vetted = None;
            for a in addrs {
                if forbidden_address(a.ip()) {
                    log(&format!(
                        "outbound request to {scheme}://{host}:{port} denied: {} is this machine or link-local",
                        a.ip()
                    ));
                    return Err(Error::DestinationIpProhibited);
                }
                vetted.get_or_insert(a);
            }
            let Some(vetted) = vetted else {
                return Err(Error::DnsError {
                    rcode: Some("no address".into()),
                    info_code: None,
                });
            };
            // A plain-HTTP request goes to the address just checked, not to a second lookup
            // whose answer could differ (DNS rebinding onto this machine); its Host header
            // keeps the name. Over HTTPS the certificate must name the host, which a rebound
            // address on this machine cannot present.
            let mut request = request;
            if scheme == "http" {
                let pinned = format!(
                    "http://{vetted}{}",
                    request.uri().path_and_query().map_or("/", |p| p.as_str())
                );
                *request.uri_mut() = pinned.parse().map_err(|_| Error::HttpRequestUriInvalid)?;
            }
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_address_of_this_machine_is_forbidden() {
        let own: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
            .unwrap()
            .filter_map(|i| i.address)
            .filter_map(|a| {
                a.as_sockaddr_in()
                    .map(|s| IpAddr::V4(s.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
            })
            .collect();
        assert!(!own.is_empty());
        for ip in own {
            assert!(forbidden_address(ip), "{ip}");
        }
        assert!(forbidden_address("0.1.2.3".parse().unwrap()));
        assert!(forbidden_address("::ffff:127.0.0.1".parse().unwrap()));
        // An address no interface here has (TEST-NET-3) is another machine's.
        assert!(!forbidden_address("203.0.113.7".parse().unwrap()));
    }

    fn hosts(list: &[&str]) -> AllowedHosts {
        AllowedHosts::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn nothing_is_allowed_by_default() {
        let none = AllowedHosts::default();
        assert!(none.is_empty());
        assert!(!none.permits("https", "example.com", 443));
    }

    #[test]
    fn exact_hosts_with_default_and_explicit_ports() {
        let h = hosts(&["https://api.example.com", "http://other.test:8080"]);
        assert!(h.permits("https", "api.example.com", 443));
        assert!(h.permits("https", "API.example.com", 443));
        assert!(!h.permits("https", "api.example.com", 8443));
        assert!(!h.permits("http", "api.example.com", 80));
        assert!(h.permits("http", "other.test", 8080));
        assert!(!h.permits("http", "other.test", 80));
        assert!(!h.permits("https", "evil.com", 443));
    }

    #[test]
    fn wildcards() {
        let h = hosts(&["https://*.example.com", "*://any.test:*"]);
        assert!(h.permits("https", "a.example.com", 443));
        assert!(!h.permits("https", "example.com", 443));
        assert!(!h.permits("https", "evilexample.com", 443));
        assert!(h.permits("http", "any.test", 1234));
        assert!(h.permits("https", "any.test", 443));
    }

    #[test]
    fn malformed_entries_are_refused() {
        for bad in [
            "example.com",
            "ftp://x.com",
            "https://",
            "https://x.com/path",
            "https://user@x.com",
            "https://x.com:99999",
            "https://*.",
            "https://a*.com",
            "*://x.com",
        ] {
            assert!(
                AllowedHosts::parse(&[bad.to_string()]).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn this_machine_is_never_reachable() {
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "0.0.0.0",
            "169.254.169.254",
            "::1",
            "::ffff:127.0.0.1",
            "fe80::1",
            "224.0.0.1",
        ] {
            assert!(forbidden_address(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "10.0.0.1", "2001:db8::1"] {
            assert!(!forbidden_address(ip.parse().unwrap()), "{ip}");
        }
    }
}
