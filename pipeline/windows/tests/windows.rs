//! The rolling windows metric by metric, with injected time: rates, status classes with the
//! router's own errors apart, percentiles against an exact sort, gauges, log lines, crashes,
//! rollover, expiry, caps and per-minute SLO counts.

//! Every metric the windows keep, with injected time: rates, status classes, quantiles against
//! an exact computation, gauges, log lines, crashes, rollover and expiry, caps, staleness and
//! the per-minute SLO counts.

#[path = "support/envelopes.rs"]
mod support;

use std::time::Duration;

use hydrant_emitter::Registry;
use hydrant_envelope::gap::Gap;
use hydrant_windows::{DropReason, MinuteCounts, WindowsConfig};
use support::{BASE_UNIX, Rig, event, gauge, http, http_tagged, log, secs};

#[test]
fn request_rates_over_short_and_long_windows() {
    let mut r = Rig::new(WindowsConfig::default());
    // 10 requests a second for 120 s, spread inside each second.
    for s in 0..120 {
        for k in 0..10 {
            r.feed(
                &http("app", "0", 200, 1000),
                f64::from(s) + f64::from(k) / 10.0,
            );
        }
    }
    let now = r.at(120.0);
    let app = r.w.app("app").unwrap();
    for w in [1, 10, 60] {
        let rate = app.requests(secs(w), now);
        assert!((rate.per_second - 10.0).abs() < 1e-9, "{w}s: {rate:?}");
        assert!(rate.complete);
    }
    // Not yet watched for 5 minutes: the rate is averaged over time nobody was watching.
    let long = app.requests(secs(300), now);
    assert!(!long.complete);
    assert_eq!(long.count, 1200);
    assert_eq!(app.requests(secs(60), now).last, Some(r.at(119.9)));
    // Windows past the horizon are answered over the horizon.
    assert_eq!(app.requests(secs(10_000), now).window, secs(300));
    assert_eq!(app.requests(Duration::from_millis(10), now).window, secs(1));
}

#[test]
fn rates_slide_smoothly_across_a_second_boundary() {
    let mut r = Rig::new(WindowsConfig::default());
    // 4 requests in second 0, none after.
    for k in 0..4 {
        r.feed(&http("app", "0", 200, 1000), f64::from(k) * 0.2);
    }
    let app = r.w.app("app").unwrap();
    // At 1.25 s a quarter of second 1 has passed: three quarters of second 0 still count.
    let rate = app.requests(secs(1), r.at(1.25));
    assert!((rate.per_second - 3.0).abs() < 1e-6, "{rate:?}");
    assert_eq!(rate.count, 0);
    assert!((app.requests(secs(1), r.at(2.0)).per_second).abs() < 1e-9);
}

#[test]
fn status_classes_keep_router_made_errors_apart() {
    let mut r = Rig::new(WindowsConfig::default());
    for (status, n) in [(200, 50), (204, 10), (301, 5), (404, 3), (500, 2), (503, 1)] {
        for _ in 0..n {
            r.feed(&http("app", "0", status, 2000), 1.0);
        }
    }
    for _ in 0..4 {
        r.feed(
            &http_tagged("app", "0", 503, 10, &[("router_error", "no_endpoints")]),
            1.5,
        );
    }
    r.feed(
        &http_tagged(
            "app",
            "0",
            502,
            10,
            &[("x_cf_routererror", "endpoint_failure")],
        ),
        1.5,
    );
    // "-" is the access log's "none", not a reason.
    r.feed(
        &http_tagged("app", "0", 200, 10, &[("router_error", "-")]),
        1.5,
    );
    let app = r.w.app("app").unwrap();
    let now = r.at(2.0);
    let c = app.status_classes(secs(10), now);
    assert_eq!(
        [c.class(1), c.class(2), c.class(3), c.class(4), c.class(5)],
        [0, 61, 5, 3, 3]
    );
    assert_eq!(c.router[5], 5);
    assert_eq!(c.router_total(), 5);
    assert_eq!(c.total(), 77);
    assert_eq!(c.server_errors(), 3);
    assert!((c.error_ratio(false).unwrap() - 3.0 / 77.0).abs() < 1e-12);
    assert!((c.error_ratio(true).unwrap() - 8.0 / 77.0).abs() < 1e-12);
    let mut reasons = app.router_errors(secs(10), now);
    reasons.sort_unstable();
    assert_eq!(reasons, [("endpoint_failure", 1), ("no_endpoints", 4)]);
    // Router-made responses say nothing about the app's speed.
    assert_eq!(app.latency(secs(10), now).unwrap().count, 72);
    let i = app.instance("0").unwrap();
    assert_eq!(i.server_errors(secs(10), now), 3);
    assert_eq!(i.requests(secs(10), now).count, 77);
    // An app's own server-side timer, or another timer name, is not a router response.
    r.feed(
        &http_tagged("app", "0", 200, 10, &[("peer_type", "Server")]),
        1.5,
    );
    let mut other = http("app", "0", 200, 10);
    if let Some(hydrant_envelope::v2::envelope::Message::Timer(t)) = &mut other.message {
        t.name = "db".to_owned();
    }
    r.feed(&other, 1.5);
    assert_eq!(
        r.w.app("app")
            .unwrap()
            .status_classes(secs(10), now)
            .total(),
        77
    );
    assert_eq!(r.w.stats().ignored, 2);
}

