//! Upstream failures and shutdown: the edge reconnects to a restarted doppler under the same
//! open WebSocket, merges several dopplers, and `run()` returns promptly on shutdown.

use crate::harness::*;

#[tokio::test]
async fn the_edge_reconnects_when_a_doppler_restarts() {
    let doppler = RunningDoppler::start().await;
    let edge = edge_reading(doppler.url()).await;
    let mut ws = edge.ws("/firehose/r", Some(&admin_token())).await.unwrap();
    doppler
        .fake
        .push_envelopes(&[log("web", 1, "before")])
        .await;
    assert_eq!(collect(&mut ws, 1).await[0].timestamp, 1);

    let (fake, addr) = doppler.stop().await;
    edge.wait_connected(0.0).await;
    wait_for("a failed reconnect to be counted", 10, || async {
        edge.metric(
            "trafficcontroller_upstream_errors_total",
            &[("call", "subscribe")],
        )
        .await
            >= 1.0
    })
    .await;
    let doppler = RunningDoppler::restart_on(fake, addr).await;
    edge.wait_connected(1.0).await;
    doppler.fake.push_envelopes(&[log("web", 2, "after")]).await;
    assert_eq!(
        collect(&mut ws, 1).await[0].timestamp,
        2,
        "same socket, stream resumed"
    );
    edge.stop().await;
}

#[tokio::test]
async fn several_dopplers_merge_into_one_firehose() {
    let a = RunningDoppler::start().await;
    let b = RunningDoppler::start().await;
    let edge = start_edge_connected(config(vec![a.url(), b.url()])).await;
    let mut ws = edge.ws("/firehose/m", Some(&admin_token())).await.unwrap();
    a.fake.push_envelopes(&[log("web", 1, "a")]).await;
    b.fake.push_envelopes(&[log("api", 2, "b")]).await;
    let mut got: Vec<i64> = collect(&mut ws, 2)
        .await
        .iter()
        .map(|e| e.timestamp)
        .collect();
    got.sort_unstable();
    assert_eq!(got, vec![1, 2]);
    edge.stop().await;
}

#[tokio::test]
async fn shutdown_closes_streams_with_1001_and_run_returns() {
    let doppler = RunningDoppler::start().await;
    let edge = edge_reading(doppler.url()).await;
    let mut ws = edge.ws("/firehose/s", Some(&admin_token())).await.unwrap();
    edge.shutdown.cancel();
    match next_frame(&mut ws, 5).await {
        Frame::Closed(Some((code, _))) => assert_eq!(code, 1001),
        other => panic!("{other:?}"),
    }
    edge.stop().await;
}

#[tokio::test]
async fn a_bad_config_is_refused_before_anything_starts() {
    let listeners =
        hydrant_runtime::bind_on::<hydrant_firehose::TrafficController>(|_| "127.0.0.1:0".into())
            .await
            .unwrap();
    let bad = hydrant_firehose::Config {
        token_keys_file: Some("/nonexistent/token_keys.json".into()),
        ..hydrant_firehose::Config::default()
    };
    let err = hydrant_runtime::run::<hydrant_firehose::TrafficController>(
        bad,
        listeners,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/token_keys.json"),
        "{err}"
    );
}
