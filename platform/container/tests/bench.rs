//! Container start latency and memory per container, measured with real containers (root).
//! A measurement, not a check: run it on purpose, in release mode, on a quiet machine:
//!
//! ```text
//! cargo test -p hydrant-container --release --test bench -- --ignored --nocapture
//! ```
//!
//! Start latency is `spawn` (bundle, parent cgroup, starting `runc run`) until the trivial
//! command has exited, then `destroy` (delete, counters, cgroup and bundle removal) on top.
//! Memory per container is the host-side `runc run` process's RSS plus the container's own
//! cgroup usage while it runs an idle `sleep`.

#![allow(clippy::unwrap_used, reason = "test code")]

use std::time::{Duration, Instant};

use hydrant_container::{Config, ContainerSpec, Containers, Limits, Network};

const STARTS: usize = 100;
const IDLE: usize = 20;

fn spec(dir: &std::path::Path, id: &str, args: &[&str]) -> ContainerSpec {
    let app = dir.join(id).join("app");
    let tmp = dir.join(id).join("tmp");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();
    ContainerSpec {
        id: id.to_owned(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: None,
        app_dir: app,
        tmp_dir: tmp,
        binds: vec![],
        limits: Limits::for_memory_mb(256, 2048, 64),
        network: Network::Private,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn start_latency_and_memory_per_container() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "containers need root: run as root"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = Config::default().with_defaults(
        &format!("hydrant-bench/{}", std::process::id()),
        dir.path().join("containers"),
    );
    let containers = Containers::open(&config, vec![]).await.unwrap();

    let mut run = Vec::with_capacity(STARTS);
    let mut total = Vec::with_capacity(STARTS);
    let mut spawn = Vec::with_capacity(STARTS);
    for i in 0..STARTS {
        let began = Instant::now();
        let mut container = containers
            .spawn(&spec(dir.path(), &format!("t{i}"), &["/bin/true"]))
            .await
            .unwrap();
        spawn.push(container.spawn_latency());
        assert_eq!(container.wait().await, Some(0));
        run.push(began.elapsed());
        let end = container.destroy().await;
        assert!(
            end.cleanup_failures.is_empty(),
            "{:?}",
            end.cleanup_failures
        );
        total.push(began.elapsed());
    }
    for v in [&mut run, &mut total, &mut spawn] {
        v.sort();
    }
    println!(
        "{STARTS} starts of /bin/true: spawn p50 {:?} p99 {:?}; spawn→exited p50 {:?} p99 {:?}; \
         spawn→destroyed p50 {:?} p99 {:?}",
        percentile(&spawn, 0.5),
        percentile(&spawn, 0.99),
        percentile(&run, 0.5),
        percentile(&run, 0.99),
        percentile(&total, 0.5),
        percentile(&total, 0.99),
    );

    let mut idle = Vec::new();
    for i in 0..IDLE {
        let id = format!("idle{i}");
        let marker = dir.path().join(&id).join("app/up");
        let container = containers
            .spawn(&spec(
                dir.path(),
                &id,
                &["/bin/sh", "-c", "touch /home/vcap/app/up; exec sleep 300"],
            ))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !marker.exists() {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        idle.push(container);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let runc_kib: u64 = idle.iter().map(|c| rss_kib(c.runtime_pid().unwrap())).sum();
    let cgroup_bytes: u64 = idle.iter().map(|c| c.usage().memory_bytes).sum();
    println!(
        "{IDLE} idle sleep containers: runc run RSS {:.1} MiB each, container cgroup {:.2} MiB \
         each, {:.1} MiB each in all",
        runc_kib as f64 / 1024.0 / IDLE as f64,
        cgroup_bytes as f64 / 1048576.0 / IDLE as f64,
        (runc_kib as f64 / 1024.0 + cgroup_bytes as f64 / 1048576.0) / IDLE as f64,
    );
    for container in idle {
        container.destroy().await;
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = std::fs::remove_dir(hierarchy.path().join(&config.cgroup_parent));
    }
}
