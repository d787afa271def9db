//! Binary deltas (archive feature `file-delta`, `proto/SPEC.md` "Binary
//! deltas"): a modified file travels as a patch against a version the
//! device holds.
//!
//! **Choosing the old file.** For a new object at path `p` of a layer, the
//! first of: `p` in the held layer the section is built on (`layer-base`);
//! `p` in any held layer (indexed); a file of a held layer in the same
//! directory whose name is the same once digit runs are ignored (versioned
//! `.so` names: `libssl.so.3.0.20` ~ `libssl.so.3.0.22`) and whose size is
//! within a factor of 2. Files named like compressed data (`.gz`, `.xz`,
//! `.zst`, …) are skipped: measured with `layerlink-deltameasure`, their
//! patches are 0.92–0.98 of the whole file. The held layers are the
//! request's *readable* holdings (`access::readable_holdings`): a patch
//! describes new content relative to old, so a base from a layer the device
//! may not read would leak that layer's file to a device that lies about
//! holding it. Files under
//! [`MIN_DELTA_SIZE`] or over [`MAX_DELTA_SIZE`] are skipped too.
//!
//! **Computing.** bidiff 1.0 (`bidiff::simple_diff`, one thread), whose
//! output the agent applies by streaming with bipatch. Measured on the perl
//! and libssl3 security updates of Debian bookworm: ELF patches are 0.096 of
//! the whole file after zstd -19 (0.100 after gzip), text 0.037; the encoder
//! needs ~7.5x the file in memory (35 MiB peak for libcrypto's 4.7 MB) and
//! ~175 ms per MB. One delta is computed at a time in the process
//! (a global lock bounds memory); each archive request may spend at most
//! [`REQUEST_BUDGET`] on computing (waiting for the lock included), after
//! which files go whole (already cached deltas are still used).
//!
//! **Sending.** Only when the patch is clearly smaller: zstd-3 of the patch
//! plus [`ENTRY_OVERHEAD`] at most [`MAX_RATIO`] of zstd-3 of the whole
//! file. Measured ratios are bimodal (≤ 0.15 for rebuilt ELF and edited
//! text, ≥ 0.75 for compressed or rewritten data), so the threshold sits in
//! the gap.
//!
//! **Cache.** `<data>/deltas/<2 hex>/<old hex>-<new hex>.v<FORMAT>`: an
//! 8-byte little-endian raw patch length, then the patch as one zstd frame;
//! an empty file records "not worth it". Written to a temp file and renamed.
//! Objects are immutable, so entries never go stale.

use crate::store::index::{self, EntryKind, IndexError};
use crate::store::objects::ObjectStore;
use layerlink_proto::archive::normalize_entry_path;
use layerlink_proto::Digest;
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Patch format version (in cache names): bidiff 1.0's format.
pub const FORMAT: u32 = 1;
/// Smaller new files go whole (a delta entry's PAX records cost ~160 bytes).
pub const MIN_DELTA_SIZE: u64 = 4 * 1024;
/// Larger old or new files go whole (encoder memory is ~7.5x the file).
pub const MAX_DELTA_SIZE: u64 = 32 * 1024 * 1024;
/// Compute time one archive request may spend on deltas.
pub const REQUEST_BUDGET: Duration = Duration::from_secs(10);
/// Send a delta only when compressed patch + overhead ≤ this × compressed whole.
pub const MAX_RATIO: f64 = 0.5;
/// Bytes a delta entry costs beyond a whole-file entry (PAX records).
pub const ENTRY_OVERHEAD: u64 = 160;
/// zstd level of the worth-it estimate and of cached patches.
const ZSTD_LEVEL: i32 = 3;

/// Extensions of files that are compressed already (deltas do not pay).
const COMPRESSED: &[&str] = &[
    ".gz", ".tgz", ".xz", ".txz", ".zst", ".bz2", ".lz4", ".lzma", ".zip", ".jar", ".apk", ".png",
    ".jpg", ".jpeg", ".gif", ".webp", ".woff", ".woff2", ".deb", ".rpm", ".7z",
];

