//! `/layerlink/v1/` handlers (see `proto/SPEC.md`).
//!
//! Each handler authenticates the device by its bearer token, checks that
//! it may read every repository it names (a repository it may not read is
//! answered exactly like a bad token: 401), decodes the postcard body
//! (at most [`MAX_MESSAGE_BYTES`]) and runs the request's core function on
//! a blocking thread. The core functions ([`plan_request`],
//! [`prepare_archive`], [`prepare_objects`], [`report_request`]) take an
//! [`ImageStore`] and the device id, so they are tested without HTTP.
//!
//! Archives stream: a blocking thread writes the gzip'd tar into 64 KiB
//! chunks on a bounded channel that feeds the response body, so an archive
//! is never held in memory and a client that goes away stops the writer.

use super::state::AppState;
use crate::auth;
use crate::config::Device;
use crate::store::index;
use crate::sync::access;
use crate::sync::archive::{self, Metadata};
use crate::sync::devices;
use crate::sync::plan::{self, Dedup, HeldObjects, ImageStore};
pub use crate::sync::SyncError;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use layerlink_proto::archive::FEATURES_HEADER;
use layerlink_proto::limits::{
    MAX_IMAGES_PER_PLAN, MAX_MESSAGE_BYTES, MAX_NAME_BYTES, MAX_REPAIR_OBJECTS,
};
use layerlink_proto::msg::{
    ArchiveRequest, HeldSet, ObjectsRequest, PlanRequest, PlanResponse, Report, ReportAck,
    ARCHIVE_CONTENT_TYPE, CONTENT_TYPE, HEADER_NEW_BYTES,
};
use layerlink_proto::{Digest, ErrorCode};
use redb::ReadableDatabase as _;
use std::collections::HashSet;
use std::io::{self, Write};
use std::sync::Arc;

/// Most images one report may list.
pub const MAX_REPORTED_IMAGES: usize = 4096;
/// Size of the chunks an archive response is streamed in.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// The HTTP form of a [`SyncError`]: the status its code names, the
/// postcard [`ErrorBody`](layerlink_proto::ErrorBody), and a bearer
/// challenge on 401.
impl IntoResponse for SyncError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = postcard::to_allocvec(&self.body()).unwrap_or_default();
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
            body,
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"layerlink\""),
            );
        }
        resp
    }
}

