//! Staging: turning a package into a droplet, on a bounded queue of builds that every cloud
//! controller on the database shares.
//!
//! Flow: `POST /v3/apps/{guid}/builds` queues the build in the database ([`enqueue`]) → a
//! worker of any controller claims it (`staging/queue.rs`) → copies the package's files out of
//! the blob store into a scratch directory → detects a buildpack ([`detect`]) → installs
//! dependencies when the app lists some (or has its own install scripts) and the tool exists
//! → writes `droplets/<guid>.tgz` with its SHA-256 → marks the build STAGED and makes the
//! droplet the app's current one. Every step is narrated as `STG` log lines in the app's
//! stream; a failure says why, both there and in the build's `error`.
//! Invariant: at most `staging_queue` builds wait and `staging_workers` run on each controller;
//! a full queue is refused up front, and the queue is fair across spaces: one space holds at
//! most half of its places and spaces take turns at the workers.
//!
//! # A build outlives its controller
//! The worker staging a build renews its claim on it while it works. When a controller dies
//! (killed, its host lost), its claims lapse, and any other controller puts those builds back
//! in the queue and restages them from their package, in a fresh scratch directory and a fresh
//! staging container, saying so in an `STG` line and an `audit.app.build.retry` event; the dead
//! controller's own containers are removed when it starts again. A build whose controller was
//! lost three times fails, naming why. Only the claim's holder records an outcome, so a
//! controller that was merely cut off from the database never overwrites the survivor's
//! droplet. A clean stop hands its builds back to the queue at once.
//!
//! # Isolation
//! Install steps are the only place staging runs the app's own code (`pip` builds a `setup.py`,
//! `npm` runs the package's `install` scripts), so each runs in a staging container
//! (`hydrant-container`): uid 2000, no capabilities, the stack's read-only view of the host's
//! OS (the data dir, the signing key and `/etc/shadow` are not there), the scratch directory at
//! `/home/vcap/app`, a private tmp dir at `/home/vcap/tmp`, only `PATH`, `HOME`, `TMPDIR`,
//! `LANG` and the tools' own settings in its environment (no platform variable, no secret),
//! and kernel limits (`staging_isolation.memory_mb`, the pids limit). Its network is the
//! staging network (its own bridge and subnet, public egress only: the host's ports, the
//! link-local and private ranges are dropped) or, with `attach_network = false`, a namespace
//! with loopback only. Invariant: a staging container and its network attachment are removed
//! whatever the step's outcome (success, failure, out of memory, `staging_timeout_secs`, the
//! build dropped at shutdown): the container lives in a tracked task that destroys it before it
//! ends, and the workers wait for those tasks before the role stops. Leftovers of a killed
//! cloud controller are removed when it starts again.
//!
//! Mode `none` (`hydrant up --isolation none`, never a default) runs install steps as before:
//! on the host, as the platform's user, with its environment; every build says so in a
//! `WARNING` `STG` line. In container mode on a host that cannot make containers, builds that
//! need an install step fail with the reason and the fix; builds without one still stage.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hydrant_api::{Build, Droplet, Resource};
use hydrant_container::{ContainerSpec, Containers, Limits, TMP_DIR, net};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::OnceCell;
use tokio::time::Instant as Deadline;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod queue;

pub(crate) use queue::{MIGRATION, Queue, Refused};

use crate::config::{Config, IsolationMode};
use crate::{Ctx, db, password};

/// The static site start command: Hydrant's own static server, which the executor provides as
/// `$HYDRANT_BIN`.
pub const STATIC_START: &str = r#"exec "$HYDRANT_BIN" static-server --dir . --port "$PORT""#;

/// Longest log line passed on from an install tool, bytes.
const MAX_LINE: usize = 4096;

/// What a build may take beyond `staging_timeout_secs`: an install step is stopped at the
/// limit itself, and this leaves its container the time to be destroyed before the build as a
/// whole is given up on.
const CLEANUP_GRACE: Duration = Duration::from_secs(30);

/// How long a finished install step's last output may take to arrive (its processes are gone:
/// the pipes are at their end, this only bounds a stuck reader).
const DRAIN: Duration = Duration::from_secs(2);

/// How close to its memory limit a failed install step's peak must come for the failure to be
/// reported as running out of memory, bytes.
const STARVED_SLACK: u64 = 1 << 20;

/// `PATH` inside a staging container, and where install tools are looked for in the stack
/// (the host's own trees, read-only; nothing under `/root` or a version manager's shims).
const STACK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where install steps run, decided once when the workers start.
#[derive(Debug)]
enum Sandbox {
    /// `mode = "none"`: on the host, as the platform's own user.
    Host,
    /// In staging containers.
    Containers(Staging),
    /// Container mode on a host that cannot make containers: why, and how to fix it.
    Unavailable(String),
}

/// The staging containers of this cloud controller.
#[derive(Debug)]
struct Staging {
    containers: Containers,
    /// The staging network, set up at the first install step that needs it (a controller that
    /// never installs never touches the host's network), retried when that failed.
    network: OnceCell<Arc<net::Network>>,
    /// The tasks that own running staging containers.
    tasks: TaskTracker,
}

