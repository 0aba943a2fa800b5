//! A nozzle reading the firehose over `wss://`: an edge serving TLS with a certificate from the
//! platform's CA, beside a micro cloud's pipeline, and the firehose client trusting that CA
//! through `ca_file`. A client trusting another CA never connects and says why.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::time::Duration;

use hydrant_emitter::{Emitter, EmitterConfig, Registry};
use hydrant_firehose::TrafficController;
use hydrant_firehose_client::{ClientConfig, FirehoseClient, StreamEvent, Subscription};
use hydrant_microcloud::{MicroCloud, Options};
use hydrant_tls::TlsFiles;
use hydrant_tls::local::{LocalCa, Validity};
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
    let ca = LocalCa::new("platform CA").unwrap();
    ca.write_leaf(dir.path(), "localhost", Validity::Days(30))
        .unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let files = TlsFiles {
        ca_file: dir.path().join("ca.pem"),
        cert_file: dir.path().join("localhost.pem"),
        key_file: dir.path().join("localhost.key"),
    };
    let listeners = hydrant_runtime::bind_on::<TrafficController>(|_| "127.0.0.1:0".to_owned())
        .await
        .unwrap();
    let port = listeners.local_addr("http").unwrap().port();
    let edge = tokio::spawn(hydrant_runtime::run::<TrafficController>(
        hydrant_firehose::Config {
            dopplers: vec![cloud.doppler_url.clone()],
            token_keys: Some(cloud.key.key_set().to_json()),
            tls: Some(files.clone()),
            ..hydrant_firehose::Config::default()
        },
        listeners,
        shutdown.clone(),
    ));

    let url = format!("wss://localhost:{port}");
    let mut nozzle = client(&url, &cloud.token, &files.ca_file);
    match tokio::time::timeout(Duration::from_secs(10), nozzle.next()).await {
        Ok(Some(StreamEvent::Connected)) => {}
        other => panic!("the wss:// stream did not open: {other:?}"),
    }
    let emitter = Emitter::start(
        EmitterConfig {
            agent: cloud.agent_url.clone(),
            ..EmitterConfig::default()
        },
        &Registry::new("tls-app", "0"),
        shutdown.clone(),
    );
    // Sent until one arrives: until the new edge has subscribed to the doppler, the firehose
    // has nobody to deliver to.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    'arrived: loop {
        emitter.log("tls-app", "0", "APP", b"over wss", false);
        emitter.flush();
        let wait = tokio::time::sleep(Duration::from_millis(200));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                event = nozzle.next() => match event {
                    Some(StreamEvent::Batch(batch)) => {
                        if batch.decode().unwrap().iter().any(|e| e.source_id == "tls-app") {
                            break 'arrived;
                        }
                    }
                    Some(StreamEvent::Gap(_)) => {}
                    other => panic!("expected envelopes over wss://, got {other:?}"),
                },
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no envelope arrived over wss:// in 30 s"
        );
    }
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
    let _ = tokio::time::timeout(Duration::from_secs(10), edge).await;
    tokio::time::timeout(Duration::from_secs(30), cloud.stopped())
        .await
        .expect("every role stops");
}
