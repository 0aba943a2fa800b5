//! Staging runs the app's own code (npm install scripts) in a staging container: a hostile
//! install script reads none of the platform's secrets, reaches none of its ports, runs as uid
//! 2000 with none of the platform's environment, and its container, cgroup, bundle and network
//! attachment are gone afterwards — after success, failure, out of memory and the time limit.
//! `--isolation none` keeps the old way and says so in every build; where containers cannot be
//! made, install steps fail saying why and how to fix it, and never run unisolated.
//!
//! The container tests need root (namespaces, cgroups, `runc`, `ip`, `nft`) and fail naming
//! that when not root; CI runs them as root.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

#[path = "common/support.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hydrant_api::{Build, BuildState};
use hydrant_cloudcontroller::{Config, IsolationMode, StagingIsolation};
use hydrant_testkit::{FakeAgent, wait_for};
use support::{Cc, Options, app_dir};

/// How long a build may take here (npm starts in a second or two; CI machines are slow).
const BUILD_WAIT: Duration = Duration::from_secs(120);

fn require_root(test: &str) {
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "{test} needs root: staging containers need namespaces, cgroups, runc, ip and nft \
         (run the tests as root, as CI does)"
    );
}

/// A cloud controller on loopback with its own data dir and staging settings, sending its logs
/// to `agent`.
async fn start_cc(
    data_dir: &Path,
    bus: &str,
    agent: &FakeAgent,
    isolation: StagingIsolation,
    timeout_secs: u64,
) -> Cc {
    let mut options = Options::new(bus);
    options.agent = Some(agent.url());
    options.staging_isolation = Some(isolation);
    options.staging_timeout_secs = Some(timeout_secs);
    Cc::start(data_dir, &options).await
}

