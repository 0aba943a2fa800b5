//! Who may read what: refusals come before the upgrade, with a clear JSON error, and nothing
//! is delivered to a refused client. Tokens are verified with public keys only (fetched from
//! the cloud controller's `/token_keys`, cached on disk), check their audience, and end their
//! streams when they expire.

use std::sync::{Arc, Mutex};

use hydrant_auth::{AUD_API, AUD_LOGS, Claims, KeySet, Scope, SigningKey};
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
    let edge = edge_reading(doppler.url()).await;

    let (status, body) = refused(&edge, "/firehose/x", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "unauthorized");
    assert!(
        body["message"].as_str().unwrap().contains("Bearer"),
        "{body}"
    );

    // Signed by a key this edge was never given: a forger's own key.
    let other_key = SigningKey::generate().unwrap();
    let forged = other_key.issue(
        &Claims::new("mallory")
            .for_audience(AUD_LOGS)
            .with_scope("admin"),
    );
    let (status, body) = refused(&edge, "/firehose/x", Some(&forged)).await;
    assert_eq!(status, 401);
    assert!(
        body["message"].as_str().unwrap().contains("unknown key"),
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
    let edge = edge_reading(doppler.url()).await;
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

/// The token half of the auth matrix against the edge: every kind of token on the firehose,
/// an app stream and a recent read gets exactly the expected answer (101 = upgraded), and
/// nothing is let in that should not be.
#[tokio::test]
async fn the_edge_token_matrix_has_no_unexpected_allows() {
    let doppler = RunningDoppler::start().await;
    let edge = edge_reading(doppler.url()).await;
    let mut expired = Claims::new("admin").with_scope("admin");
    expired.iat -= 7200;
    expired.exp = hydrant_auth::now_secs() - 1;
    let api_only = Claims::new("admin")
        .for_audience(AUD_API)
        .with_scope("admin")
        .with_scope("firehose");
    let no_read_scope = Claims::new("dev")
        .with_scope("cloud_controller.read")
        .with_scope("cloud_controller.write")
        .with_scope("space:s1:developer");
    // The dashboard's log token for another app (another space's, as far as this edge knows).
    let other_app = Claims::new("dev")
        .with_scope(Scope::app_read("billing"))
        .expires_in(600);
    let log_token = Claims::new("dev")
        .with_scope(Scope::app_read("web"))
        .expires_in(600);
    let forged = SigningKey::generate().unwrap().issue(
        &Claims::new("admin")
            .for_audience(AUD_LOGS)
            .with_scope("admin"),
    );
    let rows: Vec<(&str, Option<String>, [u16; 3])> = vec![
        ("no token", None, [401, 401, 401]),
        ("expired", Some(token(expired)), [401, 401, 401]),
        (
            "wrong audience (API only)",
            Some(token(api_only)),
            [401, 401, 401],
        ),
        ("a key not in /token_keys", Some(forged), [401, 401, 401]),
        (
            "wrong scope (API scopes only)",
            Some(token(no_read_scope)),
            [403, 404, 404],
        ),
        (
            "another app's log token",
            Some(token(other_app)),
            [403, 404, 404],
        ),
        (
            "this app's log token",
            Some(token(log_token)),
            [403, 101, 200],
        ),
        ("admin", Some(admin_token()), [101, 101, 200]),
    ];
    let mut unexpected_allows = Vec::new();
    let mut wrong = Vec::new();
    for (name, token, want) in &rows {
        let t = token.as_deref();
        let firehose = ws_status(&edge, "/firehose/matrix", t).await;
        let app = ws_status(&edge, "/apps/web/stream", t).await;
        let (recent, _) = http_get(edge.http, "/api/v1/read/web", t).await;
        for (what, want, got) in [
            ("firehose", want[0], firehose),
            ("app stream", want[1], app),
            ("recent", want[2], recent),
        ] {
            if got < 300 && want >= 300 {
                unexpected_allows.push(format!("{name} / {what}: {got}"));
            }
            if got != want {
                wrong.push(format!("{name} / {what}: want {want}, got {got}"));
            }
        }
    }
    assert!(
        unexpected_allows.is_empty(),
        "unexpected allows: {unexpected_allows:#?}"
    );
    assert!(wrong.is_empty(), "unexpected answers: {wrong:#?}");
    edge.stop().await;
}

/// 101 when the WebSocket upgrade succeeds, else the refusal's status.
async fn ws_status(edge: &Edge, path: &str, token: Option<&str>) -> u16 {
    match edge.ws(path, token).await {
        Ok(mut ws) => {
            let _ = ws.close(None).await;
            101
        }
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{path}: unexpected error {e}"),
    }
}

#[tokio::test]
async fn a_stream_is_closed_with_1008_when_its_token_expires() {
    let doppler = RunningDoppler::start().await;
    let edge = edge_reading(doppler.url()).await;
    let short = token(Claims::new("admin").with_scope("admin").expires_in(2));
    let mut ws = edge.ws("/firehose/short", Some(&short)).await.unwrap();
    doppler
        .fake
        .push_envelopes(&[log("web", 1, "before")])
        .await;
    assert_eq!(collect(&mut ws, 1).await[0].timestamp, 1);
    match next_frame(&mut ws, 5).await {
        Frame::Closed(Some((code, reason))) => {
            assert_eq!(code, 1008);
            assert_eq!(reason, "token expired");
        }
        other => panic!("expected a 1008 close, got {other:?}"),
    }
    assert_eq!(
        edge.metric("trafficcontroller_token_expired_total", &[])
            .await,
        1.0
    );
    edge.stop().await;
}

/// A stand-in cloud controller that serves only `GET /token_keys`, from a set the test changes.
struct FakeController {
    url: String,
    keys: Arc<Mutex<Vec<SigningKey>>>,
    fetches: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeController {
    async fn start(keys: Vec<SigningKey>) -> Self {
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (k, f) = (keys.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/token_keys",
            axum::routing::get(move || {
                let (k, f) = (k.clone(), f.clone());
                async move {
                    f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let published = k
                        .lock()
                        .unwrap()
                        .iter()
                        .map(SigningKey::public_jwk)
                        .collect::<Vec<_>>();
                    KeySet::from_keys(published).unwrap().to_json()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token_keys", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            keys,
            fetches,
            task,
        }
    }

    fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn signed_by(key: &SigningKey, claims: Claims) -> String {
    key.issue(&claims.for_audience(AUD_LOGS))
}

/// Keys come from the controller's `/token_keys`; a rotation's new `kid` is fetched on first
/// sight while the old key keeps verifying; a key never published is refused; with the
/// controller gone, streams keep flowing and a restarted edge verifies from its cache.
#[tokio::test]
async fn keys_are_fetched_rotated_cached_and_outlive_the_controller() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("token_keys.json");
    let old = SigningKey::generate().unwrap();
    let new = SigningKey::generate().unwrap();
    let controller = FakeController::start(vec![old.clone()]).await;
    let doppler = RunningDoppler::start().await;
    let edge_config = || hydrant_firehose::Config {
        token_keys: None,
        token_keys_url: Some(controller.url.clone()),
        token_keys_cache: Some(cache.display().to_string()),
        token_keys_refetch_secs: 3600.0,
        ..config(vec![doppler.url()])
    };
    let edge = start_edge_connected(edge_config()).await;
    let admin = |key: &SigningKey| signed_by(key, Claims::new("admin").with_scope("admin"));
    wait_for("the edge to fetch the keys", 10, || async {
        edge.ws("/firehose/a", Some(&admin(&old))).await.is_ok()
    })
    .await;
    assert!(cache.is_file(), "the fetched keys are cached on disk");
    assert_eq!(edge.metric("trafficcontroller_token_keys", &[]).await, 1.0);
    assert!(
        edge.metric(
            "trafficcontroller_token_key_fetches_total",
            &[("result", "ok")]
        )
        .await
            >= 1.0
    );

    // Rotation, step 1: the controller publishes the new key; a token naming it makes the
    // edge fetch once, and both keys verify.
    controller.keys.lock().unwrap().push(new.clone());
    let mut old_stream = edge.ws("/firehose/rot", Some(&admin(&old))).await.unwrap();
    let mut new_stream = edge.ws("/firehose/rot2", Some(&admin(&new))).await.unwrap();
    // A key nobody published: refused, and the refetch it may cause is rate-limited.
    let rogue = SigningKey::generate().unwrap();
    let before = controller.fetches();
    for _ in 0..5 {
        let (status, body) = refused(&edge, "/firehose/x", Some(&admin(&rogue))).await;
        assert_eq!(status, 401, "{body}");
    }
    assert!(
        controller.fetches() - before <= 1,
        "unknown kids may not flood the controller: {} fetches",
        controller.fetches() - before
    );

    // The controller dies: open streams keep flowing, new tokens of known keys verify.
    let FakeController { task, .. } = controller;
    task.abort();
    let _ = task.await;
    doppler
        .fake
        .push_envelopes(&[log("web", 7, "still here")])
        .await;
    assert_eq!(collect(&mut old_stream, 1).await[0].timestamp, 7);
    assert_eq!(collect(&mut new_stream, 1).await[0].timestamp, 7);
    assert!(edge.ws("/firehose/b", Some(&admin(&old))).await.is_ok());
    edge.stop().await;

    // A restarted edge, controller still dead: verifies from its cache.
    let edge = start_edge_connected(edge_config()).await;
    let mut ws = edge.ws("/firehose/c", Some(&admin(&new))).await.unwrap();
    assert!(edge.ws("/firehose/d", Some(&admin(&old))).await.is_ok());
    doppler
        .fake
        .push_envelopes(&[log("web", 8, "after restart")])
        .await;
    assert_eq!(collect(&mut ws, 1).await[0].timestamp, 8);
    edge.stop().await;
}
