//! The dedup archive writer (format: `proto/SPEC.md`, "Dedup archive").
//!
//! A gzip'd tar with ustar headers; a PAX header only where an entry needs
//! one (long path or link name, size ≥ 8 GiB, large ids, xattrs, a
//! fractional mtime, `LAYERLINK.*` keys). A reference entry costs one
//! 512-byte header. Every entry streams from the index and the object store:
//! memory does not grow with the archive.

pub mod base;
pub mod cold;
pub mod zstd;

use crate::store::index::{self, EntryKind, EntryRecord, IndexError};
use crate::store::objects::ObjectStore;
use crate::sync::delta::{DeltaPlanner, Patch, PatchFormat};
use crate::sync::plan::{Dedup, HeldObjects};
use crate::tar::{self as tarfmt, Fields};
use base::BaseDiff;
use layerlink_proto::archive::{
    reference_link, Marker, FEATURE_COMPACT_META, FEATURE_FILE_DELTA, FEATURE_FILE_DELTA2,
    FEATURE_LAYER_BASE, FEATURE_ZSTD, MARKER_DIR, PAX_BASE_ORDER, PAX_DELTA_BASE, PAX_DELTA_SIZE,
    PAX_DIFF_ID, PAX_DIGEST, PAX_ENTRIES, PAX_MARKER, PAX_META, PAX_META_SIZE,
};
use layerlink_proto::msg::HeldSet;
use layerlink_proto::Digest;
use redb::ReadableDatabase as _;
use std::io::{self, Read, Write};
pub use zstd::{FrameWriter, TarOut};

/// gzip level of archives (a balance for small CPUs on both ends).
pub const GZIP_LEVEL: u32 = 6;

/// The header fields of a marker entry (`MARKER_DIR/<kind>`): a regular
/// file of `size` bytes, 0644, owned by root, mtime 0.
fn marker_fields(path: &[u8], size: u64) -> Fields<'_> {
    Fields::file(path, size)
}

/// Writes dedup archive entries (uncompressed tar) to `out`.
pub struct ArchiveWriter<W: TarOut> {
    out: W,
    objects: ObjectStore,
    header: Vec<u8>,
    pax: Vec<u8>,
    buf: Vec<u8>,
    new_bytes: u64,
    /// Binary deltas for modified files (feature `file-delta`).
    pub deltas: Option<DeltaPlanner>,
    /// Send compact metadata records in base markers (feature
    /// `compact-meta`).
    pub compact_meta: bool,
    /// Compact records written so far, and their bytes (uncompressed).
    pub compact_stats: (u64, u64),
}

impl<W: TarOut> ArchiveWriter<W> {
    /// A writer into `out` (already compressing, or not) reading content
    /// from `objects`.
    pub fn new(out: W, objects: ObjectStore) -> ArchiveWriter<W> {
        ArchiveWriter {
            out,
            objects,
            header: Vec::with_capacity(2048),
            pax: Vec::with_capacity(512),
            buf: vec![0u8; 64 * 1024],
            new_bytes: 0,
            deltas: None,
            compact_meta: false,
            compact_stats: (0, 0),
        }
    }

    /// Bytes of new file and object content written so far.
    pub fn new_bytes(&self) -> u64 {
        self.new_bytes
    }

    /// Write a marker entry with `content` and PAX `LAYERLINK.marker` plus
    /// `extra` records.
    pub fn marker(
        &mut self,
        kind: Marker,
        extra: &[(&str, &[u8])],
        content: &[u8],
    ) -> io::Result<()> {
        self.pax.clear();
        tarfmt::pax_record(
            &mut self.pax,
            PAX_MARKER.as_bytes(),
            kind.as_str().as_bytes(),
        );
        for (k, v) in extra {
            tarfmt::pax_record(&mut self.pax, k.as_bytes(), v);
        }
        let path = format!("{MARKER_DIR}/{}", kind.as_str());
        let f = marker_fields(path.as_bytes(), content.len() as u64);
        self.header.clear();
        tarfmt::entry_header(&mut self.header, &f, &self.pax);
        self.out.write_all(&self.header)?;
        self.out.write_all(content)?;
        self.pad(content.len() as u64)
    }

