//! Applying a dedup archive to the store: one streaming pass.
//!
//! For each layer section the applier builds `tmp/layer-<hex>/`:
//!
//! * every path goes through [`normalize_entry_path`]; parents are opened one
//!   component at a time with `O_NOFOLLOW`, so nothing is ever created
//!   through a symlink (an entry whose parent is a symlink is rejected);
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

use crate::codec::ArchiveDecoder;
use crate::error::{Error, Result};
use crate::fsops::{self, file_type, is_whiteout, show, split_leaf, Meta, OVERLAY_OPAQUE};
use crate::store::objects::ObjectWriter;
use crate::store::Store;
use crate::tar::{Header, Kind, TarReader, Time};
use layerlink_proto::archive::{
    classify_whiteout, normalize_entry_path, parse_reference_link, Encoding, Marker, PathError,
    Whiteout,
};
use layerlink_proto::compact::{MetaDecoder, MetaRecord};
use layerlink_proto::limits::{
    MAX_LAYER_ENTRIES, MAX_METADATA_BYTES, MAX_PATH_BYTES, MAX_REPAIR_OBJECTS,
};
use layerlink_proto::msg::Platform;
use layerlink_proto::Digest;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, XattrFlags};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Most bytes of paths kept for unresolved references.
const MAX_PENDING_BYTES: usize = 4 * 1024 * 1024;
/// Deepest directory nesting copied from a held layer (each level holds
/// three descriptors while it is copied).
const MAX_COPY_DEPTH: usize = 200;

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
        }
    }
}