/// One delta computation at a time, process-wide.
static COMPUTE: Mutex<()> = Mutex::new(());
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A patch ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    /// The held object it applies to.
    pub base: Digest,
    /// Raw patch length (the tar entry's size).
    pub len: u64,
    /// Cache file (length header + zstd frame).
    pub file: PathBuf,
}

impl Patch {
    /// The raw patch bytes, streamed from the cache file.
    pub fn reader(&self) -> io::Result<impl Read> {
        let mut f = fs::File::open(&self.file)?;
        let mut n = [0u8; 8];
        f.read_exact(&mut n)?;
        Ok(zstd::stream::read::Decoder::new(f)?.take(self.len))
    }
}

/// Write patch `p`'s raw bytes and the tar padding to `out`.
pub fn write_patch(out: &mut impl Write, p: &Patch, buf: &mut [u8]) -> io::Result<()> {
    let mut r = p.reader()?;
    let mut left = p.len;
    while left > 0 {
        let n = r.read(buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "cached delta {} is shorter than {} bytes",
                    p.file.display(),
                    p.len
                ),
            ));
        }
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    let pad = (512 - (p.len % 512) as usize) % 512;
    out.write_all(&[0u8; 512][..pad])
}

/// Counters of one archive request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeltaStats {
    /// Delta entries written.
    pub sent: u64,
    /// Raw patch bytes of those.
    pub patch_bytes: u64,
    /// New bytes those files have.
    pub new_bytes: u64,
    /// Deltas computed (cache misses).
    pub computed: u64,
    /// Candidates found but not worth it (or over budget).
    pub whole: u64,
    /// Time spent computing.
    pub compute_time: Duration,
}

/// What a held file is known by.
#[derive(Debug, Clone, Copy)]
struct Held {
    object: Digest,
    size: u64,
}

/// Finds old versions and patches for one archive request.
pub struct DeltaPlanner {
    objects: ObjectStore,
    dir: PathBuf,
    /// Normalised path -> held file, all held layers.
    by_path: HashMap<Vec<u8>, Held>,
    /// (dir, name with digit runs as '#') -> held files.
    by_stem: HashMap<Vec<u8>, Vec<Held>>,
    /// The current section's base layer, path -> held file.
    base: HashMap<Vec<u8>, Held>,
    base_id: Option<Digest>,
    started: Instant,
    budget: Duration,
    /// Counters so far.
    pub stats: DeltaStats,
}

/// `<data>/deltas` next to `objects`' root (`<data>/objects`).
pub fn cache_dir(objects: &ObjectStore) -> PathBuf {
    objects
        .root()
        .parent()
        .unwrap_or(objects.root())
        .join("deltas")
}

fn stem_key(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut in_digits = false;
    for &c in path {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push(b'#');
            }
            in_digits = true;
        } else {
            in_digits = false;
            out.push(c);
        }
    }
    out
}

fn is_compressed_name(path: &[u8]) -> bool {
    let lower = path.to_ascii_lowercase();
    COMPRESSED.iter().any(|e| lower.ends_with(e.as_bytes()))
}

fn layer_files(
    txn: &redb::ReadTransaction,
    layer: &Digest,
    mut f: impl FnMut(Vec<u8>, Held),
) -> Result<(), IndexError> {
    for rec in index::layer_entries(txn, layer)? {
        let rec = rec?;
        if rec.kind != EntryKind::File {
            continue;
        }
        let (Some(object), Ok(path)) = (rec.object, normalize_entry_path(&rec.path)) else {
            continue;
        };
        f(
            path,
            Held {
                object,
                size: rec.size,
            },
        );
    }
    Ok(())
}

