//! One instance, from start request to destroyed container: the DEA's instance lifecycle.
//!
//! Flow: admitted by the cell → prepare (droplet fetched, unpacked into `<data_dir>/instances/
//! <guid>/app`) → a container (`isolation = "container"`: its own namespaces, uid 2000, cgroup
//! limits, an address on the container bridge, `PORT=8080`) or, unisolated, `bash -c
//! <start_command>` in its own process group; stdout/stderr pumped to the log sink → health
//! checks (STARTING → RUNNING) with container metrics and the disk quota alongside → exit,
//! crash, OOM kill, failed health check, disk quota or stop request → the container is
//! destroyed (or the group killed), the directory removed, and the outcome reported (CRASHED +
//! `executor.crash`, or STOPPING → DOWN).
//!
//! Invariants: nothing an app forks outlives its instance (the pid namespace dies with the
//! container; unisolated, the process group is signalled as a whole, short of `setsid`); the
//! executor never restarts a crashed instance (the health manager decides that); a stop is
//! SIGTERM, then SIGKILL after the app's own grace (its start message's `stop_timeout_secs`,
//! else the cell's); in a container the memory quota is the
//! kernel's, so an OOM kill is reported from the cgroup, not guessed from polling.

use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hydrant_container::net::{Attachment, EgressRule, Protocol};
use hydrant_container::{Bind, Container, ContainerSpec, Limits, Network};

use hydrant_bus::Message;
use hydrant_bus::messages::{ExecutorCrash, HealthCheckType, InstanceState, StartInstance};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::cell::{Cell, now_nanos};
use crate::health::{self, Probe, go_duration};
use crate::isolation::UNISOLATED;
use crate::logs::{self, LogSink};
use crate::metrics::{REASON_CRASHED, REASON_HEALTH_CHECK, REASON_OOM, Usage};
use crate::procfs::{self, GroupUsage};
use crate::{Error, droplet, env};

const MIB: u64 = 1024 * 1024;
/// After SIGKILL, how long to wait for the process to be reaped before giving up on it.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long the log pumps may take to drain the pipes once the group is dead.
const DRAIN_WAIT: Duration = Duration::from_secs(1);
/// Directory entries measured at most for the `disk` metric.
const DISK_WALK_LIMIT: usize = 1_000_000;
/// The port an app in a container listens on (Cloud Foundry's `PORT`): it has its own address.
const CONTAINER_PORT: u16 = 8080;
/// Where the `hydrant` binary is shown inside containers (`$HYDRANT_BIN`).
const CONTAINER_HYDRANT_BIN: &str = "/opt/hydrant/hydrant";
/// `PATH` inside containers: the stack's, never the host user's.
const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why supervision ended.
enum Outcome {
    /// The process ended by itself, with this code (128 + signal when killed).
    Exited(Option<i32>),
    OutOfMemory,
    /// Its files passed its disk quota (the description says by how much).
    DiskQuota(String),
    Unhealthy(String),
    Stop,
}

/// What runs an instance.
enum Running {
    /// Unisolated: a process group on the host.
    Group { child: Child, pgid: i32 },
    /// A container with its place on the bridge.
    Container {
        container: Box<Container>,
        attachment: Option<Attachment>,
    },
}

/// One reading of an instance's usage.
struct Sample {
    memory_bytes: u64,
    cpu_nanos: u64,
    /// Processes (and, contained, threads) it holds now.
    pids: u64,
    /// The kernel's limits on it; `None` unisolated, where nothing but the executor's polling
    /// bounds it.
    limits: Option<Limits>,
}

/// What a container's end adds to the outcome.
#[derive(Default)]
struct Ended {
    out_of_memory: bool,
    peak_bytes: u64,
}

impl Running {
    async fn wait(&mut self) -> Option<i32> {
        match self {
            Self::Group { child, .. } => child.wait().await.ok().map(exit_code),
            Self::Container { container, .. } => container.wait().await,
        }
    }

    async fn terminate(&mut self) {
        match self {
            Self::Group { pgid, .. } => signal_group(*pgid, Signal::SIGTERM),
            Self::Container { container, .. } => {
                let _ = container.signal(Signal::SIGTERM).await;
            }
        }
    }

