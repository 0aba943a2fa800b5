//! Real containers, as a user of the platform relies on them: an app runs as uid 2000 with no
//! capabilities, sees nothing of the platform or of other containers, cannot signal host
//! processes, is OOM-killed by the kernel at its memory limit and reported so, cannot fork
//! past its pids limit, leaves nothing behind when destroyed, and what a killed owner left is
//! found and removed.
//!
//! These tests need root (runc, cgroups); without it they fail and say so.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hydrant_container::{
    Config, Container, ContainerSpec, Containers, End, Limits, Network, Signal,
};
use tokio::io::AsyncReadExt as _;

const MIB: u64 = 1024 * 1024;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests run real containers (runc, cgroups) and need root: run them as root, as CI does"
    );
}

/// An owner of containers with its own cgroup parent and state dir under `dir`.
struct Owner {
    dir: tempfile::TempDir,
    /// Stands for the platform's data dir (the signing key lives there).
    platform: PathBuf,
    containers: Containers,
    config: Config,
}

fn unique(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), fastish())
}

fn fastish() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()))
}

async fn owner(name: &str) -> Owner {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let platform = dir.path().join("platform");
    std::fs::create_dir_all(&platform).unwrap();
    std::fs::write(platform.join("signing.key"), "SECRET-KEY").unwrap();
    let config = Config::default().with_defaults(
        &format!("hydrant-test/{}", unique(name)),
        dir.path().join("containers"),
    );
    let containers = Containers::open(&config, vec![platform.clone()])
        .await
        .unwrap();
    Owner {
        dir,
        platform,
        containers,
        config,
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        // The test's own parent cgroups (empty by now when the test passed).
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(hierarchy.path().join(&self.config.cgroup_parent));
            let _ = std::fs::remove_dir(hierarchy.path().join("hydrant-test"));
        }
    }
}

impl Owner {
    fn spec(&self, id: &str, script: &str) -> ContainerSpec {
        let base = self.dir.path().join("instances").join(id);
        let app = base.join("app");
        let tmp = base.join("tmp");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::create_dir_all(&tmp).unwrap();
        ContainerSpec {
            id: id.to_owned(),
            args: vec!["/bin/bash".into(), "-c".into(), script.into()],
            env: vec![
                ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
                ("HOME".into(), "/home/vcap/app".into()),
                ("SECRET_OF".into(), id.into()),
            ],
            cwd: None,
            app_dir: app,
            tmp_dir: tmp,
            binds: vec![],
            limits: Limits::for_memory_mb(64, 64, 16),
            network: Network::Private,
        }
    }

    /// Runs `script` to its end; its stdout and how it ended.
    async fn run(&self, id: &str, script: &str) -> (String, End) {
        let container = self.containers.spawn(&self.spec(id, script)).await.unwrap();
        finish(container).await
    }

    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        [
            "memory", "pids", "cpu", "cpuacct", "freezer", "devices", "cpuset", "blkio",
        ]
        .iter()
        .map(|h| {
            Path::new("/sys/fs/cgroup")
                .join(h)
                .join(&self.config.cgroup_parent)
        })
        .filter(|p| {
            std::fs::read_dir(p)
                .is_ok_and(|mut entries| entries.any(|e| e.is_ok_and(|e| e.path().is_dir())))
        })
        .collect()
    }
}

/// Destroys `container` and fails unless everything it made was removed.
async fn destroyed_clean(container: Container) {
    let end = container.destroy().await;
    assert!(
        end.cleanup_failures.is_empty(),
        "{:?}",
        end.cleanup_failures
    );
}

async fn finish(mut container: Container) -> (String, End) {
    let mut out = container.take_stdout().unwrap();
    let mut err = container.take_stderr().unwrap();
    let reader = tokio::spawn(async move {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text).await;
        text
    });
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text).await;
        text
    });
    tokio::time::timeout(Duration::from_secs(30), container.wait())
        .await
        .expect("the container did not end within 30 s");
    let end = container.destroy().await;
    let text = reader.await.unwrap();
    let errors = errors.await.unwrap();
    if !errors.is_empty() {
        eprintln!("stderr: {errors}");
    }
    assert!(
        end.cleanup_failures.is_empty(),
        "{:?}",
        end.cleanup_failures
    );
    (text, end)
}

