//! HTTP endpoint: Prometheus /metrics, /healthz and /readyz.

use crate::handler::Handler;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// Routes of the node's HTTP endpoint.
pub fn router(handler: Arc<Handler>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(handler)
}

async fn metrics(State(handler): State<Arc<Handler>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handler.metrics.render())
}

/// Ready once the node serves at least one range, and until it is told to stop.
async fn ready(State(handler): State<Arc<Handler>>) -> impl IntoResponse {
    if handler.stopping.load(std::sync::atomic::Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping: serving the ranges it holds until they are moved away\n")
    } else if handler.ownership.ranges().is_empty() {
        (StatusCode::SERVICE_UNAVAILABLE, "no ranges assigned\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}
