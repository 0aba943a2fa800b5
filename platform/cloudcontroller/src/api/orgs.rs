//! Org and space endpoints: create and list orgs and spaces, give and take org and space
//! roles, delete a space or an org with everything in it (`teardown`).
//!
//! Every decision goes through `tenancy::Grants`: lists hold only what the caller may see,
//! anything else answers the 404 a missing thing answers, and 403 only when the caller sees
//! the org or space but lacks the role to change it.

use std::sync::Arc;

use crate::sql::Connection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use hydrant_api::tenancy::Deletion;
use hydrant_api::{
    AssignOrgRole, AssignRole, CreateOrg, CreateSpace, List, Org, OrgRole, OrgRoleAssignment,
    RoleAssignment, Space, SpaceRole,
};
use serde::Deserialize;

use super::teardown::{self, Teardown};
use super::{ApiError, Body, Caller};
use crate::tenancy::{self, Grants};
use crate::{Ctx, db, password};

pub(super) fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/v3/organizations", get(list_orgs).post(create_org))
        .route("/v3/organizations/{guid}", get(get_org).delete(delete_org))
        .route(
            "/v3/organizations/{guid}/roles",
            get(list_org_roles).post(assign_org_role),
        )
        .route(
            "/v3/organizations/{guid}/roles/{role}/{username}",
            delete(remove_org_role),
        )
        .route("/v3/spaces", get(list_spaces).post(create_space))
        .route("/v3/spaces/{guid}", get(get_space).delete(delete_space))
        .route(
            "/v3/spaces/{guid}/roles",
            get(space_roles).post(assign_role),
        )
        .route(
            "/v3/spaces/{guid}/roles/{role}/{username}",
            delete(remove_role),
        )
}

/// Runs `f` with the caller's grants on a blocking thread.
async fn with_grants<T, F>(ctx: &Arc<Ctx>, caller: Caller, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection, &Caller, &Grants) -> Result<T, ApiError> + Send + 'static,
{
    ctx.db
        .run(move |c| {
            let grants = Grants::load(c, &caller)?;
            f(c, &caller, &grants)
        })
        .await
}

/// The org the caller may see and manage: 404 when it may not see it, 403 when it may only see.
fn managed_org(c: &Connection, grants: &Grants, guid_or_name: &str) -> Result<Org, ApiError> {
    let org = tenancy::visible_org(c, grants, guid_or_name)?;
    if !grants.manages_org(&org.guid) {
        return Err(forbidden("org"));
    }
    Ok(org)
}

/// The space the caller may see and manage: 404 when it may not see it, 403 when it may only
/// see.
fn managed_space(c: &Connection, grants: &Grants, guid: &str) -> Result<Space, ApiError> {
    let space = visible_space_by_guid(c, grants, guid)?;
    if !grants.space_of(&space).manage {
        return Err(forbidden("space"));
    }
    Ok(space)
}

/// The user whose role is taken away, or 404.
fn known_user(c: &Connection, username: &str) -> Result<db::UserRow, ApiError> {
    db::user_by_name(c, username)?.ok_or_else(|| ApiError::not_found("User"))
}

fn forbidden(what: &str) -> ApiError {
    ApiError::forbidden(format!(
        "you may see this {what} but not change it; ask one of its managers or an admin"
    ))
}

// === orgs ===

async fn list_orgs(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
) -> Result<Json<List<Org>>, ApiError> {
    let orgs = with_grants(&ctx, caller, |c, _, grants| {
        let mut orgs = tenancy::list_orgs(c)?;
        orgs.retain(|o| grants.sees_org(&o.guid));
        Ok(orgs)
    })
    .await?;
    Ok(Json(List::new(orgs)))
}

