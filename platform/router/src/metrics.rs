//! The router's own counters and gauges (`router.*`), registered once so the hot path pays one
//! relaxed atomic add per count.
//!
//! Invariant: every router-made response is counted under `router.errors{reason}` with the same
//! reason it carries in `X-Cf-RouterError`, and every refused registration under
//! `router.dropped{reason}`; every response head sent is counted once under
//! `router.responses{status_class}`.
//!
//! Per-app series (`router.app_responses{app_id, app_name, status_class}`,
//! `router.app_response_seconds{app_id, app_name}`) let a Prometheus that scrapes `/metrics`
//! directly see what the `http` Timer envelopes carry; they exist only while the app has a route
//! in the table ([`Metrics::retain_apps`]), so their number is bounded by the table's limits.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hydrant_emitter::{Counter, Gauge, Histogram, Registry, lock};
use hydrant_envelope::semantic::tag;

use crate::table::{Endpoint, Refused};

/// Upper bounds (seconds) of the backend latency buckets: gorouter's Prometheus buckets
/// (1 ms to 1 s).
const LATENCY_BUCKETS_SECONDS: [f64; 12] = [
    0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.02, 0.04, 0.05, 0.1, 0.5, 1.0,
];

/// Router-made response reasons (gorouter's `X-Cf-RouterError` values where it has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    UnknownRoute,
    NoEndpoints,
    EndpointFailure,
    EndpointTimeout,
    EmptyHost,
    InvalidAppInstanceHeader,
    UnknownAppInstance,
}

impl Reason {
    const ALL: [Self; 7] = [
        Self::UnknownRoute,
        Self::NoEndpoints,
        Self::EndpointFailure,
        Self::EndpointTimeout,
        Self::EmptyHost,
        Self::InvalidAppInstanceHeader,
        Self::UnknownAppInstance,
    ];

    /// The metric tag and the `X-Hydrant-Router-Error` value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::UnknownRoute => "unknown_route",
            Self::NoEndpoints => "no_endpoints",
            Self::EndpointFailure => "endpoint_failure",
            Self::EndpointTimeout => "endpoint_timeout",
            Self::EmptyHost => "empty_host",
            Self::InvalidAppInstanceHeader => "invalid_cf_app_instance_header",
            Self::UnknownAppInstance => "unknown_app_instance",
        }
    }

    /// The `X-Cf-RouterError` value gorouter would send.
    pub(crate) fn gorouter(self) -> &'static str {
        match self {
            Self::EndpointTimeout => "endpoint_failure",
            Self::UnknownAppInstance => "unknown_route",
            other => other.as_str(),
        }
    }
}

/// Status classes in the order of the `responses` counters.
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "xxx"];

fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500..=599 => 4,
        _ => 5,
    }
}

const APP_RESPONSES: &str = "router.app_responses";
const APP_RESPONSE_SECONDS: &str = "router.app_response_seconds";

/// One app's response counters and response-time histogram. Clones share the same series; a
/// handle kept after the app left the table counts into series `/metrics` no longer shows.
#[derive(Debug, Clone)]
pub(crate) struct AppSeries(Arc<AppCells>);

#[derive(Debug)]
struct AppCells {
    responses: [Counter; 6],
    time: Histogram,
}

impl AppSeries {
    /// Counts one response to a client and the time from its request to its end.
    pub(crate) fn observe(&self, status: u16, elapsed: Duration) {
        self.0.responses[class_index(status)].inc();
        self.0.time.observe(elapsed);
    }
}

/// Every `router.*` metric. Clones share the same series (each worker holds one).
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub(crate) requests: Counter,
    responses: [Counter; 6],
    errors: [Counter; 7],
    pub(crate) retries: Counter,
    pub(crate) attempt_failures: Counter,
    pub(crate) routes: Gauge,
    pub(crate) endpoints: Gauge,
    pub(crate) connections: Gauge,
    pub(crate) registrations: Counter,
    pub(crate) unregistrations: Counter,
    pub(crate) pruned: Counter,
    pub(crate) upgrades: Counter,
    dropped: [Counter; 7],
    latency: Histogram,
    registry: Registry,
    /// Per-app series by app guid.
    apps: Arc<Mutex<HashMap<Box<str>, AppSeries>>>,
}

