//! Slow consumers: they lose their own oldest data (counted, and told in-band), are closed
//! with 1008 when they stay behind, and never slow anyone else. Dead clients are closed by
//! the keepalive.

use std::time::Duration;

use futures_util::StreamExt as _;
use hydrant_firehose::Config;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

const N: usize = 1600;
const CHUNK: usize = 40;

#[tokio::test]
async fn a_slow_consumer_loses_its_oldest_data_is_told_and_closed_while_a_fast_one_gets_all() {
    let doppler = RunningDoppler::start().await;
    let edge = start_edge_connected(Config {
        queue_max_envelopes: 64,
        queue_max_bytes: 512 * 1024,
        frame_max_envelopes: 16,
        // Long enough that the whole push below finishes first, so every envelope was routed
        // to the slow consumer and its own ledger must balance against N.
        slow_consumer_timeout_secs: 2.0,
        ..config(vec![doppler.url()])
    })
    .await;
    let t = admin_token();
    let mut fast = edge.ws("/firehose/fast", Some(&t)).await.unwrap();
    // A tiny receive buffer: the kernel cannot hide the slowness for long.
    let mut slow = ws_connect(edge.http, "/firehose/slow", Some(&t), Some(16 * 1024))
        .await
        .unwrap();

    let payload = "x".repeat(8 * 1024);
    let sent: Vec<_> = (0..N as i64).map(|i| log("web", i, &payload)).collect();
    let mut fast_got = Vec::new();
    for chunk in sent.chunks(CHUNK) {
        doppler.fake.push_envelopes(chunk).await;
        // Lockstep with the fast reader, so it never has more than a chunk queued.
        fast_got.extend(collect(&mut fast, chunk.len()).await);
    }
    assert_eq!(fast_got.len(), N);
    assert!(
        fast_got
            .iter()
            .zip(&sent)
            .all(|(a, b)| a.timestamp == b.timestamp),
        "the fast consumer got everything, in order"
    );
    assert_eq!(
        edge.metric("trafficcontroller_slow_consumers_total", &[])
            .await,
        0.0,
        "the push should finish before the slow-consumer timeout"
    );

    wait_for("the slow consumer to be cut off", 20, || async {
        edge.metric("trafficcontroller_slow_consumers_total", &[])
            .await
            == 1.0
    })
    .await;
    // Now read everything the slow consumer was sent.
    let mut data = Vec::new();
    let mut gaps = 0u64;
    let close = loop {
        match next_frame(&mut slow, 10).await {
            Frame::Batch(b) => {
                for e in b {
                    match is_gap(&e) {
                        Some(n) => gaps += n,
                        None => data.push(e.timestamp),
                    }
                }
            }
            Frame::Closed(c) => break c,
            Frame::Json(_) => panic!("binary expected"),
        }
    };
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 1008);
    assert!(
        reason.contains("too slow") && reason.contains("subscription id"),
        "{reason}"
    );
    assert!(gaps > 0, "the slow consumer was told it lost data");
    // What it got is in order and is the oldest part plus whatever came after its drops.
    assert!(data.windows(2).all(|w| w[0] < w[1]));
    // The slow consumer's own ledger: delivered + reported lost = everything sent.
    assert_eq!(data.len() as u64 + gaps, N as u64);
    // ... and the role's counters say the same.
    let dropped = edge.dropped("slow_consumer").await + edge.dropped("closed").await;
    assert_eq!(dropped, gaps as f64);
    assert_eq!(
        edge.metric("trafficcontroller_ingress_total", &[]).await,
        N as f64
    );
    assert_eq!(
        edge.metric(
            "trafficcontroller_egress_total",
            &[("endpoint", "firehose")]
        )
        .await,
        (N + data.len()) as f64
    );
    // The fast consumer is still being served.
    doppler
        .fake
        .push_envelopes(&[log("web", 99_999, "after")])
        .await;
    assert_eq!(collect(&mut fast, 1).await[0].timestamp, 99_999);
    edge.stop().await;
}

