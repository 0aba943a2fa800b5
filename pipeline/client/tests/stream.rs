//! The WebSocket stream against a scripted fake edge over real sockets: batches and gaps in
//! order, sequence jumps, reconnect with backoff, close 1008, final errors on 401/404, giving
//! up, malformed frames, flow control towards a slow consumer, and closing on drop.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/fake_edge.rs"]
mod fake_edge;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fake_edge::{Action, Script, TOKEN, eventually, firehose, frame, log, next};
use futures_util::StreamExt as _;
use hydrant_envelope::gap::{GAP_SOURCE, Gap};
use hydrant_firehose_client::{
    Backoff, Batch, ClientConfig, Error, FirehoseClient, StreamEvent, Subscription,
};

fn config(url: &str) -> ClientConfig {
    ClientConfig {
        url: url.to_owned(),
        token: TOKEN.to_owned(),
        reconnect: Backoff {
            initial_ms: 50,
            max_ms: 400,
            jitter: 0.0,
            reset_after_ms: 60_000,
        },
        ..ClientConfig::default()
    }
}

fn payloads(batch: &Batch) -> Vec<String> {
    batch
        .iter()
        .map(|v| String::from_utf8_lossy(v.log().unwrap().0).into_owned())
        .collect()
}

#[track_caller]
fn expect_batch(event: StreamEvent, want: &[&str]) {
    match event {
        StreamEvent::Batch(b) => assert_eq!(payloads(&b), want),
        other => panic!("expected a batch of {want:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn yields_batches_and_gap_markers_in_stream_order() {
    let fake = fake_edge::start().await;
    let marker = Gap {
        source_id: GAP_SOURCE.to_owned(),
        dropped: 1234,
        hop: "firehose".to_owned(),
        reason: "slow_consumer".to_owned(),
        by_source: Default::default(),
    };
    let mut f = hydrant_envelope::wire::BatchBuilder::default();
    for e in [log("app", "0", 0, 1, "a"), log("app", "0", 0, 2, "b")] {
        f.push(&hydrant_envelope::wire::encode(&e));
    }
    f.push(&marker.encode());
    f.push(&hydrant_envelope::wire::encode(&log("app", "0", 0, 3, "c")));
    fake.edge
        .script(Script::Serve(vec![Action::Frame(f.take())]));

    let mut client = FirehoseClient::connect(config(&fake.url), firehose()).unwrap();
    assert_eq!(next(&mut client).await, StreamEvent::Connected);
    expect_batch(next(&mut client).await, &["a", "b"]);
    assert_eq!(next(&mut client).await, StreamEvent::Gap(marker));
    expect_batch(next(&mut client).await, &["c"]);

    let attempts = fake.edge.attempts.lock().unwrap().clone();
    assert_eq!(attempts[0].1.as_deref(), Some("Bearer good-token"));
    assert_eq!(attempts[0].2, "/firehose/nozzle");
    let stats = client.stats();
    assert_eq!(
        (stats.envelopes, stats.gap_markers, stats.marked_lost),
        (3, 1, 1234)
    );
}

#[tokio::test]
async fn sequence_jumps_surface_as_upstream_gaps() {
    let fake = fake_edge::start().await;
    fake.edge.script(Script::Serve(vec![
        Action::Frame(frame(&[
            log("app", "0", 1, 1, "a"),
            log("app", "0", 2, 2, "b"),
        ])),
        Action::Frame(frame(&[log("app", "1", 7, 3, "other instance")])),
        Action::Frame(frame(&[
            log("app", "0", 5, 4, "e"),
            log("app", "1", 8, 5, "f"),
        ])),
    ]));
    let mut client = FirehoseClient::connect(
        config(&fake.url),
        Subscription::App {
            source_id: "app".to_owned(),
        },
    )
    .unwrap();
    assert_eq!(next(&mut client).await, StreamEvent::Connected);
    expect_batch(next(&mut client).await, &["a", "b"]);
    expect_batch(next(&mut client).await, &["other instance"]);
    assert_eq!(
        next(&mut client).await,
        StreamEvent::Gap(Gap {
            source_id: "app".to_owned(),
            dropped: 2,
            hop: "upstream".to_owned(),
            reason: "sequence_gap".to_owned(),
            by_source: Default::default(),
        })
    );
    expect_batch(next(&mut client).await, &["e", "f"]);
    assert_eq!(client.stats().sequence_lost, 2);
    assert_eq!(fake.edge.attempts.lock().unwrap()[0].2, "/apps/app/stream");
}

#[tokio::test]
async fn reconnects_with_backoff_after_drops() {
    let fake = fake_edge::start().await;
    for text in ["one", "two"] {
        fake.edge.script(Script::Serve(vec![
            Action::Frame(frame(&[log("app", "0", 0, 1, text)])),
            Action::Drop,
        ]));
    }
    fake.edge
        .script(Script::Serve(vec![Action::Frame(frame(&[log(
            "app", "0", 0, 1, "three",
        )]))]));
    let mut client = FirehoseClient::connect(config(&fake.url), firehose()).unwrap();

    assert_eq!(next(&mut client).await, StreamEvent::Connected);
    expect_batch(next(&mut client).await, &["one"]);
    for (text, expected_delay) in [("two", 50), ("three", 100)] {
        let StreamEvent::Disconnected { reason, retry_in } = next(&mut client).await else {
            panic!("expected a disconnect");
        };
        assert!(
            reason.contains("closed") || reason.contains("lost"),
            "{reason}"
        );
        // Doubling: the connections were shorter than reset_after.
        assert_eq!(retry_in, Duration::from_millis(expected_delay));
        let lost_at = Instant::now();
        assert_eq!(next(&mut client).await, StreamEvent::Connected);
        // It came back, and not before the backoff it announced.
        let took = lost_at.elapsed();
        assert!(took >= retry_in - Duration::from_millis(20), "{took:?}");
        assert!(took < retry_in + Duration::from_secs(2), "{took:?}");
        expect_batch(next(&mut client).await, &[text]);
    }
    let attempts = fake.edge.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 3);
    let gap1 = attempts[1].0 - attempts[0].0;
    let gap2 = attempts[2].0 - attempts[1].0;
    assert!(gap1 >= Duration::from_millis(50), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(100), "{gap2:?}");
    let stats = client.stats();
    assert_eq!((stats.connects, stats.disconnects), (3, 2));
    // Ledger: every frame the edge sent was delivered.
    assert_eq!(
        stats.frames,
        fake.edge.frames_sent.load(Ordering::SeqCst) as u64
    );
}

/// A fresh connection sends an empty cursor: the edge then closes a stream that falls behind
/// (to be resumed from the rings) instead of dropping from it.
#[tokio::test]
async fn the_first_connection_asks_for_cursors_with_an_empty_one() {
    let fake = fake_edge::start().await;
    fake.edge
        .script(Script::Serve(vec![Action::Frame(frame(&[log(
            "app", "0", 0, 1, "one",
        )]))]));
    let mut client = FirehoseClient::connect(config(&fake.url), firehose()).unwrap();
    assert_eq!(next(&mut client).await, StreamEvent::Connected);
    expect_batch(next(&mut client).await, &["one"]);
    let queries = fake.edge.queries.lock().unwrap().clone();
    assert_eq!(queries, ["cursor="]);
}

#[tokio::test]
async fn every_reconnect_resumes_from_the_cursor_of_the_last_frame() {
    let fake = fake_edge::start().await;
    let mut with_cursor = bytes::BytesMut::from(&frame(&[log("app", "0", 0, 1, "one")])[..]);
    hydrant_envelope::cursor::put_frame_cursor(&mut with_cursor, "AQEone");
    fake.edge.script(Script::Serve(vec![
        Action::Frame(with_cursor.freeze()),
        Action::Drop,
    ]));
    fake.edge
        .script(Script::Serve(vec![Action::Frame(frame(&[log(
            "app", "0", 0, 2, "two",
        )]))]));
    let mut client =
        FirehoseClient::resume(config(&fake.url), firehose(), Some("AQEkept")).unwrap();
    assert_eq!(next(&mut client).await, StreamEvent::Connected);
    match next(&mut client).await {
        StreamEvent::Batch(b) => {
            assert_eq!(payloads(&b), ["one"]);
            assert_eq!(b.cursor(), Some("AQEone"), "a consumer can keep it");
        }
        other => panic!("expected a batch, got {other:?}"),
    }
    assert!(matches!(
        next(&mut client).await,
        StreamEvent::Disconnected { .. }
    ));
    assert_eq!(next(&mut client).await, StreamEvent::Connected);
    expect_batch(next(&mut client).await, &["two"]);
    let queries = fake.edge.queries.lock().unwrap().clone();
    assert_eq!(queries, ["cursor=AQEkept", "cursor=AQEone"]);
    assert_eq!(client.stats().malformed, 0, "the cursor is no envelope");
}

#[tokio::test]
async fn slow_consumer_close_is_reported_then_reconnects() {
    let fake = fake_edge::start().await;
    fake.edge.script(Script::Serve(vec![Action::Close(
        1008,
        "slow consumer \x1b[2J",
    )]));
    fake.edge
        .script(Script::Serve(vec![Action::Frame(frame(&[log(
            "app", "0", 0, 1, "back",
        )]))]));
    let mut client = FirehoseClient::connect(config(&fake.url), firehose()).unwrap();
    assert_eq!(next(&mut client).await, StreamEvent::Connected);
    assert_eq!(
        next(&mut client).await,
        StreamEvent::Closed {
            code: 1008,
            reason: "slow consumer \\e[2J".to_owned()
        }
    );
    let StreamEvent::Disconnected { reason, retry_in } = next(&mut client).await else {
        panic!("expected a disconnect");
    };
    assert!(reason.contains("1008"), "{reason}");
    assert_eq!(retry_in, Duration::from_millis(50));
    assert_eq!(next(&mut client).await, StreamEvent::Connected);
    expect_batch(next(&mut client).await, &["back"]);
}

#[tokio::test]
async fn rejected_token_is_final_with_a_clear_message() {
    let fake = fake_edge::start().await;
    let mut cfg = config(&fake.url);
    cfg.token = "expired".to_owned();
    let mut client = FirehoseClient::connect(cfg, firehose()).unwrap();
    let StreamEvent::Fatal(error) = next(&mut client).await else {
        panic!("expected a final error");
    };
    assert_eq!(error, Error::Unauthorized);
    assert_eq!(
        error.to_string(),
        "token rejected by the firehose (401): log in again"
    );
    // The stream is over: the reader task has ended, so no retry can follow.
    assert_eq!(client.next().await, None);
    assert_eq!(fake.edge.attempt_count(), 1);
}

#[tokio::test]
async fn unknown_app_is_final_with_a_clear_message() {
    let fake = fake_edge::start().await;
    fake.edge.script(Script::Reject(404));
    let mut client = FirehoseClient::connect(
        config(&fake.url),
        Subscription::App {
            source_id: "no/such app".to_owned(),
        },
    )
    .unwrap();
    let StreamEvent::Fatal(error) = next(&mut client).await else {
        panic!("expected a final error");
    };
    assert_eq!(
        error.to_string(),
        "app \"no/such app\" not found or not visible to you (404)"
    );
    assert_eq!(client.next().await, None);
    assert_eq!(fake.edge.attempt_count(), 1);
    assert_eq!(
        fake.edge.attempts.lock().unwrap()[0].2,
        "/apps/no%2Fsuch%20app/stream"
    );
}

#[tokio::test]
async fn server_errors_are_retried_with_escaped_reasons() {
    let fake = fake_edge::start().await;
    fake.edge.script(Script::Reject(503));
    let mut client = FirehoseClient::connect(config(&fake.url), firehose()).unwrap();
    let StreamEvent::Disconnected { reason, .. } = next(&mut client).await else {
        panic!("expected a retry");
    };
    assert!(reason.contains("503"), "{reason}");
    assert!(
        !reason.contains('\x1b'),
        "server text is escaped: {reason:?}"
    );
    assert_eq!(next(&mut client).await, StreamEvent::Connected);
}

#[tokio::test]
async fn gives_up_after_max_attempts_when_nothing_listens() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = config(&format!("http://127.0.0.1:{port}"));
    cfg.max_attempts = 3;
    let mut client = FirehoseClient::connect(cfg, firehose()).unwrap();
    let mut retries = Vec::new();
    loop {
        match next(&mut client).await {
            StreamEvent::Disconnected { reason, retry_in } => {
                assert!(reason.contains("cannot connect"), "{reason}");
                retries.push(retry_in.as_millis());
            }
            StreamEvent::Fatal(Error::GaveUp { attempts, last }) => {
                assert_eq!(attempts, 3);
                assert!(last.contains("cannot connect"), "{last}");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(retries, [50, 100]);
    assert_eq!(client.next().await, None);
}

#[tokio::test]
async fn malformed_frames_are_counted_gaps_not_fatal() {
    let fake = fake_edge::start().await;
    fake.edge.script(Script::Serve(vec![
        Action::Frame(Bytes::from_static(b"\x0a\x7fnot an envelope")),
        Action::Frame(frame(&[log("app", "0", 0, 1, "fine")])),
    ]));
    let mut client = FirehoseClient::connect(config(&fake.url), firehose()).unwrap();
    assert_eq!(next(&mut client).await, StreamEvent::Connected);
    let StreamEvent::Gap(gap) = next(&mut client).await else {
        panic!("expected a gap");
    };
    assert_eq!(
        (gap.hop.as_str(), gap.reason.as_str()),
        ("client", "malformed_envelope")
    );
    expect_batch(next(&mut client).await, &["fine"]);
    assert_eq!(client.stats().malformed, 1);
}

#[tokio::test]
async fn a_slow_consumer_is_not_buffered_without_bound() {
    let fake = fake_edge::start().await;
    // 512 KiB frames: 64 envelopes of 8 KiB.
    let line = "x".repeat(8 * 1024);
    let envelopes: Vec<_> = (0..64).map(|i| log("app", "0", 0, i, &line)).collect();
    let big = frame(&envelopes);
    let total = 200;
    fake.edge
        .script(Script::Serve(vec![Action::Flood(big, total)]));
    let mut cfg = config(&fake.url);
    cfg.buffer_events = 4;
    let mut client = FirehoseClient::connect(cfg, firehose()).unwrap();
    assert_eq!(next(&mut client).await, StreamEvent::Connected);

    // Consume nothing; wait until the edge can send no more.
    let mut last = usize::MAX;
    let mut stable_since = Instant::now();
    eventually("the edge to stall on a full socket", || {
        let sent = fake.edge.frames_sent.load(Ordering::SeqCst);
        if sent != last {
            last = sent;
            stable_since = Instant::now();
        }
        stable_since.elapsed() > Duration::from_millis(500)
    })
    .await;
    eprintln!("edge stalled after {last} of {total} frames");
    // 4 queued events plus what fits in the socket buffers, far from the 100 MiB sent.
    assert!(
        last < total / 2,
        "the client read {last} of {total} frames ahead"
    );

    // Nothing is lost once the consumer catches up.
    let mut envelopes_seen = 0;
    while envelopes_seen < total * 64 {
        match client.next().await.unwrap() {
            StreamEvent::Batch(b) => envelopes_seen += b.len(),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(client.stats().envelopes, (total * 64) as u64);
}

#[tokio::test]
async fn dropping_the_client_closes_the_socket() {
    let fake = fake_edge::start().await;
    let mut client = FirehoseClient::connect(config(&fake.url), firehose()).unwrap();
    // Also usable as a futures Stream.
    assert_eq!(client.next().await, Some(StreamEvent::Connected));
    assert_eq!(fake.edge.open_streams.load(Ordering::SeqCst), 1);
    drop(client);
    eventually("the edge to see the close", || {
        fake.edge.closed_streams.load(Ordering::SeqCst) == 1
    })
    .await;
}

#[tokio::test]
async fn is_a_futures_stream() {
    let fake = fake_edge::start().await;
    fake.edge
        .script(Script::Serve(vec![Action::Frame(frame(&[log(
            "app", "0", 0, 1, "s",
        )]))]));
    let client = FirehoseClient::connect(config(&fake.url), firehose()).unwrap();
    let events: Vec<StreamEvent> =
        tokio::time::timeout(Duration::from_secs(10), client.take(2).collect())
            .await
            .unwrap();
    assert_eq!(events[0], StreamEvent::Connected);
    expect_batch(events[1].clone(), &["s"]);
}

#[tokio::test]
async fn config_errors_are_reported_before_connecting() {
    let err = FirehoseClient::connect(
        ClientConfig {
            url: "ftp://edge".to_owned(),
            ..ClientConfig::default()
        },
        firehose(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("`url`"), "{err}");
    let err = FirehoseClient::connect(
        ClientConfig {
            token: "bad\ntoken".to_owned(),
            ..ClientConfig::default()
        },
        firehose(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("`token`"), "{err}");
}

#[tokio::test]
async fn a_silent_edge_is_cut_but_a_quiet_healthy_one_is_kept() {
    let fake = fake_edge::start().await;
    // First connection: the edge stops reading, so the client's pings go unanswered.
    fake.edge
        .script(Script::Serve(vec![Action::Wait(Duration::from_secs(30))]));
    // Second: quiet, but it answers pings.
    fake.edge.script(Script::Serve(Vec::new()));
    let mut cfg = config(&fake.url);
    cfg.ping_interval_ms = 50;
    cfg.idle_timeout_ms = 200;
    let mut client = FirehoseClient::connect(cfg, firehose()).unwrap();
    assert_eq!(next(&mut client).await, StreamEvent::Connected);
    let StreamEvent::Disconnected { reason, .. } = next(&mut client).await else {
        panic!("expected the silent connection to be cut");
    };
    assert_eq!(reason, "no frame from the firehose for 200 ms");
    assert_eq!(next(&mut client).await, StreamEvent::Connected);
    // Several idle timeouts pass; pongs keep the quiet connection alive.
    let quiet = tokio::time::timeout(Duration::from_millis(800), client.next()).await;
    assert!(quiet.is_err(), "a healthy quiet stream was cut: {quiet:?}");
    assert_eq!(client.stats().connects, 2);
}
