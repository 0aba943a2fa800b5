//! Hydrant's SLO alerter: availability and latency objectives per app, measured on the
//! router's per-request `http` timers, alerting with the SRE workbook's multi-window,
//! multi-burn-rate rules.
//!
//! Flow: firehose edge → [`hydrant_windows::drive`] → per-minute good/total counts per app →
//! every `evaluate_interval_secs` the [`Engine`] (SLOs polled from the cloud controller's
//! `GET /v3/slos`) computes burn rates and budget → `slo.<name>.*` gauge envelopes and, when an
//! alert starts or stops, an `SLO` log line in the app's stream and a JSON POST to the SLO's
//! webhook ([`webhook`]). State goes to `data_dir` every `flush_interval_secs` and at
//! shutdown ([`store`]); the status of every SLO is served as JSON on the admin listener
//! (`GET /v1/slos`, `GET /v1/slos/{app_guid}`) for `hydrant slo NAME`, to tokens that may read
//! the app (`status`).
//!
//! Invariants:
//! - Evaluation never waits on the outside world: webhooks go through a bounded queue, the
//!   SLO poll runs apart and a failed poll keeps the last good copy.
//! - Time is Tokio's (so paused-time tests drive everything); the wall clock is read once,
//!   at start, to number minutes from the UNIX epoch so persisted minutes line up.
//! - Memory is bounded by the windows' caps (3 days of minutes per app), at most 90 day
//!   totals per app, and the webhook queue; drops are counted as `slo.dropped{reason}`.
//!
//! # Layout
//! - `config`: [`Config`], [`WebhookConfig`] and their validation.
//! - [`eval`]: the burn-rate arithmetic and the alert transitions, pure.
//! - [`engine`]: every app's SLOs over the windows, the period ledger, statuses.
//! - [`store`]: the per-app state files.
//! - [`webhook`]: delivery with retries.
//! - `status`: `/v1/slos` on the admin listener, behind a token check.

mod config;
pub mod engine;
mod error;
pub mod eval;
mod status;
pub mod store;
pub mod webhook;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hydrant_emitter::{Emitter, Registry};
use hydrant_firehose_client::Subscription;
use hydrant_runtime::lock;
use hydrant_windows::{SharedWindows, Windows};
use tokio_util::sync::CancellationToken;

pub use config::{Config, WebhookConfig};
pub use engine::{Engine, Notice};
pub use error::Error;

/// The `source_type` of the alerter's log lines in an app's stream.
pub const SOURCE_TYPE: &str = "SLO";

hydrant_runtime::role! {
    /// The SLO alerter as a [`hydrant_runtime::Role`]: `hydrant run slo`, and the micro cloud's.
    pub struct Slo {
        name: "slo", config: Config, error: Error, admin: "127.0.0.1:14835" => admin_listen,
        serve_with_listeners: serve,
    }
}

type SharedEngine = Arc<Mutex<Engine>>;

/// Maps Tokio's clock to UNIX seconds, read once.
#[derive(Debug, Clone, Copy)]
struct Clock {
    base: Instant,
    base_unix: u64,
}

