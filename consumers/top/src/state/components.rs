//! The platform's components as their own metric envelopes describe them: every agent, doppler
//! (and its log cache), traffic controller, nozzle and executor, keyed by source and instance.
//!
//! Flow: counter and gauge envelopes named `<role>.<noun>` (invariant 7 of the architecture:
//! the platform observes itself through its own pipeline) → [`Components::record`] → the
//! pipeline and nodes tables, built from [`Components::pipeline_rows`] and
//! [`Components::nodes`]. Any role's `tls.cert_expiry_seconds` gauge is kept too, whatever its
//! prefix, so the nodes screen and the header can warn before a certificate expires.
//!
//! Invariants: memory is bounded (components and series per component are capped; refusals are
//! counted); rates come from counter totals and the envelopes' own timestamps, so a late or
//! replayed report never inflates them, and a counter that restarts (the component restarted)
//! is measured from its restart on, never as a negative rate.

use std::collections::{HashMap, VecDeque};

use hydrant_envelope::wire::{EnvelopeView, Fields, Kind, Value};

/// Role prefixes whose metrics are kept (`<role>.<noun>`).
pub(crate) const ROLES: [&str; 6] = [
    "agent",
    "doppler",
    "logcache",
    "trafficcontroller",
    "nozzle",
    "executor",
];

/// The gauge every role with a TLS leaf keeps current: seconds until its own certificate
/// expires (negative once it has). Kept from any source, whatever its role prefix.
pub(crate) const CERT_EXPIRY: &str = "tls.cert_expiry_seconds";

/// Counter samples kept per series (components report every few seconds).
const SAMPLES: usize = 16;

/// Rates are measured over this much of a series' own history, in ns.
const RATE_SPAN_NS: i64 = 30_000_000_000;

/// A component that has not reported for this long is stale, in ns.
pub(crate) const STALE_NS: i64 = 20_000_000_000;

#[derive(Debug, Clone)]
enum Data {
    /// `(timestamp ns, total)`, oldest first.
    Counter(VecDeque<(i64, u64)>),
    /// The latest value and when.
    Gauge(f64, i64),
}

#[derive(Debug, Clone)]
struct Series {
    name: Box<str>,
    tags: Vec<(Box<str>, Box<str>)>,
    data: Data,
}

impl Series {
    fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, v)| &**v)
    }

    /// Per-second rate of a counter over its last [`RATE_SPAN_NS`], from the newest restart on.
    fn rate(&self) -> Option<f64> {
        let Data::Counter(samples) = &self.data else {
            return None;
        };
        let &(t1, v1) = samples.back()?;
        let mut first = (t1, v1);
        for &(t, v) in samples.iter().rev().skip(1) {
            if v > first.1 || t1 - t > RATE_SPAN_NS {
                // A larger total before a smaller one: the counter restarted after it.
                break;
            }
            first = (t, v);
        }
        let dt = t1 - first.0;
        (dt > 0).then(|| (v1 - first.1) as f64 / (dt as f64 / 1e9))
    }

    fn total(&self) -> Option<u64> {
        match &self.data {
            Data::Counter(s) => s.back().map(|(_, v)| *v),
            Data::Gauge(..) => None,
        }
    }

    fn gauge(&self) -> Option<f64> {
        match self.data {
            Data::Gauge(v, _) => Some(v),
            Data::Counter(_) => None,
        }
    }
}

/// One copy of one component.
#[derive(Debug, Clone, Default)]
struct Component {
    series: HashMap<Box<str>, Series>,
    /// Newest report timestamp, UNIX ns.
    last_ts: i64,
}