impl Cc {
    /// Pushes `files` as app `name` and waits for its build to end.
    async fn stage(&self, name: &str, files: &[(&str, &[u8], u32)]) -> (String, Build) {
        let app = self
            .admin
            .create_app(&hydrant_api::CreateApp {
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let dir = app_dir(files);
        self.admin.push_dir(&app.guid, dir.path()).await.unwrap();
        let build = self
            .admin
            .create_build(&app.guid, &hydrant_api::CreateBuild::default())
            .await
            .unwrap();
        let build = self
            .admin
            .wait_for_build(&build.guid, BUILD_WAIT)
            .await
            .unwrap();
        (app.guid, build)
    }

    /// Asserts that no staging container, cgroup, bundle, veth or network namespace is left,
    /// as the kernel and the runtime list them.
    async fn assert_nothing_left(&self, after: &str) {
        let settings = self.config.staging_containers();
        let containers = hydrant_container::Containers::open(&settings, Vec::new())
            .await
            .unwrap();
        assert_eq!(
            containers.list().await.unwrap(),
            Vec::<String>::new(),
            "{after}: containers the runtime still knows"
        );
        assert_eq!(
            containers.cgroup_ids(),
            Vec::<String>::new(),
            "{after}: staging cgroups left"
        );
        let bundles: Vec<_> = std::fs::read_dir(settings.state_dir.join("bundles"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(bundles.is_empty(), "{after}: bundles left: {bundles:?}");
        let prefix = format!("{}-", self.config.staging_isolation.network.bridge);
        for dir in ["/sys/class/net", "/run/netns"] {
            let left: Vec<String> = std::fs::read_dir(dir)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.starts_with(&prefix))
                        .collect()
                })
                .unwrap_or_default();
            assert!(left.is_empty(), "{after}: {dir} still has {left:?}");
        }
    }
}

/// The STG lines of `app` once `last` is among them.
async fn stg_until(agent: &FakeAgent, app: &str, last: &str) -> Vec<String> {
    let (app_owned, last_owned) = (app.to_owned(), last.to_owned());
    wait_for(
        Duration::from_secs(15),
        &format!("STG {last:?}"),
        move || {
            let found = agent
                .lines_from(&app_owned, "STG")
                .iter()
                .any(|l| l.contains(&last_owned));
            async move { found }
        },
    )
    .await;
    agent.lines_from(app, "STG")
}

/// A bridge name of this test process (1-8 lowercase letters and digits), so a micro cloud
/// running on the same host keeps its own.
fn test_bridge() -> String {
    format!("stgt{:04x}", std::process::id() & 0xffff)
}

const PROBE: &str = r#"
const fs = require('fs');
const net = require('net');
const { execSync } = require('child_process');
const t = JSON.parse(fs.readFileSync('targets.json', 'utf8'));
const say = (what, ok, detail) =>
  console.log(`PROBE ${what}: ${ok ? 'SUCCEEDED' : 'FAILED'} (${detail})`);
console.log('PROBE-UID ' + execSync('id -u').toString().trim());
console.log('PROBE-HOME ' + process.env.HOME);
console.log('PROBE-NET ' + Object.values(require('os').networkInterfaces()).flat()
  .filter((i) => i.family === 'IPv4').map((i) => i.address).join(' '));
console.log('PROBE-ENV ' + Object.keys(process.env).sort().join(','));
for (const [what, path] of [
  ['read the signing key', t.key],
  ['read the admin password', t.password],
  ['read the database', t.db],
  ['read /etc/shadow', '/etc/shadow'],
]) {
  try {
    const content = fs.readFileSync(path);
    say(what, content.length > 0, `${content.length} bytes`);
  } catch (e) {
    say(what, false, e.code);
  }
}
try {
  const names = fs.readdirSync(t.data);
  say('list the data dir', names.length > 0, names.join(' '));
} catch (e) {
  say('list the data dir', false, e.code);
}
const connect = (what, port) => new Promise((done) => {
  const socket = net.connect({ host: '127.0.0.1', port });
  const timer = setTimeout(() => { socket.destroy(); say(what, false, 'timeout'); done(); }, 3000);
  socket.on('connect', () => { clearTimeout(timer); socket.destroy(); say(what, true, 'connected'); done(); });
  socket.on('error', (e) => { clearTimeout(timer); say(what, false, e.code); done(); });
});
(async () => {
  await connect('connect to the cloud controller', t.cc);
  await connect('connect to the test listener', t.listener);
  console.log('PROBE-DONE');
})();
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_npm_install_script_gets_nothing_of_the_platform() {
    require_root("a_hostile_npm_install_script_gets_nothing_of_the_platform");
    let data = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start();
    let isolation = StagingIsolation {
        network: hydrant_container::net::NetConfig {
            bridge: test_bridge(),
            subnet: "10.254.220.0/24".into(),
            ..StagingIsolation::default().network
        },
        ..StagingIsolation::default()
    };
    let cc = start_cc(data.path(), "stg-hostile", &agent, isolation, 300).await;

    // A listener of the platform's on the host's loopback, counting who reaches it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener_port = listener.local_addr().unwrap().port();
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });

    let data_dir = std::fs::canonicalize(data.path()).unwrap();
    // A private token signing key: the one secret that mints every token.
    let signing_key = std::fs::read_dir(cc.config.token_keys_path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "key"))
        .unwrap();
    let cc_port: u16 = cc.url.rsplit(':').next().unwrap().parse().unwrap();
    let targets = serde_json::json!({
        "key": signing_key,
        "password": cc.config.admin_password_path(),
        "db": data_dir.join("cloudcontroller.db"),
        "data": data_dir,
        "cc": cc_port,
        "listener": listener_port,
    })
    .to_string();
    assert!(signing_key.is_file(), "the key the script tries exists");
    let package = br#"{"name":"probe","version":"1.0.0",
        "scripts":{"install":"node probe.js","start":"node probe.js"}}"#;
    let (app, build) = cc
        .stage(
            "hostile",
            &[
                ("package.json", package.as_slice(), 0o644),
                ("probe.js", PROBE.as_bytes(), 0o644),
                ("targets.json", targets.as_bytes(), 0o644),
            ],
        )
        .await;
    assert_eq!(build.state, BuildState::Staged, "{build:?}");
    let lines = stg_until(&agent, &app, "Staging complete").await;
    let text = lines.join("\n");
    assert!(
        lines
            .iter()
            .any(|l| l == "-----> Installing dependencies with npm"),
        "{text}"
    );
    assert!(
        text.contains("PROBE-DONE"),
        "the probe ran to its end:\n{text}"
    );
    assert!(text.contains("PROBE-UID 2000"), "{text}");
    assert!(text.contains("PROBE-HOME /home/vcap/tmp"), "{text}");
    let addresses = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("PROBE-NET "))
        .unwrap();
    assert!(
        addresses.contains("10.254.220."),
        "the install ran on the staging network: {addresses}"
    );
    let env = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("PROBE-ENV "))
        .unwrap();
    for leaked in ["CARGO", "RUST", "SSH_", "SUDO_"] {
        assert!(
            !env.split(',').any(|k| k.starts_with(leaked)),
            "the platform's environment leaked ({leaked}*): {env}"
        );
    }
    let probes: Vec<&String> = lines.iter().filter(|l| l.contains("PROBE ")).collect();
    assert_eq!(probes.len(), 7, "every attempt reported:\n{text}");
    for probe in probes {
        assert!(
            probe.contains(": FAILED ("),
            "an attempt succeeded: {probe}"
        );
    }
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "the listener was reached"
    );
    cc.assert_nothing_left("after a successful install").await;
    let bridge = cc.config.staging_isolation.network.bridge.clone();
    cc.stop().await;
    assert!(
        !Path::new("/sys/class/net").join(&bridge).exists(),
        "the staging bridge {bridge} is removed at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_out_of_memory_and_timed_out_installs_say_why_and_leave_nothing() {
    require_root("failed_out_of_memory_and_timed_out_installs_say_why_and_leave_nothing");
    let data = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start();
    let isolation = StagingIsolation {
        memory_mb: 256,
        attach_network: false,
        ..StagingIsolation::default()
    };
    let cc = start_cc(data.path(), "stg-failures", &agent, isolation, 25).await;
    let package = |install: &str| {
        format!(
            r#"{{"name":"p","version":"1.0.0","scripts":{{"install":{},"start":"node s.js"}}}}"#,
            serde_json::Value::from(install)
        )
    };

    let failing = package("echo failing on purpose; exit 3");
    let (app, build) = cc
        .stage("failing", &[("package.json", failing.as_bytes(), 0o644)])
        .await;
    assert_eq!(build.state, BuildState::Failed);
    let error = build.error.unwrap();
    assert!(
        error.starts_with("Installing dependencies with npm failed (exit status"),
        "{error}"
    );
    let lines = stg_until(&agent, &app, "Staging failed").await;
    assert!(
        lines.iter().any(|l| l.contains("failing on purpose")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Staging failed: Installing dependencies with npm failed")),
        "{lines:#?}"
    );
    cc.assert_nothing_left("after a failed install").await;

    let hog = package("node -e \"const a = []; for (;;) a.push(Buffer.alloc(16 << 20, 1))\"");
    let (app, build) = cc
        .stage("hog", &[("package.json", hog.as_bytes(), 0o644)])
        .await;
    assert_eq!(build.state, BuildState::Failed);
    let error = build.error.unwrap();
    assert!(error.contains("ran out of memory"), "{error}");
    assert!(error.contains("256 MiB"), "{error}");
    let lines = stg_until(&agent, &app, "Staging failed").await;
    assert!(
        lines.iter().any(|l| l.contains("out of memory")),
        "{lines:#?}"
    );
    cc.assert_nothing_left("after an install killed for memory")
        .await;

    // A daemonised child too: nothing survives the container.
    let slow = package("(setsid sleep 600 &); sleep 600");
    let (app, build) = cc
        .stage("slow", &[("package.json", slow.as_bytes(), 0o644)])
        .await;
    assert_eq!(build.state, BuildState::Failed);
    let error = build.error.unwrap();
    assert!(
        error.contains("did not finish within staging_timeout_secs (25 s)"),
        "{error}"
    );
    stg_until(&agent, &app, "Staging failed").await;
    cc.assert_nothing_left("after an install past the time limit")
        .await;
    cc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_without_isolation_says_so_in_every_build() {
    let data = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start();
    let isolation = StagingIsolation {
        mode: IsolationMode::None,
        ..StagingIsolation::default()
    };
    let cc = start_cc(data.path(), "stg-none", &agent, isolation, 60).await;
    let (app, build) = cc
        .stage("plain", &[("index.html", b"<h1>hi</h1>".as_slice(), 0o644)])
        .await;
    assert_eq!(build.state, BuildState::Staged, "{build:?}");
    let lines = stg_until(&agent, &app, "Staging complete").await;
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("WARNING: staging WITHOUT isolation")),
        "{lines:#?}"
    );
    cc.stop().await;
}

