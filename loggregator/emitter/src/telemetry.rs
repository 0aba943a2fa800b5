//! Named, tagged counters and gauges for a role's own health.
//!
//! Every role registers its metrics once at start-up and keeps the handles; a handle is an
//! `Arc<AtomicU64>`, so the hot path pays one relaxed atomic add. The same registry renders
//! Prometheus text for `/metrics` and turns into envelopes for the pipeline, so the two views
//! never disagree. Names follow `<role>.<noun>` (`doppler.dropped`) with the reason or direction
//! as a tag, as Loggregator does (`dropped{direction=ingress}`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use hydrant_envelope::v2;

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
}

#[derive(Debug)]
struct Metric {
    name: &'static str,
    help: &'static str,
    tags: Vec<(String, String)>,
    handle: Handle,
}

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
        let tags = own(tags);
        let mut metrics = self.metrics.lock().unwrap_or_else(PoisonError::into_inner);
        for m in metrics.iter() {
            if let (true, Handle::Counter { counter, .. }) =
                (m.name == name && m.tags == tags, &m.handle)
            {
                return counter.clone();
            }
        }
        let counter = Counter::default();
        metrics.push(Metric {
            name,
            help,
            tags,
            handle: Handle::Counter {
                counter: counter.clone(),
                last_reported: 0,
            },
        });
        counter
    }

    /// Registers (or finds) a gauge with a unit (`bytes`, `count`, `percentage`, ...).
    pub fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        unit: &'static str,
        tags: &[(&str, &str)],
    ) -> Gauge {
        let tags = own(tags);
        let mut metrics = self.metrics.lock().unwrap_or_else(PoisonError::into_inner);
        for m in metrics.iter() {
            if let (true, Handle::Gauge { gauge, .. }) =
                (m.name == name && m.tags == tags, &m.handle)
            {
                return gauge.clone();
            }
        }
        let gauge = Gauge::default();
        metrics.push(Metric {
            name,
            help,
            tags,
            handle: Handle::Gauge {
                gauge: gauge.clone(),
                unit,
            },
        });
        gauge
    }

    /// The sum of every counter named `name` whose tags include all of `tags`.
    #[must_use]
    pub fn counter_sum(&self, name: &str, tags: &[(&str, &str)]) -> u64 {
        let metrics = self.metrics.lock().unwrap_or_else(PoisonError::into_inner);
        metrics
            .iter()
            .filter(|m| m.name == name)
            .filter(|m| {
                tags.iter()
                    .all(|(k, v)| m.tags.iter().any(|(mk, mv)| mk == k && mv == v))
            })
            .map(|m| match &m.handle {
                Handle::Counter { counter, .. } => counter.get(),
                Handle::Gauge { .. } => 0,
            })
            .sum()
    }

    /// Prometheus text exposition format (version 0.0.4). Names have `.` turned into `_` and
    /// counters get the `_total` suffix; every series carries `source_id` and `instance_id`.
    #[must_use]
    pub fn render_prometheus(&self) -> String {
        let metrics = self.metrics.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        let mut seen: HashMap<String, ()> = HashMap::new();
        for m in metrics.iter() {
            let (kind, value, name) = match &m.handle {
                Handle::Counter { counter, .. } => (
                    "counter",
                    counter.get() as f64,
                    format!("{}_total", prom_name(m.name)),
                ),
                Handle::Gauge { gauge, .. } => ("gauge", gauge.get(), prom_name(m.name)),
            };
            if seen.insert(name.clone(), ()).is_none() {
                let _ = writeln!(out, "# HELP {name} {}", m.help);
                let _ = writeln!(out, "# TYPE {name} {kind}");
            }
            let _ = write!(
                out,
                "{name}{{source_id=\"{}\",instance_id=\"{}\"",
                escape_label(&self.source_id),
                escape_label(&self.instance_id)
            );
            for (k, v) in &m.tags {
                let _ = write!(out, ",{}=\"{}\"", prom_name(k), escape_label(v));
            }
            let _ = writeln!(out, "}} {value}");
        }
        out
    }

    /// Every metric as an envelope: counters carry the delta since the previous call and the
    /// running total; gauges carry their current value. Call it from one reporter only.
    #[must_use]
    pub fn take_envelopes(&self) -> Vec<v2::Envelope> {
        let now = hydrant_envelope::now_nanos();
        let mut metrics = self.metrics.lock().unwrap_or_else(PoisonError::into_inner);
        metrics
            .iter_mut()
            .map(|m| {
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
                };
                v2::Envelope {
                    timestamp: now,
                    source_id: self.source_id.to_string(),
                    instance_id: self.instance_id.to_string(),
                    tags: m.tags.iter().cloned().collect(),
                    message: Some(message),
                    ..v2::Envelope::default()
                }
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
