//! The autoscaler: app-autoscaler-compatible policies evaluated on the live firehose, acting
//! through the cloud controller's API.
//!
//! Flow: firehose (this copy's own subscription id) → [`feed`] (keeps only the envelopes of
//! this copy's apps) → rolling windows; every `policy_poll_secs` the policies and instance
//! counts come from `GET /v3/autoscaling_policies` and `GET /v3/apps`, and the [`shard`] keeps
//! the apps this copy owns; every `evaluation_interval_secs` the [`Engine`] reads the windows
//! and decides; a decision becomes `scale` (audit `audit.app.scale`),
//! `POST .../autoscaling_events` (audit `audit.app.autoscale`) and an `AUTOSCALER` line in the
//! app's log stream, whose instance is the copy's index (`[AUTOSCALER/1]`).
//!
//! # Several copies
//! Copies are numbered (`instance_index` of `instance_count`). Each app belongs to exactly one
//! copy, by rendezvous hashing of its guid, so no app gets two decisions and each copy's
//! windows, memory and API calls cover only its share. Every copy reads the whole firehose on
//! its own subscription id (`{subscription_id}-{instance_index}`) and drops the rest as it
//! parses: the edge splits a *shared* subscription per envelope, which would hand each copy
//! part of every app's requests (half the throughput, a percentile over half the samples).
//! Per-app streams were the alternative; they would cost one edge stream per app (the edge
//! caps streams) and carry the apps' logs, which the autoscaler does not need. The price of
//! this design is that each copy parses the whole stream's routing fields, not only its share.
//! Two copies given the same index would share a subscription and see sequence gaps, so both
//! hold and say so rather than decide twice on half the data; a copy that is down leaves its
//! apps unscaled (not rescaled by another) until it is back, so run copies under a supervisor.
//!
//! Invariants: missing or stale data (a silent app, a disconnected or lossy stream) holds and
//! says so once; at most one scale call per app is in flight per tick and the loop never
//! waits on more than `request_timeout_ms` per call; the cloud controller being down keeps the
//! last policies and changes nothing.

mod config;
pub mod engine;
mod error;
pub mod feed;
pub mod shard;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hydrant_api::policy::AutoscaleDecision;
use hydrant_api::{AppState, ScaleApp};
use hydrant_emitter::{Counter, Emitter, Gauge, Registry};
use hydrant_firehose_client::{FirehoseClient, Subscription};
use hydrant_runtime::lock;
use hydrant_windows::{SharedWindows, Windows};
use tokio_util::sync::CancellationToken;

pub use config::{Config, MAX_INSTANCES};
pub use engine::{AppInfo, Engine, EngineConfig, ScaleStep, Step};
pub use error::Error;
pub use feed::{FeedStatus, SharedStatus, Watched};
pub use shard::{Shard, owner};

/// The source type of the autoscaler's lines in an app's log stream.
pub const SOURCE_TYPE: &str = "AUTOSCALER";

hydrant_runtime::role! {
    /// The autoscaler as a [`hydrant_runtime::Role`]: `hydrant run autoscaler`, and the micro cloud's.
    pub struct AutoscalerRole {
        name: "autoscaler", config: Config, error: Error, admin: "127.0.0.1:14833" => admin_listen,
        registry: |c| Registry::new("autoscaler", &c.instance_index.to_string()),
        describe: |c| format!("copy {} of {}", c.instance_index, c.instance_count),
        serve: serve,
    }
}

#[derive(Debug)]
struct Metrics {
    evaluations: Counter,
    scaled: Counter,
    scale_failed: Counter,
    poll_failed: Counter,
    apps: Gauge,
    apps_elsewhere: Gauge,
}

