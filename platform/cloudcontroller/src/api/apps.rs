//! App endpoints: create, list, get, update, delete, start/stop/restart, restart of one crashed
//! instance, scale, instance stats, routes, log tokens and audit events.
//!
//! Each change writes desired state and an audit event in one transaction, then wakes the
//! placement loop, which does the rest; nothing here talks to an executor. That keeps every
//! action idempotent: starting a started app changes nothing but the event log.

use std::sync::Arc;

use crate::sql::Connection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use hydrant_api::{
    App, AppState, AuditEvent, CreateApp, DEFAULT_STOP_TIMEOUT_SECS, EnvVars, InstanceRestart,
    List, LogToken, MapRoute, ProcessStats, RestartInstance, Route, ScaleApp, UpdateApp,
    stop_timeout_problem,
};
use hydrant_auth::{Claims, Scope};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, Body, Caller};
use crate::quotas::{self, Growth};
use crate::routing;
use crate::tenancy::{self, Grants};
use crate::{Ctx, db, password};

/// Default memory per instance, MiB.
const DEFAULT_MEMORY_MB: u64 = 256;
/// Default disk per instance, MiB.
const DEFAULT_DISK_MB: u64 = 1024;
/// Largest memory or disk an instance may ask for, MiB (1 TiB).
const MAX_RESOURCE_MB: u64 = 1 << 20;
/// Most audit events one list answer holds.
const MAX_EVENTS: usize = 1000;

pub(super) fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/v3/apps", get(list_apps).post(create_app))
        .route(
            "/v3/apps/{guid}",
            get(get_app).patch(update_app).delete(delete_app),
        )
        .route("/v3/apps/{guid}/actions/start", post(start_app))
        .route("/v3/apps/{guid}/actions/stop", post(stop_app))
        .route("/v3/apps/{guid}/actions/restart", post(restart_app))
        .route(
            "/v3/apps/{guid}/instances/{index}/actions/restart",
            post(restart_instance),
        )
        .route(
            "/v3/apps/{guid}/processes/web/actions/scale",
            post(scale_app),
        )
        .route("/v3/apps/{guid}/processes/web/stats", get(stats))
        .route(
            "/v3/apps/{guid}/routes",
            get(app_routes).post(map_route).delete(unmap_route),
        )
        .route("/v3/routes", get(list_routes))
        .route("/v3/apps/{guid}/log_token", post(log_token))
        .route(
            "/v3/apps/{guid}/environment_variables",
            get(get_env).patch(patch_env),
        )
        .route("/v3/audit_events", get(audit_events))
}

/// What a caller wants to do with an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Its state, routes, events and logs; the environment and start command come back
    /// blanked unless the caller develops in its space.
    Read,
    /// Change it.
    Write,
    /// Read what only its developers may: environment variables, webhook URLs, credentials.
    Secrets,
}

/// Loads an app the caller may `access`. An app the caller may not see is "not found", never
/// "forbidden", so its existence does not leak.
pub(crate) fn app_for(
    c: &Connection,
    caller: &Caller,
    guid: &str,
    access: Access,
) -> Result<App, ApiError> {
    let mut app = db::get_app(c, guid)?.ok_or_else(|| ApiError::not_found("App"))?;
    if caller.admin {
        return Ok(app);
    }
    let grants = Grants::load(c, caller)?;
    let space = db::space_by_guid(c, &app.space_guid)?.ok_or_else(|| ApiError::not_found("App"))?;
    let allowed = grants.space_of(&space);
    if !allowed.read_apps {
        return Err(ApiError::not_found("App"));
    }
    match access {
        Access::Write | Access::Secrets if !allowed.develop => Err(ApiError::forbidden(format!(
            "your role in space {:?} (auditor or manager) only reads apps: it neither \
                 changes them nor sees their environment; ask a space manager for the \
                 SpaceDeveloper role",
            app.space_name
        ))),
        Access::Read if !allowed.develop => {
            tenancy::redact(&mut app);
            Ok(app)
        }
        _ => Ok(app),
    }
}

/// Why `name` cannot name an app or space, if it cannot: it becomes a host name label.
pub(crate) fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 63 {
        return Some("use 1 to 63 characters");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some("it may not start or end with -");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some("use only lower-case letters, digits and - (it becomes a host name)");
    }
    None
}

