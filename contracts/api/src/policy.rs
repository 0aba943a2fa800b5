//! Autoscaling policies in app-autoscaler's JSON shape, and the one validator the cloud
//! controller (on `PUT /v3/apps/{guid}/autoscaling_policy`), the CLI (before uploading) and the
//! autoscaler (on load) all run.
//!
//! Flow: `hydrant autoscale NAME --policy FILE` → [`ScalingPolicy::parse`] → the cloud
//! controller stores the JSON as given → `GET /v3/autoscaling_policies` → the autoscaler parses
//! the typed views ([`MetricType`], [`Operator`], [`Adjustment`]) once per load.
//!
//! Invariant: a policy that passes [`ScalingPolicy::validate`] can be evaluated without another
//! check: every enum-like string parses, every count is in range, every rule's durations are
//! within app-autoscaler's 60–3600 s, the schedules' time zone resolves, and every error names
//! the offending field by its JSON path (`scaling_rules[1].adjustment`) and says what to write
//! instead.
//!
//! Schedules are in IANA time zones (`Europe/Berlin`, `America/New_York`, `UTC`) or fixed
//! offsets (`UTC+08:00`), read from the IANA database bundled into the binary, so the CLI, the
//! cloud controller and the autoscaler agree on every name and rule whatever machine they run
//! on. Each day's window becomes a pair of instants the way `java.time` (app-autoscaler's
//! scheduler) and RFC 5545 resolve local times: a time skipped by a spring-forward gap moves
//! later by the gap's length (02:30 on a day that jumps from 02:00 to 03:00 is 03:30), and a
//! time repeated by a fall-back fold is its first occurrence. So a window opens once and closes
//! once per day, never twice on the long day and never silently not at all on the short one.

use std::fmt;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{Offset, TimeZone};
use serde::{Deserialize, Serialize};

/// Default `breach_duration_secs` (app-autoscaler's).
pub const DEFAULT_BREACH_DURATION_SECS: u32 = 120;
/// Default `cool_down_secs` (app-autoscaler's).
pub const DEFAULT_COOL_DOWN_SECS: u32 = 300;
/// Shortest and longest breach duration and cooldown, seconds.
pub const DURATION_RANGE_SECS: (u32, u32) = (60, 3600);
/// Most instances a policy may ask for (the cloud controller's own scale limit is separate).
pub const MAX_INSTANCE_COUNT: i64 = 10_000;
/// Most rules, recurring schedules and specific dates in one policy, so a stored policy stays
/// small.
pub const MAX_ITEMS: usize = 64;

/// A policy as stored and exchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingPolicy {
    /// Fewest instances (≥ 1).
    pub instance_min_count: i64,
    /// Most instances (≥ `instance_min_count`).
    pub instance_max_count: i64,
    /// Dynamic rules, evaluated in order; the first that breaches acts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scaling_rules: Vec<ScalingRule>,
    /// Time-based instance limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedules: Option<Schedules>,
    /// app-autoscaler's custom-metric submission settings; kept, not used (custom gauges arrive
    /// through the app's own envelope stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<serde_json::Value>,
}

/// One dynamic scaling rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingRule {
    /// `memoryused`, `memoryutil`, `cpu`, `disk`, `diskutil`, `throughput`, `responsetime`,
    /// or a custom gauge name.
    pub metric_type: String,
    /// The value compared with the metric (an integer, as in app-autoscaler).
    pub threshold: i64,
    /// `<`, `<=`, `>` or `>=`.
    pub operator: String,
    /// `+N`, `-N`, `+N%` or `-N%`.
    pub adjustment: String,
    /// How long the condition must hold before acting (60–3600, default 120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breach_duration_secs: Option<i64>,
    /// How long after a scaling action this app is left alone (60–3600, default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cool_down_secs: Option<i64>,
    /// Deprecated in app-autoscaler and ignored; accepted so old policies load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_window_secs: Option<i64>,
}

/// Time-based limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedules {
    /// The zone the times are in: an IANA name (`Europe/Berlin`, `America/New_York`, `UTC`,
    /// `Etc/GMT-8`) or a fixed offset (`UTC+08:00`, `GMT-05:30`).
    pub timezone: String,
    /// Weekly or monthly windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recurring_schedule: Vec<RecurringSchedule>,
    /// One-off windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub specific_date: Vec<SpecificDate>,
}

/// A window that repeats on some days of the week or month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecurringSchedule {
    /// `HH:MM`.
    pub start_time: String,
    /// `HH:MM`, after `start_time`.
    pub end_time: String,
    /// ISO days, 1 = Monday .. 7 = Sunday (or `days_of_month`, not both).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days_of_week: Vec<i64>,
    /// 1..=31 (or `days_of_week`, not both).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days_of_month: Vec<i64>,
    /// `yyyy-mm-dd`: first day the schedule applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_date: Option<String>,
    /// `yyyy-mm-dd`: last day the schedule applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_date: Option<String>,
    /// Fewest instances while active.
    pub instance_min_count: i64,
    /// Most instances while active.
    pub instance_max_count: i64,
    /// Instances at the start of the window, if more than the minimum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_min_instance_count: Option<i64>,
}

/// A one-off window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecificDate {
    /// `yyyy-mm-ddThh:mm`.
    pub start_date_time: String,
    /// `yyyy-mm-ddThh:mm`, after the start.
    pub end_date_time: String,
    /// Fewest instances while active.
    pub instance_min_count: i64,
    /// Most instances while active.
    pub instance_max_count: i64,
    /// Instances at the start of the window, if more than the minimum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_min_instance_count: Option<i64>,
}

