//! The evaluator: for each app with a policy, reads its metrics from the rolling windows, keeps
//! each rule's breach clock, and decides on at most one scaling action per app and tick.
//!
//! Flow: the runner's tick → [`Engine::evaluate`] (pure: windows + injected `now`) → a list of
//! [`Step`]s (scale calls to make, lines to say) → the runner calls the API and reports back
//! with [`Engine::scaled`] / [`Engine::scale_failed`].
//!
//! Invariants:
//! - a rule breaches only when its condition held on every evaluation for
//!   `breach_duration_secs`; missing or stale data resets the clock, so missing data never
//!   scales anything (in particular never scales in);
//! - an app in cooldown is not scaled by a rule; a schedule's or the policy's limits are;
//! - each hold or "limited" note is said once per change, not once per tick;
//! - an operator's `rule_duration_cap` only ever shortens a rule's breach duration and
//!   cooldown, and every line says the durations actually applied.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hydrant_api::policy::{Limits, MetricType, Rule, ScalingPolicy};
use hydrant_windows::{AppWindows, Windows};

/// Bytes in a MiB (memory gauges are bytes, thresholds MB).
const MIB: f64 = 1024.0 * 1024.0;
/// How long a failed scale call keeps the app from being tried again.
pub const FAILURE_BACKOFF: Duration = Duration::from_secs(30);

/// Evaluation settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineConfig {
    /// Longest window a metric is read over (never longer than the rule's breach duration).
    pub metric_window: Duration,
    /// The response-time percentile, 0..100.
    pub responsetime_percentile: f64,
    /// Nothing heard from an app for this long makes its data stale.
    pub stale_after: Duration,
    /// Treat an app with no requests in the window as 0 ms response time, so a latency
    /// policy can scale in at zero traffic (app-autoscaler does the same).
    pub idle_responsetime_zero: bool,
    /// The operator's cap on every rule's breach duration and cooldown (`None`: as written).
    pub rule_duration_cap: Option<Duration>,
}

impl EngineConfig {
    /// `responsetime p95`, `throughput avg`, ...: the metric as measured.
    fn describe_metric(&self, rule: &Rule) -> String {
        if matches!(rule.metric, MetricType::ResponseTime) {
            format!("{} p{}", rule.metric_type, self.responsetime_percentile)
        } else {
            format!("{} avg", rule.metric_type)
        }
    }

    /// A rule's breach duration and cooldown as this engine applies them.
    #[must_use]
    pub fn durations(&self, rule: &Rule) -> (Duration, Duration) {
        let breach = Duration::from_secs(u64::from(rule.breach_duration_secs));
        let cool_down = Duration::from_secs(u64::from(rule.cool_down_secs));
        match self.rule_duration_cap {
            Some(cap) => (breach.min(cap), cool_down.min(cap)),
            None => (breach, cool_down),
        }
    }
}

/// What the cloud controller says about an app.
#[derive(Debug, Clone, PartialEq)]
pub struct AppInfo {
    /// The app's guid (its source id in the firehose).
    pub guid: String,
    /// Its name, for lines.
    pub name: String,
    /// Its desired instance count.
    pub instances: u32,
    /// Only started apps are scaled.
    pub started: bool,
    /// Its policy.
    pub policy: ScalingPolicy,
}

/// Something the runner must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Scale `app` from `from` to `to`; `line` goes into its log stream on success.
    Scale(ScaleStep),
    /// Put this line into `app`'s log stream.
    Say {
        /// App guid.
        app: String,
        /// The line.
        line: String,
    },
}

/// One scaling action, with everything the audit event needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleStep {
    /// App guid.
    pub app: String,
    /// Instances now.
    pub from: u32,
    /// Instances wanted.
    pub to: u32,
    /// The rule that breached, or `None` for limits.
    pub rule: Option<usize>,
    /// Its metric type, or `limits`.
    pub metric_type: String,
    /// The value that triggered it.
    pub value: f64,
    /// The rule's threshold (0 for limits).
    pub threshold: i64,
    /// The rule's operator (empty for limits).
    pub operator: String,
    /// The rule's adjustment (empty for limits).
    pub adjustment: String,
    /// Cooldown to start on success.
    pub cool_down: Duration,
    /// The log line, also the audit event's reason.
    pub line: String,
}