    /// SIGKILL, and the exit code once reaped.
    async fn kill(&mut self) -> Option<i32> {
        match self {
            Self::Group { child, pgid } => kill(child, *pgid).await.map(exit_code),
            Self::Container { container, .. } => {
                let _ = container.signal(Signal::SIGKILL).await;
                tokio::time::timeout(KILL_WAIT, container.wait())
                    .await
                    .ok()
                    .flatten()
            }
        }
    }

    /// Memory in use, CPU time so far and processes now, with the kernel's limits when the
    /// instance is contained.
    async fn usage(&self) -> Sample {
        match self {
            Self::Group { pgid, .. } => {
                let usage = sample(*pgid).await;
                Sample {
                    memory_bytes: usage.rss_bytes,
                    cpu_nanos: usage.cpu_nanos,
                    pids: u64::from(usage.processes),
                    limits: None,
                }
            }
            Self::Container { container, .. } => {
                let usage = container.usage();
                Sample {
                    memory_bytes: usage.memory_bytes,
                    cpu_nanos: usage.cpu_nanos,
                    pids: usage.pids,
                    limits: Some(container.limits()),
                }
            }
        }
    }

    /// Nothing of the instance may outlive this: the group is killed, or the container
    /// destroyed and its address given back.
    async fn finish(self, ident: &Ident) -> Ended {
        match self {
            Self::Group { pgid, .. } => {
                signal_group(pgid, Signal::SIGKILL);
                Ended::default()
            }
            Self::Container {
                container,
                attachment,
            } => {
                let end = (*container).destroy().await;
                let mut failures = end.cleanup_failures;
                if let (Some(attachment), Some(isolated)) = (attachment, &ident.cell.isolated)
                    && let Err(e) = isolated.network.detach(attachment).await
                {
                    failures.push(e.to_string());
                }
                if !failures.is_empty() {
                    ident.cell.metrics.cleanup_failures.inc();
                    tracing::warn!(instance = ?ident.guid(), ?failures,
                        "executor: container not fully cleaned up");
                }
                Ended {
                    out_of_memory: end.out_of_memory,
                    peak_bytes: end.peak_bytes,
                }
            }
        }
    }
}

/// The identity of one instance, for messages about it.
struct Ident {
    cell: Arc<Cell>,
    start: StartInstance,
    sink: LogSink,
    dir: PathBuf,
    /// The host port given to an unisolated instance.
    port: u16,
}

impl Ident {
    fn guid(&self) -> &str {
        &self.start.instance
    }

    fn cell_line(&self, text: &str) {
        let id = &self.cell.config.executor_id;
        self.sink.cell(&format!("Cell {id} {text}"));
    }

    fn crash(&self, reason: &str, exit_status: Option<i32>, description: String) {
        self.cell.set_state(self.guid(), InstanceState::Crashed);
        tracing::info!(instance = ?self.guid(), %reason, description = ?description,
            "executor: instance crashed");
        self.sink.crash_event(reason, exit_status, &description);
        self.cell.report_crash(&ExecutorCrash {
            executor_id: self.cell.config.executor_id.clone(),
            app: self.start.app.clone(),
            instance: self.start.instance.clone(),
            index: self.start.index,
            reason: reason.to_owned(),
            exit_status,
            exit_description: description,
            crash_count: None,
            crash_timestamp: now_nanos(),
        });
    }

    async fn destroy(&self) {
        self.cell_line(&format!(
            "destroying container for instance {}",
            self.guid()
        ));
        remove_dir(&self.dir).await;
        self.cell_line(&format!(
            "successfully destroyed container for instance {}",
            self.guid()
        ));
    }
}

async fn remove_dir(dir: &Path) {
    let dir = dir.to_path_buf();
    let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err((dir, e)),
        _ => Ok(()),
    })
    .await;
    if let Ok(Err((dir, error))) = removed {
        tracing::warn!(?dir, %error, "executor: cannot remove an instance directory");
    }
}

