//! Layer ingest: split pushed layers into files.
//!
//! For each layer of a pushed image manifest that is not indexed yet: open
//! the blob, detect its compression (gzip, zstd or plain tar, by magic
//! bytes: [`crate::compression::decompressor`]), decompress and walk the tar in one streaming pass while hashing
//! it; store every entry's content in the object store once (new objects
//! are staged and only published with the index), record the entry index,
//! and check the tar's sha256 against the config's `rootfs.diff_ids`.
//! See [`crate::store::index`] for the tables and [`crate::store::objects`] for the store.
//!
//! Ingests of the same layer are serialised (one waits, then finds the
//! layer indexed); different layers ingest in parallel.

mod layer;
pub mod shared;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

pub use layer::{ingest_layer, uncompressed_digest, LayerOutcome};

use crate::oci::{self, ParsedManifest};
use crate::store::index;
use crate::store::objects::ObjectStore;
use crate::store::storage::{SharedLayers, Storage};
use layerlink_proto::Digest;
use std::collections::HashSet;
use std::io::Read;
use std::sync::{Condvar, Mutex, Once};

/// Largest image config read, in bytes.
pub const MAX_CONFIG_BYTES: u64 = oci::MAX_JSON_BYTES;

/// Why an image's layers could not be ingested. The manifest PUT answers
/// 400 `MANIFEST_INVALID` (or `BLOB_UNKNOWN` for [`IngestError::MissingBlob`])
/// with this message, except for [`IngestError::Store`] (500).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The manifest or config is not what an image needs.
    #[error("{0}")]
    Invalid(String),
    /// A blob the manifest names is not stored.
    #[error("blob {0} is not in the registry")]
    MissingBlob(Digest),
    /// A layer's uncompressed content does not hash to its diff_id.
    #[error("layer {layer}: uncompressed content has digest {found}, but the image config lists diff_id {expected}")]
    DiffIdMismatch {
        /// The layer blob.
        layer: Digest,
        /// diff_id in the config.
        expected: Digest,
        /// sha256 of the decompressed blob.
        found: Digest,
    },
    /// A layer blob is not a readable (compressed) tar.
    #[error("layer {layer}: {message}")]
    Corrupt {
        /// The layer blob.
        layer: Digest,
        /// What is wrong.
        message: String,
    },
    /// A layer uses a tar feature the dedup store does not support.
    #[error("layer {layer}: {message}")]
    Unsupported {
        /// The layer blob.
        layer: Digest,
        /// What.
        message: String,
    },
    /// The registry failed to read or write its own store.
    #[error("ingest failed: {0}")]
    Store(String),
}

impl IngestError {
    pub(crate) fn store(e: impl std::fmt::Display) -> IngestError {
        IngestError::Store(e.to_string())
    }

    /// Whether the pusher is at fault (4xx) rather than the registry (5xx).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, IngestError::Store(_))
    }
}

/// Manifest digest → why its image cannot be synced (a layer that could
/// not be split into files). The manifest itself is stored and served over
/// `/v2/` like any other; devices asking for it get this reason.
pub const UNSYNCABLE: redb::TableDefinition<&[u8; 32], &str> =
    redb::TableDefinition::new("ingest_unsyncable");

/// Record that the image of manifest `digest` cannot be synced, and why.
pub fn mark_unsyncable(
    db: &redb::Database,
    digest: &Digest,
    reason: &str,
) -> Result<(), IngestError> {
    let txn = db.begin_write().map_err(IngestError::store)?;
    {
        let mut t = txn.open_table(UNSYNCABLE).map_err(IngestError::store)?;
        t.insert(&digest.0, reason).map_err(IngestError::store)?;
    }
    txn.commit().map_err(IngestError::store)
}

/// Why the image of manifest `digest` cannot be synced, if it cannot.
pub fn unsyncable_reason(
    db: &redb::Database,
    digest: &Digest,
) -> Result<Option<String>, IngestError> {
    let txn = redb::ReadableDatabase::begin_read(db).map_err(IngestError::store)?;
    let Some(t) = crate::store::index::open_read(&txn, UNSYNCABLE).map_err(IngestError::store)?
    else {
        return Ok(None);
    };
    Ok(t.get(&digest.0)
        .map_err(IngestError::store)?
        .map(|v| v.value().to_owned()))
}

/// Every manifest marked not syncable, with the reason (for `stats`).
pub fn unsyncable_all(db: &redb::Database) -> Result<Vec<(Digest, String)>, IngestError> {
    use redb::ReadableTable as _;
    let txn = redb::ReadableDatabase::begin_read(db).map_err(IngestError::store)?;
    let Some(t) = crate::store::index::open_read(&txn, UNSYNCABLE).map_err(IngestError::store)?
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for item in t.iter().map_err(IngestError::store)? {
        let (k, v) = item.map_err(IngestError::store)?;
        out.push((Digest(*k.value()), v.value().to_owned()));
    }
    Ok(out)
}