/// The staging containers the runtime knows for the cloud controller configured as `config`.
async fn staging_containers(config: &Config) -> Vec<String> {
    hydrant_container::Containers::open(&config.staging_containers(), Vec::new())
        .await
        .unwrap()
        .list()
        .await
        .unwrap()
}

#[test]
fn a_cloud_controller_killed_mid_install_removes_the_leftovers_when_it_starts_again() {
    require_root(
        "a_cloud_controller_killed_mid_install_removes_the_leftovers_when_it_starts_again",
    );
    let data = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start();
    let isolation = StagingIsolation {
        network: hydrant_container::net::NetConfig {
            bridge: test_bridge(),
            subnet: "10.254.221.0/24".into(),
            ..StagingIsolation::default().network
        },
        ..StagingIsolation::default()
    };
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };

    // The first life: an install step that never ends, then the process "dies": its runtime
    // goes away without running any of its cleanup.
    let first = runtime();
    let config = first.block_on(async {
        let cc = start_cc(data.path(), "stg-killed-1", &agent, isolation.clone(), 600).await;
        let package =
            br#"{"name":"k","version":"1.0.0","scripts":{"install":"sleep 600","start":"x"}}"#;
        let app = cc
            .admin
            .create_app(&hydrant_api::CreateApp {
                name: "killed".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let dir = app_dir(&[("package.json", package.as_slice(), 0o644)]);
        cc.admin.push_dir(&app.guid, dir.path()).await.unwrap();
        let build = cc
            .admin
            .create_build(&app.guid, &hydrant_api::CreateBuild::default())
            .await
            .unwrap();
        let config = cc.config.clone();
        let watched = config.clone();
        let client = cc.admin.clone();
        wait_for(BUILD_WAIT, "the staging container to run", move || {
            let (config, client, guid) = (watched.clone(), client.clone(), build.guid.clone());
            async move {
                let build = client.build(&guid).await.unwrap();
                assert_ne!(build.state, BuildState::Failed, "{build:?}");
                !staging_containers(&config).await.is_empty()
            }
        })
        .await;
        std::mem::forget(cc);
        config
    });
    // A killed process is wholly gone before it starts again: wait until the runtime's workers
    // have dropped every task (and with them the database connection and the bridge lock),
    // still without running any shutdown path.
    first.shutdown_timeout(Duration::from_secs(30));
    let prefix = format!("{}-", config.staging_isolation.network.bridge);
    let listed = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default()
    };
    let netns = || listed("/run/netns");
    // The kernel removes a veth some time after its namespace goes (its teardown is deferred to
    // a work queue), so the host side is waited for too, not assumed gone with the namespace.
    let veths = || listed("/sys/class/net");
    let second = runtime();
    second.block_on(async {
        assert_eq!(
            staging_containers(&config).await.len(),
            1,
            "the killed controller's container outlived it"
        );
        assert_eq!(netns().len(), 1, "and so did its network namespace");

        let cc = start_cc(data.path(), "stg-killed-2", &agent, isolation, 600).await;
        let watched = config.clone();
        wait_for(
            Duration::from_secs(30),
            "the leftovers to be removed",
            move || {
                let config = watched.clone();
                async move { staging_containers(&config).await.is_empty() }
            },
        )
        .await;
        wait_for(
            Duration::from_secs(30),
            "the network leftovers to go",
            || {
                let empty = netns().is_empty() && veths().is_empty();
                async move { empty }
            },
        )
        .await;
        cc.assert_nothing_left("after a restart").await;
        cc.stop().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_containers_cannot_be_made_installs_fail_saying_how_to_fix_it() {
    let data = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start();
    let mut isolation = StagingIsolation {
        attach_network: false,
        ..StagingIsolation::default()
    };
    isolation.containers.runtime = "/nonexistent/runc".into();
    let cc = start_cc(data.path(), "stg-unavailable", &agent, isolation, 60).await;

    let package = br#"{"name":"u","version":"1.0.0","scripts":{"install":"id","start":"x"}}"#;
    let (app, build) = cc
        .stage(
            "needs-install",
            &[("package.json", package.as_slice(), 0o644)],
        )
        .await;
    assert_eq!(build.state, BuildState::Failed);
    let error = build.error.unwrap();
    assert!(
        error.starts_with(
            "Installing dependencies with npm cannot run: cannot run apps in containers"
        ),
        "{error}"
    );
    assert!(error.contains("--isolation none"), "{error}");
    let lines = stg_until(&agent, &app, "Staging failed").await;
    assert!(
        !lines.iter().any(|l| l.contains("uid=")),
        "nothing ran unisolated: {lines:#?}"
    );

    // Builds without an install step run none of the app's code, and still stage.
    let (_, build) = cc
        .stage("plain", &[("index.html", b"<h1>hi</h1>".as_slice(), 0o644)])
        .await;
    assert_eq!(build.state, BuildState::Staged, "{build:?}");
    cc.stop().await;
}
