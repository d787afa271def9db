//! Request and response messages of the sync protocol.
//!
//! All bodies are postcard ([`CONTENT_TYPE`]) except the archive responses,
//! which are dedup archives ([`ARCHIVE_CONTENT_TYPE`], see
//! [`crate::archive`]). Every request carries a bearer token
//! (`Authorization: Bearer <token>`) bound to one device id. Errors are
//! [`crate::ErrorBody`] with the code's HTTP status.
//!
//! | method + path | request | response |
//! |---|---|---|
//! | `POST /layerlink/v1/plan` | [`PlanRequest`] | [`PlanResponse`] |
//! | `POST /layerlink/v1/archive` | [`ArchiveRequest`] | dedup archive |
//! | `POST /layerlink/v1/objects` | [`ObjectsRequest`] | dedup archive of object entries |
//! | `POST /layerlink/v1/report` | [`Report`] | [`ReportAck`] |
//!
//! Field order is the encoding order: never reorder or remove fields; new
//! fields only in new message versions.

use crate::Digest;
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Path prefix of every sync endpoint.
pub const API_PREFIX: &str = "/layerlink/v1";
/// Content type of postcard bodies.
pub const CONTENT_TYPE: &str = "application/vnd.layerlink.v1+postcard";
/// Content type of dedup archive bodies (gzip'd POSIX/PAX tar).
pub const ARCHIVE_CONTENT_TYPE: &str = "application/vnd.layerlink.archive.v1.tar+gzip";
/// Content type of a zstd dedup archive (feature `zstd`: zstd frames whose
/// concatenation is the same tar stream).
pub const ARCHIVE_CONTENT_TYPE_ZSTD: &str = "application/vnd.layerlink.archive.v1.tar+zstd";
/// Response header carrying the total uncompressed bytes of new file content
/// in an archive, so the agent can check free space before applying.
pub const HEADER_NEW_BYTES: &str = "x-layerlink-new-bytes";
/// Response header of `POST /archive`: the registry keeps this archive so
/// that a device cut off mid-way can ask for its rest (SPEC, "Resuming an
/// archive").
pub const HEADER_ARCHIVE_ID: &str = "layerlink-archive-id";
/// Response header of `POST /archive`: the body is the kept archive from
/// this byte offset.
pub const HEADER_ARCHIVE_OFFSET: &str = "layerlink-archive-offset";
/// Request header of `POST /archive`: `<id> <offset> <sha256 hex of the
/// archive's first offset bytes>`.
pub const HEADER_RESUME: &str = "layerlink-resume";

/// The platform a device runs, matched against an image index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// OCI architecture: `amd64`, `arm64`, `arm`, …
    pub architecture: String,
    /// OCI variant: `v7`, `v8`, … or `None`.
    pub variant: Option<String>,
}

/// An image as a device names it: repository plus tag or `sha256:` digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ImageRef {
    /// Repository name, e.g. `edge/gateway`.
    pub repository: String,
    /// Tag (`v1`) or manifest digest (`sha256:…`).
    pub reference: String,
}

/// What a device truly holds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HeldSet {
    /// diff_ids of fully committed layers, sorted ascending, no duplicates.
    pub layers: Vec<Digest>,
    /// Digests of objects held outside committed layers (for example left by
    /// an interrupted apply), sorted ascending, no duplicates.
    pub objects: Vec<Digest>,
}

impl HeldSet {
    /// Sort and deduplicate both lists, the form that is sent and hashed.
    pub fn canonicalize(&mut self) {
        self.layers.sort_unstable();
        self.layers.dedup();
        self.objects.sort_unstable();
        self.objects.dedup();
    }

    /// The hash that stands for this set in [`Holdings::Hash`]: sha256 of
    /// the postcard encoding of the canonical set.
    pub fn hash(&self) -> Digest {
        let mut c = self.clone();
        c.canonicalize();
        // Encoding a Vec-only struct into memory cannot fail.
        let bytes = postcard::to_allocvec(&c).unwrap_or_default();
        Digest::of(&bytes)
    }
}

