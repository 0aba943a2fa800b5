//! The SRE workbook's multi-window, multi-burn-rate arithmetic, with no clock and no I/O:
//! minute counts in, burn rates, budget and firing rules out.
//!
//! Flow: [`crate::engine`] sums the per-minute counts of each window → [`evaluate`] turns them
//! into burn rates (error ratio ÷ budget) and checks [`RULES`] → [`transitions`] compares the
//! rules that hold with the alerts already firing and says what started and what stopped.
//!
//! Invariants: a rule fires only when both of its windows burn faster than its factor AND its
//! long window holds at least `min_requests` requests (a quiet app does not page on one
//! error); a window without requests has no burn rate (never zero); an alert resolves as
//! soon as no rule of its severity holds, which the short windows make quick.

use hydrant_api::slo::{Sli, Slo};
use hydrant_windows::MinuteCounts;
use serde::{Deserialize, Serialize};

/// How loud an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Wake someone up.
    Page,
    /// Look at it during working hours.
    Ticket,
}

impl Severity {
    /// `page` or `ticket`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Page => "page",
            Severity::Ticket => "ticket",
        }
    }
}

/// One burn-rate rule: both windows must burn faster than `factor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    /// Page or ticket.
    pub severity: Severity,
    /// The long window, minutes.
    pub long_minutes: u64,
    /// The short window (1/12 of the long one), minutes.
    pub short_minutes: u64,
    /// The burn-rate threshold.
    pub factor: f64,
    /// How people read it.
    pub label: &'static str,
}

/// Sloth's full set, from the workbook's table for a 30-day period: pages at 2 % and 5 % of
/// the budget consumed in the long window, tickets at 10 %.
pub const RULES: [Rule; 4] = [
    Rule {
        severity: Severity::Page,
        long_minutes: 60,
        short_minutes: 5,
        factor: 14.4,
        label: "14.4x over 1h and 5m",
    },
    Rule {
        severity: Severity::Page,
        long_minutes: 360,
        short_minutes: 30,
        factor: 6.0,
        label: "6x over 6h and 30m",
    },
    Rule {
        severity: Severity::Ticket,
        long_minutes: 1440,
        short_minutes: 120,
        factor: 3.0,
        label: "3x over 1d and 2h",
    },
    Rule {
        severity: Severity::Ticket,
        long_minutes: 4320,
        short_minutes: 360,
        factor: 1.0,
        label: "1x over 3d and 6h",
    },
];

/// Every window a rule uses, shortest first, with its label.
pub const WINDOWS: [(&str, u64); 7] = [
    ("5m", 5),
    ("30m", 30),
    ("1h", 60),
    ("2h", 120),
    ("6h", 360),
    ("1d", 1440),
    ("3d", 4320),
];

/// Good and total requests of `sli` in a (summed) minute count.
///
/// For availability without router errors, responses the router made itself leave the total
/// too: they never reached the app, so they say nothing about it either way.
#[must_use]
pub fn good_total(sli: &Sli, m: &MinuteCounts) -> (u64, u64) {
    match *sli {
        Sli::Availability {
            count_router_errors: true,
        } => (u64::from(m.available(true)), u64::from(m.total)),
        Sli::Availability {
            count_router_errors: false,
        } => {
            let total = m.total.saturating_sub(m.router_errors);
            (
                u64::from(total.saturating_sub(m.server_errors)),
                u64::from(total),
            )
        }
        Sli::Latency { threshold_ms } => {
            let good = m
                .faster_than(std::time::Duration::from_millis(u64::from(threshold_ms)))
                .unwrap_or(0);
            (u64::from(good), u64::from(m.timed))
        }
    }
}

/// The burn over one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Burn {
    /// Requests counted.
    pub requests: u64,
    /// Bad requests among them.
    pub bad: u64,
    /// Error ratio ÷ budget; `None` without requests.
    pub rate: Option<f64>,
}

impl Burn {
    /// The burn of `good` out of `total` against a budget ratio.
    #[must_use]
    pub fn of(good: u64, total: u64, budget: f64) -> Self {
        let bad = total.saturating_sub(good);
        let rate = (total > 0 && budget > 0.0).then(|| (bad as f64 / total as f64) / budget);
        Self {
            requests: total,
            bad,
            rate,
        }
    }

    /// Percent good; `None` without requests.
    #[must_use]
    pub fn sli_percent(&self) -> Option<f64> {
        (self.requests > 0)
            .then(|| 100.0 * (self.requests - self.bad) as f64 / self.requests as f64)
    }
}

