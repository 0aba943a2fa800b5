//! Resumable subscriptions against a real doppler: a consumer that reconnects with the cursor of
//! its last frame gets exactly what it missed, in order, then live data; beyond the doppler's
//! window it gets a gap marker with the exact count, then what the ring still holds.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use hydrant_envelope::cursor::POSITION_FIELD;
use hydrant_envelope::gap::Gap;
use hydrant_envelope::v2;
use hydrant_envelope::wire::{EnvelopeView, Fields, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::harness::*;

fn logs(source: &str, range: std::ops::Range<i64>) -> Vec<v2::Envelope> {
    range
        .map(|i| log(source, i, &format!("line {i}")))
        .collect()
}

/// What one frame held.
#[derive(Debug, Default)]
struct Frame {
    /// `(source_id, timestamp)` of every ordinary envelope.
    envelopes: Vec<(String, i64)>,
    gaps: Vec<Gap>,
    cursor: Option<String>,
}

fn parse(frame: &Bytes) -> Frame {
    let mut out = Frame::default();
    for field in Fields::new(frame) {
        match field.unwrap() {
            (1, Value::Len(bytes)) => {
                let view = EnvelopeView::parse(bytes).unwrap();
                match Gap::from_view(&view) {
                    Some(gap) => out.gaps.push(gap),
                    None => out
                        .envelopes
                        .push((view.source_id.to_owned(), view.timestamp)),
                }
            }
            (POSITION_FIELD, Value::Len(bytes)) => {
                out.cursor = Some(String::from_utf8(bytes.to_vec()).unwrap());
            }
            other => panic!("unexpected field {other:?}"),
        }
    }
    out
}

/// Reads frames until `want` envelopes arrived; returns them, the gaps and the last cursor.
async fn read(ws: &mut Ws, want: usize) -> Frame {
    let mut all = Frame::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while all.envelopes.len() < want {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out with {} of {want} envelopes: {:?}",
                    all.envelopes.len(),
                    all.envelopes
                )
            })
            .unwrap()
            .unwrap();
        let Message::Binary(bytes) = msg else {
            continue;
        };
        let f = parse(&bytes);
        all.envelopes.extend(f.envelopes);
        all.gaps.extend(f.gaps);
        if f.cursor.is_some() {
            all.cursor = f.cursor;
        }
    }
    all
}

/// Nothing more arrives within a short grace (used after the exact count was read).
async fn nothing_more(ws: &mut Ws) {
    let more = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => return parse(&b),
                Some(Ok(_)) => {}
                _ => return Frame::default(),
            }
        }
    })
    .await;
    if let Ok(f) = more {
        assert!(f.envelopes.is_empty(), "unexpected extra envelopes {f:?}");
    }
}

async fn close(edge: &Edge, mut ws: Ws, gauge: &str) {
    ws.close(None).await.unwrap();
    drop(ws);
    wait_for("the edge to drop the consumer", 10, || async {
        edge.metric(gauge, &[]).await == 0.0
    })
    .await;
}

fn stamps(f: &Frame) -> Vec<i64> {
    f.envelopes.iter().map(|(_, t)| *t).collect()
}

#[tokio::test]
async fn a_firehose_consumer_resumes_with_exactly_what_it_missed_then_live_data() {
    let doppler = RealDoppler::windowed(60).await;
    let edge = edge_reading(doppler.url()).await;
    let token = admin_token();
    let mut ws = edge.ws("/firehose/resume", Some(&token)).await.unwrap();
    for i in 0..5 {
        doppler.send(logs("a", i * 10..i * 10 + 10)).await;
    }
    let first = read(&mut ws, 50).await;
    assert_eq!(stamps(&first), (0..50).collect::<Vec<_>>());
    let cursor = first.cursor.expect("every frame carries the cursor");
    close(&edge, ws, "trafficcontroller_firehoses").await;

    // Missed while away: two sources, several batches.
    for i in 5..12 {
        let source = if i % 2 == 0 { "a" } else { "b" };
        doppler.send(logs(source, i * 10..i * 10 + 10)).await;
    }
    let mut ws = edge
        .ws(&format!("/firehose/resume?cursor={cursor}"), Some(&token))
        .await
        .unwrap();
    let missed = read(&mut ws, 70).await;
    assert!(missed.gaps.is_empty(), "{:?}", missed.gaps);
    assert_eq!(stamps(&missed), (50..120).collect::<Vec<_>>(), "in order");
    doppler.send(logs("a", 120..130)).await;
    let live = read(&mut ws, 10).await;
    assert_eq!(
        stamps(&live),
        (120..130).collect::<Vec<_>>(),
        "then live, no repeat"
    );
    nothing_more(&mut ws).await;
    assert_eq!(
        edge.metric("trafficcontroller_replayed_total", &[]).await,
        70.0
    );
    drop(ws);
    edge.stop().await;
    doppler.stop().await;
}

