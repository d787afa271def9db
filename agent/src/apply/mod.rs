//! Applying a dedup archive to the store: one streaming pass.
//!
//! For each layer section the applier builds `tmp/layer-<hex>/`:
//!
//! * every path goes through
//!   [`normalize_entry_path`](layerlink_proto::archive::normalize_entry_path);
//!   parents are opened one component at a time with `O_NOFOLLOW`, so
//!   nothing is ever created through a symlink (an entry whose parent is a
//!   symlink is rejected);
//! * a new file is hashed while written into `tmp/`, verified against its
//!   `LAYERLINK.digest`, given its metadata and hard-linked into the tree
//!   (it reaches `objects/` with the next batch flush);
//! * a reference entry is linked to a local variant of its object, made by a
//!   local copy when the metadata differs; a reference the store cannot
//!   resolve leaves a placeholder and is collected ([`Applier::pending_digests`])
//!   for a `POST /objects` repair before the layer is committed;
//! * intra-layer hard links must name an earlier regular file of the layer;
//! * `.wh.name` becomes an overlayfs whiteout (char device 0:0), `.wh..wh..opq`
//!   the `trusted.overlay.opaque=y` xattr, so committed layers are overlayfs
//!   lower dirs;
//! * directory mtimes are recorded in a spill file and set last (after any
//!   repair), so creating entries cannot disturb them;
//! * at the `layer-end` marker, with a matching entry count and nothing
//!   pending, the layer is committed (`syncfs`, rename into `layers/`).
//!
//! Memory stays flat: one 512-byte tar block, one 64 KiB copy buffer, the
//! decompressor's window, and a bounded list of unresolved references.
//!
//! | file | concern |
//! |---|---|
//! | `mod.rs` | options, the marker dispatcher (metadata, layer sections, end), layer commit |
//! | `entry.rs` | one tar entry into the staging tree: paths, parents, whiteouts, links, deltas |
//! | `base.rs` | a layer built on a held layer (`base` marker): tree copy, removed paths |
//! | `compact.rs` | compact metadata records of a base marker, read while the tree is copied |
//! | `repair.rs` | unresolved references: placeholders, `POST /objects` responses, late commit |
//! | `dirtimes.rs` | the directory-mtime spill file, applied at commit |

mod base;
mod compact;
mod dirtimes;
mod entry;
mod repair;

use crate::codec::ArchiveDecoder;
use crate::error::{Error, Result};
use crate::fsops::{self, show};
use crate::progress::human;
use crate::store::objects::ObjectWriter;
use crate::store::Store;
use crate::tar::TarReader;
use dirtimes::DirTimes;
use layerlink_proto::archive::{Encoding, Marker};
use layerlink_proto::limits::{MAX_LAYER_ENTRIES, MAX_METADATA_BYTES};
use layerlink_proto::msg::Platform;
use layerlink_proto::Digest;
use repair::Pending;
use rustix::fs::{self as rfs, AtFlags, Mode};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::platform::check_platform;

/// What an apply may expect and accept.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// diff_ids the archive must carry, in order.
    pub layers: Vec<Digest>,
    /// Accept whatever layer sections the archive carries (`layers` is
    /// ignored); for `apply-archive`.
    pub any_layers: bool,
    /// All diff_ids of the image, base first. The layers below a layer give
    /// the metadata of directories it creates only implicitly; when empty,
    /// the layers applied before it in this archive do.
    pub image_layers: Vec<Digest>,
    /// Whether manifest and config markers must come first.
    pub metadata: bool,
    /// Bound on new file bytes (decompression bomb guard).
    pub max_new_bytes: u64,
    /// Bound on all uncompressed bytes of the stream.
    pub max_stream_bytes: u64,
    /// Accept character/block devices and FIFOs in layers.
    pub allow_devices: bool,
    /// Print progress lines to stderr.
    pub progress: bool,
    /// New content bytes the archive announced: the progress meter's total.
    pub expected_new_bytes: Option<u64>,
    /// The device's platform and the plan's config digest: the config
    /// (metadata marker) must match the digest (else an integrity error),
    /// and one naming another platform is refused before any layer is
    /// read. `None`: no check here (`--force-platform`, `apply-archive`;
    /// the sync checks the digest after the apply).
    pub platform: Option<(Platform, Digest)>,
    /// Framings to verify layers against before they are committed
    /// ([`crate::tarsplit`]); empty: no check.
    pub layer_check: crate::tarsplit::LayerCheck,
}

