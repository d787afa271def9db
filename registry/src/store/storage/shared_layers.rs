//! The layer index and the file objects, shared by replicas: when the
//! metadata is in PostgreSQL and the blobs in a bucket, a replica that
//! ingests a layer *publishes* it — its index rows to PostgreSQL, its new
//! file objects to the bucket — and another replica that needs the layer
//! *imports* it (one row, the objects it lacks) instead of downloading the
//! layer blob and decompressing, hashing and compressing every file again.
//!
//! | table | key | value |
//! |---|---|---|
//! | `index_layer_records` | diff_id | postcard `LayerMeta`, the entry rows (u32 LE length ‖ postcard `EntryRecord`, in tar order), published (Unix s) |
//! | `index_layer_blobs` | compressed blob digest | diff_id (a replica verified the claim) |
//! | `index_layer_objects` | (diff_id, object) | size — which objects a published layer uses |
//!
//! Objects live in the bucket under `objects/sha256/<hex>`, byte for byte
//! the data directory's zstd file ([`S3BlobStore::put_objects`]).
//!
//! **Each data directory is a read-through cache.** The serving code
//! (planning, archives, deltas, edits) keeps reading the local redb index
//! and the local object files: a layer's rows are immutable once written
//! (an edit makes a new layer with a new diff_id), so a local copy is never
//! stale, and a sync reads thousands of rows and objects that must not each
//! be a network round trip. What the shared stores change is who does the
//! work: a layer is ingested once per fleet, not once per replica, and
//! file-level dedup on any replica covers every layer any replica ingested.
//!
//! **Races.** Publishing uploads the objects first and writes the rows in
//! one transaction after (`ON CONFLICT DO NOTHING`: two replicas ingesting
//! the same layer at once publish identical content, the first row wins),
//! so a published row only names objects already in the bucket. Importing
//! checks everything it reads (each object's content hashes to its name,
//! the rows decode and agree with the layer's meta); any failure — a row
//! the garbage collector deleted meanwhile, an object it removed, a
//! PostgreSQL or bucket outage — makes the replica ingest the layer from
//! its blob as if nothing were shared. The shared stores can cost work,
//! never a wrong tree.
//!
//! This module only moves bytes; reading and writing the local index is
//! the ingest's (`crate::ingest::shared`), so the storage layer stays
//! below the index.

use super::pg::{digest_of, to_i64, Pg};
use super::S3BlobStore;
use layerlink_proto::Digest;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

const MIGRATIONS: &[&str] = &["CREATE TABLE index_layer_records (
        diff_id bytea PRIMARY KEY,
        meta bytea NOT NULL,
        entries bytea NOT NULL,
        published bigint NOT NULL
    );
    CREATE TABLE index_layer_blobs (
        blob bytea PRIMARY KEY,
        diff_id bytea NOT NULL
    );
    CREATE INDEX index_layer_blobs_by_layer ON index_layer_blobs (diff_id);
    CREATE TABLE index_layer_objects (
        diff_id bytea NOT NULL,
        object bytea NOT NULL,
        size bigint NOT NULL,
        PRIMARY KEY (diff_id, object)
    );
    CREATE INDEX index_layer_objects_by_object ON index_layer_objects (object);"];

/// The shared layer index (PostgreSQL) and object bucket.
pub struct SharedLayers {
    pg: Arc<Pg>,
    bucket: Arc<S3BlobStore>,
}

impl std::fmt::Debug for SharedLayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLayers").finish_non_exhaustive()
    }
}

/// A layer as published: the raw forms of its local index rows.
#[derive(Debug, Clone)]
pub struct LayerRecord {
    /// postcard `LayerMeta`.
    pub meta: Vec<u8>,
    /// Entry rows, each a u32 LE length then the postcard `EntryRecord`.
    pub entries: Vec<u8>,
}

/// What a replica publishes for one layer it ingested.
#[derive(Debug)]
pub struct Publication {
    /// The layer.
    pub diff_id: Digest,
    /// The blob it was ingested from.
    pub blob: Digest,
    /// Its rows.
    pub record: LayerRecord,
    /// Its distinct objects: digest, content size, the local stored file.
    pub objects: Vec<(Digest, u64, PathBuf)>,
    /// Upload every object, even those a published layer names: this
    /// replica failed to import the layer (an object a collection removed
    /// under a publication racing it), so the bucket is repaired rather
    /// than trusted.
    pub repair: bool,
}

