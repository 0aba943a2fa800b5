//! The public HTTP surface: routes, the state handlers share, token checks, query parsing and
//! error answers.
//!
//! Tokens are checked in one place, [`Shared::authenticate`]: signature against the cloud
//! controller's public keys, expiry, and the audience `hydrant-logs` (an API-only token is
//! refused here with 401, whatever its scopes). Each endpoint then checks the scope it needs:
//! the firehose needs `firehose` or `admin`, a source needs `app:<id>:read` or those.
//!
//! Every refusal happens before a WebSocket upgrade or a byte of data, is answered with a JSON
//! body `{"error": code, "message": text}` that says what to do, and is counted in
//! `trafficcontroller.rejected{reason}`. Per-source reads answer "not allowed" and "no such
//! source" identically (404), so a token learns nothing about sources it may not read.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hydrant_auth::{AUD_LOGS, Claims, SCOPE_ADMIN};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::Hub;
use crate::metrics::Metrics;

/// Longest query string accepted; real ones are well under a kilobyte.
const MAX_QUERY_BYTES: usize = 16 * 1024;

/// Stream pacing shared by every consumer connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamOptions {
    pub(crate) frame_max_envelopes: usize,
    pub(crate) frame_max_bytes: usize,
    pub(crate) slow_consumer_timeout: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) pong_timeout: Duration,
    pub(crate) sse_heartbeat: Duration,
}

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The public keys tokens are verified with; `None` when auth is disabled.
    pub(crate) keys: Option<Arc<hydrant_auth::TokenKeys>>,
    pub(crate) hub: Arc<Hub>,
    /// Firehose subscription ids, each read as a shard group across edges.
    pub(crate) shards: Arc<crate::shard::Shards>,
    pub(crate) metrics: Metrics,
    pub(crate) opts: StreamOptions,
    pub(crate) read_timeout: Duration,
    /// Who may open one more stream: bounds the number of consumer queues, per token, per
    /// user, and keeps slots for the platform's own consumers.
    pub(crate) admission: crate::admission::Admission,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

/// The public router.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/firehose/{subscription_id}", get(crate::stream::firehose))
        .route("/apps/{source_id}/stream", get(crate::stream::app_stream))
        .route("/api/v1/read/{source_id}", get(crate::recent::read))
        .route("/api/v1/meta", get(crate::recent::meta))
        .route("/api/v1/info", get(info))
        .route("/v2/read", get(crate::sse::read))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see /firehose/{id}, /apps/{id}/stream, /v2/read, /api/v1/read/{id}",
            )
        })
        .with_state(shared)
}

async fn info() -> Response {
    axum::Json(serde_json::json!({ "version": env!("CARGO_PKG_VERSION") })).into_response()
}

/// A refusal: status, a stable machine-readable code, and a message for a human.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// The one answer for a source the token may not read and a source that does not exist.
    pub(crate) fn source_not_found(source_id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no source {source_id:?} visible to this token"),
        )
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code, "message": self.message });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"hydrant\""),
            );
        }
        response
    }
}

impl Shared {
    /// Counts a refusal by reason and passes it on.
    pub(crate) fn reject(&self, e: ApiError) -> ApiError {
        let m = &self.metrics;
        match e.status() {
            StatusCode::UNAUTHORIZED => m.rejected_unauthorized.inc(),
            StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => m.rejected_forbidden.inc(),
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                m.rejected_too_many.inc();
            }
            _ => m.rejected_bad_request.inc(),
        }
        e
    }

    /// A request's query string, parsed, and its caller's verified claims: what every read
    /// endpoint needs before it looks at its own parameters.
    pub(crate) async fn query_and_claims(
        &self,
        raw_query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<(Query, Claims), ApiError> {
        let q = Query::parse(raw_query).map_err(|e| self.reject(e))?;
        let claims = self.authenticate(headers, &q).await?;
        Ok((q, claims))
    }

    /// The caller's verified claims, from `Authorization: Bearer` or `?access_token=`: signed
    /// by a published key, unexpired, and meant for this edge (`aud` `hydrant-logs`).
    pub(crate) async fn authenticate(
        &self,
        headers: &HeaderMap,
        query: &Query,
    ) -> Result<Claims, ApiError> {
        let Some(keys) = &self.keys else {
            return Ok(Claims::new("anonymous")
                .for_audience(AUD_LOGS)
                .with_scope(SCOPE_ADMIN)
                .expires_in(i64::from(u32::MAX)));
        };
        let unauthorized =
            |m: String| self.reject(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m));
        let token = match headers.get(header::AUTHORIZATION) {
            Some(value) => match hydrant_auth::bearer(value.to_str().unwrap_or_default()) {
                Some(token) => token,
                None => {
                    return Err(unauthorized(
                        "the Authorization header must be \"Bearer <token>\"".to_owned(),
                    ));
                }
            },
            None => match query.get("access_token") {
                Some(token) => token,
                None => {
                    return Err(unauthorized(
                        "missing token: send \"Authorization: Bearer <token>\" or add \
                         ?access_token=<token> (get one with `hydrant login`)"
                            .to_owned(),
                    ));
                }
            },
        };
        keys.verify(token, AUD_LOGS)
            .await
            .map_err(|e| unauthorized(e.to_string()))
    }
}

/// A parsed query string that keeps repeated keys (`envelope_types=LOG&envelope_types=GAUGE`).
#[derive(Debug, Default)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let raw = raw.unwrap_or_default();
        if raw.len() > MAX_QUERY_BYTES {
            return Err(ApiError::bad_request(format!(
                "the query string is {} bytes; at most {MAX_QUERY_BYTES} are accepted",
                raw.len()
            )));
        }
        Ok(Self {
            pairs: form_urlencoded::parse(raw.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        })
    }

    /// The last value of `key` (later parameters override earlier ones).
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub(crate) fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// True when `key` is present, with or without a value (`?log&gauge`).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == key)
    }

    /// A boolean flag: absent is false; present bare, `true` or `1` is true; `false` or `0` is
    /// false.
    pub(crate) fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None => Ok(false),
            Some("" | "true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(other) => Err(ApiError::bad_request(format!(
                "{key}={other:?}: must be true or false"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keeps_repeats_and_decodes() {
        let q = Query::parse(Some("a=1&b=x%20y&a=2&flag&c=false")).unwrap();
        assert_eq!(q.get("a"), Some("2"));
        assert_eq!(q.all("a").collect::<Vec<_>>(), vec!["1", "2"]);
        assert_eq!(q.get("b"), Some("x y"));
        assert!(q.has("flag"));
        assert!(q.flag("flag").unwrap());
        assert!(!q.flag("c").unwrap());
        assert!(!q.flag("missing").unwrap());
        assert!(Query::parse(Some("d=maybe")).unwrap().flag("d").is_err());
        assert!(Query::parse(Some(&"x".repeat(MAX_QUERY_BYTES + 1))).is_err());
    }
}
