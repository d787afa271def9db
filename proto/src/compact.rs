//! Compact metadata records (archive feature `compact-meta`,
//! `proto/SPEC.md` "Compact metadata").
//!
//! In a layer section built on a held layer B, an entry that equals B's
//! entry at the same path except for its mtime, mode, uid or gid travels as
//! a *record* in the base marker instead of a tar entry. A record names B's
//! entry by its index in B's **tree order** (every node of B's committed
//! tree but the root, depth first, the names of each directory sorted by
//! bytes; see [`tree_order`]) and carries the fields that changed:
//!
//! ```text
//! record = varint(gap << 4 | flags)     gap: index − previous index − 1
//!                                        (the first record: index itself)
//!          [zigzag varint mtime delta]   flags & 1: seconds − previous mtime
//!                                        (previous: the last record that had
//!                                        one, else 0)
//!          [varint mode]                 flags & 2: ≤ 0o7777
//!          [varint uid]                  flags & 4: ≤ u32::MAX
//!          [varint gid]                  flags & 8: ≤ u32::MAX
//! ```
//!
//! Varints are unsigned LEB128 (at most 10 bytes, no bits beyond 64);
//! zigzag maps 0, −1, 1, −2 … to 0, 1, 2, 3 …. Indexes strictly increase,
//! so a node is named at most once. An entry whose mtime does not change
//! costs two bytes, one that shares a new mtime with the previous record
//! also two.

use alloc::vec::Vec;
use core::cmp::Ordering;
use core::fmt;

/// Flag bit: the record sets the mtime (seconds; nanoseconds become 0).
pub const META_MTIME: u8 = 1;
/// Flag bit: the record sets the permission bits.
pub const META_MODE: u8 = 2;
/// Flag bit: the record sets the owner.
pub const META_UID: u8 = 4;
/// Flag bit: the record sets the group.
pub const META_GID: u8 = 8;
/// Largest index a record may name (a layer has fewer entries, see
/// [`crate::limits::MAX_LAYER_ENTRIES`]).
pub const MAX_META_INDEX: u64 = u32::MAX as u64;

/// One compact record, decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetaRecord {
    /// Index of B's node in tree order.
    pub index: u64,
    /// New mtime (seconds since the epoch), when it changes.
    pub mtime: Option<i64>,
    /// New permission bits (`0o7777`), when they change.
    pub mode: Option<u32>,
    /// New owner, when it changes.
    pub uid: Option<u32>,
    /// New group, when it changes.
    pub gid: Option<u32>,
}

/// Why a record list was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaError {
    /// The bytes ended inside a record.
    Truncated,
    /// A varint longer than 10 bytes or above `u64::MAX`.
    BadVarint,
    /// No flag, or an unknown flag bit.
    BadFlags,
    /// An index above [`MAX_META_INDEX`] (or an overflowing gap).
    BadIndex,
    /// A mode with bits outside `0o7777` (it would change the file type).
    BadMode,
    /// A uid or gid above `u32::MAX`.
    BadId,
    /// An mtime delta that overflows.
    BadMtime,
    /// More records than announced.
    TooMany,
}

impl fmt::Display for MetaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MetaError::Truncated => "compact metadata ends inside a record",
            MetaError::BadVarint => "compact metadata: bad varint",
            MetaError::BadFlags => "compact metadata: bad field flags",
            MetaError::BadIndex => "compact metadata: index out of range",
            MetaError::BadMode => "compact metadata: mode outside 0o7777",
            MetaError::BadId => "compact metadata: uid or gid out of range",
            MetaError::BadMtime => "compact metadata: mtime out of range",
            MetaError::TooMany => "compact metadata: more records than announced",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for MetaError {}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(crate) fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// Encodes records (in increasing index order) into the wire form.
#[derive(Debug, Default)]
pub struct MetaEncoder {
    /// The encoded bytes so far.
    pub out: Vec<u8>,
    /// Records encoded.
    pub count: u64,
    next: u64,
    mtime: i64,
}

impl MetaEncoder {
    /// An empty list.
    pub fn new() -> MetaEncoder {
        MetaEncoder::default()
    }

    /// Append `r`. Panics when its index is not above the previous one's
    /// or it changes nothing (a writer bug, not input).
    pub fn push(&mut self, r: &MetaRecord) {
        assert!(r.index >= self.next, "records out of order");
        let mut flags = 0u8;
        for (set, bit) in [
            (r.mtime.is_some(), META_MTIME),
            (r.mode.is_some(), META_MODE),
            (r.uid.is_some(), META_UID),
            (r.gid.is_some(), META_GID),
        ] {
            if set {
                flags |= bit;
            }
        }
        assert!(flags != 0, "a record must change something");
        put_varint(
            &mut self.out,
            ((r.index - self.next) << 4) | u64::from(flags),
        );
        if let Some(t) = r.mtime {
            put_varint(&mut self.out, zigzag(t.wrapping_sub(self.mtime)));
            self.mtime = t;
        }
        for v in [r.mode, r.uid, r.gid].into_iter().flatten() {
            put_varint(&mut self.out, u64::from(v));
        }
        self.next = r.index + 1;
        self.count += 1;
    }
}

/// Decodes a record list one record at a time from a byte source (the
/// reader streams; it keeps two numbers of state).
#[derive(Debug, Clone)]
pub struct MetaDecoder {
    left: u64,
    next: u64,
    mtime: i64,
}

impl MetaDecoder {
    /// A decoder for a list announced to hold `count` records.
    pub fn new(count: u64) -> MetaDecoder {
        MetaDecoder {
            left: count,
            next: 0,
            mtime: 0,
        }
    }

    /// Records still to come.
    pub fn remaining(&self) -> u64 {
        self.left
    }

