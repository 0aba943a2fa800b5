//! Faults, through the real pipeline, each checking the drain's ledger (`received = sent +
//! dropped + queued + in flight`, and what the receiver wrote equals `sent`) and that the other
//! drains lose nothing: a drain down for a while and back, a drain that accepts but never
//! reads, malformed URLs (in the config and in a binding), and a thousand app drains bound at
//! once. Bad TLS certificates are in `tls.rs`.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

#[path = "support/fake_api.rs"]
mod fake_api;
#[path = "support/pipeline.rs"]
mod pipeline;
#[path = "support/rsyslog.rs"]
mod rsyslog;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use fake_api::{ADMIN_TOKEN, FakeApi, target};
use hydrant_emitter::Emitter;
use hydrant_nozzle_core::{Backoff, BreakerConfig, QueueLimits};
use hydrant_nozzle_syslog::PlatformConfig;
use hydrant_nozzle_syslog::rsyslogd::{FIELDS_TEMPLATE, Rsyslogd};
use hydrant_nozzle_testkit::{Pipeline, metric, refusal, scrape};
use hydrant_runtime::Validate as _;
use pipeline::{WEB, drains, emit_logs, eventually, flowing, nozzle_config};
use rsyslog::{Rsyslog, records_now, start_rsyslog};
use serde_json::Value;

const APP: &str = "fault-app";

fn emit(emitter: &Emitter, app: &str, tag: &str, range: std::ops::Range<usize>, pad: usize) {
    emit_logs(emitter, app, range, WEB, |i| {
        (format!("{tag} {i} {}", "x".repeat(pad)), false)
    });
}

/// Drains bound in the fake platform `api`, polled every 100 ms and reported every
/// `status_interval_ms`; private addresses allowed, since the test receivers are on loopback.
fn from_api(api: &FakeApi, status_interval_ms: u64) -> PlatformConfig {
    PlatformConfig {
        api: hydrant_runtime::ApiSettings::with_token(&api.url, ADMIN_TOKEN),
        poll_interval_ms: 100,
        status_interval_ms,
        allow_private: true,
        ..PlatformConfig::default()
    }
}

/// The `(tag, index)` of every line of `app` in `records`.
fn lines_of(records: &[HashMap<String, String>], app: &str) -> Vec<(String, usize)> {
    records
        .iter()
        .filter(|r| r["app"] == app)
        .map(|r| {
            let mut words = r["msg"].split(' ');
            let tag = words.next().unwrap().to_owned();
            (tag, words.next().unwrap().trim().parse().unwrap())
        })
        .collect()
}

/// Emits `range` in steps of 100, each once `healthy` has written the step before: the
/// queue limits of a test are tight, and a burst must not overflow the healthy drain.
async fn emit_paced(
    emitter: &Emitter,
    tag: &str,
    range: std::ops::Range<usize>,
    pad: usize,
    healthy: &Rsyslog,
) {
    let before = lines_of(&records_now(&healthy.out), APP).len();
    let start = range.start;
    let mut i = range.start;
    while i < range.end {
        let end = (i + 100).min(range.end);
        emit(emitter, APP, tag, i..end, pad);
        eventually("the healthy drain to keep up", async || {
            lines_of(&records_now(&healthy.out), APP).len() == before + end - start
        })
        .await;
        i = end;
    }
}

fn n(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {v}"))
}

