//! Readers: [`AppWindows`] and [`InstanceWindows`] answer "what happened over the last W
//! seconds as of `now`" from the stored buckets, and say when each series was last updated.
//!
//! Window semantics (the same for every reader): a window of W seconds covers the W per-second
//! buckets ending with the one `now` falls in. Rates slide smoothly: the bucket just before the
//! window is weighted by how much of the current second has not yet passed, so `per_second` is
//! over exactly W seconds and does not jump when a second rolls over. Windows longer than the
//! horizon are answered over the horizon; sub-second windows are one second.
//!
//! Invariant: readers never mutate and never extrapolate: no data in a window is `None` (or a
//! zero count with `last` telling when data was last seen), never a guess.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hydrant_envelope::semantic::ContainerMetric;

use crate::minutes::MinuteCounts;
use crate::ring::Ring;
use crate::state::{AppState, InstanceState};
use crate::windows::Windows;

/// A count over a window and its rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Events in the window's buckets (the current partial second included).
    pub count: u64,
    /// Events per second over exactly the window (sliding estimate).
    pub per_second: f64,
    /// The window actually used (clamped to 1 s ..= the horizon).
    pub window: Duration,
    /// True when the series has been tracked for the whole window; a young series' rate is
    /// averaged over time it was not yet watched, so a consumer may want to wait.
    pub complete: bool,
    /// When an event of this series was last seen (`None`: never, "no data" rather than zero).
    pub last: Option<Instant>,
}

impl Rate {
    /// Seconds since the last event, if there was one.
    #[must_use]
    pub fn age(&self, now: Instant) -> Option<Duration> {
        self.last.map(|t| now.saturating_duration_since(t))
    }
}

/// Responses by status class over a window, app-made and router-made apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusClasses {
    /// App-made responses; index 0 counts responses without a valid status, 1..=5 are
    /// 1xx..5xx.
    pub app: [u64; 6],
    /// Router-made responses (no route, no endpoints, backend failed), same indexing.
    pub router: [u64; 6],
}

impl StatusClasses {
    /// App-made responses of one class (1..=5); 0 for any other class number.
    #[must_use]
    pub fn class(&self, class: u8) -> u64 {
        match class {
            1..=5 => self.app[usize::from(class)],
            _ => 0,
        }
    }

    /// Every response, app-made and router-made.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.app.iter().chain(&self.router).sum()
    }

    /// Router-made responses of every class.
    #[must_use]
    pub fn router_total(&self) -> u64 {
        self.router.iter().sum()
    }

    /// App-made 5xx.
    #[must_use]
    pub fn server_errors(&self) -> u64 {
        self.app[5]
    }

    /// Share of responses that were 5xx (router-made 5xx included when `count_router`);
    /// `None` when there were no responses.
    #[must_use]
    pub fn error_ratio(&self, count_router: bool) -> Option<f64> {
        let total = self.total();
        let bad = self.app[5] + if count_router { self.router[5] } else { 0 };
        (total > 0).then(|| bad as f64 / total as f64)
    }
}

/// Latency quantiles of app-made responses over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    /// Responses measured.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// The slowest.
    pub max: Duration,
}

/// Log lines over a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogRate {
    /// All `APP/*` lines, with their rate.
    pub lines: Rate,
    /// Those on stderr, in the window's buckets.
    pub stderr: u64,
}

/// A gauge over a window: one instance's, or an app's across its instances.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GaugeStat {
    /// Mean of the samples in the window (for an app: the mean of its instances' means, so a
    /// chatty instance does not outweigh a quiet one).
    pub avg: f64,
    /// Smallest sample in the window.
    pub min: f64,
    /// Largest sample in the window.
    pub max: f64,
    /// The latest sample (for an app: the mean of its instances' latest samples).
    pub last: f64,
    /// For an app: the sum of its instances' latest samples (total memory, say).
    pub last_sum: f64,
    /// Samples in the window.
    pub samples: u64,
    /// Instances with samples in the window.
    pub instances: u32,
    /// When the newest sample arrived.
    pub updated: Instant,
}

