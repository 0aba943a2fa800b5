//! Push endpoints: resource matching, blob upload, packages, builds, droplets, and the
//! token-guarded droplet download executors use.
//!
//! Flow: `POST /v3/resource_match` (which contents are missing?) → `PUT /v3/blobs/{sha256}`
//! for each → `POST /v3/apps/{guid}/packages` (the full file list, every content present) →
//! `POST /v3/apps/{guid}/builds` (queued for staging) → `GET /v3/builds/{guid}` until STAGED
//! or FAILED. Invariants: every path is checked before it can reach a disk; every upload is
//! bounded by config; the staging queue is bounded and a full queue answers 503.

use std::sync::Arc;

use axum::body::Body as HttpBody;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hydrant_api::{
    Blob, Build, BuildState, CreateBuild, Droplet, List, Package, PackageState, Resource, Resources,
};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::apps::{Access, app_for};
use super::{ApiError, Body, Caller};
use crate::{Ctx, blob_lifecycle, db, password, staging};

pub(super) fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/v3/resource_match", post(resource_match))
        .route("/v3/apps/{guid}/packages", post(create_package))
        .route("/v3/packages/{guid}", get(get_package))
        .route("/v3/apps/{guid}/builds", post(create_build))
        .route("/v3/builds/{guid}", get(get_build))
        .route("/v3/apps/{guid}/droplets", get(list_droplets))
        .route("/v3/apps/{guid}/droplets/current", get(current_droplet))
        .route("/internal/droplets/{guid}", get(download_droplet))
}

/// The scope a droplet download token carries.
pub(crate) fn droplet_scope(guid: &str) -> String {
    format!("droplet:{guid}:read")
}

fn check_list(ctx: &Ctx, resources: &Resources) -> Result<u64, ApiError> {
    let max_files = ctx.config.max_package_files;
    if resources.resources.len() > max_files {
        return Err(ApiError::too_large(format!(
            "{} files; a package holds at most {max_files} (max_package_files)",
            resources.resources.len()
        )));
    }
    hydrant_api::push::validate_resources(&resources.resources)
        .map_err(|e| ApiError::unprocessable(e.to_string()))?;
    let max_blob = ctx.config.max_blob_bytes;
    if let Some(big) = resources.resources.iter().find(|r| r.size > max_blob) {
        return Err(ApiError::too_large(format!(
            "{:?} is {} bytes; files may be at most {max_blob} bytes (max_blob_bytes)",
            big.path, big.size
        )));
    }
    let total = resources
        .resources
        .iter()
        .fold(0u64, |sum, r| sum.saturating_add(r.size));
    if total > ctx.config.max_package_bytes {
        return Err(ApiError::too_large(format!(
            "the app is {total} bytes; a package may be at most {} bytes (max_package_bytes)",
            ctx.config.max_package_bytes
        )));
    }
    Ok(total)
}

/// Whether the content of `r` counts as present for a caller who knows the contents `known`
/// (`None`: an admin, who may use any): it is theirs and in the blob store. A present blob is
/// touched, so collection spares it until the package that names it is written.
fn present(
    blobs: &crate::blobs::BlobStore,
    known: Option<&std::collections::HashSet<String>>,
    r: &Resource,
) -> bool {
    let theirs = known.is_none_or(|k| k.contains(&r.sha256));
    let present = theirs && blobs.has(&r.sha256, r.size);
    if present {
        blobs.touch(&r.sha256);
    }
    present
}

