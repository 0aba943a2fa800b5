//! The admin HTTP surface every role serves: `/healthz` and Prometheus `/metrics`.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::Registry;

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