    /// The zeros that pad `len` bytes of content to a tar block.
    fn pad(&mut self, len: u64) -> io::Result<()> {
        self.out
            .write_all(&[0u8; tarfmt::BLOCK][..tarfmt::padding(len)])
    }

    /// Copy exactly `size` bytes of `r` (`what`, for the error) to the tar.
    fn copy_exact(&mut self, r: impl Read, size: u64, what: &dyn Fn() -> String) -> io::Result<()> {
        let mut r = r.take(size);
        let mut left = size;
        while left > 0 {
            let n = r.read(&mut self.buf)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} is shorter than {size} bytes", what()),
                ));
            }
            self.out.write_all(&self.buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Copy `size` bytes of object `d` from the store (or splice its
    /// cached frame), then the padding.
    fn content(&mut self, d: &Digest, size: u64) -> io::Result<()> {
        if size == 0 || !self.out.content(&self.objects, d, size)? {
            let r = self.objects.open(d)?;
            self.copy_exact(r, size, &|| format!("object {d}"))?;
        }
        self.pad(size)
    }

    /// Write patch `p`'s raw bytes (or splice its cached frame), then the
    /// padding.
    fn patch(&mut self, p: &Patch) -> io::Result<()> {
        if !self.out.patch(p)? {
            let r = p.reader()?;
            self.copy_exact(r, p.len, &|| format!("cached delta {}", p.file.display()))?;
        }
        self.pad(p.len)
    }

    /// Write one layer entry. Returns whether an entry was written (global
    /// PAX headers are not sent).
    pub fn entry(&mut self, rec: &EntryRecord, dedup: &mut Dedup<'_>) -> Result<bool, IndexError> {
        if !rec.kind.is_sent() {
            return Ok(false);
        }
        self.pax.clear();
        let reference_name;
        let mut new_object = None;
        let mut patch: Option<Patch> = None;
        let (type_flag, size, link, inline): (u8, u64, &[u8], Option<Digest>) = match rec.kind {
            EntryKind::File => match rec.object {
                None => (b'0', 0, b"", None),
                Some(d) if dedup.is_reference(&d)? => {
                    reference_name = reference_link(&d);
                    (b'1', 0, &reference_name[..], None)
                }
                Some(d) => {
                    tarfmt::pax_record(&mut self.pax, PAX_DIGEST.as_bytes(), &d.hex_bytes());
                    new_object = Some(d);
                    patch =
                        (self.deltas.as_mut()).and_then(|p| p.patch_for(&rec.path, &d, rec.size));
                    match &patch {
                        Some(p) => {
                            let (b, n) = (p.base.hex_bytes(), rec.size.to_string());
                            tarfmt::pax_record(&mut self.pax, PAX_DELTA_BASE.as_bytes(), &b);
                            tarfmt::pax_record(
                                &mut self.pax,
                                PAX_DELTA_SIZE.as_bytes(),
                                n.as_bytes(),
                            );
                            (b'0', p.len, b"", None)
                        }
                        None => (b'0', rec.size, b"", Some(d)),
                    }
                }
            },
            // Anything else carries its own data (if any) inline.
            _ => (rec.type_flag, rec.size, &rec.link[..], rec.object),
        };
        self.needed_pax(rec, link, size);
        let f = Fields {
            path: &rec.path,
            type_flag,
            mode: rec.mode,
            uid: rec.uid,
            gid: rec.gid,
            size,
            mtime: rec.mtime.min(tarfmt::MAX_OCTAL_11),
            link,
            uname: &rec.uname,
            gname: &rec.gname,
            dev_major: rec.dev_major,
            dev_minor: rec.dev_minor,
        };
        self.header.clear();
        tarfmt::entry_header(&mut self.header, &f, &self.pax);
        self.out.write_all(&self.header)?;
        if let Some(d) = inline {
            self.content(&d, size)?;
        }
        if let Some(p) = &patch {
            self.patch(p)?;
        }
        if new_object.is_some() {
            self.new_bytes += size;
        }
        self.out.entry_end()?;
        Ok(true)
    }

    /// PAX records an entry needs besides `LAYERLINK.digest`.
    fn needed_pax(&mut self, rec: &EntryRecord, link: &[u8], size: u64) {
        let p = &mut self.pax;
        if !tarfmt::path_fits_ustar(&rec.path) {
            tarfmt::pax_record(p, b"path", &rec.path);
        }
        if link.len() > 100 {
            tarfmt::pax_record(p, b"linkpath", link);
        }
        if size > tarfmt::MAX_OCTAL_11 {
            tarfmt::pax_record(p, b"size", size.to_string().as_bytes());
        }
        if rec.uid > tarfmt::MAX_OCTAL_7 {
            tarfmt::pax_record(p, b"uid", rec.uid.to_string().as_bytes());
        }
        if rec.gid > tarfmt::MAX_OCTAL_7 {
            tarfmt::pax_record(p, b"gid", rec.gid.to_string().as_bytes());
        }
        if rec.uname.len() > 32 {
            tarfmt::pax_record(p, b"uname", &rec.uname);
        }
        if rec.gname.len() > 32 {
            tarfmt::pax_record(p, b"gname", &rec.gname);
        }
        let mut mtime_done = false;
        if rec.mtime > tarfmt::MAX_OCTAL_11 {
            tarfmt::pax_record(p, b"mtime", rec.mtime.to_string().as_bytes());
            mtime_done = true;
        }
        for (k, v) in &rec.pax {
            if k.starts_with(b"SCHILY.xattr.") {
                tarfmt::pax_record(p, k, v);
            } else if k == b"mtime" && !mtime_done && v.contains(&b'.') {
                tarfmt::pax_record(p, k, v);
                mtime_done = true;
            }
        }
    }

    /// Write one layer section: marker, entries, layer-end marker. Returns
    /// the entry count.
    pub fn layer(
        &mut self,
        txn: &redb::ReadTransaction,
        diff_id: &Digest,
        dedup: &mut Dedup<'_>,
    ) -> Result<u32, IndexError> {
        self.layer_on(txn, diff_id, None, dedup)
    }

    /// [`ArchiveWriter::layer`], on a held base layer when `base` is given
    /// (a base marker, then only the entries that differ). Returns the
    /// number of entries in the section.
    pub fn layer_on(
        &mut self,
        txn: &redb::ReadTransaction,
        diff_id: &Digest,
        base: Option<&BaseDiff>,
        dedup: &mut Dedup<'_>,
    ) -> Result<u32, IndexError> {
        let meta = index::layer_meta_in(txn, diff_id)?.ok_or(IndexError::UnknownLayer(*diff_id))?;
        let id = diff_id.to_string();
        self.marker(Marker::Layer, &[(PAX_DIFF_ID, id.as_bytes())], b"")?;
        let compact = self.compact_meta && base.is_some_and(|b| b.compact_count > 0);
        if let Some(b) = base {
            let base_id = b.base.to_string();
            let count = b.removed.len().to_string();
            let mut extra = vec![
                (PAX_DIFF_ID, base_id.as_bytes()),
                (PAX_ENTRIES, count.as_bytes()),
            ];
            let (records, size, order) = (
                b.compact_count.to_string(),
                b.compact.len().to_string(),
                b.base_order.hex(),
            );
            let mut content = Vec::new();
            if compact {
                extra.push((PAX_META, records.as_bytes()));
                extra.push((PAX_META_SIZE, size.as_bytes()));
                extra.push((PAX_BASE_ORDER, order.as_bytes()));
                content.extend_from_slice(&b.compact);
                self.compact_stats.0 += u64::from(b.compact_count);
                self.compact_stats.1 += b.compact.len() as u64;
            }
            content.extend_from_slice(&b.removed_list());
            self.marker(Marker::Base, &extra, &content)?;
        }
        let (mut n, mut sent) = (0u32, 0u32);
        for (i, rec) in index::layer_entries(txn, diff_id)?.enumerate() {
            let rec = rec?;
            if base.is_some_and(|b| b.is_same(i) || (compact && b.is_meta_only(i))) {
                n += 1;
                continue;
            }
            if self.entry(&rec, dedup)? {
                n += 1;
                sent += 1;
            }
        }
        if n != meta.entries {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "layer {diff_id}: index has {n} entries, meta says {}",
                    meta.entries
                ),
            )
            .into());
        }
        let count = sent.to_string();
        self.marker(
            Marker::LayerEnd,
            &[
                (PAX_DIFF_ID, id.as_bytes()),
                (PAX_ENTRIES, count.as_bytes()),
            ],
            b"",
        )?;
        Ok(sent)
    }

    /// Write an object marker carrying object `d` (`size` bytes).
    pub fn object(&mut self, d: &Digest, size: u64) -> io::Result<()> {
        self.pax.clear();
        tarfmt::pax_record(
            &mut self.pax,
            PAX_MARKER.as_bytes(),
            Marker::Object.as_str().as_bytes(),
        );
        tarfmt::pax_record(&mut self.pax, PAX_DIGEST.as_bytes(), &d.hex_bytes());
        let path = format!("{MARKER_DIR}/{}", Marker::Object.as_str());
        let f = marker_fields(path.as_bytes(), size);
        self.header.clear();
        tarfmt::entry_header(&mut self.header, &f, &self.pax);
        self.out.write_all(&self.header)?;
        self.content(d, size)?;
        self.new_bytes += size;
        Ok(())
    }

    /// Write the end marker and the tar end-of-archive blocks; return `out`.
    pub fn finish(mut self) -> io::Result<W> {
        self.marker(Marker::End, &[], b"")?;
        self.out.write_all(&[0u8; 2 * tarfmt::BLOCK])?;
        Ok(self.out)
    }
}