/// A backlog far larger than the consumer's outbox, and live data arriving while it is being
/// replayed: the live data waits in the doppler's ring, not the outbox, so the consumer gets
/// every envelope once, in order, with no gap, and the edge drops nothing.
#[tokio::test]
async fn a_resuming_consumer_catches_up_from_the_ring_without_overflowing_its_outbox() {
    const BIG: usize = 4096;
    let line = |i: i64| log("a", i, &format!("{i:0BIG$}"));
    let doppler = RealDoppler::windowed(60).await;
    let edge = start_edge_connected(hydrant_firehose::Config {
        queue_max_envelopes: 200,
        slow_consumer_timeout_secs: 60.0,
        ..config(vec![doppler.url()])
    })
    .await;
    let token = admin_token();
    let mut ws = edge.ws("/firehose/catch-up", Some(&token)).await.unwrap();
    doppler.send((0..10).map(line).collect()).await;
    let cursor = read(&mut ws, 10).await.cursor.unwrap();
    close(&edge, ws, "trafficcontroller_firehoses").await;

    // 24 MiB missed: more than the socket buffers between edge and consumer hold, so the
    // replay is still under way when the live data below arrives.
    for b in 0..60 {
        doppler
            .send((10 + b * 100..10 + (b + 1) * 100).map(line).collect())
            .await;
    }
    let mut ws = edge
        .ws(&format!("/firehose/catch-up?cursor={cursor}"), Some(&token))
        .await
        .unwrap();
    wait_for("the replay to begin", 10, || async {
        edge.metric("trafficcontroller_replayed_total", &[]).await > 0.0
    })
    .await;
    // Five times the outbox, live, while the consumer reads nothing.
    for b in 60..70 {
        doppler
            .send((10 + b * 100..10 + (b + 1) * 100).map(line).collect())
            .await;
    }
    let all = read(&mut ws, 7_000).await;
    assert!(all.gaps.is_empty(), "{:?}", all.gaps);
    assert_eq!(
        stamps(&all),
        (10..7_010).collect::<Vec<_>>(),
        "once, in order"
    );
    nothing_more(&mut ws).await;
    assert_eq!(
        edge.metric("trafficcontroller_dropped_total", &[]).await,
        0.0,
        "the edge dropped nothing"
    );
    drop(ws);
    edge.stop().await;
    doppler.stop().await;
}

#[tokio::test]
async fn an_app_stream_resumes_after_an_edge_restart_with_only_its_source() {
    let doppler = RealDoppler::windowed(60).await;
    let edge = edge_reading(doppler.url()).await;
    let token = admin_token();
    let mut ws = edge.ws("/apps/web/stream", Some(&token)).await.unwrap();
    doppler.send(logs("web", 0..5)).await;
    let first = read(&mut ws, 5).await;
    let cursor = first.cursor.unwrap();
    drop(ws);
    edge.stop().await;

    // The edge is gone; the data keeps arriving at the doppler.
    doppler.send(logs("web", 5..10)).await;
    doppler.send(logs("worker", 100..110)).await;
    doppler.send(logs("web", 10..15)).await;
    let edge = start_edge(config(vec![doppler.url()])).await;
    let mut ws = edge
        .ws(&format!("/apps/web/stream?cursor={cursor}"), Some(&token))
        .await
        .unwrap();
    let missed = read(&mut ws, 10).await;
    assert_eq!(stamps(&missed), (5..15).collect::<Vec<_>>());
    assert!(missed.envelopes.iter().all(|(s, _)| s == "web"));
    doppler.send(logs("web", 15..17)).await;
    assert_eq!(stamps(&read(&mut ws, 2).await), [15, 16]);
    nothing_more(&mut ws).await;
    drop(ws);
    edge.stop().await;
    doppler.stop().await;
}

