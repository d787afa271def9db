//! Manifests (PUT/GET/HEAD/DELETE by tag or digest), the tags list and the
//! catalog.

use super::error::OciError;
use super::manifest::{self, ParsedManifest};
use super::{blocking, hv, route, Ctx, Reply};
use crate::ingest::IngestError;
use crate::store::storage::StoredManifest;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::IntoResponse;
use layerlink_proto::Digest;

/// Manifests larger than this are refused (the spec suggests 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// A tag or a digest.
enum Reference {
    Tag(String),
    Digest(Digest),
}

fn reference(r: &str) -> Result<Reference, OciError> {
    if r.contains(':') {
        Digest::parse(r)
            .map(Reference::Digest)
            .map_err(|e| OciError::digest_invalid(format!("invalid digest {r:?}: {e}")))
    } else if route::valid_tag(r) {
        Ok(Reference::Tag(r.to_owned()))
    } else {
        Err(OciError::tag_invalid(r))
    }
}

/// `GET`/`HEAD /v2/<name>/manifests/<reference>`: the stored bytes and
/// media type, exactly as pushed.
pub async fn get(ctx: Ctx, name: &str, reference: &str) -> Reply {
    // An invalid tag or digest names no manifest: 404, as the spec's
    // conformance suite and docker/distribution answer (PUT says 400).
    if self::reference(reference).is_err() {
        return Err(OciError::manifest_unknown(reference));
    }
    let storage = ctx.storage();
    let (repo, r) = (name.to_owned(), reference.to_owned());
    let (found, known) = blocking(move || {
        let m = storage.resolve_manifest(&repo, &r)?;
        let known = m.is_some() || storage.meta().repository_exists(&repo)?;
        Ok((m, known))
    })
    .await?;
    let Some(m) = found else {
        return Err(if known {
            OciError::manifest_unknown(reference)
        } else {
            OciError::name_unknown(name)
        });
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, hv(&m.media_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(m.bytes.len()));
    headers.insert("Docker-Content-Digest", hv(&m.digest.to_string()));
    headers.insert(header::ETAG, hv(&format!("\"{}\"", m.digest)));
    if ctx.method == Method::HEAD {
        return Ok((StatusCode::OK, headers).into_response());
    }
    Ok((StatusCode::OK, headers, m.bytes).into_response())
}

/// `PUT /v2/<name>/manifests/<reference>`: check the manifest and that
/// everything it names is in the repository, ingest its layers, then
/// commit manifest, blob links and tag in one transaction. Any failure
/// leaves the store as it was.
pub async fn put(ctx: Ctx, name: &str, reference: &str) -> Reply {
    let reference = self::reference(reference)?;
    let content_type = ctx
        .header(header::CONTENT_TYPE)
        .map(|c| c.split(';').next().unwrap_or("").trim().to_owned());
    let bytes = axum::body::to_bytes(ctx.body, MAX_MANIFEST_BYTES)
        .await
        .map_err(|e| {
            OciError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "SIZE_INVALID",
                format!("manifest body unreadable or larger than {MAX_MANIFEST_BYTES} bytes: {e}"),
            )
        })?;
    let parsed = manifest::parse(&bytes, content_type.as_deref())?;
    let digest = Digest::of(&bytes);
    if let Reference::Digest(d) = &reference {
        if *d != digest {
            return Err(OciError::digest_invalid(format!(
                "manifest pushed as {d} but its bytes hash to {digest}"
            )));
        }
    }
    let tag = match reference {
        Reference::Tag(t) => Some(t),
        Reference::Digest(_) => None,
    };
    let storage = ctx.state.storage.clone();
    let repo = name.to_owned();
    let tag_for_log = tag.clone();
    let strict = ctx.state.config().reject_unsyncable;
    let subject = parsed.subject.clone();
    blocking(move || {
        let _push = storage.push_guard();
        let links = check_references(&storage, &repo, &parsed)?;
        let stored = StoredManifest {
            digest,
            media_type: parsed.media_type.clone(),
            bytes: bytes.to_vec(),
        };
        // File-level ingest runs for image layers; a layer that cannot be
        // split into files (not a tar, corrupt, hostile) does not stop the
        // manifest from being stored, as the spec requires — the image is
        // marked not syncable instead (unless the config says strict).
        match crate::ingest::ingest_manifest(&storage, &stored.bytes, &stored.media_type) {
            Ok(()) => {}
            Err(e @ IngestError::MissingBlob(_)) => return Err(ingest_error(e)),
            Err(e) if e.is_client_error() && !strict => {
                tracing::warn!(
                    repository = repo,
                    %digest,
                    "manifest stored, but its image cannot be synced to devices: {e}"
                );
                crate::ingest::mark_unsyncable(storage.db(), &digest, &e.to_string())
                    .map_err(OciError::internal)?;
            }
            Err(e) => return Err(ingest_error(e)),
        }
        storage
            .meta()
            .commit_manifest(&repo, &stored, tag.as_deref(), &links)?;
        if let Some(s) = &parsed.subject {
            let mut d = serde_json::json!({
                "mediaType": stored.media_type,
                "digest": digest.to_string(),
                "size": stored.bytes.len(),
            });
            if let Some(t) = &parsed.artifact_type {
                d["artifactType"] = serde_json::Value::String(t.clone());
            }
            if let Some(a) = &parsed.annotations {
                d["annotations"] = a.clone();
            }
            let json = serde_json::to_vec(&d).map_err(OciError::internal)?;
            storage
                .meta()
                .add_referrer(&repo, &s.digest, &digest, &json)?;
        }
        Ok(())
    })
    .await?;
    tracing::info!(repository = name, tag = tag_for_log.as_deref().unwrap_or(""), %digest, "manifest pushed");
    if let Some(p) = &ctx.state.precompute {
        p.queue(crate::sync::precompute::Job {
            repository: name.to_owned(),
            manifest: digest,
        });
    }
    Ok((
        StatusCode::CREATED,
        [
            (
                header::LOCATION,
                hv(&format!("/v2/{name}/manifests/{digest}")),
            ),
            (
                header::HeaderName::from_static("docker-content-digest"),
                hv(&digest.to_string()),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from_static("0")),
        ],
    )
        .into_response()
        .tap_subject(subject.as_ref()))
}

