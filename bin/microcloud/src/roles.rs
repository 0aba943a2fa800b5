//! The micro cloud's rows: for each role, the ports `hydrant up` gives it and its micro-cloud
//! config, built from where the other roles listen.
//!
//! Invariant: the well-known ports and every field set here are what `hydrant up` has always
//! used (tests, `endpoints.json` readers and users rely on them); everything not set is the
//! role's documented default.

use hydrant_runtime::Role;
use hydrant_tls::Identity;

use crate::Wiring;

/// A role as the micro cloud runs it.
pub trait MicroRole: Role {
    /// Its name in `endpoints.json`'s `admin` map.
    const KEY: &'static str;
    /// A platform role: runs only when the micro cloud runs the platform.
    const PLATFORM: bool;
    /// The well-known port of each of its listeners, in [`Role::LISTENERS`] order.
    const PORTS: &'static [u16];
    /// Its config in the micro cloud.
    fn config(wiring: &Wiring) -> Self::Config;
}

impl MicroRole for hydrant_agent::Agent {
    const KEY: &'static str = "agent";
    const PLATFORM: bool = false;
    const PORTS: &'static [u16] = &[3458, 14824];

    fn config(w: &Wiring) -> hydrant_agent::Config {
        hydrant_agent::Config {
            dopplers: vec![w.url("doppler", "grpc")],
            app_log_rate_limit_bytes_per_sec: w.options.app_log_rate_limit,
            fair_share: w.options.fair_share,
            telemetry: w.pipeline_telemetry(Identity::Agent),
            tls: w.tls(Identity::Agent),
            ..hydrant_agent::Config::default()
        }
    }
}

impl MicroRole for hydrant_doppler::Doppler {
    const KEY: &'static str = "doppler";
    const PLATFORM: bool = false;
    const PORTS: &'static [u16] = &[8082, 8083];

    fn config(w: &Wiring) -> hydrant_doppler::Config {
        hydrant_doppler::Config {
            fair_share: w.options.fair_share,
            subscription_fair_share: w.options.fair_share,
            telemetry: w.pipeline_telemetry(Identity::Doppler),
            tls: w.tls(Identity::Doppler),
            replay_ring_bytes: if w.options.replay_ring {
                hydrant_doppler::Config::default().replay_ring_bytes
            } else {
                0
            },
            ..hydrant_doppler::Config::default()
        }
    }
}

impl MicroRole for hydrant_firehose::TrafficController {
    const KEY: &'static str = "firehose";
    const PLATFORM: bool = false;
    const PORTS: &'static [u16] = &[8081, 8089];

    fn config(w: &Wiring) -> hydrant_firehose::Config {
        let mut config = hydrant_firehose::Config {
            dopplers: vec![w.url("doppler", "grpc")],
            fair_share: w.options.fair_share,
            shard_across_edges: w.options.shard_across_edges,
            telemetry: w.pipeline_telemetry(Identity::TrafficController),
            upstream_tls: w.tls(Identity::TrafficController),
            ..hydrant_firehose::Config::default()
        };
        // The edge holds public keys only: the ones the micro cloud starts with, then (with a
        // cloud controller) whatever its `/token_keys` publishes, cached under the data dir so
        // a restarted edge verifies while the controller is down.
        config.token_keys = Some(w.token_keys.clone());
        if w.options.platform {
            config.token_keys_url = Some(format!("{}/token_keys", w.url("cloudcontroller", "api")));
            config.token_keys_cache = Some(
                w.data("firehose")
                    .join("token_keys.json")
                    .display()
                    .to_string(),
            );
        }
        if let Some((min, max)) = w.options.edge_reconnect_ms {
            config.reconnect_min_ms = min;
            config.reconnect_max_ms = max;
        }
        config
    }
}

/// The basic-auth user of the micro cloud's service broker.
pub(crate) const BROKER_USER: &str = "broker";

/// The domain apps' default routes live under (the cloud controller's default).
#[cfg(feature = "platform")]
pub(crate) fn apps_domain() -> String {
    hydrant_cloudcontroller::Config::default().apps_domain
}

#[cfg(not(feature = "platform"))]
pub(crate) fn apps_domain() -> String {
    String::new()
}

#[cfg(feature = "platform")]
mod platform {
    use std::collections::BTreeMap;

