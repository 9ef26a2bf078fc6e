//! The response body of a proxied request, wrapped: it keeps the request counted as in flight,
//! cuts a streamed response that stalls longer than the idle window, and when it ends (or the
//! client goes away first: H27; the app breaks off its answer: H18) writes the access log
//! line and the metrics.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use mar_core::AppName;

use crate::failure::Ending;
use crate::idle::IdleWindow;
use crate::metrics::AppMetrics;
use crate::table::InFlight;
use crate::upload::UploadFault;
use crate::{Body, BoxError};

/// Where access log lines go: the app's log, as `mar[router]` lines.
pub type LogSink = Arc<dyn Fn(&AppName, String) + Send + Sync>;

/// What the access log line says about a request, filled in as it goes.
pub(crate) struct Record {
    /// `None` when the access log is off.
    pub sink: Option<LogSink>,
    pub metrics: Arc<AppMetrics>,
    pub app: AppName,
    pub method: String,
    pub path: String,
    pub host: String,
    pub request_id: String,
    pub fwd: String,
    pub dyno: String,
    pub protocol: &'static str,
    pub start: Instant,
    pub service: Duration,
    pub status: u16,
    pub bytes_in: u64,
}

impl Record {
    /// Writes the line: `at=info` normally, `at=error code=… desc=…` for router errors.
    pub fn finish(&self, error: Option<(&str, &str)>, bytes_out: u64) {
        self.metrics
            .request(self.status, self.start.elapsed(), self.bytes_in, bytes_out);
        let Some(sink) = &self.sink else {
            return;
        };
        use std::fmt::Write;
        let mut line = String::with_capacity(256);
        let _ = match error {
            Some((code, desc)) => write!(line, "at=error code={code} desc=\"{desc}\""),
            None => write!(line, "at=info"),
        };
        let _ = write!(
            line,
            " method={} path=\"{}\" host={} request_id={} fwd=\"{}\" dyno={} connect=0ms service={}ms status={} bytes={bytes_out} protocol={}",
            self.method,
            Escaped(&self.path),
            self.host,
            self.request_id,
            self.fwd,
            if self.dyno.is_empty() {
                "-"
            } else {
                &self.dyno
            },
            self.service.as_millis(),
            self.status,
            self.protocol,
        );
        sink(&self.app, line);
    }
}

/// A path with its double quotes escaped, so the log line stays parseable.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find('"') {
            f.write_str(&rest[..i])?;
            f.write_str("%22")?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// A response body that accounts for itself.
pub(crate) struct Tracked {
    inner: Body,
    _in_flight: Option<InFlight>,
    record: Option<Record>,
    bytes: u64,
    idle: IdleWindow,
    ended: bool,
    /// The request's upload, whose failure explains a broken response better than H18.
    upload: Option<UploadFault>,
}

impl Tracked {
    pub fn new(
        inner: Body,
        in_flight: Option<InFlight>,
        record: Record,
        idle_window: Option<Duration>,
    ) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
            record: Some(record),
            bytes: 0,
            idle: IdleWindow::new(idle_window),
            ended: false,
            upload: None,
        }
    }

    /// Blames a failure of the response on the request's upload, when that failed first.
    pub fn with_upload(mut self, fault: UploadFault) -> Self {
        self.upload = Some(fault);
        self
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                this.idle.progressed();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.ended = true;
                if let Some(r) = this.record.take() {
                    r.finish(None, this.bytes);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // The app broke the connection after its response head (Heroku's H18), unless
                // the client's upload failed first and brought the connection down.
                if let Some(r) = this.record.take() {
                    let fault = this.upload.as_ref().and_then(|f| f.get().copied());
                    r.finish(
                        fault.map_or(Ending::Interrupted.code(), |f| Some(f.code())),
                        this.bytes,
                    );
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => {
                // A streamed response may pause, but not forever: past the idle window the
                // router gives up on it (and the client sees the connection end).
                if this.idle.expired(cx) {
                    if let Some(r) = this.record.take() {
                        r.finish(Ending::ResponseIdle.code(), this.bytes);
                    }
                    return Poll::Ready(Some(Err("response idle timeout".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(r) = self.record.take() {
            if self.ended || self.inner.is_end_stream() {
                r.finish(None, self.bytes);
            } else {
                r.finish(Ending::ClientGone.code(), self.bytes);
            }
        }
    }
}
