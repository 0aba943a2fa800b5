//! The internal CA rotated in three steps (`hydrant certs rotate begin|reissue|finish`) under a
//! pipeline running mutual TLS, with an emitter sending and a firehose stream open throughout:
//! after each step the roles take the new files for new handshakes (checked with fresh
//! handshakes, not by waiting), no established stream is dropped, and every envelope arrives
//! exactly once. After the last step a leaf of the old CA is refused.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use hydrant_emitter::{Emitter, Registry};
use hydrant_firehose_client::{ClientConfig, FirehoseClient, StreamEvent, Subscription};
use hydrant_microcloud::{MicroCloud, Options};
use hydrant_tls::{ClientTls, Identity, Material, TlsFiles, issue};
use tokio_util::sync::CancellationToken;

/// Envelopes sent per rotation step.
const PER_STEP: usize = 200;
const SOURCE: &str = "rotation-app";

/// A client of `server` presenting `identity`'s files as they are in `dir` now.
fn client(dir: &Path, identity: Identity, server: Identity) -> ClientTls {
    let material = Material::load(&TlsFiles::in_dir(dir, identity)).unwrap();
    ClientTls::new(material, server).unwrap()
}

/// Retries a fresh handshake (and the server's first frame) until it is answered as `accepted`
/// says, within 30 s: the server has reloaded its files.
async fn until(what: &str, addr: &str, tls: impl Fn() -> ClientTls, accepted: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = hydrant_tls::grpc::probe(addr, &tls()).await;
        if answer.is_ok() == accepted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_step_ca_rotation_drops_no_stream_and_loses_no_envelope() {
    let data = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let cloud = MicroCloud::start(
        Options {
            data_dir: Some(data.path().to_owned()),
            tls: true,
            ..Options::pipeline()
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let certs = cloud
        .certs
        .clone()
        .expect("a TLS micro cloud has a cert directory");
    let (agent, doppler) = (addr(&cloud.agent_url), addr(&cloud.doppler_url));

    let mut stream = FirehoseClient::connect(
        ClientConfig {
            url: cloud.firehose_url.clone(),
            token: cloud.token.clone(),
            ..ClientConfig::default()
        },
        Subscription::Firehose {
            subscription_id: "rotation".to_owned(),
        },
    )
    .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        Ok(Some(StreamEvent::Connected)) => {}
        other => panic!("the firehose stream did not open: {other:?}"),
    }
    let emitter_registry = Registry::new(SOURCE, "0");
    let emitter = cloud.emitter(&emitter_registry, shutdown.clone());
    // The old CA's executor leaf, kept to show it is refused at the end.
    let old = tempfile::tempdir().unwrap();
    for file in ["executor.pem", "executor.key"] {
        std::fs::copy(certs.join(file), old.path().join(file)).unwrap();
    }

    // The stream is open once the edge has subscribed to the doppler: warm up until an
    // envelope makes it through.
    support::emit_until_delivered(&emitter, &mut stream, "rotation-warmup", b"warm").await;

    let mut sent = 0usize;
    let mut send = |emitter: &Emitter| {
        for _ in 0..PER_STEP {
            emitter.log(SOURCE, &sent.to_string(), "APP", b"rotating", false);
            sent += 1;
        }
        emitter.flush();
    };
    let executor = || client(&certs, Identity::Executor, Identity::Agent);
    let agent_client = || client(&certs, Identity::Agent, Identity::Doppler);

    send(&emitter);
    issue::rotate_begin(&certs, 3650).unwrap();
    send(&emitter);
    issue::rotate_reissue(&certs).unwrap();
    // New leaves are accepted once the servers have reloaded the bundle that trusts their CA.
    until("the agent to accept a new leaf", &agent, executor, true).await;
    until(
        "the doppler to accept a new leaf",
        &doppler,
        agent_client,
        true,
    )
    .await;
    send(&emitter);
    issue::rotate_finish(&certs).unwrap();
    // With today's bundle, so only the agent's judgement of the old leaf can fail it.
    let old_executor = || {
        let files = TlsFiles {
            ca_file: certs.join("ca.pem"),
            cert_file: old.path().join("executor.pem"),
            key_file: old.path().join("executor.key"),
        };
        ClientTls::new(Material::load(&files).unwrap(), Identity::Agent).unwrap()
    };
    until(
        "the agent to refuse the old CA",
        &agent,
        old_executor,
        false,
    )
    .await;
    // Trusting only the new CA, a fresh client still accepts the servers: they present their
    // reissued leaves.
    until("the agent to present its new leaf", &agent, executor, true).await;
    until(
        "the doppler to present its new leaf",
        &doppler,
        agent_client,
        true,
    )
    .await;
    send(&emitter);

    // Every envelope arrives exactly once on the stream that stayed open.
    let mut seen = BTreeSet::new();
    let mut client_gaps = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < sent {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, stream.next())
            .await
            .unwrap_or_else(|_| {
                let missing: Vec<usize> = (0..sent)
                    .filter(|i| !seen.contains(&i.to_string()))
                    .collect();
                panic!(
                    "only {} of {sent} envelopes arrived (missing {:?}..={:?}); agent ingress {}; \
                     emitter {:?}; client gaps {client_gaps:?}, stats {:?}, drops {:?}",
                    seen.len(),
                    missing.first(),
                    missing.last(),
                    cloud.counter("agent.ingress"),
                    emitter_registry.counters(),
                    stream.stats(),
                    cloud.drops()
                )
            })
            .expect("the stream ended");
        match event {
            StreamEvent::Batch(batch) => {
                for e in batch.decode().unwrap() {
                    if e.source_id == SOURCE {
                        assert!(
                            seen.insert(e.instance_id.clone()),
                            "{} twice",
                            e.instance_id
                        );
                    }
                }
            }
            // The client's own parse failures concern frames, not the pipeline; losses in the
            // pipeline show as markers from its hops, and as envelopes missing here.
            StreamEvent::Gap(gap) => {
                assert_eq!(gap.hop, "client", "pipeline loss: {gap:?}");
                client_gaps.push(gap);
            }
            other => panic!("the stream was interrupted: {other:?}"),
        }
    }
    let stats = stream.stats();
    assert_eq!((stats.connects, stats.disconnects), (1, 0), "{stats:?}");
    assert_eq!(cloud.counter("trafficcontroller.upstream_errors"), 0);
    let drops: Vec<_> = cloud.drops().into_iter().filter(|(_, n)| *n > 0).collect();
    assert!(drops.is_empty(), "{drops:?}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), cloud.stopped())
        .await
        .expect("every role stops");
}
