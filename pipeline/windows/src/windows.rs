//! [`Windows`]: the envelope stream folded into per-app, per-instance rolling windows.
//!
//! Flow: firehose batches → [`Windows::observe`] (one envelope: classify by kind and tags, find
//! or admit the app and instance, bump one bucket) → readers through [`Windows::app`].
//!
//! Invariants:
//! - time is monotonic: every method takes `now: Instant`; the wall clock is read once, in
//!   [`Windows::new`], to number minutes from the UNIX epoch so persisted minutes line up;
//! - nothing observed allocates in proportion to anything but the caps: apps, instances, gauge
//!   names and tag values are admitted only under their caps and every refusal is counted by
//!   reason (`windows.dropped{reason}`);
//! - no input panics: malformed numbers, hostile tags and non-finite gauges are counted or
//!   ignored.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use hydrant_emitter::{Counter, Gauge, Registry};
use hydrant_envelope::gap::{GAP_TITLE, Gap};
use hydrant_envelope::semantic::{ContainerMetric, HttpTimer, event_title};
use hydrant_envelope::wire::{EnvelopeView, Kind};
use hydrant_firehose_client::Batch;

use crate::minutes::MinuteCounts;
use crate::state::{AppState, InstanceState, Response, Shape};
use crate::view::AppWindows;
use crate::{Error, WindowsConfig};

/// The value router error reasons are counted under once an app has `max_tag_values` of them.
pub const OTHER_REASON: &str = "other";

/// How often idle instances and apps are looked for, in seconds.
const HOUSEKEEPING_SECS: u64 = 5;

/// Why an observation (or part of one) was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// A new app arrived with `max_apps` tracked and none idle enough to forget.
    AppCap,
    /// A new instance arrived with `max_instances_per_app` tracked; the app still counts it.
    InstanceCap,
    /// A new custom gauge name arrived with `max_custom_gauges` tracked.
    GaugeNameCap,
    /// A new tag value (router error reason) arrived with `max_tag_values` tracked; it was
    /// counted under [`OTHER_REASON`].
    TagValueCap,
    /// A source id, instance id, gauge name or tag value longer than `max_name_bytes`.
    NameTooLong,
    /// A gauge value that is NaN or infinite.
    BadValue,
}

impl DropReason {
    /// Every reason, in the order of [`WindowsStats::dropped`].
    pub const ALL: [DropReason; 6] = [
        DropReason::AppCap,
        DropReason::InstanceCap,
        DropReason::GaugeNameCap,
        DropReason::TagValueCap,
        DropReason::NameTooLong,
        DropReason::BadValue,
    ];

    /// The `reason` tag value.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::AppCap => "app_cap",
            DropReason::InstanceCap => "instance_cap",
            DropReason::GaugeNameCap => "gauge_name_cap",
            DropReason::TagValueCap => "tag_value_cap",
            DropReason::NameTooLong => "name_too_long",
            DropReason::BadValue => "bad_value",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// What the windows have seen since they were created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowsStats {
    /// Envelopes observed.
    pub envelopes: u64,
    /// Envelopes that fed no window (other kinds, other timers, platform logs, no source id).
    pub ignored: u64,
    /// Drops by reason, indexed like [`DropReason::ALL`].
    pub dropped: [u64; 6],
    /// Loss reports (gaps) received.
    pub gaps: u64,
    /// Envelopes those reports said were lost upstream.
    pub lost: u64,
    /// Apps tracked now.
    pub apps: usize,
    /// Instances tracked now, over all apps.
    pub instances: usize,
    /// Apps forgotten after going idle or to make room.
    pub apps_forgotten: u64,
}

impl WindowsStats {
    /// Drops for one reason.
    #[must_use]
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }
}

/// How much is stored, for checking the memory bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Apps tracked.
    pub apps: usize,
    /// The most instances any one app has.
    pub max_instances: usize,
    /// The most gauge names any one app has.
    pub max_gauge_names: usize,
    /// The most router error reasons any one app has.
    pub max_reasons: usize,
    /// The most per-second buckets any one series holds.
    pub max_second_buckets: usize,
    /// The most latency histograms any one app holds.
    pub max_histograms: usize,
    /// The most minute buckets any one app holds.
    pub max_minute_buckets: usize,
}

