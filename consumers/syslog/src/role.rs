//! The syslog nozzle role: `run` reads the firehose and keeps every drain fed.
//!
//! Flow: [`FirehoseReader`] (shared subscription) → reader loop → the current [`Routes`]
//! (every configured drain, plus the platform's app drains looked up by `source_id`) → each
//! envelope encoded once per distinct [`EncoderOptions`] among the drains that want it → one
//! [`DestinationQueue`] per drain → one sender task per drain → the drain (TCP, TLS or
//! HTTPS). Beside it: the loss notifier (one `LGR` line per app and drain per interval), the
//! `/drains` status page (operators only, see `status`) and, in platform mode, the binding
//! poller and status reporter.
//!
//! Invariants: the reader never waits on a stuck drain — a push evicts that drain's oldest lines
//! and counts them, so a slow or dead drain costs only its own data (with a `cursor_file` the
//! reader waits for a drain that is delivering but far behind, since the firehose keeps what is
//! not read yet: `Keeper::pace`); finding an app's drains is one
//! hash lookup whatever the number of drains; a drain that is unbound stops at once and what it
//! held is counted as `dropped{reason="unbound"}`; on shutdown the drains get
//! `shutdown_drain_ms` to take what is queued and everything left is counted as
//! `dropped{reason="shutdown"}`; drains are named only by their masked URL.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hydrant_emitter::{Emitter, Registry};
use hydrant_nozzle_core::{
    Backoff, BreakerConfig, CircuitBreaker, CursorFile, DestinationQueue, FirehoseReader, Journal,
    Keeper, NozzleMetrics, Progress, QueueLimits, finish_senders, loss_notice, mask_url,
};
use rustls::ClientConfig;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::dial::Dialer;
use crate::drain::{DrainState, Tally};
use crate::transport::{Frames, Link, drive};
use crate::{Config, EncoderOptions, Error, HttpsSender, Scheme, TcpSender, encode};

/// The role's name in its metrics and self-telemetry.
pub const ROLE: &str = "nozzle-syslog";

/// `source_id`s remembered by the reader so queued frames share one allocation per app.
const MAX_INTERNED: usize = 10_000;

hydrant_runtime::role! {
    /// The syslog nozzle as a [`hydrant_runtime::Role`]: `hydrant run nozzle-syslog`, `hydrant nozzle
    /// syslog`, and the micro cloud's app drains.
    pub struct SyslogNozzle {
        name: "nozzle-syslog", config: Config, error: Error, admin: "127.0.0.1:14840" => admin_listen,
        registry: |c| Registry::new(ROLE, &c.instance_id),
        describe: |c| format!("{} drain(s), subscription {:?}", c.drains.len(), c.subscription_id),
        serve_with_listeners: serve,
    }
}

/// One drain's report: what `/drains` serves and what platform mode sends to the cloud
/// controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrainReport {
    /// `drains[i]` for a configured drain, the binding's guid for an app drain.
    pub key: String,
    /// The URL, credentials masked.
    pub url: String,
    /// The app an app drain belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_guid: Option<String>,
    /// Messages queued for the drain since it started: `received = sent + dropped +
    /// queue_depth + in_flight`.
    pub received: u64,
    /// Messages delivered since the drain started.
    pub sent: u64,
    /// Messages lost since the drain started, every reason.
    pub dropped: u64,
    /// Messages queued now.
    pub queue_depth: u64,
    /// Messages the sender holds now (taken from the queue, not yet sent or lost).
    pub in_flight: u64,
    /// Age of the oldest queued message, ms (absent when the queue is empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
    /// The last failure, credentials masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When a batch last got through, UNIX ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success_unix_ms: Option<u64>,
    /// Where the drain stands.
    pub state: DrainState,
}

/// One drain as the reader and the reporters see it.
#[derive(Debug)]
pub(crate) struct Drain {
    key: String,
    masked: String,
    app: Option<Arc<str>>,
    options: EncoderOptions,
    queue: Arc<DestinationQueue<Frames>>,
    tally: Arc<Tally>,
    stop: CancellationToken,
}

