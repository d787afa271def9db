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
//! holding it. Files under [`MIN_DELTA_SIZE`] or over [`MAX_TRIMMED_SIZE`]
//! are skipped too.
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
//! **Large files.** When the old or new file is over [`MAX_DELTA_SIZE`]
//! (bidiff would need ~7.5x it in memory), the common prefix and suffix
//! are found by streaming both objects, and only the middles are diffed
//! when both are at most [`MAX_DELTA_SIZE`]: the patch adds zeros over the
//! prefix and suffix (a few bytes once compressed) around the middle's
//! bidiff controls. Same patch format, so the agent needs nothing new. This
//! is what an in-place edit of a large file (an apt `Packages` list, a
//! database file) produces: measured by `edit_e2e`'s
//! `a_small_change_inside_a_large_file_travels_as_a_patch` (4 KiB changed
//! in a 50 MB file).
//!
//! **Sending.** Only when the patch is clearly smaller: zstd-3 of the patch
//! plus [`ENTRY_OVERHEAD`] at most [`MAX_RATIO`] of zstd-3 of the whole
//! file. Measured ratios are bimodal (≤ 0.15 for rebuilt ELF and edited
//! text, ≥ 0.75 for compressed or rewritten data), so the threshold sits in
//! the gap.
//!
//! **Cache.** `<data>/deltas/<2 hex>/<old hex>-<new hex>.v<FORMAT>-w<window
//! log>`: an 8-byte little-endian raw patch length, then the patch as one
//! zstd frame with the archive frame settings ([`crate::sync::frame`],
//! the content frames' level, [`crate::sync::frame::frame_level`], 19 by
//! default: level 9 made the rebuilt ELF files' patches of the upd pair
//! 12 % larger), which zstd archives splice verbatim; an empty
//! file records "not worth it". Written to a temp file and renamed.
//! Objects are immutable, so entries never go stale.

use crate::store::index::{self, EntryKind, IndexError};
use crate::store::objects::ObjectStore;
use crate::sync::frame::Counted;
use layerlink_proto::archive::{normalize_entry_path, ZSTD_MAX_WINDOW_LOG};
use layerlink_proto::Digest;
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A patch format, and the archive feature that asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchFormat {
    /// bidiff 1.0's interleaved records (feature `file-delta`; agents
    /// before format 2).
    Bidiff,
    /// The same controls in blocks with separate sections
    /// (`layerlink_proto::patch`, feature `file-delta2`): ~5 % smaller
    /// once compressed.
    Blocks,
}

impl PatchFormat {
    /// Version number in cache file names (`.v<N>`).
    pub fn version(self) -> u32 {
        match self {
            PatchFormat::Bidiff => 1,
            PatchFormat::Blocks => 2,
        }
    }
}

