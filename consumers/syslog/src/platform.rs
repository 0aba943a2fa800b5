//! Platform mode: the drains developers bind to their apps (`hydrant drain NAME URL`), served
//! by this nozzle. The cloud controller says which drains exist; the nozzle runs them and says
//! how they are doing.
//!
//! Flow: `GET /v3/drain_targets` every `poll_interval_ms` → [`sync`] (start new bindings, stop
//! removed or changed ones, hand the reader new routes keyed by app guid) … the drains run …
//! every `status_interval_ms` → `PUT /v3/drain_status` with each binding's counts, lag, last
//! error and state.
//!
//! Invariants: the data plane outlives the control plane — when the API cannot be reached the
//! drains keep the last set they were given; app drains are never allowed to reach a
//! loopback, private or link-local address unless the operator set `allow_private`; a drain
//! gets only its own app's envelopes; nothing sent to the API or logged carries a drain's
//! credentials.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use hydrant_api::{DrainState as ApiState, DrainStatus, DrainTarget};
use hydrant_emitter::{Counter, Gauge, Registry};
use hydrant_runtime::{ApiSettings, invalid};
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::role::{DrainSpec, SharedFleet, lock};
use crate::{Config, DrainState, EncoderConfig, Error, drain_options};

/// The `[platform]` section: serve the app drains the cloud controller knows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlatformConfig {
    /// The cloud controller's API and how the nozzle signs in, keys of `[platform]`: `api_url`
    /// (default `http://127.0.0.1:9022`), an admin token (drain targets carry credentials, so
    /// only admins may read them) as `token` or `token_file`, or `client_id` with
    /// `client_secret` or `client_secret_file`; `tls` with the `nozzle` identity for the
    /// controller's internal listener.
    #[serde(flatten)]
    pub api: ApiSettings,
    /// How often the bindings are fetched, in ms. Default 5000.
    pub poll_interval_ms: u64,
    /// How often the drains' status is reported, in ms. Default 5000.
    pub status_interval_ms: u64,
    /// How long one API call may take, in ms. Default 5000.
    pub request_timeout_ms: u64,
    /// Let app drains reach loopback, private and link-local addresses (a developer could
    /// otherwise point a drain at the platform's own internals). Default false.
    pub allow_private: bool,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        Self {
            api: ApiSettings::default(),
            poll_interval_ms: 5_000,
            status_interval_ms: 5_000,
            request_timeout_ms: 5_000,
            allow_private: false,
        }
    }
}

impl PlatformConfig {
    /// Checks the section; errors name `platform.FIELD`.
    ///
    /// # Errors
    /// A config error ([`Error::Core`]).
    pub fn validate(&self) -> Result<(), Error> {
        self.api.validate("platform.", "an admin token")?;
        for (field, value) in [
            ("poll_interval_ms", self.poll_interval_ms),
            ("status_interval_ms", self.status_interval_ms),
            ("request_timeout_ms", self.request_timeout_ms),
        ] {
            if value == 0 {
                return Err(invalid(format!("platform.{field}"), "must be at least 1 (ms)").into());
            }
        }
        Ok(())
    }
}

/// What the poller counts.
struct PlatformMetrics {
    polls_failed: Counter,
    reports_failed: Counter,
    bound: Gauge,
}

impl PlatformMetrics {
    fn new(registry: &Registry) -> Self {
        Self {
            polls_failed: registry.counter(
                "nozzle.platform_polls_failed",
                "Drain target fetches from the cloud controller that failed (the last set is kept).",
                &[],
            ),
            reports_failed: registry.counter(
                "nozzle.platform_reports_failed",
                "Drain status reports the cloud controller did not take.",
                &[],
            ),
            bound: registry.gauge(
                "nozzle.app_drains",
                "App drains this nozzle is serving.",
                "count",
                &[],
            ),
        }
    }
}

/// A binding's identity: when any of it changes the drain is restarted.
fn fingerprint(t: &DrainTarget) -> u64 {
    let mut h = DefaultHasher::new();
    (&t.url, &t.app_guid, &t.app_name, &t.space_name).hash(&mut h);
    h.finish()
}

