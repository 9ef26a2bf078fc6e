//! The one table of the router's failures: what went wrong with an exchange, and the status,
//! Heroku-style code, description and detail the client's error page and the access log line
//! say about it. Both paths (the HTTP/1.1 fast path and the general hyper path) and in-process
//! targets map their failures here, so the same failure always reads the same way.

use std::time::Duration;

use http::StatusCode;

/// Why an exchange failed before the response's head reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The app's instance refused the connection (or it could not be opened in time).
    Refused,
    /// The instance closed or broke the connection, or sent something that is not HTTP.
    Broken,
    /// No response head within the first-byte timeout.
    Timeout,
    /// An in-process handler stopped the request at a deadline of its own (a WASM guest at
    /// its epoch deadline), before the router's first-byte timeout.
    HandlerDeadline,
    /// The app stopped reading the request body for the idle window without answering.
    AppStalled,
    /// The client's chunked body is malformed.
    BadBody,
    /// The request target cannot be sent on.
    BadTarget,
    /// The Host header is missing (HTTP/1.1), repeated, or disagrees with an absolute-form
    /// target: which app is meant is not clear, and two hops could read it two ways.
    BadHost,
    /// The client's body is over the app's limit (announced or counted).
    TooLarge,
    /// The client stopped sending its body for the idle window.
    ClientIdle,
    /// The client went away or stalled: nobody is left to read a page.
    ClientGone,
    /// An in-process handler failed without an answer (it panicked).
    HandlerFailed,
}

/// What is known when a failure is described.
pub(crate) struct Facts<'a> {
    /// The instance (`web.1`) or in-process target the request went to.
    pub dyno: &'a str,
    /// The router's timeouts.
    pub first_byte: Duration,
    /// The idle window of uploads and streamed responses.
    pub idle: Duration,
    /// The app's largest request body.
    pub max_body: u64,
}

/// An error page's content, and the access log's `code=` and `desc=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Page {
    pub status: StatusCode,
    pub code: &'static str,
    pub desc: &'static str,
    pub detail: String,
}

/// The status logged for a client that went away (nginx's 499): no page is written.
pub(crate) const CLIENT_GONE: u16 = 499;

impl Failure {
    /// The status, log code and description of this failure.
    pub fn head(self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Failure::Refused => (StatusCode::BAD_GATEWAY, "H21", "Connection refused"),
            Failure::Broken => (
                StatusCode::BAD_GATEWAY,
                "H13",
                "Connection closed without response",
            ),
            Failure::Timeout | Failure::AppStalled | Failure::HandlerDeadline => {
                (StatusCode::SERVICE_UNAVAILABLE, "H12", "Request timeout")
            }
            Failure::BadBody | Failure::BadTarget | Failure::BadHost => {
                (StatusCode::BAD_REQUEST, "H400", "Bad request")
            }
            Failure::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "H413",
                "Request body too large",
            ),
            Failure::ClientIdle => (StatusCode::REQUEST_TIMEOUT, "H28", "Client connection idle"),
            Failure::ClientGone => (
                StatusCode::from_u16(CLIENT_GONE).unwrap_or(StatusCode::BAD_REQUEST),
                "H27",
                "Client Request Interrupted",
            ),
            Failure::HandlerFailed => (StatusCode::INTERNAL_SERVER_ERROR, "H500", "Handler failed"),
        }
    }

    /// The log code and description alone.
    pub fn code(self) -> (&'static str, &'static str) {
        let (_, code, desc) = self.head();
        (code, desc)
    }

    /// The page and log code for this failure.
    pub fn page(self, f: &Facts<'_>) -> Page {
        let dyno = f.dyno;
        let detail = match self {
            Failure::Refused => {
                format!("The app's instance {dyno} refused the connection; it may be restarting.")
            }
            Failure::Broken => format!(
                "The app's instance {dyno} closed the connection before sending a complete response."
            ),
            Failure::Timeout => format!(
                "The app ({dyno}) did not start its response within {} seconds.",
                f.first_byte.as_secs()
            ),
            Failure::HandlerDeadline => format!(
                "The app ({dyno}) ran past its own time limit for a request and was stopped."
            ),
            Failure::AppStalled => format!(
                "The app ({dyno}) stopped reading the request for {} seconds without answering.",
                f.idle.as_secs()
            ),
            Failure::BadBody => "The request body's chunked encoding is malformed.".to_owned(),
            Failure::BadTarget => "The request target is not a valid path.".to_owned(),
            Failure::BadHost => "The request needs exactly one Host header, which must agree with an absolute request target.".to_owned(),
            Failure::TooLarge => format!(
                "This app accepts request bodies of at most {} bytes.",
                f.max_body
            ),
            Failure::ClientIdle => format!(
                "The client sent nothing of its request body for {} seconds.",
                f.idle.as_secs()
            ),
            Failure::ClientGone => String::new(),
            Failure::HandlerFailed => format!(
                "The in-process handler {dyno} failed without an answer; see `mar serve`'s output."
            ),
        };
        let (status, code, desc) = self.head();
        Page {
            status,
            code,
            desc,
            detail,
        }
    }

    /// Whether the client gets a page (not when it is gone).
    pub fn answers(self) -> bool {
        self != Failure::ClientGone
    }
}

/// How an exchange ended after the response's head went out, for the access log: the code and
/// description, or `None` when it ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The whole response reached the client.
    Complete,
    /// The client went away during the response (H27).
    ClientGone,
    /// A streamed response paused past the idle window (H12).
    ResponseIdle,
    /// The app broke off its response (H18).
    Interrupted,
}

impl Ending {
    /// The access log's `code=` and `desc=` for this ending.
    pub fn code(self) -> Option<(&'static str, &'static str)> {
        match self {
            Ending::Complete => None,
            Ending::ClientGone => Some(("H27", "Client Request Interrupted")),
            Ending::ResponseIdle => Some(("H12", "Response idle timeout")),
            Ending::Interrupted => Some(("H18", "Server Request Interrupted")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_has_one_page() {
        let facts = Facts {
            dyno: "web.1",
            first_byte: Duration::from_secs(30),
            idle: Duration::from_secs(55),
            max_body: 10,
        };
        let table = [
            (Failure::Refused, 502, "H21"),
            (Failure::Broken, 502, "H13"),
            (Failure::Timeout, 503, "H12"),
            (Failure::AppStalled, 503, "H12"),
            (Failure::HandlerDeadline, 503, "H12"),
            (Failure::BadBody, 400, "H400"),
            (Failure::BadTarget, 400, "H400"),
            (Failure::BadHost, 400, "H400"),
            (Failure::TooLarge, 413, "H413"),
            (Failure::ClientIdle, 408, "H28"),
            (Failure::ClientGone, 499, "H27"),
            (Failure::HandlerFailed, 500, "H500"),
        ];
        for (failure, status, code) in table {
            let page = failure.page(&facts);
            assert_eq!(
                (page.status.as_u16(), page.code),
                (status, code),
                "{failure:?}"
            );
        }
        assert!(Failure::Timeout.page(&facts).detail.contains("30 seconds"));
        assert!(
            Failure::TooLarge
                .page(&facts)
                .detail
                .contains("at most 10 bytes")
        );
        assert!(!Failure::ClientGone.answers());
    }
}