/// Runs one admitted instance to its end. `request` is answered once the process is started
/// (accepted) or could not be (refused, with the reason).
pub(crate) async fn run(
    cell: Arc<Cell>,
    start: StartInstance,
    sha: String,
    port: u16,
    stop: CancellationToken,
    request: Message,
) {
    let sink = cell.log_sink(&start.app, start.index, &start.app_name, &start.tags);
    let ident = Ident {
        dir: cell.instances_dir.join(&start.instance),
        port,
        cell,
        start,
        sink,
    };
    ident.cell_line(&format!("creating container for instance {}", ident.guid()));
    let started_at = now_nanos();
    let prepared = tokio::select! {
        prepared = prepare(&ident, &sha) => Some(prepared),
        () = stop.cancelled() => None,
    };
    let spawned = match prepared {
        Some(Ok(())) if !stop.is_cancelled() => Some(spawn(&ident, port, started_at).await),
        Some(Ok(())) | None => None,
        Some(Err(e)) => Some(Err(e)),
    };
    let (mut running, readers) = match spawned {
        None => {
            ident.cell.respond(&request, true, None);
            ident.cell.set_state(ident.guid(), InstanceState::Stopping);
            ident.destroy().await;
            ident.cell.set_state(ident.guid(), InstanceState::Down);
            return;
        }
        Some(Err(error)) => {
            let text = error.to_string();
            ident.cell_line(&format!(
                "failed to create container for instance {}: {text}",
                ident.guid()
            ));
            ident.cell.respond(&request, false, Some(text.clone()));
            ident.crash(
                REASON_CRASHED,
                None,
                format!("Failed to create container: {text}"),
            );
            remove_dir(&ident.dir).await;
            return;
        }
        Some(Ok(spawned)) => spawned,
    };
    ident.cell_line(&format!(
        "successfully created container for instance {}",
        ident.guid()
    ));
    ident.cell.respond(&request, true, None);
    ident.sink.cell("Starting health monitoring of container");

    let outcome = supervise(&ident, &mut running, started_at, &stop).await;
    ident
        .cell
        .metrics
        .instance_gone(&ident.start.app, ident.start.index);

    let mut exit_note = String::new();
    let code = match &outcome {
        Outcome::Exited(code) => *code,
        Outcome::Stop => {
            ident.cell.set_state(ident.guid(), InstanceState::Stopping);
            tracing::info!(instance = ?ident.guid(),
                reason = ?ident.cell.stop_reason(ident.guid()), "executor: stopping instance");
            ident.cell_line(&format!("stopping instance {}", ident.guid()));
            // An evacuated instance's replacement already serves: routers on other hosts get
            // the unregistration a moment later, so it keeps answering until they have.
            if ident
                .cell
                .stop_reason(ident.guid())
                .is_some_and(|r| r.starts_with(crate::presence::EVACUATED))
                && !ident.cell.is_killed()
            {
                tokio::time::sleep(crate::presence::ROUTE_DRAIN).await;
            }
            running.terminate().await;
            // A killed cell plays a lost host: no graceful interval.
            let grace = if ident.cell.is_killed() {
                Duration::ZERO
            } else {
                stop_grace(
                    ident.start.stop_timeout_secs,
                    ident.cell.config.stop_timeout(),
                    ident.cell.stop_reason(ident.guid()).as_deref() == Some(SHUTTING_DOWN),
                )
            };
            match tokio::time::timeout(grace, running.wait()).await {
                Ok(code) => code,
                Err(_) => {
                    exit_note = format!(
                        " (exceeded {} graceful shutdown interval)",
                        go_duration(grace)
                    );
                    running.kill().await
                }
            }
        }
        Outcome::OutOfMemory | Outcome::DiskQuota(_) | Outcome::Unhealthy(_) => {
            running.kill().await
        }
    };
    // Whatever the app did, nothing of it may outlive the instance.
    let ended = running.finish(&ident).await;
    drain(readers).await;
    let outcome = match outcome {
        Outcome::Exited(_) if ended.out_of_memory => Outcome::OutOfMemory,
        other => other,
    };
    if matches!(outcome, Outcome::OutOfMemory) {
        exit_note = " (out of memory)".to_owned();
        ident.cell.metrics.oom_kills.inc();
    }
    if let Some(code) = code {
        ident.sink.cell(&format!("Exit status {code}{exit_note}"));
    }
    match outcome {
        Outcome::Stop => {
            ident.destroy().await;
            ident.cell.set_state(ident.guid(), InstanceState::Down);
        }
        Outcome::Exited(_) => {
            let shown = code.map_or_else(|| "unknown".to_owned(), |c| c.to_string());
            ident.crash(
                REASON_CRASHED,
                code,
                format!("{}: Exited with status {shown}", logs::APP_SOURCE),
            );
            ident.destroy().await;
        }
        Outcome::OutOfMemory => {
            let shown = code.unwrap_or(137);
            let mut description = format!(
                "{}: Exited with status {shown} (out of memory)",
                logs::APP_SOURCE
            );
            if ended.peak_bytes > 0 {
                description.push_str(&format!(
                    "; peak memory {} of its {} MiB quota",
                    mib(ended.peak_bytes),
                    ident.start.memory_mb
                ));
            }
            ident.crash(REASON_OOM, Some(shown), description);
            ident.destroy().await;
        }
        Outcome::DiskQuota(description) => {
            ident.sink.cell(&description);
            ident.crash(REASON_CRASHED, code, description);
            ident.destroy().await;
        }
        Outcome::Unhealthy(description) => {
            ident.crash(REASON_HEALTH_CHECK, None, description);
            ident.destroy().await;
        }
    }
}

