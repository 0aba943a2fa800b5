//! The alerter's status on its admin listener: `GET /v1/slos` (every app) and
//! `GET /v1/slos/{app_guid}` (one app), for `hydrant slo NAME` and `hydrant top`.
//!
//! Flow: the request's bearer token → [`hydrant_auth::TokenKeys::verify`] (the cloud
//! controller's public keys, fetched from `token_keys_url` — with `tls`, over the role's mutual
//! TLS to the internal listener, from a server proving the `cloudcontroller` identity — and
//! cached in `data_dir`, so status keeps answering while the controller is down) → the scope
//! check → the engine's status.
//!
//! The invariant: an app's SLO status is tenant data, shown only to a token that may read that
//! app's logs (audience `hydrant-logs`; `admin`, `firehose`, or the app's `app:<guid>:read`,
//! which its log token carries). The whole list needs `admin` or `firehose`. A token that may
//! not read an app gets the same 404 as an app with no SLOs, so the answer does not tell which
//! app ids exist. `/healthz` and `/metrics` stay open. Refusals are counted as
//! `slo.status_refused{reason}`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hydrant_auth::TokenKeys;
use hydrant_emitter::Registry;
use hydrant_runtime::{TokenGate, lock};

use crate::SharedEngine;

/// What the status handlers share.
#[derive(Debug, Clone)]
struct Status {
    engine: SharedEngine,
    /// Open only when `status_auth = false` (tests and local benchmarks).
    gate: TokenGate,
}

/// The status routes, checking tokens against `keys` (or open to all with `None`).
pub(crate) fn routes(
    engine: SharedEngine,
    keys: Option<Arc<TokenKeys>>,
    registry: &Registry,
) -> axum::Router {
    let state = Status {
        engine,
        gate: TokenGate::new(
            keys,
            registry,
            "slo.status_refused",
            "status requests refused, by reason",
            "missing token: send \"Authorization: Bearer <token>\" with a token that may read \
             the app's logs (an admin's, or the app's log token)",
        ),
    };
    axum::Router::new()
        .route("/v1/slos", get(all))
        .route("/v1/slos/{app_guid}", get(one))
        .with_state(state)
}

async fn all(State(s): State<Status>, headers: HeaderMap) -> Response {
    let claims = match s.gate.authenticate(&headers).await {
        Ok(claims) => claims,
        Err(refusal) => return refusal,
    };
    if !claims.can_read_firehose() {
        return s.gate.forbid(
            "every app's SLO status needs a token with the admin or firehose scope; ask for one \
             app with /v1/slos/{app_guid}",
        );
    }
    let list: Vec<_> = lock(&s.engine).statuses().cloned().collect();
    Json(list).into_response()
}

async fn one(State(s): State<Status>, Path(guid): Path<String>, headers: HeaderMap) -> Response {
    let claims = match s.gate.authenticate(&headers).await {
        Ok(claims) => claims,
        Err(refusal) => return refusal,
    };
    let found = if claims.can_read_source(&guid) {
        lock(&s.engine).status(&guid).cloned()
    } else {
        s.gate.count_forbidden();
        None
    };
    match found {
        Some(status) => Json(status).into_response(),
        None => (StatusCode::NOT_FOUND, "no SLOs evaluated for this app\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use hydrant_api::slo::{AppSlos, Sli, Slo};
    use hydrant_auth::{AUD_API, AUD_LOGS, Claims, KeySources, Scope, SigningKey, Unobserved};
    use hydrant_windows::{Windows, WindowsConfig};

    use super::*;
    use crate::Engine;

    fn specs(guid: &str) -> AppSlos {
        AppSlos {
            app_guid: guid.to_owned(),
            app_name: guid.to_owned(),
            slos: vec![Slo {
                name: "availability".to_owned(),
                sli: Sli::Availability {
                    count_router_errors: true,
                },
                objective: 99.9,
                period_days: 30,
                min_requests: 1,
                webhook_url: None,
                description: None,
            }],
            updated_at: 0,
        }
    }

    /// Serves the routes over two evaluated apps on loopback, verifying with `key`.
    async fn serve(key: &SigningKey, registry: &Registry) -> String {
        let base = Instant::now();
        let windows = Windows::with_clock(WindowsConfig::default(), base, 1_700_000_040).unwrap();
        let mut engine = Engine::new();
        engine.set_specs(vec![specs("app-a"), specs("app-b")]);
        engine.evaluate(&windows, base, 1_700_000_040);
        let keys = TokenKeys::new(
            KeySources {
                inline: Some(key.key_set().to_json()),
                refetch_every: Duration::from_secs(30),
                ..KeySources::default()
            },
            Arc::new(Unobserved),
        )
        .unwrap();
        let router = routes(Arc::new(Mutex::new(engine)), Some(Arc::new(keys)), registry);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}")
    }

    async fn get(url: &str, token: Option<&str>) -> u16 {
        let mut request = reqwest::Client::new().get(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap().status().as_u16()
    }

    #[tokio::test]
    async fn slo_status_needs_a_token_that_may_read_the_app() {
        let key = SigningKey::generate().unwrap();
        let registry = Registry::new("slo", "0");
        let base = serve(&key, &registry).await;
        let logs = |claims: Claims| key.issue(&claims.for_audience(AUD_LOGS));
        let admin = logs(Claims::new("admin").with_scope("admin"));
        let log_token_b = logs(Claims::new("dev").with_scope(Scope::app_read("app-b")));
        let developer = logs(Claims::new("dev").with_scope("cloud_controller.read"));
        let api_only = key.issue(
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

        let one = format!("{base}/v1/slos/app-a");
        let all = format!("{base}/v1/slos");
        let app_b = format!("{base}/v1/slos/app-b");
        let unknown = format!("{base}/v1/slos/app-z");
        let cases: Vec<(&str, &str, Option<&str>, u16)> = vec![
            ("no token", &one, None, 401),
            ("another key", &one, Some(&forged), 401),
            ("expired", &one, Some(&expired), 401),
            ("API audience", &one, Some(&api_only), 401),
            ("another app's log token", &one, Some(&log_token_b), 404),
            ("no app scope", &one, Some(&developer), 404),
            ("the app's log token", &app_b, Some(&log_token_b), 200),
            ("admin, one app", &one, Some(&admin), 200),
            ("admin, unknown app", &unknown, Some(&admin), 404),
            ("list, log token", &all, Some(&log_token_b), 403),
            ("list, no token", &all, None, 401),
            ("list, admin", &all, Some(&admin), 200),
        ];
        let mut wrong = Vec::new();
        for (what, url, token, expected) in cases {
            let got = get(url, token).await;
            if got != expected {
                wrong.push(format!("{what}: {got}, expected {expected}"));
            }
        }
        assert!(wrong.is_empty(), "unexpected answers: {wrong:#?}");
        let list: Vec<serde_json::Value> = reqwest::Client::new()
            .get(&all)
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list.len(), 2);
        let text = registry.render_prometheus();
        for (reason, n) in [("unauthorized", 5), ("forbidden", 3)] {
            assert!(
                text.contains(&format!("reason=\"{reason}\"}} {n}\n")),
                "{reason} refusals should be {n}: {text}"
            );
        }
    }
}
