//! Every screen of `hydrant top` drawn from recorded state into ratatui's `TestBackend`, the
//! keys that move between them, and the property that no payload byte reaches a cell raw.
//!
//! The recorded state is a minute of a small platform: a busy app over its error and latency
//! thresholds, an app short of instances, a stopped app, the pipeline's own counters (with drops
//! and a slow consumer), an executor near capacity, audit events and SLO notices. Time is pinned
//! (the state's clock is given, times are shown in UTC), so every number on screen is exact.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

#[allow(dead_code, reason = "shared by the screen tests; each uses a part")]
#[path = "support/screen.rs"]
mod screen_rig;

use std::time::{Duration, Instant};

use bytes::Bytes;
use hydrant_api::policy::{ScalingPolicy, ScalingRule};
use hydrant_api::slo::{AppSlos, Sli, Slo};
use hydrant_api::{
    App, AppState, AuditEvent, HealthCheckType, InstanceInfo, InstanceState, ProcessStats,
};
use hydrant_envelope::v2;
use hydrant_firehose_client::Batch;
use hydrant_testkit::envelopes::{self, envelope};
use hydrant_top::view::{Screen, TableKind};
use hydrant_top::{ApiSnapshot, Feed, State};
use proptest::prelude::*;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::style::Color;
use screen_rig::*;

const DEMO: &str = "g-demo";
const API: &str = "g-api";
const IDLE: &str = "g-idle";

fn timer(app: &str, instance: &str, status: &str, latency_ms: i64, ts: i64) -> v2::Envelope {
    let tags = [("peer_type", "Client"), ("status_code", status)];
    let http = envelopes::timer("http", ts - latency_ms * 1_000_000, ts);
    envelope(ts, app, instance, &tags, http)
}

fn log(app: &str, instance: &str, source_type: &str, payload: &[u8], ts: i64) -> v2::Envelope {
    let line = v2::envelope::Message::Log(v2::Log {
        payload: Bytes::copy_from_slice(payload),
        r#type: 0,
    });
    envelope(ts, app, instance, &[("source_type", source_type)], line)
}

fn gauge(source: &str, instance: &str, metrics: &[(&str, f64, &str)], ts: i64) -> v2::Envelope {
    gauge_tagged(source, instance, metrics, &[], ts)
}

fn gauge_tagged(
    source: &str,
    instance: &str,
    metrics: &[(&str, f64, &str)],
    tag: &[(&str, &str)],
    ts: i64,
) -> v2::Envelope {
    envelope(ts, source, instance, tag, envelopes::gauge(metrics))
}

fn counter(source: &str, name: &str, total: u64, tag: &[(&str, &str)], ts: i64) -> v2::Envelope {
    counter_of(source, "0", name, total, tag, ts)
}

fn counter_of(
    source: &str,
    instance: &str,
    name: &str,
    total: u64,
    tag: &[(&str, &str)],
    ts: i64,
) -> v2::Envelope {
    envelope(
        ts,
        source,
        instance,
        tag,
        envelopes::counter(name, 0, total),
    )
}

fn event(app: &str, instance: &str, title: &str, body: &str, ts: i64) -> v2::Envelope {
    let crash = v2::envelope::Message::Event(v2::Event {
        title: title.to_owned(),
        body: body.to_owned(),
    });
    envelope(ts, app, instance, &[("reason", "CRASHED")], crash)
}

fn app(guid: &str, name: &str, state: AppState, instances: u32) -> App {
    App {
        guid: guid.to_owned(),
        name: name.to_owned(),
        space_guid: "s".to_owned(),
        space_name: "default".to_owned(),
        state,
        instances,
        memory_mb: 64,
        disk_mb: 1024,
        command: None,
        env: std::collections::BTreeMap::new(),
        health_check_type: HealthCheckType::Port,
        health_check_endpoint: None,
        stop_timeout_secs: 10,
        current_droplet_guid: None,
        routes: vec![format!("{name}.apps.localhost")],
        created_at: 0,
        updated_at: 0,
    }
}

fn instance(index: u32, state: InstanceState) -> InstanceInfo {
    InstanceInfo {
        index,
        state,
        instance_guid: Some(format!("i-{index}")),
        executor_id: Some("exec-1".to_owned()),
        host: None,
        port: None,
        since: WALL - 600 * SEC,
        placement_error: None,
        crash: None,
    }
}