/// Writes bsdiff controls in one patch format.
enum ControlWriter<'a> {
    Bidiff(bidiff::enc::Writer<&'a mut dyn Write>),
    Blocks(layerlink_proto::patch::Encoder, &'a mut dyn Write),
}

impl<'a> ControlWriter<'a> {
    fn new(format: PatchFormat, out: &'a mut dyn Write) -> io::Result<Self> {
        Ok(match format {
            PatchFormat::Bidiff => ControlWriter::Bidiff(bidiff::enc::Writer::new(out)?),
            PatchFormat::Blocks => {
                ControlWriter::Blocks(layerlink_proto::patch::Encoder::new(), out)
            }
        })
    }

    fn push(&mut self, add: &[u8], copy: &[u8], seek: i64) -> io::Result<()> {
        match self {
            ControlWriter::Bidiff(w) => w.write(&bidiff::Control { add, copy, seek }),
            ControlWriter::Blocks(e, out) => {
                e.push(add, copy, seek);
                out.write_all(&e.take_output())
            }
        }
    }

    fn finish(self) -> io::Result<()> {
        match self {
            ControlWriter::Bidiff(mut w) => w.flush(),
            ControlWriter::Blocks(e, out) => {
                out.write_all(&e.finish())?;
                out.flush()
            }
        }
    }
}
/// Smaller new files go whole (a delta entry's PAX records cost ~160 bytes).
pub const MIN_DELTA_SIZE: u64 = 4 * 1024;
/// Larger old or new files are diffed only between their common prefix and
/// suffix (encoder memory is ~7.5x what it diffs).
pub const MAX_DELTA_SIZE: u64 = 32 * 1024 * 1024;
/// Larger old or new files go whole (finding the common prefix and suffix
/// streams each object three times).
pub const MAX_TRIMMED_SIZE: u64 = 1024 * 1024 * 1024;
/// Compute time one archive request may spend on deltas.
pub const REQUEST_BUDGET: Duration = Duration::from_secs(10);
/// Send a delta only when compressed patch + overhead ≤ this × compressed whole.
pub const MAX_RATIO: f64 = 0.5;
/// Bytes a delta entry costs beyond a whole-file entry (PAX records).
pub const ENTRY_OVERHEAD: u64 = 160;
/// zstd level of the worth-it estimate.
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
    /// The cache file positioned at the patch's zstd frame, and the frame's
    /// length (made with [`crate::sync::frame`]'s settings: it can be
    /// spliced into a zstd archive).
    pub fn frame(&self) -> io::Result<(fs::File, u64)> {
        let mut f = fs::File::open(&self.file)?;
        let total = f.metadata()?.len();
        let mut n = [0u8; 8];
        f.read_exact(&mut n)?;
        Ok((f, total.saturating_sub(8)))
    }

    /// The raw patch bytes, streamed from the cache file.
    pub fn reader(&self) -> io::Result<impl Read> {
        let mut f = fs::File::open(&self.file)?;
        let mut n = [0u8; 8];
        f.read_exact(&mut n)?;
        Ok(zstd::stream::read::Decoder::new(f)?.take(self.len))
    }
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
    format: PatchFormat,
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

/// A path with every run of digits replaced by `#`: versioned names
/// (`libssl.so.3.0.20`, `python3.11`) of one file across upgrades match.
pub fn stem_key(path: &[u8]) -> Vec<u8> {
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

/// Whether a file name says its content is compressed already (deltas do
/// not pay: such files always travel whole).
pub fn is_compressed_name(path: &[u8]) -> bool {
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
    /// A planner of `format` patches for a device holding `held_layers`
    /// (those not in the index are ignored).
    pub fn new(
        txn: &redb::ReadTransaction,
        objects: &ObjectStore,
        held_layers: &[Digest],
        format: PatchFormat,
    ) -> Result<DeltaPlanner, IndexError> {
        let mut p = DeltaPlanner {
            objects: objects.clone(),
            dir: cache_dir(objects),
            by_path: HashMap::new(),
            by_stem: HashMap::new(),
            base: HashMap::new(),
            base_id: None,
            format,
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
        let usable = |h: &Held| {
            h.object != *new && h.size >= MIN_DELTA_SIZE / 4 && h.size <= MAX_TRIMMED_SIZE
        };
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
        if !(MIN_DELTA_SIZE..=MAX_TRIMMED_SIZE).contains(&size) || is_compressed_name(raw_path) {
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
            compute(&self.objects, &old, new, size, &file, self.format)
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
        self.dir.join(&o[..2]).join(format!(
            "{o}-{}.v{}-w{ZSTD_MAX_WINDOW_LOG}",
            new.hex(),
            self.format.version()
        ))
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

/// The raw patch in `format` turning `old` into `new` (bidiff's controls).
pub fn diff(old: &[u8], new: &[u8], format: PatchFormat) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(new.len() / 8 + 64);
    let mut w = ControlWriter::new(format, &mut out)?;
    let mut tr = bidiff::Translator::new(old, new, |c: &bidiff::Control| {
        w.push(c.add, c.copy, c.seek)
    });
    bidiff::diff(old, new, &Default::default(), |m| tr.translate(m))?;
    tr.close()?;
    w.finish()?;
    Ok(out)
}

/// Whether a patch whose zstd-3 size is `patch_z` is worth sending instead
/// of a whole file whose zstd-3 size is `whole_z`.
pub fn worth_it(patch_z: u64, whole_z: u64) -> bool {
    (patch_z + ENTRY_OVERHEAD) as f64 <= MAX_RATIO * whole_z as f64
}

/// Compute, decide and cache the delta `old` -> `new` (`new_size` bytes)
/// into `file`.
fn compute(
    objects: &ObjectStore,
    old: &Held,
    new: &Digest,
    new_size: u64,
    file: &Path,
    format: PatchFormat,
) -> io::Result<Option<Patch>> {
    let (raw_len, patch_z, worth) = if old.size <= MAX_DELTA_SIZE && new_size <= MAX_DELTA_SIZE {
        let o = read_object(objects, &old.object)?;
        let n = read_object(objects, new)?;
        let raw = diff(&o, &n, format)?;
        drop(o);
        let whole_z = zstd::bulk::compress(&n, ZSTD_LEVEL)?.len() as u64;
        drop(n);
        let patch_z = crate::sync::frame::bulk_compressor(crate::sync::frame::frame_level())?
            .compress(&raw)?;
        let worth = worth_it(patch_z.len() as u64, whole_z);
        (raw.len() as u64, patch_z, worth)
    } else {
        match trimmed_diff(objects, old, new, new_size, format)? {
            // The stored object is what a whole entry would cost.
            Some((raw_len, patch_z)) => {
                let whole_z = fs::metadata(objects.path(new))?.len();
                let worth = worth_it(patch_z.len() as u64, whole_z);
                (raw_len, patch_z, worth)
            }
            None => (0, Vec::new(), false),
        }
    };
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
            f.write_all(&raw_len.to_le_bytes())?;
            f.write_all(&patch_z)?;
        }
        f.sync_all()?;
    }
    fs::rename(&tmp, file)?;
    Ok(worth.then(|| Patch {
        base: old.object,
        len: raw_len,
        file: file.to_path_buf(),
    }))
}

/// Chunk size of the streaming comparisons.
const CHUNK: usize = 64 * 1024;

/// Fill `buf` from `r` as far as it goes; the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Skip `n` bytes of `r`.
fn skip(r: &mut impl Read, n: u64) -> io::Result<()> {
    let skipped = io::copy(&mut r.take(n), &mut io::sink())?;
    if skipped < n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "object shorter than indexed",
        ));
    }
    Ok(())
}

