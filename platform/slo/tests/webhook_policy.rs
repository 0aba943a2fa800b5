//! Webhook URLs are written by developers, so delivery follows the platform's outbound policy:
//! a webhook that redirects to another host (a link-local metadata address, another loopback
//! address) is refused without connecting there; loopback destinations, by IP literal or by
//! a name that resolves to one, are refused unless the operator allows private addresses;
//! every refusal is counted and never retried.
//!
//! Every server here listens on 127.0.0.1; the redirect targets are never dialled (the test
//! asserts that for the loopback one, and the policy refuses before connecting for both).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use hydrant_emitter::Registry;
use hydrant_slo::WebhookConfig;
use hydrant_slo::webhook::Webhooks;
use hydrant_testkit::wait_for;
use tokio_util::sync::CancellationToken;

/// A server on 127.0.0.1 whose `/hook` answers with `status` and `Location: location`, and
/// whose `/old` redirects (307) to its own `/hook`; returns its address and how many POSTs
/// reached `/hook`.
async fn server(
    status: StatusCode,
    location: String,
    shutdown: CancellationToken,
) -> (std::net::SocketAddr, Arc<AtomicU32>) {
    let hits = Arc::new(AtomicU32::new(0));
    let h = Arc::clone(&hits);
    let app = axum::Router::new()
        .route(
            "/hook",
            post(move || {
                h.fetch_add(1, Ordering::SeqCst);
                let location = location.clone();
                async move { (status, [(header::LOCATION, location)]).into_response() }
            }),
        )
        .route(
            "/old",
            post(|| async {
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, "/hook")],
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    (addr, hits)
}

fn config(allow_private: bool) -> WebhookConfig {
    WebhookConfig {
        initial_backoff_ms: 10,
        max_backoff_ms: 40,
        max_attempts: 3,
        timeout_ms: 2000,
        allow_private,
        ..WebhookConfig::default()
    }
}

async fn refused(registry: &Registry, n: u64) {
    wait_for(Duration::from_secs(10), "the webhook to be refused", || {
        let r = registry.clone();
        async move { r.counter_sum("slo.dropped", &[("reason", "webhook_refused")]) == n }
    })
    .await;
}

#[tokio::test]
async fn a_redirect_to_link_local_or_another_loopback_host_is_refused() {
    let shutdown = CancellationToken::new();
    // A second server on another loopback address: were the redirect followed, it would count.
    let (target, target_hits) = server(StatusCode::OK, String::new(), shutdown.clone()).await;
    let elsewhere = format!("http://localhost:{}/hook", target.port());
    let registry = Registry::new("slo", "0");
    // Loopback is allowed here so that the first hop (the test's own server) is reachable:
    // the redirect must be refused for leaving the host, not for its address.
    let hooks = Webhooks::spawn(&config(true), &registry, shutdown.clone());
    let mut redirectors = Vec::new();
    for location in [
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        elsewhere,
    ] {
        for status in [StatusCode::FOUND, StatusCode::TEMPORARY_REDIRECT] {
            let (addr, hits) = server(status, location.clone(), shutdown.clone()).await;
            hooks.send(
                &format!("http://127.0.0.1:{}/hook", addr.port()),
                b"{}".to_vec(),
            );
            redirectors.push(hits);
        }
    }
    refused(&registry, 4).await;
    for hits in &redirectors {
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "refused at once, not retried"
        );
    }
    assert_eq!(
        target_hits.load(Ordering::SeqCst),
        0,
        "the redirect was not followed"
    );
    assert_eq!(registry.counter_sum("slo.webhook_delivered", &[]), 0);
    assert_eq!(registry.counter_sum("slo.webhook_retries", &[]), 0);
    assert!(
        registry
            .render_prometheus()
            .contains("reason=\"webhook_refused\"} 4"),
        "counted on /metrics"
    );

    // A redirect within the same host is an ordinary move and is followed.
    let (moved, moved_hits) = server(StatusCode::OK, String::new(), shutdown.clone()).await;
    hooks.send(
        &format!("http://127.0.0.1:{}/old", moved.port()),
        b"{}".to_vec(),
    );
    wait_for(
        Duration::from_secs(10),
        "the webhook to be delivered",
        || async { registry.counter_sum("slo.webhook_delivered", &[]) == 1 },
    )
    .await;
    assert_eq!(moved_hits.load(Ordering::SeqCst), 1);
    shutdown.cancel();
}

#[tokio::test]
async fn loopback_is_refused_after_dns_unless_the_operator_allows_it() {
    let shutdown = CancellationToken::new();
    let (addr, hits) = server(StatusCode::OK, String::new(), shutdown.clone()).await;
    let registry = Registry::new("slo", "0");
    let hooks = Webhooks::spawn(&config(false), &registry, shutdown.clone());
    // An IP literal, and a name that DNS (the hosts file) answers with a loopback address.
    hooks.send(
        &format!("http://127.0.0.1:{}/hook", addr.port()),
        b"{}".to_vec(),
    );
    hooks.send(
        &format!("http://localhost:{}/hook", addr.port()),
        b"{}".to_vec(),
    );
    hooks.send(
        &format!("http://[::1]:{}/hook", addr.port()),
        b"{}".to_vec(),
    );
    refused(&registry, 3).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing reached the server");
    assert_eq!(registry.counter_sum("slo.webhook_retries", &[]), 0);

    let allowed = Registry::new("slo", "0");
    let hooks = Webhooks::spawn(&config(true), &allowed, shutdown.clone());
    hooks.send(
        &format!("http://localhost:{}/hook", addr.port()),
        b"{}".to_vec(),
    );
    wait_for(Duration::from_secs(10), "the allowed webhook", || {
        let r = allowed.clone();
        async move { r.counter_sum("slo.webhook_delivered", &[]) == 1 }
    })
    .await;
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    shutdown.cancel();
}
