//! `hydrant run ROLE --config FILE`: one role alone, as it runs on its own host.
//!
//! The config file is TOML with exactly the fields of the role's `Config` (unknown fields are
//! errors, so a typo is caught at start-up). Listen addresses come from the config.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
}

fn load<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not a valid config", path.display()))
}

async fn bind(addr: &str, field: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (config field `{field}`); pick a free address")
    })
}

fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
            match term {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        t.cancel();
    });
    token
}

pub async fn run_from_file(role: Role, path: &Path) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_on_signal();
    match role {
        Role::Agent => {
            let config: hydrant_agent::Config = load(path)?;
            config.validate()?;
            let listeners = hydrant_agent::Listeners {
                ingress: bind(&config.listen, "listen").await?,
                admin: bind(&config.admin_listen, "admin_listen").await?,
            };
            eprintln!(
                "agent: v2 ingress on {}, admin on {}",
                config.listen, config.admin_listen
            );
            hydrant_agent::run(config, listeners, shutdown).await?;
        }
        Role::Doppler => {
            let config: hydrant_doppler::Config = load(path)?;
            config.validate()?;
            let listeners = hydrant_doppler::Listeners {
                grpc: bind(&config.listen, "listen").await?,
                admin: bind(&config.admin_listen, "admin_listen").await?,
            };
            eprintln!(
                "doppler: gRPC on {}, admin on {}",
                config.listen, config.admin_listen
            );
            hydrant_doppler::run(config, listeners, shutdown).await?;
        }
        Role::Trafficcontroller => {
            let config: hydrant_firehose::Config = load(path)?;
            config.validate()?;
            let listeners = hydrant_firehose::Listeners {
                http: bind(&config.listen, "listen").await?,
                admin: bind(&config.admin_listen, "admin_listen").await?,
            };
            eprintln!(
                "trafficcontroller: firehose on {}, admin on {}",
                config.listen, config.admin_listen
            );
            hydrant_firehose::run(config, listeners, shutdown).await?;
        }
        Role::Router => {
            let config: hydrant_router::Config = load(path)?;
            config.validate()?;
            let listeners = hydrant_router::Listeners {
                http: bind(&config.listen, "listen").await?,
                admin: bind(&config.admin_listen, "admin_listen").await?,
            };
            eprintln!(
                "router: HTTP on {}, admin on {}",
                config.listen, config.admin_listen
            );
            hydrant_router::run(config, listeners, shutdown).await?;
        }
        Role::Cloudcontroller => {
            let config: hydrant_cloudcontroller::Config = load(path)?;
            config.validate()?;
            let listeners = hydrant_cloudcontroller::Listeners {
                api: bind(&config.listen, "listen").await?,
                admin: bind(&config.admin_listen, "admin_listen").await?,
            };
            eprintln!(
                "cloudcontroller: API on {}, admin on {}",
                config.listen, config.admin_listen
            );
            hydrant_cloudcontroller::run(config, listeners, shutdown).await?;
        }
        Role::Executor => {
            let config: hydrant_executor::Config = load(path)?;
            config.validate()?;
            let listeners = hydrant_executor::Listeners {
                admin: bind(&config.admin_listen, "admin_listen").await?,
            };
            eprintln!(
                "executor {}: admin on {}",
                config.executor_id, config.admin_listen
            );
            hydrant_executor::run(config, listeners, shutdown).await?;
        }
        Role::Healthmanager => {
            let config: hydrant_healthmanager::Config = load(path)?;
            config.validate()?;
            let listeners = hydrant_healthmanager::Listeners {
                admin: bind(&config.admin_listen, "admin_listen").await?,
            };
            eprintln!("healthmanager: admin on {}", config.admin_listen);
            hydrant_healthmanager::run(config, listeners, shutdown).await?;
        }
        Role::Slo => {
            let config: hydrant_slo::Config = load(path)?;
            config.validate()?;
            let listeners = hydrant_slo::Listeners {
                admin: bind(&config.admin_listen, "admin_listen").await?,
            };
            eprintln!("slo: status and admin on {}", config.admin_listen);
            hydrant_slo::run(config, listeners, shutdown).await?;
        }
        Role::Autoscaler => {
            let config: hydrant_autoscaler::Config = load(path)?;
            config.validate()?;
            let listeners = hydrant_autoscaler::Listeners {
                admin: bind(&config.admin_listen, "admin_listen").await?,
            };
            eprintln!("autoscaler: admin on {}", config.admin_listen);
            hydrant_autoscaler::run(config, listeners, shutdown).await?;
        }
        Role::NozzleSyslog => {
            let config: hydrant_nozzle_syslog::Config = load(path)?;
            config.validate()?;
            let listeners = hydrant_nozzle_syslog::Listeners {
                admin: bind(&config.admin_listen, "admin_listen").await?,
            };
            eprintln!(
                "syslog nozzle: {} drain(s), subscription {:?}, admin on {}",
                config.drains.len(),
                config.subscription_id,
                config.admin_listen
            );
            hydrant_nozzle_syslog::run(config, listeners, shutdown).await?;
        }
        Role::NozzleOtlp => {
            let config: hydrant_nozzle_otlp::Config = load(path)?;
            config.validate()?;
            let listeners = hydrant_nozzle_otlp::Listeners {
                admin: bind(&config.admin_listen, "admin_listen").await?,
            };
            eprintln!(
                "otlp nozzle: exporting to {}, subscription {:?}, admin on {}",
                hydrant_nozzle_core::mask_url(&config.endpoint),
                config.subscription_id,
                config.admin_listen
            );
            hydrant_nozzle_otlp::run(config, listeners, shutdown).await?;
        }
        Role::NozzleDatadog => {
            let config: hydrant_nozzle_datadog::Config = load(path)?;
            config.validate()?;
            let listeners = hydrant_nozzle_datadog::Listeners {
                admin: bind(&config.admin_listen, "admin_listen").await?,
            };
            eprintln!(
                "datadog nozzle: sending to {}, subscription {:?}, admin on {}",
                hydrant_nozzle_core::mask_url(&config.api_url),
                config.subscription_id,
                config.admin_listen
            );
            hydrant_nozzle_datadog::run(config, listeners, shutdown).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
