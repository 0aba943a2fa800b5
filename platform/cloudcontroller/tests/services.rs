//! The cloud controller as an OSBAPI v2.17 client, against a strict fake broker on loopback:
//! catalog validation and plan visibility, synchronous and asynchronous (polled, `Retry-After`)
//! provisioning, bindings reaching `VCAP_SERVICES` in the start message, 409/410/422 handling,
//! orphan mitigation after a 500 and after a timeout — the latter surviving a controller
//! restart — and parameters refused against the plan's schema before the broker is called.
//!
//! The fake broker checks every header and body field the spec requires on every request and
//! records each violation; every test ends by asserting there were none.
//!
//! One test binary (one link) for the service suites: `egress` (the endpoints a start message
//! opens) and `broker_tls` (`https://` brokers) are modules of it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

#[path = "services/broker_tls.rs"]
mod broker_tls;
#[path = "services/egress.rs"]
mod egress;
#[path = "common/services.rs"]
mod services_support;
#[path = "common/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use base64::Engine as _;
use hydrant_api::services::{
    CreateServiceBroker, CreateServiceInstance, Job, ServiceAccess, ServiceBroker,
    ServiceInstanceAnswer, ServiceInstanceType, UpdateServiceInstance,
};
use hydrant_api::{Client, SpaceRole};
use hydrant_testkit::wait_for;
use serde_json::{Value, json};

use services_support::{
    Cc, PASSWORD, RedisRig, USER, WAIT, bind_app, bindings_of, complete, complete_if,
    create_complete, create_key, failed, fast_services, finished, next_start,
    restart_and_next_start, start_cc, static_app, try_create, vcap_of,
};
use support::{FakeExecutor, app_in};

// === the fake broker ===

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    query: String,
    body: Value,
}

#[derive(Debug, Default)]
struct BrokerState {
    requests: Vec<Request>,
    violations: Vec<String>,
    /// Instances the broker holds: id → plan id.
    instances: BTreeMap<String, String>,
    bindings: BTreeMap<String, String>,
    /// Polls answered "in progress" so far, per instance.
    polls: BTreeMap<String, u32>,
    /// Answer every DELETE with 500 (an orphan mitigation keeps retrying).
    fail_deletes: bool,
    /// Keep asynchronous bindings "in progress".
    hold_bindings: bool,
    /// Credentials of asynchronous bindings, handed out by a fetch once they succeeded.
    async_bindings: BTreeMap<String, Value>,
    catalog: Value,
}

#[derive(Debug, Clone)]
struct FakeBroker {
    url: String,
    state: Arc<Mutex<BrokerState>>,
}

fn plan(id: &str, name: &str, extra: &Value) -> Value {
    let mut plan = json!({"id": id, "name": name, "description": format!("the {name} plan")});
    if let (Some(plan), Some(extra)) = (plan.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            plan.insert(k.clone(), v.clone());
        }
    }
    plan
}

fn good_catalog() -> Value {
    json!({"services": [{
        "id": "svc-cache", "name": "cache", "description": "a cache", "bindable": true,
        "plan_updateable": true, "tags": ["cache", "redis"],
        "plans": [
            plan("p-sync", "sync", &json!({})),
            plan("p-bigger", "bigger", &json!({})),
            plan("p-slow", "slow", &json!({"maximum_polling_duration": 60})),
            plan("p-fail", "fail", &json!({})),
            plan("p-hang", "hang", &json!({})),
            plan("p-conflict", "conflict", &json!({})),
            plan("p-stuck", "stuck", &json!({"maximum_polling_duration": 2})),
            plan("p-busy", "busy", &json!({})),
            plan("p-schema", "schema", &json!({"schemas": {"service_instance": {"create": {
                "parameters": {
                    "$schema": "http://json-schema.org/draft-04/schema#",
                    "type": "object", "additionalProperties": false, "required": ["size"],
                    "properties": {"size": {"type": "integer", "minimum": 1, "maximum": 8}}
                }
            }}}})),
        ]
    }, {
        "id": "svc-db", "name": "db", "description": "a database", "bindable": true,
        "tags": ["relational"],
        "plans": [plan("p-db", "small", &json!({}))]
    }]})
}

impl FakeBroker {
    async fn start() -> Self {
        let state = Arc::new(Mutex::new(BrokerState {
            catalog: good_catalog(),
            ..BrokerState::default()
        }));
        let app = Router::new()
            .route("/v2/catalog", get(catalog))
            .route("/v2/service_instances/{id}", any(instance))
            .route(
                "/v2/service_instances/{id}/last_operation",
                get(last_operation),
            )
            .route(
                "/v2/service_instances/{id}/service_bindings/{bid}",
                any(binding),
            )
            .route(
                "/v2/service_instances/{id}/service_bindings/{bid}/last_operation",
                get(binding_last_operation),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, state }
    }

    fn requests(&self, method: &str, fragment: &str) -> Vec<Request> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.method == method && r.path.contains(fragment))
            .cloned()
            .collect()
    }

    /// Whether the broker holds instance `id`.
    fn holds(&self, id: &str) -> bool {
        self.state.lock().unwrap().instances.contains_key(id)
    }

    /// Waits, with the shared deadline, until `done` holds of the broker.
    async fn wait(&self, what: &str, done: impl Fn(&Self) -> bool) {
        wait_for(WAIT, what, || {
            let reached = done(self);
            async move { reached }
        })
        .await;
    }

    fn assert_strict(&self) {
        let violations = self.state.lock().unwrap().violations.clone();
        assert!(violations.is_empty(), "OSBAPI violations: {violations:#?}");
    }
}

type Shared = State<Arc<Mutex<BrokerState>>>;

