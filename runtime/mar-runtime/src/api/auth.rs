//! Who may call the platform: requests carrying the admin token, as `Bearer TOKEN` or as the
//! password of HTTP Basic (what git sends), and the web console's pages on a signed-in session
//! (its cookie, from the console's own site, with the CSRF token for a change). The `Admin`
//! extractor guards every API route.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use http::{HeaderMap, StatusCode, header};

use super::{ApiError, Platform};

/// Compares in time independent of where the strings differ.
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    mar_http::credentials::secrets_match(a, b)
}

/// Whether the request carries the admin token: `Bearer TOKEN`, or HTTP Basic with the token
/// as password (git sends that).
pub(super) fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let (scheme, cred) = value.split_once(' ').unwrap_or((value, ""));
    let cred = cred.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return same(cred.as_bytes(), token.as_bytes());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let Some(decoded) = base64_decode(cred) else {
            return false;
        };
        let pass = decoded.splitn(2, |b| *b == b':').nth(1).unwrap_or(&[]);
        return same(pass, token.as_bytes());
    }
    false
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s.bytes().filter(|b| *b != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= val(*c)? << (18 - 6 * i);
        }
        let n = chunk.len();
        if n < 2 {
            return None;
        }
        out.push((acc >> 16) as u8);
        if n > 2 {
            out.push((acc >> 8) as u8);
        }
        if n > 3 {
            out.push(acc as u8);
        }
    }
    Some(out)
}

/// Extractor that admits only requests with the admin token or a console session that may
/// make them.
pub struct Admin;

impl FromRequestParts<Arc<Platform>> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, p: &Arc<Platform>) -> Result<Self, ApiError> {
        if authorized(&parts.headers, &p.token) {
            return Ok(Admin);
        }
        if parts.headers.contains_key(header::AUTHORIZATION) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "invalid API token: use the token that `mar auth:token` prints on the server",
            ));
        }
        let host = request_host(parts);
        match p
            .console
            .authorize(&parts.method, &parts.headers, host.as_deref())
        {
            Ok(()) => Ok(Admin),
            Err(refusal @ mar_console::Refusal::NoSession) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                refusal.message(),
            )),
            Err(refusal) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                refusal.message(),
            )),
        }
    }
}

/// The request's own host and port, as a browser's `Origin` names them.
pub(super) fn request_host(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn tokens_in_bearer_and_basic() {
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, "t0k"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer t0k"),
        );
        assert!(authorized(&h, "t0k"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("BEARER t0k"),
        );
        assert!(authorized(&h, "t0k"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer t0x"),
        );
        assert!(!authorized(&h, "t0k"));
        // "git:t0k"
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic Z2l0OnQwaw=="),
        );
        assert!(authorized(&h, "t0k"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic Z2l0OnQwaA=="),
        );
        assert!(!authorized(&h, "t0k"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert!(!authorized(&h, "t0k"));
    }
}
