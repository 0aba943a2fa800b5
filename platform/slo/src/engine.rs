//! [`Engine`]: every app's SLOs evaluated over the shared rolling windows, the period ledger
//! that outlives the 3-day minute history, and the alert state.
//!
//! Flow: the SLO poll → [`Engine::set_specs`]; every evaluation tick → [`Engine::evaluate`]
//! (fold completed minutes into per-day totals, evaluate each SLO, record the status, return
//! what started or stopped firing) → the role turns [`Notice`]s into `SLO` log lines and
//! webhooks and statuses into budget gauges. [`Engine::snapshot`] / [`Engine::restore`] move
//! an app's minutes, days and firing alerts to and from its state file.
//!
//! Invariants: a minute is folded into the day ledger exactly once (`folded_through` moves
//! forward only and travels with the minutes in the state file); the ledger keeps at most
//! [`MAX_PERIOD_DAYS`] days per app; apps without SLOs keep no ledger.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use hydrant_api::slo::{
    AlertStatus, AppSloStatus, AppSlos, MAX_PERIOD_DAYS, Slo, SloStatus, WindowBurn,
};
use hydrant_windows::{MinuteCounts, Windows};
use serde::{Deserialize, Serialize};

use crate::eval::{self, Evaluation, Firing, Severity, Transition, WINDOWS};

const MINUTES_PER_DAY: u64 = 1440;

/// Version of the state file's layout.
pub const STATE_VERSION: u32 = 1;

/// One app's persisted state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppState {
    /// Layout version ([`STATE_VERSION`]).
    pub version: u32,
    /// The per-minute counts the windows hold (up to 3 days).
    pub minutes: Vec<MinuteCounts>,
    /// Per-day totals (`minute` = first minute of the day), oldest first.
    pub days: Vec<MinuteCounts>,
    /// The newest minute already added to `days`.
    pub folded_through: u64,
    /// Alerts firing, by SLO name.
    pub alerts: BTreeMap<String, Vec<Firing>>,
}

/// An alert that started or stopped, for log lines and webhooks.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// The app.
    pub app_guid: String,
    /// Its name.
    pub app_name: String,
    /// The SLO.
    pub slo: Slo,
    /// Page or ticket.
    pub severity: Severity,
    /// True when it started, false when it resolved.
    pub firing: bool,
    /// The rule that started it.
    pub rule: String,
    /// When it started, UNIX seconds.
    pub since: u64,
    /// When this happened, UNIX seconds.
    pub at: u64,
    /// Burn per window (label, rate) at the time.
    pub burn_rates: Vec<(&'static str, Option<f64>)>,
    /// Budget left at the time.
    pub budget_remaining: f64,
}

#[derive(Debug, Default)]
struct Ledger {
    days: Vec<MinuteCounts>,
    folded_through: u64,
    alerts: BTreeMap<String, Vec<Firing>>,
}

impl Ledger {
    /// Adds every completed minute newer than `folded_through` to its day.
    fn fold(&mut self, minutes: impl Iterator<Item = MinuteCounts>, current: u64) {
        for m in minutes {
            if m.minute <= self.folded_through || m.minute >= current {
                continue;
            }
            let day = m.minute / MINUTES_PER_DAY * MINUTES_PER_DAY;
            match self.days.last_mut() {
                Some(last) if last.minute == day => last.merge(&m),
                _ => {
                    let mut d = m;
                    d.minute = day;
                    self.days.push(d);
                }
            }
            self.folded_through = m.minute;
        }
        let oldest = (current / MINUTES_PER_DAY)
            .saturating_sub(u64::from(MAX_PERIOD_DAYS))
            .saturating_mul(MINUTES_PER_DAY);
        self.days.retain(|d| d.minute >= oldest);
    }

    /// The last `days` days (today included) plus the minutes not folded yet.
    fn period(&self, days: u32, current: u64, unfolded: &MinuteCounts) -> MinuteCounts {
        let first = (current / MINUTES_PER_DAY)
            .saturating_sub(u64::from(days).saturating_sub(1))
            .saturating_mul(MINUTES_PER_DAY);
        let mut total = *unfolded;
        for d in self.days.iter().filter(|d| d.minute >= first) {
            total.merge(d);
        }
        total
    }
}

