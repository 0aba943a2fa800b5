//! The desired-state copy: every app the cloud controller knows, polled with a token, and how
//! much the copy can be trusted.
//!
//! Flow: [`poll`] (a task) → `GET /v3/apps` every `poll_interval_secs` → [`Desired`] (shared)
//! → the run loop asks [`Desired::fresh`] before anything destructive.
//!
//! Invariant: the copy is fresh only while the last poll succeeded recently: fewer than
//! `stale_after_failures` polls in a row failed and it is younger than `stale_after_secs`.
//! A stale copy is kept (restarts still use it to skip apps that were stopped) but never used
//! to stop anything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hydrant_api::App;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::metrics::Metrics;

/// The last good copy of desired state and the polls since.
#[derive(Debug, Default)]
pub(crate) struct Copy {
    /// Apps by guid, from the last successful poll.
    pub(crate) apps: Option<Arc<HashMap<String, App>>>,
    /// When the last successful poll answered.
    pub(crate) fetched_at: Option<Instant>,
    /// Failed polls since.
    pub(crate) failures: u32,
    /// Why the last poll failed.
    pub(crate) last_error: Option<String>,
}

/// The shared copy and the staleness rules.
#[derive(Debug)]
pub(crate) struct Desired {
    copy: Mutex<Copy>,
    stale_after_failures: u32,
    stale_after: Duration,
}

/// A view of the copy at one instant.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) apps: Option<Arc<HashMap<String, App>>>,
    pub(crate) fetched_at: Option<Instant>,
    pub(crate) fresh: bool,
    pub(crate) age: Option<Duration>,
}

impl Desired {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            copy: Mutex::new(Copy::default()),
            stale_after_failures: config.stale_after_failures,
            stale_after: Config::secs(config.stale_after_secs),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Copy> {
        hydrant_runtime::lock(&self.copy)
    }

    /// The copy as of `now`.
    pub(crate) fn snapshot(&self, now: Instant) -> Snapshot {
        let copy = self.lock();
        let age = copy.fetched_at.map(|at| now.saturating_duration_since(at));
        Snapshot {
            apps: copy.apps.clone(),
            fetched_at: copy.fetched_at,
            fresh: age.is_some_and(|age| age <= self.stale_after)
                && copy.failures < self.stale_after_failures,
            age,
        }
    }

    fn succeeded(&self, apps: Vec<App>, now: Instant) {
        let mut copy = self.lock();
        copy.apps = Some(Arc::new(
            apps.into_iter().map(|a| (a.guid.clone(), a)).collect(),
        ));
        copy.fetched_at = Some(now);
        copy.failures = 0;
        copy.last_error = None;
    }

    fn failed(&self, error: String) -> u32 {
        let mut copy = self.lock();
        copy.failures = copy.failures.saturating_add(1);
        copy.last_error = Some(error);
        copy.failures
    }

    /// Marks the copy untrustworthy at once (a call that should have worked failed).
    pub(crate) fn distrust(&self, error: String) {
        let mut copy = self.lock();
        copy.failures = copy.failures.max(self.stale_after_failures);
        copy.last_error = Some(error);
    }
}

/// Polls desired state until `shutdown`.
pub(crate) async fn poll(
    desired: Arc<Desired>,
    api: Arc<hydrant_runtime::ApiClient>,
    interval: Duration,
    timeout: Duration,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let result = match api.authorized().await {
            Ok(client) => match tokio::time::timeout(timeout, client.list_apps()).await {
                Ok(Ok(apps)) => Ok(apps),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            },
            Err(e) => Err(e),
        };
        match result {
            Ok(apps) => desired.succeeded(apps, Instant::now()),
            Err(e) => {
                metrics.polls_failed.inc();
                let failures = desired.failed(e.clone());
                tracing::warn!(failures, error = %e, "health manager: desired-state poll failed");
            }
        }
    }
}
