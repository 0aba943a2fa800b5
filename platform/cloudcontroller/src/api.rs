//! The REST API: routing, the error body, who is calling, and the user and token endpoints.
//! Orgs, spaces and roles live in `api/orgs.rs`; apps in `api/apps.rs`; push, staging and
//! droplets in `api/push.rs`.
//!
//! Every answer that is not a success is `{"errors": [{"code", "title", "detail"}]}` with the
//! matching HTTP status, and the detail says what to change. Authorisation is Cloud Foundry's
//! org and space role matrix, decided in `tenancy`: anyone without a role that lets them see a
//! thing gets the same 404 for it as for one that does not exist, so outsiders learn nothing.

mod apps;
mod autoscaling;
mod domains;
mod drains;
mod orgs;
mod push;
mod quotas;
mod services;
mod slos;
mod teardown;
mod tokens;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use hydrant_api::{ApiErrorItem, ApiErrors, CreateUser, Info, List, Me, User};
use hydrant_auth::{AUD_API, SCOPE_API_READ, SCOPE_API_WRITE};

use crate::Ctx;
use crate::{db, password};

pub(crate) use apps::{record_event, username_problem};
pub(crate) use push::droplet_scope;
pub(crate) use tokens::{Clients, Keys};

/// An error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: u32,
    title: &'static str,
    detail: String,
    /// Seconds for a `Retry-After` header (429 answers).
    retry_after: Option<u64>,
    /// The quota limit that refused the request, counted by `count_requests`.
    quota: Option<&'static str>,
}

/// Marks a response refused by a quota, with the limit's name (a response extension).
#[derive(Debug, Clone, Copy)]
pub(crate) struct QuotaRefusal(pub(crate) &'static str);

impl ApiError {
    fn new(status: StatusCode, code: u32, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            title,
            detail: detail.into(),
            retry_after: None,
            quota: None,
        }
    }

    /// 422 naming a quota the request would exceed; counted under `limit`.
    pub(crate) fn quota_exceeded(limit: &'static str, detail: impl Into<String>) -> Self {
        let mut error = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            10008,
            "CF-QuotaExceeded",
            detail,
        );
        error.quota = Some(limit);
        error
    }

    /// 429 with `Retry-After`, rounded up to whole seconds.
    pub(crate) fn too_many_requests(detail: impl Into<String>, wait: std::time::Duration) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            10016,
            "CF-RateLimitExceeded",
            detail,
        );
        error.retry_after = Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
        error
    }

    pub(crate) fn unauthenticated(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            10002,
            "CF-NotAuthenticated",
            detail,
        )
    }

    pub(crate) fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, 10003, "CF-NotAuthorized", detail)
    }

    pub(crate) fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            10010,
            "CF-ResourceNotFound",
            format!("{what} not found"),
        )
    }

    pub(crate) fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            10001,
            "CF-MessageParseError",
            detail,
        )
    }

    pub(crate) fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            10008,
            "CF-UnprocessableEntity",
            detail,
        )
    }

    pub(crate) fn too_large(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            10013,
            "CF-PayloadTooLarge",
            detail,
        )
    }

    pub(crate) fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            10015,
            "CF-ServiceUnavailable",
            detail,
        )
    }

    /// What the answer says, for a log line when no client gets it.
    pub(crate) fn detail(&self) -> &str {
        &self.detail
    }

    pub(crate) fn internal(detail: impl Into<String>) -> Self {
        let detail = detail.into();
        tracing::error!(%detail, "cloud controller internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            10001,
            "CF-ServerError",
            detail,
        )
    }
}