impl Sandbox {
    /// The sandbox `config` asks for; in container mode also removes what an earlier run left.
    async fn open(config: &Config) -> Self {
        let isolation = &config.staging_isolation;
        if isolation.mode == IsolationMode::None {
            tracing::warn!(
                "staging WITHOUT isolation (staging_isolation.mode = \"none\"): install scripts \
                 run as this process's user, with its environment"
            );
            return Self::Host;
        }
        let data = config.data_path();
        let hidden = [
            data.clone(),
            config.blobs_path(),
            config.token_keys_path(),
            config.admin_password_path(),
        ]
        .into_iter()
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .collect();
        let containers = match Containers::open(&config.staging_containers(), hidden).await {
            Ok(containers) => containers,
            Err(e) => {
                tracing::error!(error = %e, "staging cannot run install steps in containers");
                return Self::Unavailable(e.to_string());
            }
        };
        let killed = match containers.cleanup().await {
            Ok(left) if !left.is_empty() => {
                tracing::warn!(?left, "removed staging containers an earlier run left");
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list leftover staging containers");
                false
            }
        };
        let staging = Staging {
            containers,
            network: OnceCell::new(),
            tasks: TaskTracker::new(),
        };
        // A run killed in the middle of an install also left its network attachment: setting
        // the network up removes everything with the bridge's prefix.
        if killed
            && isolation.attach_network
            && let Err(e) = staging.network(config).await
        {
            tracing::warn!(error = %e, "cannot remove the staging network's leftovers");
        }
        Self::Containers(staging)
    }

    /// Waits for every staging container to be destroyed, then takes the staging network and
    /// cgroup parent down.
    async fn close(self) {
        let Self::Containers(staging) = self else {
            return;
        };
        staging.tasks.close();
        staging.tasks.wait().await;
        if let Some(network) = staging.network.into_inner()
            && let Ok(network) = Arc::try_unwrap(network)
            && let Err(e) = network.teardown().await
        {
            tracing::warn!(error = %e, "cannot remove the staging network");
        }
        // Every staging container is gone: its cgroup parent goes too, so a stopped
        // controller leaves no empty cgroups behind.
        let failures = staging.containers.close().await;
        if !failures.is_empty() {
            tracing::warn!(?failures, "cannot remove the staging cgroup parent");
        }
    }
}

impl Staging {
    async fn network(&self, config: &Config) -> Result<Arc<net::Network>, String> {
        self.network
            .get_or_try_init(|| async {
                net::Network::setup(&config.staging_isolation.network)
                    .await
                    .map(Arc::new)
            })
            .await
            .cloned()
            .map_err(|e| {
                format!(
                    "cannot set up the staging network: {e} (or set \
                     staging_isolation.attach_network = false for staging without network)"
                )
            })
    }
}

/// A build waiting to be staged.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(crate) build_guid: String,
    pub(crate) app_guid: String,
    pub(crate) package_guid: String,
    /// The app's explicit start command at the time of the request.
    pub(crate) command: Option<String>,
}

/// Queues `build` of an app in `space` (with the app's explicit start `command`) for staging,
/// with `also` (the audit event) in the same transaction; refused with the reason and when to
/// retry when the queue or the space's share of it is full. Wakes a worker here.
pub(crate) async fn enqueue<F>(
    ctx: &Arc<Ctx>,
    build: &Build,
    space: &str,
    command: Option<String>,
    also: F,
) -> Result<(), crate::api::ApiError>
where
    F: FnOnce(&crate::sql::Connection) -> crate::sql::Result<()> + Send + 'static,
{
    let queue = ctx.staging.clone();
    let (stored, space_guid) = (build.clone(), space.to_owned());
    let queued = ctx
        .db
        .run(move |c| {
            let tx = c.transaction()?;
            let now_ms = crate::lease::now_ms();
            let placed = queue::enqueue(
                &tx,
                &queue,
                &stored,
                &space_guid,
                command.as_deref(),
                now_ms,
            )?;
            if placed.is_ok() {
                also(&tx)?;
                tx.commit()?;
            }
            Ok(placed)
        })
        .await?;
    match queued {
        Ok(()) => {
            ctx.staging.wake();
            Ok(())
        }
        Err(Refused::Full) => {
            ctx.metrics.staging_rejected.inc();
            Err(crate::api::ApiError::unavailable(format!(
                "the staging queue is full ({} builds waiting); try again in a minute",
                ctx.staging.capacity()
            )))
        }
        Err(Refused::SpaceShare) => {
            ctx.metrics.staging_rejected_share.inc();
            Err(crate::api::ApiError::unavailable(format!(
                "this space already has {} builds waiting, its share of the staging queue; \
                 try again once they have started",
                ctx.staging.per_space()
            )))
        }
    }
}

/// Starts `workers` tasks taking builds from the queue until `shutdown`; the handle ends once
/// every staging container is gone and this controller's unfinished builds are back in the
/// queue.
pub(crate) fn spawn_workers(
    ctx: Arc<Ctx>,
    workers: usize,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    vec![tokio::spawn(supervise(ctx, workers, shutdown))]
}

async fn supervise(ctx: Arc<Ctx>, workers: usize, shutdown: CancellationToken) {
    let sandbox = Arc::new(Sandbox::open(&ctx.config).await);
    let mut running = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        let sandbox = sandbox.clone();
        running.spawn(async move {
            loop {
                let job = tokio::select! {
                    () = shutdown.cancelled() => break,
                    job = next_job(&ctx) => job,
                };
                // There may be more: another idle worker looks at once.
                ctx.staging.wake();
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = run_job(&ctx, &sandbox, &job) => {}
                    () = hold_claim(&ctx, &job) => {
                        tracing::warn!(
                            build = %job.build_guid,
                            "the claim on a build is no longer this controller's (it lapsed \
                             while the database was out of reach and another took the build \
                             over, or the build was deleted): staging it stops here"
                        );
                    }
                }
            }
        });
    }
    running.spawn(watch_claims(ctx.clone(), shutdown.clone()));
    while running.join_next().await.is_some() {}
    if let Ok(sandbox) = Arc::try_unwrap(sandbox) {
        sandbox.close().await;
    }
    // A clean stop: what was cut short here is staged again at once, elsewhere or at the
    // next start, not after the claims lapse.
    let node = ctx.node.clone();
    match ctx.db.run(move |c| Ok(queue::release(c, &node)?)).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            builds = n,
            "handed unfinished builds back to the staging queue"
        ),
        Err(e) => tracing::warn!(error = %e.detail(), "cannot hand builds back to the queue"),
    }
}

