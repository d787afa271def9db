//! Registry storage: original blobs on the filesystem, metadata (manifests,
//! tags, which repository holds which blob, upload sessions) in an embedded
//! redb database.
//!
//! ```text
//! DATA/
//! ├── registry.redb           metadata, one ACID database shared by all modules:
//! │                             oci_*     manifests, tags, repo→blob links, uploads (here)
//! │                             index_*…  entry index, objects, devices (ingest, devices)
//! ├── blobs/sha256/<hex>      original blobs (layers, configs), byte-identical to the push
//! ├── objects/                file objects of the dedup store (see `objects`)
//! ├── resume/<id>             archive responses kept for devices to resume
//! │                             (`sync::resume`; emptied when `serve` starts)
//! └── tmp/
//!     ├── blob-<random>       a one-request upload in flight (removed when `serve` starts)
//!     └── uploads/<id>        the bytes an upload session received so far
//! ```
//!
//! **Writing a blob.** Bytes stream into a file under `tmp/` while they are
//! hashed; on finish the digest (and size) is checked, the file fsync'd and
//! renamed to `blobs/sha256/<hex>`, then the directory fsync'd. A blob that
//! is already there is success: the rename is atomic and the content is the
//! same, so concurrent pushes of one layer both succeed and store it once.
//! Only after the blob is in place is it linked to a repository in redb, so
//! the database never names a blob that is not on disk.
//!
//! **Manifests** are small and live in redb with their exact bytes and
//! media type; a manifest, its blob links and its tag commit in one
//! transaction.
//!
//! **Interfaces.** Handlers reach metadata only through [`MetadataStore`]
//! and device records only through [`DeviceStore`] (embedded:
//! [`RedbMetadata`], [`RedbDevices`]; in PostgreSQL with `[storage]
//! metadata`: [`PgMetadata`], [`PgDevices`] sharing one [`Pg`] pool, and
//! the data dir then holds [`POSTGRES_MARKER`]). Blob
//! bytes go through [`Blobs`]: finished blobs in a [`BlobStore`]
//! ([`FsBlobStore`] by default, [`S3BlobStore`] with `[storage] blobs =
//! "s3://…"`), uploads in flight always in `tmp/`. Deleting a manifest or a blob
//! link never deletes bytes by itself: [`crate::gc`] does, later.
//!
//! **Concurrency.** redb serialises writers; the database is opened in
//! multi-writer mode so `stats` and `devices` can run beside `serve`. One
//! upload session takes its chunks one at a time ([`Storage::upload_lock`]).

mod blobs;
pub mod devices;
mod meta;
mod pg;
mod pg_devices;
mod pg_meta;
mod redb_devices;
mod redb_meta;
pub mod s3_blobs;
pub mod shared_layers;

pub use blobs::{BlobError, BlobRead, BlobStore, BlobWriter, Blobs, FsBlobStore};
pub use devices::DeviceStore;
pub use meta::{MetaCounts, MetadataStore, UploadSession};
pub use pg::Pg;
pub use pg_devices::PgDevices;
pub use pg_meta::PgMetadata;
pub use redb_devices::RedbDevices;
pub use redb_meta::RedbMetadata;
pub use s3_blobs::S3BlobStore;
pub use shared_layers::SharedLayers;

/// Left in a data directory whose metadata is in PostgreSQL, so a command
/// run on it without the config (`gc`, `stats`, `edit` …) refuses instead
/// of reading the empty embedded metadata (and, for `gc`, deleting every
/// blob as unreachable).
pub const POSTGRES_MARKER: &str = "metadata-in-postgres";

use anyhow::Context;
use layerlink_proto::Digest;
use sha2::Sha256;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A manifest as stored: its digest, media type and exact bytes.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// sha256 of `bytes`.
    pub digest: Digest,
    /// `mediaType` it was pushed with (Content-Type of the PUT).
    pub media_type: String,
    /// The exact bytes pushed.
    pub bytes: Vec<u8>,
}

