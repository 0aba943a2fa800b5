//! The syslog nozzle's `/drains` page with `[platform].tls`: its token keys come over mutual
//! TLS, presented with the nozzle's own certificate, from a server proving the
//! `cloudcontroller` identity (a stand-in for the controller's internal listener that speaks
//! nothing but mutual TLS); the page then verifies an operator's token signed with those keys
//! and refuses one signed with another key.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::net::SocketAddr;
use std::time::Duration;

use hydrant_auth::{AUD_LOGS, Claims, SigningKey};
use hydrant_nozzle_syslog::{Config, PlatformConfig, SyslogNozzle};
use hydrant_testkit::wait_for;
use hydrant_tls::local::FixedServer;
use hydrant_tls::{Identity, TlsFiles};
use tokio_util::sync::CancellationToken;

/// `GET /drains` on the admin port with `token`: the status code (0 when nothing answers).
async fn drains_status(admin: SocketAddr, token: &str) -> u16 {
    hydrant_testkit::admin_get(admin, "/drains", Some(token))
        .await
        .map_or(0, |(status, _)| status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_page_keys_come_over_mutual_tls() {
    let certs = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    // The controller's internal listener: mutual TLS only, letting in the role's identity.
    let (server, internal) = FixedServer::internal_api(
        certs.path(),
        Identity::Nozzle,
        vec![("/token_keys".to_owned(), key.key_set().to_json())],
    )
    .await
    .unwrap();

    let mut config = Config {
        platform: Some(PlatformConfig {
            api: hydrant_runtime::ApiSettings {
                api_url: format!("https://{internal}"),
                token: Some("role-token".to_owned()),
                tls: Some(TlsFiles::in_dir(certs.path(), Identity::Nozzle)),
                ..hydrant_runtime::ApiSettings::default()
            },
            ..PlatformConfig::default()
        }),
        admin_listen: "127.0.0.1:0".to_owned(),
        status_auth: true,
        ..Config::default()
    };
    // Nothing listens there: the firehose is not what this test is about.
    config.firehose.url = "ws://127.0.0.1:9".to_owned();
    config.firehose.token = "firehose-token".to_owned();
    let listeners = hydrant_runtime::bind::<SyslogNozzle>(&config)
        .await
        .unwrap();
    let admin = listeners.local_addr("admin").unwrap();
    let shutdown = CancellationToken::new();
    let role = tokio::spawn(hydrant_runtime::run::<SyslogNozzle>(
        config,
        listeners,
        shutdown.clone(),
    ));

    let operator = key.issue(
        &Claims::new("admin")
            .for_audience(AUD_LOGS)
            .with_scope("admin"),
    );
    wait_for(
        Duration::from_secs(20),
        "/drains to verify a token with keys fetched over mutual TLS",
        || async { drains_status(admin, &operator).await == 200 },
    )
    .await;
    let forged = SigningKey::generate().unwrap().issue(
        &Claims::new("admin")
            .for_audience(AUD_LOGS)
            .with_scope("admin"),
    );
    assert_eq!(drains_status(admin, &forged).await, 401);

    // The keys came from the mTLS server, asked by a client proving the `nozzle` identity.
    assert!(server.hits(Identity::Nozzle, "/token_keys") >= 1);
    let requests = server.requests();
    assert!(
        requests.iter().all(|(id, _)| *id == Some(Identity::Nozzle)),
        "every request came with the nozzle certificate: {requests:?}"
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), role)
        .await
        .expect("the nozzle stops")
        .unwrap()
        .unwrap();
}
