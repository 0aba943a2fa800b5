//! Builds the [`View`]: every table row, the app detail and the header, from the state at one
//! instant.
//!
//! Flow: `State::rebuild` → [`build`] → rows of formatted cells with their colours, which the
//! drawing code shows as they are and the key handling sorts and filters.
//!
//! Invariants: thresholds live here, in one place ([`threshold`]); text from outside (names,
//! tags, payloads, API details) passes through [`crate::format::clean`] before it is put in a
//! cell; a value that is not known is `-`, never `0`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use hydrant_api::{AppState, InstanceState};
use hydrant_firehose_client::render::{TimeZone, format_timestamp};

use super::components::{ExecutorStats, HopStats, STALE_NS};
use super::{SPARK_SECS, State};
use crate::format::{self, NONE, clean};
use crate::view::{
    AppDetail, CellOut, Header, Level, LogOut, Note, RowOut, Screen, Table, Tone, View,
};

/// Where colours change. Yellow at `warn`, red at `alert`.
pub(crate) mod threshold {
    /// CPU % of one core, per app or instance (cf top's cell thresholds).
    pub const CPU: (f64, f64) = (80.0, 90.0);
    /// Memory used, % of quota or capacity.
    pub const MEMORY: (f64, f64) = (80.0, 90.0);
    /// 5xx, % of all responses.
    pub const SERVER_ERRORS: (f64, f64) = (1.0, 5.0);
    /// p99 latency, ms.
    pub const P99_MS: (f64, f64) = (500.0, 1_000.0);
    /// Crashes in the window.
    pub const CRASHES: (f64, f64) = (1.0, 3.0);
    /// Pipeline drops, % of envelopes in (any drop at all is already yellow).
    pub const DROPS: (f64, f64) = (0.0, 1.0);

    /// The tone of `v` against `(warn, alert)`, higher being worse.
    #[must_use]
    pub fn above(v: f64, (warn, alert): (f64, f64)) -> crate::view::Tone {
        if v >= alert {
            crate::view::Tone::Alert
        } else if v >= warn {
            crate::view::Tone::Warn
        } else {
            crate::view::Tone::Normal
        }
    }

    /// A node's certificate: yellow with fewer days than this left, red once expired.
    pub const CERT_DAYS: f64 = 30.0;

    /// The tone of a certificate with `seconds` left.
    #[must_use]
    pub fn cert(seconds: f64) -> crate::view::Tone {
        if seconds <= 0.0 {
            crate::view::Tone::Alert
        } else if seconds < CERT_DAYS * 86_400.0 {
            crate::view::Tone::Warn
        } else {
            crate::view::Tone::Normal
        }
    }

    /// SLO error budget left (fraction): yellow under a half, red under a quarter.
    #[must_use]
    pub fn budget(left: f64) -> crate::view::Tone {
        if left < 0.25 {
            crate::view::Tone::Alert
        } else if left < 0.5 {
            crate::view::Tone::Warn
        } else {
            crate::view::Tone::Normal
        }
    }
}

const SEC: Duration = Duration::from_secs(1);
const TEN: Duration = Duration::from_secs(10);
const MINUTE: Duration = Duration::from_secs(60);
/// Gauges older than this are not shown (the executor reports every few seconds).
const GAUGE_WINDOW: Duration = Duration::from_secs(30);
/// Crashes are counted over the windows' horizon.
const CRASH_WINDOW: Duration = Duration::from_secs(300);
/// Live SLO gauges older than this are ignored (the alerter reports every few seconds).
const SLO_FRESH_NS: i64 = 120_000_000_000;
/// Detail screen: log lines and events kept on the view.
const DETAIL_LOGS: usize = 200;
const DETAIL_EVENTS: usize = 30;
/// Audit events shown on the events screen.
const AUDIT_EVENTS: usize = 500;

/// Everything the screens show, as of `now`.
pub(super) fn build(state: &State, now: Instant) -> View {
    let wall = state.wall_ns(now);
    let apps = apps_table(state, now, wall);
    let detail = match state.screen() {
        Screen::App(guid) => Some(detail(state, guid, now, wall)),
        _ => None,
    };
    let service = match state.screen() {
        Screen::Service(guid) => Some(super::service_rows::detail(state, guid, wall)),
        _ => None,
    };
    View {
        now,
        header: header(state, now, wall),
        tables: [
            apps,
            pipeline_table(state, wall),
            nodes_table(state, wall),
            events_table(state),
            super::service_rows::table(state, wall),
        ],
        detail,
        service,
    }
}

/// HH:MM:SS of `ns` in the configured zone.
fn hms(state: &State, ns: i64) -> String {
    with_time(state.config().tz, ns, 11, 19)
}

/// HH:MM:SS.cc of `ns`.
fn hms_cs(tz: TimeZone, ns: i64) -> String {
    with_time(tz, ns, 11, 22)
}

fn with_time(tz: TimeZone, ns: i64, from: usize, to: usize) -> String {
    let mut s = String::with_capacity(28);
    format_timestamp(ns, tz, &mut s);
    s.get(from..to).unwrap_or(NONE).to_owned()
}

/// Guids of every app to list: the API's, then sources that behave like apps (requests or
/// app logs) the API did not list (another space, or the API is down).
fn app_ids(state: &State) -> Vec<String> {
    let mut ids: Vec<String> = state.meta.apps.keys().cloned().collect();
    for w in state.windows().apps() {
        let id = w.source_id();
        if (w.last_request().is_some() || w.last_log().is_some())
            && !state.meta.apps.contains_key(id)
            && !state.services.is_service(id)
        {
            ids.push(id.to_owned());
        }
    }
    ids
}

