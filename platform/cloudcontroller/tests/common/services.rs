//! Shared steps of the service tests (`tests/services.rs`, `tests/service_egress.rs`): a cloud
//! controller with the services settings a test picks, Hydrant's own broker on a slice of
//! ports, registering a broker with its offerings enabled, creating and binding through jobs
//! polled to the end, and reading the start messages a fake executor received.
//!
//! Each step waits on a condition with the shared deadline, never on a sleep.

// Each test binary uses part of the harness (and allows unwrap, expect and panic itself).
#![allow(dead_code, reason = "each test binary uses part of the shared harness")]

use std::path::Path;
use std::time::Duration;

use hydrant_api::Client;
use hydrant_api::services::{
    BindingFilter, BindingType, CreateServiceBinding, CreateServiceBroker, CreateServiceInstance,
    Job, ServiceBinding, ServiceBindingAnswer, ServiceInstanceAnswer,
};
use hydrant_bus::messages::StartInstance;
use hydrant_cloudcontroller::ServicesConfig;
use hydrant_testkit::wait_for;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::support::Cc;
use crate::support::{FakeExecutor, Options};

pub const WAIT: Duration = Duration::from_secs(30);
/// The basic auth every broker in these tests expects.
pub const USER: &str = "broker-user";
pub const PASSWORD: &str = "broker-pass";

/// Timings for a fake broker: a 1-second broker deadline, 1–2 s polls and orphan retries every
/// second, so the failure paths finish within a test's patience.
pub fn fast_services() -> ServicesConfig {
    ServicesConfig {
        allow_private_brokers: true,
        broker_timeout_secs: 1,
        poll_interval_secs: 1,
        max_poll_interval_secs: 2,
        orphan_retry_secs: 1,
        ..ServicesConfig::default()
    }
}

/// Timings for Hydrant's own broker: its default deadline (a real node takes time to start),
/// polled every 1–2 s.
pub fn real_broker_services() -> ServicesConfig {
    ServicesConfig {
        allow_private_brokers: true,
        poll_interval_secs: 1,
        max_poll_interval_secs: 2,
        ..ServicesConfig::default()
    }
}

/// The controller on loopback over `data` and the in-process `bus` with the services settings
/// `services`, logged in as admin.
pub async fn start_cc(data: &Path, bus: &str, services: ServicesConfig) -> Cc {
    let mut options = Options::new(bus);
    options.services = Some(services);
    Cc::start(data, &options).await
}

impl Cc {
    /// Registers the broker at `url` as `name` and enables every plan of `offerings`; the
    /// offerings its catalog listed.
    pub async fn register(&self, name: &str, url: &str, offerings: &[&str]) -> Vec<String> {
        let registered = self
            .admin
            .create_service_broker(&CreateServiceBroker {
                name: name.into(),
                url: url.into(),
                username: USER.into(),
                password: PASSWORD.into(),
            })
            .await
            .unwrap();
        for offering in offerings {
            self.enable_offering(offering).await;
        }
        registered.offerings
    }
}

/// The setup of a test of Hydrant's own broker: the broker serving Redis on the port slice
/// from `first_port`, a controller on `bus` with `services` that registered it (offering
/// `redis` enabled), and one fake executor. The controller's data dir lives as long as `dir`.
pub struct RedisRig {
    pub broker: RealBroker,
    pub cc: Cc,
    pub executor: FakeExecutor,
    /// The offerings the broker's catalog listed.
    pub offerings: Vec<String>,
    pub dir: tempfile::TempDir,
}

impl RedisRig {
    pub async fn start(first_port: u16, bus: &str, services: ServicesConfig) -> Self {
        let broker = RealBroker::start_redis(port_slice(first_port)).await;
        let dir = tempfile::tempdir().unwrap();
        let cc = start_cc(dir.path(), bus, services).await;
        let executor = FakeExecutor::start(bus, "cell-1", 4096, 10, false).await;
        let offerings = cc.register("hydrant", &broker.url, &["redis"]).await;
        Self {
            broker,
            cc,
            executor,
            offerings,
            dir,
        }
    }
}

/// Hydrant's own broker on loopback, Redis only, on 24 ports from `first`.
pub struct RealBroker {
    pub url: String,
    _dir: tempfile::TempDir,
    stop: CancellationToken,
    task: JoinHandle<Result<(), hydrant_broker::Error>>,
}