/// A small deterministic generator, so quantile tests need no extra dependency.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

fn exact_quantile(sorted: &[i64], q: f64) -> i64 {
    // hdrhistogram's definition: the smallest value with at least q of the count at or below.
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1]
}

fn assert_close(got: Duration, want_us: i64, what: &str) {
    let got = got.as_micros() as f64;
    let want = want_us as f64;
    assert!(
        (got - want).abs() <= want * 0.01 + 1.0,
        "{what}: got {got} µs, exact {want} µs"
    );
}

#[test]
fn latency_quantiles_match_an_exact_computation() {
    let mut r = Rig::new(WindowsConfig::default());
    let mut rng = Lcg(7);
    let mut all = Vec::new();
    let mut last10 = Vec::new();
    for s in 0..60u32 {
        for _ in 0..200 {
            // A long-tailed mix: mostly 1–20 ms, sometimes up to 2 s.
            let us = if rng.next().is_multiple_of(20) {
                (rng.next() % 2_000_000) as i64 + 1
            } else {
                (rng.next() % 19_000) as i64 + 1000
            };
            r.feed(&http("app", "0", 200, us), f64::from(s) + 0.5);
            all.push(us);
            if s >= 50 {
                last10.push(us);
            }
        }
    }
    all.sort_unstable();
    last10.sort_unstable();
    let now = r.at(59.9);
    let app = r.w.app("app").unwrap();
    for q in [0.5, 0.95, 0.99] {
        let got = app.latency_quantile(q, secs(10), now).unwrap();
        assert_close(got, exact_quantile(&last10, q), &format!("10 s p{q}"));
        let got = app.latency_quantile(q, secs(60), now).unwrap();
        assert_close(got, exact_quantile(&all, q), &format!("60 s p{q}"));
    }
    let l = app.latency(secs(10), now).unwrap();
    assert_eq!(l.count, 2000);
    assert_close(l.max, *last10.last().unwrap(), "max");
    assert!(l.p50 <= l.p95 && l.p95 <= l.p99 && l.p99 <= l.max);
    // No data in the window is None, not zero.
    assert!(app.latency(secs(10), r.at(200.0)).is_none());
    assert!(app.latency_quantile(f64::NAN, secs(10), now).is_some());
}

