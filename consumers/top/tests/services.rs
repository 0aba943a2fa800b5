//! `hydrant top`'s services screens drawn from recorded state into ratatui's `TestBackend`:
//! the `:services` table (offering, plan, space, last operation, and the brokers' `service.*`
//! gauges with their thresholds), the service screen a row opens (every gauge, the node's
//! down reports, the instance's own `SVC` lines), the keys that move between them, and the
//! property that no name, tag or payload byte reaches a cell raw.
//!
//! The recording: three managed instances and one user-provided, as the API lists them, and
//! a minute of their brokers' reports — a Redis near its memory plan with `SVC` lines (one of
//! them hostile), a MariaDB whose node stopped answering, a RabbitMQ still being created with
//! messages queued. Time is pinned and shown in UTC, so every number on screen is exact.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

#[allow(dead_code, reason = "shared by the screen tests; each uses a part")]
#[path = "support/screen.rs"]
mod screen_rig;

use std::time::Instant;

use bytes::Bytes;
use hydrant_api::services::{LastOperation, ServiceInstance, ServiceInstanceType};
use hydrant_envelope::v2;
use hydrant_firehose_client::Batch;
use hydrant_testkit::envelopes::{self, envelope};
use hydrant_top::view::{Screen, TableKind, Tone};
use hydrant_top::{Feed, State};
use proptest::prelude::*;
use ratatui::crossterm::event::KeyCode;
use ratatui::style::Color;
use screen_rig::*;

const MIB: f64 = 1024.0 * 1024.0;

const CACHE: &str = "5e1f0000-0000-4000-8000-00000000cace";
const DB: &str = "5e1f0000-0000-4000-8000-0000000000db";
const QUEUE: &str = "5e1f0000-0000-4000-8000-00000000a0a0";
const CREDS: &str = "5e1f0000-0000-4000-8000-00000000c4ed";

fn instance(
    guid: &str,
    name: &str,
    offering: Option<(&str, &str)>,
    op: (&str, &str, Option<&str>),
) -> ServiceInstance {
    ServiceInstance {
        guid: guid.to_owned(),
        name: name.to_owned(),
        kind: if offering.is_some() {
            ServiceInstanceType::Managed
        } else {
            ServiceInstanceType::UserProvided
        },
        space_guid: "s".to_owned(),
        space_name: "default".to_owned(),
        offering: offering.map(|o| o.0.to_owned()),
        plan: offering.map(|o| o.1.to_owned()),
        broker: offering.map(|_| "hydrant".to_owned()),
        tags: Vec::new(),
        dashboard_url: None,
        syslog_drain_url: None,
        last_operation: LastOperation {
            kind: op.0.to_owned(),
            state: op.1.to_owned(),
            description: op.2.map(str::to_owned),
            updated_at: WALL / SEC - 100,
        },
        bound_apps: if guid == CACHE {
            vec!["demo".to_owned()]
        } else {
            Vec::new()
        },
        created_at: WALL / SEC - 600,
    }
}

fn listed() -> Vec<ServiceInstance> {
    vec![
        instance(
            CACHE,
            "cache",
            Some(("redis", "small")),
            ("create", "succeeded", None),
        ),
        instance(
            DB,
            "orders",
            Some(("mysql", "medium")),
            (
                "update",
                "failed",
                Some("plan medium: storage below current usage"),
            ),
        ),
        instance(
            QUEUE,
            "jobs",
            Some(("rabbitmq", "small")),
            ("create", "in progress", Some("starting the node")),
        ),
        instance(CREDS, "creds", None, ("create", "succeeded", None)),
    ]
}

fn gauges(
    source: &str,
    offering: &str,
    plan: &str,
    metrics: &[(&str, f64, &str)],
    ts: i64,
) -> v2::Envelope {
    let tags = [("offering", offering), ("plan", plan)];
    envelope(ts, source, "0", &tags, envelopes::gauge(metrics))
}

fn svc_line(source: &str, payload: &[u8], ts: i64) -> v2::Envelope {
    let line = v2::envelope::Message::Log(v2::Log {
        payload: Bytes::copy_from_slice(payload),
        r#type: 0,
    });
    envelope(ts, source, "0", &[("source_type", "SVC")], line)
}

