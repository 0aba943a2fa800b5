//! A fake cloud controller for platform mode: only the two admin endpoints the syslog nozzle
//! calls, answering exactly as `hydrant-api`'s contract says (`GET /v3/drain_targets` → a
//! `List` of `DrainTarget`, `PUT /v3/drain_status` ← a JSON array of `DrainStatus`), refusing
//! any other token with 401, and recording every report. Included with `#[path]`.
#![allow(dead_code, reason = "each test file uses a part")]

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use hydrant_api::{DrainStatus, DrainTarget, List};

pub const ADMIN_TOKEN: &str = "admin-token-for-tests";

#[derive(Default)]
struct Inner {
    targets: Vec<DrainTarget>,
    reports: Vec<Vec<DrainStatus>>,
    target_reads: usize,
    down: bool,
}

#[derive(Clone)]
pub struct FakeApi {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {ADMIN_TOKEN}"))
}

async fn targets(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
) -> Result<Json<List<DrainTarget>>, StatusCode> {
    if !authorized(&headers) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let mut i = inner.lock().unwrap();
    if i.down {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    i.target_reads += 1;
    Ok(Json(List::new(i.targets.clone())))
}

async fn status(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    Json(statuses): Json<Vec<DrainStatus>>,
) -> StatusCode {
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED;
    }
    inner.lock().unwrap().reports.push(statuses);
    StatusCode::NO_CONTENT
}

impl FakeApi {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = axum::Router::new()
            .route("/v3/drain_targets", get(targets))
            .route("/v3/drain_status", put(status))
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, inner }
    }

    pub fn set_targets(&self, targets: Vec<DrainTarget>) {
        self.inner.lock().unwrap().targets = targets;
    }

    /// Answer 503 to target reads (a cloud controller outage).
    pub fn set_down(&self, down: bool) {
        self.inner.lock().unwrap().down = down;
    }

    pub fn target_reads(&self) -> usize {
        self.inner.lock().unwrap().target_reads
    }

    /// The latest report that mentions binding `guid`.
    pub fn latest(&self, guid: &str) -> Option<DrainStatus> {
        self.inner
            .lock()
            .unwrap()
            .reports
            .iter()
            .rev()
            .find_map(|r| r.iter().find(|s| s.guid == guid).cloned())
    }

    /// The latest report, whole.
    pub fn last_report(&self) -> Option<Vec<DrainStatus>> {
        self.inner.lock().unwrap().reports.last().cloned()
    }

    pub fn reports(&self) -> usize {
        self.inner.lock().unwrap().reports.len()
    }
}

pub fn target(guid: &str, app: &str, url: &str) -> DrainTarget {
    DrainTarget {
        guid: guid.to_owned(),
        app_guid: app.to_owned(),
        app_name: format!("{app} name"),
        space_name: "dev space".to_owned(),
        url: url.to_owned(),
    }
}
