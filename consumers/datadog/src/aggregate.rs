//! The hot path: firehose envelopes folded into one point per series per flush interval.
//!
//! Flow: reader → [`Aggregator::add`] for every envelope (no allocation once a series exists)
//! → [`Aggregator::flush`] every `batch.flush_interval_ms` → [`Series`] / [`Distribution`] for
//! the encoder.
//!
//! Mapping (one series = metric name + its sorted tags):
//! - **Counter** → `count` with the interval's sum of deltas. An envelope with `delta > 0` counts
//!   its delta. A *total-only* counter (`delta == 0`, `total > 0`, what stock clients that do
//!   not use Loggregator's agent send) is turned into deltas per series: its first sighting only
//!   sets the baseline and sends nothing (counted as `dropped{reason="counter_baseline"}`, the
//!   convention of Datadog's agent and Vector: an unknown start cannot be attributed to this
//!   interval), each later one counts `total - previous`, and a total that went down is a reset,
//!   which counts the new total. Baselines unseen for [`BASELINE_IDLE_INTERVALS`] flushes are
//!   forgotten.
//! - **Gauge** → one `gauge` series per metric of the envelope, carrying the last value of the
//!   interval at the envelope's own time (whole seconds).
//! - **Timer** → derived gauges or a distribution ([`TimerMode`]); durations in milliseconds.
//! - Logs and events are not metrics and are left to the logs path.
//!
//! Tags: every envelope tag as `key:value` (except `drop_tags`), plus `source_id:`,
//! `instance_id:`, `origin:` (the envelope's, else its source id) and `deployment:` (the
//! envelope's, else the configured one) when the envelope has none, plus the configured extra
//! tags; sanitised for Datadog, sorted, without duplicates.
//!
//! Invariants: memory is bounded — at most `max_series` series and as many counter baselines,
//! at most `max_timer_samples` durations per timer series — and every value that does not end
//! up in a point is counted with a reason in the [`Tally`].

use std::collections::HashMap;

use hydrant_envelope::wire::{EnvelopeView, Fields, Kind, Value};

use crate::TimerMode;
use crate::series::{Distribution, MetricType, Point, Series, metric_name, sanitize_tag, tag};

/// Flushes a total-only counter's baseline survives without being seen.
pub const BASELINE_IDLE_INTERVALS: u64 = 30;

/// Datadog drops points more than an hour old or ten minutes ahead; gauges whose envelope time
/// falls outside this window (with a margin) are counted instead of sent to be dropped there.
const MAX_AGE_SECS: i64 = 3_600 - 120;
const MAX_AHEAD_SECS: i64 = 600 - 60;

/// Reasons a value can be lost in aggregation, in [`Tally::dropped`] order.
pub const AGG_REASONS: [&str; 5] = [
    "series_limit",
    "invalid_value",
    "counter_baseline",
    "timestamp_out_of_range",
    "timer_sampled",
];
const SERIES_LIMIT: usize = 0;
const INVALID_VALUE: usize = 1;
const COUNTER_BASELINE: usize = 2;
const OUT_OF_RANGE: usize = 3;
const TIMER_SAMPLED: usize = 4;

/// How envelopes become series.
#[derive(Debug, Clone, PartialEq)]
pub struct MapOptions {
    /// Metric name prefix (already valid).
    pub prefix: String,
    /// Extra tags on every series (already valid).
    pub extra_tags: Vec<String>,
    /// `deployment:` for envelopes without one.
    pub deployment: String,
    /// Envelope tag keys never sent.
    pub drop_tags: Vec<String>,
    /// Timer mapping.
    pub timers: TimerMode,
    /// Most series per interval (and most counter baselines).
    pub max_series: usize,
    /// Most durations kept per timer series per interval.
    pub max_timer_samples: usize,
}

impl MapOptions {
    /// The mapping part of a nozzle config.
    #[must_use]
    pub fn from_config(config: &crate::Config) -> Self {
        Self {
            prefix: config.prefix.clone(),
            extra_tags: config.tags.clone(),
            deployment: config.deployment.clone(),
            drop_tags: config.drop_tags.clone(),
            timers: config.timers,
            max_series: config.batch.max_series,
            max_timer_samples: config.batch.max_timer_samples,
        }
    }
}