#[test]
fn gauges_average_and_last_across_instances_and_go_stale() {
    let mut r = Rig::new(WindowsConfig::default());
    for s in 0..30u32 {
        let t = f64::from(s);
        r.feed(
            &gauge(
                "app",
                "0",
                &[
                    ("memory", 100.0 + t),
                    ("memory_quota", 1000.0),
                    ("cpu", 10.0),
                ],
            ),
            t,
        );
        r.feed(
            &gauge("app", "1", &[("memory", 300.0), ("cpu", 30.0)]),
            t + 0.5,
        );
    }
    let now = r.at(30.0);
    let app = r.w.app("app").unwrap();
    let i0 = app
        .instance("0")
        .unwrap()
        .gauge("memory", secs(10), now)
        .unwrap();
    // Seconds 21..=30: samples 121..=129 (the current second, 30, has none yet).
    assert!((i0.avg - 125.0).abs() < 1e-9, "{i0:?}");
    assert_eq!(
        (i0.min, i0.max, i0.last, i0.samples),
        (121.0, 129.0, 129.0, 9)
    );
    let m = app.gauge("memory", secs(10), now).unwrap();
    assert_eq!(m.instances, 2);
    assert!((m.avg - (125.0 + 300.0) / 2.0).abs() < 1e-9);
    assert!((m.last - (129.0 + 300.0) / 2.0).abs() < 1e-9);
    assert!((m.last_sum - 429.0).abs() < 1e-9);
    assert_eq!(m.updated, r.at(29.5));
    let cpu = app.gauge("cpu", secs(60), now).unwrap();
    assert!((cpu.avg - 20.0).abs() < 1e-9);
    assert!(app.gauge("nope", secs(60), now).is_none());
    // Silence past the window: the gauge is missing, not zero, and the last sample is still
    // there with its age.
    let later = r.at(100.0);
    assert!(app.gauge("memory", secs(60), later).is_none());
    let lasts: Vec<_> = app.instance("0").unwrap().gauges_last().collect();
    assert!(lasts.contains(&("memory", 129.0, r.at(29.0))));
    assert_eq!(
        app.gauge_names().collect::<Vec<_>>().len(),
        3,
        "memory, memory_quota and cpu"
    );
}

#[test]
fn log_lines_per_app_and_instance() {
    let mut r = Rig::new(WindowsConfig::default());
    for s in 0..20u32 {
        for k in 0..5 {
            r.feed(&log("app", "0", "APP/PROC/WEB", k == 0), f64::from(s) + 0.1);
        }
        r.feed(&log("app", "1", "APP/PROC/WEB", false), f64::from(s) + 0.2);
        // Platform lines about the app are not the app's output.
        r.feed(&log("app", "0", "RTR", false), f64::from(s) + 0.3);
        r.feed(&log("app", "0", "CELL", false), f64::from(s) + 0.3);
    }
    let now = r.at(20.0);
    let app = r.w.app("app").unwrap();
    let l = app.logs(secs(10), now);
    assert!((l.lines.per_second - 6.0).abs() < 1e-9, "{l:?}");
    assert_eq!(l.stderr, 9, "seconds 11..=19");
    let i1 = app.instance("1").unwrap().logs(secs(10), now);
    assert!((i1.lines.per_second - 1.0).abs() < 1e-9);
    assert_eq!(app.last_log(), Some(r.at(19.2)));
    assert!(app.last_request().is_none(), "logs are not requests");
    assert_eq!(r.w.stats().ignored, 40);
}

#[test]
fn crashes_and_gaps_are_visible() {
    let mut r = Rig::new(WindowsConfig::default());
    r.feed(&event("app", "0", "app.crash"), 1.0);
    r.feed(&event("app", "0", "audit.app.process.crash"), 2.0);
    r.feed(&event("app", "0", "something.else"), 2.0);
    let marker = Gap {
        source_id: "app".to_owned(),
        dropped: 7,
        hop: "doppler".to_owned(),
        reason: "ring_overflow".to_owned(),
        by_source: Default::default(),
    };
    r.feed(&marker.to_envelope(), 3.0);
    let stream_wide = Gap {
        source_id: "hydrant".to_owned(),
        ..marker
    };
    r.w.record_gap(&stream_wide, r.at(4.0));
    let app = r.w.app("app").unwrap();
    assert_eq!(app.crashes(secs(10), r.at(3.0)), 2);
    assert_eq!(app.last_crash(), Some(r.at(2.0)));
    assert_eq!(app.last_gap(), Some((r.at(3.0), 7)));
    assert_eq!(r.w.last_stream_gap(), Some(r.at(4.0)));
    let s = r.w.stats();
    assert_eq!((s.gaps, s.lost), (2, 14));
}