fn query_map(query: &str) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Checks the headers every request needs; `user` when a person is behind the request.
fn check_headers(
    s: &mut BrokerState,
    headers: &HeaderMap,
    what: &str,
    user: bool,
) -> Option<Response> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("x-broker-api-version") != Some("2.17") {
        s.violations
            .push(format!("{what}: X-Broker-API-Version is not 2.17"));
        return Some(StatusCode::PRECONDITION_FAILED.into_response());
    }
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    if header("authorization") != Some(expected.as_str()) {
        s.violations
            .push(format!("{what}: wrong or missing basic auth"));
        return Some(StatusCode::UNAUTHORIZED.into_response());
    }
    if header("x-broker-api-request-identity").is_none_or(str::is_empty) {
        s.violations
            .push(format!("{what}: no X-Broker-API-Request-Identity"));
    }
    if user {
        let identity = header("x-broker-api-originating-identity").unwrap_or("");
        let decoded = identity
            .strip_prefix("cloudfoundry ")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        if !decoded.is_some_and(|v| v.get("user_id").is_some_and(Value::is_string)) {
            s.violations.push(format!(
                "{what}: X-Broker-API-Originating-Identity {identity:?} is not `cloudfoundry \
                 base64({{\"user_id\"}})`"
            ));
        }
    }
    None
}

fn require(s: &mut BrokerState, what: &str, body: &Value, fields: &[&str]) {
    for field in fields {
        let present = body
            .pointer(&format!("/{}", field.replace('.', "/")))
            .is_some_and(|v| !v.is_null());
        if !present {
            s.violations.push(format!("{what}: body lacks {field}"));
        }
    }
}

fn record(s: &mut BrokerState, method: &Method, path: &str, query: &str, body: &Value) {
    s.requests.push(Request {
        method: method.to_string(),
        path: path.to_owned(),
        query: query.to_owned(),
        body: body.clone(),
    });
}

async fn catalog(State(state): Shared, headers: HeaderMap) -> Response {
    let mut s = state.lock().unwrap();
    if let Some(refusal) = check_headers(&mut s, &headers, "catalog", false) {
        return refusal;
    }
    Json(s.catalog.clone()).into_response()
}

fn plan_name(plan_id: &str) -> &str {
    plan_id.strip_prefix("p-").unwrap_or(plan_id)
}

async fn instance(
    State(state): Shared,
    method: Method,
    UrlPath(id): UrlPath<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: String,
) -> Response {
    let query = query.unwrap_or_default();
    let params = query_map(&query);
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let what = format!("{method} instance {id}");
    let hang;
    {
        let mut s = state.lock().unwrap();
        record(
            &mut s,
            &method,
            &format!("/v2/service_instances/{id}"),
            &query,
            &body,
        );
        let orphan_delete = method == Method::DELETE;
        if let Some(refusal) = check_headers(&mut s, &headers, &what, !orphan_delete) {
            return refusal;
        }
        if params.get("accepts_incomplete").map(String::as_str) != Some("true") {
            s.violations
                .push(format!("{what}: no accepts_incomplete=true"));
        }
        match method {
            Method::PUT => {
                require(
                    &mut s,
                    &what,
                    &body,
                    &[
                        "service_id",
                        "plan_id",
                        "organization_guid",
                        "space_guid",
                        "context.platform",
                        "context.space_guid",
                        "context.organization_guid",
                        "context.instance_name",
                    ],
                );
                let plan_id = body["plan_id"].as_str().unwrap_or_default().to_owned();
                match plan_name(&plan_id) {
                    "fail" => {
                        s.instances.insert(id, plan_id);
                        return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({})))
                            .into_response();
                    }
                    "conflict" => {
                        return (
                            StatusCode::CONFLICT,
                            Json(json!({"description": "exists with other attributes"})),
                        )
                            .into_response();
                    }
                    "slow" | "stuck" => {
                        s.instances.insert(id.clone(), plan_id);
                        return (
                            StatusCode::ACCEPTED,
                            Json(json!({"operation": "provision op/1", "dashboard_url": "http://dash/1"})),
                        )
                            .into_response();
                    }
                    "hang" => {
                        s.instances.insert(id, plan_id);
                        hang = true;
                    }
                    _ => {
                        s.instances.insert(id, plan_id);
                        return (
                            StatusCode::CREATED,
                            Json(json!({"dashboard_url": "http://dash/0"})),
                        )
                            .into_response();
                    }
                }
            }
            Method::PATCH => {
                require(
                    &mut s,
                    &what,
                    &body,
                    &["service_id", "plan_id", "previous_values.plan_id"],
                );
                if let Some(plan_id) = body["plan_id"].as_str() {
                    s.instances.insert(id, plan_id.to_owned());
                }
                return Json(json!({})).into_response();
            }
            Method::DELETE => {
                for field in ["service_id", "plan_id"] {
                    if !params.contains_key(field) {
                        s.violations
                            .push(format!("{what}: no {field} query parameter"));
                    }
                }
                if s.fail_deletes {
                    return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({}))).into_response();
                }
                return if s.instances.remove(&id).is_some() {
                    Json(json!({})).into_response()
                } else {
                    (StatusCode::GONE, Json(json!({}))).into_response()
                };
            }
            _ => return StatusCode::METHOD_NOT_ALLOWED.into_response(),
        }
    }
    if hang {
        // Longer than the controller's 1-second broker deadline.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    (StatusCode::CREATED, Json(json!({}))).into_response()
}

