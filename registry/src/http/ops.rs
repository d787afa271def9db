//! Operator endpoints, unauthenticated unless the config says otherwise:
//!
//! - `GET /healthz`: 200 `ok` while the process serves requests.
//! - `GET /readyz`: 200 `ready` when the store can be read (a redb read
//!   transaction) and the data directory written (a small file created,
//!   synced and removed); 503 with the reason otherwise, or when the check
//!   takes longer than 5 s.
//! - `GET /metrics`: Prometheus text format ([`super::metrics`]); needs
//!   publisher basic auth when the config sets `metrics_auth = true`.

use super::state::AppState;
use crate::store::storage::Storage;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use redb::ReadableDatabase as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The operator routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Whether the store is usable: a read transaction opens and a file can be
/// written (and synced) in the data directory.
pub fn check_ready(storage: &Storage) -> Result<(), String> {
    static N: AtomicU64 = AtomicU64::new(0);
    use std::io::Write as _;
    storage
        .db()
        .begin_read()
        .map_err(|e| format!("metadata database: {e}"))?;
    storage
        .meta()
        .check()
        .map_err(|e| format!("metadata store: {e:#}"))?;
    let dir = storage.data_dir();
    let probe = dir.join(format!(
        ".readyz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let r = (|| {
        let mut f = std::fs::File::create(&probe)?;
        f.write_all(b"ready\n")?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&probe);
    r.map_err(|e| format!("data directory {} is not writable: {e}", dir.display()))
}

async fn readyz(State(st): State<AppState>) -> Response {
    let storage = st.storage.clone();
    let check = tokio::task::spawn_blocking(move || check_ready(&storage));
    let result = match tokio::time::timeout(std::time::Duration::from_secs(5), check).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(format!("readiness check panicked: {e}")),
        Err(_) => Err("readiness check took longer than 5 s".into()),
    };
    match result {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => {
            tracing::warn!(reason = why, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            )
                .into_response()
        }
    }
}

async fn metrics(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let Some(handle) = st.metrics.clone() else {
        return (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response();
    };
    let config = st.config();
    if config.metrics_auth && config.has_publisher_auth() {
        let h = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if crate::auth::publisher_for_authorization(&config, h).is_none() {
            let mut r =
                (StatusCode::UNAUTHORIZED, "publisher credentials required\n").into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"layerlink\""),
            );
            return r;
        }
    }
    // Store-wide figures are read at scrape time (one pass over the layer
    // and object tables).
    let storage = st.storage.clone();
    match tokio::task::spawn_blocking(move || crate::store::index::dedup_stats(&storage)).await {
        Ok(Ok(d)) => super::metrics::store_gauges(d.logical_bytes, d.stored_bytes),
        Ok(Err(e)) => tracing::warn!("metrics: dedup stats: {e:#}"),
        Err(e) => tracing::warn!("metrics: dedup stats: {e}"),
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        handle.render(),
    )
        .into_response()
}
