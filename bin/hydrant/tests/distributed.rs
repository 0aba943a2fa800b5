//! Distributed mode through the real `hydrant` binary: a real `nats-server` and the six roles
//! (`hydrant run agent|doppler|trafficcontroller|cloudcontroller|executor|router`) as separate
//! processes on loopback, driven by the CLI a developer would use.
//!
//! It proves invariant 4, "the data plane outlives the control plane", with real process deaths:
//! the cloud controller killed with SIGKILL, then nats-server killed and restarted. Throughout,
//! the app keeps answering through the router on every instance and its `RTR` and `APP` log
//! lines keep reaching the firehose; afterwards the control plane comes back with nothing lost
//! and repairs the state (a scale-up lands on the router).
//!
//! Every pipeline hop runs mutual TLS, as a real deployment does: one internal CA, a leaf per
//! role identity, each role presenting its own; the executor fetches droplets from the cloud
//! controller's internal API over mutual TLS as the `executor` identity.
//!
//! The bus is authenticated too: nats-server runs the config `hydrant certs nats-config` writes
//! (TLS, client certificates mapped to users, subject permissions per role), and the executor
//! has its own cell's bus identity.
//!
//! The route TTL is shortened (5 s, registrations every 1 s) so the bus outage outlasts it: a
//! router that pruned while disconnected would fail the outage window.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

#[path = "support/cli.rs"]
mod cli;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cli::wait_for;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_hydrant");
const APP: &str = "survivor";
const HOST: &str = "survivor.apps.localhost";
const ADMIN_PASSWORD: &str = "distributed-test-pw";
/// The router forgets a registration this long after its last refresh.
const ROUTE_TTL_SECS: u64 = 5;

/// `n` distinct ports nobody listens on right now: bound together (so none repeats), read and
/// released. The roles bind them a moment later; the kernel does not hand a just-released
/// ephemeral port out again that quickly.
/// `n` free ports for the roles to listen on. They are chosen below Linux's ephemeral range
/// (32768–60999), so the kernel never hands one to another test's `bind(0)` or outgoing
/// connection between this probe and the role's own bind.
fn free_ports(n: usize) -> Vec<u16> {
    let mut held: Vec<TcpListener> = Vec::with_capacity(n);
    let mut tries = 0;
    while held.len() < n {
        tries += 1;
        assert!(tries < 10_000, "no free ports in 20000-32000");
        let port = 20_000 + fastrand::u16(..12_000);
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A role's config as TOML: top-level values first, then one `[table]` per object, objects
/// inside those as inline tables. JSON string escapes are valid TOML basic strings.
fn to_toml(config: &serde_json::Value) -> String {
    let object = config.as_object().unwrap();
    let mut out = String::new();
    let mut tables = String::new();
    for (key, value) in object {
        match value {
            serde_json::Value::Object(table) => {
                tables.push_str(&format!("\n[{key}]\n"));
                for (k, v) in table {
                    if let Some(inner) = v.as_object() {
                        // A second level as an inline table (`network = { bridge = "x" }`).
                        let fields: Vec<String> = inner
                            .iter()
                            .map(|(ik, iv)| {
                                assert!(!iv.is_object(), "{key}.{k}.{ik}: too deeply nested");
                                format!("{ik} = {iv}")
                            })
                            .collect();
                        tables.push_str(&format!("{k} = {{ {} }}\n", fields.join(", ")));
                    } else {
                        tables.push_str(&format!("{k} = {v}\n"));
                    }
                }
            }
            other => out.push_str(&format!("{key} = {other}\n")),
        }
    }
    out + &tables
}

/// `nats-server`, from PATH or Debian's `/usr/sbin` (not on a normal user's PATH).
fn nats_server_path() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nats-server is not installed: this test drives a real one. Run ./scripts/test \
                 (it installs the Debian package) or `sudo apt-get install nats-server`"
            )
        })
}

