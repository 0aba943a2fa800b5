//! `hydrant up`: the micro cloud. Every role that exists runs in this one process, on loopback,
//! wired the way separate hosts would be (real gRPC, WebSocket and HTTP sockets between roles).
//!
//! It writes `DATA_DIR/endpoints.json` (every endpoint and the admin token) and the CLI config,
//! so `hydrant logs` and friends work with no flags. Ctrl-C stops every role cleanly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli_config::{self, CliConfig};

/// Arguments of `hydrant up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where the micro cloud keeps its state (signing key, endpoints.json).
    /// Default: `$HYDRANT_HOME/data` (`~/.hydrant/data`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen on free ports chosen by the kernel instead of the well-known defaults
    /// (agent 3458, doppler 8082, firehose 8081); endpoints.json says which.
    #[arg(long)]
    ephemeral_ports: bool,
    /// Also push the demo app and drive light traffic at it through the router.
    #[arg(long)]
    demo: bool,
    /// Log bytes per second each app instance may send before its lines are dropped (with one
    /// "exceeded log rate limit" notice per second in its stream); 0 = unlimited.
    #[arg(long, default_value_t = 1024 * 1024)]
    app_log_rate_limit: u64,
    /// Refuse syslog drains to loopback, private and link-local addresses, as a shared
    /// platform does (`allow_private_drains = false`, the cloud controller's default when run
    /// alone). The micro cloud listens on loopback only and its user is its operator, so by
    /// default it lets apps drain to a local rsyslog or a collector on the LAN.
    #[arg(long)]
    refuse_private_drains: bool,
    /// Shortens every autoscaling rule's breach duration and cooldown to at most this many
    /// seconds (policies keep their 60 s minimum); for tests and demos.
    #[arg(long, hide = true)]
    autoscaler_rule_cap_secs: Option<u32>,
}

/// Which ports the roles listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// The documented defaults.
    WellKnown,
    /// Kernel-chosen free ports (tests, benchmarks, a second micro cloud).
    Ephemeral,
}

/// `endpoints.json`: where everything listens, and the admin token.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoints {
    /// The agent's v2 gRPC ingress (send envelopes here).
    pub agent: String,
    /// The doppler's gRPC port (v2 ingress/egress and the Log Cache read API).
    pub doppler: String,
    /// The firehose edge's public HTTP/WebSocket base URL.
    pub firehose: String,
    /// `ws://.../firehose/{subscription_id}`.
    pub firehose_stream: String,
    /// `ws://.../apps/{source_id}/stream`.
    pub app_stream: String,
    /// `http://.../api/v1/read/{source_id}`.
    pub recent: String,
    /// Each role's `/healthz` and `/metrics` base URL.
    pub admin: BTreeMap<String, String>,
    /// A token with the admin and firehose scopes.
    pub token: String,
    /// The cloud controller's REST API (absent when the platform roles are off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// The router's HTTP address: apps answer at `http://NAME.<apps_domain>:PORT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router: Option<String>,
    /// The domain apps' default routes live under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apps_domain: Option<String>,
    /// The data directory.
    pub data_dir: PathBuf,
}

/// What a micro cloud runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Roles send their own metrics into the pipeline (off for the bench, whose ledger counts
    /// only generator envelopes).
    pub self_telemetry: bool,
    /// Run the platform roles as well as the pipeline.
    pub platform: bool,
    /// The agent's per-instance app log rate limit in bytes/s (0 = unlimited).
    pub app_log_rate_limit: u64,
    /// Apps may bind syslog drains to internal addresses.
    pub allow_private_drains: bool,
    /// The autoscaler's `rule_duration_cap_secs` (tests and demos only).
    pub autoscaler_rule_cap_secs: Option<u32>,
}

/// A running micro cloud.
#[derive(Debug)]
pub struct MicroCloud {
    pub agent_url: String,
    pub firehose_url: String,
    /// The cloud controller's URL, when the platform roles run.
    pub api_url: Option<String>,
    /// The router's URL, when the platform roles run.
    pub router_url: Option<String>,
    pub token: String,
    pub endpoints: Endpoints,
    admin_addrs: BTreeMap<String, SocketAddr>,
    tasks: JoinSet<(String, anyhow::Result<()>)>,
}