async fn get_org(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<Org>, ApiError> {
    let org = with_grants(&ctx, caller, move |c, _, grants| {
        tenancy::visible_org(c, grants, &guid)
    })
    .await?;
    Ok(Json(org))
}

async fn create_org(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Body(request): Body<CreateOrg>,
) -> Result<(StatusCode, Json<Org>), ApiError> {
    caller.require_admin()?;
    if let Some(problem) = super::apps::name_problem(&request.name) {
        return Err(ApiError::unprocessable(format!(
            "org name {:?}: {problem}",
            request.name
        )));
    }
    let org = Org {
        guid: password::new_guid(),
        name: request.name,
        quota_guid: None,
        created_at: hydrant_auth::now_secs(),
    };
    let stored = org.clone();
    ctx.db
        .run(move |c| {
            if tenancy::find_org(c, &stored.name)?.is_some() {
                return Err(ApiError::unprocessable(format!(
                    "an org called {:?} already exists",
                    stored.name
                )));
            }
            Ok(tenancy::insert_org(c, &stored)?)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(org)))
}

async fn list_org_roles(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<List<OrgRoleAssignment>>, ApiError> {
    let roles = with_grants(&ctx, caller, move |c, _, grants| {
        let org = tenancy::visible_org(c, grants, &guid)?;
        Ok(tenancy::org_roles(c, Some(&org.guid), None)?)
    })
    .await?;
    Ok(Json(List::new(roles)))
}

/// The user called `username`, or a 422 that says to create it.
fn user_named(c: &Connection, username: &str) -> Result<db::UserRow, ApiError> {
    db::user_by_name(c, username)?.ok_or_else(|| {
        ApiError::unprocessable(format!(
            "no user called {username:?}; an admin creates users (hydrant create-user)"
        ))
    })
}

async fn assign_org_role(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
    Body(request): Body<AssignOrgRole>,
) -> Result<(StatusCode, Json<OrgRoleAssignment>), ApiError> {
    let assignment = with_grants(&ctx, caller, move |c, _, grants| {
        let org = managed_org(c, grants, &guid)?;
        let user = user_named(c, &request.username)?;
        tenancy::set_org_role(c, &org.guid, &user.user.guid, request.role)?;
        Ok(OrgRoleAssignment {
            org_guid: org.guid,
            org_name: org.name,
            username: user.user.username,
            role: request.role,
        })
    })
    .await?;
    Ok((StatusCode::CREATED, Json(assignment)))
}

async fn remove_org_role(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path((guid, role, username)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let role = OrgRole::parse(&role)
        .ok_or_else(|| ApiError::unprocessable("the org role must be manager or auditor"))?;
    with_grants(&ctx, caller, move |c, _, grants| {
        let org = managed_org(c, grants, &guid)?;
        let user = known_user(c, &username)?;
        tenancy::remove_org_role(c, &org.guid, &user.user.guid, role)?;
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// === spaces ===

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SpaceQuery {
    /// An org's guid or name.
    organization: Option<String>,
}

async fn list_spaces(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Query(query): Query<SpaceQuery>,
) -> Result<Json<List<Space>>, ApiError> {
    let spaces = with_grants(&ctx, caller, move |c, _, grants| {
        let org = match &query.organization {
            Some(org) => Some(tenancy::visible_org(c, grants, org)?),
            None => None,
        };
        let mut spaces = db::list_spaces(c)?;
        spaces.retain(|s| {
            grants.space_of(s).see && org.as_ref().is_none_or(|o| o.guid == s.org_guid)
        });
        Ok(spaces)
    })
    .await?;
    Ok(Json(List::new(spaces)))
}

/// The space `guid` the caller may see, or the 404 of one that does not exist.
fn visible_space_by_guid(c: &Connection, grants: &Grants, guid: &str) -> Result<Space, ApiError> {
    db::space_by_guid(c, guid)?
        .filter(|s| grants.space_of(s).see)
        .ok_or_else(|| ApiError::not_found("Space"))
}

async fn get_space(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<Space>, ApiError> {
    let space = with_grants(&ctx, caller, move |c, _, grants| {
        visible_space_by_guid(c, grants, &guid)
    })
    .await?;
    Ok(Json(space))
}

async fn create_space(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Body(request): Body<CreateSpace>,
) -> Result<(StatusCode, Json<Space>), ApiError> {
    if let Some(problem) = super::apps::name_problem(&request.name) {
        return Err(ApiError::unprocessable(format!(
            "space name {:?}: {problem}",
            request.name
        )));
    }
    let space = with_grants(&ctx, caller, move |c, _, grants| {
        let org_name = request.org.as_deref().unwrap_or(tenancy::DEFAULT_ORG);
        let org = managed_org(c, grants, org_name)?;
        if db::find_space_in(c, &org.guid, &request.name)?.is_some() {
            return Err(ApiError::unprocessable(format!(
                "a space called {:?} already exists in org {:?}",
                request.name, org.name
            )));
        }
        let space = Space {
            guid: password::new_guid(),
            name: request.name,
            org_guid: org.guid,
            org_name: org.name,
            quota_guid: None,
            created_at: hydrant_auth::now_secs(),
        };
        db::insert_space(c, &space)?;
        Ok(space)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(space)))
}

/// The default org and its default space take apps pushed without a target: they stay.
fn refuse_default(space_or_org: &str) -> ApiError {
    ApiError::unprocessable(format!(
        "the {space_or_org} is where apps go when no org or space is targeted; it cannot be \
         deleted (delete its apps instead)"
    ))
}

/// 200 once the deletion is done, 202 while broker jobs still run.
fn deletion_answer(deletion: Deletion) -> (StatusCode, Json<Deletion>) {
    let status = if deletion.done {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    (status, Json(deletion))
}

/// `DELETE /v3/spaces/{guid}`: the space with its apps, routes and service instances (an
/// admin or the org's managers; 404 for who cannot see it, 403 for who sees but may not).
async fn delete_space(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<(StatusCode, Json<Deletion>), ApiError> {
    let ctx2 = Arc::clone(&ctx);
    let teardown = with_grants(&ctx, caller, move |c, caller, grants| {
        let space = visible_space_by_guid(c, grants, &guid)?;
        if !grants.manages_org(&space.org_guid) {
            return Err(forbidden("space"));
        }
        if space.org_name == tenancy::DEFAULT_ORG && space.name == crate::DEFAULT_SPACE {
            return Err(refuse_default("default org's default space"));
        }
        let tx = c.transaction()?;
        teardown::check_space(&tx, &space)?;
        let done = teardown::tear_down_space(&tx, &ctx2, caller, &space)?;
        tx.commit()?;
        Ok(done)
    })
    .await?;
    teardown::settle(&ctx, &teardown).await;
    Ok(deletion_answer(teardown.deletion))
}

/// `DELETE /v3/organizations/{guid}`: every space of the org as [`delete_space`] deletes
/// one, then the org with its quotas and private domains.
async fn delete_org(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<(StatusCode, Json<Deletion>), ApiError> {
    let ctx2 = Arc::clone(&ctx);
    let teardown = with_grants(&ctx, caller, move |c, caller, grants| {
        let org = managed_org(c, grants, &guid)?;
        if org.name == tenancy::DEFAULT_ORG {
            return Err(refuse_default("default org"));
        }
        let spaces: Vec<_> = db::list_spaces(c)?
            .into_iter()
            .filter(|s| s.org_guid == org.guid)
            .collect();
        let tx = c.transaction()?;
        for space in &spaces {
            teardown::check_space(&tx, space)?;
        }
        let mut all = Teardown::default();
        let mut done = true;
        for space in &spaces {
            let one = teardown::tear_down_space(&tx, &ctx2, caller, space)?;
            done &= one.deletion.done;
            all.absorb(one);
        }
        if done {
            tenancy::delete_org(&tx, &org.guid)?;
        }
        all.deletion.done = done;
        tx.commit()?;
        Ok(all)
    })
    .await?;
    teardown::settle(&ctx, &teardown).await;
    Ok(deletion_answer(teardown.deletion))
}

async fn space_roles(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<List<RoleAssignment>>, ApiError> {
    let roles = with_grants(&ctx, caller, move |c, _, grants| {
        let space = visible_space_by_guid(c, grants, &guid)?;
        Ok(db::roles(c, Some(&space.guid), None)?)
    })
    .await?;
    Ok(Json(List::new(roles)))
}

async fn assign_role(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
    Body(request): Body<AssignRole>,
) -> Result<(StatusCode, Json<RoleAssignment>), ApiError> {
    let assignment = with_grants(&ctx, caller, move |c, _, grants| {
        let space = managed_space(c, grants, &guid)?;
        let user = user_named(c, &request.username)?;
        db::set_role(c, &space.guid, &user.user.guid, request.role)?;
        Ok(RoleAssignment {
            space_guid: space.guid,
            space_name: space.name,
            org_name: space.org_name,
            username: user.user.username,
            role: request.role,
        })
    })
    .await?;
    Ok((StatusCode::CREATED, Json(assignment)))
}

async fn remove_role(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path((guid, role, username)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let role = SpaceRole::parse(&role).ok_or_else(|| {
        ApiError::unprocessable("the space role must be developer, auditor or manager")
    })?;
    with_grants(&ctx, caller, move |c, _, grants| {
        let space = managed_space(c, grants, &guid)?;
        let user = known_user(c, &username)?;
        db::remove_role(c, &space.guid, &user.user.guid, role)?;
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
