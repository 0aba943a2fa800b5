//! Two autoscaler copies sharing one platform, through a real pipeline (agent → doppler →
//! firehose edge, in process) and a real cloud controller: every app is scaled by exactly the
//! copy that owns it, once, from all of its envelopes.
//!
//! The load is chosen so the old design fails: each app gets 25 requests/s against a
//! "throughput >= 15" rule. Copies sharing one subscription split it per envelope, so each would
//! see about half of every app's requests (~12 rps, no breach) and both would decide for every
//! app; each copy on its own subscription, keeping its apps, sees all 25 rps of exactly its
//! apps.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

#[path = "../../cloudcontroller/tests/common/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use hydrant_api::EventFilter;
use hydrant_api::policy::ScalingPolicy;
use hydrant_autoscaler::{AutoscalerRole, Config, SOURCE_TYPE, owner};
use hydrant_emitter::{Emitter, EmitterConfig, Registry};
use hydrant_firehose_client::{ClientConfig, RecentQuery};
use hydrant_microcloud::{MicroCloud, Options as CloudOptions};
use hydrant_runtime::{Listeners, Validate as _};
use hydrant_testkit::{scrape_metric, wait_for};
use tokio_util::sync::CancellationToken;

use support::{Cc, FakeExecutor, Options, push_and_stage};

const STATIC_SITE: &[(&str, &[u8], u32)] = &[("index.html", b"<h1>hello</h1>", 0o644)];
const APPS: usize = 8;
const COPIES: u32 = 2;
/// Requests per second each app gets.
const RPS: u64 = 25;
const POLICY: &str = r#"{
  "instance_min_count": 1, "instance_max_count": 2,
  "scaling_rules": [
    {"metric_type": "throughput", "threshold": 15, "operator": ">=", "adjustment": "+1",
     "breach_duration_secs": 60, "cool_down_secs": 60}
  ]
}"#;

struct Pipeline {
    agent: String,
    firehose: String,
    token: String,
    shutdown: CancellationToken,
    _cloud: MicroCloud,
}

/// Agent, doppler and firehose edge on ephemeral ports, through the micro cloud's own wiring
/// (the one copy `hydrant up` uses).
async fn start_pipeline() -> Pipeline {
    let shutdown = CancellationToken::new();
    let cloud = MicroCloud::start(CloudOptions::pipeline(), shutdown.clone())
        .await
        .unwrap();
    Pipeline {
        agent: cloud.agent_url.clone(),
        firehose: cloud.firehose_url.clone(),
        token: cloud.token.clone(),
        shutdown,
        _cloud: cloud,
    }
}