/// The tag on an instance's container metrics saying how it is isolated: `container`, or
/// `none` (it runs as the platform's own user, without kernel limits).
pub(crate) const ISOLATION_TAG: &str = "isolation";
/// [`ISOLATION_TAG`] of a contained instance.
pub(crate) const ISOLATION_CONTAINER: &str = "container";
/// [`ISOLATION_TAG`] of an unisolated instance.
pub(crate) const ISOLATION_NONE: &str = "none";

/// The stop reason of every instance when the executor itself shuts down.
pub(crate) const SHUTTING_DOWN: &str = "executor shutting down";
/// The longest grace a start message may ask for (the cloud controller allows 1-300 s; the
/// bus is input like any other).
const MAX_STOP_GRACE_SECS: u32 = 300;

/// How long a stopped instance gets between SIGTERM and SIGKILL: the app's own grace from its
/// start message, or the cell's `stop_timeout_secs` for a message without one. When the
/// executor itself shuts down it waits for every instance at most its own `stop_timeout_secs`,
/// so there an app's longer grace is cut to the cell's.
fn stop_grace(app_secs: Option<u32>, cell: Duration, shutting_down: bool) -> Duration {
    let Some(secs) = app_secs else {
        return cell;
    };
    let app = Duration::from_secs(u64::from(secs.clamp(1, MAX_STOP_GRACE_SECS)));
    if shutting_down { app.min(cell) } else { app }
}

/// Bytes as MiB with one decimal, for people.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// Creates the instance directory and unpacks the droplet into it.
async fn prepare(ident: &Ident, sha: &str) -> Result<(), Error> {
    let dir = &ident.dir;
    // A directory left by an earlier instance of the same guid is stale by definition.
    remove_dir(dir).await;
    for sub in ["app", "tmp"] {
        let path = dir.join(sub);
        tokio::fs::create_dir_all(&path)
            .await
            .map_err(|source| Error::Io {
                what: "cannot create the instance directory",
                path,
                source,
            })?;
    }
    let lease = ident
        .cell
        .droplets
        .fetch(&ident.start.droplet_url, sha)
        .await?;
    let archive = lease.path().to_path_buf();
    let app = dir.join("app");
    let max = ident.start.disk_mb.saturating_mul(MIB);
    tokio::task::spawn_blocking(move || {
        let unpacked = droplet::unpack(&archive, &app, max);
        drop(lease);
        unpacked
    })
    .await
    .map_err(|e| Error::Corrupt(format!("unpacking was interrupted: {e}")))??;
    Ok(())
}

