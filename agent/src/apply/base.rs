//! A layer section built on a held layer (archive feature `layer-base`,
//! `proto/SPEC.md` "Layers built on a held layer"): the held tree is
//! copied into the staging tree (non-empty regular files as hard links to
//! the same objects), with the compact metadata records of the marker
//! applied on the way ([`super::compact`]), then the paths the marker
//! lists are removed.

use super::compact::Compact;
use super::{hostile, Applier, LayerWriter, Tar};
use crate::error::{Error, Result};
use crate::fsops::{
    self, file_type, has_opaque, is_whiteout, open_existing_dir, set_opaque, show, split_leaf,
    Meta, OVERLAY_OPAQUE,
};
use crate::tar::{Header, Time};
use layerlink_proto::archive::{classify_whiteout, normalize_entry_path, Whiteout};
use layerlink_proto::compact::MetaRecord;
use layerlink_proto::limits::{MAX_LAYER_ENTRIES, MAX_METADATA_BYTES, MAX_PATH_BYTES};
use layerlink_proto::Digest;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode};
use rustix::io::Errno;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};

/// Deepest directory nesting copied from a held layer (each level holds
/// three descriptors while it is copied).
const MAX_COPY_DEPTH: usize = 200;

/// A held layer's copy in progress: the archive (for compact records) and
/// the records' state.
struct Walk<'t, 'a> {
    tar: &'t mut Tar<'a>,
    cm: Option<&'t mut Compact>,
}

