//! Read-only checkouts: `DEST/rootfs` is an overlayfs mount whose lower
//! dirs are the image's committed layer directories in the store, with no
//! upper dir. Such an overlay is read-only in its superblock: every write,
//! truncate, chmod, rename, link or xattr change through it fails with
//! `EROFS` for root too, and `mount -o remount,rw` is refused; nothing is
//! linked or copied, so the store is not touched at all (no link counts or
//! ctimes move). After an unmount or a reboot `DEST/rootfs` is an empty
//! directory, never a writable tree of store links.
//!
//! The top lower dir is `DEST/.layerlink-dirs`: the merged tree's
//! directories only, made by the checkout's merge ([`super::merge`] in
//! dirs-only mode). Overlayfs takes a directory's metadata from the top
//! lower dir that has it, so every directory shows what `umoci unpack`
//! gives it (the checkout rule, without the store's implied marks);
//! files, symlinks and device nodes come from the layers, whose whiteouts
//! and opaque directories overlayfs interprets as OCI does. It also makes
//! the two lower dirs overlayfs needs without an upper dir for a
//! one-layer image.
//!
//! `gc` keeps the layers a mounted overlay names (`/proc/self/mountinfo`,
//! [`mounts_layer`]).

use crate::error::{Error, Result};
use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};
use std::path::{Path, PathBuf};

/// The directory skeleton in the bundle, the overlay's top lower dir.
pub(super) const DIRS: &str = ".layerlink-dirs";

/// Longest option string `mount(2)` passes on (one 4 KiB page, with its
/// NUL).
const MAX_OPTIONS: usize = 4095;

/// `path` made absolute against the working directory.
pub(super) fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()
        .map_err(|e| Error::io("cwd", e))?
        .join(path))
}

/// `path` escaped for overlayfs' `lowerdir=` (`:`, `,` and `\`).
pub(super) fn escape(path: &Path) -> String {
    let mut s = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, ':' | ',' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// Mount a read-only overlay of `lower` (absolute, top first) on `target`.
pub(super) fn mount(target: &Path, lower: &[PathBuf]) -> Result<()> {
    let list: Vec<String> = lower.iter().map(|p| escape(p)).collect();
    let options = format!("lowerdir={}", list.join(":"));
    let unavailable = |why: String| {
        Error::Unavailable(format!(
            "read-only checkout of {} layer(s) onto {}: {why}",
            lower.len().saturating_sub(1),
            target.display()
        ))
    };
    if options.len() > MAX_OPTIONS {
        return Err(unavailable(format!(
            "the overlayfs option string is {} bytes, over the kernel's limit of {MAX_OPTIONS} \
             (use a shorter --store path, or a copy checkout without --read-only)",
            options.len()
        )));
    }
    let c = std::ffi::CString::new(options).map_err(|_| unavailable("NUL in a path".into()))?;
    rustix::mount::mount("overlay", target, "overlay", MountFlags::RDONLY, &*c).map_err(|e| match e
    {
        Errno::PERM | Errno::ACCESS => unavailable(format!(
            "mounting overlayfs needs root (CAP_SYS_ADMIN): {}",
            std::io::Error::from(e)
        )),
        Errno::NODEV => unavailable("this kernel has no overlayfs (CONFIG_OVERLAY_FS)".into()),
        e => unavailable(format!(
            "mounting overlayfs failed: {} (the kernel log says why)",
            std::io::Error::from(e)
        )),
    })
}

/// Undo [`mount`] after a later step failed (lazily: nothing in the
/// checkout is open any more).
pub(super) fn unmount(target: &Path) {
    let _ = rustix::mount::unmount(target, UnmountFlags::DETACH);
}

/// `/proc/self/mountinfo` (empty when it cannot be read), for
/// [`mounts_layer`].
pub fn mountinfo() -> Vec<u8> {
    std::fs::read("/proc/self/mountinfo").unwrap_or_default()
}

/// Whether `mountinfo` names `/layers/<hex>` (a mount of a read-only
/// checkout uses that layer; the digest makes a false match harmless: the
/// layer is only kept longer). A byte search: `str::contains` would link
/// the two-way searcher (~3 KB) for this one use.
pub fn mounts_layer(mountinfo: &[u8], hex: &str) -> bool {
    let needle = [b"/layers/", hex.as_bytes()].concat();
    mountinfo
        .windows(needle.len())
        .any(|w| w == needle.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_names_a_layer_by_its_path() {
        let hex = "ab".repeat(32);
        let line = format!(
            "44 27 0:39 / /run/ro/rootfs ro,relatime - overlay overlay \
             ro,lowerdir=/run/ro/.layerlink-dirs:/var/lib/layerlink/layers/{hex}\n"
        );
        assert!(mounts_layer(line.as_bytes(), &hex));
        assert!(!mounts_layer(line.as_bytes(), &"cd".repeat(32)));
        assert!(!mounts_layer(b"", &hex));
        assert_eq!(escape(Path::new("/a:b,c\\d")), "/a\\:b\\,c\\\\d");
    }
}
