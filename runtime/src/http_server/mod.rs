//! The HTTP server: the accept loop and each connection's life, with the bounds
//! that keep any client from holding the gateway's sockets.
//!
//! - **Connections**: at most `--max-connections` open at once (default: from
//!   the open-file limit); one accepted beyond it is closed at once. An accept
//!   that fails (out of file descriptors) backs off rather than spin.
//! - **Silent and idle connections**: a connection that has not sent a whole
//!   request within `--client-timeout` of opening, or that stays idle (no
//!   request in progress) for `--idle-timeout` after one, is closed: politely
//!   first (HTTP/2 `GOAWAY`, HTTP/1.1 no keep-alive), and by dropping it
//!   [`CLOSE_GRACE`] later if the client does not go.
//! - **Slow requests**: an HTTP/1.1 request's head must arrive within
//!   `--client-timeout` of its first byte (HTTP/2 frames are not told apart that
//!   way: a stream that never completes its headers is no request, so the idle
//!   bound closes its connection); reading the body within a bound is the
//!   handler's part (the gateway's extractors give it `--client-timeout`).
//!
//! - **Requests per connection**: an HTTP/1 connection is closed after
//!   `--max-requests-per-connection` requests (its last response says
//!   `Connection: close`), as nginx's `keepalive_requests` does: a client's
//!   connection cannot hold one thread's place for ever, and a new one is
//!   placed afresh (by the accept loop and the kernel's scheduler).
//!
//! hyper's own header timeout is off: it starts when a connection waits for a
//! request, so it would close idle keep-alive connections at `--client-timeout`,
//! sooner than a load balancer in front expects; the bounds above replace it.
//!
//! **Threads**: with `connection_threads` above 0, each accepted connection is
//! handed to one of that many threads, each running a single-threaded tokio
//! runtime of its own (round robin), where it lives until it closes: its
//! reads, its handler and its writes on one thread, as nginx runs a process
//! per core, rather than tasks a work-stealing scheduler moves between
//! threads and wakes across them (a futex and an eventfd write per request
//! at one request at a time). What a handler awaits from clients made on the
//! main runtime (NATS, Redis) still runs there.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::telemetry::LogBudget;
use axum::body::Body;
use axum::http::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prediction_contract::time::unix_now_ms;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// The most a request line and headers may take (hyper answers 431 past it): room
/// for long tokens and query strings, not for abuse.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// How long a connection told to close may take to go before it is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long shutdown waits for in-flight requests before closing what is left.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long the accept loop waits after an accept fails (out of file
/// descriptors, say) before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

mod activity;
mod tracked;

use activity::{Activity, COARSE_NOW_MS, WatchedStream};
use tracked::Tracked;

static REFUSED_LINES: LogBudget = LogBudget::new();
static ACCEPT_FAILED_LINES: LogBudget = LogBudget::new();

/// What bounds the server's connections, and where they run.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub client_timeout: Duration,
    pub idle_timeout: Duration,
    /// Threads the connections run on, each a runtime of its own; 0: the
    /// caller's runtime.
    pub connection_threads: usize,
    /// Requests an HTTP/1 connection serves before it is closed (its last
    /// response says `Connection: close`), as nginx's `keepalive_requests`;
    /// 0: no limit.
    pub max_requests: u64,
}

/// The default number of connection threads: one per core.
pub fn default_connection_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Single-threaded runtimes that connections are handed to, round robin;
/// stopped (their remaining tasks dropped) when this is dropped.
struct ConnectionThreads {
    handles: Vec<tokio::runtime::Handle>,
    next: std::sync::atomic::AtomicUsize,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ConnectionThreads {
    fn start(count: usize) -> std::io::Result<Self> {
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            stops.push(stop);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("http-{index}"))
                    .spawn(move || {
                        runtime.block_on(async {
                            let _ = stopped.await;
                        });
                    })?,
            );
        }
        Ok(Self {
            handles,
            next: std::sync::atomic::AtomicUsize::new(0),
            stops,
            threads,
        })
    }

    /// The runtime the next connection goes to.
    fn next(&self) -> &tokio::runtime::Handle {
        let at = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[at]
    }
}

