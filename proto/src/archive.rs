//! Conventions of the dedup archive, and pure path validation.
//!
//! A dedup archive is a gzip'd POSIX tar (PAX extended headers where needed)
//! that `tar -tzvf` can list. It is a sequence of sections:
//!
//! ```text
//! [manifest marker] [config marker]          (only when metadata was asked for)
//! layer marker (diff_id)
//!   entries of the layer, in the layer's own order
//! layer-end marker (entry count)
//! layer marker … layer-end marker            (next layer, image order)
//! end marker
//! ```
//!
//! * A **marker** is a regular-file entry whose PAX header has
//!   [`PAX_MARKER`]; its path is `.layerlink/<kind>` (informational only:
//!   readers decide by the PAX key, never by the path). Manifest and config
//!   markers carry the JSON bytes as content; others are empty.
//! * Inside a layer, a regular file whose object the device lacks is a
//!   normal file entry with PAX [`PAX_DIGEST`] = 64 hex chars of the
//!   content's sha256. Empty files carry no digest.
//! * A regular file whose object the device holds is a **reference entry**:
//!   type hard link (`'1'`), size 0, link name [`reference_link`] =
//!   `layerlink:sha256:<hex>` (81 bytes, fits ustar's linkname, and no real
//!   layer path can start with `layerlink:` *and* be a valid hard-link
//!   target, because the registry rewrites nothing else into that form).
//!   Mode, owner, mtime and xattrs come from the entry's header as usual.
//! * Every other entry (directories, symlinks, hard links between paths of
//!   the same layer, devices, FIFOs, `.wh.` whiteouts) is exactly as in the
//!   layer.
//! * In an objects response (repair), each entry is an `object` marker
//!   carrying the object's content and [`PAX_DIGEST`].
//! * With feature [`FEATURE_LAYER_BASE`] (request header
//!   [`FEATURES_HEADER`]), a layer section may start with a
//!   [`Marker::Base`] marker: the layer is then a held layer's tree minus
//!   the paths the marker lists, plus the section's entries (only those
//!   that differ). See `proto/SPEC.md`.
//! * With feature [`FEATURE_FILE_DELTA`], a new file may be a **delta
//!   entry**: a regular file whose content is a patch, with PAX
//!   [`PAX_DIGEST`] (new object), [`PAX_DELTA_BASE`] (held object) and
//!   [`PAX_DELTA_SIZE`] (new size). See `proto/SPEC.md`.
//!
//! A reader commits a layer only after its `layer-end` marker, whose
//! [`PAX_ENTRIES`] must equal the number of entries it read for the layer.

use crate::limits::{MAX_COMPONENT_BYTES, MAX_PATH_BYTES};
use crate::Digest;
use alloc::vec::Vec;
use core::fmt;

/// PAX key: hex sha256 of a new file's content (or of an object marker's).
pub const PAX_DIGEST: &str = "LAYERLINK.digest";
/// PAX key marking a marker entry; the value is a [`Marker`] name.
pub const PAX_MARKER: &str = "LAYERLINK.marker";
/// PAX key on `layer` and `layer-end` markers: `sha256:<hex>` diff_id.
pub const PAX_DIFF_ID: &str = "LAYERLINK.diff_id";
/// PAX key on `layer-end` markers: decimal count of the layer's entries.
pub const PAX_ENTRIES: &str = "LAYERLINK.entries";
/// Prefix of every PAX key layerlink defines. The registry drops such keys
/// from pushed layers, so only the archive writer can produce them.
pub const PAX_PREFIX: &str = "LAYERLINK.";
/// Link-name prefix of a reference entry.
pub const REF_PREFIX: &str = "layerlink:sha256:";
/// Directory name markers are listed under (informational).
pub const MARKER_DIR: &str = ".layerlink";
/// HTTP request header of `POST /archive` listing optional archive features
/// the device understands (comma-separated). Registries ignore unknown ones.
pub const FEATURES_HEADER: &str = "layerlink-features";
/// Archive feature: layer sections may start with a [`Marker::Base`] marker
/// and then carry only the entries that differ from the held base layer.
pub const FEATURE_LAYER_BASE: &str = "layer-base";
/// Archive feature (with [`FEATURE_LAYER_BASE`]): a base marker may carry
/// compact metadata records ([`crate::compact`]) for entries that differ
/// from the base's only in mtime, mode, uid or gid.
pub const FEATURE_COMPACT_META: &str = "compact-meta";
/// PAX key of a base marker: decimal number of compact records its content
/// starts with.
pub const PAX_META: &str = "LAYERLINK.meta";
/// PAX key of a base marker: decimal byte length of those records.
pub const PAX_META_SIZE: &str = "LAYERLINK.meta-size";
/// PAX key of a base marker with records: 64 hex chars, sha256 of the base
/// layer's tree-order node paths, each followed by a NUL.
pub const PAX_BASE_ORDER: &str = "LAYERLINK.base-order";
/// Archive feature: the device reads zstd archives (see [`Encoding::Zstd`]).
/// `POST /archive` and `POST /objects` may then answer with one.
pub const FEATURE_ZSTD: &str = "zstd";