/// The next build this controller claims; waits while none is queued anywhere.
async fn next_job(ctx: &Arc<Ctx>) -> Job {
    loop {
        let (node, stager) = (ctx.node.clone(), ctx.config.instance_id.clone());
        let claimed = ctx
            .db
            .run(move |c| Ok(queue::claim(c, &node, &stager, crate::lease::now_ms())?))
            .await;
        match claimed {
            Ok(Some(job)) => return job,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e.detail(), "cannot claim a build"),
        }
        ctx.staging.idle().await;
    }
}

/// Renews this controller's claim on `job` while it stages it; ends only when the claim is
/// lost (it lapsed while the database was out of reach, and another controller took it).
async fn hold_claim(ctx: &Arc<Ctx>, job: &Job) {
    loop {
        tokio::time::sleep(queue::RENEW).await;
        let (build, node) = (job.build_guid.clone(), ctx.node.clone());
        let renewed = ctx
            .db
            .run(move |c| Ok(queue::renew(c, &build, &node, crate::lease::now_ms())?))
            .await;
        match renewed {
            Ok(true) => {}
            Ok(false) => return,
            // Out of reach: try again; the claim holds for a while.
            Err(e) => tracing::warn!(error = %e.detail(), "cannot renew a staging claim"),
        }
    }
}

/// Every [`queue::POLL`]: puts the builds of controllers that died back in the queue (or
/// fails those lost too often), saying so in their apps' streams and audit events, and keeps
/// the queue depth gauge current.
async fn watch_claims(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    loop {
        let lapsed = ctx
            .db
            .run(|c| {
                let lapsed =
                    queue::reclaim_lapsed(c, crate::lease::now_ms(), hydrant_auth::now_secs())?;
                for lost in &lapsed {
                    if let Some(app) = db::get_app(c, &lost.app_guid)? {
                        crate::api::record_event(
                            c,
                            "audit.app.build.retry",
                            "cloud_controller",
                            &app,
                            serde_json::json!({
                                "build_guid": lost.build_guid,
                                "reason": "cloud_controller_lost",
                                "lost_controller": lost.holder,
                                "retry": lost.retry,
                            }),
                        )?;
                    }
                }
                Ok((lapsed, queue::depth(c)?))
            })
            .await;
        match lapsed {
            Ok((lapsed, depth)) => {
                for lost in &lapsed {
                    report_lost(&ctx, lost);
                }
                if !lapsed.is_empty() {
                    ctx.staging.wake();
                }
                ctx.metrics.staging_depth.set(depth as f64);
            }
            Err(e) => tracing::warn!(error = %e.detail(), "cannot look for lapsed staging claims"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(queue::POLL) => {}
        }
    }
}

fn report_lost(ctx: &Ctx, lost: &queue::Lapsed) {
    match lost.retry {
        Some(retry) => {
            tracing::warn!(build = %lost.build_guid, controller = %lost.holder, retry,
                "a build's cloud controller was lost; staging it again");
            ctx.logs.stg(
                &lost.app_guid,
                &format!(
                    "Staging retried (retry {retry} of {}): the cloud controller staging this \
                     build ({}) was lost; staging again from the package",
                    queue::MAX_LOST_RETRIES,
                    lost.holder
                ),
                true,
            );
        }
        None => {
            ctx.metrics.staging_failed.inc();
            tracing::warn!(build = %lost.build_guid, controller = %lost.holder,
                "a build's cloud controller was lost once too often; the build failed");
            ctx.logs.stg(
                &lost.app_guid,
                &format!("Staging failed: {}", queue::lost_reason(&lost.holder)),
                true,
            );
        }
    }
}

async fn run_job(ctx: &Arc<Ctx>, sandbox: &Sandbox, job: &Job) {
    let started = Instant::now();
    let timeout = Duration::from_secs(ctx.config.staging_timeout_secs);
    let deadline = Deadline::now() + timeout;
    let staged = stage(ctx, sandbox, job, deadline);
    let outcome = match tokio::time::timeout_at(deadline + CLEANUP_GRACE, staged).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!(
            "staging took longer than {} s (staging_timeout_secs)",
            timeout.as_secs()
        )),
    };
    let elapsed = started.elapsed();
    ctx.metrics
        .staging_duration_ms
        .set(elapsed.as_millis() as f64);
    let now = hydrant_auth::now_secs();
    let node = ctx.node.clone();
    match outcome {
        Ok((buildpack, droplet)) => {
            let build_guid = job.build_guid.clone();
            let droplet_guid = droplet.guid.clone();
            let saved = ctx
                .db
                .run(move |c| {
                    let tx = c.transaction()?;
                    let finished = queue::Outcome::Staged {
                        buildpack,
                        droplet_guid: droplet.guid.clone(),
                    };
                    if !queue::finish(&tx, &build_guid, &node, &finished, now)? {
                        // Another controller took the build over: its droplet is the one.
                        return Ok(None);
                    }
                    let Some(mut app) = db::get_app(&tx, &droplet.app_guid)? else {
                        // The app was deleted while staging; nothing to attach the droplet to.
                        return Ok(Some(Vec::new()));
                    };
                    db::insert_droplet(&tx, &droplet)?;
                    app.current_droplet_guid = Some(droplet.guid.clone());
                    app.updated_at = now;
                    db::update_app(&tx, &app)?;
                    // Keep the newest few packages and droplets, as Cloud Foundry does.
                    let collected = crate::blob_lifecycle::collect(&tx, &app.guid)?;
                    tx.commit()?;
                    Ok(Some(collected))
                })
                .await;
            match saved {
                Ok(Some(collected)) => {
                    ctx.metrics.staged.inc();
                    for guid in collected {
                        let _ = tokio::fs::remove_file(ctx.blobs.droplet_path(&guid)).await;
                    }
                    ctx.logs.stg(&job.app_guid, "Staging complete", false);
                }
                Ok(None) => {
                    let _ = tokio::fs::remove_file(ctx.blobs.droplet_path(&droplet_guid)).await;
                }
                Err(e) => {
                    tracing::error!(?e, "recording a staged build failed");
                    ctx.logs.stg(
                        &job.app_guid,
                        "Staging failed: could not record the droplet",
                        true,
                    );
                }
            }
        }
        Err(reason) => {
            let build_guid = job.build_guid.clone();
            let failed = queue::Outcome::Failed(reason.clone());
            let result = ctx
                .db
                .run(move |c| Ok(queue::finish(c, &build_guid, &node, &failed, now)?))
                .await;
            match result {
                Ok(true) => {
                    ctx.metrics.staging_failed.inc();
                    ctx.logs
                        .stg(&job.app_guid, &format!("Staging failed: {reason}"), true);
                }
                // Another controller took the build over: its outcome is the one.
                Ok(false) => {}
                Err(e) => tracing::error!(?e, "recording a failed build failed"),
            }
        }
    }
}

