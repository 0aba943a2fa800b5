//! How the executor isolates instances: with `isolation = "container"` (the default) it opens
//! the container runtime and the container network once at start, after removing whatever an
//! earlier run (killed with SIGKILL) left; with `"none"` it says loudly that apps run
//! unisolated.
//!
//! Invariant: the executor never runs apps unisolated unless its config says `none`; when
//! containers cannot be made, start fails with the reason and the fix (including
//! `--isolation none`), never a silent fallback.

use std::path::PathBuf;

use hydrant_container::Containers;
use hydrant_container::net::{EgressRule, Network, Protocol};

use crate::Error;
use crate::config::{Config, Isolation};

/// The CELL line that marks an unisolated instance.
pub(crate) const UNISOLATED: &str = "running WITHOUT isolation: the app runs as the platform's own user and can read its data (isolation = \"none\")";

/// The container runtime and network of one executor.
#[derive(Debug)]
pub(crate) struct Isolated {
    pub(crate) containers: Containers,
    pub(crate) network: Network,
}

fn refused(error: &hydrant_container::Error) -> Error {
    Error::Config {
        field: "isolation",
        message: format!(
            "{error}. To run apps unisolated on purpose (they can then read the platform's \
             keys), set isolation = \"none\" or run `hydrant up --isolation none`"
        ),
    }
}

/// Paths no container may see even where a bound host tree would show them: the data dir,
/// the directory above it (the micro cloud keeps its keys there) and the binary's directory.
fn hidden(config: &Config, hydrant_bin: &str) -> Vec<PathBuf> {
    let mut hidden = Vec::new();
    let data = std::fs::canonicalize(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
    if let Some(parent) = data.parent().filter(|p| p.components().count() > 2) {
        hidden.push(parent.to_path_buf());
    }
    hidden.push(data);
    if let Some(dir) = std::path::Path::new(hydrant_bin).parent() {
        hidden.push(dir.to_path_buf());
    }
    hidden
}

/// Opens isolation as configured.
///
/// # Errors
/// [`Error::Config`] (field `isolation`) saying why containers cannot be made here and how to
/// fix it.
pub(crate) async fn open(config: &Config) -> Result<Option<Isolated>, Error> {
    if config.isolation == Isolation::None {
        tracing::warn!("executor {}: {UNISOLATED}", config.executor_id);
        return Ok(None);
    }
    check_published_host(config)?;
    let hydrant_bin = std::env::current_exe()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let containers = Containers::open(&config.container_config(), hidden(config, &hydrant_bin))
        .await
        .map_err(|e| refused(&e))?;
    let left = containers.cleanup().await.map_err(|e| refused(&e))?;
    if !left.is_empty() {
        tracing::warn!(containers = ?left.containers, cgroups = ?left.cgroups,
            bundles = ?left.bundles, failures = ?left.failures,
            "executor: removed containers an earlier run left behind");
    }
    let network = Network::setup(&config.network_config())
        .await
        .map_err(|e| refused(&e))?;
    tracing::info!(runtime = %containers.runtime().display(), cgroups = containers.cgroup_version(),
        bridge = %config.network.bridge, "executor: instances run in containers");
    match config.published_host() {
        Some(host) => tracing::info!(%host, ports = ?config.port_range,
            "executor: each instance's port is published on the advertised address"),
        None => tracing::info!(advertise_host = %config.advertise_host,
            "executor: no port mapping (the advertised address is not an IPv4 address other \
             hosts reach): routers reach instances at their bridge addresses, on this host only"),
    }
    Ok(Some(Isolated {
        containers,
        network,
    }))
}

/// Port mapping publishes instances on `advertise_host` itself, so it must be an address this
/// host holds: a DNAT for an address the host does not hold never matches, and every instance
/// would fail its health check with nothing saying why.
fn check_published_host(config: &Config) -> Result<(), Error> {
    let Some(host) = config.published_host() else {
        return Ok(());
    };
    // Binding succeeds only to an address of this host; nothing is sent.
    std::net::UdpSocket::bind((host, 0))
        .map(drop)
        .map_err(|e| Error::Config {
            field: "advertise_host",
            message: format!(
                "{host} is not an address of this host ({e}): contained instances are published \
             on the host's own address, at a port from port_range; write an address this host \
             holds and routers reach, or 127.0.0.1 to keep instances reachable from this host \
             only"
            ),
        })
}

/// Rules letting an instance ask the host's resolvers (`/etc/resolv.conf`, which the stack
/// shows inside) on port 53, even where they sit in a denied range: apps resolve names (and
/// Python's `http.server` waits on a reverse lookup before it listens). Loopback resolvers are
/// left out: a container's loopback is its own.
pub(crate) async fn dns_rules() -> Vec<EgressRule> {
    let resolv_conf = tokio::fs::read_to_string("/etc/resolv.conf")
        .await
        .unwrap_or_default();
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
            [Protocol::Udp, Protocol::Tcp].map(|protocol| EgressRule {
                description: "DNS: the host's resolver".to_owned(),
                ..EgressRule::allow(protocol, &ip.to_string(), Some("53"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_published_only_on_an_address_this_host_holds() {
        let on = |host: &str| Config {
            advertise_host: host.to_owned(),
            ..Config::default()
        };
        // Loopback publishes nothing, so there is nothing to check; a local address passes.
        check_published_host(&on("127.0.0.1")).unwrap();
        // 192.0.2.0/24 is documentation space (RFC 5737): no host holds it.
        let err = check_published_host(&on("192.0.2.77"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("advertise_host")
                && err.contains("192.0.2.77 is not an address of this host")
                && err.contains("127.0.0.1"),
            "{err}"
        );
    }
}
