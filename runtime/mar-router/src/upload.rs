//! A request body on its way to an app through the general path: an upload that stalls past
//! the idle window is cut (H28), and its end is signalled so that the first-byte timer starts
//! when the app has the whole request, not while a large upload is still moving.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::oneshot;

use crate::BoxError;
use crate::failure::Failure;
use crate::idle::IdleWindow;

/// The error an upload that stalled past the idle window ends with.
#[derive(Debug, thiserror::Error)]
#[error("the client sent nothing of its request body for the idle window")]
pub(crate) struct UploadStalled;

/// What went wrong with an upload, once something did: the failure of a request whose body
/// failed on the client's side (the response may be under way by then, and hyper reports only
/// a generic connection error).
pub(crate) type UploadFault = Arc<OnceLock<Failure>>;

/// Wraps a request body; see the module docs.
pub(crate) struct Upload<B> {
    inner: B,
    fault: UploadFault,
    idle: IdleWindow,
    /// Fires (or is dropped) when the body has been sent.
    sent: Option<oneshot::Sender<()>>,
}

impl<B: HttpBody> Upload<B> {
    /// The wrapped body, and what resolves once it has been sent (or given up on).
    pub fn new(inner: B, idle_window: Option<Duration>) -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let mut upload = Self {
            inner,
            fault: UploadFault::default(),
            idle: IdleWindow::new(idle_window),
            sent: Some(tx),
        };
        upload.check_end();
        (upload, rx)
    }

    /// Where the cause of a failed upload will be.
    pub fn fault(&self) -> UploadFault {
        Arc::clone(&self.fault)
    }

    /// The client may stop being polled as soon as its body reports its end (a known length
    /// reached): signal then, not only on the final `None`.
    fn check_end(&mut self) {
        if self.inner.is_end_stream()
            && let Some(tx) = self.sent.take()
        {
            let _ = tx.send(());
        }
    }
}

impl<B> HttpBody for Upload<B>
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progressed();
                this.check_end();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.sent = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                let malformed = is_malformed(e.as_ref());
                let _ = this
                    .fault
                    .set(if e.is::<http_body_util::LengthLimitError>() {
                        Failure::TooLarge
                    } else if malformed {
                        Failure::BadBody
                    } else {
                        Failure::ClientGone
                    });
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => {
                if this.idle.expired(cx) {
                    let _ = this.fault.set(Failure::ClientIdle);
                    return Poll::Ready(Some(Err(Box::new(UploadStalled))));
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

/// Whether a body error is the client's malformed framing: hyper reports a bad chunk size
/// line or chunk end as an I/O error of kind `InvalidInput`/`InvalidData` inside a body error,
/// not as a parse error.
fn is_malformed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_parse)
        {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
            )
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// Runs `request` with the first-byte timeout counted from the moment the body was sent:
/// `None` when the app did not start its response in time.
pub(crate) async fn within_first_byte<F: Future>(
    request: F,
    sent: impl IntoFuture,
    first_byte: Duration,
) -> Option<F::Output> {
    let timer = async {
        // Dropped unsent (the request failed or the body was abandoned): count from now.
        let _ = sent.await;
        tokio::time::sleep(first_byte).await;
    };
    tokio::select! {
        out = request => Some(out),
        () = timer => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    /// A client that never sends its body.
    struct Silent;

    impl HttpBody for Silent {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Pending
        }
    }

    fn boxed(b: Full<Bytes>) -> http_body_util::combinators::BoxBody<Bytes, BoxError> {
        b.map_err(|never| match never {}).boxed()
    }

    #[tokio::test]
    async fn an_empty_body_counts_as_sent_at_once() {
        let (_body, sent) =
            Upload::new(boxed(Full::new(Bytes::new())), Some(Duration::from_secs(1)));
        assert!(sent.await.is_ok());
    }

    #[tokio::test]
    async fn a_known_length_body_signals_after_its_last_frame() {
        let (mut body, mut sent) = Upload::new(
            boxed(Full::new(Bytes::from_static(b"abc"))),
            Some(Duration::from_secs(1)),
        );
        assert!(sent.try_recv().is_err(), "not sent before it was read");
        let frame = body.frame().await;
        assert!(matches!(frame, Some(Ok(_))));
        assert!(sent.await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_upload_ends_with_an_error_after_the_idle_window() {
        let (mut body, _sent) = Upload::new(Silent, Some(Duration::from_secs(5)));
        let start = tokio::time::Instant::now();
        let fault = body.fault();
        let err = body.frame().await.and_then(Result::err);
        assert!(err.is_some_and(|e| e.is::<UploadStalled>()));
        assert_eq!(fault.get(), Some(&Failure::ClientIdle));
        assert!(start.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_byte_timer_starts_when_the_body_is_sent() {
        let (tx, rx) = oneshot::channel();
        let request = async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            "answered"
        };
        // The upload takes 8 s and the app answers 2 s later: within a 5 s first-byte limit.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(8)).await;
            let _ = tx.send(());
        });
        let out = within_first_byte(request, rx, Duration::from_secs(5)).await;
        assert_eq!(out, Some("answered"));

        let (tx, rx) = oneshot::channel::<()>();
        drop(tx);
        let slow = tokio::time::sleep(Duration::from_secs(10));
        assert!(
            within_first_byte(slow, rx, Duration::from_secs(5))
                .await
                .is_none()
        );
    }
}
