//! The feed: tasks that read the firehose (or each app's stream), the log cache and the API,
//! and hand what they read to the screen over one bounded channel.
//!
//! Flow: operator mode → one firehose subscription; developer mode → one stream per app and
//! per service instance the token may see (each with its own short-lived log token, renewed
//! when refused).
//! Each stream connects first, then reads the last minute from the log cache up to the moment
//! it connected ([`Feed::History`]), then forwards live batches. An API poller sends
//! [`ApiSnapshot`]s every few seconds.
//!
//! A history read that fails for a reason time can mend (a timeout, a refused connection, a
//! 5xx: a busy or briefly stalled platform) is tried again for up to [`HISTORY_PATIENCE`]
//! rather than taken as "nothing happened": the first screen is the only time that history is
//! read, so a read given up silently would leave the console without it for good. Live data
//! waits meanwhile without loss (the client asks for cursors, so an edge whose queue for it
//! would overflow closes the stream and the client resumes from the dopplers' rings). What still
//! fails after that is said on screen.
//!
//! Invariants: the channel to the screen is bounded; a live batch that does not fit is
//! dropped and counted (the count is shown on screen), never queued without bound; history,
//! API snapshots, gaps and connection changes wait for room instead, because losing them would
//! make the screen lie rather than lag. No task here touches the terminal.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use hydrant_api::services::ServiceInstance;
use hydrant_api::{App, Client, EventFilter};
use hydrant_envelope::v2;
use hydrant_firehose_client::{
    Batch, ClientConfig, Error as StreamError, FirehoseClient, Kind, RecentQuery, StreamEvent,
    Subscription, recent,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::state::{ApiSnapshot, Feed, StreamChange};

/// Messages queued between the feed tasks and the screen.
pub(crate) const CHANNEL: usize = 256;

/// Most apps streamed at once in developer mode (each is one WebSocket).
pub(crate) const MAX_APP_STREAMS: usize = 100;

/// Most apps whose history is read at start in operator mode.
const MAX_HISTORY_APPS: usize = 20;

/// Most platform sources whose metrics history is read at start.
const MAX_HISTORY_SOURCES: usize = 50;

/// How far back history goes: a little over the longest rate window (60 s).
const HISTORY_NS: i64 = 65_000_000_000;

/// How far back component metrics go (a few reports each).
const COMPONENT_HISTORY_NS: i64 = 30_000_000_000;

/// Deadline of one API call.
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the history read at start keeps trying reads that failed for a reason time can
/// mend (the platform's own 5 s deadlines pass while it is starved of CPU).
const HISTORY_PATIENCE: Duration = Duration::from_secs(20);

/// The first pause between attempts of a failed history read; it doubles up to
/// [`HISTORY_RETRY_MAX`].
const HISTORY_RETRY: Duration = Duration::from_millis(250);

/// The longest pause between attempts of a failed history read.
const HISTORY_RETRY_MAX: Duration = Duration::from_secs(2);

/// Most apps whose instance stats are polled each round.
const MAX_STATS_APPS: usize = 100;

/// Most apps whose policy and SLOs are polled one by one (developer mode).
const MAX_PER_APP_POLLS: usize = 20;

/// Audit events kept from each poll.
const MAX_AUDIT: usize = 500;

/// What the API poller last listed, for the developer-mode streams.
#[derive(Debug, Clone, Default)]
pub(crate) struct Listing {
    /// Every app the token may see.
    pub apps: Vec<App>,
    /// Every service instance the token may see.
    pub services: Vec<ServiceInstance>,
}

/// What one per-source stream follows; each has its own kind of log token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Followed {
    /// An app (`GET /v3/apps/{guid}/log_token`).
    App,
    /// A service instance: its `SVC` lines and its broker's gauges.
    Service,
}

/// Which way the console reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reading {
    /// The whole firehose (admin / firehose scope).
    Firehose,
    /// One stream per app (any developer).
    AppStreams,
}

/// What every feed task shares.
#[derive(Debug, Clone)]
pub(crate) struct Feeder {
    pub tx: mpsc::Sender<Feed>,
    pub dropped: Arc<AtomicU64>,
    pub shutdown: CancellationToken,
}

