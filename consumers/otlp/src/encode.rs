//! Envelopes → OTLP export requests: the mapping the crate doc describes, and nothing else.
//!
//! Flow: the reader asks [`Mapping::route`] where an envelope goes and queues one [`Item`] per
//! log record or metric data point; a sender takes a batch of items and builds one
//! `ExportLogsServiceRequest` ([`logs_request`]) or `ExportMetricsServiceRequest`
//! ([`MetricsEncoder::request`]), grouping records under one `ResourceLogs` /
//! `ResourceMetrics` per distinct resource (source, instance, app, space, org).
//!
//! Invariants: one item becomes exactly one log record or one data point, so the senders'
//! counts (`sent`, `dropped{reason}`) add up to what the reader queued; attribute keys are
//! unique within a record (a tag repeated on hostile input keeps its last value, and the
//! envelope's own `source_id` / `instance_id` win over tags of the same name); nothing here
//! panics on any input.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use bytes::Bytes;
use hydrant_envelope::semantic::tag as key;
use hydrant_envelope::wire::{EnvelopeView, Fields, Kind, Value};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::config::{Config, Temporality};

/// The instrumentation scope every record is exported under.
pub const SCOPE_NAME: &str = "hydrant-nozzle-otlp";

/// Counter series the cumulative mode sums deltas for before it starts over (Loggregator's
/// agent aggregator resets at the same size); a reset looks like a counter restart downstream.
const MAX_SUMMED_SERIES: usize = 10_000;

/// One queued log record or metric data point: the envelope it comes from (sharing the
/// firehose batch's buffer) and, for a gauge, which of its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The encoded envelope.
    pub envelope: Bytes,
    /// The gauge entry this point is (0 for everything else).
    pub point: u32,
}

/// Where the reader sends an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// One log record.
    Logs,
    /// This many metric data points.
    Metrics(u32),
    /// Not exported, on purpose; counted under `nozzle.skipped{reason}`.
    Skip(&'static str),
}

/// The mapping settings, resolved once from the config.
#[derive(Debug, Clone)]
pub struct Mapping {
    prefix: String,
    counters: Temporality,
    timers: Vec<String>,
    bounds: Vec<f64>,
    drop_tags: Vec<String>,
    export_logs: bool,
    export_metrics: bool,
}

impl Default for Mapping {
    fn default() -> Self {
        Self::new(&Config::default())
    }
}

impl Mapping {
    /// The mapping a config asks for.
    #[must_use]
    pub fn new(config: &Config) -> Self {
        let m = &config.metrics;
        Self {
            prefix: m.prefix.clone(),
            counters: m.counters,
            timers: m.histogram_timers.clone(),
            bounds: m.histogram_bounds_seconds.clone(),
            drop_tags: m.histogram_drop_tags.clone(),
            export_logs: config.export_logs,
            export_metrics: config.export_metrics,
        }
    }

    /// Which signal `view` feeds, and how many items it makes.
    #[must_use]
    pub fn route(&self, view: &EnvelopeView<'_>) -> Route {
        match view.kind {
            Kind::Log | Kind::Event if self.export_logs => Route::Logs,
            Kind::Log | Kind::Event => Route::Skip("logs_disabled"),
            Kind::None => Route::Skip("no_message"),
            _ if !self.export_metrics => Route::Skip("metrics_disabled"),
            Kind::Counter => Route::Metrics(1),
            Kind::Gauge => match u32::try_from(view.gauge_values().count()) {
                Ok(0) | Err(_) => Route::Skip("empty_gauge"),
                Ok(n) => Route::Metrics(n),
            },
            Kind::Timer => {
                let name = view.timer_name().unwrap_or("");
                if self.timers.iter().any(|t| t == name) {
                    Route::Metrics(1)
                } else {
                    Route::Skip("timer_not_exported")
                }
            }
        }
    }
}

/// The tags of one envelope, deduplicated (last value wins), into a reused buffer.
fn collect_tags<'a>(view: &EnvelopeView<'a>, out: &mut Vec<(&'a str, &'a str)>) {
    out.clear();
    for (k, v) in view.tags() {
        match out.iter_mut().find(|(seen, _)| *seen == k) {
            Some(slot) => slot.1 = v,
            None => out.push((k, v)),
        }
    }
}

fn tag<'a>(tags: &[(&'a str, &'a str)], key: &str) -> &'a str {
    tags.iter().find(|(k, _)| *k == key).map_or("", |(_, v)| v)
}

