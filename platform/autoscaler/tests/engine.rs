//! The evaluator on synthetic envelope streams with an injected clock: scale out under load,
//! back in after cooldown, breach duration honoured, no scale-in on missing data.

#![allow(clippy::unwrap_used, reason = "test code")]

use std::time::{Duration, Instant};

use hydrant_api::policy::ScalingPolicy;
use hydrant_autoscaler::{AppInfo, Engine, EngineConfig, ScaleStep, Step};
use hydrant_envelope::v2;
use hydrant_envelope::wire::{EnvelopeView, encode};
use hydrant_testkit::envelopes::{self, envelope, timer};
use hydrant_windows::{Windows, WindowsConfig};

const APP: &str = "app-1";
/// Monday 2026-11-30 12:00 UTC (no schedule in these policies, so any time does).
const UNIX: i64 = 1_796_040_000;

struct Rig {
    w: Windows,
    engine: Engine,
    base: Instant,
    secs: u64,
    instances: u32,
}

fn http(latency_ms: i64) -> v2::Envelope {
    let tags = [
        ("peer_type", "Client"),
        ("status_code", "200"),
        ("method", "GET"),
    ];
    let stop = 1_000_000_000 + latency_ms * 1_000_000;
    envelope(1, APP, "0", &tags, timer("http", 1_000_000_000, stop))
}

fn gauge(metrics: &[(&str, f64)]) -> v2::Envelope {
    let metrics: Vec<_> = metrics.iter().map(|&(n, v)| (n, v, "bytes")).collect();
    envelope(1, APP, "0", &[], envelopes::gauge(&metrics))
}

impl Rig {
    fn new(policy: &str, instances: u32) -> Self {
        Self::with_cap(policy, instances, None).0
    }

    /// A rig whose engine caps rule durations at `cap`; also returns what taking up the
    /// policy said.
    fn with_cap(policy: &str, instances: u32, cap: Option<Duration>) -> (Self, Vec<Step>) {
        let base = Instant::now();
        let w = Windows::with_clock(WindowsConfig::default(), base, 1_700_000_040).unwrap();
        let mut engine = Engine::new(EngineConfig {
            metric_window: Duration::from_secs(10),
            responsetime_percentile: 95.0,
            stale_after: Duration::from_secs(30),
            idle_responsetime_zero: true,
            rule_duration_cap: cap,
        });
        let said = engine.set_apps(vec![AppInfo {
            guid: APP.to_owned(),
            name: "demo".to_owned(),
            instances,
            started: true,
            policy: ScalingPolicy::parse(policy).unwrap(),
        }]);
        let rig = Self {
            w,
            engine,
            base,
            secs: 0,
            instances,
        };
        (rig, said)
    }

    fn now(&self) -> Instant {
        self.base + Duration::from_secs(self.secs)
    }

    fn feed(&mut self, env: &v2::Envelope) {
        let bytes = encode(env);
        let view = EnvelopeView::parse(&bytes).unwrap();
        let now = self.now();
        self.w.observe(&view, now);
    }

    /// Runs `secs` seconds: each second `traffic` requests of `latency_ms` (and a memory
    /// gauge when `gauges`), an evaluation every 5 s; returns the scale steps taken (each
    /// applied as if the API call succeeded) with the second they happened at, and lines said.
    fn run(
        &mut self,
        secs: u64,
        traffic: u32,
        latency_ms: i64,
        gauges: bool,
    ) -> (Vec<(u64, ScaleStep)>, Vec<String>) {
        let mut scaled = Vec::new();
        let mut said = Vec::new();
        for _ in 0..secs {
            self.secs += 1;
            for _ in 0..traffic {
                self.feed(&http(latency_ms));
            }
            if gauges {
                self.feed(&gauge(&[
                    ("memory", 100.0 * 1024.0 * 1024.0),
                    ("memory_quota", 256.0 * 1024.0 * 1024.0),
                    ("cpu", 12.0),
                ]));
            }
            if self.secs.is_multiple_of(5) {
                let now = self.now();
                for step in self.engine.evaluate(&self.w, Ok(()), now, UNIX) {
                    match step {
                        Step::Scale(s) => {
                            self.engine.scaled(&s, now);
                            self.instances = s.to;
                            scaled.push((self.secs, s));
                        }
                        Step::Say { line, .. } => said.push(line),
                    }
                }
            }
        }
        (scaled, said)
    }
}