/// Every app's SLOs and what is known about them.
#[derive(Debug, Default)]
pub struct Engine {
    specs: BTreeMap<String, AppSlos>,
    specs_loaded: bool,
    ledgers: HashMap<String, Ledger>,
    statuses: BTreeMap<String, AppSloStatus>,
}

impl Engine {
    /// An engine with no SLOs yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the SLOs (the cloud controller's current answer). Alerts of SLOs that no longer
    /// exist are forgotten without a "resolved" notice: nobody asked for them any more.
    pub fn set_specs(&mut self, specs: Vec<AppSlos>) {
        self.specs = specs
            .into_iter()
            .filter(|a| !a.slos.is_empty())
            .map(|a| (a.app_guid.clone(), a))
            .collect();
        self.specs_loaded = true;
        self.statuses
            .retain(|guid, _| self.specs.contains_key(guid));
        for (guid, ledger) in &mut self.ledgers {
            match self.specs.get(guid) {
                Some(app) => ledger
                    .alerts
                    .retain(|name, _| app.slos.iter().any(|s| &s.name == name)),
                None => ledger.alerts.clear(),
            }
        }
    }

    /// Whether specs have been loaded at least once (until then nothing may be deleted).
    #[must_use]
    pub fn specs_loaded(&self) -> bool {
        self.specs_loaded
    }

    /// The apps that have SLOs.
    pub fn apps(&self) -> impl Iterator<Item = &str> + '_ {
        self.specs.keys().map(String::as_str)
    }

    /// Evaluates every SLO at `now` (UNIX second `unix_now`); returns what changed.
    pub fn evaluate(&mut self, windows: &Windows, now: Instant, unix_now: u64) -> Vec<Notice> {
        let current = windows.minute_at(now);
        let connected = windows.stream_status().connected;
        let mut notices = Vec::new();
        for (guid, app) in &self.specs {
            let ledger = self.ledgers.entry(guid.clone()).or_default();
            let view = windows.app(guid);
            if let Some(view) = &view {
                ledger.fold(view.minutes().copied(), current);
            }
            let unfolded = view
                .as_ref()
                .map(|v| {
                    let mut sum = MinuteCounts::new(current);
                    for m in v.minutes_since(ledger.folded_through.saturating_add(1)) {
                        sum.merge(m);
                    }
                    sum
                })
                .unwrap_or_default();
            let mut status = AppSloStatus {
                app_guid: guid.clone(),
                slos: Vec::with_capacity(app.slos.len()),
                stream_connected: connected,
            };
            for slo in &app.slos {
                let period = ledger.period(slo.period_days, current, &unfolded);
                let evaluation = eval::evaluate(
                    slo,
                    |n| {
                        view.as_ref()
                            .map(|v| v.minutes_total(n, now))
                            .unwrap_or_default()
                    },
                    &period,
                );
                let active = ledger.alerts.entry(slo.name.clone()).or_default();
                for t in eval::transitions(active, &evaluation, unix_now) {
                    notices.push(notice(app, slo, &evaluation, t, unix_now));
                }
                status.slos.push(slo_status(slo, &evaluation, active));
            }
            self.statuses.insert(guid.clone(), status);
        }
        notices
    }

    /// The last evaluation of one app.
    #[must_use]
    pub fn status(&self, app_guid: &str) -> Option<&AppSloStatus> {
        self.statuses.get(app_guid)
    }

    /// The last evaluation of every app.
    pub fn statuses(&self) -> impl Iterator<Item = &AppSloStatus> + '_ {
        self.statuses.values()
    }

    /// The state of one app to persist.
    #[must_use]
    pub fn snapshot(&self, app_guid: &str, windows: &Windows) -> Option<AppState> {
        let ledger = self.ledgers.get(app_guid)?;
        Some(AppState {
            version: STATE_VERSION,
            minutes: windows
                .app(app_guid)
                .map(|v| v.minutes().copied().collect())
                .unwrap_or_default(),
            days: ledger.days.clone(),
            folded_through: ledger.folded_through,
            alerts: ledger.alerts.clone(),
        })
    }

    /// Puts one app's persisted state back: minutes into the windows, days and alerts here.
    ///
    /// # Errors
    /// The windows refused the minutes (app cap, bad id); the ledger is restored anyway.
    pub fn restore(
        &mut self,
        app_guid: &str,
        state: AppState,
        windows: &mut Windows,
        now: Instant,
    ) -> Result<(), hydrant_windows::Error> {
        let mut days = state.days;
        days.sort_by_key(|d| d.minute);
        days.dedup_by_key(|d| d.minute);
        let keep = usize::try_from(MAX_PERIOD_DAYS).unwrap_or(usize::MAX);
        if days.len() > keep {
            days.drain(..days.len() - keep);
        }
        self.ledgers.insert(
            app_guid.to_owned(),
            Ledger {
                days,
                folded_through: state.folded_through,
                alerts: state.alerts,
            },
        );
        if state.minutes.is_empty() {
            return Ok(());
        }
        windows.restore_minutes(app_guid, &state.minutes, now)
    }
}