impl Drain {
    fn push(&self, frames: Frames) {
        let len = frames.bytes.len();
        self.tally.received(1);
        self.queue.push_with(frames, len, |item, reason| {
            self.tally.queue_lost(reason, item)
        });
    }

    fn report(&self) -> DrainReport {
        let books = self.tally.snapshot();
        let (depth, _) = self.queue.depth();
        let lag = self.queue.oldest_age();
        DrainReport {
            key: self.key.clone(),
            url: self.masked.clone(),
            app_guid: self.app.as_deref().map(str::to_owned),
            received: books.received,
            sent: books.sent,
            dropped: books.dropped,
            queue_depth: depth as u64,
            in_flight: books.in_flight,
            lag_ms: (depth > 0).then(|| u64::try_from(lag.as_millis()).unwrap_or(u64::MAX)),
            last_error: books.last_error,
            last_success_unix_ms: books.last_success_unix_ms,
            state: books.state,
        }
    }

    /// Stops the sender now and counts what was queued as `reason`.
    fn retire(&self, reason: &'static str) -> u64 {
        self.stop.cancel();
        self.queue.close();
        self.queue
            .discard_with(reason, |item| self.tally.queue_lost(reason, item))
    }
}

/// Which drains get which envelopes; rebuilt whenever the drain set changes and handed to the
/// reader whole.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    encodings: Vec<EncoderOptions>,
    /// Configured drains: every envelope.
    everyone: Vec<(usize, Arc<Drain>)>,
    /// App drains: the envelopes whose `source_id` is the key.
    by_app: HashMap<Arc<str>, Vec<(usize, Arc<Drain>)>>,
}

/// What a new drain is.
#[derive(Debug)]
pub(crate) struct DrainSpec {
    /// `drains[i]` or the binding guid; also the name in loss notices.
    pub key: String,
    /// The full URL (credentials included; only ever shown masked).
    pub url: String,
    /// Only this app's envelopes (app drains), or every envelope.
    pub app: Option<Arc<str>>,
    /// How its lines are written.
    pub options: EncoderOptions,
    /// May it resolve to a private address.
    pub allow_private: bool,
}

/// The shared settings every drain's sender is built from.
#[derive(Debug)]
struct Settings {
    queue: QueueLimits,
    retry: Backoff,
    breaker: BreakerConfig,
    timeout: Duration,
    tls: Arc<ClientConfig>,
    insecure: bool,
    registry: Registry,
    /// One set of metrics for all app drains: their number is the platform's business, so
    /// they do not each get series in the role's registry.
    app_drains: NozzleMetrics,
    /// With a cursor file: every drain stores through it around each batch it writes.
    journal: Option<Journal>,
}

/// The live drain set: adds, removes and the routes the reader follows.
#[derive(Debug)]
pub(crate) struct Fleet {
    settings: Settings,
    drains: BTreeMap<String, Arc<Drain>>,
    tasks: JoinSet<()>,
    routes: watch::Sender<Arc<Routes>>,
    /// Cancelled once the shutdown deadline has passed: held-back batches are dropped.
    senders_stop: CancellationToken,
}

impl Fleet {
    fn new(config: &Config, registry: &Registry, journal: Option<Journal>) -> Result<Self, Error> {
        Ok(Self {
            settings: Settings {
                queue: config.queue.clone(),
                retry: config.retry.clone(),
                breaker: config.breaker.clone(),
                timeout: Duration::from_millis(config.write_timeout_ms),
                tls: config.tls.client_config()?,
                insecure: config.tls.insecure_skip_verify,
                registry: registry.clone(),
                app_drains: NozzleMetrics::new(registry, "app-drains"),
                journal,
            },
            drains: BTreeMap::new(),
            tasks: JoinSet::new(),
            routes: watch::Sender::new(Arc::new(Routes::default())),
            senders_stop: CancellationToken::new(),
        })
    }

