//! Blob bytes on the filesystem: `blobs/sha256/<hex>` for finished blobs,
//! `tmp/` for bytes on their way in.
//!
//! A blob is written to a temp file while it is hashed ([`BlobWriter`]),
//! then verified, fsync'd and renamed into place ([`FsBlobs::commit`]). A
//! blob already in place is success: the bytes are the same by definition,
//! so two clients pushing the same layer at once both succeed and it is
//! stored once.

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

/// The filesystem half of the store: finished blobs and temp files.
#[derive(Debug)]
pub struct FsBlobs {
    blobs: PathBuf,
    tmp: PathBuf,
    uploads: PathBuf,
}

impl FsBlobs {
    /// Use (creating) `blobs/sha256/` and `tmp/uploads/` under `data_dir`.
    pub fn open(data_dir: &Path) -> io::Result<FsBlobs> {
        let blobs = data_dir.join("blobs").join("sha256");
        let tmp = data_dir.join("tmp");
        let uploads = tmp.join("uploads");
        fs::create_dir_all(&blobs)?;
        fs::create_dir_all(&uploads)?;
        Ok(FsBlobs {
            blobs,
            tmp,
            uploads,
        })
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

    /// Where the blob `digest` lives once stored.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// Mark blob `digest` as just used (its modification time becomes now):
    /// the garbage collector spares blobs touched within its grace period,
    /// so a blob pushed again, or mounted into a repository, survives a
    /// collection that runs before the manifest naming it arrives.
    pub fn touch(&self, digest: &Digest) -> io::Result<()> {
        match File::options().write(true).open(self.path(digest)) {
            Ok(f) => f.set_modified(std::time::SystemTime::now()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every stored blob with its size and modification time (the garbage
    /// collector's view). Files whose name is not a digest are skipped.
    pub fn list(&self) -> io::Result<Vec<(Digest, u64, std::time::SystemTime)>> {
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

    /// Delete blob `digest` (absent is fine). Only the garbage collector
    /// calls this, after the metadata stopped naming it.
    pub fn remove(&self, digest: &Digest) -> io::Result<()> {
        match fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Size of a stored blob, `None` if absent.
    pub fn size(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match fs::metadata(self.path(digest)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Open a stored blob, `None` if absent.
    pub fn open_blob(&self, digest: &Digest) -> io::Result<Option<File>> {
        match File::open(self.path(digest)) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
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
    /// given), fsync it and rename it to `blobs/sha256/<hex>`. Returns the
    /// digest and size. On any error the temp file is removed and nothing
    /// is stored.
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
        let target = self.path(&found);
        if target.exists() {
            // Same name, same bytes: already stored is success (and the blob
            // is in use again: see `touch`).
            self.touch(&found)?;
            return Ok((found, writer.len));
        }
        writer.file.sync_all()?;
        fs::rename(&writer.path, &target)?;
        writer.keep = true; // nothing left to remove
        File::open(&self.blobs)?.sync_all()?;
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
        let blobs = FsBlobs::open(dir.path()).unwrap();
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
        assert_eq!(fs::read(blobs.path(&d)).unwrap(), b"hello");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 1);
    }

    #[test]
    fn upload_resumes_without_hash_state() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = FsBlobs::open(dir.path()).unwrap();
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
