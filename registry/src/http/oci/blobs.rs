//! Blob reads (with Range) and uploads: monolithic POST, chunked PATCH,
//! PUT to finish, status, cancel, and cross-repository mount.

use super::error::OciError;
use super::{blocking, hv, receive, Ctx, Reply};
use crate::store::storage::{BlobError, UploadSession};
use axum::body::Body;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use layerlink_proto::Digest;

fn parse_digest(s: &str) -> Result<Digest, OciError> {
    Digest::parse(s).map_err(|e| OciError::digest_invalid(format!("invalid digest {s:?}: {e}")))
}

/// `GET`/`HEAD /v2/<name>/blobs/<digest>`, with `Range: bytes=…` support.
pub async fn get(ctx: Ctx, name: &str, digest: &str) -> Reply {
    let digest = parse_digest(digest)?;
    let storage = ctx.storage();
    let repo = name.to_owned();
    let found = blocking(move || {
        if !storage.meta().blob_linked(&repo, &digest)? {
            return Ok(None);
        }
        Ok(storage.blob_size(&digest)?)
    })
    .await?;
    let Some(size) = found else {
        return Err(OciError::blob_unknown(&digest.to_string()));
    };

    let range = match ctx.header(header::RANGE) {
        None => None,
        Some(r) => match parse_range(r, size) {
            Some(r) => Some(r),
            None => {
                return Ok((
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                )
                    .into_response())
            }
        },
    };
    let (status, start, len) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        None => (StatusCode::OK, 0, size),
    };
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header("Docker-Content-Digest", digest.to_string())
        .header(header::ETAG, format!("\"{digest}\""));
    if range.is_some() {
        resp = resp.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", start, start + len - 1),
        );
    }
    let body = if ctx.method == Method::HEAD || len == 0 {
        Body::empty()
    } else {
        // Streamed from the blob store (a file, or a ranged object GET),
        // never buffered whole.
        let storage = ctx.storage();
        let Some(read) =
            blocking(move || Ok(storage.blobs().open_range(&digest, start, len)?)).await?
        else {
            // Collected between the size check and the read.
            return Err(OciError::blob_unknown(&digest.to_string()));
        };
        Body::from_stream(read.into_stream())
    };
    resp.body(body).map_err(OciError::internal)
}

/// Parse a single `bytes=a-b`, `bytes=a-` or `bytes=-n` range against a
/// blob of `size` bytes; `None` if unsatisfiable or malformed.
pub fn parse_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 {
            return None;
        }
        (size.saturating_sub(n), size.checked_sub(1)?)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            size.checked_sub(1)?
        } else {
            b.parse::<u64>().ok()?.min(size.checked_sub(1)?)
        };
        (start, end)
    };
    (start <= end && start < size).then_some((start, end))
}

/// `DELETE /v2/<name>/blobs/<digest>`: the repository forgets the blob
/// (bytes stay on disk until `layerlink-registry gc` finds them unused).
pub async fn delete(ctx: Ctx, name: &str, digest: &str) -> Reply {
    let digest = parse_digest(digest)?;
    let storage = ctx.storage();
    let repo = name.to_owned();
    if blocking(move || Ok(storage.meta().unlink_blob(&repo, &digest)?)).await? {
        Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
    } else {
        Err(OciError::blob_unknown(&digest.to_string()))
    }
}

fn created(name: &str, digest: &Digest) -> Response {
    (
        StatusCode::CREATED,
        [
            (header::LOCATION, hv(&format!("/v2/{name}/blobs/{digest}"))),
            (
                header::HeaderName::from_static("docker-content-digest"),
                hv(&digest.to_string()),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from_static("0")),
        ],
    )
        .into_response()
}

/// `Location`, `Range` (`0-<last byte>`; "0-0" also when empty, as
/// registries do) and `Docker-Upload-UUID` of an upload session.
fn upload_headers(name: &str, id: &str, len: u64) -> [(header::HeaderName, HeaderValue); 3] {
    [
        (
            header::LOCATION,
            hv(&format!("/v2/{name}/blobs/uploads/{id}")),
        ),
        (header::RANGE, hv(&format!("0-{}", len.saturating_sub(1)))),
        (
            header::HeaderName::from_static("docker-upload-uuid"),
            hv(id),
        ),
    ]
}

fn upload_state(status: StatusCode, name: &str, id: &str, len: u64) -> Response {
    (
        status,
        upload_headers(name, id, len),
        [(header::CONTENT_LENGTH, "0")],
    )
        .into_response()
}

