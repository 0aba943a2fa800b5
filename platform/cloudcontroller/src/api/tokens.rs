//! The auth server: the only place tokens are minted. `POST /v3/tokens` (and its OAuth2 alias
//! `POST /oauth/token`) answers the `password`, `refresh_token` and `client_credentials`
//! grants; `GET /token_keys` publishes the public keys every other role verifies with.
//!
//! Flow: a grant is checked (password hash, refresh token, client secret) → the caller's
//! scopes are derived afresh from the database (so a user who lost a role loses it at the next
//! refresh) → an access token for `hydrant-api` and `hydrant-logs` is signed with the active
//! key of the key directory, plus, for users, a refresh token whose audience only this
//! endpoint accepts.
//!
//! Invariants: the private keys never leave this module's [`Keys`]; every token carries an
//! audience and an expiry; a refresh token opens nothing but this endpoint; and an unknown
//! user, a wrong password and an unknown client answer alike.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use hydrant_auth::{
    AUD_API, AUD_LOGS, AUD_REFRESH, Claims, Jwks, KeySet, KeyStore, SCOPE_ADMIN, SCOPE_API_READ,
    SCOPE_API_WRITE, SCOPE_FIREHOSE, SigningKey,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{ApiError, Body};
use crate::config::ClientConfig;
use crate::{Ctx, Error, db, login, password};

/// How long a loaded key directory is trusted before it is read again, so a key staged,
/// activated or retired on disk takes effect without a restart.
const KEYS_RELOAD: Duration = Duration::from_secs(5);

/// The key directory, re-read every few seconds.
#[derive(Debug)]
pub(crate) struct Keys {
    dir: PathBuf,
    state: Mutex<(KeyStore, Instant)>,
}

impl Keys {
    /// Opens (creating on first start) the key directory.
    pub(crate) fn open(dir: PathBuf) -> Result<Self, Error> {
        let store = KeyStore::open(&dir)?;
        tracing::info!(kid = %store.signing().kid(), published = store.key_set().len(), "token keys loaded");
        Ok(Self {
            dir,
            state: Mutex::new((store, Instant::now())),
        })
    }

    fn current(&self) -> KeyStore {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.1.elapsed() >= KEYS_RELOAD {
            // A directory mid-edit keeps the last good store; the next read tries again.
            match KeyStore::open(&self.dir) {
                Ok(store) => {
                    if store.signing().kid() != state.0.signing().kid() {
                        tracing::info!(kid = %store.signing().kid(), "token signing key rotated");
                    }
                    state.0 = store;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "token key directory unreadable; keeping the last keys")
                }
            }
            state.1 = Instant::now();
        }
        state.0.clone()
    }

    /// The key that signs.
    pub(crate) fn signing(&self) -> SigningKey {
        self.current().signing().clone()
    }

    /// Every published public key.
    pub(crate) fn key_set(&self) -> KeySet {
        self.current().key_set()
    }
}

/// The configured OAuth2 clients, secrets kept as SHA-256 digests.
#[derive(Debug, Default)]
pub(crate) struct Clients {
    clients: Vec<Client>,
}

#[derive(Debug)]
struct Client {
    id: String,
    secret_digest: Vec<u8>,
    scopes: Vec<String>,
    audiences: Vec<String>,
}

impl Clients {
    pub(crate) fn load(config: &[ClientConfig]) -> Result<Self, Error> {
        let mut clients = Vec::with_capacity(config.len());
        for c in config {
            clients.push(Client {
                id: c.id.clone(),
                secret_digest: Sha256::digest(c.load_secret()?.as_bytes()).to_vec(),
                scopes: c.scopes.clone(),
                audiences: c.audiences.clone(),
            });
        }
        Ok(Self { clients })
    }

    fn check(&self, id: &str, secret: &str) -> Option<&Client> {
        // Digests of equal length compared whole: the time taken says nothing about the secret.
        let digest = Sha256::digest(secret.as_bytes());
        self.clients
            .iter()
            .find(|c| c.id == id)
            .filter(|c| c.secret_digest.as_slice() == digest.as_slice())
    }
}