/// A minute of a small platform, as the log cache would hand it over.
fn history() -> Vec<v2::Envelope> {
    let mut out = Vec::new();
    // demo: 10 requests a second for 65 s; every 100 requests: 90 × 200, 4 × 404, 6 × 500;
    // 2 of every 100 take 600 ms, the rest 20 ms.
    for n in 0..650 {
        let tenth = n;
        let ts = WALL - 65 * SEC + tenth * SEC / 10;
        let status = match n % 100 {
            0..=89 => "200",
            90..=93 => "404",
            _ => "500",
        };
        let latency = if n % 50 == 0 { 600 } else { 20 };
        out.push(timer(DEMO, &(n % 2).to_string(), status, latency, ts));
    }
    for s in (0..60).step_by(5) {
        let ts = WALL - 60 * SEC + i64::from(s) * SEC;
        for (i, cpu) in [("0", 50.0), ("1", 45.0)] {
            let mut metrics = vec![
                ("cpu", cpu, "percentage"),
                ("memory", 60.0 * 1024.0 * 1024.0, "bytes"),
                ("memory_quota", 64.0 * 1024.0 * 1024.0, "bytes"),
                ("container_age", 600.0 * 1e9, "nanoseconds"),
                ("disk", 12.0 * 1024.0 * 1024.0, "bytes"),
                ("disk_quota", 1024.0 * 1024.0 * 1024.0, "bytes"),
                ("pids", 7.0, "count"),
            ];
            // Instance 0 is contained (the kernel's limits come with each sample); instance 1
            // runs unisolated, with none.
            if i == "0" {
                metrics.push(("pids_limit", 2048.0, "count"));
                metrics.push(("cpu_shares", 10.0, "shares"));
            }
            out.push(gauge(DEMO, i, &metrics, ts));
        }
        out.push(gauge(API, "0", &[("cpu", 5.0, "percentage")], ts));
    }
    out.push(log(
        DEMO,
        "0",
        "APP/PROC/WEB",
        b"GET / 200 in 20ms",
        WALL - 3 * SEC,
    ));
    out.push(log(
        DEMO,
        "1",
        "APP/PROC/WEB",
        b"evil \x1b[2J\x1b]0;owned\x07 payload\r\n",
        WALL - 2 * SEC,
    ));
    out.push(event(
        API,
        "2",
        "app.crash",
        "exited with status 1",
        WALL - 30 * SEC,
    ));
    out.push(log(
        DEMO,
        "",
        "SLO",
        b"SLO availability (availability 99.9%): PAGE FIRING",
        WALL - 10 * SEC,
    ));
    out.push(gauge_tagged(
        DEMO,
        "",
        &[
            ("slo.availability.budget_remaining", 0.4, "ratio"),
            ("slo.availability.alerts_firing", 1.0, "count"),
        ],
        &[("slo", "availability")],
        WALL - 5 * SEC,
    ));
    // The pipeline's own counters: two reports 5 s apart.
    for (k, ts) in [(0u64, WALL - 10 * SEC), (1, WALL - 5 * SEC)] {
        out.push(counter(
            "agent",
            "agent.ingress",
            10_000 + k * 5_000,
            &[],
            ts,
        ));
        out.push(counter(
            "agent",
            "agent.egress",
            9_000 + k * 4_750,
            &[("doppler", "http://127.0.0.1:1")],
            ts,
        ));
        out.push(counter(
            "agent",
            "agent.dropped",
            100 + k * 250,
            &[("reason", "egress_queue_full")],
            ts,
        ));
        out.push(counter(
            "doppler",
            "doppler.ingress",
            20_000 + k * 4_750,
            &[],
            ts,
        ));
        out.push(counter(
            "doppler",
            "doppler.egress",
            19_000 + k * 4_750,
            &[],
            ts,
        ));
        out.push(counter(
            "trafficcontroller",
            "trafficcontroller.ingress",
            5_000 + k * 4_750,
            &[],
            ts,
        ));
        out.push(counter(
            "trafficcontroller",
            "trafficcontroller.slow_consumers",
            3,
            &[],
            ts,
        ));
        out.push(counter_of(
            "executor",
            "exec-1",
            "executor.starts",
            7,
            &[],
            ts,
        ));
    }
    let doppler_gauges = [("doppler.subscriptions", 2.0, "count")];
    out.push(gauge("doppler", "0", &doppler_gauges, WALL - 5 * SEC));
    out.push(gauge(
        "executor",
        "exec-1",
        &[("executor.memory_capacity", 1024.0, "MiB")],
        WALL - 5 * SEC,
    ));
    out.push(gauge(
        "executor",
        "exec-1",
        &[("executor.memory_used", 900.0, "MiB")],
        WALL - 5 * SEC,
    ));
    out.push(gauge_tagged(
        "executor",
        "exec-1",
        &[("executor.instances", 3.0, "count")],
        &[("state", "running")],
        WALL - 5 * SEC,
    ));
    out.sort_by_key(|e| e.timestamp);
    out
}

