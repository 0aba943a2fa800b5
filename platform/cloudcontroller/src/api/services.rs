//! Service endpoints in the shape of Cloud Foundry's v3 API: brokers
//! (`/v3/service_brokers`, admin), the marketplace (`/v3/service_offerings`), plan visibility
//! (`/v3/service_access`, admin), instances (`/v3/service_instances`), app bindings and service
//! keys (`/v3/service_credential_bindings`) and jobs (`/v3/jobs/{guid}`).
//!
//! Every change that needs the broker writes the resource and a job in one transaction and
//! answers 202 with `Location: /v3/jobs/{guid}`; the job runner (`services::jobs`) does the
//! broker's part. User-provided instances need no broker and answer at once. Parameters are
//! checked against the plan's schema before any job exists, so a mistake is answered with
//! what is wrong, not with a broker's error minutes later.
//!
//! Authorisation: space developers create and change their space's instances and bindings,
//! space auditors read them, admins do everything (brokers and plan visibility are theirs
//! alone); an instance the caller may not see is "not found", like an app.

use std::sync::Arc;

use crate::sql::{Connection, OptionalExtension as _};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hydrant_api::services::{
    BindingType, CreateServiceBinding, CreateServiceBroker, CreateServiceInstance, Job, JobAnswer,
    LastOperation, ServiceAccess, ServiceBinding, ServiceBindingAnswer, ServiceBindingDetails,
    ServiceBroker, ServiceInstance, ServiceInstanceAnswer, ServiceInstanceType, ServiceOffering,
    ServicePlan, UpdateServiceBroker, UpdateServiceInstance,
};
use hydrant_api::{List, LogToken};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::apps::{Access, app_for};
use super::{ApiError, Body, Caller};
use crate::services::store::{self, BindingRow, BrokerRow, InstanceRow, JobSpec, PlanRow};
use crate::services::{catalog, jobs, schema};
use crate::{Ctx, db, password};

/// Longest broker, instance, binding or key name.
const MAX_NAME_LEN: usize = 255;

/// Largest `parameters` or user-provided `credentials` object, bytes.
const MAX_PARAMETERS_BYTES: usize = 64 * 1024;

pub(super) fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/v3/service_brokers", get(list_brokers).post(create_broker))
        .route(
            "/v3/service_brokers/{guid}",
            axum::routing::patch(update_broker).delete(delete_broker),
        )
        .route("/v3/service_offerings", get(marketplace))
        .route("/v3/service_access", post(service_access))
        .route(
            "/v3/service_instances",
            get(list_instances).post(create_instance),
        )
        .route(
            "/v3/service_instances/{guid}",
            get(get_instance)
                .patch(update_instance)
                .delete(delete_instance),
        )
        .route(
            "/v3/service_credential_bindings",
            get(list_bindings).post(create_binding),
        )
        .route(
            "/v3/service_credential_bindings/{guid}",
            get(get_binding).delete(delete_binding),
        )
        .route(
            "/v3/service_credential_bindings/{guid}/details",
            get(binding_details),
        )
        .route(
            "/v3/service_instances/{guid}/log_token",
            post(instance_log_token),
        )
        .route("/v3/jobs/{guid}", get(get_job))
}

fn name_problem(name: &str) -> Option<String> {
    if name.trim().is_empty() || name.len() > MAX_NAME_LEN {
        return Some(format!("use 1 to {MAX_NAME_LEN} characters"));
    }
    if name.chars().any(char::is_control) {
        return Some("control characters are not allowed".to_owned());
    }
    None
}

fn conflict(detail: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        60016,
        "CF-AsyncServiceInstanceOperationInProgress",
        detail,
    )
}

fn bad_gateway(detail: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        10001,
        "CF-ServiceBrokerBadResponse",
        detail,
    )
}

/// 202 with `Location: /v3/jobs/{guid}` and `body`.
fn accepted<T: serde::Serialize>(job: &Job, body: T) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v3/jobs/{}", job.guid)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

// === who may do what ===