/// Self-metrics, when a registry was given.
#[derive(Debug)]
struct Metrics {
    envelopes: Counter,
    lost: Counter,
    dropped: [Counter; 6],
    apps: Gauge,
    instances: Gauge,
}

/// Maps `Instant`s to slot numbers: seconds since the UNIX epoch, advanced monotonically.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    base: Instant,
    base_unix: u64,
}

impl Clock {
    /// Whole seconds (UNIX-numbered) at `now`.
    pub(crate) fn tick(&self, now: Instant) -> u64 {
        self.base_unix
            .saturating_add(now.saturating_duration_since(self.base).as_secs())
    }

    /// How far into its second `now` is, in [0, 1).
    pub(crate) fn frac(&self, now: Instant) -> f64 {
        f64::from(now.saturating_duration_since(self.base).subsec_nanos()) / 1e9
    }
}

/// Per-app, per-instance rolling windows over the envelope stream.
#[derive(Debug)]
pub struct Windows {
    pub(crate) config: WindowsConfig,
    pub(crate) shape: Shape,
    pub(crate) clock: Clock,
    apps: HashMap<Box<str>, AppState>,
    stats: WindowsStats,
    metrics: Option<Metrics>,
    reported_envelopes: u64,
    housekept_at: u64,
    /// No app is idle enough to be evicted before this tick (so a flood of new ids at the cap
    /// scans the apps once a second, not once an envelope).
    no_eviction_until: u64,
    last_gap: Option<Instant>,
    pub(crate) stream: crate::DriveStatus,
}

impl Windows {
    /// Empty windows, numbering minutes from the wall clock read now (the convenience entry).
    ///
    /// # Errors
    /// [`Error::Config`] when the config does not validate.
    pub fn new(config: WindowsConfig) -> Result<Self, Error> {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self::with_clock(config, Instant::now(), unix)
    }

    /// Empty windows where `base` is UNIX second `base_unix` (tests pin both).
    ///
    /// # Errors
    /// [`Error::Config`] when the config does not validate.
    pub fn with_clock(config: WindowsConfig, base: Instant, base_unix: u64) -> Result<Self, Error> {
        config.validate()?;
        let block = u64::from(config.latency_block_secs);
        let max_us = u64::from(config.latency_max_secs)
            .saturating_mul(1_000_000)
            .max(2);
        let shape = Shape {
            max_us,
            seconds: u64::from(config.horizon_secs) + 1,
            fine: u64::from(config.latency_fine_secs),
            block,
            blocks: u64::from(config.horizon_secs).div_ceil(block) + 1,
            minutes: u64::from(config.minute_history),
        };
        // Two significant digits: 1 % quantile error, about 12 KiB a histogram at the defaults.
        // Made once here so a shape hdrhistogram refuses is a config error, not a silent gap.
        Histogram::<u32>::new_with_bounds(1, max_us, 2).map_err(|e| Error::Config {
            field: "latency_max_secs",
            message: format!("cannot size a latency histogram ({e})"),
        })?;
        Ok(Self {
            config,
            shape,
            clock: Clock { base, base_unix },
            apps: HashMap::new(),
            stats: WindowsStats::default(),
            metrics: None,
            reported_envelopes: 0,
            housekept_at: 0,
            no_eviction_until: 0,
            last_gap: None,
            stream: crate::DriveStatus::default(),
        })
    }