/// Starts the app, in a container or (unisolated) in its own process group, with its output
/// pumped to the sink.
async fn spawn(
    ident: &Ident,
    port: u16,
    started_at: i64,
) -> Result<(Running, Vec<JoinHandle<()>>), Error> {
    if ident.cell.isolated.is_some() {
        return spawn_container(ident, started_at).await;
    }
    ident.cell_line(UNISOLATED);
    let cell = &ident.cell;
    let home = ident.dir.join("app");
    let tmp = ident.dir.join("tmp");
    let placement = env::Placement {
        port,
        host: &cell.config.advertise_host,
        external: (&cell.config.advertise_host, port),
        home: &home,
        tmp: &tmp,
        started_at_nanos: started_at,
    };
    let environment = env::build(&ident.start, &placement, &cell.path_env, &cell.hydrant_bin);
    let mut command = tokio::process::Command::new("bash");
    command
        .arg("-c")
        .arg(&ident.start.start_command)
        .current_dir(&home)
        .env_clear()
        .envs(&environment)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(Error::Spawn)?;
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .ok_or_else(|| Error::Spawn(std::io::Error::other("the process vanished at birth")))?;
    // Remembered so a later executor can stop this group if this one dies without stopping it.
    let _ = std::fs::write(ident.dir.join(PGID_FILE), pgid.to_string());
    let mut readers = Vec::with_capacity(2);
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(logs::pump(out, ident.sink.clone(), false)));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(logs::pump(err, ident.sink.clone(), true)));
    }
    Ok((Running::Group { child, pgid }, readers))
}

/// The egress rules the app's service bindings open: TCP to each endpoint the start message
/// names, nothing wider. The start message comes over the bus, so an endpoint that is not an
/// IPv4 literal (containers have no IPv6, and a name would need resolving here, where it could
/// point anywhere) or has a port outside 1-65535 is refused with a log line and opens nothing;
/// the instance still starts, and its connection to that service fails as it would unbound.
fn service_rules(start: &StartInstance) -> Vec<EgressRule> {
    start
        .egress
        .iter()
        .filter_map(|e| {
            let ip = e.host.parse::<std::net::Ipv4Addr>().ok();
            let port = u16::try_from(e.port).ok().filter(|p| *p != 0);
            let (Some(ip), Some(port)) = (ip, port) else {
                tracing::warn!(instance = %start.instance, service = %e.service, host = %e.host,
                    port = e.port, "executor: a service binding names no IPv4 address and TCP \
                    port (1-65535); no egress rule opened for it");
                return None;
            };
            Some(EgressRule {
                description: format!("service binding: {}", e.service),
                ..EgressRule::allow(Protocol::Tcp, &ip.to_string(), Some(&port.to_string()))
            })
        })
        .collect()
}

fn container_error(error: hydrant_container::Error) -> Error {
    Error::Spawn(std::io::Error::other(error.to_string()))
}

/// Starts the app in a container on the bridge: `PORT=8080` on its own address.
async fn spawn_container(
    ident: &Ident,
    started_at: i64,
) -> Result<(Running, Vec<JoinHandle<()>>), Error> {
    let cell = &ident.cell;
    let Some(isolated) = &cell.isolated else {
        return Err(Error::Spawn(std::io::Error::other("no container runtime")));
    };
    let spawn_started = std::time::Instant::now();
    let mut rules = crate::isolation::dns_rules().await;
    rules.extend(service_rules(&ident.start));
    let mut attachment = isolated
        .network
        .attach(ident.guid(), &rules)
        .await
        .map_err(container_error)?;
    // Where routers and the health check reach the app: with an address other hosts reach,
    // the instance's host port published there (a bridge address is routable from this host
    // only); on loopback, the bridge address itself.
    let reached_at = match cell.config.published_host() {
        Some(host_ip) => {
            let mapped = isolated
                .network
                .map_port(&mut attachment, host_ip, ident.port, CONTAINER_PORT)
                .await;
            if let Err(error) = mapped {
                let _ = isolated.network.detach(attachment).await;
                return Err(container_error(error));
            }
            (cell.config.advertise_host.clone(), ident.port)
        }
        None => (attachment.ip.to_string(), CONTAINER_PORT),
    };
    let ip = attachment.ip.to_string();
    let home = Path::new(hydrant_container::APP_DIR);
    let tmp = Path::new(hydrant_container::TMP_DIR);
    let placement = env::Placement {
        port: CONTAINER_PORT,
        host: &ip,
        external: (&reached_at.0, reached_at.1),
        home,
        tmp,
        started_at_nanos: started_at,
    };
    let hydrant_bin = Path::new(&cell.hydrant_bin);
    let binds = if hydrant_bin.is_file() {
        vec![Bind {
            host: hydrant_bin.to_path_buf(),
            container: PathBuf::from(CONTAINER_HYDRANT_BIN),
        }]
    } else {
        vec![]
    };
    let shown_bin = if binds.is_empty() {
        ""
    } else {
        CONTAINER_HYDRANT_BIN
    };
    let environment = env::build(&ident.start, &placement, CONTAINER_PATH, shown_bin);
    let containers = &cell.config.containers;
    let spec = ContainerSpec {
        id: ident.guid().to_owned(),
        args: vec![
            "/bin/bash".to_owned(),
            "-c".to_owned(),
            ident.start.start_command.clone(),
        ],
        env: environment.into_iter().collect(),
        cwd: None,
        app_dir: ident.dir.join("app"),
        tmp_dir: ident.dir.join("tmp"),
        binds,
        limits: Limits::for_memory_mb(
            ident.start.memory_mb,
            containers.pids_limit,
            containers.tmp_mb,
        ),
        network: Network::Join(attachment.netns_path.clone()),
    };
    let mut container = match isolated.containers.spawn(&spec).await {
        Ok(container) => container,
        Err(error) => {
            let _ = isolated.network.detach(attachment).await;
            return Err(container_error(error));
        }
    };
    cell.metrics.container_started(spawn_started.elapsed());
    cell.set_address(ident.guid(), reached_at.0, reached_at.1);
    let mut readers = Vec::with_capacity(2);
    if let Some(out) = container.take_stdout() {
        readers.push(tokio::spawn(logs::pump(out, ident.sink.clone(), false)));
    }
    if let Some(err) = container.take_stderr() {
        readers.push(tokio::spawn(logs::pump(err, ident.sink.clone(), true)));
    }
    Ok((
        Running::Container {
            container: Box::new(container),
            attachment: Some(attachment),
        },
        readers,
    ))
}

