//! Turning a synced image into something a runtime runs.
//!
//! * [`checkout`] writes an OCI runtime bundle like `umoci unpack`:
//!   `DEST/config.json` generated from the image config, and `DEST/rootfs/`
//!   with the layers merged in order. Merging interprets the layer trees'
//!   overlayfs forms (whiteout = char device 0:0, opaque directory =
//!   `trusted.overlay.opaque=y`) with OCI semantics, and never follows a
//!   symlink: where the rootfs has a symlink (or file) and an upper layer has
//!   a directory, the directory replaces it.
//!   By default regular files are copied (reflinked where the file system
//!   can), so a writable rootfs never writes through into the store; with
//!   `read_only` the rootfs is instead a read-only overlayfs mount of the
//!   layer directories (`overlay.rs`): nothing is copied or linked, and no
//!   write through it can reach the store. Intra-layer hard links become
//!   independent copies in copy mode: the store cannot tell them apart
//!   from equal files.
//! * [`lowerdir`] gives the overlayfs `lowerdir=` option for an image's
//!   committed layer directories.
//!
//! | file | concern |
//! |---|---|
//! | `mod.rs` | the synced record, `lowerdir`, the bundle (directories, `config.json`) |
//! | `merge.rs` | layer trees merged into the rootfs (whiteouts, opaque dirs, the checkout rule for directory metadata) |
//! | `overlay.rs` | read-only checkouts: the overlayfs mount, the layers `gc` keeps for it |
//! | `runtime_spec.rs` | the runtime-spec `config.json` from the image config, in umoci's shape |
//! | `user.rs` | `User` resolved against the rootfs' passwd and group files, like runc |

mod merge;
mod overlay;
mod runtime_spec;
mod user;

use crate::error::{Error, Result};
use crate::fsops;
use crate::store::record::{show_image_ref, ImageRecord};
use crate::store::Store;
use layerlink_proto::msg::ImageRef;
use merge::{read_meta, Merger};
use rustix::fs::{self as rfs, Mode};
use rustix::io::Errno;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

pub use overlay::{mountinfo, mounts_layer};
pub use runtime_spec::runtime_spec;
pub use user::{resolve_user, ExecUser};

/// The record of a synced image whose layers are all present.
pub fn synced_record(store: &Store, image: &ImageRef) -> Result<ImageRecord> {
    let rec = store.record(image)?.ok_or_else(|| {
        Error::Usage(format!(
            "image {} is not synced in {}",
            show_image_ref(image),
            store.root().display()
        ))
    })?;
    for l in &rec.layers {
        if !store.has_layer(l)? {
            return Err(Error::integrity(format!(
                "image {}: layer {l} is missing from the store (run sync again)",
                show_image_ref(image)
            )));
        }
    }
    Ok(rec)
}

/// The overlayfs `lowerdir=` option value for `image`: layer directories,
/// top layer first, `:`-separated (`\`-escaping `:`, `,` and `\`).
pub fn lowerdir(store: &Store, image: &ImageRef) -> Result<String> {
    let rec = synced_record(store, image)?;
    let mut parts = Vec::new();
    for l in rec.layers.iter().rev() {
        parts.push(overlay::escape(&overlay::absolute(&store.layer_path(l))?));
    }
    Ok(format!("lowerdir={}", parts.join(":")))
}

/// Write an OCI runtime bundle for `image` into `dest` (created; must be
/// empty if it exists). `read_only`: `rootfs/` is a read-only overlayfs
/// mount of the store's layers (see `overlay.rs`; needs root, else
/// [`Error::Unavailable`] and nothing is left in `dest`).
pub fn checkout(store: &Store, image: &ImageRef, dest: &Path, read_only: bool) -> Result<()> {
    let rec = synced_record(store, image)?;
    let created = match rfs::mkdir(dest, Mode::from_raw_mode(0o700)) {
        Ok(()) => true,
        Err(Errno::EXIST) => {
            let mut empty = true;
            let fd = fsops::open_dir_path(dest)
                .map_err(|e| Error::io(format!("opening {}", dest.display()), e))?;
            fsops::for_each_entry(fd.as_fd(), |_, _| {
                empty = false;
                Ok(())
            })?;
            if !empty {
                return Err(Error::Usage(format!(
                    "{} exists and is not empty (a read-only checkout there: \
                     umount {}/rootfs first)",
                    dest.display(),
                    dest.display()
                )));
            }
            false
        }
        Err(e) => return Err(Error::errno(format!("creating {}", dest.display()), e)),
    };
    let dest_fd = fsops::open_dir_path(dest)
        .map_err(|e| Error::io(format!("opening {}", dest.display()), e))?;
    rfs::mkdirat(&dest_fd, "rootfs", Mode::from_raw_mode(0o755))
        .map_err(|e| Error::errno(format!("creating {}/rootfs", dest.display()), e))?;
    if !read_only {
        let rootfs = fsops::open_dir_at(dest_fd.as_fd(), b"rootfs")
            .map_err(|e| Error::errno("opening rootfs", e))?;
        merge_layers(store, &rec, rootfs.as_fd(), false)?;
        return write_spec(&rec, dest, dest_fd.as_fd(), rootfs.as_fd(), false);
    }
    let mut mounted = false;
    let r = checkout_read_only(store, &rec, dest, dest_fd.as_fd(), &mut mounted);
    if r.is_err() {
        // Leave nothing behind: no half bundle, no mount.
        if mounted {
            overlay::unmount(&dest.join("rootfs"));
        }
        for name in [&b"config.json"[..], overlay::DIRS.as_bytes(), b"rootfs"] {
            let _ = fsops::remove_at(dest_fd.as_fd(), name);
        }
        if created {
            let _ = rfs::rmdir(dest);
        }
    }
    r
}

