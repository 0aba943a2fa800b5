//! Unit tests of the mapping: one envelope of each kind in, the OTLP fields checked out.

use bytes::Bytes;
use hydrant_envelope::v2;
use hydrant_envelope::wire::{EnvelopeView, encode};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};

use super::{Item, Mapping, MetricsEncoder, Route, logs_request};
use crate::config::{Config, Temporality};
use hydrant_testkit::envelopes::{self, counter, gauge, timer};

fn envelope(message: v2::envelope::Message, tags: &[(&str, &str)]) -> Bytes {
    let e = envelopes::envelope(1_700_000_000_123_456_789, "app-guid", "2", tags, message);
    encode(&e)
}

fn item(envelope: &Bytes, point: u32) -> Item {
    Item {
        envelope: envelope.clone(),
        point,
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

fn log(payload: &[u8], err: bool) -> v2::envelope::Message {
    v2::envelope::Message::Log(v2::Log {
        payload: payload.to_vec().into(),
        r#type: i32::from(err),
    })
}

#[test]
fn logs_group_by_resource_and_keep_every_field() {
    let app_tags = [
        ("app_name", "web"),
        ("space_name", "dev"),
        ("organization_name", "demo"),
        ("source_type", "APP/PROC/WEB"),
    ];
    let out = envelope(log(b"hello", false), &app_tags);
    let err = envelope(log(b"boom", true), &app_tags);
    let other = encode(&v2::Envelope {
        source_id: "doppler".to_owned(),
        message: Some(log(&[0xff, 0xfe], false)),
        ..v2::Envelope::default()
    });
    let (req, n) = logs_request(&[item(&out, 0), item(&other, 0), item(&err, 0)], 42);
    assert_eq!(n, 3);
    assert_eq!(req.resource_logs.len(), 2, "two distinct resources");
    let app = &req.resource_logs[0];
    let res = &app.resource.as_ref().unwrap().attributes;
    assert_eq!(attr(res, "service.name"), Some("web"));
    assert_eq!(attr(res, "service.instance.id"), Some("2"));
    assert_eq!(attr(res, "hydrant.app_id"), Some("app-guid"));
    assert_eq!(attr(res, "cloudfoundry.space.name"), Some("dev"));
    assert_eq!(attr(res, "cloudfoundry.org.name"), Some("demo"));
    let scope = &app.scope_logs[0];
    assert_eq!(scope.scope.as_ref().unwrap().name, super::SCOPE_NAME);
    let [first, second] = &scope.log_records[..] else {
        panic!("two records under the app: {:?}", scope.log_records);
    };
    assert_eq!(first.time_unix_nano, 1_700_000_000_123_456_789);
    assert_eq!(first.observed_time_unix_nano, 42);
    assert_eq!(
        (first.severity_number, first.severity_text.as_str()),
        (9, "INFO")
    );
    assert_eq!(
        (second.severity_number, second.severity_text.as_str()),
        (17, "ERROR")
    );
    assert_eq!(
        first.body.as_ref().unwrap().value,
        Some(any_value::Value::StringValue("hello".to_owned()))
    );
    assert_eq!(attr(&first.attributes, "source_type"), Some("APP/PROC/WEB"));
    assert_eq!(attr(&second.attributes, "log.iostream"), Some("stderr"));
    let platform = &req.resource_logs[1];
    let res = &platform.resource.as_ref().unwrap().attributes;
    assert_eq!(attr(res, "service.name"), Some("doppler"));
    assert_eq!(
        attr(res, "hydrant.app_id"),
        None,
        "a platform source is no app"
    );
    assert_eq!(
        platform.scope_logs[0].log_records[0]
            .body
            .as_ref()
            .unwrap()
            .value,
        Some(any_value::Value::BytesValue(vec![0xff, 0xfe])),
        "non-UTF-8 payloads pass through untouched"
    );
}

#[test]
fn events_become_named_log_records() {
    let e = envelope(
        v2::envelope::Message::Event(v2::Event {
            title: "app.crash".to_owned(),
            body: "exited with 1".to_owned(),
        }),
        &[],
    );
    let (req, n) = logs_request(&[item(&e, 0)], 0);
    assert_eq!(n, 1);
    let r = &req.resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(r.event_name, "app.crash");
    assert_eq!(
        r.body.as_ref().unwrap().value,
        Some(any_value::Value::StringValue("exited with 1".to_owned()))
    );
}

#[test]
fn routes_follow_the_config() {
    let mapping = Mapping::default();
    let route = |m: v2::envelope::Message| {
        let e = envelope(m, &[]);
        mapping.route(&EnvelopeView::parse(&e).unwrap())
    };
    assert_eq!(route(log(b"x", false)), Route::Logs);
    let gauge = gauge(&[("cpu", 1.0, "x"), ("memory", 2.0, "x"), ("disk", 3.0, "x")]);
    assert_eq!(route(gauge), Route::Metrics(3));
    let timer = |name: &str| timer(name, 0, 1);
    assert_eq!(route(timer("http")), Route::Metrics(1));
    assert_eq!(route(timer("db")), Route::Skip("timer_not_exported"));
    let no_metrics = Mapping::new(&Config {
        export_metrics: false,
        ..Config::default()
    });
    let e = envelope(timer("http"), &[]);
    assert_eq!(
        no_metrics.route(&EnvelopeView::parse(&e).unwrap()),
        Route::Skip("metrics_disabled")
    );
}

fn int_points(data: &metric::Data) -> Vec<i64> {
    let metric::Data::Sum(sum) = data else {
        panic!("not a sum: {data:?}");
    };
    assert!(sum.is_monotonic);
    sum.data_points
        .iter()
        .map(|p| match p.value {
            Some(number_data_point::Value::AsInt(v)) => v,
            ref other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn counters_are_cumulative_totals_or_deltas() {
    let with_total = envelope(counter("nozzle.sent", 5, 105), &[("destination", "d")]);
    let delta_only = envelope(counter("requests", 3, 0), &[]);
    let mut cumulative = MetricsEncoder::new(Mapping::default());
    let items = [
        item(&with_total, 0),
        item(&delta_only, 0),
        item(&delta_only, 0),
    ];
    let (req, n) = cumulative.request(&items);
    assert_eq!(n, 3);
    let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
    assert_eq!(metrics[0].name, "nozzle.sent");
    assert_eq!(int_points(metrics[0].data.as_ref().unwrap()), [105]);
    assert_eq!(metrics[1].name, "requests");
    assert_eq!(
        int_points(metrics[1].data.as_ref().unwrap()),
        [3, 6],
        "delta-only counters are summed"
    );
    let attrs = match metrics[0].data.as_ref().unwrap() {
        metric::Data::Sum(s) => &s.data_points[0].attributes,
        _ => unreachable!(),
    };
    assert_eq!(attr(attrs, "destination"), Some("d"));
    assert_eq!(attr(attrs, "source_id"), Some("app-guid"));
    assert_eq!(attr(attrs, "instance_id"), Some("2"));

    let mut delta = MetricsEncoder::new(Mapping::new(&Config {
        metrics: crate::MetricsConfig {
            counters: Temporality::Delta,
            prefix: "hydrant.".to_owned(),
            ..crate::MetricsConfig::default()
        },
        ..Config::default()
    }));
    let (req, _) = delta.request(&items);
    let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
    assert_eq!(metrics[0].name, "hydrant.nozzle.sent");
    assert_eq!(int_points(metrics[0].data.as_ref().unwrap()), [5]);
    assert_eq!(int_points(metrics[1].data.as_ref().unwrap()), [3, 3]);
}

#[test]
fn gauges_and_http_timers() {
    let gauge = envelope(
        gauge(&[("cpu", 12.5, "percentage"), ("memory", 1024.0, "bytes")]),
        &[],
    );
    let timer = envelope(
        timer("http", 1_000_000_000, 1_030_000_000),
        &[
            ("status_code", "200"),
            ("request_id", "r-1"),
            ("instance_id", "9"),
        ],
    );
    let mut enc = MetricsEncoder::new(Mapping::default());
    let (req, n) = enc.request(&[item(&gauge, 0), item(&gauge, 1), item(&timer, 0)]);
    assert_eq!(n, 3);
    let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
    let by_name = |name: &str| metrics.iter().find(|m| m.name == name).unwrap();
    let cpu = by_name("cpu");
    assert_eq!(cpu.unit, "percentage");
    let Some(metric::Data::Gauge(g)) = &cpu.data else {
        panic!("{cpu:?}");
    };
    assert_eq!(
        g.data_points[0].value,
        Some(number_data_point::Value::AsDouble(12.5))
    );
    assert_eq!(by_name("memory").unit, "bytes");
    let http = by_name("http");
    assert_eq!(http.unit, "s");
    let Some(metric::Data::Histogram(h)) = &http.data else {
        panic!("{http:?}");
    };
    assert_eq!(h.aggregation_temporality, 1, "delta");
    let p = &h.data_points[0];
    assert_eq!(
        (p.count, p.sum, p.min, p.max),
        (1, Some(0.03), Some(0.03), Some(0.03))
    );
    assert_eq!(
        (p.start_time_unix_nano, p.time_unix_nano),
        (1_000_000_000, 1_030_000_000)
    );
    // 30 ms lands in (0.025, 0.05]: bucket 3.
    let mut expected = vec![0u64; p.explicit_bounds.len() + 1];
    expected[3] = 1;
    assert_eq!(p.bucket_counts, expected);
    assert_eq!(attr(&p.attributes, "status_code"), Some("200"));
    assert_eq!(
        attr(&p.attributes, "request_id"),
        None,
        "per-request tags dropped"
    );
    assert_eq!(
        attr(&p.attributes, "instance_id"),
        Some("2"),
        "the envelope's field wins over a tag"
    );
    assert_eq!(
        p.attributes
            .iter()
            .filter(|kv| kv.key == "instance_id")
            .count(),
        1
    );
}
