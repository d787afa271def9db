//! Blob bytes: finished blobs in a [`BlobStore`] (`blobs/sha256/<hex>` on
//! the filesystem by default, or an S3-compatible bucket), `tmp/` (always
//! local) for bytes on their way in.
//!
//! A blob is written to a temp file while it is hashed ([`BlobWriter`]),
//! then verified and stored ([`Blobs::commit`]: fsync'd and renamed into
//! place, or uploaded). A blob already stored is success: the bytes are the
//! same by definition, so two clients pushing the same layer at once both
//! succeed and it is stored once.

use layerlink_proto::Digest;
use sha2::{Digest as _, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Why a blob could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The bytes do not hash to the digest the client named.
    #[error("blob digest mismatch: expected {expected}, found {found}")]
    DigestMismatch {
        /// What the client said.
        expected: Digest,
        /// What the bytes hash to.
        found: Digest,
    },
    /// Fewer or more bytes than the client announced.
    #[error("blob size mismatch: expected {expected} bytes, found {found}")]
    SizeMismatch {
        /// What the client said.
        expected: u64,
        /// What arrived.
        found: u64,
    },
    /// Filesystem trouble.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Where finished blobs live: a local directory ([`FsBlobStore`], the
/// embedded default) or an S3-compatible bucket ([`super::S3BlobStore`]).
///
/// Every method blocks: call from a blocking thread (`spawn_blocking`, a CLI
/// command), never from an async task.
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// Where the blobs are, for messages (`/data/blobs/sha256`, `s3://bucket/prefix`).
    fn location(&self) -> String;

    /// Size of a stored blob, `None` if absent.
    fn size(&self, digest: &Digest) -> io::Result<Option<u64>>;

    /// Read `len` bytes (`None`: to the end) of blob `digest` from byte
    /// `start`, streaming; `None` if the blob is absent.
    fn open(&self, digest: &Digest, start: u64, len: Option<u64>) -> io::Result<Option<BlobRead>>;

    /// Store the verified bytes of `staged` (`size` bytes hashing to
    /// `digest`) as blob `digest`. A blob already stored is success (same
    /// name, same bytes) and is touched. The staged file may be consumed
    /// (renamed) or left for the caller to remove.
    fn put_staged(&self, digest: &Digest, staged: &Path, size: u64) -> io::Result<()>;

    /// Mark blob `digest` as just used (see [`Blobs::touch`]); absent is fine.
    fn touch(&self, digest: &Digest) -> io::Result<()>;

    /// Every stored blob with its size and last write or touch time.
    fn list(&self) -> io::Result<Vec<(Digest, u64, std::time::SystemTime)>>;

    /// Delete blob `digest` (absent is fine).
    fn remove(&self, digest: &Digest) -> io::Result<()>;

    /// The blob's file when the store is a local directory.
    fn local_path(&self, digest: &Digest) -> Option<PathBuf>;
}

/// A shared store (the bucket of blobs is also the bucket of the shared
/// file objects, `crate::store::shared`).
impl<T: BlobStore + ?Sized> BlobStore for std::sync::Arc<T> {
    fn location(&self) -> String {
        (**self).location()
    }
    fn size(&self, digest: &Digest) -> io::Result<Option<u64>> {
        (**self).size(digest)
    }
    fn open(&self, digest: &Digest, start: u64, len: Option<u64>) -> io::Result<Option<BlobRead>> {
        (**self).open(digest, start, len)
    }
    fn put_staged(&self, digest: &Digest, staged: &Path, size: u64) -> io::Result<()> {
        (**self).put_staged(digest, staged, size)
    }
    fn touch(&self, digest: &Digest) -> io::Result<()> {
        (**self).touch(digest)
    }
    fn list(&self) -> io::Result<Vec<(Digest, u64, std::time::SystemTime)>> {
        (**self).list()
    }
    fn remove(&self, digest: &Digest) -> io::Result<()> {
        (**self).remove(digest)
    }
    fn local_path(&self, digest: &Digest) -> Option<PathBuf> {
        (**self).local_path(digest)
    }
}

/// A stored blob being read: a local file, or the body of an object-store
/// GET arriving through a bounded channel (at most a few chunks buffered,
/// never the whole blob).
#[derive(Debug)]
pub enum BlobRead {
    /// Part of a local file.
    File(io::Take<File>),
    /// An object-store response body.
    Remote(super::s3_blobs::RemoteRead),
}