impl DeltaPlanner {
    /// A planner for a device holding `held_layers` (those not in the index
    /// are ignored).
    pub fn new(
        txn: &redb::ReadTransaction,
        objects: &ObjectStore,
        held_layers: &[Digest],
    ) -> Result<DeltaPlanner, IndexError> {
        let mut p = DeltaPlanner {
            objects: objects.clone(),
            dir: cache_dir(objects),
            by_path: HashMap::new(),
            by_stem: HashMap::new(),
            base: HashMap::new(),
            base_id: None,
            started: Instant::now(),
            budget: REQUEST_BUDGET,
            stats: DeltaStats::default(),
        };
        for l in held_layers {
            if index::layer_meta_in(txn, l)?.is_none() {
                continue;
            }
            layer_files(txn, l, |path, h| {
                p.by_stem.entry(stem_key(&path)).or_default().push(h);
                p.by_path.insert(path, h);
            })?;
        }
        Ok(p)
    }

    /// Set the compute budget of this request (tests).
    pub fn with_budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }

    /// The next section is built on held layer `base` (or on nothing).
    pub fn begin_layer(
        &mut self,
        txn: &redb::ReadTransaction,
        base: Option<&Digest>,
    ) -> Result<(), IndexError> {
        if base == self.base_id.as_ref() {
            return Ok(());
        }
        self.base.clear();
        self.base_id = base.copied();
        if let Some(b) = base {
            let map = &mut self.base;
            layer_files(txn, b, |path, h| {
                map.insert(path, h);
            })?;
        }
        Ok(())
    }

    /// The held file to patch from for new object `new` (`size` bytes) at
    /// `raw_path`, if any.
    fn old_for(&self, raw_path: &[u8], new: &Digest, size: u64) -> Option<Held> {
        let path = normalize_entry_path(raw_path).ok()?;
        let usable =
            |h: &Held| h.object != *new && h.size >= MIN_DELTA_SIZE / 4 && h.size <= MAX_DELTA_SIZE;
        if let Some(h) = self.base.get(&path).filter(|h| usable(h)) {
            return Some(*h);
        }
        if let Some(h) = self.by_path.get(&path).filter(|h| usable(h)) {
            return Some(*h);
        }
        self.by_stem
            .get(&stem_key(&path))?
            .iter()
            .filter(|h| usable(h) && h.size <= size.saturating_mul(2) && size <= h.size * 2)
            .min_by_key(|h| h.size.abs_diff(size))
            .copied()
    }

    /// A patch to send instead of new object `new` at `raw_path`, if one
    /// is worth it (cached or computed within the budget).
    pub fn patch_for(&mut self, raw_path: &[u8], new: &Digest, size: u64) -> Option<Patch> {
        if !(MIN_DELTA_SIZE..=MAX_DELTA_SIZE).contains(&size) || is_compressed_name(raw_path) {
            return None;
        }
        let old = self.old_for(raw_path, new, size)?;
        let file = self.cache_path(&old.object, new);
        match read_cached(&file, old.object) {
            Ok(Some(p)) => return self.sent(p, size),
            Ok(None) => {
                self.stats.whole += 1;
                return None;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!("delta cache {}: {e}", file.display());
                return None;
            }
        }
        if self.started.elapsed() >= self.budget {
            self.stats.whole += 1;
            return None;
        }
        let t = Instant::now();
        let r = {
            let _one = COMPUTE.lock().unwrap_or_else(|e| e.into_inner());
            compute(&self.objects, &old.object, new, &file)
        };
        self.stats.compute_time += t.elapsed();
        self.stats.computed += 1;
        match r {
            Ok(Some(p)) => self.sent(p, size),
            Ok(None) => {
                self.stats.whole += 1;
                None
            }
            Err(e) => {
                tracing::warn!("delta {} -> {new}: {e}", old.object);
                None
            }
        }
    }

    fn sent(&mut self, p: Patch, size: u64) -> Option<Patch> {
        self.stats.sent += 1;
        self.stats.patch_bytes += p.len;
        self.stats.new_bytes += size;
        Some(p)
    }

    fn cache_path(&self, old: &Digest, new: &Digest) -> PathBuf {
        let o = old.hex();
        self.dir
            .join(&o[..2])
            .join(format!("{o}-{}.v{FORMAT}", new.hex()))
    }
}

