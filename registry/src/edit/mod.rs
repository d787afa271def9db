//! In-place image editing: change a file inside layer *k*, delete layer *k*,
//! insert a layer at *k* — without stacking new layers on top.
//!
//! | module | concern |
//! |---|---|
//! | here | the request, checks, warnings, and the edit itself ([`edit_image`]) |
//! | [`tar`] | raw tar entries: read with their exact bytes, write new ones |
//! | [`tar_rewrite`] | the streaming layer rewrite (put / remove) |
//! | [`stream`] | decompress + hash, compress + hash, temp files |
//! | [`scan`] | read-only passes: merged view, shadowing, dangling pointers |
//! | [`image`] | manifest / index / config JSON |
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

pub mod cli;
pub mod image;
pub mod layout;
pub mod registry;
pub mod scan;
pub mod stream;
pub mod tar;
pub mod tar_rewrite;
mod walk;

pub use cli::{cli_main, EditArgs};
pub use image::Platform;
pub use layout::Layout;
pub use registry::RegistryImage;
pub use scan::ShadowHow;
pub use stream::{NewBlob, Scratch};

use anyhow::Context;
use image::{Descriptor, DocKind, ImageConfig, ImageManifest};
use layerlink_proto::Digest;
use scan::{show_path, Dangling, ShadowCheck, View};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use stream::{Compression, LayerReader, LayerWriter};
use tar::{normalize_layer_path, Kind, NewEntry, NewKind, TarReader};
use tar_rewrite::{ChangeSet, Put};

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

/// Something the user should know; the edit went ahead. Layer numbers are
/// those of the original image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Warning {
    /// An upper layer hides an edited path: the edit is not visible.
    Shadowed {
        /// The edited path.
        path: String,
        /// The upper layer.
        layer: usize,
        /// How it hides it.
        how: ShadowHow,
        /// Whether the edit was a put (else a removal).
        put: bool,
    },
    /// A removed path is still provided by a lower layer (no whiteout is
    /// written, so it shows through).
    StillVisible {
        /// The removed path.
        path: String,
        /// The lower layer that has it.
        layer: usize,
    },
    /// After the edit, this whiteout removes nothing.
    DanglingWhiteout {
        /// The whiteout file.
        path: String,
        /// Its layer.
        layer: usize,
    },
    /// After the edit, this hard link points at nothing: extraction fails.
    DanglingHardLink {
        /// The link.
        path: String,
        /// What it points at.
        target: String,
        /// Its layer.
        layer: usize,
    },
    /// The edited layer's blob is also used by other images, which keep
    /// the old blob.
    SharedBlob {
        /// The edited layer.
        layer: usize,
        /// The old blob.
        digest: String,
        /// The other images (tags, or digests when untagged).
        users: Vec<String>,
    },
    /// The config's history does not have one entry per layer, so it was
    /// left as it was.
    HistoryMismatch {
        /// Non-empty history entries.
        history_layers: usize,
        /// Layers.
        layers: usize,
    },
    /// A file of an inserted directory was left out.
    Skipped {
        /// Its path in the layer.
        path: String,
        /// Why.
        reason: String,
    },
    /// A `--platform` was given for a single-platform image that is not it.
    PlatformMismatch {
        /// What was asked.
        asked: String,
        /// What the image config says.
        image: String,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::Shadowed { path, layer, how, put } => write!(
                f,
                "{} {path} has no visible effect where layer {layer} {}",
                if *put { "put of" } else { "removal of" },
                how.describe()
            ),
            Warning::StillVisible { path, layer } => {
                write!(f, "{path} was removed from the edited layer but layer {layer} still provides it")
            }
            Warning::DanglingWhiteout { path, layer } => {
                write!(f, "whiteout {path} in layer {layer} no longer removes anything")
            }
            Warning::DanglingHardLink { path, target, layer } => write!(
                f,
                "hard link {path} in layer {layer} points at {target}, which no longer exists (extraction will fail)"
            ),
            Warning::SharedBlob { layer, digest, users } => write!(
                f,
                "layer {layer}'s blob {digest} is also used by {}; they keep the old layer",
                users.join(", ")
            ),
            Warning::HistoryMismatch { history_layers, layers } => write!(
                f,
                "config history has {history_layers} layer entries for {layers} layers; history left unchanged"
            ),
            Warning::Skipped { path, reason } => write!(f, "skipped {path}: {reason}"),
            Warning::PlatformMismatch { asked, image } => {
                write!(f, "--platform {asked} given but the image is {image} (not an index); edited anyway")
            }
        }
    }
}