impl ApplyOptions {
    /// Options for `layers` with no bounds beyond the protocol limits.
    pub fn new(layers: Vec<Digest>) -> Self {
        ApplyOptions {
            layers,
            any_layers: false,
            image_layers: Vec::new(),
            metadata: false,
            max_new_bytes: u64::MAX,
            max_stream_bytes: u64::MAX,
            allow_devices: true,
            progress: false,
            expected_new_bytes: None,
            platform: None,
            layer_check: Default::default(),
        }
    }
}

/// Counts for one layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Tar entries of the layer.
    pub entries: u64,
    /// New files received.
    pub new_files: u64,
    /// Bytes of new files.
    pub new_bytes: u64,
    /// Reference entries resolved locally.
    pub referenced_files: u64,
    /// Bytes those references stand for.
    pub referenced_bytes: u64,
    /// References fetched by repair.
    pub repaired: u64,
    /// Entries kept from the held base layer the section was built on
    /// (archive feature `layer-base`).
    pub kept: u64,
    /// Of those, entries given new metadata by a compact record (feature
    /// `compact-meta`).
    pub compact: u64,
    /// Files rebuilt from a held object and a patch (feature `file-delta`).
    pub delta_files: u64,
    /// Patch bytes those files cost.
    pub delta_patch_bytes: u64,
    /// Delta entries that could not be applied and are fetched whole.
    pub delta_fallbacks: u64,
}

struct Finished {
    diff_id: Digest,
    staging: String,
    root: OwnedFd,
    committed: bool,
    stats: LayerStats,
}

/// Applies dedup archives to a store. See the module doc.
pub struct Applier<'s> {
    store: &'s Store,
    objects: ObjectWriter<'s>,
    opts: ApplyOptions,
    /// Roots of lower layers, top first.
    lowers: Vec<OwnedFd>,
    finished: Vec<Finished>,
    pending: Vec<Pending>,
    pending_bytes: usize,
    new_bytes: u64,
    /// Bytes of new content stored so far (complete, verified objects).
    stored_new_bytes: u64,
    /// Received bytes, rate, ETA on stderr (with `opts.progress`).
    meter: Option<crate::progress::Meter>,
    /// Staging name of the layer being written.
    current: Option<String>,
    empty: Digest,
    /// Manifest JSON from the archive's marker.
    pub manifest: Option<Vec<u8>>,
    /// Config JSON from the archive's marker.
    pub config: Option<Vec<u8>>,
}

/// The one tar reader type: gzip or zstd over any stream, bounded.
type Tar<'a> = TarReader<Bounded<ArchiveDecoder<'a>>>;

fn decoder<'a>(r: &'a mut dyn Read, declared: Option<Encoding>) -> Result<ArchiveDecoder<'a>> {
    ArchiveDecoder::new(r, declared).map_err(crate::tar::stream_error)
}

/// A reader that fails once more than `limit` bytes came through.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "archive expands beyond the size the plan announced (decompression bomb?)",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Read past the section of layer `diff_id`, which the store holds, up to
/// its `layer-end` marker. What it skips does not count against the
/// stream bound (it is read, never stored); at most
/// [`MAX_LAYER_ENTRIES`] entries.
fn skip_layer(tar: &mut Tar<'_>, diff_id: &Digest) -> Result<()> {
    for _ in 0..=MAX_LAYER_ENTRIES {
        let Some(h) = tar.next_header()? else {
            break;
        };
        let left = &mut tar.get_mut().left;
        *left = left.saturating_add(h.size.saturating_add(3 * 512));
        match h.ll.marker {
            Some(Marker::LayerEnd) if h.ll.diff_id == Some(*diff_id) => return Ok(()),
            None | Some(Marker::Base) => {}
            Some(m) => {
                return Err(Error::integrity(format!(
                    "unexpected {} marker inside layer {diff_id}",
                    m.as_str()
                )))
            }
        }
    }
    Err(Error::integrity(format!(
        "layer {diff_id}: no layer-end marker"
    )))
}

fn staging_name(d: &Digest) -> String {
    format!("layer-{}", d.hex())
}

fn hostile(path: &[u8], why: impl std::fmt::Display) -> Error {
    Error::integrity(format!("archive entry {:?}: {why}", show(path)))
}

