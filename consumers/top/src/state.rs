//! [`State`]: everything the console knows, updated only by pure methods.
//!
//! Flow: the feed tasks send [`Feed`] messages over a bounded channel → [`State::apply_feed`]
//! (envelopes into the rolling windows, logs, sparklines, component metrics, events; API
//! snapshots into the metadata) → [`State::tick`] at the refresh rate builds the [`View`] →
//! the drawing code reads `&State`. Keys go through [`State::apply_key`].
//!
//! Invariants:
//! - no method does I/O or reads a clock: time comes in as `now` (monotonic) and from the
//!   envelopes' timestamps (wall), mapped onto one another by a fixed base, so tests replay
//!   recorded state exactly;
//! - everything kept is bounded (the windows' caps, per-app log and sparkline rings, a capped
//!   event ring, capped components), and each refusal is counted;
//! - history from the log cache lands in the windows at the instant it happened, so the first
//!   screen shows real rates at once (no warm-up).

mod components;
mod keys;
mod service_rows;
mod services;
mod tables;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use hydrant_api::policy::ScalingPolicy;
use hydrant_api::services::ServiceInstance;
use hydrant_api::slo::{AppSloStatus, AppSlos};
use hydrant_api::{App, AuditEvent, ProcessStats};
use hydrant_envelope::gap::Gap;
use hydrant_envelope::semantic::{HttpTimer, event_title, source_type, tag};
use hydrant_envelope::wire::{EnvelopeView, Kind};
use hydrant_firehose_client::Batch;
use hydrant_firehose_client::render::TimeZone;
use hydrant_windows::{Windows, WindowsConfig};

pub use keys::Effect;

use crate::view::{Level, Screen, TableKind, View};
use components::Components;
use services::Services;

/// Bounds of what the console keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// The rolling windows (apps, instances, latency histograms). Default: the library's
    /// defaults (1000 apps, 5 minutes of history).
    pub windows: WindowsConfig,
    /// Newest log lines kept per app for the detail screen. Default 200.
    pub log_lines_per_app: usize,
    /// Longest log payload kept, in bytes; longer ones are cut and marked. Default 2048.
    pub max_log_bytes: usize,
    /// Live events and alerts kept. Default 1000.
    pub max_events: usize,
    /// Platform components tracked (pipeline hops and executors). Default 512.
    pub max_components: usize,
    /// Metric series kept per component. Default 256.
    pub max_series: usize,
    /// The zone times are shown in. Default local (tests pin UTC).
    pub tz: TimeZone,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            windows: WindowsConfig::default(),
            log_lines_per_app: 200,
            max_log_bytes: 2048,
            max_events: 1000,
            max_components: 512,
            max_series: 256,
            tz: TimeZone::Local,
        }
    }
}

/// Seconds of sparkline history per app (a wide terminal shows them all, a narrow one the
/// newest that fit).
pub const SPARK_SECS: usize = 150;

/// What the feed tasks tell the console, over one bounded channel.
#[derive(Debug)]
pub enum Feed {
    /// Live envelopes.
    Batch(Batch),
    /// Envelopes from the log cache, oldest first, replayed at the instants they happened.
    History(Batch),
    /// The pipeline lost envelopes on their way here.
    Gap(Gap),
    /// A stream came up, went down, or gave up.
    Stream(StreamChange),
    /// A poll of the platform's API.
    Api(Box<ApiSnapshot>),
    /// The service instances the API lists (or why it could not list them).
    Services(Result<Vec<ServiceInstance>, String>),
}

/// A change of one stream's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamChange {
    /// How many streams the console wants open (1 for the firehose, one per app otherwise).
    Wanted(u32),
    /// One stream is connected.
    Up,
    /// One connected stream dropped; it is being retried.
    Down(String),
    /// A stream ended for good (its token was refused, its app is gone).
    Failed(String),
    /// Something the operator should read (fell back to developer mode, ...).
    Notice(String),
}

