//! NATS: the one door through which the gateway reaches it. Every message the
//! gateway sends or listens for goes through [`Nats`], and every subject it uses
//! is named here:
//!
//! - `predict.<model>`: model requests ([`Nats::request`]), whose replies arrive
//!   as a stream of messages on one inbox subscription shared by every call
//!   (heartbeats while a worker holds the request, then the reply);
//! - `$SRV.INFO.prediction-worker`: the workers' service info, for discovery
//!   ([`Nats::ask_every_worker`]);
//! - `gateway.cache.purge`: purges broadcast to every gateway
//!   ([`Nats::broadcast_purge`], [`Nats::purge_notices`]);
//! - `gateway.cache.ready.<key token>`: the outcome of a computation, announced to
//!   the gateways that wait for it ([`Nats::announce`], [`Nats::announcements`]);
//! - `worker.cancel.<worker id>`: a stream nobody listens to any more
//!   ([`Nats::cancel`]).
//!
//! The connection state is asked here too, once per call that needs it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::connection::State;
use async_nats::{HeaderMap, Message, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use prediction_contract::ModelName;
use prediction_contract::subjects::{SERVICE_NAME, predict_subject};
use prediction_runtime::nats_connection::{NatsArgs, connection_name};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Gateways tell each other to drop purged predictions from their in-process
/// tier on this subject (gateway to gateway: workers never see it).
pub const CACHE_PURGE_SUBJECT: &str = "gateway.cache.purge";
/// The prefix of the subjects on which computations' outcomes are announced.
pub const CACHE_READY_SUBJECT_PREFIX: &str = "gateway.cache.ready";

/// How long startup waits for the first connection before serving anyway
/// (from the cache) and connecting in the background.
const STARTUP_WAIT: Duration = Duration::from_secs(2);
/// How long a call that finds NATS disconnected waits for the connection to
/// come back (to another server of the cluster, usually within milliseconds)
/// before it fails; never past the call's own bound, and not at all when no
/// other server is known.
pub const RECONNECT_WAIT: Duration = Duration::from_secs(2);
/// How often a waiting call looks at the connection.
const RECONNECT_POLL: Duration = Duration::from_millis(10);
/// How long [`Nats::gather`] waits for the first reply.
const FIRST_REPLY_WAIT: Duration = Duration::from_millis(250);
/// After a reply, how long it waits for the next before deciding all have answered.
const NEXT_REPLY_WAIT: Duration = Duration::from_millis(50);

/// The gateway's NATS connection. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Nats {
    client: async_nats::Client,
    /// How many servers the gateway was given (`--nats-url`).
    configured_servers: usize,
    replies: Arc<ReplyRouter>,
}

/// Why a request could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the request is larger than the NATS server accepts")]
    TooLarge,
    #[error("the NATS publish failed")]
    Publish(#[source] async_nats::PublishError),
}

impl Nats {
    /// Connects as `gateway@<host>`, waiting up to `STARTUP_WAIT` for the first
    /// connection and retrying in the background after that, and subscribes to
    /// the replies of every model request this gateway will make.
    pub async fn connect(args: &NatsArgs) -> anyhow::Result<Self> {
        let shown_url = args.redacted_url();
        let (options, servers) = args.connect_options().await?;
        let client = options
            .name(connection_name("gateway"))
            .retry_on_initial_connect()
            .event_callback(|event| async move { info!(%event, "NATS connection event") })
            .connect(servers.as_slice())
            .await
            .with_context(|| format!("connecting to NATS at {shown_url}"))?;
        let replies = ReplyRouter::start(&client)
            .await
            .context("subscribing to model replies")?;
        if tokio::time::timeout(STARTUP_WAIT, client.flush())
            .await
            .is_err()
        {
            warn!(nats = %shown_url, "NATS not reachable yet; serving from the cache and retrying");
        }
        Ok(Self {
            client,
            configured_servers: servers.len(),
            replies,
        })
    }