/// Length of the common prefix of two streams.
fn common_prefix(mut a: impl Read, mut b: impl Read) -> io::Result<u64> {
    let (mut ba, mut bb) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut n = 0u64;
    loop {
        let (ka, kb) = (read_full(&mut a, &mut ba)?, read_full(&mut b, &mut bb)?);
        let k = ka.min(kb);
        if let Some(i) = ba[..k].iter().zip(&bb[..k]).position(|(x, y)| x != y) {
            return Ok(n + i as u64);
        }
        n += k as u64;
        if ka != kb || k < CHUNK {
            return Ok(n);
        }
    }
}

/// Length of the common suffix of `a` (`la` bytes) and `b` (`lb` bytes),
/// at most `limit` (so that it does not overlap the common prefix).
fn common_suffix(
    mut a: impl Read,
    la: u64,
    mut b: impl Read,
    lb: u64,
    limit: u64,
) -> io::Result<u64> {
    skip(&mut a, la - limit)?;
    skip(&mut b, lb - limit)?;
    let (mut ba, mut bb) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let (mut done, mut last_diff_end) = (0u64, 0u64);
    while done < limit {
        let k = (limit - done).min(CHUNK as u64) as usize;
        a.read_exact(&mut ba[..k])?;
        b.read_exact(&mut bb[..k])?;
        if let Some(i) = ba[..k].iter().zip(&bb[..k]).rposition(|(x, y)| x != y) {
            last_diff_end = done + i as u64 + 1;
        }
        done += k as u64;
    }
    Ok(limit - last_diff_end)
}