impl<'s> Applier<'s> {
    /// An applier writing into `store` (which must be opened exclusively).
    pub fn new(store: &'s Store, opts: ApplyOptions) -> Result<Self> {
        let meter = opts
            .progress
            .then(|| crate::progress::Meter::new(opts.expected_new_bytes));
        Ok(Applier {
            store,
            objects: ObjectWriter::new(store),
            opts,
            lowers: Vec::new(),
            finished: Vec::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            new_bytes: 0,
            stored_new_bytes: 0,
            meter,
            current: None,
            empty: Digest::of(b""),
            manifest: None,
            config: None,
        })
    }

    /// Read a whole dedup archive (gzip or zstd, by its magic number) from
    /// `r` and apply it. Layers without unresolved references are committed
    /// as their `layer-end` marker arrives; the others wait for
    /// [`Applier::repair`].
    pub fn apply_archive<R: Read>(&mut self, r: R) -> Result<()> {
        self.apply_encoded(r, None)
    }

    /// [`Applier::apply_archive`] for a stream the response declared to be
    /// in `declared` encoding (a stream in another one is rejected).
    pub fn apply_encoded<R: Read>(&mut self, mut r: R, declared: Option<Encoding>) -> Result<()> {
        self.apply_dyn(&mut r, declared)
    }

    fn apply_dyn(&mut self, r: &mut dyn Read, declared: Option<Encoding>) -> Result<()> {
        let dec = decoder(r, declared)?;
        let mut tar = TarReader::new(Bounded {
            inner: dec,
            left: self.opts.max_stream_bytes,
        });
        let mut next_layer = 0usize;
        let mut seen_meta = [false; 2];
        loop {
            let Some(h) = tar.next_header()? else {
                return Err(Error::integrity("archive ended without its end marker"));
            };
            match h.ll.marker {
                Some(Marker::Manifest) | Some(Marker::Config) => {
                    if !self.opts.metadata || next_layer > 0 {
                        return Err(Error::integrity("unexpected manifest/config marker"));
                    }
                    if h.size > MAX_METADATA_BYTES {
                        return Err(Error::integrity(
                            "manifest/config larger than the protocol allows",
                        ));
                    }
                    let mut data = vec![0u8; h.size as usize];
                    let mut off = 0;
                    while off < data.len() {
                        off += tar.read_data(&mut data[off..])?;
                    }
                    if h.ll.marker == Some(Marker::Manifest) {
                        seen_meta[0] = true;
                        self.manifest = Some(data);
                    } else {
                        seen_meta[1] = true;
                        if let Some((p, digest)) = &self.opts.platform {
                            if Digest::of(&data) != *digest {
                                return Err(Error::integrity(format!(
                                    "config does not match {digest}"
                                )));
                            }
                            check_platform(&data, p)?;
                        }
                        self.config = Some(data);
                    }
                }
                Some(Marker::Layer) => {
                    if self.opts.metadata && seen_meta != [true, true] {
                        return Err(Error::integrity(
                            "archive lacks the manifest/config markers asked for",
                        ));
                    }
                    let want = if self.opts.any_layers {
                        h.ll.diff_id
                            .filter(|d| self.finished.iter().all(|f| f.diff_id != *d))
                    } else {
                        self.opts.layers.get(next_layer).copied()
                    };
                    if h.ll.diff_id.is_none() || h.ll.diff_id != want {
                        return Err(Error::integrity(format!(
                            "archive carries layer {:?} where {:?} was expected",
                            h.ll.diff_id, want
                        )));
                    }
                    let diff_id = want.unwrap_or(self.empty);
                    if !self.opts.any_layers && self.store.has_layer(&diff_id)? {
                        // A resumed archive (crate::resume) replays layers
                        // the cut run committed: read past them.
                        skip_layer(&mut tar, &diff_id)?;
                    } else {
                        self.apply_layer(&mut tar, diff_id, next_layer)?;
                    }
                    next_layer += 1;
                }
                Some(Marker::End) => {
                    if !self.opts.any_layers && next_layer != self.opts.layers.len() {
                        return Err(Error::integrity(format!(
                            "archive ended after {next_layer} of {} layers",
                            self.opts.layers.len()
                        )));
                    }
                    if self.opts.metadata && seen_meta != [true, true] {
                        return Err(Error::integrity(
                            "archive lacks the manifest/config markers asked for",
                        ));
                    }
                    self.objects.flush()?;
                    return Ok(());
                }
                Some(m) => {
                    return Err(Error::integrity(format!(
                        "unexpected {} marker",
                        m.as_str()
                    )))
                }
                None => return Err(hostile(&h.path, "entry outside a layer section")),
            }
        }
    }

