//! Route ownership: domains (shared, or private to one org), the routes each space owns, and
//! the assignments the router checks registrations against.
//!
//! Flow: `create-route`, `map-route` and an app's default route all claim `host.domain[/path]`
//! for the app's space ([`claim`]) before any app is mapped to it; the domain is the longest
//! known one the host name ends in, and must be shared or belong to the space's org. A host on
//! a domain belongs to the space that claimed it first: another space can map neither that
//! host nor any path under it. Every change wakes [`publish_assignments`], which sends the
//! router a full snapshot of which app may serve which route (`router.assigned`, re-sent every
//! few seconds like every control message), so a registration for a route the controller never
//! gave that app is refused at the router even if the cell sending it lies.
//!
//! The API itself is served through the routers the same way: a controller with
//! `api_advertise` set renews its row in the shared `controllers` table each time it sends the
//! snapshot, and every snapshot names each controller whose row is fresh
//! ([`CONTROLLER_TTL`]) as a backend of `api.<system domain>`. Each controller reads the same
//! table, so two publishing side by side send the same endpoints and never erase each other's;
//! one that dies stops renewing and drops out of the next snapshot (the routers' retry hides
//! it until then). No space can claim a route a controller serves.
//!
//! Invariant: refusals never name the tenant that owns a host or a private domain: "taken" and
//! "no such domain" read the same whoever asks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::sql::{Connection, Row, Table, all, one, params, table};
use hydrant_api::{Domain, SpaceRoute};
use hydrant_bus::Bus;
use hydrant_bus::messages::{self, ROUTER_ASSIGNED, RouteAssignments};
use tokio_util::sync::CancellationToken;

use crate::api::ApiError;
use crate::{Ctx, password, quotas};

/// How often the full assignment snapshot is re-sent when nothing changes (and each
/// controller's row in `controllers` renewed).
const RESEND: Duration = Duration::from_secs(5);
/// How long a controller's row names it as an API backend without being renewed: three
/// missed renewals.
pub(crate) const CONTROLLER_TTL: Duration = Duration::from_secs(15);
/// Rows of controllers gone this long are deleted (a dead host's row is not kept forever).
const CONTROLLER_FORGET: Duration = Duration::from_secs(3600);

// === domains ===

table!(Domain, "SELECT guid, name, org_guid, created_at FROM domains", {
    guid, name, org_guid, created_at
});

pub(crate) fn list_domains(c: &Connection) -> crate::sql::Result<Vec<Domain>> {
    all(c, "ORDER BY name", [])
}

pub(crate) fn domain_by_name(c: &Connection, name: &str) -> crate::sql::Result<Option<Domain>> {
    one(c, "WHERE name = ?1", [name])
}

pub(crate) fn insert_domain(c: &Connection, d: &Domain) -> crate::sql::Result<()> {
    c.execute(
        "INSERT INTO domains (guid, name, org_guid, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![d.guid, d.name, d.org_guid, d.created_at],
    )
    .map(drop)
}

/// The shared apps domain exists (first start, or a changed `apps_domain`), and routes mapped
/// before route ownership existed are owned by their app's space.
pub(crate) fn bootstrap(c: &Connection, apps_domain: &str, now: i64) -> crate::sql::Result<()> {
    if domain_by_name(c, apps_domain)?.is_none() {
        insert_domain(
            c,
            &Domain {
                guid: password::new_guid(),
                name: apps_domain.to_owned(),
                org_guid: None,
                created_at: now,
            },
        )?;
    }
    let mut stmt = c.prepare(
        "SELECT r.url, a.space_guid, s.org_guid FROM routes r JOIN apps a ON a.guid = r.app_guid \
         JOIN spaces s ON s.guid = a.space_guid",
    )?;
    let mapped: Vec<(String, String, String)> = stmt
        .query_map([], |r| r.columns())?
        .collect::<Result<_, _>>()?;
    for (url, space, org) in mapped {
        // Best effort: a route on a domain nobody registered keeps working as a mapping.
        let _ = claim(c, &space, &org, &url);
    }
    Ok(())
}

// === parsing ===

/// `host.domain[/path]` split at the longest known domain the host name ends in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub(crate) host: String,
    pub(crate) domain: Domain,
    /// `""` or `/a/b`.
    pub(crate) path: String,
}

