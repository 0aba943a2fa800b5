//! Service level objectives: the Sloth-like spec a developer writes per app, what the cloud
//! controller stores under `/v3/apps/{guid}/slos`, and the status the SLO alerter reports.
//!
//! Flow: `hydrant slo NAME --set FILE` → [`SloSet`] → `PUT /v3/apps/{guid}/slos` (validated
//! with [`SloSet::validate`]) → `GET /v3/slos` ([`AppSlos`] for every app) → the alerter, which
//! answers `GET /v1/slos/{app_guid}` on its admin listener with [`AppSloStatus`].
//!
//! Invariant: a set that passes [`SloSet::validate`] can be evaluated as written — names are
//! unique host-label-like words, the objective leaves a non-zero budget, a latency threshold is
//! one of the alerter's bucket bounds, and a webhook is a plain `http(s)://` URL. Every
//! rejection names the field by its path (`slos[1].objective`) and says what to write instead.

use serde::{Deserialize, Serialize};

/// Latency thresholds a latency SLI may use, in ms: the bounds of the alerter's per-minute
/// buckets, so the SLI is counted exactly instead of interpolated.
pub const SLO_LATENCY_BOUNDS_MS: [u32; 16] = [
    5, 10, 25, 50, 75, 100, 150, 200, 250, 300, 500, 750, 1000, 2000, 5000, 10_000,
];

/// Most SLOs one app may have.
pub const MAX_SLOS_PER_APP: usize = 16;

/// Default objective period, days.
pub const DEFAULT_PERIOD_DAYS: u32 = 30;

/// Longest objective period, days.
pub const MAX_PERIOD_DAYS: u32 = 90;

/// Default for [`Slo::min_requests`].
pub const DEFAULT_MIN_REQUESTS: u64 = 50;

/// Every SLO of one app (the body of `PUT /v3/apps/{guid}/slos`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloSet {
    /// The objectives; an empty list removes them all.
    #[serde(default)]
    pub slos: Vec<Slo>,
}

/// One objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// Lower-case letters, digits and `-`, 1 to 40 characters; unique within the app. It names
    /// the gauges (`slo.<name>.budget_remaining`).
    pub name: String,
    /// What counts as a good request.
    pub sli: Sli,
    /// Percent of requests that must be good over `period_days`, e.g. 99.9. Above 0 and
    /// below 100.
    pub objective: f64,
    /// The period the objective (and the error budget) covers, days. Default 30.
    #[serde(default = "default_period_days")]
    pub period_days: u32,
    /// No alert fires while the long window of its rule holds fewer requests than this, so a
    /// quiet app does not page on one error. Default 50.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// Where alerts are POSTed as JSON, `http(s)://...`. Credentials in it are never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn default_period_days() -> u32 {
    DEFAULT_PERIOD_DAYS
}

fn default_min_requests() -> u64 {
    DEFAULT_MIN_REQUESTS
}

/// The service level indicator: the share of router responses that are good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Sli {
    /// Good = not a 5xx. Responses the router made itself (no endpoint, backend unreachable)
    /// are bad only when `count_router_errors` is true: they are the platform's failures, and
    /// an app team may want to be judged on its own.
    Availability {
        /// Default true: the user saw the error either way.
        #[serde(default = "yes")]
        count_router_errors: bool,
    },
    /// Good = an app response no slower than `threshold_ms`.
    Latency {
        /// One of [`SLO_LATENCY_BOUNDS_MS`].
        threshold_ms: u32,
    },
}

fn yes() -> bool {
    true
}

impl Sli {
    /// `availability` or `latency`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Sli::Availability { .. } => "availability",
            Sli::Latency { .. } => "latency",
        }
    }
}

