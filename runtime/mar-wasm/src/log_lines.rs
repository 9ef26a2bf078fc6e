//! A guest's stdout (components) and stderr (both kinds) as log lines: bytes are cut into
//! lines, each at most `MAX_LINE` bytes, and handed to the app's log as they complete.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Where a guest's lines go (the runtime writes them to the app's log as `app[wasm]`).
pub type LogSink = Arc<dyn Fn(&str) + Send + Sync>;

/// Longest line kept whole; a longer one is cut, as the supervisor cuts processes' lines.
const MAX_LINE: usize = 8 * 1024;

/// An `AsyncWrite` that turns what is written into log lines; the rest of a last line without
/// a newline is written when it is dropped.
pub(crate) struct LogLines {
    sink: LogSink,
    partial: Vec<u8>,
}

impl LogLines {
    pub(crate) fn new(sink: LogSink) -> Self {
        Self {
            sink,
            partial: Vec::new(),
        }
    }

    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.partial);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        (self.sink)(line);
        self.partial.clear();
    }

    fn take(&mut self, buf: &[u8]) {
        for &b in buf {
            if b == b'\n' {
                self.emit();
            } else {
                self.partial.push(b);
                if self.partial.len() >= MAX_LINE {
                    self.emit();
                }
            }
        }
    }
}

impl Drop for LogLines {
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            self.emit();
        }
    }
}

impl tokio::io::AsyncWrite for LogLines {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.take(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn bytes_become_bounded_lines() {
        let got = Arc::new(Mutex::new(Vec::<String>::new()));
        let g = got.clone();
        let sink: LogSink = Arc::new(move |l: &str| g.lock().unwrap().push(l.to_owned()));
        let mut w = LogLines::new(sink);
        w.take(b"one\r\ntw");
        w.take(b"o\n");
        w.take(&vec![b'x'; MAX_LINE + 3]);
        w.take(b"\nlast");
        drop(w);
        let got = got.lock().unwrap();
        assert_eq!(got[0], "one");
        assert_eq!(got[1], "two");
        assert_eq!(got[2].len(), MAX_LINE);
        assert_eq!(got[3], "xxx");
        assert_eq!(got[4], "last");
        assert_eq!(got.len(), 5);
    }
}