/// A minute of the brokers' reports, every 10 s.
fn history() -> Vec<v2::Envelope> {
    let mut out = Vec::new();
    for k in 0..6 {
        let ts = WALL - 55 * SEC + k * 10 * SEC;
        out.push(gauges(
            CACHE,
            "redis",
            "small",
            &[
                ("service.up", 1.0, "bool"),
                ("service.connections", 3.0, "count"),
                ("service.ops_per_second", 120.0 + k as f64, "ops/s"),
                ("service.memory_bytes", 58.0 * MIB, "bytes"),
                ("service.memory_quota_bytes", 64.0 * MIB, "bytes"),
            ],
            ts,
        ));
        // The MariaDB node answered, then stopped answering for its last two reports.
        let db = if k < 4 {
            vec![
                ("service.up", 1.0, "bool"),
                ("service.connections", 7.0, "count"),
                ("service.storage_bytes", 100.0 * MIB, "bytes"),
                ("service.storage_quota_bytes", 1024.0 * MIB, "bytes"),
            ]
        } else {
            vec![("service.up", 0.0, "bool")]
        };
        out.push(gauges(DB, "mysql", "medium", &db, ts));
    }
    out.push(gauges(
        QUEUE,
        "rabbitmq",
        "small",
        &[
            ("service.up", 1.0, "bool"),
            ("service.queue_depth", 42.0, "messages"),
            ("service.queues", 2.0, "count"),
        ],
        WALL - 5 * SEC,
    ));
    out.push(svc_line(
        CACHE,
        b"Ready to accept connections tcp",
        WALL - 50 * SEC,
    ));
    out.push(svc_line(
        CACHE,
        b"evil \x1b[2J\x1b]0;owned\x07 line\r\n",
        WALL - 3 * SEC,
    ));
    out.sort_by_key(|e| e.timestamp);
    out
}

/// The recorded state, refreshed at the end of the recording.
fn recorded() -> (State, Instant) {
    recorded_with(&history(), Feed::Services(Ok(listed())))
}

#[test]
fn services_screen_lists_every_instance_with_its_state_and_gauges() {
    let (mut state, t0) = recorded();
    keys_lead_to(&mut state, ":services\n", t0, &Screen::Services);
    let buf = draw(&mut state, 200, 30);
    let text = screen(&buf);
    assert!(text.contains(" services (4/4)"), "{text}");

    // Redis: its newest report's numbers, memory against the plan over the warning line.
    let cache = row_of(&buf, "cache ");
    for cell in [
        "redis",
        "small",
        "default",
        "create succeeded",
        " up ",
        "125",
        "58M",
    ] {
        assert!(cache.contains(cell), "{cell:?} missing from {cache:?}");
    }
    let (x, y) = must_find(&buf, " 91 ");
    assert_eq!(buf[(x, y)].fg, Color::Red, "58 of 64 MiB is over 90 %");

    // MariaDB: the node is down now (red), down twice, the failed update says why.
    let orders = row_of(&buf, "orders ");
    assert!(orders.contains("update failed"), "{orders}");
    assert!(
        orders.contains("plan medium: storage below current usage"),
        "{orders}"
    );
    let (x, y) = must_find(&buf, "DOWN ");
    assert_eq!(y, must_find(&buf, "orders ").1);
    assert_eq!(buf[(x, y)].fg, Color::Red);
    let (x, y) = must_find(&buf, "update failed");
    assert_eq!(buf[(x, y)].fg, Color::Red);

    // RabbitMQ: in progress (yellow) with its queue depth.
    let jobs = row_of(&buf, "jobs ");
    assert!(
        jobs.contains("create in progress") && jobs.contains("42"),
        "{jobs}"
    );
    let (x, y) = must_find(&buf, "create in progress");
    assert_eq!(buf[(x, y)].fg, Color::Yellow);

    // A user-provided instance has no node: its gauges are unknown, not zero.
    let creds = row_of(&buf, "creds ");
    assert!(creds.contains("user-provided"), "{creds}");

    // The header says what needs a look, on every screen.
    assert!(
        text.contains("1 service node(s) down"),
        "the header alerts on a down node:\n{text}"
    );
    assert!(text.contains("1 service instance(s) whose last operation failed"));

    // An instance's own lines do not make it an app.
    type_keys(&mut state, ":apps\n", t0);
    let apps = screen(&draw(&mut state, 200, 30));
    assert!(!apps.contains(CACHE), "{apps}");
}

