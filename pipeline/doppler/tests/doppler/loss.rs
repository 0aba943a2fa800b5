//! Loss is bounded, isolated and visible: a slow subscriber loses only its own oldest data and
//! is told so in-band; bad input is counted and hurts nobody else; the ledger balances.

use bytes::Bytes;
use hydrant_envelope::gap::Gap;
use hydrant_envelope::raw::ingress::ingress_client::IngressClient as RawIngressClient;
use hydrant_envelope::v2;
use hydrant_envelope::wire::{EnvelopeView, batch_of, encode};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::*;

fn gap_of(e: &v2::Envelope) -> Option<Gap> {
    let bytes = encode(e);
    Gap::from_view(&EnvelopeView::parse(&bytes).ok()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_loses_only_its_own_oldest_data_and_sees_a_gap() {
    let d = start(hydrant_doppler::Config {
        subscription_queue_envelopes: 1000,
        ..config()
    })
    .await;
    // The slow subscriber's connection grants the doppler only 64 KiB of HTTP/2 window, and it
    // never reads until the end, so its queue has to overflow.
    let slow_channel = d
        .endpoint()
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(64 * 1024)
        .connect()
        .await
        .unwrap();
    let mut slow = Subscriber::from_stream(
        v2::egress_client::EgressClient::new(slow_channel)
            .batched_receiver(v2::EgressBatchRequest {
                selectors: vec![logs_of("")],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner(),
    );
    let mut fast = d.subscribe("", vec![logs_of("")]).await;

    let sender = d.sender().await;
    let n: i64 = 20_000;
    let payload = "x".repeat(100);
    let mut fast_seen = 0i64;
    for start in (0..n).step_by(100) {
        sender
            .send(
                (start..start + 100)
                    .map(|i| log("app", i, &payload))
                    .collect(),
            )
            .await;
        // Keep the fast subscriber caught up every 500 envelopes: it must lose nothing.
        if (start + 100) % 500 == 0 {
            while fast_seen < start + 100 {
                let e = fast.next().await;
                assert_eq!(
                    e.timestamp, fast_seen,
                    "fast subscriber saw every envelope in order"
                );
                fast_seen += 1;
            }
        }
    }
    assert_eq!(fast_seen, n);

    // Now the slow one reads: what it got, plus what its gap markers say it lost, is everything.
    let mut received = 0i64;
    let mut lost = 0u64;
    let mut last = -1i64;
    let mut gaps = 0;
    while received + (lost as i64) < n {
        let e = slow.next().await;
        if let Some(gap) = gap_of(&e) {
            assert_eq!(
                (gap.hop.as_str(), gap.reason.as_str()),
                ("doppler", "slow_subscriber")
            );
            lost += gap.dropped;
            gaps += 1;
            continue;
        }
        assert!(e.timestamp > last, "still in order after the gap");
        last = e.timestamp;
        received += 1;
    }
    assert!(
        lost > 0 && gaps > 0,
        "the slow subscriber lost data and was told"
    );
    assert_eq!(
        last,
        n - 1,
        "the newest data survived; the oldest was dropped"
    );
    assert_eq!(received + lost as i64, n);

    // The ledger: every envelope in was routed; every copy out was delivered or counted.
    assert_eq!(d.metric("doppler_ingress_total", &[]).await, n as f64);
    assert_eq!(d.metric("doppler_routed_total", &[]).await, n as f64);
    assert_eq!(
        d.metric("doppler_dropped_total", &["reason=\"slow_subscriber\""])
            .await,
        lost as f64
    );
    assert_eq!(
        d.metric("doppler_egress_total", &[]).await,
        (n + received) as f64
    );
    assert_eq!(
        d.metric("doppler_gap_markers_total", &[]).await,
        gaps as f64
    );
    assert_eq!(
        d.metric("doppler_dropped_total", &["reason=\"ingress_ring_full\""])
            .await,
        0.0
    );
    sender.close().await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_counted_and_hurts_no_one_else() {
    let d = start(config()).await;
    let mut sub = d.subscribe("", vec![logs_of("")]).await;

    // A healthy agent streaming throughout.
    let healthy = d.sender().await;
    // A broken agent on its own stream, speaking raw bytes.
    let (bad_tx, bad_rx) = mpsc::channel::<Bytes>(16);
    let mut raw = RawIngressClient::new(d.channel().await).max_encoding_message_size(usize::MAX);
    let bad_task = tokio::spawn(async move { raw.batch_sender(ReceiverStream::new(bad_rx)).await });

    let good = |i: i64| encode(&log("bad-agent", i, "ok"));
    let truncated: &[u8] = &[0x12, 50, b'x'];
    let wrong_wire_type: &[u8] = &[0x0a, 1, 0]; // timestamp (field 1) sent as bytes
    let bad_utf8: &[u8] = &[0x12, 2, 0xff, 0xfe];
    let (g0, g1) = (good(0), good(1));
    let mut malformed = 0;
    for round in 0..10i64 {
        healthy
            .send(
                (0..10)
                    .map(|i| log("healthy", round * 10 + i, "fine"))
                    .collect(),
            )
            .await;
        bad_tx
            .send(batch_of([
                g0.as_ref(),
                truncated,
                wrong_wire_type,
                bad_utf8,
                g1.as_ref(),
            ]))
            .await
            .unwrap();
        malformed += 3;
        // Not a batch at all: the whole message is one malformed "envelope".
        bad_tx
            .send(Bytes::from_static(&[0xff, 0xff, 0xff]))
            .await
            .unwrap();
        malformed += 1;
    }
    // Past the 10 MiB message limit: refused whole, and that stream ends.
    bad_tx
        .send(Bytes::from(vec![0u8; 11 * 1024 * 1024]))
        .await
        .unwrap();
    let ended = tokio::time::timeout(DEADLINE, bad_task)
        .await
        .unwrap()
        .unwrap();
    // The doppler answers OUT_OF_RANGE; the client may instead see its half-sent stream reset.
    assert!(ended.is_err(), "the oversized stream is refused");

    // The healthy stream still flows after all that.
    healthy.send(vec![log("healthy", 100, "after")]).await;

    let mut healthy_seen = 0;
    let mut bad_agent_valid = 0;
    while healthy_seen < 101 {
        let e = sub.next().await;
        match e.source_id.as_str() {
            "healthy" => healthy_seen += 1,
            "bad-agent" => bad_agent_valid += 1,
            other => panic!("unexpected source {other}"),
        }
    }
    // The bad agent's valid envelopes were delivered too: only the broken ones were dropped.
    while bad_agent_valid < 20 {
        assert_eq!(sub.next().await.source_id, "bad-agent");
        bad_agent_valid += 1;
    }
    sub.assert_quiet(200).await;

    assert_eq!(
        d.metric("doppler_dropped_total", &["reason=\"malformed\""])
            .await,
        malformed as f64
    );
    assert_eq!(
        d.metric("doppler_rejected_messages_total", &["reason=\"too_large\""])
            .await,
        1.0
    );
    // ingress = routed + malformed: nothing vanished.
    let ingress = d.metric("doppler_ingress_total", &[]).await;
    let routed = d.metric("doppler_routed_total", &[]).await;
    assert_eq!(routed, 101.0 + 20.0);
    assert_eq!(ingress, routed + malformed as f64);
    healthy.close().await;
    d.stop().await;
}
