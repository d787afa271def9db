//! Layer ingest: split pushed layers into files. OWNER: registry-dedup helper.

use crate::storage::Storage;

/// Why an image's layers could not be ingested. The manifest PUT answers
/// 400 `MANIFEST_INVALID` (or `BLOB_UNKNOWN`) with this message.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Placeholder until implemented.
    #[error("{0}")]
    Invalid(String),
}

/// Ingest every layer of a just-pushed image manifest that is not ingested
/// yet. Called by the manifest PUT handler after it checked that the
/// manifest's blobs exist and before it commits the manifest and tag; on
/// error the store is left as it was. Image indexes are a no-op. Blocking:
/// call from `spawn_blocking`.
pub fn ingest_manifest(storage: &Storage, manifest: &[u8], media_type: &str) -> Result<(), IngestError> {
    let _ = (storage, manifest, media_type);
    Ok(())
}
