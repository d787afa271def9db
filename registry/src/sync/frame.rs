//! The settings of every zstd frame an archive carries (`proto/SPEC.md`,
//! "zstd archives"): window at most `ZSTD_MAX_WINDOW`, content size in the
//! header, no checksum. Content frames, header frames, cold archives and
//! cached patches all come from here, so that any of them can be spliced
//! into an archive verbatim.

use layerlink_proto::archive::ZSTD_MAX_WINDOW_LOG;
use std::io::{self, Write};
use std::sync::atomic::{AtomicI32, Ordering};

/// Default level of the cached content frames.
pub const DEFAULT_FRAME_LEVEL: i32 = 19;

/// The config's `zstd_level`, 0 when not set.
static CONFIGURED_LEVEL: AtomicI32 = AtomicI32::new(0);

/// Set the level of the frames and cold archives this process makes (the
/// config's `zstd_level`; 1..=22, anything else is ignored).
pub fn set_frame_level(level: i32) {
    if (1..=22).contains(&level) {
        CONFIGURED_LEVEL.store(level, Ordering::Relaxed);
    }
}

/// Level of cached content frames, cached patches and cold archives:
/// `LAYERLINK_ZSTD_LEVEL` (1..=22) when set, else the config's `zstd_level`, else
/// [`DEFAULT_FRAME_LEVEL`]. Frames already cached keep the level they were
/// made with.
pub fn frame_level() -> i32 {
    std::env::var("LAYERLINK_ZSTD_LEVEL")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|l| (1..=22).contains(l))
        .unwrap_or_else(|| match CONFIGURED_LEVEL.load(Ordering::Relaxed) {
            0 => DEFAULT_FRAME_LEVEL,
            l => l,
        })
}

/// A streaming compressor for a frame of exactly `size` bytes.
pub fn encoder<W: Write>(
    w: W,
    level: i32,
    size: u64,
) -> io::Result<zstd::stream::Encoder<'static, W>> {
    let mut e = zstd::stream::Encoder::new(w, level)?;
    e.window_log(ZSTD_MAX_WINDOW_LOG)?;
    e.include_checksum(false)?;
    e.include_contentsize(true)?;
    e.set_pledged_src_size(Some(size))?;
    Ok(e)
}

/// A compressor for frames written whole from a buffer.
pub fn bulk_compressor(level: i32) -> io::Result<zstd::bulk::Compressor<'static>> {
    let mut c = zstd::bulk::Compressor::new(level)?;
    c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(ZSTD_MAX_WINDOW_LOG))?;
    c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(false))?;
    c.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))?;
    Ok(c)
}

/// A writer that counts the bytes passing through it.
pub struct Counted<W> {
    /// Where the bytes go.
    pub inner: W,
    /// Bytes written so far.
    pub n: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