#[derive(Debug)]
struct AppState {
    info: AppInfo,
    rules: Vec<Rule>,
    breach_since: Vec<Option<Instant>>,
    cooldown_until: Option<Instant>,
    /// The last note said (hold, limited, ...), so it is said once per change.
    note: Option<String>,
    schedule: Option<Limits>,
}

/// Per-app evaluation state.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    apps: HashMap<String, AppState>,
}

/// A metric value, or why there is none.
type Measured = Result<f64, String>;

impl Engine {
    /// An engine with no apps.
    #[must_use]
    pub fn new(config: EngineConfig) -> Self {
        Self {
            config,
            apps: HashMap::new(),
        }
    }

    /// Replaces the set of apps and policies (after a poll). Breach clocks and cooldowns of
    /// apps whose policy did not change are kept. Returns one line per app whose policy is
    /// new or changed, so its owner can see the autoscaler took it up.
    pub fn set_apps(&mut self, apps: Vec<AppInfo>) -> Vec<Step> {
        let mut next = HashMap::with_capacity(apps.len());
        let mut said = Vec::new();
        for info in apps {
            let Ok(rules) = info.policy.rules() else {
                continue;
            };
            let state = match self.apps.remove(&info.guid) {
                Some(mut old) if old.info.policy == info.policy => {
                    old.info = info;
                    old
                }
                old => {
                    said.push(Step::Say {
                        app: info.guid.clone(),
                        line: self.in_force(&info.policy, &rules),
                    });
                    AppState {
                        breach_since: vec![None; rules.len()],
                        rules,
                        cooldown_until: old.as_ref().and_then(|o| o.cooldown_until),
                        note: None,
                        schedule: None,
                        info,
                    }
                }
            };
            next.insert(state.info.guid.clone(), state);
        }
        self.apps = next;
        said
    }

    /// "Policy in force: ..." with every rule as this engine will apply it.
    fn in_force(&self, policy: &ScalingPolicy, rules: &[Rule]) -> String {
        let mut line = format!(
            "Autoscaling policy in force: {}..{} instances",
            policy.instance_min_count, policy.instance_max_count
        );
        for rule in rules {
            let (breach, cool_down) = self.config.durations(rule);
            line.push_str(&format!(
                "; scaling_rules[{}] {} {} {}{} for {} s → {} (cooldown {} s)",
                rule.index,
                self.config.describe_metric(rule),
                rule.operator.as_str(),
                rule.threshold,
                rule.metric.unit(),
                breach.as_secs(),
                rule.adjustment_text,
                cool_down.as_secs()
            ));
        }
        if let Some(schedules) = &policy.schedules {
            line.push_str(&format!(
                "; {} schedule(s) in {}",
                schedules.recurring_schedule.len() + schedules.specific_date.len(),
                schedules.timezone
            ));
        }
        if self.config.rule_duration_cap.is_some()
            && rules.iter().any(|r| {
                self.config.durations(r)
                    != (
                        Duration::from_secs(u64::from(r.breach_duration_secs)),
                        Duration::from_secs(u64::from(r.cool_down_secs)),
                    )
            })
        {
            line.push_str(" (durations shortened by the operator's rule_duration_cap_secs)");
        }
        line
    }

    /// How many apps are under a policy.
    #[must_use]
    pub fn apps(&self) -> usize {
        self.apps.len()
    }

