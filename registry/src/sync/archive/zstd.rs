//! The zstd archive encoding (feature `zstd`, `proto/SPEC.md`): a sequence
//! of zstd frames whose concatenation is the dedup tar stream.
//!
//! * Each object's content of at least [`DEFAULT_INLINE_BELOW`] bytes is
//!   **one frame made once** (level
//!   [`frame_level`](crate::sync::frame::frame_level), window at most `ZSTD_MAX_WINDOW`, content size in the
//!   header, no checksum) and kept in a cache beside the object store,
//!   `objects/.frames-w<window log>/<2 hex>/<hex>.zst` (a new window limit
//!   starts a new cache), made on first use. Archives splice
//!   the cached frame **verbatim**: serving content costs a file copy, not a
//!   compression, per device.
//! * Everything between two such contents (tar headers, PAX records,
//!   padding, markers, and the contents of small files) is buffered and
//!   written as frames on the fly (level [`HEADER_LEVEL`]), up to
//!   [`HEADER_BATCH`] bytes of tar each.
//!
//! A cache file is the frame followed by a 12-byte trailer (frame length,
//! u64 LE, then `LLZ1`), written to a temporary name and renamed; a file
//! whose trailer does not match (a torn write after a crash) is made again.

use crate::store::objects::ObjectStore;
use crate::sync::delta::Patch;
use crate::sync::frame::{bulk_compressor, encoder, frame_level, Counted};
use layerlink_proto::archive::ZSTD_MAX_WINDOW_LOG;
use layerlink_proto::Digest;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// zstd level of the small header frames written per archive.
pub const HEADER_LEVEL: i32 = 9;
/// Most tar bytes one header frame carries.
pub const HEADER_BATCH: usize = 128 * 1024;
/// Contents smaller than this travel inside the header frames (compressed
/// per response with their neighbours) instead of as their own cached frame:
/// a frame of a few hundred bytes compresses far worse alone, and the CPU
/// for such small contents is negligible. `LAYERLINK_ZSTD_INLINE` overrides
/// it (0: every content is a spliced frame).
pub const DEFAULT_INLINE_BELOW: u64 = 16 * 1024;
pub(crate) const TRAILER_MAGIC: &[u8; 4] = b"LLZ1";
const TRAILER: u64 = 12;

/// See [`DEFAULT_INLINE_BELOW`].
pub fn inline_below() -> u64 {
    std::env::var("LAYERLINK_ZSTD_INLINE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_INLINE_BELOW)
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Where the cached frame of object `d` lives.
pub fn frame_path(objects: &ObjectStore, d: &Digest) -> PathBuf {
    let hex = d.hex();
    objects
        .root()
        .join(format!(".frames-w{ZSTD_MAX_WINDOW_LOG}"))
        .join(&hex[..2])
        .join(format!("{hex}.zst"))
}

/// Open the cached frame of object `d` (`size` bytes), making it first if
/// needed. Returns the file positioned at the frame and the frame's length.
pub fn open_frame(objects: &ObjectStore, d: &Digest, size: u64) -> io::Result<(File, u64)> {
    let path = frame_path(objects, d);
    if let Ok(mut f) = File::open(&path) {
        if let Some(len) = check_trailer(&mut f)? {
            return Ok((f, len));
        }
    }
    make_frame(objects, d, size, &path)?;
    let mut f = File::open(&path)?;
    match check_trailer(&mut f)? {
        Some(len) => Ok((f, len)),
        None => Err(io::Error::other(format!(
            "cached frame {} is damaged right after it was made",
            path.display()
        ))),
    }
}

/// The frame length if `f`'s trailer is intact; leaves `f` at offset 0.
pub(crate) fn check_trailer(f: &mut File) -> io::Result<Option<u64>> {
    let total = f.metadata()?.len();
    if total < TRAILER + 4 {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(total - TRAILER))?;
    let mut t = [0u8; TRAILER as usize];
    f.read_exact(&mut t)?;
    f.seek(SeekFrom::Start(0))?;
    let len = u64::from_le_bytes(t[..8].try_into().expect("8 bytes"));
    Ok((&t[8..] == TRAILER_MAGIC && len == total - TRAILER).then_some(len))
}

fn make_frame(objects: &ObjectStore, d: &Digest, size: u64, path: &PathBuf) -> io::Result<()> {
    let dir = path.parent().expect("frame path has a parent");
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let f = File::create(&tmp)?;
        let mut counted = Counted {
            inner: io::BufWriter::with_capacity(64 * 1024, f),
            n: 0,
        };
        let mut enc = encoder(&mut counted, frame_level(), size)?;
        let copied = io::copy(&mut objects.open(d)?.take(size), &mut enc)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("object {d} is shorter than {size} bytes"),
            ));
        }
        enc.finish()?;
        let len = counted.n;
        counted.inner.write_all(&len.to_le_bytes())?;
        counted.inner.write_all(TRAILER_MAGIC)?;
        counted.inner.into_inner().map_err(|e| e.into_error())?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Where an archive's uncompressed tar goes: a compressor, or (tests) a
/// plain buffer. Object content goes through [`TarOut::content`], which the
/// zstd writer answers by splicing a cached frame.
pub trait TarOut: Write {
    /// Write `size` bytes of object `d`'s content (no padding). `Ok(false)`:
    /// not handled, the caller writes the bytes itself.
    fn content(&mut self, _objects: &ObjectStore, _d: &Digest, _size: u64) -> io::Result<bool> {
        Ok(false)
    }

    /// Write the raw bytes of patch `p` (no padding). `Ok(false)`: not
    /// handled, the caller writes the bytes itself.
    fn patch(&mut self, _p: &Patch) -> io::Result<bool> {
        Ok(false)
    }

