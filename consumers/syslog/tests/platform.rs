//! Platform mode against a fake cloud controller (axum on loopback, the two admin endpoints of
//! `hydrant-api`'s drain contract) and real rsyslogds: bindings start and stop live, each app
//! drain gets only its own app's envelopes, an unbound drain's queue is counted as
//! `unbound`, statuses reach the API with counts, state and masked errors, drains keep running
//! while the API is down, and private addresses are refused unless the operator allows them.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

#[path = "support/fake_api.rs"]
mod fake_api;
#[path = "support/pipeline.rs"]
mod pipeline;
#[path = "support/rsyslog.rs"]
mod rsyslog;

use std::collections::HashMap;

use fake_api::{ADMIN_TOKEN, FakeApi, target};
use hydrant_api::DrainState;
use hydrant_emitter::Emitter;
use hydrant_nozzle_core::BreakerConfig;
use hydrant_nozzle_syslog::{Config, PlatformConfig};
use hydrant_nozzle_testkit::{Pipeline, metric, scrape};
use pipeline::{WEB, drains, emit_logs, eventually, flowing, nozzle_config};
use rsyslog::{Rsyslog, free_port, records_now, start_rsyslog};

/// A platform-mode config; the token file is removed when the returned handle drops.
fn platform_config(
    pipeline: &Pipeline,
    api: &FakeApi,
    allow_private: bool,
) -> (Config, tempfile::NamedTempFile) {
    let mut config = nozzle_config(pipeline, Vec::new());
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), format!("{ADMIN_TOKEN}\n")).unwrap();
    config.platform = Some(PlatformConfig {
        api: hydrant_runtime::ApiSettings {
            api_url: api.url.clone(),
            token_file: Some(token_file.path().to_owned()),
            ..hydrant_runtime::ApiSettings::default()
        },
        poll_interval_ms: 100,
        status_interval_ms: 100,
        allow_private,
        ..PlatformConfig::default()
    });
    // A drain that fails holds its batch for a minute: its queue stays put for the test to
    // see where it goes.
    config.breaker = BreakerConfig {
        failure_threshold: 1,
        open_ms: 60_000,
    };
    (config, token_file)
}

fn emit(emitter: &Emitter, app: &str, n: usize, tag: &str) {
    emit_logs(emitter, app, 0..n, WEB, |i| (format!("{tag} {i}"), false));
}

