//! The Datadog nozzle end to end: a real pipeline in-process (agent → doppler → firehose edge,
//! as `hydrant up` wires it), metrics emitted to the agent by a real emitter, the role reading
//! the firehose, and a strict fake Datadog (see `support/fake_datadog.rs`) checking every
//! request against the documented v2 contract.
//!
//! What a user relies on: counters arrive as deltas whose sum is what was emitted, gauges and
//! timers map as configured with the right names and tags, throttling and server errors are
//! retried until delivered, rejections are not retried and are counted, the ledger
//! `received = sent + Σ dropped` balances, and the API key shows up nowhere.

#![allow(clippy::unwrap_used, reason = "test code")]

#[path = "support/fake_datadog.rs"]
mod fake_datadog;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fake_datadog::{FakeDatadog, Reply};
use hydrant_emitter::Emitter;
use hydrant_nozzle_core::{Backoff, BreakerConfig, QueueLimits};
use hydrant_nozzle_datadog::{BatchConfig, Config, TimerMode};
use hydrant_nozzle_testkit::{Pipeline, Probe, metric_matching as metric, refusal, scrape};
use hydrant_testkit::wait_for;
use serde_json::Value;

const KEY: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
const SERIES: &str = "/api/v2/series";
const DISTRIBUTION: &str = "/api/v1/distribution_points";
const WITHIN: Duration = Duration::from_secs(40);

/// Every log line any test of this binary produced, to prove the key is never in one.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let buf = Arc::clone(&buf);
            move || LogWriter(Arc::clone(&buf))
        };
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_ansi(false)
            .with_writer(writer)
            .init();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The Datadog role on a task.
type Nozzle = hydrant_nozzle_testkit::Nozzle<hydrant_nozzle_datadog::Error>;

fn base_config(pipeline: &Pipeline, api_url: String) -> Config {
    Config {
        firehose: pipeline.firehose_client(),
        api_url,
        tags: vec!["env:test".to_owned()],
        batch: BatchConfig {
            flush_interval_ms: 1_000,
            ..BatchConfig::default()
        },
        retry: Backoff {
            initial_ms: 20,
            max_ms: 100,
            jitter: 0.0,
            max_retries: 5,
        },
        max_retry_after_ms: 300,
        breaker: BreakerConfig {
            failure_threshold: 50,
            open_ms: 100,
        },
        request_timeout_ms: 2_000,
        shutdown_drain_ms: 3_000,
        admin_listen: "127.0.0.1:0".to_owned(),
        ..Config::default()
    }
}

/// Starts the role through `run`, reading the key from a file as an operator would; the file
/// lives as long as the returned handle on it.
async fn start_nozzle(mut config: Config) -> (Nozzle, tempfile::NamedTempFile) {
    captured_logs();
    let mut key_file = tempfile::NamedTempFile::new().unwrap();
    writeln!(key_file, "{KEY}").unwrap();
    config.api_key_file = Some(key_file.path().to_owned());
    let nozzle = Nozzle::start::<hydrant_nozzle_datadog::DatadogNozzle>(config).await;
    (nozzle, key_file)
}

/// Starts the role (as [`start_nozzle`] does) and waits until app counters flow through it.
async fn flowing(
    pipeline: &Pipeline,
    config: Config,
) -> (Nozzle, tempfile::NamedTempFile, Emitter) {
    let (nozzle, key_file) = start_nozzle(config).await;
    let emitter = pipeline.emitter();
    nozzle.wait_until_flowing(&emitter, Probe::Counter).await;
    (nozzle, key_file, emitter)
}

fn destination(fake_url: &str, path: &str) -> String {
    format!("destination=\"{fake_url}{path}\"")
}

/// `received = sent + Σ dropped` for one endpoint, and nothing in flight.
async fn wait_for_ledger(nozzle: &Nozzle, dest: &str) -> (u64, u64, u64) {
    wait_for(WITHIN, "the ledger to balance", || async {
        let text = scrape(nozzle.admin).await;
        let received = metric(&text, "nozzle_received_total", &[dest]);
        let sent = metric(&text, "nozzle_sent_total", &[dest]);
        let dropped = metric(&text, "nozzle_dropped_total", &[dest]);
        (received > 0 && received == sent + dropped).then_some((received, sent, dropped))
    })
    .await
}

