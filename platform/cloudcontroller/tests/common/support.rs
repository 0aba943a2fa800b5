//! Test harness for the cloud controller: the real role on loopback and fake executors on the
//! in-process bus. The fake v2 Ingress agent that records its log lines is
//! `hydrant_testkit::FakeAgent`.

// Each test binary uses part of the harness (and allows unwrap, expect and panic itself).
#![allow(dead_code, reason = "each test binary uses part of the shared harness")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hydrant_api::Client;
use hydrant_bus::messages::{
    self, ExecutorHeartbeat, ExecutorReply, InstanceHeartbeat, InstanceState, Resources,
    StartInstance, StopInstance,
};
use hydrant_bus::{Bus, Config as BusConfig};
use hydrant_cloudcontroller::Config;
use hydrant_emitter::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const ADMIN_PASSWORD: &str = "admin-password-1";

/// A running cloud controller.
#[derive(Debug)]
pub struct Cc {
    pub url: String,
    pub admin_url: String,
    pub admin: Client,
    pub data_dir: PathBuf,
    /// The configuration it runs with.
    pub config: Config,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), hydrant_cloudcontroller::Error>>>,
}

/// Options a test may change.
#[derive(Debug)]
pub struct Options {
    pub bus: String,
    pub agent: Option<String>,
    pub max_blob_bytes: u64,
    pub allow_private_drains: bool,
    pub clients: Vec<hydrant_cloudcontroller::ClientConfig>,
    /// PBKDF2 iterations; tests keep it low unless they time password checks.
    pub password_hash_iterations: u32,
    /// `[db] url` (default: SQLite in the data dir).
    pub db_url: Option<String>,
    /// `blobs_dir` and `token_keys_dir`: what controllers sharing one database share.
    pub blobs_dir: Option<PathBuf>,
    pub token_keys_dir: Option<PathBuf>,
    pub instance_id: Option<String>,
    pub services: Option<hydrant_cloudcontroller::ServicesConfig>,
    /// `[staging_isolation]` and `staging_timeout_secs` (default: the role's defaults).
    pub staging_isolation: Option<hydrant_cloudcontroller::StagingIsolation>,
    pub staging_timeout_secs: Option<u64>,
}

impl Options {
    pub fn new(bus: &str) -> Self {
        Self {
            bus: bus.to_owned(),
            agent: None,
            max_blob_bytes: 1 << 30,
            allow_private_drains: false,
            clients: Vec::new(),
            password_hash_iterations: 1000,
            db_url: None,
            blobs_dir: None,
            token_keys_dir: None,
            instance_id: None,
            services: None,
            staging_isolation: None,
            staging_timeout_secs: None,
        }
    }

    /// The controller's configuration for these options over `data_dir`, its listeners on
    /// loopback ports the kernel picks.
    pub fn config(&self, data_dir: &Path) -> Config {
        let mut config = Config {
            listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            data_dir: data_dir.display().to_string(),
            admin_password: Some(ADMIN_PASSWORD.into()),
            password_hash_iterations: self.password_hash_iterations,
            converge_interval_ms: 200,
            executor_request_timeout_ms: 1000,
            max_blob_bytes: self.max_blob_bytes,
            allow_private_drains: self.allow_private_drains,
            clients: self.clients.clone(),
            endpoints: BTreeMap::from([("firehose".into(), "ws://127.0.0.1:1".into())]),
            bus: BusConfig::inprocess(&self.bus),
            // Collection of unreferenced blobs runs every second (the grace period stays an
            // hour): a test ages the files it wants collected.
            blob_gc_interval_secs: 1,
            ..Config::default()
        };
        if let Some(url) = &self.db_url {
            config.db.url.clone_from(url);
        }
        config.blobs_dir = self.blobs_dir.as_ref().map(|d| d.display().to_string());
        config.token_keys_dir = self
            .token_keys_dir
            .as_ref()
            .map(|d| d.display().to_string());
        if let Some(id) = &self.instance_id {
            config.instance_id.clone_from(id);
        }
        if let Some(services) = &self.services {
            config.services = services.clone();
        }
        if let Some(isolation) = &self.staging_isolation {
            config.staging_isolation = isolation.clone();
        }
        if let Some(secs) = self.staging_timeout_secs {
            config.staging_timeout_secs = secs;
        }
        config.telemetry.agent.clone_from(&self.agent);
        config.telemetry.interval_secs = 1;
        config
    }
}

