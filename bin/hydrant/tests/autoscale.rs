//! The autoscaler end to end through the real `hydrant` binary: `hydrant up` (every role in one
//! process), the demo app pushed from a Procfile, a latency policy set with
//! `hydrant autoscale NAME --policy FILE`, and real HTTP load through the router. The app must
//! scale out within the breach duration + 5 s of the load making it slow, the decision must show
//! in its log stream, its events and `hydrant autoscale --show` with the measured value, and it
//! must scale back in once the load stops.
//!
//! Policies keep app-autoscaler's 60 s minimum breach; the micro cloud is started with the
//! hidden operator cap (`--autoscaler-rule-cap-secs`) so the same code path acts after a few
//! seconds and the test stays short. Every wait is real time with a deadline.

#![allow(clippy::unwrap_used, reason = "test code")]

#[path = "support/router.rs"]
mod router;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hydrant_testkit::MicroCloud;

const BIN: &str = env!("CARGO_BIN_EXE_hydrant");
/// The operator cap the micro cloud runs with: every rule's breach and cooldown, seconds.
const CAP_SECS: u64 = 8;
/// Scale out when p95 latency is over 200 ms, back in when it is under 100 ms (an idle app
/// reads as 0 ms). Durations as a user must write them: 60 s at least.
const POLICY: &str = r#"{
  "instance_min_count": 1,
  "instance_max_count": 3,
  "scaling_rules": [
    {"metric_type": "responsetime", "threshold": 200, "operator": ">", "adjustment": "+1",
     "breach_duration_secs": 60, "cool_down_secs": 60},
    {"metric_type": "responsetime", "threshold": 100, "operator": "<", "adjustment": "-1",
     "breach_duration_secs": 60, "cool_down_secs": 60}
  ]
}"#;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn wait_until<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One GET through the router by `Host`; the status, or 0 when nothing usable came back.
fn get(router: &str, host: &str, path: &str) -> u16 {
    router::get_within(Duration::from_secs(10), router, host, path).0
}

/// The desired instance count of `name`, from `hydrant apps --json`.
fn desired(cloud: &MicroCloud, name: &str) -> Option<u64> {
    let out = cloud.cli(&["apps", "--json"]);
    let apps: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    apps.as_array()?
        .iter()
        .find(|a| a["name"] == name)?
        .get("instances")?
        .as_u64()
}

