//! Named, tagged counters, gauges and histograms for a role's own health.
//!
//! Every role registers its metrics once at start-up and keeps the handles; a handle is an
//! `Arc<AtomicU64>`, so the hot path pays one relaxed atomic add. The same registry renders
//! Prometheus text for `/metrics` and turns into envelopes for the pipeline, so the two views
//! never disagree. Names follow `<role>.<noun>` (`doppler.dropped`) with the reason or direction
//! as a tag, as Loggregator does (`dropped{direction=ingress}`).
//!
//! Invariant: the text passes `promtool check metrics` (Prometheus's own linter): counters end
//! in `_total`, histograms are real histograms in base units (`_bucket{le}`, `_sum`, `_count`),
//! and no other series carries an `le` label. Histograms exist on `/metrics` only: the pipeline
//! already carries each observation they summarise (the router's per-request `http` Timer), so
//! an envelope of buckets would say the same thing twice.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hydrant_envelope::v2;

use crate::lock;

/// A monotonically increasing count.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current total.
    #[must_use]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (queue depth, connections).
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    /// Sets the value.
    #[inline]
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    /// The current value.
    #[must_use]
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// A distribution of durations over fixed bucket bounds in seconds, rendered as a Prometheus
/// histogram. Clones share the same cells.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramCells>);

#[derive(Debug)]
struct HistogramCells {
    /// Upper bounds in seconds, ascending and finite.
    bounds: Box<[f64]>,
    /// Observations per bucket, not cumulative (one add per observation): slot `i` counts
    /// values in `(bounds[i-1], bounds[i]]`, the last slot those above every bound.
    buckets: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        let mut bounds: Vec<f64> = bounds.iter().copied().filter(|b| b.is_finite()).collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self(Arc::new(HistogramCells {
            bounds: bounds.into(),
            buckets,
            sum_nanos: AtomicU64::new(0),
        }))
    }

    /// Records one observation.
    #[inline]
    pub fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        let cells = &self.0;
        let i = cells
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(cells.bounds.len());
        if let Some(bucket) = cells.buckets.get(i) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        cells.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.0
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    /// The sum of every observation.
    #[must_use]
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.0.sum_nanos.load(Ordering::Relaxed))
    }

    /// `(upper bound in seconds, observations at or below it)` for every bound, cumulative as
    /// Prometheus counts them, ending with `(+Inf, count)`.
    #[must_use]
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        self.0
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.0.buckets.iter())
            .map(|(bound, n)| {
                total += n.load(Ordering::Relaxed);
                (bound, total)
            })
            .collect()
    }
}

#[derive(Debug)]
enum Handle {
    Counter {
        counter: Counter,
        last_reported: u64,
    },
    Gauge {
        gauge: Gauge,
        unit: &'static str,
    },
    Histogram(Histogram),
}

#[derive(Debug)]
struct Metric {
    name: &'static str,
    help: &'static str,
    tags: Vec<(String, String)>,
    handle: Handle,
}

