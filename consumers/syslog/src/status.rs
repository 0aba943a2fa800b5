//! The nozzle's `/drains` status page on its admin listener, and who may read it.
//!
//! Flow: the request's bearer token → [`hydrant_auth::TokenKeys::verify`] (the cloud
//! controller's public keys: `token_keys_file`, or fetched from `token_keys_url` — by default
//! `[platform].api_url` + `/token_keys` when that is the public API, and required when
//! `[platform].tls` points it at the internal listener — and cached in `token_keys_cache`, so
//! the page keeps answering while the controller is down) → the scope check → every drain's
//! report.
//!
//! The invariant: `/drains` names apps (their guids) and where their logs go (drain hosts), so
//! it is the platform operator's page: it answers only a token of audience `hydrant-logs`
//! carrying `admin` or `firehose`. No token, a forged, expired or foreign-audience one gets
//! 401; a developer's own token (any app or space scope, but not those two) gets 403. With no
//! key source at all, every token is refused (401): the page fails closed. `/healthz` and
//! `/metrics` stay open. Refusals are counted as `nozzle.status_refused{reason}`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hydrant_auth::TokenKeys;
use hydrant_emitter::Registry;
use hydrant_runtime::TokenGate;
use tokio_util::sync::CancellationToken;

use crate::role::{SharedFleet, lock};
use crate::{Config, Error};

/// How often fetched keys are refreshed.
const REFRESH: Duration = Duration::from_secs(300);

/// Least time between two fetches caused by tokens naming an unknown key.
const REFETCH_EVERY: Duration = Duration::from_secs(30);

/// What the `/drains` handler shares.
#[derive(Debug, Clone)]
struct Status {
    fleet: SharedFleet,
    /// Open only with `status_auth = false`.
    gate: TokenGate,
}

/// Where `/drains` gets its token keys: a fixed file, or the controller's `/token_keys`
/// (`token_keys_url`, by default the platform API's), cached in `token_keys_cache`.
#[must_use]
pub(crate) fn key_sources(config: &Config) -> hydrant_auth::KeySources {
    // The internal (mutual TLS) listener serves no `/token_keys`: only a plain public
    // `api_url` names where the keys are.
    let url = config.token_keys_url.clone().or_else(|| {
        config
            .platform
            .as_ref()
            .filter(|p| p.api.tls.is_none())
            .map(|p| format!("{}/token_keys", p.api.api_url.trim_end_matches('/')))
    });
    hydrant_auth::KeySources {
        url: if config.token_keys_file.is_some() {
            None
        } else {
            url
        },
        file: config.token_keys_file.clone(),
        cache: config.token_keys_cache.clone(),
        refetch_every: REFETCH_EVERY,
        ..hydrant_auth::KeySources::default()
    }
}

/// The keys `/drains` verifies with (`None` with `status_auth = false`), made before any task
/// starts so a bad key file refuses the config.
///
/// # Errors
/// The key file cannot be read or parsed.
pub(crate) fn keys(config: &Config) -> Result<Option<Arc<TokenKeys>>, Error> {
    if !config.status_auth {
        tracing::warn!(
            "status_auth = false: /drains shows every app guid and drain host to anyone who \
             can connect to the admin port"
        );
        return Ok(None);
    }
    let field = if config.token_keys_file.is_some() {
        "token_keys_file"
    } else {
        "token_keys_url"
    };
    let sources = key_sources(config);
    if sources.url.is_none() && sources.file.is_none() && sources.cache.is_none() {
        tracing::warn!(
            "/drains has no token keys to verify with, so it refuses every request: set \
             token_keys_url (the cloud controller's /token_keys) or token_keys_file"
        );
    }
    let keys = TokenKeys::new(sources, Arc::new(hydrant_auth::Unobserved))
        .map_err(|e| Error::from(hydrant_runtime::invalid(field, e.to_string())))?;
    Ok(Some(Arc::new(keys)))
}

/// Mounts `/drains` over `fleet` on the admin listener; key refreshes run until `stop`.
pub(crate) fn mount(
    listeners: &hydrant_runtime::Listeners,
    fleet: SharedFleet,
    keys: Option<Arc<TokenKeys>>,
    registry: &Registry,
    stop: &CancellationToken,
) {
    if let Some(keys) = &keys {
        tokio::spawn(Arc::clone(keys).refresh(REFRESH, stop.clone().cancelled_owned()));
    }
    listeners.mount_admin(routes(fleet, keys, registry));
}