    use super::MicroRole;
    use crate::{ADMIN_USER, ROLES_CLIENT, Wiring};

    /// The SLO alerter, the autoscaler and the syslog nozzle read the whole firehose as
    /// [`ROLES_CLIENT`]: the stream renews its token when the edge closes it for expiry.
    fn firehose(w: &Wiring) -> hydrant_firehose_client::ClientConfig {
        hydrant_firehose_client::ClientConfig {
            url: w.url("firehose", "http"),
            api_url: w.url("cloudcontroller", "api"),
            client_id: ROLES_CLIENT.to_owned(),
            client_secret: w.roles_client_secret.clone(),
            ..hydrant_firehose_client::ClientConfig::default()
        }
    }

    /// Where a platform role reaches the cloud controller as `identity`: its internal
    /// listener over mutual TLS when the micro cloud has certificates, the public API
    /// otherwise; signed in with the roles' client credentials.
    fn api(w: &Wiring, identity: hydrant_tls::Identity) -> hydrant_runtime::ApiSettings {
        let (api_url, tls) = match (w.tls(identity), w.addr("cloudcontroller", "internal")) {
            (Some(tls), Some(addr)) => (format!("https://{addr}"), Some(tls)),
            _ => (w.url("cloudcontroller", "api"), None),
        };
        hydrant_runtime::ApiSettings {
            api_url,
            tls,
            client_id: Some(ROLES_CLIENT.to_owned()),
            client_secret: Some(w.roles_client_secret.clone()),
            ..hydrant_runtime::ApiSettings::default()
        }
    }

    impl MicroRole for hydrant_broker::Broker {
        const KEY: &'static str = "broker";
        const PLATFORM: bool = true;
        const PORTS: &'static [u16] = &[9030, 14838];

        fn config(w: &Wiring) -> hydrant_broker::Config {
            let mut config = hydrant_broker::Config {
                username: super::BROKER_USER.to_owned(),
                password: Some(w.broker_password.clone()),
                data_dir: w.data("broker"),
                // The broker has no certificate of its own yet; its service logs and gauges
                // are app-like telemetry, sent as the cell sends its apps'.
                telemetry: w.platform_telemetry(hydrant_tls::Identity::Executor),
                // `hydrant up --isolation`: service nodes in containers as apps are, or child
                // processes when apps run unisolated (no root needed).
                isolation: if w.options.containers {
                    hydrant_broker::Isolation::Container
                } else {
                    hydrant_broker::Isolation::None
                },
                ..hydrant_broker::Config::default()
            };
            // A contained app's 127.0.0.1 is its own namespace: service nodes listen on the
            // (first) cell's bridge address instead, which the host reaches as well, and which
            // a container may open only through the egress rule its binding's credentials
            // give it. Unisolated, they stay on loopback.
            if w.options.containers {
                let subnet = w.networks.as_ref().map_or_else(
                    || hydrant_executor::Config::default().network.subnet,
                    |n| n.executor_subnet.clone(),
                );
                if let Some(gateway) = gateway_of(&subnet) {
                    config.bind_address = gateway.to_string();
                }
            }
            config
        }
    }

    impl MicroRole for hydrant_cloudcontroller::CloudController {
        const KEY: &'static str = "cloudcontroller";
        const PLATFORM: bool = true;
        const PORTS: &'static [u16] = &[9022, 14831, 9023];