fn map_commit_error(e: BlobError) -> OciError {
    match e {
        BlobError::DigestMismatch { .. } => OciError::digest_invalid(e.to_string()),
        BlobError::SizeMismatch { .. } => {
            OciError::new(StatusCode::BAD_REQUEST, "SIZE_INVALID", e.to_string())
        }
        BlobError::Io(e) => OciError::internal(e),
    }
}

/// `POST /v2/<name>/blobs/uploads/`: mount (`?mount=&from=`), one-request
/// upload (`?digest=`), or start a session.
pub async fn start_upload(ctx: Ctx, name: &str) -> Reply {
    if let Some(mount) = ctx.param("mount") {
        let digest = parse_digest(mount)?;
        let storage = ctx.storage();
        let (repo, from) = (name.to_owned(), ctx.param("from").map(str::to_owned));
        let mounted = blocking(move || {
            let linked = match &from {
                Some(from) => storage.meta().blob_linked(from, &digest)?,
                None => false,
            };
            if !linked {
                return Ok(false);
            }
            let Some(size) = storage.blob_size(&digest)? else {
                return Ok(false);
            };
            storage.blobs().touch(&digest)?;
            storage.meta().link_blob(&repo, &digest, size)?;
            Ok(true)
        })
        .await?;
        if mounted {
            tracing::info!(repository = name, %digest, "blob mounted");
            return Ok(created(name, &digest));
        }
        // Not mountable: fall through to an ordinary upload session.
    } else if let Some(digest) = ctx.param("digest") {
        let digest = parse_digest(digest)?;
        let declared = content_length(&ctx);
        let storage = ctx.storage();
        let writer = blocking(move || Ok(storage.blobs().temp_writer()?)).await?;
        let (writer, received) = receive(ctx.body, writer).await;
        received.map_err(|e| e.into_oci())?;
        let storage = ctx.state.storage.clone();
        let repo = name.to_owned();
        blocking(move || {
            let (d, size) = storage
                .blobs()
                .commit(writer, Some(&digest), declared)
                .map_err(map_commit_error)?;
            storage.meta().link_blob(&repo, &d, size)?;
            Ok(())
        })
        .await?;
        tracing::info!(repository = name, %digest, "blob pushed");
        return Ok(created(name, &digest));
    }

    let id = format!("{:032x}", rand::random::<u128>());
    let storage = ctx.storage();
    let session = UploadSession {
        id: id.clone(),
        repository: name.to_owned(),
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    blocking(move || {
        storage.blobs().create_upload(&session.id)?;
        storage.meta().create_upload(&session)?;
        Ok(())
    })
    .await?;
    Ok(upload_state(StatusCode::ACCEPTED, name, &id, 0))
}

fn content_length(ctx: &Ctx) -> Option<u64> {
    ctx.header(header::CONTENT_LENGTH)
        .and_then(|v| v.parse().ok())
}

/// `Content-Range: <start>-<end>` (a `bytes ` or `bytes=` prefix is tolerated).
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let v = v.trim();
    let v = v
        .strip_prefix("bytes")
        .map(|r| r.trim_start_matches([' ', '=']))
        .unwrap_or(v);
    let v = v.split('/').next()?;
    let (a, b) = v.split_once('-')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b).then_some((a, b))
}

/// Look up session `id` and check it belongs to `name`.
async fn session(
    storage: std::sync::Arc<crate::store::storage::Storage>,
    name: &str,
    id: &str,
) -> Result<(), OciError> {
    let owned = id.to_owned();
    let session = blocking(move || Ok(storage.meta().upload(&owned)?)).await?;
    match session {
        Some(s) if s.repository == name => Ok(()),
        _ => Err(OciError::upload_unknown(id)),
    }
}

/// Append the request body to session `id`, checking `Content-Range`.
/// Returns the held session lock and the writer positioned after the data.
async fn append(
    ctx: Ctx,
    name: &str,
    id: &str,
) -> Result<
    (
        tokio::sync::OwnedMutexGuard<crate::store::storage::UploadCursor>,
        crate::store::storage::BlobWriter,
    ),
    OciError,