fn check_name(what: &str, s: &str) -> Result<(), SyncError> {
    if s.is_empty() || s.len() > MAX_NAME_BYTES {
        return Err(SyncError::new(
            ErrorCode::BadRequest,
            format!("{what} must be 1 to {MAX_NAME_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// `POST /plan`: record holdings, plan each image.
pub fn plan_request(
    store: &dyn ImageStore,
    device: &Device,
    req: &PlanRequest,
) -> Result<PlanResponse, SyncError> {
    if req.images.len() > MAX_IMAGES_PER_PLAN {
        return Err(SyncError::new(
            ErrorCode::TooLarge,
            format!(
                "{} images in one plan; at most {MAX_IMAGES_PER_PLAN}",
                req.images.len()
            ),
        ));
    }
    for i in &req.images {
        check_name("repository", &i.repository)?;
        check_name("reference", &i.reference)?;
    }
    for i in &req.images {
        check_read(device, &i.repository)?;
    }
    let (held, holdings_hash) =
        devices::resolve_holdings(store.database(), &device.id, &req.holdings)?;
    let held = access::readable_holdings(store, device, &held)?;
    let images = req
        .images
        .iter()
        .map(|i| plan::plan_image(store, i, &req.platform, &held))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PlanResponse {
        holdings_hash,
        images,
    })
}

/// What an archive response will carry.
#[derive(Debug, Clone)]
pub struct ArchiveJob {
    /// Manifest and config JSON, when the request asked for metadata.
    pub metadata: Option<(Vec<u8>, Vec<u8>)>,
    /// Layers to send, in image order, each once.
    pub layers: Vec<Digest>,
    /// What the device holds.
    pub held: HeldSet,
    /// Uncompressed bytes of new file content ([`HEADER_NEW_BYTES`]).
    pub new_bytes: u64,
}

/// `POST /archive`, before streaming: check the request against the
/// manifest and compute the new-content size.
pub fn prepare_archive(
    store: &dyn ImageStore,
    device: &Device,
    req: &ArchiveRequest,
) -> Result<ArchiveJob, SyncError> {
    check_name("repository", &req.repository)?;
    check_read(device, &req.repository)?;
    let (held, _) = devices::resolve_holdings(store.database(), &device.id, &req.holdings)?;
    let held = access::readable_holdings(store, device, &held)?;
    let md = req.manifest_digest.to_string();
    let img = plan::resolve_image(store, &req.repository, &md, None)?;
    let wanted: HashSet<Digest> = req.layers.iter().copied().collect();
    for l in &wanted {
        if !img.diff_ids.contains(l) {
            return Err(SyncError::new(
                ErrorCode::BadRequest,
                format!(
                    "layer {l} is not part of manifest {md} in {}",
                    req.repository
                ),
            ));
        }
    }
    let mut seen = HashSet::new();
    let layers: Vec<Digest> = img
        .diff_ids
        .iter()
        .filter(|d| wanted.contains(d) && seen.insert(**d))
        .copied()
        .collect();
    plan::ensure_ingested(store, &img)?;
    let new_bytes = stream_new_bytes(store.database(), &layers, &held)?;
    Ok(ArchiveJob {
        metadata: req
            .metadata
            .then(|| (img.manifest.bytes.clone(), img.config.clone())),
        layers,
        held,
        new_bytes,
    })
}

/// New-content bytes of a stream of `layers` for a device holding `held`
/// (the same decisions the archive writer makes).
pub fn stream_new_bytes(
    db: &redb::Database,
    layers: &[Digest],
    held: &HeldSet,
) -> Result<u64, SyncError> {
    let txn = db.begin_read().map_err(SyncError::internal)?;
    let (metas, lookups) = plan::load_layer_metas(&txn, layers, |_| true)?;
    let objects = HeldObjects::load(&txn, held, lookups).map_err(SyncError::internal)?;
    let mut dedup = Dedup::new(&objects);
    let mut total = 0;
    for (d, m) in layers.iter().zip(&metas) {
        total += plan::layer_cost(&txn, d, m, &mut dedup)
            .map_err(SyncError::internal)?
            .new_bytes;
    }
    Ok(total)
}

/// `POST /objects`, before streaming: every digest must be an object of
/// a layer of the named repository, which the device may read
/// ([`access::check_objects_in`]); otherwise the answer is 401, whether or
/// not the object exists elsewhere. Returns `(digest, size)` in request
/// order (duplicates dropped) and the total size.
pub fn prepare_objects(
    store: &dyn ImageStore,
    device: &Device,
    req: &ObjectsRequest,
) -> Result<(Vec<(Digest, u64)>, u64), SyncError> {
    check_name("repository", &req.repository)?;
    check_read(device, &req.repository)?;
    if req.digests.len() > MAX_REPAIR_OBJECTS {
        return Err(SyncError::new(
            ErrorCode::TooLarge,
            format!(
                "{} objects asked for; at most {MAX_REPAIR_OBJECTS}",
                req.digests.len()
            ),
        ));
    }
    access::check_objects_in(store, device, &req.repository, &req.digests)?;
    let txn = store.database().begin_read().map_err(SyncError::internal)?;
    let objects = store.objects();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut total = 0;
    for d in &req.digests {
        if !seen.insert(*d) {
            continue;
        }
        let meta = index::object_meta(&txn, d).map_err(SyncError::internal)?;
        match meta {
            Some(m) if objects.exists(d) => {
                total += m.size;
                out.push((*d, m.size));
            }
            _ => {
                return Err(SyncError::new(
                    ErrorCode::NotFound,
                    format!("object {d} is not in the registry"),
                ))
            }
        }
    }
    Ok((out, total))
}

/// `POST /report`: record holdings and the images held.
pub fn report_request(
    store: &dyn ImageStore,
    device: &Device,
    req: &Report,
) -> Result<ReportAck, SyncError> {
    if req.images.len() > MAX_REPORTED_IMAGES {
        return Err(SyncError::new(
            ErrorCode::TooLarge,
            format!(
                "{} images reported; at most {MAX_REPORTED_IMAGES}",
                req.images.len()
            ),
        ));
    }
    for i in &req.images {
        check_name("repository", &i.image.repository)?;
        check_name("reference", &i.image.reference)?;
    }
    let (_, holdings_hash) =
        devices::resolve_holdings(store.database(), &device.id, &req.holdings)?;
    // Images of repositories the device may not read (any more) are not
    // recorded: the fleet view only shows what the grant allows.
    let images: Vec<_> = req
        .images
        .iter()
        .filter(|i| device.may_read(&i.image.repository))
        .cloned()
        .collect();
    devices::record_images(store.database(), &device.id, &images)?;
    Ok(ReportAck { holdings_hash })
}

// ---- HTTP ------------------------------------------------------------------

/// Routes under `/layerlink/v1/`, merged into the main router by `server`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/layerlink/v1/plan", post(plan_handler))
        .route("/layerlink/v1/archive", post(archive_handler))
        .route("/layerlink/v1/objects", post(objects_handler))
        .route("/layerlink/v1/report", post(report_handler))
}

fn authenticate<'a>(state: &'a AppState, headers: &HeaderMap) -> Result<&'a Device, SyncError> {
    let h = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    auth::device_for_authorization(&state.config, h)
        .ok_or_else(|| SyncError::new(ErrorCode::Unauthorized, "missing or unknown device token"))
}

/// The device may read `repository` (else 401, as for an unknown token).
pub fn check_read(device: &Device, repository: &str) -> Result<(), SyncError> {
    if device.may_read(repository) {
        Ok(())
    } else {
        Err(SyncError::new(
            ErrorCode::Forbidden,
            format!("device {} may not read repository {repository}", device.id),
        ))
    }
}

fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = c.source();
    }
    false
}