/// One HTTP/1.1 exchange on a fresh connection: status, head, body.
fn http_get(
    to: SocketAddr,
    host: &str,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{resp:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, head.to_owned()))?;
    Ok((status, head.to_owned(), body.to_owned()))
}

/// The sum of every sample of `name` (any labels) in Prometheus text; `None` when absent.
fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let series_name = series.split_once('{').map_or(series, |(n, _)| n);
        if series_name == name
            && let Ok(v) = value.parse::<f64>()
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Processes whose working directory lies under `dir` (the executor's app instances).
fn processes_under(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .collect()
}

/// A bridge named `prefix` + 6 random hex digits and a /24 for it in `10.252.0.0/16` (apart from
/// the micro clouds' pool) that no interface of this host holds an address in.
fn own_network(prefix: &str) -> (String, String) {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .expect("ip runs (iproute2, which containers need)");
    let taken = String::from_utf8_lossy(&out.stdout).into_owned();
    let bridge = format!("{prefix}{:06x}", fastrand::u32(..0x0100_0000));
    for _ in 0..1000 {
        let third = fastrand::u8(..);
        if !taken.contains(&format!(" 10.252.{third}.")) {
            return (bridge, format!("10.252.{third}.0/24"));
        }
    }
    panic!("every /24 of 10.252.0.0/16 is held by an interface of this host: free one");
}

/// Sends `sig` to one process. Never to pid 0 or 1 (a group or everything), and never through
/// the `kill` binary: procps-ng 4.0.2 misreads `kill -KILL -PGID` as a signal to group 9 or 1.
fn signal(pid: u32, sig: &str) {
    let Ok(pid) = i32::try_from(pid) else { return };
    if pid <= 1 {
        return;
    }
    let sig = match sig {
        "-TERM" => nix::sys::signal::Signal::SIGTERM,
        _ => nix::sys::signal::Signal::SIGKILL,
    };
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// Every process of the test: the roles, nats-server, live log followers. Dropping it ends
/// them all, also when an assertion failed half-way (then it prints the roles' log tails).
struct Cluster {
    dir: tempfile::TempDir,
    /// Staging's bridge and subnet.
    staging_bridge: (String, String),
    children: BTreeMap<String, Child>,
    ports: BTreeMap<&'static str, u16>,
}

impl Cluster {
    fn new() -> Self {
        let names = [
            "nats",
            "agent",
            "agent_admin",
            "doppler",
            "doppler_admin",
            "firehose",
            "firehose_admin",
            "api",
            "api_admin",
            "api_internal",
            "executor_admin",
            "router",
            "router_admin",
        ];
        let dir = tempfile::tempdir().unwrap();
        let ports = names.into_iter().zip(free_ports(names.len())).collect();
        Self {
            dir,
            children: BTreeMap::new(),
            ports,
            staging_bridge: own_network("hs"),
        }
    }

    fn port(&self, name: &str) -> u16 {
        self.ports[name]
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}", self.port(name))
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn home(&self) -> PathBuf {
        self.path("home")
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{name}.log")))
            .unwrap()
    }

    fn spawn(&mut self, name: &str, command: &mut Command) {
        let log = self.log_file(name);
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        assert!(
            self.children.insert(name.to_owned(), child).is_none(),
            "{name} started twice"
        );
    }

    fn start_nats(&mut self) {
        let port = self.port("nats").to_string();
        let mut command = Command::new(nats_server_path());
        // TLS with client certificates mapped to users with per-role subject permissions, as
        // `hydrant certs nats-config` writes it.
        let certs = hydrant_tls::issue::CertDir::new(self.path("certs"));
        let config = hydrant_bus::nats_config::server_config(
            &format!("127.0.0.1:{port}"),
            hydrant_bus::nats_config::ServerTls {
                ca_file: &certs.ca_file(),
                cert_file: &certs.cert_file(hydrant_tls::Identity::Nats),
                key_file: &certs.key_file(hydrant_tls::Identity::Nats),
            },
            &["cell-1".to_owned()],
        )
        .unwrap();
        let conf = self.path("nats.conf");
        std::fs::write(&conf, config).unwrap();
        command.arg("-c").arg(&conf);
        self.spawn("nats", &mut command);
        let to = addr(self.port("nats"));
        wait_for(Duration::from_secs(10), "nats-server to listen", || {
            TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_ok()
        });
    }

    /// Writes the role's config as TOML and starts `hydrant run ROLE`; waits for its /healthz.
    fn start_role(&mut self, role: &str, config: &serde_json::Value, admin: &str) {
        let path = self.path(&format!("{role}.toml"));
        std::fs::write(&path, to_toml(config)).unwrap();
        let mut command = Command::new(BIN);
        command
            .args(["run", role, "--config"])
            .arg(&path)
            .env("HYDRANT_LOG", "info")
            .env("NO_COLOR", "1");
        self.spawn(role, &mut command);
        let to = addr(self.port(admin));
        wait_for(Duration::from_secs(20), &format!("{role} /healthz"), || {
            self.assert_alive(role);
            http_get(to, "127.0.0.1", "/healthz", None).is_ok_and(|(status, ..)| status == 200)
        });
    }

    fn assert_alive(&mut self, name: &str) {
        let child = self.children.get_mut(name).unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{name} exited with {status}; its output:\n{}",
                self.log_tail(name)
            );
        }
    }

    /// SIGKILL, as a crashed host or an OOM kill would; waits until it is gone.
    fn kill(&mut self, name: &str) {
        let mut child = self.children.remove(name).unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("HYDRANT_HOME", self.home())
            .env_remove("HYDRANT_PASSWORD")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "`hydrant {}` failed ({}):\n{}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `hydrant logs SOURCE` following the live stream; its stdout lines arrive on the channel.
    fn follow_logs(&mut self, name: &str, source: &str) -> LiveLogs {
        let log = self.log_file(name);
        let mut child = Command::new(BIN)
            .args(["logs", source])
            .env("HYDRANT_HOME", self.home())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        self.children.insert(name.to_owned(), child);
        LiveLogs {
            rx: cli::lines(out, 100_000),
            tail: std::collections::VecDeque::new(),
        }
    }

    fn router(&self) -> SocketAddr {
        addr(self.port("router"))
    }

    fn admin_metrics(&self, admin: &str) -> String {
        let (status, _, body) =
            http_get(addr(self.port(admin)), "127.0.0.1", "/metrics", None).unwrap();
        assert_eq!(status, 200, "{admin} /metrics");
        body
    }

    fn cloudcontroller_config(&self) -> serde_json::Value {
        json!({
            "listen": format!("127.0.0.1:{}", self.port("api")),
            "admin_listen": format!("127.0.0.1:{}", self.port("api_admin")),
            // The roles' internal API: mutual TLS, each endpoint checking the caller's
            // certificate identity (the executor's droplet downloads come here).
            "internal_listen": format!("127.0.0.1:{}", self.port("api_internal")),
            "tls": self.tls("cloudcontroller"),
            "external_url": self.url("api"),
            "data_dir": self.path("cloudcontroller").display().to_string(),
            "admin_password": ADMIN_PASSWORD,
            "password_hash_iterations": 1000,
            "converge_interval_ms": 500,
            "endpoints": {
                "firehose": self.url("firehose"),
                "agent": self.url("agent"),
                "router": self.url("router"),
            },
            // Staging's containers on this cluster's own network too.
            "staging_isolation": {
                "network": { "bridge": self.staging_bridge.0, "subnet": self.staging_bridge.1 },
            },
            "bus": self.bus("cloudcontroller"),
            "telemetry": self.telemetry("cloudcontroller"),
        })
    }

    /// The containers `runc` knows under the executor.
    fn containers(&self) -> Vec<String> {
        cli::runc_containers(self.dir.path())
    }

    /// The authenticated bus as `identity`: NATS over TLS with the role's own certificate,
    /// which nats-server maps to a user with that role's subject permissions.
    fn bus(&self, identity: &str) -> serde_json::Value {
        let dir = self.path("certs");
        json!({
            "url": format!("nats://127.0.0.1:{}", self.port("nats")),
            "tls": {
                "ca_file": dir.join("ca.pem").display().to_string(),
                "cert_file": dir.join(format!("{identity}.pem")).display().to_string(),
                "key_file": dir.join(format!("{identity}.key")).display().to_string(),
            },
        })
    }

    /// The bus's certificates: nats-server's leaf names the address the roles dial, and the
    /// executor's carries its cell's bus identity (`cell-1.executor`), so it may publish only
    /// its own cell's subjects.
    fn prepare_bus_certs(&self) {
        use hydrant_tls::Identity;
        use hydrant_tls::issue::{self, LeafSpec};
        let dir = self.path("certs");
        let ids = [
            Identity::CloudController,
            Identity::Router,
            Identity::Executor,
            Identity::Nats,
        ];
        issue::ensure(&dir, &ids, &[]).unwrap();
        for (identity, names) in [
            (
                Identity::Nats,
                vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            ),
            (
                Identity::Executor,
                vec![hydrant_bus::nats_config::cell_user("cell-1")],
            ),
        ] {
            issue::issue(
                &dir,
                &LeafSpec {
                    identity,
                    names,
                    days: 1,
                },
                None,
            )
            .unwrap();
        }
    }

    /// The certificate files of `identity` (every pipeline hop runs mutual TLS).
    fn tls(&self, identity: &str) -> serde_json::Value {
        let dir = self.path("certs");
        json!({
            "ca_file": dir.join("ca.pem").display().to_string(),
            "cert_file": dir.join(format!("{identity}.pem")).display().to_string(),
            "key_file": dir.join(format!("{identity}.key")).display().to_string(),
        })
    }

    /// Metrics (and, for the executor and router, app and access logs) to the agent, over
    /// mutual TLS as `identity`.
    fn telemetry(&self, identity: &str) -> serde_json::Value {
        json!({ "agent": self.url("agent"), "interval_secs": 1, "tls": self.tls(identity) })
    }

    /// Starts nats-server and the six roles, each with its own data, and logs the CLI in.
    fn start() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the executor runs apps in real containers and needs root: run this test as root, as CI does"
        );
        let mut c = Self::new();
        std::fs::create_dir_all(c.home()).unwrap();
        // One internal CA and a leaf per role identity: every pipeline hop runs mutual TLS.
        hydrant_tls::issue::ensure(&c.path("certs"), &hydrant_tls::Identity::ALL, &[]).unwrap();
        c.prepare_bus_certs();
        c.start_nats();
        let doppler = json!({
            "listen": format!("127.0.0.1:{}", c.port("doppler")),
            "admin_listen": format!("127.0.0.1:{}", c.port("doppler_admin")),
            "telemetry": c.telemetry("doppler"),
            "tls": c.tls("doppler"),
        });
        c.start_role("doppler", &doppler, "doppler_admin");
        let agent = json!({
            "listen": format!("127.0.0.1:{}", c.port("agent")),
            "admin_listen": format!("127.0.0.1:{}", c.port("agent_admin")),
            "dopplers": [c.url("doppler")],
            "tls": c.tls("agent"),
        });
        c.start_role("agent", &agent, "agent_admin");
        let firehose = json!({
            "listen": format!("127.0.0.1:{}", c.port("firehose")),
            "admin_listen": format!("127.0.0.1:{}", c.port("firehose_admin")),
            "dopplers": [c.url("doppler")],
            // Public keys only, from the cloud controller (which starts after the edge: the
            // edge keeps asking), cached so a restarted edge verifies without it.
            "token_keys_url": format!("{}/token_keys", c.url("api")),
            "token_keys_cache": c.path("firehose-token-keys.json").display().to_string(),
            "telemetry": c.telemetry("trafficcontroller"),
            "upstream_tls": c.tls("trafficcontroller"),
        });
        c.start_role("trafficcontroller", &firehose, "firehose_admin");
        let cc = c.cloudcontroller_config();
        c.start_role("cloudcontroller", &cc, "api_admin");
        // Instances run in containers (the executor's default) on this cluster's own bridge,
        // subnet and cgroup parent, so it runs beside micro clouds and other clusters.
        let (bridge, subnet) = own_network("hd");
        let executor = json!({
            "executor_id": "cell-1",
            "network": { "bridge": bridge, "subnet": subnet },
            "containers": { "cgroup_parent": format!("hydrant/{bridge}") },
            "data_dir": c.path("executor").display().to_string(),
            "admin_listen": format!("127.0.0.1:{}", c.port("executor_admin")),
            "stop_timeout_secs": 2,
            "startup_check_interval_ms": 100,
            "heartbeat_interval_secs": 1,
            "register_interval_secs": 1,
            "bus": c.bus("executor"),
            "telemetry": c.telemetry("executor"),
            // Droplets from the controller's internal API, as the executor identity.
            "tls": c.tls("executor"),
        });
        c.start_role("executor", &executor, "executor_admin");
        let router = json!({
            "listen": format!("127.0.0.1:{}", c.port("router")),
            "admin_listen": format!("127.0.0.1:{}", c.port("router_admin")),
            "router_id": "0",
            "prune_threshold_secs": ROUTE_TTL_SECS,
            "prune_interval_ms": 200,
            "bus": c.bus("router"),
            "telemetry": c.telemetry("router"),
        });
        c.start_role("router", &router, "router_admin");

        c.cli_ok(&["target", &c.url("api")]);
        c.cli_ok(&["login", "-u", "admin", "-p", ADMIN_PASSWORD]);
        c
    }

    /// Requests `/` through the router for `window`, one after another: every one must be the
    /// app's 200. Returns the instance indexes that answered.
    fn serve_steadily(&self, window: Duration) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut served = 0_u32;
        let start = Instant::now();
        while start.elapsed() < window {
            let at = start.elapsed();
            let (status, head, body) = http_get(self.router(), HOST, "/", None)
                .unwrap_or_else(|e| panic!("request {served} at {at:?} through the router: {e}"));
            assert_eq!(
                status, 200,
                "request {served} at {at:?} failed: {head}\n{body}"
            );
            seen.insert(instance_of(&body));
            served += 1;
            // Pace the load: enough requests to see every instance many times over.
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(served > 20, "only {served} requests in {window:?}");
        seen
    }

    /// Waits until requests through the router have reached every one of `indexes`.
    fn wait_balanced(&self, indexes: &[&str], timeout: Duration) {
        let want: BTreeSet<String> = indexes.iter().map(|s| (*s).to_owned()).collect();
        let mut seen = BTreeSet::new();
        wait_for(
            timeout,
            &format!("the router to reach instances {want:?}"),
            || {
                if let Ok((200, _, body)) = http_get(self.router(), HOST, "/", None) {
                    seen.insert(instance_of(&body));
                }
                want.is_subset(&seen)
            },
        );
    }

    /// Sends `count` requests for a unique path (the demo app answers 404 and logs it) and
    /// returns the path.
    fn probe(&self, tag: &str, count: usize) -> String {
        let path = format!("/probe-{tag}");
        for _ in 0..count {
            let (status, head, _) = http_get(self.router(), HOST, &path, None).unwrap();
            assert_eq!(status, 404, "{head}");
            assert!(
                !head.to_ascii_lowercase().contains("x-cf-routererror"),
                "the router, not the app, answered {path}: {head}"
            );
        }
        path
    }

    /// Polls `hydrant logs GUID --recent` until it shows `count` RTR and `count` APP lines
    /// for `path`.
    fn wait_recent_lines(&self, guid: &str, path: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.cli(&["logs", guid, "--recent", "--lines", "1000"]);
            let last = String::from_utf8_lossy(&out.stdout).into_owned();
            let (rtr, app) = count_lines(last.lines(), path);
            if out.status.success() && rtr >= count && app >= count {
                assert_eq!(
                    (rtr, app),
                    (count, count),
                    "duplicated lines for {path}:\n{last}"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "recent logs of {guid} never showed {count} RTR and APP lines for {path} \
                 (status {}, stderr {}):\n{last}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Instances the executor has started since it booted.
    fn executor_starts(&self) -> f64 {
        let text = self.admin_metrics("executor_admin");
        metric(&text, "executor_starts_total")
            .unwrap_or_else(|| panic!("no executor_starts_total in:\n{text}"))
    }

    fn apps_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.cli_ok(&["apps", "--json"])).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for name in self.children.keys() {
                eprintln!("---- {name} (last lines) ----\n{}", self.log_tail(name));
            }
        }
        // The executor first and gently: it stops its app instances (their own process groups)
        // before it exits. Then everything else, hard.
        if let Some(mut executor) = self.children.remove("executor") {
            signal(executor.id(), "-TERM");
            let deadline = Instant::now() + Duration::from_secs(8);
            while executor.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = executor.kill();
            let _ = executor.wait();
        }
        for (_, mut child) in std::mem::take(&mut self.children) {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Whatever instance outlived its executor (it was killed too hard) runs in our
        // executor's data dir: end it too.
        for pid in processes_under(&self.path("executor")) {
            signal(u32::try_from(pid).unwrap_or(0), "-KILL");
        }
        // And any container it left (its next start would remove them; there is none).
        let root = self.path("executor/containers/runc");
        let listed = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "--quiet"])
            .output();
        for id in listed
            .map(|o| o.stdout)
            .unwrap_or_default()
            .split(|b| *b == b'\n')
        {
            let id = String::from_utf8_lossy(id).trim().to_owned();
            if !id.is_empty() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force", &id])
                    .output();
            }
        }
    }
}

