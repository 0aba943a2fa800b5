//! The admin listener every role serves, served here once: `/healthz` (200 while the role runs),
//! `/metrics` (the role's registry as Prometheus text) and whatever status routes the role mounts
//! (`/v1/slos`, `/drains`).
//!
//! Flow: [`crate::run`] takes the listener named [`crate::ADMIN`] out of the role's bound set
//! before the role's own `run` starts, serves it until the role returns, and hands the role a
//! mount point ([`crate::Listeners::mount_admin`]) for the routes that read state the role builds
//! as it starts.
//!
//! Invariant: a role crate holds no admin server of its own; `/healthz` and `/metrics` answer
//! from the moment the role is started, and its own routes answer 404 until it mounts them.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::Registry;

/// The Prometheus text exposition format's content type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// Where a role mounts its own admin routes once it has built the state they read. Cheap to
/// clone; the first mount wins (a role mounts once).
#[derive(Debug, Clone, Default)]
pub struct AdminRoutes(Arc<OnceLock<Router>>);

impl AdminRoutes {
    /// Serves `routes` beside `/healthz` and `/metrics` from now on. A second mount is ignored.
    pub fn mount(&self, routes: Router) {
        let _ = self.0.set(routes);
    }

    async fn dispatch(&self, request: Request) -> Response {
        let Some(routes) = self.0.get().cloned() else {
            return StatusCode::NOT_FOUND.into_response();
        };
        match routes.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// `/healthz`, `/metrics` over `registry`, and the role's mounted routes.
pub fn router(registry: Registry, mounted: AdminRoutes) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let text = registry.render_prometheus();
                async move { ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text) }
            }),
        )
        .fallback(move |request: Request| {
            let mounted = mounted.clone();
            async move { mounted.dispatch(request).await }
        })
}

/// Serves [`router`] on `listener` as a task until `stop` fires.
pub(crate) fn spawn(
    listener: TcpListener,
    registry: Registry,
    mounted: AdminRoutes,
    stop: CancellationToken,
) -> JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        let gate = crate::Gate::new("admin", &crate::serve::ADMIN_LIMITS, &registry);
        gate.serve(listener, router(registry, mounted), stop).await
    })
}

/// What a finished admin task left: a panicked server is not an error of the role.
pub(crate) async fn finish(task: JoinHandle<std::io::Result<()>>) -> std::io::Result<()> {
    task.await.unwrap_or(Ok(()))
}
