//! Patch format 2 (archive feature `file-delta2`, `proto/SPEC.md` "Binary
//! deltas"): bsdiff's add/copy/seek controls, laid out in blocks whose
//! control numbers, literal ("extra") bytes and difference bytes are kept
//! in separate sections, so that the archive's compressor sees three
//! homogeneous streams instead of one interleaved one.
//!
//! ```text
//! patch = "LLP2" block*
//! block = varint(ctrl_len) varint(extra_len) varint(diff_len)
//!         ctrl[ctrl_len] extra[extra_len] diff[diff_len]
//! ctrl  = (varint(add_len) varint(copy_len) zigzag-varint(seek))*
//! ```
//!
//! Output starts empty, the old position at 0. For each control in order:
//! `add_len` bytes of the old file at the old position, each plus the next
//! byte of the block's `diff` section (mod 256), are appended (the old
//! position advances); the next `copy_len` bytes of the block's `extra`
//! section are appended as they are; the old position moves by `seek`. A
//! block's controls use exactly its `extra` and `diff` bytes. The patch
//! ends after a whole block.
//!
//! Why this layout (measured on the upd:v1 → upd:v2 pair, 282 modified
//! files, each patch one zstd-19 frame at the archive window): bidiff's
//! interleaved records (format 1) compress to 1,565,119 B, the same
//! controls in blocks to about 4 % less (`registry/examples/patch_sizes.rs`
//! prints both). A reader buffers one block's controls (≤ [`MAX_CTRL`]) and
//! literal bytes (≤ [`MAX_EXTRA`]) and streams the difference bytes, which
//! are unbounded: the old file and the patch are read once, in order but
//! for the seeks, and neither is held whole.

use alloc::vec::Vec;

/// The first four bytes of a format-2 patch.
pub const MAGIC: [u8; 4] = *b"LLP2";
/// Most control bytes in one block (a reader buffers them).
pub const MAX_CTRL: usize = 16 * 1024;
/// Most literal bytes in one block (a reader buffers them).
pub const MAX_EXTRA: usize = 64 * 1024;
/// Longest control triple: three 10-byte varints.
const MAX_TRIPLE: usize = 30;
/// The encoder ends a block once it holds this many difference bytes
/// (readers stream them, so this bounds only the encoder's memory).
const ENCODER_MAX_DIFF: usize = 1 << 20;

/// Writes a format-2 patch from bsdiff controls.
#[derive(Debug)]
pub struct Encoder {
    out: Vec<u8>,
    ctrl: Vec<u8>,
    extra: Vec<u8>,
    diff: Vec<u8>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

impl Encoder {
    /// An empty patch (the magic only).
    pub fn new() -> Encoder {
        Encoder {
            out: MAGIC.to_vec(),
            ctrl: Vec::new(),
            extra: Vec::new(),
            diff: Vec::new(),
        }
    }

    /// Append one control: `add` holds the difference bytes (new − old),
    /// `copy` the literal bytes, then the old position moves by `seek`.
    /// Literal runs longer than a block are split over blocks.
    pub fn push(&mut self, add: &[u8], mut copy: &[u8], seek: i64) {
        let mut add = add;
        loop {
            if self.ctrl.len() + MAX_TRIPLE > MAX_CTRL
                || self.extra.len() == MAX_EXTRA
                || self.diff.len() >= ENCODER_MAX_DIFF
            {
                self.flush_block();
            }
            let room = MAX_EXTRA - self.extra.len();
            let (now, rest) = copy.split_at(copy.len().min(room));
            let last = rest.is_empty();
            crate::compact::put_varint(&mut self.ctrl, add.len() as u64);
            crate::compact::put_varint(&mut self.ctrl, now.len() as u64);
            crate::compact::put_varint(
                &mut self.ctrl,
                crate::compact::zigzag(if last { seek } else { 0 }),
            );
            self.diff.extend_from_slice(add);
            self.extra.extend_from_slice(now);
            if last {
                return;
            }
            add = &[];
            copy = rest;
        }
    }

    fn flush_block(&mut self) {
        if self.ctrl.is_empty() {
            return;
        }
        for n in [self.ctrl.len(), self.extra.len(), self.diff.len()] {
            crate::compact::put_varint(&mut self.out, n as u64);
        }
        self.out.append(&mut self.ctrl);
        self.out.append(&mut self.extra);
        self.out.append(&mut self.diff);
    }

    /// The patch bytes of the blocks completed so far, taken out of the
    /// encoder (to stream a large patch); [`Encoder::finish`] gives the rest.
    pub fn take_output(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.out)
    }

    /// The whole patch (what [`Encoder::take_output`] has not taken).
    pub fn finish(mut self) -> Vec<u8> {
        self.flush_block();
        self.out
    }
}

#[cfg(feature = "std")]
pub use reader::Reader;

#[cfg(feature = "std")]
mod reader {
    use super::{MAGIC, MAX_CTRL, MAX_EXTRA};
    use std::io::{self, Read, Seek, SeekFrom};
    use std::vec::Vec;
    use std::{format, vec};