    /// Starts a drain (not yet routed: call [`Fleet::publish`]).
    pub(crate) fn add(&mut self, spec: DrainSpec) -> Result<(), Error> {
        let s = &self.settings;
        let url = crate::DrainUrl::parse(&spec.key, &spec.url)?;
        let dialer = Dialer {
            allow_private: spec.allow_private,
        };
        let link: Link = match url.scheme {
            Scheme::Syslog | Scheme::SyslogTls => {
                TcpSender::for_url(&url, &spec.url, dialer, &s.tls, s.insecure, s.timeout)?.into()
            }
            Scheme::Https => {
                HttpsSender::for_url(&url, &spec.url, dialer, &s.tls, s.insecure, s.timeout)?.into()
            }
        };
        let tally = if spec.app.is_some() {
            // Per-binding counters live as long as the binding, outside the role's registry.
            Tally::new(
                NozzleMetrics::new(&Registry::new(ROLE, &spec.key), &spec.url),
                Some(s.app_drains.clone()),
            )
            .counting_resends(&s.registry)
        } else {
            Tally::new(NozzleMetrics::new(&s.registry, &spec.url), None)
                .counting_resends(&s.registry)
        };
        let tally = Arc::new(
            tally
                .paced_for(s.queue.max_items)
                .journaled(s.journal.clone()),
        );
        let queue = Arc::new(DestinationQueue::new(
            s.queue.clone(),
            tally.metrics().clone(),
        ));
        let drain = Arc::new(Drain {
            key: spec.key.clone(),
            masked: mask_url(&spec.url),
            app: spec.app,
            options: spec.options,
            queue: Arc::clone(&queue),
            tally: Arc::clone(&tally),
            stop: CancellationToken::new(),
        });
        let (retry, breaker) = (s.retry.clone(), CircuitBreaker::new(s.breaker.clone()));
        let (senders_stop, stop) = (self.senders_stop.clone(), drain.stop.clone());
        self.tasks.spawn(async move {
            drive(&queue, link, &retry, breaker, &tally, &senders_stop, &stop).await;
        });
        if let Some(old) = self.drains.insert(spec.key, drain) {
            old.retire("unbound");
        }
        Ok(())
    }

    /// Stops drain `key` (not yet unrouted: call [`Fleet::publish`]); its queue is counted as
    /// `unbound`.
    pub(crate) fn remove(&mut self, key: &str) {
        if let Some(drain) = self.drains.remove(key) {
            let lost = drain.retire("unbound");
            tracing::info!(drain = %drain.masked, key, lost, "drain unbound");
        }
        // Reap senders that have finished so the set does not grow with churn.
        while self.tasks.try_join_next().is_some() {}
    }

    /// Hands the reader routes for the current drain set.
    pub(crate) fn publish(&self) {
        let mut encodings: Vec<EncoderOptions> = Vec::new();
        let mut index: HashMap<&EncoderOptions, usize> = HashMap::new();
        let mut routes = Routes::default();
        for drain in self.drains.values() {
            let enc = *index.entry(&drain.options).or_insert_with(|| {
                encodings.push(drain.options.clone());
                encodings.len() - 1
            });
            match &drain.app {
                Some(app) => routes
                    .by_app
                    .entry(Arc::clone(app))
                    .or_default()
                    .push((enc, Arc::clone(drain))),
                None => routes.everyone.push((enc, Arc::clone(drain))),
            }
        }
        routes.encodings = encodings;
        self.routes.send_replace(Arc::new(routes));
    }

    fn subscribe(&self) -> watch::Receiver<Arc<Routes>> {
        self.routes.subscribe()
    }

    /// Every drain's report, in key order.
    pub(crate) fn reports(&self) -> Vec<DrainReport> {
        self.drains.values().map(|d| d.report()).collect()
    }

    fn all(&self) -> Vec<Arc<Drain>> {
        self.drains.values().cloned().collect()
    }

    fn app_drain_totals(&self) -> (usize, Duration) {
        self.drains
            .values()
            .filter(|d| d.app.is_some())
            .fold((0, Duration::ZERO), |(depth, lag), d| {
                (depth + d.queue.depth().0, lag.max(d.queue.oldest_age()))
            })
    }
}