/// Which endpoint a value is bound for: its ledger is kept there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/api/v2/series`: counters, gauges, timers as derived gauges.
    Series = 0,
    /// `/api/v1/distribution_points`: timers in distribution mode.
    Distribution = 1,
}

/// Values taken in and lost since the last [`Aggregator::take_tally`], per [`Route`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Metric values seen (one per counter or timer envelope, one per gauge metric).
    pub received: [u64; 2],
    /// Values lost, by route and [`AGG_REASONS`] index.
    pub dropped: [[u64; 5]; 2],
}

impl Tally {
    /// `(reason, count)` of every non-zero drop on `route`.
    pub fn drops(&self, route: Route) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        AGG_REASONS
            .iter()
            .zip(self.dropped[route as usize])
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| (*r, n))
    }

    /// Values received on `route`.
    #[must_use]
    pub fn received(&self, route: Route) -> u64 {
        self.received[route as usize]
    }

    fn drop(&mut self, route: Route, reason: usize) {
        self.dropped[route as usize][reason] += 1;
    }
}

#[derive(Debug)]
struct TimerAcc {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    samples: Vec<f64>,
}

#[derive(Debug)]
enum Acc {
    Count(f64),
    Gauge { value: f64, timestamp: i64 },
    Timer(TimerAcc),
}

#[derive(Debug)]
struct Slot {
    name: String,
    unit: Option<&'static str>,
    tags: Vec<String>,
    values: u64,
    acc: Acc,
}

#[derive(Debug, Clone, Copy)]
struct Baseline {
    total: u64,
    seen: u64,
}

/// What a flush produced.
#[derive(Debug, Default)]
pub struct Flushed {
    /// For `/api/v2/series`.
    pub series: Vec<Series>,
    /// For `/api/v1/distribution_points`.
    pub distributions: Vec<Distribution>,
}

/// The per-interval aggregation state.
#[derive(Debug)]
pub struct Aggregator {
    opts: MapOptions,
    index: HashMap<Box<[u8]>, usize>,
    slots: Vec<Slot>,
    baselines: HashMap<Box<[u8]>, Baseline>,
    generation: u64,
    key: Vec<u8>,
    tally: Tally,
}

const K_COUNTER: u8 = b'c';
const K_GAUGE: u8 = b'g';
const K_TIMER: u8 = b't';

/// The envelope's tags, sorted by key, without dropped keys: built once per envelope.
struct TagSet<'a> {
    tags: Vec<(&'a str, &'a str)>,
}