#[tokio::test]
async fn beyond_the_window_a_gap_marker_counts_exactly_what_is_gone() {
    let doppler = RealDoppler::windowed(1).await;
    let edge = edge_reading(doppler.url()).await;
    let token = admin_token();
    let mut ws = edge.ws("/firehose/late", Some(&token)).await.unwrap();
    doppler.send(logs("a", 0..10)).await;
    let cursor = read(&mut ws, 10).await.cursor.unwrap();
    close(&edge, ws, "trafficcontroller_firehoses").await;

    doppler.send(logs("a", 10..40)).await;
    // The window is one second: past it, the next batch evicts the 30 above.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    doppler.send(logs("a", 40..50)).await;
    let mut ws = edge
        .ws(&format!("/firehose/late?cursor={cursor}"), Some(&token))
        .await
        .unwrap();
    let got = read(&mut ws, 10).await;
    assert_eq!(got.gaps.len(), 1, "{:?}", got.gaps);
    let gap = &got.gaps[0];
    assert_eq!(
        (gap.dropped, gap.hop.as_str(), gap.reason.as_str()),
        (30, "doppler", "replay_window")
    );
    assert_eq!(stamps(&got), (40..50).collect::<Vec<_>>());
    drop(ws);
    edge.stop().await;
    doppler.stop().await;
}

/// Past the window the marker says whose envelopes were lost: a firehose consumer's names both
/// sources with their exact counts, adding up to the total; an app stream's counts only its
/// app's, under its source id.
#[tokio::test]
async fn beyond_the_window_the_marker_says_whose_envelopes_were_lost() {
    let doppler = RealDoppler::windowed(1).await;
    let edge = edge_reading(doppler.url()).await;
    let token = admin_token();
    let mut fire = edge.ws("/firehose/whose", Some(&token)).await.unwrap();
    let mut app = edge.ws("/apps/web/stream", Some(&token)).await.unwrap();
    doppler.send(logs("web", 0..3)).await;
    let fire_cursor = read(&mut fire, 3).await.cursor.unwrap();
    let app_cursor = read(&mut app, 3).await.cursor.unwrap();
    close(&edge, fire, "trafficcontroller_firehoses").await;
    close(&edge, app, "trafficcontroller_app_streams").await;

    // While both are away: 20 of web's and 35 of worker's, in three batches.
    doppler.send(logs("web", 3..13)).await;
    doppler.send(logs("worker", 100..135)).await;
    doppler.send(logs("web", 13..23)).await;
    // The window is one second: past it, the next batch evicts the 55 above.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    doppler.send(logs("worker", 200..205)).await;

    let mut fire = edge
        .ws(
            &format!("/firehose/whose?cursor={fire_cursor}"),
            Some(&token),
        )
        .await
        .unwrap();
    let got = read(&mut fire, 5).await;
    assert_eq!(got.gaps.len(), 1, "{:?}", got.gaps);
    let gap = &got.gaps[0];
    assert_eq!((gap.dropped, gap.reason.as_str()), (55, "replay_window"));
    assert_eq!(
        gap.by_source.top,
        [("worker".to_owned(), 35), ("web".to_owned(), 20)],
        "both sources, most lost first"
    );
    assert_eq!(gap.by_source.other, 0);
    assert_eq!(gap.by_source.total(), gap.dropped);
    assert_eq!(stamps(&got), (200..205).collect::<Vec<_>>());

    let mut app = edge
        .ws(
            &format!("/apps/web/stream?cursor={app_cursor}"),
            Some(&token),
        )
        .await
        .unwrap();
    doppler.send(logs("web", 23..25)).await;
    let got = read(&mut app, 2).await;
    assert_eq!(stamps(&got), [23, 24]);
    assert_eq!(got.gaps.len(), 1, "{:?}", got.gaps);
    let gap = &got.gaps[0];
    assert_eq!(
        (gap.source_id.as_str(), gap.dropped, gap.reason.as_str()),
        ("web", 20, "replay_window"),
        "only the app's own envelopes, not worker's"
    );
    assert_eq!(gap.by_source.top, [("web".to_owned(), 20)]);
    assert_eq!(gap.by_source.total(), 20);
    drop((fire, app));
    edge.stop().await;
    doppler.stop().await;
}

#[tokio::test]
async fn json_frames_carry_the_cursor_and_a_bad_cursor_is_refused() {
    let doppler = RealDoppler::windowed(60).await;
    let edge = edge_reading(doppler.url()).await;
    let token = admin_token();
    let mut ws = edge
        .ws("/firehose/json?format=json", Some(&token))
        .await
        .unwrap();
    doppler.send(logs("a", 0..3)).await;
    let text = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => break t,
            _ => continue,
        }
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v["cursor"].as_str().is_some_and(|c| !c.is_empty()), "{v}");
    let refused = edge
        .ws("/firehose/json?cursor=not-a-cursor", Some(&token))
        .await;
    assert!(
        refused.is_err(),
        "a malformed cursor gets 400, not a stream"
    );
    drop(ws);
    edge.stop().await;
    doppler.stop().await;
}