#[test]
fn enter_opens_a_service_with_its_gauges_and_escaped_svc_lines_and_esc_goes_back() {
    let (mut state, t0) = recorded();
    type_keys(&mut state, ":services\n", t0);
    // Sorted by name: cache, creds, jobs, orders.
    let ui = state.table_ui(TableKind::Services);
    assert_eq!(ui.selected.as_deref(), Some(CACHE));
    keys_lead_to(&mut state, "\n", t0, &Screen::Service(CACHE.into()));
    let buf = draw(&mut state, 160, 40);
    let text = screen(&buf);
    for needle in [
        "redis small · space default · create succeeded · bound to demo",
        "node: up (reported 5s ago, at 22:13:15)",
        "connections",
        "memory_quota_bytes",
        "64M",
        "ops_per_second",
        "[SVC/0] OUT Ready to accept connections tcp",
        "[SVC/0] OUT evil",
    ] {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
    assert!(!text.contains('\u{1b}'), "no raw escape:\n{text}");

    type_keys(&mut state, "\u{1b}jjj\n", t0);
    assert_eq!(state.screen(), &Screen::Service(DB.into()), "j moves down");
    let buf = draw(&mut state, 160, 40);
    let text = screen(&buf);
    assert!(
        text.contains("node: DOWN — its broker could not reach it"),
        "{text}"
    );
    assert!(
        text.contains("node down in 2 report(s) since the console started, last at 22:13:15"),
        "{text}"
    );
    let (x, y) = must_find(&buf, "node: DOWN");
    assert_eq!(buf[(x, y)].fg, Color::Red);
    assert!(text.contains("no SVC lines yet"), "{text}");
    keys_lead_to(&mut state, "\u{1b}", t0, &Screen::Services);
}

#[test]
fn colon_service_opens_by_name_and_an_unknown_name_is_refused() {
    let (mut state, t0) = recorded();
    keys_lead_to(
        &mut state,
        ":service jobs\n",
        t0,
        &Screen::Service(QUEUE.into()),
    );
    let text = screen(&draw(&mut state, 160, 40));
    assert!(
        text.contains("queue_depth") && text.contains("42"),
        "{text}"
    );
    keys_lead_to(
        &mut state,
        ":svc nope\n",
        t0,
        &Screen::Service(QUEUE.into()),
    );
    assert_message(&state, "no service instance called nope");
    // The help names the services columns on a service's screen.
    type_keys(&mut state, "?", t0);
    let text = screen(&draw(&mut state, 160, 60));
    assert!(text.contains("columns of services"), "{text}");
}

#[test]
fn services_filter_and_sort_like_every_table() {
    let (mut state, t0) = recorded();
    type_keys(&mut state, ":sv\n/redis\n", t0);
    let ui = state.table_ui(TableKind::Services);
    assert_eq!(ui.visible.len(), 1);
    assert_eq!(ui.selected.as_deref(), Some(CACHE));
    type_keys(&mut state, "\u{1b}", t0);
    assert_eq!(state.table_ui(TableKind::Services).visible.len(), 4);
    // Sort by CONN (column 6), biggest first: orders' last 7 before cache's 3; the unknown go
    // last.
    for _ in 0..6 {
        state.apply_key(&key(KeyCode::Char('s')), t0);
    }
    let ui = state.table_ui(TableKind::Services);
    assert_eq!(ui.sort_column, 6);
    let rows = &state.view().table(TableKind::Services).rows;
    let order: Vec<&str> = ui.visible.iter().map(|i| rows[*i].key.as_str()).collect();
    assert_eq!(&order[..2], &[DB, CACHE]);
}

#[test]
fn a_stale_report_is_dimmed_and_a_listed_instance_without_reports_is_kept() {
    let t0 = Instant::now();
    let mut state = fresh(t0, "operator");
    let old = gauges(
        CACHE,
        "redis",
        "small",
        &[("service.up", 0.0, "bool")],
        WALL - 45 * SEC,
    );
    state.apply_feed(Feed::History(Batch::from_envelopes(&[old])), t0);
    state.apply_feed(Feed::Services(Ok(listed())), t0);
    state.tick(t0);
    let rows = &state.view().table(TableKind::Services).rows;
    let cache = rows.iter().find(|r| r.key == CACHE).unwrap();
    assert!(cache.dim, "a report 45 s old is stale");
    assert_eq!(cache.cells[5].text, "?");
    assert_eq!(cache.cells[5].tone, Tone::Dim);
    // Stale down reports raise no alarm: the broker may simply be gone.
    assert!(
        !state
            .view()
            .header
            .alerts
            .iter()
            .any(|(_, a)| a.contains("node(s) down"))
    );
    // A failed list keeps what was known and says why.
    state.apply_feed(
        Feed::Services(Err("service instances: HTTP 503".into())),
        t0,
    );
    state.tick(t0);
    assert_eq!(state.view().table(TableKind::Services).rows.len(), 4);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn hostile_names_tags_and_lines_never_put_a_raw_control_byte_on_screen(
        payload in hostile_bytes(300),
        name in HOSTILE_NAME,
        tag in hostile_bytes(40),
    ) {
        let t0 = Instant::now();
        let mut state = fresh(t0, "operator");
        let hostile = String::from_utf8_lossy(&tag).into_owned();
        let envs = vec![
            gauges(CACHE, &hostile, &hostile, &[("service.up", 0.0, "bool")], WALL - SEC),
            gauges(
                &hostile,
                "redis",
                "small",
                &[("service.connections", 1.0, "count")],
                WALL - SEC,
            ),
            svc_line(CACHE, &payload, WALL - SEC),
        ];
        state.apply_feed(Feed::History(Batch::from_envelopes(&envs)), t0);
        let mut list = listed();
        list[0].name = name.clone();
        list[0].space_name = name.clone();
        list[0].bound_apps = vec![name];
        list[1].last_operation.description = Some(hostile.clone());
        list[1].offering = Some(hostile);
        state.apply_feed(Feed::Services(Ok(list)), t0);
        state.tick(t0);
        type_keys(&mut state, ":services\n", t0);
        assert_no_control(&draw(&mut state, 160, 30));
        for guid in [CACHE, DB] {
            type_keys(&mut state, &format!(":service {guid}\n"), t0);
            assert_eq!(state.screen(), &Screen::Service(guid.into()));
            assert_no_control(&draw(&mut state, 160, 40));
        }
    }
}
