//! The NATS backend: the distributed bus, a real `nats-server` reached through `async-nats`.
//!
//! Publishes go into our own bounded queue and a forwarder task hands them to the client while
//! the connection is up, so a slow or absent server costs the caller nothing beyond that queue
//! (overflow is dropped and counted). Each subscription is pumped from the client into its own
//! bounded queue, which is where slow consumers are counted. async-nats reconnects forever and
//! re-sends every subscription on reconnect; this module turns its connection events into
//! [`BusStatus`]. Invariant: no caller ever waits on the network except `request`, `subscribe`
//! and `flush`, and each of those is bounded or documented to wait.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{ConnectErrorKind, Event, RequestErrorKind, ServerError, SubscribeErrorKind};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::{BusStatus, Config, Error, Message, Subscription};

/// How often the status is re-read from the client, in case a connection event was lost (the
/// client's event channel is bounded and lossy).
const STATUS_RECHECK: Duration = Duration::from_secs(1);

/// How long `subscribe` waits for the server to confirm it has registered the interest.
const SUBSCRIBE_CONFIRM: Duration = Duration::from_secs(2);

/// Subjects the bus uses for its own bookkeeping; never delivered to a [`Subscription`].
const CONFIRM_PREFIX: &str = "_HYDRANT.confirm.";

/// Capacity of async-nats's own command channel. Kept small: our publish queue is the backlog,
/// and the forwarder stops feeding this channel while disconnected so subscribe and request
/// commands always find room.
const CLIENT_CAPACITY: usize = 256;

/// One bus handle's NATS connection.
#[derive(Debug)]
pub(crate) struct Handle {
    client: async_nats::Client,
    queue: mpsc::Sender<Outbound>,
    status: Arc<watch::Sender<BusStatus>>,
    subscriber_buffer: usize,
    /// Stops the forwarder and status tasks when the last bus handle goes.
    stop: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Debug)]
enum Outbound {
    Publish {
        subject: String,
        payload: Bytes,
        reply: Option<String>,
    },
    Flush(oneshot::Sender<()>),
}