/// Where an upload session stands between chunks: bytes received and
/// their hash state (`None` after a restart or a failed chunk: the file is
/// re-read on the next chunk).
pub type UploadCursor = Option<(u64, Sha256)>;

/// The registry's storage.
pub struct Storage {
    data_dir: PathBuf,
    db: Arc<redb::Database>,
    blobs: Blobs,
    meta: Box<dyn MetadataStore>,
    devices: Box<dyn DeviceStore>,
    shared: Option<SharedLayers>,
    upload_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<UploadCursor>>>>,
    gc_lock: RwLock<()>,
}

impl Storage {
    /// Open (creating if needed) the store under `data_dir`, metadata in
    /// the embedded database.
    pub fn open(data_dir: &Path) -> anyhow::Result<Storage> {
        Self::open_with(data_dir, &crate::config::StorageConfig::default())
    }

    /// Open (creating if needed) the store under `data_dir` with the
    /// backends `config` names (`[storage]`).
    pub fn open_with(
        data_dir: &Path,
        config: &crate::config::StorageConfig,
    ) -> anyhow::Result<Storage> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let db_path = data_dir.join("registry.redb");
        let db = redb::Database::builder()
            .set_concurrency_mode(redb::ConcurrencyMode::MultiWriter)
            .create(&db_path)
            .with_context(|| format!("opening database {}", db_path.display()))?;
        let db = Arc::new(db);
        let bucket = match config.s3_blobs() {
            None => None,
            Some(url) => Some(Arc::new(S3BlobStore::open(url, &config.s3)?)),
        };
        let blobs = match &bucket {
            None => Blobs::open(data_dir),
            Some(store) => Blobs::with_store(data_dir, Box::new(store.clone())),
        }
        .with_context(|| format!("preparing blob directories under {}", data_dir.display()))?;
        let marker = data_dir.join(POSTGRES_MARKER);
        let mut shared = None;
        let (meta, devices): (Box<dyn MetadataStore>, Box<dyn DeviceStore>) =
            match config.postgres() {
                Some(url) => {
                    if !marker.exists() {
                        // A directory that already has embedded metadata would
                        // look empty: its images are not copied over (yet).
                        let embedded = RedbMetadata::new(db.clone())?.counts()?;
                        anyhow::ensure!(
                            embedded.repositories == 0,
                            "{} holds embedded metadata ({} repositories): moving it into \
                         PostgreSQL is not supported; start from an empty data directory",
                            data_dir.display(),
                            embedded.repositories
                        );
                    }
                    // One pool for both stores.
                    let pg = Pg::connect(url).context("connecting to the PostgreSQL metadata")?;
                    let meta =
                        PgMetadata::open(pg.clone()).context("opening the PostgreSQL metadata")?;
                    let devices = PgDevices::open(pg.clone())
                        .context("opening the PostgreSQL device records")?;
                    if let Some(bucket) = &bucket {
                        shared = Some(
                            SharedLayers::open(pg, bucket.clone())
                                .context("opening the shared layer index")?,
                        );
                    }
                    if !marker.exists() {
                        std::fs::write(
                            &marker,
                            "This data directory's metadata is in PostgreSQL ([storage] metadata \
                         of the registry config): give that config to every command.\n",
                        )
                        .with_context(|| format!("writing {}", marker.display()))?;
                    }
                    (Box::new(meta), Box::new(devices))
                }
                None => {
                    anyhow::ensure!(
                        !marker.exists(),
                        "the metadata of {} is in PostgreSQL: give the registry config \
                     ([storage] metadata) with --config",
                        data_dir.display()
                    );
                    (
                        Box::new(RedbMetadata::new(db.clone())?),
                        Box::new(RedbDevices::new(db.clone())),
                    )
                }
            };
        let storage = Storage {
            data_dir: data_dir.to_owned(),
            db,
            blobs,
            meta,
            devices,
            shared,
            upload_locks: Mutex::new(HashMap::new()),
            gc_lock: RwLock::new(()),
        };
        Ok(storage)
    }

    /// The layer index and file objects replicas share, when the metadata
    /// is in PostgreSQL and the blobs in a bucket (see [`shared_layers`]).
    pub fn shared_layers(&self) -> Option<&SharedLayers> {
        self.shared.as_ref()
    }

    /// The data directory (other modules keep their files under it, e.g.
    /// `objects/`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `DATA/resume/`: archive responses kept for devices to resume
    /// (`sync::resume`, which empties it when `serve` starts; `gc` deletes
    /// what is in it when nothing serves).
    pub fn resume_dir(&self) -> PathBuf {
        self.data_dir.join("resume")
    }

    /// The shared embedded database. Other modules define their own tables
    /// in it (names prefixed by module: `index_*`, `device_*`, …).
    pub fn db(&self) -> &redb::Database {
        &self.db
    }

    /// The metadata store (manifests, tags, blob links, uploads).
    pub fn meta(&self) -> &dyn MetadataStore {
        &*self.meta
    }

    /// The device records (holdings, last seen, reported images, last
    /// sync).
    pub fn devices(&self) -> &dyn DeviceStore {
        &*self.devices
    }

    /// The blobs.
    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// Open a stored blob for reading, `None` if absent.
    pub fn open_blob(&self, digest: &Digest) -> std::io::Result<Option<BlobRead>> {
        self.blobs.open_blob(digest)
    }

    /// Size of a stored blob, `None` if absent.
    pub fn blob_size(&self, digest: &Digest) -> std::io::Result<Option<u64>> {
        self.blobs.size(digest)
    }

    /// Resolve a manifest in `repository` by tag or `sha256:` digest.
    pub fn resolve_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> anyhow::Result<Option<StoredManifest>> {
        let digest = if reference.contains(':') {
            match Digest::parse(reference) {
                Ok(d) => d,
                Err(_) => return Ok(None),
            }
        } else {
            match self.meta.tag(repository, reference)? {
                Some(d) => d,
                None => return Ok(None),
            }
        };
        self.meta.manifest(repository, &digest)
    }

    /// Store a blob read from `reader` (verified against `expected` when
    /// given) and link it to `repository`. For code that makes blobs
    /// itself (image editing). Blocking.
    pub fn put_blob(
        &self,
        repository: &str,
        mut reader: impl Read,
        expected: Option<&Digest>,
    ) -> anyhow::Result<(Digest, u64)> {
        let mut w = self.blobs.temp_writer()?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            w.write_all(&buf[..n])?;
        }
        let (digest, size) = self.blobs.commit(w, expected, None)?;
        self.meta.link_blob(repository, &digest, size)?;
        Ok((digest, size))
    }

    /// Store a manifest under `repository` (and `tag`) without the checks
    /// the HTTP handler makes: for code that builds manifests itself
    /// (image editing), which must have stored the blobs it names. The
    /// blobs listed are linked to the repository. Blocking.
    pub fn put_manifest(
        &self,
        repository: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: Vec<u8>,
        blobs: &[(Digest, u64)],
    ) -> anyhow::Result<Digest> {
        let digest = Digest::of(&bytes);
        let m = StoredManifest {
            digest,
            media_type: media_type.to_owned(),
            bytes,
        };
        self.meta.commit_manifest(repository, &m, tag, blobs)?;
        Ok(digest)
    }

    /// Held while a manifest is checked, its layers ingested and it is
    /// committed (and by in-place edits, which do the same): the garbage
    /// collector takes [`Storage::gc_exclusive`], so it never decides on a
    /// state in which a layer is half ingested or a manifest's blobs were
    /// checked but the manifest not yet stored.
    pub fn push_guard(&self) -> RwLockReadGuard<'_, ()> {
        self.gc_lock.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Exclusive against [`Storage::push_guard`]: the garbage collector.
    pub fn gc_exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.gc_lock.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The lock serialising the chunks of upload session `id`; it guards
    /// the session's [`UploadCursor`].
    pub fn upload_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<UploadCursor>> {
        let mut locks = self.upload_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(id.to_owned()).or_default().clone()
    }

    /// Drop the lock of a finished or cancelled upload session.
    pub fn forget_upload_lock(&self, id: &str) {
        let mut locks = self.upload_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.remove(id);
    }

    /// Cancel upload sessions started more than `max_age` ago and not busy
    /// right now (abandoned pushes). Returns how many were removed.
    pub fn expire_uploads(&self, max_age: std::time::Duration) -> anyhow::Result<usize> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut removed = 0;
        for s in self.meta.uploads()? {
            if now.saturating_sub(s.started) < max_age.as_secs() {
                continue;
            }
            let lock = self.upload_lock(&s.id);
            let Ok(_busy) = lock.try_lock() else { continue };
            self.blobs.remove_upload(&s.id)?;
            self.meta.delete_upload(&s.id)?;
            self.forget_upload_lock(&s.id);
            removed += 1;
        }
        Ok(removed)
    }

    /// Remove leftovers of a previous run: one-request temp files, upload
    /// sessions whose file is gone and upload files with no session. Called
    /// once by `serve` at start-up, never by other commands.
    pub fn clean_tmp(&self) -> anyhow::Result<()> {
        self.blobs.clean_temp()?;
        let sessions = self.meta.uploads()?;
        let known: std::collections::HashSet<&str> =
            sessions.iter().map(|s| s.id.as_str()).collect();
        for s in &sessions {
            if self.blobs.upload_len(&s.id)?.is_none() {
                self.meta.delete_upload(&s.id)?;
            }
        }
        let dir = self.data_dir.join("tmp").join("uploads");
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let entry = entry?;
            let name = entry.file_name();
            if !known.contains(name.to_string_lossy().as_ref()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod contract_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_tags_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let (blob, size) = s.put_blob("a/b", &b"layer"[..], None).unwrap();
        assert!(s.meta().blob_linked("a/b", &blob).unwrap());
        assert!(!s.meta().blob_linked("a", &blob).unwrap());
        let d = s
            .put_manifest(
                "a/b",
                Some("v1"),
                "application/x",
                b"{}".to_vec(),
                &[(blob, size)],
            )
            .unwrap();
        s.meta()
            .commit_manifest(
                "a/b",
                &s.resolve_manifest("a/b", "v1").unwrap().unwrap(),
                Some("v2"),
                &[],
            )
            .unwrap();
        assert_eq!(
            s.resolve_manifest("a/b", "v1").unwrap().unwrap().bytes,
            b"{}"
        );
        assert_eq!(
            s.resolve_manifest("a/b", &d.to_string())
                .unwrap()
                .unwrap()
                .media_type,
            "application/x"
        );
        assert!(s.resolve_manifest("a", "v1").unwrap().is_none());
        assert_eq!(s.meta().tags("a/b", None, 10).unwrap(), ["v1", "v2"]);
        assert_eq!(s.meta().tags("a/b", Some("v1"), 10).unwrap(), ["v2"]);
        assert_eq!(s.meta().tags("a/b", None, 1).unwrap(), ["v1"]);
        let c = s.meta().counts().unwrap();
        assert_eq!(
            (c.repositories, c.manifests, c.tags, c.tagged_images),
            (1, 1, 2, 1)
        );
        assert!(s.meta().delete_manifest("a/b", &d).unwrap());
        assert!(s.meta().tags("a/b", None, 10).unwrap().is_empty());
        assert!(!s.meta().delete_manifest("a/b", &d).unwrap());
    }

    #[test]
    fn old_upload_sessions_expire() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        for (id, started) in [("old", 1), ("new", u64::MAX / 2)] {
            s.blobs().create_upload(id).unwrap();
            let session = UploadSession {
                id: id.into(),
                repository: "r".into(),
                started,
            };
            s.meta().create_upload(&session).unwrap();
        }
        let day = std::time::Duration::from_secs(86400);
        assert_eq!(s.expire_uploads(day).unwrap(), 1);
        assert!(s.meta().upload("old").unwrap().is_none());
        assert_eq!(s.blobs().upload_len("old").unwrap(), None);
        assert!(s.meta().upload("new").unwrap().is_some());
        assert_eq!(s.blobs().upload_len("new").unwrap(), Some(0));
    }
}