    /// One evaluation of every app at `now` (`unix_now` for schedules). `stream` is `Err`
    /// with a reason when the firehose itself cannot be trusted (disconnected, silent, lossy):
    /// then every app holds.
    pub fn evaluate(
        &mut self,
        windows: &Windows,
        stream: Result<(), String>,
        now: Instant,
        unix_now: i64,
    ) -> Vec<Step> {
        let mut steps = Vec::new();
        let config = self.config;
        for state in self.apps.values_mut() {
            if !state.info.started {
                continue;
            }
            let app = windows.app(&state.info.guid);
            evaluate_app(
                &config,
                state,
                app,
                stream.as_ref().err(),
                now,
                unix_now,
                &mut steps,
            );
        }
        steps
    }

    /// Records that a scale call succeeded: the count is now `step.to` and cooldown starts.
    pub fn scaled(&mut self, step: &ScaleStep, now: Instant) {
        if let Some(state) = self.apps.get_mut(&step.app) {
            state.info.instances = step.to;
            if step.rule.is_some() {
                state.cooldown_until = Some(now + step.cool_down);
            }
            // The next action needs a fresh, full breach under the new count.
            state.breach_since.iter_mut().for_each(|b| *b = None);
            state.note = None;
        }
    }

    /// Records that a scale call failed: the app is left alone for [`FAILURE_BACKOFF`].
    pub fn scale_failed(&mut self, app: &str, now: Instant) {
        if let Some(state) = self.apps.get_mut(app) {
            let until = now + FAILURE_BACKOFF;
            state.cooldown_until = Some(state.cooldown_until.map_or(until, |c| c.max(until)));
        }
    }
}

fn note(state: &mut AppState, line: String, steps: &mut Vec<Step>) {
    if state.note.as_deref() != Some(line.as_str()) {
        steps.push(Step::Say {
            app: state.info.guid.clone(),
            line: line.clone(),
        });
        state.note = Some(line);
    }
}

fn evaluate_app(
    config: &EngineConfig,
    state: &mut AppState,
    app: Option<AppWindows<'_>>,
    stream_problem: Option<&String>,
    now: Instant,
    unix_now: i64,
    steps: &mut Vec<Step>,
) {
    let current = state.info.instances;
    let limits = state.info.policy.limits_at(unix_now);
    // Limits first: they apply in cooldown and whatever the metrics say.
    let entering =
        limits.schedule.is_some() && state.schedule.map(|s| s.schedule) != Some(limits.schedule);
    state.schedule = Some(limits);
    let floor = if entering {
        limits.initial_min.unwrap_or(limits.min).max(limits.min)
    } else {
        limits.min
    };
    let bounded = current.max(floor).min(limits.max);
    if bounded != current {
        let which = limits.schedule.map_or_else(
            || "the policy's limits".to_owned(),
            |(kind, i)| match kind {
                hydrant_api::policy::ScheduleKind::Recurring => {
                    format!("schedules.recurring_schedule[{i}]")
                }
                hydrant_api::policy::ScheduleKind::SpecificDate => {
                    format!("schedules.specific_date[{i}]")
                }
            },
        );
        steps.push(Step::Scale(ScaleStep {
            app: state.info.guid.clone(),
            from: current,
            to: bounded,
            rule: None,
            metric_type: "limits".to_owned(),
            value: f64::from(current),
            threshold: 0,
            operator: String::new(),
            adjustment: String::new(),
            cool_down: Duration::ZERO,
            line: format!(
                "Scaling from {current} to {bounded} instances: {which} allow {}..{} instances",
                limits.min, limits.max
            ),
        }));
        return;
    }

    let mut missing: Option<String> = None;
    let mut fired: Option<(usize, f64)> = None;
    for (i, rule) in state.rules.iter().enumerate() {
        let measured = match stream_problem {
            Some(problem) => Err(problem.clone()),
            None => measure(config, rule, app, now),
        };
        match measured {
            Err(reason) => {
                state.breach_since[i] = None;
                if missing.is_none() {
                    missing = Some(format!(
                        "scaling_rules[{i}] ({}): {reason}",
                        rule.metric_type
                    ));
                }
            }
            Ok(value) if rule.operator.holds(value, rule.threshold as f64) => {
                let since = *state.breach_since[i].get_or_insert(now);
                let held = now.saturating_duration_since(since);
                if fired.is_none() && held >= config.durations(rule).0 {
                    fired = Some((i, value));
                }
            }
            Ok(_) => state.breach_since[i] = None,
        }
    }

    let Some((i, value)) = fired else {
        match missing {
            Some(reason) => note(
                state,
                format!("Holding at {current} instances: no usable data for {reason}"),
                steps,
            ),
            None => {
                if state
                    .note
                    .as_deref()
                    .is_some_and(|n| n.starts_with("Holding"))
                {
                    note(
                        state,
                        "Metrics available again; evaluating".to_owned(),
                        steps,
                    );
                }
            }
        }
        return;
    };
    if state.cooldown_until.is_some_and(|until| now < until) {
        return;
    }
    let rule = &state.rules[i];
    let (breach, cool_down) = config.durations(rule);
    let wanted = rule.adjustment.apply(current);
    let to = u32::try_from(wanted.clamp(i64::from(limits.min), i64::from(limits.max)))
        .unwrap_or(limits.max);
    let unit = rule.metric.unit();
    let seen = format!(
        "{} {value:.1}{unit} {} {}{unit} for {} s",
        config.describe_metric(rule),
        rule.operator.as_str(),
        rule.threshold,
        breach.as_secs()
    );
    if to == current {
        note(
            state,
            format!(
                "Not scaling: scaling_rules[{i}] breached ({seen}) but {current} instances is \
                 the limit ({}..{})",
                limits.min, limits.max
            ),
            steps,
        );
        return;
    }
    steps.push(Step::Scale(ScaleStep {
        app: state.info.guid.clone(),
        from: current,
        to,
        rule: Some(i),
        metric_type: rule.metric_type.clone(),
        value,
        threshold: rule.threshold,
        operator: rule.operator.as_str().to_owned(),
        adjustment: rule.adjustment_text.clone(),
        cool_down,
        line: format!(
            "Scaling from {current} to {to} instances: scaling_rules[{i}] {seen} \
             (adjustment {}, cooldown {} s)",
            rule.adjustment_text,
            cool_down.as_secs()
        ),
    }));
}

