//! Write a layer's tar back from its entry index and the object store.

use super::{layer_entries, layer_meta_in, IndexError};
use crate::store::objects::ObjectStore;
use crate::store::storage::Storage;
use crate::tar as tarfmt;
use layerlink_proto::Digest;
use redb::ReadableDatabase as _;
use std::io::{self, Read, Write};

/// Write the uncompressed tar of ingested layer `diff_id` to `w`, from the
/// index and the object store. For an unedited layer whose
/// [`super::LayerMeta::exact`] is true the bytes are those of the pushed tar
/// (same sha256 = diff_id). Returns the number of bytes written.
pub fn rebuild_layer_tar(
    storage: &Storage,
    diff_id: &Digest,
    w: impl Write,
) -> Result<u64, IndexError> {
    rebuild_layer_tar_with(storage.db(), &super::object_store(storage), diff_id, w)
}

/// [`rebuild_layer_tar`] on a database and object store.
pub fn rebuild_layer_tar_with(
    db: &redb::Database,
    objects: &ObjectStore,
    diff_id: &Digest,
    mut w: impl Write,
) -> Result<u64, IndexError> {
    let txn = db.begin_read()?;
    let meta = layer_meta_in(&txn, diff_id)?.ok_or(IndexError::UnknownLayer(*diff_id))?;
    let mut written = 0u64;
    let zeros = [0u8; tarfmt::BLOCK];
    for rec in layer_entries(&txn, diff_id)? {
        let rec = rec?;
        let header = rec.original_header();
        w.write_all(&header)?;
        written += header.len() as u64;
        if rec.size == 0 {
            continue;
        }
        let Some(obj) = rec.object else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "entry {:?} of layer {diff_id} has content but no object",
                    String::from_utf8_lossy(&rec.path)
                ),
            )
            .into());
        };
        let copied = io::copy(&mut objects.open(&obj)?.take(rec.size), &mut w)?;
        if copied != rec.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "object {obj} is shorter ({copied} bytes) than its entry ({} bytes)",
                    rec.size
                ),
            )
            .into());
        }
        let pad = tarfmt::padding(rec.size);
        w.write_all(&zeros[..pad])?;
        written += rec.size + pad as u64;
    }
    match &meta.trailer.data {
        Some(data) => w.write_all(data)?,
        None => {
            let mut left = meta.trailer.len;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                w.write_all(&zeros[..n])?;
                left -= n as u64;
            }
        }
    }
    written += meta.trailer.len;
    Ok(written)
}
