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
//! within app-autoscaler's 60–3600 s, and every error names the offending field by its JSON path
//! (`scaling_rules[1].adjustment`) and says what to write instead.

use std::fmt;

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
    /// The zone the times are in. Hydrant evaluates `UTC`, `Etc/UTC`, `GMT` and fixed offsets
    /// (`Etc/GMT-8`, `UTC+08:00`); it has no zone database.
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
        let Some(offset) = zone_offset_secs(&schedules.timezone) else {
            return own;
        };
        let local = unix_secs.saturating_add(offset);
        let mut best: Option<(i64, Limits)> = None;
        let mut consider = |start: i64, limits: Limits| {
            if best.is_none_or(|(s, _)| start < s) {
                best = Some((start, limits));
            }
        };
        for (i, s) in schedules.specific_date.iter().enumerate() {
            let (Some(start), Some(end)) = (
                parse_date_time(&s.start_date_time),
                parse_date_time(&s.end_date_time),
            ) else {
                continue;
            };
            if (start..end).contains(&local) {
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
        for (i, s) in schedules.recurring_schedule.iter().enumerate() {
            if let Some(start) = s.active_since(local) {
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
        if zone_offset_secs(&self.timezone).is_none() {
            return Err(bad(
                "schedules.timezone",
                format!(
                    "{:?}: Hydrant has no zone database; use UTC, Etc/UTC, GMT, a fixed \
                     offset like Etc/GMT-8 (8 hours east) or UTC+08:00",
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

    /// The local second this window opened, if it is open at local second `local`.
    fn active_since(&self, local: i64) -> Option<i64> {
        let day = local.div_euclid(86_400);
        let second = local.rem_euclid(86_400);
        let start = i64::from(parse_hhmm(&self.start_time)?) * 60;
        let end = i64::from(parse_hhmm(&self.end_time)?) * 60;
        if !(start..end).contains(&second) {
            return None;
        }
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
        let (_, _, day_of_month) = civil_from_days(day);
        // 1970-01-01 was a Thursday (ISO 4).
        let weekday = (day + 3).rem_euclid(7) + 1;
        let on = if self.days_of_week.is_empty() {
            self.days_of_month.contains(&day_of_month)
        } else {
            self.days_of_week.contains(&weekday)
        };
        on.then_some(day * 86_400 + start)
    }
}

/// Seconds east of UTC for the zones Hydrant can evaluate.
fn zone_offset_secs(zone: &str) -> Option<i64> {
    if matches!(zone, "UTC" | "Etc/UTC" | "GMT" | "Etc/GMT" | "Z") {
        return Some(0);
    }
    if let Some(rest) = zone.strip_prefix("Etc/GMT") {
        // POSIX sign convention: Etc/GMT-8 is eight hours east.
        let hours: i64 = rest.parse().ok()?;
        return (-14..=12).contains(&hours).then_some(-hours * 3600);
    }
    let rest = zone.strip_prefix("UTC")?;
    let sign = match rest.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let minutes = i64::from(parse_hhmm(&rest[1..])?);
    (minutes <= 14 * 60).then_some(sign * minutes * 60)
}

/// Minutes since midnight of `HH:MM`.
fn parse_hhmm(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: u32 = h.parse().ok()?;
    let m: u32 = m.parse().ok()?;
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// Days since 1970-01-01 of `yyyy-mm-dd`.
fn parse_date(text: &str) -> Option<i64> {
    let mut parts = text.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let days = days_from_civil(y, m, d);
    // Round-tripping rejects 02-30 and friends.
    ((1..=12).contains(&m) && d >= 1 && civil_from_days(days) == (y, m, d)).then_some(days)
}

/// Local seconds since 1970-01-01T00:00 of `yyyy-mm-ddThh:mm`.
fn parse_date_time(text: &str) -> Option<i64> {
    let (date, time) = text.split_once('T')?;
    Some(parse_date(date)? * 86_400 + i64::from(parse_hhmm(time)?) * 60)
}

/// Howard Hinnant's `days_from_civil`.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
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
        "timezone": "Etc/GMT-8",
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
                FULL.replace("Etc/GMT-8", "Asia/Shanghai"),
                "schedules.timezone: \"Asia/Shanghai\"",
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

    #[test]
    fn schedules_set_limits_in_their_zone() {
        let p = ScalingPolicy::parse(FULL).unwrap();
        // 2026-11-30 is a Monday; 10:30 in UTC+8 is 02:30 UTC.
        let monday = days_from_civil(2026, 11, 30) * 86_400;
        let l = p.limits_at(monday + 2 * 3600 + 1800);
        assert_eq!((l.min, l.max, l.initial_min), (1, 10, Some(5)));
        assert_eq!(l.schedule, Some((ScheduleKind::Recurring, 0)));
        // 18:00 local has ended.
        assert_eq!(p.limits_at(monday + 10 * 3600).schedule, None);
        // Thursday is not in the list.
        assert_eq!(p.limits_at(monday + 3 * 86_400 + 3 * 3600).max, 4);
        let new_year = days_from_civil(2099, 1, 1) * 86_400 + 3 * 3600;
        let l = p.limits_at(new_year);
        assert_eq!(l.schedule, Some((ScheduleKind::SpecificDate, 0)));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(zone_offset_secs("UTC-05:30"), Some(-19_800));
    }
}