/// Instances running per the API, and wanted.
fn instance_counts(state: &State, guid: &str) -> (Option<u32>, Option<u32>) {
    let app = state.meta.apps.get(guid);
    let running = state.meta.stats.get(guid).map(|s| {
        s.instances
            .iter()
            .filter(|i| i.state == InstanceState::Running)
            .count() as u32
    });
    let desired = app.map(|a| match a.state {
        AppState::Started => a.instances,
        AppState::Stopped => 0,
    });
    (running, desired)
}

/// The lowest error budget left of an app's SLOs: live gauges first, the alerter's status
/// otherwise.
fn slo_budget(state: &State, guid: &str, wall: i64) -> Option<f64> {
    let live = state.slo_live.get(guid).and_then(|slos| {
        slos.values()
            .filter(|g| wall - g.ts < SLO_FRESH_NS)
            .filter_map(|g| g.budget)
            .min_by(f64::total_cmp)
    });
    live.or_else(|| {
        state.meta.slo_status.get(guid).and_then(|s| {
            s.slos
                .iter()
                .map(|x| x.budget_remaining)
                .min_by(f64::total_cmp)
        })
    })
}

/// SLO alerts firing for an app: `(slo name, severity)`.
fn slo_firing(state: &State, guid: &str, wall: i64) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(status) = state.meta.slo_status.get(guid) {
        for s in &status.slos {
            for a in &s.alerts {
                out.push((s.name.clone(), a.severity.clone()));
            }
        }
    }
    if out.is_empty()
        && let Some(slos) = state.slo_live.get(guid)
    {
        for (name, g) in slos {
            if wall - g.ts < SLO_FRESH_NS && g.firing.is_some_and(|n| n > 0.0) {
                out.push((name.to_string(), "alert".to_owned()));
            }
        }
    }
    out
}

fn apps_table(state: &State, now: Instant, wall: i64) -> Table {
    let mut rows = Vec::new();
    for guid in app_ids(state) {
        let app = state.meta.apps.get(&guid);
        let w = state.windows().app(&guid);
        let name = clean(app.map_or(guid.as_str(), |a| a.name.as_str())).into_owned();
        let (running, desired) = instance_counts(state, &guid);
        let live_running = w.map(|w| {
            w.instances()
                .filter(|i| i.gauge("cpu", GAUGE_WINDOW, now).is_some())
                .count() as u32
        });
        let running = running.or(live_running);
        let started = app.is_some_and(|a| a.state == AppState::Started);
        let short = started && matches!((running, desired), (Some(r), Some(d)) if r < d);
        let recent = w
            .and_then(|w| w.last_request())
            .is_some_and(|t| now.saturating_duration_since(t) < TEN);
        let name_tone = if short {
            Tone::Alert
        } else if recent {
            Tone::Active
        } else if app.is_some_and(|a| a.state == AppState::Stopped) {
            Tone::Dim
        } else {
            Tone::Normal
        };
        let state_text = app.map_or("?", |a| a.state.as_str());
        let inst = format!(
            "{}/{}",
            running.map_or_else(|| "?".to_owned(), |r| r.to_string()),
            desired.map_or_else(|| "?".to_owned(), |d| d.to_string())
        );

        let gauge = |name: &str| w.and_then(|w| w.gauge(name, GAUGE_WINDOW, now));
        let cpu = gauge("cpu").map(|g| g.last_sum);
        let mem = gauge("memory").map(|g| g.last_sum);
        let quota = gauge("memory_quota").map(|g| g.last_sum);
        let rate = |window| w.map(|w| w.requests(window, now).per_second);
        let latency = w.and_then(|w| w.latency(TEN, now));
        let classes = w.map(|w| w.status_classes(MINUTE, now));
        let class = |c: usize| classes.map(|s| s.app[c] + s.router[c]);
        let total: u64 = (1..=5).filter_map(class).sum();
        let logs = w.map(|w| w.logs(TEN, now).lines.per_second);
        let crashes = w.map(|w| w.crashes(CRASH_WINDOW, now));
        let budget = slo_budget(state, &guid, wall);

        let mem_tone = match (mem, quota) {
            (Some(m), Some(q)) if q > 0.0 => threshold::above(m * 100.0 / q, threshold::MEMORY),
            _ => Tone::Normal,
        };
        let fivexx = class(5);
        let fivexx_tone = match fivexx {
            Some(n) if total > 0 => {
                threshold::above(n as f64 * 100.0 / total as f64, threshold::SERVER_ERRORS)
            }
            _ => Tone::Normal,
        };
        let p99_tone = latency.map_or(Tone::Normal, |l| {
            threshold::above(l.p99.as_secs_f64() * 1e3, threshold::P99_MS)
        });
        let count_cell = |n: Option<u64>| CellOut::num(n.map(|n| n as f64), opt_count(n));
        let cells = vec![
            CellOut::text(name).tone(name_tone),
            CellOut::text(state_text),
            CellOut::text(inst).tone(if short { Tone::Alert } else { Tone::Normal }),
            CellOut::num(cpu, cpu.map_or_else(|| NONE.to_owned(), format::percent))
                .tone(cpu.map_or(Tone::Normal, |c| threshold::above(c, threshold::CPU))),
            CellOut::num(mem, mem.map_or_else(|| NONE.to_owned(), format::bytes)).tone(mem_tone),
            rate_cell(rate(SEC)),
            rate_cell(rate(TEN)),
            rate_cell(rate(MINUTE)),
            latency_cell(latency.map(|l| l.p50)),
            latency_cell(latency.map(|l| l.p95)),
            latency_cell(latency.map(|l| l.p99)).tone(p99_tone),
            count_cell(class(2)),
            count_cell(class(3)),
            count_cell(class(4)),
            count_cell(fivexx).tone(fivexx_tone),
            rate_cell(logs),
            count_cell(crashes).tone(crashes.map_or(Tone::Normal, |c| {
                threshold::above(c as f64, threshold::CRASHES)
            })),
            CellOut::num(
                budget.map(|b| b * 100.0),
                budget.map_or_else(
                    || NONE.to_owned(),
                    |b| format!("{}%", format::percent(b * 100.0)),
                ),
            )
            .tone(budget.map_or(Tone::Normal, threshold::budget)),
        ];
        rows.push(RowOut {
            key: guid.clone(),
            cells,
            dim: app.is_some_and(|a| a.state == AppState::Stopped),
            link: Some(guid),
        });
    }
    let empty_note = rows.is_empty().then(|| {
        if state.meta.seen {
            "no apps yet: push one with `hydrant push`".to_owned()
        } else {
            "waiting for the API and the stream...".to_owned()
        }
    });
    Table { rows, empty_note }
}