impl Handle {
    pub(crate) async fn connect(
        config: &Config,
        servers: &[String],
        name: &str,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, Error> {
        // Optimistic: if the first connection fails the watch is discarded with the error, so
        // every later Disconnected -> Connected transition is a real reconnect.
        let (status, _) = watch::channel(BusStatus::Connected);
        let status = Arc::new(status);
        let on_event = {
            let status = Arc::clone(&status);
            let metrics = Arc::clone(metrics);
            move |event: Event| {
                let status = Arc::clone(&status);
                let metrics = Arc::clone(&metrics);
                async move {
                    match event {
                        Event::Connected => set_status(&status, &metrics, true),
                        Event::Disconnected => set_status(&status, &metrics, false),
                        Event::SlowConsumer(sid) => {
                            metrics.dropped_client_queue_full.inc();
                            tracing::warn!(sid, "bus: NATS client queue overflowed");
                        }
                        Event::ServerError(ServerError::Other(text))
                            if text.to_ascii_lowercase().contains("permissions violation") =>
                        {
                            // The server refused a publish or subscription this identity may
                            // not make; it dropped the message, so nobody acted on it.
                            metrics.refused_permissions.inc();
                            tracing::warn!(refused = %text, "bus: NATS refused a subject for this role's identity");
                        }
                        Event::ServerError(ServerError::AuthorizationViolation) => {
                            metrics.refused_authorization.inc();
                            tracing::error!(
                                "bus: NATS refused this role's credentials (authorization violation)"
                            );
                        }
                        other => tracing::info!(event = %other, "nats connection event"),
                    }
                }
            }
        };
        let options = async_nats::ConnectOptions::new()
            .name(format!("hydrant-{name}"))
            .connection_timeout(config.connect_timeout())
            .ping_interval(Duration::from_secs(config.ping_interval_secs))
            .client_capacity(CLIENT_CAPACITY)
            // The client's per-subscription channel only feeds our pump, which drains it at
            // once into our bounded queue, where a slow consumer's overflow is counted exactly.
            // Overflow here is counted only through the client's event channel, which itself
            // drops events in a burst (`hydrant bench bus` showed a third of such drops
            // uncounted), so this channel is sized to absorb the pump's scheduling delay on a
            // loaded machine (64 × the subscriber buffer: 0.65 s at 100,000 messages/s with
            // the default), not the consumer's speed. tokio allocates its slots as they fill.
            .subscription_capacity(config.subscriber_buffer.saturating_mul(64).max(65_536))
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(on_event);
        // async-nats re-reads these files on every (re)connect, so a rotated certificate is
        // picked up at the next reconnect without a restart.
        let options = match &config.tls {
            Some(tls) => options
                .require_tls(true)
                .add_root_certificates(tls.ca_file.clone())
                .add_client_certificate(tls.cert_file.clone(), tls.key_file.clone()),
            None => options,
        };
        let url = config.redacted_url();
        let connect = options.connect(servers.to_vec());
        let client = match tokio::time::timeout(
            config.connect_timeout() + Duration::from_millis(500),
            connect,
        )
        .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(err)) => {
                return Err(Error::Unreachable {
                    url,
                    reason: describe_connect_error(&err),
                });
            }
            Err(_) => {
                return Err(Error::Unreachable {
                    url,
                    reason: format!("no answer within {:?}", config.connect_timeout()),
                });
            }
        };
        let (queue, rx) = mpsc::channel(config.publish_buffer);
        let stop = CancellationToken::new();
        tokio::spawn(forward(
            client.clone(),
            rx,
            status.subscribe(),
            Arc::clone(metrics),
            stop.clone(),
        ));
        tokio::spawn(recheck_status(
            client.clone(),
            Arc::clone(&status),
            Arc::clone(metrics),
            stop.clone(),
        ));
        Ok(Self {
            client,
            queue,
            status,
            subscriber_buffer: config.subscriber_buffer,
            stop,
            metrics: Arc::clone(metrics),
        })
    }

    pub(crate) fn max_payload(&self) -> usize {
        self.client.max_payload()
    }

    pub(crate) fn publish(
        &self,
        subject: &str,
        payload: Bytes,
        reply: Option<&str>,
        metrics: &Metrics,
    ) {
        metrics.published.inc();
        let item = Outbound::Publish {
            subject: subject.to_owned(),
            payload,
            reply: reply.map(str::to_owned),
        };
        match self.queue.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => metrics.dropped_publish_queue_full.inc(),
            Err(TrySendError::Closed(_)) => metrics.dropped_closed.inc(),
        }
        metrics
            .publish_queue_depth
            .set((self.queue.max_capacity() - self.queue.capacity()) as f64);
    }

    pub(crate) async fn subscribe(
        &self,
        pattern: &str,
        group: Option<&str>,
        metrics: Arc<Metrics>,
    ) -> Result<Subscription, Error> {
        let subscriber = match group {
            None => self.client.subscribe(pattern.to_owned()).await,
            Some(group) => {
                self.client
                    .queue_subscribe(pattern.to_owned(), group.to_owned())
                    .await
            }
        }
        .map_err(|err| match err.kind() {
            SubscribeErrorKind::InvalidSubject => Error::InvalidSubject {
                subject: pattern.to_owned(),
                reason: "rejected by the NATS client",
            },
            SubscribeErrorKind::InvalidQueueName => Error::InvalidGroup {
                group: group.unwrap_or_default().to_owned(),
                reason: "rejected by the NATS client",
            },
            SubscribeErrorKind::Other => Error::Nats(format!("subscribe to {pattern:?}: {err}")),
        })?;
        let (tx, rx) = mpsc::channel(self.subscriber_buffer);
        tokio::spawn(pump(subscriber, tx, metrics));
        self.confirm_registered().await;
        Ok(Subscription::new(pattern, group, rx, None))
    }

    /// Makes sure the server has processed our SUB before `subscribe` returns, so a message
    /// published afterwards from another connection is routed to it. The server handles one
    /// connection's commands in order, so a message we publish to ourselves after the SUB and
    /// see come back proves it. (A request would do too, but a `>` subscriber anywhere would
    /// swallow it and stall us until the timeout.)
    async fn confirm_registered(&self) {
        if !self.status.borrow().is_connected() {
            // Nothing to confirm against; async-nats registers it on reconnect.
            return;
        }
        let probe = format!("{CONFIRM_PREFIX}{}", self.client.new_inbox());
        let confirm = async {
            let mut echo = self.client.subscribe(probe.clone()).await.ok()?;
            self.client.publish(probe, Bytes::new()).await.ok()?;
            echo.next().await
        };
        if tokio::time::timeout(SUBSCRIBE_CONFIRM, confirm)
            .await
            .is_err()
        {
            tracing::debug!("bus: subscription not confirmed by the server in time");
        }
    }

    pub(crate) async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, Error> {
        if !self.status.borrow().is_connected() {
            return Err(Error::Disconnected {
                subject: subject.to_owned(),
            });
        }
        let request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(timeout));
        let timed_out = || Error::Timeout {
            subject: subject.to_owned(),
            timeout,
        };
        // The outer timeout also bounds the wait for room in the client's command channel.
        match tokio::time::timeout(
            timeout,
            self.client.send_request(subject.to_owned(), request),
        )
        .await
        {
            Err(_) => Err(timed_out()),
            Ok(Ok(message)) => Ok(convert(message)),
            Ok(Err(err)) => Err(match err.kind() {
                RequestErrorKind::TimedOut => timed_out(),
                RequestErrorKind::NoResponders => Error::NoResponders {
                    subject: subject.to_owned(),
                },
                RequestErrorKind::InvalidSubject => Error::InvalidSubject {
                    subject: subject.to_owned(),
                    reason: "rejected by the NATS client",
                },
                RequestErrorKind::MaxPayloadExceeded => Error::PayloadTooLarge {
                    subject: subject.to_owned(),
                    size: 0,
                    max: self.client.max_payload(),
                },
                _ => Error::Nats(format!("request on {subject:?}: {err}")),
            }),
        }
    }

    pub(crate) fn watch_status(&self) -> watch::Receiver<BusStatus> {
        self.status.subscribe()
    }

    pub(crate) async fn flush(&self) -> Result<(), Error> {
        let (done, wait) = oneshot::channel();
        self.queue
            .send(Outbound::Flush(done))
            .await
            .map_err(|_| Error::Nats("flush: the publish forwarder has stopped".to_owned()))?;
        wait.await
            .map_err(|_| Error::Nats("flush: the publish forwarder has stopped".to_owned()))?;
        self.metrics
            .publish_queue_depth
            .set((self.queue.max_capacity() - self.queue.capacity()) as f64);
        Ok(())
    }
}