fn snapshot() -> ApiSnapshot {
    ApiSnapshot {
        apps: Some(vec![
            app(DEMO, "demo", AppState::Started, 2),
            app(API, "api", AppState::Started, 3),
            app(IDLE, "idle", AppState::Stopped, 1),
        ]),
        stats: vec![
            ProcessStats {
                app_guid: DEMO.to_owned(),
                state: AppState::Started,
                desired_instances: 2,
                instances: vec![
                    instance(0, InstanceState::Running),
                    instance(1, InstanceState::Running),
                ],
            },
            ProcessStats {
                app_guid: API.to_owned(),
                state: AppState::Started,
                desired_instances: 3,
                instances: vec![
                    instance(0, InstanceState::Running),
                    instance(1, InstanceState::Starting),
                    instance(2, InstanceState::Crashed),
                ],
            },
        ],
        audit: Some(vec![AuditEvent {
            guid: "ev-1".to_owned(),
            event_type: "audit.app.process.crash".to_owned(),
            actor: "executor:exec-1".to_owned(),
            target_guid: API.to_owned(),
            target_name: "api".to_owned(),
            space_guid: "s".to_owned(),
            data: serde_json::json!({"exit_description": "exited with status 1"}),
            created_at: (WALL - 30 * SEC) / SEC,
        }]),
        policies: Some(vec![(
            DEMO.to_owned(),
            ScalingPolicy {
                instance_min_count: 1,
                instance_max_count: 4,
                scaling_rules: vec![ScalingRule {
                    metric_type: "cpu".to_owned(),
                    threshold: 80,
                    operator: ">".to_owned(),
                    adjustment: "+1".to_owned(),
                    breach_duration_secs: None,
                    cool_down_secs: None,
                    stats_window_secs: None,
                }],
                schedules: None,
                configuration: None,
            },
        )]),
        slos: Some(vec![AppSlos {
            app_guid: DEMO.to_owned(),
            app_name: "demo".to_owned(),
            slos: vec![Slo {
                name: "availability".to_owned(),
                sli: Sli::Availability {
                    count_router_errors: true,
                },
                objective: 99.9,
                period_days: 30,
                min_requests: 50,
                webhook_url: None,
                description: None,
            }],
            updated_at: 0,
        }]),
        slo_status: Vec::new(),
        error: None,
    }
}

/// The recorded state, refreshed at the end of the recording.
fn recorded() -> (State, Instant) {
    recorded_with(&history(), Feed::Api(Box::new(snapshot())))
}

#[test]
fn apps_screen_shows_rates_latency_status_classes_and_thresholds() {
    let (mut state, _) = recorded();
    let buf = draw(&mut state, 160, 30);
    let text = screen(&buf);
    for title in [
        "NAME", "INST", "CPU%", "REQ/1", "REQ/60", "P50", "P99", "5XX", "LOG/S", "SLO",
    ] {
        assert!(text.contains(title), "column {title} missing:\n{text}");
    }
    let (_, demo_y) = must_find(&buf, "│demo ");
    // 10 requests a second; 600 of them in the last minute.
    assert_eq!(column_text(&buf, "REQ/10", demo_y).0, "10", "{text}");
    let (fivexx, fivexx_colour) = column_text(&buf, "5XX", demo_y);
    assert!(fivexx == "36" || fivexx == "37", "5xx in 60 s: {fivexx}");
    assert_eq!(
        fivexx_colour,
        Color::Red,
        "6 % 5xx is over the 5 % alert threshold"
    );
    let (p99, p99_colour) = column_text(&buf, "P99", demo_y);
    assert!(p99.ends_with("ms"), "{p99}");
    assert_eq!(
        p99_colour,
        Color::Yellow,
        "a 600 ms p99 is over the 500 ms warning"
    );
    let (p50, _) = column_text(&buf, "P50", demo_y);
    assert_eq!(p50, "20ms");
    let (cpu, cpu_colour) = column_text(&buf, "CPU%", demo_y);
    assert_eq!((cpu.as_str(), cpu_colour), ("95", Color::Red));
    let (mem, mem_colour) = column_text(&buf, "MEM", demo_y);
    assert_eq!((mem.as_str(), mem_colour), ("120M", Color::Red));
    let (slo, slo_colour) = column_text(&buf, "SLO", demo_y);
    assert_eq!((slo.as_str(), slo_colour), ("40%", Color::Yellow));
    // api: one of three instances running, and a crash in the last 5 minutes.
    let (_, api_y) = must_find(&buf, "│api ");
    let (x, _) = must_find(&buf, "1/3");
    assert_eq!(buf[(x, api_y)].fg, Color::Red, "short of instances is red");
    assert_eq!(buf[(2, api_y)].fg, Color::Red, "and so is its name");
    assert_eq!(column_text(&buf, "CRSH", api_y).0, "1");
    // idle is stopped: dimmed.
    let (ix, iy) = must_find(&buf, "│idle");
    assert_eq!(buf[(ix + 1, iy)].fg, Color::DarkGray);
    // Busiest first: demo above api above idle.
    assert!(demo_y < api_y && api_y < iy);
    // The header and its alert bar.
    assert!(text.contains("operator (firehose)"), "{text}");
    assert!(text.contains("1 app(s) not in the desired state"), "{text}");
    assert!(text.contains("SLO availability of demo firing"), "{text}");
    assert!(text.contains("apps (3/3) · sort REQ/60 ▼"), "{text}");
}

