//! Layer framing ("tar-split"): everything of a layer's uncompressed tar
//! except the contents of its regular files, so that a device can
//! recompute the layer's sha256 (its diff_id) from the framing plus the
//! files it built, and so prove that its layer tree holds what the image's
//! config names (`proto/SPEC.md`, "Layer framing").
//!
//! The framing of a layer is served zstd-compressed by
//! `POST /layerlink/v1/framing` ([`FramingRequest`]). Decompressed:
//!
//! ```text
//! "LLFRAME1"  diff_id (32 bytes)
//! records:
//!   01 varint(n) <n bytes>              header: one entry's header bytes
//!                                       (PAX/GNU extension headers, preceding
//!                                       global PAX headers with their data
//!                                       and padding, and the ustar block)
//!   02 varint(size) flags [<32-byte digest>]
//!                                       content: `size` bytes of the regular
//!                                       file the header before announced, then
//!                                       zero padding to a 512-byte boundary;
//!                                       flags bit 0 `shadowed`: a later entry of
//!                                       the layer has the same path (the tree
//!                                       does not hold it); bit 1: the object's
//!                                       digest follows (always with bit 0)
//!   03 varint(n) kind                   end: the n bytes after the last entry;
//!                                       kind 0 = all zero, 1 = the n bytes follow
//! ```
//!
//! Varints are unsigned LEB128 (at most 10 bytes). This module has the
//! constants, the writer the registry uses and the record reader the agent
//! uses; no I/O.

use crate::Digest;
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// First 8 bytes of a decompressed framing.
pub const MAGIC: [u8; 8] = *b"LLFRAME1";
/// Content type of a `POST /layerlink/v1/framing` answer (one zstd stream).
pub const CONTENT_TYPE: &str = "application/vnd.layerlink.framing.v1+zstd";
/// Record tag: header bytes.
pub const TAG_HEADER: u8 = 1;
/// Record tag: a regular file's content.
pub const TAG_CONTENT: u8 = 2;
/// Record tag: the end of the archive.
pub const TAG_END: u8 = 3;
/// Content flag: a later entry of the layer has the same path.
pub const FLAG_SHADOWED: u8 = 1;
/// Content flag: the object's digest follows the flags. Set exactly for
/// shadowed entries (the device reads their content from its store by
/// digest; every other content is read from the built tree, so 32 bytes a
/// file — two thirds of a compressed framing — are not sent).
pub const FLAG_DIGEST: u8 = 2;
/// End kind: the trailer is all zero bytes.
pub const END_ZEROS: u8 = 0;
/// End kind: the trailer's bytes follow.
pub const END_DATA: u8 = 1;
/// Longest header record: one entry with the most extension headers a
/// reader accepts, each at most [`crate::limits::MAX_PAX_BYTES`].
pub const MAX_HEADER_BYTES: u64 =
    (crate::limits::MAX_EXTENSION_HEADERS as u64 + 1) * (crate::limits::MAX_PAX_BYTES + 1024);
/// Longest trailer (end-of-archive blocks and record padding; tar writers
/// pad to at most 10 KiB records).
pub const MAX_TRAILER_BYTES: u64 = 1024 * 1024;

/// `POST /layerlink/v1/framing`: the framing of one layer of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FramingRequest {
    /// Repository the image is in (access is checked against it).
    pub repository: String,
    /// Platform manifest digest from the plan.
    pub manifest_digest: Digest,
    /// The layer (diff_id); must be a layer of that manifest.
    pub layer: Digest,
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Append the magic and the layer's diff_id.
pub fn write_start(out: &mut Vec<u8>, diff_id: &Digest) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&diff_id.0);
}

