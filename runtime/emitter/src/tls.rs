//! Mutual TLS as a role's `/metrics` sees it: refusals counted by endpoint and reason
//! (`tls.refused{endpoint,reason}`), and the time until the role's own certificate expires
//! (`tls.cert_expiry_seconds{identity}`, seconds because Prometheus wants base units: divide by
//! 86400 for days), so `hydrant top` and alerts can warn before it does.
//!
//! Flow: a role with a `tls` block builds its servers with [`server`] (the endpoint's refusal
//! counters are registered at zero, so a scrape shows every reason) and starts
//! [`spawn_expiry_gauge`] once.
//!
//! The invariant: every refusal the TLS layer makes (handshake or per-service gate) is counted
//! in the role's registry under the endpoint that made it.

use std::sync::Arc;
use std::time::Duration;

use hydrant_tls::{Identity, Material, Observer, Reason, ServerTls};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Registry;

const REFUSED: &str = "tls.refused";
const REFUSED_HELP: &str = "clients refused by mutual TLS, by endpoint and reason";
/// How often the expiry gauge is brought up to date.
const EXPIRY_EVERY: Duration = Duration::from_secs(60);

/// Counts refusals into a registry.
#[derive(Debug, Clone)]
struct Counted(Registry);

impl Observer for Counted {
    fn refused(&self, endpoint: &str, reason: Reason) {
        self.0
            .counter(
                REFUSED,
                REFUSED_HELP,
                &[("endpoint", endpoint), ("reason", reason.label())],
            )
            .inc();
    }
}

/// An observer counting into `registry`, with `endpoint`'s counters registered at zero.
#[must_use]
pub fn observer(registry: &Registry, endpoint: &str) -> Arc<dyn Observer> {
    for reason in Reason::ALL {
        registry.counter(
            REFUSED,
            REFUSED_HELP,
            &[("endpoint", endpoint), ("reason", reason.label())],
        );
    }
    Arc::new(Counted(registry.clone()))
}

/// The server side of `endpoint`, letting in `allowed`, refusals counted into `registry`.
///
/// # Errors
/// As [`ServerTls::new`].
pub fn server(
    registry: &Registry,
    material: Arc<Material>,
    endpoint: &'static str,
    allowed: &[Identity],
) -> Result<ServerTls, hydrant_tls::Error> {
    ServerTls::new(material, endpoint, allowed, observer(registry, endpoint))
}

/// Keeps `tls.cert_expiry_seconds` current (now, then every minute) until `shutdown`.
pub fn spawn_expiry_gauge(
    registry: &Registry,
    material: Arc<Material>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let identity = material.identity().map_or("unknown", Identity::name);
    let gauge = registry.gauge(
        "tls.cert_expiry_seconds",
        "seconds until this role's own certificate expires (negative once it has)",
        "seconds",
        &[("identity", identity)],
    );
    tokio::spawn(async move {
        loop {
            if let Some(days) = material.days_to_expiry() {
                gauge.set(days * 86_400.0);
            }
            tokio::select! {
                () = tokio::time::sleep(EXPIRY_EVERY) => {}
                () = shutdown.cancelled() => return,
            }
        }
    })
}
