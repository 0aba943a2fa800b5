//! What the platform's envelopes mean: the named semantic envelopes every producer builds and
//! every consumer reads, so a name or tag key is spelled once.
//!
//! - [`tag`]: the tag keys the platform sets (`source_type`, `app_name`, the router timer's
//!   `status_code`, `router_error`, ...).
//! - [`source_type`]: the `source_type` of log lines (`APP/PROC/WEB`, `RTR`, `STG`, `CELL`,
//!   `HM`, ...), as the cf CLI shows them in `[RTR/0]`.
//! - [`event_title`]: the `Event` titles consumers act on (an instance's crash).
//! - [`ContainerMetric`]: the per-instance gauges an executor reports (`cpu`, `memory`, ...).
//! - [`HttpTimer`]: the router's `http` Timer, one per proxied request: its tags for the
//!   producer, and a typed reading of an encoded envelope for consumers (windows, console,
//!   dashboards, nozzles).
//!
//! Where it sits: the contract layer, beside the generated messages. Producers and consumers
//! depend on these names, never on each other's string literals.
//!
//! Invariant: reading is zero-copy and never panics; a field that is absent or malformed reads
//! as `None`, not as a default that could be mistaken for data.

use crate::wire::{EnvelopeView, Kind};

/// Tag keys the platform sets on envelopes.
pub mod tag {
    /// Where a log line came from (see [`super::source_type`]).
    pub const SOURCE_TYPE: &str = "source_type";
    /// The app's guid.
    pub const APP_ID: &str = "app_id";
    /// The app's name.
    pub const APP_NAME: &str = "app_name";
    /// The app's space's guid.
    pub const SPACE_ID: &str = "space_id";
    /// The app's space.
    pub const SPACE_NAME: &str = "space_name";
    /// The app's organisation's guid.
    pub const ORGANIZATION_ID: &str = "organization_id";
    /// The app's organisation.
    pub const ORGANIZATION_NAME: &str = "organization_name";
    /// The instance index, as a tag (the envelope's own `instance_id` field says the same).
    pub const INSTANCE_ID: &str = "instance_id";
    /// `Client` on the router's timer (the request as the client saw it), `Server` on an app's
    /// own timers.
    pub const PEER_TYPE: &str = "peer_type";
    /// The HTTP method.
    pub const METHOD: &str = "method";
    /// The HTTP status sent to the client, as decimal text.
    pub const STATUS_CODE: &str = "status_code";
    /// The request URI, `http://host/path`.
    pub const URI: &str = "uri";
    /// The request's `X-Vcap-Request-Id`.
    pub const REQUEST_ID: &str = "request_id";
    /// The client's `User-Agent`.
    pub const USER_AGENT: &str = "user_agent";
    /// The client's address and port.
    pub const REMOTE_ADDRESS: &str = "remote_address";
    /// The instance guid the router sent the request to.
    pub const ROUTING_INSTANCE_ID: &str = "routing_instance_id";
    /// Who made the envelope (`hydrant-router`, ...).
    pub const ORIGIN: &str = "origin";
    /// Set when the router answered itself; the value is the reason (`unknown_route`, ...).
    pub const ROUTER_ERROR: &str = "router_error";
    /// gorouter's name for [`ROUTER_ERROR`] (its `X-Cf-RouterError` header as a tag).
    pub const X_CF_ROUTERERROR: &str = "x_cf_routererror";
}

/// The `source_type` of log lines, as Cloud Foundry names them.
pub mod source_type {
    /// An app's own stdout/stderr (its web process).
    pub const APP_WEB: &str = "APP/PROC/WEB";
    /// The router's access log line for a request.
    pub const ROUTER: &str = "RTR";
    /// Staging output.
    pub const STAGING: &str = "STG";
    /// The executor's lines about an instance's container.
    pub const CELL: &str = "CELL";
    /// Health-check outcomes from the executor.
    pub const HEALTH: &str = "HEALTH";
    /// The health manager's notices (restarts, give-ups).
    pub const HEALTH_MANAGER: &str = "HM";
    /// The cloud controller's lines about an app (start, stop, scale).
    pub const API: &str = "API";
    /// Loggregator's own notices (loss).
    pub const LOGGREGATOR: &str = "LGR";
    /// SLO alert notices.
    pub const SLO: &str = "SLO";
    /// Autoscaler decisions.
    pub const AUTOSCALER: &str = "AUTOSCALER";

    /// True for an app's own output (`APP`, `APP/PROC/WEB`, `APP/PROC/WORKER`, ...).
    #[must_use]
    pub fn is_app(source_type: &str) -> bool {
        source_type == "APP" || source_type.starts_with("APP/")
    }
}

