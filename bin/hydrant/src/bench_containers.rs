//! `hydrant bench containers`: what a container costs an instance start and the host, measured
//! with the same runtime, bundles, stack and cgroups the executor uses.
//!
//! It starts `--count` containers one after another and keeps them all running (an idle
//! command, so the figures are the container's own cost, not an app's). For each start it
//! measures spawn (bundle, parent cgroup, `runc run` started) and spawn until the command ran
//! (it touches a file, polled every millisecond); once all run, the host memory they take
//! (`MemAvailable` before and after), the host-side `runc run` processes' RSS and the
//! containers' own cgroup memory; then the time to destroy each one.
//!
//! Invariant: everything it makes is under its own cgroup parent (`hydrant-bench/<pid>`) and a
//! state directory of its own, and is removed at the end, also when a start fails.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hydrant_container::{Config, Container, ContainerSpec, Containers, Limits, Network};
use serde::Serialize;

/// How long one container may take until its command has run.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// How long the started containers settle before memory is read.
const SETTLE: Duration = Duration::from_millis(500);

/// Arguments of `hydrant bench containers`.
#[derive(Debug, clap::Args)]
pub struct ContainersArgs {
    /// How many containers to start and keep running at once.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Memory limit of each container, MiB (the app quota Diego would give it).
    #[arg(long, default_value_t = 64)]
    memory_mb: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Quantiles of one measured step, milliseconds.
#[derive(Debug, Serialize)]
struct Quantiles {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn quantiles(mut samples: Vec<Duration>) -> Quantiles {
    samples.sort();
    let at = |p: f64| {
        let rank = ((samples.len().saturating_sub(1)) as f64 * p).round() as usize;
        samples
            .get(rank.min(samples.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    Quantiles {
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

/// What the run measured.
#[derive(Debug, Serialize)]
struct Report {
    containers: usize,
    runtime: String,
    cgroups: &'static str,
    /// Bundle, parent cgroup and `runc run` started.
    spawn: Quantiles,
    /// Spawn until the container's command had run: what a container adds to an instance start.
    start: Quantiles,
    /// Wall time to start them all, seconds.
    all_started_secs: f64,
    /// `MemAvailable` lost while they all ran, per container, MiB.
    host_mib_per_container: f64,
    /// RSS of each host-side `runc run` process, MiB (mean).
    runc_rss_mib_per_container: f64,
    /// Each container's own cgroup memory, MiB (mean).
    cgroup_mib_per_container: f64,
    /// Kill, `runc delete`, cgroup and bundle removal.
    destroy: Quantiles,
    /// What could not be cleaned up (empty when all went well).
    cleanup_failures: Vec<String>,
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn spec(dir: &Path, id: &str, memory_mb: u64, config: &Config) -> anyhow::Result<ContainerSpec> {
    let app = dir.join(id).join("app");
    let tmp = dir.join(id).join("tmp");
    for d in [&app, &tmp] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    Ok(ContainerSpec {
        id: id.to_owned(),
        args: vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            "touch /home/vcap/app/up; exec sleep 3600".to_owned(),
        ],
        env: vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())],
        cwd: None,
        app_dir: app,
        tmp_dir: tmp,
        binds: vec![],
        limits: Limits::for_memory_mb(memory_mb, config.pids_limit, config.tmp_mb),
        network: Network::Private,
    })
}

/// Starts one container and waits until its command has run; (container, spawn, start).
async fn start_one(
    containers: &Containers,
    spec: &ContainerSpec,
) -> anyhow::Result<(Container, Duration, Duration)> {
    let began = Instant::now();
    let mut container = containers.spawn(spec).await?;
    let spawn = container.spawn_latency();
    // Nothing reads them: an idle command writes nothing.
    drop(container.take_stdout());
    drop(container.take_stderr());
    let marker = spec.app_dir.join("up");
    let deadline = began + START_DEADLINE;
    while !marker.exists() {
        if Instant::now() >= deadline {
            let end = container.destroy().await;
            anyhow::bail!(
                "container {} did not run its command within {START_DEADLINE:?} \
                 (exit {:?})",
                spec.id,
                end.exit_code
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok((container, spawn, began.elapsed()))
}

pub async fn run(args: ContainersArgs) -> anyhow::Result<ExitCode> {
    if args.count == 0 {
        return Err(crate::exit::usage(
            "--count 0: start at least one container",
        ));
    }
    if args.memory_mb < 8 {
        return Err(crate::exit::usage(
            "--memory-mb: at least 8 (a shell and sleep need a few MiB)",
        ));
    }
    let pid = std::process::id();
    let dir: PathBuf = std::env::temp_dir().join(format!("hydrant-bench-containers-{pid}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let config =
        Config::default().with_defaults(&format!("hydrant-bench/{pid}"), dir.join("containers"));
    let containers = match Containers::open(&config, vec![]).await {
        Ok(containers) => containers,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
    };
    let apps = dir.join("instances");

    eprintln!(
        "starting {} containers ({} MiB, pids {}) one after another...",
        args.count, args.memory_mb, config.pids_limit
    );
    let before = mem_available_kib();
    let began = Instant::now();
    let mut running = Vec::with_capacity(args.count);
    let (mut spawns, mut starts) = (Vec::new(), Vec::new());
    let mut failed = None;
    for i in 0..args.count {
        let started = match spec(&apps, &format!("bench{i}"), args.memory_mb, &config) {
            Ok(spec) => start_one(&containers, &spec).await,
            Err(e) => Err(e),
        };
        match started {
            Ok((container, spawn, start)) => {
                running.push(container);
                spawns.push(spawn);
                starts.push(start);
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let all_started = began.elapsed();
    tokio::time::sleep(SETTLE).await;
    let after = mem_available_kib();
    let n = running.len().max(1) as f64;
    let runc_kib: u64 = running
        .iter()
        .filter_map(Container::runtime_pid)
        .map(rss_kib)
        .sum();
    let cgroup_bytes: u64 = running.iter().map(|c| c.usage().memory_bytes).sum();
    let started_count = running.len();

    let mut destroys = Vec::with_capacity(running.len());
    let mut cleanup_failures = Vec::new();
    for container in running {
        let t = Instant::now();
        let end = container.destroy().await;
        destroys.push(t.elapsed());
        cleanup_failures.extend(end.cleanup_failures);
    }
    cleanup_failures.extend(containers.close().await);
    // The shared `hydrant-bench` level too, unless another bench still uses it.
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = std::fs::remove_dir(hierarchy.path().join("hydrant-bench"));
    }
    let _ = std::fs::remove_dir("/sys/fs/cgroup/hydrant-bench");
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        cleanup_failures.push(format!("{}: {e}", dir.display()));
    }
    if let Some(error) = failed {
        return Err(error.context(format!(
            "after {started_count} of {} containers started (all removed again)",
            args.count
        )));
    }

    let report = Report {
        containers: started_count,
        runtime: containers.runtime().display().to_string(),
        cgroups: containers.cgroup_version(),
        spawn: quantiles(spawns),
        start: quantiles(starts),
        all_started_secs: all_started.as_secs_f64(),
        host_mib_per_container: before.saturating_sub(after) as f64 / 1024.0 / n,
        runc_rss_mib_per_container: runc_kib as f64 / 1024.0 / n,
        cgroup_mib_per_container: cgroup_bytes as f64 / 1_048_576.0 / n,
        destroy: quantiles(destroys),
        cleanup_failures,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} containers ({}, cgroup {}), started one after another in {:.1} s, all running \
             at once",
            report.containers, report.runtime, report.cgroups, report.all_started_secs
        );
        let row = |what: &str, q: &Quantiles| {
            println!(
                "  {what:<38} p50 {:>6.1} ms   p99 {:>6.1} ms   max {:>6.1} ms",
                q.p50_ms, q.p99_ms, q.max_ms
            );
        };
        row("spawn (bundle, cgroup, runc started)", &report.spawn);
        row("start (spawn until the command ran)", &report.start);
        row("destroy (kill, delete, cgroup, bundle)", &report.destroy);
        println!(
            "  memory per running container: {:.1} MiB of the host's (MemAvailable), \
             {:.1} MiB runc run RSS, {:.2} MiB in its cgroup",
            report.host_mib_per_container,
            report.runc_rss_mib_per_container,
            report.cgroup_mib_per_container
        );
        if !report.cleanup_failures.is_empty() {
            println!("  NOT cleaned up: {:?}", report.cleanup_failures);
        }
    }
    Ok(if report.cleanup_failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank_in_milliseconds() {
        let q = quantiles((1..=100).rev().map(Duration::from_millis).collect());
        assert!((q.p50_ms - 51.0).abs() < 1e-9, "{q:?}");
        assert!((q.p99_ms - 99.0).abs() < 1e-9, "{q:?}");
        assert!((q.max_ms - 100.0).abs() < 1e-9, "{q:?}");
        let none = quantiles(Vec::new());
        assert!(none.p50_ms == 0.0 && none.max_ms == 0.0, "{none:?}");
    }
}
