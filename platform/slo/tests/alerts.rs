//! The alerter's engine over real rolling windows fed synthetic router timers, on an injected
//! clock: a total outage pages within two minutes and resolves once the short windows clear;
//! a quiet app does not page below its minimum count; a restart from the state files keeps
//! the budget and does not re-announce what was already firing.

#![allow(clippy::unwrap_used, reason = "test code")]

use std::time::{Duration, Instant};

use hydrant_api::slo::{AppSlos, Sli, Slo};
use hydrant_emitter::Registry;
use hydrant_envelope::v2;
use hydrant_envelope::wire::{EnvelopeView, encode};
use hydrant_slo::eval::Severity;
use hydrant_slo::{Engine, Notice, store};
use hydrant_testkit::envelopes::{envelope, timer};
use hydrant_windows::{Windows, WindowsConfig};

/// A UNIX second on a minute boundary.
const BASE_UNIX: u64 = 1_700_000_040;
const APP: &str = "0d5c7e2a-app";

struct Rig {
    windows: Windows,
    engine: Engine,
    base: Instant,
    base_unix: u64,
}

impl Rig {
    fn new(base_unix: u64) -> Self {
        let base = Instant::now();
        Self {
            windows: Windows::with_clock(WindowsConfig::default(), base, base_unix).unwrap(),
            engine: Engine::new(),
            base,
            base_unix,
        }
    }

    fn at(&self, secs: u64) -> Instant {
        self.base + Duration::from_secs(secs)
    }

    /// `per_sec` responses with `status` in each second of [from, to).
    fn traffic(&mut self, from: u64, to: u64, per_sec: u32, status: u16) {
        let env = http(APP, status);
        let bytes = encode(&env);
        let view = EnvelopeView::parse(&bytes).unwrap();
        for s in from..to {
            let now = self.at(s);
            for _ in 0..per_sec {
                self.windows.observe(&view, now);
            }
        }
    }

    fn evaluate(&mut self, secs: u64) -> Vec<Notice> {
        self.engine
            .evaluate(&self.windows, self.at(secs), self.base_unix + secs)
    }
}

fn http(source: &str, status: u16) -> v2::Envelope {
    let status = status.to_string();
    let tags = [
        ("peer_type", "Client"),
        ("status_code", status.as_str()),
        ("method", "GET"),
    ];
    let request = timer("http", 1_000_000_000, 1_020_000_000);
    envelope(1, source, "0", &tags, request)
}

fn specs(min_requests: u64) -> Vec<AppSlos> {
    vec![AppSlos {
        app_guid: APP.to_owned(),
        app_name: "demo".to_owned(),
        slos: vec![Slo {
            name: "availability".to_owned(),
            sli: Sli::Availability {
                count_router_errors: true,
            },
            objective: 99.9,
            period_days: 30,
            min_requests,
            webhook_url: None,
            description: None,
        }],
        updated_at: 0,
    }]
}

#[test]
fn total_outage_pages_within_two_minutes_and_resolves() {
    let mut r = Rig::new(BASE_UNIX);
    r.engine.set_specs(specs(50));
    // An hour of healthy traffic.
    r.traffic(0, 3600, 2, 200);
    assert!(r.evaluate(3600).is_empty());
    let healthy = r.engine.status(APP).unwrap().slos[0].clone();
    assert!(healthy.alerts.is_empty());
    assert!((healthy.budget_remaining - 1.0).abs() < 1e-9);

    // Total outage from t = 3600, evaluated every 10 s like the role.
    let outage = 3600;
    let mut paged_at = None;
    let mut t = outage;
    while t < outage + 300 {
        r.traffic(t, t + 10, 2, 500);
        t += 10;
        let notices = r.evaluate(t);
        if let Some(n) = notices
            .iter()
            .find(|n| n.firing && n.severity == Severity::Page)
        {
            // With one hour of history the 6 h window is as young as the 1 h one, so its
            // lower factor (6x) can be the first to hold; either rule pages.
            assert!(
                n.rule.contains("over 1h") || n.rule.contains("over 6h"),
                "{}",
                n.rule
            );
            let line = hydrant_slo::log_line(n);
            assert!(line.contains("PAGE FIRING"), "{line}");
            paged_at = Some(t);
            break;
        }
    }
    let paged_at = paged_at.expect("a total outage pages");
    assert!(
        paged_at - outage <= 120,
        "paged {} s into the outage",
        paged_at - outage
    );
    let status = r.engine.status(APP).unwrap().slos[0].clone();
    // A total outage burns every window: the ticket rules hold too.
    assert!(status.alerts.iter().any(|a| a.severity == "page"));
    assert!(status.budget_remaining < 1.0);

    // Recovery: the page resolves once the short windows are clean, within the 30 m window.
    let mut resolved_at = None;
    while t < paged_at + 40 * 60 {
        r.traffic(t, t + 10, 2, 200);
        t += 10;
        let notices = r.evaluate(t);
        if notices
            .iter()
            .any(|n| !n.firing && n.severity == Severity::Page)
        {
            resolved_at = Some(t);
            break;
        }
    }
    let resolved_at = resolved_at.expect("the page resolves after recovery");
    assert!(
        resolved_at - paged_at <= 32 * 60,
        "{}",
        resolved_at - paged_at
    );
    assert!(
        r.engine.status(APP).unwrap().slos[0]
            .alerts
            .iter()
            .all(|a| a.severity != "page")
    );
}