/// Stages one build; the error is the reason, in words for the user.
async fn stage(
    ctx: &Arc<Ctx>,
    sandbox: &Sandbox,
    job: &Job,
    deadline: Deadline,
) -> Result<(String, Droplet), String> {
    let app = job.app_guid.as_str();
    if matches!(sandbox, Sandbox::Host) {
        ctx.logs.stg(
            app,
            "WARNING: staging WITHOUT isolation: install scripts run as the platform's own user, \
             with its environment, on its host (the operator chose --isolation none)",
            true,
        );
    }
    ctx.logs.stg(app, "Downloading app package...", false);
    let package_guid = job.package_guid.clone();
    let resources = ctx
        .db
        .run(move |c| Ok(db::package_resources(c, &package_guid)?))
        .await
        .map_err(|e| format!("cannot read the package: {e:?}"))?;
    let scratch = ctx
        .blobs
        .scratch()
        .map_err(|e| format!("cannot create a staging directory: {e}"))?;
    let dir = scratch.path().join("app");
    let blobs = ctx.blobs.clone();
    let copy_dir = dir.clone();
    let copy_resources = resources.clone();
    tokio::task::spawn_blocking(move || materialise(&blobs, &copy_resources, &copy_dir))
        .await
        .map_err(|e| format!("copying the package failed: {e}"))??;
    let total: u64 = resources.iter().map(|r| r.size).sum();
    ctx.logs.stg(
        app,
        &format!(
            "Downloaded app package ({} files, {})",
            resources.len(),
            human_bytes(total)
        ),
        false,
    );

    let detect_dir = dir.clone();
    let command = job.command.clone();
    let detected = tokio::task::spawn_blocking(move || detect(&detect_dir, command.as_deref()))
        .await
        .map_err(|e| format!("buildpack detection failed: {e}"))??;
    ctx.logs
        .stg(app, &format!("-----> {}", detected.message), false);
    for install in &detected.installs {
        let tmp = scratch.path().join("tmp");
        std::fs::create_dir_all(&tmp)
            .map_err(|e| format!("cannot create a staging directory: {e}"))?;
        run_install(ctx, sandbox, app, &dir, &tmp, install, deadline).await?;
    }
    ctx.logs.stg(
        app,
        &format!("-----> Start command: {}", detected.start_command),
        false,
    );

    ctx.logs.stg(app, "Uploading droplet...", false);
    let droplet_guid = password::new_guid();
    let dest = ctx.blobs.droplet_path(&droplet_guid);
    let tar_dir = dir.clone();
    let (size, sha256) = tokio::task::spawn_blocking(move || write_droplet(&tar_dir, &dest))
        .await
        .map_err(|e| format!("writing the droplet failed: {e}"))??;
    ctx.logs.stg(
        app,
        &format!("Uploaded droplet ({})", human_bytes(size)),
        false,
    );
    drop(scratch);
    Ok((
        detected.buildpack.to_owned(),
        Droplet {
            guid: droplet_guid,
            app_guid: job.app_guid.clone(),
            build_guid: job.build_guid.clone(),
            buildpack: detected.buildpack.to_owned(),
            start_command: detected.start_command,
            sha256,
            size,
            created_at: hydrant_auth::now_secs(),
        },
    ))
}

/// Copies every file of the package from the blob store into `dir`, with its mode.
fn materialise(
    blobs: &crate::blobs::BlobStore,
    resources: &[Resource],
    dir: &Path,
) -> Result<(), String> {
    // The list was validated when the package was made; check again before touching a disk.
    hydrant_api::push::validate_resources(resources).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for r in resources {
        let dest = dir.join(&r.path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create the directory of {:?}: {e}", r.path))?;
        }
        std::fs::copy(blobs.blob_path(&r.sha256), &dest).map_err(|e| {
            format!(
                "{:?} is missing from the blob store ({e}); push the app again",
                r.path
            )
        })?;
        set_mode(&dest, r.mode & 0o777 | 0o400);
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) {}

/// A dependency install step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Install {
    /// Shown before it runs.
    pub(crate) title: String,
    /// Program and arguments.
    pub(crate) argv: Vec<String>,
}

/// What detection found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Detected {
    /// `procfile`, `binary`, `python`, `node`, `static` or `command`.
    pub(crate) buildpack: &'static str,
    /// The droplet's start command (the app's explicit command overrides it).
    pub(crate) start_command: String,
    /// The STG line announcing it.
    pub(crate) message: String,
    /// Dependency installs to run in the app directory.
    pub(crate) installs: Vec<Install>,
}

/// Detects the buildpack of the app in `dir`. `command` is the app's explicit start command,
/// which replaces the detected one.
pub(crate) fn detect(dir: &Path, command: Option<&str>) -> Result<Detected, String> {
    let mut found = detect_buildpack(dir, command)?;
    if let Some(command) = command.filter(|c| !c.trim().is_empty()) {
        found.start_command = command.to_owned();
    }
    Ok(found)
}

