//! [`TokenGate`]: the bearer-token check in front of a role's status pages on its admin
//! listener (the SLO alerter's `/v1/slos`, the syslog nozzle's `/drains`).
//!
//! Flow: `Authorization: Bearer <token>` → [`hydrant_auth::TokenKeys::verify`] against the
//! controller's public keys for the logs audience → the page's own scope check, which refuses
//! through [`TokenGate::forbid`].
//!
//! Invariant: every refusal is counted by reason (`<role>.status_refused{reason=unauthorized |
//! forbidden}`), and a 401 carries `WWW-Authenticate` so a client knows a token is wanted. A
//! gate without keys (`status_auth = false`, for local tests) lets everyone in as an admin.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hydrant_auth::{AUD_LOGS, Claims, TokenKeys};
use hydrant_emitter::{Counter, Registry};

/// The token check of one status page, with its refusal counters.
#[derive(Debug, Clone)]
pub struct TokenGate {
    /// `None` only with `status_auth = false`.
    keys: Option<Arc<TokenKeys>>,
    unauthorized: Counter,
    forbidden: Counter,
    /// The 401's message when no token came: which token the page wants.
    missing: &'static str,
}

impl TokenGate {
    /// A gate verifying with `keys` (open with `None`), counting refusals in `registry` as
    /// `metric{reason}` described by `help`; `missing` says which token to send.
    #[must_use]
    pub fn new(
        keys: Option<Arc<TokenKeys>>,
        registry: &Registry,
        metric: &'static str,
        help: &'static str,
        missing: &'static str,
    ) -> Self {
        let refused = |reason| registry.counter(metric, help, &[("reason", reason)]);
        Self {
            keys,
            unauthorized: refused("unauthorized"),
            forbidden: refused("forbidden"),
            missing,
        }
    }

    /// The caller's verified claims (logs audience), or the 401 to answer with.
    ///
    /// # Errors
    /// The counted 401 response: no token, not a bearer token, or a token the keys refuse.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Claims, Response> {
        let Some(keys) = &self.keys else {
            return Ok(Claims::new("anonymous")
                .for_audience(AUD_LOGS)
                .with_scope(hydrant_auth::SCOPE_ADMIN));
        };
        let refuse = |message: &str| {
            self.unauthorized.inc();
            refusal(StatusCode::UNAUTHORIZED, message)
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(refuse(self.missing));
        };
        let Some(token) = hydrant_auth::bearer(value.to_str().unwrap_or_default()) else {
            return Err(refuse(
                "the Authorization header must be \"Bearer <token>\"",
            ));
        };
        keys.verify(token, AUD_LOGS)
            .await
            .map_err(|e| refuse(&e.to_string()))
    }

    /// Counts a caller whose token may not see what it asked for.
    pub fn count_forbidden(&self) {
        self.forbidden.inc();
    }

    /// The counted 403 for a caller whose token may not see the page, saying what it needs.
    #[must_use]
    pub fn forbid(&self, message: &str) -> Response {
        self.count_forbidden();
        refusal(StatusCode::FORBIDDEN, message)
    }
}

/// `message` as a plain-text answer with `status`; a 401 also says a bearer token is wanted.
#[must_use]
pub fn refusal(status: StatusCode, message: &str) -> Response {
    let mut response = (status, format!("{message}\n")).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"hydrant\""),
        );
    }
    response
}
