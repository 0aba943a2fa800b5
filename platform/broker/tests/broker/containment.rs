//! Service nodes run in containers under their plan's limits: their own mount, pid, ipc and
//! uts namespaces (the host's network: they listen where credentials say), the unprivileged
//! user, no capabilities, seccomp, a read-only root, and the kernel's memory and pids limits;
//! a plan change gives a Redis node a container of the new size with its data. With
//! `isolation = "none"` nodes stay plain child processes, as before.

use serde_json::json;

use crate::{
    Running, config, eventually, guid, ports, redis_cli, require, run, start, start_fresh,
};

/// A stopped broker (data directory `dir`) left no cgroup of its nodes' parent in any hierarchy.
#[track_caller]
fn assert_no_cgroup_left(dir: &std::path::Path) {
    let parent = hydrant_broker::Config {
        data_dir: std::fs::canonicalize(dir).unwrap(),
        ..hydrant_broker::Config::default()
    }
    .container_config()
    .cgroup_parent;
    for hierarchy in ["memory", "pids", ""] {
        let left = std::path::Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join(&parent);
        assert!(
            !left.exists(),
            "a stopped broker leaves no cgroup: {}",
            left.display()
        );
    }
}

fn need_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: service node containers (runc, cgroups) need it; run the \
         tests as root, as CI does"
    );
}

fn status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn namespace(pid: &str, kind: &str) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

/// The cgroup file `file` of node `node`'s container (v1 `hierarchy`, or v2).
fn cgroup_value(
    data_dir: &std::path::Path,
    node: &str,
    hierarchy: &str,
    v1: &str,
    v2: &str,
) -> Option<u64> {
    let parent = hydrant_broker::Config {
        data_dir: std::fs::canonicalize(data_dir).unwrap(),
        ..hydrant_broker::Config::default()
    }
    .container_config()
    .cgroup_parent;
    let root = std::path::Path::new("/sys/fs/cgroup");
    [
        root.join(hierarchy).join(&parent).join(node).join(v1),
        root.join(&parent).join(node).join(v2),
    ]
    .iter()
    .find_map(|f| std::fs::read_to_string(f).ok())
    .and_then(|t| t.trim().parse().ok())
}

/// The memory limit of node `node`'s container, in bytes.
fn memory_limit(data_dir: &std::path::Path, node: &str) -> Option<u64> {
    cgroup_value(
        data_dir,
        node,
        "memory",
        "memory.limit_in_bytes",
        "memory.max",
    )
}