/// One poll of the cloud controller (and the SLO alerter). `None` fields failed or were not
/// asked this round; the previous values stay.
#[derive(Debug, Clone, Default)]
pub struct ApiSnapshot {
    /// Every app the token may see.
    pub apps: Option<Vec<App>>,
    /// Instance stats of the apps polled this round.
    pub stats: Vec<ProcessStats>,
    /// Recent audit events, oldest first.
    pub audit: Option<Vec<AuditEvent>>,
    /// Every autoscaling policy (app guid → policy), when listed.
    pub policies: Option<Vec<(String, ScalingPolicy)>>,
    /// Every app's SLOs, when listed.
    pub slos: Option<Vec<AppSlos>>,
    /// The alerter's status of the apps asked this round.
    pub slo_status: Vec<AppSloStatus>,
    /// Why part of the poll failed, for the header.
    pub error: Option<String>,
}

/// Maps envelope timestamps (UNIX ns) onto the monotonic clock and back.
#[derive(Debug, Clone, Copy)]
struct Clock {
    base: Instant,
    base_ns: i64,
}

impl Clock {
    /// The instant an envelope stamped `ns` happened, never after `now` nor before the base.
    fn instant_of(&self, ns: i64, now: Instant) -> Instant {
        let offset = ns.saturating_sub(self.base_ns);
        if offset <= 0 {
            return self.base;
        }
        self.base
            .checked_add(Duration::from_nanos(offset.unsigned_abs()))
            .map_or(now, |at| at.min(now))
    }

    /// The wall clock at `at`, UNIX ns.
    fn wall_ns(&self, at: Instant) -> i64 {
        let since = at.saturating_duration_since(self.base).as_nanos();
        self.base_ns
            .saturating_add(i64::try_from(since).unwrap_or(i64::MAX))
    }
}

/// One kept log line.
#[derive(Debug, Clone)]
pub(crate) struct LogLine {
    pub ts: i64,
    pub source_type: Box<str>,
    pub instance: Box<str>,
    pub err: bool,
    pub payload: Box<[u8]>,
    pub truncated: bool,
}

/// One second of one app's traffic, for the sparklines.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SparkSec {
    pub sec: i64,
    pub requests: u32,
    pub latency_sum_us: u64,
    pub latency_n: u32,
}

/// A live SLO gauge of one app: budget left, alerts firing, when.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SloGauge {
    pub budget: Option<f64>,
    pub firing: Option<f64>,
    pub ts: i64,
}

/// A live event or alert.
#[derive(Debug, Clone)]
pub(crate) struct LiveEvent {
    pub id: u64,
    pub ts: i64,
    pub level: Level,
    pub source: Box<str>,
    pub kind: Box<str>,
    pub detail: String,
}

/// What the API said, last time it answered.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meta {
    /// By guid.
    pub apps: HashMap<String, App>,
    pub stats: HashMap<String, ProcessStats>,
    pub audit: Vec<AuditEvent>,
    pub policies: HashMap<String, ScalingPolicy>,
    pub slos: HashMap<String, AppSlos>,
    pub slo_status: HashMap<String, AppSloStatus>,
    /// When the API last answered (monotonic), and its last complaint.
    pub last_ok: Option<Instant>,
    pub error: Option<String>,
    /// True once any snapshot arrived (before that, "running/desired" is unknown).
    pub seen: bool,
}

/// The streams' health, for the header.
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamInfo {
    pub wanted: u32,
    pub connected: u32,
    pub envelopes: u64,
    /// Envelopes per wall second, newest last (a few seconds).
    pub per_sec: VecDeque<(i64, u64)>,
    pub gaps: u64,
    pub lost: u64,
    /// When the last loss was reported, UNIX ns.
    pub last_gap_ns: i64,
    pub ui_dropped: u64,
    /// When the console last dropped envelopes itself, UNIX ns.
    pub last_ui_drop_ns: i64,
}

/// Refusals inside the console, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refused {
    /// Log lines of a new app when `max_apps` apps already had logs kept.
    pub log_apps: u64,
    /// Sparkline seconds of a new app past the same cap.
    pub spark_apps: u64,
    /// Events pushed out of the ring by newer ones.
    pub events_evicted: u64,
}

/// The console's prompt and overlay state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Prompt {
    /// No prompt: keys are actions.
    #[default]
    None,
    /// `:` with what was typed.
    Command(String),
    /// `/` with what was typed.
    Filter(String),
}