fn has_tag(series: &Value, tag: &str) -> bool {
    series["tags"]
        .as_array()
        .is_some_and(|t| t.iter().any(|x| x == tag))
}

/// The summed point values of accepted series named `metric` carrying `tag`.
fn sum_of(series: &[Value], metric: &str, tag: &str) -> f64 {
    series
        .iter()
        .filter(|s| s["metric"] == metric && has_tag(s, tag))
        .flat_map(|s| s["points"].as_array().unwrap().clone())
        .map(|p| p["value"].as_f64().unwrap())
        .sum()
}

const APPS: [&str; 2] = ["app-a", "app-b"];

/// Emits `n` `requests` counter increments (delta `i % 5 + 1`) per app; returns the total per
/// app.
/// The router's `http` timer for a request that started at `start` and took `ms` milliseconds.
fn router_request(emitter: &Emitter, start: i64, ms: i64, tags: &[(&str, &str)]) {
    emitter.timer("router", "0", "http", start, start + ms * 1_000_000, tags);
}

fn emit_counters(emitter: &Emitter, n: u64) -> u64 {
    let mut total = 0;
    for i in 0..n {
        for app in APPS {
            emitter.counter(
                app,
                "0",
                "requests",
                i % 5 + 1,
                &[("app_name", app), ("job", "executor")],
            );
        }
        total += i % 5 + 1;
    }
    emitter.flush();
    total
}