/// What identifies the thing that emitted an envelope: one OTLP `Resource` per distinct key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ResourceKey<'a> {
    source_id: &'a str,
    instance_id: &'a str,
    app_id: &'a str,
    app_name: &'a str,
    space_id: &'a str,
    space_name: &'a str,
    org_id: &'a str,
    org_name: &'a str,
}

impl<'a> ResourceKey<'a> {
    fn of(view: &EnvelopeView<'a>, tags: &[(&'a str, &'a str)]) -> Self {
        Self {
            source_id: view.source_id,
            instance_id: view.instance_id,
            app_id: tag(tags, key::APP_ID),
            app_name: tag(tags, key::APP_NAME),
            space_id: tag(tags, key::SPACE_ID),
            space_name: tag(tags, key::SPACE_NAME),
            org_id: tag(tags, key::ORGANIZATION_ID),
            org_name: tag(tags, key::ORGANIZATION_NAME),
        }
    }

    fn resource(&self) -> Resource {
        let service = if self.app_name.is_empty() {
            self.source_id
        } else {
            self.app_name
        };
        // An envelope names an app when it says so, or when it carries an app name (then its
        // source id is the app's guid, as for every app log and container metric).
        let app_id = if !self.app_id.is_empty() {
            self.app_id
        } else if !self.app_name.is_empty() {
            self.source_id
        } else {
            ""
        };
        let mut attributes = Vec::with_capacity(10);
        for (key, value) in [
            ("service.name", service),
            ("service.instance.id", self.instance_id),
            ("hydrant.source_id", self.source_id),
            ("hydrant.app_id", app_id),
            ("cloudfoundry.app.id", app_id),
            ("cloudfoundry.app.name", self.app_name),
            ("cloudfoundry.app.instance.id", self.instance_id),
            ("cloudfoundry.space.id", self.space_id),
            ("cloudfoundry.space.name", self.space_name),
            ("cloudfoundry.org.id", self.org_id),
            ("cloudfoundry.org.name", self.org_name),
        ] {
            if !value.is_empty() {
                attributes.push(string_kv(key, value));
            }
        }
        Resource {
            attributes,
            ..Resource::default()
        }
    }
}

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..InstrumentationScope::default()
    }
}

/// An envelope time as OTLP wants it (negative means unknown, which OTLP writes as 0).
fn nanos(ns: i64) -> u64 {
    u64::try_from(ns).unwrap_or(0)
}

/// The body of a log: text when it is UTF-8 (nearly always), the bytes untouched otherwise.
fn body(payload: &[u8]) -> AnyValue {
    let value = match std::str::from_utf8(payload) {
        Ok(text) => any_value::Value::StringValue(text.to_owned()),
        Err(_) => any_value::Value::BytesValue(payload.to_vec()),
    };
    AnyValue { value: Some(value) }
}

/// One `ExportLogsServiceRequest` from log and event items, and how many records it holds
/// (items that are not logs or events, or do not parse, are left out and not counted).
#[must_use]
pub fn logs_request(items: &[Item], observed_ns: u64) -> (ExportLogsServiceRequest, usize) {
    let mut groups: HashMap<ResourceKey<'_>, usize> = HashMap::new();
    let mut resource_logs: Vec<ResourceLogs> = Vec::new();
    let mut tags = Vec::with_capacity(16);
    let mut records = 0;
    for item in items {
        let Ok(view) = EnvelopeView::parse(&item.envelope) else {
            continue;
        };
        collect_tags(&view, &mut tags);
        let mut record = LogRecord {
            time_unix_nano: nanos(view.timestamp),
            observed_time_unix_nano: observed_ns,
            severity_number: SeverityNumber::Info as i32,
            severity_text: "INFO".to_owned(),
            attributes: Vec::with_capacity(tags.len() + 1),
            ..LogRecord::default()
        };
        if let Some((payload, is_err)) = view.log() {
            if is_err {
                record.severity_number = SeverityNumber::Error as i32;
                "ERROR".clone_into(&mut record.severity_text);
            }
            record.body = Some(body(payload));
            record.attributes.push(string_kv(
                "log.iostream",
                if is_err { "stderr" } else { "stdout" },
            ));
        } else if let Some((title, text)) = view.event() {
            title.clone_into(&mut record.event_name);
            record.body = Some(body(text.as_bytes()));
        } else {
            continue;
        }
        record
            .attributes
            .extend(tags.iter().map(|(k, v)| string_kv(k, v)));
        let key = ResourceKey::of(&view, &tags);
        let index = *groups.entry(key).or_insert_with(|| {
            resource_logs.push(ResourceLogs {
                resource: Some(key.resource()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope()),
                    ..ScopeLogs::default()
                }],
                ..ResourceLogs::default()
            });
            resource_logs.len() - 1
        });
        if let Some(scope_logs) = resource_logs
            .get_mut(index)
            .and_then(|r| r.scope_logs.first_mut())
        {
            scope_logs.log_records.push(record);
            records += 1;
        }
    }
    (ExportLogsServiceRequest { resource_logs }, records)
}