/// A table's filter: case-insensitive text, or its inverse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// As typed (after `/`).
    pub raw: String,
    /// Lower-cased needle.
    needle: String,
    /// `!`: hide matching rows instead.
    pub invert: bool,
}

impl Filter {
    /// Parses what was typed after `/`; `None` for an empty filter.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        let (invert, text) = match raw.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        let needle = text.trim().to_lowercase();
        (!needle.is_empty()).then(|| Self {
            raw: raw.to_owned(),
            needle,
            invert,
        })
    }

    /// Whether a row whose cells read `cells` is shown.
    #[must_use]
    pub fn keeps<'a>(&self, mut cells: impl Iterator<Item = &'a str>) -> bool {
        let hit = cells.any(|c| c.to_lowercase().contains(&self.needle));
        hit != self.invert
    }
}

/// Per-table selection, filter and sort.
#[derive(Debug, Clone, PartialEq)]
pub struct TableUi {
    /// Row index within `visible`.
    pub cursor: usize,
    /// Key of the selected row, so the selection follows it when rows move.
    pub selected: Option<String>,
    /// The active filter.
    pub filter: Option<Filter>,
    /// Sort column.
    pub sort_column: usize,
    /// Sort direction.
    pub descending: bool,
    /// Indices into the view table's rows, filtered and sorted.
    pub visible: Vec<usize>,
}

impl TableUi {
    fn new(kind: TableKind) -> Self {
        let (sort_column, descending) = kind.default_sort();
        Self {
            cursor: 0,
            selected: None,
            filter: None,
            sort_column,
            descending,
            visible: Vec::new(),
        }
    }
}

/// Screens, prompts, overlays.
#[derive(Debug, Clone)]
pub(crate) struct Ui {
    pub stack: Vec<Screen>,
    pub tables: [TableUi; 5],
    pub prompt: Prompt,
    pub help: bool,
    pub paused: bool,
    pub quit: bool,
    pub message: Option<(Level, String)>,
    /// Rows that fit on screen, for page up/down (set by the last draw's size).
    pub page: usize,
}

/// What the console knows and shows.
#[derive(Debug)]
pub struct State {
    config: StateConfig,
    clock: Clock,
    windows: Windows,
    pub(crate) meta: Meta,
    pub(crate) sparks: HashMap<Box<str>, VecDeque<SparkSec>>,
    pub(crate) logs: HashMap<Box<str>, VecDeque<LogLine>>,
    pub(crate) slo_live: HashMap<Box<str>, HashMap<Box<str>, SloGauge>>,
    pub(crate) autoscaler_notes: HashMap<Box<str>, (i64, String)>,
    pub(crate) components: Components,
    pub(crate) services: Services,
    pub(crate) events: VecDeque<LiveEvent>,
    next_event: u64,
    pub(crate) stream: StreamInfo,
    refused: Refused,
    pub(crate) ui: Ui,
    view: View,
    mode: String,
    target: String,
}

/// Log `source_type`s whose lines are platform notices, shown as events.
const NOTICE_SOURCES: [&str; 3] = [
    source_type::SLO,
    source_type::AUTOSCALER,
    source_type::HEALTH_MANAGER,
];

/// A component silent this long (UNIX ns) is forgotten: ten minutes.
const FORGET_COMPONENT_NS: i64 = 600_000_000_000;

/// Most SLOs tracked per app from live gauges.
const MAX_SLOS_PER_APP: usize = 32;

