//! The syslog nozzle role end to end: a real pipeline in-process (agent → doppler → firehose
//! edge, as `hydrant up` wires it), logs emitted to the agent, the role reading the firehose,
//! and a real rsyslogd checking what arrives — all of it, in order, exactly once; and a dead
//! drain next to a healthy one losing only its own data, counted.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

#[path = "support/pipeline.rs"]
mod pipeline;
#[path = "support/rsyslog.rs"]
mod rsyslog;

use hydrant_emitter::Emitter;
use hydrant_nozzle_testkit::{Pipeline, metric, scrape};
use pipeline::{drains, emit_logs, eventually, flowing, nozzle_config};
use rsyslog::{Rsyslog, free_port, records_now, start_rsyslog};
use std::collections::HashMap;

const APP: &str = "app-under-test";

fn emit_app_logs(emitter: &Emitter, n: usize) {
    let tags = [
        ("source_type", "APP/PROC/WEB"),
        ("organization_name", "org"),
        ("space_name", "space"),
        ("app_name", "web"),
    ];
    emit_logs(emitter, APP, 0..n, &tags, |i| {
        (format!("message {i} {}", "x".repeat(i % 50)), i % 4 == 0)
    });
}

fn app_records(rsyslog: &Rsyslog) -> Vec<HashMap<String, String>> {
    records_now(&rsyslog.out)
        .into_iter()
        .filter(|r| r["app"] == APP)
        .collect()
}

async fn wait_for_app_records(rsyslog: &Rsyslog, n: usize) -> Vec<HashMap<String, String>> {
    eventually("rsyslog to write every app message", async || {
        app_records(rsyslog).len() >= n
    })
    .await;
    app_records(rsyslog)
}

fn check_in_order(records: &[HashMap<String, String>], n: usize) {
    assert_eq!(records.len(), n, "nothing lost, nothing duplicated");
    for (i, r) in records.iter().enumerate() {
        let payload = format!("message {i} {}", "x".repeat(i % 50));
        assert_eq!(r["msg"], format!("{payload}\n"), "message {i} in order");
        assert_eq!(r["pri"], if i % 4 == 0 { "11" } else { "14" }, "{r:?}");
        assert_eq!(r["host"], "org.space.web", "{r:?}");
        assert_eq!(r["procid"], "[APP/PROC/WEB/0]", "{r:?}");
        assert_eq!(r["msgid"], "-", "{r:?}");
        let sd = &r["sd"];
        assert!(
            sd.starts_with("[tags@47450 ") && sd.contains("app_name=\"web\""),
            "{sd}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_reaches_rsyslog_in_order_exactly_once() {
    let rsyslog = start_rsyslog();
    let pipeline = Pipeline::start().await;
    let drain = format!("syslog://user:secret@127.0.0.1:{}", rsyslog.port);
    let (nozzle, emitter) = flowing(&pipeline, nozzle_config(&pipeline, vec![drain])).await;

    const N: usize = 2_000;
    emit_app_logs(&emitter, N);
    let records = wait_for_app_records(&rsyslog, N).await;
    // Everything queued has been handed over before the file is read the final time, so a
    // duplicate would already be there.
    eventually("the queue to empty", async || {
        let text = scrape(nozzle.admin).await;
        let received = metric(&text, "nozzle_received_total", "");
        received > 0 && metric(&text, "nozzle_sent_total", "") == received
    })
    .await;
    check_in_order(&app_records(&rsyslog), N);
    assert_eq!(records.len(), N);

    let text = scrape(nozzle.admin).await;
    assert!(!text.contains("secret"), "credentials in /metrics: {text}");
    assert!(text.contains("user:****@127.0.0.1"), "{text}");
    assert_eq!(metric(&text, "nozzle_dropped_total", ""), 0);
    assert_eq!(metric(&text, "nozzle_firehose_connected", ""), 1);

    let report = &drains(nozzle.admin).await["drains[0]"];
    assert_eq!(report["state"], "ok", "{report}");
    assert_eq!(
        report["sent"],
        metric(&text, "nozzle_sent_total", ""),
        "{report}"
    );
    nozzle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_drain_loses_only_its_own_data_and_counts_it() {
    let rsyslog = start_rsyslog();
    let pipeline = Pipeline::start().await;
    let healthy = format!("syslog://127.0.0.1:{}", rsyslog.port);
    // Nothing listens there: every connect is refused.
    let dead_port = free_port();
    let dead = format!("syslog://ops:secret@127.0.0.1:{dead_port}");
    let (nozzle, emitter) = flowing(
        &pipeline,
        nozzle_config(&pipeline, vec![dead, healthy.clone()]),
    )
    .await;

    const N: usize = 1_000;
    emit_app_logs(&emitter, N);
    wait_for_app_records(&rsyslog, N).await;
    check_in_order(&app_records(&rsyslog), N);

    let dead_tag = format!("destination=\"syslog://ops:****@127.0.0.1:{dead_port}\"");
    let healthy_tag = format!("destination=\"{healthy}\"");
    eventually("the dead drain to account for everything", async || {
        let text = scrape(nozzle.admin).await;
        let received = metric(&text, "nozzle_received_total", &dead_tag);
        received >= N as u64 && metric(&text, "nozzle_dropped_total", &dead_tag) == received
    })
    .await;
    let text = scrape(nozzle.admin).await;
    assert!(!text.contains("secret"), "credentials in /metrics: {text}");
    assert_eq!(metric(&text, "nozzle_sent_total", &dead_tag), 0);
    assert_eq!(
        metric(&text, "nozzle_received_total", &dead_tag),
        metric(&text, "nozzle_received_total", &healthy_tag),
        "both drains were offered the same lines"
    );
    assert_eq!(metric(&text, "nozzle_dropped_total", &healthy_tag), 0);
    assert!(metric(&text, "nozzle_retries_total", &dead_tag) > 0);
    let report = drains(nozzle.admin).await;
    let dead = &report["drains[0]"];
    assert_eq!(
        dead["state"], "open",
        "the dead drain's breaker is open: {dead}"
    );
    let error = dead["last_error"].as_str().unwrap();
    assert!(
        error.contains("ops:****@") && !error.contains("secret"),
        "{error}"
    );
    assert_eq!(dead["sent"], 0);
    assert_eq!(report["drains[1]"]["state"], "ok");
    assert_eq!(report["drains[1]"]["dropped"], 0);
    nozzle.stop().await;
}