impl Cc {
    pub async fn start(data_dir: &Path, options: &Options) -> Self {
        let mut config = options.config(data_dir);
        let listeners = hydrant_runtime::bind::<hydrant_cloudcontroller::CloudController>(&config)
            .await
            .unwrap();
        let addr = listeners.local_addr("api").unwrap();
        let admin_addr = listeners.local_addr("admin").unwrap();
        config.external_url = format!("http://{addr}");
        let url = config.external_url.clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(hydrant_runtime::run::<
            hydrant_cloudcontroller::CloudController,
        >(config.clone(), listeners, shutdown.clone()));
        let anonymous = Client::new(&url, None);
        // Staging isolation sets up its network at start: a minute, not seconds.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while anonymous.info().await.is_err() {
            // A controller that stopped will never answer: say why.
            if task.is_finished() {
                panic!("the cloud controller stopped: {:?}", task.await);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for the API to answer (60s)"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let token = anonymous.login("admin", ADMIN_PASSWORD).await.unwrap();
        Self {
            admin: anonymous.with_token(token.access_token),
            url,
            admin_url: format!("http://{admin_addr}"),
            data_dir: data_dir.to_path_buf(),
            config,
            shutdown,
            task: Some(task),
        }
    }

    /// A cloud controller with default [`Options`] on bus `bus`, on a fresh data directory the
    /// caller keeps alive for as long as it uses the controller.
    pub async fn fresh(bus: &str) -> (tempfile::TempDir, Self) {
        let dir = tempfile::tempdir().unwrap();
        let cc = Self::start(dir.path(), &Options::new(bus)).await;
        (dir, cc)
    }

    /// Creates the app `name` in the default space, as the admin.
    pub async fn app(&self, name: &str) -> hydrant_api::App {
        app_in(&self.admin, name, None).await
    }

    /// The controller's `/metrics` text, from its admin listener.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin_url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Makes every plan of the service offering `offering` visible to everyone, as the admin.
    pub async fn enable_offering(&self, offering: &str) {
        self.admin
            .set_service_access(&hydrant_api::services::ServiceAccess {
                offering: offering.into(),
                plan: None,
                broker: None,
                enable: true,
            })
            .await
            .unwrap();
    }

    pub fn anonymous(&self) -> Client {
        Client::new(&self.url, None)
    }

    /// A client logged in as a new user with `role` in `space` (no role when `None`).
    pub async fn user(
        &self,
        name: &str,
        space_guid: Option<(&str, hydrant_api::SpaceRole)>,
    ) -> Client {
        let password = format!("{name}-password");
        self.admin
            .create_user(&hydrant_api::CreateUser {
                username: name.into(),
                password: password.clone(),
                admin: false,
            })
            .await
            .unwrap();
        if let Some((space, role)) = space_guid {
            self.admin.assign_role(space, name, role).await.unwrap();
        }
        let token = self.anonymous().login(name, &password).await.unwrap();
        self.anonymous().with_token(token.access_token)
    }

    /// Ends the controller at once, as a lost host would: its task is dropped mid-flight,
    /// nothing handed over (its leases expire).
    pub async fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            // Staging containers are torn down on the way out.
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("the cloud controller stops within 30 s")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Cc {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Creates the app `name` as `client`, in the space `space` (a guid or name) or the default one.
pub async fn app_in(client: &Client, name: &str, space: Option<&str>) -> hydrant_api::App {
    client
        .create_app(&hydrant_api::CreateApp {
            name: name.into(),
            space: space.map(str::to_owned),
            ..hydrant_api::CreateApp::default()
        })
        .await
        .unwrap()
}

/// Asserts the controller's `/metrics` text `metrics` counts `count` in its counter
/// `cloudcontroller_<name>_total` with the tag `key="value"`.
pub fn assert_counter(metrics: &str, name: &str, (key, value): (&str, &str), count: u64) {
    let line = format!(
        "cloudcontroller_{name}_total{{source_id=\"cloudcontroller\",instance_id=\"0\",{key}=\"{value}\"}} {count}"
    );
    assert!(metrics.contains(&line), "{line} not in {metrics}");
}

/// The audit events about `target_guid` that `client` may read, of type `kind` or of any.
pub async fn events_of(
    client: &Client,
    target_guid: &str,
    kind: Option<&str>,
) -> Vec<hydrant_api::AuditEvent> {
    client
        .audit_events(&hydrant_api::EventFilter {
            target_guid: Some(target_guid.to_owned()),
            types: kind.map(str::to_owned),
        })
        .await
        .unwrap()
}

/// Scales the app `app_guid` to `instances` as `client`.
pub async fn scale_to(client: &Client, app_guid: &str, instances: u32) {
    client
        .scale_app(
            app_guid,
            &hydrant_api::ScaleApp {
                instances: Some(instances),
                ..hydrant_api::ScaleApp::default()
            },
        )
        .await
        .unwrap();
}

/// Writes `files` (path, content, mode) under a new temp dir.
pub fn app_dir(files: &[(&str, &[u8], u32)]) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    for (path, content, mode) in files {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, content).unwrap();
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    dir
}

/// Creates an app, pushes `files`, stages it and returns (app, build).
pub async fn push_and_stage(
    client: &Client,
    name: &str,
    files: &[(&str, &[u8], u32)],
    command: Option<&str>,
) -> (hydrant_api::App, hydrant_api::Build) {
    let app = client
        .create_app(&hydrant_api::CreateApp {
            name: name.into(),
            command: command.map(str::to_owned),
            ..Default::default()
        })
        .await
        .unwrap();
    let dir = app_dir(files);
    client.push_dir(&app.guid, dir.path()).await.unwrap();
    let build = client
        .create_build(&app.guid, &hydrant_api::CreateBuild::default())
        .await
        .unwrap();
    let build = client
        .wait_for_build(&build.guid, Duration::from_secs(30))
        .await
        .unwrap();
    let app = client.app(&app.guid).await.unwrap();
    (app, build)
}

// === fake executors ===

/// What a fake executor was asked and what it runs.
#[derive(Debug, Default)]
pub struct ExecutorState {
    pub starts: Vec<StartInstance>,
    pub stops: Vec<StopInstance>,
    pub instances: Vec<InstanceHeartbeat>,
    pub memory: BTreeMap<String, u64>,
}

/// A fake executor: answers start and stop requests on the bus and heartbeats what it runs.
#[derive(Debug)]
pub struct FakeExecutor {
    pub id: String,
    pub state: Arc<Mutex<ExecutorState>>,
    stop: CancellationToken,
}

impl FakeExecutor {
    pub async fn start(bus_name: &str, id: &str, memory_mb: u64, slots: u32, refuse: bool) -> Self {
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
        let heartbeat = {
            let state = state.clone();
            let id = id.to_owned();
            move || {
                let s = state.lock().unwrap();
                ExecutorHeartbeat {
                    executor_id: id.clone(),
                    host: "127.0.0.1".into(),
                    capacity: Resources {
                        memory_mb,
                        instances: slots,
                    },
                    used: Resources {
                        memory_mb: s.memory.values().sum(),
                        instances: u32::try_from(s.instances.len()).unwrap(),
                    },
                    instances: s.instances.clone(),
                }
            }
        };
        let task_state = state.clone();
        let task_stop = stop.clone();
        let id_owned = id.to_owned();
        let heartbeat_subject = messages::executor_heartbeat_subject(id);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    () = task_stop.cancelled() => break,
                    _ = ticks.tick() => {
                        bus.publish_json(&heartbeat_subject, &heartbeat()).unwrap();
                    }
                    Some(message) = starts.next() => {
                        let start: StartInstance = message.json().unwrap();
                        let accepted = !refuse;
                        {
                            let mut s = task_state.lock().unwrap();
                            s.starts.push(start.clone());
                            if accepted && !s.instances.iter().any(|i| i.instance == start.instance) {
                                s.memory.insert(start.instance.clone(), start.memory_mb);
                                s.instances.push(InstanceHeartbeat {
                                    app: start.app.clone(),
                                    instance: start.instance.clone(),
                                    index: start.index,
                                    state: InstanceState::Running,
                                    since: 1,
                                    port: Some(61000),
                                });
                            }
                        }
                        let reply = ExecutorReply {
                            executor_id: id_owned.clone(),
                            accepted,
                            reason: (!accepted).then(|| "insufficient memory".to_owned()),
                        };
                        bus.reply(&message, messages::encode(&reply).unwrap()).unwrap();
                        bus.publish_json(&heartbeat_subject, &heartbeat()).unwrap();
                    }
                    Some(message) = stops.next() => {
                        let stop: StopInstance = message.json().unwrap();
                        {
                            let mut s = task_state.lock().unwrap();
                            s.stops.push(stop.clone());
                            let gone: Vec<String> = s
                                .instances
                                .iter()
                                .filter(|i| i.app == stop.app
                                    && stop.instance.as_ref().is_none_or(|g| *g == i.instance))
                                .map(|i| i.instance.clone())
                                .collect();
                            s.instances.retain(|i| !gone.contains(&i.instance));
                            for g in gone {
                                s.memory.remove(&g);
                            }
                        }
                        let reply = ExecutorReply {
                            executor_id: id_owned.clone(),
                            accepted: true,
                            reason: None,
                        };
                        let _ = bus.reply(&message, messages::encode(&reply).unwrap());
                        bus.publish_json(&heartbeat_subject, &heartbeat()).unwrap();
                    }
                }
            }
        });
        Self {
            id: id.to_owned(),
            state,
            stop,
        }
    }

    /// Instances of `app` it runs.
    pub fn running(&self, app: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .instances
            .iter()
            .filter(|i| i.app == app)
            .count()
    }

    /// Marks an instance crashed in the next heartbeats.
    pub fn crash(&self, app: &str, index: u32) -> String {
        let mut s = self.state.lock().unwrap();
        let i = s
            .instances
            .iter_mut()
            .find(|i| i.app == app && i.index == index)
            .unwrap();
        i.state = InstanceState::Crashed;
        i.instance.clone()
    }
}

impl Drop for FakeExecutor {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
