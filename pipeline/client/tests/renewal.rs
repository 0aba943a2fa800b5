//! Token renewal against a fake auth server and edge over real sockets: tokens live one second,
//! the edge closes each stream with 1008 "token expired" when its token runs out, and a client
//! with client credentials keeps receiving across several expiries with every envelope
//! accounted for; a static expired token gets a final error that names the expiry.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/fake_edge.rs"]
mod fake_edge;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use fake_edge::{Action, Script, firehose, frame, log, next};
use hydrant_firehose_client::{Backoff, ClientConfig, Error, FirehoseClient, StreamEvent};
use tokio::sync::mpsc;

const SECRET: &str = "s3cret";

/// The auth server and the edge in one: tokens it minted, and the envelopes waiting to go out.
struct Platform {
    tokens: Mutex<HashMap<String, Instant>>,
    lifetime: Duration,
    /// Mint JWT-shaped tokens (the client can read their `exp` and hand over before it).
    jwt: bool,
    minted: AtomicU64,
    /// Refuse this many upgrades with 401 even for a valid token (as after a key rotation).
    refuse_next: AtomicU64,
    envelopes: tokio::sync::Mutex<mpsc::Receiver<u64>>,
    /// Envelopes the edge lost: the queue was full, or a send failed.
    drops: AtomicU64,
    expiry_closes: AtomicU64,
}