impl Read for BlobRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BlobRead::File(f) => f.read(buf),
            BlobRead::Remote(r) => r.read(buf),
        }
    }
}

impl BlobRead {
    /// The bytes as an async stream (for HTTP response bodies).
    pub fn into_stream(self) -> futures_util::stream::BoxStream<'static, io::Result<bytes::Bytes>> {
        use futures_util::StreamExt;
        match self {
            BlobRead::File(f) => {
                let limit = f.limit();
                let file = tokio::fs::File::from_std(f.into_inner());
                tokio_util::io::ReaderStream::with_capacity(
                    tokio::io::AsyncReadExt::take(file, limit),
                    64 * 1024,
                )
                .boxed()
            }
            BlobRead::Remote(r) => r.into_stream(),
        }
    }
}

/// Finished blobs as files `<dir>/<hex>` (the embedded default,
/// `DATA/blobs/sha256/`).
#[derive(Debug)]
pub struct FsBlobStore {
    blobs: PathBuf,
}

impl FsBlobStore {
    /// Use (creating) directory `blobs`.
    pub fn open(blobs: PathBuf) -> io::Result<FsBlobStore> {
        fs::create_dir_all(&blobs)?;
        Ok(FsBlobStore { blobs })
    }

    /// Where the blob `digest` lives once stored.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }
}

impl BlobStore for FsBlobStore {
    fn location(&self) -> String {
        self.blobs.display().to_string()
    }

