//! Syslog drain bindings: `POST`/`GET /v3/apps/{guid}/drains` and
//! `DELETE /v3/apps/{guid}/drains/{drain}` for developers, `GET /v3/drain_targets` and
//! `PUT /v3/drain_status` for the platform's syslog nozzle.
//!
//! A binding is checked before it is stored: the scheme must be one the nozzle speaks, the host
//! and port must be there, and the host must not resolve to a loopback, private, link-local or
//! otherwise internal address unless the operator set `allow_private_drains` — a drain is a
//! request the platform makes on a developer's behalf, and without that check any developer
//! could aim it at the platform's own network. (The nozzle checks again at connect time, so a
//! name that later re-resolves inward is refused there too.)
//!
//! Invariant: drain URLs can hold credentials. Only `drain_targets` (admin) returns them whole;
//! answers to developers, audit events and log lines carry [`mask_url`] only.

use std::net::IpAddr;
use std::sync::Arc;

use crate::sql::{Connection, Row, Table, all, table};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use hydrant_api::drain::is_internal;
use hydrant_api::mask_url;
use hydrant_api::{CreateDrain, Drain, DrainStatus, DrainTarget, List};
use serde_json::json;

use super::apps::{Access, app_for, record_event};
use super::{ApiError, Body, Caller};
use crate::{Ctx, password};

/// Schemes the syslog nozzle can deliver to.
const SCHEMES: [&str; 3] = ["syslog", "syslog-tls", "https"];

/// Longest drain URL accepted.
const MAX_URL_LEN: usize = 2048;

pub(super) fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route(
            "/v3/apps/{guid}/drains",
            get(list_drains).post(create_drain),
        )
        .route("/v3/apps/{guid}/drains/{drain}", delete(delete_drain))
        .route("/v3/drain_targets", get(targets))
        .route("/v3/drain_status", put(report_status))
}

/// The parts of a drain URL the checks need.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct DrainUrl<'a> {
    scheme: &'a str,
    host: &'a str,
    port: u16,
}

/// Parses `scheme://[user[:pass]@]host[:port][/path][?query]`, naming what is wrong. Errors
/// quote the URL masked.
pub(super) fn parse(url: &str) -> Result<DrainUrl<'_>, String> {
    let shown = mask_url(url);
    if url.len() > MAX_URL_LEN {
        return Err(format!("the drain URL is longer than {MAX_URL_LEN} bytes"));
    }
    if url.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!(
            "the drain URL {shown:?} contains spaces or control characters"
        ));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "{shown:?} is not a URL; write it as syslog://HOST:PORT, syslog-tls://HOST:PORT or \
             https://HOST/PATH"
        ));
    };
    if !SCHEMES.contains(&scheme) {
        return Err(format!(
            "the drain scheme {scheme:?} is not supported; use syslog://, syslog-tls:// or https://"
        ));
    }
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return Err(format!("{shown:?} has an unclosed IPv6 address"));
        };
        (host, after.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{shown:?} has no host"));
    }
    let port = match (port, scheme) {
        (Some(p), _) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{shown:?} has an invalid port {p:?}"))?,
        (None, "https") => 443,
        (None, _) => {
            return Err(format!(
                "{shown:?} has no port; syslog drains need one (syslog://HOST:PORT)"
            ));
        }
    };
    Ok(DrainUrl { scheme, host, port })
}

/// Resolves the drain's host and refuses internal addresses unless `allow_private`.
pub(super) async fn check_reachable(
    url: &DrainUrl<'_>,
    allow_private: bool,
) -> Result<(), ApiError> {
    if allow_private {
        return Ok(());
    }
    let addrs: Vec<IpAddr> = match url.host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((url.host, url.port))
            .await
            .map_err(|e| {
                ApiError::unprocessable(format!(
                    "cannot resolve the drain host {:?}: {e}; check the drain URL",
                    url.host
                ))
            })?
            .map(|a| a.ip())
            .collect(),
    };
    if let Some(ip) = addrs.into_iter().find(|ip| is_internal(*ip)) {
        return Err(ApiError::unprocessable(format!(
            "the drain host {:?} is {ip}, a loopback, private or link-local address; the \
             platform does not send logs there unless an operator allows it \
             (allow_private_drains = true in the cloud controller's config)",
            url.host
        )));
    }
    Ok(())
}