/// The manifest and config JSON for the optional marker entries.
#[derive(Debug, Clone, Copy)]
pub struct Metadata<'a> {
    /// Platform manifest bytes.
    pub manifest: &'a [u8],
    /// Config bytes.
    pub config: &'a [u8],
}

/// Optional archive features a device asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// `layer-base`: send layers on held layers they resemble.
    pub layer_base: bool,
    /// `zstd`: answer with a zstd archive (spliced content frames).
    pub zstd: bool,
    /// `file-delta` / `file-delta2`: send modified files as patches against
    /// held ones, in this format (format 2 when both are listed).
    pub file_delta: Option<PatchFormat>,
    /// `compact-meta`: entries that differ from the base's only in mtime,
    /// mode or owner travel as compact records (with `layer-base`).
    pub compact_meta: bool,
}

impl Features {
    /// The archive encoding these features ask for.
    pub fn encoding(self) -> layerlink_proto::archive::Encoding {
        if self.zstd {
            layerlink_proto::archive::Encoding::Zstd
        } else {
            layerlink_proto::archive::Encoding::Gzip
        }
    }

    /// Parse the `layerlink-features` request header value (unknown names
    /// are ignored).
    pub fn parse(v: &str) -> Features {
        let mut f = Features::default();
        for name in v.split(',').map(str::trim) {
            if name == FEATURE_LAYER_BASE {
                f.layer_base = true;
            } else if name == FEATURE_ZSTD {
                f.zstd = true;
            } else if name == FEATURE_FILE_DELTA {
                f.file_delta = f.file_delta.or(Some(PatchFormat::Bidiff));
            } else if name == FEATURE_FILE_DELTA2 {
                f.file_delta = Some(PatchFormat::Blocks);
            } else if name == FEATURE_COMPACT_META {
                f.compact_meta = true;
            }
        }
        f
    }
}

