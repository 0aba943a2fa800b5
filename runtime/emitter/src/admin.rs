//! The admin HTTP surface every role serves: `/healthz` and Prometheus `/metrics`.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Emitter, Registry};

/// `/healthz` (200 "ok" while the role runs) and `/metrics` (the registry as Prometheus text).
/// Roles merge their own routes onto it.
pub fn router(registry: Registry) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        registry.render_prometheus(),
                    )
                        .into_response()
                }
            }),
        )
}

/// Serves `router` on `listener` until `shutdown` fires.
///
/// # Errors
/// The listener failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// [`serve`] as a task: a role's admin server, running beside its own work until `shutdown`.
#[must_use]
pub fn spawn(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: &CancellationToken,
) -> JoinHandle<std::io::Result<()>> {
    tokio::spawn(serve(listener, router, shutdown.clone()))
}

/// Winds down a role's self-reporting once its own work has stopped: waits for the admin
/// server (stopped by the role's shutdown token), then for the telemetry emitter to send the
/// last metrics, so they leave the process before the role returns. The caller stops the
/// telemetry first (cancels the token it was started with).
///
/// # Errors
/// The admin server's listener failed. A panicked admin task is not an error of the role.
pub async fn finish(
    admin: JoinHandle<std::io::Result<()>>,
    telemetry: Option<&Emitter>,
) -> std::io::Result<()> {
    let admin = admin.await;
    if let Some(emitter) = telemetry {
        emitter.stopped().await;
    }
    admin.unwrap_or(Ok(()))
}
