//! A broker killed with SIGKILL (no destructor, no shutdown) leaves its nodes' containers
//! running; its next start kills and removes them — the runtime's container list, the cgroups
//! under the broker's parent and the node processes show nothing of the old run — and starts
//! its instances' nodes again on the ports their credentials name. The broker runs as a process
//! of its own here: the test binary run again with [`broker_process`]'s name.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hydrant_broker::PortRange;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{
    Running, config, eventually, guid, ports, process_alive, redis_ping, require, run, start,
};

const CHILD_DIR: &str = "HYDRANT_BROKER_TEST_CHILD_DIR";
const CHILD_PORT: &str = "HYDRANT_BROKER_TEST_CHILD_FIRST_PORT";
const CHILD_UNCONTAINED: &str = "HYDRANT_BROKER_TEST_CHILD_UNCONTAINED";

fn addr_file(dir: &Path) -> PathBuf {
    dir.with_extension("addr")
}

/// The broker as a process of its own, serving until SIGTERM (a clean stop) or SIGKILL; its
/// addresses go to `<data dir>.addr`. Started by
/// [`a_sigkilled_broker_leaves_nothing_its_next_start_does_not_clean`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a broker process the SIGKILL tests of this module start"]
async fn broker_process() {
    let dir = PathBuf::from(std::env::var_os(CHILD_DIR).expect("run by the SIGKILL test"));
    let first: u16 = std::env::var(CHILD_PORT).unwrap().parse().unwrap();
    let mut cfg = config(
        &dir,
        PortRange {
            first,
            last: first + 23,
        },
    );
    if std::env::var_os(CHILD_UNCONTAINED).is_some() {
        cfg.isolation = hydrant_broker::Isolation::None;
    }
    let b = start(cfg).await;
    let addr = json!({"url": b.url, "admin": b.admin.to_string()});
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    std::fs::write(addr_file(&dir), addr.to_string()).unwrap();
    // SIGTERM: a clean stop, as `hydrant run broker` does; SIGKILL: nothing runs.
    term.recv().await;
    b.stop().await;
}

/// Starts [`broker_process`] on `dir` and `ports`: the process and a handle on its API.
async fn spawn_broker(dir: &Path, ports: PortRange) -> (Child, Running) {
    spawn_broker_with(dir, ports, false).await
}