impl Component {
    fn matching<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Series> + 'a {
        self.series.values().filter(move |s| &*s.name == name)
    }

    fn rate(&self, names: &[&str]) -> Option<f64> {
        let mut out = None;
        for name in names {
            for s in self.matching(name) {
                if let Some(r) = s.rate() {
                    *out.get_or_insert(0.0) += r;
                }
            }
        }
        out
    }

    fn total(&self, names: &[&str]) -> Option<u64> {
        let mut out = None;
        for name in names {
            for s in self.matching(name) {
                if let Some(t) = s.total() {
                    *out.get_or_insert(0) += t;
                }
            }
        }
        out
    }

    fn gauge(&self, names: &[&str]) -> Option<f64> {
        let mut out = None;
        for name in names {
            for s in self.matching(name) {
                if let Some(v) = s.gauge() {
                    *out.get_or_insert(0.0) += v;
                }
            }
        }
        out
    }

    fn gauge_tagged(&self, name: &str, key: &str, value: &str) -> Option<f64> {
        self.matching(name)
            .filter(|s| s.tag(key) == Some(value))
            .find_map(Series::gauge)
    }

    /// Seconds until the soonest of the component's certificates expires.
    fn cert_expiry(&self) -> Option<f64> {
        self.matching(CERT_EXPIRY)
            .filter_map(Series::gauge)
            .reduce(f64::min)
    }

    fn has_role(&self, role: &str) -> bool {
        self.series.values().any(|s| {
            s.name
                .strip_prefix(role)
                .is_some_and(|rest| rest.starts_with('.'))
        })
    }
}

/// What the pipeline screen says about one hop.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HopStats {
    pub kind: &'static str,
    pub source: String,
    pub instance: String,
    pub in_rate: Option<f64>,
    pub out_rate: Option<f64>,
    pub drop_rate: Option<f64>,
    pub dropped: Option<u64>,
    pub queue: Option<f64>,
    pub consumers: Option<f64>,
    pub slow: Option<u64>,
    /// Dropped since start by reason, largest first.
    pub reasons: Vec<(String, u64)>,
    pub last_ts: i64,
}

/// What the nodes screen says about one executor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExecutorStats {
    pub id: String,
    /// MiB.
    pub memory_used: Option<f64>,
    /// MiB.
    pub memory_capacity: Option<f64>,
    pub running: Option<f64>,
    pub starting: Option<f64>,
    pub crashed: Option<f64>,
    pub log_rate: Option<f64>,
    pub starts: Option<u64>,
    pub crashes: Option<u64>,
    /// Seconds until the node's own TLS certificate expires (negative once it has).
    pub cert_expiry: Option<f64>,
    /// An executor cell (healthy, evacuating or, once silent, lost), not another role.
    pub cell: bool,
    /// `executor.evacuating`: 1 while the cell moves its instances elsewhere.
    pub evacuating: Option<f64>,
    pub last_ts: i64,
}

impl ExecutorStats {
    /// A node known only by `id`: every metric unknown (`-` on screen, never 0).
    pub(crate) fn unreported(id: String, cell: bool, last_ts: i64) -> Self {
        Self {
            id,
            memory_used: None,
            memory_capacity: None,
            running: None,
            starting: None,
            crashed: None,
            log_rate: None,
            starts: None,
            crashes: None,
            cert_expiry: None,
            cell,
            evacuating: None,
            last_ts,
        }
    }
}

/// How one kind of hop names its metrics.
struct Spec {
    kind: &'static str,
    ins: &'static [&'static str],
    outs: &'static [&'static str],
    drops: &'static str,
    queue: &'static [&'static str],
    consumers: &'static [&'static str],
    slow: Option<&'static str>,
}

const SPECS: [Spec; 5] = [
    Spec {
        kind: "agent",
        ins: &["agent.ingress"],
        outs: &["agent.egress"],
        drops: "agent.dropped",
        queue: &["agent.queue_depth"],
        consumers: &["agent.doppler_connections"],
        slow: None,
    },
    Spec {
        kind: "doppler",
        ins: &["doppler.ingress"],
        outs: &["doppler.egress"],
        drops: "doppler.dropped",
        queue: &["doppler.ingress_ring_depth"],
        consumers: &["doppler.subscriptions"],
        slow: None,
    },
    Spec {
        kind: "logcache",
        ins: &["logcache.ingress"],
        outs: &["logcache.egress"],
        drops: "logcache.rejected",
        queue: &["logcache.store_size"],
        consumers: &[],
        slow: None,
    },
    Spec {
        kind: "trafficcontroller",
        ins: &["trafficcontroller.ingress"],
        outs: &["trafficcontroller.egress"],
        drops: "trafficcontroller.dropped",
        queue: &["trafficcontroller.queued"],
        consumers: &[
            "trafficcontroller.firehoses",
            "trafficcontroller.app_streams",
            "trafficcontroller.sse_streams",
        ],
        slow: Some("trafficcontroller.slow_consumers"),
    },
    Spec {
        kind: "nozzle",
        ins: &["nozzle.received"],
        outs: &["nozzle.sent"],
        drops: "nozzle.dropped",
        queue: &["nozzle.queue_depth"],
        consumers: &[],
        slow: None,
    },
];