/// The ledger of one drain's report, and no batch in hand.
fn settled(d: &Value) -> bool {
    n(d, "in_flight") == 0
        && n(d, "queue_depth") == 0
        && n(d, "received") == n(d, "sent") + n(d, "dropped")
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_down_then_back_retries_delivers_and_loses_only_its_queue_overflow() {
    let healthy = start_rsyslog();
    let flappy = start_rsyslog();
    let port = flappy.port;
    let pipeline = Pipeline::start().await;
    let mut config = nozzle_config(
        &pipeline,
        vec![
            format!("syslog://127.0.0.1:{port}"),
            format!("syslog://127.0.0.1:{}", healthy.port),
        ],
    );
    config.queue = QueueLimits {
        max_items: 200,
        batch_items: 50,
        ..QueueLimits::default()
    };
    // Keep retrying a batch for as long as the drain is away; the queue absorbs the rest.
    config.retry = Backoff {
        initial_ms: 10,
        max_ms: 50,
        jitter: 0.0,
        max_retries: 1_000_000,
    };
    config.breaker = BreakerConfig {
        failure_threshold: 3,
        open_ms: 100,
    };
    let (nozzle, emitter) = flowing(&pipeline, config).await;

    const BEFORE: usize = 100;
    const DURING: usize = 1_000;
    const AFTER: usize = 100;
    emit(&emitter, APP, "before", 0..BEFORE, 0);
    eventually("the first lines on both drains", async || {
        lines_of(&records_now(&flappy.out), APP).len() == BEFORE
            && lines_of(&records_now(&healthy.out), APP).len() == BEFORE
    })
    .await;
    eventually("the flappy drain to settle", async || {
        settled(&drains(nozzle.admin).await["drains[0]"])
    })
    .await;
    // The drain goes away with everything it was sent already written.
    let mut written = records_now(&flappy.out);
    drop(flappy);

    emit_paced(&emitter, "during", 0..DURING, 0, &healthy).await;
    eventually(
        "the flappy drain's queue to fill and overflow",
        async || {
            let d = &drains(nozzle.admin).await["drains[0]"];
            n(d, "queue_depth") == 200 && n(d, "dropped") > 0 && d["state"] != "ok"
        },
    )
    .await;
    let report = &drains(nozzle.admin).await["drains[0]"];
    assert!(
        report["last_error"].as_str().unwrap().contains("refused"),
        "{report}"
    );

    let back = Rsyslogd::start_on(FIELDS_TEMPLATE, port).unwrap();
    eventually("the backlog to drain into the returned drain", async || {
        settled(&drains(nozzle.admin).await["drains[0]"])
    })
    .await;
    emit(&emitter, APP, "after", 0..AFTER, 0);
    let total = BEFORE + DURING + AFTER;
    eventually(
        "every line on the healthy drain, the new ones on the returned",
        async || {
            lines_of(&records_now(&healthy.out), APP).len() == total
                && lines_of(&records_now(&back.out), APP)
                    .iter()
                    .filter(|(t, _)| t == "after")
                    .count()
                    == AFTER
        },
    )
    .await;
    eventually("the flappy drain to settle again", async || {
        settled(&drains(nozzle.admin).await["drains[0]"])
    })
    .await;

    // The healthy drain: everything, in order, nothing lost.
    let want: Vec<(String, usize)> = [("before", BEFORE), ("during", DURING), ("after", AFTER)]
        .iter()
        .flat_map(|(t, n)| (0..*n).map(|i| ((*t).to_owned(), i)))
        .collect();
    assert_eq!(lines_of(&records_now(&healthy.out), APP), want);
    let report = drains(nozzle.admin).await;
    assert_eq!(n(&report["drains[1]"], "dropped"), 0);

    // The returned drain: what it wrote is exactly what the nozzle says it sent, nothing twice,
    // and what is missing is exactly the counted overflow — the oldest lines of the outage.
    written.extend(records_now(&back.out));
    let flappy = &report["drains[0]"];
    assert_eq!(written.len() as u64, n(flappy, "sent"), "{flappy}");
    let got = lines_of(&written, APP);
    let unique: HashSet<_> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "no line twice");
    let during: Vec<usize> = got
        .iter()
        .filter(|(t, _)| t == "during")
        .map(|(_, i)| *i)
        .collect();
    assert!(during.windows(2).all(|w| w[0] < w[1]), "in order");
    assert_eq!(
        during.last(),
        Some(&(DURING - 1)),
        "the newest lines survive"
    );
    let dropped = n(flappy, "dropped");
    assert_eq!(
        (DURING - during.len()) as u64,
        dropped,
        "only the overflow is lost"
    );
    assert_eq!(got.len(), total - dropped as usize);
    let text = scrape(nozzle.admin).await;
    let tag = format!("destination=\"syslog://127.0.0.1:{port}\"");
    assert_eq!(
        metric(
            &text,
            "nozzle_dropped_total",
            &format!("{tag},reason=\"queue_full\"")
        ),
        dropped,
        "every loss was a queue overflow"
    );
    assert!(metric(&text, "nozzle_retries_total", &tag) > 0);
    nozzle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_accepts_but_never_reads_times_out_stays_bounded_and_spares_the_others() {
    let healthy = start_rsyslog();
    // Accepts one connection and never reads from it, nor accepts again (a hung server):
    // a small receive buffer and a backlog of one, so the kernel cannot hide the problem by
    // taking megabytes, or new connections, on the drain's behalf.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let stuck = socket.listen(1).unwrap();
    let stuck_port = stuck.local_addr().unwrap().port();
    let hung = tokio::spawn(async move {
        let held = stuck.accept().await;
        std::future::pending::<()>().await;
        drop((held, stuck));
    });
    let pipeline = Pipeline::start().await;
    let mut config = nozzle_config(
        &pipeline,
        vec![
            format!("syslog://127.0.0.1:{stuck_port}"),
            format!("syslog://127.0.0.1:{}", healthy.port),
        ],
    );
    config.write_timeout_ms = 300;
    config.queue = QueueLimits {
        max_items: 1_000,
        max_bytes: 1024 * 1024,
        ..QueueLimits::default()
    };
    let (nozzle, emitter) = flowing(&pipeline, config).await;

    // 2 KiB lines, 20 MB in all: more than the kernel buffers of a connection nobody reads.
    // Sent in steps the healthy drain keeps up with, so only the stuck one overflows.
    const N: usize = 10_000;
    emit_paced(&emitter, "big", 0..N, 2_000, &healthy).await;

    let ledger = |d: &Value| {
        n(d, "received") == n(d, "sent") + n(d, "dropped") + n(d, "queue_depth") + n(d, "in_flight")
    };
    eventually("the stuck drain to account for every line", async || {
        let report = drains(nozzle.admin).await;
        let d = &report["drains[0]"];
        n(d, "received") > N as u64 && ledger(d) && n(d, "dropped") > 0
    })
    .await;
    let report = drains(nozzle.admin).await;
    let d = &report["drains[0]"];
    assert!(
        d["last_error"]
            .as_str()
            .unwrap()
            .contains("no progress within 300 ms"),
        "{d}"
    );
    eprintln!("the stuck drain: {d}");
    assert_eq!(d["state"], "open", "{d}");
    assert!(n(d, "queue_depth") <= 1_000, "{d}");
    let text = scrape(nozzle.admin).await;
    let tag = format!("destination=\"syslog://127.0.0.1:{stuck_port}\"");
    assert!(metric(&text, "nozzle_queue_bytes", &tag) <= 1024 * 1024);
    assert_eq!(n(&report["drains[1]"], "dropped"), 0);
    assert_eq!(
        lines_of(&records_now(&healthy.out), APP),
        (0..N).map(|i| ("big".to_owned(), i)).collect::<Vec<_>>()
    );
    nozzle.stop().await;
    hung.abort();
}

#[tokio::test]
async fn malformed_drain_urls_are_refused_by_validate_naming_the_field() {
    let base = |drains: Vec<String>| {
        let mut c = hydrant_nozzle_syslog::Config {
            drains,
            admin_listen: "127.0.0.1:0".to_owned(),
            ..hydrant_nozzle_syslog::Config::default()
        };
        c.firehose.token = "t".to_owned();
        c
    };
    for bad in [
        "syslog://u:secret@host-without-port",
        "syslog:/u:secret@one-slash:514",
        "udp://u:secret@h:514",
        "syslog://u:secret@h:99999",
        "https://u:secret@h:443/?drain-data=everything",
        "syslog-tls://u:secret@[::1:6514",
    ] {
        let config = base(vec!["syslog://127.0.0.1:514".to_owned(), bad.to_owned()]);
        let e = config.validate().unwrap_err().to_string();
        assert!(e.contains("drains[1]"), "{bad}: {e}");
        assert!(!e.contains("secret") && e.contains("u:****@"), "{bad}: {e}");
        // The role refuses it the same way, before reading anything.
        let e = refusal::<hydrant_nozzle_syslog::SyslogNozzle>(config).await;
        assert!(e.contains("drains[1]"), "{bad}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_binding_is_reported_and_the_others_still_deliver() {
    let receiver = start_rsyslog();
    let api = FakeApi::start().await;
    api.set_targets(vec![
        target("bad", "app-a", "syslog://u:secret@no-port-here"),
        target(
            "good",
            "app-a",
            &format!("syslog://127.0.0.1:{}", receiver.port),
        ),
    ]);
    let pipeline = Pipeline::start().await;
    let mut config = nozzle_config(&pipeline, Vec::new());
    config.platform = Some(from_api(&api, 100));
    let (nozzle, emitter) = flowing(&pipeline, config).await;
    eventually("the good binding to start", async || {
        drains(nozzle.admin).await.contains_key("good")
    })
    .await;
    emit(&emitter, "app-a", "line", 0..100, 0);
    eventually("the good drain's lines", async || {
        lines_of(&records_now(&receiver.out), "app-a").len() == 100
    })
    .await;
    eventually("the bad binding's status", async || {
        api.latest("bad").is_some()
    })
    .await;
    let bad = api.latest("bad").unwrap();
    let error = bad.last_error.unwrap();
    assert!(
        error.contains("drain bad") && error.contains("has no port"),
        "{error}"
    );
    assert!(!error.contains("secret"), "{error}");
    assert!(!drains(nozzle.admin).await.contains_key("bad"));
    nozzle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_app_drains_bound_at_once_cost_bounded_memory_and_spare_the_firehose() {
    const DRAINS: usize = 1_000;
    const PER_APP: usize = 3;
    let receiver: Rsyslog = start_rsyslog();
    let everything = start_rsyslog();
    let api = FakeApi::start().await;
    let pipeline = Pipeline::start().await;
    // One configured drain takes every envelope beside the thousand app drains.
    let mut config = nozzle_config(
        &pipeline,
        vec![format!("syslog://127.0.0.1:{}", everything.port)],
    );
    config.platform = Some(from_api(&api, 500));
    let (nozzle, emitter) = flowing(&pipeline, config).await;

    let rss_before = rss_kib();
    let bound_at = Instant::now();
    api.set_targets(
        (0..DRAINS)
            .map(|i| {
                target(
                    &format!("d{i}"),
                    &format!("app-{i}"),
                    &format!("syslog://127.0.0.1:{}", receiver.port),
                )
            })
            .collect(),
    );
    eventually("a thousand drains to start", async || {
        drains(nozzle.admin).await.len() == DRAINS + 1
    })
    .await;
    let bind_time = bound_at.elapsed();

    for i in 0..DRAINS {
        emit(
            &emitter,
            &format!("app-{i}"),
            &format!("app{i}"),
            0..PER_APP,
            0,
        );
    }
    eventually("every app's lines in its own drain", async || {
        records_now(&receiver.out).len() >= DRAINS * PER_APP
    })
    .await;
    let delivered_at = bound_at.elapsed();
    eventually("the aggregate drain to have everything", async || {
        records_now(&everything.out)
            .iter()
            .filter(|r| r["app"].starts_with("app-"))
            .count()
            == DRAINS * PER_APP
    })
    .await;
    let records = records_now(&receiver.out);
    assert_eq!(records.len(), DRAINS * PER_APP, "nothing twice");
    let mut per_app: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in &records {
        per_app
            .entry(r["app"].as_str())
            .or_default()
            .push(r["msg"].as_str());
    }
    for i in 0..DRAINS {
        let want: Vec<String> = (0..PER_APP).map(|k| format!("app{i} {k} \n")).collect();
        assert_eq!(per_app[format!("app-{i}").as_str()], want, "app-{i}");
    }
    eventually("every app drain settled", async || {
        drains(nozzle.admin).await.values().all(settled)
    })
    .await;
    let report = drains(nozzle.admin).await;
    let (sent, dropped): (u64, u64) = report
        .iter()
        .filter(|(k, _)| k.starts_with('d') && !k.starts_with("drains"))
        .fold((0, 0), |(s, d), (_, v)| {
            (s + n(v, "sent"), d + n(v, "dropped"))
        });
    assert_eq!((sent, dropped), ((DRAINS * PER_APP) as u64, 0));
    eventually("a status report with every binding", async || {
        api.last_report().is_some_and(|r| r.len() == DRAINS)
    })
    .await;

    let text = scrape(nozzle.admin).await;
    assert_eq!(
        metric(&text, "nozzle_firehose_lost_total", ""),
        0,
        "the firehose kept up"
    );
    assert_eq!(metric(&text, "nozzle_app_drains", ""), DRAINS as u64);
    let grown_kib = rss_kib().saturating_sub(rss_before);
    eprintln!(
        "{DRAINS} drains: all running {:?} after binding, all lines delivered after {:?}, \
         RSS +{} MiB",
        bind_time,
        delivered_at,
        grown_kib / 1024
    );
    assert!(
        grown_kib < 200 * 1024,
        "RSS grew {grown_kib} KiB for {DRAINS} drains"
    );
    nozzle.stop().await;
}