/// The URL form routes are stored and registered in: `host.domain` or `host.domain/path`.
pub(crate) fn url_of(host: &str, domain: &str, path: &str) -> String {
    let name = if host.is_empty() {
        domain.to_owned()
    } else {
        format!("{host}.{domain}")
    };
    format!("{name}{path}")
}

/// The domains `org_guid` may use: shared ones and its own.
fn usable(d: &Domain, org_guid: &str) -> bool {
    d.org_guid.as_deref().is_none_or(|o| o == org_guid)
}

fn no_domain(hostname: &str) -> ApiError {
    ApiError::unprocessable(format!(
        "{hostname} is on no domain you may use; `hydrant domains` lists yours \
         (an org manager adds one with `hydrant create-private-domain ORG DOMAIN`)"
    ))
}

/// The most specific domain `hostname` is on, whoever owns it.
pub(crate) fn domain_of(c: &Connection, hostname: &str) -> crate::sql::Result<Option<Domain>> {
    Ok(list_domains(c)?
        .into_iter()
        .filter(|d| hostname == d.name || hostname.ends_with(&format!(".{}", d.name)))
        .max_by_key(|d| d.name.len()))
}

/// Splits `url` for a space of `org_guid`. The most specific domain decides (so a broader
/// domain never reaches into a narrower one another org owns), and a private domain of another
/// org answers exactly as an unknown one.
pub(crate) fn parse(c: &Connection, org_guid: &str, url: &str) -> Result<Parsed, ApiError> {
    let (hostname, path) = match url.split_once('/') {
        Some((h, p)) => (h, format!("/{p}")),
        None => (url, String::new()),
    };
    let domain = domain_of(c, hostname)?
        .filter(|d| usable(d, org_guid))
        .ok_or_else(|| no_domain(hostname))?;
    let host = hostname
        .strip_suffix(&domain.name)
        .map(|h| h.trim_end_matches('.'))
        .unwrap_or_default()
        .to_owned();
    if host.contains('.') {
        return Err(ApiError::unprocessable(format!(
            "{hostname}: a host is one label on a domain, like shop.{}",
            domain.name
        )));
    }
    if host.is_empty() && domain.org_guid.is_none() {
        return Err(ApiError::unprocessable(format!(
            "{hostname} is a shared domain: a route on it needs a host, like shop.{hostname}"
        )));
    }
    Ok(Parsed { host, domain, path })
}

// === space routes ===

const ROUTE_COLUMNS: &str = "guid, host, domain, path, space_guid, created_at";

impl Table for SpaceRoute {
    const SELECT: &'static str =
        "SELECT guid, host, domain, path, space_guid, created_at FROM space_routes";

    fn from_row(row: &Row<'_>) -> crate::sql::Result<Self> {
        let (guid, host, domain, path, space_guid, created_at): (_, String, String, String, _, _) =
            row.columns()?;
        Ok(SpaceRoute {
            guid,
            url: url_of(&host, &domain, &path),
            host,
            domain,
            path,
            space_guid,
            created_at,
        })
    }
}

pub(crate) fn list_space_routes(c: &Connection) -> crate::sql::Result<Vec<SpaceRoute>> {
    all(c, "ORDER BY domain, host, path", [])
}

pub(crate) fn space_route(c: &Connection, guid: &str) -> crate::sql::Result<Option<SpaceRoute>> {
    one(c, "WHERE guid = ?1", [guid])
}

/// Removes a space's route and unmaps it from every app.
pub(crate) fn delete_space_route(c: &Connection, route: &SpaceRoute) -> crate::sql::Result<()> {
    c.execute("DELETE FROM routes WHERE url = ?1", [&route.url])?;
    c.execute("DELETE FROM space_routes WHERE guid = ?1", [&route.guid])
        .map(drop)
}