/// A policy with its owner, as `GET /v3/autoscaling_policies` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppPolicy {
    /// The app's guid.
    pub app_guid: String,
    /// The app's name.
    pub app_name: String,
    /// The policy.
    pub policy: ScalingPolicy,
    /// When it was last set, UNIX seconds.
    pub updated_at: i64,
}

/// One autoscaling decision, recorded by `POST /v3/apps/{guid}/autoscaling_events` as an
/// `audit.app.autoscale` event (the scale itself is the separate `audit.app.scale`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoscaleDecision {
    /// The rule's position in `scaling_rules`, or `None` for a schedule's limits.
    pub rule: Option<usize>,
    /// The rule's metric type (or `schedule`).
    pub metric_type: String,
    /// The value that breached, in the metric's unit.
    pub value: f64,
    /// The rule's threshold.
    pub threshold: i64,
    /// The rule's operator.
    pub operator: String,
    /// The rule's adjustment.
    pub adjustment: String,
    /// Instances before.
    pub from: u32,
    /// Instances after.
    pub to: u32,
    /// One line for people: what was seen and why this count.
    pub reason: String,
}

/// Why a policy is not valid: the JSON path of the field and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// `instance_max_count`, `scaling_rules[1].adjustment`, ...
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for PolicyError {}

fn bad(field: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError {
        field: field.into(),
        message: message.into(),
    }
}

/// What a rule measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricType {
    /// Memory in MiB, averaged over instances.
    MemoryUsed,
    /// Memory as a percentage of the quota.
    MemoryUtil,
    /// CPU percent.
    Cpu,
    /// Disk in MiB.
    Disk,
    /// Disk as a percentage of the quota.
    DiskUtil,
    /// Requests per second through the router.
    Throughput,
    /// Response time in milliseconds (a percentile).
    ResponseTime,
    /// A gauge the app emits itself, by name.
    Custom(String),
}

impl MetricType {
    /// Parses a `metric_type`.
    ///
    /// # Errors
    /// A message (without the field) when the name is malformed or unsupported.
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty()
            || name.len() > 100
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(format!(
                "{name:?}: use 1 to 100 letters, digits or _ (memoryused, memoryutil, cpu, \
                 throughput, responsetime, or your own gauge's name)"
            ));
        }
        Ok(match name {
            "memoryused" => Self::MemoryUsed,
            "memoryutil" => Self::MemoryUtil,
            "cpu" => Self::Cpu,
            "disk" => Self::Disk,
            "diskutil" => Self::DiskUtil,
            "throughput" => Self::Throughput,
            "responsetime" => Self::ResponseTime,
            "cpuutil" => {
                return Err(
                    "\"cpuutil\" needs a CPU entitlement, which Hydrant's executors do not \
                     report; use cpu"
                        .to_owned(),
                );
            }
            other => Self::Custom(other.to_owned()),
        })
    }

    /// The unit the threshold is in, for messages.
    #[must_use]
    pub fn unit(&self) -> &'static str {
        match self {
            Self::MemoryUsed | Self::Disk => "MB",
            Self::MemoryUtil | Self::DiskUtil | Self::Cpu => "%",
            Self::Throughput => "rps",
            Self::ResponseTime => "ms",
            Self::Custom(_) => "",
        }
    }

    fn threshold_problem(&self, threshold: i64) -> Option<&'static str> {
        match self {
            Self::MemoryUtil | Self::DiskUtil if !(1..=100).contains(&threshold) => {
                Some("a percentage of the quota must be between 1 and 100")
            }
            Self::MemoryUsed | Self::Disk | Self::Cpu | Self::Throughput | Self::ResponseTime
                if threshold < 0 =>
            {
                Some("must be 0 or more")
            }
            _ => None,
        }
    }
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Operator {
    /// Parses an `operator`.
    ///
    /// # Errors
    /// A message when it is none of the four.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "<" => Ok(Self::Lt),
            "<=" => Ok(Self::Le),
            ">" => Ok(Self::Gt),
            ">=" => Ok(Self::Ge),
            other => Err(format!("{other:?}: use <, <=, > or >=")),
        }
    }

    /// Whether `value <op> threshold`.
    #[must_use]
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Self::Lt => value < threshold,
            Self::Le => value <= threshold,
            Self::Gt => value > threshold,
            Self::Ge => value >= threshold,
        }
    }

    /// The operator as written.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
        }
    }
}

/// A change in instance count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adjustment {
    /// Add (or, negative, remove) this many instances.
    Step(i64),
    /// Change by this percentage (negative to shrink).
    Percent(i64),
}

impl Adjustment {
    /// Parses `+N`, `-N`, `+N%` or `-N%` (app-autoscaler's `^[-+][1-9]+[0-9]*%?$`).
    ///
    /// # Errors
    /// A message when it does not have that shape or the number is absurd.
    pub fn parse(text: &str) -> Result<Self, String> {
        let problem = || format!("{text:?}: use +N, -N, +N% or -N%");
        let (sign, rest) = match text.as_bytes().first() {
            Some(b'+') => (1, &text[1..]),
            Some(b'-') => (-1, &text[1..]),
            _ => return Err(problem()),
        };
        let (digits, percent) = match rest.strip_suffix('%') {
            Some(d) => (d, true),
            None => (rest, false),
        };
        if digits.is_empty()
            || digits.starts_with('0')
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(problem());
        }
        let n: i64 = digits
            .parse()
            .ok()
            .filter(|n| *n <= MAX_INSTANCE_COUNT * 100)
            .ok_or_else(|| format!("{text:?}: the number is too large"))?;
        Ok(if percent {
            Self::Percent(sign * n)
        } else {
            Self::Step(sign * n)
        })
    }

    /// The count after applying this to `current`, unclamped but never below 0. A percentage
    /// rounds to nearest and always moves by at least one (app-autoscaler's rule).
    #[must_use]
    pub fn apply(self, current: u32) -> i64 {
        let current = i64::from(current);
        let next = match self {
            Self::Step(n) => current.saturating_add(n),
            Self::Percent(p) => {
                let scaled = current.saturating_mul(100 + p);
                // Rounds half up, in integers so no float is involved.
                let rounded = (scaled + 50).div_euclid(100);
                if p > 0 {
                    rounded.max(current + 1)
                } else {
                    rounded.min(current - 1)
                }
            }
        };
        next.max(0)
    }

    /// True when it adds instances.
    #[must_use]
    pub fn is_out(self) -> bool {
        match self {
            Self::Step(n) | Self::Percent(n) => n > 0,
        }
    }
}