async fn bind(ports: Ports, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    let addr = match ports {
        Ports::WellKnown => SocketAddr::from(([127, 0, 0, 1], port)),
        Ports::Ephemeral => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {addr} for the {what}; is another Hydrant running? \
             Stop it, or run `hydrant up --ephemeral-ports`"
        )
    })
}

fn url(listener: &TcpListener) -> anyhow::Result<String> {
    Ok(format!("http://{}", listener.local_addr()?))
}

impl MicroCloud {
    /// Binds every role's sockets and starts the roles: the pipeline always, the platform
    /// (bus, cloud controller, executor, router) when `options.platform`.
    pub async fn start(
        data_dir: &Path,
        ports: Ports,
        options: Options,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let self_telemetry = options.self_telemetry;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
        let key_path = data_dir.join("signing.key");
        let key = if key_path.exists() {
            hydrant_auth::SigningKey::load(&key_path)?
        } else {
            let key = hydrant_auth::SigningKey::generate()?;
            key.save(&key_path)?;
            key
        };

        let agent_ingress = bind(ports, 3458, "agent's v2 ingress").await?;
        let agent_admin = bind(ports, 14824, "agent's admin endpoint").await?;
        let doppler_grpc = bind(ports, 8082, "doppler's gRPC port").await?;
        let doppler_admin = bind(ports, 8083, "doppler's admin endpoint").await?;
        let firehose_http = bind(ports, 8081, "firehose edge").await?;
        let firehose_admin = bind(ports, 8089, "firehose edge's admin endpoint").await?;

        let agent_url = url(&agent_ingress)?;
        let doppler_url = url(&doppler_grpc)?;
        let firehose_url = url(&firehose_http)?;
        let telemetry = hydrant_emitter::TelemetryConfig {
            agent: self_telemetry.then(|| agent_url.clone()),
            ..hydrant_emitter::TelemetryConfig::default()
        };
        let mut admin_addrs = BTreeMap::new();
        admin_addrs.insert("agent".to_owned(), agent_admin.local_addr()?);
        admin_addrs.insert("doppler".to_owned(), doppler_admin.local_addr()?);
        admin_addrs.insert("firehose".to_owned(), firehose_admin.local_addr()?);

        let mut tasks = JoinSet::new();
        {
            let config = hydrant_agent::Config {
                dopplers: vec![doppler_url.clone()],
                app_log_rate_limit_bytes_per_sec: options.app_log_rate_limit,
                telemetry: telemetry.clone(),
                ..hydrant_agent::Config::default()
            };
            config.validate()?;
            let listeners = hydrant_agent::Listeners {
                ingress: agent_ingress,
                admin: agent_admin,
            };
            spawn_role(
                &mut tasks,
                "agent",
                hydrant_agent::run(config, listeners, shutdown.clone()),
            );
        }
        {
            let config = hydrant_doppler::Config {
                telemetry: telemetry.clone(),
                ..hydrant_doppler::Config::default()
            };
            config.validate()?;
            let listeners = hydrant_doppler::Listeners {
                grpc: doppler_grpc,
                admin: doppler_admin,
            };
            spawn_role(
                &mut tasks,
                "doppler",
                hydrant_doppler::run(config, listeners, shutdown.clone()),
            );
        }
        {
            let config = hydrant_firehose::Config {
                dopplers: vec![doppler_url.clone()],
                signing_key_file: Some(key_path.display().to_string()),
                telemetry,
                ..hydrant_firehose::Config::default()
            };
            config.validate()?;
            let listeners = hydrant_firehose::Listeners {
                http: firehose_http,
                admin: firehose_admin,
            };
            spawn_role(
                &mut tasks,
                "trafficcontroller",
                hydrant_firehose::run(config, listeners, shutdown.clone()),
            );
        }

        // The admin's token: the CLI's, and the health manager's for the cloud controller's API.
        let token = key.issue(
            &hydrant_auth::Claims::new(ADMIN_USER)
                .with_scope(hydrant_auth::SCOPE_ADMIN)
                .with_scope(hydrant_auth::SCOPE_FIREHOSE),
        );
        let platform = if options.platform {
            Some(
                start_platform(
                    data_dir,
                    ports,
                    &key_path,
                    &token,
                    &agent_url,
                    &firehose_url,
                    options.allow_private_drains,
                    options.autoscaler_rule_cap_secs,
                    &mut admin_addrs,
                    &mut tasks,
                    &shutdown,
                )
                .await?,
            )
        } else {
            None
        };

        let ws = firehose_url.replacen("http://", "ws://", 1);
        let endpoints = Endpoints {
            agent: agent_url.clone(),
            doppler: doppler_url,
            firehose: firehose_url.clone(),
            firehose_stream: format!("{ws}/firehose/{{subscription_id}}"),
            app_stream: format!("{ws}/apps/{{source_id}}/stream"),
            recent: format!("{firehose_url}/api/v1/read/{{source_id}}"),
            admin: admin_addrs
                .iter()
                .map(|(k, v)| (k.clone(), format!("http://{v}")))
                .collect(),
            token: token.clone(),
            api: platform.as_ref().map(|p| p.api_url.clone()),
            router: platform.as_ref().map(|p| p.router_url.clone()),
            apps_domain: platform.as_ref().map(|p| p.apps_domain.clone()),
            data_dir: data_dir.to_path_buf(),
        };
        Ok(Self {
            agent_url,
            firehose_url,
            api_url: platform.as_ref().map(|p| p.api_url.clone()),
            router_url: platform.map(|p| p.router_url),
            token,
            endpoints,
            admin_addrs,
            tasks,
        })
    }