/// Whether the caller may read (`Some(false)`) or change (`Some(true)`) what is in a space,
/// by the tenancy role matrix: those who may read a space's apps (its members, its org's
/// managers) read its service instances; its developers change them and see credentials.
fn space_access(
    c: &Connection,
    caller: &Caller,
    space_guid: &str,
) -> Result<Option<bool>, ApiError> {
    if caller.admin {
        return Ok(Some(true));
    }
    let grants = crate::tenancy::Grants::load(c, caller)?;
    let org: String = c
        .query_row(
            "SELECT org_guid FROM spaces WHERE guid = ?1",
            [space_guid],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or_default();
    let access = grants.space(space_guid, &org);
    if !access.read_apps {
        return Ok(None);
    }
    Ok(Some(access.develop))
}

/// An instance the caller may `access`; one they may not see is "not found".
fn instance_for(
    c: &Connection,
    caller: &Caller,
    guid: &str,
    access: Access,
) -> Result<InstanceRow, ApiError> {
    let not_found = || ApiError::not_found("Service instance");
    let instance = store::instance(c, guid)?.ok_or_else(not_found)?;
    match space_access(c, caller, &instance.space_guid)? {
        None => Err(not_found()),
        Some(false) if access == Access::Write => Err(ApiError::forbidden(format!(
            "you may only read service instances in space {:?}; ask an admin for the \
             developer role",
            instance.space_name
        ))),
        Some(_) => Ok(instance),
    }
}

/// An instance the caller may change and that no operation is running on: the "load and
/// authorize" step of every change to an instance.
fn idle_instance_for(c: &Connection, caller: &Caller, guid: &str) -> Result<InstanceRow, ApiError> {
    let instance = instance_for(c, caller, guid, Access::Write)?;
    if instance.busy() {
        return Err(conflict(format!(
            "an operation ({}) is in progress on {:?}; wait for it to finish",
            instance.op.kind, instance.name
        )));
    }
    Ok(instance)
}

/// The space a new instance goes into, checked for the developer role.
fn target_space(
    c: &Connection,
    caller: &Caller,
    space: Option<&str>,
) -> Result<hydrant_api::Space, ApiError> {
    let name = space.unwrap_or(crate::DEFAULT_SPACE);
    let space = db::find_space(c, name)?.ok_or_else(|| {
        ApiError::unprocessable(format!(
            "no space called {name:?}; list them with GET /v3/spaces"
        ))
    })?;
    if space_access(c, caller, &space.guid)? != Some(true) {
        return Err(ApiError::forbidden(format!(
            "you are not a developer in space {:?}; ask an admin for the role",
            space.name
        )));
    }
    Ok(space)
}

/// The org of a space, for the OSBAPI context; the `default` org before orgs exist.
fn org_of(c: &Connection, space_guid: &str) -> (String, String) {
    c.query_row(
        "SELECT o.guid, o.name FROM spaces s JOIN orgs o ON o.guid = s.org_guid WHERE s.guid = ?1",
        [space_guid],
        |r| r.columns(),
    )
    .unwrap_or_else(|_| ("default".to_owned(), "default".to_owned()))
}

fn context(c: &Connection, space_guid: &str, space_name: &str, instance_name: &str) -> Value {
    let (org_guid, org_name) = org_of(c, space_guid);
    json!({
        "platform": "cloudfoundry",
        "organization_guid": org_guid,
        "organization_name": org_name,
        "space_guid": space_guid,
        "space_name": space_name,
        "instance_name": instance_name,
    })
}

/// `parameters` must be an object of bounded size that fits the plan's schema, if it has one.
fn check_parameters(
    parameters: Option<&Value>,
    plan: &PlanRow,
    resource: &str,
    action: &str,
) -> Result<(), ApiError> {
    let Some(parameters) = parameters else {
        if let Some(schema) = plan.schema(resource, action) {
            // No parameters still has to satisfy `required`.
            return schema::validate(schema, &json!({})).map_err(|errors| {
                ApiError::unprocessable(format!(
                    "plan {:?} of {:?} needs parameters (-c): {}",
                    plan.name,
                    plan.offering_name,
                    errors.join("; ")
                ))
            });
        }
        return Ok(());
    };
    if !parameters.is_object() {
        return Err(ApiError::unprocessable(
            "parameters must be a JSON object, e.g. -c '{\"size\": 2}'",
        ));
    }
    if parameters.to_string().len() > MAX_PARAMETERS_BYTES {
        return Err(ApiError::unprocessable(format!(
            "parameters are larger than {MAX_PARAMETERS_BYTES} bytes"
        )));
    }
    if let Some(schema) = plan.schema(resource, action) {
        schema::validate(schema, parameters).map_err(|errors| {
            ApiError::unprocessable(format!(
                "the parameters do not fit plan {:?} of {:?}: {}",
                plan.name,
                plan.offering_name,
                errors.join("; ")
            ))
        })?;
    }
    Ok(())
}

/// How long the runner polls an operation on `plan`: the plan's own limit, or the platform's
/// if shorter.
fn max_poll_secs(ctx: &Ctx, plan: &PlanRow) -> u64 {
    let platform = ctx.config.services.max_polling_minutes * 60;
    plan.maximum_polling_duration
        .map_or(platform, |p| p.min(platform))
}

/// What every broker job for `instance` on `plan` carries: the broker and the ids it knows the
/// resource by, who asked, how long it may be polled, and the space that may read the job.
pub(super) fn plan_job(
    ctx: &Ctx,
    plan: &PlanRow,
    instance: &str,
    space: &str,
    caller: &Caller,
) -> JobSpec {
    JobSpec {
        broker_guid: plan.broker_guid.clone(),
        service_id: plan.offering_id.clone(),
        plan_id: plan.id.clone(),
        instance_id: instance.to_owned(),
        user: Some(caller.user_guid.clone()),
        max_poll_secs: max_poll_secs(ctx, plan),
        space_guid: Some(space.to_owned()),
        ..JobSpec::default()
    }
}

/// Writes the broker job `operation` for `spec` and marks its resource (the binding when the
/// spec names one, else the instance) with a `kind` operation in progress, in the caller's
/// transaction; the job as a client sees it.
pub(super) fn start_job(
    c: &Connection,
    operation: &str,
    kind: &str,
    spec: JobSpec,
    description: Option<&str>,
) -> Result<Job, ApiError> {
    let binding = spec.binding_id.clone();
    let resource = binding.clone().unwrap_or_else(|| spec.instance_id.clone());
    let job = jobs::new_job(operation, &resource, spec);
    store::insert_job(c, &job)?;
    let row = store::OpRow::of(binding.is_some());
    store::set_op(c, row, &resource, kind, "in progress", description)?;
    Ok(job.view())
}

/// Deletes a resource of `instance` at once with `now` when the instance is user-provided (no
/// broker to ask), else starts the broker job `operation` for the spec `spec` makes from its
/// plan; the job, if any.
fn delete_now_or_by_job(
    c: &Connection,
    instance: &InstanceRow,
    operation: &str,
    now: impl FnOnce() -> crate::sql::Result<()>,
    spec: impl FnOnce(&PlanRow) -> JobSpec,
) -> Result<Option<Job>, ApiError> {
    match &instance.plan {
        None => {
            now()?;
            Ok(None)
        }
        Some(plan) => Ok(Some(start_job(c, operation, "delete", spec(plan), None)?)),
    }
}

/// A create that has just begun (`in progress`) or, needing no broker, is done (`succeeded`).
fn create_op(state: &str, now: i64) -> LastOperation {
    LastOperation {
        kind: "create".to_owned(),
        state: state.to_owned(),
        description: None,
        updated_at: now,
    }
}

/// Tags a client may set: at most 64, each a valid name.
fn check_tags(tags: &[String]) -> Result<(), ApiError> {
    if tags.len() > 64 || tags.iter().any(|t| name_problem(t).is_some()) {
        return Err(ApiError::unprocessable(
            "tags: at most 64, each 1 to 255 characters",
        ));
    }
    Ok(())
}

/// A new instance's name is free in its space and the space's quota has room for it.
fn check_new_instance(
    c: &Connection,
    name: &str,
    space: &hydrant_api::Space,
) -> Result<(), ApiError> {
    if !store::instances(c, Some(name), Some(&space.guid))?.is_empty() {
        return Err(ApiError::unprocessable(format!(
            "a service instance called {name:?} already exists in space {:?}",
            space.name
        )));
    }
    crate::quotas::check_service_instance_quota(c, &space.guid)?;
    Ok(())
}

/// The one plan `offering`/`plan` (optionally of `broker`) names.
fn find_plan(
    c: &Connection,
    offering: &str,
    plan: &str,
    broker: Option<&str>,
) -> Result<PlanRow, ApiError> {
    let candidates = store::plans(c, Some(offering), broker)?;
    if candidates.is_empty() {
        return Err(ApiError::unprocessable(format!(
            "no service offering called {offering:?}; `hydrant marketplace` lists them"
        )));
    }
    let mut brokers: Vec<&str> = candidates.iter().map(|p| p.broker_name.as_str()).collect();
    brokers.sort_unstable();
    brokers.dedup();
    if brokers.len() > 1 {
        return Err(ApiError::unprocessable(format!(
            "the offering {offering:?} is served by several brokers ({}); name one with -b",
            brokers.join(", ")
        )));
    }
    candidates
        .iter()
        .find(|p| p.name == plan)
        .cloned()
        .ok_or_else(|| {
            let names: Vec<&str> = candidates.iter().map(|p| p.name.as_str()).collect();
            ApiError::unprocessable(format!(
                "the offering {offering:?} has no plan {plan:?}; its plans are {}",
                names.join(", ")
            ))
        })
}

// === brokers ===

async fn fetch_catalog(ctx: &Ctx, broker: &BrokerRow) -> Result<Vec<catalog::Offering>, ApiError> {
    let osb = &ctx.services.osb;
    let answer = osb
        .send(&broker.addr(), Method::GET, "/v2/catalog", None, None)
        .await
        .map_err(|f| bad_gateway(format!("cannot fetch the catalog: {f}")))?;
    if answer.status == 401 {
        return Err(ApiError::unprocessable(format!(
            "the broker refused the username and password (401) at {}",
            crate::services::osb::shown(&broker.url)
        )));
    }
    if answer.status != 200 {
        return Err(bad_gateway(format!(
            "GET /v2/catalog answered {}: {}",
            answer.status,
            answer.error_text()
        )));
    }
    let body = answer
        .body
        .ok_or_else(|| bad_gateway("GET /v2/catalog did not answer JSON"))?;
    catalog::parse(&body).map_err(|problems| {
        ApiError::unprocessable(format!(
            "the broker's catalog is not valid OSBAPI 2.17: {}",
            problems.join("; ")
        ))
    })
}

fn check_broker_fields(ctx: &Ctx, b: &BrokerRow) -> Result<(), ApiError> {
    if let Some(problem) = name_problem(&b.name) {
        return Err(ApiError::unprocessable(format!("broker name: {problem}")));
    }
    if let Some(problem) = ctx.services.osb.url_problem(&b.url) {
        return Err(ApiError::unprocessable(problem));
    }
    if b.username.is_empty() || b.password.is_empty() {
        return Err(ApiError::unprocessable(
            "give the broker's basic auth USERNAME and PASSWORD",
        ));
    }
    Ok(())
}

async fn create_broker(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Body(request): Body<CreateServiceBroker>,
) -> Result<(StatusCode, Json<ServiceBroker>), ApiError> {
    caller.require_admin()?;
    let now = hydrant_auth::now_secs();
    let broker = BrokerRow {
        guid: password::new_guid(),
        name: request.name,
        url: request.url.trim_end_matches('/').to_owned(),
        username: request.username,
        password: request.password,
        created_at: now,
        updated_at: now,
    };
    check_broker_fields(&ctx, &broker)?;
    let name = broker.name.clone();
    if ctx
        .db
        .run(move |c| Ok(store::broker(c, &name)?))
        .await?
        .is_some()
    {
        return Err(ApiError::unprocessable(format!(
            "a broker called {:?} already exists; update it with `hydrant update-service-broker`",
            broker.name
        )));
    }
    let offerings = fetch_catalog(&ctx, &broker).await?;
    let view = ctx
        .db
        .run(move |c| {
            let tx = c.transaction()?;
            store::insert_broker(&tx, &broker)?;
            store::store_catalog(&tx, &broker.guid, &offerings)?;
            let view = store::broker_view(&tx, &broker)?;
            tx.commit()?;
            Ok(view)
        })
        .await?;
    tracing::info!(broker = %view.name, offerings = ?view.offerings, "service broker registered");
    Ok((StatusCode::CREATED, Json(view)))
}

async fn list_brokers(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
) -> Result<Json<List<ServiceBroker>>, ApiError> {
    caller.require_admin()?;
    let views = ctx
        .db
        .run(|c| {
            let mut out = Vec::new();
            for b in store::brokers(c)? {
                out.push(store::broker_view(c, &b)?);
            }
            Ok(out)
        })
        .await?;
    Ok(Json(List::new(views)))
}

async fn update_broker(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
    Body(update): Body<UpdateServiceBroker>,
) -> Result<Json<ServiceBroker>, ApiError> {
    caller.require_admin()?;
    let mut broker = ctx
        .db
        .run(move |c| Ok(store::broker(c, &guid)?))
        .await?
        .ok_or_else(|| ApiError::not_found("Service broker"))?;
    if let Some(name) = update.name {
        broker.name = name;
    }
    if let Some(url) = update.url {
        broker.url = url.trim_end_matches('/').to_owned();
    }
    if let Some(username) = update.username {
        broker.username = username;
    }
    if let Some(password) = update.password {
        broker.password = password;
    }
    broker.updated_at = hydrant_auth::now_secs();
    check_broker_fields(&ctx, &broker)?;
    let offerings = fetch_catalog(&ctx, &broker).await?;
    super::json(&ctx, move |c| {
        let tx = c.transaction()?;
        if let Some(other) = store::broker(&tx, &broker.name)?
            && other.guid != broker.guid
        {
            return Err(ApiError::unprocessable(format!(
                "another broker is called {:?}",
                broker.name
            )));
        }
        store::update_broker(&tx, &broker)?;
        store::store_catalog(&tx, &broker.guid, &offerings)?;
        let view = store::broker_view(&tx, &broker)?;
        tx.commit()?;
        Ok(view)
    })
    .await
}

async fn delete_broker(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    ctx.db
        .run(move |c| {
            let tx = c.transaction()?;
            let broker =
                store::broker(&tx, &guid)?.ok_or_else(|| ApiError::not_found("Service broker"))?;
            let count = store::broker_instance_count(&tx, &broker.guid)?;
            if count > 0 {
                return Err(ApiError::unprocessable(format!(
                    "the broker {:?} still has {count} service instance(s); delete them first \
                     (`hydrant services` lists them)",
                    broker.name
                )));
            }
            store::delete_broker(&tx, &broker.guid)?;
            tx.commit()?;
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn marketplace(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
) -> Result<Json<List<ServiceOffering>>, ApiError> {
    super::list(&ctx, move |c| Ok(store::marketplace(c, caller.admin)?)).await
}

async fn service_access(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Body(request): Body<ServiceAccess>,
) -> Result<Json<List<ServicePlan>>, ApiError> {
    caller.require_admin()?;
    super::list(&ctx, move |c| {
        let tx = c.transaction()?;
        let plans = store::plans(&tx, Some(&request.offering), request.broker.as_deref())?;
        if plans.is_empty() {
            return Err(ApiError::unprocessable(format!(
                "no service offering called {:?}; `hydrant marketplace` lists them",
                request.offering
            )));
        }
        let mut brokers: Vec<&str> = plans.iter().map(|p| p.broker_name.as_str()).collect();
        brokers.sort_unstable();
        brokers.dedup();
        if brokers.len() > 1 {
            return Err(ApiError::unprocessable(format!(
                "the offering {:?} is served by several brokers ({}); name one with -b",
                request.offering,
                brokers.join(", ")
            )));
        }
        let chosen: Vec<&PlanRow> = plans
            .iter()
            .filter(|p| request.plan.as_ref().is_none_or(|name| &p.name == name))
            .collect();
        if chosen.is_empty() {
            return Err(ApiError::unprocessable(format!(
                "the offering {:?} has no plan {:?}",
                request.offering,
                request.plan.unwrap_or_default()
            )));
        }
        let mut out = Vec::new();
        for p in chosen {
            store::set_plan_public(&tx, &p.guid, request.enable)?;
            let mut view = p.view();
            view.public = request.enable;
            out.push(view);
        }
        tx.commit()?;
        Ok(out)
    })
    .await
}

// === instances ===

/// Checks a syslog drain or route service URL of a user-provided instance.
async fn check_upsi_urls(
    ctx: &Ctx,
    drain: Option<&str>,
    route_service: Option<&str>,
) -> Result<(), ApiError> {
    if let Some(url) = drain.filter(|u| !u.is_empty()) {
        let parsed = super::drains::parse(url).map_err(ApiError::unprocessable)?;
        super::drains::check_reachable(&parsed, ctx.config.allow_private_drains).await?;
    }
    if let Some(url) = route_service
        && !url.starts_with("https://")
    {
        return Err(ApiError::unprocessable(
            "a route service URL must be https:// (-r)",
        ));
    }
    Ok(())
}

async fn create_instance(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Body(request): Body<CreateServiceInstance>,
) -> Result<Response, ApiError> {
    if let Some(problem) = name_problem(&request.name) {
        return Err(ApiError::unprocessable(format!(
            "service instance name {:?}: {problem}",
            request.name
        )));
    }
    check_tags(&request.tags)?;
    if request.kind == ServiceInstanceType::UserProvided {
        return create_upsi(ctx, caller, request).await;
    }
    let (Some(offering), Some(plan_name)) = (request.offering.clone(), request.plan.clone()) else {
        return Err(ApiError::unprocessable(
            "a managed service instance needs an offering and a plan \
             (hydrant create-service OFFERING PLAN NAME)",
        ));
    };
    let ctx2 = ctx.clone();
    let (instance, job) = ctx
        .db
        .run(move |c| {
            let tx = c.transaction()?;
            let space = target_space(&tx, &caller, request.space.as_deref())?;
            let plan = find_plan(&tx, &offering, &plan_name, request.broker.as_deref())?;
            if !(plan.public || caller.admin) {
                return Err(ApiError::unprocessable(format!(
                    "the plan {plan_name:?} of {offering:?} is not available to you; an admin \
                     enables it with `hydrant enable-service-access {offering} -p {plan_name}`"
                )));
            }
            check_parameters(
                request.parameters.as_ref(),
                &plan,
                "service_instance",
                "create",
            )?;
            check_new_instance(&tx, &request.name, &space)?;
            let now = hydrant_auth::now_secs();
            let guid = password::new_guid();
            let ctx_json = context(&tx, &space.guid, &space.name, &request.name);
            let mut body = json!({
                "service_id": plan.offering_id,
                "plan_id": plan.id,
                "organization_guid": ctx_json["organization_guid"],
                "space_guid": space.guid,
                "context": ctx_json,
            });
            if let Some(p) = &request.parameters {
                body["parameters"] = p.clone();
            }
            if !plan.maintenance_info.is_null() {
                body["maintenance_info"] =
                    json!({ "version": plan.maintenance_info.get("version") });
            }
            let instance = InstanceRow {
                guid: guid.clone(),
                name: request.name.clone(),
                space_guid: space.guid.clone(),
                space_name: space.name.clone(),
                kind: ServiceInstanceType::Managed,
                plan: Some(plan.clone()),
                tags: request.tags.clone(),
                credentials: Value::Null,
                syslog_drain_url: None,
                route_service_url: None,
                dashboard_url: None,
                op: create_op("in progress", now),
                created_at: now,
            };
            store::insert_instance(&tx, &instance, Some(&plan.guid))?;
            let spec = JobSpec {
                body: Some(body),
                ..plan_job(&ctx2, &plan, &guid, &space.guid, &caller)
            };
            let job = jobs::new_job("service_instance.create", &guid, spec);
            store::insert_job(&tx, &job)?;
            let view = store::instance_view(&tx, &instance)?;
            tx.commit()?;
            Ok((view, job.view()))
        })
        .await?;
    ctx.services.wake.notify_one();
    Ok(accepted(
        &job,
        ServiceInstanceAnswer {
            instance,
            job: Some(job.clone()),
        },
    ))
}

async fn create_upsi(
    ctx: Arc<Ctx>,
    caller: Caller,
    request: CreateServiceInstance,
) -> Result<Response, ApiError> {
    let credentials = request.credentials.clone().unwrap_or_else(|| json!({}));
    if !credentials.is_object() || credentials.to_string().len() > MAX_PARAMETERS_BYTES {
        return Err(ApiError::unprocessable(format!(
            "credentials (-p) must be a JSON object of at most {MAX_PARAMETERS_BYTES} bytes"
        )));
    }
    check_upsi_urls(
        &ctx,
        request.syslog_drain_url.as_deref(),
        request.route_service_url.as_deref(),
    )
    .await?;
    let instance = ctx
        .db
        .run(move |c| {
            let tx = c.transaction()?;
            let space = target_space(&tx, &caller, request.space.as_deref())?;
            check_new_instance(&tx, &request.name, &space)?;
            let now = hydrant_auth::now_secs();
            let instance = InstanceRow {
                guid: password::new_guid(),
                name: request.name.clone(),
                space_guid: space.guid.clone(),
                space_name: space.name,
                kind: ServiceInstanceType::UserProvided,
                plan: None,
                tags: request.tags.clone(),
                credentials,
                syslog_drain_url: request.syslog_drain_url.filter(|u| !u.is_empty()),
                route_service_url: request.route_service_url,
                dashboard_url: None,
                op: create_op("succeeded", now),
                created_at: now,
            };
            store::insert_instance(&tx, &instance, None)?;
            let view = store::instance_view(&tx, &instance)?;
            tx.commit()?;
            Ok(view)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ServiceInstanceAnswer {
            instance,
            job: None,
        }),
    )
        .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct InstanceQuery {
    names: Option<String>,
    space: Option<String>,
}

async fn list_instances(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Query(query): Query<InstanceQuery>,
) -> Result<Json<List<ServiceInstance>>, ApiError> {
    let views = ctx
        .db
        .run(move |c| {
            let space = match &query.space {
                Some(s) => Some(
                    db::find_space(c, s)?
                        .ok_or_else(|| ApiError::not_found("Space"))?
                        .guid,
                ),
                None => None,
            };
            let mut out = Vec::new();
            for i in store::instances(c, query.names.as_deref(), space.as_deref())? {
                if space_access(c, &caller, &i.space_guid)?.is_some() {
                    out.push(store::instance_view(c, &i)?);
                }
            }
            Ok(out)
        })
        .await?;
    Ok(Json(List::new(views)))
}

async fn get_instance(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<ServiceInstance>, ApiError> {
    super::json(&ctx, move |c| {
        let i = instance_for(c, &caller, &guid, Access::Read)?;
        Ok(store::instance_view(c, &i)?)
    })
    .await
}

async fn update_instance(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
    Body(update): Body<UpdateServiceInstance>,
) -> Result<Response, ApiError> {
    if let Some(tags) = &update.tags {
        check_tags(tags)?;
    }
    check_upsi_urls(&ctx, update.syslog_drain_url.as_deref(), None).await?;
    change_with_job(ctx, move |tx, ctx2| {
        let instance = idle_instance_for(tx, &caller, &guid)?;
        let job = match &instance.plan {
            None => {
                if update.plan.is_some() || update.parameters.is_some() {
                    return Err(ApiError::unprocessable(
                        "a user-provided instance has no plan or parameters; change its \
                         credentials (-p), tags or syslog drain instead",
                    ));
                }
                let credentials = update
                    .credentials
                    .clone()
                    .unwrap_or_else(|| instance.credentials.clone());
                if !(credentials.is_object() || credentials.is_null()) {
                    return Err(ApiError::unprocessable("credentials must be a JSON object"));
                }
                let drain = match &update.syslog_drain_url {
                    Some(d) if d.is_empty() => None,
                    Some(d) => Some(d.clone()),
                    None => instance.syslog_drain_url.clone(),
                };
                let tags = update.tags.unwrap_or(instance.tags.clone());
                store::set_instance_fields(
                    tx,
                    &instance.guid,
                    None,
                    &tags,
                    &credentials,
                    drain.as_deref(),
                )?;
                for b in store::bindings(tx, Some(&instance.guid), None, None)? {
                    if let Some(app) = &b.app_guid {
                        store::set_binding_drain(tx, &b.guid, app, drain.as_deref())?;
                    }
                }
                store::set_op(
                    tx,
                    store::OpRow::Instance,
                    &instance.guid,
                    "update",
                    "succeeded",
                    None,
                )?;
                None
            }
            Some(current) => {
                if update.credentials.is_some() || update.syslog_drain_url.is_some() {
                    return Err(ApiError::unprocessable(
                        "credentials and syslog drains are for user-provided instances; a \
                         managed instance changes its plan (-p) or parameters (-c)",
                    ));
                }
                let new_plan = match &update.plan {
                    Some(name) if name != &current.name => {
                        if !current.plan_updateable {
                            return Err(ApiError::unprocessable(format!(
                                "the plan of {:?} cannot be changed: {:?} of {:?} is not \
                                 plan_updateable",
                                instance.name, current.name, current.offering_name
                            )));
                        }
                        let plan = find_plan(
                            tx,
                            &current.offering_name,
                            name,
                            Some(&current.broker_guid),
                        )?;
                        if !(plan.public || caller.admin) {
                            return Err(ApiError::unprocessable(format!(
                                "the plan {name:?} is not available to you"
                            )));
                        }
                        Some(plan)
                    }
                    _ => None,
                };
                let target = new_plan.as_ref().unwrap_or(current);
                check_parameters(
                    update.parameters.as_ref(),
                    target,
                    "service_instance",
                    "update",
                )
                .or_else(|e| {
                    if update.parameters.is_none() {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
                if new_plan.is_none() && update.parameters.is_none() {
                    let tags = update.tags.unwrap_or(instance.tags);
                    store::set_instance_fields(
                        tx,
                        &instance.guid,
                        None,
                        &tags,
                        &Value::Null,
                        None,
                    )?;
                    None
                } else {
                    let mut body = json!({
                        "service_id": current.offering_id,
                        "plan_id": target.id,
                        "context": context(
                            tx, &instance.space_guid, &instance.space_name, &instance.name),
                        "previous_values": {
                            "plan_id": current.id,
                            "service_id": current.offering_id,
                            "space_id": instance.space_guid,
                        },
                    });
                    if let Some(p) = &update.parameters {
                        body["parameters"] = p.clone();
                    }
                    // The broker knows the instance by its current plan; the poll limit is
                    // the plan it moves to.
                    let spec = JobSpec {
                        new_plan_guid: new_plan.as_ref().map(|p| p.guid.clone()),
                        body: Some(body),
                        max_poll_secs: max_poll_secs(ctx2, target),
                        tags: update.tags.clone(),
                        ..plan_job(ctx2, current, &instance.guid, &instance.space_guid, &caller)
                    };
                    Some(start_job(
                        tx,
                        "service_instance.update",
                        "update",
                        spec,
                        None,
                    )?)
                }
            }
        };
        Ok(job)
    })
    .await
}

/// Runs `change` in one transaction and answers with the broker job it started (202, the
/// runner woken) or 200 when it needed none.
async fn change_with_job<F>(ctx: Arc<Ctx>, change: F) -> Result<Response, ApiError>
where
    F: FnOnce(&crate::sql::Transaction<'_>, &Ctx) -> Result<Option<Job>, ApiError> + Send + 'static,
{
    let ctx2 = ctx.clone();
    let job = ctx
        .db
        .run(move |c| {
            let tx = c.transaction()?;
            let job = change(&tx, &ctx2)?;
            tx.commit()?;
            Ok(job)
        })
        .await?;
    Ok(job_answer(&ctx, job))
}

fn job_answer(ctx: &Ctx, job: Option<Job>) -> Response {
    match job {
        Some(job) => {
            ctx.services.wake.notify_one();
            accepted(
                &job,
                JobAnswer {
                    job: Some(job.clone()),
                },
            )
        }
        None => (StatusCode::OK, Json(JobAnswer { job: None })).into_response(),
    }
}

async fn delete_instance(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Response, ApiError> {
    change_with_job(ctx, move |tx, ctx2| {
        let instance = idle_instance_for(tx, &caller, &guid)?;
        let bindings = store::bindings(tx, Some(&instance.guid), None, None)?;
        if !bindings.is_empty() {
            let apps = bindings
                .iter()
                .filter(|b| b.kind == BindingType::App)
                .count();
            let keys = bindings.len() - apps;
            return Err(ApiError::unprocessable(format!(
                "{:?} still has {apps} app binding(s) and {keys} service key(s); remove \
                 them first (`hydrant unbind-service APP {0}`, \
                 `hydrant delete-service-key {0} KEY`)",
                instance.name
            )));
        }
        delete_now_or_by_job(
            tx,
            &instance,
            "service_instance.delete",
            || store::delete_instance(tx, &instance.guid),
            |plan| plan_job(ctx2, plan, &instance.guid, &instance.space_guid, &caller),
        )
    })
    .await
}

// === bindings and keys ===

async fn create_binding(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Body(request): Body<CreateServiceBinding>,
) -> Result<Response, ApiError> {
    if let Some(name) = &request.name
        && let Some(problem) = name_problem(name)
    {
        return Err(ApiError::unprocessable(format!(
            "binding name {name:?}: {problem}"
        )));
    }
    let ctx2 = ctx.clone();
    let (binding, job) = ctx
        .db
        .run(move |c| {
            let tx = c.transaction()?;
            let instance = instance_for(&tx, &caller, &request.service_instance, Access::Write)?;
            let app = match (request.kind, &request.app) {
                (BindingType::App, Some(app)) => {
                    let app = app_for(&tx, &caller, app, Access::Write)?;
                    if app.space_guid != instance.space_guid {
                        return Err(ApiError::unprocessable(format!(
                            "the app {:?} is in space {:?} and the service instance {:?} in \
                             space {:?}; bind within one space",
                            app.name, app.space_name, instance.name, instance.space_name
                        )));
                    }
                    Some(app)
                }
                (BindingType::App, None) => {
                    return Err(ApiError::unprocessable("an app binding needs an app"));
                }
                (BindingType::Key, _) => {
                    if request.name.is_none() {
                        return Err(ApiError::unprocessable("a service key needs a name"));
                    }
                    None
                }
            };
            let existing = store::bindings(&tx, Some(&instance.guid), None, Some(request.kind))?;
            if let Some(app) = &app
                && existing
                    .iter()
                    .any(|b| b.app_guid.as_deref() == Some(&app.guid))
            {
                return Err(ApiError::unprocessable(format!(
                    "the app {:?} is already bound to {:?}",
                    app.name, instance.name
                )));
            }
            if request.kind == BindingType::Key && existing.iter().any(|b| b.name == request.name) {
                return Err(ApiError::unprocessable(format!(
                    "{:?} already has a service key called {:?}",
                    instance.name,
                    request.name.unwrap_or_default()
                )));
            }
            let now = hydrant_auth::now_secs();
            let mut row = BindingRow {
                guid: password::new_guid(),
                kind: request.kind,
                instance_guid: instance.guid.clone(),
                instance_name: instance.name.clone(),
                app_guid: app.as_ref().map(|a| a.guid.clone()),
                app_name: app.as_ref().map(|a| a.name.clone()),
                name: request.name.clone(),
                credentials: None,
                syslog_drain_url: None,
                volume_mounts: json!([]),
                op: create_op("in progress", now),
                created_at: now,
            };
            let job = match &instance.plan {
                None => {
                    if request.parameters.is_some() {
                        return Err(ApiError::unprocessable(
                            "a user-provided instance takes no binding parameters",
                        ));
                    }
                    if request.kind == BindingType::Key {
                        return Err(ApiError::unprocessable(
                            "service keys are for managed instances; a user-provided \
                             instance's credentials are what you gave it",
                        ));
                    }
                    // The app sees the instance's own credentials (read at each start).
                    row.credentials = Some(json!({}));
                    row.op.state = "succeeded".to_owned();
                    store::insert_binding(&tx, &row)?;
                    if let Some(app) = &app {
                        // Dropping the transaction undoes the insert.
                        if let Some(problem) = crate::services::vcap::size_problem(&tx, &app.guid)?
                        {
                            return Err(ApiError::unprocessable(problem));
                        }
                        store::set_binding_drain(
                            &tx,
                            &row.guid,
                            &app.guid,
                            instance.syslog_drain_url.as_deref(),
                        )?;
                    }
                    None
                }
                Some(plan) => {
                    if instance.busy()
                        || instance.op.state == "failed" && instance.op.kind == "create"
                    {
                        return Err(ApiError::unprocessable(format!(
                            "{:?} is not ready to bind: its {} is {}",
                            instance.name, instance.op.kind, instance.op.state
                        )));
                    }
                    if !plan.bindable {
                        return Err(ApiError::unprocessable(format!(
                            "the plan {:?} of {:?} is not bindable",
                            plan.name, plan.offering_name
                        )));
                    }
                    check_parameters(
                        request.parameters.as_ref(),
                        plan,
                        "service_binding",
                        "create",
                    )?;
                    let mut body = json!({
                        "service_id": plan.offering_id,
                        "plan_id": plan.id,
                        "context": context(
                            &tx, &instance.space_guid, &instance.space_name, &instance.name),
                    });
                    match &app {
                        Some(app) => {
                            body["app_guid"] = json!(app.guid);
                            body["bind_resource"] =
                                json!({"app_guid": app.guid, "space_guid": app.space_guid});
                        }
                        None => {
                            body["bind_resource"] =
                                json!({"credential_client_id": "cc_service_key_client"});
                        }
                    }
                    if let Some(p) = &request.parameters {
                        body["parameters"] = p.clone();
                    }
                    store::insert_binding(&tx, &row)?;
                    let spec = JobSpec {
                        binding_id: Some(row.guid.clone()),
                        app_guid: row.app_guid.clone(),
                        body: Some(body),
                        ..plan_job(&ctx2, plan, &instance.guid, &instance.space_guid, &caller)
                    };
                    let job = jobs::new_job("service_binding.create", &row.guid, spec);
                    store::insert_job(&tx, &job)?;
                    Some(job.view())
                }
            };
            tx.commit()?;
            Ok((row.view(), job))
        })
        .await?;
    Ok(match job {
        Some(job) => {
            ctx.services.wake.notify_one();
            accepted(
                &job,
                ServiceBindingAnswer {
                    binding,
                    job: Some(job.clone()),
                },
            )
        }
        None => (
            StatusCode::CREATED,
            Json(ServiceBindingAnswer { binding, job: None }),
        )
            .into_response(),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BindingQuery {
    service_instance: Option<String>,
    app: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

async fn list_bindings(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Query(query): Query<BindingQuery>,
) -> Result<Json<List<ServiceBinding>>, ApiError> {
    let kind = match query.kind.as_deref() {
        None => None,
        Some("app") => Some(BindingType::App),
        Some("key") => Some(BindingType::Key),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "type must be app or key, not {other:?}"
            )));
        }
    };
    let views = ctx
        .db
        .run(move |c| {
            let mut out = Vec::new();
            for b in store::bindings(
                c,
                query.service_instance.as_deref(),
                query.app.as_deref(),
                kind,
            )? {
                if instance_for(c, &caller, &b.instance_guid, Access::Read).is_ok() {
                    out.push(b.view());
                }
            }
            Ok(out)
        })
        .await?;
    Ok(Json(List::new(views)))
}

fn binding_for(
    c: &Connection,
    caller: &Caller,
    guid: &str,
    access: Access,
) -> Result<(BindingRow, InstanceRow), ApiError> {
    let binding = store::binding(c, guid)?
        .ok_or_else(|| ApiError::not_found("Service credential binding"))?;
    let instance = instance_for(c, caller, &binding.instance_guid, access)
        .map_err(|_| ApiError::not_found("Service credential binding"))?;
    Ok((binding, instance))
}

async fn get_binding(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<ServiceBinding>, ApiError> {
    super::json(&ctx, move |c| {
        Ok(binding_for(c, &caller, &guid, Access::Read)?.0.view())
    })
    .await
}

async fn binding_details(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<ServiceBindingDetails>, ApiError> {
    super::json(&ctx, move |c| {
        // Credentials are for the space's developers, not its auditors.
        let (b, instance) = binding_for(c, &caller, &guid, Access::Write)?;
        let credentials = match instance.kind {
            ServiceInstanceType::UserProvided => instance.credentials,
            ServiceInstanceType::Managed => b.credentials.ok_or_else(|| {
                ApiError::unprocessable(format!(
                    "the broker has not handed out this binding's credentials yet (its \
                     create is {})",
                    b.op.state
                ))
            })?,
        };
        Ok(ServiceBindingDetails {
            credentials,
            syslog_drain_url: b.syslog_drain_url.or(instance.syslog_drain_url),
            volume_mounts: b.volume_mounts.as_array().cloned().unwrap_or_default(),
        })
    })
    .await
}

async fn delete_binding(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Response, ApiError> {
    change_with_job(ctx, move |tx, ctx2| {
        let (binding, instance) = binding_for(tx, &caller, &guid, Access::Write)?;
        if binding.busy() {
            return Err(conflict(
                "an operation is in progress on this binding; wait for it to finish",
            ));
        }
        delete_now_or_by_job(
            tx,
            &instance,
            "service_binding.delete",
            || store::delete_binding(tx, &binding.guid),
            |plan| JobSpec {
                binding_id: Some(binding.guid.clone()),
                ..plan_job(ctx2, plan, &instance.guid, &instance.space_guid, &caller)
            },
        )
    })
    .await
}

async fn get_job(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<Job>, ApiError> {
    super::json(&ctx, move |c| {
        let job = store::job(c, &guid)?.ok_or_else(|| ApiError::not_found("Job"))?;
        let visible = match &job.spec.space_guid {
            Some(space) => space_access(c, &caller, space)?.is_some(),
            None => caller.admin,
        };
        if !visible {
            return Err(ApiError::not_found("Job"));
        }
        Ok(job.view())
    })
    .await
}

/// A token for the firehose edge that reads one service instance's own logs and gauges (its
/// source id is its guid), for whoever may read the instance: `hydrant logs INSTANCE`.
async fn instance_log_token(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<LogToken>, ApiError> {
    let username = caller.username.clone();
    let instance = ctx
        .db
        .run(move |c| instance_for(c, &caller, &guid, Access::Read))
        .await?;
    Ok(Json(super::apps::source_log_token(
        &ctx,
        username,
        instance.guid,
    )))
}