impl State {
    /// An empty state at `now`, whose wall clock reads `wall_ns` (UNIX ns). `mode` and `target`
    /// are what the header says ("operator (firehose)", the API URL).
    ///
    /// # Errors
    /// [`crate::Error::Windows`] when the windows config does not validate.
    pub fn new(
        config: StateConfig,
        now: Instant,
        wall_ns: i64,
        mode: &str,
        target: &str,
    ) -> Result<Self, crate::Error> {
        // The windows' clock starts a horizon in the past, so history from the log cache lands
        // at the second it happened instead of piling into the first one.
        let horizon = Duration::from_secs(u64::from(config.windows.horizon_secs));
        let (base, back) = match now.checked_sub(horizon) {
            Some(base) => (base, horizon),
            None => (now, Duration::ZERO),
        };
        let base_ns = wall_ns.saturating_sub(i64::try_from(back.as_nanos()).unwrap_or(0));
        let windows = Windows::with_clock(
            config.windows.clone(),
            base,
            u64::try_from(base_ns.div_euclid(1_000_000_000)).unwrap_or(0),
        )?;
        Ok(Self {
            components: Components::new(config.max_components, config.max_series),
            services: Services::new(config.windows.max_apps),
            config,
            clock: Clock { base, base_ns },
            windows,
            meta: Meta::default(),
            sparks: HashMap::new(),
            logs: HashMap::new(),
            slo_live: HashMap::new(),
            autoscaler_notes: HashMap::new(),
            events: VecDeque::new(),
            next_event: 0,
            stream: StreamInfo::default(),
            refused: Refused::default(),
            ui: Ui {
                stack: vec![Screen::Apps],
                tables: TableKind::ALL.map(TableUi::new),
                prompt: Prompt::None,
                help: false,
                paused: false,
                quit: false,
                message: None,
                page: 20,
            },
            view: View::empty(now),
            mode: mode.to_owned(),
            target: target.to_owned(),
        })
    }

    /// Applies one message from the feed tasks.
    pub fn apply_feed(&mut self, feed: Feed, now: Instant) {
        match feed {
            Feed::Batch(batch) => self.apply_batch(&batch, now),
            Feed::History(batch) => self.apply_history(&batch, now),
            Feed::Gap(gap) => self.apply_gap(&gap, now),
            Feed::Stream(change) => self.apply_stream(change, now),
            Feed::Api(snapshot) => self.apply_api(*snapshot, now),
            Feed::Services(Ok(list)) => self.services.apply_list(Some(list), None),
            Feed::Services(Err(e)) => self.services.apply_list(None, Some(e)),
        }
    }

    /// Live envelopes, all arrived at `now`.
    pub fn apply_batch(&mut self, batch: &Batch, now: Instant) {
        for view in batch.iter() {
            self.apply_envelope(&view, now);
        }
    }

    /// Envelopes from the log cache (oldest first), each at the instant its timestamp names.
    pub fn apply_history(&mut self, batch: &Batch, now: Instant) {
        for view in batch.iter() {
            let at = self.clock.instant_of(view.timestamp, now);
            self.observe(&view, at);
        }
    }

    /// One live envelope that arrived at `now`.
    pub fn apply_envelope(&mut self, view: &EnvelopeView<'_>, now: Instant) {
        self.stream.envelopes += 1;
        let sec = self.clock.wall_ns(now).div_euclid(1_000_000_000);
        match self.stream.per_sec.back_mut() {
            Some((s, n)) if *s == sec => *n += 1,
            _ => {
                self.stream.per_sec.push_back((sec, 1));
                while self.stream.per_sec.len() > 8 {
                    self.stream.per_sec.pop_front();
                }
            }
        }
        self.observe(view, now);
    }

    /// Folds one envelope in, as if it arrived at `at`.
    fn observe(&mut self, view: &EnvelopeView<'_>, at: Instant) {
        self.windows.observe(view, at);
        match view.kind {
            Kind::Timer => self.observe_timer(view, at),
            Kind::Log => self.observe_log(view),
            Kind::Counter => {
                self.components.record(view);
            }
            Kind::Gauge => {
                if !self.services.record(view) && !self.components.record(view) {
                    self.observe_slo_gauge(view);
                }
            }
            Kind::Event => self.observe_event(view),
            Kind::None => {}
        }
    }

    fn observe_timer(&mut self, view: &EnvelopeView<'_>, at: Instant) {
        if view.source_id.is_empty() {
            return;
        }
        let Some(timer) = HttpTimer::read(view) else {
            return;
        };
        if !timer.client {
            return;
        }
        // Router-made responses never reached the app: no latency for them.
        let latency_us = timer.app_latency_ns().map(|ns| ns / 1_000);
        let sec = self.clock.wall_ns(at).div_euclid(1_000_000_000);
        let cap = self.config.windows.max_apps;
        if !self.sparks.contains_key(view.source_id) && self.sparks.len() >= cap {
            self.refused.spark_apps += 1;
            return;
        }
        let ring = self.sparks.entry(view.source_id.into()).or_default();
        let slot = match ring.back_mut() {
            // Late data merges into the newest second, as the windows do.
            Some(last) if last.sec >= sec => last,
            _ => {
                ring.push_back(SparkSec {
                    sec,
                    ..SparkSec::default()
                });
                while ring
                    .front()
                    .is_some_and(|f| f.sec <= sec - SPARK_SECS as i64)
                {
                    ring.pop_front();
                }
                let last = ring.len() - 1;
                &mut ring[last]
            }
        };
        slot.requests = slot.requests.saturating_add(1);
        if let Some(us) = latency_us {
            slot.latency_sum_us = slot.latency_sum_us.saturating_add(us);
            slot.latency_n = slot.latency_n.saturating_add(1);
        }
    }

