//! `POST /layerlink/v1/edit`: the edit over HTTP, for publishers (same
//! basic auth as pushing; open when no publisher is configured).
//!
//! The body is JSON (`application/json`, at most 64 MiB):
//!
//! ```json
//! {
//!   "repository": "edge/app", "reference": "v1", "tag": "v1-fixed",
//!   "platform": "linux/arm64",
//!   "layer": 1,
//!   "put": [{"path": "/etc/motd", "content_base64": "aGkK", "mode": 420},
//!           {"path": "/opt/big.bin", "blob": "sha256:…"}],
//!   "rm": ["/var/cache/apt"],
//!   "delete_layers": [2],
//!   "insert_layers": [{"at": 0, "blob": "sha256:…"}],
//!   "dry_run": false
//! }
//! ```
//!
//! Large content is pushed first as a blob of the repository (the usual
//! upload) and named by digest. A put's mode, uid, gid and mtime default
//! to 0644, 0, 0 and now. The answer is the [`crate::edit::EditOutcome`] as
//! JSON; errors are `{"error": "…"}` with 400 (bad request), 401, 404
//! (image or blob unknown), 409 (the tag moved during the edit) or 500.

use crate::edit::registry::RegistryImage;
use crate::edit::{
    edit_image, EditError, EditOutcome, EditRequest, InsertOp, InsertSource, PutOp, PutSource,
    Scratch,
};
use crate::http::state::AppState;
use crate::store::storage::Storage;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use layerlink_proto::Digest;
use serde::Deserialize;

/// Largest request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The request body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditBody {
    /// Repository.
    pub repository: String,
    /// Tag or digest of the image.
    pub reference: String,
    /// Tag for the result (default: `reference` when it is a tag).
    #[serde(default)]
    pub tag: Option<String>,
    /// For an index: `os/arch[/variant]`.
    #[serde(default)]
    pub platform: Option<String>,
    /// The layer `put` and `rm` change.
    #[serde(default)]
    pub layer: Option<usize>,
    /// Files to write.
    #[serde(default)]
    pub put: Vec<BodyPut>,
    /// Paths to remove.
    #[serde(default)]
    pub rm: Vec<String>,
    /// Layers to delete.
    #[serde(default)]
    pub delete_layers: Vec<usize>,
    /// Layers to insert.
    #[serde(default)]
    pub insert_layers: Vec<BodyInsert>,
    /// Check only.
    #[serde(default)]
    pub dry_run: bool,
}

/// One file to write.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyPut {
    /// Path in the image.
    pub path: String,
    /// Content, base64 (standard alphabet).
    #[serde(default)]
    pub content_base64: Option<String>,
    /// Content: a blob of the repository.
    #[serde(default)]
    pub blob: Option<String>,
    /// Permission bits (default 0644).
    #[serde(default)]
    pub mode: Option<u32>,
    /// Owner (default 0).
    #[serde(default)]
    pub uid: Option<u64>,
    /// Group (default 0).
    #[serde(default)]
    pub gid: Option<u64>,
    /// Modification time (default now).
    #[serde(default)]
    pub mtime: Option<u64>,
}

/// One layer to insert: a tar blob of the repository.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyInsert {
    /// Position.
    pub at: usize,
    /// The tar blob (plain, gzip or zstd).
    pub blob: String,
}

/// The route, to merge into the server's router.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/layerlink/v1/edit", post(handle))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

fn error(status: StatusCode, msg: &str) -> Response {
    (status, Json(serde_json::json!({ "error": msg }))).into_response()
}

async fn handle(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let config = state.config();
    if config.has_publisher_auth() {
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if crate::auth::publisher_for_authorization(&config, auth).is_none() {
            let mut r = error(StatusCode::UNAUTHORIZED, "publisher credentials required");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"layerlink\""),
            );
            return r;
        }
    }
    let body: EditBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad edit request: {e}")),
    };
    let storage = state.storage.clone();
    let result = tokio::task::spawn_blocking(move || run(&storage, &body)).await;
    match result {
        Ok(Ok(outcome)) => (StatusCode::OK, Json(outcome)).into_response(),
        Ok(Err(e)) => {
            let status = match e {
                EditError::Invalid(_) => StatusCode::BAD_REQUEST,
                EditError::NotFound(_) => StatusCode::NOT_FOUND,
                EditError::Conflict(_) => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            if status == StatusCode::INTERNAL_SERVER_ERROR {
                tracing::error!("edit failed: {e:#}");
            }
            error(status, &format!("{e:#}"))
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("edit task failed: {e}"),
        ),
    }
}

fn digest(s: &str) -> Result<Digest, EditError> {
    Digest::parse(s).map_err(|_| EditError::Invalid(format!("{s:?} is not a sha256 digest")))
}

/// Run an edit request against the store (blocking).
pub fn run(storage: &Storage, body: &EditBody) -> Result<EditOutcome, EditError> {
    // An edit ingests layers and stores a manifest: not while the garbage
    // collector decides (see `Storage::push_guard`).
    let _push = storage.push_guard();
    let backend = RegistryImage::new(storage, &body.repository)?;
    let scratch = Scratch::create(&storage.data_dir().join("tmp"), "edit-body-")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut puts = Vec::new();
    for p in &body.put {
        let source = match (&p.content_base64, &p.blob) {
            (Some(b64), None) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|e| EditError::Invalid(format!("put {}: bad base64: {e}", p.path)))?;
                let blob = scratch.write_blob("content", &bytes)?;
                PutSource::File(blob.path)
            }
            (None, Some(d)) => {
                let d = digest(d)?;
                if !storage.meta().blob_linked(&body.repository, &d)? {
                    return Err(EditError::NotFound(format!(
                        "blob {d} is not in repository {}",
                        body.repository
                    )));
                }
                PutSource::Blob(d)
            }
            _ => {
                return Err(EditError::Invalid(format!(
                    "put {}: give exactly one of content_base64 and blob",
                    p.path
                )))
            }
        };
        puts.push(PutOp {
            dest: p.path.clone(),
            source,
            mode: Some(p.mode.unwrap_or(0o644)),
            uid: Some(p.uid.unwrap_or(0)),
            gid: Some(p.gid.unwrap_or(0)),
            mtime: Some(p.mtime.unwrap_or(now)),
        });
    }
    let mut inserts = Vec::new();
    for i in &body.insert_layers {
        let d = digest(&i.blob)?;
        if !storage.meta().blob_linked(&body.repository, &d)? {
            return Err(EditError::NotFound(format!(
                "blob {d} is not in repository {}",
                body.repository
            )));
        }
        inserts.push(InsertOp {
            at: i.at,
            source: InsertSource::Blob(d),
        });
    }
    let req = EditRequest {
        tag: body.tag.clone(),
        platform: body.platform.clone(),
        layer: body.layer,
        puts,
        removes: body.rm.clone(),
        delete_layers: body.delete_layers.clone(),
        inserts,
        dry_run: body.dry_run,
    };
    let outcome = edit_image(&backend, &body.reference, &req);
    drop(scratch);
    outcome
}