/// Check an image config's `os`, `architecture` and `variant` against the
/// device's platform. A variant is compared only when both name one
/// (`arm64` without a variant is `v8`).
pub fn check_platform(config: &[u8], want: &Platform) -> Result<()> {
    let v = crate::json::parse(config)
        .map_err(|e| Error::integrity(format!("image config is not JSON: {e}")))?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("");
    let (os, arch) = (field("os"), field("architecture"));
    let variant = Some(field("variant"))
        .filter(|s| !s.is_empty())
        .or((arch == "arm64").then_some("v8"));
    let want_variant = want
        .variant
        .as_deref()
        .or((want.architecture == "arm64").then_some("v8"));
    let variant_ok = match (variant, want_variant) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    if os == want.os && arch == want.architecture && variant_ok {
        return Ok(());
    }
    let show = |os: &str, arch: &str, var: Option<&str>| match var {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    };
    Err(Error::WrongPlatform(format!(
        "the image is {}, this device is {} (--force-platform or `force_platform = true` to sync it anyway)",
        show(os, arch, Some(field("variant")).filter(|s| !s.is_empty())),
        show(&want.os, &want.architecture, want.variant.as_deref())
    )))
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

struct Pending {
    layer: usize,
    path: Vec<u8>,
    ino: u64,
    digest: Digest,
    meta: Meta,
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
                    self.apply_layer(&mut tar, diff_id, next_layer)?;
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
        let dirs_name = format!("{staging}.dirs");
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
            dirs: BufWriter::with_capacity(8192, dirs_file),
            stats: LayerStats::default(),
            layer: self.finished.len(),
            based: false,
        };
        // The layer root's metadata comes from its "./" entry, or else from
        // the layer below; until a "./" entry comes it is implied.
        if let Some(m) = self.lower_dir_meta(b"")? {
            fsops::set_meta_fd(lw.root.as_fd(), &m, false)
                .map_err(|e| Error::errno("layer root", e))?;
            lw.record_dir(b"", m.mtime)?;
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
        set_dir_times(self.store.tmp_fd(), &f.staging, f.root.as_fd())?;
        self.store.commit_layer(&f.staging, &f.diff_id)?;
        let _ = rfs::unlinkat(
            self.store.tmp_fd(),
            format!("{}.dirs", f.staging).as_str(),
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

    /// Distinct digests of unresolved references (to fetch with
    /// `POST /objects`), sorted.
    pub fn pending_digests(&self) -> Vec<Digest> {
        let mut v: Vec<Digest> = self.pending.iter().map(|p| p.digest).collect();
        v.sort_unstable();
        v.dedup();
        // Content that arrived later in the stream resolves locally.
        v.retain(|d| !self.objects.has(d).unwrap_or(false));
        v
    }

    /// Store the objects of one objects response (gzip'd or zstd tar of
    /// `object` markers) that answers a request for `asked`, which must all
    /// arrive. Then [`Applier::resolve_pending`] commits the waiting layers.
    pub fn store_objects<R: Read>(&mut self, r: R, asked: &[Digest]) -> Result<()> {
        self.store_objects_encoded(r, asked, None)
    }

    /// [`Applier::store_objects`] for a response declared to be in
    /// `declared` encoding.
    pub fn store_objects_encoded<R: Read>(
        &mut self,
        mut r: R,
        asked: &[Digest],
        declared: Option<Encoding>,
    ) -> Result<()> {
        self.objects_dyn(&mut r, asked, declared)
    }

    /// [`Applier::store_objects`] for all pending digests at once, then
    /// [`Applier::resolve_pending`].
    pub fn repair<R: Read>(&mut self, r: R) -> Result<()> {
        let wanted = self.pending_digests();
        self.store_objects(r, &wanted)?;
        self.resolve_pending()
    }

    fn objects_dyn(
        &mut self,
        r: &mut dyn Read,
        wanted: &[Digest],
        declared: Option<Encoding>,
    ) -> Result<()> {
        let dec = decoder(r, declared)?;
        let bound = self.opts.max_stream_bytes;
        let mut tar = TarReader::new(Bounded {
            inner: dec,
            left: bound,
        });
        loop {
            let Some(h) = tar.next_header()? else {
                return Err(Error::integrity(
                    "objects response ended without its end marker",
                ));
            };
            match h.ll.marker {
                Some(Marker::Object) => {
                    let Some(d) = h.ll.digest else {
                        return Err(Error::integrity("object marker without a digest"));
                    };
                    let Some(p) = self.pending.iter().find(|p| p.digest == d) else {
                        continue; // not asked for: skip its content
                    };
                    let meta = p.meta.clone();
                    self.objects
                        .insert(Some(&d), h.size, &mut |b| tar.read_data(b), &meta)?;
                }
                Some(Marker::End) => break,
                _ => return Err(hostile(&h.path, "unexpected entry in an objects response")),
            }
        }
        for d in wanted {
            if !self.objects.has(d)? {
                return Err(Error::integrity(format!(
                    "the registry did not send object {d} asked for"
                )));
            }
        }
        Ok(())
    }

    /// Resolve pending references from objects now present, then commit
    /// every finished layer. Fails if one is still missing.
    pub fn resolve_pending(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        for p in &pending {
            let f = &self.finished[p.layer];
            let (parent, leaf) = split_leaf(&p.path);
            let dir = open_existing_dir(f.root.as_fd(), parent).map_err(|e| hostile(&p.path, e))?;
            match fsops::lstat_at(dir.as_fd(), leaf).map_err(|e| Error::errno("repair", e))? {
                Some(st) if st.st_ino == p.ino => {}
                _ => continue, // replaced later in the layer
            }
            rfs::unlinkat(&dir, leaf, AtFlags::empty()).map_err(|e| Error::errno("repair", e))?;
            if !self.objects.link(&p.digest, &p.meta, dir.as_fd(), leaf)? {
                let msg = format!(
                    "object {} for {:?} is still missing after repair",
                    p.digest,
                    show(&p.path)
                );
                self.pending = pending;
                return Err(Error::integrity(msg));
            }
            self.finished[p.layer].stats.repaired += 1;
        }
        for i in 0..self.finished.len() {
            if !self.finished[i].committed {
                self.commit(i)?;
            }
        }
        Ok(())
    }

    /// Metadata of `path` as a directory in the nearest lower layer that has
    /// it (not through whiteouts or opaque directories).
    fn lower_dir_meta(&self, path: &[u8]) -> Result<Option<Meta>> {
        'lowers: for lower in &self.lowers {
            let mut cur = fsops::open_dir_at(lower.as_fd(), b".")
                .map_err(|e| Error::errno("lower layer", e))?;
            if !path.is_empty() {
                for comp in path.split(|&c| c == b'/') {
                    match fsops::open_dir_at(cur.as_fd(), comp) {
                        Ok(fd) => cur = fd,
                        Err(Errno::NOENT) => {
                            if has_opaque(cur.as_fd()) {
                                return Ok(None);
                            }
                            continue 'lowers;
                        }
                        Err(_) => return Ok(None), // a symlink, file or whiteout hides lower ones
                    }
                }
            }
            let st = rfs::fstat(&cur).map_err(|e| Error::errno("lower layer", e))?;
            let x =
                fsops::read_xattrs_fd(cur.as_fd()).map_err(|e| Error::errno("lower layer", e))?;
            return Ok(Some(Meta::from_stat(&st, x)));
        }
        Ok(None)
    }

    /// Open the parent directory `parent` of an entry, creating missing
    /// directories (with the lower layers' metadata) and refusing symlinks.
    fn parent_dir(&self, lw: &mut LayerWriter, parent: &[u8], entry: &[u8]) -> Result<OwnedFd> {
        if let Some((p, fd)) = &lw.cache {
            if p == parent {
                return fsops::open_dir_at(fd.as_fd(), b".")
                    .map_err(|e| Error::errno("reopening a directory", e));
            }
        }
        let mut cur =
            fsops::open_dir_at(lw.root.as_fd(), b".").map_err(|e| Error::errno("layer root", e))?;
        if !parent.is_empty() {
            let mut walked = 0usize;
            for comp in parent.split(|&c| c == b'/') {
                let here = &parent[..walked + comp.len()];
                walked += comp.len() + 1;
                cur = self.child_dir(lw, cur.as_fd(), comp, here, entry)?;
            }
        }
        let dup = fsops::open_dir_at(cur.as_fd(), b".")
            .map_err(|e| Error::errno("reopening a directory", e))?;
        lw.cache = Some((parent.to_vec(), dup));
        Ok(cur)
    }

    /// Open (or implicitly create) directory `comp` in `dir`.
    fn child_dir(
        &self,
        lw: &mut LayerWriter,
        dir: BorrowedFd<'_>,
        comp: &[u8],
        here: &[u8],
        entry: &[u8],
    ) -> Result<OwnedFd> {
        match fsops::open_dir_at(dir, comp) {
            Ok(fd) => Ok(fd),
            Err(Errno::NOENT) => {
                let meta = self.lower_dir_meta(here)?;
                self.make_dir(lw, dir, comp, here, meta.as_ref(), false)
            }
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                let st = fsops::lstat_at(dir, comp).map_err(|e| Error::errno("lstat", e))?;
                match st {
                    Some(st) if is_whiteout(&st) => {
                        // Deleted in this layer, then written into: a new,
                        // opaque directory.
                        rfs::unlinkat(dir, comp, AtFlags::empty())
                            .map_err(|e| Error::errno("whiteout", e))?;
                        self.make_dir(lw, dir, comp, here, None, true)
                    }
                    Some(st) if file_type(&st) == FileType::Symlink => Err(hostile(
                        entry,
                        format!("goes through the symlink {:?}", show(here)),
                    )),
                    _ => Err(hostile(
                        entry,
                        format!("parent {:?} is not a directory", show(here)),
                    )),
                }
            }
            Err(e) => Err(Error::errno(format!("opening {}", show(here)), e)),
        }
    }

    fn make_dir(
        &self,
        lw: &mut LayerWriter,
        dir: BorrowedFd<'_>,
        comp: &[u8],
        here: &[u8],
        meta: Option<&Meta>,
        opaque: bool,
    ) -> Result<OwnedFd> {
        rfs::mkdirat(dir, comp, Mode::from_raw_mode(0o755))
            .map_err(|e| Error::errno(format!("mkdir {}", show(here)), e))?;
        let fd = fsops::open_dir_at(dir, comp)
            .map_err(|e| Error::errno(format!("opening {}", show(here)), e))?;
        // Only ever called for directories the tar does not list (yet).
        fsops::mark_implied(fd.as_fd())
            .map_err(|e| Error::errno(format!("marking {} implied", show(here)), e))?;
        if let Some(m) = meta {
            fsops::set_meta_fd(fd.as_fd(), m, false)
                .map_err(|e| Error::errno(format!("metadata of {}", show(here)), e))?;
            lw.record_dir(here, m.mtime)?;
        }
        if opaque {
            set_opaque(fd.as_fd())
                .map_err(|e| Error::errno(format!("marking {} opaque", show(here)), e))?;
        }
        Ok(fd)
    }

    fn apply_entry(&mut self, lw: &mut LayerWriter, h: &Header, tar: &mut Tar<'_>) -> Result<()> {
        let path = match normalize_entry_path(&h.path) {
            Ok(p) => p,
            Err(PathError::Empty) if h.kind == Kind::Dir => {
                // The layer root ("./").
                let meta = Meta::from_header(h);
                fsops::set_meta_fd(lw.root.as_fd(), &meta, true)
                    .map_err(|e| Error::errno("layer root", e))?;
                fsops::clear_implied(lw.root.as_fd()).map_err(|e| Error::errno("layer root", e))?;
                return lw.record_dir(b"", meta.mtime);
            }
            Err(e) => return Err(hostile(&h.path, e)),
        };
        let (parent_path, leaf) = split_leaf(&path);
        match classify_whiteout(&path) {
            Whiteout::None => {}
            Whiteout::Remove(target) => {
                let (tparent, tleaf) = split_leaf(&target);
                if tleaf.is_empty() || tleaf == b"." || tleaf == b".." {
                    return Err(hostile(&h.path, "bad whiteout name"));
                }
                if tleaf.starts_with(b".wh.") {
                    return Ok(()); // aufs metadata (.wh..wh.plnk …): nothing to do
                }
                let dir = self.parent_dir(lw, tparent, &path)?;
                match fsops::lstat_at(dir.as_fd(), tleaf)
                    .map_err(|e| Error::errno("whiteout", e))?
                {
                    None => rfs::mknodat(&dir, tleaf, FileType::CharacterDevice, Mode::empty(), 0)
                        .map_err(|e| {
                            Error::errno(format!("creating whiteout {}", show(&target)), e)
                        })?,
                    Some(st) if file_type(&st) == FileType::Directory => {
                        // Created earlier in this layer, then whited out:
                        // hide what lower layers have there.
                        let sub = fsops::open_dir_at(dir.as_fd(), tleaf)
                            .map_err(|e| Error::errno("whiteout", e))?;
                        set_opaque(sub.as_fd()).map_err(|e| Error::errno("whiteout", e))?;
                    }
                    Some(_) => {} // this layer's own entry stays
                }
                return Ok(());
            }
            Whiteout::Opaque(dir_path) => {
                let fd = if dir_path.is_empty() {
                    fsops::open_dir_at(lw.root.as_fd(), b".")
                        .map_err(|e| Error::errno("layer root", e))?
                } else {
                    let (pp, pl) = split_leaf(&dir_path);
                    let parent = self.parent_dir(lw, pp, &path)?;
                    self.child_dir(lw, parent.as_fd(), pl, &dir_path, &path)?
                };
                set_opaque(fd.as_fd())
                    .map_err(|e| Error::errno(format!("marking {} opaque", show(&dir_path)), e))?;
                return Ok(());
            }
        }
        let meta = Meta::from_header(h);
        let dir = self.parent_dir(lw, parent_path, &path)?;
        let dir = dir.as_fd();
        let io = |what: &str, e: Errno| Error::errno(format!("{what} {}", show(&path)), e);
        match h.kind {
            Kind::Dir => {
                let existing = fsops::lstat_at(dir, leaf).map_err(|e| io("lstat", e))?;
                let mut opaque = false;
                let existed = match existing {
                    Some(st) if file_type(&st) == FileType::Directory => true,
                    Some(st) => {
                        opaque = is_whiteout(&st);
                        rfs::unlinkat(dir, leaf, AtFlags::empty())
                            .map_err(|e| io("replacing", e))?;
                        false
                    }
                    None => false,
                };
                if !existed {
                    rfs::mkdirat(dir, leaf, Mode::from_raw_mode(0o700))
                        .map_err(|e| io("mkdir", e))?;
                }
                let fd = fsops::open_dir_at(dir, leaf).map_err(|e| io("opening", e))?;
                fsops::set_meta_fd(fd.as_fd(), &meta, existed).map_err(|e| io("metadata of", e))?;
                if existed {
                    // Created for a deeper path earlier in this layer, listed now.
                    fsops::clear_implied(fd.as_fd()).map_err(|e| io("metadata of", e))?;
                }
                if opaque {
                    set_opaque(fd.as_fd()).map_err(|e| io("marking opaque", e))?;
                }
                lw.record_dir(&path, meta.mtime)?;
            }
            Kind::Regular if h.ll.delta_base.is_some() => {
                replace(lw, dir, leaf, &path)?;
                self.apply_delta(lw, dir, leaf, &path, h, tar, &meta)?;
            }
            Kind::Regular => {
                replace(lw, dir, leaf, &path)?;
                if h.size == 0 {
                    if h.ll.digest.is_some_and(|d| d != self.empty) {
                        return Err(hostile(&path, "empty file with a non-empty digest"));
                    }
                    let f =
                        fsops::create_file_at(dir, leaf, 0o600).map_err(|e| io("creating", e))?;
                    fsops::set_meta_fd(f.as_fd(), &meta, false)
                        .map_err(|e| io("metadata of", e))?;
                    return Ok(());
                }
                self.new_bytes = self.new_bytes.saturating_add(h.size);
                if self.new_bytes > self.opts.max_new_bytes {
                    return Err(Error::integrity(format!(
                        "archive carries more new content than the plan announced ({} bytes)",
                        self.opts.max_new_bytes
                    )));
                }
                let meter = &mut self.meter;
                let d = self
                    .objects
                    .insert(
                        h.ll.digest.as_ref(),
                        h.size,
                        &mut |b| {
                            let n = tar.read_data(b)?;
                            if let Some(m) = meter.as_mut() {
                                m.add(n as u64);
                            }
                            Ok(n)
                        },
                        &meta,
                    )
                    .map_err(|e| match e {
                        Error::Integrity(m) => hostile(&path, m),
                        e => e,
                    })?;
                if !self.objects.link(&d, &meta, dir, leaf)? {
                    return Err(Error::Other(format!("object {d} vanished while applying")));
                }
                lw.stats.new_files += 1;
                lw.stats.new_bytes += h.size;
                self.stored_new_bytes += h.size;
            }
            Kind::HardLink => {
                if let Some(d) = parse_reference_link(&h.link) {
                    replace(lw, dir, leaf, &path)?;
                    self.reference(lw, dir, leaf, &path, d, &meta)?;
                } else {
                    self.hard_link(lw, dir, leaf, &path, &h.link)?;
                }
            }
            Kind::Symlink => {
                if h.link.is_empty() {
                    return Err(hostile(&path, "symlink with an empty target"));
                }
                replace(lw, dir, leaf, &path)?;
                rfs::symlinkat(h.link.as_slice(), dir, leaf).map_err(|e| io("symlink", e))?;
                fsops::set_meta_at(dir, leaf, &meta, FileType::Symlink)
                    .map_err(|e| io("metadata of", e))?;
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let ft = match h.kind {
                    Kind::Char => FileType::CharacterDevice,
                    Kind::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                if ft != FileType::Fifo && !self.opts.allow_devices {
                    return Err(hostile(
                        &path,
                        "device nodes are not allowed (--no-devices)",
                    ));
                }
                replace(lw, dir, leaf, &path)?;
                let dev = rfs::makedev(h.dev_major, h.dev_minor);
                rfs::mknodat(dir, leaf, ft, Mode::from_raw_mode(meta.mode & 0o7777), dev)
                    .map_err(|e| io("mknod", e))?;
                fsops::set_meta_at(dir, leaf, &meta, ft).map_err(|e| io("metadata of", e))?;
            }
            Kind::Other(t) => {
                return Err(hostile(
                    &path,
                    format!("unsupported tar entry type {:?}", t as char),
                ))
            }
        }
        Ok(())
    }

    /// A delta entry (feature `file-delta`): rebuild the new object from the
    /// held base and the patch ([`crate::delta`]); when that fails, the
    /// entry becomes a reference the repair fetches whole.
    #[allow(clippy::too_many_arguments)]
    fn apply_delta(
        &mut self,
        lw: &mut LayerWriter,
        dir: BorrowedFd<'_>,
        leaf: &[u8],
        path: &[u8],
        h: &Header,
        tar: &mut Tar<'_>,
        meta: &Meta,
    ) -> Result<()> {
        let (Some(new), Some(base), Some(size)) = (h.ll.digest, h.ll.delta_base, h.ll.delta_size)
        else {
            return Err(hostile(
                path,
                "delta entry without LAYERLINK.digest/delta-size",
            ));
        };
        // The plan announced the new file's size; the patch is about as big
        // raw and is bounded by the stream bound.
        self.new_bytes = self.new_bytes.saturating_add(size);
        if self.new_bytes > self.opts.max_new_bytes {
            return Err(Error::integrity(format!(
                "archive carries more new content than the plan announced ({} bytes)",
                self.opts.max_new_bytes
            )));
        }
        let r = crate::delta::apply(
            &mut self.objects,
            &base,
            &new,
            size,
            &mut |b| tar.read_data(b),
            meta,
        )?;
        match r {
            crate::delta::Applied::Stored => {
                if !self.objects.link(&new, meta, dir, leaf)? {
                    return Err(Error::Other(format!(
                        "object {new} vanished while applying"
                    )));
                }
                lw.stats.delta_files += 1;
                lw.stats.delta_patch_bytes += h.size;
                self.stored_new_bytes += size;
                if let Some(m) = self.meter.as_mut() {
                    m.add(size);
                }
            }
            crate::delta::Applied::Fallback(why) => {
                // Always said: it means a damaged store or a bad registry.
                eprintln!(
                    "warning: {}: delta not applied ({why}); fetching it whole",
                    show(path)
                );
                lw.stats.delta_fallbacks += 1;
                self.reference(lw, dir, leaf, path, new, meta)?;
            }
        }
        Ok(())
    }

    /// A base marker: copy the held layer's tree into the staging tree,
    /// then remove the paths the marker lists (`proto/SPEC.md`, "Layers
    /// built on a held layer").
    fn apply_base(
        &mut self,
        lw: &mut LayerWriter,
        h: &Header,
        tar: &mut Tar<'_>,
        diff_id: &Digest,
    ) -> Result<()> {
        let Some(base) = h.ll.diff_id else {
            return Err(Error::integrity("base marker without a diff_id"));
        };
        if base == *diff_id || h.size > MAX_METADATA_BYTES {
            return Err(Error::integrity(format!(
                "bad base marker for layer {diff_id}"
            )));
        }
        if !self.store.has_layer(&base)? {
            return Err(Error::integrity(format!(
                "the registry built layer {diff_id} on layer {base}, which this store does not hold"
            )));
        }
        let src = self.store.open_layer(&base)?;
        if self.opts.progress {
            eprintln!("layer {diff_id}: building on held layer {base}");
        }
        let mut cm = match (h.ll.meta, h.ll.meta_size, h.ll.base_order) {
            (None, None, None) => None,
            (Some(n), Some(size), Some(order))
                if n <= MAX_LAYER_ENTRIES && size <= h.size && size >= n.saturating_mul(2) =>
            {
                Some(Compact {
                    dec: MetaDecoder::new(n),
                    budget: size,
                    buf: [0; COMPACT_BUF],
                    pos: 0,
                    len: 0,
                    next: None,
                    node: 0,
                    order: Sha256::new(),
                    want_order: order,
                })
            }
            _ => {
                return Err(Error::integrity(format!(
                    "base marker of layer {diff_id}: bad compact metadata keys"
                )))
            }
        };
        let dst =
            fsops::open_dir_at(lw.root.as_fd(), b".").map_err(|e| Error::errno("layer root", e))?;
        let mut path = Vec::new();
        let mut walk = Walk {
            tar,
            cm: cm.as_mut(),
        };
        self.copy_tree(lw, &mut walk, src.as_fd(), dst.as_fd(), &mut path, 0)?;
        if let Some(c) = cm {
            c.finish(diff_id)?;
        }
        lw.cache = None;
        // The removed paths, each ended by a NUL, streamed.
        let mut buf = [0u8; 4096];
        let mut cur: Vec<u8> = Vec::new();
        let mut removed = 0u64;
        while tar.remaining() > 0 {
            let n = tar.read_data(&mut buf)?;
            for &c in &buf[..n] {
                if c != 0 {
                    if cur.len() >= MAX_PATH_BYTES {
                        return Err(Error::integrity("base marker: removed path too long"));
                    }
                    cur.push(c);
                    continue;
                }
                self.remove_base_path(lw, &cur)?;
                removed += 1;
                cur.clear();
            }
        }
        if !cur.is_empty() || h.ll.entries != Some(removed) {
            return Err(Error::integrity(format!(
                "base marker of layer {diff_id}: {removed} removed paths, marker says {:?}",
                h.ll.entries
            )));
        }
        lw.cache = None;
        Ok(())
    }

    /// Copy the tree below `src` into `dst` (same inodes for non-empty
    /// regular files, new ones for the rest), recording directory times.
    fn copy_tree(
        &mut self,
        lw: &mut LayerWriter,
        walk: &mut Walk<'_, '_>,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        path: &mut Vec<u8>,
        depth: usize,
    ) -> Result<()> {
        if depth > MAX_COPY_DEPTH {
            return Err(Error::Other(format!(
                "held layer deeper than {MAX_COPY_DEPTH} directories at {:?}",
                show(path)
            )));
        }
        // Tree order (`layerlink_proto::compact`): names sorted by bytes.
        let mut names: Vec<Vec<u8>> = Vec::new();
        fsops::for_each_entry(src, |n, _| {
            names.push(n.to_vec());
            Ok(())
        })?;
        names.sort_unstable();
        for name in &names {
            let len = path.len();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name);
            let rec = match walk.cm.as_deref_mut() {
                Some(c) => c.take(walk.tar, path)?,
                None => None,
            };
            self.copy_entry(lw, walk, src, dst, name, path, depth, rec)?;
            path.truncate(len);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_entry(
        &mut self,
        lw: &mut LayerWriter,
        walk: &mut Walk<'_, '_>,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &[u8],
        path: &mut Vec<u8>,
        depth: usize,
        rec: Option<MetaRecord>,
    ) -> Result<()> {
        let io = |what: &str, e: Errno| {
            Error::errno(format!("{what} {} (held layer copy)", show(path)), e)
        };
        let Some(st) = fsops::lstat_at(src, name).map_err(|e| io("lstat", e))? else {
            return Ok(());
        };
        // B's metadata, with what a compact record changes.
        let meta_of = |x: fsops::Xattrs| {
            let mut m = Meta::from_stat(&st, x);
            if let Some(r) = &rec {
                if let Some(t) = r.mtime {
                    m.mtime = Time { sec: t, nsec: 0 };
                }
                m.mode = r.mode.unwrap_or(m.mode);
                m.uid = r.uid.unwrap_or(m.uid);
                m.gid = r.gid.unwrap_or(m.gid);
            }
            m
        };
        let ft = file_type(&st);
        if rec.is_some() {
            if is_whiteout(&st) {
                return Err(hostile(path, "compact metadata record for a whiteout"));
            }
            lw.stats.compact += 1;
        }
        match ft {
            FileType::Directory => {
                rfs::mkdirat(dst, name, Mode::from_raw_mode(0o700)).map_err(|e| io("mkdir", e))?;
                let s = fsops::open_dir_at(src, name).map_err(|e| io("opening", e))?;
                let d = fsops::open_dir_at(dst, name).map_err(|e| io("opening", e))?;
                let x = fsops::read_xattrs_fd(s.as_fd()).map_err(|e| io("xattrs of", e))?;
                let meta = meta_of(x);
                fsops::set_meta_fd(d.as_fd(), &meta, false).map_err(|e| io("metadata of", e))?;
                if has_opaque(s.as_fd()) {
                    set_opaque(d.as_fd()).map_err(|e| io("marking opaque", e))?;
                }
                if fsops::is_implied(s.as_fd()) {
                    fsops::mark_implied(d.as_fd()).map_err(|e| io("marking implied", e))?;
                }
                lw.record_dir(path, meta.mtime)?;
                lw.stats.kept += 1;
                self.copy_tree(lw, walk, s.as_fd(), d.as_fd(), path, depth + 1)?;
                return Ok(());
            }
            FileType::RegularFile if st.st_size > 0 && rec.is_some() => {
                // The same content with other metadata: another variant.
                let (d, linked) = self.copy_as_variant(src, name, &st, dst, name, meta_of, io)?;
                if !linked {
                    return Err(Error::Other(format!("object {d} vanished while copying")));
                }
            }
            FileType::RegularFile if st.st_size > 0 => {
                match rfs::linkat(src, name, dst, name, AtFlags::empty()) {
                    Ok(()) => {}
                    // The variant is full: store the content once more.
                    Err(Errno::MLINK) => self.link_new_variant(src, name, &st, dst, name)?,
                    Err(e) => return Err(io("linking", e)),
                }
            }
            FileType::RegularFile => {
                // Empty files are never linked (store invariant).
                let x = fsops::read_xattrs_at(src, name).map_err(|e| io("xattrs of", e))?;
                let meta = meta_of(x);
                let f = fsops::create_file_at(dst, name, 0o600).map_err(|e| io("creating", e))?;
                fsops::set_meta_fd(f.as_fd(), &meta, false).map_err(|e| io("metadata of", e))?;
            }
            FileType::Symlink => {
                let target =
                    rfs::readlinkat(src, name, Vec::new()).map_err(|e| io("readlink", e))?;
                rfs::symlinkat(target.as_bytes(), dst, name).map_err(|e| io("symlink", e))?;
                let x = fsops::read_xattrs_at(src, name).map_err(|e| io("xattrs of", e))?;
                fsops::set_meta_at(dst, name, &meta_of(x), ft).map_err(|e| io("metadata of", e))?;
            }
            FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo => {
                if is_whiteout(&st) {
                    rfs::mknodat(dst, name, FileType::CharacterDevice, Mode::empty(), 0)
                        .map_err(|e| io("creating whiteout", e))?;
                } else {
                    if ft != FileType::Fifo && !self.opts.allow_devices {
                        return Err(hostile(path, "device nodes are not allowed (--no-devices)"));
                    }
                    rfs::mknodat(
                        dst,
                        name,
                        ft,
                        Mode::from_raw_mode(st.st_mode & 0o7777),
                        st.st_rdev,
                    )
                    .map_err(|e| io("mknod", e))?;
                    let x = fsops::read_xattrs_at(src, name).map_err(|e| io("xattrs of", e))?;
                    fsops::set_meta_at(dst, name, &meta_of(x), ft)
                        .map_err(|e| io("metadata of", e))?;
                }
            }
            _ => {
                return Err(Error::integrity(format!(
                    "held layer has an unsupported file type at {:?}",
                    show(path)
                )))
            }
        }
        lw.stats.kept += 1;
        Ok(())
    }

    /// Store regular file `name` in `src` (lstat `st`) once more as a new
    /// variant and link it to `dst/leaf`: what a full hard-link count
    /// (`EMLINK`) leaves.
    fn link_new_variant(
        &mut self,
        src: BorrowedFd<'_>,
        name: &[u8],
        st: &rfs::Stat,
        dst: BorrowedFd<'_>,
        leaf: &[u8],
    ) -> Result<()> {
        let err = |what: &str, e: Errno| Error::errno(format!("{what} {}", show(name)), e);
        self.copy_as_variant(src, name, st, dst, leaf, |x| Meta::from_stat(st, x), err)?;
        Ok(())
    }

    /// Store regular file `name` in `src` (lstat `st`) as a new object with
    /// the metadata `meta_of` makes from its xattrs and link it to
    /// `dst/leaf`. Returns the object and whether the link was made.
    #[allow(clippy::too_many_arguments)]
    fn copy_as_variant(
        &mut self,
        src: BorrowedFd<'_>,
        name: &[u8],
        st: &rfs::Stat,
        dst: BorrowedFd<'_>,
        leaf: &[u8],
        meta_of: impl FnOnce(fsops::Xattrs) -> Meta,
        err: impl Fn(&str, Errno) -> Error,
    ) -> Result<(Digest, bool)> {
        let mut f = fsops::open_file_at(src, name).map_err(|e| err("opening", e))?;
        let x = fsops::read_xattrs_fd(f.as_fd()).map_err(|e| err("xattrs of", e))?;
        let meta = meta_of(x);
        let d = self.objects.insert(
            None,
            st.st_size as u64,
            &mut |b| {
                f.read(b)
                    .map_err(|e| Error::io("reading a file to copy", e))
            },
            &meta,
        )?;
        let linked = self.objects.link(&d, &meta, dst, leaf)?;
        Ok((d, linked))
    }

    /// Remove one path a base marker lists from the staging tree.
    fn remove_base_path(&mut self, lw: &mut LayerWriter, raw: &[u8]) -> Result<()> {
        let path = normalize_entry_path(raw).map_err(|e| hostile(raw, e))?;
        let root = lw.root.as_fd();
        let err = |e: Errno| Error::errno(format!("removing {}", show(&path)), e);
        match classify_whiteout(&path) {
            Whiteout::Opaque(dir) => {
                if let Ok(fd) = open_existing_dir(root, &dir) {
                    match rfs::fremovexattr(&fd, OVERLAY_OPAQUE) {
                        Ok(()) | Err(Errno::NODATA) => {}
                        Err(e) => return Err(err(e)),
                    }
                }
            }
            Whiteout::Remove(target) => {
                let (parent, leaf) = split_leaf(&target);
                if let Ok(dir) = open_existing_dir(root, parent) {
                    if let Some(st) = fsops::lstat_at(dir.as_fd(), leaf).map_err(err)? {
                        if is_whiteout(&st) {
                            rfs::unlinkat(&dir, leaf, AtFlags::empty()).map_err(err)?;
                        }
                    }
                }
            }
            Whiteout::None => {
                let (parent, leaf) = split_leaf(&path);
                if let Ok(dir) = open_existing_dir(root, parent) {
                    fsops::remove_at(dir.as_fd(), leaf).map_err(err)?;
                }
            }
        }
        Ok(())
    }

    fn reference(
        &mut self,
        lw: &mut LayerWriter,
        dir: BorrowedFd<'_>,
        leaf: &[u8],
        path: &[u8],
        d: Digest,
        meta: &Meta,
    ) -> Result<()> {
        if d == self.empty {
            let f =
                fsops::create_file_at(dir, leaf, 0o600).map_err(|e| Error::errno("creating", e))?;
            return fsops::set_meta_fd(f.as_fd(), meta, false)
                .map_err(|e| Error::errno("metadata", e));
        }
        if self.objects.link(&d, meta, dir, leaf)? {
            lw.stats.referenced_files += 1;
            if let Ok(Some(st)) = fsops::lstat_at(dir, leaf) {
                lw.stats.referenced_bytes += st.st_size as u64;
            }
            return Ok(());
        }
        // Not held after all: a placeholder until repair.
        let f = fsops::create_file_at(dir, leaf, 0o600).map_err(|e| Error::errno("creating", e))?;
        fsops::set_meta_fd(f.as_fd(), meta, false).map_err(|e| Error::errno("metadata", e))?;
        let st = rfs::fstat(&f).map_err(|e| Error::errno("fstat", e))?;
        self.add_pending(Pending {
            layer: lw.layer,
            path: path.to_vec(),
            ino: st.st_ino,
            digest: d,
            meta: meta.clone(),
        })
    }

    fn add_pending(&mut self, p: Pending) -> Result<()> {
        self.pending_bytes += p.path.len() + 64;
        if self.pending.len() >= MAX_REPAIR_OBJECTS || self.pending_bytes > MAX_PENDING_BYTES {
            return Err(Error::integrity(
                "too many references to objects this device does not hold; run `layerlink-agent verify`",
            ));
        }
        self.pending.push(p);
        Ok(())
    }

    fn hard_link(
        &mut self,
        lw: &mut LayerWriter,
        dir: BorrowedFd<'_>,
        leaf: &[u8],
        path: &[u8],
        link: &[u8],
    ) -> Result<()> {
        let target = normalize_entry_path(link)
            .map_err(|e| hostile(path, format!("hard link target: {e}")))?;
        if target == path {
            return Ok(()); // a link to itself changes nothing
        }
        let (tparent, tleaf) = split_leaf(&target);
        let tdir = open_existing_dir(lw.root.as_fd(), tparent)
            .map_err(|e| hostile(path, format!("hard link target {:?}: {e}", show(&target))))?;
        let st = fsops::lstat_at(tdir.as_fd(), tleaf).map_err(|e| Error::errno("lstat", e))?;
        let Some(st) = st.filter(|s| file_type(s) == FileType::RegularFile) else {
            return Err(hostile(
                path,
                format!(
                    "hard link to {:?}, which is not a regular file of this layer",
                    show(&target)
                ),
            ));
        };
        replace(lw, dir, leaf, path)?;
        match rfs::linkat(&tdir, tleaf, dir, leaf, AtFlags::empty()) {
            Ok(()) => {}
            // The target's variant is full: store it once more.
            Err(Errno::MLINK) => self.link_new_variant(tdir.as_fd(), tleaf, &st, dir, leaf)?,
            Err(e) => return Err(Error::errno(format!("hard link {}", show(path)), e)),
        }
        if let Some(p) = self
            .pending
            .iter()
            .find(|p| p.layer == lw.layer && p.ino == st.st_ino)
        {
            let (digest, meta) = (p.digest, p.meta.clone());
            self.add_pending(Pending {
                layer: lw.layer,
                path: path.to_vec(),
                ino: st.st_ino,
                digest,
                meta,
            })?;
        }
        Ok(())
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
            let _ = fsops::remove_at(self.store.tmp_fd(), format!("{n}.dirs").as_bytes());
        }
    }
}

/// Remove whatever `leaf` is in `dir` before a new entry takes its place
/// (tar semantics: the later entry wins).
fn replace(lw: &mut LayerWriter, dir: BorrowedFd<'_>, leaf: &[u8], path: &[u8]) -> Result<()> {
    match fsops::lstat_at(dir, leaf).map_err(|e| Error::errno("lstat", e))? {
        None => Ok(()),
        Some(st) => {
            if file_type(&st) == FileType::Directory {
                lw.cache = None;
            }
            fsops::remove_at(dir, leaf)
                .map_err(|e| Error::errno(format!("replacing {}", show(path)), e))?;
            Ok(())
        }
    }
}

fn set_opaque(fd: BorrowedFd<'_>) -> std::result::Result<(), Errno> {
    rfs::fsetxattr(fd, OVERLAY_OPAQUE, b"y", XattrFlags::empty())
}

fn has_opaque(fd: BorrowedFd<'_>) -> bool {
    let mut b = [0u8; 4];
    matches!(rfs::fgetxattr(fd, OVERLAY_OPAQUE, &mut b[..]), Ok(1) if b[0] == b'y')
}

/// Open an existing directory below `root` without creating or following.
pub(crate) fn open_existing_dir(
    root: BorrowedFd<'_>,
    path: &[u8],
) -> std::result::Result<OwnedFd, String> {
    let mut cur = fsops::open_dir_at(root, b".").map_err(|e| e.to_string())?;
    if path.is_empty() {
        return Ok(cur);
    }
    for comp in path.split(|&c| c == b'/') {
        cur = match fsops::open_dir_at(cur.as_fd(), comp) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Err(format!("{:?} does not exist", show(path))),
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                return Err(format!(
                    "{:?} is not a directory (or goes through a symlink)",
                    show(path)
                ))
            }
            Err(e) => return Err(e.to_string()),
        };
    }
    Ok(cur)
}