#[test]
fn detail_screen_shows_instances_sparklines_status_events_and_escaped_logs() {
    let (mut state, t0) = recorded();
    // demo is the busiest, so it is selected first; Enter drills into it.
    keys_lead_to(&mut state, "\n", t0, &Screen::App(DEMO.into()));
    let buf = draw(&mut state, 160, 44);
    let text = screen(&buf);
    assert!(
        text.contains(" demo STARTED · 2/2 running · space default"),
        "{text}"
    );
    for expected in [
        "instances",
        "requests/s",
        "latency (mean per second)",
        "autoscaler: 1..4 instances · cpu > 80 → +1",
        "SLO availability (availability 99.9% over 30d): budget 40% left",
        "22:13:10 SLO availability (availability 99.9%): PAGE FIRING",
        "logs (live)",
        "[APP/PROC/WEB/0] OUT GET / 200 in 20ms",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
    // The hostile payload is shown, escaped, and no ESC or BEL reached a cell.
    assert!(
        text.contains(r"evil \e[2J\e]0;owned\x07 payload"),
        "escaped payload missing:\n{text}"
    );
    assert!(!text.contains('\u{1b}') && !text.contains('\u{7}'));
    // Instances 0 and 1, each at its CPU; the sparkline has bars.
    let (_, row0) = must_find(&buf, "RUNNING");
    assert!(line(&buf, row0).contains("50.0") || line(&buf, row0).contains("50"));
    // Each instance's container limits beside its usage; the unisolated one has none.
    let row1 = row0 + 1;
    for (header, row, expected) in [
        ("MEM LIM", row0, "64M"),
        ("DISK", row0, "12M"),
        ("DISK%", row0, "1.2"),
        ("PIDS", row0, "7"),
        ("PID LIM", row0, "2048"),
        ("SHARES", row0, "10"),
        ("PID LIM", row1, "none"),
        ("SHARES", row1, "none"),
    ] {
        let (shown, _) = column_text(&buf, header, row);
        assert_eq!(shown, expected, "{header} of row {row}:\n{text}");
    }
    assert_eq!(
        column_text(&buf, "PID LIM", row1).1,
        Color::Yellow,
        "{text}"
    );
    assert!(
        text.contains('█') || text.contains('▇') || text.contains('▆'),
        "sparklines are empty:\n{text}"
    );
    // Esc goes back to the apps.
    keys_lead_to(&mut state, "\u{1b}", t0, &Screen::Apps);
}

#[test]
fn pipeline_screen_shows_every_hop_with_rates_drops_and_slow_consumers() {
    let (mut state, t0) = recorded();
    keys_lead_to(&mut state, ":pipeline\n", t0, &Screen::Pipeline);
    let buf = draw(&mut state, 160, 30);
    let text = screen(&buf);
    for kind in ["agent", "doppler", "trafficcontroller"] {
        assert!(text.contains(kind), "{kind} missing:\n{text}");
    }
    let (_, agent_y) = must_find(&buf, "│agent ");
    assert_eq!(column_text(&buf, "IN/S", agent_y).0, "1000");
    let (drops, colour) = column_text(&buf, "DROP/S", agent_y);
    assert_eq!(drops, "50");
    assert_eq!(
        colour,
        Color::Red,
        "5 % of the agent's input dropped is red"
    );
    assert!(line(&buf, agent_y).contains("egress_queue_full:350"));
    let (_, tc_y) = must_find(&buf, "│trafficcontroller ");
    let (slow, colour) = column_text(&buf, "SLOW", tc_y);
    assert_eq!((slow.as_str(), colour), ("3", Color::Red));
    let (_, doppler_y) = must_find(&buf, "│doppler ");
    assert_eq!(column_text(&buf, "CONS", doppler_y).0, "2");
    assert_eq!(column_text(&buf, "DROP/S", doppler_y).1, Color::Reset);
}

#[test]
fn nodes_screen_shows_capacity_and_placements() {
    let (mut state, t0) = recorded();
    type_keys(&mut state, ":nodes\n", t0);
    let buf = draw(&mut state, 160, 30);
    let (_, y) = must_find(&buf, "exec-1");
    let (pct, colour) = column_text(&buf, "MEM%", y);
    assert_eq!((pct.as_str(), colour), ("88", Color::Yellow));
    assert_eq!(column_text(&buf, "MEM CAP", y).0, "1.0G");
    assert_eq!(column_text(&buf, "RUNNING", y).0, "3");
    // Apps placed on it, from the API: demo and api.
    assert_eq!(column_text(&buf, "APPS", y).0, "2");
    assert_eq!(column_text(&buf, "STARTS", y).0, "7");
}

#[test]
fn events_screen_merges_audit_events_live_notices_and_alerts() {
    let (mut state, t0) = recorded();
    type_keys(&mut state, ":events\n", t0);
    let buf = draw(&mut state, 160, 30);
    let text = screen(&buf);
    assert!(text.contains("audit.app.process.crash"), "{text}");
    assert!(text.contains("app.crash"), "{text}");
    let (x, y) = must_find(&buf, "CRIT");
    assert_eq!(buf[(x, y)].fg, Color::Red);
    assert!(line(&buf, y).contains("PAGE FIRING"));
    // Newest first: the SLO page (10 s ago) above the crash (30 s ago).
    let (_, crash_y) = must_find(&buf, "app.crash ");
    assert!(y < crash_y);
    assert!(
        text.contains("22:13:10"),
        "times are shown in the configured zone:\n{text}"
    );
    // Enter on an event about an app opens that app.
    keys_lead_to(&mut state, "\n", t0, &Screen::App(DEMO.into()));
}

#[test]
fn help_lists_every_key() {
    let (mut state, t0) = recorded();
    state.apply_key(&key(KeyCode::Char('?')), t0);
    assert!(state.help_open());
    let buf = draw(&mut state, 160, 60);
    let text = screen(&buf);
    for b in hydrant_top::input::KEYMAP {
        assert!(
            text.contains(b.keys),
            "{:?} missing from help:\n{text}",
            b.keys
        );
        assert!(text.contains(b.help), "{:?} missing from help", b.help);
    }
    // Keys under the help do nothing; Esc closes it.
    state.apply_key(&key(KeyCode::Char('j')), t0);
    assert_eq!(state.table_ui(TableKind::Apps).cursor, 0);
    state.apply_key(&key(KeyCode::Esc), t0);
    assert!(!state.help_open());
}

#[test]
fn colon_commands_switch_screens_and_esc_walks_back() {
    let (mut state, t0) = recorded();
    keys_lead_to(&mut state, ":pipeline\n", t0, &Screen::Pipeline);
    keys_lead_to(&mut state, ":nodes\n", t0, &Screen::Nodes);
    keys_lead_to(&mut state, ":app demo\n", t0, &Screen::App(DEMO.into()));
    keys_lead_to(&mut state, "\u{1b}", t0, &Screen::Nodes);
    // Going to a screen already on the stack returns to it rather than piling up.
    keys_lead_to(&mut state, ":apps\n", t0, &Screen::Apps);
    state.apply_key(&key(KeyCode::Esc), t0);
    assert_eq!(
        state.screen(),
        &Screen::Apps,
        "apps is the bottom of the stack"
    );
    type_keys(&mut state, ":nonsense\n", t0);
    assert_message(&state, "unknown command :nonsense");
    // A prompt swallows keys: `q` typed into it does not quit, Esc cancels.
    type_keys(&mut state, ":q\u{1b}", t0);
    assert!(!state.should_quit());
    type_keys(&mut state, ":q\n", t0);
    assert!(state.should_quit());
}

#[test]
fn filter_keeps_or_hides_matching_rows_and_esc_clears_it() {
    let (mut state, t0) = recorded();
    let rows = |s: &State| s.table_ui(TableKind::Apps).visible.len();
    type_keys(&mut state, "/dem\n", t0);
    assert_eq!(rows(&state), 1);
    let buf = draw(&mut state, 160, 30);
    assert!(screen(&buf).contains("filter /dem"));
    type_keys(&mut state, "/", t0);
    // The prompt starts from the current filter; replace it with its inverse.
    state.apply_key(
        &KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL),
        t0,
    );
    type_keys(&mut state, "!dem\n", t0);
    assert_eq!(rows(&state), 2);
    let buf = draw(&mut state, 160, 30);
    assert!(find(&buf, "│demo ").is_none());
    assert!(find(&buf, "idle").is_some());
    state.apply_key(&key(KeyCode::Esc), t0);
    assert_eq!(rows(&state), 3);
    type_keys(&mut state, "/zzz\n", t0);
    let buf = draw(&mut state, 160, 30);
    assert!(screen(&buf).contains("no rows match the filter"));
}