const LATENCY: &str = r#"{
  "instance_min_count": 1, "instance_max_count": 4,
  "scaling_rules": [
    {"metric_type": "responsetime", "threshold": 200, "operator": ">", "adjustment": "+1",
     "breach_duration_secs": 60, "cool_down_secs": 60},
    {"metric_type": "responsetime", "threshold": 50, "operator": "<", "adjustment": "-1",
     "breach_duration_secs": 60, "cool_down_secs": 60}
  ]
}"#;

#[test]
fn scales_out_under_slow_responses_and_back_in_after_cooldown() {
    let mut rig = Rig::new(LATENCY, 1);
    // Warm up at a healthy 100 ms: neither rule breaches.
    let (scaled, _) = rig.run(30, 20, 100, true);
    assert!(scaled.is_empty(), "{scaled:?}");

    // Load makes responses slow: scale out within breach_duration + one tick.
    let start = rig.secs;
    let (scaled, _) = rig.run(70, 20, 400, true);
    let (at, step) = &scaled[0];
    assert_eq!((step.from, step.to, step.rule), (1, 2, Some(0)));
    assert!(
        at - start <= 60 + 5,
        "acted {} s after the breach began",
        at - start
    );
    assert!(step.value >= 390.0, "{}", step.value);
    assert!(step.line.contains("responsetime p95"), "{}", step.line);

    // Still slow: the next step waits for cooldown and a fresh full breach.
    let (more, _) = rig.run(60, 20, 400, true);
    assert_eq!(more.len(), 1, "{more:?}");
    assert_eq!(more[0].1.to, 3);
    assert!(more[0].0 - at >= 60);

    // Load gone: responses are fast, scale back in one at a time after each cooldown.
    let (scaled, _) = rig.run(200, 5, 10, true);
    let tos: Vec<u32> = scaled.iter().map(|(_, s)| s.to).collect();
    assert_eq!(tos, [2, 1], "{scaled:?}");
    assert_eq!(rig.instances, 1);
}

#[test]
fn p95_is_a_true_percentile_not_the_maximum() {
    let mut rig = Rig::new(LATENCY, 2);
    // 1 slow request in 100 per second: the max is 5 s but p95 is 30 ms, so this scales in.
    let mut scaled = Vec::new();
    for _ in 0..80 {
        rig.feed(&http(5_000));
        let (s, _) = rig.run(1, 99, 30, true);
        scaled.extend(s);
    }
    assert_eq!(scaled.len(), 1, "{scaled:?}");
    assert_eq!(scaled[0].1.to, 1);
}

#[test]
fn breach_duration_is_honoured() {
    let mut rig = Rig::new(LATENCY, 1);
    rig.run(10, 20, 100, true);
    // 50 s slow then a fast spell: the breach clock restarts.
    let (scaled, _) = rig.run(50, 20, 400, true);
    assert!(scaled.is_empty());
    let (scaled, _) = rig.run(10, 20, 100, true);
    assert!(scaled.is_empty());
    let start = rig.secs;
    let (scaled, _) = rig.run(55, 20, 400, true);
    assert!(scaled.is_empty(), "acted before a full breach: {scaled:?}");
    let (scaled, _) = rig.run(15, 20, 400, true);
    assert_eq!(scaled.len(), 1);
    assert!(scaled[0].0 - start >= 60);
}

#[test]
fn missing_data_holds_and_says_so_once() {
    let policy = r#"{
      "instance_min_count": 1, "instance_max_count": 4,
      "scaling_rules": [
        {"metric_type": "memoryused", "threshold": 10, "operator": "<", "adjustment": "-1",
         "breach_duration_secs": 60, "cool_down_secs": 60}
      ]
    }"#;
    let mut rig = Rig::new(policy, 3);
    // Nothing at all from the app: hold, said once.
    let (scaled, said) = rig.run(120, 0, 0, false);
    assert!(scaled.is_empty());
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].starts_with("Holding at 3 instances"), "{}", said[0]);
    // Requests but no memory gauge: still no scale-in on a metric that is not there.
    let (scaled, said) = rig.run(120, 10, 10, false);
    assert!(scaled.is_empty());
    assert!(said.iter().all(|l| l.contains("Holding")), "{said:?}");

    // An unusable stream holds every rule too, even when the windows look like a breach.
    let mut rig = Rig::new(LATENCY, 2);
    rig.run(70, 20, 10, true);
    let mut rig2 = Rig::new(LATENCY, 2);
    let mut steps = Vec::new();
    for _ in 0..20 {
        rig2.secs += 5;
        for _ in 0..20 {
            rig2.feed(&http(10));
        }
        let now = rig2.now();
        steps.extend(rig2.engine.evaluate(
            &rig2.w,
            Err("the firehose is not connected".to_owned()),
            now,
            UNIX,
        ));
    }
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert!(matches!(&steps[0], Step::Say { line, .. } if line.contains("not connected")));
}