/// What [`SharedLayers::collect`] found (and, unless a dry run, removed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedSweep {
    /// Published layers no longer needed.
    pub layers: u64,
    /// Bucket objects no published layer uses.
    pub objects: u64,
    /// Their bytes (as stored).
    pub object_bytes: u64,
}

impl SharedLayers {
    /// The shared index on `pg` (its tables created or migrated) and the
    /// objects in `bucket`.
    pub fn open(pg: Arc<Pg>, bucket: Arc<S3BlobStore>) -> anyhow::Result<SharedLayers> {
        pg.migrate("layers", MIGRATIONS)?;
        Ok(SharedLayers { pg, bucket })
    }

    /// The published record of layer `diff_id`, if a replica published it
    /// and verified that `blob` holds it.
    pub fn record(&self, blob: &Digest, diff_id: &Digest) -> anyhow::Result<Option<LayerRecord>> {
        self.pg.read(
            "SELECT r.meta, r.entries FROM index_layer_records r
             JOIN index_layer_blobs b ON b.diff_id = r.diff_id
             WHERE b.blob = $1 AND r.diff_id = $2",
            (blob.0.to_vec(), diff_id.0.to_vec()),
            |rows| {
                Ok(rows.first().map(|r| LayerRecord {
                    meta: r.get(0),
                    entries: r.get(1),
                }))
            },
        )
    }

    /// Which of `blobs` hold a published layer: blob → diff_id.
    pub fn layers_of_blobs(
        &self,
        blobs: &[Digest],
    ) -> anyhow::Result<std::collections::HashMap<Digest, Digest>> {
        let keys: Vec<Vec<u8>> = blobs.iter().map(|b| b.0.to_vec()).collect();
        self.pg.read(
            "SELECT b.blob, b.diff_id FROM index_layer_blobs b
             JOIN index_layer_records r ON r.diff_id = b.diff_id
             WHERE b.blob = ANY($1)",
            (keys,),
            |rows| {
                rows.into_iter()
                    .map(|r| Ok((digest_of(r.get(0))?, digest_of(r.get(1))?)))
                    .collect()
            },
        )
    }

    /// Download objects from the bucket, each to its file; the bytes
    /// received.
    pub fn download(&self, items: Vec<(Digest, PathBuf)>) -> std::io::Result<u64> {
        self.bucket.get_objects(items)
    }