/// Write the gzip'd dedup archive of `layers` (diff_ids, in order) for a
/// device holding `held` into `out`; returns `out` after the gzip trailer
/// (or the last zstd frame, with feature `zstd`).
pub fn write_image_archive<W: Write>(
    db: &redb::Database,
    objects: &ObjectStore,
    metadata: Option<Metadata<'_>>,
    layers: &[Digest],
    held: &HeldSet,
    out: W,
) -> Result<W, IndexError> {
    write_image_archive_with(
        db,
        objects,
        metadata,
        layers,
        held,
        Features::default(),
        out,
    )
}

/// [`write_image_archive`] with the optional `features` the device asked
/// for.
pub fn write_image_archive_with<W: Write>(
    db: &redb::Database,
    objects: &ObjectStore,
    metadata: Option<Metadata<'_>>,
    layers: &[Digest],
    held: &HeldSet,
    features: Features,
    out: W,
) -> Result<W, IndexError> {
    if features.zstd && held.layers.is_empty() && held.objects.is_empty() {
        // A device that holds nothing gets the cached cold archive when the
        // push's background preparation made it (`cold.rs`).
        let key = cold::key(metadata.as_ref(), layers);
        if let Some((f, len)) = cold::open(objects, &key)? {
            let mut out = out;
            io::copy(&mut f.take(len), &mut out)?;
            tracing::info!(bytes = len, "archive served from the cold archive cache");
            return Ok(out);
        }
    }
    let txn = db.begin_read()?;
    let mut lookups = 0u64;
    for d in layers {
        if let Some(m) = index::layer_meta_in(&txn, d)? {
            lookups += u64::from(m.regular_files);
        }
    }
    let held_objects = HeldObjects::load(&txn, held, lookups)?;
    let mut dedup = Dedup::new(&held_objects);
    if features.zstd {
        let mut w = ArchiveWriter::new(FrameWriter::new(out)?, objects.clone());
        image_body(&mut w, &txn, metadata, layers, held, features, &mut dedup)?;
        return Ok(w.finish()?.finish()?);
    }
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::new(GZIP_LEVEL));
    let mut w = ArchiveWriter::new(gz, objects.clone());
    image_body(&mut w, &txn, metadata, layers, held, features, &mut dedup)?;
    Ok(w.finish()?.finish()?)
}