    /// Whether the connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Whether the connection is up, or comes back within [`RECONNECT_WAIT`]
    /// (and `left`). Only worth waiting for while another server is known: one
    /// configured, or one the server told of (a cluster's `connect_urls`).
    pub async fn connected_within(&self, left: Duration) -> bool {
        if self.is_connected() {
            return true;
        }
        let others_known =
            self.configured_servers > 1 || !self.client.server_info().connect_urls.is_empty();
        if !others_known {
            return false;
        }
        let give_up = Instant::now() + RECONNECT_WAIT.min(left);
        while Instant::now() < give_up {
            tokio::time::sleep(RECONNECT_POLL).await;
            if self.is_connected() {
                return true;
            }
        }
        false
    }

    /// Sends a model request to the queue group serving `model` and returns the
    /// stream of messages that answer it. Ask [`connected_within`] first: while
    /// disconnected async-nats buffers the request until it reconnects.
    ///
    /// [`connected_within`]: Self::connected_within
    pub async fn request(
        &self,
        model: &ModelName,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Replies, SendError> {
        let replies = self.replies.register();
        self.client
            .publish_with_reply_and_headers(
                predict_subject(model),
                replies.subject.clone(),
                headers,
                payload,
            )
            .await
            .map_err(|err| match err.kind() {
                async_nats::PublishErrorKind::MaxPayloadExceeded => SendError::TooLarge,
                _ => SendError::Publish(err),
            })?;
        Ok(replies)
    }

    /// Tells the worker with service id `worker_id` that nobody listens any
    /// more to the stream answering on `reply_subject`. Best effort: a worker
    /// that misses it streams to no one until the generation ends.
    pub async fn cancel(&self, worker_id: &str, reply_subject: &str) {
        let subject = prediction_contract::subjects::cancel_subject(worker_id);
        if let Err(err) = self
            .client
            .publish(subject, Bytes::copy_from_slice(reply_subject.as_bytes()))
            .await
        {
            debug!(error = %err, "could not cancel a stream");
        }
    }

    /// Asks every worker for its service info; the replies that came.
    pub async fn ask_every_worker(&self) -> Vec<Message> {
        self.gather(format!("$SRV.INFO.{SERVICE_NAME}"), Bytes::new())
            .await
    }

    /// Tells every gateway of a purge; the acknowledgements that came.
    pub async fn broadcast_purge(&self, notice: Bytes) -> Vec<Message> {
        self.gather(CACHE_PURGE_SUBJECT.to_owned(), notice).await
    }

    /// The purge notices broadcast to every gateway, this one included, from now
    /// on (subscribed before this returns, so no later purge is missed).
    pub async fn purge_notices(&self) -> Result<Subscriber, async_nats::SubscribeError> {
        let subscriber = self.client.subscribe(CACHE_PURGE_SUBJECT).await?;
        let _ = self.client.flush().await;
        Ok(subscriber)
    }

    /// Acknowledges a purge notice.
    pub async fn acknowledge(&self, notice: &Message) {
        if let Some(reply) = &notice.reply
            && let Err(err) = self.client.publish(reply.clone(), "{}".into()).await
        {
            debug!(error = %err, "could not acknowledge a purge");
        }
    }

    /// Announces the outcome of computing the key whose subject token is
    /// `key_token`. A failure is only logged: waiters fall back to the lock's
    /// expiry.
    pub async fn announce(&self, key_token: &str, headers: HeaderMap, payload: Bytes) {
        let subject = format!("{CACHE_READY_SUBJECT_PREFIX}.{key_token}");
        if let Err(err) = self
            .client
            .publish_with_headers(subject, headers, payload)
            .await
        {
            debug!(error = %err, "could not announce a finished model call");
        }
    }

    /// The announcements of the key whose subject token is `key_token`, from now
    /// on; `None` when they cannot be listened for (NATS is down). The
    /// subscription has reached the server when this returns, so an
    /// announcement made after it is not missed.
    pub async fn announcements(&self, key_token: &str) -> Option<Subscriber> {
        if !self.is_connected() {
            return None;
        }
        let subject = format!("{CACHE_READY_SUBJECT_PREFIX}.{key_token}");
        match self.client.subscribe(subject).await {
            Ok(subscriber) => {
                let _ = self.client.flush().await;
                Some(subscriber)
            }
            Err(err) => {
                warn!(error = %err, "cannot wait for another gateway's model call");
                None
            }
        }
    }

    /// Publishes `payload` on `subject` and gathers every reply: waits
    /// [`FIRST_REPLY_WAIT`] for the first, then [`NEXT_REPLY_WAIT`] after each for
    /// the next. Ends at once when the server says nobody listens.
    async fn gather(&self, subject: String, payload: Bytes) -> Vec<Message> {
        let mut gathered = Vec::new();
        let mut replies = self.replies.register();
        if self
            .client
            .publish_with_reply(subject, replies.subject.clone(), payload)
            .await
            .is_err()
        {
            return gathered;
        }
        let mut wait = FIRST_REPLY_WAIT;
        while let Next::Message(reply) = replies.next_within(wait).await {
            gathered.push(reply);
            wait = NEXT_REPLY_WAIT;
        }
        gathered
    }
}

/// What [`Replies::next_within`] found.
#[derive(Debug)]
pub enum Next {
    /// A message on the request's reply subject.
    Message(Message),
    /// The server says no one subscribes to the request's subject.
    NoResponders,
    /// Nothing within the wait.
    Silence,
}

/// The messages answering one request, in the order they arrived. Dropping it
/// ends the registration: a late message for it is discarded.
#[derive(Debug)]
pub struct Replies {
    subject: async_nats::Subject,
    token: u64,
    messages: mpsc::UnboundedReceiver<Message>,
    router: Arc<ReplyRouter>,
}

impl Replies {
    /// The subject the answering messages come to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The next message, waiting at most `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Next {
        match tokio::time::timeout(wait, self.messages.recv()).await {
            Ok(Some(message)) if is_no_responders(&message) => Next::NoResponders,
            Ok(Some(message)) => Next::Message(message),
            // The router is gone only with the connection; as good as silence.
            Ok(None) | Err(_) => Next::Silence,
        }
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        self.router.forget(self.token);
    }
}