    /// Also reports `windows.envelopes`, `windows.lost`, `windows.dropped{reason}`,
    /// `windows.apps` and `windows.instances` in `registry` (the embedding role's).
    #[must_use]
    pub fn with_registry(mut self, registry: &Registry) -> Self {
        let dropped = DropReason::ALL.map(|r| {
            registry.counter(
                "windows.dropped",
                "Observations the rolling windows did not keep, by reason",
                &[("reason", r.as_str())],
            )
        });
        self.metrics = Some(Metrics {
            envelopes: registry.counter("windows.envelopes", "Envelopes observed", &[]),
            lost: registry.counter(
                "windows.lost",
                "Envelopes the stream reported lost upstream",
                &[],
            ),
            dropped,
            apps: registry.gauge("windows.apps", "Apps tracked", "count", &[]),
            instances: registry.gauge("windows.instances", "Instances tracked", "count", &[]),
        });
        self
    }

    /// The config in force.
    #[must_use]
    pub fn config(&self) -> &WindowsConfig {
        &self.config
    }

    /// Folds one envelope in.
    pub fn observe(&mut self, view: &EnvelopeView<'_>, now: Instant) {
        self.stats.envelopes += 1;
        let tick = self.clock.tick(now);
        if tick >= self.housekept_at + HOUSEKEEPING_SECS {
            self.housekeeping(now, tick);
        }
        let kept = match view.kind {
            Kind::Timer => self.observe_timer(view, tick, now),
            Kind::Gauge => self.observe_gauge(view, tick, now),
            Kind::Log => self.observe_log(view, tick, now),
            Kind::Event => self.observe_event(view, tick, now),
            Kind::Counter | Kind::None => false,
        };
        if !kept {
            self.stats.ignored += 1;
        }
    }

    /// Folds every envelope of a firehose batch in; returns how many.
    pub fn observe_batch(&mut self, batch: &Batch, now: Instant) -> usize {
        let mut n = 0;
        for view in batch.iter() {
            self.observe(&view, now);
            n += 1;
        }
        n
    }

    /// Notes a loss the stream reported: counted, and the app it names (or every app, for a
    /// stream-wide gap) remembers when, so a consumer can distrust a window with a hole in it.
    pub fn record_gap(&mut self, gap: &Gap, now: Instant) {
        self.stats.gaps += 1;
        self.stats.lost = self.stats.lost.saturating_add(gap.dropped);
        if let Some(m) = &self.metrics {
            m.lost.add(gap.dropped);
        }
        match self.apps.get_mut(gap.source_id.as_str()) {
            Some(app) => {
                app.last_gap = Some(now);
                app.lost = app.lost.saturating_add(gap.dropped);
            }
            None => self.last_gap = Some(now),
        }
    }

    /// When the stream last reported a loss not attributable to one tracked app.
    #[must_use]
    pub fn last_stream_gap(&self) -> Option<Instant> {
        self.last_gap
    }

