//! The terminal renderer: golden `cf logs`-compatible lines for every envelope kind and for loss
//! markers, NDJSON, and a property test that no random payload or tag can put a control
//! character (or an ESC other than our own colour codes) on the terminal.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use bytes::Bytes;
use hydrant_envelope::gap::{GAP_SOURCE, Gap};
use hydrant_envelope::v2::{self, envelope::Message};
use hydrant_envelope::wire::{EnvelopeView, encode};
use hydrant_firehose_client::render::{
    RED, RESET, RenderOptions, TimeZone, YELLOW, render, render_app_gap, render_gap,
    render_gap_json, render_json,
};
use proptest::prelude::*;

/// 2024-10-03T07:53:50.579Z
const TS: i64 = 1_727_942_030_579_000_000;

const UTC: RenderOptions = RenderOptions {
    color: false,
    tz: TimeZone::Utc,
};

fn envelope(source_type: Option<&str>, instance: &str, message: Message) -> v2::Envelope {
    v2::Envelope {
        timestamp: TS,
        source_id: "6b1c0f4e-app".to_owned(),
        instance_id: instance.to_owned(),
        tags: source_type
            .map(|s| HashMap::from([("source_type".to_owned(), s.to_owned())]))
            .unwrap_or_default(),
        message: Some(message),
        ..v2::Envelope::default()
    }
}

fn log_msg(payload: &[u8], err: bool) -> Message {
    Message::Log(v2::Log {
        payload: Bytes::copy_from_slice(payload),
        r#type: i32::from(err),
    })
}

fn rendered(e: &v2::Envelope, opts: &RenderOptions) -> String {
    let bytes = encode(e);
    let view = EnvelopeView::parse(&bytes).unwrap();
    let mut out = String::new();
    render(&view, opts, &mut out);
    out
}

#[test]
fn golden_log_lines() {
    let out =
        |st, inst, payload: &[u8], err| rendered(&envelope(st, inst, log_msg(payload, err)), &UTC);
    assert_eq!(
        out(
            Some("APP/PROC/WEB"),
            "0",
            b"Invoking pre-start scripts.\n",
            false
        ),
        "   2024-10-03T07:53:50.57+0000 [APP/PROC/WEB/0] OUT Invoking pre-start scripts.\n"
    );
    assert_eq!(
        out(
            Some("APP/PROC/WEB"),
            "0",
            b"npm warn Unknown \"always-auth\".\r\n",
            true
        ),
        "   2024-10-03T07:53:50.57+0000 [APP/PROC/WEB/0] ERR npm warn Unknown \"always-auth\".\n"
    );
    assert_eq!(
        out(Some("RTR"), "", b"GET / 200", false),
        "   2024-10-03T07:53:50.57+0000 [RTR] OUT GET / 200\n"
    );
    // No source_type: the source id names it.
    assert_eq!(
        out(None, "3", b"x", false),
        "   2024-10-03T07:53:50.57+0000 [6b1c0f4e-app/3] OUT x\n"
    );
    // Several lines: the header is repeated, so no line can pose as another source's.
    assert_eq!(
        out(
            Some("APP/PROC/WEB"),
            "1",
            b"Exception\n\tat Foo.bar()\r\n   2024 [RTR/0] OUT forged\n",
            false
        ),
        "   2024-10-03T07:53:50.57+0000 [APP/PROC/WEB/1] OUT Exception\n   \
         2024-10-03T07:53:50.57+0000 [APP/PROC/WEB/1] OUT \\tat Foo.bar()\n   \
         2024-10-03T07:53:50.57+0000 [APP/PROC/WEB/1] OUT    2024 [RTR/0] OUT forged\n"
    );
    assert_eq!(
        out(Some("APP/PROC/WEB"), "0", b"", false),
        "   2024-10-03T07:53:50.57+0000 [APP/PROC/WEB/0] OUT \n"
    );
    // Hostile bytes are shown, not interpreted.
    assert_eq!(
        out(
            Some("APP/PROC/WEB"),
            "0",
            b"\x1b[2J\x1b]0;title\x07\xc2\x9b31m\xe2\x80\xaeevil\xff",
            false
        ),
        "   2024-10-03T07:53:50.57+0000 [APP/PROC/WEB/0] OUT \\e[2J\\e]0;title\\x07\\u{9b}31m\\u{202e}evil\\xff\n"
    );
}

#[test]
fn golden_colour_and_offsets() {
    let e = envelope(Some("APP/PROC/WEB"), "0", log_msg(b"boom", true));
    let opts = RenderOptions {
        color: true,
        tz: TimeZone::Fixed(2 * 3600),
    };
    assert_eq!(
        rendered(&e, &opts),
        format!("   {RED}2024-10-03T09:53:50.57+0200 [APP/PROC/WEB/0] ERR boom{RESET}\n")
    );
    // OUT lines stay uncoloured.
    let e = envelope(Some("APP/PROC/WEB"), "0", log_msg(b"fine", false));
    assert!(!rendered(&e, &opts).contains('\x1b'));
}

