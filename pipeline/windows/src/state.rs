//! The stored state of one app and its instances, and how one observation updates it.
//!
//! Flow: [`crate::Windows::observe`] classifies an envelope and calls one `record_*` here with
//! the slot numbers already computed; the readers in [`crate::view`] only read this state.
//!
//! Invariant: every collection in here is bounded: rings by their horizons, instances, gauge
//! names and tag values by the caps in [`crate::WindowsConfig`] (checked by the caller before
//! inserting), and histograms by the fine and coarse latency horizons plus a spare or two.

use std::collections::HashMap;
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::minutes::MinuteCounts;
use crate::ring::Ring;

/// Histograms kept for reuse per app, so a steady app allocates none once warmed up.
const SPARE_HISTOGRAMS: usize = 2;

/// One second of one app.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Second {
    /// Responses reported by the router (app-made and router-made).
    pub(crate) requests: u32,
    /// App-made responses by status class (index 0: no valid status, 1..=5: 1xx..5xx).
    pub(crate) app: [u32; 6],
    /// Router-made responses by status class.
    pub(crate) router: [u32; 6],
    /// `APP/*` log lines.
    pub(crate) logs: u32,
    /// Those of them on stderr.
    pub(crate) log_errs: u32,
    /// Crash events.
    pub(crate) crashes: u32,
}

/// One second of one instance.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct InstanceSecond {
    pub(crate) requests: u32,
    pub(crate) server_errors: u32,
    pub(crate) logs: u32,
    pub(crate) log_errs: u32,
}

/// One second of one gauge of one instance.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GaugeSecond {
    pub(crate) sum: f64,
    pub(crate) count: u32,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

/// One gauge of one instance.
#[derive(Debug, Clone)]
pub(crate) struct GaugeSeries {
    pub(crate) seconds: Ring<GaugeSecond>,
    pub(crate) last: f64,
    pub(crate) updated: Instant,
}

impl GaugeSeries {
    fn record(&mut self, tick: u64, value: f64, now: Instant) {
        let s = self.seconds.at(
            tick,
            || GaugeSecond {
                sum: 0.0,
                count: 0,
                min: value,
                max: value,
            },
            drop,
        );
        s.sum += value;
        s.count = s.count.saturating_add(1);
        s.min = s.min.min(value);
        s.max = s.max.max(value);
        self.last = value;
        self.updated = now;
    }
}

/// When an app or an instance was first and last seen, and last seen answering a request or
/// logging: what its views and the idle sweep read. Every envelope kept moves `last`; the rules
/// for the others live here once, for apps and instances alike.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    pub(crate) first: Instant,
    pub(crate) last: Instant,
    pub(crate) last_request: Option<Instant>,
    pub(crate) last_log: Option<Instant>,
}

impl Seen {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            first: now,
            last: now,
            last_request: None,
            last_log: None,
        }
    }

    /// Something of it was kept.
    pub(crate) fn touch(&mut self, now: Instant) {
        self.last = now;
    }

    /// The router reported a response of it.
    pub(crate) fn request(&mut self, now: Instant) {
        self.last = now;
        self.last_request = Some(now);
    }

    /// An `APP/*` log line of it arrived.
    pub(crate) fn log(&mut self, now: Instant) {
        self.last = now;
        self.last_log = Some(now);
    }
}

/// One instance of one app.
#[derive(Debug, Clone)]
pub(crate) struct InstanceState {
    pub(crate) seen: Seen,
    pub(crate) seconds: Ring<InstanceSecond>,
    /// Keyed by the index of the name in [`AppState::gauge_names`].
    pub(crate) gauges: Vec<(u16, GaugeSeries)>,
}

impl InstanceState {
    pub(crate) fn new(now: Instant, horizon: u64) -> Self {
        Self {
            seen: Seen::new(now),
            seconds: Ring::new(horizon),
            gauges: Vec::new(),
        }
    }

    pub(crate) fn gauge(&self, name_index: u16) -> Option<&GaugeSeries> {
        self.gauges
            .iter()
            .find(|(i, _)| *i == name_index)
            .map(|(_, g)| g)
    }

    pub(crate) fn record_gauge(
        &mut self,
        name_index: u16,
        tick: u64,
        value: f64,
        now: Instant,
        horizon: u64,
    ) {
        self.seen.touch(now);
        let series = match self.gauges.iter().position(|(i, _)| *i == name_index) {
            Some(p) => &mut self.gauges[p].1,
            None => {
                self.gauges.push((
                    name_index,
                    GaugeSeries {
                        seconds: Ring::new(horizon),
                        last: value,
                        updated: now,
                    },
                ));
                let last = self.gauges.len() - 1;
                &mut self.gauges[last].1
            }
        };
        series.record(tick, value, now);
    }
}

/// Where one response came from and how it ended, as read from a router Timer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Response {
    /// Status class index (0 when the status was missing or not a valid code).
    pub(crate) class: usize,
    /// True when the router made the response itself.
    pub(crate) router_made: bool,
    /// Latency in µs (app-made responses only).
    pub(crate) latency_us: Option<u64>,
}

