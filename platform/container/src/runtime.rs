//! Running containers with the OCI runtime (`runc`): one [`Containers`] handle per owner (an
//! executor, the stager) made at start, one [`Container`] per running container.
//!
//! Flow: [`Containers::open`] checks the host (root, runtime, cgroups) and lays out the stack
//! → [`Containers::cleanup`] removes what a killed earlier run left → [`Containers::spawn`] writes the bundle, makes
//! the parent cgroup with the limits and starts `runc run` as a child whose stdout/stderr are
//! the container's → [`Container::usage`] reads the cgroup → [`Container::signal`] /
//! [`Container::destroy`] end it and report the [`End`].
//!
//! Invariants: runc's state lives under the owner's own state dir (`runc --root`), so `runc
//! list` shows only the owner's containers and cleanup can never touch another's; a container
//! is destroyed in a fixed order (kill, wait, `runc delete`, read the final counters, remove
//! cgroups, remove the bundle) and every failure on the way is returned, never hidden.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::process::{Child, ChildStderr, ChildStdout};

use crate::cgroup::{CgroupLimits, Cgroups, Layout, Usage};
use crate::spec::{ContainerSpec, Limits, SpawnOptions, valid_id};
use crate::stack::Stack;
use crate::{Config, Error};

/// How long `runc` may take for a kill, delete or list before it is given up on.
const RUNC_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a just-spawned container may take to exist for the runtime.
const CREATE_WAIT: Duration = Duration::from_secs(5);
/// How long a killed container's `runc run` gets to exit.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What the owner's containers share.
#[derive(Debug)]
struct Inner {
    runtime: PathBuf,
    /// `runc --root`: the runtime's state for this owner only.
    state_root: PathBuf,
    bundles: PathBuf,
    stack: Stack,
    cgroups: Cgroups,
    hidden: Vec<PathBuf>,
}

/// The containers of one owner. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Containers {
    inner: Arc<Inner>,
}

/// What [`Containers::cleanup`] found and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Containers the runtime still knew (killed and deleted).
    pub containers: Vec<String>,
    /// Container cgroups removed (their processes killed first).
    pub cgroups: Vec<String>,
    /// Bundle directories removed.
    pub bundles: Vec<String>,
    /// What could not be removed, and why.
    pub failures: Vec<String>,
}

impl Leftovers {
    /// Whether nothing was left.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
            && self.cgroups.is_empty()
            && self.bundles.is_empty()
            && self.failures.is_empty()
    }
}

/// How a container ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct End {
    /// The exit code of the container's command (128 + the signal that killed it), when
    /// known.
    pub exit_code: Option<i32>,
    /// Whether the kernel killed it for using more than its memory limit.
    pub out_of_memory: bool,
    /// The most memory it used, bytes.
    pub peak_bytes: u64,
    /// CPU time it used in all, nanoseconds.
    pub cpu_nanos: u64,
    /// What could not be cleaned up (the container is gone; these remain), empty when all
    /// went well.
    pub cleanup_failures: Vec<String>,
}

/// One running container. Dropping it without [`Container::destroy`] leaves the container
/// running; [`Containers::cleanup`] finds it at the owner's next start.
#[derive(Debug)]
pub struct Container {
    id: String,
    inner: Arc<Inner>,
    child: Child,
    status: Option<ExitStatus>,
    bundle: PathBuf,
    start_latency: Duration,
    limits: Limits,
}

/// The first executable named `program` on `PATH`, or `program` itself when it is a path.
fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        return path.is_file().then_some(path);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

