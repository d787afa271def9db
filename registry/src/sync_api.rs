//! `/layerlink/v1/` handlers. OWNER: registry-dedup helper.

use crate::server::AppState;

/// Routes under `/layerlink/v1/`, merged into the main router by `server`.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
}