/// A rule with its strings parsed and defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Position in `scaling_rules`.
    pub index: usize,
    /// What is measured.
    pub metric: MetricType,
    /// As written.
    pub metric_type: String,
    /// Threshold.
    pub threshold: i64,
    /// Comparison.
    pub operator: Operator,
    /// Change.
    pub adjustment: Adjustment,
    /// As written.
    pub adjustment_text: String,
    /// Seconds the condition must hold.
    pub breach_duration_secs: u32,
    /// Seconds to leave the app alone after acting.
    pub cool_down_secs: u32,
}

/// Instance limits in force at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fewest instances.
    pub min: u32,
    /// Most instances.
    pub max: u32,
    /// Instances the window starts with, when it is a schedule's.
    pub initial_min: Option<u32>,
    /// Which schedule: `None` for the policy's own limits, else `recurring_schedule[i]` or
    /// `specific_date[i]`.
    pub schedule: Option<(ScheduleKind, usize)>,
}

/// The two kinds of schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleKind {
    /// `recurring_schedule`
    Recurring,
    /// `specific_date`
    SpecificDate,
}

impl ScalingPolicy {
    /// Parses JSON and validates it.
    ///
    /// # Errors
    /// [`PolicyError`] with field `policy` for malformed JSON (serde's message says where),
    /// else the first invalid field.
    pub fn parse(json: &str) -> Result<Self, PolicyError> {
        let policy: Self =
            serde_json::from_str(json).map_err(|e| bad("policy", format!("not valid: {e}")))?;
        policy.validate()?;
        Ok(policy)
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`PolicyError`] naming the first invalid field by its JSON path.
    pub fn validate(&self) -> Result<(), PolicyError> {
        check_counts("", self.instance_min_count, self.instance_max_count, None)?;
        if self.scaling_rules.is_empty() && self.schedules.is_none() {
            return Err(bad(
                "scaling_rules",
                "give at least one scaling rule or a schedules section",
            ));
        }
        if self.scaling_rules.len() > MAX_ITEMS {
            return Err(bad(
                "scaling_rules",
                format!("at most {MAX_ITEMS} rules, please"),
            ));
        }
        self.rules()?;
        if let Some(schedules) = &self.schedules {
            schedules.validate()?;
        }
        Ok(())
    }

    /// The rules, parsed, with defaults applied.
    ///
    /// # Errors
    /// As [`ScalingPolicy::validate`] for the rules.
    pub fn rules(&self) -> Result<Vec<Rule>, PolicyError> {
        self.scaling_rules
            .iter()
            .enumerate()
            .map(|(i, r)| r.parse(i))
            .collect()
    }

    /// The limits in force at UNIX second `unix_secs`: the active schedule's (the one that
    /// started first when several overlap), else the policy's.
    #[must_use]
    pub fn limits_at(&self, unix_secs: i64) -> Limits {
        let own = Limits {
            min: clamp_count(self.instance_min_count),
            max: clamp_count(self.instance_max_count),
            initial_min: None,
            schedule: None,
        };
        let Some(schedules) = &self.schedules else {
            return own;
        };
        let (Some(zone), Ok(now)) = (
            time_zone(&schedules.timezone),
            Timestamp::from_second(unix_secs),
        ) else {
            return own;
        };
        let mut best: Option<(i64, Limits)> = None;
        let mut consider = |start: i64, limits: Limits| {
            if best.is_none_or(|(s, _)| start < s) {
                best = Some((start, limits));
            }
        };
        for (i, s) in schedules.specific_date.iter().enumerate() {
            let (Some(start), Some(end)) = (
                parse_date_time(&s.start_date_time).and_then(|d| instant(&zone, d)),
                parse_date_time(&s.end_date_time).and_then(|d| instant(&zone, d)),
            ) else {
                continue;
            };
            if (start..end).contains(&unix_secs) {
                consider(
                    start,
                    schedule_limits(
                        s.instance_min_count,
                        s.instance_max_count,
                        s.initial_min_instance_count,
                        (ScheduleKind::SpecificDate, i),
                    ),
                );
            }
        }
        // A day's window lies within that local day, but the instant `now` may belong to the
        // day before or after in local terms once a gap has moved a time: look at all three.
        let today = zone.to_datetime(now).date();
        let days = [today.yesterday().ok(), Some(today), today.tomorrow().ok()];
        for (i, s) in schedules.recurring_schedule.iter().enumerate() {
            for day in days.iter().flatten() {
                if let Some((start, end)) = s.window_on(*day, &zone)
                    && (start..end).contains(&unix_secs)
                {
                    consider(
                        start,
                        schedule_limits(
                            s.instance_min_count,
                            s.instance_max_count,
                            s.initial_min_instance_count,
                            (ScheduleKind::Recurring, i),
                        ),
                    );
                }
            }
        }
        best.map_or(own, |(_, l)| l)
    }
}

