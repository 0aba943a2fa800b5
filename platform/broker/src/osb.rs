//! The Open Service Broker API v2.17 server: the ten routes, basic auth, the version header,
//! parameter checks against the plan's schema, and the spec's status codes — 200/201/202 for
//! success, 400 for a malformed request, unknown plan or bad parameter, 401, 404, 409 for the
//! same id with other attributes, 410 for deleting what is gone, 412 for a missing or old
//! `X-Broker-API-Version`, 422 `AsyncRequired` / `ConcurrencyError` and 422 with a reason for
//! an unsafe plan change.
//!
//! Flow: request → [`guard`] (401 / 412, echoes `X-Broker-API-Request-Identity`) → handler →
//! store row first, then the backend ([`crate::backend`]) → reply; every reply is counted as
//! `broker.operations{operation, status}` with its latency in `broker.operation_seconds`.
//!
//! Invariants: a 4xx leaves every resource as it was (checks come before any change); ids are
//! checked by [`valid_id`] before they name anything on a server; one mutation per instance or
//! binding at a time (a second gets 422 `ConcurrencyError`); a failed synchronous provision or
//! bind removes what it made before answering 500.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use hydrant_emitter::Registry;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::backend::{self, Ctx};
use crate::catalog::{self, Offering, Plan};
use crate::store::{Binding, Instance, State as InstanceState};
use crate::{Error, node, schema};

/// The oldest OSBAPI version served (Cloud Foundry's controller still sends 2.15).
pub const MIN_VERSION: (u32, u32) = (2, 13);

/// The broker's shared state behind every route.
#[derive(Debug)]
pub struct Broker {
    /// Backends, nodes and the store.
    pub ctx: Arc<Ctx>,
    /// Offerings that can run here (in the catalog).
    pub available: Vec<&'static Offering>,
    username: String,
    password: String,
    registry: Registry,
    busy: Mutex<HashSet<String>>,
}

impl Broker {
    /// A broker over `ctx`, answering to `username`/`password`.
    #[must_use]
    pub fn new(
        ctx: Arc<Ctx>,
        available: Vec<&'static Offering>,
        username: String,
        password: String,
        registry: Registry,
    ) -> Self {
        Self {
            ctx,
            available,
            username,
            password,
            registry,
            busy: Mutex::new(HashSet::new()),
        }
    }

    /// Instance `id`, when it exists, is of offering `o` and is ready to update or bind: 404,
    /// 400 or 422 (`ConcurrencyError`) otherwise, as the OSB spec answers each.
    fn ready_instance(&self, id: &str, o: &Offering) -> Result<Instance, Reply> {
        let Some(i) = self.ctx.store.instance(id).map_err(|e| Reply::failed(&e))? else {
            return Err(Reply::described(
                StatusCode::NOT_FOUND,
                format!("instance {id} does not exist"),
            ));
        };
        if i.offering != o.name {
            return Err(Reply::bad(format!(
                "instance {id} is a {} instance, not {}",
                i.offering, o.name
            )));
        }
        if i.state != InstanceState::Ready {
            return Err(Reply::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "ConcurrencyError",
                "the instance is not ready (still provisioning, or failed)",
            ));
        }
        Ok(i)
    }

    fn offering(&self, service_id: &str) -> Result<&'static Offering, Reply> {
        let Some(o) = catalog::offering_by_id(service_id) else {
            return Err(Reply::bad(format!(
                "service_id {service_id:?} is not in this broker's catalog"
            )));
        };
        if !self.available.contains(&o) {
            return Err(Reply::bad(format!(
                "offering {} is not available on this broker (its server is not installed)",
                o.name
            )));
        }
        Ok(o)
    }

    /// Marks `keys` busy for the guard's life, or `ConcurrencyError` when one already is.
    fn claim(self: &Arc<Self>, keys: &[&str]) -> Result<Claim, Reply> {
        let mut busy = hydrant_runtime::lock(&self.busy);
        if keys.iter().any(|k| busy.contains(*k)) {
            return Err(Reply::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "ConcurrencyError",
                "another operation on this instance or binding is in progress; retry when it ends",
            ));
        }
        for k in keys {
            busy.insert((*k).to_owned());
        }
        Ok(Claim {
            broker: Arc::clone(self),
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        })
    }
}

