//! What an edit is asked to do: the request, its operations, and the
//! rule user paths follow.

use super::tar::normalize_layer_path;
use super::EditError;
use layerlink_proto::Digest;
use std::fmt;
use std::path::PathBuf;

/// Where a put's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutSource {
    /// A local file; its mode, owner and mtime are the defaults.
    File(PathBuf),
    /// A blob already in the store, as raw bytes (mode 0644, root, now).
    Blob(Digest),
}

/// Write one file into the edited layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOp {
    /// Path in the image, e.g. `/etc/motd`.
    pub dest: String,
    /// Content.
    pub source: PutSource,
    /// Mode override (permission bits).
    pub mode: Option<u32>,
    /// Owner override.
    pub uid: Option<u64>,
    /// Group override.
    pub gid: Option<u64>,
    /// Modification time override (seconds since the epoch).
    pub mtime: Option<u64>,
}

/// What an inserted layer is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertSource {
    /// A directory tree.
    Dir(PathBuf),
    /// A tar file (plain, gzip or zstd).
    Tar(PathBuf),
    /// A tar blob already in the store.
    Blob(Digest),
}

impl fmt::Display for InsertSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InsertSource::Dir(p) => write!(f, "dir {}", p.display()),
            InsertSource::Tar(p) => write!(f, "tar {}", p.display()),
            InsertSource::Blob(d) => write!(f, "blob {d}"),
        }
    }
}

/// Insert a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertOp {
    /// Position: the layer that was at `at` now sits on the new one;
    /// `at` = layer count puts it on top.
    pub at: usize,
    /// What it is made from.
    pub source: InsertSource,
}

/// Everything one edit does. Layer indexes refer to the original image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EditRequest {
    /// Tag for the result; default: the tag the image was found by.
    pub tag: Option<String>,
    /// For an image index: which platform's manifest to edit (`os/arch[/variant]`).
    pub platform: Option<String>,
    /// The layer `puts` and `removes` apply to.
    pub layer: Option<usize>,
    /// Files to write into `layer` (applied after `removes`).
    pub puts: Vec<PutOp>,
    /// Paths to remove from `layer`, with everything under them.
    pub removes: Vec<String>,
    /// Layers to delete.
    pub delete_layers: Vec<usize>,
    /// Layers to insert.
    pub inserts: Vec<InsertOp>,
    /// Build and check everything, but store nothing and move no tag.
    pub dry_run: bool,
}

/// A user path (`/etc/motd`) as a normalised layer path (`etc/motd`).
pub fn user_path(p: &str) -> Result<Vec<u8>, EditError> {
    match normalize_layer_path(p.as_bytes()) {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(EditError::Invalid(format!(
            "path {p:?} names the root directory, which cannot be edited"
        ))),
        Err(e) => Err(EditError::Invalid(format!(
            "path {p:?} is not allowed: {e}"
        ))),
    }
}