async fn resource_match(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Body(resources): Body<Resources>,
) -> Result<Json<Resources>, ApiError> {
    check_list(&ctx, &resources)?;
    // Only the caller's own contents count as present: no cross-tenant "does it exist?".
    let known = ctx
        .db
        .run(move |c| Ok(blob_lifecycle::known_to(c, &caller)?))
        .await?;
    let blobs = ctx.blobs.clone();
    let missing = tokio::task::spawn_blocking(move || {
        resources
            .resources
            .into_iter()
            .filter(|r| !present(&blobs, known.as_ref(), r))
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ApiError::internal(format!("resource match failed: {e}")))?;
    Ok(Json(Resources { resources: missing }))
}

pub(super) async fn upload_blob(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(sha256): Path<String>,
    request: axum::extract::Request,
) -> Result<(StatusCode, Json<Blob>), ApiError> {
    if !hydrant_api::push::is_sha256_hex(&sha256) {
        return Err(ApiError::unprocessable(
            "the blob name must be its SHA-256 as 64 lower-case hex digits",
        ));
    }
    let uploader = caller.clone();
    let allowed = ctx
        .db
        .run(move |c| Ok(blob_lifecycle::may_upload(c, &uploader)?))
        .await?;
    if !allowed {
        return Err(ApiError::forbidden(
            "uploading app files needs the SpaceDeveloper role in a space; ask a space manager",
        ));
    }
    let max = ctx.config.max_blob_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = declared
        && length > max
    {
        return Err(ApiError::too_large(format!(
            "the file is {length} bytes; files may be at most {max} bytes (max_blob_bytes): \
             leave it out of the push or raise the limit"
        )));
    }
    let stream = request.into_body().into_data_stream();
    let size = ctx.blobs.put(&sha256, stream, max).await?;
    ctx.metrics.blob_uploaded(size);
    let (sha, user) = (sha256.clone(), caller.user_guid.clone());
    ctx.db
        .run(move |c| {
            Ok(blob_lifecycle::record_upload(
                c,
                &sha,
                &user,
                hydrant_auth::now_secs(),
            )?)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(Blob { sha256, size })))
}

async fn create_package(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
    Body(resources): Body<Resources>,
) -> Result<(StatusCode, Json<Package>), ApiError> {
    let size = check_list(&ctx, &resources)?;
    let mut list = resources.resources;
    list.sort();
    let known_caller = caller.clone();
    let known = ctx
        .db
        .run(move |c| Ok(blob_lifecycle::known_to(c, &known_caller)?))
        .await?;
    let blobs = ctx.blobs.clone();
    let (list, missing) = tokio::task::spawn_blocking(move || {
        let missing: Vec<String> = list
            .iter()
            .filter(|r| !present(&blobs, known.as_ref(), r))
            .map(|r| r.path.clone())
            .collect();
        (list, missing)
    })
    .await
    .map_err(|e| ApiError::internal(format!("package check failed: {e}")))?;
    if let Some(first) = missing.first() {
        return Err(ApiError::unprocessable(format!(
            "{} file(s) are not in the blob store (first: {first:?}); ask POST \
             /v3/resource_match which to upload and PUT them to /v3/blobs/{{sha256}} first",
            missing.len()
        )));
    }
    let digest = Sha256::digest(serde_json::to_vec(&list).unwrap_or_default());
    let package = Package {
        guid: password::new_guid(),
        app_guid: guid.clone(),
        state: PackageState::Ready,
        file_count: list.len() as u64,
        size,
        sha256: hydrant_api::push::hex(&digest),
        created_at: hydrant_auth::now_secs(),
    };
    let stored = package.clone();
    ctx.db
        .run(move |c| {
            let app = app_for(c, &caller, &guid, Access::Write)?;
            crate::quotas::check(
                c,
                &app.space_guid,
                &crate::quotas::Growth {
                    blob_bytes: i64::try_from(stored.size).unwrap_or(i64::MAX),
                    ..crate::quotas::Growth::default()
                },
            )?;
            Ok(db::insert_package(c, &stored, &list)?)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(package)))
}

async fn get_package(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<Package>, ApiError> {
    let package = ctx
        .db
        .run(move |c| {
            let package =
                db::get_package(c, &guid)?.ok_or_else(|| ApiError::not_found("Package"))?;
            app_for(c, &caller, &package.app_guid, Access::Read)
                .map_err(|_| ApiError::not_found("Package"))?;
            Ok(package)
        })
        .await?;
    Ok(Json(package))
}

async fn create_build(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
    Body(request): Body<CreateBuild>,
) -> Result<(StatusCode, Json<Build>), ApiError> {
    let actor = caller.username.clone();
    let (app, package) = ctx
        .db
        .run(move |c| {
            let app = app_for(c, &caller, &guid, Access::Write)?;
            let package = match &request.package_guid {
                Some(p) => db::get_package(c, p)?.filter(|p| p.app_guid == app.guid),
                None => db::newest_package(c, &app.guid)?,
            }
            .ok_or_else(|| {
                ApiError::unprocessable(format!(
                    "app {:?} has no such package: push its files first \
                     (POST /v3/apps/{}/packages)",
                    app.name, app.guid
                ))
            })?;
            Ok((app, package))
        })
        .await?;
    let now = hydrant_auth::now_secs();
    let build = Build {
        guid: password::new_guid(),
        app_guid: app.guid.clone(),
        package_guid: package.guid.clone(),
        state: BuildState::Staging,
        error: None,
        buildpack: None,
        droplet_guid: None,
        created_at: now,
        updated_at: now,
    };
    // Queued in the database with its audit event, or refused when the queue is full: any
    // controller's workers stage it, so it outlives this controller.
    let event_app = app.clone();
    let (build_guid, package_guid) = (build.guid.clone(), build.package_guid.clone());
    staging::enqueue(&ctx, &build, &app.space_guid, app.command, move |c| {
        super::record_event(
            c,
            "audit.app.build.create",
            &actor,
            &event_app,
            serde_json::json!({"build_guid": build_guid, "package_guid": package_guid}),
        )
    })
    .await?;
    Ok((StatusCode::CREATED, Json(build)))
}

async fn get_build(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<Build>, ApiError> {
    super::json(&ctx, move |c| {
        let build = db::get_build(c, &guid)?.ok_or_else(|| ApiError::not_found("Build"))?;
        app_for(c, &caller, &build.app_guid, Access::Read)
            .map_err(|_| ApiError::not_found("Build"))?;
        Ok(build)
    })
    .await
}

async fn list_droplets(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<List<Droplet>>, ApiError> {
    super::list(&ctx, move |c| {
        let app = app_for(c, &caller, &guid, Access::Read)?;
        Ok(db::droplets_of(c, &app.guid)?)
    })
    .await
}

async fn current_droplet(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<Droplet>, ApiError> {
    super::json(&ctx, move |c| {
        let app = app_for(c, &caller, &guid, Access::Read)?;
        let Some(current) = app.current_droplet_guid else {
            return Err(ApiError::not_found("Droplet"));
        };
        db::get_droplet(c, &current)?.ok_or_else(|| ApiError::not_found("Droplet"))
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TokenQuery {
    token: Option<String>,
}

async fn download_droplet(
    State(ctx): State<Arc<Ctx>>,
    Path(guid): Path<String>,
    Query(query): Query<TokenQuery>,
) -> Result<Response, ApiError> {
    let token = query.token.ok_or_else(|| {
        ApiError::unauthenticated("droplet downloads need the token from the droplet URL")
    })?;
    let claims = ctx
        .keys
        .key_set()
        .verify(&token, hydrant_auth::AUD_DROPLET)
        .map_err(|e| ApiError::unauthenticated(e.to_string()))?;
    let scope = droplet_scope(&guid);
    if !claims.scopes.contains(&scope) {
        return Err(ApiError::forbidden("this token is for another droplet"));
    }
    let path = ctx.blobs.droplet_path(&guid);
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| ApiError::not_found("Droplet"))?;
    let length = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let body = HttpBody::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_owned()),
            (header::CONTENT_LENGTH, length.to_string()),
        ],
        body,
    )
        .into_response())
}