/// Waits (10 s at most) for a file a container writes once it is up; fails the test saying
/// `what` did not happen.
async fn wait_for_file(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn runs_as_vcap_without_capabilities_or_privileges() {
    let owner = owner("caps").await;
    let (out, end) = owner
        .run(
            "caps",
            "id -u; id -g; grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status; \
             echo home=$HOME; pwd; ulimit -n; hostname; touch /home/vcap/app/mine && echo wrote",
        )
        .await;
    assert_eq!(end.exit_code, Some(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "2000", "{out}");
    assert_eq!(lines[1], "2000", "{out}");
    for cap in ["CapEff", "CapPrm", "CapBnd"] {
        let line = lines.iter().find(|l| l.starts_with(cap)).unwrap();
        assert!(line.ends_with("0000000000000000"), "{line}");
    }
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(
        out.contains("home=/home/vcap/app\n/home/vcap/app\n16384\ncaps\nwrote"),
        "{out}"
    );
}

#[tokio::test]
async fn the_platform_and_the_host_are_invisible() {
    let owner = owner("hidden").await;
    let platform = owner.platform.display().to_string();
    let script = format!(
        "cat /etc/shadow; echo shadow=$?; \
         ls {platform}/signing.key 2>&1; cat {platform}/signing.key; echo key=$?; \
         ls /root 2>&1; echo root=$?; ls /work /var /run /srv /opt/hydrant 2>&1; \
         cat /proc/1/environ | tr '\\0' '\\n' | grep SECRET_OF; \
         ls /proc | grep -c '^[0-9]'; \
         mount -t tmpfs none /tmp 2>&1; echo mount=$?; \
         unshare -U true 2>&1; echo unshare=$?; \
         touch /usr/x 2>&1; echo usr=$?; ls -ld /tmp; grep tmp /proc/mounts; echo x > /tmp/x && echo tmp-ok"
    );
    let (out, end) = owner.run("hidden", &script).await;
    assert_eq!(end.exit_code, Some(0), "{out}");
    assert!(
        out.contains("shadow=0"),
        "/etc/shadow is masked (empty): {out}"
    );
    assert!(!out.contains("root:"), "{out}");
    assert!(
        !out.contains("SECRET-KEY"),
        "the platform dir leaked: {out}"
    );
    assert!(out.contains("key=1"), "{out}");
    assert!(out.contains("root=2"), "{out}");
    assert!(out.contains("SECRET_OF=hidden"), "its own environ: {out}");
    assert!(out.contains("mount=32") || out.contains("mount=1"), "{out}");
    assert!(!out.contains("unshare=0"), "{out}");
    assert!(!out.contains("usr=0"), "{out}");
    assert!(out.contains("tmp-ok"), "{out}");
    // Only its own processes: init, bash and a few pipeline members.
    let count: u32 = out
        .lines()
        .find_map(|l| l.parse().ok())
        .expect("a process count");
    assert!(count < 10, "sees {count} processes: {out}");
}

#[tokio::test]
async fn another_container_and_host_processes_are_out_of_reach() {
    let owner = owner("neighbours").await;
    let neighbour = owner
        .containers
        .spawn(&owner.spec(
            "neighbour",
            "echo neighbour-secret > /home/vcap/app/f; sleep 60",
        ))
        .await
        .unwrap();
    let mut host_sleep = tokio::process::Command::new("sleep")
        .arg("60")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let host_pid = host_sleep.id().unwrap();
    let neighbour_dir = owner.dir.path().join("instances/neighbour/app");
    wait_for_file(&neighbour_dir.join("f"), "the neighbour never started").await;
    let script = format!(
        "kill -9 {host_pid} 2>&1; echo kill=$?; \
         cat {}/f 2>&1; echo file=$?; \
         grep -l neighbour /proc/*/environ 2>/dev/null | wc -l",
        neighbour_dir.display()
    );
    let (out, end) = owner.run("intruder", &script).await;
    assert_eq!(end.exit_code, Some(0), "{out}");
    assert!(!out.contains("kill=0"), "{out}");
    assert!(!out.contains("neighbour-secret"), "{out}");
    assert!(
        out.trim_end().ends_with('0'),
        "another container's environ is visible: {out}"
    );
    assert!(
        host_sleep.try_wait().unwrap().is_none(),
        "the host's process was killed from a container"
    );
    let end = neighbour.destroy().await;
    assert!(end.cleanup_failures.is_empty());
}

#[tokio::test]
async fn memory_past_the_limit_is_an_oom_kill_with_its_peak() {
    let owner = owner("oom").await;
    let started = Instant::now();
    let (out, end) = owner
        .run(
            "oom",
            "echo start; exec /usr/bin/python3 -c 'b = []\nwhile True: b.append(bytearray(1 << 20))'",
        )
        .await;
    assert!(out.contains("start"), "{out}");
    assert_eq!(end.exit_code, Some(137), "{end:?}");
    assert!(end.out_of_memory, "{end:?}");
    assert!(
        end.peak_bytes > 60 * MIB && end.peak_bytes <= 64 * MIB,
        "{end:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // A plain SIGKILL is not an OOM.
    let mut container = owner
        .containers
        .spawn(&owner.spec("killed", "touch /home/vcap/app/up; sleep 60"))
        .await
        .unwrap();
    let up = owner.dir.path().join("instances/killed/app/up");
    wait_for_file(&up, "never started").await;
    container.signal(Signal::SIGKILL).await.unwrap();
    let (_, end) = finish(container).await;
    assert_eq!(end.exit_code, Some(137));
    assert!(!end.out_of_memory, "{end:?}");
}

#[tokio::test]
async fn a_fork_bomb_stays_under_the_pids_limit() {
    let owner = owner("forkbomb").await;
    let container = owner
        .containers
        .spawn(&owner.spec("bomb", "bomb() { bomb | bomb & }; bomb; sleep 3"))
        .await
        .unwrap();
    let mut peak = 0;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        peak = peak.max(container.usage().pids);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The host keeps working while the bomb hits its ceiling.
    let host = std::process::Command::new("true").status().unwrap();
    assert!(host.success());
    assert!(peak <= 64, "{peak} pids");
    assert!(peak >= 32, "the bomb never got going: {peak}");
    destroyed_clean(container).await;
}

/// What `hydrant app` shows per instance comes from the kernel: the limits are the cgroup's
/// own `memory.limit_in_bytes` / `pids.max` / `cpu.shares` (or their v2 names), and usage counts
/// the container's processes and memory.
#[tokio::test]
async fn limits_and_usage_are_the_cgroups_own() {
    let owner = owner("usage").await;
    let marker = owner.dir.path().join("instances/busy/app/up");
    let container = owner
        .containers
        .spawn(&owner.spec(
            "busy",
            "sleep 300 & sleep 300 & x=$(head -c 4000000 /dev/zero | tr '\\0' a); \
             touch /home/vcap/app/up; wait",
        ))
        .await
        .unwrap();
    wait_for_file(&marker, "the container never came up").await;
    let limits = container.limits();
    assert_eq!(limits, Limits::for_memory_mb(64, 64, 16));
    let parent = &owner.config.cgroup_parent;
    let read = |hierarchy: &str, file: &str| -> Option<u64> {
        let v1 = Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join(parent)
            .join("busy");
        let v2 = Path::new("/sys/fs/cgroup").join(parent).join("busy");
        [v1, v2]
            .iter()
            .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
            .and_then(|t| t.trim().parse().ok())
    };
    let memory_max = read("memory", "memory.limit_in_bytes").or_else(|| read("", "memory.max"));
    assert_eq!(memory_max, Some(64 * MIB), "the kernel's memory limit");
    assert_eq!(
        read("pids", "pids.max"),
        Some(64),
        "the kernel's pids limit"
    );
    if let Some(shares) = read("cpu", "cpu.shares") {
        assert_eq!(shares, limits.cpu_shares, "the kernel's CPU shares");
    }
    let usage = container.usage();
    // The init shell, bash, two sleeps (and maybe a subshell finishing).
    assert!(usage.pids >= 4, "{usage:?}");
    assert_eq!(Some(usage.pids), read("pids", "pids.current"), "{usage:?}");
    assert!(usage.memory_bytes > 0, "{usage:?}");
    assert!(usage.peak_bytes >= usage.memory_bytes, "{usage:?}");
    destroyed_clean(container).await;
}

#[tokio::test]
async fn a_setsid_double_forked_child_dies_with_its_container() {
    let owner = owner("setsid").await;
    let marker = owner.dir.path().join("instances/daemon/app/pid");
    let container = owner
        .containers
        .spawn(&owner.spec(
            "daemon",
            "setsid bash -c '(sleep 300 & echo $! > /home/vcap/app/inner) ; sleep 300' & \
             sleep 300",
        ))
        .await
        .unwrap();
    let inner = marker.with_file_name("inner");
    wait_for_file(&inner, "the daemon never started").await;
    // The pid inside is not the host's: find the daemon on the host by its cgroup.
    let usage = container.usage();
    assert!(usage.pids >= 4, "{usage:?}");
    let host_pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.contains(&format!("{}/daemon/", owner.config.cgroup_parent)))
        })
        .collect();
    assert!(host_pids.len() >= 4, "{host_pids:?}");
    destroyed_clean(container).await;
    for pid in host_pids {
        let alive =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
        assert!(!alive, "process {pid} outlived its container");
    }
    assert!(owner.cgroup_dirs().is_empty(), "{:?}", owner.cgroup_dirs());
}

