//! Layer blobs as streams: decompress (with the registry's one codec,
//! [`crate::compression`]) while hashing both the compressed and the
//! uncompressed bytes (so a read layer is verified against its
//! digest and diff_id), and compress a new tar into a temp file while
//! hashing both sides (its diff_id and blob digest come out at the end).
//! Nothing is buffered beyond fixed-size buffers.

use crate::compression::{Compression, Decoder, Encoder};
pub use crate::hashing::{HashReader, HashWriter};
use layerlink_proto::Digest;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// The compressed side: the blob's bytes, hashed, buffered.
type RawSide = BufReader<HashReader<Box<dyn Read + Send>>>;

/// The uncompressed tar of a layer blob, hashed on both sides.
pub struct LayerReader {
    tar: HashReader<Decoder<RawSide>>,
    compression: Compression,
}

/// What a layer blob hashed to once read to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerDigests {
    /// sha256 of the blob (compressed) bytes.
    pub blob: Digest,
    /// Blob size.
    pub blob_size: u64,
    /// sha256 of the uncompressed tar (the diff_id).
    pub diff_id: Digest,
}

impl LayerReader {
    /// Decompress `blob` (gzip, zstd or plain, recognised by its first bytes).
    pub fn new(blob: Box<dyn Read + Send>) -> io::Result<LayerReader> {
        let mut raw = BufReader::with_capacity(64 * 1024, HashReader::new(blob));
        let compression = Compression::sniff(raw.fill_buf()?);
        Ok(LayerReader {
            tar: HashReader::new(Decoder::new(raw, compression)?),
            compression,
        })
    }

    /// Open the file at `path` as a layer.
    pub fn open(path: &Path) -> io::Result<LayerReader> {
        LayerReader::new(Box::new(File::open(path)?))
    }

    /// How the blob is compressed.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Read the rest (tar padding, trailing bytes) and return the digests.
    pub fn finish(mut self) -> io::Result<LayerDigests> {
        io::copy(&mut self.tar, &mut io::sink())?;
        let (dec, diff_id, _) = self.tar.finish();
        let mut raw = dec.into_inner();
        io::copy(&mut raw, &mut io::sink())?;
        let (_, blob, blob_size) = raw.into_inner().finish();
        Ok(LayerDigests {
            blob,
            blob_size,
            diff_id,
        })
    }
}

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tar.read(buf)
    }
}

/// A new layer blob being written to a temp file.
pub struct LayerWriter {
    tar: HashWriter<Encoder<HashWriter<BufWriter<File>>>>,
    path: PathBuf,
}

/// A finished blob in a temp file, named by what it hashed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBlob {
    /// The temp file.
    pub path: PathBuf,
    /// sha256 of the file.
    pub digest: Digest,
    /// File size.
    pub size: u64,
    /// For a layer: sha256 of the uncompressed tar.
    pub diff_id: Digest,
}

impl LayerWriter {
    /// Write a layer compressed with `compression` to the new file `path`.
    pub fn create(path: PathBuf, compression: Compression) -> io::Result<LayerWriter> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let sink = HashWriter::new(BufWriter::with_capacity(64 * 1024, file));
        Ok(LayerWriter {
            tar: HashWriter::new(Encoder::new(sink, compression)?),
            path,
        })
    }

    /// Flush, compress the tail, fsync; the digests of both sides.
    pub fn finish(self) -> io::Result<NewBlob> {
        let (enc, diff_id, _) = self.tar.finish();
        let sink = enc.finish()?;
        let (buf, digest, size) = sink.finish();
        let file = buf.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(NewBlob {
            path: self.path,
            digest,
            size,
            diff_id,
        })
    }
}

impl Write for LayerWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tar.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tar.flush()
    }
}

/// A private temp directory for one edit, removed (with whatever is left
/// in it) when dropped. It lives on the same file system as the blobs so
/// finished files can be renamed into place.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
    next: std::cell::Cell<u32>,
}

impl Scratch {
    /// Create a fresh directory `<parent>/<prefix><random>`.
    pub fn create(parent: &Path, prefix: &str) -> io::Result<Scratch> {
        fs::create_dir_all(parent)?;
        let dir = parent.join(format!("{prefix}{:016x}", rand::random::<u64>()));
        fs::create_dir(&dir)?;
        Ok(Scratch {
            dir,
            next: std::cell::Cell::new(0),
        })
    }

    /// Remove `<parent>/<prefix>*` directories untouched for `max_age`:
    /// scratch of edits that were killed. Errors are ignored.
    pub fn sweep(parent: &Path, prefix: &str, max_age: std::time::Duration) {
        let Ok(entries) = fs::read_dir(parent) else {
            return;
        };
        for e in entries.flatten() {
            let stale = e.file_name().to_string_lossy().starts_with(prefix)
                && e.metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > max_age);
            if stale {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    /// A path for a new temp file in the directory.
    pub fn file(&self, what: &str) -> PathBuf {
        let n = self.next.get();
        self.next.set(n + 1);
        self.dir.join(format!("{n:04}-{what}"))
    }

    /// Write `bytes` to a new temp file; its digest and size.
    pub fn write_blob(&self, what: &str, bytes: &[u8]) -> io::Result<NewBlob> {
        let path = self.file(what);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        let digest = Digest::of(bytes);
        Ok(NewBlob {
            path,
            digest,
            size: bytes.len() as u64,
            diff_id: digest,
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_and_reader_agree_on_digests() {
        let dir = tempfile::tempdir().unwrap();
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let path = dir.path().join(format!("{c:?}"));
            let mut w = LayerWriter::create(path.clone(), c).unwrap();
            w.write_all(&[7u8; 100_000]).unwrap();
            let blob = w.finish().unwrap();
            assert_eq!(blob.diff_id, Digest::of(&[7u8; 100_000]));
            assert_eq!(blob.digest, Digest::of(&fs::read(&path).unwrap()));
            let mut r = LayerReader::open(&path).unwrap();
            assert_eq!(r.compression(), c);
            let mut first = [0u8; 10];
            r.read_exact(&mut first).unwrap();
            let d = r.finish().unwrap();
            assert_eq!(
                (d.blob, d.blob_size, d.diff_id),
                (blob.digest, blob.size, blob.diff_id)
            );
        }
    }
}
