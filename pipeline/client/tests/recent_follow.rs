//! Recent logs and follow mode against the fake edge over real sockets: the read API's
//! protojson parsed back, its errors, the 429 back-off, and recent-then-live with the overlap
//! shown exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/fake_edge.rs"]
mod fake_edge;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use fake_edge::{Action, Script, TOKEN, frame, log};
use hydrant_envelope::v2;
use hydrant_firehose_client::{
    ClientConfig, Error, Follow, Kind, RecentQuery, StreamEvent, follow_with_recent,
    follow_with_recent_query, recent,
};
use serde_json::json;

fn config(url: &str) -> ClientConfig {
    ClientConfig {
        url: url.to_owned(),
        token: TOKEN.to_owned(),
        ..ClientConfig::default()
    }
}

fn read_body(envelopes: &[v2::Envelope]) -> String {
    json!({ "envelopes": hydrant_envelope::json::batch(envelopes) }).to_string()
}

#[tokio::test]
async fn recent_parses_the_read_api() {
    let fake = fake_edge::start().await;
    let mut counter = log("app", "0", 3, 2, "");
    counter.message = Some(v2::envelope::Message::Counter(v2::Counter {
        name: "requests".to_owned(),
        delta: 1,
        total: u64::MAX,
    }));
    let mut bad_utf8 = log("app", "1", 9, 3, "");
    bad_utf8.message = Some(v2::envelope::Message::Log(v2::Log {
        payload: Bytes::from_static(b"\xff\x1b[2J"),
        r#type: 1,
    }));
    bad_utf8.deprecated_tags = HashMap::from([(
        "n".to_owned(),
        v2::Value {
            data: Some(v2::value::Data::Integer(-7)),
        },
    )]);
    let envelopes = vec![log("app", "0", 1, 1, "hello"), counter, bad_utf8];
    fake.edge.recent(200, read_body(&envelopes));

    let query = RecentQuery {
        start_time: Some(-6_795_364_578_871_345_152),
        end_time: Some(1_000),
        envelope_types: vec![Kind::Log, Kind::Counter],
        limit: Some(10),
        descending: true,
    };
    let got = recent(&config(&fake.url), "app/1", &query).await.unwrap();
    assert_eq!(got, envelopes);
    let reads = fake.edge.reads.lock().unwrap().clone();
    assert_eq!(
        reads[0].0,
        "/api/v1/read/app%2F1?start_time=-6795364578871345152&end_time=1000\
         &envelope_types=LOG&envelope_types=COUNTER&limit=10&descending=true"
    );
}

#[tokio::test]
async fn recent_errors_are_clear() {
    let fake = fake_edge::start().await;
    let mut bad_token = config(&fake.url);
    bad_token.token = "old".to_owned();
    let err = recent(&bad_token, "app", &RecentQuery::default())
        .await
        .unwrap_err();
    assert_eq!(err, Error::Unauthorized);

    fake.edge.recent(404, "");
    let err = recent(&config(&fake.url), "ghost", &RecentQuery::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "app \"ghost\" not found or not visible to you (404)"
    );

    let fake = fake_edge::start().await;
    fake.edge.recent(500, "boom \x1b]0;owned\x07");
    let err = recent(&config(&fake.url), "app", &RecentQuery::default())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("HTTP 500") && msg.contains("boom \\e]0;owned\\x07"),
        "{msg}"
    );

    let fake = fake_edge::start().await;
    fake.edge.recent(
        200,
        r#"{"envelopes":{"batch":[{"timestamp":"yesterday"}]}}"#,
    );
    let err = recent(&config(&fake.url), "app", &RecentQuery::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Protocol { reason, .. } if reason.contains("envelope 0: timestamp")),
        "{err}"
    );

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = recent(
        &config(&format!("http://127.0.0.1:{port}")),
        "app",
        &RecentQuery::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
}