impl Drop for ConnectionThreads {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The server's connection metrics (made and registered by the caller, which
/// names them).
#[derive(Debug, Clone)]
pub struct ConnectionMetrics {
    pub open: prometheus::IntGauge,
    pub refused: prometheus::IntCounter,
}

/// The open-file limit's share that connections may take, the rest left for
/// NATS, Redis, logs and the files a process opens: all but an eighth (at
/// least 64 kept).
pub fn default_max_connections() -> usize {
    let limit = raise_open_file_limit();
    let reserved = (limit / 8).max(64);
    usize::try_from(limit.saturating_sub(reserved).max(1)).unwrap_or(usize::MAX)
}

/// Raises the soft open-file limit to the hard one, as servers that hold many
/// sockets do (Go's runtime does it by itself), and returns the limit in force.
fn raise_open_file_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(current), maximum) = (limit.current, limit.maximum) else {
        // Unlimited.
        return u64::MAX;
    };
    let Some(maximum) = maximum else {
        return current;
    };
    if maximum > current {
        let raised = rustix::process::Rlimit {
            current: Some(maximum),
            maximum: Some(maximum),
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            debug!(from = current, to = maximum, "raised the open-file limit");
            return maximum;
        }
    }
    current
}

/// How often the connections are looked at for silence or idleness: the
/// bounds are kept to within this.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// What the server serves: an axum `Router`, or a service around one.
pub trait HttpService:
    tower::Service<
        Request<Body>,
        Response = Response<Body>,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> HttpService for S where
    S: tower::Service<
            Request<Body>,
            Response = Response<Body>,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Serves `service` on `listener` until `shutdown` completes, then lets the
/// requests in flight finish (at most [`SHUTDOWN_GRACE`]).
pub async fn serve<S: HttpService>(
    listener: TcpListener,
    service: S,
    limits: ConnectionLimits,
    metrics: Option<ConnectionMetrics>,
    shutdown: impl Future<Output = ()>,
) {
    let mut connections = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    connections
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        // Request line and headers together; larger ones get 431.
        .max_buf_size(MAX_HEADER_BYTES);
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let open = Arc::new(OpenConnections::default());
    COARSE_NOW_MS.store(unix_now_ms(), Ordering::Relaxed);
    let sweeper = tokio::spawn(sweep(Arc::downgrade(&open), limits));
    let threads = match limits.connection_threads {
        0 => None,
        count => match ConnectionThreads::start(count) {
            Ok(threads) => Some(threads),
            Err(err) => {
                warn!(error = %err, "could not start the connection threads; serving on the main runtime");
                None
            }
        },
    };
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    if let Some(suppressed) = ACCEPT_FAILED_LINES.allow() {
                        warn!(error = %err, suppressed, "could not accept a connection");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Dropped: closed at once, so the client knows and tries elsewhere.
            if let Some(metrics) = &metrics {
                metrics.refused.inc();
            }
            if let Some(suppressed) = REFUSED_LINES.allow() {
                warn!(
                    max_connections = max,
                    suppressed,
                    "connection refused: the gateway has as many as --max-connections allows"
                );
            }
            continue;
        };
        // Responses are small: send them at once, not when Nagle's algorithm has
        // waited for the previous one's ACK.
        if let Err(err) = stream.set_nodelay(true) {
            debug!(error = %err, "could not set TCP_NODELAY");
        }
        let activity = Arc::new(Activity::new());
        let gauge = metrics.as_ref().map(|metrics| metrics.open.clone());
        if let Some(gauge) = &gauge {
            gauge.inc();
        }
        let id = open.add(Arc::clone(&activity));
        let open = Arc::clone(&open);
        let (connections, service) = (connections.clone(), service.clone());
        let run = move |stream: tokio::net::TcpStream| async move {
            let io = TokioIo::new(WatchedStream {
                stream,
                activity: Arc::clone(&activity),
            });
            let service = TowerToHyperService::new(Tracked {
                service,
                activity: Arc::clone(&activity),
                max_requests: limits.max_requests,
            });
            let connection = connections
                .serve_connection_with_upgrades(io, service)
                .into_owned();
            drive(connection, &activity).await;
        };
        let ended = move || {
            open.remove(id);
            if let Some(gauge) = gauge {
                gauge.dec();
            }
            drop(slot);
        };
        match &threads {
            None => {
                tokio::spawn(async move {
                    run(stream).await;
                    ended();
                });
            }
            // Moved to the thread's runtime: its reactor takes the socket.
            Some(threads) => match stream.into_std() {
                Ok(stream) => {
                    threads.next().spawn(async move {
                        if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
                            run(stream).await;
                        }
                        ended();
                    });
                }
                Err(err) => {
                    debug!(error = %err, "could not hand a connection to its thread");
                    ended();
                }
            },
        }
    }
    drop(listener);
    info!("stopped accepting connections; finishing the requests in flight");
    open.close_all();
    let all_closed = slots.acquire_many(u32::try_from(max).unwrap_or(u32::MAX));
    if tokio::time::timeout(SHUTDOWN_GRACE + CLOSE_GRACE, all_closed)
        .await
        .is_err()
    {
        warn!(grace = ?SHUTDOWN_GRACE, "requests still in flight at the end of the grace period");
    }
    sweeper.abort();
    // Joining the threads blocks: off the async threads.
    if let Some(threads) = threads {
        let _ = tokio::task::spawn_blocking(move || drop(threads)).await;
    }
}

