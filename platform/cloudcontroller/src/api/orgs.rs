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
            get(list_roles::<OrgRoles>).post(assign_role::<OrgRoles>),
        )
        .route(
            "/v3/organizations/{guid}/roles/{role}/{username}",
            delete(remove_role::<OrgRoles>),
        )
        .route("/v3/spaces", get(list_spaces).post(create_space))
        .route("/v3/spaces/{guid}", get(get_space).delete(delete_space))
        .route(
            "/v3/spaces/{guid}/roles",
            get(list_roles::<SpaceRoles>).post(assign_role::<SpaceRoles>),
        )
        .route(
            "/v3/spaces/{guid}/roles/{role}/{username}",
            delete(remove_role::<SpaceRoles>),
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
    super::apps::check_name("org", &request.name)?;
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

/// The user called `username`, or a 422 that says to create it.
fn user_named(c: &Connection, username: &str) -> Result<db::UserRow, ApiError> {
    db::user_by_name(c, username)?.ok_or_else(|| {
        ApiError::unprocessable(format!(
            "no user called {username:?}; an admin creates users (hydrant create-user)"
        ))
    })
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
    super::apps::check_name("space", &request.name)?;
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

// === roles: orgs and spaces give them the same way ===

/// What an org's and a space's roles differ in; [`list_roles`], [`assign_role`] and
/// [`remove_role`] are the one logic both share: anyone who sees the org or space sees its
/// roles, only its managers (or an admin) change them, a missing user is a 422 when given a
/// role and a 404 when losing one.
trait RoleScope: Send + 'static {
    /// The org or space.
    type Target: Send;
    type Role: Copy + Send + 'static;
    /// The body of an assignment.
    type Request: serde::de::DeserializeOwned + Send + 'static;
    type Assignment: serde::Serialize + Send + 'static;
    /// The 422 for a role name the scope does not have.
    const ROLES: &'static str;

    fn visible(c: &Connection, grants: &Grants, guid: &str) -> Result<Self::Target, ApiError>;
    fn managed(c: &Connection, grants: &Grants, guid: &str) -> Result<Self::Target, ApiError>;
    fn parse(role: &str) -> Option<Self::Role>;
    fn request(request: Self::Request) -> (String, Self::Role);
    fn roles(c: &Connection, target: &Self::Target) -> crate::sql::Result<Vec<Self::Assignment>>;
    fn set(
        c: &Connection,
        target: &Self::Target,
        user: &str,
        role: Self::Role,
    ) -> crate::sql::Result<()>;
    fn remove(
        c: &Connection,
        target: &Self::Target,
        user: &str,
        role: Self::Role,
    ) -> crate::sql::Result<usize>;
    fn assignment(target: Self::Target, username: String, role: Self::Role) -> Self::Assignment;
}

/// `/v3/organizations/{guid}/roles`.
struct OrgRoles;

impl RoleScope for OrgRoles {
    type Target = Org;
    type Role = OrgRole;
    type Request = AssignOrgRole;
    type Assignment = OrgRoleAssignment;
    const ROLES: &'static str = "the org role must be manager or auditor";

    fn visible(c: &Connection, grants: &Grants, guid: &str) -> Result<Org, ApiError> {
        tenancy::visible_org(c, grants, guid)
    }
    fn managed(c: &Connection, grants: &Grants, guid: &str) -> Result<Org, ApiError> {
        managed_org(c, grants, guid)
    }
    fn parse(role: &str) -> Option<OrgRole> {
        OrgRole::parse(role)
    }
    fn request(request: AssignOrgRole) -> (String, OrgRole) {
        (request.username, request.role)
    }
    fn roles(c: &Connection, org: &Org) -> crate::sql::Result<Vec<OrgRoleAssignment>> {
        tenancy::org_roles(c, Some(&org.guid), None)
    }
    fn set(c: &Connection, org: &Org, user: &str, role: OrgRole) -> crate::sql::Result<()> {
        tenancy::set_org_role(c, &org.guid, user, role)
    }
    fn remove(c: &Connection, org: &Org, user: &str, role: OrgRole) -> crate::sql::Result<usize> {
        tenancy::remove_org_role(c, &org.guid, user, role)
    }
    fn assignment(org: Org, username: String, role: OrgRole) -> OrgRoleAssignment {
        OrgRoleAssignment {
            org_guid: org.guid,
            org_name: org.name,
            username,
            role,
        }
    }
}

/// `/v3/spaces/{guid}/roles`.
struct SpaceRoles;

impl RoleScope for SpaceRoles {
    type Target = Space;
    type Role = SpaceRole;
    type Request = AssignRole;
    type Assignment = RoleAssignment;
    const ROLES: &'static str = "the space role must be developer, auditor or manager";

    fn visible(c: &Connection, grants: &Grants, guid: &str) -> Result<Space, ApiError> {
        visible_space_by_guid(c, grants, guid)
    }
    fn managed(c: &Connection, grants: &Grants, guid: &str) -> Result<Space, ApiError> {
        managed_space(c, grants, guid)
    }
    fn parse(role: &str) -> Option<SpaceRole> {
        SpaceRole::parse(role)
    }
    fn request(request: AssignRole) -> (String, SpaceRole) {
        (request.username, request.role)
    }
    fn roles(c: &Connection, space: &Space) -> crate::sql::Result<Vec<RoleAssignment>> {
        db::roles(c, Some(&space.guid), None)
    }
    fn set(c: &Connection, space: &Space, user: &str, role: SpaceRole) -> crate::sql::Result<()> {
        db::set_role(c, &space.guid, user, role)
    }
    fn remove(
        c: &Connection,
        space: &Space,
        user: &str,
        role: SpaceRole,
    ) -> crate::sql::Result<usize> {
        db::remove_role(c, &space.guid, user, role)
    }
    fn assignment(space: Space, username: String, role: SpaceRole) -> RoleAssignment {
        RoleAssignment {
            space_guid: space.guid,
            space_name: space.name,
            org_name: space.org_name,
            username,
            role,
        }
    }
}

async fn list_roles<S: RoleScope>(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<List<S::Assignment>>, ApiError> {
    let roles = with_grants(&ctx, caller, move |c, _, grants| {
        let target = S::visible(c, grants, &guid)?;
        Ok(S::roles(c, &target)?)
    })
    .await?;
    Ok(Json(List::new(roles)))
}

async fn assign_role<S: RoleScope>(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
    Body(request): Body<S::Request>,
) -> Result<(StatusCode, Json<S::Assignment>), ApiError> {
    let (username, role) = S::request(request);
    let assignment = with_grants(&ctx, caller, move |c, _, grants| {
        let target = S::managed(c, grants, &guid)?;
        let user = user_named(c, &username)?;
        S::set(c, &target, &user.user.guid, role)?;
        Ok(S::assignment(target, user.user.username, role))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(assignment)))
}

async fn remove_role<S: RoleScope>(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path((guid, role, username)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let role = S::parse(&role).ok_or_else(|| ApiError::unprocessable(S::ROLES))?;
    with_grants(&ctx, caller, move |c, _, grants| {
        let target = S::managed(c, grants, &guid)?;
        let user = known_user(c, &username)?;
        S::remove(c, &target, &user.user.guid, role)?;
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