    /// Every drop counter of every role, keyed `role.reason`, from the roles' own `/metrics`.
    pub async fn scrape_drops(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for (role, addr) in &self.admin_addrs {
            let text = http_get(*addr, "/metrics").await?;
            for (name, labels, value) in parse_prometheus(&text) {
                if !name.ends_with("dropped_total") {
                    continue;
                }
                let reason = labels
                    .iter()
                    .find(|(k, _)| k == "reason")
                    .map_or("unspecified", |(_, v)| v.as_str());
                if is_side_branch(reason) {
                    continue;
                }
                *out.entry(format!("{role}.{reason}")).or_insert(0) += value as u64;
            }
        }
        Ok(out)
    }

    /// The sum over every role of the counter samples named `name` (Prometheus form, e.g.
    /// `doppler_gap_markers_total`).
    pub async fn scrape_counter(&self, name: &str) -> anyhow::Result<u64> {
        let mut total = 0;
        for addr in self.admin_addrs.values() {
            let text = http_get(*addr, "/metrics").await?;
            total += parse_prometheus(&text)
                .iter()
                .filter(|(n, _, _)| n == name)
                .map(|(_, _, v)| *v as u64)
                .sum::<u64>();
        }
        Ok(total)
    }

    /// Waits for every role to stop (after the shutdown token fired).
    pub async fn stopped(mut self) {
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok((role, Err(e))) => eprintln!("error: {role} stopped: {e:#}"),
                Err(e) => eprintln!("error: a role task failed: {e}"),
                Ok(_) => {}
            }
        }
    }

    /// Waits until a role stops on its own (an error) or `shutdown` fires.
    async fn supervise(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Option<(String, anyhow::Result<()>)> {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => None,
            joined = self.tasks.join_next() => match joined {
                // Roles watch the same token, so one may finish in the instant between the
                // signal and this select: that is the requested stop, not a failure.
                Some(Ok((_, Ok(())))) if shutdown.is_cancelled() => None,
                Some(Ok(r)) => Some(r),
                Some(Err(e)) => Some(("a role".to_owned(), Err(anyhow::anyhow!("task failed: {e}")))),
                None => None,
            },
        }
    }
}

/// The user `hydrant up` creates in the cloud controller and issues the CLI's token for.
const ADMIN_USER: &str = "admin";

/// Where the platform roles listen.
struct Platform {
    api_url: String,
    router_url: String,
    apps_domain: String,
}

type Tasks = JoinSet<(String, anyhow::Result<()>)>;

/// Runs one role's `run` future in the micro cloud's task set, under its name.
fn spawn_role<E>(
    tasks: &mut Tasks,
    name: &'static str,
    run: impl std::future::Future<Output = Result<(), E>> + Send + 'static,
) where
    E: Into<anyhow::Error> + Send + 'static,
{
    tasks.spawn(async move { (name.to_owned(), run.await.map_err(Into::into)) });
}

