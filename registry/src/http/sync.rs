//! `/layerlink/v1/` handlers (see `proto/SPEC.md`).
//!
//! Each handler starts the same way (`accept`): it authenticates the
//! device by its bearer token, decodes the postcard body (at most
//! [`MAX_MESSAGE_BYTES`]) and checks that the device may read every
//! repository it names (a repository it may not read is answered exactly
//! like a bad token: 401); then it runs the request's core function on
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
use crate::sync::resume;
pub use crate::sync::SyncError;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use layerlink_proto::archive::FEATURES_HEADER;
use layerlink_proto::framing::FramingRequest;
use layerlink_proto::limits::{
    MAX_IMAGES_PER_PLAN, MAX_MESSAGE_BYTES, MAX_NAME_BYTES, MAX_REPAIR_OBJECTS,
};
use layerlink_proto::msg::{
    ArchiveRequest, HeldSet, ImageRef, ObjectsRequest, PlanRequest, PlanResponse, Report,
    ReportAck, CONTENT_TYPE, HEADER_NEW_BYTES,
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

/// At most `max` images (`what`: "images in one plan"), each with both
/// names 1 to [`MAX_NAME_BYTES`] bytes.
fn check_images<'a>(
    images: impl ExactSizeIterator<Item = &'a ImageRef>,
    max: usize,
    what: &str,
) -> Result<(), SyncError> {
    at_most(images.len(), max, what)?;
    for i in images {
        check_name("repository", &i.repository)?;
        check_name("reference", &i.reference)?;
    }
    Ok(())
}