/// Largest zstd window (`Window_Size`, bytes) a frame of a zstd archive may
/// ask for: 256 KiB (window log 18). A single-segment frame's window is its
/// content size, so it is bounded the same way. Readers reject a frame that
/// asks for more, so a device's decoder memory stays below this plus one
/// 128 KiB block, whatever the registry sends.
pub const ZSTD_MAX_WINDOW: u64 = 1 << ZSTD_MAX_WINDOW_LOG;
/// log2 of [`ZSTD_MAX_WINDOW`].
pub const ZSTD_MAX_WINDOW_LOG: u32 = 18;

/// How a dedup archive (or objects response) is compressed. The response's
/// content type says which one was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// One gzip member (what every registry sends to agents that do not ask
    /// for [`FEATURE_ZSTD`]).
    Gzip,
    /// A sequence of zstd frames whose concatenation decompresses to the
    /// tar stream; no frame's window exceeds [`ZSTD_MAX_WINDOW`], no frame
    /// uses a dictionary, and there are no skippable frames.
    Zstd,
}

impl Encoding {
    /// Content type of an archive response in this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Gzip => crate::msg::ARCHIVE_CONTENT_TYPE,
            Encoding::Zstd => crate::msg::ARCHIVE_CONTENT_TYPE_ZSTD,
        }
    }

    /// The encoding a response's content type names (parameters after `;`
    /// and surrounding spaces ignored); `None` for anything else.
    pub fn from_content_type(v: &str) -> Option<Encoding> {
        let base = v.split(';').next().unwrap_or("").trim();
        if base.eq_ignore_ascii_case(crate::msg::ARCHIVE_CONTENT_TYPE) {
            Some(Encoding::Gzip)
        } else if base.eq_ignore_ascii_case(crate::msg::ARCHIVE_CONTENT_TYPE_ZSTD) {
            Some(Encoding::Zstd)
        } else {
            None
        }
    }

    /// The encoding whose magic number `head` (the first 4 bytes of a
    /// stream) starts with.
    pub fn sniff(head: &[u8; 4]) -> Option<Encoding> {
        match head {
            [0x1f, 0x8b, _, _] => Some(Encoding::Gzip),
            [0x28, 0xb5, 0x2f, 0xfd] => Some(Encoding::Zstd),
            _ => None,
        }
    }

    /// Lower-case name (`gzip` / `zstd`).
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Zstd => "zstd",
        }
    }
}

/// Whether the comma-separated `layerlink-features` value `v` lists `name`.
pub fn has_feature(v: &str, name: &str) -> bool {
    v.split(',').any(|n| n.trim() == name)
}

/// Archive feature: a modified file may travel as a **delta entry**, a
/// binary patch against an object the device holds (`proto/SPEC.md`,
/// "Binary deltas").
pub const FEATURE_FILE_DELTA: &str = "file-delta";
/// Archive feature: as [`FEATURE_FILE_DELTA`], with patches in format 2
/// ([`crate::patch`]) instead of bidiff's. A registry that knows it sends
/// format 2 to a device listing both.
pub const FEATURE_FILE_DELTA2: &str = "file-delta2";
/// PAX key of a delta entry: 64 hex chars, sha256 of the held object the
/// patch applies to. The entry's [`PAX_DIGEST`] is the new object's digest.
pub const PAX_DELTA_BASE: &str = "LAYERLINK.delta-base";
/// PAX key of a delta entry: decimal size of the new object (the entry's
/// own size is the patch's).
pub const PAX_DELTA_SIZE: &str = "LAYERLINK.delta-size";
/// First 8 bytes of a delta entry's patch: bidiff's magic `0xB1DF` and
/// format version `0x1000`, each a little-endian u32.
pub const DELTA_PATCH_HEADER: [u8; 8] = [0xDF, 0xB1, 0, 0, 0, 0x10, 0, 0];