    /// Publish a layer: upload the objects the bucket does not hold yet (a
    /// published layer names only objects it holds), then write the rows.
    /// Returns the objects uploaded. A layer already published is left as
    /// it is (its blob row is added).
    pub fn publish(&self, p: Publication) -> anyhow::Result<usize> {
        let digests: Vec<Vec<u8>> = p.objects.iter().map(|(d, _, _)| d.0.to_vec()).collect();
        let held: HashSet<Digest> = if p.repair {
            HashSet::new()
        } else {
            self.pg.read(
                "SELECT DISTINCT object FROM index_layer_objects WHERE object = ANY($1)",
                (digests.clone(),),
                |rows| rows.into_iter().map(|r| digest_of(r.get(0))).collect(),
            )?
        };
        let upload: Vec<(Digest, PathBuf)> = p
            .objects
            .iter()
            .filter(|(d, _, _)| !held.contains(d))
            .map(|(d, _, path)| (*d, path.clone()))
            .collect();
        let uploaded = upload.len();
        self.bucket.put_objects(upload)?;
        let sizes = p
            .objects
            .iter()
            .map(|(_, s, _)| to_i64(*s))
            .collect::<anyhow::Result<Vec<i64>>>()?;
        let now = to_i64(crate::clock::now_secs())?;
        let data = (
            p.diff_id.0.to_vec(),
            p.blob.0.to_vec(),
            p.record,
            digests,
            sizes,
            now,
        );
        self.pg.write(data, |tx, data| {
            let (diff_id, blob, record, digests, sizes, now) = data;
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO index_layer_records (diff_id, meta, entries, published)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (diff_id) DO NOTHING",
                    &[diff_id, &record.meta, &record.entries, now],
                )
                .await?;
                tx.execute(
                    "INSERT INTO index_layer_objects (diff_id, object, size)
                     SELECT $1, o, s FROM UNNEST($2::bytea[], $3::bigint[]) AS t(o, s)
                     ON CONFLICT DO NOTHING",
                    &[diff_id, digests, sizes],
                )
                .await?;
                tx.execute(
                    "INSERT INTO index_layer_blobs (blob, diff_id) VALUES ($1, $2)
                     ON CONFLICT (blob) DO NOTHING",
                    &[blob, diff_id],
                )
                .await?;
                Ok(())
            })
        })?;
        Ok(uploaded)
    }

    /// Garbage collection of the shared index: forget every published
    /// layer that is not in `keep_layers`, has no blob in `keep_blobs` and
    /// was published before `cutoff` (rows first), then delete the bucket's
    /// objects that no remaining layer uses and that were written before
    /// `cutoff` (a publication in flight uploads before it writes rows).
    /// A dry run only counts.
    pub fn collect(
        &self,
        keep_layers: &HashSet<Digest>,
        keep_blobs: &HashSet<Digest>,
        cutoff: SystemTime,
        dry: bool,
    ) -> anyhow::Result<SharedSweep> {
        let cutoff_secs = cutoff
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let layers: Vec<(Digest, i64)> = self.pg.read(
            "SELECT diff_id, published FROM index_layer_records",
            (),
            |rows| {
                rows.into_iter()
                    .map(|r| Ok((digest_of(r.get(0))?, r.get(1))))
                    .collect()
            },
        )?;
        let blobs: Vec<(Digest, Digest)> =
            self.pg
                .read("SELECT blob, diff_id FROM index_layer_blobs", (), |rows| {
                    rows.into_iter()
                        .map(|r| Ok((digest_of(r.get(0))?, digest_of(r.get(1))?)))
                        .collect()
                })?;
        let mut keep = keep_layers.clone();
        keep.extend(
            blobs
                .iter()
                .filter(|(b, _)| keep_blobs.contains(b))
                .map(|(_, l)| *l),
        );
        let doomed: Vec<Vec<u8>> = layers
            .iter()
            .filter(|(l, published)| {
                !keep.contains(l) && u64::try_from(*published).unwrap_or(0) < cutoff_secs
            })
            .map(|(l, _)| l.0.to_vec())
            .collect();
        let mut sweep = SharedSweep {
            layers: doomed.len() as u64,
            ..SharedSweep::default()
        };
        if !dry && !doomed.is_empty() {
            self.pg.write(doomed.clone(), |tx, doomed| {
                Box::pin(async move {
                    for table in [
                        "DELETE FROM index_layer_objects WHERE diff_id = ANY($1)",
                        "DELETE FROM index_layer_blobs WHERE diff_id = ANY($1)",
                        "DELETE FROM index_layer_records WHERE diff_id = ANY($1)",
                    ] {
                        tx.execute(table, &[doomed]).await?;
                    }
                    Ok(())
                })
            })?;
        }
        // Objects used by the layers that stay (also right in a dry run,
        // whose doomed rows are still there).
        let used: HashSet<Digest> = self.pg.read(
            "SELECT DISTINCT object FROM index_layer_objects WHERE NOT (diff_id = ANY($1))",
            (doomed,),
            |rows| rows.into_iter().map(|r| digest_of(r.get(0))).collect(),
        )?;
        let gone: Vec<(Digest, u64)> = self
            .bucket
            .list_objects()?
            .into_iter()
            .filter(|(d, _, t)| !used.contains(d) && *t < cutoff)
            .map(|(d, size, _)| (d, size))
            .collect();
        sweep.objects = gone.len() as u64;
        sweep.object_bytes = gone.iter().map(|(_, s)| s).sum();
        if !dry {
            let digests: Vec<Digest> = gone.iter().map(|(d, _)| *d).collect();
            self.bucket.remove_objects(&digests)?;
        }
        Ok(sweep)
    }

    /// Published layers and the bucket's objects (tests, `stats`).
    pub fn counts(&self) -> anyhow::Result<(u64, u64)> {
        let layers = self
            .pg
            .read("SELECT count(*) FROM index_layer_records", (), |rows| {
                Ok(rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0))
            })?;
        let objects = self.bucket.list_objects()?.len() as u64;
        Ok((u64::try_from(layers).unwrap_or(0), objects))
    }
}
