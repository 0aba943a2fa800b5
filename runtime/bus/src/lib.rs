//! Hydrant's control-plane message bus: one small API over two backends.
//!
//! Flow: executors, the router, the cloud controller and the health manager publish and
//! subscribe small JSON control messages ([`messages`]) here; the data plane (envelopes) never
//! touches the bus. `url = "inprocess"` (the micro cloud) joins a hub shared by every role in
//! the process; `url = "nats://host:port"` (distributed) talks to a real `nats-server` through
//! `async-nats`. A role never needs to know which one it has.
//!
//! # Layout
//! - [`Bus`]: a cheap-to-clone handle. [`Bus::publish`] never waits (bounded queues, counted
//!   drops), [`Bus::subscribe`] / [`Bus::queue_subscribe`] return a bounded [`Subscription`]
//!   with NATS wildcard semantics (`*`, `>`), [`Bus::request`] does request/reply, and
//!   [`Bus::watch_status`] tells "the bus is down" ([`BusStatus::Disconnected`]) from "nobody
//!   is talking".
//! - [`Announcer`]: re-publishes a message every interval, on (re)connect and on a trigger
//!   subject (`router.start`), so a lost message is repaired by the next one.
//! - [`messages`]: the subjects and their JSON payloads (gorouter-compatible `router.*`, and
//!   Hydrant's `executor.*`).
//! - [`follow`]: the announced dopplers as a bounded set with TTLs, one follower shared by
//!   the agent and the firehose edge.
//! - [`placement`]: which cell runs which instance, and the check that a cell's heartbeats,
//!   crashes and route messages speak only for itself and its own instances.
//! - [`Config`]: the `[bus]` config section.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), hydrant_bus::Error> {
//! use hydrant_bus::messages::{self, RegistryMessage};
//! use hydrant_bus::{Bus, Config};
//! use hydrant_emitter::Registry;
//!
//! // Roles in one process share the default hub; `nats://...` would reach a server instead.
//! let router = Bus::connect(&Config::default(), &Registry::new("router", "0")).await?;
//! let executor = Bus::connect(&Config::default(), &Registry::new("executor", "0")).await?;
//! let mut routes = router.subscribe("router.*").await?;
//! let register = RegistryMessage::new("10.0.0.5", 61001, vec!["shop.example.com".into()]);
//! executor.publish_json(messages::ROUTER_REGISTER, &register)?;
//! if let Some(message) = routes.next().await {
//!     assert_eq!(message.json::<RegistryMessage>()?, register);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Invariants: no call blocks on a slow or absent peer beyond a bounded buffer; every drop is
//! counted by reason in the owning role's registry (`bus.dropped{reason=...}`); both backends
//! accept the same subjects and route them the same way.

mod announcer;
mod config;
mod error;
pub mod follow;
mod inprocess;
pub mod messages;
mod metrics;
mod nats;
pub mod nats_config;
pub mod placement;
pub mod subject;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hydrant_emitter::Registry;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub use announcer::{Announcer, AnnouncerHandle};
pub use config::{Config, INPROCESS, TlsFiles};
pub use error::Error;

use crate::config::Target;
use crate::metrics::Metrics;

/// One message as a subscriber sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The literal subject it was published to (never a pattern).
    pub subject: String,
    /// The payload, as published.
    pub payload: Bytes,
    /// Where to send an answer, when the publisher made a request. See [`Bus::reply`].
    pub reply: Option<String>,
}

impl Message {
    /// Decodes the payload as JSON into `T`; the error names the type and the subject.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.payload).map_err(|source| Error::Decode {
            what: std::any::type_name::<T>(),
            subject: self.subject.clone(),
            source,
        })
    }
}

/// Whether the bus is usable right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusStatus {
    /// Connected: publishes go out and subscriptions receive.
    Connected,
    /// Down since `since` (NATS unreachable, or an in-process outage). Publishes queue up to
    /// `publish_buffer` (NATS) or are dropped (in process); subscriptions stay registered and
    /// resume when the bus returns.
    Disconnected {
        /// When the outage began.
        since: Instant,
    },
}

impl BusStatus {
    /// `true` when [`BusStatus::Connected`].
    #[must_use]
    pub fn is_connected(&self) -> bool {
        matches!(self, Self::Connected)
    }
}

/// A handle to the bus. Clones share one connection (or hub) and one set of metrics.
///
/// Dropping the last clone closes a NATS connection and discards publishes still queued for
/// it; call [`Bus::flush`] first when they matter. Subscriptions keep working until dropped.
#[derive(Debug, Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backend: Backend,
    metrics: Arc<Metrics>,
    registry: Registry,
    url: String,
    max_payload: usize,
}

#[derive(Debug)]
enum Backend {
    InProcess(inprocess::Handle),
    Nats(nats::Handle),
}

