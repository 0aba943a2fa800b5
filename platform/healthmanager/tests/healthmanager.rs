//! The health manager against the real cloud controller on loopback, fake executors on the
//! in-process bus and a fake agent that records the HM lines: a crash is restarted through
//! the controller's restart endpoint at once; with the controller stopped, crashes are still
//! restarted from the overheard start request and extra instances are held, not stopped; a
//! cell's crash or heartbeat about another cell's instance is dropped and counted, never
//! restarted.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hydrant_api::{Client, EventFilter};
use hydrant_bus::messages::{
    self, ExecutorCrash, ExecutorHeartbeat, ExecutorReply, InstanceHeartbeat, InstanceState,
    Resources, StartInstance, StopInstance,
};
use hydrant_bus::{Bus, Config as BusConfig};
use hydrant_emitter::Registry;
use hydrant_testkit::{FakeAgent, scrape, scrape_metric, wait_for};
use tempfile::TempDir;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);
const ADMIN_PASSWORD: &str = "admin-password-1";

/// A running cloud controller.
struct Cc {
    admin: Client,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), hydrant_cloudcontroller::Error>>,
}

async fn start_cc(dir: &std::path::Path, bus: &str) -> Cc {
    let mut config = hydrant_cloudcontroller::Config {
        listen: "127.0.0.1:0".into(),
        admin_listen: "127.0.0.1:0".into(),
        data_dir: dir.display().to_string(),
        admin_password: Some(ADMIN_PASSWORD.into()),
        password_hash_iterations: 1000,
        converge_interval_ms: 200,
        executor_request_timeout_ms: 1000,
        endpoints: BTreeMap::from([("firehose".into(), "ws://127.0.0.1:1".into())]),
        bus: BusConfig::inprocess(bus),
        ..hydrant_cloudcontroller::Config::default()
    };
    let listeners = hydrant_runtime::bind::<hydrant_cloudcontroller::CloudController>(&config)
        .await
        .unwrap();
    config.external_url = format!("http://{}", listeners.local_addr("api").unwrap());
    let url = config.external_url.clone();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(hydrant_runtime::run::<
        hydrant_cloudcontroller::CloudController,
    >(config, listeners, shutdown.clone()));
    let anonymous = Client::new(&url, None);
    wait_for(WAIT, "the API to answer", || {
        let anonymous = anonymous.clone();
        async move { anonymous.info().await.is_ok() }
    })
    .await;
    let token = anonymous.login("admin", ADMIN_PASSWORD).await.unwrap();
    Cc {
        admin: anonymous.with_token(token.access_token),
        shutdown,
        task,
    }
}