/// Sums a per-second ring over a window, sliding: `(count in the window's buckets, weighted
/// count over exactly the window)`.
fn slide<B>(ring: &Ring<B>, tick: u64, frac: f64, secs: u64, f: impl Fn(&B) -> u64) -> (u64, f64) {
    let mut count = 0;
    for (_, b) in ring.window(tick, secs) {
        count += f(b);
    }
    let before = tick.checked_sub(secs);
    let edge = before.map_or(0, |slot| {
        ring.window(slot, 1).map(|(_, b)| f(b)).sum::<u64>()
    });
    (count, count as f64 + edge as f64 * (1.0 - frac))
}

/// Per-second slots in a window, clamped to what is kept.
fn window_secs(windows: &Windows, window: Duration) -> u64 {
    let secs = window.as_secs() + u64::from(window.subsec_nanos() > 0);
    secs.clamp(1, u64::from(windows.config.horizon_secs))
}

fn rate<B>(
    windows: &Windows,
    ring: &Ring<B>,
    first_seen: Instant,
    last: Option<Instant>,
    window: Duration,
    now: Instant,
    f: impl Fn(&B) -> u64,
) -> Rate {
    let secs = window_secs(windows, window);
    let tick = windows.clock.tick(now);
    let (count, weighted) = slide(ring, tick, windows.clock.frac(now), secs, f);
    Rate {
        count,
        per_second: weighted / secs as f64,
        window: Duration::from_secs(secs),
        complete: now.saturating_duration_since(first_seen) >= Duration::from_secs(secs),
        last,
    }
}

/// The whole seconds a window covers at `now`, as `(tick, secs)` for [`Ring::window`].
fn seconds_of(windows: &Windows, window: Duration, now: Instant) -> (u64, u64) {
    (windows.clock.tick(now), window_secs(windows, window))
}

/// Sums `f` over a per-second ring's `(tick, secs)` seconds.
fn window_sum<B>(ring: &Ring<B>, (tick, secs): (u64, u64), f: impl Fn(&B) -> u64) -> u64 {
    ring.window(tick, secs).map(|(_, b)| f(b)).sum()
}

/// A per-second bucket that counts `APP/*` log lines, so apps and instances read them alike.
trait LogSecond {
    /// Log lines in the second.
    fn lines(&self) -> u64;
    /// Of those, lines on stderr.
    fn stderr(&self) -> u64;
}

impl LogSecond for crate::state::Second {
    fn lines(&self) -> u64 {
        u64::from(self.logs)
    }
    fn stderr(&self) -> u64 {
        u64::from(self.log_errs)
    }
}

impl LogSecond for crate::state::InstanceSecond {
    fn lines(&self) -> u64 {
        u64::from(self.logs)
    }
    fn stderr(&self) -> u64 {
        u64::from(self.log_errs)
    }
}

/// `APP/*` log lines over the window, from a ring of seconds that counts them.
fn log_rate<B: LogSecond>(
    windows: &Windows,
    ring: &Ring<B>,
    first_seen: Instant,
    last_log: Option<Instant>,
    window: Duration,
    now: Instant,
) -> LogRate {
    LogRate {
        lines: rate(windows, ring, first_seen, last_log, window, now, B::lines),
        stderr: window_sum(ring, seconds_of(windows, window, now), B::stderr),
    }
}

/// One app's windows, borrowed from [`Windows`].
#[derive(Debug, Clone, Copy)]
pub struct AppWindows<'a> {
    windows: &'a Windows,
    id: &'a str,
    state: &'a AppState,
}

impl<'a> AppWindows<'a> {
    pub(crate) fn new(windows: &'a Windows, id: &'a str, state: &'a AppState) -> Self {
        Self { windows, id, state }
    }

