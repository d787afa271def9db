//! References the store cannot resolve: a placeholder file is written
//! and the reference kept as [`Pending`] (bounded), the layer waits
//! uncommitted; the sync asks `POST /objects` for
//! [`Applier::pending_digests`], stores the answer
//! ([`Applier::store_objects`]) and [`Applier::resolve_pending`] links the
//! placeholders and commits the waiting layers.

use super::{decoder, hostile, Applier, Bounded, LayerWriter};
use crate::error::{Error, Result};
use crate::fsops::{self, open_existing_dir, show, split_leaf, Meta};
use crate::tar::TarReader;
use layerlink_proto::archive::{Encoding, Marker};
use layerlink_proto::limits::MAX_REPAIR_OBJECTS;
use layerlink_proto::Digest;
use rustix::fs::{self as rfs, AtFlags};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};

/// Most bytes of paths kept for unresolved references.
const MAX_PENDING_BYTES: usize = 4 * 1024 * 1024;

/// A reference waiting for its object: the placeholder's path and inode
/// in layer `layer` (an index into the applier's finished layers).
pub(super) struct Pending {
    pub(super) layer: usize,
    pub(super) path: Vec<u8>,
    pub(super) ino: u64,
    pub(super) digest: Digest,
    pub(super) meta: Meta,
}

impl Applier<'_> {
    /// Distinct digests of unresolved references (to fetch with
    /// `POST /objects`), sorted.
    pub fn pending_digests(&self) -> Vec<Digest> {
        let mut v: Vec<Digest> = self.pending.iter().map(|p| p.digest).collect();
        v.sort_unstable();
        v.dedup();
        // Content that arrived later in the stream resolves locally.
        v.retain(|d| !self.objects.has(d).unwrap_or(false));
        v
    }

    /// Store the objects of one objects response (gzip'd or zstd tar of
    /// `object` markers) that answers a request for `asked`, which must all
    /// arrive. Then [`Applier::resolve_pending`] commits the waiting layers.
    pub fn store_objects<R: Read>(&mut self, r: R, asked: &[Digest]) -> Result<()> {
        self.store_objects_encoded(r, asked, None)
    }

    /// [`Applier::store_objects`] for a response declared to be in
    /// `declared` encoding.
    pub fn store_objects_encoded<R: Read>(
        &mut self,
        mut r: R,
        asked: &[Digest],
        declared: Option<Encoding>,
    ) -> Result<()> {
        self.objects_dyn(&mut r, asked, declared)
    }

    /// [`Applier::store_objects`] for all pending digests at once, then
    /// [`Applier::resolve_pending`].
    pub fn repair<R: Read>(&mut self, r: R) -> Result<()> {
        let wanted = self.pending_digests();
        self.store_objects(r, &wanted)?;
        self.resolve_pending()
    }

    fn objects_dyn(
        &mut self,
        r: &mut dyn Read,
        wanted: &[Digest],
        declared: Option<Encoding>,
    ) -> Result<()> {
        let dec = decoder(r, declared)?;
        let bound = self.opts.max_stream_bytes;
        let mut tar = TarReader::new(Bounded {
            inner: dec,
            left: bound,
        });
        loop {
            let Some(h) = tar.next_header()? else {
                return Err(Error::integrity(
                    "objects response ended without its end marker",
                ));
            };
            match h.ll.marker {
                Some(Marker::Object) => {
                    let Some(d) = h.ll.digest else {
                        return Err(Error::integrity("object marker without a digest"));
                    };
                    let Some(p) = self.pending.iter().find(|p| p.digest == d) else {
                        continue; // not asked for: skip its content
                    };
                    let meta = p.meta.clone();
                    self.objects
                        .insert(Some(&d), h.size, &mut |b| tar.read_data(b), &meta)?;
                }
                Some(Marker::End) => break,
                _ => return Err(hostile(&h.path, "unexpected entry in an objects response")),
            }
        }
        for d in wanted {
            if !self.objects.has(d)? {
                return Err(Error::integrity(format!(
                    "the registry did not send object {d} asked for"
                )));
            }
        }
        Ok(())
    }

    /// Resolve pending references from objects now present, then commit
    /// every finished layer. Fails if one is still missing.
    pub fn resolve_pending(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        for p in &pending {
            let f = &self.finished[p.layer];
            let (parent, leaf) = split_leaf(&p.path);
            let dir = open_existing_dir(f.root.as_fd(), parent).map_err(|e| hostile(&p.path, e))?;
            match fsops::lstat_at(dir.as_fd(), leaf).map_err(|e| Error::errno("repair", e))? {
                Some(st) if st.st_ino == p.ino => {}
                _ => continue, // replaced later in the layer
            }
            rfs::unlinkat(&dir, leaf, AtFlags::empty()).map_err(|e| Error::errno("repair", e))?;
            if !self.objects.link(&p.digest, &p.meta, dir.as_fd(), leaf)? {
                let msg = format!(
                    "object {} for {:?} is still missing after repair",
                    p.digest,
                    show(&p.path)
                );
                self.pending = pending;
                return Err(Error::integrity(msg));
            }
            self.finished[p.layer].stats.repaired += 1;
        }
        for i in 0..self.finished.len() {
            if !self.finished[i].committed {
                self.commit(i)?;
            }
        }
        Ok(())
    }

    pub(super) fn reference(
        &mut self,
        lw: &mut LayerWriter,
        dir: BorrowedFd<'_>,
        leaf: &[u8],
        path: &[u8],
        d: Digest,
        meta: &Meta,
    ) -> Result<()> {
        if d == self.empty {
            let f =
                fsops::create_file_at(dir, leaf, 0o600).map_err(|e| Error::errno("creating", e))?;
            return fsops::set_meta_fd(f.as_fd(), meta, false)
                .map_err(|e| Error::errno("metadata", e));
        }
        if self.objects.link(&d, meta, dir, leaf)? {
            lw.stats.referenced_files += 1;
            if let Ok(Some(st)) = fsops::lstat_at(dir, leaf) {
                lw.stats.referenced_bytes += st.st_size as u64;
            }
            return Ok(());
        }
        // Not held after all: a placeholder until repair.
        let f = fsops::create_file_at(dir, leaf, 0o600).map_err(|e| Error::errno("creating", e))?;
        fsops::set_meta_fd(f.as_fd(), meta, false).map_err(|e| Error::errno("metadata", e))?;
        let st = rfs::fstat(&f).map_err(|e| Error::errno("fstat", e))?;
        self.add_pending(Pending {
            layer: lw.layer,
            path: path.to_vec(),
            ino: st.st_ino,
            digest: d,
            meta: meta.clone(),
        })
    }

    pub(super) fn add_pending(&mut self, p: Pending) -> Result<()> {
        self.pending_bytes += p.path.len() + 64;
        if self.pending.len() >= MAX_REPAIR_OBJECTS || self.pending_bytes > MAX_PENDING_BYTES {
            return Err(Error::integrity(
                "too many references to objects this device does not hold; run `layerlink-agent verify`",
            ));
        }
        self.pending.push(p);
        Ok(())
    }
}