/// Everything known about one app.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) seen: Seen,
    pub(crate) last_crash: Option<Instant>,
    pub(crate) last_gap: Option<Instant>,
    /// Envelopes of this app that upstream hops reported lost.
    pub(crate) lost: u64,
    pub(crate) seconds: Ring<Second>,
    /// Per-second latency histograms for the short windows.
    pub(crate) fine: Ring<Histogram<u32>>,
    /// Per-block latency histograms for windows up to the horizon.
    pub(crate) coarse: Ring<Histogram<u32>>,
    spare: Vec<Histogram<u32>>,
    pub(crate) minutes: Ring<MinuteCounts>,
    pub(crate) instances: HashMap<Box<str>, InstanceState>,
    /// Gauge names seen for this app, in order of first sight; instances refer to them by index.
    pub(crate) gauge_names: Vec<Box<str>>,
    /// How many of `gauge_names` are custom (not the executor's container gauges).
    pub(crate) custom_gauges: usize,
    /// Router-made responses by reason, one ring per distinct reason (capped).
    pub(crate) reasons: Vec<(Box<str>, Ring<u32>)>,
}

/// Ring sizes, computed once from the config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// Per-second slots kept (the horizon plus one, for the sliding-window interpolation).
    pub(crate) seconds: u64,
    pub(crate) fine: u64,
    pub(crate) block: u64,
    pub(crate) blocks: u64,
    pub(crate) minutes: u64,
    /// Largest latency a histogram tracks, in µs.
    pub(crate) max_us: u64,
}

impl AppState {
    pub(crate) fn new(now: Instant, shape: Shape) -> Self {
        Self {
            seen: Seen::new(now),
            last_crash: None,
            last_gap: None,
            lost: 0,
            seconds: Ring::new(shape.seconds),
            fine: Ring::new(shape.fine),
            coarse: Ring::new(shape.blocks),
            spare: Vec::new(),
            minutes: Ring::new(shape.minutes),
            instances: HashMap::new(),
            gauge_names: Vec::new(),
            custom_gauges: 0,
            reasons: Vec::new(),
        }
    }

    pub(crate) fn record_response(&mut self, r: Response, tick: u64, shape: Shape, now: Instant) {
        self.seen.request(now);
        let s = self.seconds.at(tick, Second::default, drop);
        s.requests = s.requests.saturating_add(1);
        let by_class = if r.router_made {
            &mut s.router
        } else {
            &mut s.app
        };
        by_class[r.class] = by_class[r.class].saturating_add(1);
        let router = r.router_made.then_some(r.class == 5);
        self.minutes
            .at(tick / 60, || MinuteCounts::new(tick / 60), drop)
            .record(r.class == 5, router, r.latency_us);
        if let Some(us) = r.latency_us {
            let Self {
                fine,
                coarse,
                spare,
                ..
            } = self;
            for (ring, slot) in [(fine, tick), (coarse, tick / shape.block)] {
                if ring.current(slot).is_none() {
                    // Reuse an expired histogram when there is one; a fresh one is the same
                    // shape the config was validated with, so creating it does not fail.
                    let fresh = spare
                        .pop()
                        .or_else(|| Histogram::new_with_bounds(1, shape.max_us, 2).ok());
                    let Some(h) = fresh else { continue };
                    ring.push(slot, h, |mut old| {
                        if spare.len() < SPARE_HISTOGRAMS {
                            old.reset();
                            spare.push(old);
                        }
                    });
                }
                if let Some(h) = ring.current(slot) {
                    h.saturating_record(us);
                }
            }
        }
    }

    pub(crate) fn record_reason(&mut self, index: usize, tick: u64) {
        if let Some((_, ring)) = self.reasons.get_mut(index) {
            let n = ring.at(tick, || 0, drop);
            *n = n.saturating_add(1);
        }
    }

    pub(crate) fn record_log(&mut self, is_err: bool, tick: u64, now: Instant) {
        self.seen.log(now);
        let s = self.seconds.at(tick, Second::default, drop);
        s.logs = s.logs.saturating_add(1);
        s.log_errs = s.log_errs.saturating_add(u32::from(is_err));
    }

    pub(crate) fn record_crash(&mut self, tick: u64, now: Instant) {
        self.seen.touch(now);
        self.last_crash = Some(now);
        let s = self.seconds.at(tick, Second::default, drop);
        s.crashes = s.crashes.saturating_add(1);
    }

    /// Histograms held, live and spare (for the footprint).
    pub(crate) fn histograms(&self) -> usize {
        self.fine.len() + self.coarse.len() + self.spare.len()
    }
}

impl InstanceState {
    pub(crate) fn record_response(&mut self, server_error: bool, tick: u64, now: Instant) {
        self.seen.request(now);
        let s = self.seconds.at(tick, InstanceSecond::default, drop);
        s.requests = s.requests.saturating_add(1);
        s.server_errors = s.server_errors.saturating_add(u32::from(server_error));
    }

    pub(crate) fn record_log(&mut self, is_err: bool, tick: u64, now: Instant) {
        self.seen.log(now);
        let s = self.seconds.at(tick, InstanceSecond::default, drop);
        s.logs = s.logs.saturating_add(1);
        s.log_errs = s.log_errs.saturating_add(u32::from(is_err));
    }
}
