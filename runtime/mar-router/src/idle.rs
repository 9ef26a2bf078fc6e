//! The idle window of a poll-based wrapper (a response body, a request body, a connection to
//! an app): armed when the inner side has nothing to give or take, disarmed by progress, and
//! expired when that lasted the whole window.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::Sleep;

/// See the module docs.
pub(crate) struct IdleWindow {
    /// `None`: no window, waits are never cut (the platform's own log tails and builds).
    window: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl IdleWindow {
    pub fn new(window: impl Into<Option<Duration>>) -> Self {
        Self {
            window: window.into(),
            timer: None,
        }
    }

    /// Progress was made: the next wait starts a new window.
    pub fn progressed(&mut self) {
        self.timer = None;
    }

    /// Called when the inner side is pending: arms the timer on the first wait, and says
    /// whether the window has passed (else `cx` is woken when it does).
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(window) = self.window else {
            return false;
        };
        self.timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(window)))
            .as_mut()
            .poll(cx)
            .is_ready()
    }
}
