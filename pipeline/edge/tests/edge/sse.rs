//! `GET /v2/read`: Server-Sent Events with JSON batches and heartbeats.

use std::time::Duration;

use http_body_util::BodyExt as _;
use hydrant_auth::{Claims, Scope};
use hydrant_firehose::Config;

use crate::harness::*;

#[tokio::test]
async fn sse_streams_json_batches_of_the_asked_sources_and_types_and_heartbeats() {
    let doppler = RunningDoppler::start().await;
    let edge = start_edge_connected(Config {
        sse_heartbeat_secs: 0.2,
        ..config(vec![doppler.url()])
    })
    .await;
    let dev = token(Claims::new("dev").with_scope(Scope::app_read("web")));
    let (status, mut body) = http_stream(edge.http, "/v2/read?source_id=web&log", &dev).await;
    assert_eq!(status, 200);
    wait_for("the SSE subscription", 5, || async {
        edge.metric("trafficcontroller_sse_streams", &[]).await == 1.0
    })
    .await;
    doppler
        .fake
        .push_envelopes(&[
            counter("web", 1, "not a log"),
            log("worker", 2, "not web"),
            log("web", 3, "wanted"),
        ])
        .await;
    let mut text = String::new();
    sse_until(&mut body, &mut text, "wanted").await;
    let data_line = text
        .lines()
        .find(|l| l.starts_with("data: {"))
        .expect("a data event");
    let batch: serde_json::Value = serde_json::from_str(&data_line["data: ".len()..]).unwrap();
    let envs = batch["batch"].as_array().unwrap();
    assert_eq!(envs.len(), 1, "{batch}");
    assert_eq!(envs[0]["timestamp"], "3");
    // Nothing more is coming: a heartbeat follows.
    sse_until(&mut body, &mut text, "event: heartbeat\ndata: ").await;
    drop(body);
    wait_for("the SSE stream to be released", 5, || async {
        edge.metric("trafficcontroller_sse_streams", &[]).await == 0.0
    })
    .await;
    edge.stop().await;
}

#[tokio::test]
async fn an_sse_stream_ends_with_a_closing_event_when_its_token_expires() {
    let doppler = RunningDoppler::start().await;
    let edge = edge_reading(doppler.url()).await;
    let short = token(
        Claims::new("dev")
            .with_scope(Scope::app_read("web"))
            .expires_in(2),
    );
    let (status, mut body) = http_stream(edge.http, "/v2/read?source_id=web&log", &short).await;
    assert_eq!(status, 200);
    let mut text = String::new();
    sse_until(&mut body, &mut text, "event: closing\ndata: token expired").await;
    let end = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the stream ends after the closing event");
    assert!(end.is_none(), "nothing after the closing event");
    edge.stop().await;
}

#[tokio::test]
async fn sse_refusals() {
    let doppler = RunningDoppler::start().await;
    let edge = start_edge(config(vec![doppler.url()])).await;
    let dev = token(Claims::new("dev").with_scope(Scope::app_read("web")));
    let (status, _) = http_get(edge.http, "/v2/read?source_id=web", Some(&dev)).await;
    assert_eq!(status, 400, "no type flag");
    let (status, _) = http_get(edge.http, "/v2/read?source_id=billing&log", Some(&dev)).await;
    assert_eq!(status, 404);
    let (status, _) = http_get(edge.http, "/v2/read?log", Some(&dev)).await;
    assert_eq!(status, 403, "every source needs the firehose scope");
    let (status, _) = http_get(edge.http, "/v2/read?log", None).await;
    assert_eq!(status, 401);
    edge.stop().await;
}