impl Cc {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

async fn push_started_app(client: &Client, name: &str) -> hydrant_api::App {
    let app = client
        .create_app(&hydrant_api::CreateApp {
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), b"<h1>hi</h1>").unwrap();
    client.push_dir(&app.guid, dir.path()).await.unwrap();
    let build = client
        .create_build(&app.guid, &hydrant_api::CreateBuild::default())
        .await
        .unwrap();
    client
        .wait_for_build(&build.guid, Duration::from_secs(30))
        .await
        .unwrap();
    client.start_app(&app.guid).await.unwrap()
}

#[derive(Debug, Default)]
struct ExecutorState {
    starts: Vec<StartInstance>,
    stops: Vec<StopInstance>,
    instances: Vec<InstanceHeartbeat>,
}

/// Answers start and stop requests and heartbeats what it runs every 100 ms.
struct FakeExecutor {
    id: String,
    bus: Bus,
    state: Arc<Mutex<ExecutorState>>,
    stop: CancellationToken,
}

impl FakeExecutor {
    async fn start(bus_name: &str, id: &str) -> Self {
        let bus = Bus::connect(
            &BusConfig::inprocess(bus_name),
            &Registry::new("executor", id),
        )
        .await
        .unwrap();
        let state = Arc::new(Mutex::new(ExecutorState::default()));
        let stop = CancellationToken::new();
        let mut starts = bus
            .subscribe(&messages::executor_start_subject(id))
            .await
            .unwrap();
        let mut stops = bus
            .subscribe(&messages::executor_stop_subject(id))
            .await
            .unwrap();
        let (task_bus, task_state, task_stop, me) =
            (bus.clone(), state.clone(), stop.clone(), id.to_owned());
        tokio::spawn(async move {
            let heartbeat = |s: &ExecutorState| ExecutorHeartbeat {
                executor_id: me.clone(),
                host: "127.0.0.1".into(),
                capacity: Resources {
                    memory_mb: 8192,
                    instances: 20,
                },
                used: Resources {
                    memory_mb: 256 * s.instances.len() as u64,
                    instances: u32::try_from(s.instances.len()).unwrap(),
                },
                instances: s.instances.clone(),
            };
            let mut ticks = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    () = task_stop.cancelled() => break,
                    _ = ticks.tick() => {}
                    Some(m) = starts.next() => {
                        let start: StartInstance = m.json().unwrap();
                        let mut s = task_state.lock().unwrap();
                        let crashed = s.instances.iter().any(|i| {
                            i.instance == start.instance && i.state == InstanceState::Crashed
                        });
                        s.starts.push(start.clone());
                        if !crashed && !s.instances.iter().any(|i| i.instance == start.instance) {
                            s.instances.push(InstanceHeartbeat {
                                app: start.app.clone(),
                                instance: start.instance.clone(),
                                index: start.index,
                                state: InstanceState::Running,
                                since: 1,
                                port: Some(61000),
                            });
                        }
                        let reply = ExecutorReply {
                            executor_id: me.clone(),
                            accepted: !crashed,
                            reason: None,
                        };
                        task_bus.reply(&m, messages::encode(&reply).unwrap()).unwrap();
                    }
                    Some(m) = stops.next() => {
                        let stop: StopInstance = m.json().unwrap();
                        let mut s = task_state.lock().unwrap();
                        s.instances.retain(|i| Some(&i.instance) != stop.instance.as_ref());
                        s.stops.push(stop);
                        let reply = ExecutorReply {
                            executor_id: me.clone(),
                            accepted: true,
                            reason: None,
                        };
                        let _ = task_bus.reply(&m, messages::encode(&reply).unwrap());
                    }
                }
                let hb = heartbeat(&task_state.lock().unwrap());
                task_bus
                    .publish_json(&messages::executor_heartbeat_subject(&me), &hb)
                    .unwrap();
            }
        });
        Self {
            id: id.to_owned(),
            bus,
            state,
            stop,
        }
    }

    fn starts_of(&self, app: &str, index: u32) -> Vec<StartInstance> {
        let s = self.state.lock().unwrap();
        s.starts
            .iter()
            .filter(|x| x.app == app && x.index == index)
            .cloned()
            .collect()
    }

    /// Crashes the running instance at `index` and publishes the crash event.
    fn crash(&self, app: &str, index: u32) -> String {
        let guid = {
            let mut s = self.state.lock().unwrap();
            let i = s
                .instances
                .iter_mut()
                .find(|i| i.app == app && i.index == index && i.state == InstanceState::Running)
                .unwrap();
            i.state = InstanceState::Crashed;
            i.instance.clone()
        };
        self.bus
            .publish_json(
                &messages::executor_crash_subject(&self.id),
                &ExecutorCrash {
                    executor_id: self.id.clone(),
                    app: app.into(),
                    instance: guid.clone(),
                    index,
                    reason: "CRASHED".into(),
                    exit_status: Some(1),
                    exit_description: "APP/PROC/WEB: Exited with status 1".into(),
                    crash_count: None,
                    crash_timestamp: 1,
                },
            )
            .unwrap();
        guid
    }
}