    /// The app's source id.
    #[must_use]
    pub fn source_id(&self) -> &'a str {
        self.id
    }

    /// When the app was first seen (windows younger than this are incomplete).
    #[must_use]
    pub fn first_seen(&self) -> Instant {
        self.state.seen.first
    }

    /// When any envelope of the app was last kept.
    #[must_use]
    pub fn last_seen(&self) -> Instant {
        self.state.seen.last
    }

    /// When the router last reported a response.
    #[must_use]
    pub fn last_request(&self) -> Option<Instant> {
        self.state.seen.last_request
    }

    /// When an `APP/*` log line was last seen.
    #[must_use]
    pub fn last_log(&self) -> Option<Instant> {
        self.state.seen.last_log
    }

    /// When a crash event was last seen.
    #[must_use]
    pub fn last_crash(&self) -> Option<Instant> {
        self.state.last_crash
    }

    /// When the stream last reported envelopes of this app lost, and how many in all. A window
    /// spanning that instant undercounts.
    #[must_use]
    pub fn last_gap(&self) -> Option<(Instant, u64)> {
        self.state.last_gap.map(|t| (t, self.state.lost))
    }

    /// Router responses (app-made and router-made) over the window.
    #[must_use]
    pub fn requests(&self, window: Duration, now: Instant) -> Rate {
        let s = self.state;
        rate(
            self.windows,
            &s.seconds,
            s.seen.first,
            s.seen.last_request,
            window,
            now,
            |b| u64::from(b.requests),
        )
    }

    /// Responses by status class over the window.
    #[must_use]
    pub fn status_classes(&self, window: Duration, now: Instant) -> StatusClasses {
        let secs = window_secs(self.windows, window);
        let tick = self.windows.clock.tick(now);
        let mut out = StatusClasses::default();
        for (_, b) in self.state.seconds.window(tick, secs) {
            for i in 0..6 {
                out.app[i] += u64::from(b.app[i]);
                out.router[i] += u64::from(b.router[i]);
            }
        }
        out
    }

    /// Router-made responses by reason over the window (reasons past the cap under `other`).
    #[must_use]
    pub fn router_errors(&self, window: Duration, now: Instant) -> Vec<(&'a str, u64)> {
        let secs = window_secs(self.windows, window);
        let tick = self.windows.clock.tick(now);
        self.state
            .reasons
            .iter()
            .map(|(reason, ring)| {
                let n = ring.window(tick, secs).map(|(_, n)| u64::from(*n)).sum();
                (&**reason, n)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// The merged latency histogram of app-made responses over the window. Windows up to
    /// `latency_fine_secs` are exact to the second; longer ones are rounded to whole blocks of
    /// `latency_block_secs` (the current partial block included).
    fn latency_histogram(&self, window: Duration, now: Instant) -> Option<Histogram<u32>> {
        let secs = window_secs(self.windows, window);
        let tick = self.windows.clock.tick(now);
        let shape = self.windows.shape;
        let mut merged = Histogram::<u32>::new_with_bounds(1, shape.max_us, 2).ok()?;
        let mut add = |h: &Histogram<u32>| {
            // Same bounds on both sides, so this cannot run out of range.
            let _ = merged.add(h);
        };
        if secs <= shape.fine {
            self.state.fine.window(tick, secs).for_each(|(_, h)| add(h));
        } else {
            let blocks = secs.div_ceil(shape.block);
            self.state
                .coarse
                .window(tick / shape.block, blocks)
                .for_each(|(_, h)| add(h));
        }
        (!merged.is_empty()).then_some(merged)
    }

    /// p50 / p95 / p99 / max of app-made responses over the window; `None` without any.
    #[must_use]
    pub fn latency(&self, window: Duration, now: Instant) -> Option<Latency> {
        let h = self.latency_histogram(window, now)?;
        let us = |v: u64| Duration::from_micros(v);
        Some(Latency {
            count: h.len(),
            p50: us(h.value_at_quantile(0.50)),
            p95: us(h.value_at_quantile(0.95)),
            p99: us(h.value_at_quantile(0.99)),
            max: us(h.max()),
        })
    }

    /// One latency quantile (`q` in 0..=1, clamped) over the window; `None` without data.
    #[must_use]
    pub fn latency_quantile(&self, q: f64, window: Duration, now: Instant) -> Option<Duration> {
        let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
        let h = self.latency_histogram(window, now)?;
        Some(Duration::from_micros(h.value_at_quantile(q)))
    }

    /// `APP/*` log lines over the window.
    #[must_use]
    pub fn logs(&self, window: Duration, now: Instant) -> LogRate {
        let s = self.state;
        log_rate(
            self.windows,
            &s.seconds,
            s.seen.first,
            s.seen.last_log,
            window,
            now,
        )
    }

    /// Crash events over the window.
    #[must_use]
    pub fn crashes(&self, window: Duration, now: Instant) -> u64 {
        let seconds = seconds_of(self.windows, window, now);
        window_sum(&self.state.seconds, seconds, |b| u64::from(b.crashes))
    }

    /// A gauge across the app's instances over the window; `None` when no instance reported
    /// it within the window (missing or stale: the autoscaler holds).
    #[must_use]
    pub fn gauge(&self, name: &str, window: Duration, now: Instant) -> Option<GaugeStat> {
        let index = self.gauge_index(name)?;
        let mut acc: Option<GaugeStat> = None;
        let mut sum_avg = 0.0;
        for i in self.state.instances.values() {
            let Some(stat) = instance_gauge(self.windows, i, index, window, now) else {
                continue;
            };
            sum_avg += stat.avg;
            acc = Some(match acc {
                None => stat,
                Some(a) => GaugeStat {
                    avg: 0.0,
                    min: a.min.min(stat.min),
                    max: a.max.max(stat.max),
                    last: 0.0,
                    last_sum: a.last_sum + stat.last_sum,
                    samples: a.samples + stat.samples,
                    instances: a.instances + 1,
                    updated: a.updated.max(stat.updated),
                },
            });
        }
        acc.map(|mut a| {
            let n = f64::from(a.instances);
            a.avg = sum_avg / n;
            a.last = a.last_sum / n;
            a
        })
    }

    /// Gauge names seen for this app (container gauges first as they arrived, then custom).
    pub fn gauge_names(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.state.gauge_names.iter().map(|n| &**n)
    }

    /// True when `name` is one of the executor's container gauges.
    #[must_use]
    pub fn is_container_gauge(name: &str) -> bool {
        ContainerMetric::from_name(name).is_some()
    }

    fn gauge_index(&self, name: &str) -> Option<u16> {
        let p = self.state.gauge_names.iter().position(|n| &**n == name)?;
        u16::try_from(p).ok()
    }

    /// The app's tracked instances, in no particular order.
    pub fn instances(&self) -> impl Iterator<Item = InstanceWindows<'a>> + 'a {
        let (windows, app) = (self.windows, self.state);
        app.instances
            .iter()
            .map(move |(id, state)| InstanceWindows {
                windows,
                app,
                id,
                state,
            })
    }

    /// One instance by its id (the instance index the executor and router use).
    #[must_use]
    pub fn instance(&self, instance_id: &str) -> Option<InstanceWindows<'a>> {
        let (windows, app) = (self.windows, self.state);
        app.instances
            .get_key_value(instance_id)
            .map(|(id, state)| InstanceWindows {
                windows,
                app,
                id,
                state,
            })
    }

    /// Per-minute SLO counts, oldest first, up to `minute_history` minutes.
    pub fn minutes(&self) -> impl Iterator<Item = &'a MinuteCounts> + 'a {
        self.state.minutes.iter().map(|(_, m)| m)
    }

    /// Per-minute counts from `minute` (UNIX minutes) on, oldest first: what the SLO alerter
    /// persists incrementally.
    pub fn minutes_since(&self, minute: u64) -> impl Iterator<Item = &'a MinuteCounts> + 'a {
        self.minutes().filter(move |m| m.minute >= minute)
    }

    /// The sum of the per-minute counts of the last `minutes` minutes including the current one.
    #[must_use]
    pub fn minutes_total(&self, minutes: u64, now: Instant) -> MinuteCounts {
        let current = self.windows.minute_at(now);
        let mut total = MinuteCounts::new(current);
        for (_, m) in self.state.minutes.window(current, minutes) {
            total.merge(m);
        }
        total
    }
}

fn instance_gauge(
    windows: &Windows,
    i: &InstanceState,
    index: u16,
    window: Duration,
    now: Instant,
) -> Option<GaugeStat> {
    let g = i.gauge(index)?;
    let secs = window_secs(windows, window);
    let tick = windows.clock.tick(now);
    let (mut sum, mut samples, mut min, mut max) = (0.0, 0u64, f64::INFINITY, f64::NEG_INFINITY);
    for (_, b) in g.seconds.window(tick, secs) {
        sum += b.sum;
        samples += u64::from(b.count);
        min = min.min(b.min);
        max = max.max(b.max);
    }
    (samples > 0).then(|| GaugeStat {
        avg: sum / samples as f64,
        min,
        max,
        last: g.last,
        last_sum: g.last,
        samples,
        instances: 1,
        updated: g.updated,
    })
}

/// One instance's windows.
#[derive(Debug, Clone, Copy)]
pub struct InstanceWindows<'a> {
    windows: &'a Windows,
    app: &'a AppState,
    id: &'a str,
    state: &'a InstanceState,
}