fn schedule_limits(
    min: i64,
    max: i64,
    initial: Option<i64>,
    schedule: (ScheduleKind, usize),
) -> Limits {
    Limits {
        min: clamp_count(min),
        max: clamp_count(max),
        initial_min: initial.map(clamp_count),
        schedule: Some(schedule),
    }
}

fn clamp_count(n: i64) -> u32 {
    u32::try_from(n.clamp(0, MAX_INSTANCE_COUNT)).unwrap_or(0)
}

fn check_counts(prefix: &str, min: i64, max: i64, initial: Option<i64>) -> Result<(), PolicyError> {
    if !(1..=MAX_INSTANCE_COUNT).contains(&min) {
        return Err(bad(
            format!("{prefix}instance_min_count"),
            format!("({min}) must be between 1 and {MAX_INSTANCE_COUNT}"),
        ));
    }
    if !(min..=MAX_INSTANCE_COUNT).contains(&max) {
        return Err(bad(
            format!("{prefix}instance_max_count"),
            format!(
                "({max}) must be at least instance_min_count ({min}) and at most \
                 {MAX_INSTANCE_COUNT}"
            ),
        ));
    }
    if let Some(initial) = initial
        && !(min..=max).contains(&initial)
    {
        return Err(bad(
            format!("{prefix}initial_min_instance_count"),
            format!(
                "({initial}) must be between instance_min_count ({min}) and instance_max_count ({max})"
            ),
        ));
    }
    Ok(())
}

impl ScalingRule {
    fn parse(&self, index: usize) -> Result<Rule, PolicyError> {
        let field = |name: &str| format!("scaling_rules[{index}].{name}");
        let metric =
            MetricType::parse(&self.metric_type).map_err(|m| bad(field("metric_type"), m))?;
        if let Some(problem) = metric.threshold_problem(self.threshold) {
            return Err(bad(
                field("threshold"),
                format!("({}) for {}: {problem}", self.threshold, self.metric_type),
            ));
        }
        let operator = Operator::parse(&self.operator).map_err(|m| bad(field("operator"), m))?;
        let adjustment =
            Adjustment::parse(&self.adjustment).map_err(|m| bad(field("adjustment"), m))?;
        let duration = |name: &str, value: Option<i64>, default: u32| {
            let (low, high) = DURATION_RANGE_SECS;
            match value {
                None => Ok(default),
                Some(v) => u32::try_from(v)
                    .ok()
                    .filter(|v| (low..=high).contains(v))
                    .ok_or_else(|| {
                        bad(
                            field(name),
                            format!("({v}) must be between {low} and {high} seconds"),
                        )
                    }),
            }
        };
        Ok(Rule {
            index,
            metric,
            metric_type: self.metric_type.clone(),
            threshold: self.threshold,
            operator,
            adjustment,
            adjustment_text: self.adjustment.clone(),
            breach_duration_secs: duration(
                "breach_duration_secs",
                self.breach_duration_secs,
                DEFAULT_BREACH_DURATION_SECS,
            )?,
            cool_down_secs: duration(
                "cool_down_secs",
                self.cool_down_secs,
                DEFAULT_COOL_DOWN_SECS,
            )?,
        })
    }
}

impl Schedules {
    fn validate(&self) -> Result<(), PolicyError> {
        if time_zone(&self.timezone).is_none() {
            return Err(bad(
                "schedules.timezone",
                format!(
                    "{:?} is not a time zone: use an IANA name such as \"Europe/Berlin\", \
                     \"America/New_York\" or \"UTC\", or a fixed offset such as \"UTC+08:00\"",
                    self.timezone
                ),
            ));
        }
        if self.recurring_schedule.is_empty() && self.specific_date.is_empty() {
            return Err(bad(
                "schedules",
                "give at least one recurring_schedule or specific_date",
            ));
        }
        if self.recurring_schedule.len() > MAX_ITEMS || self.specific_date.len() > MAX_ITEMS {
            return Err(bad(
                "schedules",
                format!("at most {MAX_ITEMS} recurring schedules and {MAX_ITEMS} dates"),
            ));
        }
        for (i, s) in self.recurring_schedule.iter().enumerate() {
            s.validate(&format!("schedules.recurring_schedule[{i}]."))?;
        }
        for (i, s) in self.specific_date.iter().enumerate() {
            let prefix = format!("schedules.specific_date[{i}].");
            let start = parse_date_time(&s.start_date_time).ok_or_else(|| {
                bad(
                    format!("{prefix}start_date_time"),
                    format!("{:?}: use yyyy-mm-ddThh:mm", s.start_date_time),
                )
            })?;
            let end = parse_date_time(&s.end_date_time).ok_or_else(|| {
                bad(
                    format!("{prefix}end_date_time"),
                    format!("{:?}: use yyyy-mm-ddThh:mm", s.end_date_time),
                )
            })?;
            if end <= start {
                return Err(bad(
                    format!("{prefix}end_date_time"),
                    "must be after start_date_time",
                ));
            }
            check_counts(
                &prefix,
                s.instance_min_count,
                s.instance_max_count,
                s.initial_min_instance_count,
            )?;
        }
        Ok(())
    }
}