/// `(name, delta, total)` of a counter envelope.
fn counter_fields<'a>(view: &EnvelopeView<'a>) -> Option<(&'a str, u64, u64)> {
    if view.kind != Kind::Counter {
        return None;
    }
    let (mut name, mut delta, mut total) = ("", 0, 0);
    for (number, value) in Fields::new(view.body()).flatten() {
        match (number, value) {
            (1, Value::Len(b)) => name = std::str::from_utf8(b).ok()?,
            (2, Value::Varint(d)) => delta = d,
            (3, Value::Varint(t)) => total = t,
            _ => {}
        }
    }
    Some((name, delta, total))
}

/// The kind of OTLP metric a data point belongs to: part of the key that merges points of
/// one metric name within a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum MetricKind {
    Sum,
    Gauge,
    Histogram,
}

/// Builds metrics requests; keeps the running totals of delta-only counters between batches.
#[derive(Debug, Default)]
pub struct MetricsEncoder {
    mapping: Mapping,
    summed: HashMap<u64, u64>,
}

impl MetricsEncoder {
    /// An encoder with no counter history.
    #[must_use]
    pub fn new(mapping: Mapping) -> Self {
        Self {
            mapping,
            summed: HashMap::new(),
        }
    }

    /// One `ExportMetricsServiceRequest` from metric items, and how many data points it holds.
    #[must_use]
    pub fn request(&mut self, items: &[Item]) -> (ExportMetricsServiceRequest, usize) {
        let mut resources: HashMap<ResourceKey<'_>, usize> = HashMap::new();
        let mut metrics_of: HashMap<(usize, &str, MetricKind), usize> = HashMap::new();
        let mut resource_metrics: Vec<ResourceMetrics> = Vec::new();
        let mut tags = Vec::with_capacity(16);
        let mut points = 0;
        for item in items {
            let Ok(view) = EnvelopeView::parse(&item.envelope) else {
                continue;
            };
            collect_tags(&view, &mut tags);
            let Some((name, kind, unit, data)) = self.point(&view, &tags, item.point) else {
                continue;
            };
            let key = ResourceKey::of(&view, &tags);
            let r = *resources.entry(key).or_insert_with(|| {
                resource_metrics.push(ResourceMetrics {
                    resource: Some(key.resource()),
                    scope_metrics: vec![ScopeMetrics {
                        scope: Some(scope()),
                        ..ScopeMetrics::default()
                    }],
                    ..ResourceMetrics::default()
                });
                resource_metrics.len() - 1
            });
            let Some(scope_metrics) = resource_metrics
                .get_mut(r)
                .and_then(|rm| rm.scope_metrics.first_mut())
            else {
                continue;
            };
            let m = *metrics_of.entry((r, name, kind)).or_insert_with(|| {
                scope_metrics.metrics.push(Metric {
                    name: format!("{}{name}", self.mapping.prefix),
                    unit: unit.to_owned(),
                    data: Some(empty_data(kind, self.mapping.counters)),
                    ..Metric::default()
                });
                scope_metrics.metrics.len() - 1
            });
            if let Some(metric) = scope_metrics.metrics.get_mut(m) {
                push_point(metric, data);
                points += 1;
            }
        }
        (ExportMetricsServiceRequest { resource_metrics }, points)
    }