impl Bus {
    /// Connects as `config` says, registering the `bus.*` metrics in `registry`.
    ///
    /// `inprocess` joins (or creates) the process-wide hub of that name; it cannot fail once the
    /// config is valid. `nats://...` makes one connection attempt and fails with
    /// [`Error::Unreachable`] if the server is not there; after that first success, outages are
    /// reconnected forever in the background and reported through [`Bus::watch_status`].
    pub async fn connect(config: &Config, registry: &Registry) -> Result<Self, Error> {
        config.validate()?;
        let (backend, metrics) = match config.target()? {
            Target::InProcess(name) => {
                let metrics = Arc::new(Metrics::new(registry, "inprocess"));
                let hub = inprocess::Handle::named(&name, config, &metrics);
                (Backend::InProcess(hub), metrics)
            }
            Target::Nats(servers) => {
                let metrics = Arc::new(Metrics::new(registry, "nats"));
                let handle =
                    nats::Handle::connect(config, &servers, registry.source_id(), &metrics).await?;
                (Backend::Nats(handle), metrics)
            }
        };
        Ok(Self::assemble(backend, metrics, registry, config))
    }

    /// A bus on a private in-process hub that only clones of this handle can reach. For tests
    /// and for embedding, where sharing the process-wide hub would let unrelated code listen in.
    #[must_use]
    pub fn isolated(registry: &Registry) -> Self {
        let config = Config::default();
        let metrics = Arc::new(Metrics::new(registry, "inprocess"));
        Self::assemble(
            Backend::InProcess(inprocess::Handle::isolated(&config, &metrics)),
            metrics,
            registry,
            &config,
        )
    }

    fn assemble(
        backend: Backend,
        metrics: Arc<Metrics>,
        registry: &Registry,
        config: &Config,
    ) -> Self {
        let url = match &backend {
            Backend::InProcess(hub) => format!("{INPROCESS}://{}", hub.name()),
            Backend::Nats(_) => config.redacted_url(),
        };
        let bus = Self {
            inner: Arc::new(Inner {
                backend,
                metrics,
                registry: registry.clone(),
                url,
                max_payload: config.max_payload,
            }),
        };
        bus.inner
            .metrics
            .connected
            .set(if bus.status().is_connected() {
                1.0
            } else {
                0.0
            });
        bus
    }

    /// Publishes `payload` on `subject` without waiting.
    ///
    /// Returns an error only for a malformed subject or an oversized payload. A message the bus
    /// cannot take right now (a full queue, an outage) is dropped and counted in
    /// `bus.dropped{reason=...}`, never waited for: control messages are re-sent periodically,
    /// so the next one repairs the loss.
    pub fn publish(&self, subject: &str, payload: Bytes) -> Result<(), Error> {
        self.publish_inner(subject, payload, None)
    }

    /// Encodes `message` as JSON and publishes it on `subject` (see [`Bus::publish`]).
    pub fn publish_json<T: Serialize>(&self, subject: &str, message: &T) -> Result<(), Error> {
        self.publish(subject, messages::encode(message)?)
    }

    /// Answers a request: publishes `payload` on `to.reply`.
    pub fn reply(&self, to: &Message, payload: Bytes) -> Result<(), Error> {
        let Some(reply) = to.reply.as_deref() else {
            return Err(Error::NoReplySubject {
                subject: to.subject.clone(),
            });
        };
        self.publish(reply, payload)
    }

    fn publish_inner(
        &self,
        subject: &str,
        payload: Bytes,
        reply: Option<&str>,
    ) -> Result<(), Error> {
        subject::validate_publish(subject)?;
        self.check_size(subject, payload.len())?;
        match &self.inner.backend {
            Backend::InProcess(hub) => {
                hub.publish(subject, payload, reply, &self.inner.metrics);
            }
            Backend::Nats(nats) => nats.publish(subject, payload, reply, &self.inner.metrics),
        }
        Ok(())
    }

    fn check_size(&self, subject: &str, size: usize) -> Result<(), Error> {
        let max = match &self.inner.backend {
            Backend::InProcess(_) => self.inner.max_payload,
            Backend::Nats(nats) => nats.max_payload().min(self.inner.max_payload),
        };
        if size > max {
            return Err(Error::PayloadTooLarge {
                subject: subject.to_owned(),
                size,
                max,
            });
        }
        Ok(())
    }

    /// Subscribes to every subject matching `pattern` (`*` = one token, `>` = the rest).
    ///
    /// When this returns, the subscription is registered: a message published afterwards (from
    /// any connection, while the bus is up) reaches it. It survives NATS reconnects. Dropping
    /// the [`Subscription`] unsubscribes.
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, Error> {
        subject::validate_pattern(pattern)?;
        self.subscribe_inner(pattern, None).await
    }

    /// Joins queue group `group` on `pattern`: each matching message goes to one member of the
    /// group (plain subscribers still get their own copy). For work that must be done once,
    /// such as a health manager's convergence requests.
    pub async fn queue_subscribe(&self, pattern: &str, group: &str) -> Result<Subscription, Error> {
        subject::validate_pattern(pattern)?;
        subject::validate_group(group)?;
        self.subscribe_inner(pattern, Some(group)).await
    }