/// Bytes of compact records buffered at once (a record has at most 51).
const COMPACT_BUF: usize = 256;
/// Most bytes one record takes: five varints of at most 10 bytes, plus one.
const MAX_RECORD_BYTES: usize = 51;

/// A held layer's copy in progress: the archive (for compact records) and
/// the records' state.
struct Walk<'t, 'a> {
    tar: &'t mut Tar<'a>,
    cm: Option<&'t mut Compact>,
}

/// Compact metadata records of a base marker (`proto/SPEC.md`, "Compact
/// metadata"), applied while the base's tree is copied in tree order.
struct Compact {
    dec: MetaDecoder,
    /// Record bytes not read from the archive yet.
    budget: u64,
    buf: [u8; COMPACT_BUF],
    pos: usize,
    len: usize,
    /// The next record, decoded ahead.
    next: Option<MetaRecord>,
    /// Tree-order index of the next node.
    node: u64,
    order: Sha256,
    want_order: Digest,
}

impl Compact {
    /// The record for the next node (`path`), if any.
    fn take(&mut self, tar: &mut Tar<'_>, path: &[u8]) -> Result<Option<MetaRecord>> {
        self.order.update(path);
        self.order.update([0u8]);
        let node = self.node;
        self.node += 1;
        if self.next.is_none() && self.dec.remaining() > 0 {
            // Refill so that a whole record is buffered (or all that is left).
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
            while self.len < MAX_RECORD_BYTES && self.budget > 0 {
                let want = (COMPACT_BUF - self.len).min(self.budget as usize);
                let n = tar.read_data(&mut self.buf[self.len..self.len + want])?;
                if n == 0 {
                    return Err(Error::integrity("base marker shorter than its records"));
                }
                self.len += n;
                self.budget -= n as u64;
            }
            let mut it = self.buf[self.pos..self.len].iter();
            let mut used = 0usize;
            self.next = self
                .dec
                .next_record(&mut || {
                    used += 1;
                    it.next().copied()
                })
                .map_err(|e| Error::integrity(format!("base marker: {e}")))?;
            self.pos += used;
        }
        match self.next {
            Some(r) if r.index == node => {
                self.next = None;
                Ok(Some(r))
            }
            _ => Ok(None),
        }
    }