fn by_app(rsyslog: &Rsyslog) -> HashMap<String, Vec<HashMap<String, String>>> {
    let mut out: HashMap<String, Vec<_>> = HashMap::new();
    for r in records_now(&rsyslog.out) {
        out.entry(r["app"].clone()).or_default().push(r);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_drains_follow_bindings_get_only_their_app_and_report_status() {
    let a = start_rsyslog();
    let b = start_rsyslog();
    let dead_port = free_port();
    let api = FakeApi::start().await;
    api.set_targets(vec![
        target("b1", "app-one", &format!("syslog://127.0.0.1:{}", a.port)),
        target(
            "b2",
            "app-two",
            &format!("syslog://u:secret@127.0.0.1:{dead_port}"),
        ),
    ]);
    let pipeline = Pipeline::start().await;
    let (config, _token) = platform_config(&pipeline, &api, true);
    let (nozzle, emitter) = flowing(&pipeline, config).await;
    eventually("both bindings to start", async || {
        let d = drains(nozzle.admin).await;
        d.contains_key("b1") && d.contains_key("b2")
    })
    .await;

    const N: usize = 300;
    emit(&emitter, "app-one", N, "one");
    emit(&emitter, "app-two", N, "two");
    emit(&emitter, "app-three", N, "three");
    eventually("app-one's lines in its drain", async || {
        by_app(&a).get("app-one").map_or(0, Vec::len) >= N
    })
    .await;
    eventually(
        "app-two's drain to hold or have lost every line",
        async || drains(nozzle.admin).await["b2"]["received"] == N,
    )
    .await;
    let got = by_app(&a);
    assert_eq!(
        got.len(),
        1,
        "only app-one reaches its drain: {:?}",
        got.keys()
    );
    let lines = &got["app-one"];
    assert_eq!(lines.len(), N);
    for (i, r) in lines.iter().enumerate() {
        assert_eq!(r["msg"], format!("one {i}\n"));
        // No org/space/app tags on these envelopes: HOSTNAME is the binding's space.app.
        assert_eq!(r["host"], "dev-space.app-one-name", "{r:?}");
    }

    eventually("statuses for both bindings", async || {
        let (Some(one), Some(two)) = (api.latest("b1"), api.latest("b2")) else {
            return false;
        };
        one.sent == N as u64 && two.state == DrainState::Open
    })
    .await;
    let one = api.latest("b1").unwrap();
    assert_eq!((one.dropped, one.queue_depth), (0, 0), "{one:?}");
    assert_eq!(one.state, DrainState::Ok);
    assert!(one.last_success_unix_ms.is_some() && one.last_error.is_none());
    let two = api.latest("b2").unwrap();
    assert_eq!(two.sent, 0);
    let error = two.last_error.unwrap();
    assert!(
        error.contains("u:****@127.0.0.1") && !error.contains("secret"),
        "{error}"
    );

    // The cloud controller goes away: the drains keep what they were given.
    api.set_down(true);
    let reads = api.target_reads();
    eventually("a failed poll", async || {
        metric(
            &scrape(nozzle.admin).await,
            "nozzle_platform_polls_failed_total",
            "",
        ) > 0
    })
    .await;
    emit(&emitter, "app-one", N, "outage");
    eventually("app-one's lines during the outage", async || {
        by_app(&a).get("app-one").map_or(0, Vec::len) >= 2 * N
    })
    .await;
    assert_eq!(api.target_reads(), reads, "the API stayed down meanwhile");
    assert!(
        drains(nozzle.admin).await.contains_key("b2"),
        "nothing unbound"
    );
    api.set_down(false);

    // Unbind b2 while its lines wait behind an open breaker: they are counted as unbound.
    // Bind b3 for app-three: only what app-three logs from now on reaches it.
    api.set_targets(vec![
        target("b1", "app-one", &format!("syslog://127.0.0.1:{}", a.port)),
        target("b3", "app-three", &format!("syslog://127.0.0.1:{}", b.port)),
    ]);
    eventually("b2 to stop and b3 to start", async || {
        let d = drains(nozzle.admin).await;
        !d.contains_key("b2") && d.contains_key("b3")
    })
    .await;
    let text = scrape(nozzle.admin).await;
    assert_eq!(
        metric(
            &text,
            "nozzle_dropped_total",
            "destination=\"app-drains\",reason=\"unbound\""
        ),
        N as u64,
        "every line b2 held is counted as unbound"
    );
    assert_eq!(
        metric(&text, "nozzle_dropped_total", "destination=\"app-drains\""),
        N as u64,
        "and nothing else was lost"
    );
    assert!(!text.contains("secret"));
    emit(&emitter, "app-two", N, "after unbind");
    emit(&emitter, "app-three", N, "bound");
    eventually("app-three's new lines in b3", async || {
        by_app(&b).get("app-three").map_or(0, Vec::len) >= N
    })
    .await;
    let got = by_app(&b);
    assert_eq!(got.len(), 1, "{:?}", got.keys());
    let three: Vec<&str> = got["app-three"].iter().map(|r| r["msg"].as_str()).collect();
    let want: Vec<String> = (0..N).map(|i| format!("bound {i}\n")).collect();
    assert_eq!(three, want, "only what was logged after binding");
    eventually("reports without b2", async || {
        api.last_report()
            .is_some_and(|r| r.iter().all(|s| s.guid != "b2") && r.iter().any(|s| s.guid == "b3"))
    })
    .await;
    assert_eq!(
        by_app(&a).get("app-one").map_or(0, Vec::len),
        2 * N,
        "nothing else reached b1"
    );
    nozzle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_addresses_are_refused_unless_the_operator_allows_them() {
    let receiver = start_rsyslog();
    let api = FakeApi::start().await;
    api.set_targets(vec![
        target(
            "ip",
            "app-a",
            &format!("syslog://127.0.0.1:{}", receiver.port),
        ),
        target(
            "name",
            "app-a",
            &format!("syslog://localhost:{}", receiver.port),
        ),
    ]);
    let pipeline = Pipeline::start().await;
    let (mut config, _token) = platform_config(&pipeline, &api, false);
    // Refused drains look again after a short cool-down, so every batch meets the refusal.
    config.breaker.open_ms = 100;
    let (nozzle, emitter) = flowing(&pipeline, config).await;
    eventually("both bindings to start", async || {
        drains(nozzle.admin).await.len() == 2
    })
    .await;
    const N: usize = 50;
    emit(&emitter, "app-a", N, "private");
    eventually("both drains refused with the reason", async || {
        ["ip", "name"].iter().all(|g| {
            api.latest(g).is_some_and(|s| {
                s.state == DrainState::Refused && s.dropped == N as u64 && s.sent == 0
            })
        })
    })
    .await;
    for guid in ["ip", "name"] {
        let s = api.latest(guid).unwrap();
        let error = s.last_error.unwrap();
        assert!(
            error.contains("an operator must allow private drains"),
            "{guid}: {error}"
        );
    }
    let text = scrape(nozzle.admin).await;
    assert_eq!(
        metric(&text, "nozzle_dropped_total", "reason=\"refused\""),
        2 * N as u64
    );
    assert!(
        records_now(&receiver.out).is_empty(),
        "no connection was made"
    );
    nozzle.stop().await;
}