pub(crate) type SharedFleet = Arc<Mutex<Fleet>>;

pub(crate) fn lock(fleet: &SharedFleet) -> std::sync::MutexGuard<'_, Fleet> {
    hydrant_runtime::lock(fleet)
}

/// Runs the nozzle until `shutdown` is cancelled (or the firehose refuses it for good), then
/// gives the drains `shutdown_drain_ms` to take what is queued and returns.
async fn serve(
    config: Config,
    listeners: &hydrant_runtime::Listeners,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    // Everything that can refuse the config does so before any task starts.
    let (cursor_file, saved) = CursorFile::open(config.cursor_file.as_deref())?;
    let reader = FirehoseReader::resume(
        config.firehose.clone(),
        &config.subscription_id,
        &registry,
        saved.as_ref(),
    )?;
    // Drains store the cursor around each batch they write: a syslog write cannot be taken
    // back, so the file must never be behind what a drain may have delivered.
    let journal = cursor_file.map(Journal::new);
    let mut fleet = Fleet::new(&config, &registry, journal.clone())?;
    let keys = crate::status::keys(&config)?;
    for (index, url) in config.drains.iter().enumerate() {
        let (_, options) = config.drain(index)?;
        fleet.add(DrainSpec {
            key: format!("drains[{index}]"),
            url: url.clone(),
            app: None,
            options,
            allow_private: true,
        })?;
    }
    fleet.publish();
    let routes = fleet.subscribe();
    let fleet: SharedFleet = Arc::new(Mutex::new(fleet));

    // The emitter outlives the drains so the last loss notices and metrics still leave.
    let telemetry_stop = CancellationToken::new();
    let telemetry = config.telemetry.start(&registry, telemetry_stop.clone());
    let background = CancellationToken::new();
    crate::status::mount(listeners, Arc::clone(&fleet), keys, &registry, &background);
    let notifier = tokio::spawn(notify_losses(
        Arc::clone(&fleet),
        telemetry.clone(),
        Duration::from_millis(config.loss_notice_interval_ms),
        background.clone(),
    ));

    let platform = crate::platform::start(&config, &registry, &fleet, background.clone());
    tracing::info!(
        subscription_id = %config.subscription_id,
        drains = config.drains.len(),
        platform = config.platform.is_some(),
        "syslog nozzle reading the firehose"
    );

    // The cursor is stored only once every drain dealt with a frame (at-least-once).
    let keeper = Keeper::with_journal(journal);
    let read = read_firehose(reader, routes, keeper.as_ref(), &shutdown).await;
    // Whatever ended the reader, stop the rest too.
    shutdown.cancel();
    if let Some(platform) = platform {
        background.cancel();
        let _ = platform.await;
    }

    let (drains, mut tasks, senders_stop) = {
        let mut f = lock(&fleet);
        (
            f.all(),
            std::mem::take(&mut f.tasks),
            f.senders_stop.clone(),
        )
    };
    for drain in &drains {
        drain.queue.close();
    }
    let deadline = Duration::from_millis(config.shutdown_drain_ms);
    finish_senders(&mut tasks, deadline, &senders_stop, || {
        let mut lost = 0;
        for drain in &drains {
            lost += drain.retire("shutdown");
        }
        tracing::warn!(lost, "drains did not take everything before the deadline");
    })
    .await;
    background.cancel();
    // What the drains delivered while shutting down moves the cursor one last time.
    if let Some(keeper) = keeper {
        keeper.finish().await;
    }
    let _ = notifier.await;
    // Final words: what was lost during shutdown, then the metrics.
    tell_losses(&drains, telemetry.as_ref());
    telemetry_stop.cancel();

    if let Some(telemetry) = &telemetry {
        telemetry.stopped().await;
    }
    read
}