async fn grant(State(p): State<Arc<Platform>>, Json(body): Json<serde_json::Value>) -> Response {
    if body["grant_type"] != "client_credentials" || body["client_secret"] != SECRET {
        let errors = serde_json::json!({"errors":[{"code":10002,"title":"Unauthorized","detail":"bad client credentials"}]});
        return (StatusCode::UNAUTHORIZED, Json(errors)).into_response();
    }
    let n = p.minted.fetch_add(1, Ordering::SeqCst);
    let (token, expires) = if p.jwt {
        // `exp` is whole seconds, as the real controller's; the edge closes at that second.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let exp = now.as_secs() + p.lifetime.as_secs();
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!(
            "{}.{}.c2ln",
            enc(r#"{"alg":"EdDSA"}"#),
            enc(&format!(
                r#"{{"sub":"client:nozzle","exp":{exp},"jti":"{n}"}}"#
            ))
        );
        let left = Duration::from_secs(exp).saturating_sub(now);
        (token, Instant::now() + left)
    } else {
        (format!("tok-{n}"), Instant::now() + p.lifetime)
    };
    p.tokens.lock().unwrap().insert(token.clone(), expires);
    Json(serde_json::json!({
        "access_token": token,
        "token_type": "bearer",
        "expires_in": p.lifetime.as_secs(),
        "scopes": ["doppler.firehose"],
    }))
    .into_response()
}

async fn stream(
    State(p): State<Arc<Platform>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let expires = p.tokens.lock().unwrap().get(token).copied();
    let Some(expires) = expires.filter(|e| *e > Instant::now()) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    if p.refuse_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    ws.on_upgrade(move |socket| serve(socket, p, expires))
}

async fn serve(mut socket: WebSocket, p: Arc<Platform>, expires: Instant) {
    // One stream at a time holds the queue, as one shard of a subscription would.
    let mut queue = p.envelopes.lock().await;
    let deadline = tokio::time::Instant::from_std(expires);
    loop {
        tokio::select! {
            biased;
            () = tokio::time::sleep_until(deadline) => {
                p.expiry_closes.fetch_add(1, Ordering::SeqCst);
                let close = CloseFrame { code: 1008, reason: "token expired".into() };
                let _ = socket.send(Message::Close(Some(close))).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Some(Ok(_)) = socket.recv().await {}
                })
                .await;
                return;
            }
            seq = queue.recv() => {
                let Some(seq) = seq else { return };
                let f = frame(&[log("app", "0", seq, 1, &seq.to_string())]);
                if socket.send(Message::Binary(f)).await.is_err() {
                    p.drops.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}

struct Running {
    url: String,
    platform: Arc<Platform>,
    tx: mpsc::Sender<u64>,
}

async fn platform(lifetime: Duration, jwt: bool) -> Running {
    let (tx, rx) = mpsc::channel(1024);
    let platform = Arc::new(Platform {
        tokens: Mutex::default(),
        lifetime,
        jwt,
        minted: AtomicU64::new(0),
        refuse_next: AtomicU64::new(0),
        envelopes: tokio::sync::Mutex::new(rx),
        drops: AtomicU64::new(0),
        expiry_closes: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/v3/tokens", post(grant))
        .route("/firehose/{id}", get(stream))
        .with_state(Arc::clone(&platform));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Running { url, platform, tx }
}

fn renewing(url: &str, secret: &str) -> ClientConfig {
    ClientConfig {
        url: url.to_owned(),
        api_url: url.to_owned(),
        client_id: "nozzle".to_owned(),
        client_secret: secret.to_owned(),
        // A 5 s floor on back-off: a renewal that went through back-off would show in the
        // ledger's timing and the test's deadline.
        reconnect: Backoff {
            initial_ms: 5_000,
            max_ms: 5_000,
            jitter: 0.0,
            reset_after_ms: 60_000,
        },
        ..ClientConfig::default()
    }
}

/// What one run across several expiries saw.
struct Ledger {
    emitted: u64,
    delivered: u64,
    drops: u64,
    closes: u64,
    reconnects: u64,
    renewals: u64,
}

async fn across_expiries(lifetime: Duration, jwt: bool, run_for: Duration) -> Ledger {
    let running = platform(lifetime, jwt).await;
    let mut client = FirehoseClient::connect(renewing(&running.url, SECRET), firehose()).unwrap();
    assert_eq!(next(&mut client).await, StreamEvent::Connected);

    // Emit steadily for long enough to cross three expiries.
    let (tx, p) = (running.tx.clone(), Arc::clone(&running.platform));
    let emitter = tokio::spawn(async move {
        let mut emitted = 0u64;
        let started = Instant::now();
        while started.elapsed() < run_for {
            emitted += 1;
            if tx.try_send(emitted).is_err() {
                p.drops.fetch_add(1, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        emitted
    });

    let mut delivered = 0u64;
    let mut reconnects = 0u64;
    let mut emitted = None;
    let deadline = Instant::now() + run_for + Duration::from_secs(10);
    let mut emitter = Some(emitter);
    loop {
        if let Some(handle) = emitter.as_mut().filter(|h| h.is_finished()) {
            emitted = Some(handle.await.unwrap());
            emitter = None;
        }
        let drops = running.platform.drops.load(Ordering::SeqCst);
        if let Some(emitted) = emitted
            && delivered + drops >= emitted
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ledger did not close: {delivered} delivered"
        );
        let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(50), client.next()).await
        else {
            continue;
        };
        match event {
            StreamEvent::Batch(b) => delivered += b.len() as u64,
            StreamEvent::Disconnected { retry_in, reason } => {
                assert_eq!(
                    retry_in,
                    Duration::ZERO,
                    "an expiry is not penalised: {reason}"
                );
                reconnects += 1;
            }
            StreamEvent::Connected | StreamEvent::Closed { .. } => {}
            StreamEvent::Gap(g) => panic!("no loss expected, got {g:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    let stats = client.stats();
    assert_eq!(stats.sequence_lost, 0);
    let ledger = Ledger {
        emitted: emitted.unwrap(),
        delivered,
        drops: running.platform.drops.load(Ordering::SeqCst),
        closes: running.platform.expiry_closes.load(Ordering::SeqCst),
        reconnects,
        renewals: stats.renewals,
    };
    println!(
        "renewal (jwt {jwt}): emitted {}, delivered {}, drops {}, expiries {}, reconnects {}, \
         renewals {}, tokens minted {}",
        ledger.emitted,
        ledger.delivered,
        ledger.drops,
        ledger.closes,
        ledger.reconnects,
        ledger.renewals,
        running.platform.minted.load(Ordering::SeqCst)
    );
    ledger
}

#[tokio::test]
async fn a_renewing_consumer_keeps_receiving_across_expiries_without_loss() {
    // Opaque tokens: the client learns of the expiry from the edge's close and reconnects at
    // once (a 5 s back-off floor would blow the deadline).
    let l = across_expiries(Duration::from_secs(1), false, Duration::from_millis(3_600)).await;
    assert_eq!(
        l.emitted,
        l.delivered + l.drops,
        "emitted = delivered + counted drops"
    );
    assert_eq!(l.drops, 0, "a prompt renewal loses nothing");
    assert!(l.closes >= 3, "only {} expiries crossed", l.closes);
    assert!(l.renewals >= l.closes, "{} renewals", l.renewals);
    assert_eq!(l.reconnects, l.closes);
}

#[tokio::test]
async fn a_jwt_consumer_hands_over_before_each_expiry_without_a_disconnect() {
    // JWTs: the client reads `exp`, opens a successor with a renewed token shortly before it,
    // and the edge's expiry close lands on a connection already replaced.
    let l = across_expiries(Duration::from_secs(2), true, Duration::from_millis(6_500)).await;
    assert_eq!(
        l.emitted,
        l.delivered + l.drops,
        "emitted = delivered + counted drops"
    );
    assert_eq!(l.drops, 0);
    assert!(l.closes >= 3, "only {} expiries crossed", l.closes);
    assert!(l.renewals >= l.closes, "{} renewals", l.renewals);
    assert_eq!(l.reconnects, 0, "no disconnect reached the consumer");
}

#[tokio::test]
async fn a_refused_upgrade_renews_once_then_is_final() {
    let running = platform(Duration::from_secs(60), false).await;
    running.platform.refuse_next.store(1, Ordering::SeqCst);
    let mut client = FirehoseClient::connect(renewing(&running.url, SECRET), firehose()).unwrap();
    match next(&mut client).await {
        StreamEvent::Disconnected { retry_in, .. } => assert_eq!(retry_in, Duration::ZERO),
        other => panic!("expected an immediate renewal, got {other:?}"),
    }
    assert_eq!(next(&mut client).await, StreamEvent::Connected);
    assert_eq!(client.stats().renewals, 1);
    assert_eq!(running.platform.minted.load(Ordering::SeqCst), 2);
    drop(client);

    // A freshly renewed token refused again: renewing cannot help, so no loop.
    running.platform.refuse_next.store(2, Ordering::SeqCst);
    let mut client = FirehoseClient::connect(renewing(&running.url, SECRET), firehose()).unwrap();
    let _ = next(&mut client).await;
    assert_eq!(
        next(&mut client).await,
        StreamEvent::Fatal(Error::Unauthorized)
    );
    assert_eq!(client.next().await, None);
}

#[tokio::test]
async fn wrong_client_credentials_are_final_and_say_what_to_check() {
    let running = platform(Duration::from_secs(60), false).await;
    let mut client = FirehoseClient::connect(renewing(&running.url, "wrong"), firehose()).unwrap();
    let StreamEvent::Fatal(error) = next(&mut client).await else {
        panic!("expected a final error");
    };
    let text = error.to_string();
    assert!(
        text.contains("\"nozzle\"") && text.contains("client_secret"),
        "{text}"
    );
    assert!(!text.contains("wrong"), "the secret leaked: {text}");
    assert_eq!(client.next().await, None);
}

fn expired_jwt() -> String {
    let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.c2ln",
        enc(r#"{"alg":"EdDSA","kid":"k1"}"#),
        enc(r#"{"sub":"admin","exp":1700000000}"#)
    )
}

#[tokio::test]
async fn a_static_expired_token_is_a_clear_final_error_not_a_loop() {
    let fake = fake_edge::start().await;
    let cfg = ClientConfig {
        url: fake.url.clone(),
        token: expired_jwt(),
        ..ClientConfig::default()
    };
    let mut client = FirehoseClient::connect(cfg, firehose()).unwrap();
    let StreamEvent::Fatal(error) = next(&mut client).await else {
        panic!("expected a final error");
    };
    assert!(matches!(error, Error::TokenExpired { .. }), "{error:?}");
    assert!(error.to_string().contains("token expired"), "{error}");
    assert_eq!(client.next().await, None);
    assert_eq!(fake.edge.attempt_count(), 1);
}

#[tokio::test]
async fn a_static_token_closed_for_expiry_ends_the_stream() {
    let fake = fake_edge::start().await;
    fake.edge
        .script(Script::Serve(vec![Action::Close(1008, "token expired")]));
    let cfg = ClientConfig {
        url: fake.url.clone(),
        token: fake_edge::TOKEN.to_owned(),
        ..ClientConfig::default()
    };
    let mut client = FirehoseClient::connect(cfg, firehose()).unwrap();
    assert_eq!(next(&mut client).await, StreamEvent::Connected);
    assert!(matches!(
        next(&mut client).await,
        StreamEvent::Closed { code: 1008, .. }
    ));
    assert_eq!(
        next(&mut client).await,
        StreamEvent::Fatal(Error::TokenExpired {
            expired_secs_ago: 0
        })
    );
    assert_eq!(client.next().await, None);
    assert_eq!(fake.edge.attempt_count(), 1);
}
