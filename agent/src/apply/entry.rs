//! One tar entry of a layer section into the staging tree: the path
//! normalized, parent directories opened (or created with the lower
//! layers' metadata) without following symlinks, whiteouts turned into
//! overlayfs forms, new files stored as objects, references linked,
//! intra-layer hard links checked, delta entries rebuilt.

use super::repair::Pending;
use super::{hostile, Applier, LayerWriter, Tar};
use crate::error::{Error, Result};
use crate::fsops::{
    self, file_type, has_opaque, is_whiteout, open_existing_dir, set_opaque, show, split_leaf, Meta,
};
use crate::tar::{Header, Kind};
use layerlink_proto::archive::{
    classify_whiteout, normalize_entry_path, parse_reference_link, PathError, Whiteout,
};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode};
use rustix::io::Errno;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

impl Applier<'_> {
    /// Metadata of `path` as a directory in the nearest lower layer that has
    /// it (not through whiteouts or opaque directories).
    pub(super) fn lower_dir_meta(&self, path: &[u8]) -> Result<Option<Meta>> {
        'lowers: for lower in &self.lowers {
            let mut cur = fsops::open_dir_at(lower.as_fd(), b".")
                .map_err(|e| Error::errno("lower layer", e))?;
            if !path.is_empty() {
                for comp in path.split(|&c| c == b'/') {
                    match fsops::open_dir_at(cur.as_fd(), comp) {
                        Ok(fd) => cur = fd,
                        Err(Errno::NOENT) => {
                            if has_opaque(cur.as_fd()) {
                                return Ok(None);
                            }
                            continue 'lowers;
                        }
                        Err(_) => return Ok(None), // a symlink, file or whiteout hides lower ones
                    }
                }
            }
            let st = rfs::fstat(&cur).map_err(|e| Error::errno("lower layer", e))?;
            let x =
                fsops::read_xattrs_fd(cur.as_fd()).map_err(|e| Error::errno("lower layer", e))?;
            return Ok(Some(Meta::from_stat(&st, x)));
        }
        Ok(None)
    }

    /// Open the parent directory `parent` of an entry, creating missing
    /// directories (with the lower layers' metadata) and refusing symlinks.
    fn parent_dir(&self, lw: &mut LayerWriter, parent: &[u8], entry: &[u8]) -> Result<OwnedFd> {
        if let Some((p, fd)) = &lw.cache {
            if p == parent {
                return fsops::open_dir_at(fd.as_fd(), b".")
                    .map_err(|e| Error::errno("reopening a directory", e));
            }
        }
        let mut cur =
            fsops::open_dir_at(lw.root.as_fd(), b".").map_err(|e| Error::errno("layer root", e))?;
        if !parent.is_empty() {
            let mut walked = 0usize;
            for comp in parent.split(|&c| c == b'/') {
                let here = &parent[..walked + comp.len()];
                walked += comp.len() + 1;
                cur = self.child_dir(lw, cur.as_fd(), comp, here, entry)?;
            }
        }
        let dup = fsops::open_dir_at(cur.as_fd(), b".")
            .map_err(|e| Error::errno("reopening a directory", e))?;
        lw.cache = Some((parent.to_vec(), dup));
        Ok(cur)
    }

    /// Open (or implicitly create) directory `comp` in `dir`.
    fn child_dir(
        &self,
        lw: &mut LayerWriter,
        dir: BorrowedFd<'_>,
        comp: &[u8],
        here: &[u8],
        entry: &[u8],
    ) -> Result<OwnedFd> {
        match fsops::open_dir_at(dir, comp) {
            Ok(fd) => Ok(fd),
            Err(Errno::NOENT) => {
                let meta = self.lower_dir_meta(here)?;
                self.make_dir(lw, dir, comp, here, meta.as_ref(), false)
            }
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                let st = fsops::lstat_at(dir, comp).map_err(|e| Error::errno("lstat", e))?;
                match st {
                    Some(st) if is_whiteout(&st) => {
                        // Deleted in this layer, then written into: a new,
                        // opaque directory.
                        rfs::unlinkat(dir, comp, AtFlags::empty())
                            .map_err(|e| Error::errno("whiteout", e))?;
                        self.make_dir(lw, dir, comp, here, None, true)
                    }
                    Some(st) if file_type(&st) == FileType::Symlink => Err(hostile(
                        entry,
                        format!("goes through the symlink {:?}", show(here)),
                    )),
                    _ => Err(hostile(
                        entry,
                        format!("parent {:?} is not a directory", show(here)),
                    )),
                }
            }
            Err(e) => Err(Error::errno(format!("opening {}", show(here)), e)),
        }
    }

    fn make_dir(
        &self,
        lw: &mut LayerWriter,
        dir: BorrowedFd<'_>,
        comp: &[u8],
        here: &[u8],
        meta: Option<&Meta>,
        opaque: bool,
    ) -> Result<OwnedFd> {
        rfs::mkdirat(dir, comp, Mode::from_raw_mode(0o755))
            .map_err(|e| Error::errno(format!("mkdir {}", show(here)), e))?;
        let fd = fsops::open_dir_at(dir, comp)
            .map_err(|e| Error::errno(format!("opening {}", show(here)), e))?;
        // Only ever called for directories the tar does not list (yet).
        fsops::mark_implied(fd.as_fd())
            .map_err(|e| Error::errno(format!("marking {} implied", show(here)), e))?;
        if let Some(m) = meta {
            fsops::set_meta_fd(fd.as_fd(), m, false)
                .map_err(|e| Error::errno(format!("metadata of {}", show(here)), e))?;
            lw.dirs.record(here, m.mtime)?;
        }
        if opaque {
            set_opaque(fd.as_fd())
                .map_err(|e| Error::errno(format!("marking {} opaque", show(here)), e))?;
        }
        Ok(fd)
    }

    pub(super) fn apply_entry(
        &mut self,
        lw: &mut LayerWriter,
        h: &Header,
        tar: &mut Tar<'_>,
    ) -> Result<()> {
        let path = match normalize_entry_path(&h.path) {
            Ok(p) => p,
            Err(PathError::Empty) if h.kind == Kind::Dir => {
                // The layer root ("./").
                let meta = Meta::from_header(h);
                fsops::set_meta_fd(lw.root.as_fd(), &meta, true)
                    .map_err(|e| Error::errno("layer root", e))?;
                fsops::clear_implied(lw.root.as_fd()).map_err(|e| Error::errno("layer root", e))?;
                return lw.dirs.record(b"", meta.mtime);
            }
            Err(e) => return Err(hostile(&h.path, e)),
        };
        let (parent_path, leaf) = split_leaf(&path);
        match classify_whiteout(&path) {
            Whiteout::None => {}
            Whiteout::Remove(target) => {
                let (tparent, tleaf) = split_leaf(&target);
                if tleaf.is_empty() || tleaf == b"." || tleaf == b".." {
                    return Err(hostile(&h.path, "bad whiteout name"));
                }
                if tleaf.starts_with(b".wh.") {
                    return Ok(()); // aufs metadata (.wh..wh.plnk …): nothing to do
                }
                let dir = self.parent_dir(lw, tparent, &path)?;
                match fsops::lstat_at(dir.as_fd(), tleaf)
                    .map_err(|e| Error::errno("whiteout", e))?
                {
                    None => rfs::mknodat(&dir, tleaf, FileType::CharacterDevice, Mode::empty(), 0)
                        .map_err(|e| {
                            Error::errno(format!("creating whiteout {}", show(&target)), e)
                        })?,
                    Some(st) if file_type(&st) == FileType::Directory => {
                        // Created earlier in this layer, then whited out:
                        // hide what lower layers have there.
                        let sub = fsops::open_dir_at(dir.as_fd(), tleaf)
                            .map_err(|e| Error::errno("whiteout", e))?;
                        set_opaque(sub.as_fd()).map_err(|e| Error::errno("whiteout", e))?;
                    }
                    Some(_) => {} // this layer's own entry stays
                }
                return Ok(());
            }
            Whiteout::Opaque(dir_path) => {
                let fd = if dir_path.is_empty() {
                    fsops::open_dir_at(lw.root.as_fd(), b".")
                        .map_err(|e| Error::errno("layer root", e))?
                } else {
                    let (pp, pl) = split_leaf(&dir_path);
                    let parent = self.parent_dir(lw, pp, &path)?;
                    self.child_dir(lw, parent.as_fd(), pl, &dir_path, &path)?
                };
                set_opaque(fd.as_fd())
                    .map_err(|e| Error::errno(format!("marking {} opaque", show(&dir_path)), e))?;
                return Ok(());
            }
        }
        let meta = Meta::from_header(h);
        let dir = self.parent_dir(lw, parent_path, &path)?;
        let dir = dir.as_fd();
        let io = |what: &str, e: Errno| Error::errno(format!("{what} {}", show(&path)), e);
        match h.kind {
            Kind::Dir => {
                let existing = fsops::lstat_at(dir, leaf).map_err(|e| io("lstat", e))?;
                let mut opaque = false;
                let existed = match existing {
                    Some(st) if file_type(&st) == FileType::Directory => true,
                    Some(st) => {
                        opaque = is_whiteout(&st);
                        rfs::unlinkat(dir, leaf, AtFlags::empty())
                            .map_err(|e| io("replacing", e))?;
                        false
                    }
                    None => false,
                };
                if !existed {
                    rfs::mkdirat(dir, leaf, Mode::from_raw_mode(0o700))
                        .map_err(|e| io("mkdir", e))?;
                }
                let fd = fsops::open_dir_at(dir, leaf).map_err(|e| io("opening", e))?;
                fsops::set_meta_fd(fd.as_fd(), &meta, existed).map_err(|e| io("metadata of", e))?;
                if existed {
                    // Created for a deeper path earlier in this layer, listed now.
                    fsops::clear_implied(fd.as_fd()).map_err(|e| io("metadata of", e))?;
                }
                if opaque {
                    set_opaque(fd.as_fd()).map_err(|e| io("marking opaque", e))?;
                }
                lw.dirs.record(&path, meta.mtime)?;
            }
            Kind::Regular if h.ll.delta_base.is_some() => {
                replace(lw, dir, leaf, &path)?;
                self.apply_delta(lw, dir, leaf, &path, h, tar, &meta)?;
            }
            Kind::Regular => {
                replace(lw, dir, leaf, &path)?;
                if h.size == 0 {
                    if h.ll.digest.is_some_and(|d| d != self.empty) {
                        return Err(hostile(&path, "empty file with a non-empty digest"));
                    }
                    let f =
                        fsops::create_file_at(dir, leaf, 0o600).map_err(|e| io("creating", e))?;
                    fsops::set_meta_fd(f.as_fd(), &meta, false)
                        .map_err(|e| io("metadata of", e))?;
                    return Ok(());
                }
                self.new_bytes = self.new_bytes.saturating_add(h.size);
                if self.new_bytes > self.opts.max_new_bytes {
                    return Err(Error::integrity(format!(
                        "archive carries more new content than the plan announced ({} bytes)",
                        self.opts.max_new_bytes
                    )));
                }
                let meter = &mut self.meter;
                let d = self
                    .objects
                    .insert(
                        h.ll.digest.as_ref(),
                        h.size,
                        &mut |b| {
                            let n = tar.read_data(b)?;
                            if let Some(m) = meter.as_mut() {
                                m.add(n as u64);
                            }
                            Ok(n)
                        },
                        &meta,
                    )
                    .map_err(|e| match e {
                        Error::Integrity(m) => hostile(&path, m),
                        e => e,
                    })?;
                if !self.objects.link(&d, &meta, dir, leaf)? {
                    return Err(Error::Other(format!("object {d} vanished while applying")));
                }
                lw.stats.new_files += 1;
                lw.stats.new_bytes += h.size;
                self.stored_new_bytes += h.size;
            }
            Kind::HardLink => {
                if let Some(d) = parse_reference_link(&h.link) {
                    replace(lw, dir, leaf, &path)?;
                    self.reference(lw, dir, leaf, &path, d, &meta)?;
                } else {
                    self.hard_link(lw, dir, leaf, &path, &h.link)?;
                }
            }
            Kind::Symlink => {
                if h.link.is_empty() {
                    return Err(hostile(&path, "symlink with an empty target"));
                }
                replace(lw, dir, leaf, &path)?;
                rfs::symlinkat(h.link.as_slice(), dir, leaf).map_err(|e| io("symlink", e))?;
                fsops::set_meta_at(dir, leaf, &meta, FileType::Symlink)
                    .map_err(|e| io("metadata of", e))?;
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let ft = match h.kind {
                    Kind::Char => FileType::CharacterDevice,
                    Kind::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                if ft != FileType::Fifo && !self.opts.allow_devices {
                    return Err(hostile(
                        &path,
                        "device nodes are not allowed (--no-devices)",
                    ));
                }
                replace(lw, dir, leaf, &path)?;
                let dev = rfs::makedev(h.dev_major, h.dev_minor);
                rfs::mknodat(dir, leaf, ft, Mode::from_raw_mode(meta.mode & 0o7777), dev)
                    .map_err(|e| io("mknod", e))?;
                fsops::set_meta_at(dir, leaf, &meta, ft).map_err(|e| io("metadata of", e))?;
            }
            Kind::Other(t) => {
                return Err(hostile(
                    &path,
                    format!("unsupported tar entry type {:?}", t as char),
                ))
            }
        }
        Ok(())
    }

    /// A delta entry (feature `file-delta`): rebuild the new object from the
    /// held base and the patch ([`crate::delta`]); when that fails, the
    /// entry becomes a reference the repair fetches whole.
    #[allow(clippy::too_many_arguments)]
    fn apply_delta(
        &mut self,
        lw: &mut LayerWriter,
        dir: BorrowedFd<'_>,
        leaf: &[u8],
        path: &[u8],
        h: &Header,
        tar: &mut Tar<'_>,
        meta: &Meta,
    ) -> Result<()> {
        let (Some(new), Some(base), Some(size)) = (h.ll.digest, h.ll.delta_base, h.ll.delta_size)
        else {
            return Err(hostile(
                path,
                "delta entry without LAYERLINK.digest/delta-size",
            ));
        };
        // The plan announced the new file's size; the patch is about as big
        // raw and is bounded by the stream bound.
        self.new_bytes = self.new_bytes.saturating_add(size);
        if self.new_bytes > self.opts.max_new_bytes {
            return Err(Error::integrity(format!(
                "archive carries more new content than the plan announced ({} bytes)",
                self.opts.max_new_bytes
            )));
        }
        let r = crate::delta::apply(
            &mut self.objects,
            &base,
            &new,
            size,
            &mut |b| tar.read_data(b),
            meta,
        )?;
        match r {
            crate::delta::Applied::Stored => {
                if !self.objects.link(&new, meta, dir, leaf)? {
                    return Err(Error::Other(format!(
                        "object {new} vanished while applying"
                    )));
                }
                lw.stats.delta_files += 1;
                lw.stats.delta_patch_bytes += h.size;
                self.stored_new_bytes += size;
                if let Some(m) = self.meter.as_mut() {
                    m.add(size);
                }
            }
            crate::delta::Applied::Fallback(why) => {
                // Always said: it means a damaged store or a bad registry.
                eprintln!(
                    "warning: {}: delta not applied ({why}); fetching it whole",
                    show(path)
                );
                lw.stats.delta_fallbacks += 1;
                self.reference(lw, dir, leaf, path, new, meta)?;
            }
        }
        Ok(())
    }

    fn hard_link(
        &mut self,
        lw: &mut LayerWriter,
        dir: BorrowedFd<'_>,
        leaf: &[u8],
        path: &[u8],
        link: &[u8],
    ) -> Result<()> {
        let target = normalize_entry_path(link)
            .map_err(|e| hostile(path, format!("hard link target: {e}")))?;
        if target == path {
            return Ok(()); // a link to itself changes nothing
        }
        let (tparent, tleaf) = split_leaf(&target);
        let tdir = open_existing_dir(lw.root.as_fd(), tparent)
            .map_err(|e| hostile(path, format!("hard link target {:?}: {e}", show(&target))))?;
        let st = fsops::lstat_at(tdir.as_fd(), tleaf).map_err(|e| Error::errno("lstat", e))?;
        let Some(st) = st.filter(|s| file_type(s) == FileType::RegularFile) else {
            return Err(hostile(
                path,
                format!(
                    "hard link to {:?}, which is not a regular file of this layer",
                    show(&target)
                ),
            ));
        };
        replace(lw, dir, leaf, path)?;
        match rfs::linkat(&tdir, tleaf, dir, leaf, AtFlags::empty()) {
            Ok(()) => {}
            // The target's variant is full: store it once more.
            Err(Errno::MLINK) => self.link_new_variant(tdir.as_fd(), tleaf, &st, dir, leaf)?,
            Err(e) => return Err(Error::errno(format!("hard link {}", show(path)), e)),
        }
        if let Some(p) = self
            .pending
            .iter()
            .find(|p| p.layer == lw.layer && p.ino == st.st_ino)
        {
            let (digest, meta) = (p.digest, p.meta.clone());
            self.add_pending(Pending {
                layer: lw.layer,
                path: path.to_vec(),
                ino: st.st_ino,
                digest,
                meta,
            })?;
        }
        Ok(())
    }
}

/// Remove whatever `leaf` is in `dir` before a new entry takes its place
/// (tar semantics: the later entry wins).
fn replace(lw: &mut LayerWriter, dir: BorrowedFd<'_>, leaf: &[u8], path: &[u8]) -> Result<()> {
    match fsops::lstat_at(dir, leaf).map_err(|e| Error::errno("lstat", e))? {
        None => Ok(()),
        Some(st) => {
            if file_type(&st) == FileType::Directory {
                lw.cache = None;
            }
            fsops::remove_at(dir, leaf)
                .map_err(|e| Error::errno(format!("replacing {}", show(path)), e))?;
            Ok(())
        }
    }
}