/// The shell's way of numbering an exit: the code, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// What `open` needs of the host: root, the runtime on `PATH`, and cgroup hierarchies with the
/// memory, pids and CPU controllers. Reads only; makes nothing.
fn host(config: &Config) -> Result<(PathBuf, Cgroups), Error> {
    let uid = nix::unistd::geteuid();
    if !uid.is_root() {
        // Say whether the kernel would allow rootless containers, and if not, what blocks them.
        let (reason, fix) = crate::rootless::refusal(
            uid.as_raw(),
            &crate::rootless::UsernsFacts::read(),
            &crate::rootless::CgroupFacts::read(),
        );
        return Err(Error::Host { reason, fix });
    }
    let runtime = which(&config.runtime).ok_or_else(|| Error::Host {
        reason: format!("the OCI runtime {:?} is not installed", config.runtime),
        fix: "install it with `apt-get install runc`, or run `hydrant up --isolation none` \
              (unisolated)"
            .to_owned(),
    })?;
    let cgroups = Cgroups::detect(&config.cgroup_parent)?;
    Ok((runtime, cgroups))
}

impl Containers {
    /// Whether this host can run containers with `config`, without making anything: root, the
    /// runtime on `PATH`, the cgroup controllers. `hydrant up` asks before it starts a role, so
    /// a host that cannot isolate apps is refused before the platform says it is up.
    ///
    /// # Errors
    /// [`Error::Host`] saying what is missing and how to fix it, as [`Containers::open`] would.
    pub fn check_host(config: &Config) -> Result<(), Error> {
        host(config).map(drop)
    }

    /// Checks that this host can run containers and lays out the stack under the state dir.
    /// The owner then calls [`Containers::cleanup`] once, before its first container, to
    /// remove what an earlier run left.
    ///
    /// `hidden` are host paths no container may see (the data dir, the platform binary's
    /// directory); they are masked where a bound host tree would show them.
    ///
    /// # Errors
    /// [`Error::Host`] saying what is missing and how to fix it (run as root, `apt-get install
    /// runc`, mount cgroups, or `--isolation none`); [`Error::Config`] for a bad config;
    /// [`Error::Io`] when the state dir cannot be made.
    pub async fn open(config: &Config, hidden: Vec<PathBuf>) -> Result<Self, Error> {
        config.validate()?;
        if config.cgroup_parent.is_empty() || config.state_dir.as_os_str().is_empty() {
            return Err(Error::Config {
                field: "cgroup_parent",
                message: "cgroup_parent and state_dir must be set (Config::with_defaults)"
                    .to_owned(),
            });
        }
        let (runtime, cgroups) = host(config)?;
        let state_dir = config.state_dir.clone();
        let inner = tokio::task::spawn_blocking(move || -> Result<Inner, Error> {
            std::fs::create_dir_all(&state_dir).map_err(io("cannot create", &state_dir))?;
            let state_dir =
                std::fs::canonicalize(&state_dir).map_err(io("cannot resolve", &state_dir))?;
            // Bundles hold the apps' environments (their credentials): root only.
            set_mode(&state_dir, 0o700)?;
            let state_root = state_dir.join("runc");
            let bundles = state_dir.join("bundles");
            for dir in [&state_root, &bundles] {
                std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
            }
            let stack = Stack::prepare(&state_dir.join("stack"))?;
            // The stack itself must be reachable by uid 2000 once it is the root.
            set_mode(&state_dir.join("stack"), 0o755)?;
            Ok(Inner {
                runtime,
                state_root,
                bundles,
                stack,
                cgroups,
                hidden,
            })
        })
        .await
        .map_err(|e| Error::Host {
            reason: format!("preparing the container state was interrupted: {e}"),
            fix: "retry".to_owned(),
        })??;
        let containers = Self {
            inner: Arc::new(inner),
        };
        containers.check_runtime().await?;
        Ok(containers)
    }

    async fn check_runtime(&self) -> Result<(), Error> {
        let out = self.runc(&["--version"]).await?;
        tracing::debug!(runtime = ?self.inner.runtime, version = %out.lines().next().unwrap_or(""),
            "container runtime found");
        Ok(())
    }

    /// The runtime in use.
    #[must_use]
    pub fn runtime(&self) -> &Path {
        &self.inner.runtime
    }