fn detect_buildpack(dir: &Path, command: Option<&str>) -> Result<Detected, String> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    if let Some(procfile) = read("Procfile") {
        let web = procfile.lines().find_map(|line| {
            let (kind, cmd) = line.split_once(':')?;
            (kind.trim() == "web" && !cmd.trim().is_empty()).then(|| cmd.trim().to_owned())
        });
        return match web {
            Some(cmd) => Ok(Detected {
                buildpack: "procfile",
                start_command: cmd,
                message: "Procfile detected".to_owned(),
                installs: Vec::new(),
            }),
            None => Err("the Procfile has no `web:` line; add one such as `web: ./server`".into()),
        };
    }
    if let Some(named) = command.and_then(|c| named_executable(dir, c)) {
        return Ok(Detected {
            buildpack: "binary",
            start_command: format!("./{named}"),
            message: format!("Executable {named} detected (named by the start command)"),
            installs: Vec::new(),
        });
    }
    let has = |name: &str| dir.join(name).is_file();
    if has("requirements.txt") || has("app.py") {
        if !has("app.py") {
            return Err(
                "Python app detected (requirements.txt) but there is no app.py: add app.py \
                 or a Procfile with a web: line"
                    .into(),
            );
        }
        let requirements = read("requirements.txt").unwrap_or_default();
        let needs_install = requirements
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        let mut installs = Vec::new();
        let mut start = "python3 app.py".to_owned();
        if needs_install {
            installs.push(Install {
                title: "Installing requirements with pip".to_owned(),
                argv: [
                    "python3",
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--no-input",
                    "--target",
                    ".hydrant/python",
                    "-r",
                    "requirements.txt",
                ]
                .map(str::to_owned)
                .to_vec(),
            });
            start = "PYTHONPATH=.hydrant/python python3 app.py".to_owned();
        }
        return Ok(Detected {
            buildpack: "python",
            start_command: start,
            message: "Python app detected".to_owned(),
            installs,
        });
    }
    if let Some(package) = read("package.json") {
        let json: serde_json::Value = serde_json::from_str(&package)
            .map_err(|e| format!("package.json is not valid JSON: {e}"))?;
        let start = if json["scripts"]["start"].is_string() {
            "npm start".to_owned()
        } else if let Some(main) = json["main"].as_str().filter(|m| !m.is_empty()) {
            format!("node {}", shell_word(main))
        } else if has("server.js") {
            "node server.js".to_owned()
        } else if has("index.js") {
            "node index.js".to_owned()
        } else {
            return Err(
                "Node app detected (package.json) but it has no scripts.start, no main and \
                 no server.js or index.js: add a start script"
                    .into(),
            );
        };
        // npm runs the package's own install scripts even without dependencies.
        let has_scripts = ["preinstall", "install", "postinstall"]
            .iter()
            .any(|name| json["scripts"][name].is_string());
        let needs_install = (json["dependencies"]
            .as_object()
            .is_some_and(|d| !d.is_empty())
            && !dir.join("node_modules").is_dir())
            || has_scripts;
        let installs = if needs_install {
            vec![Install {
                title: "Installing dependencies with npm".to_owned(),
                argv: ["npm", "install", "--omit=dev", "--no-audit", "--no-fund"]
                    .map(str::to_owned)
                    .to_vec(),
            }]
        } else {
            Vec::new()
        };
        return Ok(Detected {
            buildpack: "node",
            start_command: start,
            message: "Node.js app detected".to_owned(),
            installs,
        });
    }
    if has("index.html") {
        return Ok(Detected {
            buildpack: "static",
            start_command: STATIC_START.to_owned(),
            message: "Static site detected (index.html)".to_owned(),
            installs: Vec::new(),
        });
    }
    let executables = top_level_executables(dir);
    if let [only] = executables.as_slice() {
        return Ok(Detected {
            buildpack: "binary",
            start_command: format!("./{}", shell_word(only)),
            message: format!("Executable {only} detected"),
            installs: Vec::new(),
        });
    }
    if let Some(command) = command.filter(|c| !c.trim().is_empty()) {
        return Ok(Detected {
            buildpack: "command",
            start_command: command.to_owned(),
            message: "No buildpack detected; using the app's start command".to_owned(),
            installs: Vec::new(),
        });
    }
    let hint = if executables.len() > 1 {
        format!(
            " ({} executables at the top level: name one with a start command)",
            executables.len()
        )
    } else {
        String::new()
    };
    Err(format!(
        "no buildpack detected: add a Procfile with a web: line, an index.html, an app.py \
         or requirements.txt, a package.json, or a single executable at the top level, or \
         set a start command{hint}"
    ))
}

/// Quotes a file name for `sh` when it needs it.
fn shell_word(word: &str) -> String {
    if word
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The file the start command runs, when it is an executable in the app directory.
fn named_executable(dir: &Path, command: &str) -> Option<String> {
    let first = command.split_whitespace().next()?;
    let name = first.strip_prefix("./").unwrap_or(first);
    if name.is_empty() || hydrant_api::push::path_problem(name).is_some() {
        return None;
    }
    is_executable(&dir.join(name)).then(|| name.to_owned())
}

/// Top-level regular files with an execute bit that start with an ELF header or `#!`.
fn top_level_executables(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| is_executable(&e.path()))
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    out.sort();
    out
}

fn is_executable(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() || !has_exec_bit(&meta) {
        return false;
    }
    let mut head = [0u8; 4];
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let n = std::io::Read::read(&mut file, &mut head).unwrap_or(0);
    head[..n].starts_with(b"\x7fELF") || head[..n].starts_with(b"#!")
}