    fn apply_layer(&mut self, tar: &mut Tar<'_>, diff_id: Digest, index: usize) -> Result<()> {
        let staging = staging_name(&diff_id);
        let dirs_name = dirtimes::spill_name(&staging);
        for n in [&staging, &dirs_name] {
            fsops::remove_at(self.store.tmp_fd(), n.as_bytes())
                .map_err(|e| Error::errno(format!("clearing tmp/{n}"), e))?;
        }
        self.current = Some(staging.clone());
        rfs::mkdirat(
            self.store.tmp_fd(),
            staging.as_str(),
            Mode::from_raw_mode(0o755),
        )
        .map_err(|e| Error::errno(format!("creating tmp/{staging}"), e))?;
        let root = fsops::open_dir_at(self.store.tmp_fd(), staging.as_bytes())
            .map_err(|e| Error::errno(format!("opening tmp/{staging}"), e))?;
        let dirs_file = fsops::create_file_at(self.store.tmp_fd(), dirs_name.as_bytes(), 0o600)
            .map_err(|e| Error::errno(format!("creating tmp/{dirs_name}"), e))?;
        self.lowers = self.lowers_of(&diff_id)?;
        if self.opts.progress {
            let total = self.opts.layers.len().max(index + 1);
            eprintln!("layer {diff_id}: receiving ({}/{total})", index + 1);
        }
        let mut lw = LayerWriter {
            root,
            cache: None,
            dirs: DirTimes::new(dirs_file),
            stats: LayerStats::default(),
            layer: self.finished.len(),
            based: false,
        };
        // The layer root's metadata comes from its "./" entry, or else from
        // the layer below; until a "./" entry comes it is implied.
        if let Some(m) = self.lower_dir_meta(b"")? {
            fsops::set_meta_fd(lw.root.as_fd(), &m, false)
                .map_err(|e| Error::errno("layer root", e))?;
            lw.dirs.record(b"", m.mtime)?;
        }
        fsops::mark_implied(lw.root.as_fd()).map_err(|e| Error::errno("layer root", e))?;
        loop {
            let Some(h) = tar.next_header()? else {
                return Err(Error::integrity(format!(
                    "archive ended inside layer {diff_id}"
                )));
            };
            match h.ll.marker {
                None => {}
                Some(Marker::Base) if lw.stats.entries == 0 && lw.stats.kept == 0 && !lw.based => {
                    lw.based = true;
                    self.apply_base(&mut lw, &h, tar, &diff_id)?;
                    continue;
                }
                Some(Marker::LayerEnd) => {
                    if h.ll.diff_id != Some(diff_id) {
                        return Err(Error::integrity(format!(
                            "layer-end marker does not match layer {diff_id}"
                        )));
                    }
                    if h.ll.entries != Some(lw.stats.entries) {
                        return Err(Error::integrity(format!(
                            "layer {diff_id}: read {} entries, layer-end marker says {:?}",
                            lw.stats.entries, h.ll.entries
                        )));
                    }
                    break;
                }
                Some(m) => {
                    return Err(Error::integrity(format!(
                        "unexpected {} marker inside layer {diff_id}",
                        m.as_str()
                    )))
                }
            }
            lw.stats.entries += 1;
            if lw.stats.entries > MAX_LAYER_ENTRIES {
                return Err(Error::integrity(format!(
                    "layer {diff_id} has too many entries"
                )));
            }
            self.apply_entry(&mut lw, &h, tar)?;
        }
        lw.dirs
            .flush()
            .map_err(|e| Error::io(format!("writing tmp/{dirs_name}"), e))?;
        let stats = lw.stats;
        let root = lw.root;
        let has_pending = self.pending.iter().any(|p| p.layer == lw.layer);
        self.current = None;
        self.finished.push(Finished {
            diff_id,
            staging,
            root,
            committed: false,
            stats,
        });
        if !has_pending {
            self.commit(self.finished.len() - 1)?;
        }
        Ok(())
    }

