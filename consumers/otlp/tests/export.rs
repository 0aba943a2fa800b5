//! The OTLP nozzle end to end: envelopes emitted into a real pipeline (agent → doppler →
//! firehose edge), the nozzle reading the firehose, and a local OTLP/gRPC receiver decoding
//! and checking every request. Each test asserts the ledger: every record the app emitted
//! arrives exactly once, or is counted as dropped with its reason.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

#[path = "support/pipeline.rs"]
mod pipeline;
#[path = "support/receiver.rs"]
mod receiver;

use std::path::PathBuf;
use std::time::Duration;

use hydrant_emitter::Emitter;
use hydrant_envelope::v2;
use hydrant_nozzle_core::QueueLimits;
use hydrant_nozzle_otlp::Config;
use hydrant_nozzle_testkit::{Pipeline, Probe, metric as scrape_metric, refusal, scrape};
use hydrant_testkit::envelopes::{APP_TAGS, counter, envelope, gauge, timer};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric, number_data_point};
use pipeline::{Nozzle, nozzle_config, start_nozzle};
use receiver::{Answer, Receiver, Server};
use tonic::Code;

const APP: &str = "6f1c8e6a-2b9d-4c47-9a43-0d7c5b1e2f30";
const BASE_NS: i64 = 1_700_000_000_000_000_000;
const WAIT: Duration = Duration::from_secs(30);

fn app_envelope(i: usize, message: v2::envelope::Message) -> v2::Envelope {
    envelope(BASE_NS + i as i64, APP, "1", &APP_TAGS, message)
}

fn payload(i: usize) -> String {
    format!("message {i} {}", "x".repeat(i % 40))
}

fn emit_logs(emitter: &Emitter, range: std::ops::Range<usize>) {
    for i in range {
        emitter.emit(&app_envelope(
            i,
            v2::envelope::Message::Log(v2::Log {
                payload: payload(i).into_bytes().into(),
                r#type: i32::from(i.is_multiple_of(3)),
            }),
        ));
    }
    emitter.flush();
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

/// Every log record the receiver kept for the app, with its resource's attributes.
/// Log records the receiver holds, from every source, over all export requests.
fn record_count(receiver: &Receiver) -> u64 {
    receiver
        .log_requests()
        .iter()
        .flat_map(|r| &r.resource_logs)
        .flat_map(|rl| &rl.scope_logs)
        .map(|sl| sl.log_records.len() as u64)
        .sum()
}

/// Waits until the receiver holds the app's records `0..n` (by their timestamps).
async fn wait_for_records(receiver: &Receiver, n: usize, what: &str) {
    hydrant_testkit::wait_for(WAIT, what, || async {
        let records = app_records(receiver);
        (0..n).all(|i| {
            records
                .iter()
                .any(|(_, r)| r.time_unix_nano as i64 == BASE_NS + i as i64)
        })
    })
    .await;
}

fn app_records(receiver: &Receiver) -> Vec<(Vec<KeyValue>, LogRecord)> {
    let mut out = Vec::new();
    for request in receiver.log_requests() {
        for rl in request.resource_logs {
            let resource = rl.resource.unwrap_or_default().attributes;
            if attr(&resource, "hydrant.source_id") != Some(APP) {
                continue;
            }
            for sl in rl.scope_logs {
                for r in sl.log_records {
                    out.push((resource.clone(), r));
                }
            }
        }
    }
    out
}

fn body(r: &LogRecord) -> &str {
    match r.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s,
        other => panic!("body {other:?}"),
    }
}

