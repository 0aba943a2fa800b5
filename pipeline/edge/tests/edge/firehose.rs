//! What a firehose or app-stream consumer receives.

use hydrant_auth::{Claims, Scope};

use crate::harness::*;

#[tokio::test]
async fn binary_frames_carry_exactly_the_envelopes_sent() {
    let doppler = RunningDoppler::start().await;
    let edge = edge_reading(doppler.url()).await;
    // One subscription per doppler, selecting every type from every source.
    let req = &doppler.fake.requests()[0];
    assert_eq!(req.selectors.len(), 5);
    assert!(req.shard_id.is_empty());

    let mut ws = edge
        .ws("/firehose/nozzle", Some(&admin_token()))
        .await
        .unwrap();
    let sent: Vec<_> = (0..250)
        .map(|i| match i % 3 {
            0 => log("web", i, &format!("line {i}")),
            1 => counter("router", i, "requests"),
            _ => gauge("worker", i),
        })
        .collect();
    for chunk in sent.chunks(50) {
        doppler.fake.push_envelopes(chunk).await;
    }
    let got = collect(&mut ws, 250).await;
    assert_eq!(got, sent, "same envelopes, same order, nothing added");
    assert_quiet(&mut ws, 100).await;
    wait_for("egress to be counted", 5, || async {
        edge.metric(
            "trafficcontroller_egress_total",
            &[("endpoint", "firehose")],
        )
        .await
            == 250.0
    })
    .await;
    assert_eq!(
        edge.metric("trafficcontroller_ingress_total", &[]).await,
        250.0
    );
    assert_eq!(edge.metric("trafficcontroller_firehoses", &[]).await, 1.0);
    edge.stop().await;
}

#[tokio::test]
async fn frames_are_bounded_by_the_frame_limits() {
    let doppler = RunningDoppler::start().await;
    let edge = start_edge_connected(hydrant_firehose::Config {
        frame_max_envelopes: 10,
        ..config(vec![doppler.url()])
    })
    .await;
    let mut ws = edge.ws("/firehose/x", Some(&admin_token())).await.unwrap();
    let sent: Vec<_> = (0..95).map(|i| log("web", i, "x")).collect();
    doppler.fake.push_envelopes(&sent).await;
    let mut got = Vec::new();
    while got.len() < 95 {
        match next_frame(&mut ws, 10).await {
            Frame::Batch(b) => {
                assert!(!b.is_empty() && b.len() <= 10, "frame of {}", b.len());
                got.extend(b);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, sent);
    edge.stop().await;
}

#[tokio::test]
async fn json_format_gives_protojson_text_frames() {
    let doppler = RunningDoppler::start().await;
    let edge = edge_reading(doppler.url()).await;
    let mut ws = edge
        .ws("/firehose/j?format=json", Some(&admin_token()))
        .await
        .unwrap();
    doppler
        .fake
        .push_envelopes(&[log("web", 7, "hello"), counter("web", 8, "hits")])
        .await;
    let mut batch = Vec::new();
    while batch.len() < 2 {
        match next_frame(&mut ws, 10).await {
            Frame::Json(v) => batch.extend(v["batch"].as_array().unwrap().iter().cloned()),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
    assert_eq!(batch[0]["source_id"], "web");
    assert_eq!(batch[0]["timestamp"], "7");
    assert_eq!(batch[0]["log"]["payload_text"], "hello");
    assert_eq!(batch[1]["counter"]["name"], "hits");
    edge.stop().await;
}

#[tokio::test]
async fn one_subscription_id_splits_the_stream_and_other_ids_get_everything() {
    let doppler = RunningDoppler::start().await;
    let edge = edge_reading(doppler.url()).await;
    let t = admin_token();
    let mut a1 = edge.ws("/firehose/shared", Some(&t)).await.unwrap();
    let mut a2 = edge.ws("/firehose/shared", Some(&t)).await.unwrap();
    let mut solo = edge.ws("/firehose/solo", Some(&t)).await.unwrap();
    let sent: Vec<_> = (0..1000).map(|i| log("web", i, &format!("{i}"))).collect();
    for chunk in sent.chunks(37) {
        doppler.fake.push_envelopes(chunk).await;
    }
    let all = collect(&mut solo, 1000).await;
    assert_eq!(all, sent, "a different id gets the whole stream");
    // The group's members together get each envelope exactly once.
    let mut got1 = Vec::new();
    let mut got2 = Vec::new();
    while got1.len() + got2.len() < 1000 {
        tokio::select! {
            f = next_frame(&mut a1, 10) => match f { Frame::Batch(b) => got1.extend(b), o => panic!("{o:?}") },
            f = next_frame(&mut a2, 10) => match f { Frame::Batch(b) => got2.extend(b), o => panic!("{o:?}") },
        }
    }
    assert_quiet(&mut a1, 100).await;
    assert_quiet(&mut a2, 100).await;
    let mut union: Vec<i64> = got1.iter().chain(&got2).map(|e| e.timestamp).collect();
    union.sort_unstable();
    assert_eq!(union, (0..1000).collect::<Vec<_>>());
    assert!(
        (400..=600).contains(&got1.len()),
        "a fair share each: {} / {}",
        got1.len(),
        got2.len()
    );
    // Each member still sees its share in order.
    assert!(got1.windows(2).all(|w| w[0].timestamp < w[1].timestamp));
    edge.stop().await;
}

#[tokio::test]
async fn filter_type_selects_logs_or_metrics() {
    let doppler = RunningDoppler::start().await;
    let edge = edge_reading(doppler.url()).await;
    let t = admin_token();
    let mut logs = edge
        .ws("/firehose/f?filter-type=logs", Some(&t))
        .await
        .unwrap();
    let mut metrics = edge
        .ws("/firehose/f?filter-type=metrics", Some(&t))
        .await
        .unwrap();
    doppler
        .fake
        .push_envelopes(&[
            log("a", 1, "x"),
            counter("a", 2, "c"),
            gauge("a", 3),
            log("b", 4, "y"),
        ])
        .await;
    let l = collect(&mut logs, 2).await;
    assert_eq!(
        l.iter().map(|e| e.timestamp).collect::<Vec<_>>(),
        vec![1, 4]
    );
    let m = collect(&mut metrics, 2).await;
    assert_eq!(
        m.iter().map(|e| e.timestamp).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert!(
        edge.ws("/firehose/f?filter-type=bogus", Some(&t))
            .await
            .is_err()
    );
    edge.stop().await;
}

#[tokio::test]
async fn app_stream_gets_only_its_source() {
    let doppler = RunningDoppler::start().await;
    let edge = edge_reading(doppler.url()).await;
    let dev = token(Claims::new("dev").with_scope(Scope::app_read("web")));
    let mut ws = edge.ws("/apps/web/stream", Some(&dev)).await.unwrap();
    let mut batch = Vec::new();
    for i in 0..60 {
        batch.push(match i % 3 {
            0 => log("web", i, "mine"),
            1 => log("worker", i, "not mine"),
            _ => counter("web", i, "hits"),
        });
    }
    doppler.fake.push_envelopes(&batch).await;
    let got = collect(&mut ws, 40).await;
    assert!(got.iter().all(|e| e.source_id == "web"));
    let want: Vec<_> = batch.into_iter().filter(|e| e.source_id == "web").collect();
    assert_eq!(got, want);
    assert_quiet(&mut ws, 100).await;
    assert_eq!(edge.metric("trafficcontroller_app_streams", &[]).await, 1.0);
    edge.stop().await;
}
