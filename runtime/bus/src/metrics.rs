//! The bus's self-telemetry, registered in the owning role's [`Registry`] so `/metrics` and the
//! pipeline show it under that role's `source_id`.
//!
//! Two ledgers balance for every bus handle:
//! - publishing: `bus.published = bus.sent + bus.dropped{reason=publish_queue_full|disconnected|
//!   closed|client_error} + (messages still queued)`;
//! - receiving: `bus.received = bus.delivered + bus.dropped{reason=subscriber_queue_full}`.
//!
//! NATS only: `bus.refused{reason=permissions_violation}` counts publishes and subscriptions
//! the server refused because this role's identity may not use that subject (the server drops
//! the message, so nobody acts on it); `reason=authorization_violation` counts connections it
//! refused outright.
//!
//! NATS only: `bus.dropped{reason=client_queue_full}` counts overflows of the client library's
//! own per-subscription channel before our pump sees them (so they are not in `received`).
//! That channel is sized to make this rare, and the client reports it through a lossy event
//! channel, so the count is a lower bound.

use hydrant_emitter::{Counter, Gauge, Registry};

/// Counter and gauge handles for one bus handle (and the subscriptions it creates).
#[derive(Debug)]
pub(crate) struct Metrics {
    pub published: Counter,
    pub sent: Counter,
    pub received: Counter,
    pub delivered: Counter,
    pub dropped_publish_queue_full: Counter,
    pub dropped_subscriber_queue_full: Counter,
    pub dropped_disconnected: Counter,
    pub dropped_closed: Counter,
    pub dropped_client_error: Counter,
    pub dropped_client_queue_full: Counter,
    pub requests_ok: Counter,
    pub requests_timeout: Counter,
    pub requests_no_responders: Counter,
    pub requests_disconnected: Counter,
    pub reconnects: Counter,
    pub refused_permissions: Counter,
    pub refused_authorization: Counter,
    pub connected: Gauge,
    pub publish_queue_depth: Gauge,
}

impl Metrics {
    pub(crate) fn new(registry: &Registry, backend: &str) -> Self {
        let b = [("backend", backend)];
        let dropped = |reason: &str| {
            registry.counter(
                "bus.dropped",
                "Bus messages dropped, by reason",
                &[("backend", backend), ("reason", reason)],
            )
        };
        let requests = |outcome: &str| {
            registry.counter(
                "bus.requests",
                "Bus requests made, by outcome",
                &[("backend", backend), ("outcome", outcome)],
            )
        };
        Self {
            published: registry.counter("bus.published", "Messages published on the bus", &b),
            sent: registry.counter(
                "bus.sent",
                "Published messages handed to the bus server or hub",
                &b,
            ),
            received: registry.counter(
                "bus.received",
                "Messages that reached one of this role's subscriptions",
                &b,
            ),
            delivered: registry.counter(
                "bus.delivered",
                "Messages queued to a subscription for the role to read",
                &b,
            ),
            dropped_publish_queue_full: dropped("publish_queue_full"),
            dropped_subscriber_queue_full: dropped("subscriber_queue_full"),
            dropped_disconnected: dropped("disconnected"),
            dropped_closed: dropped("closed"),
            dropped_client_error: dropped("client_error"),
            dropped_client_queue_full: dropped("client_queue_full"),
            requests_ok: requests("ok"),
            requests_timeout: requests("timeout"),
            requests_no_responders: requests("no_responders"),
            requests_disconnected: requests("disconnected"),
            refused_permissions: registry.counter(
                "bus.refused",
                "Publishes or subscriptions the NATS server refused as not permitted for this \
                 role's identity, by reason",
                &[("backend", backend), ("reason", "permissions_violation")],
            ),
            refused_authorization: registry.counter(
                "bus.refused",
                "Publishes or subscriptions the NATS server refused as not permitted for this \
                 role's identity, by reason",
                &[("backend", backend), ("reason", "authorization_violation")],
            ),
            reconnects: registry.counter(
                "bus.reconnects",
                "Times the bus connection came back after an outage",
                &b,
            ),
            connected: registry.gauge(
                "bus.connected",
                "1 while the bus is connected, 0 while it is down",
                "bool",
                &b,
            ),
            publish_queue_depth: registry.gauge(
                "bus.publish_queue_depth",
                "Messages waiting in the publish queue for the bus server",
                "count",
                &b,
            ),
        }
    }
}
