//! The app developer's commands: `push`, `apps`, `app`, `scale`, `start`, `stop`, `restart`,
//! `delete`, `events`, `routes`, `map-route`, `unmap-route`.
//!
//! Each is a short script over the cloud controller's typed client (`hydrant-api`); the platform
//! does the work. What lives here is what a person at a terminal needs: progress while pushing,
//! staging output as it happens, tables (or `--json` for scripts), and errors that say what to
//! fix with an exit code a script can test (see `exit`). Every string that came from the
//! platform or an app is escaped before it reaches the terminal.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hydrant_api::push::LocalFile;
use hydrant_api::{
    App, AppState, BuildState, Client, CreateApp, CreateBuild, EventFilter, HealthCheckType,
    InstanceState, ScaleApp, UpdateApp,
};
use hydrant_firehose_client::render::escape_text;
use hydrant_firehose_client::{
    ClientConfig, EnvelopeView, Kind, RecentQuery, StreamEvent, Subscription,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::cli_config::{self, CliConfig};
use crate::exit;

/// `hydrant push`.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The app's name (also its default route: NAME.<apps domain>).
    name: String,
    /// The directory to push.
    #[arg(short = 'p', long = "path", default_value = ".")]
    path: PathBuf,
    #[command(flatten)]
    size: SizeArgs,
    /// The start command (overrides what staging detects).
    #[arg(short = 'c', long)]
    command: Option<String>,
    /// Health check: port (default), http or process.
    #[arg(short = 'u', long = "health-check-type")]
    health_check_type: Option<String>,
    /// The path an http health check requests.
    #[arg(long)]
    endpoint: Option<String>,
    /// Seconds a stopped instance gets between SIGTERM and SIGKILL (1-300; default 10).
    #[arg(long = "stop-timeout", value_name = "SECS")]
    stop_timeout: Option<u32>,
    /// Stage the app but do not start it.
    #[arg(long)]
    no_start: bool,
    /// Do not map the default route.
    #[arg(long)]
    no_route: bool,
    /// How long to wait for staging and for instances to start, in seconds.
    #[arg(short = 't', long, default_value_t = 180)]
    timeout: u64,
}

/// `hydrant scale`.
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// The app.
    name: String,
    #[command(flatten)]
    size: SizeArgs,
}

/// How many instances of what size: the flags `push` and `scale` share.
#[derive(Debug, clap::Args)]
struct SizeArgs {
    /// Number of instances.
    #[arg(short = 'i', long)]
    instances: Option<u32>,
    /// Memory per instance, e.g. 256M or 1G (a running app's instances restart with it).
    #[arg(short = 'm', long)]
    memory: Option<String>,
    /// Disk per instance, e.g. 1G.
    #[arg(short = 'k', long)]
    disk: Option<String>,
}

impl SizeArgs {
    /// The sizes as the API takes them (what was not given stays `None`).
    fn parse(&self) -> anyhow::Result<ScaleApp> {
        let size =
            |flag: &str, text: Option<&str>| text.map(|t| parse_megabytes(flag, t)).transpose();
        Ok(ScaleApp {
            instances: self.instances,
            memory_mb: size("-m", self.memory.as_deref())?,
            disk_mb: size("-k", self.disk.as_deref())?,
        })
    }
}

/// A command that takes only an app name.
#[derive(Debug, clap::Args)]
pub struct NameArgs {
    /// The app.
    pub name: String,
}

/// `hydrant delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The app.
    name: String,
    /// Do not ask for confirmation.
    #[arg(short = 'f', long)]
    force: bool,
}