/// Bytes `[start, start + len)` of a stream.
fn read_range(mut r: impl Read, start: u64, len: u64) -> io::Result<Vec<u8>> {
    skip(&mut r, start)?;
    let mut v = Vec::with_capacity(len as usize);
    r.take(len).read_to_end(&mut v)?;
    if v.len() as u64 != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "object shorter than indexed",
        ));
    }
    Ok(v)
}

/// Controls adding zeros to `n` bytes of the old file (they stay as they are).
fn zero_adds(w: &mut ControlWriter<'_>, mut n: u64) -> io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    while n > 0 {
        let k = n.min(zeros.len() as u64) as usize;
        w.push(&zeros[..k], &[], 0)?;
        n -= k as u64;
    }
    Ok(())
}

/// The patch `old` -> `new` of a large file: zeros added over the common
/// prefix and suffix, bidiff between them. `None` when the middles are too
/// large to diff. (raw patch length, patch as one zstd frame).
fn trimmed_diff(
    objects: &ObjectStore,
    old: &Held,
    new: &Digest,
    new_size: u64,
    format: PatchFormat,
) -> io::Result<Option<(u64, Vec<u8>)>> {
    let (lo, ln) = (old.size, new_size);
    let prefix = common_prefix(objects.open(&old.object)?, objects.open(new)?)?;
    let limit = lo.min(ln) - prefix.min(lo.min(ln));
    let suffix = common_suffix(
        objects.open(&old.object)?,
        lo,
        objects.open(new)?,
        ln,
        limit,
    )?;
    let (mid_o, mid_n) = (lo - prefix - suffix, ln - prefix - suffix);
    if mid_o > MAX_DELTA_SIZE || mid_n > MAX_DELTA_SIZE {
        return Ok(None);
    }
    let om = read_range(objects.open(&old.object)?, prefix, mid_o)?;
    let nm = read_range(objects.open(new)?, prefix, mid_n)?;
    // The middle's controls (owned: the patch is written twice, once to
    // learn its length for the frame header).
    let mut middle: Vec<(Vec<u8>, Vec<u8>, i64)> = Vec::new();
    if om.is_empty() || nm.is_empty() {
        middle.push((Vec::new(), nm.clone(), 0));
    } else {
        let mut tr = bidiff::Translator::new(&om, &nm, |c: &bidiff::Control| {
            middle.push((c.add.to_vec(), c.copy.to_vec(), c.seek));
            Ok::<(), io::Error>(())
        });
        bidiff::diff(&om, &nm, &Default::default(), |m| tr.translate(m))?;
        tr.close()?;
    }
    drop((om, nm));
    let write = |out: &mut dyn Write| -> io::Result<()> {
        let mut w = ControlWriter::new(format, out)?;
        zero_adds(&mut w, prefix)?;
        // The old file's read position, to seek to the suffix afterwards.
        let mut pos = prefix as i64;
        for (add, copy, seek) in &middle {
            pos += add.len() as i64 + seek;
            w.push(add, copy, *seek)?;
        }
        w.push(&[], &[], (lo - suffix) as i64 - pos)?;
        zero_adds(&mut w, suffix)?;
        w.finish()
    };
    let mut counted = Counted {
        inner: io::sink(),
        n: 0,
    };
    write(&mut counted)?;
    let raw_len = counted.n;
    let mut enc =
        crate::sync::frame::encoder(Vec::new(), crate::sync::frame::frame_level(), raw_len)?;
    write(&mut enc)?;
    Ok(Some((raw_len, enc.finish()?)))
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

    /// The new file out of a raw patch of `format` (the agents' readers:
    /// bipatch for format 1, `layerlink_proto::patch` for format 2).
    fn apply(format: PatchFormat, raw: &[u8], old: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match format {
            PatchFormat::Bidiff => bipatch::Reader::new(raw, io::Cursor::new(old))
                .unwrap()
                .read_to_end(&mut out),
            PatchFormat::Blocks => {
                layerlink_proto::patch::Reader::new(raw, io::Cursor::new(old)).read_to_end(&mut out)
            }
        }
        .unwrap();
        out
    }

    const FORMATS: [PatchFormat; 2] = [PatchFormat::Bidiff, PatchFormat::Blocks];

    /// Every shape of large-file change round-trips in both formats, and an
    /// edit in place costs about the edit once compressed.
    #[test]
    fn trimmed_diffs_round_trip() {
        let old: Vec<u8> = (0..600_000u32)
            .flat_map(|i| (i.wrapping_mul(2_654_435_761) >> 7).to_le_bytes())
            .collect();
        let noise: Vec<u8> = (0..5_000u32)
            .flat_map(|i| (i.wrapping_mul(40_503) ^ 0x9e37_79b9).to_be_bytes())
            .collect();
        let mut edited = old.clone();
        edited[1_000_000..1_004_096].copy_from_slice(&noise[..4096]);
        let mut inserted = old.clone();
        inserted.splice(700_000..700_000, noise.iter().copied());
        let mut deleted = old.clone();
        deleted.drain(10_000..30_000);
        let mut appended = old.clone();
        appended.extend_from_slice(&noise);
        let mut two_edits = old.clone();
        two_edits[5..9].copy_from_slice(b"abcd");
        two_edits[2_000_000..2_000_004].copy_from_slice(b"wxyz");
        let truncated = old[..1_500_000].to_vec();
        let mut head = noise.clone();
        head.extend_from_slice(&old[100..]);
        let dir = tempfile::tempdir().unwrap();
        let objects = ObjectStore::new(dir.path().join("objects"));
        let cases = [
            ("edited", edited),
            ("inserted", inserted),
            ("deleted", deleted),
            ("appended", appended),
            ("two edits", two_edits),
            ("truncated", truncated),
            ("new head", head),
        ];
        let mut staging = objects.stage().unwrap();
        staging.put_bytes(Digest::of(&old), &old).unwrap();
        for (_, new) in &cases {
            staging.put_bytes(Digest::of(new), new).unwrap();
        }
        staging.publish().unwrap();
        let held = Held {
            object: Digest::of(&old),
            size: old.len() as u64,
        };
        for (name, new) in &cases {
            for format in FORMATS {
                let (len, z) =
                    trimmed_diff(&objects, &held, &Digest::of(new), new.len() as u64, format)
                        .unwrap()
                        .unwrap();
                let raw = zstd::stream::decode_all(&z[..]).unwrap();
                assert_eq!(raw.len() as u64, len, "{name}");
                assert!(
                    apply(format, &raw, &old) == *new,
                    "{name} ({format:?}): the patch does not rebuild the file"
                );
                if *name == "edited" {
                    assert!(z.len() < 4096 + 1024, "{name}: {} B compressed", z.len());
                }
            }
        }
    }

    #[test]
    fn diff_round_trips() {
        let old: Vec<u8> = (0..50_000u32)
            .flat_map(|i| (i % 977).to_le_bytes())
            .collect();
        let mut new = old.clone();
        new[1000..1010].copy_from_slice(b"0123456789");
        new.truncate(150_000);
        for format in FORMATS {
            let p = diff(&old, &new, format).unwrap();
            assert_eq!(apply(format, &p, &old), new, "{format:?}");
            let z = zstd::bulk::compress(&p, 3).unwrap();
            let w = zstd::bulk::compress(&new, 3).unwrap();
            assert!(
                worth_it(z.len() as u64, w.len() as u64),
                "{format:?}: {} vs {}",
                z.len(),
                w.len()
            );
        }
    }
}
