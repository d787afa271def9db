//! In-place image editing: change a file inside layer *k*, delete layer *k*,
//! insert a layer at *k* — without stacking new layers on top.
//!
//! | module | concern |
//! |---|---|
//! | here | [`EditError`], the module map, [`edit_layout`] |
//! | `request` | what an edit is asked to do ([`EditRequest`], [`PutOp`], [`InsertOp`]), [`user_path`] |
//! | `plan` | the request checked before anything is read: paths, layer indexes, put and insert sources |
//! | `inspect` | the read-only passes over the image: refusals, parent directories, hard-link spooling, warnings |
//! | `layers` | the image's layers opened and checked against digest and diff_id; inserted layers built |
//! | `run` | the edit itself ([`edit_image`]): resolve, check, build, rewrite config and manifest, commit |
//! | `report` | [`Warning`], [`LayerReport`], [`EditOutcome`] |
//! | `backend` | the [`Backend`] trait, [`Commit`], [`NewDoc`], reading small verified blobs |
//! | [`tar`] | the entries an edit writes (read with [`crate::tar::TarReader`]) and the layer path rule |
//! | [`tar_rewrite`] | the streaming layer rewrite (put / remove) |
//! | [`stream`] | decompress + hash, compress + hash, temp files |
//! | [`scan`] | read-only passes: merged view, shadowing, dangling pointers |
//! | [`image`] | manifest / index / config rewrite (history, edited layer descriptors), `--platform` |
//! | [`layout`] | backend: an OCI image-layout directory (offline) |
//! | [`registry`] | backend: the registry's store |
//! | [`crate::http::edit`] | `POST /layerlink/v1/edit` (in the HTTP layer) |
//! | [`cli`] | `layerlink-registry edit …` |
//!
//! **What an edit does.** Layer indexes are 0-based from the base and
//! always refer to the image as it was. The edited layer is rebuilt by
//! streaming its original blob through [`tar_rewrite::rewrite`] into a new
//! blob compressed like the original (gzip, zstd or none), hashing both
//! sides on the fly; every other layer blob stays byte-identical. The
//! config's `rootfs.diff_ids` and `history` follow the layer list (history
//! entries with `empty_layer: true` are not layers and stay where they
//! are; an edited layer's `created_by` gets `; layerlink edit: …`; an
//! inserted layer gets its own entry). A new config and manifest (same
//! media types as before) are written and tagged; an image index is
//! edited through one platform's manifest and rewritten with that entry
//! replaced.
//!
//! **Semantics.** In one edit, removals apply before puts. A put replaces
//! the entry at its path in place (same position in the tar) or appends
//! one; it creates parent directories (0755, root) only where no layer up
//! to *k* has them. A removal drops the path and everything under it from
//! layer *k* without writing a whiteout, so lower layers' content there
//! shows through. Hard links of layer *k* to a replaced file follow it; a
//! link to a removed file keeps the content (the first link becomes the
//! file). Every layer is read with its digest and diff_id verified.
//!
//! **Checks before anything is written** (errors, nothing changed): layer
//! indexes in range; paths root-relative without `..`, not `.wh.` names;
//! sources exist; an index needs `--platform`; a removed path must exist
//! in the layer; a put may not replace a directory or go through a
//! non-directory parent; stored blobs match their digests. The layout's
//! `index.json` or the registry's tag changes only at the very end,
//! atomically, and not if the tag moved meanwhile ([`EditError::Conflict`]).
//!
//! **Warnings** (printed by the CLI, returned in [`EditOutcome`]): an
//! upper layer overwrites or whites out an edited path; a removed path is
//! still provided by a lower layer; after a delete or removal an upper
//! whiteout or hard link points at nothing; the edited layer's blob is
//! used by other images (they keep the old blob).
//!
//! **Not done:** extended attributes of an inserted *directory* are not
//! read (a tar keeps them); old blobs are never deleted (garbage
//! collection is the store's business: `umoci gc` for a layout).

mod backend;
pub mod cli;
pub mod image;
mod inspect;
mod layers;
pub mod layout;
mod plan;
pub mod registry;
mod report;
mod request;
mod run;
pub mod scan;
pub mod stream;
pub mod tar;
pub mod tar_rewrite;
mod walk;

pub(crate) use backend::{layer_digests, read_small_blob, read_verified};
pub use backend::{Backend, Commit, NewDoc, Resolved};
pub use cli::{cli_main, EditArgs};
pub use image::Platform;
pub use layout::Layout;
pub use registry::RegistryImage;
pub use report::{EditOutcome, LayerReport, Warning};
pub use request::{user_path, EditRequest, InsertOp, InsertSource, PutOp, PutSource};
pub use run::edit_image;
pub use scan::ShadowHow;
pub use stream::{NewBlob, Scratch};

use std::path::Path;

/// Why an edit was refused or failed. On every error nothing visible
/// changed (no tag moved; at worst unreferenced blobs were written).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    /// The request is wrong (bad index, bad path, missing source, …).
    #[error("{0}")]
    Invalid(String),
    /// The image, a blob or a path does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Stored data does not match its digest, or is not what it claims.
    #[error("{0}")]
    Corrupt(String),
    /// The tag moved to another image while the edit ran; nothing was
    /// tagged (retry on the new image).
    #[error("{0}")]
    Conflict(String),
    /// Anything else (I/O, database).
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<std::io::Error> for EditError {
    fn from(e: std::io::Error) -> EditError {
        EditError::Other(e.into())
    }
}

/// Edit an image in the OCI image layout at `dir` (`reference`: a
/// `org.opencontainers.image.ref.name` or a `sha256:` digest).
pub fn edit_layout(
    dir: &Path,
    reference: &str,
    req: &EditRequest,
) -> Result<EditOutcome, EditError> {
    edit_image(&Layout::open(dir)?, reference, req)
}