/// Append a header record.
pub fn write_header(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(TAG_HEADER);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Append a content record; a shadowed entry names its object.
pub fn write_content(out: &mut Vec<u8>, size: u64, shadowed: Option<&Digest>) {
    out.push(TAG_CONTENT);
    varint(out, size);
    match shadowed {
        Some(d) => {
            out.push(FLAG_SHADOWED | FLAG_DIGEST);
            out.extend_from_slice(&d.0);
        }
        None => out.push(0),
    }
}

/// Append the end record: `len` trailer bytes, all zero (`data` = `None`)
/// or these.
pub fn write_end(out: &mut Vec<u8>, len: u64, data: Option<&[u8]>) {
    out.push(TAG_END);
    varint(out, len);
    match data {
        Some(d) => {
            out.push(END_DATA);
            out.extend_from_slice(d);
        }
        None => out.push(END_ZEROS),
    }
}

/// One record, as [`read_record`] decodes it (payload bytes of header and
/// end records are left in the stream for the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// `len` header bytes follow.
    Header {
        /// Their length (1 ..= [`MAX_HEADER_BYTES`]).
        len: u64,
    },
    /// A regular file's content.
    Content {
        /// Its size (> 0).
        size: u64,
        /// `Some(object)`: a later entry has the same path; the content is
        /// this object.
        shadowed: Option<Digest>,
    },
    /// The end: `len` trailer bytes, which follow when `data`.
    End {
        /// Trailer length (≤ [`MAX_TRAILER_BYTES`]).
        len: u64,
        /// Whether the bytes follow (else they are zero).
        data: bool,
    },
}

/// Why a framing does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    /// The stream ended inside a record or before the end record.
    Truncated,
    /// Not a framing (magic).
    BadMagic,
    /// An unknown record tag.
    BadTag(u8),
    /// A varint longer than 10 bytes or above 2^64−1.
    BadVarint,
    /// A length outside its bounds (empty or oversized header, empty
    /// content, oversized trailer).
    BadLength,
    /// Unknown flag bits or end kind.
    BadFlags,
}

impl core::fmt::Display for FramingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FramingError::Truncated => f.write_str("truncated"),
            FramingError::BadMagic => f.write_str("not a layer framing (bad magic)"),
            FramingError::BadTag(t) => write!(f, "unknown record tag {t}"),
            FramingError::BadVarint => f.write_str("malformed varint"),
            FramingError::BadLength => f.write_str("record length out of bounds"),
            FramingError::BadFlags => f.write_str("unknown flags"),
        }
    }
}

