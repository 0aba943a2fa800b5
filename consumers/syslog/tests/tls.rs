//! `syslog-tls://` against a real rsyslogd behind its gnutls driver, with certificates made
//! at test time: a verified certificate delivers every message; a certificate for another
//! name and one from an untrusted CA are refused with an error that says which, the loss is
//! counted, the drain's breaker opens, and the other drains of the same nozzle deliver
//! everything.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

#[path = "support/certs.rs"]
mod certs;
#[path = "support/pipeline.rs"]
mod pipeline;
#[path = "support/rsyslog.rs"]
mod rsyslog;

use std::collections::HashMap;

use certs::Ca;
use hydrant_emitter::Emitter;
use hydrant_nozzle_syslog::TlsConfig;
use hydrant_nozzle_syslog::rsyslogd::{FIELDS_TEMPLATE, Rsyslogd};
use hydrant_nozzle_testkit::{Pipeline, metric, scrape};
use pipeline::{drains, emit_logs, eventually, flowing, nozzle_config};
use rsyslog::{Rsyslog, records_now, start_rsyslog};

const APP: &str = "tls-app";

fn start_tls_rsyslog(files: &hydrant_nozzle_syslog::rsyslogd::TlsFiles) -> Rsyslog {
    Rsyslogd::start_tls(FIELDS_TEMPLATE, files)
        .unwrap_or_else(|e| panic!("{e} (./scripts/test installs rsyslog and rsyslog-gnutls)"))
}

fn emit(emitter: &Emitter, n: usize) {
    let tags = [("source_type", "APP/PROC/WEB"), ("app_name", "web")];
    emit_logs(emitter, APP, 0..n, &tags, |i| {
        (format!("tls message {i}"), false)
    });
}

fn app_messages(rsyslog: &Rsyslog) -> Vec<String> {
    records_now(&rsyslog.out)
        .into_iter()
        .filter(|r: &HashMap<String, String>| r["app"] == APP)
        .map(|r| r["msg"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_tls_delivers_and_bad_certificates_are_refused_without_hurting_others() {
    let trusted = Ca::new("hydrant test CA");
    let stranger = Ca::new("someone else's CA");
    // One receiver with a certificate for "localhost" from the trusted CA, one whose
    // certificate (also for localhost) comes from a CA the nozzle does not know, one plain.
    let good = start_tls_rsyslog(&trusted.server(&["localhost"]));
    let untrusted = start_tls_rsyslog(&stranger.server(&["localhost"]));
    let plain = start_rsyslog();

    let pipeline = Pipeline::start().await;
    let mut config = nozzle_config(
        &pipeline,
        vec![
            format!("syslog-tls://localhost:{}", good.port),
            // The same good receiver by IP: its certificate does not name 127.0.0.1.
            format!("syslog-tls://ops:secret@127.0.0.1:{}", good.port),
            format!("syslog-tls://localhost:{}", untrusted.port),
            format!("syslog://127.0.0.1:{}", plain.port),
        ],
    );
    config.tls = TlsConfig {
        ca_file: Some(trusted.pem.clone()),
        system_roots: false,
        insecure_skip_verify: false,
    };
    let (nozzle, emitter) = flowing(&pipeline, config).await;

    const N: usize = 500;
    emit(&emitter, N);
    let want: Vec<String> = (0..N).map(|i| format!("tls message {i}\n")).collect();
    eventually(
        "every message over verified TLS and plain TCP",
        async || app_messages(&good).len() >= N && app_messages(&plain).len() >= N,
    )
    .await;
    eventually(
        "the refused drains to account for every message",
        async || {
            let report = drains(nozzle.admin).await;
            ["drains[1]", "drains[2]"].iter().all(|k| {
                let d = &report[*k];
                d["dropped"].as_u64() >= Some(N as u64) && d["queue_depth"] == 0
            })
        },
    )
    .await;
    assert_eq!(
        app_messages(&good),
        want,
        "in order, exactly once, over TLS"
    );
    assert_eq!(app_messages(&plain), want);
    assert!(app_messages(&untrusted).is_empty());

    let report = drains(nozzle.admin).await;
    for key in ["drains[0]", "drains[3]"] {
        let d = &report[key];
        assert_eq!(d["state"], "ok", "{key}: {d}");
        assert_eq!(d["dropped"], 0, "{key}: {d}");
        assert!(d.get("last_error").is_none(), "{key}: {d}");
    }
    let wrong_name = &report["drains[1]"];
    assert_eq!(wrong_name["state"], "open", "{wrong_name}");
    assert_eq!(wrong_name["sent"], 0);
    let error = wrong_name["last_error"].as_str().unwrap();
    assert!(
        error.contains("not valid for \"127.0.0.1\"") && error.contains("ops:****@"),
        "{error}"
    );
    assert!(!error.contains("secret"), "{error}");
    let unknown_ca = &report["drains[2]"];
    assert_eq!(unknown_ca["state"], "open", "{unknown_ca}");
    assert_eq!(unknown_ca["sent"], 0);
    let error = unknown_ca["last_error"].as_str().unwrap();
    assert!(error.contains("not signed by a trusted CA"), "{error}");

    // The ledger: every refused message is counted, under a reason.
    let text = scrape(nozzle.admin).await;
    assert!(!text.contains("secret"), "{text}");
    for (key, tag) in [
        (
            "drains[1]",
            format!("syslog-tls://ops:****@127.0.0.1:{}", good.port),
        ),
        (
            "drains[2]",
            format!("syslog-tls://localhost:{}", untrusted.port),
        ),
    ] {
        let tag = format!("destination=\"{tag}\"");
        let received = metric(&text, "nozzle_received_total", &tag);
        assert_eq!(received, report[key]["dropped"].as_u64().unwrap(), "{key}");
        assert_eq!(
            metric(&text, "nozzle_dropped_total", &tag),
            received,
            "{key}"
        );
        assert!(
            metric(&text, "nozzle_retries_total", &tag) > 0,
            "{key} retried"
        );
    }
    nozzle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_accepts_what_verification_refuses() {
    let stranger = Ca::new("unknown CA");
    let receiver = start_tls_rsyslog(&stranger.server(&["elsewhere.example"]));
    let pipeline = Pipeline::start().await;
    let mut config = nozzle_config(
        &pipeline,
        vec![format!("syslog-tls://127.0.0.1:{}", receiver.port)],
    );
    config.tls = TlsConfig {
        ca_file: None,
        system_roots: false,
        insecure_skip_verify: true,
    };
    let (nozzle, emitter) = flowing(&pipeline, config).await;
    emit(&emitter, 50);
    eventually("delivery without verification", async || {
        app_messages(&receiver).len() >= 50
    })
    .await;
    nozzle.stop().await;
}