/// `(id, timestamps)` of every data event in `text`.
fn sse_events(text: &str) -> Vec<(Option<String>, Vec<i64>)> {
    text.split("\n\n")
        .filter_map(|event| {
            let id = event
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .map(str::to_owned);
            let data = event.lines().find_map(|l| l.strip_prefix("data: {"))?;
            let v: serde_json::Value = serde_json::from_str(&format!("{{{data}")).unwrap();
            let stamps = v["batch"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["log"].is_object())
                .map(|e| e["timestamp"].as_str().unwrap().parse().unwrap())
                .collect();
            Some((id, stamps))
        })
        .collect()
}

#[tokio::test]
async fn an_sse_reader_resumes_from_its_last_event_id() {
    let doppler = RealDoppler::windowed(60).await;
    let edge = edge_reading(doppler.url()).await;
    let token = admin_token();
    let (status, mut body) = http_stream(edge.http, "/v2/read?source_id=web&log", &token).await;
    assert_eq!(status, 200);
    wait_for("the SSE subscription", 5, || async {
        edge.metric("trafficcontroller_sse_streams", &[]).await == 1.0
    })
    .await;
    doppler.send(logs("web", 0..3)).await;
    let mut text = String::new();
    sse_until(&mut body, &mut text, "\"timestamp\":\"2\"").await;
    let events = sse_events(&text);
    let id = events.last().and_then(|(id, _)| id.clone()).expect("an id");
    drop(body);
    wait_for("the SSE stream to be released", 5, || async {
        edge.metric("trafficcontroller_sse_streams", &[]).await == 0.0
    })
    .await;
    doppler.send(logs("web", 3..6)).await;
    let (status, mut body) = http_stream(
        edge.http,
        &format!("/v2/read?source_id=web&log&cursor={id}"),
        &token,
    )
    .await;
    assert_eq!(status, 200);
    let mut text = String::new();
    sse_until(&mut body, &mut text, "\"timestamp\":\"5\"").await;
    let stamps: Vec<i64> = sse_events(&text).into_iter().flat_map(|(_, s)| s).collect();
    assert_eq!(stamps, [3, 4, 5], "exactly what it missed");
    drop(body);
    edge.stop().await;
    doppler.stop().await;
}

/// An edge on `http`'s port (the one a restarted edge comes back on).
async fn start_edge_on(config: hydrant_firehose::Config, http: SocketAddr) -> Edge {
    let listeners = hydrant_runtime::bind_on::<hydrant_firehose::TrafficController>(|spec| {
        if spec.name == "http" {
            http.to_string()
        } else {
            "127.0.0.1:0".to_owned()
        }
    })
    .await
    .unwrap();
    let admin = listeners.local_addr("admin").unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(hydrant_runtime::run::<hydrant_firehose::TrafficController>(
        config,
        listeners,
        shutdown.clone(),
    ));
    Edge {
        http,
        admin,
        shutdown,
        task,
    }
}

/// What `hydrant logs -f` does: the firehose client library following one app. The edge under
/// it is stopped and started again while lines keep coming; the client reconnects by itself
/// with its cursor and the follower sees every line once, in order.
#[tokio::test]
async fn a_follow_through_the_client_library_survives_an_edge_restart() {
    use hydrant_firehose_client::{FirehoseClient, StreamEvent, Subscription};
    let doppler = RealDoppler::windowed(60).await;
    let edge = edge_reading(doppler.url()).await;
    let http = edge.http;
    let mut follow = FirehoseClient::connect(
        edge.client_config(),
        Subscription::App {
            source_id: "web".to_owned(),
        },
    )
    .unwrap();
    let mut got: Vec<i64> = Vec::new();
    let mut gaps = 0;
    let mut read_to = async |follow: &mut FirehoseClient, got: &mut Vec<i64>, want: usize| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while got.len() < want {
            let event = tokio::time::timeout_at(deadline, follow.next())
                .await
                .unwrap_or_else(|_| panic!("{} of {want} lines: {got:?}", got.len()))
                .unwrap();
            match event {
                StreamEvent::Batch(b) => got.extend(b.iter().map(|v| v.timestamp)),
                StreamEvent::Gap(_) => gaps += 1,
                _ => {}
            }
        }
    };
    assert!(matches!(follow.next().await, Some(StreamEvent::Connected)));
    wait_for("the follow to subscribe", 5, || async {
        edge.metric("trafficcontroller_app_streams", &[]).await == 1.0
    })
    .await;
    doppler.send(logs("web", 0..20)).await;
    read_to(&mut follow, &mut got, 20).await;

    edge.stop().await;
    // Lines keep coming while there is no edge at all.
    doppler.send(logs("web", 20..40)).await;
    doppler.send(logs("worker", 0..10)).await;
    doppler.send(logs("web", 40..60)).await;
    let edge = start_edge_on(config(vec![doppler.url()]), http).await;
    read_to(&mut follow, &mut got, 60).await;
    doppler.send(logs("web", 60..70)).await;
    read_to(&mut follow, &mut got, 70).await;
    assert_eq!(
        got,
        (0..70).collect::<Vec<_>>(),
        "every line once, in order"
    );
    assert_eq!(gaps, 0);
    assert!(follow.stats().connects >= 2, "it did reconnect");
    drop(follow);
    edge.stop().await;
    doppler.stop().await;
}

