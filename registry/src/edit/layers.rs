//! The layers of an edit: the image's layers opened and checked against
//! their digest and diff_id, and inserted layers built.

use super::request::{InsertOp, InsertSource};
use super::stream::{self, LayerReader, LayerWriter, NewBlob, Scratch};
use super::tar::{self, TarReader};
use super::tar_rewrite::{self, ChangeSet};
use super::walk;
use super::{Backend, EditError, Warning};
use crate::compression::Compression;
use crate::oci::Descriptor;
use anyhow::Context;
use layerlink_proto::Digest;

/// Open layer `i`'s blob.
pub(super) fn open_layer(
    backend: &dyn Backend,
    i: usize,
    d: &Descriptor,
) -> Result<LayerReader, EditError> {
    let path = backend.blob_path(&d.digest)?.ok_or_else(|| {
        EditError::NotFound(format!(
            "blob {} of layer {i} is not in {}",
            d.digest,
            backend.describe()
        ))
    })?;
    Ok(LayerReader::open(&path).with_context(|| format!("opening layer {i} ({})", d.digest))?)
}

/// Check what a finished read of layer `i` hashed to.
pub(super) fn verify_layer(
    i: usize,
    d: &Descriptor,
    diff_id: &Digest,
    got: stream::LayerDigests,
) -> Result<(), EditError> {
    if got.blob != d.digest || got.blob_size != d.size {
        return Err(EditError::Corrupt(format!(
            "blob of layer {i} is corrupt: expected {} ({} bytes), read {} ({} bytes)",
            d.digest, d.size, got.blob, got.blob_size
        )));
    }
    if got.diff_id != *diff_id {
        return Err(EditError::Corrupt(format!(
            "layer {i} ({}) does not match the config's diff_id {diff_id} (its tar hashes to {})",
            d.digest, got.diff_id
        )));
    }
    Ok(())
}

pub(super) fn corrupt(i: usize, d: &Descriptor) -> impl FnOnce(anyhow::Error) -> EditError + '_ {
    move |e| EditError::Corrupt(format!("reading layer {i} ({}): {e:#}", d.digest))
}

/// Build an inserted layer into a scratch file.
pub(super) fn build_insert(
    backend: &dyn Backend,
    scratch: &Scratch,
    op: &InsertOp,
    warnings: &mut Vec<Warning>,
) -> Result<NewBlob, EditError> {
    let mut w = LayerWriter::create(scratch.file("insert"), Compression::Gzip)?;
    match &op.source {
        InsertSource::Dir(dir) => {
            walk::write_dir(dir, &mut w, warnings)?;
            tar::write_end(&mut w)?;
        }
        InsertSource::Tar(path) => {
            let r =
                LayerReader::open(path).with_context(|| format!("opening {}", path.display()))?;
            let mut tr = TarReader::new(r);
            tar_rewrite::rewrite(&mut tr, &mut w, &ChangeSet::default(), None, true).map_err(
                |e| EditError::Invalid(format!("--insert-layer tar {}: {e:#}", path.display())),
            )?;
        }
        InsertSource::Blob(d) => {
            let path = backend.blob_path(d)?.ok_or_else(|| {
                EditError::NotFound(format!("blob {d} is not in {}", backend.describe()))
            })?;
            let mut tr = TarReader::new(LayerReader::open(&path)?);
            tar_rewrite::rewrite(&mut tr, &mut w, &ChangeSet::default(), None, true)
                .map_err(|e| EditError::Invalid(format!("--insert-layer blob {d}: {e:#}")))?;
        }
    }
    Ok(w.finish()?)
}