    /// An entry (header and content) is complete.
    fn entry_end(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> TarOut for flate2::write::GzEncoder<W> {}
impl TarOut for Vec<u8> {}

/// Writes a zstd archive into `out` (see the module doc).
pub struct FrameWriter<W: Write> {
    out: W,
    pending: Vec<u8>,
    batch: usize,
    compressor: zstd::bulk::Compressor<'static>,
    packed: Vec<u8>,
    copy_buf: Vec<u8>,
    /// Frames written: (header frames, content frames).
    pub frames: (u64, u64),
    /// Compressed bytes of header frames.
    pub header_bytes: u64,
    per_entry: bool,
    inline_below: u64,
}

impl<W: Write> FrameWriter<W> {
    /// A writer into `out`.
    pub fn new(out: W) -> io::Result<Self> {
        Self::with_batch(out, HEADER_BATCH, false)
    }

    /// A writer whose header frames carry at most `batch` bytes; with
    /// `per_entry`, a header frame also ends after every entry (for
    /// measuring what batching saves).
    pub fn with_batch(out: W, batch: usize, per_entry: bool) -> io::Result<Self> {
        let compressor = bulk_compressor(HEADER_LEVEL)?;
        Ok(FrameWriter {
            out,
            pending: Vec::with_capacity(batch.min(HEADER_BATCH)),
            batch: batch.clamp(1, HEADER_BATCH),
            compressor,
            packed: Vec::new(),
            copy_buf: vec![0u8; 64 * 1024],
            frames: (0, 0),
            header_bytes: 0,
            per_entry,
            inline_below: inline_below(),
        })
    }

    /// A writer that compresses *everything* (content included, nothing
    /// spliced) at `level`, in frames of at most `batch` bytes of tar: the
    /// cached cold archives (`cold.rs`), made once in the background, where
    /// neighbouring files may share a window.
    pub fn whole(out: W, level: i32, batch: usize) -> io::Result<Self> {
        Ok(FrameWriter {
            out,
            pending: Vec::with_capacity(batch.min(HEADER_BATCH)),
            batch: batch.max(1),
            compressor: bulk_compressor(level)?,
            packed: Vec::new(),
            copy_buf: Vec::new(),
            frames: (0, 0),
            header_bytes: 0,
            per_entry: false,
            inline_below: u64::MAX,
        })
    }

    fn flush_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.packed.clear();
        self.packed
            .reserve(zstd::zstd_safe::compress_bound(self.pending.len()));
        self.compressor
            .compress_to_buffer(&self.pending, &mut self.packed)?;
        self.out.write_all(&self.packed)?;
        self.frames.0 += 1;
        self.header_bytes += self.packed.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Write the last header frame; return `out`.
    pub fn finish(mut self) -> io::Result<W> {
        self.flush_pending()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for FrameWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Invariant: pending is shorter than batch between calls.
        let n = buf.len().min(self.batch - self.pending.len());
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() >= self.batch {
            self.flush_pending()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write> TarOut for FrameWriter<W> {
    fn content(&mut self, objects: &ObjectStore, d: &Digest, size: u64) -> io::Result<bool> {
        if size < self.inline_below {
            return Ok(false);
        }
        self.flush_pending()?;
        let (f, len) = open_frame(objects, d, size)?;
        let mut r = f.take(len);
        loop {
            let n = r.read(&mut self.copy_buf)?;
            if n == 0 {
                break;
            }
            self.out.write_all(&self.copy_buf[..n])?;
        }
        self.frames.1 += 1;
        Ok(true)
    }

    /// A patch of at least [`inline_below`] raw bytes is spliced from the
    /// delta cache, which keeps it as one frame made with these settings (a
    /// large file's in-place edit is megabytes of zeros around the change:
    /// one frame of a few kB, instead of one header frame per 128 KiB).
    fn patch(&mut self, p: &Patch) -> io::Result<bool> {
        if p.len < self.inline_below {
            return Ok(false);
        }
        self.flush_pending()?;
        let (f, len) = p.frame()?;
        let copied = io::copy(&mut f.take(len), &mut self.out)?;
        if copied != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("cached delta {} is torn", p.file.display()),
            ));
        }
        self.frames.1 += 1;
        Ok(true)
    }

    fn entry_end(&mut self) -> io::Result<()> {
        if self.per_entry {
            self.flush_pending()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_frames_are_made_once_and_remade_when_torn() {
        let t = tempfile::tempdir().unwrap();
        let store = ObjectStore::new(t.path().join("objects"));
        let content: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
        let d = Digest::of(&content);
        let mut st = store.stage().unwrap();
        st.put_bytes(d, &content).unwrap();
        st.publish().unwrap();
        let (mut f, len) = open_frame(&store, &d, content.len() as u64).unwrap();
        let mut frame = vec![0u8; len as usize];
        f.read_exact(&mut frame).unwrap();
        assert_eq!(zstd::decode_all(&frame[..]).unwrap(), content);
        // Window within the limit, content size in the header.
        let p = zstd::zstd_safe::get_frame_content_size(&frame).unwrap();
        assert_eq!(p, Some(content.len() as u64));
        let path = frame_path(&store, &d);
        let made = fs::metadata(&path).unwrap().modified().unwrap();
        let (_, len2) = open_frame(&store, &d, content.len() as u64).unwrap();
        assert_eq!(len2, len);
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), made);
        // Torn file: remade.
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len / 2).unwrap();
        drop(f);
        let (mut f, len3) = open_frame(&store, &d, content.len() as u64).unwrap();
        assert_eq!(len3, len);
        let mut again = vec![0u8; len as usize];
        f.read_exact(&mut again).unwrap();
        assert_eq!(again, frame);
    }
}
