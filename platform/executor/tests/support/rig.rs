//! Test rig for the executor: an isolated in-process bus, a fake agent recording envelopes
//! (`hydrant_testkit::FakeAgent`), a tiny HTTP droplet server, droplets built on the fly, and
//! helpers that wait for conditions with deadlines.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    reason = "test code"
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hydrant_bus::messages::{
    self, ExecutorCrash, ExecutorHeartbeat, ExecutorReply, HealthCheck, HealthCheckType,
    InstanceState, RegistryMessage, StartInstance, StopInstance,
};
use hydrant_bus::{Bus, Subscription};
use hydrant_emitter::Registry;
use hydrant_envelope::v2;
use hydrant_executor::Config;
use hydrant_testkit::{FakeAgent, dead_addr, wait_for};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Log envelopes as (envelope, source_type, is_err, payload).
pub fn logs(agent: &FakeAgent) -> Vec<(v2::Envelope, String, bool, Vec<u8>)> {
    agent
        .envelopes()
        .into_iter()
        .filter_map(|e| match &e.message {
            Some(v2::envelope::Message::Log(l)) => {
                let st = e.tags.get("source_type").cloned().unwrap_or_default();
                let is_err = l.r#type == v2::log::Type::Err as i32;
                let payload = l.payload.to_vec();
                Some((e, st, is_err, payload))
            }
            _ => None,
        })
        .collect()
}

/// Serves droplets over HTTP from memory.
#[derive(Clone, Default)]
pub struct DropletServer {
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    addr: Arc<Mutex<Option<SocketAddr>>>,
}

