//! Readers and writers that hash (sha256) and count what passes through
//! them: a layer's diff_id while ingest walks it, a blob's digest and its
//! diff_id while the editor reads or writes it.

use layerlink_proto::{Digest, Sha256};
use sha2::Digest as _;
use std::io::{self, Read, Write};

/// A reader that hashes what passes through it.
pub struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R> HashReader<R> {
    /// Hash everything read from `inner`.
    pub fn new(inner: R) -> HashReader<R> {
        HashReader {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Bytes read so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was read yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The inner reader, digest and length of what was read.
    pub fn finish(self) -> (R, Digest, u64) {
        (self.inner, Digest::from_hasher(self.hasher), self.len)
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// A writer that hashes what passes through it.
pub struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W> HashWriter<W> {
    /// Hash everything written to `inner`.
    pub fn new(inner: W) -> HashWriter<W> {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// The inner writer, digest and length of what was written.
    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, Digest::from_hasher(self.hasher), self.len)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
