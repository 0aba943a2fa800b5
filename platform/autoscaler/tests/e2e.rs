//! The autoscaler against the real cloud controller (in process, fake executors on the
//! in-process bus) with synthetic router envelopes and injected time: a slow app is scaled out
//! within breach_duration_secs + one tick, recorded as `audit.app.scale` and
//! `audit.app.autoscale`, and scaled back in after the cooldown once it is fast again.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

#[path = "../../cloudcontroller/tests/common/support.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hydrant_api::EventFilter;
use hydrant_api::policy::ScalingPolicy;
use hydrant_autoscaler::{Autoscaler, Config, ScaleStep};
use hydrant_emitter::Registry;
use hydrant_envelope::wire::{EnvelopeView, encode};
use hydrant_runtime::{ApiSettings, Validate as _};
use hydrant_testkit::envelopes::{envelope, timer};
use hydrant_testkit::wait_for;
use hydrant_windows::{SharedWindows, Windows, WindowsConfig};
use support::{Cc, FakeExecutor, Options, push_and_stage};

const STATIC_SITE: &[(&str, &[u8], u32)] = &[("index.html", b"<h1>hello</h1>", 0o644)];
const POLICY: &str = r#"{
  "instance_min_count": 1, "instance_max_count": 3,
  "scaling_rules": [
    {"metric_type": "responsetime", "threshold": 300, "operator": ">", "adjustment": "+1",
     "breach_duration_secs": 60, "cool_down_secs": 90},
    {"metric_type": "responsetime", "threshold": 100, "operator": "<", "adjustment": "-1",
     "breach_duration_secs": 60, "cool_down_secs": 90}
  ]
}"#;

fn http(app: &str, latency_ms: i64) -> Vec<u8> {
    let tags = [("peer_type", "Client"), ("status_code", "200")];
    let request = timer(
        "http",
        1_000_000_000,
        1_000_000_000 + latency_ms * 1_000_000,
    );
    encode(&envelope(1, app, "0", &tags, request)).to_vec()
}

struct Clock {
    windows: SharedWindows,
    base: Instant,
    secs: u64,
}

impl Clock {
    fn now(&self) -> Instant {
        self.base + Duration::from_secs(self.secs)
    }

    /// Advances `secs` seconds of 20 requests/s at `latency_ms`, evaluating every 5 s.
    async fn run(
        &mut self,
        autoscaler: &mut Autoscaler,
        app: &str,
        secs: u64,
        latency_ms: i64,
    ) -> Vec<(u64, ScaleStep)> {
        let envelope = http(app, latency_ms);
        let mut done = Vec::new();
        for _ in 0..secs {
            self.secs += 1;
            {
                let now = self.now();
                let mut w = self.windows.lock().unwrap();
                for _ in 0..20 {
                    w.observe(&EnvelopeView::parse(&envelope).unwrap(), now);
                }
            }
            if self.secs.is_multiple_of(5) {
                let now = self.now();
                for step in autoscaler
                    .evaluate_with(&self.windows, Ok(()), now, 1_796_040_000)
                    .await
                {
                    done.push((self.secs, step));
                }
            }
        }
        done
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scales_out_a_slow_app_and_back_in_through_the_cloud_controller() {
    let dir = tempfile::tempdir().unwrap();
    let bus = "autoscaler-e2e";
    let cc = Cc::start(dir.path(), &Options::new(bus)).await;
    let executor = FakeExecutor::start(bus, "exec-1", 4096, 10, false).await;
    let (app, _) = push_and_stage(&cc.admin, "demo", STATIC_SITE, None).await;
    cc.admin.start_app(&app.guid).await.unwrap();
    cc.admin
        .set_autoscaling_policy(&app.guid, &ScalingPolicy::parse(POLICY).unwrap())
        .await
        .unwrap();

    let config = Config {
        api: ApiSettings::with_token(&cc.url, cc.admin.token().unwrap()),
        ..Config::default()
    };
    config.validate().unwrap();
    let mut autoscaler = Autoscaler::new(config, None, &Registry::new("autoscaler", "0"));
    autoscaler.poll().await;
    assert_eq!(autoscaler.apps(), 1);

    let base = Instant::now();
    let windows = Windows::with_clock(WindowsConfig::default(), base, 1_700_000_040).unwrap();
    let mut clock = Clock {
        windows: Arc::new(Mutex::new(windows)),
        base,
        secs: 0,
    };
    // Healthy at 200 ms: nothing happens.
    assert!(
        clock
            .run(&mut autoscaler, &app.guid, 30, 200)
            .await
            .is_empty()
    );

    // Slow at 800 ms: one instance more within breach_duration_secs + one tick.
    let start = clock.secs;
    let steps = clock.run(&mut autoscaler, &app.guid, 70, 800).await;
    assert_eq!(steps.len(), 1, "{steps:?}");
    let (at, step) = &steps[0];
    assert_eq!((step.from, step.to), (1, 2));
    assert!(
        at - start <= 65,
        "acted {} s after the breach began",
        at - start
    );
    assert_eq!(cc.admin.app(&app.guid).await.unwrap().instances, 2);
    wait_for(Duration::from_secs(15), "a second instance to run", || {
        let running = executor.running(&app.guid);
        async move { running == 2 }
    })
    .await;

    let events = cc
        .admin
        .audit_events(&EventFilter {
            target_guid: Some(app.guid.clone()),
            types: Some("audit.app.scale,audit.app.autoscale".into()),
        })
        .await
        .unwrap();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert!(types.contains(&"audit.app.scale"), "{types:?}");
    let autoscale = events
        .iter()
        .find(|e| e.event_type == "audit.app.autoscale")
        .expect("an audit.app.autoscale event");
    assert_eq!(autoscale.data["from"], 1);
    assert_eq!(autoscale.data["to"], 2);
    assert_eq!(autoscale.data["threshold"], 300);
    assert!(autoscale.data["value"].as_f64().unwrap() >= 790.0);

    // Fast again at 20 ms: back to one instance, not before the cooldown ends.
    let steps = clock.run(&mut autoscaler, &app.guid, 120, 20).await;
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert_eq!(steps[0].1.to, 1);
    assert!(steps[0].0 - at >= 90, "scaled in during the cooldown");
    assert_eq!(cc.admin.app(&app.guid).await.unwrap().instances, 1);
    drop(executor);
    cc.stop().await;
}