/// One label of a syslog HOSTNAME, as Cloud Foundry sanitises org, space and app names.
fn host_label(s: &str) -> String {
    let mut out: String = s
        .chars()
        .filter_map(|c| {
            if c.is_whitespace() {
                Some('-')
            } else if c.is_ascii_alphanumeric() || c == '-' {
                Some(c)
            } else {
                None
            }
        })
        .collect();
    while out.ends_with('-') {
        out.pop();
    }
    out.truncate(63);
    out
}

/// The poller's memory of what it started.
struct Bound {
    /// guid → fingerprint of the running drain.
    running: HashMap<String, u64>,
    /// guid → why the binding could not be started (reported as its status).
    invalid: HashMap<String, String>,
}

/// Makes the fleet's app drains match `targets`.
fn sync(
    fleet: &SharedFleet,
    bound: &mut Bound,
    targets: &[DrainTarget],
    encoder: &EncoderConfig,
    allow_private: bool,
) {
    let wanted: HashMap<&str, &DrainTarget> =
        targets.iter().map(|t| (t.guid.as_str(), t)).collect();
    let mut f = lock(fleet);
    let gone: Vec<String> = bound
        .running
        .iter()
        .filter(|(guid, print)| {
            wanted
                .get(guid.as_str())
                .is_none_or(|t| fingerprint(t) != **print)
        })
        .map(|(guid, _)| guid.clone())
        .collect();
    for guid in &gone {
        f.remove(guid);
        bound.running.remove(guid);
    }
    bound
        .invalid
        .retain(|guid, _| wanted.contains_key(guid.as_str()));
    let mut changed = !gone.is_empty();
    for t in targets {
        if bound.running.contains_key(&t.guid) {
            continue;
        }
        let field = format!("drain {}", t.guid);
        let defaults = EncoderConfig {
            hostname: format!("{}.{}", host_label(&t.space_name), host_label(&t.app_name)),
            ..encoder.clone()
        };
        let started = drain_options(&field, &t.url, &defaults).and_then(|(_, options)| {
            f.add(DrainSpec {
                key: t.guid.clone(),
                url: t.url.clone(),
                app: Some(Arc::from(t.app_guid.as_str())),
                options,
                allow_private,
            })
        });
        match started {
            Ok(()) => {
                bound.running.insert(t.guid.clone(), fingerprint(t));
                bound.invalid.remove(&t.guid);
                changed = true;
                tracing::info!(binding = %t.guid, app = %t.app_guid, "app drain bound");
            }
            Err(e) => {
                if !bound.invalid.contains_key(&t.guid) {
                    tracing::warn!(binding = %t.guid, error = %e, "app drain cannot start");
                }
                bound.invalid.insert(t.guid.clone(), e.to_string());
            }
        }
    }
    if changed {
        f.publish();
    }
}

fn api_state(state: DrainState) -> ApiState {
    match state {
        DrainState::Ok => ApiState::Ok,
        DrainState::Retrying => ApiState::Retrying,
        DrainState::Open => ApiState::Open,
        DrainState::Refused => ApiState::Refused,
    }
}

fn statuses(fleet: &SharedFleet, bound: &Bound) -> Vec<DrainStatus> {
    let reports = lock(fleet).reports();
    let mut out: Vec<DrainStatus> = reports
        .into_iter()
        .filter(|r| r.app_guid.is_some())
        .map(|r| DrainStatus {
            guid: r.key,
            sent: r.sent,
            dropped: r.dropped,
            queue_depth: r.queue_depth,
            lag_ms: r.lag_ms,
            last_error: r.last_error,
            last_success_unix_ms: r.last_success_unix_ms,
            state: api_state(r.state),
            reported_at: 0,
        })
        .collect();
    out.extend(bound.invalid.iter().map(|(guid, why)| DrainStatus {
        guid: guid.clone(),
        sent: 0,
        dropped: 0,
        queue_depth: 0,
        lag_ms: None,
        last_error: Some(why.clone()),
        last_success_unix_ms: None,
        state: ApiState::Open,
        reported_at: 0,
    }));
    out
}

