//! `https://` drains through the real pipeline into a local HTTPS server (rustls, certificate
//! made at test time) that records every request: bodies are the batch's RFC 5424 messages,
//! one per line, without octet counts; credentials go as basic auth; 5xx and 429 are retried
//! until the batch gets through exactly once; a 400 is not retried, and its loss is counted.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

#[path = "support/certs.rs"]
mod certs;
#[path = "support/https_receiver.rs"]
mod https_receiver;
#[path = "support/pipeline.rs"]
mod pipeline;

use certs::Ca;
use https_receiver::HttpsReceiver;
use hydrant_emitter::Emitter;
use hydrant_nozzle_core::{Backoff, BreakerConfig};
use hydrant_nozzle_syslog::TlsConfig;
use hydrant_nozzle_testkit::{Pipeline, metric, scrape};
use pipeline::{drains, emit_logs, eventually, flowing, nozzle_config};

const APP: &str = "https-app";

fn emit(emitter: &Emitter, n: usize) {
    let tags = [("source_type", "APP/PROC/WEB"), ("app_name", "web")];
    emit_logs(emitter, APP, 0..n, &tags, |i| {
        (format!("https message {i}"), i % 3 == 0)
    });
}

fn app_lines(receiver: &HttpsReceiver, path: &str) -> Vec<String> {
    receiver
        .delivered_lines(path)
        .into_iter()
        .filter(|l| l.contains(&format!(" {APP} ")))
        .collect()
}

/// The message part of each line (after the structured data).
fn payloads(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l.rsplit_once("] ").unwrap().1.to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_drains_get_line_batches_retry_5xx_and_429_and_never_retry_a_400() {
    let ca = Ca::new("https test CA");
    let receiver = HttpsReceiver::start(&ca.server(&["localhost"])).await;
    let port = receiver.addr.port();
    let pipeline = Pipeline::start().await;
    let mut config = nozzle_config(
        &pipeline,
        vec![
            format!("https://user:pw@localhost:{port}/ok?token=abc"),
            format!("https://localhost:{port}/flaky"),
            format!("https://localhost:{port}/reject"),
        ],
    );
    config.tls = TlsConfig {
        ca_file: Some(ca.pem.clone()),
        system_roots: false,
        insecure_skip_verify: false,
    };
    config.retry = Backoff {
        initial_ms: 10,
        max_ms: 50,
        jitter: 0.0,
        max_retries: 6,
    };
    config.breaker = BreakerConfig {
        failure_threshold: 10,
        open_ms: 100,
    };
    receiver.always("/reject", 400);
    let (nozzle, emitter) = flowing(&pipeline, config).await;
    // Let the probes settle so the scripted answers meet the test's own batches.
    eventually("the probes to be delivered or refused", async || {
        drains(nozzle.admin).await.values().all(|d| {
            d["queue_depth"] == 0
                && d["received"].as_u64()
                    == Some(d["sent"].as_u64().unwrap() + d["dropped"].as_u64().unwrap())
        })
    })
    .await;
    let before_reject = receiver
        .seen()
        .iter()
        .filter(|s| s.path == "/reject")
        .count();
    receiver.script("/flaky", &[503, 500, 429]);

    const N: usize = 400;
    emit(&emitter, N);
    let want: Vec<String> = (0..N).map(|i| format!("https message {i}\n")).collect();
    eventually("every message on /ok and /flaky", async || {
        app_lines(&receiver, "/ok").len() >= N && app_lines(&receiver, "/flaky").len() >= N
    })
    .await;
    eventually("the rejected drain to account for everything", async || {
        let d = &drains(nozzle.admin).await["drains[2]"];
        d["queue_depth"] == 0 && d["received"] == d["dropped"]
    })
    .await;

    // Exactly once, in order, on both the healthy and the flaky drain.
    assert_eq!(payloads(&app_lines(&receiver, "/ok")), want);
    assert_eq!(payloads(&app_lines(&receiver, "/flaky")), want);
    let seen = receiver.seen();
    for s in &seen {
        assert_eq!(s.headers["content-type"], "text/plain", "{s:?}");
        assert_eq!(s.headers["host"], format!("localhost:{port}"));
        let body = std::str::from_utf8(&s.body).unwrap();
        assert!(body.ends_with('\n'), "{body:?}");
        for line in body.split_inclusive('\n') {
            assert!(
                line.starts_with("<14>1 ") || line.starts_with("<11>1 "),
                "one RFC 5424 message per line, no octet count: {line:?}"
            );
        }
        if s.path == "/ok" {
            // base64("user:pw")
            assert_eq!(s.headers["authorization"], "Basic dXNlcjpwdw==");
        } else {
            assert!(!s.headers.contains_key("authorization"));
        }
    }
    let flaky: Vec<u16> = seen
        .iter()
        .filter(|s| s.path == "/flaky")
        .map(|s| s.status)
        .collect();
    assert!(
        flaky.windows(4).any(|w| w == [503, 500, 429, 200]),
        "retried through 503, 500 and 429: {flaky:?}"
    );
    let err_lines = app_lines(&receiver, "/ok")
        .iter()
        .filter(|l| l.starts_with("<11>1 "))
        .count();
    assert_eq!(err_lines, N.div_ceil(3), "ERR lines carry PRI 11");

    let text = scrape(nozzle.admin).await;
    assert!(!text.contains("pw@") && !text.contains("abc"), "{text}");
    let ok_tag = format!("destination=\"https://user:****@localhost:{port}/ok?token=****\"");
    let flaky_tag = format!("destination=\"https://localhost:{port}/flaky\"");
    let reject_tag = format!("destination=\"https://localhost:{port}/reject\"");
    assert_eq!(metric(&text, "nozzle_dropped_total", &ok_tag), 0);
    assert_eq!(metric(&text, "nozzle_dropped_total", &flaky_tag), 0);
    assert_eq!(metric(&text, "nozzle_retries_total", &flaky_tag), 3);
    // A 400 is final: one request per batch, no retry, every message counted as rejected.
    assert_eq!(metric(&text, "nozzle_retries_total", &reject_tag), 0);
    let rejected_requests = seen.iter().filter(|s| s.path == "/reject").count() - before_reject;
    assert!(rejected_requests >= 1);
    let received = metric(&text, "nozzle_received_total", &reject_tag);
    assert_eq!(
        metric(
            &text,
            "nozzle_dropped_total",
            &format!("{reject_tag},reason=\"rejected\"")
        ),
        received
    );
    let report = drains(nozzle.admin).await;
    let rejected = &report["drains[2]"];
    assert!(
        rejected["last_error"]
            .as_str()
            .unwrap()
            .contains("HTTP 400"),
        "{rejected}"
    );
    assert_eq!(report["drains[0]"]["state"], "ok");
    assert_eq!(report["drains[1]"]["state"], "ok");
    nozzle.stop().await;
}