#[tokio::test]
async fn a_consumer_that_catches_up_gets_a_gap_marker_then_the_newest_data() {
    let doppler = RunningDoppler::start().await;
    let edge = start_edge_connected(Config {
        queue_max_envelopes: 10,
        slow_consumer_timeout_secs: 30.0,
        ..config(vec![doppler.url()])
    })
    .await;
    let mut ws = ws_connect(
        edge.http,
        "/firehose/burst",
        Some(&admin_token()),
        Some(8 * 1024),
    )
    .await
    .unwrap();
    // A burst far larger than queue + socket buffers, while the client is not reading.
    let payload = "y".repeat(16 * 1024);
    let burst: Vec<_> = (0..600).map(|i| log("web", i, &payload)).collect();
    for chunk in burst.chunks(50) {
        doppler.fake.push_envelopes(chunk).await;
    }
    wait_for("drops", 10, || async {
        edge.dropped("slow_consumer").await > 0.0
    })
    .await;
    wait_for("the burst to be routed", 10, || async {
        edge.metric("trafficcontroller_ingress_total", &[]).await == 600.0
    })
    .await;
    // Catch up. Every marker sits exactly at its hole: the envelope after it is the one after
    // the last delivered plus the number lost; the newest envelopes survive.
    let mut seen: Vec<i64> = Vec::new();
    let mut markers = Vec::new();
    while seen.last() != Some(&599) {
        match next_frame(&mut ws, 10).await {
            Frame::Batch(b) => {
                for e in b {
                    match is_gap(&e) {
                        Some(n) => markers.push((seen.len(), n)),
                        None => seen.push(e.timestamp),
                    }
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(!markers.is_empty(), "the consumer was told");
    let lost: u64 = markers.iter().map(|(_, n)| n).sum();
    assert_eq!(seen.len() as u64 + lost, 600, "delivered + lost = sent");
    assert_eq!(lost as f64, edge.dropped("slow_consumer").await);
    for (at, n) in &markers {
        // (A batch bigger than the queue overflows it before the first frame: a hole at 0.)
        let before = if *at == 0 { -1 } else { seen[at - 1] };
        assert_eq!(seen[*at], before + 1 + *n as i64, "marker at its hole");
    }
    // Outside the holes, nothing is missing or reordered.
    let holes: u64 = seen.windows(2).map(|w| (w[1] - w[0] - 1) as u64).sum();
    assert_eq!(holes + seen[0] as u64, lost);
    // It caught up, so it is not cut off, and keeps receiving.
    doppler.fake.push_envelopes(&[log("web", 1000, "z")]).await;
    assert_eq!(collect(&mut ws, 1).await[0].timestamp, 1000);
    assert_eq!(
        edge.metric("trafficcontroller_slow_consumers_total", &[])
            .await,
        0.0
    );
    edge.stop().await;
}

#[tokio::test]
async fn a_client_that_does_not_answer_pings_is_closed_with_1008() {
    let doppler = RunningDoppler::start().await;
    let edge = start_edge_connected(Config {
        ping_interval_secs: 0.1,
        pong_timeout_secs: 0.3,
        ..config(vec![doppler.url()])
    })
    .await;
    let mut live = edge
        .ws("/firehose/live", Some(&admin_token()))
        .await
        .unwrap();
    // This client never reads, so it never answers a ping.
    let mut dead = edge
        .ws("/firehose/dead", Some(&admin_token()))
        .await
        .unwrap();
    // The live one keeps reading (answering pings) across many intervals.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut pings = 0;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(50), live.next()).await
        {
            match m {
                Message::Ping(_) => pings += 1,
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(pings >= 3, "pinged every interval, got {pings}");
    assert_eq!(
        edge.metric("trafficcontroller_keepalive_timeouts_total", &[])
            .await,
        1.0
    );
    match next_frame(&mut dead, 5).await {
        Frame::Closed(Some((code, reason))) => {
            assert_eq!(code, 1008);
            assert!(reason.contains("pong"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // The one that answered is still open.
    doppler
        .fake
        .push_envelopes(&[log("web", 5, "still here")])
        .await;
    assert_eq!(collect(&mut live, 1).await[0].timestamp, 5);
    edge.stop().await;
}