/// Every `interval`, tells each app how many of its messages each drain lost since the last
/// notice; also refreshes the app drains' aggregate depth and lag gauges.
async fn notify_losses(
    fleet: SharedFleet,
    emitter: Option<Emitter>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let drains = {
            let f = lock(&fleet);
            let (depth, lag) = f.app_drain_totals();
            f.settings.app_drains.set_depth(depth, 0);
            f.settings.app_drains.set_lag(lag);
            f.all()
        };
        tell_losses(&drains, emitter.as_ref());
    }
}

fn tell_losses(drains: &[Arc<Drain>], emitter: Option<&Emitter>) {
    for drain in drains {
        let (losses, unattributed) = drain.tally.take_losses();
        for (app, lost) in losses {
            match emitter {
                Some(emitter) => loss_notice(emitter, &app, &drain.key, &drain.masked, lost),
                None => tracing::warn!(
                    app = %app,
                    drain = %drain.masked,
                    lost,
                    "a drain lost messages (no [telemetry] agent, so the app is not told)"
                ),
            }
        }
        if unattributed > 0 {
            tracing::warn!(drain = %drain.masked, lost = unattributed, "a drain lost messages");
        }
    }
}

/// Keeps one `Arc<str>` per recently seen `source_id`, so the frames queued for many drains
/// do not each allocate the name.
#[derive(Default)]
struct Interner(HashMap<Box<str>, Arc<str>>);

impl Interner {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return Arc::clone(a);
        }
        if self.0.len() >= MAX_INTERNED {
            self.0.clear();
        }
        let a: Arc<str> = Arc::from(s);
        self.0.insert(s.into(), Arc::clone(&a));
        a
    }
}

/// The reader loop: batches in, frames pushed to every drain that wants them.
async fn read_firehose(
    mut reader: FirehoseReader,
    mut routes: watch::Receiver<Arc<Routes>>,
    keeper: Option<&Keeper>,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    // The drains given something from the current frame (only kept with a cursor file).
    let mut touched: Vec<Arc<Drain>> = Vec::new();
    let mut buf = Vec::with_capacity(4096);
    let mut encoded: Vec<(usize, Option<Bytes>)> = Vec::new();
    let mut interner = Interner::default();
    let mut current = Arc::clone(&routes.borrow_and_update());
    while let Some(batch) = reader.next_batch(shutdown).await? {
        if routes.has_changed().unwrap_or(false) {
            current = Arc::clone(&routes.borrow_and_update());
        }
        let r = &*current;
        for view in batch.iter() {
            let (app, own) = match r.by_app.get_key_value(view.source_id) {
                Some((app, drains)) => (Some(Arc::clone(app)), drains.as_slice()),
                None => (None, &[][..]),
            };
            if r.everyone.is_empty() && own.is_empty() {
                continue;
            }
            let source = app.unwrap_or_else(|| interner.get(view.source_id));
            encoded.clear();
            for (enc, drain) in r.everyone.iter().chain(own) {
                let frames = match encoded.iter().find(|(e, _)| e == enc) {
                    Some((_, frames)) => frames.clone(),
                    None => {
                        buf.clear();
                        let frames = (encode(&view, &r.encodings[*enc], &mut buf) > 0)
                            .then(|| Bytes::copy_from_slice(&buf));
                        encoded.push((*enc, frames.clone()));
                        frames
                    }
                };
                if let Some(bytes) = frames {
                    drain.push(Frames {
                        bytes,
                        source_id: Arc::clone(&source),
                    });
                    if keeper.is_some() && !touched.iter().any(|t| Arc::ptr_eq(t, drain)) {
                        touched.push(Arc::clone(drain));
                    }
                }
            }
        }
        if let (Some(keeper), Some(cursor)) = (keeper, batch.cursor()) {
            let marks: Vec<(Arc<dyn Progress>, u64)> = touched
                .drain(..)
                .map(|d| {
                    let pushed = d.tally.pushed();
                    (Arc::clone(&d.tally) as Arc<dyn Progress>, pushed)
                })
                .collect();
            keeper.record(cursor, marks);
            // The firehose keeps what is not read yet: read on only as fast as the drains
            // deliver (a restarted nozzle catching up would otherwise evict from their queues).
            keeper.pace(shutdown).await;
        }
    }
    Ok(())
}