impl Metrics {
    fn new(registry: &Registry) -> Self {
        Self {
            evaluations: registry.counter("autoscaler.evaluations", "Evaluation ticks", &[]),
            scaled: registry.counter("autoscaler.scalings", "Scale calls that succeeded", &[]),
            scale_failed: registry.counter(
                "autoscaler.dropped",
                "Scaling decisions not carried out, by reason",
                &[("reason", "scale_failed")],
            ),
            poll_failed: registry.counter(
                "autoscaler.poll_failures",
                "Policy polls that failed (the last policies stay in force)",
                &[],
            ),
            apps: registry.gauge(
                "autoscaler.apps",
                "Apps under a policy that this copy decides for",
                "count",
                &[],
            ),
            apps_elsewhere: registry.gauge(
                "autoscaler.apps_elsewhere",
                "Apps under a policy that other autoscaler copies decide for",
                "count",
                &[],
            ),
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Everything the loop acts through.
#[derive(Debug)]
struct Actor {
    /// The cloud controller, and the token every call carries.
    api: hydrant_runtime::ApiClient,
    emitter: Option<Emitter>,
    timeout: Duration,
    metrics: Metrics,
    /// This copy's index, the instance of its lines (`[AUTOSCALER/1]`).
    copy: String,
}

impl Actor {
    fn say(&self, app: &str, line: &str) {
        tracing::info!(app, copy = %self.copy, "{line}");
        if let Some(emitter) = &self.emitter {
            emitter.log(app, &self.copy, SOURCE_TYPE, line.as_bytes(), false);
        }
    }

    /// Policies of started and stopped apps, with their current counts.
    async fn poll(&self) -> Result<Vec<AppInfo>, String> {
        let client = self.api.authorized().await?;
        let call = async {
            let policies = client.autoscaling_policies().await?;
            let apps = if policies.is_empty() {
                Vec::new()
            } else {
                client.list_apps().await?
            };
            Ok::<_, hydrant_api::Error>((policies, apps))
        };
        let (policies, apps) = tokio::time::timeout(self.timeout * 2, call)
            .await
            .map_err(|_| "the cloud controller did not answer in time".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(policies
            .into_iter()
            .filter_map(|p| {
                let app = apps.iter().find(|a| a.guid == p.app_guid)?;
                Some(AppInfo {
                    guid: p.app_guid,
                    name: p.app_name,
                    instances: app.instances,
                    started: app.state == AppState::Started,
                    policy: p.policy,
                })
            })
            .collect())
    }

    async fn scale(&self, step: &ScaleStep) -> Result<(), String> {
        let client = self.api.authorized().await?;
        let scale = ScaleApp {
            instances: Some(step.to),
            memory_mb: None,
            disk_mb: None,
        };
        tokio::time::timeout(self.timeout, client.scale_app(&step.app, &scale))
            .await
            .map_err(|_| "the cloud controller did not answer in time".to_owned())?
            .map_err(|e| e.to_string())?;
        let decision = AutoscaleDecision {
            rule: step.rule,
            metric_type: step.metric_type.clone(),
            value: step.value,
            threshold: step.threshold,
            operator: step.operator.clone(),
            adjustment: step.adjustment.clone(),
            from: step.from,
            to: step.to,
            reason: step.line.clone(),
        };
        // The scale happened; a lost audit record is logged, not retried into a second scale.
        match tokio::time::timeout(self.timeout, client.record_autoscale(&step.app, &decision))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(app = %step.app, error = %e, "autoscale event not recorded")
            }
            Err(_) => tracing::warn!(app = %step.app, "autoscale event not recorded: timeout"),
        }
        Ok(())
    }
}

/// Whether the stream feeding the windows can be trusted right now.
fn stream_health(
    status: FeedStatus,
    windows: &Windows,
    now: std::time::Instant,
    config: &Config,
) -> Result<(), String> {
    if !status.connected {
        return Err("the firehose is not connected".to_owned());
    }
    let stale = Duration::from_secs(config.stale_after_secs);
    if status
        .last_batch
        .is_none_or(|t| now.saturating_duration_since(t) > stale)
    {
        return Err(format!(
            "no firehose data for over {} s",
            config.stale_after_secs
        ));
    }
    let window = Duration::from_secs(config.metric_window_secs);
    if windows
        .last_stream_gap()
        .is_some_and(|t| now.saturating_duration_since(t) < window)
    {
        return Err("the firehose reported lost envelopes in the metric window".to_owned());
    }
    Ok(())
}

/// The autoscaler's decision loop without its clock and stream: the role ([`AutoscalerRole`])
/// ticks it; tests drive it with their own windows and instants against a real cloud controller.
#[derive(Debug)]
pub struct Autoscaler {
    config: Config,
    actor: Actor,
    engine: Engine,
    poll_error: Option<String>,
    shard: Shard,
    watched: Watched,
    feed: SharedStatus,
    /// (this copy's apps, all apps under a policy) at the last poll, to log changes once.
    share: (usize, usize),
}

impl Autoscaler {
    /// A loop acting with `config`'s API and token; lines go to `emitter`, counters to
    /// `registry`.
    #[must_use]
    pub fn new(config: Config, emitter: Option<Emitter>, registry: &Registry) -> Self {
        let actor = Actor {
            api: config.api.client_in(registry),
            emitter,
            timeout: Duration::from_millis(config.request_timeout_ms),
            metrics: Metrics::new(registry),
            copy: config.instance_index.to_string(),
        };
        let engine = Engine::new(EngineConfig {
            metric_window: Duration::from_secs(config.metric_window_secs),
            responsetime_percentile: config.responsetime_percentile,
            stale_after: Duration::from_secs(config.stale_after_secs),
            idle_responsetime_zero: config.idle_responsetime_zero,
            rule_duration_cap: config
                .rule_duration_cap_secs
                .map(|s| Duration::from_secs(u64::from(s))),
        });
        let shard = Shard {
            index: config.instance_index,
            count: config.instance_count.max(1),
        };
        Self {
            config,
            actor,
            engine,
            poll_error: None,
            shard,
            watched: Arc::new(RwLock::new(HashSet::new())),
            feed: SharedStatus::default(),
            share: (0, 0),
        }
    }

    /// The apps whose envelopes this copy needs: its own under a policy, as of the last poll.
    #[must_use]
    pub fn watched(&self) -> Watched {
        Arc::clone(&self.watched)
    }

    /// Where this copy's feed stands; the role hands it to the feed.
    #[must_use]
    pub fn feed_status(&self) -> SharedStatus {
        Arc::clone(&self.feed)
    }

    /// Fetches policies and instance counts and keeps this copy's apps; on failure the last
    /// ones stay in force.
    pub async fn poll(&mut self) {
        match self.actor.poll().await {
            Ok(all) => {
                let total = all.len();
                let apps: Vec<AppInfo> = all
                    .into_iter()
                    .filter(|a| self.shard.owns(&a.guid))
                    .collect();
                let share = (apps.len(), total);
                *self.watched.write().unwrap_or_else(PoisonError::into_inner) =
                    apps.iter().map(|a| a.guid.clone()).collect();
                self.actor
                    .metrics
                    .apps_elsewhere
                    .set((total - apps.len()) as f64);
                if share != self.share {
                    tracing::info!(
                        copy = self.shard.index,
                        copies = self.shard.count,
                        "autoscaler: deciding for {} of {} apps under a policy",
                        share.0,
                        share.1
                    );
                    self.share = share;
                }
                for step in self.engine.set_apps(apps) {
                    if let Step::Say { app, line } = step {
                        self.actor.say(&app, &line);
                    }
                }
                self.actor.metrics.apps.set(self.engine.apps() as f64);
                if self.poll_error.take().is_some() {
                    tracing::info!("autoscaler: policies reachable again");
                }
            }
            Err(e) => {
                self.actor.metrics.poll_failed.inc();
                if self.poll_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(error = %e, "autoscaler: policy poll failed; keeping the last policies");
                    self.poll_error = Some(e);
                }
            }
        }
    }

    /// Apps under a policy.
    #[must_use]
    pub fn apps(&self) -> usize {
        self.engine.apps()
    }

    /// One evaluation at `now` (`unix_now` for schedules), carrying out its decisions;
    /// returns the scale steps that succeeded.
    pub async fn evaluate(
        &mut self,
        windows: &SharedWindows,
        now: std::time::Instant,
        unix_now: i64,
    ) -> Vec<ScaleStep> {
        let status = *lock(&self.feed);
        let health = stream_health(status, &lock(windows), now, &self.config);
        self.evaluate_with(windows, health, now, unix_now).await
    }

    /// [`Autoscaler::evaluate`] with the stream's health given (`Err(reason)` holds every
    /// app), for windows fed by something other than [`hydrant_windows::drive`].
    pub async fn evaluate_with(
        &mut self,
        windows: &SharedWindows,
        stream: Result<(), String>,
        now: std::time::Instant,
        unix_now: i64,
    ) -> Vec<ScaleStep> {
        self.actor.metrics.evaluations.inc();
        let steps = self.engine.evaluate(&lock(windows), stream, now, unix_now);
        let mut done = Vec::new();
        for step in steps {
            match step {
                Step::Say { app, line } => self.actor.say(&app, &line),
                Step::Scale(step) => match self.actor.scale(&step).await {
                    Ok(()) => {
                        self.actor.metrics.scaled.inc();
                        self.engine.scaled(&step, now);
                        self.actor.say(&step.app, &step.line);
                        done.push(step);
                    }
                    Err(e) => {
                        self.actor.metrics.scale_failed.inc();
                        self.engine.scale_failed(&step.app, now);
                        self.actor.say(
                            &step.app,
                            &format!(
                                "Scaling from {} to {} failed: {e}; retrying in {} s",
                                step.from,
                                step.to,
                                engine::FAILURE_BACKOFF.as_secs()
                            ),
                        );
                    }
                },
            }
        }
        done
    }
}

/// Runs the autoscaler until `shutdown`.
async fn serve(
    config: Config,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let emitter_stop = CancellationToken::new();
    let emitter = config.telemetry.start(&registry, emitter_stop.clone());
    let windows: SharedWindows = Arc::new(Mutex::new(
        Windows::new(config.windows.clone())?.with_registry(&registry),
    ));

    // Certificates that cannot be used stop the role here, not at its first call.
    let api = config.api.connect()?;
    let mut firehose = config.firehose.clone();
    if firehose.token.is_empty() && firehose.client_id.is_empty() {
        firehose.token = api.token().await.unwrap_or_default();
    }
    firehose.validate()?;
    let client = FirehoseClient::connect(
        firehose,
        Subscription::Firehose {
            subscription_id: config.copy_subscription_id(),
        },
    )?;
    let counters = feed::FeedCounters {
        observed: registry.counter(
            "autoscaler.envelopes_observed",
            "Envelopes of this copy's apps folded into its windows",
            &[],
        ),
        skipped: registry.counter(
            "autoscaler.envelopes_skipped",
            "Envelopes of apps this copy does not decide for, read and left alone",
            &[],
        ),
    };

    let mut evaluate = tokio::time::interval(Duration::from_secs(config.evaluation_interval_secs));
    evaluate.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut poll = tokio::time::interval(Duration::from_secs(config.policy_poll_secs));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let emitter_handle = emitter.clone();
    let mut autoscaler = Autoscaler::new(config, emitter, &registry);
    let drive = tokio::spawn(feed::run(
        client,
        Arc::clone(&windows),
        autoscaler.watched(),
        autoscaler.feed_status(),
        counters,
        shutdown.clone(),
    ));

    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = poll.tick() => autoscaler.poll().await,
            _ = evaluate.tick() => {
                let now = tokio::time::Instant::now().into_std();
                autoscaler.evaluate(&windows, now, unix_now()).await;
            }
        }
    }

    drive.abort();
    emitter_stop.cancel();
    if let Some(emitter) = &emitter_handle {
        emitter.stopped().await;
    }
    Ok(())
}