/// One counter as [`Registry::counters`] reads it: name, tags, current total.
pub type CounterSample = (&'static str, Vec<(String, String)>, u64);

/// The metrics one role owns. Cloning shares the registry.
#[derive(Debug, Clone)]
pub struct Registry {
    source_id: Arc<str>,
    instance_id: Arc<str>,
    metrics: Arc<Mutex<Vec<Metric>>>,
}

impl Registry {
    /// A registry whose envelopes carry `source_id` (the role: `doppler`, `agent`, ...) and
    /// `instance_id` (which copy of the role).
    #[must_use]
    pub fn new(source_id: &str, instance_id: &str) -> Self {
        Self {
            source_id: source_id.into(),
            instance_id: instance_id.into(),
            metrics: Arc::default(),
        }
    }

    /// The `source_id` this registry reports as.
    #[must_use]
    pub fn source_id(&self) -> &str {
        &self.source_id
    }

    /// Registers (or finds) a counter. Registering the same name and tags twice returns the same
    /// counter, so two tasks of one role can ask for it independently.
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        tags: &[(&str, &str)],
    ) -> Counter {
        self.register(
            name,
            help,
            tags,
            |h| match h {
                Handle::Counter { counter, .. } => Some(counter.clone()),
                _ => None,
            },
            || {
                let counter = Counter::default();
                let handle = Handle::Counter {
                    counter: counter.clone(),
                    last_reported: 0,
                };
                (counter, handle)
            },
        )
    }

    /// Registers (or finds) a gauge with a unit (`bytes`, `count`, `percentage`, ...).
    pub fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        unit: &'static str,
        tags: &[(&str, &str)],
    ) -> Gauge {
        self.register(
            name,
            help,
            tags,
            |h| match h {
                Handle::Gauge { gauge, .. } => Some(gauge.clone()),
                _ => None,
            },
            || {
                let gauge = Gauge::default();
                let handle = Handle::Gauge {
                    gauge: gauge.clone(),
                    unit,
                };
                (gauge, handle)
            },
        )
    }

    /// Registers (or finds) a histogram of durations with upper bounds `bounds_seconds`
    /// (ascending; `+Inf` is implied). `name` should end in its unit, `_seconds`.
    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        bounds_seconds: &[f64],
        tags: &[(&str, &str)],
    ) -> Histogram {
        self.register(
            name,
            help,
            tags,
            |h| match h {
                Handle::Histogram(histogram) => Some(histogram.clone()),
                _ => None,
            },
            || {
                let histogram = Histogram::new(bounds_seconds);
                (histogram.clone(), Handle::Histogram(histogram))
            },
        )
    }

    /// The metric of kind `existing` named `name` with exactly `tags`, or a new one `new`
    /// makes (the handle to give out, and what the registry keeps): whoever asks first
    /// creates the series, and everyone after shares it.
    fn register<H>(
        &self,
        name: &'static str,
        help: &'static str,
        tags: &[(&str, &str)],
        existing: impl Fn(&Handle) -> Option<H>,
        new: impl FnOnce() -> (H, Handle),
    ) -> H {
        let tags = own(tags);
        let mut metrics = lock(&self.metrics);
        let found = metrics
            .iter()
            .filter(|m| m.name == name && m.tags == tags)
            .find_map(|m| existing(&m.handle));
        if let Some(found) = found {
            return found;
        }
        let (given, kept) = new();
        metrics.push(Metric {
            name,
            help,
            tags,
            handle: kept,
        });
        given
    }

    /// Removes every metric named `name` whose tags include all of `tags` (counter, gauge or
    /// histogram) and returns how many went. For series that follow something that comes and
    /// goes (an app, an instance): removing them when it goes keeps `/metrics` bounded by what
    /// is alive. Handles still held keep working but no longer show; registering the same name
    /// and tags again starts a fresh series.
    pub fn remove(&self, name: &str, tags: &[(&str, &str)]) -> usize {
        let mut metrics = lock(&self.metrics);
        let before = metrics.len();
        metrics.retain(|m| !(m.name == name && has_tags(&m.tags, tags)));
        before - metrics.len()
    }

    /// The sum of every counter named `name` whose tags include all of `tags`.
    #[must_use]
    pub fn counter_sum(&self, name: &str, tags: &[(&str, &str)]) -> u64 {
        let metrics = lock(&self.metrics);
        metrics
            .iter()
            .filter(|m| m.name == name && has_tags(&m.tags, tags))
            .map(|m| match &m.handle {
                Handle::Counter { counter, .. } => counter.get(),
                Handle::Gauge { .. } | Handle::Histogram(_) => 0,
            })
            .sum()
    }

    /// Every counter's name, tags and current total, for a caller in the same process (the
    /// micro cloud's ledger) that would otherwise scrape and re-parse `/metrics`.
    #[must_use]
    pub fn counters(&self) -> Vec<CounterSample> {
        let metrics = lock(&self.metrics);
        metrics
            .iter()
            .filter_map(|m| match &m.handle {
                Handle::Counter { counter, .. } => Some((m.name, m.tags.clone(), counter.get())),
                _ => None,
            })
            .collect()
    }

    /// Prometheus text exposition format (version 0.0.4). Names have `.` turned into `_`,
    /// counters get the `_total` suffix and histograms their `_bucket`/`_sum`/`_count` series;
    /// every series carries `source_id` and `instance_id`.
    #[must_use]
    pub fn render_prometheus(&self) -> String {
        let metrics = lock(&self.metrics);
        let mut out = String::new();
        let mut seen: HashMap<String, ()> = HashMap::new();
        // Every series of a family together, families in the order first registered: a label
        // set registered later (a refusal by an identity seen for the first time) would
        // otherwise split its family, which the exposition format forbids.
        let mut order: Vec<&'static str> = Vec::new();
        for m in metrics.iter() {
            if !order.contains(&m.name) {
                order.push(m.name);
            }
        }
        let grouped = order
            .iter()
            .flat_map(|name| metrics.iter().filter(move |m| m.name == *name));
        for m in grouped {
            let (kind, name) = match &m.handle {
                Handle::Counter { .. } => ("counter", format!("{}_total", prom_name(m.name))),
                Handle::Gauge { .. } => ("gauge", prom_name(m.name)),
                Handle::Histogram(_) => ("histogram", prom_name(m.name)),
            };
            if seen.insert(name.clone(), ()).is_none() {
                let _ = writeln!(out, "# HELP {name} {}", m.help);
                let _ = writeln!(out, "# TYPE {name} {kind}");
            }
            let mut labels = format!(
                "source_id=\"{}\",instance_id=\"{}\"",
                escape_label(&self.source_id),
                escape_label(&self.instance_id)
            );
            for (k, v) in &m.tags {
                let _ = write!(labels, ",{}=\"{}\"", prom_name(k), escape_label(v));
            }
            match &m.handle {
                Handle::Counter { counter, .. } => {
                    let _ = writeln!(out, "{name}{{{labels}}} {}", counter.get());
                }
                Handle::Gauge { gauge, .. } => {
                    let _ = writeln!(out, "{name}{{{labels}}} {}", gauge.get());
                }
                Handle::Histogram(h) => {
                    let cumulative = h.cumulative();
                    for (bound, n) in &cumulative {
                        let le = if bound.is_finite() {
                            bound.to_string()
                        } else {
                            "+Inf".to_owned()
                        };
                        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
                    }
                    let count = cumulative.last().map_or(0, |(_, n)| *n);
                    let sum = h.sum().as_secs_f64();
                    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
                    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
                }
            }
        }
        out
    }

    /// Every metric as an envelope: counters carry the delta since the previous call and the
    /// running total; gauges carry their current value. Call it from one reporter only.
    #[must_use]
    pub fn take_envelopes(&self) -> Vec<v2::Envelope> {
        let now = hydrant_envelope::now_nanos();
        let mut metrics = lock(&self.metrics);
        metrics
            .iter_mut()
            .filter_map(|m| {
                let message = match &mut m.handle {
                    Handle::Counter {
                        counter,
                        last_reported,
                    } => {
                        let total = counter.get();
                        let delta = total.saturating_sub(*last_reported);
                        *last_reported = total;
                        v2::envelope::Message::Counter(v2::Counter {
                            name: m.name.to_owned(),
                            delta,
                            total,
                        })
                    }
                    Handle::Gauge { gauge, unit } => v2::envelope::Message::Gauge(v2::Gauge {
                        metrics: HashMap::from([(
                            m.name.to_owned(),
                            v2::GaugeValue {
                                unit: (*unit).to_owned(),
                                value: gauge.get(),
                            },
                        )]),
                    }),
                    // See the module's invariant: the Timer envelopes already carry these.
                    Handle::Histogram(_) => return None,
                };
                Some(v2::Envelope {
                    timestamp: now,
                    source_id: self.source_id.to_string(),
                    instance_id: self.instance_id.to_string(),
                    tags: m.tags.iter().cloned().collect(),
                    message: Some(message),
                    ..v2::Envelope::default()
                })
            })
            .collect()
    }
}