        fn config(w: &Wiring) -> hydrant_cloudcontroller::Config {
            let mut config = hydrant_cloudcontroller::Config {
                external_url: w.url("cloudcontroller", "api"),
                data_dir: w.data("cloudcontroller").display().to_string(),
                token_keys_dir: w.token_keys_dir.as_ref().map(|p| p.display().to_string()),
                // The platform roles: tokens by client credentials for the API and the
                // firehose, renewed before they expire.
                clients: vec![hydrant_cloudcontroller::ClientConfig {
                    id: ROLES_CLIENT.to_owned(),
                    secret: Some(w.roles_client_secret.clone()),
                    secret_file: None,
                    scopes: vec![
                        hydrant_auth::SCOPE_ADMIN.to_owned(),
                        hydrant_auth::SCOPE_API_READ.to_owned(),
                        hydrant_auth::SCOPE_API_WRITE.to_owned(),
                    ],
                    audiences: vec![
                        hydrant_auth::AUD_API.to_owned(),
                        hydrant_auth::AUD_LOGS.to_owned(),
                    ],
                }],
                admin_user: ADMIN_USER.to_owned(),
                allow_private_drains: w.options.allow_private_drains,
                // The micro cloud's own broker listens on loopback.
                services: hydrant_cloudcontroller::ServicesConfig {
                    allow_private_brokers: true,
                    ..hydrant_cloudcontroller::ServicesConfig::default()
                },
                endpoints: BTreeMap::from([
                    ("firehose".to_owned(), w.url("firehose", "http")),
                    ("agent".to_owned(), w.url("agent", "ingress")),
                    ("router".to_owned(), w.url("router", "http")),
                    // The SLO alerter's status (budgets, burn rates, alerts) for `hydrant slo`.
                    ("slo".to_owned(), w.url("slo", "admin")),
                ]),
                // `hydrant up --isolation`: staging's install steps run the way instances do.
                staging_isolation: hydrant_cloudcontroller::StagingIsolation {
                    mode: if w.options.containers {
                        hydrant_cloudcontroller::IsolationMode::Container
                    } else {
                        hydrant_cloudcontroller::IsolationMode::None
                    },
                    ..hydrant_cloudcontroller::StagingIsolation::default()
                },
                bus: w.bus.clone(),
                telemetry: w.platform_telemetry(hydrant_tls::Identity::CloudController),
                // With certificates, the roles' calls and droplet downloads go to the internal
                // listener, mutual TLS with each role's identity checked per endpoint.
                tls: w.tls(hydrant_tls::Identity::CloudController),
                internal_listen: w
                    .addr("cloudcontroller", "internal")
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                ..hydrant_cloudcontroller::Config::default()
            };
            if let Some(ttl) = w.options.log_token_ttl_secs {
                config.log_token_ttl_secs = ttl;
            }
            // A second micro cloud on this host: staging on its own bridge and subnet.
            if let Some(n) = &w.networks {
                let network = &mut config.staging_isolation.network;
                network.bridge.clone_from(&n.staging_bridge);
                network.subnet.clone_from(&n.staging_subnet);
            }
            config
        }
    }

    impl MicroRole for hydrant_executor::Executor {
        const KEY: &'static str = "executor";
        const PLATFORM: bool = true;
        const PORTS: &'static [u16] = &[14830];

        fn config(w: &Wiring) -> hydrant_executor::Config {
            let mut config = hydrant_executor::Config {
                data_dir: w.data("executor"),
                // `hydrant up --isolation`: unisolated (warned at start and in every instance's
                // CELL lines) unless asked for containers.
                isolation: if w.options.containers {
                    hydrant_executor::Isolation::Container
                } else {
                    hydrant_executor::Isolation::None
                },
                bus: w.bus.clone(),
                telemetry: w.platform_telemetry(hydrant_tls::Identity::Executor),
                // Droplets from the controller's internal listener, over mutual TLS.
                tls: w.tls(hydrant_tls::Identity::Executor),
                ..hydrant_executor::Config::default()
            };
            // The micro cloud has nothing to evacuate to when it stops (every cell stops with
            // it), and `hydrant debug kill-cell` plays a lost host here.
            config.evacuate_on_shutdown = false;
            config.debug_kill = true;
            if w.options.cells > 1 {
                config.executor_id = "cell-1".to_owned();
            }
            // A second micro cloud on this host: its own bridge, subnet and cgroup parent.
            if let Some(n) = &w.networks {
                config.network.bridge.clone_from(&n.executor_bridge);
                config.network.subnet.clone_from(&n.executor_subnet);
                config
                    .containers
                    .cgroup_parent
                    .clone_from(&n.executor_cgroup_parent);
            }
            config
        }
    }

    impl MicroRole for hydrant_healthmanager::HealthManager {
        const KEY: &'static str = "healthmanager";
        const PLATFORM: bool = true;
        const PORTS: &'static [u16] = &[14832];

        fn config(w: &Wiring) -> hydrant_healthmanager::Config {
            let api = api(w, hydrant_tls::Identity::HealthManager);
            hydrant_healthmanager::Config {
                api,
                bus: w.bus.clone(),
                telemetry: w.platform_telemetry(hydrant_tls::Identity::HealthManager),
                ..hydrant_healthmanager::Config::default()
            }
        }
    }