    fn size(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match fs::metadata(self.path(digest)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn open(&self, digest: &Digest, start: u64, len: Option<u64>) -> io::Result<Option<BlobRead>> {
        let mut f = match File::open(self.path(digest)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if start > 0 {
            f.seek(SeekFrom::Start(start))?;
        }
        Ok(Some(BlobRead::File(f.take(len.unwrap_or(u64::MAX)))))
    }

    fn put_staged(&self, digest: &Digest, staged: &Path, _size: u64) -> io::Result<()> {
        let target = self.path(digest);
        if target.exists() {
            // Same name, same bytes: already stored is success (and the blob
            // is in use again: see `touch`).
            return self.touch(digest);
        }
        File::open(staged)?.sync_all()?;
        fs::rename(staged, &target)?;
        File::open(&self.blobs)?.sync_all()?;
        Ok(())
    }

    fn touch(&self, digest: &Digest) -> io::Result<()> {
        match File::options().write(true).open(self.path(digest)) {
            Ok(f) => f.set_modified(std::time::SystemTime::now()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn list(&self) -> io::Result<Vec<(Digest, u64, std::time::SystemTime)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.blobs)? {
            let entry = entry?;
            let name = entry.file_name();
            let Ok(d) = Digest::parse(&format!("sha256:{}", name.to_string_lossy())) else {
                continue;
            };
            let m = entry.metadata()?;
            if m.is_file() {
                out.push((d, m.len(), m.modified()?));
            }
        }
        out.sort_by_key(|(d, _, _)| *d);
        Ok(out)
    }

    fn remove(&self, digest: &Digest) -> io::Result<()> {
        match fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn local_path(&self, digest: &Digest) -> Option<PathBuf> {
        Some(self.path(digest))
    }
}

/// The blob half of the store: finished blobs in a [`BlobStore`] and, always
/// local, the temp files of blobs on their way in (`DATA/tmp/`).
#[derive(Debug)]
pub struct Blobs {
    store: Box<dyn BlobStore>,
    tmp: PathBuf,
    uploads: PathBuf,
}

impl Blobs {
    /// Finished blobs in `DATA/blobs/sha256/` (the embedded default), temp
    /// files in `DATA/tmp/`.
    pub fn open(data_dir: &Path) -> io::Result<Blobs> {
        let store = FsBlobStore::open(data_dir.join("blobs").join("sha256"))?;
        Blobs::with_store(data_dir, Box::new(store))
    }

    /// Finished blobs in `store`, temp files in `DATA/tmp/`.
    pub fn with_store(data_dir: &Path, store: Box<dyn BlobStore>) -> io::Result<Blobs> {
        let tmp = data_dir.join("tmp");
        let uploads = tmp.join("uploads");
        fs::create_dir_all(&uploads)?;
        Ok(Blobs {
            store,
            tmp,
            uploads,
        })
    }

    /// The finished-blob store.
    pub fn store(&self) -> &dyn BlobStore {
        &*self.store
    }

    /// Remove temp files of one-request uploads a previous run left. Only
    /// the serving process may call this (another command opening the
    /// store must not delete a live upload).
    pub fn clean_temp(&self) -> io::Result<()> {
        for entry in fs::read_dir(&self.tmp)? {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && entry.file_name().to_string_lossy().starts_with("blob-")
            {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// The blob's file when blobs are kept in a local directory.
    pub fn local_path(&self, digest: &Digest) -> Option<PathBuf> {
        self.store.local_path(digest)
    }

    /// A local file holding blob `digest`, `None` if the blob is absent:
    /// the blob's own file in a local store, else a copy downloaded once
    /// into `DATA/tmp/blob-cache/` (for image editing, which reads blobs
    /// as files).
    pub fn local_file(&self, digest: &Digest) -> io::Result<Option<PathBuf>> {
        if let Some(p) = self.store.local_path(digest) {
            return Ok(p.exists().then_some(p));
        }
        let dir = self.tmp.join("blob-cache");
        let path = dir.join(digest.hex());
        if path.exists() {
            return Ok(Some(path));
        }
        let Some(mut r) = self.store.open(digest, 0, None)? else {
            return Ok(None);
        };
        fs::create_dir_all(&dir)?;
        let mut w = BlobWriter::create(
            self.tmp
                .join(format!("blob-{:032x}", rand::random::<u128>())),
        )?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            w.write_all(&buf[..n])?;
        }
        if Digest::from_hasher(w.hasher.clone()) != *digest {
            return Err(io::Error::other(format!(
                "blob {digest} read from {} does not hash to its name",
                self.store.location()
            )));
        }
        fs::rename(&w.path, &path)?;
        w.keep = true;
        Ok(Some(path))
    }

    /// Mark blob `digest` as just used (its modification time becomes now):
    /// the garbage collector spares blobs touched within its grace period,
    /// so a blob pushed again, or mounted into a repository, survives a
    /// collection that runs before the manifest naming it arrives.
    pub fn touch(&self, digest: &Digest) -> io::Result<()> {
        self.store.touch(digest)
    }

    /// Every stored blob with its size and modification time (the garbage
    /// collector's view). Names that are not digests are skipped.
    pub fn list(&self) -> io::Result<Vec<(Digest, u64, std::time::SystemTime)>> {
        self.store.list()
    }

    /// Delete blob `digest` (absent is fine). Only the garbage collector
    /// calls this, after the metadata stopped naming it.
    pub fn remove(&self, digest: &Digest) -> io::Result<()> {
        self.store.remove(digest)?;
        let _ = fs::remove_file(self.tmp.join("blob-cache").join(digest.hex()));
        Ok(())
    }

    /// Size of a stored blob, `None` if absent.
    pub fn size(&self, digest: &Digest) -> io::Result<Option<u64>> {
        self.store.size(digest)
    }

    /// Open a stored blob, `None` if absent.
    pub fn open_blob(&self, digest: &Digest) -> io::Result<Option<BlobRead>> {
        self.store.open(digest, 0, None)
    }

    /// Open `len` bytes of a stored blob from byte `start`, `None` if absent.
    pub fn open_range(
        &self,
        digest: &Digest,
        start: u64,
        len: u64,
    ) -> io::Result<Option<BlobRead>> {
        self.store.open(digest, start, Some(len))
    }

    /// A fresh temp file for a blob arriving in one request.
    pub fn temp_writer(&self) -> io::Result<BlobWriter> {
        let name = format!("blob-{:032x}", rand::random::<u128>());
        BlobWriter::create(self.tmp.join(name))
    }

    fn upload_path(&self, id: &str) -> PathBuf {
        self.uploads.join(id)
    }

    /// Create the (empty) temp file of upload session `id`.
    pub fn create_upload(&self, id: &str) -> io::Result<()> {
        let mut w = BlobWriter::create(self.upload_path(id))?;
        w.keep = true;
        Ok(())
    }

    /// Bytes received so far by upload session `id`, `None` if its file is gone.
    pub fn upload_len(&self, id: &str) -> io::Result<Option<u64>> {
        match fs::metadata(self.upload_path(id)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reopen upload session `id` to append. `hasher` is the hash state of
    /// the bytes so far when the caller kept it, else the file is re-read.
    pub fn resume_upload(
        &self,
        id: &str,
        hasher: Option<(u64, Sha256)>,
    ) -> io::Result<Option<BlobWriter>> {
        let path = self.upload_path(id);
        let mut file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        let hasher = match hasher {
            Some((n, h)) if n == len => h,
            _ => {
                let mut h = Sha256::new();
                let mut buf = vec![0u8; 64 * 1024];
                file.seek(SeekFrom::Start(0))?;
                loop {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                h
            }
        };
        file.seek(SeekFrom::Start(len))?;
        Ok(Some(BlobWriter {
            file,
            path,
            hasher,
            len,
            keep: true,
        }))
    }

    /// Remove the temp file of upload session `id` (absent is fine).
    pub fn remove_upload(&self, id: &str) -> io::Result<()> {
        match fs::remove_file(self.upload_path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Verify a finished writer against `expected` (digest, and size when
    /// given) and store it ([`BlobStore::put_staged`]: locally fsync +
    /// rename to `blobs/sha256/<hex>`, or an upload to the bucket). Returns
    /// the digest and size. On any error the temp file is removed and
    /// nothing is stored.
    pub fn commit(
        &self,
        writer: BlobWriter,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<(Digest, u64), BlobError> {
        let mut writer = writer;
        writer.keep = false; // removed on drop unless renamed
        let found = Digest::from_hasher(writer.hasher.clone());
        if let Some(expected) = expected {
            if *expected != found {
                return Err(BlobError::DigestMismatch {
                    expected: *expected,
                    found,
                });
            }
        }
        if let Some(expected) = expected_size {
            if expected != writer.len {
                return Err(BlobError::SizeMismatch {
                    expected,
                    found: writer.len,
                });
            }
        }
        self.store.put_staged(&found, &writer.path, writer.len)?;
        if !writer.path.exists() {
            writer.keep = true; // renamed into place: nothing left to remove
        }
        Ok((found, writer.len))
    }
}

/// A temp file that hashes what is written to it. Dropped without being
/// committed, a one-shot temp file is removed; an upload session's file is
/// kept for the next chunk.
#[derive(Debug)]
pub struct BlobWriter {
    file: File,
    path: PathBuf,
    hasher: Sha256,
    len: u64,
    keep: bool,
}

impl BlobWriter {
    fn create(path: PathBuf) -> io::Result<BlobWriter> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(BlobWriter {
            file,
            path,
            hasher: Sha256::new(),
            len: 0,
            keep: false,
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append and hash.
    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.hasher.update(data);
        self.len += data.len() as u64;
        Ok(())
    }

    /// The hash state of everything written, for the next chunk.
    pub fn hash_state(&self) -> (u64, Sha256) {
        (self.len, self.hasher.clone())
    }

    /// Undo a partly received chunk: cut the file back to `len` bytes. The
    /// hash state is then unknown, so it is rebuilt on the next resume.
    pub fn truncate_to(mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_verifies_and_dedups() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let d = Digest::of(b"hello");

        let mut w = blobs.temp_writer().unwrap();
        w.write_all(b"hellx").unwrap();
        assert!(matches!(
            blobs.commit(w, Some(&d), None),
            Err(BlobError::DigestMismatch { .. })
        ));
        assert_eq!(blobs.size(&d).unwrap(), None);
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            1,
            "only uploads/ left"
        );

        for _ in 0..2 {
            let mut w = blobs.temp_writer().unwrap();
            w.write_all(b"hel").unwrap();
            w.write_all(b"lo").unwrap();
            assert_eq!(blobs.commit(w, Some(&d), Some(5)).unwrap(), (d, 5));
        }
        assert_eq!(fs::read(blobs.local_path(&d).unwrap()).unwrap(), b"hello");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 1);
    }

    #[test]
    fn upload_resumes_without_hash_state() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        blobs.create_upload("u1").unwrap();
        let mut w = blobs.resume_upload("u1", None).unwrap().unwrap();
        w.write_all(b"abc").unwrap();
        drop(w);
        assert_eq!(blobs.upload_len("u1").unwrap(), Some(3));
        let mut w = blobs.resume_upload("u1", None).unwrap().unwrap();
        w.write_all(b"def").unwrap();
        let (d, n) = blobs.commit(w, None, None).unwrap();
        assert_eq!((d, n), (Digest::of(b"abcdef"), 6));
        assert_eq!(blobs.upload_len("u1").unwrap(), None);
    }
}