    /// After the copy: every record was used, every byte read, and the tree
    /// order was the registry's.
    fn finish(self, diff_id: &Digest) -> Result<()> {
        if let Some(r) = self.next {
            return Err(Error::integrity(format!(
                "base marker of layer {diff_id}: compact record for node {} of a base with {}",
                r.index, self.node
            )));
        }
        if self.dec.remaining() > 0 || self.budget > 0 || self.pos != self.len {
            return Err(Error::integrity(format!(
                "base marker of layer {diff_id}: compact records do not match LAYERLINK.meta / meta-size"
            )));
        }
        if Digest::from_hasher(self.order) != self.want_order {
            return Err(Error::integrity(format!(
                "base marker of layer {diff_id}: the held base's tree order differs from the registry's"
            )));
        }
        Ok(())
    }
}

/// State of the layer being written.
struct LayerWriter {
    root: OwnedFd,
    /// The last parent directory opened, by path.
    cache: Option<(Vec<u8>, OwnedFd)>,
    /// Spill file of (directory path, mtime), applied at commit.
    dirs: BufWriter<File>,
    stats: LayerStats,
    layer: usize,
    /// Whether the section started with a base marker.
    based: bool,
}

impl LayerWriter {
    fn record_dir(&mut self, path: &[u8], t: Time) -> Result<()> {
        let mut rec = Vec::with_capacity(path.len() + 20);
        rec.extend_from_slice(&(path.len() as u32).to_le_bytes());
        rec.extend_from_slice(path);
        rec.extend_from_slice(&t.sec.to_le_bytes());
        rec.extend_from_slice(&t.nsec.to_le_bytes());
        self.dirs
            .write_all(&rec)
            .map_err(|e| Error::io("writing the directory list", e))
    }
}