#[cfg(unix)]
fn has_exec_bit(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn has_exec_bit(_meta: &std::fs::Metadata) -> bool {
    false
}

/// Finds `program` on `PATH`.
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Finds `program` where a staging container looks for it: the stack's `PATH`, which shows the
/// host's own trees at the same paths.
fn find_in_stack(program: &str) -> Option<PathBuf> {
    std::env::split_paths(STACK_PATH)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The Debian package that provides an install tool, for the error that says to install it.
fn package_of(program: &str) -> &str {
    match program {
        "python3" => "python3-pip",
        other => other,
    }
}

/// The whole environment of a staging container: nothing of the platform's.
fn staging_env() -> Vec<(String, String)> {
    [
        ("PATH", STACK_PATH.to_owned()),
        // HOME in the tmp dir: caches and dotfiles stay out of the droplet.
        ("HOME", TMP_DIR.to_owned()),
        ("TMPDIR", TMP_DIR.to_owned()),
        ("LANG", "C.UTF-8".to_owned()),
        ("PIP_CACHE_DIR", format!("{TMP_DIR}/pip-cache")),
        ("PIP_DISABLE_PIP_VERSION_CHECK", "1".to_owned()),
        ("PIP_NO_INPUT", "1".to_owned()),
        ("npm_config_cache", format!("{TMP_DIR}/npm-cache")),
        ("npm_config_update_notifier", "false".to_owned()),
        ("npm_config_audit", "false".to_owned()),
        ("npm_config_fund", "false".to_owned()),
        // Install scripts' output in the STG lines, as the user expects from a build log.
        ("npm_config_foreground_scripts", "true".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Runs one install step in `dir` (scratch space in `tmp`), streaming its output as STG lines.
async fn run_install(
    ctx: &Arc<Ctx>,
    sandbox: &Sandbox,
    app: &str,
    dir: &Path,
    tmp: &Path,
    install: &Install,
    deadline: Deadline,
) -> Result<(), String> {
    let Some(program) = install.argv.first() else {
        return Ok(());
    };
    match sandbox {
        Sandbox::Unavailable(reason) => {
            return Err(format!("{} cannot run: {reason}", install.title));
        }
        Sandbox::Host if find_program(program).is_none() => {
            return Err(format!(
                "{} needs `{program}`, which this cloud controller's host does not have: \
                 install it there, or vendor the dependencies into the app directory",
                install.title
            ));
        }
        Sandbox::Containers(_) if find_in_stack(program).is_none() => {
            return Err(format!(
                "{} needs `{program}`, which the staging stack (the host's /usr, read-only) \
                 does not have: install it on the cloud controller's host (apt-get install {}), \
                 or vendor the dependencies into the app directory",
                install.title,
                package_of(program)
            ));
        }
        Sandbox::Host | Sandbox::Containers(_) => {}
    }
    ctx.logs
        .stg(app, &format!("-----> {}", install.title), false);
    match sandbox {
        Sandbox::Containers(staging) => {
            let stop = CancellationToken::new();
            // Dropped (timeout of the whole build, shutdown): the task destroys the container.
            let _stop_when_dropped = stop.clone().drop_guard();
            let task = staging.tasks.spawn(contained(
                ctx.clone(),
                app.to_owned(),
                staging.containers.clone(),
                staging_network(ctx, staging).await?,
                ContainerSpec {
                    id: format!("stg-{}", password::new_guid()),
                    args: install.argv.clone(),
                    env: staging_env(),
                    cwd: None,
                    app_dir: dir.to_path_buf(),
                    tmp_dir: tmp.to_path_buf(),
                    binds: Vec::new(),
                    limits: Limits::for_memory_mb(
                        ctx.config.staging_isolation.memory_mb,
                        ctx.config.staging_isolation.containers.pids_limit,
                        ctx.config.staging_isolation.containers.tmp_mb,
                    ),
                    network: hydrant_container::Network::Private,
                },
                install.title.clone(),
                stop,
                deadline,
            ));
            task.await
                .unwrap_or_else(|e| Err(format!("{} broke off: {e}", install.title)))
        }
        Sandbox::Host | Sandbox::Unavailable(_) => on_host(ctx, app, dir, install).await,
    }
}

async fn staging_network(
    ctx: &Arc<Ctx>,
    staging: &Staging,
) -> Result<Option<Arc<net::Network>>, String> {
    if !ctx.config.staging_isolation.attach_network {
        return Ok(None);
    }
    staging.network(&ctx.config).await.map(Some)
}

/// Rules letting a staging container ask the host's resolvers (`/etc/resolv.conf`, which the
/// stack shows inside) on port 53, even where they sit in a denied range or on the host itself:
/// package installs resolve names. Loopback resolvers are left out (a container's loopback is
/// its own, they cannot be reached from it).
fn dns_rules(resolv_conf: &str) -> Vec<net::EgressRule> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            words.next()?.parse::<std::net::Ipv4Addr>().ok()
        })
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .flat_map(|ip| {
            [net::Protocol::Udp, net::Protocol::Tcp].map(|protocol| net::EgressRule {
                description: "DNS: the host's resolver".to_owned(),
                ..net::EgressRule::allow(protocol, &ip.to_string(), Some("53"))
            })
        })
        .collect()
}

/// How an install step in a container stopped running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ran {
    /// Its command exited with this code (128 + signal when killed).
    Exited(Option<i32>),
    /// `staging_timeout_secs` passed.
    TimedOut,
    /// The build was dropped (shutdown, or the whole build's limit).
    Stopped,
}

/// Runs `spec` in a staging container on `network` (loopback only when `None`) and removes
/// the container and its attachment whatever happens; the error is the reason for the user.
#[allow(
    clippy::too_many_arguments,
    reason = "one task's whole context, moved in"
)]
async fn contained(
    ctx: Arc<Ctx>,
    app: String,
    containers: Containers,
    network: Option<Arc<net::Network>>,
    mut spec: ContainerSpec,
    title: String,
    stop: CancellationToken,
    deadline: Deadline,
) -> Result<(), String> {
    let attachment = match &network {
        Some(network) => {
            let resolvers = tokio::fs::read_to_string("/etc/resolv.conf")
                .await
                .unwrap_or_default();
            let rules = dns_rules(&resolvers);
            let attachment = network.attach(&spec.id, &rules).await.map_err(|e| {
                format!("cannot put the staging container on the staging network: {e}")
            })?;
            spec.network = hydrant_container::Network::Join(attachment.netns_path.clone());
            Some(attachment)
        }
        None => None,
    };
    let result = run_container(&ctx, &app, &containers, &spec, &title, &stop, deadline).await;
    if let (Some(network), Some(attachment)) = (network, attachment)
        && let Err(e) = network.detach(attachment).await
    {
        tracing::warn!(container = %spec.id, error = %e, "cannot detach a staging container");
    }
    result
}