/// Kinds of marker entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// Carries the image manifest JSON.
    Manifest,
    /// Carries the image config JSON.
    Config,
    /// Starts a layer section; has [`PAX_DIFF_ID`].
    Layer,
    /// Ends a layer section; has [`PAX_DIFF_ID`] and [`PAX_ENTRIES`].
    LayerEnd,
    /// Carries one object's content (repair responses); has [`PAX_DIGEST`].
    Object,
    /// Last entry of every archive. A stream without it was cut.
    End,
    /// First entry of a layer section built on a layer the device holds
    /// (only when the request asked for [`FEATURE_LAYER_BASE`]): has
    /// [`PAX_DIFF_ID`] naming the held base layer and [`PAX_ENTRIES`] the
    /// number of removed paths its content lists, each followed by a NUL.
    Base,
}

impl Marker {
    /// The PAX value naming this marker.
    pub fn as_str(self) -> &'static str {
        match self {
            Marker::Manifest => "manifest",
            Marker::Config => "config",
            Marker::Layer => "layer",
            Marker::LayerEnd => "layer-end",
            Marker::Object => "object",
            Marker::End => "end",
            Marker::Base => "base",
        }
    }

    /// Parse a PAX value.
    pub fn parse(v: &[u8]) -> Option<Marker> {
        Some(match v {
            b"manifest" => Marker::Manifest,
            b"config" => Marker::Config,
            b"layer" => Marker::Layer,
            b"layer-end" => Marker::LayerEnd,
            b"object" => Marker::Object,
            b"end" => Marker::End,
            b"base" => Marker::Base,
            _ => return None,
        })
    }
}

/// The link name of a reference entry for `d`: `layerlink:sha256:<hex>`.
pub fn reference_link(d: &Digest) -> [u8; 81] {
    let mut out = [0u8; 81];
    out[..17].copy_from_slice(REF_PREFIX.as_bytes());
    out[17..].copy_from_slice(&d.hex_bytes());
    out
}

/// The digest named by a reference entry's link name, or `None` when the
/// link name is an ordinary path.
pub fn parse_reference_link(link: &[u8]) -> Option<Digest> {
    let hex = link.strip_prefix(REF_PREFIX.as_bytes())?;
    let hex = core::str::from_utf8(hex).ok()?;
    Digest::from_hex(hex).ok()
}

/// Why an entry path was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Empty, or only `.` and `/`.
    Empty,
    /// Starts with `/`.
    Absolute,
    /// Has a `..` component.
    ParentDir,
    /// Contains a NUL byte.
    Nul,
    /// Longer than [`MAX_PATH_BYTES`] or a component longer than
    /// [`MAX_COMPONENT_BYTES`].
    TooLong,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::Empty => "empty path",
            PathError::Absolute => "absolute path",
            PathError::ParentDir => "path with a '..' component",
            PathError::Nul => "path with a NUL byte",
            PathError::TooLong => "path too long",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for PathError {}

