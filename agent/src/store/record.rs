//! The small postcard files of the store: image records and sync state.

use layerlink_proto::msg::ImageRef;
use layerlink_proto::Digest;
use serde::{Deserialize, Serialize};

/// Version byte written first in every record and state file.
pub const FORMAT_VERSION: u8 = 1;

/// A synced image: everything `checkout` and `status` need, written only
/// after all its layers are committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// [`FORMAT_VERSION`].
    pub version: u8,
    /// The image as the device names it.
    pub image: ImageRef,
    /// Digest of the platform manifest.
    pub manifest_digest: Digest,
    /// Digest of the image config.
    pub config_digest: Digest,
    /// The manifest JSON.
    pub manifest: Vec<u8>,
    /// The config JSON.
    pub config: Vec<u8>,
    /// diff_ids, base layer first.
    pub layers: Vec<Digest>,
    /// Unix time of the sync that wrote this record.
    pub synced_at: u64,
}

/// The outcome of the last sync, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResult {
    /// Unix time the sync finished.
    pub at: u64,
    /// Its exit code (0 = ok).
    pub exit_code: u8,
    /// One line for a human.
    pub message: String,
    /// Each image of the sync on its own (empty when the sync failed
    /// before any image was tried, e.g. offline).
    pub images: Vec<ImageOutcome>,
}

/// How one image of a sync ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageOutcome {
    /// The image as asked.
    pub image: ImageRef,
    /// 0 synced or up to date, else the exit code its error maps to
    /// (8 = not found on the registry).
    pub exit_code: u8,
    /// "synced", "up to date", or the error.
    pub message: String,
}

/// `DIR/state`: what the registry last acknowledged, and the last result.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct State {
    /// [`FORMAT_VERSION`].
    pub version: u8,
    /// Hash of the holdings set the registry last recorded for us.
    pub acked_holdings: Option<Digest>,
    /// Fingerprint of the last report the registry acknowledged (holdings
    /// hash + images); a sync that changes nothing skips the report.
    pub reported: Option<Digest>,
    /// The last sync's outcome.
    pub last_sync: Option<SyncResult>,
    /// The store's self-check watermark: the ctime (seconds, nanoseconds)
    /// of `DIR/checked` when the last complete check ended. Object files
    /// changed at or after it (ctime) are re-hashed by the next `sync`.
    pub checked: Option<(i64, i64)>,
}

/// Split `repo:tag` / `repo@sha256:<hex>` into an [`ImageRef`]. A name
/// without tag means `latest`.
pub fn parse_image_ref(s: &str) -> Option<ImageRef> {
    let (repo, reference) = if let Some((repo, digest)) = s.split_once('@') {
        Digest::parse(digest).ok()?;
        (repo, digest.to_string())
    } else {
        match s.rfind(':') {
            Some(i) if !s[i + 1..].contains('/') => (&s[..i], s[i + 1..].to_string()),
            _ => (s, "latest".to_string()),
        }
    };
    let valid_repo = !repo.is_empty()
        && !repo.starts_with('/')
        && !repo.ends_with('/')
        && repo
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-/".contains(&c));
    let valid_ref = !reference.is_empty()
        && reference.len() <= 128
        && reference
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-:".contains(&c));
    if !valid_repo || !valid_ref || repo.len() > layerlink_proto::limits::MAX_NAME_BYTES {
        return None;
    }
    Some(ImageRef {
        repository: repo.to_string(),
        reference,
    })
}

/// `repo:ref` (tags) or `repo@sha256:…` (digests), as a user writes it.
pub fn show_image_ref(r: &ImageRef) -> String {
    if r.reference.starts_with("sha256:") {
        format!("{}@{}", r.repository, r.reference)
    } else {
        format!("{}:{}", r.repository, r.reference)
    }
}

/// File name of an image's record: hex sha256 of `repo:ref`, `.rec`.
pub fn record_file_name(r: &ImageRef) -> String {
    let key = format!("{}:{}", r.repository, r.reference);
    format!("{}.rec", Digest::of(key.as_bytes()).hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_image_refs() {
        let r = parse_image_ref("edge/gw:v1").unwrap();
        assert_eq!(
            (r.repository.as_str(), r.reference.as_str()),
            ("edge/gw", "v1")
        );
        let r = parse_image_ref("edge/gw").unwrap();
        assert_eq!(r.reference, "latest");
        let d = Digest::of(b"x").to_string();
        let r = parse_image_ref(&format!("gw@{d}")).unwrap();
        assert_eq!(r.reference, d);
        assert_eq!(show_image_ref(&r), format!("gw@{d}"));
        assert!(parse_image_ref("gw@sha256:zz").is_none());
        assert!(parse_image_ref("Bad/Name:v1").is_none());
        assert!(parse_image_ref(":v1").is_none());
    }

    #[test]
    fn record_round_trips() {
        let rec = ImageRecord {
            version: FORMAT_VERSION,
            image: parse_image_ref("a:b").unwrap(),
            manifest_digest: Digest::of(b"m"),
            config_digest: Digest::of(b"c"),
            manifest: b"{}".to_vec(),
            config: b"{}".to_vec(),
            layers: vec![Digest::of(b"l")],
            synced_at: 5,
        };
        let bytes = postcard::to_allocvec(&rec).unwrap();
        assert_eq!(postcard::from_bytes::<ImageRecord>(&bytes).unwrap(), rec);
        assert_ne!(
            record_file_name(&rec.image),
            record_file_name(&parse_image_ref("a:c").unwrap())
        );
    }
}
