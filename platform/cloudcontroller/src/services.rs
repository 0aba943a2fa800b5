//! Services: the cloud controller as an Open Service Broker API (v2.17) client.
//!
//! Flow: the API (`api/services.rs`) validates a request, checks parameters against the plan's
//! schema (`schema`), writes the instance or binding and a job row in one transaction and wakes
//! the job runner (`jobs`), which calls the broker (`osb`), polls `last_operation` honouring
//! `Retry-After` up to the plan's polling limit, fetches async bindings' credentials, and on the
//! answers the spec names queues orphan mitigation as another job row. Catalogs are validated
//! in `catalog`; SQL lives in `store`; `vcap` builds `VCAP_SERVICES` and `DATABASE_URL` for
//! the placement loop's start messages.
//!
//! Invariants:
//! - Every broker call's outcome is in the database before the next step: a controller that
//!   stops anywhere resumes every job (provision, poll, orphan mitigation) at its next start.
//! - A binding reaches an app's environment only once the broker has returned its credentials.
//! - Broker URLs follow the platform's outbound policy (`hydrant_api::drain::Outbound`):
//!   internal addresses only when the operator allows them.
//! - A broker's password and a binding's credentials are never logged or listed.

pub(crate) mod catalog;
pub(crate) mod jobs;
pub(crate) mod osb;
pub(crate) mod schema;
pub(crate) mod store;
pub(crate) mod vcap;

use std::sync::Arc;

use hydrant_emitter::{Counter, Registry};
use hydrant_runtime::invalid;
use serde::Deserialize;
use tokio::sync::Notify;

use crate::Error;

/// `[services]`: how the cloud controller talks to service brokers.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ServicesConfig {
    /// Let brokers live on loopback, private or link-local addresses. Default false: a broker
    /// URL is a connection the platform makes, and must not reach into its own network unless
    /// the operator says so (the micro cloud allows it for its own broker).
    pub allow_private_brokers: bool,
    /// Deadline of one broker request, seconds. Default 60 (Cloud Foundry's).
    pub broker_timeout_secs: u64,
    /// Seconds between `last_operation` polls when the broker sends no `Retry-After` (the
    /// first poll comes 1 s after the broker accepted the request). Default 5.
    pub poll_interval_secs: u64,
    /// Longest `Retry-After` honoured, seconds (a longer one is cut to this). Default 300.
    pub max_poll_interval_secs: u64,
    /// The platform's limit on polling one operation, minutes; a plan's own
    /// `maximum_polling_duration` applies when shorter. Default 60.
    pub max_polling_minutes: u64,
    /// First wait before an orphan-mitigation delete is retried, seconds; it doubles up to
    /// `max_poll_interval_secs`. Default 5.
    pub orphan_retry_secs: u64,
    /// Orphan mitigation gives up (counted, logged) after this many hours. Default 24.
    pub orphan_give_up_hours: u64,
    /// Jobs run at once. Default 4.
    pub job_workers: usize,
    /// Largest broker answer read (catalogs included), bytes. Default 4194304 (4 MiB).
    pub max_response_bytes: usize,
    /// A PEM bundle of the CAs `https://` brokers' certificates must chain to. Default none:
    /// the system's roots. The controller refuses to start when the file cannot be used.
    pub broker_ca_file: Option<String>,
}

impl Default for ServicesConfig {
    fn default() -> Self {
        Self {
            allow_private_brokers: false,
            broker_timeout_secs: 60,
            poll_interval_secs: 5,
            max_poll_interval_secs: 300,
            max_polling_minutes: 60,
            orphan_retry_secs: 5,
            orphan_give_up_hours: 24,
            job_workers: 4,
            max_response_bytes: 4 << 20,
            broker_ca_file: None,
        }
    }
}