    fn observe_log(&mut self, view: &EnvelopeView<'_>) {
        if view.source_id.is_empty() {
            return;
        }
        let Some((payload, err)) = view.log() else {
            return;
        };
        let source_type = view.tag(tag::SOURCE_TYPE).unwrap_or("");
        if NOTICE_SOURCES.contains(&source_type) {
            self.notice(view, source_type, payload);
        }
        let cap = self.config.windows.max_apps;
        if !self.logs.contains_key(view.source_id) && self.logs.len() >= cap {
            self.refused.log_apps += 1;
            return;
        }
        let keep = payload.len().min(self.config.max_log_bytes);
        let per_app = self.config.log_lines_per_app.max(1);
        let ring = self.logs.entry(view.source_id.into()).or_default();
        if ring.len() >= per_app {
            ring.pop_front();
        }
        ring.push_back(LogLine {
            ts: view.timestamp,
            source_type: source_type.into(),
            instance: view.instance_id.into(),
            err,
            payload: payload[..keep].into(),
            truncated: keep < payload.len(),
        });
    }

    /// A platform notice in an app's stream (SLO alert, autoscaler decision, health manager).
    fn notice(&mut self, view: &EnvelopeView<'_>, source_type: &str, payload: &[u8]) {
        let text = crate::format::clean_bytes(&payload[..payload.len().min(400)]);
        let level = match source_type {
            source_type::SLO if text.contains("FIRING") && text.contains("PAGE") => Level::Crit,
            source_type::SLO if text.contains("FIRING") => Level::Alert,
            source_type::HEALTH_MANAGER => Level::Warn,
            _ => Level::Info,
        };
        if source_type == source_type::AUTOSCALER {
            self.autoscaler_notes
                .insert(view.source_id.into(), (view.timestamp, text.clone()));
        }
        self.push_event(view.timestamp, level, view.source_id, source_type, text);
    }

    fn observe_event(&mut self, view: &EnvelopeView<'_>) {
        let Some((title, body)) = view.event() else {
            return;
        };
        if title == hydrant_envelope::gap::GAP_TITLE {
            return;
        }
        let crash = event_title::is_crash(title);
        let level = if crash { Level::Warn } else { Level::Info };
        let mut detail = String::new();
        if !view.instance_id.is_empty() {
            detail.push_str("instance ");
            detail.push_str(&crate::format::clean(view.instance_id));
            detail.push_str(": ");
        }
        detail.push_str(&crate::format::clean(body));
        if let Some(reason) = view.tag("reason").filter(|r| !r.is_empty()) {
            detail.push_str(" (");
            detail.push_str(&crate::format::clean(reason));
            detail.push(')');
        }
        let title = crate::format::clean(title).into_owned();
        self.push_event(view.timestamp, level, view.source_id, &title, detail);
    }

    /// `slo.<name>.budget_remaining` / `slo.<name>.alerts_firing` gauges of an app.
    fn observe_slo_gauge(&mut self, view: &EnvelopeView<'_>) {
        for (name, value, _) in view.gauge_values() {
            let Some(rest) = name.strip_prefix("slo.") else {
                continue;
            };
            let (slo, is_budget) = if let Some(s) = rest.strip_suffix(".budget_remaining") {
                (s, true)
            } else if let Some(s) = rest.strip_suffix(".alerts_firing") {
                (s, false)
            } else {
                continue;
            };
            if !value.is_finite() || view.source_id.is_empty() {
                continue;
            }
            if !self.slo_live.contains_key(view.source_id)
                && self.slo_live.len() >= self.config.windows.max_apps
            {
                continue;
            }
            let app = self.slo_live.entry(view.source_id.into()).or_default();
            if !app.contains_key(slo) && app.len() >= MAX_SLOS_PER_APP {
                continue;
            }
            let entry = app.entry(slo.into()).or_insert(SloGauge {
                budget: None,
                firing: None,
                ts: view.timestamp,
            });
            if is_budget {
                entry.budget = Some(value);
            } else {
                entry.firing = Some(value);
            }
            entry.ts = entry.ts.max(view.timestamp);
        }
    }