impl<'a> Aggregator {
    /// An empty aggregator.
    #[must_use]
    pub fn new(opts: MapOptions) -> Self {
        Self {
            opts,
            index: HashMap::new(),
            slots: Vec::new(),
            baselines: HashMap::new(),
            generation: 0,
            key: Vec::with_capacity(256),
            tally: Tally::default(),
        }
    }

    /// Series currently aggregated.
    #[must_use]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing is aggregated.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Counts since the last call, then resets them.
    pub fn take_tally(&mut self) -> Tally {
        std::mem::take(&mut self.tally)
    }

    /// Folds one envelope in; `now_secs` is the wall clock, for gauges without a usable time.
    /// `scratch` is reused between calls to hold the envelope's tags.
    pub fn add(
        &mut self,
        view: &EnvelopeView<'a>,
        now_secs: i64,
        scratch: &mut Vec<(&'a str, &'a str)>,
    ) {
        if !matches!(view.kind, Kind::Counter | Kind::Gauge | Kind::Timer) {
            return;
        }
        scratch.clear();
        scratch.extend(
            view.tags()
                .filter(|(k, _)| !self.opts.drop_tags.iter().any(|d| d == k)),
        );
        scratch.sort_unstable();
        // A hostile envelope may repeat a key; a decoded map keeps the last one.
        scratch.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                earlier.1 = later.1;
                true
            } else {
                false
            }
        });
        let tags = TagSet {
            tags: std::mem::take(scratch),
        };
        match view.kind {
            Kind::Counter => self.add_counter(view, &tags),
            Kind::Gauge => {
                for (name, value, unit) in view.gauge_values() {
                    self.add_gauge(view, &tags, name, value, unit, now_secs);
                }
            }
            Kind::Timer => self.add_timer(view, &tags),
            _ => {}
        }
        *scratch = tags.tags;
    }

    fn build_key(&mut self, kind: u8, name: &str, view: &EnvelopeView<'_>, tags: &TagSet<'_>) {
        let k = &mut self.key;
        k.clear();
        k.push(kind);
        for part in [name, view.source_id, view.instance_id] {
            k.extend_from_slice(part.as_bytes());
            k.push(0);
        }
        for (key, value) in &tags.tags {
            k.extend_from_slice(key.as_bytes());
            k.push(0);
            k.extend_from_slice(value.as_bytes());
            k.push(0);
        }
    }

    /// The slot for the key in `self.key`, created if there is room.
    fn slot(
        &mut self,
        route: Route,
        name: &str,
        unit: Option<&'static str>,
        view: &EnvelopeView<'_>,
        tags: &TagSet<'_>,
        acc: impl FnOnce() -> Acc,
    ) -> Option<&mut Slot> {
        if let Some(&i) = self.index.get(self.key.as_slice()) {
            return self.slots.get_mut(i);
        }
        if self.slots.len() >= self.opts.max_series {
            self.tally.drop(route, SERIES_LIMIT);
            return None;
        }
        let slot = Slot {
            name: name.to_owned(),
            unit,
            tags: self.series_tags(view, tags),
            values: 0,
            acc: acc(),
        };
        self.index
            .insert(self.key.clone().into_boxed_slice(), self.slots.len());
        self.slots.push(slot);
        self.slots.last_mut()
    }

    fn series_tags(&self, view: &EnvelopeView<'_>, tags: &TagSet<'_>) -> Vec<String> {
        let has = |key: &str| tags.tags.iter().any(|(k, _)| *k == key);
        let mut out: Vec<String> = tags.tags.iter().map(|(k, v)| tag(k, v)).collect();
        if !has("source_id") && !view.source_id.is_empty() {
            out.push(tag("source_id", view.source_id));
        }
        if !has("instance_id") && !view.instance_id.is_empty() {
            out.push(tag("instance_id", view.instance_id));
        }
        if !has("origin") && !view.source_id.is_empty() {
            out.push(tag("origin", view.source_id));
        }
        if !has("deployment") {
            out.push(tag("deployment", &self.opts.deployment));
        }
        out.extend(self.opts.extra_tags.iter().map(|t| sanitize_tag(t)));
        out.sort_unstable();
        out.dedup();
        out
    }

    fn add_counter(&mut self, view: &EnvelopeView<'_>, tags: &TagSet<'_>) {
        self.tally.received[Route::Series as usize] += 1;
        let (mut name, mut delta, mut total) = ("", 0u64, 0u64);
        for (n, v) in Fields::new(view.body()).flatten() {
            match (n, v) {
                (1, Value::Len(b)) => name = std::str::from_utf8(b).unwrap_or(""),
                (2, Value::Varint(d)) => delta = d,
                (3, Value::Varint(t)) => total = t,
                _ => {}
            }
        }
        self.build_key(K_COUNTER, name, view, tags);
        let mut count = delta;
        if total > 0 {
            let generation = self.generation;
            let full = self.baselines.len() >= self.opts.max_series;
            match self.baselines.get_mut(self.key.as_slice()) {
                Some(base) => {
                    if delta == 0 {
                        // A total below the baseline is a restarted counter: all of it is new.
                        count = total.checked_sub(base.total).unwrap_or(total);
                    }
                    base.total = total;
                    base.seen = generation;
                }
                None if full => {
                    if delta == 0 {
                        self.tally.drop(Route::Series, SERIES_LIMIT);
                        return;
                    }
                }
                None => {
                    self.baselines.insert(
                        self.key.clone().into_boxed_slice(),
                        Baseline {
                            total,
                            seen: generation,
                        },
                    );
                    if delta == 0 {
                        self.tally.drop(Route::Series, COUNTER_BASELINE);
                        return;
                    }
                }
            }
        }
        if let Some(slot) = self.slot(Route::Series, name, None, view, tags, || Acc::Count(0.0)) {
            slot.values += 1;
            if let Acc::Count(sum) = &mut slot.acc {
                *sum += count as f64;
            }
        }
    }

    fn add_gauge(
        &mut self,
        view: &EnvelopeView<'_>,
        tags: &TagSet<'_>,
        name: &str,
        value: f64,
        unit: &str,
        now_secs: i64,
    ) {
        self.tally.received[Route::Series as usize] += 1;
        if !value.is_finite() {
            self.tally.drop(Route::Series, INVALID_VALUE);
            return;
        }
        let timestamp = if view.timestamp <= 0 {
            now_secs
        } else {
            view.timestamp / 1_000_000_000
        };
        if timestamp < now_secs - MAX_AGE_SECS || timestamp > now_secs + MAX_AHEAD_SECS {
            self.tally.drop(Route::Series, OUT_OF_RANGE);
            return;
        }
        self.build_key(K_GAUGE, name, view, tags);
        let unit = datadog_unit(unit);
        let fresh = || Acc::Gauge {
            value,
            timestamp: i64::MIN,
        };
        if let Some(slot) = self.slot(Route::Series, name, unit, view, tags, fresh) {
            slot.values += 1;
            if let Acc::Gauge {
                value: v,
                timestamp: t,
            } = &mut slot.acc
            {
                // The newest value wins; envelopes of one source can arrive out of order.
                if timestamp >= *t {
                    *v = value;
                    *t = timestamp;
                }
            }
        }
    }

    fn add_timer(&mut self, view: &EnvelopeView<'_>, tags: &TagSet<'_>) {
        let route = match self.opts.timers {
            TimerMode::Gauges => Route::Series,
            TimerMode::Distribution => Route::Distribution,
        };
        self.tally.received[route as usize] += 1;
        let Some((start, stop)) = view.timer_span() else {
            self.tally.drop(route, INVALID_VALUE);
            return;
        };
        let Some(ms) = stop
            .checked_sub(start)
            .filter(|d| *d >= 0)
            .map(|d| d as f64 / 1e6)
        else {
            self.tally.drop(route, INVALID_VALUE);
            return;
        };
        let name = view.timer_name().unwrap_or("");
        self.build_key(K_TIMER, name, view, tags);
        let cap = self.opts.max_timer_samples;
        let fresh = || {
            Acc::Timer(TimerAcc {
                count: 0,
                sum: 0.0,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                samples: Vec::new(),
            })
        };
        if let Some(slot) = self.slot(route, name, Some("millisecond"), view, tags, fresh) {
            slot.values += 1;
            if let Acc::Timer(t) = &mut slot.acc {
                t.count += 1;
                t.sum += ms;
                t.min = t.min.min(ms);
                t.max = t.max.max(ms);
                // Reservoir sampling: every duration of the interval is equally likely to
                // be among the kept ones, so the percentiles are unbiased.
                if t.samples.len() < cap {
                    t.samples.push(ms);
                } else {
                    let j = fastrand::u64(..t.count) as usize;
                    if let Some(s) = t.samples.get_mut(j) {
                        *s = ms;
                    }
                }
            }
        }
    }

    /// Turns the interval into series and starts a new one. Counts and timers are stamped
    /// `window_start` (POSIX seconds) with `interval` seconds; gauges keep their own time.
    pub fn flush(&mut self, window_start: i64, interval: i64) -> Flushed {
        let mut out = Flushed::default();
        let prefix = self.opts.prefix.clone();
        let timers = self.opts.timers;
        for slot in self.slots.drain(..) {
            let metric = metric_name(&prefix, &slot.name);
            match slot.acc {
                Acc::Count(sum) => out.series.push(Series {
                    metric,
                    kind: MetricType::Count,
                    points: vec![Point {
                        timestamp: window_start,
                        value: sum,
                    }],
                    interval: Some(interval),
                    unit: None,
                    tags: slot.tags,
                    values: slot.values,
                }),
                Acc::Gauge { value, timestamp } => out.series.push(Series {
                    metric,
                    kind: MetricType::Gauge,
                    points: vec![Point { timestamp, value }],
                    interval: None,
                    unit: slot.unit.map(str::to_owned),
                    tags: slot.tags,
                    values: slot.values,
                }),
                Acc::Timer(t) if timers == TimerMode::Distribution => {
                    let kept = t.samples.len() as u64;
                    self.tally.dropped[Route::Distribution as usize][TIMER_SAMPLED] +=
                        slot.values.saturating_sub(kept);
                    out.distributions.push(Distribution {
                        metric,
                        points: vec![(window_start, t.samples)],
                        kind: "distribution",
                        tags: slot.tags,
                        values: kept,
                    });
                }
                Acc::Timer(t) => {
                    derived_gauges(
                        &mut out.series,
                        metric,
                        slot.tags,
                        slot.values,
                        t,
                        window_start,
                        interval,
                    );
                }
            }
        }
        self.index.clear();
        self.generation += 1;
        let keep_after = self.generation.saturating_sub(BASELINE_IDLE_INTERVALS);
        self.baselines.retain(|_, b| b.seen >= keep_after);
        out
    }
}