> {
    session(ctx.storage(), name, id).await?;
    let lock = ctx.state.storage.upload_lock(id);
    let mut cursor = lock.lock_owned().await;
    let storage = ctx.storage();
    let (owned, hash) = (id.to_owned(), cursor.take());
    let writer = blocking(move || Ok(storage.blobs().resume_upload(&owned, hash)?)).await?;
    let Some(writer) = writer else {
        return Err(OciError::upload_unknown(id));
    };
    let offset = writer.len();
    let range = ctx
        .header(header::CONTENT_RANGE)
        .map(|v| (v.to_owned(), parse_content_range(v)));
    let expected_len = match range {
        None => None,
        Some((_, Some((start, end)))) if start == offset => Some(end - start + 1),
        Some((raw, parsed)) => {
            *cursor = Some(writer.hash_state());
            let why = match parsed {
                Some(_) => format!(
                    "chunk Content-Range {raw:?} does not start at the upload's offset {offset}"
                ),
                None => format!("malformed Content-Range {raw:?}"),
            };
            let mut err = OciError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BLOB_UPLOAD_INVALID",
                why,
            );
            for (h, v) in upload_headers(name, id, offset) {
                err = err.with_header(h, v);
            }
            return Err(err);
        }
    };
    let (writer, received) = receive(ctx.body, writer).await;
    let failure = match (received, expected_len) {
        (Err(e), _) => Some(e.into_oci()),
        (Ok(()), Some(n)) if writer.len() - offset != n => Some(OciError::upload_invalid(format!(
            "chunk size {} does not match its Content-Range length {n}",
            writer.len() - offset
        ))),
        _ => None,
    };
    if let Some(err) = failure {
        // Undo the partial chunk so the client can retry from `offset`.
        blocking(move || Ok(writer.truncate_to(offset)?)).await?;
        *cursor = None;
        return Err(err);
    }
    Ok((cursor, writer))
}

/// `PATCH /v2/<name>/blobs/uploads/<id>`: one more chunk.
pub async fn patch_upload(ctx: Ctx, name: &str, id: &str) -> Reply {
    let (mut cursor, writer) = append(ctx, name, id).await?;
    let len = writer.len();
    *cursor = Some(writer.hash_state());
    drop(writer);
    Ok(upload_state(StatusCode::ACCEPTED, name, id, len))
}

/// `PUT /v2/<name>/blobs/uploads/<id>?digest=`: last chunk (optional) and
/// finish: verify, store, link.
pub async fn put_upload(ctx: Ctx, name: &str, id: &str) -> Reply {
    let digest = match ctx.param("digest") {
        Some(d) => parse_digest(d)?,
        None => {
            return Err(OciError::digest_invalid(
                "finishing an upload needs ?digest=",
            ))
        }
    };
    let storage = ctx.storage();
    let (cursor, writer) = append(ctx, name, id).await?;
    let (repo, owned) = (name.to_owned(), id.to_owned());
    let result = blocking(move || {
        let outcome = storage.blobs().commit(writer, Some(&digest), None);
        // Finished or failed, the session is over (its temp file is gone).
        storage.meta().delete_upload(&owned)?;
        storage.forget_upload_lock(&owned);
        let (d, size) = outcome.map_err(map_commit_error)?;
        storage.meta().link_blob(&repo, &d, size)?;
        Ok(())
    })
    .await;
    drop(cursor);
    result?;
    tracing::info!(repository = name, %digest, "blob pushed");
    Ok(created(name, &digest))
}

/// `GET /v2/<name>/blobs/uploads/<id>`: how far the upload got.
pub async fn upload_status(ctx: Ctx, name: &str, id: &str) -> Reply {
    session(ctx.storage(), name, id).await?;
    let storage = ctx.storage();
    let owned = id.to_owned();
    match blocking(move || Ok(storage.blobs().upload_len(&owned)?)).await? {
        Some(len) => Ok(upload_state(StatusCode::NO_CONTENT, name, id, len)),
        None => Err(OciError::upload_unknown(id)),
    }
}

/// `DELETE /v2/<name>/blobs/uploads/<id>`: cancel.
pub async fn cancel_upload(ctx: Ctx, name: &str, id: &str) -> Reply {
    session(ctx.storage(), name, id).await?;
    let lock = ctx.state.storage.upload_lock(id);
    let _guard = lock.lock().await;
    let storage = ctx.storage();
    let owned = id.to_owned();
    blocking(move || {
        storage.blobs().remove_upload(&owned)?;
        storage.meta().delete_upload(&owned)?;
        storage.forget_upload_lock(&owned);
        Ok(())
    })
    .await?;
    Ok((StatusCode::NO_CONTENT, [(header::CONTENT_LENGTH, "0")]).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-2", 100), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=0-", 0), None);
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, 199)));
        assert_eq!(parse_content_range("bytes=5-5"), Some((5, 5)));
        assert_eq!(parse_content_range("9-1"), None);
        assert_eq!(parse_content_range("x"), None);
    }
}
