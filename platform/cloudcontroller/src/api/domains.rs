//! Domain and route endpoints: list and create shared and private domains; list, create and
//! delete the routes a space owns.
//!
//! A shared domain is the platform's (admins add them); a private domain belongs to one org
//! (its managers add it) and only that org's spaces may put routes on it. Routes are claimed
//! through `routing::claim`, which keeps a host on a domain to the space that took it first.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use hydrant_api::{CreateDomain, CreateRoute, Domain, List, SpaceRoute};

use super::{ApiError, Body, Caller};
use crate::tenancy::{self, Grants};
use crate::{Ctx, db, password, routing};

pub(super) fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/v3/domains", get(list_domains).post(create_domain))
        .route("/v3/space_routes", get(list_routes).post(create_route))
        .route("/v3/space_routes/{guid}", delete(delete_route))
}

async fn list_domains(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
) -> Result<Json<List<Domain>>, ApiError> {
    super::list(&ctx, move |c| {
        let grants = Grants::load(c, &caller)?;
        let mut all = routing::list_domains(c)?;
        all.retain(|d| d.org_guid.as_deref().is_none_or(|o| grants.sees_org(o)));
        Ok(all)
    })
    .await
}

async fn create_domain(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Body(request): Body<CreateDomain>,
) -> Result<(StatusCode, Json<Domain>), ApiError> {
    let name = request
        .name
        .trim()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if !crate::config::is_domain(&name) || !name.contains('.') {
        return Err(ApiError::unprocessable(format!(
            "{name:?} is not a domain; use lower-case labels like shop.example.com"
        )));
    }
    let domain = ctx
        .db
        .run(move |c| {
            let grants = Grants::load(c, &caller)?;
            let org_guid = match &request.org {
                None => {
                    caller.require_admin()?;
                    None
                }
                Some(org) => {
                    let org = tenancy::visible_org(c, &grants, org)?;
                    if !grants.manages_org(&org.guid) {
                        return Err(ApiError::forbidden(
                            "only the org's managers or an admin add its private domains",
                        ));
                    }
                    Some(org.guid)
                }
            };
            // Taken, or under a domain someone else owns (a private `shop.apps.localhost`
            // would otherwise take the shared domain's host `shop`).
            let under = routing::domain_of(c, &name)?;
            if under.is_some_and(|d| d.name == name || d.org_guid != org_guid) {
                return Err(ApiError::unprocessable(format!(
                    "the domain {name} is taken; pick another"
                )));
            }
            let domain = Domain {
                guid: password::new_guid(),
                name,
                org_guid,
                created_at: hydrant_auth::now_secs(),
            };
            routing::insert_domain(c, &domain)?;
            Ok(domain)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(domain)))
}

async fn list_routes(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
) -> Result<Json<List<SpaceRoute>>, ApiError> {
    let routes = ctx
        .db
        .run(move |c| {
            let grants = Grants::load(c, &caller)?;
            let orgs = tenancy::space_orgs(c)?;
            let mut all = routing::list_space_routes(c)?;
            all.retain(|r| {
                let org = orgs.get(&r.space_guid).map_or("", String::as_str);
                grants.space(&r.space_guid, org).read_apps
            });
            Ok(all)
        })
        .await?;
    Ok(Json(List::new(routes)))
}

/// Why `host` cannot be a route's host label, if it cannot.
fn host_problem(host: &str) -> Option<&'static str> {
    if host.is_empty() {
        return None;
    }
    super::apps::name_problem(host)
}

async fn create_route(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Body(request): Body<CreateRoute>,
) -> Result<(StatusCode, Json<SpaceRoute>), ApiError> {
    let host = request.host.trim().to_ascii_lowercase();
    if let Some(problem) = host_problem(&host) {
        return Err(ApiError::unprocessable(format!("host {host:?}: {problem}")));
    }
    let path = match request.path.as_deref().map(str::trim) {
        None | Some("" | "/") => String::new(),
        Some(p) => format!("/{}", p.trim_start_matches('/')),
    };
    let domain = request.domain.trim().to_ascii_lowercase();
    let url = routing::url_of(&host, &domain, &path);
    if let Some(problem) = super::apps::route_problem(&url) {
        return Err(ApiError::unprocessable(problem));
    }
    let route = ctx
        .db
        .run(move |c| {
            let tx = c.transaction()?;
            let grants = Grants::load(&tx, &caller)?;
            let space =
                tenancy::visible_space(&tx, &grants, request.org.as_deref(), Some(&request.space))?;
            if !grants.space_of(&space).develop {
                return Err(ApiError::forbidden(
                    "only the space's developers create its routes",
                ));
            }
            let route = routing::claim(&tx, &space.guid, &space.org_guid, &url)?;
            tx.commit()?;
            Ok(route)
        })
        .await?;
    ctx.routes_changed.notify_one();
    Ok((StatusCode::CREATED, Json(route)))
}

async fn delete_route(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<StatusCode, ApiError> {
    ctx.db
        .run(move |c| {
            let tx = c.transaction()?;
            let grants = Grants::load(&tx, &caller)?;
            let route = routing::space_route(&tx, &guid)?;
            let space = match &route {
                Some(r) => db::space_by_guid(&tx, &r.space_guid)?,
                None => None,
            };
            let (Some(route), Some(space)) = (route, space) else {
                return Err(ApiError::not_found("Route"));
            };
            let access = grants.space_of(&space);
            if !access.read_apps {
                return Err(ApiError::not_found("Route"));
            }
            if !access.develop {
                return Err(ApiError::forbidden(
                    "only the space's developers delete its routes",
                ));
            }
            routing::delete_space_route(&tx, &route)?;
            tx.commit()?;
            Ok(())
        })
        .await?;
    ctx.routes_changed.notify_one();
    Ok(StatusCode::NO_CONTENT)
}