impl Metrics {
    pub(crate) fn new(registry: &Registry) -> Self {
        let class = |c: &str| {
            registry.counter(
                "router.responses",
                "Responses sent to clients, by status class",
                &[("status_class", c)],
            )
        };
        let dropped = |reason: &str| {
            registry.counter(
                "router.dropped",
                "Registrations (or parts of them) the router refused, by reason",
                &[("reason", reason)],
            )
        };
        Self {
            requests: registry.counter("router.requests", "Requests received from clients", &[]),
            responses: STATUS_CLASSES.map(class),
            errors: Reason::ALL.map(|r| {
                registry.counter(
                    "router.errors",
                    "Requests the router answered itself (or lost), by reason",
                    &[("reason", r.as_str())],
                )
            }),
            retries: registry.counter(
                "router.retries",
                "Requests sent to another instance after one could not be reached",
                &[],
            ),
            attempt_failures: registry.counter(
                "router.backend_unreachable",
                "Attempts that could not reach an instance (dial failed, connection closed unused)",
                &[],
            ),
            routes: registry.gauge(
                "router.routes",
                "Routes (host + path) in the table",
                "count",
                &[],
            ),
            endpoints: registry.gauge(
                "router.endpoints",
                "Instances over all routes",
                "count",
                &[],
            ),
            connections: registry.gauge(
                "router.connections",
                "Client connections open",
                "count",
                &[],
            ),
            registrations: registry.counter(
                "router.registrations",
                "router.register messages received",
                &[],
            ),
            unregistrations: registry.counter(
                "router.unregistrations",
                "router.unregister messages received",
                &[],
            ),
            pruned: registry.counter(
                "router.pruned",
                "Registrations removed because they were not refreshed in time",
                &[],
            ),
            upgrades: registry.counter(
                "router.upgrades",
                "Connections upgraded (WebSocket) and tunnelled to an instance",
                &[],
            ),
            dropped: [
                Refused::InvalidRegistration.reason(),
                Refused::InvalidUri.reason(),
                Refused::TableFull.reason(),
                Refused::RouteFull.reason(),
                "undecodable",
                "not_placed",
                "not_assigned",
            ]
            .map(dropped),
            latency: registry.histogram(
                "router.backend_latency_seconds",
                "Time from sending a request to an instance to its response head, in seconds",
                &LATENCY_BUCKETS_SECONDS,
                &[],
            ),
            registry: registry.clone(),
            apps: Arc::default(),
        }
    }

    pub(crate) fn response(&self, status: u16) {
        self.responses[class_index(status)].inc();
    }

    /// The series of the app behind `endpoint`, registered on first use; `None` for a route
    /// without an app (a static route with no `app_id`).
    pub(crate) fn app(&self, endpoint: &Endpoint) -> Option<AppSeries> {
        let app_id = endpoint.app_id.as_deref()?;
        let mut apps = lock(&self.apps);
        if let Some(series) = apps.get(app_id) {
            return Some(series.clone());
        }
        let app_name = endpoint
            .tags
            .iter()
            .find(|(k, _)| k == tag::APP_NAME)
            .map_or("", |(_, v)| v.as_str());
        let tags = [("app_id", app_id), (tag::APP_NAME, app_name)];
        let series = AppSeries(Arc::new(AppCells {
            responses: STATUS_CLASSES.map(|class| {
                let mut tags = tags.to_vec();
                tags.push(("status_class", class));
                self.registry.counter(
                    APP_RESPONSES,
                    "Responses sent to clients for an app's routes, by status class",
                    &tags,
                )
            }),
            time: self.registry.histogram(
                APP_RESPONSE_SECONDS,
                "Time from a request for an app to the end of its response, in seconds",
                &LATENCY_BUCKETS_SECONDS,
                &tags,
            ),
        }));
        apps.insert(app_id.into(), series.clone());
        Some(series)
    }

    /// Drops the series of every app not in `live` (the apps with a route in the table).
    pub(crate) fn retain_apps(&self, live: &HashSet<&str>) {
        let mut apps = lock(&self.apps);
        apps.retain(|app_id, _| {
            let keep = live.contains(&**app_id);
            if !keep {
                for name in [APP_RESPONSES, APP_RESPONSE_SECONDS] {
                    self.registry.remove(name, &[("app_id", app_id)]);
                }
            }
            keep
        });
    }

