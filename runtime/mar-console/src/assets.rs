//! The console's files (its page, script, styles and icon), compiled into the binary (so `mar serve` alone serves it and
//! nothing is fetched from the internet), and the headers every console response carries.

use http::{HeaderMap, HeaderValue, header};

/// A file of the console.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Its bytes.
    pub body: &'static [u8],
    /// Its `Content-Type`.
    pub content_type: &'static str,
}

/// What a console page may load and do: its own scripts, styles and API only; no inline
/// script or style, no framing, no form posted elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The file served at `path` (`/` is the page; `/console/NAME` the rest).
pub fn asset(path: &str) -> Option<Asset> {
    let (body, content_type): (&'static [u8], _) = match path {
        "/" | "/console" | "/console/" => (
            include_bytes!("../assets/index.html"),
            "text/html; charset=utf-8",
        ),
        "/console/console.js" => (
            include_bytes!("../assets/console.js"),
            "text/javascript; charset=utf-8",
        ),
        "/console/console.css" => (
            include_bytes!("../assets/console.css"),
            "text/css; charset=utf-8",
        ),
        "/console/favicon.svg" => (include_bytes!("../assets/favicon.svg"), "image/svg+xml"),
        _ => return None,
    };
    Some(Asset { body, content_type })
}

/// The headers of every console response: the policy above, no sniffing, no referrer, no
/// caching of anything that could hold a session's data.
pub fn security_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_files_are_served_and_nothing_else() {
        let page = asset("/").map(|a| a.content_type);
        assert_eq!(page, Some("text/html; charset=utf-8"));
        assert!(asset("/console/console.js").is_some());
        assert!(asset("/console/console.css").is_some());
        assert!(asset("/console/favicon.svg").is_some());
        for other in [
            "/console/../Cargo.toml",
            "/console/lib.rs",
            "/index.html",
            "/v1/apps",
        ] {
            assert!(asset(other).is_none(), "{other}");
        }
    }

    #[test]
    fn the_page_loads_nothing_inline_or_from_elsewhere() {
        let page = String::from_utf8_lossy(asset("/").map_or(&[][..], |a| a.body)).to_lowercase();
        assert!(!page.contains("<script>"), "inline script");
        assert!(!page.contains("style="), "inline style");
        assert!(!page.contains("http://") && !page.contains("https://"));
    }
}
