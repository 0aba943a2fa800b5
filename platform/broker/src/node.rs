//! Service nodes: the real servers (mariadbd, postgres, redis-server, rabbitmq-server) the
//! broker runs and supervises, each in a container of its own ([`Contain`]) or, with
//! `isolation = "none"`, as a child process, and the small mechanisms around them — admin
//! commands with deadlines, the port pool, random secrets, the unprivileged user and the
//! memory cgroup an uncontained node runs in.
//!
//! Flow: [`Node::spawn`] starts the supervisor task → the node starts (in its container: the
//! host's network, its own other namespaces, a read-only root but its directory, `run_as`, no
//! capabilities, seccomp, its plan's memory and pids; uncontained: as `run_as` when the broker
//! is root, in its own memory cgroup when it can) → its stdout/stderr lines become `SVC`
//! log envelopes of the instance they provably belong to ([`crate::route`]), or of the broker
//! itself (the operator's stream) → when the child dies while wanted (a crash, a
//! SIGKILL) it is counted (`broker.node_restarts`) and started again after a capped backoff,
//! and [`Node::starts`] ticks so the broker re-applies what a restart loses (Redis ACL users).
//!
//! Invariants: a node's log line is capped at [`MAX_LINE`] bytes (longer lines are cut and
//! counted, never buffered whole); a node is stopped with SIGTERM and, after
//! [`STOP_GRACE`], SIGKILL, and it is its container's pid namespace (or leads its own process
//! group), which is killed whenever the node ends, so deprovision, shutdown and restarts never
//! leave a process behind; an
//! admin command's error carries its program and stderr, with every secret it was given
//! replaced by `***`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hydrant_emitter::{Counter, Emitter, Registry};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// The longest log line kept; the rest of a longer line is dropped and counted.
pub const MAX_LINE: usize = 16 * 1024;

/// How many of a node's last output lines a failed start reports.
pub const LAST_LINES: usize = 3;

/// How long a node gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(20);

/// The `source_type` of a service node's log lines.
pub const SOURCE_TYPE: &str = "SVC";

/// Maps one log line of a node to the source id (instance guid) it belongs to; `None` keeps
/// it out of every tenant's stream (it goes to the operator's: the broker's own source id).
pub type Router = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// How to start one node.
#[derive(Clone)]
pub struct Spec {
    /// Its name (`postgresql-42001`, `redis-<instance>`): logs, cgroup and `/v1/nodes`.
    pub name: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments (no secrets: those go in files under `dir`).
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Its working and data directory.
    pub dir: PathBuf,
    /// Who it runs as (uid, gid), when the broker is root.
    pub user: Option<(u32, u32)>,
    /// Its memory cgroup's limit, bytes, when the broker may make cgroups.
    pub memory_bytes: Option<u64>,
    /// The container it runs in (`isolation = "container"`); `None`: a plain child process.
    pub contain: Option<Contain>,
    /// Where its log lines go.
    pub router: Router,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec")
            .field("name", &self.name)
            .field("program", &self.program)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// How service nodes are contained: the broker's container runtime and the limits every node
/// gets besides its memory.
#[derive(Debug, Clone)]
pub struct Contain {
    /// The broker's containers.
    pub containers: hydrant_container::Containers,
    /// Processes and threads a node may hold.
    pub pids: u32,
    /// Size of a node's `/tmp` (counted against its memory), bytes.
    pub tmp_bytes: u64,
    /// Memory of a node whose spec names none, bytes.
    pub memory_bytes: u64,
}

/// The environment a contained node starts from (a child process inherits the broker's).
const CONTAINED_ENV: [(&str, &str); 3] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("LANG", "C.UTF-8"),
    ("LC_ALL", "C.UTF-8"),
];

/// A started node: a child process, or a container.
enum Proc {
    Host(Child),
    Contained(Held),
}

/// A node's container, killed if it is dropped still running (the broker panicked, or its
/// runtime shut down without stopping its nodes): a container is not the broker's child, and
/// a server must not outlive the broker that answers for it. Its end is otherwise
/// [`Proc::stop`]'s or [`Proc::ended`]'s.
struct Held {
    container: Option<Box<hydrant_container::Container>>,
    /// The container's init on the host, once known.
    init: u32,
    name: String,
}