impl Applier<'_> {
    /// A base marker: copy the held layer's tree into the staging tree,
    /// then remove the paths the marker lists (`proto/SPEC.md`, "Layers
    /// built on a held layer").
    pub(super) fn apply_base(
        &mut self,
        lw: &mut LayerWriter,
        h: &Header,
        tar: &mut Tar<'_>,
        diff_id: &Digest,
    ) -> Result<()> {
        let Some(base) = h.ll.diff_id else {
            return Err(Error::integrity("base marker without a diff_id"));
        };
        if base == *diff_id || h.size > MAX_METADATA_BYTES {
            return Err(Error::integrity(format!(
                "bad base marker for layer {diff_id}"
            )));
        }
        if !self.store.has_layer(&base)? {
            return Err(Error::integrity(format!(
                "the registry built layer {diff_id} on layer {base}, which this store does not hold"
            )));
        }
        let src = self.store.open_layer(&base)?;
        if self.opts.progress {
            eprintln!("layer {diff_id}: building on held layer {base}");
        }
        let mut cm = match (h.ll.meta, h.ll.meta_size, h.ll.base_order) {
            (None, None, None) => None,
            (Some(n), Some(size), Some(order))
                if n <= MAX_LAYER_ENTRIES && size <= h.size && size >= n.saturating_mul(2) =>
            {
                Some(Compact::new(n, size, order))
            }
            _ => {
                return Err(Error::integrity(format!(
                    "base marker of layer {diff_id}: bad compact metadata keys"
                )))
            }
        };
        let dst =
            fsops::open_dir_at(lw.root.as_fd(), b".").map_err(|e| Error::errno("layer root", e))?;
        let mut path = Vec::new();
        let mut walk = Walk {
            tar,
            cm: cm.as_mut(),
        };
        self.copy_tree(lw, &mut walk, src.as_fd(), dst.as_fd(), &mut path, 0)?;
        if let Some(c) = cm {
            c.finish(diff_id)?;
        }
        lw.cache = None;
        // The removed paths, each ended by a NUL, streamed.
        let mut buf = [0u8; 4096];
        let mut cur: Vec<u8> = Vec::new();
        let mut removed = 0u64;
        while tar.remaining() > 0 {
            let n = tar.read_data(&mut buf)?;
            for &c in &buf[..n] {
                if c != 0 {
                    if cur.len() >= MAX_PATH_BYTES {
                        return Err(Error::integrity("base marker: removed path too long"));
                    }
                    cur.push(c);
                    continue;
                }
                self.remove_base_path(lw, &cur)?;
                removed += 1;
                cur.clear();
            }
        }
        if !cur.is_empty() || h.ll.entries != Some(removed) {
            return Err(Error::integrity(format!(
                "base marker of layer {diff_id}: {removed} removed paths, marker says {:?}",
                h.ll.entries
            )));
        }
        lw.cache = None;
        Ok(())
    }

    /// Copy the tree below `src` into `dst` (same inodes for non-empty
    /// regular files, new ones for the rest), recording directory times.
    fn copy_tree(
        &mut self,
        lw: &mut LayerWriter,
        walk: &mut Walk<'_, '_>,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        path: &mut Vec<u8>,
        depth: usize,
    ) -> Result<()> {
        if depth > MAX_COPY_DEPTH {
            return Err(Error::Other(format!(
                "held layer deeper than {MAX_COPY_DEPTH} directories at {:?}",
                show(path)
            )));
        }
        // Tree order (`layerlink_proto::compact`): names sorted by bytes.
        let mut names: Vec<Vec<u8>> = Vec::new();
        fsops::for_each_entry(src, |n, _| {
            names.push(n.to_vec());
            Ok(())
        })?;
        names.sort_unstable();
        for name in &names {
            let len = path.len();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name);
            let rec = match walk.cm.as_deref_mut() {
                Some(c) => c.take(walk.tar, path)?,
                None => None,
            };
            self.copy_entry(lw, walk, src, dst, name, path, depth, rec)?;
            path.truncate(len);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_entry(
        &mut self,
        lw: &mut LayerWriter,
        walk: &mut Walk<'_, '_>,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &[u8],
        path: &mut Vec<u8>,
        depth: usize,
        rec: Option<MetaRecord>,
    ) -> Result<()> {
        let io = |what: &str, e: Errno| {
            Error::errno(format!("{what} {} (held layer copy)", show(path)), e)
        };
        let Some(st) = fsops::lstat_at(src, name).map_err(|e| io("lstat", e))? else {
            return Ok(());
        };
        // B's metadata, with what a compact record changes.
        let meta_of = |x: fsops::Xattrs| {
            let mut m = Meta::from_stat(&st, x);
            if let Some(r) = &rec {
                if let Some(t) = r.mtime {
                    m.mtime = Time { sec: t, nsec: 0 };
                }
                m.mode = r.mode.unwrap_or(m.mode);
                m.uid = r.uid.unwrap_or(m.uid);
                m.gid = r.gid.unwrap_or(m.gid);
            }
            m
        };
        let ft = file_type(&st);
        if rec.is_some() {
            if is_whiteout(&st) {
                return Err(hostile(path, "compact metadata record for a whiteout"));
            }
            lw.stats.compact += 1;
        }
        match ft {
            FileType::Directory => {
                rfs::mkdirat(dst, name, Mode::from_raw_mode(0o700)).map_err(|e| io("mkdir", e))?;
                let s = fsops::open_dir_at(src, name).map_err(|e| io("opening", e))?;
                let d = fsops::open_dir_at(dst, name).map_err(|e| io("opening", e))?;
                let x = fsops::read_xattrs_fd(s.as_fd()).map_err(|e| io("xattrs of", e))?;
                let meta = meta_of(x);
                fsops::set_meta_fd(d.as_fd(), &meta, false).map_err(|e| io("metadata of", e))?;
                if has_opaque(s.as_fd()) {
                    set_opaque(d.as_fd()).map_err(|e| io("marking opaque", e))?;
                }
                if fsops::is_implied(s.as_fd()) {
                    fsops::mark_implied(d.as_fd()).map_err(|e| io("marking implied", e))?;
                }
                lw.dirs.record(path, meta.mtime)?;
                lw.stats.kept += 1;
                self.copy_tree(lw, walk, s.as_fd(), d.as_fd(), path, depth + 1)?;
                return Ok(());
            }
            FileType::RegularFile if st.st_size > 0 && rec.is_some() => {
                // The same content with other metadata: another variant.
                let (d, linked) = self.copy_as_variant(src, name, &st, dst, name, meta_of, io)?;
                if !linked {
                    return Err(Error::Other(format!("object {d} vanished while copying")));
                }
            }
            FileType::RegularFile if st.st_size > 0 => {
                match rfs::linkat(src, name, dst, name, AtFlags::empty()) {
                    Ok(()) => {}
                    // The variant is full: store the content once more.
                    Err(Errno::MLINK) => self.link_new_variant(src, name, &st, dst, name)?,
                    Err(e) => return Err(io("linking", e)),
                }
            }
            FileType::RegularFile => {
                // Empty files are never linked (store invariant).
                let x = fsops::read_xattrs_at(src, name).map_err(|e| io("xattrs of", e))?;
                let meta = meta_of(x);
                let f = fsops::create_file_at(dst, name, 0o600).map_err(|e| io("creating", e))?;
                fsops::set_meta_fd(f.as_fd(), &meta, false).map_err(|e| io("metadata of", e))?;
            }
            FileType::Symlink => {
                let target =
                    rfs::readlinkat(src, name, Vec::new()).map_err(|e| io("readlink", e))?;
                rfs::symlinkat(target.as_bytes(), dst, name).map_err(|e| io("symlink", e))?;
                let x = fsops::read_xattrs_at(src, name).map_err(|e| io("xattrs of", e))?;
                fsops::set_meta_at(dst, name, &meta_of(x), ft).map_err(|e| io("metadata of", e))?;
            }
            FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo => {
                if is_whiteout(&st) {
                    rfs::mknodat(dst, name, FileType::CharacterDevice, Mode::empty(), 0)
                        .map_err(|e| io("creating whiteout", e))?;
                } else {
                    if ft != FileType::Fifo && !self.opts.allow_devices {
                        return Err(hostile(path, "device nodes are not allowed (--no-devices)"));
                    }
                    rfs::mknodat(
                        dst,
                        name,
                        ft,
                        Mode::from_raw_mode(st.st_mode & 0o7777),
                        st.st_rdev,
                    )
                    .map_err(|e| io("mknod", e))?;
                    let x = fsops::read_xattrs_at(src, name).map_err(|e| io("xattrs of", e))?;
                    fsops::set_meta_at(dst, name, &meta_of(x), ft)
                        .map_err(|e| io("metadata of", e))?;
                }
            }
            _ => {
                return Err(Error::integrity(format!(
                    "held layer has an unsupported file type at {:?}",
                    show(path)
                )))
            }
        }
        lw.stats.kept += 1;
        Ok(())
    }

    /// Store regular file `name` in `src` (lstat `st`) once more as a new
    /// variant and link it to `dst/leaf`: what a full hard-link count
    /// (`EMLINK`) leaves.
    pub(super) fn link_new_variant(
        &mut self,
        src: BorrowedFd<'_>,
        name: &[u8],
        st: &rfs::Stat,
        dst: BorrowedFd<'_>,
        leaf: &[u8],
    ) -> Result<()> {
        let err = |what: &str, e: Errno| Error::errno(format!("{what} {}", show(name)), e);
        self.copy_as_variant(src, name, st, dst, leaf, |x| Meta::from_stat(st, x), err)?;
        Ok(())
    }

    /// Store regular file `name` in `src` (lstat `st`) as a new object with
    /// the metadata `meta_of` makes from its xattrs and link it to
    /// `dst/leaf`. Returns the object and whether the link was made.
    #[allow(clippy::too_many_arguments)]
    fn copy_as_variant(
        &mut self,
        src: BorrowedFd<'_>,
        name: &[u8],
        st: &rfs::Stat,
        dst: BorrowedFd<'_>,
        leaf: &[u8],
        meta_of: impl FnOnce(fsops::Xattrs) -> Meta,
        err: impl Fn(&str, Errno) -> Error,
    ) -> Result<(Digest, bool)> {
        let mut f = fsops::open_file_at(src, name).map_err(|e| err("opening", e))?;
        let x = fsops::read_xattrs_fd(f.as_fd()).map_err(|e| err("xattrs of", e))?;
        let meta = meta_of(x);
        let d = self.objects.insert(
            None,
            st.st_size as u64,
            &mut |b| {
                f.read(b)
                    .map_err(|e| Error::io("reading a file to copy", e))
            },
            &meta,
        )?;
        let linked = self.objects.link(&d, &meta, dst, leaf)?;
        Ok((d, linked))
    }

    /// Remove one path a base marker lists from the staging tree.
    fn remove_base_path(&mut self, lw: &mut LayerWriter, raw: &[u8]) -> Result<()> {
        let path = normalize_entry_path(raw).map_err(|e| hostile(raw, e))?;
        let root = lw.root.as_fd();
        let err = |e: Errno| Error::errno(format!("removing {}", show(&path)), e);
        match classify_whiteout(&path) {
            Whiteout::Opaque(dir) => {
                if let Ok(fd) = open_existing_dir(root, &dir) {
                    match rfs::fremovexattr(&fd, OVERLAY_OPAQUE) {
                        Ok(()) | Err(Errno::NODATA) => {}
                        Err(e) => return Err(err(e)),
                    }
                }
            }
            Whiteout::Remove(target) => {
                let (parent, leaf) = split_leaf(&target);
                if let Ok(dir) = open_existing_dir(root, parent) {
                    if let Some(st) = fsops::lstat_at(dir.as_fd(), leaf).map_err(err)? {
                        if is_whiteout(&st) {
                            rfs::unlinkat(&dir, leaf, AtFlags::empty()).map_err(err)?;
                        }
                    }
                }
            }
            Whiteout::None => {
                let (parent, leaf) = split_leaf(&path);
                if let Ok(dir) = open_existing_dir(root, parent) {
                    fsops::remove_at(dir.as_fd(), leaf).map_err(err)?;
                }
            }
        }
        Ok(())
    }
}
