//! A nozzle reading the firehose over `wss://`: an edge serving TLS with a certificate from the
//! platform's CA, beside a micro cloud's pipeline, and the firehose client trusting that CA
//! through `ca_file`. A client trusting another CA never connects and says why.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod support;

use std::time::Duration;

use hydrant_emitter::Registry;
use hydrant_firehose_client::{ClientConfig, FirehoseClient, StreamEvent, Subscription};
use hydrant_microcloud::{MicroCloud, Options};
use hydrant_tls::local::LocalCa;
use tokio_util::sync::CancellationToken;

fn client(url: &str, token: &str, ca_file: &std::path::Path) -> FirehoseClient {
    FirehoseClient::connect(
        ClientConfig {
            url: url.to_owned(),
            token: token.to_owned(),
            ca_file: ca_file.display().to_string(),
            ..ClientConfig::default()
        },
        Subscription::Firehose {
            subscription_id: "nozzle".to_owned(),
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nozzle_reads_the_firehose_over_wss_with_the_platform_ca() {
    let shutdown = CancellationToken::new();
    let cloud = MicroCloud::start(Options::pipeline(), shutdown.clone())
        .await
        .unwrap();

    // A second edge on the same doppler, serving TLS for `localhost`.
    let dir = tempfile::tempdir().unwrap();
    let edge = cloud
        .public_edge(dir.path(), shutdown.clone())
        .await
        .unwrap();

    let url = format!("wss://localhost:{}", edge.port);
    let mut nozzle = client(&url, &cloud.token, &edge.ca_file);
    match tokio::time::timeout(Duration::from_secs(10), nozzle.next()).await {
        Ok(Some(StreamEvent::Connected)) => {}
        other => panic!("the wss:// stream did not open: {other:?}"),
    }
    let emitter = cloud.emitter(&Registry::new("tls-app", "0"), shutdown.clone());
    support::emit_until_delivered(&emitter, &mut nozzle, "tls-app", b"over wss").await;
    assert_eq!(nozzle.stats().connects, 1);

    // Trusting another CA, the client refuses the edge's certificate and says so.
    let other = tempfile::tempdir().unwrap();
    let other_ca = other.path().join("ca.pem");
    std::fs::write(&other_ca, LocalCa::new("another CA").unwrap().pem()).unwrap();
    let mut stranger = client(&url, &cloud.token, &other_ca);
    match tokio::time::timeout(Duration::from_secs(10), stranger.next()).await {
        Ok(Some(StreamEvent::Disconnected { reason, .. })) => {
            assert!(reason.contains("certificate"), "{reason}");
        }
        other => panic!("expected a refused handshake, got {other:?}"),
    }

    shutdown.cancel();
    edge.stopped().await;
    tokio::time::timeout(Duration::from_secs(30), cloud.stopped())
        .await
        .expect("every role stops");
}