#[tokio::test]
async fn recent_halves_the_limit_on_429() {
    let fake = fake_edge::start().await;
    fake.edge.recent(429, "too big");
    fake.edge.recent(429, "too big");
    fake.edge
        .recent(200, read_body(&[log("app", "0", 1, 1, "x")]));
    let got = recent(&config(&fake.url), "app", &RecentQuery::logs(1000))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let limits: Vec<String> = fake
        .edge
        .reads
        .lock()
        .unwrap()
        .iter()
        .map(|(q, _)| {
            q.split("limit=")
                .nth(1)
                .unwrap()
                .split('&')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(limits, ["1000", "500", "250"]);
}

/// Every log line follow mode yields until `want` lines arrived, with the events in between.
async fn collect_lines(follow: &mut Follow, want: usize) -> (Vec<String>, Vec<StreamEvent>) {
    let mut lines = Vec::new();
    let mut others = Vec::new();
    while lines.len() < want {
        let event = tokio::time::timeout(Duration::from_secs(10), follow.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream is open");
        match event {
            StreamEvent::Batch(batch) => {
                for view in batch.iter() {
                    lines.push(String::from_utf8_lossy(view.log().unwrap().0).into_owned());
                }
            }
            other => others.push(other),
        }
    }
    (lines, others)
}

#[tokio::test]
async fn follow_shows_recent_then_live_once_each() {
    let fake = fake_edge::start().await;
    let t0 = 1_700_000_000_000_000_000i64;
    let line = |i: u64| {
        log(
            "app",
            "0",
            i,
            t0 + i as i64 * 1_000_000,
            &format!("line {i}"),
        )
    };
    // The log cache holds 1..=10; newest first, as the descending read returns them.
    let history: Vec<_> = (1..=10).rev().map(line).collect();
    fake.edge.recent(200, read_body(&history));
    // The stream, opened before the read, repeats 8..=10 and goes on to 15.
    let overlap: Vec<_> = (8..=12).map(line).collect();
    let after: Vec<_> = (13..=15).map(line).collect();
    fake.edge.script(Script::Serve(vec![
        Action::Frame(frame(&overlap)),
        Action::Frame(frame(&after)),
    ]));

    let mut follow = follow_with_recent(config(&fake.url), "app").unwrap();
    let (lines, others) = collect_lines(&mut follow, 15).await;
    let want: Vec<String> = (1..=15).map(|i| format!("line {i}")).collect();
    assert_eq!(lines, want, "every line once, in order");
    assert_eq!(others, [StreamEvent::Connected]);

    // The stream was open when recent was read, and recent asked for the newest log lines.
    let reads = fake.edge.reads.lock().unwrap().clone();
    assert_eq!(reads.len(), 1);
    assert!(reads[0].1, "recent must be read after the stream is open");
    assert!(
        reads[0]
            .0
            .contains("envelope_types=LOG&limit=100&descending=true"),
        "{}",
        reads[0].0
    );
}

#[tokio::test]
async fn follow_dedupes_by_content_when_there_is_no_sequence() {
    let fake = fake_edge::start().await;
    let t0 = 1_700_000_000_000_000_000i64;
    let line = |i: i64| log("app", "0", 0, t0 + i * 1_000_000, &format!("line {i}"));
    fake.edge
        .recent(200, read_body(&(1..=5).rev().map(line).collect::<Vec<_>>()));
    // A repeat of line 4 and 5 mixed with new lines in one frame; a line with the same text
    // but a new timestamp is a new line.
    let mut again = line(5);
    again.timestamp += 1;
    fake.edge.script(Script::Serve(vec![Action::Frame(frame(&[
        line(4),
        line(5),
        again,
        line(6),
    ]))]));
    let mut follow = follow_with_recent(config(&fake.url), "app").unwrap();
    let (lines, _) = collect_lines(&mut follow, 7).await;
    assert_eq!(
        lines,
        [
            "line 1", "line 2", "line 3", "line 4", "line 5", "line 5", "line 6"
        ]
    );
}

#[tokio::test]
async fn follow_stops_deduping_once_past_the_overlap() {
    let fake = fake_edge::start().await;
    let t0 = 1_700_000_000_000_000_000i64;
    fake.edge
        .recent(200, read_body(&[log("app", "0", 1, t0, "before restart")]));
    // Much later the emitter restarted and its sequence began again at 1: a new line.
    let later = t0 + 60_000_000_000;
    fake.edge.script(Script::Serve(vec![Action::Frame(frame(&[
        log("app", "0", 2, later, "much later"),
        log("app", "0", 1, later + 1, "after restart"),
    ]))]));
    let mut follow = follow_with_recent(config(&fake.url), "app").unwrap();
    let (lines, _) = collect_lines(&mut follow, 3).await;
    assert_eq!(lines, ["before restart", "much later", "after restart"]);
}

#[tokio::test]
async fn follow_keeps_streaming_when_recent_fails() {
    let fake = fake_edge::start().await;
    fake.edge.recent(503, "log cache down");
    fake.edge
        .script(Script::Serve(vec![Action::Frame(frame(&[log(
            "app", "0", 0, 1, "live",
        )]))]));
    let query = RecentQuery {
        envelope_types: vec![Kind::Log],
        limit: Some(5),
        ..RecentQuery::default()
    };
    let mut follow = follow_with_recent_query(config(&fake.url), "app", query).unwrap();
    let (lines, others) = collect_lines(&mut follow, 1).await;
    assert_eq!(lines, ["live"]);
    assert_eq!(others.len(), 2, "{others:?}");
    assert_eq!(others[0], StreamEvent::Connected);
    assert!(
        matches!(
            &others[1],
            StreamEvent::RecentFailed(Error::Status { status: 503, .. })
        ),
        "{others:?}"
    );
}