impl DropletServer {
    pub async fn start() -> Self {
        let server = Self::default();
        let files = server.files.clone();
        let app = axum::Router::new().route(
            "/droplets/{name}",
            axum::routing::get(
                move |axum::extract::Path(name): axum::extract::Path<String>| {
                    let files = files.clone();
                    async move {
                        match files.lock().unwrap().get(&name) {
                            Some(bytes) => Ok(bytes.clone()),
                            None => Err(axum::http::StatusCode::NOT_FOUND),
                        }
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        *server.addr.lock().unwrap() = Some(listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        server
    }

    /// Publishes `bytes` and returns (url, sha256).
    pub fn put(&self, name: &str, bytes: Vec<u8>) -> (String, String) {
        let sha = sha256(&bytes);
        self.files.lock().unwrap().insert(name.to_owned(), bytes);
        let addr = self.addr.lock().unwrap().unwrap();
        (
            format!("http://user:secret@{addr}/droplets/{name}?token=t0ps3cret"),
            sha,
        )
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A tar.gz with the given files (mode 0755).
pub fn droplet(files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, body) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        builder
            .append_data(&mut header, path, body.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// A tar.gz with one entry whose name is written raw (so `..` gets past the builder).
pub fn evil_droplet(raw_name: &str) -> Vec<u8> {
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..raw_name.len()].copy_from_slice(raw_name.as_bytes());
    header.set_size(5);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    builder.append(&header, &b"evil\n"[..]).unwrap();
    builder.into_inner().unwrap().finish().unwrap()
}

/// Rigs started by this test process, to give each its own bridge and subnet.
static RIGS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// One executor under test with everything around it.
pub struct Rig {
    /// The container network to remove at `stop` (`None` when unisolated).
    network: Option<hydrant_container::net::NetConfig>,
    /// The executor's cgroup parent, to remove at `stop`.
    cgroup_parent: Option<String>,
    pub bus: Bus,
    agent: Option<FakeAgent>,
    pub droplets: DropletServer,
    pub admin: SocketAddr,
    pub executor_id: String,
    pub data: tempfile::TempDir,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<Result<(), hydrant_executor::Error>>>,
    pub heartbeats: Subscription,
    pub crashes: Subscription,
    pub registers: Subscription,
    pub unregisters: Subscription,
}

impl Rig {
    /// Starts an executor (in containers unless `tweak` says otherwise) with short timings; `tweak` adjusts the config. `agent`: record
    /// envelopes (true) or point at a dead address (false).
    pub async fn start(name: &str, agent: bool, tweak: impl FnOnce(&mut Config)) -> Self {
        let bus_config = hydrant_bus::Config::inprocess(name);
        let bus = Bus::connect(&bus_config, &Registry::new("test", "0"))
            .await
            .unwrap();
        let heartbeats = bus
            .subscribe(&messages::every_cell(messages::EXECUTOR_HEARTBEAT))
            .await
            .unwrap();
        let crashes = bus
            .subscribe(&messages::every_cell(messages::EXECUTOR_CRASH))
            .await
            .unwrap();
        // Executors register on their own cell's subject (`router.register.<executor_id>`).
        let registers = bus.subscribe("router.register.*").await.unwrap();
        let unregisters = bus.subscribe("router.unregister.*").await.unwrap();
        let agent = agent.then(FakeAgent::start);
        let agent_url = agent
            .as_ref()
            .map_or_else(|| format!("http://{}", dead_addr()), FakeAgent::url);
        let droplets = DropletServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let mut config = Config {
            executor_id: "cell-1".to_owned(),
            data_dir: data.path().join("executor"),
            admin_listen: "127.0.0.1:0".to_owned(),
            port_range: [20000, 40000],
            stop_timeout_secs: 1,
            metrics_interval_secs: 1,
            startup_timeout_secs: 10,
            startup_check_interval_ms: 50,
            memory_check_interval_ms: 100,
            heartbeat_interval_secs: 60,
            register_interval_secs: 60,
            bus: bus_config,
            ..Config::default()
        };
        // Each rig its own cgroup parent, bridge and subnet: tests run side by side, and each
        // executor removes what it finds under its own at start.
        let n = RIGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        config.containers.cgroup_parent = format!("hydrant-test/{name}-{pid}");
        config.network.bridge = format!("x{:04x}{n:x}", pid & 0xffff);
        // 3,200 /22 subnets in 10.200.0.0-10.249.255.255, four per process by its pid: two
        // test processes share one only when their pids differ by a multiple of 800 (by
        // `pid % 50` alone one pair in fifty did, and the second executor refused to start on
        // the subnet the first one's bridge held).
        let slot = (pid % 800 * 4 + n % 4) % 3200;
        config.network.subnet = format!("10.{}.{}.0/22", 200 + slot / 64, (slot % 64) * 4);
        config.telemetry.agent = Some(agent_url);
        config.telemetry.interval_secs = 1;
        tweak(&mut config);
        let executor_id = config.executor_id.clone();
        let config_isolation = config.isolation;
        let config_network = config.network.clone();
        let config_parent = config.containers.cgroup_parent.clone();
        let listeners = hydrant_runtime::bind::<hydrant_executor::Executor>(&config)
            .await
            .unwrap();
        let admin = listeners.local_addr("admin").unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(hydrant_runtime::run::<hydrant_executor::Executor>(
            config,
            listeners,
            shutdown.clone(),
        ));
        let rig = Self {
            network: (config_isolation == hydrant_executor::Isolation::Container)
                .then_some(config_network),
            cgroup_parent: Some(config_parent),
            bus,
            agent,
            droplets,
            admin,
            executor_id,
            data,
            shutdown,
            task: Some(task),
            heartbeats,
            crashes,
            registers,
            unregisters,
        };
        // The executor is ready once its start subject answers. Its start (container bridge,
        // nftables, the bus) takes well under a second alone but several beside the whole suite
        // on two cores: the deadline is for a start that never comes, not a slow one.
        let probe = StopInstance {
            executor_id: rig.executor_id.clone(),
            app: "nobody".into(),
            ..StopInstance::default()
        };
        let mut rig = rig;
        let mut task = rig.task.take().expect("the rig's executor task");
        let ready = wait_for(Duration::from_secs(30), "executor ready", || async {
            rig.try_stop(&probe).await.is_ok()
        });
        // An executor that cannot start ends its task: say why rather than time out.
        tokio::select! {
            () = ready => {}
            ended = &mut task => panic!("the executor stopped before it was ready: {ended:?}"),
        }
        rig.task = Some(task);
        rig
    }

    /// The fake agent recording the executor's envelopes.
    pub fn agent(&self) -> &FakeAgent {
        self.agent
            .as_ref()
            .expect("this rig was started with `agent: true`")
    }

    pub fn start_message(&self, cmd: &str, url: &str, sha: &str) -> StartInstance {
        StartInstance {
            executor_id: self.executor_id.clone(),
            app: "app-guid-1".into(),
            app_name: "shop".into(),
            instance: format!("inst-{}", fastrand::u64(..)),
            index: 3,
            droplet_url: url.into(),
            droplet_sha256: sha.into(),
            start_command: cmd.into(),
            env: Default::default(),
            memory_mb: 256,
            disk_mb: 64,
            uris: vec!["shop.hydrant.test".into()],
            health_check: HealthCheck {
                kind: HealthCheckType::Port,
                endpoint: None,
                timeout_secs: None,
            },
            tags: [("space_id".to_owned(), "space-1".to_owned())].into(),
            egress: Vec::new(),
            stop_timeout_secs: None,
        }
    }

    /// Serves a droplet holding only `file` (the shell script `script`) as `name`, asks the
    /// executor to run `bash file` from it and checks that it took the request.
    pub async fn start_script(&self, name: &str, file: &str, script: &str) -> StartInstance {
        let (url, sha) = self.droplets.put(name, droplet(&[(file, script)]));
        let start = self.start_message(&format!("bash {file}"), &url, &sha);
        assert!(self.request_start(&start).await.accepted, "{name} refused");
        start
    }

    pub async fn request_start(&self, start: &StartInstance) -> ExecutorReply {
        let reply = self
            .bus
            .request(
                &messages::executor_start_subject(&self.executor_id),
                messages::encode(start).unwrap(),
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        reply.json().unwrap()
    }

    async fn try_stop(&self, stop: &StopInstance) -> Result<ExecutorReply, hydrant_bus::Error> {
        let reply = self
            .bus
            .request(
                &messages::executor_stop_subject(&self.executor_id),
                messages::encode(stop).unwrap(),
                Duration::from_secs(5),
            )
            .await?;
        reply.json()
    }

    pub async fn request_stop(&self, app: &str, instance: &str) -> ExecutorReply {
        self.try_stop(&StopInstance {
            executor_id: self.executor_id.clone(),
            app: app.into(),
            instance: Some(instance.into()),
            reason: Some("test".into()),
        })
        .await
        .unwrap()
    }

    /// Waits for a heartbeat in which `guid` is in `state`; returns that heartbeat.
    pub async fn wait_state(
        &mut self,
        guid: &str,
        state: InstanceState,
        timeout: Duration,
    ) -> ExecutorHeartbeat {
        let deadline = Instant::now() + timeout;
        loop {
            let message = tokio::time::timeout_at(deadline, self.heartbeats.next())
                .await
                .unwrap_or_else(|_| {
                    let seen: Vec<String> = self.agent.as_ref().map_or_else(Vec::new, |a| {
                        ["CELL", "HEALTH", "APP/PROC/WEB"]
                            .iter()
                            .flat_map(|t| a.lines(t))
                            .take(50)
                            .collect()
                    });
                    panic!("no heartbeat with {guid} {state:?} in {timeout:?}; logs: {seen:#?}")
                })
                .unwrap();
            let hb: ExecutorHeartbeat = message.json().unwrap();
            if hb
                .instances
                .iter()
                .any(|i| i.instance == guid && i.state == state)
            {
                return hb;
            }
        }
    }

    /// Starts `start`, then waits until it is RUNNING and its app has logged `ready`; returns
    /// its instance guid.
    pub async fn start_until_ready(&mut self, start: &StartInstance, timeout: Duration) -> String {
        assert!(self.request_start(start).await.accepted);
        self.wait_state(&start.instance, InstanceState::Running, timeout)
            .await;
        wait_log(self.agent(), "ready", timeout, |_, p| p == "ready").await;
        start.instance.clone()
    }

    /// The next route registration for `guid` (registrations of other instances are skipped).
    pub async fn registration(&mut self, guid: &str, timeout: Duration) -> RegistryMessage {
        let deadline = Instant::now() + timeout;
        loop {
            let message: RegistryMessage = tokio::time::timeout_at(deadline, self.registers.next())
                .await
                .unwrap_or_else(|_| panic!("no route registration for {guid} in {timeout:?}"))
                .unwrap()
                .json()
                .unwrap();
            if message.private_instance_id.as_deref() == Some(guid) {
                return message;
            }
        }
    }

    pub async fn next_crash(&mut self, timeout: Duration) -> ExecutorCrash {
        tokio::time::timeout(timeout, self.crashes.next())
            .await
            .expect("no crash event in time")
            .unwrap()
            .json()
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("executor did not shut down in time")
            .unwrap()
            .unwrap();
        // The executor leaves its bridge and cgroup parent for the next start; a test leaves
        // nothing.
        if let Some(network) = self.network.take()
            && let Ok(net) = hydrant_container::net::Network::setup(&network).await
        {
            net.teardown().await.unwrap();
        }
        if let Some(parent) = self.cgroup_parent.take() {
            for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = std::fs::remove_dir(hierarchy.path().join(&parent));
                // Empty once the last test of this run is done.
                let _ = std::fs::remove_dir(hierarchy.path().join("hydrant-test"));
            }
        }
    }
}

/// Waits until the fake agent holds a log line satisfying `pred(source_type, text)`.
/// Fails, saying why the test needs root, unless it runs as root.
pub fn require_root(why: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{why}: run it as root, as CI does"
    );
}

pub async fn wait_log(
    agent: &FakeAgent,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&str, &str) -> bool,
) {
    wait_for(timeout, what, || {
        let found = logs(agent)
            .iter()
            .any(|(_, st, _, p)| pred(st, &String::from_utf8_lossy(p)));
        async move { found }
    })
    .await;
}