fn set_status(status: &watch::Sender<BusStatus>, metrics: &Metrics, connected: bool) {
    let changed = status.send_if_modified(|current| match (current.is_connected(), connected) {
        (false, true) => {
            *current = BusStatus::Connected;
            true
        }
        (true, false) => {
            *current = BusStatus::Disconnected {
                since: Instant::now(),
            };
            true
        }
        _ => false,
    });
    metrics.connected.set(if connected { 1.0 } else { 0.0 });
    if changed {
        if connected {
            metrics.reconnects.inc();
            tracing::info!("bus: reconnected to NATS");
        } else {
            tracing::warn!("bus: lost the NATS connection; reconnecting in the background");
        }
    }
}

/// Hands queued publishes to the client, holding them while the connection is down.
async fn forward(
    client: async_nats::Client,
    mut rx: mpsc::Receiver<Outbound>,
    mut status: watch::Receiver<BusStatus>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    loop {
        let item = tokio::select! {
            () = stop.cancelled() => break,
            item = rx.recv() => match item {
                Some(item) => item,
                None => break,
            },
        };
        // Keep the backlog in our bounded queue, not in the client's command channel, so
        // subscribe and request commands are never stuck behind it during an outage.
        while !status.borrow_and_update().is_connected() {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = status.changed() => if changed.is_err() { return },
            }
        }
        match item {
            Outbound::Publish {
                subject,
                payload,
                reply,
            } => {
                let result = match reply {
                    None => client.publish(subject, payload).await,
                    Some(reply) => client.publish_with_reply(subject, reply, payload).await,
                };
                match result {
                    Ok(()) => metrics.sent.inc(),
                    Err(err) => {
                        metrics.dropped_client_error.inc();
                        tracing::warn!(error = %err, "bus: NATS client refused a publish");
                    }
                }
            }
            Outbound::Flush(done) => {
                let _ = client.flush().await;
                let _ = done.send(());
            }
        }
        metrics.publish_queue_depth.set(rx.len() as f64);
    }
}