/// A request lists at most `max` things (`what`: "images in one plan").
fn at_most(n: usize, max: usize, what: &str) -> Result<(), SyncError> {
    if n > max {
        return Err(SyncError::new(
            ErrorCode::TooLarge,
            format!("{n} {what}; at most {max}"),
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
    check_images(req.images.iter(), MAX_IMAGES_PER_PLAN, "images in one plan")?;
    for i in &req.images {
        check_read(device, &i.repository)?;
    }
    let (held, holdings_hash) =
        devices::resolve_holdings(store.devices(), &device.id, &req.holdings)?;
    // Ingest the requested images before the held layers are filtered: a
    // replica that has not served an image yet would otherwise not know its
    // layers, count the device's copies as unreadable and resend them.
    let resolved = req
        .images
        .iter()
        .map(|i| plan::resolve_ingested(store, &i.repository, &i.reference, Some(&req.platform)))
        .collect::<Result<Vec<_>, _>>()?;
    let held = access::readable_holdings(store, device, &held)?;
    let images = req
        .images
        .iter()
        .zip(&resolved)
        .map(|(i, img)| plan::plan_resolved(store, i, img, &held))
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
    let (held, _) = devices::resolve_holdings(store.devices(), &device.id, &req.holdings)?;
    let md = req.manifest_digest.to_string();
    // Ingested before the held layers are filtered (see `plan_request`).
    let img = plan::resolve_ingested(store, &req.repository, &md, None)?;
    let held = access::readable_holdings(store, device, &held)?;
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
    at_most(req.digests.len(), MAX_REPAIR_OBJECTS, "objects asked for")?;
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
    let images = req.images.iter().map(|i| &i.image);
    check_images(images, MAX_REPORTED_IMAGES, "images reported")?;
    let (_, holdings_hash) = devices::resolve_holdings(store.devices(), &device.id, &req.holdings)?;
    // Images of repositories the device may not read (any more) are not
    // recorded: the fleet view only shows what the grant allows.
    let images: Vec<_> = req
        .images
        .iter()
        .filter(|i| device.may_read(&i.image.repository))
        .cloned()
        .collect();
    devices::record_images(store.devices(), &device.id, &images)?;
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
        .route("/layerlink/v1/framing", post(framing_handler))
}

/// A sync request body, as the handlers' shared start ([`accept`]) needs
/// it: its name in errors, what it asks for (the `image` of the log lines
/// and of the fleet view's last sync) and the repositories the device must
/// be allowed to read before anything runs.
trait SyncRequest: serde::de::DeserializeOwned {
    /// The message's name in errors.
    const NAME: &'static str;
    /// What it asks for, for the log.
    fn label(&self) -> String;
    /// The repositories checked with [`check_read`] up front.
    fn repositories(&self) -> Vec<&str>;
}

/// `repo:ref,repo:ref,…`
fn image_list<'a>(images: impl Iterator<Item = &'a ImageRef>) -> String {
    images
        .map(|i| format!("{}:{}", i.repository, i.reference))
        .collect::<Vec<_>>()
        .join(",")
}

impl SyncRequest for PlanRequest {
    const NAME: &'static str = "PlanRequest";
    fn label(&self) -> String {
        image_list(self.images.iter())
    }
    fn repositories(&self) -> Vec<&str> {
        self.images.iter().map(|i| i.repository.as_str()).collect()
    }
}

impl SyncRequest for Report {
    const NAME: &'static str = "Report";
    fn label(&self) -> String {
        image_list(self.images.iter().map(|i| &i.image))
    }
    /// None: images of repositories the device may not read (any more)
    /// are left out of the record ([`report_request`]), not refused.
    fn repositories(&self) -> Vec<&str> {
        Vec::new()
    }
}

impl SyncRequest for ArchiveRequest {
    const NAME: &'static str = "ArchiveRequest";
    fn label(&self) -> String {
        format!("{}@{}", self.repository, self.manifest_digest)
    }
    fn repositories(&self) -> Vec<&str> {
        vec![&self.repository]
    }
}

impl SyncRequest for ObjectsRequest {
    const NAME: &'static str = "ObjectsRequest";
    fn label(&self) -> String {
        self.repository.clone()
    }
    fn repositories(&self) -> Vec<&str> {
        vec![&self.repository]
    }
}

/// Who asked for what, filled in by [`accept`] as it learns it, so that a
/// refusal is logged with whatever was known by then.
#[derive(Default)]
struct Asked {
    /// The device id, once authenticated.
    device: Option<String>,
    /// [`SyncRequest::label`], once the body is decoded.
    image: String,
}

impl Asked {
    /// Where a streamed response of `kind` goes.
    fn target(&self, st: &AppState, kind: &'static str) -> SyncTarget {
        SyncTarget {
            storage: st.storage.clone(),
            kind,
            device: self.device.clone().unwrap_or_default(),
            image: self.image.clone(),
        }
    }
}

/// What every sync handler does first: authenticate the device by its
/// bearer token, decode the body, check that the device may read every
/// repository the request names, then run the request's core function
/// (`core`) on a blocking thread. `asked` notes who and what on the way.
async fn accept<T, R>(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
    asked: &mut Asked,
    core: fn(&dyn ImageStore, &Device, &T) -> Result<R, SyncError>,
) -> Result<R, SyncError>
where
    T: SyncRequest + Send + 'static,
    R: Send + 'static,
{
    let device = authenticate(st, headers)?;
    asked.device = Some(device.id.clone());
    let req: T = read_body(headers, body, T::NAME).await?;
    asked.image = req.label();
    for repository in req.repositories() {
        check_read(&device, repository)?;
    }
    let storage = st.storage.clone();
    blocking(move || core(&*storage, &device, &req)).await
}

fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Device, SyncError> {
    let h = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    auth::device_for_authorization(&state.config(), h)
        .cloned()
        .ok_or_else(|| SyncError::new(ErrorCode::Unauthorized, "missing or unknown device token"))
}

/// The answer to a refused sync request. Logs it (at info, the default
/// level) when the device was known: device id, what it asked for, why.
/// Refusals before that (a bad token) are logged by the request log with
/// their status.
fn refused(st: &AppState, kind: &str, device: Option<&str>, image: &str, e: SyncError) -> Response {
    if let Some(device) = device {
        // The fleet view shows it as the device's last sync outcome.
        if e.code != ErrorCode::Internal {
            let (storage, device, image, kind) = (
                st.storage.clone(),
                device.to_owned(),
                image.to_owned(),
                kind.to_owned(),
            );
            let outcome = format!("refused ({}): {}", e.code.http_status(), e.message);
            tokio::task::spawn_blocking(move || {
                if let Err(e) = devices::record_last_sync(
                    storage.devices(),
                    &device,
                    &image,
                    &kind,
                    &outcome,
                    0,
                ) {
                    tracing::warn!(device, "recording the last sync: {}", e.message);
                }
            });
        }
        tracing::info!(
            device,
            image,
            request = kind,
            status = e.code.http_status(),
            reason = %e.message,
            "device sync refused"
        );
    }
    e.into_response()
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

async fn plan_handler(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let start = std::time::Instant::now();
    let mut asked = Asked::default();
    let r = accept(&st, &headers, body, &mut asked, plan_request).await;
    let secs = start.elapsed().as_secs_f64();
    match r {
        Ok(resp) => {
            let (mut needed, mut bytes) = (0usize, 0u64);
            for l in resp.images.iter().flat_map(|i| &i.layers) {
                if let layerlink_proto::msg::LayerState::Needed(c) = &l.state {
                    needed += 1;
                    bytes += c.new_bytes;
                }
            }
            let outcome = if needed == 0 { "up_to_date" } else { "update" };
            crate::http::metrics::plan_done(secs, outcome);
            tracing::info!(
                device = asked.device.as_deref().unwrap_or(""),
                images = asked.image,
                outcome,
                layers_needed = needed,
                new_bytes = bytes,
                ms = (secs * 1000.0) as u64,
                "device plan"
            );
            postcard_response(&resp)
        }
        Err(e) => {
            crate::http::metrics::plan_done(secs, "refused");
            refused(&st, "plan", asked.device.as_deref(), &asked.image, e)
        }
    }
}

async fn report_handler(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let mut asked = Asked::default();
    let r = accept(&st, &headers, body, &mut asked, report_request).await;
    match r {
        Ok(ack) => {
            tracing::info!(
                device = asked.device.as_deref().unwrap_or(""),
                images = asked.image,
                "device report"
            );
            postcard_response(&ack)
        }
        // A refused report is recorded without its image list.
        Err(e) => refused(&st, "report", asked.device.as_deref(), "", e),
    }
}

/// A `Write` that sends 64 KiB chunks down a bounded channel (blocking when
/// the client reads slowly; failing when it went away).
pub struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    sent: Arc<std::sync::atomic::AtomicU64>,
}

impl ChannelWriter {
    /// A writer feeding `tx`.
    pub fn new(tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>) -> ChannelWriter {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK_BYTES),
            sent: Arc::default(),
        }
    }

    /// Bytes handed to the response body so far (shared, so it can be
    /// read after the writer is gone).
    pub fn sent(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.sent.clone()
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        let n = chunk.len() as u64;
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))?;
        self.sent.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        Ok(())
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

