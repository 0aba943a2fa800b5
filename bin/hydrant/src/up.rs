//! `hydrant up`: the micro cloud. Every role that exists runs in this one process, on loopback,
//! wired the way separate hosts would be (real gRPC, WebSocket and HTTP sockets between roles).
//! The roles, their ports and their micro-cloud configs are one table in `hydrant-microcloud`;
//! this file turns its flags into [`Options`] and reports where everything listens.
//!
//! It writes `DATA_DIR/endpoints.json` (every endpoint and the admin token) and the CLI config,
//! so `hydrant logs` and friends work with no flags. Ctrl-C stops every role cleanly.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
pub use hydrant_microcloud::{ADMIN_USER, MicroCloud, Options, Ports};
use serde::Serialize;
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
    /// Lifetime of the log tokens the cloud controller hands out (`log_token_ttl_secs`,
    /// default 600); tests shorten it to watch long streams renew theirs.
    #[arg(long, hide = true)]
    log_token_ttl_secs: Option<i64>,
    /// How app instances and staging's install steps are isolated: `container` (each in its
    /// own runc container as uid 2000 with kernel limits and its own network; needs root,
    /// runc, iproute2 and nftables)
    /// or `none` (as your own user beside the platform's keys; warned at start and in every
    /// instance's logs). With `--ephemeral-ports` the micro cloud takes its own bridges and
    /// subnets (from `10.253.0.0/16`), so several run side by side.
    #[arg(long, value_parser = ["container", "none"], default_value = "container")]
    isolation: String,
    /// Executor cells to run (zones `z1` … `zN`): watch placement spread an app, then take a
    /// cell away with `hydrant debug kill-cell` or `hydrant drain-cell` (`hydrant cells`).
    #[arg(long, default_value_t = 1)]
    cells: u32,
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
    /// A token with the admin and firehose scopes; it expires (`token_expires_at`).
    pub token: String,
    /// When `token` expires, UNIX seconds.
    pub token_expires_at: i64,
    /// Renews `token` at the cloud controller (`grant_type=refresh_token`), when it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
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
    /// The container networks' bridges and subnets, when this micro cloud has its own
    /// (`--ephemeral-ports` with containers); absent: the defaults, or no containers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub networks: Option<EndpointNetworks>,
    /// The internal CA and a client certificate a local tool may use on the pipeline's
    /// mutual-TLS ports (absent when they run plaintext).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<EndpointTls>,
    /// The micro cloud's OSBAPI service broker (`url`, `username`, `password`), registered with
    /// the cloud controller; any other OSB client may use it too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_broker: Option<crate::services_cli::BrokerEndpoint>,
}

/// `endpoints.json`'s `tls`: the trust bundle and a client certificate for local tools.
///
/// The `nozzle` leaf may send to the agent; reading doppler egress or the log cache takes the
/// `trafficcontroller` leaf in the same directory. Servers are verified by identity name
/// (`agent`, `doppler`), not by address: set the TLS server name accordingly.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointTls {
    /// The certificate directory (every identity's leaf, `ca.pem`).
    pub dir: PathBuf,
    /// The identity of the client certificate below.
    pub identity: String,
    /// `ca_file`, `cert_file`, `key_file`.
    #[serde(flatten)]
    pub files: hydrant_tls::TlsFiles,
}

/// `endpoints.json`'s `networks`: where this micro cloud's containers live.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointNetworks {
    /// The executor's bridge (its veths are `<bridge>-<6 hex>`).
    pub executor_bridge: String,
    /// The executor's subnet.
    pub executor_subnet: String,
    /// Staging's bridge.
    pub staging_bridge: String,
    /// Staging's subnet.
    pub staging_subnet: String,
    /// The executor's cgroup parent (instances are `<parent>/<guid>`).
    pub executor_cgroup_parent: String,
}

impl Endpoints {
    /// Where everything of `cloud` listens.
    fn of(cloud: &MicroCloud, data_dir: PathBuf) -> Self {
        let firehose = &cloud.firehose_url;
        let ws = firehose.replacen("http://", "ws://", 1);
        Self {
            agent: cloud.agent_url.clone(),
            doppler: cloud.doppler_url.clone(),
            firehose: firehose.clone(),
            firehose_stream: format!("{ws}/firehose/{{subscription_id}}"),
            app_stream: format!("{ws}/apps/{{source_id}}/stream"),
            recent: format!("{firehose}/api/v1/read/{{source_id}}"),
            admin: cloud
                .admin
                .iter()
                .map(|(k, v)| (k.clone(), format!("http://{v}")))
                .collect(),
            token: cloud.token.clone(),
            token_expires_at: hydrant_auth::peek_claims(&cloud.token).map_or(0, |c| c.exp),
            refresh_token: cloud.refresh_token.clone(),
            api: cloud.api_url.clone(),
            router: cloud.router_url.clone(),
            apps_domain: cloud.apps_domain.clone(),
            data_dir,
            networks: cloud.networks.as_ref().map(|n| EndpointNetworks {
                executor_bridge: n.executor_bridge.clone(),
                executor_subnet: n.executor_subnet.clone(),
                staging_bridge: n.staging_bridge.clone(),
                staging_subnet: n.staging_subnet.clone(),
                executor_cgroup_parent: n.executor_cgroup_parent.clone(),
            }),
            tls: cloud.certs.as_ref().map(|dir| EndpointTls {
                dir: dir.clone(),
                identity: hydrant_tls::Identity::Nozzle.name().to_owned(),
                files: hydrant_tls::TlsFiles::in_dir(dir, hydrant_tls::Identity::Nozzle),
            }),
            service_broker: cloud
                .service_broker
                .as_ref()
                .map(crate::services_cli::BrokerEndpoint::from),
        }
    }
}

pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => cli_config::home()?.join("data"),
    };
    let shutdown = CancellationToken::new();
    // Listened for before any role starts: a SIGTERM or Ctrl-C while the micro cloud is still
    // coming up (an init system, or whoever saw endpoints.json appear) is then a clean stop
    // rather than the default action killing the process with its containers left running.
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
    let ports = if args.ephemeral_ports {
        Ports::Ephemeral
    } else {
        Ports::WellKnown
    };
    let options = Options {
        data_dir: Some(data_dir.clone()),
        ports,
        self_telemetry: true,
        platform: true,
        app_log_rate_limit: args.app_log_rate_limit,
        fair_share: true,
        allow_private_drains: !args.refuse_private_drains,
        autoscaler_rule_cap_secs: args.autoscaler_rule_cap_secs,
        log_token_ttl_secs: args.log_token_ttl_secs,
        containers: args.isolation == "container",
        edge_reconnect_ms: None,
        // Every pipeline hop runs mutual TLS, with certificates made at first start.
        tls: true,
        replay_ring: true,
        // One edge: a subscription's copies are split from its one stream.
        shard_across_edges: false,
        cells: args.cells,
    };
    if options.containers {
        // Asked before any role starts, so a host that cannot isolate apps never sees the
        // platform come up (and an `endpoints.json` written) only to fail a moment later.
        hydrant_container::Containers::check_host(&hydrant_container::Config::default())?;
    }
    if !options.containers {
        eprintln!(
            "WARNING: apps run WITHOUT isolation, as your own user beside the platform's keys \
             (hydrant up --isolation none); --isolation container runs each in its own container"
        );
    }
    let mut cloud = MicroCloud::start(options, shutdown.clone()).await?;
    if let (Some(api), Some(broker)) = (&cloud.api_url, &cloud.service_broker) {
        // Registered (or updated: its password is new at each start) before endpoints.json
        // exists, so whoever waits for that file finds the marketplace ready.
        // A stop asked for meanwhile ends the wait: the roles are going, so it would only retry.
        tokio::select! {
            () = crate::services_cli::register_micro_broker(api, &cloud.token, broker) => {}
            () = shutdown.cancelled() => {}
        }
    }
    let endpoints = Endpoints::of(&cloud, data_dir.clone());

    let endpoints_path = data_dir.join("endpoints.json");
    cli_config::write_private(&endpoints_path, &serde_json::to_vec_pretty(&endpoints)?)?;
    let cli_path = cli_config::save(&CliConfig {
        firehose: cloud.firehose_url.clone(),
        agent: cloud.agent_url.clone(),
        token: cloud.token.clone(),
        refresh_token: cloud.refresh_token.clone(),
        api: cloud.api_url.clone(),
        router: cloud.router_url.clone(),
        user: Some(ADMIN_USER.to_owned()),
        agent_tls: endpoints.tls.as_ref().map(|t| t.files.clone()),
    })?;
    // A fresh micro cloud has new org and space guids: push goes to its default space.
    crate::orgs_cli::forget_target();

    let e = &endpoints;
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
    if let Some(b) = &e.service_broker {
        println!(
            "  service broker (OSBAPI)   {}  (`hydrant marketplace`)",
            b.url
        );
    }
    if let Some(n) = &e.networks {
        println!(
            "  container networks        {} {} (apps), {} {} (staging)",
            n.executor_bridge, n.executor_subnet, n.staging_bridge, n.staging_subnet
        );
    }
    for (role, url) in &e.admin {
        println!("  {role:<10} admin          {url}/metrics  {url}/healthz");
    }
    println!("  endpoints + admin token   {}", endpoints_path.display());
    // Written once, at the data directory's first start, for logins from elsewhere.
    let password = data_dir.join("cloudcontroller").join("admin-password");
    if password.exists() {
        println!(
            "  admin password (0600)     {}  (hydrant login -u {ADMIN_USER}; delete it once kept elsewhere)",
            password.display()
        );
    }
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

    let failed = cloud.supervise(&shutdown).await;
    shutdown.cancel();
    eprintln!("stopping...");
    cloud.stopped().await;
    match failed {
        Some((role, Err(e))) => {
            eprintln!("error: the {role} stopped: {e}");
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