    async fn subscribe_inner(
        &self,
        pattern: &str,
        group: Option<&str>,
    ) -> Result<Subscription, Error> {
        let metrics = Arc::clone(&self.inner.metrics);
        match &self.inner.backend {
            Backend::InProcess(hub) => Ok(hub.subscribe(pattern, group, metrics)),
            Backend::Nats(nats) => nats.subscribe(pattern, group, metrics).await,
        }
    }

    /// Publishes `payload` on `subject` with a fresh reply subject and waits up to `timeout`
    /// for the first answer.
    ///
    /// Fails fast with [`Error::NoResponders`] when nothing is subscribed, with
    /// [`Error::Disconnected`] while the bus is down, and with [`Error::Timeout`] when
    /// subscribers exist but none answered in time.
    pub async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, Error> {
        subject::validate_publish(subject)?;
        self.check_size(subject, payload.len())?;
        let metrics = &self.inner.metrics;
        let result = match &self.inner.backend {
            Backend::InProcess(hub) => hub.request(subject, payload, timeout).await,
            Backend::Nats(nats) => nats.request(subject, payload, timeout).await,
        };
        match &result {
            Ok(_) => metrics.requests_ok.inc(),
            Err(Error::Timeout { .. }) => metrics.requests_timeout.inc(),
            Err(Error::NoResponders { .. }) => metrics.requests_no_responders.inc(),
            Err(Error::Disconnected { .. }) => metrics.requests_disconnected.inc(),
            Err(_) => {}
        }
        result
    }

    /// The status right now.
    #[must_use]
    pub fn status(&self) -> BusStatus {
        *self.status_receiver().borrow()
    }

    /// A watch on the status: `changed()` wakes on every connect and disconnect.
    #[must_use]
    pub fn watch_status(&self) -> watch::Receiver<BusStatus> {
        self.status_receiver()
    }

    fn status_receiver(&self) -> watch::Receiver<BusStatus> {
        match &self.inner.backend {
            Backend::InProcess(hub) => hub.watch_status(),
            Backend::Nats(nats) => nats.watch_status(),
        }
    }

    /// Waits until every message published so far through this handle has been written to the
    /// NATS connection (in process: returns at once, delivery is immediate). While NATS is down
    /// this waits for the reconnect, so wrap it in a timeout at shutdown.
    pub async fn flush(&self) -> Result<(), Error> {
        match &self.inner.backend {
            Backend::InProcess(_) => Ok(()),
            Backend::Nats(nats) => nats.flush().await,
        }
    }

    /// Starts (`true`) or ends (`false`) a simulated outage of an in-process hub, for every
    /// handle on it: status turns [`BusStatus::Disconnected`], publishes are dropped and
    /// counted (`reason=disconnected`), requests fail with [`Error::Disconnected`]. It lets
    /// roles test "the bus is down" without a NATS server. NATS handles return
    /// [`Error::Unsupported`]: stop the server instead.
    pub fn simulate_outage(&self, down: bool) -> Result<(), Error> {
        match &self.inner.backend {
            Backend::InProcess(hub) => {
                hub.set_outage(down);
                Ok(())
            }
            Backend::Nats(_) => Err(Error::Unsupported(
                "simulate_outage works only on in-process buses; stop nats-server instead",
            )),
        }
    }

    /// The bus this handle is connected to (`inprocess://NAME`, or the NATS url with any
    /// password masked).
    #[must_use]
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The registry this handle reports into.
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }
}

/// A bounded stream of the messages matching one subscription. Dropping it unsubscribes.
///
/// When its queue (`subscriber_buffer`) is full, newer messages are dropped and counted
/// (`bus.dropped{reason=subscriber_queue_full}`), as NATS does for slow consumers.
#[derive(Debug)]
pub struct Subscription {
    pattern: String,
    group: Option<String>,
    rx: mpsc::Receiver<Message>,
    // Unregisters an in-process subscription when dropped; NATS pumps notice `rx` closing.
    _guard: Option<inprocess::Unsubscribe>,
}

impl Subscription {
    pub(crate) fn new(
        pattern: &str,
        group: Option<&str>,
        rx: mpsc::Receiver<Message>,
        guard: Option<inprocess::Unsubscribe>,
    ) -> Self {
        Self {
            pattern: pattern.to_owned(),
            group: group.map(str::to_owned),
            rx,
            _guard: guard,
        }
    }

    /// The next message; `None` only when the bus behind it has closed for good.
    pub async fn next(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// The next message if one is already queued.
    pub fn try_next(&mut self) -> Option<Message> {
        self.rx.try_recv().ok()
    }

    /// Messages waiting to be read.
    #[must_use]
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// `true` when no message is waiting.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// The pattern this subscription was made with.
    #[must_use]
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The queue group, for [`Bus::queue_subscribe`] subscriptions.
    #[must_use]
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }
}

impl futures_util::Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}