async fn node_pid(b: &Running, prefix: &str) -> u32 {
    b.nodes()
        .await
        .into_iter()
        .find(|n| n.0.starts_with(prefix))
        .map_or(0, |n| n.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_node_runs_in_a_container_under_its_plans_limits() {
    require("redis");
    need_root();
    let (dir, b) = start_fresh().await;
    let (id, c) = b.provision_bound("redis").await;
    assert_eq!(redis_cli(&c, &["SET", "kept", "yes"]).await.trim(), "OK");
    let pid = node_pid(&b, "redis-").await;
    assert_ne!(pid, 0);

    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    let uids = status_field(pid, "Uid");
    assert!(
        uids.split_whitespace().all(|u| u == nobody.to_string()),
        "runs as nobody: {uids}"
    );
    assert_eq!(
        status_field(pid, "CapEff"),
        "0000000000000000",
        "no capabilities"
    );
    assert_eq!(status_field(pid, "Seccomp"), "2", "a seccomp filter");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    let node = pid.to_string();
    for kind in ["pid", "mnt", "ipc", "uts"] {
        assert_ne!(
            namespace(&node, kind),
            namespace("self", kind),
            "its own {kind} namespace"
        );
    }
    assert_eq!(
        namespace(&node, "net"),
        namespace("self", "net"),
        "the host's network: it listens where its credentials say"
    );
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap();
    assert!(
        root.split_whitespace()
            .nth(5)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "a read-only root: {root}"
    );
    let node_name = format!("redis-{id}");
    assert_eq!(
        memory_limit(dir.path(), &node_name),
        Some(128 * 1024 * 1024),
        "the small plan's 64 MiB and 64 MiB of headroom"
    );
    assert_eq!(
        cgroup_value(dir.path(), &node_name, "pids", "pids.max", "pids.max"),
        Some(2048)
    );

    // A bigger plan: a container of the new size, the same data and binding.
    let (status, body) = b.update_plan(&id, "redis", "medium").await;
    assert_eq!(status, 200, "{body}");
    eventually(
        30,
        "the node to serve again in its new container",
        || async { redis_cli(&c, &["GET", "kept"]).await.trim() == "yes" },
    )
    .await;
    assert_ne!(node_pid(&b, "redis-").await, pid);
    assert_eq!(
        memory_limit(dir.path(), &node_name),
        Some((256 + 64) * 1024 * 1024)
    );
    assert_eq!(b.deprovision(&id, "redis").await, 200);
    assert_eq!(
        memory_limit(dir.path(), &node_name),
        None,
        "its cgroup goes with it"
    );
    b.stop().await;
    assert_no_cgroup_left(dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_node_forks_inside_its_container() {
    require("postgresql");
    need_root();
    let (dir, b) = start_fresh().await;
    let (id, c) = b.provision_bound("postgresql").await;
    let (ok, out) = run(
        "psql",
        &[
            c["uri"].as_str().unwrap(),
            "-X",
            "-tAc",
            "SELECT pg_backend_pid()",
        ],
        &[],
    )
    .await;
    assert!(ok, "{out}");
    // The backend's pid as PostgreSQL sees it is in the container's pid namespace: small.
    let inside: u32 = out.trim().parse().unwrap();
    assert!(
        inside < 1000,
        "backends live in the node's own pid namespace: {inside}"
    );
    let pid = node_pid(&b, "postgresql").await;
    assert_ne!(namespace(&pid.to_string(), "pid"), namespace("self", "pid"));
    assert_eq!(
        memory_limit(dir.path(), "postgresql"),
        Some(1024 * 1024 * 1024),
        "a shared node is held to shared_node_memory_mb"
    );
    assert_eq!(b.deprovision(&id, "postgresql").await, 200);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_isolation_none_nodes_are_child_processes() {
    require("redis");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), ports());
    c.isolation = hydrant_broker::Isolation::None;
    let b = start(c).await;
    let (id, creds) = b.provision_bound("redis").await;
    assert_eq!(redis_cli(&creds, &["PING"]).await.trim(), "PONG");
    let pid = node_pid(&b, "redis-").await;
    assert_eq!(
        namespace(&pid.to_string(), "pid"),
        namespace("self", "pid"),
        "a plain child process"
    );
    if nix::unistd::geteuid().is_root() {
        assert_eq!(
            hydrant_broker::node::cgroup::limit(&format!("redis-{id}")),
            Some((64 + 64) * 1024 * 1024),
            "as root, still in a memory cgroup of the plan's size"
        );
    }
    assert_eq!(b.deprovision(&id, "redis").await, 200);
    b.stop().await;
}

/// A broker that ends without stopping its nodes (a panic, its runtime dropped) takes their
/// containers with it, and its next start cleans up what the runtime left.
#[test]
fn a_broker_dropped_without_stopping_leaves_no_node_running() {
    require("redis");
    need_root();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), ports());
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    let rt = runtime();
    let pid = rt.block_on(async {
        let b = start(cfg.clone()).await;
        b.provision(&guid(), "redis", "small", json!({})).await;
        let pid = node_pid(&b, "redis-").await;
        assert_ne!(pid, 0);
        // Not stopped: dropped with the runtime below.
        drop(b);
        pid
    });
    drop(rt);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while crate::process_alive(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the node outlived its broker"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The next start removes the container's remains, and its stop the cgroup parent.
    runtime().block_on(async {
        let b = start(cfg).await;
        b.stop().await;
    });
    assert_no_cgroup_left(dir.path());
}