impl RecurringSchedule {
    fn validate(&self, prefix: &str) -> Result<(), PolicyError> {
        let time = |name: &str, text: &str| {
            parse_hhmm(text)
                .ok_or_else(|| bad(format!("{prefix}{name}"), format!("{text:?}: use HH:MM")))
        };
        let start = time("start_time", &self.start_time)?;
        let end = time("end_time", &self.end_time)?;
        if end <= start {
            return Err(bad(
                format!("{prefix}end_time"),
                "must be after start_time (a window does not cross midnight; split it in two)",
            ));
        }
        match (self.days_of_week.is_empty(), self.days_of_month.is_empty()) {
            (true, true) => {
                return Err(bad(
                    format!("{prefix}days_of_week"),
                    "give days_of_week (1 = Monday .. 7) or days_of_month (1 .. 31)",
                ));
            }
            (false, false) => {
                return Err(bad(
                    format!("{prefix}days_of_month"),
                    "give days_of_week or days_of_month, not both",
                ));
            }
            _ => {}
        }
        for (name, days, high) in [
            ("days_of_week", &self.days_of_week, 7),
            ("days_of_month", &self.days_of_month, 31),
        ] {
            if days.len() > 31 {
                return Err(bad(format!("{prefix}{name}"), "too many days"));
            }
            if let Some(d) = days.iter().find(|d| !(1..=high).contains(*d)) {
                return Err(bad(
                    format!("{prefix}{name}"),
                    format!("({d}) must be between 1 and {high}"),
                ));
            }
        }
        let start_date = match &self.start_date {
            Some(d) => Some(parse_date(d).ok_or_else(|| {
                bad(
                    format!("{prefix}start_date"),
                    format!("{d:?}: use yyyy-mm-dd"),
                )
            })?),
            None => None,
        };
        if let Some(d) = &self.end_date {
            let end = parse_date(d).ok_or_else(|| {
                bad(
                    format!("{prefix}end_date"),
                    format!("{d:?}: use yyyy-mm-dd"),
                )
            })?;
            if start_date.is_some_and(|s| end < s) {
                return Err(bad(
                    format!("{prefix}end_date"),
                    "must not be before start_date",
                ));
            }
        }
        check_counts(
            prefix,
            self.instance_min_count,
            self.instance_max_count,
            self.initial_min_instance_count,
        )
    }

    /// This window's opening and closing instants (UNIX seconds) on local `day`, if it applies
    /// that day. Times skipped or repeated by a DST change resolve as the module doc says.
    fn window_on(&self, day: Date, zone: &TimeZone) -> Option<(i64, i64)> {
        if self
            .start_date
            .as_deref()
            .and_then(parse_date)
            .is_some_and(|d| day < d)
            || self
                .end_date
                .as_deref()
                .and_then(parse_date)
                .is_some_and(|d| day > d)
        {
            return None;
        }
        let on = if self.days_of_week.is_empty() {
            self.days_of_month.contains(&i64::from(day.day()))
        } else {
            self.days_of_week
                .contains(&i64::from(day.weekday().to_monday_one_offset()))
        };
        if !on {
            return None;
        }
        let start = instant(zone, day.to_datetime(parse_time(&self.start_time)?))?;
        let end = instant(zone, day.to_datetime(parse_time(&self.end_time)?))?;
        (start < end).then_some((start, end))
    }
}

/// The zone a `timezone` names: a fixed offset written `UTC+HH:MM` / `GMT-HH:MM` (or `Z`), else
/// an IANA name from the bundled database.
fn time_zone(name: &str) -> Option<TimeZone> {
    if name == "Z" {
        return Some(TimeZone::UTC);
    }
    if let Some(rest) = name
        .strip_prefix("UTC")
        .or_else(|| name.strip_prefix("GMT"))
        .filter(|r| r.starts_with(['+', '-']))
    {
        let sign = if rest.starts_with('-') { -1 } else { 1 };
        let minutes = i32::try_from(parse_hhmm(&rest[1..])?).ok()?;
        if minutes > 14 * 60 {
            return None;
        }
        return Offset::from_seconds(sign * minutes * 60)
            .ok()
            .map(TimeZone::fixed);
    }
    // Names are short ASCII paths; anything else is refused before it reaches the database.
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_-+".contains(&b))
    {
        return None;
    }
    TimeZone::get(name).ok()
}

/// UNIX second of local `at` in `zone` (gaps move later, folds take the first occurrence).
fn instant(zone: &TimeZone, at: DateTime) -> Option<i64> {
    zone.to_timestamp(at).ok().map(Timestamp::as_second)
}

