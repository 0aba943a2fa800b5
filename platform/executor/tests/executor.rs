//! The executor on loopback: real processes started from droplets served over HTTP, driven
//! through an isolated in-process bus, with their output captured by a fake agent.

#![allow(clippy::unwrap_used, reason = "test code")]

#[path = "support/rig.rs"]
mod rig;

use std::time::Duration;

use hydrant_bus::messages::{self, HealthCheckType, InstanceState, RegistryMessage, RouterStart};
use hydrant_envelope::v2;
use hydrant_testkit::wait_for;
use rig::{Rig, droplet, evil_droplet, logs, wait_log};

const APP: &str = r#"#!/bin/bash
env | sort
echo "to stderr" >&2
head -c 70000 /dev/zero | tr '\0' 'x'; echo
printf 'one\r\ntwo\n'
exec python3 -m http.server "$PORT" --bind 0.0.0.0
"#;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_runs_with_its_env_logs_and_route_then_stops() {
    let mut rig = Rig::start("executor-runs", true, |_| {}).await;
    let (url, sha) = rig.droplets.put("app", droplet(&[("app.sh", APP)]));
    let mut start = rig.start_message("bash app.sh", &url, &sha);
    start.env.insert("GREETING".into(), "hello world".into());
    start.env.insert("PORT".into(), "1".into());
    let guid = start.instance.clone();

    let reply = rig.request_start(&start).await;
    assert!(reply.accepted, "{reply:?}");
    let hb = rig.wait_state(&guid, InstanceState::Running, WAIT).await;
    assert_eq!(hb.executor_id, "cell-1");
    assert_eq!(hb.used.memory_mb, 256);
    assert_eq!(hb.used.instances, 1);

    // The route is registered with gorouter's fields.
    let register: RegistryMessage = tokio::time::timeout(WAIT, rig.registers.next())
        .await
        .unwrap()
        .unwrap()
        .json()
        .unwrap();
    // In its container the app has an address of its own on the bridge and listens on 8080.
    let port = 8080;
    assert_ne!(register.host, "127.0.0.1");
    assert!(register.host.starts_with("10."), "{}", register.host);
    assert_eq!(register.port, port);
    let host = register.host.clone();
    assert_eq!(register.uris, vec!["shop.hydrant.test".to_owned()]);
    assert_eq!(register.app.as_deref(), Some("app-guid-1"));
    assert_eq!(register.private_instance_id.as_deref(), Some(guid.as_str()));
    assert_eq!(register.private_instance_index.as_deref(), Some("3"));
    assert_eq!(register.tags["app_name"], "shop");
    // The app really serves on that port.
    let page = reqwest::get(format!("http://{host}:{port}/app.sh"))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);

    // Idempotent: a repeated start is accepted and starts nothing new.
    let again = rig.request_start(&start).await;
    assert!(again.accepted);
    // router.start makes the executor re-register at once.
    rig.bus
        .publish_json(messages::ROUTER_START, &RouterStart::default())
        .unwrap();
    let again: RegistryMessage = tokio::time::timeout(WAIT, rig.registers.next())
        .await
        .expect("re-registration after router.start")
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(again.port, port);

    // The environment, as the app printed it.
    wait_log(rig.agent(), "env and output", WAIT, |_, p| p == "two").await;
    let out = rig.agent().lines("APP/PROC/WEB");
    let has = |line: &str| out.iter().any(|l| l == line);
    assert!(has(&format!("PORT={port}")), "PORT is the executor's");
    assert!(has("INSTANCE_INDEX=3"));
    assert!(has(&format!("INSTANCE_GUID={guid}")));
    assert!(has("GREETING=hello world"));
    assert!(has("MEMORY_LIMIT=256m"));
    assert!(has("VCAP_SERVICES={}"));
    assert!(has("HOME=/home/vcap/app"), "{out:?}");
    assert!(has("TMPDIR=/home/vcap/tmp"));
    assert!(has("HYDRANT_BIN=/opt/hydrant/hydrant"));
    assert!(has(&format!("CF_INSTANCE_INTERNAL_IP={host}")));
    assert!(
        out.iter()
            .any(|l| l.starts_with("PATH=") && !l.contains("/root")),
        "the container's PATH is the stack's"
    );
    let vcap = out
        .iter()
        .find_map(|l| l.strip_prefix("VCAP_APPLICATION="))
        .unwrap();
    let vcap: serde_json::Value = serde_json::from_str(vcap).unwrap();
    assert_eq!(vcap["application_id"], "app-guid-1");
    assert_eq!(vcap["application_name"], "shop");
    assert_eq!(vcap["instance_index"], 3);
    assert_eq!(vcap["port"], port);
    assert_eq!(vcap["limits"]["mem"], 256);
    assert_eq!(vcap["space_id"], "space-1");
    assert!(out.iter().any(|l| l.starts_with("HYDRANT_APPLICATION={")));
    // Lines split on \r\n, long lines chunked at 60 KiB.
    assert!(has("one") && has("two"));
    let xs: Vec<usize> = out
        .iter()
        .filter(|l| l.starts_with('x'))
        .map(String::len)
        .collect();
    assert_eq!(xs, vec![61_440, 70_000 - 61_440]);
    // Envelope shape: source and instance ids, OUT and ERR, tags.
    let logs = logs(rig.agent());
    let (env, _, is_err, _) = logs.iter().find(|(_, _, _, p)| p == b"to stderr").unwrap();
    assert!(*is_err);
    assert_eq!(env.source_id, "app-guid-1");
    assert_eq!(env.instance_id, "3");
    assert_eq!(env.tags["space_id"], "space-1");
    assert_eq!(env.tags["app_name"], "shop");
    let (_, _, port_is_err, _) = logs
        .iter()
        .find(|(_, _, _, p)| p.starts_with(b"PORT="))
        .unwrap();
    assert!(!port_is_err);
    let cell = rig.agent().lines("CELL");
    for expected in [
        format!("Cell cell-1 creating container for instance {guid}"),
        format!("Cell cell-1 successfully created container for instance {guid}"),
        "Starting health monitoring of container".to_owned(),
        "Container became healthy".to_owned(),
    ] {
        assert!(
            cell.contains(&expected),
            "{expected:?} missing from {cell:?}"
        );
    }
    // Container metrics arrive as gauges for the instance, with the kernel's limits (pids
    // 2048, Diego's 30 shares for 256 MiB) beside the usage, tagged as contained.
    wait_for(WAIT, "container metrics", || {
        let found = rig.agent().envelopes().iter().any(|e| {
            e.source_id == "app-guid-1"
                && e.tags.get("isolation").is_some_and(|i| i == "container")
                && matches!(&e.message, Some(v2::envelope::Message::Gauge(g))
                    if g.metrics.get("memory").is_some_and(|m| m.value > 0.0)
                        && g.metrics["memory_quota"].value == 256.0 * 1024.0 * 1024.0
                        && g.metrics.contains_key("cpu")
                        && g.metrics.contains_key("disk")
                        && g.metrics.get("pids").is_some_and(|m| m.value >= 1.0)
                        && g.metrics.get("pids_limit").is_some_and(|m| m.value == 2048.0)
                        && g.metrics.get("cpu_shares").is_some_and(|m| m.value == 30.0))
        });
        async move { found }
    })
    .await;
    let metrics = rig.metrics().await;
    for series in [
        "executor_app_pids_limit",
        "executor_app_cpu_shares",
        "executor_app_pids",
    ] {
        assert!(
            metrics.contains(&format!("{series}{{")),
            "{series} missing: {metrics}"
        );
    }

    // Stop: unregister, STOPPING → DOWN, directory gone.
    let stopped = rig.request_stop("app-guid-1", &guid).await;
    assert!(stopped.accepted);
    let unregister: RegistryMessage = tokio::time::timeout(WAIT, rig.unregisters.next())
        .await
        .expect("unregister on stop")
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(unregister.port, port);
    let hb = rig.wait_state(&guid, InstanceState::Down, WAIT).await;
    assert_eq!(hb.used.memory_mb, 0);
    wait_log(rig.agent(), "destroyed", WAIT, |st, p| {
        st == "CELL" && p.contains("successfully destroyed container")
    })
    .await;
    assert!(
        rig.agent()
            .lines("CELL")
            .iter()
            .any(|l| l == "Exit status 143")
    );
    assert!(!hydrant_executor::instance_dir(&rig.data.path().join("executor"), &guid).exists());
    let metrics = rig.metrics().await;
    assert!(
        metrics.contains("executor_starts_total{source_id=\"executor\",instance_id=\"cell-1\"} 1")
    );
    assert!(
        metrics.contains(
            "executor_container_starts_total{source_id=\"executor\",instance_id=\"cell-1\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("executor_container_start_latency_seconds_bucket"));
    assert!(metrics.contains("executor_droplet_cache_misses_total"));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_escalates_to_sigkill_for_an_app_that_traps_term() {
    let mut rig = Rig::start("executor-sigterm", true, |_| {}).await;
    let app = "trap 'echo got TERM' TERM\necho ready\nwhile true; do sleep 0.05; done\n";
    let (url, sha) = rig.droplets.put("trap", droplet(&[("trap.sh", app)]));
    let mut start = rig.start_message("bash trap.sh", &url, &sha);
    start.health_check.kind = HealthCheckType::Process;
    start.uris.clear();
    let guid = rig.start_until_ready(&start, WAIT).await;

    let began = tokio::time::Instant::now();
    assert!(rig.request_stop("app-guid-1", &guid).await.accepted);
    rig.wait_state(&guid, InstanceState::Stopping, WAIT).await;
    rig.wait_state(&guid, InstanceState::Down, WAIT).await;
    let took = began.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "stopped after {took:?}, before the grace period"
    );
    wait_log(rig.agent(), "exit line", WAIT, |st, p| {
        st == "CELL" && p.starts_with("Exit status")
    })
    .await;
    let out = rig.agent().lines("APP/PROC/WEB");
    assert!(
        out.iter().any(|l| l == "got TERM"),
        "the app saw SIGTERM: {out:?}"
    );
    let cell = rig.agent().lines("CELL");
    assert!(
        cell.iter()
            .any(|l| l == "Exit status 137 (exceeded 1s graceful shutdown interval)"),
        "{cell:?}"
    );
    assert!(cell.contains(&format!("Cell cell-1 stopping instance {guid}")));
    rig.stop().await;
}

/// The grace is the app's, not the cell's: an app that ignores SIGTERM and asked for 3 s is
/// SIGKILLed 3 s after the stop (the rig's cell grace is 1 s), and its exit line says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_ignores_sigterm_is_killed_after_its_own_grace_not_the_cells() {
    let mut rig = Rig::start("executor-app-grace", true, |_| {}).await;
    let app = "trap '' TERM\necho ready\nwhile true; do sleep 0.05; done\n";
    let (url, sha) = rig.droplets.put("deaf", droplet(&[("deaf.sh", app)]));
    let mut start = rig.start_message("bash deaf.sh", &url, &sha);
    start.health_check.kind = HealthCheckType::Process;
    start.uris.clear();
    start.stop_timeout_secs = Some(3);
    let guid = rig.start_until_ready(&start, WAIT).await;

    let began = tokio::time::Instant::now();
    assert!(rig.request_stop("app-guid-1", &guid).await.accepted);
    rig.wait_state(&guid, InstanceState::Down, WAIT).await;
    let took = began.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "stopped after {took:?}: before the app's 3 s grace (the cell's is 1 s)"
    );
    assert!(
        took < Duration::from_secs(3) + WAIT,
        "stopped after {took:?}: the SIGKILL came late"
    );
    wait_log(rig.agent(), "exit line", WAIT, |st, p| {
        st == "CELL" && p.starts_with("Exit status")
    })
    .await;
    let cell = rig.agent().lines("CELL");
    assert!(
        cell.iter()
            .any(|l| l == "Exit status 137 (exceeded 3s graceful shutdown interval)"),
        "{cell:?}"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_exits_at_start_is_reported_crashed_with_its_status() {
    let mut rig = Rig::start("executor-crash", true, |_| {}).await;
    let (url, sha) = rig
        .droplets
        .put("crash", droplet(&[("crash.sh", "echo boom >&2\nexit 3\n")]));
    let start = rig.start_message("bash crash.sh", &url, &sha);
    let guid = start.instance.clone();
    assert!(rig.request_start(&start).await.accepted);
    let crash = rig.next_crash(WAIT).await;
    assert_eq!(crash.instance, guid);
    assert_eq!(crash.app, "app-guid-1");
    assert_eq!(crash.index, 3);
    assert_eq!(crash.reason, "CRASHED");
    assert_eq!(crash.exit_status, Some(3));
    assert_eq!(crash.exit_description, "APP/PROC/WEB: Exited with status 3");
    let hb = rig.wait_state(&guid, InstanceState::Crashed, WAIT).await;
    assert_eq!(hb.used.memory_mb, 0);
    // Not restarted, and a repeated start for the crashed guid is refused.
    let again = rig.request_start(&start).await;
    assert!(!again.accepted);
    assert!(again.reason.unwrap().contains("crashed"));
    wait_log(rig.agent(), "boom", WAIT, |st, p| {
        st == "APP/PROC/WEB" && p == "boom"
    })
    .await;
    wait_log(rig.agent(), "exit status", WAIT, |st, p| {
        st == "CELL" && p == "Exit status 3"
    })
    .await;
    // The crash is in the app's stream too, for consumers that only read the firehose.
    rig.agent()
        .wait_for(WAIT, "an app.crash event", |envelopes| {
            envelopes.iter().any(|e| {
                e.source_id == "app-guid-1"
                    && e.instance_id == "3"
                    && e.tags.get("exit_status").map(String::as_str) == Some("3")
                    && matches!(
                        &e.message,
                        Some(v2::envelope::Message::Event(ev)) if ev.title == "app.crash"
                    )
            })
        })
        .await;
    assert!(rig.metrics().await.contains(
        "executor_crashes_total{source_id=\"executor\",instance_id=\"cell-1\",reason=\"CRASHED\"} 1"
    ));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_never_opens_its_port_fails_its_health_check() {
    let mut rig = Rig::start("executor-unhealthy", true, |c| c.startup_timeout_secs = 1).await;
    let (url, sha) = rig
        .droplets
        .put("sleepy", droplet(&[("sleep.sh", "exec sleep 30\n")]));
    let start = rig.start_message("bash sleep.sh", &url, &sha);
    let guid = start.instance.clone();
    assert!(rig.request_start(&start).await.accepted);
    // The crash's own wait is the bound: with the 1 s startup timeout it comes well within 5 s,
    // with the default (60 s) it would not come at all. A wall-clock assertion on top of it only
    // measured how busy the machine was.
    let crash = rig.next_crash(Duration::from_secs(5)).await;
    assert_eq!(crash.instance, guid);
    assert_eq!(crash.reason, "HEALTH_CHECK");
    assert_eq!(crash.exit_status, None);
    assert!(
        crash
            .exit_description
            .starts_with("Instance never healthy after 1s: Failed to make TCP connection to port"),
        "{}",
        crash.exit_description
    );
    rig.wait_state(&guid, InstanceState::Crashed, WAIT).await;
    wait_log(rig.agent(), "health line", WAIT, |st, p| {
        st == "HEALTH" && p == "Timed out after 1s: health check never passed."
    })
    .await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_over_its_memory_quota_is_killed_as_oom() {
    let mut rig = Rig::start("executor-oom", true, |_| {}).await;
    let hog = "import time\nx = b'a' * (200 * 1024 * 1024)\nprint('allocated', flush=True)\ntime.sleep(30)\n";
    let (url, sha) = rig.droplets.put("hog", droplet(&[("hog.py", hog)]));
    let mut start = rig.start_message("exec python3 hog.py", &url, &sha);
    start.memory_mb = 64;
    start.health_check.kind = HealthCheckType::Process;
    let guid = start.instance.clone();
    assert!(rig.request_start(&start).await.accepted);
    let crash = rig.next_crash(WAIT).await;
    assert_eq!(crash.instance, guid);
    assert_eq!(crash.reason, "OOM");
    assert_eq!(crash.exit_status, Some(137));
    // The kernel killed it at its cgroup's limit; the crash says so, with the peak.
    assert!(
        crash
            .exit_description
            .starts_with("APP/PROC/WEB: Exited with status 137 (out of memory); peak memory 6"),
        "{}",
        crash.exit_description
    );
    assert!(crash.exit_description.ends_with("of its 64 MiB quota"));
    wait_log(rig.agent(), "oom exit line", WAIT, |st, p| {
        st == "CELL" && p == "Exit status 137 (out of memory)"
    })
    .await;
    assert!(
        rig.metrics()
            .await
            .contains("executor_oom_kills_total{source_id=\"executor\",instance_id=\"cell-1\"} 1")
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_droplets_and_impossible_requests_are_refused_with_a_reason() {
    let mut rig = Rig::start("executor-refusals", true, |c| c.memory_mb = 1024).await;
    let (url, sha) = rig
        .droplets
        .put("good", droplet(&[("a.sh", "exec sleep 30\n")]));

    let wrong_sha = rig.start_message("bash a.sh", &url, &"0".repeat(64));
    let reply = rig.request_start(&wrong_sha).await;
    assert!(!reply.accepted);
    let reason = reply.reason.unwrap();
    assert!(reason.contains("sha256 mismatch"), "{reason}");
    assert!(!reason.contains("secret"), "credentials leaked: {reason}");
    let crash = rig.next_crash(WAIT).await;
    assert_eq!(crash.instance, wrong_sha.instance);
    assert!(crash.exit_description.contains("sha256 mismatch"));

    let (evil_url, evil_sha) = rig.droplets.put("evil", evil_droplet("../../escaped.txt"));
    let evil = rig.start_message("bash a.sh", &evil_url, &evil_sha);
    let reply = rig.request_start(&evil).await;
    assert!(!reply.accepted);
    let reason = reply.reason.unwrap();
    assert!(reason.contains("escape"), "{reason}");
    assert!(!rig.data.path().join("escaped.txt").exists());
    assert!(!rig.data.path().join("executor/escaped.txt").exists());

    let (abs_url, abs_sha) = rig
        .droplets
        .put("abs", evil_droplet("/tmp/hydrant-abs.txt"));
    let reply = rig
        .request_start(&rig.start_message("bash a.sh", &abs_url, &abs_sha))
        .await;
    assert!(!reply.accepted);
    assert!(reply.reason.unwrap().contains("escape"));

    let mut huge = rig.start_message("bash a.sh", &url, &sha);
    huge.memory_mb = 4096;
    let reply = rig.request_start(&huge).await;
    assert!(!reply.accepted);
    assert!(reply.reason.unwrap().contains("not enough memory"));

    let mut elsewhere = rig.start_message("bash a.sh", &url, &sha);
    elsewhere.executor_id = "cell-2".into();
    let reply = rig.request_start(&elsewhere).await;
    assert!(!reply.accepted);
    assert!(reply.reason.unwrap().contains("wrong executor"));

    let garbage = rig
        .bus
        .request(
            &messages::executor_start_subject("cell-1"),
            bytes::Bytes::from_static(b"{not json"),
            WAIT,
        )
        .await
        .unwrap();
    let reply: messages::ExecutorReply = garbage.json().unwrap();
    assert!(!reply.accepted);
    let metrics = rig.metrics().await;
    assert!(metrics.contains("executor_dropped_total{source_id=\"executor\",instance_id=\"cell-1\",reason=\"bad_request\"} 1"));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_printing_flat_out_is_never_blocked_and_drops_are_counted() {
    // The agent is unreachable, so everything the app prints beyond the emitter's queue is
    // dropped; the app must still get through its output and open its port.
    let mut rig = Rig::start("executor-flood", false, |_| {}).await;
    let app = "yes 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' | head -n 400000\nexec python3 -m http.server \"$PORT\" --bind 0.0.0.0\n";
    let start = rig.start_script("flood", "flood.sh", app).await;
    let guid = start.instance.clone();
    // While the flood runs, the executor keeps answering requests promptly.
    let began = tokio::time::Instant::now();
    let stop_other = rig.request_stop("other-app", "other").await;
    assert!(stop_other.accepted);
    assert!(began.elapsed() < Duration::from_secs(2));
    rig.wait_state(&guid, InstanceState::Running, Duration::from_secs(30))
        .await;
    wait_for(WAIT, "drops counted", || {
        let admin = rig.admin;
        async move {
            let text = reqwest::get(format!("http://{admin}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let dropped: f64 = text
                .lines()
                .filter(|l| l.starts_with("emitter_dropped_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            let lines: f64 = text
                .lines()
                .filter(|l| l.starts_with("executor_log_lines_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            dropped > 0.0 && lines >= 400_000.0
        }
    })
    .await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_the_executor_down_stops_its_instances_and_unregisters_routes() {
    let mut rig = Rig::start("executor-shutdown", true, |_| {}).await;
    let app = "exec python3 -m http.server \"$PORT\" --bind 0.0.0.0\n";
    let start = rig.start_script("web", "web.sh", app).await;
    let guid = start.instance.clone();
    rig.wait_state(&guid, InstanceState::Running, WAIT).await;
    let mut unregisters = rig.bus.subscribe("router.unregister.*").await.unwrap();
    let mut heartbeats = rig
        .bus
        .subscribe(&messages::every_cell(messages::EXECUTOR_HEARTBEAT))
        .await
        .unwrap();
    let data = rig.data.path().join("executor");
    rig.stop().await;
    let unregister: RegistryMessage = unregisters
        .try_next()
        .expect("unregistered")
        .json()
        .unwrap();
    assert_eq!(
        unregister.private_instance_id.as_deref(),
        Some(guid.as_str())
    );
    let mut last = None;
    while let Some(m) = heartbeats.try_next() {
        last = Some(m.json::<messages::ExecutorHeartbeat>().unwrap());
    }
    let last = last.expect("a final heartbeat");
    assert!(
        last.instances
            .iter()
            .all(|i| i.state == InstanceState::Down)
    );
    assert!(!hydrant_executor::instance_dir(&data, &guid).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_keep_running_and_logging_while_the_bus_is_down() {
    let mut rig = Rig::start("executor-outage", true, |_| {}).await;
    let app = "python3 -m http.server \"$PORT\" --bind 0.0.0.0 &\n\
               i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 0.05; done\n";
    let start = rig.start_script("ticker", "tick.sh", app).await;
    let guid = start.instance.clone();
    rig.wait_state(&guid, InstanceState::Running, WAIT).await;
    let registered: RegistryMessage = tokio::time::timeout(WAIT, rig.registers.next())
        .await
        .unwrap()
        .unwrap()
        .json()
        .unwrap();
    let (host, port) = (registered.host, registered.port);

    rig.bus.simulate_outage(true).unwrap();
    let ticks = || {
        rig.agent()
            .lines("APP/PROC/WEB")
            .iter()
            .filter(|l| l.starts_with("tick"))
            .count()
    };
    let before = ticks();
    wait_for(WAIT, "logs during the outage", || {
        let now = ticks();
        async move { now >= before + 10 }
    })
    .await;
    let page = reqwest::get(format!("http://{host}:{port}/tick.sh"))
        .await
        .unwrap();
    assert_eq!(
        page.status(),
        200,
        "the app still serves while the bus is down"
    );

    // When the bus returns, the executor speaks up at once: heartbeat and routes.
    rig.bus.simulate_outage(false).unwrap();
    rig.wait_state(&guid, InstanceState::Running, WAIT).await;
    let again: RegistryMessage = tokio::time::timeout(WAIT, rig.registers.next())
        .await
        .expect("routes re-registered after the outage")
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(again.port, port);
    rig.stop().await;
}

/// Host processes whose cgroup lies under `parent`/`guid`: what runs in that container.
fn processes_in(parent: &str, guid: &str) -> Vec<(u32, String)> {
    let needle = format!("{parent}/{guid}/");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.contains(&needle))
        })
        .filter_map(|pid| {
            let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
            Some((pid, cmd.replace('\0', " ")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_takes_a_setsid_double_forked_child_with_the_container() {
    let mut parent = String::new();
    let mut rig = Rig::start("executor-setsid", true, |c| {
        parent = c.containers.cgroup_parent.clone();
    })
    .await;
    let app = "setsid bash -c '(sleep 300 &) ; exec sleep 301' &\n\
               exec python3 -m http.server \"$PORT\" --bind 0.0.0.0\n";
    let start = rig.start_script("daemon", "d.sh", app).await;
    let guid = start.instance.clone();
    rig.wait_state(&guid, InstanceState::Running, WAIT).await;
    wait_for(WAIT, "the escaped children", || {
        let found = processes_in(&parent, &guid);
        async move {
            found.iter().any(|(_, c)| c.starts_with("sleep 300"))
                && found.iter().any(|(_, c)| c.starts_with("sleep 301"))
        }
    })
    .await;
    assert!(rig.request_stop("app-guid-1", &guid).await.accepted);
    rig.wait_state(&guid, InstanceState::Down, WAIT).await;
    let left = processes_in(&parent, &guid);
    assert!(left.is_empty(), "outlived the stop: {left:?}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_past_its_disk_quota_is_stopped_with_the_reason() {
    let mut rig = Rig::start("executor-disk", true, |c| c.disk_check_interval_secs = 1).await;
    let app = "head -c 12000000 /dev/zero > /home/vcap/app/fill; echo filled; exec sleep 300\n";
    let (url, sha) = rig.droplets.put("filler", droplet(&[("fill.sh", app)]));
    let mut start = rig.start_message("bash fill.sh", &url, &sha);
    start.disk_mb = 10;
    start.health_check.kind = HealthCheckType::Process;
    let guid = start.instance.clone();
    assert!(rig.request_start(&start).await.accepted);
    let crash = rig.next_crash(WAIT).await;
    assert_eq!(crash.instance, guid);
    assert_eq!(crash.reason, "CRASHED");
    assert!(
        crash
            .exit_description
            .contains("past its disk quota of 10 MiB"),
        "{}",
        crash.exit_description
    );
    rig.wait_state(&guid, InstanceState::Crashed, WAIT).await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unisolated_instances_say_so_on_every_start() {
    let mut rig = Rig::start("executor-none", true, |c| {
        c.isolation = hydrant_executor::Isolation::None;
    })
    .await;
    let app = "echo uid=$(id -u)\nexec python3 -m http.server \"$PORT\" --bind 127.0.0.1\n";
    let start = rig.start_script("plain", "p.sh", app).await;
    let guid = start.instance.clone();
    let hb = rig.wait_state(&guid, InstanceState::Running, WAIT).await;
    let port = hb.instances[0].port.unwrap();
    let page = reqwest::get(format!("http://127.0.0.1:{port}/p.sh"))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    wait_log(rig.agent(), "the warning", WAIT, |st, p| {
        st == "CELL" && p.contains("running WITHOUT isolation")
    })
    .await;
    // Its metrics say so too, and claim no kernel limits.
    wait_for(WAIT, "unisolated container metrics", || {
        let found = rig.agent().envelopes().iter().any(|e| {
            e.tags.get("isolation").is_some_and(|i| i == "none")
                && matches!(&e.message, Some(v2::envelope::Message::Gauge(g))
                    if g.metrics.contains_key("pids")
                        && !g.metrics.contains_key("pids_limit")
                        && !g.metrics.contains_key("cpu_shares"))
        });
        async move { found }
    })
    .await;
    rig.stop().await;
}

/// An app that tries to escape its container on every request and answers what happened.
const ESCAPE_APP: &str = r#"
import json, os, socket, subprocess, urllib.parse, http.server

def attempt(action):
    try:
        return "escaped: " + repr(action())[:100]
    except Exception as error:
        return "blocked: " + type(error).__name__

def environs_with(marker):
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker in open("/proc/%s/environ" % pid, "rb").read():
                    found.append(pid)
            except Exception:
                pass
    return found

class Escape(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        report = {"uid": subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip()}
        for path in query.get("read", []):
            report["read " + path] = attempt(lambda: open(path).read())
        for pid in query.get("kill", []):
            report["kill " + pid] = attempt(lambda: os.kill(int(pid), 9))
        for addr in query.get("connect", []):
            host, port = addr.rsplit(":", 1)
            report["connect " + addr] = attempt(
                lambda: socket.create_connection((host, int(port)), timeout=1).close())
        report["environ"] = environs_with(b"OTHER_SECRET")
        body = json.dumps(report).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Escape).serve_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cannot_escape_its_container() {
    let mut parent = String::new();
    let mut subnet = String::new();
    let mut rig = Rig::start("executor-escape", true, |c| {
        parent = c.containers.cgroup_parent.clone();
        subnet = c.network.subnet.clone();
    })
    .await;
    // The platform's secrets beside the executor's data dir, as the micro cloud keeps them.
    let key = rig.data.path().join("signing.key");
    let endpoints = rig.data.path().join("endpoints.json");
    std::fs::write(&key, "PLATFORM-SIGNING-KEY").unwrap();
    std::fs::write(&endpoints, r#"{"token":"ADMIN-TOKEN"}"#).unwrap();

    // A neighbour with a secret in its environment.
    let (url, sha) = rig
        .droplets
        .put("other", droplet(&[("o.sh", "exec sleep 300\n")]));
    let mut other = rig.start_message("bash o.sh", &url, &sha);
    other.app = "other-app".into();
    other.instance = "other-instance".into();
    other.uris.clear();
    other.health_check.kind = HealthCheckType::Process;
    other.env.insert("OTHER_SECRET".into(), "neighbour".into());
    assert!(rig.request_start(&other).await.accepted);
    rig.wait_state("other-instance", InstanceState::Running, WAIT)
        .await;
    let mut neighbour = Vec::new();
    wait_for(WAIT, "the neighbour's processes", || {
        neighbour = processes_in(&parent, "other-instance");
        let found = !neighbour.is_empty();
        async move { found }
    })
    .await;

    let (url, sha) = rig
        .droplets
        .put("escape", droplet(&[("escape.py", ESCAPE_APP)]));
    let start = rig.start_message("exec python3 escape.py", &url, &sha);
    let guid = start.instance.clone();
    assert!(rig.request_start(&start).await.accepted);
    rig.wait_state(&guid, InstanceState::Running, WAIT).await;
    let route = rig.registration(&guid, WAIT).await;

    // The platform's ports: on the host's loopback and on the bridge's own address.
    let gateway = {
        let base: std::net::Ipv4Addr = subnet.split('/').next().unwrap().parse().unwrap();
        std::net::Ipv4Addr::from(u32::from(base) + 1)
    };
    let agent_port = rig.agent().url().rsplit(':').next().unwrap().to_owned();
    let admin_port = rig.admin.port().to_string();
    let mut query = vec![
        format!("read={}", key.display()),
        format!("read={}", endpoints.display()),
        "read=/etc/shadow".to_owned(),
    ];
    for (pid, _) in &neighbour {
        query.push(format!("kill={pid}"));
    }
    for port in [&agent_port, &admin_port] {
        query.push(format!("connect=127.0.0.1:{port}"));
        query.push(format!("connect={gateway}:{port}"));
    }
    let page = reqwest::get(format!(
        "http://{}:{}/?{}",
        route.host,
        route.port,
        query.join("&")
    ))
    .await
    .unwrap();
    assert_eq!(page.status(), 200);
    let report: serde_json::Value = page.json().await.unwrap();
    assert_eq!(report["uid"], "2000", "{report:#}");
    assert_eq!(report["environ"], serde_json::json!([]), "{report:#}");
    let attempts = report.as_object().unwrap();
    assert_eq!(attempts.len(), 2 + 3 + neighbour.len() + 4, "{report:#}");
    for (what, outcome) in attempts {
        if what == "uid" || what == "environ" {
            continue;
        }
        let outcome = outcome.as_str().unwrap();
        assert!(
            outcome.starts_with("blocked")
                || (what == "read /etc/shadow" && outcome == "escaped: ''"),
            "{what}: {outcome}"
        );
    }
    // The neighbour lives on.
    assert!(!processes_in(&parent, "other-instance").is_empty());
    rig.stop().await;
}
