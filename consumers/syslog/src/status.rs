//! The nozzle's `/drains` status page on its admin listener, and who may read it.
//!
//! Flow: the request's bearer token → [`hydrant_auth::TokenKeys::verify`] (the cloud
//! controller's public keys: `token_keys_file`, or fetched from `token_keys_url` — by default
//! `[platform].api_url` + `/token_keys`; with `[platform].tls` over the nozzle's mutual TLS to
//! the internal listener, from a server proving the `cloudcontroller` identity, never over
//! plain HTTP — and cached in `token_keys_cache`, so the page keeps answering while the
//! controller is down) → the scope check → every drain's report.
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
/// (`token_keys_url`, by default the platform API's), cached in `token_keys_cache`. With
/// `[platform].tls` fetches go through the nozzle's mutual-TLS transport (its
/// `ApiClient::key_transport()`, as every role with a certificate fetches its keys); with
/// several controllers (`[platform].api_urls`) through their failover, tls or not.
#[must_use]
pub(crate) fn key_sources(config: &Config) -> hydrant_auth::KeySources {
    let url = config.token_keys_url.clone().or_else(|| {
        config
            .platform
            .as_ref()
            .map(|p| format!("{}/token_keys", p.api.primary_url().trim_end_matches('/')))
    });
    // Certificates that cannot be used give a transport that refuses, never plain HTTP.
    let transport = config
        .platform
        .as_ref()
        .filter(|p| p.api.tls.is_some() || p.api.urls().len() > 1)
        .and_then(|p| p.api.client().key_transport());
    let fixed = config.token_keys_file.is_some();
    hydrant_auth::KeySources {
        url: if fixed { None } else { url },
        file: config.token_keys_file.clone(),
        cache: config.token_keys_cache.clone(),
        refetch_every: REFETCH_EVERY,
        transport: if fixed { None } else { transport },
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

/// `token_keys_url` must be an `https://` URL with `[platform].tls` (keys over mutual TLS
/// only) and an `http://` one without; `token_keys_file` must name a file.
pub(crate) fn validate(config: &Config) -> Result<(), Error> {
    let internal_api = config
        .platform
        .as_ref()
        .is_some_and(|p| p.api.tls.is_some());
    let (scheme, why, example) = if internal_api {
        (
            "https://",
            "with [platform].tls the keys come over mutual TLS only",
            "\"https://10.0.0.5:9023/token_keys\" (the internal listener)",
        )
    } else {
        (
            "http://",
            "without [platform].tls the keys are fetched over plain HTTP",
            "\"http://127.0.0.1:9022/token_keys\"",
        )
    };
    if let Some(url) = &config.token_keys_url
        && !(url.starts_with(scheme) && url.len() > scheme.len())
    {
        return Err(Error::from(hydrant_runtime::invalid(
            "token_keys_url",
            format!(
                "{url:?} is not a {scheme} URL ({why}): write it like {example}, or leave it \
                 out for [platform].api_url + /token_keys"
            ),
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

    /// Keys come from `[platform].api_url` by default: with `tls` that is the internal
    /// listener, fetched over the nozzle's mutual-TLS transport (never a plain http:// URL);
    /// without, the public API over plain HTTP.
    #[test]
    fn keys_come_over_the_platform_apis_own_transport() {
        let public = platform(false);
        let sources = key_sources(&public);
        assert_eq!(
            sources.url.as_deref(),
            Some("http://cc.internal:9022/token_keys")
        );
        assert!(sources.transport.is_none());
        validate(&public).unwrap();

        let mut internal = platform(true);
        internal.platform.as_mut().unwrap().api.api_url = "https://cc.internal:9023/".to_owned();
        validate(&internal).unwrap();
        let sources = key_sources(&internal);
        assert_eq!(
            sources.url.as_deref(),
            Some("https://cc.internal:9023/token_keys")
        );
        // The files do not exist here: the transport refuses rather than going plaintext.
        assert!(sources.transport.is_some());
        internal.token_keys_url = Some("http://cc.public:9022/token_keys".to_owned());
        let e = validate(&internal).unwrap_err().to_string();
        assert!(
            e.contains("token_keys_url") && e.contains("mutual TLS"),
            "{e}"
        );

        let mut fixed = platform(true);
        fixed.token_keys_file = Some("/etc/hydrant/token_keys.json".into());
        validate(&fixed).unwrap();
        let sources = key_sources(&fixed);
        assert!(sources.url.is_none() && sources.file.is_some() && sources.transport.is_none());

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