fn read_varint(byte: &mut dyn FnMut() -> Option<u8>) -> Result<u64, FramingError> {
    let mut v = 0u64;
    for i in 0..10 {
        let b = byte().ok_or(FramingError::Truncated)?;
        let bits = u64::from(b & 0x7f);
        if i == 9 && bits > 1 {
            return Err(FramingError::BadVarint);
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(FramingError::BadVarint)
}

/// Read the magic and diff_id.
pub fn read_start(byte: &mut dyn FnMut() -> Option<u8>) -> Result<Digest, FramingError> {
    for m in MAGIC {
        if byte().ok_or(FramingError::Truncated)? != m {
            return Err(FramingError::BadMagic);
        }
    }
    let mut d = [0u8; 32];
    for b in d.iter_mut() {
        *b = byte().ok_or(FramingError::Truncated)?;
    }
    Ok(Digest(d))
}

/// Read one record from `byte` (which yields `None` at the end of the
/// stream). A stream that ends before a record's tag is
/// [`FramingError::Truncated`]: a framing ends with its end record.
pub fn read_record(byte: &mut dyn FnMut() -> Option<u8>) -> Result<Record, FramingError> {
    let tag = byte().ok_or(FramingError::Truncated)?;
    match tag {
        TAG_HEADER => {
            let len = read_varint(byte)?;
            if len == 0 || len > MAX_HEADER_BYTES {
                return Err(FramingError::BadLength);
            }
            Ok(Record::Header { len })
        }
        TAG_CONTENT => {
            let size = read_varint(byte)?;
            if size == 0 {
                return Err(FramingError::BadLength);
            }
            let flags = byte().ok_or(FramingError::Truncated)?;
            match flags {
                0 => Ok(Record::Content {
                    size,
                    shadowed: None,
                }),
                f if f == FLAG_SHADOWED | FLAG_DIGEST => {
                    let mut d = [0u8; 32];
                    for b in d.iter_mut() {
                        *b = byte().ok_or(FramingError::Truncated)?;
                    }
                    Ok(Record::Content {
                        size,
                        shadowed: Some(Digest(d)),
                    })
                }
                _ => Err(FramingError::BadFlags),
            }
        }
        TAG_END => {
            let len = read_varint(byte)?;
            if len > MAX_TRAILER_BYTES {
                return Err(FramingError::BadLength);
            }
            match byte().ok_or(FramingError::Truncated)? {
                END_ZEROS => Ok(Record::End { len, data: false }),
                END_DATA => Ok(Record::End { len, data: true }),
                _ => Err(FramingError::BadFlags),
            }
        }
        t => Err(FramingError::BadTag(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn reader(bytes: &[u8]) -> impl FnMut() -> Option<u8> + '_ {
        let mut it = bytes.iter().copied();
        move || it.next()
    }

    #[test]
    fn records_round_trip() {
        let mut out = Vec::new();
        write_start(&mut out, &Digest([7; 32]));
        write_header(&mut out, &[0u8; 512]);
        write_content(&mut out, 300, Some(&Digest([9; 32])));
        write_content(&mut out, 5, None);
        write_end(&mut out, 1024, None);
        let mut r = reader(&out);
        assert_eq!(read_start(&mut r), Ok(Digest([7; 32])));
        assert_eq!(read_record(&mut r), Ok(Record::Header { len: 512 }));
        for _ in 0..512 {
            r();
        }
        assert_eq!(
            read_record(&mut r),
            Ok(Record::Content {
                size: 300,
                shadowed: Some(Digest([9; 32]))
            })
        );
        assert_eq!(
            read_record(&mut r),
            Ok(Record::Content {
                size: 5,
                shadowed: None
            })
        );
        assert_eq!(
            read_record(&mut r),
            Ok(Record::End {
                len: 1024,
                data: false
            })
        );
        assert_eq!(read_record(&mut r), Err(FramingError::Truncated));
    }

    #[test]
    fn hostile_records_are_refused() {
        let bad = |b: &[u8]| read_record(&mut reader(b)).unwrap_err();
        assert_eq!(bad(&[9]), FramingError::BadTag(9));
        assert_eq!(bad(&[TAG_HEADER, 0]), FramingError::BadLength);
        // A header longer than any reader accepts (a huge count).
        assert_eq!(
            bad(&[TAG_HEADER, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            FramingError::BadLength
        );
        assert_eq!(bad(&[TAG_HEADER, 0x80]), FramingError::Truncated);
        let mut v = vec![TAG_HEADER];
        v.extend_from_slice(&[0xff; 11]);
        assert_eq!(bad(&v), FramingError::BadVarint);
        assert_eq!(bad(&[TAG_CONTENT, 0]), FramingError::BadLength);
        assert_eq!(bad(&[TAG_CONTENT, 1, 3, 0]), FramingError::Truncated);
        assert_eq!(bad(&[TAG_CONTENT, 1]), FramingError::Truncated);
        // A digest without the shadowed flag, shadowed without a digest,
        // unknown bits.
        for f in [1, 2, 4, 0x83] {
            assert_eq!(bad(&[TAG_CONTENT, 1, f]), FramingError::BadFlags);
        }
        assert_eq!(
            bad(&[TAG_END, 0x80, 0x80, 0x80, 1, 0]),
            FramingError::BadLength
        );
        assert_eq!(bad(&[TAG_END, 0, 7]), FramingError::BadFlags);
        assert_eq!(
            read_start(&mut reader(b"LLFRAME2")),
            Err(FramingError::BadMagic)
        );
        assert_eq!(
            read_start(&mut reader(b"LLFR")),
            Err(FramingError::Truncated)
        );
    }
}