/// The file in an instance's directory that holds its process group id.
pub(crate) const PGID_FILE: &str = "pgid";

/// Kills the process groups an earlier executor left running under `instances_dir` (it was
/// killed before it could stop them). A group is killed only if its leader still runs inside
/// that instance's directory, so a recycled process id is never hit.
pub(crate) fn reap_orphans(instances_dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(instances_dir) else {
        return 0;
    };
    let mut reaped = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        let Some(pgid) = std::fs::read_to_string(dir.join(PGID_FILE))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .filter(|p| *p > 1)
        else {
            continue;
        };
        let Ok(cwd) = std::fs::read_link(format!("/proc/{pgid}/cwd")) else {
            continue;
        };
        let Ok(real_dir) = std::fs::canonicalize(&dir) else {
            continue;
        };
        if cwd.starts_with(&real_dir) && killpg(Pid::from_raw(pgid), Signal::SIGKILL).is_ok() {
            reaped += 1;
        }
    }
    reaped
}

/// Watches the instance until it exits, must be killed, or is asked to stop.
async fn supervise(
    ident: &Ident,
    app: &mut Running,
    started_at: i64,
    stop: &CancellationToken,
) -> Outcome {
    let config = &ident.cell.config;
    let check = &ident.start.health_check;
    let startup_timeout = Duration::from_secs(
        check
            .timeout_secs
            .map_or(config.startup_timeout_secs, u64::from)
            .max(1),
    );
    let startup_interval = Duration::from_millis(config.startup_check_interval_ms);
    let liveness_interval = Duration::from_secs(config.liveness_check_interval_secs);
    let (host, port) = ident
        .cell
        .address(ident.guid())
        .unwrap_or_else(|| ("127.0.0.1".to_owned(), ident.port));
    let contained = matches!(app, Running::Container { .. });
    let probe = Probe {
        kind: check.kind,
        host,
        port,
        endpoint: health::endpoint(check.endpoint.as_deref()),
        timeout: Duration::from_millis(config.probe_timeout_ms),
        client: ident.cell.probes.clone(),
    };
    let memory_quota = ident.start.memory_mb.saturating_mul(MIB);
    let disk_quota = ident.start.disk_mb.saturating_mul(MIB);

    let deadline = Instant::now() + startup_timeout;
    let mut running = false;
    let mut last_error = "the health check has not run yet".to_owned();
    let mut next_probe = Instant::now();
    let mut in_flight: Option<JoinHandle<Result<(), String>>> = None;
    let mut memory_tick =
        tokio::time::interval(Duration::from_millis(config.memory_check_interval_ms));
    memory_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut metrics_tick = tokio::time::interval(Duration::from_secs(config.metrics_interval_secs));
    metrics_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let disk_interval = Duration::from_secs(config.disk_check_interval_secs);
    let mut next_disk = Instant::now();
    let mut disk = 0u64;
    let mut last_cpu: Option<(u64, Instant)> = None;

    loop {
        tokio::select! {
            code = app.wait() => return Outcome::Exited(code),
            () = stop.cancelled() => return Outcome::Stop,
            () = tokio::time::sleep_until(deadline), if !running => {
                let waited = go_duration(startup_timeout);
                ident.sink.health(&format!("Timed out after {waited}: health check never passed."));
                return Outcome::Unhealthy(format!("Instance never healthy after {waited}: {last_error}"));
            }
            () = tokio::time::sleep_until(next_probe), if in_flight.is_none() => {
                in_flight = Some(tokio::spawn(probe.clone().run()));
            }
            result = wait_probe(&mut in_flight), if in_flight.is_some() => {
                in_flight = None;
                match (running, result) {
                    (false, Ok(())) => {
                        running = true;
                        ident.cell.set_state(ident.guid(), InstanceState::Running);
                        ident.sink.cell("Container became healthy");
                        next_probe = Instant::now() + liveness_interval;
                    }
                    (false, Err(error)) => {
                        last_error = error;
                        next_probe = Instant::now() + startup_interval;
                    }
                    (true, Ok(())) => next_probe = Instant::now() + liveness_interval,
                    (true, Err(error)) => {
                        ident.sink.health(&error);
                        return Outcome::Unhealthy(format!("Instance became unhealthy: {error}"));
                    }
                }
                if running && check.kind == HealthCheckType::Process {
                    // Only the process's exit can fail a `process` check.
                    next_probe = Instant::now() + Duration::from_secs(86_400 * 365);
                }
            }
            // In a container the kernel enforces the memory quota; polling is for unisolated
            // instances only.
            _ = memory_tick.tick(), if !contained => {
                let memory = app.usage().await.memory_bytes;
                if memory > memory_quota {
                    tracing::info!(instance = ?ident.guid(), rss = memory, quota = memory_quota,
                        "executor: instance over its memory quota");
                    return Outcome::OutOfMemory;
                }
            }
            _ = metrics_tick.tick() => {
                let sample = app.usage().await;
                let (memory, cpu_nanos) = (sample.memory_bytes, sample.cpu_nanos);
                let now = Instant::now();
                let cpu = last_cpu.map_or(0.0, |(cpu, at)| {
                    let wall = now.duration_since(at).as_nanos() as f64;
                    if wall > 0.0 { cpu_nanos.saturating_sub(cpu) as f64 * 100.0 / wall } else { 0.0 }
                });
                last_cpu = Some((cpu_nanos, now));
                if now >= next_disk {
                    let dir = ident.dir.clone();
                    disk = tokio::task::spawn_blocking(move || procfs::dir_size(&dir, DISK_WALK_LIMIT))
                        .await
                        .unwrap_or(disk);
                    next_disk = now + disk_interval;
                    if disk > disk_quota {
                        return Outcome::DiskQuota(format!(
                            "{}: stopped: its files use {}, past its disk quota of {} MiB",
                            logs::APP_SOURCE,
                            mib(disk),
                            ident.start.disk_mb
                        ));
                    }
                }
                let age = now_nanos().saturating_sub(started_at).max(0) as f64;
                let pids_limit = sample.limits.map_or(0.0, |l| f64::from(l.pids));
                let cpu_shares = sample.limits.map_or(0.0, |l| l.cpu_shares as f64);
                ident.cell.metrics.instance_usage(
                    &ident.start.app,
                    &ident.start.app_name,
                    ident.start.index,
                    Usage {
                        cpu_percentage: cpu,
                        memory_bytes: memory as f64,
                        disk_bytes: disk as f64,
                        memory_quota_bytes: memory_quota as f64,
                        disk_quota_bytes: disk_quota as f64,
                        pids: sample.pids as f64,
                        pids_limit,
                        cpu_shares,
                    },
                );
                let mut gauges = vec![
                    ("cpu", cpu, "percentage"),
                    ("memory", memory as f64, "bytes"),
                    ("disk", disk as f64, "bytes"),
                    ("memory_quota", memory_quota as f64, "bytes"),
                    ("disk_quota", disk_quota as f64, "bytes"),
                    ("container_age", age, "nanoseconds"),
                    ("pids", sample.pids as f64, "count"),
                ];
                // Limits only where the kernel holds them: an unisolated instance has none,
                // and its envelope says so in its `isolation` tag.
                if sample.limits.is_some() {
                    gauges.push(("pids_limit", pids_limit, "count"));
                    gauges.push(("cpu_shares", cpu_shares, "shares"));
                }
                let isolation = if contained { ISOLATION_CONTAINER } else { ISOLATION_NONE };
                ident.sink.gauge(&gauges, &[(ISOLATION_TAG, isolation)]);
            }
        }
    }
}

