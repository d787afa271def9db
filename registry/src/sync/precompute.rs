//! Work done once per push instead of once per device: after a manifest
//! is committed, one background thread makes what the first device to sync
//! the image would otherwise wait for.
//!
//! * **zstd content frames** (`sync::archive::zstd`): every object of the
//!   image's layers at least `inline_below()` bytes gets its cached level-19
//!   frame. Measured on `upd:v1` (63.5 MB of layers): ~50 s of one core,
//!   which the first cold sync paid inside its request before.
//! * **The cold archive** (`sync::archive::cold`): the whole zstd archive
//!   for a device that holds nothing, compressed as one stream, so a first
//!   sync gets what neighbouring files share (base-a:v1: 47 vs 52 MiB).
//! * **Binary deltas** (`sync::delta`) for the likely pairs: each file of
//!   the new image against the file at the same path (or the versioned
//!   name) in the other tagged images of the same repository (at most
//!   [`MAX_PREVIOUS`] of them), within [`DELTA_BUDGET`] of compute per push.
//!   Pairs outside the budget are computed on first request, as before
//!   (`delta::REQUEST_BUDGET` per request).
//!
//! The jobs run one at a time in push order on a single thread, so a burst
//! of pushes costs at most one core; nothing waits for them (a sync that
//! arrives first makes what it needs itself — cache files are written to a
//! temporary name and renamed, so both writers are safe). A failure is
//! logged and forgotten: the caches are an optimisation, never a source of
//! truth. The config setting `precompute = false` turns this off.

use crate::ingest::read_config;
use crate::oci::{self, ParsedManifest};
use crate::store::index::{self, EntryKind};
use crate::store::storage::Storage;
use crate::sync::archive::zstd::{inline_below, open_frame};
use crate::sync::archive::{cold, Metadata};
use crate::sync::delta::{DeltaPlanner, PatchFormat};
use layerlink_proto::Digest;
use redb::ReadableDatabase as _;
use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Compute time the deltas of one push may take.
pub const DELTA_BUDGET: Duration = Duration::from_secs(120);
/// Other tagged images of the repository whose files are delta bases.
pub const MAX_PREVIOUS: usize = 4;

/// One pushed image to prepare.
#[derive(Debug, Clone)]
pub struct Job {
    /// Repository it was pushed to.
    pub repository: String,
    /// Its manifest.
    pub manifest: Digest,
}

/// What one job made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Frames made (objects whose frame was already cached not counted).
    pub frames: u64,
    /// Deltas computed and found worth sending.
    pub deltas: u64,
    /// Deltas computed and found not worth it.
    pub whole: u64,
    /// Size of the cold archive made (`archive::cold`), when one was made.
    pub cold_bytes: Option<u64>,
}

/// The background thread's queue. Dropping it lets the thread finish the
/// jobs queued and exit.
pub struct Precompute {
    tx: Mutex<mpsc::Sender<Job>>,
    /// Jobs queued and not finished.
    pending: Arc<std::sync::atomic::AtomicU64>,
}