/// The rule's metric now, or why it cannot be read.
fn measure(
    config: &EngineConfig,
    rule: &Rule,
    app: Option<AppWindows<'_>>,
    now: Instant,
) -> Measured {
    let Some(app) = app else {
        return Err("nothing heard from the app yet".to_owned());
    };
    let silent = now.saturating_duration_since(app.last_seen());
    if silent > config.stale_after {
        return Err(format!(
            "nothing heard from the app for {} s",
            silent.as_secs()
        ));
    }
    let window = config.metric_window.min(config.durations(rule).0);
    let gauge = |name: &str| {
        app.gauge(name, window, now)
            .map(|g| g.avg)
            .ok_or_else(|| format!("no {name:?} gauge in the last {} s", window.as_secs()))
    };
    match &rule.metric {
        MetricType::Throughput => Ok(app.requests(window, now).per_second),
        MetricType::ResponseTime => {
            match app.latency_quantile(config.responsetime_percentile / 100.0, window, now) {
                Some(d) => Ok(d.as_secs_f64() * 1000.0),
                None if config.idle_responsetime_zero => Ok(0.0),
                None => Err(format!("no requests in the last {} s", window.as_secs())),
            }
        }
        MetricType::MemoryUsed => gauge("memory").map(|b| (b / MIB).ceil()),
        MetricType::Disk => gauge("disk").map(|b| (b / MIB).ceil()),
        MetricType::MemoryUtil => util(gauge("memory")?, gauge("memory_quota")?),
        MetricType::DiskUtil => util(gauge("disk")?, gauge("disk_quota")?),
        MetricType::Cpu => gauge("cpu"),
        MetricType::Custom(name) => gauge(name),
    }
}

fn util(used: f64, quota: f64) -> Measured {
    if quota > 0.0 {
        Ok((used / quota * 100.0).ceil())
    } else {
        Err("the quota gauge is 0".to_owned())
    }
}
