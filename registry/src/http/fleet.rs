//! `GET /layerlink/v1/fleet`: the fleet view for publishers (same basic
//! auth as pushing; open when no publisher is configured): every configured
//! device, also those never seen, and every device with a record; last
//! request, last transfer and its outcome, images held; and per image, who
//! holds it. JSON: [`crate::sync::devices::Fleet`]. `layerlink-registry
//! fleet --server URL` prints it.

use super::state::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

/// The fleet route.
pub fn router() -> Router<AppState> {
    Router::new().route("/layerlink/v1/fleet", get(fleet))
}

async fn fleet(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let config = st.config();
    if config.has_publisher_auth() {
        let h = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if crate::auth::publisher_for_authorization(&config, h).is_none() {
            let mut r = (
                StatusCode::UNAUTHORIZED,
                Json(serde_json::json!({ "error": "publisher credentials required" })),
            )
                .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"layerlink\""),
            );
            return r;
        }
    }
    let storage = st.storage.clone();
    let result = tokio::task::spawn_blocking(move || {
        let ids: Vec<&str> = config.devices.iter().map(|d| d.id.as_str()).collect();
        crate::sync::devices::fleet(storage.devices(), &ids)
    })
    .await;
    match result {
        Ok(Ok(f)) => Json(f).into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "error": e.message })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}