/// A consumer with a cursor that stops reading until its outbox would overflow loses nothing:
/// the edge closes its stream ("fell behind") instead of dropping, and the client library
/// reconnects with its cursor and reads the rest from the doppler's ring. A stock consumer
/// without a cursor, beside it, still has its drops counted.
#[tokio::test]
async fn a_consumer_with_a_cursor_that_falls_behind_catches_up_from_the_ring_without_loss() {
    use hydrant_firehose_client::{ClientConfig, FirehoseClient, StreamEvent, Subscription};
    const N: i64 = 2000;
    let doppler = RealDoppler::windowed(60).await;
    let edge = start_edge_connected(hydrant_firehose::Config {
        queue_max_envelopes: 64,
        queue_max_bytes: 4 * 1024 * 1024,
        // Far longer than the test: neither consumer is closed for slowness.
        slow_consumer_timeout_secs: 60.0,
        ..config(vec![doppler.url()])
    })
    .await;
    let client_config = ClientConfig {
        // The library holds one event: the consumer's stall reaches the socket at once.
        buffer_events: 1,
        ..edge.client_config()
    };
    let mut follow = FirehoseClient::connect(
        client_config,
        Subscription::Firehose {
            subscription_id: "catch-up".to_owned(),
        },
    )
    .unwrap();
    assert!(matches!(follow.next().await, Some(StreamEvent::Connected)));
    // A stock consumer: no cursor, a small receive buffer, never reading.
    let _plain = ws_connect(
        edge.http,
        "/firehose/plain",
        Some(&admin_token()),
        Some(16 * 1024),
    )
    .await
    .unwrap();
    wait_for("both consumers to subscribe", 5, || async {
        edge.metric("trafficcontroller_firehoses", &[]).await == 2.0
    })
    .await;

    // The consumer stops reading while far more than its outbox and socket buffers arrive.
    let payload = "z".repeat(8 * 1024);
    for start in (0..N).step_by(50) {
        doppler
            .send(
                (start..start + 50)
                    .map(|i| log("web", i, &payload))
                    .collect(),
            )
            .await;
    }
    wait_for("the consumer with a cursor to fall behind", 20, || async {
        edge.metric("trafficcontroller_fell_behind_total", &[])
            .await
            >= 1.0
    })
    .await;
    wait_for("the stock consumer's drops", 20, || async {
        edge.dropped("slow_consumer").await > 0.0
    })
    .await;

    // Reading again: every envelope once, in order, and no gap.
    let mut got: Vec<i64> = Vec::new();
    let mut gaps = Vec::new();
    let mut closes = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < N as usize {
        let event = tokio::time::timeout_at(deadline, follow.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {N} envelopes", got.len()))
            .unwrap();
        match event {
            StreamEvent::Batch(b) => got.extend(b.iter().map(|v| v.timestamp)),
            StreamEvent::Gap(g) => gaps.push(format!("{g:?}")),
            StreamEvent::Closed { code, reason } => closes.push((code, reason)),
            _ => {}
        }
    }
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "every envelope once, in order"
    );
    assert!(gaps.is_empty(), "nothing lost: {gaps:?}");
    assert!(
        closes
            .iter()
            .any(|(code, reason)| *code == 1008 && reason.contains("Fell behind")),
        "closed to catch up: {closes:?}"
    );
    assert!(follow.stats().connects >= 2, "it did reconnect");
    assert!(
        edge.metric("trafficcontroller_replayed_total", &[]).await > 0.0,
        "the rest came from the ring"
    );
    drop(follow);
    edge.stop().await;
    doppler.stop().await;
}