/// Held while an operation runs on some ids.
#[derive(Debug)]
struct Claim {
    broker: Arc<Broker>,
    keys: Vec<String>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut busy = hydrant_runtime::lock(&self.broker.busy);
        for k in &self.keys {
            busy.remove(k);
        }
    }
}

/// An OSBAPI answer: a status and a JSON body.
#[derive(Debug)]
pub struct Reply {
    status: StatusCode,
    body: Value,
    retry_after: bool,
}

impl Reply {
    fn ok(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            body,
            retry_after: false,
        }
    }

    fn bad(description: impl Into<String>) -> Self {
        Self::ok(
            StatusCode::BAD_REQUEST,
            json!({"error": "BadRequest", "description": description.into()}),
        )
    }

    fn error(status: StatusCode, error: &str, description: impl Into<String>) -> Self {
        Self::ok(
            status,
            json!({"error": error, "description": description.into()}),
        )
    }

    fn described(status: StatusCode, description: impl Into<String>) -> Self {
        Self::ok(status, json!({"description": description.into()}))
    }

    fn failed(e: &Error) -> Self {
        tracing::warn!("broker operation failed: {e}");
        Self::described(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if self.retry_after {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("2"));
        }
        response
    }
}

/// True for ids the broker accepts: 1–60 letters, digits and `-` (GUIDs and the like), so an
/// id can name a database, role, vhost or ACL user without quoting tricks.
#[must_use]
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 60 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn check_id(what: &str, id: &str) -> Result<(), Reply> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(Reply::bad(format!(
            "{what} {id:?} must be 1 to 60 letters, digits and '-' (a GUID)"
        )))
    }
}

/// The router: OSBAPI routes behind [`guard`].
pub fn router(broker: Arc<Broker>) -> axum::Router {
    let instance = "/v2/service_instances/{instance_id}";
    axum::Router::new()
        .route("/v2/catalog", get(catalog_route))
        .route(
            instance,
            get(fetch_instance)
                .put(provision)
                .patch(update)
                .delete(deprovision),
        )
        .route(
            &format!("{instance}/last_operation"),
            get(instance_last_operation),
        )
        .route(
            &format!("{instance}/service_bindings/{{binding_id}}"),
            get(fetch_binding).put(bind).delete(unbind),
        )
        .route(
            &format!("{instance}/service_bindings/{{binding_id}}/last_operation"),
            get(binding_last_operation),
        )
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&broker),
            guard,
        ))
        .with_state(broker)
}

/// Basic auth (401), the version header (412), the request identity echoed, and the count.
async fn guard(State(broker): State<Arc<Broker>>, request: Request, next: Next) -> Response {
    let began = Instant::now();
    let operation = operation_name(request.method().as_str(), request.uri().path());
    let identity = request
        .headers()
        .get("x-broker-api-request-identity")
        .cloned();
    let mut response = match check_headers(&broker, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(reply) => reply.into_response(),
    };
    if let Some(identity) = identity {
        response
            .headers_mut()
            .insert("x-broker-api-request-identity", identity);
    }
    let status = response.status().as_u16().to_string();
    broker
        .registry
        .counter(
            "broker.operations",
            "OSBAPI requests answered, by operation and status",
            &[("operation", operation), ("status", &status)],
        )
        .inc();
    broker
        .registry
        .histogram(
            "broker.operation_seconds",
            "How long OSBAPI requests took, by operation",
            &[0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            &[("operation", operation)],
        )
        .observe(began.elapsed());
    response
}

fn operation_name(method: &str, path: &str) -> &'static str {
    let binding = path.contains("/service_bindings/");
    let last = path.ends_with("/last_operation");
    match (method, binding, last) {
        _ if path == "/v2/catalog" => "catalog",
        (_, false, true) => "instance_last_operation",
        (_, true, true) => "binding_last_operation",
        ("PUT", false, _) => "provision",
        ("PATCH", false, _) => "update",
        ("DELETE", false, _) => "deprovision",
        ("GET", false, _) => "fetch_instance",
        ("PUT", true, _) => "bind",
        ("DELETE", true, _) => "unbind",
        ("GET", true, _) => "fetch_binding",
        _ => "other",
    }
}