/// Apply the recorded directory mtimes of a staged layer (later records of
/// the same path win: the file is read in order).
fn set_dir_times(tmp: BorrowedFd<'_>, staging: &str, root: BorrowedFd<'_>) -> Result<()> {
    let name = format!("{staging}.dirs");
    let f = match fsops::open_file_at(tmp, name.as_bytes()) {
        Ok(f) => f,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(Error::errno(format!("reading tmp/{name}"), e)),
    };
    let mut r = BufReader::with_capacity(8192, f);
    let err = |e: io::Error| Error::io(format!("reading tmp/{name}"), e);
    let mut path = Vec::new();
    let mut cached: Option<(Vec<u8>, OwnedFd)> = None;
    loop {
        if r.fill_buf().map_err(err)?.is_empty() {
            return Ok(());
        }
        let mut len = [0u8; 4];
        r.read_exact(&mut len).map_err(err)?;
        path.resize(u32::from_le_bytes(len) as usize, 0);
        r.read_exact(&mut path).map_err(err)?;
        let mut sec = [0u8; 8];
        let mut nsec = [0u8; 4];
        r.read_exact(&mut sec).map_err(err)?;
        r.read_exact(&mut nsec).map_err(err)?;
        let t = Time {
            sec: i64::from_le_bytes(sec),
            nsec: u32::from_le_bytes(nsec),
        };
        if path.is_empty() {
            fsops::set_times_at(root, b".", t).map_err(|e| Error::errno("layer root", e))?;
            continue;
        }
        let (parent, leaf) = split_leaf(&path);
        // Records come in tree order: siblings share the parent opened last.
        if cached.as_ref().is_none_or(|(p, _)| p.as_slice() != parent) {
            cached = open_existing_dir(root, parent)
                .ok()
                .map(|fd| (parent.to_vec(), fd));
        }
        let Some((_, dir)) = cached.as_ref() else {
            continue;
        };
        match fsops::lstat_at(dir.as_fd(), leaf) {
            Ok(Some(st)) if file_type(&st) == FileType::Directory => {
                fsops::set_times_at(dir.as_fd(), leaf, t)
                    .map_err(|e| Error::errno(format!("mtime of {}", show(&path)), e))?;
            }
            _ => {}
        }
    }
}

