//! Layer framing ("tar-split", `proto/SPEC.md` "Layer framing"): a
//! layer's uncompressed tar without the contents of its regular files —
//! every header byte, each file's size, the trailer — from which
//! a device recomputes the layer's diff_id over the files it built.
//!
//! Nothing new is stored: the entry index already keeps each entry's
//! original header bytes ([`EntryRecord::original_header`]) and the object
//! of each content, and [`rebuild_layer_tar`](crate::store::index::rebuild_layer_tar)
//! reproduces the pushed tar byte for byte from them whenever
//! [`LayerMeta::exact`] is true. The framing is written from the same rows
//! in the same order, so its bytes plus the objects are that tar: layers
//! ingested before this module existed have a framing too. A layer whose
//! tar the index cannot reproduce (`exact` false: non-zero padding, a huge
//! trailer), or with content the device never stores (content in an entry
//! that is not a regular file), has none: [`FramingError::Unavailable`],
//! answered 404; the agent then warns or refuses, by its `verify_layers`
//! setting.

use crate::store::index::{layer_entries, layer_meta_in, EntryKind, IndexError};
use crate::store::objects::ObjectStore;
use crate::tar as tarfmt;
use layerlink_proto::archive::normalize_entry_path;
use layerlink_proto::framing::{self as fr, MAX_HEADER_BYTES, MAX_TRAILER_BYTES};
use layerlink_proto::limits::MAX_PAX_BYTES;
use layerlink_proto::Digest;
use redb::ReadableDatabase as _;
use std::collections::HashMap;
use std::io::{self, Read, Write};