/// Checks the app's log records are exactly `0..n` (each once), with every field right.
fn check_logs_exactly_once(records: &[(Vec<KeyValue>, LogRecord)], n: usize) {
    let mut seen = vec![0u32; n];
    for (resource, r) in records {
        assert_eq!(attr(resource, "service.name"), Some("web"));
        assert_eq!(attr(resource, "service.instance.id"), Some("1"));
        assert_eq!(attr(resource, "hydrant.app_id"), Some(APP));
        assert_eq!(attr(resource, "cloudfoundry.space.name"), Some("dev"));
        assert_eq!(attr(resource, "cloudfoundry.org.name"), Some("demo"));
        let i = (r.time_unix_nano as i64 - BASE_NS) as usize;
        assert!(i < n, "unexpected time {}", r.time_unix_nano);
        seen[i] += 1;
        assert_eq!(body(r), payload(i), "record {i}");
        let err = i.is_multiple_of(3);
        assert_eq!(r.severity_number, if err { 17 } else { 9 }, "record {i}");
        assert_eq!(
            attr(&r.attributes, "log.iostream"),
            Some(if err { "stderr" } else { "stdout" })
        );
        assert_eq!(attr(&r.attributes, "source_type"), Some("APP/PROC/WEB"));
        assert_eq!(attr(&r.attributes, "app_name"), Some("web"));
        assert!(r.observed_time_unix_nano > 0);
    }
    let lost: Vec<usize> = (0..n).filter(|i| seen[*i] == 0).collect();
    let doubled: Vec<usize> = (0..n).filter(|i| seen[*i] > 1).collect();
    assert!(lost.is_empty(), "lost records {lost:?}");
    assert!(doubled.is_empty(), "duplicated records {doubled:?}");
}

/// Every metric the receiver kept for the app, flattened.
fn app_metrics(receiver: &Receiver) -> Vec<Metric> {
    let mut out = Vec::new();
    for request in receiver.metric_requests() {
        for rm in request.resource_metrics {
            let resource = rm.resource.unwrap_or_default().attributes;
            if attr(&resource, "hydrant.source_id") != Some(APP) {
                continue;
            }
            assert_eq!(attr(&resource, "service.name"), Some("web"));
            for sm in rm.scope_metrics {
                out.extend(sm.metrics);
            }
        }
    }
    out
}

fn point_count(metrics: &[Metric]) -> usize {
    metrics
        .iter()
        .map(|m| match &m.data {
            Some(metric::Data::Sum(s)) => s.data_points.len(),
            Some(metric::Data::Gauge(g)) => g.data_points.len(),
            Some(metric::Data::Histogram(h)) => h.data_points.len(),
            _ => 0,
        })
        .sum()
}

const COUNTERS: usize = 40;
const GAUGES: usize = 40;
const TIMERS: usize = 40;

fn emit_metrics(emitter: &Emitter) {
    for i in 0..COUNTERS {
        emitter.emit(&app_envelope(i, counter("requests", 2, 2 * (i as u64 + 1))));
    }
    for i in 0..GAUGES {
        emitter.emit(&app_envelope(
            i,
            gauge(&[
                ("cpu", i as f64 / 2.0, "percentage"),
                ("memory", 1_000.0 + i as f64, "bytes"),
            ]),
        ));
    }
    for i in 0..TIMERS {
        // Durations i ms: 0..=5 ms fall in the first bucket, the rest spread above.
        let mut e = app_envelope(i, timer("http", BASE_NS, BASE_NS + i as i64 * 1_000_000));
        e.tags.insert("status_code".to_owned(), "200".to_owned());
        e.tags.insert("request_id".to_owned(), format!("req-{i}"));
        emitter.emit(&e);
    }
    for i in 0..5 {
        emitter.emit(&app_envelope(
            i,
            v2::envelope::Message::Timer(v2::Timer {
                name: "db".to_owned(),
                start: 0,
                stop: 1,
            }),
        ));
    }
    emitter.flush();
}

