//! End to end against a real rsyslog: envelopes → encoder → queue → TCP sender → rsyslogd
//! (imtcp, octet-counted framing) → a file we parse and check message by message.
//!
//! rsyslogd is started by `support/rsyslog.rs`.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

#[path = "support/rsyslog.rs"]
mod rsyslog;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hydrant_emitter::Registry;
use hydrant_envelope::v2;
use hydrant_envelope::wire::{EnvelopeView, encode as encode_envelope};
use hydrant_nozzle_core::{
    Backoff, BreakerConfig, CircuitBreaker, DestinationQueue, NozzleMetrics, QueueLimits,
};
use hydrant_nozzle_syslog::{DrainData, EncoderOptions, TcpSender, encode, encode_messages};
use rsyslog::{read_records, start_rsyslog};
use tokio_util::sync::CancellationToken;

fn log_envelope(i: usize, payload: Vec<u8>, err: bool) -> v2::Envelope {
    v2::Envelope {
        timestamp: 1_700_000_000_000_000_000 + i as i64 * 1_001_000,
        source_id: format!("app-{}", i % 7),
        instance_id: (i % 3).to_string(),
        tags: [
            ("source_type", "APP/PROC/WEB"),
            ("organization_name", "demo org"),
            ("space_name", "dev"),
            ("app_name", "web_app"),
            ("seq", &i.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        message: Some(v2::envelope::Message::Log(v2::Log {
            payload: payload.into(),
            r#type: i32::from(err),
        })),
        ..v2::Envelope::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_receives_every_message_intact_exactly_once() {
    let rsyslog = start_rsyslog();
    let url = format!("syslog://user:secret@127.0.0.1:{}", rsyslog.port);
    let registry = Registry::new("nozzle-syslog", "0");
    let metrics = NozzleMetrics::new(&registry, &url);
    let queue = Arc::new(DestinationQueue::new(
        QueueLimits::default(),
        metrics.clone(),
    ));
    let sender = TcpSender::new(
        format!("127.0.0.1:{}", rsyslog.port),
        &url,
        Duration::from_secs(10),
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(hydrant_nozzle_syslog::run_sender(
        Arc::clone(&queue),
        sender,
        Backoff::default(),
        CircuitBreaker::new(BreakerConfig::default()),
        metrics.clone(),
        shutdown.clone(),
    ));

    let mut envelopes: Vec<v2::Envelope> = (0..3_000)
        .map(|i| {
            let payload = format!("line {i} {}", "x".repeat(i % 300)).into_bytes();
            log_envelope(i, payload, i % 5 == 0)
        })
        .collect();
    // One payload with a newline and a fake syslog header inside: must stay one message.
    envelopes.push(log_envelope(
        3_000,
        b"first half\n<11>1 2020-01-01T00:00:00+00:00 evil evil [X/0] - - injected\nend".to_vec(),
        false,
    ));
    let opts = EncoderOptions {
        hostname: "fallback".to_owned(),
        metadata: true,
        drain_data: DrainData::All,
    };
    let mut expected: Vec<(Vec<u8>, v2::Envelope)> = Vec::new();
    for e in &envelopes {
        let bytes = encode_envelope(e);
        let view = EnvelopeView::parse(&bytes).unwrap();
        for m in encode_messages(&view, &opts) {
            expected.push((m, e.clone()));
        }
        let mut framed = Vec::new();
        encode(&view, &opts, &mut framed);
        let len = framed.len();
        metrics.received(1);
        assert_eq!(queue.push(Bytes::from(framed), len), 0);
    }
    queue.close();
    task.await.unwrap();
    assert_eq!(metrics.dropped_total(), 0);

    let records = read_records(&rsyslog.out, expected.len());
    assert_eq!(
        records.len(),
        expected.len(),
        "nothing lost, nothing duplicated"
    );
    let mut by_raw: HashMap<Vec<u8>, &v2::Envelope> = HashMap::new();
    for (m, e) in &expected {
        assert!(
            by_raw.insert(m.clone(), e).is_none(),
            "test messages are unique"
        );
    }
    for r in &records {
        let raw = r["raw"].as_bytes();
        let e = by_raw
            .remove(raw)
            .unwrap_or_else(|| panic!("unexpected or duplicated message: {}", r["raw"]));
        let Some(v2::envelope::Message::Log(log)) = &e.message else {
            panic!("only logs were sent");
        };
        // rsyslog's own parse of every header field against the envelope.
        assert_eq!(r["pri"], if log.r#type == 1 { "11" } else { "14" });
        assert_eq!(r["host"], "demo-org.dev.webapp");
        assert_eq!(r["app"], e.source_id);
        assert_eq!(r["procid"], format!("[APP/PROC/WEB/{}]", e.instance_id));
        assert_eq!(r["msgid"], "-");
        let mut tags: Vec<_> = e.tags.iter().collect();
        tags.sort();
        let sd: Vec<String> = tags.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        assert_eq!(r["sd"], format!("[tags@47450 {}]", sd.join(" ")));
        let payload = String::from_utf8(log.payload.to_vec()).unwrap();
        assert_eq!(
            r["msg"],
            format!("{payload}\n"),
            "payload intact, one message"
        );
        // The timestamp, from the raw line: UTC, microseconds trimmed, +00:00.
        let ts = r["raw"].split(' ').nth(1).unwrap();
        let micros = (e.timestamp % 1_000_000_000) / 1_000;
        let frac = format!("{micros:06}");
        let frac = frac.trim_end_matches('0');
        let want = if frac.is_empty() {
            "+00:00".to_owned()
        } else {
            format!(".{frac}+00:00")
        };
        assert!(ts.starts_with("2023-11-1") && ts.ends_with(&want), "{ts}");
    }
    assert!(by_raw.is_empty(), "{} messages never arrived", by_raw.len());
    let rendered = registry.render_prometheus();
    assert!(!rendered.contains("secret"));
    assert_eq!(
        registry.counter_sum("nozzle.sent", &[]),
        envelopes.len() as u64
    );
}