fn burn_rates(e: &Evaluation) -> Vec<(&'static str, Option<f64>)> {
    WINDOWS
        .iter()
        .zip(e.windows.iter())
        .map(|((label, _), b)| (*label, b.rate))
        .collect()
}

fn notice(app: &AppSlos, slo: &Slo, e: &Evaluation, t: Transition, at: u64) -> Notice {
    let (severity, firing, rule, since) = match t {
        Transition::Fired { severity, rule } => (severity, true, rule.label.to_owned(), at),
        Transition::Resolved { firing } => (firing.severity, false, firing.rule, firing.since),
    };
    Notice {
        app_guid: app.app_guid.clone(),
        app_name: app.app_name.clone(),
        slo: slo.clone(),
        severity,
        firing,
        rule,
        since,
        at,
        burn_rates: burn_rates(e),
        budget_remaining: e.budget_remaining,
    }
}

fn slo_status(slo: &Slo, e: &Evaluation, active: &[Firing]) -> SloStatus {
    SloStatus {
        name: slo.name.clone(),
        sli_kind: slo.sli.kind().to_owned(),
        objective: slo.objective,
        period_days: slo.period_days,
        sli_1h: e.window(60).and_then(eval::Burn::sli_percent),
        sli_period: e.period.sli_percent(),
        period_requests: e.period.requests,
        budget_remaining: e.budget_remaining,
        burn_rates: WINDOWS
            .iter()
            .zip(e.windows.iter())
            .map(|((label, _), b)| WindowBurn {
                window: (*label).to_owned(),
                rate: b.rate,
                requests: b.requests,
            })
            .collect(),
        alerts: active
            .iter()
            .map(|f| AlertStatus {
                severity: f.severity.as_str().to_owned(),
                rule: f.rule.clone(),
                since: f.since,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day_minute(day: u64, minute: u64, total: u32, bad: u32) -> MinuteCounts {
        MinuteCounts {
            total,
            server_errors: bad,
            ..MinuteCounts::new(day * MINUTES_PER_DAY + minute)
        }
    }

    #[test]
    fn minutes_fold_once_into_days_and_old_days_go() {
        let mut l = Ledger::default();
        let ms = vec![
            day_minute(100, 10, 10, 1),
            day_minute(100, 11, 10, 0),
            day_minute(101, 0, 5, 5),
        ];
        // The current minute (the last) is not complete, so it waits.
        l.fold(ms.clone().into_iter(), 101 * MINUTES_PER_DAY);
        assert_eq!(l.days.len(), 1);
        assert_eq!((l.days[0].total, l.days[0].server_errors), (20, 1));
        l.fold(ms.into_iter(), 101 * MINUTES_PER_DAY + 1);
        assert_eq!(l.days.len(), 2);
        assert_eq!(l.folded_through, 101 * MINUTES_PER_DAY);
        // The period of 1 day is today only; 2 days reaches back.
        let now = 101 * MINUTES_PER_DAY + 1;
        assert_eq!(l.period(1, now, &MinuteCounts::default()).total, 5);
        assert_eq!(l.period(2, now, &MinuteCounts::default()).total, 25);
        // 91 days later the old days are gone.
        l.fold(std::iter::empty(), (101 + 91) * MINUTES_PER_DAY);
        assert!(l.days.is_empty());
    }
}