fn check_metrics(metrics: &[Metric]) {
    assert_eq!(
        point_count(metrics),
        COUNTERS + 2 * GAUGES + TIMERS,
        "one point each"
    );
    let mut counter_values = Vec::new();
    let mut cpu = Vec::new();
    let mut durations = Vec::new();
    for m in metrics {
        match (m.name.as_str(), &m.data) {
            ("requests", Some(metric::Data::Sum(s))) => {
                assert!(s.is_monotonic);
                assert_eq!(s.aggregation_temporality, 2, "cumulative");
                for p in &s.data_points {
                    let Some(number_data_point::Value::AsInt(v)) = p.value else {
                        panic!("{p:?}");
                    };
                    assert_eq!(attr(&p.attributes, "source_id"), Some(APP));
                    assert_eq!(attr(&p.attributes, "instance_id"), Some("1"));
                    assert_eq!(attr(&p.attributes, "app_name"), Some("web"));
                    let i = (p.time_unix_nano as i64 - BASE_NS) as u64;
                    assert_eq!(v as u64, 2 * (i + 1), "total of counter {i}");
                    counter_values.push(v);
                }
            }
            ("cpu", Some(metric::Data::Gauge(g))) => {
                assert_eq!(m.unit, "percentage");
                for p in &g.data_points {
                    let i = (p.time_unix_nano as i64 - BASE_NS) as f64;
                    assert_eq!(p.value, Some(number_data_point::Value::AsDouble(i / 2.0)));
                    cpu.push(i);
                }
            }
            ("memory", Some(metric::Data::Gauge(g))) => {
                assert_eq!(m.unit, "bytes");
                for p in &g.data_points {
                    let i = (p.time_unix_nano as i64 - BASE_NS) as f64;
                    assert_eq!(
                        p.value,
                        Some(number_data_point::Value::AsDouble(1_000.0 + i))
                    );
                }
            }
            ("http", Some(metric::Data::Histogram(h))) => {
                assert_eq!(m.unit, "s");
                assert_eq!(h.aggregation_temporality, 1, "delta");
                for p in &h.data_points {
                    assert_eq!(p.count, 1);
                    let secs = p.sum.unwrap();
                    assert_eq!(p.min, Some(secs));
                    assert_eq!(p.max, Some(secs));
                    let bucket = p.bucket_counts.iter().position(|c| *c == 1).unwrap();
                    let upper = p.explicit_bounds.get(bucket).copied().unwrap_or(f64::MAX);
                    let lower = bucket
                        .checked_sub(1)
                        .map_or(f64::MIN, |b| p.explicit_bounds[b]);
                    assert!(lower < secs && secs <= upper, "{secs} in bucket {bucket}");
                    assert_eq!(attr(&p.attributes, "status_code"), Some("200"));
                    assert_eq!(attr(&p.attributes, "request_id"), None);
                    durations.push((secs * 1000.0).round() as u64);
                }
            }
            (name, data) => panic!("unexpected metric {name}: {data:?}"),
        }
    }
    counter_values.sort_unstable();
    assert_eq!(
        counter_values,
        (1..=COUNTERS as i64).map(|i| 2 * i).collect::<Vec<_>>()
    );
    assert_eq!(cpu.len(), GAUGES);
    durations.sort_unstable();
    assert_eq!(durations, (0..TIMERS as u64).collect::<Vec<_>>());
}

/// Waits until each signal's queue has accounted for everything it received.
async fn wait_accounted(nozzle: &Nozzle) -> String {
    hydrant_testkit::wait_for(
        WAIT,
        "every received record to be sent or dropped",
        || async {
            let text = scrape(nozzle.admin).await;
            let received = scrape_metric(&text, "nozzle_received_total", "");
            let done = scrape_metric(&text, "nozzle_sent_total", "")
                + scrape_metric(&text, "nozzle_dropped_total", "");
            (received > 0 && received == done).then_some(text)
        },
    )
    .await
}

/// Serves `receiver` on loopback and starts the pipeline; the config is for a nozzle exporting
/// to it logs only (metrics off, so every count is of logs).
async fn logs_only(receiver: &Receiver) -> (Server, Pipeline, Config) {
    let server = receiver.serve("127.0.0.1:0".parse().unwrap()).await;
    let pipeline = Pipeline::start().await;
    let mut config = nozzle_config(&pipeline, &format!("http://{}", server.addr));
    config.export_metrics = false;
    (server, pipeline, config)
}

