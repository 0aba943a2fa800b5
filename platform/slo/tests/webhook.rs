//! Webhook delivery against a local HTTP server that fails before it accepts: the notice is
//! retried with backoff until delivered; a server that never accepts costs the configured
//! attempts and one counted drop; a full queue drops and counts without waiting.

#![allow(clippy::unwrap_used, reason = "test code")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;
use hydrant_emitter::Registry;
use hydrant_slo::WebhookConfig;
use hydrant_slo::webhook::Webhooks;
use hydrant_testkit::wait_for;
use tokio_util::sync::CancellationToken;

/// A server answering 500 to the first `fail_first` POSTs, then 200; returns its URL and the
/// count of POSTs and the last body.
async fn server(
    fail_first: u32,
    shutdown: CancellationToken,
) -> (String, Arc<AtomicU32>, Arc<std::sync::Mutex<String>>) {
    let hits = Arc::new(AtomicU32::new(0));
    let body = Arc::new(std::sync::Mutex::new(String::new()));
    let (h, b) = (Arc::clone(&hits), Arc::clone(&body));
    let app = axum::Router::new().route(
        "/hook",
        post(move |text: String| {
            let n = h.fetch_add(1, Ordering::SeqCst);
            *b.lock().unwrap() = text;
            async move {
                if n < fail_first {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    (format!("http://user:s3cret@{addr}/hook"), hits, body)
}

fn fast() -> WebhookConfig {
    WebhookConfig {
        initial_backoff_ms: 10,
        max_backoff_ms: 40,
        max_attempts: 4,
        // The test servers listen on loopback, which only an operator may allow.
        allow_private: true,
        ..WebhookConfig::default()
    }
}

#[tokio::test]
async fn retries_until_the_server_accepts() {
    let shutdown = CancellationToken::new();
    let (url, hits, body) = server(2, shutdown.clone()).await;
    let registry = Registry::new("slo", "0");
    let hooks = Webhooks::spawn(&fast(), &registry, shutdown.clone());
    hooks.send(&url, br#"{"status":"firing"}"#.to_vec());
    wait_for(
        Duration::from_secs(10),
        "the webhook to be delivered",
        || async { registry.counter_sum("slo.webhook_delivered", &[]) == 1 },
    )
    .await;
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert_eq!(registry.counter_sum("slo.webhook_retries", &[]), 2);
    assert_eq!(*body.lock().unwrap(), r#"{"status":"firing"}"#);
    assert!(!registry.render_prometheus().contains("s3cret"));
    shutdown.cancel();
}

#[tokio::test]
async fn gives_up_after_its_attempts_and_counts_it() {
    let shutdown = CancellationToken::new();
    let (url, hits, _) = server(u32::MAX, shutdown.clone()).await;
    let registry = Registry::new("slo", "0");
    let hooks = Webhooks::spawn(&fast(), &registry, shutdown.clone());
    hooks.send(&url, b"{}".to_vec());
    wait_for(
        Duration::from_secs(10),
        "the webhook to be given up",
        || async { registry.counter_sum("slo.dropped", &[("reason", "webhook_gave_up")]) == 1 },
    )
    .await;
    assert_eq!(hits.load(Ordering::SeqCst), 4);
    assert_eq!(registry.counter_sum("slo.webhook_delivered", &[]), 0);
    shutdown.cancel();
}

#[tokio::test]
async fn a_full_queue_drops_without_waiting() {
    let shutdown = CancellationToken::new();
    let registry = Registry::new("slo", "0");
    let config = WebhookConfig {
        queue: 1,
        concurrency: 1,
        ..fast()
    };
    let hooks = Webhooks::spawn(&config, &registry, shutdown.clone());
    // Nothing listens on port 1; the dispatcher is busy retrying while more arrive.
    for _ in 0..50 {
        hooks.send("http://127.0.0.1:1/hook", b"{}".to_vec());
    }
    assert!(registry.counter_sum("slo.dropped", &[("reason", "webhook_queue_full")]) >= 45);
    shutdown.cancel();
}
