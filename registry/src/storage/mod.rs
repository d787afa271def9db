//! Registry storage: original blobs on the filesystem, metadata (manifests,
//! tags, uploads) in an embedded redb database. OWNER: registry-oci helper.
//!
//! The methods below are the interface other modules (ingest, sync_api,
//! edit) rely on; keep their signatures.

use layerlink_proto::Digest;
use std::fs::File;
use std::path::Path;

/// A manifest as stored: its digest, media type and exact bytes.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// sha256 of `bytes`.
    pub digest: Digest,
    /// `mediaType` it was pushed with (Content-Type of the PUT).
    pub media_type: String,
    /// The exact bytes pushed.
    pub bytes: Vec<u8>,
}

/// The registry's storage.
pub struct Storage {
    _private: (),
}

impl Storage {
    /// Open (creating if needed) the store under `data_dir`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Storage> {
        let _ = data_dir;
        todo!()
    }

    /// The data directory (other modules keep their files under it, e.g.
    /// `objects/`).
    pub fn data_dir(&self) -> &Path {
        todo!()
    }

    /// The shared embedded database. Other modules define their own tables
    /// in it (names prefixed by module: `index_*`, `device_*`, …).
    pub fn db(&self) -> &redb::Database {
        todo!()
    }

    /// Open a stored blob for reading, `None` if absent.
    pub fn open_blob(&self, digest: &Digest) -> std::io::Result<Option<File>> {
        let _ = digest;
        todo!()
    }

    /// Size of a stored blob, `None` if absent.
    pub fn blob_size(&self, digest: &Digest) -> std::io::Result<Option<u64>> {
        let _ = digest;
        todo!()
    }

    /// Resolve a manifest in `repository` by tag or `sha256:` digest.
    pub fn resolve_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> anyhow::Result<Option<StoredManifest>> {
        let _ = (repository, reference);
        todo!()
    }
}