/// Who a streamed sync response goes to, for its log line and metrics.
struct SyncTarget {
    /// The store (the outcome is recorded for the fleet view).
    storage: Arc<crate::store::storage::Storage>,
    /// `archive` or `objects`.
    kind: &'static str,
    device: String,
    /// `repository@manifest-digest` (archive) or `repository` (objects).
    image: String,
}

/// Stream what `write` produces as a response body with these headers;
/// when it ends, log one line (device, image, bytes, outcome) and count
/// the bytes in the metrics.
fn streaming_response<F>(
    new_bytes: u64,
    features: archive::Features,
    target: SyncTarget,
    write: F,
) -> Response
where
    F: FnOnce(ChannelWriter) -> Result<ChannelWriter, String> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    let err_tx = tx.clone();
    tokio::task::spawn_blocking(move || {
        let start = std::time::Instant::now();
        let writer = ChannelWriter::new(tx);
        let sent = writer.sent();
        let result = write(writer).and_then(|mut w| w.flush().map_err(|e| e.to_string()));
        let bytes = sent.load(std::sync::atomic::Ordering::Relaxed);
        let outcome = match &result {
            Ok(()) => "complete",
            Err(e) if e.contains("the client went away") => "client_gone",
            Err(_) => "failed",
        };
        crate::http::metrics::sync_sent(target.kind, outcome, bytes);
        let ms = start.elapsed().as_millis() as u64;
        match &result {
            Ok(()) => tracing::info!(
                device = target.device,
                image = target.image,
                request = target.kind,
                bytes,
                new_bytes,
                outcome,
                ms,
                "device sync"
            ),
            Err(e) => tracing::warn!(
                device = target.device,
                image = target.image,
                request = target.kind,
                bytes,
                new_bytes,
                outcome,
                ms,
                error = %e,
                "device sync"
            ),
        }
        if let Err(e) = devices::record_last_sync(
            target.storage.devices(),
            &target.device,
            &target.image,
            target.kind,
            outcome,
            bytes,
        ) {
            tracing::warn!(
                device = target.device,
                "recording the last sync: {}",
                e.message
            );
        }
        if let Err(e) = result {
            let _ = err_tx.blocking_send(Err(io::Error::other(e)));
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(features.encoding().content_type()),
    );
    h.insert(HEADER_NEW_BYTES, HeaderValue::from(new_bytes));
    resp
}

/// The archive features a request's `layerlink-features` header lists.
fn features_of(headers: &HeaderMap) -> archive::Features {
    headers
        .get(FEATURES_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(archive::Features::parse)
        .unwrap_or_default()
}

async fn archive_handler(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let mut asked = Asked::default();
    let r = async {
        let job = accept(&st, &headers, body, &mut asked, prepare_archive).await?;
        let features = features_of(&headers);
        let target = asked.target(&st, "archive");
        let device = target.device.clone();
        // A retry after a cut: the kept archive from where the device stopped.
        if let Some((id, offset, sha)) = resume_header(&headers) {
            let cache = st.resume.clone();
            let (image, device) = (asked.image.clone(), device.clone());
            let kept = blocking(move || {
                Ok(cache
                    .get(&id, &device, &image)
                    .filter(|k| k.prefix_matches(offset, &sha)))
            })
            .await?;
            if let Some(kept) = kept {
                tracing::info!(
                    device = target.device,
                    image = target.image,
                    offset,
                    "archive resumed"
                );
                let k = kept.clone();
                let mut resp = streaming_response(kept.new_bytes, features, target, move |w| {
                    k.serve(offset, w)
                });
                let h = resp.headers_mut();
                h.insert(resume::HEADER_ARCHIVE_ID, header_value(kept.id()));
                h.insert(resume::HEADER_ARCHIVE_OFFSET, HeaderValue::from(offset));
                return Ok(resp);
            }
        }
        let kept = st.resume.begin(&device, &asked.image, job.new_bytes);
        let id = kept.as_ref().map(|(k, _)| k.id().to_owned());
        let storage = target.storage.clone();
        let mut resp = streaming_response(job.new_bytes, features, target, move |w| {
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
                resume::Tee::new(w, kept),
            )
            .map_err(|e| e.to_string())?
            .finish()
        });
        if let Some(id) = id {
            resp.headers_mut()
                .insert(resume::HEADER_ARCHIVE_ID, header_value(&id));
        }
        Ok(resp)
    }
    .await;
    r.unwrap_or_else(|e| refused(&st, "archive", asked.device.as_deref(), &asked.image, e))
}

/// `layerlink-resume: <id> <offset> <sha256 hex>`, when well formed.
fn resume_header(headers: &HeaderMap) -> Option<(String, u64, String)> {
    let v = headers.get(resume::HEADER_RESUME)?.to_str().ok()?;
    let mut it = v.split_ascii_whitespace();
    let id = it.next()?;
    let offset = it.next()?.parse().ok()?;
    let sha = it.next()?;
    let ok = id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && sha.len() == 64
        && sha.bytes().all(|b| b.is_ascii_hexdigit())
        && it.next().is_none();
    ok.then(|| (id.to_owned(), offset, sha.to_owned()))
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

async fn objects_handler(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let mut asked = Asked::default();
    let r = async {
        let (wanted, total) = accept(&st, &headers, body, &mut asked, prepare_objects).await?;
        let features = features_of(&headers);
        let target = asked.target(&st, "objects");
        let storage = target.storage.clone();
        Ok(streaming_response(total, features, target, move |w| {
            archive::write_objects_archive_with(
                &index::object_store(&storage),
                &wanted,
                features,
                w,
            )
            .map_err(|e| e.to_string())
        }))
    }
    .await;
    r.unwrap_or_else(|e| refused(&st, "objects", asked.device.as_deref(), &asked.image, e))
}

// ---- layer framing (`POST /framing`, `proto/SPEC.md` "Layer framing") ----

/// `POST /framing`, before writing: the checks of an archive of this one
/// layer ([`prepare_archive`]): the device may read the repository, the
/// manifest is one of that repository, the layer one of that manifest
/// (else 400, with the same words whether the layer exists elsewhere or
/// nowhere). Returns the layer.
pub fn prepare_framing(
    store: &dyn ImageStore,
    device: &Device,
    req: &FramingRequest,
) -> Result<Digest, SyncError> {
    check_name("repository", &req.repository)?;
    check_read(device, &req.repository)?;
    let md = req.manifest_digest.to_string();
    let img = plan::resolve_image(store, &req.repository, &md, None)?;
    if !img.diff_ids.contains(&req.layer) {
        return Err(SyncError::new(
            ErrorCode::BadRequest,
            format!(
                "layer {} is not part of manifest {md} in {}",
                req.layer, req.repository
            ),
        ));
    }
    plan::ensure_ingested(store, &img)?;
    Ok(req.layer)
}

/// The compressed framing of `layer`; a layer without one is 404.
pub fn framing_body(store: &dyn ImageStore, layer: &Digest) -> Result<Vec<u8>, SyncError> {
    use crate::sync::framing::{framing_zstd, FramingError};
    framing_zstd(store.database(), &store.objects(), layer).map_err(|e| match e {
        FramingError::Unavailable(..) => SyncError::new(ErrorCode::NotFound, e.to_string()),
        e => SyncError::internal(e),
    })
}

impl SyncRequest for FramingRequest {
    const NAME: &'static str = "FramingRequest";
    fn label(&self) -> String {
        format!("{}@{}", self.repository, self.manifest_digest)
    }
    fn repositories(&self) -> Vec<&str> {
        vec![&self.repository]
    }
}

async fn framing_handler(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let mut asked = Asked::default();
    let r = async {
        let layer = accept(&st, &headers, body, &mut asked, prepare_framing).await?;
        let storage = st.storage.clone();
        let bytes = blocking(move || framing_body(&*storage, &layer)).await?;
        crate::http::metrics::sync_sent("framing", "complete", bytes.len() as u64);
        tracing::info!(
            device = asked.device.as_deref().unwrap_or_default(),
            image = asked.image,
            request = "framing",
            layer = %layer,
            bytes = bytes.len(),
            "device sync"
        );
        Ok::<_, SyncError>(
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(layerlink_proto::framing::CONTENT_TYPE),
                )],
                bytes,
            )
                .into_response(),
        )
    }
    .await;
    r.unwrap_or_else(|e| refused(&st, "framing", asked.device.as_deref(), &asked.image, e))
}

#[cfg(test)]
mod tests;