/// Claims `url` for space `space_guid` (of org `org_guid`): the route it already owns, or a
/// new one when nobody else owns the host. Refused when the domain is not one the org may use
/// or another space owns the host, without saying which.
pub(crate) fn claim(
    c: &Connection,
    space_guid: &str,
    org_guid: &str,
    url: &str,
) -> Result<SpaceRoute, ApiError> {
    let parsed = parse(c, org_guid, url)?;
    let owners: Vec<String> = {
        let mut stmt = c.prepare(
            "SELECT DISTINCT space_guid FROM space_routes WHERE host = ?1 AND domain = ?2",
        )?;
        stmt.query_map([&parsed.host, &parsed.domain.name], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    let hostname = url_of(&parsed.host, &parsed.domain.name, "");
    let served: i64 = c.query_row(
        "SELECT COUNT(*) FROM controllers WHERE route = ?1",
        [&hostname],
        |r| r.get(0),
    )?;
    if served > 0 {
        return Err(ApiError::unprocessable(format!(
            "the host {hostname} is the platform's API; pick another host name"
        )));
    }
    if owners.iter().any(|o| o != space_guid) {
        return Err(ApiError::unprocessable(format!(
            "the host {} is taken: another space owns it and every path under it; pick \
             another host name",
            url_of(&parsed.host, &parsed.domain.name, "")
        )));
    }
    let existing: Option<SpaceRoute> = one(
        c,
        "WHERE host = ?1 AND domain = ?2 AND path = ?3",
        [&parsed.host, &parsed.domain.name, &parsed.path],
    )?;
    if let Some(route) = existing {
        return Ok(route);
    }
    quotas::check(
        c,
        space_guid,
        &quotas::Growth {
            routes: 1,
            ..quotas::Growth::default()
        },
    )?;
    let route = SpaceRoute {
        guid: password::new_guid(),
        url: url_of(&parsed.host, &parsed.domain.name, &parsed.path),
        host: parsed.host,
        domain: parsed.domain.name,
        path: parsed.path,
        space_guid: space_guid.to_owned(),
        created_at: hydrant_auth::now_secs(),
    };
    c.execute(
        &format!("INSERT INTO space_routes ({ROUTE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
        params![
            route.guid,
            route.host,
            route.domain,
            route.path,
            route.space_guid,
            route.created_at
        ],
    )?;
    Ok(route)
}

// === what the router checks ===

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Renews controller `node`'s row: it serves `route` at `api` as of `now_ms`.
pub(crate) fn announce(
    c: &Connection,
    node: &str,
    route: &str,
    api: &str,
    now_ms: i64,
) -> crate::sql::Result<()> {
    c.execute(
        "INSERT INTO controllers (node, route, api, seen_ms) VALUES (?1, ?2, ?3, ?4)          ON CONFLICT (node) DO UPDATE SET route = excluded.route, api = excluded.api,          seen_ms = excluded.seen_ms",
        params![node, route, api, now_ms],
    )?;
    c.execute(
        "DELETE FROM controllers WHERE seen_ms < ?1",
        [now_ms.saturating_sub(ms(CONTROLLER_FORGET))],
    )
    .map(drop)
}

/// Removes controller `node`'s row (a clean stop: the routers drop it with the next snapshot).
pub(crate) fn retire(c: &Connection, node: &str) -> crate::sql::Result<()> {
    c.execute("DELETE FROM controllers WHERE node = ?1", [node])
        .map(drop)
}

/// Every live controller's API endpoint, by route.
fn endpoints(c: &Connection, now_ms: i64) -> crate::sql::Result<BTreeMap<String, Vec<String>>> {
    let since = now_ms.saturating_sub(ms(CONTROLLER_TTL));
    let rows: Vec<(String, String)> = crate::sql::rows(
        c,
        "SELECT route, api FROM controllers WHERE seen_ms >= ?1 ORDER BY route, api",
        [since],
    )?;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (route, api) in rows {
        let backends = out.entry(route).or_default();
        if !backends.contains(&api) {
            backends.push(api);
        }
    }
    Ok(out)
}

/// Every app's mapped routes, and every live controller's API endpoint.
pub(crate) fn assignments(c: &Connection, now_ms: i64) -> crate::sql::Result<RouteAssignments> {
    let rows: Vec<(String, String)> = crate::sql::rows(
        c,
        "SELECT app_guid, url FROM routes ORDER BY app_guid, url",
        [],
    )?;
    let mut apps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (app, url) in rows {
        apps.entry(app).or_default().push(url);
    }
    Ok(RouteAssignments {
        apps,
        endpoints: endpoints(c, now_ms)?,
    })
}

/// Sends the router the full assignment snapshot at start, at once after every change, and
/// every [`RESEND`] — a lost snapshot is repaired by the next one.
pub(crate) async fn publish_assignments(ctx: Arc<Ctx>, bus: Bus, shutdown: CancellationToken) {
    let node = ctx.node.clone();
    let route = ctx.config.api_route();
    let api = ctx.config.api_advertise.clone();
    loop {
        let (node, route, api) = (node.clone(), route.clone(), api.clone());
        let snapshot = ctx
            .db
            .run(move |c| {
                let now = crate::lease::now_ms();
                if !api.is_empty() {
                    announce(c, &node, &route, &api, now)?;
                }
                Ok(assignments(c, now)?)
            })
            .await;
        match snapshot {
            Ok(snapshot) => match messages::encode(&snapshot) {
                Ok(bytes) => {
                    if let Err(error) = bus.publish(ROUTER_ASSIGNED, bytes) {
                        tracing::debug!(%error, "cannot publish the route assignments");
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot encode the route assignments"),
            },
            Err(error) => tracing::warn!(error = ?error, "cannot read the route assignments"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = ctx.routes_changed.notified() => {}
            () = tokio::time::sleep(RESEND) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_at_the_longest_domain_the_org_may_use() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open_sqlite(&dir.path().join("cc.db")).unwrap();
        db.blocking(|c| {
            let org: String = c
                .query_row("SELECT guid FROM orgs WHERE name = 'default'", [], |r| {
                    r.get(0)
                })
                .unwrap();
            c.execute(
                "INSERT INTO orgs (guid, name, created_at) VALUES ('o2', 'other', 1)",
                [],
            )
            .unwrap();
            bootstrap(c, "apps.localhost", 1).unwrap();
            for (name, owner) in [
                ("shop.example.com", Some(org.as_str())),
                ("b.example.com", Some("o2")),
            ] {
                insert_domain(
                    c,
                    &Domain {
                        guid: name.to_owned(),
                        name: name.to_owned(),
                        org_guid: owner.map(str::to_owned),
                        created_at: 1,
                    },
                )
                .unwrap();
            }
            let p = parse(c, &org, "web.apps.localhost/api/v1").unwrap();
            assert_eq!(
                (p.host.as_str(), p.domain.name.as_str(), p.path.as_str()),
                ("web", "apps.localhost", "/api/v1")
            );
            let p = parse(c, &org, "shop.example.com").unwrap();
            assert_eq!(
                (p.host.as_str(), p.domain.name.as_str()),
                ("", "shop.example.com")
            );
            // Another org's private domain reads exactly as an unknown one.
            let theirs = parse(c, &org, "x.b.example.com").unwrap_err();
            let unknown = parse(c, &org, "x.nowhere.example").unwrap_err();
            assert_eq!(
                format!("{theirs:?}").replace("x.b.example.com", "H"),
                format!("{unknown:?}").replace("x.nowhere.example", "H")
            );
            // A host a controller serves the API on is no space's to claim.
            announce(c, "cc-a/1", "api.apps.localhost", "10.0.0.1:9022", 100_000).unwrap();
            announce(c, "cc-b/2", "api.apps.localhost", "10.0.0.2:9022", 100_000).unwrap();
            let refused = claim(c, "any-space", &org, "api.apps.localhost/v3").unwrap_err();
            assert!(
                format!("{refused:?}").contains("platform's API"),
                "{refused:?}"
            );
            // Both live controllers are named; one that stopped renewing drops out.
            let both = assignments(c, 110_000).unwrap().endpoints;
            assert_eq!(
                both["api.apps.localhost"],
                ["10.0.0.1:9022", "10.0.0.2:9022"]
            );
            announce(c, "cc-b/2", "api.apps.localhost", "10.0.0.2:9022", 114_000).unwrap();
            let one = assignments(c, 116_000).unwrap().endpoints;
            assert_eq!(one["api.apps.localhost"], ["10.0.0.2:9022"]);
            retire(c, "cc-b/2").unwrap();
            assert!(assignments(c, 116_000).unwrap().endpoints.is_empty());
            assert!(parse(c, &org, "apps.localhost").is_err());
            assert!(parse(c, &org, "a.b.apps.localhost").is_err());
        });
    }
}