async fn run_container(
    ctx: &Arc<Ctx>,
    app: &str,
    containers: &Containers,
    spec: &ContainerSpec,
    title: &str,
    stop: &CancellationToken,
    deadline: Deadline,
) -> Result<(), String> {
    let mut container = containers
        .spawn(spec)
        .await
        .map_err(|e| format!("cannot start the staging container for {title}: {e}"))?;
    let stdout = container.take_stdout();
    let stderr = container.take_stderr();
    let ran = {
        let run = async {
            let mut output = std::pin::pin!(async {
                tokio::join!(pump(ctx, app, stdout, false), pump(ctx, app, stderr, true))
            });
            let mut drained = false;
            let code = loop {
                tokio::select! {
                    code = container.wait() => break code,
                    _ = &mut output, if !drained => drained = true,
                }
            };
            if !drained {
                let _ = tokio::time::timeout(DRAIN, output).await;
            }
            code
        };
        tokio::select! {
            code = run => Ran::Exited(code),
            () = tokio::time::sleep_until(deadline) => Ran::TimedOut,
            () = stop.cancelled() => Ran::Stopped,
        }
    };
    let end = container.destroy().await;
    for failure in &end.cleanup_failures {
        tracing::warn!(container = %spec.id, %failure, "staging container cleanup");
    }
    let memory_mb = spec.limits.memory_bytes >> 20;
    // The kernel kills the process that grew (say, a node script npm started); the tool then
    // exits with its own status, not 137, so a failed step whose peak reached the limit counts
    // as starved too.
    let starved = end.out_of_memory
        || (matches!(ran, Ran::Exited(Some(code)) if code != 0)
            && spec.limits.memory_bytes > 0
            && end.peak_bytes.saturating_add(STARVED_SLACK) >= spec.limits.memory_bytes);
    match ran {
        _ if starved => Err(format!(
            "{title} ran out of memory: the kernel killed it at the staging limit of \
             {memory_mb} MiB (staging_isolation.memory_mb)"
        )),
        Ran::Exited(Some(0)) => Ok(()),
        Ran::Exited(Some(code)) => Err(format!(
            "{title} failed (exit status {code}); see the lines above"
        )),
        Ran::Exited(None) => Err(format!("{title} failed: its exit status is unknown")),
        Ran::TimedOut => Err(format!(
            "{title} did not finish within staging_timeout_secs ({} s) and was stopped",
            ctx.config.staging_timeout_secs
        )),
        Ran::Stopped => Err(format!("{title} was stopped: staging was cancelled")),
    }
}

/// Passes `stream`'s lines on as STG lines, cut at [`MAX_LINE`].
async fn pump<R: tokio::io::AsyncRead + Unpin>(
    ctx: &Arc<Ctx>,
    app: &str,
    stream: Option<R>,
    is_err: bool,
) {
    let Some(stream) = stream else { return };
    let mut lines = tokio::io::BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut line = line;
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        ctx.logs.stg(app, &format!("       {line}"), is_err);
    }
}

/// Runs one install step on the host (`--isolation none`), as the platform's user.
async fn on_host(ctx: &Arc<Ctx>, app: &str, dir: &Path, install: &Install) -> Result<(), String> {
    let Some((program, args)) = install.argv.split_first() else {
        return Ok(());
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let ((), (), status) = tokio::join!(
        pump(ctx, app, stdout, false),
        pump(ctx, app, stderr, true),
        child.wait()
    );
    let status = status.map_err(|e| format!("{program} failed: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed ({status}); see the lines above",
            install.title
        ))
    }
}

/// A writer that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `dir` as a gzipped tarball at `dest`; returns its size and SHA-256.
fn write_droplet(dir: &Path, dest: &Path) -> Result<(u64, String), String> {
    let fail = |e: std::io::Error| format!("cannot write the droplet: {e}");
    let tmp = dest.with_extension("tgz.partial");
    // A droplet holds the app's code: readable by the platform's user only.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(&tmp).map_err(fail)?;
    let writer = HashingWriter {
        inner: std::io::BufWriter::new(file),
        hasher: Sha256::new(),
        size: 0,
    };
    let gz = flate2::write::GzEncoder::new(writer, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir).map_err(fail)?;
    let gz = tar.into_inner().map_err(fail)?;
    let mut writer = gz.finish().map_err(fail)?;
    std::io::Write::flush(&mut writer).map_err(fail)?;
    let sha256 = hydrant_api::push::hex(&writer.hasher.finalize());
    let size = writer.size;
    drop(writer.inner);
    std::fs::rename(&tmp, dest).map_err(fail)?;
    Ok((size, sha256))
}

