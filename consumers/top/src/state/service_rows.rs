//! Builds the services table and the service screen from the state at one instant.
//!
//! Flow: `tables::build` → [`table`] (one row per instance the API lists or whose broker
//! reports) and, when the service screen is open, [`detail`] → the view.
//!
//! Invariants: names, tags, descriptions and log payloads pass through
//! [`crate::format::clean`] before they reach a cell; a gauge older than [`STALE_NS`] is shown
//! dim, and a missing one as `-`.

use std::collections::BTreeSet;
use std::time::Duration;

use hydrant_api::services::{ServiceInstance, ServiceInstanceType};
use hydrant_firehose_client::render::format_timestamp;

use super::State;
use super::services::{LiveService, UP};
use super::tables::threshold;
use crate::format::{self, NONE, clean};
use crate::services::ServiceDetail;
use crate::view::{CellOut, Level, Note, RowOut, Table, Tone};

/// A broker reports every 10 s: a report older than this is stale.
pub(crate) const STALE_NS: i64 = 30_000_000_000;

/// The services table.
pub(super) fn table(state: &State, wall: i64) -> Table {
    let services = &state.services;
    let ids: BTreeSet<&str> = services
        .listed
        .keys()
        .map(String::as_str)
        .chain(services.live.keys().map(|k| &**k))
        .collect();
    let rows: Vec<RowOut> = ids
        .into_iter()
        .map(|id| row(id, services.listed.get(id), services.live.get(id), wall))
        .collect();
    let empty_note = rows.is_empty().then(|| {
        if services.seen {
            "no service instances: `hydrant marketplace` lists offerings, `hydrant \
             create-service OFFERING PLAN NAME` makes one"
                .to_owned()
        } else {
            "waiting for the API and the brokers' reports...".to_owned()
        }
    });
    Table { rows, empty_note }
}

/// The STATE cell: `create succeeded`, toned by the operation's state.
fn operation(listed: Option<&ServiceInstance>) -> CellOut {
    let Some(i) = listed else {
        return CellOut::text("?").tone(Tone::Dim);
    };
    let op = &i.last_operation;
    let tone = match op.state.as_str() {
        "failed" => Tone::Alert,
        "in progress" | "initial" => Tone::Warn,
        _ => Tone::Normal,
    };
    CellOut::text(clean(&format!("{} {}", op.kind, op.state)).into_owned()).tone(tone)
}

/// Whether a live report says the node is up: `Some(true)`, `Some(false)`, or `None` when
/// there is no `service.up` at all.
fn up(live: Option<&LiveService>) -> Option<bool> {
    live.and_then(|l| l.get(UP)).map(|v| v >= 0.5)
}

fn pct(used: Option<f64>, quota: Option<f64>) -> Option<f64> {
    match (used, quota) {
        (Some(u), Some(q)) if q > 0.0 => Some(u * 100.0 / q),
        _ => None,
    }
}

fn pct_cell(p: Option<f64>) -> CellOut {
    CellOut::num(p, p.map_or_else(|| NONE.to_owned(), format::percent))
        .tone(p.map_or(Tone::Normal, |p| threshold::above(p, threshold::MEMORY)))
}

fn bytes_cell(v: Option<f64>) -> CellOut {
    CellOut::num(v, v.map_or_else(|| NONE.to_owned(), format::bytes))
}

fn row(
    id: &str,
    listed: Option<&ServiceInstance>,
    live: Option<&LiveService>,
    wall: i64,
) -> RowOut {
    let name = clean(listed.map_or(id, |i| i.name.as_str())).into_owned();
    let offering = match listed {
        Some(i) if i.kind == ServiceInstanceType::UserProvided => "user-provided".to_owned(),
        Some(i) => clean(i.offering.as_deref().unwrap_or(NONE)).into_owned(),
        None => clean(live.map_or(NONE, |l| &*l.offering)).into_owned(),
    };
    let plan = match listed.and_then(|i| i.plan.as_deref()) {
        Some(p) => clean(p).into_owned(),
        None => clean(live.map_or(NONE, |l| &*l.plan)).into_owned(),
    };
    let space = clean(listed.map_or(NONE, |i| i.space_name.as_str())).into_owned();
    let age_ns = live.map(|l| wall.saturating_sub(l.ts).max(0));
    let stale = age_ns.is_some_and(|a| a > STALE_NS);
    let up_cell = match (up(live), stale) {
        (None, _) => CellOut::text(NONE),
        (Some(_), true) => CellOut::text("?").tone(Tone::Dim),
        (Some(true), false) => CellOut::text("up"),
        (Some(false), false) => CellOut::text("DOWN").tone(Tone::Alert),
    };
    let metric = |n: &str| live.and_then(|l| l.get(n));
    let mem = metric("service.memory_bytes");
    let disk = metric("service.storage_bytes");
    let down = live.map(|l| l.down_reports);
    let described = listed
        .and_then(|i| i.last_operation.description.as_deref())
        .unwrap_or(NONE);
    let cells = vec![
        CellOut::text(name),
        CellOut::text(offering),
        CellOut::text(plan),
        CellOut::text(space),
        operation(listed),
        up_cell,
        CellOut::num(
            metric("service.connections"),
            format::opt_number(metric("service.connections")),
        ),
        CellOut::num(
            metric("service.ops_per_second"),
            format::opt_number(metric("service.ops_per_second")),
        ),
        bytes_cell(mem),
        pct_cell(pct(mem, metric("service.memory_quota_bytes"))),
        bytes_cell(disk),
        pct_cell(pct(disk, metric("service.storage_quota_bytes"))),
        CellOut::num(
            metric("service.queue_depth"),
            format::opt_number(metric("service.queue_depth")),
        ),
        CellOut::num(
            down.map(|d| d as f64),
            down.map_or_else(|| NONE.to_owned(), format::count),
        )
        .tone(if down.unwrap_or(0) > 0 {
            Tone::Warn
        } else {
            Tone::Normal
        }),
        age_cell(age_ns, stale),
        CellOut::text(clean(described).into_owned()),
    ];
    RowOut {
        key: id.to_owned(),
        cells,
        dim: stale,
        link: None,
    }
}