    /// Roots of the layers below `diff_id`, top first: from the image's
    /// layer list when known (applied in this archive or committed), else
    /// the layers applied before it in this archive.
    fn lowers_of(&self, diff_id: &Digest) -> Result<Vec<OwnedFd>> {
        let dup = |fd: BorrowedFd<'_>| {
            fsops::open_dir_at(fd, b".").map_err(|e| Error::errno("opening a lower layer", e))
        };
        let mut out = Vec::new();
        if self.opts.image_layers.is_empty() {
            for f in self.finished.iter().rev() {
                out.push(dup(f.root.as_fd())?);
            }
            return Ok(out);
        }
        let k = self
            .opts
            .image_layers
            .iter()
            .position(|d| d == diff_id)
            .unwrap_or(0);
        for d in self.opts.image_layers[..k].iter().rev() {
            match self.finished.iter().find(|f| f.diff_id == *d) {
                Some(f) => out.push(dup(f.root.as_fd())?),
                None => out.push(self.store.open_layer(d)?),
            }
        }
        Ok(out)
    }

    fn commit(&mut self, i: usize) -> Result<()> {
        self.objects.flush()?;
        let f = &self.finished[i];
        // The tree must hash, with its framing, to its diff_id.
        if let Some(v) = self
            .opts
            .layer_check
            .verify(self.store, &f.diff_id, f.root.as_fd())?
        {
            if self.opts.progress {
                eprintln!(
                    "layer {}: verified: {} entries, {} hashed, sha256 = diff_id",
                    f.diff_id,
                    v.entries,
                    human(v.content_bytes)
                );
            }
        }
        dirtimes::apply(self.store.tmp_fd(), &f.staging, f.root.as_fd())?;
        self.store.commit_layer(&f.staging, &f.diff_id)?;
        let _ = rfs::unlinkat(
            self.store.tmp_fd(),
            dirtimes::spill_name(&f.staging).as_str(),
            AtFlags::empty(),
        );
        let f = &mut self.finished[i];
        f.committed = true;
        if self.opts.progress {
            let s = &f.stats;
            eprintln!(
                "layer {}: committed: {} entries{}, {} new files ({}), {} referenced files ({}){}",
                f.diff_id,
                s.entries,
                if s.kept > 0 {
                    format!(
                        " + {} kept from a held layer ({} with new metadata)",
                        s.kept, s.compact
                    )
                } else {
                    String::new()
                },
                s.new_files,
                human(s.new_bytes),
                s.referenced_files,
                human(s.referenced_bytes),
                if s.repaired > 0 {
                    format!(", {} repaired", s.repaired)
                } else {
                    String::new()
                }
            );
        }
        Ok(())
    }

    /// Clear the progress meter's terminal line.
    pub fn finish_progress(&mut self) {
        if let Some(m) = self.meter.as_mut() {
            m.finish();
        }
    }

    /// Bytes of new content this applier stored (verified objects, kept
    /// for a retry even when the apply fails later).
    pub fn stored_new_bytes(&self) -> u64 {
        self.stored_new_bytes
    }

    /// Layers committed by this applier, with their counts.
    pub fn committed(&self) -> Vec<(Digest, LayerStats)> {
        self.finished
            .iter()
            .filter(|f| f.committed)
            .map(|f| (f.diff_id, f.stats))
            .collect()
    }
}

impl Drop for Applier<'_> {
    /// After a failure: move verified objects into `objects/` and remove
    /// uncommitted staging trees, so those objects count as loose (held)
    /// and a retry does not download them again.
    fn drop(&mut self) {
        let _ = self.objects.flush();
        let mut names: Vec<String> = self
            .finished
            .iter()
            .filter(|f| !f.committed)
            .map(|f| f.staging.clone())
            .collect();
        names.extend(self.current.take());
        for n in names {
            let _ = fsops::remove_at(self.store.tmp_fd(), n.as_bytes());
            let _ = fsops::remove_at(self.store.tmp_fd(), dirtimes::spill_name(&n).as_bytes());
        }
    }
}

/// State of the layer being written.
struct LayerWriter {
    root: OwnedFd,
    /// The last parent directory opened, by path.
    cache: Option<(Vec<u8>, OwnedFd)>,
    /// Directory times, applied at commit.
    dirs: DirTimes,
    stats: LayerStats,
    layer: usize,
    /// Whether the section started with a base marker.
    based: bool,
}