impl Clock {
    fn start() -> Self {
        Self {
            base: tokio::time::Instant::now().into_std(),
            base_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    fn now(&self) -> (Instant, u64) {
        let now = tokio::time::Instant::now().into_std();
        let unix = self
            .base_unix
            .saturating_add(now.saturating_duration_since(self.base).as_secs());
        (now, unix)
    }
}

/// Runs the alerter until `shutdown`; then writes its state and returns.
async fn serve(
    config: Config,
    listeners: &hydrant_runtime::Listeners,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let state_dir = config.data_dir.join("apps");
    std::fs::create_dir_all(&state_dir).map_err(|source| Error::Io {
        what: "cannot create",
        path: state_dir.clone(),
        source,
    })?;
    // Certificates that cannot be used stop the role here, not at its first call.
    let api = Arc::new(config.api.connect_in(&registry)?);
    // The firehose falls back to the API token; with client credentials it has its own.
    let token = if config.firehose.token.is_empty() && config.firehose.client_id.is_empty() {
        api.token().await.map_err(|message| {
            let field = if config.api.token_file.is_some() {
                "token_file"
            } else {
                "token"
            };
            Error::Config(hydrant_runtime::invalid(field, message))
        })?
    } else {
        String::new()
    };

    let emitter_stop = CancellationToken::new();
    let _emitter_guard = emitter_stop.clone().drop_guard();
    let emitter = config.telemetry.start(&registry, emitter_stop.clone());

    let clock = Clock::start();
    let windows: SharedWindows = Arc::new(Mutex::new(
        Windows::with_clock(config.windows.clone(), clock.base, clock.base_unix)?
            .with_registry(&registry),
    ));
    let engine: SharedEngine = Arc::new(Mutex::new(Engine::new()));
    let bad_files = registry.counter(
        "slo.dropped",
        "Notices and records the SLO alerter did not keep, by reason",
        &[("reason", "bad_state_file")],
    );
    let restored = {
        let (now, _) = clock.now();
        store::load_all(
            &state_dir,
            &mut lock(&engine),
            &mut lock(&windows),
            now,
            &bad_files,
        )
    };
    tracing::info!(restored, dir = %state_dir.display(), "SLO state restored");

    let tasks = shutdown.child_token();
    let _tasks_guard = tasks.clone().drop_guard();
    let mut firehose = config.firehose.clone();
    if firehose.token.is_empty() {
        firehose.token.clone_from(&token);
    }
    let subscription = Subscription::Firehose {
        subscription_id: config.subscription_id.clone(),
    };
    let driver = tokio::spawn(hydrant_windows::drive(
        firehose,
        subscription,
        Arc::clone(&windows),
        tasks.clone(),
    ));
    tokio::spawn(poll_specs(
        config.clone(),
        Arc::clone(&api),
        Arc::clone(&engine),
        registry.clone(),
        tasks.clone(),
    ));
    let webhooks = webhook::Webhooks::spawn(&config.webhook, &registry, tasks.clone());

    let keys = if config.status_auth {
        let keys = Arc::new(
            // With tls the keys come over the role's own mutual-TLS connections, from a
            // server proving the cloudcontroller identity (never plain HTTP).
            hydrant_auth::TokenKeys::new(
                config.token_key_sources(api.key_transport()),
                Arc::new(hydrant_auth::Unobserved),
            )
            .map_err(|e| {
                Error::Config(hydrant_runtime::invalid("token_keys_url", e.to_string()))
            })?,
        );
        tokio::spawn(
            Arc::clone(&keys).refresh(Duration::from_secs(300), tasks.clone().cancelled_owned()),
        );
        Some(keys)
    } else {
        tracing::warn!(
            "status_auth = false: /v1/slos shows every app's SLOs to anyone who can connect"
        );
        None
    };
    listeners.mount_admin(status::routes(Arc::clone(&engine), keys, &registry));

    let notices_sent = registry.counter("slo.notices", "Alerts started or resolved", &[]);
    let mut evaluate = tokio::time::interval(Config::secs(config.evaluate_interval_secs));
    let mut flush = tokio::time::interval(Config::secs(config.flush_interval_secs));
    evaluate.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    flush.reset();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = evaluate.tick() => {
                let notices = evaluate_once(&clock, &windows, &engine, emitter.as_ref());
                for n in &notices {
                    notices_sent.inc();
                    announce(n, emitter.as_ref(), &webhooks);
                }
            }
            _ = flush.tick() => flush_state(&state_dir, &engine, &windows),
        }
    }
    tasks.cancel();
    let _ = driver.await;
    flush_state(&state_dir, &engine, &windows);
    emitter_stop.cancel();
    if let Some(emitter) = &emitter {
        emitter.stopped().await;
    }
    Ok(())
}

fn flush_state(dir: &std::path::Path, engine: &SharedEngine, windows: &SharedWindows) {
    let engine = lock(engine);
    let windows = lock(windows);
    let failed = store::flush(dir, &engine, &windows);
    if failed > 0 {
        tracing::warn!(failed, "some SLO state files were not written");
    }
}