fn own(tags: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<_> = tags
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    v.sort();
    v
}

/// Whether `have` includes every one of `want`.
fn has_tags(have: &[(String, String)], want: &[(&str, &str)]) -> bool {
    want.iter()
        .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
}

fn prom_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_stays_one_group_when_a_label_set_comes_later() {
        let r = Registry::new("cloudcontroller", "0");
        r.counter("a.refused", "refusals", &[("identity", "none")]);
        r.counter("b.calls", "calls", &[]);
        r.counter("a.refused", "refusals", &[("identity", "agent")])
            .inc();
        let text = r.render_prometheus();
        let names: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split('{').next().unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            ["a_refused_total", "a_refused_total", "b_calls_total"],
            "{text}"
        );
        assert_eq!(text.matches("# TYPE a_refused_total").count(), 1);
    }

    #[test]
    fn same_name_and_tags_share_a_counter() {
        let r = Registry::new("doppler", "0");
        let a = r.counter("doppler.dropped", "drops", &[("reason", "ring_full")]);
        let b = r.counter("doppler.dropped", "drops", &[("reason", "ring_full")]);
        let c = r.counter("doppler.dropped", "drops", &[("reason", "malformed")]);
        a.add(2);
        b.inc();
        c.inc();
        assert_eq!(a.get(), 3);
        assert_eq!(r.counter_sum("doppler.dropped", &[]), 4);
        assert_eq!(
            r.counter_sum("doppler.dropped", &[("reason", "malformed")]),
            1
        );
    }

    #[test]
    fn same_name_and_tags_share_a_gauge_and_a_histogram() {
        let r = Registry::new("agent", "0");
        let a = r.gauge("agent.depth", "depth", "count", &[("lane", "d0")]);
        let b = r.gauge("agent.depth", "depth", "count", &[("lane", "d0")]);
        let other = r.gauge("agent.depth", "depth", "count", &[("lane", "d1")]);
        a.set(5.0);
        assert!((b.get() - 5.0).abs() < f64::EPSILON);
        assert!(other.get().abs() < f64::EPSILON);
        let h1 = r.histogram("agent.wait_seconds", "wait", &[0.1, 1.0], &[]);
        let h2 = r.histogram("agent.wait_seconds", "wait", &[0.1, 1.0], &[]);
        h1.observe(Duration::from_millis(50));
        h2.observe(Duration::from_millis(500));
        let text = r.render_prometheus();
        assert_eq!(
            text.matches("# TYPE agent_wait_seconds").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("agent_wait_seconds_count{source_id=\"agent\",instance_id=\"0\"} 2"),
            "{text}"
        );
        assert_eq!(text.matches("agent_depth{").count(), 2, "{text}");
    }

    #[test]
    fn prometheus_text_has_help_type_and_labels() {
        let r = Registry::new("agent", "n1");
        r.counter("agent.ingress", "envelopes received", &[]).add(7);
        r.gauge(
            "agent.queue.depth",
            "queued envelopes",
            "count",
            &[("queue", "egress")],
        )
        .set(3.0);
        let text = r.render_prometheus();
        assert!(text.contains("# TYPE agent_ingress_total counter"));
        assert!(text.contains("agent_ingress_total{source_id=\"agent\",instance_id=\"n1\"} 7"));
        assert!(text.contains(
            "agent_queue_depth{source_id=\"agent\",instance_id=\"n1\",queue=\"egress\"} 3"
        ));
    }

    #[test]
    fn histograms_render_cumulative_buckets_in_seconds() {
        let r = Registry::new("router", "0");
        let h = r.histogram(
            "router.backend_latency_seconds",
            "latency",
            &[0.001, 0.01, 0.1],
            &[],
        );
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(5));
        let text = r.render_prometheus();
        let labels = "source_id=\"router\",instance_id=\"0\"";
        for line in [
            "# TYPE router_backend_latency_seconds histogram".to_owned(),
            format!("router_backend_latency_seconds_bucket{{{labels},le=\"0.001\"}} 2"),
            format!("router_backend_latency_seconds_bucket{{{labels},le=\"0.01\"}} 2"),
            format!("router_backend_latency_seconds_bucket{{{labels},le=\"0.1\"}} 3"),
            format!("router_backend_latency_seconds_bucket{{{labels},le=\"+Inf\"}} 4"),
            format!("router_backend_latency_seconds_sum{{{labels}}} 5.0315"),
            format!("router_backend_latency_seconds_count{{{labels}}} 4"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from\n{text}"
            );
        }
        assert_eq!(h.count(), 4);
        assert!(r.take_envelopes().is_empty(), "histograms stay on /metrics");
    }

    #[test]
    fn removed_series_leave_text_and_envelopes() {
        let r = Registry::new("executor", "0");
        let cpu = |app: &str, index: &str| {
            r.gauge(
                "executor.app_cpu_percentage",
                "cpu",
                "percentage",
                &[("app_id", app), ("instance_index", index)],
            )
        };
        cpu("a", "0").set(1.0);
        cpu("a", "1").set(2.0);
        cpu("b", "0").set(3.0);
        r.counter("executor.starts", "starts", &[("app_id", "a")])
            .inc();
        assert_eq!(
            r.remove(
                "executor.app_cpu_percentage",
                &[("app_id", "a"), ("instance_index", "1")]
            ),
            1
        );
        assert_eq!(
            r.remove("executor.app_cpu_percentage", &[("app_id", "a")]),
            1
        );
        assert_eq!(
            r.remove("executor.app_cpu_percentage", &[("app_id", "a")]),
            0
        );
        let text = r.render_prometheus();
        assert!(!text.contains("app_id=\"a\",instance_index"), "{text}");
        assert!(text.contains("app_id=\"b\""), "{text}");
        assert!(
            text.contains("executor_starts_total"),
            "other names stay: {text}"
        );
        assert_eq!(r.take_envelopes().len(), 2);
        // Registering again starts over from a fresh series.
        assert_eq!(cpu("a", "0").get(), 0.0);
    }

    #[test]
    fn envelopes_carry_deltas() {
        let r = Registry::new("agent", "0");
        let c = r.counter("agent.ingress", "x", &[]);
        c.add(5);
        let first = r.take_envelopes();
        c.add(2);
        let second = r.take_envelopes();
        let delta = |e: &v2::Envelope| match &e.message {
            Some(v2::envelope::Message::Counter(c)) => (c.delta, c.total),
            _ => panic!("not a counter"),
        };
        assert_eq!(delta(&first[0]), (5, 5));
        assert_eq!(delta(&second[0]), (2, 7));
    }
}