/// One SLO evaluated at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Burn per window, in the order of [`WINDOWS`].
    pub windows: [Burn; WINDOWS.len()],
    /// The first rule of each severity that holds.
    pub holding: Vec<&'static Rule>,
    /// The period so far.
    pub period: Burn,
    /// Share of the period's budget left: `1 − period burn rate` (1 without requests).
    pub budget_remaining: f64,
}

impl Evaluation {
    /// The burn over the window of `minutes`, if it is one of [`WINDOWS`].
    #[must_use]
    pub fn window(&self, minutes: u64) -> Option<&Burn> {
        WINDOWS
            .iter()
            .position(|(_, m)| *m == minutes)
            .map(|i| &self.windows[i])
    }
}

/// Evaluates `slo` given the summed counts of the last `n` minutes (`window(n)`) and of the
/// period so far.
pub fn evaluate(
    slo: &Slo,
    window: impl Fn(u64) -> MinuteCounts,
    period: &MinuteCounts,
) -> Evaluation {
    let budget = slo.budget();
    let windows = WINDOWS.map(|(_, minutes)| {
        let (good, total) = good_total(&slo.sli, &window(minutes));
        Burn::of(good, total, budget)
    });
    let burn_of = |minutes: u64| {
        WINDOWS
            .iter()
            .position(|(_, m)| *m == minutes)
            .map(|i| windows[i])
    };
    let min_requests = slo.min_requests.max(1);
    let mut holding: Vec<&'static Rule> = Vec::new();
    for rule in &RULES {
        if holding.iter().any(|r| r.severity == rule.severity) {
            continue;
        }
        let (Some(long), Some(short)) = (burn_of(rule.long_minutes), burn_of(rule.short_minutes))
        else {
            continue;
        };
        let burning = |b: &Burn| b.rate.is_some_and(|r| r > rule.factor);
        if long.requests >= min_requests && burning(&long) && burning(&short) {
            holding.push(rule);
        }
    }
    let (good, total) = good_total(&slo.sli, period);
    let period = Burn::of(good, total, budget);
    Evaluation {
        windows,
        holding,
        budget_remaining: period.rate.map_or(1.0, |r| 1.0 - r),
        period,
    }
}

/// An alert that is firing, as remembered (and persisted) between evaluations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firing {
    /// Page or ticket.
    pub severity: Severity,
    /// The rule that started it.
    pub rule: String,
    /// When it started, UNIX seconds.
    pub since: u64,
}

/// What changed at one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// A severity started firing because of `rule`.
    Fired {
        /// Page or ticket.
        severity: Severity,
        /// The rule that holds.
        rule: &'static Rule,
    },
    /// A severity stopped firing.
    Resolved {
        /// What was firing.
        firing: Firing,
    },
}