trait TapSubject {
    fn tap_subject(self, subject: Option<&manifest::Descriptor>) -> Self;
}

impl TapSubject for axum::response::Response {
    /// OCI 1.1: a registry that processed `subject` says so.
    fn tap_subject(mut self, subject: Option<&manifest::Descriptor>) -> Self {
        if let Some(s) = subject {
            self.headers_mut()
                .insert("OCI-Subject", hv(&s.digest.to_string()));
        }
        self
    }
}

/// `GET /v2/<name>/referrers/<digest>[?artifactType=…]` (OCI 1.1): an image
/// index listing the manifests of `name` whose `subject` is `digest`
/// (the subject itself need not exist), filtered by artifact type when
/// asked (then `OCI-Filters-Applied: artifactType`).
pub async fn referrers(ctx: Ctx, name: &str, digest: &str) -> Reply {
    let subject = Digest::parse(digest)
        .map_err(|e| OciError::digest_invalid(format!("invalid digest {digest:?}: {e}")))?;
    let filter = ctx.param("artifactType").map(str::to_owned);
    let storage = ctx.storage();
    let repo = name.to_owned();
    let list = blocking(move || Ok(storage.meta().referrers(&repo, &subject)?)).await?;
    let mut manifests = Vec::new();
    for d in list {
        let v: serde_json::Value = serde_json::from_slice(&d).map_err(OciError::internal)?;
        if let Some(f) = &filter {
            if v.get("artifactType").and_then(serde_json::Value::as_str) != Some(f) {
                continue;
            }
        }
        manifests.push(v);
    }
    let body = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_INDEX,
        "manifests": manifests,
    }))
    .map_err(OciError::internal)?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(manifest::OCI_INDEX),
    );
    if filter.is_some() {
        headers.insert(
            "OCI-Filters-Applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok((StatusCode::OK, headers, body).into_response())
}

fn ingest_error(e: IngestError) -> OciError {
    match e {
        IngestError::MissingBlob(d) => OciError::manifest_blob_unknown(&d.to_string()),
        e if e.is_client_error() => {
            OciError::manifest_invalid(format!("image layers rejected: {e}"))
        }
        e => OciError::internal(e),
    }
}

/// Every blob must be in the repository with its declared size; every
/// child manifest of an index too. Returns the blob links to commit.
fn check_references(
    storage: &crate::store::storage::Storage,
    repo: &str,
    parsed: &ParsedManifest,
) -> Result<Vec<(Digest, u64)>, OciError> {
    let mut links = Vec::new();
    for b in &parsed.blobs {
        let size = if storage.meta().blob_linked(repo, &b.digest)? {
            storage.blob_size(&b.digest)?
        } else {
            None
        };
        let Some(size) = size else {
            return Err(OciError::manifest_blob_unknown(&b.digest.to_string()));
        };
        if size != b.size {
            return Err(OciError::manifest_invalid(format!(
                "descriptor of {} says {} bytes but the blob has {size}",
                b.digest, b.size
            )));
        }
        links.push((b.digest, size));
    }
    for c in &parsed.children {
        let Some(m) = storage.meta().manifest(repo, &c.digest)? else {
            return Err(OciError::manifest_blob_unknown(&c.digest.to_string()));
        };
        if m.bytes.len() as u64 != c.size {
            return Err(OciError::manifest_invalid(format!(
                "descriptor of {} says {} bytes but the manifest has {}",
                c.digest,
                c.size,
                m.bytes.len()
            )));
        }
    }
    Ok(links)
}

/// `DELETE /v2/<name>/manifests/<reference>`: by digest removes the
/// manifest and its tags; by tag removes the tag only.
pub async fn delete(ctx: Ctx, name: &str, reference: &str) -> Reply {
    let r = self::reference(reference)?;
    let storage = ctx.storage();
    let repo = name.to_owned();
    let found = blocking(move || {
        Ok(match r {
            Reference::Digest(d) => storage.meta().delete_manifest(&repo, &d)?,
            Reference::Tag(t) => storage.meta().delete_tag(&repo, &t)?,
        })
    })
    .await?;
    if !found {
        return Err(OciError::manifest_unknown(reference));
    }
    tracing::info!(repository = name, reference, "manifest deleted");
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
}

/// `n` and `last` of a paginated list; `n` absent means everything.
fn pagination(ctx: &Ctx) -> Result<(usize, Option<String>), OciError> {
    let n = match ctx.param("n") {
        None => usize::MAX - 1,
        Some(n) => n.parse::<usize>().map_err(|_| {
            OciError::new(
                StatusCode::BAD_REQUEST,
                "PAGINATION_NUMBER_INVALID",
                format!("invalid n={n:?}"),
            )
        })?,
    };
    Ok((n, ctx.param("last").map(str::to_owned)))
}

fn link_next(
    path: &str,
    n: usize,
    last: Option<&String>,
) -> Option<(header::HeaderName, HeaderValue)> {
    let last = last?;
    let q = serde_urlencoded::to_string([("n", n.to_string()), ("last", last.clone())]).ok()?;
    Some((header::LINK, hv(&format!("<{path}?{q}>; rel=\"next\""))))
}

/// `GET /v2/<name>/tags/list[?n=&last=]`.
pub async fn tags_list(ctx: Ctx, name: &str) -> Reply {
    let (n, last) = pagination(&ctx)?;
    let storage = ctx.storage();
    let repo = name.to_owned();
    let (mut tags, known) = blocking(move || {
        let tags = storage
            .meta()
            .tags(&repo, last.as_deref(), n.saturating_add(1))?;
        Ok((tags, storage.meta().repository_exists(&repo)?))
    })
    .await?;
    if !known {
        return Err(OciError::name_unknown(name));
    }
    let more = tags.len() > n;
    tags.truncate(n);
    let body = serde_json::json!({ "name": name, "tags": tags }).to_string();
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if more {
        if let Some((h, v)) = link_next(&format!("/v2/{name}/tags/list"), n, tags.last()) {
            resp.headers_mut().insert(h, v);
        }
    }
    Ok(resp)
}

/// `GET /v2/_catalog[?n=&last=]`.
pub async fn catalog(ctx: Ctx) -> Reply {
    let (n, last) = pagination(&ctx)?;
    let storage = ctx.storage();
    let mut repos = blocking(move || {
        Ok(storage
            .meta()
            .repositories(last.as_deref(), n.saturating_add(1))?)
    })
    .await?;
    let more = repos.len() > n;
    repos.truncate(n);
    let body = serde_json::json!({ "repositories": repos }).to_string();
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if more {
        if let Some((h, v)) = link_next("/v2/_catalog", n, repos.last()) {
            resp.headers_mut().insert(h, v);
        }
    }
    Ok(resp)
}