impl Feeder {
    /// Sends something the screen must not miss; false once the screen is gone.
    async fn send(&self, feed: Feed) -> bool {
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            sent = self.tx.send(feed) => sent.is_ok(),
        }
    }

    /// Offers a live batch; a full channel drops it and counts its envelopes.
    fn offer(&self, batch: Batch) -> bool {
        let n = batch.len() as u64;
        match self.tx.try_send(Feed::Batch(batch)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(n, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// How a stream ended.
enum Ended {
    /// The console is shutting down.
    Shutdown,
    /// The stream gave up for good.
    Fatal(StreamError),
}

/// What a history read at start found: the envelopes, oldest first, and the reads that failed
/// even after [`HISTORY_PATIENCE`].
#[derive(Debug, Default)]
struct History {
    envelopes: Vec<v2::Envelope>,
    failed: Vec<String>,
}

impl History {
    fn add(&mut self, other: Self) {
        self.envelopes.extend(other.envelopes);
        self.failed.extend(other.failed);
    }

    /// What the screen is told when some of the history could not be read.
    fn notice(&self) -> Option<String> {
        let first = self.failed.first()?;
        Some(format!(
            "history before the console started is incomplete: {} read(s) failed for {} s \
             (first: {first})",
            self.failed.len(),
            HISTORY_PATIENCE.as_secs()
        ))
    }
}

/// Why one attempt of a history read failed, and whether another attempt may succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failed {
    text: String,
    again: bool,
}

impl Failed {
    fn api(what: &str, e: &hydrant_api::Error) -> Self {
        // No status: no answer at all (refused, reset, timed out).
        let again = e.status().is_none_or(|s| s == 429 || s >= 500);
        Self {
            text: format!("{what}: {e}"),
            again,
        }
    }

    fn stream(what: &str, e: &StreamError) -> Self {
        let again = match e {
            StreamError::Timeout { .. } | StreamError::Connect { .. } => true,
            StreamError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        };
        Self {
            text: format!("{what}: {e}"),
            again,
        }
    }

    fn no_answer(what: &str) -> Self {
        Self {
            text: format!("{what}: no answer in {} s", API_TIMEOUT.as_secs()),
            again: true,
        }
    }
}

/// Runs `read` until it succeeds, fails in a way another attempt cannot mend, or `deadline`
/// passes; then the last failure.
async fn patiently<T, F, Fut>(deadline: tokio::time::Instant, mut read: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failed>>,
{
    let mut pause = HISTORY_RETRY;
    loop {
        let failed = match tokio::time::timeout_at(deadline, read()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(failed)) => failed,
            Err(_) => {
                return Err(format!("no answer within {} s", HISTORY_PATIENCE.as_secs()));
            }
        };
        if !failed.again || tokio::time::Instant::now() + pause >= deadline {
            return Err(failed.text);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(HISTORY_RETRY_MAX);
    }
}

/// An API call within [`API_TIMEOUT`], tried [`patiently`].
async fn api_patiently<T, F, Fut>(
    deadline: tokio::time::Instant,
    what: &str,
    mut call: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, hydrant_api::Error>>,
{
    patiently(deadline, || {
        let call = call();
        async move {
            match tokio::time::timeout(API_TIMEOUT, call).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) => Err(Failed::api(what, &e)),
                Err(_) => Err(Failed::no_answer(what)),
            }
        }
    })
    .await
}

/// Forwards one stream's events to the screen until shutdown or a fatal error. `history` runs
/// once, right after the first connection, with the moment it connected (UNIX ns).
async fn forward<F, Fut>(
    mut client: FirehoseClient,
    feeder: &Feeder,
    mut history: Option<F>,
) -> Ended
where
    F: FnOnce(i64) -> Fut,
    Fut: std::future::Future<Output = History>,
{
    let mut up = false;
    loop {
        let event = tokio::select! {
            () = feeder.shutdown.cancelled() => return Ended::Shutdown,
            event = client.next() => event,
        };
        let Some(event) = event else {
            return Ended::Shutdown;
        };
        let alive = match event {
            StreamEvent::Batch(batch) => feeder.offer(batch),
            StreamEvent::Gap(gap) => feeder.send(Feed::Gap(gap)).await,
            StreamEvent::Connected => {
                up = true;
                let mut ok = feeder.send(Feed::Stream(StreamChange::Up)).await;
                if let Some(read) = history.take() {
                    // Live envelopes wait in the client's bounded queue (and then the edge's)
                    // while history is read, so they land after it, in order.
                    let history = read(hydrant_envelope::now_nanos()).await;
                    if !history.envelopes.is_empty() {
                        ok &= feeder
                            .send(Feed::History(Batch::from_envelopes(&history.envelopes)))
                            .await;
                    }
                    if let Some(text) = history.notice() {
                        ok &= feeder.send(Feed::Stream(StreamChange::Notice(text))).await;
                    }
                }
                ok
            }
            StreamEvent::Closed { code, reason } if up => {
                up = false;
                let text = format!("closed by the firehose ({code}: {reason})");
                feeder.send(Feed::Stream(StreamChange::Down(text))).await
            }
            StreamEvent::Disconnected { reason, retry_in } if up => {
                up = false;
                let text = format!("{reason}; retrying in {:.1} s", retry_in.as_secs_f64());
                feeder.send(Feed::Stream(StreamChange::Down(text))).await
            }
            StreamEvent::Fatal(error) => {
                if up {
                    feeder
                        .send(Feed::Stream(StreamChange::Down(error.to_string())))
                        .await;
                }
                return Ended::Fatal(error);
            }
            _ => true,
        };
        if !alive {
            return Ended::Shutdown;
        }
    }
}

/// One recent read of `source`, tried [`patiently`].
async fn recent_patiently(
    config: &ClientConfig,
    source: &str,
    query: &RecentQuery,
    deadline: tokio::time::Instant,
) -> History {
    let read = patiently(deadline, || async {
        recent(config, source, query)
            .await
            .map_err(|e| Failed::stream(&format!("recent envelopes of {source}"), &e))
    });
    match read.await {
        Ok(envelopes) => History {
            envelopes,
            failed: Vec::new(),
        },
        Err(e) => History {
            envelopes: Vec::new(),
            failed: vec![e],
        },
    }
}

/// The newest minute of one source from the log cache, oldest first, up to `until` (UNIX ns):
/// router timers in one read, logs, gauges and events in another, so a chatty app's logs do not
/// crowd out its requests.
async fn app_history(
    config: &ClientConfig,
    source: &str,
    until: i64,
    deadline: tokio::time::Instant,
) -> History {
    let query = |types: Vec<Kind>| RecentQuery {
        start_time: Some(until.saturating_sub(HISTORY_NS).max(0)),
        end_time: Some(until),
        envelope_types: types,
        limit: Some(hydrant_firehose_client::MAX_RECENT_LIMIT),
        descending: true,
    };
    let timers = query(vec![Kind::Timer]);
    let rest = query(vec![Kind::Log, Kind::Gauge, Kind::Event]);
    let (mut out, b) = tokio::join!(
        recent_patiently(config, source, &timers, deadline),
        recent_patiently(config, source, &rest, deadline)
    );
    out.add(b);
    out.envelopes.sort_by_key(|e| e.timestamp);
    out
}

/// The last reports of a platform component (counters and gauges), oldest first.
async fn component_history(
    config: &ClientConfig,
    source: &str,
    until: i64,
    deadline: tokio::time::Instant,
) -> History {
    let query = RecentQuery {
        start_time: Some(until.saturating_sub(COMPONENT_HISTORY_NS).max(0)),
        end_time: Some(until),
        envelope_types: vec![Kind::Counter, Kind::Gauge],
        limit: Some(hydrant_firehose_client::MAX_RECENT_LIMIT),
        descending: true,
    };
    let mut out = recent_patiently(config, source, &query, deadline).await;
    out.envelopes.sort_by_key(|e| e.timestamp);
    out
}

/// Source ids the log cache holds (`GET /api/v1/meta`): one attempt.
async fn cached_sources(config: &ClientConfig) -> Result<Vec<String>, Failed> {
    const WHAT: &str = "the log cache's sources";
    let url = format!("{}/api/v1/meta", config.url.trim_end_matches('/'));
    let failed = |e: reqwest::Error| Failed {
        text: format!("{WHAT}: {e}"),
        // No answer, or a 5xx: the edge may answer once it is less busy.
        again: e.status().is_none_or(|s| s.is_server_error()),
    };
    let http = reqwest::Client::builder()
        .timeout(API_TIMEOUT)
        .build()
        .map_err(failed)?;
    let response = http
        .get(url)
        .bearer_auth(&config.token)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(failed)?;
    let body = response.json::<serde_json::Value>().await.map_err(failed)?;
    Ok(body
        .get("meta")
        .and_then(|m| m.as_object())
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default())
}

/// Operator mode: the firehose, with history for the busiest-looking apps and every platform
/// component. Returns the error when the firehose refuses the token.
pub(crate) async fn firehose(
    config: ClientConfig,
    api: Option<Client>,
    feeder: Feeder,
) -> Result<(), StreamError> {
    feeder.send(Feed::Stream(StreamChange::Wanted(1))).await;
    let subscription = Subscription::Firehose {
        subscription_id: format!("hydrant-top-{:016x}", subscription_suffix()),
    };
    let client = FirehoseClient::connect(config.clone(), subscription)?;
    let history = {
        let config = config.clone();
        move |until: i64| async move {
            let deadline = tokio::time::Instant::now() + HISTORY_PATIENCE;
            let mut history = History::default();
            let mut listed = |what: Result<Vec<String>, String>| {
                what.unwrap_or_else(|e| {
                    history.failed.push(e);
                    Vec::new()
                })
            };
            let (apps, services, cached) = match &api {
                Some(api) => {
                    let (apps, services, cached) = tokio::join!(
                        api_patiently(deadline, "listing apps", || api.list_apps()),
                        // Service instances read like apps: their SVC lines and their gauges.
                        // A controller without services answers 404: none, not a failure.
                        api_patiently(deadline, "listing service instances", || async {
                            match api.list_service_instances(None, None).await {
                                Err(e) if e.is_not_found() => Ok(Vec::new()),
                                other => other,
                            }
                        }),
                        patiently(deadline, || cached_sources(&config)),
                    );
                    (
                        listed(apps.map(|l| l.into_iter().map(|a| a.guid).collect())),
                        listed(services.map(|l| l.into_iter().map(|s| s.guid).collect())),
                        listed(cached),
                    )
                }
                None => (
                    Vec::new(),
                    Vec::new(),
                    listed(patiently(deadline, || cached_sources(&config)).await),
                ),
            };
            let services: Vec<String> = services.into_iter().take(MAX_HISTORY_APPS).collect();
            let sources: Vec<String> = cached
                .into_iter()
                .filter(|s| !apps.contains(s) && !services.contains(s))
                .take(MAX_HISTORY_SOURCES)
                .collect();
            let app_reads = apps
                .iter()
                .take(MAX_HISTORY_APPS)
                .chain(&services)
                .map(|a| app_history(&config, a, until, deadline));
            let source_reads = sources
                .iter()
                .map(|s| component_history(&config, s, until, deadline));
            let (a, b) = tokio::join!(join_all(app_reads), join_all(source_reads));
            for read in a.into_iter().chain(b) {
                history.add(read);
            }
            history.envelopes.sort_by_key(|e| e.timestamp);
            history
        }
    };
    match forward(client, &feeder, Some(history)).await {
        Ended::Shutdown => Ok(()),
        Ended::Fatal(e) => Err(e),
    }
}

/// Tells this console's subscription apart from other consoles' (each must get the whole
/// stream, not share a shard group): the start time mixed with the process id.
fn subscription_suffix() -> u64 {
    let nanos = hydrant_envelope::now_nanos().unsigned_abs();
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Developer mode: one stream per app, then per service instance, in `listed` (kept in step
/// with the API poller's lists; at most [`MAX_APP_STREAMS`] in all), each authorised by its
/// own log token.
pub(crate) async fn app_streams(
    base: ClientConfig,
    api: Client,
    mut listed: watch::Receiver<Listing>,
    only: Option<String>,
    feeder: Feeder,
) {
    let mut running: HashMap<String, tokio::task::AbortHandle> = HashMap::new();
    let mut tasks = JoinSet::new();
    loop {
        let wanted = followed(&listed.borrow_and_update(), only.as_deref());
        running.retain(|guid, handle| {
            let keep = wanted.iter().any(|(g, _)| g == guid);
            if !keep {
                handle.abort();
            }
            keep
        });
        for (guid, followed) in &wanted {
            if running.contains_key(guid) {
                continue;
            }
            let handle = tasks.spawn(app_stream(
                base.clone(),
                api.clone(),
                guid.clone(),
                *followed,
                feeder.clone(),
            ));
            running.insert(guid.clone(), handle);
        }
        let n = u32::try_from(running.len()).unwrap_or(u32::MAX);
        if !feeder.send(Feed::Stream(StreamChange::Wanted(n))).await {
            break;
        }
        tokio::select! {
            () = feeder.shutdown.cancelled() => break,
            changed = listed.changed() => if changed.is_err() { break },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.abort_all();
}

/// The streams developer mode follows: the apps whose name contains `only` (all without it),
/// then every service instance, at most [`MAX_APP_STREAMS`] in all.
fn followed(listing: &Listing, only: Option<&str>) -> Vec<(String, Followed)> {
    let only = only.map(str::to_lowercase);
    let apps = listing
        .apps
        .iter()
        .filter(|a| {
            only.as_deref()
                .is_none_or(|f| a.name.to_lowercase().contains(f))
        })
        .map(|a| (a.guid.clone(), Followed::App));
    let services = listing
        .services
        .iter()
        .map(|s| (s.guid.clone(), Followed::Service));
    apps.chain(services).take(MAX_APP_STREAMS).collect()
}

/// One app's or service instance's stream, renewing its log token whenever the edge refuses it.
async fn app_stream(
    base: ClientConfig,
    api: Client,
    guid: String,
    followed: Followed,
    feeder: Feeder,
) {
    let mut history_done = false;
    let mut pause = Duration::from_millis(500);
    loop {
        let minted = async {
            match followed {
                Followed::App => api.log_token(&guid).await,
                Followed::Service => api.service_instance_log_token(&guid).await,
            }
        };
        let token = match tokio::time::timeout(API_TIMEOUT, minted).await {
            Ok(Ok(t)) => Some(t.token),
            // A controller without per-app tokens: the session's own token may do.
            Ok(Err(e)) if e.is_not_found() => None,
            _ => {
                tokio::select! {
                    () = feeder.shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        // A log token is renewed by this loop; the session's own token by its source.
        let config = match token {
            Some(token) => ClientConfig {
                token,
                token_source: None,
                ..base.clone()
            },
            None => base.clone(),
        };
        let Ok(client) = FirehoseClient::connect(
            config.clone(),
            Subscription::App {
                source_id: guid.clone(),
            },
        ) else {
            return;
        };
        let history = (!history_done).then(|| {
            let (config, guid) = (config.clone(), guid.clone());
            move |until: i64| async move {
                let deadline = tokio::time::Instant::now() + HISTORY_PATIENCE;
                app_history(&config, &guid, until, deadline).await
            }
        });
        history_done = true;
        match forward(client, &feeder, history).await {
            Ended::Shutdown => return,
            // An expired or revoked token: get a new one and reconnect.
            Ended::Fatal(StreamError::Unauthorized | StreamError::TokenExpired { .. }) => {
                pause = Duration::from_millis(500);
            }
            Ended::Fatal(e) => {
                let what = match followed {
                    Followed::App => "app",
                    Followed::Service => "service instance",
                };
                feeder
                    .send(Feed::Stream(StreamChange::Failed(format!(
                        "{what} stream {guid}: {e}"
                    ))))
                    .await;
                return;
            }
        }
    }
}

/// Polls the API every `every` and sends what it finds; keeps `listed` (for the
/// developer-mode streams) in step.
pub(crate) async fn api_poller(
    api: Client,
    admin: bool,
    every: Duration,
    listed: watch::Sender<Listing>,
    feeder: Feeder,
) {
    let http = reqwest::Client::builder().timeout(API_TIMEOUT).build().ok();
    let mut slo_base: Option<String> = None;
    loop {
        if slo_base.is_none()
            && let Ok(Ok(info)) = tokio::time::timeout(API_TIMEOUT, api.info()).await
        {
            slo_base = info.endpoints.get("slo").cloned();
        }
        let snapshot = poll(&api, admin, http.as_ref(), slo_base.as_deref()).await;
        if let Some(list) = &snapshot.apps {
            listed.send_modify(|l| l.apps.clone_from(list));
        }
        if !feeder.send(Feed::Api(Box::new(snapshot))).await {
            return;
        }
        // A controller without services answers 404: an empty list, not an error.
        let asked = tokio::time::timeout(API_TIMEOUT, api.list_service_instances(None, None));
        let services = match asked.await {
            Ok(Ok(list)) => Ok(list),
            Ok(Err(e)) if e.is_not_found() => Ok(Vec::new()),
            Ok(Err(e)) => Err(format!("service instances: {e}")),
            Err(_) => Err(format!(
                "service instances: no answer in {} s",
                API_TIMEOUT.as_secs()
            )),
        };
        if let Ok(list) = &services {
            listed.send_modify(|l| l.services.clone_from(list));
        }
        if !feeder.send(Feed::Services(services)).await {
            return;
        }
        tokio::select! {
            () = feeder.shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// `call` with the API deadline; the error as text.
async fn timed<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, hydrant_api::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(API_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer in {} s", API_TIMEOUT.as_secs())),
    }
}

/// One round of API reads.
async fn poll(
    api: &Client,
    admin: bool,
    http: Option<&reqwest::Client>,
    slo_base: Option<&str>,
) -> ApiSnapshot {
    let mut s = ApiSnapshot::default();
    let mut errors: Vec<String> = Vec::new();
    match timed("listing apps", api.list_apps()).await {
        Ok(apps) => s.apps = Some(apps),
        Err(e) => errors.push(e),
    }
    let apps: Vec<App> = s.apps.clone().unwrap_or_default();
    let stats = apps
        .iter()
        .take(MAX_STATS_APPS)
        .map(|a| timed("app stats", api.app_stats(&a.guid)));
    for result in join_all(stats).await {
        match result {
            Ok(stats) => s.stats.push(stats),
            Err(e) => errors.push(e),
        }
    }
    match timed("audit events", api.audit_events(&EventFilter::default())).await {
        Ok(mut events) => {
            let cut = events.len().saturating_sub(MAX_AUDIT);
            events.drain(..cut);
            s.audit = Some(events);
        }
        Err(e) => errors.push(e),
    }
    if admin {
        if let Ok(policies) = timed("policies", api.autoscaling_policies()).await {
            s.policies = Some(
                policies
                    .into_iter()
                    .map(|p| (p.app_guid, p.policy))
                    .collect(),
            );
        }
        if let Ok(slos) = timed("SLOs", api.list_slos()).await {
            s.slos = Some(slos);
        }
    } else {
        let few: Vec<&App> = apps.iter().take(MAX_PER_APP_POLLS).collect();
        let policies = join_all(few.iter().map(|a| api.autoscaling_policy(&a.guid))).await;
        s.policies = Some(
            few.iter()
                .zip(policies)
                .filter_map(|(a, p)| p.ok().map(|p| (a.guid.clone(), p)))
                .collect(),
        );
        let slos = join_all(few.iter().map(|a| api.app_slos(&a.guid))).await;
        s.slos = Some(slos.into_iter().filter_map(Result::ok).collect());
    }
    if let (Some(http), Some(base), Some(slos)) = (http, slo_base, &s.slos) {
        let with_slos = slos
            .iter()
            .filter(|x| !x.slos.is_empty())
            .take(MAX_STATS_APPS);
        let reads = with_slos.map(|x| {
            let url = format!("{}/v1/slos/{}", base.trim_end_matches('/'), x.app_guid);
            async move {
                // The alerter shows an app's status to a token that may read its logs.
                let token = match api.log_token(&x.app_guid).await {
                    Ok(t) => Some(t.token),
                    Err(_) => api.token().map(str::to_owned),
                };
                let mut request = http.get(url);
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
                let response = request.send().await.ok()?;
                if !response.status().is_success() {
                    return None;
                }
                response.json::<hydrant_api::slo::AppSloStatus>().await.ok()
            }
        });
        s.slo_status = join_all(reads).await.into_iter().flatten().collect();
    }
    if !errors.is_empty() {
        errors.dedup();
        s.error = Some(errors.join("; "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> Batch {
        let envs: Vec<v2::Envelope> = (0..n)
            .map(|i| v2::Envelope {
                source_id: "app".to_owned(),
                timestamp: i as i64 + 1,
                message: Some(v2::envelope::Message::Log(v2::Log {
                    payload: bytes::Bytes::from_static(b"x"),
                    r#type: 0,
                })),
                ..v2::Envelope::default()
            })
            .collect();
        Batch::from_envelopes(&envs)
    }

    #[test]
    fn developer_mode_follows_the_filtered_apps_and_every_service_instance() {
        let app = |guid: &str, name: &str| -> App {
            serde_json::from_value(serde_json::json!({
                "guid": guid, "name": name, "space_guid": "s", "space_name": "default",
                "state": "STARTED", "instances": 1, "memory_mb": 64, "disk_mb": 256,
                "env": {}, "health_check_type": "port", "routes": [],
                "created_at": 0, "updated_at": 0
            }))
            .unwrap()
        };
        let service = |guid: &str| -> ServiceInstance {
            serde_json::from_value(serde_json::json!({
                "guid": guid, "name": guid, "type": "managed", "space_guid": "s",
                "space_name": "default", "tags": [], "bound_apps": [], "created_at": 0,
                "last_operation": {"type": "create", "state": "succeeded", "updated_at": 0}
            }))
            .unwrap()
        };
        let listing = Listing {
            apps: vec![app("a1", "Demo"), app("a2", "worker")],
            services: vec![service("s1")],
        };
        assert_eq!(
            followed(&listing, Some("demo")),
            vec![
                ("a1".to_owned(), Followed::App),
                ("s1".to_owned(), Followed::Service)
            ]
        );
        let many = Listing {
            apps: (0..MAX_APP_STREAMS)
                .map(|i| app(&format!("a{i}"), "x"))
                .collect(),
            services: vec![service("s1")],
        };
        let all = followed(&many, None);
        assert_eq!(
            all.len(),
            MAX_APP_STREAMS,
            "the cap holds across both kinds"
        );
    }

    /// A read that answers with `script`'s failures in turn, then `Ok`; counts its attempts.
    fn scripted(
        script: Vec<Failed>,
        attempts: &AtomicU64,
    ) -> impl FnMut() -> std::future::Ready<Result<&'static str, Failed>> + '_ {
        move || {
            let n = attempts.fetch_add(1, Ordering::Relaxed);
            let usize_n = usize::try_from(n).unwrap();
            std::future::ready(match script.get(usize_n) {
                Some(failed) => Err(failed.clone()),
                None => Ok("ledger node ready"),
            })
        }
    }

    fn unavailable() -> Failed {
        Failed::stream(
            "recent envelopes of ledger",
            &StreamError::Status {
                what: "the recent-logs read",
                status: 503,
                body: "no doppler answered in time".to_owned(),
            },
        )
    }

    /// The platform stalled (its 5 s deadlines passed) while the console read its history at
    /// start: the reads are tried again and the history arrives, instead of a first screen
    /// that never shows the lines written before it started.
    #[tokio::test(start_paused = true)]
    async fn a_history_read_that_fails_while_the_platform_is_stalled_is_tried_again() {
        let attempts = AtomicU64::new(0);
        let deadline = tokio::time::Instant::now() + HISTORY_PATIENCE;
        let script = vec![
            Failed::no_answer("listing service instances"),
            unavailable(),
            unavailable(),
        ];
        let read = patiently(deadline, scripted(script, &attempts)).await;
        assert_eq!(read, Ok("ledger node ready"));
        assert_eq!(attempts.load(Ordering::Relaxed), 4);
    }

    /// A refusal time cannot mend (404, 403) is not asked again.
    #[tokio::test(start_paused = true)]
    async fn a_history_read_refused_for_good_is_not_tried_again() {
        let attempts = AtomicU64::new(0);
        let started = tokio::time::Instant::now();
        let gone = Failed::stream(
            "recent envelopes of ledger",
            &StreamError::NotFound {
                what: "app \"ledger\"".to_owned(),
            },
        );
        let read = patiently(
            started + HISTORY_PATIENCE,
            scripted(vec![gone; 5], &attempts),
        );
        let error = read.await.unwrap_err();
        assert!(error.contains("404"), "{error}");
        assert_eq!(attempts.load(Ordering::Relaxed), 1);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    /// A platform that stays down is given up on by the deadline, with its last error, and
    /// the screen is told the history is incomplete.
    #[tokio::test(start_paused = true)]
    async fn a_history_read_that_keeps_failing_ends_by_the_deadline_and_is_said_on_screen() {
        let attempts = AtomicU64::new(0);
        let started = tokio::time::Instant::now();
        let read = patiently(
            started + HISTORY_PATIENCE,
            scripted(vec![unavailable(); 1000], &attempts),
        );
        let error = read.await.unwrap_err();
        assert!(error.contains("503"), "{error}");
        assert!(started.elapsed() <= HISTORY_PATIENCE);
        assert!(started.elapsed() >= HISTORY_PATIENCE - HISTORY_RETRY_MAX);
        let tried = attempts.load(Ordering::Relaxed);
        assert!((5..=20).contains(&tried), "{tried} attempts in 20 s");
        // A read that never answers at all ends at the deadline too.
        let hung = patiently(started + HISTORY_PATIENCE * 2, || {
            std::future::pending::<Result<(), Failed>>()
        });
        let error = hung.await.unwrap_err();
        assert!(error.contains("no answer"), "{error}");
        assert_eq!(started.elapsed(), HISTORY_PATIENCE * 2);
        let history = History {
            envelopes: Vec::new(),
            failed: vec![error],
        };
        let notice = history.notice().unwrap();
        assert!(
            notice.contains("incomplete") && notice.contains("1 read(s)"),
            "{notice}"
        );
        assert_eq!(History::default().notice(), None);
    }

    #[tokio::test]
    async fn a_full_channel_drops_live_batches_and_counts_their_envelopes() {
        let (tx, mut rx) = mpsc::channel(2);
        let feeder = Feeder {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            shutdown: CancellationToken::new(),
        };
        assert!(feeder.offer(batch(3)));
        assert!(feeder.offer(batch(4)));
        // The screen is behind: the third batch does not fit and is counted, not queued.
        assert!(feeder.offer(batch(5)));
        assert_eq!(feeder.dropped.load(Ordering::Relaxed), 5);
        let Some(Feed::Batch(first)) = rx.recv().await else {
            panic!("the first batch was queued");
        };
        assert_eq!(first.len(), 3);
        // Room again: the next batch goes through; nothing was dropped for it.
        assert!(feeder.offer(batch(1)));
        assert_eq!(feeder.dropped.load(Ordering::Relaxed), 5);
        // Things the screen must not miss wait for room instead of being dropped.
        let waiting = tokio::spawn({
            let feeder = feeder.clone();
            async move { feeder.send(Feed::Stream(StreamChange::Up)).await }
        });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "a notice waits while the channel is full"
        );
        rx.recv().await.unwrap();
        assert!(waiting.await.unwrap());
        // Once the screen is gone the feed stops.
        drop(rx);
        assert!(!feeder.offer(batch(1)));
    }
}
