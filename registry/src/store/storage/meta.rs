//! The metadata interface: manifests, tags, which repository holds which
//! blob, upload sessions. Handlers only see [`MetadataStore`]; the embedded
//! implementation is [`super::redb_meta::RedbMetadata`]. A distributed
//! backend implements the same trait.

use super::StoredManifest;
use layerlink_proto::Digest;

/// An upload session (`POST /v2/<name>/blobs/uploads/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSession {
    /// Session id (the `<uuid>` in the upload URL).
    pub id: String,
    /// Repository it uploads into.
    pub repository: String,
    /// When it started, seconds since the Unix epoch.
    pub started: u64,
}

/// Counts for `layerlink-registry stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MetaCounts {
    /// Repositories with at least one manifest.
    pub repositories: u64,
    /// Manifests over all repositories (a manifest in two repositories counts twice).
    pub manifests: u64,
    /// Tags over all repositories.
    pub tags: u64,
    /// Distinct (repository, manifest) pairs that at least one tag names.
    pub tagged_images: u64,
}

/// Where the registry's metadata lives. Every method is blocking: call it
/// from `spawn_blocking`. Each call is atomic.
pub trait MetadataStore: Send + Sync {
    /// The manifest `digest` in `repository`.
    fn manifest(&self, repository: &str, digest: &Digest)
        -> anyhow::Result<Option<StoredManifest>>;

    /// The manifest digest `tag` names in `repository`.
    fn tag(&self, repository: &str, tag: &str) -> anyhow::Result<Option<Digest>>;

    /// Store `manifest` in `repository`, link the blobs it references, and
    /// point `tag` at it — all in one transaction.
    fn commit_manifest(
        &self,
        repository: &str,
        manifest: &StoredManifest,
        tag: Option<&str>,
        blobs: &[(Digest, u64)],
    ) -> anyhow::Result<()>;

    /// Every manifest of `repository` (digest order) with when it was last
    /// pushed, Unix seconds (0 for manifests stored before push times were
    /// recorded). The garbage collector's view.
    fn manifests_of(&self, repository: &str) -> anyhow::Result<Vec<(Digest, u64)>>;

    /// Remove the manifest and every tag naming it. `false` if absent.
    fn delete_manifest(&self, repository: &str, digest: &Digest) -> anyhow::Result<bool>;

    /// Remove a tag (the manifest stays). `false` if absent.
    fn delete_tag(&self, repository: &str, tag: &str) -> anyhow::Result<bool>;

    /// Up to `n` tags of `repository` in lexical order, after `last`.
    fn tags(&self, repository: &str, last: Option<&str>, n: usize) -> anyhow::Result<Vec<String>>;

    /// Every (tag, digest) of `repository` in tag order.
    fn tagged(&self, repository: &str) -> anyhow::Result<Vec<(String, Digest)>>;

    /// Whether `repository` holds any manifest or blob.
    fn repository_exists(&self, repository: &str) -> anyhow::Result<bool>;

    /// Up to `n` repository names in lexical order, after `last`.
    fn repositories(&self, last: Option<&str>, n: usize) -> anyhow::Result<Vec<String>>;

    /// Record that `repository` holds blob `digest` of `size` bytes.
    fn link_blob(&self, repository: &str, digest: &Digest, size: u64) -> anyhow::Result<()>;

    /// Whether `repository` holds blob `digest`.
    fn blob_linked(&self, repository: &str, digest: &Digest) -> anyhow::Result<bool>;

    /// Every blob `repository` holds (what `GET /v2/<repository>/blobs/`
    /// serves), in digest order.
    fn repository_blobs(&self, repository: &str) -> anyhow::Result<Vec<Digest>>;

    /// Forget that `repository` holds blob `digest`. `false` if it did not.
    fn unlink_blob(&self, repository: &str, digest: &Digest) -> anyhow::Result<bool>;

    /// Record that manifest `referrer` of `repository` names `subject` as
    /// its subject; `descriptor` is the referrer's OCI descriptor (JSON).
    fn add_referrer(
        &self,
        repository: &str,
        subject: &Digest,
        referrer: &Digest,
        descriptor: &[u8],
    ) -> anyhow::Result<()>;

    /// The descriptors (JSON) of the manifests of `repository` whose
    /// subject is `subject`, in referrer digest order. Deleting a manifest
    /// forgets it as a referrer.
    fn referrers(&self, repository: &str, subject: &Digest) -> anyhow::Result<Vec<Vec<u8>>>;

    /// Record a new upload session.
    fn create_upload(&self, session: &UploadSession) -> anyhow::Result<()>;

    /// An upload session by id.
    fn upload(&self, id: &str) -> anyhow::Result<Option<UploadSession>>;

    /// Forget an upload session (absent is fine).
    fn delete_upload(&self, id: &str) -> anyhow::Result<()>;

    /// Every upload session (start-up cleanup).
    fn uploads(&self) -> anyhow::Result<Vec<UploadSession>>;

    /// Counts for `stats`.
    fn counts(&self) -> anyhow::Result<MetaCounts>;

    /// A trivial read: whether the store answers (`/readyz`).
    fn check(&self) -> anyhow::Result<()>;
}
