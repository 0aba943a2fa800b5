//! The broker against real servers: OSBAPI conformance (`osb`), each offering's life from
//! provision to deprovision with its credentials used by the server's own client
//! (`offerings`), and the broker's own resilience — a SIGKILLed node restarted, a restarted
//! broker serving the same credentials (`resilience`), a SIGKILLed broker's containers
//! removed by its next start (`orphans`), RabbitMQ nodes of brokers side by side starting at
//! once on a busy machine (`load`) — every instance as a source in the
//! pipeline (`observability`), nodes in containers under their plan's limits
//! (`containment`), a shared node's lines kept to the tenant they provably belong
//! to (`tenancy`), and plan limits that hold while tenants write (`quotas`).
//!
//! Every test runs its own broker on ephemeral listeners with its own data directory and its
//! own slice of the port pool, so tests run in parallel. A test that needs a server whose
//! package is missing fails with the package's name.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

#[path = "broker/containment.rs"]
mod containment;
#[path = "broker/load.rs"]
mod load;
#[path = "broker/observability.rs"]
mod observability;
#[path = "broker/offerings.rs"]
mod offerings;
#[path = "broker/orphans.rs"]
mod orphans;
#[path = "broker/osb.rs"]
mod osb;
#[path = "broker/quotas.rs"]
mod quotas;
#[path = "broker/resilience.rs"]
mod resilience;
#[path = "broker/tenancy.rs"]
mod tenancy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hydrant_broker::{Broker, Config, PortRange};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const USER: &str = "broker";
pub const PASSWORD: &str = "s3cret-broker-password";
pub const VERSION: &str = "2.17";

/// A broker under test.
#[derive(Debug)]
pub struct Running {
    pub url: String,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), hydrant_broker::Error>>,
}

/// This test's slice of the port pool (24 ports between 43000 and 54999), held exclusively
/// for the rest of this process by a lock file in the temporary directory: nextest runs each
/// test in a process of its own, and two processes picking the same slice would race for its
/// first port between the pool's check and the node's listen (longer with containers). The
/// lock goes with the process, however it ends.
pub fn ports() -> PortRange {
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    const SLICES: u16 = 500;
    let start = (std::process::id() % u32::from(SLICES)) as u16;
    let dir = std::env::temp_dir().join("hydrant-broker-test-ports");
    std::fs::create_dir_all(&dir).unwrap();
    for k in 0..SLICES {
        let first = 43_000 + ((start + k) % SLICES) * 24;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(first.to_string()))
            .unwrap();
        if file.try_lock().is_ok() {
            HELD.lock().unwrap().push(file);
            return PortRange {
                first,
                last: first + 23,
            };
        }
    }
    panic!("every port slice is held by other test processes");
}

/// Fails the test naming the package when `offering`'s server is not installed.
pub fn require(offering: &str) {
    if let Err(why) = hydrant_broker::backend::detect(offering) {
        panic!("the {offering} offering cannot be tested here: {why}");
    }
}

pub fn config(dir: &Path, ports: PortRange) -> Config {
    Config {
        listen: "127.0.0.1:0".to_owned(),
        admin_listen: "127.0.0.1:0".to_owned(),
        username: USER.to_owned(),
        password: Some(PASSWORD.to_owned()),
        data_dir: dir.to_path_buf(),
        ports,
        metrics_interval_secs: 1,
        ..Config::default()
    }
}

/// A broker on [`config`] in a fresh temporary directory, which lives as long as the handle
/// returned with it.
pub async fn start_fresh() -> (tempfile::TempDir, Running) {
    let dir = tempfile::tempdir().unwrap();
    let b = start(config(dir.path(), ports())).await;
    (dir, b)
}

/// [`config`] on this test's ports, reporting to `agent` every second.
pub fn reporting_config(dir: &Path, agent: &hydrant_testkit::FakeAgent) -> Config {
    let mut c = config(dir, ports());
    c.telemetry.agent = Some(agent.url());
    c.telemetry.interval_secs = 1;
    c
}

