//! Compact metadata records of a base marker (feature `compact-meta`,
//! `proto/SPEC.md` "Compact metadata"): decoded from the marker's content
//! a record at a time while the held tree is copied in tree order, and
//! checked at the end against the marker's counts and tree-order digest.

use super::Tar;
use crate::error::{Error, Result};
use layerlink_proto::compact::{MetaDecoder, MetaRecord};
use layerlink_proto::Digest;
use sha2::{Digest as _, Sha256};

/// Bytes of compact records buffered at once (a record has at most 51).
const COMPACT_BUF: usize = 256;
/// Most bytes one record takes: five varints of at most 10 bytes, plus one.
const MAX_RECORD_BYTES: usize = 51;

/// Compact metadata records of a base marker (`proto/SPEC.md`, "Compact
/// metadata"), applied while the base's tree is copied in tree order.
pub(super) struct Compact {
    dec: MetaDecoder,
    /// Record bytes not read from the archive yet.
    budget: u64,
    buf: [u8; COMPACT_BUF],
    pos: usize,
    len: usize,
    /// The next record, decoded ahead.
    next: Option<MetaRecord>,
    /// Tree-order index of the next node.
    node: u64,
    order: Sha256,
    want_order: Digest,
}

impl Compact {
    /// The records of a base marker: `n` records in `size` bytes, for a
    /// held tree whose tree order hashes to `want_order`.
    pub(super) fn new(n: u64, size: u64, want_order: Digest) -> Self {
        Compact {
            dec: MetaDecoder::new(n),
            budget: size,
            buf: [0; COMPACT_BUF],
            pos: 0,
            len: 0,
            next: None,
            node: 0,
            order: Sha256::new(),
            want_order,
        }
    }

    /// The record for the next node (`path`), if any.
    pub(super) fn take(&mut self, tar: &mut Tar<'_>, path: &[u8]) -> Result<Option<MetaRecord>> {
        self.order.update(path);
        self.order.update([0u8]);
        let node = self.node;
        self.node += 1;
        if self.next.is_none() && self.dec.remaining() > 0 {
            // Refill so that a whole record is buffered (or all that is left).
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
            while self.len < MAX_RECORD_BYTES && self.budget > 0 {
                let want = (COMPACT_BUF - self.len).min(self.budget as usize);
                let n = tar.read_data(&mut self.buf[self.len..self.len + want])?;
                if n == 0 {
                    return Err(Error::integrity("base marker shorter than its records"));
                }
                self.len += n;
                self.budget -= n as u64;
            }
            let mut it = self.buf[self.pos..self.len].iter();
            let mut used = 0usize;
            self.next = self
                .dec
                .next_record(&mut || {
                    used += 1;
                    it.next().copied()
                })
                .map_err(|e| Error::integrity(format!("base marker: {e}")))?;
            self.pos += used;
        }
        match self.next {
            Some(r) if r.index == node => {
                self.next = None;
                Ok(Some(r))
            }
            _ => Ok(None),
        }
    }

    /// After the copy: every record was used, every byte read, and the tree
    /// order was the registry's.
    pub(super) fn finish(self, diff_id: &Digest) -> Result<()> {
        if let Some(r) = self.next {
            return Err(Error::integrity(format!(
                "base marker of layer {diff_id}: compact record for node {} of a base with {}",
                r.index, self.node
            )));
        }
        if self.dec.remaining() > 0 || self.budget > 0 || self.pos != self.len {
            return Err(Error::integrity(format!(
                "base marker of layer {diff_id}: compact records do not match LAYERLINK.meta / meta-size"
            )));
        }
        if Digest::from_hasher(self.order) != self.want_order {
            return Err(Error::integrity(format!(
                "base marker of layer {diff_id}: the held base's tree order differs from the registry's"
            )));
        }
        Ok(())
    }
}