    /// The next record, or `None` after the announced count. `byte` yields
    /// the list's next byte, `None` at its end.
    pub fn next_record(
        &mut self,
        byte: &mut dyn FnMut() -> Option<u8>,
    ) -> Result<Option<MetaRecord>, MetaError> {
        if self.left == 0 {
            return Ok(None);
        }
        let head = varint(byte)?;
        let flags = (head & 0xf) as u8;
        if flags == 0 {
            return Err(MetaError::BadFlags);
        }
        let index = self
            .next
            .checked_add(head >> 4)
            .filter(|&i| i <= MAX_META_INDEX)
            .ok_or(MetaError::BadIndex)?;
        let mut r = MetaRecord {
            index,
            ..MetaRecord::default()
        };
        if flags & META_MTIME != 0 {
            let t = self
                .mtime
                .checked_add(unzigzag(varint(byte)?))
                .ok_or(MetaError::BadMtime)?;
            self.mtime = t;
            r.mtime = Some(t);
        }
        if flags & META_MODE != 0 {
            let m = varint(byte)?;
            r.mode = Some(
                u32::try_from(m)
                    .ok()
                    .filter(|&m| m <= 0o7777)
                    .ok_or(MetaError::BadMode)?,
            );
        }
        if flags & META_UID != 0 {
            r.uid = Some(u32::try_from(varint(byte)?).map_err(|_| MetaError::BadId)?);
        }
        if flags & META_GID != 0 {
            r.gid = Some(u32::try_from(varint(byte)?).map_err(|_| MetaError::BadId)?);
        }
        self.next = index + 1;
        self.left -= 1;
        Ok(Some(r))
    }
}

pub(crate) fn varint(byte: &mut dyn FnMut() -> Option<u8>) -> Result<u64, MetaError> {
    let mut v = 0u64;
    for i in 0..10 {
        let b = byte().ok_or(MetaError::Truncated)?;
        let bits = u64::from(b & 0x7f);
        if i == 9 && bits > 1 {
            return Err(MetaError::BadVarint);
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(MetaError::BadVarint)
}

/// Decode a whole list of `count` records (tests, fuzzing); the bytes must
/// end exactly after the last one.
pub fn decode_all(bytes: &[u8], count: u64) -> Result<Vec<MetaRecord>, MetaError> {
    let mut d = MetaDecoder::new(count);
    let mut it = bytes.iter().copied();
    let mut out = Vec::new();
    while let Some(r) = d.next_record(&mut || it.next())? {
        out.push(r);
    }
    if it.next().is_some() {
        return Err(MetaError::TooMany);
    }
    Ok(out)
}

/// Tree order of two normalised paths: component by component, bytewise
/// (a directory comes right before what it holds, which is what a
/// depth-first walk with sorted names visits).
pub fn tree_order(a: &[u8], b: &[u8]) -> Ordering {
    a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_is_small() {
        let recs = [
            MetaRecord {
                index: 0,
                mtime: Some(1_700_000_000),
                ..Default::default()
            },
            MetaRecord {
                index: 1,
                mtime: Some(1_700_000_000),
                ..Default::default()
            },
            MetaRecord {
                index: 9,
                mtime: Some(1_600_000_000),
                mode: Some(0o4755),
                uid: Some(u32::MAX),
                gid: Some(0),
            },
            MetaRecord {
                index: 10,
                mode: Some(0o644),
                ..Default::default()
            },
        ];
        let mut e = MetaEncoder::new();
        for r in &recs {
            e.push(r);
        }
        assert_eq!(decode_all(&e.out, 4).unwrap(), recs);
        // The second record (same mtime, next index) costs two bytes.
        let mut one = MetaEncoder::new();
        one.push(&recs[0]);
        assert_eq!(e.out[one.out.len()..one.out.len() + 2], [0x01, 0x00]);
    }

    #[test]
    fn rejects_hostile_lists() {
        assert_eq!(decode_all(&[], 1), Err(MetaError::Truncated));
        assert_eq!(decode_all(&[0x00], 1), Err(MetaError::BadFlags));
        assert_eq!(decode_all(&[0x10 | 0x20], 1), Err(MetaError::BadFlags));
        assert_eq!(decode_all(&[0x02, 0x80, 0x40], 1), Err(MetaError::BadMode));
        assert_eq!(
            decode_all(&[0x04, 0x80, 0x80, 0x80, 0x80, 0x10], 1),
            Err(MetaError::BadId)
        );
        assert_eq!(decode_all(&[0xff; 11], 1), Err(MetaError::BadVarint));
        let mut big = alloc::vec![0xff; 9];
        big.push(0x01);
        assert_eq!(decode_all(&big, 1), Err(MetaError::BadIndex));
        assert_eq!(
            decode_all(&[0x01, 0x00, 0x01, 0x00], 1),
            Err(MetaError::TooMany)
        );
        // An mtime delta past i64: zigzag 2·i64::MAX after i64::MAX.
        let mut e = MetaEncoder::new();
        e.push(&MetaRecord {
            index: 0,
            mtime: Some(i64::MAX),
            ..Default::default()
        });
        e.out.extend_from_slice(&[
            0x01, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ]);
        assert_eq!(decode_all(&e.out, 2), Err(MetaError::BadMtime));
    }

    #[test]
    fn tree_order_is_depth_first() {
        let mut v: Vec<&[u8]> = alloc::vec![b"a.b", b"a/b", b"a", b"b", b"a/b/c", b"a-"];
        v.sort_by(|a, b| tree_order(a, b));
        assert_eq!(v, [&b"a"[..], b"a/b", b"a/b/c", b"a-", b"a.b", b"b"]);
    }
}