/// [`logs_only`] for a nozzle that keeps its cursor: `cursor_file` is a file not written yet in
/// a directory of the test's own (named by `tag`), returned with the file's path for the test
/// to watch and remove.
async fn logs_only_keeping_cursor(
    receiver: &Receiver,
    tag: &str,
) -> (Server, Pipeline, Config, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("otlp-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cursor = dir.join("cursor");
    let _ = std::fs::remove_file(&cursor);
    let (server, pipeline, mut config) = logs_only(receiver).await;
    config.cursor_file = Some(cursor.display().to_string());
    (server, pipeline, config, dir, cursor)
}

/// Starts a nozzle on `pipeline` and waits until app logs flow through it.
async fn flowing(pipeline: &Pipeline, config: Config) -> (Nozzle, Emitter) {
    let nozzle = start_nozzle(config).await;
    let emitter = pipeline.emitter();
    nozzle.wait_until_flowing(&emitter, Probe::Log).await;
    (nozzle, emitter)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_metrics_arrive_mapped_exactly_once() {
    let receiver = Receiver::new();
    let server = receiver.serve("127.0.0.1:0".parse().unwrap()).await;
    let pipeline = Pipeline::start().await;
    let config = nozzle_config(&pipeline, &format!("http://{}", server.addr));
    let (nozzle, emitter) = flowing(&pipeline, config).await;

    const N: usize = 1_000;
    emit_logs(&emitter, 0..N);
    emit_metrics(&emitter);
    emitter.emit(&app_envelope(
        N,
        v2::envelope::Message::Event(v2::Event {
            title: "app.crash".to_owned(),
            body: "exited with status 1".to_owned(),
        }),
    ));
    emitter.flush();

    hydrant_testkit::wait_for(WAIT, "every app log, event and metric point", || async {
        app_records(&receiver).len() > N
            && point_count(&app_metrics(&receiver)) >= COUNTERS + 2 * GAUGES + TIMERS
    })
    .await;
    let text = wait_accounted(&nozzle).await;

    let records = app_records(&receiver);
    let (events, logs): (Vec<_>, Vec<_>) = records
        .into_iter()
        .partition(|(_, r)| !r.event_name.is_empty());
    check_logs_exactly_once(&logs, N);
    let [(_, event)] = &events[..] else {
        panic!("one event: {events:?}");
    };
    assert_eq!(event.event_name, "app.crash");
    assert_eq!(body(event), "exited with status 1");
    check_metrics(&app_metrics(&receiver));
    assert!(
        receiver.violations().is_empty(),
        "{:?}",
        receiver.violations()
    );

    let auth = receiver.authorization();
    assert!(
        auth.iter()
            .all(|a| a.as_deref() == Some("Bearer s3cret-token")),
        "every export carries the header: {auth:?}"
    );
    assert!(!text.contains("s3cret"), "a header value in /metrics");
    assert_eq!(scrape_metric(&text, "nozzle_dropped_total", ""), 0);
    assert_eq!(scrape_metric(&text, "nozzle_retries_total", ""), 0);
    assert_eq!(
        scrape_metric(
            &text,
            "nozzle_skipped_total",
            "reason=\"timer_not_exported\""
        ),
        5
    );
    assert!(
        text.contains("#logs") && text.contains("#metrics"),
        "{text}"
    );
    nozzle.stop().await;
}

/// Two copies of the nozzle on one subscription id: the edge splits the stream between them, so
/// each reads about half of one source's sequence numbers. Together they deliver every record
/// once, and neither counts the other's share as lost (the ledger balances with no drops).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_copies_on_one_subscription_split_the_stream_without_false_loss() {
    let receiver = Receiver::new();
    let (_server, pipeline, config) = logs_only(&receiver).await;
    let (a, b) = (
        start_nozzle(config.clone()).await,
        start_nozzle(config).await,
    );
    let emitter = pipeline.emitter();
    a.wait_until_flowing(&emitter, Probe::Log).await;
    b.wait_until_flowing(&emitter, Probe::Log).await;

    const N: usize = 2_000;
    emit_logs(&emitter, 0..N);
    hydrant_testkit::wait_for(
        WAIT,
        "every app log through one copy or the other",
        || async { app_records(&receiver).len() >= N },
    )
    .await;
    let (ta, tb) = (wait_accounted(&a).await, wait_accounted(&b).await);
    check_logs_exactly_once(&app_records(&receiver), N);
    for (copy, text) in [("a", &ta), ("b", &tb)] {
        assert!(
            scrape_metric(text, "nozzle_envelopes_total", "") > (N / 10) as u64,
            "copy {copy} read a share of the stream: {text}"
        );
        assert_eq!(
            scrape_metric(text, "nozzle_firehose_lost_total", ""),
            0,
            "copy {copy} counted the other copy's share as lost: {text}"
        );
        assert_eq!(scrape_metric(text, "nozzle_dropped_total", ""), 0, "{text}");
    }
    // The ledger: the app emitted N, the receiver holds each of the N once (checked above), and
    // no hop counted a drop, so emitted = delivered + drops with drops = 0.
    let sent = |t: &str| scrape_metric(t, "nozzle_sent_total", "");
    assert!(sent(&ta) + sent(&tb) >= N as u64, "{ta}\n{tb}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_is_retried_then_delivered() {
    let receiver = Receiver::new();
    receiver.script(&[Answer::Fail(Code::Unavailable); 2]);
    receiver.script(&[Answer::Fail(Code::ResourceExhausted)]);
    let (_server, pipeline, mut config) = logs_only(&receiver).await;
    config.retry.max_retries = 10;
    let (nozzle, emitter) = flowing(&pipeline, config).await;

    const N: usize = 300;
    emit_logs(&emitter, 0..N);
    hydrant_testkit::wait_for(WAIT, "every app log", || async {
        app_records(&receiver).len() >= N
    })
    .await;
    let text = wait_accounted(&nozzle).await;
    check_logs_exactly_once(&app_records(&receiver), N);
    assert!(
        scrape_metric(&text, "nozzle_retries_total", "") >= 3,
        "{text}"
    );
    assert_eq!(
        scrape_metric(&text, "nozzle_dropped_total", ""),
        0,
        "{text}"
    );
    nozzle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_argument_is_not_retried_and_is_counted() {
    let receiver = Receiver::new();
    receiver.logs_answer(Answer::Fail(Code::InvalidArgument));
    let (_server, pipeline, config) = logs_only(&receiver).await;
    let (nozzle, emitter) = flowing(&pipeline, config).await;

    emit_logs(&emitter, 0..200);
    hydrant_testkit::wait_for(WAIT, "the app's logs to be read", || async {
        scrape_metric(&scrape(nozzle.admin).await, "nozzle_envelopes_total", "") > 200
    })
    .await;
    let text = wait_accounted(&nozzle).await;
    let received = scrape_metric(&text, "nozzle_received_total", "");
    assert!(received > 200);
    assert_eq!(
        scrape_metric(&text, "nozzle_dropped_total", "reason=\"rejected\""),
        received,
        "every refused record counted: {text}"
    );
    assert_eq!(scrape_metric(&text, "nozzle_sent_total", ""), 0);
    assert_eq!(
        scrape_metric(&text, "nozzle_retries_total", ""),
        0,
        "never retried"
    );
    assert!(receiver.log_requests().is_empty());
    // One call per batch: far fewer calls than records, and none repeated.
    assert!(
        receiver.calls() <= received as usize / 2,
        "{} calls",
        receiver.calls()
    );
    nozzle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_success_rejections_are_counted_as_dropped() {
    let receiver = Receiver::new();
    receiver.logs_answer(Answer::Partial(1));
    let (_server, pipeline, config) = logs_only(&receiver).await;
    let (nozzle, emitter) = flowing(&pipeline, config).await;

    emit_logs(&emitter, 0..300);
    hydrant_testkit::wait_for(WAIT, "every app log", || async {
        app_records(&receiver).len() >= 300
    })
    .await;
    let text = wait_accounted(&nozzle).await;
    let calls = receiver.log_requests().len() as u64;
    assert_eq!(
        scrape_metric(&text, "nozzle_dropped_total", "reason=\"rejected\""),
        calls,
        "one refused record per export: {text}"
    );
    let records = record_count(&receiver);
    assert_eq!(
        scrape_metric(&text, "nozzle_sent_total", ""),
        records - calls
    );
    nozzle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_then_back_drains_the_backlog_and_counts_the_overflow() {
    let addr = hydrant_testkit::dead_addr();
    let receiver = Receiver::new();
    let pipeline = Pipeline::start().await;
    let mut config = nozzle_config(&pipeline, &format!("http://{addr}"));
    config.export_metrics = false;
    config.queue = QueueLimits {
        max_items: 150,
        batch_items: 50,
        ..QueueLimits::default()
    };
    // Enough retries to outlast the outage: the queue, not the retry budget, absorbs it.
    config.retry.max_retries = 1_000;
    // The receiver is down, so "flowing" means the nozzle read (and queued) the probe.
    let (nozzle, emitter) = flowing(&pipeline, config).await;

    const N: usize = 400;
    emit_logs(&emitter, 0..N);
    hydrant_testkit::wait_for(WAIT, "the backlog to overflow the queue", || async {
        let text = scrape(nozzle.admin).await;
        scrape_metric(&text, "nozzle_envelopes_total", "") > N as u64
            && scrape_metric(&text, "nozzle_dropped_total", "reason=\"queue_full\"") > 0
    })
    .await;
    assert_eq!(receiver.calls(), 0);

    let server = receiver.serve(addr).await;
    let text = wait_accounted(&nozzle).await;
    let received = scrape_metric(&text, "nozzle_received_total", "");
    let sent = scrape_metric(&text, "nozzle_sent_total", "");
    let full = scrape_metric(&text, "nozzle_dropped_total", "reason=\"queue_full\"");
    assert_eq!(received, sent + full, "only the queue dropped: {text}");
    assert!(sent >= 150, "the queued backlog was delivered: {text}");
    let delivered = record_count(&receiver);
    assert_eq!(
        delivered, sent,
        "what the receiver holds is what was counted sent"
    );
    // The newest records survive a drop-oldest queue: the last one emitted arrived, once.
    let last: Vec<_> = app_records(&receiver)
        .into_iter()
        .filter(|(_, r)| r.time_unix_nano as i64 == BASE_NS + N as i64 - 1)
        .collect();
    assert_eq!(last.len(), 1);
    assert!(
        receiver.violations().is_empty(),
        "{:?}",
        receiver.violations()
    );
    nozzle.stop().await;
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_refused_naming_the_field() {
    let text = "[firehose]\nurl = \"http://127.0.0.1:1\"\ntoken = \"t\"\n\
                [headers]\nauthorization = \"Bearer hunter2\"\n\
                [metrics]\nhistogram_bounds_seconds = [0.5, 0.1]\n";
    let mut config: hydrant_nozzle_otlp::Config = toml::from_str(text).unwrap();
    config.admin_listen = "127.0.0.1:0".to_owned();
    let err = refusal::<hydrant_nozzle_otlp::OtlpNozzle>(config).await;
    assert!(err.contains("metrics.histogram_bounds_seconds"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

/// A nozzle with `cursor_file`, killed (its task aborted: no shutdown, no last write) while the
/// receiver refuses every export, and started again once the receiver is back: every record
/// emitted before, during and after the outage arrives, because the stored cursor never moved
/// past records the receiver had not taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nozzle_resumes_from_its_cursor_and_loses_nothing() {
    let receiver = Receiver::new();
    let (_server, pipeline, mut config, dir, cursor) =
        logs_only_keeping_cursor(&receiver, "cursor").await;
    // The outage is outlasted by retries, so nothing is given up on while it lasts.
    config.retry.max_retries = 100_000;
    config.breaker.failure_threshold = 1_000_000;
    let (first, emitter) = flowing(&pipeline, config.clone()).await;

    const N: usize = 600;
    emit_logs(&emitter, 0..200);
    hydrant_testkit::wait_for(WAIT, "the first records delivered", || async {
        app_records(&receiver).len() >= 200
    })
    .await;
    hydrant_testkit::wait_for(WAIT, "a stored cursor", || async {
        std::fs::read_to_string(&cursor).is_ok_and(|t| t.starts_with("cursor "))
    })
    .await;

    receiver.logs_answer(Answer::Fail(Code::Unavailable));
    emit_logs(&emitter, 200..400);
    hydrant_testkit::wait_for(
        WAIT,
        "the nozzle to read the records it cannot export",
        || async { scrape_metric(&scrape(first.admin).await, "nozzle_received_total", "") >= 400 },
    )
    .await;
    first.task.abort();
    let _ = first.task.await;

    emit_logs(&emitter, 400..N);
    receiver.logs_answer(Answer::Ok);
    let second = start_nozzle(config).await;
    wait_for_records(&receiver, N, "every record, across the kill").await;
    let text = wait_accounted(&second).await;
    assert_eq!(
        scrape_metric(&text, "nozzle_dropped_total", ""),
        0,
        "{text}"
    );
    // What the first copy delivered after the stored cursor comes again, counted.
    let delivered = app_records(&receiver).len() as u64;
    let duplicates = scrape_metric(&text, "nozzle_duplicates_total", "");
    assert!(
        delivered - N as u64 <= 200,
        "at most the first copy's deliveries repeat: {delivered} for {N}"
    );
    assert!(
        duplicates <= delivered - N as u64,
        "duplicates counted {duplicates}, delivered twice {}",
        delivered - N as u64
    );
    second.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A nozzle with `cursor_file` restarted with a backlog far larger than its queue, against a
/// receiver that takes each export slowly: the reader reads the firehose only as fast as the
/// receiver takes what it is given (`Keeper::pace`), so the backlog waits in the doppler's ring,
/// not in the queue, and every record arrives with nothing evicted. Without pacing the reader
/// would push the whole replayed backlog into a 200-item queue at once and evict most of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_nozzle_catching_up_reads_only_as_fast_as_the_receiver_takes() {
    let receiver = Receiver::new();
    let (_server, pipeline, mut config, dir, cursor) =
        logs_only_keeping_cursor(&receiver, "paced").await;
    config.exports_in_flight = 1;
    config.queue = QueueLimits {
        max_items: 200,
        batch_items: 20,
        ..QueueLimits::default()
    };
    let (first, emitter) = flowing(&pipeline, config.clone()).await;
    hydrant_testkit::wait_for(WAIT, "a stored cursor", || async {
        std::fs::read_to_string(&cursor).is_ok_and(|t| t.starts_with("cursor "))
    })
    .await;
    first.task.abort();
    let _ = first.task.await;

    // Emitted while the nozzle is away: ten queues' worth, kept by the doppler's ring.
    const N: usize = 2_000;
    emit_logs(&emitter, 0..N);
    receiver.slow_down(Duration::from_millis(5));
    let second = start_nozzle(config).await;
    wait_for_records(&receiver, N, "every record of the backlog").await;
    let text = wait_accounted(&second).await;
    assert_eq!(
        scrape_metric(&text, "nozzle_dropped_total", ""),
        0,
        "the queue evicted while the ring held the backlog: {text}"
    );
    assert_eq!(
        scrape_metric(&text, "nozzle_firehose_lost_total", ""),
        0,
        "{text}"
    );
    second.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