/// Brings `active` in line with `eval` at `unix_now` and says what changed.
pub fn transitions(active: &mut Vec<Firing>, eval: &Evaluation, unix_now: u64) -> Vec<Transition> {
    let mut out = Vec::new();
    active.retain(|f| {
        let still = eval.holding.iter().any(|r| r.severity == f.severity);
        if !still {
            out.push(Transition::Resolved { firing: f.clone() });
        }
        still
    });
    for rule in &eval.holding {
        if !active.iter().any(|f| f.severity == rule.severity) {
            active.push(Firing {
                severity: rule.severity,
                rule: rule.label.to_owned(),
                since: unix_now,
            });
            out.push(Transition::Fired {
                severity: rule.severity,
                rule,
            });
        }
    }
    active.sort_by_key(|f| f.severity);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slo(objective: f64, min_requests: u64) -> Slo {
        Slo {
            name: "a".to_owned(),
            sli: Sli::Availability {
                count_router_errors: true,
            },
            objective,
            period_days: 30,
            min_requests,
            webhook_url: None,
            description: None,
        }
    }

    /// Counts with `total` requests, `bad` of them app 5xx.
    fn counts(total: u32, bad: u32) -> MinuteCounts {
        MinuteCounts {
            total,
            server_errors: bad,
            ..MinuteCounts::new(0)
        }
    }

    /// Every window sees the same error ratio, `per_minute` requests a minute.
    fn steady(per_minute: u32, bad_per_minute: u32) -> impl Fn(u64) -> MinuteCounts {
        move |n| counts(per_minute * n as u32, bad_per_minute * n as u32)
    }

    #[test]
    fn the_api_offers_exactly_the_bucket_bounds() {
        assert_eq!(
            hydrant_api::slo::SLO_LATENCY_BOUNDS_MS,
            hydrant_windows::LATENCY_BOUNDS_MS
        );
    }

    #[test]
    fn budget_arithmetic() {
        let s = slo(99.9, 1);
        // 0.05 % errors over the period: half the budget spent.
        let e = evaluate(&s, steady(0, 0), &counts(100_000, 50));
        assert!(
            (e.budget_remaining - 0.5).abs() < 1e-9,
            "{}",
            e.budget_remaining
        );
        assert!((e.period.sli_percent().unwrap() - 99.95).abs() < 1e-9);
        // Overspent: 0.3 % errors is three budgets.
        let e = evaluate(&s, steady(0, 0), &counts(1000, 3));
        assert!(
            (e.budget_remaining + 2.0).abs() < 1e-9,
            "{}",
            e.budget_remaining
        );
        // Nothing counted: the budget is untouched and no window has a rate.
        let e = evaluate(&s, steady(0, 0), &MinuteCounts::default());
        assert!((e.budget_remaining - 1.0).abs() < f64::EPSILON);
        assert!(e.windows.iter().all(|b| b.rate.is_none()));
    }

    #[test]
    fn known_error_ratios_pick_the_right_rules() {
        let s = slo(99.9, 10);
        // 2 % errors everywhere: 20x, above 14.4 → the fast page rule (first page rule wins),
        // and the 3x ticket rule.
        let e = evaluate(&s, steady(1000, 20), &MinuteCounts::default());
        let labels: Vec<&str> = e.holding.iter().map(|r| r.label).collect();
        assert_eq!(labels, ["14.4x over 1h and 5m", "3x over 1d and 2h"]);
        assert!((e.window(60).unwrap().rate.unwrap() - 20.0).abs() < 1e-6);
        // 1 % errors: 10x pages only on the 6h rule.
        let e = evaluate(&s, steady(1000, 10), &MinuteCounts::default());
        let labels: Vec<&str> = e.holding.iter().map(|r| r.label).collect();
        assert_eq!(labels, ["6x over 6h and 30m", "3x over 1d and 2h"]);
        // 0.2 %: 2x, only the slowest ticket.
        let e = evaluate(&s, steady(1000, 2), &MinuteCounts::default());
        let labels: Vec<&str> = e.holding.iter().map(|r| r.label).collect();
        assert_eq!(labels, ["1x over 3d and 6h"]);
        // 0.05 %: within budget, nothing.
        let e = evaluate(&s, steady(2000, 1), &MinuteCounts::default());
        assert!(e.holding.is_empty());
    }

    #[test]
    fn the_short_window_must_burn_too() {
        let s = slo(99.9, 10);
        // A bad spell that has stopped: the last 30 minutes are clean.
        let window = |n: u64| {
            if n <= 30 {
                counts(1000 * n as u32, 0)
            } else {
                counts(60_000, 6000)
            }
        };
        let e = evaluate(&s, window, &MinuteCounts::default());
        assert!(!e.holding.iter().any(|r| r.severity == Severity::Page));
    }

    #[test]
    fn below_the_minimum_count_nothing_fires() {
        let s = slo(99.9, 50);
        // Every request failed, but the long windows hold only 40.
        let window = |_n: u64| counts(40, 40);
        let e = evaluate(&s, window, &MinuteCounts::default());
        assert!(e.holding.is_empty());
        let window = |_n: u64| counts(50, 50);
        let e = evaluate(&s, window, &MinuteCounts::default());
        assert_eq!(e.holding.len(), 2);
    }

    #[test]
    fn router_errors_count_only_when_asked() {
        let m = MinuteCounts {
            total: 100,
            server_errors: 1,
            router_errors: 10,
            router_server_errors: 9,
            ..MinuteCounts::new(0)
        };
        let with = Sli::Availability {
            count_router_errors: true,
        };
        let without = Sli::Availability {
            count_router_errors: false,
        };
        assert_eq!(good_total(&with, &m), (90, 100));
        assert_eq!(good_total(&without, &m), (89, 90));
    }

    #[test]
    fn transitions_fire_once_and_resolve() {
        let s = slo(99.9, 1);
        let mut active = Vec::new();
        let bad = evaluate(&s, steady(100, 100), &MinuteCounts::default());
        let t = transitions(&mut active, &bad, 1000);
        assert_eq!(t.len(), 2, "{t:?}");
        assert!(transitions(&mut active, &bad, 1010).is_empty());
        assert_eq!(active[0].since, 1000);
        let good = evaluate(&s, steady(100, 0), &MinuteCounts::default());
        let t = transitions(&mut active, &good, 1100);
        assert_eq!(t.len(), 2);
        match &t[0] {
            Transition::Resolved { firing } => assert_eq!(firing.since, 1000),
            other => panic!("{other:?}"),
        }
        assert!(active.is_empty());
    }
}