/// What happened to one layer of the result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LayerReport {
    /// Position in the new image.
    pub index: usize,
    /// `kept`, `edited` or `inserted`.
    pub change: &'static str,
    /// Position in the original image (kept and edited layers).
    pub original: Option<usize>,
    /// Blob digest.
    pub digest: String,
    /// Uncompressed digest.
    pub diff_id: String,
}

/// The result of an edit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EditOutcome {
    /// Digest of what the tag now names (the image manifest, or the new
    /// index when an index was edited).
    pub digest: String,
    /// Digest of the new image manifest.
    pub manifest_digest: String,
    /// Media type of what the tag names.
    pub media_type: String,
    /// The tag.
    pub tag: String,
    /// The new layer list.
    pub layers: Vec<LayerReport>,
    /// Warnings.
    pub warnings: Vec<Warning>,
    /// `false` for a dry run.
    pub committed: bool,
}

/// A manifest or index found by reference.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Exact bytes.
    pub bytes: Vec<u8>,
    /// Media type.
    pub media_type: String,
    /// Digest of `bytes`.
    pub digest: Digest,
    /// The tag it was found by (none when found by digest).
    pub tag: Option<String>,
}

/// A new manifest or index to store.
#[derive(Debug, Clone)]
pub struct NewDoc {
    /// Exact bytes.
    pub bytes: Vec<u8>,
    /// Media type.
    pub media_type: String,
    /// Digest of `bytes`.
    pub digest: Digest,
    /// Blobs it references (config and layers), for linking.
    pub blobs: Vec<(Digest, u64)>,
}

impl NewDoc {
    fn new(v: &Value, media_type: &str, blobs: Vec<(Digest, u64)>) -> NewDoc {
        let bytes = image::to_bytes(v);
        NewDoc {
            digest: Digest::of(&bytes),
            bytes,
            media_type: media_type.into(),
            blobs,
        }
    }
}

/// What a backend stores at the end of an edit.
#[derive(Debug)]
pub struct Commit {
    /// New blobs (layers, config) in scratch files.
    pub blobs: Vec<NewBlob>,
    /// The new image manifest.
    pub image: NewDoc,
    /// The new index, when an index was edited.
    pub index: Option<NewDoc>,
    /// The tag to point at the index (or else the image).
    pub tag: String,
    /// The tag the original was found by.
    pub source_tag: Option<String>,
    /// The original top-level digest.
    pub source_digest: Digest,
}

impl Commit {
    /// What the tag will name.
    pub fn top(&self) -> &NewDoc {
        self.index.as_ref().unwrap_or(&self.image)
    }
}

/// Where images live: an OCI layout directory or the registry store.
pub trait Backend {
    /// How to name the store in messages.
    fn describe(&self) -> String;
    /// Find a manifest or index by tag or digest.
    fn resolve(&self, reference: &str) -> Result<Option<Resolved>, EditError>;
    /// A manifest by digest (an index's child).
    fn manifest(
        &self,
        digest: &Digest,
        media_type: &str,
    ) -> Result<Option<(Vec<u8>, String)>, EditError>;
    /// The file holding a blob, if present.
    fn blob_path(&self, digest: &Digest) -> Result<Option<PathBuf>, EditError>;
    /// A scratch directory on the blobs' file system.
    fn scratch(&self) -> Result<Scratch, EditError>;
    /// Whether `tag` is acceptable as a tag here.
    fn check_tag(&self, tag: &str) -> Result<(), EditError>;
    /// Other images using `blob`, skipping the ones named by `skip_tags`.
    fn blob_users(&self, blob: &Digest, skip_tags: &[&str]) -> Result<Vec<String>, EditError>;
    /// Store blobs and documents, then point the tag at the top document.
    fn commit(&self, commit: Commit) -> Result<(), EditError>;
}

