//! Decompressing a dedup archive: gzip (one member) or zstd (a sequence of
//! frames with a bounded window), chosen by the stream's magic number and
//! checked against what the response said it is.
//!
//! The zstd side is [`ruzstd`]'s `FrameDecoder` (pure Rust, no `unsafe` in
//! our code) driven one frame at a time. Before a frame reaches it, its
//! header is parsed here and refused when it asks for a window above
//! [`ZSTD_MAX_WINDOW`], names a dictionary, is a skippable frame or is
//! reserved; so the decoder's buffer never grows beyond the limit plus one
//! block, whatever the registry sends. A frame that declares its content size
//! must decode to exactly that many bytes.
//!
//! Cost, measured (Nov 2026): the stripped static aarch64-musl agent with
//! TLS grew from 1,377,888 B to 1,443,424 B (budget 1,572,864 B); peak RSS
//! of a cold sync of base-a:v1 (release-agent build, native) is 3,180 KiB
//! with gzip and 4,376 KiB with zstd — ruzstd's ring buffer (512 KiB for a
//! 256 KiB window), literal, block and sequence buffers. Those figures were
//! of a dynamically linked PIE glibc build, whose floor (`--version`) is
//! 2,180 KiB; linked like the device build (static, not PIE: 1,388 KiB
//! floor), a cold sync of base-a:v1 with zstd peaks at 3.63 MiB
//! (`scripts/bench.sh` measures that build). The C-binding `zstd` crate was
//! not measured (it needs the C library cross-compiled per target).
//!
//! Errors in the data are `io::ErrorKind::InvalidData` (the tar reader turns
//! them into integrity errors, exit 5); errors of the underlying stream
//! (a cut connection, a timeout, an early EOF) keep their own kind, so they
//! stay transient and are retried.

use layerlink_proto::archive::{Encoding, ZSTD_MAX_WINDOW};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use std::io::{self, Read};

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Read the first 4 bytes of `r` (fewer only at EOF).
fn read_head(r: &mut dyn Read, head: &mut [u8; 4]) -> io::Result<usize> {
    let mut n = 0;
    while n < 4 {
        match r.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The archive stream with its first 4 bytes (already read) put back.
type Rewound<'a> = io::Chain<io::Cursor<[u8; 4]>, &'a mut dyn Read>;

/// The decompressed tar stream of an archive, whichever its encoding.
pub enum ArchiveDecoder<'a> {
    /// One gzip member.
    Gzip(Box<flate2::read::GzDecoder<Rewound<'a>>>),
    /// zstd frames.
    Zstd(Box<ZstdFrames<&'a mut dyn Read>>),
}

impl<'a> ArchiveDecoder<'a> {
    /// Start decoding `r`. Its first bytes decide the encoding; when
    /// `declared` is given (the response's content type), they must match
    /// it.
    pub fn new(r: &'a mut dyn Read, declared: Option<Encoding>) -> io::Result<Self> {
        let mut head = [0u8; 4];
        let n = read_head(r, &mut head)?;
        if n < 4 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive stream ended before its first 4 bytes",
            ));
        }
        let found = Encoding::sniff(&head).ok_or_else(|| {
            invalid(format!(
                "archive is neither gzip nor zstd (starts with {head:02x?})"
            ))
        })?;
        if let Some(d) = declared {
            if d != found {
                return Err(invalid(format!(
                    "the response says {} but the archive is {}",
                    d.as_str(),
                    found.as_str()
                )));
            }
        }
        Ok(match found {
            Encoding::Gzip => ArchiveDecoder::Gzip(Box::new(flate2::read::GzDecoder::new(
                io::Cursor::new(head).chain(r),
            ))),
            Encoding::Zstd => ArchiveDecoder::Zstd(Box::new(ZstdFrames::after_magic(r))),
        })
    }

    /// The encoding being decoded.
    pub fn encoding(&self) -> Encoding {
        match self {
            ArchiveDecoder::Gzip(_) => Encoding::Gzip,
            ArchiveDecoder::Zstd(_) => Encoding::Zstd,
        }
    }
}

impl Read for ArchiveDecoder<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ArchiveDecoder::Gzip(g) => g.read(buf),
            ArchiveDecoder::Zstd(z) => z.read(buf),
        }
    }
}