#[test]
fn golden_metric_lines() {
    let counter = Message::Counter(v2::Counter {
        name: "requests".to_owned(),
        delta: 3,
        total: 42,
    });
    assert_eq!(
        rendered(&envelope(None, "0", counter), &UTC),
        "   2024-10-03T07:53:50.57+0000 [6b1c0f4e-app/0] COUNTER requests delta=3 total=42\n"
    );
    let gauge = Message::Gauge(v2::Gauge {
        metrics: HashMap::from([(
            "cpu".to_owned(),
            v2::GaugeValue {
                unit: "percentage".to_owned(),
                value: 12.5,
            },
        )]),
    });
    assert_eq!(
        rendered(&envelope(Some("APP/PROC/WEB"), "0", gauge), &UTC),
        "   2024-10-03T07:53:50.57+0000 [APP/PROC/WEB/0] GAUGE cpu=12.5 percentage\n"
    );
    let timer = Message::Timer(v2::Timer {
        name: "http".to_owned(),
        start: 1_000_000,
        stop: 13_345_000,
    });
    assert_eq!(
        rendered(&envelope(Some("RTR"), "1", timer), &UTC),
        "   2024-10-03T07:53:50.57+0000 [RTR/1] TIMER http 12.345ms\n"
    );
    let event = Message::Event(v2::Event {
        title: "app crashed".to_owned(),
        body: "exit status 1\nout of memory".to_owned(),
    });
    assert_eq!(
        rendered(&envelope(Some("API"), "", event), &UTC),
        "   2024-10-03T07:53:50.57+0000 [API] EVENT app crashed: exit status 1\\nout of memory\n"
    );
}

#[test]
fn golden_gap_lines() {
    let mut out = String::new();
    let gap = Gap {
        source_id: GAP_SOURCE.to_owned(),
        dropped: 1234,
        hop: "firehose".to_owned(),
        reason: "slow_consumer".to_owned(),
        by_source: Default::default(),
    };
    render_gap(&gap, TS, &UTC, &mut out);
    assert_eq!(
        out,
        "   2024-10-03T07:53:50.57+0000 [HYDRANT] LOST 1234 envelopes (slow_consumer at firehose)\n"
    );
    let mut out = String::new();
    let gap = Gap {
        source_id: "app\x1b".to_owned(),
        dropped: 2,
        hop: "upstream".to_owned(),
        reason: "sequence_gap".to_owned(),
        by_source: Default::default(),
    };
    render_gap(
        &gap,
        TS,
        &RenderOptions {
            color: true,
            tz: TimeZone::Utc,
        },
        &mut out,
    );
    assert_eq!(
        out,
        format!(
            "   {YELLOW}2024-10-03T07:53:50.57+0000 [HYDRANT] LOST 2 envelopes from app\\e \
             (sequence_gap at upstream){RESET}\n"
        )
    );
}

#[test]
fn a_gap_that_says_whose_lines_names_them_escaped() {
    use hydrant_envelope::gap::BySource;
    let by_source = BySource {
        top: vec![("web".to_owned(), 120), ("evil\x1b[2J".to_owned(), 30)],
        other: 4,
    };
    let gap = Gap {
        source_id: GAP_SOURCE.to_owned(),
        dropped: 154,
        hop: "doppler".to_owned(),
        reason: "replay_window".to_owned(),
        by_source,
    };
    let mut out = String::new();
    render_gap(&gap, TS, &UTC, &mut out);
    assert_eq!(
        out,
        "   2024-10-03T07:53:50.57+0000 [HYDRANT] LOST 154 envelopes (replay_window at doppler): \
         web 120, evil\\e[2J 30, other 4\n"
    );
    // An app stream's marker, in the app's terms.
    let mine = Gap {
        source_id: "web".to_owned(),
        dropped: 120,
        by_source: BySource {
            top: vec![("web".to_owned(), 120)],
            other: 0,
        },
        ..gap.clone()
    };
    let mut out = String::new();
    render_app_gap(&mine, TS, &UTC, &mut out);
    assert_eq!(
        out,
        "   2024-10-03T07:53:50.57+0000 [HYDRANT] LOST 120 of your lines (beyond the replay window)\n"
    );
    let unsure = Gap {
        dropped: 125,
        by_source: BySource {
            top: vec![("web".to_owned(), 120)],
            other: 5,
        },
        ..mine
    };
    let mut out = String::new();
    render_app_gap(&unsure, TS, &UTC, &mut out);
    assert!(
        out.ends_with("LOST 120 of your lines (beyond the replay window; up to 5 more could not be attributed)\n"),
        "{out}"
    );
    let odd = Gap {
        reason: "x\x1b".to_owned(),
        by_source: BySource::default(),
        ..unsure
    };
    let mut out = String::new();
    render_app_gap(&odd, TS, &UTC, &mut out);
    assert!(
        out.ends_with("LOST 125 of your lines (x\\e at doppler)\n"),
        "{out}"
    );
}