/// Read a small blob (config, layout manifest) and check its digest.
pub(crate) fn read_small_blob(
    backend: &dyn Backend,
    digest: &Digest,
    what: &str,
) -> Result<Vec<u8>, EditError> {
    let path = backend.blob_path(digest)?.ok_or_else(|| {
        EditError::NotFound(format!(
            "{what} blob {digest} is not in {}",
            backend.describe()
        ))
    })?;
    read_verified(&path, digest, what)
}

/// Read a small file that must hash to `digest`.
pub(crate) fn read_verified(
    path: &Path,
    digest: &Digest,
    what: &str,
) -> Result<Vec<u8>, EditError> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(image::MAX_JSON_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > image::MAX_JSON_BYTES {
        return Err(EditError::Invalid(format!(
            "{what} {digest} is larger than {} bytes",
            image::MAX_JSON_BYTES
        )));
    }
    let found = Digest::of(&bytes);
    if found != *digest {
        return Err(EditError::Corrupt(format!(
            "{what} blob {digest} is corrupt: its content hashes to {found}"
        )));
    }
    Ok(bytes)
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

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The request with paths normalised and indexes checked against `n` layers.
struct Plan {
    layer: Option<usize>,
    removes: Vec<Vec<u8>>,
    /// Puts: dest path, op.
    puts: Vec<(Vec<u8>, PutOp)>,
    deleted: BTreeSet<usize>,
    inserts: Vec<InsertOp>,
}

impl Plan {
    fn new(req: &EditRequest) -> Result<Plan, EditError> {
        let has_edit = !req.puts.is_empty() || !req.removes.is_empty();
        if !has_edit && req.delete_layers.is_empty() && req.inserts.is_empty() {
            return Err(EditError::Invalid(
                "nothing to do: give --put, --rm, --delete-layer or --insert-layer".into(),
            ));
        }
        if has_edit && req.layer.is_none() {
            return Err(EditError::Invalid(
                "--put and --rm need --layer K (0 is the base layer)".into(),
            ));
        }
        if !has_edit && req.layer.is_some() {
            return Err(EditError::Invalid(
                "--layer given without any --put or --rm".into(),
            ));
        }
        let mut removes = Vec::new();
        for r in &req.removes {
            let p = user_path(r)?;
            if !removes.contains(&p) {
                removes.push(p);
            }
        }
        let mut puts: Vec<(Vec<u8>, PutOp)> = Vec::new();
        for op in &req.puts {
            let p = user_path(&op.dest)?;
            let name = p.rsplit(|&c| c == b'/').next().unwrap_or_default();
            if name.starts_with(layerlink_proto::archive::WHITEOUT_PREFIX) {
                return Err(EditError::Invalid(format!(
                    "{}: names starting with .wh. are whiteouts; to hide a path, --rm it from the layer that has it",
                    show_path(&p)
                )));
            }
            if puts.iter().any(|(q, _)| *q == p) {
                return Err(EditError::Invalid(format!(
                    "{} is put twice",
                    show_path(&p)
                )));
            }
            if let Some(mode) = op.mode {
                if mode > 0o7777 {
                    return Err(EditError::Invalid(format!(
                        "mode {mode:o} is not a permission mode"
                    )));
                }
            }
            puts.push((p, op.clone()));
        }
        let mut deleted = BTreeSet::new();
        for &d in &req.delete_layers {
            if !deleted.insert(d) {
                return Err(EditError::Invalid(format!("layer {d} is deleted twice")));
            }
        }
        if let Some(k) = req.layer {
            if has_edit && deleted.contains(&k) {
                return Err(EditError::Invalid(format!(
                    "layer {k} cannot be both edited and deleted"
                )));
            }
        }
        Ok(Plan {
            layer: req.layer.filter(|_| has_edit),
            removes,
            puts,
            deleted,
            inserts: req.inserts.clone(),
        })
    }

    fn check_indexes(&self, n: usize) -> Result<(), EditError> {
        let range = |i: usize, what: &str| {
            if i < n {
                Ok(())
            } else {
                Err(EditError::Invalid(format!(
                    "{what} {i} is out of range: the image has {n} layers (0..={})",
                    n.saturating_sub(1)
                )))
            }
        };
        if let Some(k) = self.layer {
            range(k, "--layer")?;
        }
        for &d in &self.deleted {
            range(d, "--delete-layer")?;
        }
        for ins in &self.inserts {
            if ins.at > n {
                return Err(EditError::Invalid(format!(
                    "--insert-layer position {} is out of range: the image has {n} layers (0..={n}, {n} = on top)",
                    ins.at
                )));
            }
        }
        if n - self.deleted.len() + self.inserts.len() == 0 {
            return Err(EditError::Invalid(
                "the edit would leave the image without layers".into(),
            ));
        }
        Ok(())
    }

    fn note(&self) -> String {
        let mut parts: Vec<String> = self
            .removes
            .iter()
            .map(|p| format!("rm {}", show_path(p)))
            .collect();
        parts.extend(
            self.puts
                .iter()
                .map(|(p, _)| format!("put {}", show_path(p))),
        );
        format!("layerlink edit: {}", parts.join(", "))
    }
}

/// A put with its source checked and its entry header decided.
fn prepare_put(backend: &dyn Backend, path: &[u8], op: &PutOp) -> Result<Put, EditError> {
    let (source, size, mut entry) = match &op.source {
        PutSource::File(src) => {
            let meta = std::fs::metadata(src).map_err(|e| {
                EditError::Invalid(format!(
                    "--put source {} cannot be read: {e}",
                    src.display()
                ))
            })?;
            if !meta.is_file() {
                return Err(EditError::Invalid(format!(
                    "--put source {} is not a regular file",
                    src.display()
                )));
            }
            std::fs::File::open(src).map_err(|e| {
                EditError::Invalid(format!(
                    "--put source {} cannot be read: {e}",
                    src.display()
                ))
            })?;
            let entry = (
                meta.mode() & 0o7777,
                u64::from(meta.uid()),
                u64::from(meta.gid()),
                meta.mtime().max(0) as u64,
            );
            (src.clone(), meta.len(), entry)
        }
        PutSource::Blob(d) => {
            let p = backend.blob_path(d)?.ok_or_else(|| {
                EditError::NotFound(format!(
                    "put source blob {d} is not in {}",
                    backend.describe()
                ))
            })?;
            let len = std::fs::metadata(&p)?.len();
            (p, len, (0o644, 0, 0, now_secs()))
        }
    };
    if let Some(m) = op.mode {
        entry.0 = m;
    }
    if let Some(u) = op.uid {
        entry.1 = u;
    }
    if let Some(g) = op.gid {
        entry.2 = g;
    }
    if let Some(t) = op.mtime {
        entry.3 = t;
    }
    Ok(Put {
        entry: NewEntry {
            path: path.to_vec(),
            kind: NewKind::File { size },
            mode: entry.0,
            uid: entry.1,
            gid: entry.2,
            mtime: entry.3,
            uname: Vec::new(),
            gname: Vec::new(),
            xattrs: Vec::new(),
        },
        source,
        parents: Vec::new(),
    })
}

/// Open layer `i`'s blob.
fn open_layer(backend: &dyn Backend, i: usize, d: &Descriptor) -> Result<LayerReader, EditError> {
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
fn verify_layer(
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

fn corrupt(i: usize, d: &Descriptor) -> impl FnOnce(anyhow::Error) -> EditError + '_ {
    move |e| EditError::Corrupt(format!("reading layer {i} ({}): {e:#}", d.digest))
}

/// What the read-only pass found out.
#[derive(Default)]
struct Findings {
    warnings: Vec<Warning>,
    changes: ChangeSet,
}

/// Pass 1 (and 2): check the edit against the image, decide parent
/// directories and hard-link spooling, collect warnings.
fn inspect(
    backend: &dyn Backend,
    plan: &Plan,
    manifest: &ImageManifest,
    config: &ImageConfig,
    puts: Vec<Put>,
) -> Result<Findings, EditError> {
    let n = manifest.layers.len();
    let mut f = Findings::default();
    f.changes.removes = plan.removes.iter().cloned().collect();
    let put_paths: HashSet<Vec<u8>> = plan.puts.iter().map(|(p, _)| p.clone()).collect();

    let min_affected = plan
        .deleted
        .iter()
        .copied()
        .chain(plan.layer.filter(|_| !plan.removes.is_empty()))
        .min();
    let first = match (plan.layer, min_affected) {
        (Some(_), _) => Some(0),
        (None, Some(m)) => Some(m + 1),
        (None, None) => None,
    };
    let mut puts = Some(puts);
    let Some(first) = first else {
        f.changes.puts = puts.unwrap_or_default();
        return Ok(f);
    };

    // Pass 1.
    let mut tracked: Vec<Vec<u8>> = Vec::new();
    for (p, _) in &plan.puts {
        tracked.push(p.clone());
        tracked.extend(scan::ancestors(p).map(<[u8]>::to_vec));
    }
    tracked.extend(plan.removes.iter().cloned());
    let mut view = View::new(tracked);
    let mut shadow = ShadowCheck::new(
        plan.puts
            .iter()
            .map(|(p, _)| (p.clone(), true))
            .chain(plan.removes.iter().map(|p| (p.clone(), false)))
            .collect(),
    );
    let mut dangling = Dangling::default();
    let mut rm_found = vec![false; plan.removes.len()];
    let mut link_targets: Vec<Vec<u8>> = Vec::new();
    for i in first..n {
        let d = &manifest.layers[i];
        let in_edit = plan.layer == Some(i);
        let below_edit = plan.layer.is_some_and(|k| i < k);
        let above_edit = plan.layer.is_some_and(|k| i > k) && !plan.deleted.contains(&i);
        let collect = min_affected.is_some_and(|m| i > m) && !plan.deleted.contains(&i);
        view.begin(i);
        let got = scan::scan_layer(open_layer(backend, i, d)?, |e| {
            let Some(path) = &e.path else { return };
            if below_edit {
                view.entry(path, e.kind, &e.whiteout);
            }
            if in_edit {
                for (j, r) in plan.removes.iter().enumerate() {
                    if path == r || (path.starts_with(r) && path.get(r.len()) == Some(&b'/')) {
                        rm_found[j] = true;
                    }
                }
                if !f.changes.is_removed(path) {
                    view.entry(path, e.kind, &e.whiteout);
                    if let Some(t) = &e.link {
                        if !put_paths.contains(path)
                            && f.changes.is_removed(t)
                            && !put_paths.contains(t)
                        {
                            link_targets.push(t.clone());
                        }
                    }
                }
            }
            if above_edit {
                shadow.entry(i, path, e.kind, &e.whiteout);
            }
            if collect {
                dangling.collect(i, e);
            }
        })
        .map_err(corrupt(i, d))?;
        verify_layer(i, d, &config.diff_ids[i], got)?;
        view.end();
        if in_edit {
            check_edit(
                plan,
                &view,
                &rm_found,
                &mut f,
                puts.take().unwrap_or_default(),
                i,
            )?;
        }
    }
    f.changes.spool = link_targets.into_iter().collect();
    if let Some(puts) = puts {
        f.changes.puts = puts;
    }
    f.warnings.append(&mut shadow.warnings);

    // Pass 2: dangling whiteouts and hard links.
    if let Some(top) = dangling.top_layer() {
        let tracked = dangling.tracked();
        let mut old = View::new(tracked.iter().cloned());
        let mut new = View::new(tracked);
        for i in 0..=top {
            let d = &manifest.layers[i];
            old.begin(i);
            new.begin(i);
            let deleted = plan.deleted.contains(&i);
            let edited = plan.layer == Some(i);
            let got = scan::scan_layer(open_layer(backend, i, d)?, |e| {
                let Some(path) = &e.path else { return };
                old.entry(path, e.kind, &e.whiteout);
                if !(deleted || edited && f.changes.is_removed(path)) {
                    new.entry(path, e.kind, &e.whiteout);
                }
            })
            .map_err(corrupt(i, d))?;
            verify_layer(i, d, &config.diff_ids[i], got)?;
            if edited {
                for put in &f.changes.puts {
                    new.entry(
                        &put.entry.path,
                        Kind::File,
                        &layerlink_proto::archive::Whiteout::None,
                    );
                }
            }
            dangling.judge(i, &old, &new, &mut f.warnings);
            old.end();
            new.end();
        }
    }
    Ok(f)
}

/// After layer k went through the view: refuse impossible puts and
/// removals, warn about removed paths lower layers still provide, and
/// decide which parent directories puts must create.
fn check_edit(
    plan: &Plan,
    view: &View,
    rm_found: &[bool],
    f: &mut Findings,
    mut puts: Vec<Put>,
    k: usize,
) -> Result<(), EditError> {
    for (j, r) in plan.removes.iter().enumerate() {
        if !rm_found[j] {
            return Err(EditError::Invalid(match view.get(r) {
                Some((_, l)) if l != k => format!(
                    "--rm {}: not in layer {k}; it comes from layer {l} (use --layer {l})",
                    show_path(r)
                ),
                _ => format!("--rm {}: no such path in layer {k}", show_path(r)),
            }));
        }
        if let Some((_, l)) = view.get(r) {
            f.warnings.push(Warning::StillVisible {
                path: show_path(r),
                layer: l,
            });
        }
    }
    for put in &mut puts {
        let p = put.entry.path.clone();
        if let Some((Kind::Dir, l)) = view.get(&p) {
            return Err(EditError::Invalid(format!(
                "--put {}: that path is a directory (from layer {l}); remove it first or put the file inside it",
                show_path(&p)
            )));
        }
        for a in scan::ancestors(&p) {
            match view.get(a) {
                Some((Kind::Dir, _)) => {}
                Some((kind, l)) => {
                    return Err(EditError::Invalid(format!(
                        "--put {}: parent {} is {} (from layer {l}), not a directory",
                        show_path(&p),
                        show_path(a),
                        kind.name()
                    )))
                }
                None => {
                    put.parents.push(NewEntry::dir(a.to_vec(), put.entry.mtime));
                }
            }
        }
    }
    f.changes.puts = puts;
    Ok(())
}

/// A finished layer of the new image.
enum Slot {
    Keep(usize),
    Edited(usize, NewBlob),
    Inserted(NewBlob),
}

/// Build an inserted layer into a scratch file.
fn build_insert(
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

/// Check the inserted sources exist before any work.
fn check_insert_sources(backend: &dyn Backend, inserts: &[InsertOp]) -> Result<(), EditError> {
    for op in inserts {
        match &op.source {
            InsertSource::Dir(p) => {
                if !std::fs::metadata(p).map(|m| m.is_dir()).unwrap_or(false) {
                    return Err(EditError::Invalid(format!(
                        "--insert-layer: {} is not a directory",
                        p.display()
                    )));
                }
            }
            InsertSource::Tar(p) => {
                if !std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false) {
                    return Err(EditError::Invalid(format!(
                        "--insert-layer: {} is not a file",
                        p.display()
                    )));
                }
            }
            InsertSource::Blob(d) => {
                if backend.blob_path(d)?.is_none() {
                    return Err(EditError::NotFound(format!(
                        "--insert-layer: blob {d} is not in {}",
                        backend.describe()
                    )));
                }
            }
        }
    }
    Ok(())
}

/// New history: one entry per new layer, empty-layer entries kept in place.
fn rebuild_history(
    config: &ImageConfig,
    plan: &Plan,
    n: usize,
    warnings: &mut Vec<Warning>,
) -> Option<Vec<Value>> {
    let positions = config.layer_history();
    if config.history.is_empty() {
        return None;
    }
    if positions.len() != n {
        warnings.push(Warning::HistoryMismatch {
            history_layers: positions.len(),
            layers: n,
        });
        return None;
    }
    let created = image::now_rfc3339();
    let inserted_at = |li: usize| -> Vec<Value> {
        plan.inserts
            .iter()
            .filter(|op| op.at == li)
            .map(|op| {
                image::insert_history(&format!("layerlink insert: from {}", op.source), &created)
            })
            .collect()
    };
    let mut out = Vec::new();
    let mut li = 0;
    let mut after_last_layer = 0;
    for (hi, h) in config.history.iter().enumerate() {
        if li < n && positions[li] == hi {
            out.extend(inserted_at(li));
            if plan.deleted.contains(&li) {
                // gone
            } else if plan.layer == Some(li) {
                out.push(image::amend_history(h, &plan.note()));
            } else {
                out.push(h.clone());
            }
            li += 1;
            after_last_layer = out.len();
        } else {
            out.push(h.clone());
        }
    }
    let top = inserted_at(n);
    let at = if n == 0 { out.len() } else { after_last_layer };
    out.splice(at..at, top);
    Some(out)
}

/// Edit the image `reference` names in `backend`.
pub fn edit_image(
    backend: &dyn Backend,
    reference: &str,
    req: &EditRequest,
) -> Result<EditOutcome, EditError> {
    let plan = Plan::new(req)?;
    let platform = req.platform.as_deref().map(Platform::parse).transpose()?;

    // The image.
    let top = backend.resolve(reference)?.ok_or_else(|| {
        EditError::NotFound(format!("no image {reference:?} in {}", backend.describe()))
    })?;
    let tag = match (&req.tag, &top.tag) {
        (Some(t), _) | (None, Some(t)) => t.clone(),
        (None, None) => {
            return Err(EditError::Invalid(format!(
                "{reference} is a digest: give --tag for the edited image"
            )))
        }
    };
    backend.check_tag(&tag)?;
    let (doc, kind) = image::parse_doc(&top.bytes, &top.media_type, reference)?;
    let mut warnings = Vec::new();
    let (manifest, index_pos) = match kind {
        DocKind::Image => (
            ImageManifest::from_json(doc.clone(), &top.media_type)?,
            None,
        ),
        DocKind::Index => {
            let Some(platform) = &platform else {
                return Err(EditError::Invalid(format!(
                    "{reference} is an image index (platforms: {}); choose one with --platform os/arch[/variant]",
                    image::index_platforms(&doc).join(", ")
                )));
            };
            let (pos, child) = image::pick_platform(&doc, platform)?;
            let (bytes, mt) = backend
                .manifest(&child.digest, &child.media_type)?
                .ok_or_else(|| {
                    EditError::NotFound(format!(
                        "manifest {} ({platform}) is not in {}",
                        child.digest,
                        backend.describe()
                    ))
                })?;
            let (cdoc, ckind) = image::parse_doc(&bytes, &mt, &format!("manifest for {platform}"))?;
            if ckind != DocKind::Image {
                return Err(EditError::Invalid(format!(
                    "the {platform} entry of {reference} is not an image manifest"
                )));
            }
            (ImageManifest::from_json(cdoc, &mt)?, Some((pos, child)))
        }
    };
    let config_bytes = read_small_blob(backend, &manifest.config.digest, "config")?;
    let config = ImageConfig::parse(&config_bytes)?;
    if let (Some(p), None) = (&platform, &index_pos) {
        let get = |k: &str| {
            config
                .json
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned()
        };
        let image_platform = format!("{}/{}", get("os"), get("architecture"));
        if p.os != get("os") || p.architecture != get("architecture") {
            warnings.push(Warning::PlatformMismatch {
                asked: p.to_string(),
                image: image_platform,
            });
        }
    }
    let n = manifest.layers.len();
    if config.diff_ids.len() != n {
        return Err(EditError::Corrupt(format!(
            "the config lists {} diff_ids for {n} manifest layers",
            config.diff_ids.len()
        )));
    }
    plan.check_indexes(n)?;
    let puts = plan
        .puts
        .iter()
        .map(|(p, op)| prepare_put(backend, p, op))
        .collect::<Result<Vec<_>, _>>()?;
    check_insert_sources(backend, &plan.inserts)?;

    // Read-only checks and warnings.
    let mut found = inspect(backend, &plan, &manifest, &config, puts)?;
    warnings.append(&mut found.warnings);
    if let Some(k) = plan.layer {
        let mut skip = vec![tag.as_str()];
        if let Some(t) = &top.tag {
            skip.push(t.as_str());
        }
        let users = backend.blob_users(&manifest.layers[k].digest, &skip)?;
        if !users.is_empty() {
            warnings.push(Warning::SharedBlob {
                layer: k,
                digest: manifest.layers[k].digest.to_string(),
                users,
            });
        }
    }

    // Build.
    let scratch = backend.scratch()?;
    let docker = manifest.is_docker();
    let mut edited: Option<NewBlob> = None;
    if let Some(k) = plan.layer {
        let d = &manifest.layers[k];
        let media_type = image::edited_layer_media_type(d, docker);
        let mut w = LayerWriter::create(
            scratch.file("layer"),
            Compression::of_media_type(&media_type),
        )?;
        let mut tr = TarReader::new(open_layer(backend, k, d)?);
        tar_rewrite::rewrite(&mut tr, &mut w, &found.changes, Some(&scratch), false)
            .map_err(corrupt(k, d))?;
        let got = tr.into_inner().finish()?;
        verify_layer(k, d, &config.diff_ids[k], got)?;
        edited = Some(w.finish()?);
    }
    let mut inserted: HashMap<usize, NewBlob> = HashMap::new();
    for (j, op) in plan.inserts.iter().enumerate() {
        inserted.insert(j, build_insert(backend, &scratch, op, &mut warnings)?);
    }
    let mut slots = Vec::new();
    for i in 0..=n {
        for (j, op) in plan.inserts.iter().enumerate() {
            if op.at == i {
                slots.push(Slot::Inserted(inserted.remove(&j).expect("built once")));
            }
        }
        if i < n && !plan.deleted.contains(&i) {
            if plan.layer == Some(i) {
                slots.push(Slot::Edited(i, edited.take().expect("built")));
            } else {
                slots.push(Slot::Keep(i));
            }
        }
    }

    // Config and manifest.
    let mut diff_ids = Vec::new();
    let mut layer_json = Vec::new();
    let mut layer_blobs = Vec::new();
    let mut reports = Vec::new();
    let mut new_blobs = Vec::new();
    for (index, slot) in slots.into_iter().enumerate() {
        let (change, original, digest, size, diff_id, desc) = match slot {
            Slot::Keep(i) => {
                let d = &manifest.layers[i];
                (
                    "kept",
                    Some(i),
                    d.digest,
                    d.size,
                    config.diff_ids[i],
                    d.json.clone(),
                )
            }
            Slot::Edited(i, b) => {
                let desc =
                    image::edited_layer_descriptor(&manifest.layers[i], &b.digest, b.size, docker);
                let r = ("edited", Some(i), b.digest, b.size, b.diff_id, desc);
                new_blobs.push(b);
                r
            }
            Slot::Inserted(b) => {
                let desc = json!({"mediaType": manifest.new_layer_media_type(), "digest": b.digest.to_string(), "size": b.size});
                let r = ("inserted", None, b.digest, b.size, b.diff_id, desc);
                new_blobs.push(b);
                r
            }
        };
        diff_ids.push(diff_id);
        layer_json.push(desc);
        layer_blobs.push((digest, size));
        reports.push(LayerReport {
            index,
            change,
            original,
            digest: digest.to_string(),
            diff_id: diff_id.to_string(),
        });
    }
    let history = rebuild_history(&config, &plan, n, &mut warnings);
    let config_blob = scratch.write_blob(
        "config",
        &image::to_bytes(&config.rebuilt(&diff_ids, history)),
    )?;
    let config_desc = manifest
        .config
        .retarget(&config_blob.digest, config_blob.size);
    let mut refs = vec![(config_blob.digest, config_blob.size)];
    refs.extend(layer_blobs);
    new_blobs.push(config_blob);
    let image_doc = NewDoc::new(
        &manifest.rebuilt(config_desc, layer_json),
        &manifest.media_type,
        refs,
    );
    let index_doc = index_pos.map(|(pos, child)| {
        let mut v = doc.clone();
        if let Some(list) = v.get_mut("manifests").and_then(Value::as_array_mut) {
            list[pos] = child.retarget(&image_doc.digest, image_doc.bytes.len() as u64);
        }
        NewDoc::new(&v, &top.media_type, Vec::new())
    });

    let commit = Commit {
        blobs: new_blobs,
        image: image_doc,
        index: index_doc,
        tag: tag.clone(),
        source_tag: top.tag.clone(),
        source_digest: top.digest,
    };
    let outcome = EditOutcome {
        digest: commit.top().digest.to_string(),
        manifest_digest: commit.image.digest.to_string(),
        media_type: commit.top().media_type.clone(),
        tag,
        layers: reports,
        warnings,
        committed: !req.dry_run,
    };
    if !req.dry_run {
        backend.commit(commit)?;
    }
    drop(scratch);
    Ok(outcome)
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