/// A source that remembers how it failed, so a decoder error caused by the
/// stream (cut, timeout, EOF) is told apart from bad data.
struct Tracked<R> {
    inner: R,
    failed: Option<io::ErrorKind>,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() => {
                self.failed = Some(io::ErrorKind::UnexpectedEof);
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.failed = Some(e.kind());
                }
                Err(e)
            }
        }
    }
}

/// A parsed zstd frame header (RFC 8878 §3.1.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// `Window_Size` in bytes (the content size for single-segment frames).
    pub window: u64,
    /// `Frame_Content_Size`, when present.
    pub content_size: Option<u64>,
}

/// Parse the frame header whose 4 magic bytes were already read: reads the
/// rest of it from `r` into `out` (magic included) and returns its length.
/// Refuses what a layerlink archive never carries (dictionaries, reserved
/// bits) and windows above [`ZSTD_MAX_WINDOW`].
fn read_frame_header(
    r: &mut dyn Read,
    magic: [u8; 4],
    out: &mut [u8; 18],
) -> io::Result<(usize, FrameHeader)> {
    let m = u32::from_le_bytes(magic);
    if (0x184D_2A50..=0x184D_2A5F).contains(&m) {
        return Err(invalid("zstd archive: skippable frames are not allowed"));
    }
    if magic != [0x28, 0xb5, 0x2f, 0xfd] {
        return Err(invalid(format!(
            "zstd archive: expected a zstd frame, found bytes {magic:02x?} (encoding switched midway?)"
        )));
    }
    out[..4].copy_from_slice(&magic);
    let mut len = 4;
    let mut byte = [0u8; 1];
    r.read_exact(&mut byte)?;
    let desc = byte[0];
    out[len] = desc;
    len += 1;
    let fcs_flag = desc >> 6;
    let single = desc & 0x20 != 0;
    if desc & 0x08 != 0 {
        return Err(invalid("zstd frame header: reserved bit set"));
    }
    if desc & 0x03 != 0 {
        return Err(invalid(
            "zstd frame names a dictionary (not allowed in archives)",
        ));
    }
    let mut window = None;
    if !single {
        r.read_exact(&mut byte)?;
        out[len] = byte[0];
        len += 1;
        let exp = u64::from(byte[0] >> 3);
        let mantissa = u64::from(byte[0] & 7);
        let base = 1u64 << (10 + exp);
        window = Some(base + base / 8 * mantissa);
    }
    let fcs_bytes = match (fcs_flag, single) {
        (0, false) => 0,
        (0, true) => 1,
        (1, _) => 2,
        (2, _) => 4,
        _ => 8,
    };
    let mut content_size = None;
    if fcs_bytes > 0 {
        let mut b = [0u8; 8];
        r.read_exact(&mut b[..fcs_bytes])?;
        out[len..len + fcs_bytes].copy_from_slice(&b[..fcs_bytes]);
        len += fcs_bytes;
        let mut v = u64::from_le_bytes(b);
        if fcs_bytes == 2 {
            v += 256;
        }
        content_size = Some(v);
    }
    let window = match window {
        Some(w) => w,
        None => content_size.unwrap_or(0),
    };
    if window > ZSTD_MAX_WINDOW {
        return Err(invalid(format!(
            "zstd frame asks for a {window}-byte window; archives may use at most {ZSTD_MAX_WINDOW}"
        )));
    }
    Ok((
        len,
        FrameHeader {
            window,
            content_size,
        },
    ))
}

/// Decodes a stream of zstd frames (see the module doc).
pub struct ZstdFrames<R> {
    src: Tracked<R>,
    dec: FrameDecoder,
    /// Inside a frame: its header and the bytes it produced so far.
    frame: Option<(FrameHeader, u64)>,
    /// The first frame's magic was read by the caller.
    magic_read: bool,
    done: bool,
}

impl<R: Read> ZstdFrames<R> {
    /// Frames from `r`, which starts at a frame.
    pub fn new(r: R) -> Self {
        ZstdFrames {
            src: Tracked {
                inner: r,
                failed: None,
            },
            dec: FrameDecoder::new(),
            frame: None,
            magic_read: false,
            done: false,
        }
    }

    /// Frames from `r`, whose first frame's 4 magic bytes were already read.
    fn after_magic(r: R) -> Self {
        let mut z = Self::new(r);
        z.magic_read = true;
        z
    }

