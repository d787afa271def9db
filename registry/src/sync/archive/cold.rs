//! Cached cold archives: the whole zstd archive of an image for a device
//! that holds nothing, made once per push in the background
//! (`sync::precompute`) and served as a file copy.
//!
//! Why: a spliced archive compresses each object on its own (one frame per
//! object, so every device can get any subset), which loses what
//! neighbouring files share. For a device that holds nothing the archive
//! is the same for every device, so it can be compressed as one stream.
//! Measured on base-a:v1 (163.8 MiB of tar, `skopeo copy` moves 60.22 MiB of
//! gzip layers): spliced per-object frames 51.79 MiB (0.86×); the tar
//! stream at zstd -19 with the same 256 KiB window, 47.0 MiB (0.78×).
//!
//! What is cached is exactly what [`super::write_image_archive_with`]
//! writes for an empty holdings set — the same code writes it, into
//! [`FrameWriter::whole`] frames of at most [`BATCH`] bytes of tar at
//! the frame level (19 unless configured) and the archive window limit — so the decompressed stream is
//! byte for byte the one a device would get without the cache (a test
//! checks it). With no holdings, no feature changes the tar stream
//! (`layer-base` and `file-delta` need held layers), so one file serves every
//! zstd request. Key: sha256 of [`FORMAT`], the manifest and config bytes
//! (when the request asks for them) and the requested layers in order.
//! Everything in the key is immutable (content-addressed), so an entry
//! never goes stale. File: the frames, then the 12-byte trailer of the
//! frame cache (`zstd.rs`); written to a temporary name and renamed; a file
//! whose trailer does not match is ignored.

use super::zstd::{check_trailer, FrameWriter, TRAILER_MAGIC};
use super::{image_body, ArchiveWriter, Features, Metadata};
use crate::store::objects::ObjectStore;
use crate::sync::frame::frame_level;
use crate::sync::frame::Counted;
use crate::sync::plan::{Dedup, HeldObjects};
use layerlink_proto::archive::ZSTD_MAX_WINDOW_LOG;
use layerlink_proto::msg::HeldSet;
use layerlink_proto::Digest;
use redb::ReadableDatabase as _;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// Version of the cached layout (in the key and the directory name).
pub const FORMAT: u32 = 1;
/// Most tar bytes per frame (a frame restarts the window: 4 MiB frames cost
/// ~0.1 % over one frame, and keep the writer's buffer bounded).
pub const BATCH: usize = 4 << 20;

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The cache key of an archive of `layers` (with the metadata markers when
/// `metadata` is given).
pub fn key(metadata: Option<&Metadata<'_>>, layers: &[Digest]) -> Digest {
    let mut k = Vec::with_capacity(16 + 65 + 32 * layers.len());
    k.extend_from_slice(b"layerlink cold archive\0");
    k.extend_from_slice(&FORMAT.to_le_bytes());
    match metadata {
        Some(m) => {
            k.push(1);
            k.extend_from_slice(&Digest::of(m.manifest).0);
            k.extend_from_slice(&Digest::of(m.config).0);
        }
        None => k.push(0),
    }
    for l in layers {
        k.extend_from_slice(&l.0);
    }
    Digest::of(&k)
}

/// Where the cold archive with `key` lives.
pub fn path(objects: &ObjectStore, key: &Digest) -> PathBuf {
    let hex = key.hex();
    objects
        .root()
        .join(format!(".cold-w{ZSTD_MAX_WINDOW_LOG}-v{FORMAT}"))
        .join(&hex[..2])
        .join(format!("{hex}.zst"))
}

/// The cached archive with `key` (file at offset 0, length of its frames),
/// if there is an intact one.
pub fn open(objects: &ObjectStore, key: &Digest) -> io::Result<Option<(File, u64)>> {
    let mut f = match File::open(path(objects, key)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(check_trailer(&mut f)?.map(|len| (f, len)))
}

/// Make the cold archive of `layers` (with `metadata`) unless it is cached;
/// returns its compressed length and whether it was made now.
pub fn make(
    db: &redb::Database,
    objects: &ObjectStore,
    metadata: Option<Metadata<'_>>,
    layers: &[Digest],
) -> io::Result<(u64, bool)> {
    let key = key(metadata.as_ref(), layers);
    if let Some((_, len)) = open(objects, &key)? {
        return Ok((len, false));
    }
    let path = path(objects, &key);
    let dir = path.parent().expect("cold archive path has a parent");
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut counted = Counted {
            inner: io::BufWriter::with_capacity(64 * 1024, File::create(&tmp)?),
            n: 0,
        };
        {
            let txn = db.begin_read().map_err(io::Error::other)?;
            let held = HeldSet::default();
            let held_objects = HeldObjects::load(&txn, &held, 0).map_err(io::Error::other)?;
            let mut dedup = Dedup::new(&held_objects);
            let mut w = ArchiveWriter::new(
                FrameWriter::whole(&mut counted, frame_level(), BATCH)?,
                objects.clone(),
            );
            let features = Features {
                zstd: true,
                ..Features::default()
            };
            image_body(&mut w, &txn, metadata, layers, &held, features, &mut dedup)
                .map_err(io::Error::other)?;
            w.finish()?.finish()?;
        }
        let len = counted.n;
        counted.inner.write_all(&len.to_le_bytes())?;
        counted.inner.write_all(TRAILER_MAGIC)?;
        let f = counted.inner.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        Ok(len)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|len| (len, true))
}