/// `POST /v3/tokens`: one OAuth2 grant. `grant_type` defaults to `password`, so the original
/// `{"username","password"}` body still logs in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Grant {
    #[serde(default)]
    grant_type: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
}

/// The answer: `hydrant_api::TokenResponse` plus the refresh token.
#[derive(Debug, Serialize)]
pub(crate) struct Granted {
    access_token: String,
    token_type: &'static str,
    expires_in: i64,
    scopes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
}

/// `GET /token_keys`: the public keys, UAA's shape. No token needed: they are public.
pub(crate) async fn token_keys(State(ctx): State<Arc<Ctx>>) -> Json<Jwks> {
    Json(ctx.keys.key_set().to_jwks())
}

/// `POST /v3/tokens` and `POST /oauth/token`.
pub(crate) async fn token(
    State(ctx): State<Arc<Ctx>>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    Body(grant): Body<Grant>,
) -> Result<Json<Granted>, ApiError> {
    let peer = peer.map(|axum::Extension(axum::extract::ConnectInfo(addr))| addr.ip());
    match grant.grant_type.as_deref().unwrap_or("password") {
        "password" => password_grant(&ctx, grant, peer).await,
        "refresh_token" => refresh_grant(&ctx, grant).await,
        "client_credentials" => client_grant(&ctx, &grant),
        other => Err(ApiError::bad_request(format!(
            "grant_type {other:?} is not supported; use password, refresh_token or \
             client_credentials"
        ))),
    }
}

async fn password_grant(
    ctx: &Arc<Ctx>,
    grant: Grant,
    peer: Option<std::net::IpAddr>,
) -> Result<Json<Granted>, ApiError> {
    let (Some(username), Some(password)) = (grant.username, grant.password) else {
        return Err(ApiError::unprocessable(
            "the password grant needs username and password",
        ));
    };
    let address = match peer {
        Some(p) => ctx.logins.wait(&ctx.db, login::Key::Address(p)).await?,
        None => None,
    };
    if let Some(wait) = address {
        ctx.metrics.logins_throttled_address.inc();
        return Err(ApiError::too_many_requests(
            format!(
                "too many wrong passwords from this address; try again in {} s",
                wait.as_secs().max(1)
            ),
            wait,
        ));
    }
    if let Some(wait) = ctx
        .logins
        .wait(&ctx.db, login::Key::Name(&username))
        .await?
    {
        ctx.metrics.logins_throttled.inc();
        return Err(ApiError::too_many_requests(
            format!(
                "too many wrong passwords for this user name; try again in {} s",
                wait.as_secs().max(1)
            ),
            wait,
        ));
    }
    let lookup = username.clone();
    let found = ctx
        .db
        .run(move |c| Ok(db::user_by_name(c, &lookup)?))
        .await?;
    // Verify even for unknown users, against a hash made once at the same iteration count, so
    // both cost one derivation and timing does not tell which names exist.
    let known = found.is_some();
    let hash = match found {
        Some(row) => row.password_hash,
        None => ctx
            .logins
            .dummy_hash(ctx.config.password_hash_iterations)
            .to_owned(),
    };
    let ok = tokio::task::spawn_blocking(move || password::verify(&password, &hash))
        .await
        .unwrap_or(false)
        && known;
    if !ok {
        ctx.logins.failed(&ctx.db, &username, peer).await?;
        ctx.metrics.logins_failed.inc();
        return Err(ApiError::unauthenticated("wrong user name or password"));
    }
    ctx.logins.succeeded(&ctx.db, &username).await?;
    user_tokens(ctx, username, true).await
}

