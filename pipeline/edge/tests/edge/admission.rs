//! Stream caps: one token opening streams in a loop is refused at its cap with 429 before any
//! upgrade, a user is capped across tokens, users together cannot take the slots reserved for
//! the platform's own consumers, and those consumers (client-credentials tokens) still connect
//! and read. Every refusal is counted by reason on `/metrics`.

use hydrant_auth::Claims;
use tokio_tungstenite::tungstenite;

use crate::harness::*;

/// A user's firehose token (a fresh `jti` each call).
fn user_token(user: &str) -> String {
    token(Claims::new(user).with_scope("firehose"))
}

/// A token as the cloud controller mints it for an OAuth2 client (`client_credentials`).
fn client_token(id: &str) -> String {
    let mut claims = Claims::new(format!("client:{id}")).with_scope("firehose");
    claims.client_id = Some(id.to_owned());
    token(claims)
}

/// Opens a firehose stream, or returns the refusal's status and error code.
async fn open(edge: &Edge, sub: &str, token: &str) -> Result<Ws, (u16, String)> {
    match edge.ws(&format!("/firehose/{sub}"), Some(token)).await {
        Ok(ws) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            let body = json_body(&resp.body().clone().unwrap_or_default());
            Err((
                resp.status().as_u16(),
                body["error"].as_str().unwrap_or_default().to_owned(),
            ))
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn one_token_in_a_loop_cannot_push_the_platform_off_the_firehose() {
    let doppler = RunningDoppler::start().await;
    let edge = start_edge_connected(hydrant_firehose::Config {
        max_streams: 12,
        max_streams_per_token: 4,
        max_streams_per_user: 6,
        platform_reserved_streams: 4,
        ..config(vec![doppler.url()])
    })
    .await;

    // One token, opening streams in a loop until it is refused.
    let mallory = user_token("mallory");
    let mut held = Vec::new();
    let refusal = loop {
        match open(&edge, &format!("loop-{}", held.len()), &mallory).await {
            Ok(ws) => held.push(ws),
            Err(refusal) => break refusal,
        }
        assert!(held.len() <= 100, "the loop was never refused");
    };
    assert_eq!(held.len(), 4, "max_streams_per_token");
    assert_eq!(refusal, (429, "too_many_streams_for_token".to_owned()));
    // The same slots count on every stream endpoint: an app stream and SSE are refused too.
    let app = match edge.ws("/apps/app-1/stream", Some(&mallory)).await {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        other => panic!("expected a refusal, got {:?}", other.map(|_| "an upgrade")),
    };
    assert_eq!(app, 429);
    let (sse, _) = http_stream(edge.http, "/v2/read?log", &mallory).await;
    assert_eq!(sse, 429);

    // More tokens for the same user: capped across them.
    let refusal = loop {
        match open(
            &edge,
            &format!("loop-{}", held.len()),
            &user_token("mallory"),
        )
        .await
        {
            Ok(ws) => held.push(ws),
            Err(refusal) => break refusal,
        }
        assert!(held.len() <= 100, "the user was never refused");
    };
    assert_eq!(held.len(), 6, "max_streams_per_user");
    assert_eq!(refusal, (429, "too_many_streams_for_user".to_owned()));

    // Other users fill what users may take (12 - 4 reserved); then users get 503.
    for user in ["eve", "trudy"] {
        held.push(open(&edge, user, &user_token(user)).await.unwrap());
    }
    assert_eq!(
        open(&edge, "oscar", &user_token("oscar")).await.err(),
        Some((503, "too_many_streams".to_owned()))
    );

    // The platform's own consumers still connect, to the last slot, and read.
    let platform = client_token("hydrant-roles");
    let mut nozzles = Vec::new();
    for _ in 0..4 {
        nozzles.push(open(&edge, "platform", &platform).await.unwrap());
    }
    assert_eq!(
        open(&edge, "platform", &client_token("autoscaler"))
            .await
            .err(),
        Some((503, "too_many_streams".to_owned())),
        "max_streams still bounds everyone"
    );
    doppler
        .fake
        .push_envelopes(&[log("app-1", 1, "a"), log("app-1", 2, "b")])
        .await;
    let mut got = 0;
    for ws in &mut nozzles {
        // The four connections share one subscription id: together they see both envelopes.
        if let Ok(Frame::Batch(b)) =
            tokio::time::timeout(std::time::Duration::from_millis(500), next_frame(ws, 5)).await
        {
            got += b.len();
        }
    }
    assert_eq!(got, 2, "the platform's streams deliver");

    for (reason, n) in [
        ("per_token", 3.0),
        ("per_user", 1.0),
        ("reserved_for_platform", 1.0),
        ("max_streams", 1.0),
    ] {
        assert_eq!(
            edge.metric(
                "trafficcontroller_streams_refused_total",
                &[("reason", reason)]
            )
            .await,
            n,
            "streams_refused{{reason={reason}}}"
        );
    }

    // Closing a stream gives its slot back to the token that held it.
    let mut first = held.remove(0);
    first.close(None).await.unwrap();
    drop(first);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open(&edge, "again", &mallory).await {
            Ok(ws) => {
                held.push(ws);
                break;
            }
            Err(refusal) => assert!(
                tokio::time::Instant::now() < deadline,
                "the closed stream's slot never came back: {refusal:?}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    edge.stop().await;
}