async fn wait_probe(in_flight: &mut Option<JoinHandle<Result<(), String>>>) -> Result<(), String> {
    match in_flight {
        Some(handle) => handle
            .await
            .unwrap_or_else(|e| Err(format!("the health check failed to run: {e}"))),
        None => std::future::pending().await,
    }
}

async fn sample(pgid: i32) -> GroupUsage {
    tokio::task::spawn_blocking(move || procfs::sample_group(pgid))
        .await
        .unwrap_or_default()
}

fn signal_group(pgid: i32, signal: Signal) {
    // ESRCH (the group is already gone) is the common, harmless case.
    let _ = killpg(Pid::from_raw(pgid), signal);
}

/// SIGKILLs the group and reaps the leader.
async fn kill(child: &mut Child, pgid: i32) -> Option<ExitStatus> {
    signal_group(pgid, Signal::SIGKILL);
    tokio::time::timeout(KILL_WAIT, child.wait())
        .await
        .ok()
        .and_then(Result::ok)
}

/// Lets the log pumps finish what the pipes still hold, within bounds: a process that escaped
/// the group may hold a pipe open forever.
async fn drain(mut readers: Vec<JoinHandle<()>>) {
    let all = async {
        for reader in &mut readers {
            let _ = reader.await;
        }
    };
    let _ = tokio::time::timeout(DRAIN_WAIT, all).await;
    for reader in readers {
        reader.abort();
    }
}

