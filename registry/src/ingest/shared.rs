//! Publishing an ingested layer to the replicas' shared index, and
//! importing a layer another replica published (see
//! [`crate::store::storage::shared_layers`] for the tables, the bucket and
//! why each data directory stays a read-through cache).

use super::layer::commit;
use super::{IngestError, LayerOutcome};
use crate::store::index::{self, open_read, EntryRecord, LayerMeta};
use crate::store::objects::{ObjectStore, OBJECTS_META};
use crate::store::storage::shared_layers::{LayerRecord, Publication, SharedLayers};
use anyhow::Context;
use layerlink_proto::Digest;
use redb::ReadableDatabase as _;
use std::collections::HashMap;
use std::io::Write;

/// What [`import_layer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The layer's meta as recorded locally.
    pub meta: LayerMeta,
    /// Objects downloaded (the rest were in the data directory already).
    pub downloaded: usize,
    /// Their bytes, as stored.
    pub bytes: u64,
}

/// Publish layer `diff_id` (ingested locally from `blob`): its rows and
/// the objects the bucket lacks (every object with `repair`: see
/// [`Publication::repair`]). Returns the objects uploaded.
pub fn publish_layer(
    db: &redb::Database,
    store: &ObjectStore,
    shared: &SharedLayers,
    diff_id: &Digest,
    blob: &Digest,
    repair: bool,
) -> anyhow::Result<usize> {
    let txn = db.begin_read()?;
    let meta = index::layer_meta_in(&txn, diff_id)?
        .with_context(|| format!("layer {diff_id} is not ingested"))?;
    let mut entries = Vec::new();
    if let Some(t) = open_read(&txn, index::ENTRIES)? {
        let (lo, hi) = (
            index::entry_key(diff_id, 0),
            index::entry_key(diff_id, u32::MAX),
        );
        for item in t.range::<&[u8]>(&lo[..]..=&hi[..])? {
            let (_, v) = item?;
            let row = v.value();
            entries.extend_from_slice(&u32::try_from(row.len())?.to_le_bytes());
            entries.extend_from_slice(row);
        }
    }
    let mut objects = Vec::new();
    for d in index::layer_objects(&txn, diff_id)? {
        let m = index::object_meta(&txn, &d)?
            .with_context(|| format!("object {d} of layer {diff_id} has no row"))?;
        objects.push((d, m.size, store.path(&d)));
    }
    drop(txn);
    shared.publish(Publication {
        diff_id: *diff_id,
        blob: *blob,
        record: LayerRecord {
            meta: postcard::to_allocvec(&meta)?,
            entries,
        },
        objects,
        repair,
    })
}

/// Import layer `diff_id` (pushed as `blob`) from the shared index:
/// `None` when no replica published it. Every object the data directory
/// lacks is downloaded and checked against its digest; the rows are
/// checked against the layer's meta; then the layer is recorded exactly
/// as an ingest records it. An error leaves nothing recorded.
pub fn import_layer(
    db: &redb::Database,
    store: &ObjectStore,
    shared: &SharedLayers,
    blob: &Digest,
    diff_id: &Digest,
) -> Result<Option<Imported>, IngestError> {
    let Some(record) = shared
        .record(blob, diff_id)
        .map_err(|e| IngestError::store(format!("{e:#}")))?
    else {
        return Ok(None);
    };
    let bad =
        |what: String| IngestError::store(format!("shared record of layer {diff_id}: {what}"));
    let mut meta: LayerMeta =
        postcard::from_bytes(&record.meta).map_err(|e| bad(format!("meta: {e}")))?;
    // The objects the rows name, with their sizes (as an ingest counts them).
    let mut distinct: HashMap<Digest, u64> = HashMap::new();
    let mut rows = 0u32;
    let mut rest = record.entries.as_slice();
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("truncated entry rows".into()))?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(bad("truncated entry rows".into()));
        }
        let (row, tail) = tail.split_at(len);
        let rec: EntryRecord =
            postcard::from_bytes(row).map_err(|e| bad(format!("entry {rows}: {e}")))?;
        if let Some(d) = rec.object {
            distinct.insert(d, rec.size);
        }
        rows += 1;
        rest = tail;
    }
    if rows != meta.records || distinct.len() != meta.distinct_objects as usize {
        return Err(bad(format!(
            "{rows} rows and {} objects, its meta says {} and {}",
            distinct.len(),
            meta.records,
            meta.distinct_objects
        )));
    }

    let mut staging = store.stage().map_err(IngestError::store)?;
    let missing: Vec<Digest> = {
        let txn = db.begin_read().map_err(IngestError::store)?;
        let known = open_read(&txn, OBJECTS_META).map_err(IngestError::store)?;
        let mut out = Vec::new();
        for d in distinct.keys() {
            let in_meta = match &known {
                Some(t) => t.get(&d.0).map_err(IngestError::store)?.is_some(),
                None => false,
            };
            if !(in_meta && store.exists(d)) {
                out.push(*d);
            }
        }
        out
    };
    let downloads: Vec<(Digest, std::path::PathBuf)> = missing
        .iter()
        .map(|d| (*d, staging.dir().join(format!("{}.download", d.hex()))))
        .collect();
    let bytes = shared
        .download(downloads.clone())
        .map_err(|e| bad(format!("downloading its objects: {e}")))?;
    for (d, path) in downloads {
        staging
            .adopt_stored(d, &path)
            .map_err(|e| bad(format!("object {d}: {e}")))?;
    }

    let spill_path = staging.dir().join("entries.spill");
    std::fs::File::create(&spill_path)
        .and_then(|mut f| f.write_all(&record.entries))
        .map_err(IngestError::store)?;
    meta.new_objects = 0;
    meta.ingested_at = crate::clock::now_secs();
    let first_blob = meta.blob;
    let outcome = commit(db, &mut staging, &spill_path, diff_id, meta, &distinct)?;
    if first_blob != *blob {
        // The row named `blob` as holding this layer (a replica checked it).
        super::link_blob(db, blob, diff_id)?;
    }
    let meta = match outcome {
        LayerOutcome::Ingested(m) => m,
        // Recorded meanwhile by this replica (an ingest cannot race: the
        // caller holds the layer's lock; kept for completeness).
        LayerOutcome::AlreadyIngested => index::layer_meta(db, diff_id)
            .map_err(IngestError::store)?
            .ok_or_else(|| bad("vanished after commit".into()))?,
    };
    Ok(Some(Imported {
        meta,
        downloaded: missing.len(),
        bytes,
    }))
}
