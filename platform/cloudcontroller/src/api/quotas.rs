//! Quota endpoints: list and create org and space quotas, and assign them to orgs and spaces.
//!
//! Org quotas are the platform's: admins create and assign them. Space quotas belong to one
//! org: its managers create them and assign them to that org's spaces. What a caller may not
//! see answers 404, as everywhere (`tenancy`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use hydrant_api::{CreateQuota, List, Org, Quota, QuotaScope, SetQuota, Space};

use super::{ApiError, Body, Caller};
use crate::tenancy::{self, Grants};
use crate::{Ctx, db, password, quotas};

pub(super) fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/v3/quotas", get(list_quotas).post(create_quota))
        .route("/v3/organizations/{guid}/quota", put(set_org_quota))
        .route("/v3/spaces/{guid}/quota", put(set_space_quota))
}

async fn list_quotas(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
) -> Result<Json<List<Quota>>, ApiError> {
    super::list(&ctx, move |c| {
        let grants = Grants::load(c, &caller)?;
        let mut all = quotas::list(c)?;
        if !caller.admin {
            let orgs = tenancy::list_orgs(c)?;
            let assigned = |q: &Quota| {
                orgs.iter()
                    .any(|o| grants.sees_org(&o.guid) && o.quota_guid.as_deref() == Some(&q.guid))
            };
            all.retain(|q| match q.scope {
                QuotaScope::Org => assigned(q),
                QuotaScope::Space => q.org_guid.as_deref().is_some_and(|o| grants.sees_org(o)),
            });
        }
        Ok(all)
    })
    .await
}

async fn create_quota(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Body(request): Body<CreateQuota>,
) -> Result<(StatusCode, Json<Quota>), ApiError> {
    super::apps::check_name("quota", &request.name)?;
    let quota = ctx
        .db
        .run(move |c| {
            let grants = Grants::load(c, &caller)?;
            let org_guid = match (request.scope, &request.org) {
                (QuotaScope::Org, None) => {
                    caller.require_admin()?;
                    None
                }
                (QuotaScope::Org, Some(_)) => {
                    return Err(ApiError::unprocessable(
                        "an org quota belongs to no org: leave out `org`, or use scope `space`",
                    ));
                }
                (QuotaScope::Space, None) => {
                    return Err(ApiError::unprocessable(
                        "a space quota belongs to an org: give `org`",
                    ));
                }
                (QuotaScope::Space, Some(org)) => {
                    let org = tenancy::visible_org(c, &grants, org)?;
                    if !grants.manages_org(&org.guid) {
                        return Err(ApiError::forbidden(
                            "only the org's managers or an admin create its space quotas",
                        ));
                    }
                    Some(org.guid)
                }
            };
            if quotas::find(c, request.scope, org_guid.as_deref(), &request.name)?.is_some() {
                return Err(ApiError::unprocessable(format!(
                    "a quota called {:?} already exists here; pick another name",
                    request.name
                )));
            }
            let quota = Quota {
                guid: password::new_guid(),
                name: request.name,
                scope: request.scope,
                org_guid,
                total_memory_mb: request.total_memory_mb,
                total_instances: request.total_instances,
                total_apps: request.total_apps,
                total_routes: request.total_routes,
                total_service_instances: request.total_service_instances,
                total_blob_mb: request.total_blob_mb,
                created_at: hydrant_auth::now_secs(),
            };
            quotas::insert(c, &quota)?;
            Ok(quota)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(quota)))
}

async fn set_org_quota(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
    Body(request): Body<SetQuota>,
) -> Result<Json<Org>, ApiError> {
    let org = ctx
        .db
        .run(move |c| {
            let grants = Grants::load(c, &caller)?;
            let org = tenancy::visible_org(c, &grants, &guid)?;
            if !caller.admin {
                return Err(ApiError::forbidden("only an admin assigns org quotas"));
            }
            let quota = quotas::find(c, QuotaScope::Org, None, &request.quota)?
                .ok_or_else(|| ApiError::not_found("Org quota"))?;
            quotas::set_org_quota(c, &org.guid, &quota.guid)?;
            tenancy::visible_org(c, &grants, &org.guid)
        })
        .await?;
    Ok(Json(org))
}

async fn set_space_quota(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
    Body(request): Body<SetQuota>,
) -> Result<Json<Space>, ApiError> {
    super::json(&ctx, move |c| {
        let grants = Grants::load(c, &caller)?;
        let space = db::space_by_guid(c, &guid)?
            .filter(|s| grants.space_of(s).see)
            .ok_or_else(|| ApiError::not_found("Space"))?;
        if !grants.manages_org(&space.org_guid) {
            return Err(ApiError::forbidden(
                "only the org's managers or an admin assign space quotas",
            ));
        }
        let quota = quotas::find(c, QuotaScope::Space, Some(&space.org_guid), &request.quota)?
            .ok_or_else(|| ApiError::not_found("Space quota"))?;
        quotas::set_space_quota(c, &space.guid, &quota.guid)?;
        db::space_by_guid(c, &space.guid)?.ok_or_else(|| ApiError::not_found("Space"))
    })
    .await
}