/// Minutes since midnight of `HH:MM`.
fn parse_hhmm(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !(h.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let h: u32 = h.parse().ok()?;
    let m: u32 = m.parse().ok()?;
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// `HH:MM` as a time of day.
fn parse_time(text: &str) -> Option<Time> {
    let minutes = parse_hhmm(text)?;
    Time::new(
        i8::try_from(minutes / 60).ok()?,
        i8::try_from(minutes % 60).ok()?,
        0,
        0,
    )
    .ok()
}

/// `yyyy-mm-dd`, a real date.
fn parse_date(text: &str) -> Option<Date> {
    let mut parts = text.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || y.len() != 4
        || m.len() != 2
        || d.len() != 2
        || !(y.bytes().chain(m.bytes()).chain(d.bytes())).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Date::new(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?).ok()
}

/// `yyyy-mm-ddThh:mm`, local.
fn parse_date_time(text: &str) -> Option<DateTime> {
    let (date, time) = text.split_once('T')?;
    Some(parse_date(date)?.to_datetime(parse_time(time)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]
    use super::*;

    const FULL: &str = r#"{
      "instance_min_count": 1,
      "instance_max_count": 4,
      "scaling_rules": [
        {"metric_type": "memoryutil", "breach_duration_secs": 600, "threshold": 30,
         "operator": "<", "cool_down_secs": 300, "adjustment": "-1"},
        {"metric_type": "responsetime", "threshold": 200, "operator": ">=", "adjustment": "+50%"}
      ],
      "schedules": {
        "timezone": "Asia/Shanghai",
        "recurring_schedule": [
          {"start_time": "10:00", "end_time": "18:00", "days_of_week": [1,2,3],
           "instance_min_count": 1, "instance_max_count": 10, "initial_min_instance_count": 5}
        ],
        "specific_date": [
          {"start_date_time": "2099-01-01T10:00", "end_date_time": "2099-01-01T20:00",
           "instance_min_count": 1, "instance_max_count": 4, "initial_min_instance_count": 2}
        ]
      }
    }"#;

    fn error_of(json: &str) -> String {
        ScalingPolicy::parse(json).unwrap_err().to_string()
    }

    fn with_rule(rule: &str) -> String {
        format!(
            r#"{{"instance_min_count": 1, "instance_max_count": 3, "scaling_rules": [
                {{"metric_type": "cpu", "threshold": 50, "operator": ">", "adjustment": "+1"}},
                {rule}]}}"#
        )
    }

    #[test]
    fn the_reference_policy_parses_with_defaults() {
        let p = ScalingPolicy::parse(FULL).unwrap();
        let rules = p.rules().unwrap();
        assert_eq!(rules[0].breach_duration_secs, 600);
        assert_eq!(rules[1].breach_duration_secs, DEFAULT_BREACH_DURATION_SECS);
        assert_eq!(rules[1].cool_down_secs, DEFAULT_COOL_DOWN_SECS);
        assert_eq!(rules[1].metric, MetricType::ResponseTime);
        assert_eq!(rules[1].adjustment, Adjustment::Percent(50));
        let back: ScalingPolicy =
            serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (
                r#"{"instance_min_count": 0, "instance_max_count": 3, "scaling_rules": []}"#
                    .to_owned(),
                "instance_min_count: (0)",
            ),
            (
                r#"{"instance_min_count": 3, "instance_max_count": 2, "scaling_rules": []}"#
                    .to_owned(),
                "instance_max_count: (2) must be at least instance_min_count (3)",
            ),
            (
                r#"{"instance_min_count": 1, "instance_max_count": 2}"#.to_owned(),
                "scaling_rules: give at least one",
            ),
            (
                with_rule(
                    r#"{"metric_type": "cpu", "threshold": 1, "operator": ">", "adjustment": "+x"}"#,
                ),
                r#"scaling_rules[1].adjustment: "+x": use +N, -N, +N% or -N%"#,
            ),
            (
                with_rule(
                    r#"{"metric_type": "cpu", "threshold": 1, "operator": ">", "adjustment": "+0"}"#,
                ),
                "scaling_rules[1].adjustment",
            ),
            (
                with_rule(
                    r#"{"metric_type": "cpu", "threshold": 1, "operator": "=>", "adjustment": "+1"}"#,
                ),
                r#"scaling_rules[1].operator: "=>": use <, <=, > or >="#,
            ),
            (
                with_rule(
                    r#"{"metric_type": "mem-used", "threshold": 1, "operator": ">", "adjustment": "+1"}"#,
                ),
                "scaling_rules[1].metric_type",
            ),
            (
                with_rule(
                    r#"{"metric_type": "cpuutil", "threshold": 1, "operator": ">", "adjustment": "+1"}"#,
                ),
                "scaling_rules[1].metric_type: \"cpuutil\" needs",
            ),
            (
                with_rule(
                    r#"{"metric_type": "memoryutil", "threshold": 150, "operator": ">", "adjustment": "+1"}"#,
                ),
                "scaling_rules[1].threshold: (150) for memoryutil",
            ),
            (
                with_rule(
                    r#"{"metric_type": "throughput", "threshold": -1, "operator": ">", "adjustment": "+1"}"#,
                ),
                "scaling_rules[1].threshold: (-1) for throughput: must be 0 or more",
            ),
            (
                with_rule(
                    r#"{"metric_type": "cpu", "threshold": 1, "operator": ">", "adjustment": "+1", "breach_duration_secs": 30}"#,
                ),
                "scaling_rules[1].breach_duration_secs: (30) must be between 60 and 3600",
            ),
            (
                with_rule(
                    r#"{"metric_type": "cpu", "threshold": 1, "operator": ">", "adjustment": "+1", "cool_down_secs": 4000}"#,
                ),
                "scaling_rules[1].cool_down_secs: (4000)",
            ),
            (
                with_rule(
                    r#"{"metric_type": "cpu", "threshold": 1, "operator": ">", "adjustment": "+1", "breach": 60}"#,
                ),
                "policy: not valid: unknown field `breach`",
            ),
            (
                FULL.replace("Asia/Shanghai", "Europe/Berln"),
                "schedules.timezone: \"Europe/Berln\" is not a time zone: use an IANA name \
                 such as \"Europe/Berlin\"",
            ),
            (
                FULL.replace("Asia/Shanghai", "UTC+15:00"),
                "schedules.timezone: \"UTC+15:00\" is not a time zone",
            ),
            (
                FULL.replace("Asia/Shanghai", "../../etc/passwd"),
                "schedules.timezone: \"../../etc/passwd\" is not a time zone",
            ),
            (
                FULL.replace("\"18:00\"", "\"09:00\""),
                "schedules.recurring_schedule[0].end_time: must be after start_time",
            ),
            (
                FULL.replace("\"10:00\"", "\"25:00\""),
                "schedules.recurring_schedule[0].start_time: \"25:00\": use HH:MM",
            ),
            (
                FULL.replace("[1,2,3]", "[1,8]"),
                "schedules.recurring_schedule[0].days_of_week: (8) must be between 1 and 7",
            ),
            (
                FULL.replace(
                    "\"initial_min_instance_count\": 5",
                    "\"initial_min_instance_count\": 11",
                ),
                "schedules.recurring_schedule[0].initial_min_instance_count: (11)",
            ),
            (
                FULL.replace("2099-01-01T20:00", "2099-02-30T20:00"),
                "schedules.specific_date[0].end_date_time: \"2099-02-30T20:00\": use yyyy-mm-ddThh:mm",
            ),
            (
                FULL.replace("2099-01-01T20:00", "2099-01-01T09:00"),
                "schedules.specific_date[0].end_date_time: must be after start_date_time",
            ),
        ];
        for (json, expected) in cases {
            let message = error_of(&json);
            assert!(
                message.starts_with(expected),
                "{message:?} should start with {expected:?}"
            );
        }
    }

    #[test]
    fn adjustments_follow_app_autoscaler() {
        assert_eq!(Adjustment::parse("+2").unwrap().apply(3), 5);
        assert_eq!(Adjustment::parse("-5").unwrap().apply(3), 0);
        // int(3 × 1.5 + 0.5) = 5.
        assert_eq!(Adjustment::parse("+50%").unwrap().apply(3), 5);
        // A small percentage still moves by one.
        assert_eq!(Adjustment::parse("+10%").unwrap().apply(2), 3);
        assert_eq!(Adjustment::parse("-10%").unwrap().apply(2), 1);
        assert_eq!(Adjustment::parse("-50%").unwrap().apply(4), 2);
        for bad in ["1", "+", "+-1", "+1%%", "+01", "", "+99999999999999999999"] {
            assert!(Adjustment::parse(bad).is_err(), "{bad}");
        }
        assert!(Operator::parse(">=").unwrap().holds(5.0, 5.0));
        assert!(!Operator::parse(">").unwrap().holds(5.0, 5.0));
    }

    /// UNIX second of a UTC date and time.
    fn utc(y: i16, mo: i8, d: i8, h: i8, mi: i8) -> i64 {
        instant(
            &TimeZone::UTC,
            Date::new(y, mo, d)
                .unwrap()
                .to_datetime(Time::new(h, mi, 0, 0).unwrap()),
        )
        .unwrap()
    }

    /// A policy with one recurring window every day in `zone`, and a specific date.
    fn daily(zone: &str, start: &str, end: &str) -> ScalingPolicy {
        ScalingPolicy::parse(&format!(
            r#"{{"instance_min_count": 1, "instance_max_count": 4,
              "schedules": {{"timezone": "{zone}",
                "recurring_schedule": [{{"start_time": "{start}", "end_time": "{end}",
                  "days_of_week": [1,2,3,4,5,6,7],
                  "instance_min_count": 3, "instance_max_count": 6}}]}}}}"#
        ))
        .unwrap()
    }

    fn active(p: &ScalingPolicy, unix: i64) -> bool {
        p.limits_at(unix).schedule.is_some()
    }

    #[test]
    fn schedules_set_limits_in_their_zone() {
        let p = ScalingPolicy::parse(FULL).unwrap();
        // 2026-11-30 is a Monday; 10:30 in Shanghai (UTC+8, no DST) is 02:30 UTC.
        let l = p.limits_at(utc(2026, 11, 30, 2, 30));
        assert_eq!((l.min, l.max, l.initial_min), (1, 10, Some(5)));
        assert_eq!(l.schedule, Some((ScheduleKind::Recurring, 0)));
        // 18:00 local has ended.
        assert_eq!(p.limits_at(utc(2026, 11, 30, 10, 0)).schedule, None);
        // Thursday is not in the list.
        assert_eq!(p.limits_at(utc(2026, 12, 3, 3, 0)).max, 4);
        let l = p.limits_at(utc(2099, 1, 1, 3, 0));
        assert_eq!(l.schedule, Some((ScheduleKind::SpecificDate, 0)));
        // Fixed offsets, both spellings of the sign convention.
        for zone in ["UTC+08:00", "GMT+08:00", "Etc/GMT-8"] {
            let p = ScalingPolicy::parse(&FULL.replace("Asia/Shanghai", zone)).unwrap();
            assert!(active(&p, utc(2026, 11, 30, 2, 30)), "{zone}");
            assert!(!active(&p, utc(2026, 11, 30, 10, 0)), "{zone}");
        }
        let p = daily("UTC-05:30", "10:00", "11:00");
        assert!(active(&p, utc(2026, 11, 30, 15, 30)));
        assert!(!active(&p, utc(2026, 11, 30, 16, 30)));
    }

    #[test]
    fn business_hours_follow_new_york_across_its_spring_change() {
        // 10:00–18:00 on weekdays. New York moves from EST (-5) to EDT (-4) on Sunday
        // 2026-03-08, so the window opens at 15:00 UTC on Friday and 14:00 UTC on Monday.
        let p = ScalingPolicy::parse(
            r#"{"instance_min_count": 1, "instance_max_count": 4,
              "schedules": {"timezone": "America/New_York",
                "recurring_schedule": [{"start_time": "10:00", "end_time": "18:00",
                  "days_of_week": [1,2,3,4,5], "instance_min_count": 2, "instance_max_count": 8}]}}"#,
        )
        .unwrap();
        assert!(!active(&p, utc(2026, 3, 6, 14, 30)));
        assert!(active(&p, utc(2026, 3, 6, 15, 0)));
        assert!(active(&p, utc(2026, 3, 6, 22, 59)));
        assert!(!active(&p, utc(2026, 3, 6, 23, 0)));
        assert!(!active(&p, utc(2026, 3, 8, 15, 0)), "Sunday");
        assert!(!active(&p, utc(2026, 3, 9, 13, 59)));
        assert!(active(&p, utc(2026, 3, 9, 14, 0)));
        assert!(!active(&p, utc(2026, 3, 9, 22, 0)));
        assert_eq!(p.limits_at(utc(2026, 3, 9, 14, 0)).max, 8);
    }

    #[test]
    fn a_window_in_the_spring_forward_gap_moves_later_by_the_gap() {
        // Berlin jumps from 02:00 CET (+1) to 03:00 CEST (+2) at 01:00 UTC on 2026-03-29:
        // 02:30 does not exist that day and reads as 03:30 CEST (01:30 UTC), as java.time and
        // RFC 5545 have it; 04:00 CEST is 02:00 UTC. So the window runs 01:30–02:00 UTC.
        let p = daily("Europe/Berlin", "02:30", "04:00");
        assert!(!active(&p, utc(2026, 3, 29, 1, 0)), "03:00 CEST");
        assert!(!active(&p, utc(2026, 3, 29, 1, 29)));
        assert!(active(&p, utc(2026, 3, 29, 1, 30)));
        assert!(active(&p, utc(2026, 3, 29, 1, 59)));
        assert!(!active(&p, utc(2026, 3, 29, 2, 0)));
        // The day before is plain CET (01:30–03:00 UTC), the day after plain CEST
        // (00:30–02:00 UTC).
        assert!(active(&p, utc(2026, 3, 28, 1, 30)));
        assert!(active(&p, utc(2026, 3, 28, 2, 59)));
        assert!(!active(&p, utc(2026, 3, 28, 3, 0)));
        assert!(active(&p, utc(2026, 3, 30, 0, 30)));
        assert!(!active(&p, utc(2026, 3, 30, 2, 0)));

        // A window entirely inside the gap keeps its length instead of vanishing:
        // 02:10–02:40 becomes 03:10–03:40 CEST (01:10–01:40 UTC).
        let p = daily("Europe/Berlin", "02:10", "02:40");
        assert!(!active(&p, utc(2026, 3, 29, 1, 9)));
        assert!(active(&p, utc(2026, 3, 29, 1, 10)));
        assert!(active(&p, utc(2026, 3, 29, 1, 39)));
        assert!(!active(&p, utc(2026, 3, 29, 1, 40)));

        // A specific date in the gap resolves the same way.
        let p = ScalingPolicy::parse(
            r#"{"instance_min_count": 1, "instance_max_count": 4,
              "schedules": {"timezone": "Europe/Berlin",
                "specific_date": [{"start_date_time": "2026-03-29T02:30",
                  "end_date_time": "2026-03-29T05:00",
                  "instance_min_count": 2, "instance_max_count": 5}]}}"#,
        )
        .unwrap();
        assert!(!active(&p, utc(2026, 3, 29, 1, 29)));
        assert!(active(&p, utc(2026, 3, 29, 1, 30)));
        assert!(active(&p, utc(2026, 3, 29, 2, 59)));
        assert!(!active(&p, utc(2026, 3, 29, 3, 0)));
    }

    #[test]
    fn a_window_across_the_fall_back_fold_opens_once_and_runs_the_long_hour() {
        // Berlin goes back from 03:00 CEST (+2) to 02:00 CET (+1) at 01:00 UTC on 2026-10-25:
        // 02:00–03:00 happens twice. 02:30 is its first occurrence (00:30 UTC); 03:30 CET is
        // 02:30 UTC. The window is open for two real hours, as one schedule the whole time.
        let p = daily("Europe/Berlin", "02:30", "03:30");
        assert!(!active(&p, utc(2026, 10, 25, 0, 29)));
        for (h, m) in [(0, 30), (0, 59), (1, 0), (1, 45), (2, 29)] {
            let l = p.limits_at(utc(2026, 10, 25, h, m));
            assert_eq!(
                l.schedule,
                Some((ScheduleKind::Recurring, 0)),
                "{h}:{m} UTC"
            );
            assert_eq!((l.min, l.max), (3, 6));
        }
        assert!(!active(&p, utc(2026, 10, 25, 2, 30)));
        // A window inside the repeated hour is open during its first pass only.
        let p = daily("Europe/Berlin", "02:10", "02:50");
        assert!(active(&p, utc(2026, 10, 25, 0, 10)));
        assert!(!active(&p, utc(2026, 10, 25, 0, 50)));
        assert!(
            !active(&p, utc(2026, 10, 25, 1, 10)),
            "the second 02:10 (CET)"
        );
        // The next day the window is in CET again: 01:10–01:50 UTC.
        assert!(active(&p, utc(2026, 10, 26, 1, 10)));
    }

    #[test]
    fn zone_names_are_checked_without_touching_the_file_system() {
        for good in [
            "Europe/Berlin",
            "America/New_York",
            "UTC",
            "Etc/UTC",
            "Asia/Kolkata",
        ] {
            assert!(time_zone(good).is_some(), "{good}");
        }
        for bad in [
            "",
            "Europe/Berln",
            "/etc/localtime",
            "../zoneinfo/UTC",
            "UTC+8",
            "UTC+25:00",
        ] {
            assert!(time_zone(bad).is_none(), "{bad}");
        }
        assert_eq!(
            time_zone("UTC-05:30")
                .unwrap()
                .to_offset(Timestamp::UNIX_EPOCH)
                .seconds(),
            -19_800
        );
    }
}