/// The instance index in the demo app's greeting.
fn instance_of(body: &str) -> String {
    let rest = body
        .strip_prefix("Hello from the Hydrant demo app, instance ")
        .unwrap_or_else(|| panic!("not the demo app's greeting: {body:?}"));
    rest.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// (RTR lines, APP/PROC/WEB lines) about requests for `path`, in Cloud Foundry's format.
fn count_lines<'a>(lines: impl Iterator<Item = &'a str>, path: &str) -> (usize, usize) {
    let mut rtr = 0;
    let mut app = 0;
    for line in lines {
        if line.contains("[RTR/") && line.contains(&format!("GET {path} ")) {
            rtr += 1;
        }
        if line.contains("[APP/PROC/WEB/") && line.contains(&format!("GET {path} 404")) {
            app += 1;
        }
    }
    (rtr, app)
}

/// A running `hydrant logs SOURCE`: its stdout lines, read as they come.
struct LiveLogs {
    rx: mpsc::Receiver<String>,
    /// The latest lines, for the failure message.
    tail: std::collections::VecDeque<String>,
}

impl LiveLogs {
    /// Reads lines until `count` RTR and `count` APP lines about `path` have arrived.
    fn wait_for(&mut self, path: &str, count: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut rtr, mut app) = (0, 0);
        while rtr < count || app < count {
            let line = self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    panic!(
                        "the live log stream never showed {what} ({rtr} RTR and {app} APP lines \
                         for {path}, want {count} each); its latest lines:\n{}",
                        Vec::from(self.tail.clone()).join("\n")
                    )
                });
            let (r, a) = count_lines(std::iter::once(line.as_str()), path);
            rtr += r;
            app += a;
            if self.tail.len() == 40 {
                self.tail.pop_front();
            }
            self.tail.push_back(line);
        }
        assert_eq!((rtr, app), (count, count), "duplicated lines for {path}");
    }
}