/// Every component seen, bounded.
#[derive(Debug, Clone)]
pub(crate) struct Components {
    /// source id → instance id → component.
    map: HashMap<Box<str>, HashMap<Box<str>, Component>>,
    count: usize,
    max_components: usize,
    max_series: usize,
    /// Reports refused because `max_components` were tracked.
    pub(crate) dropped_components: u64,
    /// Series refused because a component had `max_series`.
    pub(crate) dropped_series: u64,
}

/// The role a metric name belongs to, when it is one whose metrics are kept.
pub(crate) fn role_of(name: &str) -> Option<&'static str> {
    let (role, rest) = name.split_once('.')?;
    if rest.is_empty() {
        return None;
    }
    ROLES.iter().copied().find(|r| *r == role)
}

fn series_key(name: &str, tags: &[(&str, &str)]) -> String {
    let mut key = String::with_capacity(name.len() + 32);
    key.push_str(name);
    for (k, v) in tags {
        key.push('\u{0}');
        key.push_str(k);
        key.push('=');
        key.push_str(v);
    }
    key
}

impl Components {
    pub(crate) fn new(max_components: usize, max_series: usize) -> Self {
        Self {
            map: HashMap::new(),
            count: 0,
            max_components,
            max_series,
            dropped_components: 0,
            dropped_series: 0,
        }
    }

    /// Keeps a counter or gauge envelope if it is a component's own metric. Returns whether it
    /// was one.
    pub(crate) fn record(&mut self, view: &EnvelopeView<'_>) -> bool {
        match view.kind {
            Kind::Counter => {
                let Some(name) = view.counter_name().filter(|n| role_of(n).is_some()) else {
                    return false;
                };
                let mut total = 0;
                for (n, v) in Fields::new(view.body()).flatten() {
                    if let (3, Value::Varint(t)) = (n, v) {
                        total = t;
                    }
                }
                self.store(view, name, |data| match data {
                    Some(Data::Counter(samples)) => {
                        // Reports arrive in order per component; a replayed older one is
                        // ignored rather than bending the rate.
                        if samples.back().is_none_or(|(t, _)| *t < view.timestamp) {
                            if samples.len() >= SAMPLES {
                                samples.pop_front();
                            }
                            samples.push_back((view.timestamp, total));
                        }
                        None
                    }
                    _ => Some(Data::Counter(VecDeque::from([(view.timestamp, total)]))),
                })
            }
            Kind::Gauge => {
                let mut kept = false;
                for (name, value, _unit) in view.gauge_values() {
                    if (role_of(name).is_none() && name != CERT_EXPIRY) || !value.is_finite() {
                        continue;
                    }
                    kept |= self.store(view, name, |data| match data {
                        Some(Data::Gauge(v, t)) if *t <= view.timestamp => {
                            *v = value;
                            *t = view.timestamp;
                            None
                        }
                        Some(Data::Gauge(..)) => None,
                        _ => Some(Data::Gauge(value, view.timestamp)),
                    });
                }
                kept
            }
            _ => false,
        }
    }

    /// Finds (or admits) the component and series and lets `update` change the series' data
    /// (returning `Some` replaces it: a new series, or one whose type changed).
    fn store(
        &mut self,
        view: &EnvelopeView<'_>,
        name: &str,
        update: impl FnOnce(Option<&mut Data>) -> Option<Data>,
    ) -> bool {
        let known = self
            .map
            .get(view.source_id)
            .is_some_and(|m| m.contains_key(view.instance_id));
        if !known {
            if self.count >= self.max_components {
                self.dropped_components += 1;
                return false;
            }
            self.count += 1;
            self.map
                .entry(view.source_id.into())
                .or_default()
                .insert(view.instance_id.into(), Component::default());
        }
        let Some(component) = self
            .map
            .get_mut(view.source_id)
            .and_then(|m| m.get_mut(view.instance_id))
        else {
            return false;
        };
        let mut tags: Vec<(&str, &str)> = view.tags().collect();
        tags.sort_unstable();
        let skey = series_key(name, &tags);
        let full = component.series.len() >= self.max_series;
        match component.series.get_mut(skey.as_str()) {
            Some(series) => {
                if let Some(data) = update(Some(&mut series.data)) {
                    series.data = data;
                }
            }
            None if full => {
                self.dropped_series += 1;
                return false;
            }
            None => {
                if let Some(data) = update(None) {
                    component.series.insert(
                        skey.into(),
                        Series {
                            name: name.into(),
                            tags: tags
                                .iter()
                                .map(|(k, v)| ((*k).into(), (*v).into()))
                                .collect(),
                            data,
                        },
                    );
                }
            }
        }
        component.last_ts = component.last_ts.max(view.timestamp);
        true
    }