fn assert_no_key_anywhere(text: &str) {
    assert!(!text.contains(KEY), "the API key leaked: {text}");
    let logs = captured_logs();
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(!logs.contains(KEY), "the API key is in the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_gauges_and_timers_arrive_as_datadog_series() {
    let pipeline = Pipeline::start().await;
    let fake = FakeDatadog::start(KEY).await;
    let (nozzle, _key_file, emitter) = flowing(&pipeline, base_config(&pipeline, fake.url())).await;

    let total = emit_counters(&emitter, 1_000);
    let start = hydrant_envelope::now_nanos();
    for i in 0..300i64 {
        router_request(&emitter, start, i + 1, &[("status_code", "200")]);
        emitter.gauge(
            "app-a",
            "1",
            &[
                ("cpu", i as f64 / 300.0, "percentage"),
                ("memory", 1e6 + i as f64, "bytes"),
            ],
            &[("app_name", "app-a")],
        );
    }
    emitter.flush();

    let series = wait_for(
        WITHIN,
        "every counter, timer and gauge in Datadog",
        || async {
            let s = fake.accepted(SERIES);
            let done = APPS.iter().all(|app| {
                sum_of(&s, "hydrant.requests", &format!("source_id:{app}")) == total as f64
            }) && sum_of(&s, "hydrant.http.count", "source_id:router") == 300.0
                && s.iter()
                    .rev()
                    .find(|x| x["metric"] == "hydrant.memory")
                    .is_some_and(|x| x["points"][0]["value"] == 1e6 + 299.0);
            done.then_some(s)
        },
    )
    .await;
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());

    let counter = series
        .iter()
        .find(|s| s["metric"] == "hydrant.requests" && has_tag(s, "source_id:app-a"))
        .unwrap();
    assert_eq!(counter["type"], 1, "count");
    assert_eq!(counter["interval"], 1);
    for tag in [
        "app_name:app-a",
        "job:executor",
        "source_id:app-a",
        "instance_id:0",
        "origin:app-a",
        "deployment:hydrant",
        "env:test",
    ] {
        assert!(has_tag(counter, tag), "{tag} missing: {counter}");
    }
    let cpu = series
        .iter()
        .rev()
        .find(|s| s["metric"] == "hydrant.cpu")
        .unwrap();
    assert_eq!(cpu["type"], 3, "gauge");
    assert_eq!(cpu["unit"], "percent");
    // serde_json's default float parser may be one ulp off; the sender writes the shortest
    // round-trip form.
    let v = cpu["points"][0]["value"].as_f64().unwrap();
    assert!((v - 299.0 / 300.0).abs() < 1e-15, "{v}");
    assert!(has_tag(cpu, "instance_id:1"));
    let max = series
        .iter()
        .filter(|s| s["metric"] == "hydrant.http.max")
        .map(|s| s["points"][0]["value"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(max, 300.0, "durations in milliseconds");
    let p50 = series
        .iter()
        .find(|s| s["metric"] == "hydrant.http.p50")
        .unwrap();
    assert_eq!(
        (p50["type"].as_u64(), p50["unit"].as_str()),
        (Some(3), Some("millisecond"))
    );

    let dest = destination(&fake.url(), SERIES);
    let (received, sent, dropped) = wait_for_ledger(&nozzle, &dest).await;
    assert_eq!(dropped, 0, "nothing lost");
    assert_eq!(sent, received);
    // 2 apps × 1000 counters + 300 timers + 2 × 300 gauge values, plus the probes.
    assert!(received >= 2_000 + 300 + 600, "{received}");
    let text = scrape(nozzle.admin).await;
    assert_no_key_anywhere(&text);
    nozzle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_as_distributions_reach_the_distribution_points_api() {
    let pipeline = Pipeline::start().await;
    let fake = FakeDatadog::start(KEY).await;
    let config = Config {
        timers: TimerMode::Distribution,
        ..base_config(&pipeline, fake.url())
    };
    let (nozzle, _key_file, emitter) = flowing(&pipeline, config).await;

    let start = hydrant_envelope::now_nanos();
    for i in 0..200i64 {
        router_request(&emitter, start, i + 1, &[]);
    }
    emitter.flush();
    let values = wait_for(WITHIN, "200 durations as distribution points", || async {
        let values: Vec<f64> = fake
            .accepted(DISTRIBUTION)
            .iter()
            .filter(|s| s["metric"] == "hydrant.http" && has_tag(s, "source_id:router"))
            .flat_map(|s| s["points"].as_array().unwrap().clone())
            .flat_map(|p| p[1].as_array().unwrap().clone())
            .map(|v| v.as_f64().unwrap())
            .collect();
        (values.len() >= 200).then_some(values)
    })
    .await;
    let mut values = values;
    values.sort_by(f64::total_cmp);
    let expected: Vec<f64> = (1..=200).map(f64::from).collect();
    assert_eq!(values, expected, "every duration once, in milliseconds");
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
    assert!(
        fake.accepted(SERIES)
            .iter()
            .all(|s| s["metric"] != "hydrant.http.count"),
        "no derived gauges in distribution mode"
    );
    let (_, _, dropped) = wait_for_ledger(&nozzle, &destination(&fake.url(), DISTRIBUTION)).await;
    assert_eq!(dropped, 0);
    nozzle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_server_errors_are_retried_until_delivered() {
    let pipeline = Pipeline::start().await;
    let fake = FakeDatadog::start(KEY).await;
    let (nozzle, _key_file, emitter) = flowing(&pipeline, base_config(&pipeline, fake.url())).await;

    fake.script([
        Reply::throttled("0.2"),
        Reply::status(500),
        Reply::status(503),
        Reply::status(408),
    ]);
    let total = emit_counters(&emitter, 500);
    wait_for(
        WITHIN,
        "every counter delivered despite the errors",
        || async {
            let s = fake.accepted(SERIES);
            APPS.iter().all(|app| {
                sum_of(&s, "hydrant.requests", &format!("source_id:{app}")) == total as f64
            })
        },
    )
    .await;
    let statuses: Vec<u16> = fake.seen().iter().map(|s| s.status).collect();
    for s in [429, 500, 503, 408] {
        assert!(statuses.contains(&s), "{s} was answered: {statuses:?}");
    }
    // The throttled request waited at least what Retry-After asked before its next attempt
    // (the backoff alone would have been 20 ms).
    let seen = fake.seen();
    let throttled = seen.iter().position(|s| s.status == 429).unwrap();
    let waited = seen[throttled + 1].at - seen[throttled].at;
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    let dest = destination(&fake.url(), SERIES);
    let (_, _, dropped) = wait_for_ledger(&nozzle, &dest).await;
    assert_eq!(dropped, 0, "retried, not dropped");
    let text = scrape(nozzle.admin).await;
    assert!(
        metric(&text, "nozzle_retries_total", &[&dest]) >= 4,
        "{text}"
    );
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
    nozzle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_requests_are_not_retried_and_are_counted() {
    let pipeline = Pipeline::start().await;
    let fake = FakeDatadog::start(KEY).await;
    let (nozzle, _key_file, emitter) = flowing(&pipeline, base_config(&pipeline, fake.url())).await;

    let before = fake.seen().len();
    fake.script([Reply::status(400), Reply::status(403), Reply::status(413)]);
    // Spread over several intervals so the rejected requests carry app data.
    let mut total = 0;
    for _ in 0..6 {
        total += emit_counters(&emitter, 50);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let dest = destination(&fake.url(), SERIES);
    wait_for(WITHIN, "the rejections to be counted", || async {
        let text = scrape(nozzle.admin).await;
        ["rejected_400", "rejected_403", "rejected_413"]
            .iter()
            .all(|r| {
                metric(
                    &text,
                    "nozzle_dropped_total",
                    &[&dest, &format!("reason=\"{r}\"")],
                ) > 0
            })
    })
    .await;
    let (received, sent, dropped) = wait_for_ledger(&nozzle, &dest).await;
    assert_eq!(received, sent + dropped);
    let text = scrape(nozzle.admin).await;
    assert_eq!(
        metric(&text, "nozzle_retries_total", &[&dest]),
        0,
        "4xx are never retried"
    );

    // Data side: what was accepted plus what was in the three rejected bodies is everything
    // emitted, and no rejected body was sent a second time.
    let seen = fake.seen();
    let seen = &seen[before..];
    let rejected: Vec<&Value> = seen
        .iter()
        .filter(|s| [400, 403, 413].contains(&s.status))
        .map(|s| s.body.as_ref().unwrap())
        .collect();
    assert_eq!(rejected.len(), 3, "each rejected request was sent once");
    let rejected_series: Vec<Value> = rejected
        .iter()
        .flat_map(|b| b["series"].as_array().unwrap().clone())
        .collect();
    let accepted = fake.accepted(SERIES);
    for app in APPS {
        let tag = format!("source_id:{app}");
        let delivered = sum_of(&accepted, "hydrant.requests", &tag);
        let lost = sum_of(&rejected_series, "hydrant.requests", &tag);
        assert_eq!(
            delivered + lost,
            total as f64,
            "{app}: {delivered} + {lost}"
        );
    }
    for body in &rejected {
        let n = seen
            .iter()
            .filter(|s| s.body.as_ref() == Some(*body))
            .count();
        assert_eq!(n, 1, "a rejected body was retried");
    }
    assert_no_key_anywhere(&text);
    let logs = captured_logs();
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logs.contains("Datadog refused the API key"),
        "the 403 is reported"
    );
    nozzle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_datadog_costs_only_counted_data() {
    let pipeline = Pipeline::start().await;
    let dead = format!("http://{}", hydrant_testkit::dead_addr());
    let mut config = base_config(&pipeline, dead.clone());
    config.retry.max_retries = 2;
    config.breaker = BreakerConfig {
        failure_threshold: 2,
        open_ms: 200,
    };
    let (nozzle, _key_file, emitter) = flowing(&pipeline, config).await;
    emit_counters(&emitter, 300);
    let dest = destination(&dead, SERIES);
    let (received, sent, dropped) = wait_for_ledger(&nozzle, &dest).await;
    assert_eq!(sent, 0);
    assert_eq!(dropped, received);
    assert!(received >= 600, "{received}");
    let text = scrape(nozzle.admin).await;
    assert!(
        metric(
            &text,
            "nozzle_dropped_total",
            &[&dest, "reason=\"retries_exhausted\""]
        ) > 0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "nozzle_firehose_connected", &[]),
        1,
        "the firehose is unaffected"
    );
    nozzle.stop().await;
}

#[tokio::test]
async fn a_missing_key_stops_the_role_naming_the_field() {
    let config = Config {
        api_key_env: "HYDRANT_DATADOG_TEST_UNSET_KEY".to_owned(),
        admin_listen: "127.0.0.1:0".to_owned(),
        firehose: hydrant_firehose_client::ClientConfig {
            token: "t".to_owned(),
            ..hydrant_firehose_client::ClientConfig::default()
        },
        ..Config::default()
    };
    let e = refusal::<hydrant_nozzle_datadog::DatadogNozzle>(config).await;
    assert!(
        e.contains("api_key_env") && e.contains("HYDRANT_DATADOG_TEST_UNSET_KEY"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_reach_the_logs_intake_when_enabled() {
    let pipeline = Pipeline::start().await;
    let fake = FakeDatadog::start(KEY).await;
    let mut config = base_config(&pipeline, fake.url());
    config.logs.enabled = true;
    config.logs.url = fake.url();
    let (nozzle, _key_file, emitter) = flowing(&pipeline, config).await;
    for i in 0..100 {
        emitter.log_with_tags(
            "app-a",
            "0",
            format!("line {i} \u{1b}[31m\"quoted\"").as_bytes(),
            i == 7,
            &[("source_type", "APP/PROC/WEB"), ("app_name", "web")],
        );
    }
    emitter.flush();
    let entries = wait_for(WITHIN, "100 logs in the intake", || async {
        let e: Vec<Value> = fake
            .accepted("/api/v2/logs")
            .into_iter()
            .filter(|e| e["service"] == "web")
            .collect();
        (e.len() >= 100).then_some(e)
    })
    .await;
    assert_eq!(entries.len(), 100, "nothing duplicated");
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["message"], format!("line {i} \u{1b}[31m\"quoted\""));
        assert_eq!(e["ddsource"], "hydrant");
        assert_eq!(e["status"], if i == 7 { "error" } else { "info" });
        let tags = e["ddtags"].as_str().unwrap();
        assert!(
            tags.contains("source_id:app-a") && tags.contains("env:test"),
            "{tags}"
        );
    }
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
    let (_, _, dropped) = wait_for_ledger(&nozzle, &destination(&fake.url(), "/api/v2/logs")).await;
    assert_eq!(dropped, 0);
    nozzle.stop().await;
}

/// A nozzle with `cursor_file`, killed (its task aborted: no shutdown, no last write) while
/// Datadog answers 503 to everything, and started again against a Datadog that works: every
/// counter increment emitted before, during and after the outage is counted at Datadog at
/// least once, because the stored cursor never moved past an interval whose request had not
/// been taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nozzle_resumes_from_its_cursor_and_loses_no_count() {
    let dir = tempfile::tempdir().unwrap();
    let cursor = dir.path().join("cursor");
    let pipeline = Pipeline::start().await;
    let broken = FakeDatadog::start(KEY).await;
    let mut config = base_config(&pipeline, broken.url());
    config.cursor_file = Some(cursor.display().to_string());
    // The outage is outlasted by retries, so nothing is given up on while it lasts.
    config.retry.max_retries = 1_000_000;
    config.breaker.failure_threshold = 1_000_000;
    let (first, _key_file, emitter) = flowing(&pipeline, config.clone()).await;

    let before = emit_counters(&emitter, 100);
    wait_for(WITHIN, "the first counts at Datadog", || async {
        let s = broken.accepted(SERIES);
        APPS.iter()
            .all(|app| sum_of(&s, "hydrant.requests", &format!("source_id:{app}")) >= before as f64)
    })
    .await;
    wait_for(WITHIN, "a stored cursor", || async {
        std::fs::read_to_string(&cursor).is_ok_and(|t| t.starts_with("cursor "))
    })
    .await;

    broken.script(std::iter::repeat_n(Reply::status(503), 1_000_000));
    let during = emit_counters(&emitter, 200);
    let answered = broken.seen().len();
    wait_for(
        WITHIN,
        "the outage's interval to be flushed and refused",
        || async { broken.seen()[answered..].iter().any(|s| s.status == 503) },
    )
    .await;
    first.task.abort();
    let _ = first.task.await;
    let after = emit_counters(&emitter, 50);

    let working = FakeDatadog::start(KEY).await;
    config.api_url = working.url();
    let (second, _key_file) = start_nozzle(config).await;
    let total = (before + during + after) as f64;
    wait_for(WITHIN, "every count, across the kill", || async {
        let (old, new) = (broken.accepted(SERIES), working.accepted(SERIES));
        APPS.iter().all(|app| {
            let tag = format!("source_id:{app}");
            sum_of(&old, "hydrant.requests", &tag) + sum_of(&new, "hydrant.requests", &tag) >= total
        })
    })
    .await;
    let dest = destination(&working.url(), SERIES);
    let (_, _, dropped) = wait_for_ledger(&second, &dest).await;
    assert_eq!(dropped, 0);
    assert!(
        working.violations().is_empty(),
        "{:#?}",
        working.violations()
    );
    second.stop().await;
}

/// A nozzle with `cursor_file` and logs on, restarted with a log backlog far larger than its
/// logs queue against an intake that answers each request slowly: the reader reads the
/// firehose only as fast as the intake takes the logs (`Keeper::pace`), so the backlog waits in
/// the doppler's ring, not in the queue, and every line arrives with nothing evicted, while the
/// metrics intervals go on being flushed. Without pacing the replayed backlog would be pushed
/// into a 200-entry queue at once and mostly evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_nozzle_catching_up_reads_logs_only_as_fast_as_the_intake_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    let cursor = dir.path().join("cursor");
    let pipeline = Pipeline::start().await;
    let fake = FakeDatadog::start(KEY).await;
    let mut config = base_config(&pipeline, fake.url());
    config.cursor_file = Some(cursor.display().to_string());
    config.logs.enabled = true;
    config.logs.url = fake.url();
    config.logs.queue = QueueLimits {
        max_items: 200,
        batch_items: 20,
        ..config.logs.queue.clone()
    };
    let (first, _key_file, emitter) = flowing(&pipeline, config.clone()).await;
    wait_for(WITHIN, "a stored cursor", || async {
        std::fs::read_to_string(&cursor).is_ok_and(|t| t.starts_with("cursor "))
    })
    .await;
    first.task.abort();
    let _ = first.task.await;

    // Emitted while the nozzle is away: ten queues' worth, kept by the doppler's ring.
    const N: usize = 2_000;
    for i in 0..N {
        emitter.log_with_tags(
            "app-paced",
            "0",
            format!("paced {i}").as_bytes(),
            false,
            &[("app_name", "paced")],
        );
    }
    emitter.flush();
    fake.slow_down(Duration::from_millis(5));
    let (second, _key_file) = start_nozzle(config).await;
    let lines = wait_for(WITHIN, "every line of the backlog", || async {
        let mut lines: Vec<String> = fake
            .accepted("/api/v2/logs")
            .into_iter()
            .filter(|e| e["service"] == "paced")
            .filter_map(|e| e["message"].as_str().map(str::to_owned))
            .collect();
        lines.sort_unstable();
        lines.dedup();
        (lines.len() >= N).then_some(lines)
    })
    .await;
    assert_eq!(lines.len(), N);
    let dest = destination(&fake.url(), "/api/v2/logs");
    let (_, _, dropped) = wait_for_ledger(&second, &dest).await;
    assert_eq!(
        dropped, 0,
        "the logs queue evicted while the ring held the backlog"
    );
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
    second.stop().await;
}