    fn bad(msg: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, format!("patch: {msg}"))
    }

    /// Streams the new file out of a format-2 patch and the old file.
    ///
    /// Memory: one block's controls and literal bytes (at most
    /// [`MAX_CTRL`] + [`MAX_EXTRA`]) and a 4 KiB scratch buffer. The old
    /// file is read at the old position and sought by the controls' seeks
    /// (relative); bounds on it are the caller's (wrap it). `read` returns
    /// 0 once the patch ends after a whole block; a patch cut inside a
    /// block or whose block disagrees with its controls is `InvalidData`.
    pub struct Reader<P, O> {
        patch: P,
        old: O,
        ctrl: Vec<u8>,
        ctrl_pos: usize,
        extra: Vec<u8>,
        extra_pos: usize,
        diff_left: u64,
        add_left: u64,
        copy_left: u64,
        seek: i64,
        scratch: Vec<u8>,
        started: bool,
        done: bool,
    }

    impl<P: Read, O: Read + Seek> Reader<P, O> {
        /// A reader of `patch` (positioned at its magic) against `old`
        /// (positioned at 0).
        pub fn new(patch: P, old: O) -> Self {
            Reader {
                patch,
                old,
                ctrl: Vec::new(),
                ctrl_pos: 0,
                extra: Vec::new(),
                extra_pos: 0,
                diff_left: 0,
                add_left: 0,
                copy_left: 0,
                seek: 0,
                scratch: vec![0; 4096],
                started: false,
                done: false,
            }
        }

        /// The patch stream (what is left of it is the caller's).
        pub fn into_patch(self) -> P {
            self.patch
        }

        fn patch_byte(&mut self) -> io::Result<Option<u8>> {
            let mut b = [0u8];
            loop {
                return match self.patch.read(&mut b) {
                    Ok(0) => Ok(None),
                    Ok(_) => Ok(Some(b[0])),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
            }
        }

        /// A varint of the block header; `Ok(None)` at a clean end.
        fn header_varint(&mut self, first: bool) -> io::Result<Option<u64>> {
            let mut v = 0u64;
            for i in 0..10 {
                let Some(b) = self.patch_byte()? else {
                    return if first && i == 0 {
                        Ok(None)
                    } else {
                        Err(bad("cut inside a block header"))
                    };
                };
                let bits = u64::from(b & 0x7f);
                if i == 9 && bits > 1 {
                    return Err(bad("bad varint"));
                }
                v |= bits << (7 * i);
                if b & 0x80 == 0 {
                    return Ok(Some(v));
                }
            }
            Err(bad("bad varint"))
        }

        fn ctrl_varint(&mut self) -> io::Result<u64> {
            let mut at = self.ctrl_pos;
            let mut byte = || {
                let b = self.ctrl.get(at).copied();
                at += 1;
                b
            };
            let v = crate::compact::varint(&mut byte).map_err(|_| bad("bad control"))?;
            self.ctrl_pos = at;
            Ok(v)
        }

        /// Read the next block's header, controls and literal bytes;
        /// false at the end of the patch.
        fn next_block(&mut self) -> io::Result<bool> {
            if self.extra_pos != self.extra.len() || self.diff_left != 0 {
                return Err(bad("a block's controls do not use all its bytes"));
            }
            let Some(ctrl_len) = self.header_varint(true)? else {
                return Ok(false);
            };
            let extra_len = self.header_varint(false)?.unwrap_or(0);
            let diff_len = self.header_varint(false)?.unwrap_or(0);
            if ctrl_len == 0 || ctrl_len > MAX_CTRL as u64 {
                return Err(bad("block control section out of bounds"));
            }
            if extra_len > MAX_EXTRA as u64 {
                return Err(bad("block literal section out of bounds"));
            }
            self.ctrl.resize(ctrl_len as usize, 0);
            self.patch
                .read_exact(&mut self.ctrl)
                .map_err(|e| cut(e, "controls"))?;
            self.extra.resize(extra_len as usize, 0);
            self.patch
                .read_exact(&mut self.extra)
                .map_err(|e| cut(e, "literal bytes"))?;
            self.ctrl_pos = 0;
            self.extra_pos = 0;
            self.diff_left = diff_len;
            Ok(true)
        }

        /// Load the next control; false at the end of the patch.
        fn next_control(&mut self) -> io::Result<bool> {
            if self.seek != 0 {
                self.old.seek(SeekFrom::Current(self.seek))?;
                self.seek = 0;
            }
            if self.ctrl_pos == self.ctrl.len() && !self.next_block()? {
                return Ok(false);
            }
            let add = self.ctrl_varint()?;
            let copy = self.ctrl_varint()?;
            let seek = crate::compact::unzigzag(self.ctrl_varint()?);
            if add > self.diff_left {
                return Err(bad("a control adds more bytes than its block has"));
            }
            if copy > (self.extra.len() - self.extra_pos) as u64 {
                return Err(bad("a control copies more bytes than its block has"));
            }
            self.diff_left -= add;
            (self.add_left, self.copy_left, self.seek) = (add, copy, seek);
            Ok(true)
        }
    }

    fn cut(e: io::Error, what: &str) -> io::Error {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            bad(&format!("cut inside a block's {what}"))
        } else {
            e
        }
    }

    impl<P: Read, O: Read + Seek> Read for Reader<P, O> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if !self.started {
                let mut m = [0u8; 4];
                self.patch.read_exact(&mut m).map_err(|e| cut(e, "magic"))?;
                if m != MAGIC {
                    return Err(bad("not a format-2 patch"));
                }
                self.started = true;
            }
            if buf.is_empty() {
                return Ok(0);
            }
            loop {
                if self.add_left > 0 {
                    let n = buf
                        .len()
                        .min(self.scratch.len())
                        .min(usize::try_from(self.add_left).unwrap_or(usize::MAX));
                    self.old.read_exact(&mut buf[..n])?;
                    self.patch
                        .read_exact(&mut self.scratch[..n])
                        .map_err(|e| cut(e, "difference bytes"))?;
                    for (o, d) in buf[..n].iter_mut().zip(&self.scratch[..n]) {
                        *o = o.wrapping_add(*d);
                    }
                    self.add_left -= n as u64;
                    return Ok(n);
                }
                if self.copy_left > 0 {
                    let n = buf
                        .len()
                        .min(usize::try_from(self.copy_left).unwrap_or(usize::MAX));
                    buf[..n].copy_from_slice(&self.extra[self.extra_pos..self.extra_pos + n]);
                    self.extra_pos += n;
                    self.copy_left -= n as u64;
                    return Ok(n);
                }
                if self.done {
                    return Ok(0);
                }
                if !self.next_control()? {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use std::io::{Cursor, Read};
    use std::vec;

    fn apply(patch: &[u8], old: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Reader::new(patch, Cursor::new(old)).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trips_across_blocks() {
        let old: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut e = Encoder::new();
        // Add 1000 bytes (+1 each), copy 150 KiB of literal bytes (three
        // blocks' worth), skip back 500, add 10 unchanged bytes.
        let lit: Vec<u8> = (0..150_000u32).map(|i| (i % 13) as u8).collect();
        e.push(&[1u8; 1000], &lit, -500);
        e.push(&[0u8; 10], &[], 0);
        let p = e.finish();
        let mut want: Vec<u8> = old[..1000].iter().map(|b| b.wrapping_add(1)).collect();
        want.extend_from_slice(&lit);
        want.extend_from_slice(&old[500..510]);
        assert_eq!(apply(&p, &old).unwrap(), want);
        // Many tiny controls fill the control section: more blocks.
        let mut e = Encoder::new();
        for _ in 0..5000 {
            e.push(&[0u8; 1], b"x", 0);
        }
        let p = e.finish();
        let got = apply(&p, &old).unwrap();
        assert_eq!(got.len(), 10_000);
        assert_eq!(&got[..4], &[old[0], b'x', old[1], b'x']);
    }

    #[test]
    fn an_empty_patch_is_empty() {
        assert_eq!(apply(&Encoder::new().finish(), b"old").unwrap(), b"");
    }

    #[test]
    fn hostile_patches_are_refused() {
        let old = vec![5u8; 100];
        let good = {
            let mut e = Encoder::new();
            e.push(&[1u8; 10], b"abc", 0);
            e.finish()
        };
        assert_eq!(apply(&good, &old).unwrap().len(), 13);
        // Wrong magic.
        let mut p = good.clone();
        p[0] = b'B';
        assert!(apply(&p, &old).is_err());
        // Cut anywhere inside: an error, never a short success.
        for cut in 1..good.len() {
            if cut == 4 {
                continue; // magic alone: an empty patch
            }
            assert!(apply(&good[..cut], &old).is_err(), "cut at {cut}");
        }
        // A control that adds more than the block's difference bytes.
        let mut p = MAGIC.to_vec();
        p.extend_from_slice(&[3, 0, 1, 5, 0, 0, 9]);
        assert!(apply(&p, &old).is_err());
        // A control that copies more than the block's literal bytes.
        let mut p = MAGIC.to_vec();
        p.extend_from_slice(&[3, 1, 0, 0, 2, 0, b'z']);
        assert!(apply(&p, &old).is_err());
        // Bytes a block's controls leave unused.
        let mut p = MAGIC.to_vec();
        p.extend_from_slice(&[3, 1, 0, 0, 0, 0, b'z']);
        assert!(apply(&p, &old).is_err());
        // Oversized sections.
        let mut p = MAGIC.to_vec();
        crate::compact::put_varint(&mut p, MAX_CTRL as u64 + 1);
        p.extend_from_slice(&[0, 0]);
        assert!(apply(&p, &old).is_err());
        let mut p = MAGIC.to_vec();
        p.push(3);
        crate::compact::put_varint(&mut p, MAX_EXTRA as u64 + 1);
        p.push(0);
        assert!(apply(&p, &old).is_err());
        // An add past the old file's end: the old reader's error.
        let mut e = Encoder::new();
        e.push(&[0u8; 101], &[], 0);
        assert!(apply(&e.finish(), &old).is_err());
    }
}