    /// `"v1"` or `"v2"`: the host's cgroup layout.
    #[must_use]
    pub fn cgroup_version(&self) -> &'static str {
        match self.inner.cgroups.layout() {
            Layout::V1 => "v1",
            Layout::V2 => "v2",
        }
    }

    /// Runs the runtime with `args` (after `--root`), bounded by [`RUNC_TIMEOUT`]; its stdout.
    async fn runc(&self, args: &[&str]) -> Result<String, Error> {
        let inner = &self.inner;
        let mut command = tokio::process::Command::new(&inner.runtime);
        command
            .arg("--root")
            .arg(&inner.state_root)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let shown = args.join(" ");
        let failed = |message: String| Error::Command {
            program: "runc",
            args: shown.clone(),
            message,
        };
        let output = tokio::time::timeout(RUNC_TIMEOUT, command.output())
            .await
            .map_err(|_| failed(format!("no answer within {RUNC_TIMEOUT:?}")))?
            .map_err(|e| failed(e.to_string()))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(failed(
                String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            ))
        }
    }

    /// Starts a container. Its stdout and stderr are pipes to take with
    /// [`Container::take_stdout`] / [`Container::take_stderr`]; stdin is `/dev/null`.
    ///
    /// # Errors
    /// [`Error::Spec`] for a spec that cannot run, [`Error::Io`] when the bundle or cgroup
    /// cannot be made, [`Error::Command`] when the runtime cannot be started. Nothing is left
    /// behind on error.
    pub async fn spawn(&self, spec: &ContainerSpec) -> Result<Container, Error> {
        self.spawn_with(spec, &SpawnOptions::default()).await
    }

    /// [`Containers::spawn`] for a container that is not an app (a service node): its own
    /// unprivileged user and host directories it writes, as `options` says.
    ///
    /// # Errors
    /// As [`Containers::spawn`]; [`Error::Spec`] also for a root user or a writable directory
    /// inside the host trees.
    pub async fn spawn_with(
        &self,
        spec: &ContainerSpec,
        options: &SpawnOptions,
    ) -> Result<Container, Error> {
        let started = Instant::now();
        let inner = Arc::clone(&self.inner);
        if !valid_id(&spec.id) {
            return Err(Error::Spec {
                id: spec.id.chars().take(64).collect(),
                message: "a container id is 1-128 letters, digits, '-' or '_'".to_owned(),
            });
        }
        let bundle = inner.bundles.join(&spec.id);
        let config = spec.oci(
            &inner.stack,
            inner.cgroups.runtime_path(&spec.id),
            &inner.hidden,
            options,
        )?;
        let json = serde_json::to_vec(&config).map_err(|e| Error::Spec {
            id: spec.id.clone(),
            message: e.to_string(),
        })?;
        let limits = CgroupLimits {
            memory_bytes: spec.limits.memory_bytes,
            pids: spec.limits.pids,
            cpu_shares: spec.limits.cpu_shares,
        };
        let prepared = {
            let inner = Arc::clone(&inner);
            let bundle = bundle.clone();
            let id = spec.id.clone();
            let dirs = [spec.app_dir.clone(), spec.tmp_dir.clone()];
            let owner = options
                .user
                .unwrap_or((crate::stack::VCAP_UID, crate::stack::VCAP_GID));
            tokio::task::spawn_blocking(move || -> Result<(), Error> {
                // A bundle or cgroup of the same id is a leftover of an earlier life.
                let _ = std::fs::remove_dir_all(&bundle);
                let _ = inner.cgroups.remove(&id);
                std::fs::create_dir_all(&bundle).map_err(io("cannot create", &bundle))?;
                let path = bundle.join("config.json");
                std::fs::write(&path, &json).map_err(io("cannot write", &path))?;
                for dir in &dirs {
                    crate::stack::chown_tree(dir, owner)?;
                }
                inner.cgroups.create(&id, limits)
            })
            .await
            .map_err(|e| Error::Spec {
                id: spec.id.clone(),
                message: format!("preparing was interrupted: {e}"),
            })?
        };
        if let Err(error) = prepared {
            self.discard(&spec.id, &bundle).await;
            return Err(error);
        }
        let mut command = tokio::process::Command::new(&inner.runtime);
        command
            .arg("--root")
            .arg(&inner.state_root)
            .arg("run")
            .arg("--bundle")
            .arg(&bundle)
            .arg(&spec.id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                self.discard(&spec.id, &bundle).await;
                return Err(Error::Command {
                    program: "runc",
                    args: format!("run {}", spec.id),
                    message: e.to_string(),
                });
            }
        };
        Ok(Container {
            id: spec.id.clone(),
            inner,
            child,
            status: None,
            bundle,
            start_latency: started.elapsed(),
            limits: spec.limits,
        })
    }

    async fn discard(&self, id: &str, bundle: &Path) {
        let inner = Arc::clone(&self.inner);
        let id = id.to_owned();
        let bundle = bundle.to_path_buf();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = inner.cgroups.remove(&id);
            let _ = std::fs::remove_dir_all(&bundle);
        })
        .await;
    }

    /// The ids of the containers the runtime knows for this owner.
    ///
    /// # Errors
    /// [`Error::Command`] when the runtime cannot list them.
    pub async fn list(&self) -> Result<Vec<String>, Error> {
        let out = self.runc(&["list", "--quiet"]).await?;
        Ok(out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// The ids that have a cgroup under this owner's parent.
    #[must_use]
    pub fn cgroup_ids(&self) -> Vec<String> {
        self.inner.cgroups.list()
    }

    /// Kills and removes everything an earlier run of this owner left: containers the runtime
    /// still knows, cgroups under the parent, bundle directories. Run at start (by
    /// [`Containers::open`]'s caller) before any container of this run exists.
    ///
    /// # Errors
    /// Never for what is found; [`Error::Command`] only when the runtime cannot list.
    pub async fn cleanup(&self) -> Result<Leftovers, Error> {
        let mut left = Leftovers {
            containers: self.list().await?,
            ..Leftovers::default()
        };
        for id in &left.containers {
            let _ = self.runc(&["kill", id, "KILL"]).await;
            if let Err(e) = self.runc(&["delete", "--force", id]).await {
                left.failures.push(e.to_string());
            }
        }
        let inner = Arc::clone(&self.inner);
        let (cgroups, bundles, failures) = tokio::task::spawn_blocking(move || {
            let mut failures = Vec::new();
            let cgroups = inner.cgroups.list();
            for id in &cgroups {
                failures.extend(inner.cgroups.remove(id));
            }
            let mut bundles = Vec::new();
            if let Ok(entries) = std::fs::read_dir(&inner.bundles) {
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    match std::fs::remove_dir_all(entry.path()) {
                        Ok(()) => bundles.push(name),
                        Err(e) => failures.push(format!("bundle {name}: {e}")),
                    }
                }
            }
            (cgroups, bundles, failures)
        })
        .await
        .unwrap_or_default();
        left.cgroups = cgroups;
        left.bundles = bundles;
        left.failures.extend(failures);
        Ok(left)
    }

    /// Removes this owner's cgroup parent, once every container of it is gone (an owner
    /// stopping for good), so stopped owners leave no empty cgroups behind. Returns what could
    /// not be removed.
    pub async fn close(&self) -> Vec<String> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.cgroups.remove_parent())
            .await
            .unwrap_or_default()
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io("cannot set permissions of", path))
}