/// A field of a spec that cannot be used, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SloError {
    /// The field's path, e.g. `slos[0].objective`.
    pub field: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl std::fmt::Display for SloError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` {}", self.field, self.message)
    }
}

impl std::error::Error for SloError {}

impl SloSet {
    /// Checks every SLO.
    ///
    /// # Errors
    /// The first unusable field, named by its path.
    pub fn validate(&self) -> Result<(), SloError> {
        if self.slos.len() > MAX_SLOS_PER_APP {
            return Err(SloError {
                field: "slos".to_owned(),
                message: format!(
                    "has {} entries; an app may have at most {MAX_SLOS_PER_APP}",
                    self.slos.len()
                ),
            });
        }
        for (i, slo) in self.slos.iter().enumerate() {
            let at = |field: &str, message: String| SloError {
                field: format!("slos[{i}].{field}"),
                message,
            };
            slo.validate().map_err(|e| at(&e.field, e.message))?;
            if self.slos[..i].iter().any(|s| s.name == slo.name) {
                return Err(at(
                    "name",
                    format!("{:?} is used twice; give each SLO its own name", slo.name),
                ));
            }
        }
        Ok(())
    }
}

impl Slo {
    /// Checks this SLO alone (field paths relative to it).
    ///
    /// # Errors
    /// The first unusable field.
    pub fn validate(&self) -> Result<(), SloError> {
        let bad = |field: &str, message: String| SloError {
            field: field.to_owned(),
            message,
        };
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 40
            && !self.name.starts_with('-')
            && !self.name.ends_with('-')
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(bad(
                "name",
                format!(
                    "{:?} is not usable; use 1 to 40 lower-case letters, digits and - (not at \
                     either end), e.g. \"availability\"",
                    self.name.chars().take(60).collect::<String>()
                ),
            ));
        }
        if !(self.objective.is_finite() && self.objective > 0.0 && self.objective < 100.0) {
            return Err(bad(
                "objective",
                format!(
                    "({}) must be a percentage above 0 and below 100, e.g. 99.9 (100 leaves no \
                     error budget to alert on)",
                    self.objective
                ),
            ));
        }
        if !(1..=MAX_PERIOD_DAYS).contains(&self.period_days) {
            return Err(bad(
                "period_days",
                format!(
                    "({}) must be between 1 and {MAX_PERIOD_DAYS}; the default is \
                     {DEFAULT_PERIOD_DAYS}",
                    self.period_days
                ),
            ));
        }
        if self.min_requests > 1_000_000_000 {
            return Err(bad(
                "min_requests",
                format!("({}) is implausibly large", self.min_requests),
            ));
        }
        if let Sli::Latency { threshold_ms } = self.sli
            && !SLO_LATENCY_BOUNDS_MS.contains(&threshold_ms)
        {
            return Err(bad(
                "sli.threshold_ms",
                format!(
                    "({threshold_ms}) must be one of {SLO_LATENCY_BOUNDS_MS:?} ms, the \
                     alerter's bucket bounds; pick the nearest one"
                ),
            ));
        }
        if let Some(url) = &self.webhook_url {
            // Spaces and control bytes would be percent-encoded by a parser, and `http:///x`
            // would be read as host `x` (WHATWG's leniency); refuse both instead, so the URL
            // the alerter calls is the one the user wrote.
            let ok = url.len() <= 2048
                && url.bytes().all(|b| b.is_ascii_graphic())
                && url
                    .split_once("://")
                    .is_some_and(|(_, rest)| !rest.starts_with('/'))
                && url::Url::parse(url).is_ok_and(|u| {
                    matches!(u.scheme(), "http" | "https")
                        && u.host_str().is_some_and(|h| !h.is_empty())
                });
            if !ok {
                // The URL may hold a secret: the message never repeats it.
                return Err(bad(
                    "webhook_url",
                    "is not an http:// or https:// URL without spaces (at most 2 KiB), e.g. \
                     \"https://hooks.example.com/slo\""
                        .to_owned(),
                ));
            }
        }
        if self.description.as_ref().is_some_and(|d| d.len() > 1024) {
            return Err(bad(
                "description",
                "is longer than 1024 bytes; keep it short".to_owned(),
            ));
        }
        Ok(())
    }

    /// The error budget as a ratio: 99.9 → 0.001.
    #[must_use]
    pub fn budget(&self) -> f64 {
        1.0 - self.objective / 100.0
    }
}

/// One app's SLOs as stored (`GET /v3/apps/{guid}/slos`, and each entry of `GET /v3/slos`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppSlos {
    /// The app.
    pub app_guid: String,
    /// Its name.
    pub app_name: String,
    /// The objectives (empty when none are set).
    pub slos: Vec<Slo>,
    /// When they were last set, UNIX seconds (0 when never).
    pub updated_at: u64,
}

/// What the alerter knows about one app's SLOs (`GET /v1/slos/{app_guid}` on its admin
/// listener).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppSloStatus {
    /// The app.
    pub app_guid: String,
    /// One entry per SLO the alerter evaluates.
    pub slos: Vec<SloStatus>,
    /// Whether the alerter is hearing the firehose now.
    pub stream_connected: bool,
}