/// A 422 naming the `what` and the rule when `name` is not a valid name ([`name_problem`]).
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    match name_problem(name) {
        Some(problem) => Err(ApiError::unprocessable(format!(
            "{what} name {name:?}: {problem}"
        ))),
        None => Ok(()),
    }
}

/// Why `name` cannot be a user name, if it cannot.
pub(crate) fn username_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 64 {
        return Some("use 1 to 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
    {
        return Some("use only letters, digits and . _ @ -");
    }
    None
}

/// Why `url` cannot be a route, if it cannot: `host.domain[/path]`, lower-case host.
pub(crate) fn route_problem(url: &str) -> Option<String> {
    let (host, path) = match url.split_once('/') {
        Some((host, path)) => (host, Some(path)),
        None => (url, None),
    };
    if !crate::config::is_domain(host) || !host.contains('.') {
        return Some(format!(
            "{host:?} is not a host name; use lower-case labels like shop.apps.localhost"
        ));
    }
    if let Some(path) = path
        && (path.is_empty()
            || path.len() > 256
            || path.split('/').any(str::is_empty)
            || !path.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/')
            }))
    {
        return Some(format!(
            "path {path:?} is not valid; use segments of letters, digits, - _ . ~"
        ));
    }
    None
}

/// Writes an audit event about `app`.
pub(crate) fn record_event(
    c: &Connection,
    event_type: &str,
    actor: &str,
    app: &App,
    data: serde_json::Value,
) -> crate::sql::Result<()> {
    db::insert_event(
        c,
        &AuditEvent {
            guid: password::new_guid(),
            event_type: event_type.to_owned(),
            actor: actor.to_owned(),
            target_guid: app.guid.clone(),
            target_name: app.name.clone(),
            space_guid: app.space_guid.clone(),
            data,
            created_at: hydrant_auth::now_secs(),
        },
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AppQuery {
    names: Option<String>,
    space: Option<String>,
}

async fn list_apps(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Query(query): Query<AppQuery>,
) -> Result<Json<List<App>>, ApiError> {
    super::list(&ctx, move |c| {
        let names: Option<Vec<String>> = query
            .names
            .map(|n| n.split(',').map(str::to_owned).collect());
        let mut apps = db::list_apps(c, None)?;
        if let Some(names) = names {
            apps.retain(|a| names.contains(&a.name));
        }
        if let Some(space) = query.space {
            apps.retain(|a| a.space_guid == space || a.space_name == space);
        }
        if !caller.admin {
            let grants = Grants::load(c, &caller)?;
            let orgs = tenancy::space_orgs(c)?;
            let access = |a: &App| {
                let org = orgs.get(&a.space_guid).map_or("", String::as_str);
                grants.space(&a.space_guid, org)
            };
            apps.retain(|a| access(a).read_apps);
            for app in &mut apps {
                if !access(app).develop {
                    tenancy::redact(app);
                }
            }
        }
        Ok(apps)
    })
    .await
}

async fn create_app(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Body(request): Body<CreateApp>,
) -> Result<(StatusCode, Json<App>), ApiError> {
    check_name("app", &request.name)?;
    if let Some(problem) = request.stop_timeout_secs.and_then(stop_timeout_problem) {
        return Err(ApiError::unprocessable(problem));
    }
    let instances = request.instances.unwrap_or(1);
    check_scale(&ctx, Some(instances), request.memory_mb, request.disk_mb)?;
    let domain = ctx.config.apps_domain.clone();
    let app = ctx
        .db
        .run(move |c| {
            let tx = c.transaction()?;
            let grants = Grants::load(&tx, &caller)?;
            let space = tenancy::visible_space(&tx, &grants, None, request.space.as_deref())?;
            if !grants.space_of(&space).develop {
                return Err(ApiError::forbidden(format!(
                    "you are not a developer in space {:?}; ask a space manager for the \
                     SpaceDeveloper role",
                    space.name
                )));
            }
            // A new app is stopped: it takes an app (and its default route, counted when it is
            // claimed), no memory yet.
            quotas::check(
                &tx,
                &space.guid,
                &Growth {
                    apps: 1,
                    ..Growth::default()
                },
            )?;
            if db::list_apps(&tx, Some(&request.name))?
                .iter()
                .any(|a| a.space_guid == space.guid)
            {
                return Err(ApiError::unprocessable(format!(
                    "an app called {:?} already exists in space {:?}",
                    request.name, space.name
                )));
            }
            let now = hydrant_auth::now_secs();
            let app = App {
                guid: password::new_guid(),
                name: request.name.clone(),
                space_guid: space.guid.clone(),
                space_name: space.name,
                state: AppState::Stopped,
                instances,
                memory_mb: request.memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
                disk_mb: request.disk_mb.unwrap_or(DEFAULT_DISK_MB),
                command: request.command.clone().filter(|c| !c.trim().is_empty()),
                env: request.env.clone(),
                health_check_type: request.health_check_type.unwrap_or_default(),
                health_check_endpoint: request.health_check_endpoint.clone(),
                stop_timeout_secs: request
                    .stop_timeout_secs
                    .unwrap_or(DEFAULT_STOP_TIMEOUT_SECS),
                current_droplet_guid: None,
                routes: Vec::new(),
                created_at: now,
                updated_at: now,
            };
            db::insert_app(&tx, &app)?;
            if !request.no_route {
                let url = format!("{}.{domain}", app.name);
                if db::route_by_url(&tx, &url)?.is_some() {
                    return Err(ApiError::unprocessable(format!(
                        "the default route {url} is already mapped to another app; \
                         pick another name or create the app with no_route"
                    )));
                }
                routing::claim(&tx, &space.guid, &space.org_guid, &url)?;
                db::insert_route(
                    &tx,
                    &Route {
                        guid: password::new_guid(),
                        url,
                        app_guid: app.guid.clone(),
                        created_at: now,
                    },
                )?;
            }
            record_event(
                &tx,
                "audit.app.create",
                &caller.username,
                &app,
                json!({"name": app.name, "space_guid": app.space_guid, "instances": app.instances,
                       "memory_mb": app.memory_mb, "state": "STOPPED"}),
            )?;
            let app = db::get_app(&tx, &app.guid)?.ok_or_else(|| ApiError::not_found("App"))?;
            tx.commit()?;
            Ok(app)
        })
        .await?;
    ctx.logs.api(
        &app.guid,
        &format!("Created app with guid {} (name {:?})", app.guid, app.name),
    );
    ctx.routes_changed.notify_one();
    Ok((StatusCode::CREATED, Json(app)))
}

fn check_scale(
    ctx: &Ctx,
    instances: Option<u32>,
    memory_mb: Option<u64>,
    disk_mb: Option<u64>,
) -> Result<(), ApiError> {
    let max = ctx.config.max_instances_per_app;
    if let Some(n) = instances
        && n > max
    {
        return Err(ApiError::unprocessable(format!(
            "instances = {n}: at most {max} per app (max_instances_per_app)"
        )));
    }
    for (field, value) in [("memory_mb", memory_mb), ("disk_mb", disk_mb)] {
        if let Some(v) = value
            && (v == 0 || v > MAX_RESOURCE_MB)
        {
            return Err(ApiError::unprocessable(format!(
                "{field} = {v}: must be between 1 and {MAX_RESOURCE_MB}"
            )));
        }
    }
    Ok(())
}

async fn get_app(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<App>, ApiError> {
    let app = ctx
        .db
        .run(move |c| app_for(c, &caller, &guid, Access::Read))
        .await?;
    Ok(Json(app))
}

/// Changes an app under `f` (which returns the event data, or `None` for "nothing to record")
/// and records `event_type`.
async fn change_app<F>(
    ctx: &Arc<Ctx>,
    caller: Caller,
    guid: String,
    event_type: &'static str,
    f: F,
) -> Result<(App, Option<serde_json::Value>), ApiError>
where
    F: FnOnce(&Connection, &mut App) -> Result<Option<serde_json::Value>, ApiError>
        + Send
        + 'static,
{
    ctx.db
        .run(move |c| {
            let tx = c.transaction()?;
            let mut app = app_for(&tx, &caller, &guid, Access::Write)?;
            let data = f(&tx, &mut app)?;
            if let Some(data) = &data {
                app.updated_at = hydrant_auth::now_secs();
                db::update_app(&tx, &app)?;
                record_event(&tx, event_type, &caller.username, &app, data.clone())?;
            }
            let app = db::get_app(&tx, &guid)?.ok_or_else(|| ApiError::not_found("App"))?;
            tx.commit()?;
            Ok((app, data))
        })
        .await
}

async fn update_app(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
    Body(update): Body<UpdateApp>,
) -> Result<Json<App>, ApiError> {
    if let Some(name) = &update.name {
        check_name("app", name)?;
    }
    if let Some(problem) = update.stop_timeout_secs.and_then(stop_timeout_problem) {
        return Err(ApiError::unprocessable(problem));
    }
    let (app, data) = change_app(&ctx, caller, guid, "audit.app.update", move |c, app| {
        let mut data = serde_json::Map::new();
        if let Some(name) = update.name {
            let clash = db::list_apps(c, Some(&name))?
                .iter()
                .any(|a| a.space_guid == app.space_guid && a.guid != app.guid);
            if clash {
                return Err(ApiError::unprocessable(format!(
                    "an app called {name:?} already exists in this space"
                )));
            }
            data.insert("name".into(), json!(name));
            app.name = name;
        }
        if let Some(command) = update.command {
            data.insert("command".into(), json!("[PRIVATE DATA HIDDEN]"));
            app.command = Some(command).filter(|c| !c.trim().is_empty());
        }
        if let Some(env) = update.env {
            data.insert(
                "environment_variables".into(),
                json!("[PRIVATE DATA HIDDEN]"),
            );
            app.env = env;
        }
        if let Some(kind) = update.health_check_type {
            data.insert("health_check_type".into(), json!(kind));
            app.health_check_type = kind;
        }
        if let Some(endpoint) = update.health_check_endpoint {
            data.insert("health_check_endpoint".into(), json!(endpoint));
            app.health_check_endpoint = Some(endpoint).filter(|e| !e.is_empty());
        }
        if let Some(secs) = update.stop_timeout_secs {
            data.insert("stop_timeout_secs".into(), json!(secs));
            app.stop_timeout_secs = secs;
        }
        Ok(Some(serde_json::Value::Object(data)))
    })
    .await?;
    log_change(&ctx, &app, "Updated", data.as_ref());
    Ok(Json(app))
}

/// The app's API log line for a change, when the change had data: `<verb> app with guid G
/// ({"field"=>"value"})`, as Cloud Controller writes it.
fn log_change(ctx: &Ctx, app: &App, verb: &str, data: Option<&serde_json::Value>) {
    if let Some(data) = data {
        ctx.logs.api(
            &app.guid,
            &format!("{verb} app with guid {} ({})", app.guid, ruby_hash(data)),
        );
    }
}

/// Formats event data the way Cloud Controller's API log lines do: `{"state"=>"STARTED"}`.
fn ruby_hash(data: &serde_json::Value) -> String {
    match data {
        serde_json::Value::Object(map) => {
            let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k:?}=>{v}")).collect();
            format!("{{{}}}", parts.join(", "))
        }
        other => other.to_string(),
    }
}

async fn set_state(
    ctx: Arc<Ctx>,
    caller: Caller,
    guid: String,
    state: AppState,
) -> Result<Json<App>, ApiError> {
    let event = match state {
        AppState::Started => "audit.app.start",
        AppState::Stopped => "audit.app.stop",
    };
    let (app, data) = change_app(&ctx, caller, guid, event, move |c, app| {
        if state == AppState::Started && app.current_droplet_guid.is_none() {
            return Err(ApiError::unprocessable(format!(
                "app {:?} has no droplet to run: push its files and stage them \
                 (POST /v3/apps/{}/builds) first",
                app.name, app.guid
            )));
        }
        if app.state == state {
            return Ok(None);
        }
        if state == AppState::Started {
            quotas::check(
                c,
                &app.space_guid,
                &Growth::running(app.instances, app.memory_mb),
            )?;
        }
        app.state = state;
        Ok(Some(json!({"state": state.as_str()})))
    })
    .await?;
    log_change(&ctx, &app, "Updated", data.as_ref());
    ctx.routes_changed.notify_one();
    ctx.placement.wake();
    Ok(Json(app))
}

async fn start_app(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<App>, ApiError> {
    set_state(ctx, caller, guid, AppState::Started).await
}

async fn stop_app(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<App>, ApiError> {
    set_state(ctx, caller, guid, AppState::Stopped).await
}

async fn restart_app(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<App>, ApiError> {
    let (app, _) = change_app(&ctx, caller, guid, "audit.app.restart", |c, app| {
        if app.current_droplet_guid.is_none() {
            return Err(ApiError::unprocessable(format!(
                "app {:?} has no droplet to run: push and stage it first",
                app.name
            )));
        }
        if app.state != AppState::Started {
            quotas::check(
                c,
                &app.space_guid,
                &Growth::running(app.instances, app.memory_mb),
            )?;
        }
        app.state = AppState::Started;
        Ok(Some(json!({"state": "STARTED", "restart": true})))
    })
    .await?;
    ctx.logs
        .api(&app.guid, &format!("Restarted app with guid {}", app.guid));
    ctx.placement.restart(&app.guid);
    Ok(Json(app))
}

/// Longest `reason` kept in the audit event.
const MAX_REASON_BYTES: usize = 512;

async fn restart_instance(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path((guid, index)): Path<(String, u32)>,
    Body(request): Body<RestartInstance>,
) -> Result<Json<InstanceRestart>, ApiError> {
    let app = ctx
        .db
        .run(move |c| app_for(c, &caller, &guid, Access::Write).map(|app| (app, caller)))
        .await;
    let (app, caller) = app?;
    if app.state != AppState::Started || index >= app.instances {
        return Err(ApiError::unprocessable(format!(
            "instance {index} of app {:?} is not desired (the app is {} with {} instance(s)); \
             start or scale the app instead",
            app.name,
            app.state.as_str(),
            app.instances
        )));
    }
    let named = request.instance.as_deref();
    let replaced = ctx.placement.restart_index(&app.guid, index, named);
    let mut reason = request.reason.unwrap_or_default();
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    let data = json!({
        "index": index,
        "reason": reason,
        "crash_count": request.crash_count,
        "replaced": replaced,
    });
    let event_app = app.clone();
    ctx.db
        .run(move |c| {
            record_event(
                c,
                "audit.app.process.restart",
                &caller.username,
                &event_app,
                data,
            )?;
            Ok(())
        })
        .await?;
    if !replaced.is_empty() {
        ctx.logs.api(
            &app.guid,
            &format!(
                "Restarting crashed instance {index} of app with guid {}",
                app.guid
            ),
        );
    }
    Ok(Json(InstanceRestart {
        app_guid: app.guid,
        index,
        replaced,
    }))
}

async fn scale_app(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
    Body(scale): Body<ScaleApp>,
) -> Result<Json<App>, ApiError> {
    check_scale(&ctx, scale.instances, scale.memory_mb, scale.disk_mb)?;
    let (app, data) = change_app(&ctx, caller, guid, "audit.app.scale", move |c, app| {
        if app.state == AppState::Started {
            let before = Growth::running(app.instances, app.memory_mb);
            let after = Growth::running(
                scale.instances.unwrap_or(app.instances),
                scale.memory_mb.unwrap_or(app.memory_mb),
            );
            quotas::check(c, &app.space_guid, &after.minus(before))?;
        }
        let mut data = serde_json::Map::new();
        if let Some(n) = scale.instances {
            data.insert("instances".into(), json!(n));
            app.instances = n;
        }
        if let Some(m) = scale.memory_mb {
            data.insert("memory_in_mb".into(), json!(m));
            app.memory_mb = m;
        }
        if let Some(d) = scale.disk_mb {
            data.insert("disk_in_mb".into(), json!(d));
            app.disk_mb = d;
        }
        if data.is_empty() {
            return Err(ApiError::unprocessable(
                "give at least one of instances, memory_mb, disk_mb",
            ));
        }
        Ok(Some(serde_json::Value::Object(data)))
    })
    .await?;
    log_change(&ctx, &app, "Scaling", data.as_ref());
    ctx.placement.wake();
    Ok(Json(app))
}

async fn delete_app(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (app, droplets) = ctx
        .db
        .run(move |c| {
            let tx = c.transaction()?;
            let app = app_for(&tx, &caller, &guid, Access::Write)?;
            let droplets = db::droplets_of(&tx, &app.guid)?;
            record_event(
                &tx,
                "audit.app.delete-request",
                &caller.username,
                &app,
                json!({"recursive": true}),
            )?;
            db::delete_app(&tx, &app.guid)?;
            tx.commit()?;
            Ok((app, droplets))
        })
        .await?;
    for droplet in droplets {
        let _ = tokio::fs::remove_file(ctx.blobs.droplet_path(&droplet.guid)).await;
    }
    ctx.logs
        .api(&app.guid, &format!("Deleted app with guid {}", app.guid));
    ctx.routes_changed.notify_one();
    ctx.placement.wake();
    Ok(StatusCode::NO_CONTENT)
}

async fn stats(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<ProcessStats>, ApiError> {
    let app = ctx
        .db
        .run(move |c| app_for(c, &caller, &guid, Access::Read))
        .await?;
    Ok(Json(ctx.placement.stats(&app)))
}

async fn app_routes(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<List<Route>>, ApiError> {
    let routes = ctx
        .db
        .run(move |c| {
            let app = app_for(c, &caller, &guid, Access::Read)?;
            Ok(db::routes_of(c, &app.guid)?)
        })
        .await?;
    Ok(Json(List::new(routes)))
}

async fn list_routes(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
) -> Result<Json<List<Route>>, ApiError> {
    super::list(&ctx, move |c| {
        let mut routes = db::list_routes(c)?;
        if !caller.admin {
            let visible: Vec<String> = db::list_apps(c, None)?
                .into_iter()
                .filter(|a| app_for(c, &caller, &a.guid, Access::Read).is_ok())
                .map(|a| a.guid)
                .collect();
            routes.retain(|r| visible.contains(&r.app_guid));
        }
        Ok(routes)
    })
    .await
}

async fn map_route(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
    Body(request): Body<MapRoute>,
) -> Result<(StatusCode, Json<Route>), ApiError> {
    let url = request.url.trim().to_ascii_lowercase();
    if let Some(problem) = route_problem(&url) {
        return Err(ApiError::unprocessable(problem));
    }
    let route = ctx
        .db
        .run(move |c| {
            let tx = c.transaction()?;
            let app = app_for(&tx, &caller, &guid, Access::Write)?;
            if let Some(existing) = db::route_by_url(&tx, &url)? {
                if existing.app_guid == app.guid {
                    return Ok(existing);
                }
                return Err(ApiError::unprocessable(format!(
                    "route {url} is already mapped to another app; unmap it there first"
                )));
            }
            let org = db::space_by_guid(&tx, &app.space_guid)?
                .map(|s| s.org_guid)
                .unwrap_or_default();
            routing::claim(&tx, &app.space_guid, &org, &url)?;
            let route = Route {
                guid: password::new_guid(),
                url: url.clone(),
                app_guid: app.guid.clone(),
                created_at: hydrant_auth::now_secs(),
            };
            db::insert_route(&tx, &route)?;
            record_event(
                &tx,
                "audit.app.map-route",
                &caller.username,
                &app,
                json!({"route": url}),
            )?;
            tx.commit()?;
            Ok(route)
        })
        .await?;
    ctx.routes_changed.notify_one();
    Ok((StatusCode::CREATED, Json(route)))
}

#[derive(Debug, Deserialize)]
struct UrlQuery {
    url: String,
}

async fn unmap_route(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
    Query(query): Query<UrlQuery>,
) -> Result<StatusCode, ApiError> {
    let url = query.url.trim().to_ascii_lowercase();
    ctx.db
        .run(move |c| {
            let tx = c.transaction()?;
            let app = app_for(&tx, &caller, &guid, Access::Write)?;
            if db::delete_route(&tx, &url, &app.guid)? == 0 {
                return Err(ApiError::not_found("Route"));
            }
            record_event(
                &tx,
                "audit.app.unmap-route",
                &caller.username,
                &app,
                json!({"route": url}),
            )?;
            tx.commit()?;
            Ok(())
        })
        .await?;
    ctx.routes_changed.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

async fn log_token(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<LogToken>, ApiError> {
    let username = caller.username.clone();
    let app = ctx
        .db
        .run(move |c| app_for(c, &caller, &guid, Access::Read))
        .await?;
    Ok(Json(source_log_token(&ctx, username, app.guid)))
}

/// A token for the firehose edge that reads one source (an app, or a service instance: its
/// guid) for `username`: for the edge only, one source only, never the API, never the firehose.
pub(super) fn source_log_token(ctx: &Ctx, username: String, source_id: String) -> LogToken {
    let ttl = ctx.config.log_token_ttl_secs;
    let mut claims = Claims::new(username)
        .for_audience(hydrant_auth::AUD_LOGS)
        .with_scope(Scope::app_read(&source_id))
        .expires_in(ttl);
    claims.iss = ctx.config.base_url().to_owned();
    LogToken {
        token: ctx.keys.signing().issue(&claims),
        source_id,
        expires_in: ttl,
    }
}

/// Most variables one app may hold, and the longest name and value.
const MAX_ENV_VARS: usize = 256;
const MAX_ENV_NAME: usize = 256;
const MAX_ENV_VALUE: usize = 32 * 1024;

fn env_answer(app: &App) -> EnvVars {
    EnvVars {
        var: app
            .env
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect(),
    }
}

async fn get_env(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<EnvVars>, ApiError> {
    let app = ctx
        .db
        .run(move |c| app_for(c, &caller, &guid, Access::Secrets))
        .await?;
    Ok(Json(env_answer(&app)))
}

/// Why `name` cannot name an environment variable, if it cannot.
fn env_name_problem(name: &str) -> Option<&'static str> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok || name.len() > MAX_ENV_NAME {
        return Some("start with a letter or _, at most 256 characters");
    }
    if !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Some("use only letters, digits and _");
    }
    if name.starts_with("HYDRANT_") || name == "PORT" {
        return Some("the platform sets PORT and HYDRANT_* itself");
    }
    None
}

async fn patch_env(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
    Body(patch): Body<EnvVars>,
) -> Result<Json<EnvVars>, ApiError> {
    for (name, value) in &patch.var {
        if let Some(problem) = env_name_problem(name) {
            return Err(ApiError::unprocessable(format!(
                "environment variable {name:?}: {problem}"
            )));
        }
        if value.as_ref().is_some_and(|v| v.len() > MAX_ENV_VALUE) {
            return Err(ApiError::unprocessable(format!(
                "environment variable {name:?}: values are at most 32 KiB"
            )));
        }
    }
    let (app, _) = change_app(&ctx, caller, guid, "audit.app.update", move |_, app| {
        for (name, value) in patch.var {
            match value {
                Some(value) => {
                    app.env.insert(name, value);
                }
                None => {
                    app.env.remove(&name);
                }
            }
        }
        if app.env.len() > MAX_ENV_VARS {
            return Err(ApiError::unprocessable(format!(
                "an app holds at most {MAX_ENV_VARS} environment variables"
            )));
        }
        // Names and values stay out of the audit trail: auditors read it.
        Ok(Some(json!({"environment_variables": tenancy::HIDDEN})))
    })
    .await?;
    ctx.logs.api(
        &app.guid,
        &format!(
            "Updated app with guid {} ({{\"environment_variables\"=>\"{}\"}})",
            app.guid,
            tenancy::HIDDEN
        ),
    );
    Ok(Json(env_answer(&app)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EventQuery {
    target_guid: Option<String>,
    types: Option<String>,
}

async fn audit_events(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Query(query): Query<EventQuery>,
) -> Result<Json<List<AuditEvent>>, ApiError> {
    let events = ctx
        .db
        .run(move |c| {
            if let Some(target) = &query.target_guid
                && !caller.admin
            {
                // Deleted apps' events are visible to admins only.
                app_for(c, &caller, target, Access::Read)?;
            }
            let mut events = db::list_events(c, query.target_guid.as_deref(), MAX_EVENTS)?;
            if let Some(types) = &query.types {
                let wanted: Vec<&str> = types.split(',').map(str::trim).collect();
                events.retain(|e| wanted.contains(&e.event_type.as_str()));
            }
            if !caller.admin {
                let grants = Grants::load(c, &caller)?;
                let orgs = tenancy::space_orgs(c)?;
                events.retain(|e| {
                    let org = orgs.get(&e.space_guid).map_or("", String::as_str);
                    grants.space(&e.space_guid, org).read_apps
                });
            }
            Ok(events)
        })
        .await?;
    Ok(Json(List::new(events)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_routes_are_checked() {
        assert!(name_problem("shop-2").is_none());
        for bad in ["", "-x", "x-", "Shop", "a_b", &"a".repeat(64)] {
            assert!(name_problem(bad).is_some(), "{bad}");
        }
        assert!(route_problem("shop.apps.localhost").is_none());
        assert!(route_problem("shop.apps.localhost/api/v1").is_none());
        for bad in [
            "shop",
            "shop..x",
            "shop.x/",
            "shop.x//a",
            "shop.x/a b",
            "SHOP.x",
        ] {
            assert!(route_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn api_lines_look_like_cloud_controllers() {
        assert_eq!(
            ruby_hash(&json!({"state": "STARTED"})),
            "{\"state\"=>\"STARTED\"}"
        );
    }
}