async fn read_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    what: &str,
) -> Result<T, SyncError> {
    let too_large = || {
        SyncError::new(
            ErrorCode::TooLarge,
            format!("{what} is larger than {MAX_MESSAGE_BYTES} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_MESSAGE_BYTES as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, MAX_MESSAGE_BYTES)
        .await
        .map_err(|e| {
            let inner = e.into_inner();
            if is_length_limit(&*inner) {
                too_large()
            } else {
                SyncError::new(
                    ErrorCode::BadRequest,
                    format!("reading the {what}: {inner}"),
                )
            }
        })?;
    postcard::from_bytes(&bytes).map_err(|e| {
        SyncError::new(
            ErrorCode::BadRequest,
            format!("the body is not a valid {what}: {e}"),
        )
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SyncError> + Send + 'static,
) -> Result<T, SyncError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(SyncError::internal)?
}

fn postcard_response<T: serde::Serialize>(v: &T) -> Response {
    match postcard::to_allocvec(v) {
        Ok(body) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
            body,
        )
            .into_response(),
        Err(e) => SyncError::internal(e).into_response(),
    }
}

fn respond(r: Result<Response, SyncError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn plan_handler(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    respond(
        async {
            let device = authenticate(&st, &headers)?;
            let req: PlanRequest = read_body(&headers, body, "PlanRequest").await?;
            for i in &req.images {
                check_read(device, &i.repository)?;
            }
            let (storage, device) = (st.storage.clone(), device.clone());
            let resp = blocking(move || plan_request(&*storage, &device, &req)).await?;
            Ok(postcard_response(&resp))
        }
        .await,
    )
}

async fn report_handler(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    respond(
        async {
            let device = authenticate(&st, &headers)?;
            let req: Report = read_body(&headers, body, "Report").await?;
            let (storage, device) = (st.storage.clone(), device.clone());
            let resp = blocking(move || report_request(&*storage, &device, &req)).await?;
            Ok(postcard_response(&resp))
        }
        .await,
    )
}

/// A `Write` that sends 64 KiB chunks down a bounded channel (blocking when
/// the client reads slowly; failing when it went away).
pub struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    /// A writer feeding `tx`.
    pub fn new(tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>) -> ChannelWriter {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK_BYTES),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK_BYTES - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Stream what `write` produces as a response body with these headers.
fn streaming_response<F>(new_bytes: u64, write: F) -> Response
where
    F: FnOnce(ChannelWriter) -> Result<ChannelWriter, String> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    let err_tx = tx.clone();
    tokio::task::spawn_blocking(move || {
        let result =
            write(ChannelWriter::new(tx)).and_then(|mut w| w.flush().map_err(|e| e.to_string()));
        if let Err(e) = result {
            tracing::warn!("archive stream stopped: {e}");
            let _ = err_tx.blocking_send(Err(io::Error::other(e)));
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(ARCHIVE_CONTENT_TYPE),
    );
    h.insert(HEADER_NEW_BYTES, HeaderValue::from(new_bytes));
    resp
}

async fn archive_handler(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    respond(
        async {
            let device = authenticate(&st, &headers)?;
            let req: ArchiveRequest = read_body(&headers, body, "ArchiveRequest").await?;
            check_read(device, &req.repository)?;
            let features = headers
                .get(FEATURES_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(archive::Features::parse)
                .unwrap_or_default();
            let (storage, device) = (st.storage.clone(), device.clone());
            let job = blocking(move || prepare_archive(&*storage, &device, &req)).await?;
            let storage: Arc<crate::store::storage::Storage> = st.storage.clone();
            Ok(streaming_response(job.new_bytes, move |w| {
                let meta = job.metadata.as_ref().map(|(m, c)| Metadata {
                    manifest: m,
                    config: c,
                });
                archive::write_image_archive_with(
                    storage.db(),
                    &index::object_store(&storage),
                    meta,
                    &job.layers,
                    &job.held,
                    features,
                    w,
                )
                .map_err(|e| e.to_string())
            }))
        }
        .await,
    )
}

async fn objects_handler(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    respond(
        async {
            let device = authenticate(&st, &headers)?;
            let req: ObjectsRequest = read_body(&headers, body, "ObjectsRequest").await?;
            check_read(device, &req.repository)?;
            let (storage, device) = (st.storage.clone(), device.clone());
            let (wanted, total) =
                blocking(move || prepare_objects(&*storage, &device, &req)).await?;
            let storage = st.storage.clone();
            Ok(streaming_response(total, move |w| {
                archive::write_objects_archive(&index::object_store(&storage), &wanted, w)
                    .map_err(|e| e.to_string())
            }))
        }
        .await,
    )
}

#[cfg(test)]
mod tests;