    /// An error from the decoder: the stream's own failure if it had one,
    /// else bad data.
    fn decoder_error(&mut self, e: impl std::fmt::Display) -> io::Error {
        match self.src.failed.take() {
            Some(kind) => io::Error::new(kind, format!("archive stream: {e}")),
            None => invalid(format!("corrupt zstd frame: {e}")),
        }
    }

    /// Start the next frame; `Ok(false)` at a clean end of the stream.
    fn next_frame(&mut self) -> io::Result<bool> {
        let mut magic = [0x28, 0xb5, 0x2f, 0xfd];
        if !std::mem::take(&mut self.magic_read) {
            let n = read_head(&mut self.src, &mut magic)?;
            if n == 0 {
                return Ok(false);
            }
            if n < 4 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "archive stream ended inside a zstd frame header",
                ));
            }
        }
        let mut hdr = [0u8; 18];
        let (len, fh) = read_frame_header(&mut self.src, magic, &mut hdr)?;
        if let Err(e) = self.dec.reset(&hdr[..len]) {
            return Err(invalid(format!("bad zstd frame header: {e}")));
        }
        self.frame = Some((fh, 0));
        Ok(true)
    }
}

impl<R: Read> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.done {
                return Ok(0);
            }
            let Some((fh, produced)) = self.frame else {
                if !self.next_frame()? {
                    self.done = true;
                }
                continue;
            };
            if self.dec.can_collect() > 0 {
                let n = self.dec.read(buf)?;
                let produced = produced + n as u64;
                if fh.content_size.is_some_and(|c| produced > c) {
                    return Err(invalid(
                        "zstd frame decodes to more bytes than its header declares",
                    ));
                }
                self.frame = Some((fh, produced));
                return Ok(n);
            }
            if self.dec.is_finished() {
                if fh.content_size.is_some_and(|c| produced != c) {
                    return Err(invalid(
                        "zstd frame decodes to fewer bytes than its header declares",
                    ));
                }
                self.frame = None;
                continue;
            }
            if let Err(e) = self
                .dec
                .decode_blocks(&mut self.src, BlockDecodingStrategy::UptoBlocks(1))
            {
                return Err(self.decoder_error(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(bytes: &[u8]) -> io::Result<FrameHeader> {
        let mut out = [0u8; 18];
        let mut r = &bytes[4..];
        read_frame_header(&mut r, bytes[..4].try_into().unwrap(), &mut out).map(|(_, h)| h)
    }

    #[test]
    fn frame_headers() {
        // single segment, 1-byte content size 5
        let h = header(&[0x28, 0xb5, 0x2f, 0xfd, 0x20, 5]).unwrap();
        assert_eq!(h.window, 5);
        assert_eq!(h.content_size, Some(5));
        // window descriptor exp=8 (256 KiB), 2-byte fcs (+256)
        let h = header(&[0x28, 0xb5, 0x2f, 0xfd, 0x40, 8 << 3, 0, 1]).unwrap();
        assert_eq!(h.window, 256 * 1024);
        assert_eq!(h.content_size, Some(512));
        // 288 KiB window (exp 8, mantissa 1): too big
        let e = header(&[0x28, 0xb5, 0x2f, 0xfd, 0x00, 8 << 3 | 1]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("window"), "{e}");
        // single segment with a 4-byte content size of 1 MiB: too big
        let e = header(&[0x28, 0xb5, 0x2f, 0xfd, 0xa0, 0, 0, 0x10, 0]).unwrap_err();
        assert!(e.to_string().contains("window"), "{e}");
        // ... and of 256 KiB + 1
        let e = header(&[0x28, 0xb5, 0x2f, 0xfd, 0xa0, 1, 0, 4, 0]).unwrap_err();
        assert!(e.to_string().contains("window"), "{e}");
        // dictionary id
        assert!(header(&[0x28, 0xb5, 0x2f, 0xfd, 0x21, 0, 1]).is_err());
        // skippable frame, gzip in the middle
        assert!(header(&[0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0]).is_err());
        let e = header(&[0x1f, 0x8b, 8, 0, 0]).unwrap_err();
        assert!(e.to_string().contains("switched"), "{e}");
    }
}