impl ServicesConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field and the range it must be in.
    pub fn validate(&self) -> Result<(), Error> {
        let ranges: [(&str, u64, u64, u64); 6] = [
            (
                "services.broker_timeout_secs",
                self.broker_timeout_secs,
                1,
                600,
            ),
            (
                "services.poll_interval_secs",
                self.poll_interval_secs,
                1,
                3600,
            ),
            (
                "services.max_poll_interval_secs",
                self.max_poll_interval_secs,
                1,
                86_400,
            ),
            (
                "services.max_polling_minutes",
                self.max_polling_minutes,
                1,
                10_080,
            ),
            (
                "services.orphan_retry_secs",
                self.orphan_retry_secs,
                1,
                3600,
            ),
            (
                "services.orphan_give_up_hours",
                self.orphan_give_up_hours,
                1,
                24 * 30,
            ),
        ];
        for (field, value, low, high) in ranges {
            if !(low..=high).contains(&value) {
                return Err(invalid(field, format!("must be between {low} and {high}")).into());
            }
        }
        if self
            .broker_ca_file
            .as_deref()
            .is_some_and(|p| p.trim().is_empty())
        {
            return Err(invalid(
                "services.broker_ca_file",
                "is empty: name a PEM file of CA certificates, or leave it out to trust the \
                 system's roots",
            )
            .into());
        }
        if !(1..=64).contains(&self.job_workers) {
            return Err(invalid("services.job_workers", "must be between 1 and 64").into());
        }
        if !(1024..=(256 << 20)).contains(&self.max_response_bytes) {
            return Err(invalid(
                "services.max_response_bytes",
                "must be between 1024 and 268435456",
            )
            .into());
        }
        Ok(())
    }
}

/// What the API and the job runner share.
#[derive(Debug)]
pub(crate) struct Services {
    pub(crate) osb: osb::OsbClient,
    /// Wakes the job runner when a job is written.
    pub(crate) wake: Arc<Notify>,
    pub(crate) metrics: ServiceMetrics,
}

impl Services {
    pub(crate) fn new(config: &ServicesConfig, registry: &Registry) -> Result<Self, Error> {
        Ok(Self {
            osb: osb::OsbClient::new(config, registry)?,
            wake: Arc::new(Notify::new()),
            metrics: ServiceMetrics::new(registry),
        })
    }
}

/// The job runner's own counters (`cloudcontroller.service_*`).
#[derive(Debug, Clone)]
pub(crate) struct ServiceMetrics {
    pub(crate) jobs_completed: Counter,
    pub(crate) jobs_failed: Counter,
    pub(crate) orphans_queued: Counter,
    pub(crate) orphans_mitigated: Counter,
    pub(crate) orphans_abandoned: Counter,
    pub(crate) polls: Counter,
}

impl ServiceMetrics {
    fn new(registry: &Registry) -> Self {
        let job = crate::metrics::family(
            registry,
            "cloudcontroller.service_jobs",
            "service jobs (provision, update, bind, unbind, deprovision) finished, by result",
            "result",
        );
        let orphan = crate::metrics::family(
            registry,
            "cloudcontroller.service_orphans",
            "orphan mitigation (a delete the platform sends after an uncertain create), by result",
            "result",
        );
        Self {
            jobs_completed: job("complete"),
            jobs_failed: job("failed"),
            orphans_queued: orphan("queued"),
            orphans_mitigated: orphan("mitigated"),
            orphans_abandoned: orphan("abandoned"),
            polls: registry.counter(
                "cloudcontroller.service_polls",
                "last_operation polls sent to brokers",
                &[],
            ),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use super::ServicesConfig;

    #[test]
    fn config_errors_name_the_field_and_the_range() {
        ServicesConfig::default().validate().unwrap();
        let e = ServicesConfig {
            max_polling_minutes: 0,
            ..ServicesConfig::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("services.max_polling_minutes"), "{e}");
        assert!(e.contains("between 1 and 10080"), "{e}");
        let parsed: ServicesConfig = toml::from_str("allow_private_brokers = true").unwrap();
        assert!(parsed.allow_private_brokers);
        assert!(toml::from_str::<ServicesConfig>("allow_private_broker = true").is_err());
    }
}
