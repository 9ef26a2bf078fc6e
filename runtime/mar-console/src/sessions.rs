//! The console's sign-in sessions, kept in memory: signing in with the admin token opens one
//! (a random id in an HttpOnly, SameSite=Strict cookie, `Secure` over HTTPS, expiring after a
//! fixed time), signing out ends it here, and a restart of `mar serve` ends them all. A change
//! made with a session needs the session's CSRF token in a header, which only the console's own
//! page can read (from `GET /console/session`); a request another site makes is refused even
//! before that, by its `Origin` and `Sec-Fetch-Site`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, Method, header};

/// The session cookie's name.
pub const COOKIE: &str = "mar_console";
/// The header a change made with a session carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Most sessions open at once: signing in again past it ends the oldest.
const MAX_SESSIONS: usize = 256;

/// Why a request is not let through on a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No cookie, or one of no open session (never opened, signed out, expired).
    NoSession,
    /// A change without the session's CSRF token.
    NoCsrfToken,
    /// The request came from another site (its `Origin` or `Sec-Fetch-Site` says so).
    CrossSite,
}

impl Refusal {
    /// What the refused client is told.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::NoSession => {
                "missing API token: send `Authorization: Bearer TOKEN` (see `mar auth:token`), or sign in to the console"
            }
            Refusal::NoCsrfToken => {
                "a change made with a console session needs the session's X-CSRF-Token header"
            }
            Refusal::CrossSite => "a console session is not accepted from another site",
        }
    }
}

/// What the console's page learns of its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    /// The token its changes carry in [`CSRF_HEADER`].
    pub csrf: String,
    /// When it ends, RFC 3339.
    pub expires_at: String,
}

struct Entry {
    csrf: String,
    ends: Instant,
    ends_at: SystemTime,
}

/// The open sessions.
pub struct Sessions {
    lifetime: Duration,
    open: Mutex<HashMap<String, Entry>>,
}

impl Sessions {
    /// Sessions that end `lifetime` after signing in.
    pub fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Opens a session (the caller has checked the token): its id, for the cookie, and its view.
    pub fn open(&self) -> Result<(String, SessionView), getrandom::Error> {
        let id = random_hex()?;
        let entry = Entry {
            csrf: random_hex()?,
            ends: Instant::now() + self.lifetime,
            ends_at: SystemTime::now() + self.lifetime,
        };
        let view = view(&entry);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        open.retain(|_, e| e.ends > now);
        while open.len() >= MAX_SESSIONS {
            let oldest = open
                .iter()
                .min_by_key(|(_, e)| e.ends)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => open.remove(&k),
                None => break,
            };
        }
        open.insert(id.clone(), entry);
        Ok((id, view))
    }

    /// The session the request's cookies name, while it is open. Every `mar_console` cookie
    /// counts, not only the first: an app's page (`APP.DOMAIN`) can set one for the parent
    /// domain with a longer path, which the browser sends before the console's own, and that
    /// must not hide the real session ("cookie tossing").
    pub fn find(&self, headers: &HeaderMap) -> Option<SessionView> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        cookies(headers)
            .find_map(|id| open.get(id).filter(|e| e.ends > now))
            .map(view)
    }

    /// Ends the request's session (every open one its cookies name); whether there was one.
    pub fn close(&self, headers: &HeaderMap) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mut closed = false;
        for id in cookies(headers) {
            closed |= open.remove(id).is_some();
        }
        closed
    }

    /// Whether a request without the admin token may be made on its session: one is open, the
    /// request does not come from another site (`host` is the request's own host and port),
    /// and a change carries the session's CSRF token.
    pub fn authorize(
        &self,
        method: &Method,
        headers: &HeaderMap,
        host: Option<&str>,
    ) -> Result<(), Refusal> {
        let session = self.find(headers).ok_or(Refusal::NoSession)?;
        if self.cross_site(headers, host) {
            return Err(Refusal::CrossSite);
        }
        let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        if safe {
            return Ok(());
        }
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if constant_time_eq(sent.as_bytes(), session.csrf.as_bytes()) {
            Ok(())
        } else {
            Err(Refusal::NoCsrfToken)
        }
    }

    /// Whether the browser says the request comes from another site than `host` (the request's
    /// own host and port): `Sec-Fetch-Site: cross-site`, or an `Origin` of another host.
    pub fn cross_site(&self, headers: &HeaderMap, host: Option<&str>) -> bool {
        from_another_site(headers, host)
    }

    /// The `Set-Cookie` value that carries session `id`.
    pub fn cookie_for(&self, id: &str, secure: bool) -> String {
        format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.lifetime.as_secs(),
            if secure { "; Secure" } else { "" }
        )
    }

    /// The `Set-Cookie` value that removes the cookie.
    pub fn cookie_cleared(secure: bool) -> String {
        format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            if secure { "; Secure" } else { "" }
        )
    }
}

fn view(e: &Entry) -> SessionView {
    SessionView {
        csrf: e.csrf.clone(),
        expires_at: humantime::format_rfc3339_seconds(e.ends_at).to_string(),
    }
}

/// The session ids in the request's cookies: every non-empty `mar_console` value, in order.
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(name, value)| *name == COOKIE && !value.is_empty())
        .map(|(_, value)| value)
}