impl Precompute {
    /// Start the thread over `storage`.
    pub fn start(storage: Arc<Storage>) -> Precompute {
        let (tx, rx) = mpsc::channel::<Job>();
        let pending = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let left = pending.clone();
        let spawned = std::thread::Builder::new()
            .name("precompute".into())
            .spawn(move || {
                for job in rx {
                    let started = Instant::now();
                    match run(&storage, &job) {
                        Ok(o) => tracing::info!(
                            repository = job.repository,
                            digest = %job.manifest,
                            "precomputed {} zstd frames, {} deltas ({} not worth sending), cold archive {} B in {:.1}s",
                            o.frames,
                            o.deltas,
                            o.whole,
                            o.cold_bytes.unwrap_or(0),
                            started.elapsed().as_secs_f64()
                        ),
                        Err(e) => tracing::warn!(
                            repository = job.repository,
                            digest = %job.manifest,
                            "precompute failed (syncs will compute on demand): {e:#}"
                        ),
                    }
                    left.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("precompute thread not started: {e}");
        }
        Precompute {
            tx: Mutex::new(tx),
            pending,
        }
    }

    /// Queue `job` (never blocks).
    pub fn queue(&self, job: Job) {
        self.pending
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if tx.send(job).is_err() {
            self.pending
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Jobs queued and not finished yet.
    pub fn pending(&self) -> u64 {
        self.pending.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An image as an agent asks for it: manifest and config bytes (the
/// archive's metadata markers) and its layers' diff_ids, base first.
struct Image {
    manifest: Vec<u8>,
    config: Vec<u8>,
    layers: Vec<Digest>,
}

/// Image `manifest` of `repository`; `None` for anything that is not an
/// ingested container image (indexes, artifacts).
fn load_image(
    storage: &Storage,
    repository: &str,
    manifest: &Digest,
) -> anyhow::Result<Option<Image>> {
    let Some(stored) = storage.meta().manifest(repository, manifest)? else {
        return Ok(None);
    };
    let m = match oci::parse_manifest(&stored.bytes, &stored.media_type)? {
        ParsedManifest::Image(m) if m.is_container_image() => m,
        _ => return Ok(None),
    };
    let config = read_config(storage, &m.config.digest)?;
    let layers = oci::config_diff_ids(&config)?;
    Ok(Some(Image {
        manifest: stored.bytes,
        config,
        layers,
    }))
}

/// Make the frames and deltas of `job` (blocking; what the thread runs).
pub fn run(storage: &Storage, job: &Job) -> anyhow::Result<Outcome> {
    let mut out = Outcome::default();
    let Some(img) = load_image(storage, &job.repository, &job.manifest)? else {
        return Ok(out);
    };
    let layers = &img.layers;
    if crate::ingest::unsyncable_reason(storage.db(), &job.manifest)?.is_some() {
        return Ok(out);
    }
    let objects = index::object_store(storage);
    let txn = storage.db().begin_read()?;

    // Frames of every large object of the image.
    let threshold = inline_below();
    let mut seen = HashSet::new();
    for l in layers {
        for d in index::layer_objects(&txn, l)? {
            if !seen.insert(d) {
                continue;
            }
            let Some(meta) = index::object_meta(&txn, &d)? else {
                continue;
            };
            if meta.size < threshold {
                continue;
            }
            // `open_frame` makes the frame unless an intact one is cached
            // (a torn one is made again).
            let cached = crate::sync::archive::zstd::frame_path(&objects, &d).exists();
            open_frame(&objects, &d, meta.size)?;
            if !cached {
                out.frames += 1;
            }
        }
    }

    // The whole archive for a device that holds nothing (cold sync), as an
    // agent asks for it: every layer in image order, with the manifest and
    // config markers.
    let meta = Metadata {
        manifest: &img.manifest,
        config: &img.config,
    };
    let (len, made) = cold::make(storage.db(), &objects, Some(meta), layers)?;
    if made {
        out.cold_bytes = Some(len);
    }

    // Deltas against the repository's other tagged images.
    let mut previous: Vec<Digest> = Vec::new();
    let mut tagged = storage.meta().tagged(&job.repository)?;
    tagged.sort();
    let mut images: Vec<Digest> = tagged.into_iter().map(|(_, d)| d).collect();
    // Several tags may name one image (not always neighbours in tag order).
    let mut listed = HashSet::new();
    images.retain(|d| listed.insert(*d));
    images.retain(|d| *d != job.manifest);
    for d in images.iter().take(MAX_PREVIOUS) {
        let Some(other) = load_image(storage, &job.repository, d)? else {
            continue;
        };
        for l in other.layers {
            if !layers.contains(&l) && !previous.contains(&l) {
                previous.push(l);
            }
        }
    }
    if previous.is_empty() {
        return Ok(out);
    }
    let held_objects: HashSet<Digest> = previous
        .iter()
        .map(|l| index::layer_objects(&txn, l))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    // Agents that ask for deltas ask for format 2 since it exists; format-1
    // patches are made on request for older agents.
    let mut planner = DeltaPlanner::new(&txn, &objects, &previous, PatchFormat::Blocks)?
        .with_budget(DELTA_BUDGET);
    for l in layers {
        for rec in index::layer_entries(&txn, l)? {
            let rec = rec?;
            if rec.kind != EntryKind::File {
                continue;
            }
            let Some(obj) = rec.object else { continue };
            if held_objects.contains(&obj) {
                continue;
            }
            planner.patch_for(&rec.path, &obj, rec.size);
        }
    }
    out.deltas = planner.stats.sent;
    out.whole = planner.stats.whole;
    Ok(out)
}