impl From<crate::sql::Error> for ApiError {
    fn from(e: crate::sql::Error) -> Self {
        match e {
            // The request may well succeed in a moment (the next call reconnects): 503, so
            // the CLI and load balancers retry, never a 500 that reads as a bug.
            crate::sql::Error::Unavailable(why) => {
                tracing::warn!(%why, "the database is unavailable");
                Self::unavailable(
                    "the cloud controller cannot reach its database right now; retry shortly",
                )
            }
            other => Self::internal(format!("database: {other}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ApiErrors {
            errors: vec![ApiErrorItem {
                code: self.code,
                title: self.title.to_owned(),
                detail: self.detail,
            }],
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(limit) = self.quota {
            response.extensions_mut().insert(QuotaRefusal(limit));
        }
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

/// A JSON body, with parse errors answered in the API's error shape.
pub(crate) struct Body<T>(pub(crate) T);

impl<T, S> axum::extract::FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => {
                let status = rejection.status();
                let detail = rejection.body_text();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    Err(ApiError::too_large(format!(
                        "the request body is larger than this endpoint takes \
                         (max_small_request_bytes, or max_request_bytes for push): {detail}"
                    )))
                } else {
                    Err(ApiError::unprocessable(format!(
                        "the request body is not valid: {detail}"
                    )))
                }
            }
        }
    }
}

/// Runs `f` on the database and answers what it returns as JSON: the whole of a handler whose
/// checks and reads happen on one connection.
pub(crate) async fn json<T, F>(ctx: &Ctx, f: F) -> Result<Json<T>, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut crate::sql::Connection) -> Result<T, ApiError> + Send + 'static,
{
    Ok(Json(ctx.db.run(f).await?))
}

/// [`json`] for a list.
pub(crate) async fn list<T, F>(ctx: &Ctx, f: F) -> Result<Json<List<T>>, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut crate::sql::Connection) -> Result<Vec<T>, ApiError> + Send + 'static,
{
    Ok(Json(List::new(ctx.db.run(f).await?)))
}

/// The authenticated user behind a request.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) user_guid: String,
    pub(crate) username: String,
    pub(crate) admin: bool,
}

impl Caller {
    pub(crate) fn require_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "only an administrator may do this; ask one to do it for you",
            ))
        }
    }
}

impl FromRequestParts<Arc<Ctx>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<Ctx>) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::unauthenticated(
                    "no token: log in (hydrant login) and send Authorization: Bearer <token>",
                )
            })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                ApiError::unauthenticated("the Authorization header must be `Bearer <token>`")
            })?;
        // The audience first: a log token or a refresh token is never an API credential.
        let claims = ctx
            .keys
            .key_set()
            .verify(token.trim(), AUD_API)
            .map_err(|e| ApiError::unauthenticated(format!("{e}; log in again")))?;
        // Then the scope the method needs: reads need cloud_controller.read, anything that
        // changes state needs cloud_controller.write.
        let reading = matches!(
            parts.method,
            axum::http::Method::GET | axum::http::Method::HEAD
        );
        let needed = if reading {
            SCOPE_API_READ
        } else {
            SCOPE_API_WRITE
        };
        if !claims.has_scope(needed) {
            return Err(ApiError::forbidden(format!(
                "this token lacks the {needed} scope; use a token issued for this"
            )));
        }
        if let Some(client) = &claims.client_id {
            // A client (a platform role) is no user: it acts with its scopes alone.
            return Ok(Self {
                user_guid: format!("client:{client}"),
                username: format!("client:{client}"),
                admin: claims.is_admin(),
            });
        }
        let token_admin = claims.is_admin();
        let username = claims.sub;
        let row = ctx
            .db
            .run(move |c| Ok(db::user_by_name(c, &username)?))
            .await?
            .ok_or_else(|| {
                ApiError::unauthenticated("the token's user no longer exists; log in again")
            })?;
        Ok(Self {
            user_guid: row.user.guid,
            username: row.user.username,
            // Both must say so: a user made admin after login gets it at the next token, and
            // a narrowed token never carries more than it says.
            admin: row.user.admin && token_admin,
        })
    }
}