fn image_body<T: TarOut>(
    w: &mut ArchiveWriter<T>,
    txn: &redb::ReadTransaction,
    metadata: Option<Metadata<'_>>,
    layers: &[Digest],
    held: &HeldSet,
    features: Features,
    dedup: &mut Dedup<'_>,
) -> Result<(), IndexError> {
    if let Some(format) = features.file_delta {
        let objects = w.objects.clone();
        w.deltas = Some(DeltaPlanner::new(txn, &objects, &held.layers, format)?);
    }
    w.compact_meta = features.layer_base && features.compact_meta;
    if let Some(m) = metadata {
        w.marker(Marker::Manifest, &[], m.manifest)?;
        w.marker(Marker::Config, &[], m.config)?;
    }
    for d in layers {
        let base = if features.layer_base {
            base::choose_base(txn, d, &held.layers, w.compact_meta)?
        } else {
            None
        };
        if let Some(p) = w.deltas.as_mut() {
            p.begin_layer(txn, base.as_ref().map(|b| &b.base))?;
        }
        w.layer_on(txn, d, base.as_deref(), dedup)?;
    }
    if w.compact_stats.0 > 0 {
        tracing::info!(
            records = w.compact_stats.0,
            bytes = w.compact_stats.1,
            "archive compact metadata"
        );
    }
    if let Some(s) = w.deltas.as_ref().map(|p| p.stats) {
        tracing::info!(
            sent = s.sent,
            patch_bytes = s.patch_bytes,
            new_bytes = s.new_bytes,
            computed = s.computed,
            whole = s.whole,
            compute_ms = s.compute_time.as_millis() as u64,
            "archive deltas"
        );
    }
    Ok(())
}

/// Write the gzip'd objects archive (repair): one object marker per
/// `(digest, size)`, then the end marker.
pub fn write_objects_archive<W: Write>(
    objects: &ObjectStore,
    wanted: &[(Digest, u64)],
    out: W,
) -> io::Result<W> {
    write_objects_archive_with(objects, wanted, Features::default(), out)
}

/// [`write_objects_archive`] in the encoding `features` asks for.
pub fn write_objects_archive_with<W: Write>(
    objects: &ObjectStore,
    wanted: &[(Digest, u64)],
    features: Features,
    out: W,
) -> io::Result<W> {
    fn body<T: TarOut>(mut w: ArchiveWriter<T>, wanted: &[(Digest, u64)]) -> io::Result<T> {
        for (d, size) in wanted {
            w.object(d, *size)?;
        }
        w.finish()
    }
    if features.zstd {
        let w = ArchiveWriter::new(FrameWriter::new(out)?, objects.clone());
        return body(w, wanted)?.finish();
    }
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::new(GZIP_LEVEL));
    body(ArchiveWriter::new(gz, objects.clone()), wanted)?.finish()
}

#[cfg(test)]
mod tests;