#[tokio::test]
async fn sigterm_reaches_the_command_through_init() {
    let owner = owner("term").await;
    let mut container = owner
        .containers
        .spawn(&owner.spec(
            "term",
            "trap 'echo got-term; exit 0' TERM; echo ready > /home/vcap/app/ready; \
             while :; do sleep 0.1; done",
        ))
        .await
        .unwrap();
    let ready = owner.dir.path().join("instances/term/app/ready");
    wait_for_file(&ready, "never ready").await;
    container.signal(Signal::SIGTERM).await.unwrap();
    let started = Instant::now();
    let (out, end) = finish(container).await;
    assert!(out.contains("got-term"), "{out}");
    assert_eq!(end.exit_code, Some(0));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn leftovers_of_a_killed_owner_are_removed() {
    let owner = owner("leftovers").await;
    let mut container = owner
        .containers
        .spawn(&owner.spec("orphan", "echo up > /home/vcap/app/up; sleep 300"))
        .await
        .unwrap();
    let up = owner.dir.path().join("instances/orphan/app/up");
    wait_for_file(&up, "never started").await;
    // The owner dies: its `runc run` is SIGKILLed and the handle is dropped undestroyed.
    let runtime_pid = container.runtime_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(runtime_pid).unwrap()),
        Signal::SIGKILL,
    )
    .unwrap();
    let _ = container.wait().await;
    drop(container);
    assert_eq!(owner.containers.list().await.unwrap(), vec!["orphan"]);
    assert_eq!(owner.containers.cgroup_ids(), vec!["orphan"]);

    // The next owner of the same config finds and removes all of it.
    let next = Containers::open(&owner.config, vec![]).await.unwrap();
    let left = next.cleanup().await.unwrap();
    assert_eq!(left.containers, vec!["orphan"]);
    assert_eq!(left.cgroups, vec!["orphan"]);
    assert_eq!(left.bundles, vec!["orphan"]);
    assert!(left.failures.is_empty(), "{:?}", left.failures);
    assert!(next.list().await.unwrap().is_empty());
    assert!(next.cgroup_ids().is_empty());
    assert!(owner.cgroup_dirs().is_empty(), "{:?}", owner.cgroup_dirs());
    assert!(next.cleanup().await.unwrap().is_empty());
}