fn age_cell(age_ns: Option<i64>, stale: bool) -> CellOut {
    let age = age_ns.map(|a| Duration::from_nanos(a.unsigned_abs()));
    CellOut::num(
        age.map(|a| a.as_secs_f64()),
        age.map_or_else(|| NONE.to_owned(), format::age),
    )
    .tone(if stale { Tone::Dim } else { Tone::Normal })
}

/// HH:MM:SS of `ns` in the state's zone.
fn hms(state: &State, ns: i64) -> String {
    let mut s = String::with_capacity(28);
    format_timestamp(ns, state.config().tz, &mut s);
    s.get(11..19).unwrap_or(NONE).to_owned()
}

/// The service screen of instance `guid`.
pub(super) fn detail(state: &State, guid: &str, wall: i64) -> ServiceDetail {
    let listed = state.services.listed.get(guid);
    let live = state.services.live.get(guid);
    let name = clean(listed.map_or(guid, |i| i.name.as_str())).into_owned();
    let mut parts: Vec<String> = Vec::new();
    let mut tone = Tone::Normal;
    match listed {
        Some(i) => {
            let offering = match i.kind {
                ServiceInstanceType::UserProvided => "user-provided",
                ServiceInstanceType::Managed => i.offering.as_deref().unwrap_or("?"),
            };
            let plan = i.plan.as_deref().unwrap_or("");
            parts.push(format!("{offering} {plan}").trim_end().to_owned());
            parts.push(format!("space {}", i.space_name));
            let op = &i.last_operation;
            parts.push(format!("{} {}", op.kind, op.state));
            if op.state == "failed" {
                tone = Tone::Alert;
            }
            if !i.bound_apps.is_empty() {
                parts.push(format!("bound to {}", i.bound_apps.join(", ")));
            }
        }
        None => {
            if let Some(l) = live {
                parts.push(format!("{} {}", l.offering, l.plan));
            }
            parts.push("not listed by the API".to_owned());
        }
    }
    parts.push(format!("guid {guid}"));
    let summary = clean(&parts.join(" · ")).into_owned();

    let mut gauges = Vec::new();
    let note = |text: String, tone| Note { text, tone };
    if let Some(description) = listed.and_then(|i| i.last_operation.description.as_deref()) {
        gauges.push(note(
            format!("last operation: {}", clean(description)),
            tone,
        ));
    }
    match live {
        None => gauges.push(note(
            "no reports from its broker yet (brokers report every 10 s; a user-provided \
             service has none)"
                .to_owned(),
            Tone::Dim,
        )),
        Some(l) => {
            let age_ns = wall.saturating_sub(l.ts).max(0);
            let stale = age_ns > STALE_NS;
            let when = format!(
                "reported {} ago, at {}",
                format::age(Duration::from_nanos(age_ns.unsigned_abs())),
                hms(state, l.ts)
            );
            let (up_text, up_tone) = match (up(Some(l)), stale) {
                (_, true) => (format!("node: no recent report ({when})"), Tone::Dim),
                (Some(false), false) => (
                    format!("node: DOWN — its broker could not reach it ({when})"),
                    Tone::Alert,
                ),
                (_, false) => (format!("node: up ({when})"), Tone::Normal),
            };
            if up_tone == Tone::Alert {
                tone = Tone::Alert;
            }
            gauges.push(note(up_text, up_tone));
            if l.down_reports > 0 {
                let last = l.last_down.map(|t| hms(state, t)).unwrap_or_default();
                gauges.push(note(
                    format!(
                        "node down in {} report(s) since the console started, last at {last}",
                        l.down_reports
                    ),
                    Tone::Warn,
                ));
            }
            for (metric, (value, _)) in &l.metrics {
                if &**metric == UP {
                    continue;
                }
                let short = metric
                    .strip_prefix(super::services::PREFIX)
                    .unwrap_or(metric);
                let shown = if short.ends_with("bytes") {
                    format::bytes(*value)
                } else {
                    format::number(*value)
                };
                gauges.push(note(format!("{:<22} {shown}", clean(short)), Tone::Normal));
            }
        }
    }
    ServiceDetail {
        guid: guid.to_owned(),
        name,
        summary,
        summary_tone: tone,
        gauges,
        logs: super::tables::app_logs(state, guid),
    }
}

/// The header's alerts about services: nodes their brokers cannot reach, failed operations.
pub(super) fn alerts(state: &State, wall: i64) -> Vec<(Level, String)> {
    let services = &state.services;
    let down = services
        .live
        .values()
        .filter(|l| wall.saturating_sub(l.ts) <= STALE_NS && up(Some(l)) == Some(false))
        .count();
    let failed = services
        .listed
        .values()
        .filter(|i| i.last_operation.state == "failed")
        .count();
    let mut out = Vec::new();
    if down > 0 {
        out.push((
            Level::Alert,
            format!("{down} service node(s) down (:services, UP column)"),
        ));
    }
    if failed > 0 {
        out.push((
            Level::Warn,
            format!("{failed} service instance(s) whose last operation failed (:services)"),
        ));
    }
    out
}