impl Container {
    /// The container's id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// How long [`Containers::spawn`] took (bundle, cgroup, starting the runtime).
    #[must_use]
    pub fn spawn_latency(&self) -> Duration {
        self.start_latency
    }

    /// The container's stdout (once).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The container's stderr (once).
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// The pid of the runtime process on the host (`runc run`), not of anything inside.
    #[must_use]
    pub fn runtime_pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The host pid of the container's init (the first process of its pid namespace: killing
    /// it ends the container), once the runtime has created it; `None` before or after.
    pub async fn init_pid(&self) -> Option<u32> {
        let containers = Containers {
            inner: Arc::clone(&self.inner),
        };
        let state = containers.runc(&["state", &self.id]).await.ok()?;
        let state: serde_json::Value = serde_json::from_str(&state).ok()?;
        state["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
    }

    /// Waits until the container's command exits; its exit code (128 + signal when killed).
    /// Cancel-safe: select on it freely.
    pub async fn wait(&mut self) -> Option<i32> {
        if self.status.is_none() {
            self.status = self.child.wait().await.ok();
        }
        self.status.map(exit_code)
    }

    /// The limits the kernel holds the container to (its cgroup's memory, pids and CPU
    /// shares, and its `/tmp` size), as written when it was made.
    #[must_use]
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// What the container uses now, from its cgroup.
    #[must_use]
    pub fn usage(&self) -> Usage {
        self.inner.cgroups.usage(&self.id)
    }

    /// Sends `signal` to the container's init (SIGTERM: the init passes it to the command).
    ///
    /// # Errors
    /// [`Error::Command`] when the runtime refuses (e.g. the container has already exited).
    pub async fn signal(&mut self, signal: Signal) -> Result<(), Error> {
        let name = signal.as_str().trim_start_matches("SIG");
        let containers = Containers {
            inner: Arc::clone(&self.inner),
        };
        // Just after spawn the runtime may not have created the container yet: retry while
        // `runc run` is alive, within bounds.
        let deadline = Instant::now() + CREATE_WAIT;
        loop {
            match containers.runc(&["kill", &self.id, name]).await {
                Ok(_) => return Ok(()),
                Err(error) => {
                    let running =
                        self.status.is_none() && matches!(self.child.try_wait(), Ok(None));
                    if !running || Instant::now() >= deadline {
                        return Err(error);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    /// Ends the container (SIGKILL if it still runs: the pid namespace takes every process
    /// with it), removes it from the runtime, reads how it ended, and removes its cgroup and
    /// bundle.
    pub async fn destroy(mut self) -> End {
        let containers = Containers {
            inner: Arc::clone(&self.inner),
        };
        let mut failures = Vec::new();
        if self.status.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.status = Some(status);
            } else {
                let _ = self.signal(Signal::SIGKILL).await;
                match tokio::time::timeout(KILL_WAIT, self.child.wait()).await {
                    Ok(Ok(status)) => self.status = Some(status),
                    _ => {
                        // The runtime itself is stuck; kill it so it cannot outlive us.
                        let _ = self.child.start_kill();
                        let _ = tokio::time::timeout(KILL_WAIT, self.child.wait()).await;
                    }
                }
            }
        }
        // `runc run` deletes the container when it exits normally; this is for when it did not.
        if containers
            .list()
            .await
            .unwrap_or_default()
            .contains(&self.id)
            && let Err(e) = containers.runc(&["delete", "--force", &self.id]).await
        {
            failures.push(e.to_string());
        }
        let exit_code = self.status.map(exit_code);
        let inner = Arc::clone(&self.inner);
        let id = self.id.clone();
        let bundle = self.bundle.clone();
        let (counters, removal) = tokio::task::spawn_blocking(move || {
            let counters = inner.cgroups.final_counters(&id);
            let mut failures = inner.cgroups.remove(&id);
            if let Err(e) = std::fs::remove_dir_all(&bundle)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                failures.push(format!("bundle {}: {e}", bundle.display()));
            }
            (counters, failures)
        })
        .await
        .unwrap_or_default();
        failures.extend(removal);
        End {
            exit_code,
            out_of_memory: counters.out_of_memory(exit_code),
            peak_bytes: counters.peak_bytes,
            cpu_nanos: counters.cpu_nanos,
            cleanup_failures: failures,
        }
    }
}