    fn push_event(&mut self, ts: i64, level: Level, source: &str, kind: &str, detail: String) {
        if self.events.len() >= self.config.max_events.max(1) {
            self.events.pop_front();
            self.refused.events_evicted += 1;
        }
        self.next_event += 1;
        self.events.push_back(LiveEvent {
            id: self.next_event,
            ts,
            level,
            source: source.into(),
            kind: kind.into(),
            detail,
        });
    }

    /// A loss the pipeline reported on the way to this console.
    pub fn apply_gap(&mut self, gap: &Gap, now: Instant) {
        self.windows.record_gap(gap, now);
        self.stream.gaps += 1;
        self.stream.lost = self.stream.lost.saturating_add(gap.dropped);
        let detail = format!(
            "{} envelopes lost ({} at {})",
            gap.dropped,
            crate::format::clean(&gap.reason),
            crate::format::clean(&gap.hop)
        );
        let wall = self.clock.wall_ns(now);
        self.stream.last_gap_ns = wall;
        self.push_event(wall, Level::Warn, &gap.source_id, "loss", detail);
    }

    /// A stream's connection changed.
    pub fn apply_stream(&mut self, change: StreamChange, now: Instant) {
        let wall = self.clock.wall_ns(now);
        match change {
            StreamChange::Wanted(n) => self.stream.wanted = n,
            StreamChange::Up => self.stream.connected = self.stream.connected.saturating_add(1),
            StreamChange::Down(reason) => {
                self.stream.connected = self.stream.connected.saturating_sub(1);
                let detail = crate::format::clean(&reason).into_owned();
                self.push_event(wall, Level::Warn, "hydrant top", "stream lost", detail);
            }
            StreamChange::Failed(reason) => {
                let detail = crate::format::clean(&reason).into_owned();
                self.push_event(wall, Level::Alert, "hydrant top", "stream failed", detail);
            }
            StreamChange::Notice(text) => {
                let detail = crate::format::clean(&text).into_owned();
                self.ui.message = Some((Level::Info, detail.clone()));
                self.push_event(wall, Level::Info, "hydrant top", "notice", detail);
            }
        }
    }

    /// A poll of the API: what answered replaces what was known.
    pub fn apply_api(&mut self, snapshot: ApiSnapshot, now: Instant) {
        let meta = &mut self.meta;
        meta.seen = true;
        if let Some(apps) = snapshot.apps {
            meta.apps = apps.into_iter().map(|a| (a.guid.clone(), a)).collect();
            let apps = &meta.apps;
            meta.stats.retain(|guid, _| apps.contains_key(guid));
            meta.last_ok = Some(now);
        }
        for stats in snapshot.stats {
            meta.stats.insert(stats.app_guid.clone(), stats);
        }
        if let Some(audit) = snapshot.audit {
            meta.audit = audit;
        }
        if let Some(policies) = snapshot.policies {
            meta.policies = policies.into_iter().collect();
        }
        if let Some(slos) = snapshot.slos {
            meta.slos = slos.into_iter().map(|s| (s.app_guid.clone(), s)).collect();
        }
        for status in snapshot.slo_status {
            meta.slo_status.insert(status.app_guid.clone(), status);
        }
        meta.error = snapshot
            .error
            .map(|e| crate::format::clean(&e).into_owned());
    }

    /// Envelopes the channel from the stream task had to drop so far (the task counts them).
    pub fn set_ui_dropped(&mut self, total: u64, now: Instant) {
        if total > self.stream.ui_dropped {
            let detail = format!(
                "{} envelopes dropped: the screen fell behind the stream",
                total - self.stream.ui_dropped
            );
            let wall = self.clock.wall_ns(now);
            self.stream.last_ui_drop_ns = wall;
            self.push_event(wall, Level::Warn, "hydrant top", "ui drops", detail);
            self.stream.ui_dropped = total;
        }
    }