    /// One app's windows.
    #[must_use]
    pub fn app(&self, source_id: &str) -> Option<AppWindows<'_>> {
        self.apps
            .get_key_value(source_id)
            .map(|(id, state)| AppWindows::new(self, id, state))
    }

    /// Every tracked app, in no particular order.
    pub fn apps(&self) -> impl Iterator<Item = AppWindows<'_>> + '_ {
        self.apps
            .iter()
            .map(|(id, state)| AppWindows::new(self, id, state))
    }

    /// Counters since creation.
    #[must_use]
    pub fn stats(&self) -> WindowsStats {
        let mut s = self.stats;
        s.apps = self.apps.len();
        s.instances = self.apps.values().map(|a| a.instances.len()).sum();
        s
    }

    /// How much is stored now.
    #[must_use]
    pub fn footprint(&self) -> Footprint {
        let mut f = Footprint {
            apps: self.apps.len(),
            ..Footprint::default()
        };
        for app in self.apps.values() {
            f.max_instances = f.max_instances.max(app.instances.len());
            f.max_gauge_names = f.max_gauge_names.max(app.gauge_names.len());
            f.max_reasons = f.max_reasons.max(app.reasons.len());
            f.max_histograms = f.max_histograms.max(app.histograms());
            f.max_minute_buckets = f.max_minute_buckets.max(app.minutes.len());
            f.max_second_buckets = f.max_second_buckets.max(app.seconds.len());
            for r in &app.reasons {
                f.max_second_buckets = f.max_second_buckets.max(r.1.len());
            }
            for i in app.instances.values() {
                f.max_second_buckets = f.max_second_buckets.max(i.seconds.len());
                for (_, g) in &i.gauges {
                    f.max_second_buckets = f.max_second_buckets.max(g.seconds.len());
                }
            }
        }
        f
    }

    /// The minute (since the UNIX epoch) that `now` falls in, as [`MinuteCounts::minute`]
    /// numbers it.
    #[must_use]
    pub fn minute_at(&self, now: Instant) -> u64 {
        self.clock.tick(now) / 60
    }

    /// Puts persisted per-minute counts back (the SLO alerter after a restart). Minutes older
    /// than `minute_history` before `now` are skipped; a minute already present is merged.
    /// The app is admitted like any new app (and refused the same way at the cap).
    ///
    /// # Errors
    /// [`Error::Restore`] when the app cannot be admitted or its id is too long.
    pub fn restore_minutes(
        &mut self,
        source_id: &str,
        minutes: &[MinuteCounts],
        now: Instant,
    ) -> Result<(), Error> {
        let tick = self.clock.tick(now);
        let refuse = |message: &str| Error::Restore {
            source_id: source_id.to_owned(),
            message: message.to_owned(),
        };
        if source_id.is_empty() || source_id.len() > self.config.max_name_bytes {
            return Err(refuse(
                "the source id is empty or longer than max_name_bytes",
            ));
        }
        let shape = self.shape;
        let Some(app) = self.admit_app(source_id, tick, now) else {
            return Err(refuse("max_apps apps are tracked and none is idle"));
        };
        let oldest = (tick / 60).saturating_sub(shape.minutes - 1);
        let mut sorted: Vec<&MinuteCounts> = minutes
            .iter()
            .filter(|m| m.minute >= oldest && m.minute <= tick / 60)
            .collect();
        sorted.sort_by_key(|m| m.minute);
        // Older than everything live goes to the front, newest first, so order holds.
        for m in sorted.into_iter().rev() {
            if let Some(existing) = app.minutes.get_mut(m.minute) {
                existing.merge(m);
            } else if let Err(m) = app.minutes.insert_ordered(m.minute, *m) {
                // Between two live minutes: nothing live was lost there, so the gap stays.
                tracing::debug!(minute = m.minute, "restored minute falls inside live data");
            }
        }
        Ok(())
    }

    fn drop_one(&mut self, reason: DropReason) {
        self.stats.dropped[reason.index()] += 1;
        if let Some(m) = &self.metrics {
            m.dropped[reason.index()].inc();
        }
    }

    /// Finds the app or admits it under the cap, evicting the longest-idle app when it has
    /// been silent longer than `forget_instance_secs` (it has no live instance left).
    fn admit_app(&mut self, source_id: &str, tick: u64, now: Instant) -> Option<&mut AppState> {
        if !self.apps.contains_key(source_id) {
            let full = self.apps.len() >= self.config.max_apps;
            if full && (tick < self.no_eviction_until || !self.evict_one(now)) {
                self.no_eviction_until = tick + 1;
                self.drop_one(DropReason::AppCap);
                return None;
            }
            self.apps
                .insert(source_id.into(), AppState::new(now, self.shape));
        }
        self.apps.get_mut(source_id)
    }

    fn evict_one(&mut self, now: Instant) -> bool {
        let idle = std::time::Duration::from_secs(u64::from(self.config.forget_instance_secs));
        let oldest = self
            .apps
            .iter()
            .min_by_key(|(_, a)| a.seen.last)
            .filter(|(_, a)| now.saturating_duration_since(a.seen.last) >= idle)
            .map(|(id, _)| id.clone());
        match oldest {
            Some(id) => {
                self.apps.remove(&id);
                self.stats.apps_forgotten += 1;
                true
            }
            None => false,
        }
    }

    /// The app an envelope belongs to, with its instance admitted when there is room (look it
    /// up in `instances`: a refused instance is simply absent).
    fn locate(
        &mut self,
        view: &EnvelopeView<'_>,
        tick: u64,
        now: Instant,
    ) -> Option<&mut AppState> {
        if view.source_id.is_empty() {
            return None;
        }
        let max_name = self.config.max_name_bytes;
        if view.source_id.len() > max_name {
            self.drop_one(DropReason::NameTooLong);
            return None;
        }
        let (max_instances, horizon) = (self.config.max_instances_per_app, self.shape.seconds);
        let instance_id = view.instance_id;
        // Decide the instance's fate before borrowing the app for good.
        let verdict = {
            let app = self.admit_app(view.source_id, tick, now)?;
            if instance_id.is_empty() || app.instances.contains_key(instance_id) {
                None
            } else if instance_id.len() > max_name {
                Some(DropReason::NameTooLong)
            } else if app.instances.len() >= max_instances {
                Some(DropReason::InstanceCap)
            } else {
                app.instances
                    .insert(instance_id.into(), InstanceState::new(now, horizon));
                None
            }
        };
        if let Some(reason) = verdict {
            self.drop_one(reason);
        }
        self.apps.get_mut(view.source_id)
    }

    fn observe_timer(&mut self, view: &EnvelopeView<'_>, tick: u64, now: Instant) -> bool {
        let Some(timer) = HttpTimer::read(view) else {
            return false;
        };
        // An app's own `http` timers (peer_type Server) would count each request twice.
        if !timer.client {
            return false;
        }
        let (class, reason) = (timer.status_class(), timer.router_error);
        let latency_us = timer.app_latency_ns().map(|ns| ns / 1000);
        let response = Response {
            class,
            router_made: reason.is_some(),
            // Router-made responses never reached the app: their speed says nothing about it
            // (`app_latency_ns` is `None` for them).
            latency_us,
        };
        let (shape, max_name, max_values) = (
            self.shape,
            self.config.max_name_bytes,
            self.config.max_tag_values,
        );
        let mut drop_reason = None;
        {
            let Some(app) = self.locate(view, tick, now) else {
                return false;
            };
            if let Some(i) = app.instances.get_mut(view.instance_id) {
                i.record_response(class == 5 && !response.router_made, tick, now);
            }
            app.record_response(response, tick, shape, now);
            if let Some(reason) = reason {
                let index = match app.reasons.iter().position(|(r, _)| &**r == reason) {
                    Some(i) => Some(i),
                    None if reason.len() > max_name => {
                        drop_reason = Some(DropReason::NameTooLong);
                        find_or_add_other(app, max_values, shape.seconds)
                    }
                    None if app.reasons.len() < max_values => {
                        app.reasons
                            .push((reason.into(), crate::ring::Ring::new(shape.seconds)));
                        Some(app.reasons.len() - 1)
                    }
                    None => {
                        drop_reason = Some(DropReason::TagValueCap);
                        find_or_add_other(app, max_values, shape.seconds)
                    }
                };
                if let Some(index) = index {
                    app.record_reason(index, tick);
                }
            }
        }
        if let Some(r) = drop_reason {
            self.drop_one(r);
        }
        true
    }

    fn observe_log(&mut self, view: &EnvelopeView<'_>, tick: u64, now: Instant) -> bool {
        let is_app = view
            .tag("source_type")
            .is_some_and(|t| t.starts_with("APP"));
        if !is_app {
            return false;
        }
        let is_err = view.log().is_some_and(|(_, err)| err);
        let Some(app) = self.locate(view, tick, now) else {
            return false;
        };
        app.record_log(is_err, tick, now);
        if let Some(i) = app.instances.get_mut(view.instance_id) {
            i.record_log(is_err, tick, now);
        }
        true
    }

    fn observe_event(&mut self, view: &EnvelopeView<'_>, tick: u64, now: Instant) -> bool {
        let Some((title, _)) = view.event() else {
            return false;
        };
        if title == GAP_TITLE {
            if let Some(gap) = Gap::from_view(view) {
                self.record_gap(&gap, now);
                return true;
            }
            return false;
        }
        if !event_title::is_crash(title) {
            return false;
        }
        let Some(app) = self.locate(view, tick, now) else {
            return false;
        };
        app.record_crash(tick, now);
        if let Some(i) = app.instances.get_mut(view.instance_id) {
            i.seen.touch(now);
        }
        true
    }

    fn observe_gauge(&mut self, view: &EnvelopeView<'_>, tick: u64, now: Instant) -> bool {
        // Gauges are per instance; one without an instance has nowhere to live.
        if view.instance_id.is_empty() {
            return false;
        }
        let (max_name, max_custom, horizon) = (
            self.config.max_name_bytes,
            self.config.max_custom_gauges,
            self.shape.seconds,
        );
        let mut drops: [u32; 6] = [0; 6];
        {
            let Some(app) = self.locate(view, tick, now) else {
                return false;
            };
            app.seen.touch(now);
            let AppState {
                instances,
                gauge_names,
                custom_gauges,
                ..
            } = app;
            let Some(instance) = instances.get_mut(view.instance_id) else {
                return true;
            };
            for (name, value, _unit) in view.gauge_values() {
                if !value.is_finite() {
                    drops[DropReason::BadValue.index()] += 1;
                    continue;
                }
                let index = match gauge_names.iter().position(|n| &**n == name) {
                    Some(i) => i,
                    None if name.len() > max_name => {
                        drops[DropReason::NameTooLong.index()] += 1;
                        continue;
                    }
                    None => {
                        let container = ContainerMetric::from_name(name).is_some();
                        if !container && *custom_gauges >= max_custom {
                            drops[DropReason::GaugeNameCap.index()] += 1;
                            continue;
                        }
                        *custom_gauges += usize::from(!container);
                        gauge_names.push(name.into());
                        gauge_names.len() - 1
                    }
                };
                // The caps keep names far below u16::MAX; a failed conversion is a drop.
                let Ok(index) = u16::try_from(index) else {
                    drops[DropReason::GaugeNameCap.index()] += 1;
                    continue;
                };
                instance.record_gauge(index, tick, value, now, horizon);
            }
        }
        for reason in DropReason::ALL {
            for _ in 0..drops[reason.index()] {
                self.drop_one(reason);
            }
        }
        true
    }

    /// Forgets idle instances and apps and refreshes the self-metrics.
    fn housekeeping(&mut self, now: Instant, tick: u64) {
        self.housekept_at = tick;
        let instance_idle = Duration::from_secs(u64::from(self.config.forget_instance_secs));
        let app_idle = Duration::from_secs(u64::from(self.config.forget_app_secs));
        let before = self.apps.len();
        self.apps
            .retain(|_, app| now.saturating_duration_since(app.seen.last) < app_idle);
        self.stats.apps_forgotten += (before - self.apps.len()) as u64;
        let mut instances = 0;
        for app in self.apps.values_mut() {
            app.instances
                .retain(|_, i| now.saturating_duration_since(i.seen.last) < instance_idle);
            instances += app.instances.len();
        }
        if let Some(m) = &self.metrics {
            m.envelopes
                .add(self.stats.envelopes - self.reported_envelopes);
            self.reported_envelopes = self.stats.envelopes;
            m.apps.set(self.apps.len() as f64);
            m.instances.set(instances as f64);
        }
    }
}

/// The index of the [`OTHER_REASON`] ring, added beyond the cap (one extra entry at most).
fn find_or_add_other(app: &mut AppState, max_values: usize, horizon: u64) -> Option<usize> {
    if let Some(i) = app.reasons.iter().position(|(r, _)| &**r == OTHER_REASON) {
        return Some(i);
    }
    if app.reasons.len() > max_values {
        return None;
    }
    app.reasons
        .push((OTHER_REASON.into(), crate::ring::Ring::new(horizon)));
    Some(app.reasons.len() - 1)
}