fn derived_gauges(
    out: &mut Vec<Series>,
    metric: String,
    tags: Vec<String>,
    values: u64,
    mut t: TimerAcc,
    timestamp: i64,
    interval: i64,
) {
    t.samples.sort_unstable_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        // Nearest rank: the smallest sample with at least p of them at or below it.
        let n = t.samples.len();
        let rank = ((p * n as f64).ceil() as usize).clamp(1, n.max(1));
        t.samples.get(rank - 1).copied().unwrap_or(0.0)
    };
    let avg = if t.count == 0 {
        0.0
    } else {
        t.sum / t.count as f64
    };
    let gauges = [
        ("avg", avg),
        ("min", t.min),
        ("max", t.max),
        ("p50", pct(0.50)),
        ("p95", pct(0.95)),
        ("p99", pct(0.99)),
    ];
    out.push(Series {
        metric: format!("{metric}.count"),
        kind: MetricType::Count,
        points: vec![Point {
            timestamp,
            value: t.count as f64,
        }],
        interval: Some(interval),
        unit: None,
        tags: tags.clone(),
        values,
    });
    for (suffix, value) in gauges {
        out.push(Series {
            metric: format!("{metric}.{suffix}"),
            kind: MetricType::Gauge,
            points: vec![Point { timestamp, value }],
            interval: None,
            unit: Some("millisecond".to_owned()),
            tags: tags.clone(),
            // The values are accounted once, on the count.
            values: 0,
        });
    }
}