/// Starts the bus (in-process), the cloud controller, one executor, the health manager, the
/// autoscaler, the SLO alerter, the app-drain syslog nozzle and the router.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
async fn start_platform(
    data_dir: &Path,
    ports: Ports,
    key_path: &Path,
    token: &str,
    agent_url: &str,
    firehose_url: &str,
    allow_private_drains: bool,
    autoscaler_rule_cap_secs: Option<u32>,
    admin_addrs: &mut BTreeMap<String, SocketAddr>,
    tasks: &mut Tasks,
    shutdown: &CancellationToken,
) -> anyhow::Result<Platform> {
    let api = bind(ports, 9022, "cloud controller's API").await?;
    let api_admin = bind(ports, 14831, "cloud controller's admin endpoint").await?;
    let executor_admin = bind(ports, 14830, "executor's admin endpoint").await?;
    let router_http = bind(ports, 8080, "router").await?;
    let router_admin = bind(ports, 8085, "router's admin endpoint").await?;
    let hm_admin = bind(ports, 14832, "health manager's admin endpoint").await?;
    let slo_admin = bind(ports, 14835, "SLO alerter's admin endpoint").await?;
    let slo_url = url(&slo_admin)?;
    let autoscaler_admin = bind(ports, 14836, "autoscaler's admin endpoint").await?;
    let drains_admin = bind(ports, 14840, "syslog drain nozzle's admin endpoint").await?;
    let api_url = url(&api)?;
    let router_url = url(&router_http)?;
    admin_addrs.insert("cloudcontroller".to_owned(), api_admin.local_addr()?);
    admin_addrs.insert("executor".to_owned(), executor_admin.local_addr()?);
    admin_addrs.insert("router".to_owned(), router_admin.local_addr()?);
    admin_addrs.insert("healthmanager".to_owned(), hm_admin.local_addr()?);
    admin_addrs.insert("slo".to_owned(), slo_admin.local_addr()?);
    admin_addrs.insert("autoscaler".to_owned(), autoscaler_admin.local_addr()?);
    admin_addrs.insert("nozzle-syslog".to_owned(), drains_admin.local_addr()?);

    // Each role gets its own handle on one in-process hub, named for this process so two
    // micro clouds in one test process never hear each other.
    let bus = hydrant_bus::Config::inprocess(&format!("microcloud-{}", std::process::id()));
    // The executor's app logs and the router's access logs travel with the same emitter as
    // the roles' own metrics, so the platform roles always point at the agent.
    let telemetry = hydrant_emitter::TelemetryConfig {
        agent: Some(agent_url.to_owned()),
        ..hydrant_emitter::TelemetryConfig::default()
    };

    let cc = hydrant_cloudcontroller::Config {
        external_url: api_url.clone(),
        data_dir: data_dir.join("cloudcontroller").display().to_string(),
        signing_key_file: Some(key_path.display().to_string()),
        admin_user: ADMIN_USER.to_owned(),
        allow_private_drains,
        endpoints: BTreeMap::from([
            ("firehose".to_owned(), firehose_url.to_owned()),
            ("agent".to_owned(), agent_url.to_owned()),
            ("router".to_owned(), router_url.clone()),
            // The SLO alerter's status (budgets, burn rates, alerts) for `hydrant slo NAME`.
            ("slo".to_owned(), slo_url),
        ]),
        bus: bus.clone(),
        telemetry: telemetry.clone(),
        ..hydrant_cloudcontroller::Config::default()
    };
    cc.validate()?;
    let apps_domain = cc.apps_domain.clone();
    let listeners = hydrant_cloudcontroller::Listeners {
        api,
        admin: api_admin,
    };
    spawn_role(
        tasks,
        "cloudcontroller",
        hydrant_cloudcontroller::run(cc, listeners, shutdown.clone()),
    );

    let executor = hydrant_executor::Config {
        data_dir: data_dir.join("executor"),
        // Instances run unisolated (warned at start and in every instance's CELL lines)
        // until `hydrant up --isolation` lands with the micro cloud's apps listening
        // beyond loopback and a bridge per test cloud.
        isolation: hydrant_executor::Isolation::None,
        bus: bus.clone(),
        telemetry: telemetry.clone(),
        ..hydrant_executor::Config::default()
    };
    executor.validate()?;
    let listeners = hydrant_executor::Listeners {
        admin: executor_admin,
    };
    spawn_role(
        tasks,
        "executor",
        hydrant_executor::run(executor, listeners, shutdown.clone()),
    );

    let hm = hydrant_healthmanager::Config {
        api_url: api_url.clone(),
        token: Some(token.to_owned()),
        bus: bus.clone(),
        telemetry: telemetry.clone(),
        ..hydrant_healthmanager::Config::default()
    };
    hm.validate()?;
    let listeners = hydrant_healthmanager::Listeners { admin: hm_admin };
    spawn_role(
        tasks,
        "healthmanager",
        hydrant_healthmanager::run(hm, listeners, shutdown.clone()),
    );

    // The SLO alerter and the autoscaler read the whole firehose with the admin token.
    let firehose = hydrant_firehose_client::ClientConfig {
        url: firehose_url.to_owned(),
        token: token.to_owned(),
        ..hydrant_firehose_client::ClientConfig::default()
    };
    let slo = hydrant_slo::Config {
        api_url: api_url.clone(),
        token: Some(token.to_owned()),
        firehose: firehose.clone(),
        data_dir: data_dir.join("slo"),
        // On one machine the API is cheap to ask: pick up a new SLO and judge it sooner.
        poll_interval_secs: 5,
        evaluate_interval_secs: 5,
        telemetry: telemetry.clone(),
        ..hydrant_slo::Config::default()
    };
    slo.validate()?;
    let listeners = hydrant_slo::Listeners { admin: slo_admin };
    spawn_role(
        tasks,
        "slo",
        hydrant_slo::run(slo, listeners, shutdown.clone()),
    );

    // App syslog drains, served by the platform: the nozzle reads the bindings from the cloud
    // controller and reports each drain's health back for `hydrant drain NAME --status`.
    let drains = hydrant_nozzle_syslog::Config {
        firehose: firehose.clone(),
        subscription_id: "app-drains".to_owned(),
        platform: Some(hydrant_nozzle_syslog::PlatformConfig {
            api_url: api_url.clone(),
            token: Some(token.to_owned()),
            // On one machine the API is cheap to ask: a new binding starts within 2 s.
            poll_interval_ms: 2_000,
            status_interval_ms: 2_000,
            allow_private: allow_private_drains,
            ..hydrant_nozzle_syslog::PlatformConfig::default()
        }),
        telemetry: telemetry.clone(),
        ..hydrant_nozzle_syslog::Config::default()
    };
    drains.validate()?;
    let listeners = hydrant_nozzle_syslog::Listeners {
        admin: drains_admin,
    };
    spawn_role(
        tasks,
        "nozzle-syslog",
        hydrant_nozzle_syslog::run(drains, listeners, shutdown.clone()),
    );

    let autoscaler = hydrant_autoscaler::Config {
        api_url: api_url.clone(),
        token: Some(token.to_owned()),
        firehose,
        rule_duration_cap_secs: autoscaler_rule_cap_secs,
        telemetry: telemetry.clone(),
        ..hydrant_autoscaler::Config::default()
    };
    autoscaler.validate()?;
    let listeners = hydrant_autoscaler::Listeners {
        admin: autoscaler_admin,
    };
    spawn_role(
        tasks,
        "autoscaler",
        hydrant_autoscaler::run(autoscaler, listeners, shutdown.clone()),
    );

    let router = hydrant_router::Config {
        bus,
        telemetry,
        ..hydrant_router::Config::default()
    };
    router.validate()?;
    let listeners = hydrant_router::Listeners {
        http: router_http,
        admin: router_admin,
    };
    spawn_role(
        tasks,
        "router",
        hydrant_router::run(router, listeners, shutdown.clone()),
    );

    Ok(Platform {
        api_url,
        router_url,
        apps_domain,
    })
}