    /// One row per hop kind each component reports.
    pub(crate) fn pipeline_rows(&self) -> Vec<HopStats> {
        let mut rows = Vec::new();
        let all = self
            .map
            .iter()
            .flat_map(|(s, m)| m.iter().map(move |(i, c)| (s, i, c)));
        for (source, instance, c) in all {
            for spec in &SPECS {
                if !c.has_role(spec.kind) {
                    continue;
                }
                let mut reasons: Vec<(String, u64)> = Vec::new();
                for s in c.matching(spec.drops) {
                    let (Some(total), reason) = (s.total(), s.tag("reason").unwrap_or("other"))
                    else {
                        continue;
                    };
                    match reasons.iter_mut().find(|(r, _)| r == reason) {
                        Some((_, n)) => *n += total,
                        None => reasons.push((reason.to_owned(), total)),
                    }
                }
                reasons.retain(|(_, n)| *n > 0);
                reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                rows.push(HopStats {
                    kind: spec.kind,
                    source: source.to_string(),
                    instance: instance.to_string(),
                    in_rate: c.rate(spec.ins),
                    out_rate: c.rate(spec.outs),
                    drop_rate: c.rate(&[spec.drops]),
                    dropped: c.total(&[spec.drops]),
                    queue: c.gauge(spec.queue),
                    consumers: (!spec.consumers.is_empty())
                        .then(|| c.gauge(spec.consumers))
                        .flatten(),
                    slow: spec.slow.and_then(|n| c.total(&[n])),
                    reasons,
                    last_ts: c.last_ts,
                });
            }
        }
        rows
    }

    /// Every executor that reports its metrics.
    pub(crate) fn executors(&self) -> Vec<ExecutorStats> {
        let state = |c: &Component, s: &str| c.gauge_tagged("executor.instances", "state", s);
        self.map
            .values()
            .flat_map(HashMap::iter)
            .filter(|(_, c)| c.has_role("executor"))
            .map(|(instance, c)| ExecutorStats {
                id: instance.to_string(),
                memory_used: c.gauge(&["executor.memory_used"]),
                memory_capacity: c.gauge(&["executor.memory_capacity"]),
                running: state(c, "running"),
                starting: state(c, "starting"),
                crashed: state(c, "crashed"),
                log_rate: c.rate(&["executor.log_lines"]),
                starts: c.total(&["executor.starts"]),
                crashes: c.total(&["executor.crashes"]),
                cert_expiry: c.cert_expiry(),
                cell: true,
                evacuating: c.gauge(&["executor.evacuating"]),
                last_ts: c.last_ts,
            })
            .collect()
    }

    /// Every executor, then every other component that reports its certificate's expiry (the
    /// pipeline hops, the cloud controller, the router, ...) as `source/instance` with only
    /// that known: the nodes screen is where an operator looks for a certificate to renew.
    pub(crate) fn nodes(&self) -> Vec<ExecutorStats> {
        let mut nodes = self.executors();
        let others = self
            .map
            .iter()
            .flat_map(|(s, m)| m.iter().map(move |(i, c)| (s, i, c)))
            .filter(|(_, _, c)| !c.has_role("executor"));
        for (source, instance, c) in others {
            let Some(cert_expiry) = c.cert_expiry() else {
                continue;
            };
            let id = format!("{source}/{instance}");
            nodes.push(ExecutorStats {
                cert_expiry: Some(cert_expiry),
                ..ExecutorStats::unreported(id, false, c.last_ts)
            });
        }
        nodes
    }

    /// Forgets components whose newest report is older than `before` (UNIX ns): they stopped
    /// or moved, and their stale rows would only mislead.
    pub(crate) fn forget_older_than(&mut self, before: i64) {
        let mut count = 0;
        for instances in self.map.values_mut() {
            instances.retain(|_, c| c.last_ts >= before);
            count += instances.len();
        }
        self.map.retain(|_, instances| !instances.is_empty());
        self.count = count;
    }

