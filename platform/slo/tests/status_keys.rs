//! The SLO alerter's status page with `tls`: its token keys come over mutual TLS from a server
//! proving the `cloudcontroller` identity (a stand-in for the controller's internal listener
//! that speaks nothing but mutual TLS), presented with the alerter's own `slo` certificate; the
//! page then verifies a token signed with those keys and refuses one signed with another key.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::time::Duration;

use hydrant_auth::{AUD_LOGS, Claims, SigningKey};
use hydrant_slo::{Config, Slo};
use hydrant_testkit::wait_for;
use hydrant_tls::local::FixedServer;
use hydrant_tls::{Identity, TlsFiles};
use tokio_util::sync::CancellationToken;

/// `GET url` with `token`: the status code, or 0 when the page does not answer yet.
async fn status(url: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_keys_come_over_mutual_tls() {
    let certs = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    // The controller's internal listener: mutual TLS only, letting in the role's identity.
    let (server, internal) = FixedServer::internal_api(
        certs.path(),
        Identity::Slo,
        vec![
            ("/token_keys".to_owned(), key.key_set().to_json()),
            ("/v3/slos".to_owned(), "[]".to_owned()),
        ],
    )
    .await
    .unwrap();

    let data = tempfile::tempdir().unwrap();
    let mut config = Config {
        api: hydrant_runtime::ApiSettings {
            api_url: format!("https://{internal}"),
            token: Some("role-token".to_owned()),
            tls: Some(TlsFiles::in_dir(certs.path(), Identity::Slo)),
            ..hydrant_runtime::ApiSettings::default()
        },
        data_dir: data.path().to_owned(),
        admin_listen: "127.0.0.1:0".to_owned(),
        ..Config::default()
    };
    // Nothing listens there: the firehose is not what this test is about.
    config.firehose.url = "ws://127.0.0.1:9".to_owned();
    config.firehose.token = "firehose-token".to_owned();
    let listeners = hydrant_runtime::bind::<Slo>(&config).await.unwrap();
    let admin = listeners.local_addr("admin").unwrap();
    let shutdown = CancellationToken::new();
    let role = tokio::spawn(hydrant_runtime::run::<Slo>(
        config,
        listeners,
        shutdown.clone(),
    ));

    let admin_token = key.issue(
        &Claims::new("admin")
            .for_audience(AUD_LOGS)
            .with_scope("admin"),
    );
    let url = format!("http://{admin}/v1/slos");
    wait_for(
        Duration::from_secs(20),
        "the status page to verify a token with keys fetched over mutual TLS",
        || async { status(&url, &admin_token).await == 200 },
    )
    .await;
    let forged = SigningKey::generate().unwrap().issue(
        &Claims::new("admin")
            .for_audience(AUD_LOGS)
            .with_scope("admin"),
    );
    assert_eq!(status(&url, &forged).await, 401);

    // The keys came from the mTLS server, asked by a client proving the `slo` identity.
    assert!(server.hits(Identity::Slo, "/token_keys") >= 1);
    let requests = server.requests();
    assert!(
        requests.iter().all(|(id, _)| *id == Some(Identity::Slo)),
        "every request came with the slo certificate: {requests:?}"
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), role)
        .await
        .expect("the alerter stops")
        .unwrap()
        .unwrap();
}