/// Why a layer has no framing.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    /// The layer cannot be framed (see the module doc).
    #[error("layer {0} has no framing: {1}")]
    Unavailable(Digest, String),
    /// The index failed.
    #[error("{0}")]
    Index(#[from] IndexError),
    /// Reading an object or writing the output failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Write the (uncompressed) framing of layer `diff_id` to `w`.
pub fn write_framing(
    db: &redb::Database,
    objects: &ObjectStore,
    diff_id: &Digest,
    mut w: impl Write,
) -> Result<(), FramingError> {
    let unavailable = |why: String| FramingError::Unavailable(*diff_id, why);
    let txn = db.begin_read().map_err(|e| IndexError::Db(e.into()))?;
    let meta = layer_meta_in(&txn, diff_id)?.ok_or(IndexError::UnknownLayer(*diff_id))?;
    if !meta.exact {
        return Err(unavailable(
            "the index does not reproduce its tar byte for byte (non-zero padding or trailer)"
                .into(),
        ));
    }
    if meta.trailer.len > MAX_TRAILER_BYTES {
        return Err(unavailable(format!(
            "{}-byte trailer after the last entry",
            meta.trailer.len
        )));
    }
    // Which entries a later entry of the same path replaces: the last
    // occurrence of each normalised path.
    let mut last: HashMap<Vec<u8>, u32> = HashMap::new();
    for (i, rec) in layer_entries(&txn, diff_id)?.enumerate() {
        if let Ok(p) = normalize_entry_path(&rec?.path) {
            last.insert(p, i as u32);
        }
    }
    let mut out = Vec::with_capacity(64 * 1024);
    fr::write_start(&mut out, diff_id);
    // Header bytes of the entry being framed (global PAX headers, with
    // their data, go with the entry after them).
    let mut header: Vec<u8> = Vec::new();
    for (i, rec) in layer_entries(&txn, diff_id)?.enumerate() {
        let rec = rec?;
        header.extend_from_slice(&rec.original_header());
        if rec.kind == EntryKind::GlobalPax {
            if rec.size > MAX_PAX_BYTES {
                return Err(unavailable("a global PAX header above the limit".into()));
            }
            if rec.size > 0 {
                let obj = rec.object.ok_or_else(|| unavailable("no object".into()))?;
                let n = objects
                    .open(&obj)?
                    .take(rec.size)
                    .read_to_end(&mut header)?;
                if n as u64 != rec.size {
                    return Err(unavailable(format!("object {obj} is short")));
                }
                header.resize(header.len() + tarfmt::padding(rec.size), 0);
            }
            continue;
        }
        if header.len() as u64 > MAX_HEADER_BYTES {
            return Err(unavailable("an entry's headers above the limit".into()));
        }
        fr::write_header(&mut out, &header);
        header.clear();
        if rec.size > 0 {
            if rec.kind != EntryKind::File {
                return Err(unavailable(format!(
                    "entry {:?} of type {:?} carries content",
                    String::from_utf8_lossy(&rec.path),
                    rec.type_flag as char
                )));
            }
            let obj = rec
                .object
                .ok_or_else(|| unavailable("a file without its object".into()))?;
            let shadowed = normalize_entry_path(&rec.path)
                .ok()
                .and_then(|p| last.get(&p))
                .is_some_and(|&l| l > i as u32);
            fr::write_content(&mut out, rec.size, shadowed.then_some(&obj));
        }
        if out.len() >= 64 * 1024 {
            w.write_all(&out)?;
            out.clear();
        }
    }
    if !header.is_empty() {
        return Err(unavailable(
            "a global PAX header after the last entry".into(),
        ));
    }
    fr::write_end(&mut out, meta.trailer.len, meta.trailer.data.as_deref());
    w.write_all(&out)?;
    Ok(())
}

/// [`write_framing`] compressed as served (one zstd stream, the archive's
/// window bound), in memory.
pub fn framing_zstd(
    db: &redb::Database,
    objects: &ObjectStore,
    diff_id: &Digest,
) -> Result<Vec<u8>, FramingError> {
    let mut e = zstd::stream::Encoder::new(Vec::new(), 3)?;
    e.window_log(layerlink_proto::archive::ZSTD_MAX_WINDOW_LOG)?;
    e.include_checksum(false)?;
    write_framing(db, objects, diff_id, &mut e)?;
    Ok(e.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::testutil::TarBuilder;
    use crate::store::index::rebuild_layer_tar_with;
    use crate::sync::plan::{ImageStore, MemRegistry};
    use layerlink_proto::framing::{read_record, read_start, Record};
    use sha2::{Digest as _, Sha256};

    /// The layer tar from a framing plus the objects: what a device hashes.
    fn unsplit(framing: &[u8], objects: &ObjectStore, by_size: &HashMap<u64, Digest>) -> Vec<u8> {
        let mut it = framing.iter().copied();
        let mut byte = || it.next();
        read_start(&mut byte).unwrap();
        let mut tar = Vec::new();
        loop {
            match read_record(&mut byte).unwrap() {
                Record::Header { len } => {
                    for _ in 0..len {
                        tar.push(byte().unwrap());
                    }
                }
                Record::Content { size, shadowed } => {
                    // Each content is known by its size here (distinct
                    // sizes), a shadowed one by its digest.
                    let object = shadowed.unwrap_or_else(|| by_size[&size]);
                    let mut data = Vec::new();
                    objects
                        .open(&object)
                        .unwrap()
                        .read_to_end(&mut data)
                        .unwrap();
                    assert_eq!(data.len() as u64, size);
                    tar.extend_from_slice(&data);
                    tar.resize(tar.len() + tarfmt::padding(size), 0);
                }
                Record::End { len, data } => {
                    for _ in 0..len {
                        tar.push(if data { byte().unwrap() } else { 0 });
                    }
                    assert!(byte().is_none(), "bytes after the end record");
                    return tar;
                }
            }
        }
    }

    #[test]
    fn framing_plus_objects_is_the_layer_tar() {
        let r = MemRegistry::new();
        let long = "d/".repeat(80) + "long-name-file";
        let layer = TarBuilder::new()
            .dir("d")
            .file("d/a", b"first a")
            .file(&long, b"a file whose path needs PAX")
            .file("d/a", b"second a, shadowing the first")
            .link(tar::EntryType::Symlink, "d/s", "a")
            .file("empty", b"")
            .finish_ref();
        let (_, ids) = r.push("t/app", "v1", &[layer]);
        let d = ids[0];
        let objects = r.objects();
        let mut framing = Vec::new();
        write_framing(r.database(), &objects, &d, &mut framing).unwrap();
        let by_size: HashMap<u64, Digest> = [
            b"first a".as_slice(),
            b"a file whose path needs PAX",
            b"second a, shadowing the first",
        ]
        .iter()
        .map(|c| (c.len() as u64, Digest::of(c)))
        .collect();
        let tar = unsplit(&framing, &objects, &by_size);
        assert_eq!(Digest(Sha256::digest(&tar).into()), d);
        let mut rebuilt = Vec::new();
        rebuild_layer_tar_with(r.database(), &objects, &d, &mut rebuilt).unwrap();
        assert_eq!(tar, rebuilt);
        // The first d/a is shadowed, the second is not.
        let mut it = framing.iter().copied();
        let mut byte = || it.next();
        read_start(&mut byte).unwrap();
        let mut flags = Vec::new();
        loop {
            match read_record(&mut byte).unwrap() {
                Record::Header { len } => (0..len).for_each(|_| {
                    byte();
                }),
                Record::Content { shadowed, .. } => flags.push(shadowed.is_some()),
                Record::End { .. } => break,
            }
        }
        assert_eq!(flags, vec![true, false, false]);
        // Compressed form decompresses to the same bytes.
        let z = framing_zstd(r.database(), &objects, &d).unwrap();
        assert_eq!(zstd::decode_all(&z[..]).unwrap(), framing);
        assert!(z.len() < framing.len());
    }

    #[test]
    fn unknown_layer_is_an_error() {
        let r = MemRegistry::new();
        let e = write_framing(r.database(), &r.objects(), &Digest([1; 32]), Vec::new());
        assert!(matches!(
            e,
            Err(FramingError::Index(IndexError::UnknownLayer(_)))
        ));
    }
}