static LAYER_LOCKS: Mutex<Option<HashSet<Digest>>> = Mutex::new(None);
static LAYER_FREED: Condvar = Condvar::new();

/// Held while one layer (by diff_id) is being ingested.
struct LayerLock(Digest);

impl LayerLock {
    fn acquire(d: Digest) -> LayerLock {
        let mut g = LAYER_LOCKS.lock().unwrap_or_else(|e| e.into_inner());
        while g.get_or_insert_with(HashSet::new).contains(&d) {
            g = LAYER_FREED.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.get_or_insert_with(HashSet::new).insert(d);
        LayerLock(d)
    }
}

impl Drop for LayerLock {
    fn drop(&mut self) {
        let mut g = LAYER_LOCKS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = g.as_mut() {
            s.remove(&self.0);
        }
        LAYER_FREED.notify_all();
    }
}

/// Where ingest reads blobs from (the registry's blob store in production,
/// a directory or map in tests).
pub trait BlobSource {
    /// Open a blob, `None` when absent.
    fn open(&self, d: &Digest) -> std::io::Result<Option<Box<dyn Read + '_>>>;
}

impl BlobSource for Storage {
    fn open(&self, d: &Digest) -> std::io::Result<Option<Box<dyn Read + '_>>> {
        Ok(self.open_blob(d)?.map(|f| Box::new(f) as Box<dyn Read>))
    }
}

/// Ingest every layer of a just-pushed image manifest that is not ingested
/// yet. Called by the manifest PUT handler after it checked that the
/// manifest's blobs exist and before it commits the manifest and tag.
/// Each layer is recorded atomically: nothing of a failing layer is
/// recorded (layers of the same image verified before it stay indexed —
/// they are correct, content-addressed and simply unused). Image indexes,
/// artifacts and schema 1 manifests are a no-op. Blocking: call from
/// `spawn_blocking`.
pub fn ingest_manifest(
    storage: &Storage,
    manifest: &[u8],
    media_type: &str,
) -> Result<(), IngestError> {
    static CLEAN: Once = Once::new();
    let store = index::object_store(storage);
    CLEAN.call_once(|| {
        if let Err(e) = store.clean_stale_staging() {
            tracing::warn!("cleaning {}: {e}", store.root().display());
        }
    });
    ingest_manifest_in(
        storage.db(),
        &store,
        storage,
        storage.shared_layers(),
        manifest,
        media_type,
    )
}

/// Read a config blob (bounded).
pub fn read_config(blobs: &dyn BlobSource, d: &Digest) -> Result<Vec<u8>, IngestError> {
    let r = blobs
        .open(d)
        .map_err(IngestError::store)?
        .ok_or(IngestError::MissingBlob(*d))?;
    let mut v = Vec::new();
    r.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut v)
        .map_err(IngestError::store)?;
    if v.len() as u64 > MAX_CONFIG_BYTES {
        return Err(IngestError::Invalid(format!(
            "image config {d} is larger than {MAX_CONFIG_BYTES} bytes"
        )));
    }
    Ok(v)
}

/// [`ingest_manifest`] on explicit parts.
pub fn ingest_manifest_with(
    db: &redb::Database,
    store: &ObjectStore,
    blobs: &dyn BlobSource,
    manifest: &[u8],
    media_type: &str,
) -> Result<(), IngestError> {
    ingest_manifest_in(db, store, blobs, None, manifest, media_type)
}

/// [`ingest_manifest_with`], importing from and publishing to the
/// replicas' shared index when there is one.
pub fn ingest_manifest_in(
    db: &redb::Database,
    store: &ObjectStore,
    blobs: &dyn BlobSource,
    shared: Option<&SharedLayers>,
    manifest: &[u8],
    media_type: &str,
) -> Result<(), IngestError> {
    let m = match oci::parse_manifest(manifest, media_type).map_err(invalid)? {
        ParsedManifest::Image(m) => m,
        ParsedManifest::Index(_) => return Ok(()),
        ParsedManifest::Other(what) => {
            tracing::info!(
                "not ingesting {what}: layerlink sync needs OCI or Docker schema 2 images"
            );
            return Ok(());
        }
    };
    if !m.is_container_image() {
        return Ok(());
    }
    let config = read_config(blobs, &m.config.digest)?;
    let diff_ids = oci::config_diff_ids(&config).map_err(invalid)?;
    if diff_ids.len() != m.layers.len() {
        return Err(IngestError::Invalid(format!(
            "manifest has {} layers but its config {} lists {} diff_ids",
            m.layers.len(),
            m.config.digest,
            diff_ids.len()
        )));
    }
    for (l, diff_id) in m.layers.iter().zip(&diff_ids) {
        ingest_one(db, store, blobs, shared, &l.digest, &l.media_type, diff_id)?;
    }
    Ok(())
}

