//! Idle keep-alive connections to app instances, per address. A connection is only reused
//! if it is still quiet: one the app closed (or wrote to unasked) is dropped at checkout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Idle connections kept per instance.
const MAX_IDLE_PER_ADDR: usize = 1024;
/// An idle connection older than this is closed (apps' own keep-alive timeouts are often
/// shorter; those connections are caught as closed at checkout).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections of every address are swept at most this often (at a check-in).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

struct Idle {
    stream: TcpStream,
    since: Instant,
}

/// The pool.
#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<Idles>,
}

#[derive(Default)]
struct Idles {
    by_addr: HashMap<SocketAddr, Vec<Idle>>,
    swept: Option<Instant>,
}

impl Pool {
    /// A quiet idle connection to `addr`, newest first.
    pub fn take(&self, addr: SocketAddr) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.by_addr.get_mut(&addr)?;
        while let Some(c) = list.pop() {
            if c.since.elapsed() < IDLE_TIMEOUT && is_quiet(&c.stream) {
                return Some(c.stream);
            }
        }
        None
    }

    /// Returns a connection whose last response was read completely.
    pub fn put(&self, addr: SocketAddr, stream: TcpStream) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle
            .swept
            .is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY)
        {
            // Instances come and go: drop what is stale or closed everywhere, and forget
            // empty entries, so connections to retired instances do not linger.
            idle.swept = Some(now);
            idle.by_addr.retain(|_, list| {
                list.retain(|c| now.duration_since(c.since) < IDLE_TIMEOUT && is_quiet(&c.stream));
                !list.is_empty()
            });
        }
        let list = idle.by_addr.entry(addr).or_default();
        // Oldest first: drop expired ones from the front.
        let expired = list
            .iter()
            .take_while(|c| now.duration_since(c.since) >= IDLE_TIMEOUT)
            .count();
        list.drain(..expired);
        if list.len() < MAX_IDLE_PER_ADDR {
            list.push(Idle { stream, since: now });
        }
    }
}

/// Whether nothing arrived on an idle connection (no data, no FIN): the reactor's cached
/// readiness says so without a syscall; when it says readable, one non-blocking read decides.
fn is_quiet(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn closed_connections_are_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::default();
        let client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        pool.put(addr, client);
        let client = pool.take(addr).expect("a quiet connection is reused");
        pool.put(addr, client);
        server.shutdown().await.unwrap();
        drop(server);
        // The FIN reaches the reactor on one of its next turns.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(c) = pool.take(addr) {
            assert!(
                Instant::now() < deadline,
                "a closed connection still looks quiet"
            );
            pool.put(addr, c);
            tokio::task::yield_now().await;
        }
        assert!(pool.take(addr).is_none());
    }
}