#[test]
fn sort_cycles_columns_reverses_and_keeps_the_selection() {
    let (mut state, t0) = recorded();
    let names = |s: &mut State| -> Vec<String> {
        let buf = draw(s, 160, 30);
        ["│demo ", "│api ", "│idle"]
            .iter()
            .map(|n| {
                (
                    find(&buf, n).unwrap().1,
                    n.trim_start_matches('│').trim().to_owned(),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_values()
            .collect()
    };
    assert_eq!(names(&mut state), ["demo", "api", "idle"]);
    // Select api, then sort by NAME (S from REQ/60 walks back; NAME is column 0).
    state.apply_key(&key(KeyCode::Char('j')), t0);
    let selected = state.table_ui(TableKind::Apps).selected.clone();
    assert_eq!(selected.as_deref(), Some(API));
    for _ in 0..7 {
        state.apply_key(&key(KeyCode::Char('S')), t0);
    }
    assert_eq!(state.table_ui(TableKind::Apps).sort_column, 0);
    assert_eq!(names(&mut state), ["api", "demo", "idle"]);
    state.apply_key(&key(KeyCode::Char('r')), t0);
    assert_eq!(names(&mut state), ["idle", "demo", "api"]);
    // The selection followed api to the bottom.
    let ui = state.table_ui(TableKind::Apps);
    assert_eq!(ui.selected.as_deref(), Some(API));
    assert_eq!(ui.cursor, 2);
    let buf = draw(&mut state, 160, 30);
    assert!(screen(&buf).contains("sort NAME ▼"));
    // `s` steps forward: STATE, sorted alphabetically.
    state.apply_key(&key(KeyCode::Char('s')), t0);
    assert_eq!(state.table_ui(TableKind::Apps).sort_column, 1);
    assert!(!state.table_ui(TableKind::Apps).descending);
}

#[test]
fn pause_freezes_the_screen_while_data_keeps_arriving() {
    let (mut state, t0) = recorded();
    let later = t0 + Duration::from_secs(2);
    state.apply_key(&key(KeyCode::Char('p')), t0);
    assert!(state.paused());
    let before = screen(&draw(&mut state, 160, 30));
    assert!(before.contains("PAUSED"));
    let burst: Vec<v2::Envelope> = (0..500)
        .map(|i| timer(DEMO, "0", "200", 5, WALL + SEC + i))
        .collect();
    state.apply_feed(Feed::Batch(Batch::from_envelopes(&burst)), later);
    state.tick(later);
    assert_eq!(state.envelopes(), 500, "data keeps being applied");
    assert_eq!(
        screen(&draw(&mut state, 160, 30)),
        before,
        "the screen holds still"
    );
    state.apply_key(&key(KeyCode::Char('p')), later);
    let after = screen(&draw(&mut state, 160, 30));
    assert!(!after.contains("PAUSED"));
    let (_, y) = must_find(&draw(&mut state, 160, 30), "│demo ");
    let buf = draw(&mut state, 160, 30);
    let (req1, _) = column_text(&buf, "REQ/1", y);
    assert_ne!(req1, "10", "the burst shows once unpaused");
}

#[test]
fn page_and_end_keys_move_the_selection() {
    let (mut state, t0) = recorded();
    state.apply_key(&key(KeyCode::End), t0);
    assert_eq!(
        state.table_ui(TableKind::Apps).selected.as_deref(),
        Some(IDLE)
    );
    state.apply_key(&key(KeyCode::Char('g')), t0);
    assert_eq!(
        state.table_ui(TableKind::Apps).selected.as_deref(),
        Some(DEMO)
    );
    state.apply_key(&key(KeyCode::PageDown), t0);
    assert_eq!(
        state.table_ui(TableKind::Apps).selected.as_deref(),
        Some(IDLE)
    );
    state.apply_key(&key(KeyCode::Up), t0);
    assert_eq!(
        state.table_ui(TableKind::Apps).selected.as_deref(),
        Some(API)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_payload_bytes_never_put_a_raw_control_byte_on_screen(
        payload in hostile_bytes(300),
        name in HOSTILE_NAME,
        tag in hostile_bytes(40),
    ) {
        let t0 = Instant::now();
        let mut state = fresh(t0, "operator");
        let hostile = String::from_utf8_lossy(&tag).into_owned();
        let mut envs = vec![
            log(DEMO, "0", &hostile, &payload, WALL - SEC),
            log(DEMO, &hostile, "APP/PROC/WEB", &payload, WALL - SEC),
            log(DEMO, "0", "SLO", &payload, WALL - SEC),
            event(DEMO, &hostile, &hostile, &String::from_utf8_lossy(&payload), WALL - SEC),
            timer(DEMO, "0", &hostile, 5, WALL - SEC),
            counter(&hostile, "agent.dropped", 3, &[("reason", hostile.as_str())], WALL - SEC),
        ];
        envs.push(counter(&hostile, "agent.dropped", 9, &[("reason", hostile.as_str())], WALL));
        state.apply_feed(Feed::History(Batch::from_envelopes(&envs)), t0);
        let mut snap = snapshot();
        if let Some(apps) = snap.apps.as_mut() {
            apps[0].name = name.clone();
            apps[0].space_name = name.clone();
            apps[0].routes = vec![name.clone()];
        }
        if let Some(audit) = snap.audit.as_mut() {
            audit[0].target_name = name;
            audit[0].data = serde_json::json!({ "why": hostile });
        }
        snap.error = Some(hostile.clone());
        state.apply_feed(Feed::Api(Box::new(snap)), t0);
        state.tick(t0);
        assert_no_control(&draw(&mut state, 140, 40));
        type_keys(&mut state, ":app g-demo\n", t0);
        assert_no_control(&draw(&mut state, 140, 40));
        for screen in [":pipeline\n", ":events\n", ":nodes\n"] {
            type_keys(&mut state, screen, t0);
            assert_no_control(&draw(&mut state, 140, 40));
        }
        // What is typed into a prompt is shown escaped too.
        type_keys(&mut state, "/", t0);
        for c in hostile.chars().take(20) {
            state.apply_key(&key(KeyCode::Char(c)), t0);
        }
        assert_no_control(&draw(&mut state, 140, 40));
    }
}

#[test]
fn header_reports_disconnected_streams_losses_and_screen_drops() {
    use hydrant_top::StreamChange;
    let (mut state, t0) = recorded();
    state.apply_feed(Feed::Stream(StreamChange::Wanted(1)), t0);
    state.apply_feed(Feed::Stream(StreamChange::Up), t0);
    state.tick(t0);
    let text = screen(&draw(&mut state, 160, 30));
    assert!(text.contains("streams 1/1"), "{text}");
    assert!(!text.contains("disconnected"), "{text}");
    state.apply_feed(
        Feed::Stream(StreamChange::Down("connection reset".to_owned())),
        t0,
    );
    state.apply_feed(
        Feed::Gap(hydrant_firehose_client::Gap {
            source_id: DEMO.to_owned(),
            dropped: 42,
            hop: "doppler".to_owned(),
            reason: "slow_consumer".to_owned(),
            by_source: Default::default(),
        }),
        t0,
    );
    state.set_ui_dropped(7, t0);
    state.tick(t0);
    let buf = draw(&mut state, 160, 30);
    let text = screen(&buf);
    assert!(text.contains("streams 0/1 · "), "{text}");
    let (x, y) = must_find(&buf, "ALERT: 1 of 1 stream(s) disconnected");
    assert_eq!(buf[(x, y)].fg, Color::Red);
    assert!(text.contains("lost 42"), "{text}");
    assert!(text.contains("ui drops 7"), "{text}");
    type_keys(&mut state, ":events\n", t0);
    let text = screen(&draw(&mut state, 160, 40));
    for expected in [
        "stream lost",
        "connection reset",
        "42 envelopes lost (slow_consumer at doppler)",
        "7 envelopes dropped: the screen fell behind the stream",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
}

const DAY: f64 = 86_400.0;

/// A platform that reports nothing but certificates: the executor `exec-1` and every other
/// `(source, instance, days left)`, each as the `tls.cert_expiry_seconds` gauge its role keeps.
fn with_certs(nodes: &[(&str, &str, f64)]) -> (State, Instant) {
    let t0 = Instant::now();
    let mut state = fresh(t0, "operator (firehose)");
    let mut envelopes = vec![gauge(
        "executor",
        "exec-1",
        &[("executor.memory_capacity", 1024.0, "MiB")],
        WALL - 2 * SEC,
    )];
    for (source, instance, days) in nodes {
        envelopes.push(gauge_tagged(
            source,
            instance,
            &[("tls.cert_expiry_seconds", days * DAY, "seconds")],
            &[("identity", source)],
            WALL - SEC,
        ));
    }
    state.apply_feed(Feed::Batch(Batch::from_envelopes(&envelopes)), t0);
    state.tick(t0);
    type_keys(&mut state, ":nodes\n", t0);
    (state, t0)
}

#[test]
fn nodes_screen_shows_each_cells_state_live() {
    let t0 = Instant::now();
    let mut state = fresh(t0, "operator (firehose)");
    let envelopes = vec![
        gauge(
            "executor",
            "cell-1",
            &[("executor.evacuating", 0.0, "bool")],
            WALL - SEC,
        ),
        gauge(
            "executor",
            "cell-2",
            &[("executor.evacuating", 1.0, "bool")],
            WALL - SEC,
        ),
        // Silent for a minute: a lost cell.
        gauge(
            "executor",
            "cell-3",
            &[("executor.evacuating", 0.0, "bool")],
            WALL - 60 * SEC,
        ),
    ];
    state.apply_feed(Feed::Batch(Batch::from_envelopes(&envelopes)), t0);
    state.tick(t0);
    type_keys(&mut state, ":nodes\n", t0);
    let buf = draw(&mut state, 160, 30);
    for (cell, want, colour) in [
        ("cell-1", "healthy", Color::Reset),
        ("cell-2", "evacuating", Color::Yellow),
    ] {
        let (_, y) = must_find(&buf, cell);
        assert!(line(&buf, y).contains(want), "{cell}: {}", line(&buf, y));
        assert_eq!(column_text(&buf, "STATE", y).1, colour, "{cell}");
    }
    // The silent cell's row is dimmed whole, and says why.
    let (_, y) = must_find(&buf, "cell-3");
    assert!(line(&buf, y).contains("lost"), "{}", line(&buf, y));
}

#[test]
fn nodes_screen_warns_when_a_certificate_has_under_30_days_left() {
    let (mut state, _) = with_certs(&[("executor", "exec-1", 10.0), ("doppler", "0", 90.0)]);
    let buf = draw(&mut state, 160, 30);
    let (x, y) = must_find(
        &buf,
        "WARN: TLS certificate of exec-1 expires in 10 day(s) (CERT column, :nodes)",
    );
    assert_eq!(buf[(x, y)].fg, Color::Yellow);
    let (_, y) = must_find(&buf, "│exec-1 ");
    assert_eq!(
        column_text(&buf, "CERT", y),
        ("10d".to_owned(), Color::Yellow)
    );
    // The other roles' certificates have rows of their own, by source/instance.
    let (_, y) = must_find(&buf, "│doppler/0 ");
    assert_eq!(
        column_text(&buf, "CERT", y),
        ("90d".to_owned(), Color::Reset)
    );
}

#[test]
fn nodes_screen_shows_no_certificate_warning_with_90_days_left() {
    let (mut state, _) = with_certs(&[("executor", "exec-1", 90.0), ("doppler", "0", 90.0)]);
    let buf = draw(&mut state, 160, 30);
    let text = screen(&buf);
    assert!(!text.contains("TLS certificate"), "{text}");
    must_find(&buf, "no alerts");
    let (_, y) = must_find(&buf, "│exec-1 ");
    assert_eq!(
        column_text(&buf, "CERT", y),
        ("90d".to_owned(), Color::Reset)
    );
}

#[test]
fn an_expired_certificate_says_expired_above_an_expiring_one() {
    let (mut state, _) = with_certs(&[
        ("executor", "exec-1", 10.0),
        ("trafficcontroller", "0", -2.0),
        ("doppler", "0", -0.5),
    ]);
    let buf = draw(&mut state, 160, 30);
    // The worst first, and in red: the certificate that expired longest ago, counting the other.
    let (x, crit_y) = must_find(
        &buf,
        "CRIT: TLS certificate of trafficcontroller/0 and 1 more EXPIRED 2d ago",
    );
    assert_eq!(buf[(x, crit_y)].fg, Color::Red);
    let (_, warn_y) = must_find(&buf, "WARN: TLS certificate of exec-1 expires in 10 day(s)");
    assert!(crit_y < warn_y);
    let (_, y) = must_find(&buf, "│trafficcontroller/0 ");
    assert_eq!(
        column_text(&buf, "CERT", y),
        ("expired".to_owned(), Color::Red)
    );
}

#[test]
fn certificate_warnings_escape_a_hostile_source_id() {
    let (mut state, _) = with_certs(&[("evil\u{1b}[2J\u{7}", "0\r\n", 3.0)]);
    let buf = draw(&mut state, 160, 30);
    assert_no_control(&buf);
    must_find(&buf, "WARN: TLS certificate of evil");
}