/// The `/drains` route over `fleet`, checking tokens against `keys` (open with `None`).
fn routes(fleet: SharedFleet, keys: Option<Arc<TokenKeys>>, registry: &Registry) -> axum::Router {
    let state = Status {
        fleet,
        gate: TokenGate::new(
            keys,
            registry,
            "nozzle.status_refused",
            "/drains requests refused, by reason",
            "missing token: send \"Authorization: Bearer <token>\" with an admin's token \
             (hydrant up writes one to endpoints.json)",
        ),
    };
    axum::Router::new()
        .route("/drains", get(drains))
        .with_state(state)
}

async fn drains(State(s): State<Status>, headers: HeaderMap) -> Response {
    let claims = match s.gate.authenticate(&headers).await {
        Ok(claims) => claims,
        Err(refusal) => return refusal,
    };
    if !claims.can_read_firehose() {
        return s.gate.forbid(
            "/drains shows every app's drains; it needs a token with the admin or firehose \
             scope (a developer sees their own app's drains with `hydrant drain APP --status`)",
        );
    }
    let reports = lock(&s.fleet).reports();
    Json(reports).into_response()
}

/// `token_keys_url` must be an http(s) URL; `token_keys_file` must name a file.
pub(crate) fn validate(config: &Config) -> Result<(), Error> {
    if let Some(url) = &config.token_keys_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(Error::from(hydrant_runtime::invalid(
            "token_keys_url",
            format!(
                "{url:?} is not an http URL: write it like \"http://127.0.0.1:9022/token_keys\", \
                 or leave it out for [platform].api_url + /token_keys"
            ),
        )));
    }
    let internal_api = config
        .platform
        .as_ref()
        .is_some_and(|p| p.api.tls.is_some());
    if config.status_auth
        && internal_api
        && config.token_keys_url.is_none()
        && config.token_keys_file.is_none()
    {
        return Err(Error::from(hydrant_runtime::invalid(
            "token_keys_url",
            "is needed with [platform].tls: the internal listener serves no /token_keys; set \
             it to the public API's, e.g. \"http://127.0.0.1:9022/token_keys\", or set \
             token_keys_file",
        )));
    }
    if let Some(file) = &config.token_keys_file
        && file.as_os_str().is_empty()
    {
        return Err(Error::from(hydrant_runtime::invalid(
            "token_keys_file",
            "is empty; name the key-set file (the controller's GET /token_keys JSON) or leave \
             it out",
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PlatformConfig;

    fn platform(tls: bool) -> Config {
        Config {
            platform: Some(PlatformConfig {
                api: hydrant_runtime::ApiSettings {
                    api_url: "http://cc.internal:9022/".to_owned(),
                    tls: tls.then(|| {
                        hydrant_tls::TlsFiles::in_dir(
                            std::path::Path::new("/etc/hydrant/certs"),
                            hydrant_tls::Identity::Nozzle,
                        )
                    }),
                    ..hydrant_runtime::ApiSettings::default()
                },
                ..PlatformConfig::default()
            }),
            ..Config::default()
        }
    }

    /// Keys come from the public API by default, never from the internal mTLS listener (which
    /// serves none): there the operator must say where, and validation says so.
    #[test]
    fn keys_come_from_the_public_api_or_where_the_operator_says() {
        let public = platform(false);
        let sources = key_sources(&public);
        assert_eq!(
            sources.url.as_deref(),
            Some("http://cc.internal:9022/token_keys")
        );
        validate(&public).unwrap();

        let mut internal = platform(true);
        assert_eq!(key_sources(&internal).url, None);
        let e = validate(&internal).unwrap_err().to_string();
        assert!(
            e.contains("token_keys_url") && e.contains("[platform].tls"),
            "{e}"
        );
        internal.token_keys_url = Some("http://cc.public:9022/token_keys".to_owned());
        validate(&internal).unwrap();
        assert_eq!(
            key_sources(&internal).url.as_deref(),
            Some("http://cc.public:9022/token_keys")
        );

        let mut fixed = platform(true);
        fixed.token_keys_file = Some("/etc/hydrant/token_keys.json".into());
        validate(&fixed).unwrap();
        let sources = key_sources(&fixed);
        assert!(sources.url.is_none() && sources.file.is_some());

        let mut bad = platform(false);
        bad.token_keys_url = Some("cc:9022/token_keys".to_owned());
        assert!(
            validate(&bad)
                .unwrap_err()
                .to_string()
                .contains("token_keys_url")
        );
    }
}