/// `Event` titles the platform sends.
pub mod event_title {
    /// An instance exited unexpectedly (the executor's crash event).
    pub const APP_CRASH: &str = "app.crash";
    /// Cloud Foundry's audit event for the same.
    pub const AUDIT_PROCESS_CRASH: &str = "audit.app.process.crash";

    /// True for either spelling of an instance crash.
    #[must_use]
    pub fn is_crash(title: &str) -> bool {
        title == APP_CRASH || title == AUDIT_PROCESS_CRASH
    }
}

/// A per-instance container metric; an executor sends all of them in one Gauge envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerMetric {
    /// CPU use, percent of one core.
    Cpu,
    /// Memory in use, bytes.
    Memory,
    /// Disk in use, bytes.
    Disk,
    /// The memory limit, bytes.
    MemoryQuota,
    /// The disk limit, bytes.
    DiskQuota,
    /// Time since the instance started, nanoseconds.
    ContainerAge,
}

impl ContainerMetric {
    /// Every container metric, in the order an executor sends them.
    pub const ALL: [Self; 6] = [
        Self::Cpu,
        Self::Memory,
        Self::Disk,
        Self::MemoryQuota,
        Self::DiskQuota,
        Self::ContainerAge,
    ];

    /// The gauge's name in the envelope.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Memory => "memory",
            Self::Disk => "disk",
            Self::MemoryQuota => "memory_quota",
            Self::DiskQuota => "disk_quota",
            Self::ContainerAge => "container_age",
        }
    }

    /// The gauge's unit in the envelope.
    #[must_use]
    pub const fn unit(self) -> &'static str {
        match self {
            Self::Cpu => "percentage",
            Self::Memory | Self::Disk | Self::MemoryQuota | Self::DiskQuota => "bytes",
            Self::ContainerAge => "nanoseconds",
        }
    }

    /// The metric a gauge name stands for.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// The router's per-request Timer, read from an encoded envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimer<'a> {
    /// The status sent to the client; `None` when the tag is missing or not a status.
    pub status: Option<u16>,
    /// Why the router answered itself (`router_error`, or gorouter's `x_cf_routererror`);
    /// `None` when the app answered.
    pub router_error: Option<&'a str>,
    /// True for the request as the client saw it (`peer_type` `Client`, or no `peer_type`);
    /// false for an app's own `http` timers, which would count each request twice.
    pub client: bool,
    /// `(start, stop)` in UNIX nanoseconds, when both are present.
    pub span: Option<(i64, i64)>,
}

impl<'a> HttpTimer<'a> {
    /// The Timer's name.
    pub const NAME: &'static str = "http";

    /// Reads `view` as the router's timer; `None` when it is some other envelope.
    #[must_use]
    pub fn read(view: &EnvelopeView<'a>) -> Option<Self> {
        if view.kind != Kind::Timer || view.timer_name() != Some(Self::NAME) {
            return None;
        }
        let mut timer = Self {
            status: None,
            router_error: None,
            client: true,
            span: view.timer_span(),
        };
        for (k, v) in view.tags() {
            match k {
                tag::STATUS_CODE => {
                    timer.status = v.parse::<u16>().ok().filter(|s| (100..=599).contains(s));
                }
                tag::PEER_TYPE => timer.client = v.eq_ignore_ascii_case("client"),
                tag::ROUTER_ERROR | tag::X_CF_ROUTERERROR if !v.is_empty() && v != "-" => {
                    timer.router_error = Some(v);
                }
                _ => {}
            }
        }
        Some(timer)
    }

    /// The status class: 1 to 5 for `1xx` to `5xx`, 0 when the status is unknown.
    #[must_use]
    pub fn status_class(&self) -> usize {
        self.status.map_or(0, |s| usize::from(s / 100))
    }

    /// True when the router made the response itself (the app never answered).
    #[must_use]
    pub fn router_made(&self) -> bool {
        self.router_error.is_some()
    }

    /// How long the request took, in nanoseconds; `None` without a span, and for router-made
    /// responses, whose speed says nothing about the app.
    #[must_use]
    pub fn app_latency_ns(&self) -> Option<u64> {
        if self.router_made() {
            return None;
        }
        self.span
            .map(|(start, stop)| stop.saturating_sub(start).max(0).unsigned_abs())
    }
}

