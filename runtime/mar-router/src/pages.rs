//! Error pages: HTML for browsers, JSON for API clients, with the Heroku-style code users
//! search for. Only platform errors use these; an app's own 4xx/5xx pass through untouched.

use http::{HeaderValue, Response, StatusCode, header};

use crate::{Body, full};

/// Builds an error response. `json` picks `application/json` over HTML.
pub fn error_response(
    status: StatusCode,
    code: &str,
    title: &str,
    detail: &str,
    request_id: &str,
    json: bool,
) -> Response<Body> {
    let (ctype, body) = if json {
        let v = serde_json_escape(code, title, detail, request_id);
        ("application/json", v)
    } else {
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
        };
        (
            "text/html; charset=utf-8",
            format!(
                "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{status} {title}</title>\n\
                 <style>body{{font-family:sans-serif;max-width:40em;margin:4em auto;color:#333}}code{{background:#eee;padding:0 .3em}}</style></head>\n\
                 <body><h1>{title}</h1>\n<p>{detail}</p>\n<p><small>mini-MAR router &middot; code <code>{code}</code> &middot; status {status} &middot; request id <code>{rid}</code></small></p>\n</body></html>\n",
                status = status.as_u16(),
                title = esc(title),
                detail = esc(detail),
                code = esc(code),
                rid = esc(request_id),
            ),
        )
    };
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn serde_json_escape(code: &str, title: &str, detail: &str, rid: &str) -> String {
    fn q(s: &str) -> String {
        let mut out = String::with_capacity(s.len() + 2);
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }
    format!(
        "{{\"error\":{{\"code\":{},\"reason\":{},\"message\":{},\"request_id\":{}}}}}\n",
        q(code),
        q(title),
        q(detail),
        q(rid)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_escaped() {
        let s = serde_json_escape("H14", "No \"web\"", "a\nb", "x");
        assert_eq!(
            s,
            "{\"error\":{\"code\":\"H14\",\"reason\":\"No \\\"web\\\"\",\"message\":\"a\\u000ab\",\"request_id\":\"x\"}}\n"
        );
    }
}