#[test]
fn a_quiet_app_does_not_page_below_the_minimum_count() {
    let mut r = Rig::new(BASE_UNIX);
    r.engine.set_specs(specs(50));
    // One failing request a minute for 40 minutes: every window is 100 % errors.
    for minute in 0..40 {
        r.traffic(minute * 60, minute * 60 + 1, 1, 500);
        assert!(r.evaluate(minute * 60 + 30).is_empty(), "minute {minute}");
    }
    let status = r.engine.status(APP).unwrap().slos[0].clone();
    assert!(status.alerts.is_empty());
    let burn_1h = status.burn_rates.iter().find(|w| w.window == "1h").unwrap();
    assert_eq!(burn_1h.requests, 40);
    assert!(burn_1h.rate.unwrap() > 900.0);
    // The guard lifts at the minimum: ten more failures and it pages.
    for minute in 40..50 {
        r.traffic(minute * 60, minute * 60 + 1, 1, 500);
    }
    let notices = r.evaluate(50 * 60);
    assert!(
        notices
            .iter()
            .any(|n| n.firing && n.severity == Severity::Page)
    );
}

#[test]
fn a_restart_from_state_files_keeps_the_budget_and_the_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rig::new(BASE_UNIX);
    r.engine.set_specs(specs(50));
    // Two hours at about 0.84 % errors (1 bad in 119 a minute): 8.4x, the 6 h page rule.
    for minute in 0..120 {
        let s = minute * 60;
        r.traffic(s, s + 1, 1, 500);
        r.traffic(s + 1, s + 60, 2, 200);
    }
    let notices = r.evaluate(7200);
    assert!(
        notices
            .iter()
            .any(|n| n.firing && n.severity == Severity::Page)
    );
    let before = r.engine.status(APP).unwrap().slos[0].clone();
    assert!(before.budget_remaining < 1.0 && before.period_requests > 14_000);
    assert_eq!(store::flush(dir.path(), &r.engine, &r.windows), 0);

    // The alerter comes back 5 minutes later with empty memory.
    let mut again = Rig::new(BASE_UNIX + 7200 + 300);
    let bad = Registry::new("slo", "0").counter("slo.dropped", "x", &[("reason", "t")]);
    let now = again.at(0);
    let loaded = store::load_all(dir.path(), &mut again.engine, &mut again.windows, now, &bad);
    assert_eq!(loaded, 1);
    assert_eq!(bad.get(), 0);
    again.engine.set_specs(specs(50));
    let notices = again.evaluate(0);
    assert!(notices.is_empty(), "nothing re-announced: {notices:?}");
    let after = again.engine.status(APP).unwrap().slos[0].clone();
    assert_eq!(after.period_requests, before.period_requests);
    assert!((after.budget_remaining - before.budget_remaining).abs() < 1e-9);
    assert_eq!(after.alerts, before.alerts);
    let burn_6h = after.burn_rates.iter().find(|w| w.window == "6h").unwrap();
    assert_eq!(burn_6h.requests, before.period_requests);

    // A file that is not state is skipped and counted, never trusted.
    std::fs::write(dir.path().join("other-app.json"), b"{\"version\":1,").unwrap();
    let mut third = Rig::new(BASE_UNIX);
    let at = third.at(0);
    let loaded = store::load_all(dir.path(), &mut third.engine, &mut third.windows, at, &bad);
    assert_eq!((loaded, bad.get()), (1, 1));

    // Once the SLOs are gone, their file goes at the next flush.
    again.engine.set_specs(Vec::new());
    store::flush(dir.path(), &again.engine, &again.windows);
    assert!(!dir.path().join(format!("{APP}.json")).exists());
}