/// The shell's way of numbering an exit: the code, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use hydrant_bus::messages::ServiceEgress;

    use super::*;

    #[test]
    fn the_stop_grace_is_the_apps_within_bounds_and_the_cells_at_shutdown() {
        let cell = Duration::from_secs(10);
        assert_eq!(stop_grace(None, cell, false), cell);
        assert_eq!(stop_grace(Some(30), cell, false), Duration::from_secs(30));
        assert_eq!(stop_grace(Some(2), cell, false), Duration::from_secs(2));
        // A forged or garbled message cannot ask for no grace or for hours.
        assert_eq!(stop_grace(Some(0), cell, false), Duration::from_secs(1));
        assert_eq!(
            stop_grace(Some(u32::MAX), cell, false),
            Duration::from_secs(300)
        );
        // The executor's own shutdown waits at most its own grace.
        assert_eq!(stop_grace(Some(30), cell, true), cell);
        assert_eq!(stop_grace(Some(2), cell, true), Duration::from_secs(2));
    }

    #[test]
    fn a_binding_opens_tcp_to_its_ip_and_port_and_nothing_else_opens() {
        let endpoint = |host: &str, port| ServiceEgress {
            service: "cache".into(),
            host: host.into(),
            port,
        };
        let start = StartInstance {
            instance: "i1".into(),
            egress: vec![
                endpoint("10.254.0.1", 42_000),
                endpoint("redis.example.com", 6379),
                endpoint("::1", 6379),
                endpoint("10.254.0.1", 70_000),
                endpoint("10.254.0.1", 0),
                endpoint("10.254.0.1/8", 6379),
            ],
            ..StartInstance::default()
        };
        let rules = service_rules(&start);
        assert_eq!(rules.len(), 1, "{rules:?}");
        assert_eq!(rules[0].protocol, Protocol::Tcp);
        assert_eq!(rules[0].destination, "10.254.0.1");
        assert_eq!(rules[0].ports.as_deref(), Some("42000"));
        rules[0].validate().unwrap();
    }
}