#[test]
fn json_lines_are_protojson_and_terminal_safe() {
    let mut e = envelope(Some("APP/PROC/WEB"), "0", log_msg(b"hi\x1b\xc2\x9b", false));
    e.hydrant_sequence = 7;
    let bytes = encode(&e);
    let mut out = String::new();
    render_json(&EnvelopeView::parse(&bytes).unwrap(), &mut out).unwrap();
    assert!(out.ends_with('\n') && out.matches('\n').count() == 1);
    assert!(!out.contains('\x1b') && !out.contains('\u{9b}'), "{out}");
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(value, hydrant_envelope::json::envelope(&e));
    assert_eq!(value["hydrant_sequence"], "7");

    let mut out = String::new();
    render_gap_json(
        &Gap {
            source_id: GAP_SOURCE.to_owned(),
            dropped: 5,
            hop: "doppler".to_owned(),
            reason: "ring_overflow".to_owned(),
            by_source: Default::default(),
        },
        &mut out,
    );
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(value["event"]["title"], "hydrant.gap");
    assert_eq!(value["tags"]["hydrant.gap.dropped"], "5");
}

fn is_forbidden(c: char) -> bool {
    matches!(
        c,
        '\0'..='\x1f'
            | '\x7f'..='\u{9f}'
            | '\u{61c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
    )
}

/// Bytes biased towards the dangerous ones, so the property test meets them often.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        any::<u8>(),
        Just(0x1b),
        Just(b'\n'),
        Just(b'\r'),
        Just(0x7f),
        Just(0xc2),
        Just(0x9b),
        Just(0xe2),
        Just(0x80),
        Just(0xae),
    ];
    proptest::collection::vec(byte, 0..200)
}

fn check_terminal_safe(out: &str, color: bool, err: bool) {
    assert!(out.ends_with('\n'), "{out:?}");
    for line in out.strip_suffix('\n').unwrap().split('\n') {
        let mut body = line.strip_prefix("   ").expect("every line is indented");
        if color && err {
            body = body
                .strip_prefix(RED)
                .and_then(|b| b.strip_suffix(RESET))
                .expect("ERR lines are wrapped in our SGR codes");
        }
        assert!(
            !body.chars().any(is_forbidden),
            "control character in rendered line {line:?}"
        );
        // The header is ours: nothing in the payload can start a new line or fake one.
        assert!(
            body.starts_with("2024-10-03T07:53:50.57+0000 ["),
            "{line:?}"
        );
    }
}

proptest! {
    #[test]
    fn random_payloads_never_reach_the_terminal_raw(
        payload in hostile_bytes(),
        err in any::<bool>(),
        color in any::<bool>(),
    ) {
        let e = envelope(Some("APP/PROC/WEB"), "0", log_msg(&payload, err));
        let out = rendered(&e, &RenderOptions { color, tz: TimeZone::Utc });
        check_terminal_safe(&out, color, err);
    }

    #[test]
    fn random_tags_and_metric_names_never_reach_the_terminal_raw(
        source_type in hostile_bytes(),
        instance in hostile_bytes(),
        name in hostile_bytes(),
        color in any::<bool>(),
    ) {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let kinds = [
            log_msg(b"x", true),
            Message::Counter(v2::Counter { name: text(&name), delta: 1, total: 2 }),
            Message::Gauge(v2::Gauge {
                metrics: HashMap::from([(text(&name), v2::GaugeValue { unit: text(&instance), value: 1.0 })]),
            }),
            Message::Timer(v2::Timer { name: text(&name), start: 0, stop: 1 }),
            Message::Event(v2::Event { title: text(&name), body: text(&source_type) }),
        ];
        for (i, message) in kinds.into_iter().enumerate() {
            let e = envelope(Some(&text(&source_type)), &text(&instance), message);
            let out = rendered(&e, &RenderOptions { color, tz: TimeZone::Utc });
            check_terminal_safe(&out, color, i == 0);
            prop_assert_eq!(out.matches('\n').count(), 1);
        }
        let mut out = String::new();
        let gap = Gap { source_id: text(&source_type), dropped: 1, hop: text(&instance), reason: text(&name), by_source: Default::default() };
        render_gap(&gap, TS, &RenderOptions { color: false, tz: TimeZone::Utc }, &mut out);
        check_terminal_safe(&out, false, false);
        let by_source = hydrant_envelope::gap::BySource { top: vec![(text(&name), 1)], other: 0 };
        let gap = Gap { by_source, ..gap };
        let mut out = String::new();
        render_gap(&gap, TS, &RenderOptions { color: false, tz: TimeZone::Utc }, &mut out);
        check_terminal_safe(&out, false, false);
        let mut out = String::new();
        render_app_gap(&gap, TS, &RenderOptions { color: false, tz: TimeZone::Utc }, &mut out);
        check_terminal_safe(&out, false, false);
    }
}