fn is_no_responders(message: &Message) -> bool {
    message
        .status
        .is_some_and(|status| status == async_nats::StatusCode::NO_RESPONDERS)
}

/// Routes the messages of one wildcard inbox subscription to the request each
/// answers, by the token ending its subject: one subscription for every
/// request this gateway makes, where a subscription per request would cost two
/// more protocol messages (and server work) per request.
#[derive(Debug)]
struct ReplyRouter {
    /// `_INBOX.<unique>`; a request's reply subject is `<prefix>.<token>`.
    prefix: String,
    next_token: AtomicU64,
    waiting: Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>,
}

impl ReplyRouter {
    async fn start(client: &async_nats::Client) -> Result<Arc<Self>, async_nats::SubscribeError> {
        let prefix = client.new_inbox();
        let mut inbox = client.subscribe(format!("{prefix}.*")).await?;
        let router = Arc::new(Self {
            prefix,
            next_token: AtomicU64::new(0),
            waiting: Mutex::new(HashMap::new()),
        });
        let routing = Arc::downgrade(&router);
        tokio::spawn(async move {
            while let Some(message) = inbox.next().await {
                let Some(router) = routing.upgrade() else {
                    return;
                };
                router.route(message);
            }
        });
        Ok(router)
    }

    fn register(self: &Arc<Self>) -> Replies {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (sender, messages) = mpsc::unbounded_channel();
        self.waiting
            .lock()
            .expect("not poisoned")
            .insert(token, sender);
        let mut subject = String::with_capacity(self.prefix.len() + 21);
        subject.push_str(&self.prefix);
        subject.push('.');
        subject.push_str(itoa::Buffer::new().format(token));
        Replies {
            subject: subject.into(),
            token,
            messages,
            router: Arc::clone(self),
        }
    }

    fn route(&self, message: Message) {
        let token = message
            .subject
            .rsplit_once('.')
            .and_then(|(_, token)| token.parse::<u64>().ok());
        let Some(token) = token else {
            return;
        };
        let waiting = self.waiting.lock().expect("not poisoned");
        if let Some(sender) = waiting.get(&token) {
            let _ = sender.send(message);
        }
    }

    fn forget(&self, token: u64) {
        self.waiting.lock().expect("not poisoned").remove(&token);
    }
}