    /// Components tracked.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydrant_testkit::envelopes;

    fn counter(source: &str, name: &str, total: u64, ts_s: i64, tags: &[(&str, &str)]) -> Vec<u8> {
        let total = envelopes::counter(name, 0, total);
        let e = envelopes::envelope(ts_s * 1_000_000_000, source, "0", tags, total);
        hydrant_envelope::wire::encode(&e).to_vec()
    }

    fn record(c: &mut Components, bytes: &[u8]) -> bool {
        c.record(&EnvelopeView::parse(bytes).unwrap())
    }

    #[test]
    fn rates_come_from_totals_and_survive_a_restart() {
        let mut c = Components::new(8, 64);
        for (t, total) in [(100, 1_000), (105, 6_000), (110, 11_000)] {
            assert!(record(
                &mut c,
                &counter("doppler", "doppler.ingress", total, t, &[])
            ));
        }
        let row = &c.pipeline_rows()[0];
        assert_eq!(row.kind, "doppler");
        assert!((row.in_rate.unwrap() - 1_000.0).abs() < 1e-9);
        // The doppler restarted: its total starts again from zero.
        record(
            &mut c,
            &counter("doppler", "doppler.ingress", 500, 115, &[]),
        );
        record(
            &mut c,
            &counter("doppler", "doppler.ingress", 2_500, 120, &[]),
        );
        let row = &c.pipeline_rows()[0];
        assert!((row.in_rate.unwrap() - 400.0).abs() < 1e-9, "{row:?}");
    }

    #[test]
    fn drops_are_summed_by_reason_and_apps_counters_are_ignored() {
        let mut c = Components::new(8, 64);
        let reason = |r| [("reason", r)];
        record(
            &mut c,
            &counter("agent", "agent.dropped", 3, 1, &reason("egress_queue_full")),
        );
        record(
            &mut c,
            &counter("agent", "agent.dropped", 7, 1, &reason("rate_limited")),
        );
        assert!(!record(&mut c, &counter("app-guid", "orders", 7, 1, &[])));
        let rows = c.pipeline_rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].dropped, Some(10));
        assert_eq!(
            rows[0].reasons,
            [
                ("rate_limited".to_owned(), 7),
                ("egress_queue_full".to_owned(), 3)
            ]
        );
    }

    #[test]
    fn any_role_s_certificate_expiry_is_kept_and_the_soonest_one_counts() {
        let mut c = Components::new(8, 64);
        let expiry = |identity, secs| {
            let gauge = envelopes::gauge(&[(CERT_EXPIRY, secs, "seconds")]);
            let e = envelopes::envelope(
                1_000_000_000,
                "cloudcontroller",
                "0",
                &[("identity", identity)],
                gauge,
            );
            hydrant_envelope::wire::encode(&e).to_vec()
        };
        assert!(record(&mut c, &expiry("cloudcontroller", 90.0 * 86_400.0)));
        assert!(record(&mut c, &expiry("nats", 5.0 * 86_400.0)));
        // Other metrics of a role the console does not track stay ignored.
        let other = envelopes::envelope(
            1_000_000_000,
            "cloudcontroller",
            "0",
            &[],
            envelopes::gauge(&[("cloudcontroller.apps", 3.0, "count")]),
        );
        assert!(!record(&mut c, &hydrant_envelope::wire::encode(&other)));
        assert!(c.executors().is_empty());
        let nodes = c.nodes();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].id, "cloudcontroller/0");
        assert_eq!(nodes[0].cert_expiry, Some(5.0 * 86_400.0));
    }

    #[test]
    fn caps_are_counted() {
        let mut c = Components::new(1, 1);
        assert!(record(
            &mut c,
            &counter("agent", "agent.ingress", 1, 1, &[])
        ));
        assert!(!record(
            &mut c,
            &counter("doppler", "doppler.ingress", 1, 1, &[])
        ));
        assert!(!record(
            &mut c,
            &counter("agent", "agent.egress", 1, 1, &[])
        ));
        assert_eq!((c.dropped_components, c.dropped_series), (1, 1));
        assert_eq!(c.len(), 1);
        // A component that stopped reporting is forgotten, making room for another.
        c.forget_older_than(2_000_000_000);
        assert_eq!(c.len(), 0);
        assert!(record(
            &mut c,
            &counter("doppler", "doppler.ingress", 1, 3, &[])
        ));
    }
}