/// One evaluation: notices to announce; budget gauges emitted on the way.
fn evaluate_once(
    clock: &Clock,
    windows: &SharedWindows,
    engine: &SharedEngine,
    emitter: Option<&Emitter>,
) -> Vec<Notice> {
    let (now, unix) = clock.now();
    let mut engine = lock(engine);
    let notices = {
        let windows = lock(windows);
        engine.evaluate(&windows, now, unix)
    };
    if let Some(emitter) = emitter {
        for app in engine.statuses() {
            for s in &app.slos {
                let mut metrics: Vec<(String, f64, &str)> = vec![
                    (
                        format!("slo.{}.budget_remaining", s.name),
                        s.budget_remaining,
                        "ratio",
                    ),
                    (
                        format!("slo.{}.alerts_firing", s.name),
                        s.alerts.len() as f64,
                        "count",
                    ),
                ];
                if let Some(sli) = s.sli_1h {
                    metrics.push((format!("slo.{}.sli_1h", s.name), sli, "percent"));
                }
                for w in &s.burn_rates {
                    if let Some(rate) = w.rate {
                        metrics.push((format!("slo.{}.burn_rate_{}", s.name, w.window), rate, "x"));
                    }
                }
                let refs: Vec<(&str, f64, &str)> = metrics
                    .iter()
                    .map(|(n, v, u)| (n.as_str(), *v, *u))
                    .collect();
                emitter.gauge(&app.app_guid, "", &refs, &[("slo", s.name.as_str())]);
            }
        }
    }
    notices
}

/// The `SLO` log line for a notice.
#[must_use]
pub fn log_line(n: &Notice) -> String {
    let mut text = format!(
        "SLO {} ({} {}%): {} {}",
        n.slo.name,
        n.slo.sli.kind(),
        n.slo.objective,
        n.severity.as_str().to_uppercase(),
        if n.firing { "FIRING" } else { "resolved" },
    );
    if n.firing {
        let _ = write!(text, ", burn rate {}", n.rule);
    } else {
        let _ = write!(
            text,
            " after {}s (was {})",
            n.at.saturating_sub(n.since),
            n.rule
        );
    }
    let rates: Vec<String> = n
        .burn_rates
        .iter()
        .filter_map(|(w, r)| r.map(|r| format!("{w} {r:.1}x")))
        .collect();
    if !rates.is_empty() {
        let _ = write!(text, "; now {}", rates.join(", "));
    }
    let _ = write!(
        text,
        "; {:.1}% of the {}-day error budget left",
        n.budget_remaining * 100.0,
        n.slo.period_days
    );
    text
}

/// The webhook body for a notice.
#[must_use]
pub fn webhook_body(n: &Notice) -> serde_json::Value {
    let rates: serde_json::Map<String, serde_json::Value> = n
        .burn_rates
        .iter()
        .map(|(w, r)| ((*w).to_owned(), serde_json::json!(r)))
        .collect();
    serde_json::json!({
        "status": if n.firing { "firing" } else { "resolved" },
        "severity": n.severity.as_str(),
        "app_guid": n.app_guid,
        "app_name": n.app_name,
        "slo": n.slo.name,
        "sli": n.slo.sli.kind(),
        "objective": n.slo.objective,
        "period_days": n.slo.period_days,
        "rule": n.rule,
        "since": n.since,
        "at": n.at,
        "burn_rates": rates,
        "budget_remaining": n.budget_remaining,
    })
}

fn announce(n: &Notice, emitter: Option<&Emitter>, webhooks: &webhook::Webhooks) {
    let line = log_line(n);
    tracing::info!(app = %n.app_guid, "{line}");
    if let Some(emitter) = emitter {
        emitter.log(&n.app_guid, "", SOURCE_TYPE, line.as_bytes(), n.firing);
    }
    if let Some(url) = &n.slo.webhook_url {
        let body = serde_json::to_vec(&webhook_body(n)).unwrap_or_default();
        webhooks.send(url, body);
    }
}

async fn poll_specs(
    config: Config,
    api: Arc<hydrant_runtime::ApiClient>,
    engine: SharedEngine,
    registry: Registry,
    shutdown: CancellationToken,
) {
    let failures = registry.counter(
        "slo.poll_failures",
        "SLO fetches from the cloud controller that failed",
        &[],
    );
    let apps = registry.gauge("slo.apps", "Apps with SLOs", "count", &[]);
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let mut tick = tokio::time::interval(Config::secs(config.poll_interval_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let client = match api.authorized().await {
            Ok(client) => client,
            Err(why) => {
                failures.inc();
                tracing::warn!("cannot fetch SLOs: {why}");
                continue;
            }
        };
        match tokio::time::timeout(timeout, client.list_slos()).await {
            Ok(Ok(list)) => {
                apps.set(list.iter().filter(|a| !a.slos.is_empty()).count() as f64);
                lock(&engine).set_specs(list);
            }
            Ok(Err(e)) => {
                failures.inc();
                tracing::warn!(error = %e, "cannot fetch SLOs; keeping the last copy");
            }
            Err(_) => {
                failures.inc();
                tracing::warn!("fetching SLOs timed out; keeping the last copy");
            }
        }
    }
}