    /// The refresh: rebuilds the view unless paused, and forgets what went idle.
    pub fn tick(&mut self, now: Instant) {
        if !self.ui.paused {
            self.rebuild(now);
        }
    }

    /// Rebuilds the view at `now` (paused or not) and re-sorts the tables.
    pub(crate) fn rebuild(&mut self, now: Instant) {
        self.housekeeping(now);
        self.view = tables::build(self, now);
        for kind in TableKind::ALL {
            self.relayout(kind);
        }
    }

    /// Drops per-app data of apps neither the windows nor the API know any more, and
    /// components silent for [`FORGET_COMPONENT_NS`].
    fn housekeeping(&mut self, now: Instant) {
        let wall = self.clock.wall_ns(now);
        self.components
            .forget_older_than(wall.saturating_sub(FORGET_COMPONENT_NS));
        self.services
            .forget_older_than(wall.saturating_sub(FORGET_COMPONENT_NS));
        let windows = &self.windows;
        let apps = &self.meta.apps;
        let services = &self.services;
        let known = |id: &str| {
            apps.contains_key(id) || windows.app(id).is_some() || services.is_service(id)
        };
        self.sparks.retain(|id, _| known(id));
        self.logs.retain(|id, _| known(id));
        self.slo_live.retain(|id, _| known(id));
        self.autoscaler_notes.retain(|id, _| known(id));
    }

    /// The rolling windows.
    #[must_use]
    pub fn windows(&self) -> &Windows {
        &self.windows
    }

    /// The current snapshot.
    #[must_use]
    pub fn view(&self) -> &View {
        &self.view
    }

    /// The screen on top.
    #[must_use]
    pub fn screen(&self) -> &Screen {
        self.ui.stack.last().unwrap_or(&Screen::Apps)
    }

    /// A table's selection, filter and sort.
    #[must_use]
    pub fn table_ui(&self, kind: TableKind) -> &TableUi {
        &self.ui.tables[kind.index()]
    }

    /// The open prompt.
    #[must_use]
    pub fn prompt(&self) -> &Prompt {
        &self.ui.prompt
    }

    /// Whether the help is shown.
    #[must_use]
    pub fn help_open(&self) -> bool {
        self.ui.help
    }

    /// Whether the display is frozen.
    #[must_use]
    pub fn paused(&self) -> bool {
        self.ui.paused
    }

    /// Whether `q` was pressed.
    #[must_use]
    pub fn should_quit(&self) -> bool {
        self.ui.quit
    }

    /// The status-line message, if any.
    #[must_use]
    pub fn message(&self) -> Option<&(Level, String)> {
        self.ui.message.as_ref()
    }

    /// Live envelopes applied.
    #[must_use]
    pub fn envelopes(&self) -> u64 {
        self.stream.envelopes
    }

    /// Refusals inside the console.
    #[must_use]
    pub fn refused(&self) -> Refused {
        self.refused
    }

    /// Tells the state how many table rows fit (for page up/down).
    pub fn set_page(&mut self, rows: usize) {
        self.ui.page = rows.max(1);
    }

    pub(crate) fn mode(&self) -> &str {
        &self.mode
    }

    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    pub(crate) fn wall_ns(&self, at: Instant) -> i64 {
        self.clock.wall_ns(at)
    }

    pub(crate) fn config(&self) -> &StateConfig {
        &self.config
    }

    /// The app guid whose name is `name` (or which is `name`).
    pub(crate) fn find_app(&self, name: &str) -> Option<String> {
        if self.meta.apps.contains_key(name) || self.windows.app(name).is_some() {
            return Some(name.to_owned());
        }
        self.meta
            .apps
            .values()
            .find(|a| a.name == name)
            .map(|a| a.guid.clone())
    }

    /// The name to show for a source id: the app's name when the API knows it.
    pub(crate) fn display_name<'a>(&'a self, source: &'a str) -> &'a str {
        self.meta
            .apps
            .get(source)
            .map_or(source, |a| a.name.as_str())
    }
}