/// What a device holds, in full or by the hash of a set the registry
/// recorded for it earlier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Holdings {
    /// The whole set.
    Full(HeldSet),
    /// [`HeldSet::hash`] of the set last acknowledged for this device. The
    /// registry answers [`crate::ErrorCode::UnknownHoldingsSet`] when it has
    /// no such record; the agent then resends in full.
    Hash(Digest),
}

/// `POST /layerlink/v1/plan`: which images the device wants, and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRequest {
    /// The device's platform, to pick a manifest from an index.
    pub platform: Platform,
    /// Images wanted, at most [`crate::limits::MAX_IMAGES_PER_PLAN`].
    pub images: Vec<ImageRef>,
    /// What the device holds.
    pub holdings: Holdings,
}

/// Cost of sending one layer to this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LayerCost {
    /// All tar entries of the layer.
    pub entries: u32,
    /// Regular files whose content the device lacks (sent in full).
    pub new_files: u32,
    /// Uncompressed bytes of those files.
    pub new_bytes: u64,
    /// Regular files the device already holds (sent as references).
    pub referenced_files: u32,
    /// Uncompressed bytes those references stand for.
    pub referenced_bytes: u64,
}

/// Whether a layer must travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerState {
    /// The device holds this layer committed.
    Held,
    /// The device needs it; what it would cost.
    Needed(LayerCost),
}

/// One layer of a planned image, in image order (base first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerPlan {
    /// The layer's diff_id (sha256 of its uncompressed tar).
    pub diff_id: Digest,
    /// Held or needed.
    pub state: LayerState,
}

/// The plan for one requested image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePlan {
    /// The image as requested.
    pub image: ImageRef,
    /// Digest of the platform manifest (not of the index).
    pub manifest_digest: Digest,
    /// Digest of the image config blob.
    pub config_digest: Digest,
    /// Every layer of the image, base first.
    pub layers: Vec<LayerPlan>,
}

/// Answer to [`PlanRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanResponse {
    /// Hash of the holdings set the registry recorded from this request;
    /// the agent may send it as [`Holdings::Hash`] next time if its set
    /// has not changed.
    pub holdings_hash: Digest,
    /// One plan per requested image, in request order.
    pub images: Vec<ImagePlan>,
}

/// `POST /layerlink/v1/archive`: stream the dedup archive of some layers of
/// one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveRequest {
    /// Repository the image is in (access is checked against it).
    pub repository: String,
    /// Platform manifest digest from the plan.
    pub manifest_digest: Digest,
    /// diff_ids to send, in image order; each must belong to the manifest.
    pub layers: Vec<Digest>,
    /// Whether to begin with the manifest and config marker entries.
    pub metadata: bool,
    /// What the device holds; objects of these layers and these loose
    /// objects are sent as references.
    pub holdings: Holdings,
}

/// `POST /layerlink/v1/objects`: fetch objects by digest (repair of
/// references the device could not resolve). Answered with a dedup archive
/// of `object` marker entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectsRequest {
    /// Repository whose layers contain the objects (access is checked).
    pub repository: String,
    /// Object digests, at most [`crate::limits::MAX_REPAIR_OBJECTS`].
    pub digests: Vec<Digest>,
}

/// An image a device holds complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldImage {
    /// The image as the device names it.
    pub image: ImageRef,
    /// Its platform manifest digest.
    pub manifest_digest: Digest,
}

/// `POST /layerlink/v1/report`: what the device holds after a sync, for the
/// fleet record (`layerlink-registry devices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// What the device holds now.
    pub holdings: Holdings,
    /// Complete images it holds.
    pub images: Vec<HeldImage>,
}

/// Answer to [`Report`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAck {
    /// Hash of the recorded holdings set (see [`PlanResponse::holdings_hash`]).
    pub holdings_hash: Digest,
}