/// Re-reads the client's connection state now and then, repairing a lost connection event.
async fn recheck_status(
    client: async_nats::Client,
    status: Arc<watch::Sender<BusStatus>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(STATUS_RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        if connected != status.borrow().is_connected() {
            set_status(&status, &metrics, connected);
        }
    }
}

/// Moves messages from the client's subscriber into the subscription's bounded queue, counting
/// what does not fit, until the [`Subscription`] is dropped (which unsubscribes).
async fn pump(
    mut subscriber: async_nats::Subscriber,
    tx: mpsc::Sender<Message>,
    metrics: Arc<Metrics>,
) {
    loop {
        let message = tokio::select! {
            () = tx.closed() => break,
            message = subscriber.next() => match message {
                Some(message) => message,
                None => break,
            },
        };
        // A `>` subscription also matches our own confirmation probes.
        if message.subject.starts_with(CONFIRM_PREFIX) {
            continue;
        }
        metrics.received.inc();
        match tx.try_send(convert(message)) {
            Ok(()) => metrics.delivered.inc(),
            Err(TrySendError::Full(_)) => metrics.dropped_subscriber_queue_full.inc(),
            Err(TrySendError::Closed(_)) => break,
        }
    }
    // Dropping `subscriber` sends UNSUB.
}

fn convert(message: async_nats::Message) -> Message {
    Message {
        subject: message.subject.into_string(),
        payload: message.payload,
        reply: message.reply.map(async_nats::Subject::into_string),
    }
}

/// Reconnect back-off: at once, then doubling from 200 ms to 2 s, with up to 50 % jitter so a
/// fleet of clients does not hammer a restarted server in lockstep.
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let shift = u32::try_from(attempts.min(5)).unwrap_or(5);
    let base = Duration::from_millis(100u64 << shift).min(Duration::from_secs(2));
    base + base.mul_f64(fastrand::f64() * 0.5)
}

fn describe_connect_error(err: &async_nats::ConnectError) -> String {
    let source = std::error::Error::source(err).map(ToString::to_string);
    let io_kind = std::error::Error::source(err)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    match (err.kind(), io_kind) {
        (_, Some(std::io::ErrorKind::ConnectionRefused)) => "connection refused".to_owned(),
        (ConnectErrorKind::TimedOut, _) => "timed out".to_owned(),
        (ConnectErrorKind::AuthorizationViolation, _) => {
            "the server refused this identity (no NATS user maps to its certificate: \
             regenerate the server's config with `hydrant certs nats-config`)"
                .to_owned()
        }
        (ConnectErrorKind::Tls, _) => format!(
            "TLS setup failed ({}); check bus.tls's files",
            source.unwrap_or_default()
        ),
        (ConnectErrorKind::Dns, _) => format!(
            "cannot resolve the host name ({})",
            source.unwrap_or_default()
        ),
        (kind, _) => match source {
            Some(source) => format!("{kind}: {source}"),
            None => kind.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_starts_at_once_and_stays_bounded() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        for attempts in 2..100 {
            let d = reconnect_delay(attempts);
            assert!(d >= Duration::from_millis(200), "{attempts}: {d:?}");
            assert!(d <= Duration::from_secs(3), "{attempts}: {d:?}");
        }
    }
}