pub async fn start(config: Config) -> Running {
    let listeners = hydrant_runtime::bind_on::<Broker>(|_| "127.0.0.1:0".to_owned())
        .await
        .unwrap();
    let api = listeners.local_addr("api").unwrap();
    let admin = listeners.local_addr("admin").unwrap();
    let shutdown = CancellationToken::new();
    let dir = config.data_dir.clone();
    let task = tokio::spawn(hydrant_runtime::run::<Broker>(
        config,
        listeners,
        shutdown.clone(),
    ));
    let running = Running {
        url: format!("http://{api}"),
        admin,
        dir,
        client: reqwest::Client::new(),
        shutdown,
        task,
    };
    // Up when the catalog answers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if running.get("/v2/catalog").await.0 == 200 {
            return running;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "broker did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }

    /// A request with the right credentials and version.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_with(method, path, body, Some((USER, PASSWORD)), Some(VERSION))
            .await
    }

    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        auth: Option<(&str, &str)>,
        version: Option<&str>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.url))
            .timeout(Duration::from_secs(180));
        if let Some((u, p)) = auth {
            req = req.basic_auth(u, Some(p));
        }
        if let Some(v) = version {
            req = req.header("X-Broker-API-Version", v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }

    /// The catalog's service and plan ids of `offering` / `plan`.
    pub async fn ids(&self, offering: &str, plan: &str) -> (String, String) {
        let (_, catalog) = self.get("/v2/catalog").await;
        let service = catalog["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == offering)
            .unwrap_or_else(|| panic!("{offering} is not in the catalog: {catalog}"));
        let plan = service["plans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == plan)
            .unwrap();
        (
            service["id"].as_str().unwrap().to_owned(),
            plan["id"].as_str().unwrap().to_owned(),
        )
    }

    /// Provisions (waiting for an asynchronous one) and returns the status of the PUT.
    pub async fn provision(&self, id: &str, offering: &str, plan: &str, params: Value) -> u16 {
        let (service_id, plan_id) = self.ids(offering, plan).await;
        let (status, body) = self
            .call(
                "PUT",
                &format!("/v2/service_instances/{id}?accepts_incomplete=true"),
                Some(json!({
                    "service_id": service_id, "plan_id": plan_id,
                    "organization_guid": "org", "space_guid": "space",
                    "parameters": params,
                })),
            )
            .await;
        assert!(matches!(status, 201 | 202), "{status} {body}");
        if status == 202 {
            self.await_instance(id).await;
        }
        status
    }

    /// Polls `last_operation` until it is no longer in progress; asserts it succeeded.
    pub async fn await_instance(&self, id: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        loop {
            let (status, body) = self
                .get(&format!("/v2/service_instances/{id}/last_operation"))
                .await;
            assert_eq!(status, 200, "{body}");
            match body["state"].as_str() {
                Some("succeeded") => return,
                Some("in progress") => {}
                _ => panic!("provision of {id} failed: {body}"),
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "provision of {id} took too long"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn bind(&self, id: &str, bid: &str, offering: &str, params: Value) -> Value {
        let (service_id, plan_id) = self.ids(offering, "small").await;
        let (status, body) = self
            .call(
                "PUT",
                &format!("/v2/service_instances/{id}/service_bindings/{bid}"),
                Some(json!({
                    "service_id": service_id, "plan_id": plan_id,
                    "bind_resource": {"app_guid": "app"}, "parameters": params,
                })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["credentials"].clone()
    }

    /// A new instance of `offering` on its small plan with one binding: (instance id, the
    /// binding's credentials).
    pub async fn provision_bound(&self, offering: &str) -> (String, Value) {
        let id = guid();
        self.provision(&id, offering, "small", json!({})).await;
        let creds = self.bind(&id, &guid(), offering, json!({})).await;
        (id, creds)
    }

    /// Moves instance `id` to `plan`: the PATCH's status and body.
    pub async fn update_plan(&self, id: &str, offering: &str, plan: &str) -> (u16, Value) {
        let (service_id, plan_id) = self.ids(offering, plan).await;
        self.call(
            "PATCH",
            &format!("/v2/service_instances/{id}"),
            Some(json!({"service_id": service_id, "plan_id": plan_id})),
        )
        .await
    }

    pub async fn unbind(&self, id: &str, bid: &str, offering: &str) -> u16 {
        let (service_id, plan_id) = self.ids(offering, "small").await;
        self.call(
            "DELETE",
            &format!(
                "/v2/service_instances/{id}/service_bindings/{bid}?service_id={service_id}&plan_id={plan_id}"
            ),
            None,
        )
        .await
        .0
    }

    pub async fn deprovision(&self, id: &str, offering: &str) -> u16 {
        let (service_id, plan_id) = self.ids(offering, "small").await;
        self.call(
            "DELETE",
            &format!("/v2/service_instances/{id}?service_id={service_id}&plan_id={plan_id}"),
            None,
        )
        .await
        .0
    }

    /// The running service nodes: (name, pid, ports).
    pub async fn nodes(&self) -> Vec<(String, u32, Vec<u16>)> {
        let body = self.admin_call(reqwest::Method::GET, "/v1/nodes").await;
        body.as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["name"].as_str().unwrap().to_owned(),
                    n["pid"].as_u64().unwrap() as u32,
                    n["ports"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| p.as_u64().unwrap() as u16)
                        .collect(),
                )
            })
            .collect()
    }

    /// Runs a storage quota pass now (`POST /v1/quotas`): each instance's measure.
    pub async fn check_quotas(&self) -> Value {
        self.admin_call(reqwest::Method::POST, "/v1/quotas").await
    }

    /// The admin listener's JSON answer to `method path`, as the operator.
    async fn admin_call(&self, method: reqwest::Method, path: &str) -> Value {
        self.client
            .request(method, format!("http://{}{path}", self.admin))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// Runs `redis-cli` with `args` as the binding whose credentials are `c`: stdout + stderr.
pub async fn redis_cli(c: &Value, args: &[&str]) -> String {
    let port = c["port"].as_u64().unwrap().to_string();
    let auth = [
        "-h",
        c["host"].as_str().unwrap(),
        "-p",
        &port,
        "--no-auth-warning",
        "--user",
        c["username"].as_str().unwrap(),
        "--pass",
        c["password"].as_str().unwrap(),
    ];
    run("redis-cli", &[&auth[..], args].concat(), &[]).await.1
}

/// Whether the Redis node behind binding `c` answers `PING` to its credentials.
pub async fn redis_ping(c: &Value) -> bool {
    redis_cli(c, &["PING"]).await.trim() == "PONG"
}

/// Runs `sql` with `psql` at `uri`, stopping at the first error: (success, output).
pub async fn psql(uri: &str, sql: &str) -> (bool, String) {
    run(
        "psql",
        &[uri, "-X", "-tAq", "-v", "ON_ERROR_STOP=1", "-c", sql],
        &[],
    )
    .await
}

/// Runs `sql` with the `mariadb` client in binding `c`'s database, as its user: (success,
/// tab-separated rows without headers).
pub async fn mariadb(c: &Value, sql: &str) -> (bool, String) {
    let (user, password) = (
        c["username"].as_str().unwrap(),
        c["password"].as_str().unwrap(),
    );
    mariadb_as(
        c,
        user,
        password,
        &["-N", "-B", c["name"].as_str().unwrap(), "-e", sql],
    )
    .await
}

/// Runs the `mariadb` client against binding `c`'s server as `user` with `password` (which
/// need not be the binding's own), with `args` after the login: (success, stdout + stderr).
pub async fn mariadb_as(c: &Value, user: &str, password: &str, args: &[&str]) -> (bool, String) {
    let port = c["port"].as_u64().unwrap().to_string();
    let pass = format!("-p{password}");
    let host = c["hostname"].as_str().unwrap();
    let login = ["--no-defaults", "-h", host, "-P", &port, "-u", user, &pass];
    run("mariadb", &[&login[..], args].concat(), &[]).await
}

/// A call to the management API of RabbitMQ binding `c`, as its user: (status, JSON body);
/// status 0 when the node did not answer (it is restarting).
pub async fn rabbit(
    client: &reqwest::Client,
    c: &Value,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let field = |key: &str| c[key].as_str().unwrap();
    let api = format!(
        "http://{}:{}/api/{path}",
        field("hostname"),
        c["protocols"]["management"]["port"].as_u64().unwrap()
    );
    let mut req = client
        .request(method, api)
        .basic_auth(field("username"), Some(field("password")))
        .timeout(Duration::from_secs(30));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let Ok(resp) = req.send().await else {
        return (0, Value::Null);
    };
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Runs a client program; (exit success, stdout + stderr).
pub async fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{program} hung"))
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Waits for `check` to hold, for at most `secs`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn process_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; only a live process has a non-Z state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.split(") ").nth(1).unwrap_or("").starts_with('Z'))
        .unwrap_or(false)
}

pub fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

pub fn guid() -> String {
    uuid::Uuid::new_v4().to_string()
}