#[test]
fn buckets_roll_over_and_expire_within_the_horizon() {
    let config = WindowsConfig {
        horizon_secs: 30,
        forget_instance_secs: 1000,
        ..WindowsConfig::default()
    };
    let mut r = Rig::new(config);
    for s in 0..100u32 {
        r.feed(&http("app", "0", 200, 500), f64::from(s));
        r.feed(&gauge("app", "0", &[("cpu", 1.0)]), f64::from(s));
    }
    let f = r.w.footprint();
    assert!(f.max_second_buckets <= 31, "{f:?}");
    // Fine histograms: 10 one-second ones; coarse: ceil(30/10)+1 blocks; plus spares.
    assert!(f.max_histograms <= 10 + 4 + 2, "{f:?}");
    let app = r.w.app("app").unwrap();
    assert_eq!(app.requests(secs(30), r.at(99.0)).count, 30);
    assert_eq!(app.requests(secs(30), r.at(200.0)).count, 0);
    assert_eq!(app.requests(secs(30), r.at(200.0)).last, Some(r.at(99.0)));
}

#[test]
fn idle_instances_and_apps_are_forgotten() {
    let config = WindowsConfig {
        forget_instance_secs: 20,
        forget_app_secs: 60,
        ..WindowsConfig::default()
    };
    let mut r = Rig::new(config);
    r.feed(&http("quiet", "0", 200, 1), 0.0);
    r.feed(&http("busy", "0", 200, 1), 0.0);
    for s in 1..100u32 {
        r.feed(&http("busy", "1", 200, 1), f64::from(s));
    }
    assert!(r.w.app("quiet").is_none());
    let busy = r.w.app("busy").unwrap();
    assert_eq!(busy.instances().map(|i| i.id()).collect::<Vec<_>>(), ["1"]);
    assert_eq!(r.w.stats().apps_forgotten, 1);
}

#[test]
fn caps_refuse_and_count_by_reason() {
    let config = WindowsConfig {
        max_apps: 2,
        max_instances_per_app: 2,
        max_custom_gauges: 1,
        max_tag_values: 1,
        max_name_bytes: 16,
        forget_instance_secs: 30,
        ..WindowsConfig::default()
    };
    let registry = Registry::new("test", "0");
    let mut r = Rig::new(config);
    r.w = hydrant_windows::Windows::with_clock(r.w.config().clone(), r.base, BASE_UNIX)
        .unwrap()
        .with_registry(&registry);
    r.feed(&http("a", "0", 200, 1), 0.0);
    r.feed(&http("b", "0", 200, 1), 0.0);
    r.feed(&http("c", "0", 200, 1), 0.0);
    assert!(r.w.app("c").is_none());
    // Past the cap the app still counts; the instance just has no series of its own.
    r.feed(&http("a", "1", 200, 1), 0.0);
    r.feed(&http("a", "2", 200, 1), 0.0);
    let a = r.w.app("a").unwrap();
    assert_eq!(a.instances().count(), 2);
    assert_eq!(a.requests(secs(5), r.at(0.0)).count, 3);
    // Container gauges are free; one custom name fits, the second does not; NaN is refused.
    r.feed(
        &gauge(
            "a",
            "0",
            &[("cpu", 1.0), ("memory", 2.0), ("queue", 3.0), ("jobs", 4.0)],
        ),
        0.0,
    );
    r.feed(&gauge("a", "0", &[("disk", f64::NAN)]), 0.0);
    r.feed(&gauge("a", "0", &[("a_very_long_gauge_name", 1.0)]), 0.0);
    // One router error reason fits; the next is counted as `other`.
    r.feed(
        &http_tagged("a", "0", 503, 1, &[("router_error", "no_endpoints")]),
        0.0,
    );
    r.feed(
        &http_tagged("a", "0", 502, 1, &[("router_error", "endpoint_failure")]),
        0.0,
    );
    r.feed(&http("an_app_id_far_too_long", "0", 200, 1), 0.0);
    let s = r.w.stats();
    let expect = [
        (DropReason::AppCap, 1),
        (DropReason::InstanceCap, 1),
        (DropReason::GaugeNameCap, 1),
        (DropReason::TagValueCap, 1),
        (DropReason::NameTooLong, 2),
        (DropReason::BadValue, 1),
    ];
    for (reason, n) in expect {
        assert_eq!(s.dropped(reason), n, "{reason:?}");
    }
    let a = r.w.app("a").unwrap();
    let names: Vec<_> = a.gauge_names().collect();
    assert_eq!(names.len(), 3, "{names:?}");
    let mut reasons = a.router_errors(secs(5), r.at(0.0));
    reasons.sort_unstable();
    assert_eq!(reasons, [("no_endpoints", 1), ("other", 1)]);
    // A full table admits a new app once the oldest has been silent long enough.
    for s in 1..40u32 {
        r.feed(&http("a", "0", 200, 1), f64::from(s));
    }
    r.feed(&http("c", "0", 200, 1), 40.0);
    assert!(r.w.app("c").is_some());
    assert!(r.w.app("b").is_none());
    // The registry's counters agree (housekeeping has run by now).
    assert_eq!(
        registry.counter_sum("windows.dropped", &[("reason", "app_cap")]),
        1
    );
    assert_eq!(registry.counter_sum("windows.dropped", &[]), 7);
    assert!(registry.counter_sum("windows.envelopes", &[]) > 0);
}

