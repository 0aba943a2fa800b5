//! The `hydrant` binary: a thin clap dispatcher over the role libraries and the CLI commands.
//!
//! `hydrant up` runs every role in one process (the micro cloud); `hydrant run ROLE --config FILE`
//! runs one role alone; the rest are the developer-facing commands (`logs`, `emit`) and the
//! benchmark harness (`bench pipeline`). No role logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod apps;
mod autoscale_cli;
mod bench;
mod bench_bus;
mod bench_consumer;
mod bench_containers;
mod cells_cli;
mod certs;
mod cli_config;
mod dashboard_cli;
mod demo;
mod demo_app;
mod drain_cli;
mod emit;
mod exit;
mod logs;
mod orgs_cli;
mod quotas_cli;
mod roles;
mod routes_cli;
mod security_groups;
mod services_cli;
mod session;
mod slo_cli;
mod static_server;
mod top;
mod up;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Hydrant: a platform-as-a-service with observability at its centre.
#[derive(Debug, Parser)]
#[command(name = "hydrant", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the micro cloud: every role in one process, on loopback.
    Up(up::UpArgs),
    /// Run one role alone from a TOML config file.
    Run {
        /// The role to run.
        role: roles::Role,
        /// The role's TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Push an app: upload what changed, stage it, start it.
    Push(apps::PushArgs),
    /// List apps.
    Apps(apps::ListArgs),
    /// One app: its instances with state, cpu, memory and uptime.
    App(apps::AppListArgs),
    /// Change an app's instance count, memory or disk.
    Scale(apps::ScaleArgs),
    /// Start an app.
    Start(apps::NameArgs),
    /// Stop an app.
    Stop(apps::NameArgs),
    /// Restart an app.
    Restart(apps::NameArgs),
    /// Delete an app.
    Delete(apps::DeleteArgs),
    /// An app's audit events (starts, stops, scales, crashes).
    Events(apps::AppListArgs),
    /// List routes.
    Routes(apps::ListArgs),
    /// Add a route to an app.
    MapRoute(apps::RouteArgs),
    /// Remove a route from an app.
    UnmapRoute(apps::RouteArgs),
    /// Log in to a cloud controller.
    Login(session::LoginArgs),
    /// Show or set the cloud controller, org (-o) and space (-s) the CLI works in.
    Target(session::TargetArgs),
    /// Create a user (admin).
    CreateUser(orgs_cli::CreateUserArgs),
    /// Create an org (admin).
    CreateOrg(orgs_cli::CreateOrgArgs),
    /// Create a space in an org (admin or OrgManager).
    CreateSpace(orgs_cli::CreateSpaceArgs),
    /// Delete an org with its spaces, apps, routes and service instances (admin or OrgManager).
    DeleteOrg(orgs_cli::DeleteOrgArgs),
    /// Delete a space with its apps, routes and service instances (admin or OrgManager).
    DeleteSpace(orgs_cli::DeleteSpaceArgs),
    /// Give a user an org role: USERNAME ORG OrgManager|OrgAuditor.
    SetOrgRole(orgs_cli::OrgRoleArgs),
    /// Take an org role from a user: USERNAME ORG OrgManager|OrgAuditor.
    UnsetOrgRole(orgs_cli::OrgRoleArgs),
    /// Give a user a space role: USERNAME ORG SPACE SpaceDeveloper|SpaceAuditor|SpaceManager.
    SetSpaceRole(orgs_cli::SpaceRoleArgs),
    /// Take a space role from a user: USERNAME ORG SPACE ROLE.
    UnsetSpaceRole(orgs_cli::SpaceRoleArgs),
    /// List the orgs you can see.
    Orgs(orgs_cli::OrgsArgs),
    /// List the spaces you can see (in the targeted org, or -o ORG).
    Spaces(orgs_cli::SpacesArgs),
    /// Show an app's environment variables (space developers).
    Env(orgs_cli::EnvArgs),
    /// Set an app's environment variable: APP NAME VALUE.
    SetEnv(orgs_cli::SetEnvArgs),
    /// Remove an app's environment variable: APP NAME.
    UnsetEnv(orgs_cli::UnsetEnvArgs),
    /// List org and space quotas.
    Quotas(quotas_cli::QuotasArgs),
    /// Create an org quota (admin): NAME -m TOTAL_MEMORY -i INSTANCES -r ROUTES -s SERVICE_INSTANCES.
    CreateQuota(quotas_cli::CreateQuotaArgs),
    /// Assign an org quota to an org (admin): ORG QUOTA.
    SetQuota(quotas_cli::SetQuotaArgs),
    /// Create a space quota in an org (admin or OrgManager).
    CreateSpaceQuota(quotas_cli::CreateSpaceQuotaArgs),
    /// Assign a space quota to a space (admin or OrgManager): SPACE QUOTA.
    SetSpaceQuota(quotas_cli::SetSpaceQuotaArgs),
    /// List shared domains and your orgs' private domains.
    Domains(routes_cli::DomainsArgs),
    /// Add a domain owned by an org (admin or OrgManager): ORG DOMAIN.
    CreatePrivateDomain(routes_cli::PrivateDomainArgs),
    /// Add a domain every org may use (admin): DOMAIN.
    CreateSharedDomain(routes_cli::SharedDomainArgs),
    /// Claim a route for a space: SPACE DOMAIN --hostname H [--path P].
    CreateRoute(routes_cli::CreateRouteArgs),
    /// Delete a route your space owns (and unmap it): DOMAIN --hostname H [--path P].
    DeleteRoute(routes_cli::DeleteRouteArgs),
    /// Bind a syslog drain to an app, or show its drains' health with --status.
    Drain(drain_cli::DrainArgs),
    /// List the executor cells: zone, state (healthy/evacuating/lost), capacity and use (admin).
    Cells(cells_cli::CellsArgs),
    /// Evacuate a cell: its instances move elsewhere, each kept serving until its replacement
    /// runs; the cell then takes no new work (admin).
    DrainCell(cells_cli::DrainCellArgs),
    /// Debugging aids for the micro cloud (`hydrant debug kill-cell ID`).
    Debug(cells_cli::DebugArgs),
    /// List syslog drains.
    Drains(drain_cli::DrainsArgs),
    /// Unbind a syslog drain from an app.
    Undrain(drain_cli::UndrainArgs),
    /// Set, show or remove an app's autoscaling policy.
    Autoscale(autoscale_cli::AutoscaleArgs),
    /// An app's SLOs: set them, or show budget, burn rates and alerts.
    Slo(slo_cli::SloArgs),
    /// Print the web dashboard's URL (with your token in its fragment); --open opens it.
    Dashboard(dashboard_cli::DashboardArgs),
    /// Print a source's logs: recent lines, then follow the live stream.
    Logs(logs::LogsArgs),
    /// The live console: apps, an app's detail, the pipeline, nodes and events (cf top, k9s keys).
    Top(top::TopArgs),
    /// Send log lines into the pipeline by hand.
    Emit(emit::EmitArgs),
    /// The demo app: an HTTP server with endpoints that make errors, latency, logs and crashes.
    DemoApp(demo_app::DemoAppArgs),
    /// Serve a directory over HTTP (what the static buildpack's droplets run).
    #[command(hide = true)]
    StaticServer(static_server::StaticServerArgs),
    /// Run a nozzle (a firehose consumer that forwards to an outside system) from a TOML file.
    Nozzle {
        /// Which nozzle.
        kind: NozzleKind,
        /// The nozzle's TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Register a service broker and fetch its catalog (admin).
    #[command(alias = "csb")]
    CreateServiceBroker(services_cli::BrokerArgs),
    /// List service brokers (admin).
    ServiceBrokers(services_cli::JsonArgs),
    /// Change a broker's credentials or URL and fetch its catalog again (admin).
    UpdateServiceBroker(services_cli::BrokerArgs),
    /// Remove a service broker that has no instances (admin).
    DeleteServiceBroker(services_cli::DeleteBrokerArgs),
    /// Make an offering's plans (or one plan) available to every user (admin).
    EnableServiceAccess(services_cli::AccessArgs),
    /// Hide an offering's plans (or one plan) from users (admin).
    DisableServiceAccess(services_cli::AccessArgs),
    /// The service offerings and plans you can create instances of.
    #[command(alias = "m")]
    Marketplace(services_cli::MarketplaceArgs),
    /// Create a service instance from a broker's plan.
    #[command(alias = "cs")]
    CreateService(services_cli::CreateServiceArgs),
    /// Create a service instance from credentials you give (and an optional syslog drain).
    #[command(alias = "cups")]
    CreateUserProvidedService(services_cli::UpsiArgs),
    /// Change a user-provided service's credentials, drain or tags.
    #[command(alias = "uups")]
    UpdateUserProvidedService(services_cli::UpsiArgs),
    /// List service instances.
    #[command(alias = "s")]
    Services(services_cli::JsonArgs),
    /// One service instance: plan, bound apps, last operation.
    Service(services_cli::ServiceArgs),
    /// Change a service instance's plan, parameters or tags.
    UpdateService(services_cli::UpdateServiceArgs),
    /// Delete a service instance.
    #[command(alias = "ds")]
    DeleteService(services_cli::DeleteServiceArgs),
    /// Bind a service instance to an app (VCAP_SERVICES at its next restart, or --restart).
    #[command(alias = "bs")]
    BindService(services_cli::BindArgs),
    /// Unbind a service instance from an app.
    #[command(alias = "us")]
    UnbindService(services_cli::UnbindArgs),
    /// Create a service key: credentials for use outside an app.
    #[command(alias = "csk")]
    CreateServiceKey(services_cli::CreateKeyArgs),
    /// Show a service key's credentials.
    ServiceKey(services_cli::KeyArgs),
    /// List a service instance's keys.
    #[command(alias = "sk")]
    ServiceKeys(services_cli::KeysArgs),
    /// Delete a service key.
    #[command(alias = "dsk")]
    DeleteServiceKey(services_cli::KeyArgs),
    /// The internal CA and certificates: init, issue, show, rotate, nats-config.
    Certs(certs::CertsArgs),
    /// The egress rules an executor's containers get (application security groups).
    SecurityGroups(security_groups::SecurityGroupsArgs),
    /// Measure the pipeline end to end over real sockets.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
}

/// The nozzles `hydrant nozzle` can run.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum NozzleKind {
    /// RFC 5424 syslog drains (`syslog://`), in Cloud Foundry's drain format.
    Syslog,
    /// OpenTelemetry logs and metrics over OTLP/gRPC.
    Otlp,
    /// Datadog's metrics API v2 (and, if enabled, its logs intake).
    Datadog,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HYDRANT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,hydrant=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        // Commands that talk to a Hydrant as the logged-in user start with a live token.
        if !matches!(
            cli.command,
            Command::Up(_)
                | Command::Run { .. }
                | Command::Nozzle { .. }
                | Command::Login(_)
                | Command::Target(_)
                | Command::Bench { .. }
                | Command::DemoApp(_)
                | Command::StaticServer(_)
        ) {
            cli_config::refresh_if_needed().await;
        }
        match cli.command {
            Command::Up(args) => up::run(args).await,
            Command::Run { role, config } => roles::run_from_file(role, &config).await,
            Command::Nozzle { kind, config } => {
                let role = match kind {
                    NozzleKind::Syslog => roles::Role::NozzleSyslog,
                    NozzleKind::Otlp => roles::Role::NozzleOtlp,
                    NozzleKind::Datadog => roles::Role::NozzleDatadog,
                };
                roles::run_from_file(role, &config).await
            }
            Command::Logs(args) => logs::run(args).await,
            Command::Top(args) => top::run(args).await,
            Command::Push(args) => apps::push(args).await,
            Command::Apps(args) => apps::apps(args).await,
            Command::App(args) => apps::app(args).await,
            Command::Scale(args) => apps::scale(args).await,
            Command::Start(args) => apps::lifecycle(apps::Lifecycle::Start, args).await,
            Command::Stop(args) => apps::lifecycle(apps::Lifecycle::Stop, args).await,
            Command::Restart(args) => apps::lifecycle(apps::Lifecycle::Restart, args).await,
            Command::Delete(args) => apps::delete(args).await,
            Command::Events(args) => apps::events(args).await,
            Command::Routes(args) => apps::routes(args).await,
            Command::MapRoute(args) => apps::map_route(args, true).await,
            Command::UnmapRoute(args) => apps::map_route(args, false).await,
            Command::Login(args) => session::login(args).await,
            Command::Slo(args) => slo_cli::run(args).await,
            Command::Dashboard(args) => dashboard_cli::run(&args),
            Command::Drain(args) => drain_cli::drain(args).await,
            Command::Cells(args) => cells_cli::cells(args).await,
            Command::DrainCell(args) => cells_cli::drain_cell(args).await,
            Command::Debug(args) => cells_cli::debug(args).await,
            Command::Drains(args) => drain_cli::drains(args).await,
            Command::Undrain(args) => drain_cli::undrain(args).await,
            Command::Autoscale(args) => autoscale_cli::run(args).await,
            Command::Target(args) => session::target(args).await,
            Command::CreateUser(args) => orgs_cli::create_user(args).await,
            Command::CreateOrg(args) => orgs_cli::create_org(args).await,
            Command::CreateSpace(args) => orgs_cli::create_space(args).await,
            Command::DeleteOrg(args) => orgs_cli::delete_org(args).await,
            Command::DeleteSpace(args) => orgs_cli::delete_space(args).await,
            Command::SetOrgRole(args) => orgs_cli::org_role(args, true).await,
            Command::UnsetOrgRole(args) => orgs_cli::org_role(args, false).await,
            Command::SetSpaceRole(args) => orgs_cli::space_role(args, true).await,
            Command::UnsetSpaceRole(args) => orgs_cli::space_role(args, false).await,
            Command::Orgs(args) => orgs_cli::orgs(args).await,
            Command::Spaces(args) => orgs_cli::spaces(args).await,
            Command::Env(args) => orgs_cli::env(args).await,
            Command::SetEnv(args) => orgs_cli::set_env(args).await,
            Command::UnsetEnv(args) => orgs_cli::unset_env(args).await,
            Command::Quotas(args) => quotas_cli::quotas(args).await,
            Command::CreateQuota(args) => quotas_cli::create_quota(args).await,
            Command::SetQuota(args) => quotas_cli::set_quota(args).await,
            Command::CreateSpaceQuota(args) => quotas_cli::create_space_quota(args).await,
            Command::SetSpaceQuota(args) => quotas_cli::set_space_quota(args).await,
            Command::Domains(args) => routes_cli::domains(args).await,
            Command::CreatePrivateDomain(args) => routes_cli::create_private_domain(args).await,
            Command::CreateSharedDomain(args) => routes_cli::create_shared_domain(args).await,
            Command::CreateRoute(args) => routes_cli::create_route(args).await,
            Command::DeleteRoute(args) => routes_cli::delete_route(args).await,
            Command::Emit(args) => emit::run(args).await,
            Command::SecurityGroups(args) => security_groups::run(&args),
            Command::CreateServiceBroker(args) => services_cli::create_broker(args).await,
            Command::ServiceBrokers(args) => services_cli::brokers(args).await,
            Command::UpdateServiceBroker(args) => services_cli::update_broker(args).await,
            Command::DeleteServiceBroker(args) => services_cli::delete_broker(args).await,
            Command::EnableServiceAccess(args) => services_cli::access(args, true).await,
            Command::DisableServiceAccess(args) => services_cli::access(args, false).await,
            Command::Marketplace(args) => services_cli::marketplace(args).await,
            Command::CreateService(args) => services_cli::create_service(args).await,
            Command::CreateUserProvidedService(args) => services_cli::upsi(args, true).await,
            Command::UpdateUserProvidedService(args) => services_cli::upsi(args, false).await,
            Command::Services(args) => services_cli::services(args).await,
            Command::Service(args) => services_cli::service(args).await,
            Command::UpdateService(args) => services_cli::update_service(args).await,
            Command::DeleteService(args) => services_cli::delete_service(args).await,
            Command::BindService(args) => services_cli::bind(args).await,
            Command::UnbindService(args) => services_cli::unbind(args).await,
            Command::CreateServiceKey(args) => services_cli::create_key(args).await,
            Command::ServiceKey(args) => services_cli::service_key(args).await,
            Command::ServiceKeys(args) => services_cli::service_keys(args).await,
            Command::DeleteServiceKey(args) => services_cli::delete_key(args).await,
            Command::Certs(args) => certs::run(args),
            Command::Bench { what } => bench::run(what).await,
            Command::DemoApp(args) => demo_app::run(args).await,
            Command::StaticServer(args) => static_server::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::code_for(&e)
        }
    }
}