/// Whether `headers` carry HTTP basic auth for exactly `username`/`password` (compared in
/// constant time). The OSB routes and the admin listener's `/v1/*` both ask this.
pub(crate) fn basic_auth_ok(headers: &HeaderMap, username: &str, password: &str) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .is_some_and(|pair| {
            let (u, p) = pair.split_once(':').unwrap_or((&pair, ""));
            // Compare everything, always, so timing says nothing about where a guess went wrong.
            let user_ok = constant_eq(u.as_bytes(), username.as_bytes());
            let pass_ok = constant_eq(p.as_bytes(), password.as_bytes());
            user_ok & pass_ok
        })
}

fn check_headers(broker: &Broker, headers: &HeaderMap) -> Result<(), Reply> {
    if !basic_auth_ok(headers, &broker.username, &broker.password) {
        return Err(Reply::described(
            StatusCode::UNAUTHORIZED,
            "basic authentication failed: use the broker's username and password",
        ));
    }
    let version = headers
        .get("x-broker-api-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let parsed = version
        .split_once('.')
        .and_then(|(a, b)| Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?)));
    match parsed {
        Some((2, minor)) if minor >= MIN_VERSION.1 => Ok(()),
        _ => Err(Reply::described(
            StatusCode::PRECONDITION_FAILED,
            format!(
                "X-Broker-API-Version {version:?} is not supported: send 2.{} to 2.17",
                MIN_VERSION.1
            ),
        )),
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

async fn catalog_route(State(broker): State<Arc<Broker>>) -> Reply {
    Reply::ok(StatusCode::OK, catalog::body(&broker.available))
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Reply> {
    serde_json::from_slice(body)
        .map_err(|e| Reply::bad(format!("the request body is not valid: {e}")))
}

fn accepts_incomplete(q: &HashMap<String, String>) -> bool {
    q.get("accepts_incomplete").map(String::as_str) == Some("true")
}

fn plan_of(o: &Offering, plan_id: &str) -> Result<&'static Plan, Reply> {
    let found = catalog::OFFERINGS
        .iter()
        .find(|x| x.id == o.id)
        .and_then(|x| x.plan(plan_id));
    found.ok_or_else(|| {
        let names: Vec<String> = o
            .plans
            .iter()
            .map(|p| format!("{} ({})", p.name, p.id))
            .collect();
        Reply::bad(format!(
            "plan_id {plan_id:?} is not a plan of {}; its plans are {}",
            o.name,
            names.join(", ")
        ))
    })
}

fn parameters(v: Option<Value>) -> Value {
    match v {
        Some(Value::Null) | None => json!({}),
        Some(v) => v,
    }
}

fn check_parameters(schema: &Value, params: &Value) -> Result<(), Reply> {
    schema::check(schema, params, "parameters").map_err(Reply::bad)
}

#[derive(Debug, Deserialize)]
struct ProvisionBody {
    service_id: String,
    plan_id: String,
    #[serde(default)]
    parameters: Option<Value>,
}

async fn provision(
    State(broker): State<Arc<Broker>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Reply {
    match provision_inner(&broker, &id, &q, &body).await {
        Ok(r) | Err(r) => r,
    }
}

async fn provision_inner(
    broker: &Arc<Broker>,
    id: &str,
    q: &HashMap<String, String>,
    body: &Bytes,
) -> Result<Reply, Reply> {
    check_id("instance_id", id)?;
    let req: ProvisionBody = parse(body)?;
    let o = broker.offering(&req.service_id)?;
    let plan = plan_of(o, &req.plan_id)?;
    let params = parameters(req.parameters);
    check_parameters(&catalog::instance_schema(o), &params)?;
    let incomplete = accepts_incomplete(q);
    if o.async_only && !incomplete {
        return Err(Reply::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "AsyncRequired",
            format!(
                "{} instances are provisioned asynchronously; send accepts_incomplete=true",
                o.name
            ),
        ));
    }
    let existing = broker
        .ctx
        .store
        .instance(id)
        .map_err(|e| Reply::failed(&e))?;
    if let Some(i) = existing {
        let same = i.offering == o.name && i.plan_id == plan.id && i.parameters == params;
        if !same {
            return Err(Reply::described(
                StatusCode::CONFLICT,
                format!("instance {id} already exists with other attributes"),
            ));
        }
        return Ok(match i.state {
            InstanceState::Ready => Reply::ok(StatusCode::OK, json!({})),
            InstanceState::Creating if incomplete => {
                Reply::ok(StatusCode::ACCEPTED, json!({"operation": "provision"}))
            }
            InstanceState::Creating => Reply::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "ConcurrencyError",
                "the instance is still being provisioned",
            ),
            InstanceState::Failed => Reply::described(
                StatusCode::CONFLICT,
                format!(
                    "instance {id} exists and failed ({}); deprovision it first",
                    i.description
                ),
            ),
        });
    }
    let claim = broker.claim(&[id])?;
    let (port, secret) = if o.name == "redis" {
        let ports = broker.ctx.take_ports(1).map_err(|e| Reply::failed(&e))?;
        (ports.first().copied().unwrap_or(0), node::secret(32))
    } else {
        (0, String::new())
    };
    let instance = Instance {
        id: id.to_owned(),
        offering: o.name.to_owned(),
        plan_id: plan.id.to_owned(),
        parameters: params,
        state: InstanceState::Creating,
        description: "provisioning".to_owned(),
        port,
        secret,
    };
    let put = broker.ctx.store.put_instance(&instance);
    broker.ctx.release_ports(&[port]);
    put.map_err(|e| Reply::failed(&e))?;
    if incomplete {
        let broker = Arc::clone(broker);
        tokio::spawn(async move {
            let _claim = claim;
            let mut done = instance.clone();
            match backend::provision(&broker.ctx, o, plan, &instance).await {
                Ok(()) => {
                    done.state = InstanceState::Ready;
                    done.description = "ready".to_owned();
                }
                Err(e) => {
                    tracing::warn!(instance = %instance.id, "asynchronous provision failed: {e}");
                    done.state = InstanceState::Failed;
                    done.description = e.to_string();
                }
            }
            if let Err(e) = broker.ctx.store.put_instance(&done) {
                tracing::warn!(instance = %instance.id, "cannot record the provision's outcome: {e}");
            }
        });
        return Ok(Reply::ok(
            StatusCode::ACCEPTED,
            json!({"operation": "provision"}),
        ));
    }
    let result = backend::provision(&broker.ctx, o, plan, &instance).await;
    drop(claim);
    match result {
        Ok(()) => {
            let done = Instance {
                state: InstanceState::Ready,
                description: "ready".to_owned(),
                ..instance
            };
            broker
                .ctx
                .store
                .put_instance(&done)
                .map_err(|e| Reply::failed(&e))?;
            Ok(Reply::ok(StatusCode::CREATED, json!({})))
        }
        Err(e) => {
            // Leave nothing behind: what was made goes, then the row.
            let _ = backend::deprovision(&broker.ctx, o, &instance, &[]).await;
            let _ = broker.ctx.store.delete_instance(id);
            Err(Reply::failed(&e))
        }
    }
}