/// What the router knows about one request, as the tags of its `http` Timer.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimerTags<'a> {
    /// The HTTP method.
    pub method: &'a str,
    /// The status sent to the client, as decimal text.
    pub status_code: &'a str,
    /// `http://host/path`.
    pub uri: &'a str,
    /// The request's `X-Vcap-Request-Id`.
    pub request_id: &'a str,
    /// The client's `User-Agent`.
    pub user_agent: &'a str,
    /// The client's address and port.
    pub remote_address: &'a str,
    /// The app's guid.
    pub app_id: &'a str,
    /// The instance index.
    pub instance_id: &'a str,
    /// The instance guid the request went to.
    pub routing_instance_id: &'a str,
    /// Who made the timer.
    pub origin: &'a str,
}

impl<'a> HttpTimerTags<'a> {
    /// The tags every router timer carries (add [`tag::ROUTER_ERROR`] when the router answered
    /// itself, then the route's own tags such as `app_name`).
    #[must_use]
    pub fn fixed(&self) -> [(&'static str, &'a str); 11] {
        [
            (tag::PEER_TYPE, "Client"),
            (tag::METHOD, self.method),
            (tag::STATUS_CODE, self.status_code),
            (tag::URI, self.uri),
            (tag::REQUEST_ID, self.request_id),
            (tag::USER_AGENT, self.user_agent),
            (tag::REMOTE_ADDRESS, self.remote_address),
            (tag::APP_ID, self.app_id),
            (tag::INSTANCE_ID, self.instance_id),
            (tag::ROUTING_INSTANCE_ID, self.routing_instance_id),
            (tag::ORIGIN, self.origin),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::v2;

    fn timer(name: &str, tags: &[(&str, &str)]) -> bytes::Bytes {
        crate::wire::encode(&v2::Envelope {
            source_id: "app".into(),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>(),
            message: Some(v2::envelope::Message::Timer(v2::Timer {
                name: name.into(),
                start: 1_000,
                stop: 5_001_000,
            })),
            ..v2::Envelope::default()
        })
    }

    #[test]
    fn the_router_timer_reads_back_what_the_router_wrote() {
        let tags = HttpTimerTags {
            method: "GET",
            status_code: "503",
            uri: "http://a/b",
            request_id: "r",
            user_agent: "curl",
            remote_address: "127.0.0.1:5",
            app_id: "app",
            instance_id: "0",
            routing_instance_id: "i",
            origin: "hydrant-router",
        };
        let mut all = tags.fixed().to_vec();
        all.push((tag::ROUTER_ERROR, "no_endpoints"));
        let bytes = timer(HttpTimer::NAME, &all);
        let view = EnvelopeView::parse(&bytes).unwrap();
        let t = HttpTimer::read(&view).unwrap();
        assert_eq!(t.status, Some(503));
        assert_eq!(t.status_class(), 5);
        assert!(t.client && t.router_made());
        assert_eq!(t.router_error, Some("no_endpoints"));
        assert_eq!(t.app_latency_ns(), None, "router-made: no app latency");

        let ok = timer(
            HttpTimer::NAME,
            &[("status_code", "200"), ("x_cf_routererror", "-")],
        );
        let t = HttpTimer::read(&EnvelopeView::parse(&ok).unwrap()).unwrap();
        assert_eq!((t.status_class(), t.router_made()), (2, false));
        assert_eq!(t.app_latency_ns(), Some(5_000_000));
    }

    #[test]
    fn other_timers_and_app_side_timers_are_told_apart() {
        let other = timer("db", &[("status_code", "200")]);
        assert!(HttpTimer::read(&EnvelopeView::parse(&other).unwrap()).is_none());
        let server = timer(HttpTimer::NAME, &[("peer_type", "Server")]);
        let t = HttpTimer::read(&EnvelopeView::parse(&server).unwrap()).unwrap();
        assert!(!t.client);
        let odd = timer(HttpTimer::NAME, &[("status_code", "999")]);
        let t = HttpTimer::read(&EnvelopeView::parse(&odd).unwrap()).unwrap();
        assert_eq!((t.status, t.status_class()), (None, 0));
    }

    #[test]
    fn container_metrics_and_source_types_have_one_spelling() {
        for m in ContainerMetric::ALL {
            assert_eq!(ContainerMetric::from_name(m.name()), Some(m));
        }
        assert_eq!(ContainerMetric::from_name("cpu_entitlement"), None);
        assert!(source_type::is_app(source_type::APP_WEB));
        assert!(source_type::is_app("APP"));
        assert!(!source_type::is_app(source_type::ROUTER));
        assert!(!source_type::is_app("APPS"));
        assert!(event_title::is_crash("audit.app.process.crash"));
        assert!(!event_title::is_crash("app.start"));
    }
}
