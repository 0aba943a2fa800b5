//! Property tests: hostile envelopes at random times never panic the windows, and memory stays
//! within every configured cap after each step.

//! Random envelopes, random times: nothing panics, and what is stored never exceeds the caps.

#[path = "support/envelopes.rs"]
mod support;

use std::time::Duration;

use hydrant_envelope::wire::EnvelopeView;
use hydrant_windows::{LATENCY_BOUNDS_MS, WindowsConfig};
use proptest::prelude::*;
use support::{Rig, event, gauge, http_tagged, log};

#[derive(Debug, Clone)]
enum Env {
    Http(u8, u8, u16, i64, Option<String>),
    Gauge(u8, u8, Vec<(String, f64)>),
    Log(u8, u8, bool, bool),
    Crash(u8, u8),
}

fn env() -> impl Strategy<Value = Env> {
    let id = 0u8..12;
    prop_oneof![
        (
            id.clone(),
            id.clone(),
            any::<u16>(),
            any::<i64>(),
            proptest::option::of("[a-z_]{1,40}")
        )
            .prop_map(|(a, i, s, l, r)| Env::Http(a, i, s, l, r)),
        (
            id.clone(),
            id.clone(),
            proptest::collection::vec(
                (
                    "[a-z]{1,30}",
                    prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY)]
                ),
                0..6
            )
        )
            .prop_map(|(a, i, g)| Env::Gauge(a, i, g)),
        (id.clone(), id.clone(), any::<bool>(), any::<bool>())
            .prop_map(|(a, i, app, e)| Env::Log(a, i, app, e)),
        (id.clone(), id).prop_map(|(a, i)| Env::Crash(a, i)),
    ]
}

fn config() -> WindowsConfig {
    WindowsConfig {
        horizon_secs: 20,
        latency_fine_secs: 5,
        latency_block_secs: 5,
        minute_history: 3,
        max_apps: 4,
        max_instances_per_app: 3,
        max_custom_gauges: 2,
        max_tag_values: 2,
        max_name_bytes: 24,
        forget_instance_secs: 30,
        forget_app_secs: 60,
        ..WindowsConfig::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_envelopes_never_panic_and_stay_within_caps(
        steps in proptest::collection::vec((env(), 0u32..4000), 1..300),
    ) {
        let mut r = Rig::new(config());
        let mut t = 0.0;
        for (e, dt_ms) in steps {
            t += f64::from(dt_ms) / 1000.0;
            let name = |a: u8| format!("app-{a}");
            let envelope = match e {
                Env::Http(a, i, status, latency, reason) => {
                    let reason = reason.unwrap_or_default();
                    let mut x = http_tagged(&name(a), &i.to_string(), status % 700, 0, &[("router_error", reason.as_str())]);
                    if let Some(hydrant_envelope::v2::envelope::Message::Timer(tm)) = &mut x.message {
                        tm.stop = latency;
                    }
                    x
                }
                Env::Gauge(a, i, g) => {
                    let g: Vec<(&str, f64)> = g.iter().map(|(n, v)| (n.as_str(), *v)).collect();
                    gauge(&name(a), &i.to_string(), &g)
                }
                Env::Log(a, i, app, err) => {
                    log(&name(a), &i.to_string(), if app { "APP/PROC/WEB" } else { "RTR" }, err)
                }
                Env::Crash(a, i) => event(&name(a), &i.to_string(), "app.crash"),
            };
            r.feed(&envelope, t);
            let f = r.w.footprint();
            let c = r.w.config();
            prop_assert!(f.apps <= c.max_apps);
            prop_assert!(f.max_instances <= c.max_instances_per_app);
            prop_assert!(f.max_gauge_names <= c.max_custom_gauges + hydrant_envelope::semantic::ContainerMetric::ALL.len());
            prop_assert!(f.max_reasons <= c.max_tag_values + 1);
            prop_assert!(f.max_second_buckets <= c.horizon_secs as usize + 1);
            prop_assert!(f.max_histograms <= 5 + 5 + 2);
            prop_assert!(f.max_minute_buckets <= c.minute_history as usize);
        }
        let now = r.at(t);
        for app in r.w.apps() {
            for w in [1, 5, 20, 1000] {
                let w = Duration::from_secs(w);
                let rate = app.requests(w, now);
                prop_assert!(rate.per_second.is_finite() && rate.per_second >= 0.0);
                let _ = app.status_classes(w, now).error_ratio(true);
                let _ = app.latency(w, now);
                let _ = app.logs(w, now);
                if let Some(g) = app.gauge("cpu", w, now) {
                    prop_assert!(g.avg.is_finite());
                }
            }
            for m in app.minutes() {
                prop_assert!(m.latency_le[LATENCY_BOUNDS_MS.len() - 1] <= m.timed);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_that_parse_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut r = Rig::new(config());
        if let Ok(view) = EnvelopeView::parse(&bytes) {
            r.w.observe(&view, r.at(1.0));
        }
    }
}