/// One SLO, evaluated now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloStatus {
    /// The SLO's name.
    pub name: String,
    /// `availability` or `latency`.
    pub sli_kind: String,
    /// Percent, as specified.
    pub objective: f64,
    /// Days, as specified.
    pub period_days: u32,
    /// Percent good over the last hour; `None` without requests.
    pub sli_1h: Option<f64>,
    /// Percent good over the period so far; `None` without requests.
    pub sli_period: Option<f64>,
    /// Requests counted in the period so far.
    pub period_requests: u64,
    /// Share of the period's error budget left: 1 untouched, 0 spent, negative overspent.
    pub budget_remaining: f64,
    /// Burn rate per window, shortest first.
    pub burn_rates: Vec<WindowBurn>,
    /// Alerts firing now.
    pub alerts: Vec<AlertStatus>,
}

/// The burn rate over one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowBurn {
    /// `5m`, `30m`, `1h`, `2h`, `6h`, `1d`, `3d`.
    pub window: String,
    /// Error ratio divided by the budget; `None` without requests.
    pub rate: Option<f64>,
    /// Requests in the window.
    pub requests: u64,
}

/// An alert that is firing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertStatus {
    /// `page` or `ticket`.
    pub severity: String,
    /// The rule that fired, e.g. `14.4x over 1h and 5m`.
    pub rule: String,
    /// When it started firing, UNIX seconds.
    pub since: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    fn slo() -> Slo {
        Slo {
            name: "availability".to_owned(),
            sli: Sli::Availability {
                count_router_errors: true,
            },
            objective: 99.9,
            period_days: 30,
            min_requests: 50,
            webhook_url: None,
            description: None,
        }
    }

    fn error_of(slo: Slo) -> String {
        SloSet { slos: vec![slo] }
            .validate()
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn json_defaults_apply() {
        let set: SloSet = serde_json::from_str(
            r#"{"slos":[{"name":"a","sli":{"type":"availability"},"objective":99.5},
                        {"name":"fast","sli":{"type":"latency","threshold_ms":250},"objective":99}]}"#,
        )
        .unwrap();
        set.validate().unwrap();
        assert_eq!(set.slos[0].period_days, 30);
        assert_eq!(set.slos[0].min_requests, DEFAULT_MIN_REQUESTS);
        assert_eq!(
            set.slos[0].sli,
            Sli::Availability {
                count_router_errors: true
            }
        );
        assert!((set.slos[0].budget() - 0.005).abs() < 1e-12);
        assert!(serde_json::from_str::<SloSet>(r#"{"slos":[],"x":1}"#).is_err());
        assert!(
            serde_json::from_str::<SloSet>(
                r#"{"slos":[{"name":"a","sli":{"type":"uptime"},"objective":9}]}"#
            )
            .is_err()
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(Slo, &str)> = vec![
            (
                Slo {
                    name: "Bad Name".to_owned(),
                    ..slo()
                },
                "`slos[0].name`",
            ),
            (
                Slo {
                    objective: 100.0,
                    ..slo()
                },
                "`slos[0].objective`",
            ),
            (
                Slo {
                    objective: f64::NAN,
                    ..slo()
                },
                "`slos[0].objective`",
            ),
            (
                Slo {
                    period_days: 0,
                    ..slo()
                },
                "`slos[0].period_days`",
            ),
            (
                Slo {
                    sli: Sli::Latency { threshold_ms: 120 },
                    ..slo()
                },
                "`slos[0].sli.threshold_ms`",
            ),
            (
                Slo {
                    webhook_url: Some("ftp://user:secret@x".to_owned()),
                    ..slo()
                },
                "`slos[0].webhook_url`",
            ),
        ];
        let cases = cases.into_iter().chain(
            [
                "http:///secret",
                "https://hooks.example.com:99999/secret",
                "https://hooks.example.com/a secret",
                "hooks.example.com/secret",
            ]
            .map(|url| {
                (
                    Slo {
                        webhook_url: Some(url.to_owned()),
                        ..slo()
                    },
                    "`slos[0].webhook_url`",
                )
            }),
        );
        for (slo, field) in cases {
            let msg = error_of(slo);
            assert!(msg.starts_with(field), "{msg}");
            assert!(!msg.contains("secret"), "{msg}");
        }
        let dup = SloSet {
            slos: vec![slo(), slo()],
        };
        let msg = dup.validate().unwrap_err().to_string();
        assert!(msg.starts_with("`slos[1].name`"), "{msg}");
        let ok = SloSet {
            slos: vec![Slo {
                webhook_url: Some("https://hooks.example.com:8443/slo?team=web".to_owned()),
                ..slo()
            }],
        };
        ok.validate().unwrap();
    }
}