/// `12.3 MiB`-style sizes for progress lines (integer arithmetic: no
/// float formatting code in the binary).
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut u = 0;
    let mut div: u64 = 1;
    while n / div >= 1024 && u < UNITS.len() - 1 {
        div *= 1024;
        u += 1;
    }
    if u == 0 {
        return format!("{n} B");
    }
    let tenths = (n as u128 * 10 / div as u128) as u64;
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn human_sizes() {
        assert_eq!(human(12), "12 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(5 << 30), "5.0 GiB");
    }
}

#[cfg(test)]
mod platform_tests {
    use super::*;

    fn p(s: &str) -> Platform {
        crate::cli::parse_platform(s).unwrap()
    }

    #[test]
    fn config_platform_against_the_device() {
        let cfg = |os: &str, arch: &str, var: Option<&str>| {
            let v = var.map_or(String::new(), |v| format!(",\"variant\":\"{v}\""));
            format!("{{\"os\":\"{os}\",\"architecture\":\"{arch}\"{v}}}").into_bytes()
        };
        let ok = |c: &[u8], d: &str| check_platform(c, &p(d)).is_ok();
        assert!(ok(&cfg("linux", "amd64", None), "linux/amd64"));
        assert!(!ok(&cfg("linux", "amd64", None), "linux/arm64"));
        assert!(!ok(&cfg("windows", "amd64", None), "linux/amd64"));
        assert!(ok(&cfg("linux", "arm64", Some("v8")), "linux/arm64"));
        assert!(ok(&cfg("linux", "arm64", None), "linux/arm64/v8"));
        assert!(ok(&cfg("linux", "arm", Some("v7")), "linux/arm/v7"));
        assert!(!ok(&cfg("linux", "arm", Some("v6")), "linux/arm/v7"));
        // A config without a variant fits any variant of its architecture.
        assert!(ok(&cfg("linux", "arm", None), "linux/arm/v7"));
        assert!(!ok(b"{}", "linux/amd64"));
        let e = check_platform(&cfg("linux", "amd64", None), &p("linux/arm/v7")).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::NOT_FOUND);
        assert!(e.to_string().contains("linux/amd64") && e.to_string().contains("linux/arm/v7"));
    }
}
