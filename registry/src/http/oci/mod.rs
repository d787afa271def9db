//! OCI distribution API handlers under `/v2/`.
//!
//! One catch-all route takes every `/v2/…` request; [`route::parse`] reads
//! the repository name (which may contain slashes) and the operation from
//! the end of the path. Handlers do their redb and file work in
//! `spawn_blocking`; blob bodies stream through a bounded channel to a
//! blocking writer that hashes while writing, so no blob is held in memory.
//!
//! | path | methods | module |
//! |---|---|---|
//! | `/v2/` | GET HEAD | here |
//! | `/v2/_catalog` | GET | [`manifests`] |
//! | `/v2/<name>/tags/list` | GET | [`manifests`] |
//! | `/v2/<name>/manifests/<ref>` | GET HEAD PUT DELETE | [`manifests`] |
//! | `/v2/<name>/blobs/<digest>` | GET HEAD DELETE | [`blobs`] |
//! | `/v2/<name>/blobs/uploads/[<id>]` | POST PATCH PUT GET DELETE | [`blobs`] |
//!
//! With publishers configured every request needs a publisher's Basic
//! credentials, except that a device's bearer token may `GET`/`HEAD` the
//! manifests, blobs and referrers of the repositories it may sync (its agent
//! reads cosign signatures there).

pub mod blobs;
pub mod error;
pub mod manifest;
pub mod manifests;
pub mod route;

use crate::http::state::AppState;
use crate::store::storage::BlobWriter;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use error::OciError;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;

/// The result of an OCI handler.
pub type Reply = Result<Response, OciError>;

/// Routes under `/v2/`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v2/", get(base))
        .route("/v2", get(base))
        .route("/v2/{*path}", any(dispatch))
}

/// `GET /v2/`: the API version check (answers 401 when auth is needed).
async fn base(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let reply = check_auth(&state, &headers).map(|()| {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{}",
        )
            .into_response()
    });
    finish(reply)
}