    impl MicroRole for hydrant_slo::Slo {
        const KEY: &'static str = "slo";
        const PLATFORM: bool = true;
        const PORTS: &'static [u16] = &[14835];

        fn config(w: &Wiring) -> hydrant_slo::Config {
            let api = api(w, hydrant_tls::Identity::Slo);
            hydrant_slo::Config {
                // The status page's keys come from `api_url`: over mutual TLS with certificates.
                api,
                firehose: firehose(w),
                data_dir: w.data("slo"),
                // On one machine the API is cheap to ask: pick up a new SLO and judge it sooner.
                poll_interval_secs: 5,
                evaluate_interval_secs: 5,
                telemetry: w.platform_telemetry(hydrant_tls::Identity::Slo),
                ..hydrant_slo::Config::default()
            }
        }
    }

    /// App syslog drains, served by the platform: the nozzle reads the bindings from the cloud
    /// controller and reports each drain's health back for `hydrant drain NAME --status`.
    impl MicroRole for hydrant_nozzle_syslog::SyslogNozzle {
        const KEY: &'static str = "nozzle-syslog";
        const PLATFORM: bool = true;
        const PORTS: &'static [u16] = &[14840];

        fn config(w: &Wiring) -> hydrant_nozzle_syslog::Config {
            let api = api(w, hydrant_tls::Identity::Nozzle);
            hydrant_nozzle_syslog::Config {
                // The status page's keys come from `[platform].api_url`: over mutual TLS with
                // certificates.
                firehose: firehose(w),
                subscription_id: "app-drains".to_owned(),
                platform: Some(hydrant_nozzle_syslog::PlatformConfig {
                    api,
                    // On one machine the API is cheap to ask: a new binding starts within 2 s.
                    poll_interval_ms: 2_000,
                    status_interval_ms: 2_000,
                    allow_private: w.options.allow_private_drains,
                    ..hydrant_nozzle_syslog::PlatformConfig::default()
                }),
                telemetry: w.platform_telemetry(hydrant_tls::Identity::Nozzle),
                ..hydrant_nozzle_syslog::Config::default()
            }
        }
    }

    impl MicroRole for hydrant_autoscaler::AutoscalerRole {
        const KEY: &'static str = "autoscaler";
        const PLATFORM: bool = true;
        const PORTS: &'static [u16] = &[14836];

        fn config(w: &Wiring) -> hydrant_autoscaler::Config {
            let api = api(w, hydrant_tls::Identity::Autoscaler);
            hydrant_autoscaler::Config {
                api,
                firehose: firehose(w),
                rule_duration_cap_secs: w.options.autoscaler_rule_cap_secs,
                telemetry: w.platform_telemetry(hydrant_tls::Identity::Autoscaler),
                ..hydrant_autoscaler::Config::default()
            }
        }
    }

    impl MicroRole for hydrant_router::Router {
        const KEY: &'static str = "router";
        const PLATFORM: bool = true;
        const PORTS: &'static [u16] = &[8080, 8085];

        fn config(w: &Wiring) -> hydrant_router::Config {
            hydrant_router::Config {
                bus: w.bus.clone(),
                telemetry: w.platform_telemetry(hydrant_tls::Identity::Router),
                ..hydrant_router::Config::default()
            }
        }
    }