/// The connections open now, for the sweep and the shutdown.
#[derive(Debug, Default)]
struct OpenConnections {
    next_id: AtomicU64,
    by_id: std::sync::Mutex<std::collections::HashMap<u64, Arc<Activity>>>,
}

impl OpenConnections {
    fn add(&self, activity: Arc<Activity>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.by_id
            .lock()
            .expect("not poisoned")
            .insert(id, activity);
        id
    }

    fn remove(&self, id: u64) {
        self.by_id.lock().expect("not poisoned").remove(&id);
    }

    /// Asks every connection to close, letting its requests finish.
    fn close_all(&self) {
        for activity in self.by_id.lock().expect("not poisoned").values() {
            activity.ask_to_close(SHUTDOWN_GRACE);
        }
    }
}

/// Every [`SWEEP_EVERY`]: moves the coarse clock on, and asks each connection
/// silent or idle past its bound to close. Ends with the server.
async fn sweep(open: std::sync::Weak<OpenConnections>, limits: ConnectionLimits) {
    let mut ticks = tokio::time::interval(SWEEP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(open) = open.upgrade() else {
            return;
        };
        let now = unix_now_ms();
        COARSE_NOW_MS.store(now, Ordering::Relaxed);
        for activity in open.by_id.lock().expect("not poisoned").values() {
            if activity.close_at(limits).is_some_and(|at| now >= at) {
                activity.ask_to_close(CLOSE_GRACE);
            }
        }
    }
}

/// A connection as hyper serves it.
type Connection<S> = hyper_util::server::conn::auto::UpgradeableConnection<
    'static,
    TokioIo<WatchedStream>,
    TowerToHyperService<Tracked<S>>,
    TokioExecutor,
>;

/// Runs one connection until it ends or is asked to close (by the sweep, or
/// the server's shutdown): then closes it politely, and drops it if it is not
/// done within the grace the request to close gave.
async fn drive<S: HttpService>(connection: Connection<S>, activity: &Activity) {
    tokio::pin!(connection);
    tokio::select! {
        biased;
        ended = connection.as_mut() => {
            if let Err(err) = ended {
                debug!(error = %err, "connection ended with an error");
            }
            return;
        }
        () = activity.close.notified() => {}
    }
    connection.as_mut().graceful_shutdown();
    let grace = Duration::from_millis(activity.close_grace_ms.load(Ordering::Relaxed));
    let _ = tokio::time::timeout(grace, connection).await;
}