#[test]
fn minute_counts_roll_over_and_restore() {
    let mut r = Rig::new(WindowsConfig {
        minute_history: 10,
        ..WindowsConfig::default()
    });
    let minute0 = BASE_UNIX / 60;
    // Minute 0: 100 requests, 5 app 5xx, 2 router 503s. Minute 1: 50 fast requests.
    for k in 0..100u32 {
        let status = if k < 5 { 500 } else { 200 };
        r.feed(&http("app", "0", status, 80_000), f64::from(k) * 0.5);
    }
    for _ in 0..2 {
        r.feed(
            &http_tagged("app", "0", 503, 1, &[("router_error", "no_endpoints")]),
            59.0,
        );
    }
    for k in 0..50u32 {
        r.feed(&http("app", "0", 200, 3_000), 60.0 + f64::from(k));
    }
    let app = r.w.app("app").unwrap();
    let m: Vec<MinuteCounts> = app.minutes().copied().collect();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].minute, minute0);
    assert_eq!(
        (m[0].total, m[0].server_errors, m[0].router_errors),
        (102, 5, 2)
    );
    assert_eq!(m[0].router_server_errors, 2);
    assert_eq!(m[0].available(false), 97);
    assert_eq!(m[0].available(true), 95);
    assert_eq!(m[0].faster_than(Duration::from_millis(75)), Some(0));
    assert_eq!(m[0].faster_than(Duration::from_millis(100)), Some(100));
    assert_eq!(m[1].faster_than(Duration::from_millis(5)), Some(50));
    let both = app.minutes_total(2, r.at(110.0));
    assert_eq!(both.total, 152);
    assert_eq!(app.minutes_since(minute0 + 1).count(), 1);
    assert_eq!(r.w.minute_at(r.at(125.0)), minute0 + 2);

    // Persist, restart 30 minutes later, restore: what is within the history comes back.
    let saved = serde_json::to_string(&m).unwrap();
    let mut again = Rig::new(WindowsConfig {
        minute_history: 10,
        ..WindowsConfig::default()
    });
    let restored: Vec<MinuteCounts> = serde_json::from_str(&saved).unwrap();
    again.feed(&http("app", "0", 200, 1), 300.0);
    again
        .w
        .restore_minutes("app", &restored, again.at(300.0))
        .unwrap();
    let got: Vec<u64> = again
        .w
        .app("app")
        .unwrap()
        .minutes()
        .map(|m| m.minute)
        .collect();
    assert_eq!(got, [minute0, minute0 + 1, minute0 + 5]);
    // Merging into a live minute adds; minutes past the history are skipped.
    again
        .w
        .restore_minutes("app", &restored, again.at(300.5))
        .unwrap();
    let app = again.w.app("app").unwrap();
    assert_eq!(app.minutes().next().unwrap().total, 204);
    let mut late = Rig::new(WindowsConfig {
        minute_history: 10,
        ..WindowsConfig::default()
    });
    late.w
        .restore_minutes("app", &restored, late.at(3600.0))
        .unwrap();
    assert_eq!(late.w.app("app").unwrap().minutes().count(), 0);
    assert!(late.w.restore_minutes("", &restored, late.at(1.0)).is_err());
}

#[test]
fn counters_and_envelopes_without_source_are_ignored() {
    let mut r = Rig::new(WindowsConfig::default());
    r.feed(&http("", "0", 200, 1), 0.0);
    r.feed(&gauge("app", "", &[("cpu", 1.0)]), 0.0);
    let s = r.w.stats();
    assert_eq!((s.envelopes, s.ignored, s.apps), (2, 2, 0));
}
