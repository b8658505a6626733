//! The floor under the gateway's hit path: hyper alone, on the same kind of
//! per-core single-threaded runtimes, answering every request with the bytes
//! of a gateway's hit (its status, headers and body, copied from one), with no
//! routing, cache, log or metrics. What it costs is what any server built on
//! this HTTP stack pays; the gateway's hit is measured against it next to nginx.

use std::convert::Infallible;

use anyhow::Context;
use axum::body::Body;
use axum::http::{HeaderMap, Request, Response, StatusCode};
use bytes::Bytes;
use hyper_util::rt::TokioIo;

/// A gateway's answer, replayed.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Serves `answer` to every request on `port` (127.0.0.1), from `threads`
/// threads each with its own listener (`SO_REUSEPORT`) and runtime, until the
/// bench exits.
pub fn serve(port: u16, threads: usize, answer: Recorded) -> anyhow::Result<()> {
    for index in 0..threads.max(1) {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseport(true)?;
        socket.bind(([127, 0, 0, 1], port).into())?;
        let answer = answer.clone();
        std::thread::Builder::new()
            .name(format!("floor-{index}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(accept(socket, answer));
            })
            .context("starting the floor's threads")?;
    }
    Ok(())
}

async fn accept(socket: tokio::net::TcpSocket, answer: Recorded) {
    let Ok(listener) = socket.listen(1024) else {
        return;
    };
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let answer = answer.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let answer = answer.clone();
                    async move {
                        // Read like the gateway reads a prediction's body.
                        let _ = axum::body::to_bytes(Body::new(request.into_body()), 1 << 20).await;
                        let mut response = Response::new(Body::from(answer.body));
                        *response.status_mut() = answer.status;
                        *response.headers_mut() = answer.headers;
                        Ok::<_, Infallible>(response)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