async fn last_operation(
    State(state): Shared,
    UrlPath(id): UrlPath<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = query.unwrap_or_default();
    let params = query_map(&query);
    let mut s = state.lock().unwrap();
    record(
        &mut s,
        &Method::GET,
        &format!("/v2/service_instances/{id}/last_operation"),
        &query,
        &Value::Null,
    );
    let what = format!("last_operation {id}");
    if let Some(refusal) = check_headers(&mut s, &headers, &what, false) {
        return refusal;
    }
    if params.get("operation").map(String::as_str) != Some("provision op/1") {
        s.violations
            .push(format!("{what}: the operation was not echoed: {query}"));
    }
    if !params.contains_key("service_id") || !params.contains_key("plan_id") {
        s.violations
            .push(format!("{what}: no service_id/plan_id: {query}"));
    }
    let stuck = s.instances.get(&id).is_some_and(|p| p == "p-stuck");
    let polls = s.polls.entry(id).or_default();
    *polls += 1;
    if *polls < 3 || stuck {
        let mut response =
            Json(json!({"state": "in progress", "description": format!("step {polls} of 3")}))
                .into_response();
        response
            .headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        return response;
    }
    Json(json!({"state": "succeeded"})).into_response()
}

async fn binding(
    State(state): Shared,
    method: Method,
    UrlPath((id, bid)): UrlPath<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: String,
) -> Response {
    let query = query.unwrap_or_default();
    let params = query_map(&query);
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let mut s = state.lock().unwrap();
    record(
        &mut s,
        &method,
        &format!("/v2/service_instances/{id}/service_bindings/{bid}"),
        &query,
        &body,
    );
    let what = format!("{method} binding {bid}");
    let user = method == Method::PUT;
    if let Some(refusal) = check_headers(&mut s, &headers, &what, user) {
        return refusal;
    }
    if method == Method::GET {
        return match s.async_bindings.get(&bid) {
            Some(credentials) if !s.hold_bindings => {
                Json(json!({"credentials": credentials})).into_response()
            }
            _ => (StatusCode::NOT_FOUND, Json(json!({}))).into_response(),
        };
    }
    if params.get("accepts_incomplete").map(String::as_str) != Some("true") {
        s.violations
            .push(format!("{what}: no accepts_incomplete=true"));
    }
    if !s.instances.contains_key(&id) {
        s.violations
            .push(format!("{what}: the instance does not exist"));
    }
    match method {
        Method::PUT => {
            require(
                &mut s,
                &what,
                &body,
                &["service_id", "plan_id", "bind_resource", "context.platform"],
            );
            if body["plan_id"] == "p-busy" {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Json(json!({"error": "ConcurrencyError", "description": "busy"})),
                )
                    .into_response();
            }
            let slow = s.instances.get(&id).is_some_and(|p| p == "p-slow");
            s.bindings.insert(bid.clone(), id);
            if slow {
                let credentials = json!({"uri": format!("redis://:late-{bid}@127.0.0.1:6379")});
                s.async_bindings.insert(bid, credentials);
                return (StatusCode::ACCEPTED, Json(json!({"operation": "bind op"})))
                    .into_response();
            }
            let uri = if body["service_id"] == "svc-db" {
                format!("postgres://u-{bid}:secret@127.0.0.1:5432/db")
            } else {
                format!("redis://:secret-{bid}@127.0.0.1:6379")
            };
            (
                StatusCode::CREATED,
                Json(json!({"credentials": {"uri": uri, "password": "secret"}})),
            )
                .into_response()
        }
        Method::DELETE => {
            for field in ["service_id", "plan_id"] {
                if !params.contains_key(field) {
                    s.violations
                        .push(format!("{what}: no {field} query parameter"));
                }
            }
            if s.bindings.remove(&bid).is_some() {
                Json(json!({})).into_response()
            } else {
                (StatusCode::GONE, Json(json!({}))).into_response()
            }
        }
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

async fn binding_last_operation(
    State(state): Shared,
    UrlPath((id, bid)): UrlPath<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = query.unwrap_or_default();
    let params = query_map(&query);
    let mut s = state.lock().unwrap();
    let path = format!("/v2/service_instances/{id}/service_bindings/{bid}/last_operation");
    record(&mut s, &Method::GET, &path, &query, &Value::Null);
    let what = format!("binding last_operation {bid}");
    if let Some(refusal) = check_headers(&mut s, &headers, &what, false) {
        return refusal;
    }
    if params.get("operation").map(String::as_str) != Some("bind op") {
        s.violations
            .push(format!("{what}: the operation was not echoed: {query}"));
    }
    if s.hold_bindings {
        let mut response = Json(json!({"state": "in progress"})).into_response();
        response
            .headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        return response;
    }
    Json(json!({"state": "succeeded"})).into_response()
}

// === the controller ===

/// Registers the fake broker and enables both its offerings.
async fn register(cc: &Cc, broker: &FakeBroker) {
    cc.register("fake", &broker.url, &["cache", "db"]).await;
}

/// A fake broker and a controller on `bus` over a fresh data dir, with the broker registered
/// and both its offerings enabled.
async fn fake_setup(bus: &str) -> (FakeBroker, tempfile::TempDir, Cc) {
    let broker = FakeBroker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cc = start_cc(dir.path(), bus, fast_services()).await;
    register(&cc, &broker).await;
    (broker, dir, cc)
}

/// Ends a test: the broker saw no OSBAPI violation, and the controller stops cleanly.
async fn end(broker: &FakeBroker, cc: Cc) {
    broker.assert_strict();
    cc.stop().await;
}

/// Tries to register the fake broker with `password`, enabling nothing.
async fn register_as(
    cc: &Cc,
    broker: &FakeBroker,
    password: &str,
) -> Result<ServiceBroker, hydrant_api::Error> {
    cc.admin
        .create_service_broker(&CreateServiceBroker {
            name: "fake".into(),
            url: broker.url.clone(),
            username: USER.into(),
            password: password.into(),
        })
        .await
}

async fn create(
    client: &Client,
    plan: &str,
    name: &str,
    parameters: Option<Value>,
) -> (String, Job) {
    let answer = client
        .create_service_instance(&CreateServiceInstance {
            name: name.into(),
            kind: ServiceInstanceType::Managed,
            offering: Some(if plan == "small" { "db" } else { "cache" }.into()),
            plan: Some(plan.into()),
            parameters,
            tags: vec!["mine".into()],
            ..CreateServiceInstance::default()
        })
        .await
        .unwrap();
    let job = answer.job.expect("a managed create answers with a job");
    (answer.instance.guid, job)
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogs_are_validated_and_new_plans_stay_hidden_until_access_is_enabled() {
    let broker = FakeBroker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cc = start_cc(dir.path(), "svc-catalog", fast_services()).await;

    // A broken catalog is refused whole, each problem named.
    broker.state.lock().unwrap().catalog = json!({"services": [{"id": "x", "name": "bad name",
        "bindable": true, "plans": []}]});
    let refused = register_as(&cc, &broker, PASSWORD)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("description is required"), "{refused}");
    assert!(refused.contains("not CLI-friendly"), "{refused}");
    assert!(refused.contains("at least one plan"), "{refused}");

    // Wrong credentials: the broker's 401 is reported as such.
    broker.state.lock().unwrap().catalog = good_catalog();
    let unauthorised = register_as(&cc, &broker, "wrong")
        .await
        .unwrap_err()
        .to_string();
    assert!(unauthorised.contains("401"), "{unauthorised}");
    broker.state.lock().unwrap().violations.clear();

    let registered = register_as(&cc, &broker, PASSWORD).await.unwrap();
    assert_eq!(registered.offerings, ["cache", "db"]);

    // A developer sees no plan until an admin enables access.
    let space = cc.admin.list_spaces().await.unwrap()[0].guid.clone();
    let dev = cc.user("dev", Some((&space, SpaceRole::Developer))).await;
    assert!(dev.list_service_offerings().await.unwrap().is_empty());
    let hidden = try_create(&dev, "cache", "sync", "early")
        .await
        .unwrap_err();
    assert_eq!(hidden.status(), Some(422));
    assert!(
        hidden
            .to_string()
            .contains("enable-service-access cache -p sync"),
        "{hidden}"
    );
    cc.admin
        .set_service_access(&ServiceAccess {
            offering: "cache".into(),
            plan: Some("sync".into()),
            broker: None,
            enable: true,
        })
        .await
        .unwrap();
    let market = dev.list_service_offerings().await.unwrap();
    assert_eq!(market.len(), 1);
    assert_eq!(market[0].plans.len(), 1);
    assert_eq!(market[0].plans[0].name, "sync");
    // The admin sees every plan, public or not; brokers are the admin's alone.
    let all = cc.admin.list_service_offerings().await.unwrap();
    assert_eq!(all[0].plans.len(), 9);
    assert_eq!(
        dev.list_service_brokers().await.unwrap_err().status(),
        Some(403)
    );
    // A developer's instance: they get a log token for its own source; an outsider sees nothing.
    let (mine, job) = create(&dev, "sync", "mine", None).await;
    complete(&dev, &job).await;
    let token = dev.service_instance_log_token(&mine).await.unwrap();
    assert_eq!(token.source_id, mine);
    let outsider = cc.user("outsider", None).await;
    assert!(
        outsider
            .service_instance(&mine)
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(
        outsider
            .service_instance_log_token(&mine)
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(
        outsider
            .list_service_instances(None, None)
            .await
            .unwrap()
            .is_empty()
    );
    // A space auditor reads the instance and its logs, but changes nothing.
    let auditor = cc.user("auditor", Some((&space, SpaceRole::Auditor))).await;
    assert_eq!(auditor.service_instance(&mine).await.unwrap().name, "mine");
    auditor.service_instance_log_token(&mine).await.unwrap();
    let refused = auditor.delete_service_instance(&mine).await.unwrap_err();
    assert_eq!(refused.status(), Some(403));
    let refused = try_create(&auditor, "cache", "sync", "nope")
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(403));
    end(&broker, cc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_and_bindings_follow_osbapi_and_reach_vcap_services() {
    let bus = "svc-flow";
    let (broker, _dir, cc) = fake_setup(bus).await;
    let executor = FakeExecutor::start(bus, "cell-1", 4096, 10, false).await;

    // Parameters are checked against the plan's schema before the broker hears of them.
    let bad = cc
        .admin
        .create_service_instance(&CreateServiceInstance {
            name: "sized".into(),
            offering: Some("cache".into()),
            plan: Some("schema".into()),
            parameters: Some(json!({"size": 99, "colour": "red"})),
            ..CreateServiceInstance::default()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(bad.contains("parameters.size: must be at most 8"), "{bad}");
    assert!(bad.contains("\"colour\" is not a parameter"), "{bad}");
    assert!(broker.requests("PUT", "/v2/service_instances/").is_empty());

    // Synchronous provision: 201, done at the first answer.
    let (cache, job) = create(&cc.admin, "sync", "cache", None).await;
    complete(&cc.admin, &job).await;
    let instance = cc.admin.service_instance(&cache).await.unwrap();
    assert_eq!(instance.last_operation.state, "succeeded");
    assert_eq!(instance.dashboard_url.as_deref(), Some("http://dash/0"));

    // Asynchronous provision: 202, last_operation polled after each Retry-After with the
    // operation echoed, until it succeeds.
    let (db, job) = create(&cc.admin, "slow", "slowdb", None).await;
    let started = std::time::Instant::now();
    let job = complete(&cc.admin, &job).await;
    assert!(job.polls >= 2, "{job:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "two Retry-After: 1 waits were honoured"
    );
    assert_eq!(broker.requests("GET", "/last_operation").len(), 3);
    let (pg, job) = create(&cc.admin, "small", "pg", None).await;
    complete(&cc.admin, &job).await;
    let _ = db;

    // 409 fails the create and is not orphan-mitigated.
    let (conflicted, job) = create(&cc.admin, "conflict", "conflicted", None).await;
    let job = failed(&cc.admin, &job).await;
    assert!(job.description.unwrap().contains("409"));
    let instance = cc.admin.service_instance(&conflicted).await.unwrap();
    assert_eq!(instance.last_operation.state, "failed");

    // Bind an app: credentials arrive, then VCAP_SERVICES carries them at the next start.
    let app = static_app(&cc.admin, "shop").await;
    for instance in [&cache, &pg] {
        let answer = bind_app(&cc.admin, instance, &app.guid, None)
            .await
            .unwrap();
        complete(&cc.admin, answer.job.as_ref().unwrap()).await;
    }
    cc.admin.start_app(&app.guid).await.unwrap();
    let start = next_start(&executor, &app.guid, 0).await;
    let vcap = vcap_of(&start);
    let entry = &vcap["cache"][0];
    let keys: Vec<&str> = entry
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys.len(),
        12,
        "the twelve keys of a managed entry: {keys:?}"
    );
    assert_eq!(entry["label"], "cache");
    assert_eq!(entry["plan"], "sync");
    assert_eq!(entry["name"], "cache");
    assert_eq!(entry["instance_name"], "cache");
    assert_eq!(entry["binding_name"], Value::Null);
    assert_eq!(entry["tags"], json!(["cache", "redis", "mine"]));
    assert_eq!(entry["credentials"]["password"], "secret");
    assert!(
        start.env["DATABASE_URL"].starts_with("postgres://u-"),
        "{:?}",
        start.env.get("DATABASE_URL")
    );
    let bind_put = &broker.requests("PUT", "/service_bindings/")[0];
    assert_eq!(bind_put.body["bind_resource"]["app_guid"], app.guid);

    // A service key gets its own credentials, readable through details.
    let key = create_key(&cc.admin, &cache, "ops").await;
    finished(&cc.admin, key.job.as_ref().unwrap()).await;
    let details = cc
        .admin
        .service_binding_details(&key.binding.guid)
        .await
        .unwrap();
    assert!(
        details.credentials["uri"]
            .as_str()
            .unwrap()
            .contains(&key.binding.guid)
    );
    let key_put = broker
        .requests("PUT", &format!("/service_bindings/{}", key.binding.guid))
        .remove(0);
    assert_eq!(
        key_put.body["bind_resource"]["credential_client_id"],
        "cc_service_key_client"
    );

    // Deleting an instance with bindings is refused; unbinding then deleting works, and a
    // delete of something the broker no longer has (410) counts as done.
    let refused = cc.admin.delete_service_instance(&cache).await.unwrap_err();
    assert_eq!(refused.status(), Some(422));
    let bindings = bindings_of(&cc.admin, &cache).await;
    assert_eq!(bindings.len(), 2);
    for b in bindings {
        let answer = cc.admin.delete_service_binding(&b.guid).await.unwrap();
        complete(&cc.admin, &answer.job.unwrap()).await;
    }
    broker.state.lock().unwrap().instances.remove(&cache);
    let answer = cc.admin.delete_service_instance(&cache).await.unwrap();
    complete(&cc.admin, &answer.job.unwrap()).await;
    assert!(
        cc.admin
            .service_instance(&cache)
            .await
            .unwrap_err()
            .is_not_found()
    );

    // After a restart the app's VCAP_SERVICES no longer has the unbound instance.
    let start = restart_and_next_start(&cc.admin, &executor, &app.guid).await;
    let vcap = vcap_of(&start);
    assert!(vcap.get("cache").is_none(), "{vcap}");
    assert_eq!(vcap["db"][0]["plan"], "small");

    // A plan change goes through PATCH with the previous plan.
    let (resized, job) = create(&cc.admin, "sync", "resized", None).await;
    finished(&cc.admin, &job).await;
    let answer = cc
        .admin
        .update_service_instance(
            &resized,
            &UpdateServiceInstance {
                plan: Some("bigger".into()),
                ..UpdateServiceInstance::default()
            },
        )
        .await
        .unwrap();
    complete(&cc.admin, &answer.job.unwrap()).await;
    assert_eq!(
        cc.admin
            .service_instance(&resized)
            .await
            .unwrap()
            .plan
            .as_deref(),
        Some("bigger")
    );
    let patch = broker.requests("PATCH", &resized).remove(0);
    assert_eq!(patch.body["previous_values"]["plan_id"], "p-sync");
    assert!(patch.query.contains("accepts_incomplete=true"));

    end(&broker, cc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_timed_out_creates_are_orphan_mitigated_even_across_a_restart() {
    let bus = "svc-orphans";
    let (broker, dir, cc) = fake_setup(bus).await;

    // A 500 on provision: the create fails and the platform deletes what the broker may have.
    let (broken, job) = create(&cc.admin, "fail", "broken", None).await;
    failed(&cc.admin, &job).await;
    broker
        .wait("the orphan to be deleted", |b| {
            !b.holds(&broken) && !b.requests("DELETE", &broken).is_empty()
        })
        .await;
    let delete = broker.requests("DELETE", &broken).remove(0);
    assert!(
        delete.query.contains("service_id=svc-cache"),
        "{}",
        delete.query
    );
    assert!(delete.query.contains("plan_id=p-fail"), "{}", delete.query);

    // A timeout: the broker's deletes fail for now, so the mitigation is still pending when
    // the controller stops; the next controller on the same data finishes it.
    broker.state.lock().unwrap().fail_deletes = true;
    let (hung, job) = create(&cc.admin, "hang", "hung", None).await;
    let job = failed(&cc.admin, &job).await;
    assert!(job.description.unwrap().contains("did not answer in time"));
    broker
        .wait("a first (failing) mitigation attempt", |b| {
            !b.requests("DELETE", &hung).is_empty()
        })
        .await;
    cc.stop().await;
    assert!(broker.holds(&hung));
    broker.state.lock().unwrap().fail_deletes = false;

    let cc = start_cc(dir.path(), bus, fast_services()).await;
    broker
        .wait("the restarted controller to finish the mitigation", |b| {
            !b.holds(&hung)
        })
        .await;
    let instance = cc.admin.service_instance(&hung).await.unwrap();
    assert_eq!(instance.last_operation.kind, "create");
    assert_eq!(instance.last_operation.state, "failed");
    // The failed instance can then be deleted: the broker answers 410, which is success.
    let answer = cc.admin.delete_service_instance(&hung).await.unwrap();
    complete(&cc.admin, &answer.job.unwrap()).await;

    end(&broker, cc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_provided_instances_bind_at_once_and_feed_syslog_drains() {
    let dir = tempfile::tempdir().unwrap();
    let bus = "svc-upsi";
    let cc = start_cc(dir.path(), bus, fast_services()).await;
    let answer = cc
        .admin
        .create_service_instance(&CreateServiceInstance {
            name: "ext-db".into(),
            kind: ServiceInstanceType::UserProvided,
            credentials: Some(json!({"uri": "mysql://u:p@db.example:3306/app"})),
            syslog_drain_url: Some("syslog://203.0.113.7:514".into()),
            ..CreateServiceInstance::default()
        })
        .await
        .unwrap();
    assert!(answer.job.is_none());
    let app = app_in(&cc.admin, "reader", None).await;
    let bound = bind_app(&cc.admin, &answer.instance.guid, &app.guid, Some("primary"))
        .await
        .unwrap();
    assert!(bound.job.is_none());
    // The drain reaches the syslog nozzle's list like any drain.
    let targets = cc.admin.drain_targets().await.unwrap();
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].url, "syslog://203.0.113.7:514");
    assert_eq!(targets[0].app_guid, app.guid);
    cc.admin
        .delete_service_binding(&bound.binding.guid)
        .await
        .unwrap();
    assert!(cc.admin.drain_targets().await.unwrap().is_empty());

    // VCAP_SERVICES' user-provided entries, DATABASE_URL, and the 130 KB cap.
    let executor = FakeExecutor::start("svc-upsi", "cell-1", 4096, 10, false).await;
    let app = static_app(&cc.admin, "upsi-reader").await;
    bind_app(&cc.admin, &answer.instance.guid, &app.guid, Some("primary"))
        .await
        .unwrap();
    let mut big = Vec::new();
    for i in 0..3 {
        let created = cc
            .admin
            .create_service_instance(&CreateServiceInstance {
                name: format!("big-{i}"),
                kind: ServiceInstanceType::UserProvided,
                credentials: Some(json!({"blob": "x".repeat(60_000)})),
                ..CreateServiceInstance::default()
            })
            .await
            .unwrap();
        big.push(created.instance.guid);
    }
    bind_app(&cc.admin, &big[0], &app.guid, None).await.unwrap();
    bind_app(&cc.admin, &big[1], &app.guid, None).await.unwrap();
    let refused = bind_app(&cc.admin, &big[2], &app.guid, None)
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(422));
    assert!(refused.to_string().contains("130 KB"), "{refused}");
    cc.admin.start_app(&app.guid).await.unwrap();
    let start = next_start(&executor, &app.guid, 0).await;
    let vcap = vcap_of(&start);
    let entries = vcap["user-provided"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "the refused binding is not there");
    let ext = entries
        .iter()
        .find(|e| e["instance_name"] == "ext-db")
        .unwrap();
    let mut keys: Vec<&str> = ext
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "binding_guid",
            "binding_name",
            "credentials",
            "instance_guid",
            "instance_name",
            "label",
            "name",
            "syslog_drain_url",
            "tags",
            "volume_mounts"
        ]
    );
    assert_eq!(ext["label"], "user-provided");
    assert_eq!(ext["name"], "primary");
    assert_eq!(start.env["DATABASE_URL"], "mysql://u:p@db.example:3306/app");
    cc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_stops_at_the_plans_limit_and_concurrency_errors_are_not_mitigated() {
    let (broker, _dir, cc) = fake_setup("svc-limits").await;

    // The plan allows 2 s of polling: the broker never finishes, so the create fails then and
    // what it may have made is deleted.
    let (stuck, job) = create(&cc.admin, "stuck", "stuck", None).await;
    let job = failed(&cc.admin, &job).await;
    let reason = job.description.unwrap();
    assert!(reason.contains("did not finish within 2 s"), "{reason}");
    broker
        .wait("the stuck instance's orphan delete", |b| {
            !b.requests("DELETE", &stuck).is_empty()
        })
        .await;

    // 422 ConcurrencyError on a bind: failed, and no orphan mitigation for it.
    let (busy, job) = create(&cc.admin, "busy", "busy", None).await;
    complete(&cc.admin, &job).await;
    let key = create_key(&cc.admin, &busy, "k").await;
    let job = failed(&cc.admin, key.job.as_ref().unwrap()).await;
    assert!(job.description.unwrap().contains("ConcurrencyError"));
    // Give a (wrong) mitigation every chance to show up before checking it did not.
    let (_, job) = create(&cc.admin, "sync", "after", None).await;
    finished(&cc.admin, &job).await;
    assert!(
        broker
            .requests("DELETE", &format!("/service_bindings/{}", key.binding.guid))
            .is_empty()
    );
    // The failed binding is gone, so a new key of the same name can be tried.
    assert!(bindings_of(&cc.admin, &busy).await.is_empty());
    end(&broker, cc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asynchronous_binding_reaches_the_app_only_with_its_credentials() {
    let bus = "svc-async-bind";
    let (broker, _dir, cc) = fake_setup(bus).await;
    let executor = FakeExecutor::start(bus, "cell-1", 4096, 10, false).await;
    let (slow, job) = create(&cc.admin, "slow", "slow", None).await;
    complete(&cc.admin, &job).await;
    let app = static_app(&cc.admin, "late").await;
    cc.admin.start_app(&app.guid).await.unwrap();

    broker.state.lock().unwrap().hold_bindings = true;
    let answer = bind_app(&cc.admin, &slow, &app.guid, None).await.unwrap();
    let job = answer.job.unwrap();
    let admin = cc.admin.clone();
    let guid = job.guid.clone();
    wait_for(WAIT, "the bind to be polled", move || {
        let admin = admin.clone();
        let guid = guid.clone();
        async move { admin.job(&guid).await.unwrap().state == "POLLING" }
    })
    .await;

    // Restarted while the broker works: no credentials yet, so no entry.
    let start = restart_and_next_start(&cc.admin, &executor, &app.guid).await;
    assert_eq!(start.env["VCAP_SERVICES"], "{}");
    let pending = cc
        .admin
        .service_binding_details(&answer.binding.guid)
        .await
        .unwrap_err();
    assert_eq!(pending.status(), Some(422));

    // Once the broker finishes, the credentials are fetched and the next start has them.
    broker.state.lock().unwrap().hold_bindings = false;
    complete(&cc.admin, &job).await;
    let start = restart_and_next_start(&cc.admin, &executor, &app.guid).await;
    let vcap = vcap_of(&start);
    assert!(
        vcap["cache"][0]["credentials"]["uri"]
            .as_str()
            .unwrap()
            .starts_with("redis://:late-"),
        "{vcap}"
    );
    assert_eq!(
        broker
            .requests("GET", &format!("/service_bindings/{}", answer.binding.guid))
            .iter()
            .filter(|r| !r.path.ends_with("last_operation"))
            .count(),
        1,
        "the credentials were fetched once"
    );
    end(&broker, cc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_app_unbinds_it_at_the_broker() {
    let (broker, _dir, cc) = fake_setup("svc-app-delete").await;
    let (cache, job) = create(&cc.admin, "sync", "cache", None).await;
    finished(&cc.admin, &job).await;
    let app = app_in(&cc.admin, "gone", None).await;
    let answer = bind_app(&cc.admin, &cache, &app.guid, None).await.unwrap();
    finished(&cc.admin, answer.job.as_ref().unwrap()).await;
    cc.admin.delete_app(&app.guid).await.unwrap();
    let binding = &answer.binding.guid;
    broker
        .wait("the broker to be told of the unbind", |b| {
            !b.state.lock().unwrap().bindings.contains_key(binding)
        })
        .await;
    wait_for(WAIT, "the binding to be forgotten", || async {
        bindings_of(&cc.admin, &cache).await.is_empty()
    })
    .await;
    // With no binding left the instance can be deleted.
    let answer = cc.admin.delete_service_instance(&cache).await.unwrap();
    complete(&cc.admin, &answer.job.unwrap()).await;
    end(&broker, cc).await;
}

/// RESP `AUTH user password` then `PING` over loopback: whether the server accepted both.
async fn redis_accepts(host: &str, port: u16, user: &str, password: &str) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut stream) = tokio::net::TcpStream::connect((host, port)).await else {
        return false;
    };
    let command = |parts: &[&str]| {
        let mut out = format!("*{}\r\n", parts.len());
        for p in parts {
            out.push_str(&format!("${}\r\n{p}\r\n", p.len()));
        }
        out
    };
    let request = command(&["AUTH", user, password]) + &command(&["PING"]);
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !(answer.ends_with(b"\r\n") && answer.split(|b| *b == b'\n').count() > 2) {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&answer).starts_with("+OK\r\n+PONG")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hydrants_own_broker_provisions_redis_into_vcap_services() {
    // The real broker, Redis only, on a slice of ports of its own.
    let RedisRig {
        broker,
        cc,
        executor,
        offerings,
        dir: _dir,
    } = RedisRig::start(46_000, "svc-real-broker", fast_services()).await;
    assert_eq!(offerings, ["redis"]);

    // create redis small → bind → the start message's VCAP_SERVICES has working credentials.
    let started = std::time::Instant::now();
    let answer = create_complete(&cc.admin, "redis", "small", "cache").await;
    let provisioned = started.elapsed();
    let app = static_app(&cc.admin, "counter").await;
    let started = std::time::Instant::now();
    let bound = bind_app(&cc.admin, &answer.instance.guid, &app.guid, None)
        .await
        .unwrap();
    complete(&cc.admin, bound.job.as_ref().unwrap()).await;
    let bind_took = started.elapsed();
    eprintln!("redis small: provisioned in {provisioned:?}, bound in {bind_took:?}");
    cc.admin.start_app(&app.guid).await.unwrap();
    let start = next_start(&executor, &app.guid, 0).await;
    let vcap = vcap_of(&start);
    let entry = &vcap["redis"][0];
    assert_eq!(entry["plan"], "small");
    let credentials = &entry["credentials"];
    let host = credentials["host"].as_str().unwrap().to_owned();
    let port = u16::try_from(credentials["port"].as_u64().unwrap()).unwrap();
    let user = credentials["username"].as_str().unwrap().to_owned();
    let password = credentials["password"].as_str().unwrap().to_owned();
    assert!(
        credentials["uri"].as_str().unwrap().starts_with("redis://"),
        "{credentials}"
    );
    assert!(
        redis_accepts(&host, port, &user, &password).await,
        "the credentials in VCAP_SERVICES open the Redis instance"
    );

    // Unbind revokes those credentials on the server; delete removes the instance.
    let answer_unbind = cc
        .admin
        .delete_service_binding(&bound.binding.guid)
        .await
        .unwrap();
    complete(&cc.admin, &answer_unbind.job.unwrap()).await;
    assert!(!redis_accepts(&host, port, &user, &password).await);
    let deleted = cc
        .admin
        .delete_service_instance(&answer.instance.guid)
        .await
        .unwrap();
    complete(&cc.admin, &deleted.job.unwrap()).await;
    cc.stop().await;
    broker.stop().await;
}

/// Starts creating a managed `cache` instance of `plan` called `name` in `space`.
async fn create_cache_in(
    client: &Client,
    space: &str,
    plan: &str,
    name: &str,
) -> ServiceInstanceAnswer {
    client
        .create_service_instance(&CreateServiceInstance {
            name: name.into(),
            space: Some(space.to_owned()),
            kind: ServiceInstanceType::Managed,
            offering: Some("cache".into()),
            plan: Some(plan.into()),
            ..CreateServiceInstance::default()
        })
        .await
        .unwrap()
}

/// `DELETE /v3/spaces/{guid}` until it says done, waiting for the jobs of each answer; the
/// answers in order.
async fn delete_space_fully(client: &Client, space: &str) -> Vec<hydrant_api::tenancy::Deletion> {
    let mut answers = Vec::new();
    for _ in 0..10 {
        let answer = client.delete_space(space).await.unwrap();
        for job in &answer.jobs {
            complete(client, job).await;
        }
        let done = answer.done;
        answers.push(answer);
        if done {
            return answers;
        }
    }
    panic!("the space was not deleted in 10 rounds: {answers:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_space_unbinds_and_deprovisions_its_services_through_broker_jobs() {
    let (broker, _dir, cc) = fake_setup("svc-space-delete").await;
    cc.admin.create_org("acme").await.unwrap();
    let space = cc.admin.create_space_in("acme", "doomed").await.unwrap();
    let answer = create_cache_in(&cc.admin, &space.guid, "sync", "cache").await;
    finished(&cc.admin, answer.job.as_ref().unwrap()).await;
    let cache = answer.instance.guid;
    let ups = cc
        .admin
        .create_service_instance(&CreateServiceInstance {
            name: "ups".into(),
            space: Some(space.guid.clone()),
            kind: ServiceInstanceType::UserProvided,
            credentials: Some(json!({"password": "p"})),
            ..CreateServiceInstance::default()
        })
        .await
        .unwrap()
        .instance
        .guid;
    let app = app_in(&cc.admin, "web", Some(&space.guid)).await;
    for instance in [&cache, &ups] {
        let bound = bind_app(&cc.admin, instance, &app.guid, None)
            .await
            .unwrap();
        complete_if(&cc.admin, bound.job.as_ref()).await;
    }
    let key = create_key(&cc.admin, &cache, "ci").await;
    finished(&cc.admin, key.job.as_ref().unwrap()).await;
    assert_eq!(broker.state.lock().unwrap().bindings.len(), 2);

    // A space whose instance is still being created is refused whole, nothing touched.
    let busy = cc.admin.create_space_in("default", "busy").await.unwrap();
    let creating = create_cache_in(&cc.admin, &busy.guid, "stuck", "creating").await;
    let refused = cc.admin.delete_space(&busy.guid).await.unwrap_err();
    assert_eq!(refused.status(), Some(422), "{refused}");
    assert!(
        refused.to_string().contains("\"creating\"")
            && refused.to_string().contains("being created"),
        "{refused}"
    );
    assert!(
        cc.admin
            .list_spaces()
            .await
            .unwrap()
            .iter()
            .any(|s| s.guid == busy.guid)
    );
    finished(&cc.admin, creating.job.as_ref().unwrap()).await;

    let answers = delete_space_fully(&cc.admin, &space.guid).await;
    // Round one: the app and the user-provided instance go at once, the managed bindings get
    // unbind jobs; round two: the deprovision job; round three: the space.
    assert_eq!(answers.len(), 3, "{answers:#?}");
    assert_eq!(answers[0].apps_deleted, vec!["web".to_owned()]);
    assert_eq!(answers[0].services_deleted, vec!["ups".to_owned()]);
    assert_eq!(answers[0].services_pending, vec!["cache".to_owned()]);
    let operations = |i: usize| -> Vec<String> {
        answers[i]
            .jobs
            .iter()
            .map(|j| j.operation.clone())
            .collect()
    };
    assert_eq!(operations(0), ["service_binding.delete"; 2]);
    assert_eq!(operations(1), ["service_instance.delete"]);
    assert!(answers[2].done && answers[2].services_deleted.is_empty());
    {
        let state = broker.state.lock().unwrap();
        assert!(state.bindings.is_empty(), "{:?}", state.bindings);
        assert!(
            !state.instances.contains_key(&cache),
            "{:?}",
            state.instances
        );
    }
    assert!(cc.admin.app(&app.guid).await.is_err(), "the app is gone");
    assert!(
        !cc.admin
            .list_spaces()
            .await
            .unwrap()
            .iter()
            .any(|s| s.guid == space.guid)
    );
    // The org, now empty, goes in one step.
    let org = cc.admin.delete_org("acme").await.unwrap();
    assert!(org.done, "{org:?}");
    assert!(
        !cc.admin
            .list_orgs()
            .await
            .unwrap()
            .iter()
            .any(|o| o.name == "acme")
    );
    end(&broker, cc).await;
}