impl Held {
    fn take(&mut self) -> Option<Box<hydrant_container::Container>> {
        self.container.take()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.container.is_none() || self.init == 0 {
            return;
        }
        // Only while the pid is still this container's init (never a reused pid).
        let cgroups =
            std::fs::read_to_string(format!("/proc/{}/cgroup", self.init)).unwrap_or_default();
        let ours = cgroups.lines().any(|l| {
            l.contains(&format!("/{}/", self.name)) || l.ends_with(&format!("/{}", self.name))
        });
        if ours && let Ok(pid) = i32::try_from(self.init) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Proc {
    /// The pid to report and to signal: the child, or the container's init (whose death ends
    /// the container); waits a little for the runtime to create it.
    async fn pid(&mut self) -> u32 {
        match self {
            Self::Host(child) => child.id().unwrap_or(0),
            Self::Contained(held) => {
                let Some(c) = held.container.as_ref() else {
                    return 0;
                };
                for _ in 0..100 {
                    if let Some(pid) = c.init_pid().await {
                        held.init = pid;
                        return pid;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                0
            }
        }
    }

    /// Waits until it exits; how, for the log.
    async fn wait(&mut self) -> String {
        match self {
            Self::Host(child) => format!("{:?}", child.wait().await),
            Self::Contained(held) => match held.container.as_mut() {
                Some(c) => format!("exit code {:?}", c.wait().await),
                None => "gone".to_owned(),
            },
        }
    }

    /// Cleans up after an exit nobody asked for.
    async fn ended(self, pid: u32) {
        match self {
            Self::Host(_) => kill_group(pid),
            Self::Contained(mut held) => {
                if let Some(c) = held.take() {
                    let end = c.destroy().await;
                    if !end.cleanup_failures.is_empty() {
                        tracing::warn!(failures = ?end.cleanup_failures, "a service node's container left something behind");
                    }
                }
            }
        }
    }

    /// Stops it: SIGTERM, and SIGKILL after [`STOP_GRACE`].
    async fn stop(self, name: &str) {
        match self {
            Self::Host(mut child) => terminate(&mut child, name).await,
            Self::Contained(mut held) => {
                let Some(mut c) = held.take() else {
                    return;
                };
                let _ = c.signal(nix::sys::signal::Signal::SIGTERM).await;
                if tokio::time::timeout(STOP_GRACE, c.wait()).await.is_err() {
                    tracing::warn!(node = %name, "service node ignored SIGTERM; killing it");
                }
                let end = c.destroy().await;
                if !end.cleanup_failures.is_empty() {
                    tracing::warn!(node = %name, failures = ?end.cleanup_failures,
                        "a service node's container left something behind");
                }
            }
        }
    }
}

/// What nodes report into.
#[derive(Debug, Clone)]
pub struct Sink {
    /// Where log lines go (none: only the broker's own log).
    pub emitter: Option<Emitter>,
    /// The broker's registry (restart and dropped-line counters).
    pub registry: Registry,
}

/// A running, supervised node.
#[derive(Debug)]
pub struct Node {
    /// Its name.
    pub name: String,
    pid: Arc<AtomicU32>,
    exits: Arc<AtomicU32>,
    last_output: Arc<Mutex<String>>,
    starts: watch::Receiver<u64>,
    stop: CancellationToken,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Node {
    /// Starts `spec` under a supervisor that restarts it until [`Node::stop`] or `shutdown`.
    #[must_use]
    pub fn spawn(spec: Spec, sink: Sink, shutdown: &CancellationToken) -> Arc<Self> {
        let pid = Arc::new(AtomicU32::new(0));
        let exits = Arc::new(AtomicU32::new(0));
        let last_output = Arc::new(Mutex::new(String::new()));
        let (tx, starts) = watch::channel(0);
        let stop = shutdown.child_token();
        let name = spec.name.clone();
        let watch = Watch {
            pid: Arc::clone(&pid),
            exits: Arc::clone(&exits),
            last_output: Arc::clone(&last_output),
            starts: tx,
        };
        let task = tokio::spawn(supervise(spec, sink, watch, stop.clone()));
        Arc::new(Self {
            name,
            pid,
            exits,
            last_output,
            starts,
            stop,
            task: tokio::sync::Mutex::new(Some(task)),
        })
    }

    /// The current child's pid (0 between a death and its restart).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    /// How often the child has exited unasked.
    #[must_use]
    pub fn exits(&self) -> u32 {
        self.exits.load(Ordering::Relaxed)
    }

    /// The last [`LAST_LINES`] lines the child wrote, joined by ` | ` (its reason, when it
    /// exits at start).
    #[must_use]
    pub fn last_output(&self) -> String {
        hydrant_runtime::lock(&self.last_output).replace('\n', " | ")
    }

    /// Ticks at every (re)start of the child.
    #[must_use]
    pub fn starts(&self) -> watch::Receiver<u64> {
        self.starts.clone()
    }

    /// Stops the child (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and the supervisor, and
    /// waits for both.
    pub async fn stop(&self) {
        self.stop.cancel();
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

/// What the supervisor reports to its [`Node`].
struct Watch {
    pid: Arc<AtomicU32>,
    exits: Arc<AtomicU32>,
    last_output: Arc<Mutex<String>>,
    starts: watch::Sender<u64>,
}

async fn supervise(spec: Spec, sink: Sink, watch: Watch, stop: CancellationToken) {
    let Watch {
        pid,
        exits,
        last_output,
        starts,
    } = watch;
    let restarts = sink.registry.counter(
        "broker.node_restarts",
        "Service nodes started again after they exited unasked",
        &[("node", node_kind(&spec.name))],
    );
    let truncated = sink.registry.counter(
        "broker.dropped",
        "Service node log bytes not forwarded, by reason",
        &[("reason", "line_too_long")],
    );
    let backoff = hydrant_runtime::Backoff::from_ms(500, 30_000, 0.2);
    let mut attempt = 0u32;
    loop {
        let began = Instant::now();
        let started = match &spec.contain {
            Some(contain) => start_contained(&spec, contain, &sink, &truncated, &last_output)
                .await
                .map(|c| {
                    Proc::Contained(Held {
                        container: Some(Box::new(c)),
                        init: 0,
                        name: spec.name.clone(),
                    })
                }),
            None => start(&spec, &sink, &truncated, &last_output).map(Proc::Host),
        };
        match started {
            Ok(mut child) => {
                let id = child.pid().await;
                pid.store(id, Ordering::Relaxed);
                if spec.contain.is_none() {
                    orphans::note(&spec.dir, id);
                }
                if spec.contain.is_none()
                    && let Some(bytes) = spec.memory_bytes
                    && let Err(why) = cgroup::attach(&spec.name, bytes, id)
                {
                    tracing::warn!(node = %spec.name, "runs without a memory cgroup: {why}");
                }
                starts.send_modify(|n| *n += 1);
                tokio::select! {
                    status = child.wait() => {
                        child.ended(id).await;
                        pid.store(0, Ordering::Relaxed);
                        exits.fetch_add(1, Ordering::Relaxed);
                        restarts.inc();
                        tracing::warn!(node = %spec.name, %status, "service node exited; starting it again");
                    }
                    () = stop.cancelled() => {
                        child.stop(&spec.name).await;
                        orphans::forget(&spec.dir);
                        pid.store(0, Ordering::Relaxed);
                        cgroup::remove(&spec.name);
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!(node = %spec.name, "cannot start service node: {e}"),
        }
        if began.elapsed() > Duration::from_secs(60) {
            attempt = 0;
        }
        let delay = backoff.delay(attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => {
                cgroup::remove(&spec.name);
                return;
            }
        }
    }
}

fn node_kind(name: &str) -> &'static str {
    ["mysql", "postgresql", "redis", "rabbitmq"]
        .into_iter()
        .find(|k| name.starts_with(k))
        .unwrap_or("other")
}

fn start(
    spec: &Spec,
    sink: &Sink,
    truncated: &Counter,
    last: &Arc<Mutex<String>>,
) -> Result<Child, Error> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group: what it forks (PostgreSQL's backends, RabbitMQ's Erlang VM
        // under its start script) is cleaned up with it, so a restart after a SIGKILL never
        // meets an orphan still holding the port or the shared memory.
        .process_group(0);
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    if let Some((uid, gid)) = spec.user {
        cmd.uid(uid).gid(gid);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io("cannot start", &spec.program, e))?;
    pump_both(
        (child.stdout.take(), child.stderr.take()),
        spec,
        sink,
        truncated,
        last,
    );
    Ok(child)
}

/// Starts `spec` in a container of its own: the host's network (it listens where
/// credentials say), its own mount, pid, ipc and uts namespaces, the read-only stack as root
/// with only its directory writable (at the same path), its user, no capabilities, the
/// default seccomp filter, and memory, pids and CPU limits in its cgroup.
async fn start_contained(
    spec: &Spec,
    contain: &Contain,
    sink: &Sink,
    truncated: &Counter,
    last: &Arc<Mutex<String>>,
) -> Result<hydrant_container::Container, Error> {
    let home = spec.dir.join(".container");
    let (app, tmp) = (home.join("app"), home.join("tmp"));
    for d in [&app, &tmp] {
        std::fs::create_dir_all(d).map_err(|e| Error::io("cannot create", d, e))?;
    }
    let memory_bytes = spec.memory_bytes.unwrap_or(contain.memory_bytes);
    let mut env: Vec<(String, String)> = CONTAINED_ENV
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.push(("HOME".to_owned(), spec.dir.display().to_string()));
    env.extend(spec.env.iter().cloned());
    let mut args = vec![spec.program.display().to_string()];
    args.extend(spec.args.iter().cloned());
    let container = hydrant_container::ContainerSpec {
        id: spec.name.clone(),
        args,
        env,
        cwd: Some(spec.dir.clone()),
        app_dir: app,
        tmp_dir: tmp,
        binds: Vec::new(),
        limits: hydrant_container::Limits {
            memory_bytes,
            pids: contain.pids,
            cpu_shares: hydrant_container::cpu_shares_for(memory_bytes / (1024 * 1024)),
            tmp_bytes: contain.tmp_bytes,
        },
        network: hydrant_container::Network::Host,
    };
    let options = hydrant_container::SpawnOptions {
        user: spec.user,
        writable: vec![spec.dir.clone()],
    };
    let mut c = contain
        .containers
        .spawn_with(&container, &options)
        .await
        .map_err(|e| Error::NodeStart {
            node: spec.name.clone(),
            detail: format!("its container cannot start: {e}"),
        })?;
    pump_both(
        (c.take_stdout(), c.take_stderr()),
        spec,
        sink,
        truncated,
        last,
    );
    Ok(c)
}

/// Forwards a node's stdout and stderr (whichever it has) as [`pump`] does, each on a task.
fn pump_both<O, E>(
    (out, err): (Option<O>, Option<E>),
    spec: &Spec,
    sink: &Sink,
    truncated: &Counter,
    last: &Arc<Mutex<String>>,
) where
    O: AsyncRead + Unpin + Send + 'static,
    E: AsyncRead + Unpin + Send + 'static,
{
    if let Some(out) = out {
        let (spec, sink, truncated) = (spec.clone(), sink.clone(), truncated.clone());
        tokio::spawn(pump(out, false, spec, sink, truncated, Arc::clone(last)));
    }
    if let Some(err) = err {
        let (spec, sink, truncated) = (spec.clone(), sink.clone(), truncated.clone());
        tokio::spawn(pump(err, true, spec, sink, truncated, Arc::clone(last)));
    }
}

/// Forwards a node's output line by line, each line capped at [`MAX_LINE`].
async fn pump(
    reader: impl AsyncRead + Unpin,
    is_err: bool,
    spec: Spec,
    sink: Sink,
    truncated: Counter,
    last: Arc<Mutex<String>>,
) {
    let mut reader = BufReader::new(reader);
    let mut line: Vec<u8> = Vec::new();
    loop {
        let (used, end) = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buf) => {
                let (chunk, end) = match buf.iter().position(|&c| c == b'\n') {
                    Some(i) => (&buf[..i], Some(i + 1)),
                    None => (buf, None),
                };
                let room = MAX_LINE.saturating_sub(line.len());
                let keep = chunk.len().min(room);
                line.extend_from_slice(&chunk[..keep]);
                if keep < chunk.len() {
                    truncated.add((chunk.len() - keep) as u64);
                }
                (end.unwrap_or(buf.len()), end.is_some())
            }
        };
        reader.consume(used);
        if end {
            forward(&line, is_err, &spec, &sink, &last);
            line.clear();
        }
    }
    if !line.is_empty() {
        forward(&line, is_err, &spec, &sink, &last);
    }
}

fn forward(line: &[u8], is_err: bool, spec: &Spec, sink: &Sink, last: &Mutex<String>) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end();
    if text.is_empty() {
        return;
    }
    {
        // The last few lines, not only the last: a server's reason to exit is often a line or
        // two before its final words (Erlang's `Kernel pid terminated (…)` before `Crash dump
        // is being written`).
        let line: String = text.chars().take(300).collect();
        let mut kept = hydrant_runtime::lock(last);
        let mut lines: Vec<String> = kept
            .lines()
            .rev()
            .take(LAST_LINES - 1)
            .map(str::to_owned)
            .collect();
        lines.reverse();
        lines.push(line);
        *kept = lines.join("\n");
    }
    let Some(emitter) = &sink.emitter else {
        tracing::debug!(node = %spec.name, "{text}");
        return;
    };
    match (spec.router)(text) {
        Some(source) => emitter.log(&source, "0", SOURCE_TYPE, text.as_bytes(), is_err),
        // Not provably one tenant's: the operator's stream, tagged with the node it came from.
        None => emitter.log_with_tags(
            sink.registry.source_id(),
            "0",
            text.as_bytes(),
            is_err,
            &[("source_type", SOURCE_TYPE), ("node", &spec.name)],
        ),
    }
}

async fn terminate(child: &mut Child, name: &str) {
    let leader = child.id();
    if let Some(id) = leader
        && let Ok(pid) = i32::try_from(id)
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(node = %name, "service node ignored SIGTERM; killing it");
        let _ = child.kill().await;
    }
    if let Some(id) = leader {
        kill_group(id);
    }
}

/// SIGKILLs what is left of the process group a node led (`pid` = its leader's pid).
fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid)
        && pid > 0
    {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Runs an admin command: `program args` with `env`, as `user`, for at most `timeout`.
///
/// # Errors
/// [`Error::Command`] with the exit status and stderr (secrets in `redact` replaced by
/// `***`), or the deadline.
pub async fn exec(
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    user: Option<(u32, u32)>,
    timeout: Duration,
    redact: &[&str],
) -> Result<String, Error> {
    let name = program.file_name().map_or_else(
        || program.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some((uid, gid)) = user {
        // The broker's own working directory may be closed to the node's user (a checkout
        // under /root); `initdb` and friends refuse to run where they cannot stand.
        cmd.uid(uid).gid(gid).current_dir("/");
    }
    let out = match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => {
            return Err(Error::command(
                &name,
                format!("no answer within {} s", timeout.as_secs()),
            ));
        }
        Ok(Err(e)) => return Err(Error::command(&name, format!("cannot run it: {e}"))),
        Ok(Ok(out)) => out,
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if detail.is_empty() {
        detail = stdout.trim().to_owned();
    }
    for secret in redact.iter().filter(|s| !s.is_empty()) {
        detail = detail.replace(secret, "***");
    }
    if detail.len() > 600 {
        let mut cut = detail.len() - 600;
        while !detail.is_char_boundary(cut) {
            cut += 1;
        }
        detail = format!("…{}", &detail[cut..]);
    }
    Err(Error::command(&name, format!("{}: {detail}", out.status)))
}

/// Waits until `probe` succeeds, trying every 200 ms, for at most `timeout`; gives up early
/// when the node has exited [`START_EXITS`] times meanwhile (a bad config, a port taken), with
/// its last line of output.
///
/// # Errors
/// [`Error::NodeStart`] with the probe's last error or the node's last output.
pub async fn wait_ready<F, Fut>(node: &Node, timeout: Duration, mut probe: F) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let exits_before = node.exits();
    loop {
        let last = match probe().await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let exits = node.exits().saturating_sub(exits_before);
        if exits >= START_EXITS {
            return Err(Error::NodeStart {
                node: node.name.clone(),
                detail: format!(
                    "it exited {exits} times while starting; its last output: {}",
                    node.last_output()
                ),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::NodeStart {
                node: node.name.clone(),
                detail: format!("not ready after {} s: {last}", timeout.as_secs()),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How many exits while starting make [`wait_ready`] give up.
pub const START_EXITS: u32 = 3;

/// A random secret of `len` letters and digits (safe inside SQL literals, URIs and shell
/// words without escaping).
#[must_use]
pub fn secret(len: usize) -> String {
    use ring::rand::SecureRandom as _;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let rng = ring::rand::SystemRandom::new();
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        if rng.fill(&mut buf).is_err() {
            // The system RNG failing is not recoverable; fall back to the OS's per-process
            // random state rather than hand out a predictable secret.
            return uuid::Uuid::new_v4().simple().to_string();
        }
        for b in buf {
            // 248 = 4 × 62: rejecting the rest keeps every character equally likely.
            if b < 248 && out.len() < len {
                out.push(char::from(ALPHABET[usize::from(b % 62)]));
            }
        }
    }
    out
}

/// The (uid, gid) service nodes run as: `run_as`'s when the broker is root, else `None` (the
/// broker's own user).
///
/// # Errors
/// [`Error::Config`] when the broker is root and `run_as` is not a user here.
pub fn service_user(run_as: &str) -> Result<Option<(u32, u32)>, Error> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name(run_as) {
        Ok(Some(u)) => Ok(Some((u.uid.as_raw(), u.gid.as_raw()))),
        _ => Err(hydrant_runtime::invalid(
            "run_as",
            format!(
                "{run_as:?} is not a user on this host; create it or name another unprivileged user"
            ),
        )
        .into()),
    }
}

/// Creates `dir` (and parents) owned by `user`, mode 0700: a node's directory holds its data,
/// secrets and (PostgreSQL, MariaDB) the admin socket, which only the node's user and the
/// broker may reach.
///
/// # Errors
/// [`Error::Io`].
pub fn make_dir(dir: &Path, user: Option<(u32, u32)>) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("cannot restrict", dir, e))?;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .map_err(|e| Error::io("cannot hand over", dir, e))?;
    }
    Ok(())
}

/// Writes `text` to `path` (mode 0600, owned by `user`): node config files that hold secrets.
///
/// # Errors
/// [`Error::Io`].
pub fn write_private(path: &Path, text: &str, user: Option<(u32, u32)>) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).map_err(|e| Error::io("cannot write", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("cannot restrict", path, e))?;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| Error::io("cannot hand over", path, e))?;
    }
    Ok(())
}

/// Uncontained nodes a broker killed with SIGKILL left running: each node's process group is
/// noted in its directory while it runs (`.hydrant-node`: leader pid and its start time, so a
/// reused pid is never taken for it), and the next broker start kills what a note still
/// names before it starts its nodes again on the same ports. (A container is found through
/// its runtime instead: [`hydrant_container::Containers::cleanup`].)
pub mod orphans {
    use std::path::Path;

    const NOTE: &str = ".hydrant-node";

    /// A process's start time in clock ticks since boot (`/proc/<pid>/stat`, field 22).
    fn started(pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces and parentheses: fields count from its end.
        let rest = &stat[stat.rfind(')')? + 2..];
        rest.split(' ').nth(19)?.parse().ok()
    }

    /// Notes that the node in `dir` leads process group `pid`.
    pub fn note(dir: &Path, pid: u32) {
        if let Some(at) = started(pid) {
            let _ = std::fs::write(dir.join(NOTE), format!("{pid} {at}\n"));
        }
    }

    /// Forgets the note of the node in `dir` (it was stopped).
    pub fn forget(dir: &Path) {
        let _ = std::fs::remove_file(dir.join(NOTE));
    }

    /// Kills the process group every node directory under `root` still names, when its
    /// leader is the very process noted, and waits (5 s at most each) until it is gone.
    /// Returns the pids killed.
    pub async fn reap(root: &Path) -> Vec<u32> {
        let mut killed = Vec::new();
        for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let note = entry.path().join(NOTE);
            let Ok(text) = std::fs::read_to_string(&note) else {
                continue;
            };
            let mut fields = text.split_whitespace().map(str::parse::<u64>);
            if let (Some(Ok(pid)), Some(Ok(at))) = (fields.next(), fields.next())
                && let Ok(pid) = u32::try_from(pid)
                && started(pid) == Some(at)
            {
                super::kill_group(pid);
                for _ in 0..50 {
                    if started(pid) != Some(at) {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                killed.push(pid);
            }
            let _ = std::fs::remove_file(&note);
        }
        killed
    }
}

/// Memory cgroups for nodes (v2 when mounted, else v1's memory hierarchy), under
/// `hydrant-broker/<node>-<broker pid>` (two brokers on one host never share one). Best
/// effort: without permission a node runs unlimited, with a warning naming why.
pub mod cgroup {
    use std::path::PathBuf;

    const PARENT: &str = "hydrant-broker";

    fn dir(node: &str) -> Option<(PathBuf, bool)> {
        let root = PathBuf::from("/sys/fs/cgroup");
        let leaf = format!("{node}-{}", std::process::id());
        if root.join("cgroup.controllers").exists() {
            Some((root.join(PARENT).join(leaf), true))
        } else if root.join("memory").is_dir() {
            Some((root.join("memory").join(PARENT).join(leaf), false))
        } else {
            None
        }
    }

    /// Puts `pid` in node's cgroup limited to `bytes`.
    ///
    /// # Errors
    /// Why not, as a sentence.
    pub fn attach(node: &str, bytes: u64, pid: u32) -> Result<(), String> {
        let Some((dir, v2)) = dir(node) else {
            return Err("no cgroup file system is mounted".to_owned());
        };
        if v2 {
            let parent = dir.parent().map(PathBuf::from).unwrap_or_default();
            std::fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
            let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory");
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let limit = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(dir.join(limit), bytes.to_string())
            .map_err(|e| format!("{}: {e}", dir.join(limit).display()))?;
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| format!("{}: {e}", dir.join("cgroup.procs").display()))?;
        Ok(())
    }

    /// The limit node's cgroup has, bytes, when it has one.
    #[must_use]
    pub fn limit(node: &str) -> Option<u64> {
        let (dir, v2) = dir(node)?;
        let file = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::read_to_string(dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Sets node's cgroup limit (a plan change).
    pub fn set_limit(node: &str, bytes: u64) {
        if let Some((dir, v2)) = dir(node) {
            let file = if v2 {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            };
            let _ = std::fs::write(dir.join(file), bytes.to_string());
        }
    }

    /// Removes node's cgroup once its processes are gone.
    pub fn remove(node: &str) {
        if let Some((dir, _)) = dir(node) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_alphanumeric_and_differ() {
        let a = secret(24);
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, secret(24));
    }

    #[tokio::test]
    async fn a_node_that_cannot_start_is_given_up_with_its_last_words() {
        let dir = tempfile::tempdir().unwrap();
        let spec = Spec {
            name: "redis-test".to_owned(),
            program: PathBuf::from("sh"),
            args: vec![
                "-c".to_owned(),
                "echo 'bind: address already in use' >&2; exit 1".to_owned(),
            ],
            env: Vec::new(),
            dir: dir.path().to_path_buf(),
            user: None,
            memory_bytes: None,
            contain: None,
            router: Arc::new(|_| None),
        };
        let registry = Registry::new("broker", "0");
        let sink = Sink {
            emitter: None,
            registry: registry.clone(),
        };
        let shutdown = CancellationToken::new();
        let node = Node::spawn(spec, sink, &shutdown);
        let began = Instant::now();
        let err = wait_ready(&node, Duration::from_secs(60), || async {
            Err(Error::command("probe", "refused"))
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(began.elapsed() < Duration::from_secs(20), "gave up early");
        assert!(err.contains("exited 3 times while starting"), "{err}");
        assert!(err.contains("bind: address already in use"), "{err}");
        assert!(registry.counter_sum("broker.node_restarts", &[]) >= 3);
        node.stop().await;
    }

    #[tokio::test]
    async fn a_failed_command_names_the_program_and_hides_secrets() {
        let err = exec(
            Path::new("sh"),
            &["-c", "echo 'bad password hunter2' >&2; exit 3"],
            &[],
            None,
            Duration::from_secs(10),
            &["hunter2"],
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("sh failed: "), "{err}");
        assert!(err.contains("bad password ***"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