async fn refresh_grant(ctx: &Arc<Ctx>, grant: Grant) -> Result<Json<Granted>, ApiError> {
    let token = grant
        .refresh_token
        .ok_or_else(|| ApiError::unprocessable("the refresh_token grant needs refresh_token"))?;
    let claims = ctx
        .keys
        .key_set()
        .verify(token.trim(), AUD_REFRESH)
        .map_err(|e| ApiError::unauthenticated(format!("refresh token refused: {e}")))?;
    let mut granted = user_tokens(ctx, claims.sub, false).await?;
    // Refresh tokens are not rotated (UAA's default): the caller keeps the one it has.
    granted.0.refresh_token = Some(token);
    Ok(granted)
}

fn client_grant(ctx: &Arc<Ctx>, grant: &Grant) -> Result<Json<Granted>, ApiError> {
    let (Some(id), Some(secret)) = (&grant.client_id, &grant.client_secret) else {
        return Err(ApiError::unprocessable(
            "the client_credentials grant needs client_id and client_secret",
        ));
    };
    let client = ctx
        .clients
        .check(id, secret)
        .ok_or_else(|| ApiError::unauthenticated("wrong client id or secret"))?;
    let ttl = ctx.config.token_ttl_secs;
    let mut claims = Claims::new(format!("client:{}", client.id)).expires_in(ttl);
    claims.iss = ctx.config.base_url().to_owned();
    claims.client_id = Some(client.id.clone());
    claims.aud.clone_from(&client.audiences);
    claims.scopes.clone_from(&client.scopes);
    Ok(Json(Granted {
        access_token: ctx.keys.signing().issue(&claims),
        token_type: "bearer",
        expires_in: ttl,
        scopes: claims.scopes,
        refresh_token: None,
    }))
}

/// An access token for a user, scopes read from the database now; with `with_refresh`, a
/// refresh token too.
async fn user_tokens(
    ctx: &Arc<Ctx>,
    username: String,
    with_refresh: bool,
) -> Result<Json<Granted>, ApiError> {
    let found = ctx
        .db
        .run(move |c| {
            let Some(row) = db::user_by_name(c, &username)? else {
                return Ok(None);
            };
            let roles = db::roles(c, None, Some(&row.user.guid))?;
            Ok(Some((row, roles)))
        })
        .await?;
    let (row, roles) = found
        .ok_or_else(|| ApiError::unauthenticated("the user no longer exists; log in again"))?;
    let ttl = ctx.config.token_ttl_secs;
    let mut claims = Claims::new(row.user.username.clone())
        .for_audience(AUD_API)
        .for_audience(AUD_LOGS)
        .with_scope(SCOPE_API_READ)
        .with_scope(SCOPE_API_WRITE)
        .expires_in(ttl);
    claims.iss = ctx.config.base_url().to_owned();
    if row.user.admin {
        claims = claims.with_scope(SCOPE_ADMIN).with_scope(SCOPE_FIREHOSE);
    }
    for role in &roles {
        claims = claims.with_scope(format!("space:{}:{}", role.space_guid, role.role.as_str()));
    }
    let key = ctx.keys.signing();
    let refresh_token = with_refresh.then(|| {
        let mut refresh = Claims::new(row.user.username.clone())
            .for_audience(AUD_REFRESH)
            .expires_in(ctx.config.refresh_token_ttl_secs);
        refresh.iss = ctx.config.base_url().to_owned();
        key.issue(&refresh)
    });
    Ok(Json(Granted {
        access_token: key.issue(&claims),
        token_type: "bearer",
        expires_in: ttl,
        scopes: claims.scopes,
        refresh_token,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_match_on_id_and_secret_only() {
        let clients = Clients::load(&[ClientConfig {
            id: "autoscaler".into(),
            secret: Some("0123456789abcdef".into()),
            secret_file: None,
            scopes: vec![SCOPE_API_READ.into()],
            audiences: vec![AUD_API.into()],
        }])
        .unwrap();
        assert!(clients.check("autoscaler", "0123456789abcdef").is_some());
        assert!(clients.check("autoscaler", "0123456789abcdeX").is_none());
        assert!(clients.check("slo", "0123456789abcdef").is_none());
    }
}