impl FakeExecutor {
    /// Marks the running instances at `indexes` crashed without a crash event, so the health
    /// manager learns of all of them from one heartbeat, as after a lost bus message.
    fn crash_quietly(&self, app: &str, indexes: &[u32]) {
        let mut s = self.state.lock().unwrap();
        for i in &mut s.instances {
            if i.app == app && indexes.contains(&i.index) && i.state == InstanceState::Running {
                i.state = InstanceState::Crashed;
            }
        }
    }

    /// Every start sent, in order, as (app, index).
    fn start_order(&self) -> Vec<(String, u32)> {
        let s = self.state.lock().unwrap();
        s.starts.iter().map(|x| (x.app.clone(), x.index)).collect()
    }
}

impl Drop for FakeExecutor {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn hm_config(
    bus: &str,
    api_url: &str,
    token: &str,
    agent: &FakeAgent,
) -> hydrant_healthmanager::Config {
    let mut config = hydrant_healthmanager::Config {
        api: hydrant_runtime::ApiSettings::with_token(api_url, token),
        poll_interval_secs: 1,
        stale_after_secs: 2,
        stale_after_failures: 1,
        request_timeout_ms: 1000,
        converge_interval_secs: 1,
        extra_grace_secs: 0,
        retry_secs: 1,
        admin_listen: "127.0.0.1:0".into(),
        bus: BusConfig::inprocess(bus),
        ..hydrant_healthmanager::Config::default()
    };
    config.telemetry.agent = Some(agent.url());
    config.telemetry.interval_secs = 1;
    config
}

async fn start_hm(config: hydrant_healthmanager::Config) -> CancellationToken {
    support::start_hm(config).await.0
}

/// A cloud controller, one fake executor (`e1`) and a health manager on the in-process bus
/// `bus`, the health manager reporting to a fake agent; the directory holds the controller's
/// data.
async fn world(bus: &str) -> (Cc, FakeExecutor, FakeAgent, CancellationToken, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cc = start_cc(dir.path(), bus).await;
    let executor = FakeExecutor::start(bus, "e1").await;
    let agent = FakeAgent::start();
    let token = cc.admin.token().unwrap().to_owned();
    let hm = start_hm(hm_config(bus, cc.admin.base_url(), &token, &agent)).await;
    (cc, executor, agent, hm, dir)
}

/// Pushes and starts `name`, waits for its first instance, then lets the health manager's copy
/// of desired state include the app.
async fn running_app(cc: &Cc, executor: &FakeExecutor, name: &str) -> hydrant_api::App {
    let app = push_started_app(&cc.admin, name).await;
    wait_for(WAIT, "the first instance", || async {
        executor.starts_of(&app.guid, 0).len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app
}

fn hm_lines(agent: &FakeAgent, app: &str) -> Vec<String> {
    agent.lines_from(app, hydrant_healthmanager::SOURCE_TYPE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_are_restarted_through_the_controller_at_once() {
    let (cc, executor, agent, hm, _dir) = world("hm-api").await;
    let app = running_app(&cc, &executor, "flaky").await;

    for crash in 1..=2 {
        let crashed = executor.crash(&app.guid, 0);
        let at = Instant::now();
        wait_for(WAIT, "a fresh start after the crash", || async {
            executor
                .starts_of(&app.guid, 0)
                .iter()
                .any(|s| s.instance != crashed && executor.starts_of(&app.guid, 0).len() > crash)
        })
        .await;
        assert!(
            at.elapsed() < Duration::from_secs(1),
            "crash {crash} restarted after {:?}",
            at.elapsed()
        );
    }
    let filter = EventFilter {
        target_guid: Some(app.guid.clone()),
        types: Some("audit.app.process.restart".into()),
    };
    let events = wait_for(WAIT, "two restart audit events", || async {
        let events = cc.admin.audit_events(&filter).await.unwrap();
        (events.len() == 2).then_some(events)
    })
    .await;
    assert!(events.iter().any(|e| e.data["crash_count"] == 2));
    wait_for(WAIT, "the HM lines", || async {
        let lines = hm_lines(&agent, &app.guid);
        lines
            .iter()
            .any(|l| l == "Restarting instance 0 (crash 1 of 200, next back-off 0 s)")
            && lines
                .iter()
                .any(|l| l == "Restarting instance 0 (crash 2 of 200, next back-off 30 s)")
    })
    .await;
    // The third crash waits 30 s: it is announced, not restarted.
    executor.crash(&app.guid, 0);
    wait_for(WAIT, "the back-off line", || async {
        hm_lines(&agent, &app.guid)
            .iter()
            .any(|l| l == "Instance 0 crashed (crash 3 of 200); restarting in 30 s")
    })
    .await;
    assert_eq!(executor.starts_of(&app.guid, 0).len(), 3);
    hm.cancel();
    cc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_instance_crashed_index_0_restarts_first() {
    let (cc, executor, agent, hm, _dir) = world("hm-herd").await;
    let app = push_started_app(&cc.admin, "herd").await;
    cc.admin
        .scale_app(
            &app.guid,
            &hydrant_api::ScaleApp {
                instances: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    wait_for(WAIT, "three instances", || async {
        (0..3).all(|i| executor.starts_of(&app.guid, i).len() == 1)
    })
    .await;
    // At once, before the health manager's next poll: starts it overheard since its copy
    // was fetched tell it the app is started and scaled.
    executor.crash_quietly(&app.guid, &[0, 1, 2]);
    wait_for(WAIT, "indexes 1 and 2 restarted after index 0", || async {
        (0..3).all(|i| executor.starts_of(&app.guid, i).len() == 2)
    })
    .await;
    let order: Vec<u32> = executor
        .start_order()
        .into_iter()
        .filter(|(a, _)| *a == app.guid)
        .map(|(_, i)| i)
        .skip(3)
        .collect();
    assert_eq!(order[0], 0, "index 0 must restart first: {order:?}");
    let lines = hm_lines(&agent, &app.guid);
    for index in [1, 2] {
        let waiting = format!(
            "Waiting to restart instance {index}: every instance of the app is crashed, so \
             index 0 restarts first"
        );
        assert_eq!(
            lines.iter().filter(|l| **l == waiting).count(),
            1,
            "said once for index {index}: {lines:?}"
        );
    }
    hm.cancel();
    cc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_controller_down_it_restarts_from_overheard_starts_and_holds_stops() {
    let (cc, executor, agent, hm, _dir) = world("hm-down").await;
    let app = running_app(&cc, &executor, "steady").await;
    cc.stop().await;

    // An instance nobody asked for (index 3 of a one-instance app).
    executor
        .state
        .lock()
        .unwrap()
        .instances
        .push(InstanceHeartbeat {
            app: app.guid.clone(),
            instance: "stray".into(),
            index: 3,
            state: InstanceState::Running,
            since: 1,
            port: None,
        });
    wait_for(WAIT, "the Holding line", || async {
        hm_lines(&agent, &app.guid)
            .iter()
            .any(|l| l.starts_with("Holding: desired state is "))
    })
    .await;

    let crashed = executor.crash(&app.guid, 0);
    let at = Instant::now();
    let restarted = wait_for(WAIT, "a copied start with a fresh guid", || async {
        executor
            .starts_of(&app.guid, 0)
            .into_iter()
            .find(|s| s.instance != crashed)
    })
    .await;
    assert!(at.elapsed() < Duration::from_secs(1), "{:?}", at.elapsed());
    let original = executor.starts_of(&app.guid, 0).remove(0);
    assert_eq!(restarted.droplet_sha256, original.droplet_sha256);
    assert_eq!(restarted.start_command, original.start_command);
    assert_eq!(restarted.executor_id, "e1");
    wait_for(WAIT, "the restart line", || async {
        hm_lines(&agent, &app.guid).iter().any(|l| {
            l.starts_with(
                "Restarting instance 0 (crash 1 of 200, next back-off 0 s) on executor e1",
            )
        })
    })
    .await;
    // Several convergence passes later the stray instance is still there.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let state = executor.state.lock().unwrap();
    assert!(state.stops.is_empty(), "{:?}", state.stops);
    assert!(state.instances.iter().any(|i| i.instance == "stray"));
    drop(state);
    hm.cancel();
}

/// A hostile cell (e2) reports the instance placed on e1 crashed, on its own subject under its
/// own name and under e1's, and heartbeats it as crashed: every report is dropped and counted
/// by reason, no crash is counted and nothing is restarted; e1's own crash report still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_crash_from_another_cell_restarts_nothing() {
    let bus = "hm-forged";
    let dir = tempfile::tempdir().unwrap();
    let cc = start_cc(dir.path(), bus).await;
    let executor = FakeExecutor::start(bus, "e1").await;
    let agent = FakeAgent::start();
    let token = cc.admin.token().unwrap().to_owned();
    let (hm, admin) = support::start_hm(hm_config(bus, cc.admin.base_url(), &token, &agent)).await;
    let app = running_app(&cc, &executor, "victim").await;
    let victim = executor.starts_of(&app.guid, 0).remove(0).instance;
    // The hostile cell joins after the placement, so the instance is e1's.
    let hostile = FakeExecutor::start(bus, "e2").await;
    let forged = |executor_id: &str| ExecutorCrash {
        executor_id: executor_id.into(),
        app: app.guid.clone(),
        instance: victim.clone(),
        index: 0,
        reason: "CRASHED".into(),
        exit_description: "forged".into(),
        ..ExecutorCrash::default()
    };
    let e2_crash = messages::executor_crash_subject("e2");
    hostile.bus.publish_json(&e2_crash, &forged("e2")).unwrap();
    hostile.bus.publish_json(&e2_crash, &forged("e1")).unwrap();
    let heartbeat = ExecutorHeartbeat {
        executor_id: "e2".into(),
        instances: vec![InstanceHeartbeat {
            app: app.guid.clone(),
            instance: victim.clone(),
            index: 0,
            state: InstanceState::Crashed,
            since: 1,
            port: None,
        }],
        ..ExecutorHeartbeat::default()
    };
    hostile
        .bus
        .publish_json(&messages::executor_heartbeat_subject("e2"), &heartbeat)
        .unwrap();
    // The reports were handled (and refused) before the counters moved.
    support::forged_reports_refused(admin, WAIT).await;
    // The drop counters pass Prometheus's own linter (Debian package `prometheus`, which
    // scripts/test installs).
    let text = scrape(admin).await.unwrap();
    let lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool cannot run ({e}): install the Debian package `prometheus`")
        });
    {
        use std::io::Write as _;
        lint.stdin
            .as_ref()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let lint = lint.wait_with_output().unwrap();
    assert!(
        lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    assert_eq!(executor.starts_of(&app.guid, 0).len(), 1);
    assert!(hostile.state.lock().unwrap().starts.is_empty());
    assert!(
        !hm_lines(&agent, &app.guid)
            .iter()
            .any(|l| l.contains("crash")),
        "{:?}",
        hm_lines(&agent, &app.guid)
    );

    // The genuine crash from e1 is restarted (on whichever cell has room: e2 runs none of
    // the app's instances, so the controller may well place it there).
    let crashed = executor.crash(&app.guid, 0);
    wait_for(WAIT, "a restart after the genuine crash", || async {
        executor
            .starts_of(&app.guid, 0)
            .iter()
            .chain(&hostile.starts_of(&app.guid, 0))
            .any(|s| s.instance != crashed)
    })
    .await;
    assert_eq!(
        scrape_metric(admin, "healthmanager_crashes_total", &[]).await,
        1.0
    );
    hm.cancel();
    cc.stop().await;
}