    /// The data point of `view` (entry `point` for a gauge): metric name, kind, unit, data.
    fn point<'a>(
        &mut self,
        view: &EnvelopeView<'a>,
        tags: &[(&'a str, &'a str)],
        point: u32,
    ) -> Option<(&'a str, MetricKind, &'a str, Point)> {
        let time = nanos(view.timestamp);
        match view.kind {
            Kind::Counter => {
                let (name, delta, total) = counter_fields(view)?;
                let value = match self.mapping.counters {
                    Temporality::Delta => delta,
                    Temporality::Cumulative if total == 0 && delta > 0 => {
                        self.summed_total(view, name, tags, delta)
                    }
                    Temporality::Cumulative => total,
                };
                let dp = NumberDataPoint {
                    attributes: point_attributes(view, tags, &[]),
                    time_unix_nano: time,
                    value: Some(number_data_point::Value::AsInt(
                        i64::try_from(value).unwrap_or(i64::MAX),
                    )),
                    ..NumberDataPoint::default()
                };
                Some((name, MetricKind::Sum, "", Point::Number(dp)))
            }
            Kind::Gauge => {
                let (name, value, unit) = view.gauge_values().nth(point as usize)?;
                let dp = NumberDataPoint {
                    attributes: point_attributes(view, tags, &[]),
                    time_unix_nano: time,
                    value: Some(number_data_point::Value::AsDouble(value)),
                    ..NumberDataPoint::default()
                };
                Some((name, MetricKind::Gauge, unit, Point::Number(dp)))
            }
            Kind::Timer => {
                let name = view.timer_name()?;
                let (start, stop) = view.timer_span()?;
                let seconds = (stop.saturating_sub(start)).max(0) as f64 / 1e9;
                let bounds = &self.mapping.bounds;
                let bucket = bounds
                    .iter()
                    .position(|b| seconds <= *b)
                    .unwrap_or(bounds.len());
                let mut bucket_counts = vec![0; bounds.len() + 1];
                if let Some(c) = bucket_counts.get_mut(bucket) {
                    *c = 1;
                }
                let dp = HistogramDataPoint {
                    attributes: point_attributes(view, tags, &self.mapping.drop_tags),
                    start_time_unix_nano: nanos(start),
                    time_unix_nano: nanos(stop),
                    count: 1,
                    sum: Some(seconds),
                    bucket_counts,
                    explicit_bounds: bounds.clone(),
                    min: Some(seconds),
                    max: Some(seconds),
                    ..HistogramDataPoint::default()
                };
                Some((name, MetricKind::Histogram, "s", Point::Histogram(dp)))
            }
            _ => None,
        }
    }

    /// The running total of a counter whose envelopes carry only deltas.
    fn summed_total(
        &mut self,
        view: &EnvelopeView<'_>,
        name: &str,
        tags: &[(&str, &str)],
        delta: u64,
    ) -> u64 {
        let mut h = DefaultHasher::new();
        (name, view.source_id, view.instance_id, tags).hash(&mut h);
        let series = h.finish();
        if self.summed.len() >= MAX_SUMMED_SERIES && !self.summed.contains_key(&series) {
            self.summed.clear();
        }
        let total = self.summed.entry(series).or_insert(0);
        *total = total.saturating_add(delta);
        *total
    }
}

/// A data point on its way into its metric.
enum Point {
    Number(NumberDataPoint),
    Histogram(HistogramDataPoint),
}

fn empty_data(kind: MetricKind, counters: Temporality) -> metric::Data {
    match kind {
        MetricKind::Sum => metric::Data::Sum(Sum {
            data_points: Vec::new(),
            aggregation_temporality: match counters {
                Temporality::Cumulative => AggregationTemporality::Cumulative as i32,
                Temporality::Delta => AggregationTemporality::Delta as i32,
            },
            is_monotonic: true,
        }),
        MetricKind::Gauge => metric::Data::Gauge(Gauge::default()),
        MetricKind::Histogram => metric::Data::Histogram(Histogram {
            data_points: Vec::new(),
            aggregation_temporality: AggregationTemporality::Delta as i32,
        }),
    }
}

fn push_point(metric: &mut Metric, point: Point) {
    match (&mut metric.data, point) {
        (Some(metric::Data::Sum(s)), Point::Number(p)) => s.data_points.push(p),
        (Some(metric::Data::Gauge(g)), Point::Number(p)) => g.data_points.push(p),
        (Some(metric::Data::Histogram(h)), Point::Histogram(p)) => h.data_points.push(p),
        // The kind is part of the key the metric was found by, so the shapes always agree.
        _ => {}
    }
}

/// A metric point's attributes: the envelope's tags (less `drop`), then its `source_id` and
/// `instance_id`, which backends that drop resource attributes (Prometheus) still need.
fn point_attributes(
    view: &EnvelopeView<'_>,
    tags: &[(&str, &str)],
    drop: &[String],
) -> Vec<KeyValue> {
    let mut out = Vec::with_capacity(tags.len() + 2);
    for (k, v) in tags {
        if *k == "source_id" || *k == "instance_id" || drop.iter().any(|d| d == k) {
            continue;
        }
        out.push(string_kv(k, v));
    }
    out.push(string_kv("source_id", view.source_id));
    if !view.instance_id.is_empty() {
        out.push(string_kv("instance_id", view.instance_id));
    }
    out
}

#[cfg(test)]
mod tests;
