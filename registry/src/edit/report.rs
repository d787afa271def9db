//! What an edit reports: warnings (the edit went ahead) and the result.

use super::scan::ShadowHow;
use std::fmt;

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