#[derive(Debug, Deserialize)]
struct UpdateBody {
    service_id: String,
    #[serde(default)]
    plan_id: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
}

async fn update(State(broker): State<Arc<Broker>>, Path(id): Path<String>, body: Bytes) -> Reply {
    match update_inner(&broker, &id, &body).await {
        Ok(r) | Err(r) => r,
    }
}

async fn update_inner(broker: &Arc<Broker>, id: &str, body: &Bytes) -> Result<Reply, Reply> {
    check_id("instance_id", id)?;
    let req: UpdateBody = parse(body)?;
    let o = broker.offering(&req.service_id)?;
    let i = broker.ready_instance(id, o)?;
    let to = plan_of(o, req.plan_id.as_deref().unwrap_or(&i.plan_id))?;
    let params = match req.parameters {
        Some(p) => {
            let p = parameters(Some(p));
            check_parameters(&catalog::instance_schema(o), &p)?;
            p
        }
        None => i.parameters.clone(),
    };
    if to.id == i.plan_id && params == i.parameters {
        return Ok(Reply::ok(StatusCode::OK, json!({})));
    }
    let _claim = broker.claim(&[id])?;
    let updated = Instance {
        plan_id: to.id.to_owned(),
        parameters: params,
        ..i
    };
    match backend::resize(&broker.ctx, o, &updated, to).await {
        Ok(Ok(())) => {
            broker
                .ctx
                .store
                .put_instance(&updated)
                .map_err(|e| Reply::failed(&e))?;
            Ok(Reply::ok(StatusCode::OK, json!({})))
        }
        Ok(Err(reason)) => Err(Reply::described(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("cannot move to the {} plan: {reason}", to.name),
        )),
        Err(e) => Err(Reply::failed(&e)),
    }
}