/// The API router: users and tokens here; orgs and spaces, apps, push, autoscaling policies, SLOs and
/// syslog drains in their own modules.
pub(crate) fn router(ctx: Arc<Ctx>) -> Router {
    let json_limit = ctx.config.max_request_bytes;
    let small_limit = ctx.config.max_small_request_bytes;
    Router::new()
        .route("/v3/info", get(info))
        .route("/v3/tokens", post(tokens::token))
        .route("/oauth/token", post(tokens::token))
        .route("/token_keys", get(tokens::token_keys))
        .route("/v3/me", get(me))
        .route("/v3/users", get(list_users).post(create_user))
        .merge(orgs::routes())
        .merge(quotas::routes())
        .merge(domains::routes())
        .merge(apps::routes())
        .merge(autoscaling::routes())
        .merge(drains::routes())
        .merge(slos::routes())
        .merge(services::routes())
        .merge(crate::placement::cells::routes())
        // A login or a space is a few hundred bytes: only the push endpoints that carry file
        // lists get the large limit.
        .layer(DefaultBodyLimit::max(small_limit))
        .merge(push::routes().layer(DefaultBodyLimit::max(json_limit)))
        // Blob uploads stream to disk under their own limit, so the JSON limit does not apply.
        .route(
            "/v3/blobs/{sha256}",
            put(push::upload_blob).layer(DefaultBodyLimit::disable()),
        )
        .fallback(|| async { ApiError::not_found("Endpoint") })
        .layer(middleware::from_fn_with_state(ctx.clone(), count_requests))
        .merge(hydrant_dashboard::router(
            ctx.config.endpoints.get("firehose").map(String::as_str),
        ))
        .with_state(ctx)
}

async fn count_requests(
    State(ctx): State<Arc<Ctx>>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    ctx.metrics.request(response.status().as_u16());
    if let Some(QuotaRefusal(limit)) = response.extensions().get::<QuotaRefusal>() {
        ctx.metrics.quota_refused(limit);
    }
    response
}

async fn info(State(ctx): State<Arc<Ctx>>) -> Json<Info> {
    Json(Info {
        api_version: hydrant_api::API_VERSION.to_owned(),
        apps_domain: ctx.config.apps_domain.clone(),
        external_url: ctx.config.base_url().to_owned(),
        endpoints: ctx.config.endpoints.clone(),
    })
}

async fn me(State(ctx): State<Arc<Ctx>>, caller: Caller) -> Result<Json<Me>, ApiError> {
    json(&ctx, move |c| {
        let row = db::user_by_name(c, &caller.username)?
            .ok_or_else(|| ApiError::unauthenticated("log in again"))?;
        let roles = db::roles(c, None, Some(&caller.user_guid))?;
        let org_roles = crate::tenancy::org_roles(c, None, Some(&caller.user_guid))?;
        Ok(Me {
            user: row.user,
            roles,
            org_roles,
        })
    })
    .await
}

async fn list_users(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
) -> Result<Json<List<User>>, ApiError> {
    caller.require_admin()?;
    let users = ctx.db.run(|c| Ok(db::list_users(c)?)).await?;
    Ok(Json(List::new(users)))
}

async fn create_user(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Body(request): Body<CreateUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    caller.require_admin()?;
    if let Some(problem) = username_problem(&request.username) {
        return Err(ApiError::unprocessable(format!(
            "username {:?}: {problem}",
            request.username
        )));
    }
    if request.password.len() < 8 {
        return Err(ApiError::unprocessable(
            "the password must be at least 8 characters",
        ));
    }
    let iterations = ctx.config.password_hash_iterations;
    let secret = request.password;
    let hash = tokio::task::spawn_blocking(move || password::hash(&secret, iterations))
        .await
        .map_err(|e| ApiError::internal(format!("hashing failed: {e}")))?;
    let user = User {
        guid: password::new_guid(),
        username: request.username,
        admin: request.admin,
        created_at: hydrant_auth::now_secs(),
    };
    let stored = user.clone();
    ctx.db
        .run(move |c| {
            if db::user_by_name(c, &stored.username)?.is_some() {
                return Err(ApiError::unprocessable(format!(
                    "a user called {:?} already exists; pick another name",
                    stored.username
                )));
            }
            Ok(db::insert_user(c, &stored, &hash)?)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(user)))
}