/// Datadog's unit name for a Loggregator gauge unit; `None` for units it would not know.
fn datadog_unit(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "bytes" | "byte" | "B" => "byte",
        "percentage" | "percent" | "%" => "percent",
        "ms" | "millisecond" | "milliseconds" => "millisecond",
        "ns" | "nanosecond" | "nanoseconds" => "nanosecond",
        "us" | "microsecond" | "microseconds" => "microsecond",
        "s" | "second" | "seconds" => "second",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use hydrant_envelope::v2;
    use hydrant_envelope::wire::{EnvelopeView, encode};
    use hydrant_testkit::envelopes::{self, counter, gauge};

    use super::{Aggregator, MapOptions, Route, Tally};
    use crate::TimerMode;
    use crate::series::{MetricType, Series};

    const NOW: i64 = 1_700_000_000;

    fn opts(timers: TimerMode) -> MapOptions {
        MapOptions {
            prefix: "hydrant.".to_owned(),
            extra_tags: vec!["env:test".to_owned()],
            deployment: "hydrant".to_owned(),
            drop_tags: vec!["created_at".to_owned()],
            timers,
            max_series: 100,
            max_timer_samples: 10,
        }
    }

    fn envelope(source: &str, tags: &[(&str, &str)], message: v2::envelope::Message) -> Vec<u8> {
        let timestamp = NOW * 1_000_000_000 + 500_000_000;
        encode(&envelopes::envelope(timestamp, source, "1", tags, message)).to_vec()
    }

    fn feed(agg: &mut Aggregator, envelopes: &[Vec<u8>]) {
        for bytes in envelopes {
            let view = EnvelopeView::parse(bytes).unwrap();
            let mut scratch = Vec::new();
            agg.add(&view, NOW, &mut scratch);
        }
    }

    fn find<'a>(series: &'a [Series], metric: &str) -> &'a Series {
        series
            .iter()
            .find(|s| s.metric == metric)
            .unwrap_or_else(|| panic!("no {metric} in {series:#?}"))
    }

    #[test]
    fn counter_deltas_sum_per_series_with_the_platform_tags() {
        let mut agg = Aggregator::new(opts(TimerMode::Gauges));
        // Tag order on the wire must not split a series.
        let a = [("app_name", "web"), ("z", "1")];
        let b = [("z", "1"), ("app_name", "web"), ("created_at", "now")];
        feed(
            &mut agg,
            &[
                envelope("app", &a, counter("requests", 3, 0)),
                envelope("app", &b, counter("requests", 4, 0)),
                envelope("other", &a, counter("requests", 5, 0)),
            ],
        );
        let tally = agg.take_tally();
        assert_eq!(tally.received(Route::Series), 3);
        assert_eq!(tally.drops(Route::Series).count(), 0);
        let out = agg.flush(NOW - 10, 10);
        assert_eq!(out.series.len(), 2);
        let s = out
            .series
            .iter()
            .find(|s| s.tags.contains(&"source_id:app".to_owned()))
            .unwrap();
        assert_eq!(s.metric, "hydrant.requests");
        assert_eq!(s.kind, MetricType::Count);
        assert_eq!(s.interval, Some(10));
        assert_eq!((s.points[0].timestamp, s.points[0].value), (NOW - 10, 7.0));
        assert_eq!(s.values, 2);
        assert_eq!(
            s.tags,
            [
                "app_name:web",
                "deployment:hydrant",
                "env:test",
                "instance_id:1",
                "origin:app",
                "source_id:app",
                "z:1"
            ]
        );
        assert!(
            agg.flush(NOW, 10).series.is_empty(),
            "a new interval starts empty"
        );
    }

    #[test]
    fn total_only_counters_become_deltas_after_a_baseline() {
        let mut agg = Aggregator::new(opts(TimerMode::Gauges));
        feed(&mut agg, &[envelope("app", &[], counter("c", 0, 100))]);
        let t = agg.take_tally();
        assert_eq!(t.dropped[0][super::COUNTER_BASELINE], 1);
        assert!(
            agg.flush(NOW, 10).series.is_empty(),
            "first sight sends nothing"
        );
        feed(
            &mut agg,
            &[
                envelope("app", &[], counter("c", 0, 130)),
                envelope("app", &[], counter("c", 0, 135)),
                // Both fields: the delta is used and the baseline follows the total.
                envelope("app", &[], counter("c", 5, 140)),
                // A restart: all of the new total is new.
                envelope("app", &[], counter("c", 0, 4)),
            ],
        );
        let out = agg.flush(NOW, 10);
        assert_eq!(out.series[0].points[0].value, 30.0 + 5.0 + 5.0 + 4.0);
        assert_eq!(out.series[0].values, 4);
        assert_eq!(
            agg.take_tally(),
            Tally {
                received: [4, 0],
                ..Tally::default()
            }
        );
    }

    #[test]
    fn gauges_keep_the_newest_value_per_metric_with_units() {
        let mut agg = Aggregator::new(opts(TimerMode::Gauges));
        let g = |cpu: f64, mem: f64| gauge(&[("cpu", cpu, "percentage"), ("memory", mem, "bytes")]);
        feed(
            &mut agg,
            &[
                envelope("app", &[], g(0.5, 100.0)),
                envelope("app", &[], g(0.7, 200.0)),
                envelope("app", &[], g(f64::NAN, 300.0)),
            ],
        );
        let t = agg.take_tally();
        assert_eq!(t.received(Route::Series), 6);
        assert_eq!(t.dropped[0][super::INVALID_VALUE], 1);
        let out = agg.flush(NOW, 10);
        let cpu = find(&out.series, "hydrant.cpu");
        assert_eq!(cpu.kind, MetricType::Gauge);
        assert_eq!((cpu.points[0].timestamp, cpu.points[0].value), (NOW, 0.7));
        assert_eq!(cpu.unit.as_deref(), Some("percent"));
        assert_eq!(cpu.interval, None);
        let mem = find(&out.series, "hydrant.memory");
        assert_eq!(mem.points[0].value, 300.0);
        assert_eq!(mem.unit.as_deref(), Some("byte"));
        assert_eq!(cpu.values + mem.values, 5);
    }

    fn timer(ms: i64) -> v2::envelope::Message {
        let start = NOW * 1_000_000_000;
        envelopes::timer("http", start, start + ms * 1_000_000)
    }

    #[test]
    fn timers_as_derived_gauges_are_exact_where_they_can_be() {
        let mut agg = Aggregator::new(opts(TimerMode::Gauges));
        let envs: Vec<_> = (1..=100)
            .map(|ms| envelope("rtr", &[], timer(ms)))
            .collect();
        feed(&mut agg, &envs);
        feed(&mut agg, &[envelope("rtr", &[], timer(-5))]);
        let t = agg.take_tally();
        assert_eq!(t.received(Route::Series), 101);
        assert_eq!(t.dropped[0][super::INVALID_VALUE], 1);
        let out = agg.flush(NOW, 10);
        assert_eq!(out.series.len(), 7);
        let count = find(&out.series, "hydrant.http.count");
        assert_eq!(
            (count.kind, count.points[0].value, count.values),
            (MetricType::Count, 100.0, 100)
        );
        assert_eq!(find(&out.series, "hydrant.http.avg").points[0].value, 50.5);
        assert_eq!(find(&out.series, "hydrant.http.min").points[0].value, 1.0);
        assert_eq!(find(&out.series, "hydrant.http.max").points[0].value, 100.0);
        let p99 = find(&out.series, "hydrant.http.p99");
        assert_eq!(p99.unit.as_deref(), Some("millisecond"));
        assert!((1.0..=100.0).contains(&p99.points[0].value));
        assert_eq!(out.series.iter().map(|s| s.values).sum::<u64>(), 100);
    }

    #[test]
    fn timers_as_distributions_keep_a_bounded_sample_and_count_the_rest() {
        let mut agg = Aggregator::new(opts(TimerMode::Distribution));
        let envs: Vec<_> = (1..=25).map(|ms| envelope("rtr", &[], timer(ms))).collect();
        feed(&mut agg, &envs);
        let out = agg.flush(NOW - 10, 10);
        assert!(out.series.is_empty());
        let d = &out.distributions[0];
        assert_eq!(d.metric, "hydrant.http");
        assert_eq!(d.points[0].0, NOW - 10);
        assert_eq!(d.points[0].1.len(), 10, "max_timer_samples");
        assert!(d.points[0].1.iter().all(|v| (1.0..=25.0).contains(v)));
        let t = agg.take_tally();
        assert_eq!(t.received(Route::Distribution), 25);
        assert_eq!(d.values + t.dropped[1][super::TIMER_SAMPLED], 25);
    }

    #[test]
    fn series_beyond_the_limit_are_counted_not_kept() {
        let mut agg = Aggregator::new(MapOptions {
            max_series: 3,
            ..opts(TimerMode::Gauges)
        });
        let envs: Vec<_> = (0..10)
            .map(|i| envelope(&format!("app{i}"), &[], counter("c", 1, 0)))
            .collect();
        feed(&mut agg, &envs);
        let t = agg.take_tally();
        assert_eq!(t.received(Route::Series), 10);
        assert_eq!(t.dropped[0][super::SERIES_LIMIT], 7);
        assert_eq!(agg.flush(NOW, 10).series.len(), 3);
    }

    #[test]
    fn logs_and_events_are_not_metrics() {
        let mut agg = Aggregator::new(opts(TimerMode::Gauges));
        feed(
            &mut agg,
            &[envelope(
                "app",
                &[],
                v2::envelope::Message::Log(v2::Log {
                    payload: b"hello".to_vec().into(),
                    r#type: 0,
                }),
            )],
        );
        assert_eq!(agg.take_tally(), Tally::default());
        assert!(agg.is_empty());
    }
}
