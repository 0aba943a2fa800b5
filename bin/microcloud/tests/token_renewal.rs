//! A firehose consumer whose tokens live three seconds, against the real edge of a pipeline micro
//! cloud: the edge closes each stream with 1008 "token expired" at `exp`, and the client,
//! holding a token source instead of a fixed token, renews before each expiry and keeps every
//! envelope: emitted = delivered + counted drops, with the renewal counter moved.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::time::{Duration, Instant};

use hydrant_emitter::Registry;
use hydrant_firehose_client::{
    ClientConfig, FirehoseClient, StreamEvent, Subscription, TokenSource,
};
use hydrant_microcloud::{MicroCloud, Options};
use tokio_util::sync::CancellationToken;

/// What every token this consumer gets lives: the edge checks `exp` to the second.
const TOKEN_SECS: i64 = 3;

fn payloads(event: &StreamEvent) -> Vec<String> {
    let StreamEvent::Batch(batch) = event else {
        return Vec::new();
    };
    batch
        .iter()
        .filter_map(|v| {
            v.log()
                .map(|(p, _)| String::from_utf8_lossy(p).into_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_with_three_second_tokens_keeps_every_envelope_across_expiries() {
    let shutdown = CancellationToken::new();
    let mut cloud = MicroCloud::start(Options::pipeline(), shutdown.clone())
        .await
        .unwrap();
    let key = cloud.key.clone();
    let source = TokenSource::new(move |_stale| {
        let token = key.issue(
            &hydrant_auth::Claims::new("client:renewal-test")
                .for_audience(hydrant_auth::AUD_LOGS)
                .with_scope(hydrant_auth::SCOPE_ADMIN)
                .with_scope(hydrant_auth::SCOPE_FIREHOSE)
                .expires_in(TOKEN_SECS),
        );
        async move { Ok(token) }
    });
    let config = ClientConfig {
        url: cloud.firehose_url.clone(),
        token_source: Some(source),
        ..ClientConfig::default()
    };
    let mut client = FirehoseClient::connect(
        config,
        Subscription::Firehose {
            subscription_id: "renewal-test".to_owned(),
        },
    )
    .unwrap();

    let emitter = cloud.emitter(&Registry::new("renewal-test", "0"), shutdown.clone());
    // Probe until the subscription carries data, so the ledger starts on a live stream.
    let deadline = Instant::now() + Duration::from_secs(30);
    'probe: loop {
        assert!(Instant::now() < deadline, "no probe came through");
        emitter.log("app", "0", "APP/PROC/WEB", b"probe", false);
        emitter.flush();
        let until = tokio::time::Instant::now() + Duration::from_millis(200);
        while let Ok(Some(event)) = tokio::time::timeout_at(until, client.next()).await {
            if payloads(&event).iter().any(|p| p == "probe") {
                break 'probe;
            }
        }
    }

    // Emit steadily across at least three expiries, reading all the while.
    let run_for = Duration::from_secs(10);
    let started = Instant::now();
    let mut emitted = 0u64;
    let mut delivered = 0u64;
    let mut disconnects = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while started.elapsed() < run_for {
        tokio::select! {
            _ = tick.tick() => {
                emitted += 1;
                emitter.log("app", "0", "APP/PROC/WEB", format!("n-{emitted}").as_bytes(), false);
                emitter.flush();
            }
            event = client.next() => {
                let event = event.expect("the stream stays open");
                match &event {
                    StreamEvent::Disconnected { .. } => disconnects += 1,
                    StreamEvent::Fatal(e) => panic!("stream ended: {e}"),
                    _ => {}
                }
                delivered += payloads(&event).iter().filter(|p| p.starts_with("n-")).count() as u64;
            }
        }
    }
    let drops = || cloud.drops().values().sum::<u64>();
    let deadline = Instant::now() + Duration::from_secs(15);
    while delivered + drops() < emitted {
        assert!(
            Instant::now() < deadline,
            "ledger open: emitted {emitted}, delivered {delivered}, drops {:?}, stats {:?}",
            cloud.drops(),
            client.stats()
        );
        if let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(100), client.next()).await
        {
            delivered += payloads(&event)
                .iter()
                .filter(|p| p.starts_with("n-"))
                .count() as u64;
        }
    }
    let stats = client.stats();
    println!(
        "real edge, {TOKEN_SECS} s tokens: emitted {emitted}, delivered {delivered}, drops {:?}, \
         expiry closes {}, renewals {}, connects {}, disconnects {disconnects}",
        cloud.drops(),
        cloud.counter("trafficcontroller.token_expired"),
        stats.renewals,
        stats.connects
    );
    assert_eq!(
        emitted,
        delivered + drops(),
        "emitted = delivered + counted drops"
    );
    assert!(
        stats.renewals >= 3,
        "only {} renewals in {run_for:?}",
        stats.renewals
    );
    let expiry_closes = cloud.counter("trafficcontroller.token_expired");
    assert!(
        expiry_closes >= 3,
        "the edge closed only {expiry_closes} streams for expiry"
    );
    assert_eq!(
        disconnects, 0,
        "each expiry was handed over before the edge's close"
    );

    shutdown.cancel();
    let _ = cloud.supervise(&shutdown).await;
    tokio::time::timeout(Duration::from_secs(30), cloud.stopped())
        .await
        .expect("every role stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_expired_token_gets_an_error_naming_the_expiry_not_a_reconnect_loop() {
    let shutdown = CancellationToken::new();
    let mut cloud = MicroCloud::start(Options::pipeline(), shutdown.clone())
        .await
        .unwrap();
    let expired = cloud.key.issue(
        &hydrant_auth::Claims::new("admin")
            .for_audience(hydrant_auth::AUD_LOGS)
            .with_scope(hydrant_auth::SCOPE_ADMIN)
            .expires_in(-60),
    );
    let config = ClientConfig {
        url: cloud.firehose_url.clone(),
        token: expired,
        ..ClientConfig::default()
    };
    let mut client = FirehoseClient::connect(
        config,
        Subscription::Firehose {
            subscription_id: "expired-test".to_owned(),
        },
    )
    .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), client.next())
        .await
        .expect("an answer within 10 s");
    let Some(StreamEvent::Fatal(error)) = event else {
        panic!("expected a final error, got {event:?}");
    };
    let text = error.to_string();
    assert!(
        text.contains("token expired") && text.contains("s ago"),
        "{text}"
    );
    assert_eq!(client.next().await, None, "no reconnect follows");
    assert_eq!(client.stats().disconnects, 0);

    shutdown.cancel();
    let _ = cloud.supervise(&shutdown).await;
    tokio::time::timeout(Duration::from_secs(30), cloud.stopped())
        .await
        .expect("every role stops");
}