#[test]
fn throughput_scales_out_and_limits_clamp() {
    let policy = r#"{
      "instance_min_count": 2, "instance_max_count": 3,
      "scaling_rules": [
        {"metric_type": "throughput", "threshold": 50, "operator": ">=", "adjustment": "+100%",
         "breach_duration_secs": 60, "cool_down_secs": 60}
      ]
    }"#;
    // Below the policy's minimum: raised at once, without any breach.
    let mut rig = Rig::new(policy, 1);
    let (scaled, _) = rig.run(5, 0, 0, true);
    assert_eq!(scaled.len(), 1);
    assert_eq!((scaled[0].1.to, scaled[0].1.rule), (2, None));
    // +100 % of 2 is 4, clamped to the maximum of 3; then at the maximum it only says so.
    let (scaled, said) = rig.run(150, 80, 5, true);
    assert_eq!(scaled.len(), 1, "{scaled:?}");
    assert_eq!(scaled[0].1.to, 3);
    assert!(scaled[0].1.value >= 50.0);
    assert_eq!(
        said.iter().filter(|l| l.starts_with("Not scaling")).count(),
        1,
        "{said:?}"
    );
}

#[test]
fn taking_up_a_policy_is_said_once_with_its_rules() {
    let (mut rig, said) = Rig::with_cap(LATENCY, 1, None);
    assert_eq!(said.len(), 1, "{said:?}");
    let Step::Say { app, line } = &said[0] else {
        panic!("{said:?}")
    };
    assert_eq!(app, APP);
    assert!(
        line.starts_with(
            "Autoscaling policy in force: 1..4 instances; scaling_rules[0] \
             responsetime p95 > 200ms for 60 s → +1 (cooldown 60 s)"
        ),
        "{line}"
    );
    assert!(!line.contains("operator"), "{line}");
    // The same policy again (the next poll) says nothing; a changed one is said again.
    let same = AppInfo {
        guid: APP.to_owned(),
        name: "demo".to_owned(),
        instances: 1,
        started: true,
        policy: ScalingPolicy::parse(LATENCY).unwrap(),
    };
    assert!(rig.engine.set_apps(vec![same.clone()]).is_empty());
    let changed = AppInfo {
        policy: ScalingPolicy::parse(&LATENCY.replace("\"threshold\": 200", "\"threshold\": 300"))
            .unwrap(),
        ..same
    };
    assert_eq!(rig.engine.set_apps(vec![changed]).len(), 1);
}

#[test]
fn an_operator_cap_shortens_breach_and_cooldown_and_says_so() {
    let (mut rig, said) = Rig::with_cap(LATENCY, 1, Some(Duration::from_secs(10)));
    let Step::Say { line, .. } = &said[0] else {
        panic!("{said:?}")
    };
    assert!(line.contains("for 10 s → +1 (cooldown 10 s)"), "{line}");
    assert!(line.contains("shortened by the operator"), "{line}");
    rig.run(10, 20, 100, true);
    let start = rig.secs;
    let (scaled, _) = rig.run(30, 20, 400, true);
    assert_eq!(scaled.len(), 2, "{scaled:?}");
    let (at, step) = &scaled[0];
    assert!(
        at - start <= 10 + 5,
        "acted {} s after the breach",
        at - start
    );
    assert!(
        at - start >= 10,
        "acted before the capped breach: {}",
        at - start
    );
    assert!(step.line.contains("for 10 s"), "{}", step.line);
    assert!(step.line.contains("cooldown 10 s"), "{}", step.line);
    assert_eq!(step.cool_down, Duration::from_secs(10));
    // The second step waited out the capped cooldown and a fresh capped breach.
    assert!(scaled[1].0 - at >= 10, "{scaled:?}");
}