    pub(crate) fn error(&self, reason: Reason) {
        if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
            self.errors[i].inc();
        }
    }

    pub(crate) fn refused(&self, refused: Refused) {
        let i = match refused {
            Refused::InvalidRegistration => 0,
            Refused::InvalidUri => 1,
            Refused::TableFull => 2,
            Refused::RouteFull => 3,
        };
        self.dropped[i].inc();
    }

    /// A bus message that is not the JSON it should be.
    pub(crate) fn undecodable(&self) {
        self.dropped[4].inc();
    }

    /// A route message from a cell for an instance not placed on that cell.
    pub(crate) fn not_placed(&self) {
        self.dropped[5].inc();
    }

    /// A registration for a route the cloud controller did not assign to its app.
    pub(crate) fn not_assigned(&self) {
        self.dropped[6].inc();
    }

    pub(crate) fn backend_latency(&self, latency: Duration) {
        self.latency.observe(latency);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_a_histogram_in_seconds() {
        let registry = Registry::new("router", "0");
        let metrics = Metrics::new(&registry);
        metrics.backend_latency(Duration::from_micros(500));
        metrics.backend_latency(Duration::from_millis(30));
        metrics.backend_latency(Duration::from_secs(5));
        let bucket = |le: f64| {
            metrics
                .latency
                .cumulative()
                .into_iter()
                .find(|(b, _)| *b == le)
                .map(|(_, n)| n)
        };
        assert_eq!(bucket(0.001), Some(1));
        assert_eq!(bucket(0.02), Some(1));
        assert_eq!(bucket(0.04), Some(2));
        assert_eq!(bucket(1.0), Some(2));
        assert_eq!(bucket(f64::INFINITY), Some(3));
        assert_eq!(metrics.latency.sum(), Duration::from_micros(5_030_500));
        let text = registry.render_prometheus();
        assert!(text.contains("# TYPE router_backend_latency_seconds histogram"));
        assert!(!text.contains("backend_latency_bucket_total"), "{text}");
    }

    #[test]
    fn app_series_live_as_long_as_the_app_has_routes() {
        let registry = Registry::new("router", "0");
        let metrics = Metrics::new(&registry);
        let endpoint = |app: &str, name: &str| {
            Endpoint::new(
                "127.0.0.1:8080".parse().unwrap(),
                Some(app),
                None,
                Some("0"),
                vec![("app_name".to_owned(), name.to_owned())],
                None,
                1,
            )
        };
        let shop = metrics.app(&endpoint("guid-shop", "shop")).unwrap();
        shop.observe(200, Duration::from_millis(3));
        shop.observe(503, Duration::from_millis(30));
        // A second instance of the same app counts into the same series.
        endpoint("guid-shop", "shop")
            .app_series(&metrics)
            .unwrap()
            .observe(201, Duration::from_millis(1));
        metrics
            .app(&endpoint("guid-blog", "blog"))
            .unwrap()
            .observe(200, Duration::from_millis(1));
        let text = registry.render_prometheus();
        let labels = r#"source_id="router",instance_id="0",app_id="guid-shop",app_name="shop""#;
        for line in [
            format!(r#"router_app_responses_total{{{labels},status_class="2xx"}} 2"#),
            format!(r#"router_app_responses_total{{{labels},status_class="5xx"}} 1"#),
            format!(r#"router_app_response_seconds_bucket{{{labels},le="0.004"}} 2"#),
            format!("router_app_response_seconds_count{{{labels}}} 3"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        let unowned = Endpoint::new(
            "127.0.0.1:8080".parse().unwrap(),
            None,
            None,
            None,
            Vec::new(),
            None,
            1,
        );
        assert!(metrics.app(&unowned).is_none(), "a static route has no app");

        metrics.retain_apps(&HashSet::from(["guid-blog"]));
        let text = registry.render_prometheus();
        assert!(!text.contains("guid-shop"), "{text}");
        assert!(text.contains(r#"app_name="blog""#), "{text}");
        metrics.retain_apps(&HashSet::new());
        assert!(!registry.render_prometheus().contains("app_id="));
    }

    #[test]
    fn every_reason_and_drop_has_its_own_counter() {
        let registry = Registry::new("router", "0");
        let metrics = Metrics::new(&registry);
        for reason in Reason::ALL {
            metrics.error(reason);
        }
        metrics.refused(Refused::TableFull);
        metrics.undecodable();
        assert_eq!(registry.counter_sum("router.errors", &[]), 7);
        assert_eq!(
            registry.counter_sum("router.dropped", &[("reason", "table_full")]),
            1
        );
        assert_eq!(
            registry.counter_sum("router.dropped", &[("reason", "undecodable")]),
            1
        );
    }
}