/// Import layer `diff_id` (held in blob `blob`) from the replicas' shared
/// index unless this data directory has it: `true` when it is indexed
/// here afterwards. A failure is logged, not returned (the caller treats
/// the layer as unknown, as before the shared index).
pub fn import_shared_layer(
    db: &redb::Database,
    store: &ObjectStore,
    shared_index: &SharedLayers,
    blob: &Digest,
    diff_id: &Digest,
) -> bool {
    let _lock = LayerLock::acquire(*diff_id);
    match index::layer_meta(db, diff_id) {
        Ok(Some(_)) => return true,
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(layer = %diff_id, error = %e, "reading the layer index");
            return false;
        }
    }
    match import_logged(db, store, shared_index, blob, diff_id) {
        Ok(imported) => imported,
        Err(e) => {
            tracing::warn!(
                layer = %diff_id,
                error = %e,
                "importing a held layer from the shared index failed"
            );
            false
        }
    }
}

/// [`shared::import_layer`], logging what an import did: `true` when the
/// layer was imported, `false` when no replica published it.
fn import_logged(
    db: &redb::Database,
    store: &ObjectStore,
    shared_index: &SharedLayers,
    blob: &Digest,
    diff_id: &Digest,
) -> Result<bool, IngestError> {
    let started = std::time::Instant::now();
    let Some(imp) = shared::import_layer(db, store, shared_index, blob, diff_id)? else {
        return Ok(false);
    };
    tracing::info!(
        layer = %diff_id,
        entries = imp.meta.entries,
        objects_downloaded = imp.downloaded,
        bytes = imp.bytes,
        seconds = started.elapsed().as_secs_f64(),
        "layer imported from the shared index"
    );
    Ok(true)
}

/// Record that compressed blob `blob` holds layer `diff_id` (already
/// indexed from another blob).
fn link_blob(db: &redb::Database, blob: &Digest, diff_id: &Digest) -> Result<(), IngestError> {
    let txn = db.begin_write().map_err(IngestError::store)?;
    {
        let mut t = txn.open_table(index::BLOBS).map_err(IngestError::store)?;
        t.insert(&blob.0, &diff_id.0).map_err(IngestError::store)?;
    }
    txn.commit().map_err(IngestError::store)
}

fn invalid(e: oci::DocError) -> IngestError {
    IngestError::Invalid(e.to_string())
}

fn ingest_one(
    db: &redb::Database,
    store: &ObjectStore,
    blobs: &dyn BlobSource,
    shared: Option<&SharedLayers>,
    blob: &Digest,
    media_type: &str,
    diff_id: &Digest,
) -> Result<(), IngestError> {
    let _lock = LayerLock::acquire(*diff_id);
    if index::layer_meta(db, diff_id)
        .map_err(IngestError::store)?
        .is_some()
    {
        if index::diff_id_for_blob(db, blob).map_err(IngestError::store)? == Some(*diff_id) {
            return Ok(());
        }
        // Same layer content, another blob (other compression): check the
        // claim, then link the blob.
        let r = blobs
            .open(blob)
            .map_err(IngestError::store)?
            .ok_or(IngestError::MissingBlob(*blob))?;
        let (found, _) = uncompressed_digest(r, media_type).map_err(|e| IngestError::Corrupt {
            layer: *blob,
            message: e.to_string(),
        })?;
        if found != *diff_id {
            return Err(IngestError::DiffIdMismatch {
                layer: *blob,
                expected: *diff_id,
                found,
            });
        }
        return link_blob(db, blob, diff_id);
    }
    let started = std::time::Instant::now();
    let mut import_failed = false;
    if let Some(shared_index) = shared {
        match import_logged(db, store, shared_index, blob, diff_id) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => {
                import_failed = true;
                tracing::warn!(
                    layer = %diff_id,
                    error = %e,
                    "importing a layer from the shared index failed; ingesting it from its blob"
                )
            }
        }
    }
    let r = blobs
        .open(blob)
        .map_err(IngestError::store)?
        .ok_or(IngestError::MissingBlob(*blob))?;
    match ingest_layer(db, store, blob, media_type, diff_id, r)? {
        LayerOutcome::Ingested(meta) => tracing::info!(
            "ingested layer {diff_id}: {} entries, {} files, {} new objects, {:.1}s",
            meta.entries,
            meta.regular_files,
            meta.new_objects,
            started.elapsed().as_secs_f64()
        ),
        LayerOutcome::AlreadyIngested => return Ok(()),
    }
    if let Some(shared_index) = shared {
        // Other replicas import it instead of ingesting it again; a failure
        // costs them that work, not this push.
        let started = std::time::Instant::now();
        match shared::publish_layer(db, store, shared_index, diff_id, blob, import_failed) {
            Ok(uploaded) => tracing::info!(
                layer = %diff_id,
                objects_uploaded = uploaded,
                seconds = started.elapsed().as_secs_f64(),
                "layer published to the shared index"
            ),
            Err(e) => tracing::warn!(
                layer = %diff_id,
                error = format!("{e:#}"),
                "publishing a layer to the shared index failed"
            ),
        }
    }
    Ok(())
}
