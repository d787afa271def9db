//! Merging committed layer trees into a rootfs, bottom layer first, with
//! OCI semantics for their overlayfs forms (whiteout = char device 0:0,
//! opaque directory = `trusted.overlay.opaque=y`), never following a
//! symlink. Directory metadata follows the checkout rule of
//! `ARCHITECTURE.md` ("Store invariants", agent): the topmost layer that
//! lists a directory wins; an implied directory keeps what the layers below
//! made it; one no layer lists is 0755 with the checkout's owner and time.
//!
//! In [`Merger::dirs_only`] mode only the directories are made (the other
//! entries still remove what they replace): the top lower dir of a
//! read-only checkout's overlay, which gives every directory of the
//! merged tree the metadata this rule defines (see `super::overlay`).

use crate::error::{Error, Result};
use crate::fsops::{self, file_type, has_opaque, is_whiteout, show, Meta};
use rustix::fs::{self as rfs, FileType, Mode};
use rustix::io::Errno;
use std::os::fd::{AsFd, BorrowedFd};

/// Deepest directory nesting a checkout follows.
const MAX_DEPTH: usize = 1024;

/// Merges layers into one rootfs (or, `dirs_only`, into its directory
/// skeleton).
pub(super) struct Merger {
    dirs_only: bool,
}

/// Metadata of a directory (`name` in `dir`, or `dir` itself).
pub(super) fn read_meta(dir: BorrowedFd<'_>, name: Option<&[u8]>) -> Result<Meta> {
    let (st, x) = match name {
        None => (
            rfs::fstat(dir).map_err(|e| Error::errno("stat", e))?,
            fsops::read_xattrs_fd(dir).map_err(|e| Error::errno("xattrs", e))?,
        ),
        Some(n) => (
            rfs::statat(dir, n, rfs::AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| Error::errno("stat", e))?,
            fsops::read_xattrs_at(dir, n).map_err(|e| Error::errno("xattrs", e))?,
        ),
    };
    Ok(Meta::from_stat(&st, x))
}

impl Merger {
    pub(super) fn new(dirs_only: bool) -> Self {
        Merger { dirs_only }
    }

    /// Merge layer directory `src` onto rootfs directory `dst`; `fresh`
    /// when `dst` was just created empty (no lookups or removals needed).
    pub(super) fn merge(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        path: &[u8],
        depth: usize,
        fresh: bool,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(Error::integrity(format!(
                "{}: directories nested too deep",
                show(path)
            )));
        }
        let ctx = |p: &[u8], e: Errno| Error::errno(format!("checkout of {}", show(p)), e);
        if !fresh && has_opaque(src) {
            fsops::clear_dir(dst).map_err(|e| ctx(path, e))?;
        }
        let mut names = Vec::new();
        fsops::for_each_entry(src, |n, _| {
            names.push(n.to_vec());
            Ok(())
        })?;
        let mut sub = path.to_vec();
        for name in names {
            sub.truncate(path.len());
            if !sub.is_empty() {
                sub.push(b'/');
            }
            sub.extend_from_slice(&name);
            let Some(st) = fsops::lstat_at(src, &name).map_err(|e| ctx(&sub, e))? else {
                continue;
            };
            if is_whiteout(&st) {
                if !fresh {
                    fsops::remove_at(dst, &name).map_err(|e| ctx(&sub, e))?;
                }
                continue;
            }
            let ft = file_type(&st);
            if ft == FileType::Directory {
                let existing = if fresh {
                    None
                } else {
                    fsops::lstat_at(dst, &name).map_err(|e| ctx(&sub, e))?
                };
                let created = match existing {
                    Some(d) if file_type(&d) == FileType::Directory => false,
                    other => {
                        if other.is_some() {
                            fsops::remove_at(dst, &name).map_err(|e| ctx(&sub, e))?;
                        }
                        rfs::mkdirat(dst, name.as_slice(), Mode::from_raw_mode(0o700))
                            .map_err(|e| ctx(&sub, e))?;
                        true
                    }
                };
                let s = fsops::open_dir_at(src, &name).map_err(|e| ctx(&sub, e))?;
                let d = fsops::open_dir_at(dst, &name).map_err(|e| ctx(&sub, e))?;
                let implied = fsops::is_implied(s.as_fd());
                // Implied by this layer, made by a layer below: kept as it
                // was (restored after this layer's entries went in).
                let below = if implied && !created {
                    Some(read_meta(d.as_fd(), None)?)
                } else {
                    None
                };
                self.merge(s.as_fd(), d.as_fd(), &sub, depth + 1, created)?;
                if !implied {
                    // Listed by this layer: its metadata wins.
                    let meta = read_meta(s.as_fd(), None)?;
                    fsops::set_meta_fd(d.as_fd(), &meta, !created).map_err(|e| ctx(&sub, e))?;
                } else if let Some(meta) = below {
                    fsops::set_meta_fd(d.as_fd(), &meta, false).map_err(|e| ctx(&sub, e))?;
                } else {
                    // No layer below lists it: the metadata is not defined
                    // by the image. Like `umoci unpack` (MkdirAll): 0755,
                    // owned by the checkout's user, the time of the checkout.
                    rfs::fchmod(&d, Mode::from_raw_mode(0o755)).map_err(|e| ctx(&sub, e))?;
                }
                continue;
            }
            if !fresh {
                fsops::remove_at(dst, &name).map_err(|e| ctx(&sub, e))?;
            }
            if self.dirs_only {
                continue;
            }
            match ft {
                FileType::RegularFile => {
                    let from = fsops::open_file_at(src, &name).map_err(|e| ctx(&sub, e))?;
                    let to = fsops::create_file_at(dst, &name, 0o600).map_err(|e| ctx(&sub, e))?;
                    fsops::copy_data(&from, &to)
                        .map_err(|e| Error::io(format!("copying {}", show(&sub)), e))?;
                    let x = fsops::read_xattrs_fd(from.as_fd()).map_err(|e| ctx(&sub, e))?;
                    let meta = Meta::from_stat(&st, x);
                    fsops::set_meta_fd(to.as_fd(), &meta, false).map_err(|e| ctx(&sub, e))?;
                }
                FileType::Symlink => {
                    let target = rfs::readlinkat(src, name.as_slice(), Vec::new())
                        .map_err(|e| ctx(&sub, e))?;
                    rfs::symlinkat(target.as_bytes(), dst, name.as_slice())
                        .map_err(|e| ctx(&sub, e))?;
                    let meta = read_meta(src, Some(&name))?;
                    fsops::set_meta_at(dst, &name, &meta, ft).map_err(|e| ctx(&sub, e))?;
                }
                FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo => {
                    rfs::mknodat(
                        dst,
                        name.as_slice(),
                        ft,
                        Mode::from_raw_mode(st.st_mode & 0o7777),
                        st.st_rdev,
                    )
                    .map_err(|e| ctx(&sub, e))?;
                    let meta = read_meta(src, Some(&name))?;
                    fsops::set_meta_at(dst, &name, &meta, ft).map_err(|e| ctx(&sub, e))?;
                }
                _ => {} // sockets and unknown types are not part of images
            }
        }
        Ok(())
    }
}