    /// Starts extra cell `k` (2 ≤ k ≤ cells) of `hydrant up --cells N`: executor `cell-k` in
    /// zone `zk` with its own data directory, an ephemeral admin port and, with containers,
    /// its own bridge, subnet and cgroup parent. Returns its `endpoints.json` admin key and
    /// address.
    pub(crate) async fn start_cell(
        w: &Wiring,
        k: u32,
        shutdown: &tokio_util::sync::CancellationToken,
        tasks: &mut crate::Tasks,
    ) -> Result<(String, std::net::SocketAddr), crate::Error> {
        use hydrant_executor::Executor;
        use hydrant_runtime::Role as _;

        let mut config = <Executor as MicroRole>::config(w);
        let id = format!("cell-{k}");
        config.executor_id.clone_from(&id);
        config.zone = format!("z{k}");
        config.data_dir = w.data(&format!("executor-{id}"));
        if w.options.containers {
            config.network.bridge = cell_bridge(&config.network.bridge, k);
            config.network.subnet = shifted_subnet(&config.network.subnet, k);
            if !config.containers.cgroup_parent.is_empty() {
                config.containers.cgroup_parent =
                    format!("{}-c{k}", config.containers.cgroup_parent);
            }
        }
        let invalid = |e: hydrant_executor::Error| crate::Error::Config {
            role: Executor::NAME,
            source: Box::new(e),
        };
        Executor::validate(&config).map_err(invalid)?;
        let listeners = hydrant_runtime::bind_on::<Executor>(|_| "127.0.0.1:0".to_owned())
            .await
            .map_err(|source| crate::Error::Bind {
                role: Executor::NAME,
                source,
            })?;
        let key = format!("executor-{id}");
        let addr = listeners
            .local_addr("admin")
            .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        let registry = Executor::registry(&config);
        let run = hydrant_runtime::run_with_registry::<Executor>(
            config,
            listeners,
            registry,
            shutdown.clone(),
        );
        tasks.spawn(async move {
            (
                Executor::NAME,
                run.await.map_err(|e| Box::new(e) as crate::BoxError),
            )
        });
        Ok((key, addr))
    }

    /// The bridge's own address on `subnet` (its first host address, as the container
    /// network assigns it); `None` for what is not an IPv4 CIDR, which the executor's own
    /// validation then names.
    fn gateway_of(subnet: &str) -> Option<std::net::Ipv4Addr> {
        let (addr, prefix) = subnet.split_once('/')?;
        let addr: std::net::Ipv4Addr = addr.parse().ok()?;
        let prefix: u32 = prefix.parse().ok().filter(|p| (1..=30).contains(p))?;
        let network = u32::from(addr) & (u32::MAX << (32 - prefix));
        Some(std::net::Ipv4Addr::from(network + 1))
    }

    /// Cell `k`'s bridge: the first cell's with its last two characters replaced by `c<k>`
    /// (bridge names are at most 8 characters: `hydrant0` → `hydranc2`).
    fn cell_bridge(bridge: &str, k: u32) -> String {
        let keep: String = bridge.chars().take(6).collect();
        format!("{keep}c{k}")
    }

    /// Cell `k`'s subnet: the first cell's, its third octet moved up by 64 per cell (so four
    /// cells of a /22 or /24 never overlap). An unparsable subnet is returned as is, and the
    /// executor's own validation names it.
    fn shifted_subnet(subnet: &str, k: u32) -> String {
        let Some((addr, prefix)) = subnet.split_once('/') else {
            return subnet.to_owned();
        };
        let mut octets: Vec<u32> = addr.split('.').filter_map(|o| o.parse().ok()).collect();
        if octets.len() != 4 {
            return subnet.to_owned();
        }
        octets[2] = (octets[2] + 64 * (k - 1)) % 256;
        format!(
            "{}.{}.{}.{}/{prefix}",
            octets[0], octets[1], octets[2], octets[3]
        )
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn each_cell_gets_its_own_bridge_and_subnet() {
            assert_eq!(super::shifted_subnet("10.254.0.0/22", 2), "10.254.64.0/22");
            assert_eq!(super::shifted_subnet("10.253.6.0/24", 4), "10.253.198.0/24");
            assert_eq!(super::shifted_subnet("nonsense", 3), "nonsense");
            assert_eq!(super::cell_bridge("hydrant0", 2), "hydranc2");
            assert_eq!(super::cell_bridge("hy84e117", 4), "hy84e1c4");
        }

        #[test]
        fn service_nodes_listen_on_the_bridges_gateway() {
            let gateway = |s: &str| super::gateway_of(s).map(|ip| ip.to_string());
            assert_eq!(gateway("10.254.0.0/22").as_deref(), Some("10.254.0.1"));
            assert_eq!(gateway("10.253.6.7/24").as_deref(), Some("10.253.6.1"));
            assert_eq!(gateway("nonsense"), None);
            assert_eq!(gateway("10.0.0.0/40"), None);
        }
    }
}

#[cfg(feature = "platform")]
pub(crate) use platform::start_cell;
