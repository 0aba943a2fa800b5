//! Who may read what: refusals come before the upgrade, with a clear JSON error, and nothing
//! is delivered to a refused client.

use hydrant_auth::{Claims, Scope, SigningKey};
use tokio_tungstenite::tungstenite;

use crate::harness::*;

/// The HTTP status and JSON body of a refused WebSocket handshake.
async fn refused(edge: &Edge, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    match edge.ws(path, token).await {
        Ok(_) => panic!("{path} should have been refused"),
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            (resp.status().as_u16(), json_body(&body))
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn missing_or_bad_tokens_get_401_and_nothing() {
    let doppler = RunningDoppler::start().await;
    let edge = start_edge(config(vec![doppler.url()])).await;
    edge.wait_connected(1.0).await;

    let (status, body) = refused(&edge, "/firehose/x", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "unauthorized");
    assert!(
        body["message"].as_str().unwrap().contains("Bearer"),
        "{body}"
    );

    let other_key = SigningKey::from_bytes(&[1u8; 32]).unwrap();
    let forged = other_key.issue(&Claims::new("mallory").with_scope("admin"));
    let (status, body) = refused(&edge, "/firehose/x", Some(&forged)).await;
    assert_eq!(status, 401);
    assert!(
        body["message"].as_str().unwrap().contains("signature"),
        "{body}"
    );

    let mut old = Claims::new("old").with_scope("admin");
    old.exp = 1;
    let (status, body) = refused(&edge, "/firehose/x", Some(&token(old))).await;
    assert_eq!(status, 401);
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );

    let (status, _) = refused(&edge, "/apps/web/stream", Some("hyd1.garbage.x")).await;
    assert_eq!(status, 401);

    // No subscription was made for any of them: data pushed now reaches nobody.
    doppler
        .fake
        .push_envelopes(&[log("web", 1, "secret")])
        .await;
    wait_for("the envelope to arrive", 5, || async {
        edge.metric("trafficcontroller_ingress_total", &[]).await == 1.0
    })
    .await;
    assert_eq!(
        edge.metric("trafficcontroller_egress_total", &[]).await,
        0.0
    );
    assert_eq!(edge.metric("trafficcontroller_firehoses", &[]).await, 0.0);
    assert_eq!(
        edge.metric(
            "trafficcontroller_rejected_total",
            &[("reason", "unauthorized")]
        )
        .await,
        4.0
    );
    edge.stop().await;
}

#[tokio::test]
async fn a_token_in_the_query_works_for_browsers() {
    let doppler = RunningDoppler::start().await;
    let edge = start_edge(config(vec![doppler.url()])).await;
    edge.wait_connected(1.0).await;
    let path = format!("/firehose/b?access_token={}", admin_token());
    let mut ws = edge.ws(&path, None).await.unwrap();
    doppler.fake.push_envelopes(&[log("web", 1, "hi")]).await;
    assert_eq!(collect(&mut ws, 1).await[0].timestamp, 1);
    edge.stop().await;
}

#[tokio::test]
async fn the_firehose_needs_the_firehose_scope() {
    let doppler = RunningDoppler::start().await;
    let edge = start_edge(config(vec![doppler.url()])).await;
    let dev = token(Claims::new("dev").with_scope(Scope::app_read("web")));
    let (status, body) = refused(&edge, "/firehose/x", Some(&dev)).await;
    assert_eq!(status, 403);
    assert!(
        body["message"].as_str().unwrap().contains("firehose"),
        "{body}"
    );
    let hose = token(Claims::new("nozzle").with_scope("firehose"));
    assert!(edge.ws("/firehose/x", Some(&hose)).await.is_ok());
    edge.stop().await;
}

#[tokio::test]
async fn forbidden_and_unknown_sources_answer_the_same_404() {
    let doppler = RunningDoppler::start().await;
    let edge = start_edge(config(vec![doppler.url()])).await;
    let dev = token(Claims::new("dev").with_scope(Scope::app_read("web")));
    let (s1, b1) = refused(&edge, "/apps/billing/stream", Some(&dev)).await;
    let (s2, b2) = refused(&edge, "/apps/no-such-app/stream", Some(&dev)).await;
    assert_eq!((s1, s2), (404, 404));
    assert_eq!(b1["error"], b2["error"]);
    assert_eq!(
        b1["message"].as_str().unwrap().replace("billing", "X"),
        b2["message"].as_str().unwrap().replace("no-such-app", "X"),
        "only the name differs"
    );
    // The same rule on the recent API.
    let (s3, _) = http_get(edge.http, "/api/v1/read/billing", Some(&dev)).await;
    assert_eq!(s3, 404);
    edge.stop().await;
}

#[tokio::test]
async fn plain_http_to_a_stream_endpoint_is_refused_clearly() {
    let doppler = RunningDoppler::start().await;
    let edge = start_edge(config(vec![doppler.url()])).await;
    let (status, body) = http_get(edge.http, "/firehose/x", Some(&admin_token())).await;
    assert!(status >= 400, "{status}");
    assert!(String::from_utf8_lossy(&body).contains("WebSocket"));
    let (status, _) = http_get(edge.http, "/firehose/x", None).await;
    assert_eq!(status, 401, "auth is checked before the protocol");
    edge.stop().await;
}
