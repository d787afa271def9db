//! The `stats` command: what the registry holds and how well file-level
//! dedup works. Numbers on files and objects come from
//! [`crate::store::index::dedup_stats`].

use crate::store::storage::Storage;
use serde::Serialize;

/// Everything `layerlink-registry stats` reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Tagged images: distinct (repository, manifest) pairs a tag names.
    pub images: u64,
    /// Repositories.
    pub repositories: u64,
    /// Manifests over all repositories.
    pub manifests: u64,
    /// Tags over all repositories.
    pub tags: u64,
    /// Original blobs on disk (layers, configs).
    pub blobs: u64,
    /// Bytes of original blobs on disk.
    pub blob_bytes: u64,
    /// Layers ingested into the file store.
    pub layers: u64,
    /// Tar entries recorded over all layers.
    pub file_entries: u64,
    /// Regular-file entries over all layers.
    pub regular_files: u64,
    /// Distinct file objects stored.
    pub distinct_objects: u64,
    /// Their uncompressed bytes (each distinct content once).
    pub distinct_bytes: u64,
    /// Sum of regular-file sizes over all layers.
    pub logical_bytes: u64,
    /// Bytes the object store uses on disk.
    pub stored_bytes: u64,
    /// `logical_bytes / stored_bytes`: dedup and compression together;
    /// `None` while nothing is stored.
    pub dedup_ratio: Option<f64>,
    /// Dedup alone: `logical_bytes / distinct_bytes`.
    pub dedup_only_ratio: Option<f64>,
    /// Compression alone: `distinct_bytes / stored_bytes`.
    pub compression_ratio: Option<f64>,
    /// With the original blobs, which the registry keeps beside the
    /// objects: `logical_bytes / (stored_bytes + blob_bytes)`.
    pub ratio_with_blobs: Option<f64>,
    /// Manifests stored but not syncable to devices: (digest, reason).
    pub unsyncable: Vec<(String, String)>,
}

/// `a / b`, `None` when `b` is 0.
fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// Gather the figures. Blocking.
pub fn collect(storage: &Storage) -> anyhow::Result<Stats> {
    let counts = storage.meta().counts()?;
    let dedup = crate::store::index::dedup_stats(storage)?;
    let (mut blobs, mut blob_bytes) = (0, 0);
    for (_, size, _) in storage.blobs().list()? {
        blobs += 1;
        blob_bytes += size;
    }
    Ok(Stats {
        images: counts.tagged_images,
        repositories: counts.repositories,
        manifests: counts.manifests,
        tags: counts.tags,
        blobs,
        blob_bytes,
        layers: dedup.layers,
        file_entries: dedup.file_entries,
        regular_files: dedup.regular_files,
        distinct_objects: dedup.distinct_objects,
        distinct_bytes: dedup.distinct_bytes,
        logical_bytes: dedup.logical_bytes,
        stored_bytes: dedup.stored_bytes,
        dedup_ratio: ratio(dedup.logical_bytes, dedup.stored_bytes),
        dedup_only_ratio: ratio(dedup.logical_bytes, dedup.distinct_bytes),
        compression_ratio: ratio(dedup.distinct_bytes, dedup.stored_bytes),
        ratio_with_blobs: ratio(dedup.logical_bytes, dedup.stored_bytes + blob_bytes),
        unsyncable: crate::ingest::unsyncable_all(storage.db())?
            .into_iter()
            .map(|(d, r)| (d.to_string(), r))
            .collect(),
    })
}

/// Human-readable lines.
pub fn render_text(s: &Stats) -> String {
    let show = |r: Option<f64>| r.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}"));
    let ratio = show(s.dedup_ratio);
    let (dedup, compression, with_blobs) = (
        show(s.dedup_only_ratio),
        show(s.compression_ratio),
        show(s.ratio_with_blobs),
    );
    let mut unsyncable = String::new();
    for (d, r) in &s.unsyncable {
        unsyncable.push_str(&format!("not syncable:              {d}: {r}\n"));
    }
    format!(
        "images (tagged manifests): {}\n\
         repositories:              {}\n\
         manifests:                 {}\n\
         tags:                      {}\n\
         original blobs:            {} ({} bytes)\n\
         layers ingested:           {}\n\
         file entries:              {}\n\
         regular files:             {}\n\
         distinct objects:          {} ({} bytes)\n\
         logical bytes:             {}\n\
         stored bytes:              {}\n\
         dedup ratio:               {ratio} (dedup {dedup} x compression {compression}; \
         {with_blobs} counting the original blobs)\n\
         {unsyncable}",
        s.images,
        s.repositories,
        s.manifests,
        s.tags,
        s.blobs,
        s.blob_bytes,
        s.layers,
        s.file_entries,
        s.regular_files,
        s.distinct_objects,
        s.distinct_bytes,
        s.logical_bytes,
        s.stored_bytes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let s = collect(&Storage::open(dir.path()).unwrap()).unwrap();
        assert_eq!((s.images, s.blobs, s.dedup_ratio), (0, 0, None));
        assert!(render_text(&s).contains("dedup ratio:               n/a (dedup n/a"));
    }
}