async fn dispatch(State(state): State<AppState>, req: Request) -> Response {
    let may_have_body = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    let mut resp = finish(handle(state, req).await);
    if may_have_body && !resp.status().is_success() {
        // The body may be unread: the connection cannot carry another request.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Add the headers every `/v2/` answer carries.
fn finish(reply: Reply) -> Response {
    let mut resp = reply.unwrap_or_else(IntoResponse::into_response);
    resp.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

fn check_auth(state: &AppState, headers: &HeaderMap) -> Result<(), OciError> {
    let config = state.config();
    if !config.has_publisher_auth() {
        return Ok(());
    }
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if crate::auth::publisher_for_authorization(&config, header).is_some() {
        Ok(())
    } else {
        Err(OciError::unauthorized())
    }
}

/// What a handler gets: the state and the request, taken apart.
pub struct Ctx {
    /// Shared state.
    pub state: AppState,
    /// Request method.
    pub method: Method,
    /// Request headers.
    pub headers: HeaderMap,
    /// Query parameters (last value wins).
    pub query: HashMap<String, String>,
    /// Request body.
    pub body: Body,
}

impl Ctx {
    /// A request header as text.
    pub fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    /// The storage, for moving into `spawn_blocking`.
    pub fn storage(&self) -> Arc<crate::store::storage::Storage> {
        self.state.storage.clone()
    }
}

/// A device reads signatures, manifests and blobs with its bearer token:
/// `GET`/`HEAD` of `manifests`, `blobs` and `referrers` in a repository the
/// device may read (its agent checks cosign signatures, `--trust-key`).
fn device_may_read(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    route: Option<&route::Route<'_>>,
) -> bool {
    use route::Route::*;
    let name = match route {
        Some(Manifest { name, .. } | Blob { name, .. } | Referrers { name, .. }) => *name,
        _ => return false,
    };
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    matches!(*method, Method::GET | Method::HEAD)
        && crate::auth::device_for_authorization(&state.config(), header)
            .is_some_and(|d| d.may_read(name))
}

async fn handle(state: AppState, req: Request) -> Reply {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let rest = path.strip_prefix("/v2/").unwrap_or("");
    let rest = rest.replace("%3A", ":").replace("%3a", ":");
    let route = route::parse(&rest);
    if let Err(e) = check_auth(&state, &parts.headers) {
        if !device_may_read(&state, &parts.method, &parts.headers, route.as_ref()) {
            return Err(e);
        }
    }
    let Some(route) = route else {
        return Err(OciError::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("no such endpoint: {path}"),
        ));
    };
    if let Some(name) = route.name() {
        if !route::valid_name(name) {
            return Err(OciError::name_invalid(name));
        }
    }
    let query = parts
        .uri
        .query()
        .map(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let ctx = Ctx {
        state,
        method: parts.method,
        headers: parts.headers,
        query,
        body,
    };
    use route::Route::*;
    match (ctx.method.clone(), route) {
        (Method::GET, Catalog) => manifests::catalog(ctx).await,
        (Method::GET, Tags { name }) => manifests::tags_list(ctx, name).await,
        (Method::GET | Method::HEAD, Manifest { name, reference }) => {
            manifests::get(ctx, name, reference).await
        }
        (Method::PUT, Manifest { name, reference }) => manifests::put(ctx, name, reference).await,
        (Method::DELETE, Manifest { name, reference }) => {
            manifests::delete(ctx, name, reference).await
        }
        (Method::GET, Referrers { name, digest }) => manifests::referrers(ctx, name, digest).await,
        (Method::GET | Method::HEAD, Blob { name, digest }) => blobs::get(ctx, name, digest).await,
        (Method::DELETE, Blob { name, digest }) => blobs::delete(ctx, name, digest).await,
        (Method::POST, UploadStart { name }) => blobs::start_upload(ctx, name).await,
        (Method::PATCH, Upload { name, id }) => blobs::patch_upload(ctx, name, id).await,
        (Method::PUT, Upload { name, id }) => blobs::put_upload(ctx, name, id).await,
        (Method::GET, Upload { name, id }) => blobs::upload_status(ctx, name, id).await,
        (Method::DELETE, Upload { name, id }) => blobs::cancel_upload(ctx, name, id).await,
        (m, _) => Err(OciError::unsupported(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {m} not supported on {path}"),
        )),
    }
}

/// Run blocking storage work off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, OciError> + Send + 'static,
) -> Result<T, OciError> {
    tokio::task::spawn_blocking(f).await?
}

/// Why a request body could not be received in full.
#[derive(Debug)]
pub enum ReceiveError {
    /// The client's body failed (connection closed early, bad chunking).
    Body(axum::Error),
    /// Writing the temp file failed.
    Io(std::io::Error),
}

/// Stream `body` into `writer` (hashing as it goes) through a bounded
/// channel to a blocking thread. The writer comes back in every case so the
/// caller can commit it or undo the partial chunk.
pub async fn receive(body: Body, writer: BlobWriter) -> (BlobWriter, Result<(), ReceiveError>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    let task = tokio::task::spawn_blocking(move || {
        let mut writer = writer;
        while let Some(chunk) = rx.blocking_recv() {
            if let Err(e) = writer.write_all(&chunk) {
                return (writer, Err(ReceiveError::Io(e)));
            }
        }
        (writer, Ok(()))
    });
    let mut stream = body.into_data_stream();
    let mut body_result = Ok(());
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                if tx.send(chunk).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Err(e) => {
                body_result = Err(ReceiveError::Body(e));
                break;
            }
        }
    }
    drop(tx);
    match task.await {
        Ok((writer, Ok(()))) => (writer, body_result),
        Ok((writer, Err(e))) => (writer, Err(e)),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

impl ReceiveError {
    /// The OCI error answer for a failed upload body.
    pub fn into_oci(self) -> OciError {
        match self {
            ReceiveError::Body(e) => {
                OciError::upload_invalid(format!("upload body incomplete: {e}"))
            }
            ReceiveError::Io(e) => OciError::internal(e),
        }
    }
}

/// A header value from text known to be visible ASCII.
pub fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}
