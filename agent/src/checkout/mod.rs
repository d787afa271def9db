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
//!   `read_only` they are hard links into the store (then mount it
//!   read-only). Intra-layer hard links become independent copies in copy
//!   mode: the store cannot tell them apart from equal files.
//! * [`lowerdir`] gives the overlayfs `lowerdir=` option for an image's
//!   committed layer directories.
//!
//! | file | concern |
//! |---|---|
//! | `mod.rs` | the synced record, `lowerdir`, the bundle (directories, `config.json`) |
//! | `merge.rs` | layer trees merged into the rootfs (whiteouts, opaque dirs, the checkout rule for directory metadata) |
//! | `runtime_spec.rs` | the runtime-spec `config.json` from the image config, in umoci's shape |
//! | `user.rs` | `User` resolved against the rootfs' passwd and group files, like runc |

mod merge;
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
use std::os::fd::AsFd;
use std::path::Path;

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
        let p = store.layer_path(l);
        let abs = if p.is_absolute() {
            p
        } else {
            std::env::current_dir()
                .map_err(|e| Error::io("cwd", e))?
                .join(p)
        };
        let mut s = String::new();
        for c in abs.to_string_lossy().chars() {
            if matches!(c, ':' | ',' | '\\') {
                s.push('\\');
            }
            s.push(c);
        }
        parts.push(s);
    }
    Ok(format!("lowerdir={}", parts.join(":")))
}

/// Write an OCI runtime bundle for `image` into `dest` (created; must be
/// empty if it exists).
pub fn checkout(store: &Store, image: &ImageRef, dest: &Path, read_only: bool) -> Result<()> {
    let rec = synced_record(store, image)?;
    match rfs::mkdir(dest, Mode::from_raw_mode(0o700)) {
        Ok(()) => {}
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
                    "{} exists and is not empty",
                    dest.display()
                )));
            }
        }
        Err(e) => return Err(Error::errno(format!("creating {}", dest.display()), e)),
    }
    let dest_fd = fsops::open_dir_path(dest)
        .map_err(|e| Error::io(format!("opening {}", dest.display()), e))?;
    rfs::mkdirat(&dest_fd, "rootfs", Mode::from_raw_mode(0o755))
        .map_err(|e| Error::errno(format!("creating {}/rootfs", dest.display()), e))?;
    let rootfs = fsops::open_dir_at(dest_fd.as_fd(), b"rootfs")
        .map_err(|e| Error::errno("opening rootfs", e))?;
    let mut m = Merger::new(read_only);
    for (i, l) in rec.layers.iter().enumerate() {
        let layer = store.open_layer(l)?;
        // The bottom layer lands in an empty rootfs: nothing to replace.
        // A layer without a "./" entry leaves the root as the layers below
        // it made it (restored after its entries went in, as umoci does).
        let implied = fsops::is_implied(layer.as_fd());
        let below = if implied && i > 0 {
            Some(read_meta(rootfs.as_fd(), None)?)
        } else {
            None
        };
        m.merge(layer.as_fd(), rootfs.as_fd(), b"", 0, i == 0)?;
        let meta = match (implied, below) {
            (false, _) => Some(read_meta(layer.as_fd(), None)?),
            (true, below) => below,
        };
        if let Some(meta) = meta {
            fsops::set_meta_fd(rootfs.as_fd(), &meta, true)
                .map_err(|e| Error::errno("metadata of rootfs", e))?;
        }
    }
    let spec = runtime_spec(&rec.config, rootfs.as_fd(), read_only)?;
    let text = spec.to_pretty();
    fsops::write_atomic(dest_fd.as_fd(), "config.json", text.as_bytes())
        .map_err(|e| Error::io(format!("writing {}/config.json", dest.display()), e))?;
    rfs::chmodat(
        &dest_fd,
        "config.json",
        Mode::from_raw_mode(0o644),
        rfs::AtFlags::empty(),
    )
    .map_err(|e| Error::errno("chmod config.json", e))?;
    Ok(())
}
