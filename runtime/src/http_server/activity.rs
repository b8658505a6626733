//! What a connection is doing, told by its socket (bytes arriving) and by its
//! requests (in progress, ended), in atomics the request path writes without a
//! clock: the coarse clock, moved by the server's sweep, is time enough for
//! bounds of seconds.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use prediction_contract::time::millis;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::ConnectionLimits;

/// Unix milliseconds, as of the last sweep: what the request path reads
/// instead of the clock (bounds of seconds need no finer time).
pub(super) static COARSE_NOW_MS: AtomicU64 = AtomicU64::new(0);

fn coarse_now_ms() -> u64 {
    COARSE_NOW_MS.load(Ordering::Relaxed)
}

/// What a connection is doing, as its requests and its socket tell: enough to
/// know when it has been silent or idle too long. Times are the coarse clock's.
#[derive(Debug)]
pub(super) struct Activity {
    /// Requests in progress (their response not yet sent whole).
    in_flight: AtomicUsize,
    /// Since when (unix ms) no request has been in progress.
    idle_since_ms: AtomicU64,
    /// When (unix ms) the first byte of an HTTP/1.1 request head arrived while
    /// idle; 0: none.
    head_since_ms: AtomicU64,
    /// Requests begun on it (none: it is new and silent).
    begun: AtomicU64,
    /// Whether it speaks HTTP/2, whose frames are not request heads.
    http2: AtomicBool,
    /// Whether its first bytes have been seen.
    first_read: AtomicBool,
    /// Set once it has been asked to close; with the time it is given to.
    closing: AtomicBool,
    pub(super) close_grace_ms: AtomicU64,
    pub(super) close: Notify,
}

impl Activity {
    pub(super) fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(coarse_now_ms()),
            head_since_ms: AtomicU64::new(0),
            begun: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            first_read: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            close_grace_ms: AtomicU64::new(0),
            close: Notify::new(),
        }
    }

    /// When (unix ms) the connection should be closed if nothing changes;
    /// `None` while a request is in progress.
    pub(super) fn close_at(&self, limits: ConnectionLimits) -> Option<u64> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let client = millis(limits.client_timeout);
        let idle_since = self.idle_since_ms.load(Ordering::Relaxed);
        if self.begun.load(Ordering::Relaxed) == 0 {
            return Some(idle_since.saturating_add(client));
        }
        let idle_end = idle_since.saturating_add(millis(limits.idle_timeout));
        match self.head_since_ms.load(Ordering::Relaxed) {
            0 => Some(idle_end),
            head => Some(idle_end.min(head.saturating_add(client))),
        }
    }

    /// Asks the connection to close, giving it `grace` to finish; once.
    pub(super) fn ask_to_close(&self, grace: Duration) {
        if !self.closing.swap(true, Ordering::Relaxed) {
            self.close_grace_ms.store(millis(grace), Ordering::Relaxed);
            self.close.notify_one();
        }
    }

    fn saw_bytes(&self, bytes: &[u8]) {
        if !self.first_read.swap(true, Ordering::Relaxed) {
            self.http2
                .store(bytes.starts_with(b"PRI * HTTP/2"), Ordering::Relaxed);
        }
        if self.in_flight.load(Ordering::Relaxed) == 0
            && !self.http2.load(Ordering::Relaxed)
            && self.head_since_ms.load(Ordering::Relaxed) == 0
        {
            self.head_since_ms
                .store(coarse_now_ms().max(1), Ordering::Relaxed);
        }
    }

    /// Counts a request begun; returns how many the connection has begun.
    pub(super) fn request_began(&self) -> u64 {
        let begun = self.begun.fetch_add(1, Ordering::Relaxed) + 1;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since_ms.store(0, Ordering::Relaxed);
        begun
    }

    pub(super) fn request_ended(&self) {
        self.idle_since_ms.store(coarse_now_ms(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's socket, telling its [`Activity`] when bytes arrive.
pub(super) struct WatchedStream {
    pub(super) stream: TcpStream,
    pub(super) activity: Arc<Activity>,
}

impl AsyncRead for WatchedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.saw_bytes(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            connection_threads: 0,
            max_connections: 10,
            client_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_requests: 0,
        }
    }

    #[test]
    fn a_new_connection_has_the_client_timeout_to_send_a_request() {
        COARSE_NOW_MS.store(1_000_000, Ordering::Relaxed);
        let activity = Activity::new();
        let opened = activity.idle_since_ms.load(Ordering::Relaxed);
        assert_eq!(activity.close_at(limits()), Some(opened + 10_000));
        // Bytes alone do not make it a served connection.
        activity.saw_bytes(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert_eq!(activity.close_at(limits()), Some(opened + 10_000));
    }

    #[test]
    fn a_request_in_progress_is_never_closed_for_idleness() {
        COARSE_NOW_MS.store(1_000_000, Ordering::Relaxed);
        let activity = Activity::new();
        activity.request_began();
        assert_eq!(activity.close_at(limits()), None);
        activity.request_ended();
        let idle = activity.idle_since_ms.load(Ordering::Relaxed);
        assert_eq!(activity.close_at(limits()), Some(idle + 75_000));
    }

    #[test]
    fn an_http1_head_must_arrive_within_the_client_timeout_of_its_first_byte() {
        COARSE_NOW_MS.store(1_000_000, Ordering::Relaxed);
        let activity = Activity::new();
        activity.saw_bytes(b"GET / HTTP/1.1\r\n");
        activity.request_began();
        activity.request_ended();
        activity.head_since_ms.store(0, Ordering::Relaxed);
        activity.saw_bytes(b"GET /next");
        let head = activity.head_since_ms.load(Ordering::Relaxed);
        assert!(head > 0);
        assert_eq!(activity.close_at(limits()), Some(head + 10_000));
    }

    #[test]
    fn http2_frames_are_not_taken_for_request_heads() {
        let activity = Activity::new();
        activity.saw_bytes(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        activity.request_began();
        activity.request_ended();
        activity.saw_bytes(&[0, 0, 8, 6, 0, 0, 0, 0, 0]);
        assert_eq!(activity.head_since_ms.load(Ordering::Relaxed), 0);
    }
}
