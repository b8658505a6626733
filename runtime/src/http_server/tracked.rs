//! The service as the connection calls it: each request counted in progress on
//! its connection's [`Activity`] until its response has been sent whole.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::header::CONNECTION;
use axum::http::{HeaderValue, Request, Response, Version};

use super::activity::Activity;

/// The service, counting each request in progress on its connection until its
/// response has been sent whole (or abandoned). Its future and body wrap the
/// service's without boxing: this is on every request.
#[derive(Clone)]
pub(super) struct Tracked<S> {
    pub(super) service: S,
    pub(super) activity: Arc<Activity>,
    /// Requests the connection serves; 0: no limit (see `ConnectionLimits`).
    pub(super) max_requests: u64,
}

impl<S> tower::Service<Request<hyper::body::Incoming>> for Tracked<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<hyper::body::Incoming>) -> Self::Future {
        let nth = self.activity.request_began();
        // HTTP/2 has no `Connection` header (and its streams share one
        // connection by design): the limit is HTTP/1's.
        let last = self.max_requests > 0
            && nth >= self.max_requests
            && request.version() <= Version::HTTP_11;
        TrackedFuture {
            response: self.service.call(request.map(Body::new)),
            in_progress: Some(InProgress(Arc::clone(&self.activity))),
            last,
        }
    }
}

pin_project_lite::pin_project! {
    /// The service's response, its body tracked.
    pub(super) struct TrackedFuture<F> {
        #[pin]
        response: F,
        in_progress: Option<InProgress>,
        // The connection's last request: its response closes it.
        last: bool,
    }
}

impl<F> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<TrackedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match this.response.poll(cx) {
            Poll::Ready(Ok(response)) => response,
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => return Poll::Pending,
        };
        let in_progress = this.in_progress.take();
        if *this.last {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(response.map(|body| TrackedBody {
            body,
            _in_progress: in_progress,
        })))
    }
}

/// A request in progress; ends when dropped.
struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A response body that ends its request's [`InProgress`] when sent or dropped.
pub(super) struct TrackedBody {
    body: Body,
    /// Held for its `Drop`.
    _in_progress: Option<InProgress>,
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