impl Table for Drain {
    const SELECT: &'static str = "SELECT guid, app_guid, url, created_at, status FROM drains";

    fn from_row(r: &Row<'_>) -> crate::sql::Result<Self> {
        let (guid, app_guid, url, created_at, status): (_, _, String, _, Option<String>) =
            r.columns()?;
        Ok(Drain {
            guid,
            app_guid,
            url: mask_url(&url),
            created_at,
            status: status.and_then(|s| serde_json::from_str(&s).ok()),
        })
    }
}

// The targets feed carries each drain's full URL, credentials included (admins only).
table!(DrainTarget, "SELECT d.guid, d.app_guid, a.name, s.name, d.url FROM drains d \
     JOIN apps a ON a.guid = d.app_guid JOIN spaces s ON s.guid = a.space_guid", {
    guid, app_guid, app_name, space_name, url
});

fn app_drains(c: &Connection, app_guid: &str) -> crate::sql::Result<Vec<Drain>> {
    all(
        c,
        "WHERE app_guid = ?1 ORDER BY created_at, guid",
        [app_guid],
    )
}

async fn list_drains(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<List<Drain>>, ApiError> {
    super::list(&ctx, move |c| {
        let app = app_for(c, &caller, &guid, Access::Read)?;
        Ok(app_drains(c, &app.guid)?)
    })
    .await
}

async fn create_drain(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
    Body(request): Body<CreateDrain>,
) -> Result<(StatusCode, Json<Drain>), ApiError> {
    let url = request.url.trim().to_owned();
    let parsed = parse(&url).map_err(ApiError::unprocessable)?;
    // Access first, so an outsider learns nothing about the app from the URL checks.
    let check_caller = caller.clone();
    let check_guid = guid.clone();
    ctx.db
        .run(move |c| app_for(c, &check_caller, &check_guid, Access::Write).map(|_| ()))
        .await?;
    check_reachable(&parsed, ctx.config.allow_private_drains).await?;
    let limit = ctx.config.max_drains_per_app;
    let masked = mask_url(&url);
    let now = hydrant_auth::now_secs();
    let drain = ctx
        .db
        .run(move |c| {
            let tx = c.transaction()?;
            let app = app_for(&tx, &caller, &guid, Access::Write)?;
            let existing: Vec<String> = {
                let mut stmt = tx.prepare("SELECT url FROM drains WHERE app_guid = ?1")?;
                let rows = stmt.query_map([&app.guid], |r| r.get(0))?;
                rows.collect::<crate::sql::Result<_>>()?
            };
            if existing.contains(&url) {
                return Err(ApiError::unprocessable(format!(
                    "app {} already drains to {}",
                    app.name,
                    mask_url(&url)
                )));
            }
            if existing.len() >= limit {
                return Err(ApiError::unprocessable(format!(
                    "app {} already has {limit} drains, the most allowed \
                     (max_drains_per_app); remove one with `hydrant undrain`",
                    app.name
                )));
            }
            let drain_guid = password::new_guid();
            tx.execute(
                "INSERT INTO drains (guid, app_guid, url, created_at) VALUES (?1, ?2, ?3, ?4)",
                crate::sql::params![drain_guid, app.guid, url, now],
            )?;
            record_event(
                &tx,
                "audit.app.drain.create",
                &caller.username,
                &app,
                json!({ "drain_guid": drain_guid, "url": masked }),
            )?;
            tx.commit()?;
            Ok(Drain {
                guid: drain_guid,
                app_guid: app.guid,
                url: masked,
                created_at: now,
                status: None,
            })
        })
        .await?;
    ctx.logs.api(
        &drain.app_guid,
        &format!(
            "Bound syslog drain {} to app with guid {}",
            drain.url, drain.app_guid
        ),
    );
    Ok((StatusCode::CREATED, Json(drain)))
}

async fn delete_drain(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path((guid, drain_guid)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (app_guid, masked) = ctx
        .db
        .run(move |c| {
            let tx = c.transaction()?;
            let app = app_for(&tx, &caller, &guid, Access::Write)?;
            let url: Option<String> = crate::sql::OptionalExtension::optional(tx.query_row(
                "SELECT url FROM drains WHERE guid = ?1 AND app_guid = ?2",
                [&drain_guid, &app.guid],
                |r| r.get(0),
            ))?;
            let Some(url) = url else {
                return Err(ApiError::not_found("Drain"));
            };
            tx.execute("DELETE FROM drains WHERE guid = ?1", [&drain_guid])?;
            let masked = mask_url(&url);
            record_event(
                &tx,
                "audit.app.drain.delete",
                &caller.username,
                &app,
                json!({ "drain_guid": drain_guid, "url": masked }),
            )?;
            tx.commit()?;
            Ok((app.guid, masked))
        })
        .await?;
    ctx.logs.api(
        &app_guid,
        &format!("Unbound syslog drain {masked} from app with guid {app_guid}"),
    );
    Ok(StatusCode::NO_CONTENT)
}

async fn targets(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
) -> Result<Json<List<DrainTarget>>, ApiError> {
    caller.require_admin()?;
    let all = ctx
        .db
        .run(move |c| Ok(all::<DrainTarget>(c, "ORDER BY d.guid", [])?))
        .await?;
    Ok(Json(List::new(all)))
}

async fn report_status(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Body(statuses): Body<Vec<DrainStatus>>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let now = hydrant_auth::now_secs();
    ctx.db
        .run(move |c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare("UPDATE drains SET status = ?1 WHERE guid = ?2")?;
                for mut status in statuses {
                    status.reported_at = now;
                    // A nozzle should never send a credential, but the status is shown to
                    // developers, so mask whatever it says.
                    status.last_error = status.last_error.as_deref().map(mask_url);
                    let text = serde_json::to_string(&status).map_err(|e| {
                        ApiError::internal(format!("cannot encode a drain status: {e}"))
                    })?;
                    // Reports for bindings deleted meanwhile update nothing, as they should.
                    stmt.execute(crate::sql::params![text, status.guid])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use std::net::IpAddr;

    use super::{DrainUrl, is_internal, parse};

    #[test]
    fn parses_the_schemes_the_nozzle_speaks() {
        assert_eq!(
            parse("syslog://u:p@logs.example.com:6514/x?drain-data=all").unwrap(),
            DrainUrl {
                scheme: "syslog",
                host: "logs.example.com",
                port: 6514
            }
        );
        assert_eq!(parse("https://h.example/p").unwrap().port, 443);
        assert_eq!(
            parse("syslog-tls://[2001:db8::1]:6514").unwrap().host,
            "2001:db8::1"
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong_without_the_password() {
        let e = parse("ftp://u:secret@h:21").unwrap_err();
        assert!(e.contains("not supported"), "{e}");
        let e = parse("syslog://u:secret@h").unwrap_err();
        assert!(e.contains("no port") && !e.contains("secret"), "{e}");
        let e = parse("syslog://u:secret@h:99999").unwrap_err();
        assert!(e.contains("invalid port") && !e.contains("secret"), "{e}");
        assert!(
            parse("logs.example.com:514")
                .unwrap_err()
                .contains("not a URL")
        );
        assert!(parse("syslog://:514").unwrap_err().contains("no host"));
        assert!(parse("syslog://h:514\n").unwrap_err().contains("control"));
    }

    #[test]
    fn internal_addresses_are_recognised() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(
                is_internal(internal.parse::<IpAddr>().unwrap()),
                "{internal}"
            );
        }
        for public in ["8.8.8.8", "2001:4860:4860::8888", "100.128.0.1"] {
            assert!(!is_internal(public.parse::<IpAddr>().unwrap()), "{public}");
        }
    }
}