impl RealBroker {
    /// Fails the test, naming the Debian package, when `redis-server` is missing.
    pub async fn start_redis(first: u16) -> Self {
        if let Err(why) = hydrant_broker::backend::detect("redis") {
            panic!("this test needs redis-server (Debian package redis-server): {why}");
        }
        let dir = tempfile::tempdir().unwrap();
        let config = hydrant_broker::Config {
            listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            username: USER.into(),
            password: Some(PASSWORD.into()),
            data_dir: dir.path().to_path_buf(),
            ports: hydrant_broker::PortRange {
                first,
                last: first + 23,
            },
            offerings: vec!["redis".into()],
            ..hydrant_broker::Config::default()
        };
        let listeners = hydrant_runtime::bind::<hydrant_broker::Broker>(&config)
            .await
            .unwrap();
        let url = format!("http://{}", listeners.local_addr("api").unwrap());
        let stop = CancellationToken::new();
        let task = tokio::spawn(hydrant_runtime::run::<hydrant_broker::Broker>(
            config,
            listeners,
            stop.clone(),
        ));
        Self {
            url,
            _dir: dir,
            stop,
            task,
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the broker stops")
            .unwrap()
            .unwrap();
    }
}

/// The first port of this process's slice of 24 above `base`, so parallel runs do not collide.
pub fn port_slice(base: u16) -> u16 {
    base + u16::try_from(std::process::id() % 40).unwrap() * 24
}

/// Waits for `job` to finish; the job as it ended.
pub async fn finished(client: &Client, job: &Job) -> Job {
    let guid = job.guid.clone();
    wait_for(WAIT, "the job to finish", || {
        let client = client.clone();
        let guid = guid.clone();
        async move { client.job(&guid).await.unwrap().is_done() }
    })
    .await;
    client.job(&job.guid).await.unwrap_or_else(|_| job.clone())
}

/// Waits for `job` and asserts it completed.
pub async fn complete(client: &Client, job: &Job) -> Job {
    let job = finished(client, job).await;
    assert_eq!(job.state, "COMPLETE", "{job:?}");
    job
}

/// Waits for `job` and asserts it failed.
pub async fn failed(client: &Client, job: &Job) -> Job {
    let job = finished(client, job).await;
    assert_eq!(job.state, "FAILED", "{job:?}");
    job
}

/// Waits for `job`, when there is one (a user-provided instance's answers have none), and
/// asserts it completed.
pub async fn complete_if(client: &Client, job: Option<&Job>) {
    if let Some(job) = job {
        complete(client, job).await;
    }
}

/// Asks for a managed instance of `offering` `plan` named `name` in the default space.
pub async fn try_create(
    client: &Client,
    offering: &str,
    plan: &str,
    name: &str,
) -> Result<ServiceInstanceAnswer, hydrant_api::Error> {
    client
        .create_service_instance(&CreateServiceInstance {
            name: name.into(),
            offering: Some(offering.into()),
            plan: Some(plan.into()),
            ..CreateServiceInstance::default()
        })
        .await
}

/// Creates a managed instance of `offering` `plan` named `name`, waits for its job and
/// asserts it completed.
pub async fn create_complete(
    client: &Client,
    offering: &str,
    plan: &str,
    name: &str,
) -> ServiceInstanceAnswer {
    let answer = try_create(client, offering, plan, name).await.unwrap();
    complete(client, answer.job.as_ref().unwrap()).await;
    answer
}

/// Binds `instance` to `app` (named `name` when given).
pub async fn bind_app(
    client: &Client,
    instance: &str,
    app: &str,
    name: Option<&str>,
) -> Result<ServiceBindingAnswer, hydrant_api::Error> {
    client
        .create_service_binding(&CreateServiceBinding {
            kind: BindingType::App,
            service_instance: instance.to_owned(),
            app: Some(app.to_owned()),
            name: name.map(str::to_owned),
            ..CreateServiceBinding::default()
        })
        .await
}

/// Creates a service key `name` on `instance`.
pub async fn create_key(client: &Client, instance: &str, name: &str) -> ServiceBindingAnswer {
    client
        .create_service_binding(&CreateServiceBinding {
            kind: BindingType::Key,
            service_instance: instance.to_owned(),
            name: Some(name.into()),
            ..CreateServiceBinding::default()
        })
        .await
        .unwrap()
}

/// The bindings of `instance`.
pub async fn bindings_of(client: &Client, instance: &str) -> Vec<ServiceBinding> {
    client
        .list_service_bindings(&BindingFilter {
            service_instance: Some(instance),
            ..BindingFilter::default()
        })
        .await
        .unwrap()
}

/// A staged one-page static app called `name`.
pub async fn static_app(client: &Client, name: &str) -> hydrant_api::App {
    let files: &[(&str, &[u8], u32)] = &[("index.html", b"<h1>hi</h1>", 0o644)];
    crate::support::push_and_stage(client, name, files, None)
        .await
        .0
}

/// How many start messages `executor` received for `app`.
pub fn starts_of(executor: &FakeExecutor, app: &str) -> usize {
    executor
        .state
        .lock()
        .unwrap()
        .starts
        .iter()
        .filter(|s| s.app == app)
        .count()
}

/// The next start message for `app` after the first `seen` ones.
pub async fn next_start(executor: &FakeExecutor, app: &str, seen: usize) -> StartInstance {
    let state = executor.state.clone();
    let app = app.to_owned();
    let mine = move || {
        state
            .lock()
            .unwrap()
            .starts
            .iter()
            .filter(|s| s.app == app)
            .nth(seen)
            .cloned()
    };
    wait_for(WAIT, "a start message", || {
        let found = mine().is_some();
        async move { found }
    })
    .await;
    mine().unwrap()
}

/// Restarts `app` and returns the start message that follows.
pub async fn restart_and_next_start(
    client: &Client,
    executor: &FakeExecutor,
    app: &str,
) -> StartInstance {
    let seen = starts_of(executor, app);
    client.restart_app(app).await.unwrap();
    next_start(executor, app, seen).await
}

/// The `VCAP_SERVICES` a start message carries.
pub fn vcap_of(start: &StartInstance) -> Value {
    serde_json::from_str(&start.env["VCAP_SERVICES"]).unwrap()
}