/// Drops on branches that are not the stream path (the log cache is a side copy: losing a cache
/// entry does not lose the envelope from the firehose).
fn is_side_branch(reason: &str) -> bool {
    reason.starts_with("logcache")
}

/// One sample line of Prometheus text: `(name, labels, value)`.
pub type Sample = (String, Vec<(String, String)>, f64);

/// Every sample line of Prometheus text; comments and malformed lines are skipped.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter_map(|kv| {
                let (k, v) = kv.split_once("=\"")?;
                Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
            })
            .collect();
        out.push((name.to_owned(), labels, value));
    }
    out
}

/// A minimal HTTP/1.0 GET for loopback admin endpoints.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot reach {addr}"))?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut body = Vec::new();
    stream.take(64 * 1024 * 1024).read_to_end(&mut body).await?;
    let text = String::from_utf8_lossy(&body);
    let Some((head, rest)) = text.split_once("\r\n\r\n") else {
        anyhow::bail!("malformed HTTP response from {addr}{path}");
    };
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{addr}{path} answered {}",
        head.lines().next().unwrap_or("")
    );
    Ok(rest.to_owned())
}

pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => cli_config::home()?.join("data"),
    };
    let shutdown = CancellationToken::new();
    let ports = if args.ephemeral_ports {
        Ports::Ephemeral
    } else {
        Ports::WellKnown
    };
    let options = Options {
        self_telemetry: true,
        platform: true,
        app_log_rate_limit: args.app_log_rate_limit,
        allow_private_drains: !args.refuse_private_drains,
        autoscaler_rule_cap_secs: args.autoscaler_rule_cap_secs,
    };
    let mut cloud = MicroCloud::start(&data_dir, ports, options, shutdown.clone()).await?;

    let endpoints_path = data_dir.join("endpoints.json");
    cli_config::write_private(
        &endpoints_path,
        &serde_json::to_vec_pretty(&cloud.endpoints)?,
    )?;
    let cli_path = cli_config::save(&CliConfig {
        firehose: cloud.firehose_url.clone(),
        agent: cloud.agent_url.clone(),
        token: cloud.token.clone(),
        api: cloud.api_url.clone(),
        router: cloud.router_url.clone(),
        user: Some(ADMIN_USER.to_owned()),
    })?;

    let e = &cloud.endpoints;
    println!("Hydrant micro cloud is up.");
    println!("  agent (v2 gRPC ingress)   {}", e.agent);
    println!("  doppler (gRPC)            {}", e.doppler);
    println!("  firehose                  {}", e.firehose_stream);
    println!("  app stream                {}", e.app_stream);
    println!("  recent logs               {}", e.recent);
    if let (Some(api), Some(router)) = (&e.api, &e.router) {
        println!("  cloud controller API      {api}");
        println!(
            "  router                    {router}  (apps at http://NAME.{}:{})",
            e.apps_domain.as_deref().unwrap_or("apps.localhost"),
            router.rsplit(':').next().unwrap_or("80")
        );
    }
    for (role, url) in &e.admin {
        println!("  {role:<10} admin          {url}/metrics  {url}/healthz");
    }
    println!("  endpoints + admin token   {}", endpoints_path.display());
    println!("  CLI config                {}", cli_path.display());
    println!();
    if args.demo {
        if let (Some(api), Some(router), Some(domain)) = (&e.api, &e.router, &e.apps_domain) {
            println!("Pushing the demo app...");
            crate::demo::push(api, &cloud.token, &data_dir)
                .await
                .context("the demo app could not be pushed")?;
            tokio::spawn(crate::demo::drive_traffic(
                router.clone(),
                domain.clone(),
                shutdown.clone(),
            ));
            let port = router.rsplit(':').next().unwrap_or("80");
            println!(
                "The demo app is up with light traffic: curl -H 'Host: demo.{domain}' {router}/   \
                 hydrant logs demo   hydrant app demo   (it also answers on http://demo.{domain}:{port})"
            );
        }
    } else {
        println!(
            "Try: hydrant push NAME -p DIR   or   hydrant emit my-app --message hello   then   \
             hydrant logs my-app --recent"
        );
    }
    println!("Press Ctrl-C to stop.");

    let ctrl_c = shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            ctrl_c.cancel();
        }
    });
    #[cfg(unix)]
    {
        let term = shutdown.clone();
        if let Ok(mut sig) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::spawn(async move {
                sig.recv().await;
                term.cancel();
            });
        }
    }

    let failed = cloud.supervise(&shutdown).await;
    shutdown.cancel();
    eprintln!("stopping...");
    cloud.stopped().await;
    match failed {
        Some((role, Err(e))) => {
            eprintln!("error: the {role} stopped: {e:#}");
            Ok(ExitCode::FAILURE)
        }
        Some((role, Ok(()))) => {
            eprintln!("error: the {role} stopped unexpectedly");
            Ok(ExitCode::FAILURE)
        }
        None => {
            eprintln!("stopped.");
            Ok(ExitCode::SUCCESS)
        }
    }
}
