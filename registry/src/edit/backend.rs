//! Where images live: the [`Backend`] trait both stores implement (an OCI
//! layout directory, the registry's store), what an edit hands them to
//! commit, and reading small verified blobs.

use super::image::{self, Doc};
use super::stream::{NewBlob, Scratch};
use super::EditError;
use crate::oci;
use anyhow::Context;
use layerlink_proto::Digest;
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A manifest or index found by reference.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Exact bytes.
    pub bytes: Vec<u8>,
    /// Media type.
    pub media_type: String,
    /// Digest of `bytes`.
    pub digest: Digest,
    /// The tag it was found by (none when found by digest).
    pub tag: Option<String>,
}

/// A new manifest or index to store.
#[derive(Debug, Clone)]
pub struct NewDoc {
    /// Exact bytes.
    pub bytes: Vec<u8>,
    /// Media type.
    pub media_type: String,
    /// Digest of `bytes`.
    pub digest: Digest,
    /// Blobs it references (config and layers), for linking.
    pub blobs: Vec<(Digest, u64)>,
}

impl NewDoc {
    pub(super) fn new(v: &Value, media_type: &str, blobs: Vec<(Digest, u64)>) -> NewDoc {
        let bytes = oci::to_bytes(v);
        NewDoc {
            digest: Digest::of(&bytes),
            bytes,
            media_type: media_type.into(),
            blobs,
        }
    }
}

/// What a backend stores at the end of an edit.
#[derive(Debug)]
pub struct Commit {
    /// New blobs (layers, config) in scratch files.
    pub blobs: Vec<NewBlob>,
    /// The new image manifest.
    pub image: NewDoc,
    /// The new index, when an index was edited.
    pub index: Option<NewDoc>,
    /// The tag to point at the index (or else the image).
    pub tag: String,
    /// The tag the original was found by.
    pub source_tag: Option<String>,
    /// The original top-level digest.
    pub source_digest: Digest,
}

impl Commit {
    /// What the tag will name.
    pub fn top(&self) -> &NewDoc {
        self.index.as_ref().unwrap_or(&self.image)
    }
}

/// Where images live: an OCI layout directory or the registry store.
pub trait Backend {
    /// How to name the store in messages.
    fn describe(&self) -> String;
    /// Find a manifest or index by tag or digest.
    fn resolve(&self, reference: &str) -> Result<Option<Resolved>, EditError>;
    /// A manifest by digest (an index's child).
    fn manifest(
        &self,
        digest: &Digest,
        media_type: &str,
    ) -> Result<Option<(Vec<u8>, String)>, EditError>;
    /// The file holding a blob, if present.
    fn blob_path(&self, digest: &Digest) -> Result<Option<PathBuf>, EditError>;
    /// A scratch directory on the blobs' file system.
    fn scratch(&self) -> Result<Scratch, EditError>;
    /// Whether `tag` is acceptable as a tag here.
    fn check_tag(&self, tag: &str) -> Result<(), EditError>;
    /// Other images using `blob`, skipping the ones named by `skip_tags`.
    fn blob_users(&self, blob: &Digest, skip_tags: &[&str]) -> Result<Vec<String>, EditError>;
    /// Store blobs and documents, then point the tag at the top document.
    fn commit(&self, commit: Commit) -> Result<(), EditError>;
}

/// A manifest or index by digest (and the media type it was named with):
/// its bytes and media type, `None` when it is missing.
pub(crate) type FetchDoc<'a, E> =
    dyn Fn(&Digest, &str) -> Result<Option<(Vec<u8>, String)>, E> + 'a;

/// The layer digests of the manifest `digest` (of `media_type`), or of
/// every manifest of the index it is (through at most four nested
/// indexes), for [`Backend::blob_users`]. `fetch` gives a document's bytes
/// and media type (`None`: it is missing, which counts as no layers, as
/// does a document that does not parse).
pub(crate) fn layer_digests<E>(
    digest: &Digest,
    media_type: &str,
    fetch: &FetchDoc<E>,
) -> Result<Vec<Digest>, E> {
    fn walk<E>(
        digest: &Digest,
        media_type: &str,
        depth: u32,
        fetch: &FetchDoc<E>,
    ) -> Result<Vec<Digest>, E> {
        let Some((bytes, media_type)) = fetch(digest, media_type)? else {
            return Ok(Vec::new());
        };
        Ok(match image::parse_doc(&bytes, &media_type, "manifest") {
            Ok(Doc::Image(m)) => m.layers.iter().map(|l| l.digest).collect(),
            Ok(Doc::Index(idx)) if depth < 4 => {
                let mut all = Vec::new();
                for c in &idx.manifests {
                    all.extend(walk(&c.digest, &c.media_type, depth + 1, fetch)?);
                }
                all
            }
            _ => Vec::new(),
        })
    }
    walk(digest, media_type, 0, fetch)
}

/// Read a small blob (config, layout manifest) and check its digest.
pub(crate) fn read_small_blob(
    backend: &dyn Backend,
    digest: &Digest,
    what: &str,
) -> Result<Vec<u8>, EditError> {
    let path = backend.blob_path(digest)?.ok_or_else(|| {
        EditError::NotFound(format!(
            "{what} blob {digest} is not in {}",
            backend.describe()
        ))
    })?;
    read_verified(&path, digest, what)
}

/// Read a small file that must hash to `digest`.
pub(crate) fn read_verified(
    path: &Path,
    digest: &Digest,
    what: &str,
) -> Result<Vec<u8>, EditError> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(oci::MAX_JSON_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > oci::MAX_JSON_BYTES {
        return Err(EditError::Invalid(format!(
            "{what} {digest} is larger than {} bytes",
            oci::MAX_JSON_BYTES
        )));
    }
    let found = Digest::of(&bytes);
    if found != *digest {
        return Err(EditError::Corrupt(format!(
            "{what} blob {digest} is corrupt: its content hashes to {found}"
        )));
    }
    Ok(bytes)
}