fn human_bytes(bytes: u64) -> String {
    if bytes >= 10 << 20 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 10 << 10 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(files: &[(&str, &str, u32)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, content, mode) in files {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            set_mode(&path, *mode);
        }
        dir
    }

    #[test]
    fn procfile_wins_and_needs_a_web_line() {
        let dir = app(&[("Procfile", "worker: x\nweb: ./server --port $PORT\n", 0o644)]);
        let d = detect(dir.path(), None).unwrap();
        assert_eq!(
            (d.buildpack, d.start_command.as_str()),
            ("procfile", "./server --port $PORT")
        );
        let dir = app(&[("Procfile", "worker: x\n", 0o644)]);
        assert!(detect(dir.path(), None).unwrap_err().contains("web:"));
    }

    #[test]
    fn python_node_static_and_binaries_are_detected() {
        let dir = app(&[
            ("app.py", "print(1)", 0o644),
            ("requirements.txt", "\n# none\n", 0o644),
        ]);
        let d = detect(dir.path(), None).unwrap();
        assert_eq!(
            (d.buildpack, d.start_command.as_str()),
            ("python", "python3 app.py")
        );
        assert!(d.installs.is_empty());
        let dir = app(&[
            ("app.py", "", 0o644),
            ("requirements.txt", "flask\n", 0o644),
        ]);
        assert_eq!(detect(dir.path(), None).unwrap().installs.len(), 1);

        let dir = app(&[(
            "package.json",
            r#"{"scripts":{"start":"node s.js"}}"#,
            0o644,
        )]);
        assert_eq!(detect(dir.path(), None).unwrap().start_command, "npm start");
        let dir = app(&[("package.json", r#"{"main":"srv.js"}"#, 0o644)]);
        assert_eq!(
            detect(dir.path(), None).unwrap().start_command,
            "node srv.js"
        );

        let dir = app(&[("index.html", "<h1>hi</h1>", 0o644)]);
        assert_eq!(
            detect(dir.path(), None).unwrap().start_command,
            STATIC_START
        );

        let dir = app(&[("server", "#!/bin/sh\necho", 0o755), ("README", "x", 0o644)]);
        let d = detect(dir.path(), None).unwrap();
        assert_eq!(
            (d.buildpack, d.start_command.as_str()),
            ("binary", "./server")
        );
    }

    #[test]
    fn an_explicit_command_overrides_and_can_name_the_executable() {
        let dir = app(&[("a", "#!/bin/sh", 0o755), ("b", "\x7fELF....", 0o755)]);
        assert!(
            detect(dir.path(), None)
                .unwrap_err()
                .contains("2 executables")
        );
        let d = detect(dir.path(), Some("./b --fast")).unwrap();
        assert_eq!(
            (d.buildpack, d.start_command.as_str()),
            ("binary", "./b --fast")
        );
        let dir = app(&[("index.html", "x", 0o644)]);
        assert_eq!(
            detect(dir.path(), Some("my-server")).unwrap().start_command,
            "my-server"
        );
    }

    #[test]
    fn staging_containers_may_ask_the_hosts_resolvers_and_nothing_more() {
        let rules = dns_rules(
            "# generated\nnameserver 10.255.255.53\nnameserver 127.0.0.53\n\
             nameserver fe80::1\nsearch example.com\nnameserver 169.254.169.253\n",
        );
        let allowed: Vec<(String, Option<String>)> = rules
            .iter()
            .map(|r| (r.destination.clone(), r.ports.clone()))
            .collect();
        let port = Some("53".to_owned());
        assert_eq!(
            allowed,
            [
                ("10.255.255.53".to_owned(), port.clone()),
                ("10.255.255.53".to_owned(), port.clone()),
                ("169.254.169.253".to_owned(), port.clone()),
                ("169.254.169.253".to_owned(), port),
            ]
        );
        for rule in &rules {
            rule.validate().unwrap();
        }
        assert!(dns_rules("").is_empty());
    }

    #[test]
    fn node_packages_with_their_own_install_scripts_are_installed() {
        let dir = app(&[(
            "package.json",
            r#"{"scripts":{"start":"node s.js","postinstall":"node build.js"}}"#,
            0o644,
        )]);
        let installs = detect(dir.path(), None).unwrap().installs;
        assert_eq!(installs.len(), 1);
        assert_eq!(installs[0].argv[0], "npm");
        let dir = app(&[(
            "package.json",
            r#"{"scripts":{"start":"node s.js"}}"#,
            0o644,
        )]);
        assert!(detect(dir.path(), None).unwrap().installs.is_empty());
    }

    #[test]
    fn the_staging_environment_holds_nothing_of_the_platform() {
        let env = staging_env();
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        for name in &names {
            assert!(
                ["PATH", "HOME", "TMPDIR", "LANG"].contains(name)
                    || name.starts_with("PIP_")
                    || name.starts_with("npm_config_"),
                "{name} is not for a buildpack"
            );
        }
        let home = env.iter().find(|(k, _)| k == "HOME").unwrap();
        assert_eq!(home.1, TMP_DIR);
        assert!(!STACK_PATH.contains("/root"));
    }

    #[test]
    fn nothing_detected_says_what_to_add() {
        let dir = app(&[("notes.txt", "x", 0o644)]);
        let err = detect(dir.path(), None).unwrap_err();
        assert!(
            err.starts_with("no buildpack detected: add a Procfile"),
            "{err}"
        );
    }

    #[test]
    fn droplets_are_tarballs_with_modes() {
        let dir = app(&[("run", "#!/bin/sh\n", 0o755)]);
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("d.tgz");
        let (size, sha) = write_droplet(dir.path(), &dest).unwrap();
        let bytes = std::fs::read(&dest).unwrap();
        assert_eq!(bytes.len() as u64, size);
        assert_eq!(sha, hydrant_api::push::hex(&Sha256::digest(&bytes)));
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
        let modes: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        assert!(
            modes
                .iter()
                .any(|(p, m)| p.ends_with("run") && m & 0o111 != 0),
            "{modes:?}"
        );
    }
}