fn require_ids(q: &HashMap<String, String>) -> Result<(), Reply> {
    if q.get("service_id").is_none_or(String::is_empty)
        || q.get("plan_id").is_none_or(String::is_empty)
    {
        return Err(Reply::bad(
            "the service_id and plan_id query parameters are required",
        ));
    }
    Ok(())
}

async fn deprovision(
    State(broker): State<Arc<Broker>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Reply {
    match deprovision_inner(&broker, &id, &q).await {
        Ok(r) | Err(r) => r,
    }
}

async fn deprovision_inner(
    broker: &Arc<Broker>,
    id: &str,
    q: &HashMap<String, String>,
) -> Result<Reply, Reply> {
    check_id("instance_id", id)?;
    require_ids(q)?;
    let Some(i) = broker
        .ctx
        .store
        .instance(id)
        .map_err(|e| Reply::failed(&e))?
    else {
        return Err(Reply::ok(StatusCode::GONE, json!({})));
    };
    let _claim = broker.claim(&[id])?;
    let o = catalog::offering(&i.offering).ok_or_else(|| Reply::bad("unknown offering"))?;
    let bindings = broker
        .ctx
        .store
        .bindings_of(id)
        .map_err(|e| Reply::failed(&e))?;
    backend::deprovision(&broker.ctx, o, &i, &bindings)
        .await
        .map_err(|e| Reply::failed(&e))?;
    broker
        .ctx
        .store
        .delete_instance(id)
        .map_err(|e| Reply::failed(&e))?;
    Ok(Reply::ok(StatusCode::OK, json!({})))
}

async fn fetch_instance(State(broker): State<Arc<Broker>>, Path(id): Path<String>) -> Reply {
    let found = broker.ctx.store.instance(&id);
    match found {
        Ok(Some(i)) if i.state == InstanceState::Ready => {
            let service_id = catalog::offering(&i.offering).map_or("", |o| o.id);
            Reply::ok(
                StatusCode::OK,
                json!({"service_id": service_id, "plan_id": i.plan_id, "parameters": i.parameters}),
            )
        }
        Ok(_) => Reply::described(
            StatusCode::NOT_FOUND,
            format!("instance {id} does not exist or is not ready"),
        ),
        Err(e) => Reply::failed(&e),
    }
}

async fn instance_last_operation(
    State(broker): State<Arc<Broker>>,
    Path(id): Path<String>,
) -> Reply {
    match broker.ctx.store.instance(&id) {
        Ok(Some(i)) => {
            let (state, description) = match i.state {
                InstanceState::Creating => ("in progress", "provisioning".to_owned()),
                InstanceState::Ready => ("succeeded", "ready".to_owned()),
                InstanceState::Failed => ("failed", i.description),
            };
            Reply {
                retry_after: i.state == InstanceState::Creating,
                ..Reply::ok(
                    StatusCode::OK,
                    json!({"state": state, "description": description}),
                )
            }
        }
        Ok(None) => Reply::described(
            StatusCode::NOT_FOUND,
            format!("instance {id} does not exist"),
        ),
        Err(e) => Reply::failed(&e),
    }
}

#[derive(Debug, Deserialize)]
struct BindBody {
    service_id: String,
    plan_id: String,
    #[serde(default)]
    parameters: Option<Value>,
}

async fn bind(
    State(broker): State<Arc<Broker>>,
    Path((iid, bid)): Path<(String, String)>,
    body: Bytes,
) -> Reply {
    match bind_inner(&broker, &iid, &bid, &body).await {
        Ok(r) | Err(r) => r,
    }
}

async fn bind_inner(
    broker: &Arc<Broker>,
    iid: &str,
    bid: &str,
    body: &Bytes,
) -> Result<Reply, Reply> {
    check_id("instance_id", iid)?;
    check_id("binding_id", bid)?;
    let req: BindBody = parse(body)?;
    let o = broker.offering(&req.service_id)?;
    let plan = plan_of(o, &req.plan_id)?;
    let i = broker.ready_instance(iid, o)?;
    let params = parameters(req.parameters);
    check_parameters(&catalog::binding_schema(o, plan), &params)?;
    let credentials =
        |b: &Binding| backend::credentials(&broker.ctx, o, &i, b).map_err(|e| Reply::failed(&e));
    if let Some(b) = broker
        .ctx
        .store
        .binding(bid)
        .map_err(|e| Reply::failed(&e))?
    {
        if b.instance_id == iid && b.parameters == params {
            return Ok(Reply::ok(
                StatusCode::OK,
                json!({"credentials": credentials(&b)?}),
            ));
        }
        return Err(Reply::described(
            StatusCode::CONFLICT,
            format!("binding {bid} already exists with other attributes"),
        ));
    }
    let _claim = broker.claim(&[iid, bid])?;
    let username = match o.name {
        "mysql" => backend::mysql::username(bid),
        "postgresql" => backend::postgres::username(bid),
        _ => bid.to_owned(),
    };
    let b = Binding {
        id: bid.to_owned(),
        instance_id: iid.to_owned(),
        plan_id: i.plan_id.clone(),
        parameters: params,
        username,
        password: node::secret(24),
    };
    let current_plan = catalog::offering(&i.offering)
        .and_then(|x| x.plan(&i.plan_id))
        .unwrap_or(plan);
    broker
        .ctx
        .store
        .put_binding(&b)
        .map_err(|e| Reply::failed(&e))?;
    let made = match backend::bind(&broker.ctx, o, current_plan, &i, &b).await {
        Ok(()) => crate::quota::after_bind(&broker.ctx, o, &i, &b).await,
        Err(e) => Err(e),
    };
    if let Err(e) = made {
        let _ = backend::unbind(&broker.ctx, o, current_plan, &i, &b).await;
        let _ = broker.ctx.store.delete_binding(bid);
        return Err(Reply::failed(&e));
    }
    Ok(Reply::ok(
        StatusCode::CREATED,
        json!({"credentials": credentials(&b)?}),
    ))
}

async fn unbind(
    State(broker): State<Arc<Broker>>,
    Path((iid, bid)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Reply {
    match unbind_inner(&broker, &iid, &bid, &q).await {
        Ok(r) | Err(r) => r,
    }
}

async fn unbind_inner(
    broker: &Arc<Broker>,
    iid: &str,
    bid: &str,
    q: &HashMap<String, String>,
) -> Result<Reply, Reply> {
    check_id("instance_id", iid)?;
    check_id("binding_id", bid)?;
    require_ids(q)?;
    let store = &broker.ctx.store;
    let binding = store.binding(bid).map_err(|e| Reply::failed(&e))?;
    let instance = store.instance(iid).map_err(|e| Reply::failed(&e))?;
    let (Some(b), Some(i)) = (binding, instance) else {
        return Err(Reply::ok(StatusCode::GONE, json!({})));
    };
    if b.instance_id != iid {
        return Err(Reply::ok(StatusCode::GONE, json!({})));
    }
    let _claim = broker.claim(&[iid, bid])?;
    let o = catalog::offering(&i.offering).ok_or_else(|| Reply::bad("unknown offering"))?;
    let plan = o
        .plan(&i.plan_id)
        .ok_or_else(|| Reply::bad("unknown plan"))?;
    backend::unbind(&broker.ctx, o, plan, &i, &b)
        .await
        .map_err(|e| Reply::failed(&e))?;
    store.delete_binding(bid).map_err(|e| Reply::failed(&e))?;
    Ok(Reply::ok(StatusCode::OK, json!({})))
}

async fn fetch_binding(
    State(broker): State<Arc<Broker>>,
    Path((iid, bid)): Path<(String, String)>,
) -> Reply {
    let store = &broker.ctx.store;
    let found = store
        .binding(&bid)
        .and_then(|b| Ok((b, store.instance(&iid)?)));
    match found {
        Ok((Some(b), Some(i))) if b.instance_id == iid => {
            let Some(o) = catalog::offering(&i.offering) else {
                return Reply::bad("unknown offering");
            };
            match backend::credentials(&broker.ctx, o, &i, &b) {
                Ok(c) => Reply::ok(
                    StatusCode::OK,
                    json!({"credentials": c, "parameters": b.parameters}),
                ),
                Err(e) => Reply::failed(&e),
            }
        }
        Ok(_) => Reply::described(
            StatusCode::NOT_FOUND,
            format!("binding {bid} does not exist"),
        ),
        Err(e) => Reply::failed(&e),
    }
}

async fn binding_last_operation(
    State(broker): State<Arc<Broker>>,
    Path((iid, bid)): Path<(String, String)>,
) -> Reply {
    // Bindings are made synchronously: one that exists has succeeded.
    match broker.ctx.store.binding(&bid) {
        Ok(Some(b)) if b.instance_id == iid => {
            Reply::ok(StatusCode::OK, json!({"state": "succeeded"}))
        }
        Ok(_) => Reply::described(
            StatusCode::NOT_FOUND,
            format!("binding {bid} does not exist"),
        ),
        Err(e) => Reply::failed(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_can_name_server_objects() {
        assert!(valid_id("6b0c1a5e-5b7e-4a53-9d3c-b7c1a6a2f0c1"));
        for bad in ["", "a'b", "a b", "a_b", "a;DROP", &"x".repeat(61)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn operations_are_named_by_route() {
        assert_eq!(
            operation_name("PUT", "/v2/service_instances/a"),
            "provision"
        );
        assert_eq!(
            operation_name("GET", "/v2/service_instances/a/last_operation"),
            "instance_last_operation"
        );
        assert_eq!(
            operation_name("DELETE", "/v2/service_instances/a/service_bindings/b"),
            "unbind"
        );
        assert_eq!(operation_name("GET", "/v2/catalog"), "catalog");
    }
}