fn checkout_read_only(
    store: &Store,
    rec: &ImageRecord,
    dest: &Path,
    dest_fd: BorrowedFd<'_>,
    mounted: &mut bool,
) -> Result<()> {
    // Made as `rootfs/` is in a copy checkout: its mode is the root's when
    // no layer lists "./".
    rfs::mkdirat(dest_fd, overlay::DIRS, Mode::from_raw_mode(0o755))
        .map_err(|e| Error::errno(format!("creating {}/{}", dest.display(), overlay::DIRS), e))?;
    let dirs = fsops::open_dir_at(dest_fd, overlay::DIRS.as_bytes())
        .map_err(|e| Error::errno(format!("opening {}", overlay::DIRS), e))?;
    merge_layers(store, rec, dirs.as_fd(), true)?;
    let dest_abs = overlay::absolute(dest)?;
    let mut lower = vec![dest_abs.join(overlay::DIRS)];
    for l in rec.layers.iter().rev() {
        lower.push(overlay::absolute(&store.layer_path(l))?);
    }
    let target = dest_abs.join("rootfs");
    overlay::mount(&target, &lower)?;
    *mounted = true;
    let rootfs =
        fsops::open_dir_at(dest_fd, b"rootfs").map_err(|e| Error::errno("opening rootfs", e))?;
    write_spec(rec, dest, dest_fd, rootfs.as_fd(), true)
}

/// Merge the image's layers, bottom first, into `root` (or only their
/// directories, `dirs_only`).
fn merge_layers(
    store: &Store,
    rec: &ImageRecord,
    root: BorrowedFd<'_>,
    dirs_only: bool,
) -> Result<()> {
    let mut m = Merger::new(dirs_only);
    for (i, l) in rec.layers.iter().enumerate() {
        let layer = store.open_layer(l)?;
        // The bottom layer lands in an empty rootfs: nothing to replace.
        // A layer without a "./" entry leaves the root as the layers below
        // it made it (restored after its entries went in, as umoci does).
        let implied = fsops::is_implied(layer.as_fd());
        let below = if implied && i > 0 {
            Some(read_meta(root, None)?)
        } else {
            None
        };
        m.merge(layer.as_fd(), root, b"", 0, i == 0)?;
        let meta = match (implied, below) {
            (false, _) => Some(read_meta(layer.as_fd(), None)?),
            (true, below) => below,
        };
        if let Some(meta) = meta {
            fsops::set_meta_fd(root, &meta, true)
                .map_err(|e| Error::errno("metadata of rootfs", e))?;
        }
    }
    Ok(())
}

fn write_spec(
    rec: &ImageRecord,
    dest: &Path,
    dest_fd: BorrowedFd<'_>,
    rootfs: BorrowedFd<'_>,
    read_only: bool,
) -> Result<()> {
    let spec = runtime_spec(&rec.config, rootfs, read_only)?;
    let text = spec.to_pretty();
    fsops::write_atomic(dest_fd, "config.json", text.as_bytes())
        .map_err(|e| Error::io(format!("writing {}/config.json", dest.display()), e))?;
    rfs::chmodat(
        dest_fd,
        "config.json",
        Mode::from_raw_mode(0o644),
        rfs::AtFlags::empty(),
    )
    .map_err(|e| Error::errno("chmod config.json", e))?;
    Ok(())
}