/// Validate and normalise a tar entry path (or hard-link target) relative to
/// a layer root: strips a leading `./`, empty and `.` components and a
/// trailing `/`; rejects absolute paths, `..` components, NUL bytes and
/// over-long names. The result joins components with single `/`.
///
/// Paths are bytes: names need not be UTF-8.
pub fn normalize_entry_path(path: &[u8]) -> Result<Vec<u8>, PathError> {
    if path.contains(&0) {
        return Err(PathError::Nul);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if path.first() == Some(&b'/') {
        return Err(PathError::Absolute);
    }
    let mut out = Vec::with_capacity(path.len());
    for comp in path.split(|&c| c == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err(PathError::ParentDir),
            c if c.len() > MAX_COMPONENT_BYTES => return Err(PathError::TooLong),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    if out.is_empty() {
        return Err(PathError::Empty);
    }
    Ok(out)
}

/// The OCI whiteout prefix of a file name.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The OCI opaque-directory whiteout file name.
pub const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";

/// What a normalised path means under OCI whiteout rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whiteout {
    /// An ordinary path.
    None,
    /// `dir/.wh.name`: delete `dir/name` from lower layers (holds `dir/name`).
    Remove(Vec<u8>),
    /// `dir/.wh..wh..opq`: hide everything lower layers have in `dir` (holds
    /// `dir`, empty for the root).
    Opaque(Vec<u8>),
}

/// Classify a normalised path (see [`normalize_entry_path`]) as a whiteout.
pub fn classify_whiteout(path: &[u8]) -> Whiteout {
    let (dir, name) = match path.iter().rposition(|&c| c == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&path[..0], path),
    };
    if name == OPAQUE_WHITEOUT {
        return Whiteout::Opaque(dir.to_vec());
    }
    if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
        let mut full = Vec::with_capacity(path.len());
        if !dir.is_empty() {
            full.extend_from_slice(dir);
            full.push(b'/');
        }
        full.extend_from_slice(target);
        return Whiteout::Remove(full);
    }
    Whiteout::None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_ordinary_paths() {
        assert_eq!(normalize_entry_path(b"./usr/bin/").unwrap(), b"usr/bin");
        assert_eq!(normalize_entry_path(b"a//b/./c").unwrap(), b"a/b/c");
        assert_eq!(normalize_entry_path(b"\xff\xfe").unwrap(), b"\xff\xfe");
    }

    #[test]
    fn rejects_escapes() {
        assert_eq!(
            normalize_entry_path(b"/etc/passwd"),
            Err(PathError::Absolute)
        );
        assert_eq!(
            normalize_entry_path(b"a/../../b"),
            Err(PathError::ParentDir)
        );
        assert_eq!(normalize_entry_path(b".."), Err(PathError::ParentDir));
        assert_eq!(normalize_entry_path(b"./"), Err(PathError::Empty));
        assert_eq!(normalize_entry_path(b"a\0b"), Err(PathError::Nul));
        let long = [b'a'; 256];
        assert_eq!(normalize_entry_path(&long), Err(PathError::TooLong));
    }

    #[test]
    fn reference_links_round_trip() {
        let d = Digest::of(b"hello");
        let link = reference_link(&d);
        assert!(link.starts_with(REF_PREFIX.as_bytes()));
        assert_eq!(parse_reference_link(&link), Some(d));
        assert_eq!(parse_reference_link(b"usr/bin/true"), None);
        assert_eq!(parse_reference_link(b"layerlink:sha256:zz"), None);
    }

    #[test]
    fn classifies_whiteouts() {
        assert_eq!(
            classify_whiteout(b"etc/.wh..wh..opq"),
            Whiteout::Opaque(b"etc".to_vec())
        );
        assert_eq!(
            classify_whiteout(b".wh..wh..opq"),
            Whiteout::Opaque(Vec::new())
        );
        assert_eq!(
            classify_whiteout(b"etc/.wh.motd"),
            Whiteout::Remove(b"etc/motd".to_vec())
        );
        assert_eq!(
            classify_whiteout(b".wh.motd"),
            Whiteout::Remove(b"motd".to_vec())
        );
        assert_eq!(classify_whiteout(b"etc/motd"), Whiteout::None);
    }

    #[test]
    fn markers_round_trip() {
        for m in [
            Marker::Manifest,
            Marker::Config,
            Marker::Layer,
            Marker::LayerEnd,
            Marker::Object,
            Marker::End,
            Marker::Base,
        ] {
            assert_eq!(Marker::parse(m.as_str().as_bytes()), Some(m));
        }
        assert_eq!(Marker::parse(b"bogus"), None);
        // Names are wire format (proto/SPEC.md): they never change.
        assert_eq!(Marker::Base.as_str(), "base");
        assert_eq!(FEATURES_HEADER, "layerlink-features");
        assert_eq!(FEATURE_LAYER_BASE, "layer-base");
        assert_eq!(FEATURE_FILE_DELTA, "file-delta");
        assert_eq!(FEATURE_FILE_DELTA2, "file-delta2");
        assert_eq!(FEATURE_COMPACT_META, "compact-meta");
        assert_eq!(PAX_META, "LAYERLINK.meta");
        assert_eq!(PAX_META_SIZE, "LAYERLINK.meta-size");
        assert_eq!(PAX_BASE_ORDER, "LAYERLINK.base-order");
        assert_eq!(PAX_DELTA_BASE, "LAYERLINK.delta-base");
        assert_eq!(PAX_DELTA_SIZE, "LAYERLINK.delta-size");
        assert_eq!(DELTA_PATCH_HEADER, *b"\xdf\xb1\x00\x00\x00\x10\x00\x00");
    }
}
