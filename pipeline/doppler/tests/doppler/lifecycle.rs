//! Starting, limits and stopping: what the binary and operators rely on.

use std::time::Duration;

use hydrant_envelope::v2;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_serves_health_and_metrics() {
    let d = start(config()).await;
    let health = http_get(d.admin, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = d.metrics().await;
    for name in [
        "doppler_ingress_total",
        "doppler_egress_total",
        "doppler_dropped_total",
        "doppler_subscriptions",
        "doppler_ingress_ring_depth",
        "logcache_store_size",
        "logcache_expired_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_max_subscriptions_are_refused_until_one_closes() {
    let d = start(hydrant_doppler::Config {
        max_subscriptions: 2,
        ..config()
    })
    .await;
    let first = d.subscribe("", vec![logs_of("")]).await;
    let _second = d.subscribe("", vec![]).await;
    let request = || v2::EgressBatchRequest {
        selectors: vec![logs_of("")],
        ..Default::default()
    };
    let refused = d
        .egress()
        .await
        .batched_receiver(request())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("max_subscriptions"),
        "{}",
        refused.message()
    );
    d.wait_metric("doppler_subscriptions", &[], |v| v == 2.0)
        .await;

    drop(first);
    d.wait_metric("doppler_subscriptions", &[], |v| v == 1.0)
        .await;
    let mut again = d.subscribe("", vec![logs_of("")]).await;
    let sender = d.sender().await;
    sender.send(vec![log("app", 1, "hello")]).await;
    assert_eq!(line(&again.next().await), "hello");
    assert_eq!(
        d.metric(
            "doppler_rejected_subscriptions_total",
            &["reason=\"max_subscriptions\""]
        )
        .await,
        1.0
    );
    sender.close().await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_and_configs_get_clear_errors() {
    let d = start(config()).await;
    let too_many = vec![logs_of(""); hydrant_doppler::MAX_SELECTORS + 1];
    let err = d
        .egress()
        .await
        .batched_receiver(v2::EgressBatchRequest {
            selectors: too_many,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("too many selectors"));
    // A request too large to be a real one never gets to pin its selectors.
    let err = d
        .egress()
        .await
        .batched_receiver(v2::EgressBatchRequest {
            selectors: vec![logs_of(&"x".repeat(100 * 1024))],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange);
    assert_eq!(
        d.metric(
            "doppler_rejected_subscriptions_total",
            &["reason=\"invalid\""]
        )
        .await,
        1.0
    );
    d.stop().await;

    let bad = hydrant_doppler::Config {
        ingress_ring_envelopes: 0,
        ..config()
    };
    let err = start(bad).await.handle.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("ingress_ring_envelopes"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_promptly_with_streams_open() {
    let d = start(config()).await;
    let mut sub = d.subscribe("", vec![logs_of("")]).await;
    let sender = d.sender().await;
    sender.send(vec![log("app", 1, "before")]).await;
    assert_eq!(line(&sub.next().await), "before");
    let began = tokio::time::Instant::now();
    d.stop().await;
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "took {:?}",
        began.elapsed()
    );
    // The subscriber's stream ends rather than hanging.
    assert!(sub.next_within(DEADLINE).await.is_none());
}