fn opt_count(n: Option<u64>) -> String {
    n.map_or_else(|| NONE.to_owned(), format::count)
}

fn rate_cell(v: Option<f64>) -> CellOut {
    CellOut::num(v, format::opt_number(v))
}

fn latency_cell(d: Option<Duration>) -> CellOut {
    CellOut::num(d.map(|d| d.as_secs_f64() * 1e3), format::opt_latency(d))
}

fn pipeline_table(state: &State, wall: i64) -> Table {
    let rows: Vec<RowOut> = state
        .components
        .pipeline_rows()
        .into_iter()
        .map(|h| hop_row(&h, wall))
        .collect();
    let empty_note = rows.is_empty().then(|| {
        "no pipeline metrics: they come with the firehose (operator mode) from the components' \
         own envelopes, every few seconds"
            .to_owned()
    });
    Table { rows, empty_note }
}

fn hop_row(h: &HopStats, wall: i64) -> RowOut {
    let age_ns = wall.saturating_sub(h.last_ts).max(0);
    let stale = age_ns > STALE_NS;
    let drop_tone = match (h.drop_rate, h.in_rate) {
        (Some(d), Some(i)) if d > 0.0 && i > 0.0 => {
            let share = d * 100.0 / i;
            if share >= threshold::DROPS.1 {
                Tone::Alert
            } else {
                Tone::Warn
            }
        }
        (Some(d), _) if d > 0.0 => Tone::Warn,
        _ => Tone::Normal,
    };
    let reasons = if h.reasons.is_empty() {
        NONE.to_owned()
    } else {
        h.reasons
            .iter()
            .map(|(r, n)| format!("{}:{}", clean(r), format::count(*n)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let age = Duration::from_nanos(age_ns.unsigned_abs());
    let cells = vec![
        CellOut::text(h.kind),
        CellOut::text(clean(&h.source)),
        CellOut::text(clean(&h.instance)),
        rate_cell(h.in_rate),
        rate_cell(h.out_rate),
        rate_cell(h.drop_rate).tone(drop_tone),
        CellOut::num(h.dropped.map(|d| d as f64), opt_count(h.dropped)).tone(
            if h.dropped.unwrap_or(0) > 0 {
                Tone::Warn
            } else {
                Tone::Normal
            },
        ),
        CellOut::num(h.queue, format::opt_number(h.queue)),
        CellOut::num(h.consumers, format::opt_number(h.consumers)),
        CellOut::num(h.slow.map(|s| s as f64), opt_count(h.slow)).tone(
            if h.slow.unwrap_or(0) > 0 {
                Tone::Alert
            } else {
                Tone::Normal
            },
        ),
        CellOut::num(Some(age.as_secs_f64()), format::age(age)).tone(if stale {
            Tone::Dim
        } else {
            Tone::Normal
        }),
        CellOut::text(reasons),
    ];
    RowOut {
        key: format!("{}/{}/{}", h.kind, h.source, h.instance),
        cells,
        dim: stale,
        link: None,
    }
}

fn nodes_table(state: &State, wall: i64) -> Table {
    // Placements from the API: executor → (apps, instances).
    let mut placed: BTreeMap<String, (BTreeSet<&str>, u32)> = BTreeMap::new();
    for (guid, stats) in &state.meta.stats {
        for i in &stats.instances {
            if let Some(executor) = &i.executor_id
                && matches!(i.state, InstanceState::Running | InstanceState::Starting)
            {
                let e = placed.entry(executor.clone()).or_default();
                e.0.insert(guid.as_str());
                e.1 += 1;
            }
        }
    }
    let mut executors = state.components.nodes();
    for id in placed.keys() {
        if !executors.iter().any(|e| &e.id == id) {
            executors.push(ExecutorStats::unreported(id.clone(), true, 0));
        }
    }
    let rows: Vec<RowOut> = executors
        .iter()
        .map(|e| {
            const MIB: f64 = 1024.0 * 1024.0;
            let pct = match (e.memory_used, e.memory_capacity) {
                (Some(u), Some(c)) if c > 0.0 => Some(u * 100.0 / c),
                _ => None,
            };
            let apps = placed.get(&e.id).map(|(a, _)| a.len() as f64);
            let reported = e.last_ts > 0;
            let age_ns = wall.saturating_sub(e.last_ts).max(0);
            let age = Duration::from_nanos(age_ns.unsigned_abs());
            let stale = !reported || age_ns > STALE_NS;
            let gauge = |v: Option<f64>| CellOut::num(v, format::opt_number(v));
            let mem = |v: Option<f64>| {
                CellOut::num(
                    v,
                    v.map_or_else(|| NONE.to_owned(), |m| format::bytes(m * MIB)),
                )
            };
            // A cell's state as `hydrant cells` names it: silent past the stale mark is lost.
            let (cell_state, tone) = match (e.cell, e.evacuating) {
                (false, _) => (NONE, Tone::Normal),
                (true, _) if stale && reported => ("lost", Tone::Alert),
                (true, Some(v)) if v > 0.0 => ("evacuating", Tone::Warn),
                (true, _) => ("healthy", Tone::Normal),
            };
            let cells = vec![
                CellOut::text(clean(&e.id)),
                CellOut::text(cell_state.to_owned()).tone(tone),
                mem(e.memory_used),
                mem(e.memory_capacity),
                CellOut::num(pct, pct.map_or_else(|| NONE.to_owned(), format::percent))
                    .tone(pct.map_or(Tone::Normal, |p| threshold::above(p, threshold::MEMORY))),
                gauge(e.running),
                gauge(e.starting),
                gauge(e.crashed).tone(if e.crashed.unwrap_or(0.0) > 0.0 {
                    Tone::Warn
                } else {
                    Tone::Normal
                }),
                gauge(apps),
                rate_cell(e.log_rate),
                CellOut::num(e.starts.map(|n| n as f64), opt_count(e.starts)),
                CellOut::num(e.crashes.map(|n| n as f64), opt_count(e.crashes)),
                cert_cell(e.cert_expiry),
                if reported {
                    CellOut::num(Some(age.as_secs_f64()), format::age(age)).tone(if stale {
                        Tone::Dim
                    } else {
                        Tone::Normal
                    })
                } else {
                    CellOut::num(None, NONE)
                },
            ];
            RowOut {
                key: e.id.clone(),
                cells,
                dim: stale && reported,
                link: None,
            }
        })
        .collect();
    let empty_note = rows.is_empty().then(|| {
        "no executors seen yet: they report every few seconds (operator mode), and placements \
         come from the API"
            .to_owned()
    });
    Table { rows, empty_note }
}

/// Time left on a certificate: whole days (hours on its last day), or `expired`. Sorts by
/// days left.
fn cert_cell(seconds: Option<f64>) -> CellOut {
    let Some(secs) = seconds else {
        return CellOut::num(None, NONE);
    };
    let text = if secs <= 0.0 {
        "expired".to_owned()
    } else if secs < 86_400.0 {
        format!("{:.0}h", (secs / 3_600.0).floor())
    } else {
        format!("{:.0}d", (secs / 86_400.0).floor())
    };
    CellOut::num(Some(secs / 86_400.0), text).tone(threshold::cert(secs))
}

/// `secs` as a duration, saturating (a gauge is any finite number, some too large for one).
fn secs_duration(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX)
}

/// Header lines for certificates that expired (critical: peers refuse them now) and for those
/// under [`threshold::CERT_DAYS`], each naming the worst node and how many more there are.
fn cert_alerts(state: &State) -> Vec<(Level, String)> {
    let mut expired: Vec<(f64, String)> = Vec::new();
    let mut expiring: Vec<(f64, String)> = Vec::new();
    for node in state.components.nodes() {
        let Some(secs) = node.cert_expiry else {
            continue;
        };
        if secs <= 0.0 {
            expired.push((secs, node.id));
        } else if secs < threshold::CERT_DAYS * 86_400.0 {
            expiring.push((secs, node.id));
        }
    }
    let mut alerts = Vec::new();
    let more = |n: usize| {
        if n > 1 {
            format!(" and {} more", n - 1)
        } else {
            String::new()
        }
    };
    if let Some((secs, id)) = expired.iter().min_by(|a, b| a.0.total_cmp(&b.0)) {
        alerts.push((
            Level::Crit,
            format!(
                "TLS certificate of {}{} EXPIRED {} ago: renew it (CERT column, :nodes)",
                clean(id),
                more(expired.len()),
                format::age(secs_duration(-secs))
            ),
        ));
    }
    if let Some((secs, id)) = expiring.iter().min_by(|a, b| a.0.total_cmp(&b.0)) {
        let days = (secs / 86_400.0).floor();
        alerts.push((
            Level::Warn,
            format!(
                "TLS certificate of {}{} expires in {} (CERT column, :nodes)",
                clean(id),
                more(expiring.len()),
                if days >= 1.0 {
                    format!("{days:.0} day(s)")
                } else {
                    format::age(secs_duration(*secs))
                }
            ),
        ));
    }
    alerts
}

/// The level of an audit event type.
fn audit_level(event_type: &str) -> Level {
    if event_type.contains("crash") {
        Level::Warn
    } else {
        Level::Info
    }
}

/// A short, clean rendering of an audit event's data.
fn audit_detail(actor: &str, data: &serde_json::Value) -> String {
    let mut out = String::new();
    out.push_str(&clean(actor));
    let text = match data {
        serde_json::Value::Null => String::new(),
        serde_json::Value::Object(map) if map.is_empty() => String::new(),
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    };
    if !text.is_empty() {
        out.push_str(": ");
        let cut: String = text.chars().take(300).collect();
        out.push_str(&clean(&cut));
    }
    out
}

fn events_table(state: &State) -> Table {
    let mut rows = Vec::new();
    let row =
        |key: String, ts: i64, level: Level, source: &str, link, kind: &str, detail: &str| RowOut {
            key,
            cells: vec![
                CellOut::num(Some(ts as f64), hms(state, ts)),
                CellOut::text(level.as_str()).tone(level.tone()),
                CellOut::text(clean(source)),
                CellOut::text(clean(kind)),
                CellOut::text(clean(detail)),
            ],
            dim: false,
            link,
        };
    for e in &state.events {
        let link = state.find_app(&e.source);
        rows.push(row(
            format!("e{}", e.id),
            e.ts,
            e.level,
            state.display_name(&e.source),
            link,
            &e.kind,
            &e.detail,
        ));
    }
    let skip = state.meta.audit.len().saturating_sub(AUDIT_EVENTS);
    for a in state.meta.audit.iter().skip(skip) {
        let detail = audit_detail(&a.actor, &a.data);
        rows.push(row(
            format!("a{}", a.guid),
            a.created_at.saturating_mul(1_000_000_000),
            audit_level(&a.event_type),
            &a.target_name,
            Some(a.target_guid.clone()),
            &a.event_type,
            &detail,
        ));
    }
    for (guid, status) in &state.meta.slo_status {
        for s in &status.slos {
            for a in &s.alerts {
                let level = if a.severity == "page" {
                    Level::Crit
                } else {
                    Level::Alert
                };
                let detail = format!(
                    "{} {}% over {}d: {} ({}), budget {}% left",
                    s.name,
                    s.objective,
                    s.period_days,
                    a.severity,
                    a.rule,
                    format::percent(s.budget_remaining * 100.0)
                );
                rows.push(row(
                    format!("s{guid}/{}/{}", s.name, a.rule),
                    i64::try_from(a.since)
                        .unwrap_or(0)
                        .saturating_mul(1_000_000_000),
                    level,
                    state.display_name(guid),
                    Some(guid.clone()),
                    "SLO alert firing",
                    &detail,
                ));
            }
        }
    }
    let empty_note = rows.is_empty().then(|| "no events yet".to_owned());
    Table { rows, empty_note }
}

fn header(state: &State, now: Instant, wall: i64) -> Header {
    // Envelopes per second over the last five whole seconds, or as many as have passed since
    // the first live envelope.
    let sec = wall.div_euclid(1_000_000_000);
    let from = state
        .stream
        .per_sec
        .front()
        .map_or(sec, |(s, _)| *s)
        .max(sec - 5);
    let recent: u64 = state
        .stream
        .per_sec
        .iter()
        .filter(|(s, _)| (from..sec).contains(s))
        .map(|(_, n)| n)
        .sum();
    let seconds = (sec - from).max(1);
    let api_note = if state.meta.error.is_some() {
        state.meta.error.as_ref().map(|e| format!("API: {e}"))
    } else if !state.meta.seen {
        Some("API: loading".to_owned())
    } else {
        state
            .meta
            .last_ok
            .map(|t| now.saturating_duration_since(t))
            .filter(|d| *d > Duration::from_secs(20))
            .map(|d| format!("API: no answer for {}", format::age(d)))
    };
    let mut alerts = Vec::new();
    let short = state
        .meta
        .apps
        .keys()
        .filter(|guid| {
            let (r, d) = instance_counts(state, guid);
            matches!((r, d), (Some(r), Some(d)) if r < d)
        })
        .count();
    if short > 0 {
        alerts.push((
            Level::Alert,
            format!("{short} app(s) not in the desired state (INST column)"),
        ));
    }
    for guid in app_ids(state) {
        for (slo, severity) in slo_firing(state, &guid, wall) {
            let level = if severity == "page" {
                Level::Crit
            } else {
                Level::Alert
            };
            alerts.push((
                level,
                format!(
                    "SLO {} of {} firing ({})",
                    clean(&slo),
                    clean(state.display_name(&guid)),
                    clean(&severity)
                ),
            ));
        }
    }
    let crashes: u64 = state
        .windows()
        .apps()
        .map(|w| w.crashes(CRASH_WINDOW, now))
        .sum();
    if crashes > 0 {
        alerts.push((
            Level::Warn,
            format!("{crashes} crash(es) in the last 5 minutes (CRSH column)"),
        ));
    }
    alerts.extend(super::service_rows::alerts(state, wall));
    let (connected, wanted) = (state.stream.connected, state.stream.wanted);
    if wanted > 0 && connected < wanted {
        alerts.push((
            Level::Alert,
            format!(
                "{} of {wanted} stream(s) disconnected: data shown may be stale",
                wanted - connected
            ),
        ));
    }
    if state.stream.lost > 0 && wall - state.stream.last_gap_ns < 60_000_000_000 {
        alerts.push((
            Level::Warn,
            format!(
                "{} envelopes lost on the way here (:events shows where)",
                state.stream.lost
            ),
        ));
    }
    if state.stream.ui_dropped > 0 && wall - state.stream.last_ui_drop_ns < 60_000_000_000 {
        alerts.push((
            Level::Warn,
            format!(
                "the screen fell behind: {} envelopes dropped",
                state.stream.ui_dropped
            ),
        ));
    }
    alerts.extend(cert_alerts(state));
    alerts.sort_by_key(|a| std::cmp::Reverse(a.0));
    Header {
        mode: state.mode().to_owned(),
        target: clean(state.target()).into_owned(),
        streams: (connected, wanted),
        envelopes_per_second: recent as f64 / seconds as f64,
        lost: state.stream.lost,
        ui_dropped: state.stream.ui_dropped,
        api_note,
        wall_ns: wall,
        time: hms(state, wall),
        alerts,
    }
}

fn detail(state: &State, guid: &str, now: Instant, wall: i64) -> AppDetail {
    let app = state.meta.apps.get(guid);
    let w = state.windows().app(guid);
    let name = clean(app.map_or(guid, |a| a.name.as_str())).into_owned();
    let (running, desired) = instance_counts(state, guid);
    let short = app.is_some_and(|a| a.state == AppState::Started)
        && matches!((running, desired), (Some(r), Some(d)) if r < d);
    let mut summary = String::new();
    if let Some(a) = app {
        summary.push_str(a.state.as_str());
        summary.push_str(&format!(
            " · {}/{} running · space {} · {} MiB each",
            running.map_or_else(|| "?".to_owned(), |r| r.to_string()),
            desired.map_or_else(|| "?".to_owned(), |d| d.to_string()),
            clean(&a.space_name),
            a.memory_mb
        ));
        if !a.routes.is_empty() {
            summary.push_str(" · routes ");
            summary.push_str(&clean(&a.routes.join(" ")));
        }
    } else {
        summary.push_str("not listed by the API");
    }
    summary.push_str(" · guid ");
    summary.push_str(&clean(guid));

    // Instances: the API's indices and whatever the stream reports.
    let stats = state.meta.stats.get(guid);
    let mut indices: BTreeSet<u64> = BTreeSet::new();
    let mut extra: BTreeSet<String> = BTreeSet::new();
    if let Some(s) = stats {
        indices.extend(s.instances.iter().map(|i| u64::from(i.index)));
    }
    if let Some(w) = w {
        for i in w.instances() {
            match i.id().parse::<u64>() {
                Ok(n) => {
                    indices.insert(n);
                }
                Err(_) => {
                    extra.insert(i.id().to_owned());
                }
            }
        }
    }
    let ids: Vec<String> = indices.iter().map(u64::to_string).chain(extra).collect();
    let mut rows = Vec::new();
    for id in ids {
        let info = stats.and_then(|s| s.instances.iter().find(|i| i.index.to_string() == id));
        let iw = w.and_then(|w| w.instance(&id));
        let gauge = |n: &str| {
            iw.and_then(|i| i.gauge(n, GAUGE_WINDOW, now))
                .map(|g| g.last)
        };
        let (cpu, mem, quota, age_ns) = (
            gauge("cpu"),
            gauge("memory"),
            gauge("memory_quota"),
            gauge("container_age"),
        );
        let pct = match (mem, quota) {
            (Some(m), Some(q)) if q > 0.0 => Some(m * 100.0 / q),
            _ => None,
        };
        let (disk, disk_quota, pids, pids_limit, shares) = (
            gauge("disk"),
            gauge("disk_quota"),
            gauge("pids"),
            gauge("pids_limit"),
            gauge("cpu_shares"),
        );
        let disk_pct = match (disk, disk_quota) {
            (Some(d), Some(q)) if q > 0.0 => Some(d * 100.0 / q),
            _ => None,
        };
        // The executor reports the kernel's limits with every sample of a contained instance;
        // a sample with pids but no limits is an unisolated one.
        let unisolated = pids.is_some() && pids_limit.is_none();
        let limit_cell = |value: Option<f64>| {
            let text = match value {
                Some(v) => format::number(v),
                None if unisolated => "none".to_owned(),
                None => NONE.to_owned(),
            };
            let cell = CellOut::num(value, text);
            if unisolated {
                cell.tone(Tone::Warn)
            } else {
                cell
            }
        };
        let state_text = info.map_or("?", |i| instance_state(i.state));
        let state_tone = match info.map(|i| i.state) {
            Some(InstanceState::Crashed) => Tone::Alert,
            Some(InstanceState::Starting | InstanceState::Stopping) => Tone::Warn,
            Some(InstanceState::Down) => Tone::Dim,
            _ => Tone::Normal,
        };
        let uptime = age_ns
            .map(|ns| Duration::from_nanos(ns.max(0.0) as u64))
            .or_else(|| {
                info.filter(|i| i.since > 0).map(|i| {
                    Duration::from_nanos(wall.saturating_sub(i.since).max(0).unsigned_abs())
                })
            });
        let crash = info
            .and_then(|i| i.crash.as_ref())
            .map(|c| {
                format!(
                    "{} {}",
                    hms(state, c.crash_timestamp),
                    clean(&c.exit_description)
                )
            })
            .unwrap_or_else(|| NONE.to_owned());
        let errors = iw.map(|i| i.server_errors(MINUTE, now));
        let cells = vec![
            CellOut::text(clean(&id)),
            CellOut::text(state_text).tone(state_tone),
            CellOut::num(cpu, cpu.map_or_else(|| NONE.to_owned(), format::percent))
                .tone(cpu.map_or(Tone::Normal, |c| threshold::above(c, threshold::CPU))),
            CellOut::num(mem, mem.map_or_else(|| NONE.to_owned(), format::bytes)),
            CellOut::num(pct, pct.map_or_else(|| NONE.to_owned(), format::percent))
                .tone(pct.map_or(Tone::Normal, |p| threshold::above(p, threshold::MEMORY))),
            CellOut::num(quota, quota.map_or_else(|| NONE.to_owned(), format::bytes)),
            CellOut::num(disk, disk.map_or_else(|| NONE.to_owned(), format::bytes)),
            CellOut::num(
                disk_pct,
                disk_pct.map_or_else(|| NONE.to_owned(), format::percent),
            )
            .tone(disk_pct.map_or(Tone::Normal, |p| threshold::above(p, threshold::MEMORY))),
            CellOut::num(pids, pids.map_or_else(|| NONE.to_owned(), format::number)),
            limit_cell(pids_limit),
            limit_cell(shares),
            rate_cell(iw.map(|i| i.requests(TEN, now).per_second)),
            CellOut::num(errors.map(|e| e as f64), opt_count(errors)),
            rate_cell(iw.map(|i| i.logs(TEN, now).lines.per_second)),
            CellOut::num(
                uptime.map(|d| d.as_secs_f64()),
                uptime.map_or_else(|| NONE.to_owned(), format::age),
            ),
            CellOut::text(clean(
                info.and_then(|i| i.executor_id.as_deref()).unwrap_or(NONE),
            )),
            CellOut::text(crash),
        ];
        rows.push(RowOut {
            key: id,
            cells,
            dim: false,
            link: None,
        });
    }

    // Sparklines: the last SPARK_SECS whole seconds, oldest first.
    let sec = wall.div_euclid(1_000_000_000);
    let ring = state.sparks.get(guid);
    let mut requests = Vec::with_capacity(SPARK_SECS);
    let mut latency = Vec::with_capacity(SPARK_SECS);
    for s in (sec - SPARK_SECS as i64 + 1)..=sec {
        let slot = ring.and_then(|r| r.iter().find(|x| x.sec == s));
        requests.push(slot.map_or(0, |x| u64::from(x.requests)));
        latency.push(slot.map_or(0, |x| {
            if x.latency_n == 0 {
                0
            } else {
                x.latency_sum_us / u64::from(x.latency_n)
            }
        }));
    }
    let rate = |window| w.map(|w| w.requests(window, now).per_second);
    let classes = w.map(|w| w.status_classes(MINUTE, now)).unwrap_or_default();
    let requests_title = format!(
        "requests/s {} now · {}/10s · {}/60s · 60s: 2xx {} 3xx {} 4xx {} 5xx {}",
        format::opt_number(rate(SEC)),
        format::opt_number(rate(TEN)),
        format::opt_number(rate(MINUTE)),
        classes.app[2] + classes.router[2],
        classes.app[3] + classes.router[3],
        classes.app[4] + classes.router[4],
        classes.app[5] + classes.router[5],
    );
    let lat = w.and_then(|w| w.latency(TEN, now));
    let latency_title = format!(
        "latency (mean per second) · 10s: p50 {} p95 {} p99 {}",
        format::opt_latency(lat.map(|l| l.p50)),
        format::opt_latency(lat.map(|l| l.p95)),
        format::opt_latency(lat.map(|l| l.p99)),
    );

    AppDetail {
        guid: guid.to_owned(),
        name,
        summary,
        summary_tone: if short { Tone::Alert } else { Tone::Normal },
        instances: Table {
            empty_note: rows.is_empty().then(|| "no instances".to_owned()),
            rows,
        },
        requests,
        latency,
        requests_title,
        latency_title,
        status: status_notes(state, guid, wall),
        events: app_events(state, guid),
        logs: app_logs(state, guid),
    }
}

fn instance_state(s: InstanceState) -> &'static str {
    match s {
        InstanceState::Starting => "STARTING",
        InstanceState::Running => "RUNNING",
        InstanceState::Crashed => "CRASHED",
        InstanceState::Stopping => "STOPPING",
        InstanceState::Down => "DOWN",
    }
}

/// The autoscaler and SLO lines of the detail screen.
fn status_notes(state: &State, guid: &str, wall: i64) -> Vec<Note> {
    let mut notes = Vec::new();
    let note = |text: String, tone| Note { text, tone };
    match state.meta.policies.get(guid) {
        Some(p) => {
            let rules: Vec<String> = p
                .scaling_rules
                .iter()
                .map(|r| {
                    format!(
                        "{} {} {} → {}",
                        r.metric_type, r.operator, r.threshold, r.adjustment
                    )
                })
                .collect();
            let text = format!(
                "autoscaler: {}..{} instances{}{}",
                p.instance_min_count,
                p.instance_max_count,
                if rules.is_empty() { "" } else { " · " },
                rules.join("; ")
            );
            notes.push(note(clean(&text).into_owned(), Tone::Normal));
        }
        None => notes.push(note("autoscaler: no policy".to_owned(), Tone::Dim)),
    }
    let last_decision = state
        .autoscaler_notes
        .get(guid)
        .map(|(ts, text)| (*ts, text.clone()))
        .or_else(|| {
            state
                .meta
                .audit
                .iter()
                .rev()
                .find(|a| a.target_guid == guid && a.event_type == "audit.app.autoscale")
                .map(|a| {
                    let reason = a
                        .data
                        .get("reason")
                        .and_then(|r| r.as_str())
                        .unwrap_or_default();
                    (
                        a.created_at.saturating_mul(1_000_000_000),
                        clean(reason).into_owned(),
                    )
                })
        });
    if let Some((ts, text)) = last_decision {
        notes.push(note(
            format!("  last decision {}: {text}", hms(state, ts)),
            Tone::Normal,
        ));
    }

    let spec = state.meta.slos.get(guid);
    let status = state.meta.slo_status.get(guid);
    let live = state.slo_live.get(guid);
    let mut names: BTreeSet<String> = BTreeSet::new();
    if let Some(s) = spec {
        names.extend(s.slos.iter().map(|x| x.name.clone()));
    }
    if let Some(s) = status {
        names.extend(s.slos.iter().map(|x| x.name.clone()));
    }
    if let Some(l) = live {
        names.extend(l.keys().map(ToString::to_string));
    }
    if names.is_empty() {
        notes.push(note("SLOs: none set".to_owned(), Tone::Dim));
    }
    for name in names {
        let st = status.and_then(|s| s.slos.iter().find(|x| x.name == name));
        let sp = spec.and_then(|s| s.slos.iter().find(|x| x.name == name));
        let lv = live
            .and_then(|l| l.get(name.as_str()))
            .filter(|g| wall - g.ts < SLO_FRESH_NS);
        let budget = lv.and_then(|g| g.budget).or(st.map(|s| s.budget_remaining));
        let objective = st
            .map(|s| (s.objective, s.period_days, s.sli_kind.clone()))
            .or(sp.map(|s| (s.objective, s.period_days, s.sli.kind().to_owned())));
        let mut text = format!("SLO {name}");
        if let Some((o, days, kind)) = &objective {
            text.push_str(&format!(" ({kind} {o}% over {days}d)"));
        }
        match budget {
            Some(b) => text.push_str(&format!(": budget {}% left", format::percent(b * 100.0))),
            None => text.push_str(": no status yet"),
        }
        if let Some(s) = st {
            let burns: Vec<String> = s
                .burn_rates
                .iter()
                .filter_map(|b| b.rate.map(|r| format!("{} {:.1}x", b.window, r)))
                .take(3)
                .collect();
            if !burns.is_empty() {
                text.push_str(" · burn ");
                text.push_str(&burns.join(" "));
            }
            for a in &s.alerts {
                text.push_str(&format!(
                    " · {} FIRING ({})",
                    a.severity.to_uppercase(),
                    a.rule
                ));
            }
        } else if lv.and_then(|g| g.firing).is_some_and(|n| n > 0.0) {
            text.push_str(" · alert FIRING");
        }
        let firing = text.contains("FIRING");
        let tone = if firing {
            Tone::Alert
        } else {
            budget.map_or(Tone::Normal, threshold::budget)
        };
        notes.push(note(clean(&text).into_owned(), tone));
    }
    notes
}

/// This app's events, newest first: live notices and audit events.
fn app_events(state: &State, guid: &str) -> Vec<Note> {
    let mut all: Vec<(i64, Level, String)> = Vec::new();
    for e in state.events.iter().filter(|e| &*e.source == guid) {
        // Notices often start with their own kind (`SLO availability ...`): say it once.
        let text = if e.detail.starts_with(&*e.kind) {
            e.detail.clone()
        } else {
            format!("{} {}", clean(&e.kind), e.detail)
        };
        all.push((e.ts, e.level, text));
    }
    for a in state.meta.audit.iter().filter(|a| a.target_guid == guid) {
        all.push((
            a.created_at.saturating_mul(1_000_000_000),
            audit_level(&a.event_type),
            format!(
                "{} {}",
                clean(&a.event_type),
                audit_detail(&a.actor, &a.data)
            ),
        ));
    }
    all.sort_by_key(|a| std::cmp::Reverse(a.0));
    all.into_iter()
        .take(DETAIL_EVENTS)
        .map(|(ts, level, text)| Note {
            text: format!("{} {text}", hms(state, ts)),
            tone: level.tone(),
        })
        .collect()
}

/// The newest log lines of an app, oldest first, `cf logs`-like and clean.
pub(super) fn app_logs(state: &State, guid: &str) -> Vec<LogOut> {
    let Some(ring) = state.logs.get(guid) else {
        return Vec::new();
    };
    let tz = state.config().tz;
    let skip = ring.len().saturating_sub(DETAIL_LOGS);
    ring.iter()
        .skip(skip)
        .map(|l| {
            let mut text = hms_cs(tz, l.ts);
            text.push_str(" [");
            text.push_str(&clean(if l.source_type.is_empty() {
                "?"
            } else {
                &l.source_type
            }));
            if !l.instance.is_empty() {
                text.push('/');
                text.push_str(&clean(&l.instance));
            }
            text.push_str(if l.err { "] ERR " } else { "] OUT " });
            let end = l
                .payload
                .iter()
                .rposition(|b| *b != b'\n' && *b != b'\r')
                .map_or(0, |i| i + 1);
            text.push_str(&format::clean_bytes(&l.payload[..end]));
            if l.truncated {
                text.push_str(" …");
            }
            LogOut { text, err: l.err }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::threshold;
    use crate::view::Tone;

    #[test]
    fn thresholds_colour_at_their_edges() {
        assert_eq!(threshold::above(79.9, threshold::CPU), Tone::Normal);
        assert_eq!(threshold::above(80.0, threshold::CPU), Tone::Warn);
        assert_eq!(threshold::above(90.0, threshold::CPU), Tone::Alert);
        assert_eq!(threshold::budget(0.6), Tone::Normal);
        assert_eq!(threshold::budget(0.4), Tone::Warn);
        assert_eq!(threshold::budget(-0.1), Tone::Alert);
    }
}