/// `Ok(None)`: cached as "not worth it"; `NotFound`: not cached.
fn read_cached(file: &Path, base: Digest) -> io::Result<Option<Patch>> {
    let mut f = fs::File::open(file)?;
    let mut n = [0u8; 8];
    match f.read_exact(&mut n) {
        Ok(()) => Ok(Some(Patch {
            base,
            len: u64::from_le_bytes(n),
            file: file.to_path_buf(),
        })),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

fn read_object(objects: &ObjectStore, d: &Digest) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    objects
        .open(d)?
        .take(MAX_DELTA_SIZE + 1)
        .read_to_end(&mut v)?;
    if v.len() as u64 > MAX_DELTA_SIZE {
        return Err(io::Error::other("object too large for a delta"));
    }
    Ok(v)
}

/// The raw bidiff patch turning `old` into `new`.
pub fn diff(old: &[u8], new: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(new.len() / 8 + 64);
    bidiff::simple_diff(old, new, &mut out)?;
    Ok(out)
}

/// Whether a patch whose zstd-3 size is `patch_z` is worth sending instead
/// of a whole file whose zstd-3 size is `whole_z`.
pub fn worth_it(patch_z: u64, whole_z: u64) -> bool {
    (patch_z + ENTRY_OVERHEAD) as f64 <= MAX_RATIO * whole_z as f64
}

/// Compute, decide and cache the delta `old` -> `new` into `file`.
fn compute(
    objects: &ObjectStore,
    old: &Digest,
    new: &Digest,
    file: &Path,
) -> io::Result<Option<Patch>> {
    let o = read_object(objects, old)?;
    let n = read_object(objects, new)?;
    let raw = diff(&o, &n)?;
    drop(o);
    let whole_z = zstd::bulk::compress(&n, ZSTD_LEVEL)?.len() as u64;
    drop(n);
    let patch_z = zstd::bulk::compress(&raw, ZSTD_LEVEL)?;
    let worth = worth_it(patch_z.len() as u64, whole_z);
    let dir = file.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    {
        let mut f = fs::File::create(&tmp)?;
        if worth {
            f.write_all(&(raw.len() as u64).to_le_bytes())?;
            f.write_all(&patch_z)?;
        }
        f.sync_all()?;
    }
    fs::rename(&tmp, file)?;
    Ok(worth.then(|| Patch {
        base: *old,
        len: raw.len() as u64,
        file: file.to_path_buf(),
    }))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn stems_ignore_versions() {
        assert_eq!(
            stem_key(b"usr/lib/libssl.so.3.0.20"),
            stem_key(b"usr/lib/libssl.so.3.0.22")
        );
        assert_ne!(
            stem_key(b"usr/lib/libssl.so.3"),
            stem_key(b"usr/lib/libcrypto.so.3")
        );
    }

    #[test]
    fn compressed_names_are_skipped() {
        assert!(is_compressed_name(b"usr/share/doc/x/changelog.Debian.gz"));
        assert!(is_compressed_name(b"a/B.ZST"));
        assert!(!is_compressed_name(b"usr/bin/perl"));
    }

    #[test]
    fn threshold() {
        assert!(worth_it(1000, 10_000));
        assert!(!worth_it(4900, 10_000));
        assert!(!worth_it(10, 200)); // the entry overhead dominates
    }

    #[test]
    fn diff_round_trips_through_bipatch() {
        let old: Vec<u8> = (0..50_000u32)
            .flat_map(|i| (i % 977).to_le_bytes())
            .collect();
        let mut new = old.clone();
        new[1000..1010].copy_from_slice(b"0123456789");
        new.truncate(150_000);
        let p = diff(&old, &new).unwrap();
        let mut r = bipatch::Reader::new(&p[..], io::Cursor::new(&old)).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, new);
        let z = zstd::bulk::compress(&p, 3).unwrap();
        let w = zstd::bulk::compress(&new, 3).unwrap();
        assert!(
            worth_it(z.len() as u64, w.len() as u64),
            "{} vs {}",
            z.len(),
            w.len()
        );
    }
}
