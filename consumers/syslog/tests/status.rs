//! Who may read the nozzle's `/drains` page (app guids and where their logs go): the real
//! role on the in-process pipeline, verifying tokens with a key set the test signs with. No
//! token or a bad one is 401, a developer's token 403, an operator's (admin or firehose) 200;
//! refusals carry no drain and are counted.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

#[path = "support/pipeline.rs"]
mod pipeline;
#[path = "support/rsyslog.rs"]
mod rsyslog;

use std::net::SocketAddr;

use hydrant_auth::{AUD_API, AUD_LOGS, Claims, Scope, SigningKey};
use hydrant_nozzle_testkit::{Pipeline, metric, scrape};
use pipeline::{nozzle_config, start_nozzle_with};

/// `GET path` on the admin port with an optional bearer token: the status code and the body.
async fn get(admin: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    hydrant_testkit::admin_get(admin, path, token)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_page_answers_operators_only() {
    let pipeline = Pipeline::start().await;
    let key = SigningKey::generate().unwrap();
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), key.key_set().to_json()).unwrap();
    // A drain whose port marks it: no refusal may show it.
    let port = rsyslog::free_port();
    let drain = format!("syslog://drain-user:hunter2@127.0.0.1:{port}");
    let mut config = nozzle_config(&pipeline, vec![drain]);
    config.status_auth = true;
    config.token_keys_file = Some(keys.path().to_owned());
    let nozzle = start_nozzle_with(config).await;

    let logs = |claims: Claims| key.issue(&claims.for_audience(AUD_LOGS));
    let admin = logs(Claims::new("admin").with_scope("admin"));
    let firehose = logs(Claims::new("nozzle").with_scope("firehose"));
    let developer = logs(
        Claims::new("dev")
            .with_scope("cloud_controller.read")
            .with_scope("cloud_controller.write")
            .with_scope("space:s1:developer")
            .with_scope(Scope::app_read("app-1")),
    );
    let api_admin = key.issue(
        &Claims::new("admin")
            .for_audience(AUD_API)
            .with_scope("admin"),
    );
    let forged = SigningKey::generate().unwrap().issue(
        &Claims::new("admin")
            .for_audience(AUD_LOGS)
            .with_scope("admin"),
    );
    let expired = logs(Claims::new("admin").with_scope("admin").expires_in(-10));

    // The role mounts the page once its drains exist; until then the admin port answers 404.
    pipeline::eventually("/drains to be served", async || {
        get(nozzle.admin, "/drains", Some(&admin)).await.0 == 200
    })
    .await;
    let cases: [(&str, Option<&str>, u16); 7] = [
        ("no token", None, 401),
        ("another key", Some(&forged), 401),
        ("expired", Some(&expired), 401),
        ("API audience", Some(&api_admin), 401),
        ("a developer", Some(&developer), 403),
        ("an admin", Some(&admin), 200),
        ("the firehose scope", Some(&firehose), 200),
    ];
    let mut wrong = Vec::new();
    for (who, token, expected) in cases {
        let (status, body) = get(nozzle.admin, "/drains", token).await;
        if status != expected {
            wrong.push(format!("{who}: {status}, expected {expected}: {body}"));
        }
        let shows_drain = body.contains(&port.to_string());
        if shows_drain != (expected == 200) {
            wrong.push(format!("{who}: the drain shown = {shows_drain}: {body}"));
        }
        assert!(!body.contains("hunter2"), "{who}: {body}");
    }
    assert!(wrong.is_empty(), "unexpected answers: {wrong:#?}");
    let (_, body) = get(nozzle.admin, "/drains", Some(&admin)).await;
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["key"], "drains[0]");
    assert_eq!(
        list[0]["url"],
        format!("syslog://drain-user:****@127.0.0.1:{port}")
    );

    // Health and metrics stay open, and count the refusals.
    assert_eq!(get(nozzle.admin, "/healthz", None).await.0, 200);
    let text = scrape(nozzle.admin).await;
    for (reason, n) in [("unauthorized", 4), ("forbidden", 1)] {
        let seen = metric(
            &text,
            "nozzle_status_refused_total",
            &format!("reason=\"{reason}\""),
        );
        assert_eq!(seen, n, "{reason} refusals: {text}");
    }
    nozzle.stop().await;
}