/// A list command: `--json` for scripts.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `hydrant app` and `hydrant events`.
#[derive(Debug, clap::Args)]
pub struct AppListArgs {
    /// The app.
    name: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `hydrant map-route` / `unmap-route`.
#[derive(Debug, clap::Args)]
pub struct RouteArgs {
    /// The app.
    name: String,
    /// The route's host name, e.g. shop.example.com or shop.apps.localhost.
    host: String,
}

/// What every platform command starts from: the CLI config and a client for its API.
pub(crate) struct Session {
    pub config: CliConfig,
    pub client: Client,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("api", &self.config.api)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn load() -> anyhow::Result<Self> {
        let config = cli_config::load()?;
        let Some(api) = config.api.clone() else {
            return Err(exit::unreachable(
                "no cloud controller targeted: run `hydrant up`, or \
                 `hydrant target URL` then `hydrant login`",
            ));
        };
        let client = Client::new(&api, Some(config.token.clone()));
        Ok(Self { config, client })
    }

    /// The targeted space's guid (`hydrant target -o ORG -s SPACE`), if one is targeted.
    pub fn space_guid(&self) -> Option<String> {
        crate::orgs_cli::load_target()
            .and_then(|t| t.space)
            .map(|s| s.guid)
    }

    /// The app called `name` (in the targeted space, if one is), with a not-found error that
    /// says how to list apps.
    pub async fn app(&self, name: &str) -> anyhow::Result<App> {
        match self
            .client
            .app_by_name(name, self.space_guid().as_deref())
            .await
        {
            Ok(app) => Ok(app),
            Err(hydrant_api::Error::Api { status: 404, .. }) => Err(exit::not_found(format!(
                "app {} not found: `hydrant apps` lists the apps you can see",
                escape_text(name)
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// A firehose client config for one app's stream, with a token scoped to that app.
    pub async fn app_stream_config(&self, app: &App) -> anyhow::Result<ClientConfig> {
        let token = match self.client.log_token(&app.guid).await {
            Ok(t) => t.token,
            // An older controller without per-app tokens: the session's own token may do.
            Err(hydrant_api::Error::Api { status: 404, .. }) => self.config.token.clone(),
            Err(e) => return Err(e.into()),
        };
        Ok(ClientConfig {
            url: self.config.firehose.clone(),
            token,
            ..ClientConfig::default()
        })
    }
}

/// Parses a memory or disk size: `256M`, `1G`, `512MB`, `1.5G` or a plain number of megabytes.
pub fn parse_megabytes(flag: &str, text: &str) -> anyhow::Result<u64> {
    let t = text.trim().to_ascii_uppercase();
    let t = t.strip_suffix('B').unwrap_or(&t);
    let (number, factor) = if let Some(n) = t.strip_suffix('G') {
        (n, 1024.0)
    } else if let Some(n) = t.strip_suffix('M') {
        (n, 1.0)
    } else {
        (t, 1.0)
    };
    let bad = || {
        exit::usage(format!(
            "{flag} {}: not a size; use a number with M or G, like 256M or 1G",
            escape_text(text)
        ))
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    if !value.is_finite() || value <= 0.0 {
        return Err(bad());
    }
    let mb = (value * factor).round();
    if !(1.0..=1024.0 * 1024.0).contains(&mb) {
        return Err(exit::usage(format!(
            "{flag} {}: must be between 1M and 1024G",
            escape_text(text)
        )));
    }
    Ok(mb as u64)
}

fn parse_health_check(text: &str) -> anyhow::Result<HealthCheckType> {
    match text {
        "port" => Ok(HealthCheckType::Port),
        "http" => Ok(HealthCheckType::Http),
        "process" | "none" => Ok(HealthCheckType::Process),
        other => Err(exit::usage(format!(
            "--health-check-type {}: use port, http or process",
            escape_text(other)
        ))),
    }
}

fn spinner(message: &str) -> ProgressBar {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(message.to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn bytes_bar(total: u64) -> ProgressBar {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "  uploading [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

pub async fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.path;
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(exit::usage(format!(
                "-p {}: not a directory; push a directory holding the app",
                dir.display()
            )));
        }
        Err(_) => {
            return Err(exit::usage(format!(
                "-p {}: no such directory",
                dir.display()
            )));
        }
    }
    let size = args.size.parse()?;
    let health = args
        .health_check_type
        .as_deref()
        .map(parse_health_check)
        .transpose()?;
    if size.instances == Some(0) {
        return Err(exit::usage(
            "-i 0: an app needs at least one instance; use `hydrant stop` to stop it",
        ));
    }
    if let Some(problem) = args
        .stop_timeout
        .and_then(hydrant_api::stop_timeout_problem)
    {
        return Err(exit::usage(format!("--stop-timeout: {problem}")));
    }
    let session = Session::load()?;
    let started = Instant::now();
    let name = escape_text(&args.name);

    // 1. The app: create it, or update what the flags name.
    let space = session.space_guid();
    let app = match session
        .client
        .app_by_name(&args.name, space.as_deref())
        .await
    {
        Ok(app) => {
            eprintln!("Updating app {name}...");
            let update = UpdateApp {
                command: args.command.clone(),
                health_check_type: health,
                health_check_endpoint: args.endpoint.clone(),
                stop_timeout_secs: args.stop_timeout,
                ..UpdateApp::default()
            };
            let app = session.client.update_app(&app.guid, &update).await?;
            if size == ScaleApp::default() {
                app
            } else {
                session.client.scale_app(&app.guid, &size).await?
            }
        }
        Err(hydrant_api::Error::Api { status: 404, .. }) => {
            eprintln!("Creating app {name}...");
            let create = CreateApp {
                name: args.name.clone(),
                instances: size.instances,
                memory_mb: size.memory_mb,
                disk_mb: size.disk_mb,
                command: args.command.clone(),
                health_check_type: health,
                health_check_endpoint: args.endpoint.clone(),
                stop_timeout_secs: args.stop_timeout,
                no_route: args.no_route,
                space,
                ..CreateApp::default()
            };
            session.client.create_app(&create).await?
        }
        Err(e) => return Err(e.into()),
    };

    // 2. Fingerprint, match, upload only what the platform lacks.
    let spin = spinner("hashing files");
    let owned = dir.clone();
    let files: Vec<LocalFile> =
        tokio::task::spawn_blocking(move || hydrant_api::push::fingerprint_dir(&owned))
            .await
            .context("hashing the app's files failed")??;
    spin.finish_and_clear();
    if files.is_empty() {
        return Err(exit::usage(format!(
            "-p {}: the directory is empty; there is nothing to push",
            dir.display()
        )));
    }
    let resources: Vec<_> = files.iter().map(|f| f.resource.clone()).collect();
    hydrant_api::push::validate_resources(&resources)?;
    let total_bytes: u64 = resources.iter().map(|r| r.size).sum();
    let missing = session.client.resource_match(&resources).await?;
    let mut unique: BTreeMap<&str, &LocalFile> = BTreeMap::new();
    for want in &missing {
        if let Some(file) = files.iter().find(|f| f.resource.sha256 == want.sha256) {
            unique.insert(&file.resource.sha256, file);
        }
    }
    let upload_bytes: u64 = unique.values().map(|f| f.resource.size).sum();
    eprintln!(
        "Uploading {name}: {} of {} files, {} of {} (the platform has the rest)",
        unique.len(),
        files.len(),
        human_bytes(upload_bytes),
        human_bytes(total_bytes)
    );
    let bar = bytes_bar(upload_bytes);
    for (sha, file) in &unique {
        bar.set_message(escape_text(&file.resource.path));
        session
            .client
            .upload_blob(sha, &file.local)
            .await
            .with_context(|| format!("uploading {}", escape_text(&file.resource.path)))?;
        bar.inc(file.resource.size);
    }
    bar.finish_and_clear();
    let package = session.client.create_package(&app.guid, &resources).await?;

    // 3. Stage, showing the STG lines as they come.
    eprintln!("Staging {name}...");
    let stream = session.app_stream_config(&app).await?;
    let printer = StagingPrinter::start(stream, app.guid.clone()).await;
    let build = session
        .client
        .create_build(
            &app.guid,
            &CreateBuild {
                package_guid: Some(package.guid.clone()),
            },
        )
        .await?;
    let build = match session
        .client
        .wait_for_build(&build.guid, Duration::from_secs(args.timeout))
        .await
    {
        Ok(b) => b,
        Err(hydrant_api::Error::Invalid(m)) => {
            printer.stop().await;
            return Err(exit::timeout(m));
        }
        Err(e) => return Err(e.into()),
    };
    printer.stop().await;
    if build.state == BuildState::Failed {
        anyhow::bail!(
            "staging {name} failed: {}",
            escape_text(build.error.as_deref().unwrap_or("no reason given"))
        );
    }

    if args.no_start {
        eprintln!("Staged {name}; not starting it (--no-start).");
        return Ok(ExitCode::SUCCESS);
    }
    // 4. Start (or restart onto the new droplet) and wait for the instances.
    let app = if app.state == AppState::Started {
        eprintln!("Restarting {name} on the new droplet...");
        session.client.restart_app(&app.guid).await?
    } else {
        eprintln!("Starting {name}...");
        session.client.start_app(&app.guid).await?
    };
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    wait_running(&session, &app, deadline).await?;
    let app = session.client.app(&app.guid).await?;
    eprintln!(
        "Pushed {name} in {:.1} s: {} instance(s), {} MB each",
        started.elapsed().as_secs_f64(),
        app.instances,
        app.memory_mb
    );
    for route in &app.routes {
        println!("{}", route_url(&session, route));
    }
    Ok(ExitCode::SUCCESS)
}

/// `http://ROUTE[:PORT]`, with the router's port when the CLI knows it.
fn route_url(session: &Session, route: &str) -> String {
    let port = session
        .config
        .router
        .as_deref()
        .and_then(|r| r.rsplit_once(':'))
        .map(|(_, p)| p.trim_end_matches('/'))
        .filter(|p| *p != "80");
    match port {
        Some(p) => format!("http://{}:{p}", escape_text(route)),
        None => format!("http://{}", escape_text(route)),
    }
}

/// Prints an app's STG lines while staging runs.
struct StagingPrinter {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl StagingPrinter {
    /// Opens the app's stream and waits (briefly) until it is connected, so no line is missed.
    async fn start(config: ClientConfig, source_id: String) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let Ok(mut client) = hydrant_firehose_client::FirehoseClient::connect(
                config,
                Subscription::App { source_id },
            ) else {
                let _ = ready_tx.send(());
                return;
            };
            let mut ready = Some(ready_tx);
            loop {
                let event = tokio::select! {
                    _ = &mut stopped => break,
                    e = client.next() => e,
                };
                let Some(event) = event else { break };
                match event {
                    StreamEvent::Connected => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    StreamEvent::Batch(batch) => {
                        for view in batch.iter() {
                            print_staging_line(&view);
                        }
                    }
                    StreamEvent::Fatal(_) => break,
                    _ => {}
                }
            }
            if let Some(r) = ready.take() {
                let _ = r.send(());
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(3), ready_rx).await;
        Self { stop, task }
    }

    async fn stop(self) {
        // Let the last lines of staging arrive before closing.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

fn print_staging_line(view: &EnvelopeView<'_>) {
    if view.kind != Kind::Log {
        return;
    }
    let Some(source_type) = view.tag("source_type") else {
        return;
    };
    if !source_type.starts_with("STG") {
        return;
    }
    if let Some((payload, _)) = view.log() {
        let text = String::from_utf8_lossy(payload);
        eprintln!("   {}", escape_text(text.trim_end_matches('\n')));
    }
}

/// Waits until every desired instance runs; fails early when one crashes.
async fn wait_running(session: &Session, app: &App, deadline: Instant) -> anyhow::Result<()> {
    let name = escape_text(&app.name);
    let spin = spinner("waiting for instances");
    let mut pause = Duration::from_millis(100);
    loop {
        let stats = session.client.app_stats(&app.guid).await?;
        let running = stats
            .instances
            .iter()
            .filter(|i| i.state == InstanceState::Running)
            .count();
        let desired = stats.desired_instances as usize;
        spin.set_message(format!("{running} of {desired} instances running"));
        if running >= desired && desired > 0 {
            spin.finish_and_clear();
            eprintln!("{running} of {desired} instances running");
            return Ok(());
        }
        if let Some(crashed) = stats
            .instances
            .iter()
            .find(|i| i.state == InstanceState::Crashed)
        {
            spin.finish_and_clear();
            let why = crashed.crash.as_ref().map_or_else(
                || "no reason reported".to_owned(),
                |c| {
                    format!(
                        "{} (exit status {}): {}",
                        c.reason,
                        c.exit_status
                            .map_or_else(|| "none".to_owned(), |s| s.to_string()),
                        c.exit_description
                    )
                },
            );
            anyhow::bail!(
                "instance {} of {name} crashed while starting: {}; see `hydrant logs {name} --recent`",
                crashed.index,
                escape_text(&why)
            );
        }
        if let Some(problem) = stats
            .instances
            .iter()
            .find_map(|i| i.placement_error.as_deref())
            .filter(|_| Instant::now() + Duration::from_secs(5) > deadline)
        {
            spin.finish_and_clear();
            anyhow::bail!("{name} could not be placed: {}", escape_text(problem));
        }
        if Instant::now() >= deadline {
            spin.finish_and_clear();
            return Err(exit::timeout(format!(
                "{name}: only {running} of {desired} instances running after the timeout; \
                 see `hydrant app {name}` and `hydrant logs {name} --recent`"
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(1000));
    }
}

pub async fn apps(args: ListArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let mut apps = session.client.list_apps().await?;
    // As `cf apps`: the targeted space's apps, when one is targeted.
    if let Some(space) = session.space_guid() {
        apps.retain(|a| a.space_guid == space);
    }
    let mut rows = Vec::new();
    let mut json = Vec::new();
    for app in &apps {
        let stats = session.client.app_stats(&app.guid).await.ok();
        let running = stats.as_ref().map_or(0, |s| {
            s.instances
                .iter()
                .filter(|i| i.state == InstanceState::Running)
                .count()
        });
        rows.push(vec![
            app.name.clone(),
            app.state.as_str().to_ascii_lowercase(),
            format!("{running}/{}", app.instances),
            format!("{}M", app.memory_mb),
            app.routes.join(", "),
        ]);
        json.push(AppRow {
            app,
            running_instances: running,
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else if rows.is_empty() {
        println!("No apps. Push one with `hydrant push NAME -p DIR`.");
    } else {
        print_table(&["name", "state", "instances", "memory", "routes"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
struct AppRow<'a> {
    #[serde(flatten)]
    app: &'a App,
    running_instances: usize,
}

/// The newest cpu / memory / disk gauges per instance index, from the log cache.
async fn instance_usage(session: &Session, app: &App) -> BTreeMap<String, Usage> {
    let mut out: BTreeMap<String, Usage> = BTreeMap::new();
    let Ok(config) = session.app_stream_config(app).await else {
        return out;
    };
    let query = RecentQuery {
        envelope_types: vec![Kind::Gauge],
        limit: Some(200),
        descending: true,
        ..RecentQuery::default()
    };
    let Ok(envelopes) = hydrant_firehose_client::recent(&config, &app.guid, &query).await else {
        return out;
    };
    for envelope in &envelopes {
        let Some(hydrant_envelope::v2::envelope::Message::Gauge(gauge)) = &envelope.message else {
            continue;
        };
        let usage = out.entry(envelope.instance_id.clone()).or_default();
        if usage.isolation.is_none()
            && gauge.metrics.contains_key("memory")
            && let Some(isolation) = envelope.tags.get("isolation")
        {
            usage.isolation = Some(isolation.clone());
        }
        for (name, value) in &gauge.metrics {
            let slot = match name.as_str() {
                "cpu" => &mut usage.cpu,
                "memory" => &mut usage.memory,
                "disk" => &mut usage.disk,
                "memory_quota" => &mut usage.memory_quota,
                "disk_quota" => &mut usage.disk_quota,
                "pids" => &mut usage.pids,
                "pids_limit" => &mut usage.pids_limit,
                "cpu_shares" => &mut usage.cpu_shares,
                _ => continue,
            };
            // Newest first: keep the first value seen.
            if slot.is_none() {
                *slot = Some(value.value);
            }
        }
    }
    out
}

#[derive(Debug, Default, Clone, Serialize)]
struct Usage {
    cpu: Option<f64>,
    memory: Option<f64>,
    disk: Option<f64>,
    memory_quota: Option<f64>,
    disk_quota: Option<f64>,
    /// Processes (and threads, in a container) now.
    pids: Option<f64>,
    /// The kernel's pids limit (contained instances only).
    pids_limit: Option<f64>,
    /// The container's CPU weight in shares of 1024 (contained instances only).
    cpu_shares: Option<f64>,
    /// `container`, or `none` for an instance running unisolated, from the metrics' tag.
    isolation: Option<String>,
}

pub async fn app(args: AppListArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let app = session.app(&args.name).await?;
    let stats = session.client.app_stats(&app.guid).await?;
    let usage = instance_usage(&session, &app).await;
    let now = hydrant_auth::now_secs();
    if args.json {
        #[derive(Serialize)]
        struct Out<'a> {
            app: &'a App,
            instances: Vec<serde_json::Value>,
        }
        let instances = stats
            .instances
            .iter()
            .map(|i| {
                let mut v = serde_json::to_value(i).unwrap_or_default();
                if let (Some(obj), Some(u)) = (v.as_object_mut(), usage.get(&i.index.to_string())) {
                    obj.insert(
                        "usage".to_owned(),
                        serde_json::to_value(u).unwrap_or_default(),
                    );
                }
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&Out {
                app: &app,
                instances
            })?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let running = stats
        .instances
        .iter()
        .filter(|i| i.state == InstanceState::Running)
        .count();
    println!("name:        {}", escape_text(&app.name));
    println!("state:       {}", app.state.as_str().to_ascii_lowercase());
    println!("instances:   {running}/{}", app.instances);
    println!("memory:      {}M   disk: {}M", app.memory_mb, app.disk_mb);
    println!(
        "stop grace:  {} s (SIGTERM, then SIGKILL)",
        app.stop_timeout_secs
    );
    println!("routes:      {}", escape_text(&app.routes.join(", ")));
    if let Some(cmd) = &app.command {
        println!("command:     {}", escape_text(cmd));
    }
    if usage
        .values()
        .any(|u| u.isolation.as_deref() == Some("none"))
    {
        println!(
            "isolation:   NONE: instances run WITHOUT isolation, as the platform's own user, \
             with no kernel limits (the platform runs with --isolation none)"
        );
    }
    println!();
    let rows: Vec<Vec<String>> = stats
        .instances
        .iter()
        .map(|i| {
            let u = usage.get(&i.index.to_string()).cloned().unwrap_or_default();
            let mut state = format!("{:?}", i.state).to_ascii_lowercase();
            if let Some(c) = &i.crash {
                state = format!("{state} ({})", c.reason);
            }
            if let Some(p) = &i.placement_error {
                state = format!("{state} ({p})");
            }
            vec![
                format!("#{}", i.index),
                state,
                if i.since > 0 && i.state == InstanceState::Running {
                    human_duration(now.saturating_sub(i.since / 1_000_000_000))
                } else {
                    String::new()
                },
                u.cpu.map_or_else(|| "-".to_owned(), |c| format!("{c:.1}%")),
                fraction(u.memory, u.memory_quota),
                fraction(u.disk, u.disk_quota),
                pids(&u),
                shares(&u),
            ]
        })
        .collect();
    print_table(
        &[
            "",
            "state",
            "uptime",
            "cpu",
            "memory",
            "disk",
            "pids",
            "cpu shares",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// Processes now and the kernel's limit: `12 of 2048`, or `12 (no limit)` unisolated.
fn pids(u: &Usage) -> String {
    match (u.pids, u.pids_limit) {
        (Some(n), Some(limit)) if limit > 0.0 => format!("{n:.0} of {limit:.0}"),
        (Some(n), _) if u.isolation.as_deref() == Some("none") => format!("{n:.0} (no limit)"),
        (Some(n), _) => format!("{n:.0}"),
        _ => "-".to_owned(),
    }
}

/// The CPU weight: `122 of 1024`, or `none` unisolated.
fn shares(u: &Usage) -> String {
    match u.cpu_shares {
        Some(s) if s > 0.0 => format!("{s:.0} of 1024"),
        _ if u.isolation.as_deref() == Some("none") => "none".to_owned(),
        _ => "-".to_owned(),
    }
}

fn fraction(used: Option<f64>, quota: Option<f64>) -> String {
    match (used, quota) {
        (Some(u), Some(q)) if q > 0.0 => {
            format!("{} of {}", human_bytes(u as u64), human_bytes(q as u64))
        }
        (Some(u), _) => human_bytes(u as u64),
        _ => "-".to_owned(),
    }
}

pub async fn scale(args: ScaleArgs) -> anyhow::Result<ExitCode> {
    let size = args.size.parse()?;
    if size == ScaleApp::default() {
        return Err(exit::usage(
            "nothing to change: give -i INSTANCES, -m MEMORY or -k DISK",
        ));
    }
    if size.instances == Some(0) {
        return Err(exit::usage(
            "-i 0: use `hydrant stop` to stop every instance",
        ));
    }
    let session = Session::load()?;
    let app = session.app(&args.name).await?;
    let app = session.client.scale_app(&app.guid, &size).await?;
    eprintln!(
        "Scaled {} to {} instance(s) of {}M",
        escape_text(&app.name),
        app.instances,
        app.memory_mb
    );
    if app.state == AppState::Started {
        wait_running(&session, &app, Instant::now() + Duration::from_secs(120)).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `start`, `stop`, `restart`.
#[derive(Debug, Clone, Copy)]
pub enum Lifecycle {
    Start,
    Stop,
    Restart,
}

pub async fn lifecycle(what: Lifecycle, args: NameArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let app = session.app(&args.name).await?;
    let name = escape_text(&app.name);
    let app = match what {
        Lifecycle::Start => {
            eprintln!("Starting {name}...");
            session.client.start_app(&app.guid).await?
        }
        Lifecycle::Stop => {
            eprintln!("Stopping {name}...");
            session.client.stop_app(&app.guid).await?;
            eprintln!("Stopped {name}.");
            return Ok(ExitCode::SUCCESS);
        }
        Lifecycle::Restart => {
            eprintln!("Restarting {name}...");
            session.client.restart_app(&app.guid).await?
        }
    };
    wait_running(&session, &app, Instant::now() + Duration::from_secs(120)).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let app = session.app(&args.name).await?;
    let name = escape_text(&app.name);
    if !args.force {
        if !std::io::stdin().is_terminal() {
            return Err(exit::usage(format!(
                "deleting {name} needs confirmation: pass -f to delete without asking"
            )));
        }
        eprint!("Really delete the app {name}? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("Not deleted.");
            return Ok(ExitCode::SUCCESS);
        }
    }
    session.client.delete_app(&app.guid).await?;
    eprintln!("Deleted {name}.");
    Ok(ExitCode::SUCCESS)
}

pub async fn events(args: AppListArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let app = session.app(&args.name).await?;
    let events = session
        .client
        .audit_events(&EventFilter {
            target_guid: Some(app.guid.clone()),
            ..EventFilter::default()
        })
        .await?;
    if answered_without_table(args.json, &events, None)? {
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                format_time(e.created_at),
                e.event_type.clone(),
                e.actor.clone(),
                describe_event(&e.data),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("No events for {}.", escape_text(&app.name));
    } else {
        print_table(&["time", "event", "actor", "description"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// `key: value` pairs of an event's data, compact.
fn describe_event(data: &serde_json::Value) -> String {
    match data {
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}: {s}"),
                other => format!("{k}: {other}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub async fn routes(args: ListArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let routes = session.client.list_routes().await?;
    let apps = session.client.list_apps().await?;
    let names: BTreeMap<&str, &str> = apps
        .iter()
        .map(|a| (a.guid.as_str(), a.name.as_str()))
        .collect();
    if answered_without_table(args.json, &routes, None)? {
        return Ok(ExitCode::SUCCESS);
    }
    // Every route a space of yours owns, with the apps mapped to it (none: claimed, unmapped).
    let owned = session.client.space_routes().await.unwrap_or_default();
    let mut apps_of: BTreeMap<String, Vec<String>> =
        owned.iter().map(|r| (r.url.clone(), Vec::new())).collect();
    for r in &routes {
        let name = names
            .get(r.app_guid.as_str())
            .map_or_else(|| r.app_guid.clone(), |n| (*n).to_owned());
        apps_of.entry(r.url.clone()).or_default().push(name);
    }
    let rows: Vec<Vec<String>> = apps_of
        .into_iter()
        .map(|(url, apps)| {
            let apps = if apps.is_empty() {
                "-".to_owned()
            } else {
                apps.join(", ")
            };
            vec![url, apps]
        })
        .collect();
    if rows.is_empty() {
        println!("No routes.");
    } else {
        print_table(&["route", "apps"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn map_route(args: RouteArgs, map: bool) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let app = session.app(&args.name).await?;
    if map {
        let route = session.client.map_route(&app.guid, &args.host).await?;
        eprintln!(
            "Mapped {} to {}",
            escape_text(&route.url),
            escape_text(&app.name)
        );
    } else {
        session.client.unmap_route(&app.guid, &args.host).await?;
        eprintln!(
            "Unmapped {} from {}",
            escape_text(&args.host),
            escape_text(&app.name)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The start of every list command's answer: with `--json` the whole list as JSON (an empty
/// list too, so scripts need no special case), else the `empty` line when there is nothing to
/// list. `true` when that was the whole answer; the caller prints its table otherwise.
pub fn answered_without_table<T: Serialize + ?Sized>(
    json: bool,
    list: &T,
    empty: Option<&str>,
) -> anyhow::Result<bool> {
    if json {
        println!("{}", serde_json::to_string_pretty(list)?);
        return Ok(true);
    }
    if let Some(line) = empty {
        println!("{line}");
        return Ok(true);
    }
    Ok(false)
}

/// Left-aligned columns, every cell escaped.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| escape_text(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            out.push_str(cell);
            for _ in cell.chars().count()..w + 3 {
                out.push(' ');
            }
        }
        println!("{}", out.trim_end());
    };
    line(&mut headers.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// `unix_secs` in the local zone as `2006-01-02T15:04:05-0700`.
fn format_time(unix_secs: i64) -> String {
    let c = hydrant_envelope::time::Civil::local(unix_secs.saturating_mul(1_000_000_000));
    let sign = if c.offset_seconds < 0 { '-' } else { '+' };
    let minutes = c.offset_seconds.unsigned_abs() / 60;
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{sign}{:02}{:02}",
        c.year,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        minutes / 60,
        minutes % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_megabytes("-m", "256M").unwrap(), 256);
        assert_eq!(parse_megabytes("-m", "1G").unwrap(), 1024);
        assert_eq!(parse_megabytes("-m", "1gb").unwrap(), 1024);
        assert_eq!(parse_megabytes("-m", "512MB").unwrap(), 512);
        assert_eq!(parse_megabytes("-m", "1.5G").unwrap(), 1536);
        assert_eq!(parse_megabytes("-m", "128").unwrap(), 128);
        for bad in ["", "12X", "-5M", "0", "G", "nanM", "99999999G"] {
            let err = parse_megabytes("-m", bad).unwrap_err();
            assert!(err.to_string().contains("-m"), "{bad}: {err}");
        }
    }

    #[test]
    fn durations_and_bytes() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(125), "2m05s");
        assert_eq!(human_duration(7260), "2h01m");
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5K");
        assert_eq!(human_bytes(256 * 1024 * 1024), "256.0M");
    }
}