/// [`spawn_broker`], with `isolation = "none"` when `uncontained`.
async fn spawn_broker_with(dir: &Path, ports: PortRange, uncontained: bool) -> (Child, Running) {
    let _ = std::fs::remove_file(addr_file(dir));
    let mut command = Command::new(std::env::current_exe().unwrap());
    if uncontained {
        command.env(CHILD_UNCONTAINED, "1");
    }
    let child = command
        .args([
            "--exact",
            "orphans::broker_process",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_PORT, ports.first.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let read = || {
        std::fs::read_to_string(addr_file(dir))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
    };
    eventually(60, "the broker process to serve", || async {
        read().is_some()
    })
    .await;
    let addr = read().unwrap();
    let running = Running {
        url: addr["url"].as_str().unwrap().to_owned(),
        admin: addr["admin"].as_str().unwrap().parse().unwrap(),
        dir: dir.to_path_buf(),
        client: reqwest::Client::new(),
        // Not this process's broker: never stopped through these.
        shutdown: CancellationToken::new(),
        task: tokio::spawn(std::future::pending()),
    };
    (child, running)
}

/// Stops the broker process with SIGTERM (a clean stop, as `hydrant run broker` gets) and
/// waits up to 60 s for it to exit.
async fn stop_cleanly(child: &mut Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the broker did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The broker's containers as the runtime lists them, and its cgroups as the kernel shows them.
async fn kernel_view(dir: &Path) -> (Vec<String>, Vec<PathBuf>) {
    let containers = hydrant_broker::Config {
        data_dir: std::fs::canonicalize(dir).unwrap(),
        ..hydrant_broker::Config::default()
    }
    .container_config();
    let root = containers.state_dir.join("runc").display().to_string();
    let (ok, out) = run("runc", &["--root", &root, "list", "-q"], &[]).await;
    let listed = if ok {
        out.lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect()
    } else {
        // No state directory yet / any more: the runtime knows no container.
        Vec::new()
    };
    let base = Path::new("/sys/fs/cgroup");
    let mut cgroups = Vec::new();
    for hierarchy in ["memory", "pids", "cpu", "unified", ""] {
        let parent = base.join(hierarchy).join(&containers.cgroup_parent);
        for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                cgroups.push(entry.path());
            }
        }
    }
    cgroups.sort();
    (listed, cgroups)
}

async fn psql_ok(c: &Value) -> bool {
    let (ok, out) = run(
        "psql",
        &[c["uri"].as_str().unwrap(), "-tAc", "SELECT 41 + 1"],
        &[],
    )
    .await;
    ok && out.trim() == "42"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_broker_leaves_nothing_its_next_start_does_not_clean() {
    require("redis");
    require("postgresql");
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: service node containers (runc, cgroups) need it; run the tests \
         as root, as CI does"
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("broker");
    let pool = ports();
    let (mut child, b) = spawn_broker(&dir, pool).await;
    let (redis_id, pg_id) = (guid(), guid());
    b.provision(&redis_id, "redis", "small", json!({})).await;
    b.provision(&pg_id, "postgresql", "small", json!({})).await;
    let redis = b.bind(&redis_id, &guid(), "redis", json!({})).await;
    let pg = b.bind(&pg_id, &guid(), "postgresql", json!({})).await;
    assert!(redis_ping(&redis).await && psql_ok(&pg).await);
    let before: Vec<(String, u32, Vec<u16>)> = b.nodes().await;
    assert_eq!(before.len(), 2, "{before:?}");
    let (listed, cgroups) = kernel_view(&dir).await;
    assert_eq!(
        listed.len(),
        2,
        "the runtime lists both nodes' containers: {listed:?}"
    );
    assert!(!cgroups.is_empty());

    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // What the killed broker left: its nodes go on without it.
    let orphans: Vec<u32> = before
        .iter()
        .map(|n| n.1)
        .filter(|p| process_alive(*p))
        .collect();
    let (left, _) = kernel_view(&dir).await;
    eprintln!(
        "after SIGKILL: {} node processes alive, containers listed {left:?}",
        orphans.len()
    );

    let (mut child, b) = spawn_broker(&dir, pool).await;
    eventually(60, "both instances to serve again", || async {
        redis_ping(&redis).await && psql_ok(&pg).await
    })
    .await;
    let after = b.nodes().await;
    let names = |n: &[(String, u32, Vec<u16>)]| {
        let mut v: Vec<(String, Vec<u16>)> = n.iter().map(|n| (n.0.clone(), n.2.clone())).collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&after),
        names(&before),
        "the same nodes on the same ports"
    );
    for (name, pid, _) in &before {
        assert!(
            !process_alive(*pid),
            "{name}'s old process {pid} outlived the restart"
        );
    }
    let (listed, cgroups_now) = kernel_view(&dir).await;
    let mut want: Vec<String> = after.iter().map(|n| n.0.clone()).collect();
    want.sort();
    let mut listed = listed;
    listed.sort();
    assert_eq!(
        listed, want,
        "the runtime lists exactly this run's containers"
    );
    for c in &cgroups_now {
        let id = c.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            want.contains(&id),
            "a cgroup of no running node: {}",
            c.display()
        );
    }

    // Deprovisioned and stopped, it leaves nothing.
    assert_eq!(b.deprovision(&redis_id, "redis").await, 200);
    assert_eq!(b.deprovision(&pg_id, "postgresql").await, 200);
    stop_cleanly(&mut child).await;
    let (listed, cgroups) = kernel_view(&dir).await;
    assert!(
        listed.is_empty() && cgroups.is_empty(),
        "{listed:?} {cgroups:?}"
    );
    for (_, pid, _) in after {
        assert!(!process_alive(pid));
    }
}

/// Uncontained (`isolation = "none"`), a SIGKILLed broker's nodes are orphans holding their
/// ports; the next start kills the process group each node directory notes, and the node
/// starts again on its port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_uncontained_brokers_orphan_nodes_are_killed_at_its_next_start() {
    require("redis");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("broker");
    let pool = ports();
    let (mut child, b) = spawn_broker_with(&dir, pool, true).await;
    let (id, redis) = b.provision_bound("redis").await;
    assert!(redis_ping(&redis).await);
    let old = b.nodes().await[0].1;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        process_alive(old),
        "an uncontained node outlives its SIGKILLed broker"
    );

    let (mut child, b) = spawn_broker_with(&dir, pool, true).await;
    eventually(
        60,
        "the instance to serve again from a new node",
        || async {
            let now = b.nodes().await.first().map_or(0, |n| n.1);
            now != 0 && now != old && redis_ping(&redis).await
        },
    )
    .await;
    assert!(!process_alive(old), "the orphan {old} was killed");
    assert_eq!(b.deprovision(&id, "redis").await, 200);
    stop_cleanly(&mut child).await;
}