impl<'a> InstanceWindows<'a> {
    /// The instance id (index).
    #[must_use]
    pub fn id(&self) -> &'a str {
        self.id
    }

    /// When the instance was first seen.
    #[must_use]
    pub fn first_seen(&self) -> Instant {
        self.state.seen.first
    }

    /// When anything of the instance was last kept.
    #[must_use]
    pub fn last_seen(&self) -> Instant {
        self.state.seen.last
    }

    /// Router responses this instance served over the window.
    #[must_use]
    pub fn requests(&self, window: Duration, now: Instant) -> Rate {
        let s = self.state;
        rate(
            self.windows,
            &s.seconds,
            s.seen.first,
            s.seen.last_request,
            window,
            now,
            |b| u64::from(b.requests),
        )
    }

    /// App-made 5xx this instance served over the window.
    #[must_use]
    pub fn server_errors(&self, window: Duration, now: Instant) -> u64 {
        let seconds = seconds_of(self.windows, window, now);
        window_sum(&self.state.seconds, seconds, |b| u64::from(b.server_errors))
    }

    /// `APP/*` log lines of this instance over the window.
    #[must_use]
    pub fn logs(&self, window: Duration, now: Instant) -> LogRate {
        let s = self.state;
        log_rate(
            self.windows,
            &s.seconds,
            s.seen.first,
            s.seen.last_log,
            window,
            now,
        )
    }

    /// One gauge of this instance over the window; `None` without a sample in it.
    #[must_use]
    pub fn gauge(&self, name: &str, window: Duration, now: Instant) -> Option<GaugeStat> {
        let p = self.app.gauge_names.iter().position(|n| &**n == name)?;
        instance_gauge(
            self.windows,
            self.state,
            u16::try_from(p).ok()?,
            window,
            now,
        )
    }

    /// The latest value of every gauge of this instance: `(name, value, when)`.
    pub fn gauges_last(&self) -> impl Iterator<Item = (&'a str, f64, Instant)> + 'a {
        let names = &self.app.gauge_names;
        self.state.gauges.iter().filter_map(move |(i, g)| {
            names
                .get(usize::from(*i))
                .map(|n| (&**n, g.last, g.updated))
        })
    }
}
