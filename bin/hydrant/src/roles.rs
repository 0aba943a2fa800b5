//! `hydrant run ROLE --config FILE`: one role alone, as it runs on its own host.
//!
//! One generic function over [`hydrant_runtime::Role`] does the whole job (read the TOML file,
//! refuse unknown fields, validate, bind the role's listeners naming the field of an address
//! that is taken, print where it listens, run until SIGINT/SIGTERM); the table below only maps
//! each name to its role type. Adding a role is one row here.

use std::path::Path;
use std::process::ExitCode;

use hydrant_runtime::run_from_file as run_role;

/// The roles `hydrant run` can start.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Role {
    /// The per-node agent: v2 ingress, rate limits, batching to dopplers.
    Agent,
    /// A doppler: rings, v2 egress with selectors and shards, the log cache.
    Doppler,
    /// The traffic controller and firehose edge (WebSocket, recent logs).
    Trafficcontroller,
    /// The HTTP router: a reverse proxy by Host, routes from the bus and the config file.
    Router,
    /// The cloud controller: the REST API, desired state, staging and placement.
    Cloudcontroller,
    /// An executor (the DEA): runs app instances.
    Executor,
    /// The health manager: restarts crashed instances on Cloud Foundry's back-off schedule.
    Healthmanager,
    /// The SLO alerter: error budgets and multi-window burn-rate alerts from the firehose.
    Slo,
    /// The autoscaler: app-autoscaler policies evaluated on the live firehose.
    Autoscaler,
    /// The syslog nozzle: firehose → RFC 5424 syslog drains.
    NozzleSyslog,
    /// The OTLP nozzle: firehose → OpenTelemetry logs and metrics over gRPC.
    NozzleOtlp,
    /// The Datadog nozzle: firehose → Datadog's metrics API v2 (and logs intake).
    NozzleDatadog,
    /// The service broker (OSBAPI): MySQL, PostgreSQL, Redis and RabbitMQ on nodes it runs.
    Broker,
}

/// Runs role `R` from `path` until a signal stops it.
async fn run<R: hydrant_runtime::Role>(path: &Path) -> anyhow::Result<()> {
    run_role::<R>(path, |line| eprintln!("{line}")).await?;
    Ok(())
}

/// The table: each name `hydrant run` takes, and the role type that implements it.
pub async fn run_from_file(role: Role, path: &Path) -> anyhow::Result<ExitCode> {
    match role {
        Role::Agent => run::<hydrant_agent::Agent>(path).await,
        Role::Doppler => run::<hydrant_doppler::Doppler>(path).await,
        Role::Trafficcontroller => run::<hydrant_firehose::TrafficController>(path).await,
        Role::Router => run::<hydrant_router::Router>(path).await,
        Role::Cloudcontroller => run::<hydrant_cloudcontroller::CloudController>(path).await,
        Role::Executor => run::<hydrant_executor::Executor>(path).await,
        Role::Healthmanager => run::<hydrant_healthmanager::HealthManager>(path).await,
        Role::Slo => run::<hydrant_slo::Slo>(path).await,
        Role::Autoscaler => run::<hydrant_autoscaler::AutoscalerRole>(path).await,
        Role::NozzleSyslog => run::<hydrant_nozzle_syslog::SyslogNozzle>(path).await,
        Role::NozzleOtlp => run::<hydrant_nozzle_otlp::OtlpNozzle>(path).await,
        Role::NozzleDatadog => run::<hydrant_nozzle_datadog::DatadogNozzle>(path).await,
        Role::Broker => run::<hydrant_broker::Broker>(path).await,
    }?;
    Ok(ExitCode::SUCCESS)
}

/// Every role's name, as the runtime knows it, for the table test below.
#[cfg(test)]
fn names() -> [&'static str; 13] {
    use hydrant_runtime::Role as _;
    [
        hydrant_agent::Agent::NAME,
        hydrant_doppler::Doppler::NAME,
        hydrant_firehose::TrafficController::NAME,
        hydrant_router::Router::NAME,
        hydrant_cloudcontroller::CloudController::NAME,
        hydrant_executor::Executor::NAME,
        hydrant_healthmanager::HealthManager::NAME,
        hydrant_slo::Slo::NAME,
        hydrant_autoscaler::AutoscalerRole::NAME,
        hydrant_nozzle_syslog::SyslogNozzle::NAME,
        hydrant_nozzle_otlp::OtlpNozzle::NAME,
        hydrant_nozzle_datadog::DatadogNozzle::NAME,
        hydrant_broker::Broker::NAME,
    ]
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum as _;

    /// `hydrant run NAME` takes exactly the names the roles give themselves, in table order.
    #[test]
    fn the_cli_names_are_the_role_names() {
        let cli: Vec<String> = super::Role::value_variants()
            .iter()
            .filter_map(|r| r.to_possible_value())
            .map(|v| v.get_name().to_owned())
            .collect();
        assert_eq!(cli, super::names());
    }
}