/// Starts the poller and reporter when `[platform]` is set.
pub(crate) fn start(
    config: &Config,
    registry: &Registry,
    fleet: &SharedFleet,
    stop: CancellationToken,
) -> Option<JoinHandle<()>> {
    let platform = config.platform.clone()?;
    if platform.allow_private {
        tracing::warn!(
            "platform.allow_private is set: app drains may reach loopback and private addresses"
        );
    }
    let metrics = PlatformMetrics::new(registry);
    let encoder = config.encoder.clone();
    let fleet = Arc::clone(fleet);
    // Certificates that cannot be used fail every call, saying why (never plaintext).
    let api = platform.api.client_in(registry);
    Some(tokio::spawn(async move {
        let timeout = Duration::from_millis(platform.request_timeout_ms);
        let mut poll = tokio::time::interval(Duration::from_millis(platform.poll_interval_ms));
        let mut report = tokio::time::interval(Duration::from_millis(platform.status_interval_ms));
        for t in [&mut poll, &mut report] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let mut bound = Bound {
            running: HashMap::new(),
            invalid: HashMap::new(),
        };
        let mut last_failure: Option<String> = None;
        loop {
            let polling = tokio::select! {
                () = stop.cancelled() => return,
                _ = poll.tick() => true,
                _ = report.tick() => false,
            };
            let client = match api.authorized().await {
                Ok(client) => client,
                Err(e) => {
                    metrics.polls_failed.inc();
                    tracing::warn!(error = %e, "platform mode has no token");
                    continue;
                }
            };
            if polling {
                match tokio::time::timeout(timeout, client.drain_targets()).await {
                    Ok(Ok(targets)) => {
                        if last_failure.take().is_some() {
                            tracing::info!("drain targets readable again");
                        }
                        sync(
                            &fleet,
                            &mut bound,
                            &targets,
                            &encoder,
                            platform.allow_private,
                        );
                        metrics.bound.set(bound.running.len() as f64);
                    }
                    failed => {
                        metrics.polls_failed.inc();
                        let why = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("no answer within {} ms", timeout.as_millis()),
                        };
                        // Say it once per outage, not once per poll.
                        if last_failure.as_deref() != Some(why.as_str()) {
                            tracing::warn!(
                                error = %why,
                                "cannot fetch drain targets; keeping the current drains"
                            );
                        }
                        last_failure = Some(why);
                    }
                }
            } else {
                let statuses = statuses(&fleet, &bound);
                match tokio::time::timeout(timeout, client.report_drain_status(&statuses)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        metrics.reports_failed.inc();
                        tracing::debug!(error = %e, "drain status report refused");
                    }
                    Err(_) => {
                        metrics.reports_failed.inc();
                        tracing::debug!("drain status report timed out");
                    }
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::{ApiSettings, PlatformConfig, host_label};

    #[test]
    fn validate_names_the_field() {
        let ok = PlatformConfig {
            api: ApiSettings::with_token("http://127.0.0.1:9022", "t"),
            ..PlatformConfig::default()
        };
        ok.validate().unwrap();
        for (bad, field) in [
            (PlatformConfig::default(), "platform.token"),
            (
                PlatformConfig {
                    api: ApiSettings {
                        api_url: "ftp://x".to_owned(),
                        ..ok.api.clone()
                    },
                    ..ok.clone()
                },
                "platform.api_url",
            ),
            (
                PlatformConfig {
                    poll_interval_ms: 0,
                    ..ok.clone()
                },
                "platform.poll_interval_ms",
            ),
            (
                PlatformConfig {
                    api: ApiSettings {
                        token_file: Some("/x".into()),
                        ..ok.api.clone()
                    },
                    ..ok
                },
                "platform.token",
            ),
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn host_labels_are_sanitised() {
        assert_eq!(host_label("my space"), "my-space");
        assert_eq!(host_label("web_app--"), "webapp");
        assert_eq!(host_label(&"x".repeat(80)).len(), 63);
    }
}