fn recent_autoscaler_lines(cloud: &MicroCloud, name: &str) -> Vec<String> {
    let out = cloud.cli(&["logs", name, "--recent", "--lines", "1000"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("[AUTOSCALER"))
        .map(str::to_owned)
        .collect()
}

/// Threads sending requests to `path` through the router until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(router: &str, host: &str, path: &str, threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let threads = (0..threads)
            .map(|_| {
                let (stop, sent) = (stop.clone(), sent.clone());
                let (router, host, path) = (router.to_owned(), host.to_owned(), path.to_owned());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if get(&router, &host, &path) == 0 {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Self {
            stop,
            sent,
            threads,
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_latency_policy_scales_the_demo_app_out_under_load_and_back_in() {
    let cap = CAP_SECS.to_string();
    let cloud = MicroCloud::start(BIN, &["--autoscaler-rule-cap-secs", &cap]);
    let endpoints = cloud.endpoints();
    let router = endpoints["router"].as_str().unwrap().to_owned();
    let domain = endpoints["apps_domain"].as_str().unwrap().to_owned();
    let host = format!("pulse.{domain}");

    let app = tempfile::tempdir().unwrap();
    std::fs::write(
        app.path().join("Procfile"),
        "web: exec \"$HYDRANT_BIN\" demo-app\n",
    )
    .unwrap();
    let out = cloud.cli(&["push", "pulse", "-p", app.path().to_str().unwrap()]);
    assert!(out.status.success(), "push failed: {}", text(&out));
    assert_eq!(get(&router, &host, "/"), 200);

    // The CLI refuses what a user may not write, naming the field, before anything is sent.
    let policy = app.path().join("policy.json");
    std::fs::write(
        &policy,
        POLICY.replace(
            "\"breach_duration_secs\": 60,",
            "\"breach_duration_secs\": 5,",
        ),
    )
    .unwrap();
    let out = cloud.cli(&["autoscale", "pulse", "--policy", policy.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out)
            .contains("scaling_rules[0].breach_duration_secs: (5) must be between 60 and 3600"),
        "{}",
        text(&out)
    );
    std::fs::write(&policy, POLICY).unwrap();
    let out = cloud.cli(&["autoscale", "pulse", "--policy", policy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Autoscaling pulse between 1 and 3 instances with 2 rule(s)"),
        "{}",
        text(&out)
    );

    // The autoscaler says when it takes the policy up, with the durations it applies.
    let taken = wait_until(Duration::from_secs(30), "the policy to be taken up", || {
        recent_autoscaler_lines(&cloud, "pulse")
            .into_iter()
            .find(|l| l.contains("Autoscaling policy in force"))
    });
    assert!(
        taken.contains(&format!("for {CAP_SECS} s → +1 (cooldown {CAP_SECS} s)")),
        "{taken}"
    );
    assert!(taken.contains("shortened by the operator"), "{taken}");

    // Load: every request waits 300 ms in the app, so p95 is well over 200 ms from the first
    // answers on. The breach starts no earlier than the load, so measuring from here is fair.
    let load = Load::start(&router, &host, "/delay/300", 6);
    let began = Instant::now();
    wait_until(
        Duration::from_secs(CAP_SECS + 30),
        "the app to scale out",
        || (desired(&cloud, "pulse")? >= 2).then_some(()),
    );
    let reaction = began.elapsed();
    let sent = load.stop();
    println!(
        "scaled out {:.1} s after the load began (breach {CAP_SECS} s, {sent} requests sent)",
        reaction.as_secs_f64()
    );
    assert!(
        reaction <= Duration::from_secs(CAP_SECS + 5),
        "scaled out {reaction:?} after the breach began; want within {CAP_SECS} s + 5 s"
    );
    assert!(
        reaction >= Duration::from_secs(CAP_SECS),
        "scaled out after {reaction:?}, before a full {CAP_SECS} s breach"
    );
    assert_eq!(desired(&cloud, "pulse"), Some(2));

    // The decision, with the measured value, in the app's log stream ...
    let line = wait_until(Duration::from_secs(20), "the AUTOSCALER line", || {
        recent_autoscaler_lines(&cloud, "pulse")
            .into_iter()
            .find(|l| l.contains("Scaling from 1 to 2 instances"))
    });
    assert!(
        line.contains("scaling_rules[0] responsetime p95 ")
            && line.contains(&format!("ms > 200ms for {CAP_SECS} s")),
        "{line}"
    );
    let value: f64 = line
        .split("responsetime p95 ")
        .nth(1)
        .and_then(|r| r.split("ms").next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {line}"));
    assert!(
        value >= 290.0,
        "p95 {value} ms, but every request took 300 ms"
    );

    // ... in the audit events ...
    let out = cloud.cli(&["events", "pulse", "--json"]);
    let events: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let events = events.as_array().unwrap();
    let decision = events
        .iter()
        .find(|e| e["type"] == "audit.app.autoscale")
        .unwrap_or_else(|| panic!("no audit.app.autoscale in {events:?}"));
    assert_eq!(decision["data"]["from"], 1);
    assert_eq!(decision["data"]["to"], 2);
    assert_eq!(decision["data"]["metric_type"], "responsetime");
    assert!(decision["data"]["value"].as_f64().unwrap() >= 290.0);
    assert!(events.iter().any(|e| e["type"] == "audit.app.scale"));
    let out = cloud.cli(&["events", "pulse"]);
    let listed = text(&out);
    let row = listed
        .lines()
        .find(|l| l.contains("audit.app.autoscale"))
        .unwrap_or_else(|| panic!("no autoscale event in {listed}"));
    assert!(
        row.contains("metric_type: responsetime") && row.contains("value: "),
        "{row}"
    );

    // ... and in `hydrant autoscale --show`, beside the policy.
    let out = cloud.cli(&["autoscale", "pulse", "--show"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("\"instance_max_count\": 3"), "{shown}");
    assert!(
        shown.contains("Scaling from 1 to 2 instances: scaling_rules[0] responsetime p95 "),
        "{shown}"
    );
    assert!(
        shown.contains("In force now: 1..3 instances, from the policy."),
        "{shown}"
    );

    // Both instances serve: the router reaches index 1 as well.
    wait_until(Duration::from_secs(30), "instance 1 to answer", || {
        let (_, body) = router::get(&router, &host, "/");
        body.contains("instance 1").then_some(())
    });

    // Load gone: the app goes idle (0 ms), the scale-in rule breaches, and once the cooldown
    // is over the app is back at one instance.
    let stopped = Instant::now();
    wait_until(
        Duration::from_secs(4 * CAP_SECS + 30),
        "the app to scale back in",
        || (desired(&cloud, "pulse")? == 1).then_some(()),
    );
    let back = stopped.elapsed();
    println!(
        "scaled back in {:.1} s after the load stopped",
        back.as_secs_f64()
    );
    assert!(
        back >= Duration::from_secs(CAP_SECS),
        "scaled in after {back:?}, inside the {CAP_SECS} s cooldown"
    );
    let line = wait_until(Duration::from_secs(20), "the scale-in line", || {
        recent_autoscaler_lines(&cloud, "pulse")
            .into_iter()
            .find(|l| l.contains("Scaling from 2 to 1 instances"))
    });
    assert!(line.contains("scaling_rules[1] responsetime p95"), "{line}");

    // `--off` removes the policy; `--show` then says so.
    let out = cloud.cli(&["autoscale", "pulse", "--off"]);
    assert!(
        text(&out).contains("Autoscaling is off for pulse"),
        "{}",
        text(&out)
    );
    let out = cloud.cli(&["autoscale", "pulse", "--show"]);
    assert!(
        text(&out).contains("pulse has no autoscaling policy"),
        "{}",
        text(&out)
    );
}