#[test]
fn data_plane_outlives_the_control_plane() {
    let started = Instant::now();
    let mut cluster = Cluster::start();
    eprintln!("[{:?}] cluster up", started.elapsed());

    // 1. Push the demo app with two instances; the router reaches both.
    let app_dir = cluster.path("app");
    std::fs::create_dir_all(&app_dir).unwrap();
    std::fs::write(
        app_dir.join("Procfile"),
        "web: exec \"$HYDRANT_BIN\" demo-app\n",
    )
    .unwrap();
    cluster.cli_ok(&[
        "push",
        APP,
        "-p",
        app_dir.to_str().unwrap(),
        "-i",
        "2",
        "-t",
        "60",
    ]);
    let app: serde_json::Value =
        serde_json::from_str(&cluster.cli_ok(&["app", APP, "--json"])).unwrap();
    let guid = app["app"]["guid"].as_str().unwrap().to_owned();
    assert_eq!(app["instances"].as_array().unwrap().len(), 2, "{app}");
    cluster.wait_balanced(&["0", "1"], Duration::from_secs(20));
    assert_eq!(cluster.executor_starts(), 2.0);
    assert_eq!(
        cluster.containers().len(),
        2,
        "each instance runs in its own container"
    );
    // The droplet came over the internal API's mutual TLS, as the executor, refusing nobody.
    let api_metrics = cluster.admin_metrics("api_admin");
    assert!(
        metric(&api_metrics, "cloudcontroller_internal_calls_total").unwrap_or(0.0) >= 1.0,
        "the executor never called the internal API:\n{api_metrics}"
    );
    assert_eq!(
        metric(&api_metrics, "cloudcontroller_internal_refused_total"),
        Some(0.0),
        "{api_metrics}"
    );
    eprintln!("[{:?}] pushed {APP} ({guid})", started.elapsed());

    // A live stream opened while the controller is up must survive its death.
    let mut live = cluster.follow_logs("follow", &guid);
    let path = cluster.probe("before", 2);
    live.wait_for(&path, 2, "lines from before the outage");

    // 2. The cloud controller dies hard. Apps keep serving on both instances, logs keep flowing.
    cluster.kill("cloudcontroller");
    eprintln!("[{:?}] cloud controller killed", started.elapsed());
    let seen = cluster.serve_steadily(Duration::from_secs(3));
    assert_eq!(
        seen,
        BTreeSet::from(["0".to_owned(), "1".to_owned()]),
        "with the controller down, requests must reach both instances"
    );
    let path = cluster.probe("cc-down", 3);
    live.wait_for(&path, 3, "lines made while the controller was down");
    // The control plane's own commands fail fast with "cannot reach" (exit 5), not a hang.
    let out = cluster.cli(&["apps"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("cannot reach the cloud controller"), "{err}");
    // A reader arriving during the outage gets the recent lines by guid.
    cluster.wait_recent_lines(&guid, &path, 3);
    eprintln!(
        "[{:?}] served and logged with the controller down",
        started.elapsed()
    );

    // The controller comes back on the same data dir: nothing lost, nothing started twice.
    let cc = cluster.cloudcontroller_config();
    cluster.start_role("cloudcontroller", &cc, "api_admin");
    let mut apps = serde_json::Value::Null;
    wait_for(
        Duration::from_secs(20),
        "the restarted controller to report 2 running instances",
        || {
            apps = cluster.apps_json();
            apps[0]["running_instances"] == 2
        },
    );
    let listed = apps.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{apps}");
    assert_eq!(listed[0]["name"], APP);
    assert_eq!(listed[0]["guid"], guid.as_str());
    assert_eq!(listed[0]["instances"], 2);
    assert_eq!(listed[0]["state"], "STARTED");
    // A few convergence passes later it still runs exactly the two it had.
    let serving = cluster.serve_steadily(Duration::from_secs(2));
    assert_eq!(serving, BTreeSet::from(["0".to_owned(), "1".to_owned()]));
    let app: serde_json::Value =
        serde_json::from_str(&cluster.cli_ok(&["app", APP, "--json"])).unwrap();
    assert_eq!(app["instances"].as_array().unwrap().len(), 2, "{app}");
    assert_eq!(
        cluster.executor_starts(),
        2.0,
        "the restarted controller started instances that were already running"
    );
    eprintln!("[{:?}] controller back", started.elapsed());

    // 3. The bus dies. For longer than the route TTL every request still succeeds: the router
    //    keeps its table while disconnected.
    let router_before = cluster.admin_metrics("router_admin");
    cluster.kill("nats");
    eprintln!("[{:?}] nats-server killed", started.elapsed());
    let seen = cluster.serve_steadily(Duration::from_secs(ROUTE_TTL_SECS + 2));
    assert_eq!(
        seen,
        BTreeSet::from(["0".to_owned(), "1".to_owned()]),
        "with the bus down, requests must reach both instances"
    );
    // Logs do not travel on the bus: they keep flowing too.
    let path = cluster.probe("bus-down", 2);
    live.wait_for(&path, 2, "lines made while the bus was down");
    let router_during = cluster.admin_metrics("router_admin");
    let pruned_before = metric(&router_before, "router_pruned_total");
    assert!(
        pruned_before.is_some(),
        "no router_pruned_total in:\n{router_before}"
    );
    assert_eq!(
        metric(&router_during, "router_pruned_total"),
        pruned_before,
        "the router pruned routes while the bus was down"
    );

    // The bus returns on the same port; every role reconnects by itself and the state is
    // repaired: registrations arrive again and a scale-up lands on the router.
    let registrations_down = metric(&router_during, "router_registrations_total").unwrap_or(0.0);
    cluster.start_nats();
    eprintln!("[{:?}] nats-server back", started.elapsed());
    // Reconnecting must not cost a request either: the router renews every registration's
    // threshold when the bus returns, so it does not prune before the executors re-register.
    let seen = cluster.serve_steadily(Duration::from_secs(4));
    assert_eq!(
        seen,
        BTreeSet::from(["0".to_owned(), "1".to_owned()]),
        "while the bus came back, requests must reach both instances"
    );
    for admin in ["router_admin", "executor_admin", "api_admin"] {
        wait_for(
            Duration::from_secs(15),
            &format!("{admin} to reconnect to the bus"),
            || {
                let m = cluster.admin_metrics(admin);
                metric(&m, "bus_reconnects_total").unwrap_or(0.0) >= 1.0
                    && metric(&m, "bus_connected") == Some(1.0)
            },
        );
    }
    wait_for(
        Duration::from_secs(10),
        "registrations to reach the router again",
        || {
            let m = cluster.admin_metrics("router_admin");
            metric(&m, "router_registrations_total").unwrap_or(0.0) > registrations_down
        },
    );
    cluster.cli_ok(&["scale", APP, "-i", "3"]);
    cluster.wait_balanced(&["0", "1", "2"], Duration::from_secs(20));
    assert_eq!(
        cluster.executor_starts(),
        3.0,
        "the scale-up must start exactly one instance"
    );
    let seen = cluster.serve_steadily(Duration::from_secs(1));
    assert_eq!(
        seen,
        BTreeSet::from(["0".to_owned(), "1".to_owned(), "2".to_owned()]),
        "after the scale-up the router must balance across three instances"
    );
    eprintln!(
        "[{:?}] scaled to 3 after the bus came back",
        started.elapsed()
    );
    // Nothing genuine was refused: the executor's heartbeats, crashes and registrations on its
    // own cell's subjects pass the server's permissions, the router reads placements (not
    // start commands), and the consumers' placement checks accept every genuine report.
    for admin in ["executor_admin", "api_admin", "router_admin"] {
        let text = cluster.admin_metrics(admin);
        assert_eq!(
            metric(&text, "bus_refused_total").unwrap_or(0.0),
            0.0,
            "{admin}: the bus refused a genuine publish or subscription:\n{text}"
        );
        let forged: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.contains("_dropped_total{")
                    && (l.contains("reason=\"not_placed\"") || l.contains("reason=\"wrong_cell\""))
                    && !l.ends_with(" 0")
            })
            .collect();
        assert!(
            forged.is_empty(),
            "{admin} dropped genuine reports: {forged:?}"
        );
    }
    drop(cluster);
    eprintln!("[{:?}] torn down", started.elapsed());
}