/// Router-like Timer envelopes: `RPS` requests/s for each app, until `stop`. One unrelated
/// gauge per round makes the round's envelope count odd, so a per-envelope split of a shared
/// subscription alternates each app between its readers, as real interleaved traffic does.
fn drive_requests(emitter: Emitter, apps: Vec<String>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / RPS));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let start = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as i64;
            emitter.gauge("noise", "0", &[("queue", 1.0, "count")], &[]);
            for app in &apps {
                emitter.timer(
                    app,
                    "0",
                    "http",
                    start,
                    start + 10_000_000,
                    &[("peer_type", "Client"), ("status_code", "200")],
                );
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_app_is_scaled_by_exactly_the_copy_that_owns_it() {
    let pipeline = start_pipeline().await;
    let dir = tempfile::tempdir().unwrap();
    let bus = "autoscaler-shards";
    let cc = Cc::start(dir.path(), &Options::new(bus)).await;
    let _executor = FakeExecutor::start(bus, "exec-1", 64 * 1024, 64, false).await;

    let mut apps = Vec::new();
    for i in 0..APPS {
        let (app, _) = push_and_stage(&cc.admin, &format!("app-{i}"), STATIC_SITE, None).await;
        cc.admin.start_app(&app.guid).await.unwrap();
        cc.admin
            .set_autoscaling_policy(&app.guid, &ScalingPolicy::parse(POLICY).unwrap())
            .await
            .unwrap();
        apps.push(app.guid);
    }
    let owned: Vec<Vec<&String>> = (0..COPIES)
        .map(|c| apps.iter().filter(|a| owner(a, COPIES) == c).collect())
        .collect();
    println!(
        "apps per copy: {:?}",
        owned.iter().map(Vec::len).collect::<Vec<_>>()
    );

    // Two copies, as two hosts would run them: same config but for the index.
    let mut admins = Vec::new();
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for index in 0..COPIES {
        let mut config = Config {
            api: hydrant_runtime::ApiSettings::with_token(&cc.url, cc.admin.token().unwrap()),
            instance_index: index,
            instance_count: COPIES,
            evaluation_interval_secs: 1,
            policy_poll_secs: 1,
            rule_duration_cap_secs: Some(3),
            ..Config::default()
        };
        config.firehose.url.clone_from(&pipeline.firehose);
        config.firehose.token.clone_from(&pipeline.token);
        config.telemetry.agent = Some(pipeline.agent.clone());
        config.validate().unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        admins.push(admin.local_addr().unwrap());
        tasks.push(tokio::spawn(hydrant_runtime::run::<AutoscalerRole>(
            config,
            Listeners::from_bound(vec![("admin", admin)]),
            stop.clone(),
        )));
    }

    let emitter = Emitter::start(
        EmitterConfig {
            agent: pipeline.agent.clone(),
            ..EmitterConfig::default()
        },
        &Registry::new("router", "0"),
        pipeline.shutdown.clone(),
    );
    let load = CancellationToken::new();
    drive_requests(emitter, apps.clone(), load.clone());

    // Every app goes to its maximum of 2.
    for app in &apps {
        let admin = cc.admin.clone();
        wait_for(Duration::from_secs(60), "every app to scale out", || {
            let admin = admin.clone();
            let app = app.clone();
            async move { admin.app(&app).await.is_ok_and(|a| a.instances == 2) }
        })
        .await;
    }
    // Both copies then evaluate twice more with every app at its limit: a second decision
    // for any app would have been made by now.
    let mut seen = Vec::new();
    for admin in &admins {
        seen.push(scrape_metric(*admin, "autoscaler_evaluations_total", &[]).await);
    }
    for (admin, before) in admins.iter().zip(&seen) {
        let admin = *admin;
        let before = *before;
        wait_for(
            Duration::from_secs(20),
            "two more evaluations",
            || async move {
                scrape_metric(admin, "autoscaler_evaluations_total", &[]).await >= before + 2.0
            },
        )
        .await;
    }
    load.cancel();

    // Each copy scaled exactly its own apps, and knows how many are the other's.
    for (index, admin) in admins.iter().enumerate() {
        let mine = owned[index].len() as f64;
        assert_eq!(
            scrape_metric(*admin, "autoscaler_scalings_total", &[]).await,
            mine,
            "copy {index}"
        );
        assert_eq!(
            scrape_metric(*admin, "autoscaler_apps", &[]).await,
            mine,
            "copy {index}"
        );
        assert_eq!(
            scrape_metric(*admin, "autoscaler_apps_elsewhere", &[]).await,
            APPS as f64 - mine,
            "copy {index}"
        );
        assert!(
            scrape_metric(*admin, "autoscaler_envelopes_skipped_total", &[]).await > 0.0,
            "copy {index} read the whole stream"
        );
    }

    // One decision per app, on the full rate, said by its owner in the app's stream.
    let recent_config = ClientConfig {
        url: pipeline.firehose.clone(),
        token: pipeline.token.clone(),
        ..ClientConfig::default()
    };
    let mut by_copy = BTreeMap::new();
    for app in &apps {
        let events = cc
            .admin
            .audit_events(&EventFilter {
                target_guid: Some(app.clone()),
                types: Some("audit.app.autoscale".into()),
            })
            .await
            .unwrap();
        assert_eq!(events.len(), 1, "{app}: {events:?}");
        let value = events[0].data["value"].as_f64().unwrap();
        assert!(
            value >= 15.0 && value <= RPS as f64 * 1.5,
            "{app} decided on {value} rps"
        );
        let expected = owner(app, COPIES).to_string();
        let line = wait_for(Duration::from_secs(10), "the AUTOSCALER line", || {
            let recent_config = recent_config.clone();
            let app = app.clone();
            async move {
                let envelopes =
                    hydrant_firehose_client::recent(&recent_config, &app, &RecentQuery::logs(100))
                        .await
                        .ok()?;
                envelopes.into_iter().find_map(|e| {
                    let Some(hydrant_envelope::v2::envelope::Message::Log(log)) = &e.message else {
                        return None;
                    };
                    let text = String::from_utf8_lossy(&log.payload).into_owned();
                    (e.tags.get("source_type").map(String::as_str) == Some(SOURCE_TYPE)
                        && text.starts_with("Scaling from 1 to 2"))
                    .then_some((e.instance_id.clone(), text))
                })
            }
        })
        .await;
        assert_eq!(
            line.0, expected,
            "{app}: said by copy {} ({})",
            line.0, line.1
        );
        *by_copy.entry(line.0).or_insert(0) += 1;
    }
    println!("decisions per copy: {by_copy:?}");

    stop.cancel();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the copy stops")
            .unwrap()
            .unwrap();
    }
    cc.stop().await;
}
