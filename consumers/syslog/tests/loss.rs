//! In-band loss notices end to end: a drain that loses an app's messages makes the nozzle
//! write, into that app's own stream (read here from the firehose edge's
//! `/apps/{id}/stream`), `[LGR/LGR] ERR N messages lost for application … in syslog drain …
//! with url …` — periodically, with the exact count since the last notice, the URL masked —
//! and the healthy drain beside it carries those lines too.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

#[path = "support/pipeline.rs"]
mod pipeline;
#[path = "support/rsyslog.rs"]
mod rsyslog;

use std::sync::{Arc, Mutex};

use hydrant_firehose_client::{ClientConfig, FirehoseClient, StreamEvent, Subscription};
use hydrant_nozzle_testkit::Pipeline;
use pipeline::{WEB, drains, emit_logs, eventually, flowing, nozzle_config};
use rsyslog::{free_port, records_now, start_rsyslog};

const APP: &str = "lossy-app";

/// One log line of the app's stream.
#[derive(Debug, Clone)]
struct Line {
    payload: String,
    source_type: String,
    instance_id: String,
    is_err: bool,
}

/// Follows `/apps/APP/stream` and keeps every log line; the flag turns on once connected.
fn follow_app(pipeline: &Pipeline) -> (Arc<Mutex<Vec<Line>>>, Arc<Mutex<bool>>) {
    let config = ClientConfig {
        url: pipeline.firehose.clone(),
        token: pipeline.token.clone(),
        ..ClientConfig::default()
    };
    let mut client = FirehoseClient::connect(
        config,
        Subscription::App {
            source_id: APP.to_owned(),
        },
    )
    .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let connected = Arc::new(Mutex::new(false));
    let (l, c) = (Arc::clone(&lines), Arc::clone(&connected));
    let stop = pipeline.shutdown.clone();
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return,
                e = client.next() => e,
            };
            match event {
                Some(StreamEvent::Connected) => *c.lock().unwrap() = true,
                Some(StreamEvent::Batch(batch)) => {
                    for view in batch.iter() {
                        let Some((payload, is_err)) = view.log() else {
                            continue;
                        };
                        l.lock().unwrap().push(Line {
                            payload: String::from_utf8_lossy(payload).into_owned(),
                            source_type: view.tag("source_type").unwrap_or("").to_owned(),
                            instance_id: view.instance_id.to_owned(),
                            is_err,
                        });
                    }
                }
                Some(StreamEvent::Fatal(e)) => panic!("app stream: {e}"),
                Some(_) => {}
                None => return,
            }
        }
    });
    (lines, connected)
}

fn lost_count(notice: &str) -> u64 {
    notice.split(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_losing_drain_tells_the_app_in_its_own_stream_with_exact_counts() {
    let healthy = start_rsyslog();
    let pipeline = Pipeline::start().await;
    let (lines, connected) = follow_app(&pipeline);
    let dead_port = free_port();
    let dead = format!("syslog://ops:secret@127.0.0.1:{dead_port}");
    let mut config = nozzle_config(
        &pipeline,
        vec![dead, format!("syslog://127.0.0.1:{}", healthy.port)],
    );
    config.telemetry.agent = Some(pipeline.agent.clone());
    config.loss_notice_interval_ms = 1_000;
    let (nozzle, emitter) = flowing(&pipeline, config).await;
    eventually("the app stream to open", async || {
        *connected.lock().unwrap()
    })
    .await;

    // Markers until the app stream shows one: from then on nothing the app emits is missed.
    let mut emitted = 0u64;
    let app_lines = |lines: &Arc<Mutex<Vec<Line>>>, prefix: &str| {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.payload.starts_with(prefix))
            .cloned()
            .collect::<Vec<_>>()
    };
    eventually("the app's own line in its stream", async || {
        emitter.log(APP, "0", "APP/PROC/WEB", b"marker", false);
        emitter.flush();
        emitted += 1;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        !app_lines(&lines, "marker").is_empty()
    })
    .await;
    const N: u64 = 700;
    emit_logs(&emitter, APP, 0..N as usize, WEB, |i| {
        (format!("line {i}"), false)
    });
    emitted += N;

    // Each notice is itself an app line the dead drain loses, so notice k also counts the
    // (k-1) notices before it: the first notices whose sum reaches the app's own lines must
    // sum to exactly emitted + (k - 1).
    let notice_text = "messages lost for application";
    eventually("notices covering every lost line", async || {
        let notices = app_lines(&lines, "");
        let notices: Vec<u64> = notices
            .iter()
            .filter(|l| l.payload.contains(notice_text))
            .map(|l| lost_count(&l.payload))
            .collect();
        let mut sum = 0;
        for (k, n) in notices.iter().enumerate() {
            sum += n;
            if sum >= emitted + k as u64 {
                assert_eq!(
                    sum,
                    emitted + k as u64,
                    "notices {notices:?}, emitted {emitted}"
                );
                return true;
            }
        }
        false
    })
    .await;

    let notices: Vec<Line> = app_lines(&lines, "")
        .into_iter()
        .filter(|l| l.payload.contains(notice_text))
        .collect();
    for n in &notices {
        assert_eq!(n.source_type, "LGR", "{n:?}");
        assert_eq!(n.instance_id, "LGR", "{n:?}");
        assert!(n.is_err, "an ERR line: {n:?}");
        assert!(
            n.payload.ends_with(&format!(
                "messages lost for application {APP} in syslog drain drains[0] with url \
                 syslog://ops:****@127.0.0.1:{dead_port}"
            )),
            "{n:?}"
        );
        assert!(!n.payload.contains("secret"));
    }
    // Not one per message: the burst of N lines was told in at most a couple of notices.
    assert!(notices.len() <= 4, "{notices:?}");

    // The healthy drain lost nothing, so it is never named, and it carries the notices.
    assert!(notices.iter().all(|n| !n.payload.contains("drains[1]")));
    let report = drains(nozzle.admin).await;
    assert_eq!(report["drains[1]"]["dropped"], 0);
    eventually("the notice to reach the healthy drain", async || {
        records_now(&healthy.out).iter().any(|r| {
            r["app"] == APP && r["procid"] == "[LGR/LGR]" && r["msg"].contains(notice_text)
        })
    })
    .await;
    nozzle.stop().await;
}