/// Whether the browser says the request comes from another site or origin: `Sec-Fetch-Site`
/// of `cross-site` or `same-site` (an app's page, at `APP.DOMAIN`, is the console's site
/// but not its origin: its `<script src>` or `<img>` send the SameSite=Strict cookie and no
/// `Origin`), or an `Origin` whose host is not the request's own.
fn from_another_site(headers: &HeaderMap, host: Option<&str>) -> bool {
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if matches!(fetch_site, Some("cross-site" | "same-site")) {
        return true;
    }
    match headers.get(header::ORIGIN).map(|v| v.to_str()) {
        None => false,
        Some(Ok(origin)) => {
            let authority = origin.split_once("://").map(|(_, a)| a);
            authority.is_none() || authority != host
        }
        Some(Err(_)) => true,
    }
}

fn random_hex() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_session_reads_with_its_cookie_and_changes_with_its_token() {
        let s = Sessions::new(Duration::from_secs(60));
        let (id, view) = s.open().unwrap();
        let cookie = format!("theme=dark; {COOKIE}={id}");
        let host = Some("localhost:8080");
        assert_eq!(
            s.authorize(&Method::GET, &with(&[("cookie", &cookie)]), host),
            Ok(())
        );
        assert_eq!(
            s.authorize(&Method::POST, &with(&[("cookie", &cookie)]), host),
            Err(Refusal::NoCsrfToken)
        );
        let wrong = with(&[("cookie", &cookie), (CSRF_HEADER, "0".repeat(64).as_str())]);
        assert_eq!(
            s.authorize(&Method::DELETE, &wrong, host),
            Err(Refusal::NoCsrfToken)
        );
        let right = with(&[
            ("cookie", &cookie),
            (CSRF_HEADER, &view.csrf),
            ("origin", "http://localhost:8080"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(s.authorize(&Method::PATCH, &right, host), Ok(()));
        assert_eq!(s.find(&right), Some(view));
    }

    #[test]
    fn another_site_is_refused_even_with_the_cookie_and_the_token() {
        let s = Sessions::new(Duration::from_secs(60));
        let (id, view) = s.open().unwrap();
        let cookie = format!("{COOKIE}={id}");
        let host = Some("localhost:8080");
        for (name, value) in [
            ("origin", "http://evil.localhost:8080"),
            ("origin", "http://localhost:8081"),
            ("origin", "null"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "same-site"),
        ] {
            let h = with(&[
                ("cookie", &cookie),
                (CSRF_HEADER, &view.csrf),
                (name, value),
            ]);
            assert_eq!(
                s.authorize(&Method::POST, &h, host),
                Err(Refusal::CrossSite),
                "{name}: {value}"
            );
        }
    }

    #[test]
    fn a_tossed_cookie_beside_the_session_does_not_hide_it() {
        let s = Sessions::new(Duration::from_secs(60));
        let (id, view) = s.open().unwrap();
        let host = Some("localhost:8080");
        let mut two_headers = with(&[("cookie", &format!("{COOKIE}=junk"))]);
        two_headers.append(
            header::COOKIE,
            HeaderValue::from_str(&format!("{COOKIE}={id}")).unwrap(),
        );
        for h in [
            with(&[("cookie", &format!("{COOKIE}=junk; {COOKIE}={id}"))]),
            with(&[("cookie", &format!("{COOKIE}=; {COOKIE}={id}; {COOKIE}=x"))]),
            two_headers,
        ] {
            assert_eq!(s.find(&h), Some(view.clone()));
            assert_eq!(s.authorize(&Method::GET, &h, host), Ok(()));
        }
        let h = with(&[("cookie", &format!("{COOKIE}=junk; {COOKIE}={id}"))]);
        assert!(s.close(&h));
        assert!(s.find(&h).is_none());
    }

    #[test]
    fn signing_out_expiry_and_unknown_ids_end_sessions() {
        let s = Sessions::new(Duration::from_secs(60));
        let (id, _) = s.open().unwrap();
        let h = with(&[("cookie", &format!("{COOKIE}={id}"))]);
        assert!(s.close(&h));
        assert_eq!(s.authorize(&Method::GET, &h, None), Err(Refusal::NoSession));
        let none = with(&[("cookie", &format!("{COOKIE}=feed"))]);
        assert_eq!(
            s.authorize(&Method::GET, &none, None),
            Err(Refusal::NoSession)
        );
        let short = Sessions::new(Duration::ZERO);
        let (id, _) = short.open().unwrap();
        let h = with(&[("cookie", &format!("{COOKIE}={id}"))]);
        assert!(short.find(&h).is_none());
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_over_https() {
        let s = Sessions::new(Duration::from_secs(3600));
        let c = s.cookie_for("abc", true);
        for part in [
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Max-Age=3600",
            "Path=/",
        ] {
            assert!(c.contains(part), "{c}");
        }
        assert!(!s.cookie_for("abc", false).contains("Secure"));
        assert!(Sessions::cookie_cleared(false).contains("Max-Age=0"));
    }

    #[test]
    fn open_sessions_are_bounded() {
        let s = Sessions::new(Duration::from_secs(60));
        let (first, _) = s.open().unwrap();
        for _ in 0..MAX_SESSIONS {
            s.open().unwrap();
        }
        let h = with(&[("cookie", &format!("{COOKIE}={first}"))]);
        assert!(s.find(&h).is_none());
        assert!(s.open.lock().unwrap().len() <= MAX_SESSIONS);
    }
}
